//! Identity assertions for upstreams (`X-Identity-Assertion`): a JWT signed with Ed25519
//! (`EdDSA`) on every request forwarded with a user's identity, so that an upstream can check
//! who the gateway says is calling without trusting the network it came over.
//!
//! Claims: `iss`, `sub` (the user id), `aud` (the route's `name`, or its prefix), `iat`, `exp`
//! (`iat` + `lifetime_seconds`), `jti`, `email`, `email_verified`, `roles` (sorted), `aal` and
//! `amr` (the session's level and methods, RFC 8176), and `sid`
//! (the session, for tokens that have one). An upstream checks the signature against
//! `GET /.well-known/jwks.json`, the audience against its own route, and the expiry.
//!
//! **Keys.** Every instance signs with the same key at any moment, kept in PostgreSQL
//! (`sentinel_signing_keys`, the private half sealed under a key derived from
//! `auth.secret_key`), so starting or adding an instance brings no key a verifier has not
//! seen. There is always a current key and a next one; the next is published from its
//! creation, a whole `key_rotation_seconds` before it signs, so a verifier that cached the
//! JWKS any time in that period already knows it. When it takes over, some instance (one at
//! a time, under an advisory lock) makes the one after, and the old key stays published until
//! every assertion it signed has expired (`lifetime`, plus [`SKEW`] for clocks and verifiers'
//! leeway). Each change is `NOTIFY`d and every instance reloads at once, and every 30 s
//! regardless; the JWKS is served from memory.
//!
//! **Cost.** Signing is one Ed25519 signature (tens of microseconds). An assertion is kept
//! for `reuse_seconds` per user, session and route and sent again meanwhile, as long as the
//! user's email, its verification and their roles are unchanged (a change reaches the user
//! cache within a second, and the next request is signed anew), so a busy user costs one
//! signature per
//! route every few seconds.

use std::hash::BuildHasher;
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use http::HeaderValue;
use serde::Serialize;
use sha2::Digest;

use crate::config::AssertionConfig;
use crate::credentials::one_time::SealKey;
use crate::credentials::token::unix_seconds;
use crate::store::signing_keys::{self, NewKey, StoredKey};
use crate::store::user_cache::{bounded_cache, BoundedCache, UserState};
use crate::store::users::db_error;
use crate::store::StoreError;

/// The header upstreams get.
pub const HEADER: http::HeaderName = http::HeaderName::from_static("x-identity-assertion");

/// How long a key stays published after the last assertion it signed expires: room for
/// clocks that disagree and for verifiers' leeway.
pub const SKEW: u64 = 60;

/// Assertions kept for reuse (one per user, session and route).
const CACHE_CAPACITY: usize = 100_000;

/// One signing key.
struct Key {
    signing: SigningKey,
    public: [u8; 32],
    /// The RFC 7638 thumbprint of the public key.
    kid: String,
    /// The JOSE header, base64url.
    header: String,
    /// When it starts signing (unix seconds).
    activates_at: i64,
}

impl Key {
    fn from_secret(secret: &[u8; 32], activates_at: i64) -> Key {
        let signing = SigningKey::from_bytes(secret);
        let public = signing.verifying_key().to_bytes();
        let kid = thumbprint(&public);
        let header =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{kid}"}}"#));
        Key {
            signing,
            public,
            kid,
            header,
            activates_at,
        }
    }
}

/// A fresh key pair, its private half sealed for the table.
fn generate(seal: &SealKey) -> Result<NewKey, StoreError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| StoreError::Internal(format!("no randomness for a key: {e}")))?;
    let key = Key::from_secret(&secret, 0);
    let sealed = seal.seal_bytes(&secret);
    secret.fill(0);
    Ok(NewKey {
        kid: key.kid,
        public_key: key.public,
        sealed_private_key: sealed.map_err(|e| StoreError::Internal(e.to_string()))?,
    })
}

