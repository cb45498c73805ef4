use std::path::Path;
use std::time::Duration;

use super::*;

fn parse_ok(text: &str) -> Config {
    match parse(text, Path::new("test.toml")) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn parse_err(text: &str) -> Vec<ConfigError> {
    match parse(text, Path::new("test.toml")) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0,
    }
}

const MINIMAL: &str = r#"
[[listener]]
bind = "127.0.0.1:8443"

[[certificate]]
self_signed = ["localhost"]

[[homeserver]]
server_name = "example.com"
upstream = "http://127.0.0.1:8008"
"#;

#[test]
fn example_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.example.toml");
    let c = load(&path).unwrap_or_else(|e| panic!("config.example.toml:\n{e}"));
    assert_eq!(c.listeners.len(), 4);
    assert!(!c.listeners[3].tls);
    assert_eq!(c.homeservers[0].server_name.value, "example.com");
    assert_eq!(c.homeservers[0].max_body_size, 50 << 20);
    assert_eq!(c.homeservers[0].admin_allow.len(), 2);
    let wk = &c.homeservers[0].well_known;
    assert_eq!(
        wk.server.as_ref().map(|s| s.value.as_str()),
        Some("matrix.example.com:443")
    );
    assert!(
        wk.client_extra
            .as_ref()
            .is_some_and(|m| m.value.contains_key("org.matrix.msc4143.rtc_foci"))
    );
    assert_eq!(wk.support.as_ref().map(|s| s.value.contacts.len()), Some(1));
    assert_eq!(
        c.metrics.map(|m| m.bind.value),
        Some("127.0.0.1:9464".parse().unwrap())
    );
}

#[test]
fn synapse_workers_preset_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/synapse-workers.toml");
    let c = load(&path).unwrap_or_else(|e| panic!("examples/synapse-workers.toml:\n{e}"));
    let h = &c.homeservers[0];
    let pool = |n: &str| h.upstreams.iter().find(|p| p.name.value == n).unwrap();
    assert_eq!(pool("sync").balance, Balance::User);
    assert_eq!(pool("rooms").balance, Balance::Room);
    assert_eq!(pool("federation_inbound").balance, Balance::Origin);
    assert!(h.upstreams.iter().all(|p| p.health_check.is_some()));
    assert!(h.routes.len() > 30, "{}", h.routes.len());
}

#[test]
fn defaults() {
    let c = parse_ok(MINIMAL);
    let h = &c.homeservers[0];
    assert_eq!(h.max_body_size, 50 << 20);
    assert_eq!(h.upstream_timeout, Duration::from_secs(300));
    assert!(h.admin_allow.is_empty());
    assert!(c.listeners[0].tls);
    assert_eq!(c.limits, Limits::default());
    assert_eq!(
        h.upstream.value,
        UpstreamTarget::Http {
            host: "127.0.0.1".into(),
            port: 8008
        }
    );
}

#[test]
fn unknown_keys_are_errors_with_line_and_column() {
    let errs = parse_err(&format!("{MINIMAL}\nmax_bdy_size = \"1M\"\n"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].key, "homeserver[0].max_bdy_size");
    assert_eq!(
        errs[0].at,
        Some(Location {
            line: 12,
            column: 1
        })
    );
    assert!(
        errs[0].message.contains("unknown key \"max_bdy_size\""),
        "{}",
        errs[0].message
    );
    assert!(
        errs[0].message.contains("max_body_size"),
        "lists what is expected: {}",
        errs[0].message
    );
}

#[test]
fn every_error_is_reported() {
    let text = r#"
[[listener]]
bind = "localhost:443"
tsl = true

[[homeserver]]
server_name = "example.com"
upstream = "ftp://x"
max_body_size = "lots"
upstream_timeout = "300"
colour = "blue"

[bogus]
"#;
    let errs = parse_err(text);
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    for want in [
        "listener[0].tsl",
        "homeserver[0].max_body_size",
        "homeserver[0].upstream_timeout",
        "homeserver[0].colour",
        "homeserver[0].upstream",
        "bogus",
    ] {
        assert!(keys.contains(&want), "missing error for {want}: {errs:#?}");
    }
    // sorted by position, each with a line
    let lines: Vec<usize> = errs.iter().filter_map(|e| e.at.map(|a| a.line)).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
    let timeout = errs
        .iter()
        .find(|e| e.key == "homeserver[0].upstream_timeout")
        .unwrap();
    assert_eq!(
        timeout.at,
        Some(Location {
            line: 10,
            column: 20
        })
    );
    assert!(
        timeout.message.contains("add a unit"),
        "{}",
        timeout.message
    );
}

