//! The gateway's own API: which endpoints there are (`endpoints`), the seed's and `/health`,
//! `/ready` (`app`), sessions — refresh, logout, listing (`sessions`) — changes to one's
//! account (`account`), password reset (`recovery`) and email verification (`verification`),
//! the admin API under `/auth/admin/` (`admin`), second factors (`mfa`) and
//! passkeys (`passkeys`),
//! their answers and errors (`api`), request bodies in FastAPI's shapes (`forms`, `pyjson`),
//! the seed's CORS (`cors`), and the API's documentation (`docs`: `/openapi.json`, Swagger UI
//! at `/docs`).

pub mod account;
pub mod admin;
pub mod api;
pub mod app;
pub mod cors;
pub mod docs;
pub mod endpoints;
pub mod forms;
pub mod mfa;
pub mod passkeys;
pub mod pyjson;
pub mod recovery;
pub mod sessions;
pub mod verification;
