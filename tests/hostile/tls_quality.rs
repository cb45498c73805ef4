//! TLS quality, judged by testssl.sh against a Myelin listener: no protocol below TLS 1.2, no
//! weak cipher, no known vulnerability, session resumption by ID and by ticket. testssl.sh runs
//! with no DNS lookups and no phoning out (it checks only what the listener offers). Its
//! resumption checks race on a loaded machine; when they stay inconclusive, resumption is
//! proven with openssl s_client directly.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use myelin_e2e::faulty::FaultyUpstream;
use myelin_e2e::hostile::{figure, runtime};
use myelin_e2e::{Myelin, peers};
use serde_json::Value;

use crate::common::{Fixture, bin};
use crate::scenario::serial;

/// Findings that must say "not offered" (old protocols and weak cipher groups).
const NOT_OFFERED: &[&str] = &[
    "SSLv2",
    "SSLv3",
    "TLS1",
    "TLS1_1",
    "cipherlist_NULL",
    "cipherlist_aNULL",
    "cipherlist_EXPORT",
    "cipherlist_LOW",
    "cipherlist_3DES_IDEA",
    "cipherlist_AVERAGE",
];

/// The vulnerability checks of `testssl -U`: each must be there and OK.
const VULNERABILITIES: &[&str] = &[
    "heartbleed",
    "CCS",
    "ticketbleed",
    "ROBOT",
    "secure_renego",
    "secure_client_renego",
    "CRIME_TLS",
    "BREACH",
    "POODLE_SSL",
    "fallback_SCSV",
    "SWEET32",
    "FREAK",
    "DROWN",
    "LOGJAM",
    "BEAST",
    "LUCKY13",
    "RC4",
];

#[test]
fn testssl_finds_no_old_protocol_weak_cipher_or_vulnerability_and_resumption_works() {
    let _serial = serial();
    if !peers::require("testssl.sh", peers::has_program("testssl")) {
        return;
    }
    let up_rt = runtime(1);
    let up = FaultyUpstream::start(up_rt.handle());
    let f = Fixture::new("testssl");
    let m = Myelin::start(&bin(), &f.dir, &f.config(&up.url(), "", ""));
    let addr = m.only_addr();
    let started = Instant::now();
    let (mut by_id, mut text) = run_testssl(&f, addr, 1, &["-p", "-s", "-S", "-U"]);
    // testssl.sh's resumption checks race on a loaded machine: openssl s_client may close before
    // the session arrives ("not supported", an empty session file) or fail to connect ("check
    // failed because of connect problem"). Such a result says nothing about the server: the
    // server-defaults checks (-S) run again, at most twice.
    let mut attempts = 1;
    let inconclusive = |by_id: &BTreeMap<String, (String, String)>| {
        ["sessionresumption_ticket", "sessionresumption_ID"]
            .iter()
            .any(|id| {
                by_id
                    .get(*id)
                    .is_none_or(|(_, finding)| finding != "supported")
            })
            || by_id
                .values()
                .any(|(_, finding)| finding.contains("connect problem"))
    };
    while inconclusive(&by_id) && attempts < 3 {
        attempts += 1;
        eprintln!("testssl.sh's resumption checks were inconclusive; running -S again");
        let (again, again_text) = run_testssl(&f, addr, attempts, &["-S"]);
        by_id.extend(again);
        text.push_str(&again_text);
    }
    let took = started.elapsed();
    figure("testssl", "runs", attempts);
    let get = |id: &str| {
        by_id
            .get(id)
            .cloned()
            .unwrap_or_else(|| panic!("testssl reported nothing for {id}:\n{text}"))
    };
    figure(
        "testssl",
        "run time (all runs)",
        format!("{:.0} s", took.as_secs_f64()),
    );
    for id in [
        "TLS1_2",
        "TLS1_3",
        "sessionresumption_ticket",
        "sessionresumption_ID",
        "cipherlist_STRONG",
    ] {
        figure("testssl", id, get(id).1);
    }

    let mut problems = Vec::new();
    for id in NOT_OFFERED {
        let (sev, finding) = get(id);
        if !finding.starts_with("not offered") {
            problems.push(format!("{id}: {sev} {finding}"));
        }
    }
    for id in ["TLS1_2", "TLS1_3", "cipherlist_STRONG"] {
        let (_, finding) = get(id);
        if !finding.starts_with("offered") {
            problems.push(format!("{id} should be offered: {finding}"));
        }
    }
    for id in VULNERABILITIES {
        let (sev, finding) = get(id);
        if sev != "OK" && sev != "INFO" {
            problems.push(format!("{id}: {sev} {finding}"));
        }
    }
    // testssl.sh's own resumption checks can stay inconclusive on a loaded machine (above);
    // then resumption is proven directly with openssl s_client, which waits for the session.
    for (id, tls12) in [
        ("sessionresumption_ticket", false),
        ("sessionresumption_ID", true),
    ] {
        let (_, finding) = get(id);
        if finding != "supported" {
            match openssl_resumes(&f, addr, tls12) {
                Ok(()) => figure("testssl", &format!("{id} (openssl s_client)"), "supported"),
                Err(e) => problems.push(format!("{id}: testssl: {finding}; openssl: {e}")),
            }
        }
    }
    // anything else medium or worse, but for facts of the test certificate itself (a test CA
    // has no OCSP/CRL address; that is the certificate's issuer's business, not the listener's)
    for (id, (sev, finding)) in &by_id {
        let about_the_certificate = id.starts_with("cert_") || id == "OCSP_stapling";
        if ["MEDIUM", "HIGH", "CRITICAL"].contains(&sev.as_str()) && !about_the_certificate {
            problems.push(format!("{id}: {sev} {finding}"));
        }
    }
    let (sev, finding) = get("cert_chain_of_trust");
    if sev != "OK" {
        problems.push(format!("cert_chain_of_trust: {sev} {finding}"));
    }
    assert!(
        problems.is_empty(),
        "testssl.sh found problems:\n{}\n\n{text}",
        problems.join("\n")
    );
    assert!(m.log_text().contains("listening"));
}

