//! The one service every request reaches: host → homeserver, then well-known or the router.
//! Plain-HTTP listeners only redirect to HTTPS.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use myelin_listener::{ConnInfo, Handler};
use myelin_router::{ClientContext, ProxyBody, ProxyError};
use myelin_well_known::WellKnown;

use crate::access::{AccessRecord, LoggedBody, RequestMetrics};
use crate::plan::{ListenerPolicy, Plan, Site};

/// What requests are answered from; replaced whole on reload.
pub struct State {
    pub sites: HashMap<String, Arc<Site>>,
    pub policies: HashMap<String, ListenerPolicy>,
    pub access_log: bool,
}

impl State {
    pub fn from_plan(plan: &Plan) -> State {
        State {
            sites: plan.sites.clone(),
            policies: plan.policies(),
            access_log: plan.access_log,
        }
    }
}

/// The handler given to the listeners.
pub struct App {
    pub state: ArcSwap<State>,
    /// ACME HTTP-01 tokens, answered on every listener before anything else.
    pub acme_tokens: myelin_acme::Http01Tokens,
}

impl Handler for App {
    type Body = LoggedBody;
    type Future = Pin<Box<dyn Future<Output = Response<LoggedBody>> + Send>>;

    fn call(&self, req: Request<Incoming>, conn: &Arc<ConnInfo>) -> Self::Future {
        let state = self.state.load_full();
        let conn = conn.clone();
        let acme = self.acme_tokens.answer(req.uri().path());
        Box::pin(async move { handle(state, req, conn, acme).await })
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    acme: Option<Option<String>>,
) -> Response<LoggedBody> {
    let started = Instant::now();
    let policy = state.policies.get(conn.listener.as_ref());
    let client_ip = client_ip(&req, &conn, policy);
    let host = request_host(&req);
    let site = host.as_deref().and_then(|h| state.sites.get(h)).cloned();
    let metrics = site
        .as_ref()
        .map_or_else(RequestMetrics::unknown_host, |s| s.metrics.clone());
    let log = state.access_log.then(|| host.as_deref().unwrap_or(""));
    let mut record = AccessRecord::new(&req, &conn, client_ip, log, metrics, started);

    let resp: Response<ProxyBody> = if let Some(key_authorization) = acme {
        record.route = "acme_challenge";
        crate::acme::http01_response(key_authorization)
    } else if !conn.tls {
        record.route = "redirect";
        match (&site, &host) {
            (Some(_), Some(h)) => redirect(&req, h, policy.map_or(443, |p| p.https_port)),
            _ => misdirected(host.as_deref()),
        }
    } else {
        match site {
            None => {
                record.route = "unknown_host";
                misdirected(host.as_deref())
            }
            Some(site) => {
                let path = req.uri().path();
                if WellKnown::handles(path) {
                    record.route = "well_known";
                    site.well_known
                        .respond(req.method(), path)
                        .map(|r| r.map(ProxyBody::full))
                        .unwrap_or_else(|| {
                            ProxyError::NotServed { path: path.into() }.into_response()
                        })
                } else {
                    let ctx = ClientContext {
                        ip: client_ip,
                        https: true,
                        h2: conn.h2,
                    };
                    let (resp, info) = site.router.clone().handle(req, ctx).await;
                    record.route = info.route;
                    record.upstream = info.upstream;
                    record.pool = info.pool;
                    resp
                }
            }
        }
    };
    record.status = resp.status().as_u16();
    record.enabled = state.access_log;
    resp.map(|body| LoggedBody::new(body, record))
}

/// The host the request is for: `Host`, or the authority of an HTTP/2 or absolute-form request;
/// lower-case, without port or trailing dot. Borrowed from the request when it is already in
/// that form (the usual case), so looking a site up costs no allocation.
fn request_host(req: &Request<Incoming>) -> Option<Cow<'_, str>> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    let raw = raw.rsplit_once('@').map_or(raw, |(_, h)| h);
    let (host, _) = myelin_config::split_host_port(raw.trim())?;
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

/// The client's address: the peer, or what a trusted proxy in front says it is.
fn client_ip(req: &Request<Incoming>, conn: &ConnInfo, policy: Option<&ListenerPolicy>) -> IpAddr {
    let peer = conn.peer.ip().to_canonical();
    let Some(policy) = policy else { return peer };
    if !policy.trusted_proxies.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    // Walk X-Forwarded-For from the right, skipping our trusted proxies.
    let chain: Vec<IpAddr> = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .collect();
    chain
        .iter()
        .rev()
        .find(|ip| !policy.trusted_proxies.iter().any(|n| n.contains(*ip)))
        .or(chain.first())
        .copied()
        .unwrap_or(peer)
}

fn redirect(req: &Request<Incoming>, host: &str, https_port: u16) -> Response<ProxyBody> {
    let authority = match (host.contains(':'), https_port) {
        (true, 443) => format!("[{host}]"),
        (true, p) => format!("[{host}]:{p}"),
        (false, 443) => host.to_string(),
        (false, p) => format!("{host}:{p}"),
    };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{authority}{pq}");
    let mut r = Response::new(ProxyBody::empty());
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => return ProxyError::BadTarget.into_response(),
    }
    r
}

fn misdirected(host: Option<&str>) -> Response<ProxyBody> {
    match host {
        Some(h) => ProxyError::UnknownHost {
            host: h.to_string(),
        }
        .into_response(),
        None => ProxyError::NoHost.into_response(),
    }
}
