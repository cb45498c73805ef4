//! `myelin`: the command line. Parses arguments, loads the configuration, hands over to the
//! crates, and turns failures into exit codes (64 for a configuration error).

#![forbid(unsafe_code)]

mod access;
mod acme;
mod app;
mod check_cmd;
mod metrics_endpoint;
mod plan;
mod routing;
mod run;
mod service_manager;
mod telemetry;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use myelin_config::{Config, ConfigErrors};

/// Exit code for a configuration that cannot be used (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code for a failure while running (a port in use, a signal handler that cannot be set).
const EXIT_RUNTIME: u8 = 1;

/// mimalloc: per-thread free lists suit a proxy's many short-lived request allocations better
/// than glibc's arenas (measured in bench/run).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_CONFIG: &str = "/etc/myelin/myelin.toml";

/// The configuration `myelin run --embedded-default` uses: a self-signed certificate for
/// localhost on 127.0.0.1:8443 in front of a homeserver on 127.0.0.1:8008.
pub const EMBEDDED_DEFAULT: &str = include_str!("embedded-default.toml");

#[derive(Parser)]
#[command(
    name = "myelin",
    version,
    about = "A TLS reverse proxy made for Matrix homeservers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Ignore --config and run on the built-in test configuration: https://localhost:8443 with a
        /// self-signed certificate, in front of http://127.0.0.1:8008.
        #[arg(long, conflicts_with = "config")]
        embedded_default: bool,
        /// Log format, overriding [log] format: "text" or "json".
        #[arg(long)]
        log_format: Option<String>,
    },
    /// Check a configuration file without starting anything.
    CheckConfig {
        /// Configuration file.
        #[arg(default_value = DEFAULT_CONFIG)]
        path: PathBuf,
    },
    /// Check that other servers and clients can reach a Matrix server name, step by step as a
    /// homeserver resolves it (exit 0: works; 1: federation fails; 3: clients fail), or with
    /// --config, whether a configuration's delegation and certificate plan can work.
    Check(check_cmd::CheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { path } => check_config(&path),
        Command::Check(args) => check_cmd::run(args),
        Command::Run {
            config,
            embedded_default,
            log_format,
        } => {
            let loaded = if embedded_default {
                myelin_config::parse(EMBEDDED_DEFAULT, Path::new("<embedded default>"))
            } else {
                myelin_config::load(&config)
            };
            let config = match loaded {
                Ok(c) => c,
                Err(errors) => return config_failure(&errors),
            };
            run(config, log_format.as_deref(), embedded_default)
        }
    }
}

fn runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        b.worker_threads(n);
    }
    b.enable_all().build()
}

fn check_config(path: &Path) -> ExitCode {
    let config = match myelin_config::load(path) {
        Ok(c) => c,
        Err(errors) => return config_failure(&errors),
    };
    let rt = match runtime(None) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let built = rt.block_on(async { plan::Plan::build(&config) });
    match built {
        Ok(plan) => {
            println!("OK: {}: {}", path.display(), plan.summary);
            for w in &plan.warnings {
                eprintln!("warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => config_failure(&errors),
    }
}

fn config_failure(errors: &ConfigErrors) -> ExitCode {
    for e in errors.iter() {
        eprintln!("error: {e}");
    }
    eprintln!(
        "{} error{} in the configuration; nothing was started",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    ExitCode::from(EXIT_CONFIG)
}

/// Raises the soft limit on open files to the hard limit, as nginx's `worker_rlimit_nofile` and
/// Go programs do: every client connection is a descriptor, and so is every upstream connection
/// serving it. The soft limit is 1024 on most systems, far below `[limits] max_connections`.
fn raise_open_files_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let wanted = u64::try_from(max_connections)
                .unwrap_or(u64::MAX)
                .saturating_add(100);
            if limit < wanted {
                tracing::warn!(
                    limit,
                    max_connections,
                    "the open files limit is below [limits] max_connections: connections beyond it \
                     fail to be accepted; raise LimitNOFILE (systemd) or ulimit -n, or lower max_connections"
                );
            } else {
                tracing::debug!(limit, "open files limit");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

fn run(config: Config, log_format: Option<&str>, embedded: bool) -> ExitCode {
    let mut log = config.log.clone();
    match log_format {
        None => {}
        Some("json") => log.format = myelin_config::LogFormat::Json,
        Some("text") => log.format = myelin_config::LogFormat::Text,
        Some(other) => {
            eprintln!(
                "error: --log-format: unknown format \"{other}\": expected \"text\" or \"json\""
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    telemetry::init(&log);
    raise_open_files_limit(config.limits.max_connections);
    let rt = match runtime(config.runtime.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match rt.block_on(run::run(config, embedded)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(run::RunError::Config(errors)) => {
            for e in errors.iter() {
                tracing::error!("{e}");
            }
            ExitCode::from(EXIT_CONFIG)
        }
        Err(run::RunError::Other(e)) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
