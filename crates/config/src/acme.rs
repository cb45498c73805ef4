//! `[acme]`, `[acme.dns]`, `[[acme.certificate]]` and the per-homeserver `acme` / `challenge`
//! keys: form only (known values, required keys present). The binary checks what needs the
//! outside world (directory names, readable secret files).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::document::Document;
use crate::error::{ConfigError, Located};
use crate::model::Homeserver;
use crate::units::HumanDuration;

pub const DEFAULT_ACME_DIRECTORY: &str = "letsencrypt";
pub const DEFAULT_ACME_STATE_DIR: &str = "/var/lib/myelin";
pub const DEFAULT_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_RETRY_MIN: Duration = Duration::from_secs(5);
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// `[acme]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub directory: Option<Spanned<String>>,
    pub email: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    pub challenge: Option<Spanned<String>>,
    pub ca_roots: Option<Spanned<String>>,
    pub eab_kid: Option<Spanned<String>>,
    pub eab_hmac_key_file: Option<Spanned<String>>,
    /// First wait after a failed order (doubled after each further failure).
    pub retry_min: Option<HumanDuration>,
    pub dns: Option<Spanned<RawAcmeDns>>,
    /// `[[acme.certificate]]`: certificates for names no homeserver serves (a wildcard, say).
    #[serde(default)]
    pub certificate: Vec<Spanned<RawAcmeCertificate>>,
}

/// `[acme.dns]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcmeDns {
    pub provider: Spanned<String>,
    pub nameserver: Option<Spanned<String>>,
    pub tsig_key_name: Option<Spanned<String>>,
    pub tsig_algorithm: Option<Spanned<String>>,
    pub tsig_secret_file: Option<Spanned<String>>,
    pub command: Option<Spanned<Vec<String>>>,
    pub hook_timeout: Option<HumanDuration>,
    pub propagation_timeout: Option<HumanDuration>,
    /// Resolvers to follow CNAMEs and find the zone's nameservers (default: /etc/resolv.conf).
    pub resolvers: Option<Vec<Spanned<String>>>,
    /// The port the zone's nameservers answer on (default 53).
    pub authoritative_port: Option<Spanned<i64>>,
}

/// `[[acme.certificate]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcmeCertificate {
    pub names: Spanned<Vec<Spanned<String>>>,
    pub challenge: Option<Spanned<String>>,
}

/// `[acme]`: Myelin gets its certificates from an ACME CA.
#[derive(Clone, Debug)]
pub struct Acme {
    /// `letsencrypt`, `letsencrypt-staging`, `zerossl` or a directory URL, as written.
    pub directory: Located<String>,
    pub email: Option<Located<String>>,
    pub state_dir: Located<PathBuf>,
    /// Default challenge for every name.
    pub challenge: Located<AcmeChallenge>,
    pub ca_roots: Option<Located<PathBuf>>,
    pub eab_kid: Option<Located<String>>,
    pub eab_hmac_key_file: Option<Located<PathBuf>>,
    pub retry_min: Duration,
    pub dns: Option<AcmeDns>,
    pub certificates: Vec<AcmeCertificate>,
    /// The `[acme]` table itself, for errors about it as a whole.
    pub at: Located<()>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcmeChallenge {
    Http01,
    TlsAlpn01,
    Dns01,
}

impl AcmeChallenge {
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::Http01 => "http-01",
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            AcmeChallenge::Dns01 => "dns-01",
        }
    }
}

/// `[acme.dns]`
#[derive(Clone, Debug)]
pub struct AcmeDns {
    pub provider: AcmeDnsProvider,
    pub propagation_timeout: Duration,
    pub resolvers: Vec<SocketAddr>,
    pub authoritative_port: u16,
    pub at: Located<()>,
}

#[derive(Clone, Debug)]
pub enum AcmeDnsProvider {
    Rfc2136 {
        nameserver: Located<String>,
        tsig_key_name: Located<String>,
        tsig_algorithm: Located<String>,
        tsig_secret_file: Located<PathBuf>,
    },
    Exec {
        command: Located<Vec<String>>,
        timeout: Duration,
    },
}

