//! The state of users seen on proxied requests, kept in memory so that a proxied request costs
//! no database query, and dropped the moment PostgreSQL says the user changed: a trigger
//! (`V3__user_change_notify.sql`) sends `NOTIFY sentinel_user_changed, '<id>'` on every update
//! or delete, and [`UserChangeListener`] evicts that id on every running instance.
//!
//! The TTL is the safety net. While the listener is disconnected (it may have missed
//! notifications) entries are re-read from the database, and used stale only if that fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deadpool_postgres::Pool;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio_postgres::AsyncMessage;

use crate::api::ApiError;
use crate::config::DatabaseConfig;
use crate::upgraded::Upgraded;
use crate::users;

pub const CHANNEL: &str = "sentinel_user_changed";

/// How long a proxied request waits for PostgreSQL when a stale entry could answer instead.
const STALE_REFRESH_WAIT: Duration = Duration::from_millis(250);

/// What a proxied request needs to know about its user. More than one flag on purpose: this is
/// where a per-user "tokens valid after" time for logout and password change will live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserState {
    pub id: String,
    pub email: String,
    pub active: bool,
    /// `id` and `email` as header values, made once per cache fill rather than per request.
    pub id_header: http::HeaderValue,
    pub email_header: http::HeaderValue,
}

impl UserState {
    /// `None` for values that cannot be header values (control characters): such a user
    /// cannot be forwarded with its identity, so it is treated as unknown.
    pub fn new(id: String, email: String, active: bool) -> Option<UserState> {
        Some(UserState {
            id_header: http::HeaderValue::from_str(&id).ok()?,
            email_header: http::HeaderValue::from_str(&email).ok()?,
            id,
            email,
            active,
        })
    }
}

/// The gateway's in-memory caches (verified tokens, user states): bounded to `capacity`
/// entries (the least useful go first), keyed by text, hashed with a per-process seed.
pub type BoundedCache<K, V> =
    quick_cache::sync::Cache<K, V, quick_cache::UnitWeighter, foldhash::fast::RandomState>;

pub fn bounded_cache<K: Eq + std::hash::Hash + Clone, V: Clone>(
    capacity: usize,
) -> BoundedCache<K, V> {
    quick_cache::sync::Cache::with(
        capacity,
        capacity as u64,
        quick_cache::UnitWeighter,
        foldhash::fast::RandomState::default(),
        Default::default(),
    )
}

pub struct UserCache {
    entries: BoundedCache<String, Entry>,
    ttl: Duration,
    listening: AtomicBool,
}

#[derive(Clone)]
struct Entry {
    /// `None` caches "no such user", so a deleted user's tokens do not reach the database.
    state: Option<Arc<UserState>>,
    /// Wall-clock time, so that a request reads the clock once for its token's expiry and
    /// this; a clock that went back makes the entry stale rather than longer-lived.
    fetched: SystemTime,
}

impl Entry {
    fn is_fresh(&self, now: SystemTime, ttl: Duration) -> bool {
        now.duration_since(self.fetched).is_ok_and(|age| age < ttl)
    }
}

impl UserCache {
    pub fn new(ttl: Duration, capacity: usize) -> UserCache {
        UserCache {
            entries: bounded_cache(capacity),
            ttl,
            listening: AtomicBool::new(false),
        }
    }

    pub fn invalidate(&self, id: &str) {
        self.entries.remove(id);
    }

    pub fn invalidate_all(&self) {
        self.entries.clear();
    }

    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// The user's state if memory can answer for it: a fresh entry while change notifications
    /// flow. `None`: ask [`UserCache::get`].
    pub fn cached(&self, id: &str, now: SystemTime) -> Option<Option<Arc<UserState>>> {
        if !self.is_listening() {
            return None;
        }
        self.fresh(id, now)
    }

    /// The entry for `id`, if it is younger than the TTL.
    fn fresh(&self, id: &str, now: SystemTime) -> Option<Option<Arc<UserState>>> {
        self.entries
            .get(id)
            .filter(|e| e.is_fresh(now, self.ttl))
            .map(|e| e.state)
    }

