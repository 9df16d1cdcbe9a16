//! The metric registry and the tower layer that counts gRPC requests.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use school_durable::CommitStats;
use tonic::Code;
use tonic_types::StatusExt as _;
use tower::{Layer, Service};

/// The maximum number of distinct `method` label values. Paths come from clients, so later unknown
/// paths are counted under [`OTHER_METHOD`] instead of growing the registry without bound.
const MAX_METHODS: usize = 64;

/// The `method` label of requests to paths the service does not serve, once it has named the
/// ones it does.
const UNKNOWN_METHOD: &str = "unknown";

/// The `method` label of requests beyond [`MAX_METHODS`] distinct paths.
const OTHER_METHOD: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCodeLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// The metrics of one service: a Prometheus registry with the request metrics every service
/// has, to which the service adds its own.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<RwLock<Registry>>,
    requests: RequestMetrics,
}

/// The request metric families, cloned into every layer instance.
#[derive(Clone, Debug)]
struct RequestMetrics {
    requests: Family<MethodCodeLabels, Counter>,
    durations: Family<MethodLabels, Histogram>,
    authentication_failures: Family<ReasonLabels, Counter>,
    authorization_denials: Family<MethodLabels, Counter>,
    in_flight: Family<MethodLabels, Gauge>,
    methods: Arc<Mutex<HashSet<String>>>,
    /// The paths of the served methods, once the service has named them.
    known: Arc<OnceLock<HashSet<String>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates a registry with the request metrics:
    ///
    /// - `grpc_server_requests_total{method, code}`: completed requests by gRPC status code name;
    /// - `grpc_server_handling_seconds{method}`: time until the response headers, a histogram;
    /// - `authentication_failures_total{reason}`: `UNAUTHENTICATED` answers by the `reason` of
    ///   their `google.rpc.ErrorInfo` detail, `unknown` when there is none;
    /// - `authorization_denials_total{method}`: `PERMISSION_DENIED` answers;
    /// - `grpc_server_in_flight{method}`: requests received whose response headers are not
    ///   sent yet.
    pub fn new() -> Self {
        let requests = RequestMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(|| {
                // 1 ms to about 16 s, doubling; an Argon2 login takes tens of milliseconds.
                Histogram::new(exponential_buckets(0.001, 2.0, 15))
            }),
            authentication_failures: Family::default(),
            authorization_denials: Family::default(),
            in_flight: Family::default(),
            methods: Arc::default(),
            known: Arc::default(),
        };
        let mut registry = Registry::default();
        registry.register(
            "grpc_server_requests",
            "gRPC requests completed, by method and status code",
            requests.requests.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from receiving a gRPC request to sending the response headers",
            requests.durations.clone(),
        );
        registry.register(
            "authentication_failures",
            "Responses with status UNAUTHENTICATED, by ErrorInfo reason",
            requests.authentication_failures.clone(),
        );
        registry.register(
            "authorization_denials",
            "Responses with status PERMISSION_DENIED, by method",
            requests.authorization_denials.clone(),
        );
        registry.register(
            "grpc_server_in_flight",
            "Requests received whose response headers are not sent yet, by method",
            requests.in_flight.clone(),
        );
        Metrics {
            registry: Arc::new(RwLock::new(registry)),
            requests,
        }
    }

    /// Limits the `method` label to `methods`, the methods the service serves, named
    /// `package.Service/Method` (such as `school.student.v1.StudentService/GetStudent`). Every
    /// other request path is counted as `unknown`. Without this, the first 64 distinct paths get their own label, so a client
    /// that sends random paths could take every label before the real methods are called.
    /// Only the first call has an effect.
    pub fn set_known_methods<'a>(&self, methods: impl IntoIterator<Item = &'a String>) {
        let paths = methods.into_iter().map(|method| format!("/{method}"));
        let _ = self.requests.known.set(paths.collect());
    }

    /// Adds a service-specific metric under `name`, as
    /// [`Registry::register`](prometheus_client::registry::Registry::register) does.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .register(name, help, metric);
    }

    /// Adds a collector that computes its values at each scrape.
    pub fn register_collector(&self, collector: impl Collector) {
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .register_collector(Box::new(collector));
    }

    /// Returns a layer that records every request passing through it.
    pub fn layer(&self) -> RequestMetricsLayer {
        RequestMetricsLayer {
            metrics: self.requests.clone(),
        }
    }

    /// Adds the storage metrics, read at each scrape: `storage_size_bytes` from `size_on_disk`
    /// (-1 when it fails), and `storage_flushes_total` and `storage_commits_total` from the
    /// group commit counters in `stats`.
    pub fn register_storage(
        &self,
        stats: &Arc<CommitStats>,
        size_on_disk: impl Fn() -> Option<u64> + Send + Sync + 'static,
    ) {
        self.register_collector(ValueCollector::new(
            "storage_size_bytes",
            "Size of the sled database files on disk",
            ValueKind::Gauge,
            move || size_on_disk().map_or(-1, saturating_i64),
        ));
        let flushes = Arc::clone(stats);
        self.register_collector(ValueCollector::new(
            "storage_flushes",
            "Flushes to disk; each covers the writes of every request waiting when it started",
            ValueKind::Counter,
            move || saturating_i64(flushes.flushes()),
        ));
        let commits = Arc::clone(stats);
        self.register_collector(ValueCollector::new(
            "storage_commits",
            "Writes made durable by a flush",
            ValueKind::Counter,
            move || saturating_i64(commits.commits()),
        ));
    }

    /// Renders every metric in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        Ok(text)
    }
}

