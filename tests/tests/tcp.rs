//! TCP through the tunnel: bulk transfer both ways at once, many concurrent flows, half-close,
//! resets in either direction, refused workspace ports, and IPv6 on either end. Every scenario
//! runs on both I/O backends.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferry_tests::*;

const MIB: u64 = 1 << 20;

// 1. 256 MiB up to a sink and 256 MiB down from a source, on two connections at the same time.
fn bulk_256_mib_each_way_at_once(backend: Backend) {
    const BYTES: u64 = 256 * MIB;
    const BOUND: Duration = Duration::from_secs(150);
    let _guard = heavy(Duration::from_secs(300));
    let sink = TcpService::start(Kind::Sink);
    let source = TcpService::start(Kind::Source);
    let ws = Workspace::builder(backend)
        .tcp_to(sink.port())
        .tcp_to(source.port())
        .start();
    let (up_addr, down_addr) = (ws.tcp[0], ws.tcp[1]);

    let started = Instant::now();
    let upload = std::thread::spawn(move || upload_to_sink(up_addr, BYTES, 11));
    let download = std::thread::spawn(move || download_from_source(down_addr, BYTES, 22));
    let up = upload.join().expect("upload thread");
    let down = download.join().expect("download thread");
    let elapsed = started.elapsed();

    let up = up.unwrap_or_else(|e| panic!("upload failed: {e}"));
    let down = down.unwrap_or_else(|e| panic!("download failed: {e}"));
    eprintln!(
        "[{backend:?}] 256 MiB each way at once: up {:.2} Gbit/s ({:?}), down {:.2} Gbit/s ({:?})",
        gbit_s(BYTES, up.elapsed),
        up.elapsed,
        gbit_s(BYTES, down.elapsed),
        down.elapsed
    );
    assert_eq!(
        up.received_bytes, BYTES,
        "the sink received a different count"
    );
    assert_eq!(
        up.received_sha256, up.sent_sha256,
        "upload: the sink's SHA-256 differs from what was sent"
    );
    let sent = lock(&source.stats().sent)
        .get(&22)
        .cloned()
        .expect("the source recorded what it sent");
    assert_eq!(sent.0, BYTES);
    assert_eq!(down.bytes, BYTES, "download: byte count differs");
    assert_eq!(
        down.sha256, sent.1,
        "download: SHA-256 of what arrived differs from what the source sent"
    );
    assert!(elapsed < BOUND, "the transfers took {elapsed:?}");
}

both_backends!(bulk_256_mib_each_way_at_once_keeps_sha256 => super::bulk_256_mib_each_way_at_once);

