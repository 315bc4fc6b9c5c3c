//! The agent: the workspace end of the tunnel.
//!
//! It accepts tunnels from the configured peers only, and turns each flow arriving through a
//! tunnel into a connection to the workspace's own loopback: a TCP flow to tunnel port P is
//! answered (SYN-ACK) only after the agent has connected to `127.0.0.1:P`, or else `[::1]:P`;
//! if both fail the flow is reset. UDP flows go to `127.0.0.1:P` (then `[::1]:P` when that port
//! refuses), one local socket per client, closed after [`UDP_IDLE_S`] idle. Tunnel ports below
//! [`FIRST_FORWARDED_PORT`] are reserved for the agent itself and never forwarded; tunnel port
//! [`ports::PORTS_PORT`] reaches the agent's own listing of the workspace's listening ports and
//! of the state of its app healthchecks ([`crate::health`]), which it runs itself.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use ferry_crypto::keys::{PrivateKey, PublicKey};
use ferry_crypto::session::{PeerIndex, Session};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp::UdpMetadata;
use smoltcp::wire::IpEndpoint;

use crate::classify::{FlowStart, flow_start};
use crate::engine::{Engine, Ingress, Router};
use crate::flow::run_tcp_flow;
use crate::health::{self, HealthCheck};
use crate::io::LocalIo;
use crate::outer::OuterSocket;
use crate::ports;
use crate::tunnel::{Tunnel, TunnelAddrs, to_endpoint};
use crate::udpflow::{Activity, UDP_IDLE_S, datagram_buffer, recv_stack, send_stack};

/// What an agent needs to run.
pub struct AgentConfig {
    /// The tunnel socket's address.
    pub listen: SocketAddr,
    /// The agent's private key.
    pub private_key: PrivateKey,
    /// The peers allowed to connect, each with an optional preshared key.
    pub peers: Vec<AgentPeer>,
    /// Inner MTU.
    pub mtu: usize,
    /// The agent's own addresses inside the tunnel.
    pub addrs: TunnelAddrs,
    /// App healthchecks to run and report (at most one per port).
    pub healthchecks: Vec<HealthCheck>,
}

/// One allowed peer.
pub struct AgentPeer {
    /// Its public key.
    pub public_key: PublicKey,
    /// A preshared key, if the peer uses one.
    pub preshared_key: Option<ferry_crypto::keys::PresharedKey>,
}

/// Binds the agent's socket and starts its engine on the current runtime. Returns the engine;
/// it serves until the runtime stops.
pub fn start<L: LocalIo>(config: AgentConfig) -> std::io::Result<Rc<Engine>> {
    let outer = OuterSocket::bind(config.listen)?;
    let now = smoltcp::time::Instant::from_micros(0);
    let tunnels = config
        .peers
        .iter()
        .enumerate()
        .map(|(i, peer)| {
            let session = Session::new(
                &config.private_key,
                peer.public_key,
                peer.preshared_key.as_ref(),
                None,
                i as u32,
            );
            Tunnel::new(session, config.addrs, config.mtu, true, now)
        })
        .collect();
    let keys = config.peers.iter().map(|p| p.public_key).collect();
    let router = Router::Peers(Box::new(PeerIndex::new(&config.private_key, keys)));
    let engine = Engine::new(outer, tunnels, router);
    let health = health::start(config.healthchecks);
    let ports_listing = ports::serve_listing(health)?;
    let ingress: Rc<AgentIngress<L>> = Rc::new(AgentIngress {
        ports_listing,
        state: Rc::default(),
        starts: RefCell::new(Vec::new()),
        backend: PhantomData,
    });
    engine.start(ingress);
    Ok(engine)
}

/// The agent's default addresses inside the tunnel.
pub const AGENT_ADDRS: TunnelAddrs = TunnelAddrs {
    v4: Ipv4Addr::new(10, 77, 0, 1),
    v6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1),
};

/// Tunnel ports below this are the agent's own; flows to them are refused.
pub const FIRST_FORWARDED_PORT: u16 = 9;

#[derive(Default)]
struct AgentState {
    tcp_flows: HashSet<(usize, SocketAddr, SocketAddr)>,
    udp_ports: HashMap<(usize, u16), SocketHandle>,
}

struct AgentIngress<L> {
    // The in-process listing service that tunnel port `ports::PORTS_PORT` reaches.
    ports_listing: SocketAddr,
    state: Rc<RefCell<AgentState>>,
    starts: RefCell<Vec<FlowStart>>,
    backend: PhantomData<L>,
}

