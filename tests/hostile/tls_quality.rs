//! tls_quality
