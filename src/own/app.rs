//! The gateway's shared state and its own endpoints (the seed's API, `/health`, `/ready`).
//! Handlers take a decoded request and return a [`Reply`]; the pingora glue lives in `edge::proxy`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use deadpool_postgres::Pool;
use serde::Serialize;
use uuid::Uuid;

use crate::config::Config;
use crate::credentials::assertion::Assertions;
use crate::credentials::email;
use crate::credentials::one_time::{OneTimeToken, SealKey};
use crate::credentials::password::{self, HashPolicy, HashPool, PasswordError};
use crate::credentials::rate_limit::{RateLimits, Refused};
use crate::credentials::refresh::RefreshKey;
use crate::credentials::token::{self, unix_seconds, TokenError, TokenKeys, Verified};
use crate::mail::{outbox, Letters, Mail};
use crate::metrics::{metrics, LoginOutcome};
use crate::own::api::{ApiError, Reply};
use crate::own::cors::Cors;
use crate::own::endpoints::Endpoint;
use crate::own::forms::{self, TokenForm};
use crate::store::account_tokens::{self, Purpose};
use crate::store::audit::{self, Kind};
use crate::store::db::Readiness;
use crate::store::directory;
use crate::store::sessions;
use crate::store::user_cache::{bounded_cache, BoundedCache, Cached, UserCache, UserState};
use crate::store::users::{self, Account, User, UserResponse};
use crate::store::StoreError;

const TOKEN_CACHE_CAPACITY: usize = 20_000;
/// Password-reset requests being worked on after their answers (a small future each, waiting
/// for a connection from the logins' share); beyond, 503 for every address alike.
const RESET_JOBS: usize = 1024;

pub struct App {
    pub pool: Pool,
    pub users: Arc<UserCache>,
    pub limiters: Arc<RateLimits>,
    /// `X-Identity-Assertion` for upstreams, and the JWKS (`[identity_assertion] enabled`).
    pub assertions: Option<Arc<Assertions>>,
    pub keys: TokenKeys,
    /// Makes and opens refresh tokens.
    pub(crate) refresh_key: RefreshKey,
    pub(crate) lifetimes: sessions::Lifetimes,
    /// Seals the secrets of links in the outbox, and opens them for delivery.
    pub(crate) seal_key: SealKey,
    pub(crate) letters: Letters,
    /// Wakes the mail worker when this gateway has written mail.
    pub mail_wake: Arc<tokio::sync::Notify>,
    /// Browser mode (`auth.refresh_cookie`): the refresh token's cookie.
    pub refresh_cookie: Option<RefreshCookie>,
    /// Password-reset requests being worked on after their answer went out (bounded).
    pub(crate) reset_jobs: Arc<tokio::sync::Semaphore>,
    pub hasher: HashPool,
    /// Connections of `pool` that logins and registrations may hold at once (half of it): a
    /// flood of them, which can come in any number, leaves the rest to the other endpoints.
    floodable: tokio::sync::Semaphore,
    acquire_timeout: Duration,
    pub policy: HashPolicy,
    pub cors: Cors,
    allow_registration: bool,
    /// Holders of this role may use the admin API (`auth.admin_role`).
    pub(crate) admin_role: String,
    /// Seals second factors' secrets at rest.
    pub(crate) sealer: crate::credentials::sealed::Sealer,
    /// The relying party of `[webauthn]`.
    pub(crate) passkeys: crate::credentials::passkey::Passkeys,
    /// `mfa.issuer`, in TOTP enrolment links.
    pub(crate) mfa_issuer: String,
    /// `mfa.enforcement = "highest_available"`: a user with a second factor must have used it
    /// in the session for every endpoint but reading themselves, verifying and logging out.
    pub(crate) step_up: bool,
    /// Verified against when the email is unknown, so that costs the same as a wrong password.
    dummy_hash: Arc<str>,
    /// Tokens already verified (only verified ones get in), so that a client's every request
    /// does not redo the HMAC and JSON work; expiry is still checked on each use.
    /// Tokens that passed verification, until they expire (bounded; the least useful go first).
    /// Keyed by the token's bytes: a lookup needs no text check of the header first.
    verified_tokens: BoundedCache<Box<[u8]>, Arc<Verified>>,
    /// Whether PostgreSQL was reached and migrated since start-up (shared with the other wings).
    pub ready: Arc<Readiness>,
}

