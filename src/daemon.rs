//! Start-up and shutdown of `ninjapoll run`: open the store, bind the socket, start the
//! scheduler and the HTTP server, and stop them all on one cancellation token.

use crate::api::{self, AppState};
use crate::config::{Config, SocketConfig, Source};
use crate::live::{SchedulerSlot, Shared};
use crate::payment::now_ms;
use crate::reload::Reloader;
use crate::scheduler::{self, SchedulerHandle};
use crate::server;
use crate::store::{Store, StoreError};
use crate::systemd::Notifier;
use crate::telemetry::Telemetry;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Binds the socket: creates its directory, replaces a stale socket left by a crash,
/// refuses to start while another daemon listens there, and sets the mode.
pub fn bind_socket(cfg: &SocketConfig) -> Result<UnixListener> {
    let path = &cfg.path;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => bail!(
                    "another ninjapoll is already listening on {}; stop it first (or set socket.path)",
                    path.display()
                ),
                // Nobody listens: left by a crash.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                        .with_context(|| format!("removing stale socket {}", path.display()))?;
                }
                // E.g. permission denied: it may well be live (another user's daemon), so
                // it is not ours to remove.
                Err(e) => bail!(
                    "cannot tell whether the socket {} is in use ({e}); remove it if it is stale",
                    path.display()
                ),
            }
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(_) => {}
    }
    // Bind inside a private directory (0700: nobody else can reach what is in it), set the
    // mode, then rename into place: the socket is never reachable with the umask's mode,
    // not even under a temporary name.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = dir.join(format!(".np{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| format!("creating {}", staging.display()))?;
    let tmp = staging.join("s");
    let placed = UnixListener::bind(&tmp)
        .with_context(|| format!("binding socket {}", tmp.display()))
        .and_then(|listener| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(cfg.mode))
                .with_context(|| format!("setting mode of {}", tmp.display()))?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("moving socket into place at {}", path.display()))?;
            Ok(listener)
        });
    let _ = std::fs::remove_dir_all(&staging);
    let listener = placed?;
    Ok(listener)
}

/// Removes the socket file on drop, so it goes on every clean exit path.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What the service manager hands the daemon: where to send notifications, the listening
/// socket under socket activation, and SIGHUP with where to read the configuration again.
/// The default is none of these (not run by systemd, or in-process as `ninjapoll demo`
/// runs it).
#[derive(Debug, Default)]
pub struct ServiceManager {
    /// `READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=` and the watchdog.
    pub notifier: Notifier,
    /// The socket to serve instead of binding `socket.path`.
    pub listener: Option<std::os::unix::net::UnixListener>,
    /// Reload the configuration from these sources on each SIGHUP.
    pub reload: Option<ReloadOn>,
}

/// A reload on SIGHUP: the signal (installed before start-up, so that an early SIGHUP
/// waits for the daemon instead of killing it) and the configuration's sources.
pub struct ReloadOn {
    pub source: Source,
    pub hangup: tokio::signal::unix::Signal,
}

impl std::fmt::Debug for ReloadOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadOn")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl ServiceManager {
    /// What systemd passed this process, from its environment.
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            notifier: Notifier::from_env()?,
            listener: crate::systemd::listen_socket()?,
            reload: None,
        })
    }
}

/// Runs the daemon until SIGINT or SIGTERM, as systemd (if it did) started it; SIGHUP
/// reloads the configuration from `source`.
pub async fn run(config: Config, source: Source) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone())?;
    let hangup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut manager = ServiceManager::from_env()?;
    manager.reload = Some(ReloadOn { source, hangup });
    run_managed(config, cancel, manager).await
}

/// Runs the daemon until `cancel` fires.
pub async fn run_until(config: Config, cancel: CancellationToken) -> Result<()> {
    run_managed(config, cancel, ServiceManager::default()).await
}

