//! The metrics per account (`ninjapoll_account_*{account}`), over each account's keys.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabel {
    account: String,
}

/// Per account, over its keys (see [`crate::status::accounts`]).
#[derive(Default)]
pub(super) struct AccountMetrics {
    pending: Family<AccountLabel, Gauge>,
    budget_used: Family<AccountLabel, Gauge>,
    budget_limit: Family<AccountLabel, Gauge>,
    keeps_up: Family<AccountLabel, Gauge>,
    expected_delay: Family<AccountLabel, Gauge<f64, AtomicU64>>,
    backlog: Family<AccountLabel, Gauge>,
}

impl AccountMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        let gauges = [
            (
                "account_pending",
                "Pending payments the scheduler holds, per account",
                &self.pending,
            ),
            (
                "account_budget_used",
                "Requests in the current window, per account (over its keys)",
                &self.budget_used,
            ),
            (
                "account_budget_limit",
                "Requests in force per window, per account (over its keys)",
                &self.budget_limit,
            ),
            (
                "account_keeps_up",
                "1 while every key of the account keeps up, else 0",
                &self.keeps_up,
            ),
            (
                "account_backlog_payments",
                "Payments in the account's backlog",
                &self.backlog,
            ),
        ];
        for (name, help, family) in gauges {
            r.register(name, help, family.clone());
        }
        r.register_with_unit(
            "account_expected_delay",
            "The mean flip-to-detection delay to expect for the account's payments now",
            Unit::Seconds,
            self.expected_delay.clone(),
        );
    }

    pub(super) fn set(&self, accounts: &[crate::status::AccountStatus]) {
        for a in accounts {
            let l = AccountLabel {
                account: a.account.to_string(),
            };
            self.pending.get_or_create(&l).set(a.pending as i64);
            self.budget_used
                .get_or_create(&l)
                .set(i64::from(a.budget_used));
            self.budget_limit
                .get_or_create(&l)
                .set(i64::from(a.budget_limit));
            self.keeps_up.get_or_create(&l).set(i64::from(a.keeps_up));
            self.expected_delay
                .get_or_create(&l)
                .set(a.expected_delay_ms as f64 / 1000.0);
            self.backlog.get_or_create(&l).set(a.backlog as i64);
        }
    }
}
