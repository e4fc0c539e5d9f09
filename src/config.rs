//! Configuration: a TOML file (default `conf/gateway.toml`), then a `.env` file, then the process
//! environment, validated once at load so that a bad value stops start-up instead of a request.
//!
//! The seed backend's variables (`DATABASE_URL`, `SECRET_KEY`, `ACCESS_TOKEN_EXPIRE_MINUTES`,
//! `CORS_ORIGINS`) keep working, read case-insensitively as pydantic-settings read them.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The secret the seed backend shipped with; it is public, so it signs nothing outside development.
const SEED_PLACEHOLDER_SECRETS: &[&str] =
    &["your-secret-key-change-in-production", "your-secret-key"];
const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot read {path}: {message}")]
    DotEnv { path: PathBuf, message: String },
    #[error("invalid environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A string that never prints: `Debug`, `Display` and `Serialize` all show `[redacted]`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "[redacted]" })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    #[default]
    Production,
    Development,
}

/// What serves HTTP/1 requests (plain and over TLS) once a connection is accepted: pingora's
/// proxy, or hyper behind the same decision. HTTP/2, listeners, TLS, health checks and the
/// hand-over are pingora's either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Http1Engine {
    Pingora,
    #[default]
    Hyper,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub password: PasswordConfig,
    pub cors: CorsConfig,
    pub rate_limit: RateLimitConfig,
    pub log: LogConfig,
    pub proxy: ProxyConfig,
    pub mail: MailConfig,
    pub admin: AdminConfig,
    pub docs: DocsConfig,
    pub tls: TlsConfig,
    pub identity_assertion: AssertionConfig,
    pub audit: AuditConfig,
    pub mfa: MfaConfig,
    pub webauthn: WebauthnConfig,
    pub routes: Vec<RouteConfig>,
}

/// The TLS listener, beside the plain one (`server.listen`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// `host:port`; empty: no TLS listener.
    pub listen: String,
    /// PEM certificate chain, leaf first (read again on SIGHUP).
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// `Strict-Transport-Security: max-age=…` on answers over TLS; 0: no header.
    pub hsts_max_age_seconds: u64,
}

/// `X-Identity-Assertion`: a short-lived EdDSA JWT on every request forwarded with a user's
/// identity, verifiable against `GET /.well-known/jwks.json`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssertionConfig {
    pub enabled: bool,
    /// The `iss` claim.
    pub issuer: String,
    /// `exp - iat`.
    pub lifetime_seconds: u64,
    /// How long one assertion is sent again for the same user, session and route before a new
    /// one is signed (0: one per request).
    pub reuse_seconds: u64,
    /// How long an instance signs with one key before it makes the next.
    pub key_rotation_seconds: u64,
}

impl Default for AssertionConfig {
    fn default() -> Self {
        AssertionConfig {
            enabled: true,
            issuer: "sentinel-gateway".into(),
            lifetime_seconds: 60,
            reuse_seconds: 5,
            key_rotation_seconds: 86_400,
        }
    }
}

/// `GET /openapi.json` and the Swagger UI page at `GET /docs`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DocsConfig {
    pub enabled: bool,
}

impl Default for DocsConfig {
    fn default() -> Self {
        DocsConfig { enabled: true }
    }
}

/// Two-factor authentication.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MfaConfig {
    /// The issuer in TOTP enrolment links (authenticator apps show it).
    pub issuer: String,
    pub enforcement: MfaEnforcement,
    /// Wrong codes a user may try in 5 minutes (activation codes count too).
    pub attempts_per_5_minutes: u32,
}

/// Where a user with a second factor must have used it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MfaEnforcement {
    /// Everywhere but signing in with the second factor: a session that has not used it may
    /// only read the user, verify and log out.
    #[default]
    HighestAvailable,
    /// Only where a route rule says `mfa = true`.
    RoutesOnly,
}

impl Default for MfaConfig {
    fn default() -> Self {
        MfaConfig {
            issuer: "SentinelShield".into(),
            enforcement: MfaEnforcement::HighestAvailable,
            attempts_per_5_minutes: 5,
        }
    }
}

/// Passkeys (WebAuthn): the relying party the browser binds credentials to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebauthnConfig {
    /// The relying party id: the site's domain (or a parent of it) that credentials belong to.
    pub rp_id: String,
    /// The name browsers show for it.
    pub rp_name: String,
    /// The pages' origins (`scheme://host[:port]`) allowed to register and use passkeys; each
    /// host must be `rp_id` or below it.
    pub origins: Vec<String>,
}

impl Default for WebauthnConfig {
    fn default() -> Self {
        WebauthnConfig {
            rp_id: "localhost".into(),
            rp_name: "SentinelShield".into(),
            origins: vec!["http://localhost:3000".into()],
        }
    }
}

impl WebauthnConfig {
    /// Why the relying party cannot be what it says, if it cannot: an origin that is not
    /// `scheme://host[:port]`, or whose host is not `rp_id` or below it.
    fn problem(&self) -> Option<String> {
        let rp_id = &self.rp_id;
        if rp_id.is_empty()
            || rp_id.len() > 253
            || !rp_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            return Some(format!(
                "webauthn.rp_id must be a lower-case domain name, got {rp_id:?}"
            ));
        }
        if self.rp_name.is_empty()
            || self.rp_name.len() > 64
            || self.rp_name.contains(char::is_control)
        {
            return Some(
                "webauthn.rp_name must be 1-64 characters without control characters".into(),
            );
        }
        if self.origins.is_empty() || self.origins.len() > 32 {
            return Some("webauthn.origins must list 1-32 origins".into());
        }
        for origin in &self.origins {
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                .map(|rest| match rest.rsplit_once(':') {
                    Some((host, port)) if port.parse::<u16>().is_ok_and(|p| p > 0) => host,
                    _ => rest,
                });
            let fits = host.is_some_and(|host| {
                !host.is_empty()
                    && host.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                    })
                    && (host == rp_id || host.ends_with(&format!(".{rp_id}")))
            });
            if !fits {
                return Some(format!(
                    "webauthn.origins: {origin:?} is not http(s)://host[:port] with its host \
                     {rp_id:?} or below it"
                ));
            }
        }
        None
    }
}

/// The audit log of security events (`GET /auth/admin/events`, `sentinel-gateway events`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Events older than this many days are deleted in the background (1–36500).
    pub retention_days: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { retention_days: 90 }
    }
}

/// The admin listener: `GET /metrics` (Prometheus text). Never the public port.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `host:port`; an empty string turns the admin listener off.
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9091".into(),
        }
    }
}

