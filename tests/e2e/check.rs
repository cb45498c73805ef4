//! `myelin check`, the delegation doctor, against real servers: BIND9 serves one zone with a
//! name per delegation scenario, Myelin (the real binary, certificates from a test CA) stands in
//! front of a real Synapse, and the check runs as another homeserver would resolve the name.
//!
//! Every scenario runs in its own network namespace, so the spec's ports (443, 8448, DNS on 53)
//! can be bound on several loopback "hosts" (127.0.x.y) without touching the machine's ports.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use myelin_e2e::netns::Netns;
use myelin_e2e::peers::require;
use myelin_e2e::synapse::{self, Synapse, SynapseOptions};
use myelin_e2e::{Bind, Myelin, TestCa, TestDir, Zone, run_bounded};
use serde_json::Value;

use crate::common::{bin, working_addresses};

const ZONE: &str = "check.test";
/// The DNS server of every scenario namespace (port 53 there).
const DNS_IP: &str = "127.0.0.53";

/// One zone, one name per scenario. Each scenario's hosts have their own 127.0.N.x addresses.
fn zone() -> Zone {
    Zone::new(ZONE)
        // 1. well-known with a port: wk-port's web server delegates to hs.wk-port:443
        .record("wk-port A 127.0.1.1")
        .record("hs.wk-port A 127.0.1.2")
        // 2. well-known without a port, and an SRV record for the delegated name
        .record("wk-srv A 127.0.2.1")
        .record("hs.wk-srv A 127.0.2.9") // nothing there: the SRV record must be used
        .record("_matrix-fed._tcp.hs.wk-srv SRV 10 5 443 fed.wk-srv.check.test.")
        .record("fed.wk-srv A 127.0.2.2")
        // 3. SRV only (nothing answers on the server name's own address)
        .record("srv-only A 127.0.3.1")
        .record("_matrix-fed._tcp.srv-only SRV 10 5 443 fed.srv-only.check.test.")
        .record("fed.srv-only A 127.0.3.2")
        // 4. only the deprecated _matrix._tcp
        .record("legacy A 127.0.4.1")
        .record("_matrix._tcp.legacy SRV 10 5 8448 fed.legacy.check.test.")
        .record("fed.legacy A 127.0.4.2")
        // 5. the SRV target is a CNAME
        .record("cname A 127.0.5.1")
        .record("_matrix-fed._tcp.cname SRV 10 5 443 alias.cname.check.test.")
        .record("alias.cname CNAME fed.cname.check.test.")
        .record("fed.cname A 127.0.5.2")
        // 6. a certificate for the wrong name: the SRV target's own name instead of the server name
        .record("wrong-cert A 127.0.6.1")
        .record("_matrix-fed._tcp.wrong-cert SRV 10 5 443 fed.wrong-cert.check.test.")
        .record("fed.wrong-cert A 127.0.6.2")
        // 7. no well-known, no SRV, nothing on 8448 (the homeserver answers on 443, unannounced)
        .record("nothing A 127.0.7.1")
        // 9. the well-known served by another web server (Caddy): a redirect, text/plain, no
        //    caching header; and one larger than the 50 KiB other servers read
        .record("redirect A 127.0.9.1")
        .record("www.redirect A 127.0.9.2")
        .record("hs.redirect A 127.0.9.3")
        .record("big A 127.0.9.4")
        // 8. the SRV target accepts connections and then says nothing
        .record("silent A 127.0.8.1")
        .record("_matrix-fed._tcp.silent SRV 10 5 443 fed.silent.check.test.")
        .record("fed.silent A 127.0.8.2")
}

/// A child process killed when the test ends.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One scenario's world. Fields drop in order: processes first, the namespace last.
struct World {
    others: Vec<Kill>,
    myelin: Option<Myelin>,
    synapse: Option<Synapse>,
    bind: Bind,
    ca: TestCa,
    ca_path: PathBuf,
    dir: TestDir,
    ns: Netns,
}

impl World {
    /// The namespace with BIND serving the zone on 127.0.0.53:53 (also its resolv.conf).
    /// `None` when a peer is missing on a developer machine (under CI that fails instead).
    fn new(tag: &str, with_synapse: bool) -> Option<World> {
        let peers = require(
            "root with iproute2 (network namespaces)",
            Netns::available(),
        ) && Bind::available();
        if !peers
            || (with_synapse && !require("Synapse (PyPI matrix-synapse)", synapse::available()))
        {
            return None;
        }
        let ns = Netns::create(tag);
        ns.set_resolver(DNS_IP.parse().unwrap());
        ns.add_loopback_address(DNS_IP.parse().unwrap());
        let dir = TestDir::new(&format!("check-{tag}"));
        let bind = Bind::start_at(
            &dir,
            format!("{DNS_IP}:53").parse().unwrap(),
            &[zone()],
            &ns.wrapper(),
        );
        let ca = TestCa::new();
        let ca_path = ca.write_ca(&dir);
        Some(World {
            others: Vec::new(),
            myelin: None,
            synapse: None,
            bind,
            ca,
            ca_path,
            dir,
            ns,
        })
    }

