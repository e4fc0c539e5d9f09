//! The `sentinel_sessions` table (`migrations/V4__sessions.sql`): one function per statement,
//! except [`rotate`], which is one statement and, when that does not match, one read to say why.
//! Every change here makes PostgreSQL announce a change of the session's user, so that every
//! instance's cached user state (its live sessions included) is read again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::store::users::db_error;
use crate::store::StoreError;

/// A session as the user sees it in `GET /auth/sessions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub client_address: Option<String>,
}

impl TryFrom<Row> for Session {
    type Error = tokio_postgres::Error;

    fn try_from(row: Row) -> Result<Self, Self::Error> {
        Ok(Session {
            id: row.try_get(0)?,
            created_at: row.try_get(1)?,
            last_used_at: row.try_get(2)?,
            user_agent: row.try_get(3)?,
            client_address: row.try_get(4)?,
        })
    }
}

/// How long sessions last.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Ended when not refreshed for this long.
    pub idle: Duration,
    /// Ended this long after the login, whatever happens.
    pub absolute: Duration,
    /// How long a refresh token just rotated away still gets the session's current tokens.
    pub reuse_grace: Duration,
    /// Live sessions one user may hold (`auth.max_sessions_per_user`).
    pub max_per_user: u32,
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Starts a session for `user_id`; its id. The user's least recently used live sessions
/// beyond `lifetimes.max_per_user` end (call it in the login's transaction).
#[tracing::instrument(level = "debug", skip(db, user_agent))]
pub async fn create(
    db: &impl GenericClient,
    user_id: &str,
    lifetimes: Lifetimes,
    user_agent: Option<&str>,
    client_address: Option<&str>,
) -> Result<Uuid, StoreError> {
    let stmt = db
        .prepare_cached(
            "INSERT INTO sentinel_sessions \
             (id, user_id, idle_expires_at, absolute_expires_at, user_agent, client_address) \
             VALUES ($1, $2, now() + make_interval(secs => LEAST($3::float8, $4::float8)), \
                     now() + make_interval(secs => $4), $5, $6)",
        )
        .await
        .map_err(db_error)?;
    let id = Uuid::new_v4();
    db.execute(
        &stmt,
        &[
            &id,
            &user_id,
            &seconds(lifetimes.idle),
            &seconds(lifetimes.absolute),
            &user_agent,
            &client_address,
        ],
    )
    .await
    .map_err(db_error)?;
    let stmt = db
        .prepare_cached(
            "UPDATE sentinel_sessions SET revoked_at = now() WHERE id IN (\
                 SELECT id FROM sentinel_sessions WHERE user_id = $1 AND revoked_at IS NULL \
                 AND idle_expires_at > now() AND absolute_expires_at > now() \
                 ORDER BY id = $3 DESC, last_used_at DESC, created_at DESC OFFSET $2)",
        )
        .await
        .map_err(db_error)?;
    let ended = db
        .execute(&stmt, &[&user_id, &i64::from(lifetimes.max_per_user), &id])
        .await
        .map_err(db_error)?;
    if ended > 0 {
        tracing::info!(
            user_id,
            ended,
            max = lifetimes.max_per_user,
            "a login past auth.max_sessions_per_user ended the least recently used sessions"
        );
    }
    Ok(id)
}

/// What a refresh of generation `generation` of a session came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Refresh {
    /// Rotated: the session's new generation.
    Rotated { user_id: String, generation: u32 },
    /// The token was rotated away moments ago (within the grace period): the session's
    /// current generation, unchanged.
    Current { user_id: String, generation: u32 },
    /// A token rotated away longer ago than the grace period: presumed stolen, the session
    /// is now revoked. How many rotations ago it was current, and how long ago it was rotated
    /// away (when that is still remembered: within the grace period of the last rotations).
    Reused {
        user_id: String,
        generations_behind: u32,
        rotated_ago: Option<f64>,
    },
    /// No such session, or ended (revoked, idle, past its absolute end).
    Ended,
}

