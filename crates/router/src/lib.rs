//! The router: decides what a request to a homeserver's host is (a Matrix path to forward, the
//! admin API, or nothing this server serves) and forwards it to the homeserver.
//!
//! Forwarding keeps what federation signs: the request-target goes upstream byte for byte, every
//! `Authorization` line unchanged and in order, `Host` as the client sent it, and the body as a
//! stream. `X-Forwarded-For` is replaced by the client address, never appended to. Errors Myelin
//! answers itself are Matrix JSON (see [`ProxyError`]).
//!
//! Where a request goes: an ordered route table (regular expressions on the raw path, optional
//! methods) picks a named pool of servers, Synapse workers for instance; paths no route matches go
//! to the homeserver's main `upstream`. A pool picks a server in turn or sticky by user, room,
//! federation origin or client address (rendezvous hashing), skips servers that refuse
//! connections or fail their health checks, and sends a request once more to another server when
//! the first could not be connected to.

#![forbid(unsafe_code)]

mod balance;
pub mod body;
mod client;
mod error;
pub mod forward;
mod health;
pub mod paths;
mod pool;
mod retry;
mod routes;
mod upstream;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use ipnet::IpNet;
use tokio::task::AbortHandle;
use tracing::{info, warn};

pub use crate::balance::Balance;
pub use crate::body::{BodyError, BoxError, ProxyBody, RequestBody, UpstreamStalled};
pub use crate::error::{ProxyError, matrix_error};
pub use crate::paths::Route;
use crate::pool::Pool;
pub use crate::pool::{HealthCheckSettings, PASSIVE_BACKOFF, PASSIVE_BACKOFF_MAX, PoolSettings};
use crate::retry::RetryableBody;
pub use crate::routes::RouteSettings;
pub use crate::routes::RouteTable;
pub use crate::upstream::UpstreamAddr;

/// The pool name routes use for the homeserver's own `upstream`.
pub const MAIN_POOL: &str = "main";

/// What the router needs to know about one homeserver.
#[derive(Clone, Debug)]
pub struct HomeserverSettings {
    pub server_name: String,
    pub upstream: UpstreamAddr,
    pub max_body_size: u64,
    pub upstream_timeout: Duration,
    pub connect_timeout: Duration,
    /// A request body that sends nothing for this long is abandoned; also the window over
    /// which `body_min_rate` is measured.
    pub body_read_timeout: Duration,
    /// Bytes per second a request body must bring over each `body_read_timeout` window (0: no
    /// minimum).
    pub body_min_rate: u64,
    /// Once the response head arrived, the longest pause in the upstream's body.
    pub upstream_body_timeout: Duration,
    pub admin_allow: Vec<IpNet>,
    /// Prefixes forwarded besides `/_matrix/` and `/_synapse/client/`.
    pub forward_prefixes: Vec<String>,
    /// Named pools besides `upstream` (which is the pool [`MAIN_POOL`]).
    pub pools: Vec<PoolSettings>,
    /// Ordered; the first match picks the pool, no match: [`MAIN_POOL`].
    pub routes: Vec<RouteSettings>,
}

/// Who the request is from, as the binary determined it (peer, or a trusted proxy's header).
#[derive(Clone, Copy, Debug)]
pub struct ClientContext {
    pub ip: IpAddr,
    /// The client reached Myelin over TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
    /// The request came over HTTP/2.
    pub h2: bool,
}

/// What happened to a request, for the access log.
#[derive(Clone, Debug)]
pub struct RouteInfo {
    pub route: &'static str,
    /// The server that answered (or was tried last).
    pub upstream: Option<Arc<str>>,
    /// The pool it belongs to.
    pub pool: Option<Arc<str>>,
}

/// Routes and forwards the requests of one homeserver.
pub struct HomeserverRouter {
    settings: HomeserverSettings,
    /// `pools[0]` is the main `upstream`.
    pools: Vec<Arc<Pool>>,
    routes: RouteTable,
    /// Running health checks, stopped when the router is dropped.
    health: Mutex<Option<Vec<AbortHandle>>>,
    /// `myelin_upstream_duration_seconds` of this homeserver, registered once.
    upstream_duration: metrics::Histogram,
}

/// Errors building a router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("invalid upstream address \"{addr}\": {reason}")]
    Upstream { addr: String, reason: String },
    #[error("upstream pool \"{pool}\" has no server")]
    EmptyPool { pool: String },
    #[error("upstream pool \"{pool}\" is defined twice")]
    DuplicatePool { pool: String },
    #[error("route {index} names the unknown upstream \"{pool}\"")]
    UnknownPool { index: usize, pool: String },
    #[error("invalid route table: {0}")]
    Routes(#[from] regex::Error),
}

