//! The port-forward side: local listeners whose connections travel through one tunnel.
//!
//! Every accepted local TCP connection becomes one flow to the agent's tunnel address at the
//! remote port; every local UDP client address becomes one UDP flow, closed after
//! [`UDP_IDLE_S`] idle. If the agent refuses a flow (nothing listens on the workspace port), the
//! local connection is closed at once and the forward keeps serving.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use ferry_crypto::keys::{PresharedKey, PrivateKey, PublicKey};
use ferry_crypto::session::Session;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use tokio::sync::Notify;

use crate::engine::{Engine, Ingress, Router};
use crate::flow::run_tcp_flow;
use crate::io::LocalIo;
use crate::outer::OuterSocket;
use crate::spec::{Forward, Protocol};
use crate::tunnel::{Tunnel, TunnelAddrs};
use crate::udpflow::{Activity, UDP_IDLE_S, datagram_buffer, recv_stack, send_stack};

/// What a port-forward needs to run.
pub struct ForwardConfig {
    /// The agent's tunnel endpoint.
    pub endpoint: SocketAddr,
    /// This side's private key.
    pub private_key: PrivateKey,
    /// The agent's public key.
    pub peer: PublicKey,
    /// A preshared key, if the tunnel uses one.
    pub preshared_key: Option<PresharedKey>,
    /// Persistent keepalive interval in seconds, if any.
    pub keepalive_s: Option<u16>,
    /// The forwards (already checked for duplicates).
    pub forwards: Vec<Forward>,
    /// The agent's address inside the tunnel: flows go to this host.
    pub remote_host: IpAddr,
    /// This side's addresses inside the tunnel.
    pub addrs: TunnelAddrs,
    /// Inner MTU.
    pub mtu: usize,
    /// The tunnel socket's local port (any free port if `None`).
    pub listen_port: Option<u16>,
}

/// A local listener that is open.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    /// The forward it serves.
    pub forward: Forward,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Why a port-forward could not start.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// A listener could not be opened (port in use, no permission, address not local).
    #[error("cannot listen on {protocol} {addr}: {source}")]
    Listen {
        protocol: Protocol,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The tunnel socket could not be opened.
    #[error("cannot open the tunnel socket: {0}")]
    Socket(std::io::Error),
}

/// A running port-forward.
pub struct PortForward {
    /// The engine carrying the tunnel.
    pub engine: Rc<Engine>,
    /// The open listeners.
    pub listening: Vec<Listening>,
    state: Rc<ClientState>,
    remote_host: IpAddr,
}

impl PortForward {
    /// Opens one more forward on the running tunnel (for example a gateway that reaches ports
    /// on demand). With `forward.local == 0` the system picks a free local port.
    pub fn open<L: LocalIo>(&mut self, forward: Forward) -> Result<Vec<Listening>, ForwardError> {
        let before = self.listening.len();
        for (f, listener) in bind_all(&[forward])? {
            self.serve::<L>(f, listener)?;
        }
        Ok(self.listening[before..].to_vec())
    }

    // Starts serving one bound listener through the tunnel.
    fn serve<L: LocalIo>(&mut self, forward: Forward, listener: Bound) -> Result<(), ForwardError> {
        let remote = SocketAddr::new(self.remote_host, forward.remote);
        let (engine, state) = (self.engine.clone(), self.state.clone());
        match listener {
            Bound::Tcp(l) => {
                let addr = l.local_addr().map_err(ForwardError::Socket)?;
                let l = L::listener(l).map_err(ForwardError::Socket)?;
                tokio::task::spawn_local(accept_tcp::<L>(engine, state, l, remote));
                self.listening.push(Listening { forward, addr });
            }
            Bound::Udp(u) => {
                let addr = u.local_addr().map_err(ForwardError::Socket)?;
                let u = tokio::net::UdpSocket::from_std(u).map_err(ForwardError::Socket)?;
                tokio::task::spawn_local(serve_udp(engine, state, Rc::new(u), remote));
                self.listening.push(Listening { forward, addr });
            }
        }
        Ok(())
    }

    /// Resolves once the first handshake with the agent has completed.
    pub async fn ready(&self) {
        while !self.state.ready.get() {
            self.state.ready_changed.notified().await;
        }
    }
}

/// The port-forward side's default addresses inside the tunnel.
pub const CLIENT_ADDRS: TunnelAddrs = TunnelAddrs {
    v4: Ipv4Addr::new(10, 77, 0, 2),
    v6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2),
};

