//! Each key's late price and the watched payments' plans at it: which of the schedule's
//! ages a payment is checked at, set once a window from what the spare budget makes.

use super::*;

/// Windows of watch starts the arrival rate of watched payments is read over.
pub(super) const START_WINDOWS: i64 = 6;

/// How far the price of late checks moves in a window.
const PRICE_STEP: f64 = 1.0;

/// Weight of the newest window in the smoothed supply of spare requests.
const SMOOTHING: f64 = 0.2;

/// A payment's fixed draw in `[0, 1)` between two price levels: from its key, so it is
/// the same after a restart and owes nothing to arrival order.
pub(super) fn draw(pk: PaymentKey) -> f64 {
    let h = (pk.0 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A pool's price of late checks and what sets it.
#[derive(Default)]
pub(super) struct Pricing {
    pub(super) level: f64,
    /// Watch starts: when, and which model (the kind shared, not its name copied: a busy
    /// daemon holds six windows of them).
    pub(super) starts: VecDeque<(SchedMs, Arc<Kind>, State)>,
    /// When the spare budget's late requests went, over the last window.
    pub(super) spent: VecDeque<SchedMs>,
    /// Those of them that caught up with a payment last seen almost a day ago (see
    /// [`super::Queues::stale`]): not the plans' to count on.
    pub(super) caught: VecDeque<SchedMs>,
    /// Late requests the spare budget makes per window, smoothed.
    pub(super) capacity: Option<f64>,
}

impl Watch {
    /// The model of a watched kind's payments, with its plans.
    pub(super) fn model_of(&mut self, kind: &Kind, ended: State) -> &mut Model {
        let grid = self.grid.clone();
        let m = self.model(&kind.name, ended);
        if m.plans.is_none() || m.schedule != kind.reconcile_after {
            m.schedule = kind.reconcile_after.clone();
            m.plans = Some(LatePlans::new(&grid, &m.dist, &m.schedule));
        }
        m
    }

    /// The schedule index of `e`'s next check after its last (`None`: none planned at the
    /// pool's price, or the schedule is over).
    pub(super) fn planned(&self, e: &Watched, now: SchedMs) -> Option<usize> {
        let k = e.kind.reconcile_after.len();
        if e.pos >= k {
            return None;
        }
        // A listing sees every due payment of its kind at once: the whole schedule.
        if self.policy == LatePolicy::InTurn || e.kind.is_list() {
            return Some(e.pos);
        }
        let Some(plans) = self
            .models
            .get(&(e.kind.name.clone(), e.ended))
            .and_then(|m| m.plans.as_ref())
        else {
            return Some(e.pos);
        };
        let level = self.pricing.get(e.pool).map_or(0.0, |p| p.level);
        let lo = level.floor() as usize;
        let l = if e.draw < level - lo as f64 {
            lo + 1
        } else {
            lo
        };
        // An age the plan wanted that has passed unchecked (the price fell since) is not
        // made up: the plan goes on from the first of its ages still to come.
        let age = now - e.t0;
        let mut u = plans.next(l, e.pos);
        while u >= 1 && u <= k && e.kind.reconcile_after[u - 1] < age {
            u = plans.next(l, u);
        }
        (u >= 1 && u <= k).then(|| u - 1)
    }

    /// Sets `e`'s next check by [`Watch::planned`], or parks it.
    pub(super) fn plan(&self, e: &mut Watched, now: SchedMs) {
        match self.planned(e, now) {
            Some(i) => {
                e.next = i;
                e.due = e.t0.saturating_add(e.kind.reconcile_after[i]);
                e.parked = false;
            }
            None => {
                e.next = e.kind.reconcile_after.len();
                e.due =
                    e.t0.saturating_add(e.kind.reconcile_after.last().copied().unwrap_or(0));
                e.parked = true;
            }
        }
    }

    /// Whether pool `p`'s spare budget affords the whole schedule: its price, set from
    /// what the spare budget makes, is the lowest (the schedule's requests fit in it:
    /// every age planned), and that spare budget is there, not merely nothing watched yet
    /// to price. Then a due scheduled check goes in its turn among the live ones. Only the
    /// learnt choice knows: the yardstick in turn has no price.
    pub fn affords_schedule(&self, p: usize) -> bool {
        self.policy == LatePolicy::Learnt
            && self
                .pricing
                .get(p)
                .is_some_and(|pr| pr.level == 0.0 && pr.capacity.is_some_and(|c| c > 0.0))
    }

    /// When pool `p`'s earliest due scheduled check came due, where its spare budget
    /// affords the whole schedule (see [`Watch::affords_schedule`]).
    pub fn due_on_schedule(&mut self, p: usize, now: SchedMs) -> Option<SchedMs> {
        if !self.affords_schedule(p) {
            return None;
        }
        self.promote(p, now);
        self.queues.get(p)?.in_turn.first().map(|&(due, _)| due)
    }

    /// A late request of pool `p` went out of the spare budget, `caught`: to catch a
    /// move within a day ([`Watch::catch_up`]).
    pub fn spent(&mut self, p: usize, now: SchedMs, caught: bool) {
        if let Some(pricing) = self.pricing.get_mut(p) {
            if caught {
                pricing.caught.push_back(now);
            } else {
                pricing.spent.push_back(now);
            }
        }
    }

    /// Sets pool `p`'s price of late checks, once a window: where the plans' requests
    /// per window meet the spare budget's. That is read, on average over windows, as what
    /// the late requests made while planned checks were left waiting (all of the spare
    /// budget went), and otherwise as `supply`, what the live payments' pace leaves. The
    /// price moves a step at a time: a jump would plan a wave of checks for the same ages.
    /// Replans the pool's payments whose checks are not due yet when it changes.
    pub fn price(&mut self, p: usize, supply: f64, now: SchedMs) {
        if self.policy != LatePolicy::Learnt {
            return;
        }
        let span = self.window_ms.saturating_mul(START_WINDOWS);
        let window = self.window_ms;
        let waiting = self.queues.get(p).map_or(0, |q| q.in_turn.len());
        let Some(pricing) = self.pricing.get_mut(p) else {
            return;
        };
        while pricing
            .starts
            .front()
            .is_some_and(|(t, _, _)| *t + span <= now)
        {
            pricing.starts.pop_front();
        }
        while pricing.spent.front().is_some_and(|t| *t + window <= now) {
            pricing.spent.pop_front();
        }
        while pricing.caught.front().is_some_and(|t| *t + window <= now) {
            pricing.caught.pop_front();
        }
        let made = pricing.spent.len() as f64;
        let supply = (supply - pricing.caught.len() as f64).max(0.0);
        let first = pricing.capacity.is_none();
        let seen = if waiting > 0 { made } else { supply.max(made) };
        let capacity = pricing
            .capacity
            .map_or(supply, |c| c + SMOOTHING * (seen - c))
            .max(0.0);
        pricing.capacity = Some(capacity);
        let old = pricing.level;
        let mut counts: HashMap<(&KindName, State), f64> = HashMap::new();
        for (_, kind, ended) in &pricing.starts {
            *counts.entry((&kind.name, *ended)).or_default() += 1.0 / START_WINDOWS as f64;
        }
        let rates: Vec<(&LatePlans, f64)> = counts
            .into_iter()
            .filter_map(|((name, ended), rate)| {
                let plans = self.models.get(&(name.clone(), ended))?.plans.as_ref()?;
                Some((plans, rate))
            })
            .collect();
        let demand = |level: usize| -> f64 {
            rates
                .iter()
                .map(|(plans, rate)| rate * plans.checks(level))
                .sum()
        };
        let fitted = crate::scheduler::core::fit(&demand, LATE_PRICES, capacity).0;
        // The first price plans no wave: nothing was planned at another.
        let level = if first {
            fitted
        } else {
            fitted.clamp(old - PRICE_STEP, old + PRICE_STEP)
        };
        if (level - old).abs() > 1e-3 {
            self.pricing[p].level = level;
            self.replan(p, now);
        }
    }

    /// Plans pool `p`'s waiting payments again at its price: those scheduled and those
    /// parked, found through the pool's own queues, so that a key's new price costs its own
    /// watched payments and not every key's.
    fn replan(&mut self, p: usize, now: SchedMs) {
        let Some(q) = self.queues.get(p) else {
            return;
        };
        let mut pks: Vec<PaymentKey> = q
            .future
            .iter()
            .chain(q.ahead.values().flatten().flatten())
            .map(|&(_, pk)| pk)
            .filter(|pk| {
                self.entries.get(pk).is_some_and(|e| {
                    !e.in_flight
                        && !e.recheck
                        && e.failures == 0
                        && !matches!(e.slot, Slot::Due(..))
                })
            })
            .collect();
        pks.sort_unstable();
        pks.dedup();
        for pk in pks {
            self.dequeue(pk);
            if let Some(mut e) = self.entries.remove(&pk) {
                self.plan(&mut e, now);
                self.entries.insert(pk, e);
            }
            self.enqueue(pk, now);
        }
    }
}
