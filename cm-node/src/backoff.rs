//! The CM's reconnection pacing for its own links (to the core, to the
//! balancer): a [`Reconnect`] counts attempts against the shared schedule
//! ([`xmpp_stream::pacing::Backoff`]) and draws its jitter from a seeded
//! generator, so many CMs reconnecting to a restarted peer spread out and
//! tests are repeatable. Sans-IO: the caller passes the time and sleeps for
//! what it says.

use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::SmallRng;
use xmpp_stream::pacing::Backoff;

/// Attempts made since the link last stayed up, and the delays between
/// them. A link counts as working again only once it stayed up for the
/// schedule's cap: a peer that accepts and then drops every link at once
/// (it cannot read what this side sends, say) is retried at the slowest
/// pace, not in a loop limited only by the round trip.
#[derive(Clone, Debug)]
pub struct Reconnect {
    schedule: Backoff,
    /// A link up this long starts the schedule over when it is lost.
    stable_after: Duration,
    attempt: u32,
    /// When the current link was established, if it was.
    up_since: Option<Instant>,
    rng: SmallRng,
}

impl Reconnect {
    /// Delays following `schedule`; jitter drawn from `rng`. A link counts
    /// as working once it stayed up for the schedule's cap.
    pub fn new(schedule: Backoff, rng: SmallRng) -> Self {
        Self {
            stable_after: schedule.cap(),
            schedule,
            attempt: 0,
            up_since: None,
            rng,
        }
    }

    /// The link was established at `now` (the peer accepted it).
    pub fn established(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The link was lost (or could not be made) at `now`: how long to wait
    /// before the next attempt. After a link that stayed up long enough the
    /// schedule starts over from its first step.
    pub fn next_delay(&mut self, now: Instant) -> Duration {
        if let Some(since) = self.up_since.take()
            && now.saturating_duration_since(since) >= self.stable_after
        {
            self.attempt = 0;
        }
        let delay = self.schedule.delay(self.attempt, self.rng.r#gen());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(3);
    const SCHEDULE: Backoff = Backoff::spread(BASE, CAP);

    fn reconnect(seed: u64) -> Reconnect {
        Reconnect::new(SCHEDULE, SmallRng::seed_from_u64(seed))
    }

    #[test]
    fn the_first_retry_waits_up_to_the_base_then_delays_follow_the_schedule() {
        let t0 = Instant::now();
        let mut r = reconnect(1);
        assert!(r.next_delay(t0) <= BASE);
        for attempt in 1..12 {
            let ceiling = SCHEDULE.ceiling(attempt);
            let delay = r.next_delay(t0);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} for attempt {attempt}"
            );
        }
    }

    #[test]
    fn first_retries_are_spread_over_the_base_not_at_once() {
        let t0 = Instant::now();
        let first: Vec<Duration> = (0..200)
            .map(|seed| reconnect(seed).next_delay(t0))
            .collect();
        assert!(first.iter().all(|d| *d <= BASE), "{first:?}");
        assert!(
            first.iter().filter(|d| d.is_zero()).count() < 2,
            "{first:?}"
        );
        let early = first.iter().filter(|d| **d < BASE / 2).count();
        assert!(
            (50..150).contains(&early),
            "{early} of 200 in the first half"
        );
    }

    #[test]
    fn the_jitter_varies_with_the_seed_and_repeats_with_it() {
        let t0 = Instant::now();
        let second = |seed| {
            let mut r = reconnect(seed);
            r.next_delay(t0);
            r.next_delay(t0)
        };
        let distinct: std::collections::HashSet<_> = (0..200).map(second).collect();
        assert!(distinct.len() > 20, "{distinct:?}");
        assert_eq!(second(7), second(7));
    }

    #[test]
    fn a_link_dropped_soon_after_it_was_established_keeps_backing_off() {
        let t0 = Instant::now();
        let mut r = reconnect(3);
        let mut now = t0;
        // the peer welcomes every link and drops it a moment later
        for attempt in 0..8 {
            let delay = r.next_delay(now);
            if attempt >= 1 {
                assert!(delay >= SCHEDULE.ceiling(attempt) / 2, "{delay:?}");
            }
            now += delay;
            r.established(now);
            now += Duration::from_millis(5);
        }
        // by now every retry waits at least half the cap
        assert!(r.next_delay(now) >= CAP / 2);
        // just short of the cap up is not long enough either
        r.established(now);
        now += CAP - Duration::from_millis(1);
        assert!(r.next_delay(now) >= CAP / 2);
    }

    #[test]
    fn a_link_that_stayed_up_for_the_cap_starts_the_schedule_over() {
        let t0 = Instant::now();
        let mut r = reconnect(3);
        for _ in 0..6 {
            r.next_delay(t0);
        }
        r.established(t0);
        let lost = t0 + CAP;
        assert!(r.next_delay(lost) <= BASE);
        let second = r.next_delay(lost);
        assert!(second >= BASE / 2 && second <= BASE, "{second:?}");
        // an attempt that never got established does not start it over
        let third = r.next_delay(lost + CAP * 10);
        assert!(third >= BASE && third <= BASE * 2, "{third:?}");
    }
}
