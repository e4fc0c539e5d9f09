//! Passkeys: registering one as a second factor, raising a session with it, and signing in
//! with it alone.
//!
//! Each ceremony has a start, which answers `{"options": …}` for the browser's
//! `navigator.credentials.create()`/`get()` and keeps webauthn-rs's state in PostgreSQL, and a
//! finish, which takes `{"credential": …}` (the browser's answer, as its `toJSON()` writes it),
//! finds the state by the challenge the answer signed and takes it (an answer counts once, on
//! whichever instance it arrives). What does not pass — another origin or relying party, a
//! challenge no ceremony of this kind issued, one already finished or expired, a bad
//! signature, no user verification, bytes that do not read — is 400 `Passkey not accepted`,
//! and no session is raised or started.

use serde_json::{json, Value};
use uuid::Uuid;
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use crate::credentials::passkey::{challenge_of, PasskeyError, Passkeys, Started};
use crate::own::api::{ApiError, Issue, Reply};
use crate::own::app::{refused, App, OwnRequest};
use crate::own::forms;
use crate::own::mfa::{factor_name, room_for_a_factor, session_to_raise, Enrolled, MFA_LIMITED};
use crate::store::audit::Kind;
use crate::store::mfa;
use crate::store::passkeys::{self, Begun, Ceremony};
use crate::store::users;

const LOGIN_LIMITED: &str = "Too many login attempts, try again later";

fn passkey_error(e: PasskeyError) -> ApiError {
    match e {
        PasskeyError::Rejected(why) => {
            tracing::debug!(why, "passkey answer rejected");
            ApiError::PasskeyRejected
        }
        PasskeyError::Internal(e) => ApiError::Internal(e),
    }
}

fn options_reply(started: &Started) -> Reply {
    Reply::json(200, &json!({ "options": started.options }))
        .with_header("cache-control", "no-store")
}

/// The `credential` of a finish's body: 422 when it is missing or not an object, 400 when it
/// is not a WebAuthn answer of the expected kind.
fn credential<T: serde::de::DeserializeOwned>(body: Option<Value>) -> Result<T, ApiError> {
    let map = forms::object(body)?;
    match map.get("credential") {
        None => Err(ApiError::Validation(vec![Issue::missing(
            "credential",
            Value::Object(map.clone()),
        )])),
        Some(Value::Object(_)) => serde_json::from_value(map["credential"].clone())
            .map_err(|e| passkey_error(PasskeyError::Rejected(e.to_string()))),
        Some(other) => Err(ApiError::Validation(vec![Issue {
            kind: "dict_type",
            loc: Issue::body_field("credential"),
            msg: "Input should be a valid dictionary".into(),
            input: other.clone(),
            ctx: None,
        }])),
    }
}

/// The challenge an answer signed, from its client data.
fn challenge(client_data_json: &[u8]) -> Result<Vec<u8>, ApiError> {
    challenge_of(client_data_json).ok_or(ApiError::PasskeyRejected)
}

impl App {
    /// `POST /auth/mfa/webauthn/register/start` `{"name"?}`: options to create a passkey.
    pub(crate) async fn passkey_register_start(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let body = forms::decode_json_body(req.content_type.as_deref(), &req.body)?;
        let db = users::client(&self.pool).await?;
        let (account, token) = self.authenticate_any_level(&db, req).await?;
        Self::require_aal2_if_enrolled(&account, &token)?;
        let name = factor_name(body)?;
        let user = &account.user;
        room_for_a_factor(&db, &user.id).await?;
        let existing = passkeys::credentials_of(&db, &user.id).await?;
        let started = self
            .passkeys
            .start_registration(
                &user.id,
                &user.email,
                user.full_name.as_deref().unwrap_or_default(),
                &existing,
            )
            .map_err(passkey_error)?;
        let begun = Begun {
            user_id: Some(user.id.clone()),
            session_id: token.session_id,
            name,
            state: started.state.clone(),
        };
        passkeys::begin(&db, Ceremony::Register, &started.challenge, &begun).await?;
        Ok(options_reply(&started))
    }

