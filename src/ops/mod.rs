//! Running the gateway, the top floor: every start-up check of the configuration (`check`),
//! start-up and the pingora server (`server`), the process around it (`process`: daemon,
//! health; `handover`: the runtime directory and the upgrade's socket hand-over), logging
//! (`telemetry`), `GET /metrics` (`scrape`), the operator's commands (`admin`) and the audit
//! log's (`events`).

pub mod admin;
pub mod check;
pub mod events;
pub mod handover;
pub mod process;
pub mod scrape;
pub mod server;
pub mod telemetry;
