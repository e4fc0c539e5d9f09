//! `sentinel-gateway users …`: managing users without SQL, against the configured database;
//! and `sentinel-gateway keys …`: the identity assertion keys (list, rotate, revoke).
//!
//! Every change goes through the same statements as the API, so running gateways hear of it
//! the same way (the `users` and `sentinel_sessions` triggers' `NOTIFY`): a deactivation or a
//! revocation reaches every instance within a second. Passwords are read from a prompt (a
//! terminal, without echo) or from the first line of standard input, never from the command
//! line, where `ps` and shell histories would keep them.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use deadpool_postgres::GenericClient;

use crate::config::Config;
use crate::credentials::email;
use crate::own::forms::{PASSWORD_MAX_CHARS, PASSWORD_MIN_CHARS};
use crate::store::account_tokens::{self, Purpose};
use crate::store::audit::{self, Kind};
use crate::store::{db, mfa, roles, sessions, users};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List users, newest first.
    List {
        /// Only emails containing this text (any letter case).
        #[arg(long)]
        search: Option<String>,
        /// Only users holding this role.
        #[arg(long)]
        role: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One user, by id or email, with their live sessions.
    Show {
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// A new active user; the password is read from a prompt or standard input.
    Create {
        email: String,
        #[arg(long)]
        full_name: Option<String>,
        /// Mark the address verified at once.
        #[arg(long)]
        verified: bool,
        /// A role to grant at once (again for more).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Grant roles (names like `admin` or `billing.read`); in effect everywhere within a second.
    Grant {
        user: String,
        #[arg(required = true)]
        roles: Vec<String>,
    },
    /// Take roles away; in effect everywhere within a second.
    RevokeRole {
        user: String,
        #[arg(required = true)]
        roles: Vec<String>,
    },
    /// Refuse the user everywhere (their tokens stop working within a second).
    Deactivate { user: String },
    /// Let a deactivated user in again.
    Activate { user: String },
    /// A new password (prompt or standard input); every session and earlier token ends.
    SetPassword { user: String },
    /// End every session and every token of the user.
    RevokeSessions { user: String },
    /// Mark the user's address verified.
    VerifyEmail { user: String },
    /// Remove every second factor and recovery code of the user, and end their sessions (a
    /// lost phone: they sign in with the password and enrol again).
    ResetMfa { user: String },
}

/// A connection to the configured database, migrated as the gateway needs it (the same
/// migrations `serve` applies); a clear error at once when it cannot be reached.
async fn migrated(config: &Config) -> anyhow::Result<tokio_postgres::Client> {
    let mut client = db::connect(&config.database).await?;
    db::migrate(&mut client).await?;
    Ok(client)
}

/// `sentinel-gateway keys …`: the identity assertion keys.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Every key: which signs now, which is next, which are retired or gone from the JWKS.
    List,
    /// The next key signs from now on, on every instance within a moment, and a new next one
    /// is made; the old key stays in the JWKS until its assertions have expired.
    Rotate {
        /// The current key leaked: take it out of the JWKS at once (assertions it signed stop
        /// verifying as soon as verifiers fetch the JWKS again).
        #[arg(long)]
        revoke: bool,
    },
}

/// Runs one `keys` command; what it prints goes to `out`.
pub fn run_keys(config: &Config, command: KeysCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    rt.block_on(async {
        // Keys are sealed under it: never under an empty or placeholder secret.
        config.require_secret()?;
        if !config.identity_assertion.enabled {
            bail!("identity_assertion.enabled is false: no keys are kept");
        }
        let mut client = migrated(config).await?;
        let assertions = crate::credentials::assertion::Assertions::new(
            &config.identity_assertion,
            config.auth.secret_key.expose(),
            Default::default(),
        );
        match command {
            KeysCommand::List => {
                // The first gateway to start makes the keys; so does this.
                assertions.maintain(&mut client).await.map_err(api)?;
                let now = chrono::Utc::now();
                writeln!(
                    out,
                    "{:<43}  {:<8}  {:<20}  PUBLISHED UNTIL",
                    "KID", "STATE", "SIGNS FROM"
                )?;
                let rows = crate::store::signing_keys::all(&client)
                    .await
                    .map_err(api)?;
                let current = rows
                    .iter()
                    .filter(|r| r.3 && r.1 <= now)
                    .map(|r| r.0.clone())
                    .next_back();
                for (kid, activates, expires, published) in &rows {
                    let state = if !published {
                        "gone"
                    } else if Some(kid) == current.as_ref() {
                        "current"
                    } else if *activates > now {
                        "next"
                    } else {
                        "retired"
                    };
                    writeln!(
                        out,
                        "{kid:<43}  {state:<8}  {:<20}  {}",
                        activates.format("%Y-%m-%dT%H:%M:%SZ"),
                        expires.format("%Y-%m-%dT%H:%M:%SZ")
                    )?;
                }
            }
            KeysCommand::Rotate { revoke } => {
                assertions.maintain(&mut client).await.map_err(api)?;
                let (old, new) = assertions
                    .rotate_now(&mut client, revoke)
                    .await
                    .map_err(api)?;
                let old = old.unwrap_or_else(|| "none".into());
                if revoke {
                    writeln!(out, "{new} signs now; {old} revoked (no longer published)")?;
                } else {
                    writeln!(
                        out,
                        "{new} signs now; {old} stays published until its assertions expire"
                    )?;
                }
            }
        }
        Ok(())
    })
}

/// Runs one `users` command; what it prints goes to `out`.
/// A pooled connection to the configured database, migrated as `serve` would migrate it.
pub(crate) async fn database(config: &Config) -> anyhow::Result<deadpool_postgres::Client> {
    drop(migrated(config).await?);
    let pool = db::pool(&config.database)?;
    tokio::time::timeout(Duration::from_secs(10), pool.get())
        .await
        .map_err(|_| anyhow!("no database connection within 10 s"))?
        .map_err(|e| anyhow!("cannot reach the database: {e}"))
}

pub fn run(config: &Config, command: UsersCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    rt.block_on(run_async(config, command, out))
}

async fn run_async(
    config: &Config,
    command: UsersCommand,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut db = database(config).await?;
    let activate = matches!(command, UsersCommand::Activate { .. });
    match command {
        UsersCommand::List {
            search,
            role,
            limit,
            json,
        } => {
            if let Some(role) = &role {
                check_roles(std::slice::from_ref(role))?;
            }
            let rows = users::list(
                &db,
                search.as_deref(),
                role.as_deref(),
                limit.clamp(1, 100_000),
            )
            .await
            .map_err(api)?;
            if !json {
                writeln!(
                    out,
                    "{:<36}  {:<6}  {:<8}  {:<27}  {:<30}  ROLES",
                    "ID", "ACTIVE", "VERIFIED", "CREATED", "EMAIL"
                )?;
            }
            for user in rows {
                if json {
                    writeln!(out, "{}", serde_json::to_string(&user.response())?)?;
                } else {
                    let r = user.response();
                    writeln!(
                        out,
                        "{:<36}  {:<6}  {:<8}  {:<27}  {:<30}  {}",
                        r.id,
                        yes_no(r.is_active),
                        yes_no(r.email_verified),
                        r.created_at,
                        r.email,
                        r.roles.join(",")
                    )?;
                }
            }
        }
        UsersCommand::Show { user, json } => {
            let user = find(&db, &user).await?;
            let max = config.auth.max_sessions_per_user;
            let live = sessions::list_live(&db, &user.id, max).await.map_err(api)?;
            if json {
                let sessions: Vec<_> = live
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "id": s.id,
                            "created_at": s.created_at.to_rfc3339(),
                            "last_used_at": s.last_used_at.to_rfc3339(),
                            "user_agent": s.user_agent,
                            "ip_address": s.client_address,
                        })
                    })
                    .collect();
                let mut value = serde_json::to_value(user.response())?;
                value["sessions"] = serde_json::Value::from(sessions);
                writeln!(out, "{value}")?;
            } else {
                let r = user.response();
                writeln!(out, "id:             {}", r.id)?;
                writeln!(out, "email:          {}", r.email)?;
                writeln!(out, "full name:      {}", r.full_name.unwrap_or(""))?;
                writeln!(out, "active:         {}", yes_no(r.is_active))?;
                writeln!(out, "email verified: {}", yes_no(r.email_verified))?;
                writeln!(out, "roles:          {}", r.roles.join(", "))?;
                writeln!(out, "created:        {}", r.created_at)?;
                writeln!(out, "live sessions:  {}", live.len())?;
                for s in live {
                    writeln!(
                        out,
                        "  {}  since {}  last used {}  {}  {}",
                        s.id,
                        s.created_at.format("%Y-%m-%d %H:%M:%S"),
                        s.last_used_at.format("%Y-%m-%d %H:%M:%S"),
                        s.client_address.as_deref().unwrap_or("-"),
                        s.user_agent.as_deref().unwrap_or("-")
                    )?;
                }
            }
        }
        UsersCommand::Create {
            email: address,
            full_name,
            verified,
            roles,
        } => {
            let address = email::normalize(&address)
                .map_err(|e| anyhow!("not a valid email address: {}", e.0))?;
            check_roles(&roles)?;
            if roles.len() > users::MAX_ROLES_PER_USER {
                bail!("a user holds at most {} roles", users::MAX_ROLES_PER_USER);
            }
            let password = read_password("Password for the new user: ")?;
            let hash = config.password.policy().hash(&password)?;
            let tx = begin(&mut db).await?;
            let user = users::insert(&tx, &address, full_name.as_deref().unwrap_or(""), &hash)
                .await
                .map_err(api)?
                .ok_or_else(|| anyhow!("{address} is already registered"))?;
            let user = if verified {
                users::mark_email_verified(&tx, &user.id, &user.email)
                    .await
                    .map_err(api)?
                    .unwrap_or(user)
            } else {
                user
            };
            let granted = roles::grant(&tx, &user.id, &roles, None)
                .await
                .map_err(api)?;
            record(
                &tx,
                Kind::UserCreated,
                &user.id,
                json!({ "invited": false }),
            )
            .await?;
            record_roles(&tx, Kind::RoleGranted, &user.id, &granted).await?;
            commit(tx).await?;
            writeln!(out, "created {} {}", user.id, user.email)?;
        }
        UsersCommand::Grant { user, roles: names } => {
            check_roles(&names)?;
            let user = find(&db, &user).await?;
            if user.roles.len() + names.len() > users::MAX_ROLES_PER_USER {
                bail!("a user holds at most {} roles", users::MAX_ROLES_PER_USER);
            }
            let tx = begin(&mut db).await?;
            let granted = roles::grant(&tx, &user.id, &names, None)
                .await
                .map_err(api)?;
            record_roles(&tx, Kind::RoleGranted, &user.id, &granted).await?;
            commit(tx).await?;
            writeln!(
                out,
                "granted {} to {} {}",
                list_or_nothing(&granted),
                user.id,
                user.email
            )?;
        }
        UsersCommand::RevokeRole { user, roles: names } => {
            check_roles(&names)?;
            let user = find(&db, &user).await?;
            let tx = begin(&mut db).await?;
            let revoked = roles::revoke(&tx, &user.id, &names).await.map_err(api)?;
            record_roles(&tx, Kind::RoleRevoked, &user.id, &revoked).await?;
            commit(tx).await?;
            writeln!(
                out,
                "revoked {} from {} {}",
                list_or_nothing(&revoked),
                user.id,
                user.email
            )?;
        }
        UsersCommand::Deactivate { user } | UsersCommand::Activate { user } => {
            let (active, kind, done) = if activate {
                (true, Kind::UserActivated, "activated")
            } else {
                (false, Kind::UserDeactivated, "deactivated")
            };
            let user = find(&db, &user).await?;
            let tx = begin(&mut db).await?;
            users::set_active(&tx, &user.id, active)
                .await
                .map_err(api)?;
            if user.is_active != active {
                record(&tx, kind, &user.id, json!({})).await?;
            }
            commit(tx).await?;
            writeln!(out, "{done} {} {}", user.id, user.email)?;
        }
        UsersCommand::SetPassword { user } => {
            let user = find(&db, &user).await?;
            let password = read_password(&format!("New password for {}: ", user.email))?;
            let hash = config.password.policy().hash(&password)?;
            let tx = begin(&mut db).await?;
            users::set_password_hash(&tx, &user.id, &hash)
                .await
                .map_err(api)?;
            let ended = sessions::end_everything(&tx, &user.id).await.map_err(api)?;
            account_tokens::end_all(&tx, &user.id, Purpose::PasswordReset)
                .await
                .map_err(api)?;
            record(
                &tx,
                Kind::PasswordChanged,
                &user.id,
                json!({ "sessions_ended": ended }),
            )
            .await?;
            commit(tx).await?;
            writeln!(
                out,
                "set the password of {} {}; ended {ended} sessions",
                user.id, user.email
            )?;
        }
        UsersCommand::RevokeSessions { user } => {
            let user = find(&db, &user).await?;
            let tx = begin(&mut db).await?;
            let ended = sessions::end_everything(&tx, &user.id).await.map_err(api)?;
            let detail = json!({ "all": true, "sessions": ended });
            record(&tx, Kind::SessionRevoked, &user.id, detail).await?;
            commit(tx).await?;
            writeln!(
                out,
                "ended {ended} sessions and every other token of {} {}",
                user.id, user.email
            )?;
        }
        UsersCommand::ResetMfa { user } => {
            let user = find(&db, &user).await?;
            let tx = begin(&mut db).await?;
            let factors = mfa::remove_all(&tx, &user.id).await.map_err(api)?;
            let ended = sessions::end_everything(&tx, &user.id).await.map_err(api)?;
            let detail = json!({ "all": true, "factors": factors, "sessions": ended });
            record(&tx, Kind::MfaRemoved, &user.id, detail).await?;
            commit(tx).await?;
            writeln!(
                out,
                "removed {factors} second factors of {} {}, and ended {ended} sessions",
                user.id, user.email
            )?;
        }
        UsersCommand::VerifyEmail { user } => {
            let user = find(&db, &user).await?;
            let tx = begin(&mut db).await?;
            users::mark_email_verified(&tx, &user.id, &user.email)
                .await
                .map_err(api)?;
            if !user.email_verified {
                record(
                    &tx,
                    Kind::EmailVerified,
                    &user.id,
                    json!({ "by": "operator" }),
                )
                .await?;
            }
            commit(tx).await?;
            writeln!(out, "verified {} {}", user.id, user.email)?;
        }
    }
    Ok(())
}

