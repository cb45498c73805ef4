//! `GET /_matrix/key/v2/server` and `/_matrix/federation/v1/version`: what their answers must
//! hold for other servers to accept them (spec "Retrieving server keys"; Synapse's key fetcher
//! for what is refused in practice).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::canonical::{decode_base64, verify_ed25519};
use crate::report::{Section, Step};
use crate::tls::human_duration;

pub const KEYS_PATH: &str = "/_matrix/key/v2/server";
pub const VERSION_PATH: &str = "/_matrix/federation/v1/version";

/// Keys valid for less than this draw a warning (the spec asks servers not to publish shorter).
const SHORT_VALIDITY: Duration = Duration::from_secs(3600);

const FORWARD_FIX: &str = "make sure requests to /_matrix/ on this host reach the homeserver \
    (Myelin forwards /_matrix/ of every configured host to its upstream)";

/// Checks a key response for `server_name` at `now`; steps `server_keys`, `key_validity` and
/// `key_signatures`. Federation works only if none of them fails.
pub fn check_server_keys(body: &[u8], server_name: &str, now: SystemTime) -> Vec<Step> {
    let s = Section::Federation;
    let doc: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return vec![
                Step::fail(s, "server_keys", "the key answer is JSON but not an object")
                    .fix(FORWARD_FIX),
            ];
        }
        Err(e) => {
            return vec![
                Step::fail(
                    s,
                    "server_keys",
                    format!("the key answer is not JSON ({e}): {}", snippet(body)),
                )
                .fix(FORWARD_FIX),
            ];
        }
    };
    let mut steps = Vec::new();

    let named = doc.get("server_name").and_then(Value::as_str);
    let verify_keys = doc.get("verify_keys").and_then(Value::as_object);
    match named {
        None => steps.push(
            Step::fail(s, "server_keys", "the key answer has no server_name").fix(FORWARD_FIX),
        ),
        Some(n) if n != server_name => {
            let case = if n.eq_ignore_ascii_case(server_name) {
                " (they differ only in letter case, which other servers do not forgive)"
            } else {
                ""
            };
            steps.push(
                Step::fail(
                    s,
                    "server_keys",
                    format!(
                        "the keys are for \"{n}\", not \"{server_name}\"{case}: this address serves another homeserver"
                    ),
                )
                .fix(format!(
                    "point the delegation of {server_name} at the homeserver whose server_name is \"{server_name}\", \
                     or correct server_name in the homeserver's configuration"
                )),
            );
        }
        Some(_) => {}
    }
    let ed_keys: Vec<(&String, &str)> = verify_keys
        .map(|m| {
            m.iter()
                .filter(|(id, _)| id.starts_with("ed25519:"))
                .filter_map(|(id, v)| Some((id, v.get("key")?.as_str()?)))
                .collect()
        })
        .unwrap_or_default();
    if ed_keys.is_empty() {
        steps.push(
            Step::fail(
                s,
                "server_keys",
                "the key answer lists no ed25519 key in verify_keys",
            )
            .fix("check the homeserver's signing key configuration"),
        );
    } else if let Some((id, _)) = ed_keys
        .iter()
        .find(|(_, k)| decode_base64(k).is_none_or(|b| b.len() != 32))
    {
        steps.push(Step::fail(
            s,
            "server_keys",
            format!("the key {id} is not unpadded base64 of 32 bytes"),
        ));
    } else if let Some((id, _)) = ed_keys
        .iter()
        .find(|(id, _)| !valid_key_version(&id["ed25519:".len()..]))
    {
        steps.push(Step::warn(
            s,
            "server_keys",
            format!(
                "the key ID {id} has characters other than [a-zA-Z0-9_]; some servers refuse it"
            ),
        ));
    }
    if steps.is_empty() {
        let ids: Vec<&str> = ed_keys.iter().map(|(id, _)| id.as_str()).collect();
        steps.push(Step::ok(
            s,
            "server_keys",
            format!(
                "the keys are for {server_name}: {} ({})",
                plural(ids.len(), "signing key"),
                ids.join(", ")
            ),
        ));
    }

    steps.push(validity(&doc, now));
    steps.push(signatures(&doc, server_name, &ed_keys));
    steps
}

