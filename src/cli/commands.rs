//! The client commands: each speaks to the daemon's socket and reads the answer as the
//! `wire` type of its command.

use super::args::{Cli, Command, WebhooksCommand};
use super::load_config;
use crate::client::{self, request};
use crate::wire::{
    EnqueueRequest, ErrorAnswer, PaymentDetail, PaymentPage, PaymentView, RecheckAnswer,
    WebhookPage, WebhookView,
};
use anyhow::{Context, Result};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

/// What a path segment escapes: all but RFC 3986's unreserved characters.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The socket a client command speaks to: `--socket`, else the configuration's.
pub(super) fn client_socket(cli: &Cli) -> PathBuf {
    // A client needs only the socket path; a broken config must not stop `status`.
    let cfg = if cli.socket.is_none() {
        match load_config(cli.config.as_deref()) {
            Ok(c) => Some(c),
            Err(e) => {
                // Say so: otherwise a wrong default path reads as "no daemon".
                eprintln!("warning: configuration not loaded ({e:#}); trying ./ninjapoll.sock (pass --socket)");
                None
            }
        }
    } else {
        None
    };
    client::client_socket(cli.socket.as_deref(), cfg.as_ref())
}

/// A client command: sends its request and prints the answer (or the daemon's error).
pub(super) async fn client(cli: &Cli) -> Result<ExitCode> {
    let socket = client_socket(cli);
    let (method, path, body, answer) = request_of(&cli.command, cli.account.as_deref())?;
    let (status, value) = request(&socket, method, &path, body.as_ref()).await?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    if status >= 400 {
        // Anything but our error format (a proxy's page, a daemon far older or newer)
        // is still reported, as what it is.
        match serde_json::from_value::<ErrorAnswer>(value.clone()) {
            Ok(ErrorAnswer { error, .. }) => {
                eprintln!("error: {} ({}, HTTP {status})", error.message, error.code)
            }
            Err(_) => eprintln!("error: request failed (HTTP {status}): {value}"),
        }
        return Ok(ExitCode::FAILURE);
    }
    if !cli.json {
        print_human(answer, value)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What a client command asks: the method, the path, the body and the kind of answer.
fn request_of(
    command: &Command,
    account: Option<&str>,
) -> Result<(&'static str, String, Option<Value>, Answer)> {
    // Ids may hold any printable character (see `PaymentId`): everything but RFC 3986's
    // unreserved characters is escaped so that a `/` or `?` stays inside its segment.
    let enc = |s: &str| utf8_percent_encode(s, PATH_SEGMENT).to_string();
    // A payment's URL names its account when one is given (the daemon's default otherwise).
    let of = |path: String| match account {
        None => path,
        Some(a) => {
            let q: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("account", a)
                .finish();
            format!("{path}?{q}")
        }
    };
    let request = match command {
        Command::Enqueue {
            kind,
            id,
            started_at,
            metadata,
            callback_url,
        } => (
            "POST",
            "/v1/checks".to_string(),
            Some(enqueue_body(
                account,
                kind,
                id,
                started_at,
                metadata,
                callback_url,
            )?),
            Answer::Payment,
        ),
        Command::Status { kind, id } => (
            "GET",
            of(format!("/v1/checks/{}/{}", enc(kind), enc(id))),
            None,
            Answer::PaymentDetail,
        ),
        Command::Cancel { kind, id } => (
            "DELETE",
            of(format!("/v1/checks/{}/{}", enc(kind), enc(id))),
            None,
            Answer::Payment,
        ),
        Command::Recheck { kind, id } => (
            "POST",
            of(format!("/v1/checks/{}/{}/recheck", enc(kind), enc(id))),
            None,
            Answer::Recheck,
        ),
        Command::List {
            state,
            kind,
            limit,
            cursor,
        } => (
            "GET",
            format!(
                "/v1/checks?{}",
                page_query(*limit, state, account, kind, cursor)
            ),
            None,
            Answer::PaymentPage,
        ),
        Command::Webhooks { action } => webhooks_request(action, account),
        #[cfg(feature = "demo")]
        Command::Demo { .. } => unreachable!("handled by dispatch"),
        Command::Run
        | Command::CheckConfig
        | Command::Simulate { .. }
        | Command::Health { .. }
        | Command::Accounts => {
            unreachable!("handled by dispatch")
        }
    };
    Ok(request)
}

/// A listing's query string: the page size, the filters given, the cursor.
fn page_query(
    limit: u32,
    state: &Option<String>,
    account: Option<&str>,
    kind: &Option<String>,
    cursor: &Option<String>,
) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("limit", &limit.to_string());
    q.extend_pairs(state.iter().map(|s| ("state", s)));
    q.extend_pairs(account.iter().map(|a| ("account", a)));
    q.extend_pairs(kind.iter().map(|k| ("kind", k)));
    q.extend_pairs(cursor.iter().map(|c| ("cursor", c)));
    q.finish()
}

/// What a `ninjapoll webhooks` command asks (`account` filters a listing).
fn webhooks_request(
    action: &WebhooksCommand,
    account: Option<&str>,
) -> (&'static str, String, Option<Value>, Answer) {
    match action {
        WebhooksCommand::List {
            state,
            limit,
            cursor,
        } => (
            "GET",
            format!(
                "/v1/webhooks?{}",
                page_query(*limit, state, account, &None, cursor)
            ),
            None,
            Answer::WebhookPage,
        ),
        WebhooksCommand::Replay { event_id } => (
            "POST",
            format!(
                "/v1/webhooks/{}/replay",
                utf8_percent_encode(event_id, PATH_SEGMENT)
            ),
            None,
            Answer::Webhook,
        ),
    }
}

/// `ninjapoll enqueue`'s request body.
fn enqueue_body(
    account: Option<&str>,
    kind: &str,
    id: &str,
    started_at: &Option<String>,
    metadata: &Option<String>,
    callback_url: &Option<String>,
) -> Result<Value> {
    let b = EnqueueRequest {
        account: account.map(str::to_string),
        kind: kind.to_string(),
        id: id.to_string(),
        // A number stays a number: the API takes unix seconds either way, and
        // RFC 3339 as a string.
        started_at: started_at.as_ref().map(|s| match s.parse::<f64>() {
            Ok(n) => json!(n),
            Err(_) => json!(s),
        }),
        callback_url: callback_url.clone(),
        metadata: metadata
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .context("--metadata is not JSON")?,
    };
    serde_json::to_value(b).context("writing the request")
}

/// What a client command's successful answer is, so that it is read as that type rather
/// than guessed from its keys.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Payment,
    PaymentDetail,
    Recheck,
    PaymentPage,
    WebhookPage,
    Webhook,
}

