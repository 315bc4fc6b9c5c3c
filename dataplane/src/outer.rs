//! The tunnel's UDP socket, with segmentation and receive offload.
//!
//! Sends use `sendmsg` with `UDP_SEGMENT` (GSO): one system call carries a whole
//! [`Batch`] of equal-size datagrams. Receives use `recvmsg` with `UDP_GRO`:
//! one call returns up to 64 KiB of datagrams from one sender. A kernel without either offload
//! gets one datagram per call, found out at the first refusal and logged once.
//!
//! Readiness comes from tokio's reactor, which runs under both I/O backends. This is the one
//! module of the crate with `unsafe` code: every block calls a libc function on buffers that
//! outlive the call, and says so in a `SAFETY:` comment. No memory is lent to the kernel beyond
//! the duration of a call.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::outbox::Batch;
use crate::sys::set_int;

/// One received buffer: several datagrams of `segment` bytes from one sender (the last may be
/// shorter), or one datagram.
pub struct Received {
    buf: Vec<u8>,
    len: usize,
    segment: usize,
    from: SocketAddr,
}

impl Received {
    /// An empty buffer large enough for a coalesced receive.
    pub fn new() -> Self {
        Received {
            buf: vec![0; RECV_BYTES],
            len: 0,
            segment: 0,
            from: SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }

    /// The sender.
    pub fn from(&self) -> SocketAddr {
        self.from
    }

    /// The datagrams, one by one.
    /// Whether the last receive was an empty datagram.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        let segment = if self.segment == 0 {
            self.len.max(1)
        } else {
            self.segment
        };
        self.buf[..self.len].chunks(segment)
    }
}

impl Default for Received {
    fn default() -> Self {
        Self::new()
    }
}

/// The tunnel's UDP socket.
pub struct OuterSocket {
    fd: AsyncFd<UdpSocket>,
    gso: Cell<bool>,
}

impl OuterSocket {
    /// Binds to `addr` with large buffers and receive offload.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            let _ = socket.set_only_v6(false);
        }
        set_buffer_sizes(&socket);
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let udp: UdpSocket = socket.into();
        let _ = set_int(udp.as_raw_fd(), libc::SOL_UDP, UDP_GRO, 1);
        // SAFETY: `udp` owns its descriptor, which stays open and unchanged for as long as the
        // AsyncFd owns `udp`.
        let fd = unsafe {
            AsyncFd::register_with_interest(udp, Interest::READABLE.add(Interest::WRITABLE))
        }
        .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(OuterSocket {
            fd,
            gso: Cell::new(true),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }

    /// Waits for at least one datagram and receives it (and any coalesced with it).
    pub async fn recv(&self, into: &mut Received) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|s| recv_gro(s.get_ref(), into)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives without waiting; `Ok(false)` when nothing is queued.
    pub fn try_recv(&self, into: &mut Received) -> io::Result<bool> {
        match recv_gro(self.fd.get_ref(), into) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sends a batch without waiting. `Ok(false)` when the socket buffer is full: wait with
    /// [`OuterSocket::writable`] and call again.
    pub fn try_send(&self, batch: &Batch, to: SocketAddr) -> io::Result<bool> {
        let result = if self.gso.get() && batch.count() > 1 {
            match send_gso(self.fd.get_ref(), batch, to) {
                Err(e) if gso_unsupported(&e) => {
                    tracing::info!(error = %e, "UDP segmentation offload unavailable; sending datagrams one by one");
                    self.gso.set(false);
                    send_each(self.fd.get_ref(), batch, to)
                }
                other => other,
            }
        } else {
            send_each(self.fd.get_ref(), batch, to)
        };
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until the socket can take more datagrams.
    pub async fn writable(&self) -> io::Result<()> {
        let mut guard = self.fd.writable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Clears a stale read readiness after `try_recv` found nothing.
    pub fn clear_readable(&self) {
        if let Some(mut g) = self.fd.readable().now_or_never_guard() {
            g.clear_ready();
        }
    }
}

trait NowOrNever<'a> {
    fn now_or_never_guard(self) -> Option<tokio::io::unix::AsyncFdReadyGuard<'a, UdpSocket>>;
}

impl<'a, F> NowOrNever<'a> for F
where
    F: std::future::Future<Output = io::Result<tokio::io::unix::AsyncFdReadyGuard<'a, UdpSocket>>>,
{
    fn now_or_never_guard(self) -> Option<tokio::io::unix::AsyncFdReadyGuard<'a, UdpSocket>> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut fut = std::pin::pin!(self);
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Ok(g)) => Some(g),
            _ => None,
        }
    }
}