    /// A real Synapse for `server_name` inside the namespace; returns its upstream URL.
    fn synapse(&mut self, server_name: &str) -> String {
        let wrapper = self.ns.wrapper();
        let baseurl = format!("https://{server_name}/");
        let s = Synapse::start(
            &self.dir,
            SynapseOptions {
                server_name,
                public_baseurl: &baseurl,
                wrapper: &wrapper,
                ..Default::default()
            },
        );
        let url = s.url();
        self.synapse = Some(s);
        url
    }

    /// Myelin inside the namespace: TLS listeners on `binds`, one certificate from the test CA
    /// for `cert_names`, and `homeserver` as the [[homeserver]] block.
    fn myelin(&mut self, binds: &[&str], cert_names: &[&str], homeserver: &str) {
        self.myelin_days(binds, cert_names, 90, homeserver);
    }

    /// Like [`World::myelin`], with a certificate valid for `days` more days.
    fn myelin_days(&mut self, binds: &[&str], cert_names: &[&str], days: u64, homeserver: &str) {
        let leaf = self.ca.leaf_valid(cert_names, days);
        let cert = self.dir.write("server.pem", &leaf.cert_pem);
        let key = self.dir.write("server.key", &leaf.key_pem);
        let mut config = String::new();
        for b in binds {
            config.push_str(&format!("[[listener]]\nbind = \"{b}\"\n\n"));
        }
        config.push_str(&format!(
            "[[certificate]]\ncert = \"{}\"\nkey = \"{}\"\n\n[[homeserver]]\n{homeserver}\n",
            cert.display(),
            key.display()
        ));
        let wrapper = self.ns.wrapper();
        self.myelin = Some(Myelin::start_wrapped(
            &bin(),
            &self.dir,
            &config,
            &[],
            &wrapper,
        ));
    }

    /// Runs `myelin check ARGS --ca-file <test CA>` inside the namespace; returns the exit code
    /// and stdout.
    fn run_check(&self, args: &[&str]) -> (i32, String) {
        let mut cmd = self.ns.command(bin());
        cmd.arg("check")
            .args(args)
            .arg("--ca-file")
            .arg(&self.ca_path);
        if !args.contains(&"--timeout") {
            cmd.args(["--timeout", "30"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (code, out, err) = run_bounded(cmd, Duration::from_secs(60));
        if !err.is_empty() {
            eprintln!("myelin check stderr:\n{err}");
        }
        (code, out)
    }

    /// `myelin check NAME --resolver 127.0.0.53:53 --json`: exit code and report.
    fn check_json(&self, name: &str) -> (i32, Value) {
        let resolver = format!("{DNS_IP}:53");
        let started = Instant::now();
        let (code, out) = self.run_check(&[name, "--resolver", &resolver, "--json"]);
        eprintln!(
            "myelin check {name}: exit {code} in {:?}",
            started.elapsed()
        );
        let report: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}\n{}", self.bind.log()));
        (code, report)
    }

    /// [`World::check_json`], and the readable report too (shown with --nocapture): it must
    /// give the same exit code and verdict.
    fn check(&self, name: &str) -> (i32, Value) {
        let (code, report) = self.check_json(name);
        let resolver = format!("{DNS_IP}:53");
        let (text_code, text) = self.run_check(&[name, "--resolver", &resolver]);
        eprintln!("{text}");
        assert_eq!(text_code, code, "text and JSON runs disagree:\n{text}");
        let verdict = if report["federation"] == "works" {
            format!("✔ Federation works: other servers reach {name} at")
        } else {
            format!(
                "✖ Federation fails: {}",
                report["reason"].as_str().unwrap_or("")
            )
        };
        assert!(text.contains(&verdict), "missing `{verdict}` in:\n{text}");
        (code, report)
    }
}

fn steps<'a>(report: &'a Value, check: &str) -> Vec<&'a Value> {
    report["steps"]
        .as_array()
        .map(|a| a.iter().filter(|s| s["check"] == check).collect())
        .unwrap_or_default()
}

/// Asserts that a step `check` has `status` and a message containing every `needle`.
fn assert_step(report: &Value, check: &str, status: &str, needles: &[&str]) -> Value {
    let found = steps(report, check);
    let hit = found.iter().find(|s| {
        s["status"] == status
            && needles
                .iter()
                .all(|n| s["message"].as_str().unwrap_or("").contains(n))
    });
    match hit {
        Some(s) => (*s).clone(),
        None => panic!(
            "no {status} step `{check}` with {needles:?}; report:\n{}",
            serde_json::to_string_pretty(report).unwrap()
        ),
    }
}

fn assert_no_failure(report: &Value) {
    let failed: Vec<&Value> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "fail")
        .collect();
    assert!(
        failed.is_empty(),
        "unexpected failures: {failed:#?}\nreport:\n{}",
        serde_json::to_string_pretty(report).unwrap()
    );
}

