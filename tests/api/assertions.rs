//! `X-Identity-Assertion`: upstreams written in Python verify it with PyJWT against the
//! gateway's `/.well-known/jwks.json` — across instances and across a key rotation — and a
//! forged assertion, or one replayed to another route's upstream, fails.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::Signer;
use serde_json::{json, Value};

use crate::helpers::*;

const PASSWORD: &str = "AssertedPassword1!";

/// `tests/support/assertion_upstream.py` on a free port; killed on drop.
struct PyUpstream {
    port: u16,
    child: std::process::Child,
}

impl PyUpstream {
    async fn start(jwks_url: &str, audience: &str) -> PyUpstream {
        let port = free_port();
        let child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/assertion_upstream.py"
            ))
            .args([&port.to_string(), jwks_url, audience, "sentinel-gateway"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 (with PyJWT: tests/support/requirements.txt)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the assertion upstream did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        PyUpstream { port, child }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends `assertion` straight to the upstream, past the gateway (a replay).
    async fn direct(&self, assertion: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .get(format!("http://{}/direct", self.addr()))
            .header("x-identity-assertion", assertion)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

impl Drop for PyUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn routes(api: &PyUpstream, other: &PyUpstream) -> String {
    format!(
        "[[routes]]\nprefix = \"/api/\"\nname = \"api\"\nupstreams = [\"{}\"]\n\n\
         [[routes]]\nprefix = \"/other/\"\nupstreams = [\"{}\"]\n\n\
         [[routes]]\nprefix = \"/open/\"\nupstreams = [\"{}\"]\nauth = \"public\"\n\n",
        api.addr(),
        other.addr(),
        api.addr()
    )
}

async fn get(app: &TestApp, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Answer {
    let mut request = app.client.get(app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    Answer::of(request.send().await.unwrap()).await
}

/// The ids of the keys `app` publishes, in its JWKS's order.
async fn published_kids(app: &TestApp) -> Vec<String> {
    let keys = app.get("/.well-known/jwks.json").await.json();
    keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

/// Registers `email` through `app`: the access token.
async fn access_token(app: &TestApp, email: &str) -> String {
    let r = app.register(email, PASSWORD).await;
    r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

fn segments(jwt: &str) -> (Value, Value) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let decode =
        |s: &str| -> Value { serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap() };
    (decode(parts[0]), decode(parts[1]))
}

/// A JWT over `header` and `claims`, signed with a key of its own.
fn forge(header: &Value, claims: &Value) -> String {
    let mut secret = [7u8; 32];
    secret[0] = 42;
    let key = ed25519_dalek::SigningKey::from_bytes(&secret);
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}

#[tokio::test]
async fn a_python_upstream_verifies_assertions_and_refuses_forged_or_replayed_ones() {
    let port = free_port();
    let jwks = format!("http://127.0.0.1:{port}/.well-known/jwks.json");
    let api = PyUpstream::start(&jwks, "api").await;
    let other = PyUpstream::start(&jwks, "/other/").await;
    let admin = free_port();
    let app = TestApp::spawn_with(Spawn {
        port: Some(port),
        config_extra: format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n{}",
            routes(&api, &other)
        ),
        ..Spawn::default()
    })
    .await;
    let metric = |name: &'static str| async move {
        let text = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} not in:\n{text}"))
    };

    // The JWKS: the current Ed25519 key and the next, cacheable for a minute.
    let keys = app.get("/.well-known/jwks.json").await;
    assert_eq!(keys.status, 200);
    assert_eq!(keys.header("cache-control"), Some("public, max-age=60"));
    let keys = keys.json();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2, "{keys}");
    assert_eq!(keys["keys"][0]["kty"], "OKP");
    assert_eq!(keys["keys"][0]["crv"], "Ed25519");
    assert_eq!(keys["keys"][0]["alg"], "EdDSA");

    let r = app.register("asserted@example.com", PASSWORD).await;
    let body: Value = r.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap().to_string();
    let user_id = body["user"]["id"].as_str().unwrap().to_string();

    // Through the gateway: verified, with the claims the issue lists.
    let a = get(&app, "/api/hello", Some(&token), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let seen = a.json();
    let claims = &seen["claims"];
    assert_eq!(claims["sub"], user_id.as_str());
    assert_eq!(seen["user_id"], user_id.as_str());
    assert_eq!(claims["email"], "asserted@example.com");
    assert_eq!(claims["email_verified"], false);
    assert_eq!(claims["aud"], "api");
    assert_eq!(claims["iss"], "sentinel-gateway");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        60
    );
    assert!(
        claims["sid"].as_str().is_some_and(|s| s.len() == 36),
        "{claims}"
    );
    assert_eq!(seen["kid"], keys["keys"][0]["kid"]);
    let assertion = seen["assertion"].as_str().unwrap().to_string();
    // Signed once, then reused for the same user, session and route.
    assert_eq!(
        metric("sentinel_identity_assertions_signed_total").await,
        1.0
    );
    assert_eq!(metric("sentinel_identity_assertion_keys").await, 2.0);
    for _ in 0..5 {
        let a = get(&app, "/api/again", Some(&token), &[]).await;
        assert_eq!(a.json()["assertion"], assertion.as_str());
    }
    assert_eq!(
        metric("sentinel_identity_assertions_signed_total").await,
        1.0
    );
    // A route without a name has its prefix as the audience.
    let a = get(&app, "/other/x", Some(&token), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["claims"]["aud"], "/other/");

    // Replayed to another route's upstream: the audience does not match.
    let (status, refused) = other.direct(&assertion).await;
    assert_eq!(status, 401);
    assert_eq!(refused["error"], "InvalidAudienceError", "{refused}");
    // The same assertion straight to its own upstream still verifies (until it expires).
    assert_eq!(api.direct(&assertion).await.0, 200);

    // Forged: claims changed under the gateway's signature; a key of one's own under the
    // gateway's kid; no signature at all.
    let (header, claims) = segments(&assertion);
    let parts: Vec<&str> = assertion.split('.').collect();
    let mut admin = claims.clone();
    admin["sub"] = json!("someone-else");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(admin.to_string()),
        parts[2]
    );
    let (status, refused) = api.direct(&tampered).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (401, Some("InvalidSignatureError"))
    );
    let (status, refused) = api.direct(&forge(&header, &admin)).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (401, Some("InvalidSignatureError"))
    );
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": header["kid"]}).to_string()),
        parts[1]
    );
    assert_eq!(api.direct(&none).await.0, 401);

    // A client cannot bring its own: the gateway drops it (public route, no token: none sent;
    // with a token: only the gateway's).
    let a = get(
        &app,
        "/open/x",
        None,
        &[("x-identity-assertion", &assertion)],
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.json()["message"], "no X-Identity-Assertion");
    let forged = forge(&header, &admin);
    let a = get(
        &app,
        "/api/x",
        Some(&token),
        &[("X_Identity_Assertion", &forged)],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["claims"]["sub"], user_id.as_str());
    // With a token on a public route, the user's assertion is sent.
    // (Bound to that route: this upstream, which serves "api", refuses it.)
    let a = get(&app, "/open/x", Some(&token), &[]).await;
    assert_eq!(a.json()["error"], "InvalidAudienceError", "{}", a.text);
}

