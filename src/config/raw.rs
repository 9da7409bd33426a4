//! The configuration as written (file + environment + defaults), before validation, and
//! the built-in defaults: each default is written once, in [`defaults`] (`check-config`
//! shows them; validation falls back on the same constants for a key a caller left unset).

use crate::budget::BacklogShare;
use crate::kinds::{self, RawKind};
use crate::secret::secret_text;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Accounts besides `default` (`[ninjapay]`), by name.
    #[serde(default)]
    pub accounts: BTreeMap<String, RawAccount>,
}

/// `[accounts.NAME]`: another Ninjapay account, with its own key and budget; what it does
/// not set comes from `[ninjapay]` and `[webhooks]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccount {
    #[serde(default, deserialize_with = "secret_text")]
    pub api_key: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub budget_requests: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub budget_window: Option<Duration>,
    #[serde(default)]
    pub webhooks: RawAccountWebhooks,
}

/// `[accounts.NAME.webhooks]`: where this account's events go and the secret that signs
/// them; each falls back on `[webhooks]`'s.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccountWebhooks {
    pub url: Option<String>,
    #[serde(default, deserialize_with = "secret_text")]
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
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
pub(super) fn mode_digits<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
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

// The defaults, each written once: `defaults()` shows them (check-config) and validation
// falls back on the same constants for a key a caller left unset.
pub(super) const KEEP_FINISHED: Duration = Duration::from_secs(90 * 86_400);
pub(super) const SOCKET_MODE: &str = "0660";
pub(super) const SOCKET_MAX_CONNECTIONS: usize = 256;
pub(super) const SOCKET_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const SOCKET_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const BUDGET_REQUESTS: u32 = 1000;
pub(super) const BUDGET_WINDOW: Duration = Duration::from_secs(600);
pub(super) const MAX_IN_FLIGHT: usize = 16;
pub(super) const MAX_PAUSE: Duration = Duration::from_secs(3600);
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
pub(super) const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const WEBHOOK_MAX_IN_FLIGHT: usize = 8;
/// 5s, 30s, 2m, 10m, 30m, 1h, 2h, 4h, 8h, 8h.
pub(super) const WEBHOOK_RETRY_SECS: [u64; 10] =
    [5, 30, 120, 600, 1800, 3600, 7200, 14_400, 28_800, 28_800];
/// 15m, 30m, 1h, 2h, 6h, 12h, 1d, 2d, 3d.
pub(super) const RECONCILE_AFTER_SECS: [u64; 9] = [
    900, 1800, 3600, 7200, 21_600, 43_200, 86_400, 172_800, 259_200,
];
pub(super) const LOG_FORMAT: &str = "text";
pub(super) const LOG_LEVEL: &str = "info";

pub(super) const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The built-in defaults, as a provider the file and environment merge over.
pub fn defaults() -> Raw {
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
            mode: Some(SOCKET_MODE.into()),
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
            retry: Some(WEBHOOK_RETRY_SECS.into_iter().map(secs).collect()),
            timeout: Some(WEBHOOK_TIMEOUT),
            max_in_flight: Some(WEBHOOK_MAX_IN_FLIGHT),
            ..Default::default()
        },
        log: RawLog {
            format: Some(LOG_FORMAT.into()),
            level: Some(LOG_LEVEL.into()),
        },
        reconcile: RawReconcile {
            after: Some(RECONCILE_AFTER_SECS.into_iter().map(secs).collect()),
        },
        kinds: kinds::presets(),
        ..Default::default()
    }
}
