//! From a validated [`Config`] to everything a running Myelin is made of. Building is validating:
//! `check-config`, start and reload all go through [`Plan::build`], so what passes the check is
//! what runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use ipnet::IpNet;
use myelin_config::{
    CertificateSource, Config, ConfigError, ConfigErrors, Homeserver, Located, UpstreamTarget,
};
use myelin_listener::{CertMap, Limits, ListenerError, ListenerSettings, LoadedCert};
use myelin_router::{HomeserverRouter, HomeserverSettings, UpstreamAddr};
use myelin_well_known::{
    ContactSettings, Field, ServerName, SupportSettings, WellKnown, WellKnownError,
    WellKnownSettings,
};

/// One homeserver as served: its documents and its router.
pub struct Site {
    pub server_name: String,
    /// Request counters and durations of this homeserver, registered once.
    pub metrics: Arc<crate::access::RequestMetrics>,
    pub well_known: WellKnown,
    pub router: Arc<HomeserverRouter>,
}

/// What each listener does beyond accepting.
#[derive(Clone, Debug)]
pub struct ListenerPolicy {
    pub https_port: u16,
    pub trusted_proxies: Vec<IpNet>,
}

/// Everything a running Myelin is made of, built from one configuration.
pub struct Plan {
    pub certs: CertMap,
    /// Host (lower-case, no port) to site.
    pub sites: HashMap<String, Arc<Site>>,
    pub listeners: Vec<(ListenerSettings, ListenerPolicy)>,
    pub limits: Limits,
    pub shutdown_timeout: std::time::Duration,
    pub access_log: bool,
    /// `[acme]`: the certificates to keep from an ACME CA.
    pub acme: Option<myelin_acme::AcmeSettings>,
    /// Where `/metrics` is served (`[metrics] bind`), if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Things that work but are probably not what the admin wants.
    pub warnings: Vec<String>,
    pub summary: String,
}

