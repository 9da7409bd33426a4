//! The stream's arrival rate, read from the counts of its recent slices.

/// Windows of arrivals [`arrival_rate`] remembers.
pub const RATE_WINDOWS: usize = 6;

/// The most arrivals a Poisson stream expected to bring `typical` plausibly brings (4
/// standard deviations above): more is a burst, not the stream.
pub fn burst_cap(typical: f64) -> f64 {
    typical + 4.0 * typical.max(1.0).sqrt()
}

/// A stream's arrivals per slice from the counts of its recent slices (newest first,
/// `per_window` slices to a window, at most [`RATE_WINDOWS`] windows).
///
/// The rate prices every new payment's schedule, so its noise becomes noise in the price:
/// one window at 0.1/s holds about 60 arrivals (±13%), and a price that follows that noise
/// costs delay for nothing: the plans actually used expect more delay than those of the
/// mean price. So the estimate is the mean over the longest span of
/// whole windows (up to [`RATE_WINDOWS`]) with which the newest window agrees (its count
/// within 3 standard deviations of a Poisson count at the span's rate): a real change of
/// rate is followed within a window, noise is averaged over an hour. A slice far above the
/// typical one (a burst) counts as the most a Poisson slice at the typical rate holds
/// ([`burst_cap`]), so one burst does not read as a lasting rate; a window mostly above it
/// is a new rate, if at most `servable` per slice. (Counting a burst's slice as a typical
/// one instead would spare the payments after a burst on a busy stream, but drain the
/// burst slower and grow the sum of all delays: docs/DESIGN.md, alternatives.)
pub fn arrival_rate(counts: &[u32], per_window: usize, servable: f64) -> f64 {
    let per_window = per_window.max(1);
    let counts = &counts[..counts.len().min(RATE_WINDOWS * per_window)];
    if counts.is_empty() {
        return 0.0;
    }
    let median = |slices: &[u32]| {
        let mut sorted = slices.to_vec();
        sorted.sort_unstable();
        f64::from(sorted[sorted.len() / 2])
    };
    // A slice far above the typical one (the median slice) is a burst, not the stream.
    let mut cap = burst_cap(median(counts));
    // Unless most of the newest window is: a rate that went up, followed within a window
    // instead of once it fills half the memory (half an hour). A surge no key could serve
    // as a stream (`servable`: each payment costs a request) is a burst however long:
    // pricing every new payment for it would leave them all their deadline checks only,
    // while the backlog rule serves it and keeps the stream's price.
    let newest = per_window.min(counts.len());
    let recent_typical = median(&counts[..newest]);
    if recent_typical > cap && recent_typical <= servable {
        cap = burst_cap(recent_typical);
    }
    let capped: Vec<f64> = counts.iter().map(|&c| f64::from(c).min(cap)).collect();
    let recent: f64 = capped[..newest].iter().sum();
    let mut best = recent / newest as f64;
    let mut span = 2 * per_window;
    while span <= capped.len() {
        let rate = capped[..span].iter().sum::<f64>() / span as f64;
        let expect = rate * newest as f64;
        if (recent - expect).abs() > 3.0 * expect.max(1.0).sqrt() {
            break;
        }
        best = rate;
        span += per_window;
    }
    // Slices short of a whole window at the end still count, when they agree.
    if span > capped.len() && capped.len() > span - per_window {
        let rate = capped.iter().sum::<f64>() / capped.len() as f64;
        let expect = rate * newest as f64;
        if (recent - expect).abs() <= 3.0 * expect.max(1.0).sqrt() {
            best = rate;
        }
    }
    // A rate that rises or falls steadily (a shop's day) reads late on any mean: half its
    // span behind. A straight line through the last half hour, when the counts lie along
    // one, gives the rate now. Not through a burst's slices: one would tilt the line.
    let recent_slices = &counts[..counts.len().min(TREND_WINDOWS * per_window)];
    if recent_slices.len() >= 2 * per_window && recent_slices.iter().all(|&c| f64::from(c) <= cap) {
        if let Some(now) = trend(recent_slices) {
            return now.clamp(0.0, servable.max(best));
        }
    }
    best
}

/// Windows of arrivals [`trend`] fits a line through.
const TREND_WINDOWS: usize = 3;

/// The rate now (per slice) from a straight line through `counts` (newest first), when
/// the line is the better account of them:
/// - its slope is clear of Poisson noise (beyond 3 standard errors);
/// - the counts lie along it (a chi-square test at 3 standard deviations);
/// - a single step (one rate before some slice, another after it) does not fit them
///   clearly better ([`STEP_PREFERRED`]): after a step from one steady rate to another the
///   mean since the step is the rate, and a line through the step would overshoot it
///   (a third past it, 20 minutes after the rate halved).
///
/// A mean reads a steady fall half its span late, so the price stays set for more payments
/// than are coming and the budget goes unspent; the line reads it as it is now. The step
/// test is what keeps the line from overshooting after a step of the rate.
fn trend(counts: &[u32]) -> Option<f64> {
    let n = counts.len();
    let y = |x: usize| f64::from(counts[x]);
    let mid = (n as f64 - 1.0) / 2.0;
    let total: f64 = (0..n).map(y).sum();
    let mean = total / n as f64;
    let (mut sxx, mut sxy) = (0.0, 0.0);
    for x in 0..n {
        let dx = x as f64 - mid;
        sxx += dx * dx;
        sxy += dx * (y(x) - mean);
    }
    if sxx <= 0.0 {
        return None;
    }
    // Per slice of age: negative while the rate rises.
    let slope = sxy / sxx;
    if slope.abs() <= 3.0 * (mean.max(1.0) / sxx).sqrt() {
        return None;
    }
    // Pearson's chi-square of counts against a fit.
    let chi2 = |fit: &dyn Fn(usize) -> f64| -> f64 {
        (0..n)
            .map(|x| {
                let f = fit(x).max(1.0);
                (y(x) - f).powi(2) / f
            })
            .sum()
    };
    let line = |x: f64| mean + slope * (x - mid);
    let line_chi2 = chi2(&|x| line(x as f64));
    let dof = n as f64 - 2.0;
    if line_chi2 > dof + 3.0 * (2.0 * dof).sqrt() {
        return None;
    }
    let mut newer = 0.0;
    for k in 1..n {
        newer += y(k - 1);
        let (after, before) = (newer / k as f64, (total - newer) / (n - k) as f64);
        if chi2(&|x| if x < k { after } else { before }) + STEP_PREFERRED < line_chi2 {
            return None;
        }
    }
    // Slice 0 runs from a slice ago up to now: now is half a slice before its middle.
    Some(line(-0.5))
}