fn print_human(answer: Answer, v: Value) -> Result<()> {
    let read = "the daemon's answer is not what this ninjapoll expects (pass --json to see it)";
    match answer {
        Answer::Payment => {
            let p: PaymentView = serde_json::from_value(v).context(read)?;
            print_payments(std::slice::from_ref(&p), None);
            print_next_check(&p);
        }
        Answer::PaymentDetail => {
            let d: PaymentDetail = serde_json::from_value(v).context(read)?;
            print_payments(std::slice::from_ref(&d.payment), None);
            print_next_check(&d.payment);
        }
        Answer::Recheck => {
            let r: RecheckAnswer = serde_json::from_value(v).context(read)?;
            print_payments(std::slice::from_ref(&r.payment), None);
            print_next_check(&r.payment);
        }
        Answer::PaymentPage => {
            let page: PaymentPage = serde_json::from_value(v).context(read)?;
            let more = page.next_cursor.filter(|_| page.has_more);
            print_payments(&page.payments, more.as_deref());
        }
        Answer::WebhookPage => {
            let page: WebhookPage = serde_json::from_value(v).context(read)?;
            let more = page.next_cursor.filter(|_| page.has_more);
            print_webhooks(&page.webhooks, more.as_deref());
        }
        Answer::Webhook => {
            print_webhooks(&[serde_json::from_value(v).context(read)?], None);
        }
    }
    Ok(())
}

fn print_payments(payments: &[PaymentView], more: Option<&str>) {
    println!(
        "{:<8} {:<24} {:<10} {:<12} {:>6}  LAST ERROR",
        "KIND", "ID", "STATE", "UPSTREAM", "CHECKS"
    );
    for p in payments {
        println!(
            "{:<8} {:<24} {:<10} {:<12} {:>6}  {}",
            p.facts.kind,
            p.facts.id,
            p.facts.state.as_str(),
            p.facts.upstream_status.as_deref().unwrap_or("-"),
            p.checks_done,
            p.last_error.as_deref().unwrap_or(""),
        );
    }
    if let Some(c) = more {
        println!("(more: --cursor {c})");
    }
}

fn print_next_check(p: &PaymentView) {
    if let Some(next) = p.next_check_at {
        println!("next check at {}", crate::payment::rfc3339(next.0));
    }
}

fn print_webhooks(events: &[WebhookView], more: Option<&str>) {
    println!(
        "{:<30} {:<9} {:<8} {:<24} {:>4} {:<22} {:>8}  LAST ERROR",
        "EVENT", "STATE", "KIND", "ID", "SEQ", "TYPE", "ATTEMPTS"
    );
    for e in events {
        println!(
            "{:<30} {:<9} {:<8} {:<24} {:>4} {:<22} {:>8}  {}",
            e.event_id,
            e.state.as_str(),
            e.payment.kind,
            e.payment.id,
            e.sequence,
            e.event_type,
            e.attempts,
            e.last_error.as_deref().unwrap_or(""),
        );
    }
    if let Some(c) = more {
        println!("(more: --cursor {c})");
    }
}
