//! The shipped preset, examples/synapse-workers.toml, in front of a real Synapse with workers:
//! the main process, a sync worker (generic_worker) and a media repository worker, on
//! PostgreSQL and Redis. A real client (matrix-nio) logs in, syncs, uploads and downloads through
//! Myelin, and each worker's own log shows it served its share.

use std::collections::HashMap;
use std::time::Instant;

use myelin_e2e::peers::{has_python_module, require};
use myelin_e2e::services::{Postgres, Redis, postgres_available, redis_available};
use myelin_e2e::synapse::{self, Synapse, SynapseOptions, nio_flow, shared_worker_yaml};
use myelin_e2e::{Myelin, free_port, myelin::check_config, repo_root};

use crate::common::{Fixture, bin};

fn preset() -> String {
    std::fs::read_to_string(repo_root().join("examples/synapse-workers.toml"))
        .expect("examples/synapse-workers.toml")
}

/// The preset with its certificate, listeners and host names replaced by the test's, and the
/// `servers` of each pool by `servers[pool]` (every pool must be given; each must exist).
fn adapt(f: &Fixture, main: &str, servers: &HashMap<&str, Vec<String>>) -> String {
    let text = preset();
    let start = text.find("[[homeserver]]").expect("a [[homeserver]] block");
    let mut out = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[certificate]]\ncert = \"{}\"\nkey = \"{}\"\n\n",
        f.cert.display(),
        f.key.display()
    );
    let mut pool = None;
    let mut replaced = Vec::new();
    for line in text[start..].lines() {
        if let Some(name) = line
            .strip_prefix("[homeserver.upstreams.")
            .and_then(|l| l.strip_suffix(']'))
        {
            pool = Some(name.to_string());
        } else if line.starts_with('[') {
            pool = None;
        }
        let line = if line.starts_with("servers = ") {
            let name = pool.clone().expect("servers inside a pool");
            let list = servers
                .get(name.as_str())
                .unwrap_or_else(|| panic!("the test does not map pool {name}"));
            replaced.push(name);
            format!(
                "servers = [{}]",
                list.iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else if line.starts_with("upstream = \"http://") {
            format!("upstream = \"{main}\"")
        } else if line.starts_with("server_name = ") {
            "server_name = \"example.test\"".to_string()
        } else if line.starts_with("hosts = ") {
            "hosts = [\"localhost\", \"127.0.0.1\"]".to_string()
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
    }
    let mut wanted: Vec<&str> = servers.keys().copied().collect();
    wanted.sort();
    replaced.sort();
    assert_eq!(replaced, wanted, "the preset's pools changed");
    out
}

#[test]
fn the_preset_passes_check_config() {
    let f = Fixture::new("preset-check");
    let text = preset()
        .replace(
            "/etc/myelin/tls/example.com.pem",
            &f.cert.display().to_string(),
        )
        .replace(
            "/etc/myelin/tls/example.com.key",
            &f.key.display().to_string(),
        );
    let path = f.dir.write("synapse-workers.toml", &text);
    let (code, out, err) = check_config(&bin(), &path);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("OK:"), "{out}");
    assert!(
        !err.contains("gets no requests"),
        "every pool has a route: {err}"
    );
}

#[test]
fn synapse_workers_behind_the_preset_serve_a_real_client() {
    if !require(
        "Synapse with PostgreSQL and Redis support, matrix-nio, PostgreSQL and redis-server",
        synapse::available()
            && has_python_module("nio")
            && has_python_module("psycopg2")
            && has_python_module("txredisapi")
            && postgres_available()
            && redis_available(),
    ) {
        return;
    }
    let started = Instant::now();
    let f = Fixture::new("synapse-workers");
    let pg = Postgres::start(&f.dir);
    let redis = Redis::start(&f.dir);
    let (port, replication) = (free_port(), free_port());
    let shared = shared_worker_yaml(
        port,
        replication,
        &pg,
        &redis,
        "enable_media_repo: false\nmedia_instance_running_background_jobs: media1\n",
    );
    let main = Synapse::start(
        &f.dir,
        SynapseOptions {
            port: Some(port),
            extra_yaml: &shared,
            ..Default::default()
        },
    );
    let sync = main.start_worker("sync1", "synapse.app.generic_worker", &["client"]);
    let media = main.start_worker("media1", "synapse.app.media_repository", &["media"]);
    let peers_ready = started.elapsed();

    // the preset, with the workers this test runs; pools whose workers it does not run point
    // at the main process, which serves every endpoint but media
    let m_url = main.url();
    let servers: HashMap<&str, Vec<String>> = HashMap::from([
        ("sync", vec![sync.url()]),
        ("media", vec![media.url()]),
        ("client", vec![m_url.clone()]),
        ("rooms", vec![m_url.clone()]),
        ("federation", vec![m_url.clone()]),
        ("federation_inbound", vec![m_url.clone()]),
    ]);
    let config = adapt(&f, &m_url, &servers);
    let m = Myelin::start(&bin(), &f.dir, &config);
    let base = format!("https://localhost:{}", m.only_addr().port());

    main.register(&base, "alice", "alice-password", false, Some(&f.ca_path))
        .unwrap_or_else(|e| panic!("register through myelin: {e}\n{}", m.log_text()));
    let ca = f.ca_path.display().to_string();
    let (ok, out) = nio_flow(
        &["media", &base, "alice", "alice-password", "--cafile", &ca],
        &[],
    );
    assert!(
        ok,
        "matrix-nio through myelin failed:\n{out}\n{}",
        m.log_text()
    );
    assert!(out.contains("media_ok=True"), "{out}");

    // each worker served its share, as its own log shows; the main process served none of it
    let sync_log = sync.log();
    let syncs = sync_log.matches("\"GET /_matrix/client/v3/sync").count();
    assert!(
        syncs >= 2,
        "the sync worker served {syncs} syncs:\n{sync_log}"
    );
    let media_log = media.log();
    assert!(
        media_log.contains("\"POST /_matrix/media/v3/upload"),
        "the media worker did not serve the upload:\n{media_log}"
    );
    assert!(
        media_log.contains("\"GET /_matrix/client/v1/media/download/example.test/"),
        "the media worker did not serve the download:\n{media_log}"
    );
    let main_log = main.log();
    assert!(
        main_log.contains("\"POST /_matrix/client/v3/login"),
        "login should reach the main process (the client pool here)"
    );
    for line in [
        "\"GET /_matrix/client/v3/sync",
        "\"POST /_matrix/media/",
        "\"GET /_matrix/client/v1/media/",
    ] {
        assert!(!main_log.contains(line), "the main process served {line}");
    }
    // Myelin's access log agrees: the pool and the server of each request
    let access = m.access_log();
    let by_pool = |pool: &str| access.iter().filter(|v| v["pool"] == pool).count();
    assert!(
        by_pool("sync") >= 2 && by_pool("media") >= 2,
        "{}",
        m.log_text()
    );
    assert!(
        access
            .iter()
            .filter(|v| v["pool"] == "sync")
            .all(|v| v["upstream"] == sync.url())
    );
    eprintln!(
        "synapse workers: peers ready after {:?}, scenario done after {:?}",
        peers_ready,
        started.elapsed()
    );
}
