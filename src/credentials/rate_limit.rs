//! Login and registration rate limits (GCRA, via `governor`): per client IP and per account for
//! `POST /auth/token`, per client IP for `POST /auth/register` and `POST /auth/password-reset`
//! (whose per-account limit is kept in PostgreSQL, see `own::recovery`). Checked before any database
//! query or password hashing; proxied traffic never passes through here.
//!
//! The account key is a fixed-size digest of [`email::account_key`], counted whether or not the
//! account exists, so unknown emails cannot be probed for free and a 64 KB username costs the
//! limiter no more memory than a short one. IPv6 clients are counted per /64 (what one
//! subscriber is routed), IPv4 per address. Memory stays bounded twice over: [`LimiterJanitor`]
//! drops keys whose bucket is full again, and each limiter tracks at most
//! `rate_limit.max_tracked_keys` keys: past that, attempts are refused (429) until keys expire,
//! rather than memory growing with the number of addresses a flood comes from.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, NotUntil, Quota, RateLimiter};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sha2::Digest;

use crate::config::{RateLimitBackend, RateLimitConfig};
use crate::credentials::email;
use crate::credentials::shared_limits::{Bucket, SharedLimits, SharedRefusal};
use crate::metrics::Limit;

/// Which limit was hit, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_secs: u64,
}

/// The key an account is limited under: the first 128 bits of the SHA-256 of
/// [`email::account_key`] (collisions are out of reach, and the size is fixed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccountKey([u8; 16]);

impl AccountKey {
    pub fn of(account: &str) -> AccountKey {
        let digest = sha2::Sha256::digest(email::account_key(account).as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        AccountKey(key)
    }
}

/// The key a client address is limited under: IPv4 (and IPv4-mapped IPv6) per address, other
/// IPv6 per /64, since one subscriber is routed a whole /64 and can use every address in it.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

impl AccountKey {
    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Why an attempt is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// 429, with `Retry-After`.
    Limited(Limited),
    /// The shared stage failed and is configured to fail closed (503).
    Unavailable,
}

/// The rate limits: the in-process stage ([`Limiters`]) first, which costs no round trip and
/// takes the brunt of a flood at one instance, then, with `backend = "redis"`, the shared
/// stage ([`SharedLimits`]), which makes the limits hold across instances.
pub struct RateLimits {
    pub local: Arc<Limiters>,
    shared: Option<SharedLimits>,
    quotas: RateLimitConfig,
    /// Second-factor attempts a user may make per [`MFA_PERIOD`] (`mfa.attempts_per_5_minutes`).
    mfa_attempts: u32,
}

/// The period second-factor attempts are counted over.
pub const MFA_PERIOD: Duration = Duration::from_secs(300);

impl RateLimits {
    pub fn new(config: &RateLimitConfig, mfa_attempts: u32) -> Result<RateLimits, String> {
        let shared = match config.backend {
            RateLimitBackend::Local => None,
            RateLimitBackend::Redis => Some(SharedLimits::new(config)?),
        };
        Ok(RateLimits {
            local: Arc::new(Limiters::new(config, mfa_attempts)),
            shared,
            quotas: config.clone(),
            mfa_attempts,
        })
    }

    async fn shared(&self, buckets: &[Bucket]) -> Result<(), Refused> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        shared
            .check(buckets)
            .await
            .map_err(|refusal| match refusal {
                SharedRefusal::Limited {
                    retry_after_secs, ..
                } => Refused::Limited(Limited { retry_after_secs }),
                SharedRefusal::Unavailable => Refused::Unavailable,
            })
    }

    fn ip_bucket(limit: Limit, ip: IpAddr, per_minute: u32) -> Bucket {
        Bucket::per_minute(limit, ip_key(ip).to_string(), per_minute)
    }

    /// One login attempt (or password change) from `ip` for `account`: both limits charged.
    pub async fn login(&self, ip: Option<IpAddr>, account: &str) -> Result<(), Refused> {
        let key = AccountKey::of(account);
        self.local.login_key(ip, &key).map_err(Refused::Limited)?;
        let mut buckets = Vec::with_capacity(2);
        if let Some(ip) = ip {
            let per_minute = self.quotas.login_per_ip_per_minute;
            buckets.push(Self::ip_bucket(Limit::LoginIp, ip, per_minute));
        }
        buckets.push(Bucket::per_minute(
            Limit::LoginAccount,
            key.hex(),
            self.quotas.login_per_account_per_minute,
        ));
        self.shared(&buckets).await
    }

