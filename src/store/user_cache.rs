//! The state of users seen on proxied requests, kept in memory so that a proxied request costs
//! no database query, and dropped the moment PostgreSQL says the user changed: a trigger
//! (`V3__user_change_notify.sql`) sends `NOTIFY sentinel_user_changed, '<id>'` on every update
//! or delete, and [`UserChangeListener`] evicts that id on every running instance.
//!
//! The TTL is the safety net against a lost notification. While the listener is connected, an
//! entry past its TTL keeps answering while one background read refreshes it, so a proxied
//! request never waits for PostgreSQL on a user it knows; reads go through a small pool of the
//! cache's own (`database.proxy_pool_size`) that the own endpoints cannot take. While the
//! listener is disconnected (it may have missed notifications) entries are re-read on every
//! request, and used stale only if that fails.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use deadpool_postgres::Pool;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio_postgres::AsyncMessage;

use crate::config::DatabaseConfig;
use crate::store::users;
use crate::store::StoreError;

pub const CHANNEL: &str = "sentinel_user_changed";

/// How long a proxied request waits for PostgreSQL when a stale entry could answer instead
/// (while the listener is down).
const STALE_REFRESH_WAIT: Duration = Duration::from_millis(250);

/// After a background refresh fails, the next one starts no sooner than this.
const REFRESH_RETRY: Duration = Duration::from_secs(1);

/// What the store needs to know of a verified access token to tell whether it still counts.
/// (The token's verification is the credentials' business; they implement this.)
pub trait TokenClaims {
    /// The token's session (`sid`), if it has one.
    fn session_id(&self) -> Option<uuid::Uuid>;
    /// When it was issued (`iat`, unix seconds), if it says.
    fn issued_at(&self) -> Option<i64>;
}

impl<T: TokenClaims> TokenClaims for Arc<T> {
    fn session_id(&self) -> Option<uuid::Uuid> {
        (**self).session_id()
    }

    fn issued_at(&self) -> Option<i64> {
        (**self).issued_at()
    }
}

/// A change of users' state, announced to whoever follows them ([`UserCache::subscribe`]):
/// the edge closes the upgraded connections of users who are shut out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserChange {
    /// This user changed.
    User(String),
    /// Anyone may have changed (notifications may have been lost, or it is time to look).
    Everyone,
}

/// What a request needs to know about its user: whether they are active, and which of their
/// tokens still count (the live sessions, and the time before which tokens without a session
/// are refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserState {
    pub id: String,
    pub email: String,
    pub active: bool,
    /// Whether the address is verified (`X-User-Email-Verified`, `auth.require_verified_email`).
    pub email_verified: bool,
    /// Tokens without a session issued before this (unix seconds) are refused.
    pub tokens_valid_after: Option<i64>,
    /// Live sessions, with when each ends (unix seconds).
    pub sessions: Box<[(uuid::Uuid, i64)]>,
    /// When this was read from PostgreSQL (unix seconds, rounded down).
    pub read_at: i64,
    /// `id` and `email` as header values, made once per cache fill rather than per request.
    pub id_header: http::HeaderValue,
    pub email_header: http::HeaderValue,
    /// The rest of `UserResponse` (`GET /auth/users/me` answers from here).
    pub full_name: Option<String>,
    pub created_at: chrono::NaiveDateTime,
    /// The roles the user holds, sorted, and as `X-User-Roles` sends them (comma-separated,
    /// empty when none).
    pub roles: Box<[String]>,
    pub roles_header: http::HeaderValue,
    /// The sessions that passed a second factor (`aal2`), sorted by id, with the methods
    /// each used (the identity assertion's `amr`).
    pub aal2_sessions: Box<[(uuid::Uuid, Box<[String]>)]>,
    /// Whether the user has an activated second factor (then an `aal1` session may do little).
    pub has_factor: bool,
}

