//! Upstream pools: servers that can all answer the same requests (Synapse workers of one kind),
//! each with its own connection pool and health, and the choice of a server for a request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::uri::Authority;

use crate::RouterError;
use crate::balance::{self, Balance};
use crate::client::UpstreamClient;
use crate::upstream::UpstreamAddr;

/// One `[homeserver.upstreams.NAME]`.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub name: String,
    /// At least one.
    pub servers: Vec<UpstreamAddr>,
    pub balance: Balance,
    pub health_check: Option<HealthCheckSettings>,
}

/// `GET path` on every server of the pool every `interval`; a 2xx answer within `timeout` is
/// healthy, anything else takes the server out of the pool until a check passes again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckSettings {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// A server that refused a connection is skipped for this long, doubled for each further
/// failure in a row, up to [`PASSIVE_BACKOFF_MAX`]; then a request tries it again.
pub const PASSIVE_BACKOFF: Duration = Duration::from_secs(1);
pub const PASSIVE_BACKOFF_MAX: Duration = Duration::from_secs(30);

pub(crate) struct Pool {
    pub name: Arc<str>,
    pub servers: Vec<Arc<Server>>,
    pub balance: Balance,
    pub health_check: Option<HealthCheckSettings>,
    next: AtomicUsize,
}

pub(crate) struct Server {
    pub addr: UpstreamAddr,
    /// `http://host:port` or `unix:/path`: for logs, metrics and the access log.
    pub label: Arc<str>,
    pub authority: Authority,
    pub client: UpstreamClient,
    /// Its identity for rendezvous hashing.
    seed: u64,
    /// The last active health check passed (always true without active checks).
    active_ok: AtomicBool,
    /// Passive health: connection failures in a row, and until when (ms after `epoch`) the
    /// server is skipped.
    pub(crate) failures: AtomicU32,
    down_until_ms: AtomicU64,
    epoch: Instant,
}

impl Pool {
    /// A server listed in several pools is one [`Server`] (`known`, by address): one connection
    /// pool, one health.
    pub(crate) fn new(
        settings: &PoolSettings,
        connect_timeout: Duration,
        known: &mut HashMap<UpstreamAddr, Arc<Server>>,
    ) -> Result<Pool, RouterError> {
        if settings.servers.is_empty() {
            return Err(RouterError::EmptyPool {
                pool: settings.name.clone(),
            });
        }
        let mut servers = Vec::new();
        for addr in &settings.servers {
            let server = match known.get(addr) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(Server::new(addr, connect_timeout)?);
                    known.insert(addr.clone(), s.clone());
                    s
                }
            };
            servers.push(server);
        }
        Ok(Pool {
            name: Arc::from(settings.name.as_str()),
            servers,
            balance: settings.balance,
            health_check: settings.health_check.clone(),
            next: AtomicUsize::new(0),
        })
    }

    /// The server for a request with this balancing key (none: in turn), never `exclude`.
    /// Servers that are down are skipped; when every candidate is down, they are tried anyway
    /// (better a real error from a server than none).
    pub(crate) fn pick(&self, key: Option<&[u8]>, exclude: Option<usize>) -> Option<usize> {
        let now = Instant::now();
        let mut candidates: Vec<usize> = (0..self.servers.len())
            .filter(|i| Some(*i) != exclude && self.servers[*i].available(now))
            .collect();
        if candidates.is_empty() {
            candidates = (0..self.servers.len())
                .filter(|i| Some(*i) != exclude)
                .collect();
        }
        match (candidates.len(), key) {
            (0, _) => None,
            (1, _) => Some(candidates[0]),
            (_, Some(key)) => candidates
                .into_iter()
                .max_by_key(|i| balance::score(self.servers[*i].seed, key)),
            (n, None) => Some(candidates[self.next.fetch_add(1, Ordering::Relaxed) % n]),
        }
    }
}

