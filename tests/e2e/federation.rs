//! The federation proof (issue 8): two real Synapse homeservers, `a.test` and `b.test`, each
//! behind its own Myelin (the real binary), federate through them in every delegation mode,
//! with certificates Myelin obtained itself from Pebble by ACME.
//!
//! One private network namespace per scenario holds the whole world, each "host" on its own
//! loopback address, so the spec's ports (443, 8448, 80 for HTTP-01, 53 for DNS) are the real
//! ones:
//!
//! | address   | what                                                                        |
//! |-----------|-----------------------------------------------------------------------------|
//! | 127.0.0.1 | BIND9, authoritative for `test.` and the namespace's resolver; Pebble; both Synapses (plain HTTP, each on its own port) |
//! | 127.0.0.2 | Myelin A: `a.test` and `matrix.a.test` on 443 (+ 80)                          |
//! | 127.0.0.3 | `b.test` (and `matrix.b.test`): Myelin B on 443 when B serves a well-known     |
//! | 127.0.0.4 | `fed.b.test`, the SRV target: Myelin B on 8448                               |
//!
//! A always delegates by well-known with a port (`{"m.server": "matrix.a.test:443"}`,
//! certificates by TLS-ALPN-01), so B → A traffic runs that mode in every scenario; each scenario
//! chooses how B delegates. A user on A creates a room and invites a user on B (A → B), B joins
//! (B → A), each sends a message and each sees the other's by /sync (matrix-nio, through the
//! Myelins). Then `myelin check` must say OK for both server names. The negative scenario has
//! the SRV host present a certificate for its own name, and asserts that nothing crosses, why
//! (Synapse's log), and that `myelin check` says so.
//!
//! Synapse caches well-known answers and backs off from failing servers, so every scenario has
//! fresh databases, and federation starts only once both Myelins hold their certificates.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use myelin_e2e::netns::Netns;
use myelin_e2e::peers::{has_python_module, require};
use myelin_e2e::synapse::{self, Synapse, SynapseOptions, nio_flow_in};
use myelin_e2e::{Bind, Myelin, Pebble, PebbleConfig, TestCa, TestDir, Zone, run_bounded};
use serde_json::Value;

use crate::common::{bin, working_addresses};

const DNS_IP: &str = "127.0.0.1";
const A_IP: &str = "127.0.0.2";
const B_IP: &str = "127.0.0.3";
const B_SRV_IP: &str = "127.0.0.4";

/// How B delegates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BMode {
    /// 1. Like A: well-known with a port (`matrix.b.test:443`); certificates by HTTP-01.
    WellKnownWithPort,
    /// 2. SRV only: `_matrix-fed._tcp.b.test` → `fed.b.test:8448`, nothing on `b.test`;
    ///    the certificate for `b.test` by DNS-01 (RFC 2136 to BIND).
    SrvOnly,
    /// 3. Well-known without a port (`matrix.b.test`) plus `_matrix-fed._tcp.matrix.b.test` →
    ///    `fed.b.test:8448`; certificates by TLS-ALPN-01.
    WellKnownThenSrv,
    /// 4. SRV only, but the SRV host presents a certificate for `fed.b.test` (by HTTP-01), its
    ///    own name, instead of `b.test`.
    SrvWrongCertificate,
}

impl BMode {
    /// B's records in the `test.` zone (A's are the same in every scenario).
    fn records(self) -> &'static str {
        match self {
            BMode::WellKnownWithPort => "matrix.b A 127.0.0.3",
            BMode::SrvOnly | BMode::SrvWrongCertificate => {
                "_matrix-fed._tcp.b SRV 10 5 8448 fed.b.test."
            }
            // matrix.b.test's own address has nothing on 8448: only the SRV record leads to B
            BMode::WellKnownThenSrv => {
                "matrix.b A 127.0.0.3\n_matrix-fed._tcp.matrix.b SRV 10 5 8448 fed.b.test."
            }
        }
    }

    /// Where B's users reach their homeserver (through Myelin B).
    fn client_url(self) -> &'static str {
        match self {
            BMode::WellKnownWithPort | BMode::WellKnownThenSrv => "https://matrix.b.test",
            BMode::SrvOnly | BMode::SrvWrongCertificate => "https://fed.b.test:8448",
        }
    }

    /// The certificate Myelin B obtains (its first name, as the log names it).
    fn certificate(self) -> &'static str {
        match self {
            BMode::SrvWrongCertificate => "fed.b.test",
            _ => "b.test",
        }
    }

    /// The `Host` (without port) and listener other servers' federation requests reach B by.
    fn federation_entry(self) -> (&'static str, &'static str) {
        match self {
            BMode::WellKnownWithPort => ("matrix.b.test", "127.0.0.3:443"),
            BMode::SrvOnly | BMode::SrvWrongCertificate => ("b.test", "127.0.0.4:8448"),
            BMode::WellKnownThenSrv => ("matrix.b.test", "127.0.0.4:8448"),
        }
    }
}

