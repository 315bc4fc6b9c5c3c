//! The tunnel against the wrong keys, garbage on the agent's port, and an agent restart.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::time::{Duration, Instant};

use ferry_crypto::keys::{PrivateKey, PublicKey};
use ferry_crypto::session::Session;
use ferry_tests::*;

/// Connects through a forward whose tunnel must not work, sends a request, and checks that no
/// byte comes back within `wait` (the connection may be closed, reset or left open).
fn assert_no_data_through(addr: SocketAddr, wait: Duration) {
    let Ok(mut s) = try_connect(addr) else {
        return; // refused outright: no data either
    };
    s.set_read_timeout(Some(wait)).expect("timeout");
    let _ = s.write_all(b"anyone there?");
    let mut buf = [0u8; 64];
    let started = Instant::now();
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "{n} bytes came through a tunnel that must not work: {:?}",
            &buf[..n]
        ),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            assert!(started.elapsed() >= wait - Duration::from_millis(50));
        }
        Err(_) => {} // reset
    }
}

// 6a. The agent does not list the port-forward's key: nothing is carried, and the agent says
// why.
fn unknown_client_key(backend: Backend) {
    let _guard = light(Duration::from_secs(60));
    let echo = TcpService::start(Kind::Echo);
    let stranger = KeyPair::generate();
    let mut ws = Workspace::builder(backend)
        .agent_peers(vec![stranger.public.clone()])
        .tcp_to(echo.port())
        .no_wait_ready()
        .start();
    let line = ws
        .agent
        .expect_line("not an allowed peer", Duration::from_secs(10));
    assert!(
        line.contains(&ws.client_key.public),
        "the warning does not name the refused key {}: {line}",
        ws.client_key.public
    );
    assert_no_data_through(ws.tcp[0], Duration::from_secs(3));
    assert_eq!(
        echo.accepted(),
        0,
        "the agent connected to the service for an unknown peer"
    );
    assert!(
        !ws.forward.log().lines().any(|l| l == "Ready"),
        "the port-forward reported Ready without a handshake:\n{}",
        ws.forward.log()
    );
    ws.assert_alive();
}

both_backends!(agent_refuses_unknown_client_key => super::unknown_client_key);

// 6b. The port-forward expects another agent key: no handshake, nothing carried.
fn wrong_agent_key(backend: Backend) {
    let _guard = light(Duration::from_secs(60));
    let echo = TcpService::start(Kind::Echo);
    let stranger = KeyPair::generate();
    let mut ws = Workspace::builder(backend)
        .forward_peer_key(stranger.public.clone())
        .tcp_to(echo.port())
        .no_wait_ready()
        .start();
    assert_no_data_through(ws.tcp[0], Duration::from_secs(3));
    assert_eq!(
        echo.accepted(),
        0,
        "data reached the service through a wrong agent key"
    );
    // The port-forward tells the user after 5 s.
    ws.forward
        .expect_line("no handshake with the agent", Duration::from_secs(10));
    assert!(
        !ws.forward.log().lines().any(|l| l == "Ready"),
        "the port-forward reported Ready:\n{}",
        ws.forward.log()
    );
    ws.assert_alive();
}

both_backends!(forward_with_wrong_agent_key_carries_nothing => super::wrong_agent_key);

// A preshared key must match: the same one on both sides works, one side alone does not.
fn preshared_key(backend: Backend) {
    let _guard = light(Duration::from_secs(60));
    let echo = TcpService::start(Kind::Echo);
    let dir = TempDir::new();
    let psk = dir.write("psk", &format!("{}\n", KeyPair::generate().private));
    let psk = psk.display().to_string();

    let ws = Workspace::builder(backend)
        .agent_args(&["--preshared-key-file", &psk])
        .forward_args(&["--preshared-key-file", &psk])
        .tcp_to(echo.port())
        .start();
    echo_round_trip(ws.tcp[0], b"with the same psk", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("matching preshared keys: {e}\n{}", ws.logs()));
    drop(ws);
    assert_eq!(echo.accepted(), 1);

    let mut ws = Workspace::builder(backend)
        .agent_args(&["--preshared-key-file", &psk])
        .tcp_to(echo.port())
        .no_wait_ready()
        .start();
    assert_no_data_through(ws.tcp[0], Duration::from_secs(3));
    assert_eq!(
        echo.accepted(),
        1,
        "data went through with only the agent holding a psk"
    );
    ws.assert_alive();
}

both_backends!(preshared_key_must_match => super::preshared_key);

