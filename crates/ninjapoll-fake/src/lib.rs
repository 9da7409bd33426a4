//! A simulated Ninjapay API, served over HTTP on `127.0.0.1`.
//!
//! Used by the integration tests (scripted payments, fault injection, budget accounting)
//! and by `ninjapoll demo` (random payments that settle after a few checks). It serves the
//! four check endpoints of the provider with the response shapes of its documentation:
//!
//! | kind | request | id | auth header |
//! |---|---|---|---|
//! | `p2p` | `GET /uapi/v1/p2p/paymentLink/checkPayment?tid=ID` | query `tid` | `Authorization` |
//! | `quote` | `GET /sapi/v1/checkQuote?tid=ID` | query `tid` | `Authorization` |
//! | `paywall` | `POST /webextension/api/v1/fiat/paywall/trx-status` | body `order_id` | `x-api-key` |
//! | `btc` | `GET /sapi/v1/history?limit=N&wallet=W` | entries' `tid` | `Authorization` |
//!
//! One base URL serves both the `prod.` and the `api.` paths. Errors use the provider's
//! shape, `{"success": false, "message": "…"}`.
//!
//! Every request is recorded (see [`Recorded`]), including rejected ones, so that tests can
//! assert on what the daemon sent and when. The optional request budget mimics Ninjapay's
//! "1,000 requests per 10 minutes per API key; past it the key is locked out for 1 hour".

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Largest request body the fake reads; a check request is a few dozen bytes.
const BODY_LIMIT: usize = 64 * 1024;
/// How many requests are kept for [`FakeNinjapay::requests`]: bounds memory in a long demo.
const MAX_RECORDS: usize = 100_000;
/// Size of a history page when the request has no `limit`.
const DEFAULT_HISTORY_LIMIT: usize = 10;

const P2P_PATH: &str = "/uapi/v1/p2p/paymentLink/checkPayment";
const QUOTE_PATH: &str = "/sapi/v1/checkQuote";
const PAYWALL_PATH: &str = "/webextension/api/v1/fiat/paywall/trx-status";
const BTC_PATH: &str = "/sapi/v1/history";

/// The four check endpoints the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// P2P payment link: `GET /uapi/v1/p2p/paymentLink/checkPayment?tid=`.
    P2p,
    /// Fiat x Web3 quote: `GET /sapi/v1/checkQuote?tid=`.
    Quote,
    /// UPI paywall: `POST /webextension/api/v1/fiat/paywall/trx-status`.
    Paywall,
    /// BTC transactions, found in the list `GET /sapi/v1/history`.
    Btc,
}

impl Kind {
    /// All kinds, in a stable order.
    pub const ALL: [Kind; 4] = [Kind::P2p, Kind::Quote, Kind::Paywall, Kind::Btc];

    /// Parses a kind name as used in ninjapoll (`p2p`, `quote`, `paywall`, `btc`).
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The kind's name as used in ninjapoll.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::P2p => "p2p",
            Kind::Quote => "quote",
            Kind::Paywall => "paywall",
            Kind::Btc => "btc",
        }
    }

    /// The raw status this kind's endpoint reports while a payment is not settled.
    pub fn pending_status(self) -> &'static str {
        match self {
            Kind::Paywall => "PENDING",
            Kind::P2p | Kind::Quote | Kind::Btc => "pending",
        }
    }

    /// The final raw statuses of this kind, as the provider spells them.
    pub fn final_statuses(self) -> &'static [&'static str] {
        match self {
            Kind::P2p => &["approved", "declined"],
            Kind::Quote => &["success", "completed", "failed", "expired", "refunded"],
            Kind::Paywall => &["SUCCESS", "FAILED"],
            Kind::Btc => &["paid", "declined"],
        }
    }

    /// The header that carries the API key for this kind.
    fn auth_header(self) -> &'static str {
        match self {
            Kind::Paywall => "x-api-key",
            Kind::P2p | Kind::Quote | Kind::Btc => "authorization",
        }
    }

    fn method(self) -> Method {
        match self {
            Kind::Paywall => Method::POST,
            Kind::P2p | Kind::Quote | Kind::Btc => Method::GET,
        }
    }

    fn method_name(self) -> &'static str {
        match self {
            Kind::Paywall => "POST",
            Kind::P2p | Kind::Quote | Kind::Btc => "GET",
        }
    }

    fn from_path(path: &str) -> Option<Kind> {
        match path {
            P2P_PATH => Some(Kind::P2p),
            QUOTE_PATH => Some(Kind::Quote),
            PAYWALL_PATH => Some(Kind::Paywall),
            BTC_PATH => Some(Kind::Btc),
            _ => None,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the fake answers for an id that has no script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unknown {
    /// 404 `{"success": false, "message": "Transaction not found"}` (the default).
    NotFound,
    /// Invent a script on first sight: pending for a uniformly random `2..=max_pending`
    /// checks, then a random final status of the kind (for `ninjapoll demo`). The history
    /// endpoint (`btc`) cannot see ids it was never told about: script those with
    /// [`FakeNinjapay::script_random`].
    Random {
        /// Upper bound of the number of pending answers (at least 2 are given).
        max_pending: u32,
    },
}

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
}

impl Default for FakeOptions {
    /// Key `fake-api-key` for every kind, no budget, a 1 hour lockout (Ninjapay's), no
    /// latency, 404 for unknown ids.
    fn default() -> Self {
        FakeOptions {
            api_key: "fake-api-key".to_owned(),
            paywall_api_key: None,
            budget: None,
            lockout: Duration::from_secs(3600),
            latency: None,
            unknown: Unknown::NotFound,
        }
    }
}

/// What one check of a payment answers, in a [`Script::Sequence`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// 200 with the kind's normal body carrying this raw status, spelled as the provider
    /// would (e.g. `"approved"`, `"SUCCESS"`, or something unexpected).
    Status(String),
    /// An arbitrary HTTP answer: status `code` (an invalid code is answered as 500), `body`
    /// verbatim (as JSON when it parses as JSON), and an optional `Retry-After` header.
    /// For `btc` the whole history answer is this one.
    Http {
        /// HTTP status code.
        code: u16,
        /// Response body, sent verbatim.
        body: String,
        /// `Retry-After` header value (seconds or an HTTP date), if any.
        retry_after: Option<String>,
    },
    /// 200 with an HTML body (a misbehaving proxy). For `btc` the whole answer.
    NotJson,
    /// 200 with the normal body minus the status field (`/status`, `/data/trxStatus`, or
    /// the history entry's `status`).
    MissingStatus,
    /// 200 with a failed envelope: `{"status": false, "message": …}` for paywall,
    /// `{"success": false, "message": …}` for the others. For `btc` the whole answer.
    EnvelopeFalse,
    /// Wait this long, then answer the kind's pending status (a slow upstream; the client
    /// is expected to time out first).
    Hang(Duration),
    /// 404 `{"success": false, …}` (not visible yet); for `btc` the entry is left out of
    /// the history.
    NotFound,
}

