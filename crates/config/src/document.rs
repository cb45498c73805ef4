//! Reading the TOML document block by block, so that one bad block does not hide the errors of
//! the others, and a bad key inside a block does not hide the next bad key.

use std::ops::Range;
use std::path::Path;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{ConfigError, Located, Location};

/// How many bad keys one block may report before we stop looking for more.
const MAX_ERRORS_PER_BLOCK: usize = 32;

/// The parsed document plus the errors collected while reading it.
pub(crate) struct Document<'a> {
    pub text: &'a str,
    pub file: &'a Path,
    pub errors: Vec<ConfigError>,
}

impl<'a> Document<'a> {
    pub fn new(text: &'a str, file: &'a Path) -> Self {
        Document {
            text,
            file,
            errors: Vec::new(),
        }
    }

    pub fn location(&self, span: Range<usize>) -> Location {
        Location::of_offset(self.text, span.start)
    }

    pub fn error(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            at: span.map(|s| self.location(s)),
            key: key.into(),
            message: message.into(),
        });
    }

    pub fn located<T>(&self, span: Range<usize>, key: impl Into<String>, value: T) -> Located<T> {
        Located {
            value,
            at: self.location(span),
            key: key.into(),
        }
    }

    pub fn located_spanned<T>(&self, s: Spanned<T>, key: impl Into<String>) -> Located<T> {
        let span = s.span();
        self.located(span, key, s.into_inner())
    }

    /// Deserializes one block. Each error is recorded; the key that caused it is removed and the
    /// block read again, so every bad key of the block is reported. Returns the block when what is
    /// left of it deserializes.
    pub fn block<T: DeserializeOwned>(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        path: &str,
    ) -> Option<T> {
        let mut value = value.clone();
        value.get_mut().make_owned();
        let mut removed: Vec<String> = Vec::new();
        for _ in 0..MAX_ERRORS_PER_BLOCK {
            let attempt: Result<T, toml::de::Error> =
                T::deserialize(value.clone().into_deserializer());
            let err = match attempt {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let message = err.message().to_string();
            if let Some(field) = missing_field(&message) {
                // A key we removed because its value was wrong is not also "missing".
                if removed.iter().any(|r| r == field) {
                    return None;
                }
            }
            let span = err.span();
            let inner = span
                .clone()
                .map(|s| key_path(&value, &s))
                .unwrap_or_default();
            let full = join_path(path, &inner);
            self.error(span.clone(), full, explain(&message));
            match span.and_then(|s| remove_key_at(value.get_mut(), &s)) {
                Some(k) => removed.push(k),
                None => return None,
            }
        }
        None
    }

    /// Reads the elements of an array of tables (`[[name]]`); a single table is one element.
    pub fn array_of_tables<'v, 'i>(
        &mut self,
        value: &'v Spanned<DeValue<'i>>,
        name: &str,
    ) -> Vec<(String, &'v Spanned<DeValue<'i>>)> {
        match value.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{name}[{i}]"), v))
                .collect(),
            DeValue::Table(_) => vec![(format!("{name}[0]"), value)],
            other => {
                self.error(
                    Some(value.span()),
                    name,
                    format!("expected a table [[{name}]], found {}", other.type_str()),
                );
                Vec::new()
            }
        }
    }
}

fn join_path(base: &str, inner: &str) -> String {
    match (base.is_empty(), inner.is_empty()) {
        (_, true) => base.to_string(),
        (true, false) => inner.to_string(),
        (false, false) if inner.starts_with('[') => format!("{base}{inner}"),
        (false, false) => format!("{base}.{inner}"),
    }
}

/// One step from a value to a value inside it.
enum Step {
    Key(String),
    Index(usize),
}

