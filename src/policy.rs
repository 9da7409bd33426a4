//! Budget-optimal allocation of checks by real age: pure decision code.
//!
//! A pending payment of age `a` is worth checking when the flips it may have made since its
//! last check outweigh the price of a request. For a flip-age distribution `F` (share of
//! payments flipped by age `a`) and a price `μ` (delay, in grid cells, that one request is
//! worth), dynamic programming on a grid of ages gives the schedule of check ages that
//! minimises `E[delay] + μ·E[checks]`, under the ladder's rules: the first check no earlier
//! than the ladder's first, gaps never shorter than the ladder's step at that age, and a
//! check at (or after) the deadline for every payment still pending. The scheduler keeps a
//! table of such schedules for a ladder of prices and picks, per API key, the lowest price
//! whose projected demand fits the budget; [`bound`] spends a known budget exactly and is
//! the yardstick the benchmark compares against.
//!
//! The distribution is learnt per kind from the daemon's own outcomes ([`Learner`]): a
//! flip happened after the last check that saw the payment pending and no later than the
//! first check that saw it final (interval-censored data); payments still pending, timed
//! out or cancelled are censored on the right. The estimate is the maximum a posteriori
//! one, by EM, with the distribution the ladder implies as a prior.

use crate::ladder::Ladder;
use std::collections::VecDeque;

/// Grid cells per ladder timeout: at the documented ladder, one cell is one second.
pub const CELLS: usize = 600;

/// The ladder, quantised to the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// Milliseconds per cell.
    unit: i64,
    /// The deadline, in cells.
    n: usize,
    /// Earliest first check, in cells.
    first: usize,
    /// Shortest gap allowed after a check made in cell `t`, in cells (at least 1).
    step: Vec<usize>,
    /// The ladder itself as a schedule (next check cell after a check in cell `t`).
    ladder_next: Vec<usize>,
}

impl Grid {
    /// Quantises `ladder` to [`CELLS`] cells up to its timeout.
    pub fn new(ladder: &Ladder) -> Self {
        let n = CELLS;
        let unit = (ladder.timeout_ms() / n as i64).max(1);
        let (first_ms, _) = ladder.first_window();
        let cells = |ms: i64| ((ms + unit - 1) / unit).max(1) as usize;
        let first = cells(first_ms).min(n);
        let step = (0..n)
            .map(|t| cells(ladder.every_at(first_ms, t as i64 * unit)))
            .collect();
        let ladder_next = (0..n)
            .map(|t| {
                let after = (t > 0).then_some(t as i64 * unit);
                ladder
                    .next_check(first_ms, after)
                    .map_or(n, |ms| (ms / unit).clamp(t as i64 + 1, n as i64) as usize)
            })
            .collect();
        Self {
            unit,
            n,
            first,
            step,
            ladder_next,
        }
    }

    /// Milliseconds per cell.
    pub fn unit_ms(&self) -> i64 {
        self.unit
    }

    /// The deadline, in cells.
    pub fn cells(&self) -> usize {
        self.n
    }

    /// The cell of an age in milliseconds (ages before the start are cell 0).
    pub fn cell(&self, age_ms: i64) -> usize {
        (age_ms.max(0) / self.unit).min(self.n as i64) as usize
    }

    /// The first cell whose end is at or after an age (a flip seen by a check at that age
    /// happened in this cell or before).
    pub fn cell_ceil(&self, age_ms: i64) -> usize {
        ((age_ms.max(0) + self.unit - 1) / self.unit).min(self.n as i64) as usize
    }

    /// The shortest gap after a check made at `age_ms`, in milliseconds.
    pub fn step_ms(&self, age_ms: i64) -> i64 {
        self.step[self.cell(age_ms).min(self.n - 1)] as i64 * self.unit
    }

    /// The prior a new daemon starts from: flips are as likely at an age as the ladder's
    /// density of checks there, squared (the ladder as if it were the optimal √hazard
    /// allocation), 70% of payments flipping before the deadline.
    pub fn ladder_prior(&self) -> FlipDist {
        let mut pmf = vec![0.0; self.n + 2];
        for (a, p) in pmf.iter_mut().enumerate().take(self.n + 1).skip(1) {
            let s = self.step[(a - 1).max(self.first).min(self.n - 1)] as f64;
            *p = 1.0 / (s * s);
        }
        let total: f64 = pmf.iter().sum();
        for p in &mut pmf {
            *p *= 0.7 / total;
        }
        pmf[self.n + 1] = 0.3;
        FlipDist::new(pmf)
    }
}

/// A flip-age distribution on the grid: `pmf[a]` is the share of payments flipping in
/// cell `a` (ages `(a-1, a]`, `1 ≤ a ≤ n`); `pmf[n+1]` the share never flipping before the
/// deadline.
#[derive(Debug, Clone, PartialEq)]
pub struct FlipDist {
    pmf: Vec<f64>,
    /// `cdf[a]`: share flipped by the end of cell `a`.
    cdf: Vec<f64>,
    /// `moment[a]`: `Σ_{i ≤ a} i·pmf[i]`.
    moment: Vec<f64>,
}

