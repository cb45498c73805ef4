//! `[acme]` in the binary: which names get certificates from the CA and how (configuration →
//! [`AcmeSettings`]), the HTTP-01 answer, and the ACME manager across start and reloads.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use myelin_acme::dns::exec::ExecSettings;
use myelin_acme::dns::rfc2136::{Rfc2136Settings, check_algorithm, read_tsig_secret};
use myelin_acme::dns::{DnsProviderSettings, DnsSettings};
use myelin_acme::{
    AcmeManager, AcmeSettings, CertificateRequest, ChallengeKind, ExternalAccountBinding,
    Http01Tokens, directory_url, read_eab_hmac_key,
};
use myelin_config::{AcmeChallenge, AcmeDnsProvider, Config, ConfigError, Homeserver};
use myelin_listener::{CertMap, CertStore};
use myelin_router::ProxyBody;
use myelin_well_known::{HostKind, ServerName};
use tracing::{error, info};

/// Whether a homeserver's names are certified by ACME.
pub fn certifies(config: &Config, h: &Homeserver) -> bool {
    config.acme.is_some() && h.acme.as_ref().is_none_or(|a| a.value)
}

/// Builds the ACME settings; problems go to `errors` at the key they are about.
/// `certs`: the static certificates, whose names need no ACME certificate.
pub fn settings(
    file: &Path,
    config: &Config,
    certs: &CertMap,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> Option<AcmeSettings> {
    let acme = config.acme.as_ref()?;
    let before = errors.len();
    let directory = match directory_url(&acme.directory.value) {
        Ok(u) => u,
        Err(e) => {
            errors.push(acme.directory.error(file, e.to_string()));
            String::new()
        }
    };
    let mut s = AcmeSettings::new(directory, acme.state_dir.value.clone());
    s.email = acme.email.as_ref().map(|e| e.value.clone());
    s.retry_min = acme.retry_min;
    if let Some(roots) = &acme.ca_roots {
        match std::fs::read_to_string(&roots.value) {
            Ok(t) if t.contains("-----BEGIN CERTIFICATE-----") => {
                s.ca_roots = Some(roots.value.clone())
            }
            Ok(_) => errors.push(roots.error(
                file,
                format!(
                    "{}: no \"BEGIN CERTIFICATE\" block found",
                    roots.value.display()
                ),
            )),
            Err(e) => errors
                .push(roots.error(file, format!("cannot read {}: {e}", roots.value.display()))),
        }
    }
    if let (Some(kid), Some(key_file)) = (&acme.eab_kid, &acme.eab_hmac_key_file) {
        match read_eab_hmac_key(&key_file.value) {
            Ok(hmac_key) => {
                s.eab = Some(ExternalAccountBinding {
                    kid: kid.value.clone(),
                    hmac_key,
                })
            }
            Err(e) => errors.push(key_file.error(file, e.to_string())),
        }
    }
    if let Some(d) = &acme.dns {
        let provider = match &d.provider {
            AcmeDnsProvider::Rfc2136 {
                nameserver,
                tsig_key_name,
                tsig_algorithm,
                tsig_secret_file,
            } => {
                if let Err(e) = check_algorithm(&tsig_algorithm.value) {
                    errors.push(tsig_algorithm.error(file, e));
                }
                match read_tsig_secret(&tsig_secret_file.value) {
                    Ok(secret) => Some(DnsProviderSettings::Rfc2136(Rfc2136Settings {
                        nameserver: nameserver.value.clone(),
                        key_name: tsig_key_name.value.clone(),
                        algorithm: tsig_algorithm.value.clone(),
                        secret,
                    })),
                    Err(e) => {
                        errors.push(tsig_secret_file.error(file, e.to_string()));
                        None
                    }
                }
            }
            AcmeDnsProvider::Exec { command, timeout } => {
                Some(DnsProviderSettings::Exec(ExecSettings {
                    command: command.value.clone(),
                    timeout: *timeout,
                }))
            }
        };
        s.dns = provider.map(|provider| DnsSettings {
            provider,
            propagation_timeout: d.propagation_timeout,
            resolvers: d.resolvers.clone(),
            authoritative_port: d.authoritative_port,
        });
    }

    let kind = |c: AcmeChallenge| match c {
        AcmeChallenge::Http01 => ChallengeKind::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeKind::TlsAlpn01,
        AcmeChallenge::Dns01 => ChallengeKind::Dns01,
    };
    for h in config.homeservers.iter().filter(|h| certifies(config, h)) {
        let mut names = Vec::new();
        for raw in std::iter::once(&h.server_name).chain(h.hosts.iter()) {
            let Ok(sn) = ServerName::parse(&raw.value) else {
                continue; // reported by the site builder
            };
            let host = sn.host;
            if sn.kind != HostKind::Dns || host.parse::<IpAddr>().is_ok() {
                continue;
            }
            if !host.contains('.') {
                warnings.push(format!(
                    "\"{host}\" gets no ACME certificate: a CA certifies only public DNS names"
                ));
                continue;
            }
            if certs.serves(&host) || names.contains(&host) {
                continue;
            }
            names.push(host);
        }
        if let Some(first) = names.first() {
            s.certificates.push(CertificateRequest {
                id: first.clone(),
                challenge: kind(
                    h.challenge
                        .as_ref()
                        .map_or(acme.challenge.value, |c| c.value),
                ),
                names,
            });
        }
    }
    for c in &acme.certificates {
        let mut names = Vec::new();
        for n in &c.names {
            match check_acme_name(&n.value) {
                Ok(()) => names.push(n.value.clone()),
                Err(reason) => errors.push(n.error(file, reason)),
            }
        }
        if let Some(first) = names.first() {
            s.certificates.push(CertificateRequest {
                id: first.clone(),
                challenge: kind(
                    c.challenge
                        .as_ref()
                        .map_or(acme.challenge.value, |c| c.value),
                ),
                names,
            });
        }
    }
    if errors.len() > before {
        return None;
    }
    Some(s)
}

/// A DNS name a CA can certify: letters, digits and hyphens in dotted labels, `*.` first at most.
fn check_acme_name(name: &str) -> Result<(), String> {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    let labels: Vec<&str> = rest.split('.').collect();
    let ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name \"{name}\": expected a DNS name such as \"example.com\" or \"*.example.com\""
        ))
    }
}

