//! One order, from `newOrder` to the issued chain: publish every challenge answer, wait for DNS
//! records to be served, tell the CA to look, finalize with a fresh key, download the chain, and
//! withdraw what was published whatever happened.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier, NewOrder,
    Order, OrderStatus, RetryPolicy,
};
use myelin_listener::CertStore;
use tracing::{debug, info, warn};

use crate::dns::Dns01;
use crate::http01::Http01Tokens;
use crate::tls_alpn::challenge_certificate;
use crate::{AcmeError, CertificateRequest, ChallengeKind};

/// How long the CA may take to validate every challenge, and then to issue.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(120);
const ISSUANCE_TIMEOUT: Duration = Duration::from_secs(120);

/// What answers challenges.
pub(crate) struct Solvers {
    pub store: Arc<CertStore>,
    pub tokens: Http01Tokens,
    pub dns: Option<Arc<Dns01>>,
}

/// An issued certificate: the PEM chain and the PEM key it was issued for.
pub(crate) struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// Something published for the CA to find, to be withdrawn after.
enum Published {
    Http { token: String },
    TlsAlpn { name: String },
    Dns { record: String, value: String },
}

/// Places an order for `req` and sees it through.
pub(crate) async fn obtain(
    account: &Account,
    directory: &str,
    req: &CertificateRequest,
    solvers: &Solvers,
    replaces: Option<CertificateIdentifier<'static>>,
) -> Result<Issued, AcmeError> {
    let ca = |action: &'static str| {
        move |source: instant_acme::Error| AcmeError::Ca {
            directory: directory.to_string(),
            action,
            source,
        }
    };
    let identifiers: Vec<Identifier> = req
        .names
        .iter()
        .map(|n| Identifier::Dns(n.clone()))
        .collect();
    let mut new_order = NewOrder::new(&identifiers);
    if let Some(r) = replaces {
        new_order = new_order.replaces(r);
    }
    let mut order = account
        .new_order(&new_order)
        .await
        .map_err(ca("placing the order"))?;
    info!(
        certificate = %req.id,
        names = %req.names.join(","),
        challenge = req.challenge.as_str(),
        order = %order.url(),
        "order placed"
    );
    let mut published = Vec::new();
    let result = match solve(&mut order, req, solvers, &mut published, &ca).await {
        Ok(()) => finish(&mut order, req, &ca).await,
        Err(e) => {
            deactivate_pending(&mut order).await;
            Err(e)
        }
    };
    withdraw(published, solvers).await;
    result
}

async fn solve<F>(
    order: &mut Order,
    req: &CertificateRequest,
    solvers: &Solvers,
    published: &mut Vec<Published>,
    ca: &impl Fn(&'static str) -> F,
) -> Result<(), AcmeError>
where
    F: FnOnce(instant_acme::Error) -> AcmeError,
{
    let kind = challenge_type(req.challenge);
    // First every answer is published, so DNS records can propagate together.
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a.map_err(ca("fetching an authorization"))?;
        match a.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => {
                return Err(AcmeError::Order {
                    names: req.names.join(","),
                    status: format!("with an authorization {other:?}"),
                    detail: a.identifier().to_string(),
                });
            }
        }
        let ident = a.identifier();
        let name = match ident.identifier {
            Identifier::Dns(d) => d.clone(),
            other => {
                return Err(AcmeError::BadName {
                    name: format!("{other:?}"),
                    reason: "only DNS names can be ordered".into(),
                });
            }
        };
        let shown = ident.to_string();
        let ch = a
            .challenge(kind.clone())
            .ok_or_else(|| AcmeError::ChallengeNotOffered {
                name: shown.clone(),
                challenge: req.challenge.as_str(),
            })?;
        let key_auth = ch.key_authorization();
        match req.challenge {
            ChallengeKind::Http01 => {
                solvers.tokens.insert(&ch.token, key_auth.as_str());
                published.push(Published::Http {
                    token: ch.token.clone(),
                });
            }
            ChallengeKind::TlsAlpn01 => {
                let cert = challenge_certificate(&name, key_auth.digest().as_ref())?;
                solvers.store.set_challenge(&name, cert);
                published.push(Published::TlsAlpn { name: name.clone() });
            }
            ChallengeKind::Dns01 => {
                let dns = solvers
                    .dns
                    .as_ref()
                    .ok_or_else(|| AcmeError::NoDnsProvider {
                        name: shown.clone(),
                    })?;
                let record = dns.record_name(&name).await?;
                let value = key_auth.dns_value();
                dns.present(&record, &value).await?;
                published.push(Published::Dns { record, value });
            }
        }
    }
    if let Some(dns) = &solvers.dns {
        for p in published.iter() {
            if let Published::Dns { record, value } = p {
                dns.wait_visible(record, value).await?;
            }
        }
    }
    // Then the CA is told to look.
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a.map_err(ca("fetching an authorization"))?;
        if a.status != AuthorizationStatus::Pending {
            continue;
        }
        let shown = a.identifier().to_string();
        let mut ch = a
            .challenge(kind.clone())
            .ok_or_else(|| AcmeError::ChallengeNotOffered {
                name: shown,
                challenge: req.challenge.as_str(),
            })?;
        ch.set_ready()
            .await
            .map_err(ca("marking a challenge ready"))?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(VALIDATION_TIMEOUT);
    match order.poll_ready(&retry).await {
        Ok(OrderStatus::Ready) => Ok(()),
        Ok(_) | Err(instant_acme::Error::Api(_)) => Err(why_invalid(order, req).await),
        Err(e) => Err(ca("waiting for validation")(e)),
    }
}

