//! ferry-loadtest: many concurrent TCP flows (or a paced UDP stream) against an echo service,
//! usually through a ferry forward, with byte-for-byte integrity checks and latency histograms.
//!
//! Traffic is only ever sent to loopback addresses: any other target is refused.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve TCP and UDP echo on one loopback address and port until killed.
    ServeEcho {
        #[arg(long, value_name = "ADDR:PORT")]
        listen: SocketAddr,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// TCP echo service to load (loopback only).
    #[arg(long, value_name = "ADDR:PORT")]
    target: Option<SocketAddr>,
    /// Number of concurrent TCP flows (at most 10000).
    #[arg(long, default_value_t = 100)]
    flows: usize,
    /// Bytes each flow sends and expects back (at most 64 MiB).
    #[arg(long, default_value_t = 65536)]
    bytes_per_flow: usize,
    /// Deadline for the whole TCP run, in seconds (at most 600).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Worker threads multiplexing the flows (at most 256).
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Seed for the flows' data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// UDP mode: datagrams per second to send (at most 1000000).
    #[arg(long, value_name = "PPS")]
    udp_rate: Option<u64>,
    /// UDP mode: how long to send, in seconds (at most 600).
    #[arg(long, default_value_t = 5.0)]
    udp_seconds: f64,
    /// UDP mode: the UDP echo service (loopback only).
    #[arg(long, value_name = "ADDR:PORT")]
    udp_target: Option<SocketAddr>,
    /// UDP mode: datagram size in bytes (16..=1400).
    #[arg(long, default_value_t = 64)]
    udp_size: usize,
    /// Write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::ServeEcho { listen }) => serve_echo(listen),
        None => run(cli.run),
    };
    if let Err(e) = result {
        eprintln!("ferry-loadtest: {e}");
        std::process::exit(2);
    }
}

fn require_loopback(what: &str, addr: SocketAddr) -> Result<(), Error> {
    if !addr.ip().is_loopback() {
        return Err(format!("{what} {addr} is not a loopback address; refusing").into());
    }
    Ok(())
}

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

// ---------------------------------------------------------------- echo service

fn serve_echo(listen: SocketAddr) -> Result<(), Error> {
    require_loopback("listen address", listen)?;
    raise_nofile();
    let tcp = TcpListener::bind(listen)?;
    let udp = UdpSocket::bind(tcp.local_addr()?)?;
    eprintln!("serving TCP and UDP echo on {}", tcp.local_addr()?);
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            match udp.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let _ = udp.send_to(&buf[..n], from);
                }
                Err(e) => eprintln!("udp echo: {e}"),
            }
        }
    });
    for conn in tcp.incoming() {
        match conn {
            Ok(stream) => {
                let spawned = thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || echo_tcp(stream));
                if let Err(e) = spawned {
                    eprintln!("tcp echo: cannot spawn: {e}");
                }
            }
            Err(e) => {
                eprintln!("tcp echo accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(())
}

fn echo_tcp(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------- shared

fn histogram() -> Histogram<u64> {
    // 1 us .. 10 min, 3 significant digits; the bounds are fixed so this cannot fail.
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_histogram()))
}

#[allow(clippy::panic)]
fn unreachable_histogram() -> Histogram<u64> {
    panic!("hdrhistogram refused constant bounds")
}

#[derive(Serialize, Debug, Clone, Copy, Default)]
struct Percentiles {
    count: u64,
    min_us: u64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    mean_us: f64,
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        count: h.len(),
        min_us: h.min(),
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        mean_us: h.mean(),
    }
}

/// Deterministic, distinct data per flow: xorshift64* seeded by (seed, flow).
struct FlowData(u64);

