//! `ferry share` and `ferry unshare`: a command-line client of the gateway's share API.
//!
//! - `share WORKSPACE PORT --level LEVEL [--protocol http|https]`: sets a port's share;
//! - `share ls [WORKSPACE]`: lists the shares of one workspace, or of every workspace the
//!   caller owns;
//! - `unshare WORKSPACE PORT`: back to the owner level.
//!
//! The gateway's URL comes from `--gateway-url`, else `$FERRY_GATEWAY_URL`, else the `url` of
//! the `[gateway]` table in ferry's config file; the API token from `--token-file`, else
//! `$FERRY_TOKEN`, else that table's `token_file`. Only plain `http://` gateway URLs are
//! supported. A missing setting or a malformed argument is a usage error (exit 2); a request the
//! gateway refuses prints the gateway's reason and exits 1.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::ShareLevel;
use crate::store::Protocol;

/// Where the gateway is and who is asking.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// The gateway's base URL, e.g. `http://apps.example.test:8080` (else `url` under
    /// `[gateway]` in ferry's config file).
    #[arg(long, value_name = "URL", env = "FERRY_GATEWAY_URL", global = true)]
    gateway_url: Option<String>,
    /// A file holding the API token (else `$FERRY_TOKEN`, else `token_file` under `[gateway]`
    /// in ferry's config file).
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
    /// ferry's config file [default: ~/.config/ferry/config.toml].
    #[arg(long, value_name = "FILE", env = "FERRY_CONFIG", global = true)]
    config: Option<PathBuf>,
}

/// `share WORKSPACE PORT` or `share ls [WORKSPACE]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ShareArgs {
    #[command(subcommand)]
    list: Option<ShareList>,
    /// The workspace.
    #[arg(required = true)]
    workspace: Option<String>,
    /// The workspace port (9-65535).
    #[arg(required = true)]
    port: Option<u16>,
    /// Who may open the app.
    #[arg(long, value_enum, required = true)]
    level: Option<ShareLevel>,
    /// What the app speaks on its port.
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    protocol: Protocol,
    #[command(flatten)]
    gateway: GatewayArgs,
}

#[derive(Debug, Subcommand)]
enum ShareList {
    /// List shares: of WORKSPACE, or of every workspace you own.
    Ls {
        /// The workspace.
        workspace: Option<String>,
    },
}

/// `unshare WORKSPACE PORT`.
#[derive(Debug, Args)]
pub struct UnshareArgs {
    /// The workspace.
    workspace: String,
    /// The workspace port.
    port: u16,
    #[command(flatten)]
    gateway: GatewayArgs,
}

/// Why a command failed, by exit code.
#[derive(Debug)]
pub enum ClientError {
    /// A missing setting or malformed input, found before any request: exit 2.
    Usage(String),
    /// The gateway could not be reached or refused the request: exit 1.
    Failed(String),
}

/// Runs `share`.
pub fn share(args: ShareArgs) -> Result<(), ClientError> {
    if let Some(ShareList::Ls { workspace }) = args.list {
        return list(workspace.as_deref(), &args.gateway);
    }
    let (Some(workspace), Some(port), Some(level)) = (args.workspace, args.port, args.level) else {
        return Err(ClientError::Usage(
            "give WORKSPACE PORT --level LEVEL, or `ls [WORKSPACE]`".into(),
        ));
    };
    let api = Api::from_args(&args.gateway)?;
    let protocol = args.protocol;
    let body = json!({ "level": level, "protocol": protocol }).to_string();
    let path = format!("/api/v1/workspaces/{}/shares/{port}", segment(&workspace));
    let share = api.call(Method::PUT, &path, Some(body))?;
    let url = share["url"].as_str().unwrap_or("(no URL)");
    let protocol = if protocol == Protocol::Https {
        "https"
    } else {
        "http"
    };
    println!("{workspace} port {port}: {level} ({protocol}) at {url}");
    Ok(())
}

/// Runs `unshare`.
pub fn unshare(args: UnshareArgs) -> Result<(), ClientError> {
    let api = Api::from_args(&args.gateway)?;
    let path = format!(
        "/api/v1/workspaces/{}/shares/{}",
        segment(&args.workspace),
        args.port
    );
    let answer = api.call(Method::DELETE, &path, None)?;
    let (ws, port) = (&args.workspace, args.port);
    if answer["deleted"].as_bool().unwrap_or(false) {
        println!("{ws} port {port}: back to owner only");
    } else {
        println!("{ws} port {port}: was not shared (owner only)");
    }
    Ok(())
}