/// Runs the daemon until `cancel` fires, telling `manager` how it goes.
pub async fn run_managed(
    config: Config,
    cancel: CancellationToken,
    manager: ServiceManager,
) -> Result<()> {
    // Whatever way this returns (a start-up step failing included), every task started
    // below is told to stop.
    let _stop_tasks = cancel.clone().drop_guard();
    let ServiceManager {
        notifier,
        listener,
        reload,
    } = manager;
    announce_stopping(&notifier, &cancel);
    log_config_warnings(&config);
    let config = Arc::new(config);
    let store = open_store(&config).await?;
    let (listener, address, _socket_file) = take_socket(listener, &config.socket)?;
    let base = Base {
        store: store.clone(),
        telemetry: Arc::new(Telemetry::default()),
        webhook_wake: Arc::new(Notify::new()),
        notifier: notifier.clone(),
        cancel: cancel.clone(),
    };
    let (workers, handle) = Workers::start(&config, &base).await?;
    let state = AppState {
        store: store.clone(),
        scheduler: SchedulerSlot::new(handle),
        config: Shared::new(config.clone()),
        telemetry: base.telemetry.clone(),
        webhook_wake: base.webhook_wake.clone(),
        bodies: Default::default(),
    };
    let reloader = Reloader::new(base, workers, &state);
    let reloader = tokio::spawn(reloader.run(reload));
    let limits = connection_limits(&config);
    let metrics_server = match (config.metrics_listen, limits.metrics) {
        (Some(addr), Some(limits)) => {
            let app = api::metrics_router(state.clone());
            Some(serve_metrics(addr, app, limits, cancel.clone()).await?)
        }
        _ => None,
    };
    tracing::info!(
        socket = %config.socket.path.display(),
        database = %config.database_path.display(),
        max_connections = limits.socket.max_connections,
        "ninjapoll is running"
    );
    let served = serve(
        listener,
        &address,
        api::router(state),
        limits.socket,
        &notifier,
        &cancel,
    )
    .await;
    cancel.cancel();
    // The reloader stops what runs on the configuration: in-flight checks and deliveries
    // finish and are recorded.
    if let Err(e) = reloader.await {
        tracing::error!(error = %e, "reloader task failed");
    }
    if let Some(task) = metrics_server {
        let _ = task.await;
    }
    store.close().await;
    tracing::info!("ninjapoll stopped");
    served
}

/// systemd learns of the stop when it begins, not when the last check has drained.
fn announce_stopping(notifier: &Notifier, cancel: &CancellationToken) {
    let (notifier, cancel) = (notifier.clone(), cancel.clone());
    tokio::spawn(async move {
        cancel.cancelled().await;
        notifier.stopping();
    });
}

/// Logs what deserves an operator's attention in a configuration about to be used (at
/// start and at each reload).
pub(crate) fn log_config_warnings(config: &Config) {
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    if config.ninjapay.api_key.is_none() {
        tracing::warn!(
            "no API key configured (ninjapay.api_key or ninjapay.api_key_file): payments are \
             accepted and stored, but none is checked until a key is set"
        );
    }
}

/// Opens the database, saying plainly when another daemon holds it.
async fn open_store(config: &Config) -> Result<Store> {
    match Store::open(&config.database_path, config.webhooks.url.clone()).await {
        Ok(s) => Ok(s),
        Err(StoreError::Locked(p)) => bail!(
            "another ninjapoll is running on this database (lock {} is held)",
            p.display()
        ),
        Err(e @ StoreError::TooNew { .. }) => {
            Err(anyhow::Error::new(e)
                .context(format!("opening {}", config.database_path.display())))
        }
        Err(StoreError::Other(e)) => Err(e),
    }
}

