//! The gateway's configuration file (TOML), parsed into checked types.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! app_domain = "apps.example.test:8080"   # with its port when not 80
//! private_key_file = "gateway.key"        # the gateway's WireGuard key (wg's base64)
//! database = "shares.sqlite"              # shares and sessions; relative to this file
//! tls_cert = "gateway.crt"                # optional: serve HTTPS with this PEM certificate chain
//! tls_key = "gateway.key.pem"             # and this PEM private key (both or neither)
//! session_lifetime_s = 604800             # how long a sign-in lasts (default 7 days)
//! upstream_timeout_s = 60                 # how long an app may take to send its response headers
//! header_read_timeout_s = 30              # how long a browser may take to send its request headers
//!
//! [[users]]
//! name = "alice"
//! token_sha256 = "9f86d0..."              # hex SHA-256 of the API token
//!
//! [templates.dev]
//! max_share_level = "public"              # default "owner": sharing disabled
//! default_owner = "alice"                 # for workspaces that name no owner
//!
//! [[workspaces]]
//! name = "myws"
//! owner = "alice"
//! agent = "main"
//! endpoint = "127.0.0.1:51820"
//! public_key = "base64..."
//! template = "dev"
//! ```
//!
//! With `tls_cert` and `tls_key` the gateway speaks HTTPS to browsers: app URLs, redirects and
//! `X-Forwarded-Proto` say `https`, and the session cookie is `Secure`. The certificate must
//! cover the app domain and its wildcard (`apps.example.test` and `*.apps.example.test`); the
//! files are read once at startup, and a missing, unreadable or mismatched pair stops it there.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_crypto::keys::PublicKey;
use serde::Deserialize;

use crate::access::ShareLevel;
use crate::host::{HostError, MAX_LABEL_LEN, Name};

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the gateway listens for browsers.
    pub listen: SocketAddr,
    /// The wildcard parent domain of app hosts, with its port when not 80.
    pub app_domain: String,
    /// The gateway's WireGuard private key file.
    pub private_key_file: PathBuf,
    /// The SQLite database holding shares and sign-in sessions.
    pub database: PathBuf,
    /// The browser side's certificate and key, when the gateway serves HTTPS.
    pub tls: Option<TlsFiles>,
    /// How long a sign-in session lasts.
    pub session_lifetime: Duration,
    /// How long the proxy waits for an app's response headers before answering 504.
    pub upstream_timeout: Duration,
    /// How long a browser connection may take to send a request's headers before it is closed
    /// (slow or stalled clients must not hold connections open forever).
    pub header_read_timeout: Duration,
    /// Users by name.
    pub users: HashMap<Name, User>,
    /// Workspaces by name.
    pub workspaces: HashMap<Name, Workspace>,
}

/// The PEM files of the browser side's TLS certificate chain and private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A user of the deployment.
#[derive(Debug, Clone)]
pub struct User {
    /// The user's name.
    pub name: Name,
    /// The SHA-256 of the user's API token.
    pub token_sha256: [u8; 32],
}

/// A workspace the gateway can reach.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The workspace's name.
    pub name: Name,
    /// The owning user.
    pub owner: Name,
    /// The agent's name.
    pub agent: Name,
    /// The agent's tunnel endpoint.
    pub endpoint: SocketAddr,
    /// The agent's public key.
    pub public_key: PublicKey,
    /// The highest share level its template allows.
    pub max_share_level: ShareLevel,
}

