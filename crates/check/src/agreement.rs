//! Whether client and server discovery lead to the same homeserver: `base_url` names itself on
//! `/_matrix/key/v2/server`; failing that, the hosts are compared.

use http::Method;
use serde_json::Value;

use crate::Ctx;
use crate::keys::KEYS_PATH;
use crate::report::{Section, Step};
use crate::resolve::Route;

/// Client and server discovery must lead to the same homeserver.
pub(crate) async fn check(
    ctx: &Ctx,
    base: &str,
    server_name: &str,
    route: &Route,
    steps: &mut Vec<Step>,
) {
    let url = format!("{base}{KEYS_PATH}");
    let keys = ctx
        .http
        .fetch_url(&ctx.dns, &url, Method::GET, &[], 1 << 20, 5, &ctx.budget)
        .await
        .ok()
        .filter(|f| f.response.status.as_u16() == 200)
        .map(|f| f.response.body);
    let mut fed_hosts: Vec<String> = vec![route.tls_name.to_string()];
    for t in &route.targets {
        if !fed_hosts.contains(&t.host) {
            fed_hosts.push(t.host.clone());
        }
    }
    steps.push(agreement_step(
        base,
        server_name,
        keys.as_deref(),
        &fed_hosts,
    ));
}

/// Judges agreement from what `base_url` answered on the key endpoint (the homeserver names
/// itself there) or, failing that, from the hosts: `fed_hosts[0]` is the certificate name.
fn agreement_step(
    base: &str,
    server_name: &str,
    keys_answer: Option<&[u8]>,
    fed_hosts: &[String],
) -> Step {
    let a = Section::Agreement;
    let check = "well_known_agreement";
    let named = keys_answer
        .and_then(|body| serde_json::from_slice::<Value>(body).ok())
        .and_then(|v| {
            v.get("server_name")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    match named {
        Some(n) if n == server_name => {
            return Step::ok(
                a,
                check,
                format!(
                    "the client base_url {base} is the homeserver of {server_name}, as federation is"
                ),
            );
        }
        Some(n) => {
            return Step::warn(
                a,
                check,
                format!(
                    "the client and server well-known disagree: base_url {base} is the homeserver of \"{n}\", not of {server_name}"
                ),
            )
            .fix(format!(
                "set m.homeserver.base_url to the URL of the homeserver of {server_name}"
            ));
        }
        None => {}
    }
    let base_host = url::Url::parse(base)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .unwrap_or_default();
    let base_host = base_host.trim_start_matches('[').trim_end_matches(']');
    let fed_host = fed_hosts.first().map_or("", String::as_str);
    if fed_hosts.iter().any(|h| h.eq_ignore_ascii_case(base_host)) {
        Step::ok(
            a,
            check,
            format!(
                "clients ({base_host}) and other servers ({fed_host}) are sent to the same host"
            ),
        )
    } else {
        Step::warn(
            a,
            check,
            format!(
                "the client and server well-known disagree: clients go to {base_host}, other servers to {}; \
                 {base_host} does not serve {KEYS_PATH}, so the check cannot tell whether it is the same homeserver",
                fed_hosts.join(", ")
            ),
        )
        .fix("if both reach the same homeserver this is fine; otherwise make base_url and m.server name the same host")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Status;

    #[test]
    fn agreement_of_client_and_server_discovery() {
        let hosts = vec![
            "hs.example.test".to_string(),
            "fed.example.test".to_string(),
        ];
        let same = agreement_step(
            "https://x.example.test",
            "example.test",
            Some(br#"{"server_name":"example.test"}"#),
            &hosts,
        );
        assert_eq!(same.status, Status::Ok);
        let other = agreement_step(
            "https://x.example.test",
            "example.test",
            Some(br#"{"server_name":"other.test"}"#),
            &hosts,
        );
        assert_eq!(other.status, Status::Warn);
        assert!(
            other
                .message
                .contains("homeserver of \"other.test\", not of example.test"),
            "{}",
            other.message
        );
        // without an answer from base_url: by host
        let by_host = agreement_step("https://HS.example.test:443", "example.test", None, &hosts);
        assert_eq!(by_host.status, Status::Ok, "{}", by_host.message);
        let apart = agreement_step(
            "https://chat.example.test",
            "example.test",
            Some(b"<html>"),
            &hosts,
        );
        assert_eq!(apart.status, Status::Warn);
        assert!(apart.message.contains("clients go to chat.example.test, other servers to hs.example.test, fed.example.test"), "{}", apart.message);
    }
}
