//! The federation checks of every address a route leads to: TCP, TLS with the prescribed SNI
//! and certificate name, `/_matrix/key/v2/server`, `/_matrix/federation/v1/version`.

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;

use crate::Ctx;
use crate::dns::Answer;
use crate::fetch::{Endpoint, FetchError};
use crate::keys::{self, KEYS_PATH, VERSION_PATH, check_server_keys, check_version, snippet};
use crate::report::{Resolution, ResolvedTarget, Section, Status, Step};
use crate::resolve::{Route, RouteKind};
use crate::tls::{CertProblem, TlsName, human_duration};

/// At most this many targets (SRV records) and addresses per target are checked.
const MAX_TARGETS: usize = 5;
const MAX_ADDRESSES: usize = 4;
/// Certificates expiring sooner draw a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);
/// Key answers larger than this are refused (Synapse's own limit is far lower in practice).
const KEYS_MAX_BODY: usize = 1 << 20;

/// Checks every address of `route`; pushes the steps and returns the resolution with the
/// addresses that work.
pub(crate) async fn check_targets(
    ctx: &Ctx,
    route: &Route,
    server_name: &str,
    steps: &mut Vec<Step>,
) -> Resolution {
    let mut targets = Vec::new();
    // (steps of one address or DNS name, whether it works)
    let mut groups: Vec<(Vec<Step>, bool)> = Vec::new();
    for target in route.targets.iter().take(MAX_TARGETS) {
        let mut resolved = ResolvedTarget {
            host: target.host.clone(),
            port: target.port,
            addresses: Vec::new(),
            working: None,
        };
        let ips = match ctx.dns.addresses(&target.host).await {
            Answer::Found(ips) => {
                if target.host.parse::<std::net::IpAddr>().is_err() {
                    let list: Vec<String> = ips.iter().map(ToString::to_string).collect();
                    groups.push((
                        vec![Step::ok(
                            Section::Dns,
                            "dns_address",
                            format!("{} → {}", target.host, list.join(", ")),
                        )],
                        true,
                    ));
                }
                ips
            }
            Answer::NotFound => {
                groups.push((
                    vec![
                        Step::fail(
                            Section::Dns,
                            "dns_address",
                            format!("{} has no A or AAAA record", target.host),
                        )
                        .fix(format!(
                            "publish A and/or AAAA records for {} pointing at the machine that serves federation",
                            target.host
                        )),
                    ],
                    false,
                ));
                targets.push(resolved);
                continue;
            }
            Answer::Failed(e) => {
                groups.push((
                    vec![
                        Step::fail(
                            Section::Dns,
                            "dns_address",
                            format!("the address lookup of {} failed: {e}", target.host),
                        )
                        .fix(format!("make the DNS servers of {} answer", target.host)),
                    ],
                    false,
                ));
                targets.push(resolved);
                continue;
            }
        };
        for ip in ips.into_iter().take(MAX_ADDRESSES) {
            let addr = SocketAddr::new(ip, target.port);
            resolved.addresses.push(addr.ip().to_string());
            let (addr_steps, works) = check_address(ctx, route, addr, server_name).await;
            if works && resolved.working.is_none() {
                resolved.working = Some(addr.to_string());
            }
            groups.push((addr_steps, works));
        }
        targets.push(resolved);
    }

    let any_works = targets.iter().any(|t| t.working.is_some());
    if !any_works && matches!(route.kind, RouteKind::DefaultPort { .. }) {
        if let Some(step) = probe_443(ctx, route, server_name).await {
            groups.push((vec![step], false));
        }
    }
    for (group, works) in groups {
        for mut step in group {
            // Other servers try the next address when one fails: with a working one, a broken
            // one costs time, not federation.
            if any_works && !works && step.status == Status::Fail {
                step.status = Status::Warn;
                step.message
                    .push_str("; other servers move on to an address that works, after a delay");
            }
            steps.push(step);
        }
    }
    Resolution {
        method: route.method(),
        host_header: route.host_header.clone(),
        certificate_name: route.tls_name.to_string(),
        targets,
    }
}

