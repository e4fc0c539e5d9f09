//! Request bodies of the gateway's own endpoints, decoded and validated the way FastAPI and
//! pydantic do it for the seed's models, so that clients get the same 422 answers:
//! the OAuth2 password form (urlencoded or multipart), `UserCreate` and `UserUpdate` JSON.

use serde_json::{Map, Value};

use crate::credentials::email;
use crate::own::api::{ApiError, Issue};
use crate::own::pyjson::{self, JsonError};

pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_CHARS: usize = 1024;

/// The media type, lower-cased, without parameters.
fn media_type(content_type: Option<&str>) -> Option<String> {
    let ct = content_type?;
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    Some(essence)
}

/// What FastAPI hands to a JSON body model: nothing (empty body), the parsed JSON, or — when the
/// content type is not JSON — the raw text, which then fails as "not an object".
pub fn decode_json_body(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Option<Value>, ApiError> {
    if body.is_empty() {
        return Ok(None);
    }
    let is_json = match media_type(content_type) {
        None => true,
        Some(mt) => match mt.split_once('/') {
            Some(("application", sub)) => sub == "json" || sub.ends_with("+json"),
            _ => false,
        },
    };
    if !is_json {
        return Ok(Some(Value::String(
            String::from_utf8_lossy(body).into_owned(),
        )));
    }
    match pyjson::parse(body) {
        Ok(v) => Ok(Some(v)),
        Err(JsonError::NotUtf8) => Err(ApiError::BodyParse),
        Err(JsonError::Syntax { pos, msg }) => {
            Err(ApiError::Validation(vec![Issue::json_invalid(pos, msg)]))
        }
    }
}

/// The body must be an object; anything else is FastAPI's `model_attributes_type`.
pub(crate) fn object(body: Option<Value>) -> Result<Map<String, Value>, ApiError> {
    match body {
        None => Err(ApiError::Validation(vec![Issue::missing_body()])),
        Some(Value::Object(map)) => Ok(map),
        Some(other) => Err(ApiError::Validation(vec![Issue::not_an_object(other)])),
    }
}

/// A string field: `Ok(None)` when absent (or null where `nullable`).
pub(crate) fn string_field(
    map: &Map<String, Value>,
    field: &str,
    nullable: bool,
    issues: &mut Vec<Issue>,
) -> Option<String> {
    match map.get(field) {
        None => None,
        Some(Value::Null) if nullable => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            issues.push(Issue::string_type(field, other.clone()));
            None
        }
    }
}

pub(crate) fn password_policy(field: &str, password: &str, issues: &mut Vec<Issue>) {
    let chars = password.chars().count();
    let input = Value::from(password);
    if chars < PASSWORD_MIN_CHARS {
        issues.push(Issue {
            kind: "string_too_short",
            loc: Issue::body_field(field),
            msg: format!("String should have at least {PASSWORD_MIN_CHARS} characters"),
            input,
            ctx: Some(serde_json::json!({ "min_length": PASSWORD_MIN_CHARS })),
        });
    } else if chars > PASSWORD_MAX_CHARS {
        issues.push(Issue {
            kind: "string_too_long",
            loc: Issue::body_field(field),
            msg: format!("String should have at most {PASSWORD_MAX_CHARS} characters"),
            input,
            ctx: Some(serde_json::json!({ "max_length": PASSWORD_MAX_CHARS })),
        });
    }
}

