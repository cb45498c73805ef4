//! When to renew and how long to wait after a failure: pure functions of times and counts.

use std::time::{Duration, SystemTime};

/// Renewal time without ARI: when a third of the lifetime remains, moved earlier by up to a
/// twentieth of the lifetime so that many certificates issued together do not renew together.
/// `seed` keeps the jitter stable for one certificate.
pub(crate) fn lifetime_due(not_before: SystemTime, not_after: SystemTime, seed: u64) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let jitter_max = lifetime / 20;
    let jitter = if jitter_max.is_zero() {
        Duration::ZERO
    } else {
        let mut rng = fastrand::Rng::with_seed(seed);
        Duration::from_nanos(rng.u64(0..jitter_max.as_nanos().min(u64::MAX as u128) as u64))
    };
    not_after - lifetime / 3 - jitter
}

/// Renewal time from an ARI window: a uniformly chosen moment in it (stable for one seed).
pub(crate) fn ari_due(start: SystemTime, end: SystemTime, seed: u64) -> SystemTime {
    let span = end.duration_since(start).unwrap_or(Duration::ZERO);
    if span.is_zero() {
        return start;
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    start + Duration::from_nanos(rng.u64(0..span.as_nanos().min(u64::MAX as u128) as u64))
}

/// The wait after the `failures`-th failure in a row: `min` doubled each time up to `max`, ±10%,
/// or longer when the CA said `Retry-After`.
pub(crate) fn backoff(
    failures: u32,
    min: Duration,
    max: Duration,
    retry_after: Option<SystemTime>,
    now: SystemTime,
) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let base = min.saturating_mul(1u32 << exp).min(max);
    let jittered = base.mul_f64(0.9 + fastrand::f64() * 0.2);
    let asked = retry_after
        .and_then(|t| t.duration_since(now).ok())
        .map(|d| d.min(Duration::from_secs(24 * 3600)))
        .unwrap_or(Duration::ZERO);
    jittered.max(asked)
}

/// A stable number from bytes (a certificate's DER), for seeding jitter.
pub(crate) fn seed_of(bytes: &[u8]) -> u64 {
    // FNV-1a: stable across runs and platforms, unlike std's hasher.
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn renews_with_a_third_left() {
        let nb = SystemTime::UNIX_EPOCH + DAY * 1000;
        let na = nb + DAY * 90;
        for seed in 0..50 {
            let due = lifetime_due(nb, na, seed);
            let left = na.duration_since(due).unwrap();
            assert!(
                left >= DAY * 30 && left <= DAY * 30 + DAY * 90 / 20,
                "{left:?}"
            );
        }
        assert_eq!(lifetime_due(nb, na, 7), lifetime_due(nb, na, 7));
        // a 20-second certificate renews after about 13 s
        let na = nb + Duration::from_secs(20);
        let due = lifetime_due(nb, na, 1).duration_since(nb).unwrap();
        assert!(
            due > Duration::from_secs(12) && due <= Duration::from_secs(14),
            "{due:?}"
        );
    }

    #[test]
    fn ari_window() {
        let s = SystemTime::UNIX_EPOCH + DAY * 1000;
        let e = s + DAY;
        for seed in 0..50 {
            let d = ari_due(s, e, seed);
            assert!(d >= s && d < e);
        }
        assert_eq!(ari_due(s, s, 3), s);
    }

    #[test]
    fn backoff_doubles_caps_and_honours_retry_after() {
        let now = SystemTime::now();
        let min = Duration::from_secs(5);
        let max = Duration::from_secs(3600);
        let b1 = backoff(1, min, max, None, now);
        assert!(b1 >= Duration::from_millis(4500) && b1 <= Duration::from_millis(5500));
        let b3 = backoff(3, min, max, None, now);
        assert!(b3 >= Duration::from_secs(18) && b3 <= Duration::from_secs(22));
        let b40 = backoff(40, min, max, None, now);
        assert!(b40 <= Duration::from_secs(3960));
        let asked = backoff(1, min, max, Some(now + Duration::from_secs(600)), now);
        assert!(asked >= Duration::from_secs(599), "{asked:?}");
    }
}