/// One scenario's world. Fields drop in order: processes first, the namespace last.
struct World {
    myelin_a: Myelin,
    myelin_b: Myelin,
    synapse_a: Synapse,
    synapse_b: Synapse,
    _pebble: Pebble,
    bind: Bind,
    /// Pebble's root and intermediate in one file (for clients and `myelin check`).
    ca_bundle: PathBuf,
    mode: BMode,
    b_dir: TestDir,
    _dir: TestDir,
    ns: Netns,
}

impl World {
    /// Builds the world for `mode`; `None` when a peer is missing on a developer machine (under
    /// CI that fails instead).
    fn start(tag: &str, mode: BMode) -> Option<World> {
        let peers = require(
            "root with iproute2 (network namespaces)",
            Netns::available(),
        ) && Bind::available()
            && Pebble::available()
            && require(
                "Synapse and matrix-nio (tests/setup)",
                synapse::available() && has_python_module("nio"),
            );
        if !peers {
            return None;
        }
        let started = Instant::now();
        let ns = Netns::create(tag);
        ns.set_resolver(DNS_IP.parse().unwrap());
        let wrapper = ns.wrapper();
        let dir = TestDir::new(&format!("federation-{tag}"));

        // Only A records: Pebble would validate over IPv6 for a name with AAAA.
        let zone = Zone::new("test")
            .records("a A 127.0.0.2\nmatrix.a A 127.0.0.2\nb A 127.0.0.3\nfed.b A 127.0.0.4")
            .records(mode.records());
        let bind = Bind::start_at(
            &dir,
            format!("{DNS_IP}:53").parse().unwrap(),
            &[zone],
            &wrapper,
        );
        let tsig_secret = bind.write_secret(&dir, "tsig.secret");

        let https_ca = TestCa::new();
        let pebble = Pebble::start(
            &dir,
            &https_ca,
            PebbleConfig {
                http_port: 80,
                tls_port: 443,
                dns_server: bind.addr(),
                validity_secs: None,
                listen_port: None,
                external_account: None,
                wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
            },
        );
        // Synapse reads one certificate per file of federation_custom_ca_list.
        let (root, intermediate) = (pebble.root_pem(), pebble.intermediate_pem());
        let root_path = dir.write("pebble-root.pem", &root);
        let intermediate_path = dir.write("pebble-intermediate.pem", &intermediate);
        let ca_bundle = dir.write("pebble-roots.pem", format!("{root}{intermediate}"));

        let a_dir = dir.sub("a");
        let b_dir = dir.sub("b");
        let (a_port, b_port) = (myelin_e2e::free_port(), myelin_e2e::free_port());
        let config_a = a_config(&acme_section(&pebble, &a_dir, "a.test"), a_port);
        let config_b = b_config(
            mode,
            &acme_section(&pebble, &b_dir, "b.test"),
            b_port,
            &tsig_secret,
        );
        let myelin_a = Myelin::start_wrapped(&bin(), &a_dir, &config_a, &[], &wrapper);
        let myelin_b = Myelin::start_wrapped(&bin(), &b_dir, &config_b, &[], &wrapper);

        let ca_list = format!(
            "federation_custom_ca_list:\n  - \"{}\"\n  - \"{}\"\nfederation_verify_certificates: true\n\
             ip_range_blacklist: []\nfederation_ip_range_blacklist: []\n",
            root_path.display(),
            intermediate_path.display()
        );
        let b_baseurl = format!("{}/", mode.client_url());
        let (synapse_a, synapse_b) = std::thread::scope(|s| {
            let a = s.spawn(|| {
                Synapse::start(
                    &dir,
                    SynapseOptions {
                        server_name: "a.test",
                        public_baseurl: "https://matrix.a.test/",
                        port: Some(a_port),
                        extra_yaml: &ca_list,
                        wrapper: &wrapper,
                        ..Default::default()
                    },
                )
            });
            let b = Synapse::start(
                &dir,
                SynapseOptions {
                    server_name: "b.test",
                    public_baseurl: &b_baseurl,
                    port: Some(b_port),
                    extra_yaml: &ca_list,
                    wrapper: &wrapper,
                    ..Default::default()
                },
            );
            (a.join().expect("Synapse A starts"), b)
        });
        std::thread::scope(|s| {
            s.spawn(|| {
                synapse_a
                    .register(&synapse_a.url(), "alice", "alice-password", false, None)
                    .expect("register alice on A")
            });
            synapse_b
                .register(&synapse_b.url(), "bob", "bob-password", false, None)
                .expect("register bob on B");
        });
        for (m, name) in [(&myelin_a, "a.test"), (&myelin_b, mode.certificate())] {
            m.wait_log(Duration::from_secs(30), |v| {
                v["message"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("certificate obtained"))
                    && v["certificate"] == name
            })
            .unwrap_or_else(|| panic!("no certificate for {name}:\n{}", m.log_text()));
        }
        eprintln!("{tag}: world ready in {:?}", started.elapsed());
        Some(World {
            myelin_a,
            myelin_b,
            synapse_a,
            synapse_b,
            _pebble: pebble,
            bind,
            ca_bundle,
            mode,
            b_dir,
            _dir: dir,
            ns,
        })
    }

