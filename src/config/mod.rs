//! Configuration: a TOML file, then `NINJAPOLL_SECTION__KEY` environment variables, over
//! built-in defaults (SPEC section 3). Parsed once, at start-up, into typed settings; every
//! refusal names the key at fault.

//!
//! `raw` is the layer figment reads (and `defaults`), `sane` the ranges, `validate` the
//! shared value checks, `secrets` the keys and key files, `schedule` the ladder and the
//! reconciliation schedules; `from_raw` validates one section at a time.

use crate::account::{Account, AccountName};
use crate::budget::BacklogShare;
use crate::callback::CallbackPrefix;
use crate::kinds::{Kind, KindName};
use crate::ladder::Ladder;
use crate::secret::Secret;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod accounts;
mod raw;
mod sane;
mod schedule;
mod secrets;
mod sections;
#[cfg(test)]
mod tests;
mod validate;

#[cfg(test)]
pub(crate) use raw::RawAccount;
pub use raw::{defaults, Raw, RawStep};
use secrets::{is_secret_key, world_readable};

const REDACTED: &str = "<redacted>";

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("{0}")]
    Load(Box<figment::Error>),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    /// The ladder's own errors name their key.
    #[error(transparent)]
    Ladder(#[from] crate::ladder::LadderError),
}

/// A value that does not read (a duration that is not one, a number that is text) is
/// reported like every other refusal: its key first (`schedule.steps[0].for`), then what
/// is wrong and where the value came from. figment would name the key after its profile
/// (`default.`), which no user writes.
fn load_error(e: figment::Error) -> ConfigError {
    use figment::error::{Actual, Kind};
    if e.count() != 1 || e.path.is_empty() {
        return ConfigError::Load(Box::new(e));
    }
    let mut key = String::new();
    for part in &e.path {
        match part.parse::<usize>() {
            Ok(i) => key += &format!("[{i}]"),
            Err(_) if key.is_empty() => key += part,
            Err(_) => key += &format!(".{part}"),
        }
    }
    let what = match &e.kind {
        // humantime-serde's refusal drops humantime's reason (e.g. the units it knows);
        // asking humantime again for it costs nothing on a path that stops the start.
        Kind::InvalidValue(Actual::Str(v), expected) if expected == "a duration" => {
            let why = humantime::parse_duration(v).err().map(|e| format!(": {e}"));
            format!(
                "{v:?} is not a duration like \"3s\" or \"10m\"{}",
                why.unwrap_or_default()
            )
        }
        kind => kind.to_string(),
    };
    let source = match &e.metadata {
        Some(m) => match &m.source {
            Some(src) => format!(" (in {src})"),
            None => format!(" (from {})", m.name),
        },
        None => String::new(),
    };
    invalid(key, format!("{what}{source}"))
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Socket settings.
#[derive(Debug, Clone)]
pub struct SocketConfig {
    pub path: PathBuf,
    pub mode: u32,
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
    /// Most client connections at once (lowered under a low open-files limit).
    pub max_connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long one request may take, its body included.
    pub request_timeout: Duration,
}

/// Ninjapay settings.
#[derive(Debug, Clone)]
pub struct NinjapayConfig {
    pub api_key: Option<Secret>,
    pub prod_base_url: String,
    pub api_base_url: String,
    pub budget_requests: u32,
    pub budget_window: Duration,
    /// The share of each key's budget a burst's backlog may take.
    pub backlog_share: BacklogShare,
    pub max_in_flight: usize,
    /// Longest pause a `Retry-After` may impose.
    pub max_pause: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

/// Webhook settings.
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    pub url: Option<String>,
    pub secrets: Vec<Secret>,
    pub retry: Vec<Duration>,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub allowed_callback_prefixes: Vec<CallbackPrefix>,
    /// Delivered events older than this are deleted (`None`: they go with their payment).
    pub keep_delivered: Option<Duration>,
}

/// Log settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub json: bool,
    pub level: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_path: PathBuf,
    /// Finished payments older than this are deleted with their history and webhook
    /// events (`None`: kept forever).
    pub keep_finished: Option<Duration>,
    /// Where `/metrics` is also served (loopback only).
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub socket: SocketConfig,
    pub ninjapay: NinjapayConfig,
    pub ladder: Ladder,
    pub kinds: BTreeMap<KindName, Arc<Kind>>,
    pub webhooks: WebhooksConfig,
    /// Every account, `default` (`[ninjapay]`, `[webhooks]`) included.
    pub accounts: BTreeMap<AccountName, Arc<Account>>,
    pub log: LogConfig,
    /// What was loaded, secrets replaced, for `check-config`.
    pub effective: Raw,
    /// Things worth an operator's attention that do not stop the start (e.g. a secret
    /// file readable by every user); logged at start and shown by `check-config`.
    pub warnings: Vec<String>,
}

/// Which file to read: `--config`, else `NINJAPOLL_CONFIG`, else the system path if present.
pub fn locate(explicit: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(p) = explicit {
        return if p.exists() {
            Ok(Some(p.to_path_buf()))
        } else {
            Err(ConfigError::Missing(p.to_path_buf()))
        };
    }
    if let Some(p) = std::env::var_os("NINJAPOLL_CONFIG").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.exists() {
            Ok(Some(p))
        } else {
            Err(ConfigError::Missing(p))
        };
    }
    let system = Path::new("/etc/ninjapoll/ninjapoll.toml");
    Ok(system.exists().then(|| system.to_path_buf()))
}

