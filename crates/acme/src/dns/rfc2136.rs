//! The `rfc2136` provider: DNS UPDATE (RFC 2136) signed with a TSIG key (RFC 8945), sent to the
//! zone's primary server. Records are added with a short TTL and removed by value.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hickory_net::client::{Client, ClientHandle};
use hickory_net::proto::op::ResponseCode;
use hickory_net::proto::rr::rdata::TXT;
use hickory_net::proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_net::proto::rr::{Name, RData, Record, RecordType, TSigner};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::udp::UdpClientStream;
use hickory_net::{DnsError, NetError};
use tracing::info;

use crate::AcmeError;
use crate::dns::lookup::{self, fqdn, zone_of_with};
use crate::dns::{BoxFuture, DnsProvider};
use crate::settings::decode_base64_any;

/// TTL of the challenge records: short, so a stale one does not linger in caches.
const RECORD_TTL: u32 = 60;
const UPDATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Clock difference between us and the server that TSIG tolerates (RFC 8945 recommends 300).
const TSIG_FUDGE: u16 = 300;

/// The TSIG algorithms that may be configured.
pub const TSIG_ALGORITHMS: &[&str] = &["hmac-sha256", "hmac-sha384", "hmac-sha512"];

#[derive(Clone, PartialEq, Eq)]
pub struct Rfc2136Settings {
    /// `host:port` of the server updates are sent to (the zone's primary).
    pub nameserver: String,
    pub key_name: String,
    /// One of [`TSIG_ALGORITHMS`].
    pub algorithm: String,
    /// The decoded secret.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Rfc2136Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136Settings")
            .field("nameserver", &self.nameserver)
            .field("key_name", &self.key_name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Reads a TSIG secret file: the base64 secret alone, or the `key { ... secret "..."; }` block
/// `tsig-keygen` prints.
pub fn read_tsig_secret(path: &Path) -> Result<Vec<u8>, AcmeError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AcmeError::io(path, "cannot read the TSIG secret", e))?;
    let secret = match text.find("secret") {
        Some(i) if text.contains('{') => text[i + "secret".len()..]
            .split('"')
            .nth(1)
            .unwrap_or("")
            .to_string(),
        _ => text.trim().to_string(),
    };
    decode_base64_any(&secret).ok_or_else(|| AcmeError::BadFile {
        path: path.to_path_buf(),
        reason: "no base64 TSIG secret found (expected the secret as tsig-keygen prints it)".into(),
    })
}

/// Checks an algorithm name from the configuration.
pub fn check_algorithm(name: &str) -> Result<(), String> {
    if TSIG_ALGORITHMS.contains(&name.to_ascii_lowercase().trim_end_matches('.')) {
        Ok(())
    } else {
        Err(format!(
            "unsupported TSIG algorithm \"{name}\": expected one of {}",
            TSIG_ALGORITHMS.join(", ")
        ))
    }
}

pub struct Rfc2136 {
    settings: Rfc2136Settings,
    signer: TSigner,
}

impl Rfc2136 {
    pub fn new(settings: Rfc2136Settings) -> Result<Self, AcmeError> {
        check_algorithm(&settings.algorithm).map_err(AcmeError::Dns)?;
        let algorithm = TsigAlgorithm::from_name(
            Name::from_ascii(
                settings
                    .algorithm
                    .to_ascii_lowercase()
                    .trim_end_matches('.'),
            )
            .map_err(|e| AcmeError::Dns(format!("TSIG algorithm: {e}")))?,
        );
        let key_name = fqdn(&settings.key_name)?;
        let signer = TSigner::new(settings.secret.clone(), algorithm, key_name, TSIG_FUDGE)
            .map_err(|e| AcmeError::Dns(format!("TSIG key: {e}")))?;
        Ok(Rfc2136 { settings, signer })
    }

    async fn server(&self) -> Result<SocketAddr, AcmeError> {
        let ns = &self.settings.nameserver;
        tokio::net::lookup_host(ns.as_str())
            .await
            .map_err(|e| AcmeError::Dns(format!("cannot resolve the nameserver {ns}: {e}")))?
            .next()
            .ok_or_else(|| AcmeError::Dns(format!("the nameserver {ns} has no address")))
    }

