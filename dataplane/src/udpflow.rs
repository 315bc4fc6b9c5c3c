//! UDP flows: one local socket per remote client, idle timeouts, and the stack-side helpers.
//!
//! Datagrams travel whole: the tunnel's stack fragments and reassembles inner IP packets, so a
//! datagram of up to 65,507 bytes (the IPv4 maximum) arrives in one piece or not at all.

use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp::{SendError, UdpMetadata};

use crate::engine::Engine;

/// Waits for a datagram on stack socket `handle` and copies it into `buf`.
pub async fn recv_stack(
    engine: &Engine,
    t: usize,
    handle: SocketHandle,
    buf: &mut [u8],
) -> Option<(usize, UdpMetadata)> {
    poll_fn(|cx| {
        let mut core = engine.core.borrow_mut();
        let Some(tunnel) = core.tunnels.get_mut(t) else {
            return Poll::Ready(None);
        };
        let socket = tunnel.udp(handle);
        if !socket.is_open() {
            return Poll::Ready(None);
        }
        match socket.recv_slice(buf) {
            Ok(got) => Poll::Ready(Some(got)),
            Err(_) => {
                socket.register_recv_waker(cx.waker());
                Poll::Pending
            }
        }
    })
    .await
}

/// Sends one datagram on stack socket `handle`, waiting while its buffer is full. Returns false
/// if the socket is closed or the datagram can never fit.
pub async fn send_stack(
    engine: &Engine,
    t: usize,
    handle: SocketHandle,
    data: &[u8],
    meta: UdpMetadata,
) -> bool {
    let sent = poll_fn(|cx| {
        let mut core = engine.core.borrow_mut();
        let Some(tunnel) = core.tunnels.get_mut(t) else {
            return Poll::Ready(false);
        };
        let socket = tunnel.udp(handle);
        if data.len() > socket.payload_send_capacity() {
            return Poll::Ready(false);
        }
        match socket.send_slice(data, meta) {
            Ok(()) => Poll::Ready(true),
            Err(SendError::BufferFull) => {
                socket.register_send_waker(cx.waker());
                Poll::Pending
            }
            Err(_) => Poll::Ready(false),
        }
    })
    .await;
    engine.poke(t);
    sent
}

/// When a flow was last active, for its idle timeout.
pub struct Activity {
    last: std::cell::Cell<tokio::time::Instant>,
    idle: Duration,
}

impl Activity {
    /// Starts the clock for a flow that ends after `idle` without traffic.
    pub fn new(idle: Duration) -> Rc<Self> {
        Rc::new(Activity {
            last: std::cell::Cell::new(tokio::time::Instant::now()),
            idle,
        })
    }

    /// Records traffic now.
    pub fn touch(&self) {
        self.last.set(tokio::time::Instant::now());
    }

    /// Resolves when the flow has been idle for its timeout.
    pub async fn expired(&self) {
        loop {
            let deadline = self.last.get() + self.idle;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A UDP datagram buffer: the largest UDP payload plus room to detect truncation.
pub fn datagram_buffer() -> Vec<u8> {
    vec![0; MAX_DATAGRAM_BYTES + 1]
}

/// The largest UDP payload carried.
pub const MAX_DATAGRAM_BYTES: usize = 65_535;
/// How long a UDP flow lives without traffic, in seconds.
pub const UDP_IDLE_S: u64 = 120;