/// The keys an instance knows: those it can sign with, by activation, and the JWKS.
#[derive(Default)]
struct KeyRing {
    keys: Vec<Arc<Key>>,
    jwks: Bytes,
    /// Changes whenever the keys or their activations do: assertions minted under another
    /// generation are signed again (a key revoked by an operator stops being sent at once).
    generation: u64,
}

impl KeyRing {
    /// The key that signs at `now` (unix seconds): the last one activated.
    fn signing_at(&self, now: i64) -> Option<&Arc<Key>> {
        self.keys.iter().rev().find(|k| k.activates_at <= now)
    }
}

/// RFC 7638: SHA-256 of the JWK's required members, in lexical order, without spaces.
fn thumbprint(public: &[u8; 32]) -> String {
    let x = URL_SAFE_NO_PAD.encode(public);
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: String,
    email: &'a str,
    email_verified: bool,
    roles: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<uuid::Uuid>,
    /// `aal1` or `aal2`: whether the session used a second factor.
    aal: &'static str,
    /// The methods the session used (RFC 8176): `pwd`, and `otp`/`hwk` and `mfa` once `aal2`.
    amr: &'a [String],
}

/// The methods of a session that used its password only.
fn password_only() -> &'static [String] {
    static PWD: std::sync::OnceLock<[String; 1]> = std::sync::OnceLock::new();
    PWD.get_or_init(|| ["pwd".to_string()])
}

/// A signed assertion, and what it says (to tell whether it still says the truth).
struct Minted {
    user_id: String,
    sid: Option<uuid::Uuid>,
    route: usize,
    email: String,
    email_verified: bool,
    /// The roles it names, as `X-User-Roles` sends them.
    roles: HeaderValue,
    /// The session's level it names.
    aal2: bool,
    /// Unix seconds until which it is sent again.
    reuse_until: u64,
    /// The key ring's generation it was signed under.
    generation: u64,
    value: HeaderValue,
}

pub struct Assertions {
    issuer: String,
    lifetime: u64,
    reuse: u64,
    /// `key_rotation_seconds`.
    rotation: i64,
    seal: SealKey,
    ring: ArcSwap<KeyRing>,
    minted: BoundedCache<u64, Arc<Minted>>,
    hasher: foldhash::fast::RandomState,
    /// Woken when `sentinel_signing_keys` changed (the LISTEN connection's notifications).
    pub keys_changed: Arc<tokio::sync::Notify>,
}

impl Assertions {
    /// Signs nothing until [`Assertions::maintain`] has loaded the keys (at start-up, before
    /// the gateway is ready).
    pub fn new(
        config: &AssertionConfig,
        secret: &str,
        keys_changed: Arc<tokio::sync::Notify>,
    ) -> Assertions {
        Assertions {
            issuer: config.issuer.clone(),
            lifetime: config.lifetime_seconds,
            reuse: config.reuse_seconds,
            rotation: i64::try_from(config.key_rotation_seconds).unwrap_or(i64::MAX / 4),
            seal: SealKey::for_signing_keys(secret),
            ring: ArcSwap::from_pointee(KeyRing::default()),
            minted: bounded_cache(CACHE_CAPACITY),
            hasher: foldhash::fast::RandomState::default(),
            keys_changed,
        }
    }

