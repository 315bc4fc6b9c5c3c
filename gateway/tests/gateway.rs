//! End to end: a real gateway, a real WireGuard tunnel and a real agent, on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ALICE, BOB, DOMAIN, Harness, pattern_digest};

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn malformed_hosts_and_oversized_labels_get_a_clear_400_page() {
    let h = Harness::start("malformed");
    let cases = [
        ("808--main--ws--alice.apps.test:8080", "4 or 5 digits"),
        (
            "0008--main--ws--alice.apps.test:8080",
            "reserved for the agent",
        ),
        (
            "8080--main--ws.apps.test:8080",
            "PORT[s]--AGENT--WORKSPACE--USER",
        ),
        ("8080--ma_in--ws--alice.apps.test:8080", "not a valid name"),
        ("elsewhere.example:8080", "not one of them"),
    ];
    for (host, words) in cases {
        let r = h.get(host, "/", &[]);
        assert_eq!(r.status, 400, "{host}");
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert!(r.text().contains(words), "{host}: {}", r.text());
    }
    let long = format!("8080--main--{}--alice.{DOMAIN}", "w".repeat(50));
    let r = h.get(&long, "/", &[]);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("at most 63"), "{}", r.text());
}

#[test]
fn each_share_level_against_owner_other_user_and_no_session() {
    let h = Harness::start("levels");
    let host = h.app_host("alice", "ws");
    let (alice, bob) = (bearer(ALICE), bearer(BOB));
    let status = |auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        h.get(&host, "/", &headers).status
    };

    // Owner (the default, with no share row).
    assert_eq!(status(Some(&alice)), 200);
    assert_eq!(status(Some(&bob)), 404);
    assert_eq!(status(None), 302);

    assert_eq!(h.share("ws", h.app_port, "authenticated").status, 200);
    assert_eq!(status(Some(&alice)), 200);
    assert_eq!(status(Some(&bob)), 200);
    assert_eq!(status(None), 302);

    assert_eq!(h.share("ws", h.app_port, "public").status, 200);
    assert_eq!(status(Some(&alice)), 200);
    assert_eq!(status(Some(&bob)), 200);
    assert_eq!(status(None), 200);

    // Back to owner by deleting the share.
    let path = format!("/api/v1/workspaces/ws/shares/{}", h.app_port);
    assert_eq!(h.api("DELETE", &path, ALICE, "").status, 200);
    assert_eq!(status(Some(&bob)), 404);
    assert_eq!(status(None), 302);
}

#[test]
fn unknown_workspaces_give_404_to_users_and_sign_in_to_strangers() {
    let h = Harness::start("unknown");
    let alice = bearer(ALICE);
    for host in [
        h.app_host("alice", "nope"),
        h.app_host("bob", "ws"),
        format!("9999--other--ws--alice.{DOMAIN}"),
    ] {
        assert_eq!(
            h.get(&host, "/", &[("authorization", &alice)]).status,
            404,
            "{host}"
        );
        assert_eq!(h.get(&host, "/", &[]).status, 302, "{host}");
    }
}

