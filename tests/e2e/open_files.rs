//! Myelin raises its soft limit on open files to the hard limit at start (the soft limit is 1024
//! on most systems, far below `[limits] max_connections`), and warns when even the hard limit is
//! below `max_connections`.

use std::time::Duration;

use myelin_e2e::Myelin;
use myelin_e2e::upstream::RecordingUpstream;

use crate::common::{Fixture, bin};

/// (soft, hard) "Max open files" of a process.
fn open_files_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut n = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| v.parse::<u64>().expect("a number"));
    (n.next().expect("soft"), n.next().expect("hard"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_open_files_limit_is_raised_and_a_too_low_hard_limit_is_reported() {
    let up = RecordingUpstream::start().await;
    let f = Fixture::new("open-files");
    // prlimit (util-linux) sets the limits and execs Myelin, so the child's id stays Myelin's
    let wrapper = ["prlimit", "--nofile=256:4096", "--"];
    const WARNING: &str = "open files limit is below [limits] max_connections";
    let warned = |m: &Myelin| m.logs().iter().any(|v| v.to_string().contains(WARNING));

    let m = Myelin::start_wrapped(
        &bin(),
        &f.dir,
        &f.config(&up.url(), "", "[limits]\nmax_connections = 1000\n"),
        &[],
        &wrapper,
    );
    assert_eq!(
        open_files_limit(m.pid()),
        (4096, 4096),
        "the soft limit was not raised to the hard limit:\n{}",
        m.log_text()
    );
    assert!(
        !warned(&m),
        "a warning with enough descriptors:\n{}",
        m.log_text()
    );
    drop(m);

    let m = Myelin::start_wrapped(
        &bin(),
        &f.dir,
        &f.config(&up.url(), "", "[limits]\nmax_connections = 10000\n"),
        &[],
        &wrapper,
    );
    let warning = m.wait_log(Duration::from_secs(5), |v| {
        v["level"] == "WARN" && v.to_string().contains(WARNING)
    });
    assert!(
        warning.is_some(),
        "no warning that 4096 descriptors cannot hold max_connections = 10000:\n{}",
        m.log_text()
    );
}
