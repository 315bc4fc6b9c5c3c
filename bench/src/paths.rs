//! The paths: how each one is set up (every process it starts is owned by a `Procs`, every
//! namespace by a `NetnsPair`, both undone on drop), and the workload sequence run through it.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::{self, NetnsPair};
use crate::procs::{self, Procs, which};
use crate::report::{MetricError, PathResult, UdpResult};
use crate::service::{Service, Sink};
use crate::workload::{self, Bulk};
use crate::{CompareArgs, Result, progress};

pub struct PathDef {
    pub name: &'static str,
    pub label: &'static str,
}

/// Every path, in table order.
pub const PATHS: [PathDef; 10] = [
    PathDef {
        name: "direct",
        label: "direct (no tunnel)",
    },
    PathDef {
        name: "ferry",
        label: "ferry port-forward",
    },
    PathDef {
        name: "dashboard-nginx",
        label: "dashboard path (nginx stand-in)",
    },
    PathDef {
        name: "ssh-in-ferry-aes128-gcm",
        label: "ssh -L inside ferry, aes128-gcm",
    },
    PathDef {
        name: "ssh-in-ferry-chacha20",
        label: "ssh -L inside ferry, chacha20",
    },
    PathDef {
        name: "ssh-aes128-gcm",
        label: "ssh -L, aes128-gcm",
    },
    PathDef {
        name: "ssh-chacha20",
        label: "ssh -L, chacha20",
    },
    PathDef {
        name: "wireguard-go",
        label: "wireguard-go + kernel TCP (netns)",
    },
    PathDef {
        name: "ferry-wireguard-go",
        label: "ferry port-forward → wireguard-go (netns)",
    },
    PathDef {
        name: "onetun",
        label: "onetun → ferry agent",
    },
];

/// UDP datagram sizes measured.
pub const UDP_SIZES: [usize; 2] = [64, 1200];

pub enum PathError {
    Skip(String),
    Fail(String),
}

impl<E: std::fmt::Display> From<E> for PathError {
    fn from(e: E) -> Self {
        PathError::Fail(e.to_string())
    }
}

/// What every path shares.
pub struct Env<'a> {
    pub args: &'a CompareArgs,
    pub service: &'a Service,
    pub ferry: Option<PathBuf>,
    pub ssh: SshTools,
}

/// Where the workloads of a path go. None: the workload does not apply ("n/a").
#[derive(Default)]
struct Target {
    tcp: Option<SocketAddr>,
    http: Option<SocketAddr>,
    udp: Option<SocketAddr>,
    /// The network namespace the client side runs in.
    client_ns: Option<String>,
}

/// A set-up path. Fields drop in order: processes first, then the service, then namespaces.
struct Setup {
    procs: Procs,
    own_service: Option<Service>,
    _netns: Option<NetnsPair>,
    target: Target,
}