// 2. 200 flows open at once through an echo service, each with its own 64 KiB payload.
fn two_hundred_concurrent_flows(backend: Backend) {
    const FLOWS: usize = 200;
    const SIZE: usize = 64 * 1024;
    const FIRST: usize = 1024;
    let _guard = heavy(Duration::from_secs(180));
    let echo = TcpService::start(Kind::Echo);
    let ws = Workspace::builder(backend).tcp_to(echo.port()).start();
    let addr = ws.tcp[0];
    let established = TimedBarrier::new(FLOWS);
    let started = Instant::now();

    let results: Vec<Result<Duration, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..FLOWS)
            .map(|i| {
                let established = &established;
                scope.spawn(move || {
                    let result = one_flow(addr, i, SIZE, FIRST, established, started);
                    if result.is_err() {
                        established.breaks();
                    }
                    result.map_err(|e| format!("flow {i}: {e}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("flow thread panicked".into()))
            })
            .collect()
    });
    let mut failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    // The root causes first, then the flows that only gave up at the broken barrier.
    failed.sort_by_key(|e| e.contains("barrier"));
    assert!(
        failed.is_empty(),
        "{} of {FLOWS} flows failed; first ones: {:#?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let all_up = results.iter().filter_map(|r| r.as_ref().ok()).max();
    eprintln!(
        "[{backend:?}] {FLOWS} flows x {} KiB: all up after {all_up:?}, all echoed after {:?}",
        SIZE / 1024,
        started.elapsed()
    );
    assert_eq!(
        echo.accepted(),
        FLOWS,
        "the agent opened a different number of connections"
    );
    let peak = echo.stats().peak.load(Ordering::Relaxed);
    assert_eq!(
        peak, FLOWS,
        "the flows were not all open at once on the workspace side"
    );
    ws.forward.log().lines().for_each(|l| {
        assert!(!l.contains("no free tunnel port"), "port-forward: {l}");
    });
}

// Connects, proves the flow is up end to end with a first round trip, waits for every other
// flow to be up too, then streams the rest of its payload and checks the echo byte for byte.
fn one_flow(
    addr: SocketAddr,
    i: usize,
    size: usize,
    first: usize,
    established: &TimedBarrier,
    started: Instant,
) -> Result<Duration, String> {
    let payload = Pattern::bytes(1_000 + i as u64, size);
    let mut s = try_connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.write_all(&payload[..first])
        .map_err(|e| format!("first write: {e}"))?;
    let mut back = vec![0u8; size];
    s.read_exact(&mut back[..first])
        .map_err(|e| format!("first echo: {e}"))?;
    if back[..first] != payload[..first] {
        return Err("first echo differs".into());
    }
    let up_at = started.elapsed();
    established.wait(Duration::from_secs(60))?;
    let mut writer = s.try_clone().map_err(|e| e.to_string())?;
    std::thread::scope(|scope| {
        let rest = &payload[first..];
        let w = scope.spawn(move || -> Result<(), String> {
            writer.write_all(rest).map_err(|e| format!("write: {e}"))?;
            writer
                .shutdown(Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))
        });
        let mut got = first;
        let read = loop {
            match s.read(&mut back[got..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    got += n;
                    if got == size {
                        // Everything is back; the next read must be EOF.
                        let mut extra = [0u8; 1];
                        break match s.read(&mut extra) {
                            Ok(0) => Ok(()),
                            Ok(_) => Err("bytes after the whole echo".to_string()),
                            Err(e) => Err(format!("waiting for EOF: {e}")),
                        };
                    }
                }
                Err(e) => break Err(format!("read after {got} bytes: {e}")),
            }
        };
        w.join().unwrap_or_else(|_| Err("writer panicked".into()))?;
        read?;
        if got != size {
            return Err(format!("echo ended after {got} of {size} bytes"));
        }
        if back != payload {
            let at = back.iter().zip(&payload).position(|(a, b)| a != b);
            return Err(format!(
                "echo differs from the payload, first at byte {at:?}"
            ));
        }
        Ok(up_at)
    })
}

both_backends!(two_hundred_concurrent_flows_echo_distinct_payloads => super::two_hundred_concurrent_flows);

// 3. The client half-closes and still gets the reply.
fn half_close(backend: Backend) {
    let _guard = light(Duration::from_secs(60));
    let sink = TcpService::start(Kind::Sink);
    let ws = Workspace::builder(backend).tcp_to(sink.port()).start();
    for (len, seed) in [(0u64, 1u64), (1, 2), (100_000, 3), (4 * MIB, 4)] {
        let up = upload_to_sink(ws.tcp[0], len, seed)
            .unwrap_or_else(|e| panic!("{len} bytes then half-close: {e}"));
        assert_eq!(
            up.received_bytes, len,
            "{len} bytes: the sink got another count"
        );
        assert_eq!(
            up.received_sha256, up.sent_sha256,
            "{len} bytes: the sink's SHA-256 differs"
        );
    }
    assert_eq!(sink.accepted(), 4);
}

both_backends!(half_closed_client_still_receives_reply => super::half_close);

// 4. A workspace port where nothing listens: the local connection closes within a second, and
// the forward keeps working, also for that port once something listens there.
fn refused_port(backend: Backend) {
    const BOUND: Duration = Duration::from_secs(1);
    let _guard = heavy(Duration::from_secs(60));
    let dead = free_port();
    let echo = TcpService::start(Kind::Echo);
    let ws = Workspace::builder(backend)
        .tcp_to(dead)
        .tcp_to(echo.port())
        .start();

    for attempt in 0..3 {
        let mut s = connect(ws.tcp[0]);
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let started = Instant::now();
        if attempt == 1 {
            // Data written before the reset must not make a difference.
            let _ = s.write_all(b"hello?");
        }
        let mut buf = [0u8; 64];
        let result = s.read(&mut buf);
        let elapsed = started.elapsed();
        match result {
            Ok(0) => {}
            Ok(n) => panic!("attempt {attempt}: {n} bytes came from a port where nothing listens"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "attempt {attempt}: the local connection stayed open for 3 s\n{}",
                    ws.logs()
                )
            }
            Err(_) => {} // reset: closed too
        }
        assert!(
            elapsed < BOUND,
            "attempt {attempt}: the refused flow was closed after {elapsed:?} (bound {BOUND:?})"
        );
    }

    echo_round_trip(ws.tcp[1], b"still there?", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("the other forward after refusals: {e}\n{}", ws.logs()));
    let late = TcpService::try_start_on(Kind::Echo, loopback(&format!("127.0.0.1:{dead}")))
        .unwrap_or_else(|e| panic!("port {dead} was taken meanwhile (a rare race): {e}"));
    echo_round_trip(ws.tcp[0], b"now someone listens", Duration::from_secs(5)).unwrap_or_else(
        |e| {
            panic!(
                "the refused port after it started listening: {e}\n{}",
                ws.logs()
            )
        },
    );
    assert_eq!(late.accepted(), 1);
    ws.forward
        .log()
        .lines()
        .for_each(|l| assert!(!l.contains("panicked"), "{l}"));
}

