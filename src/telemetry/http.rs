//! The HTTP endpoint (`[http] bind`): `/metrics` for Prometheus, `/livez` and
//! `/readyz` for the orchestrator. It only reads what the service thread publishes in
//! [`Control`]; nothing here touches Kafka, so liveness never depends on the broker.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::pipeline::Control;

/// Binds `address` (before the service starts, so a taken port is a clear error).
///
/// # Errors
/// The address cannot be bound.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves the endpoints on `listener` until the future is dropped.
///
/// # Errors
/// Accepting connections failed.
pub async fn serve(listener: TcpListener, control: Arc<Control>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(control);
    axum::serve(listener, app).await
}

async fn metrics(State(control): State<Arc<Control>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        control.metrics.render(),
    )
}

async fn livez() -> &'static str {
    "ok\n"
}

/// 200 when partitions are assigned and restored, each caught up once, and no lag
/// above `http.ready_max_lag`; else 503. The body says which condition holds.
async fn readyz(State(control): State<Arc<Control>>) -> impl IntoResponse {
    let ready = control.is_ready();
    let status = match ready {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    let max_lag = control.max_lag.load(Ordering::SeqCst);
    let body = format!(
        "{{\"ready\":{ready},\"assigned_partitions\":{},\"caught_up\":{},\"max_lag\":{},\"ready_max_lag\":{}}}\n",
        control.metrics.assigned_partitions.get(),
        control.caught_up.load(Ordering::SeqCst),
        if max_lag < 0 { "null".to_owned() } else { max_lag.to_string() },
        control.ready_max_lag.load(Ordering::SeqCst),
    );
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}