/// What a handler needs from a request.
#[derive(Debug, Default)]
pub struct OwnRequest {
    /// The client's address as the rate limits see it (see `proxy::client_ip_for_limits`).
    pub client_ip: Option<std::net::IpAddr>,
    /// The path as routing read it (escapes decoded), for path parameters.
    pub path: String,
    pub query: Option<String>,
    pub content_type: Option<String>,
    pub authorization: Option<Vec<u8>>,
    /// The refresh cookie's value, in browser mode (`auth.refresh_cookie`).
    pub refresh_cookie: Option<String>,
    pub origin: Option<Vec<u8>>,
    /// Whether `X-Requested-With` was sent (any value): a header a page on another site cannot
    /// add without a CORS preflight.
    pub requested_with: bool,
    /// Kept with a new session (at most [`USER_AGENT_CHARS`] characters of it).
    pub user_agent: Option<String>,
    /// The request's id (`X-Request-Id`), for the audit log.
    pub request_id: Option<String>,
    pub body: Bytes,
}

impl OwnRequest {
    /// Where the request came from, as the audit log records it.
    pub fn origin(&self) -> audit::Origin {
        audit::Origin {
            client_address: self.client_ip.map(|ip| ip.to_string()),
            user_agent: self
                .user_agent
                .as_deref()
                .map(|ua| ua.chars().take(USER_AGENT_CHARS).collect()),
            request_id: self.request_id.clone(),
        }
    }
}

/// How much of a `User-Agent` a session keeps.
pub const USER_AGENT_CHARS: usize = 256;

/// The refresh token's cookie in browser mode.
pub struct RefreshCookie {
    pub name: String,
    /// How long browsers keep it: a session's absolute lifetime (it cannot be used longer).
    pub max_age_secs: u64,
}

impl RefreshCookie {
    const ATTRIBUTES: &'static str = "Path=/auth; HttpOnly; Secure; SameSite=Strict";

    /// The `Set-Cookie` value that hands `token` to the browser.
    pub fn set(&self, token: &str) -> String {
        format!(
            "{}={token}; Max-Age={}; {}",
            self.name,
            self.max_age_secs,
            Self::ATTRIBUTES
        )
    }

    /// The `Set-Cookie` value that makes the browser forget it.
    pub fn clear(&self) -> String {
        format!("{}=; Max-Age=0; {}", self.name, Self::ATTRIBUTES)
    }
}

/// The seed's `TokenResponse`, and what sessions add after its fields.
#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: String,
    token_type: &'static str,
    user: UserResponse<'a>,
    /// Absent in browser mode, where it travels in the cookie only.
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    /// Seconds the access token lasts.
    expires_in: i64,
}

impl App {
    /// Builds the state; the dummy hash is made here, with the configured policy.
    pub fn new(
        config: &Config,
        pool: Pool,
        users: Arc<UserCache>,
        limiters: Arc<RateLimits>,
    ) -> anyhow::Result<App> {
        let policy = config.password.policy();
        let keys = TokenKeys::new(
            config.auth.secret_key.expose(),
            config.auth.access_token_expire_minutes,
            config.auth.max_token_bytes,
        );
        keys.self_test()
            .map_err(|e| anyhow::anyhow!("token signing does not work: {e}"))?;
        let dummy = policy.hash(&uuid::Uuid::new_v4().to_string())?;
        Ok(App {
            pool,
            users,
            limiters,
            assertions: config.identity_assertion.enabled.then(|| {
                Arc::new(Assertions::new(
                    &config.identity_assertion,
                    config.auth.secret_key.expose(),
                    Arc::default(),
                ))
            }),
            keys,
            refresh_key: RefreshKey::derive(config.auth.secret_key.expose()),
            lifetimes: sessions::Lifetimes {
                idle: Duration::from_secs(config.auth.session_idle_days * 86_400),
                absolute: Duration::from_secs(config.auth.session_absolute_days * 86_400),
                reuse_grace: Duration::from_secs(config.auth.refresh_reuse_grace_seconds),
                max_per_user: config.auth.max_sessions_per_user,
            },
            seal_key: SealKey::derive(config.auth.secret_key.expose()),
            letters: Letters::new(&config.mail),
            mail_wake: Arc::new(tokio::sync::Notify::new()),
            refresh_cookie: config.auth.refresh_cookie.then(|| RefreshCookie {
                name: config.auth.refresh_cookie_name.clone(),
                max_age_secs: config.auth.session_absolute_days * 86_400,
            }),
            reset_jobs: Arc::new(tokio::sync::Semaphore::new(RESET_JOBS)),
            hasher: HashPool::new(config.password.workers(), config.password.hash_queue)?,
            floodable: tokio::sync::Semaphore::new((config.database.pool_size / 2).max(1)),
            acquire_timeout: Duration::from_millis(config.database.acquire_timeout_ms),
            policy,
            cors: Cors::new(&config.cors.origins),
            allow_registration: config.auth.allow_registration,
            admin_role: config.auth.admin_role.clone(),
            sealer: crate::credentials::sealed::Sealer::derive(config.auth.secret_key.expose()),
            passkeys: crate::credentials::passkey::Passkeys::new(&config.webauthn)
                .map_err(anyhow::Error::msg)?,
            mfa_issuer: config.mfa.issuer.clone(),
            step_up: config.mfa.enforcement == crate::config::MfaEnforcement::HighestAvailable,
            dummy_hash: Arc::from(dummy.as_str()),
            verified_tokens: bounded_cache(TOKEN_CACHE_CAPACITY),
            ready: Arc::new(Readiness::default()),
        })
    }

