//! Browser mode (`auth.refresh_cookie`): the refresh token lives in an `HttpOnly; Secure;
//! SameSite=Strict` cookie on `/auth`. Checked over HTTP, and in headless Chromium (Debian's
//! `chromium`, installed by scripts/ensure-deps.sh): a page on an allowed origin signs in and
//! refreshes with the cookie; a page on a foreign origin cannot.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

const PASSWORD: &str = "CookiePassword1!";

fn cookie_config(origin: &str, upstream: &str) -> (String, String) {
    (
        "refresh_cookie = true\n".to_string(),
        format!(
            "[cors]\norigins = [\"{origin}\"]\n\n{}",
            route("/api/", &[upstream.to_string()], "required", "")
        ),
    )
}

async fn cookie_gateway(origin: &str, upstream: &str) -> TestApp {
    let (auth, extra) = cookie_config(origin, upstream);
    TestApp::spawn_with(Spawn {
        auth_extra: auth,
        config_extra: extra,
        ..Spawn::default()
    })
    .await
}

/// A request as a page on `origin` sends it: `Origin` and `X-Requested-With` (browser mode
/// asks both of every request that sets or uses the refresh cookie).
fn from_page(req: reqwest::RequestBuilder, origin: &str) -> reqwest::RequestBuilder {
    req.header("origin", origin)
        .header("x-requested-with", "XMLHttpRequest")
}

/// Registers `email` from a page on `origin`.
async fn register_from(app: &TestApp, origin: &str, email: &str) {
    let r = from_page(app.client.post(app.url("/auth/register")), origin)
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "register {email}");
}

/// The refresh cookie a response sets: (value, the whole `Set-Cookie`).
fn set_cookie(a: &Answer) -> (String, String) {
    let header = a
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with("sg_refresh="))
        .unwrap_or_else(|| panic!("no sg_refresh cookie set: {:?}", a.headers));
    let value = header["sg_refresh=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string();
    (value, header)
}