/// `[[acme.certificate]]`
#[derive(Clone, Debug)]
pub struct AcmeCertificate {
    pub names: Vec<Located<String>>,
    pub challenge: Option<Located<AcmeChallenge>>,
    pub at: Located<()>,
}

pub(crate) fn parse_challenge(
    doc: &mut Document<'_>,
    raw: Spanned<String>,
    key: String,
) -> Option<Located<AcmeChallenge>> {
    let value = match raw.get_ref().trim() {
        "http-01" => AcmeChallenge::Http01,
        "tls-alpn-01" => AcmeChallenge::TlsAlpn01,
        "dns-01" => AcmeChallenge::Dns01,
        other => {
            doc.error(
                Some(raw.span()),
                key,
                format!(
                    "unknown challenge \"{other}\": expected \"http-01\", \"tls-alpn-01\" or \"dns-01\""
                ),
            );
            return None;
        }
    };
    Some(doc.located(raw.span(), key, value))
}

pub(crate) fn convert(
    doc: &mut Document<'_>,
    raw: RawAcme,
    block: std::ops::Range<usize>,
) -> Option<Acme> {
    let errors_before = doc.errors.len();
    let at = doc.located(block.clone(), "acme", ());
    let text =
        |doc: &mut Document<'_>, v: Option<Spanned<String>>, key: &str, default: &str| match v {
            Some(s) => doc
                .located_spanned(s.clone(), key)
                .map_value(|v| v.trim().to_string()),
            None => doc.located(block.clone(), key, default.to_string()),
        };
    let directory = text(doc, raw.directory, "acme.directory", DEFAULT_ACME_DIRECTORY);
    if directory.value.is_empty() {
        doc.errors.push(directory.error(
            doc.file,
            "must not be empty: \"letsencrypt\", \"letsencrypt-staging\", \"zerossl\" or a directory URL",
        ));
    }
    let state_dir =
        text(doc, raw.state_dir, "acme.state_dir", DEFAULT_ACME_STATE_DIR).map_value(PathBuf::from);
    if !state_dir.value.is_absolute() {
        doc.errors.push(state_dir.error(
            doc.file,
            "expected an absolute path, e.g. \"/var/lib/myelin\"",
        ));
    }
    let email = raw.email.map(|e| {
        doc.located_spanned(e, "acme.email")
            .map_value(|v| v.trim().to_string())
    });
    if let Some(e) = &email {
        let ok = e
            .value
            .split_once('@')
            .is_some_and(|(u, d)| !u.is_empty() && d.contains('.') && !e.value.contains(' '));
        if !ok {
            doc.errors
                .push(e.error(doc.file, format!("invalid email address \"{}\"", e.value)));
        }
    }
    let challenge = match raw.challenge {
        Some(c) => parse_challenge(doc, c, "acme.challenge".into()),
        None => Some(doc.located(block.clone(), "acme.challenge", AcmeChallenge::TlsAlpn01)),
    };
    let path = |doc: &mut Document<'_>, v: Option<Spanned<String>>, key: &str| {
        v.map(|s| doc.located_spanned(s, key).map_value(PathBuf::from))
    };
    let ca_roots = path(doc, raw.ca_roots, "acme.ca_roots");
    let eab_hmac_key_file = path(doc, raw.eab_hmac_key_file, "acme.eab_hmac_key_file");
    let eab_kid = raw.eab_kid.map(|k| doc.located_spanned(k, "acme.eab_kid"));
    match (&eab_kid, &eab_hmac_key_file) {
        (Some(k), None) => doc.errors.push(k.error(
            doc.file,
            "eab_kid is set but eab_hmac_key_file is missing (external account binding needs both)",
        )),
        (None, Some(f)) => doc.errors.push(f.error(
            doc.file,
            "eab_hmac_key_file is set but eab_kid is missing (external account binding needs both)",
        )),
        _ => {}
    }
    let dns = raw.dns.and_then(|d| convert_dns(doc, d));
    let mut certificates = Vec::new();
    for (i, c) in raw.certificate.into_iter().enumerate() {
        let key = format!("acme.certificate[{i}]");
        let span = c.span();
        let c = c.into_inner();
        let names_span = c.names.span();
        let names: Vec<Located<String>> = c
            .names
            .into_inner()
            .into_iter()
            .enumerate()
            .map(|(j, n)| {
                doc.located_spanned(n, format!("{key}.names[{j}]"))
                    .map_value(|v| v.trim().trim_end_matches('.').to_ascii_lowercase())
            })
            .collect();
        if names.is_empty() {
            doc.error(
                Some(names_span),
                format!("{key}.names"),
                "expected at least one name",
            );
        }
        let challenge = c
            .challenge
            .and_then(|ch| parse_challenge(doc, ch, format!("{key}.challenge")));
        certificates.push(AcmeCertificate {
            names,
            challenge,
            at: doc.located(span, key, ()),
        });
    }
    if doc.errors.len() > errors_before {
        return None;
    }
    Some(Acme {
        directory,
        email,
        state_dir,
        challenge: challenge?,
        ca_roots,
        eab_kid,
        eab_hmac_key_file,
        retry_min: raw.retry_min.map_or(DEFAULT_RETRY_MIN, |d| d.0),
        dns,
        certificates,
        at,
    })
}