/// Sets up path `def`, runs every workload that applies, tears it down. `dir` receives the
/// path's logs.
pub fn run_path(def: &PathDef, env: &Env, dir: &Path) -> PathResult {
    let base = PathResult {
        name: def.name.into(),
        label: def.label.into(),
        ..Default::default()
    };
    let t = Instant::now();
    let mut setup = match setup(def.name, env, dir) {
        Ok(s) => s,
        Err(e) => {
            let (status, reason) = match e {
                PathError::Skip(r) => ("skipped", r),
                PathError::Fail(r) => ("failed", r),
            };
            progress(&format!("{}: {status}: {reason}", def.name));
            return PathResult {
                status: status.into(),
                reason: Some(reason),
                ..base
            };
        }
    };
    progress(&format!(
        "{}: set up in {:.1} s",
        def.name,
        t.elapsed().as_secs_f64()
    ));
    let roots: Vec<(u32, String)> = setup.procs.roots();
    let sink = setup
        .own_service
        .as_ref()
        .unwrap_or(env.service)
        .sink
        .clone();
    let target = &setup.target;
    let pids: Vec<u32> = roots.iter().map(|(p, _)| *p).collect();
    // This process, the path's forwarders, and kernel threads (ksoftirqd moves packets for
    // everyone): what is left of the machine's busy time is other people's work.
    let ours = || {
        procs::self_ticks()
            + procs::cpu_ticks(&pids).values().sum::<u64>()
            + procs::cpu_ticks(&[2]).values().sum::<u64>()
    };
    let (machine0, ours0, t0) = (procs::machine_busy_ticks(), ours(), Instant::now());
    let measured = netns::run_in(target.client_ns.as_deref(), || {
        measure(base.clone(), target, &roots, sink, env.args)
    });
    let (machine1, ours1) = (procs::machine_busy_ticks(), ours());
    let other = machine1
        .saturating_sub(machine0)
        .saturating_sub(ours1.saturating_sub(ours0));
    let mut r = match measured {
        Ok(r) => r,
        Err(e) => PathResult {
            status: "failed".into(),
            reason: Some(e.to_string()),
            ..base
        },
    };
    let other = other as f64 / procs::clock_ticks_per_second() / t0.elapsed().as_secs_f64();
    r.other_cpu_cores = Some(other);
    progress(&format!(
        "{}: other processes used {other:.2} cores meanwhile",
        def.name
    ));
    if let Some(msg) = setup.procs.exited() {
        r.errors.push(MetricError {
            metric: "process".into(),
            error: msg,
        });
    }
    setup.procs.kill_all();
    drop(setup);
    r
}

/// Runs one step at a time, records its value or its error, and stops running steps once a
/// forwarding process has died.
struct Runner<'a> {
    r: PathResult,
    roots: &'a [(u32, String)],
    dead: Option<String>,
}

impl Runner<'_> {
    fn step(
        &mut self,
        metric: &str,
        what: &str,
        f: impl FnOnce(&mut PathResult) -> Result<String>,
    ) {
        let name = self.r.name.clone();
        if let Some(dead) = &self.dead {
            self.r.errors.push(MetricError {
                metric: metric.into(),
                error: format!("not run: {dead}"),
            });
            return;
        }
        match f(&mut self.r) {
            Ok(summary) => progress(&format!("{name}: {what}: {summary}")),
            Err(e) => {
                progress(&format!("{name}: {what}: ERROR {e}"));
                self.r.errors.push(MetricError {
                    metric: metric.into(),
                    error: e.to_string(),
                });
            }
        }
        if let Some((_, n)) = self.roots.iter().find(|(pid, _)| !procs::is_running(*pid)) {
            self.dead = Some(format!("{n} exited"));
        }
        // Let the forwarders finish closing the flows of this step.
        thread::sleep(Duration::from_millis(200));
    }
}

type Field = fn(&mut PathResult) -> &mut Option<f64>;

