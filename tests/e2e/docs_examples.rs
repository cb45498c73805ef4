//! The documentation is right about the configuration and leads somewhere: every ```toml block
//! of `docs/*.md` and `README.md` passes `myelin check-config` (the real binary, which also
//! loads certificate and secret files and validates the well-known documents), so does the
//! packaged file once its server name is set, and every relative link and anchor resolves.
//!
//! A block is checked as written when it is a whole configuration (it has `[[listener]]` and
//! `[[homeserver]]`). Otherwise it is a fragment and gets what it lacks put before it: a
//! listener, a homeserver for `example.com` (so `[homeserver.…]` tables and bare homeserver keys
//! attach to it), and a self-signed certificate unless the block has `[acme…]` or
//! `[[certificate]]`. Files the examples name (`cert`, `key`, `tsig_secret_file`,
//! `eab_hmac_key_file`, `ca_roots`) are replaced by files made for the test. A block preceded by
//! the line `<!-- not a whole example -->` is skipped (a deliberate excerpt).

use std::path::{Path, PathBuf};

use myelin_e2e::myelin::check_config;
use myelin_e2e::{TestCa, TestDir, repo_root};

use crate::common::bin;

const SKIP_MARKER: &str = "<!-- not a whole example -->";

#[test]
fn every_toml_example_in_the_docs_passes_check_config() {
    let dir = TestDir::new("docs-examples");
    let files = Fixtures::new(&dir);
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo_root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    pages.push(repo_root().join("README.md"));

    let mut checked = 0;
    let mut failures = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        for (line, block) in toml_blocks(&text) {
            let config = files.substitute(&complete(&block));
            let path = dir.write(
                &format!("{}-{line}.toml", name.trim_end_matches(".md")),
                &config,
            );
            let (code, out, err) = check_config(&bin(), &path);
            checked += 1;
            if code != 0 {
                failures.push(format!(
                    "{name}:{line}: exit {code}\n{err}{out}--- checked as:\n{config}"
                ));
            }
        }
    }
    assert!(checked >= 20, "only {checked} examples found");
    assert!(
        failures.is_empty(),
        "{} of {checked} configuration examples fail `myelin check-config`:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The file the packages install passes once `server_name` is set, through the binary (which
/// also builds the ACME settings), and says where to write the name until then.
#[test]
fn the_packaged_config_passes_check_config_once_server_name_is_set() {
    let dir = TestDir::new("packaged-config");
    let shipped = std::fs::read_to_string(repo_root().join("packaging/myelin.toml")).unwrap();
    let path = dir.write("myelin.toml", &shipped);
    let (code, out, err) = check_config(&bin(), &path);
    assert_eq!(code, 64, "{out}{err}");
    let line = shipped
        .lines()
        .position(|l| l == "server_name = \"\"")
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(
            "{}:{line}:15: homeserver[0].server_name: is not set: write your Matrix server name here",
            path.display()
        )),
        "{err}"
    );

    let edited = shipped.replace("server_name = \"\"", "server_name = \"example.org\"");
    let path = dir.write("myelin.toml", &edited);
    let (code, out, err) = check_config(&bin(), &path);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.trim(),
        format!(
            "OK: {}: 6 listeners, 0 certificates (0 names), 1 ACME certificate, 1 homeserver (example.org)",
            path.display()
        )
    );
    assert_eq!(err, "", "no warnings");
}

