//! What a workspace's agent reports on its reserved port: its listening ports and the state of
//! each app healthcheck it runs (the agent's `--healthcheck`; see `ferry_dataplane::health`).
//!
//! The gateway only shows these states; it runs no checks itself. An agent without
//! healthchecks reports none, and a state this gateway does not know shows as `unknown`.

use serde::{Deserialize, Serialize};

/// The agent's listing, as it sends it.
#[derive(Debug, Clone, Deserialize)]
pub struct Listing {
    /// Listening TCP ports of the workspace (ports below 9 and the agent's own left out).
    pub ports: Vec<u16>,
    /// One entry per healthcheck (absent from agents that predate healthchecks).
    #[serde(default)]
    pub health: Vec<AppHealth>,
}

/// One app healthcheck's state.
#[derive(Debug, Clone, Deserialize)]
pub struct AppHealth {
    /// The app port the check describes.
    pub port: u16,
    /// The URL the agent requests (on the workspace's loopback).
    pub url: String,
    /// The check's state.
    pub state: HealthState,
}

/// A healthcheck state, as the agent names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// No check has passed yet (and not enough have failed).
    Initializing,
    /// The app answers its checks.
    Healthy,
    /// More checks than the threshold failed in a row.
    Unhealthy,
    /// A state this gateway does not know (a newer agent).
    #[serde(other)]
    Unknown,
}

impl HealthState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Initializing => "initializing",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
            HealthState::Unknown => "unknown",
        }
    }
}

impl Listing {
    /// The health of `port`, if the agent checks it.
    pub fn health(&self, port: u16) -> Option<&AppHealth> {
        self.health.iter().find(|h| h.port == port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_parse_with_and_without_health() {
        let old: Listing = serde_json::from_str(r#"{"ports":[3000]}"#).unwrap();
        assert!(old.health.is_empty());
        let new: Listing = serde_json::from_str(
            r#"{"ports":[3000],"health":[{"port":3000,"url":"http://127.0.0.1:3000/",
            "state":"healthy"},{"port":8080,"url":"http://[::1]:8080/","state":"sleepy"}]}"#,
        )
        .unwrap();
        assert_eq!(new.health(3000).unwrap().state, HealthState::Healthy);
        assert_eq!(new.health(8080).unwrap().state, HealthState::Unknown);
        assert!(new.health(9000).is_none());
    }
}
