//! TLS on both sides of the gateway, and the pages for apps that cannot be reached: a real
//! gateway, tunnel and agent on loopback, with certificates made at test time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ALICE, BOB, DOMAIN, Harness, pattern_digest};
use support::{
    add_config, closing_app, enable_tls, https_app, self_signed, silent_app, tls_get, tls_send,
};

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// A port on loopback where nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn https_gateway_forwards_proto_https_and_lists_https_urls() {
    let mut h = Harness::start("tls-app");
    let tls = enable_tls(&mut h);
    let host = h.app_host("alice", "ws");

    let r = tls_get(&h, &tls, &host, "/h", ALICE);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("x-forwarded-proto: https\n"),
        "{}",
        r.text()
    );
    assert!(
        r.text().contains(&format!("host: {host}\n")),
        "{}",
        r.text()
    );

    let put = tls_send(
        &h,
        &tls,
        "PUT",
        DOMAIN,
        &format!("/api/v1/workspaces/ws/shares/{}", h.app_port),
        &[("authorization", &bearer(ALICE))],
        br#"{"level":"public"}"#.to_vec(),
    );
    assert_eq!(put.status, 200, "{}", put.text());
    let v: serde_json::Value = serde_json::from_slice(&put.body).unwrap();
    assert_eq!(v["url"], format!("https://{host}/"));
}

#[test]
fn https_sign_in_redirects_to_https_and_sets_a_secure_cookie() {
    let mut h = Harness::start("tls-signin");
    let tls = enable_tls(&mut h);
    let host = h.app_host("alice", "ws");

    // Signed out: sent to the HTTPS sign-in page, with an HTTPS way back.
    let r = tls_send(&h, &tls, "GET", &host, "/p?x=1", &[], Vec::new());
    assert_eq!(r.status, 302);
    let location = r.header("location").unwrap();
    let back = format!("https://{host}/p?x=1");
    let query = location
        .strip_prefix(&format!("https://{DOMAIN}/signin?"))
        .unwrap_or_else(|| panic!("{location}"));
    assert_eq!(query, format!("return={}", percent(&back)));

    // Signing in returns there, with a Secure cookie that opens the app.
    let form = format!("token={ALICE}&{query}").into_bytes();
    let ct = [("content-type", "application/x-www-form-urlencoded")];
    let signed = tls_send(&h, &tls, "POST", DOMAIN, "/signin", &ct, form);
    assert_eq!(signed.status, 303);
    assert_eq!(signed.header("location").unwrap(), back);
    let cookie = signed.header("set-cookie").unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    let session = cookie.split(';').next().unwrap();
    let r = tls_send(
        &h,
        &tls,
        "GET",
        &host,
        "/",
        &[("cookie", session)],
        Vec::new(),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // An http:// return target is not one of the gateway's URLs any more.
    let form = format!(
        "token={ALICE}&return={}",
        percent(&format!("http://{host}/"))
    );
    let r = tls_send(&h, &tls, "POST", DOMAIN, "/signin", &ct, form.into_bytes());
    assert_eq!(r.header("location").unwrap(), format!("https://{DOMAIN}/"));
}

#[test]
fn plain_http_gateway_cookie_is_not_secure() {
    let h = Harness::start("tls-plain");
    let ct = [("content-type", "application/x-www-form-urlencoded")];
    let form = format!("token={ALICE}").into_bytes();
    let r = h.send("POST", DOMAIN, "/signin", &ct, form);
    assert_eq!(r.status, 303);
    assert!(!r.header("set-cookie").unwrap().contains("Secure"));
    assert_eq!(r.header("location").unwrap(), format!("http://{DOMAIN}/"));
}

#[test]
fn missing_and_mismatched_tls_files_stop_the_binary_with_a_clear_error() {
    let mut h = Harness::start("tls-bad");
    let first = self_signed(&["apps.test"]);
    let second = self_signed(&["apps.test"]);
    std::fs::write(h.dir.join("a.crt"), &first.cert_pem).unwrap();
    std::fs::write(h.dir.join("b.key"), &second.key_pem).unwrap();
    add_config(&mut h, "tls_cert = \"a.crt\"\ntls_key = \"KEY\"");
    let cases = [
        ("missing.key", "cannot read"),
        ("b.key", "is not the private key of the certificate"),
        ("a.crt", "no private key"),
    ];
    for (key, words) in cases {
        let path = h.dir.join("bad.toml");
        std::fs::write(&path, h.config_text.replace("KEY", key)).unwrap();
        let (ok, stderr) = run_gateway(&path);
        assert!(!ok, "{key}: the gateway started");
        assert!(stderr.contains(words), "{key}: {stderr}");
        assert!(stderr.contains("gateway TLS"), "{key}: {stderr}");
    }
}

#[test]
fn s_upstream_speaks_tls_to_a_self_signed_app_and_streams_both_ways() {
    let h = Harness::start("tls-upstream");
    let app = https_app();
    let host = format!("{}s--main--ws--alice.{DOMAIN}", app.port);

    // Shared as https, the `s` URL opens for anyone, and the app sees SNI `localhost`.
    let put = h.api(
        "PUT",
        &format!("/api/v1/workspaces/ws/shares/{}", app.port),
        ALICE,
        r#"{"level":"public","protocol":"https"}"#,
    );
    assert_eq!(put.status, 200, "{}", put.text());
    let v: serde_json::Value = serde_json::from_slice(&put.body).unwrap();
    assert_eq!(v["url"], format!("http://{host}/"));
    let r = h.get(&host, "/hello", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("GET /hello\n"), "{}", r.text());
    assert_eq!(r.header("x-sni").unwrap(), "localhost");

    // A large body in each direction streams through the TLS hop intact.
    let bytes = 16 << 20;
    let (n, digest) = h.download(&host, bytes);
    assert_eq!(n, bytes);
    assert_eq!(digest, pattern_digest(bytes));
    let body: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 253) as u8).collect();
    let want: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let r = h.send("POST", &host, "/upload", &[], body);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), want);
}

