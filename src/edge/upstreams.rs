//! The upstreams of each configured route: round-robin over the addresses that pass pingora's
//! active health check (TCP connect, in the background); an unhealthy one gets no traffic until
//! it answers again.
//!
//! An upstream is an address (`10.0.0.5:9000`) or a name (`api:9000`, as Docker Compose and
//! Kubernetes name services). Names are resolved at start-up and again every
//! `proxy.upstream_dns_refresh_seconds` by pingora's load balancer, whose service discovery
//! here is [`Resolver`]: every address a name resolves to is a member of the route, checked on
//! its own, and a changed answer is followed without a restart. A name that does not resolve
//! keeps the addresses it had (none at first: 502 until it resolves).
//!
//! Pingora's `LoadBalancer` runs the checks and the resolution, but requests do not go through
//! its `select`: that hashes every candidate twice with SipHash (a "seen" set and the health
//! map), which profiling showed at about 17% of the gateway's CPU per proxied request. The
//! health check reports each change to [`Members`] instead, and selection is an atomic counter,
//! a load of the current member list and a flag per member.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthObserve, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::services::background::{background_service, GenBackgroundService};

use crate::config::{RouteAuth, RouteConfig};

/// A configured upstream: `host:port`, the host an IP address or a name.
pub use crate::config::HostPort as Target;

impl Target {
    /// The addresses the name resolves to now (an address resolves to itself).
    async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect())
    }

    /// [`Target::resolve`] without a runtime, for start-up.
    fn resolve_now(&self) -> std::io::Result<Vec<SocketAddr>> {
        std::net::ToSocketAddrs::to_socket_addrs(&(self.host.as_str(), self.port))
            .map(Iterator::collect)
    }
}

pub struct ProxyRoute {
    pub prefix: String,
    /// The `aud` of identity assertions for this route: its `name`, or its prefix.
    pub audience: String,
    pub auth: RouteAuth,
    /// The route's upstreams; each one's peer carries the route's connect and read timeouts.
    pub upstreams: Arc<Members>,
    /// The route's request counts and durations.
    pub metrics: crate::metrics::RequestMetrics,
    /// `upstreams = []`: the route only decides for forward auth.
    pub decision_only: bool,
}

impl ProxyRoute {
    pub fn is_decision_only(&self) -> bool {
        self.decision_only
    }
}

/// A route's upstream addresses (in the order their targets were configured), each with its
/// current health; replaced as a whole when names resolve differently.
pub struct Members {
    current: ArcSwap<Vec<Member>>,
    next: AtomicUsize,
    timeouts: Timeouts,
    /// With TLS to the upstreams: the name sent in SNI and verified.
    tls: Option<String>,
}

struct Member {
    addr: SocketAddr,
    /// Which configured target this address came from.
    target: usize,
    healthy: Arc<AtomicBool>,
}

/// A route's timeouts, as every peer of the route gets them.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    connect: Duration,
    read: Duration,
}

impl Members {
    /// A peer to connect to, made afresh (cheaper than copying a kept one: most of
    /// `HttpPeer`'s fields are options the gateway leaves at their defaults).
    fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = match &self.tls {
            Some(sni) => HttpPeer::new(addr, true, sni.clone()),
            None => HttpPeer::new(addr, false, String::new()),
        };
        peer.options.connection_timeout = Some(self.timeouts.connect);
        peer.options.total_connection_timeout = Some(self.timeouts.connect);
        peer.options.read_timeout = Some(self.timeouts.read);
        peer.options.write_timeout = Some(self.timeouts.read);
        // No idle timeout on pooled upstream connections: pingora's pool is bounded and
        // notices an upstream closing an idle one; a timeout would cost a timer per request.
        peer
    }

    /// How many addresses the route has now.
    pub fn len(&self) -> usize {
        self.current.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next healthy member after the last one chosen, as a peer to connect to.
    pub fn select(&self) -> Option<HttpPeer> {
        let members = self.current.load();
        let n = members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        // From `start` round to the one before it.
        let (earlier, from_start) = members.split_at(start.min(n));
        from_start
            .iter()
            .chain(earlier)
            .find(|m| m.healthy.load(Ordering::Relaxed))
            .map(|m| self.peer(m.addr))
    }

    /// Each address and whether it passes its health check now.
    pub fn health(&self) -> Vec<(SocketAddr, bool)> {
        self.current
            .load()
            .iter()
            .map(|m| (m.addr, m.healthy.load(Ordering::Relaxed)))
            .collect()
    }

    fn set_health(&self, addr: SocketAddr, healthy: bool) {
        for member in self.current.load().iter().filter(|m| m.addr == addr) {
            member.healthy.store(healthy, Ordering::Relaxed);
        }
    }

    /// Makes `resolved` (target index, address) the members; an address already a member
    /// keeps its health, a new one starts healthy (as pingora's backends do).
    fn replace(&self, resolved: &[(usize, SocketAddr)]) {
        let old = self.current.load();
        let members = resolved
            .iter()
            .map(|&(target, addr)| Member {
                addr,
                target,
                healthy: old.iter().find(|m| m.addr == addr).map_or_else(
                    || Arc::new(AtomicBool::new(true)),
                    |m| Arc::clone(&m.healthy),
                ),
            })
            .collect();
        self.current.store(Arc::new(members));
    }

    /// The addresses target `target` resolved to last time.
    fn addresses_of(&self, target: usize) -> Vec<SocketAddr> {
        self.current
            .load()
            .iter()
            .filter(|m| m.target == target)
            .map(|m| m.addr)
            .collect()
    }
}

