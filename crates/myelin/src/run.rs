//! `myelin run`: start the listeners, then wait for signals: SIGHUP reloads configuration and
//! certificates without dropping a connection, SIGTERM/SIGINT drain and stop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use myelin_config::{Config, ConfigErrors};
use myelin_listener::{CertStore, ListenerSettings, Server};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::acme::AcmeRuntime;
use crate::app::{App, State};
use crate::metrics_endpoint::{MetricsEndpoint, install_recorder};
use crate::plan::{Plan, bind_set};
use crate::service_manager;

pub enum RunError {
    Config(ConfigErrors),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for RunError {
    fn from(e: anyhow::Error) -> Self {
        RunError::Other(e)
    }
}

struct Running {
    source: ConfigSource,
    server: Server<App>,
    app: Arc<App>,
    shutdown_timeout: Duration,
    acme: AcmeRuntime,
    metrics: MetricsEndpoint,
}

#[derive(Clone)]
enum ConfigSource {
    File(std::path::PathBuf),
    Embedded,
}

impl ConfigSource {
    fn load(&self) -> Result<Config, ConfigErrors> {
        match self {
            ConfigSource::File(p) => myelin_config::load(p),
            ConfigSource::Embedded => {
                myelin_config::parse(crate::EMBEDDED_DEFAULT, Path::new("<embedded default>"))
            }
        }
    }
}

pub async fn run(config: Config, embedded: bool) -> Result<(), RunError> {
    let recorder = install_recorder().map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
    let plan = Plan::build(&config).map_err(RunError::Config)?;
    for w in &plan.warnings {
        warn!("{w}");
    }
    if embedded {
        announce_embedded(&plan);
    }
    let store = Arc::new(CertStore::new(plan.certs.clone()));
    let acme = AcmeRuntime::start(plan.acme.as_ref(), &store).context("ACME")?;
    let app = Arc::new(App {
        state: ArcSwap::from_pointee(State::from_plan(&plan)),
        acme_tokens: acme.tokens.clone(),
    });
    plan.start_background();
    let server =
        Server::new(app.clone(), store.clone(), plan.limits.clone()).context("TLS set-up")?;
    for l in plan.binds() {
        server.bind(&l).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut metrics = MetricsEndpoint::new(recorder, store);
    metrics.set(plan.metrics).map_err(|e| anyhow::anyhow!(e))?;
    acme.spawn();
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    info!(config = %config.file.display(), "myelin {} started: {}", env!("CARGO_PKG_VERSION"), plan.summary);

    let mut running = Running {
        source: if embedded {
            ConfigSource::Embedded
        } else {
            ConfigSource::File(config.file.clone())
        },
        server,
        app,
        shutdown_timeout: plan.shutdown_timeout,
        acme,
        metrics,
    };
    service_manager::ready(&format!("serving: {}", plan.summary));
    // The running state holds what it needs; a reload must be able to drop the rest (routers
    // and their health checks).
    drop(plan);
    let signal_name = loop {
        tokio::select! {
            _ = hup.recv() => {
                service_manager::reloading();
                let status = running.reload();
                service_manager::ready(&status);
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };
    service_manager::stopping();
    info!(
        signal = signal_name,
        "shutting down: no new connections, finishing requests in flight"
    );
    let (report, ()) = tokio::join!(
        running.server.shutdown(running.shutdown_timeout),
        running.acme.shutdown(running.shutdown_timeout)
    );
    info!(
        abandoned = report.abandoned,
        took_ms = report.took.as_millis() as u64,
        "stopped"
    );
    Ok(())
}

impl Running {
    /// Re-reads the configuration and certificates. A configuration with errors is refused as a
    /// whole and the running one keeps serving. Returns a status line for the service manager.
    fn reload(&mut self) -> String {
        info!("SIGHUP: reloading configuration");
        let plan = match self.source.load().and_then(|c| Plan::build(&c)) {
            Ok(p) => p,
            Err(errors) => {
                for e in errors.iter() {
                    error!("{e}");
                }
                reload_result("error");
                error!(
                    errors = errors.len(),
                    "reload refused: the configuration has errors; still serving the previous one"
                );
                return REFUSED.into();
            }
        };
        for w in &plan.warnings {
            warn!("{w}");
        }

        let current: HashMap<SocketAddr, ListenerSettings> = self
            .server
            .bound()
            .into_iter()
            .map(|(s, _)| (s.bind, s))
            .collect();
        let wanted = bind_set(&plan);
        // New addresses first: if one cannot be bound, nothing changes.
        let mut added = Vec::new();
        for s in wanted.values().filter(|s| !current.contains_key(&s.bind)) {
            match self.server.bind(s) {
                Ok(_) => added.push(s.bind),
                Err(e) => return self.refuse_bind(&added, &e, "a new listener"),
            }
        }
        if let Err(e) = self.metrics.set(plan.metrics) {
            return self.refuse_bind(&added, &e, "the metrics endpoint");
        }

        let certs = self
            .acme
            .reload(plan.acme.as_ref(), self.server.store(), plan.certs.clone());
        self.server.store().swap(certs);
        plan.start_background();
        self.app.state.store(Arc::new(State::from_plan(&plan)));
        self.server.set_limits(plan.limits.clone());
        self.shutdown_timeout = plan.shutdown_timeout;

        for s in current.values() {
            match wanted.get(&s.bind) {
                None => {
                    self.server.unbind(s.bind);
                }
                Some(w) if w != s => {
                    // same address, other kind (TLS or plain): rebind
                    self.server.unbind(s.bind);
                    if let Err(e) = self.server.bind(w) {
                        error!("{e}");
                    }
                }
                Some(_) => {}
            }
        }
        reload_result("ok");
        info!("reloaded: {}", plan.summary);
        format!("serving: {}", plan.summary)
    }
}

impl Running {
    /// Undoes the binds of a reload that cannot complete; returns the status line.
    fn refuse_bind(&self, added: &[SocketAddr], e: &dyn std::fmt::Display, what: &str) -> String {
        for a in added {
            self.server.unbind(*a);
        }
        error!("{e}");
        reload_result("error");
        error!("reload refused: {what} cannot be bound; still serving the previous configuration");
        REFUSED.into()
    }
}

const REFUSED: &str =
    "serving the previous configuration: the last reload was refused (see the log)";

/// Counted before the outcome is logged, so whoever reads the log sees the count too.
fn reload_result(result: &'static str) {
    metrics::counter!("myelin_config_reloads_total", "result" => result).increment(1);
}

/// For the README's first command: say where it listens and how to trust the certificate.
fn announce_embedded(plan: &Plan) {
    let path = std::env::temp_dir().join("myelin-embedded-default.pem");
    let pem: String = plan.certs.certs().iter().map(|c| c.chain_pem()).collect();
    match std::fs::write(&path, pem) {
        Ok(()) => info!(
            certificate = %path.display(),
            "embedded default: https://localhost:8443 -> http://127.0.0.1:8008; try: curl --cacert {} https://localhost:8443/.well-known/matrix/client",
            path.display()
        ),
        Err(e) => warn!(error = %e, "cannot write the generated certificate to {}", path.display()),
    }
}