impl FlowData {
    fn new(seed: u64, flow: u64) -> Self {
        let s = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(flow.wrapping_mul(0xD1B5_4A32_D192_ED03))
            ^ 0x2545_F491_4F6C_DD1D;
        FlowData(if s == 0 { 1 } else { s })
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn write_json<T: Serialize>(path: &std::path::Path, value: &T) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n")?;
    Ok(())
}

// ---------------------------------------------------------------- TCP

#[derive(Serialize, Debug)]
struct TcpSummary {
    target: String,
    flows: usize,
    bytes_per_flow: usize,
    workers: usize,
    seconds_limit: f64,
    elapsed_s: f64,
    completed: u64,
    connect_errors: u64,
    io_errors: u64,
    mismatches: u64,
    unfinished: u64,
    bytes_verified: u64,
    goodput_mbit_s: f64,
    connect_us: Percentiles,
    flow_us: Percentiles,
    first_errors: Vec<String>,
}

#[derive(Default)]
struct Counters {
    completed: AtomicU64,
    connect_errors: AtomicU64,
    io_errors: AtomicU64,
    mismatches: AtomicU64,
    unfinished: AtomicU64,
    bytes: AtomicU64,
}

fn run(args: RunArgs) -> Result<(), Error> {
    if let Some(rate) = args.udp_rate {
        return run_udp(&args, rate);
    }
    let Some(target) = args.target else {
        return Err("give --target ADDR:PORT (TCP) or --udp-rate with --udp-target".into());
    };
    require_loopback("target", target)?;
    if args.flows == 0 || args.flows > 10_000 {
        return Err("--flows must be 1..=10000".into());
    }
    if args.bytes_per_flow > 64 << 20 {
        return Err("--bytes-per-flow must be at most 64 MiB".into());
    }
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        return Err("--seconds must be in (0, 600]".into());
    }
    raise_nofile();
    let workers = args.workers.clamp(1, 256).min(args.flows);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let counters = Arc::new(Counters::default());
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut handles = Vec::new();
    for w in 0..workers {
        let flows: Vec<u64> = (w..args.flows).step_by(workers).map(|f| f as u64).collect();
        let counters = Arc::clone(&counters);
        let errors = Arc::clone(&errors);
        let (bytes, seed) = (args.bytes_per_flow, args.seed);
        handles.push(thread::spawn(move || {
            tcp_worker(target, flows, bytes, seed, deadline, &counters, &errors)
        }));
    }
    let mut connect_h = histogram();
    let mut flow_h = histogram();
    for h in handles {
        match h.join() {
            Ok((c, f)) => {
                let _ = connect_h.add(&c);
                let _ = flow_h.add(&f);
            }
            Err(_) => return Err("a worker thread panicked".into()),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let bytes = counters.bytes.load(Ordering::Relaxed);
    let first_errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
    let summary = TcpSummary {
        target: target.to_string(),
        flows: args.flows,
        bytes_per_flow: args.bytes_per_flow,
        workers,
        seconds_limit: args.seconds,
        elapsed_s: elapsed,
        completed: counters.completed.load(Ordering::Relaxed),
        connect_errors: counters.connect_errors.load(Ordering::Relaxed),
        io_errors: counters.io_errors.load(Ordering::Relaxed),
        mismatches: counters.mismatches.load(Ordering::Relaxed),
        unfinished: counters.unfinished.load(Ordering::Relaxed),
        bytes_verified: bytes,
        goodput_mbit_s: (bytes as f64 * 8.0) / elapsed.max(1e-9) / 1e6,
        connect_us: percentiles(&connect_h),
        flow_us: percentiles(&flow_h),
        first_errors,
    };
    println!(
        "tcp {}: {} flows x {} B, {} workers, {:.2} s: completed {}, connect errors {}, io errors {}, mismatches {}, unfinished {}",
        summary.target,
        summary.flows,
        summary.bytes_per_flow,
        summary.workers,
        summary.elapsed_s,
        summary.completed,
        summary.connect_errors,
        summary.io_errors,
        summary.mismatches,
        summary.unfinished
    );
    println!(
        "  verified {} bytes echoed ({:.1} Mbit/s each way)",
        summary.bytes_verified, summary.goodput_mbit_s
    );
    print_pcts("connect", &summary.connect_us);
    print_pcts("flow (connect+transfer)", &summary.flow_us);
    for e in &summary.first_errors {
        println!("  error: {e}");
    }
    if let Some(path) = &args.json {
        write_json(path, &summary)?;
    }
    let failed =
        summary.connect_errors + summary.io_errors + summary.mismatches + summary.unfinished;
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn print_pcts(what: &str, p: &Percentiles) {
    println!(
        "  {what} us: n={} min {} p50 {} p90 {} p99 {} p99.9 {} max {}",
        p.count, p.min_us, p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us
    );
}

fn note_error(errors: &Mutex<Vec<String>>, msg: String) {
    if let Ok(mut e) = errors.lock()
        && e.len() < 10
    {
        e.push(msg);
    }
}

/// Opens all of this worker's flows first (so that all flows are open at once), then moves each
/// flow's data through and verifies it.
fn tcp_worker(
    target: SocketAddr,
    flows: Vec<u64>,
    bytes: usize,
    seed: u64,
    deadline: Instant,
    c: &Counters,
    errors: &Mutex<Vec<String>>,
) -> (Histogram<u64>, Histogram<u64>) {
    let mut connect_h = histogram();
    let mut flow_h = histogram();
    let mut open = Vec::with_capacity(flows.len());
    for (i, &flow) in flows.iter().enumerate() {
        let now = Instant::now();
        if now >= deadline {
            c.unfinished
                .fetch_add((flows.len() - i) as u64, Ordering::Relaxed);
            return (connect_h, flow_h);
        }
        let timeout = (deadline - now).min(Duration::from_secs(10));
        match TcpStream::connect_timeout(&target, timeout) {
            Ok(s) => {
                let took = now.elapsed();
                let _ = connect_h.record(took.as_micros().max(1) as u64);
                open.push((flow, s, took));
            }
            Err(e) => {
                c.connect_errors.fetch_add(1, Ordering::Relaxed);
                note_error(errors, format!("flow {flow}: connect: {e}"));
            }
        }
    }
    let total = open.len();
    for (i, (flow, stream, connect_took)) in open.into_iter().enumerate() {
        if Instant::now() >= deadline {
            c.unfinished
                .fetch_add((total - i) as u64, Ordering::Relaxed);
            break;
        }
        let t = Instant::now();
        match transfer(stream, flow, bytes, seed, deadline) {
            Ok(()) => {
                c.completed.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                let _ = flow_h.record((connect_took + t.elapsed()).as_micros().max(1) as u64);
            }
            Err(Failure::Mismatch(at)) => {
                c.mismatches.fetch_add(1, Ordering::Relaxed);
                note_error(errors, format!("flow {flow}: echo differs at byte {at}"));
            }
            Err(Failure::Deadline) => {
                c.unfinished.fetch_add(1, Ordering::Relaxed);
            }
            Err(Failure::Io(e)) => {
                c.io_errors.fetch_add(1, Ordering::Relaxed);
                note_error(errors, format!("flow {flow}: {e}"));
            }
        }
    }
    (connect_h, flow_h)
}

enum Failure {
    Mismatch(usize),
    Deadline,
    Io(std::io::Error),
}

fn transfer(
    mut s: TcpStream,
    flow: u64,
    bytes: usize,
    seed: u64,
    deadline: Instant,
) -> Result<(), Failure> {
    const CHUNK: usize = 16 * 1024;
    let _ = s.set_nodelay(true);
    let mut tx = FlowData::new(seed, flow);
    let mut rx = FlowData::new(seed, flow);
    let mut out = vec![0u8; CHUNK];
    let mut expect = vec![0u8; CHUNK];
    let mut got = vec![0u8; CHUNK];
    let mut done = 0usize;
    while done < bytes {
        let n = CHUNK.min(bytes - done);
        tx.fill(&mut out[..n]);
        rx.fill(&mut expect[..n]);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Deadline);
        }
        s.set_write_timeout(Some(left)).map_err(Failure::Io)?;
        s.set_read_timeout(Some(left)).map_err(Failure::Io)?;
        s.write_all(&out[..n]).map_err(classify)?;
        s.read_exact(&mut got[..n]).map_err(classify)?;
        if let Some(at) = got[..n].iter().zip(&expect[..n]).position(|(a, b)| a != b) {
            return Err(Failure::Mismatch(done + at));
        }
        done += n;
    }
    // The echo must close cleanly after our FIN and send nothing extra.
    let _ = s.shutdown(Shutdown::Write);
    match s.read(&mut got[..1]) {
        Ok(0) => Ok(()),
        Ok(_) => Err(Failure::Mismatch(bytes)),
        Err(e) => Err(classify(e)),
    }
}

fn classify(e: std::io::Error) -> Failure {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Failure::Deadline,
        _ => Failure::Io(e),
    }
}

