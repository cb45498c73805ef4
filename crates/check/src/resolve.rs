//! Server-name resolution, step by step as the spec prescribes ("Resolving server names"): what
//! other servers connect to, with which `Host` header and for which certificate name.

use http::Method;
use myelin_well_known::{HostKind, ServerName};

use crate::Ctx;
use crate::dns::{Answer, Srv};
use crate::fetch::FetchError;
use crate::report::{Section, Step};
use crate::tls::{TlsName, human_duration};
use crate::wellknown::{self, MAX_BODY};

/// How the route was found; decides the fixes the report suggests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RouteKind {
    IpLiteral,
    ExplicitPort,
    WellKnownIp,
    WellKnownPort,
    /// SRV of the server name (`delegated: false`) or of the well-known's name.
    Srv {
        legacy: bool,
        delegated: bool,
    },
    /// Port 8448 of the server name or of the well-known's name.
    DefaultPort {
        delegated: bool,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
}

/// Where other servers connect, and how.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub kind: RouteKind,
    pub host_header: String,
    pub tls_name: TlsName,
    pub targets: Vec<Target>,
    /// `m.server` as published, when the well-known delegated.
    pub delegated: Option<String>,
}

impl Route {
    pub fn method(&self) -> String {
        let prefix = if self.delegated.is_some() {
            "well_known+"
        } else {
            ""
        };
        match self.kind {
            RouteKind::IpLiteral => "ip_literal".into(),
            RouteKind::ExplicitPort => "explicit_port".into(),
            RouteKind::WellKnownIp | RouteKind::WellKnownPort => "well_known".into(),
            RouteKind::Srv { legacy: false, .. } => format!("{prefix}srv"),
            RouteKind::Srv { legacy: true, .. } => format!("{prefix}srv_legacy"),
            RouteKind::DefaultPort { .. } => format!("{prefix}default_port"),
        }
    }
}

/// Resolves `sn`; pushes the delegation and DNS steps. `None` when no route exists at all.
pub(crate) async fn resolve(
    ctx: &Ctx,
    sn: &ServerName,
    written: &str,
    steps: &mut Vec<Step>,
) -> Option<Route> {
    let d = Section::Delegation;
    match (sn.kind, sn.port) {
        (HostKind::Ipv4 | HostKind::Ipv6, port) => {
            let port = port.unwrap_or(8448);
            steps.push(Step::info(
                d,
                "resolution",
                format!(
                    "{written} is an IP address: other servers connect to port {port} of it directly \
                     (no well-known, no SRV) and expect a certificate for the IP address, without SNI"
                ),
            ));
            Some(Route {
                kind: RouteKind::IpLiteral,
                host_header: written.to_string(),
                tls_name: TlsName::for_host(&sn.host),
                targets: vec![Target {
                    host: sn.host.clone(),
                    port,
                }],
                delegated: None,
            })
        }
        (HostKind::Dns, Some(port)) => {
            steps.push(Step::info(
                d,
                "resolution",
                format!(
                    "{written} names a port: other servers connect to {}:{port} directly (no well-known, no SRV) \
                     and expect a certificate for {}",
                    sn.host, sn.host
                ),
            ));
            Some(Route {
                kind: RouteKind::ExplicitPort,
                host_header: written.to_string(),
                tls_name: TlsName::Dns(sn.host.clone()),
                targets: vec![Target {
                    host: sn.host.clone(),
                    port,
                }],
                delegated: None,
            })
        }
        (HostKind::Dns, None) => match server_well_known(ctx, &sn.host, steps).await {
            Some((m_server, delegated)) => match (delegated.kind, delegated.port) {
                (HostKind::Ipv4 | HostKind::Ipv6, port) => {
                    let port = port.unwrap_or(8448);
                    steps.push(Step::info(
                            d,
                            "resolution",
                            format!(
                                "other servers connect to {m_server}{} and expect a certificate for the IP address {}",
                                if delegated.port.is_none() { " on port 8448" } else { "" },
                                delegated.host
                            ),
                        ));
                    Some(Route {
                        kind: RouteKind::WellKnownIp,
                        host_header: m_server.clone(),
                        tls_name: TlsName::for_host(&delegated.host),
                        targets: vec![Target {
                            host: delegated.host.clone(),
                            port,
                        }],
                        delegated: Some(m_server.clone()),
                    })
                }
                (HostKind::Dns, Some(port)) => {
                    steps.push(Step::info(
                            d,
                            "resolution",
                            format!(
                                "other servers connect to {}:{port} with Host \"{m_server}\" and expect a certificate for {}",
                                delegated.host, delegated.host
                            ),
                        ));
                    Some(Route {
                        kind: RouteKind::WellKnownPort,
                        host_header: m_server.clone(),
                        tls_name: TlsName::Dns(delegated.host.clone()),
                        targets: vec![Target {
                            host: delegated.host.clone(),
                            port,
                        }],
                        delegated: Some(m_server.clone()),
                    })
                }
                (HostKind::Dns, None) => {
                    steps.push(
                            Step::info(
                                d,
                                "well_known_without_port",
                                format!(
                                    "\"m.server\" has no port, so other servers look up SRV records of {0} and otherwise use {0}:8448",
                                    delegated.host
                                ),
                            )
                            .fix(format!(
                                "to send them straight to HTTPS on 443, publish \"m.server\": \"{}:443\"",
                                delegated.host
                            )),
                        );
                    srv_or_default(ctx, &delegated.host, true, steps)
                        .await
                        .map(|mut r| {
                            r.delegated = Some(m_server.clone());
                            r
                        })
                }
            },
            None => srv_or_default(ctx, &sn.host, false, steps).await,
        },
    }
}