impl Plan {
    /// Builds every part, collecting every problem. Needs a Tokio runtime (connection pools).
    pub fn build(config: &Config) -> Result<Plan, ConfigErrors> {
        let file = config.file.as_path();
        let mut errors: Vec<ConfigError> = Vec::new();
        let mut warnings = Vec::new();

        let mut certs = CertMap::new();
        for c in &config.certificates {
            let loaded = match &c.source {
                CertificateSource::Files { cert, key } => {
                    LoadedCert::from_files(&cert.value, &key.value).map_err(|e| {
                        let at = match &e {
                            ListenerError::BadKey { .. } | ListenerError::KeyMismatch { .. } => key,
                            ListenerError::Read { path, .. } if *path == key.value => key,
                            _ => cert,
                        };
                        at.error(file, e.to_string())
                    })
                }
                CertificateSource::SelfSigned { names } => {
                    LoadedCert::self_signed(names).map_err(|e| c.at.error(file, e.to_string()))
                }
            };
            match loaded {
                Ok(l) => {
                    if l.names.is_empty() {
                        warnings.push(format!(
                            "{}: the certificate has no subjectAltName; it can only be served as the default",
                            l.origin
                        ));
                    }
                    if l.remaining().is_zero() {
                        warnings.push(format!("{}: the certificate has expired", l.origin));
                    }
                    certs.insert(l, false);
                }
                Err(e) => errors.push(e),
            }
        }

        let mut sites = HashMap::new();
        let mut names = Vec::new();
        for h in &config.homeservers {
            warnings.extend(crate::routing::warnings(file, h));
            match site(file, h, &config.limits) {
                Ok((site, hosts)) => {
                    let site = Arc::new(site);
                    for host in hosts {
                        if !certs.is_empty()
                            && !certs.serves(&host)
                            && !crate::acme::certifies(config, h)
                        {
                            warnings.push(format!(
                                "no [[certificate]] covers \"{host}\": clients asking for it get the default certificate and will refuse it"
                            ));
                        }
                        sites.insert(host, site.clone());
                    }
                    names.push(site.server_name.clone());
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        let acme = crate::acme::settings(file, config, &certs, &mut errors, &mut warnings);
        if config.certificates.is_empty()
            && config.acme.is_none()
            && config.listeners.iter().any(|l| l.tls)
        {
            errors.push(ConfigError {
                file: file.to_path_buf(),
                at: None,
                key: "certificate".into(),
                message: "a TLS [[listener]] needs at least one [[certificate]] (cert + key, or self_signed) or an [acme] section".into(),
            });
        }

        if !errors.is_empty() {
            errors.sort_by_key(|e| e.at.map(|a| (a.line, a.column)));
            return Err(ConfigErrors(errors));
        }

        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                (
                    ListenerSettings {
                        bind: l.bind.value,
                        tls: l.tls,
                    },
                    ListenerPolicy {
                        https_port: l.https_port,
                        trusted_proxies: l.trusted_proxies.clone(),
                    },
                )
            })
            .collect::<Vec<_>>();
        let cert_names: usize = certs.certs().iter().map(|c| c.names.len()).sum();
        let acme_summary = acme.as_ref().map_or(String::new(), |a| {
            format!(
                ", {} ACME certificate{}",
                a.certificates.len(),
                plural(a.certificates.len())
            )
        });
        let summary = format!(
            "{} listener{}, {} certificate{} ({} name{}){acme_summary}, {} homeserver{} ({})",
            listeners.len(),
            plural(listeners.len()),
            certs.certs().len(),
            plural(certs.certs().len()),
            cert_names,
            plural(cert_names),
            names.len(),
            plural(names.len()),
            names.join(", ")
        );
        let metrics = config.metrics.as_ref().map(|m| m.bind.value);
        if let Some(bind) = metrics.filter(|b| b.ip().is_unspecified()) {
            warnings.push(format!(
                "[metrics] bind = \"{bind}\" serves the metrics on every address of this machine: bind them to 127.0.0.1 or a private address"
            ));
        }
        let l = &config.limits;
        Ok(Plan {
            certs,
            sites,
            listeners,
            limits: Limits {
                tls_handshake_timeout: l.tls_handshake_timeout,
                header_read_timeout: l.header_read_timeout,
                idle_timeout: l.idle_timeout,
                max_header_size: l.max_header_size,
                max_headers: l.max_headers,
                max_connections: l.max_connections,
                h2_max_concurrent_streams: l.h2_max_concurrent_streams,
                h2_max_resets: l.h2_max_resets,
            },
            shutdown_timeout: l.shutdown_timeout,
            access_log: config.log.access_log,
            acme,
            metrics,
            warnings,
            summary,
        })
    }

    /// Listener policies by the listener's name (its configured bind address).
    pub fn policies(&self) -> HashMap<String, ListenerPolicy> {
        self.listeners
            .iter()
            .map(|(s, p)| (s.bind.to_string(), p.clone()))
            .collect()
    }

    /// Starts what runs beside the requests once this plan serves: the upstream health checks.
    /// They stop when the plan's routers are dropped (a reload replaced them).
    pub fn start_background(&self) {
        for site in self.sites.values() {
            site.router.start_health_checks();
        }
    }

    pub fn binds(&self) -> Vec<ListenerSettings> {
        self.listeners.iter().map(|(s, _)| s.clone()).collect()
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Builds one site; returns it with the host names it answers.
fn site(
    file: &Path,
    h: &Homeserver,
    limits: &myelin_config::Limits,
) -> Result<(Site, Vec<String>), Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut hosts = Vec::new();
    match ServerName::parse(&h.server_name.value) {
        Ok(sn) => hosts.push(sn.host),
        Err(reason) => errors.push(h.server_name.error(
            file,
            format!("invalid server name \"{}\": {reason}", h.server_name.value),
        )),
    }
    for host in &h.hosts {
        match ServerName::parse(&host.value) {
            Ok(sn) => {
                if !hosts.contains(&sn.host) {
                    hosts.push(sn.host)
                }
            }
            Err(reason) => errors.push(host.error(
                file,
                format!("invalid host name \"{}\": {reason}", host.value),
            )),
        }
    }

    let wk = &h.well_known;
    let settings = WellKnownSettings {
        server: wk.server.as_ref().map(|v| v.value.clone()),
        client_base_url: wk.client_base_url.as_ref().map(|v| v.value.clone()),
        identity_server: wk.identity_server.as_ref().map(|v| v.value.clone()),
        client_extra: wk
            .client_extra
            .as_ref()
            .map(|v| v.value.clone())
            .unwrap_or_default(),
        support: wk.support.as_ref().map(|s| SupportSettings {
            support_page: s.value.support_page.as_ref().map(|v| v.value.clone()),
            contacts: s
                .value
                .contacts
                .iter()
                .map(|c| ContactSettings {
                    role: c.value.role.value.clone(),
                    matrix_id: c.value.matrix_id.as_ref().map(|v| v.value.clone()),
                    email_address: c.value.email_address.as_ref().map(|v| v.value.clone()),
                })
                .collect(),
        }),
        cache_max_age: wk
            .cache_max_age
            .as_ref()
            .map_or(myelin_config::DEFAULT_WELL_KNOWN_MAX_AGE, |d| d.value),
    };
    let well_known = match WellKnown::new(&settings) {
        Ok(w) => Some(w),
        Err(errs) => {
            for e in errs {
                errors.push(well_known_error(file, h, &e));
            }
            None
        }
    };

    let upstream = match &h.upstream.value {
        UpstreamTarget::Http { host, port } => UpstreamAddr::Tcp {
            host: host.clone(),
            port: *port,
        },
        UpstreamTarget::Unix(p) => UpstreamAddr::Unix(p.clone()),
    };
    let router = HomeserverRouter::new(HomeserverSettings {
        server_name: h.server_name.value.clone(),
        upstream,
        max_body_size: h.max_body_size,
        upstream_timeout: h.upstream_timeout,
        connect_timeout: h.connect_timeout,
        body_read_timeout: limits.body_read_timeout,
        body_min_rate: limits.body_min_rate,
        upstream_body_timeout: h.upstream_body_timeout,
        admin_allow: h.admin_allow.clone(),
        forward_prefixes: h.forward_prefixes.clone(),
        pools: crate::routing::pools(h),
        routes: crate::routing::routes(h),
    });
    let router = match router {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(h.upstream.error(file, e.to_string()));
            None
        }
    };

    match (well_known, router) {
        (Some(well_known), Some(router)) if errors.is_empty() => Ok((
            Site {
                server_name: h.server_name.value.clone(),
                metrics: Arc::new(crate::access::RequestMetrics::new(&h.server_name.value)),
                well_known,
                router: Arc::new(router),
            },
            hosts,
        )),
        _ => Err(errors),
    }
}

/// Puts a well-known error at the config key it is about.
fn well_known_error(file: &Path, h: &Homeserver, e: &WellKnownError) -> ConfigError {
    let wk = &h.well_known;
    let support = wk.support.as_ref();
    let contact = |i: usize| support.and_then(|s| s.value.contacts.get(i));
    let place: Option<Located<()>> = match e.field() {
        Field::Server => wk.server.as_ref().map(unit),
        Field::ClientBaseUrl => wk.client_base_url.as_ref().map(unit),
        Field::IdentityServer => wk.identity_server.as_ref().map(unit),
        Field::ClientExtra => wk.client_extra.as_ref().map(unit),
        Field::Support => support.map(unit),
        Field::SupportPage => support
            .and_then(|s| s.value.support_page.as_ref())
            .map(unit),
        Field::Contact(i) => contact(*i).map(unit),
        Field::ContactRole(i) => contact(*i).map(|c| unit(&c.value.role)),
        Field::ContactMatrixId(i) => contact(*i)
            .and_then(|c| c.value.matrix_id.as_ref())
            .map(unit),
        Field::ContactEmail(i) => contact(*i)
            .and_then(|c| c.value.email_address.as_ref())
            .map(unit),
    };
    let place = place.unwrap_or_else(|| unit(&h.server_name));
    place.error(file, e.to_string())
}

fn unit<T>(l: &Located<T>) -> Located<()> {
    Located {
        value: (),
        at: l.at,
        key: l.key.clone(),
    }
}

/// Socket addresses a plan listens on (for diffs on reload).
pub fn bind_set(plan: &Plan) -> HashMap<SocketAddr, ListenerSettings> {
    plan.listeners
        .iter()
        .map(|(s, _)| (s.bind, s.clone()))
        .collect()
}
