//! Myelin's own certificates from an ACME CA (RFC 8555): Let's Encrypt, ZeroSSL, or any other.
//!
//! [instant-acme](https://docs.rs/instant-acme) drives every order; this crate adds what a
//! long-running proxy needs around it:
//! - the solvers: HTTP-01 tokens answered by the binary's plain listeners ([`Http01Tokens`]),
//!   TLS-ALPN-01 certificates handed to the listener's `acme-tls/1` resolver, and DNS-01 through a
//!   [`dns::DnsProvider`] (`rfc2136`: TSIG-signed dynamic updates; `exec`: the admin's command),
//!   with the TXT record confirmed at the zone's authoritative servers before the CA is asked to
//!   look;
//! - the scheduler ([`AcmeManager`]): a temporary self-signed certificate until the first real
//!   one, stored certificates reused across restarts, renewal by ARI or at a third of the lifetime
//!   left, exponential back-off honouring `Retry-After`, new certificates swapped into the live
//!   [`CertStore`] without a restart;
//! - the state on disk behind [`CertificateStore`] (account, certificates, a lock), written
//!   atomically with private keys mode 0600.
//!
//! The crate knows nothing of Myelin's configuration file: it takes [`AcmeSettings`].

#![forbid(unsafe_code)]

mod account;
mod client;
pub mod dns;
mod error;
mod http01;
mod manager;
mod order;
mod schedule;
mod settings;
mod store;
mod tls_alpn;

pub use crate::error::AcmeError;
pub use crate::http01::{HTTP01_PREFIX, Http01Tokens};
pub use crate::manager::AcmeManager;
pub use crate::settings::{
    AcmeSettings, CertificateRequest, ChallengeKind, ExternalAccountBinding, directory_url,
    read_eab_hmac_key,
};
pub use crate::store::{
    CertificateMeta, CertificateStore, FileStore, StoreLock, StoredCertificate,
};
pub use myelin_listener::CertStore;
