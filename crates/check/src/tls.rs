//! Trust and certificates: the roots other servers trust (this machine's, as Synapse uses, plus
//! `--ca-file`), a verifier that records why a certificate is refused so the report can say it
//! in plain words, and a summary of the certificate a server presented.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::CheckError;

/// The name a certificate must be valid for: a DNS name (also sent as SNI) or an IP address
/// (no SNI, as the spec prescribes for IP literals).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsName {
    Dns(String),
    Ip(IpAddr),
}

impl TlsName {
    pub fn for_host(host: &str) -> TlsName {
        match host.trim_start_matches('[').trim_end_matches(']').parse() {
            Ok(ip) => TlsName::Ip(ip),
            Err(_) => TlsName::Dns(host.to_ascii_lowercase()),
        }
    }

    pub fn server_name(&self) -> Result<ServerName<'static>, String> {
        match self {
            TlsName::Dns(d) => ServerName::try_from(d.clone())
                .map_err(|_| format!("\"{d}\" is not a valid DNS name")),
            TlsName::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
        }
    }
}

impl std::fmt::Display for TlsName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsName::Dns(d) => f.write_str(d),
            TlsName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The trust roots of a check.
#[derive(Clone)]
pub struct Trust {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    /// Where the roots came from, for the report.
    pub description: String,
}

impl Trust {
    /// This machine's trust store (as homeservers use it; `SSL_CERT_FILE`/`SSL_CERT_DIR` are
    /// honoured), the Mozilla roots when the machine has none, plus the PEM files given.
    pub fn new(extra: &[&Path]) -> Result<Trust, CheckError> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        let mut description = if added > 0 {
            format!("{added} roots from this machine's trust store")
        } else {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            "the Mozilla roots (this machine's trust store is empty)".to_string()
        };
        for path in extra {
            let pem = std::fs::read(path).map_err(|source| CheckError::CaFile {
                path: path.to_path_buf(),
                reason: source.to_string(),
            })?;
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| CheckError::CaFile {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
                roots.add(cert).map_err(|e| CheckError::CaFile {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(CheckError::CaFile {
                    path: path.to_path_buf(),
                    reason: "no PEM certificate in it".into(),
                });
            }
            description.push_str(&format!(" + {n} from {}", path.display()));
        }
        Ok(Trust {
            roots: Arc::new(roots),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            description,
        })
    }

    fn webpki(&self) -> Result<Arc<WebPkiServerVerifier>, String> {
        WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
            .build()
            .map_err(|e| e.to_string())
    }

    /// A client configuration whose verifier records the outcome instead of aborting, so the
    /// caller can describe the certificate and then refuse to go on.
    pub fn recording_client(
        &self,
        alpn: &[&[u8]],
    ) -> Result<(rustls::ClientConfig, Arc<RecordingVerifier>), String> {
        let verifier = Arc::new(RecordingVerifier {
            inner: self.webpki()?,
            seen: Mutex::new(None),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Every connection is a fresh look, as a homeserver meeting this server for the first time.
        config.resumption = rustls::client::Resumption::disabled();
        Ok((config, verifier))
    }

    /// Verifies a chain (leaf first) for `name` at `now`, as a TLS client would.
    pub fn verify_chain(
        &self,
        chain: &[CertificateDer<'static>],
        name: &TlsName,
        now: SystemTime,
    ) -> Result<(), CertProblem> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(CertProblem::Other("the chain holds no certificate".into()))?;
        let server_name = name.server_name().map_err(CertProblem::Other)?;
        let now =
            UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO));
        let verifier = self.webpki().map_err(CertProblem::Other)?;
        verifier
            .verify_server_cert(leaf, intermediates, &server_name, &[], now)
            .map(|_| ())
            .map_err(|e| CertProblem::from_rustls(&e, name, CertSummary::parse(leaf)))
    }
}

/// Records the chain and the verification outcome; lets the handshake finish either way.
/// Callers must check [`RecordingVerifier::outcome`] before sending anything.
#[derive(Debug)]
pub struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    seen: Mutex<Option<(Vec<CertificateDer<'static>>, Option<rustls::Error>)>>,
}

impl RecordingVerifier {
    /// The presented chain and the verification error, if the handshake got that far.
    pub fn outcome(&self) -> Option<(Vec<CertificateDer<'static>>, Option<rustls::Error>)> {
        self.seen.lock().ok().and_then(|s| s.clone())
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some((chain, result.err()));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What a certificate says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertSummary {
    /// DNS names and IP addresses of the subjectAltName (the common name when there is none).
    pub names: Vec<String>,
    pub issuer: String,
    pub not_after: Option<SystemTime>,
    pub self_signed: bool,
}

impl CertSummary {
    pub fn parse(der: &CertificateDer<'_>) -> CertSummary {
        use x509_parser::extensions::GeneralName;
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
            return CertSummary::default();
        };
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            names.push(IpAddr::from(a).to_string());
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            names.push(IpAddr::from(a).to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        if names.is_empty() {
            names.extend(
                cert.subject()
                    .iter_common_name()
                    .filter_map(|cn| cn.as_str().ok())
                    .map(|cn| format!("CN={cn}")),
            );
        }
        let issuer = cert
            .issuer()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .next()
            .map_or_else(|| cert.issuer().to_string(), str::to_string);
        let not_after = u64::try_from(cert.validity().not_after.timestamp())
            .ok()
            .map(|s| UNIX_EPOCH + Duration::from_secs(s));
        CertSummary {
            names,
            issuer,
            not_after,
            self_signed: cert.subject() == cert.issuer(),
        }
    }

    /// Whether a DNS name or IP address is among the names (one-label wildcards included).
    pub fn covers(&self, name: &TlsName) -> bool {
        names_cover(&self.names, name)
    }

    pub fn names_text(&self) -> String {
        if self.names.is_empty() {
            "no name at all".into()
        } else {
            self.names.join(", ")
        }
    }
}

/// Whether certificate names (DNS names, `*.` wildcards of one label, IP addresses) cover
/// `name`, as a TLS client matches them.
pub fn names_cover(names: &[String], name: &TlsName) -> bool {
    match name {
        TlsName::Ip(ip) => names.iter().any(|n| n.parse::<IpAddr>().ok() == Some(*ip)),
        TlsName::Dns(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            names.iter().any(|n| {
                let n = n.to_ascii_lowercase();
                n == d
                    || n.strip_prefix("*.").is_some_and(|suffix| {
                        d.split_once('.').is_some_and(|(_, rest)| rest == suffix)
                    })
            })
        }
    }
}

/// Why a certificate is refused, in terms an admin can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertProblem {
    WrongName { expected: String, cert: CertSummary },
    Expired { cert: CertSummary },
    NotYetValid { cert: CertSummary },
    Untrusted { cert: CertSummary },
    Other(String),
}

impl CertProblem {
    pub fn from_rustls(e: &rustls::Error, expected: &TlsName, cert: CertSummary) -> CertProblem {
        match e {
            rustls::Error::InvalidCertificate(ce) => match ce {
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => CertProblem::WrongName {
                    expected: expected.to_string(),
                    cert,
                },
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    CertProblem::Expired { cert }
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    CertProblem::NotYetValid { cert }
                }
                CertificateError::UnknownIssuer => CertProblem::Untrusted { cert },
                other => CertProblem::Other(format!("{other:?}")),
            },
            other => CertProblem::Other(other.to_string()),
        }
    }