// `share ls [WORKSPACE]`: one line a share.
fn list(workspace: Option<&str>, gateway: &GatewayArgs) -> Result<(), ClientError> {
    let api = Api::from_args(gateway)?;
    let shares: Vec<Value> = match workspace {
        Some(ws) => {
            let path = format!("/api/v1/workspaces/{}/shares", segment(ws));
            array(&api.call(Method::GET, &path, None)?["shares"])
        }
        None => array(&api.call(Method::GET, "/api/v1/workspaces", None)?["workspaces"])
            .iter()
            .flat_map(|w| array(&w["shares"]))
            .collect(),
    };
    println!(
        "{:<24} {:>5}  {:<13} {:<8} URL",
        "WORKSPACE", "PORT", "LEVEL", "PROTOCOL"
    );
    for s in &shares {
        println!(
            "{:<24} {:>5}  {:<13} {:<8} {}",
            s["workspace"].as_str().unwrap_or("?"),
            s["port"].as_u64().unwrap_or(0),
            s["level"].as_str().unwrap_or("?"),
            s["protocol"].as_str().unwrap_or("?"),
            s["url"].as_str().unwrap_or("(name too long for a URL)"),
        );
    }
    if shares.is_empty() {
        println!("(no shares: every port is owner only)");
    }
    Ok(())
}

// The gateway's API, reached over plain HTTP.
struct Api {
    addrs: Vec<SocketAddr>,
    authority: String,
    token: String,
}

impl Api {
    fn from_args(args: &GatewayArgs) -> Result<Api, ClientError> {
        // The file settings are read only when a flag or variable is missing.
        let file = if args.gateway_url.is_none() || args.token_file.is_none() {
            read_file_settings(args.config.as_deref())?
        } else {
            FileSettings::default()
        };
        let url = args.gateway_url.clone().or(file.url).ok_or_else(|| {
            ClientError::Usage(
                "no gateway URL: pass --gateway-url URL, set FERRY_GATEWAY_URL, or set `url` \
                 under [gateway] in ferry's config file"
                    .into(),
            )
        })?;
        let token = read_token(args.token_file.as_deref(), file.token_file.as_deref())?;
        let authority = parse_gateway_url(&url)?;
        let addrs: Vec<SocketAddr> = with_default_port(&authority)
            .to_socket_addrs()
            .map_err(|e| ClientError::Usage(format!("gateway URL {url:?}: {e}")))?
            .collect();
        Ok(Api {
            addrs,
            authority,
            token,
        })
    }

    // One request; the JSON answer, or the gateway's reason for refusing it.
    fn call(&self, method: Method, path: &str, body: Option<String>) -> Result<Value, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Failed(format!("cannot start the runtime: {e}")))?;
        let (status, bytes) = runtime
            .block_on(async {
                tokio::time::timeout(REQUEST_TIMEOUT, self.send(method, path, body)).await
            })
            .map_err(|_| {
                ClientError::Failed(format!(
                    "the gateway at {} did not answer within {} s",
                    self.authority,
                    REQUEST_TIMEOUT.as_secs()
                ))
            })??;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let reason = value["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
        Err(ClientError::Failed(match status {
            StatusCode::UNAUTHORIZED => format!(
                "the gateway did not accept the API token (HTTP 401); check --token-file or \
                 FERRY_TOKEN: {reason}"
            ),
            _ => format!("the gateway refused: {reason} (HTTP {})", status.as_u16()),
        }))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let failed = |e: &dyn std::fmt::Display| {
            ClientError::Failed(format!(
                "cannot reach the gateway at {}: {e}",
                self.authority
            ))
        };
        let stream = connect_any(&self.addrs).await.map_err(|e| failed(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(&e))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Usage(format!("cannot build the request: {e}")))?;
        let resp = sender.send_request(req).await.map_err(|e| failed(&e))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), ANSWER_LIMIT_BYTES)
            .collect()
            .await
            .map_err(|e| failed(&e))?
            .to_bytes();
        Ok((status, bytes))
    }
}

#[derive(Default, Deserialize)]
struct FileSettings {
    url: Option<String>,
    token_file: Option<PathBuf>,
}

