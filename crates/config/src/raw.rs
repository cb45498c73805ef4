//! The file format, one serde struct per table, mirroring the TOML exactly.
//!
//! Nothing here is used by the rest of Myelin: [`crate::model`] turns these into validated types.
//! Values that need checking after parsing keep their span so errors can point at them.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::units::{ByteSize, HumanDuration};

/// `[[listener]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub bind: Spanned<String>,
    #[serde(default = "yes")]
    pub tls: bool,
    /// Plain listeners: the HTTPS port redirects point to (default 443, left out of the URL).
    pub https_port: Option<Spanned<i64>>,
    /// Peers whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed (an L4/L7 balancer in front).
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
}

/// `[[certificate]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    /// Generate a self-signed certificate for these names at start (testing, the embedded default).
    pub self_signed: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[[homeserver]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHomeserver {
    pub server_name: Spanned<String>,
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    pub upstream: Spanned<String>,
    pub max_body_size: Option<ByteSize>,
    pub upstream_timeout: Option<HumanDuration>,
    /// Longest pause in the upstream's response body once its head arrived.
    pub upstream_body_timeout: Option<HumanDuration>,
    pub connect_timeout: Option<HumanDuration>,
    #[serde(default)]
    pub admin_allow: Vec<Spanned<String>>,
    /// Extra path prefixes forwarded upstream, e.g. `/_continuwuity/`.
    #[serde(default)]
    pub forward_prefixes: Vec<Spanned<String>>,
    pub well_known: Option<RawWellKnown>,
    /// Certify this homeserver's names by ACME (default: true when `[acme]` exists).
    pub acme: Option<Spanned<bool>>,
    /// ACME challenge for this homeserver's names, overriding `[acme] challenge`.
    pub challenge: Option<Spanned<String>>,
    /// `[homeserver.upstreams.NAME]`: named pools of servers (Synapse workers).
    #[serde(default)]
    pub upstreams: BTreeMap<Spanned<String>, Spanned<RawUpstreamPool>>,
    /// `[[homeserver.route]]`: ordered path rules sending requests to a pool.
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
}

/// `[homeserver.upstreams.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamPool {
    pub servers: Spanned<Vec<Spanned<String>>>,
    /// "round_robin" (default), "user", "room", "origin" or "ip".
    pub balance: Option<Spanned<String>>,
    /// Path of an active health check, e.g. "/health".
    pub health_check: Option<Spanned<String>>,
    pub health_check_interval: Option<Spanned<HumanDuration>>,
    pub health_check_timeout: Option<Spanned<HumanDuration>>,
}

/// `[[homeserver.route]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// A regular expression matched against the raw (undecoded) request path.
    pub path: Spanned<String>,
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    /// A pool name from `[homeserver.upstreams]`, or "main" for the homeserver's `upstream`.
    pub upstream: Spanned<String>,
}

/// `[homeserver.well_known]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWellKnown {
    pub server: Option<Spanned<String>>,
    pub client_base_url: Option<Spanned<String>>,
    pub identity_server: Option<Spanned<String>>,
    pub cache_max_age: Option<Spanned<HumanDuration>>,
    pub client_extra: Option<Spanned<serde_json::Map<String, serde_json::Value>>>,
    pub support: Option<Spanned<RawSupport>>,
}

/// `[homeserver.well_known.support]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSupport {
    pub support_page: Option<Spanned<String>>,
    #[serde(default)]
    pub contacts: Vec<Spanned<RawContact>>,
}

/// One entry of `contacts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContact {
    pub role: Spanned<String>,
    pub matrix_id: Option<Spanned<String>>,
    pub email_address: Option<Spanned<String>>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub tls_handshake_timeout: Option<HumanDuration>,
    pub header_read_timeout: Option<HumanDuration>,
    pub idle_timeout: Option<HumanDuration>,
    pub body_read_timeout: Option<HumanDuration>,
    /// Bytes per second a request body must average over each `body_read_timeout` window.
    pub body_min_rate: Option<Spanned<ByteSize>>,
    pub max_header_size: Option<Spanned<ByteSize>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub h2_max_concurrent_streams: Option<Spanned<i64>>,
    pub h2_max_resets: Option<Spanned<i64>>,
    pub shutdown_timeout: Option<HumanDuration>,
}

/// `[runtime]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub worker_threads: Option<Spanned<i64>>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<Spanned<String>>,
    pub level: Option<Spanned<String>>,
    pub access_log: Option<bool>,
}

/// `[metrics]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Where Prometheus scrapes `/metrics`: its own listener, never a public one.
    pub bind: Spanned<String>,
}

fn yes() -> bool {
    true
}
