//! Two-factor authentication with TOTP: enrolment and activation raise the session to `aal2`;
//! a user with a factor is then asked for it wherever a token is needed (or only where a rule
//! says `mfa = true`, with `routes_only`); codes are accepted once; recovery codes; attempt
//! limits that parallel guesses cannot exceed, on one instance and across two on one Redis;
//! hostile codes and ids. Codes are computed here by Python's standard library (RFC 6238),
//! independently of the gateway's implementation.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

const PASSWORD: &str = "MfaPassword123!";

/// The TOTP code of base32 `secret`, `steps` time steps from now.
pub(crate) fn totp(secret: &str, steps: i64) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import base64,hmac,struct,sys,time;k=base64.b32decode(sys.argv[1]+'='*(-len(sys.argv[1])%8));\
             t=int(time.time())//30+int(sys.argv[2]);h=hmac.digest(k,struct.pack('>Q',t),'sha1');\
             o=h[-1]&15;print('%06d'%((struct.unpack('>I',h[o:o+4])[0]&0x7fffffff)%1000000))",
            secret,
            &steps.to_string(),
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A code that is not `secret`'s now (nor a step either side).
pub(crate) fn wrong_code(secret: &str) -> String {
    let near = [totp(secret, -1), totp(secret, 0), totp(secret, 1)];
    (0..4)
        .map(|i| format!("{i}{i}{i}{i}{i}{i}"))
        .find(|c| !near.contains(c))
        .unwrap_or_default()
}

