//! Sentinel Gateway: the SentinelShield auth API (byte-compatible with the seed's FastAPI
//! backend) and an identity-aware reverse proxy, on Pingora and PostgreSQL.
//!
//! Request flow: `proxy` (pingora hooks) → `cors` / `routes` → `app` handlers →
//! `forms` / `password` / `token` / `users` → `api::Reply`.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod access_log;
pub mod api;
pub mod app;
pub mod config;
pub mod cors;
pub mod db;
pub mod email;
pub mod forms;
pub mod front;
pub mod identity;
pub mod password;
pub mod pg_tls;
pub mod proxy;
pub mod pyjson;
pub mod rate_limit;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod token;
pub mod upgraded;
pub mod upstreams;
pub mod user_cache;
pub mod users;
