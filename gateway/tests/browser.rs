//! The workspace page in a real browser: headless Chromium (Debian's `chromium`) signs in to a
//! real gateway on loopback, loads the page, and the test checks the rendered DOM for the ports,
//! app URLs, share levels and health, then takes a screenshot.
//!
//! Chromium is aimed at loopback only: every name under the test's app domain resolves to
//! 127.0.0.1 and every other name fails, and its background services (updates, sync, metrics,
//! safe browsing) are off. A missing chromium fails the test: scripts/test-all.sh installs it.
//! Set FERRY_SCREENSHOT=PATH to keep the screenshot (docs/gateway-workspace.png is one).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod procs;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ALICE;
use procs::{Procs, TestApp, free_tcp};

const HOST: &str = "apps.example.test";
/// One Chromium run's limit; it is killed (its whole process group, by PID) after this.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn chromium_shows_ports_urls_share_levels_and_health_on_the_workspace_page() {
    let chromium = chromium_bin();

    // An app that is healthy and public, a closed port that is unhealthy, and a port whose
    // first check is an hour away (initializing), shared with signed-in users.
    let app = TestApp::start();
    let (closed, later) = (free_tcp().port(), free_tcp().port());
    let checks = [
        format!("{0}=http://127.0.0.1:{0}/,1,1", app.port),
        format!("{closed}=http://127.0.0.1:{closed}/,1,0"),
        format!("{later}=http://localhost:{later}/,3600,0"),
    ];
    let procs = Procs::start("browser", HOST, &checks);
    share(&procs, app.port, "public");
    share(&procs, later, "authenticated");
    procs.wait_for_health(app.port, "healthy", Duration::from_secs(30));
    procs.wait_for_health(closed, "unhealthy", Duration::from_secs(30));

    // Sign in the way a person does, through the gateway's form, then land on the page.
    let page = format!("http://{}/workspaces/ws", procs.domain);
    let start = sign_in_page(&procs, &page);

    let dom = dump_dom(&chromium, &procs.dir, &start);
    assert!(dom.contains("<h1>Workspace ws</h1>"), "{dom}");
    let app_url = format!("http://{}/", procs.app_host(app.port));
    assert!(dom.contains(&format!("<a href=\"{app_url}\">")), "{dom}");
    for (port, health, level) in [
        (app.port, "healthy", "public"),
        (closed, "unhealthy", "owner"),
        (later, "initializing", "authenticated"),
    ] {
        let row = row_of(&dom, port).unwrap_or_else(|| panic!("no row for {port}: {dom}"));
        assert!(row.contains(&format!("data-health=\"{health}\"")), "{row}");
        assert!(
            row.contains(&format!("<option value=\"{level}\" selected=\"\">"))
                || row.contains(&format!("<option value=\"{level}\" selected>")),
            "{row}"
        );
    }

    // The screenshot is a PNG of some size.
    let shot = procs.dir.join("workspace.png");
    let args = [
        format!("--screenshot={}", shot.display()),
        "--window-size=1100,480".into(),
        start,
    ];
    run_chromium(&chromium, &procs.dir, &args);
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 10_000, "a suspiciously small screenshot");
    if let Some(keep) = std::env::var_os("FERRY_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}

// The rendered DOM. A run that printed nothing at all (no document) is tried again, twice at
// most; any document, right or wrong, is returned for the test to judge.
fn dump_dom(chromium: &Path, dir: &Path, start: &str) -> String {
    let args = ["--dump-dom".to_owned(), start.to_owned()];
    let mut dom = String::new();
    for _ in 0..3 {
        dom = run_chromium(chromium, dir, &args);
        if !dom.trim().is_empty() {
            break;
        }
    }
    dom
}

// Chromium from PATH (or $FERRY_CHROMIUM); its absence is a failure, not a skip.
fn chromium_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("FERRY_CHROMIUM") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromium"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("chromium is not installed: `apt-get install chromium` (scripts/test-all.sh does)")
    })
}

fn share(procs: &Procs, port: u16, level: &str) {
    let path = format!("/api/v1/workspaces/ws/shares/{port}");
    let body = format!("{{\"level\":\"{level}\"}}");
    let (status, text) = procs.request("PUT", &procs.domain, &path, Some(ALICE), &body);
    assert_eq!(status, 200, "{text}");
}

// A local page that posts the gateway's sign-in form at once; the gateway sets its session
// cookie and redirects to `page`. The form is submitted while the page is still parsing (not
// from `onload`): submitted from `onload`, Chromium's virtual time sometimes ran out before the
// navigation started, and it dumped an empty document.
fn sign_in_page(procs: &Procs, page: &str) -> String {
    let html = format!(
        "<!doctype html><html><body>\
         <form method=\"post\" action=\"http://{}/signin\">\
         <input type=\"hidden\" name=\"token\" value=\"{ALICE}\">\
         <input type=\"hidden\" name=\"return\" value=\"{page}\"></form>\
         <script>document.forms[0].submit()</script></body></html>\n",
        procs.domain
    );
    let path = procs.dir.join("signin.html");
    std::fs::write(&path, html).unwrap();
    format!("file://{}", path.display())
}

// Runs headless Chromium once with `args` after the fixed, loopback-only flags; returns its
// stdout. Killed with its process group after CHROMIUM_TIMEOUT.
fn run_chromium(chromium: &Path, dir: &Path, args: &[String]) -> String {
    let profile = dir.join("chromium-profile");
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-breakpad",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
        "--metrics-recording-only",
        "--no-default-browser-check",
        "--no-proxy-server",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",
    ])
    .arg(format!(
        "--host-resolver-rules=MAP *.{HOST} 127.0.0.1, MAP {HOST} 127.0.0.1, MAP * ~NOTFOUND"
    ))
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .env("HOME", dir)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });

    // Wait, bounded; on every exit path the process group is killed.
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    kill_group(pid);
    let _ = child.kill();
    let _ = child.wait();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    match status {
        Some(s) if s.success() => out,
        Some(s) => panic!("chromium failed ({s}): {err}"),
        None => panic!("chromium did not finish within {CHROMIUM_TIMEOUT:?}: {err}"),
    }
}

// Kills the process group Chromium leads (its renderer and helper processes too).
fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

// The `<tr>` of `port` in the dumped DOM.
fn row_of(dom: &str, port: u16) -> Option<&str> {
    dom.split("<tr>")
        .find(|row| row.starts_with(&format!("<td>{port}</td>")))
}
