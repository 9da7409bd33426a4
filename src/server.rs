//! The socket server: accepts connections on the Unix socket and serves the API on each,
//! within bounds a hostile or broken client cannot push past.
//!
//! - Peer credentials are checked at accept: a refused peer gets one `403` and the
//!   connection closes; it never reaches the API.
//! - A client gets `header_timeout` to send each request's headers (an idle keep-alive
//!   connection is closed after it too) and `request_timeout` for a whole request, its
//!   body included.
//! - At most `max_connections` at once (fewer when the file-descriptor limit is low, so
//!   checks and webhooks always have descriptors). When full, the connection idle the
//!   longest (between requests, or still sending its headers) is closed for the new one: a
//!   real client, which sends its request at once, is served however many others hang.
//! - The same bounds hold on the metrics' loopback TCP listener (no peer credentials
//!   there), with its own share of the connection bound, inside the same descriptor reserve.
//! - Accept errors (e.g. too many open files) are logged, at most every few seconds, and
//!   back off.
//! - On shutdown, idle connections and those still sending headers are closed at once;
//!   requests in progress get [`SHUTDOWN_GRACE`]; then every connection is dropped,
//!   however many clients are stuck.

use crate::api;
use crate::backoff::Backoff;
use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long requests in progress may finish after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Descriptors kept free of client connections: Ninjapay and webhook requests, the
/// database, the log.
pub const RESERVED_FDS: usize = 128;
/// How often a repeated accept error or refusal is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The server's bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    /// `socket.allowed_uids`, `socket.allowed_gids`.
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
}

/// What a server listens on: the API's Unix socket (peers checked at accept), or the
/// metrics' loopback TCP port.
pub enum Listener {
    Unix(UnixListener),
    Tcp(tokio::net::TcpListener),
}

impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Self {
        Listener::Unix(l)
    }
}

impl From<tokio::net::TcpListener> for Listener {
    fn from(l: tokio::net::TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(tokio::net::TcpStream),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Stream> {
        match self {
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| Stream::Tcp(s)),
        }
    }
}

/// Most connections to the metrics listener at once (a scraper needs one), taken out of
/// the socket's bound so that both stay inside the descriptor reserve.
pub const METRICS_MAX_CONNECTIONS: usize = 16;

/// The soft limit on open files of this process, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The connection bound in force: the configured one, lowered so that [`RESERVED_FDS`]
/// descriptors stay free under an open-files limit of `nofile`.
pub fn effective_max_connections(configured: usize, nofile: Option<usize>) -> usize {
    match nofile {
        Some(n) => configured.min(n.saturating_sub(RESERVED_FDS).max(8)),
        None => configured,
    }
}

/// One open connection, as the bound sees it.
struct Conn {
    /// Requests being handled now.
    requests: usize,
    /// Since when it has had none (or since accept).
    idle_since: Instant,
    /// Closes it at once.
    evict: CancellationToken,
    /// Told to close; it still holds its descriptor until its task ends.
    evicted: bool,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    conns: HashMap<u64, Conn>,
}

impl Registry {
    /// Makes room for one more connection under `max`: tells the connection idle the
    /// longest to close if need be. `false`: every connection is busy with a request.
    fn make_room(&mut self, max: usize) -> bool {
        if self.open() < max {
            return true;
        }
        let victim = self
            .conns
            .values_mut()
            .filter(|c| c.requests == 0 && !c.evicted)
            .min_by_key(|c| c.idle_since);
        match victim {
            Some(c) => {
                c.evicted = true;
                c.evict.cancel();
                true
            }
            None => false,
        }
    }

    /// Connections not told to close.
    fn open(&self) -> usize {
        self.conns.values().filter(|c| !c.evicted).count()
    }

    /// Whether descriptors are still held beyond `max`: a connection told to close keeps
    /// its descriptor until its task runs, and a burst of accepts would outrun those tasks
    /// into the open-files limit.
    fn over(&self, max: usize) -> bool {
        self.conns.len() > max
    }
}

/// Counts a request on its connection while it is handled.
struct InRequest(Arc<Mutex<Registry>>, u64);

impl InRequest {
    fn new(reg: &Arc<Mutex<Registry>>, id: u64) -> Self {
        if let Some(c) = lock(reg).conns.get_mut(&id) {
            c.requests += 1;
        }
        Self(reg.clone(), id)
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        if let Some(c) = lock(&self.0).conns.get_mut(&self.1) {
            c.requests = c.requests.saturating_sub(1);
            if c.requests == 0 {
                c.idle_since = Instant::now();
            }
        }
    }
}

fn lock(reg: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    reg.lock().unwrap_or_else(|e| e.into_inner())
}

