//! bad_config
