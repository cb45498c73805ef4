//! The Prometheus endpoint. `[metrics] bind` gets a plain-HTTP listener of its own, apart from
//! the public ones, that answers `GET /metrics` with the text exposition format and nothing else.
//!
//! The crates count through the `metrics` facade; [`install_recorder`] makes
//! metrics-exporter-prometheus the process's recorder (rendering only: its own HTTP listener
//! would pull a TLS client in and could not be rebound on reload). The certificate expiry gauge
//! is not recorded at all: it is read from the live [`CertStore`] at each scrape, so it follows
//! reloads and certificates swapped in by ACME without anyone having to remember to update it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use myelin_listener::{CertMap, CertStore};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

/// Every metric Myelin exports: name, type, labels, meaning. `docs/metrics.md` documents each
/// (a test checks), and each name a crate records must be here (another test checks).
pub const METRICS: &[MetricDoc] = &[
    MetricDoc {
        name: "myelin_requests_total",
        kind: Kind::Counter,
        labels: &["homeserver", "route", "status_class"],
        help: "Requests answered, by homeserver (server_name; empty for an unknown host), route and status class (2xx, 3xx, 4xx, 5xx).",
    },
    MetricDoc {
        name: "myelin_request_duration_seconds",
        kind: Kind::Histogram,
        labels: &["homeserver", "route"],
        help: "Time from the request head to the end of the response body.",
    },
    MetricDoc {
        name: "myelin_upstream_duration_seconds",
        kind: Kind::Histogram,
        labels: &["homeserver"],
        help: "Time the homeserver took to send its response head (failures and timeouts included).",
    },
    MetricDoc {
        name: "myelin_upstream_healthy",
        kind: Kind::Gauge,
        labels: &["homeserver", "pool", "server"],
        help: "1 when the pool server's active health check passes, 0 when it fails.",
    },
    MetricDoc {
        name: "myelin_upstream_connect_failures_total",
        kind: Kind::Counter,
        labels: &["homeserver", "pool"],
        help: "Connections to a pool server that failed (the server is then skipped for a while).",
    },
    MetricDoc {
        name: "myelin_upstream_retries_total",
        kind: Kind::Counter,
        labels: &["homeserver", "pool"],
        help: "Requests sent to a second server because the connection to the first failed before anything was sent.",
    },
    MetricDoc {
        name: "myelin_connections_active",
        kind: Kind::Gauge,
        labels: &["listener"],
        help: "Client connections open now, by listener (its configured bind address).",
    },
    MetricDoc {
        name: "myelin_connections_refused_total",
        kind: Kind::Counter,
        labels: &["listener", "reason"],
        help: "Client connections closed at once because a limit was reached (reason: max_connections).",
    },
    MetricDoc {
        name: "myelin_connections_cut_total",
        kind: Kind::Counter,
        labels: &["reason"],
        help: "Client connections Myelin closed because the client misbehaved (reason: header_timeout for a request head that did not arrive within [limits] header_read_timeout, h2_resets for an HTTP/2 client resetting streams past [limits] h2_max_resets).",
    },
    MetricDoc {
        name: "myelin_tls_handshakes_total",
        kind: Kind::Counter,
        labels: &["result"],
        help: "TLS handshakes by result: ok, unknown_sni (answered with the default certificate), timeout, error.",
    },
    MetricDoc {
        name: "myelin_certificate_expiry_timestamp_seconds",
        kind: Kind::Gauge,
        labels: &["name"],
        help: "When the certificate served for this name expires (its notAfter), as a Unix time.",
    },
    MetricDoc {
        name: "myelin_acme_orders_total",
        kind: Kind::Counter,
        labels: &["result"],
        help: "ACME certificate orders by result: ok (a certificate was issued) or error (the order failed; the current certificate keeps serving and the order is retried with backoff).",
    },
    MetricDoc {
        name: "myelin_config_reloads_total",
        kind: Kind::Counter,
        labels: &["result"],
        help: "Configuration reloads (SIGHUP) by result: ok, or error (the previous configuration kept serving).",
    },
    MetricDoc {
        name: "myelin_build_info",
        kind: Kind::Gauge,
        labels: &["version"],
        help: "Always 1; the version label says which Myelin is running.",
    },
];

