//! Reading `/.well-known/matrix/server` the way homeservers do: any Content-Type, a JSON object
//! with a valid `m.server`, and a cache lifetime from `Cache-Control`/`Expires` clamped to
//! 5 minutes … 48 hours (Synapse's `well_known_resolver`), 24 hours when neither is sent.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header;
use myelin_well_known::ServerName;
use serde_json::Value;

use crate::keys::snippet;

/// Homeservers read at most this much of a well-known document (spec, Synapse).
pub const MAX_BODY: usize = 50 * 1024;
pub const MIN_CACHE: Duration = Duration::from_secs(5 * 60);
pub const MAX_CACHE: Duration = Duration::from_secs(48 * 3600);
pub const DEFAULT_CACHE: Duration = Duration::from_secs(24 * 3600);

/// Parses a server well-known answer: `Ok(delegated name as written)` or why homeservers
/// ignore it.
pub fn parse_server(status: u16, body: &[u8]) -> Result<(String, ServerName), String> {
    if status != 200 {
        return Err(format!("it answered HTTP {status}"));
    }
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| format!("its body is not JSON ({e}): {}", snippet(body)))?;
    let Some(obj) = doc.as_object() else {
        return Err("its body is JSON but not an object".into());
    };
    let Some(server) = obj.get("m.server") else {
        return Err("it has no \"m.server\" key".into());
    };
    let Some(server) = server.as_str() else {
        return Err("\"m.server\" is not a string".into());
    };
    ServerName::parse(server)
        .map(|sn| (server.to_string(), sn))
        .map_err(|reason| format!("\"m.server\" is \"{server}\", not a server name: {reason}"))
}

/// How long homeservers keep a well-known answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheLifetime {
    /// What the headers ask for; `None` when they ask nothing.
    pub requested: Option<Duration>,
    /// What a homeserver actually uses.
    pub effective: Duration,
    /// The header it came from, for the report.
    pub source: String,
}

impl CacheLifetime {
    /// Whether the requested lifetime lies outside what homeservers honour.
    pub fn out_of_range(&self) -> bool {
        self.requested
            .is_some_and(|r| !(MIN_CACHE..=MAX_CACHE).contains(&r))
    }
}

/// Reads `Cache-Control` (no-store, max-age) and `Expires` as Synapse does.
pub fn cache_lifetime(headers: &HeaderMap, now: SystemTime) -> CacheLifetime {
    let cache_control: Vec<&str> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let directives: Vec<(String, Option<String>)> = cache_control
        .iter()
        .flat_map(|v| v.split(','))
        .map(|d| {
            let d = d.trim();
            match d.split_once('=') {
                Some((k, v)) => (
                    k.trim().to_ascii_lowercase(),
                    Some(v.trim().trim_matches('"').to_string()),
                ),
                None => (d.to_ascii_lowercase(), None),
            }
        })
        .collect();
    let requested = if directives.iter().any(|(k, _)| k == "no-store") {
        Some((
            Duration::ZERO,
            format!("Cache-Control: {}", cache_control.join(", ")),
        ))
    } else if let Some(secs) = directives
        .iter()
        .find(|(k, _)| k == "max-age")
        .and_then(|(_, v)| v.as_deref()?.parse::<u64>().ok())
    {
        Some((
            Duration::from_secs(secs),
            format!("Cache-Control: {}", cache_control.join(", ")),
        ))
    } else if let Some(expires) = headers
        .get_all(header::EXPIRES)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
    {
        // An invalid date means "already expired" (RFC 9111).
        let left = httpdate::parse_http_date(expires)
            .ok()
            .and_then(|t| t.duration_since(now).ok())
            .unwrap_or(Duration::ZERO);
        Some((left, format!("Expires: {expires}")))
    } else {
        None
    };
    match requested {
        Some((r, source)) => CacheLifetime {
            requested: Some(r),
            effective: r.clamp(MIN_CACHE, MAX_CACHE),
            source,
        },
        None => CacheLifetime {
            requested: None,
            effective: DEFAULT_CACHE,
            source: "no Cache-Control or Expires header".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn server_documents() {
        let (written, sn) =
            parse_server(200, br#"{"m.server":"matrix.example.test:443"}"#).unwrap();
        assert_eq!(written, "matrix.example.test:443");
        assert_eq!(sn.port, Some(443));
        // the content type does not matter; extra keys neither
        assert!(parse_server(200, br#"{"m.server":"[::1]","x":1}"#).is_ok());
        for (status, body, reason) in [
            (404, &b"{}"[..], "HTTP 404"),
            (200, b"<html></html>", "not JSON"),
            (200, b"[]", "not an object"),
            (200, b"{}", "no \"m.server\""),
            (200, br#"{"m.server": 443}"#, "not a string"),
            (
                200,
                br#"{"m.server":"https://matrix.example.test"}"#,
                "not a server name",
            ),
        ] {
            let e = parse_server(status, body).unwrap_err();
            assert!(e.contains(reason), "{e}");
        }
    }

    #[test]
    fn cache_lifetimes_as_synapse_reads_them() {
        let now = SystemTime::now();
        let c = cache_lifetime(&headers(&[("cache-control", "public, max-age=3600")]), now);
        assert_eq!(c.requested, Some(Duration::from_secs(3600)));
        assert!(!c.out_of_range());

        let c = cache_lifetime(&headers(&[("cache-control", "max-age=60")]), now);
        assert_eq!(c.effective, MIN_CACHE);
        assert!(c.out_of_range());

        let c = cache_lifetime(&headers(&[("cache-control", "max-age=604800")]), now);
        assert_eq!(c.effective, MAX_CACHE);
        assert!(c.out_of_range());

        let c = cache_lifetime(&headers(&[("cache-control", "no-store")]), now);
        assert_eq!(c.requested, Some(Duration::ZERO));
        assert!(c.out_of_range());

        let c = cache_lifetime(&HeaderMap::new(), now);
        assert_eq!((c.requested, c.effective), (None, DEFAULT_CACHE));
        assert!(!c.out_of_range());

        let later = httpdate::fmt_http_date(now + Duration::from_secs(7200));
        let c = cache_lifetime(&headers(&[("expires", &later)]), now);
        let r = c.requested.unwrap();
        assert!(
            r > Duration::from_secs(7100) && r <= Duration::from_secs(7200),
            "{r:?}"
        );
        let c = cache_lifetime(&headers(&[("expires", "0")]), now);
        assert_eq!(c.requested, Some(Duration::ZERO));
        // max-age wins over Expires
        let c = cache_lifetime(
            &headers(&[("expires", &later), ("cache-control", "max-age=600")]),
            now,
        );
        assert_eq!(c.requested, Some(Duration::from_secs(600)));
    }
}