/// The answer to `GET /.well-known/acme-challenge/TOKEN`.
pub fn http01_response(key_authorization: Option<String>) -> Response<ProxyBody> {
    let (status, body) = match key_authorization {
        Some(k) => (StatusCode::OK, Bytes::from(k)),
        None => (
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"no such ACME challenge token\n"),
        ),
    };
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// The ACME manager of a running Myelin, replaced when `[acme]` changes on reload.
pub struct AcmeRuntime {
    pub tokens: Http01Tokens,
    manager: Option<AcmeManager>,
}

impl AcmeRuntime {
    /// Opens the state and puts a certificate (stored or temporary) in `store` for every name;
    /// call [`Self::spawn`] once the listeners are up.
    pub fn start(
        settings: Option<&AcmeSettings>,
        store: &Arc<CertStore>,
    ) -> Result<AcmeRuntime, myelin_acme::AcmeError> {
        let tokens = Http01Tokens::new();
        let manager = match settings {
            Some(s) => Some(AcmeManager::new(s.clone(), store.clone(), tokens.clone())?),
            None => None,
        };
        Ok(AcmeRuntime { tokens, manager })
    }

    pub fn spawn(&self) {
        if let Some(m) = &self.manager {
            info!(
                certificates = m.settings().certificates.len(),
                directory = %m.settings().directory_url,
                "ACME: keeping certificates from the CA"
            );
            m.spawn();
        }
    }

    /// Stops ordering; an order in flight gets up to `timeout` to finish and clean up.
    pub async fn shutdown(&self, timeout: std::time::Duration) {
        if let Some(m) = &self.manager {
            m.shutdown(timeout).await;
        }
    }

    /// The certificate map to serve after a reload: the configured certificates plus ACME's.
    /// A changed `[acme]` gets a new manager (the old one stops at its next wait).
    pub fn reload(
        &mut self,
        settings: Option<&AcmeSettings>,
        store: &Arc<CertStore>,
        mut certs: CertMap,
    ) -> CertMap {
        let same = self.manager.as_ref().map(|m| m.settings()) == settings;
        if !same {
            match settings {
                None => {
                    if let Some(old) = self.manager.take() {
                        old.stop();
                    }
                }
                Some(s) => match AcmeManager::new(s.clone(), store.clone(), self.tokens.clone()) {
                    Ok(m) => {
                        if let Some(old) = self.manager.take() {
                            old.stop();
                        }
                        m.spawn();
                        self.manager = Some(m);
                    }
                    Err(e) => error!(
                        error = %e,
                        "ACME: the new [acme] settings cannot be used; keeping the previous ones"
                    ),
                },
            }
        }
        if let Some(m) = &self.manager {
            for c in m.certificates() {
                certs.supersede(c);
            }
        }
        certs
    }
}
