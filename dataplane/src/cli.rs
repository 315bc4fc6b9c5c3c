//! The `ferry` command line: argument parsing and the glue from arguments to the roles.
//!
//! Exit codes: 0 on success and after SIGINT/SIGTERM, 1 for a runtime failure, 2 for a usage
//! error (bad flags, a malformed spec, a bad key), always before any network activity.

use std::error::Error;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};
use ferry_crypto::keys::{PresharedKey, PrivateKey, PublicKey};
use ferry_crypto::wgconfig::{PeerConfig, WgQuickConfig};

use crate::agent::{AGENT_ADDRS, AgentConfig, AgentPeer};
use crate::config::{Config, ConfigError};
use crate::forward::{CLIENT_ADDRS, ForwardConfig};
use crate::health::HealthCheck;
use crate::io::{Backend, LocalIo, RunWith};
use crate::spec::{Forward, Protocol, check_duplicates, parse_specs};

/// Port forwarding over a userspace WireGuard tunnel.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a new private key (WireGuard base64, like `wg genkey`).
    Keygen,
    /// Read a private key on stdin and print its public key (like `wg pubkey`).
    Pubkey,
    /// Run the workspace side: accept tunnels from the listed peers and serve local ports.
    Agent(AgentArgs),
    /// Forward local ports to ports of a workspace.
    #[command(visible_alias = "tunnel")]
    PortForward(PortForwardArgs),
    /// Carry stdin and stdout over one TCP flow to a workspace port (for ssh ProxyCommand).
    Nc(NcArgs),
    /// Run agent, port-forward and demo services on loopback, move data, and report.
    Demo(crate::demo::DemoArgs),
    /// Share a workspace port through the gateway, or list shares (`share ls [WORKSPACE]`);
    /// runs `ferry-gateway share`, see `ferry share --help`.
    #[command(disable_help_flag = true)]
    Share(PassArgs),
    /// Set a workspace port back to owner only; runs `ferry-gateway unshare`.
    #[command(disable_help_flag = true)]
    Unshare(PassArgs),
    /// Run the gateway (`ferry gateway --config FILE`); runs `ferry-gateway`.
    #[command(disable_help_flag = true)]
    Gateway(PassArgs),
}

/// Arguments handed unchanged to `ferry-gateway`.
#[derive(Debug, Args)]
struct PassArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    args: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
struct AgentArgs {
    /// Address of the tunnel UDP socket.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:51820")]
    listen: SocketAddr,
    /// File holding the agent's private key.
    #[arg(long, value_name = "FILE")]
    private_key_file: PathBuf,
    /// Public key of a peer allowed to connect (repeat for several).
    #[arg(long = "peer", value_name = "PUBKEY", required = true)]
    peers: Vec<String>,
    /// File holding a preshared key used with every peer.
    #[arg(long, value_name = "FILE")]
    preshared_key_file: Option<PathBuf>,
    /// Inner MTU of the tunnel, 1280 to 9000.
    #[arg(long, default_value_t = DEFAULT_MTU, value_parser = mtu_range())]
    mtu: u16,
    /// The agent's address inside the tunnel, IPv4 and/or IPv6 (repeatable)
    /// [default: 10.77.0.1 and fd77::1].
    #[arg(long = "address", value_name = "ADDR")]
    addresses: Vec<IpAddr>,
    /// Print a wg-quick config for each peer, for stock WireGuard tools, and exit.
    #[arg(long)]
    print_peer_config: bool,
    /// With --print-peer-config: the endpoint peers should use [default: --listen].
    #[arg(long, value_name = "HOST:PORT")]
    public_endpoint: Option<String>,
    /// With --print-peer-config and one peer: that peer's private key, to fill it in.
    #[arg(long, value_name = "FILE")]
    peer_private_key_file: Option<PathBuf>,
    /// An app healthcheck, repeatable, one per port: PORT=URL,INTERVAL,THRESHOLD, e.g.
    /// `3000=http://127.0.0.1:3000/healthz,5,3` (URL: `http://` to 127.0.0.1, `[::1]` or localhost;
    /// INTERVAL in seconds; unhealthy after THRESHOLD+1 failures in a row).
    #[arg(long = "healthcheck", value_name = "CHECK")]
    healthchecks: Vec<HealthCheck>,
}

