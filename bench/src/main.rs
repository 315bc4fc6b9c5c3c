//! ferry-bench: compares ferry's port-forward with a direct connection, `ssh -L`, and SSH
//! carried inside the ferry tunnel, on loopback only.
//!
//! `compare` starts an in-process TCP service (sink, source and echo), sets up each path with
//! processes it starts itself (and kills when the path is done), and measures single-stream
//! upload and download throughput and small-message request/response latency. `check` runs
//! `compare` and fails when a path's ratio to direct fell more than a tolerance below a
//! baseline's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Measure every path and print a table.
    Compare(CompareArgs),
    /// Run compare and fail if a path's ratio to direct fell below a baseline's.
    Check {
        /// JSON written by an earlier `compare --json`.
        #[arg(long, value_name = "FILE")]
        baseline: PathBuf,
        /// Allowed relative drop of a ratio (0.25 = 25 %).
        #[arg(long, default_value_t = 0.25)]
        tolerance: f64,
        #[command(flatten)]
        compare: CompareArgs,
    },
}

#[derive(Args, Debug, Clone)]
struct CompareArgs {
    /// Seconds of each throughput measurement (upload, download), at most 120.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seconds of the request/response measurement, at most 60.
    #[arg(long, default_value_t = 2.0)]
    rr_seconds: f64,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the table as markdown.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// The ferry binary [default: target/release/ferry next to this binary, or on PATH].
    #[arg(long, value_name = "FILE")]
    ferry: Option<PathBuf>,
    /// Only run these paths (comma list of names: direct, ferry, ssh-aes128-gcm, ssh-chacha20,
    /// ssh-in-ferry-aes128-gcm, ssh-in-ferry-chacha20).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Compare(args) => compare(&args).map(|_| 0),
        Cmd::Check {
            baseline,
            tolerance,
            compare: args,
        } => check(&args, &baseline, tolerance),
    };
    match code {
        Ok(c) => std::process::exit(c),
        Err(e) => {
            eprintln!("ferry-bench: {e}");
            std::process::exit(2);
        }
    }
}

