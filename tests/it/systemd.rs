//! systemd integration without systemd: the real binary under the notification protocol
//! (a datagram socket of the test's as `$NOTIFY_SOCKET`), under socket activation (by
//! `systemd-socket-activate`, and by handing it a listening fd as systemd does), and with
//! stderr as the journal stream (`$JOURNAL_STREAM`).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ninjapoll_test_support::*;

/// Bound of every wait.
const WAIT: Duration = Duration::from_secs(10);

/// The service manager's end of `$NOTIFY_SOCKET`: records every datagram with its arrival.
struct Manager {
    got: Arc<Mutex<Vec<(Instant, String)>>>,
    _dir: tempfile::TempDir,
}

impl Manager {
    /// Binds a datagram socket, at a path or (`abstract_name`) in the abstract namespace;
    /// returns it with the value for `$NOTIFY_SOCKET`.
    fn bind(abstract_name: bool) -> (Manager, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (socket, env) = if abstract_name {
            let name = format!(
                "ninjapoll-test-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            );
            let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
            let s = UnixDatagram::bind_addr(&addr).expect("bind abstract");
            (s, format!("@{name}"))
        } else {
            let path = dir.path().join("notify");
            let s = UnixDatagram::bind(&path).expect("bind notify socket");
            (s, path.to_string_lossy().into_owned())
        };
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        // Ends when the test process does; a detached reader costs nothing meanwhile.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        (Manager { got, _dir: dir }, env)
    }

    fn messages(&self) -> Vec<(Instant, String)> {
        self.got.lock().unwrap().clone()
    }

    /// Waits for a message for which `pred` holds; returns it.
    async fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> (Instant, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(m) = self.messages().into_iter().find(|(_, m)| pred(m)) {
                return m;
            }
            if Instant::now() > deadline {
                panic!("no {what} within {WAIT:?}; got {:?}", self.texts());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn texts(&self) -> Vec<String> {
        self.messages().into_iter().map(|(_, m)| m).collect()
    }
}

fn notified(env: &str, watchdog_usec: Option<u64>) -> DaemonConfig {
    let mut cfg = DaemonConfig::default();
    cfg.env.push(("NOTIFY_SOCKET".into(), env.into()));
    if let Some(us) = watchdog_usec {
        cfg.env.push(("WATCHDOG_USEC".into(), us.to_string()));
    }
    cfg
}

#[tokio::test]
async fn notify_ready_status_watchdog_and_stopping() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let (manager, env) = Manager::bind(false);
    // Idle, the scheduler's loop would turn once a second (its tick): too rarely for this
    // watchdog, which makes it wake at least every half second.
    let watchdog = Duration::from_millis(1_000);
    let mut d = spawn_daemon(
        &fake.base_url(),
        notified(&env, Some(watchdog.as_micros() as u64)),
    )
    .await;

    let (ready_at, _) = manager.wait_for("READY=1", |m| m == "READY=1").await;
    // Ready means the socket answers: at once, no retry.
    let (code, _) = d.request("GET", "/v1/health", None).await;
    assert_eq!(code, 200);

    // Pings, idle, for three watchdog periods: never a gap systemd would kill for.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let pings: Vec<Instant> = manager
        .messages()
        .into_iter()
        .filter(|(at, m)| m == "WATCHDOG=1" && *at >= ready_at)
        .map(|(at, _)| at)
        .collect();
    assert!(
        pings.len() >= 5,
        "{} pings in 3 s: {:?}",
        pings.len(),
        manager.texts()
    );
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    let widest = gaps.iter().max().copied().unwrap_or_default();
    assert!(
        widest < watchdog,
        "a gap of {widest:?} between pings exceeds WatchdogSec={watchdog:?}: {gaps:?}"
    );

    // The status line follows the scheduler: one payment pending (its script never flips).
    fake.script("p2p", "S1", Script::Sequence(Vec::new()));
    let (code, _) = d.enqueue("p2p", "S1", None).await;
    assert_eq!(code, 201);
    let (_, status) = manager
        .wait_for("STATUS= with the payment", |m| {
            m.starts_with("STATUS=1 pending; budget ")
        })
        .await;
    assert!(status.contains("/100000 per 10m"), "{status}");

    let exit = d.stop().await.expect("was running");
    assert!(exit.success(), "{exit}");
    manager.wait_for("STOPPING=1", |m| m == "STOPPING=1").await;
    let texts = manager.texts();
    assert_eq!(
        texts.iter().filter(|m| *m == "READY=1").count(),
        1,
        "{texts:?}"
    );
    let ready = texts.iter().position(|m| m == "READY=1");
    let stopping = texts.iter().position(|m| m == "STOPPING=1");
    assert!(ready < stopping, "{texts:?}");
}

#[tokio::test]
async fn notify_socket_in_the_abstract_namespace() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let (manager, env) = Manager::bind(true);
    let mut d = spawn_daemon(&fake.base_url(), notified(&env, None)).await;
    manager.wait_for("READY=1", |m| m == "READY=1").await;
    d.stop().await;
    manager.wait_for("STOPPING=1", |m| m == "STOPPING=1").await;
    // No WatchdogSec=, no pings.
    assert!(
        !manager.texts().iter().any(|m| m == "WATCHDOG=1"),
        "{:?}",
        manager.texts()
    );
}

/// `systemd-socket-activate` (from the systemd package) listens on the socket and starts
/// the daemon on the first connection, with the socket as fd 3. The same hand-over without
/// the tool is `a_passed_socket_keeps_connections_across_a_restart`, in every `cargo test`;
/// this one needs the tool, so it is ignored there and `.ci/run` runs it (`-- --ignored`).
#[tokio::test]
#[ignore = "needs systemd-socket-activate (the systemd package); .ci/run runs it"]
async fn socket_activation_by_systemd_socket_activate() {
    let tool = "/usr/bin/systemd-socket-activate";
    assert!(
        std::path::Path::new(tool).exists(),
        "{tool} is missing: install the systemd package (.ci/run does)"
    );
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let cfg = DaemonConfig {
        launcher: vec![tool.into(), "-l".into(), "{socket}".into()],
        ..DaemonConfig::default()
    };
    let mut d = spawn_daemon(&fake.base_url(), cfg).await;
    fake.script("p2p", "A1", Script::pending_then(Kind::P2p, 1, "approved"));
    let (code, _) = d.enqueue("p2p", "A1", None).await;
    assert_eq!(code, 201);
    d.wait_final("p2p", "A1", WAIT).await;
    assert!(
        d.log().contains("serving the socket systemd passed"),
        "{}",
        d.log()
    );
    let exit = d.stop().await.expect("was running");
    assert!(exit.success(), "{exit}");
    // The socket file is the activator's: left in place, not removed as our own would be.
    assert!(d.socket_path().exists(), "the passed socket was removed");
}

/// The fd handed over as systemd does, by the test: the daemon serves it, leaves it open
/// across a restart, and a connection made while it was down is answered after.
#[tokio::test]
async fn a_passed_socket_keeps_connections_across_a_restart() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    // The harness's socket path is inside its own temporary directory, known only once it
    // exists: bind there after a first, ordinary start.
    let mut d = spawn_daemon(&fake.base_url(), DaemonConfig::default()).await;
    d.stop().await;
    assert!(
        !d.socket_path().exists(),
        "a clean exit removes our own socket"
    );
    let listener = Arc::new(UnixListener::bind(d.socket_path()).expect("bind"));
    d.set_passed_listener(listener.clone());
    d.restart().await;
    let (code, _) = d.request("GET", "/v1/health", None).await;
    assert_eq!(code, 200);
    assert!(d.log().contains("serving the socket systemd passed"));

