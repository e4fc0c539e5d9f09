//! The admin API under `/auth/admin/`: pages of users, creating one (with an invitation mail
//! when no password is given), reading and changing one, and ending their sessions. Only
//! holders of `auth.admin_role` may use it (anyone else: 403 `Not enough permissions`), the
//! caller read from PostgreSQL on every request as for the other own endpoints; every answer is
//! `Cache-Control: no-store` (`App::handle`). A change that would leave no active holder of
//! the admin role is refused (409): nobody locks the team out by accident.

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::credentials::one_time::OneTimeToken;
use crate::own::api::{ApiError, Issue, Reply};
use crate::own::app::{hashing_error, App, OwnRequest};
use crate::own::forms;
use crate::store::account_tokens::Purpose;
use crate::store::audit::{self, Kind};
use crate::store::directory::{self, Change, Filter, Listed, PageError};
use crate::store::users::{self, is_role_name, UserResponse, MAX_ROLES_PER_USER};
use crate::store::{roles, sessions};

/// `limit` of a page when none is asked for, and the most one may ask for.
const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;
/// Longer ids and search texts name nobody (ids are UUIDs; emails are at most 320 bytes).
const MAX_ID_BYTES: usize = 64;
const MAX_SEARCH_CHARS: usize = 320;

/// A user in the admin API: `UserResponse` and when they last signed in.
#[derive(Serialize)]
struct AdminUser<'a> {
    #[serde(flatten)]
    user: UserResponse<'a>,
    last_login_at: Option<String>,
}

fn admin_user(listed: &Listed) -> AdminUser<'_> {
    AdminUser {
        user: listed.user.response(),
        last_login_at: listed.last_login_at.map(users::rfc3339),
    }
}

#[derive(Serialize)]
struct Page<'a> {
    users: Vec<AdminUser<'a>>,
    /// The id to pass as `after` for the next page; `None` on the last.
    next: Option<&'a str>,
}

impl App {
    /// The caller, if they hold `auth.admin_role` and their token counts (401 otherwise, as
    /// for every own endpoint; 403 `Not enough permissions` without the role).
    async fn admin(
        &self,
        db: &deadpool_postgres::Client,
        req: &OwnRequest,
    ) -> Result<String, ApiError> {
        let (account, _) = self.authenticate(db, req).await?;
        if account.user.roles.contains(&self.admin_role) {
            Ok(account.user.id)
        } else {
            Err(ApiError::NotEnoughPermissions)
        }
    }

    /// `GET /auth/admin/users?q=&role=&is_active=&limit=&after=`.
    pub(crate) async fn admin_list_users(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let db = users::client(&self.pool).await?;
        self.admin(&db, req).await?;
        let query = ListQuery::parse(req.query.as_deref())?;
        let (page, more) = directory::page(&db, &query.filter, query.after.as_deref(), query.limit)
            .await
            .map_err(|e| match e {
                PageError::UnknownCursor => ApiError::Validation(vec![query_issue(
                    "value_error",
                    "after",
                    "Value error, no user has this id".into(),
                    query.after.as_deref().unwrap_or_default(),
                    Some(serde_json::json!({ "error": "no user has this id" })),
                )]),
                PageError::Store(e) => e.into(),
            })?;
        let next = if more {
            page.last().map(|l| l.user.id.as_str())
        } else {
            None
        };
        Ok(Reply::json(
            200,
            &Page {
                users: page.iter().map(admin_user).collect(),
                next,
            },
        ))
    }

    /// `GET /auth/admin/users/{id}`.
    pub(crate) async fn admin_get_user(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let db = users::client(&self.pool).await?;
        self.admin(&db, req).await?;
        let id = path_id(&req.path)?;
        let listed = directory::find(&db, id)
            .await?
            .ok_or(ApiError::NoSuchUser)?;
        Ok(Reply::json(200, &admin_user(&listed)))
    }