/// How mail (password reset, email verification, notices) leaves the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTransport {
    /// Delivered over SMTP to `mail.smtp_url`.
    Smtp,
    /// Written to the log, links included: for development only.
    Log,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    pub transport: MailTransport,
    /// `smtp://host:port` (STARTTLS when offered), `smtp://…?tls=required` (STARTTLS or
    /// fail), `smtps://host:port` (TLS from the start); credentials as `user:password@`.
    pub smtp_url: Secret,
    /// The `From` of every mail: an address, optionally with a display name.
    pub from: String,
    /// Links in mails start here (`{app_base_url}/reset-password#token=…`); never taken from
    /// a request.
    pub app_base_url: String,
    /// The longest wait between two delivery attempts of one mail (the wait doubles from 1 s).
    pub retry_max_seconds: u64,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            transport: MailTransport::Log,
            smtp_url: Secret::new("smtp://127.0.0.1:1025"),
            from: "SentinelShield <no-reply@localhost>".into(),
            app_base_url: "http://localhost:3000".into(),
            retry_max_seconds: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Peers (addresses or CIDR blocks) whose `X-Forwarded-*` headers are kept and extended;
    /// from anyone else they are replaced. Empty: trust no one.
    pub trusted_proxies: Vec<String>,
    /// How often each upstream is probed (TCP connect); an unhealthy one gets no traffic.
    pub health_check_interval_ms: u64,
    /// How long a verified user's state is reused without asking PostgreSQL. Changes arrive
    /// sooner through LISTEN/NOTIFY; this is the safety net.
    pub user_cache_ttl_seconds: u64,
    /// How often upstream names are resolved again (a changed answer is followed).
    pub upstream_dns_refresh_seconds: u64,
    /// PEM roots that verify upstreams' certificates on `tls = true` routes, instead of the
    /// system's.
    pub upstream_ca_file: Option<String>,
    /// Whether route prefixes match only in their own letter case. Off by default: many
    /// upstream frameworks route `/API/x` as `/api/x`, so the gateway does too.
    pub case_sensitive_paths: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            trusted_proxies: Vec::new(),
            health_check_interval_ms: 1000,
            user_cache_ttl_seconds: 30,
            upstream_dns_refresh_seconds: 10,
            upstream_ca_file: None,
            case_sensitive_paths: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `host:port` of the HTTP listener.
    pub listen: String,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Whether a busy thread's connections may move to an idle one (tokio's work-stealing
    /// scheduler). Off by default: each connection stays on the thread that took it (a
    /// single-threaded scheduler per thread, as nginx and HAProxy run their workers), which
    /// costs less per request; turn it on for a few long-lived, very busy connections.
    pub work_stealing: bool,
    /// What serves HTTP/1 requests: `hyper` (the default) or `pingora` (pingora-proxy).
    pub http1_engine: Http1Engine,
    /// `development` allows weak secrets and cheap hashing parameters; nothing else does.
    pub environment: Environment,
    /// Largest request body accepted by the gateway's own endpoints (413 beyond).
    pub max_body_bytes: usize,
    /// Seconds an idle downstream keep-alive connection is kept: its next request head must be
    /// complete within this time of the previous response. 0: no keep-alive.
    pub keepalive_seconds: u64,
    /// A new connection must deliver a complete request head within this time, however slowly
    /// its bytes arrive.
    pub header_timeout_ms: u64,
    /// The gateway's own endpoints must receive their whole body within this time (408 beyond).
    pub body_timeout_ms: u64,
    /// Largest request head (names, values and separators) accepted on any path (431 beyond).
    pub max_header_bytes: usize,
    /// Each write to a client must complete within this (as nginx's `send_timeout`), or the
    /// connection is dropped, with the request's upstream connection. 0: no limit.
    pub send_timeout_ms: u64,
    /// Seconds pingora waits after SIGTERM before it stops accepting, then the drain limit.
    pub shutdown_grace_seconds: u64,
    pub shutdown_timeout_seconds: u64,
    /// Directory for pingora's pid file and upgrade socket (default: a per-process temp path).
    pub runtime_dir: Option<PathBuf>,
    /// Client connections one address may hold at once (trusted proxies excepted); more are
    /// closed at once. 0: no limit per address.
    pub max_connections_per_ip: usize,
    /// Client connections the gateway holds at once; more are closed at once. 0: half the
    /// open-file limit (each proxied request may also hold an upstream connection), less a
    /// reserve for PostgreSQL, health checks and logs.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: Secret,
    /// Connections of the gateway's own endpoints; logins and registrations, which a flood can
    /// bring in any number, use at most half of them at once.
    pub pool_size: usize,
    /// Connections of the proxy path alone (user-state reads, WebSocket re-checks), which the
    /// own endpoints cannot take.
    pub proxy_pool_size: usize,
    /// Longest wait for a pooled connection (and for a new one) before answering 503.
    pub acquire_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// How long start-up (and `migrate`) waits for PostgreSQL to answer before giving up;
    /// meanwhile `/health` answers 200 and `/ready` 503.
    pub startup_wait_seconds: u64,
    /// Longest a statement of a request may run (or wait for a lock) before PostgreSQL cancels
    /// it and the request gets 503: a lock held elsewhere must not hold pooled connections for
    /// as long as it lasts. 0: no limit. Set per pooled connection (`SET statement_timeout`).
    pub statement_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub secret_key: Secret,
    pub access_token_expire_minutes: i64,
    /// Tokens longer than this are rejected before any parsing.
    pub max_token_bytes: usize,
    /// Whether `POST /auth/register` creates accounts (false: 403, for invited users only).
    pub allow_registration: bool,
    /// A refresh token just rotated away still gets the session's current tokens this long
    /// (parallel tabs, a lost answer); after it, its use ends the session.
    pub refresh_reuse_grace_seconds: u64,
    /// A session not refreshed for this long ends.
    pub session_idle_days: u64,
    /// A session ends this long after its login, refreshed or not.
    pub session_absolute_days: u64,
    /// Live sessions one user may hold: a login past it ends the least recently used one.
    pub max_sessions_per_user: u32,
    /// Whether users whose email is not verified are refused (403) on protected routes. They
    /// can still sign in and manage their account.
    pub require_verified_email: bool,
    /// Browser mode: the refresh token travels only in an `HttpOnly; Secure; SameSite=Strict`
    /// cookie on `/auth`, never in a JSON body; refresh and logout by cookie then need
    /// `X-Requested-With` and an allowed `Origin`.
    pub refresh_cookie: bool,
    pub refresh_cookie_name: String,
    /// The role whose holders may use the admin API (`/auth/admin/`).
    pub admin_role: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordConfig {
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// Threads that hash; 0 means one per core.
    pub hash_workers: usize,
    /// Hash jobs allowed to wait; beyond it login answers 503 at once.
    pub hash_queue: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    pub origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub login_per_ip_per_minute: u32,
    pub login_per_account_per_minute: u32,
    pub register_per_ip_per_minute: u32,
    /// Password-reset requests from one client address (429 beyond). Each account also gets
    /// at most one reset mail a minute and five an hour, silently.
    pub password_reset_per_ip_per_minute: u32,
    /// Refreshes from one client address, counted once the refresh token is one this gateway
    /// made (a forged one costs nothing and is not counted).
    pub refresh_per_ip_per_minute: u32,
    /// Keys (addresses, accounts) each limiter tracks at once; beyond, attempts are refused
    /// until keys expire, so a flood from many addresses cannot grow memory without bound.
    pub max_tracked_keys: usize,
    /// `local`: each instance counts on its own. `redis`: every limit holds across the
    /// instances that share `redis_url` (the local count stays as a first stage).
    pub backend: RateLimitBackend,
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub redis_url: Secret,
    /// With `rediss://`: the CA (PEM) Redis's certificate is verified against, instead of the
    /// system's roots.
    pub redis_ca_file: Option<PathBuf>,
    /// What an attempt gets when Redis does not answer within `redis_timeout_ms`: `open`
    /// (allowed under the local limits alone; logged and counted) or `closed` (503).
    pub redis_failure: RedisFailure,
    pub redis_timeout_ms: u64,
    /// Connections to Redis; each carries many checks at once (pipelined).
    pub redis_connections: usize,
    /// Prepended to every key, so deployments can share one Redis.
    pub redis_key_prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitBackend {
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisFailure {
    Open,
    Closed,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `sentinel_gateway=debug,info`.
    pub level: String,
    /// `json` (one object per line) or `text`.
    pub format: LogFormat,
    /// One line per request.
    pub access_log: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteAuth {
    Required,
    Public,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    /// The `aud` of the route's identity assertions (default: the prefix).
    #[serde(default)]
    pub name: Option<String>,
    /// `host:port` of each upstream; empty (`[]`): the route only decides for forward auth
    /// (`/auth/verify`), and a request sent to it directly is 404.
    pub upstreams: Vec<String>,
    #[serde(default = "RouteConfig::default_auth")]
    pub auth: RouteAuth,
    #[serde(default = "RouteConfig::default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest wait for the upstream's next bytes (504 beyond).
    #[serde(default = "RouteConfig::default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// TLS to the upstreams, verified against the system's roots (or `proxy.upstream_ca_file`).
    #[serde(default)]
    pub tls: bool,
    /// The name sent in SNI and checked against the upstream's certificate (default: the host
    /// of the first upstream).
    #[serde(default)]
    pub sni: Option<String>,
    /// Rules in order; the first whose matchers all match decides, else `auth` does.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// What a rule lets through once it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuleAllow {
    /// A valid token of an active user, and the rule's requirements.
    #[default]
    Authenticated,
    /// No token needed (the identity is forwarded if a valid one comes).
    Public,
    /// Nobody: 403.
    Deny,
}

/// One `[[routes.rules]]`: matchers (`paths`, `methods`, `networks`; each left out matches
/// everything) choose it, and its requirements (`roles`, `verified_email`, `mfa`) are then
/// asked of the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Prefixes inside the route's, matched on the same decoded, normalised path.
    #[serde(default, deserialize_with = "non_empty")]
    pub paths: Vec<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub methods: Vec<String>,
    /// The client's address (after trusted proxies): addresses or CIDR blocks.
    #[serde(default, deserialize_with = "non_empty")]
    pub networks: Vec<String>,
    #[serde(default)]
    pub allow: RuleAllow,
    /// Any one of these roles.
    #[serde(default, deserialize_with = "non_empty")]
    pub roles: Vec<String>,
    #[serde(default)]
    pub verified_email: bool,
    /// An `aal2` session (a second factor in this session).
    #[serde(default)]
    pub mfa: bool,
}

/// A rule's list, which may be left out but not given empty: `paths = []` would read as "no
/// path" to some and "every path" to others.
fn non_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    if list.is_empty() {
        return Err(serde::de::Error::custom(
            "an empty list: leave the key out instead (then it asks nothing, or matches every \
             request)",
        ));
    }
    Ok(list)
}

impl RuleConfig {
    /// Refuses what no request could match or what says two things: paths outside the
    /// route's prefix, unknown methods, addresses that are not addresses, role names the
    /// roles table would refuse, and requirements on a rule that needs no token or lets
    /// nobody in.
    pub fn check(&self, prefix: &str, case_sensitive: bool) -> Result<(), String> {
        for path in &self.paths {
            if path.chars().any(char::is_control) {
                return Err(format!("path {path:?} holds a control character"));
            }
            let inside = if case_sensitive {
                path.starts_with(prefix)
            } else {
                path.len() >= prefix.len()
                    && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            };
            if !inside {
                return Err(format!(
                    "path {path:?} is outside the route's prefix {prefix:?}"
                ));
            }
        }
        if let Some(bad) = self
            .methods
            .iter()
            .find(|m| !RULE_METHODS.contains(&m.to_ascii_uppercase().as_str()))
        {
            return Err(format!(
                "method {bad:?} is not one of {}",
                RULE_METHODS.join(", ")
            ));
        }
        Networks::parse(&self.networks).map_err(|e| format!("networks: {e}"))?;
        if let Some(bad) = self.roles.iter().find(|r| !is_role_name(r)) {
            return Err(format!(
                "role {bad:?} is not a role name (a lower-case letter, then up to 63 lower-case \
                 letters, digits and _ . : -)"
            ));
        }
        let requires = !self.roles.is_empty() || self.verified_email || self.mfa;
        match self.allow {
            RuleAllow::Public if requires => Err(
                "allow = \"public\" asks nothing of the caller: it cannot take roles, \
                 verified_email or mfa"
                    .into(),
            ),
            RuleAllow::Deny if requires => Err(
                "allow = \"deny\" lets nobody in: it cannot take roles, verified_email or mfa"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// What a role may be called: a lower-case letter, then up to 63 of lower-case letters,
/// digits and `_ . : -` (the roles table checks the same).
pub fn is_role_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=64).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b[1..].iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b':' | b'-')
        })
}

