//! `ninjapoll health`: the daemon's health for a person, or as the API's JSON.

use super::args::Cli;
use super::commands::client_socket;
use crate::client::request;
use crate::wire::ErrorAnswer;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::process::ExitCode;

/// `ninjapoll health`: one screen (or the API's JSON), redrawn every `--interval` with
/// `--watch` until interrupted; the exit status says whether the last answer was healthy.
pub(super) async fn health(cli: &Cli, watch: bool, interval: &str) -> Result<u8> {
    use crate::health_view::{self, Style, UNREACHABLE};
    use std::io::{IsTerminal, Write};
    let every = humantime::parse_duration(interval)
        .ok()
        .filter(|d| *d >= std::time::Duration::from_millis(100))
        .with_context(|| {
            format!("--interval {interval:?}: expected a duration of 100ms or more, like 2s")
        })?;
    let socket = client_socket(cli);
    let terminal = std::io::stdout().is_terminal();
    let style = Style::for_output(terminal, std::env::var_os("NO_COLOR").as_deref());
    // Listening before the first request, so that a Ctrl-C while one waits is not lost.
    let mut interrupt = if watch {
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .context("listening for Ctrl-C")?,
        )
    } else {
        None
    };
    let mut code = UNREACHABLE;
    loop {
        let fetched = match &mut interrupt {
            Some(ctrl_c) => tokio::select! {
                fetched = fetch_health(&socket) => fetched,
                _ = ctrl_c.recv() => return Ok(code),
            },
            None => fetch_health(&socket).await,
        };
        // What to show, on stdout (`Ok`) or as an error.
        let shown = match fetched {
            Err(e) => {
                code = UNREACHABLE;
                Err(format!("error: {e:#}"))
            }
            Ok((value, health)) => {
                code = health
                    .as_ref()
                    .map_or(UNREACHABLE, health_view::exit_status);
                match (cli.json, health) {
                    (true, _) => {
                        Ok(serde_json::to_string_pretty(&value)
                            .unwrap_or_else(|_| value.to_string()))
                    }
                    (false, Ok(h)) => Ok(health_view::render(&h, style, crate::payment::now_ms())),
                    (false, Err(e)) => Err(format!("error: {e:#}")),
                }
            }
        };
        let Some(ctrl_c) = &mut interrupt else {
            match shown {
                Ok(text) => println!("{}", text.trim_end()),
                Err(text) => eprintln!("{text}"),
            }
            return Ok(code);
        };
        if terminal {
            // Home and clear, then the screen: a redraw in place.
            print!("\x1b[H\x1b[2J");
        }
        match (cli.json, shown) {
            // One document per answer, for a program to read as they come.
            (true, Ok(json)) => println!("{}", json.trim_end()),
            (true, Err(e)) => eprintln!("{e}"),
            // While watching, an unreachable daemon is part of the picture, not the end
            // of it.
            (false, text) => println!(
                "{}\n\n(every {}; Ctrl-C to stop)",
                text.unwrap_or_else(|e| e).trim_end(),
                humantime::format_duration(every)
            ),
        }
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = ctrl_c.recv() => return Ok(code),
        }
    }
}

/// `GET /v1/health`: the answer as sent, and as read (an error when it is no health
/// answer of this version).
pub(super) async fn fetch_health(socket: &Path) -> Result<(Value, Result<crate::wire::Health>)> {
    let (status, value) = request(socket, "GET", "/v1/health", None).await?;
    if status != 200 {
        match serde_json::from_value::<ErrorAnswer>(value.clone()) {
            Ok(ErrorAnswer { error, .. }) => {
                bail!("{} ({}, HTTP {status})", error.message, error.code)
            }
            Err(_) => bail!("request failed (HTTP {status}): {value}"),
        }
    }
    let health = serde_json::from_value(value.clone())
        .context("the daemon's answer is not what this ninjapoll expects (pass --json to see it)");
    Ok((value, health))
}

/// `ninjapoll accounts`: each account the daemon checks for, with its pending payments,
/// its budget, whether it keeps up and the delay to expect (or, with `--json`, the
/// `accounts` of `/v1/health`).
pub(super) async fn accounts(cli: &Cli) -> Result<ExitCode> {
    let socket = client_socket(cli);
    let (value, health) = fetch_health(&socket).await?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&value["accounts"])?);
        return Ok(ExitCode::SUCCESS);
    }
    let health = health?;
    let mut out = String::new();
    crate::health_view::render_accounts(
        &mut out,
        &health.accounts,
        crate::health_view::Style { color: false },
    );
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
