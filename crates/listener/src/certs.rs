//! Certificates: loading PEM files, generating self-signed ones, and the live-swappable store
//! the TLS handshake picks from by SNI.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ListenerError;

/// A certificate ready to serve, with the names it covers.
#[derive(Clone, Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// DNS names (lower-case, wildcards as `*.example.com`) and IP addresses from the SANs.
    pub names: Vec<String>,
    /// Leaf `notAfter`.
    pub not_after: SystemTime,
    /// Leaf `notBefore`.
    pub not_before: SystemTime,
    /// Where it came from, for logs: a path, "self-signed" or "acme".
    pub origin: String,
}

impl LoadedCert {
    /// Whether this certificate covers `name` (exactly or by a one-label wildcard).
    pub fn covers(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.names.iter().any(|n| {
            n == &name
                || n.strip_prefix("*.").is_some_and(|suffix| {
                    name.split_once('.').is_some_and(|(_, rest)| rest == suffix)
                })
        })
    }

    /// Time left before expiry (zero when expired).
    pub fn remaining(&self) -> Duration {
        self.not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    /// Certificate and key from PEM data (chain leaf first; key PKCS#8, SEC1 or PKCS#1).
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        origin: &str,
    ) -> Result<LoadedCert, ListenerError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| ListenerError::BadCertificate {
                path: origin.into(),
                reason: format!("unreadable PEM: {e}"),
            })?;
        if chain.is_empty() {
            return Err(ListenerError::BadCertificate {
                path: origin.into(),
                reason: "no \"BEGIN CERTIFICATE\" block found".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| ListenerError::BadKey {
            path: origin.into(),
            reason: match e {
                rustls_pki_types::pem::Error::NoItemsFound => {
                    "no private key found (expected a PEM \"PRIVATE KEY\", \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\" block)"
                        .into()
                }
                other => format!("unreadable PEM: {other}"),
            },
        })?;
        Self::from_der(chain, key, origin)
    }

    /// Certificate and key from DER.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        origin: &str,
    ) -> Result<LoadedCert, ListenerError> {
        let facts = leaf_facts(&chain[0]).map_err(|reason| ListenerError::BadCertificate {
            path: origin.into(),
            reason,
        })?;
        let provider = provider();
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => ListenerError::KeyMismatch {
                path: origin.into(),
            },
            other => ListenerError::BadKey {
                path: origin.into(),
                reason: other.to_string(),
            },
        })?;
        Ok(LoadedCert {
            key: Arc::new(certified),
            names: facts.names,
            not_after: facts.not_after,
            not_before: facts.not_before,
            origin: origin.into(),
        })
    }

    /// Reads a PEM chain and key from files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<LoadedCert, ListenerError> {
        let chain = std::fs::read(cert).map_err(|source| ListenerError::Read {
            path: cert.to_path_buf(),
            source,
        })?;
        let key_pem = std::fs::read(key).map_err(|source| ListenerError::Read {
            path: key.to_path_buf(),
            source,
        })?;
        let origin = cert.display().to_string();
        match Self::from_pem(&chain, &key_pem, &origin) {
            // name the key file when the key is at fault
            Err(ListenerError::BadKey { reason, .. }) => Err(ListenerError::BadKey {
                path: key.display().to_string(),
                reason,
            }),
            other => other,
        }
    }

    /// A self-signed certificate (ECDSA P-256) for DNS names and IP addresses, valid ~1 year.
    pub fn self_signed(names: &[String]) -> Result<LoadedCert, ListenerError> {
        let fail = |e: rcgen::Error| ListenerError::SelfSigned {
            reason: e.to_string(),
        };
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(rcgen::SanType::IpAddress(ip)),
                Err(_) => rcgen::string::Ia5String::try_from(n.as_str())
                    .map(rcgen::SanType::DnsName)
                    .map_err(fail),
            })
            .collect::<Result<_, _>>()?;
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(
            rcgen::DnType::CommonName,
            names.first().map_or("myelin", String::as_str),
        );
        params.distinguished_name = dn;
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(365 * 86_400)).into();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
        let cert = params.self_signed(&key).map_err(fail)?;
        let der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| {
            ListenerError::SelfSigned {
                reason: e.to_string(),
            }
        })?;
        Self::from_der(vec![cert.der().clone()], der, "self-signed")
    }

    /// PEM of the leaf and chain (for writing a generated certificate where a client can trust it).
    pub fn chain_pem(&self) -> String {
        self.key
            .cert
            .iter()
            .map(|c| pem_block("CERTIFICATE", c.as_ref()))
            .collect()
    }
}

/// The process-wide crypto provider: aws-lc-rs only.
pub fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

struct LeafFacts {
    names: Vec<String>,
    not_after: SystemTime,
    not_before: SystemTime,
}

