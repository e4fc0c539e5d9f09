//! Sentinel Gateway: the SentinelShield auth API (byte-compatible with the seed's FastAPI
//! backend) and an identity-aware reverse proxy, on Pingora and PostgreSQL.
//!
//! The house, by wing:
//! - [`edge`]: the request path — connection front, pingora hooks, routing, identity headers,
//!   CORS, upstreams;
//! - [`own`]: the gateway's own API — handlers, answers and errors, body parsing;
//! - [`credentials`]: passwords, tokens, rate limits;
//! - [`store`]: PostgreSQL — pools, migrations, the `users` table, the user-state cache;
//! - [`mail`]: what the gateway writes to users, the outbox and its delivery worker;
//! - [`ops`]: configuration, start-up, logging.
//!
//! A request: `edge::front` → `edge::proxy` → `edge::routes` → either `own::app` (handlers →
//! `credentials` / `store::users` → `own::api::Reply`) or, for a route, bearer verification
//! (`credentials::token`, `store::user_cache`) → `edge::identity` → an upstream
//! (`edge::upstreams`).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod config;
pub mod credentials;
pub mod edge;
pub mod mail;
pub mod metrics;
pub mod ops;
pub mod own;
pub mod store;
