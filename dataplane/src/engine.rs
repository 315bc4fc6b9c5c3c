//! The engine: one thread's event loop around the protocol core of its tunnels.
//!
//! An [`Engine`] owns the tunnel UDP socket and every [`Tunnel`] served on it (one per peer),
//! behind a `RefCell`: the engine runs on one thread, tasks borrow the core only between awaits,
//! and nothing on the hot path takes a lock. Three tasks run the core:
//! - the receive task takes coalesced datagrams from the socket, decrypts them into the stack's
//!   queue, lets the role (agent or port-forward) look at new flows, then polls the stack and
//!   sends what it produced;
//! - the driver polls the stack when a flow task pokes it or a deadline of the stack falls due,
//!   and runs WireGuard's timers every 250 ms (no data-path polling timer);
//! - the send task waits for the socket to drain when the kernel buffer was full.
//!
//! Flow tasks (see [`crate::flow`]) move bytes between local sockets and stack sockets and poke
//! the driver after each change.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use ferry_crypto::session::{PeerIndex, Route, TIMER_TICK_MS, TimerEvent};
use smoltcp::time::Instant;
use tokio::sync::Notify;

use crate::outer::{OuterSocket, Received};
use crate::tunnel::Tunnel;

/// Counters of datagrams the engine could not attribute to a tunnel.
#[derive(Debug, Default, Clone, Copy)]
pub struct EngineStats {
    /// Valid handshakes from keys that are not configured peers.
    pub unknown_peers: u64,
    /// Datagrams that are not WireGuard messages for any tunnel here (garbage, stale indices).
    pub invalid_datagrams: u64,
    /// Datagrams a tunnel refused (bad MAC, replay, wrong key, expired session).
    pub refused_datagrams: u64,
}

/// How datagrams find their tunnel.
pub enum Router {
    /// One tunnel, to one configured endpoint (the port-forward side).
    Single,
    /// One tunnel per configured peer, found by key or index (the agent side).
    Peers(Box<PeerIndex>),
}

/// The state shared by an engine's tasks. Borrow it only between awaits.
pub struct Core {
    /// The tunnels, indexed as the router numbers them.
    pub tunnels: Vec<Tunnel>,
    router: Router,
    dirty: Vec<bool>,
    /// What was dropped.
    pub stats: EngineStats,
    unknown_logged: Option<std::time::Instant>,
}

/// One engine: a tunnel socket, its tunnels and the tasks that drive them.
pub struct Engine {
    /// The protocol core.
    pub core: RefCell<Core>,
    outer: OuterSocket,
    epoch: std::time::Instant,
    poke: Notify,
    blocked: Notify,
    is_blocked: Cell<bool>,
}

/// What the role does when decrypted packets arrive, before the stack sees them.
pub trait Ingress: 'static {
    /// Inspects the packets queued in tunnel `t` (see [`Tunnel::pending_packets`]).
    fn inspect(&self, engine: &Rc<Engine>, t: usize);
    /// Runs on every timer tick, after WireGuard's timers.
    fn tick(&self, _engine: &Rc<Engine>) {}
}

impl Engine {
    /// Creates an engine over `outer` with `tunnels`, numbered as `router` expects.
    pub fn new(outer: OuterSocket, tunnels: Vec<Tunnel>, router: Router) -> Rc<Self> {
        let dirty = vec![true; tunnels.len()];
        let core = Core {
            tunnels,
            router,
            dirty,
            stats: EngineStats::default(),
            unknown_logged: None,
        };
        Rc::new(Engine {
            core: RefCell::new(core),
            outer,
            epoch: std::time::Instant::now(),
            poke: Notify::new(),
            blocked: Notify::new(),
            is_blocked: Cell::new(false),
        })
    }

