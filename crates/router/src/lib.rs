//! The router: decides what a request to a homeserver's host is (a Matrix path to forward, the
//! admin API, or nothing this server serves) and forwards it to the homeserver.
//!
//! Forwarding keeps what federation signs: the request-target goes upstream byte for byte, every
//! `Authorization` line unchanged and in order, `Host` as the client sent it, and the body as a
//! stream. `X-Forwarded-For` is replaced by the client address, never appended to. Errors Myelin
//! answers itself are Matrix JSON (see [`ProxyError`]).

#![forbid(unsafe_code)]

pub mod body;
mod error;
pub mod forward;
pub mod paths;
mod upstream;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use ipnet::IpNet;

pub use crate::body::{BodyError, BoxError, ProxyBody, RequestBody};
pub use crate::error::{ProxyError, matrix_error};
pub use crate::paths::Route;
pub use crate::upstream::UpstreamAddr;
use crate::upstream::UpstreamClient;

/// What the router needs to know about one homeserver.
#[derive(Clone, Debug)]
pub struct HomeserverSettings {
    pub server_name: String,
    pub upstream: UpstreamAddr,
    pub max_body_size: u64,
    pub upstream_timeout: Duration,
    pub connect_timeout: Duration,
    /// A request body that sends nothing for this long is abandoned.
    pub body_read_timeout: Duration,
    pub admin_allow: Vec<IpNet>,
    /// Prefixes forwarded besides `/_matrix/` and `/_synapse/client/`.
    pub forward_prefixes: Vec<String>,
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

/// What happened to a request, for the access log (found in the response's extensions).
#[derive(Clone, Debug)]
pub struct RouteInfo {
    pub route: &'static str,
    pub upstream: Option<Arc<str>>,
}

/// Routes and forwards the requests of one homeserver.
pub struct HomeserverRouter {
    settings: HomeserverSettings,
    client: UpstreamClient,
    authority: http::uri::Authority,
    upstream_label: Arc<str>,
}

/// Errors building a router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("invalid upstream address \"{addr}\": {reason}")]
    Upstream { addr: String, reason: String },
}

impl HomeserverRouter {
    /// Must be called inside a Tokio runtime (the connection pool uses its timer).
    pub fn new(settings: HomeserverSettings) -> Result<Self, RouterError> {
        let authority = settings
            .upstream
            .authority()
            .parse::<http::uri::Authority>()
            .map_err(|e| RouterError::Upstream {
                addr: settings.upstream.to_string(),
                reason: e.to_string(),
            })?;
        let client = upstream::client(&settings.upstream, settings.connect_timeout);
        let upstream_label = Arc::from(settings.upstream.to_string());
        Ok(HomeserverRouter {
            settings,
            client,
            authority,
            upstream_label,
        })
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
    ) -> Response<ProxyBody> {
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
                    ("admin", Err(ProxyError::AdminForbidden { ip: client.ip }))
                }
            }
            Route::NotServed => (
                "not_served",
                Err(ProxyError::NotServed {
                    path: paths::for_log(req.uri().path()),
                }),
            ),
        };
        let upstream =
            matches!(route, Route::Forward | Route::Admin).then(|| self.upstream_label.clone());
        let mut resp = result.unwrap_or_else(ProxyError::into_response);
        resp.extensions_mut().insert(RouteInfo {
            route: label,
            upstream,
        });
        resp
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        client: ClientContext,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let s = &self.settings;
        if forward::content_length(req.headers()).is_some_and(|len| len > s.max_body_size) {
            return Err(ProxyError::TooLarge {
                limit: s.max_body_size,
            });
        }
        let (mut parts, body) = req.into_parts();
        forward::prepare_request(&mut parts, &self.authority, &client)?;
        let body = RequestBody::new(body, s.max_body_size, s.body_read_timeout);
        let upstream_req = Request::from_parts(parts, body);

        let started = Instant::now();
        let sent =
            tokio::time::timeout(s.upstream_timeout, self.client.request(upstream_req)).await;
        metrics::histogram!("myelin_upstream_duration_seconds", "homeserver" => s.server_name.clone())
            .record(started.elapsed().as_secs_f64());
        let resp = match sent {
            Err(_) => return Err(ProxyError::UpstreamTimeout(s.upstream_timeout)),
            Ok(Err(e)) => return Err(forward::classify_client_error(&e)),
            Ok(Ok(resp)) => resp,
        };
        let (mut parts, body) = resp.into_parts();
        forward::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, ProxyBody::Upstream(body)))
    }
}

#[cfg(test)]
mod tests;
