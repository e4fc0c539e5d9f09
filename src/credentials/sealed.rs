//! Secrets kept at rest (TOTP secrets; through `one_time::SealKey`, mail link secrets and
//! signing keys): sealed with ChaCha20-Poly1305 (`ring::aead`, the
//! AEAD rustls already brings) under a key derived from `auth.secret_key`.
//!
//! ```text
//! sealed = key id (1 byte) ‖ nonce (12 random bytes) ‖ ciphertext ‖ tag (16 bytes)
//! ```
//!
//! The key id names the key a seal was made with, so a later key can be added beside this one
//! and old seals still open. The caller's `context` (what the secret belongs to: a factor's
//! id, or a use) is the associated data: a sealed secret copied to another row does not open there.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

use crate::credentials::derive_key;
use crate::credentials::one_time::NoRandomness;

/// The key id of seals made today.
pub const KEY_ID: u8 = 1;

/// Seals and opens secrets at rest.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

impl Sealer {
    /// The sealer of an `auth.secret_key` (a derivation of its own: nothing else the gateway
    /// derives from the secret opens these).
    pub fn derive(secret: &str) -> Sealer {
        let key = derive_key(b"sentinel-gateway aead seal v1\0", secret);
        Sealer {
            // A 32-byte key is what ChaCha20-Poly1305 takes: this cannot fail.
            key: LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap_or_else(|_| unreachable!()),
            ),
        }
    }

    pub fn seal(&self, secret: &[u8], context: &[u8]) -> Result<Vec<u8>, NoRandomness> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| NoRandomness::from(e.to_string()))?;
        let mut body = secret.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut body,
            )
            .map_err(|_| NoRandomness::from("sealing failed".to_string()))?;
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + body.len());
        sealed.push(KEY_ID);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&body);
        Ok(sealed)
    }

    /// The secret, if `sealed` was made by this key for this `context` and is whole.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Option<Vec<u8>> {
        let (&key_id, rest) = sealed.split_first()?;
        if key_id != KEY_ID || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_opens_only_with_its_key_and_context_and_whole() {
        let sealer = Sealer::derive("a secret of at least thirty-two bytes!!");
        let sealed = sealer.seal(b"JBSWY3DPEHPK3PXP", b"factor-1").unwrap();
        assert_eq!(sealed[0], KEY_ID);
        assert_eq!(sealed.len(), 1 + 12 + 16 + 16);
        assert_eq!(
            sealer.open(&sealed, b"factor-1").as_deref(),
            Some(&b"JBSWY3DPEHPK3PXP"[..])
        );
        // Two seals of one secret differ (fresh nonces).
        assert_ne!(
            sealed,
            sealer.seal(b"JBSWY3DPEHPK3PXP", b"factor-1").unwrap()
        );
        assert_eq!(sealer.open(&sealed, b"factor-2"), None);
        let other = Sealer::derive("another secret of at least thirty-two bytes");
        assert_eq!(other.open(&sealed, b"factor-1"), None);
        for i in 0..sealed.len() {
            let mut bent = sealed.clone();
            bent[i] ^= 1;
            assert_eq!(sealer.open(&bent, b"factor-1"), None, "byte {i}");
        }
        assert_eq!(sealer.open(&sealed[..20], b"factor-1"), None);
        assert_eq!(sealer.open(&[], b"factor-1"), None);
    }
}
