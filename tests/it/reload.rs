//! Reload (SIGHUP, `systemctl reload`): the real daemon re-reads its file while payments are
//! on their ladders. A valid file is applied without a restart: events go to the new
//! webhook URL, a new kind is accepted, nothing is lost, delivered twice or checked early.
//! An invalid file is refused with `check-config`'s message and the daemon keeps running on
//! the old one.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ninjapoll::wire::PaymentDetail;
use ninjapoll::State;
use ninjapoll_test_support::*;
use serde_json::{json, Value};

/// Bound of every wait.
const WAIT: Duration = Duration::from_secs(15);

/// The ladder's step after the first check. Two checks of one payment closer than half of
/// it would be a check made early (the plan's slots are a step apart; a late slot makes
/// the next gap shorter only by its lateness).
const STEP_MS: i64 = 300;

fn sighup(d: &Daemon) {
    let pid = libc::pid_t::try_from(d.pid().expect("daemon running")).expect("pid");
    // SAFETY: kill(2) only sends a signal, to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}

/// Waits until `/v1/health` reports a reload whose result is `result`; returns it.
async fn wait_reload(d: &Daemon, result: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, h) = d.request("GET", "/v1/health", None).await;
        assert_eq!(code, 200, "{h:#}");
        if h["reload"]["result"] == result {
            return h["reload"].clone();
        }
        if Instant::now() > deadline {
            d.print_log();
            panic!("no {result} reload in health within {WAIT:?}: {h:#}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the outbox holds no pending event.
async fn wait_outbox_empty(d: &Daemon) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, h) = d.request("GET", "/v1/health", None).await;
        if h["webhooks"]["pending"].as_i64().unwrap_or(0) == 0 {
            return;
        }
        if Instant::now() > deadline {
            d.print_log();
            panic!("webhook events still pending after {WAIT:?}: {h:#}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The service manager's end of `$NOTIFY_SOCKET`: every datagram, in order.
fn notify_socket(dir: &std::path::Path) -> (Arc<Mutex<Vec<String>>>, String) {
    let path = dir.join("notify");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    // Ends with the test process; it only reads.
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            sink.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    (got, path.to_string_lossy().into_owned())
}

/// `ninjapoll check-config --config file`, with the daemon's environment: its stderr.
fn check_config(d: &Daemon) -> (bool, String) {
    let mut cmd = std::process::Command::new(binary());
    // The daemon's working directory too: a refusal names the file relative to it.
    cmd.arg("check-config")
        .arg("--config")
        .arg(d.config_path())
        .current_dir(d.dir());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("NINJAPOLL_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in &d.config().env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ladder_config(webhook_url: &str) -> DaemonConfig {
    DaemonConfig {
        steps: vec![(format!("{STEP_MS}ms"), None)],
        timeout: "5s".into(),
        webhooks: Some((webhook_url.into(), WEBHOOK_SECRET.into())),
        ..DaemonConfig::default()
    }
}

/// Every delivered event of every payment, from both receivers: per payment, the
/// sequences are 1..=n, each delivered once, and the last is the payment's final state.
fn assert_events_complete(
    deliveries: &[Delivery],
    finals: &BTreeMap<(String, String), PaymentDetail>,
) {
    let mut seen: BTreeMap<(String, String), Vec<(i64, State)>> = BTreeMap::new();
    let mut ids = std::collections::HashSet::new();
    for d in deliveries {
        assert!(d.verified, "unsigned delivery {d:?}");
        assert_eq!(d.answered, 200, "{d:?}");
        assert!(ids.insert(d.webhook_id.clone()), "delivered twice: {d:?}");
        let ev = d.event();
        let key = (ev.data.payment.kind.to_string(), ev.data.payment.id.clone());
        seen.entry(key)
            .or_default()
            .push((ev.data.sequence, ev.data.payment.state));
    }
    for (key, p) in finals {
        let mut events = seen.remove(key).unwrap_or_default();
        events.sort_by_key(|(s, _)| *s);
        let sequences: Vec<i64> = events.iter().map(|(s, _)| *s).collect();
        let want: Vec<i64> = (1..=sequences.len() as i64).collect();
        assert_eq!(sequences, want, "{key:?}: events {events:?}");
        assert_eq!(
            events.last().map(|(_, s)| *s),
            Some(p.payment.facts.state),
            "{key:?}: events {events:?}"
        );
    }
    assert!(seen.is_empty(), "events of unknown payments: {seen:?}");
}

/// Each payment's checks as the fake saw them: as many as its script needed, every one
/// recorded by the daemon, and none closer to the one before than half a step.
fn assert_checked_on_the_ladder(fake: &FakeNinjapay, kind: &str, p: &PaymentDetail, needed: usize) {
    let id = &p.payment.facts.id;
    // The fake names a request by its endpoint: `lbtc` is on the history's.
    let endpoint = if kind == "lbtc" { "btc" } else { kind };
    let times: Vec<i64> = fake
        .requests_for(endpoint, id)
        .iter()
        .map(|r| r.unix_ms)
        .collect();
    assert_eq!(times.len(), needed, "{kind}/{id}: requests at {times:?}");
    assert_eq!(
        p.payment.checks_done as usize,
        times.len(),
        "{kind}/{id}: requests at {times:?}"
    );
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= STEP_MS / 2,
            "{kind}/{id}: checked again after {} ms: {times:?}",
            pair[1] - pair[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_webhook_url_and_kind_without_losing_or_rechecking() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let first = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let second = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let notify_dir = tempfile::tempdir().expect("tempdir");
    let (notified, notify_env) = notify_socket(notify_dir.path());
    let mut cfg = ladder_config(first.url());
    cfg.env.push(("NOTIFY_SOCKET".into(), notify_env));
    let d = spawn_daemon(&fake.base_url(), cfg).await;

    // Pending 1 to 6 checks, then approved: finals from ~0.4 s to ~2 s, across the reload.
    let mut needed = BTreeMap::new();
    for i in 0..12 {
        let id = format!("before{i}");
        let pending = 1 + i % 6;
        fake.script(
            "p2p",
            &id,
            Script::pending_then(Kind::P2p, pending, "approved"),
        );
        assert_eq!(d.enqueue("p2p", &id, None).await.0, 201);
        needed.insert(("p2p".to_string(), id), pending + 1);
    }
    // The new kind is unknown until the reload.
    let (code, body) = d.enqueue("lbtc", "700001", None).await;
    assert_eq!(code, 400, "{body:#}");
    assert_eq!(body["error"]["code"], "unknown_kind", "{body:#}");
    first.wait_deliveries(2, WAIT).await;

    // The new file: the second receiver, a new kind, and a setting only a restart applies.
    let text = std::fs::read_to_string(d.config_path()).expect("config");
    let text = text
        .replace(first.url(), second.url())
        .replace("[socket]\n", "[socket]\nmax_connections = 7\n")
        + crate::LBTC_KIND;
    std::fs::write(d.config_path(), text).expect("rewrite config");
    sighup(&d);
    let reload = wait_reload(&d, "applied").await;
    assert_eq!(
        reload["restart_required"],
        json!(["socket.max_connections"])
    );
    // Deliveries in flight at the reload finished before the new worker started.
    let delivered_before = first.deliveries().len();

    fake.script_btc("700001", "lbtc", Script::pending_then(Kind::Btc, 2, "paid"));
    assert_eq!(d.enqueue("lbtc", "700001", None).await.0, 201);
    needed.insert(("lbtc".to_string(), "700001".to_string()), 3);
    for i in 0..3 {
        let id = format!("after{i}");
        fake.script("p2p", &id, Script::pending_then(Kind::P2p, 2, "approved"));
        assert_eq!(d.enqueue("p2p", &id, None).await.0, 201);
        needed.insert(("p2p".to_string(), id), 3);
    }

    let mut finals = BTreeMap::new();
    for (kind, id) in needed.keys() {
        let p = d.wait_final(kind, id, WAIT).await;
        assert_eq!(p.payment.facts.state, State::Succeeded, "{p:#?}");
        finals.insert((kind.clone(), id.clone()), p);
    }
    wait_outbox_empty(&d).await;
    for ((kind, _), p) in &finals {
        let need = needed[&(kind.clone(), p.payment.facts.id.clone())];
        assert_checked_on_the_ladder(&fake, kind, p, need);
    }
    assert_eq!(fake.violations(), 0);
    // Nothing reached the old URL after the reload; the rest reached the new one.
    assert_eq!(first.deliveries().len(), delivered_before);
    assert!(!second.deliveries().is_empty());
    let mut all = first.deliveries();
    all.extend(second.deliveries());
    assert_events_complete(&all, &finals);
    // What was spent before the reload still counts, once: in the first status the
    // scheduler published after the last request (it publishes every tick).
    let last = fake.requests().iter().map(|r| r.unix_ms).max().unwrap_or(0);
    let deadline = Instant::now() + WAIT;
    let h = loop {
        let (_, h) = d.request("GET", "/v1/health", None).await;
        if rfc3339_ms(&h["scheduler"]["reported_at"]).is_some_and(|t| t > last + 50) {
            break h;
        }
        assert!(
            Instant::now() < deadline,
            "no status after the last check: {h:#}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let used: i64 = h["budget"]
        .as_array()
        .expect("budget")
        .iter()
        .map(|p| p["budget_used"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(used, fake.requests().len() as i64, "{h:#}");

    let log = d.log();
    assert!(
        log.contains("socket.max_connections changed, but only takes effect at the next start"),
        "{log}"
    );
    let (_, metrics) = d.request("GET", "/metrics", None).await;
    let metrics = metrics.as_str().expect("metrics text").to_owned();
    assert!(
        metrics.contains("ninjapoll_config_reloads_total{result=\"applied\"} 1"),
        "{metrics}"
    );
    // systemd saw the reload begin and end.
    let messages = notified.lock().unwrap().clone();
    let begun = messages
        .iter()
        .position(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no RELOADING=1: {messages:?}"));
    assert!(
        messages[begun..].iter().any(|m| m == "READY=1"),
        "{messages:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_an_invalid_file_is_refused_with_check_configs_message() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let first = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let second = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let d = spawn_daemon(&fake.base_url(), ladder_config(first.url())).await;
    let original = std::fs::read_to_string(d.config_path()).expect("config");

    let mut ids = Vec::new();
    for i in 0..6 {
        let id = format!("kept{i}");
        fake.script(
            "p2p",
            &id,
            Script::pending_then(Kind::P2p, 2 + i % 3, "approved"),
        );
        assert_eq!(d.enqueue("p2p", &id, None).await.0, 201);
        ids.push(id);
    }
    // A new URL, and a timeout that is no duration: the whole file is refused.
    let broken = original
        .replace(first.url(), second.url())
        .replace("timeout = \"5s\"", "timeout = \"soon\"");
    assert_ne!(broken, original);
    std::fs::write(d.config_path(), broken).expect("rewrite config");
    let (ok, stderr) = check_config(&d);
    assert!(!ok, "check-config accepted it: {stderr}");
    let message = stderr
        .lines()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"))
        .to_owned();
    assert!(message.contains("schedule.timeout"), "{message}");

    sighup(&d);
    let reload = wait_reload(&d, "refused").await;
    assert_eq!(reload["error"], json!(message));
    let log = d.log();
    assert!(log.contains(&message), "{log}");

    // Still running on the old configuration: every payment ends, its events go to the
    // first receiver only.
    let mut finals = BTreeMap::new();
    for id in &ids {
        let p = d.wait_final("p2p", id, WAIT).await;
        assert_eq!(p.payment.facts.state, State::Succeeded, "{p:#?}");
        finals.insert(("p2p".to_string(), id.clone()), p);
    }
    wait_outbox_empty(&d).await;
    assert!(second.deliveries().is_empty(), "{:?}", second.deliveries());
    assert_events_complete(&first.deliveries(), &finals);
    let (_, metrics) = d.request("GET", "/metrics", None).await;
    let metrics = metrics.as_str().expect("metrics text").to_owned();
    assert!(
        metrics.contains("ninjapoll_config_reloads_total{result=\"refused\"} 1")
            && metrics.contains("ninjapoll_config_reloads_total{result=\"applied\"} 0"),
        "{metrics}"
    );

    // Put right, the file is applied by the next SIGHUP.
    std::fs::write(d.config_path(), original).expect("restore config");
    sighup(&d);
    wait_reload(&d, "applied").await;
}