/// `n` datagrams that are not valid traffic for the agent: random bytes, WireGuard headers
/// with random or truncated bodies, data messages aimed at live-looking receiver indices,
/// oversized and empty datagrams, and real handshake initiations from unknown keys (whole,
/// truncated and with a flipped byte).
fn garbage(n: usize, agent_public: &str, seed: u64) -> Vec<Vec<u8>> {
    let agent = PublicKey::from_str(agent_public).expect("agent key");
    let mut rng = Pattern::new(seed);
    let mut rand = |len: usize| {
        let mut v = vec![0u8; len];
        rng.fill(&mut v);
        v
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let r = u32::from_le_bytes(rand(4).try_into().expect("4 bytes")) as usize;
        let d = match i % 12 {
            0 => rand(r % 1501),
            1 => wg(1, rand(144)),     // initiation, random body
            2 => wg(1, rand(r % 144)), // truncated initiation
            3 => wg(2, rand(88)),      // response
            4 => wg(3, rand(60)),      // cookie reply
            5 => {
                // transport data to receiver indices near the live ones, random counter
                let mut body = ((r % 8) as u32).to_le_bytes().to_vec();
                body.extend(rand(8 + 16 + r % 200));
                wg(4, body)
            }
            6 => wg(4, rand(r % 28)), // truncated transport header
            7 => rand(9_000 + r % 56_000),
            8 => Vec::new(),
            9 => initiation_from_stranger(&agent),
            10 => {
                let mut d = initiation_from_stranger(&agent);
                d.truncate(r % d.len());
                d
            }
            _ => {
                let mut d = initiation_from_stranger(&agent);
                let at = r % d.len();
                d[at] ^= 0x40;
                d
            }
        };
        out.push(d);
    }
    out
}

fn wg(kind: u8, body: Vec<u8>) -> Vec<u8> {
    let mut d = vec![kind, 0, 0, 0];
    d.extend(body);
    d
}

// A real handshake initiation to `agent` from a key it does not know.
fn initiation_from_stranger(agent: &PublicKey) -> Vec<u8> {
    let mut session = Session::new(&PrivateKey::generate(), *agent, None, None, 0);
    let mut buf = vec![0u8; 512];
    let len = session.force_handshake(&mut buf).expect("an initiation");
    buf.truncate(len);
    buf
}