fn set_buffer_sizes(socket: &Socket) {
    // Large buffers keep bursts from being dropped by the kernel. The forced variants work as
    // root and beyond net.core.*mem_max; an ordinary user gets up to that maximum.
    let fd = socket.as_raw_fd();
    if set_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        SOCKET_BUFFER_BYTES,
    )
    .is_err()
    {
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES as usize);
    }
    if set_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        SOCKET_BUFFER_BYTES,
    )
    .is_err()
    {
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES as usize);
    }
}

fn recv_gro(socket: &UdpSocket, into: &mut Received) -> io::Result<()> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut addr: libc::sockaddr_storage = unsafe { zeroed() };
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec {
        iov_base: into.buf.as_mut_ptr().cast(),
        iov_len: into.buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; CONTROL_WORDS]>();
    // SAFETY: msg points at live buffers of the lengths it states.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    into.len = n as usize;
    into.segment = gro_segment(&msg).unwrap_or(0);
    into.from = sockaddr_to_std(&addr).unwrap_or(into.from);
    Ok(())
}

fn gro_segment(msg: &libc::msghdr) -> Option<usize> {
    // SAFETY: msg was filled by recvmsg; the CMSG macros walk its control buffer within
    // msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                let value = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>());
                return usize::try_from(value).ok();
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

fn send_gso(socket: &UdpSocket, batch: &Batch, to: SocketAddr) -> io::Result<()> {
    let (addr, addr_len) = std_to_sockaddr(to);
    let bytes = batch.bytes();
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    let mut control = [0u64; CONTROL_WORDS];
    // SAFETY: all-zero is a valid msghdr; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&addr as *const libc::sockaddr_storage) as *mut _;
    msg.msg_namelen = addr_len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    let segment = u16::try_from(batch.segment()).unwrap_or(u16::MAX);
    // SAFETY: the control buffer holds CMSG_SPACE(2) bytes, which CMSG_FIRSTHDR checks.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
    }
    // SAFETY: msg points at live buffers of the lengths it states.
    let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn send_each(socket: &UdpSocket, batch: &Batch, to: SocketAddr) -> io::Result<()> {
    for datagram in batch.datagrams() {
        socket.send_to(datagram, to)?;
    }
    Ok(())
}

fn gso_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOPROTOOPT) | Some(libc::EOPNOTSUPP)
    )
}

fn sockaddr_to_std(addr: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            let v6 = SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            );
            // A dual-stack socket reports IPv4 senders as mapped addresses.
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::from((v4, v6.port())),
                None => SocketAddr::V6(v6),
            })
        }
        _ => None,
    }
}

fn std_to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let sa: socket2::SockAddr = addr.into();
    // SAFETY: all-zero is a valid sockaddr_storage; we copy at most its size from `sa`.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = (sa.len() as usize).min(size_of::<libc::sockaddr_storage>());
    // SAFETY: both regions are valid for `len` bytes and do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr().cast::<u8>(),
            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
            len,
        );
    }
    (storage, len as libc::socklen_t)
}

// Linux UDP socket options (include/uapi/linux/udp.h).
const UDP_SEGMENT: i32 = 103;
const UDP_GRO: i32 = 104;

/// Kernel socket buffer for the tunnel socket, each direction.
const SOCKET_BUFFER_BYTES: i32 = 8 << 20;
const RECV_BYTES: usize = 65_535;
const CONTROL_WORDS: usize = 8;
