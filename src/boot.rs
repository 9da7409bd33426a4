//! The machine's boot clock: which boot this is and how long since it started
//! (`CLOCK_BOOTTIME`, suspend included). Unlike the wall clock it never jumps, so the budget
//! ledger dates its rows by it too: a restart within the same boot knows how long ago each
//! request went out whatever the wall clock did meanwhile.

use std::sync::OnceLock;

/// `(boot id, ms since boot)`, when the kernel tells (Linux `/proc`).
pub fn now() -> Option<(String, i64)> {
    static ID: OnceLock<Option<String>> = OnceLock::new();
    let id = ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .clone()?;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| (id, (secs * 1000.0).round() as i64))
}