    /// The reason in plain words.
    pub fn describe(&self) -> String {
        match self {
            CertProblem::WrongName { expected, cert } => format!(
                "the certificate is not valid for {expected}: it names {}",
                cert.names_text()
            ),
            CertProblem::Expired { cert } => format!(
                "the certificate for {} expired{}",
                cert.names_text(),
                cert.not_after
                    .map(|t| format!(" {} ago", human_duration(elapsed_since(t))))
                    .unwrap_or_default()
            ),
            CertProblem::NotYetValid { cert } => format!(
                "the certificate for {} is not valid yet (is this machine's clock right?)",
                cert.names_text()
            ),
            CertProblem::Untrusted { cert } if cert.self_signed => format!(
                "the certificate for {} is self-signed; other servers do not trust it",
                cert.names_text()
            ),
            CertProblem::Untrusted { cert } => format!(
                "the certificate for {} is issued by \"{}\", which other servers do not trust (or the chain lacks its intermediate certificates)",
                cert.names_text(),
                cert.issuer
            ),
            CertProblem::Other(e) => format!("the certificate is refused: {e}"),
        }
    }
}

fn elapsed_since(t: SystemTime) -> Duration {
    SystemTime::now()
        .duration_since(t)
        .unwrap_or(Duration::ZERO)
}

/// "3 days", "5 hours", "12 minutes", "40 seconds".
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = if s >= 2 * 86_400 {
        (s / 86_400, "day")
    } else if s >= 2 * 3600 {
        (s / 3600, "hour")
    } else if s >= 120 {
        (s / 60, "minute")
    } else {
        (s, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn summary_lists_names_and_wildcards_cover_one_label() {
        let s = CertSummary::parse(&leaf(&["*.example.test", "example.test", "127.0.0.9"]));
        assert_eq!(s.names, ["*.example.test", "example.test", "127.0.0.9"]);
        assert!(s.self_signed);
        assert!(s.covers(&TlsName::for_host("matrix.example.test")));
        assert!(s.covers(&TlsName::for_host("EXAMPLE.test")));
        assert!(s.covers(&TlsName::for_host("127.0.0.9")));
        assert!(!s.covers(&TlsName::for_host("a.b.example.test")));
        assert!(!s.covers(&TlsName::for_host("other.test")));
    }

    #[test]
    fn verify_chain_names_the_problem() {
        let trust = Trust::new(&[]).unwrap();
        let chain = vec![leaf(&["other.test"])];
        match trust.verify_chain(
            &chain,
            &TlsName::for_host("example.test"),
            SystemTime::now(),
        ) {
            // webpki checks the issuer before the name: a self-signed leaf is untrusted
            Err(CertProblem::Untrusted { cert }) => {
                assert!(cert.self_signed);
                assert_eq!(cert.names, ["other.test"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_secs(40)), "40 seconds");
        assert_eq!(human_duration(Duration::from_secs(3600)), "60 minutes");
        assert_eq!(human_duration(Duration::from_secs(86_400)), "24 hours");
        assert_eq!(human_duration(Duration::from_secs(14 * 86_400)), "14 days");
    }
}