/// Rotates a session from `generation` to the next, if that is its live generation: one
/// compare-and-increment, so concurrent refreshes of one token leave one lineage (the others
/// find the generation moved within the grace period and get the current one).
#[tracing::instrument(level = "debug", skip(db))]
pub async fn rotate(
    db: &impl GenericClient,
    session_id: &Uuid,
    generation: u32,
    lifetimes: Lifetimes,
) -> Result<Refresh, StoreError> {
    let generation = i32::try_from(generation).unwrap_or(i32::MAX);
    let stmt = db
        .prepare_cached(
            "UPDATE sentinel_sessions SET generation = generation + 1, rotated_at = now(), \
             recent_rotations = recent_rotations[\
                 GREATEST(cardinality(recent_rotations) - 62, 1):cardinality(recent_rotations)] \
                 || now(), \
             last_used_at = now(), \
             idle_expires_at = LEAST(now() + make_interval(secs => $3), absolute_expires_at) \
             WHERE id = $1 AND generation = $2 AND revoked_at IS NULL \
             AND idle_expires_at > now() AND absolute_expires_at > now() \
             RETURNING user_id, generation",
        )
        .await
        .map_err(db_error)?;
    let rotated = db
        .query_opt(&stmt, &[session_id, &generation, &seconds(lifetimes.idle)])
        .await
        .map_err(db_error)?;
    if let Some(row) = rotated {
        return Ok(Refresh::Rotated {
            user_id: row.try_get(0).map_err(db_error)?,
            generation: row.try_get::<_, i32>(1).map_err(db_error)? as u32,
        });
    }
    // Why not: ended, another refresh got there first (within the grace period), or reuse.
    let stmt = db
        .prepare_cached(
            "SELECT user_id, generation, \
             revoked_at IS NULL AND idle_expires_at > now() AND absolute_expires_at > now(), \
             EXTRACT(EPOCH FROM now() - \
                 recent_rotations[cardinality(recent_rotations) - (generation - 1 - $2)])::float8 \
             FROM sentinel_sessions WHERE id = $1",
        )
        .await
        .map_err(db_error)?;
    let Some(row) = db
        .query_opt(&stmt, &[session_id, &generation])
        .await
        .map_err(db_error)?
    else {
        return Ok(Refresh::Ended);
    };
    let user_id: String = row.try_get(0).map_err(db_error)?;
    let current: i32 = row.try_get(1).map_err(db_error)?;
    let live: bool = row.try_get(2).map_err(db_error)?;
    // How long ago this token was rotated away, if that was recent enough to be remembered.
    let rotated_ago: Option<f64> = row.try_get(3).map_err(db_error)?;
    if !live {
        return Ok(Refresh::Ended);
    }
    if generation >= current {
        // A generation this session has not reached: not a token it issued.
        return Ok(Refresh::Ended);
    }
    if rotated_ago.is_some_and(|ago| ago < seconds(lifetimes.reuse_grace)) {
        return Ok(Refresh::Current {
            user_id,
            generation: current as u32,
        });
    }
    revoke(db, &user_id, session_id).await?;
    Ok(Refresh::Reused {
        user_id,
        generations_behind: (current - generation) as u32,
        rotated_ago,
    })
}

/// Moves a session to its next generation without a refresh token (its refresh tokens so far
/// end, as after a password change); the new generation.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn advance(db: &impl GenericClient, session_id: &Uuid) -> Result<u32, StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE sentinel_sessions SET generation = generation + 1, rotated_at = NULL, \
             recent_rotations = '{}', last_used_at = now() WHERE id = $1 RETURNING generation",
        )
        .await
        .map_err(db_error)?;
    let row = db.query_one(&stmt, &[session_id]).await.map_err(db_error)?;
    Ok(row.try_get::<_, i32>(0).map_err(db_error)? as u32)
}

/// The user of a live session.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn owner(
    db: &impl GenericClient,
    session_id: &Uuid,
) -> Result<Option<String>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT user_id FROM sentinel_sessions WHERE id = $1 AND revoked_at IS NULL \
             AND idle_expires_at > now() AND absolute_expires_at > now()",
        )
        .await
        .map_err(db_error)?;
    let row = db.query_opt(&stmt, &[session_id]).await.map_err(db_error)?;
    row.map(|r| r.try_get(0)).transpose().map_err(db_error)
}

/// Ends one of `user_id`'s sessions; whether it was live.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn revoke(
    db: &impl GenericClient,
    user_id: &str,
    session_id: &Uuid,
) -> Result<bool, StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE sentinel_sessions SET revoked_at = now() \
             WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        )
        .await
        .map_err(db_error)?;
    Ok(db
        .execute(&stmt, &[session_id, &user_id])
        .await
        .map_err(db_error)?
        > 0)
}

/// Ends every live session of `user_id` but `keep` (all of them without one); how many.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn revoke_all_but(
    db: &impl GenericClient,
    user_id: &str,
    keep: Option<&Uuid>,
) -> Result<u64, StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE sentinel_sessions SET revoked_at = now() \
             WHERE user_id = $1 AND revoked_at IS NULL AND id IS DISTINCT FROM $2",
        )
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[&user_id, &keep])
        .await
        .map_err(db_error)
}

/// Ends every session of `user_id` and refuses their tokens without one from now on (a global
/// logout, an operator's revocation); how many sessions were live.
pub async fn end_everything(db: &impl GenericClient, user_id: &str) -> Result<u64, StoreError> {
    let ended = revoke_all_but(db, user_id, None).await?;
    crate::store::users::refuse_sessionless_tokens(db, user_id).await?;
    Ok(ended)
}

/// `user_id`'s live sessions (the `max` most recently used: those that count), newest first.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn list_live(
    db: &impl GenericClient,
    user_id: &str,
    max: u32,
) -> Result<Vec<Session>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT id, created_at, last_used_at, user_agent, client_address FROM (\
                 SELECT * FROM sentinel_sessions WHERE user_id = $1 AND revoked_at IS NULL \
                 AND idle_expires_at > now() AND absolute_expires_at > now() \
                 ORDER BY last_used_at DESC, id LIMIT $2) counted \
             ORDER BY created_at DESC, id",
        )
        .await
        .map_err(db_error)?;
    db.query(&stmt, &[&user_id, &i64::from(max)])
        .await
        .map_err(db_error)?
        .into_iter()
        .map(|row| Session::try_from(row).map_err(db_error))
        .collect()
}
