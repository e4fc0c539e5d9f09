//! Passkeys (`migrations/V12__passkeys.sql`): the credentials of `webauthn` factors, and the
//! WebAuthn ceremonies begun and not yet finished. The store keeps webauthn-rs's JSON as it is
//! given; what it means is `credentials::passkey`'s business.

use deadpool_postgres::GenericClient;
use serde_json::Value;
use uuid::Uuid;

use crate::store::users::db_error;
use crate::store::StoreError;

/// How long a ceremony may take between its start and its finish.
pub const CEREMONY_SECONDS: f64 = 300.0;

/// What a ceremony is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ceremony {
    /// A signed-in user adds a passkey.
    Register,
    /// A signed-in user raises their session with a passkey.
    Verify,
    /// Anyone signs in with a passkey alone.
    Passwordless,
}

impl Ceremony {
    fn name(self) -> &'static str {
        match self {
            Ceremony::Register => "register",
            Ceremony::Verify => "verify",
            Ceremony::Passwordless => "passwordless",
        }
    }
}

/// A ceremony as begun: for whom (none for a passwordless sign-in), in which session, the
/// name a new passkey is to have, and webauthn-rs's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Begun {
    pub user_id: Option<String>,
    pub session_id: Option<Uuid>,
    pub name: String,
    pub state: Value,
}

/// Records a ceremony begun, found later by its `challenge`. A session has one ceremony of a
/// kind at a time (a new one replaces it); expired ceremonies are swept a batch at a time.
#[tracing::instrument(level = "debug", skip(db, challenge, begun))]
pub async fn begin(
    db: &impl GenericClient,
    kind: Ceremony,
    challenge: &[u8],
    begun: &Begun,
) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "DELETE FROM sentinel_webauthn_ceremonies WHERE challenge IN (\
                 SELECT challenge FROM sentinel_webauthn_ceremonies \
                 WHERE expires_at < now() LIMIT 100) \
             OR ($1::uuid IS NOT NULL AND session_id = $1 AND kind = $2)",
        )
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[&begun.session_id, &kind.name()])
        .await
        .map_err(db_error)?;
    let stmt = db
        .prepare_cached(
            "INSERT INTO sentinel_webauthn_ceremonies \
             (challenge, kind, user_id, session_id, name, state, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))",
        )
        .await
        .map_err(db_error)?;
    db.execute(
        &stmt,
        &[
            &challenge,
            &kind.name(),
            &begun.user_id,
            &begun.session_id,
            &begun.name,
            &begun.state,
            &CEREMONY_SECONDS,
        ],
    )
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Takes the live ceremony of `kind` that issued `challenge`: it is gone afterwards, so one
/// answer finishes it once (two at once: one of them gets it).
#[tracing::instrument(level = "debug", skip(db, challenge))]
pub async fn take(
    db: &impl GenericClient,
    kind: Ceremony,
    challenge: &[u8],
) -> Result<Option<Begun>, StoreError> {
    let stmt = db
        .prepare_cached(
            "DELETE FROM sentinel_webauthn_ceremonies WHERE challenge = $1 AND kind = $2 \
             RETURNING user_id, session_id, name, state, expires_at > now()",
        )
        .await
        .map_err(db_error)?;
    let Some(row) = db
        .query_opt(&stmt, &[&challenge, &kind.name()])
        .await
        .map_err(db_error)?
    else {
        return Ok(None);
    };
    let live: bool = row.try_get(4).map_err(db_error)?;
    if !live {
        return Ok(None);
    }
    Ok(Some(Begun {
        user_id: row.try_get(0).map_err(db_error)?,
        session_id: row.try_get(1).map_err(db_error)?,
        name: row.try_get(2).map_err(db_error)?,
        state: row.try_get(3).map_err(db_error)?,
    }))
}

/// A new passkey factor of `user_id`, active at once (its registration proved it works).
#[tracing::instrument(level = "debug", skip(db, credential_id, credential))]
pub async fn insert(
    db: &impl GenericClient,
    id: &Uuid,
    user_id: &str,
    name: &str,
    credential_id: &[u8],
    credential: &Value,
) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "INSERT INTO sentinel_mfa_factors \
             (id, user_id, type, name, credential_id, credential, activated_at) \
             VALUES ($1, $2, 'webauthn', $3, $4, $5, now())",
        )
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[id, &user_id, &name, &credential_id, credential])
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Whether a passkey with this credential id is registered, to anyone.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn registered(db: &impl GenericClient, credential_id: &[u8]) -> Result<bool, StoreError> {
    let stmt = db
        .prepare_cached("SELECT 1 FROM sentinel_mfa_factors WHERE credential_id = $1")
        .await
        .map_err(db_error)?;
    Ok(db
        .query_opt(&stmt, &[&credential_id])
        .await
        .map_err(db_error)?
        .is_some())
}

/// A stored passkey: its factor's id, its owner and webauthn-rs's credential.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub factor_id: Uuid,
    pub user_id: String,
    pub credential: Value,
}

fn stored(row: &tokio_postgres::Row) -> Result<Stored, StoreError> {
    Ok(Stored {
        factor_id: row.try_get(0).map_err(db_error)?,
        user_id: row.try_get(1).map_err(db_error)?,
        credential: row.try_get(2).map_err(db_error)?,
    })
}

/// The credentials of the user's passkeys, oldest first.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn credentials_of(
    db: &impl GenericClient,
    user_id: &str,
) -> Result<Vec<Value>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT credential FROM sentinel_mfa_factors \
             WHERE user_id = $1 AND type = 'webauthn' AND credential_id IS NOT NULL \
             AND credential IS NOT NULL \
             ORDER BY created_at, id",
        )
        .await
        .map_err(db_error)?;
    db.query(&stmt, &[&user_id])
        .await
        .map_err(db_error)?
        .iter()
        .map(|row| row.try_get(0).map_err(db_error))
        .collect()
}

/// The passkey with this credential id, whoever holds it.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn by_credential_id(
    db: &impl GenericClient,
    credential_id: &[u8],
) -> Result<Option<Stored>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT id, user_id, credential FROM sentinel_mfa_factors \
             WHERE credential_id = $1 AND type = 'webauthn' AND credential IS NOT NULL",
        )
        .await
        .map_err(db_error)?;
    db.query_opt(&stmt, &[&credential_id])
        .await
        .map_err(db_error)?
        .as_ref()
        .map(stored)
        .transpose()
}

/// Records a use of passkey `factor_id`: when, and its credential as it is now (the counter).
#[tracing::instrument(level = "debug", skip(db, credential))]
pub async fn used(
    db: &impl GenericClient,
    factor_id: &Uuid,
    credential: Option<&Value>,
) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE sentinel_mfa_factors SET last_used_at = now(), \
             credential = COALESCE($2, credential) WHERE id = $1",
        )
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[factor_id, &credential])
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Makes `session_id` a passwordless session: `aal2`, its methods a hardware key and `mfa`.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn passwordless_session(
    db: &impl GenericClient,
    session_id: &Uuid,
) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE sentinel_sessions SET aal = 2, amr = ARRAY['hwk', 'mfa'] WHERE id = $1",
        )
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[session_id]).await.map_err(db_error)?;
    Ok(())
}