#[test]
fn a_removed_bad_required_key_is_not_also_missing() {
    let errs = parse_err(
        r#"
[[listener]]
bind = 443
"#,
    );
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].key, "listener[0].bind");
    assert!(errs[0].message.contains("string"), "{}", errs[0].message);
}

#[test]
fn missing_required_keys_are_named() {
    let errs = parse_err(
        r#"
[[listener]]
bind = "127.0.0.1:1"
[[homeserver]]
server_name = "a.example"
"#,
    );
    assert!(
        errs.iter()
            .any(|e| e.message.contains("missing required key \"upstream\"")),
        "{errs:#?}"
    );
}

#[test]
fn syntax_errors_have_positions() {
    let errs = parse_err("[[listener]\nbind = \"x\"\n");
    assert!(errs[0].message.starts_with("TOML syntax"), "{errs:#?}");
    assert_eq!(errs[0].at.map(|a| a.line), Some(1));
}

#[test]
fn duplicate_listeners_and_hosts() {
    let errs = parse_err(
        r#"
[[listener]]
bind = "127.0.0.1:8443"
[[listener]]
bind = "127.0.0.1:8443"
[[homeserver]]
server_name = "a.example"
upstream = "http://127.0.0.1:1"
[[homeserver]]
server_name = "b.example"
hosts = ["A.example."]
upstream = "http://127.0.0.1:2"
"#,
    );
    assert!(
        errs.iter()
            .any(|e| e.key == "listener[1].bind" && e.message.contains("line 3")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.key == "homeserver[1].hosts[0]" && e.message.contains("already served")),
        "{errs:#?}"
    );
}

#[test]
fn a_host_may_repeat_within_one_homeserver() {
    parse_ok(&MINIMAL.replace(
        "server_name = \"example.com\"",
        "server_name = \"example.com\"\nhosts = [\"example.com:443\"]",
    ));
}

#[test]
fn upstreams() {
    assert_eq!(
        parse_upstream("unix:/run/synapse.sock"),
        Ok(UpstreamTarget::Unix("/run/synapse.sock".into()))
    );
    assert_eq!(
        parse_upstream("http://[::1]:8008/"),
        Ok(UpstreamTarget::Http {
            host: "::1".into(),
            port: 8008
        })
    );
    assert_eq!(
        parse_upstream("http://synapse"),
        Ok(UpstreamTarget::Http {
            host: "synapse".into(),
            port: 80
        })
    );
    assert!(parse_upstream("http://127.0.0.1:8008/_matrix").is_err());
    assert!(parse_upstream("unix:relative.sock").is_err());
    assert!(
        parse_upstream("https://x")
            .unwrap_err()
            .contains("not supported")
    );
    assert!(parse_upstream("http://h:0").is_err());
}

#[test]
fn binds() {
    assert!(parse_bind("[::1]:8443").is_ok());
    assert!(parse_bind("0.0.0.0:80").is_ok());
    assert!(parse_bind("127.0.0.1").unwrap_err().contains("add a port"));
    assert!(
        parse_bind("example.com:443")
            .unwrap_err()
            .contains("no host names")
    );
}