impl FlipDist {
    /// A distribution from (not necessarily normalised) weights of length `n + 2`.
    pub fn new(mut pmf: Vec<f64>) -> Self {
        let total: f64 = pmf.iter().map(|p| p.max(0.0)).sum();
        for p in &mut pmf {
            *p = if total > 0.0 { p.max(0.0) / total } else { 0.0 };
        }
        if total <= 0.0 {
            if let Some(last) = pmf.last_mut() {
                *last = 1.0;
            }
        }
        let mut cdf = Vec::with_capacity(pmf.len());
        let mut moment = Vec::with_capacity(pmf.len());
        let (mut c, mut m) = (0.0, 0.0);
        for (i, p) in pmf.iter().enumerate() {
            c += p;
            m += i as f64 * p;
            cdf.push(c);
            moment.push(m);
        }
        Self { pmf, cdf, moment }
    }

    /// A distribution from a function giving the share flipped by an age (in cells,
    /// fractional), for the deadline `n` cells.
    pub fn from_cdf(n: usize, cdf: impl Fn(f64) -> f64) -> Self {
        let mut pmf = vec![0.0; n + 2];
        let mut prev = 0.0;
        for (a, p) in pmf.iter_mut().enumerate().take(n + 1).skip(1) {
            let c = cdf(a as f64).clamp(prev, 1.0);
            *p = c - prev;
            prev = c;
        }
        pmf[n + 1] = 1.0 - prev;
        Self::new(pmf)
    }

    /// The deadline, in cells.
    pub fn cells(&self) -> usize {
        self.pmf.len() - 2
    }

    /// Share of payments still pending at the end of cell `t`.
    pub fn survival(&self, t: usize) -> f64 {
        (1.0 - self.cdf[t.min(self.cdf.len() - 1)]).max(0.0)
    }

    /// Share flipping before the deadline.
    pub fn flips(&self) -> f64 {
        self.cdf[self.cdf.len() - 2]
    }

    /// The age (cells) by which a share `q` of the payments that flip have flipped.
    pub fn quantile(&self, q: f64) -> usize {
        let n = self.pmf.len() - 2;
        let target = q * self.flips();
        (1..=n).find(|&a| self.cdf[a] >= target).unwrap_or(n)
    }

    /// Expected total delay (cells) of the flips in `(t, u]`, all seen by a check at `u`.
    fn delay(&self, t: usize, u: usize) -> f64 {
        let n = self.pmf.len() - 2;
        let u_c = u.min(n);
        if u_c <= t {
            return 0.0;
        }
        (u as f64 + 0.5) * (self.cdf[u_c] - self.cdf[t]) - (self.moment[u_c] - self.moment[t])
    }
}

/// The schedule that is optimal for one price of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The price it was solved for (cells of delay per request); 0 for the ladder itself.
    pub mu: f64,
    /// After a check in cell `t` (`0`: no check yet), the cell of the next one.
    next: Vec<usize>,
    /// Expected requests per payment.
    pub checks: f64,
    /// Expected delay of a flip before the deadline, in cells.
    pub delay: f64,
    /// Expected requests in the first `h` cells of a payment's life, summed over
    /// `h = 0..window`: a steady stream of one payment per cell costs this many requests
    /// in a window.
    pub per_window: f64,
}

impl Table {
    /// The next check's cell after a check in cell `t` (`0`: before any).
    pub fn next(&self, t: usize) -> usize {
        self.next[t.min(self.next.len() - 1)]
    }

    fn from_next(next: Vec<usize>, mu: f64, dist: &FlipDist, window_cells: usize) -> Self {
        let n = next.len();
        let (mut t, mut checks, mut delay) = (0usize, 0.0, 0.0);
        let mut at: Vec<(usize, f64)> = Vec::new();
        loop {
            let u = next[t];
            let w = dist.survival(t);
            checks += w;
            at.push((u, w));
            delay += dist.delay(t, u);
            if u >= n {
                break;
            }
            t = u;
        }
        let flips = dist.flips();
        // Requests in the first `h` cells: each check at cell `u` counts for `h > u`... summed
        // over `h < window` it counts `window - u` times.
        let per_window = at
            .iter()
            .map(|&(u, w)| w * window_cells.saturating_sub(u) as f64)
            .sum();
        Self {
            mu,
            next,
            checks,
            delay: if flips > 0.0 { delay / flips } else { 0.0 },
            per_window,
        }
    }

    /// The ladder as a table.
    fn ladder(grid: &Grid, dist: &FlipDist, window_cells: usize) -> Self {
        Self::from_next(grid.ladder_next.clone(), 0.0, dist, window_cells)
    }

    /// Solves the dynamic program for price `mu`.
    fn solve(grid: &Grid, dist: &FlipDist, mu: f64, window_cells: usize) -> Self {
        let n = grid.n;
        let mut value = vec![0.0f64; n + 1];
        let mut next = vec![n; n];
        for t in (0..n).rev() {
            let lo = if t == 0 {
                grid.first
            } else {
                (t + grid.step[t]).max(grid.first)
            };
            let base = mu * dist.survival(t);
            // The deadline check is always allowed, whatever the step.
            let mut best = (base + dist.delay(t, n), n);
            for (u, v) in value.iter().enumerate().take(n).skip(lo) {
                let c = base + dist.delay(t, u) + v;
                if c < best.0 {
                    best = (c, u);
                }
            }
            value[t] = best.0;
            next[t] = best.1;
        }
        Self::from_next(next, mu, dist, window_cells)
    }