// ------------------------------------------------------------------ results

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
struct PathResult {
    name: String,
    /// "ok", "skipped" or "failed".
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    up_gbit_s: Option<f64>,
    down_gbit_s: Option<f64>,
    rr_p50_us: Option<u64>,
    rr_p99_us: Option<u64>,
    rr_p999_us: Option<u64>,
    rr_count: Option<u64>,
    /// CPU seconds of the forwarding processes per GiB moved (upload + download).
    cpu_s_per_gib: Option<f64>,
    /// Sum of the forwarding processes' peak RSS (VmHWM).
    peak_rss_mib: Option<f64>,
    #[serde(default)]
    processes: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct Report {
    seconds: f64,
    rr_seconds: f64,
    rr_message_bytes: usize,
    paths: Vec<PathResult>,
}

const RR_BYTES: usize = 64;
const IO_TIMEOUT: Duration = Duration::from_secs(15);

fn compare(args: &CompareArgs) -> Result<Report> {
    if !(args.seconds > 0.0 && args.seconds <= 120.0) {
        return Err("--seconds must be in (0, 120]".into());
    }
    if !(args.rr_seconds > 0.0 && args.rr_seconds <= 60.0) {
        return Err("--rr-seconds must be in (0, 60]".into());
    }
    let service = start_service()?;
    let tmp = TempDir::new()?;
    let ferry = find_ferry(args.ferry.as_deref());
    let ssh = SshTools::find();
    let mut paths = Vec::new();
    let names = [
        "direct",
        "ferry",
        "ssh-aes128-gcm",
        "ssh-chacha20",
        "ssh-in-ferry-aes128-gcm",
        "ssh-in-ferry-chacha20",
    ];
    for name in names {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("== {name}");
        let result = run_path(name, args, service, &tmp, ferry.as_ref(), &ssh);
        let r = match result {
            Ok(r) => r,
            Err(PathError::Skip(reason)) => PathResult {
                name: name.into(),
                status: "skipped".into(),
                reason: Some(reason),
                ..Default::default()
            },
            Err(PathError::Fail(reason)) => PathResult {
                name: name.into(),
                status: "failed".into(),
                reason: Some(reason),
                ..Default::default()
            },
        };
        if let Some(reason) = &r.reason {
            eprintln!("   {}: {reason}", r.status);
        }
        paths.push(r);
    }
    let report = Report {
        seconds: args.seconds,
        rr_seconds: args.rr_seconds,
        rr_message_bytes: RR_BYTES,
        paths,
    };
    let table = markdown(&report);
    println!("{table}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table)?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    Ok(report)
}

fn fmt_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn markdown(r: &Report) -> String {
    let mut s = format!(
        "Single stream, {} s per direction; request/response {} B echo for {} s; loopback.\n\n",
        r.seconds, r.rr_message_bytes, r.rr_seconds
    );
    s.push_str("| path | up Gbit/s | down Gbit/s | rr p50 us | rr p99 us | rr p99.9 us | forwarder CPU s/GiB | peak RSS MiB |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for p in &r.paths {
        if p.status != "ok" {
            s.push_str(&format!(
                "| {} | {} ({}) | | | | | | |\n",
                p.name,
                p.status,
                p.reason.as_deref().unwrap_or("")
            ));
            continue;
        }
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            p.name,
            fmt_opt(p.up_gbit_s.map(|v| format!("{v:.2}"))),
            fmt_opt(p.down_gbit_s.map(|v| format!("{v:.2}"))),
            fmt_opt(p.rr_p50_us),
            fmt_opt(p.rr_p99_us),
            fmt_opt(p.rr_p999_us),
            fmt_opt(p.cpu_s_per_gib.map(|v| format!("{v:.2}"))),
            fmt_opt(p.peak_rss_mib.map(|v| format!("{v:.1}"))),
        ));
    }
    s
}

// ------------------------------------------------------------------ check

/// (metric, higher-is-better ratio of this path to direct)
fn ratios(report: &Report) -> BTreeMap<String, Vec<(&'static str, f64)>> {
    let mut out = BTreeMap::new();
    let Some(direct) = report
        .paths
        .iter()
        .find(|p| p.name == "direct" && p.status == "ok")
    else {
        return out;
    };
    for p in report.paths.iter().filter(|p| p.status == "ok") {
        let mut v = Vec::new();
        if let (Some(a), Some(d)) = (p.up_gbit_s, direct.up_gbit_s)
            && d > 0.0
        {
            v.push(("up", a / d));
        }
        if let (Some(a), Some(d)) = (p.down_gbit_s, direct.down_gbit_s)
            && d > 0.0
        {
            v.push(("down", a / d));
        }
        // Latency: direct / path, so that higher is better like the others.
        for (metric, a, d) in [
            ("rr_p50", p.rr_p50_us, direct.rr_p50_us),
            ("rr_p99", p.rr_p99_us, direct.rr_p99_us),
        ] {
            if let (Some(a), Some(d)) = (a, d)
                && a > 0
            {
                v.push((metric, d as f64 / a as f64));
            }
        }
        out.insert(p.name.clone(), v);
    }
    out
}

