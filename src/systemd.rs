//! The parts of systemd's service protocol ninjapoll speaks, written out rather than pulled
//! in as a crate: readiness and status notifications (`sd_notify(3)`: one datagram to
//! `$NOTIFY_SOCKET`), the watchdog (`WATCHDOG=1` at least every `$WATCHDOG_USEC`), and
//! socket activation (`sd_listen_fds(3)`: the listening socket passed as fd 3).
//!
//! Parsing the environment is pure and unit-tested; the rest is a few system calls. Without
//! systemd (no variables set) every call here is a no-op.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::sync::Arc;
use std::time::Duration;

/// The first file descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Where `$NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyTarget {
    /// A socket in the file system.
    Path(std::path::PathBuf),
    /// A socket in the abstract namespace (`@name`; the name without the `@`).
    Abstract(Vec<u8>),
}

/// Reads `$NOTIFY_SOCKET`: an absolute path, or `@` for the abstract namespace. Anything
/// else (empty, relative, a `vsock:` address) is not a target we can reach.
pub fn parse_notify_socket(value: &OsStr) -> Option<NotifyTarget> {
    let bytes = value.as_bytes();
    match bytes.first()? {
        b'/' => Some(NotifyTarget::Path(value.into())),
        b'@' if bytes.len() > 1 => Some(NotifyTarget::Abstract(bytes[1..].to_vec())),
        _ => None,
    }
}

/// The watchdog interval from `$WATCHDOG_USEC`, if it is meant for this process: systemd
/// sets `$WATCHDOG_PID` to the main process, and a child that inherited the variables
/// must not ping on its behalf. No `$WATCHDOG_PID` means it is ours (as `sd_watchdog_enabled`).
pub fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    match pid {
        Some(p) if p.trim().parse::<u32>().ok() != Some(own_pid) => None,
        _ => Some(Duration::from_micros(usec)),
    }
}

/// How many sockets systemd passed, from `$LISTEN_PID` and `$LISTEN_FDS`: none unless
/// `$LISTEN_PID` names this process (the variables may have been inherited).
pub fn parse_listen_fds(pid: Option<&str>, fds: Option<&str>, own_pid: u32) -> usize {
    match (pid, fds) {
        (Some(p), Some(n)) if p.trim().parse::<u32>().ok() == Some(own_pid) => {
            n.trim().parse().unwrap_or(0)
        }
        _ => 0,
    }
}

/// Sends notifications to the service manager. Cheap to clone; without `$NOTIFY_SOCKET`
/// it sends nothing.
#[derive(Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Channel>>,
    watchdog: Option<Duration>,
}

struct Channel {
    socket: UnixDatagram,
    to: SocketAddr,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("enabled", &self.inner.is_some())
            .field("watchdog", &self.watchdog)
            .finish()
    }
}