// 7. A thousand garbage datagrams at the agent's port, during a transfer: nothing crashes, the
// transfer completes intact, and new flows still work.
fn garbage_flood(backend: Backend) {
    let _guard = heavy(Duration::from_secs(120));
    let echo = TcpService::start(Kind::Echo);
    let sink = TcpService::start(Kind::Sink);
    let mut ws = Workspace::builder(backend)
        .tcp_to(echo.port())
        .tcp_to(sink.port())
        .start();
    echo_round_trip(ws.tcp[0], b"before", Duration::from_secs(5)).expect("echo before the flood");

    let datagrams = garbage(1_000, &ws.agent_key.public, 7);
    let target = ws.agent_addr;
    let attacker = UdpSocket::bind(if target.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    })
    .expect("bind attacker socket");
    let sink_addr = ws.tcp[1];
    let upload = std::thread::spawn(move || upload_to_sink(sink_addr, 32 << 20, 99));
    let started = Instant::now();
    let mut sent = 0u64;
    for (i, d) in datagrams.iter().enumerate() {
        if attacker.send_to(d, target).is_ok() {
            sent += 1;
        }
        if i % 50 == 49 {
            // Pace a little, so that the agent reads them rather than the kernel dropping them.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    eprintln!(
        "[{backend:?}] sent {sent} garbage datagrams in {:?}",
        started.elapsed()
    );
    assert!(sent >= 990, "only {sent} garbage datagrams could be sent");

    let up = upload
        .join()
        .expect("upload thread")
        .unwrap_or_else(|e| panic!("the transfer during the flood failed: {e}\n{}", ws.logs()));
    assert_eq!(up.received_bytes, 32 << 20);
    assert_eq!(
        up.received_sha256, up.sent_sha256,
        "the transfer during the flood was corrupted"
    );

    ws.assert_alive();
    echo_round_trip(ws.tcp[0], b"after", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("echo after the flood: {e}\n{}", ws.logs()));
    // The real initiations among the garbage were parsed, not just dropped by the kernel.
    ws.agent
        .expect_line("not an allowed peer", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    ws.assert_alive();
    for l in ws.agent.log().lines() {
        assert!(!l.contains("panicked"), "agent: {l}");
    }
    // Every garbage datagram is counted as a drop (empty ones too), as the agent's closing
    // line says. A few of the legitimate peer's datagrams may be counted too.
    ws.agent.signal(libc::SIGTERM);
    let line = ws.agent.expect_line("dropped:", Duration::from_secs(10));
    let counted: u64 = line
        .split("dropped:")
        .nth(1)
        .unwrap_or_default()
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(
        counted * 100 >= sent * 99,
        "the agent counted {counted} drops for {sent} garbage datagrams: {line}"
    );
}

both_backends!(garbage_datagrams_leave_agent_and_tunnel_working => super::garbage_flood);

// 8. The agent is killed and a new one starts on the same port with the same key: new
// connections through the same port-forward work again within 20 s.
fn agent_restart(backend: Backend) {
    const BOUND: Duration = Duration::from_secs(20);
    let _guard = light(Duration::from_secs(120));
    let echo = TcpService::start(Kind::Echo);
    let mut ws = Workspace::builder(backend).tcp_to(echo.port()).start();
    echo_round_trip(ws.tcp[0], b"before", Duration::from_secs(5)).expect("echo before restart");

    ws.restart_agent();
    let took = echo_eventually(ws.tcp[0], b"after restart", Duration::from_secs(5), BOUND)
        .unwrap_or_else(|e| {
            panic!(
                "no new connection within {BOUND:?} of the restart: {e}\n{}",
                ws.logs()
            )
        });
    eprintln!("[{backend:?}] a new connection worked {took:?} after the agent restart");
    echo_round_trip(ws.tcp[0], b"and again", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("second connection after restart: {e}\n{}", ws.logs()));
    assert!(echo.accepted() >= 3);
    ws.assert_alive();
}

both_backends!(new_connections_work_after_agent_restart => super::agent_restart);

// A connection open while the agent restarts died with the old agent: once the client uses it
// again (after the tunnel is back), it must end (reset or EOF), not hang.
fn connection_across_restart(backend: Backend) {
    const WAIT: Duration = Duration::from_secs(10);
    let _guard = light(Duration::from_secs(120));
    let echo = TcpService::start(Kind::Echo);
    let mut ws = Workspace::builder(backend).tcp_to(echo.port()).start();
    let mut old = connect(ws.tcp[0]);
    old.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    old.read_exact(&mut buf).expect("echo on the connection");

    ws.restart_agent();
    echo_eventually(
        ws.tcp[0],
        b"after restart",
        Duration::from_secs(5),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("the tunnel did not come back: {e}\n{}", ws.logs()));

    old.set_read_timeout(Some(WAIT)).expect("timeout");
    let _ = old.write_all(b"still there?");
    let since = Instant::now();
    let result = old.read(&mut buf);
    match result {
        Ok(0) => {}
        Ok(n) => panic!("{n} bytes came back on a flow the new agent never knew"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
            "the connection from before the restart still hangs {WAIT:?} after it was used \
             again (its flow is gone)\n{}",
            ws.logs()
        ),
        Err(_) => {}
    }
    eprintln!(
        "[{backend:?}] the old connection ended {:?} after use: {result:?}",
        since.elapsed()
    );
}

both_backends!(connection_open_across_agent_restart_ends_when_used => super::connection_across_restart);

// The outer tunnel over IPv6 loopback: agent on [::1], port-forward endpoint [::1].
fn ipv6_endpoint(backend: Backend) {
    let _guard = light(Duration::from_secs(60));
    let echo = TcpService::start(Kind::Echo);
    let ws = Workspace::builder(backend)
        .agent_on_ipv6()
        .tcp_to(echo.port())
        .start();
    echo_round_trip(
        ws.tcp[0],
        &Pattern::bytes(3, 300_000),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("echo over an IPv6 outer tunnel: {e}\n{}", ws.logs()));
}

both_backends!(tunnel_over_ipv6_endpoint => super::ipv6_endpoint);

// A port-forward that dies while a flow is jammed both ways (its client and the workspace
// service both write, neither reads) must not leave the agent's connection to the service open:
// the agent's stack gives the flow up after its TCP timeout (60 s) and resets the service's
// connection, even though the agent's write to the service can never complete.
fn dead_forward_with_jammed_flow(backend: Backend) {
    const BLOCK: usize = 64 << 10;
    /// The agent's TCP timeout (60 s) plus margin: a hang guard, not a speed target.
    const RELEASE_BOUND: Duration = Duration::from_secs(120);
    let _guard = heavy(Duration::from_secs(240));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_write_timeout(Some(RELEASE_BOUND + Duration::from_secs(60)))
            .expect("timeout");
        let block = vec![7u8; BLOCK];
        // Writes until the connection fails; never reads.
        let error = loop {
            if let Err(e) = s.write(&block) {
                break e;
            }
        };
        let _ = tx.send(error.kind());
    });
    let mut ws = Workspace::builder(backend).tcp_to(port).start();
    let mut client = connect(ws.tcp[0]);
    client
        .set_write_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let block = vec![9u8; BLOCK];
    let mut pushed = 0usize;
    while pushed < (256 << 20) {
        match client.write(&block) {
            Ok(n) => pushed += n,
            Err(_) => break, // blocked for 2 s: the flow is jammed
        }
    }
    ws.forward.kill();
    let killed = Instant::now();
    let kind = rx.recv_timeout(RELEASE_BOUND).unwrap_or_else(|_| {
        panic!(
            "the agent still holds its connection to the service {RELEASE_BOUND:?} after the \
             port-forward died (client pushed {pushed} bytes)\n{}",
            ws.logs()
        )
    });
    eprintln!(
        "[{backend:?}] the service's connection failed ({kind:?}) {:.1?} after the \
         port-forward died",
        killed.elapsed()
    );
    assert!(
        matches!(kind, ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        "the service's write failed with {kind:?}, not a reset"
    );
    drop(client);
}

both_backends!(agent_releases_jammed_flow_of_dead_forward => super::dead_forward_with_jammed_flow);