/// Checks a `/_matrix/federation/v1/version` answer; step `federation_version`.
pub fn check_version(status: u16, body: &[u8]) -> Step {
    let s = Section::Federation;
    if status != 200 {
        return Step::fail(
            s,
            "federation_version",
            format!(
                "{VERSION_PATH} answered HTTP {status}: the federation API is not reachable here ({})",
                snippet(body)
            ),
        )
        .fix(FORWARD_FIX);
    }
    let doc: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Step::fail(
                s,
                "federation_version",
                format!(
                    "{VERSION_PATH} did not answer JSON ({e}): {}",
                    snippet(body)
                ),
            )
            .fix(FORWARD_FIX);
        }
    };
    let name = doc.pointer("/server/name").and_then(Value::as_str);
    let version = doc.pointer("/server/version").and_then(Value::as_str);
    match (name, version) {
        (Some(n), Some(v)) => Step::ok(
            s,
            "federation_version",
            format!("the federation API answers: {n} {v}"),
        ),
        (Some(n), None) => Step::ok(
            s,
            "federation_version",
            format!("the federation API answers: {n}"),
        ),
        _ => Step::ok(
            s,
            "federation_version",
            "the federation API answers (the server does not say what it is)",
        ),
    }
}

fn validity(doc: &Map<String, Value>, now: SystemTime) -> Step {
    let s = Section::Federation;
    let Some(ts) = doc.get("valid_until_ts").and_then(Value::as_u64) else {
        return Step::fail(
            s,
            "key_validity",
            "the key answer has no valid_until_ts (an integer of milliseconds): other servers refuse keys without it",
        )
        .fix("upgrade the homeserver; every current homeserver sets it");
    };
    let until = UNIX_EPOCH + Duration::from_millis(ts);
    let when = humantime::format_rfc3339_seconds(until);
    match until.duration_since(now) {
        Err(past) => Step::fail(
            s,
            "key_validity",
            format!(
                "the keys expired {} ago (valid_until_ts {when}): other servers refuse them",
                human_duration(past.duration())
            ),
        )
        .fix("the homeserver renews this by itself: check its clock, then restart it"),
        Ok(left) if left < SHORT_VALIDITY => Step::warn(
            s,
            "key_validity",
            format!(
                "the keys are valid for only {} more (until {when}); other servers will ask again very soon",
                human_duration(left)
            ),
        ),
        Ok(left) => Step::ok(
            s,
            "key_validity",
            format!("valid until {when} (in {})", human_duration(left)),
        ),
    }
}

fn signatures(doc: &Map<String, Value>, server_name: &str, keys: &[(&String, &str)]) -> Step {
    let s = Section::Federation;
    let Some(sigs) = doc
        .get("signatures")
        .and_then(|v| v.get(server_name))
        .and_then(Value::as_object)
    else {
        return Step::fail(
            s,
            "key_signatures",
            format!("the keys are not signed by {server_name} (no signatures.\"{server_name}\")"),
        )
        .fix(FORWARD_FIX);
    };
    let mut verified = Vec::new();
    let mut unknown = Vec::new();
    for (id, sig) in sigs {
        if !id.starts_with("ed25519:") {
            continue; // algorithms other servers do not understand are skipped, as the spec says
        }
        let Some((_, key)) = keys.iter().find(|(k, _)| *k == id) else {
            unknown.push(id.as_str());
            continue;
        };
        let Some(sig) = sig.as_str() else {
            return Step::fail(
                s,
                "key_signatures",
                format!("the signature {id} is not a string"),
            );
        };
        match verify_ed25519(doc, key, sig) {
            Ok(()) => verified.push(id.as_str()),
            Err(problem) => {
                return Step::fail(
                    s,
                    "key_signatures",
                    format!("the self-signature {id} does not verify: {problem}; other servers refuse these keys"),
                )
                .fix("something between the homeserver and the network changes the key answer, or the signing key was replaced without restarting the homeserver");
            }
        }
    }
    if verified.is_empty() {
        return Step::fail(
            s,
            "key_signatures",
            format!(
                "no signature of {server_name} is made by a key in verify_keys{}",
                if unknown.is_empty() {
                    String::new()
                } else {
                    format!(" (signed by {} only)", unknown.join(", "))
                }
            ),
        );
    }
    Step::ok(
        s,
        "key_signatures",
        format!(
            "every ed25519 self-signature verifies over canonical JSON ({})",
            verified.join(", ")
        ),
    )
}

