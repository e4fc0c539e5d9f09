//! Second factors: TOTP enrolment and activation, verification (a TOTP or a recovery code)
//! that raises the session to `aal2`, recovery codes, the factors' list and their removal.
//!
//! Rules that hold in every enforcement mode: adding or removing a factor, or new recovery
//! codes, need an `aal2` session once the user has a factor (a stolen password alone cannot
//! enrol its own factor, or take the owner's away); every code tried counts against the user's
//! attempts (`mfa.attempts_per_5_minutes`, shared through Redis with the Redis backend); a TOTP
//! code is accepted once, a recovery code once. Secrets are sealed at rest
//! (`credentials::sealed`), bound to their factor's id.

use serde::Serialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::credentials::sealed::KEY_ID;
use crate::credentials::token::Verified;
use crate::credentials::totp;
use crate::own::api::{ApiError, Issue, Reply};
use crate::own::app::{refused, session_aal2, App, OwnRequest};
use crate::own::forms;
use crate::store::audit::Kind;
use crate::store::mfa::{self, Factor};
use crate::store::users::{self, rfc3339, Account};

/// Factors one user may hold, pending ones included.
const MAX_FACTORS: usize = 10;
const MAX_NAME_CHARS: usize = 64;
pub(crate) const MFA_LIMITED: &str = "Too many attempts, try again later";

#[derive(Serialize)]
struct FactorResponse {
    id: Uuid,
    #[serde(rename = "type")]
    kind: String,
    name: String,
    created_at: String,
    last_used_at: Option<String>,
}

impl From<&Factor> for FactorResponse {
    fn from(f: &Factor) -> FactorResponse {
        FactorResponse {
            id: f.id,
            kind: f.kind.clone(),
            name: f.name.clone(),
            created_at: rfc3339(f.created_at),
            last_used_at: f.last_used_at.map(rfc3339),
        }
    }
}

fn aal_name(aal2: bool) -> &'static str {
    if aal2 {
        "aal2"
    } else {
        "aal1"
    }
}

impl App {
    /// `GET /auth/mfa`: the session's level, the active factors, recovery codes left.
    pub(crate) async fn mfa_status(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let db = users::client(&self.pool).await?;
        let (account, token) = self.authenticate_any_level(&db, req).await?;
        let factors = mfa::list(&db, &account.user.id, true).await?;
        let left = mfa::recovery_codes_left(&db, &account.user.id).await?;
        let factors: Vec<FactorResponse> = factors.iter().map(FactorResponse::from).collect();
        Ok(Reply::json(
            200,
            &json!({
                "aal": aal_name(session_aal2(&account, &token)),
                "factors": factors,
                "recovery_codes_remaining": left,
            }),
        ))
    }

    /// Once the user has a factor, changing factors needs this session to have used one.
    pub(crate) fn require_aal2_if_enrolled(
        account: &Account,
        token: &Verified,
    ) -> Result<(), ApiError> {
        if account.has_factor && !session_aal2(account, token) {
            Err(ApiError::MfaRequired)
        } else {
            Ok(())
        }
    }

    /// `POST /auth/mfa/totp` `{"name"?}`: 201 `{"factor_id", "secret", "otpauth_uri"}`, a
    /// factor that counts once activated with a code from it.
    pub(crate) async fn mfa_totp_enrol(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let body = forms::decode_json_body(req.content_type.as_deref(), &req.body)?;
        let mut db = users::client(&self.pool).await?;
        let (account, token) = self.authenticate_any_level(&db, req).await?;
        Self::require_aal2_if_enrolled(&account, &token)?;
        let name = factor_name(body)?;
        let secret = totp::generate_secret().map_err(|e| ApiError::Internal(e.to_string()))?;
        let id = Uuid::new_v4();
        let sealed = self
            .sealer
            .seal(&secret, id.as_bytes())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let tx = db.transaction().await.map_err(users::db_error)?;
        users::lock(&tx, &account.user.id).await?;
        // Pending factors an hour old were abandoned.
        mfa::drop_stale_pending(&tx, &account.user.id).await?;
        room_for_a_factor(&tx, &account.user.id).await?;
        mfa::insert_totp(
            &tx,
            &id,
            &account.user.id,
            &name,
            &sealed,
            i16::from(KEY_ID),
        )
        .await?;
        tx.commit().await.map_err(users::db_error)?;
        Ok(Reply::json(
            201,
            &json!({
                "factor_id": id,
                "secret": totp::base32(&secret),
                "otpauth_uri": totp::otpauth_uri(&self.mfa_issuer, &account.user.email, &secret),
            }),
        )
        .with_header("cache-control", "no-store"))
    }

