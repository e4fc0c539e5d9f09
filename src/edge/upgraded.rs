//! Upgraded connections (WebSockets) by user, so that a user who is shut out loses the sockets
//! already open, not only the next request: a deactivated or deleted user's upgraded
//! connections are closed when the change is announced (`LISTEN/NOTIFY`, see `user_cache`),
//! after the user is read again from PostgreSQL (a changed name keeps them open).
//!
//! Closing works through the connection front: [`Connection::shut_out`] wakes the connection's
//! task, which then drops the request it is proxying, and with it both sockets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use deadpool_postgres::Pool;

use crate::edge::front::Connection;
use crate::store::users;

/// The open upgraded connections of each user.
pub struct Upgraded {
    by_user: Mutex<HashMap<String, Vec<Weak<Connection>>>>,
    pool: Pool,
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
            conns.retain(|c| !c.ptr_eq(&self.conn) && c.strong_count() > 0);
            if conns.is_empty() {
                by_user.remove(&self.user_id);
            }
        }
    }
}

impl Upgraded {
    pub fn new(pool: Pool) -> Arc<Upgraded> {
        Arc::new(Upgraded {
            by_user: Mutex::new(HashMap::new()),
            pool,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Weak<Connection>>>> {
        self.by_user.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `conn` as upgraded on behalf of `user_id`, until the registration is dropped.
    pub fn register(self: &Arc<Self>, user_id: &str, conn: &Arc<Connection>) -> Registration {
        let conn = Arc::downgrade(conn);
        self.lock()
            .entry(user_id.to_string())
            .or_default()
            .push(conn.clone());
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

    /// Closes every upgraded connection of `user_id`; how many there were.
    pub fn close(&self, user_id: &str) -> usize {
        let conns = self.lock().remove(user_id).unwrap_or_default();
        let mut closed = 0;
        for conn in conns.iter().filter_map(Weak::upgrade) {
            conn.shut_out();
            closed += 1;
        }
        closed
    }

    /// Reads `user_id` again (in the background) and closes their upgraded connections unless
    /// they are still active. If PostgreSQL cannot say, they are closed: a client reconnects and
    /// is checked afresh, while a shut-out user's socket must not outlive the change.
    pub fn recheck(self: &Arc<Self>, user_id: &str) {
        if !self.lock().contains_key(user_id) {
            return;
        }
        let upgraded = Arc::clone(self);
        let user_id = user_id.to_string();
        tokio::spawn(async move {
            let active = async {
                let db = users::client(&upgraded.pool).await?;
                users::find_by_id(&db, &user_id).await
            };
            let keep = matches!(
                tokio::time::timeout(std::time::Duration::from_secs(2), active).await,
                Ok(Ok(Some(user))) if user.is_active
            );
            if !keep {
                let closed = upgraded.close(&user_id);
                if closed > 0 {
                    tracing::info!(%user_id, closed, "closed the upgraded connections of a user who is shut out");
                }
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
