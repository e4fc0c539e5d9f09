//! Access tokens: HS256 JWTs `{"sub", "exp", "iat", "sid"}` that the seed's python-jose code
//! also accepts, verified strictly (HS256 only, `exp` and `sub` required, `nbf` honoured, no
//! leeway, bounded length). `sid` names the session the token belongs to; tokens without one
//! (the seed's) belong to none.

use std::time::SystemTime;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user_id: String,
    pub expires_at: i64,
    pub issued_at: Option<i64>,
    /// The session the token belongs to (none for the seed's tokens).
    pub session_id: Option<uuid::Uuid>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is longer than the limit")]
    TooLong,
    /// Not even text: a client that sent such bytes sent no token.
    #[error("token is not text")]
    NotText,
    #[error("token is invalid: {0}")]
    Invalid(String),
    #[error("token signing failed: {0}")]
    Signing(String),
}

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    lifetime_secs: i64,
    max_len: usize,
}

impl TokenKeys {
    /// `secret` is used as its UTF-8 bytes, exactly as python-jose uses a `str` key.
    pub fn new(secret: &str, lifetime_minutes: i64, max_len: usize) -> TokenKeys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        TokenKeys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            lifetime_secs: lifetime_minutes * 60,
            max_len,
        }
    }

    /// How long the tokens it issues last, in seconds.
    pub fn lifetime_secs(&self) -> i64 {
        self.lifetime_secs
    }

    /// A token for `user_id` in session `session`, valid for the configured lifetime from `now`
    /// (unix seconds).
    pub fn issue_at(
        &self,
        user_id: &str,
        session: Option<&uuid::Uuid>,
        now: i64,
    ) -> Result<String, TokenError> {
        let claims = Claims {
            sub: user_id.to_string(),
            exp: now + self.lifetime_secs,
            iat: Some(now),
            sid: session.map(uuid::Uuid::to_string),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError::Signing(e.to_string()))
    }

    pub fn issue(&self, user_id: &str, session: Option<&uuid::Uuid>) -> Result<String, TokenError> {
        self.issue_at(user_id, session, unix_seconds(SystemTime::now()))
    }

    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        if token.len() > self.max_len {
            return Err(TokenError::TooLong);
        }
        let data = decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        if data.claims.sub.is_empty() {
            return Err(TokenError::Invalid("empty sub".into()));
        }
        let session_id = match data.claims.sid {
            Some(sid) => Some(
                uuid::Uuid::parse_str(&sid)
                    .map_err(|_| TokenError::Invalid("sid is not a session id".into()))?,
            ),
            None => None,
        };
        Ok(Verified {
            user_id: data.claims.sub,
            expires_at: data.claims.exp,
            issued_at: data.claims.iat,
            session_id,
        })
    }

    /// Signs and verifies once, so that a broken crypto backend stops start-up, not a request.
    pub fn self_test(&self) -> Result<(), TokenError> {
        let token = self.issue("self-test", Some(&uuid::Uuid::nil()))?;
        let verified = self.verify(&token)?;
        if verified.user_id == "self-test" {
            Ok(())
        } else {
            Err(TokenError::Signing(
                "self-test round trip changed the subject".into(),
            ))
        }
    }
}

pub use crate::store::unix_seconds;

/// The token in an `Authorization` header, as FastAPI's `OAuth2PasswordBearer` finds it: the
/// scheme is compared case-insensitively and the token is everything after the first space.
/// `None` means "Not authenticated" (no header, or another scheme).
pub fn bearer_token(authorization: Option<&[u8]>) -> Option<&str> {
    bearer_credentials(authorization).and_then(|t| std::str::from_utf8(t).ok())
}

/// [`bearer_token`] as raw bytes, without checking that they are text: the proxy looks a token
/// up among those already verified (all of them text) before anything else is done with it.
pub fn bearer_credentials(authorization: Option<&[u8]>) -> Option<&[u8]> {
    let value = authorization?;
    let (scheme, param) = match value.iter().position(|b| *b == b' ') {
        Some(space) => (&value[..space], &value[space + 1..]),
        None => (value, &b""[..]),
    };
    scheme.eq_ignore_ascii_case(b"bearer").then_some(param)
}

impl crate::store::user_cache::TokenClaims for Verified {
    fn session_id(&self) -> Option<uuid::Uuid> {
        self.session_id
    }

