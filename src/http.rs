//! The service's HTTP endpoint (`http.bind`): `/metrics` for Prometheus, `/livez` and
//! `/readyz` for the orchestrator, `/progress` for operators, and with `api.enabled`
//! the customer routes: `GET /customers/{id}` (the customer's state, or a redirect to
//! the instance that holds it) and `DELETE /customers/{id}` (an erase request).
//!
//! It reads what the owner publishes in [`Control`] and asks it the rest with a
//! [`Command`] answered over a oneshot; it never touches an engine, and only the
//! customer routes use Kafka (the members directory and the erase producer), so
//! liveness never depends on the broker.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::net::TcpListener;

use crate::config::{Secret, Settings};
use crate::members::Members;
use crate::partitioner::Partitioner;
use crate::pipeline::{wall_clock, Command, Control, CustomerAnswer};
use crate::telemetry::labels::Route;

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
pub async fn serve(
    listener: TcpListener,
    control: Arc<Control>,
    api: Option<Arc<Api>>,
) -> std::io::Result<()> {
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/progress", get(progress))
        .with_state(control.clone());
    if let Some(api) = api {
        let customers = Router::new()
            .route("/customers/{id}", get(get_customer).delete(delete_customer))
            .with_state((control, api));
        app = app.merge(customers);
    }
    axum::serve(listener, app).await
}

/// What the customer routes need besides the owner.
pub struct Api {
    token: Option<Secret>,
    input_topics: Vec<String>,
    partitioner: Partitioner,
    model: String,
    model_version: String,
    members: Arc<Members>,
    /// Produces `DELETE`'s erase records (keyed with `input.partitioner`) and the
    /// members directory's claims.
    producer: FutureProducer,
}

/// How long `DELETE` waits for its erase record's delivery.
const ERASE_DELIVERY: Duration = Duration::from_secs(10);

impl Api {
    /// The customer routes of `settings`, with the members directory started.
    ///
    /// # Errors
    /// A Kafka client or the members thread cannot be created.
    pub fn start(settings: &Settings, control: Arc<Control>) -> Result<Arc<Api>, String> {
        let mut properties = settings.kafka.producer_properties(None);
        properties.set("partitioner", settings.input.partitioner.name());
        properties.set("message.timeout.ms", &ERASE_DELIVERY.as_millis().to_string());
        let producer: FutureProducer = rdkafka::ClientConfig::from(&properties)
            .create()
            .map_err(|e| format!("cannot create the API's producer: {e}"))?;
        let members = Members::start(settings, control, producer.clone())?;
        Ok(Arc::new(Api {
            token: settings.api.token.clone(),
            input_topics: settings.input.topics.clone(),
            partitioner: settings.input.partitioner,
            model: settings.model.name().to_owned(),
            model_version: settings.model.version().to_owned(),
            members,
            producer,
        }))
    }

    /// Whether the request may use the customer routes: no token configured, or
    /// `Authorization: Bearer <token>` (compared in constant time).
    fn authorised(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        let expected = token.expose().as_bytes();
        given.len() == expected.len()
            && given
                .bytes()
                .zip(expected)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}

/// The customer routes' state: the owner's control and the API.
type CustomerRoutes = State<(Arc<Control>, Arc<Api>)>;

async fn get_customer(
    State((control, api)): CustomerRoutes,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let response = if api.authorised(&headers) {
        lookup(&control, &api, &id).await
    } else {
        unauthorised()
    };
    observe(&control, Route::Get, &response, started);
    response
}

/// The customer's state from the owner if this instance holds its partition, else a
/// redirect to the instance that does.
async fn lookup(control: &Control, api: &Api, id: &str) -> Response {
    let Some(partitions) = partitions_of(api, id) else {
        return unavailable("the input topics' partition counts are not known yet");
    };
    let ask = |reply| Command::Customer {
        id: id.to_owned(),
        partitions: partitions.clone(),
        reply,
    };
    match control.ask(ask, ANSWER_WITHIN).await {
        Err(error) => unavailable(&error.to_string()),
        Ok(CustomerAnswer::Owned(states)) if states.is_empty() => (
            StatusCode::NOT_FOUND,
            json(&serde_json::json!({"error": "unknown customer", "customer_id": id})),
        )
            .into_response(),
        Ok(CustomerAnswer::Owned(states)) => (
            StatusCode::OK,
            json(&serde_json::json!({
                "customer_id": id,
                "model": api.model,
                "model_version": api.model_version,
                "states": states,
            })),
        )
            .into_response(),
        Ok(CustomerAnswer::NotOwned) => match api.members.holder(&api.input_topics[0], partitions[0]) {
            Some(url) => {
                let location = format!("{url}/customers/{}", percent_encode(id));
                (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response()
            }
            None => {
                unavailable("no instance holds the customer's partition right now (rebalancing or restoring)")
            }
        },
    }
}

/// The customer's partition of each input topic, once their partition counts are known.
fn partitions_of(api: &Api, id: &str) -> Option<Vec<i32>> {
    api.input_topics
        .iter()
        .map(|topic| {
            let count = api.members.partition_count(topic)?;
            Some(api.partitioner.partition(id.as_bytes(), count))
        })
        .collect()
}

/// Produces an erase record for the customer to the first input topic and answers 202
/// with where it landed, once delivered: the erasure then travels with the events.
async fn delete_customer(
    State((control, api)): CustomerRoutes,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let response = if api.token.is_none() {
        (
            StatusCode::FORBIDDEN,
            json(&serde_json::json!({"error": "DELETE /customers/{id} needs api.token to be set"})),
        )
            .into_response()
    } else if !api.authorised(&headers) {
        unauthorised()
    } else {
        erase(&api, &id).await
    };
    observe(&control, Route::Delete, &response, started);
    response
}

async fn erase(api: &Api, id: &str) -> Response {
    let value = serde_json::json!({
        "type": "erase",
        "userId": id,
        "timestamp": wall_clock().to_string(),
    });
    let payload = serde_json::to_vec(&value).expect("plain data serialises");
    let topic = &api.input_topics[0];
    let record = FutureRecord::to(topic).key(id).payload(&payload);
    match api.producer.send(record, Timeout::After(ERASE_DELIVERY)).await {
        Ok(delivery) => (
            StatusCode::ACCEPTED,
            json(&serde_json::json!({
                "customer_id": id,
                "topic": topic,
                "partition": delivery.partition,
                "offset": delivery.offset,
            })),
        )
            .into_response(),
        Err((error, _)) => unavailable(&format!(
            "the erase request could not be delivered to {topic}: {error}"
        )),
    }
}

fn unauthorised() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        json(&serde_json::json!({"error": "missing or wrong bearer token"})),
    )
        .into_response()
}

fn unavailable(reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        json(&serde_json::json!({ "error": reason })),
    )
        .into_response()
}

fn observe(control: &Control, route: Route, response: &Response, started: Instant) {
    let metrics = &control.metrics;
    metrics
        .lookups
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    metrics
        .lookup_duration
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
}

/// `text` as one URL path segment: everything but RFC 3986's unreserved characters
/// percent-encoded.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
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
        Err(error) => unavailable(&error.to_string()),
    }
}

/// A JSON body with its content type, ending in a newline like the other endpoints.
fn json(value: &impl serde::Serialize) -> impl IntoResponse {
    let mut body = serde_json::to_string(value).expect("plain data serialises");
    body.push('\n');
    ([(header::CONTENT_TYPE, "application/json")], body)
}
