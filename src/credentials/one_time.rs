//! One-time tokens: the secrets in password-reset and email-verification links.
//!
//! A token is 256 random bits from the operating system, written base64url (43 characters).
//! PostgreSQL keeps only its SHA-256 ([`OneTimeToken::hash`]): a copy of the database cannot be
//! turned into a working link. The mail that carries a token waits in the outbox until it is
//! delivered; there the token is sealed ([`SealKey`]), so that the outbox alone does not give
//! it away either. The private halves of the identity assertion keys are sealed the same way,
//! under another context.
//!
//! Seals are ChaCha20-Poly1305 ([`Sealer`], as TOTP secrets are kept) under a key derived from
//! `auth.secret_key`, with what the secret is (a mail's link, a signing key) as associated data.
//! Seals written by versions before it still open (64 bytes, told apart by their length):
//!
//! ```text
//! sealed = nonce (16 random bytes) ‖ body ‖ tag
//! body   = token XOR HMAC-SHA256(legacy key, "sentinel seal v1" ‖ nonce)
//! tag    = the first 16 bytes of HMAC-SHA256(legacy key, "sentinel seal tag v1" ‖ nonce ‖ body)
//! ```
//!
//! Either way a seal made under another key (the secret changed since) does not open, so such a
//! mail is dropped rather than sent with a link that cannot work.

use base64::Engine as _;
use hmac::Mac;
use sha2::{Digest, Sha256};

use crate::credentials::sealed::Sealer;
use crate::credentials::{derive_key, keyed_mac};

const TOKEN_BYTES: usize = 32;
const NONCE_BYTES: usize = 16;
const LABEL: &[u8] = b"sentinel seal v1";
const TAG_LABEL: &[u8] = b"sentinel seal tag v1";
const TAG_BYTES: usize = 16;
/// The length of a seal made before the AEAD (nonce, body, tag).
const LEGACY_SEAL_BYTES: usize = NONCE_BYTES + TOKEN_BYTES + TAG_BYTES;

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

/// Seals tokens for the outbox (or signing keys for their table) and opens them.
pub struct SealKey {
    sealer: Sealer,
    /// What is sealed: the associated data of every seal, so that a seal does not open as
    /// the other kind of secret.
    context: &'static [u8],
    /// The key of the seals made before the AEAD, to open them.
    legacy: [u8; 32],
}

impl SealKey {
    /// The seal key of an `auth.secret_key` for the outbox's link secrets.
    pub fn derive(secret: &str) -> SealKey {
        SealKey {
            sealer: Sealer::derive(secret),
            context: b"sentinel-gateway outbox token",
            legacy: derive_key(b"sentinel-gateway mail seal key\0", secret),
        }
    }

    /// The key that seals the private halves of identity assertion keys in PostgreSQL
    /// (another context: nothing sealed as one opens as the other).
    pub fn for_signing_keys(secret: &str) -> SealKey {
        SealKey {
            sealer: Sealer::derive(secret),
            context: b"sentinel-gateway signing key",
            legacy: derive_key(b"sentinel-gateway signing key seal\0", secret),
        }
    }

    fn legacy_mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = keyed_mac(&self.legacy);
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
        self.sealer.seal(secret, self.context)
    }

    /// `None` for bytes that are not a token sealed with this key.
    pub fn open(&self, sealed: &[u8]) -> Option<OneTimeToken> {
        self.open_bytes(sealed).map(OneTimeToken)
    }

    /// The 32 bytes [`SealKey::seal_bytes`] sealed (now, or before the AEAD), or `None` for
    /// anything else.
    pub fn open_bytes(&self, sealed: &[u8]) -> Option<[u8; TOKEN_BYTES]> {
        if sealed.len() == LEGACY_SEAL_BYTES {
            return self.open_legacy(sealed);
        }
        let mut opened = self.sealer.open(sealed, self.context)?;
        let secret: Option<[u8; TOKEN_BYTES]> = opened.as_slice().try_into().ok();
        opened.fill(0);
        secret
    }

    fn open_legacy(&self, sealed: &[u8]) -> Option<[u8; TOKEN_BYTES]> {
        let (sealed, tag) = sealed.split_at(NONCE_BYTES + TOKEN_BYTES);
        let expected = self.legacy_mac(&[TAG_LABEL, sealed]);
        // Constant time: compare every byte whatever the first difference.
        let diff = expected[..TAG_BYTES]
            .iter()
            .zip(tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_BYTES);
        let pad = self.legacy_mac(&[LABEL, nonce]);
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
        // ChaCha20-Poly1305: key id, nonce, ciphertext, tag.
        assert_eq!(sealed.len(), 1 + 12 + 32 + 16);
        assert_eq!(sealed[0], crate::credentials::sealed::KEY_ID);
        assert!(!sealed.windows(32).any(|w| w == token.0));
        assert_eq!(key.open(&sealed), Some(token.clone()));
        // A second seal of the same token looks different.
        assert_ne!(key.seal(&token).unwrap(), sealed);
        // Another key (a changed secret), a flipped bit, a cut: not a seal.
        assert_eq!(SealKey::derive("secret two").open(&sealed), None);
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 1;
            assert_eq!(key.open(&flipped), None, "byte {i}");
        }
        assert_eq!(key.open(&sealed[..60]), None);
        // Sealed as a mail's link, it does not open as a signing key, and the other way round.
        let signing = SealKey::for_signing_keys("secret one");
        assert_eq!(signing.open(&sealed), None);
        assert_eq!(key.open_bytes(&signing.seal_bytes(&token.0).unwrap()), None);
    }

    /// A seal of the construction before the AEAD still opens, and only whole and under its
    /// key. The vector was computed independently (Python's hmac and hashlib, from the
    /// construction in this module's documentation): the mail seal key of `secret one`, nonce
    /// bytes 0..16, token bytes 100..132.
    #[test]
    fn seals_made_before_the_aead_still_open() {
        let sealed = hex(LEGACY_VECTOR);
        assert_eq!(sealed.len(), 64);
        let token: Vec<u8> = (100..132).collect();
        let key = SealKey::derive("secret one");
        assert_eq!(key.open_bytes(&sealed).map(|t| t.to_vec()), Some(token));
        assert_eq!(SealKey::derive("secret two").open_bytes(&sealed), None);
        assert_eq!(
            SealKey::for_signing_keys("secret one").open_bytes(&sealed),
            None
        );
        for i in 0..sealed.len() {
            let mut bent = sealed.clone();
            bent[i] ^= 1;
            assert_eq!(key.open_bytes(&bent), None, "byte {i}");
        }
    }

    const LEGACY_VECTOR: &str = "000102030405060708090a0b0c0d0e0f8aa2572e0ea5ae1233120d6501ab01db\
                                 3bab10414f464c8fa2ba23d29abe4d21e93ee0ef093c6a132370ddd15c205f76";

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }
}
