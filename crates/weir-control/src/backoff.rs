//! Exponential backoff with jitter, for reconnecting to the control plane.
//!
//! Each delay is drawn uniformly from the upper half of the current step
//! ("equal jitter"): a fleet of node proxies that lost the control plane at
//! the same moment spreads its reconnects instead of arriving together, and
//! no delay is shorter than half the step. Steps double from `initial` up to
//! `max`; [`Backoff::reset`] after a successful connection.

use std::time::Duration;

/// Default first step.
pub const DEFAULT_INITIAL: Duration = Duration::from_millis(250);
/// Default cap.
pub const DEFAULT_MAX: Duration = Duration::from_secs(15);

/// Reconnect delays.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
    rng: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(DEFAULT_INITIAL, DEFAULT_MAX)
    }
}

impl Backoff {
    /// Steps from `initial`, doubling, capped at `max`; seeded from the clock
    /// and the process id.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self::with_seed(initial, max, nanos ^ (u64::from(std::process::id()) << 32))
    }

    /// Like [`new`](Self::new) with a fixed seed (tests).
    pub fn with_seed(initial: Duration, max: Duration, seed: u64) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        Self {
            initial,
            max,
            step: initial,
            rng: seed,
        }
    }

    /// splitmix64: small, fast, good enough to spread reconnects.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next delay, in `[step / 2, step]`; then the step doubles (capped).
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let span = (step - half).as_nanos() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.next_random() % (span + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// Back to the first step (after a successful connection).
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let ms = Duration::from_millis;
        let mut b = Backoff::with_seed(ms(100), ms(1000), 42);
        let steps = [100, 200, 400, 800, 1000, 1000, 1000];
        for step in steps {
            let d = b.next_delay();
            assert!(
                d >= ms(step) / 2 && d <= ms(step),
                "{d:?} not in [{}, {step}] ms",
                step / 2
            );
        }
        b.reset();
        let d = b.next_delay();
        assert!(d >= ms(50) && d <= ms(100), "{d:?} after reset");
    }

    #[test]
    fn jitter_spreads_delays() {
        let ms = Duration::from_millis;
        let delays: std::collections::BTreeSet<Duration> = (0..20)
            .map(|seed| Backoff::with_seed(ms(1000), ms(1000), seed).next_delay())
            .collect();
        assert!(delays.len() > 15, "{delays:?}");
    }

    #[test]
    fn degenerate_settings_are_sane() {
        let mut b = Backoff::with_seed(Duration::ZERO, Duration::ZERO, 1);
        assert!(b.next_delay() <= Duration::from_millis(1));
    }
}
