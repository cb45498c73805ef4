//! Myelin's configuration: one TOML file in, a validated [`Config`] out.
//!
//! The file format lives in [`raw`] (serde structs that mirror the TOML, unknown keys refused);
//! [`model`] holds the validated types the rest of Myelin is built from. Every problem found is
//! reported, each with its file, line, column, key path and what was expected.

#![forbid(unsafe_code)]

pub mod acme;
mod document;
pub mod error;
pub mod model;
pub mod raw;
mod routing;
pub mod units;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;
use toml::de::DeValue;

pub use crate::acme::{Acme, AcmeCertificate, AcmeChallenge, AcmeDns, AcmeDnsProvider};
use crate::document::Document;
pub use crate::error::{ConfigError, ConfigErrors, Located, Location};
pub use crate::model::*;
use crate::raw::*;

/// Keys allowed at the top of the file.
const TOP_LEVEL_KEYS: &[&str] = &[
    "listener",
    "certificate",
    "homeserver",
    "limits",
    "log",
    "acme",
    "metrics",
    "runtime",
];

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            at: None,
            key: String::new(),
            message: format!("cannot read the configuration file: {e}"),
        }])
    })?;
    parse(&text, path)
}

/// Validates configuration `text`; `file` is used in messages only.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
    let mut doc = Document::new(text, file);
    let Some(root) = document::parse_table(&mut doc) else {
        return Err(ConfigErrors(doc.errors));
    };

    let mut listeners = Vec::new();
    let mut certificates = Vec::new();
    let mut homeservers = Vec::new();
    let mut limits = Limits::default();
    let mut log = Log::default();
    let mut acme_config = None;
    let mut metrics = None;
    let mut runtime = Runtime::default();

    for (key, value) in root.get_ref().iter() {
        let name = key.get_ref().as_ref();
        match name {
            "listener" => {
                for (path, v) in doc.array_of_tables(value, "listener") {
                    if let Some(raw) = doc.block::<RawListener>(v, &path) {
                        if let Some(l) = listener(&mut doc, raw, &path) {
                            listeners.push(l);
                        }
                    }
                }
            }
            "certificate" => {
                for (path, v) in doc.array_of_tables(value, "certificate") {
                    if let Some(raw) = doc.block::<RawCertificate>(v, &path) {
                        if let Some(c) = certificate(&mut doc, raw, &path, v) {
                            certificates.push(c);
                        }
                    }
                }
            }
            "homeserver" => {
                for (path, v) in doc.array_of_tables(value, "homeserver") {
                    if let Some(raw) = doc.block::<RawHomeserver>(v, &path) {
                        if let Some(h) = homeserver(&mut doc, raw, &path) {
                            homeservers.push(h);
                        }
                    }
                }
            }
            "limits" => {
                if let Some(raw) = table_block::<RawLimits>(&mut doc, value, "limits") {
                    limits = convert_limits(&mut doc, raw);
                }
            }
            "runtime" => {
                if let Some(raw) = table_block::<RawRuntime>(&mut doc, value, "runtime") {
                    runtime = convert_runtime(&mut doc, raw);
                }
            }
            "log" => {
                if let Some(raw) = table_block::<RawLog>(&mut doc, value, "log") {
                    log = convert_log(&mut doc, raw);
                }
            }
            "acme" => {
                if let Some(raw) = table_block::<acme::RawAcme>(&mut doc, value, "acme") {
                    acme_config = acme::convert(&mut doc, raw, value.span());
                }
            }
            "metrics" => {
                if let Some(raw) = table_block::<RawMetrics>(&mut doc, value, "metrics") {
                    metrics = convert_metrics(&mut doc, raw);
                }
            }
            other => doc.error(
                Some(key.span()),
                other,
                format!(
                    "unknown key \"{other}\"; expected one of: {}",
                    TOP_LEVEL_KEYS.join(", ")
                ),
            ),
        }
    }

    check_whole(&mut doc, &listeners, &homeservers);
    acme::check(&mut doc, acme_config.as_ref(), &homeservers);
    if let Some(m) = &metrics {
        check_metrics_bind(&mut doc, m, &listeners);
    }

    if !doc.errors.is_empty() {
        doc.errors.sort_by_key(|e| e.at.map(|a| (a.line, a.column)));
        return Err(ConfigErrors(doc.errors));
    }
    Ok(Config {
        file: file.to_path_buf(),
        listeners,
        certificates,
        homeservers,
        limits,
        log,
        acme: acme_config,
        metrics,
        runtime,
    })
}

