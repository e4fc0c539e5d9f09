//! The `sentinel_outbox` table (`migrations/V5__account_lifecycle.sql`): one function per
//! statement.

use std::time::Duration;

use deadpool_postgres::GenericClient;

use crate::credentials::one_time::SealKey;
use crate::mail::Mail;
use crate::store::users::db_error;
use crate::store::StoreError;

/// Writes `mail` to the outbox, its token sealed with `seal`. Call it inside the transaction
/// of the change the mail is about.
#[tracing::instrument(level = "debug", skip_all, fields(kind = mail.kind))]
pub async fn enqueue(
    db: &impl GenericClient,
    mail: &Mail,
    seal: &SealKey,
) -> Result<(), StoreError> {
    let (sealed, lifetime) = match &mail.token {
        Some((token, lifetime)) => (
            Some(
                seal.seal(token)
                    .map_err(|e| StoreError::Internal(e.to_string()))?,
            ),
            Some(lifetime.as_secs_f64()),
        ),
        None => (None, None),
    };
    let stmt = db
        .prepare_cached(
            // Due now, and hidden from the workers of versions that cannot open its seal
            // (migrations/V13__aead_seals.sql).
            "INSERT INTO sentinel_outbox \
             (kind, recipient, subject, body, sealed_token, expires_at, next_attempt_at, due_at) \
             VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), 'infinity', now())",
        )
        .await
        .map_err(db_error)?;
    db.execute(
        &stmt,
        &[
            &mail.kind,
            &mail.to,
            &mail.subject,
            &mail.body,
            &sealed,
            &lifetime,
        ],
    )
    .await
    .map_err(db_error)?;
    Ok(())
}

/// A mail taken from the outbox for one delivery attempt.
#[derive(Debug)]
pub struct Claimed {
    pub id: i64,
    pub kind: String,
    pub recipient: String,
    pub subject: String,
    pub body: String,
    pub sealed_token: Option<Vec<u8>>,
    /// Unix seconds of when it was written (part of its `Message-ID`).
    pub created: i64,
    /// This attempt's number, from 1.
    pub attempt: i32,
    /// Its link has expired, or it is older than [`GIVE_UP_AFTER`]: not to be sent.
    pub stale: bool,
}

/// Mail not delivered within this long is abandoned.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(3 * 86_400);

/// Takes up to `limit` mails that are due, moving each one's next attempt `lease` ahead, so that
/// no other worker takes it meanwhile; a worker that dies mid-attempt leaves it to be retried
/// when the lease ends.
pub async fn claim(
    db: &impl GenericClient,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Claimed>, StoreError> {
    let stmt = db
        .prepare_cached(
            // A mail is due at `due_at`, or at `next_attempt_at` when written by a version
            // before V13 (which looks only there).
            "UPDATE sentinel_outbox o SET attempts = o.attempts + 1, \
             next_attempt_at = CASE WHEN o.due_at IS NULL \
                 THEN now() + make_interval(secs => $2) ELSE o.next_attempt_at END, \
             due_at = CASE WHEN o.due_at IS NULL \
                 THEN NULL ELSE now() + make_interval(secs => $2) END \
             FROM (SELECT id FROM sentinel_outbox \
                   WHERE sent_at IS NULL AND abandoned_at IS NULL \
                   AND COALESCE(due_at, next_attempt_at) <= now() \
                   ORDER BY COALESCE(due_at, next_attempt_at), id \
                   LIMIT $1 FOR UPDATE SKIP LOCKED) due \
             WHERE o.id = due.id \
             RETURNING o.id, o.kind, o.recipient, o.subject, o.body, o.sealed_token, \
             floor(extract(epoch FROM o.created_at))::bigint, o.attempts, \
             COALESCE(o.expires_at <= now(), false) \
             OR o.created_at < now() - make_interval(secs => $3)",
        )
        .await
        .map_err(db_error)?;
    let rows = db
        .query(
            &stmt,
            &[&limit, &lease.as_secs_f64(), &GIVE_UP_AFTER.as_secs_f64()],
        )
        .await
        .map_err(db_error)?;
    rows.into_iter()
        .map(|r| {
            Ok(Claimed {
                id: r.try_get(0)?,
                kind: r.try_get(1)?,
                recipient: r.try_get(2)?,
                subject: r.try_get(3)?,
                body: r.try_get(4)?,
                sealed_token: r.try_get(5)?,
                created: r.try_get(6)?,
                attempt: r.try_get(7)?,
                stale: r.try_get(8)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(db_error)
}

/// Delivered: done, and its sealed token erased.
pub async fn delivered(db: &impl GenericClient, id: i64) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE sentinel_outbox SET sent_at = now(), sealed_token = NULL, last_error = NULL \
             WHERE id = $1",
        )
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[&id]).await.map_err(db_error)?;
    Ok(())
}

/// Not delivered this time: tried again after `delay`.
pub async fn retry_later(
    db: &impl GenericClient,
    id: i64,
    delay: Duration,
    error: &str,
) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE sentinel_outbox SET \
             next_attempt_at = CASE WHEN due_at IS NULL \
                 THEN now() + make_interval(secs => $2) ELSE next_attempt_at END, \
             due_at = CASE WHEN due_at IS NULL \
                 THEN NULL ELSE now() + make_interval(secs => $2) END, \
             last_error = $3 WHERE id = $1",
        )
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[&id, &delay.as_secs_f64(), &error])
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Never to be delivered (see [`Claimed::stale`], or refused for good by the server).
pub async fn abandon(db: &impl GenericClient, id: i64, reason: &str) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE sentinel_outbox SET abandoned_at = now(), sealed_token = NULL, \
             last_error = $2 WHERE id = $1",
        )
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[&id, &reason]).await.map_err(db_error)?;
    Ok(())
}

/// Mails waiting: neither sent nor abandoned (counted through the due-mail index).
pub async fn depth(db: &impl GenericClient) -> Result<i64, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT count(*) FROM sentinel_outbox WHERE sent_at IS NULL AND abandoned_at IS NULL",
        )
        .await
        .map_err(db_error)?;
    let row = db.query_one(&stmt, &[]).await.map_err(db_error)?;
    Ok(row.get(0))
}

/// Deletes mails sent or abandoned more than a week ago; how many.
pub async fn prune(db: &impl GenericClient) -> Result<u64, StoreError> {
    let stmt = db
        .prepare_cached(
            "DELETE FROM sentinel_outbox \
             WHERE COALESCE(sent_at, abandoned_at) < now() - interval '7 days'",
        )
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[]).await.map_err(db_error)
}
