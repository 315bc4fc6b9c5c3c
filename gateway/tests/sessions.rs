//! Sign-in sessions kept in SQLite: they survive a gateway restart, end on sign-out, expire, and
//! die with their user's removal from the config.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod support;

use std::time::Duration;

use common::{ALICE, BOB, DOMAIN, Harness};
use support::add_config;

// The dashboard's origin, which a browser sends with its forms.
const ORIGIN: &str = "http://apps.test:8080";

// Signs in with `token` through the form and returns the `name=value` cookie pair and the
// whole Set-Cookie header.
fn sign_in(h: &Harness, token: &str) -> (String, String) {
    let ct = [("content-type", "application/x-www-form-urlencoded")];
    let r = h.send(
        "POST",
        DOMAIN,
        "/signin",
        &ct,
        format!("token={token}").into_bytes(),
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let header = r.header("set-cookie").unwrap();
    let pair = header.split(';').next().unwrap().to_owned();
    (pair, header)
}

fn status_with_cookie(h: &Harness, cookie: &str) -> u16 {
    h.get(&h.app_host("alice", "ws"), "/", &[("cookie", cookie)])
        .status
}

#[test]
fn a_session_survives_a_gateway_restart_and_sign_out_ends_it() {
    let mut h = Harness::start("sess-restart");
    let (session, header) = sign_in(&h, ALICE);
    assert!(header.contains("Max-Age=604800"), "{header}");
    assert_eq!(status_with_cookie(&h, &session), 200);

    h.start_gateway();
    assert_eq!(
        status_with_cookie(&h, &session),
        200,
        "signed out by the restart"
    );

    // The sign-out page offers a form; posting it ends the session and clears the cookie.
    let page = h.get(DOMAIN, "/signout", &[]);
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("action=\"/signout\""),
        "{}",
        page.text()
    );
    let out = h.send(
        "POST",
        DOMAIN,
        "/signout",
        &[("cookie", &session), ("origin", ORIGIN)],
        Vec::new(),
    );
    assert_eq!(out.status, 303);
    assert_eq!(
        out.header("location").unwrap(),
        format!("http://{DOMAIN}/signin")
    );
    let cleared = out.header("set-cookie").unwrap();
    assert!(cleared.starts_with("ferry_session=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");

    // The old cookie, replayed, signs no one in, before or after another restart.
    assert_eq!(status_with_cookie(&h, &session), 302);
    h.start_gateway();
    assert_eq!(status_with_cookie(&h, &session), 302);
}

#[test]
fn signing_out_one_session_keeps_the_others() {
    let h = Harness::start("sess-two");
    let (first, _) = sign_in(&h, ALICE);
    let (second, _) = sign_in(&h, ALICE);
    assert_ne!(first, second);
    let out = h.send(
        "POST",
        DOMAIN,
        "/signout",
        &[("cookie", &first), ("origin", ORIGIN)],
        Vec::new(),
    );
    assert_eq!(out.status, 303);
    assert_eq!(status_with_cookie(&h, &first), 302);
    assert_eq!(status_with_cookie(&h, &second), 200);
}

#[test]
fn an_expired_session_is_refused() {
    let mut h = Harness::start("sess-expiry");
    add_config(&mut h, "session_lifetime_s = 3");
    h.start_gateway();
    let (session, header) = sign_in(&h, ALICE);
    assert!(header.contains("Max-Age=3;"), "{header}");
    assert_eq!(status_with_cookie(&h, &session), 200);
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(status_with_cookie(&h, &session), 302);
}

#[test]
fn a_session_of_a_user_removed_from_the_config_signs_no_one_in() {
    let mut h = Harness::start("sess-removed");
    assert_eq!(h.share("ws", h.app_port, "authenticated").status, 200);
    let (bob, _) = sign_in(&h, BOB);
    assert_eq!(status_with_cookie(&h, &bob), 200);

    // Bob and his workspace leave the config; his session row is still in the database.
    remove_table(&mut h.config_text, "[[users]]\nname = \"bob\"\n");
    remove_table(&mut h.config_text, "[[workspaces]]\nname = \"bobs\"\n");
    h.start_gateway();
    assert_eq!(status_with_cookie(&h, &bob), 302);
}

// Removes the TOML table that starts with `head`, up to the next table.
fn remove_table(config: &mut String, head: &str) {
    let start = config.find(head).unwrap();
    let after = start + head.len();
    let end = after + config[after..].find("[[").unwrap();
    config.replace_range(start..end, "");
}
