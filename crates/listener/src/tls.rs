//! The rustls server configurations: one for ordinary clients, one for ACME's `acme-tls/1`.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::ServerSessionMemoryCache;

use crate::certs::{CertStore, ChallengeResolver, StoreResolver, provider};
use crate::{ACME_TLS_ALPN, ListenerError};

/// Session IDs remembered for TLS 1.2 resumption (tickets need no server memory).
const SESSION_CACHE_SIZE: usize = 16_384;

pub(crate) struct TlsConfigs {
    pub main: Arc<ServerConfig>,
    pub challenge: Arc<ServerConfig>,
}

impl TlsConfigs {
    pub fn new(store: Arc<CertStore>) -> Result<Self, ListenerError> {
        let provider = Arc::new(provider());
        let versions: &[&rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];

        let mut main = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(StoreResolver(store.clone())));
        main.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        main.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        main.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        main.max_early_data_size = 0;

        let mut challenge = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(ChallengeResolver(store)));
        challenge.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];

        Ok(TlsConfigs {
            main: Arc::new(main),
            challenge: Arc::new(challenge),
        })
    }
}