/// A warning that repeats at most every [`LOG_EVERY`], counting what it left out.
struct Throttled {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
        }
    }

    /// Whether to log now; `suppressed` says how many were left out since the last one.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now < t + LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl Registry {
    /// Registers a new connection if there is room (evicting the longest idle one if need
    /// be): its id and the token that evicts it.
    fn admit(&mut self, max_connections: usize) -> Option<(u64, CancellationToken)> {
        if !self.make_room(max_connections) {
            return None;
        }
        self.next_id += 1;
        let id = self.next_id;
        let evict = CancellationToken::new();
        self.conns.insert(
            id,
            Conn {
                requests: 0,
                idle_since: Instant::now(),
                evict: evict.clone(),
                evicted: false,
            },
        );
        Some((id, evict))
    }
}

/// An admitted connection, before its task starts.
struct NewConn<'a> {
    app: &'a Router,
    limits: &'a Arc<Limits>,
    registry: &'a Arc<Mutex<Registry>>,
    id: u64,
    evict: CancellationToken,
    cancel: &'a CancellationToken,
}

impl NewConn<'_> {
    /// Starts the connection's task: served, or (a socket peer the rule refuses) refused.
    fn spawn(self, tasks: &mut JoinSet<()>, stream: Stream, refused_log: &mut Throttled) {
        let stream = match stream {
            Stream::Unix(s) => s,
            Stream::Tcp(s) => {
                tasks.spawn(connection(
                    s,
                    self.app.clone(),
                    self.limits.clone(),
                    self.registry.clone(),
                    self.id,
                    self.evict,
                    self.cancel.clone(),
                ));
                return;
            }
        };
        let cred = stream.peer_cred().ok();
        let peer = Peer {
            uid: cred.map(|c| c.uid()),
            gid: cred.map(|c| c.gid()),
        };
        if !peer_allowed(&self.limits.allowed_uids, &self.limits.allowed_gids, peer) {
            if let Some(suppressed) = refused_log.due() {
                tracing::warn!(uid = ?peer.uid, gid = ?peer.gid, suppressed, "refused a peer not in socket.allowed_uids/allowed_gids");
            }
            tasks.spawn(refuse(
                stream,
                peer,
                self.limits.header_timeout,
                self.registry.clone(),
                self.id,
                self.evict,
                self.cancel.clone(),
            ));
            return;
        }
        tasks.spawn(connection(
            stream,
            self.app.clone(),
            self.limits.clone(),
            self.registry.clone(),
            self.id,
            self.evict,
            self.cancel.clone(),
        ));
    }
}

/// Serves `app` on `listener` until `cancel` fires, then stops within [`SHUTDOWN_GRACE`]
/// (plus a moment to tear down).
pub async fn serve(
    listener: impl Into<Listener>,
    app: Router,
    limits: Limits,
    cancel: CancellationToken,
) {
    let listener = listener.into();
    let registry = Arc::new(Mutex::new(Registry::default()));
    let limits = Arc::new(limits);
    let mut tasks = JoinSet::new();
    let mut accept_backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    let mut accept_log = Throttled::new();
    let mut full_log = Throttled::new();
    let mut refused_log = Throttled::new();
    'serve: loop {
        while lock(&registry).over(limits.max_connections) && !tasks.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => break 'serve,
                _ = tasks.join_next() => {}
            }
        }
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok(stream) => {
                accept_backoff.reset();
                stream
            }
            Err(e) => {
                if let Some(suppressed) = accept_log.due() {
                    tracing::warn!(error = %e, suppressed, "accepting a socket connection failed");
                }
                // E.g. out of descriptors: retrying at once would spin.
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(accept_backoff.next_delay()) => {}
                }
                continue;
            }
        };
        let Some((id, evict)) = lock(&registry).admit(limits.max_connections) else {
            if let Some(suppressed) = full_log.due() {
                tracing::warn!(
                    max = limits.max_connections,
                    suppressed,
                    "every socket connection is busy with a request: a new one was closed"
                );
            }
            continue;
        };
        let conn = NewConn {
            app: &app,
            limits: &limits,
            registry: &registry,
            id,
            evict,
            cancel: &cancel,
        };
        conn.spawn(&mut tasks, stream, &mut refused_log);
    }
    drop(listener);
    // Each connection task stops within the grace by itself; the margin is for the rest.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), drain)
        .await
        .is_err()
    {
        tasks.shutdown().await;
    }
}

