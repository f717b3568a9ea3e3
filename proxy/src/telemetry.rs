//! Request traces: one server span per sampled request, child spans for the
//! policy checks and each upstream attempt, exported over OTLP; a W3C
//! `traceparent` goes upstream so Istio sidecars and applications continue the
//! trace.
//!
//! The proxy uses the OpenTelemetry API directly rather than `tracing` spans: a
//! gateway's tracer is built from its ApiGateway (endpoint, sampling) and
//! replaced on reload, a request that is not sampled creates no span at all, and
//! several proxies in one process (tests) keep separate exporters. Finished spans
//! go through a bounded queue to a batching task; a full queue drops spans and
//! counts them, never blocking a request.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{HeaderMap, HeaderValue};
use meshgate_crds::gateway::{OtlpProtocol, Tracing};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    SdkTracer, SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use tokio::sync::mpsc;

/// Spans waiting for export; beyond this they are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 4096;
/// Largest batch sent in one export call.
const MAX_BATCH: usize = 512;
/// Longest a finished span waits for its batch.
pub const BATCH_DELAY: Duration = Duration::from_millis(200);

/// A gateway's compiled `telemetry.tracing`.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSettings {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// 0.0..=1.0
    pub ratio: f64,
    pub trust_client: bool,
}

impl TraceSettings {
    pub fn compile(spec: &Tracing) -> Result<TraceSettings, String> {
        let percent = spec.sampling_percent.unwrap_or(1.0);
        if !(0.0..=100.0).contains(&percent) {
            return Err(format!("samplingPercent {percent} is not within 0..100"));
        }
        if !(spec.endpoint.starts_with("http://") || spec.endpoint.starts_with("https://")) {
            return Err(format!(
                "endpoint {:?} must be an http(s) URL",
                spec.endpoint
            ));
        }
        Ok(TraceSettings {
            endpoint: spec.endpoint.clone(),
            protocol: spec.protocol.unwrap_or_default(),
            ratio: percent / 100.0,
            trust_client: spec.trust_client_trace_context.unwrap_or(false),
        })
    }
}

/// Span export counters.
#[derive(Debug, Default)]
pub struct TraceStats {
    pub spans_exported: AtomicU64,
    pub spans_dropped: AtomicU64,
    pub export_failures: AtomicU64,
}

impl TraceStats {
    /// Prometheus text of the span counters.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let n = |c: &AtomicU64| i64::try_from(c.load(Relaxed)).unwrap_or(i64::MAX);
        crate::metrics::family(
            &mut out,
            "meshgate_tracing_spans_total",
            "counter",
            "Finished spans, by result: exported over OTLP, or dropped (export queue full or export failed).",
            &[
                ("result=\"exported\"", n(&self.spans_exported)),
                ("result=\"dropped\"", n(&self.spans_dropped)),
            ],
        );
        crate::metrics::family(
            &mut out,
            "meshgate_tracing_export_failures_total",
            "counter",
            "OTLP export calls that failed.",
            &[("", n(&self.export_failures))],
        );
        out
    }
}

/// The exporter of one configuration.
struct Exporting {
    settings: TraceSettings,
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// Tracing of the process: the current exporter, replaced when the gateway's
/// settings change.
#[derive(Default)]
pub struct Telemetry {
    current: ArcSwapOption<Exporting>,
    /// Serialises reconfiguration (reloads are rare).
    configuring: Mutex<()>,
    pub stats: Arc<TraceStats>,
    /// `service.name` and the gateway attribute of the resource.
    gateway: Mutex<String>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("enabled", &self.current.load().is_some())
            .finish()
    }
}

impl Telemetry {
    /// Applies a snapshot's settings: starts, replaces or stops the exporter.
    /// Must run inside the tokio runtime.
    pub fn configure(&self, gateway: &str, settings: Option<&TraceSettings>) {
        let _guard = self.configuring.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.load_full();
        let same_gateway = *self.gateway.lock().unwrap_or_else(|e| e.into_inner()) == gateway;
        if same_gateway && current.as_ref().map(|c| &c.settings) == settings {
            return;
        }
        *self.gateway.lock().unwrap_or_else(|e| e.into_inner()) = gateway.to_string();
        let next = match settings {
            None => None,
            Some(s) => match self.build(gateway, s) {
                Ok(e) => Some(Arc::new(e)),
                Err(e) => {
                    tracing::error!(endpoint = %s.endpoint, error = %e, "tracing exporter not started; requests are not traced");
                    None
                }
            },
        };
        if let Some(n) = &next {
            tracing::info!(endpoint = %n.settings.endpoint, protocol = ?n.settings.protocol, ratio = n.settings.ratio, "exporting traces");
        }
        let old = self.current.swap(next);
        if let Some(old) = old {
            // Flush what the old exporter holds without holding up the reload.
            tokio::spawn(async move {
                let _ = tokio::task::spawn_blocking(move || old.provider.shutdown()).await;
            });
        }
    }

