//! The gateway's own endpoints: which they are, and which method and path names each (the
//! seed's API, and what the gateway adds). Pure: method and path in, endpoint out; the edge
//! reads the path and asks here before it tries the routes.

use http::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Ready,
    Register,
    Token,
    Me,
    UpdateMe,
    ChangePassword,
    Refresh,
    Logout,
    Sessions,
    /// `DELETE /auth/sessions/{id}` (the id is read from the path).
    EndSession,
    PasswordReset,
    PasswordResetConfirm,
    VerifyEmail,
    ResendVerification,
    /// `GET /auth/admin/users`: a page of users (the admin API: `auth.admin_role` only).
    AdminListUsers,
    /// `POST /auth/admin/users`.
    AdminCreateUser,
    /// `GET /auth/admin/users/{id}`.
    AdminGetUser,
    /// `PATCH /auth/admin/users/{id}`.
    AdminUpdateUser,
    /// `DELETE /auth/admin/users/{id}/sessions`.
    AdminEndSessions,
    /// `GET /auth/admin/events`: the audit log, newest first.
    AdminEvents,
    /// `DELETE /auth/admin/users/{id}/mfa`: every second factor of the user, and their sessions.
    AdminResetMfa,
    /// `GET /auth/mfa`: the session's assurance level and the user's factors.
    MfaStatus,
    /// `POST /auth/mfa/totp`.
    MfaTotpEnrol,
    /// `POST /auth/mfa/totp/{id}/activate`.
    MfaTotpActivate,
    /// `POST /auth/mfa/verify`.
    MfaVerify,
    /// `POST /auth/mfa/recovery-codes`.
    MfaRecoveryCodes,
    /// `DELETE /auth/mfa/factors/{id}`.
    MfaRemoveFactor,
    /// `POST /auth/mfa/webauthn/register/start`.
    PasskeyRegisterStart,
    /// `POST /auth/mfa/webauthn/register/finish`.
    PasskeyRegisterFinish,
    /// `POST /auth/mfa/webauthn/verify/start`.
    PasskeyVerifyStart,
    /// `POST /auth/mfa/webauthn/verify/finish`.
    PasskeyVerifyFinish,
    /// `POST /auth/passkey/start`: a passwordless sign-in's options.
    PasskeyLoginStart,
    /// `POST /auth/passkey/finish`: a passwordless sign-in.
    PasskeyLoginFinish,
    /// `/auth/verify` (any method): forward auth, a decision for the original request a proxy
    /// in front names (answered by the edge, which holds the routes).
    ForwardAuth,
    /// `GET /.well-known/jwks.json`: the keys of identity assertions (with
    /// `[identity_assertion] enabled`).
    Jwks,
    /// `GET /openapi.json` (with `[docs] enabled`).
    OpenApi,
    /// `GET /docs`, the Swagger UI page.
    Docs,
    /// `GET /docs/{asset}`: the page's scripts, styles and icon.
    DocsAsset,
}

impl Endpoint {
    /// Every endpoint, once.
    pub const ALL: [Endpoint; 39] = [
        Endpoint::Health,
        Endpoint::Ready,
        Endpoint::Register,
        Endpoint::Token,
        Endpoint::Me,
        Endpoint::UpdateMe,
        Endpoint::ChangePassword,
        Endpoint::Refresh,
        Endpoint::Logout,
        Endpoint::Sessions,
        Endpoint::EndSession,
        Endpoint::PasswordReset,
        Endpoint::PasswordResetConfirm,
        Endpoint::VerifyEmail,
        Endpoint::ResendVerification,
        Endpoint::AdminListUsers,
        Endpoint::AdminCreateUser,
        Endpoint::AdminGetUser,
        Endpoint::AdminUpdateUser,
        Endpoint::AdminEndSessions,
        Endpoint::AdminEvents,
        Endpoint::AdminResetMfa,
        Endpoint::MfaStatus,
        Endpoint::MfaTotpEnrol,
        Endpoint::MfaTotpActivate,
        Endpoint::MfaVerify,
        Endpoint::MfaRecoveryCodes,
        Endpoint::MfaRemoveFactor,
        Endpoint::PasskeyRegisterStart,
        Endpoint::PasskeyRegisterFinish,
        Endpoint::PasskeyVerifyStart,
        Endpoint::PasskeyVerifyFinish,
        Endpoint::PasskeyLoginStart,
        Endpoint::PasskeyLoginFinish,
        Endpoint::ForwardAuth,
        Endpoint::Jwks,
        Endpoint::OpenApi,
        Endpoint::Docs,
        Endpoint::DocsAsset,
    ];

