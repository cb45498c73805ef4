//! The plan rules about certificates from an ACME CA: whether the CA can validate each name the
//! way the configuration chose (`challenge`), from the facts of the configuration alone.
//!
//! - `srv_needs_dns01` (per homeserver): with SRV delegation other servers ask the SRV target
//!   for a certificate for the server name (or, after a well-known without port, the delegated
//!   name), a name that usually points to another machine; HTTP-01 and TLS-ALPN-01 are
//!   validated at the address the name points to, so only dns-01 can get it here.
//! - `http01_needs_port_80`, `tls_alpn01_needs_443` (per certificate): the CA connects to port 80
//!   (plain HTTP) or 443 (TLS) and to nothing else.
//! - `wildcard_needs_dns01` (per certificate): CAs validate wildcard names by dns-01 only.
//!
//! Where the names point is not in the configuration: the rules say what must hold, and
//! `myelin check <server name>` verifies it on the network.

use myelin_well_known::HostKind;

use super::rules::plan;
use super::{Challenge, Facts, Homeserver, Mode, PlanCertificate, ports_text};
use crate::report::{Status, Step};
use crate::tls::TlsName;

/// One rule about one ACME certificate.
pub struct CertificateRule {
    pub id: &'static str,
    pub check: fn(&Facts<'_>, &PlanCertificate) -> Vec<Step>,
}

/// Every certificate rule, in the order the report shows them.
pub const CERTIFICATE_RULES: &[CertificateRule] = &[
    CertificateRule {
        id: "http01_needs_port_80",
        check: rule_http01_needs_port_80,
    },
    CertificateRule {
        id: "tls_alpn01_needs_443",
        check: rule_tls_alpn01_needs_443,
    },
    CertificateRule {
        id: "wildcard_needs_dns01",
        check: rule_wildcard_needs_dns01,
    },
];

/// `srv_needs_dns01`: the certificate other servers ask the SRV target for.
pub(super) fn rule_srv_needs_dns01(facts: &Facts<'_>, h: &Homeserver<'_>) -> Vec<Step> {
    let (name, via) = match &h.mode {
        Mode::NoWellKnown => (
            h.name.host.clone(),
            format!(
                "with SRV delegation (no well_known.server), the host _matrix-fed._tcp.{n} points to must present a certificate for {n} itself",
                n = h.name.host
            ),
        ),
        Mode::WellKnownNoPort { target }
            if target.kind == HostKind::Dns && h.serves(&target.host) =>
        {
            (
                target.host.clone(),
                format!(
                    "well_known.server = \"{t}\" has no port, so the host _matrix-fed._tcp.{t} points to must present a certificate for {t}",
                    t = target.host
                ),
            )
        }
        _ => return Vec::new(),
    };
    let Some(cert) = facts.cert_for(&TlsName::for_host(&name)) else {
        return Vec::new(); // no certificate at all: federation_certificate fails already
    };
    let Some(challenge) = cert.acme else {
        return Vec::new(); // a [[certificate]] the admin provides covers it, wherever it points
    };
    if challenge == Challenge::Dns01 {
        return vec![plan(
            Status::Ok,
            "srv_needs_dns01",
            format!(
                "{via}; it comes from the ACME CA by dns-01, which works wherever {name} points"
            ),
        )];
    }
    let c = challenge.as_str();
    let fix = format!(
        "set challenge = \"dns-01\" in this [[homeserver]] (with an [acme.dns] section), unless {name} points to this machine; or delegate with a well-known that has a port (well_known.server = \"HOST:443\")"
    );
    // With a TLS listener on 8448 the server name may simply point here (no delegation, port
    // 8448); without one, federation can only arrive through an SRV record.
    if facts.has_tls_port(8448) {
        vec![plan(
            Status::Info,
            "srv_needs_dns01",
            format!(
                "{via}; it comes by {c}: fine when {name} points to this machine (port 8448); if an SRV record sends other servers here while {name} points elsewhere, only dns-01 can get it here (challenge = \"dns-01\")"
            ),
        )]
    } else {
        vec![
            plan(
                Status::Warn,
                "srv_needs_dns01",
                format!(
                    "{via}; it comes by {c}, which the CA validates at the address {name} points to: that works only if {name} points to this machine, and with SRV delegation it usually points elsewhere"
                ),
            )
            .fix(fix),
        ]
    }
}

fn rule_http01_needs_port_80(facts: &Facts<'_>, cert: &PlanCertificate) -> Vec<Step> {
    if cert.acme != Some(Challenge::Http01) {
        return Vec::new();
    }
    let names = cert.names_text();
    let plain = facts.plain_ports();
    let step = if plain.contains(&80) {
        plan(
            Status::Ok,
            "http01_needs_port_80",
            format!(
                "http-01 for {names}: the CA fetches http://NAME/.well-known/acme-challenge/… on port 80, where Myelin has a plain listener (each name must point to this machine)"
            ),
        )
    } else if plain.is_empty() {
        plan(
            Status::Fail,
            "http01_needs_port_80",
            format!(
                "http-01 for {names}: the CA fetches http://NAME/.well-known/acme-challenge/… on port 80, but there is no plain [[listener]] (tls = false) to answer it"
            ),
        )
        .fix("add a [[listener]] with bind = \"[::]:80\" and tls = false, or use challenge = \"tls-alpn-01\" (port 443)")
    } else {
        plan(
            Status::Warn,
            "http01_needs_port_80",
            format!(
                "http-01 for {names}: the CA connects to port 80 only, and no plain [[listener]] is on port 80 (plain ports: {})",
                ports_text(&plain)
            ),
        )
        .fix("add a [[listener]] with bind = \"[::]:80\" and tls = false, unless a port forward sends port 80 to Myelin")
    };
    vec![step]
}

fn rule_tls_alpn01_needs_443(facts: &Facts<'_>, cert: &PlanCertificate) -> Vec<Step> {
    if cert.acme != Some(Challenge::TlsAlpn01) {
        return Vec::new();
    }
    let names = cert.names_text();
    let tls = facts.tls_ports();
    let step = if tls.contains(&443) {
        plan(
            Status::Ok,
            "tls_alpn01_needs_443",
            format!(
                "tls-alpn-01 for {names}: the CA connects to port 443, where Myelin has a TLS listener (each name must point to this machine)"
            ),
        )
    } else if tls.is_empty() {
        plan(
            Status::Fail,
            "tls_alpn01_needs_443",
            format!(
                "tls-alpn-01 for {names}: the CA connects to port 443 over TLS, but there is no TLS [[listener]] to answer it"
            ),
        )
        .fix("add a [[listener]] with bind = \"[::]:443\", or use challenge = \"http-01\" (port 80) or \"dns-01\"")
    } else {
        plan(
            Status::Warn,
            "tls_alpn01_needs_443",
            format!(
                "tls-alpn-01 for {names}: the CA connects to port 443 only, and no TLS [[listener]] is on port 443 (TLS ports: {})",
                ports_text(&tls)
            ),
        )
        .fix("add a [[listener]] with bind = \"[::]:443\", unless a port forward sends port 443 to Myelin; or use challenge = \"dns-01\"")
    };
    vec![step]
}

fn rule_wildcard_needs_dns01(_: &Facts<'_>, cert: &PlanCertificate) -> Vec<Step> {
    let Some(challenge) = cert.acme else {
        return Vec::new();
    };
    let wildcards: Vec<&str> = cert
        .names
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("*."))
        .collect();
    if wildcards.is_empty() {
        return Vec::new();
    }
    let w = wildcards.join(", ");
    if challenge == Challenge::Dns01 {
        return vec![plan(
            Status::Ok,
            "wildcard_needs_dns01",
            format!("{w}: wildcard names are validated by dns-01, which this certificate uses"),
        )];
    }
    vec![
        plan(
            Status::Fail,
            "wildcard_needs_dns01",
            format!(
                "{w}: a CA validates wildcard names by dns-01 only, and this certificate uses {}",
                challenge.as_str()
            ),
        )
        .fix("set challenge = \"dns-01\" for this certificate (with an [acme.dns] section)"),
    ]
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::plan::{PlanHomeserver, PlanInput, PlanListener, review};
    use crate::report::PlanReport;
    use crate::tls::Trust;