/// Histogram buckets in seconds: from a fast well-known answer to a `/sync` long-poll.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Scrapers served at once; more connections are closed at accept.
const MAX_CONNECTIONS: usize = 16;
/// A scraper that sends no request head for this long is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

const EXPIRY: &str = "myelin_certificate_expiry_timestamp_seconds";
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug)]
pub struct MetricDoc {
    pub name: &'static str,
    pub kind: Kind,
    /// Read by the test that checks `docs/metrics.md`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

/// Makes the Prometheus recorder the process's `metrics` recorder and describes every metric.
/// Must be called inside a Tokio runtime (it starts the upkeep task). Before it runs, metrics
/// are counted nowhere.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    for m in METRICS {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => {
                metrics::describe_histogram!(m.name, metrics::Unit::Seconds, m.help)
            }
        }
    }
    metrics::gauge!("myelin_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Counters an alert watches exist from the start, so rate() and increase() see the first event.
    for result in ["ok", "error"] {
        metrics::counter!("myelin_config_reloads_total", "result" => result).increment(0);
    }
    for result in ["ok", "unknown_sni", "timeout", "error"] {
        metrics::counter!("myelin_tls_handshakes_total", "result" => result).increment(0);
    }
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The `[metrics]` listener: absent, or bound to one address; rebound when the address changes.
pub struct MetricsEndpoint {
    handle: PrometheusHandle,
    store: Arc<CertStore>,
    bound: Option<Bound>,
}

struct Bound {
    /// As configured (may have port 0).
    bind: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Bound {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every scrape in flight.
        self.task.abort();
    }
}

impl MetricsEndpoint {
    pub fn new(handle: PrometheusHandle, store: Arc<CertStore>) -> Self {
        MetricsEndpoint {
            handle,
            store,
            bound: None,
        }
    }

    /// Serves `/metrics` on `want` (`None`: nowhere). An unchanged address keeps its socket.
    /// A new address is bound before the old one is closed, so a failure changes nothing (and a
    /// move to another address on the same port needs a restart).
    /// Must be called inside a Tokio runtime.
    pub fn set(&mut self, want: Option<SocketAddr>) -> Result<(), String> {
        let current = self.bound.as_ref().map(|b| b.bind);
        if current == want {
            return Ok(());
        }
        let Some(want) = want else {
            if let Some(old) = self.bound.take() {
                info!(bind = %old.bind, "metrics endpoint closed");
            }
            return Ok(());
        };
        let listener = bind(want).map_err(|e| {
            let same_port = current.is_some_and(|c| c.port() == want.port());
            let mut msg = bind_error(want, &e);
            if same_port && e.kind() == std::io::ErrorKind::AddrInUse {
                msg.push_str(
                    "; the running endpoint holds this port on another address: restart Myelin to move it",
                );
            }
            msg
        })?;
        self.bound = Some(self.serve(want, listener));
        Ok(())
    }

    fn serve(&self, bind: SocketAddr, listener: TcpListener) -> Bound {
        let local = listener.local_addr().unwrap_or(bind);
        info!(bind = %bind, local = %local, "metrics endpoint listening: http://{local}/metrics");
        let scrape = Scrape {
            handle: self.handle.clone(),
            store: self.store.clone(),
        };
        let task = tokio::spawn(accept_loop(listener, Arc::new(scrape)));
        Bound { bind, task }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let std = std::net::TcpListener::bind(addr)?;
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

fn bind_error(addr: SocketAddr, e: &std::io::Error) -> String {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another program, or another Myelin, uses this port: pick another [metrics] bind)"
        }
        std::io::ErrorKind::AddrNotAvailable => " (no interface of this machine has this address)",
        _ => "",
    };
    format!("cannot listen on {addr} for [metrics]: {e}{hint}")
}

/// What a scrape reads.
struct Scrape {
    handle: PrometheusHandle,
    store: Arc<CertStore>,
}

async fn accept_loop(listener: TcpListener, scrape: Arc<Scrape>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(peer = %peer, "metrics endpoint: too many connections; closed");
            continue;
        };
        let scrape = scrape.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let resp = answer(&scrape, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(peer = %peer, error = %e, "metrics endpoint: connection ended");
            }
            drop(slot);
        });
    }
}

