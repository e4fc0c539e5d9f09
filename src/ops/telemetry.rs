//! Logging: `tracing` to stdout (JSON lines or text), with pingora's `log` records bridged in.
//!
//! Lines are formatted on the thread that logs them and written by a dedicated thread in
//! batches (one `write` per batch rather than per line): the access log writes a line for every
//! request, and a synchronous write on the proxy thread cost about 15% of proxied throughput.
//! When the writer falls 64k lines behind, logging threads wait (no line is dropped).

use std::io::{BufWriter, Stdout};

use tracing::level_filters::LevelFilter;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Dependencies whose `debug` and `trace` records quote request bytes or query parameters.
const QUOTING_TARGETS: &[&str] = &["pingora", "pingora_core", "pingora_proxy", "tokio_postgres"];

/// `level` as given, except that the records of dependencies that quote what they carry stay at
/// `info` when `level` would let through `debug` or `trace` for them: at those levels pingora
/// quotes raw request heads and body bytes (tokens, passwords) and tokio-postgres every query's
/// parameters (password hashes). An operator who names such a target gets what they asked.
pub fn filter_directives(level: &str) -> String {
    let verbose = EnvFilter::try_new(level)
        .ok()
        .and_then(|f| f.max_level_hint())
        .is_some_and(|max| max > tracing::level_filters::LevelFilter::INFO);
    if verbose && !QUOTING_TARGETS.iter().any(|t| level.contains(t)) {
        let mut directives = level.to_string();
        for target in QUOTING_TARGETS {
            directives.push_str(&format!(",{target}=info"));
        }
        directives
    } else {
        level.to_string()
    }
}

/// Records of pingora's that describe nothing wrong, at the level they deserve: (target, the
/// start of the message, level).
const RELEVELLED: &[(&str, &str, log::Level)] = &[
    // An idle upstream connection still held by its idle watcher at the moment a request
    // wants it: pingora opens another one and the request succeeds.
    (
        "pingora_core::connectors",
        "failed to acquire reusable stream",
        log::Level::Debug,
    ),
    // `serve --upgrade`: pingora polls its hand-over socket once a second until the sockets
    // arrive, which is the normal course of an upgrade.
    (
        "pingora_core::server::transfer_fd",
        "No incoming socket transfer",
        log::Level::Debug,
    ),
];

/// The `log` records of dependencies (pingora's), bridged into `tracing` by `LogTracer`, with
/// the levels of [`RELEVELLED`] records corrected on the way.
struct Relevelled(tracing_log::LogTracer);

impl Relevelled {
    fn level_of(record: &log::Record<'_>) -> log::Level {
        let level = record.level();
        if level > log::Level::Warn {
            return level;
        }
        let message = record.args().as_str().map(std::borrow::Cow::Borrowed);
        let message = message.unwrap_or_else(|| record.args().to_string().into());
        RELEVELLED
            .iter()
            .find(|(target, start, _)| {
                record.target().starts_with(target) && message.starts_with(start)
            })
            .map_or(level, |(_, _, to)| *to)
    }
}

impl log::Log for Relevelled {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = Self::level_of(record);
        if level == record.level() {
            return self.0.log(record);
        }
        let metadata = log::Metadata::builder()
            .level(level)
            .target(record.target())
            .build();
        if !self.0.enabled(&metadata) {
            return;
        }
        self.0.log(
            &log::Record::builder()
                .metadata(metadata)
                .args(*record.args())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.0.flush()
    }
}

/// Keeps the log writer thread alive; dropping it flushes what is still queued.
pub struct LogGuard {
    _writer: WorkerGuard,
}

/// Installs the global subscriber. Safe to call once; later calls are ignored. Keep the guard
/// until the end of `main`.
pub fn init(config: &LogConfig) -> LogGuard {
    let filter = EnvFilter::try_new(filter_directives(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let max_level = filter.max_level_hint();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(64 * 1024)
        .thread_name("sg-log")
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stdout()) as BufWriter<Stdout>);
    let access = writer.clone();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(writer);
    let installed = match config.format {
        LogFormat::Json => {
            crate::edge::access_log::write_to(access);
            let subscriber = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .finish();
            tracing::subscriber::set_global_default(subscriber).is_ok()
        }
        LogFormat::Text => tracing::subscriber::set_global_default(builder.finish()).is_ok(),
    };
    if installed
        && log::set_boxed_logger(Box::new(Relevelled(tracing_log::LogTracer::new()))).is_ok()
    {
        // No more than the filter lets through: `log`'s macros then skip what it would drop
        // without a call (pingora has debug and trace lines on every request).
        log::set_max_level(match max_level {
            Some(LevelFilter::OFF) => log::LevelFilter::Off,
            Some(LevelFilter::ERROR) => log::LevelFilter::Error,
            Some(LevelFilter::WARN) => log::LevelFilter::Warn,
            Some(LevelFilter::INFO) => log::LevelFilter::Info,
            Some(LevelFilter::DEBUG) => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        });
    }
    LogGuard { _writer: guard }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reusable_stream_race_is_not_an_error() {
        let record = |target: &'static str, args| {
            Relevelled::level_of(
                &log::Record::builder()
                    .level(log::Level::Error)
                    .target(target)
                    .args(args)
                    .build(),
            )
        };
        assert_eq!(
            record(
                "pingora_core::connectors",
                format_args!("failed to acquire reusable stream")
            ),
            log::Level::Debug
        );
        let interval = std::time::Duration::from_secs(1);
        let polled = Relevelled::level_of(
            &log::Record::builder()
                .level(log::Level::Error)
                .target("pingora_core::server::transfer_fd")
                .args(format_args!(
                    "No incoming socket transfer, sleep {interval:?} and try again"
                ))
                .build(),
        );
        assert_eq!(polled, log::Level::Debug);
        assert_eq!(
            record("pingora_core::connectors", format_args!("something else")),
            log::Level::Error
        );
    }

    #[test]
    fn pingora_stays_at_info_unless_named() {
        assert_eq!(filter_directives("info"), "info");
        assert_eq!(filter_directives("warn"), "warn");
        assert_eq!(
            filter_directives("debug"),
            "debug,pingora=info,pingora_core=info,pingora_proxy=info,tokio_postgres=info"
        );
        assert_eq!(
            filter_directives("sentinel_gateway=trace,info"),
            "sentinel_gateway=trace,info,pingora=info,pingora_core=info,pingora_proxy=info,\
             tokio_postgres=info"
        );
        assert_eq!(
            filter_directives("pingora_core=trace"),
            "pingora_core=trace"
        );
    }
}
