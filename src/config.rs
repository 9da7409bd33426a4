//! Configuration: a TOML file, then `NINJAPOLL_SECTION__KEY` environment variables, over
//! built-in defaults (SPEC section 3). Parsed once, at start-up, into typed settings; every
//! refusal names the key at fault.

use crate::budget::BacklogShare;
use crate::kinds::{self, Kind, KindName, RawKind};
use crate::ladder::Ladder;
use crate::secret::{secret_text, Secret};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const REDACTED: &str = "<redacted>";

/// The configuration as written (file + environment + defaults), before validation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    #[serde(default)]
    pub database: RawDatabase,
    #[serde(default)]
    pub socket: RawSocket,
    #[serde(default)]
    pub ninjapay: RawNinjapay,
    #[serde(default)]
    pub schedule: RawSchedule,
    #[serde(default)]
    pub webhooks: RawWebhooks,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub reconcile: RawReconcile,
    #[serde(default)]
    pub kinds: BTreeMap<String, RawKind>,
}

/// `[reconcile]`: how long a payment stays watched after its ladder ends.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReconcile {
    /// Ages since the start at which a timed-out payment is checked again (the densest
    /// allowed); the last ends the watch; `[]` turns reconciliation off.
    #[serde(default, with = "durations")]
    pub after: Option<Vec<Duration>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub path: Option<PathBuf>,
    /// How long finished payments are kept (`0`: forever, also as a bare number, as an
    /// environment variable gives it).
    #[serde(default, with = "period")]
    pub keep_finished: Option<Duration>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// A loopback `IP:PORT` to serve `/metrics` on besides the socket.
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSocket {
    pub path: Option<PathBuf>,
    /// Octal file mode of the socket, e.g. "0660". Also taken as a bare number (660, or
    /// 0660 from an environment variable, which figment reads as the integer 660): its
    /// decimal digits are read as octal, as chmod does.
    #[serde(default, deserialize_with = "mode_digits")]
    pub mode: Option<String>,
    #[serde(default)]
    pub allowed_uids: Vec<u32>,
    #[serde(default)]
    pub allowed_gids: Vec<u32>,
    pub max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNinjapay {
    #[serde(default, deserialize_with = "secret_text")]
    pub api_key: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub prod_base_url: Option<String>,
    pub api_base_url: Option<String>,
    pub budget_requests: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub budget_window: Option<Duration>,
    pub backlog_share: Option<f64>,
    pub max_in_flight: Option<usize>,
    /// Longest pause a `Retry-After` may impose on a key (Ninjapay documents a one-hour
    /// lockout).
    #[serde(default, with = "humantime_serde")]
    pub max_pause: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    #[serde(default, with = "durations")]
    pub first_check: Option<Vec<Duration>>,
    pub steps: Option<Vec<RawStep>>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    #[serde(rename = "for", default, with = "humantime_serde")]
    pub span: Option<Duration>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhooks {
    pub url: Option<String>,
    /// One secret, or several separated by spaces during a rotation.
    #[serde(default, deserialize_with = "secret_text")]
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    #[serde(default, with = "durations")]
    pub retry: Option<Vec<Duration>>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub max_in_flight: Option<usize>,
    #[serde(default)]
    pub allowed_callback_prefixes: Vec<String>,
    /// How long delivered events are kept, if shorter than their payment.
    #[serde(default, with = "period")]
    pub keep_delivered: Option<Duration>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `text` or `json`.
    pub format: Option<String>,
    /// A tracing filter, e.g. `info` or `ninjapoll=debug`; `RUST_LOG` wins when set.
    pub level: Option<String>,
}

/// A list of durations (`["5s", "30s"]`), each read by humantime-serde.
mod durations {
    use humantime_serde::Serde;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &Option<Vec<Duration>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|v| v.iter().copied().map(Serde::from).collect::<Vec<_>>())
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Duration>>, D::Error> {
        let v = Option::<Vec<Serde<Duration>>>::deserialize(d)?;
        Ok(v.map(|v| v.into_iter().map(Serde::into_inner).collect()))
    }
}

/// A retention period: a duration, or `0` (forever) also as a bare number, which TOML
/// allows and an environment variable always gives.
mod period {
    use serde::de::value::StrDeserializer;
    use serde::de::IntoDeserializer;
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    /// Whole days are written as days: humantime would write `90d` in months of 30.44
    /// days (`2months 29days 2h 52m 48s`), which reads as something nobody configured.
    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        const DAY: u64 = 86_400;
        match v {
            Some(d) if d.subsec_nanos() == 0 && d.as_secs() > 0 && d.as_secs() % DAY == 0 => {
                s.serialize_str(&format!("{}d", d.as_secs() / DAY))
            }
            _ => humantime_serde::serialize(v, s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match super::mode_digits(d)? {
            None => Ok(None),
            Some(text) => {
                let text: StrDeserializer<'_, D::Error> = text.as_str().into_deserializer();
                humantime_serde::deserialize(text).map(Some)
            }
        }
    }
}

/// `socket.mode` (or a retention period such as `0`) as text, whether written as a string
/// or as a number.
fn mode_digits<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Text(String),
        Number(u64),
    }
    Ok(Option::<Mode>::deserialize(d)?.map(|m| match m {
        Mode::Text(s) => s,
        Mode::Number(n) => n.to_string(),
    }))
}

/// Whether a configuration key path names a secret (`ninjapay.api_key`,
/// `kinds.NAME.api_key`, `webhooks.secret`).
fn is_secret_key(path: &str) -> bool {
    matches!(path.rsplit('.').next(), Some("api_key" | "secret"))
}

/// A warning about a file holding a secret that every local user can read.
fn world_readable(key: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "{key}: {} is readable by every user (mode {:o}); restrict it, e.g. chmod 640",
            path.display(),
            mode & 0o777
        )
    })
}

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

