//! OpenTelemetry traces: a span per data-plane request (and per external authorization
//! check), with child spans for authentication, routing, the decision (its policies as
//! attributes), each AWS call and the upstream call; W3C `traceparent`/`tracestate`
//! read from trusted proxies and sent upstream and to AWS; export over OTLP/HTTP.
//!
//! The spans are `tracing` spans under this crate's target, bridged by
//! `tracing-opentelemetry`; the AWS SDK's own operation spans (`STS.AssumeRole`, with
//! `rpc.*` attributes) are taken too. Log lines never show spans: the log layer filters
//! them out, so turning tracing on changes no log line.
//!
//! **Off by default.** Without `[tracing]` no OpenTelemetry layer is installed, the
//! spans are disabled at their call sites (they cost a check of a cached interest), and
//! no exporter thread exists. With it, finished spans go to a bounded queue
//! (`max_queue`) that a thread of the SDK's drains every `batch_delay`: a full queue
//! drops spans, so a slow or absent collector never holds up a request. The export
//! itself runs on a thread of its own with its own small runtime, over the same hyper
//! and rustls client the sidecar uses elsewhere.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use tokio::sync::{mpsc, oneshot};
use tracing::{Metadata, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

use crate::config::TracingConfig;

/// The name of the thread that sends spans to the collector.
pub const EXPORT_THREAD: &str = "authz-otlp-export";

/// Whether the traces layer takes `metadata`: this crate's spans, and the AWS SDK's
/// operation spans (the ones with `rpc.system`); never events, which are logs.
fn traced(metadata: &Metadata<'_>) -> bool {
    metadata.is_span()
        && (metadata.target().starts_with("authz_sidecar")
            || (metadata.target().starts_with("aws_sdk_") && metadata.fields().field("rpc.system").is_some()))
}

/// The exporting pipeline; dropping it sends what is queued (within `export_timeout`)
/// and stops its threads.
#[derive(Debug)]
pub struct Exporting {
    provider: SdkTracerProvider,
}

impl Drop for Exporting {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "the last spans were not all exported");
        }
    }
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("tracing: the OTLP exporter: {0}")]
    Exporter(String),
    #[error("tracing: the export thread: {0}")]
    Thread(std::io::Error),
}

/// The layer that records spans and the pipeline that exports them.
pub fn layer<S>(config: &TracingConfig) -> Result<(impl Layer<S>, Exporting), TracingError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let client = ExportClient::start(config.export_timeout)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.otlp_endpoint.to_string())
        .with_timeout(config.export_timeout)
        .with_http_client(client)
        .build()
        .map_err(|e| TracingError::Exporter(e.to_string()))?;
    let batches = BatchConfigBuilder::default()
        .with_max_queue_size(config.max_queue)
        .with_scheduled_delay(config.batch_delay)
        .build();
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batches).build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("authz-sidecar");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(filter_fn(traced));
    Ok((layer, Exporting { provider }))
}

/// The trace a caller's `traceparent` and `tracestate` name, when valid. Only for
/// headers a trusted proxy passes on: anyone else starts a trace of their own.
pub fn caller_trace(headers: &HeaderMap) -> Option<opentelemetry::Context> {
    let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    context.span().span_context().is_valid().then_some(context)
}

/// Make `span` continue `caller`'s trace.
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

pub fn continue_trace(span: &tracing::Span, caller: opentelemetry::Context) {
    let _ = span.set_parent(caller);
}

/// Write `span`'s trace context into `headers` (over any `traceparent` and `tracestate`
/// they had), when it has one: with tracing off they are left as they are.
pub fn propagate(span: &tracing::Span, headers: &mut HeaderMap) {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return;
    }
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

/// Name `span`'s trace span `name` (a request's name is known once it is routed; the
/// span has started by then, so `otel.name` would no longer apply).
pub fn rename(span: &tracing::Span, name: String) {
    span.context().span().update_name(name);
}

/// The trace id of `span` (32 hex digits), when it is recorded.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    trace_id_of(&span.context())
}

