//! App healthchecks end to end: a real `ferry agent` checks a test app on loopback, and the
//! gateway (run as `ferry gateway`) shows the state in its API and on the workspace page.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod procs;

use std::time::Duration;

use common::{ALICE, BOB};
use procs::{Procs, TestApp, free_tcp};

/// Every state change below is expected well within this (checks run each second).
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn health_goes_healthy_then_unhealthy_on_500s_and_when_closed() {
    let mut app = TestApp::start();
    let unchecked = free_tcp().port();
    let checks = [
        // Checked every second; unhealthy on the second failure in a row.
        format!("{0}=http://127.0.0.1:{0}/healthz,1,1", app.port),
        // First checked after an hour: initializing for the whole test.
        format!("{unchecked}=http://localhost:{unchecked}/,3600,0"),
    ];
    let procs = Procs::start("health", "localhost", &checks);

    // Before its first check a port is initializing, listed even though nothing listens.
    let entry = procs.wait_for_health(unchecked, "initializing", WAIT);
    assert_eq!(entry["listening"], false, "{entry}");
    assert_eq!(entry["level"], "owner", "{entry}");

    // One passed check: healthy.
    let entry = procs.wait_for_health(app.port, "healthy", WAIT);
    assert_eq!(entry["listening"], true, "{entry}");

    // Answers of 500 and up are failures; a 404 is still a success.
    app.set_status(404);
    std::thread::sleep(Duration::from_secs(3));
    procs.wait_for_health(app.port, "healthy", WAIT);
    app.set_status(503);
    procs.wait_for_health(app.port, "unhealthy", WAIT);
    app.set_status(200);
    procs.wait_for_health(app.port, "healthy", WAIT);

    // A closed port fails too, and stays listed with its health.
    app.close();
    let entry = procs.wait_for_health(app.port, "unhealthy", WAIT);
    assert_eq!(entry["listening"], false, "{entry}");

    // The workspace page shows the states; other users see nothing.
    let (status, page) = procs.request("GET", &procs.domain, "/workspaces/ws", Some(ALICE), "");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("data-health=\"unhealthy\""), "{page}");
    assert!(page.contains("data-health=\"initializing\""), "{page}");
    let (status, _) = procs.api_get("/api/v1/workspaces/ws/ports", BOB);
    assert_eq!(status, 404);
}

#[test]
fn the_agent_refuses_healthchecks_that_leave_the_workspace() {
    let dir = std::env::temp_dir().join(format!("ferry-health-refuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("agent.key");
    std::fs::write(&key, ferry_crypto::keys::PrivateKey::generate().to_base64()).unwrap();
    let peer = ferry_crypto::keys::PrivateKey::generate()
        .public_key()
        .to_string();
    let cases = [
        ("3000=http://192.0.2.1/,5,1", "the host is not loopback"),
        ("3000=https://127.0.0.1/,5,1", "not http://"),
        (
            "3000=http://169.254.169.254/,5,1",
            "only http:// URLs to 127.0.0.1",
        ),
        ("3000=http://127.0.0.1/,0,1", "interval"),
        ("3=http://127.0.0.1/,5,1", "lower ports are the agent's"),
        ("3000", "PORT=URL,INTERVAL,THRESHOLD"),
    ];
    for (check, words) in cases {
        let mut cmd = std::process::Command::new(procs::ferry_bin());
        cmd.args(["agent", "--listen", "127.0.0.1:0", "--peer", &peer])
            .arg("--private-key-file")
            .arg(&key)
            .args(["--healthcheck", check]);
        let out = procs::run_bounded(cmd, procs::COMMAND_TIMEOUT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{check}: {stderr}");
        assert!(stderr.contains(words), "{check}: {stderr}");
    }

    // Two checks for one port.
    let mut cmd = std::process::Command::new(procs::ferry_bin());
    cmd.args(["agent", "--listen", "127.0.0.1:0", "--peer", &peer])
        .arg("--private-key-file")
        .arg(&key)
        .args(["--healthcheck", "3000=http://127.0.0.1/,5,1"])
        .args(["--healthcheck", "3000=http://[::1]/,5,1"]);
    let out = procs::run_bounded(cmd, procs::COMMAND_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("two healthchecks for port 3000"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
