//! Login and registration rate limits (GCRA, via `governor`): per client IP and per account for
//! `POST /auth/token`, per client IP for `POST /auth/register`. Checked before any database
//! query or password hashing; proxied traffic never passes through here.
//!
//! The account key is the normalised email, counted whether or not the account exists, so
//! unknown emails cannot be probed for free. Limiter memory stays bounded: [`LimiterJanitor`]
//! drops keys whose bucket is full again.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, NotUntil, Quota, RateLimiter};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::RateLimitConfig;

/// Which limit was hit, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_secs: u64,
}

pub struct Limiters {
    login_ip: DefaultKeyedRateLimiter<IpAddr>,
    login_account: DefaultKeyedRateLimiter<String>,
    register_ip: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

/// The key an account is limited under: the login account (see `email::login_account`) trimmed
/// and lower-cased, as emails are matched.
pub fn account_key(account: &str) -> String {
    account.trim().to_lowercase()
}

impl Limiters {
    pub fn new(config: &RateLimitConfig) -> Limiters {
        Limiters {
            login_ip: RateLimiter::keyed(per_minute(config.login_per_ip_per_minute)),
            login_account: RateLimiter::keyed(per_minute(config.login_per_account_per_minute)),
            register_ip: RateLimiter::keyed(per_minute(config.register_per_ip_per_minute)),
            clock: DefaultClock::default(),
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

    /// One login attempt from `ip` for `account`: both limits are charged.
    pub fn login(&self, ip: Option<IpAddr>, account: &str) -> Result<(), Limited> {
        if let Some(ip) = ip {
            self.login_ip.check_key(&ip).map_err(|n| self.limited(n))?;
        }
        self.login_account
            .check_key(&account_key(account))
            .map_err(|n| self.limited(n))
    }

    pub fn register(&self, ip: Option<IpAddr>) -> Result<(), Limited> {
        match ip {
            Some(ip) => self.register_ip.check_key(&ip).map_err(|n| self.limited(n)),
            None => Ok(()),
        }
    }

    /// Keys currently remembered (all limiters).
    pub fn len(&self) -> usize {
        self.login_ip.len() + self.login_account.len() + self.register_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets keys whose bucket is full again (they would behave as new ones anyway).
    pub fn retain_recent(&self) {
        self.login_ip.retain_recent();
        self.login_account.retain_recent();
        self.register_ip.retain_recent();
        self.login_ip.shrink_to_fit();
        self.login_account.shrink_to_fit();
        self.register_ip.shrink_to_fit();
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
        Limiters::new(&RateLimitConfig {
            login_per_ip_per_minute: ip,
            login_per_account_per_minute: account,
            register_per_ip_per_minute: register,
        })
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
}