/// One entry of `webhooks.allowed_callback_prefixes`, parsed once: a callback URL is
/// allowed when its scheme, host and port are exactly these and its path starts with
/// this path on a `/` boundary. Compared as parsed URLs, never as strings, so that
/// `https://hooks.example.com.evil.net/` and `https://hooks.example.com@evil.net/` do not
/// pass for `https://hooks.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackPrefix {
    scheme: String,
    host: String,
    port: u16,
    path: String,
    text: String,
}

impl CallbackPrefix {
    /// Parses a prefix: an http(s) URL without userinfo, query or fragment.
    pub fn parse(s: &str) -> Result<Self, String> {
        let u = url::Url::parse(s.trim()).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(format!("{s:?} is not an http(s) URL"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(format!("{s:?} carries a user name or password"));
        }
        if u.query().is_some() || u.fragment().is_some() {
            return Err(format!(
                "{s:?} has a query or fragment; give scheme, host, port and path"
            ));
        }
        let (Some(host), Some(port)) = (u.host_str(), u.port_or_known_default()) else {
            return Err(format!("{s:?} has no host"));
        };
        Ok(Self {
            scheme: u.scheme().to_string(),
            host: host.to_string(),
            port,
            path: u.path().to_string(),
            text: s.trim().to_string(),
        })
    }

    /// Whether `u` is under this prefix (userinfo is refused before this is asked).
    pub fn allows(&self, u: &url::Url) -> bool {
        let path_ok = if self.path.ends_with('/') {
            u.path().starts_with(&self.path)
        } else {
            u.path() == self.path
                || u.path()
                    .strip_prefix(&self.path)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        u.scheme() == self.scheme
            && u.host_str() == Some(self.host.as_str())
            && u.port_or_known_default() == Some(self.port)
            && path_ok
    }
}

impl fmt::Display for CallbackPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a callback URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackRefusal {
    /// Not an http(s) URL we would send to (malformed, too long, userinfo).
    #[error("{0}")]
    Invalid(String),
    /// A good URL, but under none of the allowed prefixes.
    #[error("{0}")]
    NotAllowed(String),
}

/// Longest callback URL accepted.
pub const MAX_CALLBACK_URL: usize = 2048;

/// Checks a callback URL against the allow-list: at enqueue, and again before every send
/// (the list may have changed since).
pub fn check_callback(prefixes: &[CallbackPrefix], raw: &str) -> Result<(), CallbackRefusal> {
    if raw.len() > MAX_CALLBACK_URL {
        return Err(CallbackRefusal::Invalid(format!(
            "callback_url must be an http(s) URL of at most {MAX_CALLBACK_URL} bytes"
        )));
    }
    let u = url::Url::parse(raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| {
            CallbackRefusal::Invalid(format!(
                "callback_url must be an http(s) URL of at most {MAX_CALLBACK_URL} bytes"
            ))
        })?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err(CallbackRefusal::Invalid(
            "callback_url must not carry a user name or password".into(),
        ));
    }
    if prefixes.iter().any(|p| p.allows(&u)) {
        return Ok(());
    }
    Err(CallbackRefusal::NotAllowed(if prefixes.is_empty() {
        "callback_url is not accepted: webhooks.allowed_callback_prefixes is empty".into()
    } else {
        let list: Vec<String> = prefixes.iter().map(ToString::to_string).collect();
        format!(
            "callback_url must be under one of webhooks.allowed_callback_prefixes \
             (same scheme, host and port; path below the prefix's): {}",
            list.join(", ")
        )
    }))
}

/// Whether a URL's host is the local machine (`localhost`, 127.0.0.0/8, `::1`): the only
/// place an API key may travel over plain `http://`.
pub fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
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
    pub log: LogConfig,
    /// What was loaded, secrets replaced, for `check-config`.
    pub effective: Raw,
    /// Things worth an operator's attention that do not stop the start (e.g. a secret
    /// file readable by every user); logged at start and shown by `check-config`.
    pub warnings: Vec<String>,
}

