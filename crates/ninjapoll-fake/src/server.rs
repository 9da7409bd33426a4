//! The handle tests hold ([`FakeNinjapay`]) and the HTTP server behind it.

use crate::answer::{decide, Incoming};
use crate::endpoints::Kind;
use crate::faults::Fault;
use crate::scripts::{Script, Unknown};
use crate::state::{Inner, Recorded};
use axum::extract::{Query, Request, State};
use axum::http::Method;
use axum::response::Response;
use axum::Router;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Largest request body the fake reads; a check request is a few dozen bytes.
const BODY_LIMIT: usize = 64 * 1024;

/// How the fake behaves; see [`FakeOptions::default`].
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// The key expected in `Authorization` (p2p, quote, btc).
    pub api_key: String,
    /// The key expected in `x-api-key` (paywall); `None` means the same as `api_key`.
    pub paywall_api_key: Option<String>,
    /// `(requests, window)`: at most `requests` per rolling `window` per API key, as Ninjapay
    /// enforces it. `None` disables the accounting (no lockouts, no violations).
    pub budget: Option<(u32, Duration)>,
    /// How long a key stays locked out (429) after it exceeded the budget.
    pub lockout: Duration,
    /// `(min, max)`: every answer is delayed by a uniformly random time in this range.
    pub latency: Option<(Duration, Duration)>,
    /// What to answer for ids without a script.
    pub unknown: Unknown,
    /// The keys of other Ninjapay accounts, accepted for every kind besides `api_key`. Each
    /// has its own scripts ([`FakeNinjapay::script_for_key`]), history, budget ledger and
    /// faults ([`FakeNinjapay::set_key_fault`]).
    pub accounts: Vec<String>,
    /// Keep every request's [`Recorded`] (the most recent 100,000). `false` keeps only each
    /// key's arrival times ([`FakeNinjapay::arrivals_by_key`]), all of them: a long run at
    /// a high rate then costs the fake a few bytes a request.
    pub record: bool,
}

impl Default for FakeOptions {
    /// Key `fake-api-key` for every kind and no other account, no budget, a 1 hour lockout (Ninjapay's), no
    /// latency, 404 for unknown ids.
    fn default() -> Self {
        FakeOptions {
            api_key: "fake-api-key".to_owned(),
            paywall_api_key: None,
            budget: None,
            lockout: Duration::from_secs(3600),
            latency: None,
            unknown: Unknown::NotFound,
            accounts: Vec::new(),
            record: true,
        }
    }
}

