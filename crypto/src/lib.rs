//! WireGuard for ferry: keys, sessions and wg-quick configs.
//!
//! This crate holds everything that needs a secret: key parsing and generation in the format of
//! `wg genkey`, a [`session::Session`] wrapper around boringtun that hides its calling rules, a
//! [`session::PeerIndex`] router for a responder with several peers, and the wg-quick config
//! format. It does no I/O besides reading key and config files, and never logs key material.
//!
//! What it deliberately does not do: sockets, timers or threads. The caller feeds datagrams and
//! packets in, and sends what comes out.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod keys;
pub mod session;
pub mod wgconfig;