#[test]
fn s_upstream_works_behind_an_https_gateway_too() {
    let mut h = Harness::start("tls-both");
    let tls = enable_tls(&mut h);
    let app = https_app();
    let host = format!("{}s--main--ws--alice.{DOMAIN}", app.port);
    let r = tls_get(&h, &tls, &host, "/both", ALICE);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("x-forwarded-proto: https\n"),
        "{}",
        r.text()
    );
}

#[test]
fn s_url_to_a_plain_http_app_gets_a_502_naming_tls() {
    let h = Harness::start("tls-plain-app");
    let host = format!("{}s--main--ws--alice.{DOMAIN}", h.app_port);
    let r = h.get(&host, "/", &[("authorization", &bearer(ALICE))]);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().contains("TLS handshake with the app failed"),
        "{}",
        r.text()
    );
}

#[test]
fn a_port_with_nothing_listening_gets_a_404_saying_so_and_the_gateway_keeps_serving() {
    let h = Harness::start("refused");
    let port = closed_port();
    let alice = bearer(ALICE);
    for suffix in ["", "s"] {
        let host = format!("{port}{suffix}--main--ws--alice.{DOMAIN}");
        let r = h.get(&host, "/", &[("authorization", &alice)]);
        assert_eq!(r.status, 404, "{host}: {}", r.text());
        assert!(r.text().contains("No app is listening"), "{}", r.text());
        assert!(r.text().contains(&format!("port {port}")), "{}", r.text());

        // Another user without access learns nothing about the port.
        let r = h.get(&host, "/", &[("authorization", &bearer(BOB))]);
        assert_eq!(r.status, 404);
        assert!(!r.text().contains("listening"), "{}", r.text());
    }
    let app = h.get(
        &h.app_host("alice", "ws"),
        "/",
        &[("authorization", &alice)],
    );
    assert_eq!(app.status, 200);
}

#[test]
fn a_listening_app_that_closes_without_answering_gets_a_502_not_a_404() {
    let h = Harness::start("closing");
    let app = closing_app();
    let host = format!("{}--main--ws--alice.{DOMAIN}", app.port);
    let r = h.get(&host, "/", &[("authorization", &bearer(ALICE))]);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("The app did not answer"), "{}", r.text());
    assert!(!r.text().contains("No app is listening"), "{}", r.text());
}

#[test]
fn an_app_that_never_answers_gets_a_504_after_the_upstream_timeout() {
    let mut h = Harness::start("silent");
    add_config(&mut h, "upstream_timeout_s = 2");
    h.start_gateway();
    let app = silent_app();
    let host = format!("{}--main--ws--alice.{DOMAIN}", app.port);
    let started = Instant::now();
    let r = h.get(&host, "/", &[("authorization", &bearer(ALICE))]);
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("within 2 s"), "{}", r.text());
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[test]
fn an_agent_that_does_not_answer_the_handshake_gets_a_504_page() {
    // `capped` points at a loopback port where no agent runs.
    let h = Harness::start("no-agent");
    let host = format!("8080--main--capped--alice.{DOMAIN}");
    let r = h.get(&host, "/", &[("authorization", &bearer(ALICE))]);
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("Workspace unreachable"), "{}", r.text());
    assert!(r.text().contains("handshake"), "{}", r.text());
}

// Runs the gateway binary on `config`; returns whether it was still running after a short
// wait (it is then killed) and what it wrote to stderr.
fn run_gateway(config: &std::path::Path) -> (bool, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_ferry-gateway"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let running = loop {
        if child.0.try_wait().unwrap().is_some() {
            break false;
        }
        if Instant::now() > deadline {
            break true;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.0.kill();
    let _ = child.0.wait();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.0.stderr.take() {
        use std::io::Read;
        pipe.read_to_string(&mut stderr).unwrap();
    }
    (running, stderr)
}

// Kills the child process on every exit path, failed assertions included.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
