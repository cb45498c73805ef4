//! The end-to-end harness: starts the real `myelin` binary and real peers on loopback, and
//! gives tests clients to talk to them. Scenarios live in `tests/e2e/`.
//!
//! Peers are found where `tests/setup` installs them. A missing peer skips its tests on a
//! developer machine and fails them under CI (`CI=true`).

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bind;
pub mod client;
pub mod dirs;
pub mod faulty;
pub mod hostile;
pub mod myelin;
pub mod named;
pub mod netns;
pub mod notify;
pub mod pebble;
pub mod peers;
pub mod pki;
pub mod prometheus;
pub mod services;
pub mod synapse;
pub mod upstream;

pub use crate::bind::{Bind, Zone};
pub use crate::dirs::TestDir;
pub use crate::myelin::Myelin;
pub use crate::pebble::{Pebble, PebbleConfig};
pub use crate::pki::TestCa;

/// The repository root (this crate lives in `<root>/tests`).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A command that runs `program` through `wrapper` (e.g. `["ip", "netns", "exec", NAME]`);
/// directly when `wrapper` is empty.
pub fn wrapped_command(
    wrapper: &[&str],
    program: impl AsRef<std::ffi::OsStr>,
) -> std::process::Command {
    match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = std::process::Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => std::process::Command::new(program),
    }
}

/// Runs a command with a deadline (killed after it); returns (exit code, stdout, stderr).
/// Panics when it cannot be started or does not finish in time.
pub fn run_bounded(
    mut cmd: std::process::Command,
    timeout: std::time::Duration,
) -> (i32, String, String) {
    use std::process::Stdio;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Ok(Err(e)) => panic!("waiting for {:?}: {e}", cmd.get_program()),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &id.to_string()])
                .status();
            panic!(
                "{:?} {:?} did not finish within {timeout:?}",
                cmd.get_program(),
                cmd.get_args().collect::<Vec<_>>()
            );
        }
    }
}

/// A free TCP and UDP port on 127.0.0.1 (for peers that cannot report the port they bound).
///
/// Taken below the kernel's ephemeral range (32768 and up by default), never twice in one test
/// process: a port the kernel hands out for port 0 may be handed out again, to an outgoing
/// connection or another test, before the peer binds it ("Address already in use").
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (base + i) % SPAN).expect("below 32000");
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {LOW} and {}", LOW + SPAN)
}

/// Polls `check` every 50 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    check()
}
