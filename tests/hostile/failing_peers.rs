//! failing_peers