/// Where `run` reads its configuration: the file found at start (by [`locate`]) and the
/// environment. A reload reads the same file again, even if another one has appeared
/// where `locate` looks since.
#[derive(Debug, Clone, Default)]
pub struct Source {
    file: Option<PathBuf>,
}

impl Source {
    /// The sources `--config` (or `NINJAPOLL_CONFIG`, or the system path) names.
    pub fn locate(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        Ok(Self {
            file: locate(explicit)?,
        })
    }

    /// The file, if any (none: built-in defaults and the environment).
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Reads and validates the configuration, as `check-config` does with the same file:
    /// a file gone since the start is refused as `--config` naming a missing file is.
    pub fn load(&self) -> Result<Config, ConfigError> {
        match &self.file {
            Some(f) if !f.exists() => Err(ConfigError::Missing(f.clone())),
            file => Config::load(file.as_deref()),
        }
    }
}

/// Why a configuration is refused, as one line: what `check-config` prints after
/// `error: `, and what a refused reload logs. The error and its causes, `: `-separated.
pub fn refusal_message(e: &ConfigError) -> String {
    let mut line = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

impl Config {
    /// Loads defaults, then the file (if any), then the environment, and validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(defaults()));
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        let env = || {
            Env::prefixed("NINJAPOLL_")
                .split("__")
                .ignore(&["config"])
                .map(|k| k.as_str().to_ascii_lowercase().into())
        };
        fig = fig.merge(env().filter(|k| !is_secret_key(k.as_str())));
        // Secrets are taken from the environment as the text they are: figment would read
        // an all-digit key as a number (dropping leading zeros) and quote it in errors.
        for (key, value) in env().filter(|k| is_secret_key(k.as_str())).iter() {
            fig = fig.merge((key.as_str().to_string(), value));
        }
        let raw: Raw = fig.extract().map_err(load_error)?;
        let mut inline = vec![
            "ninjapay.api_key".to_string(),
            "webhooks.secret".to_string(),
        ];
        inline.extend(raw.kinds.keys().map(|k| format!("kinds.{k}.api_key")));
        for a in raw.accounts.keys() {
            inline.push(format!("accounts.{a}.api_key"));
            inline.push(format!("accounts.{a}.webhooks.secret"));
        }
        let mut config = Self::from_raw(raw)?;
        for key in inline {
            let from_file = fig
                .find_metadata(&key)
                .and_then(|m| m.source.as_ref())
                .and_then(|s| s.file_path())
                .map(Path::to_path_buf);
            if let Some(w) = from_file.and_then(|f| world_readable(&key, &f)) {
                config.warnings.push(w);
            }
        }
        Ok(config)
    }

    /// Validates loaded settings: a [`Raw`] over [`defaults`], as `load` builds it (a key
    /// left unset falls back on the default `defaults()` shows). One section at a time, in
    /// the order a refusal is reported.
    pub fn from_raw(raw: Raw) -> Result<Self, ConfigError> {
        let database_path = sections::database_path(&raw);
        let socket = sections::socket(&raw)?;
        let mut warnings = Vec::new();
        sane::sane(&raw, &mut warnings)?;
        let ninjapay = sections::ninjapay(&raw.ninjapay, &mut warnings)?;
        let ladder = schedule::ladder(&raw.schedule)?;
        let longest_window = raw
            .accounts
            .values()
            .filter_map(|a| a.budget_window)
            .fold(ninjapay.budget_window, Duration::max);
        let keep_finished = sections::keep_finished(&raw, longest_window, &ladder)?;
        let kinds = sections::kinds(&raw, &ninjapay, &ladder, keep_finished, &mut warnings)?;
        let webhooks = sections::webhooks(&raw.webhooks, &mut warnings)?;
        let accounts = accounts::accounts(&raw, &ninjapay, &webhooks, &kinds, &mut warnings)?;
        let metrics_listen = sections::metrics_listen(&raw)?;
        let log = sections::log(&raw.log)?;
        let mut effective = raw;
        redact(&mut effective);
        Ok(Self {
            database_path,
            keep_finished,
            metrics_listen,
            socket,
            ninjapay,
            ladder,
            kinds,
            webhooks,
            accounts,
            log,
            effective,
            warnings,
        })
    }

    /// This configuration as the account `name` alone sees it: its key and budget in
    /// `[ninjapay]`'s place (what `simulate --account` runs on).
    pub fn as_account(&self, name: &str) -> Result<Config, ConfigError> {
        let account = self.accounts.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.accounts.keys().map(|a| a.as_str()).collect();
            invalid(
                "--account",
                format!("unknown account {name:?}; configured: {}", known.join(", ")),
            )
        })?;
        let mut cfg = self.clone();
        cfg.ninjapay.api_key = account.api_key.clone();
        cfg.ninjapay.budget_requests = account.budget_requests;
        cfg.ninjapay.budget_window = account.budget_window;
        cfg.accounts.retain(|a, _| a.is_default());
        Ok(cfg)
    }

    /// The effective configuration as TOML (the format it is written in, so it can be
    /// pasted back into a file), secrets redacted.
    pub fn to_redacted_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(&self.effective)
    }
}

fn redact(raw: &mut Raw) {
    let hide = |s: &mut Option<String>| {
        if s.is_some() {
            *s = Some(REDACTED.into());
        }
    };
    hide(&mut raw.ninjapay.api_key);
    hide(&mut raw.webhooks.secret);
    for k in raw.kinds.values_mut() {
        hide(&mut k.api_key);
    }
    for a in raw.accounts.values_mut() {
        hide(&mut a.api_key);
        hide(&mut a.webhooks.secret);
    }
}