// The defaults that validation falls back on, each written once: `defaults()` shows them
// (check-config) and `from_raw` falls back on the same constants.
const KEEP_FINISHED: Duration = Duration::from_secs(90 * 86_400);
const SOCKET_MAX_CONNECTIONS: usize = 256;
const SOCKET_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const SOCKET_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const BUDGET_REQUESTS: u32 = 1000;
const BUDGET_WINDOW: Duration = Duration::from_secs(600);
const MAX_IN_FLIGHT: usize = 16;
const MAX_PAUSE: Duration = Duration::from_secs(3600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
const WEBHOOK_MAX_IN_FLIGHT: usize = 8;
const LOG_LEVEL: &str = "info";

/// The built-in defaults, as a provider the file and environment merge over.
pub fn defaults() -> Raw {
    let secs = Duration::from_secs;
    let step = |&(every, span): &(u64, Option<u64>)| RawStep {
        every: secs(every),
        span: span.map(secs),
    };
    let (first_lo, first_hi) = crate::ladder::DOCUMENTED_FIRST_CHECK_SECS;
    Raw {
        database: RawDatabase {
            keep_finished: Some(KEEP_FINISHED),
            ..Default::default()
        },
        socket: RawSocket {
            max_connections: Some(SOCKET_MAX_CONNECTIONS),
            header_timeout: Some(SOCKET_HEADER_TIMEOUT),
            request_timeout: Some(SOCKET_REQUEST_TIMEOUT),
            ..Default::default()
        },
        ninjapay: RawNinjapay {
            prod_base_url: Some("https://prod.ninjapay.me".into()),
            api_base_url: Some("https://api.ninjapay.me".into()),
            budget_requests: Some(BUDGET_REQUESTS),
            budget_window: Some(BUDGET_WINDOW),
            backlog_share: Some(BacklogShare::DEFAULT.get()),
            max_in_flight: Some(MAX_IN_FLIGHT),
            max_pause: Some(MAX_PAUSE),
            connect_timeout: Some(CONNECT_TIMEOUT),
            request_timeout: Some(REQUEST_TIMEOUT),
            ..Default::default()
        },
        schedule: RawSchedule {
            first_check: Some(vec![secs(first_lo), secs(first_hi)]),
            steps: Some(
                crate::ladder::DOCUMENTED_STEPS_SECS
                    .iter()
                    .map(step)
                    .collect(),
            ),
            timeout: Some(secs(crate::ladder::DOCUMENTED_TIMEOUT_SECS)),
        },
        webhooks: RawWebhooks {
            // 5s, 30s, 2m, 10m, 30m, 1h, 2h, 4h, 8h, 8h
            retry: Some(
                [5, 30, 120, 600, 1800, 3600, 7200, 14_400, 28_800, 28_800]
                    .into_iter()
                    .map(secs)
                    .collect(),
            ),
            timeout: Some(WEBHOOK_TIMEOUT),
            max_in_flight: Some(WEBHOOK_MAX_IN_FLIGHT),
            ..Default::default()
        },
        log: RawLog {
            format: Some("text".into()),
            level: Some(LOG_LEVEL.into()),
        },
        reconcile: RawReconcile {
            after: Some(
                [
                    900, 1800, 3600, 7200, 21_600, 43_200, 86_400, 172_800, 259_200,
                ]
                .into_iter()
                .map(secs)
                .collect(),
            ),
        },
        kinds: kinds::presets(),
        ..Default::default()
    }
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

    /// Validates loaded settings.
    pub fn from_raw(raw: Raw) -> Result<Self, ConfigError> {
        let state_dir = std::env::var_os("STATE_DIRECTORY")
            .and_then(|s| std::env::split_paths(&s).next())
            .unwrap_or_else(|| PathBuf::from("."));
        let runtime_dir = std::env::var_os("RUNTIME_DIRECTORY")
            .and_then(|s| std::env::split_paths(&s).next())
            .unwrap_or_else(|| PathBuf::from("."));
        let database_path = raw
            .database
            .path
            .clone()
            .unwrap_or_else(|| state_dir.join("ninjapoll.db"));
        let mode = match raw.socket.mode.as_deref() {
            None => 0o660,
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    invalid(
                        "socket.mode",
                        format!("{m:?} is not an octal mode like \"0660\""),
                    )
                })?,
        };
        let socket = SocketConfig {
            path: raw
                .socket
                .path
                .clone()
                .unwrap_or_else(|| runtime_dir.join("ninjapoll.sock")),
            mode,
            allowed_uids: raw.socket.allowed_uids.clone(),
            allowed_gids: raw.socket.allowed_gids.clone(),
            max_connections: match raw.socket.max_connections.unwrap_or(SOCKET_MAX_CONNECTIONS) {
                0 => return Err(invalid("socket.max_connections", "must be at least 1")),
                n => n,
            },
            header_timeout: positive(
                "socket.header_timeout",
                raw.socket.header_timeout,
                SOCKET_HEADER_TIMEOUT,
            )?,
            request_timeout: positive(
                "socket.request_timeout",
                raw.socket.request_timeout,
                SOCKET_REQUEST_TIMEOUT,
            )?,
        };

        let mut warnings = Vec::new();
        sane(&raw, &mut warnings)?;
        let n = &raw.ninjapay;
        let api_key = match (&n.api_key, &n.api_key_file) {
            (Some(k), _) if !k.trim().is_empty() => Some(Secret::new(k.clone())),
            (_, Some(path)) => {
                warnings.extend(world_readable("ninjapay.api_key_file", path));
                Some(Secret::from_file(path).map_err(|e| invalid("ninjapay.api_key_file", e))?)
            }
            _ => None,
        };
        let prod = key_url("ninjapay.prod_base_url", n.prod_base_url.as_deref())?;
        let api = key_url("ninjapay.api_base_url", n.api_base_url.as_deref())?;
        let budget_requests = n.budget_requests.unwrap_or(BUDGET_REQUESTS);
        if budget_requests == 0 {
            return Err(invalid("ninjapay.budget_requests", "must be at least 1"));
        }
        let backlog_share = match n.backlog_share {
            None => BacklogShare::DEFAULT,
            Some(share) => BacklogShare::new(share).ok_or_else(|| {
                invalid(
                    "ninjapay.backlog_share",
                    format!(
                        "must be between {} and {} (a share of the budget), not {share}",
                        BacklogShare::MIN,
                        BacklogShare::MAX
                    ),
                )
            })?,
        };
        let max_in_flight = n.max_in_flight.unwrap_or(MAX_IN_FLIGHT);
        if max_in_flight == 0 {
            return Err(invalid("ninjapay.max_in_flight", "must be at least 1"));
        }
        let ninjapay = NinjapayConfig {
            api_key,
            budget_requests,
            budget_window: positive("ninjapay.budget_window", n.budget_window, BUDGET_WINDOW)?,
            backlog_share,
            max_in_flight,
            max_pause: positive("ninjapay.max_pause", n.max_pause, MAX_PAUSE)?,
            connect_timeout: positive(
                "ninjapay.connect_timeout",
                n.connect_timeout,
                CONNECT_TIMEOUT,
            )?,
            request_timeout: positive(
                "ninjapay.request_timeout",
                n.request_timeout,
                REQUEST_TIMEOUT,
            )?,
            prod_base_url: prod,
            api_base_url: api,
        };

        let ladder = ladder(&raw.schedule)?;
        // A restart relearns flip ages from the payments of the learner's memory
        // (scheduler::spawn); retention must not delete them sooner.
        let window_ms = i64::try_from(ninjapay.budget_window.as_millis()).unwrap_or(i64::MAX);
        let memory = crate::scheduler::memory_horizon_ms(ladder.timeout_ms(), window_ms);
        let keep_finished = keep(
            "database.keep_finished",
            raw.database.keep_finished.unwrap_or(KEEP_FINISHED),
            Some(Duration::from_millis(
                u64::try_from(memory).unwrap_or(u64::MAX),
            )),
        )?;

        let reconcile_after = reconcile_schedule(
            "reconcile.after",
            raw.reconcile.after.as_deref().unwrap_or_default(),
            &ladder,
        )?;
        let mut kinds = BTreeMap::new();
        for (name, rk) in &raw.kinds {
            if let (None, Some(path)) = (&rk.api_key, &rk.api_key_file) {
                warnings.extend(world_readable(&format!("kinds.{name}.api_key_file"), path));
            }
            let mut kind =
                Kind::from_raw(name, rk, &ninjapay.prod_base_url, &ninjapay.api_base_url)
                    .map_err(|e| invalid(format!("kinds.{}.{}", e.kind, e.field), e.message))?;
            kind.reconcile_after = match &rk.reconcile_after {
                None => reconcile_after.clone(),
                Some(ages) => {
                    let ages: Vec<Duration> = ages.iter().map(|a| a.into_inner()).collect();
                    reconcile_schedule(&format!("kinds.{name}.reconcile_after"), &ages, &ladder)?
                }
            };
            if let (Some(keep), Some(&last)) = (keep_finished, kind.reconcile_after.last()) {
                if u128::try_from(last).is_ok_and(|last| keep.as_millis() < last) {
                    return Err(invalid(
                        "database.keep_finished",
                        format!(
                            "\"{}\" is shorter than kind {name}'s reconciliation schedule ({}): a \
                             payment would be deleted while still watched",
                            humantime::format_duration(keep),
                            humantime::format_duration(Duration::from_millis(last as u64))
                        ),
                    ));
                }
            }
            // A kind's endpoint gets the key too.
            key_url(&format!("kinds.{name}.url"), Some(&kind.url))?;
            kinds.insert(kind.name.clone(), Arc::new(kind));
        }

        let w = &raw.webhooks;
        let secrets = match (&w.secret, &w.secret_file) {
            (Some(s), _) => s
                .split_whitespace()
                .map(|s| Secret::new(s.into()))
                .collect(),
            (None, Some(path)) => {
                warnings.extend(world_readable("webhooks.secret_file", path));
                Secret::from_file(path)
                    .map_err(|e| invalid("webhooks.secret_file", e))?
                    .expose()
                    .split_whitespace()
                    .map(|s| Secret::new(s.into()))
                    .collect()
            }
            (None, None) => Vec::new(),
        };
        for s in &secrets {
            let key = crate::secret::decode_secret(s)
                .map_err(|e| invalid("webhooks.secret", e.to_string()))?;
            if key.len() < MIN_SECRET_BYTES {
                warnings.push(format!(
                    "webhooks.secret: a key of {} bytes is easy to guess; use at least \
                     {MIN_SECRET_BYTES} random bytes (e.g. whsec_ and 32 bytes in base64)",
                    key.len()
                ));
            }
        }
        let url_ = match w.url.as_deref().filter(|u| !u.is_empty()) {
            Some(u) => Some(url("webhooks.url", Some(u))?),
            None => None,
        };
        if url_.is_some() && secrets.is_empty() {
            return Err(invalid(
                "webhooks.secret",
                "webhooks.url is set, so a signing secret (whsec_…) is required",
            ));
        }
        if !w.allowed_callback_prefixes.is_empty() && secrets.is_empty() {
            return Err(invalid(
                "webhooks.secret",
                "webhooks.allowed_callback_prefixes is set, so a signing secret (whsec_…) is required",
            ));
        }
        let retry = w.retry.clone().unwrap_or_default();
        let webhooks = WebhooksConfig {
            url: url_,
            secrets,
            retry,
            timeout: positive("webhooks.timeout", w.timeout, WEBHOOK_TIMEOUT)?,
            max_in_flight: w.max_in_flight.unwrap_or(WEBHOOK_MAX_IN_FLIGHT).max(1),
            allowed_callback_prefixes: w
                .allowed_callback_prefixes
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    CallbackPrefix::parse(p)
                        .map_err(|e| invalid(format!("webhooks.allowed_callback_prefixes[{i}]"), e))
                })
                .collect::<Result<_, _>>()?,
            keep_delivered: match w.keep_delivered {
                None => None,
                Some(d) => keep("webhooks.keep_delivered", d, None)?,
            },
        };
        let metrics_listen = match raw.metrics.listen.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(loopback("metrics.listen", s)?),
        };

        let log = LogConfig {
            json: match raw.log.format.as_deref() {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => {
                    return Err(invalid(
                        "log.format",
                        format!("{other:?} is not text or json"),
                    ))
                }
            },
            level: raw.log.level.clone().unwrap_or_else(|| LOG_LEVEL.into()),
        };

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
            log,
            effective,
            warnings,
        })
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
}