#[test]
fn certificate_blocks() {
    let errs = parse_err(&MINIMAL.replace("self_signed = [\"localhost\"]", "cert = \"/x.pem\""));
    assert!(errs[0].message.contains("\"key\" is missing"), "{errs:#?}");
    let c = parse_ok(&MINIMAL.replace(
        "self_signed = [\"localhost\"]",
        "cert = \"/x.pem\"\nkey = \"/x.key\"",
    ));
    match &c.certificates[0].source {
        CertificateSource::Files { cert, key } => {
            assert_eq!(cert.value, Path::new("/x.pem"));
            assert_eq!(key.key, "certificate[0].key");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn limits_and_log() {
    let c = parse_ok(&format!(
        "{MINIMAL}\n[limits]\nmax_connections = 5\nmax_header_size = \"16K\"\n[log]\nformat = \"json\"\n"
    ));
    assert_eq!(c.limits.max_connections, 5);
    assert_eq!(c.limits.max_header_size, 16 << 10);
    assert_eq!(c.log.format, LogFormat::Json);
    let errs = parse_err(&format!(
        "{MINIMAL}\n[limits]\nmax_connections = 0\n[log]\nformat = \"xml\"\n"
    ));
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn hostile_client_limits() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.limits.body_min_rate, DEFAULT_BODY_MIN_RATE);
    assert_eq!(c.limits.h2_max_resets, 200);
    assert_eq!(
        c.homeservers[0].upstream_body_timeout,
        DEFAULT_UPSTREAM_BODY_TIMEOUT
    );
    let c = parse_ok(&format!(
        "{MINIMAL}upstream_body_timeout = \"5s\"\n[limits]\nbody_min_rate = \"1K\"\nh2_max_resets = 50\n"
    ));
    assert_eq!(c.limits.body_min_rate, 1024);
    assert_eq!(c.limits.h2_max_resets, 50);
    assert_eq!(
        c.homeservers[0].upstream_body_timeout,
        Duration::from_secs(5)
    );
    let c = parse_ok(&format!("{MINIMAL}\n[limits]\nbody_min_rate = 0\n"));
    assert_eq!(c.limits.body_min_rate, 0, "0 turns the minimum off");
    let errs = parse_err(&format!(
        "{MINIMAL}\n[limits]\nbody_min_rate = \"2G\"\nh2_max_resets = 0\n"
    ));
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs.iter().any(|e| e.key == "limits.body_min_rate"),
        "{errs:#?}"
    );
    assert!(
        errs.iter().any(|e| e.key == "limits.h2_max_resets"),
        "{errs:#?}"
    );
}

#[test]
fn empty_file_says_what_is_missing() {
    let errs = parse_err("");
    assert!(errs.iter().any(|e| e.message.contains("no [[listener]]")));
}

#[test]
fn host_keys() {
    assert_eq!(host_key("Example.COM:8448").as_deref(), Some("example.com"));
    assert_eq!(host_key("[::1]:443").as_deref(), Some("::1"));
    assert_eq!(
        host_key("matrix.example.com.").as_deref(),
        Some("matrix.example.com")
    );
}

const WORKERS: &str = r#"
[homeserver.upstreams.sync]
servers = ["http://127.0.0.1:8083", "http://127.0.0.1:8084"]
balance = "user"
health_check = "/health"

[homeserver.upstreams.media]
servers = ["unix:/run/synapse/media.sock"]

[[homeserver.route]]
path = '^/_matrix/client/(r0|v3)/sync$'
methods = ["GET"]
upstream = "sync"

[[homeserver.route]]
path = '^/_matrix/media/'
upstream = "media"

[[homeserver.route]]
path = '^/_matrix/client/v3/login$'
upstream = "main"
"#;

#[test]
fn pools_and_routes() {
    let c = parse_ok(&format!("{MINIMAL}{WORKERS}"));
    let h = &c.homeservers[0];
    let names: Vec<&str> = h.upstreams.iter().map(|p| p.name.value.as_str()).collect();
    assert_eq!(names, ["media", "sync"]);
    let sync = &h.upstreams[1];
    assert_eq!(sync.balance, Balance::User);
    assert_eq!(sync.servers.len(), 2);
    assert_eq!(
        sync.health_check,
        Some(HealthCheck {
            path: "/health".into(),
            interval: DEFAULT_HEALTH_CHECK_INTERVAL,
            timeout: DEFAULT_HEALTH_CHECK_TIMEOUT,
        })
    );
    assert_eq!(h.upstreams[0].balance, Balance::RoundRobin);
    assert_eq!(
        h.upstreams[0].servers[0].value,
        UpstreamTarget::Unix("/run/synapse/media.sock".into())
    );
    assert_eq!(h.routes.len(), 3);
    assert_eq!(h.routes[0].path.value, "^/_matrix/client/(r0|v3)/sync$");
    assert_eq!(h.routes[0].methods, ["GET"]);
    assert!(h.routes[1].methods.is_empty());
    assert_eq!(h.routes[2].upstream.value, MAIN_POOL);
    // without any, nothing changes
    let c = parse_ok(MINIMAL);
    assert!(c.homeservers[0].upstreams.is_empty() && c.homeservers[0].routes.is_empty());
}

#[test]
fn route_naming_an_unknown_upstream() {
    let errs = parse_err(&format!(
        "{MINIMAL}{}",
        WORKERS.replace("upstream = \"media\"", "upstream = \"mediaa\"")
    ));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].key, "homeserver[0].route[1].upstream");
    assert!(
        errs[0].message.contains("unknown upstream \"mediaa\"")
            && errs[0].message.contains("main, media, sync"),
        "{}",
        errs[0].message
    );
    let text = format!("{MINIMAL}{WORKERS}");
    let line = text
        .lines()
        .position(|l| l == "upstream = \"media\"")
        .unwrap()
        + 1;
    assert_eq!(errs[0].at.map(|a| a.line), Some(line));
}

