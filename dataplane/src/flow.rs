//! Flow tasks: moving bytes between a local socket and a socket of the tunnel's stack.
//!
//! A TCP flow is two pumps joined: local to tunnel, and tunnel to local. Each waits on the stack
//! socket's waker, never on a timer. The local-to-tunnel pump reads only as much as the stack
//! socket has room for, so a slow tunnel slows the local reader (backpressure) and nothing
//! queues without bound; the other pump takes data out of the stack only once the local
//! socket accepted the previous chunk, so a slow local reader closes the TCP window.
//! End of stream travels as a half-close in each direction independently.

use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;

use crate::engine::Engine;
use crate::io::LocalStream;

/// Carries one TCP flow until both directions have ended, then releases the stack socket.
pub async fn run_tcp_flow<S: LocalStream>(
    engine: Rc<Engine>,
    t: usize,
    handle: SocketHandle,
    stream: S,
) {
    let stream = Rc::new(stream);
    let writing = Cell::new(false);
    let reset = {
        let mut up = std::pin::pin!(local_to_tunnel(&engine, t, handle, &stream));
        let mut down = std::pin::pin!(tunnel_to_local(&engine, t, handle, &stream, &writing));
        // A reset ends the flow at once: the local connection is reset too, which also
        // completes a pending local read, and a pending local write (one the local reader may
        // never take, such as a service blocked writing to us) when there is one.
        tokio::select! {
            end = &mut up => {
                if end == End::Reset {
                    stream.reset(writing.get());
                    true
                } else {
                    down.await == End::Reset
                }
            }
            end = &mut down => {
                if end == End::Finished {
                    up.await == End::Reset
                } else {
                    stream.reset(false);
                    true
                }
            }
        }
    };
    if reset {
        stream.reset(false);
    }
    drop(stream);
    release_tcp(&engine, t, handle).await;
}

