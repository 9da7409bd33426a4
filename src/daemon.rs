//! Start-up and shutdown of `ninjapoll run`: open the store, bind the socket, start the
//! scheduler and the HTTP server, and stop them all on one cancellation token.

use crate::api::{self, AppState};
use crate::config::{Config, SocketConfig};
use crate::payment::now_ms;
use crate::scheduler;
use crate::store::{Store, StoreError};
use crate::telemetry::Telemetry;
use anyhow::{bail, Context, Result};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The peer of a socket connection, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        let cred = stream.io().peer_cred().ok();
        Peer {
            uid: cred.map(|c| c.uid()),
            gid: cred.map(|c| c.gid()),
        }
    }
}

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
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another ninjapoll is already listening on {}; stop it first (or set socket.path)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(_) => {}
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(cfg.mode))
        .with_context(|| format!("setting mode of {}", path.display()))?;
    Ok(listener)
}

#[derive(Clone)]
struct Guard {
    uids: Arc<Vec<u32>>,
    gids: Arc<Vec<u32>>,
}

async fn peer_guard(
    State(g): State<Guard>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    if g.uids.is_empty() && g.gids.is_empty() {
        return next.run(req).await;
    }
    let uid_ok = peer.uid.is_some_and(|u| u == 0 || g.uids.contains(&u));
    let gid_ok = peer.gid.is_some_and(|gid| g.gids.contains(&gid));
    if uid_ok || gid_ok {
        next.run(req).await
    } else {
        api::ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this user is not in socket.allowed_uids or socket.allowed_gids",
        )
        .into_response()
    }
}

/// Removes the socket file on drop, so it goes on every clean exit path.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<()> {
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone())?;
    run_until(config, cancel).await
}

/// Runs the daemon until `cancel` fires.
pub async fn run_until(config: Config, cancel: CancellationToken) -> Result<()> {
    let config = Arc::new(config);
    let store = match Store::open(&config.database_path, config.webhooks.url.clone()).await {
        Ok(s) => s,
        Err(StoreError::Locked(p)) => bail!(
            "another ninjapoll is running on this database (lock {} is held)",
            p.display()
        ),
        Err(StoreError::Other(e)) => return Err(e),
    };
    let listener = bind_socket(&config.socket)?;
    let _socket_file = SocketFile(config.socket.path.clone());
    let telemetry = Arc::new(Telemetry::default());
    let events = Arc::new(Notify::new());
    // Delivers what the outbox holds, events left by a previous run included.
    let webhook_worker = crate::webhooks::spawn(
        &config.webhooks,
        store.clone(),
        telemetry.clone(),
        events.clone(),
        cancel.clone(),
    )?;
    let (handle, scheduler_task) = scheduler::spawn(
        &config,
        store.clone(),
        telemetry.clone(),
        events.clone(),
        cancel.clone(),
    )
    .await?;
    let maintenance = tokio::spawn(maintain(
        store.clone(),
        config.ninjapay.budget_window,
        cancel.clone(),
    ));
    let state = AppState {
        store: store.clone(),
        scheduler: handle,
        config: config.clone(),
        telemetry,
        webhook_wake: events.clone(),
    };
    let guard = Guard {
        uids: Arc::new(config.socket.allowed_uids.clone()),
        gids: Arc::new(config.socket.allowed_gids.clone()),
    };
    let app = api::router(state)
        .layer(middleware::from_fn_with_state(guard, peer_guard))
        .into_make_service_with_connect_info::<Peer>();
    tracing::info!(
        socket = %config.socket.path.display(),
        database = %config.database_path.display(),
        "ninjapoll is running"
    );
    let server =
        axum::serve(listener, app).with_graceful_shutdown(cancel.clone().cancelled_owned());
    let served = server.await.context("serving the socket API");
    cancel.cancel();
    if let Err(e) = scheduler_task.await {
        tracing::error!(error = %e, "scheduler task failed");
    }
    if let Err(e) = webhook_worker.await {
        tracing::error!(error = %e, "webhook worker failed");
    }
    let _ = maintenance.await;
    store.close().await;
    tracing::info!("ninjapoll stopped");
    served
}

fn spawn_signal_handler(cancel: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        cancel.cancel();
    });
    Ok(())
}

/// Prunes the budget ledger and checkpoints the WAL, now and then.
async fn maintain(store: Store, window: Duration, cancel: CancellationToken) {
    let every = window.clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let keep = 2 * window.as_millis() as i64 + 60_000;
        if let Err(e) = store.maintain(now_ms() - keep).await {
            tracing::warn!(error = format!("{e:#}"), "database maintenance failed");
        }
    }
}

/// The socket path a client uses: `--socket`, else the configuration's.
pub fn client_socket(explicit: Option<&Path>, config: Option<&Config>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| config.map(|c| c.socket.path.clone()))
        .unwrap_or_else(|| PathBuf::from("ninjapoll.sock"))
}
