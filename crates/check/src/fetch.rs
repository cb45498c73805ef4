//! A small HTTPS client made for diagnosis: it connects to the exact address, with the exact
//! SNI and `Host` a homeserver would use, tells a refused certificate apart from a refused
//! connection, caps the body, and bounds every stage in time. HTTP/1.1, as Synapse speaks to
//! other servers.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::Budget;
use crate::dns::{Answer, Dns};
use crate::tls::{CertProblem, CertSummary, TlsName, Trust};

/// What this client calls itself.
pub const USER_AGENT: &str = concat!("myelin-check/", env!("CARGO_PKG_VERSION"));

/// How long each stage may take (each also bounded by the whole check's budget).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub tls: Duration,
    /// From request sent to the whole body read.
    pub response: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            tls: Duration::from_secs(5),
            response: Duration::from_secs(10),
        }
    }
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `None`: plain HTTP (only ever reached by a redirect).
    pub tls: Option<TlsName>,
    pub host_header: String,
}

#[derive(Clone, Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The certificate the server presented (valid: the request was only sent if it was).
    pub cert: Option<CertSummary>,
}

impl Response {
    pub fn header(&self, name: &HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchError {
    /// No address for the host.
    NoAddress {
        host: String,
        reason: String,
    },
    Connect {
        addr: SocketAddr,
        refused: bool,
        reason: String,
    },
    /// The TLS handshake failed before a certificate could be judged.
    Tls {
        addr: SocketAddr,
        reason: String,
    },
    /// The certificate was refused; nothing was sent.
    Certificate {
        addr: SocketAddr,
        problem: CertProblem,
    },
    Timeout {
        addr: SocketAddr,
        stage: &'static str,
        after: Duration,
    },
    Http {
        addr: SocketAddr,
        reason: String,
    },
    TooLarge {
        addr: SocketAddr,
        limit: usize,
    },
    /// The check's time budget ran out before this step.
    OutOfTime,
}

impl FetchError {
    /// The reason in plain words.
    pub fn describe(&self) -> String {
        match self {
            FetchError::NoAddress { host, reason } => format!("{host} has no address: {reason}"),
            FetchError::Connect {
                addr,
                refused: true,
                ..
            } => format!("nothing answers on {addr} (connection refused)"),
            FetchError::Connect { addr, reason, .. } => {
                format!("cannot connect to {addr}: {reason}")
            }
            FetchError::Tls { addr, reason } => {
                format!("the TLS handshake with {addr} failed: {reason}")
            }
            FetchError::Certificate { problem, .. } => problem.describe(),
            FetchError::Timeout { addr, stage, after } => format!(
                "{addr} did not complete the {stage} within {} s",
                after.as_secs_f32().ceil()
            ),
            FetchError::Http { addr, reason } => format!("HTTP error from {addr}: {reason}"),
            FetchError::TooLarge { addr, limit } => {
                format!("the answer from {addr} is larger than {} KiB", limit / 1024)
            }
            FetchError::OutOfTime => "skipped: the check ran out of time".into(),
        }
    }

    /// Whether a homeserver would go on to the next address (the server is not there at all).
    pub fn unreachable(&self) -> bool {
        matches!(
            self,
            FetchError::Connect { .. }
                | FetchError::NoAddress { .. }
                | FetchError::Timeout {
                    stage: "TCP connection",
                    ..
                }
        )
    }
}

/// One HTTP exchange after a redirect chain.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub response: Response,
    /// Every URL requested, the first one included.
    pub urls: Vec<String>,
    /// The address of the last request.
    pub addr: SocketAddr,
}

/// Why a URL could not be fetched, with the URLs followed so far.
#[derive(Clone, Debug)]
pub struct UrlError {
    pub error: FetchError,
    pub urls: Vec<String>,
}

#[derive(Clone)]
pub struct Http {
    trust: Trust,
    pub timeouts: Timeouts,
    /// Addresses whose TCP connection timed out: later requests fail at once instead of
    /// spending the connect timeout again (a firewall that drops packets would otherwise
    /// cost it once per document).
    silent: Arc<Mutex<HashSet<SocketAddr>>>,
}

impl Http {
    pub fn new(trust: Trust, timeouts: Timeouts) -> Http {
        Http {
            trust,
            timeouts,
            silent: Arc::default(),
        }
    }