    fn build(&self, gateway: &str, s: &TraceSettings) -> Result<Exporting, String> {
        let mut exporter = match s.protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(&s.endpoint)
                .with_timeout(Duration::from_secs(5))
                .build(),
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(&s.endpoint)
                .with_timeout(Duration::from_secs(5))
                .build(),
        }
        .map_err(|e| e.to_string())?;
        let resource = Resource::builder()
            .with_service_name("meshgate-proxy")
            .with_attribute(KeyValue::new("meshgate.gateway", gateway.to_string()))
            .build();
        exporter.set_resource(&resource);
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(export_loop(exporter, rx, self.stats.clone()));
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(QueueProcessor {
                tx,
                stats: self.stats.clone(),
            })
            .build();
        let tracer = provider.tracer("meshgate-proxy");
        Ok(Exporting {
            settings: s.clone(),
            provider,
            tracer,
        })
    }

    /// Starts the trace of a request: continues a trusted client context or
    /// starts a new one, and opens the server span when sampled.
    pub fn start(&self, headers: &HeaderMap, name: &'static str) -> Option<RequestTrace> {
        let exporting = self.current.load_full()?;
        let settings = &exporting.settings;
        let parent = settings.trust_client.then(|| extract(headers)).flatten();
        let tracer = &exporting.tracer;
        let server = |parent: &Context| {
            tracer
                .span_builder(name)
                .with_kind(SpanKind::Server)
                .start_with_context(tracer, parent)
        };
        let (cx, trace_id, sampled) = match parent {
            // Parent-based: the client's decision stands.
            Some(p) => {
                let parent_cx = Context::new().with_remote_span_context(p.clone());
                if p.is_sampled() {
                    let span = server(&parent_cx);
                    (parent_cx.with_span(span), p.trace_id(), true)
                } else {
                    (parent_cx, p.trace_id(), false)
                }
            }
            None if settings.ratio > 0.0 && fastrand::f64() < settings.ratio => {
                let span = server(&Context::new());
                let id = span.span_context().trace_id();
                (Context::new().with_span(span), id, true)
            }
            // Not sampled: no span, but a trace id for the log and for upstream.
            None => (
                Context::new(),
                TraceId::from_bytes(fastrand::u128(1..).to_be_bytes()),
                false,
            ),
        };
        Some(RequestTrace {
            exporting,
            cx,
            trace_id,
            sampled,
        })
    }

    /// Waits until spans queued so far are exported (tests, shutdown).
    pub fn flush(&self) {
        if let Some(e) = self.current.load_full() {
            let _ = e.provider.force_flush();
        }
    }
}

/// The trace of one request.
pub struct RequestTrace {
    exporting: Arc<Exporting>,
    /// Holds the server span when sampled.
    cx: Context,
    pub trace_id: TraceId,
    pub sampled: bool,
}

/// A child span (policy check, upstream attempt); ended on drop.
pub struct ChildSpan(Option<opentelemetry_sdk::trace::Span>);

impl ChildSpan {
    pub fn set(&mut self, kv: KeyValue) {
        if let Some(s) = &mut self.0 {
            s.set_attribute(kv);
        }
    }

    pub fn error(&mut self, message: &'static str) {
        if let Some(s) = &mut self.0 {
            s.set_status(Status::error(message));
        }
    }

    /// The span's context, for the `traceparent` sent upstream.
    fn context(&self) -> Option<SpanContext> {
        self.0.as_ref().map(|s| s.span_context().clone())
    }
}

impl RequestTrace {
    /// The trace id as 32 hex digits (for the access log).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    pub fn set(&self, kv: KeyValue) {
        if self.sampled {
            self.cx.span().set_attribute(kv);
        }
    }

    pub fn set_name(&self, name: String) {
        if self.sampled {
            self.cx.span().update_name(name);
        }
    }

    /// A child of the server span; inert when the request is not sampled.
    pub fn child(&self, name: &'static str, kind: SpanKind) -> ChildSpan {
        if !self.sampled {
            return ChildSpan(None);
        }
        let tracer = &self.exporting.tracer;
        ChildSpan(Some(
            tracer
                .span_builder(name)
                .with_kind(kind)
                .start_with_context(tracer, &self.cx),
        ))
    }

    /// Sets `traceparent` (and passes a trusted `tracestate` on) for an upstream
    /// request sent under `attempt`: the attempt's span id when sampled, else a
    /// fresh id with the sampled flag off, so the trace id still flows on.
    pub fn inject(&self, attempt: &ChildSpan, headers: &mut HeaderMap) {
        let (span_id, flags) = match attempt.context() {
            Some(sc) => (sc.span_id(), sc.trace_flags()),
            None => (
                SpanId::from_bytes(fastrand::u64(1..).to_be_bytes()),
                TraceFlags::default(),
            ),
        };
        let value = format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            span_id,
            flags.to_u8()
        );
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert("traceparent", v);
        }
        // Headers of a context we did not continue must not leak upstream.
        if !self.exporting.settings.trust_client {
            headers.remove("tracestate");
        }
        for b3 in [
            "b3",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
            "x-b3-sampled",
            "x-b3-flags",
        ] {
            headers.remove(b3);
        }
    }

    /// Ends the server span with the response's status.
    pub fn finish(&self, status: u16) {
        if !self.sampled {
            return;
        }
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            span.set_status(Status::error("server error"));
        }
        span.end();
    }
}