/// The socket to serve: the one systemd passed, else `socket.path` bound here (and removed
/// again when the returned guard drops).
fn take_socket(
    passed: Option<std::os::unix::net::UnixListener>,
    cfg: &SocketConfig,
) -> Result<(
    UnixListener,
    std::os::unix::net::SocketAddr,
    Option<SocketFile>,
)> {
    match passed {
        Some(passed) => {
            let address = passed
                .local_addr()
                .context("reading the address of the socket systemd passed")?;
            describe_passed_socket(&address, &cfg.path);
            // systemd owns the socket file: it stays when we stop, and connections made
            // meanwhile wait in its queue for the next start.
            let listener =
                UnixListener::from_std(passed).context("serving the socket systemd passed")?;
            Ok((listener, address, None))
        }
        None => {
            let listener = bind_socket(cfg)?;
            let address = std::os::unix::net::SocketAddr::from_pathname(&cfg.path)
                .with_context(|| format!("socket path {}", cfg.path.display()))?;
            Ok((listener, address, Some(SocketFile(cfg.path.clone()))))
        }
    }
}

/// The bounds of the socket's server and of the metrics listener (if configured).
struct ConnectionLimits {
    socket: server::Limits,
    metrics: Option<server::Limits>,
}

/// Splits the connections the open-files limit allows between the socket and the metrics
/// listener, whose connections come out of the same bound so that together they leave
/// the descriptor reserve free.
fn connection_limits(config: &Config) -> ConnectionLimits {
    let nofile = server::open_files_limit();
    let bound = server::effective_max_connections(config.socket.max_connections, nofile);
    let metrics_max = match config.metrics_listen {
        Some(_) => server::METRICS_MAX_CONNECTIONS.min(bound / 4).max(1),
        None => 0,
    };
    let max_connections = bound.saturating_sub(metrics_max).max(1);
    if bound < config.socket.max_connections {
        tracing::warn!(
            configured = config.socket.max_connections,
            max_connections,
            open_files_limit = nofile,
            "socket.max_connections lowered to leave file descriptors for checks and webhooks"
        );
    }
    let limits = |max_connections, allowed_uids, allowed_gids| server::Limits {
        max_connections,
        header_timeout: config.socket.header_timeout,
        request_timeout: config.socket.request_timeout,
        allowed_uids,
        allowed_gids,
    };
    ConnectionLimits {
        socket: limits(
            max_connections,
            config.socket.allowed_uids.clone(),
            config.socket.allowed_gids.clone(),
        ),
        metrics: config
            .metrics_listen
            .map(|_| limits(metrics_max, Vec::new(), Vec::new())),
    }
}

/// Serves the socket until `cancel` fires, and tells systemd READY=1 once a request on it
/// gets an HTTP answer.
async fn serve(
    listener: UnixListener,
    address: &std::os::unix::net::SocketAddr,
    app: axum::Router,
    limits: server::Limits,
    notifier: &Notifier,
    cancel: &CancellationToken,
) -> Result<()> {
    let served = async {
        server::serve(listener, app, limits, cancel.clone()).await;
        Ok::<(), anyhow::Error>(())
    };
    // Ready means ready to answer: the migrations ran (the store is open) and a request
    // on the socket gets an HTTP answer, which the server only gives while polled here.
    let ready = async {
        if !notifier.enabled() {
            return Ok(());
        }
        match probe(address).await {
            Ok(()) => {
                notifier.ready();
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "the socket does not answer; stopping"
                );
                cancel.cancel();
                Err(e)
            }
        }
    };
    let (served, ready) = tokio::join!(served, ready);
    served.and(ready)
}

/// What the workers share, and keep, across reloads.
pub(crate) struct Base {
    pub store: Store,
    pub telemetry: Arc<Telemetry>,
    /// Wakes the webhook worker (an event was queued or replayed).
    pub webhook_wake: Arc<Notify>,
    pub notifier: Notifier,
    /// The daemon's token: each generation of workers stops on a child of it.
    pub cancel: CancellationToken,
}

