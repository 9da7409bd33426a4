//! `ninjapoll demo`: the whole loop in one command, for a first look. A simulated Ninjapay
//! and a webhook receiver on 127.0.0.1, a daemon on a temporary directory with a ladder
//! compressed to seconds, a few payments of every kind, and their flips as they happen.

use crate::client::request;
use crate::config::{self, Config, RawStep};
use crate::payment::State;
use crate::webhooks;
use crate::wire::{EnqueueRequest, EventBody, PaymentDetail, PaymentView};
use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use ninjapoll_fake::{FakeNinjapay, FakeOptions, Unknown};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const KINDS: [&str; 4] = ["p2p", "quote", "paywall", "btc"];

/// Runs the demo with `payments` payments; returns when all are final (or after a minute).
pub async fn run(payments: usize) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("ninjapoll-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = demo(&dir, payments.clamp(1, 200)).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn demo(dir: &std::path::Path, payments: usize) -> Result<()> {
    let fake = FakeNinjapay::start(FakeOptions {
        api_key: "demo-key".into(),
        unknown: Unknown::Random { max_pending: 6 },
        latency: Some((Duration::from_millis(5), Duration::from_millis(60))),
        ..FakeOptions::default()
    })
    .await?;
    let key: [u8; 24] = std::array::from_fn(|_| fastrand::u8(..));
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let receiver = start_receiver(key.to_vec()).await?;

    let cfg = demo_config(dir, &fake.base_url(), receiver, secret)?;
    let socket = cfg.socket.path.clone();
    crate::logging::init(&crate::config::LogConfig {
        json: false,
        level: "warn".into(),
    });

    println!("simulated Ninjapay on {}", fake.base_url());
    println!("webhook receiver on http://{receiver}/ninjapay/events");
    println!("daemon on {} (ladder: first check 1-1.5 s, then every 0.5 s for 3 s, then every 1 s until 20 s)\n", socket.display());

    let cancel = CancellationToken::new();
    let daemon = tokio::spawn(crate::daemon::run_until(cfg, cancel.clone()));
    let started = Instant::now();
    wait_ready(&socket, &cancel).await?;

    let mut states = enqueue(&fake, &socket, payments).await?;
    println!();

    follow(&socket, &mut states, started).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, health) = request(&socket, "GET", "/v1/health", None).await?;
    println!("\nhealth: {}", health);
    println!(
        "{} requests reached the simulated Ninjapay",
        fake.requests().len()
    );
    cancel.cancel();
    daemon.await.context("daemon task")??;
    Ok(())
}

/// The daemon's configuration for the demo: a compressed ladder, the fake and the receiver.
fn demo_config(
    dir: &std::path::Path,
    fake_url: &str,
    receiver: std::net::SocketAddr,
    secret: String,
) -> Result<Config> {
    let mut raw = config::defaults();
    raw.database.path = Some(dir.join("ninjapoll.db"));
    raw.socket.path = Some(dir.join("ninjapoll.sock"));
    raw.ninjapay.api_key = Some("demo-key".into());
    raw.ninjapay.prod_base_url = Some(fake_url.to_owned());
    raw.ninjapay.api_base_url = Some(fake_url.to_owned());
    let ms = Duration::from_millis;
    raw.schedule.first_check = Some(vec![ms(1000), ms(1500)]);
    raw.schedule.steps = Some(vec![
        RawStep {
            every: ms(500),
            span: Some(ms(3000)),
        },
        RawStep {
            every: ms(1000),
            span: None,
        },
    ]);
    raw.schedule.timeout = Some(ms(20_000));
    raw.webhooks.url = Some(format!("http://{receiver}/ninjapay/events"));
    raw.webhooks.secret = Some(secret);
    raw.webhooks.retry = Some(vec![ms(200), ms(1000)]);
    Ok(Config::from_raw(raw)?)
}

/// Waits until the daemon answers on its socket (10 s at most).
async fn wait_ready(socket: &std::path::Path, cancel: &CancellationToken) -> Result<()> {
    let started = Instant::now();
    while request(socket, "GET", "/v1/health", None).await.is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            cancel.cancel();
            bail!("the daemon did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Enqueues `payments` payments across the demo's kinds; each one's state, pending.
async fn enqueue(
    fake: &FakeNinjapay,
    socket: &std::path::Path,
    payments: usize,
) -> Result<HashMap<(String, String), State>> {
    let mut states: HashMap<(String, String), State> = HashMap::new();
    for i in 0..payments {
        let kind = KINDS[i % KINDS.len()];
        let id = format!("DEMO{}{:03}", kind.to_uppercase(), i);
        if kind == "btc" {
            // A listing shows only ids the simulated provider knows.
            fake.script_random("btc", &id);
        }
        let body = serde_json::to_value(EnqueueRequest {
            account: None,
            kind: kind.to_owned(),
            id: id.clone(),
            started_at: None,
            callback_url: None,
            metadata: Some(json!({"order": i})),
        })?;
        let (status, v) = request(socket, "POST", "/v1/checks", Some(&body)).await?;
        let p: PaymentView = serde_json::from_value(v).context("the enqueue's answer")?;
        println!(
            "enqueued {kind:<8} {id:<16} -> HTTP {status}, {}",
            p.facts.state
        );
        states.insert((kind.to_string(), id), State::Pending);
    }
    Ok(states)
}

/// Prints each payment's change of state until all are final (or a minute passes).
async fn follow(
    socket: &std::path::Path,
    states: &mut HashMap<(String, String), State>,
    started: Instant,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && states.values().any(|s| *s == State::Pending) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for ((kind, id), state) in states.iter_mut() {
            let (_, v) = request(socket, "GET", &format!("/v1/checks/{kind}/{id}"), None).await?;
            let p: PaymentDetail = serde_json::from_value(v).context("a payment's answer")?;
            let now = p.payment.facts.state;
            if now != *state {
                println!(
                    "{:>6.1}s  {kind:<8} {id:<16} {state} -> {now} (upstream {:?}, after {} checks)",
                    started.elapsed().as_secs_f64(),
                    p.payment.facts.upstream_status.as_deref().unwrap_or("-"),
                    p.payment.checks_done
                );
                *state = now;
            }
        }
    }
    Ok(())
}

/// A webhook receiver that checks each signature and prints the event.
async fn start_receiver(key: Vec<u8>) -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/ninjapay/events",
        post(move |headers: HeaderMap, body: Bytes| {
            let key = key.clone();
            async move {
                let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
                let body = String::from_utf8_lossy(&body).to_string();
                let ts: i64 = h("webhook-timestamp").parse().unwrap_or(0);
                let expected = webhooks::sign(&key, h("webhook-id"), ts, &body);
                let ok = h("webhook-signature").split(' ').any(|s| s == expected);
                match serde_json::from_str::<EventBody>(&body) {
                    Ok(ev) => println!(
                        "          webhook {} {} {} seq {} -> {} (signature {})",
                        ev.event_type,
                        ev.data.payment.kind,
                        ev.data.payment.id,
                        ev.data.sequence,
                        ev.data.payment.state,
                        if ok { "valid" } else { "INVALID" }
                    ),
                    Err(e) => println!("          webhook with an unexpected body ({e}): {body}"),
                }
                if ok {
                    StatusCode::NO_CONTENT
                } else {
                    StatusCode::UNAUTHORIZED
                }
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}