    /// [`TokenKeys::verify`], remembering tokens that passed until they expire. (A verdict
    /// depends only on the token, the key and the clock: nothing else can change it.) `now` is
    /// the request's one reading of the clock.
    pub fn verify_token(&self, token: &[u8], now: SystemTime) -> Result<Arc<Verified>, TokenError> {
        if let Some(hit) = self.verified_tokens.get(token) {
            metrics().token_cache_hit.inc();
            if hit.expires_at > unix_seconds(now) {
                return Ok(hit);
            }
            self.verified_tokens.remove(token);
            return Err(TokenError::Invalid("expired".into()));
        }
        metrics().token_cache_miss.inc();
        let text = std::str::from_utf8(token).map_err(|_| TokenError::NotText)?;
        let verified = Arc::new(self.keys.verify(text)?);
        self.verified_tokens.insert(token.into(), verified.clone());
        Ok(verified)
    }

    /// The database was reached and migrated: what needs it may use it.
    pub fn set_ready(&self) {
        self.ready.set_ready();
    }

    pub fn is_ready(&self) -> bool {
        self.ready.is_ready()
    }

    /// `Err(Unavailable)` (503) until [`App::set_ready`].
    pub fn check_ready(&self) -> Result<(), ApiError> {
        Ok(self.ready.check()?)
    }

    pub async fn handle(self: &Arc<Self>, endpoint: Endpoint, req: &OwnRequest) -> Reply {
        let reply = self.answer(endpoint, req).await;
        if endpoint.is_admin() {
            // Lists of users and their roles stay out of every cache, errors included.
            reply.with_header("cache-control", "no-store")
        } else {
            reply
        }
    }

