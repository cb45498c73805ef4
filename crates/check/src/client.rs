//! What clients see (client-server spec, "Server Discovery"): `/.well-known/matrix/client` with
//! CORS and its preflight, `base_url` answering `/_matrix/client/versions` (with CORS, as web
//! clients need), the identity server if named, `/.well-known/matrix/support` if published, and
//! whether client and server discovery lead to the same homeserver.

use http::Method;
use http::header;
use myelin_well_known::{HostKind, ServerName};
use serde_json::Value;

use crate::Ctx;
use crate::fetch::{FetchError, Fetched, UrlError};
use crate::keys::snippet;
use crate::report::{ClientVerdict, Section, Status, Step};
use crate::resolve::Route;

/// The origin the check claims, as a web client on another site would.
const ORIGIN: &str = "https://app.element.io";
const MAX_BODY: usize = 1 << 20;
const CORS_FIX: &str = "answer with Access-Control-Allow-Origin: * (and on OPTIONS: \
    Access-Control-Allow-Methods: GET, POST, PUT, DELETE, OPTIONS; Access-Control-Allow-Headers: \
    X-Requested-With, Content-Type, Authorization); Myelin sends these on the documents it serves";

/// Runs the client checks; returns the client verdict.
pub(crate) async fn check(
    ctx: &Ctx,
    sn: &ServerName,
    server_name: &str,
    route: Option<&Route>,
    steps: &mut Vec<Step>,
) -> ClientVerdict {
    let first = steps.len();
    let host = match sn.kind {
        HostKind::Ipv6 => format!("[{}]", sn.host),
        _ => sn.host.clone(),
    };
    let base_url = client_well_known(ctx, &host, steps).await;
    let published = base_url.is_some();
    if let Some(base) = &base_url {
        versions(ctx, base, steps).await;
    }
    support(ctx, &host, steps).await;
    if let (Some(base), Some(route)) = (&base_url, route) {
        crate::agreement::check(ctx, base, server_name, route, steps).await;
    }
    let client_steps = &steps[first..];
    if client_steps
        .iter()
        .any(|s| s.section == Section::Client && s.status == Status::Fail)
    {
        ClientVerdict::Fails
    } else if published {
        ClientVerdict::Works
    } else {
        ClientVerdict::NotPublished
    }
}

/// `method` on `url` with `headers`, following up to `redirects` redirects.
async fn fetch(
    ctx: &Ctx,
    method: Method,
    url: &str,
    headers: &[(header::HeaderName, &str)],
    redirects: usize,
) -> Result<Fetched, UrlError> {
    ctx.http
        .fetch_url(
            &ctx.dns,
            url,
            method,
            headers,
            MAX_BODY,
            redirects,
            &ctx.budget,
        )
        .await
}

/// The client well-known; returns its `base_url` (without trailing slash) when valid.
async fn client_well_known(ctx: &Ctx, host: &str, steps: &mut Vec<Step>) -> Option<String> {
    let c = Section::Client;
    let check = "client_well_known";
    let url = format!("https://{host}{}", myelin_well_known::CLIENT_PATH);
    let origin = [(header::ORIGIN, ORIGIN)];
    let fetched = fetch(ctx, Method::GET, &url, &origin, 10).await;
    let fetched = match fetched {
        Ok(f) if f.response.status.as_u16() == 404 => {
            not_published(ctx, host, &format!("{url} answered 404"), steps).await;
            return None;
        }
        Ok(f) => f,
        Err(UrlError { error, .. }) if error.unreachable() => {
            not_published(ctx, host, &error.describe(), steps).await;
            return None;
        }
        Err(UrlError { error, .. }) => {
            steps.push(
                Step::fail(
                    c,
                    check,
                    format!("clients cannot read {url}: {}", error.describe()),
                )
                .fix(fetch_fix(&error, host))
                .target(url),
            );
            return None;
        }
    };
    let resp = &fetched.response;
    let status = resp.status.as_u16();
    if status != 200 {
        steps.push(
            Step::fail(
                c,
                check,
                format!(
                    "{url} answered HTTP {status}; clients stop there (only 404 means \"not published\")"
                ),
            )
            .fix("answer 200 with {\"m.homeserver\": {\"base_url\": \"https://…\"}}, or 404")
            .target(url),
        );
        return None;
    }
    let base = match parse_client(&resp.body) {
        Ok(base) => base,
        Err(reason) => {
            steps.push(
                Step::fail(c, check, format!("{url}: {reason}; clients stop there"))
                    .fix("serve {\"m.homeserver\": {\"base_url\": \"https://matrix.example.com\"}} (Myelin: client_base_url)")
                    .target(url),
            );
            return None;
        }
    };
    steps
        .push(Step::ok(c, check, format!("{url} names the homeserver {base}")).target(url.clone()));
    steps.push(cors_step(
        &fetched,
        "client_cors",
        &url,
        "the client well-known",
    ));
    preflight(ctx, &url, steps).await;
    if let Some(is) = identity_server(&resp.body) {
        identity(ctx, &is, steps).await;
    }
    Some(base.trim_end_matches('/').to_string())
}