    /// Expected requests in `(now, now + horizon]` cells of age for a payment last checked
    /// in cell `last` and now `age` cells old whose next check is due at cell `due`,
    /// given that it is pending now.
    pub fn demand(
        &self,
        dist: &FlipDist,
        last: usize,
        due: usize,
        age: usize,
        horizon: usize,
    ) -> f64 {
        let n = self.next.len();
        let end = age + horizon;
        let s0 = dist.survival(last).max(1e-9);
        let mut u = due.max(age);
        let mut t;
        let mut w = 1.0;
        let mut total = 0.0;
        loop {
            if u > end {
                break;
            }
            total += w;
            if u >= n {
                break;
            }
            t = u;
            w = (dist.survival(t) / s0).min(1.0);
            u = self.next[t];
        }
        total
    }
}

/// Schedules for a ladder of prices, for one kind's flip distribution. Index 0 is the
/// documented ladder itself (the budget is not scarce); higher indices are ever dearer
/// requests, so ever fewer checks. Each is solved the first time it is needed: a key's
/// level search visits a handful of them.
#[derive(Debug, Clone)]
pub struct Plans {
    pub dist: FlipDist,
    grid: Grid,
    window_cells: usize,
    tables: Vec<std::cell::OnceCell<Table>>,
}

/// Number of priced tables above the ladder.
const PRICES: usize = 72;
/// Cheapest and dearest price, in cells of delay per request.
const MU_MIN: f64 = 0.01;
const MU_MAX: f64 = 100_000.0;

impl Plans {
    /// Plans for `dist`. `window_cells`: the budget window on the grid.
    pub fn new(grid: &Grid, dist: FlipDist, window_cells: usize) -> Self {
        Self {
            dist,
            grid: grid.clone(),
            window_cells,
            tables: (0..=PRICES).map(|_| std::cell::OnceCell::new()).collect(),
        }
    }

    /// The price of level `i` (0 for the ladder).
    fn mu(i: usize) -> f64 {
        if i == 0 {
            return 0.0;
        }
        let ratio = (MU_MAX / MU_MIN).powf(1.0 / (PRICES - 1) as f64);
        MU_MIN * ratio.powi(i as i32 - 1)
    }

    /// The schedule of level `i` (clamped to the top).
    pub fn at(&self, i: usize) -> &Table {
        let i = i.min(PRICES);
        self.tables[i].get_or_init(|| {
            if i == 0 {
                Table::ladder(&self.grid, &self.dist, self.window_cells)
            } else {
                Table::solve(&self.grid, &self.dist, Self::mu(i), self.window_cells)
            }
        })
    }

    /// The table a payment with mixing draw `phi ∈ [0, 1)` follows at price level `level`
    /// (fractional: `level = 3.25` sends a quarter of the payments to table 4).
    pub fn table(&self, level: f64, phi: f64) -> &Table {
        let lo = level.floor().max(0.0) as usize;
        let frac = level - lo as f64;
        self.at(if phi < frac { lo + 1 } else { lo })
    }

    /// Expected delay (cells) at a fractional level, mixing its two tables.
    pub fn delay(&self, level: f64) -> f64 {
        let lo = level.floor().max(0.0) as usize;
        let frac = level - lo as f64;
        self.at(lo).delay * (1.0 - frac) + self.at(lo + 1).delay * frac
    }

    /// Each level's schedule, solved for this plan's distribution, as (requests per
    /// payment, mean delay in cells) when the flips follow `truth` instead. Against
    /// `truth`'s own plans (see [`delay_at`]) it tells how much a learnt distribution's
    /// schedules lose by being learnt, whatever the budget's pressure and the limiter do.
    pub fn frontier_under(&self, truth: &FlipDist) -> Vec<(f64, f64)> {
        (0..=PRICES)
            .map(|i| {
                let t = self.at(i);
                let e = Table::from_next(t.next.clone(), t.mu, truth, self.window_cells);
                (e.checks, e.delay)
            })
            .collect()
    }

    /// The highest level.
    pub fn top(&self) -> usize {
        PRICES
    }
}

/// What the best policy that knows the mix achieves for a budget of `checks` requests per
/// payment: the yardstick of [`crate::sim`] and the benchmark.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    /// Mean flip-to-detection delay, in cells.
    pub delay: f64,
    /// Requests per payment it spends (at most the budget).
    pub checks: f64,
}

/// Requests a key needs per budget window, at the least, for `rate_per_s` payments per
/// second: every payment costs one request whatever the policy (the check that sees its
/// flip, or its deadline check).
pub fn least_requests_per_window(rate_per_s: f64, window_ms: i64) -> f64 {
    rate_per_s.max(0.0) * window_ms as f64 / 1000.0
}

/// Whether one key can keep up at all: the least it needs per window (a request per payment
/// arriving, [`least_requests_per_window`]) is below its budget. Past it, the backlog and
/// every delay grow for as long as the rate lasts, and no schedule helps: only more keys do.
pub fn keeps_up(least_per_window: f64, budget: u32) -> bool {
    least_per_window < f64::from(budget)
}

