//! `GET /metrics` on the admin listener: the state gauges set from the running gateway (pools,
//! upstream health, the hashing queue, readiness, the outbox depth read from PostgreSQL), then
//! the registry of [`crate::metrics`] rendered as Prometheus text.

use std::sync::Arc;
use std::time::Duration;

use crate::edge::Edge;
use crate::metrics::metrics;
use crate::own::app::App;

/// Reads the state gauges from `app` (and the outbox depth from PostgreSQL, waiting at most a
/// second), then renders every metric.
pub async fn render(app: &App, edge: &Edge) -> Vec<u8> {
    let m = metrics();
    m.hash_queue
        .set(i64::try_from(app.hasher.in_flight()).unwrap_or(i64::MAX));
    m.hash_queue_capacity
        .set(i64::try_from(app.hasher.capacity()).unwrap_or(i64::MAX));
    for (name, pool) in [("api", &app.pool), ("proxy", app.users.pool())] {
        let status = pool.status();
        let set = |state: &str, n: usize| {
            m.pool_connections
                .with_label_values(&[name, state])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set("open", status.size);
        set("idle", status.available);
        set("max", status.max_size);
        m.pool_waiting
            .with_label_values(&[name])
            .set(i64::try_from(status.waiting).unwrap_or(i64::MAX));
    }
    m.listen_connected.set(i64::from(app.users.is_listening()));
    m.ready.set(i64::from(app.is_ready()));
    for route in &edge.routes {
        for (addr, healthy) in route.upstreams.health() {
            m.upstream_healthy
                .with_label_values(&[route.prefix.as_str(), &addr.to_string()])
                .set(i64::from(healthy));
        }
    }
    if app.is_ready() {
        match tokio::time::timeout(Duration::from_secs(1), outbox_depth(app)).await {
            Ok(Ok(depth)) => m.outbox_depth.set(depth),
            Ok(Err(e)) => tracing::debug!(error = %e, "metrics: outbox depth not read"),
            Err(_) => tracing::debug!("metrics: outbox depth not read within 1 s"),
        }
    }
    m.render()
}

async fn outbox_depth(app: &App) -> Result<i64, crate::store::StoreError> {
    let db = crate::store::users::client(&app.pool).await?;
    crate::mail::outbox::depth(&db).await
}

/// `GET /metrics` on the admin listener (anything else: 404).
pub struct MetricsApp {
    pub app: Arc<App>,
    pub edge: Arc<Edge>,
}

#[async_trait::async_trait]
impl pingora::apps::http_app::ServeHttp for MetricsApp {
    async fn response(
        &self,
        session: &mut pingora::protocols::http::ServerSession,
    ) -> http::Response<Vec<u8>> {
        let head = session.req_header();
        let (status, content_type, body) = if head.uri.path() != "/metrics" {
            (404, "text/plain; charset=utf-8", b"not found\n".to_vec())
        } else if head.method != http::Method::GET && head.method != http::Method::HEAD {
            (
                405,
                "text/plain; charset=utf-8",
                b"method not allowed\n".to_vec(),
            )
        } else {
            (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                render(&self.app, &self.edge).await,
            )
        };
        let mut response = http::Response::new(body);
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        let length = http::HeaderValue::from(response.body().len());
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, length);
        response
    }
}
