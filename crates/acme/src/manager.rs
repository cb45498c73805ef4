//! The scheduler: for each certificate, serve what we have (stored, or a temporary self-signed
//! one), order when needed, renew on time, back off on failure, and swap every new certificate
//! into the live store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::CertificateIdentifier;
use myelin_listener::{CertStore, LoadedCert};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::account::Accounts;
use crate::client::RetryAfter;
use crate::dns::Dns01;
use crate::order::{self, Solvers};
use crate::schedule::{ari_due, backoff, lifetime_due, seed_of};
use crate::store::{CertificateMeta, CertificateStore, FileStore, StoreLock, StoredCertificate};
use crate::{AcmeError, AcmeSettings, CertificateRequest, ChallengeKind, Http01Tokens};

/// However far away the next renewal is, look again after this long (clock changes, ARI).
const MAX_SLEEP: Duration = Duration::from_secs(12 * 3600);
/// How often to try the state lock while another process holds it.
const LOCK_POLL: Duration = Duration::from_millis(500);

/// Keeps the configured certificates obtained and fresh. Cheap to clone.
#[derive(Clone)]
pub struct AcmeManager {
    inner: Arc<Inner>,
}

struct Inner {
    settings: AcmeSettings,
    store: Arc<CertStore>,
    disk: Arc<dyn CertificateStore>,
    solvers: Solvers,
    retry_after: RetryAfter,
    accounts: Accounts,
    /// Whether the CA offers ARI (learnt from the first renewalInfo request).
    ari: Mutex<Option<bool>>,
    /// One order at a time in this process (the file lock covers other processes).
    ordering: tokio::sync::Mutex<()>,
    serving: Mutex<HashMap<String, Serving>>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Clone)]
struct Serving {
    cert: LoadedCert,
    /// Issued by the configured CA for exactly the requested names (not a temporary one).
    complete: bool,
}

impl AcmeManager {
    /// Opens the state, and puts a certificate in `store` for every request: the stored one when
    /// still valid, else a temporary self-signed one. Orders nothing yet: see [`Self::spawn`].
    pub fn new(
        settings: AcmeSettings,
        store: Arc<CertStore>,
        tokens: Http01Tokens,
    ) -> Result<AcmeManager, AcmeError> {
        let disk: Arc<dyn CertificateStore> = Arc::new(FileStore::open(&settings.state_dir)?);
        Self::with_store(settings, store, tokens, disk)
    }

    /// As [`Self::new`], with another place to keep the state.
    pub fn with_store(
        settings: AcmeSettings,
        store: Arc<CertStore>,
        tokens: Http01Tokens,
        disk: Arc<dyn CertificateStore>,
    ) -> Result<AcmeManager, AcmeError> {
        let needs_dns = settings
            .certificates
            .iter()
            .find(|c| c.challenge == ChallengeKind::Dns01);
        let dns = match (&settings.dns, needs_dns) {
            (Some(d), Some(_)) => Some(Arc::new(Dns01::new(d)?)),
            (None, Some(c)) => {
                return Err(AcmeError::NoDnsProvider {
                    name: c.names.join(","),
                });
            }
            (_, None) => None,
        };
        let retry_after = RetryAfter::default();
        let accounts = Accounts::new(settings.clone(), disk.clone(), retry_after.clone());
        let inner = Arc::new(Inner {
            solvers: Solvers {
                store: store.clone(),
                tokens,
                dns,
            },
            settings,
            store,
            disk,
            retry_after,
            accounts,
            ari: Mutex::new(None),
            ordering: tokio::sync::Mutex::new(()),
            serving: Mutex::new(HashMap::new()),
            cancel: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        });
        for req in &inner.settings.certificates {
            inner.install_initial(req)?;
        }
        Ok(AcmeManager { inner })
    }

    /// Starts one task per certificate (call inside a Tokio runtime).
    pub fn spawn(&self) {
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for req in self.inner.settings.certificates.clone() {
            let inner = self.inner.clone();
            tasks.push(tokio::spawn(async move { inner.keep(req).await }));
        }
    }

    /// Stops the tasks at their next wait (an order in flight finishes first).
    pub fn stop(&self) {
        self.inner.cancel.cancel();
    }

    /// Stops, giving an order in flight up to `timeout` to finish (so that its DNS records are
    /// removed and its certificate stored); then abandons it.
    pub async fn shutdown(&self, timeout: Duration) {
        self.stop();
        let tasks: Vec<JoinHandle<()>> = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(timeout, all).await.is_err() {
            warn!("ACME: an order was still running at shutdown and was abandoned");
            for a in aborts {
                a.abort();
            }
        }
    }

    pub fn settings(&self) -> &AcmeSettings {
        &self.inner.settings
    }

