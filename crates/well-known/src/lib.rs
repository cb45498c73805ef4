//! The well-known responder: `/.well-known/matrix/server`, `/client` and `/support`, built from
//! settings once, validated against the Matrix spec, and answered with CORS and caching headers.
//!
//! These documents are answered by Myelin itself and never forwarded upstream.

#![forbid(unsafe_code)]

pub mod names;

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use serde_json::{Map, Value, json};

pub use crate::names::{HostKind, ServerName, check_user_id};

pub const SERVER_PATH: &str = "/.well-known/matrix/server";
pub const CLIENT_PATH: &str = "/.well-known/matrix/client";
pub const SUPPORT_PATH: &str = "/.well-known/matrix/support";

/// What the admin configured for one homeserver's well-known documents.
#[derive(Clone, Debug, Default)]
pub struct WellKnownSettings {
    /// `m.server`: where other servers should send federation traffic.
    pub server: Option<String>,
    /// `m.homeserver.base_url`
    pub client_base_url: Option<String>,
    /// `m.identity_server.base_url`
    pub identity_server: Option<String>,
    /// Namespaced keys merged into the client document.
    pub client_extra: Map<String, Value>,
    pub support: Option<SupportSettings>,
    pub cache_max_age: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct SupportSettings {
    pub support_page: Option<String>,
    pub contacts: Vec<ContactSettings>,
}

#[derive(Clone, Debug, Default)]
pub struct ContactSettings {
    pub role: String,
    pub matrix_id: Option<String>,
    pub email_address: Option<String>,
}

/// Which setting an error is about, so the caller can point at its place in the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    Server,
    ClientBaseUrl,
    IdentityServer,
    ClientExtra,
    Support,
    SupportPage,
    ContactRole(usize),
    ContactMatrixId(usize),
    ContactEmail(usize),
    Contact(usize),
}

/// A well-known setting that breaks the spec.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WellKnownError {
    #[error("invalid server name \"{value}\": {reason}")]
    ServerName {
        field: Field,
        value: String,
        reason: String,
    },
    #[error("invalid URL \"{value}\": {reason}")]
    Url {
        field: Field,
        value: String,
        reason: String,
    },
    #[error("key \"{key}\" is not allowed: {reason}")]
    ExtraKey { key: String, reason: String },
    #[error("{reason}")]
    Support { field: Field, reason: String },
}

impl WellKnownError {
    pub fn field(&self) -> &Field {
        match self {
            WellKnownError::ServerName { field, .. }
            | WellKnownError::Url { field, .. }
            | WellKnownError::Support { field, .. } => field,
            WellKnownError::ExtraKey { .. } => &Field::ClientExtra,
        }
    }
}

/// The three documents of one homeserver, serialised once.
#[derive(Clone, Debug)]
pub struct WellKnown {
    server: Option<Bytes>,
    client: Option<Bytes>,
    support: Option<Bytes>,
    cache_control: HeaderValue,
}

impl WellKnown {
    /// Validates the settings and renders the documents; every problem is returned.
    pub fn new(s: &WellKnownSettings) -> Result<WellKnown, Vec<WellKnownError>> {
        let mut errors = Vec::new();

        let server = s.server.as_ref().map(|v| {
            if let Err(reason) = ServerName::parse(v) {
                errors.push(WellKnownError::ServerName {
                    field: Field::Server,
                    value: v.clone(),
                    reason,
                });
            }
            json!({ "m.server": v })
        });

        let client = s.client_base_url.as_ref().map(|base| {
            check_url(&mut errors, Field::ClientBaseUrl, base, true);
            let mut doc = Map::new();
            doc.insert("m.homeserver".into(), json!({ "base_url": base }));
            if let Some(is) = &s.identity_server {
                check_url(&mut errors, Field::IdentityServer, is, true);
                doc.insert("m.identity_server".into(), json!({ "base_url": is }));
            }
            for (k, v) in &s.client_extra {
                if let Err(reason) = check_extra_key(k) {
                    errors.push(WellKnownError::ExtraKey {
                        key: k.clone(),
                        reason,
                    });
                }
                doc.insert(k.clone(), v.clone());
            }
            Value::Object(doc)
        });
        if s.client_base_url.is_none()
            && (s.identity_server.is_some() || !s.client_extra.is_empty())
        {
            errors.push(WellKnownError::Url {
                field: Field::ClientBaseUrl,
                value: String::new(),
                reason: "client_base_url is required when identity_server or client_extra is set \
                         (the client document must carry m.homeserver)"
                    .into(),
            });
        }

        let support = s
            .support
            .as_ref()
            .map(|sup| support_document(&mut errors, sup));

        if !errors.is_empty() {
            return Err(errors);
        }
        let cache_control =
            HeaderValue::from_str(&format!("max-age={}", s.cache_max_age.as_secs()))
                .unwrap_or_else(|_| HeaderValue::from_static("max-age=86400"));
        let render = |v: Value| Bytes::from(v.to_string());
        Ok(WellKnown {
            server: server.map(render),
            client: client.map(render),
            support: support.map(render),
            cache_control,
        })
    }

    /// Whether `path` is one of the documents this responder answers (present or not).
    pub fn handles(path: &str) -> bool {
        matches!(path, SERVER_PATH | CLIENT_PATH | SUPPORT_PATH)
    }