    /// The API documentation's endpoints (served only with `[docs] enabled`).
    pub fn is_docs(self) -> bool {
        matches!(
            self,
            Endpoint::OpenApi | Endpoint::Docs | Endpoint::DocsAsset
        )
    }

    /// The admin API's: every answer `Cache-Control: no-store`.
    pub fn is_admin(self) -> bool {
        matches!(
            self,
            Endpoint::AdminListUsers
                | Endpoint::AdminCreateUser
                | Endpoint::AdminGetUser
                | Endpoint::AdminUpdateUser
                | Endpoint::AdminEndSessions
                | Endpoint::AdminEvents
                | Endpoint::AdminResetMfa
        )
    }

    /// The `route` label of the endpoint's request metrics: its name, but one for all of the
    /// admin API and one for all of the second-factor endpoints (each endpoint costs 17
    /// series, and these are seldom called: `sentinel_` series stay under 600 for two routes).
    pub fn metrics_name(self) -> &'static str {
        if self.is_admin() {
            "admin"
        } else if self.is_mfa() {
            "mfa"
        } else {
            self.name()
        }
    }

    /// The second-factor and passkey endpoints (`/auth/mfa…`, `/auth/passkey/…`).
    pub fn is_mfa(self) -> bool {
        matches!(
            self,
            Endpoint::MfaStatus
                | Endpoint::MfaTotpEnrol
                | Endpoint::MfaTotpActivate
                | Endpoint::MfaVerify
                | Endpoint::MfaRecoveryCodes
                | Endpoint::MfaRemoveFactor
                | Endpoint::PasskeyRegisterStart
                | Endpoint::PasskeyRegisterFinish
                | Endpoint::PasskeyVerifyStart
                | Endpoint::PasskeyVerifyFinish
                | Endpoint::PasskeyLoginStart
                | Endpoint::PasskeyLoginFinish
        )
    }

    /// Whether the handler reads a request body.
    pub fn reads_body(self) -> bool {
        matches!(
            self,
            Endpoint::Register
                | Endpoint::Token
                | Endpoint::UpdateMe
                | Endpoint::Refresh
                | Endpoint::ChangePassword
                | Endpoint::PasswordReset
                | Endpoint::PasswordResetConfirm
                | Endpoint::VerifyEmail
                | Endpoint::AdminCreateUser
                | Endpoint::AdminUpdateUser
                | Endpoint::MfaTotpEnrol
                | Endpoint::MfaTotpActivate
                | Endpoint::MfaVerify
                | Endpoint::PasskeyRegisterStart
                | Endpoint::PasskeyRegisterFinish
                | Endpoint::PasskeyVerifyFinish
                | Endpoint::PasskeyLoginStart
                | Endpoint::PasskeyLoginFinish
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Health => "health",
            Endpoint::Ready => "ready",
            Endpoint::Register => "register",
            Endpoint::Token => "token",
            Endpoint::Me => "users_me",
            Endpoint::UpdateMe => "update_users_me",
            Endpoint::ChangePassword => "change_password",
            Endpoint::Refresh => "refresh",
            Endpoint::Logout => "logout",
            Endpoint::Sessions => "sessions",
            Endpoint::EndSession => "end_session",
            Endpoint::PasswordReset => "password_reset",
            Endpoint::PasswordResetConfirm => "password_reset_confirm",
            Endpoint::VerifyEmail => "verify_email",
            Endpoint::ResendVerification => "resend_verification",
            Endpoint::AdminListUsers => "admin_list_users",
            Endpoint::AdminCreateUser => "admin_create_user",
            Endpoint::AdminGetUser => "admin_get_user",
            Endpoint::AdminUpdateUser => "admin_update_user",
            Endpoint::AdminEndSessions => "admin_end_sessions",
            Endpoint::AdminEvents => "admin_events",
            Endpoint::AdminResetMfa => "admin_reset_mfa",
            Endpoint::MfaStatus => "mfa_status",
            Endpoint::MfaTotpEnrol => "mfa_totp_enrol",
            Endpoint::MfaTotpActivate => "mfa_totp_activate",
            Endpoint::MfaVerify => "mfa_verify",
            Endpoint::MfaRecoveryCodes => "mfa_recovery_codes",
            Endpoint::MfaRemoveFactor => "mfa_remove_factor",
            Endpoint::PasskeyRegisterStart => "passkey_register_start",
            Endpoint::PasskeyRegisterFinish => "passkey_register_finish",
            Endpoint::PasskeyVerifyStart => "passkey_verify_start",
            Endpoint::PasskeyVerifyFinish => "passkey_verify_finish",
            Endpoint::PasskeyLoginStart => "passkey_login_start",
            Endpoint::PasskeyLoginFinish => "passkey_login_finish",
            Endpoint::ForwardAuth => "forward_auth",
            Endpoint::Jwks => "jwks",
            Endpoint::OpenApi => "openapi",
            Endpoint::Docs => "docs",
            Endpoint::DocsAsset => "docs_asset",
        }
    }
}