fn measure(
    base: PathResult,
    t: &Target,
    roots: &[(u32, String)],
    sink: Arc<Sink>,
    args: &CompareArgs,
) -> PathResult {
    let pids: Vec<u32> = roots.iter().map(|(p, _)| *p).collect();
    let cpu = || procs::cpu_ticks(&pids);
    let mut run = Runner {
        r: base,
        roots,
        dead: None,
    };
    let (secs, short, streams) = (args.seconds, args.rr_seconds, args.streams);
    let mut moved = (0u64, 0u64); // bytes, CPU ticks in the bulk windows
    let mut add = |b: &Bulk| {
        moved.0 += b.bytes;
        moved.1 += b.ticks;
    };
    if let Some(a) = t.tcp {
        let bulks: [(&str, bool, usize, Field); 4] = [
            ("up", true, 1, |r| &mut r.up_gbit_s),
            ("down", false, 1, |r| &mut r.down_gbit_s),
            ("up8", true, streams, |r| &mut r.up8_gbit_s),
            ("down8", false, streams, |r| &mut r.down8_gbit_s),
        ];
        for (metric, up, n, field) in bulks {
            let what = format!(
                "TCP {} {n} stream{}",
                if up { "upload" } else { "download" },
                if n == 1 { "" } else { "s" }
            );
            run.step(metric, &what, |r| {
                let b = workload::bulk(a, up, n, secs, &sink, &cpu)?;
                add(&b);
                *field(r) = Some(b.gbit_s());
                Ok(format!("{:.3} Gbit/s", b.gbit_s()))
            });
        }
    }
    if let Some(a) = t.http {
        run.step("http_down", "HTTP GET download", |r| {
            let b = workload::http_download(a, secs, &cpu)?;
            add(&b);
            r.http_down_gbit_s = Some(b.gbit_s());
            Ok(format!("{:.3} Gbit/s", b.gbit_s()))
        });
    }
    if let Some(a) = t.tcp {
        run.step("rr", "TCP 64 B request/response", |r| {
            let l = workload::request_response(a, short)?;
            r.rr_p50_us = Some(l.p50);
            r.rr_p99_us = Some(l.p99);
            r.rr_p999_us = Some(l.p999);
            r.rr_count = Some(l.count);
            Ok(format!(
                "p50 {:.0} / p99 {:.0} / p99.9 {:.0} µs",
                l.p50, l.p99, l.p999
            ))
        });
    }
    if let Some(a) = t.http {
        run.step("http_rr", "HTTP GET 64 B", |r| {
            let l = workload::http_request_response(a, short)?;
            r.http_rr_p50_us = Some(l.p50);
            r.http_rr_p99_us = Some(l.p99);
            Ok(format!("p50 {:.0} / p99 {:.0} µs", l.p50, l.p99))
        });
    }
    if let Some(a) = t.tcp {
        run.step("conn", "new connections", |r| {
            let (rate, l) = workload::connection_rate(a, short)?;
            r.conn_per_s = Some(rate);
            r.conn_p50_us = Some(l.p50);
            Ok(format!("{rate:.0} conn/s, p50 {:.0} µs", l.p50))
        });
    }
    if let Some(a) = t.udp {
        for size in UDP_SIZES {
            run.r.udp.push(UdpResult {
                bytes: size,
                ..Default::default()
            });
            let slot = run.r.udp.len() - 1;
            run.step(
                &format!("udp{size}_rtt"),
                &format!("UDP {size} B RTT"),
                |r| {
                    let (l, lost) = workload::udp_rtt(a, size, short)?;
                    let u = &mut r.udp[slot];
                    u.rtt_p50_us = Some(l.p50);
                    u.rtt_p99_us = Some(l.p99);
                    u.rtt_p999_us = Some(l.p999);
                    u.rtt_lost = Some(lost);
                    Ok(format!(
                        "p50 {:.0} / p99 {:.0} / p99.9 {:.0} µs, {lost} lost",
                        l.p50, l.p99, l.p999
                    ))
                },
            );
            run.step(
                &format!("udp{size}_pps"),
                &format!("UDP {size} B rate"),
                |r| {
                    let (pps, loss) = workload::udp_rate(a, size, short)?;
                    let u = &mut r.udp[slot];
                    u.pps = Some(pps);
                    u.loss_pct = Some(loss);
                    Ok(format!("{:.1} kpps, {loss:.2} % loss", pps / 1000.0))
                },
            );
        }
    }
    let mut r = run.r;
    if !pids.is_empty() {
        let gib = moved.0 as f64 / (1u64 << 30) as f64;
        if moved.0 > 0 {
            r.cpu_s_per_gib = Some(moved.1 as f64 / procs::clock_ticks_per_second() / gib);
        }
        r.peak_rss_mib = Some(procs::peak_rss_kib(&pids) as f64 / 1024.0);
        r.processes = procs::describe(&pids);
    }
    let any_value = r.up_gbit_s.is_some()
        || r.down_gbit_s.is_some()
        || r.http_down_gbit_s.is_some()
        || r.rr_p50_us.is_some()
        || r.http_rr_p50_us.is_some()
        || r.conn_per_s.is_some()
        || r.udp
            .iter()
            .any(|u| u.pps.is_some() || u.rtt_p50_us.is_some());
    if any_value {
        r.status = "ok".into();
    } else {
        r.status = "failed".into();
        r.reason = Some(r.errors.first().map_or("nothing measured".into(), |e| {
            format!("{}: {}", e.metric, e.error)
        }));
    }
    r
}

