//! `ferry demo`: the whole path on loopback, checked end to end.
//!
//! It makes two key pairs, starts an agent and a port-forward (each on its own thread and
//! runtime, talking WireGuard over loopback UDP), and demo services on the agent's side; then it
//! moves real data through the tunnel: a TCP upload and download verified by SHA-256, TCP and
//! UDP round trips, and UDP datagrams up to 65,000 bytes compared byte for byte.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferry_crypto::keys::PrivateKey;
use sha2::{Digest, Sha256};

use crate::agent::{AGENT_ADDRS, AgentConfig, AgentPeer};
use crate::cli::{DEFAULT_MTU, Failure, wait_for_signal};
use crate::forward::{CLIENT_ADDRS, ForwardConfig, Listening};
use crate::io::{Backend, LocalIo, RunWith};
use crate::spec::{Forward, Protocol};

/// Options of `ferry demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep running after the checks and serve a demo web page through the tunnel.
    #[arg(long)]
    pub stay: bool,
    /// How many MiB to move in each TCP direction.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub mebibytes: u64,
}

/// Runs the demo; exits 0 when every check passed.
pub fn run(args: DemoArgs) -> Result<i32, Failure> {
    let backend = Backend::detect();
    let services = Services::start()
        .map_err(|e| Failure::Runtime(format!("cannot start demo services: {e}")))?;
    let agent_key = PrivateKey::generate();
    let client_key = PrivateKey::generate();
    let agent_addr = start_agent(backend, &agent_key, &client_key)?;
    let forwards = [services.sink, services.source, services.echo, services.http]
        .iter()
        .map(|port| loopback_forward(Protocol::Tcp, *port))
        .chain([loopback_forward(Protocol::Udp, services.udp_echo)])
        .collect();
    let config = ForwardConfig {
        endpoint: agent_addr,
        private_key: client_key,
        peer: agent_key.public_key(),
        preshared_key: None,
        keepalive_s: Some(25),
        forwards,
        remote_host: IpAddr::V4(AGENT_ADDRS.v4),
        addrs: CLIENT_ADDRS,
        mtu: usize::from(DEFAULT_MTU),
        listen_port: None,
    };
    let listening = start_forward(backend, config)?;
    let local = |i: usize| {
        listening
            .get(i)
            .map(|l| l.addr)
            .ok_or_else(|| Failure::Runtime("listener missing".into()))
    };
    println!(
        "ferry demo: agent on {agent_addr} (UDP), backend {}",
        backend.name()
    );

    let bytes = args.mebibytes << 20;
    let checks = Checks {
        sink: local(0)?,
        source: local(1)?,
        echo: local(2)?,
        udp: local(4)?,
        bytes,
    };
    let ok = checks.run();
    if args.stay {
        println!(
            "Open http://{}/ (served by a demo service through the tunnel); Ctrl-C to stop",
            local(3)?
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt {
            rt.block_on(wait_for_signal());
        }
    }
    Ok(if ok { 0 } else { 1 })
}

fn loopback_forward(protocol: Protocol, remote: u16) -> Forward {
    Forward {
        protocol,
        bind: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        local: 0,
        remote,
    }
}

fn start_agent(
    backend: Backend,
    agent_key: &PrivateKey,
    client_key: &PrivateKey,
) -> Result<SocketAddr, Failure> {
    let config = AgentConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        private_key: agent_key.clone(),
        peers: vec![AgentPeer {
            public_key: client_key.public_key(),
            preshared_key: None,
        }],
        mtu: usize::from(DEFAULT_MTU),
        addrs: AGENT_ADDRS,
        healthchecks: Vec::new(),
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || crate::io::run(backend, AgentThread { config, tx }));
    rx.recv_timeout(STARTUP)
        .map_err(|_| Failure::Runtime("the agent did not start".into()))?
        .map_err(|e| Failure::Runtime(format!("the agent failed: {e}")))
}

struct AgentThread {
    config: AgentConfig,
    tx: mpsc::Sender<std::io::Result<SocketAddr>>,
}

impl RunWith for AgentThread {
    type Output = ();

