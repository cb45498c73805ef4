//! A real Synapse behind Myelin, a real Matrix client (matrix-nio) and curl in front.

use std::process::Command;

use myelin_e2e::Myelin;
use myelin_e2e::peers::require;
use myelin_e2e::synapse::{self, Synapse, SynapseOptions, nio_flow};

use crate::common::{Fixture, bin};

#[test]
fn matrix_client_registers_logs_in_creates_sends_and_syncs_through_myelin() {
    if !require(
        "Synapse (PyPI matrix-synapse) and matrix-nio",
        synapse::available() && myelin_e2e::peers::has_python_module("nio"),
    ) {
        return;
    }
    let f = Fixture::new("synapse");
    let syn = Synapse::start(
        &f.dir,
        SynapseOptions {
            server_name: "example.test",
            public_baseurl: "https://example.test/",
            ..Default::default()
        },
    );
    let wk = "admin_allow = [\"127.0.0.0/8\"]\n[homeserver.well_known]\nclient_base_url = \"https://example.test\"\nserver = \"example.test:443\"\n";
    let m = Myelin::start(&bin(), &f.dir, &f.config(&syn.url(), wk, ""));
    let addr = m.only_addr();
    let base = format!("https://localhost:{}", addr.port());
    let ca = f.ca_path.display().to_string();

    // registration through Myelin: the shared-secret admin API, allowed from loopback
    syn.register(&base, "alice", "alice-password", false, Some(&f.ca_path))
        .unwrap_or_else(|e| panic!("register through myelin: {e}\n{}", m.log_text()));

    // the real client: login, create a room, send, sync, see the message
    let (ok, out) = nio_flow(
        &["solo", &base, "alice", "alice-password", "--cafile", &ca],
        &[],
    );
    assert!(
        ok,
        "matrix-nio through myelin failed:\n{out}\n{}",
        m.log_text()
    );
    assert!(out.contains("message_seen=True"), "{out}");

    // by host name, as a client that followed well-known would connect
    let named = format!("https://example.test:{}", addr.port());
    let (ok, out) = nio_flow(
        &[
            "solo",
            &named,
            "alice",
            "alice-password",
            "--cafile",
            &ca,
            "--resolve",
            "example.test:127.0.0.1",
        ],
        &[],
    );
    assert!(ok, "matrix-nio by host name failed:\n{out}");

    // without the CA the client refuses the connection: the test can fail
    let (ok, out) = nio_flow(&["solo", &base, "alice", "alice-password"], &[]);
    assert!(!ok, "an untrusted certificate was accepted:\n{out}");

    // curl over HTTP/2 to the homeserver's own endpoints, and the federation key endpoint
    let versions = curl(&[
        "--http2",
        "--cacert",
        &ca,
        &format!("{base}/_matrix/client/versions"),
        "-w",
        "\n%{http_version}",
    ]);
    assert!(
        versions.contains("\"versions\"") && versions.ends_with("\n2"),
        "{versions}"
    );
    let keys = curl(&["--cacert", &ca, &format!("{base}/_matrix/key/v2/server")]);
    let keys: serde_json::Value = serde_json::from_str(&keys).unwrap();
    assert_eq!(keys["server_name"], "example.test");
    assert!(
        keys["verify_keys"]
            .as_object()
            .is_some_and(|k| !k.is_empty())
    );
    let fed = curl(&[
        "--cacert",
        &ca,
        &format!("{base}/_matrix/federation/v1/version"),
    ]);
    assert!(fed.contains("Synapse"), "{fed}");

    // Synapse sees the client's address from Myelin, not what the client claims
    let out = curl(&[
        "--interface",
        "127.0.0.5",
        "--cacert",
        &ca,
        "-H",
        "X-Forwarded-For: 198.51.100.9",
        &format!("{base}/_matrix/client/versions?from=xff-check"),
    ]);
    assert!(out.contains("versions"), "{out}");
    assert!(
        myelin_e2e::wait_until(std::time::Duration::from_secs(5), || syn
            .log()
            .lines()
            .any(|l| l.contains("xff-check") && l.contains("127.0.0.5"))),
        "Synapse did not log the real client address:\n{}",
        syn.log_tail(20)
    );
    assert!(
        !syn.log().contains("198.51.100.9"),
        "a client-supplied X-Forwarded-For reached Synapse"
    );
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