    /// The user's state: from memory while change notifications flow, else from PostgreSQL
    /// (falling back to what memory has if PostgreSQL cannot answer). `now` is the request's
    /// reading of the clock.
    pub async fn get(
        &self,
        pool: &Pool,
        id: &str,
        now: SystemTime,
    ) -> Result<Option<Arc<UserState>>, ApiError> {
        let cached = self.fresh(id, now);
        if let Some(hit) = &cached {
            if self.is_listening() {
                return Ok(hit.clone());
            }
        }
        let fresh = async {
            let db = users::client(pool).await?;
            users::find_by_id(&db, id).await
        };
        // With a stale entry at hand, a database that does not answer quickly is not waited
        // for: users already verified keep working through an outage.
        let fresh = match &cached {
            Some(_) => tokio::time::timeout(STALE_REFRESH_WAIT, fresh)
                .await
                .unwrap_or_else(|_| Err(ApiError::Unavailable("user refresh timed out".into()))),
            None => fresh.await,
        };
        match fresh {
            Ok(user) => {
                let state = user
                    .and_then(|u| UserState::new(u.id, u.email, u.is_active))
                    .map(Arc::new);
                let entry = Entry {
                    state: state.clone(),
                    fetched: SystemTime::now(),
                };
                self.entries.insert(id.to_string(), entry);
                Ok(state)
            }
            Err(e) => match cached {
                Some(stale) => Ok(stale),
                None => Err(e),
            },
        }
    }
}

/// The listener's reconnection back-off: from the first wait, doubling up to the last, and
/// back to the first after a session that stayed up this long.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const LAST_RETRY: Duration = Duration::from_secs(5);
const HEALTHY_SESSION: Duration = Duration::from_secs(3);

/// Keeps one connection LISTENing and evicts changed users; reconnects with back-off. Users
/// with upgraded connections open are read again on every change of theirs, on every
/// reconnection and once per cache TTL (a notification may have been lost), and lose those
/// connections if they are shut out.
pub struct UserChangeListener {
    pub cache: Arc<UserCache>,
    pub upgraded: Arc<Upgraded>,
    pub database: DatabaseConfig,
}

impl UserChangeListener {
    /// Runs one LISTEN session until the connection ends.
    async fn listen_once(&self) -> Result<(), String> {
        let pg = self.database.pg_config()?;
        let (client, mut connection) = pg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| crate::db::describe(&e))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_string()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        let listen = client.batch_execute(&format!("LISTEN {CHANNEL}")).await;
        if let Err(e) = listen {
            driver.abort();
            return Err(crate::db::describe(&e));
        }
        // Anything may have changed while nobody listened.
        self.cache.invalidate_all();
        self.cache.listening.store(true, Ordering::Release);
        self.upgraded.recheck_all();
        tracing::info!("listening for user changes");
        let mut sweep = tokio::time::interval(self.cache.ttl.max(Duration::from_secs(1)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.tick().await;
        loop {
            tokio::select! {
                id = rx.recv() => {
                    let Some(id) = id else { break };
                    self.cache.invalidate(&id);
                    self.upgraded.recheck(&id);
                }
                _ = sweep.tick() => self.upgraded.recheck_all(),
            }
        }
        self.cache.listening.store(false, Ordering::Release);
        drop(client);
        Err("notification connection closed".into())
    }
}

#[async_trait]
impl BackgroundService for UserChangeListener {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut backoff = FIRST_RETRY;
        loop {
            let began = std::time::Instant::now();
            tokio::select! {
                result = self.listen_once() => {
                    self.cache.listening.store(false, Ordering::Release);
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "user change listener down; retrying");
                    }
                }
                _ = shutdown.changed() => return,
            }
            // A session that lasted proves the database takes connections again: the next
            // loss starts the back-off afresh (while requests query PostgreSQL meanwhile).
            if began.elapsed() >= HEALTHY_SESSION {
                backoff = FIRST_RETRY;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(LAST_RETRY);
        }
    }
}
