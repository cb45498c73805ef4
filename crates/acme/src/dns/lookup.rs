//! The DNS questions DNS-01 needs answered: where a CNAME-delegated `_acme-challenge` name
//! really lives, which zone holds it, which servers are authoritative for that zone, and whether
//! each of them already serves our TXT value.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_net::client::{Client, ClientHandle};
use hickory_net::proto::op::{Message, ResponseCode};
use hickory_net::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::udp::UdpClientStream;
use hickory_net::{DnsError, NetError};

use crate::AcmeError;

/// How long one DNS question may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// CNAME chains longer than this are refused (loops).
const MAX_CNAME_HOPS: usize = 8;

/// The parts of a DNS answer we look at.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    pub rcode: Option<ResponseCode>,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
}

/// Asks one server one question over UDP.
pub(crate) async fn query(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
) -> Result<Answer, String> {
    let stream = UdpClientStream::builder(server, TokioRuntimeProvider::default())
        .with_timeout(Some(QUERY_TIMEOUT))
        .build();
    let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
    let bg = tokio::spawn(bg);
    let result = client.query(name.clone(), DNSClass::IN, rtype).await;
    bg.abort();
    match result {
        Ok(resp) => {
            let msg: Message = resp.into_message();
            Ok(Answer {
                rcode: Some(msg.metadata.response_code),
                answers: msg.answers,
                authorities: msg.authorities,
            })
        }
        Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => Ok(Answer {
            rcode: Some(nr.response_code),
            answers: Vec::new(),
            authorities: nr
                .authorities
                .map(|a| a.to_vec())
                .or_else(|| nr.soa.map(|s| vec![s.into_record_of_rdata()]))
                .unwrap_or_default(),
        }),
        Err(e) => Err(format!("{rtype} {name} at {server}: {e}")),
    }
}

/// Answers questions through the configured resolvers (recursive, or authoritative for the
/// zones concerned) and then asks the zone's own servers.
#[derive(Clone, Debug)]
pub(crate) struct DnsLookup {
    resolvers: Vec<SocketAddr>,
    authoritative_port: u16,
}

impl DnsLookup {
    /// `resolvers` empty: the nameservers of `/etc/resolv.conf`.
    pub fn new(resolvers: &[SocketAddr], authoritative_port: u16) -> Result<Self, AcmeError> {
        let resolvers = if resolvers.is_empty() {
            system_resolvers()?
        } else {
            resolvers.to_vec()
        };
        Ok(DnsLookup {
            resolvers,
            authoritative_port,
        })
    }

    /// Asks each resolver in turn until one answers.
    async fn ask(&self, name: &Name, rtype: RecordType) -> Result<Answer, AcmeError> {
        let mut errors = Vec::new();
        for r in &self.resolvers {
            match query(*r, name, rtype).await {
                Ok(a) if a.rcode != Some(ResponseCode::ServFail) => return Ok(a),
                Ok(_) => errors.push(format!("{rtype} {name} at {r}: SERVFAIL")),
                Err(e) => errors.push(e),
            }
        }
        Err(AcmeError::Dns(format!(
            "no resolver answered: {}",
            errors.join("; ")
        )))
    }

    /// Follows CNAMEs from `name` (the `_acme-challenge` name) to where the TXT record must go.
    pub async fn follow_cnames(&self, name: &Name) -> Result<Name, AcmeError> {
        let mut current = name.clone();
        for _ in 0..MAX_CNAME_HOPS {
            let a = self.ask(&current, RecordType::CNAME).await?;
            let target = a.answers.iter().find_map(|r| match &r.data {
                RData::CNAME(c) if r.name == current => Some(c.0.clone()),
                _ => None,
            });
            match target {
                Some(t) => current = t,
                None => return Ok(current),
            }
        }
        Err(AcmeError::Dns(format!(
            "{name}: more than {MAX_CNAME_HOPS} CNAMEs (a loop?)"
        )))
    }