    d.stop().await;
    assert!(d.socket_path().exists(), "the passed socket stays");
    // Down, the socket still takes connections (its queue), as under systemd.
    let mut waiting = UnixStream::connect(d.socket_path()).expect("queued connection");
    std::io::Write::write_all(
        &mut waiting,
        b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .expect("write");
    d.restart().await;
    waiting.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut waiting, &mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Under journald: `<N>` priorities, no timestamps, and every check and delivery on a line
/// naming the payment's kind and id.
#[tokio::test]
async fn journald_lines_have_priorities_and_name_each_payment() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let receiver = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let cfg = DaemonConfig {
        webhooks: Some((receiver.url().into(), WEBHOOK_SECRET.into())),
        env: vec![("RUST_LOG".into(), "info,ninjapoll=debug".into())],
        ..DaemonConfig::default()
    };
    let mut d = spawn_daemon(&fake.base_url(), cfg).await;
    // The daemon's stderr is the harness's log file: name it as systemd names the journal
    // stream, and start again.
    let meta = std::fs::metadata(d.dir().join("daemon.log")).expect("log file");
    d.set_env("JOURNAL_STREAM", &format!("{}:{}", meta.dev(), meta.ino()));
    d.restart().await;

    fake.script("p2p", "J1", Script::pending_then(Kind::P2p, 1, "approved"));
    d.enqueue("p2p", "J1", None).await;
    d.wait_final("p2p", "J1", WAIT).await;
    receiver.wait_deliveries(1, WAIT).await;
    let deadline = Instant::now() + WAIT;
    while !d.log().contains("webhook delivered") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.stop().await;

    let log = d.log();
    let second = log
        .split("===== harness: start #2")
        .nth(1)
        .expect("second start");
    let lines: Vec<&str> = second.lines().skip(1).filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let b = line.as_bytes();
        assert!(
            b.len() > 3 && b[0] == b'<' && b[1].is_ascii_digit() && b[2] == b'>',
            "no priority prefix: {line:?}"
        );
        assert!(!has_timestamp(line), "a timestamp under journald: {line:?}");
    }
    let with = |needle: &str| -> Vec<&str> {
        lines
            .iter()
            .copied()
            .filter(|l| l.contains(needle))
            .collect()
    };
    assert!(
        with("<6>")
            .iter()
            .any(|l| l.contains("ninjapoll is running")),
        "{second}"
    );
    let checks = with("checked");
    assert!(!checks.is_empty(), "{second}");
    for l in checks
        .iter()
        .chain(&with("payment is final"))
        .chain(&with("webhook"))
    {
        if l.contains("J1") || l.contains("checked") || l.contains("delivered") {
            assert!(
                l.contains("kind=p2p") && l.contains("id=J1"),
                "a check or delivery line without kind and id: {l:?}"
            );
        }
    }
    assert!(!with("payment is final").is_empty(), "{second}");
    assert!(!with("webhook delivered").is_empty(), "{second}");
}

/// An RFC 3339 timestamp as the log writes it (`2026-01-31T12:00:00…`).
fn has_timestamp(line: &str) -> bool {
    line.as_bytes().windows(11).any(|w| {
        w[4] == b'-' && w[7] == b'-' && w[10] == b'T' && w[..4].iter().all(u8::is_ascii_digit)
    })
}