    /// The `X-Identity-Assertion` for `user` (with the token's session `sid`) on route
    /// number `route`, whose audience is `audience`.
    pub fn header(
        &self,
        user: &UserState,
        sid: Option<uuid::Uuid>,
        route: usize,
        audience: &str,
    ) -> Option<HeaderValue> {
        let now = unix_seconds(std::time::SystemTime::now()).max(0) as u64;
        if self.reuse == 0 {
            return self.mint(user, sid, audience, now);
        }
        let slot = self.hasher.hash_one((&user.id, sid, route));
        let generation = self.ring.load().generation;
        if let Some(m) = self.minted.get(&slot) {
            if now < m.reuse_until
                && m.generation == generation
                && m.route == route
                && m.sid == sid
                && m.email_verified == user.email_verified
                && m.user_id == user.id
                && m.email == user.email
                && m.roles == user.roles_header
                && m.aal2 == user.session_aal2(sid.as_ref())
            {
                return Some(m.value.clone());
            }
        }
        let value = self.mint(user, sid, audience, now)?;
        self.minted.insert(
            slot,
            Arc::new(Minted {
                user_id: user.id.clone(),
                sid,
                route,
                email: user.email.clone(),
                email_verified: user.email_verified,
                roles: user.roles_header.clone(),
                aal2: user.session_aal2(sid.as_ref()),
                reuse_until: now + self.reuse,
                generation,
                value: value.clone(),
            }),
        );
        Some(value)
    }