impl RequestMetrics {
    fn method_label(&self, path: &str) -> String {
        if let Some(known) = self.known.get() {
            return if known.contains(path) {
                path.to_owned()
            } else {
                UNKNOWN_METHOD.to_owned()
            };
        }
        let mut methods = self.methods.lock().unwrap_or_else(PoisonError::into_inner);
        if methods.contains(path) {
            return path.to_owned();
        }
        if methods.len() < MAX_METHODS {
            methods.insert(path.to_owned());
            return path.to_owned();
        }
        OTHER_METHOD.to_owned()
    }

    /// Records a response whose headers have arrived: its duration now, and its code now when
    /// the headers carry it. A trailers-only response, which tonic sends for every error of a
    /// unary call, has the status in its headers. Otherwise the status follows in the trailers,
    /// and the returned [`PendingCode`] records it when the body ends.
    fn record_headers(
        &self,
        path: &str,
        headers: &HeaderMap,
        elapsed: std::time::Duration,
    ) -> Option<PendingCode> {
        let method = self.method_label(path);
        self.durations
            .get_or_create(&MethodLabels {
                method: method.clone(),
            })
            .observe(elapsed.as_secs_f64());
        match tonic::Status::from_header_map(headers) {
            Some(status) => {
                self.count(method, status.code(), Some(status));
                None
            }
            None => Some(PendingCode {
                metrics: Some(self.clone()),
                method,
            }),
        }
    }

    /// Records a whole response from its headers alone, as a test shortcut: a response
    /// without a status in its headers counts as OK.
    #[cfg(test)]
    fn record(&self, path: &str, headers: &HeaderMap, elapsed: std::time::Duration) {
        if let Some(pending) = self.record_headers(path, headers, elapsed) {
            pending.finish(Code::Ok, None);
        }
    }

    /// Counts a call that ended with `code`, and its authentication failure or denial.
    fn count(&self, method: String, code: Code, status: Option<tonic::Status>) {
        self.requests
            .get_or_create(&MethodCodeLabels {
                method: method.clone(),
                code: format!("{code:?}"),
            })
            .inc();

        match (code, status) {
            (Code::Unauthenticated, Some(status)) => {
                let reason = status
                    .get_error_details()
                    .error_info()
                    .map_or_else(|| "unknown".to_owned(), |info| info.reason.clone());
                self.authentication_failures
                    .get_or_create(&ReasonLabels { reason })
                    .inc();
            }
            (Code::PermissionDenied, _) => {
                self.authorization_denials
                    .get_or_create(&MethodLabels { method })
                    .inc();
            }
            _ => {}
        }
    }
}