/// The federation checks every working scenario must pass on `addr`.
fn assert_federation_ok(report: &Value, server_name: &str, addr: &str, cert_name: &str) {
    assert_eq!(report["federation"], "works", "{report:#}");
    assert_eq!(
        report["resolution"]["certificate_name"], cert_name,
        "{report:#}"
    );
    assert_eq!(working_addresses(report), [addr], "{report:#}");
    let tls = assert_step(
        report,
        "tls_certificate",
        "ok",
        &[&format!("valid for {cert_name}")],
    );
    assert_eq!(tls["target"], addr);
    assert_step(
        report,
        "server_keys",
        "ok",
        &[&format!("the keys are for {server_name}")],
    );
    assert_step(report, "key_validity", "ok", &["valid until"]);
    assert_step(
        report,
        "key_signatures",
        "ok",
        &["every ed25519 self-signature verifies"],
    );
    assert_step(report, "federation_version", "ok", &["Synapse"]);
}

#[test]
fn check_well_known_with_port_passes_every_step() {
    let Some(mut w) = World::new("wk-port", true) else {
        return;
    };
    let upstream = w.synapse("wk-port.check.test");
    w.myelin(
        &["127.0.1.1:443", "127.0.1.2:443"],
        &["wk-port.check.test", "hs.wk-port.check.test"],
        &format!(
            "server_name = \"wk-port.check.test\"\nhosts = [\"hs.wk-port.check.test\"]\nupstream = \"{upstream}\"\n\
             [homeserver.well_known]\nserver = \"hs.wk-port.check.test:443\"\nclient_base_url = \"https://hs.wk-port.check.test\"\ncache_max_age = \"12h\"\n"
        ),
    );
    // the namespace's own resolver (resolv.conf → BIND), no --resolver: the system path
    let (code, out) = w.run_check(&["wk-port.check.test", "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(code, 0, "{report:#}");
    assert_no_failure(&report);
    assert_eq!(report["schema"], "myelin-check/1");
    assert_eq!(report["resolution"]["method"], "well_known");
    assert_eq!(
        report["resolution"]["host_header"],
        "hs.wk-port.check.test:443"
    );
    assert_step(
        &report,
        "well_known_server",
        "ok",
        &[
            "https://wk-port.check.test/.well-known/matrix/server",
            "delegates to \"hs.wk-port.check.test:443\"",
        ],
    );
    assert_step(
        &report,
        "well_known_cache",
        "ok",
        &["12 hours", "max-age=43200"],
    );
    assert_federation_ok(
        &report,
        "wk-port.check.test",
        "127.0.1.2:443",
        "hs.wk-port.check.test",
    );
    // no SRV lookup for a well-known with a port
    assert!(steps(&report, "srv_matrix_fed").is_empty(), "{report:#}");

    // clients: discovery, CORS, preflight, base_url, and both well-knowns agree
    assert_eq!(report["client"], "works", "{report:#}");
    assert_step(
        &report,
        "client_well_known",
        "ok",
        &["https://hs.wk-port.check.test"],
    );
    assert_step(
        &report,
        "client_cors",
        "ok",
        &["Access-Control-Allow-Origin: *"],
    );
    assert_step(&report, "client_options", "ok", &["preflight"]);
    assert_step(&report, "client_versions", "ok", &["Matrix versions"]);
    assert_step(&report, "client_versions_cors", "ok", &[]);
    assert_step(
        &report,
        "support_well_known",
        "info",
        &["no /.well-known/matrix/support"],
    );
    assert_step(
        &report,
        "well_known_agreement",
        "ok",
        &["homeserver of wk-port.check.test"],
    );

    // the readable report says the same, with marks
    let (code, text) = w.run_check(&["wk-port.check.test", "--resolver", &format!("{DNS_IP}:53")]);
    assert_eq!(code, 0, "{text}");
    eprintln!("{text}");
    for line in [
        "✔ https://wk-port.check.test/.well-known/matrix/server delegates to \"hs.wk-port.check.test:443\"",
        "  127.0.1.2:443",
        "✔ every ed25519 self-signature verifies over canonical JSON",
        "✔ Federation works: other servers reach wk-port.check.test at 127.0.1.2:443 (hs.wk-port.check.test).",
        "✔ Clients find the homeserver through /.well-known/matrix/client.",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert!(!text.contains('✖'), "{text}");
}

#[test]
fn check_well_known_without_port_follows_the_srv_record_of_the_delegated_name() {
    let Some(mut w) = World::new("wk-srv", true) else {
        return;
    };
    let upstream = w.synapse("wk-srv.check.test");
    // the SRV target fed.wk-srv is not in the certificate: other servers ask for hs.wk-srv
    w.myelin(
        &["127.0.2.1:443", "127.0.2.2:443"],
        &["wk-srv.check.test", "hs.wk-srv.check.test"],
        &format!(
            "server_name = \"wk-srv.check.test\"\nhosts = [\"hs.wk-srv.check.test\"]\nupstream = \"{upstream}\"\n\
             [homeserver.well_known]\nserver = \"hs.wk-srv.check.test\"\nclient_base_url = \"https://wk-srv.check.test\"\n"
        ),
    );
    let (code, report) = w.check("wk-srv.check.test");
    assert_eq!(code, 0, "{report:#}");
    assert_no_failure(&report);
    assert_eq!(report["resolution"]["method"], "well_known+srv");
    assert_eq!(report["resolution"]["host_header"], "hs.wk-srv.check.test");
    assert_step(
        &report,
        "well_known_server",
        "ok",
        &["delegates to \"hs.wk-srv.check.test\""],
    );
    assert_step(
        &report,
        "well_known_without_port",
        "info",
        &["SRV records of hs.wk-srv.check.test"],
    );
    assert_step(
        &report,
        "srv_matrix_fed",
        "ok",
        &["_matrix-fed._tcp.hs.wk-srv.check.test → fed.wk-srv.check.test:443"],
    );
    assert_step(
        &report,
        "well_known_cache",
        "ok",
        &["24 hours", "max-age=86400"],
    );
    assert_federation_ok(
        &report,
        "wk-srv.check.test",
        "127.0.2.2:443",
        "hs.wk-srv.check.test",
    );
    assert_eq!(report["client"], "works", "{report:#}");
    assert_step(&report, "well_known_agreement", "ok", &[]);
}

#[test]
fn check_srv_only_passes_with_a_certificate_for_the_server_name_on_the_target() {
    let Some(mut w) = World::new("srv-only", true) else {
        return;
    };
    let upstream = w.synapse("srv-only.check.test");
    // only srv-only.check.test in the certificate, served on the SRV target's address
    w.myelin(
        &["127.0.3.2:443"],
        &["srv-only.check.test"],
        &format!("server_name = \"srv-only.check.test\"\nupstream = \"{upstream}\"\n"),
    );
    let (code, report) = w.check("srv-only.check.test");
    assert_eq!(code, 0, "{report:#}");
    assert_no_failure(&report);
    assert_eq!(report["resolution"]["method"], "srv");
    assert_eq!(report["resolution"]["host_header"], "srv-only.check.test");
    assert_step(
        &report,
        "well_known_server",
        "info",
        &["no server well-known", "127.0.3.1:443 (connection refused)"],
    );
    assert_step(
        &report,
        "srv_matrix_fed",
        "ok",
        &[
            "fed.srv-only.check.test:443",
            "must still be valid for srv-only.check.test",
        ],
    );
    assert_federation_ok(
        &report,
        "srv-only.check.test",
        "127.0.3.2:443",
        "srv-only.check.test",
    );
    // no client discovery published: exit 0 all the same, with the reason
    assert_eq!(report["client"], "not_published", "{report:#}");
    assert_step(
        &report,
        "client_well_known",
        "warn",
        &["no client well-known"],
    );
}

#[test]
fn check_legacy_matrix_tcp_only_works_with_a_deprecation_warning() {
    let Some(mut w) = World::new("legacy", true) else {
        return;
    };
    let upstream = w.synapse("legacy.check.test");
    // and a certificate that runs out in a week
    w.myelin_days(
        &["127.0.4.2:8448"],
        &["legacy.check.test"],
        7,
        &format!("server_name = \"legacy.check.test\"\nupstream = \"{upstream}\"\n"),
    );
    let (code, report) = w.check("legacy.check.test");
    assert_eq!(code, 0, "{report:#}");
    assert_no_failure(&report);
    assert_eq!(report["resolution"]["method"], "srv_legacy");
    assert_step(
        &report,
        "srv_matrix_fed",
        "info",
        &["no _matrix-fed._tcp.legacy.check.test"],
    );
    let legacy = assert_step(
        &report,
        "srv_matrix_legacy",
        "warn",
        &[
            "only the deprecated _matrix._tcp.legacy.check.test",
            "fed.legacy.check.test:8448",
        ],
    );
    assert!(
        legacy["fix"]
            .as_str()
            .unwrap()
            .contains("_matrix-fed._tcp.legacy.check.test"),
        "{legacy:#}"
    );
    assert_federation_ok(
        &report,
        "legacy.check.test",
        "127.0.4.2:8448",
        "legacy.check.test",
    );
    let expiry = assert_step(
        &report,
        "certificate_expiry",
        "warn",
        &["expires in 6 days"],
    );
    assert_eq!(expiry["target"], "127.0.4.2:8448");
    assert!(report["warnings"].as_u64().unwrap() >= 2);
}

#[test]
fn check_srv_target_that_is_a_cname_works_with_a_warning() {
    let Some(mut w) = World::new("cname", true) else {
        return;
    };
    let upstream = w.synapse("cname.check.test");
    w.myelin(
        &["127.0.5.2:443"],
        &["cname.check.test"],
        &format!("server_name = \"cname.check.test\"\nupstream = \"{upstream}\"\n"),
    );
    let (code, report) = w.check("cname.check.test");
    assert_eq!(code, 0, "{report:#}");
    assert_no_failure(&report);
    let cname = assert_step(
        &report,
        "srv_target_cname",
        "warn",
        &[
            "alias.cname.check.test is a CNAME",
            "fed.cname.check.test",
            "RFC 2782",
        ],
    );
    assert!(
        cname["fix"]
            .as_str()
            .unwrap()
            .contains("fed.cname.check.test")
    );
    assert_step(
        &report,
        "dns_address",
        "ok",
        &["alias.cname.check.test → 127.0.5.2"],
    );
    assert_federation_ok(
        &report,
        "cname.check.test",
        "127.0.5.2:443",
        "cname.check.test",
    );
}

#[test]
fn check_certificate_for_the_wrong_name_fails_and_names_both() {
    let Some(mut w) = World::new("wrong-cert", false) else {
        return;
    };
    // the classic SRV mistake: a certificate for the SRV target instead of the server name
    w.myelin(
        &["127.0.6.2:443"],
        &["fed.wrong-cert.check.test"],
        "server_name = \"wrong-cert.check.test\"\nhosts = [\"fed.wrong-cert.check.test\"]\nupstream = \"http://127.0.0.1:9\"\n",
    );
    let (code, report) = w.check("wrong-cert.check.test");
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["federation"], "fails");
    let tls = assert_step(
        &report,
        "tls_certificate",
        "fail",
        &[
            "not valid for wrong-cert.check.test",
            "it names fed.wrong-cert.check.test",
        ],
    );
    assert_eq!(tls["target"], "127.0.6.2:443");
    let fix = tls["fix"].as_str().unwrap();
    assert!(
        fix.contains("SRV delegation") && fix.contains("dns-01"),
        "{fix}"
    );
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("not valid for wrong-cert.check.test"),
        "{report:#}"
    );
    // nothing is asked of a server whose certificate is refused
    assert!(steps(&report, "server_keys").is_empty(), "{report:#}");
}

#[test]
fn check_nothing_on_8448_fails_and_points_at_443() {
    let Some(mut w) = World::new("nothing", true) else {
        return;
    };
    let upstream = w.synapse("nothing.check.test");
    // Myelin and the homeserver answer on 443, but nothing tells other servers so
    w.myelin(
        &["127.0.7.1:443"],
        &["nothing.check.test"],
        &format!("server_name = \"nothing.check.test\"\nupstream = \"{upstream}\"\n"),
    );
    let (code, report) = w.check("nothing.check.test");
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["federation"], "fails");
    assert_eq!(report["resolution"]["method"], "default_port");
    assert_step(&report, "well_known_server", "info", &["answered 404"]);
    assert_step(
        &report,
        "default_port",
        "info",
        &["nothing.check.test:8448"],
    );
    let port = assert_step(
        &report,
        "port_8448",
        "fail",
        &[
            "nothing answers on 127.0.7.1:8448 (connection refused)",
            "has no valid /.well-known/matrix/server and no SRV record",
        ],
    );
    assert!(
        port["fix"]
            .as_str()
            .unwrap()
            .contains("\"m.server\": \"nothing.check.test:443\""),
        "{port:#}"
    );
    assert_step(
        &report,
        "port_443_probe",
        "info",
        &["nothing.check.test:443 does answer federation for nothing.check.test"],
    );
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("127.0.7.1:8448"),
        "{report:#}"
    );
    // the client API is served on the name itself, though no client well-known is published
    assert_step(
        &report,
        "client_well_known",
        "info",
        &["serves the client API itself"],
    );
}