impl Server {
    fn new(addr: &UpstreamAddr, connect_timeout: Duration) -> Result<Server, RouterError> {
        let authority =
            addr.authority()
                .parse::<Authority>()
                .map_err(|e| RouterError::Upstream {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                })?;
        let label: Arc<str> = Arc::from(addr.to_string());
        Ok(Server {
            addr: addr.clone(),
            seed: balance::seed(&label),
            label,
            authority,
            client: UpstreamClient::new(addr, connect_timeout),
            active_ok: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Whether requests may go to this server now.
    pub(crate) fn available(&self, now: Instant) -> bool {
        self.active_ok.load(Ordering::Relaxed)
            && self.down_until_ms.load(Ordering::Relaxed) <= self.ms(now)
    }

    /// A connection to the server failed: skip it for a while. Returns for how long.
    pub(crate) fn connect_failed(&self) -> Duration {
        let n = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let backoff = PASSIVE_BACKOFF
            .saturating_mul(1u32 << (n - 1).min(16))
            .min(PASSIVE_BACKOFF_MAX);
        let until = self.ms(Instant::now()) + backoff.as_millis() as u64;
        self.down_until_ms.store(until, Ordering::Relaxed);
        backoff
    }

    /// The server answered: forget earlier connection failures. Returns whether it had any.
    pub(crate) fn answered(&self) -> bool {
        if self.failures.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.failures.store(0, Ordering::Relaxed);
        self.down_until_ms.store(0, Ordering::Relaxed);
        true
    }

    /// The result of an active check; returns whether the state changed.
    pub(crate) fn set_active(&self, ok: bool) -> bool {
        let was = self.active_ok.swap(ok, Ordering::Relaxed);
        if ok {
            // A passing check also ends a passive backoff: the server is back.
            self.answered();
        }
        was != ok
    }

    fn ms(&self, t: Instant) -> u64 {
        // +1 so that 0 ("never down") is always in the past
        t.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u16, balance: Balance) -> Pool {
        Pool::new(
            &PoolSettings {
                name: "p".into(),
                servers: (0..n)
                    .map(|i| UpstreamAddr::Tcp {
                        host: "127.0.0.1".into(),
                        port: 9000 + i,
                    })
                    .collect(),
                balance,
                health_check: None,
            },
            Duration::from_secs(1),
            &mut HashMap::new(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn round_robin_goes_in_turn_and_skips_servers_that_are_down() {
        let p = pool(3, Balance::RoundRobin);
        let picks: Vec<_> = (0..6).map(|_| p.pick(None, None).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        p.servers[1].connect_failed();
        for _ in 0..6 {
            assert_ne!(p.pick(None, None), Some(1));
        }
        assert_ne!(p.pick(None, Some(0)), Some(0));
        // every server down: still one is tried
        p.servers[0].connect_failed();
        p.servers[2].set_active(false);
        assert!(p.pick(None, None).is_some());
        assert_eq!(p.pick(None, Some(0)).map(|i| i != 0), Some(true));
    }

    #[tokio::test]
    async fn sticky_keys_stay_and_move_only_when_their_server_leaves() {
        let p = pool(3, Balance::User);
        let keys: Vec<String> = (0..60).map(|i| format!("user{i}")).collect();
        let first: Vec<usize> = keys
            .iter()
            .map(|k| p.pick(Some(k.as_bytes()), None).unwrap())
            .collect();
        for (k, f) in keys.iter().zip(&first) {
            assert_eq!(
                p.pick(Some(k.as_bytes()), None),
                Some(*f),
                "same key, same server"
            );
        }
        for s in 0..3 {
            assert!(first.contains(&s), "server {s} got no key of 60");
        }
        p.servers[1].set_active(false);
        for (k, f) in keys.iter().zip(&first) {
            let now = p.pick(Some(k.as_bytes()), None).unwrap();
            if *f == 1 {
                assert_ne!(now, 1);
            } else {
                assert_eq!(now, *f, "a key moved although its server stayed");
            }
        }
        // back: every key returns where it was
        p.servers[1].set_active(true);
        for (k, f) in keys.iter().zip(&first) {
            assert_eq!(p.pick(Some(k.as_bytes()), None), Some(*f));
        }
    }

    #[tokio::test]
    async fn passive_backoff_grows_and_an_answer_resets_it() {
        let p = pool(1, Balance::RoundRobin);
        let s = &p.servers[0];
        assert_eq!(s.connect_failed(), PASSIVE_BACKOFF);
        assert_eq!(s.connect_failed(), PASSIVE_BACKOFF * 2);
        assert!(!s.available(Instant::now()));
        for _ in 0..40 {
            s.connect_failed();
        }
        assert_eq!(s.connect_failed(), PASSIVE_BACKOFF_MAX);
        assert!(s.answered());
        assert!(s.available(Instant::now()));
        assert!(!s.answered());
    }
}
