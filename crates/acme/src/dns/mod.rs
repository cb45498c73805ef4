//! DNS-01: publish `_acme-challenge.NAME TXT "<digest>"`, wait until every authoritative server
//! of the zone serves it, let the CA look, then remove it whatever the outcome.
//!
//! Publishing goes through a [`DnsProvider`]: [`rfc2136::Rfc2136`] sends TSIG-signed dynamic
//! updates (BIND, Knot, PowerDNS, Windows DNS); [`exec::ExecHook`] runs the admin's command, as
//! lego's exec provider does, for any DNS host with an API. A CNAME at `_acme-challenge.NAME`
//! (the usual way to delegate only the challenge to a zone that may be updated) is followed
//! before the provider is called, so providers receive the name that really holds the record.

pub mod exec;
pub(crate) mod lookup;
pub mod rfc2136;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::AcmeError;
use crate::dns::lookup::{DnsLookup, fqdn, txt_values};

/// A boxed future, so that providers can be trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Publishes and removes TXT records. `fqdn` is absolute with a trailing dot
/// (`_acme-challenge.example.com.`); `value` is the record's text.
pub trait DnsProvider: Send + Sync {
    fn present<'a>(&'a self, fqdn: &'a str, value: &'a str)
    -> BoxFuture<'a, Result<(), AcmeError>>;
    /// Removes this value only (a wildcard and its base name share one record name).
    fn cleanup<'a>(&'a self, fqdn: &'a str, value: &'a str)
    -> BoxFuture<'a, Result<(), AcmeError>>;
}

/// `[acme.dns]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    pub provider: DnsProviderSettings,
    /// How long to wait for the record to be served by every authoritative server.
    pub propagation_timeout: Duration,
    /// Resolvers used to follow CNAMEs and find the zone and its nameservers;
    /// empty: those of `/etc/resolv.conf`.
    pub resolvers: Vec<SocketAddr>,
    /// The port the zone's nameservers answer on (53 but in tests and odd set-ups).
    pub authoritative_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsProviderSettings {
    Rfc2136(rfc2136::Rfc2136Settings),
    Exec(exec::ExecSettings),
}

/// The DNS-01 solver: a provider plus the lookups around it.
pub(crate) struct Dns01 {
    provider: Box<dyn DnsProvider>,
    lookup: DnsLookup,
    propagation_timeout: Duration,
}

impl Dns01 {
    pub fn new(settings: &DnsSettings) -> Result<Dns01, AcmeError> {
        let provider: Box<dyn DnsProvider> = match &settings.provider {
            DnsProviderSettings::Rfc2136(s) => Box::new(rfc2136::Rfc2136::new(s.clone())?),
            DnsProviderSettings::Exec(s) => Box::new(exec::ExecHook::new(s.clone())),
        };
        Ok(Dns01 {
            provider,
            lookup: DnsLookup::new(&settings.resolvers, settings.authoritative_port)?,
            propagation_timeout: settings.propagation_timeout,
        })
    }

    /// Where the TXT record for `domain` goes: `_acme-challenge.DOMAIN.`, or where its CNAMEs lead.
    pub async fn record_name(&self, domain: &str) -> Result<String, AcmeError> {
        let name = fqdn(&format!("_acme-challenge.{domain}"))?;
        let target = self.lookup.follow_cnames(&name).await?;
        if target != name {
            info!(challenge = %name, target = %target, "following the CNAME of the challenge name");
        }
        Ok(target.to_string())
    }

    pub async fn present(&self, fqdn: &str, value: &str) -> Result<(), AcmeError> {
        self.provider.present(fqdn, value).await
    }

    pub async fn cleanup(&self, fqdn: &str, value: &str) -> Result<(), AcmeError> {
        self.provider.cleanup(fqdn, value).await
    }

    /// Waits until every authoritative server of the record's zone serves `value` at `fqdn`.
    pub async fn wait_visible(&self, record: &str, value: &str) -> Result<(), AcmeError> {
        let started = Instant::now();
        let deadline = started + self.propagation_timeout;
        let name = fqdn(record)?;
        let zone = self.lookup.zone_of(&name).await?;
        let servers = self.lookup.authoritative_servers(&zone).await?;
        let listed = servers
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        debug!(record, zone = %zone, servers = %listed, "waiting for the TXT record at the authoritative servers");
        let mut pending = servers.clone();
        let mut delay = Duration::from_millis(200);
        let mut last = String::from("not checked yet");
        loop {
            let mut still = Vec::new();
            for s in pending {
                match txt_values(s, &name).await {
                    Ok(v) if v.iter().any(|t| t == value) => {}
                    Ok(v) => {
                        last = format!("{s} serves {} other TXT value(s)", v.len());
                        still.push(s);
                    }
                    Err(e) => {
                        last = e;
                        still.push(s);
                    }
                }
            }
            pending = still;
            if pending.is_empty() {
                info!(
                    record,
                    servers = %listed,
                    took_ms = started.elapsed().as_millis() as u64,
                    "TXT record visible at every authoritative server"
                );
                return Ok(());
            }
            if Instant::now() + delay > deadline {
                warn!(record, last = %last, "TXT record not visible in time");
                return Err(AcmeError::Propagation {
                    fqdn: record.to_string(),
                    servers: listed,
                    timeout: self.propagation_timeout,
                    last,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}
