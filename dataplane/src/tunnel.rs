//! The protocol core of one tunnel: a WireGuard session and the userspace TCP/IP stack behind it.
//!
//! [`Tunnel`] does no I/O and reads no clock. Drive it like this, from one thread:
//! 1. [`Tunnel::handle_datagram`] for each datagram from the peer; decrypted packets queue up
//!    inside (bounded by the batch the caller received), and may be inspected with
//!    [`Tunnel::pending_packets`] before the stack sees them;
//! 2. [`Tunnel::poll`] after a batch of datagrams, after a flow changed a socket, or when the
//!    deadline from [`Tunnel::poll_at`] is reached: the stack takes queued packets in, and every
//!    packet it sends is encrypted straight into the [`Outbox`];
//! 3. [`Tunnel::update_timers`] every [`TIMER_TICK_MS`](ferry_crypto::session::TIMER_TICK_MS);
//! 4. send what [`Tunnel::outbox`] holds. When the outbox is full the stack keeps its segments
//!    (TCP backpressure) until the next poll after it drains.
//!
//! `now` is the time since an arbitrary fixed start and must never go backwards.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use ferry_crypto::session::{Output, Session, SessionError, TimerEvent};
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv6Address};

use crate::outbox::Outbox;

/// Counters of what a tunnel dropped or refused, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TunnelStats {
    /// Datagrams boringtun refused (garbage, replays, wrong keys, stale sessions).
    pub bad_datagrams: u64,
    /// Inner packets received and handed to the stack.
    pub packets_in: u64,
    /// Inner packets sent.
    pub packets_out: u64,
}

/// Addresses of one end of the tunnel.
#[derive(Debug, Clone, Copy)]
pub struct TunnelAddrs {
    /// This end's IPv4 address inside the tunnel.
    pub v4: std::net::Ipv4Addr,
    /// This end's IPv6 address inside the tunnel.
    pub v6: std::net::Ipv6Addr,
}

/// One peer's session and TCP/IP stack. See the module documentation for how to drive it.
pub struct Tunnel {
    iface: Interface,
    sockets: SocketSet<'static>,
    device: TunnelDevice,
    endpoint: Option<SocketAddr>,
    stats: TunnelStats,
    tcp_sockets: usize,
}

impl Tunnel {
    /// Creates a tunnel whose stack owns `addrs`. With `any_ip` (the agent) it also accepts
    /// packets addressed to any other address, so that peers may use any address for it.
    pub fn new(
        session: Session,
        addrs: TunnelAddrs,
        mtu: usize,
        any_ip: bool,
        now: Instant,
    ) -> Self {
        let mut device = TunnelDevice::new(session, mtu);
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = random_seed();
        let mut iface = Interface::new(config, &mut device, now);
        let v4: Ipv4Address = addrs.v4;
        let v6: Ipv6Address = addrs.v6;
        iface.update_ip_addrs(|ips| {
            // Two addresses always fit: IFACE_MAX_ADDR_COUNT is 2.
            let _ = ips.push(IpCidr::new(IpAddress::Ipv4(v4), 32));
            let _ = ips.push(IpCidr::new(IpAddress::Ipv6(v6), 128));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(v4);
        let _ = iface.routes_mut().add_default_ipv6_route(v6);
        iface.set_any_ip(any_ip);
        Tunnel {
            iface,
            sockets: SocketSet::new(vec![]),
            device,
            endpoint: None,
            stats: TunnelStats::default(),
            tcp_sockets: 0,
        }
    }

    /// The peer's current endpoint: configured, or learned from its last authentic datagram.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// Sets the peer's endpoint (from configuration).
    pub fn set_endpoint(&mut self, endpoint: SocketAddr) {
        self.endpoint = Some(endpoint);
    }

    /// The session, for handshake state.
    pub fn session(&self) -> &Session {
        &self.device.session
    }

    /// What was dropped and carried so far.
    pub fn stats(&self) -> TunnelStats {
        TunnelStats {
            packets_out: self.device.packets_out,
            ..self.stats
        }
    }

    /// Decrypts one datagram from `src`. Handshake replies go to the outbox; inner packets queue
    /// for the stack. A datagram that decrypts moves the peer's endpoint to `src` (roaming).
    pub fn handle_datagram(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), SessionError> {
        let device = &mut self.device;
        let mut slot = device.free.pop().unwrap_or_default();
        slot.resize(datagram.len().max(MIN_SLOT_BYTES), 0);
        let mut packet_len = 0;
        let mut authentic = false;
        let outbox = &mut device.outbox;
        let result =
            device
                .session
                .handle_datagram(src.ip(), datagram, &mut slot, |out| match out {
                    Output::Network(d) => {
                        authentic = true;
                        outbox.push(d);
                    }
                    Output::Tunnel(p) => {
                        authentic = true;
                        packet_len = p.len();
                    }
                });
        if result.is_err() {
            self.stats.bad_datagrams += 1;
        }
        if authentic || datagram_is_keepalive(&result, datagram) {
            self.endpoint = Some(src);
        }
        if packet_len > 0 {
            self.stats.packets_in += 1;
            device.rx.push_back((slot, packet_len));
        } else {
            device.free.push(slot);
        }
        result
    }

    /// The decrypted packets not yet handed to the stack, for inspection (the agent looks for
    /// new flows here).
    pub fn pending_packets(&self) -> impl Iterator<Item = &[u8]> {
        self.device.rx.iter().map(|(buf, len)| &buf[..*len])
    }

    /// Runs the stack: ingress of every pending packet, then egress until sockets have nothing
    /// to send or the outbox is full. Returns whether any socket's state may have changed.
    pub fn poll(&mut self, now: Instant) -> bool {
        self.iface.poll(now, &mut self.device, &mut self.sockets) == PollResult::SocketStateChanged
    }

    /// When [`Tunnel::poll`] must run next even if nothing else happens.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        self.iface.poll_at(now, &self.sockets)
    }

    /// Runs WireGuard's timers; handshake retries and keepalives go to the outbox.
    pub fn update_timers(&mut self) -> TimerEvent {
        let device = &mut self.device;
        let outbox = &mut device.outbox;
        device.session.update_timers(&mut device.scratch, |out| {
            if let Output::Network(d) = out {
                outbox.push(d);
            }
        })
    }

    /// Sends a handshake initiation now (a new flow found the session silent).
    pub fn force_handshake(&mut self) {
        let device = &mut self.device;
        if let Some(len) = device.session.force_handshake(&mut device.scratch) {
            device.outbox.push(&device.scratch[..len]);
        }
    }

    /// Datagrams waiting for the network.
    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.device.outbox
    }

