//! The command line: usage errors exit 2 before any network activity, signals exit 0, keys
//! round-trip, and `ferry demo` passes.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::str::FromStr;
use std::time::Duration;

use ferry_crypto::keys::PrivateKey;
use ferry_tests::*;

const RUN: Duration = Duration::from_secs(10);

/// A UDP socket of ours where a port-forward's endpoint points, to see whether it sends.
struct Endpoint {
    socket: UdpSocket,
    addr: SocketAddr,
}

impl Endpoint {
    fn new() -> Endpoint {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind endpoint");
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        Endpoint { socket, addr }
    }

    /// The next datagram, if one arrives within 300 ms.
    fn datagram(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        self.socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    }
}

struct Keys {
    _dir: TempDir,
    key_file: String,
    agent_public: String,
}

fn keys() -> Keys {
    let dir = TempDir::new();
    let client = KeyPair::generate();
    let key_file = dir
        .write("client.key", &format!("{}\n", client.private))
        .display()
        .to_string();
    Keys {
        _dir: dir,
        key_file,
        agent_public: KeyPair::generate().public,
    }
}

fn port_forward_args<'a>(keys: &'a Keys, endpoint: &'a str) -> Vec<&'a str> {
    vec![
        "port-forward",
        "ws",
        "--endpoint",
        endpoint,
        "--peer-public-key",
        &keys.agent_public,
        "--private-key-file",
        &keys.key_file,
    ]
}

// 9a. Malformed specs: exit 2 at once, the message names the spec, and nothing is sent.
#[test]
fn malformed_spec_exits_2_naming_it_before_any_network_activity() {
    let _guard = light(Duration::from_secs(120));
    let keys = keys();
    let endpoint = Endpoint::new();
    let ep = endpoint.addr.to_string();
    let local = free_port();
    let good = format!("127.0.0.1:{local}:80");
    let bad = [
        "abc",
        "0",
        "70000",
        "8000-7000",
        "8000-8001-8002",
        "8000-8001:9000-9005",
        "::1:8000",
        "[::1:8000",
        "localhost:8000:80",
        "127.0.0.1:",
        "1.2.3.4.5:8000",
        "8000:0",
        "[fe80::1%eth0]:8000",
        "127.0.0.1:8000:80:90",
        "8000,,9000",
    ];
    for protocol in ["--tcp", "--udp"] {
        for spec in bad {
            let mut args = port_forward_args(&keys, &ep);
            // A valid spec first: even it must not be opened.
            args.extend([protocol, good.as_str(), protocol, spec]);
            let out = run_ferry(&args, None, &[], RUN);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{protocol} {spec:?} did not exit 2: {out:?}"
            );
            assert!(
                out.stderr.contains(&format!("{spec:?}")),
                "{protocol} {spec:?}: the message does not name the spec: {:?}",
                out.stderr
            );
            assert!(
                out.elapsed < Duration::from_secs(2),
                "{protocol} {spec:?}: took {:?} to fail",
                out.elapsed
            );
            assert!(
                !out.stderr.contains("Forwarding"),
                "{protocol} {spec:?}: it opened listeners: {:?}",
                out.stderr
            );
            assert!(
                out.stdout.is_empty(),
                "{protocol} {spec:?}: stdout {:?}",
                out.stdout
            );
        }
    }
    assert_eq!(
        endpoint.datagram(),
        None,
        "a port-forward with a malformed spec sent something to its endpoint"
    );
    // The valid spec's port was never held: it is still free.
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", local)).is_ok(),
        "port {local} of the valid spec is taken"
    );
}

