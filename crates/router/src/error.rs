//! Errors Myelin answers itself, and the one place they become HTTP responses (Matrix JSON).

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::ProxyBody;

/// Why a request was answered by Myelin rather than by the homeserver.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no homeserver is configured for host \"{host}\"")]
    UnknownHost { host: String },
    #[error("the request has no Host header")]
    NoHost,
    #[error("this server does not serve {path}")]
    NotServed { path: String },
    #[error("the request-target is not a path")]
    BadTarget,
    #[error("the admin API is not reachable from {ip}")]
    AdminForbidden { ip: std::net::IpAddr },
    #[error("request body larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the request body stopped arriving for {0:?}")]
    BodyStalled(Duration),
    #[error("the request body arrived at less than {min_rate} bytes/s over {window:?}")]
    BodyTooSlow { min_rate: u64, window: Duration },
    #[error("cannot reach the homeserver: {reason}")]
    UpstreamUnavailable { reason: String },
    #[error("the homeserver did not answer within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("the homeserver's answer was broken: {reason}")]
    UpstreamBroken { reason: String },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UnknownHost { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::NoHost | ProxyError::BadTarget => StatusCode::BAD_REQUEST,
            ProxyError::NotServed { .. } => StatusCode::NOT_FOUND,
            ProxyError::AdminForbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyStalled(_) | ProxyError::BodyTooSlow { .. } => {
                StatusCode::REQUEST_TIMEOUT
            }
            ProxyError::UpstreamUnavailable { .. } | ProxyError::UpstreamBroken { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The Matrix error code (spec "Standard error response").
    pub fn errcode(&self) -> &'static str {
        match self {
            ProxyError::NotServed { .. } | ProxyError::BadTarget => "M_UNRECOGNIZED",
            ProxyError::AdminForbidden { .. } => "M_FORBIDDEN",
            ProxyError::TooLarge { .. } => "M_TOO_LARGE",
            ProxyError::NoHost => "M_UNRECOGNIZED",
            _ => "M_UNKNOWN",
        }
    }

    /// The response: `{"errcode": ..., "error": ...}` with the right status.
    pub fn into_response(self) -> Response<ProxyBody> {
        matrix_error(self.status(), self.errcode(), &self.to_string())
    }
}

impl From<ProxyError> for Response<ProxyBody> {
    fn from(e: ProxyError) -> Self {
        e.into_response()
    }
}

/// A Matrix JSON error response.
pub fn matrix_error(status: StatusCode, errcode: &str, error: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "errcode": errcode, "error": error }).to_string();
    let mut r = Response::new(ProxyBody::full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
