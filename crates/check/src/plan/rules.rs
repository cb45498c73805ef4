//! The rules of the plan review, each a plain function of the facts; [`RULES`] is the list
//! [`super::review`] runs for every homeserver, in the order the report shows them. To add a
//! rule, write its function and add it here (rules about ACME certificates: [`super::acme`]).

use myelin_well_known::{HostKind, ServerName};

use super::{Facts, Homeserver, Mode, describe_mode};
use crate::federation::EXPIRY_WARNING;
use crate::report::{Section, Status, Step};
use crate::tls::{CertProblem, TlsName, human_duration};
use crate::wellknown::{MAX_CACHE, MIN_CACHE};

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
        id: "srv_needs_dns01",
        check: super::acme::rule_srv_needs_dns01,
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

/// A step of the plan review.
pub(super) fn plan(status: Status, check: &'static str, message: String) -> Step {
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
            match facts.cert_for(&name).and_then(|c| c.acme) {
                Some(challenge) => format!(
                    "a certificate for {name} comes from the ACME CA by {}{why}",
                    challenge.as_str()
                ),
                None => format!("a certificate for {name} is configured{why}"),
            },
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