/// Opens every listener (all or nothing), starts the tunnel, and serves until the runtime stops.
pub fn start<L: LocalIo>(config: ForwardConfig) -> Result<PortForward, ForwardError> {
    let listeners = bind_all(&config.forwards)?;
    let port = config.listen_port.unwrap_or(0);
    let bind = if config.endpoint.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))
    };
    let outer = OuterSocket::bind(bind).map_err(ForwardError::Socket)?;
    let session = Session::new(
        &config.private_key,
        config.peer,
        config.preshared_key.as_ref(),
        config.keepalive_s,
        0,
    );
    let mut tunnel = Tunnel::new(
        session,
        config.addrs,
        config.mtu,
        false,
        smoltcp::time::Instant::from_micros(0),
    );
    tunnel.set_endpoint(config.endpoint);
    tunnel.force_handshake();
    let engine = Engine::new(outer, vec![tunnel], Router::Single);
    let state = Rc::new(ClientState::new());
    engine.start(state.clone());
    engine.poke(0);

    let mut forward = PortForward {
        engine,
        listening: Vec::new(),
        state,
        remote_host: config.remote_host,
    };
    for (f, listener) in listeners {
        forward.serve::<L>(f, listener)?;
    }
    Ok(forward)
}

enum Bound {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

// Binds every forward: the explicit address, or 127.0.0.1 plus a best-effort [::1].
fn bind_all(forwards: &[Forward]) -> Result<Vec<(Forward, Bound)>, ForwardError> {
    let mut bound = Vec::new();
    for forward in forwards {
        let addr = SocketAddr::new(forward.effective_bind(), forward.local);
        bound.push((*forward, bind_one(forward.protocol, addr)?));
        if forward.bind.is_none() {
            let v6 = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), forward.local);
            match bind_one(forward.protocol, v6) {
                Ok(b) => bound.push((*forward, b)),
                Err(e) => tracing::info!("{e} (IPv4 loopback still serves this forward)"),
            }
        }
    }
    Ok(bound)
}

fn bind_one(protocol: Protocol, addr: SocketAddr) -> Result<Bound, ForwardError> {
    let err = |source| ForwardError::Listen {
        protocol,
        addr,
        source,
    };
    let domain = socket2::Domain::for_address(addr);
    let bound = match protocol {
        Protocol::Tcp => {
            let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).map_err(err)?;
            s.set_reuse_address(true).map_err(err)?;
            if addr.is_ipv6() {
                s.set_only_v6(true).map_err(err)?;
            }
            s.bind(&addr.into()).map_err(err)?;
            s.listen(LISTEN_BACKLOG).map_err(err)?;
            s.set_nonblocking(true).map_err(err)?;
            Bound::Tcp(s.into())
        }
        Protocol::Udp => {
            let s = socket2::Socket::new(domain, socket2::Type::DGRAM, None).map_err(err)?;
            if addr.is_ipv6() {
                s.set_only_v6(true).map_err(err)?;
            }
            s.bind(&addr.into()).map_err(err)?;
            s.set_nonblocking(true).map_err(err)?;
            Bound::Udp(s.into())
        }
    };
    Ok(bound)
}

struct ClientState {
    ready: Cell<bool>,
    ready_changed: Notify,
    started: std::time::Instant,
    warned: Cell<bool>,
    last_nudge: Cell<Option<std::time::Instant>>,
    connecting: RefCell<Vec<(SocketHandle, std::time::Instant)>>,
    ports: RefCell<Ports>,
}

impl ClientState {
    fn new() -> Self {
        ClientState {
            ready: Cell::new(false),
            ready_changed: Notify::new(),
            started: std::time::Instant::now(),
            warned: Cell::new(false),
            last_nudge: Cell::new(None),
            connecting: RefCell::new(Vec::new()),
            ports: RefCell::new(Ports::starting_at_random()),
        }
    }

