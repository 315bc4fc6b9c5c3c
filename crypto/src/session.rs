//! One WireGuard tunnel to one peer, driven without I/O.
//!
//! [`Session`] wraps boringtun's `Tunn`. Feed it datagrams from the network with
//! [`Session::handle_datagram`] and inner IP packets with [`Session::encapsulate`]; it returns
//! what to send, through a callback, so that the caller owns every buffer and every socket.
//! boringtun's rule that a call returning a network datagram must be repeated until it says
//! "done" (so that packets queued during a handshake flush) is handled here: callers never see it.
//!
//! boringtun reads the monotonic clock itself; callers must call [`Session::update_timers`]
//! about every [`TIMER_TICK_MS`] milliseconds so that handshakes, rekeys and keepalives happen.

use std::net::IpAddr;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};

use crate::keys::{PresharedKey, PrivateKey, PublicKey};

/// What a session asks its caller to do with the bytes it produced.
#[derive(Debug)]
pub enum Output<'a> {
    /// A datagram to send to the peer's endpoint.
    Network(&'a [u8]),
    /// A decrypted inner IP packet (IPv4 or IPv6) for the local TCP/IP stack.
    Tunnel(&'a [u8]),
}

/// What a timer tick found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerEvent {
    /// Nothing beyond any datagrams already handed to the callback.
    Idle,
    /// No handshake succeeded for too long: the session is gone. A side that has traffic to
    /// send should call [`Session::force_handshake`].
    Expired,
}

/// Why a datagram or packet was refused. Peer misbehaviour and local misuse are kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The datagram is not a valid WireGuard message for this session: garbage, a replay, a
    /// wrong key or a stale index. It was dropped; nothing needs to be done.
    #[error("dropped a datagram from the peer: {0}")]
    Peer(&'static str),
    /// The handshake rate limit is exceeded: the datagram was dropped.
    #[error("handshake rate limit exceeded")]
    UnderLoad,
    /// The caller passed a destination buffer shorter than [`Session::buffer_len`].
    #[error("destination buffer of {len} bytes is shorter than the {need} bytes required")]
    BufferTooSmall { len: usize, need: usize },
}

/// A WireGuard session with one peer.
///
/// Drive it with: [`Session::encapsulate`] for every inner packet to send,
/// [`Session::handle_datagram`] for every datagram received from the peer, and
/// [`Session::update_timers`] every [`TIMER_TICK_MS`]. Every call writes into a caller-owned
/// buffer at least [`Session::buffer_len`] bytes long and reports results through a callback.
pub struct Session {
    tunn: Tunn,
    peer: PublicKey,
}

impl Session {
    /// Creates a session. `index` (below 2^24) tags this session's receiver indices so that a
    /// [`PeerIndex`] can route data datagrams to it.
    pub fn new(
        local: &PrivateKey,
        peer: PublicKey,
        preshared: Option<&PresharedKey>,
        persistent_keepalive_s: Option<u16>,
        index: u32,
    ) -> Self {
        let tunn = Tunn::new(
            local.to_static_secret(),
            peer.to_x25519(),
            preshared.map(|k| *k.as_bytes()),
            persistent_keepalive_s.filter(|s| *s > 0),
            index & INDEX_MASK,
            None,
        );
        Session { tunn, peer }
    }

    /// The peer's public key.
    pub fn peer(&self) -> &PublicKey {
        &self.peer
    }

    /// The destination buffer length every call needs for an inner packet of `mtu` bytes.
    pub fn buffer_len(mtu: usize) -> usize {
        (mtu + DATA_OVERHEAD_BYTES).max(HANDSHAKE_INIT_BYTES)
    }

    /// Encrypts one inner IP packet into `dst` and returns the datagram length to send.
    ///
    /// Returns `Ok(None)` when no session is established yet: boringtun then keeps the packet
    /// (up to 256 of them) and, unless a handshake is already under way, `dst` receives a
    /// handshake initiation which is reported as `Ok(Some(len))` too.
    pub fn encapsulate(
        &mut self,
        packet: &[u8],
        dst: &mut [u8],
    ) -> Result<Option<usize>, SessionError> {
        check_len(dst, packet.len() + DATA_OVERHEAD_BYTES)?;
        match self.tunn.encapsulate(packet, dst) {
            TunnResult::WriteToNetwork(out) => Ok(Some(out.len())),
            TunnResult::Done => Ok(None),
            TunnResult::Err(e) => Err(SessionError::Peer(describe(&e))),
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => Ok(None),
        }
    }