    /// The tunnel socket's address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.outer.local_addr()
    }

    /// The stack's clock: time since the engine started.
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Asks the driver to poll tunnel `t` soon: a flow changed one of its sockets.
    pub fn poke(&self, t: usize) {
        if let Ok(mut core) = self.core.try_borrow_mut()
            && let Some(d) = core.dirty.get_mut(t)
        {
            *d = true;
        }
        self.poke.notify_one();
    }

    /// Resets every TCP flow (the peer sees a reset at once instead of a connection that
    /// stays open until its keepalive gives up) and sends what that produced. For shutdown.
    pub fn reset_all(&self) {
        let now = self.now();
        let mut core = self.core.borrow_mut();
        for tunnel in &mut core.tunnels {
            tunnel.abort_all_tcp();
            tunnel.poll(now);
        }
        self.flush(&mut core);
    }

    /// Waits until no TCP flow is left (each closed normally), for at most `limit`.
    pub async fn drain(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self
                .core
                .borrow()
                .tunnels
                .iter()
                .all(|t| t.tcp_flows() == 0)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(DRAIN_CHECK_MS)).await;
        }
    }

    /// One line of counters: what was carried and what was dropped, and why.
    pub fn summary(&self) -> String {
        let core = self.core.borrow();
        let (mut packets_in, mut packets_out) = (0, 0);
        for tunnel in &core.tunnels {
            packets_in += tunnel.stats().packets_in;
            packets_out += tunnel.stats().packets_out;
        }
        let s = core.stats;
        format!(
            "{packets_in} packets in, {packets_out} out; dropped: {} invalid datagrams, {} handshakes from unknown peers, {} refused by a session",
            s.invalid_datagrams, s.unknown_peers, s.refused_datagrams
        )
    }

    /// Starts the receive, driver and send tasks. They run until the runtime stops.
    pub fn start(self: &Rc<Self>, ingress: Rc<dyn Ingress>) {
        tokio::task::spawn_local(receive_task(self.clone(), ingress.clone()));
        tokio::task::spawn_local(driver_task(self.clone(), ingress));
        tokio::task::spawn_local(send_task(self.clone()));
    }

    /// Polls tunnel `t` now and sends what it produced.
    pub fn poll_now(&self, t: usize) {
        let now = self.now();
        let mut core = self.core.borrow_mut();
        if let Some(tunnel) = core.tunnels.get_mut(t) {
            tunnel.poll(now);
        }
        self.flush(&mut core);
    }

    /// Sends every queued batch the socket takes without blocking.
    fn flush(&self, core: &mut Core) {
        for tunnel in &mut core.tunnels {
            let Some(to) = tunnel.endpoint() else {
                tunnel.outbox().clear();
                continue;
            };
            while let Some(batch) = tunnel.outbox().pop() {
                match self.outer.try_send(&batch, to) {
                    Ok(true) => tunnel.outbox().recycle(batch),
                    Ok(false) => {
                        tunnel.outbox().unpop(batch);
                        self.is_blocked.set(true);
                        self.blocked.notify_one();
                        return;
                    }
                    Err(e) => {
                        // Lost like any datagram on a network; WireGuard and TCP recover.
                        tracing::debug!(error = %e, endpoint = %to, "send to peer failed");
                        tunnel.outbox().recycle(batch);
                    }
                }
            }
        }
    }

    fn route(&self, core: &mut Core, datagram: &[u8]) -> Option<usize> {
        let route = match &core.router {
            Router::Single => return Some(0),
            Router::Peers(index) => index.route(datagram),
        };
        match route {
            Route::Peer(i) => Some(i),
            Route::UnknownPeer(key) => {
                core.stats.unknown_peers += 1;
                let now = std::time::Instant::now();
                if core
                    .unknown_logged
                    .is_none_or(|t| now.duration_since(t) > Duration::from_secs(5))
                {
                    core.unknown_logged = Some(now);
                    tracing::warn!(peer = %key, "handshake from a key that is not an allowed peer; dropped (add it with --peer)");
                }
                None
            }
            Route::Invalid => {
                core.stats.invalid_datagrams += 1;
                tracing::debug!(
                    len = datagram.len(),
                    "dropped a datagram that is not for any tunnel here"
                );
                None
            }
        }
    }
}

