//! Logging: `tracing` to stdout (JSON lines or text), with pingora's `log` records bridged in.
//!
//! Lines are formatted on the thread that logs them and written by a dedicated thread in
//! batches (one `write` per batch rather than per line): the access log writes a line for every
//! request, and a synchronous write on the proxy thread cost about 15% of proxied throughput.
//! When the writer falls 64k lines behind, logging threads wait (no line is dropped).

use std::io::{BufWriter, Stdout, Write};
use std::sync::OnceLock;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// The log writer, for access lines formatted by [`crate::access_log`] (JSON format only).
static ACCESS_WRITER: OnceLock<NonBlocking> = OnceLock::new();

/// Whether access lines go through [`write_access_line`] (the JSON format) rather than `tracing`.
pub fn access_lines_direct() -> bool {
    ACCESS_WRITER.get().is_some()
}

/// Hands one finished access line to the log writer thread, behind the lines already queued.
pub fn write_access_line(line: &[u8]) {
    if let Some(writer) = ACCESS_WRITER.get() {
        // Fails only once the writer thread is gone (shutting down): nothing left to do then.
        let _ = writer.clone().write_all(line);
    }
}

/// Keeps the log writer thread alive; dropping it flushes what is still queued.
pub struct LogGuard {
    _writer: WorkerGuard,
}

/// Installs the global subscriber. Safe to call once; later calls are ignored. Keep the guard
/// until the end of `main`.
pub fn init(config: &LogConfig) -> LogGuard {
    let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
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
    let _ = match config.format {
        LogFormat::Json => {
            let _ = ACCESS_WRITER.set(access);
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .try_init()
        }
        LogFormat::Text => builder.try_init(),
    };
    LogGuard { _writer: guard }
}
