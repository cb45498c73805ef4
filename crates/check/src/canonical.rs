//! Canonical JSON and signature checks (spec appendices "Canonical JSON", "Signing JSON" and
//! "Checking for a Signature").
//!
//! Written here rather than relying on `serde_json::to_string`: its key order depends on whether
//! some crate in the build enabled `serde_json/preserve_order`, and it prints floats. Canonical
//! JSON sorts keys by code point explicitly and only has integers.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::{Map, Value};

/// The largest integer canonical JSON allows (2^53 - 1); the smallest is its negation.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Why a value has no canonical form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("the number {0} is not an integer; canonical JSON has integers only")]
    NotInteger(String),
    #[error("the number {0} is outside the range canonical JSON allows (±(2^53 - 1))")]
    OutOfRange(String),
}

/// The canonical encoding of `value`.
pub fn canonical_json(value: &Value) -> Result<String, CanonicalError> {
    let mut out = String::new();
    write_value(&mut out, value)?;
    Ok(out)
}

/// The bytes a signature covers: the object without `signatures` and `unsigned`, canonical.
pub fn signed_bytes(object: &Map<String, Value>) -> Result<Vec<u8>, CanonicalError> {
    let mut copy = object.clone();
    copy.remove("signatures");
    copy.remove("unsigned");
    canonical_json(&Value::Object(copy)).map(String::into_bytes)
}

/// Unpadded base64 as Matrix uses it; padding and non-zero trailing bits are tolerated (the
/// spec's own test seed has them), and the URL-safe alphabet is accepted as Synapse does.
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let config = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    GeneralPurpose::new(&alphabet::STANDARD, config)
        .decode(s)
        .or_else(|_| GeneralPurpose::new(&alphabet::URL_SAFE, config).decode(s))
        .ok()
}

/// Unpadded standard base64.
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

/// Why a signature did not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureProblem {
    #[error("the public key is not valid unpadded base64 of 32 bytes")]
    BadKey,
    #[error("the signature is not valid unpadded base64 of 64 bytes")]
    BadEncoding,
    #[error("the object cannot be encoded as canonical JSON: {0}")]
    NotCanonical(CanonicalError),
    #[error("the signature does not match the object and key")]
    Mismatch,
}

/// Checks one ed25519 signature (base64) by `public_key` (base64) over `object`.
pub fn verify_ed25519(
    object: &Map<String, Value>,
    public_key: &str,
    signature: &str,
) -> Result<(), SignatureProblem> {
    let key: [u8; 32] = decode_base64(public_key)
        .and_then(|k| k.try_into().ok())
        .ok_or(SignatureProblem::BadKey)?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| SignatureProblem::BadKey)?;
    let sig: [u8; 64] = decode_base64(signature)
        .and_then(|s| s.try_into().ok())
        .ok_or(SignatureProblem::BadEncoding)?;
    let sig = Signature::from_bytes(&sig);
    let message = signed_bytes(object).map_err(SignatureProblem::NotCanonical)?;
    key.verify_strict(&message, &sig)
        .map_err(|_| SignatureProblem::Mismatch)
}