/// What a method and path are among the gateway's own endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnRoute {
    Endpoint(Endpoint),
    /// One of our paths with another method: 405 with this `Allow`.
    MethodNotAllowed(&'static str),
    /// Not one of our paths.
    None,
}

/// Where every instance publishes the public keys of identity assertions.
pub const JWKS_PATH: &[u8] = b"/.well-known/jwks.json";

pub fn classify(method: &Method, path: &[u8]) -> OwnRoute {
    // HEAD is answered like GET, without the body (as Starlette does).
    let get = method == Method::GET || method == Method::HEAD;
    match path {
        b"/health" if get => OwnRoute::Endpoint(Endpoint::Health),
        b"/health" => OwnRoute::MethodNotAllowed("GET"),
        b"/ready" if get => OwnRoute::Endpoint(Endpoint::Ready),
        b"/ready" => OwnRoute::MethodNotAllowed("GET"),
        JWKS_PATH if get => OwnRoute::Endpoint(Endpoint::Jwks),
        JWKS_PATH => OwnRoute::MethodNotAllowed("GET"),
        b"/openapi.json" if get => OwnRoute::Endpoint(Endpoint::OpenApi),
        b"/openapi.json" => OwnRoute::MethodNotAllowed("GET"),
        b"/docs" if get => OwnRoute::Endpoint(Endpoint::Docs),
        b"/docs" => OwnRoute::MethodNotAllowed("GET"),
        [b'/', b'd', b'o', b'c', b's', b'/', name @ ..] if crate::own::docs::is_asset(name) => {
            if get {
                OwnRoute::Endpoint(Endpoint::DocsAsset)
            } else {
                OwnRoute::MethodNotAllowed("GET")
            }
        }
        b"/auth/register" if method == Method::POST => OwnRoute::Endpoint(Endpoint::Register),
        b"/auth/register" => OwnRoute::MethodNotAllowed("POST"),
        b"/auth/token" if method == Method::POST => OwnRoute::Endpoint(Endpoint::Token),
        b"/auth/token" => OwnRoute::MethodNotAllowed("POST"),
        b"/auth/users/me" if get => OwnRoute::Endpoint(Endpoint::Me),
        b"/auth/users/me" if method == Method::PATCH => OwnRoute::Endpoint(Endpoint::UpdateMe),
        b"/auth/users/me" => OwnRoute::MethodNotAllowed("GET, PATCH"),
        b"/auth/users/me/password" if method == Method::POST => {
            OwnRoute::Endpoint(Endpoint::ChangePassword)
        }
        b"/auth/users/me/password" => OwnRoute::MethodNotAllowed("POST"),
        b"/auth/refresh" if method == Method::POST => OwnRoute::Endpoint(Endpoint::Refresh),
        b"/auth/refresh" => OwnRoute::MethodNotAllowed("POST"),
        b"/auth/logout" if method == Method::POST => OwnRoute::Endpoint(Endpoint::Logout),
        b"/auth/logout" => OwnRoute::MethodNotAllowed("POST"),
        b"/auth/sessions" if get => OwnRoute::Endpoint(Endpoint::Sessions),
        b"/auth/sessions" => OwnRoute::MethodNotAllowed("GET"),
        b"/auth/password-reset" if method == Method::POST => {
            OwnRoute::Endpoint(Endpoint::PasswordReset)
        }
        b"/auth/password-reset/confirm" if method == Method::POST => {
            OwnRoute::Endpoint(Endpoint::PasswordResetConfirm)
        }
        b"/auth/verify-email" if method == Method::POST => {
            OwnRoute::Endpoint(Endpoint::VerifyEmail)
        }
        b"/auth/verify-email/resend" if method == Method::POST => {
            OwnRoute::Endpoint(Endpoint::ResendVerification)
        }
        b"/auth/password-reset"
        | b"/auth/password-reset/confirm"
        | b"/auth/verify-email"
        | b"/auth/verify-email/resend" => OwnRoute::MethodNotAllowed("POST"),
        // One segment after it: a session id (checked by the handler).
        [b'/', b'a', b'u', b't', b'h', b'/', b's', b'e', b's', b's', b'i', b'o', b'n', b's', b'/', id @ ..]
            if !id.is_empty() && !id.contains(&b'/') =>
        {
            if method == Method::DELETE {
                OwnRoute::Endpoint(Endpoint::EndSession)
            } else {
                OwnRoute::MethodNotAllowed("DELETE")
            }
        }
        b"/auth/admin/users" if get => OwnRoute::Endpoint(Endpoint::AdminListUsers),
        b"/auth/admin/users" if method == Method::POST => {
            OwnRoute::Endpoint(Endpoint::AdminCreateUser)
        }
        b"/auth/admin/users" => OwnRoute::MethodNotAllowed("GET, POST"),
        b"/auth/admin/events" if get => OwnRoute::Endpoint(Endpoint::AdminEvents),
        b"/auth/admin/events" => OwnRoute::MethodNotAllowed("GET"),
        b"/auth/mfa" if get => OwnRoute::Endpoint(Endpoint::MfaStatus),
        b"/auth/mfa" => OwnRoute::MethodNotAllowed("GET"),
        b"/auth/mfa/totp" if method == Method::POST => OwnRoute::Endpoint(Endpoint::MfaTotpEnrol),
        b"/auth/mfa/verify" if method == Method::POST => OwnRoute::Endpoint(Endpoint::MfaVerify),
        b"/auth/mfa/recovery-codes" if method == Method::POST => {
            OwnRoute::Endpoint(Endpoint::MfaRecoveryCodes)
        }
        b"/auth/verify" => OwnRoute::Endpoint(Endpoint::ForwardAuth),
        b"/auth/mfa/webauthn/register/start" if method == Method::POST => {
            OwnRoute::Endpoint(Endpoint::PasskeyRegisterStart)
        }
        b"/auth/mfa/webauthn/register/finish" if method == Method::POST => {
            OwnRoute::Endpoint(Endpoint::PasskeyRegisterFinish)
        }
        b"/auth/mfa/webauthn/verify/start" if method == Method::POST => {
            OwnRoute::Endpoint(Endpoint::PasskeyVerifyStart)
        }
        b"/auth/mfa/webauthn/verify/finish" if method == Method::POST => {
            OwnRoute::Endpoint(Endpoint::PasskeyVerifyFinish)
        }
        b"/auth/passkey/start" if method == Method::POST => {
            OwnRoute::Endpoint(Endpoint::PasskeyLoginStart)
        }
        b"/auth/passkey/finish" if method == Method::POST => {
            OwnRoute::Endpoint(Endpoint::PasskeyLoginFinish)
        }
        b"/auth/mfa/totp"
        | b"/auth/mfa/verify"
        | b"/auth/mfa/recovery-codes"
        | b"/auth/mfa/webauthn/register/start"
        | b"/auth/mfa/webauthn/register/finish"
        | b"/auth/mfa/webauthn/verify/start"
        | b"/auth/mfa/webauthn/verify/finish"
        | b"/auth/passkey/start"
        | b"/auth/passkey/finish" => OwnRoute::MethodNotAllowed("POST"),
        [b'/', b'a', b'u', b't', b'h', b'/', b'm', b'f', b'a', b'/', rest @ ..] => {
            mfa_path(method, rest)
        }
        [b'/', b'a', b'u', b't', b'h', b'/', b'a', b'd', b'm', b'i', b'n', b'/', b'u', b's', b'e', b'r', b's', b'/', rest @ ..] => {
            admin_user(method, rest)
        }
        _ => OwnRoute::None,
    }
}