/// What runs on the configuration, started from it and stopped together: the scheduler
/// (with its recorder and ledger writer), the webhook worker, ledger maintenance and
/// retention. A reload stops one generation and starts the next.
pub(crate) struct Workers {
    cancel: CancellationToken,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
}

impl Workers {
    /// Starts the workers on `config`, each resuming from the database (the scheduler
    /// reads its ledger, learning, pending and watched payments; the webhook worker the
    /// outbox). Returns them with the scheduler's handle for the API.
    pub async fn start(config: &Config, base: &Base) -> Result<(Self, SchedulerHandle)> {
        let cancel = base.cancel.child_token();
        // Each account's event URL for payments without a callback is this configuration's
        // (pending events included): set before anything queues or delivers one.
        base.store.set_webhook_urls(webhook_urls(config));
        let store = base.store.clone();
        let mut workers = Workers {
            cancel: cancel.clone(),
            tasks: Vec::new(),
        };
        // Delivers what the outbox holds, events left by a previous run included.
        let webhooks = crate::webhooks::spawn(
            &config.webhooks,
            &config.accounts,
            store.clone(),
            base.telemetry.clone(),
            base.webhook_wake.clone(),
            cancel.clone(),
        )?;
        workers.tasks.push(("webhook worker", webhooks));
        let scheduler = scheduler::spawn(
            config,
            store.clone(),
            base.telemetry.clone(),
            base.webhook_wake.clone(),
            cancel.clone(),
            base.notifier.clone(),
        )
        .await;
        let (handle, task) = match scheduler {
            Ok(started) => started,
            Err(e) => {
                workers.stop().await;
                return Err(e);
            }
        };
        workers.tasks.push(("scheduler", task));
        let maintenance = maintain(
            store.clone(),
            config.ninjapay.budget_window,
            base.telemetry.clone(),
            cancel.clone(),
        );
        workers
            .tasks
            .push(("maintenance", tokio::spawn(maintenance)));
        let retention = crate::retention::run(
            store,
            crate::retention::Retention::of(config),
            base.telemetry.clone(),
            cancel,
        );
        workers.tasks.push(("retention", tokio::spawn(retention)));
        Ok((workers, handle))
    }

    /// Stops them and waits until they have: checks and deliveries in flight finish and
    /// are recorded, what did not start stays due in the database.
    pub async fn stop(self) {
        self.cancel.cancel();
        for (name, task) in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, task = name, "task failed");
            }
        }
    }
}

/// Says which socket is served under socket activation, and warns when clients that read
/// the configuration would look elsewhere.
fn describe_passed_socket(address: &std::os::unix::net::SocketAddr, configured: &Path) {
    use std::os::linux::net::SocketAddrExt;
    match address.as_pathname() {
        Some(p) if p == configured => {
            tracing::info!(socket = %p.display(), "serving the socket systemd passed (socket activation)");
        }
        Some(p) => tracing::warn!(
            socket = %p.display(), configured = %configured.display(),
            "serving the socket systemd passed, which is not socket.path: clients reading the configuration will not find it"
        ),
        None => tracing::info!(
            socket = %address.as_abstract_name().map(String::from_utf8_lossy).unwrap_or_default(),
            "serving the abstract socket systemd passed (socket activation)"
        ),
    }
}

/// One `GET /v1/health` on our own socket: done once the server answers with any HTTP
/// status (a peer list that leaves us out answers 403, which is an answer). Tries for a
/// few seconds: the server starts answering as soon as it is polled.
async fn probe(address: &std::os::unix::net::SocketAddr) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let once = || async {
        let std_stream = std::os::unix::net::UnixStream::connect_addr(address)?;
        std_stream.set_nonblocking(true)?;
        let mut stream = tokio::net::UnixStream::from_std(std_stream)?;
        stream
            .write_all(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        if head.starts_with(b"HTTP/1.") {
            Ok(())
        } else {
            Err(std::io::Error::other("not an HTTP answer"))
        }
    };
    let mut last = None;
    for _ in 0..50 {
        match tokio::time::timeout(Duration::from_secs(2), once()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = Some(e.to_string()),
            Err(_) => last = Some("no answer within 2 s".into()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no HTTP answer on the socket: {}", last.unwrap_or_default())
}

fn spawn_signal_handler(cancel: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            // Stopped some other way (e.g. the socket failed): nothing left to wait for.
            _ = cancel.cancelled() => {}
        }
        cancel.cancel();
    });
    Ok(())
}

