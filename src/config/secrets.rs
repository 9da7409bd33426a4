//! Secrets: which keys hold one, key files, and warnings about files every user can read.

use super::raw::{RawNinjapay, RawWebhooks};
use super::{invalid, ConfigError};
use crate::secret::Secret;
use std::path::Path;

/// Whether a configuration key path names a secret (`ninjapay.api_key`,
/// `kinds.NAME.api_key`, `webhooks.secret`).
pub(super) fn is_secret_key(path: &str) -> bool {
    matches!(path.rsplit('.').next(), Some("api_key" | "secret"))
}

/// A warning about a file holding a secret that every local user can read.
pub(super) fn world_readable(key: &str, path: &Path) -> Option<String> {
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

/// Shortest webhook key not warned about.
const MIN_SECRET_BYTES: usize = 16;

/// `ninjapay.api_key`, or the key in `ninjapay.api_key_file`; none without either.
pub(super) fn api_key(
    n: &RawNinjapay,
    warnings: &mut Vec<String>,
) -> Result<Option<Secret>, ConfigError> {
    key_of(
        "ninjapay",
        n.api_key.as_ref(),
        n.api_key_file.as_deref(),
        warnings,
    )
}

/// `{section}.api_key`, or the key in `{section}.api_key_file`; none without either.
pub(super) fn key_of(
    section: &str,
    key: Option<&String>,
    file: Option<&Path>,
    warnings: &mut Vec<String>,
) -> Result<Option<Secret>, ConfigError> {
    Ok(match (key, file) {
        (Some(k), _) if !k.trim().is_empty() => Some(Secret::new(k.clone())),
        (_, Some(path)) => {
            let name = format!("{section}.api_key_file");
            warnings.extend(world_readable(&name, path));
            Some(Secret::from_file(path).map_err(|e| invalid(name, e))?)
        }
        _ => None,
    })
}

/// The webhook signing keys (`webhooks.secret` or `webhooks.secret_file`, several
/// separated by spaces while rotating), each decoded once; a short one is a warning.
pub(super) fn webhook_secrets(
    w: &RawWebhooks,
    warnings: &mut Vec<String>,
) -> Result<Vec<Secret>, ConfigError> {
    signing_keys(
        "webhooks",
        w.secret.as_ref(),
        w.secret_file.as_deref(),
        warnings,
    )
}

/// `{section}.secret` or the keys in `{section}.secret_file`, each decoded once.
pub(super) fn signing_keys(
    section: &str,
    secret: Option<&String>,
    secret_file: Option<&Path>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Secret>, ConfigError> {
    let secrets: Vec<Secret> = match (secret, secret_file) {
        (Some(s), _) => s
            .split_whitespace()
            .map(|s| Secret::new(s.into()))
            .collect(),
        (None, Some(path)) => {
            let name = format!("{section}.secret_file");
            warnings.extend(world_readable(&name, path));
            Secret::from_file(path)
                .map_err(|e| invalid(name, e))?
                .expose()
                .split_whitespace()
                .map(|s| Secret::new(s.into()))
                .collect()
        }
        (None, None) => Vec::new(),
    };
    for s in &secrets {
        let key = crate::secret::decode_secret(s)
            .map_err(|e| invalid(format!("{section}.secret"), e.to_string()))?;
        if key.len() < MIN_SECRET_BYTES {
            warnings.push(format!(
                "{section}.secret: a key of {} bytes is easy to guess; use at least \
                 {MIN_SECRET_BYTES} random bytes (e.g. whsec_ and 32 bytes in base64)",
                key.len()
            ));
        }
    }
    Ok(secrets)
}
