//! What the live payments of a key will want over the next window, as the admission of a
//! late check out of the spare budget reads it.
//!
//! A late request holds its room for a whole window. The live payments' requests in the
//! next window owe almost nothing to those of the last one: their checks are those of
//! payments still to arrive, a Poisson stream, and the price level steers them towards
//! the same projection whatever came before. So a window in which the live payments sent
//! less than usual is no sign that the next will too; taking its dip as room fills the
//! window with late requests just before the live pace comes back, and the live checks
//! wait at the limiter behind them. The live need is therefore the larger of the last
//! window's pace (a rise lasts while the payments behind it are held) and the pace the
//! live payments keep on average, with a margin for how far it strays from that.

use crate::payment::SchedMs;

/// Windows over which the usual live pace and its spread are remembered: long enough
/// that a dip or a spurt (a few minutes of arrivals) moves them little, short enough to
/// follow a change of traffic within the hour.
pub(super) const PACE_MEMORY_WINDOWS: f64 = 6.0;

/// Standard deviations of the live pace above its usual level that the live need
/// reserves as well: the next window's pace strays from the usual one as the last one's
/// did, whatever the last one was. A whole one leaves the late checks almost no room
/// while payments arrive; none lets every ordinary rise run into them.
pub(super) const PACE_MARGIN_SDS: f64 = 0.25;

/// The live payments' pace per window, as remembered: its usual level and spread.
#[derive(Debug, Clone, Default)]
pub(super) struct LivePace {
    /// Smoothed pace and smoothed squared pace, and when last read.
    mean: f64,
    square: f64,
    at: Option<SchedMs>,
}

impl LivePace {
    /// Takes in the pace of the window ending `now` (requests sent by the live payments
    /// over it); `window` in ms.
    pub(super) fn observe(&mut self, pace: f64, now: SchedMs, window: i64) {
        let Some(at) = self.at else {
            (self.mean, self.square, self.at) = (pace, pace * pace, Some(now));
            return;
        };
        let dt = (now - at).max(0) as f64;
        if dt <= 0.0 {
            return;
        }
        let tau = PACE_MEMORY_WINDOWS * window.max(1) as f64;
        let weight = 1.0 - (-dt / tau).exp();
        self.mean += weight * (pace - self.mean);
        self.square += weight * (pace * pace - self.square);
        self.at = Some(now);
    }

    /// The usual pace, and how far the pace strays from it (one standard deviation).
    pub(super) fn usual(&self) -> (f64, f64) {
        let var = (self.square - self.mean * self.mean).max(0.0);
        (self.mean, var.sqrt())
    }

    /// Requests the live payments are taken to want over the next window, their last
    /// window's `pace` being that.
    pub(super) fn need(&self, pace: f64) -> f64 {
        if self.at.is_none() {
            return pace;
        }
        let (mean, sd) = self.usual();
        pace.max(mean + PACE_MARGIN_SDS * sd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: i64 = 600_000;

    /// Observes `pace` every second for `windows` windows from `from`; returns the end.
    fn feed(p: &mut LivePace, pace: f64, from: i64, windows: i64) -> i64 {
        let mut t = from;
        while t < from + windows * W {
            p.observe(pace, SchedMs(t), W);
            t += 1000;
        }
        t
    }

    /// A dip of the last window is not taken as room: the need stays at the usual pace;
    /// a rise is the need at once.
    #[test]
    fn a_dip_of_the_live_pace_is_not_room_and_a_rise_is_need() {
        let mut p = LivePace::default();
        assert_eq!(p.need(500.0), 500.0, "nothing remembered: the last pace");
        let t = feed(&mut p, 900.0, 0, 30);
        assert!((p.need(900.0) - 900.0).abs() < 1.0);
        // A window's dip moves the usual pace little.
        let t = feed(&mut p, 800.0, t, 1);
        assert!(p.need(800.0) > 880.0, "{}", p.need(800.0));
        assert_eq!(p.need(990.0), 990.0);
        // A lasting fall is followed within a few memories.
        feed(&mut p, 600.0, t, 30);
        assert!(p.need(600.0) < 610.0, "{}", p.need(600.0));
    }

    /// The spread is that of the paces observed.
    #[test]
    fn the_spread_is_the_paces_standard_deviation() {
        let mut p = LivePace::default();
        let mut t = 0;
        for i in 0..200_000 {
            let pace = if i % 2 == 0 { 900.0 } else { 1000.0 };
            p.observe(pace, SchedMs(t), W);
            t += 1000;
        }
        let (mean, sd) = p.usual();
        assert!((mean - 950.0).abs() < 2.0, "{mean}");
        assert!((sd - 50.0).abs() < 2.0, "{sd}");
    }
}