#[derive(Debug, Args)]
struct ConnectArgs {
    /// Config file with the user's key and workspaces [env: FERRY_CONFIG; default:
    /// ~/.config/ferry/config.toml].
    #[arg(long, value_name = "FILE", env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// The agent's tunnel endpoint, instead of the config file's.
    #[arg(long, value_name = "HOST:PORT", requires_all = ["peer_public_key", "private_key_file"])]
    endpoint: Option<String>,
    /// The agent's public key, with --endpoint.
    #[arg(long, value_name = "KEY")]
    peer_public_key: Option<String>,
    /// File holding this side's private key, with --endpoint.
    #[arg(long, value_name = "FILE")]
    private_key_file: Option<PathBuf>,
    /// File holding a preshared key.
    #[arg(long, value_name = "FILE")]
    preshared_key_file: Option<PathBuf>,
    /// The agent's address inside the tunnel.
    #[arg(long, value_name = "ADDR")]
    remote_host: Option<IpAddr>,
    /// Persistent keepalive interval in seconds (0 turns it off) [default: 25, or the
    /// wg-quick file's PersistentKeepalive].
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_KEEPALIVE_S)]
    keepalive: u16,
    /// Inner MTU of the tunnel, 1280 to 9000 [default: 1420, or the wg-quick file's MTU].
    #[arg(long, value_parser = mtu_range())]
    mtu: Option<u16>,
    /// A wg-quick config file (as for `wg-quick up`) giving this side's key and addresses and
    /// the one peer to connect to; flows go to the peer's host address in AllowedIPs.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["endpoint", "config"])]
    wg_config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PortForwardArgs {
    /// The workspace, by its name in the config file.
    workspace: String,
    /// TCP forwards: [BIND:]LOCAL[-END][:REMOTE[-END]], repeatable, comma lists allowed.
    #[arg(
        short = 'p',
        long = "tcp",
        value_name = "SPEC",
        env = "FERRY_PORT_FORWARD_TCP"
    )]
    tcp: Vec<String>,
    /// UDP forwards, same grammar as --tcp.
    #[arg(long = "udp", value_name = "SPEC", env = "FERRY_PORT_FORWARD_UDP")]
    udp: Vec<String>,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Debug, Args)]
struct NcArgs {
    /// The workspace, by its name in the config file.
    workspace: String,
    /// The workspace port.
    port: u16,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    init_tracing();
    match run(cli.command) {
        Ok(code) => code,
        Err(Failure::Usage(message)) => {
            eprintln!("ferry: {message}");
            EXIT_USAGE
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("ferry: {message}");
            EXIT_FAILURE
        }
    }
}

/// A failure, by exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad input from the user: exit 2.
    Usage(String),
    /// The job failed while running: exit 1.
    Runtime(String),
}

fn run(command: Command) -> Result<i32, Failure> {
    match command {
        Command::Keygen => {
            println!("{}", PrivateKey::generate().to_base64());
            Ok(0)
        }
        Command::Pubkey => pubkey(),
        Command::Agent(args) => agent(args),
        Command::PortForward(args) => port_forward(args),
        Command::Nc(args) => nc(args),
        Command::Demo(args) => crate::demo::run(args),
        Command::Share(pass) => exec_gateway("ferry", Some("share"), pass),
        Command::Unshare(pass) => exec_gateway("ferry", Some("unshare"), pass),
        Command::Gateway(pass) => exec_gateway("ferry gateway", None, pass),
    }
}

// The gateway and its share client live in `ferry-gateway`, installed next to `ferry`; this
// process becomes it (same PID, same stdio), so its exit code is the command's.
fn exec_gateway(name: &str, command: Option<&str>, pass: PassArgs) -> Result<i32, Failure> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()
        .map_err(|e| Failure::Runtime(format!("cannot find the ferry executable: {e}")))?;
    let gateway = exe.with_file_name(GATEWAY_BIN);
    if !gateway.is_file() {
        return Err(Failure::Runtime(format!(
            "{GATEWAY_BIN} is not installed next to ferry (looked for {}); install both \
             binaries in one folder",
            gateway.display()
        )));
    }
    let mut cmd = std::process::Command::new(&gateway);
    cmd.arg0(name).args(command).args(pass.args);
    let e = cmd.exec();
    Err(Failure::Runtime(format!(
        "cannot run {}: {e}",
        gateway.display()
    )))
}

fn pubkey() -> Result<i32, Failure> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| Failure::Runtime(format!("cannot read stdin: {e}")))?;
    let key = PrivateKey::from_str(&text)
        .map_err(|e| Failure::Usage(format!("invalid private key on stdin: {}", chain(&e))))?;
    println!("{}", key.public_key());
    Ok(0)
}

