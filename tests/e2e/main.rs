//! End-to-end tests: the real `myelin` binary between real clients and real peers, on loopback.
//! One test binary; each module is one area. Peers come from `tests/setup`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod acme;
mod check;
mod common;
mod docs_examples;
mod federation;
mod foundation_cli;
mod foundation_proxy;
mod foundation_synapse;
mod foundation_tls;
mod keep_alive;
mod open_files;
mod routing;
mod routing_synapse;
mod ship_metrics;
mod ship_notify;
