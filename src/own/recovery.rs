//! Password reset: `POST /auth/password-reset` sends a link to the account's address, and
//! `POST /auth/password-reset/confirm` sets a new password with the link's token.
//!
//! The request's answer says nothing about the account: it is the same 202, given before the
//! account is even looked up (the lookup, the token and the mail happen after the answer has
//! gone), so a known and an unknown address answer in the same time. Requests are limited per
//! client address (429) and, silently, per account: at most one mail a minute and five an hour,
//! counted in PostgreSQL so that every instance counts alike.

use std::sync::Arc;

use crate::own::api::{ApiError, Reply};
use crate::own::app::{find_account, hashing_error, refused, App, OwnRequest};
use crate::own::forms;
use crate::store::account_tokens::{self, Purpose};
use crate::store::audit::{Kind, Origin};
use crate::store::{sessions, users};

use crate::credentials::one_time::OneTimeToken;

/// The answer to every accepted reset request.
pub const RESET_REQUESTED: &str =
    "If an account exists for this address, a password reset link has been sent to it";
/// Reset mails one account may get per minute and per hour.
const RESETS_PER_MINUTE: i64 = 1;
const RESETS_PER_HOUR: i64 = 5;

impl App {
    /// `POST /auth/password-reset` `{email}`: 202, whatever the address.
    pub(crate) async fn request_password_reset(
        self: &Arc<Self>,
        req: &OwnRequest,
    ) -> Result<Reply, ApiError> {
        self.limiters
            .password_reset(req.client_ip)
            .await
            .map_err(refused("Too many password reset requests, try again later"))?;
        let body = forms::decode_json_body(req.content_type.as_deref(), &req.body)?;
        let email = forms::validate_reset_request(body)?;
        let permit = Arc::clone(&self.reset_jobs)
            .try_acquire_owned()
            .map_err(|_| ApiError::Busy)?;
        let app = Arc::clone(self);
        let origin = req.origin();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = app.send_reset_link(&email, &origin).await {
                tracing::warn!(error = %e, "a password reset request could not be carried out");
            }
        });
        Ok(Reply::json(
            202,
            &serde_json::json!({ "detail": RESET_REQUESTED }),
        ))
    }

    /// The work of a reset request, after its answer: a link to an active account, within the
    /// account's limits; nothing otherwise.
    async fn send_reset_link(&self, email: &str, origin: &Origin) -> Result<(), ApiError> {
        // A flood of requests (any address may be asked for) stays within the share of the
        // pool that logins and registrations have.
        let mut db = self.floodable_client().await?;
        let Some(user) = find_account(&db, email).await? else {
            return Ok(());
        };
        if !user.is_active {
            return Ok(());
        }
        let tx = db.transaction().await.map_err(users::db_error)?;
        // Concurrent requests for one account take turns, so the limits count each of them.
        users::lock(&tx, &user.id).await?;
        let (last_minute, last_hour) =
            account_tokens::recent(&tx, &user.id, Purpose::PasswordReset).await?;
        if last_minute >= RESETS_PER_MINUTE || last_hour >= RESETS_PER_HOUR {
            tracing::info!(user_id = %user.id, "password reset mail held back by the per-account limit");
            return Ok(());
        }
        self.send_link(&tx, &user, Purpose::PasswordReset).await?;
        self.audit_by(
            &tx,
            origin,
            Kind::PasswordResetRequested,
            Some(&user.id),
            None,
            None,
            serde_json::json!({}),
        )
        .await?;
        tx.commit().await.map_err(users::db_error)?;
        self.mail_written();
        Ok(())
    }

    /// `POST /auth/password-reset/confirm` `{token, new_password}`: the new password, every
    /// session and earlier token ended, the address marked verified; no sign-in.
    pub(crate) async fn confirm_password_reset(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let body = forms::decode_json_body(req.content_type.as_deref(), &req.body)?;
        let (token, new_password) = forms::validate_reset_confirm(body)?;
        let token_hash = OneTimeToken::hash_of_text(&token).ok_or(ApiError::InvalidOneTimeToken)?;
        // A token that is not live costs no hashing work.
        {
            let db = users::client(&self.pool).await?;
            account_tokens::holder(&db, &token_hash, Purpose::PasswordReset)
                .await?
                .ok_or(ApiError::InvalidOneTimeToken)?;
        }
        let policy = self.policy;
        let new_hash = self
            .hasher
            .run(move || policy.hash(&new_password))
            .await
            .map_err(hashing_error)?;
        let mut db = users::client(&self.pool).await?;
        let tx = db.transaction().await.map_err(users::db_error)?;
        // Used up here, so of two confirmations with one token only one gets through.
        let (user_id, _) = account_tokens::consume(&tx, &token_hash, Purpose::PasswordReset)
            .await?
            .ok_or(ApiError::InvalidOneTimeToken)?;
        let was_verified = users::find_by_id(&tx, &user_id)
            .await?
            .is_some_and(|u| u.email_verified);
        let user = users::reset_password(&tx, &user_id, &new_hash)
            .await?
            .ok_or(ApiError::InvalidOneTimeToken)?;
        sessions::revoke_all_but(&tx, &user.id, None).await?;
        account_tokens::end_all(&tx, &user.id, Purpose::PasswordReset).await?;
        account_tokens::end_all(&tx, &user.id, Purpose::VerifyEmail).await?;
        self.write_mail(&tx, &self.letters.password_changed(&user.email, true))
            .await?;
        let detail = serde_json::json!({ "email_verified": !was_verified });
        self.audit(&tx, req, Kind::PasswordReset, Some(&user.id), None, detail)
            .await?;
        if !was_verified {
            // The link proved the address too.
            self.audit(
                &tx,
                req,
                Kind::EmailVerified,
                Some(&user.id),
                None,
                serde_json::json!({"by": "password_reset"}),
            )
            .await?;
        }
        tx.commit().await.map_err(users::db_error)?;
        self.changed(&user.id);
        self.mail_written();
        Ok(Reply::json(
            200,
            &serde_json::json!({ "detail": "Password has been reset" }),
        ))
    }
}