/// The CA's problem documents for the challenges that failed.
async fn why_invalid(order: &mut Order, req: &CertificateRequest) -> AcmeError {
    let mut problems = Vec::new();
    let mut authzs = order.authorizations();
    while let Some(Ok(mut a)) = authzs.next().await {
        if a.refresh().await.is_err() {
            continue;
        }
        let name = a.identifier().to_string();
        for c in &a.challenges {
            if let Some(p) = &c.error {
                problems.push(format!("{name}: {p}"));
            }
        }
    }
    let order_problem = order.state().error.as_ref().map(|p| p.to_string());
    if problems.is_empty() {
        problems.extend(order_problem);
    }
    AcmeError::ChallengeFailed {
        name: req.names.join(","),
        challenge: req.challenge.as_str(),
        problem: if problems.is_empty() {
            format!("the order is {:?}", order.state().status)
        } else {
            problems.join("; ")
        },
    }
}

async fn finish<F>(
    order: &mut Order,
    req: &CertificateRequest,
    ca: &impl Fn(&'static str) -> F,
) -> Result<Issued, AcmeError>
where
    F: FnOnce(instant_acme::Error) -> AcmeError,
{
    let fail = |e: rcgen::Error| AcmeError::Certificate(format!("CSR: {e}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(req.names.clone()).map_err(fail)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(fail)?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(ca("finalizing the order"))?;
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(ISSUANCE_TIMEOUT);
    let chain_pem = order
        .poll_certificate(&retry)
        .await
        .map_err(ca("downloading the certificate"))?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// Gives up the authorizations still pending, so an abandoned order does not hold them at the
/// CA (which limits pending authorizations per account). Best effort.
async fn deactivate_pending(order: &mut Order) {
    let mut authzs = order.authorizations();
    while let Some(Ok(mut a)) = authzs.next().await {
        if a.status == AuthorizationStatus::Pending {
            if let Err(e) = a.deactivate().await {
                debug!(authorization = %a.url(), error = %e, "could not deactivate the authorization");
            }
        }
    }
}

/// Removes every published answer; failures are logged, never fatal.
async fn withdraw(published: Vec<Published>, solvers: &Solvers) {
    for p in published {
        match p {
            Published::Http { token } => solvers.tokens.remove(&token),
            Published::TlsAlpn { name } => solvers.store.remove_challenge(&name),
            Published::Dns { record, value } => {
                if let Some(dns) = &solvers.dns {
                    if let Err(e) = dns.cleanup(&record, &value).await {
                        warn!(record = %record, error = %e, "could not remove the DNS challenge record; remove it by hand");
                    }
                }
            }
        }
    }
}

fn challenge_type(kind: ChallengeKind) -> ChallengeType {
    match kind {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        ChallengeKind::Dns01 => ChallengeType::Dns01,
    }
}
