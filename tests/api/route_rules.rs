//! Route rules: the first rule whose paths, methods and networks all match decides, by the
//! caller's token, roles, verified address and second factor; every answer is the contract's,
//! and the upstream never sees a refused request. `check-config` refuses a rule that could
//! never work, in one line.

use std::time::{Duration, Instant};

use crate::admin_cli::{cli, stdout};
use crate::helpers::*;

const PASSWORD: &str = "RulesPassword1!";

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// `/api/` with the configuration reference's rules, and two more for the other
/// requirements; the client's address is read from `X-Forwarded-For` (the test is the
/// trusted proxy).
fn rules_config(upstream: &str) -> String {
    format!(
        "[proxy]\ntrusted_proxies = [\"127.0.0.1\"]\n\n{}",
        route(
            "/api/",
            &[upstream.to_string()],
            "required",
            r#"
  [[routes.rules]]
  paths = ["/api/health"]
  allow = "public"
  [[routes.rules]]
  paths = ["/api/admin/"]
  methods = ["GET", "post"]
  networks = ["10.0.0.0/8", "127.0.0.1/32"]
  roles = ["admin", "ops"]
  [[routes.rules]]
  paths = ["/api/admin/"]
  allow = "deny"
  [[routes.rules]]
  paths = ["/api/verified/"]
  verified_email = true
  [[routes.rules]]
  paths = ["/api/step-up/"]
  mfa = true
"#
        )
    )
}

/// A request as a proxy in front would send it: from `client`, with `token` if any.
async fn ask(app: &TestApp, method: &str, path: &str, token: Option<&str>, client: &str) -> Answer {
    let mut request = app
        .client
        .request(method.parse().unwrap(), app.url(path))
        .header("X-Forwarded-For", client);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Answer::of(request.send().await.unwrap()).await
}

