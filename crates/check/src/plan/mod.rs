//! `myelin check --config`: whether the delegation and certificate plan of each homeserver in
//! a configuration can work, judged without the network.
//!
//! The judgement is a list of [`Rule`]s ([`RULES`]), each a plain function of the facts taken
//! from the configuration, run for every homeserver; and [`CertificateRule`]s
//! ([`CERTIFICATE_RULES`]), run for every certificate Myelin gets from an ACME CA: under the
//! homeservers whose names it serves, or on its own ([`crate::CertificatePlan`]) when it serves
//! none. A new configuration feature adds its facts to [`PlanHomeserver`], [`PlanCertificate`]
//! (or [`PlanInput`]) and its rules to a list; nothing else changes.
//!
//! The ACME rules: `srv_needs_dns01` (with SRV delegation other servers ask this machine for a
//! certificate for a name that usually points elsewhere, which only dns-01 can get here),
//! `http01_needs_port_80`, `tls_alpn01_needs_443` (the port the CA connects to must be a
//! listener) and `wildcard_needs_dns01`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use myelin_well_known::{HostKind, ServerName};
use rustls_pki_types::CertificateDer;

use crate::report::{CertificatePlan, HomeserverPlan, PlanReport, SCHEMA, Section, Status, Step};
use crate::tls::{TlsName, Trust, names_cover};

mod acme;
mod rules;

pub use acme::{CERTIFICATE_RULES, CertificateRule};
pub use rules::{RULES, Rule};

/// What the configuration says, as the plan review needs it.
#[derive(Clone, Debug, Default)]
pub struct PlanInput {
    /// The configuration file, for the report.
    pub config: String,
    pub listeners: Vec<PlanListener>,
    pub certificates: Vec<PlanCertificate>,
    pub homeservers: Vec<PlanHomeserver>,
}

#[derive(Clone, Debug)]
pub struct PlanListener {
    pub bind: SocketAddr,
    pub tls: bool,
}

/// How an ACME CA validates that Myelin controls a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// The CA fetches `http://NAME/.well-known/acme-challenge/…` on port 80.
    Http01,
    /// The CA connects to port 443 of NAME with ALPN `acme-tls/1`.
    TlsAlpn01,
    /// A TXT record at `_acme-challenge.NAME`: no port, works wherever NAME points.
    Dns01,
}

impl Challenge {
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Dns01 => "dns-01",
        }
    }
}

#[derive(Clone, Debug)]
pub struct PlanCertificate {
    /// A path, "self-signed", or for ACME "ACME (CHALLENGE)".
    pub origin: String,
    /// DNS names (wildcards as `*.example.com`) and IP addresses.
    pub names: Vec<String>,
    /// Leaf first; empty when not loaded (a `self_signed` certificate is made at start).
    pub chain: Vec<CertificateDer<'static>>,
    pub self_signed: bool,
    pub not_after: Option<SystemTime>,
    /// Obtained from the ACME CA with this challenge (`None`: a `[[certificate]]`). Such a
    /// certificate has no chain yet: the CA's, trusted by other servers, is assumed.
    pub acme: Option<Challenge>,
}

impl PlanCertificate {
    pub fn covers(&self, name: &TlsName) -> bool {
        names_cover(&self.names, name)
    }

    /// Its names, for messages.
    pub fn names_text(&self) -> String {
        self.names.join(", ")
    }
}

#[derive(Clone, Debug)]
pub struct PlanHomeserver {
    pub server_name: String,
    /// Other host names this homeserver answers.
    pub hosts: Vec<String>,
    /// `well_known.server` (`m.server`).
    pub well_known_server: Option<String>,
    /// `well_known.client_base_url`.
    pub client_base_url: Option<String>,
    pub cache_max_age: Duration,
}

/// The configuration as a whole.
pub struct Facts<'a> {
    pub input: &'a PlanInput,
    pub trust: &'a Trust,
    pub now: SystemTime,
}