fn agent(args: AgentArgs) -> Result<i32, Failure> {
    let private_key = read_private_key(&args.private_key_file)?;
    let preshared = args
        .preshared_key_file
        .as_deref()
        .map(read_preshared_key)
        .transpose()?;
    let mut peers = Vec::new();
    for text in &args.peers {
        let public_key = parse_public_key(text, "--peer")?;
        peers.push(AgentPeer {
            public_key,
            preshared_key: preshared.clone(),
        });
    }
    let mut addrs = AGENT_ADDRS;
    for addr in &args.addresses {
        match addr {
            IpAddr::V4(v4) => addrs.v4 = *v4,
            IpAddr::V6(v6) => addrs.v6 = *v6,
        }
    }
    let config = AgentConfig {
        listen: args.listen,
        private_key,
        peers,
        mtu: usize::from(args.mtu),
        addrs,
        healthchecks: args.healthchecks.clone(),
    };
    HealthCheck::check_unique(&config.healthchecks).map_err(|e| Failure::Usage(e.to_string()))?;
    if args.print_peer_config {
        return print_peer_configs(&config, &args);
    }
    run_until_signal(AgentJob { config })
}

// Prints one wg-quick config per peer: what a stock WireGuard client needs to reach the agent.
fn print_peer_configs(config: &AgentConfig, args: &AgentArgs) -> Result<i32, Failure> {
    let endpoint = match &args.public_endpoint {
        Some(e) => e.clone(),
        None if config.listen.ip().is_unspecified() => {
            return Err(Failure::Usage(format!(
                "--listen {} does not say how peers reach this machine: add --public-endpoint HOST:PORT",
                config.listen
            )));
        }
        None => config.listen.to_string(),
    };
    let peer_key = args
        .peer_private_key_file
        .as_deref()
        .map(read_private_key)
        .transpose()?;
    if peer_key.is_some() && config.peers.len() != 1 {
        return Err(Failure::Usage(
            "--peer-private-key-file needs exactly one --peer".into(),
        ));
    }
    let agent_public = config.private_key.public_key();
    for (i, peer) in config.peers.iter().enumerate() {
        let private = match &peer_key {
            Some(key) if key.public_key() == peer.public_key => key.to_base64(),
            Some(_) => {
                return Err(Failure::Usage(
                    "--peer-private-key-file does not match the --peer public key".into(),
                ));
            }
            None => format!("<private key of {}>", peer.public_key),
        };
        let host = u8::try_from(i + 2).unwrap_or(u8::MAX);
        let [a, b, c, _] = config.addrs.v4.octets();
        let mut v6 = config.addrs.v6.segments();
        v6[7] = u16::from(host);
        println!("# wg-quick config for the peer {}", peer.public_key);
        println!("[Interface]");
        println!("PrivateKey = {private}");
        println!(
            "Address = {}.{}.{}.{}/32, {}/128",
            a,
            b,
            c,
            host,
            std::net::Ipv6Addr::from(v6)
        );
        println!("MTU = {}", config.mtu);
        println!();
        println!("[Peer]");
        println!("PublicKey = {agent_public}");
        if let Some(psk) = &peer.preshared_key {
            println!("PresharedKey = {}", psk.to_base64());
        }
        println!("Endpoint = {endpoint}");
        println!(
            "AllowedIPs = {}/32, {}/128",
            config.addrs.v4, config.addrs.v6
        );
        println!("PersistentKeepalive = {DEFAULT_KEEPALIVE_S}");
        println!();
    }
    Ok(0)
}

struct AgentJob {
    config: AgentConfig,
}

impl RunWith for AgentJob {
    type Output = Result<i32, Failure>;

    async fn run<L: LocalIo>(self) -> Self::Output {
        let listen = self.config.listen;
        let peers = self.config.peers.len();
        let engine = crate::agent::start::<L>(self.config)
            .map_err(|e| Failure::Runtime(format!("cannot listen on {listen}: {e}")))?;
        let addr = engine.local_addr().unwrap_or(listen);
        eprintln!("ferry agent listening on {addr} for {peers} peer(s)");
        eprintln!("Ready");
        wait_for_signal().await;
        engine.reset_all();
        eprintln!("ferry agent: {}", engine.summary());
        Ok(0)
    }
}

