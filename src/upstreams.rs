//! The upstreams of each configured route: round-robin over the members that pass pingora's
//! active health check (TCP connect, in the background); an unhealthy one gets no traffic until
//! it answers again.
//!
//! Pingora's `LoadBalancer` runs the checks, but requests do not go through its `select`: that
//! hashes every candidate twice with SipHash (a "seen" set and the health map), which profiling
//! showed at about 17% of the gateway's CPU per proxied request. The health check reports each
//! change to [`Members`] instead, and selection is an atomic counter and a flag per member.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::lb::health_check::{HealthObserve, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::services::background::{background_service, GenBackgroundService};

use crate::config::{RouteAuth, RouteConfig};

pub struct ProxyRoute {
    pub prefix: String,
    pub auth: RouteAuth,
    /// The route's upstreams; each one's peer carries the route's connect and read timeouts.
    pub upstreams: Arc<Members>,
}

/// A route's upstreams in config order, each with its current health.
pub struct Members {
    members: Vec<Member>,
    next: AtomicUsize,
}

struct Member {
    backend: Backend,
    addr: std::net::SocketAddr,
    timeouts: Timeouts,
    healthy: AtomicBool,
}

/// A route's timeouts, as every peer of the route gets them.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    connect: Duration,
    read: Duration,
}

impl Member {
    /// A peer to connect to, made afresh (cheaper than copying a kept one: most of
    /// `HttpPeer`'s fields are options the gateway leaves at their defaults).
    fn peer(&self) -> HttpPeer {
        let mut peer = HttpPeer::new(self.addr, false, String::new());
        peer.options.connection_timeout = Some(self.timeouts.connect);
        peer.options.total_connection_timeout = Some(self.timeouts.connect);
        peer.options.read_timeout = Some(self.timeouts.read);
        peer.options.write_timeout = Some(self.timeouts.read);
        // No idle timeout on pooled upstream connections: pingora's pool is bounded and
        // notices an upstream closing an idle one; a timeout would cost a timer per request.
        peer
    }
}

impl Members {
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The next healthy member after the last one chosen, as a peer to connect to.
    pub fn select(&self) -> Option<HttpPeer> {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        // From `start` round to the one before it.
        let (earlier, from_start) = self.members.split_at(start);
        from_start
            .iter()
            .chain(earlier)
            .find(|m| m.healthy.load(Ordering::Relaxed))
            .map(Member::peer)
    }

    fn set_health(&self, target: &Backend, healthy: bool) {
        for member in self
            .members
            .iter()
            .filter(|m| m.backend.addr == target.addr)
        {
            member.healthy.store(healthy, Ordering::Relaxed);
        }
    }
}

/// Receives the health check's verdicts (only changes are reported; members start healthy, as
/// pingora's backends do).
struct HealthReports(Arc<Members>);

#[async_trait]
impl HealthObserve for HealthReports {
    async fn observe(&self, target: &Backend, healthy: bool) {
        if !healthy {
            tracing::warn!(upstream = %target.addr, "upstream failed its health check");
        } else {
            tracing::info!(upstream = %target.addr, "upstream healthy again");
        }
        self.0.set_health(target, healthy);
    }
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
    let connect_timeout = Duration::from_millis(route.connect_timeout_ms);
    let read_timeout = Duration::from_millis(route.read_timeout_ms);
    let members = route
        .upstreams
        .iter()
        .map(|addr| {
            let backend = Backend::new(addr)
                .map_err(|e| anyhow::anyhow!("routes: {:?}: {addr}: {e}", route.prefix))?;
            let inet = *backend.addr.as_inet().ok_or_else(|| {
                anyhow::anyhow!("routes: {:?}: {addr}: not host:port", route.prefix)
            })?;
            Ok(Member {
                backend,
                addr: inet,
                timeouts: Timeouts {
                    connect: connect_timeout,
                    read: read_timeout,
                },
                healthy: AtomicBool::new(true),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let members = Arc::new(Members {
        members,
        next: AtomicUsize::new(0),
    });
    let mut check = TcpHealthCheck::new();
    check.health_changed_callback = Some(Box::new(HealthReports(Arc::clone(&members))));
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
        upstreams: members,
    };
    Ok((proxy_route, service))
}
