//! The gateway's own answers: one `Reply` type, and one error enum that becomes an HTTP answer in
//! exactly one place ([`ApiError::into_reply`]), in FastAPI's shapes. Internal error text never
//! reaches a client; it is logged with an id instead.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

pub const JSON: &str = "application/json";
pub const TEXT: &str = "text/plain; charset=utf-8";

/// A complete response written by the gateway itself (not proxied).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra headers, in order (CORS headers are added when the reply is written).
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        // Serializing our own plain structs cannot fail; fall back to an empty object if it does.
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Reply {
            status,
            content_type: JSON,
            headers: Vec::new(),
            body: Bytes::from(body),
        }
    }

    pub fn text(status: u16, body: &'static str) -> Reply {
        Reply {
            status,
            content_type: TEXT,
            headers: Vec::new(),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    /// 204: done, nothing to say (no body, no content headers).
    pub fn no_content() -> Reply {
        Reply {
            status: 204,
            content_type: JSON,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    fn detail(status: u16, detail: &str) -> Reply {
        Reply::json(status, &serde_json::json!({ "detail": detail }))
    }
}

/// One entry of FastAPI's 422 `detail` list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Issue {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub loc: Vec<Value>,
    pub msg: String,
    pub input: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctx: Option<Value>,
}

impl Issue {
    pub fn body_field(field: &str) -> Vec<Value> {
        vec![Value::from("body"), Value::from(field)]
    }

    pub fn missing(field: &str, input: Value) -> Issue {
        Issue {
            kind: "missing",
            loc: Issue::body_field(field),
            msg: "Field required".into(),
            input,
            ctx: None,
        }
    }

    pub fn string_type(field: &str, input: Value) -> Issue {
        Issue {
            kind: "string_type",
            loc: Issue::body_field(field),
            msg: "Input should be a valid string".into(),
            input,
            ctx: None,
        }
    }

    /// The request has no body at all where a JSON object was required.
    pub fn missing_body() -> Issue {
        Issue {
            kind: "missing",
            loc: vec![Value::from("body")],
            msg: "Field required".into(),
            input: Value::Null,
            ctx: None,
        }
    }

    pub fn not_an_object(input: Value) -> Issue {
        Issue {
            kind: "model_attributes_type",
            loc: vec![Value::from("body")],
            msg: "Input should be a valid dictionary or object to extract fields from".into(),
            input,
            ctx: None,
        }
    }

    pub fn json_invalid(pos: usize, error: &str) -> Issue {
        Issue {
            kind: "json_invalid",
            loc: vec![Value::from("body"), Value::from(pos)],
            msg: "JSON decode error".into(),
            input: Value::Object(Default::default()),
            ctx: Some(serde_json::json!({ "error": error })),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("validation failed")]
    Validation(Vec<Issue>),
    #[error("body could not be parsed")]
    BodyParse,
    #[error("request body too large")]
    PayloadTooLarge,
    /// The request head is larger than `server.max_header_bytes`.
    #[error("request head too large")]
    HeadersTooLarge,
    /// An own endpoint's body did not arrive within `server.body_timeout_ms`.
    #[error("request body too slow")]
    BodyTimeout,
    #[error("email already registered")]
    EmailTaken,
    /// `auth.allow_registration` is off.
    #[error("registration disabled")]
    RegistrationDisabled,
    #[error("incorrect email or password")]
    BadCredentials,
    /// A password change whose current password is wrong.
    #[error("incorrect password")]
    WrongPassword,
    #[error("not authenticated")]
    NotAuthenticated,
    #[error("invalid token")]
    InvalidToken,
    /// Browser mode: a request using the refresh cookie without `X-Requested-With` or from an
    /// origin not in `cors.origins`.
    #[error("cross-site request refused")]
    CrossSite,
    /// `auth.require_verified_email` or a route rule's `verified_email`, and the caller's
    /// address is not verified.
    #[error("email not verified")]
    EmailNotVerified,
    /// A route rule's `roles` (or the admin role) that the caller holds none of.
    #[error("not enough permissions")]
    NotEnoughPermissions,
    /// A route rule's `mfa`, and the caller's session has no second factor (RFC 9470).
    #[error("mfa required")]
    MfaRequired,
    /// A route rule with `allow = "deny"`.
    #[error("forbidden")]
    Forbidden,
    /// A reset or verification token that is unknown, used, voided or expired.
    #[error("invalid or expired one-time token")]
    InvalidOneTimeToken,
    /// A proxied request's token is bad, expired, or its user inactive or gone.
    #[error("rejected token")]
    RejectedToken,
    /// A path with dot segments or backslashes.
    #[error("bad path")]
    BadPath,
    #[error("user not found")]
    UserNotFound,
    /// A second factor that is not the caller's (or not one at all).
    #[error("factor not found")]
    FactorNotFound,
    /// A TOTP or recovery code that is wrong, used, or for no factor.
    #[error("invalid code")]
    InvalidCode,
    /// A passkey's answer that does not pass (origin, challenge, signature, user
    /// verification, an unknown or used ceremony): 400.
    #[error("passkey not accepted")]
    PasskeyRejected,
    /// Forward auth: the original request a proxy named cannot be read (400 with this).
    #[error("bad original request: {0}")]
    BadOriginalRequest(&'static str),
    /// A request about second factors that cannot be carried out as it stands.
    #[error("mfa: {0}")]
    MfaConflict(&'static str),
    /// The admin API: no user has the id in the path.
    #[error("no such user")]
    NoSuchUser,
    /// The admin API: the change would leave no active holder of `auth.admin_role`.
    #[error("last administrator")]
    LastAdmin,
    /// A refresh token that is unknown, forged, ended, reused, or whose user is gone: OAuth2's
    /// `invalid_grant` (RFC 6749 §5.2).
    #[error("invalid refresh token")]
    InvalidGrant,
    /// A session that is not the caller's, or not live.
    #[error("session not found")]
    SessionNotFound,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    /// A login or registration rate limit: come back in this many seconds.
    #[error("rate limited")]
    TooManyRequests {
        retry_after_secs: u64,
        detail: &'static str,
    },
    /// Too much work queued (password hashing); the client should retry shortly.
    #[error("busy")]
    Busy,
    /// A dependency (the database) is unreachable or too slow.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        match e {
            crate::store::StoreError::Unavailable(cause) => ApiError::Unavailable(cause),
            crate::store::StoreError::Internal(cause) => ApiError::Internal(cause),
        }
    }
}

impl ApiError {
    pub fn into_reply(self) -> Reply {
        let bearer = |r: Reply| r.with_header("www-authenticate", "Bearer");
        match self {
            ApiError::Validation(issues) => {
                Reply::json(422, &serde_json::json!({ "detail": issues }))
            }
            ApiError::BodyParse => Reply::detail(400, "There was an error parsing the body"),
            ApiError::PayloadTooLarge => Reply::detail(413, "Request body too large"),
            ApiError::HeadersTooLarge => Reply::detail(431, "Request header fields too large"),
            ApiError::BodyTimeout => Reply::detail(408, "Request body not received in time"),
            ApiError::EmailTaken => Reply::detail(400, "Email already registered"),
            ApiError::RegistrationDisabled => Reply::detail(403, "Registration is disabled"),
            ApiError::BadCredentials => bearer(Reply::detail(401, "Incorrect email or password")),
            ApiError::WrongPassword => bearer(Reply::detail(401, "Incorrect password")),
            ApiError::NotAuthenticated => bearer(Reply::detail(401, "Not authenticated")),
            ApiError::InvalidToken => bearer(Reply::detail(401, "Invalid token")),
            ApiError::UserNotFound => bearer(Reply::detail(401, "User not found")),
            ApiError::InvalidGrant => Reply::json(
                400,
                &serde_json::json!({ "detail": "Invalid refresh token", "error": "invalid_grant" }),
            )
            .with_header("cache-control", "no-store"),
            ApiError::SessionNotFound => Reply::detail(404, "Session not found"),
            ApiError::NoSuchUser => Reply::detail(404, "User not found"),
            ApiError::FactorNotFound => Reply::detail(404, "Factor not found"),
            ApiError::InvalidCode => Reply::detail(400, "Invalid code"),
            ApiError::PasskeyRejected => Reply::detail(400, "Passkey not accepted"),
            ApiError::BadOriginalRequest(detail) => Reply::detail(400, detail),
            ApiError::MfaConflict(detail) => Reply::detail(400, detail),
            ApiError::LastAdmin => Reply::detail(
                409,
                "The last active administrator cannot be deactivated or lose the admin role",
            ),
            ApiError::EmailNotVerified => Reply::detail(403, "Email not verified"),
            ApiError::NotEnoughPermissions => Reply::detail(403, "Not enough permissions"),
            ApiError::MfaRequired => Reply::detail(403, "MFA required").with_header(
                "www-authenticate",
                "Bearer error=\"insufficient_user_authentication\"",
            ),
            ApiError::Forbidden => Reply::detail(403, "Forbidden"),
            ApiError::CrossSite => Reply::detail(
                403,
                "Cross-site request refused: X-Requested-With and an allowed Origin are required",
            ),
            ApiError::InvalidOneTimeToken => Reply::detail(400, "Invalid or expired token"),
            ApiError::RejectedToken => Reply::detail(401, "Invalid token")
                .with_header("www-authenticate", "Bearer error=\"invalid_token\""),
            ApiError::BadPath => Reply::detail(400, "Invalid path"),
            ApiError::NotFound => Reply::detail(404, "Not Found"),
            ApiError::MethodNotAllowed { allow } => {
                Reply::detail(405, "Method Not Allowed").with_header("allow", allow)
            }
            ApiError::TooManyRequests {
                retry_after_secs,
                detail,
            } => {
                Reply::detail(429, detail).with_header("retry-after", retry_after_secs.to_string())
            }
            ApiError::Busy => Reply::detail(503, "Server busy, please retry shortly")
                .with_header("retry-after", "1"),
            ApiError::Unavailable(cause) => {
                let id = uuid::Uuid::new_v4();
                tracing::warn!(error_id = %id, %cause, "dependency unavailable");
                Reply::detail(503, "Service temporarily unavailable")
                    .with_header("retry-after", "1")
            }
            ApiError::Internal(cause) => {
                let id = uuid::Uuid::new_v4();
                tracing::error!(error_id = %id, %cause, "internal error");
                Reply::detail(500, "Internal Server Error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(e: ApiError) -> (u16, String) {
        let r = e.into_reply();
        (r.status, String::from_utf8(r.body.to_vec()).unwrap())
    }

    #[test]
    fn shapes_match_fastapi() {
        assert_eq!(
            body(ApiError::BadCredentials),
            (401, r#"{"detail":"Incorrect email or password"}"#.into())
        );
        assert_eq!(
            body(ApiError::Validation(vec![Issue::json_invalid(1, "Expecting value")])),
            (
                422,
                r#"{"detail":[{"type":"json_invalid","loc":["body",1],"msg":"JSON decode error","input":{},"ctx":{"error":"Expecting value"}}]}"#.into()
            )
        );
        let internal = body(ApiError::Internal("secret db detail".into()));
        assert_eq!(internal.0, 500);
        assert!(!internal.1.contains("secret"));
        let unavailable = body(ApiError::Unavailable(
            "connection refused at 10.0.0.5".into(),
        ));
        assert!(!unavailable.1.contains("10.0.0.5"));
    }
}