/// No client well-known: clients cannot discover; does the server name serve the client API
/// itself (so a user who types it still gets in)?
async fn not_published(ctx: &Ctx, host: &str, why: &str, steps: &mut Vec<Step>) {
    let direct = format!("https://{host}/_matrix/client/versions");
    let serves_itself = matches!(
        fetch(ctx, Method::GET, &direct, &[], 3)
            .await,
        Ok(f) if f.response.status.as_u16() == 200 && versions_list(&f.response.body).is_some()
    );
    let fix = "publish /.well-known/matrix/client with {\"m.homeserver\": {\"base_url\": \"https://…\"}} \
               (Myelin: client_base_url in [homeserver.well_known])";
    let step = if serves_itself {
        Step::info(
            Section::Client,
            "client_well_known",
            format!(
                "no client well-known: {why}; https://{host} serves the client API itself, so clients that try it directly find the homeserver"
            ),
        )
    } else {
        Step::warn(
            Section::Client,
            "client_well_known",
            format!(
                "no client well-known: {why}; clients cannot find the homeserver from a user ID on {host}, users must type its URL"
            ),
        )
    };
    steps.push(
        step.fix(fix)
            .target(format!("https://{host}{}", myelin_well_known::CLIENT_PATH)),
    );
}

fn parse_client(body: &[u8]) -> Result<String, String> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not JSON ({e}): {}", snippet(body)))?;
    let base = doc
        .pointer("/m.homeserver/base_url")
        .ok_or("it has no m.homeserver.base_url")?
        .as_str()
        .ok_or("m.homeserver.base_url is not a string")?;
    check_base_url(base)?;
    Ok(base.to_string())
}

fn check_base_url(base: &str) -> Result<(), String> {
    let url =
        url::Url::parse(base).map_err(|e| format!("base_url \"{base}\" is not a URL ({e})"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(format!(
            "base_url \"{base}\" is not an http(s) URL with a host"
        ));
    }
    Ok(())
}

/// `m.identity_server.base_url`; an empty string when `m.identity_server` lacks a usable one
/// (which clients treat as an error too).
fn identity_server(body: &[u8]) -> Option<String> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    let is = doc.get("m.identity_server")?;
    Some(
        is.get("base_url")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    )
}

/// `Access-Control-Allow-Origin` on a GET answer.
/// `what` names the document, e.g. "the client well-known".
fn cors_step(fetched: &Fetched, check: &'static str, url: &str, what: &str) -> Step {
    let c = Section::Client;
    match fetched.response.header(&header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        Some("*") => {
            Step::ok(c, check, format!("CORS on {what}: Access-Control-Allow-Origin: *")).target(url)
        }
        Some(o) if o == ORIGIN => {
            Step::ok(c, check, format!("CORS on {what}: Access-Control-Allow-Origin: {o}")).target(url)
        }
        Some(o) => Step::fail(
            c,
            check,
            format!("CORS on {what}: Access-Control-Allow-Origin is \"{o}\", so web clients on other sites cannot read it"),
        )
        .fix(CORS_FIX)
        .target(url),
        None => Step::fail(
            c,
            check,
            format!("CORS on {what}: no Access-Control-Allow-Origin header, so web clients (Element Web) cannot read it and report the homeserver as invalid"),
        )
        .fix(CORS_FIX)
        .target(url),
    }
}

/// The CORS preflight a browser sends before a request with custom headers.
async fn preflight(ctx: &Ctx, url: &str, steps: &mut Vec<Step>) {
    let c = Section::Client;
    let headers = [
        (header::ORIGIN, ORIGIN),
        (header::ACCESS_CONTROL_REQUEST_METHOD, "GET"),
        (header::ACCESS_CONTROL_REQUEST_HEADERS, "x-requested-with"),
    ];
    let step = match fetch(ctx, Method::OPTIONS, url, &headers, 0).await {
        Ok(f) => {
            let status = f.response.status.as_u16();
            let allow_origin = f.response.header(&header::ACCESS_CONTROL_ALLOW_ORIGIN);
            let allow_methods = f
                .response
                .header(&header::ACCESS_CONTROL_ALLOW_METHODS)
                .unwrap_or("");
            if !(200..300).contains(&status) {
                Step::warn(
                    c,
                    "client_options",
                    format!("the CORS preflight (OPTIONS) answered HTTP {status}; browsers then refuse requests that need one"),
                )
                .fix(CORS_FIX)
            } else if allow_origin.is_none() {
                Step::warn(
                    c,
                    "client_options",
                    "the CORS preflight (OPTIONS) answers without Access-Control-Allow-Origin",
                )
                .fix(CORS_FIX)
            } else if !allow_methods.to_ascii_uppercase().contains("GET") && allow_methods != "*" {
                Step::warn(
                    c,
                    "client_options",
                    format!(
                        "the CORS preflight (OPTIONS) allows methods \"{allow_methods}\", not GET"
                    ),
                )
                .fix(CORS_FIX)
            } else {
                Step::ok(
                    c,
                    "client_options",
                    format!(
                        "the CORS preflight (OPTIONS) is answered ({status}, methods: {allow_methods})"
                    ),
                )
            }
        }
        Err(e) => Step::warn(
            c,
            "client_options",
            format!(
                "the CORS preflight (OPTIONS) failed: {}",
                e.error.describe()
            ),
        )
        .fix(CORS_FIX),
    };
    steps.push(step.target(url));
}

