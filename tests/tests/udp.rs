//! UDP through the tunnel: datagrams from 1 byte to 65,000 bytes arrive whole and promptly,
//! each local client gets its own replies, and IPv6 binds work. Both I/O backends.

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use ferry_tests::*;

// A round trip on loopback takes well under a millisecond when healthy; a second is generous.
const PROMPT: Duration = Duration::from_secs(1);
// How long to keep waiting after PROMPT, to tell a late datagram from a lost one.
const LATE: Duration = Duration::from_secs(30);

/// Sends `msg`, waits for one datagram back (up to [`LATE`]), checks it is `msg` whole, and
/// returns how long the round trip took.
fn round_trip(socket: &UdpSocket, msg: &[u8]) -> Duration {
    let size = msg.len();
    let started = Instant::now();
    socket
        .send(msg)
        .unwrap_or_else(|e| panic!("{size} B: send: {e}"));
    let mut buf = vec![0u8; 70_000];
    let n = loop {
        match socket.recv(&mut buf) {
            Ok(n) => break n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                assert!(
                    started.elapsed() < LATE,
                    "{size} B: no datagram came back within {LATE:?}"
                );
            }
            Err(e) => panic!("{size} B: recv: {e}"),
        }
    };
    let elapsed = started.elapsed();
    assert_eq!(n, size, "a {size} B datagram came back as {n} bytes");
    assert!(
        buf[..n] == *msg,
        "a {size} B datagram came back with different bytes"
    );
    elapsed
}

// 5. Datagrams of 1, 1400, 8000 and 65000 bytes, each whole (byte for byte) and prompt.
fn datagram_sizes(backend: Backend) {
    let _guard = light(Duration::from_secs(240));
    let echo = UdpEcho::start();
    let ws = Workspace::builder(backend).udp_to(echo.port()).start();
    let socket = udp_client(ws.udp[0], Duration::from_millis(100));
    let mut late = Vec::new();
    for size in [1usize, 1400, 8000, 65_000] {
        let msg = Pattern::bytes(size as u64, size);
        let took = round_trip(&socket, &msg);
        eprintln!("[{backend:?}] UDP {size} B round trip: {took:?}");
        if took > PROMPT {
            late.push(format!("{size} B after {took:.2?}"));
        }
    }
    assert_eq!(
        echo.received(),
        4,
        "the service saw another number of datagrams"
    );
    assert!(
        late.is_empty(),
        "every datagram came back whole, but these took longer than {PROMPT:?}: {late:?}\n{}",
        ws.logs()
    );
}

both_backends!(udp_datagrams_1_to_65000_bytes_arrive_whole_and_promptly => super::datagram_sizes);

// Each local client address is its own flow: replies go to the client that asked.
fn clients_apart(backend: Backend) {
    let _guard = light(Duration::from_secs(60));
    let echo = UdpEcho::start();
    let ws = Workspace::builder(backend).udp_to(echo.port()).start();
    let clients: Vec<UdpSocket> = (0..8)
        .map(|_| udp_client(ws.udp[0], Duration::from_millis(100)))
        .collect();
    for round in 0..20u64 {
        // Everyone sends first, then everyone reads: replies must not cross.
        for (i, c) in clients.iter().enumerate() {
            let msg = Pattern::bytes(round * 100 + i as u64, 100 + i);
            c.send(&msg).expect("send");
        }
        for (i, c) in clients.iter().enumerate() {
            let msg = Pattern::bytes(round * 100 + i as u64, 100 + i);
            let mut buf = [0u8; 2048];
            let started = Instant::now();
            let n = loop {
                match c.recv(&mut buf) {
                    Ok(n) => break n,
                    Err(_) if started.elapsed() < Duration::from_secs(5) => {}
                    Err(e) => panic!("round {round}, client {i}: no reply within 5 s: {e}"),
                }
            };
            assert!(
                buf[..n] == msg[..],
                "round {round}, client {i}: got a reply that is not its own ({n} bytes)"
            );
        }
    }
    assert_eq!(echo.received(), 8 * 20);
}

both_backends!(udp_replies_go_to_the_client_that_asked => super::clients_apart);

// 10 (UDP). A UDP forward bound to [::1].
fn ipv6_bind(backend: Backend) {
    let _guard = light(Duration::from_secs(60));
    let echo = UdpEcho::start();
    let local = free_port();
    let bind = loopback(&format!("[::1]:{local}"));
    let ws = Workspace::builder(backend)
        .udp_spec(&format!("[::1]:{local}:{}", echo.port()), bind)
        .start();
    let socket = udp_client(ws.udp[0], Duration::from_millis(100));
    let took = round_trip(&socket, &Pattern::bytes(9, 1200));
    assert!(took < PROMPT, "round trip through [::1] took {took:?}");
    assert_eq!(echo.received(), 1);
}

both_backends!(udp_ipv6_bound_forward_carries_datagrams => super::ipv6_bind);

// The agent reaches a UDP service that listens on [::1] only: 127.0.0.1 refuses, and the
// agent switches, resending the datagram that was refused.
fn agent_ipv6_fallback(backend: Backend) {
    let _guard = light(Duration::from_secs(60));
    let port = free_port();
    let echo = UdpEcho::start_on(loopback(&format!("[::1]:{port}")));
    let ws = Workspace::builder(backend).udp_to(port).start();
    let socket = udp_client(ws.udp[0], Duration::from_millis(100));
    for i in 0..3u64 {
        let took = round_trip(&socket, &Pattern::bytes(40 + i, 500));
        assert!(
            took < PROMPT,
            "datagram {i} to a [::1]-only service took {took:?}"
        );
    }
    assert_eq!(echo.received(), 3);
}

both_backends!(udp_agent_reaches_ipv6_only_service => super::agent_ipv6_fallback);
