//! `myelin check`: the federation and delegation doctor.
//!
//! [`check_server`] resolves a Matrix server name exactly as a homeserver does (spec, "Resolving
//! server names"): IP literal, explicit port, `/.well-known/matrix/server`, `_matrix-fed._tcp`
//! then `_matrix._tcp` SRV, port 8448. For every address it connects with the SNI the spec
//! prescribes, verifies the certificate for the name the spec prescribes, and checks
//! `/_matrix/key/v2/server` (server name, validity, ed25519 self-signatures over canonical JSON)
//! and `/_matrix/federation/v1/version`. It then checks what clients see
//! (`/.well-known/matrix/client`, CORS, `base_url`, `/.well-known/matrix/support`).
//!
//! [`plan::review`] judges a configuration's delegation and certificate plan without touching
//! the network.
//!
//! Every step is bounded in time and the whole check by a [`Budget`]; the result is a
//! [`Report`] of steps, each with a reason in plain words and a fix.

#![forbid(unsafe_code)]

mod agreement;
pub mod canonical;
mod client;
pub mod dns;
mod federation;
pub mod fetch;
pub mod keys;
pub mod plan;
pub mod report;
mod resolve;
pub mod tls;
pub mod wellknown;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use myelin_well_known::ServerName;

pub use crate::report::{
    CertificatePlan, ClientVerdict, FederationVerdict, HomeserverPlan, PlanReport, Report,
    Resolution, Section, Status, Step,
};

use crate::dns::Dns;
use crate::fetch::{Http, Timeouts};
use crate::tls::Trust;

/// Problems that stop a check before it starts (bad arguments, an unreadable CA file).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot use the CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("cannot set up the DNS resolver: {reason}")]
    Resolver { reason: String },
}

/// How to check.
#[derive(Clone, Debug)]
pub struct Options {
    /// Send every DNS query to this server instead of this machine's resolver.
    pub resolver: Option<SocketAddr>,
    /// More trust roots (PEM), added to this machine's.
    pub ca_files: Vec<PathBuf>,
    /// The whole check ends within this.
    pub budget: Duration,
    pub timeouts: Timeouts,
    /// Per DNS query attempt (two attempts).
    pub dns_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            resolver: None,
            ca_files: Vec::new(),
            budget: Duration::from_secs(60),
            timeouts: Timeouts::default(),
            dns_timeout: Duration::from_secs(3),
        }
    }
}

/// The time left for a check. Every network step takes `min(its own timeout, what is left)`.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    deadline: Instant,
}

impl Budget {
    pub fn new(total: Duration) -> Budget {
        Budget {
            deadline: Instant::now() + total,
        }
    }

    /// `step` capped to what is left; `None` when nothing is.
    pub fn limit(&self, step: Duration) -> Option<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        (!left.is_zero()).then(|| step.min(left))
    }

    pub fn exhausted(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

/// What every part of a check uses.
pub(crate) struct Ctx {
    pub dns: Dns,
    pub http: Http,
    pub budget: Budget,
    pub now: SystemTime,
}

/// The trust roots a check or plan review uses: this machine's plus `ca_files`.
pub fn trust(ca_files: &[PathBuf]) -> Result<Trust, CheckError> {
    let paths: Vec<&std::path::Path> = ca_files.iter().map(PathBuf::as_path).collect();
    Trust::new(&paths)
}

/// Checks `server_name` as other homeservers and clients would reach it.
pub async fn check_server(server_name: &str, opts: &Options) -> Result<Report, CheckError> {
    let started = Instant::now();
    let trust = trust(&opts.ca_files)?;
    let ctx = Ctx {
        dns: Dns::new(opts.resolver, opts.dns_timeout)?,
        http: Http::new(trust, opts.timeouts),
        budget: Budget::new(opts.budget),
        now: SystemTime::now(),
    };
    let mut steps = Vec::new();
    let sn = match ServerName::parse(server_name) {
        Ok(sn) => {
            steps.push(Step::ok(
                Section::ServerName,
                "server_name",
                format!("\"{server_name}\" is a valid server name"),
            ));
            sn
        }
        Err(reason) => {
            steps.push(
                Step::fail(
                    Section::ServerName,
                    "server_name",
                    format!("\"{server_name}\" is not a valid server name: {reason}"),
                )
                .fix("give the server name as it appears in user IDs after the colon, e.g. example.com for @alice:example.com"),
            );
            return Ok(finish(
                server_name,
                steps,
                None,
                ClientVerdict::Fails,
                started,
            ));
        }
    };

    let route = resolve::resolve(&ctx, &sn, server_name, &mut steps).await;
    let resolution = match &route {
        Some(route) => Some(federation::check_targets(&ctx, route, server_name, &mut steps).await),
        None => None,
    };
    let client = client::check(&ctx, &sn, server_name, route.as_ref(), &mut steps).await;
    if ctx.budget.exhausted() {
        // Blame the part that did not finish: federation, unless it already had its answer.
        let federation_done = resolution
            .as_ref()
            .is_some_and(|r| r.targets.iter().any(|t| t.working.is_some()));
        steps.push(
            Step::fail(
                if federation_done {
                    Section::Client
                } else {
                    Section::Federation
                },
                "deadline",
                format!(
                    "the check did not finish within {} s; later steps were skipped",
                    opts.budget.as_secs()
                ),
            )
            .fix("look at the steps that timed out: something does not answer"),
        );
    }
    Ok(finish(server_name, steps, resolution, client, started))
}

fn finish(
    server_name: &str,
    steps: Vec<Step>,
    resolution: Option<Resolution>,
    client: ClientVerdict,
    started: Instant,
) -> Report {
    let federation_fail = steps.iter().find(|s| {
        s.status == Status::Fail && !matches!(s.section, Section::Client | Section::Agreement)
    });
    let works = federation_fail.is_none()
        && resolution
            .as_ref()
            .is_some_and(|r| r.targets.iter().any(|t| t.working.is_some()));
    let reason = match federation_fail {
        Some(s) => Some(s.message.clone()),
        None if !works => Some("no address passed every federation check".into()),
        None => None,
    };
    Report {
        schema: report::SCHEMA,
        server_name: server_name.to_string(),
        federation: if works {
            FederationVerdict::Works
        } else {
            FederationVerdict::Fails
        },
        client,
        resolution,
        reason,
        warnings: steps.iter().filter(|s| s.status == Status::Warn).count(),
        steps,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}