    /// `POST /auth/admin/users` `{email, full_name?, roles?, password?}`: 201 and the user.
    /// With a password, a verification mail follows, as after a registration; without one,
    /// the password is a random secret nobody knows and an invitation carries a link that
    /// sets it (the reset flow's, for 7 days).
    pub(crate) async fn admin_create_user(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let caller = {
            let db = users::client(&self.pool).await?;
            self.admin(&db, req).await?
        };
        let body = forms::decode_json_body(req.content_type.as_deref(), &req.body)?;
        let new = validate_create(body)?;
        {
            let db = users::client(&self.pool).await?;
            if users::find_by_email(&db, &new.email).await?.is_some() {
                return Err(ApiError::EmailTaken);
            }
        }
        // A real hash either way, so a login for an invited account costs what any other does.
        let invited = new.password.is_none();
        let password = match new.password {
            Some(p) => p,
            None => OneTimeToken::generate()
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .encode(),
        };
        let policy = self.policy;
        let hash = self
            .hasher
            .run(move || policy.hash(&password))
            .await
            .map_err(hashing_error)?;
        let mut db = users::client(&self.pool).await?;
        let tx = db.transaction().await.map_err(users::db_error)?;
        let full_name = new.full_name.unwrap_or_default();
        let Some(user) = users::insert(&tx, &new.email, &full_name, &hash).await? else {
            return Err(ApiError::EmailTaken);
        };
        roles::grant(&tx, &user.id, &new.roles, Some(&caller)).await?;
        let origin = req.origin();
        let detail = serde_json::json!({ "invited": invited });
        self.audit_by(
            &tx,
            &origin,
            Kind::UserCreated,
            Some(&user.id),
            Some(&caller),
            None,
            detail,
        )
        .await?;
        if !new.roles.is_empty() {
            let detail = serde_json::json!({ "roles": new.roles });
            self.audit_by(
                &tx,
                &origin,
                Kind::RoleGranted,
                Some(&user.id),
                Some(&caller),
                None,
                detail,
            )
            .await?;
        }
        if invited {
            self.send_letter(&tx, &user, Purpose::PasswordReset, |letters, to, token| {
                letters.invitation(to, token)
            })
            .await?;
        } else {
            self.send_link(&tx, &user, Purpose::VerifyEmail).await?;
        }
        let listed = directory::find(&tx, &user.id)
            .await?
            .ok_or_else(|| ApiError::Internal("a user just created is gone".into()))?;
        tx.commit().await.map_err(users::db_error)?;
        self.mail_written();
        Ok(Reply::json(201, &admin_user(&listed)))
    }

    /// `PATCH /auth/admin/users/{id}` `{is_active?, full_name?, email_verified?, roles?}`
    /// (`roles`: the whole set the user is to hold). One transaction; every instance follows
    /// within a second (the triggers' notifications), this one at once.
    pub(crate) async fn admin_update_user(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let mut db = users::client(&self.pool).await?;
        let caller = self.admin(&db, req).await?;
        let id = path_id(&req.path)?.to_string();
        let body = forms::decode_json_body(req.content_type.as_deref(), &req.body)?;
        let patch = validate_patch(body)?;
        let tx = db.transaction().await.map_err(users::db_error)?;
        let before = directory::lock(&tx, &id)
            .await?
            .ok_or(ApiError::NoSuchUser)?
            .user;
        let holds = |roles: &[String]| roles.contains(&self.admin_role);
        let was_admin = before.is_active && holds(&before.roles);
        let active_after = patch.change.is_active.unwrap_or(before.is_active);
        let admin_after = patch.roles.as_deref().map_or(holds(&before.roles), holds);
        if was_admin && !(active_after && admin_after) {
            // Two administrators demoting each other at once: one of them waits, then counts.
            directory::lock_admins(&tx).await?;
            if roles::active_holders_besides(&tx, &self.admin_role, &id).await? == 0 {
                return Err(ApiError::LastAdmin);
            }
        }
        if patch.change != Change::default() {
            directory::update(&tx, &id, &patch.change).await?;
        }
        // One event for each thing that changed (none for what was already so).
        let origin = req.origin();
        let mut events: Vec<(Kind, Value)> = Vec::new();
        match patch.change.is_active {
            Some(true) if !before.is_active => events.push((Kind::UserActivated, json!({}))),
            Some(false) if before.is_active => events.push((Kind::UserDeactivated, json!({}))),
            _ => {}
        }
        if patch.change.email_verified == Some(true) && !before.email_verified {
            events.push((Kind::EmailVerified, json!({ "by": "admin" })));
        }
        if let Some(wanted) = &patch.roles {
            let gone: Vec<String> = before
                .roles
                .iter()
                .filter(|r| !wanted.contains(r))
                .cloned()
                .collect();
            let revoked = roles::revoke(&tx, &id, &gone).await?;
            let granted = roles::grant(&tx, &id, wanted, Some(&caller)).await?;
            if !granted.is_empty() {
                events.push((Kind::RoleGranted, json!({ "roles": granted })));
            }
            if !revoked.is_empty() {
                events.push((Kind::RoleRevoked, json!({ "roles": revoked })));
            }
        }
        for (kind, detail) in events {
            self.audit_by(&tx, &origin, kind, Some(&id), Some(&caller), None, detail)
                .await?;
        }
        let after = directory::find(&tx, &id)
            .await?
            .ok_or(ApiError::NoSuchUser)?;
        tx.commit().await.map_err(users::db_error)?;
        self.changed(&id);
        Ok(Reply::json(200, &admin_user(&after)))
    }

