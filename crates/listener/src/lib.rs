//! Myelin's sockets. Binds listeners (IPv4 and IPv6, TLS or plain), accepts connections within
//! the configured limits, runs the TLS handshake with the certificate the SNI asks for (and the
//! ACME `acme-tls/1` challenge certificate when that is what the client asks for), serves HTTP/2
//! or HTTP/1.1 as ALPN decided, and drains connections gracefully on shutdown.
//!
//! The listener knows nothing of Matrix: every request goes to one [`Handler`].

#![forbid(unsafe_code)]

pub mod certs;
mod conn;
mod head_watch;
mod linger;
mod server;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;

pub use crate::certs::{CertMap, CertStore, LoadedCert};
pub use crate::server::{DrainReport, Server};

/// Boxed error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the handler knows about the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Whether the connection is TLS (then `X-Forwarded-Proto: https`).
    pub tls: bool,
    /// The SNI the client sent.
    pub sni: Option<Arc<str>>,
    /// HTTP/2 (by ALPN) or HTTP/1.1.
    pub h2: bool,
    /// The listener's bind address as configured (a metrics label).
    pub listener: Arc<str>,
}

/// The one service every request goes to.
pub trait Handler: Send + Sync + 'static {
    type Body: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static;
    type Future: Future<Output = Response<Self::Body>> + Send + 'static;
    fn call(&self, req: Request<Incoming>, conn: &Arc<ConnInfo>) -> Self::Future;
}

/// Per-connection limits (the `[limits]` section); changeable on reload for new connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_size: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may cancel per connection in any 10 s (rapid reset); beyond, the
    /// connection is closed.
    pub h2_max_resets: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_header_size: 64 << 10,
            max_headers: 128,
            max_connections: 10_000,
            h2_max_concurrent_streams: 128,
            h2_max_resets: 200,
        }
    }
}

/// One socket to listen on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSettings {
    pub bind: SocketAddr,
    pub tls: bool,
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: bad certificate: {reason}")]
    BadCertificate { path: String, reason: String },
    #[error("{path}: bad private key: {reason}")]
    BadKey { path: String, reason: String },
    #[error("{path}: the private key does not belong to the certificate")]
    KeyMismatch { path: String },
    #[error("cannot generate a self-signed certificate: {reason}")]
    SelfSigned { reason: String },
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("TLS set-up failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// ALPN protocol ID of the TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