/// Every federation check on one address; returns its steps and whether it works.
async fn check_address(
    ctx: &Ctx,
    route: &Route,
    addr: SocketAddr,
    server_name: &str,
) -> (Vec<Step>, bool) {
    let f = Section::Federation;
    let at = addr.to_string();
    let ep = Endpoint {
        addr,
        tls: Some(route.tls_name.clone()),
        host_header: route.host_header.clone(),
    };
    let mut steps = Vec::new();
    let sni = match &route.tls_name {
        TlsName::Dns(d) => format!("SNI {d}"),
        TlsName::Ip(_) => "no SNI (IP address)".to_string(),
    };
    let resp = ctx
        .http
        .request(&ep, Method::GET, KEYS_PATH, &[], KEYS_MAX_BODY, &ctx.budget)
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            steps.push(connection_failure(route, &e).target(at));
            return (steps, false);
        }
    };
    if let Some(cert) = &resp.cert {
        let expires = cert.not_after.and_then(|t| t.duration_since(ctx.now).ok());
        steps.push(
            Step::ok(
                f,
                "tls_certificate",
                format!(
                    "TLS with {sni}: the certificate is valid for {} (names: {}; issued by {}{})",
                    route.tls_name,
                    cert.names_text(),
                    cert.issuer,
                    expires
                        .map(|d| format!("; expires in {}", human_duration(d)))
                        .unwrap_or_default()
                ),
            )
            .target(at.clone()),
        );
        if let Some(left) = expires.filter(|d| *d < EXPIRY_WARNING) {
            steps.push(
                Step::warn(
                    f,
                    "certificate_expiry",
                    format!(
                        "the certificate expires in {}; other servers refuse it from then on",
                        human_duration(left)
                    ),
                )
                .fix("renew it now (Myelin renews ACME certificates by itself at one third of their lifetime left)")
                .target(at.clone()),
            );
        }
    }
    if resp.status.as_u16() != 200 {
        steps.push(
            Step::fail(
                f,
                "server_keys",
                format!(
                    "{KEYS_PATH} answered HTTP {} instead of the keys: {}",
                    resp.status.as_u16(),
                    snippet(&resp.body)
                ),
            )
            .fix(format!(
                "make sure requests to /_matrix/ with Host \"{}\" reach the homeserver whose server_name is \"{server_name}\"",
                route.host_header
            ))
            .target(at.clone()),
        );
    } else {
        for step in check_server_keys(&resp.body, server_name, ctx.now) {
            steps.push(step.target(at.clone()));
        }
    }

    let version = ctx
        .http
        .request(
            &ep,
            Method::GET,
            VERSION_PATH,
            &[],
            KEYS_MAX_BODY,
            &ctx.budget,
        )
        .await;
    steps.push(
        match version {
            Ok(r) => check_version(r.status.as_u16(), &r.body),
            Err(e) => Step::fail(
                f,
                "federation_version",
                format!("{VERSION_PATH}: {}", e.describe()),
            ),
        }
        .target(at),
    );
    let works = steps.iter().all(|s| s.status != Status::Fail);
    (steps, works)
}

/// The step for an address that could not be asked anything.
fn connection_failure(route: &Route, e: &FetchError) -> Step {
    let f = Section::Federation;
    let host = match &route.tls_name {
        TlsName::Dns(d) => d.clone(),
        TlsName::Ip(ip) => ip.to_string(),
    };
    match e {
        FetchError::Certificate { problem, .. } => {
            Step::fail(f, "tls_certificate", problem.describe()).fix(cert_fix(problem, route))
        }
        e if e.unreachable() => {
            let (check, why) = match route.kind {
                RouteKind::DefaultPort { delegated: false } => (
                    "port_8448",
                    format!(
                        "; other servers use port 8448 because {host} has no valid /.well-known/matrix/server and no SRV record"
                    ),
                ),
                RouteKind::DefaultPort { delegated: true } => (
                    "port_8448",
                    format!(
                        "; other servers use port 8448 because the well-known names {host} without a port and {host} has no SRV record"
                    ),
                ),
                RouteKind::Srv { .. } => ("connect", "; the SRV record points here".to_string()),
                RouteKind::WellKnownPort | RouteKind::WellKnownIp => {
                    ("connect", "; the well-known points here".to_string())
                }
                RouteKind::ExplicitPort | RouteKind::IpLiteral => {
                    ("connect", "; the server name points here".to_string())
                }
            };
            let fix = match route.kind {
                RouteKind::DefaultPort { .. } => format!(
                    "make the homeserver reachable on port 8448 (Myelin: a [[listener]] with bind = \"[::]:8448\" \
                     and the firewall open), or tell other servers to use 443: publish /.well-known/matrix/server \
                     with {{\"m.server\": \"{host}:443\"}} (Myelin: well_known.server = \"{host}:443\")"
                ),
                _ => "start the homeserver's TLS front (Myelin) on that address and port, open the firewall, \
                      or correct the delegation"
                    .to_string(),
            };
            Step::fail(f, check, format!("{}{why}", e.describe())).fix(fix)
        }
        FetchError::Tls { .. } => Step::fail(f, "tls_handshake", e.describe()).fix(
            "make sure this address speaks TLS (HTTPS), not plain HTTP, and offers TLS 1.2 or 1.3",
        ),
        FetchError::Timeout {
            stage: "TLS handshake",
            ..
        } => Step::fail(f, "tls_handshake", e.describe()).fix(
            "something accepts connections here but does not answer TLS: check the service on \
             this port (a stalled process, or a firewall that lets the connection in but not the data)",
        ),
        FetchError::OutOfTime => Step::fail(f, "connect", e.describe()),
        _ => Step::fail(f, "server_keys", e.describe())
            .fix("make sure requests to /_matrix/ reach the homeserver"),
    }
}