    // A flow whose SYN went unanswered for a second may be talking to a restarted agent that
    // lost our session: start a new handshake rather than wait for WireGuard's own timers.
    fn nudge_stalled(&self, engine: &Engine) {
        let now = std::time::Instant::now();
        let mut core = engine.core.borrow_mut();
        let Some(tunnel) = core.tunnels.get_mut(0) else {
            return;
        };
        let mut connecting = self.connecting.borrow_mut();
        connecting.retain(|(h, _)| tunnel_has_syn_sent(tunnel, *h));
        let stalled = connecting
            .iter()
            .any(|(_, at)| now.duration_since(*at) > STALLED_CONNECT);
        let recent = self
            .last_nudge
            .get()
            .is_some_and(|t| now.duration_since(t) < NUDGE_INTERVAL);
        if stalled && !recent {
            self.last_nudge.set(Some(now));
            tracing::debug!("a flow is not answered; starting a new handshake");
            tunnel.force_handshake();
        }
    }
}

fn tunnel_has_syn_sent(tunnel: &mut Tunnel, handle: SocketHandle) -> bool {
    tunnel.has_socket(handle) && tunnel.tcp(handle).state() == State::SynSent
}

impl Ingress for ClientState {
    fn inspect(&self, _engine: &Rc<Engine>, _t: usize) {}

    fn tick(&self, engine: &Rc<Engine>) {
        let handshaken = engine
            .core
            .borrow()
            .tunnels
            .first()
            .is_some_and(|t| t.session().time_since_handshake().is_some());
        if handshaken && !self.ready.replace(true) {
            self.ready_changed.notify_waiters();
        }
        if !handshaken && !self.warned.get() && self.started.elapsed() > HANDSHAKE_WARNING {
            self.warned.set(true);
            tracing::warn!(
                "no handshake with the agent after {} s: check that it runs, its endpoint, and that its public key and our key are the ones it expects; still trying",
                HANDSHAKE_WARNING.as_secs()
            );
        }
        self.nudge_stalled(engine);
    }
}

async fn accept_tcp<L: LocalIo>(
    engine: Rc<Engine>,
    state: Rc<ClientState>,
    listener: L::Listener,
    remote: SocketAddr,
) {
    loop {
        let stream = match L::accept(&listener).await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(port) = state.ports.borrow_mut().allocate() else {
            tracing::warn!("no free tunnel port for a new flow; connection closed");
            continue;
        };
        let handle = {
            let mut core = engine.core.borrow_mut();
            let Some(tunnel) = core.tunnels.get_mut(0) else {
                return;
            };
            let handle = tunnel.add_tcp();
            if let Err(e) = tunnel.connect(handle, remote, port) {
                tracing::warn!(error = %e, %remote, "cannot open a flow");
                tunnel.remove(handle);
                state.ports.borrow_mut().release(port);
                continue;
            }
            handle
        };
        state
            .connecting
            .borrow_mut()
            .push((handle, std::time::Instant::now()));
        engine.poke(0);
        let (engine, state) = (engine.clone(), state.clone());
        tokio::task::spawn_local(async move {
            run_tcp_flow(engine, 0, handle, stream).await;
            state.ports.borrow_mut().release(port);
        });
    }
}

// Reads local datagrams and hands each to its client's flow task, which alone owns the flow's
// stack socket (a removed socket's handle may be reused, so no other task may touch it).
async fn serve_udp(
    engine: Rc<Engine>,
    state: Rc<ClientState>,
    socket: Rc<tokio::net::UdpSocket>,
    remote: SocketAddr,
) {
    let flows: Rc<RefCell<HashMap<SocketAddr, Sender>>> = Rc::default();
    let mut buf = datagram_buffer();
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!(error = %e, "local UDP receive failed");
                continue;
            }
        };
        let existing = flows.borrow().get(&client).cloned();
        let sender = match existing {
            Some(sender) => sender,
            None => {
                let Some(flow) = ClientUdpFlow::open(&engine, &state) else {
                    continue;
                };
                let (tx, rx) = tokio::sync::mpsc::channel(UDP_FLOW_QUEUE);
                flows.borrow_mut().insert(client, tx.clone());
                let flow = run_udp_flow(
                    engine.clone(),
                    state.clone(),
                    socket.clone(),
                    client,
                    remote,
                    flow,
                    rx,
                );
                let flows = flows.clone();
                tokio::task::spawn_local(async move {
                    flow.await;
                    flows.borrow_mut().remove(&client);
                });
                tx
            }
        };
        // Waits while the flow's queue is full: backpressure onto the local socket. A flow that
        // just expired refuses; the next datagram from that client opens a new one.
        if sender.send(buf[..n].to_vec()).await.is_err() {
            flows.borrow_mut().remove(&client);
            tracing::debug!(%client, "datagram arrived as its flow expired; dropped");
        }
    }
}