impl Config {
    /// Reads and checks a configuration file; relative paths in it are taken from its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            source: e,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base)
    }

    /// Parses and checks configuration text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let users = check_users(&raw.users)?;
        let workspaces = check_workspaces(&raw, &users)?;
        let tls = match (&raw.tls_cert, &raw.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: base.join(cert),
                key: base.join(key),
            }),
            (None, None) => None,
            _ => return Err(ConfigError::TlsPair),
        };
        Ok(Config {
            listen: raw.listen,
            app_domain: check_app_domain(&raw.app_domain)?,
            private_key_file: base.join(raw.private_key_file),
            database: base.join(raw.database),
            tls,
            session_lifetime: seconds("session_lifetime_s", raw.session_lifetime_s)?,
            upstream_timeout: seconds("upstream_timeout_s", raw.upstream_timeout_s)?,
            header_read_timeout: seconds("header_read_timeout_s", raw.header_read_timeout_s)?,
            users,
            workspaces,
        })
    }

    /// The scheme browsers use to reach the gateway: `https` when it has a certificate.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The cookie domain: the app domain without its port.
    pub fn cookie_domain(&self) -> &str {
        match self.app_domain.rsplit_once(':') {
            Some((host, _)) => host,
            None => &self.app_domain,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown or missing fields.
    #[error("configuration: {0}")]
    Syntax(String),
    /// A name is not usable in an app URL.
    #[error("configuration: {0}")]
    Name(#[from] HostError),
    /// A token hash is not 64 hex digits.
    #[error("configuration: user {0}: token_sha256 must be 64 hex digits")]
    TokenHash(String),
    /// A reference to a user or template that is not defined, or a duplicate.
    #[error("configuration: {0}")]
    Reference(String),
    /// Only one of `tls_cert` and `tls_key` was given.
    #[error(
        "configuration: tls_cert and tls_key go together: give both to serve HTTPS, or neither"
    )]
    TlsPair,
    /// A duration is zero.
    #[error("configuration: {0} must be at least 1")]
    ZeroDuration(&'static str),
    /// `app_domain` is not a host name with an optional port.
    #[error(
        "configuration: app_domain `{0}` is not a host name with an optional port \
         (like apps.example.test or apps.example.test:8080): labels of letters, digits and \
         inner hyphens, separated by dots"
    )]
    AppDomain(String),
    /// Two workspaces name the same agent (the same public key). Each would open its own
    /// WireGuard session with that key and the two would keep replacing each other.
    #[error(
        "configuration: workspaces {first} and {second} name the same agent \
         (public key {key}); an agent can serve one workspace here: give each workspace its \
         own agent, or remove one of the two"
    )]
    SharedAgent {
        first: String,
        second: String,
        key: String,
    },
    /// A workspace's names are too long for any app URL.
    #[error(
        "configuration: workspace {workspace}: even the shortest app label \
         (4-digit port) would be {len} characters, and a DNS label holds at most 63"
    )]
    TooLong { workspace: String, len: usize },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: SocketAddr,
    app_domain: String,
    private_key_file: PathBuf,
    database: PathBuf,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default = "default_session_lifetime_s")]
    session_lifetime_s: u64,
    #[serde(default = "default_upstream_timeout_s")]
    upstream_timeout_s: u64,
    #[serde(default = "default_header_read_timeout_s")]
    header_read_timeout_s: u64,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    templates: BTreeMap<String, RawTemplate>,
    #[serde(default)]
    workspaces: Vec<RawWorkspace>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    token_sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    #[serde(default)]
    max_share_level: ShareLevel,
    default_owner: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkspace {
    name: String,
    owner: Option<String>,
    agent: String,
    endpoint: SocketAddr,
    public_key: String,
    template: String,
}

fn check_users(raw: &[RawUser]) -> Result<HashMap<Name, User>, ConfigError> {
    let mut users = HashMap::new();
    for u in raw {
        let name = Name::parse(&u.name)?;
        let token_sha256 =
            parse_hash(&u.token_sha256).ok_or_else(|| ConfigError::TokenHash(u.name.clone()))?;
        let user = User {
            name: name.clone(),
            token_sha256,
        };
        if users.insert(name, user).is_some() {
            return Err(ConfigError::Reference(format!(
                "user {} appears twice",
                u.name
            )));
        }
    }
    Ok(users)
}

fn check_workspaces(
    raw: &RawConfig,
    users: &HashMap<Name, User>,
) -> Result<HashMap<Name, Workspace>, ConfigError> {
    let mut workspaces = HashMap::new();
    let mut agents: HashMap<PublicKey, String> = HashMap::new();
    for w in &raw.workspaces {
        let workspace = check_workspace(w, raw, users)?;
        // One agent (one key) per workspace: two tunnels with one key undo each other's
        // WireGuard sessions.
        if let Some(first) = agents.insert(workspace.public_key, w.name.clone()) {
            return Err(ConfigError::SharedAgent {
                first,
                second: w.name.clone(),
                key: workspace.public_key.to_string(),
            });
        }
        if workspaces
            .insert(workspace.name.clone(), workspace)
            .is_some()
        {
            return Err(ConfigError::Reference(format!(
                "workspace {} appears twice",
                w.name
            )));
        }
    }
    Ok(workspaces)
}