fn check(args: &CompareArgs, baseline: &Path, tolerance: f64) -> Result<i32> {
    let text = std::fs::read_to_string(baseline)
        .map_err(|e| format!("cannot read baseline {}: {e}", baseline.display()))?;
    let base: Report = serde_json::from_str(&text)
        .map_err(|e| format!("baseline {} is not compare JSON: {e}", baseline.display()))?;
    let base_ratios = ratios(&base);
    if base_ratios.is_empty() {
        return Err("the baseline has no successful direct path".into());
    }
    let now = compare(args)?;
    let now_ratios = ratios(&now);
    if now_ratios.is_empty() {
        return Err("this run has no successful direct path".into());
    }
    let mut failures = Vec::new();
    for (path, metrics) in &base_ratios {
        let Some(current) = now_ratios.get(path) else {
            let status = now
                .paths
                .iter()
                .find(|p| &p.name == path)
                .map_or("not run".to_string(), |p| p.status.clone());
            if status == "failed" {
                failures.push(format!("{path}: failed in this run"));
            } else {
                eprintln!("note: {path} is in the baseline but {status} in this run");
            }
            continue;
        };
        for (metric, base_ratio) in metrics {
            let Some((_, ratio)) = current.iter().find(|(m, _)| m == metric) else {
                continue;
            };
            let floor = base_ratio * (1.0 - tolerance);
            // Tail latency on a shared machine is too noisy to gate on: it is shown only.
            let gated = *metric != "rr_p99";
            let verdict = match (gated, *ratio < floor) {
                (false, _) => "info",
                (true, true) => "FAIL",
                (true, false) => "ok",
            };
            println!(
                "{verdict:4} {path:26} {metric:7} ratio to direct {ratio:.3} (baseline {base_ratio:.3}, floor {floor:.3})"
            );
            if gated && *ratio < floor {
                failures.push(format!(
                    "{path} {metric}: ratio to direct {ratio:.3} < {floor:.3} (baseline {base_ratio:.3} - {:.0}%)",
                    tolerance * 100.0
                ));
            }
        }
    }
    if failures.is_empty() {
        println!("check passed");
        Ok(0)
    } else {
        for f in &failures {
            eprintln!("regression: {f}");
        }
        Ok(1)
    }
}

// ------------------------------------------------------------------ service

/// The in-process service: the first byte of a connection selects sink (`U`), source (`D`) or
/// echo (`E`). The sink answers the byte count it read once the client half-closes.
fn start_service() -> Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(stream) = conn else { continue };
            thread::spawn(move || {
                let _ = serve(stream);
            });
        }
    });
    Ok(addr)
}

fn serve(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    s.set_write_timeout(Some(Duration::from_secs(300)))?;
    let mut mode = [0u8; 1];
    if s.read(&mut mode)? == 0 {
        return Ok(());
    }
    let mut buf = vec![0u8; 256 * 1024];
    match mode[0] {
        b'U' => {
            let mut total = 0u64;
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            s.write_all(&total.to_le_bytes())?;
        }
        b'D' => loop {
            s.write_all(&buf)?;
        },
        b'E' => loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n])?;
        },
        _ => {}
    }
    Ok(())
}

fn connect(addr: SocketAddr, mode: u8) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    s.write_all(&[mode])?;
    Ok(s)
}

fn gbit(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs.max(1e-9) / 1e9
}

fn upload(addr: SocketAddr, secs: f64) -> Result<(u64, f64)> {
    let mut s = connect(addr, b'U')?;
    let buf = vec![0x5au8; 128 * 1024];
    let start = Instant::now();
    let until = Duration::from_secs_f64(secs);
    let mut sent = 0u64;
    while start.elapsed() < until {
        s.write_all(&buf)?;
        sent += buf.len() as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)
        .map_err(|e| format!("upload: no byte count from the service: {e}"))?;
    let elapsed = start.elapsed().as_secs_f64();
    let received = u64::from_le_bytes(count);
    if received != sent {
        return Err(format!("upload: sent {sent} bytes but the service read {received}").into());
    }
    Ok((received, elapsed))
}

fn download(addr: SocketAddr, secs: f64) -> Result<(u64, f64)> {
    let mut s = connect(addr, b'D')?;
    let mut buf = vec![0u8; 256 * 1024];
    // The first byte marks the start, so that connection setup is not counted.
    s.read_exact(&mut buf[..1])?;
    let start = Instant::now();
    let until = Duration::from_secs_f64(secs);
    let mut got = 0u64;
    while start.elapsed() < until {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err("download: the service closed early".into());
        }
        got += n as u64;
    }
    Ok((got, start.elapsed().as_secs_f64()))
}

