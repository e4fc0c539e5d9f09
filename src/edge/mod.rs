//! The request path: the connection front with its deadlines and connection limits (`front`),
//! HTTP/2 connections (`h2`), pingora's hooks
//! (`proxy`), where a request goes (`routes`), the headers only the gateway sets (`identity`),
//! CORS (`cors`), upstream balancing and health (`upstreams`), upgraded connections by user
//! (`upgraded`) and the access log line (`access_log`).

pub mod access_log;
pub mod cors;
pub mod front;
pub mod h2;
pub mod identity;
pub mod proxy;
pub mod routes;
pub mod tls;
pub mod upgraded;
pub mod upstreams;
