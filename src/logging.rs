//! Logging set-up: `tracing` to stderr, as text or JSON. Under journald (stderr is the
//! stream systemd named in `$JOURNAL_STREAM`) lines carry no timestamp (the journal stamps
//! each entry) and start with the `<N>` priority prefix of sd-daemon(3), so `journalctl -p`
//! filters by level.

use crate::config::LogConfig;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log lines are shaped for where stderr goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// A terminal or a file: timestamps, colours on a terminal.
    Plain { ansi: bool },
    /// journald: no timestamps, no colours, `<N>` priority prefixes.
    Journal,
}

/// Whether stderr is the journal stream systemd connected: `$JOURNAL_STREAM` is
/// `DEVICE:INODE` of that stream, and it counts only while stderr is still that very file
/// (a shell under systemd that redirects stderr elsewhere inherits the variable).
pub fn is_journal_stream(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(var), Some((dev, ino))) = (journal_stream, stderr) else {
        return false;
    };
    let Some((d, i)) = var.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// The sd-daemon(3) priority of a level (`<3>` error … `<7>` debug).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Where this process's stderr goes, from the environment and `fstat(2)`.
pub fn detect_sink() -> Sink {
    let stderr = std::io::stderr();
    let id = std::os::fd::AsFd::as_fd(&stderr)
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| std::fs::File::from(fd).metadata().ok())
        .map(|m| (m.dev(), m.ino()));
    let var = std::env::var("JOURNAL_STREAM").ok();
    if is_journal_stream(var.as_deref(), id) {
        Sink::Journal
    } else {
        Sink::Plain {
            ansi: std::io::IsTerminal::is_terminal(&stderr),
        }
    }
}

/// Installs the global subscriber (stderr) for `cfg`, shaped for where stderr goes.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let _ = tracing::subscriber::set_global_default(subscriber(
        detect_sink(),
        cfg.json,
        filter,
        std::io::stderr,
    ));
}

/// The subscriber for a sink and format, writing to `writer`.
pub fn subscriber<W>(
    sink: Sink,
    json: bool,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        // A log line that cannot be written (stderr on a full disk) is dropped: reporting
        // it would `eprintln!` to the same stderr, which panics the task that logged.
        .log_internal_errors(false);
    match (sink, json) {
        (Sink::Plain { ansi }, false) => Box::new(builder.with_ansi(ansi).finish()),
        (Sink::Plain { .. }, true) => Box::new(builder.json().finish()),
        (Sink::Journal, false) => Box::new(
            builder
                .with_ansi(false)
                .event_format(Prioritised(
                    format().with_target(false).with_ansi(false).without_time(),
                ))
                .finish(),
        ),
        (Sink::Journal, true) => Box::new(
            builder
                .fmt_fields(JsonFields::new())
                .event_format(Prioritised(
                    format().json().with_target(false).without_time(),
                ))
                .finish(),
        ),
    }
}

fn format() -> format::Format {
    format::Format::default()
}

/// Puts the `<N>` priority of the event's level in front of what `F` writes.
struct Prioritised<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prioritised<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_journal_is_stderr_only_when_device_and_inode_match() {
        assert!(is_journal_stream(Some("8:1234"), Some((8, 1234))));
        assert!(!is_journal_stream(Some("8:1234"), Some((8, 1235))));
        assert!(!is_journal_stream(Some("9:1234"), Some((8, 1234))));
        assert!(!is_journal_stream(None, Some((8, 1234))));
        assert!(!is_journal_stream(Some("8:1234"), None));
        assert!(!is_journal_stream(Some("garbage"), Some((8, 1234))));
        assert!(!is_journal_stream(Some(""), Some((0, 0))));
    }

    #[test]
    fn levels_map_to_sd_daemon_priorities() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::DEBUG), 7);
        assert_eq!(priority(Level::TRACE), 7);
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(sink: Sink, json: bool) -> Vec<String> {
        let buf = Buffer::default();
        let out = buf.clone();
        let sub = subscriber(sink, json, EnvFilter::new("debug"), move || out.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::error!(kind = "p2p", id = "A1", "broken");
            tracing::warn!("careful");
            tracing::info!(kind = "p2p", id = "A1", "checked");
            tracing::debug!("detail");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    /// A timestamp as tracing-subscriber writes it: `2025-01-31T12:00:00.000000Z`.
    fn has_timestamp(line: &str) -> bool {
        line.as_bytes().windows(11).any(|w| {
            w[4] == b'-' && w[7] == b'-' && w[10] == b'T' && w[..4].iter().all(u8::is_ascii_digit)
        })
    }

    #[test]
    fn journal_lines_have_priorities_and_no_timestamps() {
        let got = lines(Sink::Journal, false);
        assert_eq!(got.len(), 4, "{got:?}");
        for (line, p) in got.iter().zip(["<3>", "<4>", "<6>", "<7>"]) {
            assert!(line.starts_with(p), "{line:?} should start with {p}");
            assert!(!has_timestamp(line), "{line:?} carries a timestamp");
            assert!(!line.contains('\u{1b}'), "{line:?} carries colour codes");
        }
        assert!(
            got[2].contains("kind=\"p2p\"") && got[2].contains("id=\"A1\""),
            "{got:?}"
        );
    }

    #[test]
    fn journal_json_lines_are_json_after_the_priority() {
        let got = lines(Sink::Journal, true);
        assert_eq!(got.len(), 4, "{got:?}");
        let (p, rest) = got[2].split_at(3);
        assert_eq!(p, "<6>");
        let v: serde_json::Value = serde_json::from_str(rest).expect("JSON after <N>");
        assert_eq!(v["fields"]["kind"], "p2p");
        assert_eq!(v["fields"]["id"], "A1");
        assert!(v.get("timestamp").is_none(), "{v}");
    }

    #[test]
    fn plain_lines_keep_their_timestamps() {
        let got = lines(Sink::Plain { ansi: false }, false);
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(
            got.iter().all(|l| has_timestamp(l) && !l.starts_with('<')),
            "{got:?}"
        );
    }
}
