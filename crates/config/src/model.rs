//! The validated configuration the rest of Myelin is built from.
//!
//! Everything here has been checked for form (addresses parse, durations have units, no key is
//! unknown). Matrix-specific rules (server-name grammar, well-known documents) and certificate
//! files are checked by the crates that own them; values they check keep their [`Located`] place
//! so the binary can report problems at the right line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::error::Located;

/// Default request body limit: Synapse's own `max_upload_size` default.
pub const DEFAULT_MAX_BODY_SIZE: u64 = 50 << 20;
/// Default time to wait for the upstream's response head. `/sync` long-polls and joins take long.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest pause in a response body once the head arrived (Synapse writes its bodies
/// in one go once it has them; a pause this long is a homeserver that hangs).
pub const DEFAULT_UPSTREAM_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default minimum request body rate, bytes per second (Apache's mod_reqtimeout uses 500).
pub const DEFAULT_BODY_MIN_RATE: u64 = 512;
/// Default `Cache-Control: max-age` on well-known documents (Synapse's default cache period).
pub const DEFAULT_WELL_KNOWN_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A whole configuration file, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (for messages).
    pub file: PathBuf,
    pub listeners: Vec<Listener>,
    pub certificates: Vec<Certificate>,
    pub homeservers: Vec<Homeserver>,
    pub limits: Limits,
    pub log: Log,
    /// `[acme]`: certificates from an ACME CA.
    pub acme: Option<crate::acme::Acme>,
    /// `[metrics]`: absent, no metrics endpoint.
    pub metrics: Option<Metrics>,
    pub runtime: Runtime,
}

/// `[runtime]`: how the process runs (takes effect at start, not on reload).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Runtime {
    /// Threads serving connections; `None`: one per CPU core.
    pub worker_threads: Option<usize>,
}

/// `[[listener]]`: one socket.
#[derive(Clone, Debug)]
pub struct Listener {
    pub bind: Located<SocketAddr>,
    /// `false`: plain HTTP, which only answers ACME HTTP-01 and redirects to HTTPS.
    pub tls: bool,
    /// For plain listeners: the port redirects point to.
    pub https_port: u16,
    pub trusted_proxies: Vec<IpNet>,
}

/// `[[certificate]]`: a certificate served for the names in its SANs.
#[derive(Clone, Debug)]
pub struct Certificate {
    pub source: CertificateSource,
    /// Where the `[[certificate]]` block starts, for errors found while loading it.
    pub at: Located<()>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateSource {
    /// PEM chain and PEM key (PKCS#8, SEC1 or PKCS#1).
    Files {
        cert: Located<PathBuf>,
        key: Located<PathBuf>,
    },
    /// Generated at start, self-signed, for these DNS names and IP addresses.
    SelfSigned { names: Vec<String> },
}

/// `[[homeserver]]`: one Matrix server name and where its homeserver listens.
#[derive(Clone, Debug)]
pub struct Homeserver {
    /// As written; grammar checked by the well-known crate.
    pub server_name: Located<String>,
    /// Other host names that reach this homeserver, as written.
    pub hosts: Vec<Located<String>>,
    pub upstream: Located<UpstreamTarget>,
    pub max_body_size: u64,
    pub upstream_timeout: Duration,
    /// Once the response head arrived, the longest pause in the upstream's body.
    pub upstream_body_timeout: Duration,
    pub connect_timeout: Duration,
    /// Who may reach `/_synapse/admin/`; empty: nobody.
    pub admin_allow: Vec<IpNet>,
    /// Path prefixes forwarded upstream besides `/_matrix/` and `/_synapse/client/`.
    pub forward_prefixes: Vec<String>,
    pub well_known: WellKnown,
    /// `acme = true/false`, as written (absent: true when `[acme]` exists).
    pub acme: Option<Located<bool>>,
    /// Per-homeserver ACME challenge.
    pub challenge: Option<Located<crate::acme::AcmeChallenge>>,
    /// Named pools of servers besides `upstream` (Synapse workers), sorted by name.
    pub upstreams: Vec<UpstreamPool>,
    /// Ordered path rules; the first that matches picks the pool. Unmatched: `upstream`.
    pub routes: Vec<Route>,
}

/// The pool name a route uses for the homeserver's own `upstream`.
pub const MAIN_POOL: &str = "main";
/// Default time between two active health checks of a server.
pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Default time a health check may take before it counts as failed.
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `[homeserver.upstreams.NAME]`: servers that can all answer the same requests.
#[derive(Clone, Debug)]
pub struct UpstreamPool {
    pub name: Located<String>,
    /// Never empty, no duplicates.
    pub servers: Vec<Located<UpstreamTarget>>,
    pub balance: Balance,
    pub health_check: Option<HealthCheck>,
}

/// How a pool picks a server for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Balance {
    /// In turn.
    #[default]
    RoundRobin,
    /// Sticky by access token (the user of a Synapse `syt_` token).
    User,
    /// Sticky by the room ID after `/rooms/` in the path.
    Room,
    /// Sticky by the `origin` of a federation request's `X-Matrix` authorization.
    Origin,
    /// Sticky by the client's address.
    Ip,
}