fn url(key: &str, value: Option<&str>) -> Result<String, ConfigError> {
    let v = value.ok_or_else(|| invalid(key, "missing"))?;
    let parsed = url::Url::parse(v)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| invalid(key, format!("{v:?} is not an http(s) URL")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            key,
            "a URL here must not carry a user name or password",
        ));
    }
    Ok(v.trim_end_matches('/').to_string())
}

/// A URL the API key is sent to: `https://`, or `http://` to the local machine only (a
/// key sent in clear over a network is a key given away).
fn key_url(key: &str, value: Option<&str>) -> Result<String, ConfigError> {
    let v = url(key, value)?;
    match url::Url::parse(&v) {
        Ok(u) if u.scheme() == "http" && !is_loopback(&u) => Err(invalid(
            key,
            format!(
                "{v:?} would send the API key in clear: use https:// (http:// only to localhost / 127.0.0.1 / ::1)"
            ),
        )),
        _ => Ok(v),
    }
}

/// Longest reconciliation schedule accepted: a year of watching.
const MAX_RECONCILE: Duration = Duration::from_secs(366 * 86_400);
/// Most ages in one schedule.
const MAX_RECONCILE_AGES: usize = 64;

/// A reconciliation schedule as ages in milliseconds since the start: strictly rising,
/// each past the ladder's timeout (before it the ladder checks), at most a year.
fn reconcile_schedule(
    key: &str,
    ages: &[Duration],
    ladder: &Ladder,
) -> Result<Vec<i64>, ConfigError> {
    if ages.len() > MAX_RECONCILE_AGES {
        return Err(invalid(
            key,
            format!("{} ages; at most {MAX_RECONCILE_AGES}", ages.len()),
        ));
    }
    let mut out: Vec<i64> = Vec::with_capacity(ages.len());
    for (i, age) in ages.iter().enumerate() {
        let shown = humantime::format_duration(*age);
        if *age > MAX_RECONCILE {
            return Err(invalid(
                format!("{key}[{i}]"),
                format!("\"{shown}\" is longer than a year"),
            ));
        }
        // At most a year: fits an i64 of milliseconds.
        let ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        if ms <= ladder.timeout_ms() {
            return Err(invalid(
                format!("{key}[{i}]"),
                format!(
                    "\"{shown}\" is not after the ladder's timeout ({}): the ladder checks until then",
                    humantime::format_duration(Duration::from_millis(ladder.timeout_ms().max(0) as u64))
                ),
            ));
        }
        if out.last().is_some_and(|prev| *prev >= ms) {
            return Err(invalid(
                format!("{key}[{i}]"),
                format!("\"{shown}\" is not after the age before it: ages rise"),
            ));
        }
        out.push(ms);
    }
    Ok(out)
}

