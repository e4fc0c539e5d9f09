//! The session endpoints: refresh (`POST /auth/refresh`, and `POST /auth/token` with
//! `grant_type=refresh_token`), logout, and the caller's sessions (`GET /auth/sessions`,
//! `DELETE /auth/sessions/{id}`). Sessions themselves are made by login and registration
//! (`own::app`); how refresh tokens are made is `credentials::refresh`, how rotation is stored
//! `store::sessions`.

use serde::Serialize;
use uuid::Uuid;

use crate::own::api::{ApiError, Reply};
use crate::own::app::{refused, App, OwnRequest};
use crate::own::forms::{self, LogoutScope};
use crate::store::audit::Kind;
use crate::store::sessions::{self, Refresh};
use crate::store::users::{self, rfc3339};

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

impl App {
    /// In browser mode, a request that uses or sets the refresh cookie (refresh, logout by
    /// cookie, login, registration) must come from one of the configured origins' pages:
    /// `X-Requested-With` (a page on another site cannot add a custom header without a CORS
    /// preflight, which the gateway refuses it) and an `Origin` in `cors.origins`. Without it,
    /// a form on another site could sign the victim's browser in to the attacker's account.
    pub(crate) fn check_browser_request(&self, req: &OwnRequest) -> Result<(), ApiError> {
        let allowed = req
            .origin
            .as_deref()
            .is_some_and(|o| self.cors.allowed_origin(o).is_some());
        if req.requested_with && allowed {
            Ok(())
        } else {
            Err(ApiError::CrossSite)
        }
    }

    /// `POST /auth/refresh` with `{"refresh_token": "..."}`, or in browser mode with the
    /// cookie alone (a token that fails also clears it).
    pub(crate) async fn refresh(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        if let Some(cookie) = &self.refresh_cookie {
            self.check_browser_request(req)?;
            let token = req.refresh_cookie.as_deref().unwrap_or_default();
            return match self.refresh_with(req, token).await {
                Err(ApiError::InvalidGrant) => Ok(ApiError::InvalidGrant
                    .into_reply()
                    .with_header("set-cookie", cookie.clear())),
                other => other,
            };
        }
        let body = forms::decode_json_body(req.content_type.as_deref(), &req.body)?;
        let token = forms::refresh_token_of(body)?.ok_or(ApiError::InvalidGrant)?;
        self.refresh_with(req, &token).await
    }

    /// A refresh: the session's next tokens, the current ones for a token rotated away within
    /// the grace period, and 400 `invalid_grant` for anything else — unknown, forged, ended,
    /// reused after the grace period (which also ends the session), or a user who is gone or
    /// inactive.
    pub(crate) async fn refresh_with(
        &self,
        req: &OwnRequest,
        token: &str,
    ) -> Result<Reply, ApiError> {
        // A token this gateway did not make costs no database work and revokes nothing (nor
        // does it count against the address's refresh limit).
        let claim = self.refresh_key.open(token).ok_or(ApiError::InvalidGrant)?;
        self.limiters
            .refresh(req.client_ip)
            .await
            .map_err(refused("Too many refreshes, try again later"))?;
        let mut db = self.floodable_client().await?;
        // A reuse ends the session and is recorded: one transaction.
        let tx = db.transaction().await.map_err(users::db_error)?;
        let (user_id, generation) =
            match sessions::rotate(&tx, &claim.session_id, claim.generation, self.lifetimes).await?
            {
                Refresh::Rotated {
                    user_id,
                    generation,
                } => (user_id, generation),
                Refresh::Current {
                    user_id,
                    generation,
                } => {
                    tracing::debug!(
                        session_id = %claim.session_id,
                        token_generation = claim.generation,
                        current_generation = generation,
                        "refresh token rotated away within the grace period: the current pair"
                    );
                    (user_id, generation)
                }
                Refresh::Reused {
                    user_id,
                    generations_behind,
                    rotated_ago,
                } => {
                    tracing::warn!(
                        session_id = %claim.session_id,
                        generations_behind,
                        rotated_seconds_ago = rotated_ago,
                        grace_seconds = self.lifetimes.reuse_grace.as_secs_f64(),
                        "refresh token reused: it was rotated away longer ago than the grace \
                         period; session revoked"
                    );
                    let detail = serde_json::json!({ "generations_behind": generations_behind });
                    self.audit(
                        &tx,
                        req,
                        Kind::RefreshReuseDetected,
                        Some(&user_id),
                        Some(claim.session_id),
                        detail,
                    )
                    .await?;
                    tx.commit().await.map_err(users::db_error)?;
                    return Err(ApiError::InvalidGrant);
                }
                Refresh::Ended => return Err(ApiError::InvalidGrant),
            };
        let user = users::find_by_id(&tx, &user_id)
            .await?
            .filter(|u| u.is_active)
            .ok_or(ApiError::InvalidGrant)?;
        tx.commit().await.map_err(users::db_error)?;
        self.token_reply(&user, &claim.session_id, generation)
    }