impl Facts<'_> {
    pub fn tls_ports(&self) -> BTreeSet<u16> {
        self.input
            .listeners
            .iter()
            .filter(|l| l.tls)
            .map(|l| l.bind.port())
            .collect()
    }

    pub fn has_tls_port(&self, port: u16) -> bool {
        self.tls_ports().contains(&port)
    }

    /// Ports of the plain-HTTP listeners (`tls = false`).
    pub fn plain_ports(&self) -> BTreeSet<u16> {
        self.input
            .listeners
            .iter()
            .filter(|l| !l.tls)
            .map(|l| l.bind.port())
            .collect()
    }

    pub(crate) fn ports_text(&self) -> String {
        ports_text(&self.tls_ports())
    }

    /// The ACME certificates served for this homeserver's names, each once.
    pub fn acme_certs_for(&self, h: &Homeserver<'_>) -> Vec<&PlanCertificate> {
        let mut out: Vec<&PlanCertificate> = Vec::new();
        for name in h.names() {
            if let Some(c) = self.cert_for(&TlsName::for_host(&name)) {
                if c.acme.is_some() && !out.iter().any(|o| std::ptr::eq(*o, c)) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// The certificate the listener would serve for `name`: the first whose names cover it.
    pub fn cert_for(&self, name: &TlsName) -> Option<&PlanCertificate> {
        self.input.certificates.iter().find(|c| c.covers(name))
    }
}

/// Where other servers land for one homeserver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The server name is an IP address.
    IpLiteral { port: u16 },
    /// The server name has a port.
    ExplicitPort { port: u16 },
    /// `m.server` with a port (or an IP address).
    WellKnown { target: ServerName },
    /// `m.server` without a port: SRV of that name, else its port 8448.
    WellKnownNoPort { target: ServerName },
    /// No well-known: SRV of the server name, else its port 8448.
    NoWellKnown,
}

/// One homeserver and the facts derived from it.
pub struct Homeserver<'a> {
    pub hs: &'a PlanHomeserver,
    pub name: ServerName,
    pub mode: Mode,
}

impl Homeserver<'_> {
    /// Whether Myelin answers `host` for this homeserver.
    pub fn serves(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        host == self.name.host
            || self
                .hs
                .hosts
                .iter()
                .any(|h| ServerName::parse(h).is_ok_and(|sn| sn.host == host))
    }

    /// The host names Myelin answers for this homeserver: the server name's and `hosts`.
    pub fn names(&self) -> Vec<String> {
        std::iter::once(self.name.host.clone())
            .chain(
                self.hs
                    .hosts
                    .iter()
                    .filter_map(|h| ServerName::parse(h).ok())
                    .map(|sn| sn.host),
            )
            .collect()
    }

    /// The host other servers connect to and the certificate name they ask for.
    pub fn federation_host(&self) -> ServerName {
        match &self.mode {
            Mode::WellKnown { target } | Mode::WellKnownNoPort { target } => target.clone(),
            _ => self.name.clone(),
        }
    }
}