fn convert_dns(doc: &mut Document<'_>, raw: Spanned<RawAcmeDns>) -> Option<AcmeDns> {
    let span = raw.span();
    let at = doc.located(span.clone(), "acme.dns", ());
    let raw = raw.into_inner();
    let errors_before = doc.errors.len();
    let required =
        |doc: &mut Document<'_>, v: Option<Spanned<String>>, key: &str, why: &str| match v {
            Some(s) if !s.get_ref().trim().is_empty() => Some(
                doc.located_spanned(s, format!("acme.dns.{key}"))
                    .map_value(|v| v.trim().to_string()),
            ),
            Some(s) => {
                doc.error(
                    Some(s.span()),
                    format!("acme.dns.{key}"),
                    "must not be empty",
                );
                None
            }
            None => {
                doc.error(
                    Some(span.clone()),
                    "acme.dns",
                    format!("missing required key \"{key}\" ({why})"),
                );
                None
            }
        };
    let provider = match raw.provider.get_ref().trim() {
        "rfc2136" => {
            let why = "provider = \"rfc2136\" needs it";
            let nameserver = required(doc, raw.nameserver, "nameserver", why);
            let key_name = required(doc, raw.tsig_key_name, "tsig_key_name", why);
            let algorithm = match raw.tsig_algorithm {
                Some(a) => Some(doc.located_spanned(a, "acme.dns.tsig_algorithm")),
                None => Some(doc.located(
                    span.clone(),
                    "acme.dns.tsig_algorithm",
                    "hmac-sha256".to_string(),
                )),
            };
            let secret = required(doc, raw.tsig_secret_file, "tsig_secret_file", why);
            if let Some(ns) = &nameserver {
                if crate::split_host_port(&ns.value)
                    .and_then(|(_, p)| p)
                    .is_none()
                {
                    doc.errors.push(ns.error(
                        doc.file,
                        format!("invalid nameserver \"{}\": expected host:port, e.g. \"ns1.example.com:53\"", ns.value),
                    ));
                }
            }
            match (nameserver, key_name, algorithm, secret) {
                (Some(nameserver), Some(tsig_key_name), Some(tsig_algorithm), Some(secret)) => {
                    Some(AcmeDnsProvider::Rfc2136 {
                        nameserver,
                        tsig_key_name,
                        tsig_algorithm,
                        tsig_secret_file: secret.map_value(PathBuf::from),
                    })
                }
                _ => None,
            }
        }
        "exec" => match raw.command {
            Some(c) if !c.get_ref().is_empty() && !c.get_ref()[0].trim().is_empty() => {
                Some(AcmeDnsProvider::Exec {
                    command: doc.located_spanned(c, "acme.dns.command"),
                    timeout: raw.hook_timeout.map_or(DEFAULT_HOOK_TIMEOUT, |d| d.0),
                })
            }
            Some(c) => {
                doc.error(
                    Some(c.span()),
                    "acme.dns.command",
                    "expected a program and its arguments, e.g. [\"/usr/local/bin/dns-hook\"]",
                );
                None
            }
            None => {
                doc.error(
                    Some(span.clone()),
                    "acme.dns",
                    "missing required key \"command\" (provider = \"exec\" runs it as: command present|cleanup FQDN VALUE)",
                );
                None
            }
        },
        other => {
            doc.error(
                Some(raw.provider.span()),
                "acme.dns.provider",
                format!("unknown DNS provider \"{other}\": expected \"rfc2136\" or \"exec\""),
            );
            None
        }
    };
    let mut resolvers = Vec::new();
    for (i, r) in raw.resolvers.unwrap_or_default().into_iter().enumerate() {
        let v = r.get_ref().trim();
        let parsed = v.parse::<SocketAddr>().or_else(|_| {
            v.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Ok(a) => resolvers.push(a),
            Err(_) => doc.error(
                Some(r.span()),
                format!("acme.dns.resolvers[{i}]"),
                format!("invalid resolver \"{v}\": expected an IP address, optionally with a port, e.g. \"127.0.0.1:53\""),
            ),
        }
    }
    let authoritative_port = match raw.authoritative_port {
        None => 53,
        Some(p) => match u16::try_from(*p.get_ref()) {
            Ok(port) if port > 0 => port,
            _ => {
                doc.error(
                    Some(p.span()),
                    "acme.dns.authoritative_port",
                    "expected a port number 1-65535",
                );
                53
            }
        },
    };
    if doc.errors.len() > errors_before {
        return None;
    }
    Some(AcmeDns {
        provider: provider?,
        propagation_timeout: raw
            .propagation_timeout
            .map_or(DEFAULT_PROPAGATION_TIMEOUT, |d| d.0),
        resolvers,
        authoritative_port,
        at,
    })
}

