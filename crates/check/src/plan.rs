//! `myelin check --config`: whether the delegation and certificate plan of each homeserver in
//! a configuration can work, judged without the network.
//!
//! The judgement is a list of [`Rule`]s ([`RULES`]), each a plain function of the facts taken
//! from the configuration. A new configuration feature adds its facts to [`PlanHomeserver`] (or
//! [`PlanInput`]) and its rules to the list; nothing else changes. Rules planned for ACME
//! (`[acme]`, per-homeserver `acme` / `challenge`):
//! - `srv_needs_dns01`: SRV-only delegation needs a certificate for the server name on a machine
//!   the name does not point to, so its ACME challenge must be dns-01;
//! - `http01_needs_port_80` / `tls_alpn01_needs_443`: the challenge's port must be a listener,
//!   and the names must point here;
//! - `wildcard_needs_dns01`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use myelin_well_known::{HostKind, ServerName};
use rustls_pki_types::CertificateDer;

use crate::federation::EXPIRY_WARNING;
use crate::report::{HomeserverPlan, PlanReport, SCHEMA, Section, Status, Step};
use crate::tls::{CertProblem, TlsName, Trust, human_duration, names_cover};
use crate::wellknown::{MAX_CACHE, MIN_CACHE};

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

#[derive(Clone, Debug)]
pub struct PlanCertificate {
    /// A path or "self-signed".
    pub origin: String,
    /// DNS names (wildcards as `*.example.com`) and IP addresses.
    pub names: Vec<String>,
    /// Leaf first; empty when not loaded (a `self_signed` certificate is made at start).
    pub chain: Vec<CertificateDer<'static>>,
    pub self_signed: bool,
    pub not_after: Option<SystemTime>,
}