fn request_response(addr: SocketAddr, secs: f64) -> Result<Histogram<u64>> {
    let mut s = connect(addr, b'E')?;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let msg = [0xa5u8; RR_BYTES];
    let mut back = [0u8; RR_BYTES];
    for _ in 0..50 {
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
    }
    let start = Instant::now();
    let until = Duration::from_secs_f64(secs);
    while start.elapsed() < until {
        let t = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        h.record((t.elapsed().as_micros() as u64).max(1))?;
        if back != msg {
            return Err("request/response: echo differs".into());
        }
    }
    Ok(h)
}

// ------------------------------------------------------------------ paths

enum PathError {
    Skip(String),
    Fail(String),
}

impl<E: std::fmt::Display> From<E> for PathError {
    fn from(e: E) -> Self {
        PathError::Fail(e.to_string())
    }
}

fn run_path(
    name: &str,
    args: &CompareArgs,
    service: SocketAddr,
    tmp: &TempDir,
    ferry: Option<&PathBuf>,
    ssh: &SshTools,
) -> Result<PathResult, PathError> {
    let mut procs = Procs::default();
    let need_ferry = || {
        ferry.ok_or_else(|| {
            PathError::Skip("ferry binary not found (build it or pass --ferry)".into())
        })
    };
    let need_ssh = || -> Result<(), PathError> {
        match &ssh.missing {
            Some(m) => Err(PathError::Skip(m.clone())),
            None => Ok(()),
        }
    };
    let cipher = |n: &str| {
        if n.ends_with("chacha20") {
            "chacha20-poly1305@openssh.com"
        } else {
            "aes128-gcm@openssh.com"
        }
    };
    let addr = match name {
        "direct" => service,
        "ferry" => {
            let f = need_ferry()?;
            let agent = start_agent(f, tmp, &mut procs)?;
            let lport = free_tcp_port()?;
            let mut cmd = Command::new(f);
            cmd.arg("port-forward")
                .arg("ws")
                .args(agent.client_args())
                .arg("--tcp")
                .arg(format!("{lport}:{}", service.port()));
            procs.spawn_ready("ferry port-forward", cmd, tmp)?;
            let a = SocketAddr::from((Ipv4Addr::LOCALHOST, lport));
            wait_accepting(a, Duration::from_secs(10))?;
            a
        }
        n if n.starts_with("ssh-in-ferry") => {
            need_ssh()?;
            let f = need_ferry()?;
            let sshd = start_sshd(ssh, tmp, &mut procs)?;
            let agent = start_agent(f, tmp, &mut procs)?;
            let proxy = format!(
                "ProxyCommand={} nc ws {} {}",
                shell_quote(&f.display().to_string()),
                sshd,
                agent
                    .client_args()
                    .iter()
                    .map(|a| shell_quote(a))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            start_ssh_forward(ssh, tmp, &mut procs, sshd, cipher(n), Some(&proxy), service)?
        }
        n if n.starts_with("ssh-") => {
            need_ssh()?;
            let sshd = start_sshd(ssh, tmp, &mut procs)?;
            start_ssh_forward(ssh, tmp, &mut procs, sshd, cipher(n), None, service)?
        }
        other => return Err(PathError::Fail(format!("unknown path {other}"))),
    };

    let before = procs.cpu_ticks();
    let (up_bytes, up_secs) = upload(addr, args.seconds)?;
    let (down_bytes, down_secs) = download(addr, args.seconds)?;
    let after = procs.cpu_ticks();
    let rr = request_response(addr, args.rr_seconds)?;
    let rss = procs.peak_rss_kib();
    let processes = procs.describe();
    procs.kill_all();

    let ticks = cpu_delta(&before, &after);
    let hz = clock_ticks_per_second();
    let gib = (up_bytes + down_bytes) as f64 / (1u64 << 30) as f64;
    let forwarded = !procs.is_empty_spawned();
    Ok(PathResult {
        name: name.into(),
        status: "ok".into(),
        reason: None,
        up_gbit_s: Some(gbit(up_bytes, up_secs)),
        down_gbit_s: Some(gbit(down_bytes, down_secs)),
        rr_p50_us: Some(rr.value_at_quantile(0.5)),
        rr_p99_us: Some(rr.value_at_quantile(0.99)),
        rr_p999_us: Some(rr.value_at_quantile(0.999)),
        rr_count: Some(rr.len()),
        cpu_s_per_gib: forwarded.then(|| ticks as f64 / hz / gib.max(1e-9)),
        peak_rss_mib: forwarded.then(|| rss as f64 / 1024.0),
        processes,
    })
}

struct Agent {
    endpoint: SocketAddr,
    public: String,
    client_key: PathBuf,
}

impl Agent {
    fn client_args(&self) -> Vec<String> {
        vec![
            "--endpoint".into(),
            self.endpoint.to_string(),
            "--peer-public-key".into(),
            self.public.clone(),
            "--private-key-file".into(),
            self.client_key.display().to_string(),
        ]
    }
}

fn ferry_key(ferry: &Path, file: &Path) -> Result<String> {
    let out = Command::new(ferry).arg("keygen").output()?;
    if !out.status.success() {
        return Err("ferry keygen failed".into());
    }
    write_private(file, &out.stdout)?;
    let mut child = Command::new(ferry)
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&out.stdout)?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err("ferry pubkey failed".into());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn write_private(file: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)?;
    f.write_all(data)?;
    Ok(())
}

