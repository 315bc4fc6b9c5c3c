//! Tunnels to workspace agents: one thread and one ferry port-forward per workspace.
//!
//! The dataplane runs on a single-threaded runtime, so each workspace's tunnel lives on its own
//! thread, started at the first request for that workspace. The HTTP side asks it for a port
//! and gets back a loopback address (a listener that the port-forward carries to the agent's
//! port); it then proxies plain HTTP to that address. Listeners are opened once per port and
//! kept. Dropping [`Tunnels`] closes every command channel, and each tunnel thread then ends.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use ferry_crypto::keys::PrivateKey;
use ferry_dataplane::agent::AGENT_ADDRS;
use ferry_dataplane::forward::{CLIENT_ADDRS, ForwardConfig, PortForward};
use ferry_dataplane::io::{Backend, LocalIo, RunWith};
use ferry_dataplane::spec::{Forward, Protocol};
use ferry_dataplane::tunnel::TunnelAddrs;
use rand_core::{OsRng, RngCore};
use tokio::sync::{mpsc, oneshot};

use crate::config::Workspace;
use crate::host::Name;

/// The tunnels of every workspace, started on demand.
pub struct Tunnels {
    private_key: PrivateKey,
    by_workspace: Mutex<HashMap<Name, mpsc::UnboundedSender<Open>>>,
    ports: Mutex<HashMap<(Name, u16), SocketAddr>>,
}

impl Tunnels {
    /// Tunnels that authenticate with the gateway's `private_key`.
    pub fn new(private_key: PrivateKey) -> Tunnels {
        Tunnels {
            private_key,
            by_workspace: Mutex::new(HashMap::new()),
            ports: Mutex::new(HashMap::new()),
        }
    }

    /// The loopback address that reaches `port` in `workspace`, starting the tunnel if needed.
    pub async fn port(&self, workspace: &Workspace, port: u16) -> Result<SocketAddr, TunnelError> {
        let key = (workspace.name.clone(), port);
        if let Some(addr) = self.ports.lock().map_err(|_| TunnelError::Gone)?.get(&key) {
            return Ok(*addr);
        }
        let (tx, rx) = oneshot::channel();
        self.sender(workspace)?
            .send(Open { port, reply: tx })
            .map_err(|_| TunnelError::Gone)?;
        let addr = tokio::time::timeout(HANDSHAKE_TIMEOUT * 2, rx)
            .await
            .map_err(|_| TunnelError::NoHandshake)?
            .map_err(|_| TunnelError::Gone)??;
        self.ports
            .lock()
            .map_err(|_| TunnelError::Gone)?
            .insert(key, addr);
        Ok(addr)
    }

    // The command channel of the workspace's tunnel thread, starting the thread if needed.
    fn sender(&self, workspace: &Workspace) -> Result<mpsc::UnboundedSender<Open>, TunnelError> {
        let mut map = self.by_workspace.lock().map_err(|_| TunnelError::Gone)?;
        if let Some(tx) = map.get(&workspace.name).filter(|tx| !tx.is_closed()) {
            return Ok(tx.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let job = TunnelThread {
            config: forward_config(workspace, &self.private_key),
            commands: rx,
        };
        let name = format!("ferry-tunnel-{}", workspace.name);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || ferry_dataplane::io::run(Backend::Epoll, job))
            .map_err(|e| TunnelError::Start(e.to_string()))?;
        map.insert(workspace.name.clone(), tx.clone());
        Ok(tx)
    }
}

/// Why a workspace port could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TunnelError {
    /// The tunnel could not start (socket or thread creation failed).
    #[error("the tunnel to the workspace could not start: {0}")]
    Start(String),
    /// The agent did not complete a WireGuard handshake in time (down, wrong key, unreachable).
    #[error("the workspace agent did not answer the tunnel handshake in time")]
    NoHandshake,
    /// The tunnel thread ended.
    #[error("the tunnel to the workspace has stopped")]
    Gone,
}

struct Open {
    port: u16,
    reply: oneshot::Sender<Result<SocketAddr, TunnelError>>,
}

struct TunnelThread {
    config: ForwardConfig,
    commands: mpsc::UnboundedReceiver<Open>,
}

impl RunWith for TunnelThread {
    type Output = ();

    async fn run<L: LocalIo>(mut self) {
        let mut forward = match ferry_dataplane::forward::start::<L>(self.config) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a workspace tunnel");
                if let Some(open) = self.commands.recv().await {
                    let _ = open.reply.send(Err(TunnelError::Start(e.to_string())));
                }
                return;
            }
        };
        while let Some(open) = self.commands.recv().await {
            let ready = tokio::time::timeout(HANDSHAKE_TIMEOUT, forward.ready()).await;
            let reply = match ready {
                Ok(()) => open_port::<L>(&mut forward, open.port),
                Err(_) => Err(TunnelError::NoHandshake),
            };
            let _ = open.reply.send(reply);
        }
    }
}

fn open_port<L: LocalIo>(forward: &mut PortForward, port: u16) -> Result<SocketAddr, TunnelError> {
    let spec = Forward {
        protocol: Protocol::Tcp,
        bind: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        local: 0,
        remote: port,
    };
    let listening = forward
        .open::<L>(spec)
        .map_err(|e| TunnelError::Start(e.to_string()))?;
    listening
        .first()
        .map(|l| l.addr)
        .ok_or_else(|| TunnelError::Start("no listener was opened".into()))
}

fn forward_config(workspace: &Workspace, private_key: &PrivateKey) -> ForwardConfig {
    ForwardConfig {
        endpoint: workspace.endpoint,
        private_key: private_key.clone(),
        peer: workspace.public_key,
        preshared_key: None,
        keepalive_s: Some(KEEPALIVE_S),
        forwards: Vec::new(),
        remote_host: IpAddr::V4(AGENT_ADDRS.v4),
        addrs: fresh_addrs(),
        mtu: TUNNEL_MTU,
        listen_port: None,
    }
}

// The gateway's addresses inside a new tunnel: random within ferry's client range, so that a
// restarted gateway never reuses the (address, port) pairs of its previous run's flows. ferry's
// port-forward numbers flow source ports from 49152 on every start, and the agent may still hold
// the old flows (seen as a hang after a restart when the fixed CLIENT_ADDRS were used).
fn fresh_addrs() -> TunnelAddrs {
    let mut r = [0u8; 4];
    OsRng.fill_bytes(&mut r);
    let [a, b, c, d] = r;
    let v4 = CLIENT_ADDRS.v4.octets();
    let v6 = CLIENT_ADDRS.v6.segments();
    TunnelAddrs {
        v4: Ipv4Addr::new(v4[0], v4[1], 128 | (a & 0x7f), b.max(2)),
        v6: Ipv6Addr::new(
            v6[0],
            0,
            0,
            0,
            0,
            0,
            0x8000 | u16::from(c),
            u16::from(d).max(2),
        ),
    }
}

/// How long the first request to a workspace waits for the tunnel handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE_S: u16 = 25;
const TUNNEL_MTU: usize = 1420;
