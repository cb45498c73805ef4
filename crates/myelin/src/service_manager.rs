//! Telling systemd what Myelin is doing (`Type=notify`, sd_notify(3)): `READY=1` once every
//! listener is bound, `RELOADING=1` with `MONOTONIC_USEC` (systemd 253 and later want it) while a
//! SIGHUP reload runs and `READY=1` after it, `STOPPING=1` when the drain begins; `STATUS=` says
//! the same in words for `systemctl status`.
//!
//! Without `$NOTIFY_SOCKET` (Myelin not started by systemd) every call does nothing.

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// Every listener is bound: systemd may consider the service started.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins; [`ready`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading the configuration"),
        ]),
        Err(e) => {
            warn!(error = %e, "cannot read the monotonic clock for systemd's reload notification");
            send(&[
                NotifyState::Reloading,
                NotifyState::Status("reloading the configuration"),
            ]);
        }
    }
}

/// The drain begins: no new connections, requests in flight finish.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining: finishing requests in flight"),
    ]);
}

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    match sd_notify::notify(states) {
        Ok(()) => debug!(
            states = %states.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" "),
            "notified the service manager"
        ),
        Err(e) => warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)"),
    }
}
