//! When to try again after losing the connection: the first attempt at
//! once (a phone that just lost its connection wants it back), then
//! jittered exponential backoff, 0.5–1 × min(200 ms × 2^(attempt-1), 30 s),
//! so a fleet that lost one CM does not come back in one wave.

use std::time::Duration;

use rand::Rng;

/// The delay before the second attempt, before jitter.
pub(crate) const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// The longest delay between attempts, before jitter.
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// The delay before attempt number `attempt` (0: the first, at once).
pub(crate) fn delay(attempt: u32, rng: &mut impl Rng) -> Duration {
    let cap = ceiling(attempt);
    if cap.is_zero() {
        return cap;
    }
    cap.mul_f64(rng.gen_range(0.5..=1.0))
}

/// The delay before attempt number `attempt` before jitter.
pub(crate) fn ceiling(attempt: u32) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    BACKOFF_BASE
        .saturating_mul(1 << (attempt - 1).min(8))
        .min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn the_first_attempt_is_immediate_then_delays_double_with_jitter_up_to_the_cap() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(delay(0, &mut rng), Duration::ZERO);
        assert_eq!(ceiling(1), Duration::from_millis(200));
        assert_eq!(ceiling(2), Duration::from_millis(400));
        assert_eq!(ceiling(8), Duration::from_millis(25_600));
        assert_eq!(ceiling(9), BACKOFF_CAP);
        assert_eq!(ceiling(1000), BACKOFF_CAP);
        for attempt in 1..40 {
            let cap = ceiling(attempt);
            let d = delay(attempt, &mut rng);
            assert!(d >= cap / 2 && d <= cap, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn the_jitter_comes_from_the_given_rng() {
        let a: Vec<_> = (1..10)
            .map(|n| delay(n, &mut StdRng::seed_from_u64(7)))
            .collect();
        let b: Vec<_> = (1..10)
            .map(|n| delay(n, &mut StdRng::seed_from_u64(7)))
            .collect();
        assert_eq!(a, b);
        let mut rng = StdRng::seed_from_u64(7);
        let spread: Vec<_> = (0..20).map(|_| delay(5, &mut rng)).collect();
        assert!(spread.iter().any(|d| *d != spread[0]), "jittered");
    }
}