/// What to do about a refused certificate, given how other servers got here.
fn cert_fix(problem: &CertProblem, route: &Route) -> String {
    let name = route.tls_name.to_string();
    match problem {
        CertProblem::WrongName { .. } => match (&route.tls_name, route.kind) {
            (TlsName::Ip(ip), _) => {
                format!("the certificate must contain the IP address {ip} in its subjectAltName")
            }
            (_, RouteKind::Srv { delegated: false, .. }) => format!(
                "with SRV delegation other servers ask for a certificate for the server name {name}, \
                 not for the SRV target: put a certificate for {name} on this machine (with ACME, {name} \
                 does not point here, so only the dns-01 challenge can get it), or delegate with \
                 /.well-known/matrix/server instead"
            ),
            (_, RouteKind::WellKnownPort | RouteKind::Srv { delegated: true, .. } | RouteKind::DefaultPort { delegated: true }) => {
                format!(
                    "the well-known delegates to {name}, so the certificate here must be valid for {name}: \
                     add {name} to the certificate's names"
                )
            }
            _ => format!("get a certificate whose names include {name}"),
        },
        CertProblem::Untrusted { .. } => "use a certificate from a CA other servers trust (e.g. Let's Encrypt, as Myelin's ACME support gets) \
             and serve the whole chain, leaf first; a private CA works only for servers told to trust it"
            .into(),
        CertProblem::Expired { .. } => {
            "renew the certificate (Myelin renews ACME certificates by itself)".into()
        }
        CertProblem::NotYetValid { .. } => {
            "check the clocks of this machine and of the server".into()
        }
        CertProblem::Other(_) => format!("serve a valid certificate for {name}"),
    }
}

/// When nothing answers on 8448: does the homeserver answer federation on 443 of the same
/// host? Then other servers only need to be told.
async fn probe_443(ctx: &Ctx, route: &Route, server_name: &str) -> Option<Step> {
    let target = route.targets.first()?;
    let Answer::Found(ips) = ctx.dns.addresses(&target.host).await else {
        return None;
    };
    for ip in ips.into_iter().take(MAX_ADDRESSES) {
        let ep = Endpoint {
            addr: SocketAddr::new(ip, 443),
            tls: Some(route.tls_name.clone()),
            host_header: route.host_header.clone(),
        };
        let Ok(resp) = ctx
            .http
            .request(
                &ep,
                Method::GET,
                keys::KEYS_PATH,
                &[],
                KEYS_MAX_BODY,
                &ctx.budget,
            )
            .await
        else {
            continue;
        };
        let keys_ok = resp.status.as_u16() == 200
            && check_server_keys(&resp.body, server_name, ctx.now)
                .iter()
                .all(|s| s.status != Status::Fail);
        if keys_ok {
            return Some(
                Step::info(
                    Section::Federation,
                    "port_443_probe",
                    format!(
                        "{}:443 does answer federation for {server_name}: other servers only need to be told to use port 443",
                        target.host
                    ),
                )
                .fix(format!(
                    "publish /.well-known/matrix/server with {{\"m.server\": \"{}:443\"}} (Myelin: well_known.server = \"{}:443\")",
                    target.host, target.host
                ))
                .target(ep.addr.to_string()),
            );
        }
    }
    None
}