    /// Answers a request for one of the three paths; `None` for any other path.
    pub fn respond(&self, method: &Method, path: &str) -> Option<Response<Bytes>> {
        let doc = match path {
            SERVER_PATH => &self.server,
            CLIENT_PATH => &self.client,
            SUPPORT_PATH => &self.support,
            _ => return None,
        };
        let mut resp = match (method, doc) {
            (&Method::OPTIONS, _) => empty(StatusCode::NO_CONTENT),
            (&Method::GET | &Method::HEAD, Some(body)) => {
                let mut r = Response::new(body.clone());
                let h = r.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                h.insert(header::CACHE_CONTROL, self.cache_control.clone());
                r
            }
            (&Method::GET | &Method::HEAD, None) => json_error(
                StatusCode::NOT_FOUND,
                "M_NOT_FOUND",
                "this document is not configured on this server",
            ),
            _ => {
                let mut r = json_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "M_UNRECOGNIZED",
                    "only GET, HEAD and OPTIONS are allowed here",
                );
                r.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, OPTIONS"),
                );
                r
            }
        };
        add_cors(resp.headers_mut());
        Some(resp)
    }
}

/// The CORS headers the spec asks for on well-known documents (and which Element needs).
pub fn add_cors(h: &mut http::HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
    );
}

fn empty(status: StatusCode) -> Response<Bytes> {
    let mut r = Response::new(Bytes::new());
    *r.status_mut() = status;
    r
}

fn json_error(status: StatusCode, errcode: &str, error: &str) -> Response<Bytes> {
    let body = json!({ "errcode": errcode, "error": error }).to_string();
    let mut r = Response::new(Bytes::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn check_url(errors: &mut Vec<WellKnownError>, field: Field, value: &str, https_only: bool) {
    let fail = |reason: &str| WellKnownError::Url {
        field: field.clone(),
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let url = match url::Url::parse(value) {
        Ok(u) => u,
        Err(e) => {
            errors.push(fail(&format!(
                "{e}; expected e.g. \"https://matrix.example.com\""
            )));
            return;
        }
    };
    if https_only && url.scheme() != "https" {
        errors.push(fail("must start with https:// (clients refuse plain http)"));
    } else if !https_only && !matches!(url.scheme(), "https" | "http") {
        errors.push(fail("must be an http(s) URL"));
    } else if url.host_str().is_none_or(str::is_empty) {
        errors.push(fail("has no host"));
    } else if !url.username().is_empty() || url.password().is_some() {
        errors.push(fail("must not carry a user name or password"));
    } else if url.query().is_some() || url.fragment().is_some() {
        errors.push(fail("must not have a query or fragment"));
    }
}

/// Extra client keys must be namespaced (Java package style, e.g. `org.matrix.msc3575.proxy`)
/// and must not replace the keys Myelin writes from dedicated settings.
pub fn check_extra_key(k: &str) -> Result<(), String> {
    if k == "m.homeserver" || k == "m.identity_server" {
        return Err("set it with client_base_url / identity_server instead".into());
    }
    if !k.contains('.') || k.starts_with('.') || k.ends_with('.') || k.contains("..") {
        return Err(
            "keys must be namespaced, e.g. \"org.matrix.msc3575.proxy\" or \"io.element.e2ee\""
                .into(),
        );
    }
    if k.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("keys must not contain spaces".into());
    }
    Ok(())
}

fn support_document(errors: &mut Vec<WellKnownError>, s: &SupportSettings) -> Value {
    let mut doc = Map::new();
    if s.support_page.is_none() && s.contacts.is_empty() {
        errors.push(WellKnownError::Support {
            field: Field::Support,
            reason:
                "set support_page, or at least one entry in contacts (the spec needs one of them)"
                    .into(),
        });
    }
    if let Some(page) = &s.support_page {
        check_url(errors, Field::SupportPage, page, false);
        doc.insert("support_page".into(), json!(page));
    }
    if !s.contacts.is_empty() {
        let mut contacts = Vec::new();
        for (i, c) in s.contacts.iter().enumerate() {
            let mut entry = Map::new();
            let role_ok = matches!(c.role.as_str(), "m.role.admin" | "m.role.security")
                || (c.role.contains('.') && !c.role.starts_with("m.") && !c.role.contains(' '));
            if !role_ok {
                errors.push(WellKnownError::Support {
                    field: Field::ContactRole(i),
                    reason: format!(
                        "unknown role \"{}\": expected \"m.role.admin\", \"m.role.security\" or a namespaced role",
                        c.role
                    ),
                });
            }
            entry.insert("role".into(), json!(c.role));
            if c.matrix_id.is_none() && c.email_address.is_none() {
                errors.push(WellKnownError::Support {
                    field: Field::Contact(i),
                    reason: "a contact needs matrix_id or email_address (or both)".into(),
                });
            }
            if let Some(m) = &c.matrix_id {
                if let Err(reason) = check_user_id(m) {
                    errors.push(WellKnownError::Support {
                        field: Field::ContactMatrixId(i),
                        reason: format!("invalid matrix_id \"{m}\": {reason}"),
                    });
                }
                entry.insert("matrix_id".into(), json!(m));
            }
            if let Some(e) = &c.email_address {
                let ok = e.split_once('@').is_some_and(|(l, d)| {
                    !l.is_empty() && d.contains('.') && !e.contains(char::is_whitespace)
                });
                if !ok {
                    errors.push(WellKnownError::Support {
                        field: Field::ContactEmail(i),
                        reason: format!("invalid email_address \"{e}\""),
                    });
                }
                entry.insert("email_address".into(), json!(e));
            }
            contacts.push(Value::Object(entry));
        }
        doc.insert("contacts".into(), Value::Array(contacts));
    }
    Value::Object(doc)
}

#[cfg(test)]
mod tests;
