//! Passkeys made and used by Chromium's own WebAuthn (a virtual authenticator over the DevTools
//! protocol, `cdp.rs`), on a page at the relying party's origin: registered as a second factor
//! (discoverable, user-verified), used to raise an `aal1` session, and to sign in without a
//! password into an `aal2` session. The browser's answers are then replayed and altered —
//! another origin, another challenge, another user's passkey, truncated, 1 MB — and each is a
//! 4xx that raises and starts nothing.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::cdp::Browser;
use crate::helpers::*;

const PASSWORD: &str = "PasskeyPassword1!";

/// A gateway whose relying party is `localhost`, for pages at `origin`, with `extra` tables.
async fn gateway(origin: &str, extra: &str) -> TestApp {
    TestApp::spawn_with(Spawn {
        config_extra: format!(
            "[webauthn]\nrp_id = \"localhost\"\nrp_name = \"Passkey test\"\norigins = [\"{origin}\"]\n\n{extra}"
        ),
        ..Spawn::default()
    })
    .await
}

/// A blank page at `http://localhost:{port}` (WebAuthn needs a secure context: localhost is
/// one) open in Chromium with a virtual authenticator.
struct Site {
    browser: Browser,
    authenticator: String,
    origin: String,
    _served: StaticSite,
    _dirs: (TempDir, TempDir),
}

async fn site() -> Site {
    let dir = TempDir::new();
    std::fs::write(
        dir.0.join("index.html"),
        "<!doctype html><title>passkeys</title>",
    )
    .unwrap();
    let port = free_port();
    let served = StaticSite::serve(&dir.0, port);
    let origin = format!("http://localhost:{port}");
    wait_for_status(
        &format!("http://127.0.0.1:{port}/index.html"),
        200,
        std::time::Duration::from_secs(10),
        "the page server did not start",
    )
    .await;
    let profile = TempDir::new();
    let browser = Browser::launch(&profile.0);
    let mut site = Site {
        browser,
        authenticator: String::new(),
        origin,
        _served: served,
        _dirs: (dir, profile),
    };
    site.open();
    site
}

impl Site {
    /// (Again) the page, in the browser's tab, with a new authenticator.
    fn open(&mut self) {
        self.browser.goto(&format!("{}/index.html", self.origin));
        self.authenticator = self.browser.add_authenticator();
    }
}

async fn post(app: &TestApp, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
    let mut req = app.client.post(app.url(path));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    Answer::of(req.send().await.unwrap()).await
}