// The `[gateway]` table of ferry's config file; other tables are not read here. A file that
// does not exist counts as empty unless it was named explicitly.
fn read_file_settings(named: Option<&Path>) -> Result<FileSettings, ClientError> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        gateway: Option<Table>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Table {
        url: Option<String>,
        token_file: Option<PathBuf>,
    }
    let Some(path) = named
        .map(Path::to_owned)
        .or_else(ferry_dataplane::config::default_path)
    else {
        return Ok(FileSettings::default());
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && named.is_none() => {
            return Ok(FileSettings::default());
        }
        Err(e) => {
            return Err(ClientError::Usage(format!(
                "cannot read config file {}: {e}",
                path.display()
            )));
        }
    };
    let file: File = toml::from_str(&text).map_err(|e| {
        ClientError::Usage(format!(
            "invalid config file {}: {}",
            path.display(),
            e.message()
        ))
    })?;
    let table = file.gateway.unwrap_or(Table {
        url: None,
        token_file: None,
    });
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(FileSettings {
        url: table.url,
        token_file: table.token_file.map(|f| base.join(f)),
    })
}

// The token: --token-file, else $FERRY_TOKEN, else the config file's token_file.
fn read_token(flag: Option<&Path>, from_file: Option<&Path>) -> Result<String, ClientError> {
    let env = std::env::var("FERRY_TOKEN").ok().filter(|t| !t.is_empty());
    let token = match (flag, env, from_file) {
        (Some(path), _, _) => read_token_file(path)?,
        (None, Some(token), _) => token,
        (None, None, Some(path)) => read_token_file(path)?,
        (None, None, None) => {
            return Err(ClientError::Usage(
                "no API token: pass --token-file FILE, set FERRY_TOKEN, or set `token_file` \
                 under [gateway] in ferry's config file"
                    .into(),
            ));
        }
    };
    let token = token.trim().to_owned();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ClientError::Usage(
            "the API token is empty or has spaces or non-ASCII characters".into(),
        ));
    }
    Ok(token)
}

fn read_token_file(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path)
        .map_err(|e| ClientError::Usage(format!("cannot read token file {}: {e}", path.display())))
}

/// The `HOST[:PORT]` of a gateway URL, which must be `http://HOST[:PORT][/]`.
pub fn parse_gateway_url(url: &str) -> Result<String, ClientError> {
    let refuse = |why: &str| ClientError::Usage(format!("gateway URL {url:?}: {why}"));
    if url
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    {
        return Err(refuse(
            "https:// gateway URLs are not supported yet; use the gateway's http:// address",
        ));
    }
    let rest = url
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .and_then(|_| url.get(7..))
        .ok_or_else(|| refuse("expected http://HOST[:PORT]"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let valid = |b: u8| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b);
    if authority.is_empty() || !authority.bytes().all(valid) {
        return Err(refuse("expected http://HOST[:PORT] with no path"));
    }
    Ok(authority.to_ascii_lowercase())
}

// `host` alone means port 80.
fn with_default_port(authority: &str) -> String {
    let has_port = match authority.rsplit_once(':') {
        Some((_, port)) => !port.contains(']'),
        None => false,
    };
    if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    }
}

async fn connect_any(addrs: &[SocketAddr]) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

// A workspace name as one path segment (names are checked by the gateway; this only keeps a
// stray `/` or `?` from changing the path).
fn segment(name: &str) -> String {
    crate::pages::percent_encode(name)
}

fn array(value: &Value) -> Vec<Value> {
    value.as_array().cloned().unwrap_or_default()
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const ANSWER_LIMIT_BYTES: usize = 4 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls_must_be_plain_http_without_a_path() {
        assert_eq!(
            parse_gateway_url("http://Apps.Example.Test:8080/")
                .ok()
                .unwrap(),
            "apps.example.test:8080"
        );
        assert_eq!(
            parse_gateway_url("http://[::1]:80").ok().unwrap(),
            "[::1]:80"
        );
        for bad in [
            "https://x",
            "ftp://x",
            "x:80",
            "http://",
            "http://x/api",
            "http://a b",
        ] {
            assert!(
                matches!(parse_gateway_url(bad), Err(ClientError::Usage(_))),
                "{bad}"
            );
        }
        assert_eq!(with_default_port("x"), "x:80");
        assert_eq!(with_default_port("[::1]"), "[::1]:80");
        assert_eq!(with_default_port("[::1]:9"), "[::1]:9");
    }
}