/// A dearer price whose schedules' expected flip delay is within this fraction of the
/// fitted price's is taken instead: the requests it saves would see (next to) no flip, and
/// would only queue at the limiter ahead of checks that do (mix E: every flip before the
/// first check allowed, the rest never). Small, because a wider margin also skips prices
/// whose extra checks do buy delay on the published mixes.
pub const NEGLIGIBLE_GAIN: f64 = 0.001;

/// The dearest whole price level above `level` (up to `top`) whose expected flip delay,
/// `flip_delay(l)` (rising with the level), stays within [`NEGLIGIBLE_GAIN`] of `level`'s;
/// `None` when the next one up already costs more, or nothing flips.
pub fn dearest_alike(level: f64, top: usize, flip_delay: impl Fn(f64) -> f64) -> Option<usize> {
    let at_fit = flip_delay(level);
    if at_fit <= 0.0 {
        return None;
    }
    ((level.floor() as usize + 1)..=top)
        .take_while(|&l| flip_delay(l as f64) <= at_fit * (1.0 + NEGLIGIBLE_GAIN))
        .last()
}

/// The bound when each payment may cost `budget_checks` requests on average: the two
/// neighbouring prices whose schedules spend just more and just less, mixed to spend the
/// budget exactly; below the budget of the densest schedules, those. `streams` are
/// `(share of the payments, flip distribution)`, one per kind on the key: one price for
/// every stream, as a request costs the same whichever kind it checks; the delay is the
/// mean over all their flips.
pub fn bound(grid: &Grid, streams: &[(f64, &FlipDist)], budget_checks: f64) -> Bound {
    let total: f64 = streams.iter().map(|(w, _)| w.max(0.0)).sum();
    let at = |mu: f64| -> Bound {
        let (mut checks, mut delay, mut flips) = (0.0, 0.0, 0.0);
        for &(w, dist) in streams {
            let w = w.max(0.0) / total.max(f64::MIN_POSITIVE);
            let t = Table::solve(grid, dist, mu, 0);
            checks += w * t.checks;
            delay += w * dist.flips() * t.delay;
            flips += w * dist.flips();
        }
        Bound {
            delay: if flips > 0.0 { delay / flips } else { 0.0 },
            checks,
        }
    };
    let dense = at(0.0);
    if dense.checks <= budget_checks {
        return dense;
    }
    // Expected checks fall as the price rises: bisect on log μ.
    let (mut lo, mut hi) = (1e-4f64, 1e7f64);
    let (mut t_lo, mut t_hi) = (at(lo), at(hi));
    if t_hi.checks > budget_checks {
        return t_hi;
    }
    for _ in 0..60 {
        let mid = (lo * hi).sqrt();
        let t = at(mid);
        if t.checks > budget_checks {
            lo = mid;
            t_lo = t;
        } else {
            hi = mid;
            t_hi = t;
        }
        if hi / lo < 1.0 + 1e-9 {
            break;
        }
    }
    let span = t_lo.checks - t_hi.checks;
    let w = if span > 1e-12 {
        (budget_checks - t_hi.checks) / span
    } else {
        0.0
    };
    Bound {
        delay: w * t_lo.delay + (1.0 - w) * t_hi.delay,
        checks: w * t_lo.checks + (1.0 - w) * t_hi.checks,
    }
}

/// The least mean delay along `frontier` (see [`Plans::frontier_under`]) at `checks`
/// requests per payment, mixing two neighbouring levels as the core does; `None` when no
/// two neighbours span it.
pub fn delay_at(frontier: &[(f64, f64)], checks: f64) -> Option<f64> {
    frontier
        .windows(2)
        .filter_map(|w| {
            let ((c0, d0), (c1, d1)) = (w[0], w[1]);
            let (lo, hi) = (c0.min(c1), c0.max(c1));
            if checks < lo || checks > hi {
                return None;
            }
            let x = if hi - lo > 1e-12 {
                (checks - c0) / (c1 - c0)
            } else {
                0.0
            };
            Some(d0 + x * (d1 - d0))
        })
        .min_by(f64::total_cmp)
}

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

/// One payment's evidence about its flip age, in cells: the flip happened in `(lo, hi]`;
/// `hi = None` when it was not seen to flip (still pending at `lo`, timed out, cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    pub lo: usize,
    pub hi: Option<usize>,
}

impl Evidence {
    /// A finished payment's evidence from its times (ms): `pending_seen`, the last check
    /// that saw it pending; `final_seen`, the check that saw it final (`None`: timed out
    /// or cancelled, no flip seen).
    pub fn of(
        grid: &Grid,
        started: i64,
        pending_seen: Option<i64>,
        final_seen: Option<i64>,
    ) -> Self {
        let lo = pending_seen.map_or(0, |t| grid.cell(t - started));
        let hi = final_seen.map(|t| grid.cell_ceil(t - started).max(lo + 1));
        Evidence { lo, hi }
    }
}