/// `myelin check --config`: the plan of a configuration, judged without the network.
#[test]
fn check_config_judges_each_delegation_and_certificate_plan() {
    let dir = TestDir::new("check-config-plan");
    let ca = TestCa::new();
    let ca_path = ca.write_ca(&dir);
    let (only_matrix, only_matrix_key) = ca.write_leaf(&dir, "matrix", &["matrix.example.test"]);
    let (both, both_key) = ca.write_leaf(&dir, "both", &["example.test", "matrix.example.test"]);
    // Nothing is bound: the plan review only reads the configuration and the certificates.
    let config = |cert: &PathBuf, key: &PathBuf, well_known: &str| {
        format!(
            "[[listener]]\nbind = \"[::]:443\"\n\n[[certificate]]\ncert = \"{}\"\nkey = \"{}\"\n\n\
             [[homeserver]]\nserver_name = \"example.test\"\nhosts = [\"matrix.example.test\"]\n\
             upstream = \"http://127.0.0.1:8008\"\n[homeserver.well_known]\n\
             client_base_url = \"https://matrix.example.test\"\n{well_known}\n",
            cert.display(),
            key.display()
        )
    };
    let run = |name: &str, toml: &str, trust_test_ca: bool, json: bool| -> (i32, String) {
        let path = dir.write(name, toml);
        let mut cmd = Command::new(bin());
        cmd.arg("check").arg("--config").arg(&path);
        if trust_test_ca {
            cmd.arg("--ca-file").arg(&ca_path);
        }
        if json {
            cmd.arg("--json");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (code, out, _) = run_bounded(cmd, Duration::from_secs(30));
        (code, out)
    };
    let json =
        |out: &str| -> Value { serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}")) };

    // SRV-only delegation with a certificate for the SRV target only: cannot work
    let (code, out) = run(
        "srv.toml",
        &config(&only_matrix, &only_matrix_key, ""),
        true,
        true,
    );
    let r = json(&out);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["works"], false);
    let hs = &r["homeservers"][0];
    assert_eq!(hs["works"], false);
    let cert = assert_step(
        hs,
        "federation_certificate",
        "fail",
        &[
            "other servers need a certificate for example.test",
            "no [[certificate]] covers example.test",
        ],
    );
    assert!(cert["fix"].as_str().unwrap().contains("dns-01"), "{cert:#}");
    assert_step(
        hs,
        "federation_port",
        "warn",
        &["_matrix-fed._tcp.example.test"],
    );

    // a well-known without a port: works only through SRV or 8448, which is not served here
    let (code, out) = run(
        "noport.toml",
        &config(&both, &both_key, "server = \"matrix.example.test\""),
        true,
        true,
    );
    let r = json(&out);
    assert_eq!(code, 0, "{r:#}");
    let port = assert_step(
        &r["homeservers"][0],
        "federation_port",
        "warn",
        &["has no port", "8448"],
    );
    assert!(
        port["fix"]
            .as_str()
            .unwrap()
            .contains("\"matrix.example.test:443\""),
        "{port:#}"
    );

    // well-known with port, certificate for both names: every rule passes
    let good = config(&both, &both_key, "server = \"matrix.example.test:443\"");
    let (code, out) = run("good.toml", &good, true, true);
    let r = json(&out);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["warnings"], 0, "{r:#}");
    assert_step(
        &r["homeservers"][0],
        "well_known_reachable",
        "ok",
        &["certificate for example.test"],
    );
    assert_step(
        &r["homeservers"][0],
        "federation_certificate",
        "ok",
        &["matrix.example.test"],
    );
    assert_step(
        &r["homeservers"][0],
        "client_base_url",
        "ok",
        &["https://matrix.example.test"],
    );

    // the same plan with a CA other servers do not trust cannot work
    let (code, text) = run("good.toml", &good, false, false);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("issued by \"Myelin Test Root CA\", which other servers do not trust"),
        "{text}"
    );
    assert!(
        text.contains("✖ The plan cannot work for: example.test."),
        "{text}"
    );

    // a broken configuration is a configuration error (64), as with check-config
    let (code, _) = run("broken.toml", "[[listener]]\nbind = 443\n", true, false);
    assert_eq!(code, 64);
}