/// Serves one connection until it ends, is evicted, or the grace after shutdown ends.
async fn connection<S>(
    stream: S,
    app: Router,
    limits: Arc<Limits>,
    registry: Arc<Mutex<Registry>>,
    id: u64,
    evict: CancellationToken,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let hyper_app = TowerToHyperService::new(app);
    let reg = registry.clone();
    let request_timeout = limits.request_timeout;
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let guard = InRequest::new(&reg, id);
        let call = hyper::service::Service::call(&hyper_app, req.map(Body::new));
        async move {
            let response = match tokio::time::timeout(request_timeout, call).await {
                Ok(r) => r,
                Err(_) => Ok(api::request_timed_out(request_timeout)),
            };
            drop(guard);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = evict.cancelled() => {}
        _ = shutdown.cancelled() => {
            // Idle, or still sending its headers: nothing acknowledged is lost by closing
            // now. A request being handled gets the grace to finish.
            let busy = lock(&registry).conns.get(&id).is_some_and(|c| c.requests > 0);
            if busy {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await;
            }
        }
    }
    lock(&registry).conns.remove(&id);
}

/// Answers a refused peer's first request with a 403 and closes. It counts against the
/// connection bound like any connection (and is the first to go when room is needed).
async fn refuse(
    stream: UnixStream,
    peer: Peer,
    timeout: Duration,
    registry: Arc<Mutex<Registry>>,
    id: u64,
    evict: CancellationToken,
    shutdown: CancellationToken,
) {
    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
        Ok::<Response, Infallible>(api::peer_refused(peer.uid, peer.gid))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .keep_alive(false);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = tokio::time::timeout(timeout, conn) => {}
        _ = evict.cancelled() => {}
        _ = shutdown.cancelled() => {}
    }
    lock(&registry).conns.remove(&id);
}

/// The peer of a socket connection, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The connecting process's user id, when the kernel tells.
    pub uid: Option<u32>,
    /// The connecting process's primary group id, when the kernel tells.
    pub gid: Option<u32>,
}

/// Whether `peer` may use the API. With neither list set, the socket's file mode is the
/// only door. With either set, the peer's uid must be in `allowed_uids` or its primary gid
/// in `allowed_gids`; root is not special (list uid 0 to let it in), so a list means what
/// it says. A peer whose credentials cannot be read is refused.
pub fn peer_allowed(uids: &[u32], gids: &[u32], peer: Peer) -> bool {
    if uids.is_empty() && gids.is_empty() {
        return true;
    }
    peer.uid.is_some_and(|u| uids.contains(&u)) || peer.gid.is_some_and(|g| gids.contains(&g))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer {
            uid: Some(uid),
            gid: Some(gid),
        }
    }

    fn conn(requests: usize, idle_ms_ago: u64) -> Conn {
        Conn {
            requests,
            idle_since: Instant::now() - Duration::from_millis(idle_ms_ago),
            evict: CancellationToken::new(),
            evicted: false,
        }
    }

    #[tokio::test]
    async fn a_full_server_closes_the_longest_idle_connection_never_a_busy_one() {
        let mut reg = Registry::default();
        reg.conns.insert(1, conn(1, 900));
        reg.conns.insert(2, conn(0, 500));
        reg.conns.insert(3, conn(0, 800));
        assert!(reg.make_room(4), "room left");
        assert_eq!(reg.conns.len(), 3);
        let three = reg.conns[&3].evict.clone();
        assert!(reg.make_room(3));
        assert!(three.is_cancelled(), "the longest idle goes");
        reg.conns.insert(4, conn(0, 0));
        assert!(
            reg.over(3),
            "the evicted one holds its descriptor until its task ends"
        );
        assert!(
            reg.make_room(3),
            "the next idle one goes, not the evicted one again"
        );
        assert!(reg.conns[&2].evicted && !reg.conns[&4].evicted && !reg.conns[&1].evicted);
        reg.conns.remove(&3);
        reg.conns.remove(&2);
        assert!(!reg.over(3));
        reg.conns.get_mut(&4).unwrap().requests = 1;
        assert!(!reg.make_room(2), "every connection is busy");
        assert_eq!(reg.conns.len(), 2);
    }

    #[test]
    fn the_bound_leaves_descriptors_for_checks_and_webhooks() {
        assert_eq!(effective_max_connections(256, None), 256);
        assert_eq!(effective_max_connections(256, Some(1024)), 256);
        assert_eq!(effective_max_connections(256, Some(256)), 128);
        assert_eq!(effective_max_connections(256, Some(100)), 8);
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }

    #[test]
    fn no_lists_lets_everyone_in() {
        assert!(peer_allowed(&[], &[], peer(1234, 1234)));
    }

    #[test]
    fn lists_are_explicit_even_for_root() {
        assert!(!peer_allowed(&[1000], &[], peer(0, 0)));
        assert!(peer_allowed(&[0, 1000], &[], peer(0, 0)));
        assert!(peer_allowed(&[1000], &[], peer(1000, 5)));
        assert!(peer_allowed(&[], &[5], peer(1000, 5)));
        assert!(!peer_allowed(&[], &[5], peer(1000, 6)));
        let unknown = Peer {
            uid: None,
            gid: None,
        };
        assert!(!peer_allowed(&[1000], &[5], unknown));
    }
}