    async fn run<L: LocalIo>(self) {
        let started =
            crate::agent::start::<L>(self.config).and_then(|e| e.local_addr().map(|a| (e, a)));
        match started {
            Ok((_engine, addr)) => {
                let _ = self.tx.send(Ok(addr));
                std::future::pending::<()>().await;
            }
            Err(e) => {
                let _ = self.tx.send(Err(e));
            }
        }
    }
}

fn start_forward(backend: Backend, config: ForwardConfig) -> Result<Vec<Listening>, Failure> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || crate::io::run(backend, ForwardThread { config, tx }));
    rx.recv_timeout(STARTUP)
        .map_err(|_| {
            Failure::Runtime("the port-forward did not complete a handshake in time".into())
        })?
        .map_err(Failure::Runtime)
}

struct ForwardThread {
    config: ForwardConfig,
    tx: mpsc::Sender<Result<Vec<Listening>, String>>,
}

impl RunWith for ForwardThread {
    type Output = ();

    async fn run<L: LocalIo>(self) {
        match crate::forward::start::<L>(self.config) {
            Ok(forward) => {
                forward.ready().await;
                let _ = self.tx.send(Ok(forward.listening.clone()));
                std::future::pending::<()>().await;
            }
            Err(e) => {
                let _ = self.tx.send(Err(e.to_string()));
            }
        }
    }
}

struct Checks {
    sink: SocketAddr,
    source: SocketAddr,
    echo: SocketAddr,
    udp: SocketAddr,
    bytes: u64,
}

impl Checks {
    fn run(&self) -> bool {
        let results = [
            report("TCP upload (SHA-256 checked)", self.upload()),
            report("TCP download (SHA-256 checked)", self.download()),
            report("TCP round trip, 64 B", self.tcp_rtt()),
            report("UDP round trip, 64 B", self.udp_rtt()),
            report("UDP datagrams of 1, 1400, 8000, 65000 B", self.udp_sizes()),
        ];
        let ok = results.iter().all(|r| *r);
        println!(
            "{}",
            if ok {
                "all checks passed"
            } else {
                "SOME CHECKS FAILED"
            }
        );
        ok
    }

    fn upload(&self) -> Result<String, String> {
        let mut stream = connect(self.sink)?;
        let started = Instant::now();
        let mut pattern = Pattern::new(1);
        let mut hasher = Sha256::new();
        let mut chunk = vec![0u8; 256 * 1024];
        let mut left = self.bytes;
        while left > 0 {
            let n = chunk.len().min(left as usize);
            pattern.fill(&mut chunk[..n]);
            hasher.update(&chunk[..n]);
            stream.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
            left -= n as u64;
        }
        stream
            .shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .map_err(|e| e.to_string())?;
        let elapsed = started.elapsed();
        if reply.trim() != hex(&hasher.finalize()) {
            return Err(format!("digest mismatch: service saw {}", reply.trim()));
        }
        Ok(rate(self.bytes, elapsed))
    }

    fn download(&self) -> Result<String, String> {
        let mut stream = connect(self.source)?;
        let started = Instant::now();
        stream
            .write_all(&self.bytes.to_be_bytes())
            .map_err(|e| e.to_string())?;
        let mut hasher = Sha256::new();
        let mut chunk = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        loop {
            let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            hasher.update(&chunk[..n]);
            got += n as u64;
        }
        let elapsed = started.elapsed();
        let mut expected = Sha256::new();
        let mut pattern = Pattern::new(2);
        let mut left = self.bytes;
        while left > 0 {
            let n = chunk.len().min(left as usize);
            pattern.fill(&mut chunk[..n]);
            expected.update(&chunk[..n]);
            left -= n as u64;
        }
        if got != self.bytes || hasher.finalize() != expected.finalize() {
            return Err(format!(
                "received {got} of {} bytes, or the digest differs",
                self.bytes
            ));
        }
        Ok(rate(self.bytes, elapsed))
    }

    fn tcp_rtt(&self) -> Result<String, String> {
        let mut stream = connect(self.echo)?;
        let mut samples = Vec::with_capacity(ROUND_TRIPS);
        let msg = [7u8; 64];
        let mut back = [0u8; 64];
        for _ in 0..ROUND_TRIPS {
            let started = Instant::now();
            stream.write_all(&msg).map_err(|e| e.to_string())?;
            stream.read_exact(&mut back).map_err(|e| e.to_string())?;
            samples.push(started.elapsed());
            if back != msg {
                return Err("echo differs".into());
            }
        }
        Ok(percentiles(&mut samples))
    }