/// `myelin check --config` with `[acme]`: whether the CA can validate each name the way the
/// configuration chose, judged from the configuration alone.
#[test]
fn check_config_judges_the_acme_challenge_of_each_certificate() {
    let dir = TestDir::new("check-config-acme");
    // Nothing is bound and no CA is asked: the review only reads the configuration.
    let config = |listeners: &[(&str, bool)], acme: &str, homeserver: &str| {
        let mut c = String::new();
        for (bind, tls) in listeners {
            c.push_str(&format!("[[listener]]\nbind = \"{bind}\"\ntls = {tls}\n\n"));
        }
        format!(
            "{c}[acme]\nemail = \"admin@example.test\"\nstate_dir = \"{state}\"\n{acme}\n\n\
             [[homeserver]]\nserver_name = \"example.test\"\nhosts = [\"matrix.example.test\"]\n\
             upstream = \"http://127.0.0.1:8008\"\n{homeserver}\n",
            state = dir.join("state").display()
        )
    };
    let dns = "[acme.dns]\nprovider = \"exec\"\ncommand = [\"/bin/true\"]\n";
    let run = |name: &str, toml: &str, json: bool| -> (i32, String, String) {
        let path = dir.write(name, toml);
        let mut cmd = Command::new(bin());
        cmd.arg("check")
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null());
        if json {
            cmd.arg("--json");
        }
        run_bounded(cmd, Duration::from_secs(30))
    };
    let review = |name: &str, toml: &str| -> (i32, Value) {
        let (code, out, err) = run(name, toml, true);
        let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        (code, r)
    };
    let only_443 = [("[::]:443", true)];

    // SRV-only delegation (no well-known), certificates by the default tls-alpn-01: the CA can
    // only validate example.test here if it points here, which with SRV it usually does not
    let (code, r) = review("srv-alpn.toml", &config(&only_443, "", ""));
    assert_eq!(code, 0, "a warning, not a failure: {r:#}");
    let hs = &r["homeservers"][0];
    let srv = assert_step(
        hs,
        "srv_needs_dns01",
        "warn",
        &[
            "certificate for example.test itself",
            "it comes by tls-alpn-01",
            "works only if example.test points to this machine",
        ],
    );
    assert!(
        srv["fix"]
            .as_str()
            .unwrap()
            .contains("challenge = \"dns-01\""),
        "{srv:#}"
    );
    assert_step(
        hs,
        "federation_certificate",
        "ok",
        &["comes from the ACME CA by tls-alpn-01"],
    );
    assert_step(
        hs,
        "tls_alpn01_needs_443",
        "ok",
        &["example.test, matrix.example.test", "port 443"],
    );
    assert_eq!(r["certificates"], serde_json::json!([]));

    // the same with dns-01 for this homeserver: fine wherever example.test points
    let (code, r) = review(
        "srv-dns.toml",
        &config(&only_443, dns, "challenge = \"dns-01\""),
    );
    assert_eq!(code, 0, "{r:#}");
    let hs = &r["homeservers"][0];
    assert_step(
        hs,
        "srv_needs_dns01",
        "ok",
        &["by dns-01, which works wherever example.test points"],
    );
    assert!(steps(hs, "tls_alpn01_needs_443").is_empty(), "{r:#}");

    // http-01 without a plain listener: the CA cannot reach Myelin
    let well_known = "[homeserver.well_known]\nserver = \"matrix.example.test:443\"\nclient_base_url = \"https://matrix.example.test\"";
    let (code, r) = review(
        "http01.toml",
        &config(&only_443, "challenge = \"http-01\"", well_known),
    );
    assert_eq!(code, 1, "{r:#}");
    assert_step(
        &r["homeservers"][0],
        "http01_needs_port_80",
        "fail",
        &["port 80", "no plain [[listener]] (tls = false)"],
    );
    // with one on port 80 it can
    let (code, r) = review(
        "http01-80.toml",
        &config(
            &[("[::]:443", true), ("[::]:80", false)],
            "challenge = \"http-01\"",
            well_known,
        ),
    );
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["warnings"], 0, "{r:#}");
    assert_step(&r["homeservers"][0], "http01_needs_port_80", "ok", &[]);
    assert!(steps(&r["homeservers"][0], "srv_needs_dns01").is_empty());

    // tls-alpn-01 with TLS on 8448 only: a warning (a port forward may send 443 there)
    let (code, r) = review(
        "alpn-8448.toml",
        &config(
            &[("[::]:8448", true)],
            "",
            "[homeserver.well_known]\nserver = \"matrix.example.test:8448\"",
        ),
    );
    assert_eq!(code, 0, "{r:#}");
    assert_step(
        &r["homeservers"][0],
        "tls_alpn01_needs_443",
        "warn",
        &["TLS ports: 8448"],
    );

    // a wildcard [[acme.certificate]] no homeserver uses is judged on its own
    let wildcard = format!(
        "{dns}\n[[acme.certificate]]\nnames = [\"*.wild.example.test\", \"wild.example.test\"]\nchallenge = \"dns-01\""
    );
    let toml = config(
        &[("[::]:443", true), ("[::]:80", false)],
        &wildcard,
        well_known,
    );
    let (code, r) = review("wildcard.toml", &toml);
    assert_eq!(code, 0, "{r:#}");
    let c = &r["certificates"][0];
    assert_eq!(c["challenge"], "dns-01", "{r:#}");
    assert_eq!(c["works"], true);
    assert_step(c, "wildcard_needs_dns01", "ok", &["*.wild.example.test"]);
    let (code, text, _) = run("wildcard.toml", &toml, false);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("ACME certificate *.wild.example.test, wild.example.test (dns-01)")
            && text.contains("✔ *.wild.example.test: wildcard names are validated by dns-01"),
        "{text}"
    );
    // with another challenge the configuration itself is refused, before any review
    let (code, _, err) = run(
        "wildcard-http.toml",
        &toml.replace(
            "challenge = \"dns-01\"\n\n[[homeserver]]",
            "challenge = \"http-01\"\n\n[[homeserver]]",
        ),
        false,
    );
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("a wildcard name needs challenge = \"dns-01\""),
        "{err}"
    );
}

