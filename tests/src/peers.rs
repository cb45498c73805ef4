//! Where the real peers are, and what to do when one is missing.

use std::path::PathBuf;
use std::process::Command;

/// Whether we run under CI, where a missing peer is a failure, not a skip.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns whether the peer is there. Missing: under CI the test fails; elsewhere it is skipped
/// with a note saying how to install it.
#[must_use]
pub fn require(peer: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if under_ci() {
        panic!("{peer} is not installed, and CI=true: run tests/setup (it installs every peer)");
    }
    eprintln!("SKIPPED: {peer} is not installed; run tests/setup to install it");
    false
}

/// The test environment `tests/setup` made (venv with Synapse and matrix-nio).
pub fn test_env() -> PathBuf {
    std::env::var_os("MYELIN_TEST_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join(".test-env"))
}

pub fn venv_bin(name: &str) -> PathBuf {
    test_env().join("venv/bin").join(name)
}

pub fn has_python_module(module: &str) -> bool {
    let python = venv_bin("python");
    python.exists()
        && Command::new(&python)
            .arg("-c")
            .arg(format!("import {module}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
}

/// Whether an executable is on PATH (or in /usr/sbin, where Debian puts named).
pub fn has_program(name: &str) -> bool {
    which(name).is_some()
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
