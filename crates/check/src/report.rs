//! What a check found: an ordered list of steps, each with a status, a reason in plain words and
//! a fix, and the two verdicts (federation, clients). Serialised as the `--json` output; the
//! schema is documented in `docs/check.md` and versioned by [`SCHEMA`].

use serde::Serialize;

/// The JSON schema identifier; bumped when a field changes meaning or disappears.
pub const SCHEMA: &str = "myelin-check/1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Checked and fine.
    Ok,
    /// Worth knowing; nothing to fix.
    Info,
    /// Works, but is fragile, deprecated or about to break.
    Warn,
    /// Breaks federation (or, in the client section, clients).
    Fail,
}

impl Status {
    /// The mark the text report shows.
    pub fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✔",
            Status::Info => "•",
            Status::Warn => "⚠",
            Status::Fail => "✖",
        }
    }
}

/// Which part of the check a step belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    ServerName,
    Delegation,
    Dns,
    Federation,
    Client,
    Agreement,
    /// `--config`: one homeserver's plan.
    Plan,
}

impl Section {
    pub fn title(self) -> &'static str {
        match self {
            Section::ServerName => "Server name",
            Section::Delegation => "Delegation (/.well-known/matrix/server)",
            Section::Dns => "DNS",
            Section::Federation => "Federation",
            Section::Client => "Clients (/.well-known/matrix/client)",
            Section::Agreement => "Client and server discovery together",
            Section::Plan => "Plan",
        }
    }
}

/// One thing checked.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub section: Section,
    /// A stable identifier of the check, e.g. `tls_certificate` (listed in docs/check.md).
    pub check: &'static str,
    pub status: Status,
    /// The address or URL this step is about, when there are several of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// What was found, in plain words.
    pub message: String,
    /// What to do about it (warnings and failures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Step {
    pub fn new(section: Section, check: &'static str, status: Status, message: String) -> Step {
        Step {
            section,
            check,
            status,
            target: None,
            message,
            fix: None,
        }
    }

    pub fn ok(section: Section, check: &'static str, message: impl Into<String>) -> Step {
        Step::new(section, check, Status::Ok, message.into())
    }

    pub fn info(section: Section, check: &'static str, message: impl Into<String>) -> Step {
        Step::new(section, check, Status::Info, message.into())
    }

    pub fn warn(section: Section, check: &'static str, message: impl Into<String>) -> Step {
        Step::new(section, check, Status::Warn, message.into())
    }

    pub fn fail(section: Section, check: &'static str, message: impl Into<String>) -> Step {
        Step::new(section, check, Status::Fail, message.into())
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Step {
        self.fix = Some(fix.into());
        self
    }

    pub fn target(mut self, target: impl Into<String>) -> Step {
        self.target = Some(target.into());
        self
    }
}

/// Whether other servers can federate with the server name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FederationVerdict {
    Works,
    Fails,
}

/// Whether clients can discover and use the homeserver from the server name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientVerdict {
    /// `/.well-known/matrix/client` is valid and its `base_url` answers.
    Works,
    /// No client well-known: clients must be told the homeserver URL.
    NotPublished,
    /// The client well-known or its `base_url` is broken: clients stop.
    Fails,
}

/// How the server name was resolved: what a homeserver connects to, and with which names.
#[derive(Clone, Debug, Serialize)]
pub struct Resolution {
    /// `ip_literal`, `explicit_port`, `well_known`, `srv`, `srv_legacy` or `default_port`,
    /// prefixed `well_known+` when the well-known delegated to a name without port.
    pub method: String,
    /// The `Host` header other servers send.
    pub host_header: String,
    /// The name the certificate must be valid for (and the SNI, unless an IP address).
    pub certificate_name: String,
    /// Where other servers connect, in the order they try.
    pub targets: Vec<ResolvedTarget>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ResolvedTarget {
    pub host: String,
    pub port: u16,
    pub addresses: Vec<String>,
    /// The address (`ip:port`) that passed every federation check, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working: Option<String>,
}

/// The result of `myelin check SERVER_NAME`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub server_name: String,
    pub federation: FederationVerdict,
    pub client: ClientVerdict,
    /// Empty when the server name could not be resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    /// A failure's reason in one line: the first failed federation step's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub steps: Vec<Step>,
    pub warnings: usize,
    pub duration_ms: u64,
}

impl Report {
    /// Steps of one check id.
    pub fn steps_of<'a>(&'a self, check: &'a str) -> impl Iterator<Item = &'a Step> + 'a {
        self.steps.iter().filter(move |s| s.check == check)
    }

    /// The exit code `myelin check` uses: 0 federation works (and clients, or no client
    /// discovery is published), 1 federation fails, 3 federation works but client discovery is
    /// broken. (2 is left to the argument parser, which uses it for usage errors.)
    pub fn exit_code(&self) -> u8 {
        match (self.federation, self.client) {
            (FederationVerdict::Fails, _) => 1,
            (FederationVerdict::Works, ClientVerdict::Fails) => 3,
            _ => 0,
        }
    }
}

/// One homeserver of a configuration, as `myelin check --config` judges it.
#[derive(Clone, Debug, Serialize)]
pub struct HomeserverPlan {
    pub server_name: String,
    /// The delegation mode the configuration chose, in words.
    pub delegation: String,
    /// Whether the plan can work (no failed rule).
    pub works: bool,
    pub steps: Vec<Step>,
}

/// A certificate from the ACME CA that serves no homeserver's names (an `[[acme.certificate]]`
/// such as a wildcard), as `myelin check --config` judges it. Certificates that serve a
/// homeserver are judged in that homeserver's steps.
#[derive(Clone, Debug, Serialize)]
pub struct CertificatePlan {
    pub names: Vec<String>,
    /// `http-01`, `tls-alpn-01` or `dns-01`.
    pub challenge: &'static str,
    /// Whether the CA can validate it (no failed rule).
    pub works: bool,
    pub steps: Vec<Step>,
}

/// The result of `myelin check --config PATH`.
#[derive(Clone, Debug, Serialize)]
pub struct PlanReport {
    pub schema: &'static str,
    pub config: String,
    pub works: bool,
    pub homeservers: Vec<HomeserverPlan>,
    pub certificates: Vec<CertificatePlan>,
    pub warnings: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(federation: FederationVerdict, client: ClientVerdict) -> Report {
        Report {
            schema: SCHEMA,
            server_name: "example.test".into(),
            federation,
            client,
            resolution: None,
            reason: None,
            steps: Vec::new(),
            warnings: 0,
            duration_ms: 0,
        }
    }

    #[test]
    fn exit_codes() {
        use ClientVerdict as C;
        use FederationVerdict as F;
        assert_eq!(report(F::Works, C::Works).exit_code(), 0);
        assert_eq!(report(F::Works, C::NotPublished).exit_code(), 0);
        assert_eq!(report(F::Works, C::Fails).exit_code(), 3);
        assert_eq!(report(F::Fails, C::Works).exit_code(), 1);
        assert_eq!(report(F::Fails, C::Fails).exit_code(), 1);
    }
}