    /// `POST /auth/mfa/totp/{id}/activate` `{"code"}`: 200 `{"recovery_codes"}` (ten, with the
    /// first factor; `null` after); this session becomes `aal2`.
    pub(crate) async fn mfa_totp_activate(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let body = forms::decode_json_body(req.content_type.as_deref(), &req.body)?;
        let mut db = users::client(&self.pool).await?;
        let (account, token) = self.authenticate_any_level(&db, req).await?;
        Self::require_aal2_if_enrolled(&account, &token)?;
        let id = path_uuid(&req.path, "/auth/mfa/totp/", "/activate")?;
        let code = code_field(body, "code")?;
        let user_id = account.user.id.as_str();
        let factor = mfa::find(&db, user_id, &id)
            .await?
            .filter(|f| f.kind == "totp" && !f.active)
            .ok_or(ApiError::FactorNotFound)?;
        self.limiters
            .mfa(user_id)
            .await
            .map_err(refused(MFA_LIMITED))?;
        let step = self.totp_step(&factor, &code);
        let tx = db.transaction().await.map_err(users::db_error)?;
        let accepted = match step {
            Some(step) => mfa::accept_step(&tx, &id, step, true).await?,
            None => false,
        };
        if !accepted {
            self.audit(
                &tx,
                req,
                Kind::MfaFailed,
                Some(user_id),
                token.session_id,
                json!({"method": "totp"}),
            )
            .await?;
            tx.commit().await.map_err(users::db_error)?;
            return Err(ApiError::InvalidCode);
        }
        let enrolled = Enrolled {
            factor_id: id,
            kind: "totp",
            method: "otp",
            notice: "A second factor (an authenticator app) was added to",
        };
        let codes = self
            .factor_enrolled(&tx, req, &account, &token, enrolled)
            .await?;
        tx.commit().await.map_err(users::db_error)?;
        self.changed(user_id);
        self.mail_written();
        Ok(Reply::json(200, &json!({ "recovery_codes": codes }))
            .with_header("cache-control", "no-store"))
    }

    /// `POST /auth/mfa/verify` `{"code"}` or `{"recovery_code"}`: 200 `{"aal": "aal2"}`.
    pub(crate) async fn mfa_verify(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let body = forms::decode_json_body(req.content_type.as_deref(), &req.body)?;
        let mut db = users::client(&self.pool).await?;
        let (account, token) = self.authenticate_any_level(&db, req).await?;
        let proof = proof_of(body)?;
        let user_id = account.user.id.as_str();
        let session = session_to_raise(&token)?;
        self.limiters
            .mfa(user_id)
            .await
            .map_err(refused(MFA_LIMITED))?;
        let factors = mfa::list(&db, user_id, true).await?;
        // A code is used up by one statement of its own; a wrong one costs one insert (its
        // event), no transaction: the common case under guessing stays cheap.
        let (method, ok) = match &proof {
            Proof::Code(code) => {
                let mut ok = false;
                for factor in factors.iter().filter(|f| f.kind == "totp") {
                    if let Some(step) = self.totp_step(factor, code) {
                        if mfa::accept_step(&db, &factor.id, step, false).await? {
                            ok = true;
                            break;
                        }
                    }
                }
                ("totp", ok)
            }
            Proof::RecoveryCode(code) => {
                let ok = match totp::recovery_code_hash(code) {
                    Some(hash) if !factors.is_empty() => {
                        mfa::use_recovery_code(&db, user_id, &hash).await?
                    }
                    _ => false,
                };
                ("recovery_code", ok)
            }
        };
        if !ok {
            let detail = json!({ "method": method });
            self.audit(
                &db,
                req,
                Kind::MfaFailed,
                Some(user_id),
                Some(session),
                detail,
            )
            .await?;
            return Err(ApiError::InvalidCode);
        }
        let tx = db.transaction().await.map_err(users::db_error)?;
        if !mfa::raise(&tx, user_id, &session, "otp").await? {
            return Err(ApiError::InvalidToken);
        }
        self.audit(
            &tx,
            req,
            Kind::MfaVerified,
            Some(user_id),
            Some(session),
            json!({ "method": method }),
        )
        .await?;
        if method == "recovery_code" {
            self.audit(
                &tx,
                req,
                Kind::MfaRecoveryCodeUsed,
                Some(user_id),
                Some(session),
                json!({}),
            )
            .await?;
            self.write_mail(
                &tx,
                &self.letters.mfa_notice(
                    &account.user.email,
                    "A recovery code was used to sign in to",
                ),
            )
            .await?;
        }
        tx.commit().await.map_err(users::db_error)?;
        self.changed(user_id);
        if method == "recovery_code" {
            self.mail_written();
        }
        Ok(Reply::json(200, &json!({ "aal": "aal2" })))
    }