/// A retention period: `0` keeps forever (`None`); otherwise at least `min`.
fn keep(key: &str, d: Duration, min: Option<Duration>) -> Result<Option<Duration>, ConfigError> {
    if d.is_zero() {
        return Ok(None);
    }
    if let Some(min) = min.filter(|m| d < *m) {
        return Err(invalid(
            key,
            format!(
                "\"{}\" is shorter than the learner's memory ({}: twelve payment lifetimes), \
                 from which a restart relearns flip ages; use 0 to keep forever or at least that",
                humantime::format_duration(d),
                humantime::format_duration(min)
            ),
        ));
    }
    Ok(Some(d))
}

/// An `IP:PORT` on the loopback interface: metrics are not for the network.
fn loopback(key: &str, s: &str) -> Result<std::net::SocketAddr, ConfigError> {
    let addr: std::net::SocketAddr = s.parse().map_err(|_| {
        invalid(
            key,
            format!("{s:?} is not an IP:PORT like \"127.0.0.1:9464\""),
        )
    })?;
    if !addr.ip().is_loopback() {
        return Err(invalid(
            key,
            format!(
                "{s:?} is not a loopback address: metrics are served on 127.0.0.1 or [::1] \
                 only (put a proxy with authentication in front to expose them)"
            ),
        ));
    }
    Ok(addr)
}

/// Shortest webhook key not warned about.
const MIN_SECRET_BYTES: usize = 16;
/// Longest retention period: a century, far inside what milliseconds since 1970 hold.
const MAX_PERIOD: Duration = Duration::from_secs(100 * 365 * 86_400);
/// Longest timeout, budget window or pause.
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);
/// Longest interval of the schedule or of the webhook retries.
const MAX_INTERVAL: Duration = Duration::from_secs(7 * 86_400);

/// Refuses durations beyond a sane range, naming the key, before any of them becomes an
/// integer; warns about values that are legal but likely a typo.
fn sane(raw: &Raw, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    let (n, w, s) = (&raw.ninjapay, &raw.webhooks, &raw.schedule);
    let mut checks: Vec<(String, Option<Duration>, Duration)> = vec![
        (
            "database.keep_finished".into(),
            raw.database.keep_finished,
            MAX_PERIOD,
        ),
        (
            "webhooks.keep_delivered".into(),
            w.keep_delivered,
            MAX_PERIOD,
        ),
        (
            "socket.header_timeout".into(),
            raw.socket.header_timeout,
            MAX_TIMEOUT,
        ),
        (
            "socket.request_timeout".into(),
            raw.socket.request_timeout,
            MAX_TIMEOUT,
        ),
        (
            "ninjapay.budget_window".into(),
            n.budget_window,
            MAX_TIMEOUT,
        ),
        (
            "ninjapay.connect_timeout".into(),
            n.connect_timeout,
            MAX_TIMEOUT,
        ),
        ("ninjapay.max_pause".into(), n.max_pause, MAX_TIMEOUT),
        (
            "ninjapay.request_timeout".into(),
            n.request_timeout,
            MAX_TIMEOUT,
        ),
        ("webhooks.timeout".into(), w.timeout, MAX_TIMEOUT),
        ("schedule.timeout".into(), s.timeout, MAX_INTERVAL),
    ];
    for (i, d) in s.first_check.iter().flatten().enumerate() {
        checks.push((format!("schedule.first_check[{i}]"), Some(*d), MAX_INTERVAL));
    }
    for (i, st) in s.steps.iter().flatten().enumerate() {
        checks.push((
            format!("schedule.steps[{i}].every"),
            Some(st.every),
            MAX_INTERVAL,
        ));
        checks.push((format!("schedule.steps[{i}].for"), st.span, MAX_INTERVAL));
    }
    for (i, d) in w.retry.iter().flatten().enumerate() {
        checks.push((format!("webhooks.retry[{i}]"), Some(*d), MAX_INTERVAL));
    }
    for (key, d, max) in checks {
        if let Some(d) = d.filter(|d| *d > max) {
            return Err(invalid(
                key,
                format!(
                    "\"{}\" is longer than the most allowed here ({})",
                    humantime::format_duration(d),
                    humantime::format_duration(max)
                ),
            ));
        }
    }
    if let Some(d) = n.budget_window.filter(|d| *d < Duration::from_secs(60)) {
        warnings.push(format!(
            "ninjapay.budget_window: \"{}\" is unusually short (Ninjapay's window is 10m); \
             the budget counts requests over this window",
            humantime::format_duration(d)
        ));
    }
    Ok(())
}