fn port_forward(args: PortForwardArgs) -> Result<i32, Failure> {
    let forwards = parse_forwards(&args.tcp, &args.udp)?;
    if forwards.is_empty() {
        return Err(Failure::Usage(
            "nothing to forward: give at least one --tcp or --udp spec".into(),
        ));
    }
    let config = connect_config(&args.workspace, &args.connect, forwards)?;
    run_until_signal(ForwardJob {
        config,
        workspace: args.workspace,
    })
}

/// Parses and checks every spec of both protocols.
pub fn parse_forwards(tcp: &[String], udp: &[String]) -> Result<Vec<Forward>, Failure> {
    let tcp: Vec<&str> = tcp.iter().map(String::as_str).collect();
    let udp: Vec<&str> = udp.iter().map(String::as_str).collect();
    let mut forwards =
        parse_specs(Protocol::Tcp, &tcp).map_err(|e| Failure::Usage(e.to_string()))?;
    forwards.extend(parse_specs(Protocol::Udp, &udp).map_err(|e| Failure::Usage(e.to_string()))?);
    check_duplicates(&forwards).map_err(|e| Failure::Usage(e.to_string()))?;
    Ok(forwards)
}

struct ForwardJob {
    config: ForwardConfig,
    workspace: String,
}

impl RunWith for ForwardJob {
    type Output = Result<i32, Failure>;

    async fn run<L: LocalIo>(self) -> Self::Output {
        let remote = self.config.remote_host;
        let forward =
            crate::forward::start::<L>(self.config).map_err(|e| Failure::Runtime(e.to_string()))?;
        for l in &forward.listening {
            eprintln!(
                "Forwarding {} {} -> {}:{} ({remote} in the tunnel)",
                l.forward.protocol, l.addr, self.workspace, l.forward.remote
            );
        }
        tokio::select! {
            () = forward.ready() => eprintln!("Ready"),
            () = wait_for_signal() => {
                forward.engine.reset_all();
                eprintln!(
                    "ferry port-forward: no handshake completed; {}",
                    forward.engine.summary()
                );
                return Ok(0);
            }
        }
        wait_for_signal().await;
        forward.engine.reset_all();
        eprintln!("ferry port-forward: {}", forward.engine.summary());
        Ok(0)
    }
}

fn nc(args: NcArgs) -> Result<i32, Failure> {
    if args.port == 0 {
        return Err(Failure::Usage(
            "port 0 is not a valid workspace port".into(),
        ));
    }
    let forward = Forward {
        protocol: Protocol::Tcp,
        bind: Some(IpAddr::from([127, 0, 0, 1])),
        local: 0,
        remote: args.port,
    };
    let config = connect_config(&args.workspace, &args.connect, vec![forward])?;
    run_until_signal(NcJob { config })
}

struct NcJob {
    config: ForwardConfig,
}

impl RunWith for NcJob {
    type Output = Result<i32, Failure>;

    async fn run<L: LocalIo>(self) -> Self::Output {
        let forward =
            crate::forward::start::<L>(self.config).map_err(|e| Failure::Runtime(e.to_string()))?;
        let Some(addr) = forward.listening.first().map(|l| l.addr) else {
            return Err(Failure::Runtime("no listener opened".into()));
        };
        // stdin and stdout are blocking: two threads copy them to a loopback connection that
        // the forward carries.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let result = copy_stdio(addr);
            let _ = done_tx.send(result);
        });
        let result = tokio::select! {
            done = done_rx => match done {
                Ok(Ok(())) => Ok(0),
                Ok(Err(e)) => Err(Failure::Runtime(format!("connection failed: {e}"))),
                Err(_) => Err(Failure::Runtime("stdio copy thread ended".into())),
            },
            () = wait_for_signal() => Ok(0),
        };
        // Let a flow that is closing normally finish, then reset whatever is left, so the
        // workspace never keeps a connection open after we exit.
        forward.engine.drain(NC_DRAIN).await;
        forward.engine.reset_all();
        result
    }
}

fn copy_stdio(addr: SocketAddr) -> std::io::Result<()> {
    let stream = std::net::TcpStream::connect(addr)?;
    let _ = stream.set_nodelay(true);
    let mut reader = stream.try_clone()?;
    let mut writer = stream;
    let upload = std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut writer);
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    let result = loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        if let Err(e) = stdout.write_all(&buf[..n]).and_then(|()| stdout.flush()) {
            break Err(e);
        }
    };
    // The workspace side is done (or stdout is gone): close our side too, even if stdin is
    // still open, so the flow ends now.
    let _ = reader.shutdown(std::net::Shutdown::Both);
    drop(upload);
    result
}

