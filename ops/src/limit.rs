//! A server-wide limit on concurrent gRPC requests that rejects the excess at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Semaphore;
use tower::{Layer, Service};

/// A tower layer that lets at most `limit` requests run at once across all connections and
/// rejects every request beyond that with `RESOURCE_EXHAUSTED` instead of queueing it, so an
/// overloaded server sheds load at no cost and recovers as soon as the running requests finish.
///
/// A request holds its place until its response headers are sent, which for a server
/// streaming call is before the stream ends.
#[derive(Clone, Debug)]
pub struct ConcurrencyLimitLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    shed: Counter,
}

impl ConcurrencyLimitLayer {
    /// Creates the layer with room for `limit` concurrent requests; `shed` counts rejections.
    pub fn new(limit: usize, shed: Counter) -> Self {
        ConcurrencyLimitLayer {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            shed,
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimitService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`ConcurrencyLimitLayer`].
#[derive(Clone, Debug)]
pub struct ConcurrencyLimitService<S> {
    inner: S,
    layer: ConcurrencyLimitLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ConcurrencyLimitService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Ok(permit) = Arc::clone(&self.layer.permits).try_acquire_owned() else {
            self.layer.shed.inc();
            let status = tonic::Status::resource_exhausted(format!(
                "the server is handling its limit of {} concurrent requests; retry with backoff",
                self.layer.limit
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(permit);
            response
        })
    }
}
