//! Changes a signed-in user makes to their own account: the password
//! (`POST /auth/users/me/password`).

use std::sync::Arc;

use crate::credentials::password::{self, PasswordError};
use crate::own::api::{ApiError, Reply};
use crate::own::app::{hashing_error, refused, App, OwnRequest, LOGIN_LIMITED};
use crate::own::forms;
use crate::store::account_tokens::{self, Purpose};
use crate::store::audit::Kind;
use crate::store::{sessions, users};

impl App {
    /// A new password, given the current one (limited like a login, since it is a guess at the
    /// password too). On success every other session ends, and so do the user's tokens that
    /// belong to no session; this session goes on with new tokens (a `TokenResponse`, its
    /// refresh token rotated). A caller whose token has no session gets a new one. Reset links
    /// already sent stop working, and a notice goes to the account's address.
    pub(crate) async fn change_password(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let body = forms::decode_json_body(req.content_type.as_deref(), &req.body)?;
        let (account, token) = {
            let db = users::client(&self.pool).await?;
            self.authenticate(&db, req).await?
        };
        let change = forms::validate_password_change(body)?;
        let user = account.user;
        self.limiters
            .login(req.client_ip, &user.email)
            .await
            .map_err(refused(LOGIN_LIMITED))?;
        // No connection is held while the hashing queue works.
        let policy = self.policy;
        let stored: Arc<str> = Arc::from(user.hashed_password.as_str());
        let check = Arc::clone(&stored);
        let new_hash = self
            .hasher
            .run(move || {
                let ok = match password::verify(&change.current_password, &check) {
                    Ok(ok) => ok,
                    Err(PasswordError::UnknownScheme | PasswordError::Malformed(_)) => false,
                    Err(e) => return Err(e),
                };
                ok.then(|| policy.hash(&change.new_password)).transpose()
            })
            .await
            .map_err(hashing_error)?
            .ok_or(ApiError::WrongPassword)?;
        let mut db = users::client(&self.pool).await?;
        let tx = db
            .transaction()
            .await
            .map_err(crate::store::users::db_error)?;
        // Only if the password is still the one just checked (a concurrent change wins).
        if !users::replace_password_hash(&tx, &user.id, &stored, &new_hash).await? {
            return Err(ApiError::WrongPassword);
        }
        users::refuse_sessionless_tokens(&tx, &user.id).await?;
        sessions::revoke_all_but(&tx, &user.id, token.session_id.as_ref()).await?;
        account_tokens::end_all(&tx, &user.id, Purpose::PasswordReset).await?;
        self.write_mail(&tx, &self.letters.password_changed(&user.email, false))
            .await?;
        self.audit(
            &tx,
            req,
            Kind::PasswordChanged,
            Some(&user.id),
            token.session_id,
            serde_json::json!({}),
        )
        .await?;
        let (session, generation) = match token.session_id {
            Some(session) => (session, sessions::advance(&tx, &session).await?),
            None => {
                let address = req.client_ip.map(|ip| ip.to_string());
                let session = sessions::create(
                    &tx,
                    &user.id,
                    self.lifetimes,
                    req.user_agent.as_deref(),
                    address.as_deref(),
                )
                .await?;
                (session, 0)
            }
        };
        tx.commit().await.map_err(crate::store::users::db_error)?;
        self.changed(&user.id);
        self.mail_written();
        self.token_reply(&user, &session, generation)
    }
}