    /// One passwordless sign-in begun from `ip` (`POST /auth/passkey/start`): the login limit
    /// per address is charged; there is no account yet to charge.
    pub async fn passkey_login(&self, ip: Option<IpAddr>) -> Result<(), Refused> {
        let Some(ip) = ip else { return Ok(()) };
        self.local
            .check(&self.local.login_ip, &ip_key(ip), Limit::LoginIp)
            .map_err(Refused::Limited)?;
        let per_minute = self.quotas.login_per_ip_per_minute;
        self.shared(&[Self::ip_bucket(Limit::LoginIp, ip, per_minute)])
            .await
    }

    /// One second-factor attempt (a code, a recovery code, an activation) for `user_id`.
    pub async fn mfa(&self, user_id: &str) -> Result<(), Refused> {
        let key = AccountKey::of(user_id);
        self.local
            .check(&self.local.mfa_user, &key, Limit::MfaUser)
            .map_err(Refused::Limited)?;
        self.shared(&[Bucket {
            limit: Limit::MfaUser,
            key: key.hex(),
            cells: self.mfa_attempts,
            period_secs: MFA_PERIOD.as_secs(),
        }])
        .await
    }

    pub async fn register(&self, ip: Option<IpAddr>) -> Result<(), Refused> {
        let Some(ip) = ip else { return Ok(()) };
        self.local.register(Some(ip)).map_err(Refused::Limited)?;
        let per_minute = self.quotas.register_per_ip_per_minute;
        self.shared(&[Self::ip_bucket(Limit::RegisterIp, ip, per_minute)])
            .await
    }

    pub async fn password_reset(&self, ip: Option<IpAddr>) -> Result<(), Refused> {
        let Some(ip) = ip else { return Ok(()) };
        self.local
            .password_reset(Some(ip))
            .map_err(Refused::Limited)?;
        let per_minute = self.quotas.password_reset_per_ip_per_minute;
        self.shared(&[Self::ip_bucket(Limit::PasswordResetIp, ip, per_minute)])
            .await
    }

    pub async fn refresh(&self, ip: Option<IpAddr>) -> Result<(), Refused> {
        let Some(ip) = ip else { return Ok(()) };
        self.local.refresh(Some(ip)).map_err(Refused::Limited)?;
        let per_minute = self.quotas.refresh_per_ip_per_minute;
        self.shared(&[Self::ip_bucket(Limit::RefreshIp, ip, per_minute)])
            .await
    }
}

/// The in-process stage: one GCRA table per limit.
pub struct Limiters {
    login_ip: DefaultKeyedRateLimiter<IpAddr>,
    login_account: DefaultKeyedRateLimiter<AccountKey>,
    register_ip: DefaultKeyedRateLimiter<IpAddr>,
    reset_ip: DefaultKeyedRateLimiter<IpAddr>,
    refresh_ip: DefaultKeyedRateLimiter<IpAddr>,
    mfa_user: DefaultKeyedRateLimiter<AccountKey>,
    clock: DefaultClock,
    /// Keys each limiter may track at once.
    max_keys: usize,
    /// When keys were last reclaimed because a limiter was full (ms since `started`), so that
    /// a flood does not make every attempt walk the whole table.
    last_reclaim_ms: AtomicU64,
    started: std::time::Instant,
}

/// `last_reclaim_ms` before the first reclaim (which may then come at any time, even within
/// the first second).
const NEVER_RECLAIMED: u64 = u64::MAX;

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