async fn receive_task(engine: Rc<Engine>, ingress: Rc<dyn Ingress>) {
    let mut received = Received::new();
    let mut touched = Vec::new();
    loop {
        if let Err(e) = engine.outer.recv(&mut received).await {
            tracing::debug!(error = %e, "tunnel socket receive failed");
            continue;
        }
        // Decrypt everything already queued, up to a budget, before running the stack once.
        touched.clear();
        for round in 0..RECV_BATCH {
            if round > 0 {
                match engine.outer.try_recv(&mut received) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "tunnel socket receive failed");
                        break;
                    }
                }
            }
            decrypt_all(&engine, &received, &mut touched);
        }
        for &t in &touched {
            ingress.inspect(&engine, t);
        }
        let now = engine.now();
        let mut core = engine.core.borrow_mut();
        for &t in &touched {
            if let Some(tunnel) = core.tunnels.get_mut(t) {
                tunnel.poll(now);
            }
        }
        engine.flush(&mut core);
    }
}

fn decrypt_all(engine: &Engine, received: &Received, touched: &mut Vec<usize>) {
    let mut core = engine.core.borrow_mut();
    if received.is_empty() {
        // An empty datagram holds no message at all; it is dropped like any garbage.
        core.stats.invalid_datagrams += 1;
        return;
    }
    for datagram in received.datagrams() {
        let Some(t) = engine.route(&mut core, datagram) else {
            continue;
        };
        let Some(tunnel) = core.tunnels.get_mut(t) else {
            continue;
        };
        if let Err(e) = tunnel.handle_datagram(received.from(), datagram) {
            tracing::debug!(error = %e, from = %received.from(), "refused a datagram");
            core.stats.refused_datagrams += 1;
        }
        if !touched.contains(&t) {
            touched.push(t);
        }
    }
    // Handshake replies must leave even if no packet reached the stack.
    engine.flush(&mut core);
}

async fn driver_task(engine: Rc<Engine>, ingress: Rc<dyn Ingress>) {
    let tick = Duration::from_millis(TIMER_TICK_MS);
    let mut next_tick = tokio::time::Instant::now() + tick;
    loop {
        let deadline = next_deadline(&engine, next_tick);
        tokio::select! {
            _ = engine.poke.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
        if tokio::time::Instant::now() >= next_tick {
            next_tick = tokio::time::Instant::now() + tick;
            run_timers(&engine);
            ingress.tick(&engine);
        }
        let now = engine.now();
        let mut core = engine.core.borrow_mut();
        let core = &mut *core;
        for (tunnel, dirty) in core.tunnels.iter_mut().zip(core.dirty.iter_mut()) {
            let due = tunnel.poll_at(now).is_some_and(|at| at <= now);
            if *dirty || due {
                *dirty = false;
                tunnel.poll(now);
            }
        }
        engine.flush(core);
    }
}

fn next_deadline(engine: &Engine, next_tick: tokio::time::Instant) -> tokio::time::Instant {
    let now = engine.now();
    let mut core = engine.core.borrow_mut();
    let soonest = core.tunnels.iter_mut().filter_map(|t| t.poll_at(now)).min();
    match soonest {
        // smoltcp's Instant difference is absolute: a deadline already past means now.
        Some(at) if at <= now => tokio::time::Instant::now(),
        Some(at) => {
            let wait = Duration::from_micros((at - now).total_micros());
            next_tick.min(tokio::time::Instant::now() + wait)
        }
        None => next_tick,
    }
}

fn run_timers(engine: &Engine) {
    let mut core = engine.core.borrow_mut();
    for tunnel in &mut core.tunnels {
        if tunnel.update_timers() == TimerEvent::Expired {
            tracing::debug!(peer = %tunnel.session().peer(), "session expired");
        }
    }
    engine.flush(&mut core);
}

async fn send_task(engine: Rc<Engine>) {
    loop {
        engine.blocked.notified().await;
        while engine.is_blocked.get() {
            if engine.outer.writable().await.is_err() {
                break;
            }
            engine.is_blocked.set(false);
            let mut core = engine.core.borrow_mut();
            engine.flush(&mut core);
            let n = core.dirty.len();
            core.dirty.iter_mut().for_each(|d| *d = true);
            drop(core);
            if n > 0 {
                engine.poke.notify_one();
            }
        }
    }
}

// How often a draining shutdown looks for flows still closing.
const DRAIN_CHECK_MS: u64 = 20;
// How many receive calls (each up to 64 KiB coalesced) run before the stack is polled.
const RECV_BATCH: usize = 16;
