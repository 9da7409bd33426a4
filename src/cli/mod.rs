//! The command line (SPEC section 7): `run` starts the daemon; the client commands speak
//! to its socket.//!
//! The parts: `args` (the clap definitions), `commands` (the client commands and how their
//! answers print), `health` (`ninjapoll health`) and `simulate` (`ninjapoll simulate`).

mod args;
mod commands;
mod health;
mod simulate;

use crate::config::{self, Config};
use crate::daemon;
use anyhow::{Context, Result};
use args::{Cli, Command};
use clap::Parser;
use std::path::Path;
use std::process::ExitCode;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::allocator::limit_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A refused configuration as `main` prints it (`error: ` and the one line).
fn refused(e: config::ConfigError) -> anyhow::Error {
    anyhow::anyhow!(config::refusal_message(&e))
}

pub(super) fn load_config(explicit: Option<&Path>) -> Result<Config> {
    let file = config::locate(explicit)?;
    Ok(Config::load(file.as_deref())?)
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Run => {
            let source = config::Source::locate(cli.config.as_deref()).map_err(refused)?;
            let cfg = source.load().map_err(refused)?;
            crate::logging::init(&cfg.log);
            daemon::run(cfg, source).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => {
            // The same reading and the same message as `run` and a reload (SIGHUP).
            let source = config::Source::locate(cli.config.as_deref()).map_err(refused)?;
            let cfg = source.load().map_err(refused)?;
            for w in &cfg.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "configuration OK ({})",
                source
                    .file()
                    .map(|f| f.display().to_string())
                    .unwrap_or_else(|| "built-in defaults and environment".into())
            );
            let shown = cfg
                .to_redacted_toml()
                .context("cannot write the configuration as TOML")?;
            println!("{shown}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            rate,
            mix,
            kind,
            also,
            hours,
            warmup,
        } => {
            let loaded = load_config(cli.config.as_deref())?;
            let account = cli
                .account
                .as_deref()
                .unwrap_or(crate::account::AccountName::DEFAULT);
            let cfg = loaded.as_account(account)?;
            let warmup = humantime::parse_duration(warmup)
                .with_context(|| format!("--warmup {warmup:?}: expected a duration like 1h"))?;
            let streams = simulate::streams(kind, rate, also)?;
            simulate::simulate(&cfg, account, &streams, mix, (*hours, warmup), cli.json).await
        }
        #[cfg(feature = "demo")]
        Command::Demo { payments } => {
            crate::demo::run(*payments).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Accounts => health::accounts(&cli).await,
        Command::Health { watch, interval } => {
            // Anything but a verdict (a wrong --interval, no daemon) is status 2, so that
            // 1 always means "not healthy".
            let code = match health::health(&cli, *watch, interval).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    crate::health_view::UNREACHABLE
                }
            };
            Ok(ExitCode::from(code))
        }
        _ => commands::client(&cli).await,
    }
}
