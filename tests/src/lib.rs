//! Harness for ferry's end-to-end tests: the real `ferry` binary, real sockets, loopback only.
//!
//! - [`Ferry`] runs one `ferry` process, collects its stderr in a buffer that a thread fills,
//!   and kills it on drop (so a failed assertion still cleans up).
//! - [`Workspace`] starts an agent and a port-forward wired to each other with fresh keys.
//! - [`TcpService`] and [`UdpEcho`] are the workspace's services (echo, sink, source), run on
//!   std threads inside the test process, on 127.0.0.1 or [::1].
//! - [`TestGuard`] serialises heavy tests (a process-wide lock) and bounds every test's time
//!   with a watchdog that kills every `ferry` child and exits if a test hangs.
//!
//! Every socket this harness opens has timeouts, and all traffic goes to loopback.
//!
//! The binary is `$FERRY_BIN`, or `target/release/ferry` of this workspace; build it first with
//! `cargo build --release --bin ferry`.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a `ferry` process may take to print "Ready".
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Read and write timeout of every TCP stream the tests open (a stall bound, not a total).
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Connect timeout (to local listeners, which accept at once).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The binary

/// The `ferry` binary: `$FERRY_BIN`, else `<workspace>/target/release/ferry`. Panics with a hint
/// when it is missing.
pub fn ferry_bin() -> PathBuf {
    let path = match std::env::var_os("FERRY_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/ferry"),
    };
    if !path.is_file() {
        panic!(
            "the ferry binary is missing at {}: run `cargo build --release --bin ferry` first \
             (or point FERRY_BIN at a built binary)",
            path.display()
        );
    }
    path
}

/// A `ferry` command with a clean environment: no inherited FERRY_* settings, logs at `info`.
pub fn ferry_command(args: &[String]) -> Command {
    let mut cmd = Command::new(ferry_bin());
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FERRY_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("FERRY_LOG", "info");
    cmd.stdin(Stdio::null());
    die_with_parent(&mut cmd);
    cmd
}

// The child gets SIGKILL if the thread that spawned it ends, as a backstop to `Drop` (for
// example when the test process is killed). Spawn long-lived children from the test's thread.
#[allow(unsafe_code)]
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

// PIDs of running children, for the watchdog.
fn children() -> MutexGuard<'static, HashSet<u32>> {
    static CHILDREN: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();
    lock(CHILDREN.get_or_init(Mutex::default))
}