    /// Adds a TCP socket with ferry's buffer sizes and options. Each direction gets
    /// [`TCP_BUFFER_BYTES`] while few flows are open; with many, the tunnel's
    /// [`TCP_MEMORY_BUDGET_BYTES`] is shared out, down to [`TCP_MIN_BUFFER_BYTES`].
    pub fn add_tcp(&mut self) -> SocketHandle {
        self.tcp_sockets += 1;
        let share = TCP_MEMORY_BUDGET_BYTES / (2 * self.tcp_sockets);
        let size = share.clamp(TCP_MIN_BUFFER_BYTES, TCP_BUFFER_BYTES);
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; size]),
            tcp::SocketBuffer::new(vec![0; size]),
        );
        socket.set_ack_delay(None);
        socket.set_nagle_enabled(false);
        socket.set_keep_alive(Some(Duration::from_secs(TCP_KEEPALIVE_S)));
        socket.set_timeout(Some(Duration::from_secs(TCP_TIMEOUT_S)));
        self.sockets.add(socket)
    }

    /// Adds a UDP socket able to hold a few datagrams of the full UDP size.
    pub fn add_udp(&mut self) -> SocketHandle {
        let buffer = || {
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
                vec![0; UDP_BUFFER_BYTES],
            )
        };
        self.sockets.add(udp::Socket::new(buffer(), buffer()))
    }

    /// A TCP socket by handle.
    pub fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// A UDP socket by handle.
    pub fn udp(&mut self, handle: SocketHandle) -> &mut udp::Socket<'static> {
        self.sockets.get_mut::<udp::Socket>(handle)
    }

    /// Starts a TCP connection from `local_port` to `remote` on socket `handle`.
    pub fn connect(
        &mut self,
        handle: SocketHandle,
        remote: SocketAddr,
        local_port: u16,
    ) -> Result<(), tcp::ConnectError> {
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(handle)
            .connect(cx, to_endpoint(remote), local_port)
    }

    /// How many TCP flows have a socket.
    pub fn tcp_flows(&self) -> usize {
        self.tcp_sockets
    }

    /// Aborts every TCP socket: each sends a reset at the next poll.
    pub fn abort_all_tcp(&mut self) {
        for (_, socket) in self.sockets.iter_mut() {
            if let smoltcp::socket::Socket::Tcp(tcp) = socket {
                tcp.abort();
            }
        }
    }

    /// Whether a socket is still in the set.
    pub fn has_socket(&self, handle: SocketHandle) -> bool {
        self.sockets.iter().any(|(h, _)| h == handle)
    }

    /// Removes a socket whose flow ended.
    pub fn remove(&mut self, handle: SocketHandle) {
        if let smoltcp::socket::Socket::Tcp(_) = self.sockets.remove(handle) {
            self.tcp_sockets = self.tcp_sockets.saturating_sub(1);
        }
    }

    /// Drops every packet and datagram in flight (the tunnel is shutting down).
    pub fn clear(&mut self) {
        self.device.outbox.clear();
        self.device.rx.clear();
    }
}

