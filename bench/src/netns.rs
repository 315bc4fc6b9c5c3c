//! Network namespaces for the wireguard-go paths: two namespaces joined by a veth pair,
//! 10.99.0.1 (A) and 10.99.0.2 (B), with a wireguard-go TUN `wg0` in each (or in B only, with
//! ferry as the peer in A), 10.99.1.1 and 10.99.1.2, MTU 1420. Every address lives inside namespaces this harness creates; nothing is
//! added to the root namespace. The namespaces are deleted on drop (and by the signal thread).

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::Result;
use crate::procs::{self, Procs, run};

pub const A_UNDERLAY: &str = "10.99.0.1";
pub const B_UNDERLAY: &str = "10.99.0.2";
pub const A_TUNNEL: &str = "10.99.1.1";
pub const B_TUNNEL: &str = "10.99.1.2";
pub const TUNNEL_MTU: u32 = 1420;
pub const WG_PORT: u16 = 51820;

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args), Duration::from_secs(10))?;
    Ok(())
}

/// Two namespaces `fb<pid>a` and `fb<pid>b`, deleted on drop.
pub struct NetnsPair {
    pub a: String,
    pub b: String,
    created: Vec<String>,
}

impl NetnsPair {
    pub fn create() -> Result<Self> {
        let tag = format!("fb{}", std::process::id());
        let mut pair = NetnsPair {
            a: format!("{tag}a"),
            b: format!("{tag}b"),
            created: Vec::new(),
        };
        for ns in [pair.a.clone(), pair.b.clone()] {
            ip(&["netns", "add", &ns])?;
            procs::register_netns(&ns);
            pair.created.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        // The veth is created directly inside the namespaces: the root namespace never sees it.
        ip(&[
            "link", "add", "va", "netns", &pair.a, "type", "veth", "peer", "name", "vb", "netns",
            &pair.b,
        ])?;
        for (ns, dev, addr) in [(&pair.a, "va", A_UNDERLAY), (&pair.b, "vb", B_UNDERLAY)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(pair)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            let _ = run(
                Command::new("ip").args(["netns", "del", ns]),
                Duration::from_secs(10),
            );
            procs::unregister_netns(ns);
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns` (or on this thread when `ns`
/// is None). Sockets created by `f`, and by threads it spawns, belong to that namespace.
pub fn run_in<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> Result<T> {
    let Some(ns) = ns else { return Ok(f()) };
    thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            enter(ns)?;
            Ok(f())
        })
        .join()
        .map_err(|_| -> crate::Error { format!("a thread in namespace {ns} panicked").into() })?
    })
}

fn enter(ns: &str) -> Result<()> {
    let file = std::fs::File::open(Path::new("/run/netns").join(ns))
        .map_err(|e| format!("cannot open namespace {ns}: {e}"))?;
    #[allow(unsafe_code)]
    // SAFETY: setns only reads the descriptor, which `file` keeps open for the call; it changes
    // the network namespace of this thread alone.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!("setns({ns}): {}", std::io::Error::last_os_error()).into());
    }
    Ok(())
}

/// Makes a key with `wg genkey` into `dir/NAME.key` (and its public key into `dir/NAME.pub`);
/// returns the public key.
pub fn wg_key(dir: &Path, name: &str) -> Result<String> {
    let key = run(Command::new("wg").arg("genkey"), Duration::from_secs(5))?;
    let file = dir.join(format!("{name}.key"));
    crate::paths::write_private(&file, key.as_bytes())?;
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(key.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err("wg pubkey failed".into());
    }
    let public = String::from_utf8(out.stdout)?.trim().to_string();
    std::fs::write(dir.join(format!("{name}.pub")), format!("{public}\n"))?;
    Ok(public)
}

/// Starts wireguard-go in both namespaces of `pair` and configures the tunnel between them.
pub fn start_wireguard_go(pair: &NetnsPair, dir: &Path, procs: &mut Procs) -> Result<()> {
    let a_pub = wg_key(dir, "wg-a")?;
    let b_pub = wg_key(dir, "wg-b")?;
    start_side(pair, Side::A, &b_pub, true, dir, procs)?;
    start_side(pair, Side::B, &a_pub, true, dir, procs)
}

/// Starts wireguard-go in namespace B only, with one peer (`peer_pub`, tunnel address
/// [`A_TUNNEL`], no endpoint: the peer in A starts the handshake). Returns B's public key.
pub fn start_wireguard_go_b(
    pair: &NetnsPair,
    peer_pub: &str,
    dir: &Path,
    procs: &mut Procs,
) -> Result<String> {
    let b_pub = wg_key(dir, "wg-b")?;
    start_side(pair, Side::B, peer_pub, false, dir, procs)?;
    Ok(b_pub)
}

#[derive(Clone, Copy)]
enum Side {
    A,
    B,
}

fn start_side(
    pair: &NetnsPair,
    side: Side,
    peer_pub: &str,
    peer_endpoint: bool,
    dir: &Path,
    procs: &mut Procs,
) -> Result<()> {
    let (ns, key, peer_tunnel, peer_underlay, own_tunnel) = match side {
        Side::A => (&pair.a, "wg-a", B_TUNNEL, B_UNDERLAY, A_TUNNEL),
        Side::B => (&pair.b, "wg-b", A_TUNNEL, A_UNDERLAY, B_TUNNEL),
    };
    // A private /run per daemon (mount namespace), so both can name their TUN wg0 without
    // their UAPI sockets (/run/wireguard/wg0.sock) colliding.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "unshare", "--mount", "--propagation"])
        .args(["private", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /run && exec wireguard-go -f wg0")
        .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
    let root = procs.spawn_logged(&format!("wireguard-go {ns}"), cmd, dir)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(pid) = procs::find_comm(&[root], "wireguard-go")
            && run(
                Command::new("nsenter").args([
                    "-t",
                    &pid.to_string(),
                    "-m",
                    "test",
                    "-S",
                    "/run/wireguard/wg0.sock",
                ]),
                Duration::from_secs(5),
            )
            .is_ok()
        {
            break pid;
        }
        if let Some(msg) = procs.exited() {
            return Err(format!("{msg} (log in {})", dir.display()).into());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "wireguard-go did not come up in {ns} within 10 s (log in {})",
                dir.display()
            )
            .into());
        }
        thread::sleep(Duration::from_millis(50));
    };
    let key_file = dir.join(format!("{key}.key"));
    let mut wg = Command::new("nsenter");
    wg.args(["-t", &pid.to_string(), "-m", "-n", "wg", "set", "wg0"])
        .arg("private-key")
        .arg(&key_file)
        .args(["listen-port", &WG_PORT.to_string(), "peer", peer_pub])
        .args(["allowed-ips", &format!("{peer_tunnel}/32")]);
    if peer_endpoint {
        wg.args(["endpoint", &format!("{peer_underlay}:{WG_PORT}")]);
    }
    run(&mut wg, Duration::from_secs(10))?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{own_tunnel}/24"),
        "dev",
        "wg0",
    ])?;
    ip(&[
        "-n",
        ns,
        "link",
        "set",
        "wg0",
        "mtu",
        &TUNNEL_MTU.to_string(),
        "up",
    ])?;
    Ok(())
}