/// The parent span context of a request: W3C `traceparent` (+ `tracestate`),
/// else B3 (single header or multi-header).
pub fn extract(headers: &HeaderMap) -> Option<SpanContext> {
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let state = headers
            .get("tracestate")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        return parse_traceparent(tp).map(|(t, s, f)| SpanContext::new(t, s, f, true, state));
    }
    if let Some(b3) = headers.get("b3").and_then(|v| v.to_str().ok()) {
        let mut parts = b3.split('-');
        let trace = parts.next().and_then(b3_trace_id)?;
        let span = parts
            .next()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .filter(|s| *s != 0)?;
        let sampled = matches!(parts.next(), Some("1") | Some("d"));
        return Some(SpanContext::new(
            trace,
            SpanId::from(span),
            flags(sampled),
            true,
            TraceState::default(),
        ));
    }
    let trace = headers
        .get("x-b3-traceid")
        .and_then(|v| v.to_str().ok())
        .and_then(b3_trace_id)?;
    let span = headers
        .get("x-b3-spanid")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .filter(|s| *s != 0)?;
    let sampled = headers
        .get("x-b3-sampled")
        .is_some_and(|v| v == "1" || v == "true")
        || headers.get("x-b3-flags").is_some_and(|v| v == "1");
    Some(SpanContext::new(
        trace,
        SpanId::from(span),
        flags(sampled),
        true,
        TraceState::default(),
    ))
}

fn flags(sampled: bool) -> TraceFlags {
    if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    }
}

/// A B3 trace id: 32 or 16 hex digits (a 64-bit id is left-padded).
fn b3_trace_id(s: &str) -> Option<TraceId> {
    if s.len() != 32 && s.len() != 16 {
        return None;
    }
    u128::from_str_radix(s, 16)
        .ok()
        .filter(|t| *t != 0)
        .map(TraceId::from)
}

/// `version-traceid-spanid-flags` (W3C Trace Context, version 00 rules; later
/// versions are read by the same prefix as the spec asks).
fn parse_traceparent(s: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let mut parts = s.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let lower_hex = |x: &str| {
        x.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if ![version, trace, span, flags].iter().all(|x| lower_hex(x)) {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let span = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::new(flags & 1),
    ))
}

/// Hands finished spans to the export task; never blocks.
#[derive(Debug)]
struct QueueProcessor {
    tx: mpsc::Sender<SpanData>,
    stats: Arc<TraceStats>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.stats.spans_dropped.fetch_add(1, Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Batches spans (up to [`MAX_BATCH`], or what arrived within [`BATCH_DELAY`])
/// and exports them; ends when the processor (and so the provider) is gone.
async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    stats: Arc<TraceStats>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let Some(first) = rx.recv().await else {
            break;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        match exporter.export(std::mem::take(&mut batch)).await {
            Ok(()) => {
                stats.spans_exported.fetch_add(n, Relaxed);
            }
            Err(e) => {
                stats.export_failures.fetch_add(1, Relaxed);
                stats.spans_dropped.fetch_add(n, Relaxed);
                tracing::warn!(error = %e, spans = n, "exporting spans failed");
            }
        }
    }
    let _ = exporter.shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let ok =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(format!("{:032x}", ok.0), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(format!("{:016x}", ok.1), "00f067aa0ba902b7");
        assert!(ok.2.is_sampled());
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some()
        );
    }

    #[test]
    fn b3_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "b3",
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        let sc = extract(&h).unwrap();
        assert_eq!(
            format!("{:032x}", sc.trace_id()),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert!(sc.is_sampled());
        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", HeaderValue::from_static("463ac35c9f6413ad"));
        h.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
        h.insert("x-b3-sampled", HeaderValue::from_static("0"));
        let sc = extract(&h).unwrap();
        assert_eq!(
            format!("{:032x}", sc.trace_id()),
            "0000000000000000463ac35c9f6413ad"
        );
        assert!(!sc.is_sampled());
    }
}