    /// `POST /auth/mfa/webauthn/register/finish` `{"credential"}`: 201 `{"factor_id",
    /// "recovery_codes"}` (ten with the first factor, `null` after); this session becomes
    /// `aal2` (the passkey was used, with user verification, to register).
    pub(crate) async fn passkey_register_finish(
        &self,
        req: &OwnRequest,
    ) -> Result<Reply, ApiError> {
        let body = forms::decode_json_body(req.content_type.as_deref(), &req.body)?;
        let mut db = users::client(&self.pool).await?;
        let (account, token) = self.authenticate_any_level(&db, req).await?;
        Self::require_aal2_if_enrolled(&account, &token)?;
        let answer: RegisterPublicKeyCredential = credential(body)?;
        let challenge = challenge(&answer.response.client_data_json)?;
        let user_id = account.user.id.as_str();
        let begun = passkeys::take(&db, Ceremony::Register, &challenge)
            .await?
            .filter(|b| b.user_id.as_deref() == Some(user_id) && b.session_id == token.session_id)
            .ok_or(ApiError::PasskeyRejected)?;
        let registered = self
            .passkeys
            .finish_registration(&answer, &begun.state)
            .map_err(passkey_error)?;
        let id = Uuid::new_v4();
        let tx = db.transaction().await.map_err(users::db_error)?;
        users::lock(&tx, user_id).await?;
        room_for_a_factor(&tx, user_id).await?;
        if passkeys::registered(&tx, &registered.credential_id).await? {
            return Err(ApiError::MfaConflict("This passkey is already registered"));
        }
        passkeys::insert(
            &tx,
            &id,
            user_id,
            &begun.name,
            &registered.credential_id,
            &registered.credential,
        )
        .await?;
        let enrolled = Enrolled {
            factor_id: id,
            kind: "webauthn",
            method: "hwk",
            notice: "A passkey was added to",
        };
        let codes = self
            .factor_enrolled(&tx, req, &account, &token, enrolled)
            .await?;
        tx.commit().await.map_err(users::db_error)?;
        self.changed(user_id);
        self.mail_written();
        Ok(
            Reply::json(201, &json!({ "factor_id": id, "recovery_codes": codes }))
                .with_header("cache-control", "no-store"),
        )
    }

    /// `POST /auth/mfa/webauthn/verify/start`: options to use one of the user's passkeys.
    pub(crate) async fn passkey_verify_start(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let db = users::client(&self.pool).await?;
        let (account, token) = self.authenticate_any_level(&db, req).await?;
        let session = session_to_raise(&token)?;
        let credentials = passkeys::credentials_of(&db, &account.user.id).await?;
        if credentials.is_empty() {
            return Err(ApiError::MfaConflict("No passkey: register one first"));
        }
        let started = self
            .passkeys
            .start_verification(&credentials)
            .map_err(passkey_error)?;
        let begun = Begun {
            user_id: Some(account.user.id.clone()),
            session_id: Some(session),
            name: String::new(),
            state: started.state.clone(),
        };
        passkeys::begin(&db, Ceremony::Verify, &started.challenge, &begun).await?;
        Ok(options_reply(&started))
    }

    /// `POST /auth/mfa/webauthn/verify/finish` `{"credential"}`: 200 `{"aal": "aal2"}`. Counts
    /// against the user's second-factor attempts like a code.
    pub(crate) async fn passkey_verify_finish(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let body = forms::decode_json_body(req.content_type.as_deref(), &req.body)?;
        let mut db = users::client(&self.pool).await?;
        let (account, token) = self.authenticate_any_level(&db, req).await?;
        let answer: PublicKeyCredential = credential(body)?;
        let user_id = account.user.id.as_str();
        let session = session_to_raise(&token)?;
        self.limiters
            .mfa(user_id)
            .await
            .map_err(refused(MFA_LIMITED))?;
        let challenge = challenge(&answer.response.client_data_json)?;
        let begun = passkeys::take(&db, Ceremony::Verify, &challenge)
            .await?
            .filter(|b| b.user_id.as_deref() == Some(user_id) && b.session_id == Some(session));
        let checked = match &begun {
            Some(begun) => self
                .passkeys
                .finish_verification(&answer, &begun.state)
                .map_err(passkey_error),
            None => Err(ApiError::PasskeyRejected),
        };
        let used = match checked {
            Ok(used) => used,
            Err(e) => {
                if begun.is_some() {
                    let detail = json!({ "method": "webauthn" });
                    self.audit(
                        &db,
                        req,
                        Kind::MfaFailed,
                        Some(user_id),
                        Some(session),
                        detail,
                    )
                    .await?;
                }
                return Err(e);
            }
        };
        // The one credential that signed (the state allowed only this user's).
        let stored = passkeys::by_credential_id(&db, used.credential_id()).await?;
        let tx = db.transaction().await.map_err(users::db_error)?;
        if let Some(stored) = stored.filter(|s| s.user_id == user_id) {
            let updated = used.updated(&stored.credential);
            passkeys::used(&tx, &stored.factor_id, updated.as_ref()).await?;
        }
        if !mfa::raise(&tx, user_id, &session, "hwk").await? {
            return Err(ApiError::InvalidToken);
        }
        self.audit(
            &tx,
            req,
            Kind::MfaVerified,
            Some(user_id),
            Some(session),
            json!({ "method": "webauthn" }),
        )
        .await?;
        tx.commit().await.map_err(users::db_error)?;
        self.changed(user_id);
        Ok(Reply::json(200, &json!({ "aal": "aal2" })))
    }

