//! A slow reader at either end: ferry must push back on the writer (TCP flow control end to end)
//! instead of buffering, so the memory of both ferry processes stays flat, and nothing is lost
//! once the reader speeds up. Every scenario runs on both I/O backends.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ferry_tests::*;
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
/// What the writer tries to push: far more than every buffer on the way holds.
const TOTAL: u64 = 256 * MIB;
/// How long the reader stays slow.
const SLOW_FOR: Duration = Duration::from_secs(5);
/// The slow reader takes 64 KiB every 20 ms: about 3 MiB/s, 16 MiB over [`SLOW_FOR`].
const SLOW_PAUSE: Duration = Duration::from_millis(20);
const CHUNK: usize = 64 << 10;
/// Most the writer may have pushed while the reader was slow: what the reader took plus every
/// buffer on the way (kernel socket buffers at both ends, ferry's per-flow windows) fits well
/// within it. Without backpressure the writer would have pushed all of [`TOTAL`] in a second.
const MAX_AHEAD: u64 = 64 * MIB;
/// Most the two ferry processes together may grow while the reader is slow. Their per-flow
/// buffers are fixed when the flow opens; growth past this means data piling up.
const MAX_GROWTH_KIB: u64 = 48 << 10;

struct Reader {
    fast: Arc<AtomicBool>,
}

impl Reader {
    /// Reads `stream` to its end, slowly until told otherwise; returns the byte count and
    /// SHA-256 of what arrived.
    fn drain(&self, mut stream: TcpStream) -> (u64, Vec<u8>) {
        let mut buf = vec![0u8; CHUNK];
        let mut hasher = Sha256::new();
        let mut count = 0u64;
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => panic!("reader: {e} after {count} bytes"),
            };
            hasher.update(&buf[..n]);
            count += n as u64;
            if !self.fast.load(Ordering::Relaxed) {
                thread::sleep(SLOW_PAUSE);
            }
        }
        (count, hasher.finalize().to_vec())
    }
}

/// Writes [`TOTAL`] bytes of a seeded pattern, counting into `written`; then half-closes.
/// Returns the SHA-256 of what it wrote.
fn write_all_counted(mut stream: TcpStream, written: &AtomicU64, seed: u8) -> Vec<u8> {
    let mut block = vec![0u8; CHUNK];
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    let mut n = 0u32;
    while sent < TOTAL {
        for (i, b) in block.iter_mut().enumerate() {
            *b = (i as u32)
                .wrapping_mul(31)
                .wrapping_add(n)
                .wrapping_add(seed as u32) as u8;
        }
        stream.write_all(&block).expect("writer: write");
        hasher.update(&block);
        sent += CHUNK as u64;
        n = n.wrapping_add(1);
        written.store(sent, Ordering::Relaxed);
    }
    stream.shutdown(Shutdown::Write).expect("writer: shutdown");
    hasher.finalize().to_vec()
}

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Watches both ferry processes while the reader is slow. Returns (bytes written meanwhile,
/// RSS growth of the two together in KiB, their RSS before in KiB).
fn watch_slow_phase(ws: &Workspace, written: &AtomicU64) -> (u64, u64, u64) {
    let pids = [ws.forward.pid(), ws.agent.pid()];
    let total = || pids.iter().map(|p| rss_kib(*p)).sum::<u64>();
    let before = total();
    let mut peak = before;
    let started = Instant::now();
    while started.elapsed() < SLOW_FOR {
        thread::sleep(Duration::from_millis(100));
        peak = peak.max(total());
    }
    (written.load(Ordering::Relaxed), peak - before, before)
}

fn check(direction: &str, backend: Backend, ahead: u64, growth_kib: u64, before_kib: u64) {
    eprintln!(
        "[{backend:?}] {direction} with a slow reader: writer {:.1} MiB ahead after {SLOW_FOR:?}, \
         ferry RSS {:.1} MiB before, grew {:.1} MiB",
        ahead as f64 / MIB as f64,
        before_kib as f64 / 1024.0,
        growth_kib as f64 / 1024.0
    );
    assert!(
        ahead < MAX_AHEAD,
        "{direction}: the writer pushed {ahead} bytes while the reader took about 3 MiB/s: \
         ferry is buffering instead of pushing back"
    );
    assert!(
        growth_kib < MAX_GROWTH_KIB,
        "{direction}: ferry's memory grew by {growth_kib} KiB while the reader was slow"
    );
}

// 1. Upload: the laptop writes as fast as it can, the workspace service reads slowly.
fn slow_service(backend: Backend) {
    let _guard = heavy(Duration::from_secs(180));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let fast = Arc::new(AtomicBool::new(false));
    let reader = Reader { fast: fast.clone() };
    let service = thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        reader.drain(stream)
    });
    let ws = Workspace::builder(backend).tcp_to(port).start();
    let written = Arc::new(AtomicU64::new(0));
    let (addr, w) = (ws.tcp[0], written.clone());
    let writer = thread::spawn(move || write_all_counted(connect(addr), &w, 7));

    let (ahead, growth, before) = watch_slow_phase(&ws, &written);
    fast.store(true, Ordering::Relaxed);
    let sent_sha = writer.join().expect("writer thread");
    let (count, got_sha) = service.join().expect("service thread");
    assert_eq!(count, TOTAL, "the service received a different count");
    assert_eq!(
        got_sha, sent_sha,
        "the service's SHA-256 differs from what was sent"
    );
    check("upload", backend, ahead, growth, before);
}

both_backends!(slow_service_pushes_back_and_loses_nothing => super::slow_service);

// 2. Download: the workspace service writes as fast as it can, the laptop reads slowly.
fn slow_client(backend: Backend) {
    let _guard = heavy(Duration::from_secs(180));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    let service = thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        write_all_counted(stream, &w, 9)
    });
    let ws = Workspace::builder(backend).tcp_to(port).start();
    let fast = Arc::new(AtomicBool::new(false));
    let reader = Reader { fast: fast.clone() };
    let addr = ws.tcp[0];
    let client = thread::spawn(move || reader.drain(connect(addr)));

    let (ahead, growth, before) = watch_slow_phase(&ws, &written);
    fast.store(true, Ordering::Relaxed);
    let sent_sha = service.join().expect("service thread");
    let (count, got_sha) = client.join().expect("client thread");
    assert_eq!(count, TOTAL, "the client received a different count");
    assert_eq!(
        got_sha, sent_sha,
        "the client's SHA-256 differs from what the service sent"
    );
    check("download", backend, ahead, growth, before);
}

both_backends!(slow_client_pushes_back_and_loses_nothing => super::slow_client);