    async fn answer(self: &Arc<Self>, endpoint: Endpoint, req: &OwnRequest) -> Reply {
        if endpoint != Endpoint::Health && !endpoint.is_docs() {
            if let Err(e) = self.check_ready() {
                return e.into_reply();
            }
        }
        let result = match endpoint {
            Endpoint::Health => Ok(Reply::json(200, &serde_json::json!({ "status": "ok" }))),
            Endpoint::Ready => self.ready().await,
            Endpoint::Register => self.register(req).await,
            Endpoint::Token => self.login(req).await,
            Endpoint::Me => self.me(req).await,
            Endpoint::UpdateMe => self.update_me(req).await,
            Endpoint::ChangePassword => self.change_password(req).await,
            Endpoint::Refresh => self.refresh(req).await,
            Endpoint::Logout => self.logout(req).await,
            Endpoint::Sessions => self.list_sessions(req).await,
            Endpoint::EndSession => self.end_session(req).await,
            Endpoint::PasswordReset => self.request_password_reset(req).await,
            Endpoint::PasswordResetConfirm => self.confirm_password_reset(req).await,
            Endpoint::VerifyEmail => self.verify_email(req).await,
            Endpoint::ResendVerification => self.resend_verification(req).await,
            Endpoint::AdminListUsers => self.admin_list_users(req).await,
            Endpoint::AdminCreateUser => self.admin_create_user(req).await,
            Endpoint::AdminGetUser => self.admin_get_user(req).await,
            Endpoint::AdminUpdateUser => self.admin_update_user(req).await,
            Endpoint::AdminEndSessions => self.admin_end_sessions(req).await,
            Endpoint::AdminEvents => self.admin_events(req).await,
            Endpoint::AdminResetMfa => self.admin_reset_mfa(req).await,
            Endpoint::MfaStatus => self.mfa_status(req).await,
            Endpoint::MfaTotpEnrol => self.mfa_totp_enrol(req).await,
            Endpoint::MfaTotpActivate => self.mfa_totp_activate(req).await,
            Endpoint::MfaVerify => self.mfa_verify(req).await,
            Endpoint::MfaRecoveryCodes => self.mfa_recovery_codes(req).await,
            Endpoint::MfaRemoveFactor => self.mfa_remove_factor(req).await,
            Endpoint::PasskeyRegisterStart => self.passkey_register_start(req).await,
            Endpoint::PasskeyRegisterFinish => self.passkey_register_finish(req).await,
            Endpoint::PasskeyVerifyStart => self.passkey_verify_start(req).await,
            Endpoint::PasskeyVerifyFinish => self.passkey_verify_finish(req).await,
            Endpoint::PasskeyLoginStart => self.passkey_login_start(req).await,
            Endpoint::PasskeyLoginFinish => self.passkey_login_finish(req).await,
            // The edge answers it (it holds the routes); nothing reaches here.
            Endpoint::ForwardAuth => Err(ApiError::NotFound),
            Endpoint::Jwks => Ok(self.jwks()),
            Endpoint::OpenApi => Ok(crate::own::docs::openapi()),
            Endpoint::Docs => Ok(crate::own::docs::page()),
            Endpoint::DocsAsset => Ok(crate::own::docs::asset(&req.path)),
        };
        result.unwrap_or_else(ApiError::into_reply)
    }

    /// `GET /.well-known/jwks.json`: the public keys identity assertions are signed with,
    /// every instance's (from memory: no database work per request).
    fn jwks(&self) -> Reply {
        match &self.assertions {
            Some(assertions) => Reply {
                status: 200,
                content_type: crate::own::api::JSON,
                // Short: a verifier meeting an unknown `kid` fetches again anyway.
                headers: vec![("cache-control", "public, max-age=60".into())],
                body: assertions.jwks(),
            },
            None => ApiError::NotFound.into_reply(),
        }
    }

    async fn ready(&self) -> Result<Reply, ApiError> {
        let check = async {
            let db = users::client(&self.pool).await?;
            users::ping(&db).await
        };
        match tokio::time::timeout(Duration::from_secs(2), check).await {
            Ok(Ok(())) => Ok(Reply::json(200, &serde_json::json!({ "status": "ready" }))),
            Ok(Err(StoreError::Unavailable(c) | StoreError::Internal(c))) => {
                Err(ApiError::Unavailable(c))
            }
            Err(_) => Err(ApiError::Unavailable("readiness check timed out".into())),
        }
    }

