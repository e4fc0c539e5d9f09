//! The `sentinel_signing_keys` table (`migrations/V6__signing_keys.sql`): the identity
//! assertion keys every instance shares, each with when it starts signing and when it leaves
//! the JWKS.

use tokio_postgres::{GenericClient, Transaction};

use crate::store::users::db_error;
use crate::store::StoreError;

/// One key as stored (its private half sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub kid: String,
    pub public_key: [u8; 32],
    pub sealed_private_key: Vec<u8>,
    /// Unix seconds.
    pub activates_at: i64,
    pub expires_at: i64,
}

/// A key to add.
pub struct NewKey {
    pub kid: String,
    pub public_key: [u8; 32],
    pub sealed_private_key: Vec<u8>,
}

/// Every key still published, by activation, and PostgreSQL's clock (unix seconds).
pub async fn live(db: &impl GenericClient) -> Result<(Vec<StoredKey>, i64), StoreError> {
    let rows = db
        .query(
            "SELECT kid, public_key, sealed_private_key, \
                    floor(extract(epoch FROM activates_at))::bigint, \
                    floor(extract(epoch FROM expires_at))::bigint, \
                    floor(extract(epoch FROM now()))::bigint \
             FROM sentinel_signing_keys WHERE expires_at > now() ORDER BY activates_at",
            &[],
        )
        .await
        .map_err(db_error)?;
    let now = match rows.first() {
        Some(row) => row.get(5),
        None => db
            .query_one("SELECT floor(extract(epoch FROM now()))::bigint", &[])
            .await
            .map_err(db_error)?
            .get(0),
    };
    let keys = rows
        .iter()
        .filter_map(|row| {
            let public_key: Vec<u8> = row.get(1);
            Some(StoredKey {
                kid: row.get(0),
                public_key: public_key.try_into().ok()?,
                sealed_private_key: row.get(2),
                activates_at: row.get(3),
                expires_at: row.get(4),
            })
        })
        .collect();
    Ok((keys, now))
}

/// Takes the table's lock for this transaction: one instance at a time adds keys.
pub async fn lock(tx: &Transaction<'_>) -> Result<(), StoreError> {
    // An arbitrary constant of this table's own ("sg keys").
    tx.execute("SELECT pg_advisory_xact_lock(7367107101121115)", &[])
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Adds `key`, signing from `activates_at` and published until `expires_at` (unix seconds).
pub async fn insert(
    db: &impl GenericClient,
    key: &NewKey,
    activates_at: i64,
    expires_at: i64,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO sentinel_signing_keys \
             (kid, public_key, sealed_private_key, activates_at, expires_at) \
         VALUES ($1, $2, $3, to_timestamp($4::bigint), to_timestamp($5::bigint))",
        &[
            &key.kid,
            &key.public_key.as_slice(),
            &key.sealed_private_key,
            &activates_at,
            &expires_at,
        ],
    )
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Keeps `kid` published until at least `expires_at` (unix seconds).
pub async fn extend(db: &impl GenericClient, kid: &str, expires_at: i64) -> Result<(), StoreError> {
    db.execute(
        "UPDATE sentinel_signing_keys SET expires_at = to_timestamp($2::bigint) \
         WHERE kid = $1 AND expires_at < to_timestamp($2::bigint)",
        &[&kid, &expires_at],
    )
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Deletes keys that left the JWKS a day ago or more.
pub async fn delete_expired(db: &impl GenericClient) -> Result<u64, StoreError> {
    db.execute(
        "DELETE FROM sentinel_signing_keys WHERE expires_at < now() - interval '1 day'",
        &[],
    )
    .await
    .map_err(db_error)
}

/// Makes `kid` sign from now on (an operator's rotation).
pub async fn activate_now(db: &impl GenericClient, kid: &str) -> Result<(), StoreError> {
    db.execute(
        "UPDATE sentinel_signing_keys SET activates_at = now() WHERE kid = $1",
        &[&kid],
    )
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Publishes `kid` for `seconds` from now only (0: it leaves the JWKS at once).
pub async fn expire_in(db: &impl GenericClient, kid: &str, seconds: i64) -> Result<(), StoreError> {
    db.execute(
        "UPDATE sentinel_signing_keys SET expires_at = now() + make_interval(secs => $2::bigint) \
         WHERE kid = $1",
        &[&kid, &seconds],
    )
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Every key in the table (published or not yet deleted), by activation: kid, activation,
/// expiry, and whether it is still published.
pub async fn all(
    db: &impl GenericClient,
) -> Result<
    Vec<(
        String,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        bool,
    )>,
    StoreError,
> {
    let rows = db
        .query(
            "SELECT kid, activates_at, expires_at, expires_at > now() \
             FROM sentinel_signing_keys ORDER BY activates_at",
            &[],
        )
        .await
        .map_err(db_error)?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}