/// PostgreSQL text cannot hold NUL; the seed crashed on it, we refuse it.
pub(crate) fn no_nul(field: &str, value: &str, issues: &mut Vec<Issue>) -> bool {
    if value.contains('\0') {
        issues.push(Issue {
            kind: "value_error",
            loc: Issue::body_field(field),
            msg: "Value error, must not contain NUL characters".into(),
            input: Value::from(value),
            ctx: Some(serde_json::json!({ "error": "must not contain NUL characters" })),
        });
        false
    } else {
        true
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub email: String,
    pub full_name: Option<String>,
    pub password: String,
}

/// `UserCreate`: fields checked in the model's order (email, full_name, password).
pub fn validate_new_user(body: Option<Value>) -> Result<NewUser, ApiError> {
    let map = object(body)?;
    let mut issues = Vec::new();
    let whole = Value::Object(map.clone());

    let email = email_field(&map, &whole, &mut issues);
    let full_name = string_field(&map, "full_name", true, &mut issues)
        .filter(|name| no_nul("full_name", name, &mut issues));
    let password = match map.get("password") {
        None => {
            issues.push(Issue::missing("password", whole));
            None
        }
        Some(_) => string_field(&map, "password", false, &mut issues),
    };
    if let Some(p) = &password {
        password_policy("password", p, &mut issues);
    }
    match (email, password) {
        (Some(email), Some(password)) if issues.is_empty() => Ok(NewUser {
            email,
            full_name,
            password,
        }),
        _ => Err(ApiError::Validation(issues)),
    }
}

/// A required `email` field, checked as pydantic's `EmailStr` and normalised.
pub(crate) fn email_field(
    map: &serde_json::Map<String, Value>,
    whole: &Value,
    issues: &mut Vec<Issue>,
) -> Option<String> {
    match map.get("email") {
        None => {
            issues.push(Issue::missing("email", whole.clone()));
            None
        }
        Some(Value::String(raw)) => match email::normalize(raw) {
            Ok(normalized) => Some(normalized),
            Err(email::EmailError(reason)) => {
                issues.push(Issue {
                    kind: "value_error",
                    loc: Issue::body_field("email"),
                    msg: format!("value is not a valid email address: {reason}"),
                    input: Value::from(raw.as_str()),
                    ctx: Some(serde_json::json!({ "reason": reason })),
                });
                None
            }
        },
        Some(other) => {
            issues.push(Issue::string_type("email", other.clone()));
            None
        }
    }
}

/// A required string field (missing and non-string values reported as pydantic does).
fn required_string(
    map: &serde_json::Map<String, Value>,
    field: &str,
    issues: &mut Vec<Issue>,
) -> Option<String> {
    match map.get(field) {
        None => {
            issues.push(Issue::missing(field, Value::Object(map.clone())));
            None
        }
        Some(_) => string_field(map, field, false, issues),
    }
}

/// `POST /auth/password-reset`'s `{email}`.
pub fn validate_reset_request(body: Option<Value>) -> Result<String, ApiError> {
    let map = object(body)?;
    let mut issues = Vec::new();
    let whole = Value::Object(map.clone());
    match email_field(&map, &whole, &mut issues) {
        Some(email) if issues.is_empty() => Ok(email),
        _ => Err(ApiError::Validation(issues)),
    }
}

/// `POST /auth/password-reset/confirm`'s `{token, new_password}`; the password must meet the
/// policy.
pub fn validate_reset_confirm(body: Option<Value>) -> Result<(String, String), ApiError> {
    let map = object(body)?;
    let mut issues = Vec::new();
    let token = required_string(&map, "token", &mut issues);
    let password = required_string(&map, "new_password", &mut issues);
    if let Some(p) = &password {
        password_policy("new_password", p, &mut issues);
    }
    match (token, password) {
        (Some(token), Some(password)) if issues.is_empty() => Ok((token, password)),
        _ => Err(ApiError::Validation(issues)),
    }
}

/// `POST /auth/verify-email`'s `{token}`.
pub fn validate_verify_email(body: Option<Value>) -> Result<String, ApiError> {
    let map = object(body)?;
    let mut issues = Vec::new();
    match required_string(&map, "token", &mut issues) {
        Some(token) if issues.is_empty() => Ok(token),
        _ => Err(ApiError::Validation(issues)),
    }
}

/// `UserUpdate`: `full_name` absent = unchanged, null = cleared.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserUpdate {
    pub full_name: Option<Option<String>>,
}

pub fn validate_user_update(body: Option<Value>) -> Result<UserUpdate, ApiError> {
    let map = object(body)?;
    let mut issues = Vec::new();
    let full_name = match map.get("full_name") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) => {
            no_nul("full_name", s, &mut issues);
            Some(Some(s.clone()))
        }
        Some(other) => {
            issues.push(Issue::string_type("full_name", other.clone()));
            None
        }
    };
    if issues.is_empty() {
        Ok(UserUpdate { full_name })
    } else {
        Err(ApiError::Validation(issues))
    }
}

/// `POST /auth/users/me/password`'s body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

