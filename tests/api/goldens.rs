//! Every case of the seed backend's captured answers (shared/fixtures/seed/golden-responses.json),
//! replayed in order against the gateway on the seed's own database.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

const ADA: &str = "cf33c6d8-c568-40da-85d6-bad6a194617e";

/// What the gateway adds after the seed's keys of an object (sessions' fields in a
/// `TokenResponse`, `email_verified` and `roles` in a `UserResponse`); everything the seed
/// answered stays as it was.
const ADDED_KEYS: &[&str] = &["refresh_token", "expires_in", "email_verified", "roles"];

/// Compares a body with the golden one: exact, except tokens (shape), timestamps (the seed
/// wrote naive UTC, we write the same instant with a `Z`) and keys added after the seed's.
fn assert_same_body(name: &str, ours: &Value, golden: &Value) {
    match (ours, golden) {
        (Value::Object(o), Value::Object(g)) => {
            let ok: Vec<_> = o.keys().collect();
            let gk: Vec<_> = g.keys().collect();
            assert_eq!(&ok[..gk.len().min(ok.len())], &gk[..], "{name}: keys");
            assert!(
                ok[gk.len()..]
                    .iter()
                    .all(|k| ADDED_KEYS.contains(&k.as_str())),
                "{name}: keys {ok:?}"
            );
            for (k, gv) in g {
                let ov = &o[k];
                match k.as_str() {
                    "access_token" => {
                        assert_eq!(ov.as_str().unwrap().split('.').count(), 3, "{name}")
                    }
                    "created_at" => assert_eq!(
                        ov.as_str().unwrap(),
                        format!("{}Z", gv.as_str().unwrap()),
                        "{name}: created_at"
                    ),
                    _ => assert_same_body(name, ov, gv),
                }
            }
        }
        (o, g) => assert_eq!(o, g, "{name}"),
    }
}

#[tokio::test]
async fn every_golden_response_of_the_seed_backend_is_reproduced() {
    let app = TestApp::spawn_seeded().await;
    // users.sql was captured after the golden run renamed Ada; start from before it.
    app.db
        .client()
        .await
        .execute(
            "UPDATE users SET full_name = 'Ada Lovelace' WHERE id = $1",
            &[&ADA],
        )
        .await
        .unwrap();
    let fresh: Value = app
        .login("ada@example.com", "AdaLovelace1815!")
        .await
        .json()
        .await
        .unwrap();
    let token = fresh["access_token"].as_str().unwrap().to_string();

    let goldens = fixture_json("golden-responses.json");
    for case in goldens["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let req = &case["request"];
        let method = Method::from_bytes(req["method"].as_str().unwrap().as_bytes()).unwrap();
        let mut builder = app
            .client
            .request(method, app.url(req["path"].as_str().unwrap()));
        if let Some(headers) = req["headers"].as_object() {
            for (k, v) in headers {
                let v = v.as_str().unwrap();
                // The captured tokens have expired since: use one of ours for the same user.
                let v = if k == "Authorization" && v.starts_with("Bearer eyJ") {
                    format!("Bearer {token}")
                } else {
                    v.to_string()
                };
                builder = builder.header(k.as_str(), v);
            }
        }
        if let Some(json) = req.get("json") {
            builder = builder.json(json);
        }
        if let Some(data) = req["data"].as_object() {
            let pairs: Vec<(String, String)> = data
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            builder = builder.form(&pairs);
        }
        if let Some(parts) = req["multipart"].as_object() {
            let mut form = reqwest::multipart::Form::new();
            for (k, v) in parts {
                form = form.text(k.clone(), v.as_str().unwrap().to_string());
            }
            builder = builder.multipart(form);
        }
        if let Some(content) = req["content"].as_str() {
            builder = builder.body(content.to_string());
        }
        let answer = Answer::of(builder.send().await.unwrap()).await;

        assert_eq!(
            answer.status,
            case["status"].as_u64().unwrap() as u16,
            "{name}: {}",
            answer.text
        );
        if name == "preflight foreign origin" {
            // product.md: a foreign origin learns nothing of the CORS policy.
            assert_eq!(answer.text, "Disallowed CORS origin");
            assert!(
                answer
                    .headers
                    .keys()
                    .all(|k| !k.as_str().starts_with("access-control-")),
                "{name}: {:?}",
                answer.headers
            );
            continue;
        }
        for (k, v) in case["headers"].as_object().unwrap() {
            assert_eq!(answer.header(k), v.as_str(), "{name}: header {k}");
        }
        match &case["body"] {
            Value::String(text) => assert_eq!(&answer.text, text, "{name}"),
            golden => assert_same_body(name, &answer.json(), golden),
        }
    }
}