/// The trace id of `context` (32 hex digits), when it has a valid one.
pub fn trace_id_of(context: &opentelemetry::Context) -> Option<String> {
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

tokio::task_local! {
    /// The trace of the request being served, for its audit events.
    static AUDIT_TRACE: Option<Arc<str>>;
}

/// Run `future` with `trace` as the trace id of the audit events it emits.
pub fn with_audit_trace<F: Future>(trace: Option<Arc<str>>, future: F) -> impl Future<Output = F::Output> {
    // not an `async fn`: that would hold `future` twice, once as its argument
    AUDIT_TRACE.scope(trace, future)
}

/// The same, for work handed to a blocking thread.
pub fn with_audit_trace_sync<R>(trace: Option<Arc<str>>, work: impl FnOnce() -> R) -> R {
    AUDIT_TRACE.sync_scope(trace, work)
}

/// The trace id of the request being served on this task, if it has one.
pub fn audit_trace() -> Option<Arc<str>> {
    AUDIT_TRACE.try_with(Clone::clone).ok().flatten()
}

/// The AWS SDK interceptor that sends the current span's trace context with every AWS
/// call (after signing: the header is not part of the signature).
#[derive(Debug, Clone, Copy, Default)]
pub struct AwsTraceContext;

impl aws_smithy_runtime_api::client::interceptors::Intercept for AwsTraceContext {
    fn name(&self) -> &'static str {
        "AwsTraceContext"
    }

    fn modify_before_transmit(
        &self,
        context: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _config: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let trace = tracing::Span::current().context();
        if trace.span().span_context().is_valid() {
            let outgoing = context.request_mut().headers_mut();
            TraceContextPropagator::new().inject_context(&trace, &mut SmithyInjector(outgoing));
        }
        Ok(())
    }
}

/// The AWS SDK's request headers, as the propagator writes them.
struct SmithyInjector<'a>(&'a mut aws_smithy_runtime_api::http::Headers);

impl opentelemetry::propagation::Injector for SmithyInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

/// One export: the request, and where its answer goes.
type Job = (http::Request<Bytes>, oneshot::Sender<Result<http::Response<Bytes>, HttpError>>);

/// The exporter's HTTP client: requests go to a thread of their own, which sends them
/// on a current-thread runtime with the sidecar's hyper and rustls client (the SDK's
/// batch thread has no runtime of its own).
#[derive(Debug, Clone)]
struct ExportClient {
    jobs: mpsc::Sender<Job>,
}

/// The largest collector answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

impl ExportClient {
    fn start(timeout: Duration) -> Result<Self, TracingError> {
        let (jobs, mut queue) = mpsc::channel::<Job>(4);
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(TracingError::Thread)?;
        let client = crate::http_client::client(timeout).map_err(|e| TracingError::Exporter(e.to_string()))?;
        std::thread::Builder::new()
            .name(EXPORT_THREAD.to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some((request, answer)) = queue.recv().await {
                        let request = request.map(crate::body::full);
                        let sent = async {
                            let response = client.request(request).await?;
                            let (parts, body) = response.into_parts();
                            let body = http_body_util::Limited::new(body, MAX_ANSWER_BYTES).collect().await?;
                            Ok::<_, HttpError>(http::Response::from_parts(parts, body.to_bytes()))
                        };
                        let result = match tokio::time::timeout(timeout, sent).await {
                            Ok(result) => result,
                            Err(_) => Err("the collector did not answer in time".into()),
                        };
                        let _ = answer.send(result);
                    }
                });
            })
            .map_err(TracingError::Thread)?;
        Ok(Self { jobs })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(&self, request: http::Request<Bytes>) -> Result<http::Response<Bytes>, HttpError> {
        let (answer, answered) = oneshot::channel();
        self.jobs.send((request, answer)).await.map_err(|_| "the export thread has stopped")?;
        answered.await.map_err(|_| "the export thread dropped the export")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_read_and_anything_else_is_not() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        let caller = caller_trace(&headers).expect("a valid traceparent");
        assert_eq!(trace_id_of(&caller).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            headers.insert("traceparent", bad.parse().unwrap());
            assert!(caller_trace(&headers).is_none(), "{bad}");
        }
    }

    #[test]
    fn without_tracing_nothing_is_propagated_and_the_clients_headers_stay() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        let before = headers.clone();
        propagate(&tracing::Span::none(), &mut headers);
        assert_eq!(headers, before);
        assert_eq!(trace_id(&tracing::Span::none()), None);
    }
}