// ---------------------------------------------------------------- UDP

#[derive(Serialize, Debug)]
struct UdpSummary {
    target: String,
    rate_pps: u64,
    seconds: f64,
    size: usize,
    sent: u64,
    received: u64,
    duplicates: u64,
    corrupt: u64,
    lost: u64,
    loss_percent: f64,
    send_errors: u64,
    rtt_us: Percentiles,
}

fn run_udp(args: &RunArgs, rate: u64) -> Result<(), Error> {
    let Some(target) = args.udp_target else {
        return Err("--udp-rate needs --udp-target ADDR:PORT".into());
    };
    require_loopback("UDP target", target)?;
    if rate == 0 || rate > 1_000_000 {
        return Err("--udp-rate must be 1..=1000000".into());
    }
    if !(args.udp_seconds > 0.0 && args.udp_seconds <= 600.0) {
        return Err("--udp-seconds must be in (0, 600]".into());
    }
    let size = args.udp_size.clamp(24, 1400);
    let bind: SocketAddr = match target.ip() {
        IpAddr::V4(_) => "127.0.0.1:0".parse()?,
        IpAddr::V6(_) => "[::1]:0".parse()?,
    };
    let sock = UdpSocket::bind(bind)?;
    sock.connect(target)?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let rsock = sock.try_clone()?;
    let total = (rate as f64 * args.udp_seconds).ceil() as u64;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let magic = args.seed;

    let stop_rx = Arc::clone(&stop);
    let receiver = thread::spawn(move || {
        let mut h = histogram();
        let mut seen = vec![0u64; (total as usize).div_ceil(64)];
        let (mut received, mut dups, mut corrupt) = (0u64, 0u64, 0u64);
        let mut buf = vec![0u8; 2048];
        while !stop_rx.load(Ordering::Relaxed) {
            let n = match rsock.recv(&mut buf) {
                Ok(n) => n,
                Err(_) => continue,
            };
            let now = start.elapsed().as_nanos() as u64;
            if n < 24 {
                corrupt += 1;
                continue;
            }
            let word = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[i * 8..i * 8 + 8]);
                u64::from_le_bytes(b)
            };
            let (seq, sent_ns, tag) = (word(0), word(1), word(2));
            if tag != magic ^ seq || seq >= total || n != size {
                corrupt += 1;
                continue;
            }
            let (slot, bit) = ((seq / 64) as usize, seq % 64);
            if seen[slot] & (1 << bit) != 0 {
                dups += 1;
                continue;
            }
            seen[slot] |= 1 << bit;
            received += 1;
            let _ = h.record((now.saturating_sub(sent_ns) / 1000).max(1));
        }
        (h, received, dups, corrupt)
    });

    let mut sent = 0u64;
    let mut send_errors = 0u64;
    let mut pkt = vec![0u8; size];
    let interval_ns = 1e9 / rate as f64;
    while sent < total {
        let due = Duration::from_nanos((sent as f64 * interval_ns) as u64);
        let now = start.elapsed();
        if now < due {
            let wait = due - now;
            if wait > Duration::from_micros(200) {
                thread::sleep(wait - Duration::from_micros(100));
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        let ns = start.elapsed().as_nanos() as u64;
        pkt[0..8].copy_from_slice(&sent.to_le_bytes());
        pkt[8..16].copy_from_slice(&ns.to_le_bytes());
        pkt[16..24].copy_from_slice(&(magic ^ sent).to_le_bytes());
        if sock.send(&pkt).is_err() {
            send_errors += 1;
        }
        sent += 1;
    }
    // Grace period for the last echoes.
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (h, received, duplicates, corrupt) = receiver
        .join()
        .map_err(|_| -> Error { "receiver thread panicked".into() })?;
    let lost = sent.saturating_sub(received);
    let summary = UdpSummary {
        target: target.to_string(),
        rate_pps: rate,
        seconds: args.udp_seconds,
        size,
        sent,
        received,
        duplicates,
        corrupt,
        lost,
        loss_percent: if sent > 0 {
            lost as f64 * 100.0 / sent as f64
        } else {
            0.0
        },
        send_errors,
        rtt_us: percentiles(&h),
    };
    println!(
        "udp {}: {} pps x {} s, {} B: sent {}, received {}, lost {} ({:.3}%), duplicates {}, corrupt {}, send errors {}",
        summary.target,
        rate,
        summary.seconds,
        size,
        sent,
        received,
        lost,
        summary.loss_percent,
        duplicates,
        corrupt,
        send_errors
    );
    print_pcts("rtt", &summary.rtt_us);
    if let Some(path) = &args.json {
        write_json(path, &summary)?;
    }
    Ok(())
}