#[test]
fn sign_in_sets_a_session_cookie_and_returns_to_the_app() {
    let h = Harness::start("signin");
    let host = h.app_host("alice", "ws");

    // Signed out: redirected to the sign-in page, which knows the way back.
    let r = h.get(&host, "/page?x=1", &[]);
    assert_eq!(r.status, 302);
    let location = r.header("location").unwrap();
    let back = format!("http://{host}/page?x=1");
    let (signin_host, query) = location
        .strip_prefix("http://")
        .unwrap()
        .split_once("/signin?")
        .unwrap();
    assert_eq!(signin_host, DOMAIN);
    let page = h.get(DOMAIN, &format!("/signin?{query}"), &[]);
    assert_eq!(page.status, 200);
    assert!(page.text().contains(&back), "{}", page.text());

    // A wrong token is refused on the page; a right one sets the cookie and goes back.
    let form = |token: &str| format!("token={token}&{query}").into_bytes();
    let ct = [("content-type", "application/x-www-form-urlencoded")];
    let bad = h.send("POST", DOMAIN, "/signin", &ct, form("wrong"));
    assert_eq!(bad.status, 401);
    assert!(bad.header("set-cookie").is_none());
    let good = h.send("POST", DOMAIN, "/signin", &ct, form(ALICE));
    assert_eq!(good.status, 303);
    assert_eq!(good.header("location").unwrap(), back);
    let cookie = good.header("set-cookie").unwrap();
    for part in ["HttpOnly", "SameSite=Lax", "Domain=apps.test;", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let session = cookie.split(';').next().unwrap();

    // The session opens the app, and the app never sees the gateway's cookie.
    let cookies = format!("theme=dark; {session}");
    let r = h.get(&host, "/page?x=1", &[("cookie", &cookies)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("GET /page?x=1"), "{}", r.text());
    assert!(r.text().contains("cookie: theme=dark\n"), "{}", r.text());
    assert!(!r.text().contains("ferry_session"), "{}", r.text());

    // An off-site return target is replaced by the gateway's home.
    let evil = h.send(
        "POST",
        DOMAIN,
        "/signin",
        &ct,
        format!("token={ALICE}&return=http%3A%2F%2Fevil.test%2F").into_bytes(),
    );
    assert_eq!(
        evil.header("location").unwrap(),
        format!("http://{DOMAIN}/")
    );
}

#[test]
fn proxy_sets_forwarding_headers_and_strips_the_gateway_token() {
    let h = Harness::start("headers");
    let host = h.app_host("alice", "ws");
    let alice = bearer(ALICE);
    let r = h.get(
        &host,
        "/h",
        &[("authorization", &alice), ("x-forwarded-for", "192.0.2.7")],
    );
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(
        text.contains("x-forwarded-for: 192.0.2.7, 127.0.0.1\n"),
        "{text}"
    );
    assert!(text.contains("x-forwarded-proto: http\n"), "{text}");
    assert!(
        text.contains(&format!("x-forwarded-host: {host}\n")),
        "{text}"
    );
    assert!(text.contains(&format!("host: {host}\n")), "{text}");
    assert!(!text.contains("authorization"), "{text}");
    assert!(!text.contains(ALICE), "{text}");

    // An app's own Authorization (not the gateway's token) passes through on a public port.
    h.share("ws", h.app_port, "public");
    let r = h.get(&host, "/h", &[("authorization", "Basic dXNlcjpwYXNz")]);
    assert!(
        r.text().contains("authorization: Basic dXNlcjpwYXNz\n"),
        "{}",
        r.text()
    );
}

#[test]
fn large_download_streams_through_intact() {
    let h = Harness::start("download");
    let host = h.app_host("alice", "ws");
    let bytes = 48 << 20;
    let (n, digest) = h.download(&host, bytes);
    assert_eq!(n, bytes);
    assert_eq!(digest, pattern_digest(bytes));
}

#[test]
fn upload_streams_through_intact() {
    use sha2::{Digest, Sha256};
    let h = Harness::start("upload");
    let host = h.app_host("alice", "ws");
    let body: Vec<u8> = (0..(8u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let want: String = Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let alice = bearer(ALICE);
    let r = h.send("POST", &host, "/upload", &[("authorization", &alice)], body);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), want);
}

#[test]
fn cors_preflight_and_simple_requests_by_origin() {
    let h = Harness::start("cors");
    let host = h.app_host("alice", "ws");
    h.share("ws", h.app_port, "public");
    let same_user = format!("http://3000--main--other--alice.{DOMAIN}");
    let other_user = format!("http://3000--main--bobs--bob.{DOMAIN}");
    let foreign = "http://evil.test".to_owned();
    let vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

    for (origin, echoed) in [(&same_user, true), (&other_user, false), (&foreign, false)] {
        // The preflight is answered by the gateway, not the app.
        let pre = h.send(
            "OPTIONS",
            &host,
            "/api",
            &[
                ("origin", origin),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "x-token"),
            ],
            Vec::new(),
        );
        assert_eq!(pre.status, 204, "{origin}");
        assert!(pre.header("x-app").is_none(), "preflight reached the app");
        assert_eq!(
            pre.header("access-control-allow-origin").as_ref(),
            echoed.then_some(origin),
            "{origin}"
        );
        assert_eq!(pre.header("access-control-allow-methods").unwrap(), "PUT");
        assert_eq!(
            pre.header("access-control-allow-headers").unwrap(),
            "x-token"
        );
        assert_eq!(pre.header("vary").unwrap(), vary);

        // A simple request: the app's grants are replaced by the gateway's.
        let r = h.get(&host, "/", &[("origin", origin)]);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("access-control-allow-origin").as_ref(),
            echoed.then_some(origin),
            "{origin}"
        );
        assert_eq!(
            r.header("access-control-allow-credentials").is_some(),
            echoed
        );
        assert!(r.header("access-control-allow-methods").is_none());
        assert_eq!(r.header("access-control-expose-headers").unwrap(), "x-app");
        assert_eq!(
            r.header("vary").unwrap(),
            format!("Accept-Encoding, {vary}")
        );
    }
}