fn start_agent(ferry: &Path, tmp: &TempDir, procs: &mut Procs) -> Result<Agent> {
    let agent_key = tmp.path.join("agent.key");
    let client_key = tmp.path.join("client.key");
    let agent_pub = ferry_key(ferry, &agent_key)?;
    let client_pub = ferry_key(ferry, &client_key)?;
    let port = free_udp_port()?;
    let endpoint = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut cmd = Command::new(ferry);
    cmd.arg("agent")
        .arg("--listen")
        .arg(endpoint.to_string())
        .arg("--private-key-file")
        .arg(&agent_key)
        .arg("--peer")
        .arg(&client_pub);
    procs.spawn_ready("ferry agent", cmd, tmp)?;
    Ok(Agent {
        endpoint,
        public: agent_pub,
        client_key,
    })
}

struct SshTools {
    sshd: PathBuf,
    ssh: PathBuf,
    keygen: PathBuf,
    missing: Option<String>,
}

impl SshTools {
    fn find() -> Self {
        let sshd = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .or_else(|| which("sshd"));
        let ssh = which("ssh");
        let keygen = which("ssh-keygen");
        let missing = match (&sshd, &ssh, &keygen) {
            (None, _, _) => Some("sshd not installed".to_string()),
            (_, None, _) => Some("ssh not installed".to_string()),
            (_, _, None) => Some("ssh-keygen not installed".to_string()),
            _ => None,
        };
        SshTools {
            sshd: sshd.unwrap_or_default(),
            ssh: ssh.unwrap_or_default(),
            keygen: keygen.unwrap_or_default(),
            missing,
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn ssh_keygen(tools: &SshTools, file: &Path) -> Result<()> {
    if file.exists() {
        return Ok(());
    }
    let st = Command::new(&tools.keygen)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ferry-bench", "-f"])
        .arg(file)
        .stdin(Stdio::null())
        .status()?;
    if !st.success() {
        return Err("ssh-keygen failed".into());
    }
    Ok(())
}

fn current_user() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "root".into())
}

/// Starts a throwaway sshd on 127.0.0.1 and returns its port.
fn start_sshd(tools: &SshTools, tmp: &TempDir, procs: &mut Procs) -> Result<u16, PathError> {
    // sshd refuses to start without its privilege separation directory.
    let privsep = Path::new("/run/sshd");
    if !privsep.exists() && std::fs::create_dir_all(privsep).is_err() {
        return Err(PathError::Skip(
            "sshd needs /run/sshd, which cannot be created".into(),
        ));
    }
    let host_key = tmp.path.join("ssh_host_ed25519_key");
    let client_key = tmp.path.join("id_ed25519");
    ssh_keygen(tools, &host_key)?;
    ssh_keygen(tools, &client_key)?;
    let pubkey = std::fs::read(tmp.path.join("id_ed25519.pub"))?;
    std::fs::write(tmp.path.join("authorized_keys"), pubkey)?;
    let port = free_tcp_port()?;
    let cfg = tmp.path.join("sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nCompression no\n\
             AllowTcpForwarding yes\nX11Forwarding no\nPidFile none\nLogLevel ERROR\n\
             Ciphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com\n",
            host_key.display(),
            tmp.path.join("authorized_keys").display()
        ),
    )?;
    let mut cmd = Command::new(&tools.sshd);
    cmd.arg("-D").arg("-e").arg("-f").arg(&cfg);
    procs.spawn_logged("sshd", cmd, tmp)?;
    wait_accepting(
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(10),
    )?;
    Ok(port)
}