/// Locks a mutex, ignoring poisoning (a failed test must not fail the others).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The output of a `ferry` run that finished.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Runs `ferry ARGS` with `stdin` and `env`, waits at most `timeout` (then kills it and
/// panics), and returns its output.
pub fn run_ferry(
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
    timeout: Duration,
) -> RunOutput {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut cmd = ferry_command(&args);
    cmd.envs(env.iter().copied());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn ferry");
    children().insert(child.id());
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A child that exits without reading its input is not an error here.
        let _ = pipe.write_all(text.as_bytes());
    }
    let stdout = drain(child.stdout.take().expect("stdout piped"));
    let stderr = drain(child.stderr.take().expect("stderr piped"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for ferry") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            children().remove(&child.id());
            panic!("ferry {args:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = started.elapsed();
    children().remove(&child.id());
    RunOutput {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed,
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

// ---------------------------------------------------------------------------------------------
// A running ferry process

/// One running `ferry` process. Its stderr is collected by a thread; it is killed on drop.
pub struct Ferry {
    name: String,
    args: Vec<String>,
    child: Child,
    log: Arc<(Mutex<String>, Condvar)>,
    reader: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

// Keep at most this much of a process's stderr (the start is kept; enough for any test).
const LOG_CAP: usize = 8 << 20;

impl Ferry {
    /// Spawns `ferry ARGS` with the extra environment `env`; `name` labels it in messages.
    pub fn spawn(name: &str, args: &[String], env: &[(&str, &str)]) -> Ferry {
        let mut cmd = ferry_command(args);
        cmd.envs(env.iter().copied());
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn ferry {args:?}: {e}"));
        children().insert(child.id());
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let mut text = lock(&sink.0);
                        if text.len() < LOG_CAP {
                            text.push_str(&String::from_utf8_lossy(&line));
                        }
                        drop(text);
                        sink.1.notify_all();
                    }
                }
            }
            // Wake waiters so that they notice the end.
            sink.1.notify_all();
        });
        Ferry {
            name: name.to_string(),
            args: args.to_vec(),
            child,
            log,
            reader: Some(reader),
            status: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The arguments it was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Everything it wrote to stderr so far, without ANSI colour codes.
    pub fn log(&self) -> String {
        strip_ansi(&lock(&self.log.0))
    }

    /// Waits until a line of stderr contains `needle`; returns that line. Errors (with the log)
    /// if the process exits or `timeout` passes first.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            if let Some(status) = self.try_status() {
                // The reader may still be copying the last lines.
                std::thread::sleep(Duration::from_millis(50));
                if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                    return Ok(line.to_string());
                }
                return Err(format!(
                    "{} exited ({status}) before printing {needle:?}; its stderr:\n{}",
                    self.name,
                    self.log()
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "{} did not print {needle:?} within {timeout:?}; its stderr:\n{}",
                    self.name,
                    self.log()
                ));
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            let guard = lock(&self.log.0);
            let _ = self.log.1.wait_timeout(guard, wait);
        }
    }

    /// Like [`Ferry::wait_for_line`], but panics on failure.
    pub fn expect_line(&mut self, needle: &str, timeout: Duration) -> String {
        match self.wait_for_line(needle, timeout) {
            Ok(line) => line,
            Err(e) => panic!("{e}"),
        }
    }

    /// The exit status if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.status = Some(status);
            children().remove(&self.child.id());
        }
        self.status
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Sends `signal` (such as `libc::SIGTERM`) unless the process already exited.
    pub fn signal(&mut self, signal: i32) {
        if self.is_running() {
            let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
            // SAFETY: kill(2) on our own child, which has not been reaped (is_running).
            #[allow(unsafe_code)]
            let rc = unsafe { libc::kill(pid, signal) };
            assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
        }
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.status = Some(status);
            }
            children().remove(&self.child.id());
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// The last `n` lines of stderr, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes ANSI escape sequences (tracing colours its output).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Test guard: serial sections and a watchdog

fn test_lock() -> &'static RwLock<()> {
    static LOCK: RwLock<()> = RwLock::new(());
    &LOCK
}

enum Held {
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
}

/// Held for a test's whole run: the process-wide test lock (shared or exclusive) and a
/// watchdog that ends the process, killing every ferry child, if the test overruns.
pub struct TestGuard {
    _held: Held,
    _stop: mpsc::Sender<()>,
}

/// For a light test: runs alongside other light tests, never alongside a heavy one; the test
/// must finish within `limit`.
pub fn light(limit: Duration) -> TestGuard {
    let held = Held::Shared(test_lock().read().unwrap_or_else(|e| e.into_inner()));
    guard(held, limit)
}

/// For a heavy or timing-sensitive test: runs alone (in this test binary); must finish within
/// `limit`.
pub fn heavy(limit: Duration) -> TestGuard {
    let held = Held::Exclusive(test_lock().write().unwrap_or_else(|e| e.into_inner()));
    guard(held, limit)
}

fn guard(held: Held, limit: Duration) -> TestGuard {
    let name = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(limit) {
            eprintln!("watchdog: {name} ran longer than {limit:?}; killing ferry processes");
            for pid in children().iter() {
                if let Ok(pid) = libc::pid_t::try_from(*pid) {
                    // SAFETY: kill(2) on our own children.
                    #[allow(unsafe_code)]
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
            std::process::exit(101);
        }
    });
    TestGuard {
        _held: held,
        _stop: stop,
    }
}