impl HomeserverRouter {
    /// Must be called inside a Tokio runtime (the connection pool uses its timer).
    /// Health checks do not start here (`check-config` builds routers too): see
    /// [`HomeserverRouter::start_health_checks`].
    pub fn new(settings: HomeserverSettings) -> Result<Self, RouterError> {
        let main = PoolSettings {
            name: MAIN_POOL.into(),
            servers: vec![settings.upstream.clone()],
            balance: Balance::RoundRobin,
            health_check: None,
        };
        let mut known = HashMap::new();
        let timeout = settings.connect_timeout;
        let mut pools = vec![Arc::new(Pool::new(&main, timeout, &mut known)?)];
        for p in &settings.pools {
            if pools.iter().any(|q| *q.name == *p.name) {
                return Err(RouterError::DuplicatePool {
                    pool: p.name.clone(),
                });
            }
            pools.push(Arc::new(Pool::new(p, timeout, &mut known)?));
        }
        let targets = settings
            .routes
            .iter()
            .enumerate()
            .map(|(index, r)| {
                pools
                    .iter()
                    .position(|p| *p.name == *r.upstream)
                    .ok_or_else(|| RouterError::UnknownPool {
                        index,
                        pool: r.upstream.clone(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let routes = RouteTable::new(&settings.routes, targets)?;
        let upstream_duration = metrics::histogram!("myelin_upstream_duration_seconds",
            "homeserver" => settings.server_name.clone());
        Ok(HomeserverRouter {
            settings,
            pools,
            routes,
            health: Mutex::new(None),
            upstream_duration,
        })
    }

    /// Starts the active health checks of the pools that have one (once; later calls do
    /// nothing). They run until the router is dropped. Must be called inside a Tokio runtime.
    pub fn start_health_checks(&self) {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        if health.is_none() {
            // A server in several pools is checked once, as the first pool that checks it says.
            let mut checked = HashSet::new();
            let mut tasks = Vec::new();
            for p in &self.pools {
                tasks.extend(health::spawn(&self.settings.server_name, p, &mut checked));
            }
            *health = Some(tasks);
        }
    }

    pub fn settings(&self) -> &HomeserverSettings {
        &self.settings
    }

    /// What this homeserver does with `raw_path`.
    pub fn classify(&self, raw_path: &str) -> Route {
        paths::classify(raw_path, &self.settings.forward_prefixes)
    }

    /// Answers a request: forwards it, or refuses it with a Matrix error.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: ClientContext,
    ) -> (Response<ProxyBody>, RouteInfo) {
        let route = self.classify(req.uri().path());
        let (label, result) = match route {
            Route::Forward => ("matrix", self.forward(req, client).await),
            Route::Admin => {
                if self
                    .settings
                    .admin_allow
                    .iter()
                    .any(|n| n.contains(&client.ip))
                {
                    ("admin", self.forward(req, client).await)
                } else {
                    (
                        "admin",
                        Err((None, ProxyError::AdminForbidden { ip: client.ip })),
                    )
                }
            }
            Route::NotServed => (
                "not_served",
                Err((
                    None,
                    ProxyError::NotServed {
                        path: paths::for_log(req.uri().path()),
                    },
                )),
            ),
        };
        let (served_by, result) = match result {
            Ok((served_by, resp)) => (served_by, Ok(resp)),
            Err((served_by, e)) => (served_by, Err(e)),
        };
        let resp = result.unwrap_or_else(ProxyError::into_response);
        let info = RouteInfo {
            route: label,
            upstream: served_by.as_ref().map(|s| s.server.clone()),
            pool: served_by.map(|s| s.pool),
        };
        (resp, info)
    }

    /// Forwards to the pool the route table picks. Returns which server answered, or was tried
    /// last when none did.
    async fn forward(
        &self,
        req: Request<Incoming>,
        client: ClientContext,
    ) -> Result<(Option<ServedBy>, Response<ProxyBody>), (Option<ServedBy>, ProxyError)> {
        let s = &self.settings;
        if forward::content_length(req.headers()).is_some_and(|len| len > s.max_body_size) {
            return Err((
                None,
                ProxyError::TooLarge {
                    limit: s.max_body_size,
                },
            ));
        }
        let (mut parts, body) = req.into_parts();
        let pool_index = self
            .routes
            .pool_for(&parts.method, parts.uri.path())
            .unwrap_or(0);
        let pool = &self.pools[pool_index];
        let key = balance::key(pool.balance, &parts, &client).map(|k| k.into_owned());
        let Some(mut index) = pool.pick(key.as_deref(), None) else {
            return Err((
                None,
                ProxyError::UpstreamUnavailable {
                    reason: format!("upstream pool \"{}\" has no server", pool.name),
                },
            ));
        };
        let served_by = |i: usize| {
            Some(ServedBy {
                pool: pool.name.clone(),
                server: pool.servers[i].label.clone(),
            })
        };
        forward::prepare_request(&mut parts, &client).map_err(|e| (served_by(index), e))?;
        // A copy of the head for a second attempt, when the pool has another server.
        let head = (pool.servers.len() > 1).then(|| copy_head(&parts));
        let (body, unsent) = RetryableBody::new(RequestBody::new(
            body,
            s.max_body_size,
            s.body_read_timeout,
            s.body_min_rate,
        ));
        let upstream_req = Request::from_parts(parts, body);

        let started = Instant::now();
        let current = AtomicUsize::new(index);
        let attempt = Attempt {
            pool,
            key: key.as_deref(),
            head,
            unsent,
            current: &current,
        };
        let exchange = self.exchange(attempt, upstream_req);
        let sent = tokio::time::timeout(s.upstream_timeout, exchange).await;
        index = current.load(Ordering::Relaxed);
        self.upstream_duration
            .record(started.elapsed().as_secs_f64());
        let resp = match sent {
            Err(_) => {
                return Err((
                    served_by(index),
                    ProxyError::UpstreamTimeout(s.upstream_timeout),
                ));
            }
            Ok(Err(e)) => return Err((served_by(index), forward::classify_client_error(&e))),
            Ok(Ok(resp)) => resp,
        };
        let (mut parts, body) = resp.into_parts();
        forward::strip_hop_by_hop(&mut parts.headers);
        Ok((
            served_by(index),
            Response::from_parts(parts, ProxyBody::upstream(body, s.upstream_body_timeout)),
        ))
    }
}

impl HomeserverRouter {
    /// Sends the request to the server `attempt.current`; when that server cannot be connected
    /// to and nothing was sent, once more to another server of the pool.
    async fn exchange(
        &self,
        attempt: Attempt<'_>,
        mut req: Request<RetryableBody>,
    ) -> Result<Response<client::PooledBody>, client::ClientError> {
        let s = &self.settings;
        let pool = attempt.pool;
        let mut retried = false;
        loop {
            let index = attempt.current.load(Ordering::Relaxed);
            let server = &pool.servers[index];
            let e = match server.client.request(req).await {
                Ok(resp) => {
                    if server.answered() {
                        info!(homeserver = %s.server_name, pool = %pool.name, server = %server.label,
                            "upstream server answers again");
                    }
                    return Ok(resp);
                }
                Err(e) if e.is_connect() => e,
                Err(e) => return Err(e),
            };
            let skip = server.connect_failed();
            metrics::counter!("myelin_upstream_connect_failures_total",
                "homeserver" => s.server_name.clone(), "pool" => pool.name.to_string())
            .increment(1);
            let next = match (&attempt.head, retried) {
                (Some(head), false) => pool
                    .pick(attempt.key, Some(index))
                    .filter(|n| *n != index)
                    .and_then(|n| Some((n, head, attempt.unsent.take()?))),
                _ => None,
            };
            warn!(homeserver = %s.server_name, pool = %pool.name, server = %server.label,
                error = %upstream::error_chain(&e), skip_ms = skip.as_millis() as u64,
                retry = next.is_some(),
                "cannot connect to upstream server; skipping it for a while");
            let Some((next, head, body)) = next else {
                return Err(e);
            };
            let (body, _) = RetryableBody::new(body);
            let Some(again) = retry_request(head, body) else {
                return Err(e);
            };
            retried = true;
            req = again;
            attempt.current.store(next, Ordering::Relaxed);
            metrics::counter!("myelin_upstream_retries_total",
                "homeserver" => s.server_name.clone(), "pool" => pool.name.to_string())
            .increment(1);
        }
    }
}

/// What a second attempt needs.
struct Attempt<'a> {
    pool: &'a Pool,
    key: Option<&'a [u8]>,
    /// The request head, when the pool has another server to try.
    head: Option<Head>,
    unsent: retry::Unsent,
    /// The server being tried.
    current: &'a AtomicUsize,
}

impl Drop for HomeserverRouter {
    fn drop(&mut self) {
        let health = self
            .health
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for task in health.take().into_iter().flatten() {
            task.abort();
        }
    }
}

/// Which server of which pool a request went to.
struct ServedBy {
    pool: Arc<str>,
    server: Arc<str>,
}

/// The prepared request head, kept for a second attempt.
struct Head {
    method: http::Method,
    path_and_query: Option<http::uri::PathAndQuery>,
    version: http::Version,
    headers: http::HeaderMap,
}

fn copy_head(parts: &http::request::Parts) -> Head {
    Head {
        method: parts.method.clone(),
        path_and_query: parts.uri.path_and_query().cloned(),
        version: parts.version,
        headers: parts.headers.clone(),
    }
}

/// The same request again, for another server.
fn retry_request(head: &Head, body: RetryableBody) -> Option<Request<RetryableBody>> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = http::Uri::from(head.path_and_query.clone()?);
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    Some(req)
}

#[cfg(test)]
mod tests;
