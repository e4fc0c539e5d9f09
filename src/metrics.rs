//! The metrics registry: every counter, gauge and histogram the gateway keeps, in one
//! process-wide registry (one gateway per process, as pingora's model is). A foundation: it
//! imports nothing of the gateway's; the wings count into it, and `ops` serves it as text at
//! `GET /metrics` on the admin listener, setting the state gauges (pools, upstream health,
//! queue depths, the outbox) as Prometheus scrapes.
//!
//! The request path touches only handles resolved when the gateway starts (per route, per own
//! endpoint, per status class): no label lookup, no lock, a few atomic additions.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Request durations, seconds: from a cached own answer (well under a millisecond) to a slow
/// upstream. Eight buckets (eleven series with `+Inf`, sum and count) per route or endpoint:
/// enough to see a p99 move, few enough that twenty routes stay a few hundred series.
const DURATION_BUCKETS: &[f64] = &[0.001, 0.0025, 0.01, 0.025, 0.1, 0.25, 1.0, 5.0];

/// The status classes a request is counted under; `none` is a request that got no answer (the
/// client left, or the connection broke first).
const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    durations: HistogramVec,
    /// The unmatched requests' handles (404s, 405s, preflights of no route).
    unmatched: RequestMetrics,
    upstream_failures: IntCounterVec,
    upstream_retries: IntCounterVec,
    pub upstream_healthy: IntGaugeVec,
    logins: IntCounterVec,
    rate_limited: IntCounterVec,
    redis_failures: IntCounterVec,
    pub redis_up: IntGauge,
    pub assertions_signed: IntCounter,
    pub assertion_keys: IntGauge,
    pub token_cache_hit: IntCounter,
    pub token_cache_miss: IntCounter,
    pub user_cache_hit: IntCounter,
    pub user_cache_miss: IntCounter,
    pub hash_queue: IntGauge,
    pub hash_queue_capacity: IntGauge,
    pub pool_connections: IntGaugeVec,
    pub pool_waiting: IntGaugeVec,
    pub listen_connected: IntGauge,
    pub listen_reconnects: IntCounter,
    pub outbox_depth: IntGauge,
    pub mail_sent: IntCounter,
    pub mail_failed_attempts: IntCounter,
    pub mail_abandoned: IntCounter,
    pub ready: IntGauge,
    client_connections: IntGauge,
    connections_refused: IntCounterVec,
}

/// One request kind's count per status class, and its durations.
#[derive(Clone)]
pub struct RequestMetrics {
    counts: [IntCounter; 6],
    duration: Histogram,
}

impl RequestMetrics {
    /// Counts one request that ended with `status` (0: none sent) after `elapsed`.
    pub fn observe(&self, status: u16, elapsed: Duration) {
        let class = match status {
            100..=599 => usize::from(status / 100),
            _ => 0,
        };
        self.counts[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// How a password login ended.
#[derive(Debug, Clone, Copy)]
pub enum LoginOutcome {
    Success,
    /// Wrong password, unknown email or inactive account (one answer for all three).
    Failure,
    RateLimited,
    /// The form was malformed (422/400).
    Invalid,
    /// The database or the hashing queue could not take it (503).
    Unavailable,
}

impl LoginOutcome {
    fn label(self) -> &'static str {
        match self {
            LoginOutcome::Success => "success",
            LoginOutcome::Failure => "failure",
            LoginOutcome::RateLimited => "rate_limited",
            LoginOutcome::Invalid => "invalid",
            LoginOutcome::Unavailable => "unavailable",
        }
    }
}

/// The limits a request can be refused by (429).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    LoginIp,
    LoginAccount,
    RegisterIp,
    PasswordResetIp,
    RefreshIp,
    VerificationResend,
    MfaUser,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::LoginIp => "login_ip",
            Limit::LoginAccount => "login_account",
            Limit::RegisterIp => "register_ip",
            Limit::PasswordResetIp => "password_reset_ip",
            Limit::RefreshIp => "refresh_ip",
            Limit::VerificationResend => "verification_resend",
            Limit::MfaUser => "mfa_user",
        }
    }
}

