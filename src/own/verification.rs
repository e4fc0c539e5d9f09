//! Email verification: registration sends a link (see `App::register`);
//! `POST /auth/verify-email` proves the address with the link's token, and
//! `POST /auth/verify-email/resend` sends a new link to a signed-in user.

use crate::credentials::one_time::OneTimeToken;
use crate::own::api::{ApiError, Reply};
use crate::own::app::{App, OwnRequest};
use crate::own::forms;
use crate::store::account_tokens::{self, Purpose};
use crate::store::audit::Kind;
use crate::store::users;

/// Verification mails one account may get per minute and per hour (registration's included).
const LINKS_PER_MINUTE: i64 = 1;
const LINKS_PER_HOUR: i64 = 5;

impl App {
    /// `POST /auth/verify-email` `{token}`: the user, their address now verified. A token
    /// works once, and only for the address it was sent to.
    pub(crate) async fn verify_email(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let body = forms::decode_json_body(req.content_type.as_deref(), &req.body)?;
        let token = forms::validate_verify_email(body)?;
        let token_hash = OneTimeToken::hash_of_text(&token).ok_or(ApiError::InvalidOneTimeToken)?;
        let mut db = users::client(&self.pool).await?;
        let tx = db.transaction().await.map_err(users::db_error)?;
        let (user_id, email) = account_tokens::consume(&tx, &token_hash, Purpose::VerifyEmail)
            .await?
            .ok_or(ApiError::InvalidOneTimeToken)?;
        let user = users::mark_email_verified(&tx, &user_id, &email)
            .await?
            .ok_or(ApiError::InvalidOneTimeToken)?;
        self.audit(
            &tx,
            req,
            Kind::EmailVerified,
            Some(&user.id),
            None,
            serde_json::json!({}),
        )
        .await?;
        tx.commit().await.map_err(users::db_error)?;
        self.changed(&user.id);
        Ok(Reply::json(200, &user.response()))
    }

    /// `POST /auth/verify-email/resend` (signed in): 202, a new link (the older ones void) unless
    /// the address is verified already; 429 within a minute of the last link.
    pub(crate) async fn resend_verification(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let mut db = users::client(&self.pool).await?;
        let (account, _) = self.authenticate(&db, req).await?;
        let user = account.user;
        let sent = Reply::json(
            202,
            &serde_json::json!({ "detail": "Verification email sent" }),
        );
        if user.email_verified {
            return Ok(Reply::json(
                202,
                &serde_json::json!({ "detail": "Email already verified" }),
            ));
        }
        let tx = db.transaction().await.map_err(users::db_error)?;
        users::lock(&tx, &user.id).await?;
        let (last_minute, last_hour) =
            account_tokens::recent(&tx, &user.id, Purpose::VerifyEmail).await?;
        if last_minute >= LINKS_PER_MINUTE || last_hour >= LINKS_PER_HOUR {
            crate::metrics::metrics().rate_limited(crate::metrics::Limit::VerificationResend);
            return Err(ApiError::TooManyRequests {
                retry_after_secs: if last_hour >= LINKS_PER_HOUR {
                    3600
                } else {
                    60
                },
                detail: "A verification email was sent recently, try again later",
            });
        }
        self.send_link(&tx, &user, Purpose::VerifyEmail).await?;
        tx.commit().await.map_err(users::db_error)?;
        self.mail_written();
        Ok(sent)
    }
}
