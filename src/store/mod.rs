//! PostgreSQL: pools, migrations and start-up checks (`db`), the `users` table (`users`),
//! the hashes of reset and verification tokens (`account_tokens`),
//! sessions and their refresh generations (`sessions`), TLS to the database (`pg_tls`) and the in-memory user state kept fresh by LISTEN/NOTIFY
//! (`user_cache`).

pub mod account_tokens;
pub mod db;
pub mod pg_tls;
pub mod sessions;
pub mod signing_keys;
pub mod user_cache;
pub mod users;
