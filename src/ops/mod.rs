//! Running the gateway: configuration (`config`), start-up and the pingora server
//! (`server`) and logging (`telemetry`).

pub mod config;
pub mod server;
pub mod telemetry;
