//! The ladder quantised to a grid of ages, and flip-age distributions on that grid.

use crate::ladder::Ladder;
use std::sync::Arc;

/// Grid cells per ladder timeout: at the documented ladder, one cell is one second.
pub const CELLS: usize = 600;

/// The ladder, quantised to the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// Milliseconds per cell.
    unit: i64,
    /// The deadline, in cells.
    pub(super) n: usize,
    /// Earliest first check, in cells.
    pub(super) first: usize,
    /// Shortest gap allowed after a check made in cell `t`, in cells (at least 1).
    /// Shared: every kind's plans hold the grid, and a thousand accounts' copies add up.
    pub(super) step: Arc<[usize]>,
    /// The ladder itself as a schedule (next check cell after a check in cell `t`).
    pub(super) ladder_next: Arc<[usize]>,
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
/// deadline. Its cells are shared, never changed once made: a clone (a learner's current
/// fit, the plans solved for it, every account's prior from the kind's pooled fit) costs
/// a pointer, not three arrays of the grid's length.
#[derive(Debug, Clone, PartialEq)]
pub struct FlipDist {
    pub(super) pmf: Arc<[f64]>,
    /// `cdf[a]`: share flipped by the end of cell `a`.
    pub(super) cdf: Arc<[f64]>,
    /// `moment[a]`: `Σ_{i ≤ a} i·pmf[i]`.
    moment: Arc<[f64]>,
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
        Self {
            pmf: pmf.into(),
            cdf: cdf.into(),
            moment: moment.into(),
        }
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
    pub(super) fn delay(&self, t: usize, u: usize) -> f64 {
        let n = self.pmf.len() - 2;
        let u_c = u.min(n);
        if u_c <= t {
            return 0.0;
        }
        (u as f64 + 0.5) * (self.cdf[u_c] - self.cdf[t]) - (self.moment[u_c] - self.moment[t])
    }
}