    /// Handles one datagram from the peer at `src`, reporting every output in order: handshake
    /// replies, packets that were queued during the handshake, and the decrypted inner packet.
    pub fn handle_datagram(
        &mut self,
        src: IpAddr,
        datagram: &[u8],
        dst: &mut [u8],
        mut sink: impl FnMut(Output<'_>),
    ) -> Result<(), SessionError> {
        check_len(dst, datagram.len().max(HANDSHAKE_INIT_BYTES))?;
        let first = self.tunn.decapsulate(Some(src), datagram, dst);
        let flush = matches!(first, TunnResult::WriteToNetwork(_));
        report(first, &mut sink)?;
        if flush {
            self.flush_queued(dst, &mut sink);
        }
        Ok(())
    }

    /// Runs WireGuard's timers: handshake retries, rekeying, keepalives and expiry.
    pub fn update_timers(
        &mut self,
        dst: &mut [u8],
        mut sink: impl FnMut(Output<'_>),
    ) -> TimerEvent {
        if dst.len() < HANDSHAKE_INIT_BYTES {
            return TimerEvent::Idle;
        }
        match self.tunn.update_timers(dst) {
            TunnResult::WriteToNetwork(out) => sink(Output::Network(out)),
            TunnResult::Err(WireGuardError::ConnectionExpired) => return TimerEvent::Expired,
            _ => {}
        }
        TimerEvent::Idle
    }

    /// Starts a new handshake now, even if one is in progress. Returns the initiation length.
    pub fn force_handshake(&mut self, dst: &mut [u8]) -> Option<usize> {
        if dst.len() < HANDSHAKE_INIT_BYTES {
            return None;
        }
        match self.tunn.format_handshake_initiation(dst, true) {
            TunnResult::WriteToNetwork(out) => Some(out.len()),
            _ => None,
        }
    }

    /// Time since the last completed handshake, if any handshake completed.
    pub fn time_since_handshake(&self) -> Option<std::time::Duration> {
        self.tunn.time_since_last_handshake()
    }

    // Repeats the empty decapsulate call until boringtun has no queued packet left.
    fn flush_queued(&mut self, dst: &mut [u8], sink: &mut impl FnMut(Output<'_>)) {
        for _ in 0..MAX_QUEUED_PACKETS {
            match self.tunn.decapsulate(None, &[], dst) {
                TunnResult::WriteToNetwork(out) => sink(Output::Network(out)),
                _ => return,
            }
        }
    }
}

/// Routes datagrams arriving on one socket to the session they belong to, for a responder
/// (the agent) that serves several peers. Session `i` must be created with index `i`.
pub struct PeerIndex {
    local: PrivateKey,
    local_public: PublicKey,
    peers: Vec<PublicKey>,
    // Checks an initiation's MAC1 (keyed by our public key) before any Diffie-Hellman, so
    // that forged initiations cost a hash, not a scalar multiplication. Its rate limit is
    // never reached: each session applies WireGuard's own limit and cookies.
    mac1: RateLimiter,
}

/// Where a datagram belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To the session created with this index.
    Peer(usize),
    /// A valid handshake from a key that is not among the configured peers.
    UnknownPeer(PublicKey),
    /// Not a WireGuard message we can attribute (garbage, truncated, stale index).
    Invalid,
}

impl PeerIndex {
    /// Creates a router for `local`'s sessions with `peers`, in index order.
    pub fn new(local: &PrivateKey, peers: Vec<PublicKey>) -> Self {
        let local_public = local.public_key();
        let mac1 = RateLimiter::new(&local_public.to_x25519(), u64::MAX);
        PeerIndex {
            local: local.clone(),
            local_public,
            peers,
            mac1,
        }
    }

    /// Finds the session a datagram belongs to. A handshake initiation with a valid MAC1 costs
    /// one Diffie-Hellman to find the initiator's key; other messages carry our index.
    pub fn route(&self, datagram: &[u8]) -> Route {
        let receiver = match Tunn::parse_incoming_packet(datagram) {
            Ok(Packet::HandshakeInit(init)) => return self.route_initiation(datagram, &init),
            Ok(Packet::HandshakeResponse(p)) => p.receiver_idx,
            Ok(Packet::PacketCookieReply(p)) => p.receiver_idx,
            Ok(Packet::PacketData(p)) => p.receiver_idx,
            Err(_) => return Route::Invalid,
        };
        let peer = (receiver >> 8) as usize;
        if peer < self.peers.len() {
            Route::Peer(peer)
        } else {
            Route::Invalid
        }
    }

    fn route_initiation(
        &self,
        datagram: &[u8],
        init: &boringtun::noise::HandshakeInit<'_>,
    ) -> Route {
        let mut unused = [0u8; COOKIE_REPLY_BYTES];
        if self
            .mac1
            .verify_packet(None, datagram, &mut unused)
            .is_err()
        {
            return Route::Invalid;
        }
        let secret = self.local.to_static_secret();
        let Ok(half) = parse_handshake_anon(&secret, &self.local_public.to_x25519(), init) else {
            return Route::Invalid;
        };
        let key = PublicKey::from_bytes(half.peer_static_public);
        match self.peers.iter().position(|p| *p == key) {
            Some(i) => Route::Peer(i),
            None => Route::UnknownPeer(key),
        }
    }
}

fn report(result: TunnResult<'_>, sink: &mut impl FnMut(Output<'_>)) -> Result<(), SessionError> {
    match result {
        TunnResult::Done => Ok(()),
        TunnResult::WriteToNetwork(out) => {
            sink(Output::Network(out));
            Ok(())
        }
        TunnResult::WriteToTunnelV4(out, _) | TunnResult::WriteToTunnelV6(out, _) => {
            // An empty packet is a keepalive: nothing for the stack.
            if !out.is_empty() {
                sink(Output::Tunnel(out));
            }
            Ok(())
        }
        TunnResult::Err(WireGuardError::UnderLoad) => Err(SessionError::UnderLoad),
        TunnResult::Err(e) => Err(SessionError::Peer(describe(&e))),
    }
}

fn describe(e: &WireGuardError) -> &'static str {
    match e {
        WireGuardError::InvalidMac | WireGuardError::InvalidAeadTag => {
            "authentication failed (wrong key or corrupted)"
        }
        WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => "replayed or too old",
        WireGuardError::WrongIndex | WireGuardError::NoCurrentSession => {
            "no session for it (stale or from a restarted peer)"
        }
        WireGuardError::InvalidTai64nTimestamp | WireGuardError::WrongTai64nTimestamp => {
            "replayed handshake"
        }
        WireGuardError::ConnectionExpired => "session expired",
        WireGuardError::UnderLoad => "handshake rate limit",
        _ => "malformed",
    }
}