/// `{current_password, new_password}`: both required strings; the new one must meet the
/// policy (the current one is only compared, so a legacy short password can still be changed).
pub fn validate_password_change(body: Option<Value>) -> Result<PasswordChange, ApiError> {
    let map = object(body)?;
    let mut issues = Vec::new();
    let current = required_string(&map, "current_password", &mut issues);
    let new = required_string(&map, "new_password", &mut issues);
    if let Some(new) = &new {
        password_policy("new_password", new, &mut issues);
    }
    match (current, new) {
        (Some(current_password), Some(new_password)) if issues.is_empty() => Ok(PasswordChange {
            current_password,
            new_password,
        }),
        _ => Err(ApiError::Validation(issues)),
    }
}

/// FastAPI's `OAuth2PasswordRequestForm`, the fields this gateway uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginForm {
    pub username: String,
    pub password: String,
}

/// A form value: text, or a file part where text was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FormValue {
    Text(String),
    File { filename: String },
}

/// What `POST /auth/token` asks for: a login (the seed's password grant), or a refresh
/// (RFC 6749 §6, `grant_type=refresh_token`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenForm {
    Password(LoginForm),
    Refresh { refresh_token: String },
}

/// Parses a `POST /auth/token` body. Content types other than the two form encodings give an
/// empty form, hence "Field required", as FastAPI does.
pub async fn parse_token_form(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<TokenForm, ApiError> {
    let fields = match media_type(content_type).as_deref() {
        Some("application/x-www-form-urlencoded") => parse_urlencoded(body),
        Some("multipart/form-data") => parse_multipart(content_type.unwrap_or(""), body).await?,
        _ => Vec::new(),
    };
    let last_text = |name: &str| {
        fields
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| match v {
                FormValue::Text(t) if !t.is_empty() => Some(t.clone()),
                _ => None,
            })
    };
    if last_text("grant_type").as_deref() == Some("refresh_token") {
        return match last_text("refresh_token") {
            Some(refresh_token) => Ok(TokenForm::Refresh { refresh_token }),
            None => Err(ApiError::Validation(vec![Issue::missing(
                "refresh_token",
                Value::Null,
            )])),
        };
    }
    validate_login(&fields).map(TokenForm::Password)
}

/// A login body (the password grant only), as the seed's `OAuth2PasswordRequestForm` reads it.
pub async fn parse_login_form(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<LoginForm, ApiError> {
    match parse_token_form(content_type, body).await? {
        TokenForm::Password(form) => Ok(form),
        TokenForm::Refresh { .. } => Err(ApiError::Validation(vec![Issue {
            kind: "string_pattern_mismatch",
            loc: Issue::body_field("grant_type"),
            msg: "String should match pattern '^password$'".into(),
            input: Value::from("refresh_token"),
            ctx: Some(serde_json::json!({ "pattern": "^password$" })),
        }])),
    }
}

/// `POST /auth/refresh`'s JSON body: `{"refresh_token": "..."}`. `None`: no body, or no
/// token in it (browser mode sends the cookie instead).
pub fn refresh_token_of(body: Option<Value>) -> Result<Option<String>, ApiError> {
    let Some(body) = body else {
        return Ok(None);
    };
    let map = object(Some(body))?;
    match map.get("refresh_token") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(token)) => Ok(Some(token.clone())),
        Some(other) => Err(ApiError::Validation(vec![Issue::string_type(
            "refresh_token",
            other.clone(),
        )])),
    }
}

/// `POST /auth/logout`'s `scope` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutScope {
    /// This session (the default).
    Local,
    /// Every session but this one.
    Others,
    /// Every session, and tokens without one.
    Global,
}

impl LogoutScope {
    pub fn name(self) -> &'static str {
        match self {
            LogoutScope::Local => "local",
            LogoutScope::Others => "others",
            LogoutScope::Global => "global",
        }
    }
}

pub fn logout_scope(query: Option<&str>) -> Result<LogoutScope, ApiError> {
    let scope = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "scope")
        .last()
        .map(|(_, v)| v.into_owned());
    match scope.as_deref() {
        None | Some("local") => Ok(LogoutScope::Local),
        Some("others") => Ok(LogoutScope::Others),
        Some("global") => Ok(LogoutScope::Global),
        Some(other) => Err(ApiError::Validation(vec![Issue {
            kind: "enum",
            loc: vec![Value::from("query"), Value::from("scope")],
            msg: "Input should be 'local', 'others' or 'global'".into(),
            input: Value::from(other),
            ctx: Some(serde_json::json!({ "expected": "'local', 'others' or 'global'" })),
        }])),
    }
}