/// The methods a rule may name.
pub const RULE_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
];

impl RouteConfig {
    fn default_auth() -> RouteAuth {
        RouteAuth::Required
    }
    fn default_connect_timeout_ms() -> u64 {
        2000
    }
    fn default_read_timeout_ms() -> u64 {
        30_000
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:8000".into(),
            threads: 2,
            work_stealing: false,
            http1_engine: Http1Engine::Hyper,
            environment: Environment::Production,
            max_body_bytes: 64 * 1024,
            keepalive_seconds: 60,
            header_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            max_header_bytes: 32 * 1024,
            send_timeout_ms: 60_000,
            shutdown_grace_seconds: 2,
            shutdown_timeout_seconds: 3,
            runtime_dir: None,
            max_connections_per_ip: 256,
            max_connections: 0,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: Secret::default(),
            pool_size: 16,
            proxy_pool_size: 4,
            acquire_timeout_ms: 3000,
            connect_timeout_ms: 3000,
            statement_timeout_ms: 5000,
            startup_wait_seconds: 60,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret_key: Secret::default(),
            access_token_expire_minutes: 30,
            max_token_bytes: 4096,
            allow_registration: true,
            refresh_reuse_grace_seconds: 10,
            session_idle_days: 7,
            session_absolute_days: 30,
            max_sessions_per_user: 100,
            require_verified_email: false,
            refresh_cookie: false,
            refresh_cookie_name: "sg_refresh".into(),
            admin_role: "admin".into(),
        }
    }
}