async fn login(app: &TestApp, email: &str) -> String {
    let r = app.login(email, PASSWORD).await;
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn aal(app: &TestApp, token: &str) -> Value {
    let answer = app.get_as("/auth/mfa", token).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.json()["aal"].clone()
}

/// `navigator.credentials.create()` with the gateway's options, read by the browser's own
/// JSON parser; the credential as its `toJSON()` writes it.
fn create(browser: &mut Browser, options: &Value) -> Result<Value, String> {
    browser.run(&format!(
        "const o = PublicKeyCredential.parseCreationOptionsFromJSON({});
         const c = await navigator.credentials.create({{publicKey: o}});
         return c.toJSON();",
        options["publicKey"]
    ))
}

/// `navigator.credentials.get()` likewise.
fn get(browser: &mut Browser, options: &Value) -> Result<Value, String> {
    browser.run(&format!(
        "const o = PublicKeyCredential.parseRequestOptionsFromJSON({});
         const c = await navigator.credentials.get({{publicKey: o}});
         return c.toJSON();",
        options["publicKey"]
    ))
}

/// Registers a passkey in `browser` for the user of `token`: the answer of `register/finish`.
async fn register_passkey(app: &TestApp, browser: &mut Browser, token: &str, name: &str) -> Answer {
    let start = post(
        app,
        "/auth/mfa/webauthn/register/start",
        Some(token),
        Some(json!({ "name": name })),
    )
    .await;
    assert_eq!(start.status, 200, "{}", start.text);
    assert_eq!(start.header("cache-control"), Some("no-store"));
    let credential =
        create(browser, &start.json()["options"]).expect("the browser creates a passkey");
    post(
        app,
        "/auth/mfa/webauthn/register/finish",
        Some(token),
        Some(json!({ "credential": credential })),
    )
    .await
}

/// A verification answer from the browser for a fresh `verify/start` of `token`'s session.
async fn verification_answer(app: &TestApp, browser: &mut Browser, token: &str) -> Value {
    let start = post(app, "/auth/mfa/webauthn/verify/start", Some(token), None).await;
    assert_eq!(start.status, 200, "{}", start.text);
    get(browser, &start.json()["options"]).expect("the browser signs")
}

/// A passwordless answer from the browser for a fresh `/auth/passkey/start`.
async fn passwordless_answer(app: &TestApp, browser: &mut Browser) -> Value {
    let start = post(app, "/auth/passkey/start", None, Some(json!({}))).await;
    assert_eq!(start.status, 200, "{}", start.text);
    get(browser, &start.json()["options"]).expect("the browser signs")
}

fn rejected(answer: &Answer) {
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert_eq!(answer.json(), json!({"detail": "Passkey not accepted"}));
}

async fn live_sessions(app: &TestApp) -> i64 {
    app.db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM sentinel_sessions WHERE revoked_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_passkey_made_by_chromium_is_a_second_factor_and_signs_in_without_a_password() {
    let Site {
        mut browser,
        authenticator,
        origin,
        _served,
        _dirs,
    } = site().await;
    let app = gateway(&origin, "").await;
    let (token, user_id) = app.registered("pat@example.com", PASSWORD).await;

    // Registration: a discoverable credential in the authenticator, the session raised, the
    // first factor's recovery codes.
    let finished = register_passkey(&app, &mut browser, &token, "Laptop").await;
    assert_eq!(finished.status, 201, "{}", finished.text);
    let body = finished.json();
    assert_eq!(body["recovery_codes"].as_array().map(Vec::len), Some(10));
    let factor_id = body["factor_id"].as_str().unwrap().to_string();
    let held = browser.credentials(&authenticator);
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["isResidentCredential"], true, "{held:?}");
    assert_eq!(held[0]["rpId"], "localhost");
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(
                held[0]["userHandle"]
                    .as_str()
                    .unwrap()
                    .trim_end_matches('=')
            )
            .or_else(|_| base64::engine::general_purpose::STANDARD
                .decode(held[0]["userHandle"].as_str().unwrap()))
            .unwrap(),
        uuid::Uuid::parse_str(&user_id).unwrap().as_bytes()
    );
    assert_eq!(aal(&app, &token).await, "aal2");
    let status = app.get_as("/auth/mfa", &token).await.json();
    assert_eq!(status["factors"][0]["type"], "webauthn");
    assert_eq!(status["factors"][0]["name"], "Laptop");
    assert_eq!(status["factors"][0]["id"], factor_id.as_str());
    assert_eq!(status["recovery_codes_remaining"], 10);

    // A second passkey on the same authenticator is excluded by the browser itself.
    let start = post(
        &app,
        "/auth/mfa/webauthn/register/start",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(start.status, 200);
    let excluded = start.json()["options"]["publicKey"]["excludeCredentials"].clone();
    assert_eq!(excluded.as_array().map(Vec::len), Some(1), "{excluded}");
    let again = create(&mut browser, &start.json()["options"]);
    assert!(again.is_err_and(|e| e.contains("InvalidStateError")));

    // A password alone is aal1 now: the user's passkey is asked for.
    let password_only = login(&app, "pat@example.com").await;
    assert_eq!(aal(&app, &password_only).await, "aal1");
    let sessions = app.get_as("/auth/sessions", &password_only).await;
    assert_eq!(sessions.status, 403);
    assert_eq!(sessions.json(), json!({"detail": "MFA required"}));
    let answer = verification_answer(&app, &mut browser, &password_only).await;
    let raised = post(
        &app,
        "/auth/mfa/webauthn/verify/finish",
        Some(&password_only),
        Some(json!({ "credential": answer })),
    )
    .await;
    assert_eq!(raised.status, 200, "{}", raised.text);
    assert_eq!(raised.json(), json!({"aal": "aal2"}));
    assert_eq!(
        app.get_as("/auth/sessions", &password_only).await.status,
        200
    );
    // Once.
    let replayed = post(
        &app,
        "/auth/mfa/webauthn/verify/finish",
        Some(&password_only),
        Some(json!({ "credential": answer })),
    )
    .await;
    rejected(&replayed);

    // Passwordless: no user name anywhere, an aal2 session whose methods are the key's.
    let start = post(&app, "/auth/passkey/start", None, None).await;
    assert_eq!(start.status, 200, "{}", start.text);
    let options = start.json()["options"].clone();
    assert!(options["publicKey"]["allowCredentials"]
        .as_array()
        .is_none_or(|a| a.is_empty()));
    assert_eq!(options["publicKey"]["userVerification"], "required");
    let answer = get(&mut browser, &options).expect("the browser signs");
    let before = live_sessions(&app).await;
    let signed_in = post(
        &app,
        "/auth/passkey/finish",
        None,
        Some(json!({ "credential": answer })),
    )
    .await;
    assert_eq!(signed_in.status, 200, "{}", signed_in.text);
    assert_token_shape(&signed_in.json());
    assert_eq!(signed_in.json()["user"]["email"], "pat@example.com");
    let passkey_token = signed_in.json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(aal(&app, &passkey_token).await, "aal2");
    assert_eq!(
        app.get_as("/auth/sessions", &passkey_token).await.status,
        200
    );
    assert_eq!(live_sessions(&app).await, before + 1);
    let db = app.db.client().await;
    let amr: Vec<String> = db
        .query_one(
            "SELECT amr FROM sentinel_sessions ORDER BY created_at DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(amr, ["hwk", "mfa"]);
    // The same answer again starts nothing.
    let replayed = post(
        &app,
        "/auth/passkey/finish",
        None,
        Some(json!({ "credential": answer })),
    )
    .await;
    rejected(&replayed);
    assert_eq!(live_sessions(&app).await, before + 1);

    // The counter the authenticator keeps was recorded, and the factor's last use.
    let row = db
        .query_one(
            "SELECT last_used_at IS NOT NULL, credential IS NOT NULL FROM sentinel_mfa_factors \
             WHERE id = $1::text::uuid",
            &[&factor_id],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0) && row.get::<_, bool>(1));
    let events: Vec<(String, Value)> = db
        .query(
            "SELECT type, detail FROM sentinel_audit_events WHERE user_id = $1 ORDER BY id",
            &[&user_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(events
        .iter()
        .any(|(t, d)| t == "mfa.enrolled" && d["type"] == "webauthn"));
    assert!(events
        .iter()
        .any(|(t, d)| t == "mfa.verified" && d["method"] == "webauthn"));
    assert!(events
        .iter()
        .any(|(t, d)| t == "login.succeeded" && d["method"] == "passkey"));
}

/// The client data of an answer, decoded.
fn client_data(answer: &Value) -> Value {
    let raw = URL_SAFE_NO_PAD
        .decode(answer["response"]["clientDataJSON"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

/// `answer` with its client data replaced.
fn with_client_data(answer: &Value, data: &Value) -> Value {
    let mut altered = answer.clone();
    altered["response"]["clientDataJSON"] =
        json!(URL_SAFE_NO_PAD.encode(serde_json::to_vec(data).unwrap()));
    altered
}

#[tokio::test]
async fn altered_replayed_and_foreign_passkey_answers_raise_and_start_nothing() {
    let Site {
        mut browser,
        authenticator,
        origin,
        _served,
        _dirs,
    } = site().await;
    // Enough attempts for every altered answer below (the limit is tested with codes).
    let app = gateway(&origin, "[mfa]\nattempts_per_5_minutes = 100\n").await;
    let (token, _) = app.registered("owner@example.com", PASSWORD).await;
    let registered = register_passkey(&app, &mut browser, &token, "").await;
    assert_eq!(registered.status, 201, "{}", registered.text);
    let aal1 = login(&app, "owner@example.com").await;
    let finish = |credential: Value| {
        let app = &app;
        let aal1 = aal1.clone();
        async move {
            post(
                app,
                "/auth/mfa/webauthn/verify/finish",
                Some(&aal1),
                Some(json!({ "credential": credential })),
            )
            .await
        }
    };

    // Another origin in the signed client data (the signature no longer matches either).
    let answer = verification_answer(&app, &mut browser, &aal1).await;
    let mut data = client_data(&answer);
    data["origin"] = json!("https://evil.example");
    rejected(&finish(with_client_data(&answer, &data)).await);

    // An answer to an earlier challenge of this session (a later start replaced it).
    let earlier = verification_answer(&app, &mut browser, &aal1).await;
    let later = verification_answer(&app, &mut browser, &aal1).await;
    rejected(&finish(earlier.clone()).await);
    // ... and one whose client data names another challenge than the one it signed.
    let mut data = client_data(&earlier);
    data["challenge"] = client_data(&later)["challenge"].clone();
    rejected(&finish(with_client_data(&earlier, &data)).await);

    // A passwordless answer is not a second-factor one.
    let passwordless = passwordless_answer(&app, &mut browser).await;
    rejected(&finish(passwordless).await);

    // Truncated: the signature cut in half; the client data cut short; fields missing.
    let answer = verification_answer(&app, &mut browser, &aal1).await;
    let mut cut = answer.clone();
    let signature = answer["response"]["signature"].as_str().unwrap();
    cut["response"]["signature"] = json!(&signature[..signature.len() / 2]);
    rejected(&finish(cut).await);
    let answer = verification_answer(&app, &mut browser, &aal1).await;
    let mut cut = answer.clone();
    let data = answer["response"]["clientDataJSON"].as_str().unwrap();
    cut["response"]["clientDataJSON"] = json!(&data[..data.len() / 2]);
    rejected(&finish(cut).await);
    rejected(&finish(json!({"id": "x", "type": "public-key"})).await);
    rejected(&finish(json!({})).await);
    for body in [
        json!({}),
        json!({"credential": "x"}),
        json!({"credential": null}),
    ] {
        let answer = post(
            &app,
            "/auth/mfa/webauthn/verify/finish",
            Some(&aal1),
            Some(body),
        )
        .await;
        assert_eq!(answer.status, 422, "{}", answer.text);
    }
    // The request cut short: not JSON.
    let text = serde_json::to_string(&json!({ "credential": answer })).unwrap();
    let truncated = app
        .client
        .post(app.url("/auth/mfa/webauthn/verify/finish"))
        .bearer_auth(&aal1)
        .header("content-type", "application/json")
        .body(text[..text.len() / 2].to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(truncated.status(), 422);

    // 1 MB, to each finish.
    let mut huge = answer.clone();
    huge["response"]["userHandle"] = json!("A".repeat(1 << 20));
    for path in [
        "/auth/mfa/webauthn/verify/finish",
        "/auth/mfa/webauthn/register/finish",
        "/auth/passkey/finish",
    ] {
        let answer = post(&app, path, Some(&aal1), Some(json!({ "credential": huge }))).await;
        assert_eq!(answer.status, 413, "{path}: {}", answer.text);
    }

    // Another user's passkey, in their own browser (a page at the same origin: the relying
    // party's), answering this session's challenge.
    let (other_token, _) = app.registered("other@example.com", PASSWORD).await;
    let profile = TempDir::new();
    let mut second = Browser::launch(&profile.0);
    second.goto(&format!("{origin}/index.html"));
    second.add_authenticator();
    let other = register_passkey(&app, &mut second, &other_token, "").await;
    assert_eq!(other.status, 201, "{}", other.text);
    let start = post(&app, "/auth/mfa/webauthn/verify/start", Some(&aal1), None).await;
    let mut options = start.json()["options"].clone();
    options["publicKey"]["allowCredentials"] = json!([]);
    let foreign = get(&mut second, &options).expect("the other browser signs");
    rejected(&finish(foreign).await);

    // None of it raised the session; the owner's own answer still does.
    assert_eq!(aal(&app, &aal1).await, "aal1");
    let errors = app.logs();
    assert!(!errors.contains("panicked"), "{errors}");
    let answer = verification_answer(&app, &mut browser, &aal1).await;
    let ok = finish(answer).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(aal(&app, &aal1).await, "aal2");
    assert_eq!(browser.credentials(&authenticator).len(), 1);

    // Passwordless: altered answers start no session.
    let before = live_sessions(&app).await;
    let answer = passwordless_answer(&app, &mut browser).await;
    let mut data = client_data(&answer);
    data["origin"] = json!("http://localhost:1");
    let altered = with_client_data(&answer, &data);
    rejected(
        &post(
            &app,
            "/auth/passkey/finish",
            None,
            Some(json!({ "credential": altered })),
        )
        .await,
    );
    // The ceremony went with the altered answer: the genuine one is refused too.
    rejected(
        &post(
            &app,
            "/auth/passkey/finish",
            None,
            Some(json!({ "credential": answer })),
        )
        .await,
    );
    let answer = passwordless_answer(&app, &mut browser).await;
    let mut no_user = answer.clone();
    no_user["response"]["userHandle"] =
        json!(URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes()));
    rejected(
        &post(
            &app,
            "/auth/passkey/finish",
            None,
            Some(json!({ "credential": no_user })),
        )
        .await,
    );
    assert_eq!(live_sessions(&app).await, before);
}

#[tokio::test]
async fn passkey_endpoints_refuse_the_wrong_caller_and_bad_bodies() {
    let app = gateway(
        "http://localhost:3000",
        "[rate_limit]\nlogin_per_ip_per_minute = 10\nregister_per_ip_per_minute = 100\n",
    )
    .await;
    // Without a token.
    for path in [
        "/auth/mfa/webauthn/register/start",
        "/auth/mfa/webauthn/register/finish",
        "/auth/mfa/webauthn/verify/start",
        "/auth/mfa/webauthn/verify/finish",
    ] {
        let answer = post(&app, path, None, Some(json!({}))).await;
        assert_eq!(answer.status, 401, "{path}");
        assert_eq!(answer.json(), json!({"detail": "Not authenticated"}));
    }
    let (token, _) = app.registered("nokey@example.com", PASSWORD).await;
    // No passkey to verify with.
    let none = post(&app, "/auth/mfa/webauthn/verify/start", Some(&token), None).await;
    assert_eq!(none.status, 400);
    assert_eq!(
        none.json(),
        json!({"detail": "No passkey: register one first"})
    );
    // A finish without a start.
    let fake = json!({"credential": {"id": "AAAA", "rawId": "AAAA", "type": "public-key",
        "response": {"clientDataJSON": URL_SAFE_NO_PAD.encode(br#"{"type":"webauthn.get","challenge":"AAAA","origin":"http://localhost:3000"}"#),
                     "authenticatorData": "AAAA", "signature": "AAAA"}}});
    rejected(
        &post(
            &app,
            "/auth/mfa/webauthn/verify/finish",
            Some(&token),
            Some(fake.clone()),
        )
        .await,
    );
    rejected(&post(&app, "/auth/passkey/finish", None, Some(fake)).await);
    // Bodies: the name's rules, non-objects, non-JSON.
    let long = post(
        &app,
        "/auth/mfa/webauthn/register/start",
        Some(&token),
        Some(json!({"name": "x".repeat(65)})),
    )
    .await;
    assert_eq!(long.status, 422);
    for body in [json!([]), json!("x"), json!(1)] {
        assert_eq!(
            post(&app, "/auth/passkey/start", None, Some(body))
                .await
                .status,
            422
        );
    }
    let text = app
        .client
        .post(app.url("/auth/passkey/start"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(text.status().is_client_error());
    // Wrong methods.
    let get = app.get("/auth/passkey/start").await;
    assert_eq!(get.status, 405);
    // Passwordless starts count against the login limit of the address.
    let mut limited = None;
    for _ in 0..40 {
        let answer = post(&app, "/auth/passkey/start", None, None).await;
        if answer.status == 429 {
            limited = Some(answer);
            break;
        }
        assert_eq!(answer.status, 200);
    }
    let limited = limited.expect("passwordless starts are limited per address");
    assert!(limited.header("retry-after").is_some());
    let logs = app.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}
