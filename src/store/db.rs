//! PostgreSQL: the connection pool, and the embedded migrations that create a fresh schema or
//! adopt the seed backend's existing `users` table in place.

use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use crate::config::DatabaseConfig;
use crate::store::pg_tls::PgTls;

mod embedded {
    refinery::embed_migrations!("migrations");
}

const MIGRATION_TABLE: &str = "sentinel_schema_history";
/// Serialises migrations of instances that start together against one database.
const MIGRATION_LOCK_KEY: i64 = 0x5e47_1e1a_0000_0001;

#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// PostgreSQL cannot be reached (yet): no answer, refused, starting up, full.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(String),
    /// PostgreSQL answered and will not take the connection as configured (authentication,
    /// a missing database, a certificate that does not verify): waiting will not help.
    #[error("cannot connect to PostgreSQL: {0}")]
    Refused(String),
    #[error("cannot adopt the existing database: {0}; nothing was changed")]
    NotAdoptable(String),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("database error: {0}")]
    Query(String),
}

impl DbError {
    /// Whether the configuration is at fault (`database.url`: a password, a database or a
    /// certificate that PostgreSQL or the gateway refuses), not the database's state.
    pub fn is_configuration(&self) -> bool {
        matches!(self, DbError::Refused(_))
    }
}

/// How long the proxy path waits for a connection of its own pool before it answers 503: a
/// proxied request should not queue behind the database for longer.
pub const PROXY_POOL_WAIT: Duration = Duration::from_millis(50);

/// The pool the gateway's own endpoints use (`database.pool_size`). Creating it opens no
/// connection: connections are made on the runtime that first needs them (pingora's), so none
/// outlives a start-up runtime.
pub fn pool(config: &DatabaseConfig) -> Result<Pool, DbError> {
    build_pool(
        config,
        config.pool_size,
        Duration::from_millis(config.acquire_timeout_ms),
    )
}

/// The proxy path's own pool (`database.proxy_pool_size`): the user-state reads of proxied
/// requests and the re-checks of open WebSockets. The own endpoints cannot take these
/// connections, so a login flood that keeps theirs busy does not stall proxied traffic.
pub fn proxy_pool(config: &DatabaseConfig) -> Result<Pool, DbError> {
    build_pool(config, config.proxy_pool_size, PROXY_POOL_WAIT)
}

fn build_pool(config: &DatabaseConfig, size: usize, wait: Duration) -> Result<Pool, DbError> {
    let pg = config.pg_config().map_err(DbError::Refused)?;
    let manager = Manager::from_config(
        pg,
        config.connector().map_err(DbError::Refused)?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let statement_timeout = config.statement_timeout_ms;
    Pool::builder(manager)
        .post_create(Hook::async_fn(move |client, _| {
            Box::pin(async move {
                if statement_timeout > 0 {
                    client
                        .batch_execute(&format!("SET statement_timeout = {statement_timeout}"))
                        .await
                        .map_err(HookError::Backend)?;
                }
                Ok(())
            })
        }))
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
        .recycle_timeout(Some(Duration::from_millis(config.acquire_timeout_ms)))
        .build()
        .map_err(|e| DbError::Connect(e.to_string()))
}

/// A single connection of its own, for migrations and start-up checks.
pub async fn connect(config: &DatabaseConfig) -> Result<tokio_postgres::Client, DbError> {
    let pg = config.pg_config().map_err(DbError::Refused)?;
    let target = target(&pg);
    let timeout = Duration::from_millis(config.connect_timeout_ms.max(1000));
    let tls = config.connector().map_err(DbError::Refused)?;
    let (client, connection) = tokio::time::timeout(timeout, pg.connect(tls))
        .await
        .map_err(|_| {
            DbError::Connect(format!(
                "at {target}: no answer within {} ms",
                timeout.as_millis()
            ))
        })?
        .map_err(|e| {
            let message = format!("at {target}: {}", describe(&e));
            if is_transient(&e) {
                DbError::Connect(message)
            } else {
                DbError::Refused(message)
            }
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "migration connection closed");
        }
    });
    Ok(client)
}

