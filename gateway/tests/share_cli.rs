//! `ferry share`, `ferry share ls` and `ferry unshare` as a user runs them: the real `ferry`
//! binary (which runs `ferry-gateway` next to it) against a real gateway on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod procs;

use std::path::PathBuf;
use std::process::Output;

use common::{ALICE, BOB, CAROL};
use procs::Procs;

fn text(out: &Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn share_list_and_unshare_through_the_gateway_api() {
    let procs = Procs::start("share-cli", "localhost", &[]);
    let url = format!("http://{}", procs.domain);
    let env = [("FERRY_GATEWAY_URL", url.as_str()), ("FERRY_TOKEN", ALICE)];
    let ferry = |args: &[&str]| text(&procs.ferry(args, &env));

    // Share, and the app URL is printed.
    let (code, out, err) = ferry(&[
        "share",
        "ws",
        "8080",
        "--level",
        "public",
        "--protocol",
        "https",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let app_url = format!("http://8080s--main--ws--alice.{}/", procs.domain);
    assert!(out.contains(&app_url) && out.contains("public"), "{out}");
    let (code, _, err) = ferry(&["share", "capped", "3000", "--level", "authenticated"]);
    assert_eq!(code, Some(0), "{err}");

    // The gateway agrees.
    let (status, v) = procs.api_get("/api/v1/workspaces/ws/shares", ALICE);
    assert_eq!(status, 200);
    assert_eq!(v["shares"][0]["level"], "public", "{v}");
    assert_eq!(v["shares"][0]["protocol"], "https", "{v}");

    // One workspace, then all of them.
    let (code, out, err) = ferry(&["share", "ls", "ws"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&app_url), "{out}");
    assert!(!out.contains("capped"), "{out}");
    let (code, out, err) = ferry(&["share", "ls"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&app_url), "{out}");
    assert!(
        out.contains("capped") && out.contains("authenticated"),
        "{out}"
    );

    // Unshare: back to owner, then nothing to undo.
    let (code, out, err) = ferry(&["unshare", "ws", "8080"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("back to owner only"), "{out}");
    let (code, out, _) = ferry(&["unshare", "ws", "8080"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("was not shared"), "{out}");
    let (_, v) = procs.api_get("/api/v1/workspaces/ws/shares", ALICE);
    assert_eq!(v["shares"], serde_json::json!([]), "{v}");
    let (_, v) = procs.api_get("/api/v1/workspaces/capped/shares", ALICE);
    assert_eq!(v["shares"][0]["port"], 3000, "{v}");
}

#[test]
fn api_refusals_print_the_reason_and_exit_1() {
    let procs = Procs::start("share-refusals", "localhost", &[]);
    let url = format!("http://{}", procs.domain);
    let as_user = |token: &str, args: &[&str]| {
        let env = [("FERRY_GATEWAY_URL", url.as_str()), ("FERRY_TOKEN", token)];
        text(&procs.ferry(args, &env))
    };

    // Above the template's cap, which is named.
    let (code, _, err) = as_user(ALICE, &["share", "capped", "8080", "--level", "public"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("which is authenticated"), "{err}");

    // An app label longer than 63 characters.
    let ws = "a-workspace-name-of-26-chr";
    let args = [
        "share",
        ws,
        "18080",
        "--level",
        "public",
        "--protocol",
        "https",
    ];
    let (code, _, err) = as_user(CAROL, &args);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("at most 63"), "{err}");

    // A workspace that does not exist, or that someone else owns.
    let (code, _, err) = as_user(ALICE, &["share", "nope", "8080", "--level", "public"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("you own no workspace named `nope`"), "{err}");
    let (code, _, err) = as_user(BOB, &["unshare", "ws", "8080"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("you own no workspace named `ws`"), "{err}");

    // A bad token.
    let (code, _, err) = as_user("wrong-token", &["share", "ls"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("did not accept the API token"), "{err}");

    // A reserved port.
    let (code, _, err) = as_user(ALICE, &["share", "ws", "8", "--level", "public"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("reserved for the agent"), "{err}");
}

// Arguments, environment, and words the error must contain.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn usage_errors_exit_2_before_any_request() {
    let procs = Procs::start("share-usage", "localhost", &[]);
    let url = format!("http://{}", procs.domain);
    let env = [("FERRY_GATEWAY_URL", url.as_str()), ("FERRY_TOKEN", ALICE)];
    let cases: [Case; 6] = [
        (&["share", "ws", "8080"], &env, "--level"),
        (
            &["share", "ws", "8080", "--level", "everyone"],
            &env,
            "everyone",
        ),
        (&["share", "ws", "http", "--level", "public"], &env, "http"),
        (
            &["share", "ls"],
            &[("FERRY_TOKEN", ALICE)],
            "no gateway URL",
        ),
        (
            &["share", "ls"],
            &[("FERRY_GATEWAY_URL", &url)],
            "no API token",
        ),
        (
            &["share", "ls", "--gateway-url", "ftp://apps.example.test"],
            &[("FERRY_TOKEN", ALICE)],
            "expected http://HOST[:PORT] or https://HOST[:PORT]",
        ),
    ];
    for (args, env, words) in cases {
        let (code, _, err) = text(&procs.ferry(args, env));
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(words), "{args:?}: {err}");
    }
    // Nothing was shared by any of them.
    let (_, v) = procs.api_get("/api/v1/workspaces/ws/shares", ALICE);
    assert_eq!(v["shares"], serde_json::json!([]), "{v}");
}

#[test]
fn settings_come_from_the_config_file_too() {
    let procs = Procs::start("share-config", "localhost", &[]);
    let token = procs.dir.join("token");
    std::fs::write(&token, format!("{ALICE}\n")).unwrap();
    let config = procs.dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "private_key_file = \"unused.key\"\n[gateway]\nurl = \"http://{}\"\ntoken_file = \"token\"\n",
            procs.domain
        ),
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let (code, out, err) = text(&procs.ferry(
        &["share", "ws", "3000", "--level", "authenticated"],
        &[("FERRY_CONFIG", &config)],
    ));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("authenticated"), "{out}");

    // A typo in the table is reported, not ignored.
    std::fs::write(
        procs.dir.join("bad.toml"),
        "[gateway]\nulr = \"http://x\"\n",
    )
    .unwrap();
    let bad = procs.dir.join("bad.toml").to_string_lossy().into_owned();
    let (code, _, err) = text(&procs.ferry(&["share", "ls"], &[("FERRY_CONFIG", &bad)]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("ulr"), "{err}");
}

#[test]
fn a_missing_gateway_binary_is_a_clear_error() {
    // A hard link in cargo's scratch folder (same file system as the binary): a copy would be
    // open for writing while parallel tests fork, and exec would then fail with ETXTBSY.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ferry-lonely-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let lonely = dir.join("ferry");
    std::fs::hard_link(procs::ferry_bin(), &lonely).unwrap();
    let mut cmd = std::process::Command::new(&lonely);
    cmd.args(["share", "ls"]);
    let out = procs::run_bounded(cmd, procs::COMMAND_TIMEOUT);
    let _ = std::fs::remove_dir_all(&dir);
    let (code, _, err) = text(&out);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("ferry-gateway is not installed next to ferry"),
        "{err}"
    );
}
