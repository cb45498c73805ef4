//! `[homeserver.upstreams.NAME]` pools and the ordered `[[homeserver.route]]` table: every server
//! address parses, every pool has servers, every route names a pool that exists and has a regular
//! expression that compiles (a syntax error points at the character in the file).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use toml::Spanned;

use crate::document::Document;
use crate::error::Located;
use crate::model::{
    Balance, DEFAULT_HEALTH_CHECK_INTERVAL, DEFAULT_HEALTH_CHECK_TIMEOUT, HealthCheck, MAIN_POOL,
    Route, UpstreamPool,
};
use crate::parse_upstream;
use crate::raw::{RawRoute, RawUpstreamPool};

/// Shortest health-check interval accepted (a smaller one would hammer the workers).
const MIN_HEALTH_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// The pools of one homeserver, sorted by name. Pools with errors are left out (and reported).
pub(crate) fn pools(
    doc: &mut Document<'_>,
    raw: BTreeMap<Spanned<String>, Spanned<RawUpstreamPool>>,
    path: &str,
) -> Vec<UpstreamPool> {
    let mut out = Vec::new();
    for (name, pool) in raw {
        let errors_before = doc.errors.len();
        let key = format!("{path}.upstreams.{}", name.get_ref());
        let name_ok = !name.get_ref().is_empty()
            && name
                .get_ref()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            doc.error(
                Some(name.span()),
                key.clone(),
                format!(
                    "invalid pool name \"{}\": use letters, digits, \"_\" and \"-\", e.g. \"sync\"",
                    name.get_ref()
                ),
            );
        } else if name.get_ref() == MAIN_POOL {
            doc.error(
                Some(name.span()),
                key.clone(),
                format!(
                    "\"{MAIN_POOL}\" is the name of the homeserver's own `upstream`; give this pool another name"
                ),
            );
        }
        let span = pool.span();
        let pool = pool.into_inner();

        let servers_span = pool.servers.span();
        let mut servers = Vec::new();
        for (i, s) in pool.servers.get_ref().iter().enumerate() {
            let skey = format!("{key}.servers[{i}]");
            match parse_upstream(s.get_ref()) {
                Ok(target) => {
                    let known = servers.iter().position(|l: &Located<_>| l.value == target);
                    if let Some(first) = known {
                        doc.error(
                            Some(s.span()),
                            skey,
                            format!("server \"{target}\" is already listed as servers[{first}]"),
                        );
                    } else {
                        servers.push(doc.located(s.span(), skey, target));
                    }
                }
                Err(msg) => doc.error(Some(s.span()), skey, msg),
            }
        }
        if servers.is_empty() && doc.errors.len() == errors_before {
            doc.error(
                Some(servers_span),
                format!("{key}.servers"),
                "an upstream pool needs at least one server, e.g. servers = [\"http://127.0.0.1:8083\"]",
            );
        }

        let balance = match &pool.balance {
            None => Balance::default(),
            Some(b) => Balance::parse(b.get_ref()).unwrap_or_else(|| {
                doc.error(
                    Some(b.span()),
                    format!("{key}.balance"),
                    format!(
                        "unknown balance \"{}\": expected one of {}",
                        b.get_ref(),
                        Balance::NAMES.join(", ")
                    ),
                );
                Balance::default()
            }),
        };

        let health_check = health_check(doc, &pool, &key, span);
        if doc.errors.len() == errors_before {
            out.push(UpstreamPool {
                name: doc.located(name.span(), key, name.into_inner()),
                servers,
                balance,
                health_check,
            });
        }
    }
    out
}

fn health_check(
    doc: &mut Document<'_>,
    pool: &RawUpstreamPool,
    key: &str,
    span: std::ops::Range<usize>,
) -> Option<HealthCheck> {
    let interval = pool.health_check_interval.as_ref();
    let timeout = pool.health_check_timeout.as_ref();
    let Some(check) = &pool.health_check else {
        if interval.is_some() || timeout.is_some() {
            doc.error(
                Some(span),
                key,
                "health_check_interval and health_check_timeout need health_check (the path to check, e.g. \"/health\")",
            );
        }
        return None;
    };
    let path = check.get_ref();
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        doc.error(
            Some(check.span()),
            format!("{key}.health_check"),
            format!("invalid health check path \"{path}\": expected a path such as \"/health\""),
        );
        return None;
    }
    let interval = match interval {
        None => DEFAULT_HEALTH_CHECK_INTERVAL,
        Some(d) if d.get_ref().0 >= MIN_HEALTH_CHECK_INTERVAL => d.get_ref().0,
        Some(d) => {
            doc.error(
                Some(d.span()),
                format!("{key}.health_check_interval"),
                "expected at least \"100ms\"",
            );
            return None;
        }
    };
    let timeout = match timeout {
        None => DEFAULT_HEALTH_CHECK_TIMEOUT.min(interval),
        Some(d) if !d.get_ref().0.is_zero() => d.get_ref().0,
        Some(d) => {
            doc.error(
                Some(d.span()),
                format!("{key}.health_check_timeout"),
                "expected a duration above zero, e.g. \"2s\"",
            );
            return None;
        }
    };
    Some(HealthCheck {
        path: path.clone(),
        interval,
        timeout,
    })
}