    /// A connection for a login, a registration or a refresh, within their share of the pool.
    pub(crate) async fn floodable_client(&self) -> Result<Floodable<'_>, ApiError> {
        let permit = tokio::time::timeout(self.acquire_timeout, self.floodable.acquire())
            .await
            .map_err(|_| ApiError::Unavailable("no connection free for logins".into()))?
            .map_err(|_| ApiError::Unavailable("login connections closed".into()))?;
        Ok(Floodable {
            db: users::client(&self.pool).await?,
            _permit: permit,
        })
    }

    /// A `TokenResponse` for `user` in session `session` at refresh generation `generation`:
    /// a new access token and the generation's refresh token. Never cached by anyone.
    pub(crate) fn token_reply(
        &self,
        user: &User,
        session: &Uuid,
        generation: u32,
    ) -> Result<Reply, ApiError> {
        let access_token = self
            .keys
            .issue(&user.id, Some(session))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let refresh_token = self.refresh_key.token(session, generation);
        let (in_body, cookie) = match &self.refresh_cookie {
            Some(cookie) => (None, Some(cookie.set(&refresh_token))),
            None => (Some(refresh_token), None),
        };
        let reply = Reply::json(
            200,
            &TokenResponse {
                access_token,
                token_type: "bearer",
                user: user.response(),
                refresh_token: in_body,
                expires_in: self.keys.lifetime_secs(),
            },
        )
        .with_header("cache-control", "no-store")
        .with_header("pragma", "no-cache");
        Ok(match cookie {
            Some(cookie) => reply.with_header("set-cookie", cookie),
            None => reply,
        })
    }

    /// Writes `mail` to the outbox within `db`'s transaction (the worker is woken by
    /// [`App::mail_written`] once it commits).
    pub(crate) async fn write_mail(
        &self,
        db: &impl deadpool_postgres::GenericClient,
        mail: &Mail,
    ) -> Result<(), ApiError> {
        Ok(outbox::enqueue(db, mail, &self.seal_key).await?)
    }

    /// Records a security event about `user_id` (by `actor`, when that is someone else) in the
    /// audit log, within `db`'s transaction.
    pub(crate) async fn audit(
        &self,
        db: &impl deadpool_postgres::GenericClient,
        req: &OwnRequest,
        kind: Kind,
        user_id: Option<&str>,
        session_id: Option<Uuid>,
        detail: serde_json::Value,
    ) -> Result<(), ApiError> {
        self.audit_by(db, &req.origin(), kind, user_id, None, session_id, detail)
            .await
    }

    /// [`App::audit`] from `origin`, of a change `actor` made (an administrator's to another
    /// user; `None`: the user's own).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn audit_by(
        &self,
        db: &impl deadpool_postgres::GenericClient,
        origin: &audit::Origin,
        kind: Kind,
        user_id: Option<&str>,
        actor: Option<&str>,
        session_id: Option<Uuid>,
        detail: serde_json::Value,
    ) -> Result<(), ApiError> {
        let event = audit::Event {
            kind,
            user_id,
            actor_id: actor,
            session_id,
            origin,
            detail,
        };
        Ok(audit::record(db, &event).await?)
    }

    /// Mail was committed to the outbox: deliver it now rather than at the next poll.
    pub(crate) fn mail_written(&self) {
        self.mail_wake.notify_one();
    }

    /// Issues a one-time token of `purpose` to `user` at their address (ending their earlier
    /// ones of that purpose) and writes the mail that carries it, within `db`'s transaction.
    pub(crate) async fn send_link(
        &self,
        db: &impl deadpool_postgres::GenericClient,
        user: &User,
        purpose: Purpose,
    ) -> Result<(), ApiError> {
        self.send_letter(db, user, purpose, |letters, to, token| match purpose {
            Purpose::PasswordReset => letters.password_reset(to, token),
            Purpose::VerifyEmail => letters.verify_email(to, token),
        })
        .await
    }

    /// [`App::send_link`] with the letter `write` makes (the link's lifetime is the letter's).
    pub(crate) async fn send_letter(
        &self,
        db: &impl deadpool_postgres::GenericClient,
        user: &User,
        purpose: Purpose,
        write: impl FnOnce(&Letters, &str, OneTimeToken) -> Mail,
    ) -> Result<(), ApiError> {
        let token = OneTimeToken::generate().map_err(|e| ApiError::Internal(e.to_string()))?;
        let hash = token.hash();
        let mail = write(&self.letters, &user.email, token);
        let lifetime = mail.token.as_ref().map_or(Duration::ZERO, |(_, l)| *l);
        account_tokens::issue(db, &hash, &user.id, &user.email, purpose, lifetime).await?;
        self.write_mail(db, &mail).await
    }

    /// Starts a session for `user` (a login or a registration) and answers with its tokens.
    async fn signed_in(
        &self,
        db: &impl deadpool_postgres::GenericClient,
        user: &User,
        req: &OwnRequest,
        kind: Kind,
    ) -> Result<Reply, ApiError> {
        self.start_session(db, user, req, kind, false).await
    }

    /// Starts a session for `user` and answers with its tokens; `passkey`: a passwordless
    /// sign-in, whose session is `aal2` from the start (a user-verified passkey is two factors).
    pub(crate) async fn start_session(
        &self,
        db: &impl deadpool_postgres::GenericClient,
        user: &User,
        req: &OwnRequest,
        kind: Kind,
        passkey: bool,
    ) -> Result<Reply, ApiError> {
        let user_agent = req
            .user_agent
            .as_deref()
            .map(|ua| ua.chars().take(USER_AGENT_CHARS).collect::<String>());
        let address = req.client_ip.map(|ip| ip.to_string());
        let session = sessions::create(
            db,
            &user.id,
            self.lifetimes,
            user_agent.as_deref(),
            address.as_deref(),
        )
        .await?;
        let detail = if passkey {
            crate::store::passkeys::passwordless_session(db, &session).await?;
            serde_json::json!({ "method": "passkey" })
        } else {
            serde_json::json!({})
        };
        self.audit(db, req, kind, Some(&user.id), Some(session), detail)
            .await?;
        self.token_reply(user, &session, 0)
    }

    /// The request's bearer token, verified at `now` (through the cache of verified tokens):
    /// "Not authenticated" without one (or one that is not text), "Invalid token" otherwise.
    fn bearer(&self, req: &OwnRequest, now: SystemTime) -> Result<Arc<Verified>, ApiError> {
        let token = token::bearer_credentials(req.authorization.as_deref())
            .ok_or(ApiError::NotAuthenticated)?;
        match self.verify_token(token, now) {
            Ok(verified) => Ok(verified),
            Err(TokenError::NotText) => Err(ApiError::NotAuthenticated),
            Err(_) => Err(ApiError::InvalidToken),
        }
    }

    /// The caller of an own endpoint, by their bearer token: verified (through the same cache
    /// of verified tokens as the proxy), the user read from PostgreSQL with their sessions, and
    /// the token still counting for them (see [`UserState::accepts`]). The seed's answers:
    /// "Not authenticated" without a token, "User not found" for a deleted user, "Invalid
    /// token" otherwise.
    /// In `mfa.enforcement = "highest_available"`, a user with a second factor must have used
    /// it in this session (403 `MFA required` otherwise).
    pub(crate) async fn authenticate(
        &self,
        db: &deadpool_postgres::Client,
        req: &OwnRequest,
    ) -> Result<(Account, Arc<Verified>), ApiError> {
        let (account, token) = self.authenticate_any_level(db, req).await?;
        if self.step_up && account.has_factor && !session_aal2(&account, &token) {
            return Err(ApiError::MfaRequired);
        }
        Ok((account, token))
    }

    /// [`App::authenticate`] at any assurance level: for the endpoints a session that has not
    /// used its second factor may call (logging out, the factors, verifying).
    pub(crate) async fn authenticate_any_level(
        &self,
        db: &deadpool_postgres::Client,
        req: &OwnRequest,
    ) -> Result<(Account, Arc<Verified>), ApiError> {
        let now = SystemTime::now();
        let verified = self.bearer(req, now)?;
        let account = users::find_account(db, &verified.user_id, self.lifetimes.max_per_user)
            .await?
            .ok_or(ApiError::UserNotFound)?;
        let state = UserState::of(&account, unix_seconds(now)).ok_or(ApiError::InvalidToken)?;
        if !state.active || !state.accepts(&verified, unix_seconds(now)) {
            return Err(ApiError::InvalidToken);
        }
        Ok((account, verified))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn register(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        if !self.allow_registration {
            return Err(ApiError::RegistrationDisabled);
        }
        if self.refresh_cookie.is_some() {
            self.check_browser_request(req)?;
        }
        self.limiters
            .register(req.client_ip)
            .await
            .map_err(refused("Too many registrations, try again later"))?;
        let body = forms::decode_json_body(req.content_type.as_deref(), &req.body)?;
        let new = forms::validate_new_user(body)?;
        // Each connection is held for its statement only, never across the hashing queue.
        let taken = {
            let db = self.floodable_client().await?;
            users::find_by_email(&*db, &new.email).await?.is_some()
        };
        if taken {
            return Err(ApiError::EmailTaken);
        }
        let policy = self.policy;
        let password = new.password;
        let hash = self
            .hasher
            .run(move || policy.hash(&password))
            .await
            .map_err(hashing_error)?;
        // The seed stored a missing full name as "".
        let full_name = new.full_name.unwrap_or_default();
        // The user, their session and the verification mail: one transaction.
        let mut db = self.floodable_client().await?;
        let tx = db.transaction().await.map_err(users::db_error)?;
        let Some(user) = users::insert(&tx, &new.email, &full_name, &hash).await? else {
            // Someone registered the same email (in any case) meanwhile.
            return Err(ApiError::EmailTaken);
        };
        let reply = self
            .signed_in(&tx, &user, req, Kind::UserRegistered)
            .await?;
        self.send_link(&tx, &user, Purpose::VerifyEmail).await?;
        tx.commit().await.map_err(users::db_error)?;
        self.mail_written();
        Ok(reply)
    }

    /// Unknown email, wrong password and inactive account do the same hashing work and get the
    /// same answer.
    #[tracing::instrument(level = "debug", skip_all)]
    async fn login(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        // Every answer here sets the refresh cookie in browser mode.
        if self.refresh_cookie.is_some() {
            if let Err(e) = self.check_browser_request(req) {
                metrics().login(LoginOutcome::Invalid);
                return Err(e);
            }
        }
        let form = forms::parse_token_form(req.content_type.as_deref(), &req.body).await;
        let form = match form {
            Ok(TokenForm::Password(form)) => form,
            Ok(TokenForm::Refresh { refresh_token }) => {
                return self.refresh_with(req, &refresh_token).await
            }
            Err(e) => {
                metrics().login(LoginOutcome::Invalid);
                return Err(e);
            }
        };
        let answer = self.password_login(req, form).await;
        metrics().login(match &answer {
            Ok(_) => LoginOutcome::Success,
            Err(ApiError::BadCredentials) => LoginOutcome::Failure,
            Err(ApiError::TooManyRequests { .. }) => LoginOutcome::RateLimited,
            Err(ApiError::Unavailable(_) | ApiError::Busy) => LoginOutcome::Unavailable,
            Err(_) => LoginOutcome::Invalid,
        });
        answer
    }

    async fn password_login(
        &self,
        req: &OwnRequest,
        form: forms::LoginForm,
    ) -> Result<Reply, ApiError> {
        let account = email::login_account(&form.username);
        // Before any query or hashing; unknown accounts are counted like known ones.
        self.limiters
            .login(req.client_ip, &account)
            .await
            .map_err(refused(LOGIN_LIMITED))?;
        // Each connection is held for its statement only, never across the hashing queue.
        let user = {
            let db = self.floodable_client().await?;
            find_account(&db, &account).await?
        };
        let stored: Arc<str> = match &user {
            Some(u) => Arc::from(u.hashed_password.as_str()),
            None => Arc::clone(&self.dummy_hash),
        };
        let policy = self.policy;
        let password = form.password;
        let check = Arc::clone(&stored);
        let outcome = self
            .hasher
            .run(move || {
                let ok = match password::verify(&password, &check) {
                    Ok(ok) => ok,
                    // A hash we cannot read is a failed login, not an outage.
                    Err(PasswordError::UnknownScheme | PasswordError::Malformed(_)) => false,
                    Err(e) => return Err(e),
                };
                // Upgrade legacy (bcrypt) or weaker hashes while the password is at hand.
                let rehash = if ok && policy.needs_rehash(&check) {
                    Some(policy.hash(&password)?)
                } else {
                    None
                };
                Ok((ok, rehash))
            })
            .await
            .map_err(hashing_error)?;
        let reason = match (&user, &outcome) {
            (None, _) => Some("unknown_account"),
            (Some(_), (false, _)) => Some("wrong_password"),
            (Some(user), (true, _)) if !user.is_active => Some("inactive"),
            _ => None,
        };
        if let Some(reason) = reason {
            // One event per attempt that reached hashing: a flood writes no more than the
            // hashing pool lets through (attempts the limits refused are counted, not logged).
            // Every failure writes one (the same work whatever the reason); an event that
            // cannot be written does not change the answer.
            let written = async {
                let db = self.floodable_client().await?;
                self.audit(
                    &*db,
                    req,
                    Kind::LoginFailed,
                    user.as_ref().map(|u| u.id.as_str()),
                    None,
                    serde_json::json!({ "reason": reason }),
                )
                .await
            };
            if let Err(e) = written.await {
                tracing::warn!(error = %e, "audit event login.failed not written");
            }
            return Err(ApiError::BadCredentials);
        }
        let user = match (user, outcome) {
            (Some(user), (true, rehash)) if user.is_active => {
                if let Some(new_hash) = rehash {
                    let upgraded = async {
                        let db = self.floodable_client().await?;
                        users::replace_password_hash(&*db, &user.id, &stored, &new_hash)
                            .await
                            .map_err(ApiError::from)
                    };
                    if let Err(e) = upgraded.await {
                        // The login itself succeeded; the upgrade is retried next time.
                        tracing::warn!(user_id = %user.id, error = %e, "password hash upgrade failed");
                    }
                }
                user
            }
            _ => return Err(ApiError::BadCredentials),
        };
        // The session, the time of the sign-in and its event: one transaction.
        let mut db = self.floodable_client().await?;
        let tx = db.transaction().await.map_err(users::db_error)?;
        directory::signed_in(&tx, &user.id).await?;
        let reply = self
            .signed_in(&tx, &user, req, Kind::LoginSucceeded)
            .await?;
        tx.commit().await.map_err(users::db_error)?;
        Ok(reply)
    }

    /// Answered from the user-state cache that proxied requests use (no database query while
    /// it knows the user; a change reaches it within a second on every instance, at once on
    /// the instance that made it), with the seed's answers.
    async fn me(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let now = SystemTime::now();
        let verified = self.bearer(req, now)?;
        let state = match self.users.cached(&verified.user_id, now) {
            Cached::Known(Some(state)) if !state.may_predate(&verified) => Some(state),
            Cached::Known(None) => None,
            cached => {
                // Not before the database is migrated (as for proxied requests).
                self.check_ready()?;
                let reread = matches!(cached, Cached::Known(Some(_)));
                self.users
                    .get_patiently(&verified.user_id, now, reread)
                    .await?
            }
        };
        let state = state.ok_or(ApiError::UserNotFound)?;
        if !state.active || !state.accepts(&verified, unix_seconds(now)) {
            return Err(ApiError::InvalidToken);
        }
        Ok(Reply::json(200, &state.response()))
    }

    /// After a change to `user_id` made here: this instance's cached state of them goes at
    /// once (every instance's goes when PostgreSQL's notification arrives).
    pub(crate) fn changed(&self, user_id: &str) {
        self.users.invalidate(user_id);
    }

    /// FastAPI's order: the body is decoded first (JSON errors), then the token is checked,
    /// then the body is validated.
    async fn update_me(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let body = forms::decode_json_body(req.content_type.as_deref(), &req.body)?;
        let db = users::client(&self.pool).await?;
        let (account, _) = self.authenticate(&db, req).await?;
        let update = forms::validate_user_update(body)?;
        let user = match update.full_name {
            None => account.user,
            Some(full_name) => {
                let user = users::update_full_name(&db, &account.user.id, full_name.as_deref())
                    .await?
                    .ok_or(ApiError::UserNotFound)?;
                self.changed(&user.id);
                user
            }
        };
        Ok(Reply::json(200, &user.response()))
    }
}