impl Balance {
    pub const NAMES: &'static [&'static str] = &["round_robin", "user", "room", "origin", "ip"];

    pub fn parse(s: &str) -> Option<Balance> {
        Some(match s {
            "round_robin" => Balance::RoundRobin,
            "user" => Balance::User,
            "room" => Balance::Room,
            "origin" => Balance::Origin,
            "ip" => Balance::Ip,
            _ => return None,
        })
    }
}

/// An active health check: `GET path` on every server of the pool, 2xx is healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// `[[homeserver.route]]`
#[derive(Clone, Debug)]
pub struct Route {
    /// A regular expression (already checked to compile) on the raw request path.
    pub path: Located<String>,
    /// Upper-case method names; empty: any method.
    pub methods: Vec<String>,
    /// A pool of `upstreams`, or [`MAIN_POOL`].
    pub upstream: Located<String>,
}

/// Where a homeserver (or a worker) listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// `http://host:port`
    Http { host: String, port: u16 },
    /// `unix:/path/to/socket`
    Unix(PathBuf),
}

impl std::fmt::Display for UpstreamTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamTarget::Http { host, port } if host.contains(':') => {
                write!(f, "http://[{host}]:{port}")
            }
            UpstreamTarget::Http { host, port } => write!(f, "http://{host}:{port}"),
            UpstreamTarget::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// `[homeserver.well_known]`, as written; the well-known crate validates it.
#[derive(Clone, Debug, Default)]
pub struct WellKnown {
    pub server: Option<Located<String>>,
    pub client_base_url: Option<Located<String>>,
    pub identity_server: Option<Located<String>>,
    pub cache_max_age: Option<Located<Duration>>,
    pub client_extra: Option<Located<serde_json::Map<String, serde_json::Value>>>,
    pub support: Option<Located<Support>>,
}

#[derive(Clone, Debug, Default)]
pub struct Support {
    pub support_page: Option<Located<String>>,
    pub contacts: Vec<Located<Contact>>,
}

#[derive(Clone, Debug)]
pub struct Contact {
    pub role: Located<String>,
    pub matrix_id: Option<Located<String>>,
    pub email_address: Option<Located<String>>,
}

/// `[limits]`: what one client may cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A request body that sends nothing for this long is abandoned; also the window over
    /// which `body_min_rate` is measured.
    pub body_read_timeout: Duration,
    /// Bytes per second a request body must bring, on average over each `body_read_timeout`
    /// window of waiting for it (0: no minimum, only the stall rule).
    pub body_min_rate: u64,
    pub max_header_size: usize,
    pub max_headers: usize,
    /// Across all listeners; beyond it new connections are closed at once.
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may cancel (RST_STREAM) per connection in any 10 s; beyond, the
    /// connection is closed (rapid reset, CVE-2023-44487).
    pub h2_max_resets: u32,
    /// How long SIGTERM waits for in-flight requests.
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            body_read_timeout: Duration::from_secs(60),
            body_min_rate: DEFAULT_BODY_MIN_RATE,
            max_header_size: 64 << 10,
            max_headers: 128,
            max_connections: 10_000,
            h2_max_concurrent_streams: 128,
            h2_max_resets: 200,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Plain HTTP, `GET /metrics` only; meant for loopback or a private address.
    pub bind: Located<SocketAddr>,
}

/// `[log]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `myelin=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
    pub access_log: bool,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            level: "info".into(),
            access_log: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}
