//! Under attack and under load (issue 9): hostile clients, failing peers, reloads and restarts,
//! each through the real binary on loopback, bounded in time and count.
//!
//! Bounded CI mode by default; `MYELIN_HOSTILE_FULL=1` runs the full mode (the counts at
//! Myelin's default limits, longer runs). Measured figures are printed as `figure: ...` lines
//! (run with `--nocapture` to see them). The tests take turns (one at a time), so that one's
//! load never shows in another's latencies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../e2e/common.rs"]
#[allow(dead_code)]
mod common;

mod bad_config;
mod failing_peers;
mod h2_floods;
mod lifecycle;
mod scenario;
mod slow_clients;
mod tls_quality;
