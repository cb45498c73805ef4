//! The homeserver's upstream pools and route table, from the configuration to the router's
//! settings. The configuration crate has checked them (regular expressions compile, every route
//! names a pool, no pool is empty).

use myelin_config::{Balance as ConfigBalance, Homeserver, UpstreamTarget};
use myelin_router::{Balance, HealthCheckSettings, PoolSettings, RouteSettings, UpstreamAddr};

pub fn pools(h: &Homeserver) -> Vec<PoolSettings> {
    h.upstreams
        .iter()
        .map(|p| PoolSettings {
            name: p.name.value.clone(),
            servers: p.servers.iter().map(|s| addr(&s.value)).collect(),
            balance: match p.balance {
                ConfigBalance::RoundRobin => Balance::RoundRobin,
                ConfigBalance::User => Balance::User,
                ConfigBalance::Room => Balance::Room,
                ConfigBalance::Origin => Balance::Origin,
                ConfigBalance::Ip => Balance::Ip,
            },
            health_check: p.health_check.as_ref().map(|c| HealthCheckSettings {
                path: c.path.clone(),
                interval: c.interval,
                timeout: c.timeout,
            }),
        })
        .collect()
}

/// Methods that are not valid HTTP tokens were refused by the configuration crate; any left
/// would never match, so they are dropped rather than failing here.
pub fn routes(h: &Homeserver) -> Vec<RouteSettings> {
    h.routes
        .iter()
        .map(|r| RouteSettings {
            path: r.path.value.clone(),
            methods: r
                .methods
                .iter()
                .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            upstream: r.upstream.value.clone(),
        })
        .collect()
}

fn addr(t: &UpstreamTarget) -> UpstreamAddr {
    match t {
        UpstreamTarget::Http { host, port } => UpstreamAddr::Tcp {
            host: host.clone(),
            port: *port,
        },
        UpstreamTarget::Unix(p) => UpstreamAddr::Unix(p.clone()),
    }
}

/// Pools no route sends anything to: probably a typo or a forgotten route.
pub fn warnings(file: &std::path::Path, h: &Homeserver) -> Vec<String> {
    h.upstreams
        .iter()
        .filter(|p| !h.routes.iter().any(|r| r.upstream.value == p.name.value))
        .map(|p| {
            format!(
                "{}:{}:{}: {}: no [[homeserver.route]] uses upstream pool \"{}\"; it gets no requests",
                file.display(),
                p.name.at.line,
                p.name.at.column,
                p.name.key,
                p.name.value
            )
        })
        .collect()
}
