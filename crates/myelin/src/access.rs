//! One access-log event and one set of request metrics per request, written when the response
//! body is finished (or abandoned), so bytes and duration are the real ones.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use myelin_listener::{BoxError, ConnInfo};
use myelin_router::ProxyBody;

/// Target of access-log events (filter on it, e.g. `RUST_LOG=myelin::access=off`).
pub const ACCESS_TARGET: &str = "myelin::access";

/// What is known of a request when its response is finished. Built for every request, so it
/// allocates nothing unless the access log is on.
pub struct AccessRecord {
    /// Log the request (`[log] access_log`); metrics are counted either way.
    pub enabled: bool,
    pub peer: IpAddr,
    /// Only kept when the access log is on.
    pub host: Option<String>,
    pub method: http::Method,
    /// Only kept when the access log is on; redacted when written.
    pub path: Option<http::uri::PathAndQuery>,
    pub version: &'static str,
    pub status: u16,
    pub started: Instant,
    pub route: &'static str,
    pub upstream: Option<Arc<str>>,
    /// The upstream pool the route table chose.
    pub pool: Option<Arc<str>>,
    pub metrics: Arc<RequestMetrics>,
    pub listener: Arc<str>,
}

impl AccessRecord {
    pub fn new(
        req: &Request<Incoming>,
        conn: &ConnInfo,
        peer: IpAddr,
        log: Option<&str>,
        metrics: Arc<RequestMetrics>,
        started: Instant,
    ) -> Self {
        let enabled = log.is_some();
        AccessRecord {
            enabled,
            peer,
            host: log.filter(|h| !h.is_empty()).map(str::to_owned),
            method: req.method().clone(),
            path: if enabled {
                req.uri().path_and_query().cloned()
            } else {
                None
            },
            version: if conn.h2 { "HTTP/2" } else { "HTTP/1.1" },
            status: 0,
            started,
            route: "",
            upstream: None,
            pool: None,
            metrics,
            listener: conn.listener.clone(),
        }
    }
}

/// Routes a request can take (the `route` label); anything else is counted the slow way.
const ROUTES: [&str; 7] = [
    "matrix",
    "admin",
    "not_served",
    "well_known",
    "unknown_host",
    "redirect",
    "acme_challenge",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The request metrics of one homeserver, registered on first use and then reused: looking a
/// metric up by name and labels on every request costs more than the rest of the bookkeeping.
pub struct RequestMetrics {
    homeserver: Arc<str>,
    counters: [[OnceLock<metrics::Counter>; CLASSES.len()]; ROUTES.len()],
    durations: [OnceLock<metrics::Histogram>; ROUTES.len()],
}

impl RequestMetrics {
    pub fn new(homeserver: &str) -> Self {
        RequestMetrics {
            homeserver: Arc::from(homeserver),
            counters: Default::default(),
            durations: Default::default(),
        }
    }

    /// The metrics of requests for hosts no homeserver serves.
    pub fn unknown_host() -> Arc<RequestMetrics> {
        static UNKNOWN: OnceLock<Arc<RequestMetrics>> = OnceLock::new();
        UNKNOWN
            .get_or_init(|| Arc::new(RequestMetrics::new("")))
            .clone()
    }

    fn record(&self, route: &'static str, status: u16, seconds: f64) {
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        let hs = || self.homeserver.to_string();
        match ROUTES.iter().position(|r| *r == route) {
            Some(i) => {
                self.counters[i][class]
                    .get_or_init(|| {
                        metrics::counter!("myelin_requests_total", "homeserver" => hs(),
                            "route" => route, "status_class" => CLASSES[class])
                    })
                    .increment(1);
                self.durations[i]
                    .get_or_init(|| {
                        metrics::histogram!("myelin_request_duration_seconds",
                            "homeserver" => hs(), "route" => route)
                    })
                    .record(seconds);
            }
            None => {
                metrics::counter!("myelin_requests_total", "homeserver" => hs(),
                    "route" => route, "status_class" => CLASSES[class])
                .increment(1);
                metrics::histogram!("myelin_request_duration_seconds",
                    "homeserver" => hs(), "route" => route)
                .record(seconds);
            }
        }
    }
}

/// The path and query with `access_token` values hidden, bounded in length, no control characters.
pub fn redact(path_and_query: &str) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut out = myelin_router::paths::for_log(path);
    if let Some(q) = query {
        out.push('?');
        let parts: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k == "access_token" => format!("{k}=<redacted>"),
                _ => myelin_router::paths::for_log(kv),
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    out
}

pin_project_lite::pin_project! {
    /// The response body, counting what goes out; logs the request when dropped.
    pub struct LoggedBody {
        #[pin]
        inner: ProxyBody,
        bytes: u64,
        record: AccessRecord,
        complete: bool,
    }

    impl PinnedDrop for LoggedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            finish(this.record, *this.bytes, *this.complete);
        }
    }
}

impl LoggedBody {
    pub fn new(inner: ProxyBody, record: AccessRecord) -> Self {
        let complete = inner.is_end_stream();
        LoggedBody {
            inner,
            bytes: 0,
            record,
            complete,
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let mut inner = this.inner;
        let polled = inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    *this.bytes += d.len() as u64;
                }
                if inner.is_end_stream() {
                    *this.complete = true;
                }
            }
            Poll::Ready(None) => *this.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn finish(r: &AccessRecord, bytes: u64, complete: bool) {
    let elapsed = r.started.elapsed();
    r.metrics.record(r.route, r.status, elapsed.as_secs_f64());
    if !r.enabled {
        return;
    }
    let path = redact(r.path.as_ref().map_or("", |p| p.as_str()));
    tracing::info!(
        target: ACCESS_TARGET,
        peer = %r.peer,
        host = r.host.as_deref().unwrap_or("-"),
        method = %r.method,
        path = %path,
        version = r.version,
        status = r.status,
        bytes,
        duration_ms = (elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        route = r.route,
        upstream = r.upstream.as_deref().unwrap_or("-"),
        pool = r.pool.as_deref().unwrap_or("-"),
        listener = %r.listener,
        complete,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_tokens_are_redacted() {
        assert_eq!(
            redact("/_matrix/client/v3/sync?timeout=30000&access_token=syt_secret&since=s1"),
            "/_matrix/client/v3/sync?timeout=30000&access_token=<redacted>&since=s1"
        );
        assert_eq!(
            redact("/_matrix/client/versions"),
            "/_matrix/client/versions"
        );
        assert_eq!(redact("/x?access_token"), "/x?access_token");
    }
}