#[test]
fn invalid_regex_points_at_the_character() {
    let text = format!(
        "{MINIMAL}{}",
        WORKERS.replace("'^/_matrix/media/'", "'^/_matrix/(media/'")
    );
    let errs = parse_err(&text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = &errs[0];
    assert_eq!(e.key, "homeserver[0].route[1].path");
    assert!(e.message.contains("unclosed group"), "{}", e.message);
    assert!(e.message.contains("at character 11"), "{}", e.message);
    // on the line `path = '^/_matrix/(media/'`, the column is the "(" itself
    let at = e.at.unwrap();
    let line = text.lines().nth(at.line - 1).unwrap();
    assert!(line.starts_with("path = '^/_matrix/(media"), "{line}");
    assert_eq!(line.chars().nth(at.column - 1), Some('('), "{line} {at:?}");

    // in a basic string with escapes the value is pointed at, the message still has the place
    let errs = parse_err(&format!(
        "{MINIMAL}{}",
        WORKERS.replace("'^/_matrix/media/'", "\"^/_matrix/\\\\d[\"")
    ));
    assert!(
        errs[0].message.contains("unclosed character class")
            && errs[0].message.contains("at character 13"),
        "{errs:#?}"
    );
    assert_eq!(errs[0].at.map(|a| a.column), Some(8));
}

#[test]
fn empty_or_broken_pools() {
    let errs = parse_err(&format!(
        "{MINIMAL}{}",
        WORKERS.replace(
            "servers = [\"unix:/run/synapse/media.sock\"]",
            "servers = []"
        )
    ));
    assert_eq!(
        errs.len(),
        1,
        "a route to a broken pool is not another error: {errs:#?}"
    );
    assert_eq!(errs[0].key, "homeserver[0].upstreams.media.servers");
    assert!(
        errs[0].message.contains("at least one server"),
        "{}",
        errs[0].message
    );

    let errs = parse_err(&format!(
        "{MINIMAL}{}",
        WORKERS
            .replace("balance = \"user\"", "balance = \"sticky\"")
            .replace(
                "\"http://127.0.0.1:8084\"",
                "\"http://127.0.0.1:8083\", \"ftp://x\""
            )
            .replace("methods = [\"GET\"]", "methods = [\"get\"]")
    ));
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "homeserver[0].upstreams.sync.servers[1]",
            "homeserver[0].upstreams.sync.servers[2]",
            "homeserver[0].upstreams.sync.balance",
            "homeserver[0].route[0].methods[0]",
        ],
        "{errs:#?}"
    );
    assert!(errs[0].message.contains("already listed"), "{errs:#?}");
    assert!(
        errs[2]
            .message
            .contains("round_robin, user, room, origin, ip")
    );

    let errs = parse_err(&format!(
        "{MINIMAL}\n[homeserver.upstreams.main]\nservers = [\"http://127.0.0.1:1\"]\nhealth_check_interval = \"1s\"\n"
    ));
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs.iter()
            .any(|e| e.message.contains("homeserver's own `upstream`"))
    );
    assert!(errs.iter().any(|e| e.message.contains("need health_check")));

    let errs = parse_err(&format!(
        "{MINIMAL}\n[homeserver.upstreams.a]\nservers = [\"http://127.0.0.1:1\"]\nhealth_chek = \"/health\"\n"
    ));
    assert_eq!(
        errs[0].key, "homeserver[0].upstreams.a.health_chek",
        "{errs:#?}"
    );
}

#[test]
fn nested_tables_report_every_bad_key_with_its_path() {
    // tables written as [headers] have spans covering only the header: keys are still found
    let errs = parse_err(&format!(
        "{MINIMAL}[homeserver.well_known]\nsever = \"x\"\nclent = 1\n[[homeserver.route]]\npath = 'x'\nupstream = \"main\"\nmthods = []\n"
    ));
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "homeserver[0].well_known.sever",
            "homeserver[0].well_known.clent",
            "homeserver[0].route[0].mthods"
        ],
        "{errs:#?}"
    );
}