fn answer(scrape: &Scrape, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "use GET /metrics\n");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let body = render(&scrape.handle, &scrape.store.current());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The whole exposition: what the recorder holds, then the certificates being served.
fn render(handle: &PrometheusHandle, certs: &CertMap) -> String {
    handle.run_upkeep();
    let mut out = handle.render();
    render_certificate_expiry(certs, &mut out);
    out
}

/// One sample per name a certificate is served for now. A name claimed by several certificates
/// (a renewed one inserted over the old) reports the one handshakes get.
fn render_certificate_expiry(certs: &CertMap, out: &mut String) {
    let mut expiry: BTreeMap<&str, u64> = BTreeMap::new();
    for cert in certs.certs() {
        for name in &cert.names {
            let served = certs
                .lookup(Some(name))
                .is_some_and(|(key, by_name)| by_name && Arc::ptr_eq(&key, &cert.key));
            if served {
                let at = cert
                    .not_after
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                expiry.insert(name, at);
            }
        }
    }
    if expiry.is_empty() {
        return;
    }
    let help = METRICS
        .iter()
        .find(|m| m.name == EXPIRY)
        .map_or("", |m| m.help);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(out, "# HELP {EXPIRY} {help}");
    let _ = writeln!(out, "# TYPE {EXPIRY} gauge");
    for (name, at) in expiry {
        let _ = writeln!(out, "{EXPIRY}{{name=\"{}\"}} {at}", label_value(name));
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use myelin_listener::LoadedCert;

    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn expiry_follows_the_certificate_served() {
        let old = LoadedCert::self_signed(&names(&["a.test", "*.w.test"])).unwrap();
        let mut renewed = LoadedCert::self_signed(&names(&["a.test"])).unwrap();
        renewed.not_after = UNIX_EPOCH + Duration::from_secs(4_000_000_000);
        let mut map = CertMap::new();
        map.insert(old.clone(), false);
        map.insert(renewed, true);
        let mut out = String::new();
        render_certificate_expiry(&map, &mut out);
        let old_at = old.not_after.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(
            out.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            vec![
                format!("{EXPIRY}{{name=\"*.w.test\"}} {old_at}"),
                format!("{EXPIRY}{{name=\"a.test\"}} 4000000000"),
            ]
        );
        assert!(out.contains(&format!("# TYPE {EXPIRY} gauge\n")), "{out}");

        let mut empty = String::new();
        render_certificate_expiry(&CertMap::new(), &mut empty);
        assert_eq!(empty, "");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    /// Every metric named here is explained, with its labels, on the admin's page.
    #[test]
    fn every_metric_is_documented() {
        let docs_path = repo().join("docs/metrics.md");
        let docs = std::fs::read_to_string(&docs_path)
            .unwrap_or_else(|e| panic!("{}: {e}", docs_path.display()));
        for m in METRICS {
            assert!(
                docs.contains(&format!("`{}`", m.name)),
                "docs/metrics.md does not document {}",
                m.name
            );
            for l in m.labels {
                assert!(
                    docs.contains(&format!("`{l}`")),
                    "docs/metrics.md does not explain the label {l} of {}",
                    m.name
                );
            }
        }
    }

    /// Every metric some crate records is in [`METRICS`] (and so described and documented).
    #[test]
    fn every_recorded_metric_is_listed() {
        let mut found = Vec::new();
        for dir in std::fs::read_dir(repo().join("crates")).unwrap() {
            collect_recorded(&dir.unwrap().path().join("src"), &mut found);
        }
        assert!(
            found.iter().any(|(n, _)| n == "myelin_requests_total"),
            "the scan found nothing: {found:?}"
        );
        for (name, file) in found {
            assert!(
                METRICS.iter().any(|m| m.name == name),
                "{name} (recorded in {}) is not in METRICS",
                file.display()
            );
        }
    }

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn collect_recorded(dir: &Path, found: &mut Vec<(String, PathBuf)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                collect_recorded(&path, found);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for mac in ["counter!(", "gauge!(", "histogram!("] {
                    for (i, _) in text.match_indices(mac) {
                        let rest = text[i + mac.len()..].trim_start();
                        if let Some(lit) = rest.strip_prefix('"') {
                            let name = lit.split('"').next().unwrap_or("");
                            let is_name = !name.is_empty()
                                && name.chars().all(|c| {
                                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
                                });
                            if is_name {
                                found.push((name.to_string(), path.clone()));
                            }
                        }
                    }
                }
            }
        }
    }
}