/// The route table, in file order. `pool_names` are every pool written in the file (also those
/// with errors, so a route naming a broken pool is not reported a second time).
pub(crate) fn routes(
    doc: &mut Document<'_>,
    raw: Vec<Spanned<RawRoute>>,
    pool_names: &BTreeSet<String>,
    path: &str,
) -> Vec<Route> {
    let mut out = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let errors_before = doc.errors.len();
        let key = format!("{path}.route[{i}]");
        let r = r.into_inner();

        check_regex(doc, &r.path, &format!("{key}.path"));

        let mut methods = Vec::new();
        if let Some(list) = r.methods {
            let span = list.span();
            let list = list.into_inner();
            if list.is_empty() {
                doc.error(
                    Some(span),
                    format!("{key}.methods"),
                    "expected at least one method, e.g. [\"GET\"]; leave `methods` out to match any method",
                );
            }
            for (j, m) in list.into_iter().enumerate() {
                let v = m.get_ref();
                let token = !v.is_empty()
                    && v.bytes()
                        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
                if token {
                    methods.push(v.clone());
                } else {
                    doc.error(
                        Some(m.span()),
                        format!("{key}.methods[{j}]"),
                        format!(
                            "invalid method \"{v}\": methods are upper-case and case-sensitive, e.g. \"GET\" or \"PUT\""
                        ),
                    );
                }
            }
        }

        let upstream = r.upstream.get_ref();
        if upstream != MAIN_POOL && !pool_names.contains(upstream) {
            let known: Vec<&str> = std::iter::once(MAIN_POOL)
                .chain(pool_names.iter().map(String::as_str))
                .collect();
            doc.error(
                Some(r.upstream.span()),
                format!("{key}.upstream"),
                format!(
                    "unknown upstream \"{upstream}\": define [homeserver.upstreams.{upstream}], or use one of: {}",
                    known.join(", ")
                ),
            );
        }
        if doc.errors.len() == errors_before {
            out.push(Route {
                path: doc.located_spanned(r.path, format!("{key}.path")),
                methods,
                upstream: doc.located_spanned(r.upstream, format!("{key}.upstream")),
            });
        }
    }
    out
}

/// Compiles the pattern; on a syntax error, reports the character it is at. When the pattern
/// is written without escapes (a '…' literal string, as the examples use), the error's column
/// is the offending character's column in the file.
fn check_regex(doc: &mut Document<'_>, pattern: &Spanned<String>, key: &str) {
    let p = pattern.get_ref();
    let span = pattern.span();
    let syntax = regex_syntax::ParserBuilder::new().build().parse(p).err();
    let (offset, reason) = match &syntax {
        Some(regex_syntax::Error::Parse(e)) => (Some(e.span().start.offset), e.kind().to_string()),
        Some(regex_syntax::Error::Translate(e)) => {
            (Some(e.span().start.offset), e.kind().to_string())
        }
        Some(other) => (None, other.to_string()),
        None => match regex::Regex::new(p) {
            Ok(_) => return,
            Err(e) => (None, e.to_string()),
        },
    };
    let Some(offset) = offset else {
        doc.error(
            Some(span),
            key,
            format!("invalid regular expression \"{p}\": {reason}"),
        );
        return;
    };
    let character = p.get(..offset).map_or(offset, |s| s.chars().count()) + 1;
    // The value as written, quotes included: when its inside is the pattern itself, byte
    // offsets in the pattern are byte offsets in the file.
    let written = doc.text.get(span.clone()).unwrap_or("");
    let exact = written.len() == p.len() + 2 && written.get(1..written.len() - 1) == Some(p);
    let at = if exact {
        let start = span.start + 1 + offset;
        start..start + 1
    } else {
        span
    };
    doc.error(
        Some(at),
        key,
        format!(
            "invalid regular expression \"{p}\": {reason} (at character {character} of the pattern)"
        ),
    );
}
