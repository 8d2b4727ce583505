//! Logs and traces. Logs are JSON lines when not on a terminal (human text
//! on one), filtered by `RUST_LOG`. Traces are exported over OTLP/gRPC only
//! when an endpoint is given (`OTEL_EXPORTER_OTLP_ENDPOINT`, read by
//! `main`); otherwise tracing costs nothing beyond the logs.
//!
//! A trace follows one request batch: txgen puts a W3C `traceparent` in
//! each sampled `ScreenRequest`, the ingress continues it, the account
//! actors get it in their messages and copy it onto each verdict, and the
//! dashboard continues it when it applies the verdict. Sampling is decided
//! once, at txgen (parent-based everywhere else).

use std::{collections::HashMap, io::IsTerminal, time::Duration};

use opentelemetry::{
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
    Resource,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

use crate::error::ServiceError;

mod panic_hook;

pub use panic_hook::install_panic_hook;

/// Where log lines go: stdout for the long-running services (what a
/// container runtime collects), stderr for commands whose stdout is their
/// result (reports, tables, JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
}

/// Keeps the exporter alive; flush it before exit.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// The exporter's own runtime: actix arbiters are single-threaded.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Telemetry {
    /// Exports what is buffered (tests, and before exit).
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown_with_timeout(Duration::from_secs(2));
        }
        // Without blocking: the owner may be inside another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Installs the subscriber as the OpenTelemetry environment conventions
/// say, reading them from `env` (the process environment, handed over by
/// `main`): `OTEL_EXPORTER_OTLP_ENDPOINT` turns export on,
/// `OTEL_TRACES_SAMPLER_ARG` is the share of new traces kept (default
/// 0.001), `OTEL_SERVICE_NAME` overrides `txmesh-COMMAND`; `RUST_LOG`
/// filters the logs.
///
/// # Errors
/// When the exporter cannot be built.
pub fn init_from_env(
    env: &HashMap<String, String>,
    command: &str,
    logs_to: LogTarget,
) -> Result<Telemetry, ServiceError> {
    let get = |k: &str| env.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let service =
        get("OTEL_SERVICE_NAME").map_or_else(|| format!("txmesh-{command}"), str::to_owned);
    let ratio = get("OTEL_TRACES_SAMPLER_ARG")
        .and_then(|r| r.parse::<f64>().ok())
        .map_or(0.001, |r| r.clamp(0.0, 1.0));
    init(
        &service,
        get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ratio,
        get("RUST_LOG"),
        logs_to,
    )
}

/// Installs the process's tracing subscriber: logs filtered by
/// `log_filter` (RUST_LOG syntax; default `warn`), and OTLP export to
/// `otlp_endpoint` when given, sampling `sample_ratio` of new traces.
///
/// # Errors
/// When the exporter cannot be built.
pub fn init(
    service: &str,
    otlp_endpoint: Option<&str>,
    sample_ratio: f64,
    log_filter: Option<&str>,
    logs_to: LogTarget,
) -> Result<Telemetry, ServiceError> {
    let filter = log_filter
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("warn"));
    let terminal = match logs_to {
        LogTarget::Stdout => std::io::stdout().is_terminal(),
        LogTarget::Stderr => std::io::stderr().is_terminal(),
    };
    let fmt = tracing_subscriber::fmt::layer();
    let logs = match (terminal, logs_to) {
        (true, LogTarget::Stdout) => fmt.with_writer(std::io::stdout).boxed(),
        (true, LogTarget::Stderr) => fmt.with_writer(std::io::stderr).boxed(),
        (false, LogTarget::Stdout) => fmt
            .json()
            .with_current_span(true)
            .with_writer(std::io::stdout)
            .boxed(),
        (false, LogTarget::Stderr) => fmt
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let Some(endpoint) = otlp_endpoint else {
        let _ = tracing_subscriber::registry()
            .with(logs.with_filter(filter))
            .try_init();
        return Ok(Telemetry {
            provider: None,
            runtime: None,
        });
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("txmesh-otlp")
        .enable_all()
        .build()
        .map_err(|e| ServiceError::config("otlp", e.to_string()))?;
    let exporter = {
        let _inside = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| ServiceError::config("OTEL_EXPORTER_OTLP_ENDPOINT", e.to_string()))?
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("txmesh");
    // Spans go to OTLP whatever the log level; logs keep their filter.
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(EnvFilter::new("txmesh=info"));
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .try_init();
    Ok(Telemetry {
        provider: Some(provider),
        runtime: Some(runtime),
    })
}

/// The `traceparent` of `span` when it is sampled (empty otherwise).
pub fn traceparent(span: &tracing::Span) -> String {
    let cx = span.context();
    if !cx.span().span_context().is_sampled() {
        return String::new();
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// Makes `span` continue the trace of `traceparent` (if any) and records
/// its trace id on the span, so log lines inside it carry `trace_id`.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
    if let Some(trace_id) = traceparent.split('-').nth(1) {
        span.record("trace_id", trace_id);
    }
}