// ---------------------------------------------------------------------------------------------
// Files, keys, ports

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/ferry-tests-<pid>-<n>-<nanos>`.
    pub fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "ferry-tests-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `text` to `name` in the directory (mode 0600) and returns the path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .expect("create key file");
        file.write_all(text.as_bytes()).expect("write key file");
        path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A key pair made by `ferry keygen` and `ferry pubkey`.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// The private key, base64.
    pub private: String,
    /// The public key, base64.
    pub public: String,
}

impl KeyPair {
    /// Runs `ferry keygen`, then `ferry pubkey` on its output.
    pub fn generate() -> KeyPair {
        let t = Duration::from_secs(10);
        let out = run_ferry(&["keygen"], None, &[], t);
        assert!(out.status.success(), "ferry keygen failed: {out:?}");
        let private = out.stdout.trim().to_string();
        let out = run_ferry(&["pubkey"], Some(&format!("{private}\n")), &[], t);
        assert!(out.status.success(), "ferry pubkey failed: {out:?}");
        KeyPair {
            private,
            public: out.stdout.trim().to_string(),
        }
    }
}

/// A loopback port that is free for TCP and UDP on both 127.0.0.1 and [::1], taken from below
/// the kernel's ephemeral range so that outgoing connections do not grab it in the meantime.
/// (Someone may still take it before it is used; the race is accepted.)
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32768u64);
    let low = ephemeral_low.saturating_sub(12_000).max(10_000);
    let span = ephemeral_low.saturating_sub(low).max(1);
    let start = u64::from(std::process::id()).wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(low + (start + n) % span) else {
            continue;
        };
        if port_is_free(port) {
            return port;
        }
    }
    panic!("no free loopback port found");
}

fn port_is_free(port: u16) -> bool {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let tcp4 = TcpListener::bind(v4);
    let udp4 = UdpSocket::bind(v4);
    // [::1] may be missing on some hosts; then only IPv4 counts.
    let v6_ok = match (TcpListener::bind(v6), UdpSocket::bind(v6)) {
        (Ok(_), Ok(_)) => true,
        (Err(e), _) | (_, Err(e)) => e.kind() == std::io::ErrorKind::AddrNotAvailable,
    };
    tcp4.is_ok() && udp4.is_ok() && v6_ok
}

// ---------------------------------------------------------------------------------------------
// Backends and the workspace fixture

/// The I/O backend ferry is forced to use (`FERRY_IO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring.
    Uring,
    /// epoll.
    Epoll,
}

impl Backend {
    /// The value of `FERRY_IO`.
    pub fn env(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
        }
    }
}

