//! The upstreams of each configured route: a round-robin load balancer whose members are probed
//! in the background (TCP connect); an unhealthy one gets no traffic until it answers again.

use std::sync::Arc;
use std::time::Duration;

use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::services::background::{background_service, GenBackgroundService};

use crate::config::{RouteAuth, RouteConfig};

pub struct ProxyRoute {
    pub prefix: String,
    pub auth: RouteAuth,
    pub upstreams: Arc<LoadBalancer<RoundRobin>>,
    pub upstream_count: usize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

/// Builds one route's balancer and the background service that health-checks it (to be added
/// to the server).
pub fn build(
    route: &RouteConfig,
    health_check_interval: Duration,
) -> anyhow::Result<(ProxyRoute, GenBackgroundService<LoadBalancer<RoundRobin>>)> {
    let mut lb =
        LoadBalancer::<RoundRobin>::try_from_iter(route.upstreams.iter().map(String::as_str))
            .map_err(|e| anyhow::anyhow!("routes: {:?}: {e}", route.prefix))?;
    let mut check = TcpHealthCheck::new();
    check.consecutive_success = 1;
    check.consecutive_failure = 1;
    check.peer_template.options.connection_timeout = Some(Duration::from_millis(500));
    lb.set_health_check(check);
    lb.health_check_frequency = Some(health_check_interval);
    lb.parallel_health_check = true;
    let service = background_service(&format!("health check {}", route.prefix), lb);
    let proxy_route = ProxyRoute {
        prefix: route.prefix.clone(),
        auth: route.auth,
        upstreams: service.task(),
        upstream_count: route.upstreams.len(),
        connect_timeout: Duration::from_millis(route.connect_timeout_ms),
        read_timeout: Duration::from_millis(route.read_timeout_ms),
    };
    Ok((proxy_route, service))
}