    /// `POST /auth/mfa/recovery-codes` (`aal2`): ten new codes; the old ones stop working.
    pub(crate) async fn mfa_recovery_codes(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let mut db = users::client(&self.pool).await?;
        let (account, token) = self.authenticate_any_level(&db, req).await?;
        if !account.has_factor {
            return Err(ApiError::MfaConflict("No second factor: enrol one first"));
        }
        Self::require_aal2_if_enrolled(&account, &token)?;
        let tx = db.transaction().await.map_err(users::db_error)?;
        let codes = self.new_recovery_codes(&tx, &account.user.id).await?;
        tx.commit().await.map_err(users::db_error)?;
        Ok(Reply::json(200, &json!({ "recovery_codes": codes }))
            .with_header("cache-control", "no-store"))
    }

    /// `DELETE /auth/mfa/factors/{id}` (`aal2`): 204. With the last factor go the recovery
    /// codes.
    pub(crate) async fn mfa_remove_factor(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let mut db = users::client(&self.pool).await?;
        let (account, token) = self.authenticate_any_level(&db, req).await?;
        Self::require_aal2_if_enrolled(&account, &token)?;
        let id = path_uuid(&req.path, "/auth/mfa/factors/", "")?;
        let user_id = account.user.id.as_str();
        let tx = db.transaction().await.map_err(users::db_error)?;
        let Some(factor) = mfa::remove(&tx, user_id, &id).await? else {
            return Err(ApiError::FactorNotFound);
        };
        if mfa::list(&tx, user_id, true).await?.is_empty() {
            mfa::replace_recovery_codes(&tx, user_id, &[]).await?;
        }
        if factor.active {
            let detail = json!({ "factor_id": id, "type": factor.kind });
            self.audit(
                &tx,
                req,
                Kind::MfaRemoved,
                Some(user_id),
                token.session_id,
                detail,
            )
            .await?;
            self.write_mail(
                &tx,
                &self
                    .letters
                    .mfa_notice(&account.user.email, "A second factor was removed from"),
            )
            .await?;
        }
        tx.commit().await.map_err(users::db_error)?;
        self.changed(user_id);
        self.mail_written();
        Ok(Reply::no_content())
    }

    /// What follows a factor's enrolment, in its transaction: recovery codes with the user's
    /// first factor (returned, to be shown once), the session raised by the method the factor
    /// was just used with, the `mfa.enrolled` event and the notice mail.
    pub(crate) async fn factor_enrolled(
        &self,
        tx: &impl deadpool_postgres::GenericClient,
        req: &OwnRequest,
        account: &Account,
        token: &Verified,
        enrolled: Enrolled,
    ) -> Result<Option<Vec<String>>, ApiError> {
        let user_id = account.user.id.as_str();
        let codes = if account.has_factor {
            None
        } else {
            Some(self.new_recovery_codes(tx, user_id).await?)
        };
        if let Some(session) = token.session_id {
            mfa::raise(tx, user_id, &session, enrolled.method).await?;
        }
        let detail = json!({ "factor_id": enrolled.factor_id, "type": enrolled.kind });
        self.audit(
            tx,
            req,
            Kind::MfaEnrolled,
            Some(user_id),
            token.session_id,
            detail,
        )
        .await?;
        let mail = self
            .letters
            .mfa_notice(&account.user.email, enrolled.notice);
        self.write_mail(tx, &mail).await?;
        Ok(codes)
    }

    /// The time step `code` is of `factor`'s secret, if it is one of the three around now.
    fn totp_step(&self, factor: &Factor, code: &str) -> Option<i64> {
        let secret = self
            .sealer
            .open(factor.sealed_secret.as_deref()?, factor.id.as_bytes())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        totp::matching_step(&secret, code, now).and_then(|s| i64::try_from(s).ok())
    }

