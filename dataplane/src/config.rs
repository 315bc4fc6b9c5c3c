//! The user's config file: their own key and the workspaces they forward from.
//!
//! TOML, at `$FERRY_CONFIG`, else `--config FILE`, else `$XDG_CONFIG_HOME/ferry/config.toml`
//! (`~/.config/ferry/config.toml`):
//!
//! ```toml
//! private_key_file = "/home/me/.config/ferry/private.key"
//!
//! [workspaces.myws]
//! endpoint = "127.0.0.1:51820"
//! public_key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
//! # optional: preshared_key_file, remote_host (the agent's tunnel address), keepalive
//!
//! [gateway]                       # optional, for `ferry share` and `ferry unshare`
//! url = "http://apps.example.test:8080"
//! token_file = "token"            # the gateway API token; relative to this file
//! ca_file = "gateway-ca.pem"      # optional: a CA trusted for an https:// url, besides the
//!                                 # system's; relative to this file
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The parsed config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The file holding the user's private key.
    pub private_key_file: PathBuf,
    /// Workspaces by name.
    #[serde(default)]
    pub workspaces: BTreeMap<String, Workspace>,
    /// Where `ferry share` finds the gateway (read by `ferry-gateway share`; unused here).
    pub gateway: Option<GatewayClient>,
}

/// The `[gateway]` table: the gateway's URL, the API token's file and an extra CA file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayClient {
    /// The gateway's base URL.
    pub url: Option<String>,
    /// A file holding the API token.
    pub token_file: Option<PathBuf>,
    /// A PEM file of CA certificates trusted for an `https://` gateway, besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// One workspace's tunnel settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workspace {
    /// The agent's tunnel endpoint, `HOST:PORT`.
    pub endpoint: String,
    /// The agent's public key.
    pub public_key: String,
    /// A preshared key file, if the tunnel uses one.
    pub preshared_key_file: Option<PathBuf>,
    /// The agent's address inside the tunnel, if not ferry's default.
    pub remote_host: Option<std::net::IpAddr>,
    /// Persistent keepalive in seconds (0 turns it off).
    pub keepalive: Option<u16>,
}

/// Why the config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// No config file location could be determined.
    #[error(
        "no config file: pass --config FILE, set FERRY_CONFIG, or give --endpoint, --peer-public-key and --private-key-file"
    )]
    NoLocation,
    /// The workspace is not in the file.
    #[error("workspace {name:?} is not in {path} (known: {known})")]
    UnknownWorkspace {
        name: String,
        path: PathBuf,
        known: String,
    },
}

impl Config {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.message().to_string(),
        })?;
        if config.private_key_file.is_relative()
            && let Some(dir) = path.parent()
        {
            config.private_key_file = dir.join(&config.private_key_file);
        }
        Ok(config)
    }

    /// Looks up a workspace by name.
    pub fn workspace(&self, name: &str, path: &Path) -> Result<&Workspace, ConfigError> {
        self.workspaces
            .get(name)
            .ok_or_else(|| ConfigError::UnknownWorkspace {
                name: name.into(),
                path: path.into(),
                known: self
                    .workspaces
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// The default config file location.
pub fn default_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("ferry/config.toml"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config/ferry/config.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_table_is_accepted_and_typos_in_it_are_not() {
        let text = "private_key_file = \"k\"\n[gateway]\nurl = \"http://a.test\"\n";
        let config: Config = toml::from_str(text).unwrap();
        let gateway = config.gateway.unwrap();
        assert_eq!(gateway.url.as_deref(), Some("http://a.test"));
        assert!(gateway.token_file.is_none());
        let with_ca = "private_key_file = \"k\"\n[gateway]\nca_file = \"ca.pem\"\n";
        let config: Config = toml::from_str(with_ca).unwrap();
        let ca_file = config.gateway.unwrap().ca_file.unwrap();
        assert_eq!(ca_file, Path::new("ca.pem"));
        let typo = "private_key_file = \"k\"\n[gateway]\nulr = \"http://a.test\"\n";
        assert!(toml::from_str::<Config>(typo).is_err());
    }
}