/// How a scripted payment evolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// One step per request that asks for this id (for `btc`: per served history call that
    /// lists it); the last step repeats forever. An empty sequence is pending forever.
    Sequence(Vec<Step>),
    /// The kind's pending status before `at`, `status` (raw) from `at` on, whatever the
    /// number of requests.
    FlipAt {
        /// When the payment settles.
        at: Instant,
        /// The raw status from then on.
        status: String,
    },
}

impl Script {
    /// `pending` answers, then `status` forever.
    pub fn pending_then(kind: Kind, pending: usize, status: &str) -> Script {
        let mut steps = vec![Step::Status(kind.pending_status().to_owned()); pending];
        steps.push(Step::Status(status.to_owned()));
        Script::Sequence(steps)
    }

    /// Pending for a uniformly random `2..=max_pending` checks, then a random final status
    /// of the kind (successes twice as likely as each other outcome).
    pub fn random(kind: Kind, max_pending: u32) -> Script {
        let pending = fastrand::u32(2..=max_pending.max(2)) as usize;
        let finals = kind.final_statuses();
        // Index 0 is the kind's success; give it a second ticket.
        let pick = fastrand::usize(0..=finals.len());
        let status = finals
            .get(pick)
            .or_else(|| finals.first())
            .copied()
            .unwrap_or(kind.pending_status());
        Script::pending_then(kind, pending, status)
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Arrival (before any latency or hang).
    pub at: Instant,
    /// Arrival as unix milliseconds (for comparing with the daemon's RFC 3339 timestamps).
    pub unix_ms: i64,
    /// HTTP method.
    pub method: String,
    /// URL path, without the query.
    pub path: String,
    /// The check endpoint's kind (`p2p`, …), `None` for any other path.
    pub kind: Option<String>,
    /// The ids asked about: the `tid` / `order_id` (even when the request was rejected), or
    /// for `btc` the registered ids inside the served history page (empty when rejected).
    pub ids: Vec<String>,
    /// Whether the right header carried the right key.
    pub auth_ok: bool,
    /// The HTTP status answered.
    pub status: u16,
    /// The raw query string (empty if none).
    pub query: String,
}

/// A failure injected for every request, whatever its path or key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer `code` with `{"success": false, …}` and an optional `Retry-After` header.
    Status {
        /// HTTP status code (an invalid code is answered as 500).
        code: u16,
        /// `Retry-After` header value, if any.
        retry_after: Option<String>,
    },
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
        self.shared.lock().register(kind, id, script, "btc");
    }

    /// Scripts a `btc` id in the given wallet (`btc`, `lbtc`, `usdt`…), which the history's
    /// `wallet` parameter filters on.
    pub fn script_btc(&self, id: &str, wallet: &str, script: Script) {
        self.shared.lock().register(Kind::Btc, id, script, wallet);
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
            Unknown::NotFound => 5,
        };
        inner.register(kind, id, Script::random(kind, max_pending), "btc");
    }

    /// Every request received, in arrival order (the most recent 100,000).
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
        self.shared.lock().violations
    }

    /// Replaces the expected API key (and the paywall key when it follows `api_key`), e.g.
    /// to simulate a revoked key: requests with the old key get 401.
    pub fn set_api_key(&self, key: &str) {
        self.shared.lock().api_key = key.to_owned();
    }

    /// Sets (`Some`) or clears (`None`) a fault answered to every request.
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

struct ScriptEntry {
    script: Script,
    /// Steps consumed so far.
    served: usize,
    /// Only meaningful for `btc` (the history's `wallet` filter).
    wallet: String,
    /// Registration order: the history lists the newest first.
    order: u64,
    /// Registration time (unix seconds): the history entry's `created_at`.
    created: i64,
}

