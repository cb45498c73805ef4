//! `myelin check`: runs the federation and delegation doctor (crate `myelin-check`) and renders
//! its report as readable text or, with `--json`, as the JSON documented in docs/check.md.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use myelin_check::plan::{Challenge, PlanCertificate, PlanHomeserver, PlanInput, PlanListener};
use myelin_check::{
    ClientVerdict, FederationVerdict, Options, PlanReport, Report, Section, Status, Step,
};

use crate::{EXIT_CONFIG, EXIT_RUNTIME};

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The Matrix server name to check, as in user IDs after the colon (e.g. example.com).
    #[arg(required_unless_present = "config", conflicts_with = "config")]
    server_name: Option<String>,
    /// Judge the delegation and certificate plan of every homeserver in this configuration
    /// instead (no network access).
    #[arg(long, short, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Send every DNS query to this server (IP, or IP:PORT) instead of this machine's resolver.
    #[arg(long, value_name = "IP:PORT", value_parser = parse_resolver)]
    resolver: Option<SocketAddr>,
    /// Trust the CA certificates in this PEM file too (repeatable).
    #[arg(long = "ca-file", value_name = "PEM")]
    ca_files: Vec<PathBuf>,
    /// Print the report as JSON (schema in docs/check.md).
    #[arg(long)]
    json: bool,
    /// The whole check ends within this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    timeout: u64,
}

fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| {
            format!("\"{s}\" is not an IP address or IP:PORT (e.g. 127.0.0.1:53 or [::1]:5353)")
        })
}

pub fn run(args: CheckArgs) -> ExitCode {
    let rt = match crate::runtime(None) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    if let Some(path) = &args.config {
        return rt.block_on(check_config_plan(path, &args));
    }
    let Some(name) = args.server_name.as_deref() else {
        eprintln!("error: give a server name or --config PATH");
        return ExitCode::from(EXIT_CONFIG);
    };
    let budget = Duration::from_secs(args.timeout.max(1));
    let opts = Options {
        resolver: args.resolver,
        ca_files: args.ca_files.clone(),
        budget,
        ..Options::default()
    };
    // The check bounds every step by its budget; this is the last guard.
    let result = rt.block_on(async {
        tokio::time::timeout(
            budget + Duration::from_secs(10),
            myelin_check::check_server(name, &opts),
        )
        .await
    });
    let report = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(_) => {
            eprintln!(
                "error: the check did not finish within {} s",
                budget.as_secs() + 10
            );
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    if let Err(code) = print(args.json, &report, render_report) {
        return code;
    }
    ExitCode::from(report.exit_code())
}

async fn check_config_plan(path: &std::path::Path, args: &CheckArgs) -> ExitCode {
    let config = match myelin_config::load(path) {
        Ok(c) => c,
        Err(errors) => return crate::config_failure(&errors),
    };
    let plan = match crate::plan::Plan::build(&config) {
        Ok(p) => p,
        Err(errors) => return crate::config_failure(&errors),
    };
    let trust = match myelin_check::trust(&args.ca_files) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let input = PlanInput {
        config: path.display().to_string(),
        listeners: config
            .listeners
            .iter()
            .map(|l| PlanListener {
                bind: l.bind.value,
                tls: l.tls,
            })
            .collect(),
        certificates: plan
            .certs
            .certs()
            .iter()
            .map(|c| PlanCertificate {
                origin: c.origin.clone(),
                names: c.names.clone(),
                chain: c.key.cert.clone(),
                self_signed: c.origin == "self-signed",
                not_after: Some(c.not_after),
                acme: None,
            })
            .chain(acme_certificates(plan.acme.as_ref()))
            .collect(),
        homeservers: config
            .homeservers
            .iter()
            .map(|h| PlanHomeserver {
                server_name: h.server_name.value.clone(),
                hosts: h.hosts.iter().map(|v| v.value.clone()).collect(),
                well_known_server: h.well_known.server.as_ref().map(|v| v.value.clone()),
                client_base_url: h
                    .well_known
                    .client_base_url
                    .as_ref()
                    .map(|v| v.value.clone()),
                cache_max_age: h
                    .well_known
                    .cache_max_age
                    .as_ref()
                    .map_or(myelin_config::DEFAULT_WELL_KNOWN_MAX_AGE, |d| d.value),
            })
            .collect(),
    };
    let report = myelin_check::plan::review(&input, &trust);
    if let Err(code) = print(args.json, &report, render_plan) {
        return code;
    }
    if !args.json {
        for w in &plan.warnings {
            eprintln!("warning: {w}");
        }
    }
    ExitCode::from(if report.works { 0 } else { 1 })
}

/// The certificates `[acme]` would keep, as the plan review sees them: names and challenge,
/// no chain yet. After the `[[certificate]]`s, as the running certificate store has them (ACME
/// asks only for names no `[[certificate]]` covers).
fn acme_certificates(acme: Option<&myelin_acme::AcmeSettings>) -> Vec<PlanCertificate> {
    acme.map_or(&[][..], |a| &a.certificates[..])
        .iter()
        .map(|c| {
            let challenge = match c.challenge {
                myelin_acme::ChallengeKind::Http01 => Challenge::Http01,
                myelin_acme::ChallengeKind::TlsAlpn01 => Challenge::TlsAlpn01,
                myelin_acme::ChallengeKind::Dns01 => Challenge::Dns01,
            };
            PlanCertificate {
                origin: format!("ACME ({})", challenge.as_str()),
                names: c.names.clone(),
                chain: Vec::new(),
                self_signed: false,
                not_after: None,
                acme: Some(challenge),
            }
        })
        .collect()
}

/// Prints a report as JSON or as text.
fn print<R: serde::Serialize>(
    json: bool,
    report: &R,
    render: fn(&R) -> String,
) -> Result<(), ExitCode> {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("error: cannot render the report: {e}");
                return Err(ExitCode::from(EXIT_RUNTIME));
            }
        }
    } else {
        print!("{}", render(report));
    }
    Ok(())
}