    /// `DELETE /auth/admin/users/{id}/sessions`: every session of the user ends, and every
    /// token of theirs without one (204).
    pub(crate) async fn admin_end_sessions(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let mut db = users::client(&self.pool).await?;
        let caller = self.admin(&db, req).await?;
        let id = path_id(
            req.path
                .strip_suffix("/sessions")
                .ok_or(ApiError::NoSuchUser)?,
        )?;
        if users::find_by_id(&db, id).await?.is_none() {
            return Err(ApiError::NoSuchUser);
        }
        let tx = db.transaction().await.map_err(users::db_error)?;
        let ended = sessions::end_everything(&tx, id).await?;
        let detail = json!({ "all": true, "sessions": ended });
        self.audit_by(
            &tx,
            &req.origin(),
            Kind::SessionRevoked,
            Some(id),
            Some(&caller),
            None,
            detail,
        )
        .await?;
        tx.commit().await.map_err(users::db_error)?;
        self.changed(id);
        Ok(Reply::no_content())
    }
}

impl App {
    /// `DELETE /auth/admin/users/{id}/mfa`: every factor and recovery code of the user go, and
    /// every session and token (a lost phone: they sign in with the password and enrol again).
    pub(crate) async fn admin_reset_mfa(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let mut db = users::client(&self.pool).await?;
        let caller = self.admin(&db, req).await?;
        let id = path_id(req.path.strip_suffix("/mfa").ok_or(ApiError::NoSuchUser)?)?;
        let tx = db.transaction().await.map_err(users::db_error)?;
        let user = directory::lock(&tx, id)
            .await?
            .ok_or(ApiError::NoSuchUser)?
            .user;
        let factors = crate::store::mfa::remove_all(&tx, id).await?;
        let sessions = sessions::end_everything(&tx, id).await?;
        let detail = json!({ "all": true, "factors": factors, "sessions": sessions });
        self.audit_by(
            &tx,
            &req.origin(),
            Kind::MfaRemoved,
            Some(id),
            Some(&caller),
            None,
            detail,
        )
        .await?;
        self.write_mail(
            &tx,
            &self.letters.mfa_notice(
                &user.email,
                "An administrator removed every second factor of",
            ),
        )
        .await?;
        tx.commit().await.map_err(users::db_error)?;
        self.changed(id);
        self.mail_written();
        Ok(Reply::no_content())
    }
}

/// A page of the audit log.
#[derive(Serialize)]
struct Events {
    events: Vec<audit::Stored>,
    /// The `before` of the next page; `None` on the last.
    next: Option<i64>,
}