fn setup(name: &str, env: &Env, dir: &Path) -> Result<Setup, PathError> {
    let svc = env.service;
    let mut procs = Procs::default();
    let need_ferry = || {
        env.ferry.as_deref().ok_or_else(|| {
            PathError::Skip("ferry binary not found (build it or pass --ferry)".into())
        })
    };
    let need_ssh = || -> Result<(), PathError> {
        match &env.ssh.missing {
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
    let loopback = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let plain = |procs: Procs, tcp: SocketAddr| Setup {
        procs,
        own_service: None,
        _netns: None,
        target: Target {
            tcp: Some(tcp),
            http: Some(tcp),
            ..Default::default()
        },
    };
    Ok(match name {
        "direct" => Setup {
            procs,
            own_service: None,
            _netns: None,
            target: Target {
                tcp: Some(svc.tcp),
                http: Some(svc.tcp),
                udp: Some(svc.udp),
                client_ns: None,
            },
        },
        "ferry" => {
            let f = need_ferry()?;
            let agent = start_agent(f, dir, &mut procs)?;
            let (lport, uport) = (free_tcp_port()?, free_udp_port()?);
            let mut cmd = Command::new(f);
            cmd.arg("port-forward")
                .arg("ws")
                .args(agent.client_args())
                .arg("--tcp")
                .arg(format!("{lport}:{}", svc.tcp.port()))
                .arg("--udp")
                .arg(format!("{uport}:{}", svc.udp.port()));
            procs.spawn_ready("ferry port-forward", cmd, dir)?;
            wait_accepting(loopback(lport), Duration::from_secs(10))?;
            Setup {
                procs,
                own_service: None,
                _netns: None,
                target: Target {
                    tcp: Some(loopback(lport)),
                    http: Some(loopback(lport)),
                    udp: Some(loopback(uport)),
                    client_ns: None,
                },
            }
        }
        "dashboard-nginx" => {
            let nginx = which("nginx")
                .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
                .ok_or_else(|| PathError::Skip("nginx not installed".into()))?;
            let f = need_ferry()?;
            let agent = start_agent(f, dir, &mut procs)?;
            let fport = free_tcp_port()?;
            let mut cmd = Command::new(f);
            cmd.arg("port-forward")
                .arg("ws")
                .args(agent.client_args())
                .arg("--tcp")
                .arg(format!("{fport}:{}", svc.tcp.port()));
            procs.spawn_ready("ferry port-forward", cmd, dir)?;
            wait_accepting(loopback(fport), Duration::from_secs(10))?;
            let nport = start_nginx(&nginx, dir, &mut procs, fport)?;
            Setup {
                procs,
                own_service: None,
                _netns: None,
                target: Target {
                    http: Some(loopback(nport)),
                    ..Default::default()
                },
            }
        }
        n if n.starts_with("ssh-in-ferry") => {
            need_ssh()?;
            let f = need_ferry()?;
            let sshd = start_sshd(&env.ssh, dir, &mut procs)?;
            let agent = start_agent(f, dir, &mut procs)?;
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
            let a = start_ssh_forward(
                &env.ssh,
                dir,
                &mut procs,
                sshd,
                cipher(n),
                Some(&proxy),
                svc.tcp,
            )?;
            plain(procs, a)
        }
        n if n.starts_with("ssh-") => {
            need_ssh()?;
            let sshd = start_sshd(&env.ssh, dir, &mut procs)?;
            let a = start_ssh_forward(&env.ssh, dir, &mut procs, sshd, cipher(n), None, svc.tcp)?;
            plain(procs, a)
        }
        "wireguard-go" => {
            need_wireguard_go()?;
            let pair = NetnsPair::create()?;
            let started = (|| -> Result<(Service, SocketAddr, SocketAddr)> {
                netns::start_wireguard_go(&pair, dir, &mut procs)?;
                let service = netns::run_in(Some(&pair.b), || {
                    Service::start(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
                })??;
                let tunnel_b: Ipv4Addr = netns::B_TUNNEL.parse()?;
                let tcp = SocketAddr::from((tunnel_b, service.tcp.port()));
                let udp = SocketAddr::from((tunnel_b, service.udp.port()));
                // The first handshake happens with the first packet: wait for the service.
                netns::run_in(Some(&pair.a), || {
                    wait_accepting(tcp, Duration::from_secs(15))
                })??;
                Ok((service, tcp, udp))
            })();
            let (service, tcp, udp) = match started {
                Ok(s) => s,
                Err(e) => {
                    // Processes first, then the namespaces they live in.
                    procs.kill_all();
                    drop(pair);
                    return Err(e.into());
                }
            };
            Setup {
                procs,
                own_service: Some(service),
                target: Target {
                    tcp: Some(tcp),
                    http: Some(tcp),
                    udp: Some(udp),
                    client_ns: Some(pair.a.clone()),
                },
                _netns: Some(pair),
            }
        }
        "ferry-wireguard-go" => {
            let f = need_ferry()?;
            need_wireguard_go()?;
            let pair = NetnsPair::create()?;
            let started = (|| -> Result<(Service, u16, u16)> {
                let a_pub = netns::wg_key(dir, "ferry-a")?;
                netns::start_wireguard_go_b(&pair, &a_pub, dir, &mut procs)?;
                let service = netns::run_in(Some(&pair.b), || {
                    Service::start(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
                })??;
                // A stock peer: ferry reads a wg-quick file, as a user of one would write it.
                let key = std::fs::read_to_string(dir.join("ferry-a.key"))?;
                let conf = dir.join("ferry-a.conf");
                let b_pub = std::fs::read_to_string(dir.join("wg-b.pub"))?;
                write_private(
                    &conf,
                    format!(
                        "[Interface]\nPrivateKey = {}\nAddress = {}/32\nMTU = {}\n\n\
                         [Peer]\nPublicKey = {}\nEndpoint = {}:{}\nAllowedIPs = {}/32\n",
                        key.trim(),
                        netns::A_TUNNEL,
                        netns::TUNNEL_MTU,
                        b_pub.trim(),
                        netns::B_UNDERLAY,
                        netns::WG_PORT,
                        netns::B_TUNNEL,
                    )
                    .as_bytes(),
                )?;
                let (lport, uport) = netns::run_in(Some(&pair.a), || -> Result<(u16, u16)> {
                    Ok((free_tcp_port()?, free_udp_port()?))
                })??;
                // `ip netns exec` execs ferry: the PID it owns is ferry's.
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &pair.a])
                    .arg(f)
                    .args(["port-forward", "ws", "--wg-config"])
                    .arg(&conf)
                    .arg("--tcp")
                    .arg(format!("{lport}:{}", service.tcp.port()))
                    .arg("--udp")
                    .arg(format!("{uport}:{}", service.udp.port()));
                procs.spawn_ready("ferry port-forward", cmd, dir)?;
                netns::run_in(Some(&pair.a), || {
                    wait_accepting(loopback(lport), Duration::from_secs(10))
                })??;
                Ok((service, lport, uport))
            })();
            let (service, lport, uport) = match started {
                Ok(s) => s,
                Err(e) => {
                    procs.kill_all();
                    drop(pair);
                    return Err(e.into());
                }
            };
            Setup {
                procs,
                own_service: Some(service),
                target: Target {
                    tcp: Some(loopback(lport)),
                    http: Some(loopback(lport)),
                    udp: Some(loopback(uport)),
                    client_ns: Some(pair.a.clone()),
                },
                _netns: Some(pair),
            }
        }
        "onetun" => {
            let onetun = which("onetun").ok_or_else(|| {
                PathError::Skip("onetun not installed; cargo install onetun".into())
            })?;
            let f = need_ferry()?;
            let agent = start_agent(f, dir, &mut procs)?;
            let (lport, uport) = (free_tcp_port()?, free_udp_port()?);
            // onetun reads local sockets without backpressure and can buffer gigabytes:
            // cap its address space when prlimit is there.
            let mut cmd = match which("prlimit") {
                Some(p) => {
                    let mut c = Command::new(p);
                    c.arg(format!("--as={}", 4u64 << 30)).arg(&onetun);
                    c
                }
                None => Command::new(&onetun),
            };
            cmd.arg("--endpoint-addr")
                .arg(agent.endpoint.to_string())
                .arg("--endpoint-public-key")
                .arg(&agent.public)
                .arg("--private-key-file")
                .arg(&agent.client_key)
                .args(["--source-peer-ip", AGENT_PEER_IP, "--keep-alive", "10"])
                .args(["--log", "warn"])
                .arg(format!(
                    "127.0.0.1:{lport}:{AGENT_IP}:{}:TCP",
                    svc.tcp.port()
                ))
                .arg(format!(
                    "127.0.0.1:{uport}:{AGENT_IP}:{}:UDP",
                    svc.udp.port()
                ));
            procs.spawn_logged("onetun", cmd, dir)?;
            wait_accepting(loopback(lport), Duration::from_secs(10))?;
            Setup {
                procs,
                own_service: None,
                _netns: None,
                target: Target {
                    tcp: Some(loopback(lport)),
                    http: Some(loopback(lport)),
                    udp: Some(loopback(uport)),
                    client_ns: None,
                },
            }
        }
        other => return Err(PathError::Fail(format!("unknown path {other}"))),
    })
}

// ------------------------------------------------------------------ ferry

/// The agent's address inside the tunnel, and the address it gives its (first) peer.
const AGENT_IP: &str = "10.77.0.1";
const AGENT_PEER_IP: &str = "10.77.0.2";

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

pub fn write_private(file: &Path, data: &[u8]) -> Result<()> {
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

fn start_agent(ferry: &Path, dir: &Path, procs: &mut Procs) -> Result<Agent> {
    let agent_key = dir.join("agent.key");
    let client_key = dir.join("client.key");
    let agent_pub = ferry_key(ferry, &agent_key)?;
    let client_pub = ferry_key(ferry, &client_key)?;
    let endpoint = SocketAddr::from((Ipv4Addr::LOCALHOST, free_udp_port()?));
    let mut cmd = Command::new(ferry);
    cmd.arg("agent")
        .arg("--listen")
        .arg(endpoint.to_string())
        .arg("--private-key-file")
        .arg(&agent_key)
        .arg("--peer")
        .arg(&client_pub);
    procs.spawn_ready("ferry agent", cmd, dir)?;
    Ok(Agent {
        endpoint,
        public: agent_pub,
        client_key,
    })
}

pub fn find_ferry(explicit: Option<&Path>) -> Option<PathBuf> {
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

// ------------------------------------------------------------------ nginx

/// Starts nginx on 127.0.0.1 as a reverse proxy to `upstream_port` (the ferry forward), with
/// every file it writes in `dir`. Returns its port.
fn start_nginx(nginx: &Path, dir: &Path, procs: &mut Procs, upstream_port: u16) -> Result<u16> {
    let port = free_tcp_port()?;
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\n\
         daemon off;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
           access_log off;\n\
           keepalive_requests 1000000;\n\
           client_body_temp_path {d}/nginx-body;\n\
           proxy_temp_path {d}/nginx-proxy;\n\
           fastcgi_temp_path {d}/nginx-fastcgi;\n\
           uwsgi_temp_path {d}/nginx-uwsgi;\n\
           scgi_temp_path {d}/nginx-scgi;\n\
           upstream ferry {{ server 127.0.0.1:{upstream_port}; keepalive 16; }}\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
             location / {{\n\
               proxy_pass http://ferry;\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n\
               proxy_buffers 16 64k;\n\
               proxy_max_temp_file_size 0;\n\
             }}\n\
           }}\n\
         }}\n"
    );
    let file = dir.join("nginx.conf");
    std::fs::write(&file, conf)?;
    let mut cmd = Command::new(nginx);
    cmd.arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .arg("-c")
        .arg(&file);
    procs.spawn_logged("nginx", cmd, dir)?;
    let a = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_err() {
        if let Some(msg) = procs.exited() {
            let log = std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default();
            return Err(format!("{msg}: {}", log.trim()).into());
        }
        if Instant::now() > deadline {
            return Err(format!("nginx did not listen on {a} within 10 s").into());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(port)
}

// ------------------------------------------------------------------ ssh

pub struct SshTools {
    sshd: PathBuf,
    ssh: PathBuf,
    keygen: PathBuf,
    missing: Option<String>,
}

impl SshTools {
    pub fn find() -> Self {
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
fn start_sshd(tools: &SshTools, dir: &Path, procs: &mut Procs) -> Result<u16, PathError> {
    // sshd refuses to start without its privilege separation directory.
    let privsep = Path::new("/run/sshd");
    if !privsep.exists() && std::fs::create_dir_all(privsep).is_err() {
        return Err(PathError::Skip(
            "sshd needs /run/sshd, which cannot be created".into(),
        ));
    }
    let host_key = dir.join("ssh_host_ed25519_key");
    let client_key = dir.join("id_ed25519");
    ssh_keygen(tools, &host_key)?;
    ssh_keygen(tools, &client_key)?;
    let pubkey = std::fs::read(dir.join("id_ed25519.pub"))?;
    std::fs::write(dir.join("authorized_keys"), pubkey)?;
    let port = free_tcp_port()?;
    let cfg = dir.join("sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nCompression no\n\
             AllowTcpForwarding yes\nX11Forwarding no\nPidFile none\nLogLevel ERROR\n\
             MaxSessions 64\n\
             Ciphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com\n",
            host_key.display(),
            dir.join("authorized_keys").display()
        ),
    )?;
    let mut cmd = Command::new(&tools.sshd);
    cmd.arg("-D").arg("-e").arg("-f").arg(&cfg);
    procs.spawn_logged("sshd", cmd, dir)?;
    wait_accepting(
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(10),
    )?;
    Ok(port)
}

#[allow(clippy::too_many_arguments)]
fn start_ssh_forward(
    tools: &SshTools,
    dir: &Path,
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
        .arg(dir.join("id_ed25519"))
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
    procs.spawn_logged("ssh", cmd, dir)?;
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
                dir.display()
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

// ------------------------------------------------------------------ sockets

/// wireguard-go, its tools, root and a TUN device, or the reason to skip.
fn need_wireguard_go() -> Result<(), PathError> {
    for tool in ["wireguard-go", "wg", "ip", "nsenter", "unshare"] {
        if which(tool).is_none() {
            let what = match tool {
                "wireguard-go" => "wireguard-go not installed".to_string(),
                "wg" => "wg (wireguard-tools) not installed".to_string(),
                t => format!("{t} not found"),
            };
            return Err(PathError::Skip(what));
        }
    }
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(PathError::Skip("network namespaces need root".into()));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err(PathError::Skip("no /dev/net/tun".into()));
    }
    Ok(())
}

fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
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
        if TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{a} did not accept connections within {within:?}").into())
}