/// Whether `token`'s session passed a second factor (`aal2`).
pub(crate) fn session_aal2(account: &Account, token: &Verified) -> bool {
    token
        .session_id
        .is_some_and(|sid| account.aal2_sessions.iter().any(|(id, _)| *id == sid))
}

/// A pooled connection held by a login, a registration or a refresh, and its place in their
/// share.
pub(crate) struct Floodable<'a> {
    db: deadpool_postgres::Client,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for Floodable<'_> {
    type Target = deadpool_postgres::Client;

    fn deref(&self) -> &Self::Target {
        &self.db
    }
}

impl std::ops::DerefMut for Floodable<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.db
    }
}

/// The account a login names: the row PostgreSQL finds by `lower(email)`, if its email and
/// `account` are one account by [`email::account_key`] too, the rule the login limits count by.
pub(crate) async fn find_account(
    db: &deadpool_postgres::Client,
    account: &str,
) -> Result<Option<User>, ApiError> {
    let key = email::account_key(account);
    Ok(users::find_by_email(db, account)
        .await?
        .filter(|user| email::account_key(&user.email) == key))
}

/// The 429 a login or password change over its limits gets.
pub(crate) const LOGIN_LIMITED: &str = "Too many login attempts, try again later";

/// What an attempt the rate limits refused gets: 429 with `detail`, or 503 when the shared
/// stage is down and fails closed.
pub(crate) fn refused(detail: &'static str) -> impl FnOnce(Refused) -> ApiError {
    move |refusal| match refusal {
        Refused::Limited(l) => ApiError::TooManyRequests {
            retry_after_secs: l.retry_after_secs,
            detail,
        },
        Refused::Unavailable => ApiError::Unavailable("rate limits: Redis unavailable".into()),
    }
}

pub(crate) fn hashing_error(e: PasswordError) -> ApiError {
    match e {
        PasswordError::Busy => ApiError::Busy,
        other => ApiError::Internal(other.to_string()),
    }
}
