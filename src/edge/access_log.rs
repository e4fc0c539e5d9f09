//! The access log line, one per request, written without `tracing`'s formatting machinery.
//!
//! Through `tracing`'s JSON formatter an access line cost about 22,000 instructions (UTF-8
//! re-validation of every formatted piece, serde escaping, `fmt` for numbers and addresses):
//! more than the gateway's whole proxying work on top of Pingora. Here the same JSON object
//! (`timestamp`, `level`, the fields, `target`, as `tracing`'s flattened JSON lays it out) is
//! written straight into a buffer and handed to the log writer thread that `tracing` uses, so
//! access lines and other lines share one ordered, batched stream.
//!
//! Used for the JSON log format; the text format (for development) goes through `tracing`.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::edge::identity;

/// The log writer access lines go to when the log is JSON (set by `ops::telemetry`): the
/// proxy formats each line itself and hands it over whole, instead of going through `tracing`.
static WRITER: std::sync::OnceLock<tracing_appender::non_blocking::NonBlocking> =
    std::sync::OnceLock::new();

/// Sends access lines to `writer` from now on.
pub fn write_to(writer: tracing_appender::non_blocking::NonBlocking) {
    let _ = WRITER.set(writer);
}

/// Whether access lines go through [`write_access_line`] (the JSON format) rather than `tracing`.
pub fn access_lines_direct() -> bool {
    WRITER.get().is_some()
}

/// Hands one finished access line to the log writer thread, behind the lines already queued.
pub fn write_access_line(line: &[u8]) {
    if let Some(writer) = WRITER.get() {
        // Fails only once the writer thread is gone (shutting down): nothing left to do then.
        let _ = std::io::Write::write_all(&mut writer.clone(), line);
    }
}

/// What one access line says about a request.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub method: &'a str,
    /// The path without its query (queries can carry secrets).
    pub path: &'a str,
    /// 0 when no response was written.
    pub status: u16,
    pub duration_us: u64,
    /// The client's address as [`client_text`] writes it (made once per connection), or empty.
    pub client: &'a str,
    pub request_id: &'a str,
    pub endpoint: Option<&'a str>,
    pub route: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub error: Option<&'a str>,
}

impl Entry<'_> {
    /// Appends the entry as one JSON line (newline included) stamped with `now`.
    pub fn write_json(&self, now: SystemTime, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(now, out);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"method\":");
        string(self.method, out);
        out.extend_from_slice(b",\"path\":");
        string(self.path, out);
        out.extend_from_slice(b",\"status\":");
        number(u64::from(self.status), out);
        out.extend_from_slice(b",\"duration_us\":");
        number(self.duration_us, out);
        out.extend_from_slice(b",\"client\":\"");
        // Digits, dots, colons and brackets only: nothing to escape.
        out.extend_from_slice(self.client.as_bytes());
        out.extend_from_slice(b"\",\"request_id\":");
        string(self.request_id, out);
        for (name, value) in [
            (&b",\"endpoint\":"[..], self.endpoint),
            (b",\"route\":", self.route),
            (b",\"user_id\":", self.user_id),
            (b",\"error\":", self.error),
        ] {
            // Absent rather than null, as `tracing` records an `Option` field.
            if let Some(value) = value {
                out.extend_from_slice(name);
                string(value, out);
            }
        }
        out.extend_from_slice(b",\"target\":\"access\"}\n");
    }
}

/// A JSON string: quoted, with `"`, `\` and control characters escaped.
fn string(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    // Nearly always nothing to escape: one branch-free pass over the bytes says so.
    let special = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    if !bytes.iter().fold(false, |any, &b| any | special(b)) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        plain = i + 1;
    }
    out.extend_from_slice(&bytes[plain..]);
    out.push(b'"');
}

fn number(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `n` in at least `width` digits, zero-padded.
fn padded(n: u64, width: usize, out: &mut Vec<u8>) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n).as_bytes();
    out.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(digits);
}

/// `addr` as the access log's `client`: `ip:port`, or `[ip6]:port`.
pub fn client_text(addr: SocketAddr) -> String {
    let mut out = Vec::with_capacity(24);
    address(addr, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

fn address(addr: SocketAddr, out: &mut Vec<u8>) {
    if addr.is_ipv6() {
        out.push(b'[');
        identity::write_ip(addr.ip(), out);
        out.push(b']');
    } else {
        identity::write_ip(addr.ip(), out);
    }
    out.push(b':');
    number(u64::from(addr.port()), out);
}

/// RFC 3339 in UTC with microseconds, as `tracing`'s default timer writes it:
/// `2026-11-25T21:05:31.123456Z`.
fn timestamp(now: SystemTime, out: &mut Vec<u8>) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let in_day = secs % 86_400;
    padded(year.max(0) as u64, 4, out);
    out.push(b'-');
    padded(month, 2, out);
    out.push(b'-');
    padded(day, 2, out);
    out.push(b'T');
    padded(in_day / 3600, 2, out);
    out.push(b':');
    padded(in_day / 60 % 60, 2, out);
    out.push(b':');
    padded(in_day % 60, 2, out);
    out.push(b'.');
    padded(u64::from(since.subsec_micros()), 6, out);
    out.push(b'Z');
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn line(entry: &Entry, now: SystemTime) -> serde_json::Value {
        let mut out = Vec::new();
        entry.write_json(now, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        serde_json::from_slice(&out).unwrap()
    }

    fn entry() -> Entry<'static> {
        Entry {
            method: "GET",
            path: "/api/x",
            status: 200,
            duration_us: 1234,
            client: "127.0.0.1:50000",
            request_id: "abc",
            endpoint: None,
            route: Some("/api/"),
            user_id: Some("6b1c0c3e-1111-2222-3333-444455556666"),
            error: None,
        }
    }

    #[test]
    fn a_line_is_the_json_object_tracing_would_write() {
        let now = UNIX_EPOCH + Duration::new(1_795_640_731, 123_456_789);
        let v = line(&entry(), now);
        assert_eq!(
            v,
            serde_json::json!({
                "timestamp": "2026-11-25T21:05:31.123456Z",
                "level": "INFO",
                "method": "GET",
                "path": "/api/x",
                "status": 200,
                "duration_us": 1234,
                "client": "127.0.0.1:50000",
                "request_id": "abc",
                "route": "/api/",
                "user_id": "6b1c0c3e-1111-2222-3333-444455556666",
                "target": "access",
            })
        );
    }

    #[test]
    fn timestamps_match_chrono_across_dates() {
        for secs in [
            0u64,
            951_782_400,
            1_709_164_800,
            4_102_444_799,
            1_795_640_731,
        ] {
            let now = UNIX_EPOCH + Duration::new(secs, 7_000);
            let mut out = Vec::new();
            timestamp(now, &mut out);
            let expected = chrono::DateTime::<chrono::Utc>::from(now)
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string();
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    #[test]
    fn hostile_text_stays_inside_its_string() {
        let path = "/a\"b\\c\n\r\t\u{1}\u{1f}é/\u{7f}";
        let client = client_text("[::1]:8080".parse().unwrap());
        let e = Entry {
            path,
            error: Some("read\"error"),
            client: &client,
            ..entry()
        };
        let v = line(&e, SystemTime::now());
        assert_eq!(v["path"], path);
        assert_eq!(v["error"], "read\"error");
        assert_eq!(v["client"], "[::1]:8080");
        assert_eq!(v["target"], "access");
    }
}
