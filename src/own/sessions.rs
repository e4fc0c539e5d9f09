//! The session endpoints: refresh (`POST /auth/refresh`, and `POST /auth/token` with
//! `grant_type=refresh_token`), logout, and the caller's sessions (`GET /auth/sessions`,
//! `DELETE /auth/sessions/{id}`). Sessions themselves are made by login and registration
//! (`own::app`); how refresh tokens are made is `credentials::refresh`, how rotation is stored
//! `store::sessions`.

use serde::Serialize;
use uuid::Uuid;

use crate::own::api::{ApiError, Reply};
use crate::own::app::{App, OwnRequest};
use crate::own::forms::{self, LogoutScope};
use crate::store::sessions::{self, Refresh};
use crate::store::users;

/// One session in `GET /auth/sessions`.
#[derive(Serialize)]
struct SessionResponse {
    id: Uuid,
    created_at: String,
    last_used_at: String,
    user_agent: Option<String>,
    ip_address: Option<String>,
    /// The session of the token that asked.
    current: bool,
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

impl App {
    /// `POST /auth/refresh` with `{"refresh_token": "..."}`.
    pub(crate) async fn refresh(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let body = forms::decode_json_body(req.content_type.as_deref(), &req.body)?;
        let token = forms::refresh_token_of(body)?.ok_or(ApiError::InvalidGrant)?;
        self.refresh_with(&token).await
    }

    /// A refresh: the session's next tokens, the current ones for a token rotated away within
    /// the grace period, and 400 `invalid_grant` for anything else — unknown, forged, ended,
    /// reused after the grace period (which also ends the session), or a user who is gone or
    /// inactive.
    pub(crate) async fn refresh_with(&self, token: &str) -> Result<Reply, ApiError> {
        // A token this gateway did not make costs no database work and revokes nothing.
        let claim = self.refresh_key.open(token).ok_or(ApiError::InvalidGrant)?;
        let db = self.floodable_client().await?;
        let (user_id, generation) = match sessions::rotate(
            &*db,
            &claim.session_id,
            claim.generation,
            self.lifetimes,
        )
        .await?
        {
            Refresh::Rotated {
                user_id,
                generation,
            }
            | Refresh::Current {
                user_id,
                generation,
            } => (user_id, generation),
            Refresh::Reused => {
                tracing::warn!(session_id = %claim.session_id, "refresh token reused after its grace period; session revoked");
                return Err(ApiError::InvalidGrant);
            }
            Refresh::Ended => return Err(ApiError::InvalidGrant),
        };
        let user = users::find_by_id(&*db, &user_id)
            .await?
            .filter(|u| u.is_active)
            .ok_or(ApiError::InvalidGrant)?;
        self.token_reply(&user, &claim.session_id, generation)
    }

    /// `POST /auth/logout?scope=local|others|global`: 204, also when the session had already
    /// ended. `local` ends the token's session (for a token without one, like the seed's:
    /// every such token of the user); `others` every other session; `global` all of them and
    /// every token without a session.
    pub(crate) async fn logout(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let scope = forms::logout_scope(req.query.as_deref())?;
        let db = users::client(&self.pool).await?;
        let (account, token) = match self.authenticate(&db, req).await {
            Ok(caller) => caller,
            // Logging out of a session that has ended already: nothing left to do.
            Err(ApiError::InvalidToken) if scope == LogoutScope::Local => {
                return Ok(Reply::no_content());
            }
            Err(e) => return Err(e),
        };
        let user_id = &account.user.id;
        match (scope, token.session_id) {
            (LogoutScope::Local, Some(session)) => {
                sessions::revoke(&db, user_id, &session).await?;
            }
            (LogoutScope::Local, None) => users::refuse_sessionless_tokens(&db, user_id).await?,
            (LogoutScope::Others, session) => {
                sessions::revoke_all_but(&db, user_id, session.as_ref()).await?;
            }
            (LogoutScope::Global, _) => {
                sessions::revoke_all_but(&db, user_id, None).await?;
                users::refuse_sessionless_tokens(&db, user_id).await?;
            }
        }
        Ok(Reply::no_content())
    }

    /// `GET /auth/sessions`: the caller's live sessions, newest first.
    pub(crate) async fn list_sessions(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let db = users::client(&self.pool).await?;
        let (account, token) = self.authenticate(&db, req).await?;
        let list: Vec<SessionResponse> = sessions::list_live(&db, &account.user.id)
            .await?
            .into_iter()
            .map(|s| SessionResponse {
                current: token.session_id == Some(s.id),
                id: s.id,
                created_at: rfc3339(s.created_at),
                last_used_at: rfc3339(s.last_used_at),
                user_agent: s.user_agent,
                ip_address: s.client_address,
            })
            .collect();
        Ok(Reply::json(200, &list))
    }

    /// `DELETE /auth/sessions/{id}`: ends one of the caller's sessions (204); anyone else's,
    /// or one that has ended, is 404.
    pub(crate) async fn end_session(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let db = users::client(&self.pool).await?;
        let (account, _) = self.authenticate(&db, req).await?;
        let id = req
            .path
            .strip_prefix("/auth/sessions/")
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or(ApiError::SessionNotFound)?;
        if sessions::revoke(&db, &account.user.id, &id).await? {
            Ok(Reply::no_content())
        } else {
            Err(ApiError::SessionNotFound)
        }
    }
}