/// Reviews every homeserver of the configuration.
pub fn review(input: &PlanInput, trust: &Trust) -> PlanReport {
    let facts = Facts {
        input,
        trust,
        now: SystemTime::now(),
    };
    let mut homeservers = Vec::new();
    // ACME certificates judged under a homeserver
    let mut used: Vec<&PlanCertificate> = Vec::new();
    for hs in &input.homeservers {
        let Ok(name) = ServerName::parse(&hs.server_name) else {
            homeservers.push(HomeserverPlan {
                server_name: hs.server_name.clone(),
                delegation: "invalid server name".into(),
                works: false,
                steps: vec![Step::fail(
                    Section::Plan,
                    "server_name",
                    format!("\"{}\" is not a valid server name", hs.server_name),
                )],
            });
            continue;
        };
        let mode = mode_of(hs, &name);
        let h = Homeserver { hs, name, mode };
        let mut steps = Vec::new();
        for rule in RULES {
            steps.extend((rule.check)(&facts, &h));
        }
        for cert in facts.acme_certs_for(&h) {
            for rule in CERTIFICATE_RULES {
                steps.extend((rule.check)(&facts, cert));
            }
            used.push(cert);
        }
        homeservers.push(HomeserverPlan {
            server_name: hs.server_name.clone(),
            delegation: describe_mode(&h),
            works: steps.iter().all(|s| s.status != Status::Fail),
            steps,
        });
    }
    // ACME certificates no homeserver uses: judged on their own
    let certificates: Vec<CertificatePlan> = input
        .certificates
        .iter()
        .filter(|c| !used.iter().any(|u| std::ptr::eq(*u, *c)))
        .filter_map(|c| {
            let challenge = c.acme?;
            let steps: Vec<Step> = CERTIFICATE_RULES
                .iter()
                .flat_map(|rule| (rule.check)(&facts, c))
                .collect();
            Some(CertificatePlan {
                names: c.names.clone(),
                challenge: challenge.as_str(),
                works: steps.iter().all(|s| s.status != Status::Fail),
                steps,
            })
        })
        .collect();
    let warnings = homeservers
        .iter()
        .flat_map(|h| &h.steps)
        .chain(certificates.iter().flat_map(|c| &c.steps))
        .filter(|s| s.status == Status::Warn)
        .count();
    PlanReport {
        schema: SCHEMA,
        config: input.config.clone(),
        works: homeservers.iter().all(|h| h.works) && certificates.iter().all(|c| c.works),
        homeservers,
        certificates,
        warnings,
    }
}

fn mode_of(hs: &PlanHomeserver, name: &ServerName) -> Mode {
    match (name.kind, name.port) {
        (HostKind::Ipv4 | HostKind::Ipv6, port) => Mode::IpLiteral {
            port: port.unwrap_or(8448),
        },
        (HostKind::Dns, Some(port)) => Mode::ExplicitPort { port },
        (HostKind::Dns, None) => match hs
            .well_known_server
            .as_deref()
            .and_then(|s| ServerName::parse(s).ok())
        {
            Some(target) if target.port.is_some() || target.kind != HostKind::Dns => {
                Mode::WellKnown { target }
            }
            Some(target) => Mode::WellKnownNoPort { target },
            None => Mode::NoWellKnown,
        },
    }
}