/// A transaction on `db`, its error as the command's.
async fn begin(
    db: &mut deadpool_postgres::Client,
) -> anyhow::Result<deadpool_postgres::Transaction<'_>> {
    db.transaction().await.map_err(users::db_error).map_err(api)
}

async fn commit(tx: deadpool_postgres::Transaction<'_>) -> anyhow::Result<()> {
    tx.commit().await.map_err(users::db_error).map_err(api)
}

/// Records an operator's change to `user_id` in the audit log (within `db`'s transaction):
/// no actor, no request, `"via": "cli"` in the detail.
async fn record(
    db: &impl GenericClient,
    kind: Kind,
    user_id: &str,
    mut detail: serde_json::Value,
) -> anyhow::Result<()> {
    detail["via"] = json!("cli");
    let origin = audit::Origin::default();
    let event = audit::Event {
        kind,
        user_id: Some(user_id),
        actor_id: None,
        session_id: None,
        origin: &origin,
        detail,
    };
    audit::record(db, &event).await.map_err(api)
}

/// The event of roles granted or revoked by the CLI, when any were (a grant of roles already
/// held changes nothing and records nothing).
async fn record_roles(
    db: &impl GenericClient,
    kind: Kind,
    user_id: &str,
    roles: &[String],
) -> anyhow::Result<()> {
    if roles.is_empty() {
        return Ok(());
    }
    record(db, kind, user_id, json!({ "roles": roles })).await
}

