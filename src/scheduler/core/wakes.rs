//! When each key next has something to do, so that a poll visits only the keys that do:
//! with many accounts, visiting every key on every answer would cost more than the
//! checks themselves.
//!
//! A key is visited when its wake time has come or when something happened to it since
//! its last visit (a payment came, an answer, a refill, a manual recheck); every key on
//! each tick, which is when prices, budgets and the spare room for late checks change.
//! A wake time computed too early only costs a visit; one too late would delay checks, so
//! whatever can make a key's work come sooner marks it ([`Core::touch`]).

use super::*;

/// The keys' wake times and the keys to visit regardless.
#[derive(Default)]
pub(super) struct Wakes {
    /// `(when, pool index)`: each key at most once, at its wake time.
    at: BTreeSet<(SchedMs, usize)>,
    /// Each key's entry in `at`, by pool index.
    of: Vec<Option<SchedMs>>,
    /// Keys to visit at the next poll, whatever their wake time.
    pub(super) touched: Vec<usize>,
    marked: Vec<bool>,
    /// Keys the total in-flight bound stopped with checks to send: an answer at the bound
    /// visits these, not every key.
    pub(super) held: Vec<usize>,
    held_marked: Vec<bool>,
    /// Every key is to be visited at the next poll.
    pub(super) all: bool,
}

impl Wakes {
    pub(super) fn new(pools: usize) -> Self {
        Self {
            at: BTreeSet::new(),
            of: vec![None; pools],
            touched: Vec::new(),
            marked: vec![false; pools],
            held: Vec::new(),
            held_marked: vec![false; pools],
            // Nothing is known of any key yet.
            all: true,
        }
    }

    pub(super) fn touch(&mut self, p: usize) {
        if let Some(m) = self.marked.get_mut(p) {
            if !*m {
                *m = true;
                self.touched.push(p);
            }
        }
    }

    /// Key `p` waits for the total in-flight bound, not its own.
    pub(super) fn hold(&mut self, p: usize) {
        if let Some(m) = self.held_marked.get_mut(p) {
            if !*m {
                *m = true;
                self.held.push(p);
            }
        }
    }

    /// A slot under the total bound came free: the keys it held are visited.
    pub(super) fn release_held(&mut self) {
        for p in std::mem::take(&mut self.held) {
            self.held_marked[p] = false;
            self.touch(p);
        }
    }

    pub(super) fn touch_all(&mut self) {
        self.all = true;
    }

    /// Whether some key is to be visited at once.
    pub(super) fn any_touched(&self) -> bool {
        self.all || !self.touched.is_empty()
    }

    /// The earliest wake time of any key.
    pub(super) fn first(&self) -> Option<SchedMs> {
        self.at.first().map(|&(t, _)| t)
    }

    /// The keys to visit at `now` (of `n`), starting the turn at `from`, and forgets
    /// their marks and wake times (a visit sets them again).
    pub(super) fn take_due(&mut self, now: SchedMs, n: usize, from: usize) -> Vec<PoolId> {
        let mut visit: Vec<usize> = if std::mem::take(&mut self.all) {
            for p in self.touched.drain(..) {
                self.marked[p] = false;
            }
            (0..n).collect()
        } else {
            while let Some(&(t, p)) = self.at.first() {
                if t > now {
                    break;
                }
                self.at.pop_first();
                self.of[p] = None;
                self.touch(p);
            }
            let mut v = std::mem::take(&mut self.touched);
            for &p in &v {
                self.marked[p] = false;
            }
            v.sort_unstable();
            v
        };
        // In turn from `from`, so that under the total in-flight bound no key is always
        // served last.
        let split = visit.partition_point(|&p| p < from);
        visit.rotate_left(split);
        visit.into_iter().map(PoolId::new).collect()
    }

    /// Sets key `p`'s wake time (`None`: only an event wakes it).
    pub(super) fn set(&mut self, p: usize, wake: Option<SchedMs>) {
        let Some(slot) = self.of.get_mut(p) else {
            return;
        };
        if *slot == wake {
            return;
        }
        if let Some(old) = slot.take() {
            self.at.remove(&(old, p));
        }
        if let Some(w) = wake {
            self.at.insert((w, p));
            *slot = Some(w);
        }
    }
}
