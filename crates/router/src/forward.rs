//! Turning the client's request into the upstream's, and the upstream's failure into an answer.

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::Uri;

use crate::body::BodyError;
use crate::upstream::error_chain;
use crate::{ClientContext, ProxyError};

/// Headers that belong to one connection and are never forwarded (RFC 9110 §7.6.1, plus the
/// non-standard `Keep-Alive` and `Proxy-Connection`).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Client-supplied forwarding headers: replaced by ours, never passed on.
static FORWARDING: [HeaderName; 5] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-real-ip"),
    header::FORWARDED,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Rewrites the request head for the upstream, in place: same method, same request-target bytes,
/// same headers but hop-by-hop and forwarding ones, `Host` kept (or made from `:authority`).
pub fn prepare_request(parts: &mut Parts, client: &ClientContext) -> Result<(), ProxyError> {
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .ok_or(ProxyError::BadTarget)?;
    if !path_and_query.as_str().starts_with('/') {
        return Err(ProxyError::BadTarget);
    }
    if !parts.headers.contains_key(header::HOST) {
        // HTTP/2 carries the host in :authority; HTTP/1.1 upstreams need a Host line.
        let authority = parts.uri.authority().ok_or(ProxyError::NoHost)?;
        let value = HeaderValue::from_str(authority.as_str()).map_err(|_| ProxyError::NoHost)?;
        parts.headers.insert(header::HOST, value);
    }
    if client.h2 {
        join_cookies(&mut parts.headers);
    }
    strip(&mut parts.headers, &FORWARDING);
    parts
        .headers
        .insert(X_FORWARDED_FOR.clone(), ip_header(client.ip));
    parts.headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if client.https { "https" } else { "http" }),
    );

    // Origin-form, exactly the bytes the client sent: hyper writes the URI as it is.
    parts.uri = Uri::from(path_and_query);
    parts.version = Version::HTTP_11;
    Ok(())
}

thread_local! {
    /// The last client address written, as a header value: keep-alive clients send many
    /// requests in a row, and formatting an address costs more than the rest of the header work.
    static LAST_CLIENT: std::cell::RefCell<Option<(std::net::IpAddr, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// `ip` as an `X-Forwarded-For` value.
fn ip_header(ip: std::net::IpAddr) -> HeaderValue {
    LAST_CLIENT.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((cached, value)) = last.as_ref() {
            if *cached == ip {
                return value.clone();
            }
        }
        // An address's text is always a valid header value.
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(ip.to_string()))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        *last = Some((ip, value.clone()));
        value
    })
}

/// Removes hop-by-hop headers and any header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, &[]);
}

/// Removes hop-by-hop headers, the headers `Connection` names, and `also`. One pass over the
/// names present rather than a lookup per unwanted name: most requests carry none of them.
fn strip(headers: &mut HeaderMap, also: &[HeaderName]) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    let mut connection = false;
    for name in headers.keys() {
        if HOP_BY_HOP.contains(name) || also.contains(name) {
            connection |= name == header::CONNECTION;
            doomed.push(name.clone());
        }
    }
    if connection {
        doomed.extend(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok()),
        );
    }
    for h in doomed {
        headers.remove(h);
    }
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 needs one (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let values: Vec<&HeaderValue> = headers.get_all(header::COOKIE).iter().collect();
    if values.len() < 2 {
        return;
    }
    let mut joined = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// The declared body length, if any.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// What a failed upstream exchange means for the client.
pub fn classify_client_error(e: &crate::client::ClientError) -> ProxyError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(b) = err.downcast_ref::<BodyError>() {
            return match b {
                BodyError::TooLarge { limit } => ProxyError::TooLarge { limit: *limit },
                BodyError::Stalled(d) => ProxyError::BodyStalled(*d),
                BodyError::TooSlow { min_rate, window } => ProxyError::BodyTooSlow {
                    min_rate: *min_rate,
                    window: *window,
                },
                BodyError::Client(inner) => ProxyError::UpstreamBroken {
                    reason: format!("the client's request body failed: {inner}"),
                },
            };
        }
        cur = err.source();
    }
    let reason = error_chain(e);
    if e.is_connect() {
        ProxyError::UpstreamUnavailable { reason }
    } else {
        ProxyError::UpstreamBroken { reason }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn parts(req: http::Request<()>) -> Parts {
        req.into_parts().0
    }

    fn client(h2: bool) -> ClientContext {
        ClientContext {
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            https: true,
            h2,
        }
    }

    #[test]
    fn request_target_and_authorization_survive() {
        let target = "/_matrix/federation/v1/send/%2F%24%21%3A%40%2B%25//../x?a=b+c&a=%20&";
        let mut p = parts(
            http::Request::get(target)
                .header("host", "Example.com:8448")
                .header(
                    "authorization",
                    "X-Matrix origin=\"a\",key=\"ed25519:1\",sig=\"s1\"",
                )
                .header(
                    "authorization",
                    "X-Matrix origin=\"a\",key=\"ed25519:2\",sig=\"s2\"",
                )
                .header("x-forwarded-for", "6.6.6.6")
                .header("forwarded", "for=6.6.6.6")
                .header("connection", "keep-alive, x-secret")
                .header("x-secret", "1")
                .header("te", "trailers")
                .body(())
                .unwrap(),
        );
        prepare_request(&mut p, &client(false)).unwrap();
        assert_eq!(p.uri.path_and_query().unwrap().as_str(), target);
        assert!(p.uri.authority().is_none(), "origin-form upstream");
        assert_eq!(p.headers["host"], "Example.com:8448");
        let auth: Vec<_> = p.headers.get_all("authorization").iter().collect();
        assert_eq!(auth.len(), 2);
        assert!(auth[0].to_str().unwrap().ends_with("s1\""));
        assert!(auth[1].to_str().unwrap().ends_with("s2\""));
        assert_eq!(p.headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(p.headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(p.headers["x-forwarded-proto"], "https");
        for gone in ["forwarded", "connection", "x-secret", "te"] {
            assert!(!p.headers.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(p.version, Version::HTTP_11);
    }

    #[test]
    fn h2_authority_becomes_host_and_cookies_join() {
        let mut p = parts(
            http::Request::get("https://matrix.example.com/_synapse/client/sso?x=1")
                .version(Version::HTTP_2)
                .header("cookie", "a=1")
                .header("cookie", "b=2")
                .body(())
                .unwrap(),
        );
        prepare_request(&mut p, &client(true)).unwrap();
        assert_eq!(p.headers["host"], "matrix.example.com");
        assert_eq!(p.headers["cookie"], "a=1; b=2");
        assert_eq!(p.uri.to_string(), "/_synapse/client/sso?x=1");
    }

    #[test]
    fn content_lengths() {
        let mut h = HeaderMap::new();
        assert_eq!(content_length(&h), None);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1234"));
        assert_eq!(content_length(&h), Some(1234));
    }
}
