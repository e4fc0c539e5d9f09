//! The gateway's own API: the seed's endpoints and `/health`, `/ready` (`app`), sessions —
//! refresh, logout, listing (`sessions`) — changes to one's account (`account`), password
//! reset (`recovery`) and email verification (`verification`), their
//! answers and errors (`api`), request bodies in FastAPI's shapes (`forms`, `pyjson`) email
//! addresses as pydantic checks them (`email`), and the API's documentation (`docs`:
//! `/openapi.json`, Swagger UI at `/docs`).

pub mod account;
pub mod api;
pub mod app;
pub mod docs;
pub mod email;
pub mod forms;
pub mod pyjson;
pub mod recovery;
pub mod sessions;
pub mod verification;