/// A duration that must not be zero; `default` when not configured.
fn positive(key: &str, d: Option<Duration>, default: Duration) -> Result<Duration, ConfigError> {
    let d = d.unwrap_or(default);
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

fn ladder(s: &RawSchedule) -> Result<Ladder, ConfigError> {
    let documented = Ladder::documented();
    let first = s.first_check.clone().unwrap_or_else(|| {
        let (lo, hi) = documented.first_window();
        [lo, hi]
            .map(|ms| Duration::from_millis(ms.unsigned_abs()))
            .to_vec()
    });
    let (lo, hi) = match first.as_slice() {
        [one] => (*one, *one),
        [lo, hi] => (*lo, *hi),
        _ => {
            return Err(invalid(
                "schedule.first_check",
                "give a window of two durations, e.g. [\"20s\", \"25s\"]",
            ))
        }
    };
    let steps: Vec<(Duration, Option<Duration>)> = match &s.steps {
        Some(steps) => steps.iter().map(|st| (st.every, st.span)).collect(),
        None => crate::ladder::DOCUMENTED_STEPS_SECS
            .iter()
            .map(|&(every, span)| (Duration::from_secs(every), span.map(Duration::from_secs)))
            .collect(),
    };
    let timeout = s.timeout.unwrap_or(Duration::from_millis(
        documented.timeout_ms().unsigned_abs(),
    ));
    Ok(Ladder::new((lo, hi), &steps, timeout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load(Some(&path))
    }

    #[test]
    fn socket_mode_as_string_or_number() {
        assert_eq!(
            load_str("[socket]\nmode = \"0600\"").unwrap().socket.mode,
            0o600
        );
        assert_eq!(load_str("[socket]\nmode = 640").unwrap().socket.mode, 0o640);
        let e = load_str("[socket]\nmode = 698").unwrap_err();
        assert!(e.to_string().starts_with("socket.mode"), "{e}");
    }

    #[test]
    fn defaults_alone_are_valid() {
        let c = Config::from_raw(defaults()).unwrap();
        assert_eq!(c.ladder, Ladder::documented());
        assert_eq!(c.ninjapay.budget_requests, 1000);
        assert_eq!(c.ninjapay.budget_window, Duration::from_secs(600));
        assert_eq!(c.kinds.len(), 4);
        assert_eq!(c.socket.mode, 0o660);
    }

    #[test]
    fn file_overrides_and_extends_kinds() {
        let c = load_str(
            r#"
            [ninjapay]
            api_key = "sk_live_secret"
            prod_base_url = "http://127.0.0.1:9"
            [schedule]
            first_check = ["100ms", "120ms"]
            steps = [{ every = "10ms", for = "50ms" }, { every = "40ms" }]
            timeout = "1s"
            [kinds.p2p]
            url = "{prod}/other"
            [kinds.custom]
            method = "GET"
            url = "{prod}/v9/check"
            id_field = "ref"
            auth_header = "Authorization"
            status_pointer = "/result/state"
            status_map = { open = "pending", done = "succeeded" }
            "#,
        )
        .unwrap();
        assert_eq!(c.kinds["p2p"].url, "http://127.0.0.1:9/other");
        assert_eq!(c.kinds["p2p"].id_field, "tid");
        assert_eq!(c.kinds["custom"].status_pointer, "/result/state");
        assert_eq!(c.ladder.timeout_ms(), 1000);
        let shown = c.to_redacted_toml().unwrap();
        assert!(!shown.contains("sk_live_secret"), "{shown}");
        // It is TOML that reads back, with the secret's place kept and marked.
        let back: toml::Table = toml::from_str(&shown).unwrap();
        assert_eq!(back["kinds"]["p2p"]["id_field"].as_str(), Some("tid"));
        assert_eq!(back["ninjapay"]["api_key"].as_str(), Some("<redacted>"));
        assert!(!format!("{c:?}").contains("sk_live_secret"));
    }

    fn prefixes(list: &[&str]) -> Vec<CallbackPrefix> {
        list.iter()
            .map(|p| CallbackPrefix::parse(p).unwrap())
            .collect()
    }

    #[test]
    fn callbacks_are_compared_as_parsed_urls() {
        let p = prefixes(&["https://hooks.example.com", "http://127.0.0.1:80/app/hooks"]);
        let ok = |u: &str| check_callback(&p, u).is_ok();
        assert!(ok("https://hooks.example.com/x"));
        assert!(ok("https://hooks.example.com"));
        assert!(
            ok("https://HOOKS.example.com:443/x"),
            "default port, host case"
        );
        assert!(ok("http://127.0.0.1/app/hooks"));
        assert!(ok("http://127.0.0.1/app/hooks/a/b?q=1"));
        // What a string prefix let through.
        assert!(!ok("https://hooks.example.com.evil.net/x"));
        assert_eq!(
            check_callback(&p, "https://hooks.example.com@evil.net/x"),
            Err(CallbackRefusal::Invalid(
                "callback_url must not carry a user name or password".into()
            ))
        );
        assert!(!ok("https://user@hooks.example.com/x"), "userinfo");
        assert!(!ok("http://127.0.0.1:8099/app/hooks"), "another port");
        assert!(
            !ok("http://127.0.0.1:80/app/hooksevil"),
            "not on a / boundary"
        );
        assert!(
            !ok("http://127.0.0.1/app/hooks/../../admin"),
            "dot segments resolved"
        );
        assert!(!ok("http://hooks.example.com/x"), "another scheme");
        assert!(!ok("ftp://hooks.example.com/x"));
        assert!(!ok(&format!(
            "https://hooks.example.com/{}",
            "a".repeat(2048)
        )));
        assert!(matches!(
            check_callback(&[], "https://hooks.example.com/x"),
            Err(CallbackRefusal::NotAllowed(_))
        ));
        // A prefix ending in '/' is a directory already.
        let p = prefixes(&["http://127.0.0.1:8080/"]);
        assert!(check_callback(&p, "http://127.0.0.1:8080/anything").is_ok());
        assert!(check_callback(&p, "http://127.0.0.1:8081/anything").is_err());
    }

    #[test]
    fn bad_callback_prefixes_are_refused_with_the_key() {
        for bad in [
            "hooks.example.com",
            "ftp://hooks.example.com",
            "https://u:p@hooks.example.com",
            "https://hooks.example.com/?a=1",
        ] {
            let e = load_str(&format!(
                "[webhooks]\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nallowed_callback_prefixes = [{bad:?}]"
            ))
            .unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("webhooks.allowed_callback_prefixes[0]"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn plain_http_carries_the_key_only_to_this_machine() {
        for ok in [
            "http://127.0.0.1:9",
            "http://127.3.4.5",
            "http://localhost:8080",
            "http://[::1]:9",
            "https://prod.ninjapay.me",
        ] {
            assert!(
                load_str(&format!("[ninjapay]\nprod_base_url = {ok:?}")).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "http://prod.ninjapay.me",
            "http://10.0.0.5:80",
            "http://[::2]",
        ] {
            let e = load_str(&format!("[ninjapay]\napi_base_url = {bad:?}")).unwrap_err();
            assert!(e.to_string().starts_with("ninjapay.api_base_url"), "{e}");
            assert!(e.to_string().contains("in clear"), "{e}");
        }
        // A kind's own endpoint carries the key as well.
        let e = load_str("[kinds.p2p]\nurl = \"http://example.com/check\"").unwrap_err();
        assert!(e.to_string().starts_with("kinds.p2p.url"), "{e}");
    }

    #[test]
    fn retention_is_a_period_or_zero_and_not_shorter_than_the_learners_memory() {
        let c = Config::from_raw(defaults()).unwrap();
        assert_eq!(c.keep_finished, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(c.webhooks.keep_delivered, None);
        let c = load_str("[database]\nkeep_finished = \"0\"\n[webhooks]\nkeep_delivered = \"7d\"")
            .unwrap();
        assert_eq!(c.keep_finished, None);
        assert_eq!(
            c.webhooks.keep_delivered,
            Some(Duration::from_secs(7 * 86_400))
        );
        // The learner's memory, from the one function the scheduler uses: twelve lifetimes
        // of 10 minutes (the timeout and the budget window).
        let memory = crate::scheduler::memory_horizon_ms(600_000, 600_000);
        assert_eq!(memory, 2 * 3_600_000);
        let e = load_str("[database]\nkeep_finished = \"119m\"").unwrap_err();
        assert!(e.to_string().starts_with("database.keep_finished"), "{e}");
        assert!(e.to_string().contains("2h"), "{e}");
        assert!(load_str("[database]\nkeep_finished = \"2h\"\n[reconcile]\nafter = []").is_ok());
        // It follows the lifetime: a 20-minute timeout needs four hours.
        let e = load_str("[schedule]\ntimeout = \"20m\"\n[database]\nkeep_finished = \"3h\"")
            .unwrap_err();
        assert!(e.to_string().contains("4h"), "{e}");
        // Nor shorter than the longest reconciliation schedule (72 h by default).
        let e = load_str("[database]\nkeep_finished = \"2d\"").unwrap_err();
        assert!(e.to_string().starts_with("database.keep_finished"), "{e}");
        assert!(e.to_string().contains("reconciliation"), "{e}");
        assert!(load_str("[database]\nkeep_finished = \"3d\"").is_ok());
        // `0` as a bare number, as TOML may and the environment always gives it.
        assert_eq!(
            load_str("[database]\nkeep_finished = 0")
                .unwrap()
                .keep_finished,
            None
        );
    }

    /// Defaults are written once: what `defaults()` shows is what an empty `Raw` (every
    /// key unset) validates to, and the ladder is the documented one.
    #[test]
    fn defaults_shown_are_the_defaults_applied() {
        let shown = Config::from_raw(defaults()).unwrap();
        // The base URLs and kinds have no fallback: they are required, given by defaults().
        let mut bare = Raw {
            kinds: kinds::presets(),
            ..Default::default()
        };
        bare.ninjapay.prod_base_url = defaults().ninjapay.prod_base_url;
        bare.ninjapay.api_base_url = defaults().ninjapay.api_base_url;
        let applied = Config::from_raw(bare).unwrap();
        assert_eq!(shown.ladder, Ladder::documented());
        assert_eq!(applied.ladder, Ladder::documented());
        assert_eq!(shown.keep_finished, applied.keep_finished);
        assert_eq!(
            format!("{:?}", shown.socket),
            format!("{:?}", applied.socket)
        );
        assert_eq!(
            format!("{:?}", shown.ninjapay),
            format!("{:?}", applied.ninjapay)
        );
        assert_eq!(shown.webhooks.timeout, applied.webhooks.timeout);
        assert_eq!(shown.webhooks.max_in_flight, applied.webhooks.max_in_flight);
        assert_eq!(shown.log.level, applied.log.level);
    }

    /// Extreme durations are refused naming the key, never wrapped or panicking; a
    /// likely typo is a warning.
    #[test]
    fn extreme_values_are_refused_with_the_key() {
        for (toml, key) in [
            (
                "[database]\nkeep_finished = \"300000000years\"",
                "database.keep_finished",
            ),
            (
                "[webhooks]\nkeep_delivered = \"300000000years\"",
                "webhooks.keep_delivered",
            ),
            (
                "[ninjapay]\nbudget_window = \"584000000000years\"",
                "ninjapay.budget_window",
            ),
            (
                "[ninjapay]\nbudget_window = \"2d\"",
                "ninjapay.budget_window",
            ),
            (
                "[ninjapay]\nrequest_timeout = \"1000years\"",
                "ninjapay.request_timeout",
            ),
            (
                "[schedule]\ntimeout = \"584000000000years\"",
                "schedule.timeout",
            ),
            (
                "[webhooks]\nretry = [\"5s\", \"584000000000years\"]",
                "webhooks.retry[1]",
            ),
        ] {
            let e = load_str(toml).unwrap_err();
            assert!(e.to_string().starts_with(key), "{toml}: {e}");
        }
        let c = load_str("[ninjapay]\nbudget_window = \"1s\"").unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.starts_with("ninjapay.budget_window")),
            "{:?}",
            c.warnings
        );
        // A 1-byte webhook key: accepted, with a warning.
        let c = load_str("[webhooks]\nsecret = \"whsec_QQ==\"").unwrap();
        assert!(
            c.warnings.iter().any(|w| w.starts_with("webhooks.secret")),
            "{:?}",
            c.warnings
        );
    }

    /// No magnitude of any duration key panics: each is accepted or refused.
    #[test]
    fn no_duration_magnitude_panics() {
        let keys = [
            ("database", "keep_finished"),
            ("webhooks", "keep_delivered"),
            ("ninjapay", "budget_window"),
            ("ninjapay", "request_timeout"),
            ("socket", "header_timeout"),
            ("schedule", "timeout"),
            ("webhooks", "timeout"),
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..300 {
            let (section, key) = keys[rng.usize(..keys.len())];
            let secs = match rng.u8(..4) {
                0 => rng.u64(..100),
                1 => rng.u64(..1 << 40),
                2 => u64::MAX - rng.u64(..1000),
                _ => 1u64 << rng.u32(..64),
            };
            let toml = format!("[{section}]\n{key} = \"{secs}s\"");
            let _ = load_str(&toml);
        }
    }

    #[test]
    fn metrics_listen_only_on_loopback() {
        let c = load_str("[metrics]\nlisten = \"127.0.0.1:9464\"").unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(load_str("[metrics]\nlisten = \"[::1]:9464\"").is_ok());
        for bad in ["0.0.0.0:9464", "192.168.1.5:9464", "localhost:9464", "9464"] {
            let e = load_str(&format!("[metrics]\nlisten = \"{bad}\"")).unwrap_err();
            assert!(e.to_string().starts_with("metrics.listen"), "{bad}: {e}");
        }
    }

    #[test]
    fn refusals_name_the_key() {
        let e = load_str("[schedule]\nsteps = [{ every = \"0s\" }]").unwrap_err();
        assert!(e.to_string().starts_with("schedule.steps[0].every"), "{e}");
        let e = load_str("[schedule]\nfirst_check = [\"25s\", \"20s\"]").unwrap_err();
        assert!(e.to_string().starts_with("schedule.first_check"), "{e}");
        let e = load_str("[schedule]\ntimeout = \"5s\"").unwrap_err();
        assert!(e.to_string().starts_with("schedule.timeout"), "{e}");
        let e = load_str("[ninjapay]\nbudget_window = \"soon\"").unwrap_err();
        assert!(e.to_string().starts_with("ninjapay.budget_window: "), "{e}");
        assert!(e.to_string().contains("\"soon\" is not a duration"), "{e}");
        for share in ["0", "0.01", "0.95", "1", "-0.2", "nan", "inf"] {
            let e = load_str(&format!("[ninjapay]\nbacklog_share = {share}")).unwrap_err();
            assert!(e.to_string().starts_with("ninjapay.backlog_share: "), "{e}");
            assert!(e.to_string().contains("between 0.05 and 0.9"), "{e}");
        }
        let e = load_str("[ninjapay]\nbacklog_share = \"half\"").unwrap_err();
        assert!(e.to_string().contains("backlog_share"), "{e}");
        let c = load_str("[ninjapay]\nbacklog_share = 0.5").unwrap();
        assert_eq!(c.ninjapay.backlog_share.get(), 0.5);
        assert_eq!(
            load_str("").unwrap().ninjapay.backlog_share,
            BacklogShare::DEFAULT
        );
        let e = load_str("[webhooks]\nretry = [\"5s\", \"5 fortnights\"]").unwrap_err();
        assert!(e.to_string().starts_with("webhooks.retry[1]: "), "{e}");
        assert!(e.to_string().contains("\"5 fortnights\""), "{e}");
        assert!(
            e.to_string().contains("unknown time unit \"fortnights\""),
            "{e}"
        );
        let e = load_str("[schedule]\nsteps = [{ every = \"3s\", for = \"1x\" }]").unwrap_err();
        assert!(e.to_string().starts_with("schedule.steps[0].for: "), "{e}");
        assert!(e.to_string().contains("\"1x\""), "{e}");
        let e = load_str("[ninjapay]\nbogus = 1").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = load_str("[webhooks]\nurl = \"http://127.0.0.1:1/x\"").unwrap_err();
        assert!(e.to_string().starts_with("webhooks.secret"), "{e}");
    }
}