/// Rules between `[acme]` and the homeservers.
pub(crate) fn check(doc: &mut Document<'_>, acme: Option<&Acme>, homeservers: &[Homeserver]) {
    let mut errors: Vec<ConfigError> = Vec::new();
    let Some(acme) = acme else {
        for h in homeservers {
            if let Some(a) = &h.acme {
                if a.value {
                    errors.push(a.error(
                        doc.file,
                        "acme = true needs an [acme] section (directory, email, state_dir)",
                    ));
                }
            }
            if let Some(c) = &h.challenge {
                errors.push(c.error(doc.file, "challenge is set but there is no [acme] section"));
            }
        }
        doc.errors.extend(errors);
        return;
    };
    if acme.dns.is_none() {
        let dns_uses = std::iter::once(&acme.challenge)
            .filter(|_| {
                // the default matters only if some name uses it
                homeservers
                    .iter()
                    .any(|h| h.acme.as_ref().is_none_or(|a| a.value) && h.challenge.is_none())
                    || acme.certificates.iter().any(|c| c.challenge.is_none())
            })
            .chain(homeservers.iter().filter_map(|h| h.challenge.as_ref()))
            .chain(
                acme.certificates
                    .iter()
                    .filter_map(|c| c.challenge.as_ref()),
            )
            .filter(|c| c.value == AcmeChallenge::Dns01);
        for c in dns_uses {
            errors.push(c.error(
                doc.file,
                "dns-01 needs an [acme.dns] section (provider = \"rfc2136\" or \"exec\")",
            ));
        }
    }
    for c in &acme.certificates {
        let challenge = c
            .challenge
            .as_ref()
            .map_or(acme.challenge.value, |c| c.value);
        for n in &c.names {
            if n.value.starts_with("*.") && challenge != AcmeChallenge::Dns01 {
                errors.push(n.error(
                    doc.file,
                    format!("a wildcard name needs challenge = \"dns-01\" (the CA allows no other for wildcards), not {}", challenge.as_str()),
                ));
            }
        }
    }
    doc.errors.extend(errors);
}

trait MapValue<T> {
    fn map_value<U>(self, f: impl FnOnce(T) -> U) -> Located<U>;
}

