//! The real binaries on loopback, as a user runs them: `ferry agent` (with healthchecks) and the
//! gateway started as `ferry gateway --config FILE`, plus a small test app whose answers a test
//! can change. Processes are killed by PID and the temporary folder removed when [`Procs`]
//! drops, also when a test fails.
//!
//! `ferry` is looked for next to `ferry-gateway` (both in `target/release`); build it first with
//! `cargo build --release --workspace --bins` (scripts/test-all.sh does). The deployment is the
//! one of `common` (a test file using this module declares both).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferry_crypto::keys::PrivateKey;

use crate::common::{ALICE, config_text};

/// How long a process may take to say it is ready.
const STARTUP: Duration = Duration::from_secs(30);
/// How long one command or request may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A running agent and gateway.
pub struct Procs {
    pub dir: PathBuf,
    /// The gateway's listening address.
    pub gateway: SocketAddr,
    /// The app domain with its port, e.g. `localhost:41234`.
    pub domain: String,
    children: Vec<Child>,
}

impl Procs {
    /// Starts `ferry agent` with `healthchecks` (`--healthcheck` values) and the gateway under
    /// the app domain `host:PORT`.
    pub fn start(name: &str, host: &str, healthchecks: &[String]) -> Procs {
        Procs::start_with(name, host, healthchecks, "", &[])
    }

    /// Like [`Procs::start`], with `top_level` lines added to the gateway's config (before
    /// its tables) and `files` (name, contents) written next to it first.
    pub fn start_with(
        name: &str,
        host: &str,
        healthchecks: &[String],
        top_level: &str,
        files: &[(&str, &str)],
    ) -> Procs {
        let dir = std::env::temp_dir().join(format!("ferry-procs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let gateway_key = PrivateKey::generate();
        let agent_key = PrivateKey::generate();
        std::fs::write(dir.join("gw.key"), gateway_key.to_base64()).unwrap();
        std::fs::write(dir.join("agent.key"), agent_key.to_base64()).unwrap();
        let mut procs = Procs {
            dir: dir.clone(),
            gateway: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            domain: String::new(),
            children: Vec::new(),
        };

        // The agent, on a free loopback UDP port.
        let agent_addr = free_udp();
        let mut agent = Command::new(ferry_bin());
        agent
            .arg("agent")
            .arg("--listen")
            .arg(agent_addr.to_string())
            .arg("--private-key-file")
            .arg(dir.join("agent.key"))
            .arg("--peer")
            .arg(gateway_key.public_key().to_string());
        for check in healthchecks {
            agent.arg("--healthcheck").arg(check);
        }
        procs.spawn_until(agent, "Ready");

        // The gateway, through `ferry gateway`, on a free loopback TCP port.
        procs.gateway = free_tcp();
        procs.domain = format!("{host}:{}", procs.gateway.port());
        let listen = procs.gateway.to_string();
        let config = config_text(&listen, &procs.domain, agent_addr, &agent_key);
        let anchor = "database = \"shares.sqlite\"\n";
        assert!(config.contains(anchor));
        let config = config.replace(anchor, &format!("{anchor}{top_level}\n"));
        for (file, contents) in files {
            std::fs::write(dir.join(file), contents).unwrap();
        }
        std::fs::write(dir.join("gateway.toml"), config).unwrap();
        let mut gateway = Command::new(ferry_bin());
        gateway
            .arg("gateway")
            .arg("--config")
            .arg(dir.join("gateway.toml"));
        procs.spawn_until(gateway, "listening on");
        procs
    }

    /// The app host of `port` in workspace `ws` of alice.
    pub fn app_host(&self, port: u16) -> String {
        format!("{port}--main--ws--alice.{}", self.domain)
    }

    /// One request to the gateway; returns the status and the body.
    pub fn request(
        &self,
        method: &str,
        host: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, String) {
        let auth = token
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {host}\r\n{auth}content-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = TcpStream::connect_timeout(&self.gateway, COMMAND_TIMEOUT).unwrap();
        stream.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// A GET of the API as `token`, parsed as JSON.
    pub fn api_get(&self, path: &str, token: &str) -> (u16, serde_json::Value) {
        let (status, body) = self.request("GET", &self.domain, path, Some(token), "");
        let value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
        (status, value)
    }

    /// Polls `GET /api/v1/workspaces/ws/ports` until `port`'s health is `want`, or panics
    /// after `within` with the last answer.
    pub fn wait_for_health(&self, port: u16, want: &str, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, v) = self.api_get("/api/v1/workspaces/ws/ports", ALICE);
            let entry = v["ports"]
                .as_array()
                .and_then(|ports| ports.iter().find(|p| p["port"] == port).cloned());
            if status == 200
                && let Some(entry) = entry.filter(|e| e["health"] == want)
            {
                return entry;
            }
            assert!(
                Instant::now() < deadline,
                "port {port} not {want} within {within:?}: HTTP {status} {v}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `ferry ARGS` with `env` (and no inherited FERRY_* settings), bounded in time.
    pub fn ferry(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(ferry_bin());
        cmd.args(args);
        for var in [
            "FERRY_GATEWAY_URL",
            "FERRY_TOKEN",
            "FERRY_CONFIG",
            "FERRY_GATEWAY_CA",
        ] {
            cmd.env_remove(var);
        }
        // Keep any real user config out of the way.
        cmd.env("XDG_CONFIG_HOME", self.dir.join("no-config"));
        cmd.envs(env.iter().copied());
        run_bounded(cmd, COMMAND_TIMEOUT)
    }

    // Starts a child with piped stderr and waits for `ready` in it; stderr keeps being
    // drained (and echoed) afterwards so the child never blocks on it.
    fn spawn_until(&mut self, mut cmd: Command, ready: &str) {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        self.children.push(child);
        let (tx, rx) = mpsc::channel();
        let ready = ready.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[child] {line}");
                if line.contains(&ready) {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(STARTUP).is_err() {
            panic!("{cmd:?} did not become ready within {STARTUP:?}");
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `ferry`, next to this test's `ferry-gateway`.
pub fn ferry_bin() -> PathBuf {
    let path = gateway_bin().with_file_name("ferry");
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build --release --workspace --bins`",
        path.display()
    );
    path
}

pub fn gateway_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry-gateway"))
}

/// Runs a command to completion with piped output, killing it (by PID) after `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// A tiny HTTP app on loopback whose status a test sets, and that a test can close.
pub struct TestApp {
    pub port: u16,
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestApp {
    /// Starts answering every request with 200.
    pub fn start() -> TestApp {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let status = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (status.clone(), stop.clone());
        let thread = std::thread::spawn(move || serve_app(&listener, &s, &st));
        TestApp {
            port,
            status,
            stop,
            thread: Some(thread),
        }
    }

    /// Answers every later request with `status`.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Stops listening: connections to the port are refused from now on.
    pub fn close(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.close();
    }
}

fn serve_app(listener: &TcpListener, status: &AtomicU16, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let Ok((mut stream, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let code = status.load(Ordering::SeqCst);
        let body = format!("test app says {code}\n");
        let answer = format!(
            "HTTP/1.1 {code} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(answer.as_bytes());
    }
}

/// A loopback TCP port that nothing listens on (just freed).
pub fn free_tcp() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
}