#[tokio::test]
async fn the_refresh_token_travels_only_in_a_strict_cookie_that_upstreams_never_see() {
    let up = Upstream::start().await;
    let origin = "https://app.example";
    let app = cookie_gateway(origin, &up.addr()).await;
    register_from(&app, origin, "cookie@example.com").await;

    let login = from_page(app.client.post(app.url("/auth/token")), origin)
        .form(&[("username", "cookie@example.com"), ("password", PASSWORD)]);
    let login = Answer::of(login.send().await.unwrap()).await;
    assert_eq!(login.status, 200);
    let body = login.json();
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert!(body["access_token"].is_string());
    let (cookie, header) = set_cookie(&login);
    assert_eq!(cookie.len(), 70);
    assert_eq!(
        header,
        format!(
            "sg_refresh={cookie}; Max-Age=2592000; Path=/auth; HttpOnly; Secure; SameSite=Strict"
        )
    );

    let refresh = |cookie: String, origin: Option<&'static str>, requested_with: bool| {
        let mut req = app
            .client
            .post(app.url("/auth/refresh"))
            .header("cookie", format!("theme=dark; sg_refresh={cookie}"));
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if requested_with {
            req = req.header("x-requested-with", "XMLHttpRequest");
        }
        async move { Answer::of(req.send().await.unwrap()).await }
    };
    // The CSRF checks: a custom header and an allowed origin, both.
    for (o, with) in [
        (Some("https://evil.example"), true),
        (None, true),
        (Some("https://app.example"), false),
    ] {
        let refused = refresh(cookie.clone(), o, with).await;
        assert_eq!(refused.status, 403, "{o:?} {with}: {}", refused.text);
        assert_eq!(
            refused.json(),
            json!({"detail": "Cross-site request refused: X-Requested-With and an allowed Origin are required"})
        );
    }
    let rotated = refresh(cookie.clone(), Some("https://app.example"), true).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    assert!(rotated.json().get("refresh_token").is_none());
    let (next, _) = set_cookie(&rotated);
    assert_ne!(next, cookie);
    // A JSON body is no way around the cookie.
    let body_only = Answer::of(
        app.client
            .post(app.url("/auth/refresh"))
            .header("origin", origin)
            .header("x-requested-with", "x")
            .json(&json!({"refresh_token": next}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body_only.status, 400);
    assert!(set_cookie(&body_only).1.contains("Max-Age=0"));

    // Upstreams never see the refresh cookie, whatever path it is sent on; other cookies pass.
    let access = rotated.json()["access_token"].as_str().unwrap().to_string();
    let seen = Answer::of(
        app.client
            .get(app.url("/api/x"))
            .bearer_auth(&access)
            .header("cookie", format!("a=1; sg_refresh={next}; b=2"))
            .header("cookie", format!("sg_refresh={next}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen.status, 200);
    let echo = Echo(seen.json());
    assert_eq!(echo.all("cookie"), ["a=1; b=2"]);

    // Logout by the cookie: the session ends and the cookie is cleared.
    let logout = Answer::of(
        app.client
            .post(app.url("/auth/logout"))
            .header("cookie", format!("sg_refresh={next}"))
            .header("origin", origin)
            .header("x-requested-with", "x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(logout.status, 204, "{}", logout.text);
    assert_eq!(
        set_cookie(&logout).1,
        "sg_refresh=; Max-Age=0; Path=/auth; HttpOnly; Secure; SameSite=Strict"
    );
    assert_eq!(
        refresh(next, Some("https://app.example"), true)
            .await
            .status,
        400
    );
    assert_eq!(app.me(&access).await.status(), 401);
}

#[tokio::test]
async fn a_cross_site_form_cannot_sign_a_browser_in_to_another_account() {
    let up = Upstream::start().await;
    let origin = "https://app.example";
    let app = cookie_gateway(origin, &up.addr()).await;
    register_from(&app, origin, "attacker@example.com").await;
    // What a form or a no-cors fetch on another site can send: no custom header, a foreign
    // Origin or none, a simple content type or none at all (a Blob body).
    let login = || {
        app.client
            .post(app.url("/auth/token"))
            .form(&[("username", "attacker@example.com"), ("password", PASSWORD)])
    };
    let register = |email: &str| {
        app.client
            .post(app.url("/auth/register"))
            .body(json!({"email": email, "password": PASSWORD}).to_string())
    };
    let attempts = [
        login().header("origin", "https://evil.example"),
        login(),
        login().header("origin", origin),
        login()
            .header("x-requested-with", "x")
            .header("origin", "https://evil.example"),
        register("planted1@example.com").header("origin", "https://evil.example"),
        register("planted2@example.com"),
        register("planted3@example.com").header("origin", origin),
    ];
    for attempt in attempts {
        let answer = Answer::of(attempt.send().await.unwrap()).await;
        assert_eq!(answer.status, 403, "{}", answer.text);
        assert_eq!(
            answer.json(),
            json!({"detail": "Cross-site request refused: X-Requested-With and an allowed Origin are required"})
        );
        assert!(
            answer.headers.get("set-cookie").is_none(),
            "{:?}",
            answer.headers
        );
    }
    // Nothing was registered by the refused attempts.
    let taken = from_page(app.client.post(app.url("/auth/register")), origin)
        .json(&json!({"email": "planted2@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 200);
}

/// Runs headless Chromium on `url` with the profile in `profile` until the page settles;
/// the JSON the page wrote into `<pre id="result">`.
pub(crate) fn run_page(profile: &Path, url: &str) -> Value {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chromium is installed (scripts/ensure-deps.sh installs Debian's chromium)");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    let start = dom
        .find("<pre id=\"result\">")
        .unwrap_or_else(|| panic!("no result in the page: {dom}"))
        + "<pre id=\"result\">".len();
    let end = start + dom[start..].find("</pre>").unwrap();
    let text = dom[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// [`run_page`], off the test's runtime thread.
pub(crate) async fn in_chromium(profile: &TempDir, url: String) -> Value {
    let profile = profile.0.clone();
    tokio::task::spawn_blocking(move || run_page(&profile, &url))
        .await
        .unwrap()
}

pub(crate) fn page(script: &str) -> String {
    format!(
        "<!doctype html><html><body><pre id=\"result\">pending</pre><script>\n\
         (async () => {{ const out = {{}}; try {{ {script} }} catch (e) {{ out.error = String(e); }}\n\
         document.getElementById('result').textContent = JSON.stringify(out); }})();\n\
         </script></body></html>"
    )
}

#[tokio::test]
async fn a_page_on_an_allowed_origin_refreshes_with_the_cookie_and_a_foreign_one_cannot() {
    let site = TempDir::new();
    let site_port = free_port();
    let up = Upstream::start().await;
    let allowed = format!("http://127.0.0.1:{site_port}");
    let app = cookie_gateway(&allowed, &up.addr()).await;
    register_from(&app, &allowed, "browser@example.com").await;
    let gw = app.base.clone();

    std::fs::write(
        site.0.join("login.html"),
        page(&format!(
            "const gw = '{gw}';
             let r = await fetch(gw + '/auth/token', {{method: 'POST', credentials: 'include',
               headers: {{'X-Requested-With': 'XMLHttpRequest'}},
               body: new URLSearchParams({{username: 'browser@example.com', password: '{PASSWORD}'}})}});
             out.login = r.status; const b = await r.json();
             out.login_body_has_refresh_token = 'refresh_token' in b;
             out.page_sees_cookie = document.cookie.includes('sg_refresh');
             r = await fetch(gw + '/auth/refresh', {{method: 'POST', credentials: 'include',
               headers: {{'X-Requested-With': 'XMLHttpRequest'}}}});
             out.refresh = r.status; const b2 = await r.json(); out.refresh_email = b2.user.email;
             r = await fetch(gw + '/api/hello', {{headers: {{Authorization: 'Bearer ' + b2.access_token}}}});
             out.api = r.status; out.upstream_saw_user = (await r.json()).headers
               .some(([k, v]) => k === 'x-user-email' && v === 'browser@example.com');
             r = await fetch(gw + '/auth/refresh', {{method: 'POST', credentials: 'include'}});
             out.refresh_without_header = r.status;"
        )),
    )
    .unwrap();
    std::fs::write(
        site.0.join("foreign.html"),
        page(&format!(
            "const r = await fetch('{gw}/auth/refresh', {{method: 'POST', credentials: 'include',
               headers: {{'X-Requested-With': 'XMLHttpRequest'}}}});
             out.refresh = r.status;"
        )),
    )
    .unwrap();
    std::fs::write(
        site.0.join("logout.html"),
        page(&format!(
            "const gw = '{gw}'; const h = {{'X-Requested-With': 'XMLHttpRequest'}};
             let r = await fetch(gw + '/auth/refresh', {{method: 'POST', credentials: 'include', headers: h}});
             out.refresh = r.status;
             r = await fetch(gw + '/auth/logout', {{method: 'POST', credentials: 'include', headers: h}});
             out.logout = r.status;
             r = await fetch(gw + '/auth/refresh', {{method: 'POST', credentials: 'include', headers: h}});
             out.refresh_after_logout = r.status;"
        )),
    )
    .unwrap();
    let _site = StaticSite::serve(&site.0, site_port);
    wait_for_status(
        &format!("{allowed}/login.html"),
        200,
        Duration::from_secs(10),
        "the page server did not start",
    )
    .await;
    let profile = TempDir::new();

    let signed_in = in_chromium(&profile, format!("{allowed}/login.html")).await;
    assert_eq!(
        signed_in,
        json!({
            "login": 200, "login_body_has_refresh_token": false, "page_sees_cookie": false,
            "refresh": 200, "refresh_email": "browser@example.com",
            "api": 200, "upstream_saw_user": true,
            "refresh_without_header": 403
        })
    );
    // Another site (localhost is not 127.0.0.1): the strict cookie stays home and the
    // gateway's CORS answer does not let the page in.
    let foreign = in_chromium(
        &profile,
        format!("http://localhost:{site_port}/foreign.html"),
    )
    .await;
    assert!(
        foreign["error"]
            .as_str()
            .is_some_and(|e| e.contains("Failed to fetch")),
        "{foreign}"
    );
    // The cookie is still there for the allowed page, until logout clears it.
    let later = in_chromium(&profile, format!("{allowed}/logout.html")).await;
    assert_eq!(
        later,
        json!({"refresh": 200, "logout": 204, "refresh_after_logout": 400})
    );
}
