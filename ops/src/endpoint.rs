//! The HTTP endpoint that serves `GET /metrics`.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::Metrics;

/// The content type of the OpenMetrics text format that prometheus-client writes.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A bound metrics listener, not yet serving.
#[derive(Debug)]
pub struct MetricsEndpoint {
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics: Metrics,
}

impl MetricsEndpoint {
    /// Binds `addr` for `GET /metrics`. Binding before serving lets port 0 report its real
    /// port through [`MetricsEndpoint::local_addr`].
    pub async fn bind(addr: SocketAddr, metrics: Metrics) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(MetricsEndpoint {
            listener,
            local_addr,
            metrics,
        })
    }

    /// Returns the bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `GET /metrics` until `shutdown` completes. Every other path gets 404.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = Router::new()
            .route("/metrics", get(render))
            .with_state(self.metrics);
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn render(State(metrics): State<Metrics>) -> impl IntoResponse {
    match metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "encoding the metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
