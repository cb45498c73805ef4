//! ACME through the binary, against real Pebble (the CA) and real BIND9 (the DNS): each
//! challenge type, wildcards, SRV delegation, the exec hook, renewal, restarts, a CA that is down
//! and a wrong TSIG key.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use myelin_e2e::client::{self, TlsClient, read_response};
use myelin_e2e::{Bind, Myelin, Pebble, PebbleConfig, TestCa, TestDir, Zone, free_port};
use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};

use crate::common::bin;

/// Zone records for the names the tests certify: IPv4 only, so Pebble dials 127.0.0.1.
const RECORDS: &str = "\
@ IN A 127.0.0.1
matrix IN A 127.0.0.1
alpn IN A 127.0.0.1
renew IN A 127.0.0.1
restart IN A 127.0.0.1
down IN A 127.0.0.1
badkey IN A 127.0.0.1
hook IN A 127.0.0.1
hookfail IN A 127.0.0.1
reload IN A 127.0.0.1
v6 IN A 127.0.0.1
v6 IN AAAA ::1
";

/// Pebble + BIND + the ports Myelin will listen on, for one test.
struct Lab {
    dir: TestDir,
    ca: TestCa,
    dns: Bind,
    pebble: Option<Pebble>,
    pebble_port: u16,
    tls_port: u16,
    http_port: u16,
    tsig_secret: std::path::PathBuf,
    validity: Option<u64>,
    external_account: Option<(String, String)>,
}

impl Lab {
    /// `None` when a peer is missing on a developer machine (skipped; CI fails instead).
    fn new(name: &str, zones: &[Zone], validity: Option<u64>, start_ca: bool) -> Option<Lab> {
        if !(Bind::available() && Pebble::available()) {
            return None;
        }
        let dir = TestDir::new(name);
        let ca = TestCa::new();
        let dns = Bind::start(&dir, zones);
        let tsig_secret = dns.write_secret(&dir, "tsig.secret");
        let mut lab = Lab {
            tls_port: free_port(),
            http_port: free_port(),
            pebble_port: Pebble::reserve_port(),
            dir,
            ca,
            dns,
            pebble: None,
            tsig_secret,
            validity,
            external_account: None,
        };
        if start_ca {
            lab.start_ca();
        }
        Some(lab)
    }

    fn start_ca(&mut self) {
        self.pebble = Some(Pebble::start(
            &self.dir,
            &self.ca,
            PebbleConfig {
                http_port: self.http_port,
                tls_port: self.tls_port,
                dns_server: self.dns.addr(),
                validity_secs: self.validity,
                listen_port: Some(self.pebble_port),
                external_account: self.external_account.clone(),
                wrapper: Vec::new(),
            },
        ));
    }

    fn root(&self) -> String {
        self.pebble.as_ref().expect("pebble runs").root_pem()
    }

    fn state_dir(&self) -> std::path::PathBuf {
        self.dir.join("state")
    }

    /// A configuration: listeners on the lab's ports (`v6`: also on ::1), `[acme]` against
    /// Pebble with `challenge`, `[acme.dns]` on BIND (rfc2136 unless `dns` replaces it), and
    /// `rest` (homeservers, [[acme.certificate]]).
    fn config(&self, challenge: &str, dns: Option<&str>, v6: bool, rest: &str) -> String {
        let v6_listeners = if v6 {
            format!(
                "[[listener]]\nbind = \"[::1]:{tls}\"\n\n[[listener]]\nbind = \"[::1]:{http}\"\ntls = false\nhttps_port = {tls}\n",
                tls = self.tls_port,
                http = self.http_port
            )
        } else {
            String::new()
        };
        let dns = dns.map(str::to_string).unwrap_or_else(|| {
            format!(
                "provider = \"rfc2136\"\nnameserver = \"127.0.0.1:{port}\"\ntsig_key_name = \"acme-key\"\ntsig_algorithm = \"hmac-sha256\"\ntsig_secret_file = \"{secret}\"",
                port = self.dns.port(),
                secret = self.tsig_secret.display()
            )
        });
        format!(
            r#"
[[listener]]
bind = "127.0.0.1:{tls}"

[[listener]]
bind = "127.0.0.1:{http}"
tls = false
https_port = {tls}

{v6_listeners}

[acme]
directory = "https://127.0.0.1:{pebble}/dir"
email = "admin@example.test"
state_dir = "{state}"
challenge = "{challenge}"
ca_roots = "{ca}"
retry_min = "1s"

[acme.dns]
{dns}
propagation_timeout = "20s"
resolvers = ["127.0.0.1:{dns_port}"]
authoritative_port = {dns_port}

{rest}
"#,
            tls = self.tls_port,
            http = self.http_port,
            pebble = self.pebble_port,
            state = self.state_dir().display(),
            ca = self.dir.join("pebble/https-ca.pem").display(),
            dns_port = self.dns.port(),
        )
    }

