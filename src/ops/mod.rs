//! Running the gateway: configuration (`config`), start-up and the pingora server
//! (`server`), the process around it (`process`: daemon, health; `handover`: the runtime
//! directory and the upgrade's socket hand-over), logging (`telemetry`) and the operator's
//! `users` commands (`admin`).

pub mod admin;
pub mod check;
pub mod handover;
pub mod process;
pub mod scrape;
pub mod server;
pub mod telemetry;