impl Limiters {
    pub fn new(config: &RateLimitConfig, mfa_attempts: u32) -> Limiters {
        let mfa_attempts = NonZeroU32::new(mfa_attempts).unwrap_or(NonZeroU32::MIN);
        let mfa_quota = Quota::with_period(MFA_PERIOD / mfa_attempts.get())
            .unwrap_or_else(|| per_minute(1))
            .allow_burst(mfa_attempts);
        Limiters {
            login_ip: RateLimiter::keyed(per_minute(config.login_per_ip_per_minute)),
            login_account: RateLimiter::keyed(per_minute(config.login_per_account_per_minute)),
            register_ip: RateLimiter::keyed(per_minute(config.register_per_ip_per_minute)),
            reset_ip: RateLimiter::keyed(per_minute(config.password_reset_per_ip_per_minute)),
            refresh_ip: RateLimiter::keyed(per_minute(config.refresh_per_ip_per_minute)),
            mfa_user: RateLimiter::keyed(mfa_quota),
            clock: DefaultClock::default(),
            max_keys: config.max_tracked_keys,
            last_reclaim_ms: AtomicU64::new(NEVER_RECLAIMED),
            started: std::time::Instant::now(),
        }
    }

    fn limited(&self, not_until: NotUntil<<DefaultClock as Clock>::Instant>) -> Limited {
        let wait = not_until.wait_time_from(self.clock.now());
        // Whole seconds, rounded up, at least one.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Limited {
            retry_after_secs: secs.max(1),
        }
    }

    /// One attempt under `key`, unless `limiter` tracks as many keys as it may (then it first
    /// forgets refilled ones, at most once a second, and refuses if that made no room).
    pub(crate) fn check<K>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        limit: Limit,
    ) -> Result<(), Limited>
    where
        K: Clone + Eq + std::hash::Hash,
    {
        let refused = self.check_quietly(limiter, key);
        if refused.is_err() {
            crate::metrics::metrics().rate_limited(limit);
        }
        refused
    }

    fn check_quietly<K>(&self, limiter: &DefaultKeyedRateLimiter<K>, key: &K) -> Result<(), Limited>
    where
        K: Clone + Eq + std::hash::Hash,
    {
        if limiter.len() >= self.max_keys {
            let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let last = self.last_reclaim_ms.load(Ordering::Relaxed);
            if (last == NEVER_RECLAIMED || now.saturating_sub(last) >= 1000)
                && self
                    .last_reclaim_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.retain_recent();
                tracing::warn!(
                    tracked = limiter.len(),
                    max = self.max_keys,
                    "a rate limiter tracks as many keys as rate_limit.max_tracked_keys allows; \
                     refusing new attempts until keys expire"
                );
            }
            if limiter.len() >= self.max_keys {
                return Err(Limited {
                    retry_after_secs: 1,
                });
            }
        }
        limiter.check_key(key).map_err(|n| self.limited(n))
    }

    /// One login attempt from `ip` for `account` (a login username): both limits are charged.
    pub fn login(&self, ip: Option<IpAddr>, account: &str) -> Result<(), Limited> {
        self.login_key(ip, &AccountKey::of(account))
    }

    fn login_key(&self, ip: Option<IpAddr>, account: &AccountKey) -> Result<(), Limited> {
        if let Some(ip) = ip {
            self.check(&self.login_ip, &ip_key(ip), Limit::LoginIp)?;
        }
        self.check(&self.login_account, account, Limit::LoginAccount)
    }

    pub fn register(&self, ip: Option<IpAddr>) -> Result<(), Limited> {
        match ip {
            Some(ip) => self.check(&self.register_ip, &ip_key(ip), Limit::RegisterIp),
            None => Ok(()),
        }
    }

    pub fn password_reset(&self, ip: Option<IpAddr>) -> Result<(), Limited> {
        match ip {
            Some(ip) => self.check(&self.reset_ip, &ip_key(ip), Limit::PasswordResetIp),
            None => Ok(()),
        }
    }

    pub fn refresh(&self, ip: Option<IpAddr>) -> Result<(), Limited> {
        match ip {
            Some(ip) => self.check(&self.refresh_ip, &ip_key(ip), Limit::RefreshIp),
            None => Ok(()),
        }
    }

    /// Keys currently remembered (all limiters).
    pub fn len(&self) -> usize {
        self.login_ip.len()
            + self.login_account.len()
            + self.register_ip.len()
            + self.reset_ip.len()
            + self.refresh_ip.len()
            + self.mfa_user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets keys whose bucket is full again (they would behave as new ones anyway).
    pub fn retain_recent(&self) {
        self.login_ip.retain_recent();
        self.login_account.retain_recent();
        self.register_ip.retain_recent();
        self.reset_ip.retain_recent();
        self.refresh_ip.retain_recent();
        self.mfa_user.retain_recent();
        self.login_ip.shrink_to_fit();
        self.login_account.shrink_to_fit();
        self.register_ip.shrink_to_fit();
        self.reset_ip.shrink_to_fit();
        self.refresh_ip.shrink_to_fit();
        self.mfa_user.shrink_to_fit();
    }
}