fn render_step(out: &mut String, indent: &str, step: &Step) {
    let _ = writeln!(out, "{indent}{} {}", step.status.mark(), step.message);
    if let Some(fix) = &step.fix {
        if step.status >= Status::Warn {
            let _ = writeln!(out, "{indent}  → fix: {fix}");
        }
    }
}

/// The readable report: steps grouped by section, then the verdicts.
pub fn render_report(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "myelin check {}", r.server_name);
    let mut section: Option<Section> = None;
    let mut target: Option<&str> = None;
    for step in &r.steps {
        if section != Some(step.section) {
            let _ = writeln!(out, "\n{}", step.section.title());
            section = Some(step.section);
            target = None;
        }
        if step.section == Section::Federation && step.target.as_deref() != target {
            target = step.target.as_deref();
            if let Some(t) = target {
                let _ = writeln!(out, "  {t}");
            }
        }
        let indent = if step.section == Section::Federation && target.is_some() {
            "    "
        } else {
            "  "
        };
        render_step(&mut out, indent, step);
    }
    let _ = writeln!(out);
    match r.federation {
        FederationVerdict::Works => {
            let via: Vec<String> = r
                .resolution
                .iter()
                .flat_map(|res| &res.targets)
                .filter_map(|t| t.working.as_ref().map(|w| format!("{w} ({})", t.host)))
                .collect();
            let _ = writeln!(
                out,
                "✔ Federation works: other servers reach {} at {}.",
                r.server_name,
                via.join(", ")
            );
        }
        FederationVerdict::Fails => {
            let _ = writeln!(
                out,
                "✖ Federation fails: {}",
                r.reason.as_deref().unwrap_or("see the steps above")
            );
        }
    }
    let _ = match r.client {
        ClientVerdict::Works => writeln!(
            out,
            "✔ Clients find the homeserver through /.well-known/matrix/client."
        ),
        ClientVerdict::NotPublished => writeln!(out, "• Clients: no client discovery published."),
        ClientVerdict::Fails => writeln!(
            out,
            "✖ Clients: discovery is broken (see the client steps)."
        ),
    };
    if r.warnings > 0 {
        let _ = writeln!(
            out,
            "⚠ {} warning{}.",
            r.warnings,
            if r.warnings == 1 { "" } else { "s" }
        );
    }
    out
}

/// The readable plan review.
pub fn render_plan(r: &PlanReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "myelin check --config {}", r.config);
    for hs in &r.homeservers {
        let _ = writeln!(out, "\n{}: {}", hs.server_name, hs.delegation);
        for step in &hs.steps {
            render_step(&mut out, "  ", step);
        }
    }
    for c in &r.certificates {
        let _ = writeln!(
            out,
            "\nACME certificate {} ({})",
            c.names.join(", "),
            c.challenge
        );
        for step in &c.steps {
            render_step(&mut out, "  ", step);
        }
    }
    let _ = writeln!(out);
    let failing: Vec<String> = r
        .homeservers
        .iter()
        .filter(|h| !h.works)
        .map(|h| h.server_name.clone())
        .chain(
            r.certificates
                .iter()
                .filter(|c| !c.works)
                .map(|c| format!("the certificate for {}", c.names.join(", "))),
        )
        .collect();
    if failing.is_empty() {
        let _ = writeln!(out, "✔ The plan can work for every homeserver.");
    } else {
        let _ = writeln!(out, "✖ The plan cannot work for: {}.", failing.join(", "));
    }
    if r.warnings > 0 {
        let _ = writeln!(
            out,
            "⚠ {} warning{}.",
            r.warnings,
            if r.warnings == 1 { "" } else { "s" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_addresses() {
        assert_eq!(parse_resolver("127.0.0.53:53").unwrap().port(), 53);
        assert_eq!(parse_resolver("127.0.0.1").unwrap().port(), 53);
        assert_eq!(parse_resolver("[::1]:5353").unwrap().port(), 5353);
        assert_eq!(parse_resolver("::1").unwrap().port(), 53);
        assert!(parse_resolver("dns.example").is_err());
    }
}