    /// Ten new recovery codes for `user_id` (stored hashed, the old ones void): as shown once.
    pub(crate) async fn new_recovery_codes(
        &self,
        db: &impl deadpool_postgres::GenericClient,
        user_id: &str,
    ) -> Result<Vec<String>, ApiError> {
        let codes = totp::recovery_codes().map_err(|e| ApiError::Internal(e.to_string()))?;
        let hashes: Vec<Vec<u8>> = codes
            .iter()
            .filter_map(|c| totp::recovery_code_hash(c))
            .collect();
        mfa::replace_recovery_codes(db, user_id, &hashes).await?;
        Ok(codes)
    }
}

/// A factor just enrolled: its id and type, the RFC 8176 method it was used with, and the
/// notice mail's sentence.
pub(crate) struct Enrolled {
    pub factor_id: Uuid,
    pub kind: &'static str,
    pub method: &'static str,
    pub notice: &'static str,
}

/// The session a second factor is to raise: tokens without one (the seed's) have none.
pub(crate) fn session_to_raise(token: &Verified) -> Result<Uuid, ApiError> {
    token.session_id.ok_or(ApiError::MfaConflict(
        "This token has no session to raise: sign in again",
    ))
}

/// 400 when the user already holds [`MAX_FACTORS`] factors, pending ones included.
pub(crate) async fn room_for_a_factor(
    db: &impl deadpool_postgres::GenericClient,
    user_id: &str,
) -> Result<(), ApiError> {
    if mfa::list(db, user_id, false).await?.len() >= MAX_FACTORS {
        return Err(ApiError::MfaConflict("Too many factors: remove one first"));
    }
    Ok(())
}

/// The uuid between `prefix` and `suffix` of `path`: 404 for anything else.
fn path_uuid(path: &str, prefix: &str, suffix: &str) -> Result<Uuid, ApiError> {
    path.strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(suffix))
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or(ApiError::FactorNotFound)
}

/// A factor's optional `name`: a string of at most 64 characters, no control characters.
pub(crate) fn factor_name(body: Option<Value>) -> Result<String, ApiError> {
    let map = match body {
        None => return Ok(String::new()),
        some => forms::object(some)?,
    };
    let mut issues = Vec::new();
    let name = forms::string_field(&map, "name", true, &mut issues).unwrap_or_default();
    if issues.is_empty()
        && (name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control))
    {
        issues.push(Issue {
            kind: "value_error",
            loc: Issue::body_field("name"),
            msg: format!(
                "Value error, at most {MAX_NAME_CHARS} characters and no control characters"
            ),
            input: Value::from(name.chars().take(MAX_NAME_CHARS + 1).collect::<String>()),
            ctx: None,
        });
    }
    if issues.is_empty() {
        Ok(name)
    } else {
        Err(ApiError::Validation(issues))
    }
}

/// A required string field holding a code (its format is checked when it is tried).
fn code_field(body: Option<Value>, field: &str) -> Result<String, ApiError> {
    let map = forms::object(body)?;
    let mut issues = Vec::new();
    match map.get(field) {
        None => issues.push(Issue::missing(field, Value::Object(map.clone()))),
        Some(Value::String(s)) if s.len() <= 64 => return Ok(s.clone()),
        Some(Value::String(_)) => issues.push(Issue {
            kind: "string_too_long",
            loc: Issue::body_field(field),
            msg: "String should have at most 64 characters".into(),
            input: Value::from("…"),
            ctx: Some(json!({ "max_length": 64 })),
        }),
        Some(other) => issues.push(Issue::string_type(field, other.clone())),
    }
    Err(ApiError::Validation(issues))
}

enum Proof {
    Code(String),
    RecoveryCode(String),
}

/// `{"code"}` or `{"recovery_code"}`, exactly one of them.
fn proof_of(body: Option<Value>) -> Result<Proof, ApiError> {
    let map: Map<String, Value> = forms::object(body)?;
    match (map.contains_key("code"), map.contains_key("recovery_code")) {
        (true, false) => Ok(Proof::Code(code_field(Some(Value::Object(map)), "code")?)),
        (false, true) => Ok(Proof::RecoveryCode(code_field(
            Some(Value::Object(map)),
            "recovery_code",
        )?)),
        _ => Err(ApiError::Validation(vec![Issue {
            kind: "value_error",
            loc: vec![Value::from("body")],
            msg: "Value error, give either code or recovery_code".into(),
            input: Value::Object(map),
            ctx: None,
        }])),
    }
}
