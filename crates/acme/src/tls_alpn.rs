//! TLS-ALPN-01 (RFC 8737): a self-signed certificate for the name, carrying the SHA-256 digest
//! of the key authorization in the critical `acmeIdentifier` extension.

use std::sync::Arc;

use myelin_listener::certs::provider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;

use crate::AcmeError;

/// The certificate to answer `acme-tls/1` handshakes for `name` with.
pub(crate) fn challenge_certificate(
    name: &str,
    digest: &[u8],
) -> Result<Arc<CertifiedKey>, AcmeError> {
    let fail = |e: rcgen::Error| AcmeError::Certificate(format!("TLS-ALPN-01 certificate: {e}"));
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(fail)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let cert = params.self_signed(&key).map_err(fail)?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| AcmeError::Certificate(format!("TLS-ALPN-01 key: {e}")))?;
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension this certificate exists for.
    let signing_key = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| AcmeError::Certificate(format!("TLS-ALPN-01 key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing_key,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_the_acme_identifier() {
        let digest = [7u8; 32];
        let key = challenge_certificate("a.test", &digest).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(key.cert[0].as_ref()).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // DER OCTET STRING of 32 bytes
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
    }
}