async fn local_to_tunnel<S: LocalStream>(
    engine: &Rc<Engine>,
    t: usize,
    handle: SocketHandle,
    stream: &Rc<S>,
) -> End {
    let mut buf = Vec::with_capacity(chunk_len(engine, t, handle));
    loop {
        let Some(room) = wait_send_room(engine, t, handle).await else {
            // The stack socket takes no more: reset or timed out, or closed after a reset.
            return if is_reset(engine, t, handle) {
                End::Reset
            } else {
                End::Finished
            };
        };
        let max = room.min(buf.capacity());
        let (result, returned) = stream.read(buf, max).await;
        buf = returned;
        let mut core = engine.core.borrow_mut();
        let Some(tunnel) = core.tunnels.get_mut(t) else {
            return End::Reset;
        };
        let socket = tunnel.tcp(handle);
        let end = match result {
            Ok(0) => {
                socket.close();
                Some(End::Finished)
            }
            Ok(n) => {
                if socket.send_slice(&buf[..n]).is_err() {
                    socket.abort();
                    Some(End::Reset)
                } else {
                    None
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "local read failed; resetting the flow");
                socket.abort();
                Some(End::Reset)
            }
        };
        drop(core);
        engine.poke(t);
        if let Some(end) = end {
            return end;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The peer finished sending: the local side got a half-close.
    Finished,
    /// The flow was reset or failed.
    Reset,
}

async fn tunnel_to_local<S: LocalStream>(
    engine: &Rc<Engine>,
    t: usize,
    handle: SocketHandle,
    stream: &Rc<S>,
    writing: &Cell<bool>,
) -> End {
    let mut buf = vec![0; chunk_len(engine, t, handle)];
    loop {
        let got = wait_received(engine, t, handle, &mut buf).await;
        engine.poke(t);
        let Some(n) = got else {
            if is_reset(engine, t, handle) {
                return End::Reset;
            }
            let _ = stream.shutdown_write();
            return End::Finished;
        };
        writing.set(true);
        let (result, returned) = stream.write_all(buf, n).await;
        writing.set(false);
        buf = returned;
        if let Err(e) = result {
            tracing::debug!(error = %e, "local write failed; resetting the flow");
            if let Some(tunnel) = engine.core.borrow_mut().tunnels.get_mut(t) {
                tunnel.tcp(handle).abort();
            }
            engine.poke(t);
            return End::Reset;
        }
    }
}

fn is_reset(engine: &Engine, t: usize, handle: SocketHandle) -> bool {
    let mut core = engine.core.borrow_mut();
    core.tunnels
        .get_mut(t)
        .is_none_or(|tunnel| tunnel.tcp(handle).state() == State::Closed)
}

// Waits until the stack socket can take data; `None` when it never will again.
async fn wait_send_room(engine: &Engine, t: usize, handle: SocketHandle) -> Option<usize> {
    poll_fn(|cx| {
        let mut core = engine.core.borrow_mut();
        let Some(tunnel) = core.tunnels.get_mut(t) else {
            return Poll::Ready(None);
        };
        let socket = tunnel.tcp(handle);
        if is_opening(socket.state()) {
            socket.register_send_waker(cx.waker());
            return Poll::Pending;
        }
        if !socket.may_send() {
            return Poll::Ready(None);
        }
        let room = socket.send_capacity() - socket.send_queue();
        if room > 0 {
            return Poll::Ready(Some(room));
        }
        socket.register_send_waker(cx.waker());
        Poll::Pending
    })
    .await
}

// Waits for data and copies it out; `None` at end of stream or reset.
async fn wait_received(
    engine: &Engine,
    t: usize,
    handle: SocketHandle,
    buf: &mut [u8],
) -> Option<usize> {
    poll_fn(|cx| {
        let mut core = engine.core.borrow_mut();
        let Some(tunnel) = core.tunnels.get_mut(t) else {
            return Poll::Ready(None);
        };
        let socket = tunnel.tcp(handle);
        if socket.can_recv() {
            return Poll::Ready(socket.recv_slice(buf).ok());
        }
        if is_opening(socket.state()) || socket.may_recv() {
            socket.register_recv_waker(cx.waker());
            return Poll::Pending;
        }
        Poll::Ready(None)
    })
    .await
}

// Waits until the stack socket has finished closing (or gives up), then removes it.
async fn release_tcp(engine: &Rc<Engine>, t: usize, handle: SocketHandle) {
    let closing = poll_fn(|cx| {
        let mut core = engine.core.borrow_mut();
        let Some(tunnel) = core.tunnels.get_mut(t) else {
            return Poll::Ready(());
        };
        let socket = tunnel.tcp(handle);
        if matches!(socket.state(), State::Closed | State::TimeWait) {
            return Poll::Ready(());
        }
        socket.register_recv_waker(cx.waker());
        socket.register_send_waker(cx.waker());
        Poll::Pending
    });
    let linger = std::time::Duration::from_secs(crate::tunnel::TCP_TIMEOUT_S);
    if tokio::time::timeout(linger, closing).await.is_err() {
        if let Some(tunnel) = engine.core.borrow_mut().tunnels.get_mut(t) {
            tunnel.tcp(handle).abort();
        }
        engine.poll_now(t);
    }
    // A reset or last ACK still queued in the socket leaves before the socket goes.
    engine.poll_now(t);
    if let Some(tunnel) = engine.core.borrow_mut().tunnels.get_mut(t) {
        tunnel.remove(handle);
    }
}

// A flow's chunk buffer: at most CHUNK_BYTES, and no larger than its stack socket's buffers (small
// when many flows share the tunnel's memory budget).
fn chunk_len(engine: &Engine, t: usize, handle: SocketHandle) -> usize {
    let mut core = engine.core.borrow_mut();
    let capacity = core.tunnels.get_mut(t).map_or(CHUNK_BYTES, |tunnel| {
        let socket = tunnel.tcp(handle);
        socket.recv_capacity().max(socket.send_capacity())
    });
    capacity.clamp(1, CHUNK_BYTES)
}

fn is_opening(state: State) -> bool {
    matches!(state, State::Listen | State::SynSent | State::SynReceived)
}

/// How much one read from or write to a local socket moves at most.
pub const CHUNK_BYTES: usize = 256 * 1024;
