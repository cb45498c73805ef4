//! What the ACME manager is told to do: the CA, where state lives, and which certificates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;

use crate::AcmeError;
use crate::dns::DnsSettings;

/// Everything the ACME manager needs; built by the binary from its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeSettings {
    /// The CA's directory URL (see [`directory_url`] for the well-known names).
    pub directory_url: String,
    /// Contact address given to the CA (expiry notices, policy changes).
    pub email: Option<String>,
    /// Account, certificates and the lock live here (created with mode 0700).
    pub state_dir: PathBuf,
    /// Extra roots trusted for the CA's own HTTPS (a private CA, Pebble in tests).
    pub ca_roots: Option<PathBuf>,
    /// External account binding (ZeroSSL and other commercial CAs).
    pub eab: Option<ExternalAccountBinding>,
    /// How DNS-01 records are published; needed when any certificate uses DNS-01.
    pub dns: Option<DnsSettings>,
    pub certificates: Vec<CertificateRequest>,
    /// First wait after a failed attempt; doubled at each further failure up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl AcmeSettings {
    /// Settings with the default retry policy.
    pub fn new(directory_url: String, state_dir: PathBuf) -> Self {
        AcmeSettings {
            directory_url,
            email: None,
            state_dir,
            ca_roots: None,
            eab: None,
            dns: None,
            certificates: Vec::new(),
            retry_min: Duration::from_secs(5),
            retry_max: Duration::from_secs(6 * 3600),
        }
    }
}

/// One certificate to keep: the names it must cover and how control over them is proven.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateRequest {
    /// Stable name of the certificate on disk (usually its first name).
    pub id: String,
    /// DNS names, lower-case; `*.example.com` for a wildcard (DNS-01 only).
    pub names: Vec<String>,
    pub challenge: ChallengeKind,
}

/// How the CA checks that we control a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChallengeKind {
    /// A token at `http://NAME/.well-known/acme-challenge/` (port 80).
    Http01,
    /// A special certificate for ALPN `acme-tls/1` (port 443).
    TlsAlpn01,
    /// A TXT record at `_acme-challenge.NAME`: the only one for wildcards and for names whose
    /// address is not this machine (SRV delegation).
    Dns01,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Dns01 => "dns-01",
        }
    }

    /// `"http-01"`, `"tls-alpn-01"` or `"dns-01"`.
    pub fn parse(s: &str) -> Option<ChallengeKind> {
        match s {
            "http-01" => Some(ChallengeKind::Http01),
            "tls-alpn-01" => Some(ChallengeKind::TlsAlpn01),
            "dns-01" => Some(ChallengeKind::Dns01),
            _ => None,
        }
    }
}

/// The key a CA gave for external account binding.
#[derive(Clone, PartialEq, Eq)]
pub struct ExternalAccountBinding {
    pub kid: String,
    /// The decoded HMAC key.
    pub hmac_key: Vec<u8>,
}

impl std::fmt::Debug for ExternalAccountBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalAccountBinding")
            .field("kid", &self.kid)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

/// The directory URL for a well-known CA name, or the URL itself when given one.
pub fn directory_url(name: &str) -> Result<String, AcmeError> {
    let name = name.trim();
    let known = match name {
        "letsencrypt" => Some(instant_acme::LetsEncrypt::Production.url()),
        "letsencrypt-staging" => Some(instant_acme::LetsEncrypt::Staging.url()),
        "zerossl" => Some(instant_acme::ZeroSsl::Production.url()),
        _ => None,
    };
    if let Some(url) = known {
        return Ok(url.to_string());
    }
    match name.strip_prefix("https://") {
        Some(rest) if !rest.is_empty() && name.parse::<http::Uri>().is_ok() => Ok(name.to_string()),
        _ => Err(AcmeError::UnknownDirectory {
            name: name.to_string(),
        }),
    }
}

/// Reads an EAB HMAC key file: base64url as CAs hand it out (padding and standard base64 accepted).
pub fn read_eab_hmac_key(path: &Path) -> Result<Vec<u8>, AcmeError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AcmeError::io(path, "cannot read the EAB HMAC key", e))?;
    decode_base64_any(text.trim()).ok_or_else(|| AcmeError::BadFile {
        path: path.to_path_buf(),
        reason: "the EAB HMAC key is not base64 (expected the key exactly as the CA shows it)"
            .into(),
    })
}

/// Decodes base64 in any of its usual alphabets, with or without padding.
pub(crate) fn decode_base64_any(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let s: String = s.split_whitespace().collect();
    if s.is_empty() {
        return None;
    }
    [URL_SAFE_NO_PAD, URL_SAFE, STANDARD, STANDARD_NO_PAD]
        .iter()
        .find_map(|e| e.decode(&s).ok())
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names() {
        assert!(
            directory_url("letsencrypt")
                .unwrap()
                .contains("acme-v02.api.letsencrypt.org")
        );
        assert!(
            directory_url("letsencrypt-staging")
                .unwrap()
                .contains("staging")
        );
        assert!(directory_url("zerossl").unwrap().contains("zerossl"));
        assert_eq!(
            directory_url("https://127.0.0.1:14000/dir").unwrap(),
            "https://127.0.0.1:14000/dir"
        );
        let err = directory_url("letsencrypt-prod").unwrap_err().to_string();
        assert!(
            err.contains("unknown ACME directory \"letsencrypt-prod\""),
            "{err}"
        );
        assert!(directory_url("http://insecure/dir").is_err());
        assert!(directory_url("https://").is_err());
    }

    #[test]
    fn base64_in_all_forms() {
        assert_eq!(decode_base64_any("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64_any("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64_any("-_8").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode_base64_any("+/8=").unwrap(), [0xfb, 0xff]);
        assert!(decode_base64_any("not base64!").is_none());
        assert!(decode_base64_any("").is_none());
    }
}
