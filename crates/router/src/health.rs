//! Active health checks: one task per server of a pool that has `health_check`, asking
//! `GET <path>` on a fresh connection every interval. A server whose check fails (no connection,
//! no answer within the timeout, or not 2xx) leaves the pool until a check passes again.
//!
//! The tasks belong to the router that started them: dropping the router (a reload replaced it)
//! aborts them, so reloads leave no checks behind.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::pool::{HealthCheckSettings, Pool, Server};
use crate::upstream::{UpstreamConnector, connector, error_chain};

/// Starts the checks of the servers of `pool` not yet in `checked` (by label); returns the
/// handles that stop them.
pub(crate) fn spawn(
    homeserver: &str,
    pool: &Pool,
    checked: &mut HashSet<Arc<str>>,
) -> Vec<AbortHandle> {
    let Some(check) = &pool.health_check else {
        return Vec::new();
    };
    pool.servers
        .iter()
        .filter(|server| checked.insert(server.label.clone()))
        .map(|server| {
            let job = Checker {
                homeserver: homeserver.to_string(),
                pool: pool.name.to_string(),
                server: server.clone(),
                settings: check.clone(),
            };
            tokio::spawn(job.run()).abort_handle()
        })
        .collect()
}

struct Checker {
    homeserver: String,
    pool: String,
    server: Arc<Server>,
    settings: HealthCheckSettings,
}

impl Checker {
    async fn run(self) {
        let s = &self.settings;
        // No idle connections kept: every check proves the server still accepts new ones.
        let client: Client<UpstreamConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector(&self.server.addr, s.timeout));
        let uri = match format!("http://{}{}", self.server.authority, s.path).parse::<Uri>() {
            Ok(u) => u,
            Err(e) => {
                warn!(homeserver = %self.homeserver, pool = %self.pool, server = %self.server.label,
                    error = %e, "health check path is not a valid request-target; not checking");
                return;
            }
        };
        self.gauge(true);
        let mut ticker = tokio::time::interval(s.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let result = self.check(&client, &uri).await;
            if self.server.set_active(result.is_ok()) {
                self.gauge(result.is_ok());
                match &result {
                    Ok(()) => info!(
                        homeserver = %self.homeserver, pool = %self.pool, server = %self.server.label,
                        "upstream server passed its health check: back in the pool"
                    ),
                    Err(reason) => warn!(
                        homeserver = %self.homeserver, pool = %self.pool, server = %self.server.label,
                        reason = %reason,
                        "upstream server failed its health check: out of the pool until it passes"
                    ),
                }
            }
        }
    }

    async fn check(
        &self,
        client: &Client<UpstreamConnector, Empty<Bytes>>,
        uri: &Uri,
    ) -> Result<(), String> {
        let req = Request::get(uri.clone())
            .header(http::header::USER_AGENT, "myelin-health-check")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(self.settings.timeout, client.request(req)).await {
            Err(_) => Err(format!("no answer within {:?}", self.settings.timeout)),
            Ok(Err(e)) => Err(error_chain(&e)),
            Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
            Ok(Ok(resp)) => Err(format!("answered {}", resp.status())),
        }
    }

    fn gauge(&self, healthy: bool) {
        metrics::gauge!(
            "myelin_upstream_healthy",
            "homeserver" => self.homeserver.clone(),
            "pool" => self.pool.clone(),
            "server" => self.server.label.to_string(),
        )
        .set(if healthy { 1.0 } else { 0.0 });
    }
}