/// Whether a second connection resumes the first one's session: by a TLS 1.3 ticket, or
/// (`tls12`) by a TLS 1.2 session ID with tickets off. Each connection sends a request with
/// `Connection: close` and reads until Myelin closes, so the session has surely arrived.
fn openssl_resumes(f: &Fixture, addr: std::net::SocketAddr, tls12: bool) -> Result<(), String> {
    use std::io::Write;
    use std::process::Stdio;
    let session = f.dir.join(if tls12 {
        "session-id.pem"
    } else {
        "session-ticket.pem"
    });
    let _ = std::fs::remove_file(&session);
    let connect = |resume: bool| -> Result<String, String> {
        let mut cmd = Command::new("timeout");
        cmd.args(["20", "openssl", "s_client", "-ign_eof", "-connect"])
            .arg(addr.to_string())
            .arg("-CAfile")
            .arg(&f.ca_path)
            .arg(if resume { "-sess_in" } else { "-sess_out" })
            .arg(&session);
        if tls12 {
            cmd.args(["-tls1_2", "-no_ticket"]);
        } else {
            cmd.arg("-tls1_3");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run openssl: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(
                b"GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
            );
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("openssl: {e}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let first = connect(false)?;
    if !first.contains("HTTP/1.1 ") {
        return Err(format!("the first connection got no answer:\n{first}"));
    }
    let second = connect(true)?;
    if second.contains("Reused, TLSv1") {
        Ok(())
    } else {
        Err(format!(
            "the second connection was a new session:\n{}",
            second
                .lines()
                .filter(|l| l.contains("New,") || l.contains("Reused,") || l.contains("Protocol"))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    }
}

/// One run of testssl.sh against `addr`; its findings by id: (severity, finding).
fn run_testssl(
    f: &Fixture,
    addr: std::net::SocketAddr,
    attempt: usize,
    checks: &[&str],
) -> (BTreeMap<String, (String, String)>, String) {
    let json = f.dir.join(&format!("testssl-{attempt}.json"));
    // -p protocols, -s cipher categories, -S server defaults (resumption, certificate),
    // -U vulnerabilities; --nodns none: no lookups; testssl.sh does not phone out by default
    let out = Command::new("testssl")
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--nodns",
            "none",
        ])
        .arg("--add-ca")
        .arg(&f.ca_path)
        .arg("--jsonfile")
        .arg(&json)
        .args(checks)
        .arg(addr.to_string())
        .output()
        .expect("run testssl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let findings: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(&json)
            .unwrap_or_else(|e| panic!("no JSON from testssl ({e}):\n{text}")),
    )
    .expect("testssl JSON");
    let by_id = findings
        .iter()
        .filter_map(|f| {
            Some((
                f["id"].as_str()?.to_string(),
                (
                    f["severity"].as_str()?.to_string(),
                    f["finding"].as_str()?.to_string(),
                ),
            ))
        })
        .collect();
    (by_id, text)
}