/// `GET {base_url}/_matrix/client/versions`, with CORS.
async fn versions(ctx: &Ctx, base: &str, steps: &mut Vec<Step>) {
    let c = Section::Client;
    let url = format!("{base}/_matrix/client/versions");
    let origin = [(header::ORIGIN, ORIGIN)];
    match fetch(ctx, Method::GET, &url, &origin, 5).await {
        Ok(f) if f.response.status.as_u16() == 200 => match versions_list(&f.response.body) {
            Some(v) => {
                let newest = v.last().cloned().unwrap_or_default();
                steps.push(
                    Step::ok(
                        c,
                        "client_versions",
                        format!("base_url answers: the homeserver speaks {} Matrix versions, up to {newest}", v.len()),
                    )
                    .target(url.clone()),
                );
                steps.push(cors_step(&f, "client_versions_cors", &url, "base_url"));
            }
            None => steps.push(
                Step::fail(
                    c,
                    "client_versions",
                    format!(
                        "{url} answered 200 but not a list of versions: {}",
                        snippet(&f.response.body)
                    ),
                )
                .fix("make base_url point at the homeserver (the proxy must forward /_matrix/)")
                .target(url),
            ),
        },
        Ok(f) => steps.push(
            Step::fail(
                c,
                "client_versions",
                format!(
                    "{url} answered HTTP {}: clients refuse this base_url",
                    f.response.status.as_u16()
                ),
            )
            .fix("make base_url point at the homeserver (the proxy must forward /_matrix/)")
            .target(url),
        ),
        Err(e) => {
            let host = url::Url::parse(base)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_default();
            steps.push(
                Step::fail(
                    c,
                    "client_versions",
                    format!("clients cannot reach base_url: {}", e.error.describe()),
                )
                .fix(fetch_fix(&e.error, &host))
                .target(url),
            );
        }
    }
}

fn versions_list(body: &[u8]) -> Option<Vec<String>> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    let list: Vec<String> = doc
        .get("versions")?
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    (!list.is_empty()).then_some(list)
}

/// `m.identity_server`: clients fail discovery when it is named but broken.
async fn identity(ctx: &Ctx, base: &str, steps: &mut Vec<Step>) {
    let c = Section::Client;
    if let Err(reason) = check_base_url(base) {
        steps.push(
            Step::fail(
                c,
                "identity_server",
                format!("m.identity_server: {reason}; clients stop discovery"),
            )
            .fix("correct m.identity_server.base_url or remove m.identity_server"),
        );
        return;
    }
    let url = format!("{}/_matrix/identity/v2", base.trim_end_matches('/'));
    let step = match fetch(ctx, Method::GET, &url, &[], 5).await {
        Ok(f) if f.response.status.is_success() => Step::ok(
            c,
            "identity_server",
            format!("the identity server {base} answers"),
        ),
        Ok(f) => Step::fail(
            c,
            "identity_server",
            format!(
                "the identity server answered HTTP {}; clients stop discovery",
                f.response.status.as_u16()
            ),
        )
        .fix("correct m.identity_server.base_url or remove m.identity_server"),
        Err(e) => Step::fail(
            c,
            "identity_server",
            format!(
                "the identity server cannot be reached: {}; clients stop discovery",
                e.error.describe()
            ),
        )
        .fix("correct m.identity_server.base_url or remove m.identity_server"),
    };
    steps.push(step.target(url));
}