    fn udp_rtt(&self) -> Result<String, String> {
        let socket = udp_client(self.udp)?;
        let mut samples = Vec::with_capacity(ROUND_TRIPS);
        let mut back = [0u8; 128];
        for i in 0..ROUND_TRIPS {
            let msg = [(i % 251) as u8; 64];
            let started = Instant::now();
            socket.send(&msg).map_err(|e| e.to_string())?;
            let n = socket
                .recv(&mut back)
                .map_err(|e| format!("round trip {i}: {e}"))?;
            samples.push(started.elapsed());
            if back[..n] != msg {
                return Err(format!("round trip {i}: echo differs"));
            }
        }
        Ok(percentiles(&mut samples))
    }

    fn udp_sizes(&self) -> Result<String, String> {
        let socket = udp_client(self.udp)?;
        let mut back = vec![0u8; 70_000];
        for size in [1usize, 1400, 8000, 65_000] {
            let mut msg = vec![0u8; size];
            Pattern::new(size as u64).fill(&mut msg);
            socket.send(&msg).map_err(|e| format!("{size} B: {e}"))?;
            let n = socket
                .recv(&mut back)
                .map_err(|e| format!("{size} B: {e}"))?;
            if back[..n] != msg[..] {
                return Err(format!("{size} B: came back as {n} different bytes"));
            }
        }
        Ok("all whole".into())
    }
}

fn report(name: &str, result: Result<String, String>) -> bool {
    match result {
        Ok(detail) => {
            println!("  ok    {name:<42} {detail}");
            true
        }
        Err(e) => {
            println!("  FAIL  {name:<42} {e}");
            false
        }
    }
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    Ok(stream)
}

fn udp_client(addr: SocketAddr) -> Result<UdpSocket, String> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    socket.connect(addr).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(socket)
}

fn rate(bytes: u64, elapsed: Duration) -> String {
    let gbit = bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9;
    format!(
        "{} MiB in {:.2} s = {gbit:.2} Gbit/s",
        bytes >> 20,
        elapsed.as_secs_f64()
    )
}

fn percentiles(samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q) as usize)
            .map_or(0, |d| d.as_micros())
    };
    format!(
        "p50 {} us, p99 {} us ({} samples)",
        at(0.5),
        at(0.99),
        samples.len()
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A cheap deterministic byte stream (xorshift), so both ends can check data without storing it.
struct Pattern(u64);

impl Pattern {
    fn new(seed: u64) -> Self {
        Pattern(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// The demo services, on the agent's loopback.
struct Services {
    sink: u16,
    source: u16,
    echo: u16,
    udp_echo: u16,
    http: u16,
}

impl Services {
    fn start() -> std::io::Result<Self> {
        Ok(Services {
            sink: serve_tcp(sink)?,
            source: serve_tcp(source)?,
            echo: serve_tcp(echo)?,
            udp_echo: serve_udp_echo()?,
            http: serve_tcp(http)?,
        })
    }
}

fn serve_tcp(handler: fn(TcpStream) -> std::io::Result<()>) -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || handler(stream));
        }
    });
    Ok(port)
}

// Reads to end of stream, then answers with the SHA-256 of what it read (needs half-close).
fn sink(mut stream: TcpStream) -> std::io::Result<()> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    stream.write_all(hex(&hasher.finalize()).as_bytes())
}

// Reads a byte count, then sends that many bytes of the pattern and closes.
fn source(mut stream: TcpStream) -> std::io::Result<()> {
    let mut len = [0u8; 8];
    stream.read_exact(&mut len)?;
    let mut left = u64::from_be_bytes(len);
    let mut pattern = Pattern::new(2);
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let n = buf.len().min(left as usize);
        pattern.fill(&mut buf[..n]);
        stream.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

fn http(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    let _ = stream.read(&mut buf)?;
    let body = "<!doctype html><title>ferry demo</title><h1>Hello through ferry</h1>\
                <p>This page came from a service on the agent's loopback, through a WireGuard tunnel.</p>\n";
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

fn serve_udp_echo() -> std::io::Result<u16> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let port = socket.local_addr()?.port();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    Ok(port)
}

const STARTUP: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const ROUND_TRIPS: usize = 2000;