#[tokio::test]
async fn assertions_from_any_instance_verify_across_a_key_rotation() {
    // Instance A serves the JWKS the upstream uses; instance B signs what it receives.
    let port_a = free_port();
    let jwks = format!("http://127.0.0.1:{port_a}/.well-known/jwks.json");
    let api = PyUpstream::start(&jwks, "api").await;
    let other = PyUpstream::start(&jwks, "/other/").await;
    let spec = |port: u16| {
        Spawn {
        port: Some(port),
        config_extra: format!(
            "[identity_assertion]\nkey_rotation_seconds = 4\nlifetime_seconds = 20\nreuse_seconds = 1\n\n{}",
            routes(&api, &other)
        ),
        env: vec![("SENTINEL_LOG_LEVEL".into(), "info".into())],
        ..Spawn::default()
    }
    };
    let a = TestApp::start_on(TestDb::create().await, spec(port_a)).await;
    let b = TestApp::start_on(a.db.share(), spec(free_port())).await;
    let token = access_token(&b, "rotated@example.com").await;

    let through_b = || async {
        let answer = get(&b, "/api/r", Some(&token), &[]).await;
        assert_eq!(
            answer.status,
            200,
            "{}\nB:\n{}\nA:\n{}\nA's JWKS: {}",
            answer.text,
            b.logs(),
            a.logs(),
            a.get("/.well-known/jwks.json").await.text
        );
        let seen = answer.json();
        (
            seen["kid"].as_str().unwrap().to_string(),
            seen["assertion"].as_str().unwrap().to_string(),
        )
    };
    // One key signs on every instance, and the next is already published.
    let (first_kid, first) = through_b().await;
    let answer = get(&a, "/api/a", Some(&token), &[]).await;
    assert_eq!(answer.json()["kid"], first_kid.as_str(), "{}", answer.text);
    let published = published_kids(&a).await;
    assert_eq!(published.len(), 2, "{published:?}");
    assert_eq!(published[0], first_kid);
    let next_kid = published[1].clone();

    // The rotation: the key published ahead signs, on both instances, and the upstream —
    // which fetched the JWKS once, before — verifies it, and still the old assertion.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (kid, _) = through_b().await;
        if kid != first_kid {
            assert_eq!(kid, next_kid);
            break;
        }
        assert!(Instant::now() < deadline, "no rotation\n{}", b.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answer = get(&a, "/api/a", Some(&token), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json()["kid"], next_kid.as_str());
    let (status, seen) = api.direct(&first).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["kid"], first_kid.as_str());

    // The retired key is published until its last assertions have expired: lifetime (20 s)
    // plus 60 s from its retirement; the current one until a period after its own; and the
    // one after it already.
    // (The key after is made within a second or two of the rotation.)
    let db = a.db.client().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let table: Vec<(String, f64, f64)> = loop {
        let rows = db
            .query(
                "SELECT kid, extract(epoch FROM expires_at - now())::float8, \
                        extract(epoch FROM activates_at - now())::float8 \
                 FROM sentinel_signing_keys ORDER BY activates_at",
                &[],
            )
            .await
            .unwrap();
        let table: Vec<_> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        if table.len() >= 3 || Instant::now() > deadline {
            break table;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(table.len() >= 3, "{table:?}");
    let row = |kid: &str| table.iter().find(|r| r.0 == kid).unwrap().clone();
    let (_, left, _) = row(&first_kid);
    assert!((70.0..=81.0).contains(&left), "{table:?}");
    let (_, left, _) = row(&next_kid);
    assert!((74.0..=85.0).contains(&left), "{table:?}");
    let upcoming = table.iter().find(|r| r.2 > 0.0).expect("a next key");
    // Made by whichever instance got there first; the other hears of it (NOTIFY) at once.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !published_kids(&a).await.contains(&upcoming.0) {
        assert!(Instant::now() < deadline, "{} not published", upcoming.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn without_assertions_nothing_is_signed_and_the_jwks_path_is_not_the_gateways() {
    let upstream = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!(
            "[identity_assertion]\nenabled = false\n\n\
             [[routes]]\nprefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"public\"\n",
            upstream.addr()
        ),
        ..Spawn::default()
    })
    .await;
    // The path goes to the route like any other.
    let a = app.get("/.well-known/jwks.json").await;
    assert_eq!(a.status, 200);
    assert!(!a.text.contains("Ed25519"), "{}", a.text);
}

/// `sentinel-gateway --config <app's config> keys ARGS`: its standard output (it must succeed).
fn keys(app: &TestApp, args: &[&str]) -> String {
    let out = Command::new(binary())
        .env_clear()
        .arg("--config")
        .arg(app.dir.0.join("gateway.toml"))
        .arg("keys")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keys {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn an_operator_rotates_keys_at_once_and_revokes_a_leaked_one() {
    let port = free_port();
    let jwks = format!("http://127.0.0.1:{port}/.well-known/jwks.json");
    let api = PyUpstream::start(&jwks, "api").await;
    let other = PyUpstream::start(&jwks, "/other/").await;
    let app = TestApp::spawn_with(Spawn {
        port: Some(port),
        config_extra: routes(&api, &other),
        ..Spawn::default()
    })
    .await;
    let token = access_token(&app, "operator@example.com").await;
    // What the gateway sent the upstream, verified there or not: the upstream's JWKS cache
    // decides that (PyJWT refetches for an unknown kid at most every 30 s), so verification
    // is checked below against chosen upstreams.
    let signed = || async {
        let a = get(&app, "/api/k", Some(&token), &[]).await;
        let assertion = a.json()["assertion"]
            .as_str()
            .unwrap_or_else(|| panic!("{}\n{}", a.text, app.logs()))
            .to_string();
        let (header, _) = segments(&assertion);
        (header["kid"].as_str().unwrap().to_string(), assertion)
    };
    let until_signed_by = |kid: String| {
        let signed = &signed;
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let (now, assertion) = signed().await;
                if now == kid {
                    return assertion;
                }
                assert!(Instant::now() < deadline, "{kid} never signed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (k1, first) = signed().await;
    let before = published_kids(&app).await;
    assert_eq!(before.len(), 2);
    let k2 = before[1].clone();

    // Rotate: the published next key signs within a moment (no 5 s of reuse), the old one
    // stays published and its assertion still verifies.
    let said = keys(&app, &["rotate"]);
    assert!(
        said.starts_with(&format!("{k2} signs now; {k1} stays published")),
        "{said}"
    );
    let second = until_signed_by(k2.clone()).await;
    assert_eq!(api.direct(&first).await.0, 200);
    assert_eq!(api.direct(&second).await.0, 200);
    let after = published_kids(&app).await;
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.contains(&k1) && after.contains(&k2));
    let k3 = after
        .iter()
        .find(|k| **k != k1 && **k != k2)
        .unwrap()
        .clone();

    // Revoke: the next key signs, and the revoked one leaves the JWKS at once; a verifier
    // that fetches the JWKS from now on refuses what it signed.
    let said = keys(&app, &["rotate", "--revoke"]);
    assert!(
        said.contains(&format!("{k3} signs now; {k2} revoked")),
        "{said}"
    );
    let third = until_signed_by(k3.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while published_kids(&app).await.contains(&k2) {
        assert!(Instant::now() < deadline, "{k2} still published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = PyUpstream::start(&jwks, "api").await;
    let (status, refused) = fresh.direct(&second).await;
    assert_eq!(status, 401, "{refused}");
    assert_eq!(refused["error"], "PyJWKClientError", "{refused}");
    assert_eq!(fresh.direct(&third).await.0, 200);
    assert_eq!(fresh.direct(&first).await.0, 200);

    let list = keys(&app, &["list"]);
    let state = |kid: &str| {
        list.lines()
            .find(|l| l.starts_with(kid))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("{kid} not listed:\n{list}"))
            .to_string()
    };
    assert_eq!(state(&k1), "retired");
    assert_eq!(state(&k2), "gone");
    assert_eq!(state(&k3), "current");
    assert!(list.lines().any(|l| l.contains(" next ")), "{list}");
}