type Sender = tokio::sync::mpsc::Sender<Vec<u8>>;

struct ClientUdpFlow {
    handle: SocketHandle,
    port: u16,
}

impl ClientUdpFlow {
    fn open(engine: &Engine, state: &ClientState) -> Option<Self> {
        let port = state.ports.borrow_mut().allocate()?;
        let mut core = engine.core.borrow_mut();
        let tunnel = core.tunnels.get_mut(0)?;
        let handle = tunnel.add_udp();
        if tunnel.udp(handle).bind(port).is_err() {
            tunnel.remove(handle);
            state.ports.borrow_mut().release(port);
            return None;
        }
        Some(ClientUdpFlow { handle, port })
    }
}

// Carries one client's datagrams both ways until it is idle for UDP_IDLE_S.
async fn run_udp_flow(
    engine: Rc<Engine>,
    state: Rc<ClientState>,
    socket: Rc<tokio::net::UdpSocket>,
    client: SocketAddr,
    remote: SocketAddr,
    flow: ClientUdpFlow,
    mut outgoing: tokio::sync::mpsc::Receiver<Vec<u8>>,
) {
    let activity = Activity::new(Duration::from_secs(UDP_IDLE_S));
    let remote = crate::tunnel::to_endpoint(remote);
    let mut buf = datagram_buffer();
    loop {
        tokio::select! {
            datagram = outgoing.recv() => {
                let Some(datagram) = datagram else { break };
                activity.touch();
                if !send_stack(&engine, 0, flow.handle, &datagram, remote.into()).await {
                    tracing::warn!(len = datagram.len(), "datagram too large for the tunnel socket; dropped");
                }
            }
            got = recv_stack(&engine, 0, flow.handle, &mut buf) => {
                let Some((n, _)) = got else { break };
                engine.poke(0);
                activity.touch();
                if let Err(e) = socket.send_to(&buf[..n], client).await {
                    tracing::debug!(error = %e, %client, "local UDP send failed");
                }
            }
            () = activity.expired() => break,
        }
    }
    outgoing.close();
    if let Some(tunnel) = engine.core.borrow_mut().tunnels.get_mut(0) {
        tunnel.remove(flow.handle);
    }
    state.ports.borrow_mut().release(flow.port);
}

/// Source ports for flows inside the tunnel, from the dynamic range.
#[derive(Default)]
struct Ports {
    next: u16,
    used: HashSet<u16>,
}

impl Ports {
    // Starts at a random port, so that successive processes with the same key and address do
    // not reuse the 4-tuples of connections a previous one may have left open at the workspace.
    fn starting_at_random() -> Self {
        let mut bytes = [0u8; 2];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
        let span = LAST_PORT - FIRST_PORT;
        Ports {
            next: FIRST_PORT + u16::from_le_bytes(bytes) % span,
            used: HashSet::new(),
        }
    }

    fn allocate(&mut self) -> Option<u16> {
        let span = u32::from(LAST_PORT - FIRST_PORT) + 1;
        for _ in 0..span {
            if self.next < FIRST_PORT || self.next == u16::MAX {
                self.next = FIRST_PORT;
            } else {
                self.next += 1;
            }
            if self.used.insert(self.next) {
                return Some(self.next);
            }
        }
        None
    }

    fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }
}

const FIRST_PORT: u16 = 49_152;
const LAST_PORT: u16 = 65_535;
const LISTEN_BACKLOG: i32 = 1024;
const HANDSHAKE_WARNING: Duration = Duration::from_secs(5);
const STALLED_CONNECT: Duration = Duration::from_secs(1);
const NUDGE_INTERVAL: Duration = Duration::from_secs(2);
// Datagrams queued per UDP flow before the local socket's reader waits.
const UDP_FLOW_QUEUE: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_cycle_through_the_dynamic_range_without_reuse() {
        let mut ports = Ports::default();
        let first = ports.allocate().unwrap();
        assert_eq!(first, FIRST_PORT);
        let mut seen = HashSet::from([first]);
        while let Some(p) = ports.allocate() {
            assert!(seen.insert(p), "port {p} given twice");
        }
        assert_eq!(seen.len(), usize::from(LAST_PORT - FIRST_PORT) + 1);
        ports.release(50_000);
        assert_eq!(ports.allocate(), Some(50_000));
    }
}
