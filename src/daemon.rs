//! Start-up and shutdown of `ninjapoll run`: open the store, bind the socket, start the
//! scheduler and the HTTP server, and stop them all on one cancellation token.

use crate::api::{self, AppState};
use crate::config::{Config, SocketConfig};
use crate::payment::now_ms;
use crate::scheduler;
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

/// What the service manager hands the daemon: where to send notifications, and the
/// listening socket under socket activation. The default is none of either (not run by
/// systemd, or in-process as `ninjapoll demo` runs it).
#[derive(Debug, Default)]
pub struct ServiceManager {
    /// `READY=1`, `STOPPING=1`, `STATUS=` and the watchdog.
    pub notifier: Notifier,
    /// The socket to serve instead of binding `socket.path`.
    pub listener: Option<std::os::unix::net::UnixListener>,
}

impl ServiceManager {
    /// What systemd passed this process, from its environment.
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            notifier: Notifier::from_env()?,
            listener: crate::systemd::listen_socket()?,
        })
    }
}

/// Runs the daemon until SIGINT or SIGTERM, as systemd (if it did) started it.
pub async fn run(config: Config) -> Result<()> {
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone())?;
    run_managed(config, cancel, ServiceManager::from_env()?).await
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
    let notifier = manager.notifier;
    {
        // systemd learns of the stop when it begins, not when the last check has drained.
        let (notifier, cancel) = (notifier.clone(), cancel.clone());
        tokio::spawn(async move {
            cancel.cancelled().await;
            notifier.stopping();
        });
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    if config.ninjapay.api_key.is_none() {
        tracing::warn!(
            "no API key configured (ninjapay.api_key or ninjapay.api_key_file): payments are \
             accepted and stored, but none is checked until a key is set"
        );
    }
    let config = Arc::new(config);
    let store = match Store::open(&config.database_path, config.webhooks.url.clone()).await {
        Ok(s) => s,
        Err(StoreError::Locked(p)) => bail!(
            "another ninjapoll is running on this database (lock {} is held)",
            p.display()
        ),
        Err(e @ StoreError::TooNew { .. }) => {
            return Err(anyhow::Error::new(e)
                .context(format!("opening {}", config.database_path.display())))
        }
        Err(StoreError::Other(e)) => return Err(e),
    };
    store.set_webhook_urls(webhook_urls(&config));
    let (listener, address, _socket_file) = match manager.listener {
        Some(passed) => {
            let address = passed
                .local_addr()
                .context("reading the address of the socket systemd passed")?;
            describe_passed_socket(&address, &config.socket.path);
            // systemd owns the socket file: it stays when we stop, and connections made
            // meanwhile wait in its queue for the next start.
            let listener =
                UnixListener::from_std(passed).context("serving the socket systemd passed")?;
            (listener, address, None)
        }
        None => {
            let listener = bind_socket(&config.socket)?;
            let address = std::os::unix::net::SocketAddr::from_pathname(&config.socket.path)
                .with_context(|| format!("socket path {}", config.socket.path.display()))?;
            (
                listener,
                address,
                Some(SocketFile(config.socket.path.clone())),
            )
        }
    };
    let telemetry = Arc::new(Telemetry::default());
    let webhook_wake = Arc::new(Notify::new());
    // Delivers what the outbox holds, events left by a previous run included.
    let webhook_worker = crate::webhooks::spawn(
        &config.webhooks,
        &config.accounts,
        store.clone(),
        telemetry.clone(),
        webhook_wake.clone(),
        cancel.clone(),
    )?;
    let (handle, scheduler_task) = scheduler::spawn(
        &config,
        store.clone(),
        telemetry.clone(),
        webhook_wake.clone(),
        cancel.clone(),
        notifier.clone(),
    )
    .await?;
    let maintenance = tokio::spawn(maintain(
        store.clone(),
        config.ninjapay.budget_window,
        telemetry.clone(),
        cancel.clone(),
    ));
    let retention = tokio::spawn(crate::retention::run(
        store.clone(),
        crate::retention::Retention::of(&config),
        telemetry.clone(),
        cancel.clone(),
    ));
    let state = AppState {
        store: store.clone(),
        scheduler: handle,
        config: config.clone(),
        telemetry,
        webhook_wake,
        bodies: Default::default(),
    };
    let nofile = server::open_files_limit();
    let bound = server::effective_max_connections(config.socket.max_connections, nofile);
    // The metrics listener's connections come out of the same bound, so that together
    // they leave the descriptor reserve free.
    let metrics_max = match config.metrics_listen {
        Some(_) => server::METRICS_MAX_CONNECTIONS.min(bound / 4).max(1),
        None => 0,
    };
    let max_connections = bound.saturating_sub(metrics_max).max(1);
    let metrics_server = match config.metrics_listen {
        Some(addr) => {
            let limits = server::Limits {
                max_connections: metrics_max,
                header_timeout: config.socket.header_timeout,
                request_timeout: config.socket.request_timeout,
                allowed_uids: Vec::new(),
                allowed_gids: Vec::new(),
            };
            let app = api::metrics_router(state.clone());
            Some(serve_metrics(addr, app, limits, cancel.clone()).await?)
        }
        None => None,
    };
    let app = api::router(state);
    if bound < config.socket.max_connections {
        tracing::warn!(
            configured = config.socket.max_connections,
            max_connections,
            open_files_limit = nofile,
            "socket.max_connections lowered to leave file descriptors for checks and webhooks"
        );
    }
    let limits = server::Limits {
        max_connections,
        header_timeout: config.socket.header_timeout,
        request_timeout: config.socket.request_timeout,
        allowed_uids: config.socket.allowed_uids.clone(),
        allowed_gids: config.socket.allowed_gids.clone(),
    };
    tracing::info!(
        socket = %config.socket.path.display(),
        database = %config.database_path.display(),
        max_connections,
        "ninjapoll is running"
    );
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
        match probe(&address).await {
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
    let served = served.and(ready);
    cancel.cancel();
    if let Err(e) = scheduler_task.await {
        tracing::error!(error = %e, "scheduler task failed");
    }
    if let Err(e) = webhook_worker.await {
        tracing::error!(error = %e, "webhook worker failed");
    }
    let _ = maintenance.await;
    let _ = retention.await;
    if let Some(task) = metrics_server {
        let _ = task.await;
    }
    store.close().await;
    tracing::info!("ninjapoll stopped");
    served
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