impl Notifier {
    /// The notifier the environment asks for. A `$NOTIFY_SOCKET` that cannot be used is
    /// an error: under `Type=notify` systemd would otherwise wait for a readiness that
    /// never comes and kill us at the start timeout.
    pub fn from_env() -> Result<Self> {
        let own = std::process::id();
        let var = |k: &str| std::env::var(k).ok();
        let watchdog = parse_watchdog(
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            own,
        );
        let Some(raw) = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
            return Ok(Self::default());
        };
        let target = parse_notify_socket(&raw)
            .with_context(|| format!("NOTIFY_SOCKET={raw:?} is neither a path nor @name"))?;
        let to = match &target {
            NotifyTarget::Path(p) => SocketAddr::from_pathname(p),
            NotifyTarget::Abstract(name) => SocketAddr::from_abstract_name(name),
        }
        .with_context(|| format!("NOTIFY_SOCKET={raw:?}"))?;
        let socket = UnixDatagram::unbound().context("creating the notification socket")?;
        // A full queue at the service manager must never stall the daemon: a lost status
        // line is replaced by the next one, a lost ping by the next ping.
        socket
            .set_nonblocking(true)
            .context("setting the notification socket non-blocking")?;
        Ok(Self {
            inner: Some(Arc::new(Channel { socket, to })),
            watchdog,
        })
    }

    /// Whether anything is listening for notifications.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The watchdog interval systemd enforces (`WatchdogSec=`), if any. The loop that
    /// feeds it must ping at least this often; it wakes at half of it.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled())
    }

    /// Sends one notification (`KEY=value` lines).
    pub fn notify(&self, message: &str) {
        let Some(ch) = &self.inner else { return };
        if let Err(e) = ch.socket.send_to_addr(message.as_bytes(), &ch.to) {
            tracing::warn!(error = %e, message = message.lines().next().unwrap_or(""), "could not notify systemd");
        }
    }

    /// `READY=1`: start-up is complete.
    pub fn ready(&self) {
        self.notify("READY=1");
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=`: a reload (SIGHUP) began; [`Notifier::ready`]
    /// ends it. systemd (`Type=notify`) needs the time to tell this reload's message from
    /// an earlier one.
    pub fn reloading(&self) {
        if let Some(usec) = monotonic_usec() {
            self.notify(&reloading_message(usec));
        }
    }

    /// `STOPPING=1`: shutting down.
    pub fn stopping(&self) {
        self.notify("STOPPING=1");
    }

    /// `STATUS=…`: one line for `systemctl status`.
    pub fn status(&self, line: &str) {
        // A newline would end the STATUS= assignment and start another.
        self.notify(&format!("STATUS={}", line.replace('\n', " ")));
    }

    /// `WATCHDOG=1`: the caller's loop is alive.
    pub fn ping(&self) {
        if self.watchdog().is_some() {
            self.notify("WATCHDOG=1");
        }
    }
}

/// The notification that starts a reload, at `usec` on `CLOCK_MONOTONIC`.
pub fn reloading_message(usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={usec}")
}

/// `CLOCK_MONOTONIC` in microseconds, the clock `MONOTONIC_USEC=` is read on.
fn monotonic_usec() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) } != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let micros = u64::try_from(ts.tv_nsec).ok()? / 1_000;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// Feeds the watchdog from a loop: the loop calls [`Watchdog::turned`] whenever it turns
/// and caps its sleep with [`Watchdog::max_sleep`]. A loop that stops turning stops the
/// pings, and systemd restarts the service.
#[derive(Debug)]
pub struct Watchdog {
    notifier: Notifier,
    interval: Duration,
    last: Option<tokio::time::Instant>,
}

impl Watchdog {
    /// The watchdog for `notifier`, when systemd asked for one.
    pub fn new(notifier: &Notifier) -> Option<Self> {
        Some(Self {
            interval: notifier.watchdog()?,
            notifier: notifier.clone(),
            last: None,
        })
    }

    /// The longest the loop may sleep: half the interval, so that one late wake-up still
    /// pings in time.
    pub fn max_sleep(&self) -> Duration {
        self.interval / 2
    }

    /// The loop turned at `now`: pings unless it did so recently (a busy loop turns
    /// thousands of times a second; a ping every quarter interval is plenty).
    pub fn turned(&mut self, now: tokio::time::Instant) {
        if ping_due(self.last, now, self.interval) {
            self.last = Some(now);
            self.notifier.ping();
        }
    }
}

/// Whether a ping is due at `now` after the last one: a quarter of the interval apart, so
/// with wake-ups at most half an interval apart pings are never more than about half an
/// interval apart either.
fn ping_due(
    last: Option<tokio::time::Instant>,
    now: tokio::time::Instant,
    interval: Duration,
) -> bool {
    last.is_none_or(|l| now.saturating_duration_since(l) >= interval / 4)
}

/// The listening socket systemd passed (socket activation), if it passed one to this
/// process. Exactly one stream socket of the Unix family listening is accepted: anything
/// else is a unit misconfiguration, reported rather than served badly.
pub fn listen_socket() -> Result<Option<UnixListener>> {
    let var = |k: &str| std::env::var(k).ok();
    let n = parse_listen_fds(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        std::process::id(),
    );
    match n {
        0 => Ok(None),
        1 => adopt(LISTEN_FDS_START).map(Some),
        n => bail!(
            "systemd passed {n} sockets (LISTEN_FDS={n}); ninjapoll serves one: give the .socket unit one ListenStream="
        ),
    }
}

/// Takes fd `fd` as our listener after checking what it is.
fn adopt(fd: RawFd) -> Result<UnixListener> {
    let int_opt = |level, name| -> std::io::Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are valid for writes of the sizes given.
        let r = unsafe { libc::getsockopt(fd, level, name, (&raw mut v).cast(), &raw mut len) };
        if r == 0 {
            Ok(v)
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let domain = int_opt(libc::SOL_SOCKET, libc::SO_DOMAIN)
        .with_context(|| format!("fd {fd} passed by systemd (LISTEN_FDS) is not a socket"))?;
    let kind = int_opt(libc::SOL_SOCKET, libc::SO_TYPE)?;
    let listening = int_opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)?;
    if domain != libc::AF_UNIX || kind != libc::SOCK_STREAM || listening == 0 {
        bail!(
            "the socket systemd passed is not a listening Unix stream socket; use ListenStream=/path in the .socket unit"
        );
    }
    // SAFETY: systemd handed this descriptor to us, nothing else in the process owns it,
    // and it was just checked to be a listening Unix stream socket.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    // Passed descriptors come without close-on-exec; ours must not leak into a child.
    // SAFETY: plain fcntl on a descriptor we own.
    let cloexec = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    if cloexec < 0 {
        return Err(std::io::Error::last_os_error()).context("setting FD_CLOEXEC on the socket");
    }
    listener
        .set_nonblocking(true)
        .context("setting the passed socket non-blocking")?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_paths_and_abstract_names() {
        assert_eq!(
            parse_notify_socket(OsStr::new("/run/systemd/notify")),
            Some(NotifyTarget::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_notify_socket(OsStr::new("@/org/freedesktop/systemd1/notify/123")),
            Some(NotifyTarget::Abstract(
                b"/org/freedesktop/systemd1/notify/123".to_vec()
            ))
        );
        assert_eq!(parse_notify_socket(OsStr::new("")), None);
        assert_eq!(parse_notify_socket(OsStr::new("@")), None);
        assert_eq!(parse_notify_socket(OsStr::new("relative/sock")), None);
        assert_eq!(parse_notify_socket(OsStr::new("vsock:2:1234")), None);
    }

    #[test]
    fn watchdog_only_for_the_named_process() {
        let half_s = Some(Duration::from_millis(500));
        assert_eq!(parse_watchdog(Some("500000"), None, 42), half_s);
        assert_eq!(parse_watchdog(Some("500000"), Some("42"), 42), half_s);
        assert_eq!(parse_watchdog(Some("500000"), Some("43"), 42), None);
        assert_eq!(parse_watchdog(Some("0"), None, 42), None);
        assert_eq!(parse_watchdog(Some("soon"), None, 42), None);
        assert_eq!(parse_watchdog(None, Some("42"), 42), None);
    }

    #[test]
    fn listen_fds_only_for_the_named_process() {
        assert_eq!(parse_listen_fds(Some("42"), Some("1"), 42), 1);
        assert_eq!(parse_listen_fds(Some("42"), Some("2"), 42), 2);
        assert_eq!(parse_listen_fds(Some("41"), Some("1"), 42), 0);
        assert_eq!(parse_listen_fds(None, Some("1"), 42), 0);
        assert_eq!(parse_listen_fds(Some("42"), None, 42), 0);
        assert_eq!(parse_listen_fds(Some("42"), Some("x"), 42), 0);
    }

    #[test]
    fn pings_a_quarter_interval_apart() {
        let t = tokio::time::Instant::now();
        let i = Duration::from_millis(800);
        assert!(ping_due(None, t, i));
        assert!(!ping_due(Some(t), t + Duration::from_millis(199), i));
        assert!(ping_due(Some(t), t + Duration::from_millis(200), i));
    }

    #[test]
    fn a_reload_is_announced_with_the_monotonic_clock() {
        assert_eq!(
            reloading_message(1_234_567),
            "RELOADING=1\nMONOTONIC_USEC=1234567"
        );
        let a = monotonic_usec().expect("CLOCK_MONOTONIC");
        let b = monotonic_usec().expect("CLOCK_MONOTONIC");
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn a_notifier_without_systemd_sends_nothing() {
        let n = Notifier::default();
        assert!(!n.enabled());
        assert_eq!(n.watchdog(), None);
        assert!(Watchdog::new(&n).is_none());
        n.ready(); // no socket: nothing to fail
    }
}
