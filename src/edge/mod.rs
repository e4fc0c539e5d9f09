//! The request path: the connection front with its deadlines (`front`), pingora's hooks
//! (`proxy`), where a request goes (`routes`), the headers only the gateway sets (`identity`),
//! CORS (`cors`), upstream balancing and health (`upstreams`), upgraded connections by user
//! (`upgraded`) and the access log line (`access_log`).

pub mod access_log;
pub mod cors;
pub mod front;
pub mod identity;
pub mod proxy;
pub mod routes;
pub mod tls;
pub mod upgraded;
pub mod upstreams;
