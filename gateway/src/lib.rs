//! ferry's gateway: workspace ports served to browsers as app URLs.
//!
//! Each app is one DNS label under a wildcard app domain,
//! `PORT[s]--AGENT--WORKSPACE--USER.<app domain>`. The gateway is a WireGuard peer of every
//! workspace agent (one ferry port-forward per workspace, on its own thread); it checks the
//! port's share level (owner, authenticated, public; capped by the workspace template) against
//! the viewer's session, answers CORS itself, and proxies HTTP to the app with both bodies
//! streaming. Share state lives in SQLite; users, workspaces and templates in a TOML file.
//!
//! With a certificate configured it serves browsers over HTTPS, and it speaks TLS to apps whose
//! URL carries the `s` suffix ([`tls`]). Upgrades (WebSocket) are spliced byte for byte after
//! the app's 101 answer. Sign-in sessions are kept in SQLite beside the shares ([`sessions`]),
//! so a restart keeps browsers signed in.
//!
//! App health comes from the agent, which runs the healthchecks itself and reports their states
//! with its port listing ([`health`]); the gateway shows them in its API and workspace page.
//! [`client`] is the share API's command-line client (`ferry share`, `ferry unshare`).

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod access;
pub mod api;
pub mod client;
pub mod config;
pub mod cors;
pub mod csrf;
pub mod dashboard;
pub mod health;
pub mod host;
pub mod pages;
pub mod proxy;
pub mod server;
pub mod sessions;
pub mod store;
pub mod tls;
pub mod tunnels;

pub use config::Config;
pub use server::{Gateway, StartError};