fn parse_urlencoded(body: &[u8]) -> Vec<(String, FormValue)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), FormValue::Text(v.into_owned())))
        .collect()
}

async fn parse_multipart(
    content_type: &str,
    body: &[u8],
) -> Result<Vec<(String, FormValue)>, ApiError> {
    let boundary = multer::parse_boundary(content_type).map_err(|_| ApiError::BodyParse)?;
    let data = bytes::Bytes::copy_from_slice(body);
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(data) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut fields = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(_) => return Err(ApiError::BodyParse),
        };
        let name = field.name().unwrap_or("").to_string();
        let filename = field.file_name().map(str::to_string);
        let content = field.bytes().await.map_err(|_| ApiError::BodyParse)?;
        let value = match filename {
            Some(filename) => FormValue::File { filename },
            None => FormValue::Text(
                String::from_utf8(content.to_vec()).map_err(|_| ApiError::BodyParse)?,
            ),
        };
        fields.push((name, value));
    }
    Ok(fields)
}

fn validate_login(fields: &[(String, FormValue)]) -> Result<LoginForm, ApiError> {
    // Duplicates: the last value wins (Starlette's form dict). Empty text counts as absent.
    let get = |name: &str| -> Option<&FormValue> {
        fields
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .filter(|v| !matches!(v, FormValue::Text(t) if t.is_empty()))
    };
    let mut issues = Vec::new();
    let text = |name: &str, required: bool, issues: &mut Vec<Issue>| -> Option<String> {
        match get(name) {
            None => {
                if required {
                    issues.push(Issue::missing(name, Value::Null));
                }
                None
            }
            Some(FormValue::Text(t)) => Some(t.clone()),
            Some(FormValue::File { filename }) => {
                issues.push(Issue::string_type(
                    name,
                    serde_json::json!({ "filename": filename }),
                ));
                None
            }
        }
    };
    if let Some(grant_type) = text("grant_type", false, &mut issues) {
        if grant_type != "password" {
            issues.push(Issue {
                kind: "string_pattern_mismatch",
                loc: Issue::body_field("grant_type"),
                msg: "String should match pattern '^password$'".into(),
                input: Value::from(grant_type),
                ctx: Some(serde_json::json!({ "pattern": "^password$" })),
            });
        }
    }
    let username = text("username", true, &mut issues);
    let password = text("password", true, &mut issues);
    for optional in ["scope", "client_id", "client_secret"] {
        text(optional, false, &mut issues);
    }
    match (username, password) {
        (Some(username), Some(password)) if issues.is_empty() => {
            Ok(LoginForm { username, password })
        }
        _ => Err(ApiError::Validation(issues)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issues(r: Result<impl std::fmt::Debug, ApiError>) -> String {
        match r {
            Err(ApiError::Validation(i)) => serde_json::to_string(&i).unwrap(),
            other => panic!("expected validation error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn login_urlencoded_and_multipart() {
        let f = parse_login_form(
            Some("application/x-www-form-urlencoded"),
            b"username=a%40b.com&password=p+w%21",
        )
        .await
        .unwrap();
        assert_eq!(
            f,
            LoginForm {
                username: "a@b.com".into(),
                password: "p w!".into()
            }
        );

        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\nada@example.com\r\n--XyZ\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\nAdaLovelace1815!\r\n--XyZ--\r\n";
        let f = parse_login_form(Some("multipart/form-data; boundary=XyZ"), body.as_bytes())
            .await
            .unwrap();
        assert_eq!(f.username, "ada@example.com");
        assert_eq!(f.password, "AdaLovelace1815!");
    }

    #[tokio::test]
    async fn login_field_rules_match_fastapi() {
        let form = Some("application/x-www-form-urlencoded");
        assert_eq!(
            issues(parse_login_form(form, b"username=&password=").await),
            r#"[{"type":"missing","loc":["body","username"],"msg":"Field required","input":null},{"type":"missing","loc":["body","password"],"msg":"Field required","input":null}]"#
        );
        assert_eq!(
            issues(
                parse_login_form(form, b"username=x&password=y&grant_type=client_credentials")
                    .await
            ),
            r#"[{"type":"string_pattern_mismatch","loc":["body","grant_type"],"msg":"String should match pattern '^password$'","input":"client_credentials","ctx":{"pattern":"^password$"}}]"#
        );
        // Empty grant_type is absent; duplicates: last wins.
        let f = parse_login_form(
            form,
            b"username=u&password=wrong&password=right&grant_type=",
        )
        .await
        .unwrap();
        assert_eq!(f.password, "right");
        // JSON or text bodies are not forms at all.
        assert!(issues(
            parse_login_form(
                Some("application/json"),
                br#"{"username":"u","password":"p"}"#
            )
            .await
        )
        .contains("username"));
        // Broken multipart is a 400, not a 500.
        assert!(matches!(
            parse_login_form(Some("multipart/form-data"), b"garbage").await,
            Err(ApiError::BodyParse)
        ));
        assert!(matches!(
            parse_login_form(Some("multipart/form-data; boundary=B"), b"--B\r\nbroken").await,
            Err(ApiError::BodyParse)
        ));
    }

    #[test]
    fn json_body_decoding_follows_fastapi() {
        assert_eq!(
            decode_json_body(Some("application/json"), b"").unwrap(),
            None
        );
        assert_eq!(
            decode_json_body(Some("text/plain"), b"{}").unwrap(),
            Some(Value::from("{}"))
        );
        assert!(decode_json_body(None, b"{}").unwrap().is_some());
        assert!(
            decode_json_body(Some("application/vnd.api+json; charset=utf-8"), b"{}")
                .unwrap()
                .is_some()
        );
        assert!(matches!(
            decode_json_body(Some("application/json"), b"\"\xff\""),
            Err(ApiError::BodyParse)
        ));
    }

    #[test]
    fn register_validation_matches_the_goldens() {
        let v = |s: &str| validate_new_user(Some(serde_json::from_str(s).unwrap()));
        assert_eq!(
            issues(v(r#"{}"#)),
            r#"[{"type":"missing","loc":["body","email"],"msg":"Field required","input":{}},{"type":"missing","loc":["body","password"],"msg":"Field required","input":{}}]"#
        );
        assert_eq!(
            issues(v(r#"{"email":5,"password":["a"]}"#)),
            r#"[{"type":"string_type","loc":["body","email"],"msg":"Input should be a valid string","input":5},{"type":"string_type","loc":["body","password"],"msg":"Input should be a valid string","input":["a"]}]"#
        );
        assert_eq!(
            issues(v(r#"{"email":"a@b.com","password":5,"full_name":[]}"#)),
            r#"[{"type":"string_type","loc":["body","full_name"],"msg":"Input should be a valid string","input":[]},{"type":"string_type","loc":["body","password"],"msg":"Input should be a valid string","input":5}]"#
        );
        assert!(issues(v(r#"{"email":"a@b.com","password":"short"}"#)).contains("string_too_short"));
        let long = format!(r#"{{"email":"a@b.com","password":"{}"}}"#, "x".repeat(1025));
        assert!(issues(v(&long)).contains("string_too_long"));
        let ok =
            v(r#"{"email":"Ada@Example.COM","password":"12345678","full_name":null}"#).unwrap();
        assert_eq!(ok.email, "Ada@example.com");
        assert_eq!(ok.full_name, None);
        assert!(issues(v(
            r#"{"email":"a@b.com","password":"12345678","full_name":"a\u0000b"}"#
        ))
        .contains("NUL"));
        assert!(
            issues(validate_new_user(Some(Value::Array(vec![])))).contains("model_attributes_type")
        );
        assert!(issues(validate_new_user(None)).contains(r#""loc":["body"]"#));
    }

    #[test]
    fn update_distinguishes_absent_and_null() {
        let v = |s: &str| validate_user_update(Some(serde_json::from_str(s).unwrap()));
        assert_eq!(v("{}").unwrap().full_name, None);
        assert_eq!(v(r#"{"full_name":null}"#).unwrap().full_name, Some(None));
        assert_eq!(
            v(r#"{"full_name":"Ada King"}"#).unwrap().full_name,
            Some(Some("Ada King".into()))
        );
        assert!(issues(v(r#"{"full_name":5}"#)).contains("string_type"));
    }
}