/// Sends a raw HTTP/1.1 request (for spellings a client library would tidy up) and returns
/// the status line's code and the body.
async fn ask_raw(app: &TestApp, path: &str, token: &str, client: &str) -> (u16, String) {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         X-Forwarded-For: {client}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw(app.port, request.as_bytes()).await;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// A request (method, path, token, client address) and the status and detail it must get.
type Refusal<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, u16, &'a str);

const INSIDE: &str = "10.1.2.3";
const OUTSIDE: &str = "192.0.2.7";

#[tokio::test]
async fn rules_decide_by_path_method_network_and_role_and_refusals_never_reach_the_upstream() {
    let up = RawUpstream::start(OK).await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: rules_config(&up.addr()),
        ..Spawn::default()
    })
    .await;
    let (plain, _) = app.registered("plain@example.com", PASSWORD).await;
    let (boss, _) = app.registered("boss@example.com", PASSWORD).await;
    stdout(&cli(&app, &["grant", "boss@example.com", "admin"], ""));
    stdout(&cli(&app, &["verify-email", "boss@example.com"], ""));
    // Logging in again is not needed: roles and the address are read per request (cached).
    let deadline = Instant::now() + Duration::from_secs(1);
    while ask(&app, "GET", "/api/admin/x", Some(&boss), INSIDE)
        .await
        .status
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "the grant took more than a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let refused: [Refusal; 10] = [
        (
            "GET",
            "/api/admin/x",
            None,
            INSIDE,
            401,
            "Not authenticated",
        ),
        (
            "GET",
            "/api/admin/x",
            Some("not-a-token"),
            INSIDE,
            401,
            "Invalid token",
        ),
        (
            "GET",
            "/api/admin/x",
            Some(&plain),
            INSIDE,
            403,
            "Not enough permissions",
        ),
        // Another method or another network: the deny rule, not a later rule's answer.
        (
            "DELETE",
            "/api/admin/x",
            Some(&boss),
            INSIDE,
            403,
            "Forbidden",
        ),
        (
            "GET",
            "/api/admin/x",
            Some(&boss),
            OUTSIDE,
            403,
            "Forbidden",
        ),
        ("GET", "/api/admin/x", None, OUTSIDE, 403, "Forbidden"),
        (
            "GET",
            "/api/verified/x",
            Some(&plain),
            INSIDE,
            403,
            "Email not verified",
        ),
        (
            "GET",
            "/api/verified/x",
            None,
            INSIDE,
            401,
            "Not authenticated",
        ),
        (
            "GET",
            "/api/step-up/x",
            Some(&boss),
            INSIDE,
            403,
            "MFA required",
        ),
        ("GET", "/api/other", None, INSIDE, 401, "Not authenticated"),
    ];
    let seen_before = up.heads().len();
    for (method, path, token, client, status, detail) in refused {
        let a = ask(&app, method, path, token, client).await;
        let what = format!("{method} {path} as {token:?} from {client}");
        assert_eq!(a.status, status, "{what}: {}", a.text);
        assert_eq!(a.json(), serde_json::json!({ "detail": detail }), "{what}");
        let challenge = a.header("www-authenticate");
        match detail {
            "MFA required" => assert_eq!(
                challenge,
                Some("Bearer error=\"insufficient_user_authentication\""),
                "{what}"
            ),
            "Not authenticated" => assert_eq!(challenge, Some("Bearer"), "{what}"),
            "Invalid token" => assert!(challenge.is_some(), "{what}"),
            _ => assert_eq!(challenge, None, "{what}"),
        }
    }
    // Other spellings of the admin path from outside: refused as the path itself.
    for path in [
        "/API/admin/x",
        "/api/%61dmin/x",
        "/api//admin/x",
        "/api%2Fadmin/x",
        "/%41pi/ADMIN/x",
    ] {
        assert_eq!(
            ask_raw(&app, path, &boss, OUTSIDE).await,
            (403, r#"{"detail":"Forbidden"}"#.to_string()),
            "{path}"
        );
    }
    assert_eq!(
        up.heads().len(),
        seen_before,
        "the upstream saw a refused request"
    );

    let allowed: [(&str, &str, Option<&str>, &str); 6] = [
        ("GET", "/api/health", None, OUTSIDE),
        ("GET", "/api/health", Some("not-a-token"), OUTSIDE),
        ("GET", "/api/admin/x", Some(&boss), INSIDE),
        ("POST", "/api/admin/x", Some(&boss), "127.0.0.1"),
        ("GET", "/api/verified/x", Some(&boss), OUTSIDE),
        ("GET", "/api/other", Some(&plain), OUTSIDE),
    ];
    for (method, path, token, client) in allowed {
        let a = ask(&app, method, path, token, client).await;
        assert_eq!(
            (a.status, a.text.as_str()),
            (200, "ok"),
            "{method} {path} as {token:?} from {client}"
        );
    }
    assert_eq!(up.heads().len(), seen_before + allowed.len());

    // A role granted takes effect within a second, on the rule as on the headers.
    stdout(&cli(&app, &["grant", "plain@example.com", "ops"], ""));
    let deadline = Instant::now() + Duration::from_secs(1);
    while ask(&app, "GET", "/api/admin/x", Some(&plain), INSIDE)
        .await
        .status
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "the grant took more than a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_protected_route_with_a_public_rule_forwards_the_identity_of_a_valid_token() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: rules_config(&up.addr()),
        ..Spawn::default()
    })
    .await;
    let (token, id) = app.registered("who@example.com", PASSWORD).await;
    let echo = Echo(app.get_as("/api/health", &token).await.json());
    assert_eq!(echo.all("x-user-id"), [id]);
    let anonymous = Echo(app.get("/api/health").await.json());
    assert!(anonymous.all("x-user-id").is_empty());
}