    /// One request on a new connection to `ep`. With TLS, the request is only sent when the
    /// certificate is valid for the endpoint's name.
    pub async fn request(
        &self,
        ep: &Endpoint,
        method: Method,
        path: &str,
        headers: &[(HeaderName, &str)],
        body_cap: usize,
        budget: &Budget,
    ) -> Result<Response, FetchError> {
        let addr = ep.addr;
        let connect_for = budget
            .limit(self.timeouts.connect)
            .ok_or(FetchError::OutOfTime)?;
        if self.silent.lock().is_ok_and(|s| s.contains(&addr)) {
            return Err(FetchError::Timeout {
                addr,
                stage: "TCP connection",
                after: self.timeouts.connect,
            });
        }
        let tcp = match tokio::time::timeout(connect_for, TcpStream::connect(addr)).await {
            Err(_) => {
                if let Ok(mut s) = self.silent.lock() {
                    s.insert(addr);
                }
                return Err(FetchError::Timeout {
                    addr,
                    stage: "TCP connection",
                    after: connect_for,
                });
            }
            Ok(Err(e)) => {
                return Err(FetchError::Connect {
                    addr,
                    refused: e.kind() == std::io::ErrorKind::ConnectionRefused,
                    reason: e.to_string(),
                });
            }
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        match &ep.tls {
            None => {
                self.exchange(tcp, ep, method, path, headers, body_cap, None, budget)
                    .await
            }
            Some(name) => {
                let (config, verifier) = self
                    .trust
                    .recording_client(&[b"http/1.1"])
                    .map_err(|reason| FetchError::Tls { addr, reason })?;
                let server_name = name
                    .server_name()
                    .map_err(|reason| FetchError::Tls { addr, reason })?;
                let tls_for = budget
                    .limit(self.timeouts.tls)
                    .ok_or(FetchError::OutOfTime)?;
                let handshake = TlsConnector::from(Arc::new(config)).connect(server_name, tcp);
                let tls = match tokio::time::timeout(tls_for, handshake).await {
                    Err(_) => {
                        return Err(FetchError::Timeout {
                            addr,
                            stage: "TLS handshake",
                            after: tls_for,
                        });
                    }
                    Ok(Err(e)) => {
                        return Err(FetchError::Tls {
                            addr,
                            reason: tls_reason(&e),
                        });
                    }
                    Ok(Ok(s)) => s,
                };
                let Some((chain, error)) = verifier.outcome() else {
                    return Err(FetchError::Tls {
                        addr,
                        reason: "the server sent no certificate".into(),
                    });
                };
                let cert = chain.first().map(CertSummary::parse).unwrap_or_default();
                if let Some(e) = error {
                    return Err(FetchError::Certificate {
                        addr,
                        problem: CertProblem::from_rustls(&e, name, cert),
                    });
                }
                self.exchange(tls, ep, method, path, headers, body_cap, Some(cert), budget)
                    .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn exchange<S>(
        &self,
        io: S,
        ep: &Endpoint,
        method: Method,
        path: &str,
        headers: &[(HeaderName, &str)],
        body_cap: usize,
        cert: Option<CertSummary>,
        budget: &Budget,
    ) -> Result<Response, FetchError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let addr = ep.addr;
        let http_err = |e: &dyn std::fmt::Display| FetchError::Http {
            addr,
            reason: e.to_string(),
        };
        let response_for = budget
            .limit(self.timeouts.response)
            .ok_or(FetchError::OutOfTime)?;
        let work = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| http_err(&e))?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, &ep.host_header)
                .header(header::USER_AGENT, USER_AGENT)
                .header(header::ACCEPT, "application/json")
                .body(Empty::<Bytes>::new())
                .map_err(|e| http_err(&e))?;
            for (name, value) in headers {
                let v = HeaderValue::from_str(value).map_err(|e| http_err(&e))?;
                req.headers_mut().insert(name.clone(), v);
            }
            let resp = sender.send_request(req).await.map_err(|e| http_err(&e))?;
            let (parts, mut body) = resp.into_parts();
            let mut buf = BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| http_err(&e))?;
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > body_cap {
                        return Err(FetchError::TooLarge {
                            addr,
                            limit: body_cap,
                        });
                    }
                    buf.extend_from_slice(&data);
                }
            }
            driver.abort();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body: buf.freeze(),
                cert,
            })
        };
        tokio::time::timeout(response_for, work)
            .await
            .unwrap_or(Err(FetchError::Timeout {
                addr,
                stage: "HTTP response",
                after: response_for,
            }))
    }

    /// GET (or another method on) a URL as a browser or homeserver would: the host resolved
    /// through `dns`, each address tried in turn while nothing answers, redirects followed up to
    /// `max_redirects` (loops refused). The certificate must be valid for the URL's host.
    #[allow(clippy::too_many_arguments)]
    pub async fn fetch_url(
        &self,
        dns: &Dns,
        url: &str,
        method: Method,
        headers: &[(HeaderName, &str)],
        body_cap: usize,
        max_redirects: usize,
        budget: &Budget,
    ) -> Result<Fetched, UrlError> {
        let mut urls = vec![url.to_string()];
        let mut current = match url::Url::parse(url) {
            Ok(u) => u,
            Err(e) => {
                return Err(UrlError {
                    error: FetchError::NoAddress {
                        host: url.into(),
                        reason: format!("not a URL: {e}"),
                    },
                    urls,
                });
            }
        };
        loop {
            let (response, addr) = match self
                .fetch_one(dns, &current, method.clone(), headers, body_cap, budget)
                .await
            {
                Ok(r) => r,
                Err(error) => return Err(UrlError { error, urls }),
            };
            let location = response
                .status
                .is_redirection()
                .then(|| response.header(&header::LOCATION))
                .flatten()
                .and_then(|l| current.join(l).ok());
            match location {
                Some(next) if urls.len() <= max_redirects => {
                    if urls.iter().any(|u| *u == next.as_str()) {
                        return Err(UrlError {
                            error: FetchError::Http {
                                addr,
                                reason: format!("redirect loop back to {next}"),
                            },
                            urls,
                        });
                    }
                    urls.push(next.to_string());
                    current = next;
                }
                Some(_) => {
                    return Err(UrlError {
                        error: FetchError::Http {
                            addr,
                            reason: format!("more than {max_redirects} redirects"),
                        },
                        urls,
                    });
                }
                None => {
                    return Ok(Fetched {
                        response,
                        urls,
                        addr,
                    });
                }
            }
        }
    }

    async fn fetch_one(
        &self,
        dns: &Dns,
        url: &url::Url,
        method: Method,
        headers: &[(HeaderName, &str)],
        body_cap: usize,
        budget: &Budget,
    ) -> Result<(Response, SocketAddr), FetchError> {
        let host = url.host_str().unwrap_or_default().to_string();
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            other => {
                return Err(FetchError::NoAddress {
                    host,
                    reason: format!("unsupported scheme \"{other}\""),
                });
            }
        };
        let port = url.port_or_known_default().unwrap_or(443);
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        if budget.exhausted() {
            return Err(FetchError::OutOfTime);
        }
        let ips = match dns.addresses(&host).await {
            Answer::Found(ips) => ips,
            Answer::NotFound => {
                return Err(FetchError::NoAddress {
                    host,
                    reason: "no A or AAAA record".into(),
                });
            }
            Answer::Failed(reason) => return Err(FetchError::NoAddress { host, reason }),
        };
        let name = TlsName::for_host(&host);
        let mut last = None;
        for ip in ips {
            let ep = Endpoint {
                addr: SocketAddr::new(ip, port),
                tls: tls.then(|| name.clone()),
                host_header: host_header.clone(),
            };
            let path = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_string(),
            };
            match self
                .request(&ep, method.clone(), &path, headers, body_cap, budget)
                .await
            {
                Ok(r) => return Ok((r, ep.addr)),
                Err(e) if e.unreachable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(FetchError::NoAddress {
            host,
            reason: "no address".into(),
        }))
    }
}

fn tls_reason(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(alert)) => {
            format!("the server refused the handshake ({alert:?})")
        }
        Some(other) => other.to_string(),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the server closed the connection during the handshake (is it speaking TLS?)".into()
        }
        None => e.to_string(),
    }
}