#[test]
fn metrics_endpoint() {
    let c = parse_ok(MINIMAL);
    assert!(c.metrics.is_none(), "no [metrics]: no endpoint");

    let c = parse_ok(&format!(
        "{MINIMAL}\n[metrics]\nbind = \"127.0.0.1:9464\"\n"
    ));
    let m = c.metrics.expect("[metrics] parsed");
    assert_eq!(m.bind.value, "127.0.0.1:9464".parse().unwrap());
    assert_eq!(m.bind.key, "metrics.bind");

    let errs = parse_err(&format!(
        "{MINIMAL}\n[metrics]\nbind = \"localhost\"\nport = 1\n"
    ));
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(errs[0].key, "metrics.bind");
    assert!(errs[0].message.contains("expected IP:port"), "{}", errs[0]);
    assert_eq!(errs[1].key, "metrics.port");
    assert!(
        errs[1].message.contains("unknown key \"port\""),
        "{}",
        errs[1]
    );
}

#[test]
fn metrics_endpoint_needs_a_port_of_its_own() {
    // same address as a listener, or the listener's wildcard address on the same port
    for bind in ["127.0.0.1:8443", "0.0.0.0:8443"] {
        let errs = parse_err(&format!("{MINIMAL}\n[metrics]\nbind = \"{bind}\"\n"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "metrics.bind");
        assert!(
            errs[0]
                .message
                .contains("share a port with the [[listener]] 127.0.0.1:8443 at line 3"),
            "{}",
            errs[0]
        );
    }
    // another port, another address family, or "any free port" are fine
    for bind in ["127.0.0.1:9464", "[::1]:8443", "127.0.0.1:0"] {
        parse_ok(&format!("{MINIMAL}\n[metrics]\nbind = \"{bind}\"\n"));
    }
}

#[test]
fn an_empty_server_name_says_what_to_write() {
    let errs = parse_err(&MINIMAL.replace("\"example.com\"", "\"\""));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].key, "homeserver[0].server_name");
    assert!(
        errs[0]
            .message
            .contains("write your Matrix server name here")
            && errs[0].message.contains("server_name = \"example.com\""),
        "{}",
        errs[0]
    );
}

/// The file the packages install: refused until server_name is set, valid after that, with
/// certificates from Let's Encrypt by tls-alpn-01; the certificate-file alternative its comments
/// describe is valid too.
#[test]
fn packaged_config_needs_only_a_server_name() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/myelin.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let errs = match parse(&text, &path) {
        Ok(_) => panic!("the packaged config must be refused until server_name is set"),
        Err(e) => e.0,
    };
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].key, "homeserver[0].server_name");
    assert!(
        errs[0]
            .message
            .contains("write your Matrix server name here"),
        "{}",
        errs[0]
    );

    let edited = text.replace("server_name = \"\"", "server_name = \"example.org\"");
    assert_ne!(edited, text);
    let c = parse(&edited, &path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listeners.len(), 6);
    assert_eq!(c.listeners.iter().filter(|l| !l.tls).count(), 2);
    assert_eq!(
        c.metrics.as_ref().map(|m| m.bind.value),
        Some("127.0.0.1:9464".parse().unwrap())
    );
    // Certificates that renew themselves: Let's Encrypt, tls-alpn-01, no files to provide.
    assert!(c.certificates.is_empty(), "{:?}", c.certificates);
    let acme = c.acme.as_ref().expect("the packaged config uses [acme]");
    assert_eq!(acme.directory.value, "letsencrypt");
    assert_eq!(acme.challenge.value, crate::AcmeChallenge::TlsAlpn01);
    assert_eq!(acme.state_dir.value, Path::new("/var/lib/myelin"));
    assert!(acme.email.is_none(), "email stays optional (commented)");
    assert!(acme.dns.is_none() && acme.certificates.is_empty());
    assert!(c.homeservers[0].acme.is_none() && c.homeservers[0].challenge.is_none());

    // The alternative the comments describe: the three [acme] lines commented out, the three
    // [[certificate]] lines uncommented.
    let mut files = String::new();
    for line in edited.lines() {
        let line = if line == "[acme]"
            || line.starts_with("directory = ")
            || line.starts_with("challenge = ")
        {
            format!("# {line}")
        } else if line == "# [[certificate]]"
            || line.starts_with("# cert = ")
            || line.starts_with("# key = ")
        {
            line[2..].to_string()
        } else {
            line.to_string()
        };
        files.push_str(&line);
        files.push('\n');
    }
    let c = parse(&files, &path).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.acme.is_none());
    assert_eq!(c.certificates.len(), 1);
    match &c.certificates[0].source {
        CertificateSource::Files { cert, key } => {
            assert_eq!(cert.value, Path::new("/etc/myelin/tls/fullchain.pem"));
            assert_eq!(key.value, Path::new("/etc/myelin/tls/privkey.pem"));
        }
        other => panic!("expected certificate files, got {other:?}"),
    }
}
