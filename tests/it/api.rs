//! The merchant's interface through the real binary (SPEC sections 4 and 7): the socket
//! API driven by curl (a client nobody here wrote), by the project's own CLI and by the
//! harness's HTTP client; the socket as a guarded door (mode, stale file, a second daemon,
//! clean removal, `allowed_uids`/`allowed_gids`).
//!
//! The daemons here run the provider's real ladder (first check after 20 s), so no check
//! is due while a test runs and every answer is the API's alone.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ninjapoll_test_support::*;
use serde_json::{json, Value};

/// The provider's ladder: nothing is checked within a test's lifetime.
fn quiet() -> DaemonConfig {
    DaemonConfig {
        first_check: ("20s".into(), "25s".into()),
        steps: vec![
            ("3s".into(), Some("30s".into())),
            ("6s".into(), Some("60s".into())),
            ("1m".into(), None),
        ],
        timeout: "10m".into(),
        ..DaemonConfig::default()
    }
}

async fn setup(config: DaemonConfig) -> (FakeNinjapay, Daemon) {
    let fake = FakeNinjapay::start(FakeOptions::default())
        .await
        .expect("fake Ninjapay");
    let daemon = spawn_daemon(&fake.base_url(), config).await;
    (fake, daemon)
}

/// Runs the `ninjapoll` binary with `args`, our `NINJAPOLL_*` environment removed.
fn ninjapoll(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ninjapoll"));
    cmd.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("NINJAPOLL_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("run ninjapoll")
}

/// The CLI against `daemon`'s socket.
fn cli(daemon: &Daemon, args: &[&str]) -> Output {
    let socket = daemon.socket_path().to_string_lossy().into_owned();
    let mut all = vec!["--socket", socket.as_str()];
    all.extend_from_slice(args);
    ninjapoll(&all)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Our own uid and primary gid, as the kernel reports them for a file we create.
fn our_ids(dir: &Path) -> (u32, u32) {
    let probe = dir.join("ids.probe");
    std::fs::write(&probe, b"").expect("probe file");
    let meta = std::fs::metadata(&probe).expect("probe metadata");
    (meta.uid(), meta.gid())
}

/// A second `ninjapoll run` on an existing daemon's configuration, with environment
/// overrides (a daemon the harness cannot wait for, e.g. one that refuses us or must
/// refuse to start). Killed when dropped.
struct Extra {
    child: Option<Child>,
    log: PathBuf,
}

impl Extra {
    fn start(config: &Path, dir: &Path, name: &str, env: &[(&str, String)]) -> Extra {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("extra log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ninjapoll"));
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("NINJAPOLL_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Extra {
            child: Some(cmd.spawn().expect("spawn ninjapoll")),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit on its own; its status and log.
    async fn exited(&mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return (status, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "ninjapoll did not exit within {within:?}: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until something accepts connections on `socket`.
    async fn listening(&mut self, socket: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("ninjapoll exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "not listening on {}: {}",
                socket.display(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM and wait.
    async fn stop(&mut self) -> std::process::ExitStatus {
        sigterm(self.child.as_ref().expect("running").id());
        self.exited(Duration::from_secs(10)).await.0
    }
}

impl Drop for Extra {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One request over a Unix socket through the CLI's client (for daemons the harness did
/// not start).
async fn raw_request(socket: &Path, method: &str, path: &str) -> (u16, Value) {
    ninjapoll::request(socket, method, path, None)
        .await
        .expect("request")
}

// ---- every request of SPEC section 4, over the socket ----

#[tokio::test]
async fn curl_drives_every_request() {
    assert!(
        Command::new("curl").arg("--version").output().is_ok(),
        "curl is not installed: this test drives the API with `curl --unix-socket`, as a \
         shell user would; install it (apt-get install curl)"
    );
    let (_fake, daemon) = setup(quiet()).await;
    let socket = daemon.socket_path().to_string_lossy().into_owned();
    // status code on the last line, body before it
    let curl = |args: &[&str]| -> (u16, Value) {
        let out = Command::new("curl")
            .args(["-sS", "--unix-socket", &socket, "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("curl");
        assert!(out.status.success(), "curl failed: {}", stderr(&out));
        let text = stdout(&out);
        let (body, code) = text.rsplit_once('\n').expect("status line");
        let value = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.into()));
        (code.trim().parse().expect("status"), value)
    };
    let json_ct = "content-type: application/json";

    let (s, v) = curl(&[
        "-H",
        json_ct,
        "-d",
        r#"{"kind":"p2p","id":"C1","metadata":{"order":42}}"#,
        "http://localhost/v1/checks",
    ]);
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["state"], "pending");
    assert_eq!(v["metadata"]["order"], 42);
    let (s, _) = curl(&[
        "-H",
        json_ct,
        "-d",
        r#"{"kind":"p2p","id":"C1"}"#,
        "http://localhost/v1/checks",
    ]);
    assert_eq!(s, 200);
    let (s, v) = curl(&[
        "-H",
        json_ct,
        "-d",
        r#"{"kind":"p2p","id":"C1","metadata":{"order":43}}"#,
        "http://localhost/v1/checks",
    ]);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );

    let (s, v) = curl(&[
        "-H",
        json_ct,
        "-d",
        r#"{"checks":[{"kind":"quote","id":"C2"},{"kind":"nope","id":"C3"},{"kind":"btc","id":"C4"}]}"#,
        "http://localhost/v1/checks/batch",
    ]);
    assert_eq!(s, 200, "{v}");
    let statuses: Vec<u64> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, [201, 400, 201]);

    let (s, v) = curl(&["http://localhost/v1/checks/quote/C2"]);
    assert_eq!((s, v["id"].as_str()), (200, Some("C2")), "{v}");
    let (s, v) = curl(&["http://localhost/v1/checks?kind=btc&state=pending"]);
    assert_eq!(s, 200);
    assert_eq!(v["payments"].as_array().map(Vec::len), Some(1), "{v}");
    let (s, v) = curl(&["-X", "POST", "http://localhost/v1/checks/quote/C2/recheck"]);
    assert_eq!(s, 202, "{v}");
    // The answer says when the (coalesced) check runs.
    assert!(rfc3339_ms(&v["check_at"]).is_some(), "{v}");
    assert_eq!(v["check_at"], v["next_check_at"], "{v}");
    let (s, v) = curl(&["-X", "DELETE", "http://localhost/v1/checks/quote/C2"]);
    assert_eq!((s, v["state"].as_str()), (200, Some("cancelled")), "{v}");
    let (s, v) = curl(&["-X", "DELETE", "http://localhost/v1/checks/quote/C2"]);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("already_final")),
        "{v}"
    );
    let (s, v) = curl(&["http://localhost/v1/checks/quote/never"]);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );

    let (s, v) = curl(&["http://localhost/v1/health"]);
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")), "{v}");
    let (s, v) = curl(&["http://localhost/metrics"]);
    assert_eq!(s, 200);
    assert!(v.as_str().is_some_and(|t| t.contains("# TYPE")), "{v}");

    // curl's default form content type, and a body over 1 MiB.
    let (s, v) = curl(&[
        "-d",
        r#"{"kind":"p2p","id":"C5"}"#,
        "http://localhost/v1/checks",
    ]);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (415, Some("unsupported_media_type")),
        "{v}"
    );
    let big = daemon.dir().join("big.json");
    std::fs::write(
        &big,
        format!(
            r#"{{"kind":"p2p","id":"C6","metadata":"{}"}}"#,
            "x".repeat(1 << 20)
        ),
    )
    .expect("big body");
    let at_big = format!("@{}", big.display());
    let (s, v) = curl(&[
        "-H",
        json_ct,
        "--data-binary",
        &at_big,
        "http://localhost/v1/checks",
    ]);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "{v}"
    );
    // Percent-encoded id with a slash.
    let (s, v) = curl(&[
        "-H",
        json_ct,
        "-d",
        r#"{"kind":"paywall","id":"ord/7 x"}"#,
        "http://localhost/v1/checks",
    ]);
    assert_eq!(s, 201, "{v}");
    let (s, v) = curl(&["http://localhost/v1/checks/paywall/ord%2F7%20x"]);
    assert_eq!((s, v["id"].as_str()), (200, Some("ord/7 x")), "{v}");
}

#[tokio::test]
async fn a_ten_thousand_item_batch_over_the_socket() {
    let (_fake, daemon) = setup(quiet()).await;
    let mut checks: Vec<Value> = (0..10_000)
        .map(|i| json!({"kind": "p2p", "id": format!("B{i:05}"), "metadata": {"n": i}}))
        .collect();
    checks[1234] = json!({"kind": "p2p", "id": "bad\u{7}id"});
    let started = Instant::now();
    let (s, v) = daemon
        .request(
            "POST",
            "/v1/checks/batch",
            Some(json!({ "checks": checks })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eprintln!("10,000-item batch answered in {:?}", started.elapsed());
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 10_000);
    for (i, r) in results.iter().enumerate() {
        if i == 1234 {
            assert_eq!(r["status"], 400, "{r}");
            assert_eq!(r["error"]["code"], "invalid_id");
        } else {
            assert_eq!(r["status"], 201, "{i}: {r}");
            assert_eq!(r["payment"]["id"], format!("B{i:05}"));
        }
    }
    let (_, health) = daemon.request("GET", "/v1/health", None).await;
    assert_eq!(health["payments"]["pending"], 9_999, "{health}");

    // 10,001 is refused whole.
    let checks: Vec<Value> = (0..10_001)
        .map(|i| json!({"kind": "btc", "id": format!("X{i}")}))
        .collect();
    let (s, v) = daemon
        .request(
            "POST",
            "/v1/checks/batch",
            Some(json!({ "checks": checks })),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("batch_too_large")),
        "{v}"
    );
    let (_, v) = daemon.request("GET", "/v1/checks?kind=btc", None).await;
    assert_eq!(v["payments"], json!([]));
}

#[tokio::test]
async fn two_clients_enqueueing_one_payment_at_once_make_one_payment() {
    let (_fake, daemon) = setup(quiet()).await;
    let daemon = std::sync::Arc::new(daemon);
    for round in 0..5 {
        let id = format!("race{round}");
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let d = daemon.clone();
                let id = id.clone();
                tokio::spawn(async move { d.enqueue("quote", &id, None).await })
            })
            .collect();
        let mut codes = Vec::new();
        for t in tasks {
            codes.push(t.await.expect("task").0);
        }
        codes.sort();
        assert_eq!(codes, [200, 200, 200, 200, 200, 200, 200, 201], "{id}");
    }
    let (_, v) = daemon.request("GET", "/v1/checks?kind=quote", None).await;
    assert_eq!(v["payments"].as_array().map(Vec::len), Some(5));
}