/// Refuses a role name the table would refuse, with the rule.
fn check_roles(names: &[String]) -> anyhow::Result<()> {
    if let Some(bad) = names.iter().find(|n| !users::is_role_name(n)) {
        bail!(
            "{bad:?} is not a role name: a lower-case letter, then up to 63 lower-case \
             letters, digits and _ . : -"
        );
    }
    Ok(())
}

fn list_or_nothing(names: &[String]) -> String {
    if names.is_empty() {
        "nothing new".to_string()
    } else {
        names.join(", ")
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// An API error as the CLI says it (its text, with the cause for "unavailable").
pub(crate) fn api(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

/// The user named by `who`: an id, or an email in any letter case.
pub(crate) async fn find(db: &deadpool_postgres::Client, who: &str) -> anyhow::Result<users::User> {
    let by_id = users::find_by_id(db, who).await.map_err(api)?;
    let user = match by_id {
        Some(user) => Some(user),
        None => users::find_by_email(db, who).await.map_err(api)?,
    };
    user.ok_or_else(|| anyhow!("no user with the id or email {who:?}"))
}

/// A password from the terminal (not echoed), or the first line of standard input when it is
/// not a terminal; held to the same rule as registration's.
fn read_password(prompt: &str) -> anyhow::Result<String> {
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt).context("cannot read the password")?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    let chars = password.chars().count();
    if !(PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS).contains(&chars) {
        bail!(
            "the password must have {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters (got {chars})"
        );
    }
    if password.contains('\0') {
        bail!("the password must not contain NUL characters");
    }
    Ok(password)
}
