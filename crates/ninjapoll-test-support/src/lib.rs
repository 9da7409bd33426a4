//! ninjapoll's integration-test harness: runs the real `ninjapoll` binary against the fake
//! Ninjapay, speaks HTTP/1.1 to its Unix socket, and receives its webhooks.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ninjapoll::wire::{EventBody, PaymentDetail};
use serde_json::Value;

pub use ninjapoll_fake::{FakeNinjapay, FakeOptions, Fault, Kind, Script, Step, Unknown};

/// A Standard Webhooks secret for tests (base64 of 24 fixed bytes).
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// How long the daemon gets to answer `/v1/health` after a (re)start.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop()` waits for the daemon to exit after SIGTERM before it SIGKILLs it.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The `ninjapoll` binary under test: `$NINJAPOLL_BIN`, else the one cargo built next to the
/// running test executable (`target/<profile>/deps/it-…` → `target/<profile>/ninjapoll`).
/// Cargo builds a package's binaries before its integration tests, so it is there.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NINJAPOLL_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps");
    profile_dir.join("ninjapoll")
}

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses an RFC 3339 timestamp of the API into unix milliseconds.
pub fn rfc3339_ms(v: &Value) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(v.as_str()?).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
}

/// The knobs of a test daemon's configuration (SPEC section 3). Durations are humantime
/// strings, as in the file.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// `[ninjapay] api_key`.
    pub api_key: String,
    /// `[ninjapay] budget_requests`.
    pub budget_requests: u32,
    /// `[ninjapay] budget_window`.
    pub budget_window: String,
    /// `[schedule] first_check`.
    pub first_check: (String, String),
    /// `[schedule] steps`: `(every, for)`.
    pub steps: Vec<(String, Option<String>)>,
    /// `[schedule] timeout`.
    pub timeout: String,
    /// `[webhooks] url` and `secret`.
    pub webhooks: Option<(String, String)>,
    /// Appended verbatim to the file: whole tables the harness does not write (`[log]`,
    /// `[kinds.…]`). To change a key of a table written above, use `env`.
    pub extra_toml: String,
    /// Extra environment, e.g. `("NINJAPOLL_NINJAPAY__REQUEST_TIMEOUT", "300ms")`.
    pub env: Vec<(String, String)>,
    /// A program (and its arguments) that starts the binary, e.g. `systemd-socket-activate
    /// -l {socket}`; `{socket}` stands for the socket path. Empty: the binary itself.
    pub launcher: Vec<String>,
    /// A listening socket handed to the daemon as systemd does (fd 3, `LISTEN_FDS=1`,
    /// `LISTEN_PID` = the daemon), on every start.
    pub pass_listener: Option<Arc<std::os::unix::net::UnixListener>>,
    /// The daemon's limit on open files (`ulimit -n`), if not inherited.
    pub open_files: Option<u64>,
    /// Starts the daemon with SIGXFSZ ignored, so that a file-size limit (a simulated full
    /// disk, see [`Daemon::set_file_size_limit`]) makes writes fail instead of killing it.
    pub ignore_sigxfsz: bool,
}

impl Default for DaemonConfig {
    /// The key of `FakeOptions::default()`, a budget too large to matter, and the
    /// provider's ladder compressed ~200×: first check at 100–120 ms, every 20 ms for
    /// 200 ms, every 40 ms for 400 ms, then every 100 ms until the 1.5 s timeout.
    fn default() -> Self {
        let s = |x: &str| x.to_owned();
        DaemonConfig {
            api_key: FakeOptions::default().api_key,
            budget_requests: 100_000,
            budget_window: s("10m"),
            first_check: (s("100ms"), s("120ms")),
            steps: vec![
                (s("20ms"), Some(s("200ms"))),
                (s("40ms"), Some(s("400ms"))),
                (s("100ms"), None),
            ],
            timeout: s("1500ms"),
            webhooks: None,
            extra_toml: String::new(),
            env: Vec::new(),
            launcher: Vec::new(),
            pass_listener: None,
            open_files: None,
            ignore_sigxfsz: false,
        }
    }
}