impl<T> MapValue<T> for Located<T> {
    fn map_value<U>(self, f: impl FnOnce(T) -> U) -> Located<U> {
        Located {
            value: f(self.value),
            at: self.at,
            key: self.key,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{AcmeChallenge, AcmeDnsProvider, parse};

    const BASE: &str = "[[listener]]\nbind = \"127.0.0.1:443\"\n\n[[homeserver]]\nserver_name = \"example.com\"\nupstream = \"http://127.0.0.1:8008\"\n";

    fn errors(text: &str) -> Vec<String> {
        match parse(text, Path::new("t.toml")) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn the_issue_example_parses_with_defaults() {
        let text = format!(
            "{BASE}acme = true\nchallenge = \"dns-01\"\n\n[acme]\ndirectory = \"letsencrypt\"\nemail = \"admin@example.com\"\nstate_dir = \"/var/lib/myelin\"\nchallenge = \"tls-alpn-01\"\n\n[acme.dns]\nprovider = \"rfc2136\"\nnameserver = \"ns1.example.com:53\"\ntsig_key_name = \"acme-key\"\ntsig_algorithm = \"hmac-sha256\"\ntsig_secret_file = \"/etc/myelin/tsig.secret\"\npropagation_timeout = \"120s\"\n"
        );
        let c = parse(&text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
        let a = c.acme.expect("[acme]");
        assert_eq!(a.directory.value, "letsencrypt");
        assert_eq!(a.challenge.value, AcmeChallenge::TlsAlpn01);
        let dns = a.dns.expect("[acme.dns]");
        assert_eq!(dns.authoritative_port, 53);
        assert!(dns.resolvers.is_empty());
        assert!(matches!(dns.provider, AcmeDnsProvider::Rfc2136 { .. }));
        let h = &c.homeservers[0];
        assert_eq!(
            h.challenge.as_ref().map(|c| c.value),
            Some(AcmeChallenge::Dns01)
        );
        assert_eq!(h.acme.as_ref().map(|a| a.value), Some(true));
    }

    #[test]
    fn mistakes_are_named_with_their_key() {
        let e = errors(&format!(
            "{BASE}\n[acme]\nstate_dir = \"relative\"\nchallenge = \"http-02\"\nemail = \"nobody\"\neab_kid = \"k\"\n"
        ));
        let all = e.join("\n");
        assert!(
            all.contains("t.toml:9:13: acme.state_dir: expected an absolute path"),
            "{all}"
        );
        assert!(
            all.contains("acme.challenge: unknown challenge \"http-02\""),
            "{all}"
        );
        assert!(all.contains("acme.email: invalid email address"), "{all}");
        assert!(
            all.contains("acme.eab_kid: eab_kid is set but eab_hmac_key_file is missing"),
            "{all}"
        );

        let e = errors(&format!(
            "{BASE}\n[acme]\n[acme.dns]\nprovider = \"rfc2136\"\nnameserver = \"ns1\"\n"
        ))
        .join("\n");
        assert!(e.contains("missing required key \"tsig_key_name\""), "{e}");
        assert!(e.contains("invalid nameserver \"ns1\""), "{e}");
        let e = errors(&format!(
            "{BASE}\n[acme]\n[acme.dns]\nprovider = \"exec\"\n"
        ))
        .join("\n");
        assert!(e.contains("missing required key \"command\""), "{e}");
        let e = errors(&format!("{BASE}\n[acme]\nbogus = 1\n")).join("\n");
        assert!(e.contains("acme.bogus: unknown key \"bogus\""), "{e}");
    }

    #[test]
    fn homeserver_keys_need_acme_and_dns01_needs_a_provider() {
        let e = errors(&BASE.replace("upstream", "acme = true\nchallenge = \"dns-01\"\nupstream"))
            .join("\n");
        assert!(
            e.contains("homeserver[0].acme: acme = true needs an [acme] section"),
            "{e}"
        );
        assert!(
            e.contains("homeserver[0].challenge: challenge is set but there is no [acme] section"),
            "{e}"
        );
        let e = errors(&format!(
            "{}\n[acme]\n",
            BASE.replace("upstream", "challenge = \"dns-01\"\nupstream")
        ))
        .join("\n");
        assert!(
            e.contains("homeserver[0].challenge: dns-01 needs an [acme.dns] section"),
            "{e}"
        );
    }
}
