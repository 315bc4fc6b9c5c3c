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

use crate::agent::{AGENT_ADDRS, AgentConfig, AgentPeer};
use crate::config::{Config, ConfigError};
use crate::forward::{CLIENT_ADDRS, ForwardConfig};
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
    /// Inner MTU of the tunnel.
    #[arg(long, default_value_t = DEFAULT_MTU)]
    mtu: u16,
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
    /// Persistent keepalive interval in seconds (0 turns it off).
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_KEEPALIVE_S)]
    keepalive: u16,
    /// Inner MTU of the tunnel.
    #[arg(long, default_value_t = DEFAULT_MTU)]
    mtu: u16,
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
    }
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
    let config = AgentConfig {
        listen: args.listen,
        private_key,
        peers,
        mtu: usize::from(args.mtu),
        addrs: AGENT_ADDRS,
    };
    run_until_signal(AgentJob { config })
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
            () = wait_for_signal() => return Ok(0),
        }
        wait_for_signal().await;
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
        tokio::select! {
            done = done_rx => match done {
                Ok(Ok(())) => Ok(0),
                Ok(Err(e)) => Err(Failure::Runtime(format!("connection failed: {e}"))),
                Err(_) => Err(Failure::Runtime("stdio copy thread ended".into())),
            },
            () = wait_for_signal() => Ok(0),
        }
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
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stdout.write_all(&buf[..n])?;
        stdout.flush()?;
    }
    drop(upload);
    Ok(())
}

// Builds the tunnel settings from --endpoint and friends, or from the config file.
fn connect_config(
    workspace: &str,
    args: &ConnectArgs,
    forwards: Vec<Forward>,
) -> Result<ForwardConfig, Failure> {
    let (endpoint, peer, private_key, mut preshared, mut remote_host, mut keepalive) =
        match &args.endpoint {
            Some(endpoint) => {
                let peer = parse_public_key(
                    args.peer_public_key.as_deref().unwrap_or_default(),
                    "--peer-public-key",
                )?;
                let key_file = args
                    .private_key_file
                    .as_deref()
                    .ok_or_else(|| Failure::Usage("--endpoint needs --private-key-file".into()))?;
                (
                    endpoint.clone(),
                    peer,
                    read_private_key(key_file)?,
                    None,
                    None,
                    None,
                )
            }
            None => from_config_file(workspace, args)?,
        };
    if let Some(path) = &args.preshared_key_file {
        preshared = Some(read_preshared_key(path)?);
    }
    remote_host = args.remote_host.or(remote_host);
    keepalive = keepalive.or(Some(args.keepalive));
    let endpoint = resolve_endpoint(&endpoint)?;
    Ok(ForwardConfig {
        endpoint,
        private_key,
        peer,
        preshared_key: preshared,
        keepalive_s: keepalive.filter(|k| *k > 0),
        forwards,
        remote_host: remote_host.unwrap_or(IpAddr::V4(AGENT_ADDRS.v4)),
        addrs: CLIENT_ADDRS,
        mtu: usize::from(args.mtu),
    })
}

type Resolved = (
    String,
    PublicKey,
    PrivateKey,
    Option<PresharedKey>,
    Option<IpAddr>,
    Option<u16>,
);

fn from_config_file(workspace: &str, args: &ConnectArgs) -> Result<Resolved, Failure> {
    let path = args
        .config
        .clone()
        .or_else(crate::config::default_path)
        .ok_or(ConfigError::NoLocation)
        .map_err(usage)?;
    let config = Config::load(&path).map_err(usage)?;
    let ws = config.workspace(workspace, &path).map_err(usage)?;
    let peer = parse_public_key(&ws.public_key, "public_key")?;
    let private_key = read_private_key(&config.private_key_file)?;
    let preshared = ws
        .preshared_key_file
        .as_deref()
        .map(read_preshared_key)
        .transpose()?;
    Ok((
        ws.endpoint.clone(),
        peer,
        private_key,
        preshared,
        ws.remote_host,
        ws.keepalive,
    ))
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

/// Resolves at the first SIGINT or SIGTERM; a second one exits the process at once.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
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

/// The default inner MTU.
pub const DEFAULT_MTU: u16 = 1420;
/// The default persistent keepalive of the port-forward side, in seconds.
pub const DEFAULT_KEEPALIVE_S: u16 = 25;
/// Exit code for a usage error.
pub const EXIT_USAGE: i32 = 2;
/// Exit code for a runtime failure.
pub const EXIT_FAILURE: i32 = 1;
