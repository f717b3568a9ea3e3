//! The JSON access log: one line per request, written when the response ends
//! (its body sent, or the client gone), so byte counts and durations are final.
//!
//! A line is built in one `String` and handed to a [`LogSink`] (stdout by
//! default; tests capture lines). Only the path is logged, never the query string,
//! and no request header but the request id: credentials (Authorization, cookies,
//! API keys in headers or query parameters) never reach the log.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Uri};
use hyper::body::{Body, Frame, SizeHint};

use crate::metrics::Flag;
use crate::routes::Route;

/// Where access log lines go. `line` ends with a newline.
pub trait LogSink: Send + Sync {
    fn write_line(&self, line: &str);
}

/// Standard output, one `write` per line.
#[derive(Debug, Default)]
pub struct Stdout;

impl LogSink for Stdout {
    fn write_line(&self, line: &str) {
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

/// The access log sink of a proxy.
#[derive(Clone)]
pub struct AccessLog(pub Arc<dyn LogSink>);

impl AccessLog {
    pub fn new(sink: impl LogSink + 'static) -> AccessLog {
        AccessLog(Arc::new(sink))
    }
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog::new(Stdout)
    }
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

/// What is known about a request when its response starts.
#[derive(Debug)]
pub struct Entry {
    pub time: SystemTime,
    pub started: Instant,
    pub listener: Arc<str>,
    pub client: IpAddr,
    pub method: Method,
    pub authority: Option<HeaderValue>,
    /// Only its path is logged.
    pub uri: Uri,
    pub status: u16,
    pub route: Option<Arc<Route>>,
    pub upstream: Option<SocketAddr>,
    pub upstream_ms: Option<f64>,
    pub bytes_in: Option<Arc<AtomicU64>>,
    pub request_id: Option<HeaderValue>,
    pub flag: Option<Flag>,
    /// The request's trace id when tracing is on (sampled or not).
    pub trace_id: Option<opentelemetry::trace::TraceId>,
}

impl Entry {
    /// The JSON line (with its newline) for a response of `bytes_out` body bytes.
    pub fn line(&self, bytes_out: u64) -> String {
        let mut out = String::with_capacity(384);
        out.push_str("{\"time\":\"");
        write_time(&mut out, self.time);
        out.push_str("\",\"listener\":");
        json_str(&mut out, &self.listener);
        let _ = write!(out, ",\"client\":\"{}\",\"method\":", self.client);
        json_str(&mut out, self.method.as_str());
        out.push_str(",\"authority\":");
        match &self.authority {
            Some(a) => json_str(&mut out, &String::from_utf8_lossy(a.as_bytes())),
            None => out.push_str("null"),
        }
        out.push_str(",\"path\":");
        json_str(&mut out, self.uri.path());
        let _ = write!(out, ",\"status\":{},\"route\":", self.status);
        match &self.route {
            Some(r) => json_str(&mut out, &r.name),
            None => out.push_str("null"),
        }
        out.push_str(",\"upstream\":");
        match self.upstream {
            Some(u) => {
                let _ = write!(out, "\"{u}\"");
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"upstream_ms\":");
        match self.upstream_ms {
            Some(ms) => {
                let _ = write!(out, "{ms:.3}");
            }
            None => out.push_str("null"),
        }
        let total = self.started.elapsed().as_secs_f64() * 1000.0;
        let bytes_in = self.bytes_in.as_ref().map_or(0, |b| b.load(Relaxed));
        let _ = write!(
            out,
            ",\"total_ms\":{total:.3},\"bytes_in\":{bytes_in},\"bytes_out\":{bytes_out},\"request_id\":"
        );
        match &self.request_id {
            Some(id) => json_str(&mut out, &String::from_utf8_lossy(id.as_bytes())),
            None => out.push_str("null"),
        }
        out.push_str(",\"flags\":");
        match self.flag {
            Some(f) => json_str(&mut out, f.code()),
            None => out.push_str("null"),
        }
        if let Some(id) = self.trace_id {
            let _ = write!(out, ",\"trace_id\":\"{id:032x}\"");
        }
        out.push_str("}\n");
        out
    }
}

/// Appends `s` as a JSON string.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 3339 UTC with milliseconds, e.g. `2024-05-01T12:00:00.123Z`.
fn write_time(out: &mut String, time: SystemTime) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// A body that counts the data bytes it yields into a shared counter.
#[derive(Debug)]
pub struct CountedBody<B> {
    inner: B,
    counter: Option<Arc<AtomicU64>>,
}

impl<B> CountedBody<B> {
    pub fn new(inner: B, counter: Option<Arc<AtomicU64>>) -> CountedBody<B> {
        CountedBody { inner, counter }
    }
}

impl<B> Body for CountedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(counter)) = (&polled, &self.counter) {
            if let Some(data) = frame.data_ref() {
                counter.fetch_add(data.len() as u64, Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_utc() {
        let mut s = String::new();
        write_time(&mut s, UNIX_EPOCH + Duration::from_millis(951_782_400_007));
        assert_eq!(s, "2000-02-29T00:00:00.007Z");
        s.clear();
        write_time(&mut s, UNIX_EPOCH + Duration::from_secs(1_735_689_599));
        assert_eq!(s, "2024-12-31T23:59:59.000Z");
    }

    #[test]
    fn lines_are_json_without_the_query() {
        let entry = Entry {
            time: SystemTime::now(),
            started: Instant::now(),
            listener: "http".into(),
            client: "10.0.0.1".parse().unwrap(),
            method: Method::GET,
            authority: Some(HeaderValue::from_static("a.test")),
            uri: "/p\"x?token=secret"
                .parse()
                .unwrap_or_else(|_| "/p?token=secret".parse().unwrap()),
            status: 502,
            route: None,
            upstream: Some("127.0.0.1:9".parse().unwrap()),
            upstream_ms: Some(1.5),
            bytes_in: None,
            request_id: Some(HeaderValue::from_static("id-1")),
            flag: Some(Flag::UpstreamConnect),
            trace_id: None,
        };
        let line = entry.line(7);
        assert!(line.ends_with("}\n"));
        assert!(!line.contains("secret"), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["status"], 502);
        assert_eq!(v["bytes_out"], 7);
        assert_eq!(v["flags"], "UF");
        assert_eq!(v["route"], serde_json::Value::Null);
        assert_eq!(v["upstream"], "127.0.0.1:9");
        assert_eq!(v["client"], "10.0.0.1");
    }
}
