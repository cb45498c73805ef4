//! `docs/configuration.md` documents every key of the file. The field names come from serde
//! itself (what `deny_unknown_fields` accepts), so a key added to a `Raw*` struct fails this
//! test until the reference page has a row for it; a row for a key that no longer exists fails
//! it too. A new `Raw*` struct must be added to [`tables`].

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

use crate::TOP_LEVEL_KEYS;
use crate::acme::{RawAcme, RawAcmeCertificate, RawAcmeDns};
use crate::raw::*;

/// Every table of the file: its heading on the reference page, the struct that reads it, and
/// the struct's field names as serde knows them.
fn tables() -> Vec<(&'static str, &'static str, &'static [&'static str])> {
    vec![
        table::<RawListener>("[[listener]]"),
        table::<RawCertificate>("[[certificate]]"),
        table::<RawHomeserver>("[[homeserver]]"),
        table::<RawUpstreamPool>("[homeserver.upstreams.NAME]"),
        table::<RawRoute>("[[homeserver.route]]"),
        table::<RawWellKnown>("[homeserver.well_known]"),
        table::<RawSupport>("[homeserver.well_known.support]"),
        table::<RawContact>("[[homeserver.well_known.support.contacts]]"),
        table::<RawLimits>("[limits]"),
        table::<RawRuntime>("[runtime]"),
        table::<RawLog>("[log]"),
        table::<RawMetrics>("[metrics]"),
        table::<RawAcme>("[acme]"),
        table::<RawAcmeDns>("[acme.dns]"),
        table::<RawAcmeCertificate>("[[acme.certificate]]"),
    ]
}

#[test]
fn every_key_is_in_the_configuration_reference() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let page = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut problems = Vec::new();
    for (heading, name, fields) in tables() {
        let Some(rows) = section_rows(&page, heading) else {
            problems.push(format!(
                "no section for {heading} ({name}): add a heading \"## `{heading}`\" followed by a table of its keys"
            ));
            continue;
        };
        for field in fields {
            if !rows.contains(*field) {
                problems.push(format!(
                    "{heading} has no row for `{field}` ({name}): add \"| `{field}` | type | default | what it does | on reload |\" to its table"
                ));
            }
        }
        for row in &rows {
            if !fields.contains(&row.as_str()) {
                problems.push(format!(
                    "{heading} documents `{row}`, which {name} does not accept: remove or rename the row"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md is out of date:\n  {}",
        problems.join("\n  ")
    );
}

/// Every top-level key is one of the tables above.
#[test]
fn every_top_level_key_has_a_table() {
    let headings: Vec<&str> = tables().iter().map(|t| t.0).collect();
    for key in TOP_LEVEL_KEYS {
        assert!(
            headings.contains(&format!("[{key}]").as_str())
                || headings.contains(&format!("[[{key}]]").as_str()),
            "top-level key \"{key}\" has no entry in doc_keys::tables()"
        );
    }
}

/// Every `Raw*` struct serde reads is in [`tables`], so none escapes the check above.
#[test]
fn every_raw_struct_is_checked() {
    let listed: BTreeSet<&str> = tables().iter().map(|t| t.1).collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(rest) = line.trim_start().strip_prefix("pub struct Raw") else {
                continue;
            };
            let name: String = "Raw"
                .chars()
                .chain(rest.chars().take_while(|c| c.is_ascii_alphanumeric()))
                .collect();
            let derives = lines[i.saturating_sub(4)..i]
                .iter()
                .any(|l| l.contains("derive(") && l.contains("Deserialize"));
            if derives {
                found.push((name, path.clone()));
            }
        }
    }
    assert!(
        found.iter().any(|(n, _)| n == "RawListener"),
        "the scan found nothing: {found:?}"
    );
    for (name, path) in found {
        assert!(
            listed.contains(name.as_str()),
            "{name} ({}) is not in doc_keys::tables(): add it with its heading on docs/configuration.md",
            path.display()
        );
    }
}

/// The keys in the first column of the rows of the section headed by `` `heading` ``, up to the
/// next heading (lines in fenced code blocks, where `#` starts a TOML comment, are not
/// headings). `None` when no heading names it.
fn section_rows(page: &str, heading: &str) -> Option<BTreeSet<String>> {
    let marker = format!("`{heading}`");
    let mut fenced = false;
    let prose: Vec<&str> = page
        .lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect();
    let mut lines = prose.into_iter();
    lines.find(|l| l.starts_with('#') && l.contains(&marker))?;
    let mut rows = BTreeSet::new();
    for line in lines.take_while(|l| !l.starts_with('#')) {
        if let Some(rest) = line.strip_prefix("| `") {
            if let Some((key, _)) = rest.split_once('`') {
                rows.insert(key.to_string());
            }
        }
    }
    Some(rows)
}

fn table<T: DeserializeOwned>(
    heading: &'static str,
) -> (&'static str, &'static str, &'static [&'static str]) {
    let mut seen = None;
    let _ = T::deserialize(FieldProbe(&mut seen));
    let (name, fields) = seen.unwrap_or_else(|| panic!("{heading}: not a struct"));
    (heading, name, fields)
}

/// A deserializer that only records the struct name and field list serde asks it for.
struct FieldProbe<'a>(&'a mut Option<(&'static str, &'static [&'static str])>);

#[derive(Debug)]
struct Probed;

impl fmt::Display for Probed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("probed")
    }
}

impl std::error::Error for Probed {}

impl de::Error for Probed {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Probed
    }
}

impl<'de> Deserializer<'de> for FieldProbe<'_> {
    type Error = Probed;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Probed> {
        Err(Probed)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Probed> {
        *self.0 = Some((name, fields));
        Err(Probed)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}