/// Only a programming error (a bad name, a label count that does not match, a name registered
/// twice) fails here: deterministically, at start-up (`serve` builds the metrics before it
/// listens), and in every test run (the unit test below builds and renders them).
#[allow(clippy::panic)]
fn must<T>(made: prometheus::Result<T>) -> T {
    made.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = must(IntCounterVec::new(Opts::new(name, help), labels));
    must(registry.register(Box::new(vec.clone())));
    vec
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = must(IntGaugeVec::new(Opts::new(name, help), labels));
    must(registry.register(Box::new(vec.clone())));
    vec
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = must(IntGauge::new(name, help));
    must(registry.register(Box::new(g.clone())));
    g
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = must(IntCounter::new(name, help));
    must(registry.register(Box::new(c.clone())));
    c
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let requests = counter_vec(
            &registry,
            "sentinel_http_requests_total",
            "Requests answered, by kind (own, proxied, unmatched), route or endpoint, and \
             status class",
            &["kind", "route", "status_class"],
        );
        let durations = must(HistogramVec::new(
            HistogramOpts::new(
                "sentinel_http_request_duration_seconds",
                "Time from the request head to the end of the answer, by kind and route or \
                 endpoint",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["kind", "route"],
        ));
        must(registry.register(Box::new(durations.clone())));
        let cache = counter_vec(
            &registry,
            "sentinel_cache_lookups_total",
            "Lookups of verified tokens and of users' state, by cache and result (a user miss \
             is a read from PostgreSQL)",
            &["cache", "result"],
        );
        let metrics = Metrics {
            unmatched: request_metrics(&requests, &durations, "unmatched", ""),
            upstream_failures: counter_vec(
                &registry,
                "sentinel_upstream_failures_total",
                "Proxied requests that failed because of their upstream, by route and kind \
                 (connect, timeout, no_healthy_upstream, other)",
                &["route", "kind"],
            ),
            upstream_retries: counter_vec(
                &registry,
                "sentinel_upstream_connect_retries_total",
                "Failed upstream connections retried on another upstream of the route",
                &["route"],
            ),
            upstream_healthy: gauge_vec(
                &registry,
                "sentinel_upstream_healthy",
                "1 if the upstream address passes its health check, else 0",
                &["route", "upstream"],
            ),
            logins: counter_vec(
                &registry,
                "sentinel_logins_total",
                "Password logins by outcome (success, failure, rate_limited, invalid, \
                 unavailable)",
                &["outcome"],
            ),
            rate_limited: counter_vec(
                &registry,
                "sentinel_rate_limit_rejections_total",
                "Requests refused with 429, by limit",
                &["limit"],
            ),
            redis_failures: counter_vec(
                &registry,
                "sentinel_rate_limit_redis_failures_total",
                "Rate-limit checks Redis did not answer (error or timeout), by what the attempt \
                 got: allowed (redis_failure = open) or refused with 503 (closed)",
                &["outcome"],
            ),
            redis_up: gauge(
                &registry,
                "sentinel_rate_limit_redis_up",
                "1 if the last rate-limit check reached Redis, 0 if it failed (stays 1 with \
                 backend = local)",
            ),
            assertions_signed: counter(
                &registry,
                "sentinel_identity_assertions_signed_total",
                "X-Identity-Assertion JWTs signed (each is reused for identity_assertion.reuse_seconds)",
            ),
            assertion_keys: gauge(
                &registry,
                "sentinel_identity_assertion_keys",
                "Keys in the JWKS this instance serves (current, next and retired ones still due)",
            ),
            token_cache_hit: cache.with_label_values(&["token", "hit"]),
            token_cache_miss: cache.with_label_values(&["token", "miss"]),
            user_cache_hit: cache.with_label_values(&["user", "hit"]),
            user_cache_miss: cache.with_label_values(&["user", "miss"]),
            hash_queue: gauge(
                &registry,
                "sentinel_hash_queue_depth",
                "Password hashing jobs running or waiting",
            ),
            hash_queue_capacity: gauge(
                &registry,
                "sentinel_hash_queue_capacity",
                "Password hashing jobs that may wait at once (beyond, 503)",
            ),
            pool_connections: gauge_vec(
                &registry,
                "sentinel_db_pool_connections",
                "PostgreSQL connections by pool (api: own endpoints; proxy: user reads on the \
                 proxy path) and state (open, idle, max)",
                &["pool", "state"],
            ),
            pool_waiting: gauge_vec(
                &registry,
                "sentinel_db_pool_waiting",
                "Requests waiting for a PostgreSQL connection, by pool",
                &["pool"],
            ),
            listen_connected: gauge(
                &registry,
                "sentinel_db_listen_connected",
                "1 while the LISTEN connection for user changes is up, else 0",
            ),
            listen_reconnects: counter(
                &registry,
                "sentinel_db_listen_reconnects_total",
                "LISTEN connections that ended (lost, or failed to connect); each is retried with back-off",
            ),
            outbox_depth: gauge(
                &registry,
                "sentinel_mail_outbox_depth",
                "Mails waiting in the outbox (not sent, not abandoned), all instances",
            ),
            mail_sent: counter(
                &registry,
                "sentinel_mail_sent_total",
                "Mails this instance delivered",
            ),
            mail_failed_attempts: counter(
                &registry,
                "sentinel_mail_failed_attempts_total",
                "Delivery attempts that failed and will be retried",
            ),
            mail_abandoned: counter(
                &registry,
                "sentinel_mail_abandoned_total",
                "Mails given up (link expired, refused for good, or too old)",
            ),
            ready: gauge(
                &registry,
                "sentinel_ready",
                "1 once PostgreSQL was reached and migrated, else 0",
            ),
            client_connections: gauge(
                &registry,
                "sentinel_client_connections",
                "Client connections open (HTTP/1 and HTTP/2, plain and TLS)",
            ),
            connections_refused: counter_vec(
                &registry,
                "sentinel_client_connections_refused_total",
                "Client connections closed at once, by the limit they were past \
                 (server.max_connections_per_ip, server.max_connections)",
                &["limit"],
            ),
            requests,
            durations,
            registry,
        };
        metrics.redis_up.set(1);
        #[cfg(target_os = "linux")]
        must(metrics.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )));
        metrics
    }

    /// The client connections open now.
    pub fn connections_open(&self, open: usize) {
        self.client_connections
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// A client connection closed at once, past `limit`.
    pub fn connection_refused(&self, limit: &'static str) {
        self.connections_refused.with_label_values(&[limit]).inc();
    }

    /// A proxied route's handles (resolved once, when the route is built).
    pub fn route(&self, prefix: &str) -> RequestMetrics {
        request_metrics(&self.requests, &self.durations, "proxied", prefix)
    }

    /// An own endpoint's handles (resolved once per endpoint, at start-up).
    pub fn endpoint(&self, name: &str) -> RequestMetrics {
        request_metrics(&self.requests, &self.durations, "own", name)
    }

    pub fn unmatched(&self) -> &RequestMetrics {
        &self.unmatched
    }

    pub fn login(&self, outcome: LoginOutcome) {
        self.logins.with_label_values(&[outcome.label()]).inc();
    }

    pub fn rate_limited(&self, limit: Limit) {
        self.rate_limited.with_label_values(&[limit.label()]).inc();
    }

    /// A shared rate-limit check that failed: the attempt was let through (`open`) or not.
    pub fn redis_failed(&self, open: bool) {
        let outcome = if open { "allowed" } else { "refused" };
        self.redis_failures.with_label_values(&[outcome]).inc();
    }

    pub fn upstream_failed(&self, route: &str, kind: &'static str) {
        self.upstream_failures
            .with_label_values(&[route, kind])
            .inc();
    }

    pub fn upstream_retried(&self, route: &str) {
        self.upstream_retries.with_label_values(&[route]).inc();
    }

    /// Every metric as Prometheus text.
    pub fn render(&self) -> Vec<u8> {
        let mut text = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut text) {
            tracing::warn!(error = %e, "metrics could not be rendered");
        }
        text
    }
}