impl UserState {
    /// `None` for values that cannot be header values (control characters): such a user
    /// cannot be forwarded with its identity, so it is treated as unknown.
    pub fn of(account: &users::Account, read_at: i64) -> Option<UserState> {
        let user = &account.user;
        // Sorted by id: a request finds its session by binary search, however many there are.
        let mut sessions = account.sessions.clone();
        sessions.sort_unstable_by_key(|(id, _)| *id);
        Some(UserState {
            id_header: http::HeaderValue::from_str(&user.id).ok()?,
            email_header: http::HeaderValue::from_str(&user.email).ok()?,
            id: user.id.clone(),
            email: user.email.clone(),
            active: user.is_active,
            email_verified: user.email_verified,
            tokens_valid_after: account.tokens_valid_after,
            sessions: sessions.into_boxed_slice(),
            read_at,
            full_name: user.full_name.clone(),
            created_at: user.created_at,
            roles_header: http::HeaderValue::from_str(&user.roles.join(",")).ok()?,
            roles: user.roles.clone().into_boxed_slice(),
            aal2_sessions: {
                let mut aal2: Vec<(uuid::Uuid, Box<[String]>)> = account
                    .aal2_sessions
                    .iter()
                    .map(|(id, methods)| (*id, methods.clone().into_boxed_slice()))
                    .collect();
                aal2.sort_unstable_by_key(|(id, _)| *id);
                aal2.into_boxed_slice()
            },
            has_factor: account.has_factor,
        })
    }

    /// Whether `token`'s session passed a second factor (`aal2`). Tokens without a session
    /// (the seed's) are `aal1`.
    pub fn aal2(&self, token: &impl TokenClaims) -> bool {
        self.session_aal2(token.session_id().as_ref())
    }

    /// Whether session `sid` passed a second factor (`None`, no session: `aal1`).
    pub fn session_aal2(&self, sid: Option<&uuid::Uuid>) -> bool {
        self.session_methods(sid).is_some()
    }

    /// The methods an `aal2` session used (RFC 8176 names, sorted); `None` for `aal1`.
    pub fn session_methods(&self, sid: Option<&uuid::Uuid>) -> Option<&[String]> {
        let sid = sid?;
        let i = self
            .aal2_sessions
            .binary_search_by_key(sid, |(id, _)| *id)
            .ok()?;
        self.aal2_sessions.get(i).map(|(_, methods)| &methods[..])
    }

    /// Whether the user holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles
            .binary_search_by(|r| r.as_str().cmp(role))
            .is_ok()
    }

    /// The user as `UserResponse` shows them.
    pub fn response(&self) -> users::UserResponse<'_> {
        users::UserResponse {
            email: &self.email,
            full_name: self.full_name.as_deref(),
            id: &self.id,
            is_active: self.active,
            created_at: users::timestamp(&self.created_at),
            email_verified: self.email_verified,
            roles: &self.roles,
        }
    }

    /// Whether `token` may belong to a session started after this state was read: its session
    /// is not among those known here, and it was issued no earlier than the read. Such a state
    /// cannot refuse the token; it is read again instead (another instance's login is
    /// announced a moment after its answer has gone out).
    pub fn may_predate(&self, token: &impl TokenClaims) -> bool {
        token.issued_at().is_some_and(|iat| iat >= self.read_at)
            && token
                .session_id()
                .is_some_and(|sid| self.session_end(&sid).is_none())
    }

    /// When the live session `sid` ends (unix seconds), if it is one of this user's.
    fn session_end(&self, sid: &uuid::Uuid) -> Option<i64> {
        self.sessions
            .binary_search_by(|(id, _)| id.cmp(sid))
            .ok()
            .and_then(|i| self.sessions.get(i))
            .map(|(_, ends)| *ends)
    }

    /// Whether `token` (verified, of this user) still counts at `now` (unix seconds): its
    /// session is live, or — for a token without one — it was issued after the last global
    /// logout, password change or reset. (Whether the user is active is asked separately.)
    pub fn accepts(&self, token: &impl TokenClaims, now: i64) -> bool {
        match token.session_id() {
            Some(sid) => self.session_end(&sid).is_some_and(|ends| ends > now),
            None => match self.tokens_valid_after {
                None => true,
                Some(after) => token.issued_at().is_some_and(|iat| iat >= after),
            },
        }
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

/// What memory says about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// The user's state (`None`: there is no such user), to be used as it is.
    Known(Option<Arc<UserState>>),
    /// Memory cannot answer: ask [`UserCache::get`].
    Unknown,
}

/// How many invalidation counters ids are spread over (see [`UserCache::epochs`]).
const EPOCH_STRIPES: usize = 64;