/// The steps to the innermost entry whose key or value covers `span`. Searched depth first:
/// tables written with a `[header]` have a span that covers only the header, not their keys.
fn find_steps(value: &DeValue<'_>, span: &Range<usize>) -> Option<Vec<Step>> {
    match value {
        DeValue::Table(t) => {
            for (k, v) in t.iter() {
                if covers(&k.span(), span) {
                    return Some(vec![Step::Key(k.get_ref().to_string())]);
                }
                if let Some(mut rest) = find_steps(v.get_ref(), span) {
                    rest.insert(0, Step::Key(k.get_ref().to_string()));
                    return Some(rest);
                }
                if covers(&v.span(), span) {
                    return Some(vec![Step::Key(k.get_ref().to_string())]);
                }
            }
            None
        }
        DeValue::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                if let Some(mut rest) = find_steps(v.get_ref(), span) {
                    rest.insert(0, Step::Index(i));
                    return Some(rest);
                }
                if covers(&v.span(), span) {
                    return Some(vec![Step::Index(i)]);
                }
            }
            None
        }
        _ => None,
    }
}

/// The key path, relative to `value`, of the innermost key whose key or value covers `span`.
fn key_path(value: &Spanned<DeValue<'_>>, span: &Range<usize>) -> String {
    let mut path = String::new();
    for step in find_steps(value.get_ref(), span).unwrap_or_default() {
        match step {
            Step::Key(k) => push_key(&mut path, &k),
            Step::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    path
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// Removes the innermost table entry whose key or value covers `span`; returns its key.
fn remove_key_at(value: &mut DeValue<'_>, span: &Range<usize>) -> Option<String> {
    let steps = find_steps(value, span)?;
    let last_key = steps.iter().rposition(|s| matches!(s, Step::Key(_)))?;
    let mut cur = value;
    for step in &steps[..last_key] {
        cur = match (step, cur) {
            (Step::Key(k), DeValue::Table(t)) => t.get_mut(k.as_str())?.get_mut(),
            (Step::Index(i), DeValue::Array(a)) => a.get_mut(*i)?.get_mut(),
            _ => return None,
        };
    }
    match (&steps[last_key], cur) {
        (Step::Key(k), DeValue::Table(t)) => {
            t.remove(k.as_str())?;
            Some(k.clone())
        }
        _ => None,
    }
}

fn covers(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer != &(0..0)
}

/// `missing field `x`` → `x`
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
}

/// serde's messages, reworded where they would puzzle an admin.
fn explain(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let expected = expected
            .trim_start_matches(", expected one of ")
            .trim_start_matches(", expected ")
            .replace('`', "");
        return if expected.is_empty() || expected.starts_with("there are no fields") {
            format!("unknown key \"{name}\"")
        } else {
            format!("unknown key \"{name}\"; expected one of: {expected}")
        };
    }
    if let Some(field) = missing_field(message) {
        return format!("missing required key \"{field}\"");
    }
    message.to_string()
}

/// Parses the document; syntax errors (all of them) are recorded.
pub(crate) fn parse_table<'i>(doc: &mut Document<'i>) -> Option<Spanned<DeTable<'i>>> {
    let (table, errors) = DeTable::parse_recoverable(doc.text);
    if errors.is_empty() {
        return Some(table);
    }
    for e in errors {
        doc.error(e.span(), "", format!("TOML syntax: {}", e.message()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_unknown_and_missing_fields() {
        assert_eq!(
            explain("unknown field `bnd`, expected `bind` or `tls`"),
            "unknown key \"bnd\"; expected one of: bind or tls"
        );
        assert_eq!(
            explain("missing field `upstream`"),
            "missing required key \"upstream\""
        );
        assert_eq!(explain("invalid type"), "invalid type");
    }

    #[test]
    fn paths_join() {
        assert_eq!(
            join_path("homeserver[0]", "well_known.server"),
            "homeserver[0].well_known.server"
        );
        assert_eq!(
            join_path("homeserver[0]", "hosts[1]"),
            "homeserver[0].hosts[1]"
        );
        assert_eq!(join_path("x", ""), "x");
    }
}