impl DaemonConfig {
    /// The crate's own ladder for this configuration, to compute the expected plan.
    pub fn ladder(&self) -> ninjapoll::Ladder {
        let d = |s: &str| humantime::parse_duration(s).expect("test ladder duration");
        let steps: Vec<_> = self
            .steps
            .iter()
            .map(|(every, span)| (d(every), span.as_deref().map(d)))
            .collect();
        ninjapoll::Ladder::new(
            (d(&self.first_check.0), d(&self.first_check.1)),
            &steps,
            d(&self.timeout),
        )
        .expect("test ladder is valid")
    }

    /// The bounds of the first-check window, in milliseconds.
    pub fn first_check_ms(&self) -> (i64, i64) {
        let d = |s: &str| humantime::parse_duration(s).expect("duration").as_millis() as i64;
        (d(&self.first_check.0), d(&self.first_check.1))
    }

    fn to_toml(&self, dir: &Path, base_url: &str) -> String {
        let q = |s: &str| format!("{s:?}");
        let mut t = String::new();
        let _ = writeln!(
            t,
            "[database]\npath = {}\n",
            q(&dir.join("ninjapoll.db").to_string_lossy())
        );
        let _ = writeln!(
            t,
            "[socket]\npath = {}\n",
            q(&dir.join("ninjapoll.sock").to_string_lossy())
        );
        let _ = writeln!(
            t,
            "[ninjapay]\napi_key = {}\nprod_base_url = {}\napi_base_url = {}\nbudget_requests = {}\nbudget_window = {}\n",
            q(&self.api_key),
            q(base_url),
            q(base_url),
            self.budget_requests,
            q(&self.budget_window)
        );
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|(every, span)| match span {
                Some(span) => format!("{{ every = {}, for = {} }}", q(every), q(span)),
                None => format!("{{ every = {} }}", q(every)),
            })
            .collect();
        let _ = writeln!(
            t,
            "[schedule]\nfirst_check = [{}, {}]\nsteps = [{}]\ntimeout = {}\n",
            q(&self.first_check.0),
            q(&self.first_check.1),
            steps.join(", "),
            q(&self.timeout)
        );
        if let Some((url, secret)) = &self.webhooks {
            let _ = writeln!(t, "[webhooks]\nurl = {}\nsecret = {}\n", q(url), q(secret));
        }
        t.push_str(&self.extra_toml);
        t.push('\n');
        t
    }
}

/// A running `ninjapoll run` in its own temporary directory. Killed when dropped.
pub struct Daemon {
    dir: tempfile::TempDir,
    config: DaemonConfig,
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    config_path: PathBuf,
    starts: u32,
}

/// Writes the configuration into a new temporary directory, starts the daemon against
/// `fake_base_url` and waits until it answers `GET /v1/health`.
pub async fn spawn_daemon(fake_base_url: &str, config: DaemonConfig) -> Daemon {
    let dir = tempfile::Builder::new()
        .prefix("np")
        .tempdir()
        .expect("temporary directory");
    let config_path = dir.path().join("ninjapoll.toml");
    std::fs::write(&config_path, config.to_toml(dir.path(), fake_base_url)).expect("write config");
    let mut daemon = Daemon {
        socket: dir.path().join("ninjapoll.sock"),
        log: dir.path().join("daemon.log"),
        config_path,
        dir,
        config,
        child: None,
        starts: 0,
    };
    daemon.start().await;
    daemon
}