impl App {
    /// `GET /auth/admin/events?user_id=&type=&limit=&before=`: newest first.
    pub(crate) async fn admin_events(&self, req: &OwnRequest) -> Result<Reply, ApiError> {
        let db = users::client(&self.pool).await?;
        self.admin(&db, req).await?;
        let (query, limit) = events_query(req.query.as_deref())?;
        let (events, more) = audit::page(&db, &query, limit).await?;
        let next = if more {
            events.last().map(|e| e.id)
        } else {
            None
        };
        Ok(Reply::json(200, &Events { events, next }))
    }
}

/// The events query, checked as FastAPI checks `Query` parameters.
fn events_query(query: Option<&str>) -> Result<(audit::Query, i64), ApiError> {
    let mut q = audit::Query::default();
    let mut limit = DEFAULT_PAGE;
    let mut issues = Vec::new();
    let seen = last_values(query, &["user_id", "type", "limit", "before"]);
    let text = |k: &str| seen.get(k).and_then(Value::as_str);
    if let Some(u) = text("user_id") {
        if u.len() > MAX_ID_BYTES {
            issues.push(query_issue(
                "string_too_long",
                "user_id",
                format!("String should have at most {MAX_ID_BYTES} characters"),
                u,
                Some(json!({ "max_length": MAX_ID_BYTES })),
            ));
        } else if !u.is_empty() {
            q.user_id = Some(u.to_string());
        }
    }
    if let Some(t) = text("type") {
        match audit::Kind::parse(t) {
            Some(kind) => q.kind = Some(kind),
            None => {
                let names: Vec<String> = Kind::ALL
                    .iter()
                    .map(|k| format!("'{}'", k.as_str()))
                    .collect();
                let expected = match names.split_last() {
                    Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                    None => String::new(),
                };
                issues.push(query_issue(
                    "enum",
                    "type",
                    format!("Input should be {expected}"),
                    t,
                    Some(json!({ "expected": expected })),
                ));
            }
        }
    }
    if let Some(l) = text("limit") {
        match page_limit(l) {
            Ok(n) => limit = n,
            Err(issue) => issues.push(*issue),
        }
    }
    if let Some(b) = text("before") {
        match b.trim().parse::<i64>() {
            Ok(n) if n >= 1 => q.before = Some(n),
            Ok(_) => issues.push(query_issue(
                "greater_than_equal",
                "before",
                "Input should be greater than or equal to 1".into(),
                b,
                Some(json!({ "ge": 1 })),
            )),
            Err(_) => issues.push(query_issue(
                "int_parsing",
                "before",
                "Input should be a valid integer, unable to parse string as an integer".into(),
                b,
                None,
            )),
        }
    }
    if issues.is_empty() {
        Ok((q, limit))
    } else {
        Err(ApiError::Validation(issues))
    }
}

/// The value of each of `names` in a query string: the last one given, as FastAPI reads a
/// repeated scalar parameter (others are ignored).
fn last_values(query: Option<&str>, names: &[&str]) -> Map<String, Value> {
    let mut seen = Map::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if names.contains(&&*k) {
            seen.insert(k.into_owned(), Value::from(v.into_owned()));
        }
    }
    seen
}

/// A `limit` of 1 to [`MAX_PAGE`].
fn page_limit(l: &str) -> Result<i64, Box<Issue>> {
    match l.trim().parse::<i64>() {
        Err(_) => Err(Box::new(query_issue(
            "int_parsing",
            "limit",
            "Input should be a valid integer, unable to parse string as an integer".into(),
            l,
            None,
        ))),
        Ok(n) if n < 1 => Err(Box::new(query_issue(
            "greater_than_equal",
            "limit",
            "Input should be greater than or equal to 1".into(),
            l,
            Some(json!({ "ge": 1 })),
        ))),
        Ok(n) if n > MAX_PAGE => Err(Box::new(query_issue(
            "less_than_equal",
            "limit",
            format!("Input should be less than or equal to {MAX_PAGE}"),
            l,
            Some(json!({ "le": MAX_PAGE })),
        ))),
        Ok(n) => Ok(n),
    }
}