/// The smoltcp device of a tunnel: decrypted packets in, encrypted datagrams out.
struct TunnelDevice {
    session: Session,
    rx: VecDeque<(Vec<u8>, usize)>,
    free: Vec<Vec<u8>>,
    outbox: Outbox,
    scratch: Vec<u8>,
    mtu: usize,
    packets_out: u64,
}

impl TunnelDevice {
    fn new(session: Session, mtu: usize) -> Self {
        let buffer_len = Session::buffer_len(mtu.max(MAX_IP_PACKET_BYTES));
        TunnelDevice {
            session,
            rx: VecDeque::new(),
            free: Vec::new(),
            outbox: Outbox::new(OUTBOX_BATCHES),
            scratch: vec![0; buffer_len],
            mtu,
            packets_out: 0,
        }
    }
}

impl phy::Device for TunnelDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        let rx = RxToken {
            packet,
            free: &mut self.free,
        };
        let tx = TxToken {
            session: &mut self.session,
            outbox: &mut self.outbox,
            scratch: &mut self.scratch,
            sent: &mut self.packets_out,
        };
        Some((rx, tx))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if !self.outbox.has_room(Session::buffer_len(self.mtu)) {
            return None;
        }
        Some(TxToken {
            session: &mut self.session,
            outbox: &mut self.outbox,
            scratch: &mut self.scratch,
            sent: &mut self.packets_out,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // WireGuard authenticated every inner packet: verifying checksums again buys nothing.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        checksum.udp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
        checksum.icmpv6 = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}

struct RxToken<'a> {
    packet: (Vec<u8>, usize),
    free: &'a mut Vec<Vec<u8>>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let (buf, len) = self.packet;
        let result = f(&buf[..len]);
        if self.free.len() < FREE_PACKET_BUFFERS {
            self.free.push(buf);
        }
        result
    }
}

struct TxToken<'a> {
    session: &'a mut Session,
    outbox: &'a mut Outbox,
    scratch: &'a mut Vec<u8>,
    sent: &'a mut u64,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(self.scratch.len());
        let result = f(&mut self.scratch[..len]);
        let packet = &self.scratch[..len];
        let session = self.session;
        self.outbox.push_with(Session::buffer_len(len), |dst| {
            session.encapsulate(packet, dst).ok().flatten()
        });
        *self.sent += 1;
        result
    }
}

/// Converts a socket address to smoltcp's endpoint.
pub fn to_endpoint(addr: SocketAddr) -> smoltcp::wire::IpEndpoint {
    smoltcp::wire::IpEndpoint::new(IpAddress::from(addr.ip()), addr.port())
}

/// Converts smoltcp's endpoint to a socket address.
pub fn from_endpoint(ep: smoltcp::wire::IpEndpoint) -> SocketAddr {
    SocketAddr::new(IpAddr::from(ep.addr), ep.port)
}

// A keepalive is an authentic, empty data message: it must also move the endpoint. boringtun
// reports it as "done", so it is recognised by its length (a 32-byte data message).
fn datagram_is_keepalive(result: &Result<(), SessionError>, datagram: &[u8]) -> bool {
    result.is_ok() && datagram.len() == KEEPALIVE_BYTES && datagram.first() == Some(&4)
}

fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    u64::from_le_bytes(seed)
}

/// Each direction of each TCP flow buffers at most this much; it bounds the TCP window (smoltcp
/// scales the window to the receive buffer) and so the throughput of one flow.
pub const TCP_BUFFER_BYTES: usize = 1 << 20;
/// The TCP buffer memory one tunnel aims to stay within when many flows are open.
pub const TCP_MEMORY_BUDGET_BYTES: usize = 64 << 20;
/// The smallest TCP buffer a flow gets, however many flows are open.
pub const TCP_MIN_BUFFER_BYTES: usize = 16 << 10;
/// A TCP flow whose peer is silent this long (connect, data or keepalive) is aborted.
pub const TCP_TIMEOUT_S: u64 = 60;
const TCP_KEEPALIVE_S: u64 = 20;
const UDP_PACKETS: usize = 64;
const UDP_BUFFER_BYTES: usize = 256 * 1024;
// The largest IP packet: reassembled datagrams reach the stack whole.
const MAX_IP_PACKET_BYTES: usize = 65_535;
const OUTBOX_BATCHES: usize = 16;
const FREE_PACKET_BUFFERS: usize = 512;
const KEEPALIVE_BYTES: usize = 32;
// Handshake replies are written into the same buffer: it holds at least an initiation.
const MIN_SLOT_BYTES: usize = 256;
