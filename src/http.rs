//! The service's HTTP endpoint (`http.bind`): `/metrics` for Prometheus, `/livez` and
//! `/readyz` for the orchestrator, `/progress` for operators.
//!
//! It reads what the owner publishes in [`Control`] and asks it the rest with a
//! [`Command`] answered over a oneshot; it never touches an engine or Kafka, so
//! liveness never depends on the broker.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::pipeline::{Command, Control};

/// How long a request waits for the owner's answer before a 503.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

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
        .route("/progress", get(progress))
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
    let code = match ready {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    let status = &control.status;
    let max_lag = status.max_lag.load(Ordering::SeqCst);
    let body = serde_json::json!({
        "ready": ready,
        "assigned_partitions": status.assigned_partitions.load(Ordering::SeqCst),
        "caught_up": status.caught_up.load(Ordering::SeqCst),
        "max_lag": (max_lag >= 0).then_some(max_lag),
        "ready_max_lag": status.ready_max_lag.load(Ordering::SeqCst),
    });
    (code, json(&body))
}

/// Where every assigned partition stands, answered by the owner: offsets read,
/// committed and snapshotted, lag, customers, outputs in flight. 503 while the service
/// does not answer (starting, stopping, stopped).
async fn progress(State(control): State<Arc<Control>>) -> Response {
    match control.ask(Command::Progress, ANSWER_WITHIN).await {
        Ok(report) => (StatusCode::OK, json(&report)).into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            json(&serde_json::json!({ "error": error.to_string() })),
        )
            .into_response(),
    }
}

/// A JSON body with its content type, ending in a newline like the other endpoints.
fn json(value: &impl serde::Serialize) -> impl IntoResponse {
    let mut body = serde_json::to_string(value).expect("plain data serialises");
    body.push('\n');
    ([(header::CONTENT_TYPE, "application/json")], body)
}