    fn issued_at(&self) -> Option<i64> {
        self.issued_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_SECRET: &str = "seed-fixture-secret-change-me-0123456789abcdef";
    // From shared/fixtures/seed/tokens.json (python-jose, the seed's create_access_token).
    const VALID_2100: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjZjMzYzZkOC1jNTY4LTQwZGEtODVkNi1iYWQ2YTE5NDYxN2UiLCJleHAiOjQxMDI0NDQ4MDB9.UXYR1PfA3iYUO4GBfeSh4c3Uxjl6ifoDjKU9xsRZhFI";
    const EXPIRED_2020: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjZjMzYzZkOC1jNTY4LTQwZGEtODVkNi1iYWQ2YTE5NDYxN2UiLCJleHAiOjE1Nzc4MzY4MDB9.NuaVsXaH0bHsoHOtVSFwNZj_09A271CJqfyiLmlcS_g";
    const OTHER_SECRET: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjZjMzYzZkOC1jNTY4LTQwZGEtODVkNi1iYWQ2YTE5NDYxN2UiLCJleHAiOjQxMDI0NDQ4MDB9.Y6JNBhOvqX9NvxgsGlXgCuTiqVM9QEhM-kMhabWJFSA";

    fn keys() -> TokenKeys {
        TokenKeys::new(SEED_SECRET, 30, 4096)
    }

    fn hs256(header: &str, payload: &str, secret: &str) -> String {
        use base64_url as b64;
        let h = b64(header.as_bytes());
        let p = b64(payload.as_bytes());
        let input = format!("{h}.{p}");
        let sig = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_secret(secret.as_bytes()),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{input}.{sig}")
    }

    fn base64_url(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |acc, b| (acc << 8) | *b as u32) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn python_jose_tokens_behave_as_named() {
        let k = keys();
        assert_eq!(
            k.verify(VALID_2100).unwrap().user_id,
            "cf33c6d8-c568-40da-85d6-bad6a194617e"
        );
        assert!(k.verify(EXPIRED_2020).is_err());
        assert!(k.verify(OTHER_SECRET).is_err());
    }

    #[test]
    fn our_tokens_have_the_seed_shape() {
        let k = keys();
        let t = k.issue_at("abc", None, 1_000).unwrap();
        let header = t.split('.').next().unwrap();
        // {"typ":"JWT","alg":"HS256"} in some order, nothing else.
        assert!(header.starts_with("eyJ"));
        let v = k.verify(&k.issue("abc", None).unwrap()).unwrap();
        assert_eq!((v.user_id.as_str(), v.session_id), ("abc", None));
        assert!(k.verify(&t).is_err(), "issued at 1000 s, long expired");
        // A session's token names it; a sid that is no session id is refused.
        let sid = uuid::Uuid::new_v4();
        let v = k.verify(&k.issue("abc", Some(&sid)).unwrap()).unwrap();
        assert_eq!(v.session_id, Some(sid));
        let now = unix_seconds(SystemTime::now());
        let bad_sid = encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "abc".into(),
                exp: now + 60,
                iat: Some(now),
                sid: Some("not-a-session".into()),
            },
            &k.encoding,
        )
        .unwrap();
        assert!(k.verify(&bad_sid).is_err());
    }

    #[test]
    fn unix_seconds_count_as_jwt_times_do() {
        let now = SystemTime::now();
        assert_eq!(
            unix_seconds(now),
            chrono::DateTime::<chrono::Utc>::from(now).timestamp()
        );
        assert_eq!(unix_seconds(SystemTime::UNIX_EPOCH), 0);
        let before = SystemTime::UNIX_EPOCH - std::time::Duration::from_millis(500);
        assert_eq!(unix_seconds(before), i64::MIN);
    }

    #[test]
    fn strict_claims_and_algorithms() {
        let k = keys();
        let now = chrono::Utc::now().timestamp();
        let ok = hs256(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &format!(r#"{{"sub":"u","exp":{}}}"#, now + 60),
            SEED_SECRET,
        );
        assert!(k.verify(&ok).is_ok());
        // Expired by one second: no leeway.
        let t = hs256(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"sub":"u","exp":{}}}"#, now - 1),
            SEED_SECRET,
        );
        assert!(k.verify(&t).is_err());
        // nbf in the future.
        let t = hs256(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"sub":"u","exp":{},"nbf":{}}}"#, now + 60, now + 30),
            SEED_SECRET,
        );
        assert!(k.verify(&t).is_err());
        // Missing exp, missing sub, string exp, numeric sub, empty sub.
        for payload in [
            r#"{"sub":"u"}"#.to_string(),
            format!(r#"{{"exp":{}}}"#, now + 60),
            format!(r#"{{"sub":"u","exp":"{}"}}"#, now + 60),
            format!(r#"{{"sub":5,"exp":{}}}"#, now + 60),
            format!(r#"{{"sub":"","exp":{}}}"#, now + 60),
        ] {
            let t = hs256(r#"{"alg":"HS256"}"#, &payload, SEED_SECRET);
            assert!(k.verify(&t).is_err(), "{payload}");
        }
        // alg none, other HMACs, stripped signature.
        let body = format!(r#"{{"sub":"u","exp":{}}}"#, now + 60);
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS512"}"#,
            r#"{"alg":"RS256"}"#,
        ] {
            let t = hs256(header, &body, SEED_SECRET);
            assert!(k.verify(&t).is_err(), "{header}");
        }
        let stripped = ok.rsplit_once('.').unwrap().0.to_string() + ".";
        assert!(k.verify(&stripped).is_err());
        // Length cap.
        let long = "a".repeat(5000);
        assert_eq!(k.verify(&long), Err(TokenError::TooLong));
    }

    #[test]
    fn bearer_header_parsing_matches_fastapi() {
        assert_eq!(bearer_token(None), None);
        assert_eq!(bearer_token(Some(b"Basic YTpi")), None);
        assert_eq!(bearer_token(Some(b"")), None);
        assert_eq!(bearer_token(Some(b"Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(Some(b"bearer abc")), Some("abc"));
        assert_eq!(bearer_token(Some(b"Bearer")), Some(""));
        assert_eq!(bearer_token(Some(b"Bearer  abc")), Some(" abc"));
        assert_eq!(bearer_token(Some(b"Bearer \xff")), None);
        assert_eq!(bearer_credentials(Some(b"Bearer \xff")), Some(&b"\xff"[..]));
        assert_eq!(bearer_credentials(Some(b"BEARER a b")), Some(&b"a b"[..]));
        assert_eq!(bearer_credentials(Some(b"\xff abc")), None);
        assert_eq!(bearer_credentials(Some(b"Basic abc")), None);
    }

    #[test]
    fn self_test_passes() {
        keys().self_test().unwrap();
    }
}
