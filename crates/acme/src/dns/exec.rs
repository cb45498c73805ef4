//! The `exec` provider: runs `COMMAND... present|cleanup FQDN VALUE` (lego's exec convention),
//! for DNS hosts Myelin has no built-in support for. A non-zero exit fails the challenge and the
//! command's stderr is logged.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tracing::{debug, warn};

use crate::AcmeError;
use crate::dns::{BoxFuture, DnsProvider};

/// What stderr of a failing hook is kept for the log (the tail).
const STDERR_KEEP: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecSettings {
    /// Program and its first arguments.
    pub command: Vec<String>,
    /// A hook still running after this is killed and counts as failed.
    pub timeout: Duration,
}

pub struct ExecHook {
    settings: ExecSettings,
}

impl ExecHook {
    pub fn new(settings: ExecSettings) -> Self {
        ExecHook { settings }
    }

    async fn run(&self, action: &'static str, fqdn: &str, value: &str) -> Result<(), AcmeError> {
        let command_line = self.settings.command.join(" ");
        let fail = |status: String, stderr: String| AcmeError::Hook {
            command: command_line.clone(),
            action,
            fqdn: fqdn.to_string(),
            status,
            stderr,
        };
        let Some((program, args)) = self.settings.command.split_first() else {
            return Err(fail("no command configured".into(), String::new()));
        };
        let child = Command::new(program)
            .args(args)
            .arg(action)
            .arg(fqdn)
            .arg(value)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("cannot start {program}: {e}"), String::new()))?;
        let out = match tokio::time::timeout(self.settings.timeout, child.wait_with_output()).await
        {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(fail(format!("waiting for it: {e}"), String::new())),
            Err(_) => {
                return Err(fail(
                    format!(
                        "still running after {}s, killed",
                        self.settings.timeout.as_secs()
                    ),
                    String::new(),
                ));
            }
        };
        let stderr = tail(&out.stderr);
        if out.status.success() {
            debug!(command = %command_line, action, fqdn, "DNS hook succeeded");
            return Ok(());
        }
        let status = match out.status.code() {
            Some(c) => format!("exit status {c}"),
            None => format!("{}", out.status),
        };
        warn!(command = %command_line, action, fqdn, status = %status, stderr = %stderr, "DNS hook failed");
        Err(fail(status, stderr))
    }
}

impl DnsProvider for ExecHook {
    fn present<'a>(
        &'a self,
        fqdn: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(self.run("present", fqdn, value))
    }

    fn cleanup<'a>(
        &'a self,
        fqdn: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(self.run("cleanup", fqdn, value))
    }
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_KEEP);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(script: &str) -> ExecHook {
        ExecHook::new(ExecSettings {
            command: vec!["sh".into(), "-c".into(), script.into(), "hook".into()],
            timeout: Duration::from_secs(5),
        })
    }

    #[tokio::test]
    async fn passes_action_name_value_and_reports_stderr() {
        let ok =
            hook(r#"[ "$1" = present ] && [ "$2" = "_acme-challenge.a.test." ] && [ "$3" = v ]"#);
        ok.present("_acme-challenge.a.test.", "v").await.unwrap();
        let bad = hook("echo 'zone not found' >&2; exit 3");
        let err = bad.cleanup("x.", "v").await.unwrap_err().to_string();
        assert!(err.contains("cleanup x."), "{err}");
        assert!(err.contains("exit status 3"), "{err}");
        assert!(err.contains("zone not found"), "{err}");
    }

    #[tokio::test]
    async fn a_hanging_hook_is_killed() {
        let mut h = hook("sleep 30");
        h.settings.timeout = Duration::from_millis(200);
        let err = h.present("x.", "v").await.unwrap_err().to_string();
        assert!(err.contains("killed"), "{err}");
    }
}
