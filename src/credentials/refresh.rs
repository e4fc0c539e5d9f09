//! Refresh tokens: opaque to clients, derived by the gateway from a session id and the
//! session's generation (how many times it was refreshed) with an HMAC-SHA256 key of its own:
//!
//! ```text
//! token = base64url(session id (16 bytes) ‖ generation (4 bytes, big-endian) ‖ MAC (32 bytes))
//! MAC   = HMAC-SHA256(refresh key, "sentinel refresh v1" ‖ session id ‖ generation)
//! ```
//!
//! The database keeps only the session id and its current generation, which cannot be turned
//! into a token without the key; a token of an older generation is recognisable as such (reuse:
//! within the grace period it gets the session's current tokens, after it the session is
//! revoked), and a token whose MAC does not verify was never issued (it revokes nothing, even if
//! it names a real session). Deriving the current token again is what lets a client that lost
//! an answer, or a second tab, get the same token pair instead of an error.
//!
//! The key is derived from `auth.secret_key` (HMAC of a fixed label), so a new secret retires
//! every refresh token along with every access token.

use base64::Engine as _;
use hmac::Mac;

use crate::credentials::{derive_key, keyed_mac, HmacSha256};
use uuid::Uuid;

const LABEL: &[u8] = b"sentinel refresh v1";
const TOKEN_BYTES: usize = 16 + 4 + 32;

/// What a well-formed refresh token names. Only [`RefreshKey::open`] makes one, after the MAC
/// verified: it was issued by this gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshClaim {
    pub session_id: Uuid,
    pub generation: u32,
}

pub struct RefreshKey {
    key: [u8; 32],
}

impl RefreshKey {
    /// The refresh key of an `auth.secret_key`.
    pub fn derive(secret: &str) -> RefreshKey {
        RefreshKey {
            key: derive_key(b"sentinel-gateway refresh token key\0", secret),
        }
    }

    fn mac(&self, session_id: &Uuid, generation: u32) -> HmacSha256 {
        let mut mac = keyed_mac(&self.key);
        mac.update(LABEL);
        mac.update(session_id.as_bytes());
        mac.update(&generation.to_be_bytes());
        mac
    }

    /// The refresh token of a session at a generation.
    pub fn token(&self, session_id: &Uuid, generation: u32) -> String {
        let mut bytes = Vec::with_capacity(TOKEN_BYTES);
        bytes.extend_from_slice(session_id.as_bytes());
        bytes.extend_from_slice(&generation.to_be_bytes());
        bytes.extend_from_slice(&self.mac(session_id, generation).finalize().into_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// What `token` names, if this gateway issued it (the MAC is compared in constant time).
    pub fn open(&self, token: &str) -> Option<RefreshClaim> {
        if token.len() > 128 {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim())
            .ok()?;
        if bytes.len() != TOKEN_BYTES {
            return None;
        }
        let session_id = Uuid::from_slice(&bytes[..16]).ok()?;
        let generation = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
        self.mac(&session_id, generation)
            .verify_slice(&bytes[20..])
            .ok()?;
        Some(RefreshClaim {
            session_id,
            generation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_open_only_with_the_key_that_made_them() {
        let key = RefreshKey::derive("a secret of at least thirty-two bytes!!");
        let sid = Uuid::new_v4();
        let token = key.token(&sid, 7);
        assert!(token.len() >= 64 && token.len() <= 72, "{}", token.len());
        assert_eq!(
            key.open(&token),
            Some(RefreshClaim {
                session_id: sid,
                generation: 7
            })
        );
        // Another generation, another token; the same inputs, the same token.
        assert_ne!(key.token(&sid, 8), token);
        assert_eq!(key.token(&sid, 7), token);
        // Another key, a tampered byte, a bad encoding: nothing.
        assert_eq!(
            RefreshKey::derive("another secret, also long enough....").open(&token),
            None
        );
        let mut tampered = token.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(key.open(std::str::from_utf8(&tampered).unwrap()), None);
        for bad in ["", "not base64 at all!", "AAAA", &"A".repeat(500)] {
            assert_eq!(key.open(bad), None, "{bad}");
        }
        // A forged token naming a real session and a later generation does not open.
        let mut forged = sid.as_bytes().to_vec();
        forged.extend_from_slice(&8u32.to_be_bytes());
        forged.extend_from_slice(&[0u8; 32]);
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
        assert_eq!(key.open(&forged), None);
    }
}