/// Key versions are `[a-zA-Z0-9_]+` (spec, Server Keys).
fn valid_key_version(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The start of a body, for messages.
pub fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "empty body".into();
    }
    let cut: String = text.chars().take(120).collect();
    let cut = cut.replace(['\n', '\r'], " ");
    if cut.len() < text.len() {
        format!("\"{cut}…\"")
    } else {
        format!("\"{cut}\"")
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};
    use serde_json::json;

    use super::*;
    use crate::canonical::{encode_base64, signed_bytes};
    use crate::report::Status;

    const NOW_MS: u64 = 1_800_000_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(NOW_MS)
    }

    fn signed(server: &str, valid_until: u64, key: &SigningKey, id: &str) -> Value {
        let mut doc = json!({
            "server_name": server,
            "verify_keys": {id: {"key": encode_base64(key.verifying_key().as_bytes())}},
            "old_verify_keys": {},
            "valid_until_ts": valid_until,
        });
        let sig = key.sign(&signed_bytes(doc.as_object().unwrap()).unwrap());
        doc["signatures"] = json!({server: {id: encode_base64(&sig.to_bytes())}});
        doc
    }

    fn statuses(steps: &[Step]) -> Vec<(&'static str, Status)> {
        steps.iter().map(|s| (s.check, s.status)).collect()
    }

    #[test]
    fn a_good_answer_passes_every_check() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let doc = signed("example.test", NOW_MS + 86_400_000, &key, "ed25519:a_1");
        let steps = check_server_keys(doc.to_string().as_bytes(), "example.test", now());
        assert_eq!(
            statuses(&steps),
            [
                ("server_keys", Status::Ok),
                ("key_validity", Status::Ok),
                ("key_signatures", Status::Ok)
            ],
            "{steps:?}"
        );
        assert!(steps[2].message.contains("ed25519:a_1"));
    }

    #[test]
    fn another_server_name_fails() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let doc = signed("other.test", NOW_MS + 86_400_000, &key, "ed25519:a");
        let steps = check_server_keys(doc.to_string().as_bytes(), "example.test", now());
        assert_eq!(steps[0].status, Status::Fail);
        assert!(
            steps[0]
                .message
                .contains("\"other.test\", not \"example.test\"")
        );
        // signatures.example.test is absent too
        assert_eq!(steps[2].status, Status::Fail);
    }

    #[test]
    fn expired_and_short_lived_keys() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let doc = signed("example.test", NOW_MS - 1000, &key, "ed25519:a");
        let steps = check_server_keys(doc.to_string().as_bytes(), "example.test", now());
        assert_eq!(steps[1].status, Status::Fail);
        assert!(steps[1].message.contains("expired"), "{}", steps[1].message);
        let doc = signed("example.test", NOW_MS + 60_000, &key, "ed25519:a");
        let steps = check_server_keys(doc.to_string().as_bytes(), "example.test", now());
        assert_eq!(steps[1].status, Status::Warn);
    }

    #[test]
    fn a_changed_answer_or_foreign_signature_fails() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut doc = signed("example.test", NOW_MS + 86_400_000, &key, "ed25519:a");
        doc["valid_until_ts"] = json!(NOW_MS + 2 * 86_400_000);
        let steps = check_server_keys(doc.to_string().as_bytes(), "example.test", now());
        assert_eq!(steps[2].status, Status::Fail);
        assert!(
            steps[2].message.contains("does not verify"),
            "{}",
            steps[2].message
        );

        // signed with a different key than the one published
        let other = SigningKey::from_bytes(&[9; 32]);
        let mut doc = signed("example.test", NOW_MS + 86_400_000, &key, "ed25519:a");
        let forged = signed("example.test", NOW_MS + 86_400_000, &other, "ed25519:a");
        doc["signatures"] = forged["signatures"].clone();
        let steps = check_server_keys(doc.to_string().as_bytes(), "example.test", now());
        assert_eq!(steps[2].status, Status::Fail);

        // a signature by a key not in verify_keys alone is not enough
        let mut doc = signed("example.test", NOW_MS + 86_400_000, &key, "ed25519:a");
        doc["signatures"] = json!({"example.test": {"ed25519:old": "AAAA"}});
        let steps = check_server_keys(doc.to_string().as_bytes(), "example.test", now());
        assert_eq!(steps[2].status, Status::Fail);
        assert!(steps[2].message.contains("ed25519:old"));
    }

    #[test]
    fn html_instead_of_keys_is_named() {
        let steps = check_server_keys(b"<html>502 Bad Gateway</html>", "example.test", now());
        assert_eq!(statuses(&steps), [("server_keys", Status::Fail)]);
        assert!(steps[0].message.contains("502 Bad Gateway"));
    }

    #[test]
    fn version_answers() {
        let ok = check_version(200, br#"{"server":{"name":"Synapse","version":"1.163.2"}}"#);
        assert_eq!(ok.status, Status::Ok);
        assert!(ok.message.contains("Synapse 1.163.2"));
        let missing = check_version(404, br#"{"errcode":"M_UNRECOGNIZED"}"#);
        assert_eq!(missing.status, Status::Fail);
        assert!(missing.message.contains("HTTP 404"));
    }
}
