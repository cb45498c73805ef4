//! One attack scenario: an upstream and Myelin with the limits under test, the memory sampler,
//! a well-behaved client measured quiet and then while the attack runs.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use myelin_e2e::Myelin;
use myelin_e2e::faulty::FaultyUpstream;
use myelin_e2e::hostile::{
    Comparison, Prober, RssSampler, assert_unharmed, attack_p99, cpu_time, figure, quiet_p99,
    runtime, size,
};
use tokio::runtime::Runtime;

use crate::common::{Fixture, bin};

/// One test at a time (see the crate docs).
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Requests per round of the well-behaved client.
pub fn probe_requests() -> usize {
    size(500, 2000)
}

pub struct Scenario {
    pub name: &'static str,
    pub f: Fixture,
    /// Attack tasks run here.
    pub rt: Runtime,
    pub up: FaultyUpstream,
    pub m: Myelin,
    pub addr: SocketAddr,
    pub rss: RssSampler,
    pub prober: Prober,
    _up_rt: Runtime,
    quiet: Option<(Duration, Duration)>,
    /// CPU time and wall time when the attack began.
    attack_start: Option<(Duration, std::time::Instant)>,
    errors: Vec<String>,
    base_rss_kib: u64,
}

impl Scenario {
    /// `limits` is the body of the `[limits]` section.
    pub fn start(name: &'static str, limits: &str) -> Scenario {
        let up_rt = runtime(1);
        let up = FaultyUpstream::start(up_rt.handle());
        let f = Fixture::new(name);
        let config = f.config(
            &up.url(),
            "",
            &format!("[limits]\n{limits}\n\n[log]\naccess_log = false\n"),
        );
        let m = Myelin::start(&bin(), &f.dir, &config);
        let addr = m.only_addr();
        let rss = RssSampler::start(m.pid());
        let prober = Prober::new(f.client(), addr, "example.test", "/_matrix/client/versions");
        Scenario {
            name,
            f,
            rt: runtime(2),
            up,
            m,
            addr,
            rss,
            prober,
            _up_rt: up_rt,
            quiet: None,
            attack_start: None,
            errors: Vec::new(),
            base_rss_kib: 0,
        }
    }

    /// Measures the quiet p99 (and the memory before the attack).
    pub fn measure_quiet(&mut self) {
        let (p, n, errors) = quiet_p99(&self.prober, probe_requests());
        self.quiet = Some((p, n));
        self.errors.extend(errors);
        self.base_rss_kib = self.rss.now_kib();
        self.rss.reset();
        self.attack_start = Some((cpu_time(self.m.pid()), std::time::Instant::now()));
    }

    /// Measures the p99 while the attack runs (call it once the attack is under way).
    pub fn measure_attack(&mut self, max_rounds: usize) -> Comparison {
        let (quiet, quiet_new) = self.quiet.expect("measure_quiet first");
        let (p, n, errors) = attack_p99(&self.prober, probe_requests(), quiet, max_rounds);
        self.errors.extend(errors);
        Comparison {
            quiet_p99: quiet,
            attack_p99: p,
            quiet_new_conn_p99: quiet_new,
            attack_new_conn_p99: n,
            errors: self.errors.clone(),
        }
    }

    /// The comparison for rounds of a [`myelin_e2e::hostile::KeptProber`] (best round).
    pub fn measure_kept(&mut self, rounds: &[myelin_e2e::hostile::Round]) -> Comparison {
        let (quiet, quiet_new) = self.quiet.expect("measure_quiet first");
        let best = rounds.iter().map(|r| r.p99()).min().unwrap_or_default();
        for r in rounds {
            self.errors.extend(r.errors.iter().cloned());
        }
        Comparison {
            quiet_p99: quiet,
            attack_p99: best,
            quiet_new_conn_p99: quiet_new,
            attack_new_conn_p99: Duration::ZERO,
            errors: self.errors.clone(),
        }
    }

    /// Reports the memory figures and checks the bound, and that Myelin still runs.
    pub fn finish(&mut self, comparison: &Comparison, max_growth_mib: u64) {
        let peak = self.rss.sampled_peak_kib();
        if let Some((cpu, at)) = self.attack_start {
            let used = cpu_time(self.m.pid()).saturating_sub(cpu);
            figure(
                self.name,
                "myelin CPU during the attack",
                format!(
                    "{:.2} s over {:.1} s",
                    used.as_secs_f64(),
                    at.elapsed().as_secs_f64()
                ),
            );
        }
        figure(
            self.name,
            "RSS before attack",
            format!("{} MiB", self.base_rss_kib / 1024),
        );
        figure(
            self.name,
            "peak RSS under attack",
            format!("{} MiB", peak / 1024),
        );
        figure(
            self.name,
            "VmHWM (whole run)",
            format!("{} MiB", self.rss.peak_kib() / 1024),
        );
        assert_unharmed(self.name, comparison);
        assert!(
            peak <= self.base_rss_kib + max_growth_mib * 1024,
            "{}: memory grew from {} KiB to {} KiB under attack (bound: +{max_growth_mib} MiB)",
            self.name,
            self.base_rss_kib,
            peak
        );
        assert!(
            self.m.is_running(),
            "{}: myelin died:\n{}",
            self.name,
            self.m.log_text()
        );
        assert!(
            !self.m.log_text().contains("panicked"),
            "{}: a panic was logged:\n{}",
            self.name,
            self.m.log_text()
        );
    }
}