/// A tower layer that counts requests by method and gRPC status, times them, and counts
/// authentication failures and authorization denials. Place it outside the guard layer, so it
/// also records the guard's rejections.
#[derive(Clone, Debug)]
pub struct RequestMetricsLayer {
    metrics: RequestMetrics,
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`RequestMetricsLayer`].
#[derive(Clone, Debug)]
pub struct RequestMetricsService<S> {
    inner: S,
    metrics: RequestMetrics,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestMetricsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<RecordedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let gauge = metrics
            .in_flight
            .get_or_create(&MethodLabels {
                method: metrics.method_label(&path),
            })
            .clone();
        let in_flight = InFlight::enter(gauge);
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut unanswered = Unanswered {
                metrics,
                path,
                started,
                responded: false,
            };
            let response = response.await;
            unanswered.responded = true;
            let Unanswered { metrics, path, .. } = &unanswered;
            drop(in_flight);
            response.map(|response| {
                let pending = metrics.record_headers(path, response.headers(), started.elapsed());
                response.map(|body| RecordedBody {
                    body,
                    pending: pending.unwrap_or_else(PendingCode::recorded),
                })
            })
        })
    }
}

/// The code of a call whose status comes in the trailers, recorded once they arrive. A call
/// whose body ends without trailers counts as `Unknown`, and one whose body is dropped before
/// its end, because the client went away, as `Cancelled`.
struct PendingCode {
    /// `None` once recorded, or when the headers carried the code.
    metrics: Option<RequestMetrics>,
    method: String,
}

impl PendingCode {
    /// Returns a code that is already recorded.
    fn recorded() -> Self {
        PendingCode {
            metrics: None,
            method: String::new(),
        }
    }

    fn finish(mut self, code: Code, status: Option<tonic::Status>) {
        if let Some(metrics) = self.metrics.take() {
            metrics.count(std::mem::take(&mut self.method), code, status);
        }
    }

    /// Records the status in `trailers`; trailers without one count as `Unknown`.
    fn finish_with_trailers(self, trailers: &HeaderMap) {
        match tonic::Status::from_header_map(trailers) {
            Some(status) => self.finish(status.code(), Some(status)),
            None => self.finish(Code::Unknown, None),
        }
    }
}

impl Drop for PendingCode {
    fn drop(&mut self) {
        if let Some(metrics) = self.metrics.take() {
            metrics.count(std::mem::take(&mut self.method), Code::Cancelled, None);
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the call's code from its trailers.
    pub struct RecordedBody<B> {
        #[pin]
        body: B,
        pending: PendingCode,
    }
}

impl<B: http_body::Body> http_body::Body for RecordedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    std::mem::replace(this.pending, PendingCode::recorded())
                        .finish_with_trailers(trailers);
                }
            }
            Poll::Ready(Some(Err(_)) | None) => {
                std::mem::replace(this.pending, PendingCode::recorded())
                    .finish(Code::Unknown, None);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A call whose handler has not returned a response yet. Dropped before that, because the
/// client's deadline passed or it reset the stream, the call counts as `Cancelled`, the status
/// tonic sends then.
struct Unanswered {
    metrics: RequestMetrics,
    path: String,
    started: Instant,
    /// Set once the handler returned a response.
    responded: bool,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if !self.responded {
            let pending =
                self.metrics
                    .record_headers(&self.path, &HeaderMap::new(), self.started.elapsed());
            if let Some(pending) = pending {
                pending.finish(Code::Cancelled, None);
            }
        }
    }
}

/// One request counted in `grpc_server_in_flight`, removed again on drop, also when the caller
/// cancels the request and its future is dropped unfinished.
struct InFlight(Gauge);

impl InFlight {
    fn enter(gauge: Gauge) -> Self {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Whether a [`ValueCollector`] reports a counter or a gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// A value that only grows, such as a number of flushes.
    Counter,
    /// A value that goes up and down, such as a queue depth.
    Gauge,
}

/// A metric whose value a closure computes at each scrape, for values another component
/// already keeps, such as the database size or a queue depth.
pub struct ValueCollector {
    name: &'static str,
    help: &'static str,
    kind: ValueKind,
    value: Box<dyn Fn() -> i64 + Send + Sync>,
}

impl std::fmt::Debug for ValueCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueCollector")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl ValueCollector {
    /// Creates a collector named `name` (without the `_total` suffix of a counter).
    pub fn new(
        name: &'static str,
        help: &'static str,
        kind: ValueKind,
        value: impl Fn() -> i64 + Send + Sync + 'static,
    ) -> Self {
        ValueCollector {
            name,
            help,
            kind,
            value: Box::new(value),
        }
    }
}

