//! One-time tokens: the secrets in password-reset and email-verification links.
//!
//! A token is 256 random bits from the operating system, written base64url (43 characters).
//! PostgreSQL keeps only its SHA-256 ([`OneTimeToken::hash`]): a copy of the database cannot be
//! turned into a working link. The mail that carries a token waits in the outbox until it is
//! delivered; there the token is sealed ([`SealKey`]) under a key derived from
//! `auth.secret_key`, so the outbox alone does not give it away either.
//!
//! ```text
//! sealed = nonce (16 random bytes) ‖ body ‖ tag
//! body   = token XOR HMAC-SHA256(seal key, "sentinel seal v1" ‖ nonce)
//! tag    = the first 16 bytes of HMAC-SHA256(seal key, "sentinel seal tag v1" ‖ nonce ‖ body)
//! ```
//!
//! A fresh nonce per mail makes every pad a different pseudo-random one, used once. The tag
//! tells a seal made under another key (the secret changed since) from a good one, so such a
//! mail is dropped rather than sent with a link that cannot work.

use base64::Engine as _;
use hmac::Mac;
use sha2::{Digest, Sha256};

use crate::credentials::{derive_key, keyed_mac};

const TOKEN_BYTES: usize = 32;
const NONCE_BYTES: usize = 16;
const LABEL: &[u8] = b"sentinel seal v1";
const TAG_LABEL: &[u8] = b"sentinel seal tag v1";
const TAG_BYTES: usize = 16;

/// The secret of one link, as generated (only ever held in memory and in a sealed mail).
#[derive(Clone, PartialEq, Eq)]
pub struct OneTimeToken([u8; TOKEN_BYTES]);

impl std::fmt::Debug for OneTimeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OneTimeToken([redacted])")
    }
}

/// The operating system could not supply random bytes.
#[derive(Debug, thiserror::Error)]
#[error("no randomness from the operating system: {0}")]
pub struct NoRandomness(String);

impl From<String> for NoRandomness {
    fn from(cause: String) -> NoRandomness {
        NoRandomness(cause)
    }
}

fn random<const N: usize>() -> Result<[u8; N], NoRandomness> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| NoRandomness(e.to_string()))?;
    Ok(bytes)
}

impl OneTimeToken {
    pub fn generate() -> Result<OneTimeToken, NoRandomness> {
        Ok(OneTimeToken(random()?))
    }

    /// The token as a link carries it.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    /// What the database keeps of it.
    pub fn hash(&self) -> Vec<u8> {
        Sha256::digest(self.0).to_vec()
    }

    /// The hash of a token as a client sends it back, or `None` when it cannot be one of ours
    /// (wrong length or alphabet): such text is never looked up.
    pub fn hash_of_text(text: &str) -> Option<Vec<u8>> {
        if text.len() != 43 {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        let token: [u8; TOKEN_BYTES] = bytes.try_into().ok()?;
        Some(OneTimeToken(token).hash())
    }
}

/// Seals tokens for the outbox and opens them for delivery.
pub struct SealKey {
    key: [u8; 32],
}

impl SealKey {
    /// The seal key of an `auth.secret_key`.
    pub fn derive(secret: &str) -> SealKey {
        SealKey {
            key: derive_key(b"sentinel-gateway mail seal key\0", secret),
        }
    }

    /// The key that seals the private halves of identity assertion keys in PostgreSQL
    /// (another derivation of the same secret: nothing sealed under one opens under the other).
    pub fn for_signing_keys(secret: &str) -> SealKey {
        SealKey {
            key: derive_key(b"sentinel-gateway signing key seal\0", secret),
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = keyed_mac(&self.key);
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    pub fn seal(&self, token: &OneTimeToken) -> Result<Vec<u8>, NoRandomness> {
        self.seal_bytes(&token.0)
    }

    /// Seals any 32 secret bytes (as [`SealKey::seal`] does a token).
    pub fn seal_bytes(&self, secret: &[u8; TOKEN_BYTES]) -> Result<Vec<u8>, NoRandomness> {
        let nonce: [u8; NONCE_BYTES] = random()?;
        let pad = self.mac(&[LABEL, &nonce]);
        let mut sealed = nonce.to_vec();
        sealed.extend(secret.iter().zip(pad).map(|(t, p)| t ^ p));
        let tag = self.mac(&[TAG_LABEL, &sealed]);
        sealed.extend_from_slice(&tag[..TAG_BYTES]);
        Ok(sealed)
    }

    /// `None` for bytes that are not a token sealed with this key.
    pub fn open(&self, sealed: &[u8]) -> Option<OneTimeToken> {
        self.open_bytes(sealed).map(OneTimeToken)
    }

    /// The 32 bytes [`SealKey::seal_bytes`] sealed, or `None` for anything else.
    pub fn open_bytes(&self, sealed: &[u8]) -> Option<[u8; TOKEN_BYTES]> {
        if sealed.len() != NONCE_BYTES + TOKEN_BYTES + TAG_BYTES {
            return None;
        }
        let (sealed, tag) = sealed.split_at(NONCE_BYTES + TOKEN_BYTES);
        let expected = self.mac(&[TAG_LABEL, sealed]);
        // Constant time: compare every byte whatever the first difference.
        let diff = expected[..TAG_BYTES]
            .iter()
            .zip(tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_BYTES);
        let pad = self.mac(&[LABEL, nonce]);
        let mut token = [0u8; TOKEN_BYTES];
        for (i, (b, p)) in body.iter().zip(pad).enumerate() {
            token[i] = b ^ p;
        }
        Some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_round_trip_through_their_text() {
        let a = OneTimeToken::generate().unwrap();
        let b = OneTimeToken::generate().unwrap();
        assert_ne!(a, b);
        let text = a.encode();
        assert_eq!(text.len(), 43);
        assert_eq!(OneTimeToken::hash_of_text(&text), Some(a.hash()));
        assert_ne!(a.hash(), b.hash());
        assert_eq!(OneTimeToken::hash_of_text(&text[..42]), None);
        assert_eq!(
            OneTimeToken::hash_of_text(&format!("{}=", &text[..42])),
            None
        );
        assert_eq!(OneTimeToken::hash_of_text(""), None);
        assert!(!format!("{a:?}").contains(&text));
    }

    #[test]
    fn sealed_tokens_open_only_with_their_key_and_never_show_the_token() {
        let key = SealKey::derive("secret one");
        let token = OneTimeToken::generate().unwrap();
        let sealed = key.seal(&token).unwrap();
        assert_eq!(sealed.len(), 64);
        assert!(!sealed.windows(32).any(|w| w == token.0));
        assert_eq!(key.open(&sealed), Some(token.clone()));
        // A second seal of the same token looks different.
        assert_ne!(key.seal(&token).unwrap(), sealed);
        // Another key (a changed secret), a flipped bit, a cut: not a seal.
        assert_eq!(SealKey::derive("secret two").open(&sealed), None);
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert_eq!(key.open(&flipped), None);
        assert_eq!(key.open(&sealed[..63]), None);
    }
}