#[test]
fn check_config_refuses_a_rule_that_could_not_work_in_one_line_with_exit_2() {
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    let db = "postgres://postgres@127.0.0.1/x";
    // 10,000 roles, all fine but the last.
    let huge_roles = format!(
        "roles = [{}\"Role9999\"]",
        (0..9_999)
            .map(|i| format!("\"role{i}\", "))
            .collect::<String>()
    );
    let cases = [
        ("rolez = [\"admin\"]", "unknown field `rolez`"),
        ("methods = [\"FETCH\"]", "method \"FETCH\" is not one of"),
        (
            "networks = [\"10.0.0.0/33\"]",
            "bad prefix length in \"10.0.0.0/33\"",
        ),
        (
            "networks = [\"intranet\"]",
            "not an IP address: \"intranet\"",
        ),
        ("roles = [\"Admin\"]", "role \"Admin\" is not a role name"),
        (
            "paths = [\"/other/\"]",
            "path \"/other/\" is outside the route's prefix",
        ),
        ("paths = [\"/api/%61dmin\"]", "is not plain"),
        ("paths = [\"/api/../admin\"]", "is not plain"),
        (
            "allow = \"public\"\nroles = [\"admin\"]",
            "cannot take roles",
        ),
        ("allow = \"deny\"\nmfa = true", "lets nobody in"),
        ("allow = \"everyone\"", "unknown variant `everyone`"),
        // Hostile and odd: control characters, empty lists, wrong types, a huge list.
        ("roles = [\"ad\\u0007min\"]", "is not a role name"),
        ("roles = [\"admin\\nops\"]", "is not a role name"),
        ("paths = [\"/api/a\\u0000b\"]", "holds a control character"),
        ("paths = [\"/api/a\\nb\"]", "holds a control character"),
        ("paths = []", "an empty list"),
        ("methods = []", "an empty list"),
        ("networks = []", "an empty list"),
        ("roles = []", "an empty list"),
        ("verified_email = \"yes\"", "expected a boolean"),
        ("roles = \"admin\"", "expected a sequence"),
        (huge_roles.as_str(), "role \"Role9999\" is not a role name"),
    ];
    for (rule, says) in cases {
        let extra = route(
            "/api/",
            &["127.0.0.1:9".to_string()],
            "required",
            &format!("[[routes.rules]]\n{rule}\n"),
        );
        std::fs::write(&config, config_text(free_port(), db, &extra)).unwrap();
        let out = output_within(
            command(&dir.0, &config).arg("check-config"),
            Duration::from_secs(20),
        );
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{rule}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{rule}: {stderr}");
        assert!(stderr.contains(says), "{rule}: {stderr}");
        let from_the_parser = ["unknown", "an empty", "expected"];
        if !from_the_parser.iter().any(|p| says.starts_with(p)) {
            assert!(stderr.contains("\"/api/\" rule 1"), "{rule}: {stderr}");
        }
    }
}

/// `check-access` with the rules of [`rules_config`]: its exit code and what it says.
fn check_access(args: &[&str]) -> (Option<i32>, String) {
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    let text = config_text(
        free_port(),
        "postgres://postgres@127.0.0.1/x",
        &rules_config("127.0.0.1:9"),
    );
    std::fs::write(&config, text).unwrap();
    let out = output_within(
        command(&dir.0, &config).arg("check-access").args(args),
        Duration::from_secs(20),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn check_access_says_which_rule_decides_and_exits_by_the_outcome() {
    let cases: [(&[&str], i32, &[&str]); 9] = [
        (
            &["GET", "/api/admin/users"],
            1,
            &["rule:    3 of 5", "refused: 403 {\"detail\":\"Forbidden\"}"],
        ),
        (
            &["--ip", "10.0.0.9", "GET", "/api/admin/users"],
            1,
            &[
                "rule:    2 of 5",
                "403 {\"detail\":\"Not enough permissions\"}",
            ],
        ),
        (
            &[
                "--roles",
                "ops,billing",
                "--ip",
                "10.0.0.9",
                "head",
                "/api/admin/users",
            ],
            0,
            &[
                "rule:    2 of 5",
                "allowed: forwarded, with the caller's identity",
            ],
        ),
        (
            &[
                "--roles",
                "ops",
                "--ip",
                "10.0.0.9",
                "GET",
                "/API//%61dmin/users",
            ],
            0,
            &["rule:    2 of 5"],
        ),
        (
            &["--anonymous", "--ip", "10.0.0.9", "GET", "/api/admin/users"],
            1,
            &["401 {\"detail\":\"Not authenticated\"}"],
        ),
        (
            &["--anonymous", "GET", "/api/health?probe=1"],
            0,
            &["rule:    1 of 5", "allowed: forwarded, anonymous"],
        ),
        (
            &["--unverified", "GET", "/api/verified/x"],
            1,
            &["403 {\"detail\":\"Email not verified\"}"],
        ),
        (
            &["--mfa", "GET", "/api/step-up/x"],
            0,
            &["aal2", "rule:    5 of 5", "allowed"],
        ),
        (
            &["GET", "/elsewhere"],
            1,
            &["route:   none matches", "404 {\"detail\":\"Not Found\"}"],
        ),
    ];
    for (args, code, says) in cases {
        let (status, text) = check_access(args);
        assert_eq!(status, Some(code), "{args:?}: {text}");
        for said in says {
            assert!(text.contains(said), "{args:?} should say {said:?}: {text}");
        }
    }
    // Misuse is exit 2, as for any configuration or usage error.
    for args in [
        &["FETCH", "/api/x"][..],
        &["--roles", "Admin", "GET", "/api/x"][..],
        &["--anonymous", "--mfa", "GET", "/api/x"][..],
    ] {
        assert_eq!(check_access(args).0, Some(2), "{args:?}");
    }
}