pub(crate) fn ports_text(ports: &BTreeSet<u16>) -> String {
    if ports.is_empty() {
        "none".into()
    } else {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub(crate) fn describe_mode(h: &Homeserver<'_>) -> String {
    let n = &h.name.host;
    match &h.mode {
        Mode::IpLiteral { port } => format!("IP address: other servers connect to {n}:{port}"),
        Mode::ExplicitPort { port } => {
            format!("server name with a port: other servers connect to {n}:{port}")
        }
        Mode::WellKnown { target } => format!(
            "well-known delegation to {}{}",
            target.to_written(),
            if target.port.is_none() {
                " (port 8448)"
            } else {
                ""
            }
        ),
        Mode::WellKnownNoPort { target } => format!(
            "well-known delegation to {} without a port: SRV of {} or port 8448",
            target.host, target.host
        ),
        Mode::NoWellKnown => format!("no well-known: SRV records of {n}, or {n}:8448"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> PlanCertificate {
        PlanCertificate {
            origin: format!("/etc/myelin/{}.pem", names[0]),
            names: names.iter().map(|s| s.to_string()).collect(),
            chain: Vec::new(),
            self_signed: false,
            not_after: Some(SystemTime::now() + Duration::from_secs(60 * 86_400)),
            acme: None,
        }
    }

    fn listener(port: u16) -> PlanListener {
        PlanListener {
            bind: SocketAddr::from(([0, 0, 0, 0], port)),
            tls: true,
        }
    }

    fn hs(name: &str, server: Option<&str>, base: Option<&str>, hosts: &[&str]) -> PlanHomeserver {
        PlanHomeserver {
            server_name: name.into(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            well_known_server: server.map(str::to_string),
            client_base_url: base.map(str::to_string),
            cache_max_age: Duration::from_secs(86_400),
        }
    }

    fn run(input: PlanInput) -> PlanReport {
        review(&input, &Trust::new(&[]).unwrap())
    }

    fn find<'a>(r: &'a PlanReport, check: &str) -> Vec<&'a Step> {
        r.homeservers[0]
            .steps
            .iter()
            .filter(|s| s.check == check)
            .collect()
    }

    #[test]
    fn well_known_with_port_served_here_works() {
        let r = run(PlanInput {
            listeners: vec![listener(443)],
            certificates: vec![cert(&["example.com", "matrix.example.com"])],
            homeservers: vec![hs(
                "example.com",
                Some("matrix.example.com:443"),
                Some("https://matrix.example.com"),
                &["matrix.example.com"],
            )],
            ..Default::default()
        });
        assert!(r.works, "{r:#?}");
        assert_eq!(r.warnings, 0, "{r:#?}");
    }

    #[test]
    fn srv_only_without_a_certificate_for_the_server_name_fails() {
        let r = run(PlanInput {
            listeners: vec![listener(443)],
            certificates: vec![cert(&["matrix.example.com"])],
            homeservers: vec![hs(
                "example.com",
                None,
                Some("https://matrix.example.com"),
                &["matrix.example.com"],
            )],
            ..Default::default()
        });
        assert!(!r.works);
        let c = find(&r, "federation_certificate");
        assert_eq!(c[0].status, Status::Fail);
        assert!(
            c[0].message.contains("certificate for example.com"),
            "{}",
            c[0].message
        );
        assert!(c[0].fix.as_deref().unwrap().contains("dns-01"));
        let p = find(&r, "federation_port");
        assert_eq!(p[0].status, Status::Warn);
        assert!(p[0].message.contains("_matrix-fed._tcp.example.com"));
    }

    #[test]
    fn well_known_without_port_and_no_8448_warns() {
        let r = run(PlanInput {
            listeners: vec![listener(443)],
            certificates: vec![cert(&["example.com", "matrix.example.com"])],
            homeservers: vec![hs(
                "example.com",
                Some("matrix.example.com"),
                Some("https://matrix.example.com"),
                &["matrix.example.com"],
            )],
            ..Default::default()
        });
        assert!(r.works);
        let p = find(&r, "federation_port");
        assert_eq!(p[0].status, Status::Warn);
        assert!(
            p[0].fix
                .as_deref()
                .unwrap()
                .contains("matrix.example.com:443")
        );
    }

    #[test]
    fn self_signed_expiring_and_cache_rules() {
        let mut soon = cert(&["example.com"]);
        soon.not_after = Some(SystemTime::now() + Duration::from_secs(3 * 86_400 + 3600));
        let mut h = hs(
            "example.com",
            Some("example.com:443"),
            Some("https://example.com"),
            &[],
        );
        h.cache_max_age = Duration::from_secs(60);
        let r = run(PlanInput {
            listeners: vec![listener(443)],
            certificates: vec![soon],
            homeservers: vec![h.clone()],
            ..Default::default()
        });
        assert!(r.works);
        assert!(
            find(&r, "federation_certificate")[0]
                .message
                .contains("expires in 3 days")
        );
        assert_eq!(find(&r, "well_known_cache")[0].status, Status::Warn);

        let mut own = cert(&["example.com"]);
        own.self_signed = true;
        let r = run(PlanInput {
            listeners: vec![listener(443)],
            certificates: vec![own],
            homeservers: vec![h],
            ..Default::default()
        });
        assert!(!r.works);
        assert!(
            find(&r, "federation_certificate")[0]
                .message
                .contains("self-signed")
        );
    }

    #[test]
    fn delegation_elsewhere_is_not_judged_here() {
        let r = run(PlanInput {
            listeners: vec![listener(443)],
            certificates: vec![cert(&["example.com"])],
            homeservers: vec![hs("example.com", Some("hs.other.net:8448"), None, &[])],
            ..Default::default()
        });
        assert!(r.works, "{r:#?}");
        assert_eq!(find(&r, "federation_certificate")[0].status, Status::Info);
        assert_eq!(find(&r, "client_base_url")[0].status, Status::Warn);
    }
}