impl PlanCertificate {
    pub fn covers(&self, name: &TlsName) -> bool {
        names_cover(&self.names, name)
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

/// One rule of the plan review.
pub struct Rule {
    pub id: &'static str,
    pub check: fn(&Facts<'_>, &Homeserver<'_>) -> Vec<Step>,
}

/// Every rule, in the order the report shows them.
pub const RULES: &[Rule] = &[
    Rule {
        id: "delegation",
        check: rule_delegation,
    },
    Rule {
        id: "well_known_reachable",
        check: rule_well_known_reachable,
    },
    Rule {
        id: "federation_certificate",
        check: rule_federation_certificate,
    },
    Rule {
        id: "federation_port",
        check: rule_federation_port,
    },
    Rule {
        id: "client_base_url",
        check: rule_client_base_url,
    },
    Rule {
        id: "well_known_cache",
        check: rule_well_known_cache,
    },
];

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

    fn ports_text(&self) -> String {
        let ports: Vec<String> = self.tls_ports().iter().map(u16::to_string).collect();
        if ports.is_empty() {
            "none".into()
        } else {
            ports.join(", ")
        }
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
        homeservers.push(HomeserverPlan {
            server_name: hs.server_name.clone(),
            delegation: describe_mode(&h),
            works: steps.iter().all(|s| s.status != Status::Fail),
            steps,
        });
    }
    let warnings = homeservers
        .iter()
        .flat_map(|h| &h.steps)
        .filter(|s| s.status == Status::Warn)
        .count();
    PlanReport {
        schema: SCHEMA,
        config: input.config.clone(),
        works: homeservers.iter().all(|h| h.works),
        homeservers,
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

fn describe_mode(h: &Homeserver<'_>) -> String {
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

fn plan(status: Status, check: &'static str, message: String) -> Step {
    Step::new(Section::Plan, check, status, message)
}

fn rule_delegation(facts: &Facts<'_>, h: &Homeserver<'_>) -> Vec<Step> {
    let n = &h.name.host;
    let message = match &h.mode {
        Mode::NoWellKnown if facts.has_tls_port(8448) => format!(
            "no well_known.server: other servers look up SRV records of {n}, then connect to {n}:8448, where Myelin listens"
        ),
        Mode::NoWellKnown => format!(
            "no well_known.server and no listener on 8448: federation needs an SRV record \
             _matrix-fed._tcp.{n} pointing at this machine (TLS ports here: {})",
            facts.ports_text()
        ),
        _ => describe_mode(h),
    };
    vec![plan(Status::Info, "delegation", message)]
}

fn rule_well_known_reachable(facts: &Facts<'_>, h: &Homeserver<'_>) -> Vec<Step> {
    let Some(server) = &h.hs.well_known_server else {
        return Vec::new();
    };
    let n = &h.name.host;
    if matches!(h.mode, Mode::IpLiteral { .. } | Mode::ExplicitPort { .. }) {
        return vec![
            plan(
                Status::Warn,
                "well_known_reachable",
                format!(
                    "well_known.server = \"{server}\" is never read: other servers only fetch the well-known for a server name without port that is not an IP address"
                ),
            )
            .fix("remove well_known.server"),
        ];
    }
    let mut steps = Vec::new();
    if !facts.has_tls_port(443) {
        steps.push(
            plan(
                Status::Warn,
                "well_known_reachable",
                format!(
                    "other servers fetch https://{n}/.well-known/matrix/server on port 443, but no TLS [[listener]] is on 443 (TLS ports: {})",
                    facts.ports_text()
                ),
            )
            .fix("add a [[listener]] on port 443, unless a port forward sends 443 to Myelin"),
        );
    }
    match certificate_problem(facts, &TlsName::Dns(n.clone())) {
        Some((Status::Fail, message)) => steps.push(
            plan(
                Status::Fail,
                "well_known_reachable",
                format!("the well-known is served at https://{n}/, but {message}: other servers ignore the delegation"),
            )
            .fix(format!("add a [[certificate]] whose names include {n}")),
        ),
        Some((status, message)) => {
            steps.push(plan(status, "well_known_reachable", format!("https://{n}/: {message}")))
        }
        None => steps.push(plan(
            Status::Ok,
            "well_known_reachable",
            format!("Myelin serves https://{n}/.well-known/matrix/server with a certificate for {n}"),
        )),
    }
    steps
}

fn rule_federation_certificate(facts: &Facts<'_>, h: &Homeserver<'_>) -> Vec<Step> {
    let target = h.federation_host();
    let name = TlsName::for_host(&target.host);
    let delegated_elsewhere = matches!(
        h.mode,
        Mode::WellKnown { .. } | Mode::WellKnownNoPort { .. }
    ) && !h.serves(&target.host)
        && target.kind == HostKind::Dns;
    if delegated_elsewhere {
        return vec![plan(
            Status::Info,
            "federation_certificate",
            format!(
                "federation is delegated to {}, which this configuration does not serve; check it with `myelin check {}`",
                target.host, h.hs.server_name
            ),
        )];
    }
    let why = match h.mode {
        Mode::NoWellKnown => format!(
            " (with SRV delegation or port 8448, other servers ask for a certificate for {} itself, even when an SRV record points to another host)",
            h.name.host
        ),
        _ => String::new(),
    };
    match certificate_problem(facts, &name) {
        Some((Status::Fail, message)) => vec![
            plan(
                Status::Fail,
                "federation_certificate",
                format!("other servers need a certificate for {name}{why}, but {message}"),
            )
            .fix(match h.mode {
                Mode::NoWellKnown => format!(
                    "add a [[certificate]] for {name} on this machine (with ACME: the dns-01 challenge, since {name} may not point here), \
                     or delegate: {}",
                    delegation_fix(facts, h)
                ),
                _ => format!("add a [[certificate]] whose names include {name}"),
            }),
        ],
        Some((status, message)) => vec![plan(
            status,
            "federation_certificate",
            format!("certificate for {name}: {message}"),
        )],
        None => vec![plan(
            Status::Ok,
            "federation_certificate",
            format!("a certificate for {name} is configured{why}"),
        )],
    }
}

fn rule_federation_port(facts: &Facts<'_>, h: &Homeserver<'_>) -> Vec<Step> {
    let target = h.federation_host();
    let port = match &h.mode {
        Mode::IpLiteral { port } | Mode::ExplicitPort { port } => Some(*port),
        Mode::WellKnown { target } => Some(target.port.unwrap_or(8448)),
        Mode::WellKnownNoPort { .. } | Mode::NoWellKnown => None,
    };
    if matches!(
        h.mode,
        Mode::WellKnown { .. } | Mode::WellKnownNoPort { .. }
    ) && target.kind == HostKind::Dns
        && !h.serves(&target.host)
    {
        return Vec::new();
    }
    let host = target.to_written();
    match (port, &h.mode) {
        (Some(p), _) if facts.has_tls_port(p) => vec![plan(
            Status::Ok,
            "federation_port",
            format!("other servers connect to port {p}, where Myelin has a TLS listener"),
        )],
        (Some(p), _) => vec![
            plan(
                Status::Warn,
                "federation_port",
                format!(
                    "other servers connect to {host} on port {p}, but no TLS [[listener]] is on port {p} (TLS ports: {})",
                    facts.ports_text()
                ),
            )
            .fix(format!("add a [[listener]] on port {p}, unless a port forward sends {p} to Myelin")),
        ],
        (None, _) if facts.has_tls_port(8448) => vec![plan(
            Status::Ok,
            "federation_port",
            format!(
                "without an SRV record other servers connect to {}:8448, where Myelin has a TLS listener",
                target.host
            ),
        )],
        (None, Mode::WellKnownNoPort { target }) => vec![
            plan(
                Status::Warn,
                "federation_port",
                format!(
                    "well_known.server = \"{}\" has no port, which sends other servers to SRV records of {} or to port 8448, and no TLS [[listener]] is on 8448",
                    target.host, target.host
                ),
            )
            .fix(format!(
                "write well_known.server = \"{}:443\" (or publish _matrix-fed._tcp.{} pointing at a TLS port here: {})",
                target.host,
                target.host,
                facts.ports_text()
            )),
        ],
        (None, _) => vec![
            plan(
                Status::Warn,
                "federation_port",
                format!(
                    "no TLS [[listener]] on 8448: federation works only with an SRV record _matrix-fed._tcp.{n} pointing at this machine and one of its TLS ports ({})",
                    facts.ports_text(),
                    n = h.name.host
                ),
            )
            .fix(format!(
                "publish the SRV record, add a [[listener]] on 8448, or delegate: {}",
                delegation_fix(facts, h)
            )),
        ],
    }
}

fn rule_client_base_url(facts: &Facts<'_>, h: &Homeserver<'_>) -> Vec<Step> {
    let Some(base) = &h.hs.client_base_url else {
        return vec![
            plan(
                Status::Warn,
                "client_base_url",
                format!(
                    "no well_known.client_base_url: clients cannot discover the homeserver from user IDs on {}",
                    h.name.host
                ),
            )
            .fix("set client_base_url in [homeserver.well_known], e.g. \"https://matrix.example.com\""),
        ];
    };
    let Some((host, port)) = url::Url::parse(base)
        .ok()
        .and_then(|u| Some((u.host_str()?.to_string(), u.port_or_known_default()?)))
    else {
        return Vec::new(); // the well-known crate already refuses it at load
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if !h.serves(&host) {
        return vec![plan(
            Status::Info,
            "client_base_url",
            format!("clients are sent to {base}, which this configuration does not serve"),
        )];
    }
    let mut steps = Vec::new();
    if !facts.has_tls_port(port) {
        steps.push(
            plan(
                Status::Warn,
                "client_base_url",
                format!("clients are sent to {base}, but no TLS [[listener]] is on port {port}"),
            )
            .fix(format!(
                "add a [[listener]] on port {port}, unless a port forward sends it to Myelin"
            )),
        );
    }
    match certificate_problem(facts, &TlsName::for_host(&host)) {
        Some((Status::Fail, message)) => steps.push(
            plan(
                Status::Fail,
                "client_base_url",
                format!("clients are sent to {base}, but {message}"),
            )
            .fix(format!("add a [[certificate]] whose names include {host}")),
        ),
        Some((status, message)) => steps.push(plan(
            status,
            "client_base_url",
            format!("certificate for {host}: {message}"),
        )),
        None if steps.is_empty() => steps.push(plan(
            Status::Ok,
            "client_base_url",
            format!("clients are sent to {base}, served here with a certificate for {host}"),
        )),
        None => {}
    }
    steps
}

fn rule_well_known_cache(_: &Facts<'_>, h: &Homeserver<'_>) -> Vec<Step> {
    let age = h.hs.cache_max_age;
    if (MIN_CACHE..=MAX_CACHE).contains(&age) {
        return Vec::new();
    }
    vec![
        plan(
            Status::Warn,
            "well_known_cache",
            format!(
                "cache_max_age is {}: homeservers keep a well-known for 5 minutes to 48 hours whatever it says",
                human_duration(age)
            ),
        )
        .fix("set cache_max_age between \"5m\" and \"48h\" (default \"24h\")"),
    ]
}

/// How to delegate by well-known instead: to one of the homeserver's hosts that has a
/// certificate here, else to the server name itself, on 443.
fn delegation_fix(facts: &Facts<'_>, h: &Homeserver<'_>) -> String {
    let n = &h.name.host;
    let to =
        h.hs.hosts
            .iter()
            .filter_map(|host| ServerName::parse(host).ok())
            .map(|sn| sn.host)
            .find(|host| facts.cert_for(&TlsName::for_host(host)).is_some())
            .unwrap_or_else(|| n.clone());
    format!(
        "publish {{\"m.server\": \"{to}:443\"}} at https://{n}/.well-known/matrix/server \
         (Myelin does with well_known.server = \"{to}:443\" when {n} points here)"
    )
}

/// What is wrong with the certificate served for `name`: `None` when it is fine; a failure
/// when other servers would refuse it; a warning when it expires soon.
fn certificate_problem(facts: &Facts<'_>, name: &TlsName) -> Option<(Status, String)> {
    let Some(cert) = facts.cert_for(name) else {
        let have: Vec<String> = facts
            .input
            .certificates
            .iter()
            .flat_map(|c| c.names.iter().cloned())
            .collect();
        return Some((
            Status::Fail,
            format!(
                "no [[certificate]] covers {name} (configured names: {})",
                if have.is_empty() {
                    "none".into()
                } else {
                    have.join(", ")
                }
            ),
        ));
    };
    if cert.self_signed {
        return Some((
            Status::Fail,
            format!(
                "the certificate for {name} is self-signed ({}), which other servers refuse",
                cert.origin
            ),
        ));
    }
    if !cert.chain.is_empty() {
        if let Err(problem) = facts.trust.verify_chain(&cert.chain, name, facts.now) {
            let message = match &problem {
                CertProblem::Untrusted { .. } => format!(
                    "{} ({}); other servers refuse it",
                    problem.describe(),
                    cert.origin
                ),
                _ => format!("{} ({})", problem.describe(), cert.origin),
            };
            return Some((Status::Fail, message));
        }
    }
    let left = cert
        .not_after
        .and_then(|t| t.duration_since(facts.now).ok());
    match (cert.not_after, left) {
        (Some(_), None) => Some((
            Status::Fail,
            format!("the certificate {} has expired", cert.origin),
        )),
        (_, Some(left)) if left < EXPIRY_WARNING => Some((
            Status::Warn,
            format!(
                "the certificate {} expires in {}",
                cert.origin,
                human_duration(left)
            ),
        )),
        _ => None,
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
