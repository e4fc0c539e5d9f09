use crate::helpers::*;

const FRONTEND: &str = "http://localhost:3000";

#[tokio::test]
async fn preflights_are_answered_on_every_path() {
    let app = TestApp::spawn().await;
    for path in [
        "/auth/token",
        "/auth/users/me",
        "/health",
        "/nowhere",
        "/api/anything",
    ] {
        let a = Answer::of(
            app.client
                .request(reqwest::Method::OPTIONS, app.url(path))
                .header("origin", FRONTEND)
                .header("access-control-request-method", "PATCH")
                .header(
                    "access-control-request-headers",
                    "authorization,content-type,x-custom",
                )
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.text, "OK");
        assert_eq!(a.header("access-control-allow-origin"), Some(FRONTEND));
        assert_eq!(a.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(
            a.header("access-control-allow-headers"),
            Some("authorization,content-type,x-custom")
        );
        assert_eq!(
            a.header("access-control-allow-methods"),
            Some("DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT, QUERY")
        );
        assert!(a.header("vary").unwrap().starts_with("Origin"));
    }
}

#[tokio::test]
async fn every_own_response_carries_cors_headers_for_the_frontend_only() {
    let app = TestApp::spawn().await;
    let requests = [
        app.client.get(app.url("/health")),
        app.client.get(app.url("/auth/users/me")),
        app.client.post(app.url("/auth/token")),
        app.client.get(app.url("/nowhere")),
        app.client.delete(app.url("/auth/users/me")),
    ];
    for req in requests {
        let req = req.header("origin", FRONTEND).build().unwrap();
        let what = format!("{} {}", req.method(), req.url().path());
        let a = Answer::of(app.client.execute(req).await.unwrap()).await;
        assert_eq!(
            a.header("access-control-allow-origin"),
            Some(FRONTEND),
            "{what}"
        );
        assert_eq!(
            a.header("access-control-allow-credentials"),
            Some("true"),
            "{what}"
        );
        assert_eq!(a.header("vary"), Some("Origin"), "{what}");
    }
    let a = Answer::of(
        app.client
            .get(app.url("/health"))
            .header("origin", "http://evil.example")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("access-control-allow-origin"), None);
    assert_eq!(a.header("vary"), Some("Origin"));
    // Non-preflight OPTIONS (no Access-Control-Request-Method) is an ordinary request.
    let a = Answer::of(
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/health"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 405);
    assert_eq!(a.header("allow"), Some("GET"));
    assert_eq!(a.text, r#"{"detail":"Method Not Allowed"}"#);
}

#[tokio::test]
async fn origins_come_from_the_seed_environment_variable() {
    let app = TestApp::spawn_with(Spawn {
        env: vec![(
            "CORS_ORIGINS".into(),
            r#"["https://app.example.com"]"#.into(),
        )],
        ..Spawn::default()
    })
    .await;
    let allowed = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/auth/token"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let a = Answer::of(allowed("https://app.example.com").await.unwrap()).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let a = Answer::of(allowed(FRONTEND).await.unwrap()).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.header("access-control-allow-origin"), None);
}
