//! DNS as a homeserver sees it: SRV, CNAME, A and AAAA, through this machine's resolver or,
//! with `--resolver`, every query to one server.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

use crate::CheckError;

/// The outcome of one query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<T> {
    Found(T),
    /// The name or the record type does not exist (NXDOMAIN, or NOERROR with no answer).
    NotFound,
    /// No usable answer: timeout, SERVFAIL, REFUSED, network error.
    Failed(String),
}

/// One SRV record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Without the trailing dot; "." (service decidedly not available) stays ".".
    pub target: String,
}

pub struct Dns {
    resolver: TokioResolver,
    /// Whom the queries go to, for the report.
    pub description: String,
    timeout: Duration,
}

impl Dns {
    /// `server`: send every query there (UDP, TCP on truncation); `None`: this machine's
    /// resolver configuration (`/etc/resolv.conf`) and hosts file, as a homeserver would.
    pub fn new(server: Option<SocketAddr>, timeout: Duration) -> Result<Dns, CheckError> {
        let provider = TokioRuntimeProvider::default();
        let (mut builder, description) = match server {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                let builder = TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    provider,
                );
                (builder, format!("the DNS server at {addr}"))
            }
            None => {
                let builder =
                    TokioResolver::builder(provider).map_err(|e| CheckError::Resolver {
                        reason: e.to_string(),
                    })?;
                (
                    builder,
                    "this machine's resolver (/etc/resolv.conf)".to_string(),
                )
            }
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = 2;
        // Fresh answers every time: a doctor must see a fix as soon as it is published.
        opts.cache_size = 0;
        opts.use_hosts_file = if server.is_some() {
            ResolveHosts::Never
        } else {
            ResolveHosts::Auto
        };
        let resolver = builder.build().map_err(|e| CheckError::Resolver {
            reason: e.to_string(),
        })?;
        Ok(Dns {
            resolver,
            description,
            // the resolver's own timeout per attempt, twice, plus a margin
            timeout: timeout * 2 + Duration::from_secs(1),
        })
    }

    /// SRV records of `name`, lowest priority first, higher weight first within a priority.
    pub async fn srv(&self, name: &str) -> Answer<Vec<Srv>> {
        let lookup = match self.guard(self.resolver.srv_lookup(fqdn(name))).await {
            Ok(l) => l,
            Err(e) => return e.into(),
        };
        let mut records: Vec<Srv> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(Srv {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                    target: if srv.target.is_root() {
                        ".".into()
                    } else {
                        trim_dot(&srv.target.to_ascii())
                    },
                }),
                _ => None,
            })
            .collect();
        if records.is_empty() {
            return Answer::NotFound;
        }
        records.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
        Answer::Found(records)
    }

    /// The CNAME of `name`, if it is an alias.
    pub async fn cname(&self, name: &str) -> Answer<String> {
        let lookup = match self
            .guard(self.resolver.lookup(fqdn(name), RecordType::CNAME))
            .await
        {
            Ok(l) => l,
            Err(e) => return e.into(),
        };
        lookup
            .answers()
            .iter()
            .find_map(|r| match &r.data {
                RData::CNAME(c) => Some(Answer::Found(trim_dot(&c.0.to_ascii()))),
                _ => None,
            })
            .unwrap_or(Answer::NotFound)
    }

    /// IPv6 and IPv4 addresses of `host` (CNAMEs followed), IPv6 first as most stacks try them.
    pub async fn addresses(&self, host: &str) -> Answer<Vec<IpAddr>> {
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
            return Answer::Found(vec![ip]);
        }
        let lookup = match self.guard(self.resolver.lookup_ip(fqdn(host))).await {
            Ok(l) => l,
            Err(e) => return e.into(),
        };
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in lookup.iter() {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        ips.sort_by_key(|ip| ip.is_ipv4());
        if ips.is_empty() {
            Answer::NotFound
        } else {
            Answer::Found(ips)
        }
    }

    /// Runs one query within the timeout and sorts its failure.
    async fn guard<T>(
        &self,
        query: impl std::future::Future<Output = Result<T, NetError>>,
    ) -> Result<T, Miss> {
        match tokio::time::timeout(self.timeout, query).await {
            Err(_) => Err(Miss::Failed(format!(
                "no answer within {} s",
                self.timeout.as_secs()
            ))),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_no_records_found() => Err(Miss::NotFound),
            Ok(Err(NetError::Timeout)) => Err(Miss::Failed("the query timed out".into())),
            Ok(Err(e)) => Err(Miss::Failed(e.to_string())),
        }
    }
}

/// A query that gave no records.
enum Miss {
    NotFound,
    Failed(String),
}

impl<T> From<Miss> for Answer<T> {
    fn from(m: Miss) -> Answer<T> {
        match m {
            Miss::NotFound => Answer::NotFound,
            Miss::Failed(e) => Answer::Failed(e),
        }
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn trim_dot(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}