// 9a'. The other usage errors also exit 2 before any network activity.
#[test]
fn other_usage_errors_exit_2_before_any_network_activity() {
    let _guard = light(Duration::from_secs(120));
    let keys = keys();
    let endpoint = Endpoint::new();
    let ep = endpoint.addr.to_string();
    let (a, b) = (free_port(), free_port());
    let dup_first = format!("127.0.0.1:{a}:80");
    let dup_second = format!("{a}:81");
    let ok_spec = format!("127.0.0.1:{b}:80");

    // (arguments, environment, what the message must mention)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let mut cases: Vec<Case> = Vec::new();
    // Two forwards on one listener, across flags.
    let mut dup = port_forward_args(&keys, &ep);
    dup.extend(["--tcp", &dup_first, "--tcp", &dup_second]);
    cases.push((dup, vec![], vec![&dup_first, &dup_second]));
    // A malformed spec from the environment.
    cases.push((
        port_forward_args(&keys, &ep),
        vec![("FERRY_PORT_FORWARD_TCP", "not-a-port")],
        vec!["not-a-port"],
    ));
    // Nothing to forward.
    cases.push((
        port_forward_args(&keys, &ep),
        vec![],
        vec!["nothing to forward"],
    ));
    // A bad agent key.
    let mut bad_key = vec![
        "port-forward",
        "ws",
        "--endpoint",
        &ep,
        "--peer-public-key",
        "bm90IGEga2V5",
        "--private-key-file",
        &keys.key_file,
    ];
    bad_key.extend(["--tcp", &ok_spec]);
    cases.push((bad_key, vec![], vec!["--peer-public-key"]));
    // A missing key file.
    let mut no_file = vec![
        "port-forward",
        "ws",
        "--endpoint",
        &ep,
        "--peer-public-key",
        &keys.agent_public,
        "--private-key-file",
        "/nonexistent/ferry-tests/key",
    ];
    no_file.extend(["--tcp", &ok_spec]);
    cases.push((no_file, vec![], vec!["/nonexistent/ferry-tests/key"]));
    // An unknown flag.
    let mut unknown = port_forward_args(&keys, &ep);
    unknown.extend(["--tcp", &ok_spec, "--no-such-flag"]);
    cases.push((unknown, vec![], vec!["--no-such-flag"]));
    // MTUs the tunnel cannot use (smoltcp panicked on these before they were checked).
    for mtu in ["10", "0", "1279", "9001"] {
        let mut low = port_forward_args(&keys, &ep);
        low.extend(["--tcp", &ok_spec, "--mtu", mtu]);
        cases.push((low, vec![], vec!["--mtu"]));
    }
    cases.push((
        vec![
            "agent",
            "--listen",
            "127.0.0.1:1",
            "--private-key-file",
            &keys.key_file,
            "--mtu",
            "0",
        ],
        vec![],
        vec!["--mtu"],
    ));
    let dir = TempDir::new();
    let conf = dir.write(
        "small.conf",
        &format!(
            "[Interface]\nPrivateKey = {}\nAddress = 10.9.0.2/32\nMTU = 40\n\n[Peer]\n\
             PublicKey = {}\nEndpoint = {ep}\nAllowedIPs = 10.9.0.1/32\n",
            KeyPair::generate().private,
            keys.agent_public
        ),
    );
    let conf = conf.display().to_string();
    cases.push((
        vec![
            "port-forward",
            "ws",
            "--wg-config",
            &conf,
            "--tcp",
            &ok_spec,
        ],
        vec![],
        vec![&conf, "MTU 40"],
    ));

    for (args, env, needles) in cases {
        let out = run_ferry(&args, None, &env, RUN);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {out:?}");
        for needle in needles {
            assert!(
                out.stderr.contains(needle),
                "{args:?} {env:?}: the message lacks {needle:?}: {:?}",
                out.stderr
            );
        }
        assert!(
            out.elapsed < Duration::from_secs(2),
            "{args:?}: took {:?}",
            out.elapsed
        );
    }
    assert_eq!(
        endpoint.datagram(),
        None,
        "a port-forward with a usage error sent something to its endpoint"
    );
}

// 9b. SIGTERM and SIGINT end a running port-forward and agent with exit code 0, and the
// listener closes with it.
#[test]
fn sigterm_and_sigint_exit_0() {
    let _guard = light(Duration::from_secs(120));
    let echo = TcpService::start(Kind::Echo);
    let cases = [
        (Backend::Uring, libc::SIGTERM, "SIGTERM"),
        (Backend::Epoll, libc::SIGTERM, "SIGTERM"),
        (Backend::Uring, libc::SIGINT, "SIGINT"),
        (Backend::Epoll, libc::SIGINT, "SIGINT"),
    ];
    for (backend, signal, name) in cases {
        let name = format!("{name} ({backend:?})");
        let mut ws = Workspace::builder(backend).tcp_to(echo.port()).start();
        echo_round_trip(ws.tcp[0], b"up", Duration::from_secs(5)).expect("echo");
        ws.forward.signal(signal);
        let status = ws.forward.wait_exit(Duration::from_secs(5));
        assert!(
            status.is_some_and(|s| s.code() == Some(0)),
            "port-forward after {name}: {status:?}\n{}",
            ws.forward.log()
        );
        assert!(
            TcpStream::connect_timeout(&ws.tcp[0], CONNECT_TIMEOUT).is_err(),
            "the listener is still open after the port-forward exited"
        );
        ws.agent.signal(signal);
        let status = ws.agent.wait_exit(Duration::from_secs(5));
        assert!(
            status.is_some_and(|s| s.code() == Some(0)),
            "agent after {name}: {status:?}\n{}",
            ws.agent.log()
        );
    }
}

