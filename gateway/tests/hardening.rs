//! Fixes from a new user's review: cross-site form posts, cookie tossing by apps, header-read
//! timeouts, the agent-or-app timeout message and the bearer scheme's case.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{ALICE, DOMAIN, Harness};

/// The dashboard's origin, as a browser writes it.
const ORIGIN: &str = "http://apps.test:8080";
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

// Signs in with alice's token through the form; returns the `name=value` cookie pair.
fn sign_in(h: &Harness) -> String {
    let body = format!("token={ALICE}").into_bytes();
    let r = h.send("POST", DOMAIN, "/signin", &[FORM], body);
    assert_eq!(r.status, 303, "{}", r.text());
    let header = r.header("set-cookie").unwrap();
    header.split(';').next().unwrap().to_owned()
}

// Posts the workspace page's share form for the app port with `headers` added.
fn post_share(h: &Harness, cookie: &str, level: &str, headers: &[(&str, &str)]) -> u16 {
    let path = format!("/workspaces/ws/shares/{}", h.app_port);
    let mut all = vec![FORM, ("cookie", cookie)];
    all.extend_from_slice(headers);
    let body = format!("level={level}&protocol=http").into_bytes();
    h.send("POST", DOMAIN, &path, &all, body).status
}

fn is_public(h: &Harness) -> bool {
    h.get(&h.app_host("alice", "ws"), "/", &[]).status == 200
}

#[test]
fn cookie_form_posts_from_other_origins_are_refused() {
    let h = Harness::start("hard-csrf");
    let cookie = sign_in(&h);
    let app = format!("http://{}", h.app_host("alice", "ws"));
    let refused: [&[(&str, &str)]; 6] = [
        &[("origin", &app)],
        &[("origin", "http://evil.example.com")],
        &[("origin", "null")],
        &[("referer", "http://evil.example.com/x")],
        &[("origin", ORIGIN), ("sec-fetch-site", "same-site")],
        &[],
    ];
    for headers in refused {
        assert_eq!(
            post_share(&h, &cookie, "public", headers),
            403,
            "{headers:?}"
        );
        assert!(!is_public(&h), "shared by a post with {headers:?}");
    }

    // The page says why.
    let path = format!("/workspaces/ws/shares/{}", h.app_port);
    let r = h.send(
        "POST",
        DOMAIN,
        &path,
        &[FORM, ("cookie", &cookie), ("origin", &app)],
        b"level=public".to_vec(),
    );
    assert!(r.text().contains("not from the gateway"), "{}", r.text());

    // From the dashboard itself (Origin, or Referer alone) the form works.
    let same = [("origin", ORIGIN), ("sec-fetch-site", "same-origin")];
    assert_eq!(post_share(&h, &cookie, "public", &same), 303);
    assert!(is_public(&h));
    let referer = [("referer", "http://apps.test:8080/workspaces/ws")];
    assert_eq!(post_share(&h, &cookie, "owner", &referer), 303);
    assert!(!is_public(&h));
}

#[test]
fn sign_out_from_another_origin_is_refused() {
    let h = Harness::start("hard-signout");
    let cookie = sign_in(&h);
    let out = |origin: &str| {
        let headers = [("cookie", cookie.as_str()), ("origin", origin)];
        h.send("POST", DOMAIN, "/signout", &headers, Vec::new())
    };
    let app = format!("http://{}", h.app_host("alice", "ws"));
    assert_eq!(out(&app).status, 403);
    let still = h.get(&h.app_host("alice", "ws"), "/", &[("cookie", &cookie)]);
    assert_eq!(still.status, 200, "signed out by another origin");
    assert_eq!(out(ORIGIN).status, 303);
}

#[test]
fn bearer_posts_need_no_origin() {
    let h = Harness::start("hard-bearer-form");
    let auth = format!("Bearer {ALICE}");
    let path = format!("/workspaces/ws/shares/{}", h.app_port);
    let headers = [
        FORM,
        ("authorization", &auth),
        ("origin", "http://evil.example.com"),
    ];
    let r = h.send("POST", DOMAIN, &path, &headers, b"level=public".to_vec());
    assert_eq!(r.status, 303, "{}", r.text());
}

#[test]
fn apps_cannot_set_the_session_cookie() {
    let h = Harness::start("hard-toss");
    let auth = format!("Bearer {ALICE}");
    let r = h.get(
        &h.app_host("alice", "ws"),
        "/toss",
        &[("authorization", &auth)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["app=1; Path=/"]);
}

#[test]
fn connections_that_never_finish_their_headers_are_closed() {
    use std::io::{Read, Write};
    let mut h = Harness::start("hard-slowloris");
    let anchor = "database = \"shares.sqlite\"\n";
    h.config_text = h
        .config_text
        .replace(anchor, &format!("{anchor}header_read_timeout_s = 1\n"));
    h.start_gateway();

    // A partial request line, then silence: the gateway hangs up (after a 408 or not).
    let mut conn = std::net::TcpStream::connect(h.gateway).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET / HT").unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = conn.read_to_end(&mut rest);
    assert!(
        read.is_ok(),
        "still open after {:?}: {read:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn the_bearer_scheme_is_matched_without_case() {
    let h = Harness::start("hard-bearer-case");
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme} {ALICE}");
        let headers = [("authorization", auth.as_str())];
        let r = h.send("GET", DOMAIN, "/api/v1/workspaces", &headers, Vec::new());
        assert_eq!(r.status, 200, "{scheme}: {}", r.text());
    }
    let r = h.get(
        DOMAIN,
        "/api/v1/workspaces",
        &[("authorization", "Basic x")],
    );
    assert_eq!(r.status, 401);
}