/// Fetches and judges `https://<host>/.well-known/matrix/server`; `Some` when it delegates.
async fn server_well_known(
    ctx: &Ctx,
    host: &str,
    steps: &mut Vec<Step>,
) -> Option<(String, ServerName)> {
    let d = Section::Delegation;
    let url = format!("https://{host}{}", myelin_well_known::SERVER_PATH);
    let check = "well_known_server";
    let fallback = "other servers fall back to SRV records, then port 8448";
    let fetched = ctx
        .http
        .fetch_url(&ctx.dns, &url, Method::GET, &[], MAX_BODY, 10, &ctx.budget)
        .await;
    let fetched = match fetched {
        Ok(f) => f,
        Err(e) => {
            let step = match &e.error {
                err if err.unreachable() => Step::info(
                    d,
                    check,
                    format!("no server well-known: {}; {fallback}", err.describe()),
                ),
                FetchError::OutOfTime => Step::fail(d, check, e.error.describe()),
                FetchError::Certificate { .. } => Step::warn(
                    d,
                    check,
                    format!(
                        "other servers ignore {url}: {}; {fallback}",
                        e.error.describe()
                    ),
                )
                .fix(format!(
                    "serve {host} with a certificate valid for {host}, or serve no well-known at all"
                )),
                FetchError::TooLarge { .. } => Step::warn(
                    d,
                    check,
                    format!(
                        "other servers ignore {url}: {}; {fallback}",
                        e.error.describe()
                    ),
                )
                .fix("serve a small JSON document: {\"m.server\": \"host:port\"}"),
                _ => Step::warn(
                    d,
                    check,
                    format!(
                        "other servers ignore {url}: {}; {fallback}",
                        e.error.describe()
                    ),
                )
                .fix(format!("make {url} answer 200 with {{\"m.server\": \"host:port\"}}, or 404")),
            };
            steps.push(step.target(url));
            return None;
        }
    };
    let status = fetched.response.status.as_u16();
    let redirected = if fetched.urls.len() > 1 {
        format!(" (redirected to {})", fetched.urls[1..].join(" → "))
    } else {
        String::new()
    };
    match wellknown::parse_server(status, &fetched.response.body) {
        Ok((m_server, sn)) => {
            steps.push(
                Step::ok(
                    d,
                    check,
                    format!("{url}{redirected} delegates to \"{m_server}\""),
                )
                .target(url.clone()),
            );
            steps.push(cache_step(&fetched.response.headers, ctx.now).target(url));
            Some((m_server, sn))
        }
        Err(_) if status == 404 => {
            steps.push(
                Step::info(
                    d,
                    check,
                    format!("no server well-known: {url}{redirected} answered 404; {fallback}"),
                )
                .target(url),
            );
            None
        }
        Err(reason) => {
            steps.push(
                Step::warn(
                    d,
                    check,
                    format!("other servers ignore {url}{redirected}: {reason}; {fallback}"),
                )
                .fix(format!(
                    "make {url} answer 200 with {{\"m.server\": \"host:port\"}} (any content type), or 404 if you delegate by SRV"
                ))
                .target(url),
            );
            None
        }
    }
}

fn cache_step(headers: &http::HeaderMap, now: std::time::SystemTime) -> Step {
    let d = Section::Delegation;
    let c = wellknown::cache_lifetime(headers, now);
    let fix = "send Cache-Control: max-age= between 300 and 172800 seconds \
               (Myelin: cache_max_age in [homeserver.well_known])";
    match c.requested {
        None => Step::info(
            d,
            "well_known_cache",
            format!(
                "{}: other servers keep the delegation for {} (their default)",
                c.source,
                human_duration(c.effective)
            ),
        )
        .fix(fix),
        Some(r) if c.out_of_range() => Step::warn(
            d,
            "well_known_cache",
            format!(
                "{} asks other servers to keep the delegation for {}, outside the 5 minutes … 48 hours they honour; they keep it for {}",
                c.source,
                human_duration(r),
                human_duration(c.effective)
            ),
        )
        .fix(fix),
        Some(_) => Step::ok(
            d,
            "well_known_cache",
            format!(
                "other servers keep the delegation for {} ({})",
                human_duration(c.effective),
                c.source
            ),
        ),
    }
}