#[test]
fn check_a_server_that_accepts_but_never_answers_is_bounded() {
    let Some(mut w) = World::new("silent", false) else {
        return;
    };
    if !require("python3", myelin_e2e::peers::has_program("python3")) {
        return;
    }
    // accepts TCP on the SRV target, then neither reads nor writes
    let listener =
        w.ns.command("python3")
            .args([
                "-c",
                "import socket,time\n\
             s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('127.0.8.2', 443)); s.listen(16); print('ready', flush=True)\n\
             conns=[]\n\
             while True: conns.append(s.accept())",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3");
    let mut listener = Kill(listener);
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(listener.0.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    w.others.push(listener);

    let started = Instant::now();
    let (code, report) = w.check_json("silent.check.test");
    let took = started.elapsed();
    assert_eq!(code, 1, "{report:#}");
    let tls = assert_step(
        &report,
        "tls_handshake",
        "fail",
        &["127.0.8.2:443 did not complete the TLS handshake within 5 s"],
    );
    assert_eq!(tls["target"], "127.0.8.2:443");
    // one TLS handshake timeout (5 s), and little else
    assert!(took < Duration::from_secs(9), "took {took:?}");

    // the whole check's budget cuts the handshake short and says so
    let started = Instant::now();
    let (code, out) = w.run_check(&[
        "silent.check.test",
        "--resolver",
        &format!("{DNS_IP}:53"),
        "--json",
        "--timeout",
        "2",
    ]);
    let took = started.elapsed();
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(code, 1, "{report:#}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_step(&report, "tls_handshake", "fail", &["within 2 s"]);
    assert_step(&report, "deadline", "fail", &["did not finish within 2 s"]);
}

#[test]
fn check_reads_the_well_known_as_homeservers_do_redirects_any_content_type_50_kib() {
    let Some(mut w) = World::new("wk-caddy", false) else {
        return;
    };
    if !require("Caddy", myelin_e2e::peers::has_program("caddy")) {
        return;
    }
    let leaf = w.ca.leaf(&[
        "redirect.check.test",
        "www.redirect.check.test",
        "big.check.test",
    ]);
    let cert = w.dir.write("caddy.pem", &leaf.cert_pem);
    let key = w.dir.write("caddy.key", &leaf.key_pem);
    // 60 KiB of valid JSON: over the limit
    let padding = "x".repeat(60 * 1024);
    w.dir.write(
        "big/.well-known/matrix/server",
        format!("{{\"m.server\": \"hs.big.check.test:443\", \"padding\": \"{padding}\"}}"),
    );
    let d = w.dir.path().display().to_string();
    let caddyfile = format!(
        "{{\n\tadmin off\n\tauto_https disable_redirects\n\tskip_install_trust\n\tstorage file_system {d}/caddy-data\n}}\n\
         https://redirect.check.test {{\n\tbind 127.0.9.1\n\ttls {c} {k}\n\tredir https://www.redirect.check.test{{uri}} 301\n}}\n\
         https://www.redirect.check.test {{\n\tbind 127.0.9.2\n\ttls {c} {k}\n\theader Content-Type \"text/plain; charset=utf-8\"\n\t\
         respond /.well-known/matrix/server `{{\"m.server\": \"hs.redirect.check.test:8443\"}}` 200\n}}\n\
         https://big.check.test {{\n\tbind 127.0.9.4\n\ttls {c} {k}\n\troot * {d}/big\n\tfile_server\n}}\n",
        c = cert.display(),
        k = key.display()
    );
    let config = w.dir.write("Caddyfile", caddyfile);
    let caddy =
        w.ns.command("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&config)
            .env("HOME", w.dir.path())
            .env("XDG_DATA_HOME", w.dir.join("xdg-data"))
            .env("XDG_CONFIG_HOME", w.dir.join("xdg-config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(w.dir.join("caddy.log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .spawn()
            .expect("start caddy");
    let mut caddy = Kill(caddy);
    let ca = w.ca_path.display().to_string();
    let up = myelin_e2e::wait_until(Duration::from_secs(20), || {
        matches!(caddy.0.try_wait(), Ok(Some(_)))
            || w.ns
                .command("curl")
                .args(["-sf", "--max-time", "2", "--cacert", &ca])
                .args(["--resolve", "big.check.test:443:127.0.9.4"])
                .arg("https://big.check.test/.well-known/matrix/server")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    });
    let exited = matches!(caddy.0.try_wait(), Ok(Some(_)));
    w.others.push(caddy);
    assert!(
        up && !exited,
        "caddy did not start:\n{}",
        std::fs::read_to_string(w.dir.join("caddy.log")).unwrap_or_default()
    );

    // redirected, served as text/plain, no Cache-Control: still a delegation, kept 24 h
    let (code, report) = w.check("redirect.check.test");
    assert_step(
        &report,
        "well_known_server",
        "ok",
        &[
            "redirected to https://www.redirect.check.test/.well-known/matrix/server",
            "delegates to \"hs.redirect.check.test:8443\"",
        ],
    );
    assert_step(
        &report,
        "well_known_cache",
        "info",
        &[
            "no Cache-Control or Expires header",
            "24 hours (their default)",
        ],
    );
    assert_eq!(report["resolution"]["method"], "well_known", "{report:#}");
    assert_eq!(report["resolution"]["targets"][0]["port"], 8443);
    // nothing serves the delegated name here: the check says where it looked
    assert_eq!(code, 1, "{report:#}");
    assert_step(
        &report,
        "connect",
        "fail",
        &[
            "nothing answers on 127.0.9.3:8443",
            "the well-known points here",
        ],
    );

    // over 50 KiB: other servers ignore it and fall back to SRV, then 8448
    let (code, report) = w.check("big.check.test");
    assert_eq!(code, 1, "{report:#}");
    assert_step(
        &report,
        "well_known_server",
        "warn",
        &[
            "other servers ignore",
            "larger than 50 KiB",
            "fall back to SRV",
        ],
    );
    assert_eq!(report["resolution"]["method"], "default_port", "{report:#}");
    assert_step(
        &report,
        "port_8448",
        "fail",
        &["big.check.test has no valid /.well-known/matrix/server and no SRV record"],
    );
}