/// `/.well-known/matrix/support` (optional since Matrix 1.10).
async fn support(ctx: &Ctx, host: &str, steps: &mut Vec<Step>) {
    let c = Section::Client;
    let url = format!("https://{host}{}", myelin_well_known::SUPPORT_PATH);
    let step = match fetch(ctx, Method::GET, &url, &[(header::ORIGIN, ORIGIN)], 10)
        .await
    {
        Ok(f) if f.response.status.as_u16() == 404 => Step::info(
            c,
            "support_well_known",
            "no /.well-known/matrix/support (optional: it tells users whom to contact)",
        ),
        Ok(f) if f.response.status.as_u16() == 200 => match check_support(&f.response.body) {
            Ok(summary) => Step::ok(c, "support_well_known", format!("support information: {summary}")),
            Err(reason) => Step::warn(c, "support_well_known", format!("{url}: {reason}"))
                .fix("serve {\"contacts\": [{\"role\": \"m.role.admin\", \"matrix_id\": \"@admin:…\"}]} and/or {\"support_page\": \"https://…\"} (Myelin: [homeserver.well_known.support])"),
        },
        Ok(f) => Step::warn(
            c,
            "support_well_known",
            format!("{url} answered HTTP {}", f.response.status.as_u16()),
        )
        .fix("answer 200 with the support document, or 404"),
        Err(e) if e.error.unreachable() => Step::info(
            c,
            "support_well_known",
            format!("no /.well-known/matrix/support: {}", e.error.describe()),
        ),
        Err(e) => Step::warn(c, "support_well_known", format!("{url}: {}", e.error.describe())),
    };
    steps.push(step.target(url));
}

fn check_support(body: &[u8]) -> Result<String, String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON ({e})"))?;
    let contacts = doc.get("contacts").and_then(Value::as_array);
    let page = doc.get("support_page").and_then(Value::as_str);
    if contacts.is_none() && page.is_none() {
        return Err("it has neither contacts nor support_page".into());
    }
    let mut n = 0;
    for (i, contact) in contacts.into_iter().flatten().enumerate() {
        if contact.get("role").and_then(Value::as_str).is_none() {
            return Err(format!("contact {i} has no role"));
        }
        if contact.get("matrix_id").is_none() && contact.get("email_address").is_none() {
            return Err(format!(
                "contact {i} has neither matrix_id nor email_address"
            ));
        }
        n += 1;
    }
    let mut parts = Vec::new();
    if n > 0 {
        parts.push(format!("{n} contact{}", if n == 1 { "" } else { "s" }));
    }
    if let Some(p) = page {
        parts.push(format!("support page {p}"));
    }
    Ok(parts.join(", "))
}

fn fetch_fix(e: &FetchError, host: &str) -> String {
    match e {
        FetchError::Certificate { .. } => {
            format!("serve {host} with a valid certificate for {host} from a CA browsers trust")
        }
        FetchError::Tls { .. } => format!("serve HTTPS (TLS) on {host}:443"),
        _ => format!("make https://{host} reachable"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_documents() {
        assert_eq!(
            parse_client(br#"{"m.homeserver":{"base_url":"https://matrix.example.test/"}}"#)
                .unwrap(),
            "https://matrix.example.test/"
        );
        for (body, reason) in [
            (&b"<html>"[..], "not JSON"),
            (b"{}", "no m.homeserver.base_url"),
            (br#"{"m.homeserver":{"base_url":7}}"#, "not a string"),
            (
                br#"{"m.homeserver":{"base_url":"matrix.example.test"}}"#,
                "not a URL",
            ),
            (
                br#"{"m.homeserver":{"base_url":"ftp://matrix.example.test"}}"#,
                "not an http(s) URL",
            ),
        ] {
            let e = parse_client(body).unwrap_err();
            assert!(e.contains(reason), "{e}");
        }
        assert_eq!(
            identity_server(br#"{"m.identity_server":{"base_url":"https://id.example"}}"#),
            Some("https://id.example".into())
        );
        assert_eq!(
            identity_server(br#"{"m.identity_server":{}}"#),
            Some(String::new())
        );
        assert_eq!(identity_server(b"{}"), None);
    }

    #[test]
    fn support_documents() {
        assert_eq!(
            check_support(br#"{"contacts":[{"role":"m.role.admin","matrix_id":"@a:b.c"}],"support_page":"https://b.c/help"}"#).unwrap(),
            "1 contact, support page https://b.c/help"
        );
        assert!(
            check_support(b"{}")
                .unwrap_err()
                .contains("neither contacts nor support_page")
        );
        assert!(
            check_support(br#"{"contacts":[{"matrix_id":"@a:b.c"}]}"#)
                .unwrap_err()
                .contains("no role")
        );
        assert!(
            check_support(br#"{"contacts":[{"role":"m.role.admin"}]}"#)
                .unwrap_err()
                .contains("neither matrix_id")
        );
    }

    #[test]
    fn versions() {
        assert_eq!(
            versions_list(br#"{"versions":["r0.6.1","v1.1"]}"#).unwrap(),
            ["r0.6.1", "v1.1"]
        );
        assert!(versions_list(br#"{"versions":[]}"#).is_none());
        assert!(versions_list(b"nope").is_none());
    }
}