/// Pingora's service discovery for a route: resolves every target, updates [`Members`], and
/// hands the addresses to the load balancer to health-check.
struct Resolver {
    route: String,
    targets: Vec<Target>,
    members: Arc<Members>,
}

impl Resolver {
    async fn resolve_all(&self) -> Vec<(usize, SocketAddr)> {
        let mut resolved = Vec::new();
        for (i, target) in self.targets.iter().enumerate() {
            match target.resolve().await {
                Ok(addrs) if !addrs.is_empty() => {
                    let before = self.members.addresses_of(i);
                    if before != addrs && !before.is_empty() {
                        tracing::info!(route = %self.route, upstream = %target, ?addrs, "upstream resolves to new addresses");
                    }
                    resolved.extend(addrs.into_iter().map(|a| (i, a)));
                }
                result => {
                    let error = result.err().map(|e| e.to_string());
                    tracing::warn!(route = %self.route, upstream = %target, error, "upstream name does not resolve; keeping its last addresses");
                    resolved.extend(self.members.addresses_of(i).into_iter().map(|a| (i, a)));
                }
            }
        }
        dedup(resolved)
    }
}

/// The first occurrence of each address, in order.
fn dedup(resolved: Vec<(usize, SocketAddr)>) -> Vec<(usize, SocketAddr)> {
    let mut seen = std::collections::HashSet::new();
    resolved
        .into_iter()
        .filter(|(_, addr)| seen.insert(*addr))
        .collect()
}

#[async_trait]
impl ServiceDiscovery for Resolver {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let resolved = self.resolve_all().await;
        self.members.replace(&resolved);
        let backends = resolved
            .iter()
            .map(|(_, addr)| Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(*addr),
                weight: 1,
                ext: Default::default(),
            })
            .collect();
        Ok((backends, HashMap::new()))
    }
}

/// Receives the health check's verdicts (only changes are reported; members start healthy, as
/// pingora's backends do).
struct HealthReports(Arc<Members>);

#[async_trait]
impl HealthObserve for HealthReports {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let Some(addr) = target.addr.as_inet().copied() else {
            return;
        };
        if !healthy {
            tracing::warn!(upstream = %addr, "upstream failed its health check");
        } else {
            tracing::info!(upstream = %addr, "upstream healthy again");
        }
        self.0.set_health(addr, healthy);
    }
}

/// A route's health checks and name resolution, run as a pingora background service.
pub type HealthCheck = GenBackgroundService<LoadBalancer<RoundRobin>>;

