//! The request path: the connection front with its deadlines and connection limits (`front`),
//! HTTP/2 connections (`h2`), the one decision every request gets, whichever engine or door it
//! came by (`decision`), pingora's hooks (`proxy`), where a request goes (`routes`), the
//! headers only the gateway sets (`identity`), CORS (`cors`), upstream balancing and health
//! (`upstreams`), upgraded connections by user (`upgraded`) and the access log line
//! (`access_log`).

pub mod access;
pub mod access_log;
pub mod decision;
pub mod front;
pub mod h1;
pub mod h2;
pub mod identity;
pub mod proxy;
pub mod routes;
pub mod served;
pub mod tls;
pub mod upgraded;
pub mod upstreams;

/// The edge's checks of the configuration: every route prefix reads as itself the way requests
/// are read (no escapes, repeated slashes or dot segments), and `proxy.trusted_proxies` are
/// addresses or networks.
pub fn check(config: &crate::config::Config) -> Result<(), crate::config::ConfigError> {
    let invalid = crate::config::ConfigError::Invalid;
    for route in &config.routes {
        if !routes::is_plain_prefix(&route.prefix) {
            return Err(invalid(format!(
                "routes: a prefix starts with '/' and has no percent-escapes, '?', '#', \
                 backslashes, repeated slashes or dot segments (requests are matched \
                 decoded), got {:?}",
                route.prefix
            )));
        }
        for (i, rule) in route.rules.iter().enumerate() {
            if let Some(path) = rule.paths.iter().find(|p| !routes::is_plain_prefix(p)) {
                return Err(invalid(format!(
                    "routes: {:?} rule {}: path {path:?} is not plain (a rule's paths are \
                     matched decoded, like prefixes: no percent-escapes, '?', '#', \
                     backslashes, repeated slashes or dot segments)",
                    route.prefix,
                    i + 1
                )));
            }
        }
    }
    identity::TrustedProxies::parse(&config.proxy.trusted_proxies)
        .map_err(|e| invalid(format!("proxy.trusted_proxies: {e}")))?;
    Ok(())
}

/// What the request path keeps beyond the gateway's own API: where requests go and how the
/// edge treats connections and upstreams. Built from the configuration by `ops` at start-up.
pub struct Edge {
    pub router: routes::Router,
    /// The configured routes, in config order (the router's indexes point here).
    pub routes: Vec<upstreams::ProxyRoute>,
    /// Upgraded connections by user, closed when the user is shut out.
    pub upgraded: std::sync::Arc<upgraded::Upgraded>,
    pub trusted_proxies: identity::TrustedProxies,
    pub request_ids: identity::RequestIds,
    /// `Strict-Transport-Security` for answers over TLS (`tls.hsts_max_age_seconds` > 0).
    pub hsts: Option<String>,
    pub access_log: bool,
    /// Whether requests are counted for `/metrics` (off when there is no admin listener).
    pub count_requests: bool,
    pub max_header_bytes: usize,
    pub keepalive_seconds: u64,
    /// The gateway's own endpoints' bodies: their size limit and how long they may take.
    pub max_body_bytes: usize,
    pub body_timeout: std::time::Duration,
    /// `mfa.enforcement = "highest_available"`: a user with a second factor must have used it
    /// in the session wherever a token is needed.
    pub step_up: bool,
}

impl Edge {
    pub fn new(
        config: &crate::config::Config,
        routes: Vec<upstreams::ProxyRoute>,
        users: &crate::store::user_cache::UserCache,
    ) -> Result<Edge, crate::config::ConfigError> {
        Ok(Edge {
            router: routes::Router::from_config(config),
            routes,
            upgraded: upgraded::Upgraded::new(users.pool().clone(), users.max_sessions()),
            trusted_proxies: identity::TrustedProxies::parse(&config.proxy.trusted_proxies)
                .map_err(|e| {
                    crate::config::ConfigError::Invalid(format!("proxy.trusted_proxies: {e}"))
                })?,
            request_ids: identity::RequestIds::new(),
            hsts: (!config.tls.listen.is_empty() && config.tls.hsts_max_age_seconds > 0)
                .then(|| format!("max-age={}", config.tls.hsts_max_age_seconds)),
            access_log: config.log.access_log,
            count_requests: !config.admin.listen.is_empty(),
            max_header_bytes: config.server.max_header_bytes,
            keepalive_seconds: config.server.keepalive_seconds,
            max_body_bytes: config.server.max_body_bytes,
            body_timeout: std::time::Duration::from_millis(config.server.body_timeout_ms),
            step_up: config.mfa.enforcement == crate::config::MfaEnforcement::HighestAvailable,
        })
    }
}