impl Default for PasswordConfig {
    fn default() -> Self {
        let (memory_kib, iterations, parallelism) = ARGON2_OWASP_MINIMUM;
        PasswordConfig {
            argon2_memory_kib: memory_kib,
            argon2_iterations: iterations,
            argon2_parallelism: parallelism,
            hash_workers: 0,
            hash_queue: 256,
        }
    }
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            origins: vec!["http://localhost:3000".into()],
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            login_per_ip_per_minute: 20,
            login_per_account_per_minute: 10,
            register_per_ip_per_minute: 10,
            password_reset_per_ip_per_minute: 5,
            refresh_per_ip_per_minute: 120,
            max_tracked_keys: 500_000,
            backend: RateLimitBackend::Local,
            redis_url: Secret::new(""),
            redis_ca_file: None,
            redis_failure: RedisFailure::Open,
            redis_timeout_ms: 200,
            redis_connections: 2,
            redis_key_prefix: "sentinel:rl".into(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Json,
            access_log: true,
        }
    }
}

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The TOML file; when `required` is false a missing file means "defaults".
    pub file: PathBuf,
    pub file_required: bool,
    /// The `.env` file (read when present, like pydantic-settings).
    pub dotenv: PathBuf,
    /// The process environment, passed in so that tests and callers decide what it is.
    pub env: HashMap<String, String>,
}

/// Environment variables read on top of the file: (names, what they set). The first names are
/// the seed's own; names are matched case-insensitively.
/// Environment names for keys besides the generic `SENTINEL_<SECTION>__<KEY>` that every key
/// has: the seed's (`DATABASE_URL`, `SECRET_KEY`, `ACCESS_TOKEN_EXPIRE_MINUTES`,
/// `CORS_ORIGINS`; matched in any letter case, as pydantic-settings did) and the short
/// `SENTINEL_…` names documented before the generic ones existed. Where several name one key,
/// the later kind wins: the seed's, then the short, then the generic name.
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("DATABASE_URL", "database.url"),
    ("SECRET_KEY", "auth.secret_key"),
    (
        "ACCESS_TOKEN_EXPIRE_MINUTES",
        "auth.access_token_expire_minutes",
    ),
    ("CORS_ORIGINS", "cors.origins"),
    ("REDIS_URL", "rate_limit.redis_url"),
    ("SENTINEL_DATABASE_URL", "database.url"),
    ("SENTINEL_SECRET_KEY", "auth.secret_key"),
    (
        "SENTINEL_ACCESS_TOKEN_EXPIRE_MINUTES",
        "auth.access_token_expire_minutes",
    ),
    ("SENTINEL_CORS_ORIGINS", "cors.origins"),
    ("SENTINEL_ALLOW_REGISTRATION", "auth.allow_registration"),
    ("SENTINEL_LISTEN", "server.listen"),
    ("SENTINEL_ADMIN_LISTEN", "admin.listen"),
    ("SENTINEL_DOCS_ENABLED", "docs.enabled"),
    ("SENTINEL_THREADS", "server.threads"),
    ("SENTINEL_ENVIRONMENT", "server.environment"),
    ("SENTINEL_RUNTIME_DIR", "server.runtime_dir"),
    ("SENTINEL_LOG_LEVEL", "log.level"),
    ("SENTINEL_LOG_FORMAT", "log.format"),
    ("SENTINEL_MAIL_TRANSPORT", "mail.transport"),
    ("SENTINEL_SMTP_URL", "mail.smtp_url"),
    ("SENTINEL_MAIL_FROM", "mail.from"),
    ("SENTINEL_APP_BASE_URL", "mail.app_base_url"),
    (
        "SENTINEL_REQUIRE_VERIFIED_EMAIL",
        "auth.require_verified_email",
    ),
    ("SENTINEL_REFRESH_COOKIE", "auth.refresh_cookie"),
    (
        "SENTINEL_CASE_SENSITIVE_PATHS",
        "proxy.case_sensitive_paths",
    ),
    ("SENTINEL_RATE_LIMIT_BACKEND", "rate_limit.backend"),
    ("SENTINEL_REDIS_URL", "rate_limit.redis_url"),
];

/// The key `name` sets, and how strongly (see [`ENV_ALIASES`]): `None` for a variable that is
/// not the gateway's.
fn env_key(name: &str) -> Option<(u8, String)> {
    if let Some((alias, key)) = ENV_ALIASES.iter().find(|(alias, _)| *alias == name) {
        let rank = if alias.starts_with("SENTINEL_") { 1 } else { 0 };
        return Some((rank, key.to_string()));
    }
    let (section, key) = name.strip_prefix("SENTINEL_")?.split_once("__")?;
    Some((
        2,
        format!(
            "{}.{}",
            section.to_ascii_lowercase(),
            key.to_ascii_lowercase()
        ),
    ))
}

/// An environment value as the TOML value of the key it sets: typed as the key's default is
/// (a boolean takes `true`/`false`/`1`/`0`/`yes`/`no`, a list a JSON array or commas), a
/// string otherwise.
fn env_value(default: Option<&toml::Value>, text: &str) -> Result<toml::Value, String> {
    Ok(match default {
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(parse_bool(text)?),
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            text.trim()
                .parse()
                .map_err(|_| format!("expected a whole number, got {text:?}"))?,
        ),
        Some(toml::Value::Float(_)) => toml::Value::Float(
            text.trim()
                .parse()
                .map_err(|_| format!("expected a number, got {text:?}"))?,
        ),
        Some(toml::Value::Array(_)) => toml::Value::Array(
            parse_origin_list(text)?
                .into_iter()
                .map(toml::Value::String)
                .collect(),
        ),
        _ => toml::Value::String(text.to_string()),
    })
}

/// `host:port` (`[v6]:port` for IPv6 addresses), as a listener or an upstream is named: an
/// address, or a name resolved later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn parse(text: &str) -> Result<HostPort, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(HostPort {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        let bad = || format!("{text:?} is not host:port");
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
        let is_name = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !is_name {
            return Err(bad());
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Addresses and networks (`10.0.0.5`, `10.0.0.0/8`, `::1`, `fd00::/8`), as trusted proxies
/// and route rules' `networks` name them; an IPv4 address mapped into IPv6 counts as itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks {
    nets: Vec<(IpAddr, u8)>,
}

impl Networks {
    /// Parses entries like `10.0.0.5`, `10.0.0.0/8`, `::1`, `fd00::/8`.
    pub fn parse(entries: &[String]) -> Result<Networks, String> {
        let mut nets = Vec::with_capacity(entries.len());
        for entry in entries {
            let (addr, len) = match entry.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (entry.as_str(), None),
            };
            let ip: IpAddr = addr
                .trim()
                .parse()
                .map_err(|_| format!("not an IP address: {entry:?}"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match len {
                Some(l) => l
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| format!("bad prefix length in {entry:?}"))?,
                None => max,
            };
            nets.push((ip, len));
        }
        Ok(Networks { nets })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        self.nets.iter().any(|(net, len)| match (net, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), *len),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), *len),
            _ => false,
        })
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = (bits / 8) as usize;
    let rest = bits % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// argon2id's parameters at OWASP's minimum (m=19456 KiB, t=2, p=1): the defaults, and the
/// least allowed outside development.
pub const ARGON2_OWASP_MINIMUM: (u32, u32, u32) = (19_456, 2, 1);

/// The addresses each listener serves on (see [`Config::listeners`]).
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    pub public: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub admin: Vec<SocketAddr>,
}

/// Every address `text` (the value of `key`, `host:port`) names, sorted, at least one.
fn resolve_listen(key: &str, text: &str) -> Result<Vec<SocketAddr>, String> {
    let mut addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|e| format!("cannot resolve {key} {text:?}: {e}"))?
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("{key} {text:?} resolves to no address"));
    }
    Ok(addrs)
}