fn leaf_facts(der: &CertificateDer<'_>) -> Result<LeafFacts, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("the first certificate does not parse: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            match gn {
                x509_parser::extensions::GeneralName::DNSName(n) => {
                    names.push(n.trim_end_matches('.').to_ascii_lowercase())
                }
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip: Option<IpAddr> = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let ts = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok(LeafFacts {
        names,
        not_after: ts(cert.validity().not_after.timestamp()),
        not_before: ts(cert.validity().not_before.timestamp()),
    })
}

/// One PEM block: the label's armour around base64 lines of 64 characters.
pub fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The names a store serves, each to one certificate, plus the default for unknown names.
#[derive(Clone, Debug, Default)]
pub struct CertMap {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    certs: Vec<LoadedCert>,
}

impl CertMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a certificate. A name already served by an earlier certificate keeps that one,
    /// unless `replace` is set (a renewed or ACME certificate taking over a name).
    /// The first certificate added becomes the default.
    pub fn insert(&mut self, cert: LoadedCert, replace: bool) {
        for name in &cert.names {
            let (map, key) = match name.strip_prefix("*.") {
                Some(suffix) => (&mut self.wildcard, suffix.to_string()),
                None => (&mut self.exact, name.clone()),
            };
            if replace || !map.contains_key(&key) {
                map.insert(key, cert.key.clone());
            }
        }
        if self.default.is_none() {
            self.default = Some(cert.key.clone());
        }
        self.certs.push(cert);
    }

    /// Adds `cert`, taking over its names, in place of every earlier certificate with the same
    /// origin (a renewal): those leave the list, and any name or default they still held.
    pub fn supersede(&mut self, cert: LoadedCert) {
        let old: Vec<Arc<CertifiedKey>> = self
            .certs
            .iter()
            .filter(|c| c.origin == cert.origin)
            .map(|c| c.key.clone())
            .collect();
        if !old.is_empty() {
            let is_old = |k: &Arc<CertifiedKey>| old.iter().any(|o| Arc::ptr_eq(o, k));
            self.certs.retain(|c| !is_old(&c.key));
            self.exact.retain(|_, k| !is_old(k));
            self.wildcard.retain(|_, k| !is_old(k));
            if self.default.as_ref().is_some_and(is_old) {
                self.default = Some(cert.key.clone());
            }
        }
        self.insert(cert, true);
    }

    /// Makes this certificate the one for no or unknown SNI.
    pub fn set_default(&mut self, cert: &LoadedCert) {
        self.default = Some(cert.key.clone());
    }

    /// The certificate for `sni` and whether it was found by name (`false`: the default).
    pub fn lookup(&self, sni: Option<&str>) -> Option<(Arc<CertifiedKey>, bool)> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some((k.clone(), true));
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(k) = self.wildcard.get(parent) {
                    return Some((k.clone(), true));
                }
            }
        }
        self.default.clone().map(|k| (k, false))
    }

    /// Whether `name` is served by a certificate of its own (not just the default).
    pub fn serves(&self, name: &str) -> bool {
        self.lookup(Some(name)).is_some_and(|(_, found)| found)
    }

    /// Every certificate, in the order added.
    pub fn certs(&self) -> &[LoadedCert] {
        &self.certs
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

/// The live certificates: readers (handshakes) never block, writers (reload, ACME) swap whole maps.
#[derive(Debug, Default)]
pub struct CertStore {
    map: ArcSwap<CertMap>,
    /// TLS-ALPN-01 challenge certificates by name, answered only to `acme-tls/1` handshakes.
    challenges: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl CertStore {
    pub fn new(map: CertMap) -> Self {
        CertStore {
            map: ArcSwap::from_pointee(map),
            challenges: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    pub fn current(&self) -> Arc<CertMap> {
        self.map.load_full()
    }

    pub fn swap(&self, map: CertMap) {
        self.map.store(Arc::new(map));
    }

    /// Changes the map with `f` (read-copy-update; concurrent updates are not lost).
    pub fn update(&self, f: impl Fn(&mut CertMap)) {
        self.map.rcu(|old| {
            let mut new = CertMap::clone(old);
            f(&mut new);
            new
        });
    }

    /// Serve `key` to `acme-tls/1` handshakes for `name` until removed.
    pub fn set_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        let name = name.to_ascii_lowercase();
        self.challenges.rcu(|old| {
            let mut m = HashMap::clone(old);
            m.insert(name.clone(), key.clone());
            m
        });
    }

    pub fn remove_challenge(&self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.challenges.rcu(|old| {
            let mut m = HashMap::clone(old);
            m.remove(&name);
            m
        });
    }

    pub(crate) fn challenge(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = sni?.trim_end_matches('.').to_ascii_lowercase();
        self.challenges.load().get(&name).cloned()
    }
}

/// rustls' view of the store for ordinary handshakes.
#[derive(Debug)]
pub(crate) struct StoreResolver(pub Arc<CertStore>);

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().lookup(hello.server_name()).map(|(k, _)| k)
    }
}

/// rustls' view of the store for `acme-tls/1` handshakes: challenge certificates only.
#[derive(Debug)]
pub(crate) struct ChallengeResolver(pub Arc<CertStore>);

impl ResolvesServerCert for ChallengeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.challenge(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn self_signed_has_the_names() {
        let c = LoadedCert::self_signed(&names(&["localhost", "127.0.0.1", "::1"])).unwrap();
        assert_eq!(c.names, names(&["localhost", "127.0.0.1", "::1"]));
        assert!(c.remaining() > Duration::from_secs(300 * 86_400));
        assert!(c.chain_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
    }

    #[test]
    fn pem_round_trip_and_key_mismatch() {
        let a = LoadedCert::self_signed(&names(&["a.test"])).unwrap();
        let chain = a.chain_pem();
        // a fresh key pair in PKCS#8 PEM
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let err = LoadedCert::from_pem(chain.as_bytes(), other.serialize_pem().as_bytes(), "a.pem")
            .unwrap_err();
        assert!(matches!(err, ListenerError::KeyMismatch { .. }), "{err}");
        let err = LoadedCert::from_pem(b"", other.serialize_pem().as_bytes(), "a.pem").unwrap_err();
        assert!(err.to_string().contains("BEGIN CERTIFICATE"), "{err}");
        let err = LoadedCert::from_pem(chain.as_bytes(), b"garbage", "a.pem").unwrap_err();
        assert!(err.to_string().contains("no private key"), "{err}");
    }

    #[test]
    fn lookup_exact_wildcard_default() {
        let a = LoadedCert::self_signed(&names(&["a.test"])).unwrap();
        let w = LoadedCert::self_signed(&names(&["*.w.test"])).unwrap();
        let mut m = CertMap::new();
        m.insert(a.clone(), false);
        m.insert(w.clone(), false);
        let (k, found) = m.lookup(Some("A.TEST.")).unwrap();
        assert!(found && Arc::ptr_eq(&k, &a.key));
        let (k, found) = m.lookup(Some("x.w.test")).unwrap();
        assert!(found && Arc::ptr_eq(&k, &w.key));
        assert!(!m.serves("w.test"), "a wildcard does not cover its parent");
        assert!(!m.serves("y.x.w.test"), "a wildcard covers one label");
        let (k, found) = m.lookup(Some("other.test")).unwrap();
        assert!(
            !found && Arc::ptr_eq(&k, &a.key),
            "unknown SNI gets the first certificate"
        );
        let (_, found) = m.lookup(None).unwrap();
        assert!(!found);
        assert!(w.covers("x.w.test") && !w.covers("w.test"));
    }

    #[test]
    fn supersede_replaces_a_renewed_certificate() {
        let stat = LoadedCert::self_signed(&names(&["static.test"])).unwrap();
        let mut first = LoadedCert::self_signed(&names(&["a.test", "b.test"])).unwrap();
        first.origin = "acme:a.test".into();
        let mut renewed = LoadedCert::self_signed(&names(&["a.test", "b.test"])).unwrap();
        renewed.origin = "acme:a.test".into();
        let mut m = CertMap::new();
        m.supersede(first.clone());
        m.insert(stat.clone(), false);
        assert!(Arc::ptr_eq(&m.lookup(None).unwrap().0, &first.key));
        m.supersede(renewed.clone());
        assert_eq!(m.certs().len(), 2, "the old one left the list");
        for n in ["a.test", "b.test"] {
            assert!(Arc::ptr_eq(&m.lookup(Some(n)).unwrap().0, &renewed.key));
        }
        assert!(
            Arc::ptr_eq(&m.lookup(None).unwrap().0, &renewed.key),
            "default follows"
        );
        assert!(Arc::ptr_eq(
            &m.lookup(Some("static.test")).unwrap().0,
            &stat.key
        ));
    }

    #[test]
    fn replace_takes_over_a_name() {
        let a = LoadedCert::self_signed(&names(&["a.test"])).unwrap();
        let b = LoadedCert::self_signed(&names(&["a.test"])).unwrap();
        let mut m = CertMap::new();
        m.insert(a.clone(), false);
        m.insert(b.clone(), false);
        assert!(Arc::ptr_eq(&m.lookup(Some("a.test")).unwrap().0, &a.key));
        m.insert(b.clone(), true);
        assert!(Arc::ptr_eq(&m.lookup(Some("a.test")).unwrap().0, &b.key));
    }
}