/// How much better (in chi-square) a single step must fit the counts than a line for
/// [`trend`] to read them as a step: the step has the freer shape (it also picks where to
/// step), so on a steady rise it often fits as well by chance: preferred at a smaller
/// margin, the step takes a steady fall for one and the line's gain is lost, while a step
/// of the rate is read as a step at this margin too.
const STEP_PREFERRED: f64 = 8.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arrival_rate_averages_a_steady_stream_over_the_whole_memory() {
        let mut rng = fastrand::Rng::with_seed(3);
        // Poisson(6) counts: sums of 60 Bernoulli(0.1) draws.
        let draw = |rng: &mut fastrand::Rng| (0..60).filter(|_| rng.f64() < 0.1).count() as u32;
        let (mut short_err, mut long_err) = (0.0, 0.0);
        for _ in 0..200 {
            let counts: Vec<u32> = (0..60).map(|_| draw(&mut rng)).collect();
            let short = counts[..10].iter().sum::<u32>() as f64 / 10.0;
            short_err += (short - 6.0).powi(2);
            long_err += (arrival_rate(&counts, 10, 100.0) - 6.0).powi(2);
        }
        assert!(
            long_err < short_err / 3.0,
            "an hour's memory is steadier than a window's: {long_err:.1} vs {short_err:.1}"
        );
    }

    #[test]
    fn the_arrival_rate_reads_a_steady_rise_or_fall_as_it_is_now() {
        // An hour of slices (newest first) rising by one every two slices to 40 now, and
        // falling alike to 10: a mean over the newest window alone would read 37.75 and
        // 12.25, a quarter of the way back.
        let rising: Vec<u32> = (0..60).map(|x| (80 - x) / 2).collect();
        let rate = arrival_rate(&rising, 10, 100.0);
        assert!((39.5..41.0).contains(&rate), "{rate}");
        let falling: Vec<u32> = (0..60).map(|x| 10 + x / 2).collect();
        let rate = arrival_rate(&falling, 10, 100.0);
        assert!((9.0..10.5).contains(&rate), "{rate}");
        // A step fits no line: the window after it gives the rate, not a line through it
        // (which would overshoot to about 15).
        let step: Vec<u32> = (0..60).map(|x| if x < 20 { 12 } else { 3 }).collect();
        assert_eq!(arrival_rate(&step, 10, 100.0), 12.0);
        // No line through a burst's slice: the rise with one slice in the last half hour
        // above the burst cap (about 45 here), though not so far above that the line
        // would fit the counts badly, reads as the mean, short of 40.
        let mut burst = rising.clone();
        burst[15] = 50;
        let rate = arrival_rate(&burst, 10, 100.0);
        assert!(rate < 39.0, "{rate}");
    }

    #[test]
    fn the_arrival_rate_follows_a_change_within_a_window_and_ignores_a_burst() {
        // Newest first: a window at 12 per slice after five at 6.
        let mut counts = vec![12u32; 10];
        counts.extend(std::iter::repeat_n(6, 50));
        assert_eq!(arrival_rate(&counts, 10, 100.0), 12.0);
        // One slice of a burst in a steady stream, or two.
        let mut counts = vec![6u32; 60];
        counts[3] = 2000;
        let rate = arrival_rate(&counts, 10, 100.0);
        assert!(rate < 6.5, "{rate}");
        // The burst's slice counts as the most a Poisson slice at the typical rate holds,
        // as docs/SPEC.md says (the request budget).
        let want = (59.0 * 6.0 + burst_cap(6.0)) / 60.0;
        assert!((rate - want).abs() < 1e-9, "{rate} vs {want}");
        counts[4] = 2000;
        let rate = arrival_rate(&counts, 10, 100.0);
        assert!(rate < 7.0, "{rate}");
        // A rate five times higher for a window after five at the old one (a lunch-hour
        // surge): the new rate, not a burst capped at the old one.
        let mut counts = vec![60u32; 10];
        counts.extend(std::iter::repeat_n(12, 50));
        assert_eq!(arrival_rate(&counts, 10, 100.0), 60.0);
        // Unless no key could serve it: then it is a burst, however long.
        let mut counts = vec![400u32; 10];
        counts.extend(std::iter::repeat_n(12, 50));
        let rate = arrival_rate(&counts, 10, 100.0);
        assert!(rate < 30.0, "{rate}");
        // Half a window into it, the newest window's mean.
        let mut counts = vec![60u32; 6];
        counts.extend(std::iter::repeat_n(12, 54));
        assert_eq!(
            arrival_rate(&counts, 10, 100.0),
            (6.0 * 60.0 + 4.0 * 12.0) / 10.0
        );
        // Less than a window lived.
        assert_eq!(arrival_rate(&[4, 6], 10, 100.0), 5.0);
        assert_eq!(arrival_rate(&[], 10, 100.0), 0.0);
    }
}