/// `/auth/mfa/` followed by `rest`: `totp/{id}/activate` or `factors/{id}` (the ids are
/// checked by the handlers).
fn mfa_path(method: &Method, rest: &[u8]) -> OwnRoute {
    let one_segment = |id: &[u8]| !id.is_empty() && !id.contains(&b'/');
    if let Some(id) = rest
        .strip_prefix(b"totp/")
        .and_then(|r| r.strip_suffix(b"/activate"))
    {
        if one_segment(id) {
            return if method == Method::POST {
                OwnRoute::Endpoint(Endpoint::MfaTotpActivate)
            } else {
                OwnRoute::MethodNotAllowed("POST")
            };
        }
    }
    if let Some(id) = rest.strip_prefix(b"factors/") {
        if one_segment(id) {
            return if method == Method::DELETE {
                OwnRoute::Endpoint(Endpoint::MfaRemoveFactor)
            } else {
                OwnRoute::MethodNotAllowed("DELETE")
            };
        }
    }
    OwnRoute::None
}

/// `/auth/admin/users/` followed by `rest`: `{id}` or `{id}/sessions` (the id is checked by
/// the handler).
fn admin_user(method: &Method, rest: &[u8]) -> OwnRoute {
    let (id, below) = match rest.iter().position(|&b| b == b'/') {
        None => (rest, None),
        Some(slash) => (&rest[..slash], Some(&rest[slash..])),
    };
    if id.is_empty() {
        return OwnRoute::None;
    }
    let get = method == Method::GET || method == Method::HEAD;
    let delete = |endpoint| {
        if method == Method::DELETE {
            OwnRoute::Endpoint(endpoint)
        } else {
            OwnRoute::MethodNotAllowed("DELETE")
        }
    };
    match below {
        Some(b"/sessions") => delete(Endpoint::AdminEndSessions),
        Some(b"/mfa") => delete(Endpoint::AdminResetMfa),
        Some(_) => OwnRoute::None,
        None if get => OwnRoute::Endpoint(Endpoint::AdminGetUser),
        None if method == Method::PATCH => OwnRoute::Endpoint(Endpoint::AdminUpdateUser),
        None => OwnRoute::MethodNotAllowed("GET, PATCH"),
    }
}