impl Collector for ValueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let value = (self.value)();
        match self.kind {
            ValueKind::Counter => {
                let counter = ConstCounter::new(u64::try_from(value).unwrap_or(0));
                let metric =
                    encoder.encode_descriptor(self.name, self.help, None, counter.metric_type())?;
                counter.encode(metric)
            }
            ValueKind::Gauge => {
                let gauge = ConstGauge::new(value);
                let metric =
                    encoder.encode_descriptor(self.name, self.help, None, gauge.metric_type())?;
                gauge.encode(metric)
            }
        }
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_for(status: &tonic::Status) -> HeaderMap {
        let response = status.clone().into_http::<tonic::body::Body>();
        response.headers().clone()
    }

    #[test]
    fn records_code_reason_and_denial() -> Result<(), Box<dyn std::error::Error>> {
        let metrics = Metrics::new();
        let requests = &metrics.requests;
        let denied = tonic::Status::permission_denied("no");
        let unauthenticated = tonic::Status::with_error_details(
            Code::Unauthenticated,
            "expired",
            tonic_types::ErrorDetails::with_error_info("TOKEN_EXPIRED", "test", []),
        );

        requests.record("/pkg.Svc/Get", &HeaderMap::new(), std::time::Duration::ZERO);
        requests.record(
            "/pkg.Svc/Delete",
            &headers_for(&denied),
            std::time::Duration::ZERO,
        );
        requests.record(
            "/pkg.Svc/Get",
            &headers_for(&unauthenticated),
            std::time::Duration::ZERO,
        );
        let text = metrics.encode()?;

        assert!(
            text.contains(r#"grpc_server_requests_total{method="/pkg.Svc/Get",code="Ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"authorization_denials_total{method="/pkg.Svc/Delete"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"authentication_failures_total{reason="TOKEN_EXPIRED"} 1"#),
            "{text}"
        );
        Ok(())
    }

    #[test]
    fn known_methods_keep_their_labels() {
        let metrics = Metrics::new();
        metrics.set_known_methods(&["pkg.Svc/Real".to_owned()]);

        for index in 0..MAX_METHODS + 10 {
            let label = metrics
                .requests
                .method_label(&format!("/pkg.Svc/Random{index}"));
            assert_eq!(label, UNKNOWN_METHOD);
        }
        assert_eq!(
            metrics.requests.method_label("/pkg.Svc/Real"),
            "/pkg.Svc/Real"
        );
    }

    #[test]
    fn method_labels_are_bounded() {
        let metrics = Metrics::new();

        for index in 0..MAX_METHODS + 10 {
            metrics.requests.method_label(&format!("/pkg.Svc/M{index}"));
        }

        assert_eq!(metrics.requests.method_label("/pkg.Svc/M0"), "/pkg.Svc/M0");
        assert_eq!(metrics.requests.method_label("/pkg.Svc/New"), OTHER_METHOD);
    }

    #[test]
    fn value_collector_reads_at_scrape() -> Result<(), Box<dyn std::error::Error>> {
        let metrics = Metrics::new();
        let value = Arc::new(std::sync::atomic::AtomicI64::new(3));
        let read = Arc::clone(&value);
        metrics.register_collector(ValueCollector::new(
            "queue_depth",
            "Waiting operations",
            ValueKind::Gauge,
            move || read.load(std::sync::atomic::Ordering::Relaxed),
        ));

        value.store(5, std::sync::atomic::Ordering::Relaxed);
        let text = metrics.encode()?;

        assert!(text.contains("queue_depth 5"), "{text}");
        Ok(())
    }
}

