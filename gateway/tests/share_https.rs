//! `ferry share` against a gateway that serves HTTPS: the real `ferry` binary and a real
//! gateway on loopback with a certificate made at test time. The certificate is trusted only
//! through `--ca-file` (or its variable or config key), never by accepting anything.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod procs;
mod support;

use std::process::Output;

use common::ALICE;
use procs::Procs;
use support::self_signed;

fn text(out: &Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// A gateway serving HTTPS under `localhost:PORT` with a new certificate for `localhost` and
// its wildcard; the certificate's PEM is kept as `ca.pem` in the test's folder.
fn https_gateway(name: &str) -> (Procs, String) {
    let cert = self_signed(&["localhost", "*.localhost"]);
    let files = [
        ("gw.crt", cert.cert_pem.as_str()),
        ("gw-key.pem", cert.key_pem.as_str()),
        ("ca.pem", cert.cert_pem.as_str()),
    ];
    let tls = "tls_cert = \"gw.crt\"\ntls_key = \"gw-key.pem\"";
    let procs = Procs::start_with(name, "localhost", &[], tls, &files);
    let ca = procs.dir.join("ca.pem").to_string_lossy().into_owned();
    (procs, ca)
}

#[test]
fn share_list_and_unshare_over_https_with_a_ca_file() {
    let (procs, ca) = https_gateway("share-https");
    let url = format!("https://{}", procs.domain);
    let env = [("FERRY_GATEWAY_URL", url.as_str()), ("FERRY_TOKEN", ALICE)];
    let ferry = |args: &[&str]| text(&procs.ferry(args, &env));

    // Share: the gateway answers with an https app URL.
    let (code, out, err) = ferry(&["share", "ws", "8080", "--level", "public", "--ca-file", &ca]);
    assert_eq!(code, Some(0), "{err}");
    let app_url = format!("https://8080--main--ws--alice.{}/", procs.domain);
    assert!(out.contains(&app_url) && out.contains("public"), "{out}");

    // Listed, with the CA named by the variable this time.
    let with_ca = [
        ("FERRY_GATEWAY_URL", url.as_str()),
        ("FERRY_TOKEN", ALICE),
        ("FERRY_GATEWAY_CA", ca.as_str()),
    ];
    let (code, out, err) = text(&procs.ferry(&["share", "ls", "ws"], &with_ca));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&app_url) && out.contains("public"), "{out}");

    // Unshared, then the list is empty.
    let (code, out, err) = ferry(&["unshare", "ws", "8080", "--ca-file", &ca]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("back to owner only"), "{out}");
    let (code, out, err) = ferry(&["share", "ls", "ws", "--ca-file", &ca]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("no shares"), "{out}");
}

#[test]
fn the_ca_file_can_come_from_the_config_file() {
    let (procs, _) = https_gateway("share-https-config");
    std::fs::write(procs.dir.join("token"), format!("{ALICE}\n")).unwrap();
    let config = procs.dir.join("config.toml");
    let table = format!(
        "private_key_file = \"unused.key\"\n[gateway]\nurl = \"https://{}\"\n\
         token_file = \"token\"\nca_file = \"ca.pem\"\n",
        procs.domain
    );
    std::fs::write(&config, table).unwrap();
    let config = config.to_string_lossy().into_owned();
    let args = ["share", "ws", "3000", "--level", "authenticated"];
    let (code, out, err) = text(&procs.ferry(&args, &[("FERRY_CONFIG", &config)]));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("authenticated"), "{out}");
}

#[test]
fn an_untrusted_certificate_fails_with_advice() {
    let (procs, ca) = https_gateway("share-https-untrusted");
    let by_name = format!("https://{}", procs.domain);
    // The same gateway by address: the certificate names only localhost.
    let by_address = format!("https://{}", procs.gateway);
    let cases: [(&str, &[&str]); 2] = [
        (&by_name, &["share", "ws", "8080", "--level", "public"]),
        (
            &by_address,
            &["share", "ws", "8080", "--level", "public", "--ca-file", &ca],
        ),
    ];
    for (url, args) in cases {
        let env = [("FERRY_GATEWAY_URL", url), ("FERRY_TOKEN", ALICE)];
        let (code, _, err) = text(&procs.ferry(args, &env));
        assert_eq!(code, Some(1), "{url} {args:?}: {err}");
        assert!(err.contains("was not trusted"), "{url} {args:?}: {err}");
        assert!(err.contains("--ca-file"), "{url} {args:?}: {err}");
    }

    // Nothing was shared: checked with the CA.
    let env = [
        ("FERRY_GATEWAY_URL", by_name.as_str()),
        ("FERRY_TOKEN", ALICE),
    ];
    let (code, out, err) = text(&procs.ferry(&["share", "ls", "--ca-file", &ca], &env));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("no shares"), "{out}");
}

#[test]
fn an_unusable_ca_file_is_a_usage_error() {
    let (procs, _) = https_gateway("share-https-bad-ca");
    let url = format!("https://{}", procs.domain);
    let env = [("FERRY_GATEWAY_URL", url.as_str()), ("FERRY_TOKEN", ALICE)];
    let garbage = procs.dir.join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let broken = procs.dir.join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = procs.dir.join("missing.pem");
    for file in [&garbage, &broken, &missing] {
        let file = file.to_string_lossy().into_owned();
        let (code, _, err) = text(&procs.ferry(&["share", "ls", "--ca-file", &file], &env));
        assert_eq!(code, Some(2), "{file}: {err}");
        assert!(err.contains("cannot use CA file"), "{file}: {err}");
    }
}