    /// The zone `name` belongs to: the owner of the SOA the resolvers give for it.
    pub async fn zone_of(&self, name: &Name) -> Result<Name, AcmeError> {
        zone_of_with(name, |n| async move { self.ask(&n, RecordType::SOA).await }).await
    }

    /// Addresses of the zone's authoritative servers (its NS records), on the authoritative port.
    pub async fn authoritative_servers(&self, zone: &Name) -> Result<Vec<SocketAddr>, AcmeError> {
        let a = self.ask(zone, RecordType::NS).await?;
        let ns_names: Vec<Name> = a
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::NS(ns) => Some(ns.0.clone()),
                _ => None,
            })
            .collect();
        if ns_names.is_empty() {
            return Err(AcmeError::Dns(format!("the zone {zone} has no NS records")));
        }
        let mut addrs = Vec::new();
        for ns in &ns_names {
            for rtype in [RecordType::A, RecordType::AAAA] {
                let a = self.ask(ns, rtype).await?;
                for r in &a.answers {
                    let ip: Option<IpAddr> = match &r.data {
                        RData::A(a) => Some(a.0.into()),
                        RData::AAAA(a) => Some(a.0.into()),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        let addr = SocketAddr::new(ip, self.authoritative_port);
                        if !addrs.contains(&addr) {
                            addrs.push(addr);
                        }
                    }
                }
            }
        }
        if addrs.is_empty() {
            let names: Vec<String> = ns_names.iter().map(|n| n.to_string()).collect();
            return Err(AcmeError::Dns(format!(
                "no address found for the nameservers of {zone} ({})",
                names.join(", ")
            )));
        }
        Ok(addrs)
    }
}

/// Finds the zone of `name` by asking for its SOA: an answer names the zone apex; a negative
/// answer carries the zone's SOA in its authority section. Without either, try the parent.
pub(crate) async fn zone_of_with<F, Fut>(name: &Name, ask: F) -> Result<Name, AcmeError>
where
    F: Fn(Name) -> Fut,
    Fut: std::future::Future<Output = Result<Answer, AcmeError>>,
{
    let mut current = name.clone();
    loop {
        let a = ask(current.clone()).await?;
        let soa_owner = a
            .answers
            .iter()
            .chain(a.authorities.iter())
            .find(|r| r.record_type() == RecordType::SOA)
            .map(|r| r.name.clone());
        if let Some(zone) = soa_owner {
            return Ok(zone);
        }
        if current.is_root() || current.num_labels() <= 1 {
            return Err(AcmeError::Dns(format!(
                "no zone (SOA record) found for {name}"
            )));
        }
        current = current.base_name();
    }
}

/// The TXT strings at `name` on one server (empty when the name has none).
pub(crate) async fn txt_values(server: SocketAddr, name: &Name) -> Result<Vec<String>, String> {
    let a = query(server, name, RecordType::TXT).await?;
    match a.rcode {
        Some(ResponseCode::NoError) | Some(ResponseCode::NXDomain) | None => {}
        Some(other) => return Err(format!("TXT {name} at {server}: {other}")),
    }
    Ok(a.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) if r.name == *name => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect())
}

/// The nameservers of `/etc/resolv.conf`, port 53.
fn system_resolvers() -> Result<Vec<SocketAddr>, AcmeError> {
    let path = "/etc/resolv.conf";
    let text = std::fs::read_to_string(path).map_err(|e| AcmeError::io(path, "cannot read", e))?;
    let found: Vec<SocketAddr> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if found.is_empty() {
        return Err(AcmeError::Dns(format!(
            "{path} lists no nameserver; set [acme.dns] resolvers"
        )));
    }
    Ok(found)
}

/// A name as an absolute DNS name.
pub(crate) fn fqdn(name: &str) -> Result<Name, AcmeError> {
    let mut n = Name::from_utf8(name).map_err(|e| AcmeError::BadName {
        name: name.to_string(),
        reason: e.to_string(),
    })?;
    n.set_fqdn(true);
    Ok(n)
}