#[test]
fn share_api_rules_cap_labels_and_ownership() {
    let h = Harness::start("api");

    // Authentication and ownership.
    assert_eq!(
        h.api("GET", "/api/v1/workspaces/ws/shares", "wrong", "")
            .status,
        401
    );
    assert_eq!(
        h.api("GET", "/api/v1/workspaces/ws/shares", BOB, "").status,
        404
    );
    assert_eq!(
        h.api(
            "PUT",
            "/api/v1/workspaces/ws/shares/8080",
            BOB,
            r#"{"level":"public"}"#
        )
        .status,
        404
    );

    // The template cap is named when exceeded.
    let r = h.share("capped", 8080, "public");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("which is authenticated"), "{}", r.text());
    assert_eq!(h.share("capped", 8080, "authenticated").status, 200);

    // Bad input.
    assert_eq!(h.share("ws", 8, "public").status, 400);
    assert_eq!(h.share("ws", 8080, "everyone").status, 400);

    // Listing shows URLs.
    let put = h.api(
        "PUT",
        "/api/v1/workspaces/ws/shares/8443",
        ALICE,
        r#"{"level":"public","protocol":"https"}"#,
    );
    assert_eq!(put.status, 200, "{}", put.text());
    let list = h.api("GET", "/api/v1/workspaces/ws/shares", ALICE, "");
    let v: serde_json::Value = serde_json::from_slice(&list.body).unwrap();
    assert_eq!(
        v["shares"][0]["url"],
        format!("http://8443s--main--ws--alice.{DOMAIN}/")
    );
    assert_eq!(v["shares"][0]["level"], "public");
}

#[test]
fn names_that_cannot_fit_a_label_are_refused_by_the_api() {
    let h = Harness::start("label");
    let ws = "a-workspace-name-of-26-chr";
    let carol = "carol-token";
    let put = |port: u16, protocol: &str| {
        let path = format!("/api/v1/workspaces/{ws}/shares/{port}");
        h.api(
            "PUT",
            &path,
            carol,
            &format!(r#"{{"level":"public","protocol":"{protocol}"}}"#),
        )
    };
    assert_eq!(put(8080, "https").status, 200);
    assert_eq!(put(18080, "http").status, 200);
    let r = put(18080, "https");
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("64 characters") && r.text().contains("at most 63"),
        "{}",
        r.text()
    );
}

#[test]
fn share_state_survives_a_gateway_restart() {
    let mut h = Harness::start("restart");
    let host = h.app_host("alice", "ws");
    assert_eq!(h.get(&host, "/", &[]).status, 302);
    assert_eq!(h.share("ws", h.app_port, "public").status, 200);
    assert_eq!(h.get(&host, "/", &[]).status, 200);
    h.start_gateway();
    assert_eq!(h.get(&host, "/", &[]).status, 200);
}

#[test]
fn websocket_upgrade_is_spliced_through_both_ways() {
    let h = Harness::start("websocket");
    let host = h.app_host("alice", "ws");
    let message: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (status, back) = h.upgrade_echo(&host, "websocket", &message);
    assert_eq!(status, 101);
    assert!(back == message, "the echo differs");
}

#[test]
fn ports_api_lists_the_agents_listening_ports_with_their_shares() {
    let h = Harness::start("ports");
    assert_eq!(h.share("ws", h.app_port, "public").status, 200);
    let r = h.api("GET", "/api/v1/workspaces/ws/ports", ALICE, "");
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let ports = v["ports"].as_array().unwrap();
    let app = ports
        .iter()
        .find(|p| p["port"] == h.app_port)
        .expect("the app's port is listed");
    assert_eq!(app["level"], "public");
    assert_eq!(app["url"], format!("http://{}/", h.app_host("alice", "ws")));
    assert!(
        ports
            .iter()
            .all(|p| p["port"].as_u64().unwrap() >= 9 && p["port"] != 22)
    );
    assert_eq!(
        h.api("GET", "/api/v1/workspaces/ws/ports", BOB, "").status,
        404
    );
}

#[test]
fn workspace_page_lists_ports_and_its_form_changes_the_share() {
    let h = Harness::start("page");
    let alice = bearer(ALICE);
    let auth = [("authorization", alice.as_str())];
    assert_eq!(h.get(DOMAIN, "/workspaces/ws", &[]).status, 302);
    assert_eq!(
        h.get(DOMAIN, "/workspaces/ws", &[("authorization", &bearer(BOB))])
            .status,
        404
    );

    let page = h.get(DOMAIN, "/workspaces/ws", &auth);
    assert_eq!(page.status, 200);
    let url = format!("http://{}/", h.app_host("alice", "ws"));
    assert!(
        page.text().contains(&format!("<a href=\"{url}\">")),
        "{}",
        page.text()
    );

    let form = |ws: &str, level: &str| {
        let path = format!("/workspaces/{ws}/shares/{}", h.app_port);
        let headers = [
            auth[0],
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        h.send(
            "POST",
            DOMAIN,
            &path,
            &headers,
            format!("level={level}&protocol=http").into_bytes(),
        )
    };
    let saved = form("ws", "public");
    assert_eq!(saved.status, 303);
    assert_eq!(saved.header("location").unwrap(), "/workspaces/ws");
    assert_eq!(
        h.get(&h.app_host("alice", "ws"), "/", &[]).status,
        200,
        "now public"
    );

    let refused = form("capped", "public");
    assert_eq!(refused.status, 400);
    assert!(
        refused.text().contains("which is authenticated"),
        "{}",
        refused.text()
    );
}