impl Config {
    /// Loads file → `.env` → environment, then validates. The environment sets keys by name
    /// (see [`ENV_ALIASES`]; every key is also `SENTINEL_<SECTION>__<KEY>`), each value typed
    /// as its key's default and checked as it is set, so an error names its variable.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let (mut table, text) = match std::fs::read_to_string(&sources.file) {
            Ok(text) => {
                let table = text
                    .parse::<toml::Table>()
                    .map_err(|e| parse_error(&sources.file, &text, e.span(), e.message()))?;
                (table, text)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !sources.file_required => {
                (toml::Table::new(), String::new())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: sources.file.clone(),
                    source,
                })
            }
        };
        // The file alone first: its errors say where in it.
        toml::from_str::<Config>(&text)
            .map_err(|e| parse_error(&sources.file, &text, e.span(), e.message()))?;
        let mut vars = read_dotenv(&sources.dotenv)?;
        // The real environment wins over `.env`, as with pydantic-settings.
        for (k, v) in &sources.env {
            vars.insert(k.to_ascii_uppercase(), v.clone());
        }
        let mut settings: Vec<(u8, String, &str, &str)> = vars
            .iter()
            .filter_map(|(name, value)| {
                env_key(name).map(|(rank, key)| (rank, key, name.as_str(), value.as_str()))
            })
            .collect();
        // Weaker names first, so that stronger ones overwrite them.
        settings.sort_by(|a, b| (a.0, &a.1, a.2).cmp(&(b.0, &b.1, b.2)));
        let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
        for (_, key, name, value) in settings {
            let env_error = |message: String| ConfigError::Env {
                name: name.to_string(),
                message,
            };
            let (section, field) = key.split_once('.').unwrap_or((key.as_str(), ""));
            let default = defaults
                .get(section)
                .and_then(|s| s.as_table())
                .and_then(|s| s.get(field));
            let typed = env_value(default, value).map_err(env_error)?;
            let before = table.clone();
            set(&mut table, section, field, typed);
            if let Err(e) = Config::deserialize(table.clone()) {
                // A choice (`SMTP` for `smtp`) may be given in any letter case.
                let lowered = toml::Value::String(value.trim().to_ascii_lowercase());
                let mut retry = before;
                set(&mut retry, section, field, lowered);
                match Config::deserialize(retry.clone()) {
                    Ok(_) if default.is_some_and(toml::Value::is_str) => table = retry,
                    _ => return Err(env_error(one_line(e.message()))),
                }
            }
        }
        let config =
            Config::deserialize(table).map_err(|e| ConfigError::Invalid(one_line(e.message())))?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects what would fail later or weaken security; `development` relaxes the secret and
    /// hashing-cost rules only. The checks that need a wing's knowledge (the database URL and
    /// its TLS files, route prefixes as requests are read, proxies' networks, the password
    /// policy's argon2 limits, mail addresses and URLs, the Redis URL) are that wing's, run by
    /// `ops::check` for `serve` and `check-config` alike.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let dev = self.server.environment == Environment::Development;
        if let Err(e) = check_log_filter(&self.log.level) {
            return invalid(format!("log.level: {e}"));
        }
        if let Err(e) = HostPort::parse(&self.server.listen) {
            return invalid(format!(
                "server.listen must be host:port (an address or a name): {e}"
            ));
        }
        if !self.tls.listen.is_empty() {
            if let Err(e) = HostPort::parse(&self.tls.listen) {
                return invalid(format!("tls.listen must be host:port: {e}"));
            }
            if self.tls.cert_file.is_empty() || self.tls.key_file.is_empty() {
                return invalid("tls.listen needs tls.cert_file and tls.key_file".into());
            }
        }
        if !self.admin.listen.is_empty() {
            if let Err(e) = HostPort::parse(&self.admin.listen) {
                return invalid(format!(
                    "admin.listen must be host:port (an address or a name), or \"\" for no \
                     admin listener: {e}"
                ));
            }
        }
        if self.server.threads == 0 || self.server.threads > 256 {
            return invalid("server.threads must be between 1 and 256".into());
        }
        if self.server.max_body_bytes < 1024 {
            return invalid("server.max_body_bytes must be at least 1024".into());
        }
        if !(8192..=1024 * 1024).contains(&self.server.max_header_bytes) {
            return invalid("server.max_header_bytes must be between 8192 and 1048576".into());
        }
        if self.server.header_timeout_ms == 0 || self.server.body_timeout_ms == 0 {
            return invalid("server.header_timeout_ms and body_timeout_ms must be positive".into());
        }
        if self.database.url.is_empty() {
            return invalid("database.url is not set (config file, or DATABASE_URL)".into());
        }
        if self.database.pool_size < 2 || self.database.proxy_pool_size == 0 {
            return invalid(
                "database.pool_size must be at least 2 and database.proxy_pool_size at least 1"
                    .into(),
            );
        }
        // Unset is fine for `migrate` and `check-config`; serving asks [`Config::require_secret`].
        let secret = self.auth.secret_key.expose();
        if !dev && !secret.is_empty() {
            if SEED_PLACEHOLDER_SECRETS.contains(&secret) {
                return invalid(
                    "auth.secret_key is the seed's public placeholder; set a random secret of at least 32 bytes (or server.environment = \"development\")".into(),
                );
            }
            if secret.len() < MIN_SECRET_BYTES {
                return invalid(format!(
                    "auth.secret_key is {} bytes; at least {MIN_SECRET_BYTES} are required outside development",
                    secret.len()
                ));
            }
        }
        if !(1..=60 * 24 * 365).contains(&self.auth.access_token_expire_minutes) {
            return invalid("auth.access_token_expire_minutes must be between 1 and 525600".into());
        }
        if self.auth.session_idle_days == 0
            || self.auth.session_absolute_days == 0
            || self.auth.session_absolute_days > 3650
        {
            return invalid(
                "auth.session_idle_days and session_absolute_days must be between 1 and 3650"
                    .into(),
            );
        }
        let name = &self.auth.refresh_cookie_name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return invalid(format!(
                "auth.refresh_cookie_name must be 1-64 letters, digits, '_' or '-', got {name:?}"
            ));
        }
        if !is_role_name(&self.auth.admin_role) {
            return invalid(format!(
                "auth.admin_role must be a role name (a-z first, then a-z 0-9 _ . : -, at most 64), got {:?}",
                self.auth.admin_role
            ));
        }
        if !(1..=1000).contains(&self.mfa.attempts_per_5_minutes) {
            return invalid("mfa.attempts_per_5_minutes must be between 1 and 1000".into());
        }
        if self.mfa.issuer.is_empty()
            || self.mfa.issuer.len() > 64
            || self.mfa.issuer.contains([':', '\n', '\r'])
        {
            return invalid("mfa.issuer must be 1-64 characters without ':' or line breaks".into());
        }
        if let Some(problem) = self.webauthn.problem() {
            return invalid(problem);
        }
        if !(1..=36_500).contains(&self.audit.retention_days) {
            return invalid("audit.retention_days must be between 1 and 36500".into());
        }
        if self.auth.refresh_reuse_grace_seconds > 300 {
            return invalid("auth.refresh_reuse_grace_seconds must be at most 300".into());
        }
        if !(1..=10_000).contains(&self.auth.max_sessions_per_user) {
            return invalid("auth.max_sessions_per_user must be between 1 and 10000".into());
        }
        if !(256..=65536).contains(&self.auth.max_token_bytes) {
            return invalid("auth.max_token_bytes must be between 256 and 65536".into());
        }
        let (memory_kib, iterations, parallelism) = ARGON2_OWASP_MINIMUM;
        let password = &self.password;
        if !dev
            && (password.argon2_memory_kib < memory_kib
                || password.argon2_iterations < iterations
                || password.argon2_parallelism < parallelism)
        {
            return invalid(format!(
                "password: argon2 parameters below OWASP's minimum (m={memory_kib} KiB, \
                 t={iterations}, p={parallelism}) are only allowed in development"
            ));
        }
        if self.password.hash_queue == 0 {
            return invalid("password.hash_queue must be at least 1".into());
        }
        for origin in &self.cors.origins {
            if origin == "*" {
                return invalid(
                    "cors.origins cannot be \"*\": credentials are allowed, so origins must be listed".into(),
                );
            }
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
            {
                return invalid(format!(
                    "cors.origins entries look like \"https://app.example.com\" (scheme, host, optional port, no path), got {origin:?}"
                ));
            }
        }
        let limits = &self.rate_limit;
        if limits.login_per_ip_per_minute == 0
            || limits.login_per_account_per_minute == 0
            || limits.register_per_ip_per_minute == 0
            || limits.password_reset_per_ip_per_minute == 0
            || limits.refresh_per_ip_per_minute == 0
        {
            return invalid("rate_limit values must be at least 1 per minute".into());
        }
        if limits.max_tracked_keys < 10 {
            return invalid("rate_limit.max_tracked_keys must be at least 10".into());
        }
        if limits.backend == RateLimitBackend::Redis {
            if limits.redis_ca_file.is_some() && !limits.redis_url.expose().starts_with("rediss://")
            {
                return invalid(
                    "rate_limit.redis_ca_file needs a rediss:// (TLS) rate_limit.redis_url".into(),
                );
            }
            if !(1..=10_000).contains(&limits.redis_timeout_ms) {
                return invalid("rate_limit.redis_timeout_ms must be between 1 and 10000".into());
            }
            if !(1..=64).contains(&limits.redis_connections) {
                return invalid("rate_limit.redis_connections must be between 1 and 64".into());
            }
        }
        let assertion = &self.identity_assertion;
        if assertion.enabled {
            if !(5..=3600).contains(&assertion.lifetime_seconds) {
                return invalid(
                    "identity_assertion.lifetime_seconds must be between 5 and 3600".into(),
                );
            }
            if assertion.reuse_seconds * 2 > assertion.lifetime_seconds {
                return invalid(
                    "identity_assertion.reuse_seconds must be at most half of lifetime_seconds"
                        .into(),
                );
            }
            if assertion.key_rotation_seconds < 2 {
                return invalid(
                    "identity_assertion.key_rotation_seconds must be at least 2".into(),
                );
            }
            if assertion.issuer.is_empty() {
                return invalid("identity_assertion.issuer must not be empty".into());
            }
        }
        if self.proxy.upstream_dns_refresh_seconds == 0 {
            return invalid("proxy.upstream_dns_refresh_seconds must be at least 1".into());
        }
        if self.proxy.health_check_interval_ms < 100 {
            return invalid("proxy.health_check_interval_ms must be at least 100".into());
        }
        for route in &self.routes {
            for upstream in &route.upstreams {
                if let Err(e) = HostPort::parse(upstream) {
                    return invalid(format!(
                        "routes: {:?} upstreams are host:port (an address or a name): {e}",
                        route.prefix
                    ));
                }
            }
            if route.connect_timeout_ms == 0 || route.read_timeout_ms == 0 {
                return invalid(format!(
                    "routes: {:?} timeouts must be positive",
                    route.prefix
                ));
            }
            let same = |other: &RouteConfig| {
                if self.proxy.case_sensitive_paths {
                    other.prefix == route.prefix
                } else {
                    other.prefix.eq_ignore_ascii_case(&route.prefix)
                }
            };
            if self.routes.iter().filter(|r| same(r)).count() > 1 {
                return invalid(format!(
                    "routes: prefix {:?} appears twice{}",
                    route.prefix,
                    if self.proxy.case_sensitive_paths {
                        ""
                    } else {
                        " (in some letter case; proxy.case_sensitive_paths is false)"
                    }
                ));
            }
            for (i, rule) in route.rules.iter().enumerate() {
                rule.check(&route.prefix, self.proxy.case_sensitive_paths)
                    .map_err(|e| {
                        ConfigError::Invalid(format!(
                            "routes: {:?} rule {}: {e}",
                            route.prefix,
                            i + 1
                        ))
                    })?;
            }
        }
        Ok(())
    }

    /// Serving signs tokens: the secret must be set (validation already refused a weak one).
    pub fn require_secret(&self) -> Result<(), ConfigError> {
        if self.auth.secret_key.is_empty() {
            return Err(ConfigError::Invalid(
                "auth.secret_key is not set (config file, or SECRET_KEY)".into(),
            ));
        }
        Ok(())
    }

    /// The addresses `server.listen` names (a name may resolve to several, `localhost` to
    /// 127.0.0.1 and ::1: the gateway listens on each).
    pub fn listen_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        resolve_listen("server.listen", &self.server.listen).map_err(ConfigError::Invalid)
    }

    /// Every listener's addresses, each set resolved, and no two listeners on one port (the
    /// admin listener in particular never shares the public one's: metrics are never served
    /// to the public).
    pub fn listeners(&self) -> Result<Listeners, ConfigError> {
        let optional = |key: &str, text: &str| {
            if text.is_empty() {
                Ok(Vec::new())
            } else {
                resolve_listen(key, text).map_err(ConfigError::Invalid)
            }
        };
        let listeners = Listeners {
            public: self.listen_addrs()?,
            tls: optional("tls.listen", &self.tls.listen)?,
            admin: optional("admin.listen", &self.admin.listen)?,
        };
        let shares_port = |a: &SocketAddr, p: &SocketAddr| {
            a.port() != 0
                && a.port() == p.port()
                && (a.ip() == p.ip() || a.ip().is_unspecified() || p.ip().is_unspecified())
        };
        let named = [
            ("server.listen", &listeners.public),
            ("tls.listen", &listeners.tls),
            ("admin.listen", &listeners.admin),
        ];
        for (i, (key, addrs)) in named.iter().enumerate() {
            for (other_key, others) in &named[i + 1..] {
                if let Some(clash) = addrs
                    .iter()
                    .find(|a| others.iter().any(|o| shares_port(a, o)))
                {
                    let why = if *other_key == "admin.listen" {
                        "the admin listener must have a port of its own"
                    } else {
                        "each listener needs a port of its own"
                    };
                    return Err(ConfigError::Invalid(format!(
                        "{other_key} shares {clash} with {key}: {why}"
                    )));
                }
            }
        }
        Ok(listeners)
    }

    /// The effective configuration as TOML, secrets redacted (for `check-config`): every
    /// `Secret` prints as `[redacted]`, and the database URL is shown without its password.
    pub fn redacted_toml(&self) -> String {
        let rendered = toml::Table::try_from(self).and_then(|mut table| {
            if let Some(database) = table.get_mut("database").and_then(|d| d.as_table_mut()) {
                let url = redact_url(self.database.url.expose());
                database.insert("url".into(), toml::Value::String(url));
            }
            if self.routes.is_empty() {
                table.remove("routes");
            }
            toml::to_string_pretty(&table)
        });
        let mut text = rendered.unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"));
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text
    }
}