    /// The matrix-nio flow between alice on A and bob on B, inside the namespace.
    /// `blocked`: federation A → B must fail, and B must see nothing for that long.
    fn federate(&self, blocked: Option<u64>) -> (bool, String) {
        let bundle = self.ca_bundle.display().to_string();
        let blocked = blocked.map(|s| s.to_string());
        let mut args = vec![
            "federate",
            "--a",
            "https://matrix.a.test",
            "alice",
            "alice-password",
            "--b",
            self.mode.client_url(),
            "bob",
            "bob-password",
            "--cafile",
            &bundle,
            "--timeout",
            "30",
        ];
        if let Some(s) = &blocked {
            args.extend(["--expect-blocked", s]);
        }
        let started = Instant::now();
        let (ok, out) = nio_flow_in(&self.ns.wrapper(), &args, &[], Duration::from_secs(120));
        eprintln!("nio federate ({:?}): {out}", started.elapsed());
        (ok, out)
    }

    /// `myelin check NAME --json` inside the namespace (its resolver: BIND), trusting Pebble's
    /// root: exit code and report.
    fn check(&self, name: &str) -> (i32, Value) {
        let mut cmd = self.ns.command(bin());
        cmd.args(["check", name, "--json", "--timeout", "30", "--ca-file"])
            .arg(&self.ca_bundle)
            .stdin(Stdio::null());
        let started = Instant::now();
        let (code, out, err) = run_bounded(cmd, Duration::from_secs(60));
        eprintln!(
            "myelin check {name}: exit {code} in {:?}",
            started.elapsed()
        );
        let report: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}\n{err}\n{}", self.bind.log()));
        (code, report)
    }

    /// `myelin check --config` on B's configuration (no network): exit code and report.
    fn check_b_config(&self) -> (i32, Value) {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["check", "--json", "--config"])
            .arg(self.b_dir.join("myelin.toml"))
            .stdin(Stdio::null());
        let (code, out, err) = run_bounded(cmd, Duration::from_secs(30));
        let report: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}\n{err}"));
        (code, report)
    }

    /// Both servers check OK: exit 0, federation works, through the address the mode says.
    fn assert_checks_ok(&self) {
        let b_addr = self.mode.federation_entry().1;
        for (name, addr, cert_name) in [
            ("a.test", "127.0.0.2:443", "matrix.a.test"),
            ("b.test", b_addr, self.b_certificate_name()),
        ] {
            let (code, report) = self.check(name);
            assert_eq!(code, 0, "myelin check {name}:\n{report:#}");
            assert_eq!(report["federation"], "works", "{report:#}");
            assert_eq!(
                report["resolution"]["certificate_name"], cert_name,
                "{report:#}"
            );
            assert_eq!(working_addresses(&report), [addr], "{report:#}");
        }
    }

    /// The name other servers verify B's certificate for.
    fn b_certificate_name(&self) -> &'static str {
        match self.mode {
            BMode::WellKnownWithPort | BMode::WellKnownThenSrv => "matrix.b.test",
            BMode::SrvOnly | BMode::SrvWrongCertificate => "b.test",
        }
    }

    /// Federation requests Myelin `m` forwarded: (method path, host, listener, status).
    fn federation_requests(m: &Myelin) -> Vec<(String, String, String, u64)> {
        m.access_log()
            .iter()
            .filter(|v| {
                v["path"].as_str().is_some_and(|p| {
                    p.starts_with("/_matrix/federation/") || p.starts_with("/_matrix/key/")
                })
            })
            .map(|v| {
                (
                    format!(
                        "{} {}",
                        v["method"].as_str().unwrap_or(""),
                        v["path"].as_str().unwrap_or("")
                    ),
                    v["host"].as_str().unwrap_or("").to_string(),
                    v["listener"].as_str().unwrap_or("").to_string(),
                    v["status"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// What crossed, proven from both Myelins' access logs: A's invite reached B by the entry
    /// B's mode prescribes, B's join reached A as `matrix.a.test` on 443, and B's Synapse read
    /// A's well-known from Myelin A.
    fn assert_traffic_went_through_both_myelins(&self) {
        let (b_host, b_listener) = self.mode.federation_entry();
        let to_b = Self::federation_requests(&self.myelin_b);
        assert!(
            to_b.iter().any(|(req, host, listener, status)| req
                .starts_with("PUT /_matrix/federation/v2/invite/")
                && host == b_host
                && listener == b_listener
                && *status == 200),
            "A's invite did not reach B as {b_host} on {b_listener}: {to_b:#?}"
        );
        assert!(
            to_b.iter()
                .all(|(_, host, listener, _)| host == b_host && listener == b_listener),
            "federation reached B by another way than {b_host} on {b_listener}: {to_b:#?}"
        );
        let to_a = Self::federation_requests(&self.myelin_a);
        for endpoint in [
            "GET /_matrix/federation/v1/make_join/",
            "PUT /_matrix/federation/v2/send_join/",
        ] {
            assert!(
                to_a.iter()
                    .any(|(req, host, listener, status)| req.starts_with(endpoint)
                        && host == "matrix.a.test"
                        && listener == "127.0.0.2:443"
                        && *status == 200),
                "B's join ({endpoint}) did not reach A as matrix.a.test on 443: {to_a:#?}"
            );
        }
        let well_known = self.myelin_a.access_log().into_iter().any(|v| {
            v["path"] == "/.well-known/matrix/server" && v["host"] == "a.test" && v["status"] == 200
        });
        assert!(
            well_known,
            "B never read A's well-known:\n{}",
            self.myelin_a.log_text()
        );
    }
}

/// `[acme]` against this scenario's Pebble, state in `<dir>/acme`; default challenge
/// tls-alpn-01 (each configuration overrides it where its mode needs another).
fn acme_section(pebble: &Pebble, dir: &TestDir, domain: &str) -> String {
    format!(
        "[acme]\ndirectory = \"https://127.0.0.1:{port}/dir\"\nemail = \"admin@{domain}\"\n\
         state_dir = \"{state}\"\nchallenge = \"tls-alpn-01\"\nca_roots = \"{ca}\"\nretry_min = \"1s\"\n",
        port = pebble.port,
        state = dir.join("acme").display(),
        ca = pebble.https_ca.display(),
    )
}

/// Myelin A's configuration, the same in every scenario: a.test and matrix.a.test on
/// 127.0.0.2:443, the well-known delegating to matrix.a.test:443, certificates by TLS-ALPN-01.
fn a_config(acme: &str, upstream_port: u16) -> String {
    format!(
        "[[listener]]\nbind = \"{A_IP}:443\"\n\n[[listener]]\nbind = \"{A_IP}:80\"\ntls = false\n\n{acme}\n\
         [[homeserver]]\nserver_name = \"a.test\"\nhosts = [\"matrix.a.test\"]\nupstream = \"http://127.0.0.1:{upstream_port}\"\n\
         [homeserver.well_known]\nserver = \"matrix.a.test:443\"\nclient_base_url = \"https://matrix.a.test\"\n"
    )
}

/// Myelin B's configuration for `mode`: `acme` is the `[acme]` section, `upstream_port`
/// Synapse B's port, `tsig_secret` the key file for RFC 2136.
fn b_config(mode: BMode, acme: &str, upstream_port: u16, tsig_secret: &std::path::Path) -> String {
    let upstream = format!("upstream = \"http://127.0.0.1:{upstream_port}\"");
    match mode {
        BMode::WellKnownWithPort => format!(
            "[[listener]]\nbind = \"{B_IP}:443\"\n\n[[listener]]\nbind = \"{B_IP}:80\"\ntls = false\n\n{acme}\n\
             [[homeserver]]\nserver_name = \"b.test\"\nhosts = [\"matrix.b.test\"]\n{upstream}\nchallenge = \"http-01\"\n\
             [homeserver.well_known]\nserver = \"matrix.b.test:443\"\nclient_base_url = \"https://matrix.b.test\"\n"
        ),
        // b.test points elsewhere (nothing answers there): only DNS-01 can certify it here
        BMode::SrvOnly => format!(
            "[[listener]]\nbind = \"{B_SRV_IP}:8448\"\n\n{acme}\n\
             [acme.dns]\nprovider = \"rfc2136\"\nnameserver = \"{DNS_IP}:53\"\ntsig_key_name = \"{key}\"\n\
             tsig_algorithm = \"hmac-sha256\"\ntsig_secret_file = \"{secret}\"\npropagation_timeout = \"20s\"\n\n\
             [[homeserver]]\nserver_name = \"b.test\"\nhosts = [\"fed.b.test\"]\n{upstream}\nchallenge = \"dns-01\"\n",
            key = myelin_e2e::bind::TSIG_KEY_NAME,
            secret = tsig_secret.display(),
        ),
        // one Myelin on two hosts: the well-known and clients on b.test / matrix.b.test:443,
        // federation on the SRV target fed.b.test:8448
        BMode::WellKnownThenSrv => format!(
            "[[listener]]\nbind = \"{B_IP}:443\"\n\n[[listener]]\nbind = \"{B_SRV_IP}:8448\"\n\n{acme}\n\
             [[homeserver]]\nserver_name = \"b.test\"\nhosts = [\"matrix.b.test\"]\n{upstream}\n\
             [homeserver.well_known]\nserver = \"matrix.b.test\"\nclient_base_url = \"https://matrix.b.test\"\n"
        ),
        // the classic mistake: the SRV host certifies only its own name
        BMode::SrvWrongCertificate => format!(
            "[[listener]]\nbind = \"{B_SRV_IP}:8448\"\n\n[[listener]]\nbind = \"{B_SRV_IP}:80\"\ntls = false\nhttps_port = 8448\n\n{acme}\n\
             [[acme.certificate]]\nnames = [\"fed.b.test\"]\nchallenge = \"http-01\"\n\n\
             [[homeserver]]\nserver_name = \"b.test\"\nhosts = [\"fed.b.test\"]\n{upstream}\nacme = false\n"
        ),
    }
}

fn positive(tag: &str, mode: BMode) -> Option<World> {
    let started = Instant::now();
    let w = World::start(tag, mode)?;
    let (ok, out) = w.federate(None);
    assert!(
        ok,
        "federation failed:\n{out}\nSynapse A:\n{}\nSynapse B:\n{}",
        w.synapse_a.log_tail(60),
        w.synapse_b.log_tail(60)
    );
    assert!(
        out.contains("invite_seen=True")
            && out.contains("joined=True")
            && out.contains("a_saw_b=True")
            && out.contains("b_saw_a=True"),
        "{out}"
    );
    w.assert_traffic_went_through_both_myelins();
    w.assert_checks_ok();
    eprintln!("{tag}: scenario took {:?}", started.elapsed());
    Some(w)
}

#[test]
fn federation_1_well_known_with_port_on_443() {
    let Some(w) = positive("fed-wk-port", BMode::WellKnownWithPort) else {
        return;
    };
    // B's certificates came by HTTP-01 on port 80, A's by TLS-ALPN-01 on 443
    let http01 = w
        .myelin_b
        .access_log()
        .into_iter()
        .filter(|v| {
            v["route"] == "acme_challenge" && v["listener"] == "127.0.0.3:80" && v["status"] == 200
        })
        .count();
    assert!(
        http01 >= 2,
        "HTTP-01 validations of b.test and matrix.b.test:\n{}",
        w.myelin_b.log_text()
    );
    // A's Synapse found B by B's well-known, served by Myelin B
    assert!(
        w.myelin_b
            .access_log()
            .iter()
            .any(|v| v["path"] == "/.well-known/matrix/server"
                && v["host"] == "b.test"
                && v["status"] == 200)
    );
}

#[test]
fn federation_2_srv_only_with_a_dns01_certificate_for_the_server_name() {
    let Some(w) = positive("fed-srv-only", BMode::SrvOnly) else {
        return;
    };
    // the certificate for b.test came by DNS-01: the record went to BIND and was removed again
    assert!(
        w.myelin_b
            .logs()
            .iter()
            .any(|v| v["message"] == "DNS update accepted"
                && v["record"] == "_acme-challenge.b.test."),
        "{}",
        w.myelin_b.log_text()
    );
    assert!(w.bind.txt("_acme-challenge.b.test").is_empty());
    // the plan review agrees: SRV-only delegation with dns-01 can work
    let (code, report) = w.check_b_config();
    assert_eq!(code, 0, "{report:#}");
    let steps = report["homeservers"][0]["steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s["check"] == "srv_needs_dns01" && s["status"] == "ok"),
        "{report:#}"
    );
}

#[test]
fn federation_3_well_known_without_port_then_srv_of_the_delegated_name() {
    let Some(w) = positive("fed-wk-srv", BMode::WellKnownThenSrv) else {
        return;
    };
    // A's Synapse read B's well-known on b.test:443, then used the SRV record: federation
    // arrived on 8448 only (asserted above), clients on 443
    assert!(
        w.myelin_b
            .access_log()
            .iter()
            .any(|v| v["path"] == "/.well-known/matrix/server"
                && v["host"] == "b.test"
                && v["listener"] == "127.0.0.3:443")
    );
}

#[test]
fn federation_4_srv_host_with_a_certificate_for_its_own_name_fails_and_check_says_why() {
    let Some(w) = World::start("fed-wrong-cert", BMode::SrvWrongCertificate) else {
        return;
    };
    let started = Instant::now();
    let (ok, out) = w.federate(Some(5));
    assert!(
        ok,
        "federation A → B should have failed, and B seen nothing:\n{out}\nSynapse A:\n{}",
        w.synapse_a.log_tail(60)
    );
    assert!(out.contains("b_saw_invite=False"), "{out}");
    eprintln!("negative flow took {:?}", started.elapsed());
    // nothing reached Synapse B: A refused the certificate during the handshake
    let to_b = World::federation_requests(&w.myelin_b);
    assert!(to_b.is_empty(), "{to_b:#?}");
    // why, in Synapse A's own words: the invite was refused because the certificate does not
    // name b.test, and the user was told it could not reach b.test
    assert!(
        out.contains("invite_error=\"M_UNKNOWN:Can't connect to server b.test\""),
        "{out}"
    );
    let log = w.synapse_a.log();
    let why = log.lines().find(|l| {
        l.contains("matrix-federation://b.test/_matrix/federation/v2/invite/")
            && l.contains("VerificationError")
            && l.contains("DNSMismatch(mismatched_id=DNS_ID(hostname=b'b.test'))")
    });
    let Some(why) = why else {
        panic!(
            "Synapse A's log names no certificate failure for b.test:\n{}",
            w.synapse_a.log_tail(80)
        );
    };
    eprintln!("Synapse A: {why}");
    // and myelin check says the same, naming both names
    let (code, report) = w.check("b.test");
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["federation"], "fails");
    let tls = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["check"] == "tls_certificate" && s["status"] == "fail")
        .unwrap_or_else(|| panic!("{report:#}"));
    let message = tls["message"].as_str().unwrap();
    assert!(
        message.contains("not valid for b.test") && message.contains("fed.b.test"),
        "{message}"
    );
    assert_eq!(tls["target"], "127.0.0.4:8448");
    // A itself is fine
    let (code, report) = w.check("a.test");
    assert_eq!(code, 0, "{report:#}");
    // the plan review of B's configuration predicted it
    let (code, report) = w.check_b_config();
    assert_eq!(code, 1, "{report:#}");
    let steps = report["homeservers"][0]["steps"].as_array().unwrap();
    assert!(
        steps.iter().any(|s| s["check"] == "federation_certificate"
            && s["status"] == "fail"
            && s["message"].as_str().unwrap_or("").contains("b.test")),
        "{report:#}"
    );
}