/// [`connect`], trying again with back-off (0.2 s, doubling up to 5 s) for up to `bound` while
/// PostgreSQL cannot be reached, as when an orchestrator starts the gateway and the database
/// together. Logs which server it is waiting for (every 10 s at most).
pub async fn connect_waiting(
    config: &DatabaseConfig,
    bound: Duration,
) -> Result<tokio_postgres::Client, DbError> {
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(200);
    let mut logged: Option<std::time::Instant> = None;
    loop {
        let error = match connect(config).await {
            Ok(client) => {
                if logged.is_some() {
                    tracing::info!(
                        waited_ms = started.elapsed().as_millis() as u64,
                        "PostgreSQL answers"
                    );
                }
                return Ok(client);
            }
            Err(DbError::Connect(cause)) => cause,
            // Refused, or a URL that cannot be read: waiting will not help.
            Err(e) => return Err(e),
        };
        if started.elapsed() + backoff > bound {
            return Err(DbError::Connect(format!(
                "{error} (gave up after {:.1} s; database.startup_wait_seconds)",
                started.elapsed().as_secs_f64()
            )));
        }
        if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!(error = %error, "waiting for PostgreSQL");
            logged = Some(std::time::Instant::now());
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Whether a failed connection may succeed later: no answer (refused, timed out, a name that
/// does not resolve yet), or PostgreSQL starting up (57P03), full (53300) or in a connection
/// exception (08). Authentication, a missing database and TLS failures are not.
fn is_transient(e: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        return code.starts_with("08") || matches!(code, "57P03" | "53300");
    }
    let mut source = e.source();
    while let Some(cause) = source {
        // A certificate that does not verify (rustls says so, often inside an `io::Error`,
        // whose `source()` skips the error it wraps).
        let wrapped = cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        if cause.is::<rustls::Error>() || wrapped.is_some_and(|inner| inner.is::<rustls::Error>()) {
            return false;
        }
        source = cause.source();
    }
    true
}

/// Where a configuration connects: `host:port` (or the socket directory), for messages.
pub fn target(pg: &tokio_postgres::Config) -> String {
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) if host.contains(':') => {
            format!("[{host}]:{port}")
        }
        Some(tokio_postgres::config::Host::Tcp(host)) => format!("{host}:{port}"),
        Some(tokio_postgres::config::Host::Unix(dir)) => {
            format!("{}/.s.PGSQL.{port}", dir.display())
        }
        None => format!("localhost:{port}"),
    }
}

/// A readable one-line description of a tokio-postgres error, including its cause.
pub fn describe(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    match (e.as_db_error(), e.source()) {
        (Some(db), _) => format!("{} ({})", db.message(), db.code().code()),
        (None, Some(source)) => format!("{e}: {source}"),
        (None, None) => e.to_string(),
    }
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<String>,
    pub adopted_existing_table: bool,
}

/// Applies the embedded migrations, holding an advisory lock so that concurrent instances take
/// turns. On a database created by the seed backend it first checks that adoption is safe and
/// stops, changing nothing, when it is not.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<MigrationReport, DbError> {
    let q = |e: tokio_postgres::Error| DbError::Query(describe(&e));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(q)?;
    let result = migrate_locked(client).await;
    // The lock also ends with the session; unlocking keeps a reused connection clean.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    result
}

async fn migrate_locked(client: &mut tokio_postgres::Client) -> Result<MigrationReport, DbError> {
    let q = |e: tokio_postgres::Error| DbError::Query(describe(&e));
    let history_exists: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("public.{MIGRATION_TABLE}")],
        )
        .await
        .map_err(q)?
        .get(0);
    let users_exists: bool = client
        .query_one("SELECT to_regclass('public.users') IS NOT NULL", &[])
        .await
        .map_err(q)?
        .get(0);
    let adopting = users_exists && !history_exists;
    if users_exists {
        check_adoptable(client).await?;
    }
    let mut runner = embedded::migrations::runner().set_abort_divergent(true);
    runner.set_migration_table_name(MIGRATION_TABLE);
    let report = runner
        .run_async(client)
        .await
        .map_err(|e| DbError::Migration(e.to_string().replace('\n', " ")))?;
    Ok(MigrationReport {
        applied: report
            .applied_migrations()
            .iter()
            .map(|m| m.to_string())
            .collect(),
        adopted_existing_table: adopting,
    })
}