fn convert_runtime(doc: &mut Document<'_>, raw: RawRuntime) -> Runtime {
    let worker_threads = raw
        .worker_threads
        .and_then(|w| match usize::try_from(*w.get_ref()) {
            Ok(n) if (1..=1024).contains(&n) => Some(n),
            _ => {
                doc.error(
                    Some(w.span()),
                    "runtime.worker_threads",
                    "expected a number of threads from 1 to 1024",
                );
                None
            }
        });
    Runtime { worker_threads }
}

fn table_block<T: serde::de::DeserializeOwned>(
    doc: &mut Document<'_>,
    value: &Spanned<DeValue<'_>>,
    name: &str,
) -> Option<T> {
    if !value.get_ref().is_table() {
        doc.error(
            Some(value.span()),
            name,
            format!(
                "expected a table [{name}], found {}",
                value.get_ref().type_str()
            ),
        );
        return None;
    }
    doc.block::<T>(value, name)
}

fn listener(doc: &mut Document<'_>, raw: RawListener, path: &str) -> Option<Listener> {
    let key = format!("{path}.bind");
    let span = raw.bind.span();
    let bind = match parse_bind(raw.bind.get_ref()) {
        Ok(a) => a,
        Err(msg) => {
            doc.error(Some(span), key, msg);
            return None;
        }
    };
    let https_port = match raw.https_port {
        None => 443,
        Some(p) => match u16::try_from(*p.get_ref()) {
            Ok(port) if port > 0 => port,
            _ => {
                doc.error(
                    Some(p.span()),
                    format!("{path}.https_port"),
                    "expected a port number 1-65535",
                );
                443
            }
        },
    };
    let trusted_proxies = ip_nets(doc, raw.trusted_proxies, &format!("{path}.trusted_proxies"));
    Some(Listener {
        bind: doc.located(span, key, bind),
        tls: raw.tls,
        https_port,
        trusted_proxies,
    })
}

/// `127.0.0.1:8443`, `[::1]:8443`; a port is required.
pub fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(s.trim()).map_err(|_| {
        if s.parse::<IpAddr>().is_ok() {
            format!("invalid bind address \"{s}\": add a port, e.g. \"{s}:443\" (IPv6: \"[::]:443\")")
        } else {
            format!(
                "invalid bind address \"{s}\": expected IP:port, e.g. \"0.0.0.0:443\" or \"[::]:443\" (no host names)"
            )
        }
    })
}

fn certificate(
    doc: &mut Document<'_>,
    raw: RawCertificate,
    path: &str,
    block: &Spanned<DeValue<'_>>,
) -> Option<Certificate> {
    let at = doc.located(block.span(), path, ());
    let source = match (raw.cert, raw.key, raw.self_signed) {
        (Some(cert), Some(key), None) => CertificateSource::Files {
            cert: doc
                .located_spanned(cert, format!("{path}.cert"))
                .map_into(PathBuf::from),
            key: doc
                .located_spanned(key, format!("{path}.key"))
                .map_into(PathBuf::from),
        },
        (None, None, Some(names)) => {
            let span = names.span();
            let names: Vec<String> = names
                .into_inner()
                .into_iter()
                .map(|n| n.into_inner())
                .collect();
            if names.is_empty() {
                doc.error(
                    Some(span),
                    format!("{path}.self_signed"),
                    "expected at least one name",
                );
                return None;
            }
            CertificateSource::SelfSigned { names }
        }
        (Some(_), None, None) => {
            doc.error(
                Some(block.span()),
                path,
                "\"cert\" is set but \"key\" is missing",
            );
            return None;
        }
        (None, Some(_), None) => {
            doc.error(
                Some(block.span()),
                path,
                "\"key\" is set but \"cert\" is missing",
            );
            return None;
        }
        (None, None, None) => {
            doc.error(
                Some(block.span()),
                path,
                "expected \"cert\" and \"key\" (PEM files), or \"self_signed\" (a list of names)",
            );
            return None;
        }
        (_, _, Some(_)) => {
            doc.error(
                Some(block.span()),
                path,
                "\"self_signed\" cannot be combined with \"cert\"/\"key\"",
            );
            return None;
        }
    };
    Some(Certificate { source, at })
}

