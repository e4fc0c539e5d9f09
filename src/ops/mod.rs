//! Running the gateway: configuration (`config`), start-up and the pingora server
//! (`server`), logging (`telemetry`) and the operator's `users` commands (`admin`).

pub mod admin;
pub mod config;
pub mod metrics;
pub mod process;
pub mod server;
pub mod telemetry;