fn request_metrics(
    requests: &IntCounterVec,
    durations: &HistogramVec,
    kind: &str,
    route: &str,
) -> RequestMetrics {
    RequestMetrics {
        counts: STATUS_CLASSES.map(|class| requests.with_label_values(&[kind, route, class])),
        duration: durations.with_label_values(&[kind, route]),
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_defined_and_rendered() {
        let m = Metrics::new();
        m.route("/api/").observe(200, Duration::from_millis(3));
        m.endpoint("token").observe(401, Duration::from_micros(800));
        m.unmatched().observe(0, Duration::ZERO);
        m.login(LoginOutcome::Success);
        m.rate_limited(Limit::LoginIp);
        m.upstream_failed("/api/", "connect");
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&m.registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        for line in [
            r#"sentinel_http_requests_total{kind="proxied",route="/api/",status_class="2xx"} 1"#,
            r#"sentinel_http_requests_total{kind="own",route="token",status_class="4xx"} 1"#,
            r#"sentinel_http_requests_total{kind="unmatched",route="",status_class="none"} 1"#,
            r#"sentinel_http_request_duration_seconds_bucket{kind="proxied",route="/api/",le="0.01"} 1"#,
            r#"sentinel_http_request_duration_seconds_bucket{kind="proxied",route="/api/",le="0.0025"} 0"#,
            r#"sentinel_logins_total{outcome="success"} 1"#,
            r#"sentinel_rate_limit_rejections_total{limit="login_ip"} 1"#,
            r#"sentinel_upstream_failures_total{kind="connect",route="/api/"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }
}