impl<L: LocalIo> Ingress for AgentIngress<L> {
    fn inspect(&self, engine: &Rc<Engine>, t: usize) {
        let mut starts = self.starts.borrow_mut();
        starts.clear();
        {
            let core = engine.core.borrow();
            let Some(tunnel) = core.tunnels.get(t) else {
                return;
            };
            starts.extend(tunnel.pending_packets().filter_map(flow_start));
        }
        for start in starts.iter() {
            match *start {
                FlowStart::TcpSyn { src, dst } => self.open_tcp(engine, t, src, dst),
                FlowStart::Udp { dst, .. } => self.open_udp_port(engine, t, dst.port()),
            }
        }
    }
}

impl<L: LocalIo> AgentIngress<L> {
    fn open_tcp(&self, engine: &Rc<Engine>, t: usize, src: SocketAddr, dst: SocketAddr) {
        // Reserved ports get no socket (the stack answers the SYN with a reset), except the one
        // that carries the listening-ports list to the agent's own listing service.
        let targets = if dst.port() == ports::PORTS_PORT {
            vec![self.ports_listing]
        } else if dst.port() < FIRST_FORWARDED_PORT {
            return;
        } else {
            local_targets(dst.port())
        };
        if !self.state.borrow_mut().tcp_flows.insert((t, src, dst)) {
            return;
        }
        let handle = {
            let mut core = engine.core.borrow_mut();
            let Some(tunnel) = core.tunnels.get_mut(t) else {
                return;
            };
            let handle = tunnel.add_tcp();
            let socket = tunnel.tcp(handle);
            socket.pause_synack(true);
            if socket.listen(to_endpoint(dst)).is_err() {
                tunnel.remove(handle);
                return;
            }
            handle
        };
        let engine = engine.clone();
        let key = FlowKeyGuard {
            state: self.state.clone(),
            key: (t, src, dst),
        };
        tokio::task::spawn_local(async move {
            answer_tcp::<L>(&engine, t, handle, targets).await;
            drop(key);
        });
    }

    fn open_udp_port(&self, engine: &Rc<Engine>, t: usize, port: u16) {
        if port < FIRST_FORWARDED_PORT || self.state.borrow().udp_ports.contains_key(&(t, port)) {
            return;
        }
        let handle = {
            let mut core = engine.core.borrow_mut();
            let Some(tunnel) = core.tunnels.get_mut(t) else {
                return;
            };
            let handle = tunnel.add_udp();
            if tunnel.udp(handle).bind(port).is_err() {
                tunnel.remove(handle);
                return;
            }
            handle
        };
        self.state.borrow_mut().udp_ports.insert((t, port), handle);
        tokio::task::spawn_local(serve_udp_port(engine.clone(), t, handle, port));
    }
}

// Forgets the flow's key when the flow task ends, so that the 4-tuple can be used again.
struct FlowKeyGuard {
    state: Rc<RefCell<AgentState>>,
    key: (usize, SocketAddr, SocketAddr),
}

impl Drop for FlowKeyGuard {
    fn drop(&mut self) {
        self.state.borrow_mut().tcp_flows.remove(&self.key);
    }
}

// Connects to the workspace port, then lets the stack answer the SYN; or resets the flow.
async fn answer_tcp<L: LocalIo>(
    engine: &Rc<Engine>,
    t: usize,
    handle: SocketHandle,
    targets: Vec<SocketAddr>,
) {
    match connect_local::<L>(&targets).await {
        Some(stream) => {
            if let Some(tunnel) = engine.core.borrow_mut().tunnels.get_mut(t) {
                tunnel.tcp(handle).pause_synack(false);
            }
            engine.poke(t);
            run_tcp_flow(engine.clone(), t, handle, stream).await;
        }
        None => {
            tracing::debug!(
                ?targets,
                "nothing listens on the workspace port; resetting the flow"
            );
            if let Some(tunnel) = engine.core.borrow_mut().tunnels.get_mut(t) {
                tunnel.tcp(handle).abort();
            }
            engine.poll_now(t);
            if let Some(tunnel) = engine.core.borrow_mut().tunnels.get_mut(t) {
                tunnel.remove(handle);
            }
        }
    }
}

// A workspace port is dialled on 127.0.0.1, then [::1].
fn local_targets(port: u16) -> Vec<SocketAddr> {
    vec![
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ]
}

async fn connect_local<L: LocalIo>(targets: &[SocketAddr]) -> Option<L::Stream> {
    let timeout = Duration::from_secs(LOCAL_CONNECT_TIMEOUT_S);
    for target in targets {
        if let Ok(Ok(stream)) = tokio::time::timeout(timeout, L::connect(*target)).await {
            return Some(stream);
        }
    }
    None
}