async fn post(app: &TestApp, path: &str, token: &str, body: Option<Value>) -> Answer {
    let mut req = app.client.post(app.url(path)).bearer_auth(token);
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

/// Enrols and activates a TOTP factor for the user of `token`: (secret, recovery codes).
async fn enrol(app: &TestApp, token: &str) -> (String, Value) {
    let a = post(app, "/auth/mfa/totp", token, Some(json!({"name": "phone"}))).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let enrolment = a.json();
    let secret = enrolment["secret"].as_str().unwrap().to_string();
    let id = enrolment["factor_id"].as_str().unwrap();
    let a = post(
        app,
        &format!("/auth/mfa/totp/{id}/activate"),
        token,
        Some(json!({ "code": totp(&secret, 0) })),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    (secret, a.json()["recovery_codes"].clone())
}

fn assert_mfa_required(a: &Answer, what: &str) {
    assert_eq!(
        (a.status, a.text.as_str()),
        (403, r#"{"detail":"MFA required"}"#),
        "{what}"
    );
    assert_eq!(
        a.header("www-authenticate"),
        Some("Bearer error=\"insufficient_user_authentication\""),
        "{what}"
    );
}

#[tokio::test]
async fn a_totp_factor_raises_the_session_and_is_then_asked_for_wherever_a_token_is_needed() {
    let up = Upstream::start().await;
    let routes = route(
        "/api/",
        &[up.addr()],
        "required",
        "  [[routes.rules]]\n  paths = [\"/api/admin/\"]\n  mfa = true\n",
    );
    // Attempts are limited separately below.
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!("[mfa]\nattempts_per_5_minutes = 100\n\n{routes}"),
        ..Spawn::default()
    })
    .await;
    let (token, id) = app.registered("two@example.com", PASSWORD).await;

    // Without a factor: aal1, upstreams told so, and an mfa rule asks for one all the same.
    let status = app.get_as("/auth/mfa", &token).await.json();
    assert_eq!(
        status,
        json!({"aal": "aal1", "factors": [], "recovery_codes_remaining": 0})
    );
    let echo = Echo(app.get_as("/api/x", &token).await.json());
    assert_eq!(echo.one("x-user-aal"), Some("aal1".into()));
    assert_mfa_required(&app.get_as("/api/admin/x", &token).await, "rule, no factor");

    // Enrolment: the secret, the link an app reads; a wrong code does not activate.
    let a = post(
        &app,
        "/auth/mfa/totp",
        &token,
        Some(json!({"name": "phone"})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let enrolment = a.json();
    let secret = enrolment["secret"].as_str().unwrap().to_string();
    let factor = enrolment["factor_id"].as_str().unwrap().to_string();
    assert_eq!(secret.len(), 32, "160 bits in base32");
    assert_eq!(
        enrolment["otpauth_uri"],
        format!(
            "otpauth://totp/SentinelShield:two%40example.com?secret={secret}&issuer=SentinelShield&algorithm=SHA1&digits=6&period=30"
        )
    );
    let activate = format!("/auth/mfa/totp/{factor}/activate");
    let wrong = wrong_code(&secret);
    let a = post(&app, &activate, &token, Some(json!({ "code": wrong }))).await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (400, r#"{"detail":"Invalid code"}"#)
    );
    assert_eq!(
        app.get_as("/auth/mfa", &token).await.json()["factors"],
        json!([])
    );
    let a = post(
        &app,
        &activate,
        &token,
        Some(json!({ "code": totp(&secret, 0) })),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let codes: Vec<String> = a.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(codes.len(), 10);

    // This session is aal2 now, without a new token; the rule lets it through.
    let status = app.get_as("/auth/mfa", &token).await.json();
    assert_eq!(status["aal"], "aal2");
    assert_eq!(status["recovery_codes_remaining"], 10);
    assert_eq!(status["factors"][0]["name"], "phone");
    assert_eq!(status["factors"][0]["type"], "totp");
    let a = app.get_as("/api/admin/x", &token).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(Echo(a.json()).one("x-user-aal"), Some("aal2".into()));
    // The activation's code is used up.
    let a = post(
        &app,
        "/auth/mfa/verify",
        &token,
        Some(json!({ "code": totp(&secret, 0) })),
    )
    .await;
    assert_eq!(a.status, 400, "a code is accepted once");

    // A new sign-in is aal1: it may read itself, its factors, verify and log out; nothing else.
    let second = login(&app, "two@example.com").await;
    assert_eq!(app.me(&second).await.status(), 200);
    assert_eq!(app.get_as("/auth/mfa", &second).await.json()["aal"], "aal1");
    assert_mfa_required(&app.get_as("/api/x", &second).await, "route");
    assert_mfa_required(&app.get_as("/auth/sessions", &second).await, "own endpoint");
    assert_mfa_required(
        &post(&app, "/auth/mfa/totp", &second, None).await,
        "enrolling another factor",
    );
    assert_mfa_required(
        &post(&app, "/auth/mfa/recovery-codes", &second, None).await,
        "new recovery codes",
    );
    // The next step's code (within the window, later than the one used) raises it.
    let a = post(
        &app,
        "/auth/mfa/verify",
        &second,
        Some(json!({ "code": totp(&secret, 1) })),
    )
    .await;
    assert_eq!((a.status, a.text.as_str()), (200, r#"{"aal":"aal2"}"#));
    assert_eq!(app.get_as("/api/x", &second).await.status, 200);

    // A recovery code raises a third session, once; in any letter case, without the dash.
    let third = login(&app, "two@example.com").await;
    let spelled = codes[3].to_uppercase().replace('-', "");
    let a = post(
        &app,
        "/auth/mfa/verify",
        &third,
        Some(json!({ "recovery_code": spelled })),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(app.get_as("/api/x", &third).await.status, 200);
    let fourth = login(&app, "two@example.com").await;
    let a = post(
        &app,
        "/auth/mfa/verify",
        &fourth,
        Some(json!({ "recovery_code": codes[3] })),
    )
    .await;
    assert_eq!(a.status, 400, "a recovery code is used once");
    assert_eq!(
        app.get_as("/auth/mfa", &token).await.json()["recovery_codes_remaining"],
        9
    );

    // Another instance in routes_only mode: only the rule asks; it sees a raise within 1 s.
    let other = Instance::start(
        &app.db.url,
        &format!("[mfa]\nenforcement = \"routes_only\"\n\n{routes}"),
    )
    .await;
    let there = |path: &str, token: &str| {
        let url = format!("{}{path}", other.base);
        let client = app.client.clone();
        let token = token.to_string();
        async move { Answer::of(client.get(url).bearer_auth(token).send().await.unwrap()).await }
    };
    assert_eq!(there("/api/x", &fourth).await.status, 200);
    assert_mfa_required(&there("/api/admin/x", &fourth).await, "routes_only rule");
    let a = post(
        &app,
        "/auth/mfa/verify",
        &fourth,
        Some(json!({ "recovery_code": codes[4] })),
    )
    .await;
    assert_eq!(a.status, 200);
    let started = Instant::now();
    while there("/api/admin/x", &fourth).await.status != 200 {
        if started.elapsed() > Duration::from_secs(1) {
            let a = there("/api/admin/x", &fourth).await;
            panic!("the raise did not arrive: {} {}", a.status, a.text);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Removing the factor (from an aal2 session) takes the recovery codes with it; new
    // sessions are not asked any more.
    let a = app
        .client
        .delete(app.url(&format!("/auth/mfa/factors/{factor}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 204);
    let fifth = login(&app, "two@example.com").await;
    assert_eq!(app.get_as("/api/x", &fifth).await.status, 200);
    assert_eq!(
        app.get_as("/auth/mfa", &fifth).await.json(),
        json!({"aal": "aal1", "factors": [], "recovery_codes_remaining": 0})
    );

    // The audit log has it all; the secret and the codes are nowhere in it.
    let events: Vec<(String, Value)> = app
        .db
        .client()
        .await
        .query(
            "SELECT type, detail FROM sentinel_audit_events WHERE user_id = $1 AND type LIKE 'mfa.%' ORDER BY id",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "mfa.failed",
            "mfa.enrolled",
            "mfa.failed",
            "mfa.verified",
            "mfa.verified",
            "mfa.recovery_code_used",
            "mfa.failed",
            "mfa.verified",
            "mfa.recovery_code_used",
            "mfa.removed"
        ]
    );
    let all: String = app
        .db
        .client()
        .await
        .query_one(
            "SELECT string_agg(row_to_json(e)::text, ' ') FROM sentinel_audit_events e",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!all.contains(&secret));
    for code in &codes {
        assert!(!all.contains(code.as_str()));
    }
    // Nor is the secret stored in the clear.
    let stored: i64 = app
        .db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM sentinel_mfa_factors WHERE position($1::bytea IN sealed_secret) > 0",
            &[&secret.as_bytes()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn parallel_guesses_never_exceed_the_attempt_limit() {
    let app = TestApp::spawn_with(Spawn {
        config_extra: "[mfa]\nattempts_per_5_minutes = 5\n".into(),
        ..Spawn::default()
    })
    .await;
    let (token, _) = app.registered("guess@example.com", PASSWORD).await;
    let (secret, _) = enrol(&app, &token).await;
    let session = login(&app, "guess@example.com").await;
    // Wrong codes, twenty at once: five are tried, the rest refused unread.
    let guesses = (0..20).map(|i| {
        let (app, session) = (&app, session.clone());
        async move {
            let code = format!("{:06}", (i * 7919) % 1_000_000);
            post(
                app,
                "/auth/mfa/verify",
                &session,
                Some(json!({ "code": code })),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(guesses).await;
    let tried = answers.iter().filter(|a| a.status == 400).count();
    let limited: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!(tried + limited.len(), 20);
    assert!(tried <= 5, "{tried} guesses were tried");
    let retry: u64 = limited[0].header("retry-after").unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    // The right code is refused too while the limit holds.
    let a = post(
        &app,
        "/auth/mfa/verify",
        &session,
        Some(json!({ "code": totp(&secret, 1) })),
    )
    .await;
    assert_eq!(a.status, 429);
}

#[tokio::test]
async fn two_instances_on_one_redis_share_the_attempt_limit() {
    let redis = OwnRedis::start().await;
    let shared = format!(
        "[mfa]\nattempts_per_5_minutes = 4\n\n[rate_limit]\nbackend = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    );
    let app = TestApp::spawn_with(Spawn {
        config_extra: shared.clone(),
        ..Spawn::default()
    })
    .await;
    let other = Instance::start(&app.db.url, &shared).await;
    let (token, _) = app.registered("shared@example.com", PASSWORD).await;
    enrol(&app, &token).await;
    let session = login(&app, "shared@example.com").await;
    let guesses = (0..16).map(|i| {
        let url = if i % 2 == 0 {
            app.url("/auth/mfa/verify")
        } else {
            format!("{}/auth/mfa/verify", other.base)
        };
        let (client, session) = (app.client.clone(), session.clone());
        async move {
            client
                .post(url)
                .bearer_auth(session)
                .json(&json!({ "code": format!("{:06}", i * 104_729 % 1_000_000) }))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    let tried = statuses.iter().filter(|s| **s == 400).count();
    assert!(
        tried <= 4,
        "{tried} tried across two instances: {statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 16 - tried);
}

#[tokio::test]
async fn hostile_codes_and_ids_get_a_4xx_and_never_raise_a_session() {
    let app = TestApp::spawn_with(Spawn {
        config_extra: "[mfa]\nattempts_per_5_minutes = 1000\n".into(),
        ..Spawn::default()
    })
    .await;
    let (token, _) = app.registered("victim@example.com", PASSWORD).await;
    let (secret, _) = enrol(&app, &token).await;
    let (mallory, _) = app.registered("mallory@example.com", PASSWORD).await;
    let mallory_factor = post(&app, "/auth/mfa/totp", &mallory, None).await.json()["factor_id"]
        .as_str()
        .unwrap()
        .to_string();
    let session = login(&app, "victim@example.com").await;
    let big = "7".repeat(10_000);
    for body in [
        json!({"code": ""}),
        json!({"code": "12345"}),
        json!({"code": "1234567"}),
        json!({"code": "12345a"}),
        json!({"code": "١٢٣٤٥٦"}),
        json!({"code": "１２３４５６"}),
        json!({"code": format!(" {}", totp(&secret, 1))}),
        json!({"code": big}),
        json!({"code": 123456}),
        json!({"code": null}),
        json!({"recovery_code": "x"}),
        json!({"recovery_code": big}),
        json!({"code": totp(&secret, 1), "recovery_code": "abcde-fghij"}),
        json!({}),
        json!([totp(&secret, 1)]),
        json!(totp(&secret, 1)),
    ] {
        let a = post(&app, "/auth/mfa/verify", &session, Some(body.clone())).await;
        let shown: String = body.to_string().chars().take(60).collect();
        assert!(
            a.status == 400 || a.status == 422,
            "{shown}: {} {}",
            a.status,
            a.text
        );
        assert!(a.json()["detail"].is_string() || a.json()["detail"].is_array());
        assert!(a.text.len() < 2048, "{shown}: the answer echoes the input");
    }
    for body in ["{not json", "code=123456"] {
        let r = app
            .client
            .post(app.url("/auth/mfa/verify"))
            .bearer_auth(&session)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{body}");
    }
    // Factor ids: someone else's, unknown, not a UUID, escapes; never found, never changed.
    for id in [
        mallory_factor.as_str(),
        "00000000-0000-0000-0000-000000000000",
        "not-a-uuid",
        "%00",
    ] {
        let a = post(
            &app,
            &format!("/auth/mfa/totp/{id}/activate"),
            &token,
            Some(json!({"code": "123456"})),
        )
        .await;
        assert!((400..500).contains(&a.status), "{id}: {}", a.status);
        let r = app
            .client
            .delete(app.url(&format!("/auth/mfa/factors/{id}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!((400..500).contains(&r.status().as_u16()), "{id}");
    }
    let a = post(
        &app,
        &format!("/auth/mfa/totp/{mallory_factor}/activate"),
        &mallory,
        Some(json!({"code": "000000"})),
    )
    .await;
    assert_eq!(a.status, 400, "mallory's own factor is still there");
    // Names: too long, control characters.
    for name in [json!("x".repeat(65)), json!("a\u{7}b"), json!(5)] {
        let a = post(
            &app,
            "/auth/mfa/totp",
            &mallory,
            Some(json!({ "name": name })),
        )
        .await;
        assert_eq!(a.status, 422, "{name}");
    }
    // Nothing raised the session.
    assert_eq!(
        app.get_as("/auth/mfa", &session).await.json()["aal"],
        "aal1"
    );
    assert_mfa_required(&app.get_as("/auth/sessions", &session).await, "still aal1");
    assert!(!app.logs().contains("panicked"));
}

#[tokio::test]
async fn an_administrator_or_the_command_line_resets_a_users_factors() {
    let app = TestApp::spawn().await;
    let (admin, _) = app.registered("boss@example.com", PASSWORD).await;
    let granted = crate::admin_cli::cli(&app, &["grant", "boss@example.com", "admin"], "");
    assert!(granted.status.success());
    let (token, id) = app.registered("lost@example.com", PASSWORD).await;
    enrol(&app, &token).await;
    let aal1 = login(&app, "lost@example.com").await;
    assert_mfa_required(
        &app.get_as("/auth/sessions", &aal1).await,
        "before the reset",
    );

    // Not for anyone else; unknown users are 404.
    let reset = |who: String, token: String| {
        let client = app.client.clone();
        let url = app.url(&format!("/auth/admin/users/{who}/mfa"));
        async move { Answer::of(client.delete(url).bearer_auth(token).send().await.unwrap()).await }
    };
    assert_eq!(reset(id.clone(), aal1.clone()).await.status, 403);
    assert_eq!(reset("nobody".into(), admin.clone()).await.status, 404);
    let a = reset(id.clone(), admin.clone()).await;
    assert_eq!(a.status, 204, "{}", a.text);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    // Every session ended; a new sign-in is not asked for a factor; nothing is left of them.
    assert_eq!(app.me(&token).await.status(), 401);
    assert_eq!(app.me(&aal1).await.status(), 401);
    let fresh = login(&app, "lost@example.com").await;
    assert_eq!(app.get_as("/auth/sessions", &fresh).await.status, 200);
    assert_eq!(
        app.get_as("/auth/mfa", &fresh).await.json(),
        json!({"aal": "aal1", "factors": [], "recovery_codes_remaining": 0})
    );

    // The command line does the same.
    let (secret, _) = enrol(&app, &fresh).await;
    assert_eq!(secret.len(), 32);
    let out = crate::admin_cli::cli(&app, &["reset-mfa", "LOST@example.com"], "");
    let said = crate::admin_cli::stdout(&out);
    assert!(said.starts_with("removed 1 second factors of"), "{said}");
    assert_eq!(app.me(&fresh).await.status(), 401);
    let kinds: Vec<String> = app
        .db
        .client()
        .await
        .query(
            "SELECT type || ':' || coalesce(detail->>'via', 'api') FROM sentinel_audit_events \
             WHERE user_id = $1 AND type = 'mfa.removed' ORDER BY id",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kinds, ["mfa.removed:api", "mfa.removed:cli"]);
}