fn write_value(out: &mut String, value: &Value) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n)?,
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Rust strings compare byte-wise; for UTF-8 that is code-point order.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_value(out, v)?;
                }
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_number(out: &mut String, n: &serde_json::Number) -> Result<(), CanonicalError> {
    let in_range = |i: i128| i.abs() <= i128::from(MAX_SAFE_INTEGER);
    if let Some(i) = n.as_i64() {
        if !in_range(i128::from(i)) {
            return Err(CanonicalError::OutOfRange(n.to_string()));
        }
        out.push_str(&i.to_string());
    } else if let Some(u) = n.as_u64() {
        if !in_range(i128::from(u)) {
            return Err(CanonicalError::OutOfRange(n.to_string()));
        }
        out.push_str(&u.to_string());
    } else {
        // A float: allowed only when it is an integer in range (e.g. `1e10`, `-0.0`).
        let f = n.as_f64().unwrap_or(f64::NAN);
        if !f.is_finite() || f.fract() != 0.0 {
            return Err(CanonicalError::NotInteger(n.to_string()));
        }
        if f.abs() > MAX_SAFE_INTEGER as f64 {
            return Err(CanonicalError::OutOfRange(n.to_string()));
        }
        // In range, so the cast is exact; `-0.0 as i64` is 0, and -0 must not appear.
        out.push_str(&(f as i64).to_string());
    }
    Ok(())
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{09}' => out.push_str("\\t"),
            '\u{0a}' => out.push_str("\\n"),
            '\u{0c}' => out.push_str("\\f"),
            '\u{0d}' => out.push_str("\\r"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};
    use serde_json::json;

    use super::*;

    fn canon(input: &str) -> String {
        canonical_json(&serde_json::from_str(input).unwrap()).unwrap()
    }

    /// Every example of the spec's "Canonical JSON" appendix.
    #[test]
    fn spec_examples() {
        assert_eq!(canon("{}"), "{}");
        assert_eq!(
            canon("{\n  \"one\": 1,\n  \"two\": \"Two\"\n}"),
            r#"{"one":1,"two":"Two"}"#
        );
        assert_eq!(canon(r#"{"b": "2", "a": "1"}"#), r#"{"a":"1","b":"2"}"#);
        assert_eq!(canon(r#"{"b":"2","a":"1"}"#), r#"{"a":"1","b":"2"}"#);
        assert_eq!(
            canon(
                r#"{"auth": {"success": true, "mxid": "@john.doe:example.com",
                   "profile": {"display_name": "John Doe", "three_pids": [
                     {"medium": "email", "address": "john.doe@example.org"},
                     {"medium": "msisdn", "address": "123456789"}]}}}"#
            ),
            r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#
        );
        assert_eq!(canon(r#"{"a": "日本語"}"#), r#"{"a":"日本語"}"#);
        assert_eq!(canon(r#"{"本": 2, "日": 1}"#), r#"{"日":1,"本":2}"#);
        assert_eq!(canon(r#"{"a": "\u65E5"}"#), r#"{"a":"日"}"#);
        assert_eq!(canon(r#"{"a": null}"#), r#"{"a":null}"#);
        assert_eq!(
            canon(r#"{"a": -0, "b": 1e10}"#),
            r#"{"a":0,"b":10000000000}"#
        );
    }

    #[test]
    fn escapes_follow_the_grammar() {
        let v = json!({"s": "q\"b\\\u{8}\u{9}\n\u{c}\r\u{1}\u{1f}\u{7f}/é😀"});
        assert_eq!(
            canonical_json(&v).unwrap(),
            "{\"s\":\"q\\\"b\\\\\\b\\t\\n\\f\\r\\u0001\\u001f\u{7f}/é😀\"}"
        );
        // keys sort by code point, not by UTF-16 unit: U+FF61 before U+1F600
        let v = json!({"😀": 1, "｡": 2, "Z": 3, "a": 4});
        assert_eq!(canonical_json(&v).unwrap(), r#"{"Z":3,"a":4,"｡":2,"😀":1}"#);
    }

    #[test]
    fn numbers_outside_the_canonical_range_are_refused() {
        assert_eq!(
            canonical_json(&json!([9007199254740991_i64, -9007199254740991_i64])).unwrap(),
            "[9007199254740991,-9007199254740991]"
        );
        assert!(matches!(
            canonical_json(&json!(9007199254740992_i64)),
            Err(CanonicalError::OutOfRange(_))
        ));
        assert!(matches!(
            canonical_json(&json!(u64::MAX)),
            Err(CanonicalError::OutOfRange(_))
        ));
        assert!(matches!(
            canonical_json(&json!(1.5)),
            Err(CanonicalError::NotInteger(_))
        ));
        assert_eq!(canonical_json(&json!(-0.0)).unwrap(), "0");
    }

    /// The spec's "Cryptographic Test Vectors": seed, server "domain", key "ed25519:1".
    #[test]
    fn spec_signing_vectors() {
        let seed: [u8; 32] = decode_base64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
            .unwrap()
            .try_into()
            .unwrap();
        let key = SigningKey::from_bytes(&seed);
        let public = encode_base64(key.verifying_key().as_bytes());
        for (doc, expected) in [
            (
                json!({}),
                "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ",
            ),
            (
                json!({"one": 1, "two": "Two"}),
                "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw",
            ),
        ] {
            let object = doc.as_object().unwrap();
            let sig = key.sign(&signed_bytes(object).unwrap());
            assert_eq!(encode_base64(&sig.to_bytes()), expected);
            assert_eq!(verify_ed25519(object, &public, expected), Ok(()));

            // `signatures` and `unsigned` are not covered; anything else is
            let mut with_extras = object.clone();
            with_extras.insert(
                "signatures".into(),
                json!({"domain": {"ed25519:1": expected}}),
            );
            with_extras.insert("unsigned".into(), json!({"age_ts": 1}));
            assert_eq!(verify_ed25519(&with_extras, &public, expected), Ok(()));
            let mut changed = object.clone();
            changed.insert("three".into(), json!(3));
            assert_eq!(
                verify_ed25519(&changed, &public, expected),
                Err(SignatureProblem::Mismatch)
            );
        }
        assert_eq!(
            verify_ed25519(&Map::new(), "not base64!", "AAAA"),
            Err(SignatureProblem::BadKey)
        );
        assert_eq!(
            verify_ed25519(&Map::new(), &public, "AAAA"),
            Err(SignatureProblem::BadEncoding)
        );
    }
}