/// Learns one kind's flip distribution from the evidence of recent payments.
///
/// Two memories: a recent one (a few lifetimes, so a change of traffic is followed within
/// half an hour) and a long one (many more payments, so a slow stream's estimate is not
/// the noise of a few hundred). The long fit is used while the recent evidence is about
/// as likely under it as under the recent fit itself; once it is clearly less likely
/// (a likelihood-ratio test, [`CHANGE_TEST`]), the traffic changed: the older evidence
/// is dropped and the recent fit is used.
#[derive(Debug, Clone)]
pub struct Learner {
    n: usize,
    prior: FlipDist,
    /// Weight of the prior, in payments.
    prior_weight: f64,
    /// Evidence of finished payments, with their start (ms, scheduler clock).
    finished: VecDeque<(i64, Evidence)>,
    /// Keep evidence of payments started within this long.
    horizon_ms: i64,
    /// The recent memory: payments started within this long.
    recent_ms: i64,
    /// The fits of the recent and of the long memory (each the next one's start).
    recent: FlipDist,
    long: FlipDist,
    current: FlipDist,
    /// The last fit's likelihood-ratio statistic (recent fit against long fit).
    pub change_stat: f64,
    /// When a change of traffic was last detected: older evidence reaches the estimate
    /// only through the recent memory, which slides past it.
    floor: i64,
}

/// Averages each cell with its neighbours within about 5% of its age (at least one
/// cell), keeping the total.
fn smooth(p: &mut [f64]) {
    let n = p.len();
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0);
    for v in p.iter() {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + v);
    }
    let total = prefix[n];
    let mut out: Vec<f64> = (0..n)
        .map(|i| {
            let r = (i / 20).max(1);
            let (lo, hi) = (i.saturating_sub(r), (i + r + 1).min(n));
            (prefix[hi] - prefix[lo]) / (hi - lo) as f64
        })
        .collect();
    let after: f64 = out.iter().sum();
    if after > 0.0 {
        out.iter_mut().for_each(|v| *v *= total / after);
    }
    p.copy_from_slice(&out);
}

/// Weight of the ladder's prior, in payments. It only has to carry the estimate until
/// evidence comes: its flips sit where the ladder is dense, so a heavy prior keeps the
/// schedules checking early ages too often, most visibly on a slow stream, where the
/// evidence takes longest to outweigh it.
const PRIOR_WEIGHT: f64 = 2.0;

/// EM passes per fit: the estimate moves little between fits, and each starts from the
/// previous one.
const EM_PASSES: usize = 40;
/// Most finished payments remembered per kind.
const MAX_EVIDENCE: usize = 20_000;
/// The likelihood-ratio statistic (twice the log-likelihood gain of the recent fit over
/// the long one, on the recent evidence) above which the traffic is taken to have
/// changed. Without a change it stays near the recent fit's effective number of free
/// cells (it fits its own noise); a real change of mix grows it by the hundreds.
pub const CHANGE_TEST: f64 = 60.0;

/// Interval-censored evidence as `(lo, hi]` cell indices of the pmf (`hi = n + 1`: after
/// `lo`, or never); evidence that rules nothing out teaches nothing and is left out.
fn intervals<'a>(n: usize, evidence: impl Iterator<Item = &'a Evidence>) -> Vec<(usize, usize)> {
    let mut obs: Vec<(usize, usize)> = evidence
        .filter_map(|e| {
            let lo = e.lo.min(n);
            // Seen unchanged at the grid's end: whatever came after lies beyond it.
            let hi = if lo >= n {
                n + 1
            } else {
                e.hi.map_or(n + 1, |h| h.clamp(lo + 1, n))
            };
            (!(lo == 0 && hi == n + 1)).then_some((lo, hi))
        })
        .collect();
    obs.sort_unstable();
    obs
}

/// Log-likelihood of interval-censored evidence under `dist`.
fn log_likelihood(dist: &FlipDist, obs: &[(usize, usize)]) -> f64 {
    obs.iter()
        .map(|&(lo, hi)| (dist.cdf[hi] - dist.cdf[lo]).max(1e-12).ln())
        .sum()
}

impl Learner {
    /// A learner starting from `prior`, remembering payments started within `horizon_ms`.
    pub fn new(prior: FlipDist, horizon_ms: i64) -> Self {
        Self {
            n: prior.pmf.len() - 2,
            current: prior.clone(),
            recent: prior.clone(),
            long: prior.clone(),
            prior,
            prior_weight: PRIOR_WEIGHT,
            finished: VecDeque::new(),
            horizon_ms,
            recent_ms: horizon_ms,
            change_stat: 0.0,
            floor: i64::MIN,
        }
    }

    /// A finished payment's evidence (`started`: its start on the scheduler's clock).
    pub fn observe(&mut self, started: i64, e: Evidence) {
        self.finished.push_back((started, e));
        while self.finished.len() > MAX_EVIDENCE {
            self.finished.pop_front();
        }
    }

    /// Remember evidence of payments started within `ms` from now on (the long memory).
    pub fn set_horizon(&mut self, ms: i64) {
        self.horizon_ms = ms.max(1);
    }

    /// The recent memory: payments started within `ms` (at most the long one).
    pub fn set_recent(&mut self, ms: i64) {
        self.recent_ms = ms.max(1);
    }

    /// Finished payments remembered.
    pub fn len(&self) -> usize {
        self.finished.len()
    }