// One stack socket serves a tunnel port for every client; each client gets a local socket.
async fn serve_udp_port(engine: Rc<Engine>, t: usize, handle: SocketHandle, port: u16) {
    let flows: Rc<RefCell<HashMap<IpEndpoint, Rc<UdpFlow>>>> = Rc::default();
    let mut buf = datagram_buffer();
    while let Some((n, meta)) = recv_stack(&engine, t, handle, &mut buf).await {
        engine.poke(t);
        let existing = flows.borrow().get(&meta.endpoint).cloned();
        let flow = match existing {
            Some(flow) => flow,
            None => match UdpFlow::open(port, meta).await {
                Ok(flow) => {
                    flows.borrow_mut().insert(meta.endpoint, flow.clone());
                    tokio::task::spawn_local(udp_replies(
                        engine.clone(),
                        t,
                        handle,
                        flow.clone(),
                        flows.clone(),
                    ));
                    flow
                }
                Err(e) => {
                    tracing::debug!(error = %e, port, "cannot open a local UDP socket; datagram dropped");
                    continue;
                }
            },
        };
        flow.activity.touch();
        flow.send(&buf[..n], port).await;
    }
}

struct UdpFlow {
    socket: RefCell<Rc<tokio::net::UdpSocket>>,
    client: UdpMetadata,
    port: u16,
    activity: Rc<Activity>,
    // Until the workspace answers, the last datagram is kept to resend it to [::1] if
    // 127.0.0.1 refuses.
    unconfirmed: RefCell<Option<Vec<u8>>>,
    on_v6: std::cell::Cell<bool>,
}

impl UdpFlow {
    async fn open(port: u16, client: UdpMetadata) -> std::io::Result<Rc<Self>> {
        let socket = local_udp(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
        Ok(Rc::new(UdpFlow {
            socket: RefCell::new(Rc::new(socket)),
            client,
            port,
            activity: Activity::new(Duration::from_secs(UDP_IDLE_S)),
            unconfirmed: RefCell::new(Some(Vec::new())),
            on_v6: std::cell::Cell::new(false),
        }))
    }

    async fn send(&self, data: &[u8], port: u16) {
        if let Some(copy) = self.unconfirmed.borrow_mut().as_mut() {
            copy.clear();
            copy.extend_from_slice(data);
        }
        let socket = self.socket.borrow().clone();
        if let Err(e) = socket.send(data).await {
            if is_refused(&e) {
                self.switch_to_v6(port).await;
            } else {
                tracing::debug!(error = %e, port, "local UDP send failed; datagram dropped");
            }
        }
    }

    async fn switch_to_v6(&self, port: u16) {
        if self.on_v6.replace(true) {
            return;
        }
        let Ok(socket) = local_udp(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await else {
            return;
        };
        let socket = Rc::new(socket);
        *self.socket.borrow_mut() = socket.clone();
        let pending = self.unconfirmed.borrow_mut().take();
        if let Some(data) = pending.filter(|d| !d.is_empty()) {
            let _ = socket.send(&data).await;
        }
    }
}

async fn local_udp(target: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let bind = if target.is_ipv4() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    } else {
        SocketAddr::from((Ipv6Addr::LOCALHOST, 0))
    };
    let socket = tokio::net::UdpSocket::bind(bind).await?;
    socket.connect(target).await?;
    Ok(socket)
}

fn is_refused(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::ConnectionRefused
}

// Carries the workspace's replies back to the client until the flow is idle too long.
async fn udp_replies(
    engine: Rc<Engine>,
    t: usize,
    handle: SocketHandle,
    flow: Rc<UdpFlow>,
    flows: Rc<RefCell<HashMap<IpEndpoint, Rc<UdpFlow>>>>,
) {
    let mut buf = datagram_buffer();
    loop {
        let socket = flow.socket.borrow().clone();
        let received = tokio::select! {
            r = socket.recv(&mut buf) => r,
            () = flow.activity.expired() => break,
        };
        let n = match received {
            Ok(n) => n,
            Err(e) if is_refused(&e) && !flow.on_v6.get() => {
                flow.switch_to_v6(flow.port).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "local UDP receive failed");
                continue;
            }
        };
        flow.unconfirmed.borrow_mut().take();
        flow.activity.touch();
        if !send_stack(&engine, t, handle, &buf[..n], flow.client).await {
            tracing::debug!(len = n, "reply does not fit the tunnel socket; dropped");
        }
    }
    flows.borrow_mut().remove(&flow.client.endpoint);
}

const LOCAL_CONNECT_TIMEOUT_S: u64 = 10;