both_backends!(refused_port_closes_local_connection_within_1s_and_forward_survives => super::refused_port);

// 10. A forward bound to [::1] works, and listens there only.
fn ipv6_bind(backend: Backend) {
    let _guard = light(Duration::from_secs(60));
    let echo = TcpService::start(Kind::Echo);
    let local = free_port();
    let bind = loopback(&format!("[::1]:{local}"));
    let ws = Workspace::builder(backend)
        .tcp_spec(&format!("[::1]:{local}:{}", echo.port()), bind)
        .start();
    echo_round_trip(
        ws.tcp[0],
        &Pattern::bytes(5, 200_000),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("echo through [::1]:{local}: {e}\n{}", ws.logs()));
    assert!(
        TcpStream::connect_timeout(&loopback(&format!("127.0.0.1:{local}")), CONNECT_TIMEOUT)
            .is_err(),
        "a forward bound to [::1] also accepts on 127.0.0.1"
    );
    assert_eq!(echo.accepted(), 1);
}

both_backends!(ipv6_bound_forward_carries_data => super::ipv6_bind);

// A forward without a bind address listens on 127.0.0.1 and, best effort, on [::1].
fn default_bind_both_loopbacks(backend: Backend) {
    let _guard = light(Duration::from_secs(60));
    let echo = TcpService::start(Kind::Echo);
    let local = free_port();
    let ws = Workspace::builder(backend)
        .tcp_spec(
            &format!("{local}:{}", echo.port()),
            loopback(&format!("127.0.0.1:{local}")),
        )
        .start();
    for addr in [format!("127.0.0.1:{local}"), format!("[::1]:{local}")] {
        echo_round_trip(loopback(&addr), b"both loopbacks", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("echo through {addr}: {e}\n{}", ws.logs()));
    }
    assert_eq!(echo.accepted(), 2);
}

both_backends!(default_bind_listens_on_both_loopbacks => super::default_bind_both_loopbacks);

// The agent reaches a service that listens on [::1] only (after 127.0.0.1 refuses).
fn agent_ipv6_fallback(backend: Backend) {
    let _guard = light(Duration::from_secs(60));
    let port = free_port();
    let echo = TcpService::start_on(Kind::Echo, loopback(&format!("[::1]:{port}")));
    let ws = Workspace::builder(backend).tcp_to(port).start();
    echo_round_trip(
        ws.tcp[0],
        &Pattern::bytes(6, 50_000),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("echo to a [::1]-only service: {e}\n{}", ws.logs()));
    assert_eq!(echo.accepted(), 1);
}

both_backends!(agent_reaches_ipv6_only_service => super::agent_ipv6_fallback);

// The workspace service resets an established connection while the local client waits for a
// reply: the local client must see the connection end (reset or EOF), not wait forever.
fn service_reset(backend: Backend) {
    const BOUND: Duration = Duration::from_secs(3);
    const WAIT: Duration = Duration::from_secs(5);
    let _guard = light(Duration::from_secs(60));
    let resetter = TcpService::start(Kind::ResetAfterRead);
    let ws = Workspace::builder(backend).tcp_to(resetter.port()).start();
    let mut s = connect(ws.tcp[0]);
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(b"request").expect("write");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let result = s.read(&mut buf);
    let elapsed = started.elapsed();
    assert_eq!(
        resetter.accepted(),
        1,
        "the flow never reached the service\n{}",
        ws.logs()
    );
    match result {
        Ok(0) => {}
        Ok(n) => panic!("{n} unexpected bytes"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
            "the service reset the connection, but the local client still waits after {WAIT:?}\n{}",
            ws.logs()
        ),
        Err(_) => {}
    }
    assert!(
        elapsed < BOUND,
        "the reset reached the local client after {elapsed:?}"
    );
}

both_backends!(service_reset_reaches_waiting_local_client => super::service_reset);

// The local client resets its connection while the workspace service waits for data: the
// service's connection must end too.
fn client_reset(backend: Backend) {
    const BOUND: Duration = Duration::from_secs(3);
    const WAIT: Duration = Duration::from_secs(5);
    let _guard = light(Duration::from_secs(60));
    let echo = TcpService::start(Kind::Echo);
    let ws = Workspace::builder(backend).tcp_to(echo.port()).start();
    let mut s = connect(ws.tcp[0]);
    s.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("echo");
    assert_eq!(echo.active(), 1);
    reset_close(s);
    let started = Instant::now();
    while echo.active() > 0 && started.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    assert_eq!(
        echo.active(),
        0,
        "the client reset its connection, but the service's connection is still open after \
         {WAIT:?}\n{}",
        ws.logs()
    );
    assert!(
        elapsed < BOUND,
        "the reset reached the service after {elapsed:?}"
    );
}

both_backends!(client_reset_reaches_waiting_service => super::client_reset);
