//! Sentinel Gateway: the SentinelShield auth API (byte-compatible with the seed's FastAPI
//! backend) and an identity-aware reverse proxy, on Pingora and PostgreSQL.
//!
//! The house stands in floors; a module uses its own wing and the floors below it, never one
//! above (`tests/architecture.rs` holds this):
//! - [`config`], [`metrics`]: the foundation — the configuration's types and syntax, and the
//!   metrics registry;
//! - [`store`]: PostgreSQL — pools, migrations, tables, the user-state cache;
//! - [`credentials`]: passwords, tokens, refresh tokens, rate limits, signing keys, addresses;
//! - [`mail`]: what the gateway writes to users, the outbox and its delivery worker;
//! - [`own`]: the gateway's own API — endpoints, handlers, answers and errors, body parsing;
//! - [`edge`]: the request path — connections, routing, identity headers, pingora's hooks,
//!   upstreams;
//! - [`ops`]: start-up, the server, the CLI, logging, `GET /metrics`.
//!
//! A request: `edge::front` → `edge::proxy` → `edge::routes` → either `own::app` (handlers →
//! `credentials` / `store` → `own::api::Reply`) or, for a route, bearer verification
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