fn check_len(dst: &[u8], need: usize) -> Result<(), SessionError> {
    let need = need.max(HANDSHAKE_INIT_BYTES);
    if dst.len() < need {
        return Err(SessionError::BufferTooSmall {
            len: dst.len(),
            need,
        });
    }
    Ok(())
}

/// How often [`Session::update_timers`] should run; boringtun's own device uses 250 ms.
pub const TIMER_TICK_MS: u64 = 250;

// WireGuard message sizes (the whitepaper's names): a data message adds a 16-byte header and a
// 16-byte Poly1305 tag; a handshake initiation is 148 bytes.
const DATA_OVERHEAD_BYTES: usize = 32;
const HANDSHAKE_INIT_BYTES: usize = 148;
// boringtun keeps at most this many packets while a handshake is under way.
const MAX_QUEUED_PACKETS: usize = 256;
const INDEX_MASK: u32 = 0x00ff_ffff;
const COOKIE_REPLY_BYTES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    fn initiation(from: &PrivateKey, to: &PublicKey) -> Vec<u8> {
        let mut session = Session::new(from, *to, None, None, 0);
        let mut dst = vec![0u8; 256];
        let len = session.force_handshake(&mut dst).unwrap();
        dst.truncate(len);
        dst
    }

    #[test]
    fn initiations_route_to_their_peer_or_are_refused() {
        let agent = PrivateKey::generate();
        let (a, b, stranger) = (
            PrivateKey::generate(),
            PrivateKey::generate(),
            PrivateKey::generate(),
        );
        let index = PeerIndex::new(&agent, vec![a.public_key(), b.public_key()]);
        let agent_public = agent.public_key();

        assert_eq!(index.route(&initiation(&b, &agent_public)), Route::Peer(1));
        assert_eq!(index.route(&initiation(&a, &agent_public)), Route::Peer(0));
        assert_eq!(
            index.route(&initiation(&stranger, &agent_public)),
            Route::UnknownPeer(stranger.public_key())
        );
        // Meant for another responder: MAC1 does not match our key.
        assert_eq!(
            index.route(&initiation(&a, &b.public_key())),
            Route::Invalid
        );
        let mut forged = initiation(&a, &agent_public);
        let mac1 = forged.len() - 32;
        forged[mac1] ^= 1;
        assert_eq!(index.route(&forged), Route::Invalid);
        assert_eq!(index.route(&[1, 0, 0, 0, 9]), Route::Invalid);
    }

    #[test]
    fn two_sessions_carry_a_packet_after_a_handshake() {
        let (a, b) = (PrivateKey::generate(), PrivateKey::generate());
        let mut sa = Session::new(&a, b.public_key(), None, None, 0);
        let mut sb = Session::new(&b, a.public_key(), None, None, 0);
        let src: IpAddr = [127, 0, 0, 1].into();
        let mut buf = vec![0u8; Session::buffer_len(1420)];
        let mut to_b = Vec::new();
        let mut packet = vec![0u8; 40];
        packet[..4].copy_from_slice(&[0x45, 0, 0, 40]);
        let len = sa.encapsulate(&packet, &mut buf).unwrap().unwrap();
        to_b.push(buf[..len].to_vec());
        // Shuttle datagrams until both sides are quiet; collect what reaches b's stack.
        let mut delivered = Vec::new();
        for _ in 0..4 {
            let mut to_a = Vec::new();
            for d in to_b.drain(..) {
                let _ = sb.handle_datagram(src, &d, &mut buf.clone(), |out| match out {
                    Output::Network(n) => to_a.push(n.to_vec()),
                    Output::Tunnel(p) => delivered.push(p.to_vec()),
                });
            }
            for d in to_a {
                let _ = sa.handle_datagram(src, &d, &mut buf.clone(), |out| {
                    if let Output::Network(n) = out {
                        to_b.push(n.to_vec());
                    }
                });
            }
        }
        assert_eq!(delivered, vec![packet]);
    }
}