    /// `POST /auth/logout?scope=local|others|global`: 204, also when the session had already
    /// ended. `local` ends the token's session (for a token without one, like the seed's:
    /// every such token of the user); `others` every other session; `global` all of them and
    /// every token without a session. In browser mode the refresh cookie may stand for the
    /// access token (then checked like a refresh), and the answer clears it.
    pub(crate) async fn logout(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let scope = forms::logout_scope(req.query.as_deref())?;
        let Some(cookie) = &self.refresh_cookie else {
            return self.logout_by_token(req, scope).await;
        };
        let done = match (&req.authorization, &req.refresh_cookie) {
            (None, Some(value)) => {
                self.check_browser_request(req)?;
                self.logout_by_cookie(req, value, scope).await?
            }
            _ => self.logout_by_token(req, scope).await?,
        };
        Ok(done.with_header("set-cookie", cookie.clear()))
    }

    /// Logout by the refresh cookie's session (any generation of it: the token was issued here).
    async fn logout_by_cookie(
        &self,
        req: &OwnRequest,
        value: &str,
        scope: LogoutScope,
    ) -> Result<Reply, ApiError> {
        let Some(claim) = self.refresh_key.open(value) else {
            return Ok(Reply::no_content());
        };
        let mut db = users::client(&self.pool).await?;
        let Some(user_id) = sessions::owner(&db, &claim.session_id).await? else {
            // Ended already: nothing left to do.
            return Ok(Reply::no_content());
        };
        self.end_sessions(&mut db, req, &user_id, scope, Some(claim.session_id))
            .await?;
        Ok(Reply::no_content())
    }

    async fn logout_by_token(
        &self,
        req: &OwnRequest,
        scope: LogoutScope,
    ) -> Result<Reply, ApiError> {
        let mut db = users::client(&self.pool).await?;
        let (account, token) = match self.authenticate_any_level(&db, req).await {
            Ok(caller) => caller,
            // Logging out of a session that has ended already: nothing left to do.
            Err(ApiError::InvalidToken) if scope == LogoutScope::Local => {
                return Ok(Reply::no_content());
            }
            Err(e) => return Err(e),
        };
        self.end_sessions(&mut db, req, &account.user.id, scope, token.session_id)
            .await?;
        Ok(Reply::no_content())
    }

    /// `GET /auth/sessions`: the caller's live sessions, newest first.
    pub(crate) async fn list_sessions(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let db = users::client(&self.pool).await?;
        let (account, token) = self.authenticate(&db, req).await?;
        let list: Vec<SessionResponse> =
            sessions::list_live(&db, &account.user.id, self.lifetimes.max_per_user)
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
        let mut db = users::client(&self.pool).await?;
        let (account, _) = self.authenticate(&db, req).await?;
        let id = req
            .path
            .strip_prefix("/auth/sessions/")
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or(ApiError::SessionNotFound)?;
        let tx = db.transaction().await.map_err(users::db_error)?;
        if !sessions::revoke(&tx, &account.user.id, &id).await? {
            return Err(ApiError::SessionNotFound);
        }
        let user = Some(account.user.id.as_str());
        self.audit(
            &tx,
            req,
            Kind::SessionRevoked,
            user,
            Some(id),
            serde_json::json!({}),
        )
        .await?;
        tx.commit().await.map_err(users::db_error)?;
        self.changed(&account.user.id);
        Ok(Reply::no_content())
    }
}

impl App {
    /// What a logout of `scope` ends for `user_id`, asked from `session` (`None`: a token
    /// without one), and its event: one transaction.
    async fn end_sessions(
        &self,
        db: &mut deadpool_postgres::Client,
        req: &OwnRequest,
        user_id: &str,
        scope: LogoutScope,
        session: Option<Uuid>,
    ) -> Result<(), ApiError> {
        let tx = db.transaction().await.map_err(users::db_error)?;
        match (scope, session) {
            (LogoutScope::Local, Some(session)) => {
                sessions::revoke(&tx, user_id, &session).await?;
            }
            (LogoutScope::Local, None) => users::refuse_sessionless_tokens(&tx, user_id).await?,
            (LogoutScope::Others, session) => {
                sessions::revoke_all_but(&tx, user_id, session.as_ref()).await?;
            }
            (LogoutScope::Global, _) => {
                sessions::end_everything(&tx, user_id).await?;
            }
        }
        let detail = serde_json::json!({ "scope": scope.name() });
        self.audit(&tx, req, Kind::Logout, Some(user_id), session, detail)
            .await?;
        tx.commit().await.map_err(users::db_error)?;
        self.changed(user_id);
        Ok(())
    }
}