/// Serves `/metrics` on a loopback TCP address (the configuration refuses any other) until
/// `cancel` fires.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    app: axum::Router,
    limits: server::Limits,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metrics.listen {addr}"))?;
    let bound = listener
        .local_addr()
        .context("reading the metrics address")?;
    tracing::info!(address = %bound, "serving /metrics over TCP");
    // The socket server's bounds (header and request timeouts, a connection bound), so
    // that idle or half-sent connections cannot exhaust the descriptors the API needs.
    Ok(tokio::spawn(server::serve(listener, app, limits, cancel)))
}

/// Prunes the budget ledger and checkpoints the WAL, now and then.
async fn maintain(
    store: Store,
    window: Duration,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
) {
    let every = window.clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        // A restart reads the ledger of the last two windows; a tenth of a window more
        // covers the budget's 2% skew margin. Proportional, not a fixed minute, so that
        // the ledger stays flat on compressed time as on real time.
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let keep = window_ms.saturating_mul(2).saturating_add(window_ms / 10);
        if let Err(e) = store.maintain(now_ms().saturating_sub(keep)).await {
            telemetry.database_error("maintenance");
            tracing::warn!(error = format!("{e:#}"), "database maintenance failed");
        }
    }
}

/// Each account's event URL, for the store's outbox.
pub fn webhook_urls(config: &Config) -> crate::store::WebhookUrls {
    config
        .accounts
        .iter()
        .filter_map(|(name, a)| a.webhooks.url.clone().map(|u| (name.clone(), u)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Watches the socket's directory while binding: no entry but a directory (the
    /// private 0700 one) is ever created there, and the socket only arrives by rename,
    /// with its mode already set.
    #[tokio::test]
    async fn the_socket_is_never_reachable_with_the_umask_mode() {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let path = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
        // SAFETY: plain system calls on a descriptor we own and valid pointers.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK) };
        assert!(fd >= 0);
        let wd = unsafe {
            libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_CREATE | libc::IN_MOVED_TO)
        };
        assert!(wd >= 0);
        let cfg = SocketConfig {
            path: dir.path().join("ninjapoll.sock"),
            mode: 0o600,
            allowed_uids: vec![],
            allowed_gids: vec![],
            max_connections: 1,
            header_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
        };
        let _listener = bind_socket(&cfg).unwrap();
        let mut buf = [0u8; 4096];
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        unsafe { libc::close(fd) };
        assert!(n > 0, "no events");
        let header = std::mem::size_of::<libc::inotify_event>();
        let mut events = Vec::new();
        let mut at = 0;
        while at + header <= n as usize {
            // SAFETY: the kernel wrote whole events; read_unaligned copes with the offset.
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
            let name = &buf[at + header..at + header + ev.len as usize];
            let name = String::from_utf8_lossy(name)
                .trim_end_matches('\0')
                .to_string();
            events.push((ev.mask, name));
            at += header + ev.len as usize;
        }
        for (mask, name) in &events {
            if mask & libc::IN_CREATE != 0 {
                assert!(
                    mask & libc::IN_ISDIR != 0,
                    "{name} appeared in the public directory: {events:?}"
                );
            }
        }
        assert!(
            events
                .iter()
                .any(|(m, n)| m & libc::IN_MOVED_TO != 0 && n == "ninjapoll.sock"),
            "{events:?}"
        );
        let mode = std::fs::metadata(&cfg.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