/// Steps 3.3–3.5 and 4–6 of the spec: `_matrix-fed._tcp`, then `_matrix._tcp`, then 8448.
async fn srv_or_default(
    ctx: &Ctx,
    host: &str,
    delegated: bool,
    steps: &mut Vec<Step>,
) -> Option<Route> {
    let dn = Section::Dns;
    let fed = format!("_matrix-fed._tcp.{host}");
    let legacy = format!("_matrix._tcp.{host}");
    let cert_note = if delegated {
        format!("the certificate must be valid for {host}, the name the well-known delegates to")
    } else {
        format!("the certificate must still be valid for {host}, not for the SRV target")
    };
    let mut found: Option<(Vec<Srv>, bool)> = None;
    match ctx.dns.srv(&fed).await {
        Answer::Found(records) => {
            steps.push(Step::ok(
                dn,
                "srv_matrix_fed",
                format!("{fed} → {}; {cert_note}", srv_list(&records)),
            ));
            found = Some((records, false));
        }
        Answer::NotFound => {
            steps.push(Step::info(
                dn,
                "srv_matrix_fed",
                format!("no {fed} SRV record"),
            ));
        }
        Answer::Failed(e) => {
            steps.push(
                Step::fail(
                    dn,
                    "srv_matrix_fed",
                    format!("the DNS query for {fed} SRV failed: {e}; other servers cannot resolve you"),
                )
                .fix(format!("make the DNS servers of {host} answer (also for names and types that do not exist)")),
            );
        }
    }
    if found.is_none() {
        match ctx.dns.srv(&legacy).await {
            Answer::Found(records) => {
                steps.push(
                    Step::warn(
                        dn,
                        "srv_matrix_legacy",
                        format!(
                            "only the deprecated {legacy} record is published: {}; {cert_note}",
                            srv_list(&records)
                        ),
                    )
                    .fix(format!(
                        "publish the same record as {fed} (servers since Matrix 1.8 look it up first; the spec may drop {legacy})"
                    )),
                );
                found = Some((records, true));
            }
            Answer::NotFound => {
                steps.push(Step::info(
                    dn,
                    "srv_matrix_legacy",
                    format!("no {legacy} SRV record"),
                ));
            }
            Answer::Failed(e) => {
                steps.push(
                    Step::fail(
                        dn,
                        "srv_matrix_legacy",
                        format!("the DNS query for {legacy} SRV failed: {e}; other servers cannot resolve you"),
                    )
                    .fix(format!("make the DNS servers of {host} answer")),
                );
            }
        }
    }
    let tls_name = TlsName::Dns(host.to_string());
    match found {
        Some((records, legacy_only)) => {
            if records.iter().all(|r| r.target == ".") {
                steps.push(
                    Step::fail(
                        dn,
                        if legacy_only { "srv_matrix_legacy" } else { "srv_matrix_fed" },
                        format!("the SRV record of {host} has target \".\": it says there is no federation service here"),
                    )
                    .fix("point the SRV record at the host and port of the homeserver, or remove it"),
                );
                return None;
            }
            let mut targets = Vec::new();
            for r in records.iter().filter(|r| r.target != ".") {
                if targets
                    .iter()
                    .any(|t: &Target| t.host == r.target && t.port == r.port)
                {
                    continue;
                }
                if let Answer::Found(canonical) = ctx.dns.cname(&r.target).await {
                    steps.push(
                        Step::warn(
                            dn,
                            "srv_target_cname",
                            format!(
                                "the SRV target {} is a CNAME (an alias of {canonical}); RFC 2782 forbids aliases as SRV targets and some servers refuse them",
                                r.target
                            ),
                        )
                        .fix(format!("point the SRV record at {canonical} (the name that has the A/AAAA records)")),
                    );
                }
                targets.push(Target {
                    host: r.target.clone(),
                    port: r.port,
                });
            }
            Some(Route {
                kind: RouteKind::Srv {
                    legacy: legacy_only,
                    delegated,
                },
                host_header: host.to_string(),
                tls_name,
                targets,
                delegated: None,
            })
        }
        None => {
            steps.push(Step::info(
                dn,
                "default_port",
                format!("no SRV record: other servers connect to {host}:8448 and expect a certificate for {host}"),
            ));
            Some(Route {
                kind: RouteKind::DefaultPort { delegated },
                host_header: host.to_string(),
                tls_name,
                targets: vec![Target {
                    host: host.to_string(),
                    port: 8448,
                }],
                delegated: None,
            })
        }
    }
}

fn srv_list(records: &[Srv]) -> String {
    records
        .iter()
        .map(|r| {
            format!(
                "{}:{} (priority {}, weight {})",
                r.target, r.port, r.priority, r.weight
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
