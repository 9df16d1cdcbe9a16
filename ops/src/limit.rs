//! A server-wide limit on concurrent gRPC requests that rejects the excess at once.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use http::{Request, Response};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Semaphore;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

/// The path prefix of the gRPC health service, which the limit never sheds.
const HEALTH_PATH_PREFIX: &str = "/grpc.health.v1.Health/";

/// A tower layer that lets at most `limit` requests run at once across all connections and
/// rejects every request beyond that with `RESOURCE_EXHAUSTED` instead of queueing it, so an
/// overloaded server sheds load at no cost and recovers as soon as the running requests finish.
///
/// A request holds its place until its response headers are sent, which for a server
/// streaming call is before the stream ends. Health checks are not counted and never shed.
#[derive(Clone, Debug)]
pub struct ConcurrencyLimitLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    per_peer_limit: usize,
    per_peer: Arc<Mutex<HashMap<IpAddr, usize>>>,
    shed: Counter,
}

impl ConcurrencyLimitLayer {
    /// Creates the layer with room for `limit` concurrent requests. At most a quarter of them,
    /// and at least one, may come from any one client address. `shed` counts rejections.
    pub fn new(limit: usize, shed: Counter) -> Self {
        ConcurrencyLimitLayer {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            per_peer_limit: (limit / 4).max(1),
            per_peer: Arc::new(Mutex::new(HashMap::new())),
            shed,
        }
    }

    /// Takes a place for a request from `peer`, or returns `None` when that address already
    /// has its share of the limit.
    fn enter(&self, peer: IpAddr) -> Option<PeerPlace> {
        let mut counts = self.per_peer.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(peer).or_insert(0);
        if *count >= self.per_peer_limit {
            return None;
        }
        *count += 1;
        Some(PeerPlace {
            peer,
            counts: Arc::clone(&self.per_peer),
        })
    }
}

/// A request's place in its client address's share, given back on drop. The table holds only
/// addresses with requests in flight, so its size is bounded by the limit.
struct PeerPlace {
    peer: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

/// Returns the client address of a request that tonic accepted over TCP, with or without TLS.
fn peer_of<B>(request: &Request<B>) -> Option<IpAddr> {
    let extensions = request.extensions();
    if let Some(info) = extensions.get::<TcpConnectInfo>() {
        return info.remote_addr().map(|addr| addr.ip());
    }
    extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.get_ref().remote_addr())
        .map(|addr| addr.ip())
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
        // Health checks stay answerable under load, so that probes tell overload from failure.
        if request.uri().path().starts_with(HEALTH_PATH_PREFIX) {
            let response = self.inner.call(request);
            return Box::pin(response);
        }
        let place = match peer_of(&request) {
            Some(peer) => match self.layer.enter(peer) {
                Some(place) => Some(place),
                None => {
                    self.layer.shed.inc();
                    let status = tonic::Status::resource_exhausted(format!(
                        "this client address has {} requests in flight, its share of the \
                         server's limit; retry with backoff",
                        self.layer.per_peer_limit
                    ));
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            },
            None => None,
        };
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
            drop(place);
            response
        })
    }
}
