//! What proves who a caller is and keeps guessing expensive, and what proves it to upstreams
//! (`assertion`): passwords (`password`),
//! tokens (`token`), refresh tokens (`refresh`), the one-time secrets of reset and
//! verification links (`one_time`), email addresses as account names (`email`) and the rate
//! limits (`rate_limit`, with `shared_limits` their stage in Redis), second factors (`totp`,
//! `passkey`) and secrets kept at rest (`sealed`).

pub mod assertion;
pub mod email;
pub mod one_time;
pub mod passkey;
pub mod password;
pub mod rate_limit;
pub mod refresh;
pub mod sealed;
pub mod shared_limits;
pub mod token;
pub mod totp;

use hmac::digest::KeyInit;
use sha2::{Digest, Sha256};

/// HMAC-SHA256, the MAC of refresh tokens and sealed link tokens.
pub(crate) type HmacSha256 = hmac::Hmac<Sha256>;

/// A key of its own for one use (`label`) of `auth.secret_key`: SHA-256 of both. A new secret
/// retires everything made with any of them.
pub(crate) fn derive_key(label: &[u8], secret: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(label);
    hash.update(secret.as_bytes());
    hash.finalize().into()
}

/// An HMAC under a 32-byte key. HMAC pads a short key with zeros to the block size, so this
/// is the MAC of the key itself, through the constructor that cannot fail.
pub(crate) fn keyed_mac(key: &[u8; 32]) -> HmacSha256 {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    <HmacSha256 as KeyInit>::new(&block.into())
}

/// The credentials' checks of the configuration: the password policy's argon2 parameters (the
/// library's own limits; OWASP's minimum is the configuration's), and the Redis URL of shared
/// rate limits.
pub fn check(config: &crate::config::Config) -> Result<(), crate::config::ConfigError> {
    let invalid = crate::config::ConfigError::Invalid;
    config
        .password
        .policy()
        .check()
        .map_err(|e| invalid(format!("password: {e}")))?;
    let limits = &config.rate_limit;
    if limits.backend == crate::config::RateLimitBackend::Redis {
        shared_limits::check_url(limits.redis_url.expose())
            .map_err(|e| invalid(format!("rate_limit.redis_url: {e}")))?;
    }
    Ok(())
}