fn homeserver(doc: &mut Document<'_>, raw: RawHomeserver, path: &str) -> Option<Homeserver> {
    let errors_before = doc.errors.len();
    let server_name = doc.located_spanned(
        raw.server_name.map_inner(|s| s.trim().to_string()),
        format!("{path}.server_name"),
    );
    if server_name.value.is_empty() {
        let at = server_name.at;
        doc.errors.push(ConfigError {
            file: doc.file.to_path_buf(),
            at: Some(at),
            key: server_name.key.clone(),
            message: "is not set: write your Matrix server name here (the part after \":\" in \
                      user IDs such as @alice:example.com), e.g. server_name = \"example.com\", \
                      then run \"myelin check-config\" again"
                .into(),
        });
    }
    let hosts = raw
        .hosts
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            doc.located_spanned(
                h.map_inner(|s| s.trim().to_string()),
                format!("{path}.hosts[{i}]"),
            )
        })
        .collect();
    let upstream_key = format!("{path}.upstream");
    let upstream_span = raw.upstream.span();
    let upstream = match parse_upstream(raw.upstream.get_ref()) {
        Ok(u) => Some(doc.located(upstream_span, upstream_key, u)),
        Err(msg) => {
            doc.error(Some(upstream_span), upstream_key, msg);
            None
        }
    };
    let admin_allow = ip_nets(doc, raw.admin_allow, &format!("{path}.admin_allow"));
    let mut forward_prefixes = Vec::new();
    for (i, p) in raw.forward_prefixes.into_iter().enumerate() {
        let v = p.get_ref();
        if !v.starts_with('/') || !v.ends_with('/') || v.len() < 3 {
            doc.error(
                Some(p.span()),
                format!("{path}.forward_prefixes[{i}]"),
                format!("invalid prefix \"{v}\": expected a path that starts and ends with \"/\", e.g. \"/_continuwuity/\""),
            );
        } else {
            forward_prefixes.push(v.clone());
        }
    }
    let well_known = raw
        .well_known
        .map(|w| well_known(doc, w, &format!("{path}.well_known")));
    let pool_names = raw.upstreams.keys().map(|k| k.get_ref().clone()).collect();
    let upstreams = routing::pools(doc, raw.upstreams, path);
    let routes = routing::routes(doc, raw.route, &pool_names, path);
    let acme = raw
        .acme
        .map(|a| doc.located_spanned(a, format!("{path}.acme")));
    let challenge = raw
        .challenge
        .and_then(|c| acme::parse_challenge(doc, c, format!("{path}.challenge")));
    if doc.errors.len() > errors_before {
        return None;
    }
    Some(Homeserver {
        server_name,
        hosts,
        upstream: upstream?,
        max_body_size: raw.max_body_size.map_or(DEFAULT_MAX_BODY_SIZE, |s| s.0),
        upstream_timeout: raw
            .upstream_timeout
            .map_or(DEFAULT_UPSTREAM_TIMEOUT, |d| d.0),
        upstream_body_timeout: raw
            .upstream_body_timeout
            .map_or(DEFAULT_UPSTREAM_BODY_TIMEOUT, |d| d.0),
        connect_timeout: raw.connect_timeout.map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
        admin_allow,
        forward_prefixes,
        well_known: well_known.unwrap_or_default(),
        upstreams,
        routes,
        acme,
        challenge,
    })
}