#[cfg(test)]
mod body_tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use http_body::{Body as _, Frame};

    use super::*;

    /// A response body that yields the given frames in order.
    struct Frames(VecDeque<Frame<&'static [u8]>>);

    impl http_body::Body for Frames {
        type Data = &'static [u8];
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn trailers(status: &tonic::Status) -> HeaderMap {
        let mut map = HeaderMap::new();
        // `add_header` writes grpc-status and grpc-message, as a server's trailers carry them.
        let _ = status.add_header(&mut map);
        map
    }

    /// Wraps `frames` as the response body of `/pkg.Svc/Watch`, whose headers carry no status.
    fn streamed(metrics: &Metrics, frames: Vec<Frame<&'static [u8]>>) -> RecordedBody<Frames> {
        let pending =
            metrics
                .requests
                .record_headers("/pkg.Svc/Watch", &HeaderMap::new(), Duration::ZERO);
        RecordedBody {
            body: Frames(frames.into()),
            pending: pending.unwrap_or_else(PendingCode::recorded),
        }
    }

    async fn drain(mut body: RecordedBody<Frames>, frames: usize) -> RecordedBody<Frames> {
        for _ in 0..frames {
            let _ = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        }
        body
    }

    fn count(text: &str, code: &str) -> bool {
        text.contains(&format!(
            r#"grpc_server_requests_total{{method="/pkg.Svc/Watch",code="{code}"}} 1"#
        ))
    }

    #[tokio::test]
    async fn stream_counts_the_code_in_its_trailers() -> Result<(), Box<dyn std::error::Error>> {
        let metrics = Metrics::new();
        let lagged = tonic::Status::unavailable("stream fell behind");
        let frames = vec![
            Frame::data(&b"message"[..]),
            Frame::trailers(trailers(&lagged)),
        ];

        let body = drain(streamed(&metrics, frames), 3).await;
        drop(body);
        let text = metrics.encode()?;

        assert!(count(&text, "Unavailable"), "{text}");
        assert!(!text.contains(r#"code="Ok""#), "{text}");
        assert!(!text.contains(r#"code="Cancelled""#), "{text}");
        Ok(())
    }

    #[tokio::test]
    async fn stream_dropped_early_counts_as_cancelled() -> Result<(), Box<dyn std::error::Error>> {
        let metrics = Metrics::new();
        let frames = vec![Frame::data(&b"one"[..]), Frame::data(&b"two"[..])];

        let body = drain(streamed(&metrics, frames), 1).await;
        drop(body);
        let text = metrics.encode()?;

        assert!(count(&text, "Cancelled"), "{text}");
        Ok(())
    }

    #[tokio::test]
    async fn stream_without_trailers_counts_as_unknown() -> Result<(), Box<dyn std::error::Error>> {
        let metrics = Metrics::new();
        let frames = vec![Frame::data(&b"only data"[..])];

        let body = drain(streamed(&metrics, frames), 2).await;
        drop(body);
        let text = metrics.encode()?;

        assert!(count(&text, "Unknown"), "{text}");
        assert!(!text.contains(r#"code="Cancelled""#), "{text}");
        Ok(())
    }

    #[tokio::test]
    async fn ok_trailers_count_once_as_ok() -> Result<(), Box<dyn std::error::Error>> {
        let metrics = Metrics::new();
        let frames = vec![
            Frame::data(&b"reply"[..]),
            Frame::trailers(trailers(&tonic::Status::ok(""))),
        ];

        let body = drain(streamed(&metrics, frames), 4).await;
        drop(body);
        let text = metrics.encode()?;

        assert!(count(&text, "Ok"), "{text}");
        Ok(())
    }

    #[tokio::test]
    async fn call_dropped_before_its_answer_counts_as_cancelled()
    -> Result<(), Box<dyn std::error::Error>> {
        let metrics = Metrics::new();
        let layer = metrics.layer();
        let mut service = layer.layer(tower::service_fn(|_: http::Request<()>| async {
            std::future::pending::<Result<http::Response<Frames>, std::convert::Infallible>>().await
        }));
        let request = http::Request::builder().uri("/pkg.Svc/Slow").body(())?;

        let call = service.call(request);
        let unanswered = tokio::time::timeout(Duration::from_millis(10), call).await;
        let text = metrics.encode()?;

        assert!(unanswered.is_err());
        assert!(
            text.contains(
                r#"grpc_server_requests_total{method="/pkg.Svc/Slow",code="Cancelled"} 1"#
            ),
            "{text}"
        );
        Ok(())
    }
}