    /// `POST /auth/passkey/start` (an empty object, or no body): options for a passwordless
    /// sign-in. Charged to the login limit of the caller's address.
    pub(crate) async fn passkey_login_start(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        if self.refresh_cookie.is_some() {
            self.check_browser_request(req)?;
        }
        if let Some(body) = forms::decode_json_body(req.content_type.as_deref(), &req.body)? {
            forms::object(Some(body))?;
        }
        self.limiters
            .passkey_login(req.client_ip)
            .await
            .map_err(refused(LOGIN_LIMITED))?;
        let started = self.passkeys.start_passwordless().map_err(passkey_error)?;
        let begun = Begun {
            user_id: None,
            session_id: None,
            name: String::new(),
            state: started.state.clone(),
        };
        let db = self.floodable_client().await?;
        passkeys::begin(&*db, Ceremony::Passwordless, &started.challenge, &begun).await?;
        Ok(options_reply(&started))
    }

    /// `POST /auth/passkey/finish` `{"credential"}`: the `TokenResponse` of a new `aal2`
    /// session for the passkey's owner.
    pub(crate) async fn passkey_login_finish(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        if self.refresh_cookie.is_some() {
            self.check_browser_request(req)?;
        }
        let body = forms::decode_json_body(req.content_type.as_deref(), &req.body)?;
        let answer: PublicKeyCredential = credential(body)?;
        let challenge = challenge(&answer.response.client_data_json)?;
        let mut db = self.floodable_client().await?;
        // No ceremony, no work: an answer that no start issued costs one statement.
        let begun = passkeys::take(&*db, Ceremony::Passwordless, &challenge)
            .await?
            .ok_or(ApiError::PasskeyRejected)?;
        let outcome = self.passwordless_user(&*db, &answer, &begun).await?;
        let user = match outcome {
            Ok(user) => user,
            Err((user_id, reason)) => {
                let detail = json!({ "reason": reason, "method": "passkey" });
                self.audit(
                    &*db,
                    req,
                    Kind::LoginFailed,
                    user_id.as_deref(),
                    None,
                    detail,
                )
                .await?;
                return Err(ApiError::PasskeyRejected);
            }
        };
        let tx = db.transaction().await.map_err(users::db_error)?;
        let reply = self
            .start_session(&tx, &user, req, Kind::LoginSucceeded, true)
            .await?;
        tx.commit().await.map_err(users::db_error)?;
        Ok(reply)
    }

    /// Who a passwordless answer signs in: the passkey's owner if the answer passes and they
    /// may sign in (the passkey's use is recorded); otherwise who it named, if anyone, and why
    /// not.
    async fn passwordless_user(
        &self,
        db: &impl deadpool_postgres::GenericClient,
        answer: &PublicKeyCredential,
        begun: &Begun,
    ) -> Result<Result<users::User, (Option<String>, &'static str)>, ApiError> {
        let Ok((handle, credential_id)) = self.passkeys.identify(answer) else {
            return Ok(Err((None, "unknown_passkey")));
        };
        let Some(stored) = passkeys::by_credential_id(db, &credential_id).await? else {
            return Ok(Err((None, "unknown_passkey")));
        };
        if Passkeys::user_handle(&stored.user_id) != handle {
            return Ok(Err((Some(stored.user_id), "wrong_user_handle")));
        }
        let used = match self
            .passkeys
            .finish_passwordless(answer, &begun.state, &stored.credential)
        {
            Ok(used) => used,
            Err(PasskeyError::Rejected(why)) => {
                tracing::debug!(why, "passwordless answer rejected");
                return Ok(Err((Some(stored.user_id), "passkey_rejected")));
            }
            Err(PasskeyError::Internal(e)) => return Err(ApiError::Internal(e)),
        };
        let user = match users::find_by_id(db, &stored.user_id).await? {
            Some(user) if user.is_active => user,
            _ => return Ok(Err((Some(stored.user_id), "inactive"))),
        };
        let updated = used.updated(&stored.credential);
        passkeys::used(db, &stored.factor_id, updated.as_ref()).await?;
        Ok(Ok(user))
    }
}