    /// One EM fit (maximum a posteriori with the prior) from `start`.
    fn em(&self, start: &FlipDist, obs: &[(usize, usize)]) -> FlipDist {
        let n = self.n;
        let mut p = start.pmf.clone();
        let count = obs.len() as f64;
        let mut weights = vec![0.0f64; n + 3];
        let mut prefix = vec![0.0f64; n + 2];
        for _ in 0..EM_PASSES {
            let mut acc = 0.0;
            for (i, v) in p.iter().enumerate() {
                acc += v;
                prefix[i] = acc;
            }
            weights.iter_mut().for_each(|w| *w = 0.0);
            for &(lo, hi) in obs {
                let s = prefix[hi] - prefix[lo];
                if s > 1e-300 {
                    weights[lo + 1] += 1.0 / s;
                    weights[hi + 1] -= 1.0 / s;
                }
            }
            let mut w = 0.0;
            for j in 0..p.len() {
                w += weights[j];
                p[j] = p[j] * w + self.prior_weight * self.prior.pmf[j];
            }
            let total = count + self.prior_weight;
            p.iter_mut().for_each(|v| *v /= total);
            // Smoothing step (EMS): flip ages spread over neighbouring cells, in
            // proportion to the age, so the estimate does not collapse onto the check
            // ages the schedule happened to use.
            smooth(&mut p[1..=n]);
        }
        FlipDist::new(p)
    }

    /// Re-estimates the distribution from the finished payments (and the censored
    /// evidence of the pending ones): see [`Learner`] for the two memories.
    pub fn fit(&mut self, now: i64, pending: impl Iterator<Item = Evidence>) -> &FlipDist {
        // One cohort: the payments started since `since`, finished or not. Evidence
        // arrives in order of finishing, not of starting (a timeout finishes a whole
        // lifetime after its start), so the cut is by start, over the whole queue.
        let recent_since = now - self.recent_ms.min(self.horizon_ms);
        let since = (now - self.horizon_ms).max(self.floor).min(recent_since);
        self.finished.retain(|(s, _)| *s >= since);
        let n = self.n;
        let pending: Vec<Evidence> = pending.collect();
        let recent_obs = intervals(
            n,
            self.finished
                .iter()
                .filter(|(s, _)| *s >= recent_since)
                .map(|(_, e)| e)
                .chain(pending.iter()),
        );
        self.recent = self.em(&self.recent, &recent_obs);
        let older = self.finished.iter().any(|(s, _)| *s < recent_since);
        if !older {
            self.long = self.recent.clone();
            self.change_stat = 0.0;
            self.current = self.recent.clone();
            return &self.current;
        }
        let long_obs = intervals(
            n,
            self.finished.iter().map(|(_, e)| e).chain(pending.iter()),
        );
        self.long = self.em(&self.long, &long_obs);
        self.change_stat = 2.0
            * (log_likelihood(&self.recent, &recent_obs) - log_likelihood(&self.long, &recent_obs));
        if self.change_stat > CHANGE_TEST {
            // The traffic changed: what came before describes other traffic.
            self.floor = now;
            self.finished.retain(|(s, _)| *s >= recent_since);
            self.long = self.recent.clone();
            self.current = self.recent.clone();
        } else {
            self.current = self.long.clone();
        }
        &self.current
    }

