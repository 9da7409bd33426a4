//! One back-off for every retry of a failed local operation (a database write on a full
//! disk, a read of the webhook outbox): it doubles from a floor to a ceiling, with jitter so
//! that tasks failing together do not retry in step, and starts over after a success.

use std::time::Duration;

/// Relative jitter of each delay (±20%).
const JITTER: f64 = 0.2;

/// Exponential back-off between retries.
#[derive(Debug, Clone)]
pub struct Backoff {
    floor: Duration,
    ceiling: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `floor`, doubles up to `ceiling`.
    pub fn new(floor: Duration, ceiling: Duration) -> Self {
        Self {
            floor,
            ceiling: ceiling.max(floor),
            next: floor,
        }
    }

    /// The wait before the next try, jittered.
    pub fn next_delay(&mut self) -> Duration {
        self.delay_with(fastrand::f64())
    }

    /// [`Backoff::next_delay`] with `unit`, a draw in `[0, 1)`, placing it within the jitter.
    pub fn delay_with(&mut self, unit: f64) -> Duration {
        let d = self
            .next
            .mul_f64(1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0));
        self.next = (self.next * 2).min(self.ceiling);
        d
    }

    /// After a success: the next failure waits the floor again.
    pub fn reset(&mut self) {
        self.next = self.floor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_ceiling_and_starts_over_after_a_success() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        let seq: Vec<Duration> = (0..6).map(|_| b.delay_with(0.5)).collect();
        assert_eq!(
            seq,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        b.reset();
        assert_eq!(b.delay_with(0.5), ms(100));
        assert_eq!(b.delay_with(0.0), ms(160), "-20%");
        assert_eq!(b.delay_with(1.0), ms(480), "+20%");
        for _ in 0..100 {
            let d = Backoff::new(ms(100), ms(100)).next_delay();
            assert!(d >= ms(80) && d <= ms(120), "{d:?}");
        }
    }
}