/// Periodically bounds the limiters' memory.
pub struct LimiterJanitor {
    pub limiters: Arc<Limiters>,
    pub every: Duration,
}

#[async_trait]
impl BackgroundService for LimiterJanitor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.every) => self.limiters.retain_recent(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(ip: u32, account: u32, register: u32) -> Limiters {
        Limiters::new(
            &RateLimitConfig {
                login_per_ip_per_minute: ip,
                login_per_account_per_minute: account,
                register_per_ip_per_minute: register,
                ..RateLimitConfig::default()
            },
            5,
        )
    }

    #[test]
    fn accounts_are_limited_whatever_the_letter_case() {
        let l = limits(100, 2, 1);
        let ip = Some("10.0.0.1".parse().unwrap());
        assert!(l.login(ip, "Ada@example.com").is_ok());
        assert!(l.login(ip, " ada@EXAMPLE.com").is_ok());
        let limited = l.login(ip, "ada@example.com").unwrap_err();
        assert!((1..=30).contains(&limited.retry_after_secs), "{limited:?}");
        // Another account from the same address is still fine.
        assert!(l.login(ip, "grace@example.com").is_ok());
    }

    #[test]
    fn addresses_are_limited_across_accounts() {
        let l = limits(3, 100, 1);
        let ip = Some("10.0.0.2".parse().unwrap());
        for i in 0..3 {
            assert!(l.login(ip, &format!("user{i}@example.com")).is_ok());
        }
        assert!(l.login(ip, "user9@example.com").is_err());
        assert!(l
            .login(Some("10.0.0.3".parse().unwrap()), "user9@example.com")
            .is_ok());
        assert!(l.register(ip).is_ok());
        assert!(l.register(ip).is_err());
    }

    #[test]
    fn memory_is_reclaimed_for_idle_keys() {
        let l = limits(1000, 1000, 1000);
        for i in 0..10_000u32 {
            let _ = l.login(
                Some(IpAddr::from(i.to_be_bytes())),
                &format!("u{i}@example.com"),
            );
        }
        assert_eq!(l.len(), 20_000);
        // Buckets with one cell used out of 1000 refill in 60 ms.
        std::thread::sleep(Duration::from_millis(300));
        l.retain_recent();
        assert!(l.is_empty(), "{} keys left", l.len());
    }

    #[test]
    fn keys_have_one_size_whatever_the_username() {
        let long = "a".repeat(65_536);
        assert_eq!(std::mem::size_of_val(&AccountKey::of(&long)), 16);
        assert_eq!(
            AccountKey::of(" Ada@Example.COM"),
            AccountKey::of("ada@example.com")
        );
        assert_ne!(
            AccountKey::of("ada@example.com"),
            AccountKey::of("ada2@example.com")
        );
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let l = limits(2, 100, 100);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.login(Some(a), "x@example.com").is_ok());
        assert!(l.login(Some(b), "y@example.com").is_ok());
        assert!(l.login(Some(b), "z@example.com").is_err());
        assert!(l.login(Some(other), "z@example.com").is_ok());
        assert_eq!(
            ip_key("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_full_limiter_refuses_new_keys_until_old_ones_expire() {
        let l = Limiters::new(
            &RateLimitConfig {
                login_per_ip_per_minute: 1000,
                login_per_account_per_minute: 1,
                register_per_ip_per_minute: 1000,
                password_reset_per_ip_per_minute: 1000,
                max_tracked_keys: 10,
                ..RateLimitConfig::default()
            },
            5,
        );
        let ip = Some("10.0.0.9".parse().unwrap());
        for i in 0..9 {
            assert!(l.login(ip, &format!("u{i}@example.com")).is_ok(), "{i}");
        }
        // The account limiter holds 9 keys, the address limiter 1; the tenth account fits.
        assert!(l.login(ip, "u9@example.com").is_ok());
        let refused = l.login(ip, "u10@example.com").unwrap_err();
        assert_eq!(refused.retry_after_secs, 1);
        assert_eq!(l.login_account.len(), 10);
    }
}
