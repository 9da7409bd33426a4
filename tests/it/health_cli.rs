//! `ninjapoll health` (SPEC section 7), the real binary against a real daemon over its
//! socket: the screen and its exit status when healthy, when not (no API key), and when
//! there is no daemon; `--json` is the API's answer; `--watch` redraws until Ctrl-C.

use ninjapoll_test_support::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `ninjapoll --socket SOCKET ARGS…`, with no `NINJAPOLL_*` or `NO_COLOR` of the test's
/// environment in the way; stdout is a pipe, not a terminal.
fn ninjapoll(socket: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ninjapoll"));
    cmd.arg("--socket").arg(socket).args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("NINJAPOLL_") || k == "NO_COLOR" {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn run(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = ninjapoll(socket, args).output().expect("run ninjapoll");
    (
        status.code().expect("exited, not killed"),
        String::from_utf8(stdout).expect("UTF-8"),
        String::from_utf8(stderr).expect("UTF-8"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_draws_the_daemon_for_a_person_and_its_exit_status_says_healthy() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let d = spawn_daemon(&fake.base_url(), DaemonConfig::default()).await;
    fake.script("p2p", "H1", Script::pending_then(Kind::P2p, 1, "approved"));
    assert_eq!(d.enqueue("p2p", "H1", None).await.0, 201);
    d.wait_final("p2p", "H1", Duration::from_secs(5)).await;
    // The scheduler reports at its tick: wait until health counts the payment as done.
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.request("GET", "/v1/health", None).await.1["scheduler"]["pending"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the scheduler never let go of H1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (code, out, err) = run(d.socket_path(), &["health"]);
    assert_eq!(code, 0, "healthy is 0:\n{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("ninjapoll {}  healthy", env!("CARGO_PKG_VERSION")),
        "{out}"
    );
    assert!(
        lines[1].is_empty(),
        "no problem lines under the verdict: {out}"
    );
    assert!(lines[2].starts_with("key default    budget "), "{out}");
    assert!(lines[2].ends_with("/100,000 per 10m"), "{out}");
    assert!(out.contains("keeps up"), "{out}");
    assert!(out.contains("price 0.00 (the documented ladder)"), "{out}");
    assert!(out.contains("pending 0 · backlog 0 · behind 0s"), "{out}");
    assert!(
        lines.iter().any(|l| l.trim_start().starts_with("p2p ")),
        "a line for kind p2p: {out}"
    );
    assert!(
        out.contains("payments  pending 0 · succeeded 1 · failed 0 · timed_out 0 · cancelled 0\n"),
        "{out}"
    );
    assert!(
        out.contains("webhooks  pending 0 · dead 0 · delivered 0\n"),
        "{out}"
    );
    assert!(out.contains("database  "), "{out}");
    assert!(out.contains(" KiB · writes ok · finished payments kept 90d, delivered webhook events as long as their payment\n"), "{out}");
    assert!(!out.contains('\x1b'), "no colour into a pipe: {out:?}");
    // On a terminal (util-linux `script` gives it one), colour, unless NO_COLOR says not.
    let on_terminal = |no_color: Option<&str>| {
        let line = format!(
            "{} --socket {} health",
            env!("CARGO_BIN_EXE_ninjapoll"),
            d.socket_path().display()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"])
            .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let out = cmd.output().expect("util-linux script");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let tty = on_terminal(None);
    assert!(tty.contains("\x1b[32mhealthy\x1b[0m"), "{tty:?}");
    let tty = on_terminal(Some("1"));
    assert!(tty.contains("healthy") && !tty.contains('\x1b'), "{tty:?}");

    // --json: the API's answer as it is, with the same verdict.
    let (code, out, _) = run(d.socket_path(), &["health", "--json"]);
    assert_eq!(code, 0);
    let h: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(h["healthy"], true, "{h:#}");
    assert_eq!(h["database"]["keep_finished_ms"], 90 * 86_400_000_i64);
    let size = h["database"]["size_bytes"].as_u64().expect("a size");
    let on_disk = std::fs::metadata(d.db_path()).unwrap().len();
    assert!(size >= on_disk, "{size} < {on_disk}");

    // --watch: a screen every interval, until Ctrl-C; the status is the last verdict.
    let mut watch = ninjapoll(
        d.socket_path(),
        &["health", "--watch", "--interval", "100ms"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn health --watch");
    let stdout = watch.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut screens = 0;
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line == "(every 100ms; Ctrl-C to stop)" {
                screens += 1;
                if screens == 3 {
                    break;
                }
            } else {
                assert!(
                    !line.contains('\x1b'),
                    "no clearing codes into a pipe: {line:?}"
                );
            }
        }
        // Keep reading so that the command never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        screens
    });
    let started = Instant::now();
    while !reader.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "--watch drew fewer than 3 screens in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reader.join().unwrap(), 3);
    let _ = Command::new("kill")
        .args(["-INT", &watch.id().to_string()])
        .status();
    let status = watch.wait().unwrap();
    assert_eq!(status.code(), Some(0), "Ctrl-C ends --watch: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_puts_the_problem_first_and_exits_1_and_2_without_a_daemon() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let d = spawn_daemon(
        &fake.base_url(),
        DaemonConfig {
            api_key: String::new(),
            ..DaemonConfig::default()
        },
    )
    .await;
    let (code, out, err) = run(d.socket_path(), &["health"]);
    assert_eq!(code, 1, "not healthy is 1:\n{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "ninjapoll {}  UNHEALTHY: 1 problem",
            env!("CARGO_PKG_VERSION")
        ),
        "{out}"
    );
    assert_eq!(
        lines[1], "  ! no API key configured (ninjapay.api_key)",
        "{out}"
    );
    let (code, out, _) = run(d.socket_path(), &["health", "--json"]);
    assert_eq!(code, 1);
    let h: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(h["healthy"], false, "{h:#}");

    // No daemon: 2, and a line that says what to do.
    let gone = d.dir().join("nobody.sock");
    let (code, out, err) = run(&gone, &["health"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("no ninjapoll daemon is listening") && err.contains("ninjapoll run"),
        "{err}"
    );
    let (code, _, err) = run(&gone, &["health", "--json"]);
    assert_eq!(code, 2, "{err}");
    // A wrong interval is not a verdict either.
    let (code, _, err) = run(
        d.socket_path(),
        &["health", "--watch", "--interval", "soon"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--interval \"soon\""), "{err}");
}
