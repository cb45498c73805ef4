//! Everything that can go wrong while getting a certificate, each naming what is at fault.

use std::path::PathBuf;
use std::time::Duration;

/// The errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error(
        "unknown ACME directory \"{name}\": expected \"letsencrypt\", \"letsencrypt-staging\", \"zerossl\" or an https:// directory URL"
    )]
    UnknownDirectory { name: String },

    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },

    #[error("ACME CA ({directory}): {action} failed: {source}")]
    Ca {
        directory: String,
        action: &'static str,
        #[source]
        source: instant_acme::Error,
    },

    #[error("the CA refused the {challenge} challenge for {name}: {problem}")]
    ChallengeFailed {
        name: String,
        challenge: &'static str,
        problem: String,
    },

    #[error("the CA offers no {challenge} challenge for {name}")]
    ChallengeNotOffered {
        name: String,
        challenge: &'static str,
    },

    #[error("order for {names} ended {status}: {detail}")]
    Order {
        names: String,
        status: String,
        detail: String,
    },

    #[error("{name}: {reason}")]
    BadName { name: String, reason: String },

    #[error("DNS: {0}")]
    Dns(String),

    #[error("DNS update of {fqdn} at {server}: {reason}")]
    DnsUpdate {
        fqdn: String,
        server: String,
        reason: String,
    },

    #[error(
        "DNS: the TXT record {fqdn} was not visible at every authoritative server ({servers}) within {}s; last: {last}",
        timeout.as_secs()
    )]
    Propagation {
        fqdn: String,
        servers: String,
        timeout: Duration,
        last: String,
    },

    #[error(
        "DNS hook `{command} {action} {fqdn}` failed ({status}){}",
        stderr_note(stderr)
    )]
    Hook {
        command: String,
        action: &'static str,
        fqdn: String,
        status: String,
        stderr: String,
    },

    #[error("dns-01 is needed for {name} but [acme.dns] is not configured")]
    NoDnsProvider { name: String },

    #[error("certificate: {0}")]
    Certificate(String),

    #[error("TLS set-up for the CA's HTTPS: {0}")]
    Tls(String),

    #[error("stopped")]
    Stopped,
}

fn stderr_note(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

impl AcmeError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        AcmeError::Io {
            path: path.into(),
            action,
            source,
        }
    }
}