    fn start_myelin(&self, config: &str) -> Myelin {
        // Pebble's HTTPS CA file is written when Pebble first starts; a test that starts Myelin
        // before the CA writes it itself.
        let ca_file = self.dir.join("pebble/https-ca.pem");
        if !ca_file.exists() {
            self.dir.write("pebble/https-ca.pem", &self.ca.cert_pem);
        }
        Myelin::start(&bin(), &self.dir, config)
    }

    fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tls_port))
    }
}

fn homeserver(server_name: &str, hosts: &[&str], extra: &str) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "[[homeserver]]\nserver_name = \"{server_name}\"\nhosts = [{}]\nupstream = \"http://127.0.0.1:9\"\n{extra}\n",
        hosts.join(", ")
    )
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or("")
}

fn obtained(m: &Myelin, certificate: &str, skip: usize, timeout: Duration) -> Value {
    m.wait_log_after(skip, timeout, |v| {
        message(v).starts_with("certificate obtained") && v["certificate"] == certificate
    })
    .unwrap_or_else(|| {
        panic!(
            "no certificate obtained for {certificate}:\n{}",
            m.log_text()
        )
    })
}

/// Connects with SNI `name`, verifying against `root`; returns the leaf's DER.
async fn verified_leaf(root: &str, addr: SocketAddr, name: &str) -> Vec<u8> {
    let tls = TlsClient::new(root, &["http/1.1"])
        .connect(addr, name)
        .await
        .unwrap_or_else(|e| panic!("TLS to {name} verified against Pebble's root: {e}"));
    tls.get_ref().1.peer_certificates().expect("certificates")[0]
        .as_ref()
        .to_vec()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn no_errors(m: &Myelin) {
    let errors: Vec<Value> = m
        .logs()
        .into_iter()
        .filter(|v| v["level"] == "ERROR")
        .collect();
    assert!(errors.is_empty(), "unexpected errors: {errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_http01_issues_a_certificate_on_ipv4_and_ipv6() {
    let zones = [Zone::new("example.test").records(RECORDS)];
    let Some(lab) = Lab::new("acme-http01", &zones, None, true) else {
        return;
    };
    let started = Instant::now();
    // v6.example.test has an AAAA record: Pebble validates over IPv6, so the [::1] listener
    // must answer; matrix.example.test (A only) is validated over IPv4.
    let config = lab.config(
        "http-01",
        None,
        true,
        &homeserver("matrix.example.test", &["v6.example.test"], ""),
    );
    let m = lab.start_myelin(&config);
    m.wait_log(Duration::from_secs(5), |v| {
        message(v).starts_with("no certificate from the CA yet")
    })
    .expect("the temporary self-signed certificate is logged");
    obtained(&m, "matrix.example.test", 0, Duration::from_secs(30));
    let root = lab.root();
    let a = verified_leaf(&root, lab.tls_addr(), "matrix.example.test").await;
    let b = verified_leaf(&root, lab.tls_addr(), "v6.example.test").await;
    assert_eq!(a, b, "one certificate for the homeserver's names");
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, lab.tls_port));
    assert_eq!(verified_leaf(&root, v6, "v6.example.test").await, a);
    // validations really came over both families
    let challenges: Vec<Value> = m
        .access_log()
        .into_iter()
        .filter(|v| v["route"] == "acme_challenge")
        .collect();
    let peers: Vec<&str> = challenges
        .iter()
        .filter_map(|v| v["peer"].as_str())
        .collect();
    assert!(peers.contains(&"::1"), "IPv6 validation: {challenges:#?}");
    assert!(
        peers.iter().any(|p| p.starts_with("127.")),
        "IPv4 validation: {challenges:#?}"
    );
    assert!(
        challenges.iter().all(|v| v["status"] == 200),
        "{challenges:#?}"
    );
    // state on disk: directory 0700, key material 0600
    let state = lab.state_dir();
    assert_eq!(mode(&state), 0o700);
    assert_eq!(
        mode(&state.join("certificates/matrix.example.test.pem")),
        0o600
    );
    let accounts: Vec<_> = std::fs::read_dir(state.join("accounts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(accounts.len(), 1);
    assert_eq!(mode(&accounts[0]), 0o600);
    // an unknown token is a 404, answered by Myelin itself on the plain listener
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", lab.http_port))
        .await
        .unwrap();
    s.write_all(&client::get(
        "/.well-known/acme-challenge/nope",
        "matrix.example.test",
    ))
    .await
    .unwrap();
    let r = read_response(&mut BufReader::new(s)).await.unwrap();
    assert_eq!(r.status, 404);
    no_errors(&m);
    eprintln!("http-01 issuance took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_tls_alpn01_issues_a_certificate() {
    let zones = [Zone::new("example.test").records(RECORDS)];
    let Some(lab) = Lab::new("acme-alpn", &zones, None, true) else {
        return;
    };
    let config = lab.config(
        "tls-alpn-01",
        None,
        false,
        &homeserver("alpn.example.test", &[], ""),
    );
    let m = lab.start_myelin(&config);
    // before the CA answers: the temporary certificate, which Pebble's root does not verify
    let early = TlsClient::new(&lab.ca.cert_pem, &["http/1.1"])
        .connect(lab.tls_addr(), "alpn.example.test")
        .await;
    assert!(early.is_err(), "the temporary certificate is self-signed");
    obtained(&m, "alpn.example.test", 0, Duration::from_secs(30));
    let leaf = verified_leaf(&lab.root(), lab.tls_addr(), "alpn.example.test").await;
    let orders = m
        .logs()
        .iter()
        .filter(|v| message(v) == "order placed")
        .count();
    assert_eq!(orders, 1);
    // a SIGHUP reload rebuilds the certificate map: the ACME certificate stays in it
    assert!(m.reload(None));
    assert_eq!(
        verified_leaf(&lab.root(), lab.tls_addr(), "alpn.example.test").await,
        leaf
    );
    // a homeserver added by reload gets its certificate without a restart; the first one is
    // taken from the state, not ordered again
    let skip = m.logs().len();
    let more = format!("{config}\n{}", homeserver("reload.example.test", &[], ""));
    assert!(m.reload(Some(&more)));
    obtained(&m, "reload.example.test", skip, Duration::from_secs(30));
    verified_leaf(&lab.root(), lab.tls_addr(), "reload.example.test").await;
    assert_eq!(
        verified_leaf(&lab.root(), lab.tls_addr(), "alpn.example.test").await,
        leaf
    );
    let orders = m
        .logs()
        .iter()
        .filter(|v| message(v) == "order placed")
        .count();
    assert_eq!(orders, 2, "{}", m.log_text());
    no_errors(&m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_external_account_binding() {
    let zones = [Zone::new("example.test").records(RECORDS)];
    let Some(mut lab) = Lab::new("acme-eab", &zones, None, false) else {
        return;
    };
    let key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    lab.external_account = Some(("kid-1".into(), key.into()));
    lab.start_ca();
    let key_file = lab.dir.write("eab.key", format!("{key}\n"));
    let config = lab
        .config(
            "tls-alpn-01",
            None,
            false,
            &homeserver("alpn.example.test", &[], ""),
        )
        .replace(
            "retry_min = \"1s\"",
            &format!(
                "retry_min = \"1s\"\neab_kid = \"kid-1\"\neab_hmac_key_file = \"{}\"",
                key_file.display()
            ),
        );
    let m = lab.start_myelin(&config);
    obtained(&m, "alpn.example.test", 0, Duration::from_secs(30));
    verified_leaf(&lab.root(), lab.tls_addr(), "alpn.example.test").await;
    no_errors(&m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_two_processes_on_one_state_dir_order_once() {
    let zones = [Zone::new("example.test").records(RECORDS)];
    let Some(lab) = Lab::new("acme-lock", &zones, None, true) else {
        return;
    };
    let config = lab.config(
        "dns-01",
        None,
        false,
        &homeserver("matrix.example.test", &[], ""),
    );
    let other_dir = TestDir::new("acme-lock-b");
    // B: same [acme] and state_dir, its own listeners
    let other_config = config
        .replace(
            &format!("bind = \"127.0.0.1:{}\"", lab.tls_port),
            "bind = \"127.0.0.1:0\"",
        )
        .replace(
            &format!("bind = \"127.0.0.1:{}\"", lab.http_port),
            "bind = \"127.0.0.2:0\"",
        );
    let a = lab.start_myelin(&config);
    let b = Myelin::start(&bin(), &other_dir, &other_config);
    let a_got = a.wait_log(Duration::from_secs(30), |v| {
        message(v).starts_with("certificate obtained")
            || message(v).starts_with("another process stored")
    });
    let b_got = b.wait_log(Duration::from_secs(30), |v| {
        message(v).starts_with("certificate obtained")
            || message(v).starts_with("another process stored")
    });
    let (a_got, b_got) = (a_got.expect("A serves it"), b_got.expect("B serves it"));
    let orders = |m: &Myelin| {
        m.logs()
            .iter()
            .filter(|v| message(v) == "order placed")
            .count()
    };
    assert_eq!(
        orders(&a) + orders(&b),
        1,
        "one order for both:\nA: {}\nB: {}",
        a.log_text(),
        b.log_text()
    );
    assert_ne!(message(&a_got), message(&b_got));
    let root = lab.root();
    let b_addr = b.addr("127.0.0.1:0");
    assert_eq!(
        verified_leaf(&root, lab.tls_addr(), "matrix.example.test").await,
        verified_leaf(&root, b_addr, "matrix.example.test").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_dns01_rfc2136_wildcard_srv_delegation_and_cname() {
    // example.test points elsewhere (SRV delegation: only DNS-01 can prove control);
    // _acme-challenge.matrix is a CNAME into a separate zone that takes the updates.
    let records = format!(
        "{}\n@ IN A 192.0.2.10\n_matrix-fed._tcp IN SRV 10 5 8448 matrix.example.test.\n_acme-challenge.matrix IN CNAME matrix.acme-delegated.test.\n",
        RECORDS.replace("@ IN A 127.0.0.1\n", "")
    );
    let zones = [
        Zone::new("example.test").records(&records),
        Zone::new("acme-delegated.test"),
    ];
    let Some(lab) = Lab::new("acme-dns01", &zones, None, true) else {
        return;
    };
    let started = Instant::now();
    let rest = format!(
        "{}\n[[acme.certificate]]\nnames = [\"*.wild.example.test\", \"wild.example.test\"]\n",
        homeserver(
            "example.test",
            &["matrix.example.test"],
            "challenge = \"dns-01\""
        )
    );
    let config = lab.config("dns-01", None, false, &rest);
    let m = lab.start_myelin(&config);
    obtained(&m, "example.test", 0, Duration::from_secs(40));
    obtained(&m, "*.wild.example.test", 0, Duration::from_secs(40));
    let root = lab.root();
    let apex = verified_leaf(&root, lab.tls_addr(), "example.test").await;
    assert_eq!(
        verified_leaf(&root, lab.tls_addr(), "matrix.example.test").await,
        apex
    );
    let wild = verified_leaf(&root, lab.tls_addr(), "anything.wild.example.test").await;
    assert_eq!(
        verified_leaf(&root, lab.tls_addr(), "wild.example.test").await,
        wild
    );
    assert_ne!(apex, wild);
    // the CNAME was followed: the record went to the delegated zone
    assert!(
        m.logs().iter().any(|v| message(v) == "DNS update accepted"
            && v["record"] == "matrix.acme-delegated.test."
            && v["zone"] == "acme-delegated.test."),
        "{}",
        m.log_text()
    );
    assert!(
        m.logs()
            .iter()
            .any(|v| message(v) == "TXT record visible at every authoritative server"),
    );
    // every record is removed after validation
    for name in [
        "_acme-challenge.example.test",
        "matrix.acme-delegated.test",
        "_acme-challenge.wild.example.test",
    ] {
        assert!(
            myelin_e2e::wait_until(Duration::from_secs(5), || lab.dns.txt(name).is_empty()),
            "{name} still has {:?}",
            lab.dns.txt(name)
        );
    }
    no_errors(&m);
    eprintln!(
        "dns-01 issuance (2 certificates, 4 names) took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_dns01_exec_hook_publishes_and_its_failures_are_logged() {
    let zones = [Zone::new("example.test").records(RECORDS)];
    let Some(lab) = Lab::new("acme-exec", &zones, None, true) else {
        return;
    };
    if !myelin_e2e::peers::require("nsupdate", myelin_e2e::peers::has_program("nsupdate")) {
        return;
    }
    // The hook publishes through nsupdate with the zone's key, and records its calls; for
    // hookfail.* it fails the way a broken API client would.
    let calls = lab.dir.join("hook-calls.txt");
    let script = lab.dir.write(
        "dns-hook.sh",
        format!(
            r#"#!/bin/sh
set -eu
action=$1 fqdn=$2 value=$3
echo "$action $fqdn $value" >> '{calls}'
case "$fqdn" in
  *hookfail*) echo "hook: API token rejected for $fqdn" >&2; exit 7 ;;
esac
if [ "$action" = present ]; then op=add; ttl=60; else op=delete; ttl=""; fi
nsupdate -y '{key}' <<EOF
server 127.0.0.1 {port}
update $op $fqdn $ttl TXT "$value"
send
EOF
"#,
            calls = calls.display(),
            key = lab.dns.nsupdate_key(),
            port = lab.dns.port(),
        ),
    );
    myelin_e2e::bind::set_mode(&script, 0o755);
    let dns = format!("provider = \"exec\"\ncommand = [\"{}\"]", script.display());
    let rest = format!(
        "{}\n[[acme.certificate]]\nnames = [\"hookfail.example.test\"]\n",
        homeserver("hook.example.test", &[], "")
    );
    let config = lab.config("dns-01", Some(&dns), false, &rest);
    let mut m = lab.start_myelin(&config);
    obtained(&m, "hook.example.test", 0, Duration::from_secs(30));
    verified_leaf(&lab.root(), lab.tls_addr(), "hook.example.test").await;
    let failed = m
        .wait_log(Duration::from_secs(30), |v| {
            message(v).starts_with("could not obtain a certificate")
                && v["certificate"] == "hookfail.example.test"
        })
        .expect("the failing hook is reported");
    let error = failed["error"].as_str().unwrap_or("");
    assert!(error.contains("exit status 7"), "{error}");
    assert!(
        error.contains("API token rejected"),
        "stderr in the log: {error}"
    );
    let text = std::fs::read_to_string(&calls).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let present = lines
        .iter()
        .find(|l| l.starts_with("present _acme-challenge.hook.example.test. "))
        .unwrap_or_else(|| panic!("hook calls: {text}"));
    let value = present.rsplit(' ').next().unwrap();
    assert_eq!(value.len(), 43, "base64url SHA-256 digest: {value}");
    assert!(
        lines.contains(&format!("cleanup _acme-challenge.hook.example.test. {value}").as_str()),
        "cleanup after validation: {text}"
    );
    assert!(lab.dns.txt("_acme-challenge.hook.example.test").is_empty());
    assert!(m.is_running(), "a failing hook does not stop the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_renews_short_lived_certificates_without_dropping_connections() {
    let zones = [Zone::new("example.test").records(RECORDS)];
    let Some(lab) = Lab::new("acme-renew", &zones, Some(12), true) else {
        return;
    };
    let config = lab.config(
        "tls-alpn-01",
        None,
        false,
        &homeserver("renew.example.test", &[], ""),
    );
    let m = lab.start_myelin(&config);
    let first = obtained(&m, "renew.example.test", 0, Duration::from_secs(30));
    let root = lab.root();
    let client = TlsClient::new(&root, &["http/1.1"]);
    let before = client
        .connect(lab.tls_addr(), "renew.example.test")
        .await
        .unwrap();
    let old_leaf = before.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec();
    let mut before = BufReader::new(before);
    let skip = m
        .logs()
        .iter()
        .position(|v| *v == first)
        .map_or(0, |i| i + 1);
    // 12-second certificates renew when a third of the lifetime is left: ~8 s later
    let renewed = obtained(&m, "renew.example.test", skip, Duration::from_secs(30));
    assert_ne!(first["not_after"], renewed["not_after"]);
    let new_leaf = verified_leaf(&root, lab.tls_addr(), "renew.example.test").await;
    assert_ne!(
        old_leaf, new_leaf,
        "a new handshake sees the renewed certificate"
    );
    // the connection opened before the renewal still works
    before
        .get_mut()
        .write_all(
            b"GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: renew.example.test\r\n\r\n",
        )
        .await
        .unwrap();
    let r = read_response(&mut before).await.unwrap();
    assert_eq!(r.status, 404);
    no_errors(&m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_restart_reuses_stored_certificates_without_a_new_order() {
    let zones = [Zone::new("example.test").records(RECORDS)];
    let Some(mut lab) = Lab::new("acme-restart", &zones, None, true) else {
        return;
    };
    let config = lab.config(
        "tls-alpn-01",
        None,
        false,
        &homeserver("restart.example.test", &[], ""),
    );
    let mut m = lab.start_myelin(&config);
    obtained(&m, "restart.example.test", 0, Duration::from_secs(30));
    let root = lab.root();
    let leaf = verified_leaf(&root, lab.tls_addr(), "restart.example.test").await;
    assert!(m.terminate(Duration::from_secs(10)).is_some());
    drop(m);
    // the CA is gone: a restart must not need it
    lab.pebble.as_mut().unwrap().stop();
    let m = lab.start_myelin(&config);
    m.wait_log(Duration::from_secs(5), |v| {
        message(v) == "serving the stored ACME certificate" && v["complete"] == true
    })
    .unwrap_or_else(|| panic!("{}", m.log_text()));
    assert_eq!(
        verified_leaf(&root, lab.tls_addr(), "restart.example.test").await,
        leaf
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !m.logs()
            .iter()
            .any(|v| message(v) == "ordering a certificate"),
        "no order on restart:\n{}",
        m.log_text()
    );
    no_errors(&m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_ca_down_at_start_is_retried_until_it_comes_back() {
    let zones = [Zone::new("example.test").records(RECORDS)];
    let Some(mut lab) = Lab::new("acme-down", &zones, None, false) else {
        return;
    };
    let config = lab.config(
        "http-01",
        None,
        false,
        &homeserver("down.example.test", &[], ""),
    );
    let m = lab.start_myelin(&config);
    let failed = m
        .wait_log(Duration::from_secs(20), |v| {
            message(v).starts_with("could not obtain a certificate") && v["attempt"] == 2
        })
        .unwrap_or_else(|| panic!("two failed attempts:\n{}", m.log_text()));
    let error = failed["error"].as_str().unwrap_or("");
    assert!(
        error.contains("127.0.0.1") && error.to_lowercase().contains("connect"),
        "the error names the CA and says it cannot connect: {error}"
    );
    // still serving (the temporary certificate) while the CA is down
    assert!(
        TlsClient::new(&lab.ca.cert_pem, &["http/1.1"])
            .connect(lab.tls_addr(), "down.example.test")
            .await
            .is_err()
    );
    lab.start_ca();
    obtained(&m, "down.example.test", 0, Duration::from_secs(30));
    verified_leaf(&lab.root(), lab.tls_addr(), "down.example.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_wrong_tsig_key_is_a_clear_error_and_nothing_is_half_written() {
    let zones = [Zone::new("example.test").records(RECORDS)];
    let Some(lab) = Lab::new("acme-badkey", &zones, None, true) else {
        return;
    };
    lab.dir.write(
        "tsig.secret",
        "d3JvbmcgYnV0IHdlbGwtZm9ybWVkIHNlY3JldCEhIQ==\n",
    );
    let config = lab.config(
        "dns-01",
        None,
        false,
        &homeserver("badkey.example.test", &[], ""),
    );
    let mut m = lab.start_myelin(&config);
    let failed = m
        .wait_log(Duration::from_secs(20), |v| {
            message(v).starts_with("could not obtain a certificate")
        })
        .unwrap_or_else(|| panic!("{}", m.log_text()));
    let error = failed["error"].as_str().unwrap_or("");
    assert!(error.contains("rejected the TSIG signature"), "{error}");
    assert!(
        error.contains("tsig_key_name"),
        "says what to check: {error}"
    );
    assert!(
        error.contains(&format!("127.0.0.1:{}", lab.dns.port())),
        "{error}"
    );
    // nothing half-written: no certificate or key on disk, no record in the zone
    let certs: Vec<_> = std::fs::read_dir(lab.state_dir().join("certificates"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(certs.is_empty(), "{certs:?}");
    assert!(
        lab.dns
            .txt("_acme-challenge.badkey.example.test")
            .is_empty()
    );
    assert!(
        lab.dns.log().contains("tsig verify failure (BADSIG)"),
        "{}",
        lab.dns.log()
    );
    assert!(m.is_running(), "a DNS failure does not stop the proxy");
}

#[test]
fn acme_config_errors_are_named_before_anything_starts() {
    let dir = TestDir::new("acme-config");
    let base = |acme: &str| {
        format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[acme]\n{acme}\n\n[[homeserver]]\nserver_name = \"example.test\"\nupstream = \"http://127.0.0.1:9\"\n"
        )
    };
    let cases: &[(&str, &str)] = &[
        (
            "directory = \"letsencrypt-prod\"\nstate_dir = \"/tmp/x\"",
            "acme.directory: unknown ACME directory \"letsencrypt-prod\"",
        ),
        (
            "state_dir = \"/tmp/x\"\nchallenge = \"dns-01\"\n[acme.dns]\nprovider = \"rfc2136\"\nnameserver = \"127.0.0.1:53\"\ntsig_key_name = \"k\"\ntsig_secret_file = \"/nonexistent/tsig.secret\"",
            "acme.dns.tsig_secret_file: /nonexistent/tsig.secret: cannot read the TSIG secret",
        ),
        (
            "state_dir = \"/tmp/x\"\nchallenge = \"dns-01\"",
            "acme.challenge: dns-01 needs an [acme.dns] section",
        ),
        (
            "state_dir = \"/tmp/x\"\n[acme.dns]\nprovider = \"route53\"",
            "acme.dns.provider: unknown DNS provider \"route53\"",
        ),
        (
            "state_dir = \"/tmp/x\"\nchallenge = \"tls-alpn-01\"\n[[acme.certificate]]\nnames = [\"*.example.test\"]",
            "needs challenge = \"dns-01\"",
        ),
    ];
    for (i, (acme, expected)) in cases.iter().enumerate() {
        let path = dir.write(&format!("c{i}.toml"), base(acme));
        let (code, _out, err) = myelin_e2e::myelin::check_config(&bin(), &path);
        assert_eq!(code, 64, "{acme}\n{err}");
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
        assert!(err.contains(&format!("c{i}.toml:")), "file:line:col: {err}");
    }
}