#[tokio::test]
async fn paging_while_another_client_enqueues_neither_skips_nor_repeats() {
    let (_fake, daemon) = setup(quiet()).await;
    let first: Vec<Value> = (0..150)
        .map(|i| json!({"kind": "p2p", "id": format!("a{i:03}")}))
        .collect();
    daemon
        .request("POST", "/v1/checks/batch", Some(json!({ "checks": first })))
        .await;
    let daemon = std::sync::Arc::new(daemon);
    let writer = {
        let d = daemon.clone();
        tokio::spawn(async move {
            for i in 0..150 {
                let (s, v) = d.enqueue("p2p", &format!("b{i:03}"), None).await;
                assert_eq!(s, 201, "{v}");
            }
        })
    };
    let mut writer = Some(writer);
    let mut seen: Vec<String> = Vec::new();
    let mut cursor = String::new();
    loop {
        let (s, v) = daemon
            .request(
                "GET",
                &format!("/v1/checks?state=pending&limit=11&cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        for p in v["payments"].as_array().expect("payments") {
            seen.push(p["id"].as_str().unwrap_or_default().to_string());
        }
        if let Some(c) = v["next_cursor"].as_str() {
            cursor = c.to_string();
        }
        if v["has_more"] == false {
            match writer.take() {
                Some(w) => w.await.expect("writer"),
                None => break,
            }
        }
    }
    let expected: Vec<String> = (0..150)
        .map(|i| format!("a{i:03}"))
        .chain((0..150).map(|i| format!("b{i:03}")))
        .collect();
    assert_eq!(seen, expected);
}

// ---- the command line ----

#[tokio::test]
async fn the_cli_speaks_to_the_socket() {
    let (_fake, daemon) = setup(quiet()).await;

    let out = cli(
        &daemon,
        &[
            "enqueue",
            "p2p",
            "A198660213997",
            "--started-at",
            &(now_ms() / 1000).to_string(),
            "--metadata",
            r#"{"order":1}"#,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("KIND"), "{table}");
    assert!(
        table.contains("A198660213997") && table.contains("pending"),
        "{table}"
    );

    let out = cli(&daemon, &["--json", "status", "p2p", "A198660213997"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(v["metadata"], json!({"order": 1}));
    assert_eq!(v["state"], "pending");

    // The config file names the socket, as on a server.
    let config = daemon.config_path().to_string_lossy().into_owned();
    let out = ninjapoll(&["--config", &config, "status", "p2p", "A198660213997"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("A198660213997"));

    for i in 0..3 {
        let out = cli(&daemon, &["enqueue", "btc", &format!("W{i}")]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = cli(&daemon, &["list", "--kind", "btc", "--limit", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table.contains("W0") && table.contains("W1") && !table.contains("W2"),
        "{table}"
    );
    assert!(
        table.contains("--cursor"),
        "the table says how to get the next page: {table}"
    );
    let out = cli(&daemon, &["--json", "list", "--state", "pending"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["payments"].as_array().map(Vec::len), Some(4), "{v}");

    // Characters that mean something in a path or a query stay inside their segment or
    // value: the CLI escapes path segments and query values, not just spaces.
    let odd = "O/1?x=y&z+w #é";
    let out = cli(&daemon, &["enqueue", "btc", odd]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&daemon, &["--json", "status", "btc", odd]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["id"], odd, "{v}");
    let out = cli(
        &daemon,
        &["--json", "list", "--kind", "btc", "--limit", "10"],
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["payments"].as_array().map(Vec::len), Some(4), "{v}");
    let out = cli(&daemon, &["cancel", "btc", odd]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = cli(&daemon, &["recheck", "btc", "W0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&daemon, &["cancel", "btc", "W0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("cancelled"), "{}", stdout(&out));

    // Errors: non-zero, the server's message and code on stderr.
    let out = cli(&daemon, &["cancel", "btc", "W0"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("already cancelled") && err.contains("already_final") && err.contains("409"),
        "{err}"
    );
    let out = cli(&daemon, &["status", "p2p", "never-enqueued"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no payment p2p never-enqueued is tracked"),
        "{}",
        stderr(&out)
    );
    let out = cli(&daemon, &["enqueue", "venmo", "1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown kind \"venmo\"; known kinds:"),
        "{}",
        stderr(&out)
    );
    let out = cli(
        &daemon,
        &[
            "enqueue",
            "p2p",
            "A198660213997",
            "--metadata",
            r#"{"order":2}"#,
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("conflict"), "{}", stderr(&out));
    let out = cli(&daemon, &["--json", "status", "p2p", "never"]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("--json prints the error JSON");
    assert_eq!(v["error"]["code"], "not_found");
}

#[tokio::test]
async fn the_cli_says_plainly_when_no_daemon_listens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nothing.sock");
    let out = ninjapoll(&["--socket", &missing.to_string_lossy(), "status", "p2p", "x"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no ninjapoll daemon is listening on") && err.contains("ninjapoll run"),
        "{err}"
    );

    // A stale socket file nobody listens on reads the same.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let out = ninjapoll(&["--socket", &stale.to_string_lossy(), "list"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no ninjapoll daemon is listening on"),
        "{}",
        stderr(&out)
    );
}

// ---- the socket as a door ----

#[tokio::test]
async fn the_socket_is_0660_by_default_and_socket_mode_changes_it() {
    let (_fake, daemon) = setup(quiet()).await;
    let mode = std::fs::metadata(daemon.socket_path())
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "{mode:o}");

    let fake = FakeNinjapay::start(FakeOptions::default())
        .await
        .expect("fake");
    let config = DaemonConfig {
        env: vec![("NINJAPOLL_SOCKET__MODE".into(), "0600".into())],
        ..quiet()
    };
    let daemon = spawn_daemon(&fake.base_url(), config).await;
    let mode = std::fs::metadata(daemon.socket_path())
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}

#[tokio::test]
async fn the_socket_directory_is_created() {
    let (_fake, mut daemon) = setup(quiet()).await;
    daemon.stop().await;
    let socket = daemon.dir().join("run/ninjapoll/deeper/api.sock");
    let mut extra = Extra::start(
        daemon.config_path(),
        daemon.dir(),
        "deep",
        &[(
            "NINJAPOLL_SOCKET__PATH",
            socket.to_string_lossy().into_owned(),
        )],
    );
    extra.listening(&socket).await;
    let (s, v) = raw_request(&socket, "GET", "/v1/health").await;
    assert_eq!(s, 200, "{v}");
    assert!(extra.stop().await.success());
    assert!(!socket.exists(), "socket left behind after a clean exit");
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_clean_exit_removes_it() {
    let (_fake, mut daemon) = setup(quiet()).await;
    daemon.enqueue("p2p", "survivor", None).await;
    daemon.kill9();
    assert!(
        daemon.socket_path().exists(),
        "a crash leaves the socket file"
    );
    daemon.restart().await; // waits for /v1/health over the new socket
    let (s, v) = daemon.payment("p2p", "survivor").await;
    assert_eq!(s, 200, "{v}");
    let status = daemon.stop().await.expect("was running");
    assert!(status.success(), "{status}");
    assert!(
        !daemon.socket_path().exists(),
        "clean exit removes the socket"
    );
}

#[tokio::test]
async fn a_second_daemon_refuses_to_start_while_one_listens() {
    let (_fake, daemon) = setup(quiet()).await;
    // Another database, the same socket: the socket check refuses.
    let mut second = Extra::start(
        daemon.config_path(),
        daemon.dir(),
        "second",
        &[(
            "NINJAPOLL_DATABASE__PATH",
            daemon.dir().join("other.db").to_string_lossy().into_owned(),
        )],
    );
    let (status, log) = second.exited(Duration::from_secs(10)).await;
    assert!(!status.success());
    assert!(
        log.contains("another ninjapoll is already listening on"),
        "{log}"
    );
    // The same database: the lock refuses first.
    let mut third = Extra::start(daemon.config_path(), daemon.dir(), "third", &[]);
    let (status, log) = third.exited(Duration::from_secs(10)).await;
    assert!(!status.success());
    assert!(
        log.contains("another ninjapoll is running on this database"),
        "{log}"
    );
    // The first one still serves, its socket untouched.
    let (s, _) = daemon.request("GET", "/v1/health", None).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn a_path_that_is_not_a_socket_is_never_replaced() {
    let (_fake, mut daemon) = setup(quiet()).await;
    daemon.stop().await;
    let precious = daemon.dir().join("precious.txt");
    std::fs::write(&precious, "merchant data").expect("file");
    let mut extra = Extra::start(
        daemon.config_path(),
        daemon.dir(),
        "notsocket",
        &[(
            "NINJAPOLL_SOCKET__PATH",
            precious.to_string_lossy().into_owned(),
        )],
    );
    let (status, log) = extra.exited(Duration::from_secs(10)).await;
    assert!(!status.success());
    assert!(
        log.contains("is not a socket; refusing to replace it"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(&precious).ok().as_deref(),
        Some("merchant data")
    );
}

#[tokio::test]
async fn allowed_uids_and_gids_guard_the_socket() {
    let (_fake, mut daemon) = setup(quiet()).await;
    daemon.stop().await;
    let (uid, gid) = our_ids(daemon.dir());
    let other = if uid == 54_321 { 54_322 } else { 54_321 };
    let socket = daemon.socket_path().to_path_buf();
    let cases = [
        // (allowed_uids, allowed_gids, expected status)
        (format!("[{other}]"), "[]".to_string(), 403),
        (format!("[{uid}]"), "[]".to_string(), 200),
        (format!("[{other}]"), format!("[{gid}]"), 200),
        ("[]".to_string(), format!("[{}]", gid.wrapping_add(1)), 403),
    ];
    for (i, (uids, gids, expected)) in cases.into_iter().enumerate() {
        let mut extra = Extra::start(
            daemon.config_path(),
            daemon.dir(),
            &format!("guard{i}"),
            &[
                ("NINJAPOLL_SOCKET__ALLOWED_UIDS", uids.clone()),
                ("NINJAPOLL_SOCKET__ALLOWED_GIDS", gids.clone()),
            ],
        );
        extra.listening(&socket).await;
        let (s, v) = raw_request(&socket, "GET", "/v1/health").await;
        assert_eq!(
            s, expected,
            "uids {uids} gids {gids} (we are {uid}/{gid}): {v}"
        );
        if expected == 403 {
            assert_eq!(v["error"]["code"], "forbidden", "{v}");
            let (s, _) = raw_request(&socket, "POST", "/v1/checks/p2p/x/recheck").await;
            assert_eq!(s, 403);
            let out = ninjapoll(&["--socket", &socket.to_string_lossy(), "list"]);
            assert!(!out.status.success());
            assert!(
                stderr(&out).contains("socket.allowed_uids"),
                "{}",
                stderr(&out)
            );
        }
        assert!(extra.stop().await.success());
    }
}