impl ScriptEntry {
    /// The step for the next request, at `now`; consumes it.
    fn next_step(&mut self, kind: Kind, now: Instant) -> Step {
        let step = match &self.script {
            Script::Sequence(steps) => steps
                .get(self.served)
                .or_else(|| steps.last())
                .cloned()
                .unwrap_or_else(|| Step::Status(kind.pending_status().to_owned())),
            Script::FlipAt { at, status } => {
                if now >= *at {
                    Step::Status(status.clone())
                } else {
                    Step::Status(kind.pending_status().to_owned())
                }
            }
        };
        self.served = self.served.saturating_add(1);
        step
    }
}

struct Inner {
    api_key: String,
    paywall_api_key: Option<String>,
    budget: Option<(u32, Duration)>,
    lockout: Duration,
    latency: Option<(Duration, Duration)>,
    unknown: Unknown,
    fault: Option<Fault>,
    scripts: HashMap<(Kind, String), ScriptEntry>,
    next_order: u64,
    records: VecDeque<Recorded>,
    violations: u32,
    /// Per API key: arrivals inside the current rolling window.
    arrivals: HashMap<String, VecDeque<Instant>>,
    /// Per API key: end of its lockout.
    locked_until: HashMap<String, Instant>,
}

impl Inner {
    fn new(opts: FakeOptions) -> Inner {
        Inner {
            api_key: opts.api_key,
            paywall_api_key: opts.paywall_api_key,
            budget: opts.budget,
            lockout: opts.lockout,
            latency: opts.latency,
            unknown: opts.unknown,
            fault: None,
            scripts: HashMap::new(),
            next_order: 0,
            records: VecDeque::new(),
            violations: 0,
            arrivals: HashMap::new(),
            locked_until: HashMap::new(),
        }
    }

    fn register(&mut self, kind: Kind, id: &str, script: Script, wallet: &str) {
        self.next_order += 1;
        self.scripts.insert(
            (kind, id.to_owned()),
            ScriptEntry {
                script,
                served: 0,
                wallet: wallet.to_owned(),
                order: self.next_order,
                created: unix_now(),
            },
        );
    }

    fn expected_key(&self, kind: Kind) -> &str {
        match kind {
            Kind::Paywall => self.paywall_api_key.as_deref().unwrap_or(&self.api_key),
            Kind::P2p | Kind::Quote | Kind::Btc => &self.api_key,
        }
    }

    /// Counts an arrival with a valid `key` against the budget. Returns whether the key is
    /// locked out (by this request or an earlier one).
    fn account(&mut self, key: &str, now: Instant) -> bool {
        let Some((limit, window)) = self.budget else {
            return false;
        };
        let arrivals = self.arrivals.entry(key.to_owned()).or_default();
        while arrivals
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            arrivals.pop_front();
        }
        let over = arrivals.len() >= limit as usize;
        arrivals.push_back(now);
        let locked = self.locked_until.get(key).is_some_and(|until| now < *until);
        if over {
            self.violations = self.violations.saturating_add(1);
            if !locked {
                tracing::warn!("fake Ninjapay: request budget exceeded, locking the key out");
                self.locked_until.insert(key.to_owned(), now + self.lockout);
            }
            return true;
        }
        locked
    }

    fn push_record(&mut self, record: Recorded) {
        if self.records.len() >= MAX_RECORDS {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }

    /// The script entry for a single-id kind, inventing one if the options say so.
    fn entry_for(&mut self, kind: Kind, id: &str) -> Option<&mut ScriptEntry> {
        let key = (kind, id.to_owned());
        if !self.scripts.contains_key(&key) {
            let Unknown::Random { max_pending } = self.unknown else {
                return None;
            };
            self.register(kind, id, Script::random(kind, max_pending), "btc");
        }
        self.scripts.get_mut(&key)
    }
}

/// A decided answer, turned into an HTTP response after any delay.
struct Reply {
    code: StatusCode,
    body: String,
    content_type: &'static str,
    retry_after: Option<String>,
    allow: Option<&'static str>,
}

impl Reply {
    fn json(code: StatusCode, body: &Value) -> Reply {
        Reply {
            code,
            body: body.to_string(),
            content_type: "application/json",
            retry_after: None,
            allow: None,
        }
    }

    /// The provider's error shape.
    fn error(code: StatusCode, message: &str) -> Reply {
        Reply::json(code, &json!({"success": false, "message": message}))
    }