/// The `{id}` of `/auth/admin/users/{id}`: 404 for anything no user could have.
fn path_id(path: &str) -> Result<&str, ApiError> {
    path.strip_prefix("/auth/admin/users/")
        .filter(|id| !id.is_empty() && id.len() <= MAX_ID_BYTES && !id.contains(['/', '\0']))
        .ok_or(ApiError::NoSuchUser)
}

/// The list's query, checked as FastAPI checks `Query` parameters (the last of repeated ones
/// counts; unknown ones are ignored).
#[derive(Debug, PartialEq, Eq)]
struct ListQuery {
    filter: Filter,
    after: Option<String>,
    limit: i64,
}

fn query_issue(
    kind: &'static str,
    field: &str,
    msg: String,
    input: &str,
    ctx: Option<Value>,
) -> Issue {
    Issue {
        kind,
        loc: vec![Value::from("query"), Value::from(field)],
        msg,
        input: Value::from(input),
        ctx,
    }
}

impl ListQuery {
    fn parse(query: Option<&str>) -> Result<ListQuery, ApiError> {
        let mut q = ListQuery {
            filter: Filter::default(),
            after: None,
            limit: DEFAULT_PAGE,
        };
        let mut issues = Vec::new();
        let seen = last_values(query, &["q", "role", "is_active", "limit", "after"]);
        let text = |k: &str| seen.get(k).and_then(Value::as_str);
        if let Some(t) = text("q") {
            if t.chars().count() > MAX_SEARCH_CHARS {
                issues.push(query_issue(
                    "string_too_long",
                    "q",
                    format!("String should have at most {MAX_SEARCH_CHARS} characters"),
                    t,
                    Some(serde_json::json!({ "max_length": MAX_SEARCH_CHARS })),
                ));
            } else if !t.is_empty() {
                q.filter.text = Some(t.to_string());
            }
        }
        if let Some(r) = text("role") {
            if is_role_name(r) {
                q.filter.role = Some(r.to_string());
            } else {
                issues.push(role_issue(
                    vec![Value::from("query"), Value::from("role")],
                    r,
                ));
            }
        }
        if let Some(a) = text("is_active") {
            match parse_bool(a) {
                Some(b) => q.filter.active = Some(b),
                None => issues.push(query_issue(
                    "bool_parsing",
                    "is_active",
                    "Input should be a valid boolean, unable to interpret input".into(),
                    a,
                    None,
                )),
            }
        }
        if let Some(l) = text("limit") {
            match page_limit(l) {
                Ok(n) => q.limit = n,
                Err(issue) => issues.push(*issue),
            }
        }
        if let Some(a) = text("after") {
            if !a.is_empty() {
                q.after = Some(a.to_string());
            }
        }
        if issues.is_empty() {
            Ok(q)
        } else {
            Err(ApiError::Validation(issues))
        }
    }
}

/// pydantic's lax booleans, as FastAPI reads a `bool` query parameter.
fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Some(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Some(false),
        _ => None,
    }
}

fn role_issue(loc: Vec<Value>, input: &str) -> Issue {
    Issue {
        kind: "string_pattern_mismatch",
        loc,
        msg: format!("String should match pattern '{ROLE_PATTERN}'"),
        input: Value::from(input),
        ctx: Some(serde_json::json!({ "pattern": ROLE_PATTERN })),
    }
}

const ROLE_PATTERN: &str = "^[a-z][a-z0-9_.:-]{0,63}$";

