//! What a reload (SIGHUP) swaps under the API while it serves: the configuration, and the
//! scheduler that commands go to. Handlers read the current value at the moment they use
//! it, so a request sees one configuration or the other, never a mix of both.

use crate::scheduler::{Command, Published, SchedulerHandle};
use anyhow::Result;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// A value replaced whole: readers take the current `Arc` and keep it for as long as they
/// need one consistent view.
#[derive(Debug)]
pub struct Shared<T>(Arc<RwLock<Arc<T>>>);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Shared<T> {
    /// Holds `value`.
    pub fn new(value: Arc<T>) -> Self {
        Self(Arc::new(RwLock::new(value)))
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        // Only a whole `Arc` is ever written: a panic elsewhere cannot leave it half set.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the value; readers holding the old one keep it until they drop it.
    pub fn set(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = value;
    }
}

/// Where the API's commands go: the running scheduler, or, while a reload restarts it, a
/// queue handed to the new one before anything else. A command is sent after its change is
/// committed; one sent while the old scheduler drains reaches the new one even if the new
/// one read the database before the commit (a duplicate `Track` is ignored).
#[derive(Clone)]
pub struct SchedulerSlot(Arc<Mutex<Slot>>);

enum Slot {
    Running(SchedulerHandle),
    Restarting {
        held: Vec<Command>,
        /// The old scheduler's last report, for health meanwhile.
        last: Published,
    },
}

impl SchedulerSlot {
    /// The slot, with `handle` running.
    pub fn new(handle: SchedulerHandle) -> Self {
        Self(Arc::new(Mutex::new(Slot::Running(handle))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a command over without waiting (see [`SchedulerHandle::send`]).
    pub fn send(&self, cmd: Command) -> Result<()> {
        match &mut *self.lock() {
            Slot::Running(h) => h.send(cmd),
            Slot::Restarting { held, .. } => {
                held.push(cmd);
                Ok(())
            }
        }
    }

    /// The scheduler's latest published status (the old one's while it restarts).
    pub fn status(&self) -> Published {
        match &*self.lock() {
            Slot::Running(h) => h.status(),
            Slot::Restarting { last, .. } => last.clone(),
        }
    }

    /// From now on commands wait for [`SchedulerSlot::resume`]: the scheduler is about to
    /// be stopped and started again.
    pub fn hold(&self) {
        let mut slot = self.lock();
        if let Slot::Running(h) = &*slot {
            let last = h.status();
            *slot = Slot::Restarting {
                held: Vec::new(),
                last,
            };
        }
    }

    /// Hands the commands held meanwhile to `handle`, in order, and sends to it from now on.
    pub fn resume(&self, handle: SchedulerHandle) {
        let mut slot = self.lock();
        if let Slot::Restarting { held, .. } = &mut *slot {
            for cmd in held.drain(..) {
                // Only fails if the new scheduler already stopped (shutdown): the database
                // holds every change, and the next start reads it.
                let _ = handle.send(cmd);
            }
        }
        *slot = Slot::Running(handle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Config};
    use crate::kinds::KindName;
    use crate::payment::{now_ms, PaymentId};
    use crate::store::{NewPayment, PendingRow, Store};
    use crate::telemetry::Telemetry;
    use std::time::Duration;
    use tokio::sync::Notify;
    use tokio_util::sync::CancellationToken;

    async fn pending(slot: &SchedulerSlot) -> usize {
        slot.status().pools.iter().map(|p| p.pending).sum()
    }

    /// The race a reload must not lose: a payment committed after the new scheduler read
    /// the database, announced while the slot held commands, is held by the new one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_command_held_during_a_restart_reaches_the_new_scheduler() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut raw = config::defaults();
        raw.database.path = Some(dir.path().join("ninjapoll.db"));
        raw.socket.path = Some(dir.path().join("ninjapoll.sock"));
        // Nothing listens there, and nothing is due within the test.
        raw.ninjapay.prod_base_url = Some("http://127.0.0.1:9".into());
        raw.ninjapay.api_base_url = Some("http://127.0.0.1:9".into());
        raw.ninjapay.api_key = Some("key".into());
        // A short window makes the scheduler publish its status every 20 ms.
        raw.ninjapay.budget_window = Some(Duration::from_secs(6));
        let config = Config::from_raw(raw).expect("config");
        let store = Store::open(&config.database_path, None)
            .await
            .expect("store");
        let telemetry = Arc::new(Telemetry::default());
        let spawn = |cancel: CancellationToken| {
            crate::scheduler::spawn(
                &config,
                store.clone(),
                telemetry.clone(),
                Arc::new(Notify::new()),
                cancel,
                crate::systemd::Notifier::default(),
            )
        };
        let (old_cancel, new_cancel) = (CancellationToken::new(), CancellationToken::new());
        let _stop = new_cancel.clone().drop_guard();
        let (old, old_task) = spawn(old_cancel.clone()).await.expect("old scheduler");
        let slot = SchedulerSlot::new(old);

        slot.hold();
        old_cancel.cancel();
        old_task.await.expect("old scheduler stopped");
        let (new, _task) = spawn(new_cancel).await.expect("new scheduler");
        let now = now_ms();
        let rows = store
            .insert_payments(&[NewPayment {
                account: crate::account::AccountName::default_account(),
                kind: KindName::parse("p2p").expect("kind"),
                id: PaymentId::parse("held1").expect("id"),
                started_at: now,
                jitter_ms: 0,
                next_check_at: now + 600_000,
                callback_url: None,
                metadata: None,
            }])
            .await
            .expect("insert");
        let row = &rows[0].0;
        slot.send(Command::Track(PendingRow {
            pk: row.pk,
            account: row.account.clone(),
            kind: row.kind.clone(),
            id: row.id.clone(),
            upstream_status: None,
            started_at: row.started_at,
            jitter_ms: row.jitter_ms,
            next_check_at: row.next_check_at,
            last_checked_at: None,
        }))
        .expect("held");
        assert_eq!(pending(&slot).await, 0, "the old scheduler's last report");
        slot.resume(new);

        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while pending(&slot).await != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the new scheduler never held the payment"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
