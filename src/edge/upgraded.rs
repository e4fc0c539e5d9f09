//! Upgraded connections (WebSockets) by user, so that a user who is shut out loses the sockets
//! already open, not only the next request: a deactivated or deleted user's upgraded
//! connections, and those opened with a token whose session was revoked, are closed when the
//! change is announced (`LISTEN/NOTIFY`, see `user_cache`), after the user is read again from
//! PostgreSQL (a changed name keeps them open).
//!
//! Closing works through the connection front: [`Connection::shut_out`] wakes the connection's
//! task, which then drops the request it is proxying, and with it both sockets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use deadpool_postgres::Pool;

use crate::credentials::token::{unix_seconds, Verified};
use crate::edge::front::Connection;
use crate::store::user_cache::{UserChange, UserState};
use crate::store::users;

/// An upgraded connection, and the token it was opened with.
struct Open {
    conn: Weak<Connection>,
    token: Arc<Verified>,
}

/// The open upgraded connections of each user.
pub struct Upgraded {
    by_user: Mutex<HashMap<String, Vec<Open>>>,
    pool: Pool,
    /// `auth.max_sessions_per_user`: how many of a user's sessions count.
    max_sessions: u32,
}

/// One upgraded connection's place in [`Upgraded`], given up when the request ends.
pub struct Registration {
    upgraded: Arc<Upgraded>,
    user_id: String,
    conn: Weak<Connection>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut by_user = self.upgraded.lock();
        if let Some(conns) = by_user.get_mut(&self.user_id) {
            conns.retain(|c| !c.conn.ptr_eq(&self.conn) && c.conn.strong_count() > 0);
            if conns.is_empty() {
                by_user.remove(&self.user_id);
            }
        }
    }
}

impl Upgraded {
    pub fn new(pool: Pool, max_sessions: u32) -> Arc<Upgraded> {
        Arc::new(Upgraded {
            by_user: Mutex::new(HashMap::new()),
            pool,
            max_sessions,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Open>>> {
        self.by_user.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `conn` as upgraded on behalf of `user_id` with `token`, until the registration
    /// is dropped.
    pub fn register(
        self: &Arc<Self>,
        user_id: &str,
        token: Arc<Verified>,
        conn: &Arc<Connection>,
    ) -> Registration {
        let conn = Arc::downgrade(conn);
        self.lock()
            .entry(user_id.to_string())
            .or_default()
            .push(Open {
                conn: conn.clone(),
                token,
            });
        Registration {
            upgraded: Arc::clone(self),
            user_id: user_id.to_string(),
            conn,
        }
    }

    /// Users with upgraded connections open.
    pub fn users(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Closes the upgraded connections of `user_id` that `keep` does not keep (given each
    /// one's token); how many.
    pub fn close(&self, user_id: &str, keep: impl Fn(&Verified) -> bool) -> usize {
        let mut by_user = self.lock();
        let Some(conns) = by_user.get_mut(user_id) else {
            return 0;
        };
        let mut closed = 0;
        conns.retain(|open| {
            if keep(&open.token) {
                return true;
            }
            if let Some(conn) = open.conn.upgrade() {
                conn.shut_out();
                closed += 1;
            }
            false
        });
        if conns.is_empty() {
            by_user.remove(user_id);
        }
        closed
    }

    /// Reads `user_id` again (in the background) and closes those of their upgraded
    /// connections whose token no longer counts (the user inactive or gone, the session
    /// revoked). If PostgreSQL cannot say, they are closed: a client reconnects and is checked
    /// afresh, while a shut-out user's socket must not outlive the change.
    pub fn recheck(self: &Arc<Self>, user_id: &str) {
        if !self.lock().contains_key(user_id) {
            return;
        }
        let upgraded = Arc::clone(self);
        let user_id = user_id.to_string();
        tokio::spawn(async move {
            let read = async {
                let db = users::client(&upgraded.pool).await?;
                users::find_account(&db, &user_id, upgraded.max_sessions).await
            };
            let now = unix_seconds(std::time::SystemTime::now());
            let state = match tokio::time::timeout(std::time::Duration::from_secs(2), read).await {
                Ok(Ok(account)) => account.as_ref().and_then(|a| UserState::of(a, now)),
                _ => None,
            };
            let closed = upgraded.close(&user_id, |token| {
                state
                    .as_ref()
                    .is_some_and(|s| s.active && s.accepts(token, now))
            });
            if closed > 0 {
                tracing::info!(%user_id, closed, "closed upgraded connections whose user or session is shut out");
            }
        });
    }

    /// [`Upgraded::recheck`] for every user with upgraded connections.
    pub fn recheck_all(self: &Arc<Self>) {
        for user_id in self.users() {
            self.recheck(&user_id);
        }
    }
}

/// Follows the user cache's announced changes (`UserCache::subscribe`) and closes the upgraded
/// connections of users who are shut out: every change of a user is a re-check of theirs,
/// "everyone" (a reconnection of the listener, the periodic sweep, or changes missed) of all.
pub struct UpgradedWatcher {
    pub upgraded: Arc<Upgraded>,
    pub changes: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<UserChange>>>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for UpgradedWatcher {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let taken = self
            .changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut changes) = taken else {
            return;
        };
        loop {
            let change = tokio::select! {
                change = changes.recv() => change,
                _ = shutdown.changed() => return,
            };
            match change {
                Ok(UserChange::User(id)) => self.upgraded.recheck(&id),
                Ok(UserChange::Everyone) => self.upgraded.recheck_all(),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    self.upgraded.recheck_all()
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