/// A `roles` field: a list of role names, at most [`MAX_ROLES_PER_USER`] of them; returned
/// sorted, each once.
fn roles_field(value: &Value, issues: &mut Vec<Issue>) -> Option<Vec<String>> {
    let loc = |i: Option<usize>| {
        let mut loc = Issue::body_field("roles");
        loc.extend(i.map(Value::from));
        loc
    };
    let Value::Array(items) = value else {
        issues.push(Issue {
            kind: "list_type",
            loc: loc(None),
            msg: "Input should be a valid list".into(),
            input: value.clone(),
            ctx: None,
        });
        return None;
    };
    if items.len() > MAX_ROLES_PER_USER {
        // One issue for the list, not one per item: the answer stays small whatever was sent.
        issues.push(Issue {
            kind: "too_long",
            loc: loc(None),
            msg: format!(
                "List should have at most {MAX_ROLES_PER_USER} items after validation, not {}",
                items.len()
            ),
            input: Value::from(format!("a list of {} items", items.len())),
            ctx: Some(serde_json::json!({
                "field_type": "List",
                "max_length": MAX_ROLES_PER_USER,
                "actual_length": items.len(),
            })),
        });
        return None;
    }
    let before = issues.len();
    let mut roles = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(name) if is_role_name(name) => roles.push(name.clone()),
            Value::String(name) => issues.push(role_issue(loc(Some(i)), name)),
            other => issues.push(Issue {
                kind: "string_type",
                loc: loc(Some(i)),
                msg: "Input should be a valid string".into(),
                input: other.clone(),
                ctx: None,
            }),
        }
    }
    roles.sort();
    roles.dedup();
    (issues.len() == before).then_some(roles)
}

/// A JSON boolean, or absent/null (unchanged).
fn bool_field(map: &Map<String, Value>, field: &str, issues: &mut Vec<Issue>) -> Option<bool> {
    match map.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            issues.push(Issue {
                kind: "bool_type",
                loc: Issue::body_field(field),
                msg: "Input should be a valid boolean".into(),
                input: other.clone(),
                ctx: None,
            });
            None
        }
    }
}

/// `POST /auth/admin/users`'s body.
#[derive(Debug, PartialEq, Eq)]
struct NewUser {
    email: String,
    full_name: Option<String>,
    roles: Vec<String>,
    password: Option<String>,
}

fn validate_create(body: Option<Value>) -> Result<NewUser, ApiError> {
    let map = forms::object(body)?;
    let mut issues = Vec::new();
    let whole = Value::Object(map.clone());
    let email = forms::email_field(&map, &whole, &mut issues);
    let full_name = forms::string_field(&map, "full_name", true, &mut issues)
        .filter(|name| forms::no_nul("full_name", name, &mut issues));
    let roles = match map.get("roles") {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(value) => roles_field(value, &mut issues),
    };
    let password = forms::string_field(&map, "password", true, &mut issues);
    if let Some(p) = &password {
        forms::password_policy("password", p, &mut issues);
    }
    match (email, roles) {
        (Some(email), Some(roles)) if issues.is_empty() => Ok(NewUser {
            email,
            full_name,
            roles,
            password,
        }),
        _ => Err(ApiError::Validation(issues)),
    }
}

/// `PATCH /auth/admin/users/{id}`'s body.
#[derive(Debug, PartialEq, Eq)]
struct Patch {
    change: Change,
    roles: Option<Vec<String>>,
}