/// Refuses a `users` table that the migrations would fail on or silently misread.
async fn check_adoptable(client: &tokio_postgres::Client) -> Result<(), DbError> {
    let q = |e: tokio_postgres::Error| DbError::Query(describe(&e));
    let rows = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = 'users'",
            &[],
        )
        .await
        .map_err(q)?;
    let columns: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expected: &[(&str, &[&str])] = &[
        ("id", &["character varying", "text"]),
        ("email", &["character varying", "text"]),
        ("full_name", &["character varying", "text"]),
        ("hashed_password", &["character varying", "text"]),
        ("is_active", &["boolean"]),
        ("created_at", &["timestamp without time zone"]),
        ("updated_at", &["timestamp without time zone"]),
    ];
    for (name, types) in expected {
        match columns.iter().find(|(c, _)| c == name) {
            None => {
                return Err(DbError::NotAdoptable(format!(
                    "table users has no column {name}"
                )))
            }
            Some((_, t)) if !types.contains(&t.as_str()) => {
                return Err(DbError::NotAdoptable(format!(
                    "column users.{name} is {t}, expected {}",
                    types.join(" or ")
                )))
            }
            Some(_) => {}
        }
    }
    let duplicates = client
        .query(
            "SELECT count(*) OVER (), lower(email) FROM users GROUP BY lower(email) \
             HAVING count(*) > 1 ORDER BY 2 LIMIT 1",
            &[],
        )
        .await
        .map_err(q)?;
    if let Some(row) = duplicates.first() {
        let groups: i64 = row.get(0);
        let example: String = row.get(1);
        return Err(DbError::NotAdoptable(format!(
            "{groups} email address(es) appear more than once when letter case is ignored \
             (e.g. {example:?}); emails must be unique regardless of case, so merge or rename \
             those accounts, then start again"
        )));
    }
    Ok(())
}

/// Whether PostgreSQL was reached and migrated since start-up: until then everything that
/// needs the database answers 503 (the schema may not be there yet). Shared by the wings.
#[derive(Debug, Default)]
pub struct Readiness(std::sync::atomic::AtomicBool);

impl Readiness {
    /// The database was reached and migrated: what needs it may use it.
    pub fn set_ready(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// `Err(Unavailable)` until [`Readiness::set_ready`].
    pub fn check(&self) -> Result<(), crate::store::StoreError> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(crate::store::StoreError::Unavailable(
                "waiting for the database at start-up".into(),
            ))
        }
    }
}

/// The store's check of `[database]`: a URL tokio-postgres reads, and the TLS it asks for
/// (its root certificates readable).
pub fn check(config: &DatabaseConfig) -> Result<(), crate::config::ConfigError> {
    let invalid = crate::config::ConfigError::Invalid;
    config
        .pg_config()
        .map_err(|e| invalid(format!("database.url is not a PostgreSQL URL: {e}")))?;
    config
        .connector()
        .map_err(|e| invalid(format!("database.url: {e}")))?;
    Ok(())
}

// The database section of the configuration, as the store reads it.
impl DatabaseConfig {
    /// The URL as tokio-postgres understands it: SQLAlchemy's `postgresql+driver://` prefix is
    /// accepted and dropped.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, String> {
        let url = crate::config::normalize_database_url(self.url.expose());
        let (url, tls) = PgTls::split(&url)?;
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            // tokio-postgres errors do not echo the URL, so they are safe to show.
            format!("{e}")
        })?;
        config.ssl_mode(tls.wire_mode());
        if config.get_application_name().is_none() {
            config.application_name("sentinel-gateway");
        }
        config.connect_timeout(std::time::Duration::from_millis(self.connect_timeout_ms));
        Ok(config)
    }
}

impl DatabaseConfig {
    /// The TLS the URL asks for (`sslmode`, `sslrootcert`; see [`crate::store::pg_tls`]).
    pub fn tls(&self) -> Result<PgTls, String> {
        PgTls::split(&crate::config::normalize_database_url(self.url.expose())).map(|(_, tls)| tls)
    }

    /// The TLS connector every connection to PostgreSQL is made with.
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
        self.tls()?.connector()
    }
}
