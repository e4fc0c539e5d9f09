//! The request path: the connection front with its deadlines and connection limits (`front`),
//! HTTP/2 connections (`h2`), pingora's hooks
//! (`proxy`), where a request goes (`routes`), the headers only the gateway sets (`identity`),
//! CORS (`cors`), upstream balancing and health (`upstreams`), upgraded connections by user
//! (`upgraded`) and the access log line (`access_log`).

pub mod access_log;
pub mod front;
pub mod h2;
pub mod identity;
pub mod proxy;
pub mod routes;
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
    }
    identity::TrustedProxies::parse(&config.proxy.trusted_proxies)
        .map_err(|e| invalid(format!("proxy.trusted_proxies: {e}")))?;
    Ok(())
}