fn validate_patch(body: Option<Value>) -> Result<Patch, ApiError> {
    let map = forms::object(body)?;
    let mut issues = Vec::new();
    let is_active = bool_field(&map, "is_active", &mut issues);
    let full_name = match map.get("full_name") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) => {
            forms::no_nul("full_name", s, &mut issues).then(|| Some(s.clone()))
        }
        Some(other) => {
            issues.push(Issue::string_type("full_name", other.clone()));
            None
        }
    };
    let email_verified = bool_field(&map, "email_verified", &mut issues);
    let roles = match map.get("roles") {
        None | Some(Value::Null) => None,
        Some(value) => roles_field(value, &mut issues),
    };
    if issues.is_empty() {
        Ok(Patch {
            change: Change {
                is_active,
                full_name,
                email_verified,
            },
            roles,
        })
    } else {
        Err(ApiError::Validation(issues))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issues(e: ApiError) -> Vec<Issue> {
        match e {
            ApiError::Validation(issues) => issues,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_list_query_takes_fastapis_forms_and_refuses_the_rest() {
        let q =
            ListQuery::parse(Some("q=Ann&role=ops&is_active=no&limit=7&after=x&zzz=1")).unwrap();
        assert_eq!(q.filter.text.as_deref(), Some("Ann"));
        assert_eq!(q.filter.role.as_deref(), Some("ops"));
        assert_eq!(q.filter.active, Some(false));
        assert_eq!((q.limit, q.after.as_deref()), (7, Some("x")));
        assert_eq!(ListQuery::parse(None).unwrap().limit, DEFAULT_PAGE);
        // The last of repeated parameters counts.
        assert_eq!(ListQuery::parse(Some("limit=1&limit=3")).unwrap().limit, 3);
        let bad =
            issues(ListQuery::parse(Some("role=Admin%07&is_active=maybe&limit=0")).unwrap_err());
        let kinds: Vec<_> = bad.iter().map(|i| i.kind).collect();
        assert_eq!(
            kinds,
            [
                "string_pattern_mismatch",
                "bool_parsing",
                "greater_than_equal"
            ]
        );
        for limit in ["201", "abc", "99999999999999999999"] {
            assert!(ListQuery::parse(Some(&format!("limit={limit}"))).is_err());
        }
        assert!(ListQuery::parse(Some(&format!("q={}", "a".repeat(321)))).is_err());
    }

    #[test]
    fn roles_are_names_at_most_64_sorted_and_once() {
        let p = validate_patch(Some(json!({"roles": ["ops", "admin", "ops"]}))).unwrap();
        assert_eq!(p.roles.unwrap(), ["admin", "ops"]);
        let many: Vec<String> = (0..10_000).map(|i| format!("r{i}")).collect();
        let bad = issues(validate_patch(Some(json!({ "roles": many }))).unwrap_err());
        assert_eq!(bad.len(), 1, "one issue for the whole list");
        assert_eq!(bad[0].kind, "too_long");
        assert!(serde_json::to_string(&bad).unwrap().len() < 400);
        for roles in [
            json!("admin"),
            json!([1]),
            json!(["ad\u{0}min"]),
            json!(["Admin"]),
        ] {
            assert!(
                validate_patch(Some(json!({ "roles": roles }))).is_err(),
                "{roles}"
            );
        }
        assert_eq!(validate_patch(Some(json!({}))).unwrap().roles, None);
    }

    #[test]
    fn a_patch_says_what_changes_and_null_clears_only_the_name() {
        let p = validate_patch(Some(
            json!({"is_active": false, "full_name": null, "email_verified": null}),
        ))
        .unwrap();
        assert_eq!(
            p.change,
            Change {
                is_active: Some(false),
                full_name: Some(None),
                email_verified: None
            }
        );
        for body in [
            json!({"is_active": "false"}),
            json!({"email_verified": 1}),
            json!({"full_name": 5}),
            json!([]),
        ] {
            assert!(validate_patch(Some(body.clone())).is_err(), "{body}");
        }
    }

    #[test]
    fn a_new_user_needs_an_email_and_a_password_only_if_one_is_given() {
        let u = validate_create(Some(json!({"email": "New@Example.com"}))).unwrap();
        assert_eq!(u.password, None);
        assert!(u.roles.is_empty());
        assert!(
            validate_create(Some(json!({"email": "a@example.com", "password": "short"}))).is_err()
        );
        assert!(validate_create(Some(json!({"full_name": "x"}))).is_err());
    }

    #[test]
    fn path_ids_no_user_could_have_are_404() {
        assert_eq!(path_id("/auth/admin/users/abc").ok(), Some("abc"));
        for path in [
            "/auth/admin/users/".to_string(),
            format!("/auth/admin/users/{}", "a".repeat(65)),
            "/auth/admin/users/a\0b".to_string(),
        ] {
            assert!(matches!(path_id(&path), Err(ApiError::NoSuchUser)));
        }
    }
}