pub struct UserCache {
    entries: BoundedCache<String, Entry>,
    ttl: Duration,
    listening: AtomicBool,
    /// The cache's own connections (`database.proxy_pool_size`).
    pool: Pool,
    /// How long a background refresh may wait for one of them.
    refresh_wait: Duration,
    /// Invalidations so far, by stripe of ids: a read that began before an invalidation of its
    /// stripe is not stored (it may hold the state from before the change).
    epochs: [AtomicU64; EPOCH_STRIPES],
    /// The clock of `Entry::next_refresh_ms`.
    started: Instant,
    hasher: foldhash::fast::RandomState,
    /// Reads in flight, by user: the requests of one user whom memory does not hold (a cold
    /// start, or just after a change of theirs) share one read instead of each taking a
    /// connection of the small pool, which a burst would exhaust.
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    /// `auth.max_sessions_per_user`: how many of a user's sessions are read (and count).
    max_sessions: u32,
    /// Announces changes to followers (see [`UserChange`]).
    changes: tokio::sync::broadcast::Sender<UserChange>,
}

/// One read of a user, shared by every request that wants it while it runs: its outcome.
type Flight = tokio::sync::OnceCell<Result<Option<Arc<UserState>>, StoreError>>;

#[derive(Clone)]
struct Entry {
    /// `None` caches "no such user", so a deleted user's tokens do not reach the database.
    state: Option<Arc<UserState>>,
    /// Wall-clock time, so that a request reads the clock once for its token's expiry and
    /// this; a clock that went back makes the entry stale rather than longer-lived.
    fetched: SystemTime,
    /// When (ms on [`UserCache::started`]'s clock) a stale entry may start its next background
    /// refresh: set ahead when one starts, so that one runs at a time.
    next_refresh_ms: Arc<AtomicU64>,
}

impl Entry {
    fn is_fresh(&self, now: SystemTime, ttl: Duration) -> bool {
        now.duration_since(self.fetched).is_ok_and(|age| age < ttl)
    }
}