// The tunnel settings, from whichever source the user chose.
struct PeerSettings {
    endpoint: String,
    peer: PublicKey,
    private_key: PrivateKey,
    preshared: Option<PresharedKey>,
    remote_host: Option<IpAddr>,
    keepalive: Option<u16>,
    addrs: crate::tunnel::TunnelAddrs,
    mtu: Option<u16>,
    listen_port: Option<u16>,
}

// Builds the tunnel settings from --wg-config, --endpoint and friends, or the config file;
// flags given explicitly override what the file says.
fn connect_config(
    workspace: &str,
    args: &ConnectArgs,
    forwards: Vec<Forward>,
) -> Result<ForwardConfig, Failure> {
    let mut settings = if let Some(path) = &args.wg_config {
        from_wg_config(path)?
    } else if let Some(endpoint) = &args.endpoint {
        from_flags(endpoint, args)?
    } else {
        from_config_file(workspace, args)?
    };
    if let Some(path) = &args.preshared_key_file {
        settings.preshared = Some(read_preshared_key(path)?);
    }
    let remote_host = args.remote_host.or(settings.remote_host);
    let remote_host = match (remote_host, &args.wg_config) {
        (Some(host), _) => host,
        (None, None) => IpAddr::V4(AGENT_ADDRS.v4),
        (None, Some(path)) => {
            return Err(Failure::Usage(format!(
                "{}: the peer's AllowedIPs has no single host address; say which host to reach with --remote-host ADDR",
                path.display()
            )));
        }
    };
    let keepalive = settings.keepalive.unwrap_or(args.keepalive);
    Ok(ForwardConfig {
        endpoint: resolve_endpoint(&settings.endpoint)?,
        private_key: settings.private_key,
        peer: settings.peer,
        preshared_key: settings.preshared,
        keepalive_s: Some(keepalive).filter(|k| *k > 0),
        forwards,
        remote_host,
        addrs: settings.addrs,
        mtu: usize::from(check_mtu(
            args.mtu.or(settings.mtu).unwrap_or(DEFAULT_MTU),
            args,
        )?),
        listen_port: settings.listen_port,
    })
}

fn from_flags(endpoint: &str, args: &ConnectArgs) -> Result<PeerSettings, Failure> {
    let peer = parse_public_key(
        args.peer_public_key.as_deref().unwrap_or_default(),
        "--peer-public-key",
    )?;
    let key_file = args
        .private_key_file
        .as_deref()
        .ok_or_else(|| Failure::Usage("--endpoint needs --private-key-file".into()))?;
    Ok(PeerSettings {
        endpoint: endpoint.to_string(),
        peer,
        private_key: read_private_key(key_file)?,
        preshared: None,
        remote_host: None,
        keepalive: None,
        addrs: CLIENT_ADDRS,
        mtu: None,
        listen_port: None,
    })
}

fn from_config_file(workspace: &str, args: &ConnectArgs) -> Result<PeerSettings, Failure> {
    let path = args
        .config
        .clone()
        .or_else(crate::config::default_path)
        .ok_or(ConfigError::NoLocation)
        .map_err(usage)?;
    let config = Config::load(&path).map_err(usage)?;
    let ws = config.workspace(workspace, &path).map_err(usage)?;
    let preshared = ws
        .preshared_key_file
        .as_deref()
        .map(read_preshared_key)
        .transpose()?;
    Ok(PeerSettings {
        endpoint: ws.endpoint.clone(),
        peer: parse_public_key(&ws.public_key, "public_key")?,
        private_key: read_private_key(&config.private_key_file)?,
        preshared,
        remote_host: ws.remote_host,
        keepalive: ws.keepalive,
        addrs: CLIENT_ADDRS,
        mtu: None,
        listen_port: None,
    })
}