/// `http://host:port` (port defaults to 80) or `unix:/absolute/path`.
pub fn parse_upstream(s: &str) -> Result<UpstreamTarget, String> {
    let s = s.trim();
    if let Some(path) = s.strip_prefix("unix:") {
        let path = path.trim_start_matches("//");
        if !path.starts_with('/') {
            return Err(format!(
                "invalid upstream \"{s}\": a unix socket path must be absolute, e.g. \"unix:/run/synapse/main.sock\""
            ));
        }
        return Ok(UpstreamTarget::Unix(PathBuf::from(path)));
    }
    if s.starts_with("https://") {
        return Err(format!(
            "invalid upstream \"{s}\": TLS to the upstream is not supported; use http://host:port on a private address or unix:/path"
        ));
    }
    let Some(rest) = s.strip_prefix("http://") else {
        return Err(format!(
            "invalid upstream \"{s}\": expected \"http://host:port\" or \"unix:/path/to/socket\""
        ));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "invalid upstream \"{s}\": expected only scheme, host and port (no path), e.g. \"http://127.0.0.1:8008\""
        ));
    }
    let (host, port) = split_host_port(authority)
        .ok_or_else(|| format!("invalid upstream \"{s}\": bad host or port"))?;
    Ok(UpstreamTarget::Http {
        host: host.to_string(),
        port: port.unwrap_or(80),
    })
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`.
pub fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        return match after {
            "" => Some((host, None)),
            p => Some((
                host,
                Some(p.strip_prefix(':')?.parse().ok().filter(|p| *p > 0)?),
            )),
        };
    }
    match s.rsplit_once(':') {
        None if !s.is_empty() => Some((s, None)),
        Some((h, p)) if !h.is_empty() && !h.contains(':') => {
            Some((h, Some(p.parse().ok().filter(|p: &u16| *p > 0)?)))
        }
        _ => None,
    }
}

fn ip_nets(doc: &mut Document<'_>, raw: Vec<Spanned<String>>, key: &str) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let v = s.get_ref().trim();
        let parsed = v
            .parse::<IpNet>()
            .or_else(|_| v.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => out.push(n.trunc()),
            Err(_) => doc.error(
                Some(s.span()),
                format!("{key}[{i}]"),
                format!("invalid address range \"{v}\": expected an IP address or CIDR range, e.g. \"10.0.0.0/8\" or \"::1\""),
            ),
        }
    }
    out
}

fn well_known(doc: &mut Document<'_>, raw: RawWellKnown, path: &str) -> WellKnown {
    let support = raw.support.map(|s| {
        let span = s.span();
        let s = s.into_inner();
        let support = Support {
            support_page: s
                .support_page
                .map(|p| doc.located_spanned(p, format!("{path}.support.support_page"))),
            contacts: s
                .contacts
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    let key = format!("{path}.support.contacts[{i}]");
                    let span = c.span();
                    let c = c.into_inner();
                    let contact = Contact {
                        role: doc.located_spanned(c.role, format!("{key}.role")),
                        matrix_id: c
                            .matrix_id
                            .map(|m| doc.located_spanned(m, format!("{key}.matrix_id"))),
                        email_address: c
                            .email_address
                            .map(|m| doc.located_spanned(m, format!("{key}.email_address"))),
                    };
                    doc.located(span, key, contact)
                })
                .collect(),
        };
        doc.located(span, format!("{path}.support"), support)
    });
    WellKnown {
        server: raw
            .server
            .map(|s| doc.located_spanned(s, format!("{path}.server"))),
        client_base_url: raw
            .client_base_url
            .map(|s| doc.located_spanned(s, format!("{path}.client_base_url"))),
        identity_server: raw
            .identity_server
            .map(|s| doc.located_spanned(s, format!("{path}.identity_server"))),
        cache_max_age: raw
            .cache_max_age
            .map(|d| doc.located_spanned(d.map_inner(|d| d.0), format!("{path}.cache_max_age"))),
        client_extra: raw
            .client_extra
            .map(|m| doc.located_spanned(m, format!("{path}.client_extra"))),
        support,
    }
}

fn convert_limits(doc: &mut Document<'_>, raw: RawLimits) -> Limits {
    let d = Limits::default();
    let mut positive = |v: Option<Spanned<i64>>, key: &str, max: i64, default: usize| -> usize {
        match v {
            None => default,
            Some(s) if (1..=max).contains(s.get_ref()) => *s.get_ref() as usize,
            Some(s) => {
                doc.error(
                    Some(s.span()),
                    format!("limits.{key}"),
                    format!("expected a number from 1 to {max}"),
                );
                default
            }
        }
    };
    let max_headers = positive(raw.max_headers, "max_headers", 10_000, d.max_headers);
    let max_connections = positive(
        raw.max_connections,
        "max_connections",
        10_000_000,
        d.max_connections,
    );
    let streams = positive(
        raw.h2_max_concurrent_streams,
        "h2_max_concurrent_streams",
        10_000,
        d.h2_max_concurrent_streams as usize,
    );
    let h2_max_resets = positive(
        raw.h2_max_resets,
        "h2_max_resets",
        1_000_000,
        d.h2_max_resets as usize,
    );
    let max_header_size = match raw.max_header_size {
        None => d.max_header_size,
        Some(s) if (8 << 10..=16 << 20).contains(&s.get_ref().0) => s.get_ref().0 as usize,
        Some(s) => {
            doc.error(
                Some(s.span()),
                "limits.max_header_size",
                "expected a size from \"8K\" to \"16M\"",
            );
            d.max_header_size
        }
    };
    let body_min_rate = match raw.body_min_rate {
        None => d.body_min_rate,
        Some(s) if s.get_ref().0 <= 1 << 30 => s.get_ref().0,
        Some(s) => {
            doc.error(
                Some(s.span()),
                "limits.body_min_rate",
                "expected bytes per second from 0 (no minimum) to \"1G\", e.g. \"512\" or \"1K\"",
            );
            d.body_min_rate
        }
    };
    let dur = |v: Option<units::HumanDuration>, default: Duration| v.map_or(default, |d| d.0);
    Limits {
        tls_handshake_timeout: dur(raw.tls_handshake_timeout, d.tls_handshake_timeout),
        header_read_timeout: dur(raw.header_read_timeout, d.header_read_timeout),
        idle_timeout: dur(raw.idle_timeout, d.idle_timeout),
        body_read_timeout: dur(raw.body_read_timeout, d.body_read_timeout),
        body_min_rate,
        max_header_size,
        max_headers,
        max_connections,
        h2_max_concurrent_streams: streams as u32,
        h2_max_resets: h2_max_resets as u32,
        shutdown_timeout: dur(raw.shutdown_timeout, d.shutdown_timeout),
    }
}

fn convert_log(doc: &mut Document<'_>, raw: RawLog) -> Log {
    let d = Log::default();
    let format = match raw.format {
        None => d.format,
        Some(f) => match f.get_ref().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                doc.error(
                    Some(f.span()),
                    "log.format",
                    format!("unknown format \"{other}\": expected \"text\" or \"json\""),
                );
                d.format
            }
        },
    };
    Log {
        format,
        level: raw.level.map_or(d.level, |l| l.into_inner()),
        access_log: raw.access_log.unwrap_or(d.access_log),
    }
}

fn convert_metrics(doc: &mut Document<'_>, raw: RawMetrics) -> Option<Metrics> {
    let span = raw.bind.span();
    match parse_bind(raw.bind.get_ref()) {
        Ok(a) => Some(Metrics {
            bind: doc.located(span, "metrics.bind", a),
        }),
        Err(msg) => {
            doc.error(Some(span), "metrics.bind", msg);
            None
        }
    }
}

/// The metrics endpoint gets a socket of its own: it must not be one of the public listeners.
fn check_metrics_bind(doc: &mut Document<'_>, metrics: &Metrics, listeners: &[Listener]) {
    let bind = metrics.bind.value;
    // Port 0 means "any free port": two of those never collide.
    if bind.port() == 0 {
        return;
    }
    let clash = listeners.iter().find(|l| {
        let other = l.bind.value;
        other.port() == bind.port()
            && (other.ip() == bind.ip()
                || other.ip().is_unspecified()
                || bind.ip().is_unspecified())
            && other.is_ipv4() == bind.is_ipv4()
    });
    if let Some(l) = clash {
        let msg = format!(
            "the metrics endpoint {bind} would share a port with the [[listener]] {} at line {}: give it a port of its own, e.g. \"127.0.0.1:9464\"",
            l.bind.value, l.bind.at.line
        );
        doc.errors.push(metrics.bind.error(doc.file, msg));
    }
}

/// Rules across blocks: duplicate listeners, two homeservers claiming one host, nothing to serve.
fn check_whole(doc: &mut Document<'_>, listeners: &[Listener], homeservers: &[Homeserver]) {
    let mut seen: HashMap<SocketAddr, &Located<SocketAddr>> = HashMap::new();
    for l in listeners {
        if let Some(first) = seen.get(&l.bind.value) {
            let msg = format!(
                "duplicate listener {}: already defined at line {}",
                l.bind.value, first.at.line
            );
            doc.errors.push(l.bind.error(doc.file, msg));
        } else {
            seen.insert(l.bind.value, &l.bind);
        }
    }
    let mut hosts: HashMap<String, (usize, &Located<String>)> = HashMap::new();
    for (i, h) in homeservers.iter().enumerate() {
        let names = std::iter::once(&h.server_name).chain(h.hosts.iter());
        for name in names {
            let Some(host) = host_key(&name.value) else {
                continue;
            };
            match hosts.get(&host) {
                Some((j, first)) if *j != i => {
                    let msg = format!(
                        "host \"{host}\" is already served by the homeserver at line {}",
                        first.at.line
                    );
                    doc.errors.push(name.error(doc.file, msg));
                }
                Some(_) => {}
                None => {
                    hosts.insert(host, (i, name));
                }
            }
        }
    }
    if listeners.is_empty() && doc.errors.is_empty() {
        doc.error(
            None,
            "listener",
            "no [[listener]] is configured: nothing would be served",
        );
    }
    if homeservers.is_empty() && doc.errors.is_empty() {
        doc.error(
            None,
            "homeserver",
            "no [[homeserver]] is configured: nothing would be served",
        );
    }
}

/// The host part of a server name or host entry, lower-cased, as requests are matched by it.
pub fn host_key(name: &str) -> Option<String> {
    let (host, _) = split_host_port(name.trim())?;
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

trait LocatedExt<T> {
    fn map_into<U>(self, f: impl FnOnce(T) -> U) -> Located<U>;
}

impl<T> LocatedExt<T> for Located<T> {
    fn map_into<U>(self, f: impl FnOnce(T) -> U) -> Located<U> {
        Located {
            value: f(self.value),
            at: self.at,
            key: self.key,
        }
    }
}

trait SpannedExt<T> {
    fn map_inner<U>(self, f: impl FnOnce(T) -> U) -> Spanned<U>;
}

impl<T> SpannedExt<T> for Spanned<T> {
    fn map_inner<U>(self, f: impl FnOnce(T) -> U) -> Spanned<U> {
        let span = self.span();
        Spanned::new(span, f(self.into_inner()))
    }
}

#[cfg(test)]
mod doc_keys;
#[cfg(test)]
mod tests;