    fn acme(names: &[&str], challenge: Challenge) -> PlanCertificate {
        PlanCertificate {
            origin: format!("ACME ({})", challenge.as_str()),
            names: names.iter().map(|s| s.to_string()).collect(),
            chain: Vec::new(),
            self_signed: false,
            not_after: None,
            acme: Some(challenge),
        }
    }

    fn listener(port: u16, tls: bool) -> PlanListener {
        PlanListener {
            bind: SocketAddr::from(([0, 0, 0, 0], port)),
            tls,
        }
    }

    fn hs(name: &str, server: Option<&str>, hosts: &[&str]) -> PlanHomeserver {
        PlanHomeserver {
            server_name: name.into(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            well_known_server: server.map(str::to_string),
            client_base_url: Some("https://matrix.example.com".into()),
            cache_max_age: Duration::from_secs(86_400),
        }
    }

    fn run(
        listeners: Vec<PlanListener>,
        certificates: Vec<PlanCertificate>,
        h: PlanHomeserver,
    ) -> PlanReport {
        review(
            &PlanInput {
                listeners,
                certificates,
                homeservers: vec![h],
                ..Default::default()
            },
            &Trust::new(&[]).unwrap(),
        )
    }

    fn step<'a>(r: &'a PlanReport, check: &str) -> &'a Step {
        r.homeservers[0]
            .steps
            .iter()
            .find(|s| s.check == check)
            .unwrap_or_else(|| panic!("no {check} step: {r:#?}"))
    }

    fn has(r: &PlanReport, check: &str) -> bool {
        r.homeservers[0].steps.iter().any(|s| s.check == check)
    }

    #[test]
    fn srv_only_by_dns01_is_ok_and_the_certificate_counts_as_configured() {
        let r = run(
            vec![listener(443, true)],
            vec![acme(
                &["example.com", "matrix.example.com"],
                Challenge::Dns01,
            )],
            hs("example.com", None, &["matrix.example.com"]),
        );
        let s = step(&r, "srv_needs_dns01");
        assert_eq!(s.status, Status::Ok, "{s:?}");
        assert!(s.message.contains("works wherever example.com points"));
        assert_eq!(step(&r, "federation_certificate").status, Status::Ok);
        assert!(
            step(&r, "federation_certificate")
                .message
                .contains("comes from the ACME CA by dns-01")
        );
        assert!(r.works, "{r:#?}");
        // dns-01 needs no port: neither port rule speaks
        assert!(!has(&r, "tls_alpn01_needs_443") && !has(&r, "http01_needs_port_80"));
    }

    #[test]
    fn srv_only_by_tls_alpn01_without_8448_warns_with_the_fix() {
        let r = run(
            vec![listener(443, true)],
            vec![acme(
                &["example.com", "matrix.example.com"],
                Challenge::TlsAlpn01,
            )],
            hs("example.com", None, &["matrix.example.com"]),
        );
        let s = step(&r, "srv_needs_dns01");
        assert_eq!(s.status, Status::Warn, "{s:?}");
        assert!(
            s.message.contains("certificate for example.com itself")
                && s.message.contains("it comes by tls-alpn-01")
                && s.message.contains("points to this machine"),
            "{}",
            s.message
        );
        assert!(s.fix.as_deref().unwrap().contains("challenge = \"dns-01\""));
        assert_eq!(step(&r, "tls_alpn01_needs_443").status, Status::Ok);
    }

    #[test]
    fn no_well_known_with_8448_may_be_no_delegation_at_all() {
        let r = run(
            vec![listener(443, true), listener(8448, true)],
            vec![acme(&["example.com"], Challenge::TlsAlpn01)],
            hs("example.com", None, &[]),
        );
        let s = step(&r, "srv_needs_dns01");
        assert_eq!(s.status, Status::Info, "{s:?}");
        assert!(
            s.message
                .contains("fine when example.com points to this machine")
        );
        assert!(r.works);
    }

    #[test]
    fn well_known_without_port_asks_for_the_delegated_name() {
        let r = run(
            vec![listener(443, true), listener(80, false)],
            vec![acme(
                &["example.com", "matrix.example.com"],
                Challenge::Http01,
            )],
            hs(
                "example.com",
                Some("matrix.example.com"),
                &["matrix.example.com"],
            ),
        );
        let s = step(&r, "srv_needs_dns01");
        assert_eq!(s.status, Status::Warn);
        assert!(
            s.message.contains("certificate for matrix.example.com")
                && s.message.contains("http-01"),
            "{}",
            s.message
        );
        assert_eq!(step(&r, "http01_needs_port_80").status, Status::Ok);
    }

    #[test]
    fn srv_rule_is_silent_for_well_known_with_port_and_for_a_provided_certificate() {
        let r = run(
            vec![listener(443, true)],
            vec![acme(
                &["example.com", "matrix.example.com"],
                Challenge::TlsAlpn01,
            )],
            hs(
                "example.com",
                Some("matrix.example.com:443"),
                &["matrix.example.com"],
            ),
        );
        assert!(!has(&r, "srv_needs_dns01"));
        let mut own = acme(&["example.com"], Challenge::TlsAlpn01);
        own.acme = None;
        own.origin = "/etc/myelin/example.com.pem".into();
        let r = run(
            vec![listener(443, true)],
            vec![own],
            hs("example.com", None, &[]),
        );
        assert!(!has(&r, "srv_needs_dns01"));
    }

    #[test]
    fn http01_needs_a_plain_listener_on_80() {
        let h = || hs("example.com", Some("example.com:443"), &[]);
        let cert = || vec![acme(&["example.com"], Challenge::Http01)];
        let r = run(vec![listener(443, true)], cert(), h());
        let s = step(&r, "http01_needs_port_80");
        assert_eq!(s.status, Status::Fail);
        assert!(s.message.contains("no plain [[listener]]"), "{}", s.message);
        assert!(!r.works);
        let r = run(
            vec![listener(443, true), listener(8080, false)],
            cert(),
            h(),
        );
        let s = step(&r, "http01_needs_port_80");
        assert_eq!(s.status, Status::Warn);
        assert!(s.message.contains("plain ports: 8080"), "{}", s.message);
        assert!(r.works);
        // a TLS listener on 80 does not answer the CA's plain HTTP
        let r = run(vec![listener(443, true), listener(80, true)], cert(), h());
        assert_eq!(step(&r, "http01_needs_port_80").status, Status::Fail);
        let r = run(vec![listener(443, true), listener(80, false)], cert(), h());
        assert_eq!(step(&r, "http01_needs_port_80").status, Status::Ok);
    }

    #[test]
    fn tls_alpn01_needs_a_tls_listener_on_443() {
        let h = || hs("example.com", Some("example.com:8448"), &[]);
        let cert = || vec![acme(&["example.com"], Challenge::TlsAlpn01)];
        let r = run(vec![listener(8448, true)], cert(), h());
        let s = step(&r, "tls_alpn01_needs_443");
        assert_eq!(s.status, Status::Warn);
        assert!(s.message.contains("TLS ports: 8448"), "{}", s.message);
        assert!(s.fix.as_deref().unwrap().contains("dns-01"));
        let r = run(vec![listener(80, false)], cert(), h());
        assert_eq!(step(&r, "tls_alpn01_needs_443").status, Status::Fail);
        assert!(!r.works);
        let r = run(vec![listener(443, true)], cert(), h());
        assert_eq!(step(&r, "tls_alpn01_needs_443").status, Status::Ok);
    }

    #[test]
    fn wildcards_need_dns01_and_unused_certificates_are_judged_on_their_own() {
        let h = hs("example.com", Some("example.com:443"), &[]);
        let own = acme(&["example.com"], Challenge::TlsAlpn01);
        let r = run(
            vec![listener(443, true)],
            vec![
                own.clone(),
                acme(
                    &["*.wild.example.com", "wild.example.com"],
                    Challenge::Http01,
                ),
            ],
            h.clone(),
        );
        assert!(!r.works, "{r:#?}");
        assert!(r.homeservers[0].works);
        assert_eq!(r.certificates.len(), 1);
        let c = &r.certificates[0];
        assert_eq!(c.challenge, "http-01");
        assert!(!c.works);
        let w = c
            .steps
            .iter()
            .find(|s| s.check == "wildcard_needs_dns01")
            .unwrap();
        assert_eq!(w.status, Status::Fail);
        assert!(w.message.contains("*.wild.example.com"), "{}", w.message);
        // and the missing port 80 listener too
        assert!(
            c.steps
                .iter()
                .any(|s| s.check == "http01_needs_port_80" && s.status == Status::Fail)
        );

        let r = run(
            vec![listener(443, true)],
            vec![
                own,
                acme(
                    &["*.wild.example.com", "wild.example.com"],
                    Challenge::Dns01,
                ),
            ],
            h,
        );
        assert!(r.works, "{r:#?}");
        assert_eq!(r.certificates[0].steps.len(), 1);
        assert_eq!(r.certificates[0].steps[0].status, Status::Ok);
    }

    #[test]
    fn a_wildcard_serving_a_homeserver_is_judged_under_it() {
        let r = run(
            vec![listener(443, true)],
            vec![acme(&["*.example.com", "example.com"], Challenge::Dns01)],
            hs(
                "example.com",
                Some("matrix.example.com:443"),
                &["matrix.example.com"],
            ),
        );
        assert!(r.certificates.is_empty());
        assert_eq!(step(&r, "wildcard_needs_dns01").status, Status::Ok);
        // one certificate for both names: its rules run once
        assert_eq!(
            r.homeservers[0]
                .steps
                .iter()
                .filter(|s| s.check == "wildcard_needs_dns01")
                .count(),
            1
        );
    }
}