    fn mint(
        &self,
        user: &UserState,
        sid: Option<uuid::Uuid>,
        audience: &str,
        now: u64,
    ) -> Option<HeaderValue> {
        let ring = self.ring.load();
        let key = ring.signing_at(i64::try_from(now).ok()?)?;
        let claims = Claims {
            iss: &self.issuer,
            sub: &user.id,
            aud: audience,
            iat: now,
            exp: now + self.lifetime,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            email: &user.email,
            email_verified: user.email_verified,
            roles: &user.roles,
            sid,
            aal: if user.session_aal2(sid.as_ref()) {
                "aal2"
            } else {
                "aal1"
            },
            amr: user
                .session_methods(sid.as_ref())
                .unwrap_or(password_only()),
        };
        let payload = serde_json::to_vec(&claims).ok()?;
        let mut jwt = String::with_capacity(key.header.len() + payload.len() * 4 / 3 + 92);
        jwt.push_str(&key.header);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut jwt);
        let signature = key.signing.sign(jwt.as_bytes());
        crate::metrics::metrics().assertions_signed.inc();
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut jwt);
        HeaderValue::try_from(jwt).ok()
    }

    /// The JWKS document (`application/json`).
    pub fn jwks(&self) -> Bytes {
        Bytes::clone(&self.ring.load().jwks)
    }

    /// The id of the key signing now.
    pub fn kid(&self) -> Option<String> {
        let now = unix_seconds(std::time::SystemTime::now());
        self.ring.load().signing_at(now).map(|k| k.kid.clone())
    }

    /// When the next key takes over (unix seconds), if one is loaded.
    pub fn next_activation(&self) -> Option<i64> {
        let now = unix_seconds(std::time::SystemTime::now());
        let ring = self.ring.load();
        ring.keys
            .iter()
            .find(|k| k.activates_at > now)
            .map(|k| k.activates_at)
    }

    /// Makes sure there is a current and a next key (adding what is missing, one instance at a
    /// time), and loads them all.
    pub async fn maintain(&self, db: &mut tokio_postgres::Client) -> Result<(), StoreError> {
        let (keys, now) = signing_keys::live(&*db).await?;
        if self.complete(&keys, now) {
            return self.load(&keys);
        }
        let tx = db.transaction().await.map_err(db_error)?;
        signing_keys::lock(&tx).await?;
        // Read again under the lock: another instance may have just added them.
        let (keys, now) = signing_keys::live(&tx).await?;
        if !self.complete(&keys, now) {
            self.add_missing(&tx, &keys, now).await?;
            signing_keys::delete_expired(&tx).await?;
        }
        let (keys, _) = signing_keys::live(&tx).await?;
        tx.commit().await.map_err(db_error)?;
        self.load(&keys)
    }

    /// An operator's rotation (`sentinel-gateway keys rotate`): the next key signs from now
    /// on, everywhere within a moment (`NOTIFY`), and a new next one is made. The old key stays
    /// published until its assertions have expired, or, with `revoke` (it leaked), leaves the
    /// JWKS at once. Returns the old key's id and the new one's.
    pub async fn rotate_now(
        &self,
        db: &mut tokio_postgres::Client,
        revoke: bool,
    ) -> Result<(Option<String>, String), StoreError> {
        let tx = db.transaction().await.map_err(db_error)?;
        signing_keys::lock(&tx).await?;
        let (keys, now) = signing_keys::live(&tx).await?;
        let usable = self.usable(&keys);
        let old = usable
            .iter()
            .rev()
            .find(|k| k.activates_at <= now)
            .map(|k| k.kid.clone());
        let new = match usable.iter().find(|k| k.activates_at > now) {
            Some(next) => {
                signing_keys::activate_now(&tx, &next.kid).await?;
                next.kid.clone()
            }
            None => {
                let key = generate(&self.seal)?;
                let tail = self.tail();
                signing_keys::insert(&tx, &key, now, now + self.rotation + tail).await?;
                key.kid
            }
        };
        if let Some(old) = &old {
            let tail = self.tail();
            signing_keys::expire_in(&tx, old, if revoke { 0 } else { tail }).await?;
        }
        let (keys, now) = signing_keys::live(&tx).await?;
        self.add_missing(&tx, &keys, now).await?;
        let (keys, _) = signing_keys::live(&tx).await?;
        tx.commit().await.map_err(db_error)?;
        self.load(&keys)?;
        Ok((old, new))
    }

    /// Whether `keys` hold a usable current key and a usable next one at `now`.
    fn complete(&self, keys: &[StoredKey], now: i64) -> bool {
        let usable = self.usable(keys);
        let current = usable.iter().any(|k| k.activates_at <= now);
        let next = usable.iter().any(|k| k.activates_at > now);
        current && next
    }

    /// The keys this instance can sign with (sealed under its `auth.secret_key`).
    fn usable<'a>(&self, keys: &'a [StoredKey]) -> Vec<&'a StoredKey> {
        keys.iter()
            .filter(|k| self.seal.open_bytes(&k.sealed_private_key).is_some())
            .collect()
    }

    /// How long a key stays published after it last signs: the lifetime and [`SKEW`].
    fn tail(&self) -> i64 {
        i64::try_from(self.lifetime + SKEW).unwrap_or(i64::MAX / 4)
    }

    async fn add_missing(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        keys: &[StoredKey],
        now: i64,
    ) -> Result<(), StoreError> {
        let tail = self.tail();
        let usable = self.usable(keys);
        let current = match usable.iter().rev().find(|k| k.activates_at <= now) {
            Some(current) => (current.kid.clone(), current.activates_at),
            None => {
                // The first key (or the first since the secret changed): it signs at once.
                let key = generate(&self.seal)?;
                signing_keys::insert(tx, &key, now, now + self.rotation + tail).await?;
                tracing::info!(kid = %key.kid, "identity assertion key created");
                (key.kid, now)
            }
        };
        if !usable.iter().any(|k| k.activates_at > now) {
            // A whole rotation period ahead of its use (later, after a long stop).
            let mut at = current.1 + self.rotation;
            if at <= now {
                at = now + self.rotation;
            }
            let key = generate(&self.seal)?;
            signing_keys::insert(tx, &key, at, at + self.rotation + tail).await?;
            signing_keys::extend(tx, &current.0, at + tail).await?;
            tracing::info!(kid = %key.kid, activates_in_seconds = at - now,
                "next identity assertion key published");
        }
        Ok(())
    }

    /// Serves `keys` (every one in the JWKS; those it can open for signing).
    fn load(&self, keys: &[StoredKey]) -> Result<(), StoreError> {
        let mut ring = Vec::with_capacity(keys.len());
        for stored in keys {
            // A key sealed under another auth.secret_key is published, never used here.
            if let Some(mut secret) = self.seal.open_bytes(&stored.sealed_private_key) {
                let key = Key::from_secret(&secret, stored.activates_at);
                secret.fill(0);
                if key.public == stored.public_key {
                    ring.push(Arc::new(key));
                }
            }
        }
        let jwks: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": URL_SAFE_NO_PAD.encode(k.public_key),
                    "kid": k.kid,
                    "alg": "EdDSA",
                    "use": "sig",
                })
            })
            .collect();
        let jwks = Bytes::from(serde_json::json!({ "keys": jwks }).to_string());
        let previous = self.ring.load();
        let same = previous.keys.len() == ring.len()
            && previous
                .keys
                .iter()
                .zip(&ring)
                .all(|(a, b)| a.kid == b.kid && a.activates_at == b.activates_at);
        let generation = previous.generation + u64::from(!same);
        crate::metrics::metrics()
            .assertion_keys
            .set(i64::try_from(keys.len()).unwrap_or(i64::MAX));
        self.ring.store(Arc::new(KeyRing {
            keys: ring,
            jwks,
            generation,
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};

    fn user(email: &str, verified: bool) -> UserState {
        UserState {
            id: "2f0e5c5e-0000-4000-8000-000000000001".into(),
            email: email.into(),
            active: true,
            email_verified: verified,
            tokens_valid_after: None,
            sessions: Box::new([]),
            read_at: 0,
            id_header: HeaderValue::from_static("2f0e5c5e-0000-4000-8000-000000000001"),
            email_header: HeaderValue::from_str(email).unwrap(),
            full_name: None,
            created_at: chrono::NaiveDateTime::default(),
            roles: Box::new([]),
            roles_header: HeaderValue::from_static(""),
            aal2_sessions: Box::new([]),
            has_factor: false,
        }
    }

    fn stored(seal: &SealKey, activates_at: i64) -> StoredKey {
        let key = generate(seal).unwrap();
        StoredKey {
            kid: key.kid,
            public_key: key.public_key,
            sealed_private_key: key.sealed_private_key,
            activates_at,
            expires_at: i64::MAX,
        }
    }

    /// Assertions with one key, active since 1970.
    fn assertions(reuse: u64) -> Assertions {
        let a = Assertions::new(
            &AssertionConfig {
                reuse_seconds: reuse,
                ..AssertionConfig::default()
            },
            "a unit test's secret key, long enough",
            Arc::default(),
        );
        a.load(&[stored(&a.seal, 0)]).unwrap();
        a
    }

    /// The JWKS's key for `kid`, as a verifier would take it.
    fn decoding_key(a: &Assertions, kid: &str) -> DecodingKey {
        let jwks: serde_json::Value = serde_json::from_slice(&a.jwks()).unwrap();
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .expect("the signing key is in the JWKS");
        DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn assertions_verify_against_the_jwks_with_an_independent_jwt_library() {
        let a = assertions(5);
        let sid = uuid::Uuid::new_v4();
        let value = a
            .header(&user("ada@example.com", true), Some(sid), 0, "/api/")
            .unwrap();
        let jwt = value.to_str().unwrap();
        let header = decode_header(jwt).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        let kid = header.kid.unwrap();
        assert_eq!(Some(kid.clone()), a.kid());
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["/api/"]);
        validation.set_issuer(&["sentinel-gateway"]);
        validation.set_required_spec_claims(&["exp", "iat", "aud", "iss", "sub"]);
        let claims = decode::<serde_json::Value>(jwt, &decoding_key(&a, &kid), &validation)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "2f0e5c5e-0000-4000-8000-000000000001");
        assert_eq!(claims["email"], "ada@example.com");
        assert_eq!(claims["email_verified"], true);
        assert_eq!(claims["sid"], sid.to_string());
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            60
        );
        assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
        // Another audience is refused.
        validation.set_audience(&["/other/"]);
        assert!(decode::<serde_json::Value>(jwt, &decoding_key(&a, &kid), &validation).is_err());
    }

    #[test]
    fn an_assertion_is_reused_only_while_it_says_the_same() {
        let a = assertions(5);
        let ada = user("ada@example.com", false);
        let first = a.header(&ada, None, 0, "/api/").unwrap();
        assert_eq!(a.header(&ada, None, 0, "/api/").unwrap(), first);
        // Another route, another session, a verified address or a new email: signed anew.
        assert_ne!(a.header(&ada, None, 1, "/b/").unwrap(), first);
        assert_ne!(
            a.header(&ada, Some(uuid::Uuid::new_v4()), 0, "/api/")
                .unwrap(),
            first
        );
        assert_ne!(
            a.header(&user("ada@example.com", true), None, 0, "/api/")
                .unwrap(),
            first
        );
        assert_ne!(
            a.header(&user("ada2@example.com", false), None, 0, "/api/")
                .unwrap(),
            first
        );
        // A role granted: signed anew, and it says so.
        let mut admin = user("ada@example.com", false);
        admin.roles = vec!["admin".to_string()].into_boxed_slice();
        admin.roles_header = HeaderValue::from_static("admin");
        let signed = a.header(&admin, None, 0, "/api/").unwrap();
        assert_ne!(signed, first);
        let payload = signed.to_str().unwrap().split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["roles"], serde_json::json!(["admin"]));
        assert_eq!(claims["aal"], "aal1");
        assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
        // The session raised to aal2: signed anew, with the methods it used.
        let sid = uuid::Uuid::new_v4();
        let before = a.header(&admin, Some(sid), 0, "/api/").unwrap();
        let mut raised = admin.clone();
        raised.aal2_sessions = vec![(
            sid,
            vec!["mfa".to_string(), "otp".to_string(), "pwd".to_string()].into_boxed_slice(),
        )]
        .into_boxed_slice();
        let signed = a.header(&raised, Some(sid), 0, "/api/").unwrap();
        assert_ne!(signed, before);
        let payload = signed.to_str().unwrap().split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["aal"], "aal2");
        assert_eq!(claims["amr"], serde_json::json!(["mfa", "otp", "pwd"]));
        // Without reuse every request gets its own.
        let b = assertions(0);
        assert_ne!(
            b.header(&ada, None, 0, "/api/").unwrap(),
            b.header(&ada, None, 0, "/api/").unwrap()
        );
    }

    #[test]
    fn the_last_activated_key_signs_and_keys_sealed_under_another_secret_are_only_published() {
        let a = assertions(0);
        let now = unix_seconds(std::time::SystemTime::now());
        let old = stored(&a.seal, now - 100);
        let current = stored(&a.seal, now - 10);
        let next = stored(&a.seal, now + 100);
        let foreign = stored(
            &SealKey::for_signing_keys("another secret altogether"),
            now - 5,
        );
        a.load(&[old.clone(), current.clone(), foreign.clone(), next.clone()])
            .unwrap();
        assert_eq!(a.kid(), Some(current.kid.clone()));
        assert_eq!(a.next_activation(), Some(now + 100));
        let jwks: serde_json::Value = serde_json::from_slice(&a.jwks()).unwrap();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, [&old.kid, &current.kid, &foreign.kid, &next.kid]);
        let jwt = a
            .header(&user("ada@example.com", true), None, 0, "/api/")
            .unwrap();
        assert_eq!(
            decode_header(jwt.to_str().unwrap()).unwrap().kid,
            Some(current.kid)
        );
        // With no key loaded, nothing is signed.
        let empty = Assertions::new(&AssertionConfig::default(), "s", Arc::default());
        assert!(empty
            .header(&user("ada@example.com", true), None, 0, "/api/")
            .is_none());
    }

    #[test]
    fn key_ids_are_rfc_7638_thumbprints() {
        // RFC 8037, appendix A.3: the thumbprint of its example Ed25519 public key.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let public: [u8; 32] = x.try_into().unwrap();
        assert_eq!(
            thumbprint(&public),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