// A port-forward still waiting for its first handshake also exits 0 on SIGTERM; meanwhile it
// sent WireGuard handshake initiations to its endpoint (and only there).
#[test]
fn sigterm_before_handshake_exits_0() {
    let _guard = light(Duration::from_secs(60));
    let keys = keys();
    let endpoint = Endpoint::new();
    let ep = endpoint.addr.to_string();
    let spec = format!("127.0.0.1:{}:80", free_port());
    let mut args: Vec<String> = port_forward_args(&keys, &ep)
        .into_iter()
        .map(String::from)
        .collect();
    args.extend(["--tcp".to_string(), spec]);
    for backend in [Backend::Uring, Backend::Epoll] {
        let mut forward = Ferry::spawn("port-forward", &args, &[("FERRY_IO", backend.env())]);
        forward.expect_line("Forwarding tcp", READY_TIMEOUT);
        let initiation = endpoint
            .datagram()
            .or_else(|| endpoint.datagram())
            .expect("a handshake initiation at the endpoint");
        assert_eq!(
            initiation.len(),
            148,
            "not a WireGuard initiation: {initiation:?}"
        );
        assert_eq!(&initiation[..4], &[1, 0, 0, 0]);
        forward.signal(libc::SIGTERM);
        let status = forward.wait_exit(Duration::from_secs(5));
        assert!(
            status.is_some_and(|s| s.code() == Some(0)),
            "[{backend:?}] {status:?}\n{}",
            forward.log()
        );
        assert!(
            forward.log().contains("no handshake completed;"),
            "[{backend:?}] no closing line saying the handshake never completed\n{}",
            forward.log()
        );
        while endpoint.datagram().is_some() {}
    }
}

// 9c. keygen | pubkey: 44-character base64 keys that match ferry-crypto's derivation.
#[test]
fn keygen_pubkey_round_trip() {
    let _guard = light(Duration::from_secs(60));
    let a = KeyPair::generate();
    let b = KeyPair::generate();
    assert_ne!(a.private, b.private, "two keygen runs gave the same key");
    for key in [&a.private, &a.public, &b.private, &b.public] {
        assert_eq!(key.len(), 44, "{key:?} is not 44 characters");
        assert!(key.ends_with('='), "{key:?}");
        let bytes = base64_decode(key).unwrap_or_else(|| panic!("{key:?} is not base64"));
        assert_eq!(bytes.len(), 32, "{key:?} does not hold 32 bytes");
    }
    // Clamped like `wg genkey`.
    let private = base64_decode(&a.private).expect("base64");
    assert_eq!(private[0] & 7, 0, "low bits not cleared");
    assert_eq!(private[31] & 0xc0, 0x40, "high bits not clamped");
    // Same derivation as the library, and stable.
    let expected = PrivateKey::from_str(&a.private)
        .expect("ferry-crypto parses keygen's output")
        .public_key()
        .to_string();
    assert_eq!(a.public, expected);
    assert_eq!(pubkey_of(&a.private), a.public);
    // Whitespace around the key is ignored; garbage is a usage error.
    assert_eq!(pubkey_of(&format!("  {}  \n\n", a.private)), a.public);
    for junk in [
        "",
        "hello",
        "AAAA",
        "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!=",
    ] {
        let out = run_ferry(&["pubkey"], Some(junk), &[], RUN);
        assert_eq!(out.status.code(), Some(2), "pubkey of {junk:?}: {out:?}");
        assert!(out.stdout.is_empty());
    }
}

fn pubkey_of(private: &str) -> String {
    let out = run_ferry(&["pubkey"], Some(private), &[], RUN);
    assert!(out.status.success(), "{out:?}");
    out.stdout.trim().to_string()
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let text = text.trim_end_matches('=');
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

// 9d. `ferry demo --mebibytes 16` passes every check, on both backends.
fn demo(backend: Backend) {
    let _guard = light(Duration::from_secs(150));
    let out = run_ferry(
        &["demo", "--mebibytes", "16"],
        None,
        &[("FERRY_IO", backend.env())],
        Duration::from_secs(120),
    );
    eprintln!(
        "[{backend:?}] ferry demo took {:?}:\n{}",
        out.elapsed, out.stdout
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("all checks passed"), "{}", out.stdout);
    assert!(!out.stdout.contains("FAIL"), "{}", out.stdout);
    let backend_name = match backend {
        Backend::Uring => "io_uring",
        Backend::Epoll => "epoll",
    };
    assert!(
        out.stdout.contains(&format!("backend {backend_name}")),
        "FERRY_IO={} was not honoured: {}",
        backend.env(),
        out.stdout
    );
    assert!(out.stdout.contains("127.0.0.1"), "{}", out.stdout);
}

both_backends!(demo_16_mib_exits_0 => super::demo);

#[test]
fn version_and_help_exit_0() {
    let _guard = light(Duration::from_secs(30));
    for args in [
        &["--version"][..],
        &["--help"],
        &["port-forward", "--help"],
        &["agent", "--help"],
    ] {
        let out = run_ferry(args, None, &[], RUN);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert!(!out.stdout.is_empty());
    }
    let out = run_ferry(&["no-such-command"], None, &[], RUN);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