    fn raw(code: u16, body: String, retry_after: Option<String>) -> Reply {
        let content_type = if serde_json::from_str::<Value>(&body).is_ok() {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        Reply {
            code: StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
            content_type,
            retry_after,
            allow: None,
        }
    }

    fn not_json() -> Reply {
        Reply {
            code: StatusCode::OK,
            body: "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
                .to_owned(),
            content_type: "text/html",
            retry_after: None,
            allow: None,
        }
    }

    fn envelope_false(kind: Kind) -> Reply {
        let body = match kind {
            Kind::Paywall => json!({"status": false, "message": "Unable to fetch transaction"}),
            Kind::P2p | Kind::Quote | Kind::Btc => {
                json!({"success": false, "message": "Unable to fetch transaction"})
            }
        };
        Reply::json(StatusCode::OK, &body)
    }

    fn into_response(self) -> Response {
        let mut response = (self.code, self.body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(value) = self
            .retry_after
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        response
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

struct Incoming {
    method: Method,
    path: String,
    query: String,
    params: Vec<(String, String)>,
    headers: HeaderMap,
    /// `None` when the body could not be read.
    body: Option<axum::body::Bytes>,
}

impl Incoming {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The id the request asks about, for the single-id kinds.
    fn id(&self, kind: Kind) -> Option<String> {
        let id = match kind {
            Kind::P2p | Kind::Quote => self.param("tid").map(str::to_owned),
            Kind::Paywall => {
                let body = self.body.as_ref()?;
                let value: Value = serde_json::from_slice(body).ok()?;
                match value.get("order_id")? {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                }
            }
            Kind::Btc => None,
        }?;
        let id = id.trim().to_owned();
        (!id.is_empty()).then_some(id)
    }
}

/// Decides the answer to one request and records it; runs under the state lock, so it
/// never awaits. Returns the reply and how long to wait before sending it.
fn decide(inner: &mut Inner, req: &Incoming) -> (Reply, Duration) {
    let now = Instant::now();
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let kind = Kind::from_path(&req.path);

    let presented = kind.and_then(|k| {
        req.headers
            .get(k.auth_header())
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let auth_ok = match (kind, &presented) {
        (Some(k), Some(key)) => !key.is_empty() && key.as_str() == inner.expected_key(k),
        _ => false,
    };
    // Ninjapay counts every request made with a valid key, whatever it gets back.
    let locked = match (&presented, auth_ok) {
        (Some(key), true) => inner.account(key, now),
        _ => false,
    };
    let mut ids: Vec<String> = kind
        .and_then(|k| req.id(k))
        .map(|id| vec![id])
        .unwrap_or_default();

    let mut delay = inner
        .latency
        .map(|(a, b)| {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            lo + (hi - lo).mul_f64(fastrand::f64())
        })
        .unwrap_or_default();

    let reply = if let Some(Fault::Status { code, retry_after }) = inner.fault.clone() {
        let mut reply = Reply::error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "Service temporarily unavailable",
        );
        reply.retry_after = retry_after;
        reply
    } else {
        match kind {
            None => Reply::error(StatusCode::NOT_FOUND, "Route not found"),
            Some(k) if req.method != k.method() => {
                let mut reply = Reply::error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
                reply.allow = Some(k.method_name());
                reply
            }
            Some(_) if !auth_ok => Reply::error(StatusCode::UNAUTHORIZED, "Unauthorized"),
            Some(_) if locked => Reply::error(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests: API key locked out, try again later",
            ),
            Some(Kind::Btc) => {
                let (reply, hang, listed) = history(inner, req, now);
                ids = listed;
                delay += hang;
                reply
            }
            Some(k) => match ids.first().cloned() {
                None => Reply::error(
                    StatusCode::BAD_REQUEST,
                    match k {
                        Kind::Paywall => "order_id is required",
                        _ => "tid is required",
                    },
                ),
                Some(id) => match inner.entry_for(k, &id) {
                    None => Reply::error(StatusCode::NOT_FOUND, "Transaction not found"),
                    Some(entry) => {
                        let (reply, hang) = single(k, &id, entry.next_step(k, now));
                        delay += hang;
                        reply
                    }
                },
            },
        }
    };

    inner.push_record(Recorded {
        at: now,
        unix_ms,
        method: req.method.to_string(),
        path: req.path.clone(),
        kind: kind.map(|k| k.as_str().to_owned()),
        ids,
        auth_ok,
        status: reply.code.as_u16(),
        query: req.query.clone(),
    });
    (reply, delay)
}

/// The answer of a single-id kind for one step, and any extra wait.
fn single(kind: Kind, id: &str, step: Step) -> (Reply, Duration) {
    let ok = |status: Option<&str>| Reply::json(StatusCode::OK, &body_for(kind, id, status));
    match step {
        Step::Status(status) => (ok(Some(&status)), Duration::ZERO),
        Step::MissingStatus => (ok(None), Duration::ZERO),
        Step::Hang(d) => (ok(Some(kind.pending_status())), d),
        Step::Http {
            code,
            body,
            retry_after,
        } => (Reply::raw(code, body, retry_after), Duration::ZERO),
        Step::NotJson => (Reply::not_json(), Duration::ZERO),
        Step::EnvelopeFalse => (Reply::envelope_false(kind), Duration::ZERO),
        Step::NotFound => (
            Reply::error(StatusCode::NOT_FOUND, "Transaction not found"),
            Duration::ZERO,
        ),
    }
}

/// `GET /sapi/v1/history`: the registered btc ids (wallet-filtered, newest first, cut to
/// `limit`) each consume one step. As documented (seed 004) there is no offset or cursor:
/// a client reaches older entries only by asking for a larger `limit`; each entry's
/// `created_at` is when its id was registered. Returns the reply, the extra wait and the listed ids.
fn history(inner: &mut Inner, req: &Incoming, now: Instant) -> (Reply, Duration, Vec<String>) {
    let limit = match req.param("limit") {
        None => DEFAULT_HISTORY_LIMIT,
        Some(raw) => match raw.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                return (
                    Reply::error(StatusCode::BAD_REQUEST, "limit must be a positive integer"),
                    Duration::ZERO,
                    Vec::new(),
                )
            }
        },
    };
    let wallet = req.param("wallet").filter(|w| !w.is_empty());

    let mut page: Vec<(&String, &mut ScriptEntry)> = inner
        .scripts
        .iter_mut()
        .filter(|((k, _), e)| *k == Kind::Btc && wallet.is_none_or(|w| w == e.wallet))
        .map(|((_, id), e)| (id, e))
        .collect();
    page.sort_by_key(|(_, e)| std::cmp::Reverse(e.order));
    page.truncate(limit);

    let mut entries = Vec::with_capacity(page.len());
    let mut listed = Vec::with_capacity(page.len());
    let mut hang = Duration::ZERO;
    let mut whole: Option<Reply> = None;
    for (id, entry) in page {
        listed.push(id.clone());
        let wallet = entry.wallet.clone();
        let created = entry.created;
        let status = match entry.next_step(Kind::Btc, now) {
            Step::Status(s) => Some(s),
            Step::MissingStatus => None,
            Step::NotFound => continue,
            Step::Hang(d) => {
                hang = hang.max(d);
                Some(Kind::Btc.pending_status().to_owned())
            }
            // A broken answer breaks the whole page; the first one (newest) wins.
            Step::Http {
                code,
                body,
                retry_after,
            } => {
                whole.get_or_insert_with(|| Reply::raw(code, body, retry_after));
                continue;
            }
            Step::NotJson => {
                whole.get_or_insert_with(Reply::not_json);
                continue;
            }
            Step::EnvelopeFalse => {
                whole.get_or_insert_with(|| Reply::envelope_false(Kind::Btc));
                continue;
            }
        };
        entries.push(btc_entry(id, &wallet, status.as_deref(), created));
    }
    let reply = whole.unwrap_or_else(|| Reply::json(StatusCode::OK, &Value::Array(entries)));
    (reply, hang, listed)
}

/// A transaction id as Ninjapay spells it: a number when it is one, else a string.
fn tid_value(id: &str) -> Value {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = id.parse::<u64>() {
            return Value::from(n);
        }
    }
    Value::from(id)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The 200 body of a single-id kind (seeds 001, 002, 003); `status: None` leaves the
/// status field out.
fn body_for(kind: Kind, id: &str, status: Option<&str>) -> Value {
    let created = unix_now();
    let mut body = match kind {
        Kind::P2p => json!({
            "tid": id,
            "payment_mode": "upi",
            "payment_mode_type": "primary",
            "utr": "278917658915",
            "amount": 120.10,
            "amount_currency": "INR",
            "payer_info": "+917337557707",
            "purpose": "ninjapoll fake payment",
            "created_at": created,
            "callback_url": null,
            "callback_status": null,
            "success_url": null,
            "hosted_checkout_url": null,
            "order_id": "210",
            "extra": {"name": "nakamoto", "email": "sample@sample.com"},
            "upi_info": {"upi_id": "merchantupi@icici"},
            "bank_info": null,
            "other_info": {},
            "total_fee": {"network_fee": null, "service_fee": null, "gst_fee": null},
        }),
        Kind::Quote => json!({
            "tid": tid_value(id),
            "created_at": created,
            "sending_asset": "btc",
            "sending_asset_amount": 19362,
            "fiat_amount": 1500.0,
            "payment_method": "upi",
            "lightning_invoice": "lnbc193620n1fake",
            "onchain_address": "2NAyVsR6N8opLW9na23yBhkWqizEmwDVwvm",
            "onchain_address_network": "BTC",
            "expires_at": created + 600,
            "receiver_upi_id": "merchantupi@icici",
            "receiver_ninjatag": null,
            "refund_wallet": "lbtc",
            "transaction_time": null,
        }),
        Kind::Paywall => {
            let message = match status.map(str::to_ascii_uppercase).as_deref() {
                Some("SUCCESS") => "Received payment",
                Some("FAILED") | Some("FAILURE") => "Payment failed",
                _ => "Payment pending",
            };
            let mut data = json!({
                "payload": {
                    "price": "1",
                    "title": "ninjapoll fake paywall",
                    "content": "",
                    "content_type": "URL",
                    "hide_url": false,
                    "currency": "INR",
                    "extras": {},
                },
            });
            if let (Some(s), Some(obj)) = (status, data.as_object_mut()) {
                obj.insert("trxStatus".to_owned(), Value::from(s));
            }
            return json!({"status": true, "data": data, "message": message});
        }
        Kind::Btc => return btc_entry(id, "btc", status, created),
    };
    if let (Some(s), Some(obj)) = (status, body.as_object_mut()) {
        obj.insert("status".to_owned(), Value::from(s));
    }
    body
}

/// One history entry (seed 004); `created` is when the charge was made (unix seconds).
fn btc_entry(id: &str, wallet: &str, status: Option<&str>, created: i64) -> Value {
    let mut entry = json!({
        "tid": tid_value(id),
        "payment_mode": "lightning",
        "wallet": wallet,
        "amount": 0.00019362,
        "receiver_ninjatag": null,
        "description": "ninjapoll fake charge",
        "created_at": created,
        "status_payee": "undefined",
        "status_payer": "undefined",
        "transaction_hash": null,
        "callback_url": null,
        "callback_status": null,
        "success_url": null,
        "hosted_checkout_url": null,
        "hosted_checkout_expiry": null,
        "customer_name": null,
        "order_id": "21",
        "fiat_currency": "USD",
        "fiat_value": 12.34,
        "extra": {},
        "chain_address": {"asset": "BTC", "chain_network": null, "address": null},
        "uri": null,
        "ttl": 10,
        "lightning_invoice": {
            "lightning_invoice_type": "invoice",
            "expires_at": null,
            "payreq": "lnbc193620n1fake",
        },
        "total_fee": {"network_fee": null, "service_fee": null, "gst_fee": null},
    });
    if let (Some(s), Some(obj)) = (status, entry.as_object_mut()) {
        obj.insert("status".to_owned(), Value::from(s));
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "fake-api-key";

    async fn fake(opts: FakeOptions) -> (FakeNinjapay, reqwest::Client) {
        let fake = FakeNinjapay::start(opts).await.unwrap();
        (fake, reqwest::Client::new())
    }

    async fn get(
        client: &reqwest::Client,
        url: String,
        auth: Option<&str>,
    ) -> (u16, String, HeaderMap) {
        let mut req = client.get(url);
        if let Some(key) = auth {
            req = req.header("Authorization", key);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, resp.text().await.unwrap(), headers)
    }

    async fn get_json(client: &reqwest::Client, url: String) -> (u16, Value) {
        let (status, body, _) = get(client, url, Some(KEY)).await;
        (status, serde_json::from_str(&body).unwrap())
    }

    async fn paywall(client: &reqwest::Client, base: &str, body: Value, key: &str) -> (u16, Value) {
        let resp = client
            .post(format!("{base}{PAYWALL_PATH}"))
            .header("x-api-key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    #[tokio::test]
    async fn p2p_shape_and_sequence_advances() {
        let (f, c) = fake(FakeOptions::default()).await;
        f.script(
            "p2p",
            "A19866",
            Script::pending_then(Kind::P2p, 2, "approved"),
        );
        let url = format!("{}{P2P_PATH}?tid=A19866", f.base_url());
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (status, body) = get_json(&c, url.clone()).await;
            assert_eq!(status, 200);
            assert_eq!(body["tid"], "A19866");
            assert_eq!(body["amount_currency"], "INR");
            seen.push(body["status"].as_str().unwrap().to_owned());
        }
        assert_eq!(seen, ["pending", "pending", "approved", "approved"]);
        let recs = f.requests_for("p2p", "A19866");
        assert_eq!(recs.len(), 4);
        assert!(recs
            .iter()
            .all(|r| r.auth_ok && r.status == 200 && r.method == "GET"));
        assert_eq!(recs[0].query, "tid=A19866");
        assert!(recs.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[tokio::test]
    async fn quote_shape_numeric_tid() {
        let (f, c) = fake(FakeOptions::default()).await;
        f.script(
            "quote",
            "21066027789",
            Script::Sequence(vec![Step::Status("completed".into())]),
        );
        let (status, body) =
            get_json(&c, format!("{}{QUOTE_PATH}?tid=21066027789", f.base_url())).await;
        assert_eq!(status, 200);
        assert_eq!(body["tid"], 21066027789u64);
        assert_eq!(body["status"], "completed");
        assert!(body["fiat_amount"].is_number());
    }

    #[tokio::test]
    async fn paywall_shape_and_errors() {
        let (f, c) = fake(FakeOptions::default()).await;
        let base = f.base_url();
        f.script(
            "paywall",
            "FT_RTPL_1",
            Script::Sequence(vec![
                Step::Status("PENDING".into()),
                Step::EnvelopeFalse,
                Step::MissingStatus,
                Step::Status("SUCCESS".into()),
            ]),
        );
        let body = json!({"order_id": "FT_RTPL_1"});
        let (s, v) = paywall(&c, &base, body.clone(), KEY).await;
        assert_eq!(
            (s, &v["status"], &v["data"]["trxStatus"]),
            (200, &json!(true), &json!("PENDING"))
        );
        let (s, v) = paywall(&c, &base, body.clone(), KEY).await;
        assert_eq!((s, &v["status"]), (200, &json!(false)));
        assert!(v["message"].is_string());
        let (s, v) = paywall(&c, &base, body.clone(), KEY).await;
        assert_eq!(s, 200);
        assert!(v["data"].get("trxStatus").is_none());
        assert!(v["data"]["payload"].is_object());
        let (s, v) = paywall(&c, &base, body.clone(), KEY).await;
        assert_eq!((s, &v["data"]["trxStatus"]), (200, &json!("SUCCESS")));
        assert_eq!(v["message"], "Received payment");

        // Missing field, not JSON, wrong method.
        let (s, v) = paywall(&c, &base, json!({"tid": "x"}), KEY).await;
        assert_eq!((s, &v["success"]), (400, &json!(false)));
        let resp = c
            .post(format!("{base}{PAYWALL_PATH}"))
            .header("x-api-key", KEY)
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        let (s, _, h) = get(&c, format!("{base}{PAYWALL_PATH}"), Some(KEY)).await;
        assert_eq!(s, 405);
        assert_eq!(h.get("allow").unwrap(), "POST");
        assert_eq!(f.requests_for("paywall", "FT_RTPL_1").len(), 4);
    }

    #[tokio::test]
    async fn auth_failures_per_kind() {
        let opts = FakeOptions {
            paywall_api_key: Some("invoice-key".into()),
            ..FakeOptions::default()
        };
        let (f, c) = fake(opts).await;
        let base = f.base_url();
        for kind in ["p2p", "quote"] {
            f.script(kind, "1", Script::Sequence(vec![]));
        }
        for path in [P2P_PATH, QUOTE_PATH, BTC_PATH] {
            let url = format!("{base}{path}?tid=1");
            for auth in [None, Some("wrong"), Some("invoice-key")] {
                let (s, body, _) = get(&c, url.clone(), auth).await;
                assert_eq!(s, 401, "{path} {auth:?}");
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["success"], false);
            }
            // The paywall header is not accepted on the GET kinds.
            let resp = c.get(&url).header("x-api-key", KEY).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 401);
            assert_eq!(get(&c, url, Some(KEY)).await.0, 200);
        }
        f.script("paywall", "o1", Script::Sequence(vec![]));
        let body = json!({"order_id": "o1"});
        assert_eq!(paywall(&c, &base, body.clone(), KEY).await.0, 401);
        let resp = c
            .post(format!("{base}{PAYWALL_PATH}"))
            .header("Authorization", "invoice-key")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        assert_eq!(paywall(&c, &base, body, "invoice-key").await.0, 200);

        let recs = f.requests();
        assert_eq!(recs.iter().filter(|r| !r.auth_ok).count(), 3 * 4 + 2);
        assert!(recs.iter().filter(|r| !r.auth_ok).all(|r| r.status == 401));
        // Rejected single-id requests still name their id.
        assert_eq!(f.requests_for("p2p", "1").len(), 5);

        // A rotated key: the old one is refused.
        f.set_api_key("new-key");
        assert_eq!(
            get(&c, format!("{base}{P2P_PATH}?tid=1"), Some(KEY))
                .await
                .0,
            401
        );
        assert_eq!(
            get(&c, format!("{base}{P2P_PATH}?tid=1"), Some("new-key"))
                .await
                .0,
            200
        );
    }

    #[tokio::test]
    async fn unknown_ids_missing_params_and_paths() {
        let (f, c) = fake(FakeOptions::default()).await;
        let base = f.base_url();
        let (s, v) = get_json(&c, format!("{base}{P2P_PATH}?tid=nope")).await;
        assert_eq!((s, &v["success"]), (404, &json!(false)));
        assert_eq!(get(&c, format!("{base}{P2P_PATH}"), Some(KEY)).await.0, 400);
        assert_eq!(
            get(&c, format!("{base}{QUOTE_PATH}?tid="), Some(KEY))
                .await
                .0,
            400
        );
        assert_eq!(get(&c, format!("{base}/nope"), Some(KEY)).await.0, 404);
        let resp = c
            .delete(format!("{base}{QUOTE_PATH}?tid=1"))
            .header("Authorization", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 405);
        // Odd query strings are not fatal.
        assert_eq!(
            get(&c, format!("{base}{P2P_PATH}?tid=%ZZ&&="), Some(KEY))
                .await
                .0,
            404
        );
        assert_eq!(f.requests().len(), 6);
        assert_eq!(f.requests()[3].kind, None);
    }

    #[tokio::test]
    async fn random_unknown_ids_settle() {
        let opts = FakeOptions {
            unknown: Unknown::Random { max_pending: 3 },
            ..FakeOptions::default()
        };
        let (f, c) = fake(opts).await;
        let url = format!("{}{QUOTE_PATH}?tid=q1", f.base_url());
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let (s, v) = get_json(&c, url.clone()).await;
            assert_eq!(s, 200);
            statuses.push(v["status"].as_str().unwrap().to_owned());
        }
        assert_eq!(&statuses[..2], ["pending", "pending"]);
        let last = statuses.last().unwrap();
        assert!(
            Kind::Quote.final_statuses().contains(&last.as_str()),
            "{statuses:?}"
        );
    }

    #[tokio::test]
    async fn http_steps_fault_and_flip() {
        let (f, c) = fake(FakeOptions::default()).await;
        let base = f.base_url();
        f.script(
            "p2p",
            "7",
            Script::Sequence(vec![
                Step::Http {
                    code: 500,
                    body: r#"{"success": false, "message": "boom"}"#.into(),
                    retry_after: Some("3".into()),
                },
                Step::NotJson,
                Step::NotFound,
                Step::Hang(Duration::from_millis(150)),
            ]),
        );
        let url = format!("{base}{P2P_PATH}?tid=7");
        let (s, body, h) = get(&c, url.clone(), Some(KEY)).await;
        assert_eq!(
            (s, h.get("retry-after").unwrap().to_str().unwrap()),
            (500, "3")
        );
        assert!(body.contains("boom"));
        let (s, body, _) = get(&c, url.clone(), Some(KEY)).await;
        assert_eq!(s, 200);
        assert!(serde_json::from_str::<Value>(&body).is_err());
        assert_eq!(get(&c, url.clone(), Some(KEY)).await.0, 404);
        let t = Instant::now();
        let (s, v) = get_json(&c, url.clone()).await;
        assert!(t.elapsed() >= Duration::from_millis(150));
        assert_eq!((s, &v["status"]), (200, &json!("pending")));

        f.set_fault(Some(Fault::Status {
            code: 503,
            retry_after: Some("1".into()),
        }));
        let (s, _, h) = get(&c, url.clone(), Some("whatever")).await;
        assert_eq!(
            (s, h.get("retry-after").unwrap().to_str().unwrap()),
            (503, "1")
        );
        f.set_fault(None);

        f.script(
            "p2p",
            "8",
            Script::FlipAt {
                at: Instant::now() + Duration::from_millis(100),
                status: "declined".into(),
            },
        );
        let url = format!("{base}{P2P_PATH}?tid=8");
        assert_eq!(get_json(&c, url.clone()).await.1["status"], "pending");
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(get_json(&c, url).await.1["status"], "declined");
    }

    #[tokio::test]
    async fn btc_history_limit_order_and_wallet() {
        let (f, c) = fake(FakeOptions::default()).await;
        let base = f.base_url();
        for i in 1..=12 {
            f.script(
                "btc",
                &format!("{}", 1000 + i),
                Script::pending_then(Kind::Btc, 1, "paid"),
            );
        }
        f.script_btc(
            "ln-abc",
            "lbtc",
            Script::Sequence(vec![Step::MissingStatus]),
        );

        // Default limit 10, newest first; ids as numbers when numeric, else strings.
        let (s, v) = get_json(&c, format!("{base}{BTC_PATH}")).await;
        assert_eq!(s, 200);
        let list = v.as_array().unwrap();
        assert_eq!(list.len(), 10);
        assert_eq!(list[0]["tid"], "ln-abc");
        assert!(list[0].get("status").is_none());
        assert_eq!(list[1]["tid"], 1012);
        assert_eq!(
            list[1]["status"],
            "undefined".replace("undefined", "pending")
        );
        assert_eq!(list[9]["tid"], 1004);

        let (_, v) = get_json(&c, format!("{base}{BTC_PATH}?limit=3&wallet=btc")).await;
        let tids: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["tid"].clone())
            .collect();
        assert_eq!(tids, [json!(1012), json!(1011), json!(1010)]);
        assert!(v
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["status"] == "paid" && e["wallet"] == "btc"));

        // 1012 was in both pages, 1003 in none.
        assert_eq!(f.requests_for("btc", "1012").len(), 2);
        assert!(f.requests_for("btc", "1003").is_empty());

        for bad in ["0", "-1", "ten", ""] {
            let (s, body, _) = get(&c, format!("{base}{BTC_PATH}?limit={bad}"), Some(KEY)).await;
            assert_eq!(s, 400, "limit={bad}: {body}");
        }
        let (s, v) = get_json(&c, format!("{base}{BTC_PATH}?limit=100&wallet=usdt")).await;
        assert_eq!((s, v), (200, json!([])));
    }

    #[tokio::test]
    async fn btc_broken_entry_breaks_the_page() {
        let (f, c) = fake(FakeOptions::default()).await;
        f.script(
            "btc",
            "1",
            Script::Sequence(vec![Step::Status("paid".into())]),
        );
        f.script(
            "btc",
            "2",
            Script::Sequence(vec![
                Step::NotJson,
                Step::NotFound,
                Step::Status("declined".into()),
            ]),
        );
        let url = format!("{}{BTC_PATH}?limit=5", f.base_url());
        let (s, body, _) = get(&c, url.clone(), Some(KEY)).await;
        assert_eq!(s, 200);
        assert!(serde_json::from_str::<Value>(&body).is_err());
        let (_, v) = get_json(&c, url.clone()).await;
        assert_eq!(v, json!([v[0].clone()]));
        assert_eq!(v[0]["tid"], 1);
        let (_, v) = get_json(&c, url).await;
        assert_eq!(v[0]["status"], "declined");
        assert_eq!(f.requests_for("btc", "2").len(), 3);
    }

    #[tokio::test]
    async fn budget_violation_and_lockout() {
        let opts = FakeOptions {
            budget: Some((3, Duration::from_millis(400))),
            lockout: Duration::from_millis(600),
            ..FakeOptions::default()
        };
        let (f, c) = fake(opts).await;
        f.script("p2p", "1", Script::Sequence(vec![]));
        let url = format!("{}{P2P_PATH}?tid=1", f.base_url());
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(get(&c, url.clone(), Some(KEY)).await.0, 200);
        }
        // Wrong keys do not count against the budget.
        assert_eq!(get(&c, url.clone(), Some("nope")).await.0, 401);
        assert_eq!(f.violations(), 0);
        let (s, body, _) = get(&c, url.clone(), Some(KEY)).await;
        assert_eq!(s, 429);
        assert!(body.contains("locked out"));
        assert_eq!(f.violations(), 1);
        assert_eq!(f.max_in_window(Duration::from_millis(400)), 5);

        // Once the window has drained the key is still locked out, without new violations.
        tokio::time::sleep(Duration::from_millis(450).saturating_sub(start.elapsed())).await;
        assert_eq!(get(&c, url.clone(), Some(KEY)).await.0, 429);
        assert_eq!(f.violations(), 1);
        tokio::time::sleep(Duration::from_millis(700).saturating_sub(start.elapsed())).await;
        assert_eq!(get(&c, url.clone(), Some(KEY)).await.0, 200);
        assert_eq!(f.violations(), 1);
        assert_eq!(f.max_in_window(Duration::from_secs(10)), 7);
        assert_eq!(f.max_in_window(Duration::ZERO), 0);
    }

    #[tokio::test]
    async fn latency_delays_but_arrival_is_recorded_first() {
        let opts = FakeOptions {
            latency: Some((Duration::from_millis(80), Duration::from_millis(100))),
            ..FakeOptions::default()
        };
        let (f, c) = fake(opts).await;
        let sent = Instant::now();
        let (s, _, _) = get(&c, format!("{}{P2P_PATH}?tid=x", f.base_url()), Some(KEY)).await;
        assert_eq!(s, 404);
        assert!(sent.elapsed() >= Duration::from_millis(80));
        let rec = &f.requests()[0];
        assert!(rec.at.duration_since(sent) < Duration::from_millis(80));
        assert!(rec.unix_ms > 1_600_000_000_000);
    }

    #[tokio::test]
    async fn shutdown_cuts_hangs_and_closes_the_port() {
        let (f, c) = fake(FakeOptions::default()).await;
        f.script(
            "p2p",
            "h",
            Script::Sequence(vec![Step::Hang(Duration::from_secs(30))]),
        );
        let url = format!("{}{P2P_PATH}?tid=h", f.base_url());
        let pending = tokio::spawn({
            let c = c.clone();
            let url = url.clone();
            async move { c.get(url).header("Authorization", KEY).send().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = Instant::now();
        f.shutdown().await;
        assert!(t.elapsed() < Duration::from_secs(2));
        let _ = pending.await.unwrap();
        assert!(reqwest::Client::new().get(url).send().await.is_err());
    }
}