// A wg-quick file: [Interface] gives our key, addresses, MTU and port; its one [Peer] the rest.
fn from_wg_config(path: &std::path::Path) -> Result<PeerSettings, Failure> {
    let config = WgQuickConfig::from_file(path).map_err(|e| Failure::Usage(chain(&e)))?;
    if !config.ignored.is_empty() {
        tracing::info!(keys = ?config.ignored, "settings in the wg-quick file that ferry does not use");
    }
    let [peer] = <[PeerConfig; 1]>::try_from(config.peers).map_err(|peers| {
        Failure::Usage(format!(
            "{}: ferry needs exactly one [Peer] section, found {}",
            path.display(),
            peers.len()
        ))
    })?;
    let endpoint = peer
        .endpoint
        .as_ref()
        .ok_or_else(|| Failure::Usage(format!("{}: the [Peer] has no Endpoint", path.display())))?;
    let interface = config.interface;
    let mut addrs = CLIENT_ADDRS;
    for net in &interface.addresses {
        match net.addr() {
            IpAddr::V4(v4) => addrs.v4 = v4,
            IpAddr::V6(v6) => addrs.v6 = v6,
        }
    }
    let remote_host = peer
        .allowed_ips
        .iter()
        .find(|net| net.is_host())
        .map(|net| net.addr());
    Ok(PeerSettings {
        endpoint: endpoint.to_string(),
        peer: peer.public_key,
        private_key: interface.private_key,
        preshared: peer.preshared_key,
        remote_host,
        keepalive: Some(peer.persistent_keepalive.unwrap_or(0)),
        addrs,
        mtu: interface.mtu,
        listen_port: interface.listen_port,
    })
}

/// Inner MTUs ferry takes: IPv6 (always inside the tunnel) needs 1280; above 9000 is no real link.
const MTU_RANGE: std::ops::RangeInclusive<u16> = 1280..=9000;

fn mtu_range() -> clap::builder::RangedI64ValueParser<u16> {
    clap::value_parser!(u16).range(i64::from(*MTU_RANGE.start())..=i64::from(*MTU_RANGE.end()))
}

// The flag is checked by clap; an MTU from a wg-quick file is checked here.
fn check_mtu(mtu: u16, args: &ConnectArgs) -> Result<u16, Failure> {
    if MTU_RANGE.contains(&mtu) {
        return Ok(mtu);
    }
    let from = args
        .wg_config
        .as_ref()
        .map_or(String::from("MTU"), |p| format!("{}: MTU", p.display()));
    Err(Failure::Usage(format!(
        "{from} {mtu} is outside {}..={}: IPv6 inside the tunnel needs at least 1280",
        MTU_RANGE.start(),
        MTU_RANGE.end()
    )))
}

fn resolve_endpoint(text: &str) -> Result<SocketAddr, Failure> {
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| Failure::Usage(format!("invalid endpoint {text:?} (want HOST:PORT): {e}")))?;
    addrs
        .next()
        .ok_or_else(|| Failure::Usage(format!("endpoint {text:?} resolves to no address")))
}

fn read_private_key(path: &std::path::Path) -> Result<PrivateKey, Failure> {
    PrivateKey::from_file(path).map_err(|e| Failure::Usage(chain(&e)))
}

fn read_preshared_key(path: &std::path::Path) -> Result<PresharedKey, Failure> {
    PresharedKey::from_file(path).map_err(|e| Failure::Usage(chain(&e)))
}

fn parse_public_key(text: &str, what: &str) -> Result<PublicKey, Failure> {
    PublicKey::from_str(text)
        .map_err(|e| Failure::Usage(format!("invalid {what} {text:?}: {}", chain(&e))))
}

fn usage(e: ConfigError) -> Failure {
    Failure::Usage(chain(&e))
}

/// An error and its causes on one line.
pub fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Runs a job on the detected backend.
pub fn run_until_signal<R: RunWith<Output = Result<i32, Failure>>>(job: R) -> Result<i32, Failure> {
    let backend = Backend::detect();
    tracing::debug!(backend = backend.name(), "starting");
    crate::io::run(backend, job)
        .map_err(|e| Failure::Runtime(format!("cannot start the runtime: {e}")))?
}

/// Resolves at the first SIGINT, SIGTERM or SIGHUP (ssh sends a ProxyCommand SIGHUP when
/// its session ends); a second SIGINT or SIGTERM exits the process at once.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
    eprintln!("ferry: shutting down (send the signal again to force)");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt {
            rt.block_on(async {
                if let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) {
                    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
                    std::process::exit(EXIT_FAILURE);
                }
            });
        }
    });
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// How long `ferry nc` lets its flow close normally before resetting it.
const NC_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);
/// The default inner MTU.
pub const DEFAULT_MTU: u16 = 1420;
/// The default persistent keepalive of the port-forward side, in seconds.
pub const DEFAULT_KEEPALIVE_S: u16 = 25;
/// The gateway binary `ferry share`, `ferry unshare` and `ferry gateway` run.
const GATEWAY_BIN: &str = "ferry-gateway";
/// Exit code for a usage error.
pub const EXIT_USAGE: i32 = 2;
/// Exit code for a runtime failure.
pub const EXIT_FAILURE: i32 = 1;