    async fn update(&self, add: bool, record_name: &str, value: &str) -> Result<(), AcmeError> {
        let server = self.server().await?;
        let name = fqdn(record_name)?;
        // The primary knows its zones: ask it where the record's zone starts.
        let zone = zone_of_with(&name, |n| async move {
            lookup::query(server, &n, RecordType::SOA)
                .await
                .map_err(AcmeError::Dns)
        })
        .await?;
        let record = Record::from_rdata(
            name.clone(),
            RECORD_TTL,
            RData::TXT(TXT::new(vec![value.to_string()])),
        );
        let fail = |reason: String| AcmeError::DnsUpdate {
            fqdn: record_name.to_string(),
            server: server.to_string(),
            reason,
        };
        let stream = UdpClientStream::builder(server, TokioRuntimeProvider::default())
            .with_timeout(Some(UPDATE_TIMEOUT))
            .with_signer(Some(self.signer.clone()))
            .build();
        let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
        let bg = tokio::spawn(bg);
        let result = if add {
            client.append(record, zone.clone(), false).await
        } else {
            client.delete_by_rdata(record, zone.clone()).await
        };
        bg.abort();
        let rcode = match result {
            Ok(resp) => resp.metadata.response_code,
            Err(NetError::Dns(DnsError::ResponseCode(code))) => code,
            Err(e) => return Err(fail(explain_error(&e.to_string(), &self.settings))),
        };
        if rcode != ResponseCode::NoError {
            return Err(fail(explain_rcode(rcode, &zone, &self.settings)));
        }
        info!(
            record = record_name,
            zone = %zone,
            server = %server,
            action = if add { "add" } else { "delete" },
            "DNS update accepted"
        );
        Ok(())
    }
}

impl DnsProvider for Rfc2136 {
    fn present<'a>(
        &'a self,
        fqdn: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(self.update(true, fqdn, value))
    }

    fn cleanup<'a>(
        &'a self,
        fqdn: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(self.update(false, fqdn, value))
    }
}

fn key_hint(s: &Rfc2136Settings) -> String {
    format!(
        "check tsig_key_name (\"{}\"), tsig_algorithm (\"{}\") and the secret in tsig_secret_file against the server's key",
        s.key_name, s.algorithm
    )
}

fn explain_rcode(code: ResponseCode, zone: &Name, s: &Rfc2136Settings) -> String {
    match code {
        ResponseCode::NotAuth | ResponseCode::BADSIG | ResponseCode::BADKEY => format!(
            "the server rejected the TSIG signature ({code}): {}",
            key_hint(s)
        ),
        ResponseCode::BADTIME => format!(
            "the server rejected the TSIG time ({code}): this machine's clock and the server's differ by more than {TSIG_FUDGE}s"
        ),
        ResponseCode::Refused => format!(
            "the server refused the update (REFUSED): its update-policy for zone {zone} does not let key \"{}\" change this TXT record",
            s.key_name
        ),
        ResponseCode::NotZone => {
            format!("the server is not authoritative for zone {zone} (NOTZONE)")
        }
        other => format!("the server answered {other}"),
    }
}

fn explain_error(e: &str, s: &Rfc2136Settings) -> String {
    let lower = e.to_ascii_lowercase();
    if ["tsig", "hmac", "signature", "badsig", "badkey"]
        .iter()
        .any(|w| lower.contains(w))
    {
        // A server that refuses our key answers unsigned (RFC 8945 5.2), which the client
        // reports as a signature problem of the answer.
        format!(
            "the server rejected the TSIG signature (its answer is not signed with our key): {} (client: {e})",
            key_hint(s)
        )
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_in_both_forms() {
        let dir = std::env::temp_dir().join(format!("myelin-tsig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, "c2VjcmV0\n").unwrap();
        assert_eq!(read_tsig_secret(&plain).unwrap(), b"secret");
        let block = dir.join("block");
        std::fs::write(
            &block,
            "key \"acme-key\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0\";\n};\n",
        )
        .unwrap();
        assert_eq!(read_tsig_secret(&block).unwrap(), b"secret");
        let bad = dir.join("bad");
        std::fs::write(&bad, "???").unwrap();
        assert!(
            read_tsig_secret(&bad)
                .unwrap_err()
                .to_string()
                .contains("no base64")
        );
        let missing = read_tsig_secret(&dir.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("cannot read the TSIG secret"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn algorithms() {
        assert!(check_algorithm("hmac-sha256").is_ok());
        assert!(check_algorithm("HMAC-SHA512.").is_ok());
        assert!(
            check_algorithm("hmac-md5")
                .unwrap_err()
                .contains("hmac-sha256")
        );
    }
}