/// `postgresql+psycopg://u@h/db` → `postgresql://u@h/db`.
pub fn normalize_database_url(url: &str) -> String {
    let url = url.trim();
    for scheme in ["postgresql+", "postgres+"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            if let Some(idx) = rest.find("://") {
                return format!("postgresql{}", &rest[idx..]);
            }
        }
    }
    url.to_string()
}

/// Drops the password from a URL for display.
fn redact_url(url: &str) -> String {
    let url = normalize_database_url(url);
    let Some(scheme_end) = url.find("://") else {
        return "[redacted]".into();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let shown_user = if userinfo.contains(':') {
                format!("{user}:[redacted]")
            } else {
                user.to_string()
            };
            format!(
                "{}{}@{}",
                &url[..scheme_end + 3],
                shown_user,
                &rest[at + 1..]
            )
        }
        None => url.clone(),
    }
}

/// `CORS_ORIGINS` as pydantic-settings takes a list (JSON), or comma-separated.
fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}

fn parse_origin_list(value: &str) -> Result<Vec<String>, String> {
    let trimmed = value.trim();
    if trimmed.starts_with('[') {
        serde_json::from_str::<Vec<String>>(trimmed)
            .map_err(|e| format!("expected a JSON list of strings: {e}"))
    } else {
        Ok(trimmed
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect())
    }
}