/// Builds one route's members (names resolved once now) and the background service that
/// health-checks them and resolves the names again every `dns_refresh` (to be added to the
/// server).
pub fn build(
    route: &RouteConfig,
    health_check_interval: Duration,
    dns_refresh: Duration,
) -> anyhow::Result<(ProxyRoute, HealthCheck)> {
    let targets = route
        .upstreams
        .iter()
        .map(|u| Target::parse(u))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("routes: {:?}: {e}", route.prefix))?;
    let members = Arc::new(Members {
        current: ArcSwap::from_pointee(Vec::new()),
        next: AtomicUsize::new(0),
        timeouts: Timeouts {
            connect: Duration::from_millis(route.connect_timeout_ms),
            read: Duration::from_millis(route.read_timeout_ms),
        },
        tls: route.tls.then(|| {
            route
                .sni
                .clone()
                .or_else(|| targets.first().map(|t| t.host.clone()))
                .unwrap_or_default()
        }),
    });
    let mut now = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        match target.resolve_now() {
            Ok(addrs) => now.extend(addrs.into_iter().map(|a| (i, a))),
            Err(e) => tracing::warn!(route = %route.prefix, upstream = %target, error = %e,
                "upstream name does not resolve yet; the route answers 502 until it does"),
        }
    }
    members.replace(&dedup(now));
    let resolver = Resolver {
        route: route.prefix.clone(),
        targets,
        members: Arc::clone(&members),
    };
    let mut lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(resolver)));
    let mut check = TcpHealthCheck::new();
    check.health_changed_callback = Some(Box::new(HealthReports(Arc::clone(&members))));
    check.consecutive_success = 1;
    check.consecutive_failure = 1;
    check.peer_template.options.connection_timeout = Some(Duration::from_millis(500));
    lb.set_health_check(check);
    lb.health_check_frequency = Some(health_check_interval);
    lb.update_frequency = Some(dns_refresh);
    lb.parallel_health_check = true;
    let service = background_service(&format!("health check {}", route.prefix), lb);
    let proxy_route = ProxyRoute {
        prefix: route.prefix.clone(),
        audience: route.name.clone().unwrap_or_else(|| route.prefix.clone()),
        auth: route.auth,
        upstreams: members,
        metrics: crate::metrics::metrics().route(&route.prefix),
        decision_only: route.upstreams.is_empty(),
    };
    Ok((proxy_route, service))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_addresses_or_names_with_ports() {
        for (text, host, port) in [
            ("127.0.0.1:9000", "127.0.0.1", 9000),
            ("[::1]:80", "::1", 80),
            ("api:9000", "api", 9000),
            (
                "svc.ns.svc.cluster.local:8080",
                "svc.ns.svc.cluster.local",
                8080,
            ),
            ("my_service:1", "my_service", 1),
        ] {
            assert_eq!(
                Target::parse(text),
                Ok(Target {
                    host: host.into(),
                    port
                }),
                "{text}"
            );
        }
        for bad in [
            "api",
            "api:",
            ":80",
            "api:0",
            "api:99999",
            "a b:80",
            "http://api:80",
            "::1:80",
            "a..b:1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Target::parse("[::1]:80").unwrap().to_string(), "[::1]:80");
    }

    fn members(addrs: &[(usize, &str)]) -> Members {
        let m = Members {
            current: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            timeouts: Timeouts {
                connect: Duration::from_secs(1),
                read: Duration::from_secs(1),
            },
            tls: None,
        };
        let resolved: Vec<_> = addrs
            .iter()
            .map(|(t, a)| (*t, a.parse().unwrap()))
            .collect();
        m.replace(&resolved);
        m
    }

    fn chosen(m: &Members) -> String {
        m.select().unwrap()._address.to_string()
    }

    #[test]
    fn selection_skips_unhealthy_members_and_follows_new_addresses() {
        let m = members(&[(0, "10.0.0.1:80"), (0, "10.0.0.2:80"), (1, "10.0.0.3:80")]);
        let picks: BTreeSet<String> = (0..6).map(|_| chosen(&m)).collect();
        assert_eq!(picks.len(), 3);
        m.set_health("10.0.0.2:80".parse().unwrap(), false);
        assert!((0..6).all(|_| chosen(&m) != "10.0.0.2:80"));
        // A new answer for target 0: 10.0.0.2 stays (still unhealthy), 10.0.0.4 comes in.
        let again: Vec<_> = [(0, "10.0.0.2:80"), (0, "10.0.0.4:80"), (1, "10.0.0.3:80")]
            .iter()
            .map(|(t, a)| (*t, a.parse().unwrap()))
            .collect();
        m.replace(&again);
        let picks: BTreeSet<String> = (0..6).map(|_| chosen(&m)).collect();
        assert_eq!(
            picks,
            ["10.0.0.3:80", "10.0.0.4:80"]
                .map(String::from)
                .into_iter()
                .collect()
        );
        assert_eq!(m.addresses_of(0).len(), 2);
        m.replace(&[]);
        assert!(m.select().is_none());
    }
}