/// Every relative link of the documentation leads to a file that exists, and every `#anchor`
/// to a heading of that page (as GitHub names it).
#[test]
fn every_link_in_the_docs_leads_somewhere() {
    let root = repo_root();
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.extend(["README.md", "CHANGELOG.md", "packaging/README.md"].map(|p| root.join(p)));
    let mut links = 0;
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for target in relative_links(&text) {
            links += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((target.as_str(), ""));
            let path = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !path.exists() {
                broken.push(format!("{}: {target}: no such file", page.display()));
            } else if !anchor.is_empty()
                && path.extension().is_some_and(|x| x == "md")
                && !anchors(&std::fs::read_to_string(&path).unwrap())
                    .iter()
                    .any(|a| a == anchor)
            {
                broken.push(format!("{}: {target}: no such heading", page.display()));
            }
        }
    }
    assert!(links >= 50, "only {links} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The index (`docs/README.md`) and the repository's README link every page of `docs/`.
#[test]
fn every_docs_page_is_in_both_indexes() {
    let root = repo_root();
    let index = relative_links(&std::fs::read_to_string(root.join("docs/README.md")).unwrap());
    let readme = relative_links(&std::fs::read_to_string(root.join("README.md")).unwrap());
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !name.ends_with(".md") || name == "README.md" {
            continue;
        }
        let links_to = |links: &[String], prefix: &str| {
            links
                .iter()
                .any(|l| l.split('#').next() == Some(&format!("{prefix}{name}")))
        };
        if !links_to(&index, "") {
            missing.push(format!("docs/README.md does not link {name}"));
        }
        if !links_to(&readme, "docs/") {
            missing.push(format!("README.md does not link docs/{name}"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// The targets of `[text](target)` links outside code blocks, without web and mail links.
fn relative_links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose_lines(text) {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            let external = ["http://", "https://", "mailto:"]
                .iter()
                .any(|p| target.starts_with(p));
            if !external && !target.is_empty() && !target.contains(char::is_whitespace) {
                out.push(target.to_string());
            }
            rest = &rest[end..];
        }
    }
    out
}

/// The anchors GitHub gives a page's headings: lower-case, letters, digits, `-` and `_` kept,
/// spaces made `-`, everything else dropped; a repeated one gets `-1`, `-2`, ...
fn anchors(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in prose_lines(text) {
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let heading = heading.trim_start_matches('#').trim();
        let base: String = heading
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = base.clone();
        let mut n = 0;
        while out.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        out.push(anchor);
    }
    out
}

/// The lines of a page outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// The ```toml blocks of a page, with the line each starts on; skipped ones left out.
fn toml_blocks(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_start() == "```toml" {
            let indent = lines[i].len() - lines[i].trim_start().len();
            let start = i + 1;
            let skip = lines[..i]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.trim() == SKIP_MARKER);
            let mut body = String::new();
            i += 1;
            while i < lines.len() && lines[i].trim_start() != "```" {
                body.push_str(lines[i].get(indent..).unwrap_or(lines[i].trim_start()));
                body.push('\n');
                i += 1;
            }
            if !skip {
                blocks.push((start, body));
            }
        }
        i += 1;
    }
    blocks
}

/// A fragment with what it lacks put before it; a whole configuration as it is.
fn complete(block: &str) -> String {
    let has = |header: &str| block.lines().any(|l| l.trim_start().starts_with(header));
    let has_listener = has("[[listener]]");
    let has_homeserver = has("[[homeserver]]");
    if has_listener && has_homeserver {
        return block.to_string();
    }
    let mut out = String::from("# added by the docs example test\n");
    if !has_listener {
        out.push_str("[[listener]]\nbind = \"127.0.0.1:8443\"\n\n");
    }
    if !has("[[certificate]]") && !has("[acme") && !has("[[acme") {
        out.push_str(
            "[[certificate]]\nself_signed = [\"example.com\", \"matrix.example.com\"]\n\n",
        );
    }
    if !has_homeserver {
        out.push_str(
            "[[homeserver]]\nserver_name = \"example.com\"\nupstream = \"http://127.0.0.1:8008\"\n\n",
        );
    }
    out.push_str("# the example\n");
    out.push_str(block);
    out
}

/// Files standing in for the ones the examples name.
struct Fixtures {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    tsig_secret: PathBuf,
    eab_key: PathBuf,
}

impl Fixtures {
    fn new(dir: &TestDir) -> Fixtures {
        let ca = TestCa::new();
        let (cert, key) = ca.write_leaf(
            dir,
            "example.com",
            &["example.com", "matrix.example.com", "*.example.com"],
        );
        Fixtures {
            cert,
            key,
            ca: ca.write_ca(dir),
            tsig_secret: dir.write(
                "tsig.secret",
                "key \"acme-key\" {\n\talgorithm hmac-sha256;\n\tsecret \"bXllbGluLWRvY3MtZXhhbXBsZS10ZXN0LXNlY3JldA==\";\n};\n",
            ),
            eab_key: dir.write("eab.key", "bXllbGluLWRvY3MtZXhhbXBsZS1lYWIta2V5\n"),
        }
    }

    /// Points the file keys of `config` at the fixtures.
    fn substitute(&self, config: &str) -> String {
        let mut out = String::new();
        for line in config.lines() {
            let trimmed = line.trim_start();
            let key = trimmed.split([' ', '=']).next().unwrap_or("");
            let file: Option<&Path> = match key {
                "cert" => Some(&self.cert),
                "key" => Some(&self.key),
                "ca_roots" => Some(&self.ca),
                "tsig_secret_file" => Some(&self.tsig_secret),
                "eab_hmac_key_file" => Some(&self.eab_key),
                _ => None,
            };
            match file {
                Some(f) if trimmed[key.len()..].trim_start().starts_with('=') => {
                    out.push_str(&format!("{key} = \"{}\"\n", f.display()));
                }
                _ => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}