/// A running fake Ninjapay. Stops serving when dropped or on [`FakeNinjapay::shutdown`].
pub struct FakeNinjapay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeNinjapay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeNinjapay")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeNinjapay {
    /// Binds `127.0.0.1` on a random port and starts serving on the current Tokio runtime.
    pub async fn start(opts: FakeOptions) -> anyhow::Result<FakeNinjapay> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (closing_tx, closing_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(Inner::new(opts)),
            closing_rx,
            closing_tx,
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async move {
                // Either an explicit stop or the handle being dropped ends the server.
                let _ = stop_rx.await;
            });
            if let Err(err) = server.await {
                tracing::warn!(error = %err, "fake Ninjapay server stopped with an error");
            }
        });
        tracing::debug!(%addr, "fake Ninjapay listening");
        Ok(FakeNinjapay {
            addr,
            shared,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`: use it as both `prod_base_url` and `api_base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets (or replaces, restarting it) the script of `id` for `kind`. For `btc` the id
    /// becomes the newest entry of the history, in wallet `btc`.
    ///
    /// # Panics
    /// If `kind` is not one of `p2p`, `quote`, `paywall`, `btc` (a programming error).
    pub fn script(&self, kind: &str, id: &str, script: Script) {
        let kind = expect_kind(kind);
        self.shared.lock().register(None, kind, id, script, "btc");
    }

    /// Sets the script of `id` for `kind` as another account's payment: only requests
    /// presenting `key` (one of [`FakeOptions::accounts`], or one added with
    /// [`FakeNinjapay::add_key`]) see it; for `btc` it is the newest entry of that key's
    /// history.
    ///
    /// # Panics
    /// If `kind` is not one of `p2p`, `quote`, `paywall`, `btc` (a programming error).
    pub fn script_for_key(&self, key: &str, kind: &str, id: &str, script: Script) {
        let kind = expect_kind(kind);
        self.shared
            .lock()
            .register(Some(key.to_owned()), kind, id, script, "btc");
    }

    /// Accepts `key` as another account's key from now on (as [`FakeOptions::accounts`]).
    pub fn add_key(&self, key: &str) {
        let mut inner = self.shared.lock();
        if !inner.accounts.iter().any(|k| k == key) {
            inner.accounts.push(key.to_owned());
        }
    }

    /// Sets (`Some`) or clears (`None`) a fault answered only to the accepted requests that
    /// present `key` (e.g. a 429 with a long `Retry-After` for one account); the other keys
    /// are answered as usual. A fault set with [`FakeNinjapay::set_fault`] takes precedence.
    pub fn set_key_fault(&self, key: &str, fault: Option<Fault>) {
        let mut inner = self.shared.lock();
        match fault {
            Some(f) => inner.key_faults.insert(key.to_owned(), f),
            None => inner.key_faults.remove(key),
        };
    }

    /// Stops accepting another account's `key`: its requests get 401 from now on.
    pub fn revoke_key(&self, key: &str) {
        self.shared.lock().accounts.retain(|k| k != key);
    }

    /// The requests that presented `key` (accepted or not), in arrival order.
    pub fn requests_with_key(&self, key: &str) -> Vec<Recorded> {
        self.shared
            .lock()
            .records
            .iter()
            .filter(|r| r.key.as_deref() == Some(key))
            .cloned()
            .collect()
    }

    /// Each key's arrivals (requests with an accepted key, as the budget counts them), in
    /// arrival order: every one with [`FakeOptions::record`] `false`, else those among the
    /// kept records.
    pub fn arrivals_by_key(&self) -> HashMap<String, Vec<Instant>> {
        let inner = self.shared.lock();
        if !inner.record {
            return inner.arrivals.clone();
        }
        let mut out: HashMap<String, Vec<Instant>> = HashMap::new();
        for r in inner.records.iter().filter(|r| r.auth_ok) {
            if let Some(key) = &r.key {
                out.entry(key.clone()).or_default().push(r.at);
            }
        }
        out
    }

    /// Scripts a `btc` id in the given wallet (`btc`, `lbtc`, `usdt`…), which the history's
    /// `wallet` parameter filters on.
    pub fn script_btc(&self, id: &str, wallet: &str, script: Script) {
        self.shared
            .lock()
            .register(None, Kind::Btc, id, script, wallet);
    }

    /// Scripts `id` with [`Script::random`], using `max_pending` of [`Unknown::Random`] (5
    /// when the fake answers 404 for unknown ids).
    ///
    /// # Panics
    /// If `kind` is not one of `p2p`, `quote`, `paywall`, `btc` (a programming error).
    pub fn script_random(&self, kind: &str, id: &str) {
        let kind = expect_kind(kind);
        let mut inner = self.shared.lock();
        let max_pending = match inner.unknown {
            Unknown::Random { max_pending } => max_pending,
            Unknown::NotFound | Unknown::Pending => 5,
        };
        inner.register(None, kind, id, Script::random(kind, max_pending), "btc");
    }

    /// Every request received, in arrival order (the most recent 100,000; none with
    /// [`FakeOptions::record`] `false`).
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().records.iter().cloned().collect()
    }

    /// The requests of `kind` that asked about `id` (for `btc`: the served history calls
    /// whose page held it), in arrival order.
    pub fn requests_for(&self, kind: &str, id: &str) -> Vec<Recorded> {
        self.shared
            .lock()
            .records
            .iter()
            .filter(|r| r.kind.as_deref() == Some(kind) && r.ids.iter().any(|i| i == id))
            .cloned()
            .collect()
    }

    /// How many requests arrived when their key's rolling window already held the whole
    /// budget (0 when no budget is configured).
    pub fn violations(&self) -> u32 {
        self.shared.lock().budget.violations
    }

    /// Replaces the expected API key (and the paywall key when it follows `api_key`), e.g.
    /// to simulate a revoked key: requests with the old key get 401.
    pub fn set_api_key(&self, key: &str) {
        self.shared.lock().api_key = key.to_owned();
    }

    /// Sets (`Some`) or clears (`None`) a fault answered to every request, whatever its key.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.shared.lock().fault = fault;
    }

    /// The largest number of recorded requests (any key, any path) whose arrivals all fit
    /// in one rolling `window`, i.e. lie less than `window` apart.
    pub fn max_in_window(&self, window: Duration) -> u32 {
        if window.is_zero() {
            return 0;
        }
        let inner = self.shared.lock();
        let times: Vec<Instant> = inner.records.iter().map(|r| r.at).collect();
        let mut best = 0usize;
        let mut start = 0usize;
        for (end, t) in times.iter().enumerate() {
            while start < end && t.saturating_duration_since(times[start]) >= window {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        u32::try_from(best).unwrap_or(u32::MAX)
    }

    /// Stops accepting requests, cuts short the requests that are waiting (latency or
    /// hang), and waits (at most 2 s) for the server to finish.
    pub async fn shutdown(mut self) {
        self.signal_stop();
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }

    fn signal_stop(&mut self) {
        let _ = self.shared.closing_tx.send(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for FakeNinjapay {
    fn drop(&mut self) {
        // The server task winds down on its own once signalled; nothing to await here.
        self.signal_stop();
    }
}

fn expect_kind(kind: &str) -> Kind {
    match Kind::parse(kind) {
        Some(kind) => kind,
        None => panic!("unknown Ninjapay kind {kind:?}: expected p2p, quote, paywall or btc"),
    }
}

/// State shared between the handle and the request handlers.
struct Shared {
    state: Mutex<Inner>,
    /// Flips to `true` on shutdown so that sleeping handlers answer at once.
    closing_tx: watch::Sender<bool>,
    closing_rx: watch::Receiver<bool>,
}

impl Shared {
    /// Locks the state. A panic while holding the lock cannot leave it half-updated in a
    /// way that matters to a fake, so a poisoned lock is simply reused.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The one handler: it routes itself so that every request, however odd, is recorded.
async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    // Only the paywall (POST) carries a body worth reading; a body over the limit or a
    // broken stream counts as a missing `order_id` (400).
    let body = if parts.method == Method::POST {
        axum::body::to_bytes(body, BODY_LIMIT).await.ok()
    } else {
        Some(Default::default())
    };
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let params: Vec<(String, String)> = Query::try_from_uri(&parts.uri)
        .map(|Query(p)| p)
        .unwrap_or_default();
    let incoming = Incoming {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query,
        params,
        headers: parts.headers,
        body,
    };

    let (reply, delay) = {
        let mut inner = shared.lock();
        decide(&mut inner, &incoming)
    };

    if !delay.is_zero() {
        let mut closing = shared.closing_rx.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // Shutting down: answer now rather than keep the connection (and the test) waiting.
            _ = closing.wait_for(|closing| *closing) => {}
        }
    }
    reply.into_response()
}
