//! Logs and traces of the operator. Logs are JSON lines on a writer (stdout in
//! production). With an OTLP endpoint, every `tracing` span — one per reconcile,
//! with the object's name, namespace and generation — is also exported as an
//! OpenTelemetry span, and the reconcile's log lines carry its `trace_id`.

use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::{Error, Result};

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC, e.g. `http://collector:4317`.
    Grpc,
    /// OTLP/HTTP protobuf, e.g. `http://collector:4318/v1/traces`.
    HttpProtobuf,
}

/// Where reconcile spans go.
#[derive(Clone, Debug)]
pub struct TraceExport {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Share of reconciles traced, 0.0 to 1.0 (parent-based).
    pub sampling_ratio: f64,
}

/// Keeps the exporter running; dropping it flushes and stops it.
#[must_use = "dropping the guard stops trace export"]
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber: JSON logs filtered by `log_filter` (tracing
/// `EnvFilter` syntax) on `writer`, and, with `export`, the OpenTelemetry layer.
/// Must run inside a tokio runtime when `export` is set.
pub fn init<W>(log_filter: &str, writer: W, export: Option<&TraceExport>) -> Result<Guard>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter)
        .map_err(|e| Error::Config(format!("log filter: {e}")))?;
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_writer(writer);
    let provider = export.map(provider).transpose()?;
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("meshgate-operator"))
            .with_tracked_inactivity(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(otel)
        .try_init()
        .map_err(|e| Error::Config(format!("installing the log subscriber: {e}")))?;
    Ok(Guard(provider))
}

fn provider(export: &TraceExport) -> Result<SdkTracerProvider> {
    let exporter = match export.protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&export.endpoint)
            .with_timeout(Duration::from_secs(5))
            .build(),
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(&export.endpoint)
            .with_timeout(Duration::from_secs(5))
            .build(),
    }
    .map_err(|e| Error::Config(format!("OTLP exporter for {}: {e}", export.endpoint)))?;
    // Exports run on the operator's tokio runtime, off the reconcile path.
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let ratio = export.sampling_ratio.clamp(0.0, 1.0);
    Ok(SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name("meshgate-operator")
                .build(),
        )
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_span_processor(processor)
        .build())
}

/// The trace id of the current span, when it is sampled and exported.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    (sc.is_valid() && sc.is_sampled()).then(|| sc.trace_id().to_string())
}

/// Records the current trace id in the current span's `trace_id` field (declared
/// `trace_id = tracing::field::Empty`), so every log line of the span shows it.
pub fn record_trace_id() {
    if let Some(id) = current_trace_id() {
        tracing::Span::current().record("trace_id", id.as_str());
    }
}
