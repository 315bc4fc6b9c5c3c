//! ferry's dataplane: port forwarding over a userspace WireGuard tunnel.
//!
//! The layers, from the wire inwards:
//! - [`outer`]: the tunnel UDP socket, with segmentation and receive offload;
//! - [`engine`]: one thread's event loop, which owns the socket and its tunnels;
//! - [`tunnel`] and [`outbox`]: the protocol core, a WireGuard session plus a smoltcp TCP/IP
//!   stack, driven with time and buffers as arguments and doing no I/O itself;
//! - [`flow`] and [`udpflow`]: tasks that move bytes between local sockets and stack sockets;
//! - [`agent`] and [`forward`]: the two roles, workspace side and laptop side, and [`ports`]:
//!   the agent's listing of the workspace's listening ports, and [`health`]: the app
//!   healthchecks the agent runs;
//! - [`spec`], [`config`], [`cli`] and [`demo`]: what the user types and sees.
//!
//! What this crate deliberately does not do: key handling and the WireGuard protocol itself
//! (see `ferry-crypto`), routing between more than one agent per tunnel, or any TUN device.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod agent;
pub mod classify;
pub mod cli;
pub mod config;
pub mod demo;
pub mod engine;
pub mod flow;
pub mod forward;
pub mod health;
pub mod io;
pub mod outbox;
pub mod outer;
pub mod ports;
pub mod spec;
pub mod sys;
pub mod tunnel;
pub mod udpflow;