impl Daemon {
    /// The temporary directory (database, socket, config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The SQLite database.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("ninjapoll.db")
    }

    /// The Unix socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The configuration this daemon was started with.
    pub fn config(&self) -> &DaemonConfig {
        &self.config
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the daemon logged (all runs, each headed by a marker line).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Prints the daemon's log to the test's output (shown when the test fails).
    pub fn print_log(&self) {
        eprintln!(
            "----- ninjapoll log ({}) -----\n{}\n----- end of log -----",
            self.log.display(),
            self.log()
        );
    }

    async fn start(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open daemon log");
        {
            use std::io::Write;
            let _ = writeln!(
                log,
                "===== harness: start #{} at {} ms =====",
                self.starts,
                now_ms()
            );
        }
        let binary = binary();
        let mut cmd = match (&self.config.launcher[..], &self.config.pass_listener) {
            ([], None) => Command::new(&binary),
            ([program, args @ ..], None) => {
                let socket = self.socket.to_string_lossy();
                let mut c = Command::new(program);
                c.args(args.iter().map(|a| a.replace("{socket}", &socket)));
                c.arg(&binary);
                c
            }
            ([], Some(listener)) => pass_listener(binary, listener),
            _ => panic!("a launcher and a passed listener together are not supported"),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        // The test's own environment must not reconfigure the daemon.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("NINJAPOLL_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.config.env {
            cmd.env(k, v);
        }
        let (open_files, ignore_sigxfsz) = (self.config.open_files, self.config.ignore_sigxfsz);
        if open_files.is_some() || ignore_sigxfsz {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only async-signal-safe calls (setrlimit, signal).
            unsafe {
                cmd.pre_exec(move || {
                    if let Some(n) = open_files {
                        let lim = libc::rlimit {
                            rlim_cur: n,
                            rlim_max: n,
                        };
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    if ignore_sigxfsz {
                        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    }
                    Ok(())
                });
            }
        }
        self.child = Some(cmd.spawn().expect("spawn ninjapoll"));
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    self.print_log();
                    panic!("ninjapoll exited during start-up: {status}");
                }
            }
            if self.socket.exists() {
                if let Ok((200, _)) = self.try_request("GET", "/v1/health", None).await {
                    return;
                }
            }
            if Instant::now() > deadline {
                self.print_log();
                panic!("ninjapoll not ready after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sets an environment variable for the next (re)start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.config.env.retain(|(k, _)| k != key);
        self.config.env.push((key.to_owned(), value.to_owned()));
    }

    /// Hands `listener` to the daemon as systemd does, from the next (re)start on.
    pub fn set_passed_listener(&mut self, listener: Arc<std::os::unix::net::UnixListener>) {
        self.config.pass_listener = Some(listener);
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 10 s). Returns the exit status.
    pub async fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        sigterm(child.id());
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                self.print_log();
                let _ = child.kill();
                let status = child.wait().ok();
                panic!("ninjapoll ignored SIGTERM for {STOP_TIMEOUT:?} (killed: {status:?})");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sets the running daemon's file-size limit (`RLIMIT_FSIZE`, soft; the hard limit
    /// stays unlimited): `Some(bytes)` makes every write that would grow a file past it
    /// fail, as on a full disk; `None` lifts it. Start the daemon with `ignore_sigxfsz`.
    pub fn set_file_size_limit(&self, bytes: Option<u64>) {
        let pid = self.pid().expect("daemon running") as libc::pid_t;
        let lim = libc::rlimit {
            rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: plain system call on valid pointers.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &lim, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    /// The daemon's resident memory, in bytes (`VmRSS`).
    pub fn rss_bytes(&self) -> u64 {
        let pid = self.pid().expect("daemon running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    /// How many file descriptors the daemon has open.
    pub fn open_fds(&self) -> usize {
        let pid = self.pid().expect("daemon running");
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// SIGKILL: a crash, nothing flushed.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again on the same directory and configuration (stopping it with
    /// SIGTERM first if it still runs), and waits until it is ready.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop().await;
        }
        self.start().await;
    }

    /// The product's own socket client (the one the CLI uses); its errors as text.
    async fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        ninjapoll::request(&self.socket, method, path, body)
            .await
            .map_err(|e| format!("{e:#}"))
    }

    /// One HTTP/1.1 request over the Unix socket. The answer's body is parsed as JSON (a
    /// non-JSON body comes back as a JSON string). Panics if the socket does not answer.
    pub async fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        match self.try_request(method, path, body.as_ref()).await {
            Ok(answer) => answer,
            Err(e) => {
                self.print_log();
                panic!("{method} {path}: {e}");
            }
        }
    }

    /// `POST /v1/checks` with `kind`, `id` and, if given, `started_at`.
    pub async fn enqueue(&self, kind: &str, id: &str, started_at: Option<Value>) -> (u16, Value) {
        let mut body = serde_json::json!({"kind": kind, "id": id});
        if let Some(t) = started_at {
            body["started_at"] = t;
        }
        self.request("POST", "/v1/checks", Some(body)).await
    }

    /// `GET /v1/checks/{kind}/{id}`.
    pub async fn payment(&self, kind: &str, id: &str) -> (u16, Value) {
        self.request("GET", &format!("/v1/checks/{kind}/{id}"), None)
            .await
    }

    /// Polls `GET /v1/checks/{kind}/{id}` every 10 ms until `pred` holds for the payment,
    /// and returns it. Panics on timeout with the last answer and the daemon's log.
    pub async fn wait_for(
        &self,
        kind: &str,
        id: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        self.wait_get(&format!("/v1/checks/{kind}/{id}"), pred, timeout)
            .await
    }

    /// Polls `GET {path}` every 10 ms until `pred` holds for a 200 answer, and returns it.
    /// Panics on timeout with the last answer and the daemon's log.
    pub async fn wait_get(
        &self,
        path: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.try_request("GET", path, None).await {
                Ok((200, p)) if pred(&p) => return p,
                Ok(answer) => answer,
                Err(e) => (0, Value::String(e)),
            };
            if Instant::now() > deadline {
                self.print_log();
                panic!(
                    "GET {path}: condition not met within {timeout:?}; last answer {}: {:#}",
                    last.0, last.1
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the payment is final and returns it, read as the API's type (so an
    /// answer that does not fit the contract fails the test here).
    pub async fn wait_final(&self, kind: &str, id: &str, timeout: Duration) -> PaymentDetail {
        let v = self
            .wait_for(kind, id, |p| p["final"] == true, timeout)
            .await;
        serde_json::from_value(v.clone())
            .unwrap_or_else(|e| panic!("{kind}/{id}: not a payment ({e}): {v:#}"))
    }
}

/// Sends SIGTERM to `pid` (a child of this process), as systemd stops a service. Through
/// libc, not the `kill` tool, which a minimal machine may not have. A child that is already
/// gone (ESRCH) is not an error: the caller waits for its exit either way.
pub fn sigterm(pid: u32) {
    let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    // SAFETY: kill(2) only sends a signal, to our own child.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ESRCH),
            "SIGTERM to {pid}: {err}"
        );
    }
}

/// A command that runs `binary` with `listener` as fd 3 and `LISTEN_FDS`/`LISTEN_PID` set,
/// as systemd's socket activation does: a shell learns its own pid (`$$`), which `exec`
/// keeps for the binary.
fn pass_listener(binary: PathBuf, listener: &std::os::unix::net::UnixListener) -> Command {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    let mut c = Command::new("sh");
    c.args([
        "-c",
        r#"LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=ninjapoll.socket exec "$0" "$@""#,
    ]);
    c.arg(binary);
    // SAFETY: only dup2/fcntl, which are async-signal-safe, between fork and exec.
    unsafe {
        c.pre_exec(move || {
            // dup2 leaves the copy without close-on-exec; onto itself it changes nothing,
            // so then the flag is cleared by hand.
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() && std::env::var_os("NINJAPOLL_TEST_KEEP").is_some() {
            // Keep the directory (database, log, config) for a post-mortem.
            self.dir.disable_cleanup(true);
            eprintln!("kept {}", self.dir.path().display());
        }
    }
}

impl Delivery {
    /// The body read as a webhook event (SPEC section 6); panics if it is not one.
    pub fn event(&self) -> EventBody {
        serde_json::from_value(self.body.clone())
            .unwrap_or_else(|e| panic!("not a webhook event ({e}): {:#}", self.body))
    }
}

/// One webhook delivery as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The `webhook-id` header.
    pub webhook_id: String,
    /// The `webhook-timestamp` header.
    pub timestamp: String,
    /// The body, parsed (`Null` if it is not JSON).
    pub body: Value,
    /// The body as received (to verify its signature with another secret).
    pub raw_body: Vec<u8>,
    /// The request's headers (`webhook-signature` among them).
    pub headers: HeaderMap,
    /// Whether the Standard Webhooks signature verified (independent implementation).
    pub verified: bool,
    /// The status the receiver answered.
    pub answered: u16,
    /// Arrival.
    pub at: Instant,
}

#[derive(Default)]
struct ReceiverState {
    deliveries: Vec<Delivery>,
    /// `(status, count)`: answer `status` to the next `count` deliveries.
    fail_next: Option<(u16, u32)>,
    /// `(delay, count)`: hold the next `count` deliveries this long before answering.
    hang_next: Option<(Duration, u32)>,
}

/// A webhook endpoint on `127.0.0.1` that verifies and records deliveries.
pub struct WebhookReceiver {
    url: String,
    state: Arc<Mutex<ReceiverState>>,
    task: tokio::task::JoinHandle<()>,
}

struct ReceiverShared {
    state: Arc<Mutex<ReceiverState>>,
    webhook: standardwebhooks::Webhook,
}

impl WebhookReceiver {
    /// Starts a receiver that verifies signatures with `secret` (`whsec_…`). Any path is
    /// accepted; [`WebhookReceiver::url`] points at `/ninjapay/events`.
    pub async fn start(secret: &str) -> WebhookReceiver {
        let webhook = standardwebhooks::Webhook::new(secret).expect("webhook secret");
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let shared = Arc::new(ReceiverShared {
            state: state.clone(),
            webhook,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let app = axum::Router::new().fallback(receive).with_state(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookReceiver {
            url: format!("http://{addr}/ninjapay/events"),
            state,
            task,
        }
    }

    /// The URL to configure as `[webhooks] url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every delivery so far, in arrival order (retries included).
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.lock().unwrap().deliveries.clone()
    }

    /// Answers `status` to the next `count` deliveries.
    pub fn fail_next(&self, status: u16, count: u32) {
        self.state.lock().unwrap().fail_next = Some((status, count));
    }

    /// Holds the next `count` deliveries for `delay` before answering 200.
    pub fn hang_next(&self, delay: Duration, count: u32) {
        self.state.lock().unwrap().hang_next = Some((delay, count));
    }

    /// Polls until at least `n` deliveries arrived; panics after `timeout`.
    pub async fn wait_deliveries(&self, n: usize, timeout: Duration) -> Vec<Delivery> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.deliveries();
            if got.len() >= n {
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} webhook deliveries after {timeout:?}, wanted {n}: {got:#?}",
                    got.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn take_one<T: Copy>(slot: &mut Option<(T, u32)>) -> Option<T> {
    let (value, count) = (*slot)?;
    *slot = (count > 1).then_some((value, count - 1));
    Some(value)
}

async fn receive(State(shared): State<Arc<ReceiverShared>>, request: Request) -> Response {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let verified = shared.webhook.verify(&body, &parts.headers).is_ok();
    let header = |h: &HeaderMap, name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (answer, hang) = {
        let mut st = shared.state.lock().unwrap();
        let answer = take_one(&mut st.fail_next).unwrap_or(200);
        let hang = take_one(&mut st.hang_next);
        st.deliveries.push(Delivery {
            webhook_id: header(&parts.headers, "webhook-id"),
            timestamp: header(&parts.headers, "webhook-timestamp"),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            raw_body: body.to_vec(),
            headers: parts.headers.clone(),
            verified,
            answered: answer,
            at,
        });
        (answer, hang)
    };
    if let Some(delay) = hang {
        tokio::time::sleep(delay).await;
    }
    StatusCode::from_u16(answer)
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        .into_response()
}
