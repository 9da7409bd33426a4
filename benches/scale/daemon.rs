//! The daemon as a child process: its configuration file, its start timed to `READY=1`
//! (a datagram socket passed as `$NOTIFY_SOCKET`, as systemd does), its stop by SIGTERM,
//! and its CPU time and memory from /proc.

use crate::args::{account, key, Args};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The daemon's keys at the fake.
pub const KEY_PREFIX: &str = "scale-key";

/// Where the daemon's files go, and where its metrics are served.
pub struct Layout {
    pub config: PathBuf,
    pub socket: PathBuf,
    pub notify: PathBuf,
    pub log: PathBuf,
    pub metrics: String,
}

/// Writes the configuration: `[ninjapay]` is the account `default`, one `[accounts.aNNNN]`
/// per other account; the default ladder; no webhooks; metrics on a free loopback port.
pub fn write_config(dir: &Path, fake_url: &str, a: &Args) -> Result<Layout> {
    // A port the kernel just handed out and we let go: free unless something races us.
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port();
    let layout = Layout {
        config: dir.join("ninjapoll.toml"),
        socket: dir.join("ninjapoll.sock"),
        notify: dir.join("notify.sock"),
        log: dir.join("daemon.log"),
        metrics: format!("http://127.0.0.1:{port}/metrics"),
    };
    let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let window = humantime::format_duration(a.window);
    let mut t = String::new();
    writeln!(t, "[database]\npath = {}", q(&dir.join("ninjapoll.db")))?;
    writeln!(t, "[socket]\npath = {}", q(&layout.socket))?;
    writeln!(t, "[log]\nlevel = \"warn\"")?;
    writeln!(t, "[metrics]\nlisten = \"127.0.0.1:{port}\"")?;
    writeln!(
        t,
        "[ninjapay]\napi_key = \"{}\"\nprod_base_url = \"{fake_url}\"\napi_base_url = \"{fake_url}\"\nbudget_requests = {}\nbudget_window = \"{window}\"",
        key(KEY_PREFIX, 0),
        a.budget
    )?;
    for i in 1..a.accounts {
        writeln!(
            t,
            "[accounts.{}]\napi_key = \"{}\"",
            account(i),
            key(KEY_PREFIX, i)
        )?;
    }
    // Owner-only, as the daemon asks of a file that holds keys (else it warns per key).
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&layout.config)
        .context("creating the daemon's configuration")?;
    file.write_all(t.as_bytes())
        .context("writing the daemon's configuration")?;
    Ok(layout)
}

/// A running daemon; killed (SIGKILL) and reaped if dropped before [`Daemon::stop`].
pub struct Daemon {
    child: Option<Child>,
    pub pid: i32,
    /// From the spawn to `READY=1`.
    pub ready_after: Duration,
    /// Reads the notifications after `READY=1`.
    notify: Option<tokio::task::JoinHandle<()>>,
    /// The largest notification datagram, bytes.
    pub largest_notify: Arc<AtomicUsize>,
}

impl Daemon {
    /// Starts `ninjapoll run` and waits (at most `limit`) for its `READY=1`.
    pub async fn start(layout: &Layout, limit: Duration) -> Result<Daemon> {
        let _ = std::fs::remove_file(&layout.notify);
        let notify =
            tokio::net::UnixDatagram::bind(&layout.notify).context("binding the notify socket")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&layout.log)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ninjapoll"));
        cmd.arg("--config")
            .arg(&layout.config)
            .arg("run")
            .env("NOTIFY_SOCKET", &layout.notify)
            .env_remove("NINJAPOLL_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_parent(&mut cmd);
        let started = Instant::now();
        let child = cmd.spawn().context("starting the daemon")?;
        let pid = i32::try_from(child.id()).context("the daemon's pid")?;
        let mut daemon = Daemon {
            child: Some(child),
            pid,
            ready_after: Duration::ZERO,
            notify: None,
            largest_notify: Arc::new(AtomicUsize::new(0)),
        };
        let mut buf = vec![0u8; 1 << 20];
        let wait = async {
            loop {
                let n = notify.recv(&mut buf).await?;
                daemon.largest_notify.fetch_max(n, Ordering::Relaxed);
                let text = String::from_utf8_lossy(&buf[..n]);
                if text.lines().any(|l| l == "READY=1") {
                    return anyhow::Ok(());
                }
            }
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(r) => r?,
            Err(_) => bail!("the daemon sent no READY=1 within {limit:?}"),
        }
        daemon.ready_after = started.elapsed();
        // Keep reading what it sends (STATUS= every second) so that no send of it fails.
        let largest = daemon.largest_notify.clone();
        daemon.notify = Some(tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 20];
            while let Ok(n) = notify.recv(&mut buf).await {
                largest.fetch_max(n, Ordering::Relaxed);
            }
        }));
        Ok(daemon)
    }

    /// SIGTERM, then waits (at most `limit`, then SIGKILL) for the exit.
    pub async fn stop(mut self, limit: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("the daemon was already stopped");
        };
        // SAFETY: kill(2) on a child we have not reaped yet, so the pid is still ours.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > until {
                let _ = child.kill();
                let status = child.wait()?;
                bail!("the daemon did not stop within {limit:?} of SIGTERM (killed: {status})");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(task) = self.notify.take() {
            task.abort();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The child gets SIGKILL if this process dies first, so no run leaves a daemon behind.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe, as a pre_exec closure must be.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// User plus system CPU time of process `pid` (`self` for this one).
pub fn cpu_time(pid: &str) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command's closing parenthesis; utime and stime are 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc stat without a command")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("/proc stat field")
    };
    // Field n of stat(5) is index n - 3 here (pid and comm come before the parenthesis).
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|h| *h > 0)
        .unwrap_or(100);
    Ok(Duration::from_micros(total * 1_000_000 / hz))
}

/// `(VmHWM, VmRSS)` of process `pid`, in MB (10^6 bytes).
pub fn memory_mb(pid: i32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{line:?}"))?;
        Ok(kib * 1024.0 / 1e6)
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}
