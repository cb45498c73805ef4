//! HTTP-01: the tokens the CA will fetch from `http://NAME/.well-known/acme-challenge/TOKEN`.
//! The binary answers them on every listener (before redirecting plain HTTP); the order code
//! publishes and withdraws them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The path prefix the CA fetches tokens under.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Token → key authorization, shared between the ACME manager and the request handler.
#[derive(Clone, Debug, Default)]
pub struct Http01Tokens(Arc<RwLock<HashMap<String, String>>>);

impl Http01Tokens {
    pub fn new() -> Self {
        Self::default()
    }

    /// The key authorization to answer for a request path, when the path is a challenge path.
    /// `Some(None)`: a challenge path with no such token (answer 404, never forward it).
    pub fn answer(&self, path: &str) -> Option<Option<String>> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        Some(self.get(token))
    }

    pub fn get(&self, token: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    pub(crate) fn insert(&self, token: &str, key_authorization: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub(crate) fn remove(&self, token: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_challenge_paths() {
        let t = Http01Tokens::new();
        t.insert("tok", "tok.thumb");
        assert_eq!(
            t.answer("/.well-known/acme-challenge/tok"),
            Some(Some("tok.thumb".into()))
        );
        assert_eq!(t.answer("/.well-known/acme-challenge/other"), Some(None));
        assert_eq!(t.answer("/.well-known/matrix/server"), None);
        t.remove("tok");
        assert!(t.is_empty());
    }
}