/// Defines `mod $name { fn uring(); fn epoll(); }`: two tests running `$scenario(backend)`.
#[macro_export]
macro_rules! both_backends {
    ($(#[$meta:meta])* $name:ident => $scenario:path) => {
        $(#[$meta])*
        mod $name {
            #[test]
            fn uring() {
                $scenario($crate::Backend::Uring)
            }
            #[test]
            fn epoll() {
                $scenario($crate::Backend::Epoll)
            }
        }
    };
}

#[derive(Debug, Clone)]
enum Spec {
    // 127.0.0.1:<picked>:<remote>
    To(u16),
    // Given as is; the local address it opens.
    Raw(String, SocketAddr),
}

/// Builds a [`Workspace`].
pub struct WorkspaceBuilder {
    backend: Backend,
    tcp: Vec<Spec>,
    udp: Vec<Spec>,
    agent_peers: Option<Vec<String>>,
    forward_peer_key: Option<String>,
    wait_ready: bool,
    log: String,
    extra_forward_args: Vec<String>,
    extra_agent_args: Vec<String>,
    agent_ipv6: bool,
}

impl WorkspaceBuilder {
    /// Adds a TCP forward from a free port of 127.0.0.1 to the workspace port `remote`.
    pub fn tcp_to(mut self, remote: u16) -> Self {
        self.tcp.push(Spec::To(remote));
        self
    }

    /// Adds a UDP forward from a free port of 127.0.0.1 to the workspace port `remote`.
    pub fn udp_to(mut self, remote: u16) -> Self {
        self.udp.push(Spec::To(remote));
        self
    }

    /// Adds a TCP forward given as spec text; `local` is where it should listen.
    pub fn tcp_spec(mut self, spec: &str, local: SocketAddr) -> Self {
        self.tcp.push(Spec::Raw(spec.to_string(), local));
        self
    }

    /// Adds a UDP forward given as spec text; `local` is where it should listen.
    pub fn udp_spec(mut self, spec: &str, local: SocketAddr) -> Self {
        self.udp.push(Spec::Raw(spec.to_string(), local));
        self
    }

    /// The agent allows these public keys instead of the port-forward's.
    pub fn agent_peers(mut self, peers: Vec<String>) -> Self {
        self.agent_peers = Some(peers);
        self
    }

    /// The port-forward expects this agent public key instead of the real one.
    pub fn forward_peer_key(mut self, key: String) -> Self {
        self.forward_peer_key = Some(key);
        self
    }

    /// Do not wait for the port-forward's "Ready" (for tunnels that must not come up).
    pub fn no_wait_ready(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    /// `FERRY_LOG` for both processes (default `$FERRY_TESTS_LOG`, else `info`).
    pub fn log(mut self, filter: &str) -> Self {
        self.log = filter.to_string();
        self
    }

    /// Extra arguments for the port-forward.
    pub fn forward_args(mut self, args: &[&str]) -> Self {
        self.extra_forward_args
            .extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Extra arguments for the agent.
    pub fn agent_args(mut self, args: &[&str]) -> Self {
        self.extra_agent_args
            .extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// The agent listens on [::1] (and the port-forward's endpoint is there).
    pub fn agent_on_ipv6(mut self) -> Self {
        self.agent_ipv6 = true;
        self
    }

    /// Starts the agent, waits for its "Ready", starts the port-forward, waits for a
    /// "Forwarding" line per listener and (unless [`WorkspaceBuilder::no_wait_ready`]) "Ready".
    pub fn start(self) -> Workspace {
        let dir = TempDir::new();
        let agent_key = KeyPair::generate();
        let client_key = KeyPair::generate();
        let agent_key_file = dir.write("agent.key", &format!("{}\n", agent_key.private));
        let client_key_file = dir.write("client.key", &format!("{}\n", client_key.private));
        let agent_port = free_port();
        let agent_addr = if self.agent_ipv6 {
            SocketAddr::from((Ipv6Addr::LOCALHOST, agent_port))
        } else {
            SocketAddr::from((Ipv4Addr::LOCALHOST, agent_port))
        };
        let peers = self
            .agent_peers
            .clone()
            .unwrap_or_else(|| vec![client_key.public.clone()]);
        let mut agent_args = vec![
            "agent".to_string(),
            "--listen".to_string(),
            agent_addr.to_string(),
            "--private-key-file".to_string(),
            agent_key_file.display().to_string(),
        ];
        for peer in &peers {
            agent_args.push("--peer".to_string());
            agent_args.push(peer.clone());
        }
        agent_args.extend(self.extra_agent_args.iter().cloned());
        let env = vec![
            ("FERRY_IO", self.backend.env().to_string()),
            ("FERRY_LOG", self.log.clone()),
        ];
        let agent = start_agent(&agent_args, &env);

        let resolve = |specs: &[Spec]| -> Vec<(String, SocketAddr)> {
            specs
                .iter()
                .map(|s| match s {
                    Spec::To(remote) => {
                        let local = free_port();
                        (
                            format!("127.0.0.1:{local}:{remote}"),
                            SocketAddr::from((Ipv4Addr::LOCALHOST, local)),
                        )
                    }
                    Spec::Raw(text, local) => (text.clone(), *local),
                })
                .collect()
        };
        let tcp = resolve(&self.tcp);
        let udp = resolve(&self.udp);
        let mut forward_args = vec![
            "port-forward".to_string(),
            "ws".to_string(),
            "--endpoint".to_string(),
            agent_addr.to_string(),
            "--peer-public-key".to_string(),
            self.forward_peer_key
                .clone()
                .unwrap_or_else(|| agent_key.public.clone()),
            "--private-key-file".to_string(),
            client_key_file.display().to_string(),
        ];
        for (spec, _) in &tcp {
            forward_args.push("--tcp".to_string());
            forward_args.push(spec.clone());
        }
        for (spec, _) in &udp {
            forward_args.push("--udp".to_string());
            forward_args.push(spec.clone());
        }
        forward_args.extend(self.extra_forward_args.iter().cloned());
        let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut forward = Ferry::spawn("port-forward", &forward_args, &env_ref);
        for (protocol, list) in [("tcp", &tcp), ("udp", &udp)] {
            for (spec, local) in list.iter() {
                let needle = format!("Forwarding {protocol} {local} -> ws:");
                if let Err(e) = forward.wait_for_line(&needle, READY_TIMEOUT) {
                    panic!("spec {spec:?}: {e}");
                }
            }
        }
        if self.wait_ready
            && let Err(e) = forward.wait_for_line("Ready", READY_TIMEOUT)
        {
            panic!("{e}\n--- agent stderr:\n{}", agent.log());
        }
        Workspace {
            backend: self.backend,
            dir,
            agent_key,
            client_key,
            agent_addr,
            agent_args,
            env,
            agent,
            forward,
            tcp: tcp.into_iter().map(|(_, a)| a).collect(),
            udp: udp.into_iter().map(|(_, a)| a).collect(),
        }
    }
}

fn start_agent(args: &[String], env: &[(&'static str, String)]) -> Ferry {
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut agent = Ferry::spawn("agent", args, &env_ref);
    agent.expect_line("Ready", READY_TIMEOUT);
    agent
}

/// An agent and a port-forward connected over loopback, each a `ferry` process.
pub struct Workspace {
    /// The backend both run with.
    pub backend: Backend,
    /// Holds the key files.
    pub dir: TempDir,
    /// The agent's keys.
    pub agent_key: KeyPair,
    /// The port-forward's keys.
    pub client_key: KeyPair,
    /// The agent's UDP address (127.0.0.1 or [::1]).
    pub agent_addr: SocketAddr,
    agent_args: Vec<String>,
    env: Vec<(&'static str, String)>,
    /// The agent process.
    pub agent: Ferry,
    /// The port-forward process.
    pub forward: Ferry,
    /// Local address of each TCP forward, in the order added.
    pub tcp: Vec<SocketAddr>,
    /// Local address of each UDP forward, in the order added.
    pub udp: Vec<SocketAddr>,
}

impl Workspace {
    /// A builder for a workspace whose processes use `backend`.
    pub fn builder(backend: Backend) -> WorkspaceBuilder {
        WorkspaceBuilder {
            backend,
            tcp: Vec::new(),
            udp: Vec::new(),
            agent_peers: None,
            forward_peer_key: None,
            wait_ready: true,
            log: std::env::var("FERRY_TESTS_LOG").unwrap_or_else(|_| "info".to_string()),
            extra_forward_args: Vec::new(),
            extra_agent_args: Vec::new(),
            agent_ipv6: false,
        }
    }

    /// Kills the agent (SIGKILL) and starts a new one with the same arguments: same port, same
    /// key, same peers. Returns once the new one printed "Ready".
    pub fn restart_agent(&mut self) {
        self.agent.kill();
        self.agent = start_agent(&self.agent_args, &self.env);
    }

    /// Both processes' logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- agent stderr (last lines):\n{}\n--- port-forward stderr (last lines):\n{}",
            self.agent.log_tail(40),
            self.forward.log_tail(40)
        )
    }

    /// Panics unless both processes are still running.
    pub fn assert_alive(&mut self) {
        let agent = self.agent.try_status();
        let forward = self.forward.try_status();
        assert!(
            agent.is_none() && forward.is_none(),
            "a ferry process died: agent {agent:?}, port-forward {forward:?}\n{}",
            self.logs()
        );
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[{:?}] {}", self.backend, self.logs());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Data

/// A cheap deterministic byte stream (xorshift64), one per seed.
pub struct Pattern(u64);

impl Pattern {
    /// The stream for `seed`.
    pub fn new(seed: u64) -> Pattern {
        Pattern(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Fills `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }

    /// `len` bytes of the stream for `seed`.
    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        Pattern::new(seed).fill(&mut v);
        v
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Connects to `addr` (with [`CONNECT_TIMEOUT`]) and sets [`IO_TIMEOUT`] on reads and writes.
pub fn connect(addr: SocketAddr) -> TcpStream {
    try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Like [`connect`], returning the error.
pub fn try_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Sends `payload` on a new connection to `addr`, expecting the same bytes back within
/// `timeout`; then half-closes and expects EOF.
pub fn echo_round_trip(addr: SocketAddr, payload: &[u8], timeout: Duration) -> Result<(), String> {
    let mut s = try_connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(payload).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back)
        .map_err(|e| format!("reading the echo of {} bytes: {e}", payload.len()))?;
    if back != payload {
        return Err("the echo differs from what was sent".into());
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .map_err(|e| format!("waiting for EOF after the echo: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} unexpected bytes after the echo", rest.len()));
    }
    Ok(())
}

/// Retries [`echo_round_trip`] (each try bounded by `per_try`) until it succeeds or `within`
/// passes; returns how long it took, or the last error.
pub fn echo_eventually(
    addr: SocketAddr,
    payload: &[u8],
    per_try: Duration,
    within: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let err = match echo_round_trip(addr, payload, per_try) {
            Ok(()) => return Ok(started.elapsed()),
            Err(e) => e,
        };
        if started.elapsed() >= within {
            return Err(format!(
                "{tries} tries over {:?}, last: {err}",
                started.elapsed()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A barrier whose wait gives up after a timeout (so that one failed flow cannot hang others).
pub struct TimedBarrier {
    n: usize,
    state: Mutex<(usize, bool)>,
    cv: Condvar,
}

impl TimedBarrier {
    /// A barrier for `n` threads.
    pub fn new(n: usize) -> TimedBarrier {
        TimedBarrier {
            n,
            state: Mutex::new((0, false)),
            cv: Condvar::new(),
        }
    }

    /// Waits until `n` threads arrived; errors after `timeout` or if the barrier was broken.
    pub fn wait(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.state);
        st.0 += 1;
        if st.0 >= self.n {
            self.cv.notify_all();
            return Ok(());
        }
        loop {
            if st.1 {
                return Err("barrier broken by a failed thread".into());
            }
            if st.0 >= self.n {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                let arrived = st.0;
                st.1 = true;
                self.cv.notify_all();
                return Err(format!(
                    "only {arrived} of {} threads reached the barrier within {timeout:?}",
                    self.n
                ));
            }
            st = self
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Makes every current and later wait fail at once.
    pub fn breaks(&self) {
        lock(&self.state).1 = true;
        self.cv.notify_all();
    }
}

// ---------------------------------------------------------------------------------------------
// Services on the workspace's side

/// Counters a service keeps.
#[derive(Default)]
pub struct ServiceStats {
    /// Connections accepted so far.
    pub accepted: AtomicUsize,
    /// Connections open now.
    pub active: AtomicUsize,
    /// The most connections open at once.
    pub peak: AtomicUsize,
    /// For a source: SHA-256 hex of what it sent, by seed.
    pub sent: Mutex<HashMap<u64, (u64, String)>>,
}

/// What a TCP service does with each connection.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Writes back everything it reads; half-closes after EOF.
    Echo,
    /// Reads to EOF, then replies `"<sha256 hex> <byte count>\n"` and closes.
    Sink,
    /// Reads a 16-byte request (seed, length; little-endian u64s), writes that many bytes of
    /// [`Pattern`] `seed`, records their SHA-256 in [`ServiceStats::sent`], and closes.
    Source,
    /// Reads until at least one byte arrived, then closes with a reset (RST, not FIN).
    ResetAfterRead,
}

/// A TCP service on a loopback listener, one thread per connection. Stops accepting on drop.
pub struct TcpService {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    stats: Arc<ServiceStats>,
    thread: Option<JoinHandle<()>>,
}

impl TcpService {
    /// Starts `kind` on 127.0.0.1 at a port the kernel picks.
    pub fn start(kind: Kind) -> TcpService {
        Self::start_on(kind, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    /// Starts `kind` listening on `addr`.
    pub fn start_on(kind: Kind, addr: SocketAddr) -> TcpService {
        Self::try_start_on(kind, addr).unwrap_or_else(|e| panic!("listen on {addr}: {e}"))
    }

    /// Like [`TcpService::start_on`], returning the error.
    pub fn try_start_on(kind: Kind, addr: SocketAddr) -> std::io::Result<TcpService> {
        let listener = TcpListener::bind(addr)?;
        deepen_backlog(&listener)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ServiceStats::default());
        let (st, ss) = (stop.clone(), stats.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let stats = ss.clone();
                        stats.accepted.fetch_add(1, Ordering::Relaxed);
                        let now = stats.active.fetch_add(1, Ordering::Relaxed) + 1;
                        stats.peak.fetch_max(now, Ordering::Relaxed);
                        std::thread::spawn(move || {
                            let _ = serve(kind, stream, &stats);
                            stats.active.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(TcpService {
            addr,
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its counters.
    pub fn stats(&self) -> &ServiceStats {
        &self.stats
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now (accepted, and their handler has not returned).
    pub fn active(&self) -> usize {
        self.stats.active.load(Ordering::Relaxed)
    }
}

impl Drop for TcpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// std listens with a backlog of 128; hundreds of flows connecting at once need more, or the
// kernel drops SYNs and the connects wait for a retransmission.
fn deepen_backlog(listener: &TcpListener) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: listen(2) on a socket we own; calling it again only changes the backlog.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn serve(kind: Kind, mut stream: TcpStream, stats: &ServiceStats) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 256 * 1024];
    match kind {
        Kind::Echo => loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                stream.shutdown(Shutdown::Write)?;
                return Ok(());
            }
            stream.write_all(&buf[..n])?;
        },
        Kind::Sink => {
            let mut hasher = Sha256::new();
            let mut count = 0u64;
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                count += n as u64;
            }
            let reply = format!("{} {count}\n", hex(&hasher.finalize()));
            stream.write_all(reply.as_bytes())?;
            stream.shutdown(Shutdown::Write)?;
            // Linger until the client closes, so that the reply is not cut by a reset.
            let _ = stream.read(&mut buf);
            Ok(())
        }
        Kind::Source => {
            let mut request = [0u8; 16];
            stream.read_exact(&mut request)?;
            let (seed_bytes, len_bytes) = request.split_at(8);
            let seed = u64::from_le_bytes(seed_bytes.try_into().unwrap_or_default());
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or_default());
            let mut pattern = Pattern::new(seed);
            let mut hasher = Sha256::new();
            let mut left = len;
            while left > 0 {
                let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                pattern.fill(&mut buf[..n]);
                hasher.update(&buf[..n]);
                stream.write_all(&buf[..n])?;
                left -= n as u64;
            }
            lock(&stats.sent).insert(seed, (len, hex(&hasher.finalize())));
            stream.shutdown(Shutdown::Write)?;
            let _ = stream.read(&mut buf);
            Ok(())
        }
        Kind::ResetAfterRead => {
            let _ = stream.read(&mut buf)?;
            reset_close(stream);
            Ok(())
        }
    }
}

/// Closes `stream` with a reset (SO_LINGER 0), so the peer sees RST rather than FIN.
pub fn reset_close(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt(2) on a socket we own, with a correctly sized linger struct.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(SO_LINGER): {}",
        std::io::Error::last_os_error()
    );
    drop(stream);
}

/// A UDP echo service: sends every datagram back to where it came from. Stops on drop.
pub struct UdpEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    /// Starts on 127.0.0.1 at a port the kernel picks.
    pub fn start() -> UdpEcho {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    /// Starts on `addr`.
    pub fn start_on(addr: SocketAddr) -> UdpEcho {
        let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind UDP {addr}: {e}"));
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("set UDP timeout");
        let addr = socket.local_addr().expect("UDP local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicUsize::new(0));
        let (st, rc) = (stop.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    rc.fetch_add(1, Ordering::Relaxed);
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        UdpEcho {
            addr,
            stop,
            received,
            thread: Some(thread),
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Datagrams received so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP client socket connected to `addr`, with a read timeout of `timeout`.
pub fn udp_client(addr: SocketAddr, timeout: Duration) -> UdpSocket {
    let bind: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::LOCALHOST, 0).into()
    } else {
        (Ipv6Addr::LOCALHOST, 0).into()
    };
    let socket = UdpSocket::bind(bind).expect("bind UDP client");
    socket.connect(addr).expect("connect UDP client");
    socket
        .set_read_timeout(Some(timeout))
        .expect("set UDP timeout");
    socket
}

/// Parses a literal loopback `ip:port` (`[::1]:80` for IPv6); panics on anything else.
pub fn loopback(text: &str) -> SocketAddr {
    let addr: SocketAddr = text
        .parse()
        .unwrap_or_else(|e| panic!("bad address {text}: {e}"));
    assert!(addr.ip().is_loopback(), "{addr} is not loopback");
    addr
}

/// What [`upload_to_sink`] measured.
#[derive(Debug)]
pub struct Upload {
    /// SHA-256 hex of what was sent.
    pub sent_sha256: String,
    /// The sink's reply: SHA-256 hex of what it received.
    pub received_sha256: String,
    /// The sink's reply: how many bytes it received.
    pub received_bytes: u64,
    /// Connect to reply.
    pub elapsed: Duration,
}

/// Sends `len` bytes of [`Pattern`] `seed` to a [`Kind::Sink`] at `addr`, half-closes, and
/// reads the sink's reply and then EOF. Bounded by [`IO_TIMEOUT`] per stall.
pub fn upload_to_sink(addr: SocketAddr, len: u64, seed: u64) -> Result<Upload, String> {
    let started = Instant::now();
    let mut s = try_connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let mut pattern = Pattern::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        pattern.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        s.write_all(&buf[..n])
            .map_err(|e| format!("upload write after {} bytes: {e}", len - left))?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown(Write): {e}"))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .map_err(|e| format!("reading the sink's reply after the half-close: {e}"))?;
    let mut words = reply.split_whitespace();
    let (Some(hash), Some(count), None) = (words.next(), words.next(), words.next()) else {
        return Err(format!("malformed sink reply {reply:?}"));
    };
    Ok(Upload {
        sent_sha256: hex(&hasher.finalize()),
        received_sha256: hash.to_string(),
        received_bytes: count
            .parse()
            .map_err(|_| format!("malformed sink reply {reply:?}"))?,
        elapsed: started.elapsed(),
    })
}

/// What [`download_from_source`] measured.
#[derive(Debug)]
pub struct Download {
    /// SHA-256 hex of what arrived.
    pub sha256: String,
    /// How many bytes arrived before EOF.
    pub bytes: u64,
    /// Connect to EOF.
    pub elapsed: Duration,
}

/// Asks a [`Kind::Source`] at `addr` for `len` bytes of [`Pattern`] `seed` and reads to EOF.
pub fn download_from_source(addr: SocketAddr, len: u64, seed: u64) -> Result<Download, String> {
    let started = Instant::now();
    let mut s = try_connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let mut request = [0u8; 16];
    request[..8].copy_from_slice(&seed.to_le_bytes());
    request[8..].copy_from_slice(&len.to_le_bytes());
    s.write_all(&request)
        .map_err(|e| format!("write request: {e}"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("download read after {bytes} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(Download {
        sha256: hex(&hasher.finalize()),
        bytes,
        elapsed: started.elapsed(),
    })
}

/// Throughput in Gbit/s, for reports.
pub fn gbit_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64().max(1e-9) / 1e9
}