    /// The latest estimate.
    pub fn current(&self) -> &FlipDist {
        &self.current
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_dearer_price_is_taken_only_when_it_sees_the_flips_as_soon() {
        // Flat up to level 6 (the checks it drops see nothing), rising after.
        let flat = |l: f64| if l <= 6.0 { 10.0 } else { 10.0 + l };
        assert_eq!(super::dearest_alike(2.5, 72, flat), Some(6));
        // Rising from the start: the fitted level stays.
        assert_eq!(super::dearest_alike(2.5, 72, |l| 10.0 + l), None);
        // Within 0.1% counts as alike, more does not.
        let slow = |l: f64| 10.0 * (1.0 + 0.0004 * l);
        assert_eq!(super::dearest_alike(2.0, 72, slow), Some(4));
        // Nothing flips: no delay to compare.
        assert_eq!(super::dearest_alike(2.0, 72, |_| 0.0), None);
        // Never past the top.
        assert_eq!(super::dearest_alike(70.5, 72, |_| 1.0), Some(72));
    }

    #[test]
    fn a_key_keeps_up_only_below_one_request_per_payment() {
        let ten_min = 600_000;
        assert_eq!(super::least_requests_per_window(0.5, ten_min), 300.0);
        let keeps_up =
            |rate: f64| super::keeps_up(super::least_requests_per_window(rate, ten_min), 1000);
        assert!(keeps_up(1.0));
        assert!(keeps_up(1.6));
        assert!(!keeps_up(1000.0 / 600.0));
        assert!(!keeps_up(2.0));
    }

    use super::*;

    fn lognormal_cdf(median: f64, sigma: f64) -> impl Fn(f64) -> f64 {
        move |a: f64| {
            if a <= 0.0 {
                0.0
            } else {
                0.5 * erfc(-(a / median).ln() / (sigma * std::f64::consts::SQRT_2))
            }
        }
    }

    fn erfc(x: f64) -> f64 {
        // Numerical Recipes' erfc, accurate to 1.2e-7: plenty for a test distribution.
        let z = x.abs();
        let t = 1.0 / (1.0 + 0.5 * z);
        let r = t
            * (-z * z - 1.26551223
                + t * (1.00002368
                    + t * (0.37409196
                        + t * (0.09678418
                            + t * (-0.18628806
                                + t * (0.27886807
                                    + t * (-1.13520398
                                        + t * (1.48851587
                                            + t * (-0.82215223 + t * 0.17087277)))))))))
                .exp();
        if x >= 0.0 {
            r
        } else {
            2.0 - r
        }
    }

    fn mix_a(n: usize) -> FlipDist {
        let ln = lognormal_cdf(45.0, 0.8);
        FlipDist::from_cdf(n, |a| {
            0.6 * ln(a.clamp(0.0, 550.0)) * f64::from(u8::from(a >= 5.0))
                + 0.1 * ((a - 60.0) / 120.0).clamp(0.0, 1.0)
        })
    }

    #[test]
    fn cheap_requests_give_a_schedule_as_dense_as_the_ladder() {
        let grid = Grid::new(&Ladder::documented());
        let plans = Plans::new(&grid, mix_a(CELLS), CELLS);
        let ladder = plans.at(0);
        assert_eq!(ladder.next(0), 20);
        assert_eq!(ladder.next(20), 23);
        let cheap = plans.at(1);
        assert_eq!(cheap.next(0), 20, "first check as early as allowed");
        let mut t = 0;
        let mut count = 0;
        while t < CELLS {
            let u = cheap.next(t);
            if t > 0 && u < CELLS {
                assert!(
                    u - t >= grid.step[t],
                    "gap {t} → {u} shorter than the ladder's"
                );
            }
            t = u;
            count += 1;
        }
        assert!((30..=40).contains(&count), "{count} checks");
    }

    #[test]
    fn dear_requests_leave_only_the_deadline_check() {
        let grid = Grid::new(&Ladder::documented());
        let plans = Plans::new(&grid, mix_a(CELLS), CELLS);
        let top = plans.at(plans.top());
        assert_eq!(top.next(0), CELLS);
        assert!((top.checks - 1.0).abs() < 1e-9);
    }

    #[test]
    fn tables_spend_less_and_wait_longer_as_the_price_rises() {
        let grid = Grid::new(&Ladder::documented());
        let plans = Plans::new(&grid, mix_a(CELLS), CELLS);
        for i in 1..plans.top() {
            let (a, b) = (plans.at(i), plans.at(i + 1));
            assert!(b.checks <= a.checks + 1e-9);
            assert!(b.delay >= a.delay - 1e-9);
        }
    }

    #[test]
    fn plans_learnt_from_another_distribution_lose_against_the_true_ones() {
        let grid = Grid::new(&Ladder::documented());
        let truth = mix_a(CELLS);
        let own = Plans::new(&grid, truth.clone(), CELLS);
        let frontier = own.frontier_under(&truth);
        // Under their own distribution, the plans' figures are the tables' own.
        for (i, &(checks, delay)) in frontier.iter().enumerate().step_by(9) {
            let t = own.at(i);
            assert!((checks - t.checks).abs() < 1e-9 && (delay - t.delay).abs() < 1e-9);
        }
        // Plans solved for the ladder's prior see mix A's flips later at every budget
        // between a few checks and the ladder's own.
        let prior = Plans::new(&grid, grid.ladder_prior(), CELLS);
        let other = prior.frontier_under(&truth);
        for checks in [4.0, 8.0, 16.0] {
            let best = delay_at(&frontier, checks).expect("spanned");
            let got = delay_at(&other, checks).expect("spanned");
            assert!(
                got > best * 1.01,
                "at {checks} checks: {got:.2} vs {best:.2}"
            );
        }
        assert_eq!(delay_at(&frontier, 1e6), None);
    }

    #[test]
    fn the_bound_matches_the_published_figures() {
        // Issue 8: mix A 4.3 / 8.1 / 23.6 / 78.8 s and mix B 16.2 / 22.7 / 60.2 / 143.5 s at
        // 0.1 / 0.2 / 0.5 / 1.0 payments per second.
        let grid = Grid::new(&Ladder::documented());
        let ln = lognormal_cdf(180.0, 0.6);
        let mix_b = FlipDist::from_cdf(CELLS, |a| {
            0.4 * ln(a) + 0.1 * ((a - 30.0) / 570.0).clamp(0.0, 1.0)
        });
        for (name, dist, published) in [
            ("A", mix_a(CELLS), [4.3, 8.1, 23.6, 78.8]),
            ("B", mix_b, [16.2, 22.7, 60.2, 143.5]),
        ] {
            for (rate, want) in [0.1, 0.2, 0.5, 1.0].into_iter().zip(published) {
                let b = bound(&grid, &[(1.0, &dist)], 1000.0 / 600.0 / rate);
                assert!(
                    (b.delay - want).abs() / want < 0.02,
                    "mix {name} at {rate}/s: {:.1} s, published {want} s",
                    b.delay
                );
            }
        }
    }

    #[test]
    fn kinds_sharing_a_budget_are_bounded_at_one_price() {
        let grid = Grid::new(&Ladder::documented());
        // Flips spread over the whole life, and flips done by 40 s with the rest never
        // flipping.
        let slow = FlipDist::from_cdf(CELLS, |a| 0.9 * ((a - 20.0) / 580.0).clamp(0.0, 1.0));
        let fast = FlipDist::from_cdf(CELLS, |a| 0.5 * ((a - 20.0) / 20.0).clamp(0.0, 1.0));
        let per_payment = 1000.0 / 600.0 / 0.5;
        // One stream split in two is the same stream.
        let one = bound(&grid, &[(1.0, &fast)], per_payment);
        let halves = bound(&grid, &[(1.0, &fast), (1.0, &fast)], per_payment);
        assert!((one.delay - halves.delay).abs() < 1e-6 * one.delay);
        assert!((halves.checks - per_payment).abs() < 1e-6);
        // Two mixes: one price beats giving each kind the same requests per payment, which
        // the quick kind cannot use.
        let both = bound(&grid, &[(1.0, &fast), (1.0, &slow)], per_payment);
        let (f, s) = (
            bound(&grid, &[(1.0, &fast)], per_payment),
            bound(&grid, &[(1.0, &slow)], per_payment),
        );
        let even =
            (fast.flips() * f.delay + slow.flips() * s.delay) / (fast.flips() + slow.flips());
        assert!((both.checks - per_payment).abs() < 1e-6);
        assert!(both.delay < even * 0.9, "{} vs {even}", both.delay);
    }

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

    /// Evidence of one payment drawn from `dist`, checked every 10 cells from cell 20.
    fn checked_every_10(dist: &FlipDist, rng: &mut fastrand::Rng) -> Evidence {
        let u = rng.f64();
        let flip = (1..=CELLS + 1)
            .find(|&a| dist.cdf[a.min(CELLS + 1)] >= u)
            .unwrap_or(CELLS + 1);
        let (mut last, mut t) = (0, 20 + rng.usize(0..10));
        loop {
            let at = t.min(CELLS);
            if flip <= at {
                return Evidence {
                    lo: last,
                    hi: Some(at),
                };
            }
            if at >= CELLS {
                return Evidence { lo: at, hi: None };
            }
            last = at;
            t += 10;
        }
    }

    #[test]
    fn learner_keeps_its_long_memory_for_steady_traffic_and_drops_it_on_a_change() {
        let grid = Grid::new(&Ladder::documented());
        let a = mix_a(CELLS);
        let ln = lognormal_cdf(180.0, 0.6);
        let b = FlipDist::from_cdf(CELLS, |x| {
            0.4 * ln(x) + 0.1 * ((x - 30.0) / 570.0).clamp(0.0, 1.0)
        });
        // 720 payments over two hours (0.1/s), the recent memory the last half hour.
        let run = |later: &FlipDist| {
            let mut rng = fastrand::Rng::with_seed(5);
            let mut learner = Learner::new(grid.ladder_prior(), 7_200_000);
            learner.set_recent(1_800_000);
            for i in 0..720i64 {
                let started = i * 10_000;
                let dist = if started < 5_400_000 { &a } else { later };
                learner.observe(started, checked_every_10(dist, &mut rng));
                if i % 30 == 29 {
                    learner.fit(started, std::iter::empty());
                }
            }
            learner
        };
        let steady = run(&a);
        assert!(
            steady.change_stat < CHANGE_TEST,
            "steady traffic read as a change: {}",
            steady.change_stat
        );
        assert_eq!(steady.len(), 720, "the long memory is kept");
        let changed = run(&b);
        assert!(
            changed.len() < 360,
            "a change drops the older evidence: {} kept",
            changed.len()
        );
        let got = changed.current();
        for q in [120, 300] {
            assert!(
                (got.cdf[q] - b.cdf[q]).abs() < 0.08,
                "F({q}) learnt {:.3}, B's {:.3}",
                got.cdf[q],
                b.cdf[q]
            );
        }
    }

    #[test]
    fn evidence_past_the_grid_s_end_is_taken_as_after_it() {
        // A check at or past the last cell that saw a change: no cell of the grid holds it.
        assert_eq!(
            intervals(
                10,
                [
                    Evidence {
                        lo: 10,
                        hi: Some(11)
                    },
                    Evidence {
                        lo: 12,
                        hi: Some(13)
                    }
                ]
                .iter()
            ),
            vec![(10, 11), (10, 11)]
        );
    }

    #[test]
    fn learner_recovers_a_distribution_from_interval_censored_checks() {
        let grid = Grid::new(&Ladder::documented());
        let truth = mix_a(CELLS);
        let mut learner = Learner::new(grid.ladder_prior(), i64::MAX / 4);
        let mut rng = fastrand::Rng::with_seed(7);
        // Checks every 40 cells from cell 20 (different phases), then the deadline.
        for i in 0..4000 {
            let u = rng.f64();
            let flip = (1..=CELLS + 1)
                .find(|&a| truth.cdf[a.min(CELLS + 1)] >= u)
                .unwrap_or(CELLS + 1);
            let phase = i % 40;
            let mut last = 0;
            let mut t = 20 + phase;
            let e = loop {
                let at = t.min(CELLS);
                if flip <= at {
                    break Evidence {
                        lo: last,
                        hi: Some(at),
                    };
                }
                if at >= CELLS {
                    break Evidence { lo: at, hi: None };
                }
                last = at;
                t += 40;
            };
            learner.observe(0, e);
        }
        for _ in 0..5 {
            learner.fit(0, std::iter::empty());
        }
        let got = learner.current();
        for q in [60, 120, 300] {
            let (a, b) = (got.cdf[q], truth.cdf[q]);
            assert!((a - b).abs() < 0.04, "F({q}) learnt {a:.3}, true {b:.3}");
        }
        assert!((got.flips() - truth.flips()).abs() < 0.04);
    }
}
