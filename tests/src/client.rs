//! Clients for tests: raw HTTP/1.1 bytes over TLS (to send request-targets exactly), and HTTP/2
//! through hyper. Every read is bounded in time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Time any single read or handshake may take in tests.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
}

impl TlsClient {
    /// Trusts `ca_pem`; offers the ALPN protocols given (e.g. `["h2"]`, `["http/1.1"]`).
    pub fn new(ca_pem: &str, alpn: &[&str]) -> TlsClient {
        Self::with_versions(ca_pem, alpn, rustls::DEFAULT_VERSIONS)
    }

    pub fn with_versions(
        ca_pem: &str,
        alpn: &[&str],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.expect("CA PEM")).expect("add CA");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        TlsClient {
            config: Arc::new(config),
        }
    }

    pub async fn connect(
        &self,
        addr: SocketAddr,
        sni: &str,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(sni.to_string()).map_err(std::io::Error::other)?;
        tokio::time::timeout(
            IO_TIMEOUT,
            TlsConnector::from(self.config.clone()).connect(name, tcp),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }

    /// Like [`TlsClient::connect`], from a chosen local address (e.g. 127.0.0.7).
    pub async fn connect_from(
        &self,
        local: std::net::IpAddr,
        addr: SocketAddr,
        sni: &str,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let socket = match local {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(local, 0))?;
        let tcp = socket.connect(addr).await?;
        let name = ServerName::try_from(sni.to_string()).map_err(std::io::Error::other)?;
        tokio::time::timeout(
            IO_TIMEOUT,
            TlsConnector::from(self.config.clone()).connect(name, tcp),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }

    /// One HTTP/1.1 request of raw bytes from a chosen local address.
    pub async fn h1_from(
        &self,
        local: std::net::IpAddr,
        addr: SocketAddr,
        sni: &str,
        request: &[u8],
    ) -> std::io::Result<RawResponse> {
        let mut s = BufReader::new(self.connect_from(local, addr, sni).await?);
        s.get_mut().write_all(request).await?;
        // a TLS stream may keep the last records buffered until flushed
        s.get_mut().flush().await?;
        read_response(&mut s).await
    }

    /// One HTTP/1.1 request of raw bytes on a new connection; the response read whole.
    pub async fn h1(
        &self,
        addr: SocketAddr,
        sni: &str,
        request: &[u8],
    ) -> std::io::Result<RawResponse> {
        let mut s = BufReader::new(self.connect(addr, sni).await?);
        s.get_mut().write_all(request).await?;
        // a TLS stream may keep the last records buffered until flushed
        s.get_mut().flush().await?;
        read_response(&mut s).await
    }

    /// One HTTP/2 request on a new connection.
    pub async fn h2(
        &self,
        addr: SocketAddr,
        sni: &str,
        req: http::Request<Full<Bytes>>,
    ) -> std::io::Result<H2Response> {
        let tls = self.connect(addr, sni).await?;
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "h2 was not negotiated"
        );
        h2_on(tls, req).await
    }
}

/// Sends one HTTP/2 request on an established stream.
pub async fn h2_on<S>(io: S, req: http::Request<Full<Bytes>>) -> std::io::Result<H2Response>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let resp = tokio::time::timeout(IO_TIMEOUT, send.send_request(req))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "h2 response timed out"))?
        .map_err(std::io::Error::other)?;
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(IO_TIMEOUT, body.collect())
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "h2 body timed out"))?
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok(H2Response { parts, body })
}

pub struct H2Response {
    pub parts: http::response::Parts,
    pub body: Bytes,
}

impl H2Response {
    pub fn status(&self) -> u16 {
        self.parts.status.as_u16()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// An HTTP/1.1 response as read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Reads one response (Content-Length, chunked, or to EOF).
pub async fn read_response<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> std::io::Result<RawResponse> {
    tokio::time::timeout(IO_TIMEOUT, read_response_inner(r))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response timed out"))?
}

async fn read_response_inner<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> std::io::Result<RawResponse> {
    let mut status_line = String::new();
    if r.read_line(&mut status_line).await? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if status == 204 || status == 304 || (100..200).contains(&status) {
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body).await?;
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).await?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(std::io::Error::other)?;
            if n == 0 {
                let mut end = String::new();
                r.read_line(&mut end).await?;
                break;
            }
            let start = body.len();
            body.resize(start + n, 0);
            r.read_exact(&mut body[start..]).await?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).await?;
        }
    } else {
        r.read_to_end(&mut body).await?;
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

/// A GET request head for raw sending.
pub fn get(target: &str, host: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}
