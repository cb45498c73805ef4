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
pub mod pebble;
pub mod peers;
pub mod pki;
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

/// A free TCP port on 127.0.0.1 (for peers that cannot report the port they bound).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
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