fn check_workspace(
    w: &RawWorkspace,
    raw: &RawConfig,
    users: &HashMap<Name, User>,
) -> Result<Workspace, ConfigError> {
    let missing = |what: &str| ConfigError::Reference(format!("workspace {}: {what}", w.name));

    // Template, then owner (the workspace's own, else the template's default).
    let template = raw
        .templates
        .get(&w.template)
        .ok_or_else(|| missing(&format!("template {} is not defined", w.template)))?;
    let owner = w
        .owner
        .as_deref()
        .or(template.default_owner.as_deref())
        .ok_or_else(|| missing("no owner, and its template names no default_owner"))?;
    let owner = Name::parse(owner)?;
    if !users.contains_key(&owner) {
        return Err(missing(&format!("owner {owner} is not a user")));
    }

    // Names must fit in a label with the shortest port.
    let (name, agent) = (Name::parse(&w.name)?, Name::parse(&w.agent)?);
    let len = 4 + 6 + name.as_str().len() + agent.as_str().len() + owner.as_str().len();
    if len > MAX_LABEL_LEN {
        return Err(ConfigError::TooLong {
            workspace: w.name.clone(),
            len,
        });
    }
    let public_key = w
        .public_key
        .parse()
        .map_err(|e| missing(&format!("public_key: {e}")))?;
    Ok(Workspace {
        name,
        owner,
        agent,
        endpoint: w.endpoint,
        public_key,
        max_share_level: template.max_share_level,
    })
}

fn default_session_lifetime_s() -> u64 {
    DEFAULT_SESSION_LIFETIME_S
}

fn default_upstream_timeout_s() -> u64 {
    DEFAULT_UPSTREAM_TIMEOUT_S
}

// The app domain, lower-cased: DNS labels (letters, digits, inner hyphens) and an optional
// port from 1 to 65535.
fn check_app_domain(text: &str) -> Result<String, ConfigError> {
    let bad = || ConfigError::AppDomain(text.to_owned());
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    let port_ok = port.is_none_or(|p| {
        p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0)
    });
    let label_ok = |l: &str| {
        (1..=MAX_LABEL_LEN).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let host_ok = !host.is_empty() && host.len() <= 253 && host.split('.').all(label_ok);
    match port_ok && host_ok {
        true => Ok(text.to_ascii_lowercase()),
        false => Err(bad()),
    }
}

fn default_header_read_timeout_s() -> u64 {
    DEFAULT_HEADER_READ_TIMEOUT_S
}

fn seconds(key: &'static str, value: u64) -> Result<Duration, ConfigError> {
    match value {
        0 => Err(ConfigError::ZeroDuration(key)),
        s => Ok(Duration::from_secs(s)),
    }
}