fn read_dotenv(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let mut vars = HashMap::new();
    let iter = match dotenvy::from_path_iter(path) {
        Ok(iter) => iter,
        Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vars),
        Err(e) => {
            return Err(ConfigError::DotEnv {
                path: path.to_path_buf(),
                message: one_line(&e.to_string()),
            })
        }
    };
    for item in iter {
        let (k, v) = item.map_err(|e| ConfigError::DotEnv {
            path: path.to_path_buf(),
            message: one_line(&e.to_string()),
        })?;
        vars.insert(k.to_ascii_uppercase(), v);
    }
    Ok(vars)
}

/// `value` as `[section] field` of `table` (`field` empty: the whole key is `section`).
fn set(table: &mut toml::Table, section: &str, field: &str, value: toml::Value) {
    if field.is_empty() {
        table.insert(section.to_string(), value);
        return;
    }
    let entry = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !entry.is_table() {
        *entry = toml::Value::Table(toml::Table::new());
    }
    if let Some(section) = entry.as_table_mut() {
        section.insert(field.to_string(), value);
    }
}

/// A TOML error in the file at `path`: where, and what, on one line.
fn parse_error(
    path: &Path,
    text: &str,
    span: Option<std::ops::Range<usize>>,
    message: &str,
) -> ConfigError {
    ConfigError::Parse {
        path: path.to_path_buf(),
        message: match span {
            Some(span) => {
                let (line, column) = line_and_column(text, span.start);
                format!("line {line}, column {column}: {}", one_line(message))
            }
            None => one_line(message),
        },
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let end = (0..=offset.min(text.len()))
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// A `tracing` filter as the gateway accepts it: comma-separated directives, each a level
/// (`info`) or `target=level` (`sentinel_gateway=debug`). `tracing`'s own parser also takes
/// a bare word as a target with no level, so a misspelt level (`infoo`) would silently turn
/// every line off; here it is an error.
fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |s: &str| LEVELS.contains(&s.trim().to_ascii_lowercase().as_str());
    for directive in filter.split(',').map(str::trim) {
        if directive.is_empty() {
            continue;
        }
        let level = match directive.rsplit_once('=') {
            Some((_, level)) => level,
            None => directive,
        };
        if !is_level(level) {
            return Err(format!(
                "{directive:?} is not a level ({}) or target=level",
                LEVELS.join(", ")
            ));
        }
    }
    if filter.trim().is_empty() {
        return Err("empty (use \"off\" for no log lines)".into());
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_from_the_environment_ignore_case_and_name_the_alternatives() {
        let db = "[database]\nurl = \"postgres://a@h/x\"\n";
        let (_d, s) = sources(db, &[("SENTINEL_RATE_LIMIT_BACKEND", " Redis ")]);
        // (Redis without a URL is refused later, by the credentials' check.)
        assert_eq!(
            Config::load(&s).unwrap().rate_limit.backend,
            RateLimitBackend::Redis
        );
        let (_d, s) = sources(db, &[("SENTINEL_RATE_LIMIT_BACKEND", "memcached")]);
        let e = Config::load(&s).unwrap_err().to_string();
        assert!(
            e.contains("SENTINEL_RATE_LIMIT_BACKEND") && e.contains("expected `local` or `redis`"),
            "{e}"
        );
    }

    #[test]
    fn every_key_has_a_generic_environment_name_typed_as_its_default() {
        let (_d, s) = sources(
            "[server]\nthreads = 4\n[database]\nurl = \"postgres://a@h/x\"\n",
            &[
                ("SENTINEL_SERVER__MAX_CONNECTIONS_PER_IP", "12"),
                ("SENTINEL_PROXY__TRUSTED_PROXIES", "10.0.0.1, 10.0.0.0/8"),
                ("SENTINEL_DOCS__ENABLED", "no"),
                ("SENTINEL_MAIL__TRANSPORT", "SMTP"),
                // The generic name wins over the short one, whatever the order.
                ("SENTINEL_THREADS", "3"),
                ("SENTINEL_SERVER__THREADS", "5"),
            ],
        );
        let c = Config::load(&s).unwrap();
        assert_eq!(c.server.max_connections_per_ip, 12);
        assert_eq!(c.proxy.trusted_proxies, ["10.0.0.1", "10.0.0.0/8"]);
        assert!(!c.docs.enabled);
        assert_eq!(c.mail.transport, MailTransport::Smtp);
        assert_eq!(c.server.threads, 5);
        for (name, value, says) in [
            (
                "SENTINEL_SERVER__THREADS",
                "many",
                "expected a whole number",
            ),
            ("SENTINEL_SERVER__NO_SUCH_KEY", "1", "unknown field"),
            ("SENTINEL_DOCS__ENABLED", "maybe", "expected true or false"),
        ] {
            let (_d, s) = sources("", &[(name, value)]);
            let e = Config::load(&s).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(says), "{name}: {e}");
        }
    }

    const GOOD_SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn sources(file_text: &str, env: &[(&str, &str)]) -> (tempdir::Dir, Sources) {
        let dir = tempdir::Dir::new();
        let file = dir.path.join("gateway.toml");
        std::fs::write(&file, file_text).unwrap();
        let s = Sources {
            file,
            file_required: true,
            dotenv: dir.path.join(".env"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        (dir, s)
    }

    mod tempdir {
        pub struct Dir {
            pub path: std::path::PathBuf,
        }
        impl Dir {
            pub fn new() -> Self {
                let path = std::env::temp_dir().join(format!("sg-config-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&path).unwrap();
                Dir { path }
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }

    #[test]
    fn seed_environment_variables_override_the_file() {
        let (_d, s) = sources(
            "[database]\nurl = \"postgres://a@h/x\"\n[auth]\nsecret_key = \"short\"\n",
            &[
                (
                    "DATABASE_URL",
                    "postgresql+psycopg://postgres@127.0.0.1/seed",
                ),
                ("secret_key", GOOD_SECRET),
                ("ACCESS_TOKEN_EXPIRE_MINUTES", "45"),
                (
                    "CORS_ORIGINS",
                    "[\"http://a.test\",\"https://b.test:8443\"]",
                ),
            ],
        );
        let c = Config::load(&s).unwrap();
        assert_eq!(
            c.database.url.expose(),
            "postgresql+psycopg://postgres@127.0.0.1/seed"
        );
        assert_eq!(
            normalize_database_url(c.database.url.expose()),
            "postgresql://postgres@127.0.0.1/seed"
        );
        assert_eq!(c.auth.secret_key.expose(), GOOD_SECRET);
        assert_eq!(c.auth.access_token_expire_minutes, 45);
        assert_eq!(c.cors.origins, ["http://a.test", "https://b.test:8443"]);
    }

    #[test]
    fn mail_keys_are_read_from_the_environment_and_checked() {
        let file = format!(
            "[database]\nurl = \"postgres://a@h/x\"\n[auth]\nsecret_key = \"{GOOD_SECRET}\"\n"
        );
        let (_d, s) = sources(
            &file,
            &[
                ("SENTINEL_MAIL_TRANSPORT", "SMTP"),
                ("SENTINEL_SMTP_URL", "smtps://user:p%40ss@mail.example:465"),
                ("SENTINEL_MAIL_FROM", "Ops <ops@example.com>"),
                ("SENTINEL_APP_BASE_URL", "https://app.example"),
                ("SENTINEL_REQUIRE_VERIFIED_EMAIL", "yes"),
            ],
        );
        let c = Config::load(&s).unwrap();
        assert_eq!(c.mail.transport, MailTransport::Smtp);
        assert_eq!(
            c.mail.smtp_url.expose(),
            "smtps://user:p%40ss@mail.example:465"
        );
        assert_eq!(c.mail.from, "Ops <ops@example.com>");
        assert_eq!(c.mail.app_base_url, "https://app.example");
        assert!(c.auth.require_verified_email);
        // The SMTP password never prints.
        assert!(!format!("{c:?}").contains("p%40ss"));
        // A transport that is no choice is the environment's error; the values themselves are
        // mail's to check (`mail::check`, tested there).
        let (_d, s) = sources(&file, &[("SENTINEL_MAIL_TRANSPORT", "pigeon")]);
        let e = Config::load(&s).unwrap_err().to_string();
        assert!(e.contains("SENTINEL_MAIL_TRANSPORT"), "{e}");
    }

    #[test]
    fn dotenv_is_read_and_the_environment_wins_over_it() {
        let (d, s) = sources("", &[("DATABASE_URL", "postgres://env@h/x")]);
        std::fs::write(
            d.path.join(".env"),
            format!("DATABASE_URL=postgres://dotenv@h/x\nSECRET_KEY={GOOD_SECRET}\n"),
        )
        .unwrap();
        let c = Config::load(&s).unwrap();
        assert_eq!(c.database.url.expose(), "postgres://env@h/x");
        assert_eq!(c.auth.secret_key.expose(), GOOD_SECRET);
    }

    #[test]
    fn weak_and_placeholder_secrets_are_refused_outside_development() {
        for secret in ["your-secret-key-change-in-production", "too-short"] {
            let (_d, s) = sources(
                "[database]\nurl = \"postgres://a@h/x\"\n",
                &[("SECRET_KEY", secret)],
            );
            let err = Config::load(&s).unwrap_err().to_string();
            assert!(err.contains("secret_key"), "{err}");
            let (_d, s) = sources(
                "[server]\nenvironment = \"development\"\n[database]\nurl = \"postgres://a@h/x\"\n",
                &[("SECRET_KEY", secret)],
            );
            assert!(Config::load(&s).is_ok());
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_one_line_errors() {
        let (_d, s) = sources("[server]\nlisten = \"nowhere\"\n", &[]);
        let err = Config::load(&s).unwrap_err().to_string();
        assert!(err.contains("server.listen"), "{err}");
        let (_d, s) = sources("[server]\nlisten_on = 1\n", &[]);
        let err = Config::load(&s).unwrap_err().to_string();
        assert!(
            err.contains("unknown field") && !err.contains('\n'),
            "{err}"
        );
        let (_d, s) = sources(
            "[database]\nurl = \"postgres://a@h/x\"\n[password]\nargon2_memory_kib = 1024\n",
            &[("SECRET_KEY", GOOD_SECRET)],
        );
        assert!(Config::load(&s).unwrap_err().to_string().contains("OWASP"));
    }

    #[test]
    fn prefixes_that_differ_only_in_letter_case_are_one_route_unless_case_matters() {
        let text = "[database]\nurl = \"postgres://a@h/x\"\n\
            [[routes]]\nprefix = \"/api/\"\nupstreams = [\"127.0.0.1:1\"]\n\
            [[routes]]\nprefix = \"/API/\"\nupstreams = [\"127.0.0.1:2\"]\n";
        let (_d, s) = sources(text, &[("SECRET_KEY", GOOD_SECRET)]);
        let err = Config::load(&s).unwrap_err().to_string();
        assert!(
            err.contains("\"/api/\" appears twice (in some letter case"),
            "{err}"
        );
        let (_d, s) = sources(
            text,
            &[
                ("SECRET_KEY", GOOD_SECRET),
                ("SENTINEL_CASE_SENSITIVE_PATHS", "true"),
            ],
        );
        assert!(Config::load(&s).unwrap().proxy.case_sensitive_paths);
    }

    #[test]
    fn redacted_output_hides_secrets() {
        let (_d, s) = sources(
            "[database]\nurl = \"postgres://app:hunter2hunter2@db:5432/x\"\n",
            &[("SECRET_KEY", GOOD_SECRET)],
        );
        let text = Config::load(&s).unwrap().redacted_toml();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains(GOOD_SECRET), "{text}");
        assert!(
            text.contains("postgres://app:[redacted]@db:5432/x"),
            "{text}"
        );
        assert!(format!("{:?}", Secret::new("x")).contains("redacted"));
    }

    #[test]
    fn log_filters_are_levels_or_target_levels() {
        for good in [
            "info",
            "WARN",
            "sentinel_gateway=debug,info",
            "off",
            "a::b=trace, warn",
        ] {
            assert!(check_log_filter(good).is_ok(), "{good}");
        }
        for bad in ["infoo", "", "sentinel_gateway", "info,debgu", "x=loud"] {
            assert!(check_log_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn toml_errors_say_where() {
        assert_eq!(line_and_column("a = 1\nb = \"x\n", 10), (2, 5));
        assert_eq!(line_and_column("é = 1", 3), (1, 3));
        assert_eq!(line_and_column("", 5), (1, 1));
    }
}
