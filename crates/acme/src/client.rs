//! The HTTPS client instant-acme talks to the CA with: rustls (aws-lc-rs), the system's roots
//! plus the admin's `ca_roots`, bounded in time, and remembering the CA's `Retry-After`.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tracing::warn;

use crate::AcmeError;

/// How long one request to the CA may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The last `Retry-After` a CA sent with an error (rate limits, maintenance).
#[derive(Clone, Debug, Default)]
pub(crate) struct RetryAfter(Arc<Mutex<Option<SystemTime>>>);

impl RetryAfter {
    /// The time the CA asked us to wait for, forgetting it.
    pub fn take(&self) -> Option<SystemTime> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn set(&self, t: SystemTime) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
    }
}

pub(crate) struct CaClient {
    client: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    retry_after: RetryAfter,
}

impl CaClient {
    pub fn new(ca_roots: Option<&Path>, retry_after: RetryAfter) -> Result<CaClient, AcmeError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            warn!(error = %e, "could not load some of the system's trusted certificates");
        }
        let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
        if let Some(path) = ca_roots {
            let bad = |reason: String| AcmeError::BadFile {
                path: path.to_path_buf(),
                reason,
            };
            let data =
                std::fs::read(path).map_err(|e| AcmeError::io(path, "cannot read ca_roots", e))?;
            let mut n = 0;
            for c in CertificateDer::pem_slice_iter(&data) {
                let c = c.map_err(|e| bad(format!("unreadable PEM: {e}")))?;
                roots
                    .add(c)
                    .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
                n += 1;
            }
            if n == 0 {
                return Err(bad("no \"BEGIN CERTIFICATE\" block found".into()));
            }
        }
        if roots.is_empty() {
            return Err(AcmeError::Tls(
                "no trusted root certificates: install the ca-certificates package or set ca_roots"
                    .into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| AcmeError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(CaClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            retry_after,
        })
    }
}

impl HttpClient for CaClient {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.client.request(req);
        let retry_after = self.retry_after.clone();
        Box::pin(async move {
            let rsp = match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
                Ok(Ok(rsp)) => rsp,
                Ok(Err(e)) => return Err(instant_acme::Error::Other(Box::new(ErrorChain(e)))),
                Err(_) => {
                    return Err(instant_acme::Error::Other(
                        format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()).into(),
                    ));
                }
            };
            let status = rsp.status();
            if status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE
                || status.is_server_error()
            {
                if let Some(t) = rsp
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after)
                {
                    retry_after.set(t);
                }
            }
            Ok(BytesResponse::from(rsp))
        })
    }
}

/// hyper-util's errors say only "client error (Connect)"; show the causes too.
#[derive(Debug)]
struct ErrorChain(hyper_util::client::legacy::Error);

impl std::fmt::Display for ErrorChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(&self.0);
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl std::error::Error for ErrorChain {}

/// `Retry-After: 120` or `Retry-After: Fri, 31 Dec 1999 23:59:59 GMT`.
fn parse_retry_after(v: &str) -> Option<SystemTime> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(SystemTime::now() + Duration::from_secs(secs));
    }
    httpdate::parse_http_date(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let t = parse_retry_after("120").unwrap();
        let d = t.duration_since(SystemTime::now()).unwrap();
        assert!(d > Duration::from_secs(115) && d <= Duration::from_secs(120));
        let t = parse_retry_after("Fri, 31 Dec 2055 23:59:59 GMT").unwrap();
        assert!(t > SystemTime::now());
        assert!(parse_retry_after("soon").is_none());
    }
}
