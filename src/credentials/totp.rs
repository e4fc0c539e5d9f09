//! TOTP second factors (RFC 6238: HMAC-SHA-1, 6 digits, 30-second steps, one step either way),
//! computed by `totp-rs`; and the recovery codes that stand in for a lost authenticator.
//!
//! A code is accepted once: [`matching_step`] says which time step a code belongs to, and the
//! store accepts it only for a step later than the last one used (one compare-and-set), so a
//! code seen over a shoulder or replayed within its window is refused.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Secret, TOTP};

use crate::credentials::one_time::NoRandomness;

pub const DIGITS: usize = 6;
pub const STEP_SECONDS: u64 = 30;
/// Secret bytes (160 bits, RFC 4226's recommendation).
pub const SECRET_BYTES: usize = 20;
/// Recovery codes issued at once.
pub const RECOVERY_CODES: usize = 10;

/// A new random secret.
pub fn generate_secret() -> Result<Vec<u8>, NoRandomness> {
    let mut secret = vec![0u8; SECRET_BYTES];
    getrandom::fill(&mut secret).map_err(|e| NoRandomness::from(e.to_string()))?;
    Ok(secret)
}

/// The secret as authenticator apps take it: base32 without padding.
pub fn base32(secret: &[u8]) -> String {
    Secret::Raw(secret.to_vec()).to_encoded().to_string()
}

/// The `otpauth://` URI an authenticator app reads (a QR code of it, usually).
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let label = format!(
        "{}:{}",
        form_urlencoded::byte_serialize(issuer.as_bytes()).collect::<String>(),
        form_urlencoded::byte_serialize(account.as_bytes()).collect::<String>()
    )
    .replace('+', "%20");
    let issuer: String = form_urlencoded::byte_serialize(issuer.as_bytes())
        .collect::<String>()
        .replace('+', "%20");
    format!(
        "otpauth://totp/{label}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
        base32(secret)
    )
}

/// Whether `code` looks like a TOTP code at all: exactly six ASCII digits.
pub fn well_formed(code: &str) -> bool {
    code.len() == DIGITS && code.bytes().all(|b| b.is_ascii_digit())
}

/// The time step (unix seconds / 30) whose code `code` is, within one step of `now`; `None`
/// when it is none of them. The comparisons take the same time whichever matches.
pub fn matching_step(secret: &[u8], code: &str, now: u64) -> Option<u64> {
    if !well_formed(code) {
        return None;
    }
    let totp = TOTP::new_unchecked(Algorithm::SHA1, DIGITS, 0, STEP_SECONDS, secret.to_vec());
    let current = now / STEP_SECONDS;
    let mut found = None;
    for step in [current.saturating_sub(1), current, current + 1] {
        let expected = totp.generate(step * STEP_SECONDS);
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// The code of `secret` at `time` (for tests and the walk-through's one-liner's check).
pub fn code_at(secret: &[u8], time: u64) -> String {
    TOTP::new_unchecked(Algorithm::SHA1, DIGITS, 0, STEP_SECONDS, secret.to_vec()).generate(time)
}

/// Ten new recovery codes, as shown to the user once: `xxxxx-xxxxx` of lower-case letters and
/// digits (about 51 bits each).
pub fn recovery_codes() -> Result<Vec<String>, NoRandomness> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut codes = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        let mut bytes = [0u8; 10];
        getrandom::fill(&mut bytes).map_err(|e| NoRandomness::from(e.to_string()))?;
        let chars: String = bytes
            .iter()
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
            .collect();
        codes.push(format!("{}-{}", &chars[..5], &chars[5..]));
    }
    Ok(codes)
}

/// What is stored of a recovery code: the SHA-256 of its normalised form (letter case,
/// spaces and dashes do not matter to the user typing it). The codes are random, so a fast
/// hash is enough: there is no dictionary to try.
pub fn recovery_code_hash(code: &str) -> Option<Vec<u8>> {
    let normal: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (normal.len() == 10 && normal.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| Sha256::digest(normal.as_bytes()).to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238's SHA-1 test secret and vectors (the last six digits of its 8-digit codes).
    const RFC_SECRET: &[u8] = b"12345678901234567890";

    #[test]
    fn codes_follow_rfc_6238() {
        for (time, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            assert_eq!(code_at(RFC_SECRET, time), code, "{time}");
        }
    }

    #[test]
    fn a_code_matches_its_step_and_the_ones_beside_it_only() {
        let now = 1_234_567_890;
        let step = now / 30;
        assert_eq!(
            matching_step(RFC_SECRET, &code_at(RFC_SECRET, now), now),
            Some(step)
        );
        assert_eq!(
            matching_step(RFC_SECRET, &code_at(RFC_SECRET, now - 30), now),
            Some(step - 1)
        );
        assert_eq!(
            matching_step(RFC_SECRET, &code_at(RFC_SECRET, now + 30), now),
            Some(step + 1)
        );
        assert_eq!(
            matching_step(RFC_SECRET, &code_at(RFC_SECRET, now - 60), now),
            None
        );
        for bad in [
            "",
            "12345",
            "1234567",
            "12345a",
            "１２３４５６",
            "00000\u{0}",
        ] {
            assert_eq!(matching_step(RFC_SECRET, bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn secrets_read_as_authenticators_expect() {
        assert_eq!(
            base32(b"12345678901234567890"),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
        let uri = otpauth_uri(
            "Sentinel Shield",
            "ann+x@example.com",
            b"12345678901234567890",
        );
        assert_eq!(
            uri,
            "otpauth://totp/Sentinel%20Shield:ann%2Bx%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Sentinel%20Shield&algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn recovery_codes_are_ten_distinct_and_hash_whatever_their_spelling() {
        let codes = recovery_codes().unwrap();
        assert_eq!(codes.len(), 10);
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 10);
        let code = &codes[0];
        let hash = recovery_code_hash(code).unwrap();
        assert_eq!(recovery_code_hash(&code.to_uppercase()), Some(hash.clone()));
        assert_eq!(recovery_code_hash(&code.replace('-', " ")), Some(hash));
        for bad in [
            "",
            "short",
            "abcde-fghij-k",
            "abcde-fghi!",
            "ａｂｃｄｅ-fghij",
        ] {
            assert_eq!(recovery_code_hash(bad), None, "{bad}");
        }
    }
}