/// Parses 64 hex digits.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        *out.get_mut(i)? = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// A sign-in lasts a week unless the config says otherwise.
const DEFAULT_SESSION_LIFETIME_S: u64 = 7 * 24 * 3600;
/// Like common reverse proxies: an app gets a minute to start its answer.
const DEFAULT_UPSTREAM_TIMEOUT_S: u64 = 60;
/// Like hyper's own default: a browser gets half a minute to send its request headers.
const DEFAULT_HEADER_READ_TIMEOUT_S: u64 = 30;

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    fn text(extra: &str) -> String {
        format!(
            r#"
listen = "127.0.0.1:0"
app_domain = "Apps.Example.Test:8080"
private_key_file = "gw.key"
database = "shares.sqlite"
[[users]]
name = "alice"
token_sha256 = "{}"
[templates.dev]
max_share_level = "authenticated"
default_owner = "alice"
{extra}
"#,
            "ab".repeat(32)
        )
    }

    #[test]
    fn workspace_takes_the_template_default_owner_and_cap() {
        let ws = format!(
            "[[workspaces]]\nname = \"ws\"\nagent = \"main\"\nendpoint = \"127.0.0.1:1\"\n\
             public_key = \"{KEY}\"\ntemplate = \"dev\"\n"
        );
        let c = Config::parse(&text(&ws), Path::new("/etc/ferry")).unwrap();
        let w = &c.workspaces[&Name::parse("ws").unwrap()];
        assert_eq!(w.owner.as_str(), "alice");
        assert_eq!(w.max_share_level, ShareLevel::Authenticated);
        assert_eq!(c.app_domain, "apps.example.test:8080");
        assert_eq!(c.cookie_domain(), "apps.example.test");
        assert_eq!(c.database, Path::new("/etc/ferry/shares.sqlite"));
    }

    #[test]
    fn unknown_template_and_owner_are_refused() {
        let ws = format!(
            "[[workspaces]]\nname = \"ws\"\nowner = \"bob\"\nagent = \"main\"\n\
             endpoint = \"127.0.0.1:1\"\npublic_key = \"{KEY}\"\ntemplate = \"dev\"\n"
        );
        let e = Config::parse(&text(&ws), Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("owner bob is not a user"), "{e}");
        let ws = ws.replace("\"dev\"", "\"prod\"");
        let e = Config::parse(&text(&ws), Path::new(".")).unwrap_err();
        assert!(
            e.to_string().contains("template prod is not defined"),
            "{e}"
        );
    }

    #[test]
    fn two_workspaces_with_one_agent_key_are_refused() {
        let ws = |name: &str, endpoint: &str| {
            format!(
                "[[workspaces]]\nname = \"{name}\"\nagent = \"main\"\n\
                 endpoint = \"{endpoint}\"\npublic_key = \"{KEY}\"\ntemplate = \"dev\"\n"
            )
        };
        for endpoint in ["127.0.0.1:1", "127.0.0.1:2"] {
            let two = ws("one", "127.0.0.1:1") + &ws("two", endpoint);
            let e = Config::parse(&text(&two), Path::new(".")).unwrap_err();
            let e = e.to_string();
            assert!(
                e.contains("workspaces one and two name the same agent"),
                "{e}"
            );
            assert!(e.contains(KEY), "{e}");
        }
    }

    #[test]
    fn names_too_long_for_any_label_are_refused() {
        let long = "w".repeat(50);
        let ws = format!(
            "[[workspaces]]\nname = \"{long}\"\nagent = \"main\"\nendpoint = \"127.0.0.1:1\"\n\
             public_key = \"{KEY}\"\ntemplate = \"dev\"\n"
        );
        let e = Config::parse(&text(&ws), Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("at most 63"), "{e}");
    }

    #[test]
    fn tls_files_come_in_pairs_relative_to_the_config() {
        let c = Config::parse(&text(""), Path::new("/etc/ferry")).unwrap();
        assert!(c.tls.is_none());
        assert_eq!(c.scheme(), "http");
        let both = text("").replace(
            "database = \"shares.sqlite\"\n",
            "database = \"shares.sqlite\"\ntls_cert = \"gw.crt\"\ntls_key = \"/k/gw.pem\"\n",
        );
        let c = Config::parse(&both, Path::new("/etc/ferry")).unwrap();
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(tls.cert, Path::new("/etc/ferry/gw.crt"));
        assert_eq!(tls.key, Path::new("/k/gw.pem"));
        assert_eq!(c.scheme(), "https");
        let one = both.replace("tls_key = \"/k/gw.pem\"\n", "");
        let e = Config::parse(&one, Path::new(".")).unwrap_err();
        assert!(
            e.to_string().contains("tls_cert and tls_key go together"),
            "{e}"
        );
    }

    #[test]
    fn durations_default_and_refuse_zero() {
        let c = Config::parse(&text(""), Path::new(".")).unwrap();
        assert_eq!(c.session_lifetime, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(c.upstream_timeout, Duration::from_secs(60));
        assert_eq!(c.header_read_timeout, Duration::from_secs(30));
        for key in [
            "session_lifetime_s",
            "upstream_timeout_s",
            "header_read_timeout_s",
        ] {
            let zero = text("").replace(
                "database = \"shares.sqlite\"\n",
                &format!("database = \"shares.sqlite\"\n{key} = 0\n"),
            );
            let e = Config::parse(&zero, Path::new(".")).unwrap_err();
            assert!(
                e.to_string().contains(&format!("{key} must be at least 1")),
                "{e}"
            );
        }
    }

    #[test]
    fn app_domain_must_be_a_host_with_an_optional_port() {
        let with = |domain: &str| {
            let t = text("").replace("Apps.Example.Test:8080", domain);
            Config::parse(&t, Path::new("."))
        };
        for good in ["apps.test", "localhost:8080", "a-1.b.example.test:1"] {
            assert!(with(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a b/c:x",
            "apps.test:",
            "apps.test:0",
            "apps.test:65536",
            "-a.test",
            "a..test",
            "apps.test.",
            "apps_x.test",
            "apps.test:80:80",
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("app_domain `{bad}` is not a host name")),
                "{e}"
            );
        }
    }

    #[test]
    fn token_hash_must_be_hex() {
        assert!(parse_hash(&"0f".repeat(32)).is_some());
        assert!(parse_hash(&"0g".repeat(32)).is_none());
        assert!(parse_hash("00").is_none());
    }
}