impl UserCache {
    pub fn new(
        ttl: Duration,
        capacity: usize,
        pool: Pool,
        refresh_wait: Duration,
        max_sessions: u32,
    ) -> UserCache {
        UserCache {
            max_sessions,
            changes: tokio::sync::broadcast::channel(1024).0,
            entries: bounded_cache(capacity),
            ttl,
            listening: AtomicBool::new(false),
            pool,
            refresh_wait,
            epochs: std::array::from_fn(|_| AtomicU64::new(0)),
            started: Instant::now(),
            hasher: foldhash::fast::RandomState::default(),
            flights: Mutex::new(HashMap::new()),
        }
    }

    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Flight>>> {
        self.flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`UserCache::fetch`] for a request, joining the read of `id` in flight if there is one.
    /// A read that an invalidation overtakes is left to those already waiting for it: requests
    /// that come after the invalidation start a read of their own.
    async fn fetch_shared(
        &self,
        id: &str,
        wait: Duration,
    ) -> Result<Option<Arc<UserState>>, StoreError> {
        let flight = Arc::clone(self.flights().entry(id.to_string()).or_default());
        let outcome = flight.get_or_init(|| self.fetch(id, wait)).await.clone();
        {
            let mut flights = self.flights();
            if flights.get(id).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                flights.remove(id);
            }
        }
        outcome
    }

    /// Follows the changes of users' state as this instance learns them.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<UserChange> {
        self.changes.subscribe()
    }

    fn announce(&self, change: UserChange) {
        // Nobody following is fine.
        let _ = self.changes.send(change);
    }

    /// How many of a user's sessions count (`auth.max_sessions_per_user`).
    pub fn max_sessions(&self) -> u32 {
        self.max_sessions
    }

    /// The pool the cache reads users through (also for re-checks of open WebSockets).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    fn epoch(&self, id: &str) -> &AtomicU64 {
        let stripe = std::hash::BuildHasher::hash_one(&self.hasher, id) as usize % EPOCH_STRIPES;
        &self.epochs[stripe]
    }

    pub fn invalidate(&self, id: &str) {
        self.epoch(id).fetch_add(1, Ordering::AcqRel);
        self.entries.remove(id);
        self.flights().remove(id);
    }

    pub fn invalidate_all(&self) {
        for epoch in &self.epochs {
            epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.entries.clear();
        self.flights().clear();
    }

    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The user's state if memory can answer for it, without waiting: while change
    /// notifications flow, any entry; one past its TTL also starts a background refresh (one at
    /// a time per user). `now` is the request's reading of the clock.
    pub fn cached(self: &Arc<Self>, id: &str, now: SystemTime) -> Cached {
        if !self.is_listening() {
            return Cached::Unknown;
        }
        let Some(entry) = self.entries.get(id) else {
            return Cached::Unknown;
        };
        if !entry.is_fresh(now, self.ttl) {
            self.refresh_in_background(id, &entry);
        }
        crate::metrics::metrics().user_cache_hit.inc();
        Cached::Known(entry.state)
    }

    /// Starts a background read of `id` unless one is running (or failed within
    /// [`REFRESH_RETRY`]).
    fn refresh_in_background(self: &Arc<Self>, id: &str, entry: &Entry) {
        let now_ms = self.now_ms();
        let next = entry.next_refresh_ms.load(Ordering::Relaxed);
        // Until the refresh stores a new entry (or gives up for a while), no other starts.
        let hold = u64::try_from((self.refresh_wait + REFRESH_RETRY).as_millis()).unwrap_or(0);
        if now_ms < next
            || entry
                .next_refresh_ms
                .compare_exchange(next, now_ms + hold, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let cache = Arc::clone(self);
        let id = id.to_string();
        tokio::spawn(async move {
            if let Err(e) = cache.fetch(&id, cache.refresh_wait).await {
                tracing::debug!(user_id = %id, error = %e, "background user refresh failed");
            }
        });
    }

    /// Reads the user from PostgreSQL (waiting up to `wait` for a connection) and remembers
    /// the answer, unless the user was invalidated meanwhile.
    async fn fetch(&self, id: &str, wait: Duration) -> Result<Option<Arc<UserState>>, StoreError> {
        let epoch = self.epoch(id).load(Ordering::Acquire);
        let db = users::client_waiting(&self.pool, wait).await?;
        let read_at = crate::store::unix_seconds(SystemTime::now());
        let account = users::find_account(&db, id, self.max_sessions).await?;
        drop(db);
        let state = account
            .as_ref()
            .and_then(|a| UserState::of(a, read_at))
            .map(Arc::new);
        self.store(id, state.clone(), epoch);
        Ok(state)
    }

    /// Remembers `state` for `id` as read when the stripe's epoch was `epoch`; a read that an
    /// invalidation overtook is not kept (the next request reads again).
    fn store(&self, id: &str, state: Option<Arc<UserState>>, epoch: u64) {
        if self.epoch(id).load(Ordering::Acquire) != epoch {
            return;
        }
        let entry = Entry {
            state,
            fetched: SystemTime::now(),
            next_refresh_ms: Arc::new(AtomicU64::new(0)),
        };
        self.entries.insert(id.to_string(), entry);
    }

    /// The user's state when [`UserCache::cached`] could not answer: read from PostgreSQL,
    /// waiting for the cache's own connections no longer than [`crate::store::db::PROXY_POOL_WAIT`].
    /// While the listener is down, an entry at hand answers if PostgreSQL does not within
    /// [`STALE_REFRESH_WAIT`]. `now` is the request's reading of the clock.
    /// With `reread`, PostgreSQL is asked even when memory has a fresh entry (see
    /// [`UserState::may_predate`]).
    pub async fn get(
        &self,
        id: &str,
        now: SystemTime,
        reread: bool,
    ) -> Result<Option<Arc<UserState>>, StoreError> {
        self.get_within(id, now, reread, crate::store::db::PROXY_POOL_WAIT)
            .await
    }

    /// [`UserCache::get`] for the gateway's own endpoints, which may wait for a connection as
    /// long as a background refresh does (`database.acquire_timeout_ms`).
    pub async fn get_patiently(
        &self,
        id: &str,
        now: SystemTime,
        reread: bool,
    ) -> Result<Option<Arc<UserState>>, StoreError> {
        self.get_within(id, now, reread, self.refresh_wait).await
    }

    async fn get_within(
        &self,
        id: &str,
        now: SystemTime,
        reread: bool,
        wait: Duration,
    ) -> Result<Option<Arc<UserState>>, StoreError> {
        let at_hand = self
            .entries
            .get(id)
            .map(|e| (e.is_fresh(now, self.ttl), e.state));
        if let Some((true, state)) = &at_hand {
            if self.is_listening() && !reread {
                crate::metrics::metrics().user_cache_hit.inc();
                return Ok(state.clone());
            }
        }
        crate::metrics::metrics().user_cache_miss.inc();
        let read = self.fetch_shared(id, wait);
        match at_hand {
            Some((_, stale)) => match tokio::time::timeout(STALE_REFRESH_WAIT, read).await {
                Ok(Ok(state)) => Ok(state),
                Ok(Err(_)) | Err(_) => Ok(stale),
            },
            None => read.await,
        }
    }
}

/// The listener's reconnection back-off: from the first wait, doubling up to the last, and
/// back to the first after a session that stayed up this long.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const LAST_RETRY: Duration = Duration::from_secs(5);
const HEALTHY_SESSION: Duration = Duration::from_secs(3);

/// Keeps one connection LISTENing and evicts changed users; reconnects with back-off. Every
/// change is announced to the cache's followers, and so is "everyone" on every reconnection
/// and once per cache TTL (a notification may have been lost).
pub struct UserChangeListener {
    pub cache: Arc<UserCache>,
    pub database: DatabaseConfig,
    /// Woken when `sentinel_signing_keys` changes (with identity assertions on).
    pub keys_changed: Option<Arc<tokio::sync::Notify>>,
}

/// Where the signing keys' changes are notified (`migrations/V6__signing_keys.sql`).
const KEYS_CHANNEL: &str = "sentinel_signing_keys";

/// What a notification says changed.
enum Change {
    User(String),
    Keys,
}

impl UserChangeListener {
    fn keys_changed(&self) {
        if let Some(notify) = &self.keys_changed {
            notify.notify_one();
        }
    }

    /// Runs one LISTEN session until the connection ends.
    async fn listen_once(&self) -> Result<(), String> {
        let pg = self.database.pg_config()?;
        let (client, mut connection) = pg
            .connect(self.database.connector()?)
            .await
            .map_err(|e| crate::store::db::describe(&e))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        let change = if n.channel() == KEYS_CHANNEL {
                            Change::Keys
                        } else {
                            Change::User(n.payload().to_string())
                        };
                        if tx.send(change).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        let listen = match &self.keys_changed {
            Some(_) => format!("LISTEN {CHANNEL}; LISTEN {KEYS_CHANNEL}"),
            None => format!("LISTEN {CHANNEL}"),
        };
        let listen = client.batch_execute(&listen).await;
        if let Err(e) = listen {
            driver.abort();
            return Err(crate::store::db::describe(&e));
        }
        // Anything may have changed while nobody listened.
        self.cache.invalidate_all();
        self.cache.listening.store(true, Ordering::Release);
        self.cache.announce(UserChange::Everyone);
        self.keys_changed();
        tracing::info!("listening for user changes");
        let mut sweep = tokio::time::interval(self.cache.ttl.max(Duration::from_secs(1)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.tick().await;
        loop {
            tokio::select! {
                change = rx.recv() => match change {
                    Some(Change::User(id)) => {
                        self.cache.invalidate(&id);
                        self.cache.announce(UserChange::User(id));
                    }
                    Some(Change::Keys) => self.keys_changed(),
                    None => break,
                },
                _ = sweep.tick() => self.cache.announce(UserChange::Everyone),
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
                    crate::metrics::metrics().listen_reconnects.inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A verified token's claims, as the store sees them.
    struct Claims {
        issued_at: Option<i64>,
        session_id: Option<uuid::Uuid>,
    }

    impl TokenClaims for Claims {
        fn session_id(&self) -> Option<uuid::Uuid> {
            self.session_id
        }

        fn issued_at(&self) -> Option<i64> {
            self.issued_at
        }
    }
    use crate::config::{DatabaseConfig, Secret};

    /// A cache whose pool points nowhere (making it opens no connection; reads fail).
    fn cache(ttl: Duration) -> Arc<UserCache> {
        let config = DatabaseConfig {
            url: Secret::new("postgres://nobody@127.0.0.1:1/none"),
            ..DatabaseConfig::default()
        };
        let pool = crate::store::db::proxy_pool(&config).unwrap();
        Arc::new(UserCache::new(
            ttl,
            100,
            pool,
            Duration::from_millis(10),
            100,
        ))
    }

    fn account(id: &str, sessions: Vec<(uuid::Uuid, i64)>) -> users::Account {
        users::Account {
            user: users::User {
                id: id.into(),
                email: format!("{id}@example.com"),
                full_name: None,
                hashed_password: String::new(),
                is_active: true,
                created_at: chrono::NaiveDateTime::default(),
                email_verified: false,
                roles: Vec::new(),
            },
            tokens_valid_after: None,
            sessions,
            aal2_sessions: Vec::new(),
            has_factor: false,
        }
    }

    fn state(id: &str) -> Option<Arc<UserState>> {
        UserState::of(&account(id, Vec::new()), 0).map(Arc::new)
    }

    #[test]
    fn a_read_overtaken_by_an_invalidation_is_not_kept() {
        let cache = cache(Duration::from_secs(30));
        let epoch = cache.epoch("u1").load(Ordering::Acquire);
        cache.invalidate("u1");
        cache.store("u1", state("u1"), epoch);
        assert!(cache.entries.get("u1").is_none());
        let epoch = cache.epoch("u1").load(Ordering::Acquire);
        cache.store("u1", state("u1"), epoch);
        assert!(cache.entries.get("u1").is_some());
        // Everything read before a reconnection is overtaken too.
        let epoch = cache.epoch("u2").load(Ordering::Acquire);
        cache.invalidate_all();
        cache.store("u2", state("u2"), epoch);
        assert!(cache.entries.get("u2").is_none());
    }

    #[tokio::test]
    async fn a_stale_entry_answers_while_one_refresh_runs() {
        let cache = cache(Duration::from_secs(1));
        cache.listening.store(true, Ordering::Release);
        let epoch = cache.epoch("u1").load(Ordering::Acquire);
        cache.store("u1", state("u1"), epoch);
        let later = SystemTime::now() + Duration::from_secs(5);
        // Past the TTL: still the user, and one refresh is under way (the next may start only
        // after it, or after it failed and the retry time passed).
        assert_eq!(cache.cached("u1", later), Cached::Known(state("u1")));
        let next = cache
            .entries
            .get("u1")
            .unwrap()
            .next_refresh_ms
            .load(Ordering::Relaxed);
        assert!(next > cache.now_ms(), "no refresh under way");
        assert_eq!(cache.cached("u1", later), Cached::Known(state("u1")));
        assert_eq!(
            cache
                .entries
                .get("u1")
                .unwrap()
                .next_refresh_ms
                .load(Ordering::Relaxed),
            next
        );
        // An evicted user, or memory while notifications do not flow, answers nothing.
        cache.invalidate("u1");
        assert_eq!(cache.cached("u1", later), Cached::Unknown);
        cache.store("u1", state("u1"), cache.epoch("u1").load(Ordering::Acquire));
        cache.listening.store(false, Ordering::Release);
        assert_eq!(cache.cached("u1", SystemTime::now()), Cached::Unknown);
    }

    #[test]
    fn each_of_many_sessions_is_found_whatever_order_they_were_read_in() {
        let sessions: Vec<(uuid::Uuid, i64)> = (0..300)
            .map(|i| (uuid::Uuid::new_v4(), 2_000 + i))
            .collect();
        let mut account = account("u1", sessions.clone());
        account.sessions.reverse();
        let state = UserState::of(&account, 0).unwrap();
        for (sid, ends) in &sessions {
            let token = Claims {
                issued_at: Some(1),
                session_id: Some(*sid),
            };
            assert!(state.accepts(&token, ends - 1));
            assert!(!state.accepts(&token, *ends));
            assert!(!state.may_predate(&token));
        }
    }

    #[test]
    fn a_token_counts_while_its_session_lives_or_if_it_has_none_and_is_recent() {
        let live = uuid::Uuid::new_v4();
        let mut state = (*state("u1").unwrap()).clone();
        state.sessions = vec![(live, 2_000)].into_boxed_slice();
        let token = |session_id, issued_at| Claims {
            issued_at,
            session_id,
        };
        assert!(state.accepts(&token(Some(live), Some(100)), 1_000));
        // Past the session's end, or another (ended) session.
        assert!(!state.accepts(&token(Some(live), Some(100)), 2_000));
        assert!(!state.accepts(&token(Some(uuid::Uuid::new_v4()), Some(100)), 1_000));
        // Without a session: fine until a global logout; then only tokens issued after it.
        assert!(state.accepts(&token(None, None), 1_000));
        state.tokens_valid_after = Some(500);
        assert!(!state.accepts(&token(None, None), 1_000));
        assert!(!state.accepts(&token(None, Some(499)), 1_000));
        assert!(state.accepts(&token(None, Some(500)), 1_000));
        // A session's token does not depend on it.
        assert!(state.accepts(&token(Some(live), Some(100)), 1_000));
        // A session unknown here: ended if the token is older than the read, perhaps too new
        // to be known if not.
        state.read_at = 900;
        let unknown = Some(uuid::Uuid::new_v4());
        assert!(!state.may_predate(&token(unknown, Some(899))));
        assert!(state.may_predate(&token(unknown, Some(900))));
        assert!(!state.may_predate(&token(Some(live), Some(950))));
        assert!(!state.may_predate(&token(None, Some(950))));
    }
}