fn start_ssh_forward(
    tools: &SshTools,
    tmp: &TempDir,
    procs: &mut Procs,
    sshd_port: u16,
    cipher: &str,
    proxy: Option<&str>,
    service: SocketAddr,
) -> Result<SocketAddr, PathError> {
    let lport = free_tcp_port()?;
    let mut cmd = Command::new(&tools.ssh);
    cmd.args(["-F", "/dev/null", "-N", "-T", "-p"])
        .arg(sshd_port.to_string())
        .arg("-i")
        .arg(tmp.path.join("id_ed25519"))
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "Compression=no",
            "-o",
            "BatchMode=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "LogLevel=ERROR",
            "-c",
            cipher,
            "-L",
        ])
        .arg(format!("127.0.0.1:{lport}:127.0.0.1:{}", service.port()));
    if let Some(p) = proxy {
        cmd.arg("-o").arg(p);
    }
    cmd.arg(format!("{}@127.0.0.1", current_user()));
    cmd.stdin(Stdio::null());
    procs.spawn_logged("ssh", cmd, tmp)?;
    let a = SocketAddr::from((Ipv4Addr::LOCALHOST, lport));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok() {
            // The forward's connection reaches the service, which sees no mode byte and ends it.
            return Ok(a);
        }
        if let Some(msg) = procs.exited() {
            return Err(PathError::Fail(msg));
        }
        if Instant::now() > deadline {
            return Err(PathError::Fail(format!(
                "ssh -L did not open 127.0.0.1:{lport} within 15 s; see {}",
                tmp.path.display()
            )));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:@,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn find_ferry(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let p = dir.join("ferry");
        if p.is_file() {
            return Some(p);
        }
    }
    which("ferry")
}

fn free_tcp_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn wait_accepting(a: SocketAddr, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{a} did not accept connections within {within:?}").into())
}

// ------------------------------------------------------------------ processes

struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("ferry-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

struct Proc {
    name: String,
    child: Child,
}

/// The processes of one path; every one is killed on drop.
#[derive(Default)]
struct Procs {
    list: Vec<Proc>,
    spawned: usize,
}

impl Procs {
    fn spawn_logged(&mut self, name: &str, mut cmd: Command, tmp: &TempDir) -> Result<()> {
        let log = std::fs::File::create(tmp.path.join(format!("{}.log", name.replace(' ', "-"))))?;
        cmd.stdout(Stdio::null()).stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        self.list.push(Proc {
            name: name.into(),
            child,
        });
        self.spawned += 1;
        Ok(())
    }

    /// Spawns a ferry process and waits for "Ready" on its stderr, which is then drained.
    fn spawn_ready(&mut self, name: &str, mut cmd: Command, tmp: &TempDir) -> Result<()> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stderr = child.stderr.take();
        self.list.push(Proc {
            name: name.into(),
            child,
        });
        self.spawned += 1;
        let Some(stderr) = stderr else {
            return Err(format!("{name}: no stderr").into());
        };
        let (tx, rx) = mpsc::channel();
        let log_path = tmp.path.join(format!("{}.log", name.replace(' ', "-")));
        thread::spawn(move || {
            let mut log = std::fs::File::create(log_path).ok();
            let mut ready = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(log) = log.as_mut() {
                    let _ = writeln!(log, "{line}");
                }
                if line.contains("Ready")
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(()) => Ok(()),
            Err(_) => Err(format!(
                "{name} did not print Ready within 15 s (log in {})",
                tmp.path.display()
            )
            .into()),
        }
    }

    fn exited(&mut self) -> Option<String> {
        for p in &mut self.list {
            if let Ok(Some(st)) = p.child.try_wait() {
                return Some(format!("{} exited early: {st}", p.name));
            }
        }
        None
    }

    fn is_empty_spawned(&self) -> bool {
        self.spawned == 0
    }

    /// The spawned processes and all their descendants.
    fn tree(&self) -> Vec<u32> {
        let roots: Vec<u32> = self.list.iter().map(|p| p.child.id()).collect();
        descendants(&roots)
    }

    fn cpu_ticks(&self) -> HashMap<u32, u64> {
        self.tree()
            .into_iter()
            .filter_map(|pid| proc_cpu_ticks(pid).map(|t| (pid, t)))
            .collect()
    }

    fn peak_rss_kib(&self) -> u64 {
        self.tree().into_iter().filter_map(proc_hwm_kib).sum()
    }

    fn describe(&self) -> Vec<String> {
        self.tree()
            .into_iter()
            .filter_map(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                Some(format!("{pid} {}", comm.trim()))
            })
            .collect()
    }

    /// Stops every process: SIGTERM to descendants, then to the spawned processes, SIGKILL
    /// after a grace period, then SIGKILL to any descendant that outlived its parent.
    fn kill_all(&mut self) {
        if self.list.is_empty() {
            return;
        }
        let roots: HashSet<u32> = self.list.iter().map(|p| p.child.id()).collect();
        let tree = self.tree();
        // Descendants first, while their parents live to reap them.
        for &pid in tree.iter().filter(|p| !roots.contains(p)) {
            signal(pid, libc::SIGTERM);
        }
        thread::sleep(Duration::from_millis(100));
        for p in self.list.iter().rev() {
            signal(p.child.id(), libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for p in self.list.iter_mut().rev() {
            while Instant::now() < deadline {
                if !matches!(p.child.try_wait(), Ok(None)) {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.list.clear();
        for pid in tree.into_iter().filter(|p| !roots.contains(p)) {
            if proc_stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z")) {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        #[allow(unsafe_code)]
        // SAFETY: kill has no memory-safety preconditions; the pid is one we spawned (or its
        // descendant, found through /proc just before).
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn cpu_delta(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> u64 {
    after
        .iter()
        .map(|(pid, a)| a.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum()
}

fn proc_stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime + stime in clock ticks.
fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let f = proc_stat_fields(pid)?;
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn proc_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn descendants(roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) =
                proc_stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
            {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut seen = HashSet::new();
    let mut stack: Vec<u32> = roots.to_vec();
    let mut out = Vec::new();
    while let Some(pid) = stack.pop() {
        if !seen.insert(pid) {
            continue;
        }
        out.push(pid);
        if let Some(c) = children.get(&pid) {
            stack.extend(c);
        }
    }
    out
}

fn clock_ticks_per_second() -> f64 {
    #[allow(unsafe_code)]
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}