    /// The certificates served now (to put back into a store rebuilt on reload).
    pub fn certificates(&self) -> Vec<LoadedCert> {
        self.inner
            .serving()
            .values()
            .map(|s| s.cert.clone())
            .collect()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Inner {
    fn serving(&self) -> std::sync::MutexGuard<'_, HashMap<String, Serving>> {
        self.serving.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn origin(req: &CertificateRequest) -> String {
        format!("acme:{}", req.id)
    }

    /// The stored certificate for `req` if it is still valid; and whether it is complete
    /// (our CA, every requested name).
    fn stored(&self, req: &CertificateRequest) -> Option<Serving> {
        let stored = match self.disk.load_certificate(&req.id) {
            Ok(s) => s?,
            Err(e) => {
                warn!(certificate = %req.id, error = %e, "cannot read the stored certificate");
                return None;
            }
        };
        let cert = match LoadedCert::from_pem(
            stored.pem.as_bytes(),
            stored.pem.as_bytes(),
            &Self::origin(req),
        ) {
            Ok(c) => c,
            Err(e) => {
                warn!(certificate = %req.id, error = %e, "the stored certificate is unusable; a new one will be ordered");
                return None;
            }
        };
        if cert.remaining().is_zero() {
            info!(certificate = %req.id, "the stored certificate has expired");
            return None;
        }
        let same_ca = stored.meta.directory_url.is_empty()
            || stored.meta.directory_url == self.settings.directory_url;
        let complete = same_ca && req.names.iter().all(|n| cert.names.contains(n));
        Some(Serving { cert, complete })
    }

    fn install_initial(&self, req: &CertificateRequest) -> Result<(), AcmeError> {
        let serving = match self.stored(req) {
            Some(s) => {
                info!(
                    certificate = %req.id,
                    names = %s.cert.names.join(","),
                    not_after = %unix(s.cert.not_after),
                    complete = s.complete,
                    "serving the stored ACME certificate"
                );
                s
            }
            None => {
                let mut cert = LoadedCert::self_signed(&req.names)
                    .map_err(|e| AcmeError::Certificate(e.to_string()))?;
                cert.origin = Self::origin(req);
                warn!(
                    certificate = %req.id,
                    names = %req.names.join(","),
                    "no certificate from the CA yet: serving a temporary self-signed certificate until the first one arrives"
                );
                Serving {
                    cert,
                    complete: false,
                }
            }
        };
        self.install(req, serving);
        Ok(())
    }

    fn install(&self, req: &CertificateRequest, serving: Serving) {
        let cert = serving.cert.clone();
        self.store.update(|m| m.supersede(cert.clone()));
        self.serving().insert(req.id.clone(), serving);
    }

    /// The life of one certificate: wait until due, renew, back off on failure.
    async fn keep(self: Arc<Self>, req: CertificateRequest) {
        let mut failures: u32 = 0;
        let mut wait = Duration::ZERO;
        loop {
            if failures == 0 {
                wait = self.due_in(&req).await;
            }
            if !wait.is_zero() {
                if failures == 0 {
                    debug!(certificate = %req.id, in_s = wait.as_secs(), "next renewal check");
                }
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                if failures == 0 && !self.due_in(&req).await.is_zero() {
                    continue;
                }
            }
            if self.cancel.is_cancelled() {
                return;
            }
            match self.renew(&req).await {
                Ok(()) => failures = 0,
                Err(AcmeError::Stopped) => return,
                Err(e) => {
                    failures += 1;
                    wait = backoff(
                        failures,
                        self.settings.retry_min,
                        self.settings.retry_max,
                        self.retry_after.take(),
                        SystemTime::now(),
                    );
                    let still_serving = self
                        .serving()
                        .get(&req.id)
                        .filter(|s| s.complete && !s.cert.remaining().is_zero())
                        .map(|s| format!("until {}", unix(s.cert.not_after)))
                        .unwrap_or_else(|| "temporary self-signed".into());
                    error!(
                        certificate = %req.id,
                        names = %req.names.join(","),
                        challenge = req.challenge.as_str(),
                        attempt = failures,
                        retry_in_s = wait.as_secs(),
                        serving_current = %still_serving,
                        error = %e,
                        "could not obtain a certificate; the current one stays in place and the order will be retried"
                    );
                }
            }
        }
    }

    /// How long until `req` should be renewed (zero: now).
    async fn due_in(&self, req: &CertificateRequest) -> Duration {
        let Some(s) = self.serving().get(&req.id).cloned() else {
            return Duration::ZERO;
        };
        if !s.complete {
            return Duration::ZERO;
        }
        let now = SystemTime::now();
        let leaf = s
            .cert
            .key
            .cert
            .first()
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        let seed = seed_of(&leaf);
        let mut due = lifetime_due(s.cert.not_before, s.cert.not_after, seed);
        let mut recheck = MAX_SLEEP;
        if let Some((window, retry)) = self.renewal_info(&leaf).await {
            due = ari_due(window.0, window.1, seed);
            recheck = retry.clamp(Duration::from_secs(60), MAX_SLEEP);
        }
        due.duration_since(now)
            .map(|d| d.min(recheck))
            .unwrap_or(Duration::ZERO)
    }

    /// The CA's suggested renewal window (ARI, RFC 9773) and when to ask again, if it offers one.
    async fn renewal_info(&self, leaf: &[u8]) -> Option<((SystemTime, SystemTime), Duration)> {
        if *self.ari.lock().unwrap_or_else(|p| p.into_inner()) == Some(false) {
            return None;
        }
        let account = self.accounts.existing().await?;
        let der = rustls_pki_types::CertificateDer::from(leaf.to_vec());
        let id = CertificateIdentifier::try_from(&der).ok()?;
        match account.renewal_info(&id).await {
            Ok((info, retry)) => {
                *self.ari.lock().unwrap_or_else(|p| p.into_inner()) = Some(true);
                let w = info.suggested_window;
                debug!(start = %w.start, end = %w.end, "ARI renewal window");
                Some(((w.start.into(), w.end.into()), retry))
            }
            Err(instant_acme::Error::Unsupported(_)) => {
                *self.ari.lock().unwrap_or_else(|p| p.into_inner()) = Some(false);
                None
            }
            Err(e) => {
                debug!(error = %e, "ARI unavailable now; renewing by lifetime");
                None
            }
        }
    }

    /// One renewal: take the locks, see whether another process already renewed, else order.
    async fn renew(&self, req: &CertificateRequest) -> Result<(), AcmeError> {
        let _in_process = self.ordering.lock().await;
        let _lock = self.lock_state().await?;
        // Another Myelin sharing the state may have renewed while we waited for the lock.
        if let Some(s) = self.stored(req) {
            // (a temporary certificate is replaced by any complete one, whatever its expiry)
            let current = self
                .serving()
                .get(&req.id)
                .filter(|c| c.complete)
                .map(|c| c.cert.not_after);
            if s.complete && current.is_none_or(|c| s.cert.not_after > c) {
                info!(certificate = %req.id, "another process stored a newer certificate; serving it");
                self.install(req, s);
                if self.due_in(req).await > Duration::ZERO {
                    return Ok(());
                }
            }
        }
        let result = self.order(req).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("myelin_acme_orders_total", "result" => outcome).increment(1);
        result
    }

    /// Orders, stores and installs a certificate for `req` (the state lock is held).
    async fn order(&self, req: &CertificateRequest) -> Result<(), AcmeError> {
        let account = self.accounts.get_or_register().await?;
        let replaces = self.replaces(req);
        info!(
            certificate = %req.id,
            names = %req.names.join(","),
            challenge = req.challenge.as_str(),
            "ordering a certificate"
        );
        let issued = order::obtain(
            &account,
            &self.settings.directory_url,
            req,
            &self.solvers,
            replaces,
        )
        .await?;
        let pem = format!("{}{}", issued.chain_pem.trim_end(), "\n") + &issued.key_pem;
        let cert = LoadedCert::from_pem(pem.as_bytes(), pem.as_bytes(), &Self::origin(req))
            .map_err(|e| AcmeError::Certificate(format!("the CA's certificate: {e}")))?;
        if let Some(missing) = req.names.iter().find(|n| !cert.names.contains(n)) {
            return Err(AcmeError::Certificate(format!(
                "the CA issued a certificate without {missing}"
            )));
        }
        self.disk.save_certificate(
            &req.id,
            &StoredCertificate {
                pem,
                meta: CertificateMeta {
                    directory_url: self.settings.directory_url.clone(),
                    names: req.names.clone(),
                    issued_at: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                },
            },
        )?;
        info!(
            certificate = %req.id,
            names = %req.names.join(","),
            not_after = %unix(cert.not_after),
            "certificate obtained from the CA; now serving it"
        );
        self.install(
            req,
            Serving {
                cert,
                complete: true,
            },
        );
        Ok(())
    }

    /// With ARI, a renewal names the certificate it replaces.
    fn replaces(&self, req: &CertificateRequest) -> Option<CertificateIdentifier<'static>> {
        if *self.ari.lock().unwrap_or_else(|p| p.into_inner()) != Some(true) {
            return None;
        }
        let s = self.serving().get(&req.id).cloned()?;
        if !s.complete {
            return None;
        }
        let der = s.cert.key.cert.first()?.clone();
        CertificateIdentifier::try_from(&der)
            .ok()
            .map(CertificateIdentifier::into_owned)
    }

    async fn lock_state(&self) -> Result<Box<dyn StoreLock>, AcmeError> {
        let mut told = false;
        loop {
            if let Some(l) = self.disk.try_lock()? {
                return Ok(l);
            }
            if !told {
                info!(state = %self.disk.describe(), "another process is ordering with this ACME state; waiting for it");
                told = true;
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(AcmeError::Stopped),
                _ = tokio::time::sleep(LOCK_POLL) => {}
            }
        }
    }
}

/// A time as RFC 3339, for logs.
fn unix(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}
