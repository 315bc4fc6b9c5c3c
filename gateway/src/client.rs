//! `ferry share` and `ferry unshare`: a command-line client of the gateway's share API.
//!
//! - `share WORKSPACE PORT --level LEVEL [--protocol http|https]`: sets a port's share;
//! - `share ls [WORKSPACE]`: lists the shares of one workspace, or of every workspace the
//!   caller owns;
//! - `unshare WORKSPACE PORT`: back to the owner level.
//!
//! The gateway's URL comes from `--gateway-url`, else `$FERRY_GATEWAY_URL`, else the `url` of
//! the `[gateway]` table in ferry's config file; the API token from `--token-file`, else
//! `$FERRY_TOKEN`, else that table's `token_file`.
//!
//! An `https://` gateway URL is reached over TLS and the gateway's certificate is verified, chain
//! and name, because the token travels over that connection. It is trusted when the system's
//! certificate store vouches for it, or a CA from `--ca-file`, else `$FERRY_GATEWAY_CA`, else
//! that table's `ca_file`.
//!
//! A missing setting, a malformed argument or an unusable CA file is a usage error (exit 2); a
//! request the gateway refuses prints the gateway's reason and exits 1, and so does a gateway
//! certificate that is not trusted.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use crate::access::ShareLevel;
use crate::store::Protocol;

/// Where the gateway is and who is asking.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// The gateway's base URL, e.g. `https://apps.example.test` (else `url` under
    /// `[gateway]` in ferry's config file).
    #[arg(long, value_name = "URL", env = "FERRY_GATEWAY_URL", global = true)]
    gateway_url: Option<String>,
    /// A file holding the API token (else `$FERRY_TOKEN`, else `token_file` under `[gateway]`
    /// in ferry's config file).
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
    /// A PEM file of CA certificates trusted for an `https://` gateway, besides the system's
    /// (else `ca_file` under `[gateway]` in ferry's config file).
    #[arg(long, value_name = "FILE", env = "FERRY_GATEWAY_CA", global = true)]
    ca_file: Option<PathBuf>,
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

// The gateway's API, reached over HTTP or HTTPS.
struct Api {
    addrs: Vec<SocketAddr>,
    authority: String,
    token: String,
    // For an `https://` gateway: the TLS client and the name its certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Api {
    fn from_args(args: &GatewayArgs) -> Result<Api, ClientError> {
        // The file settings are read only when a flag or variable is missing.
        let https_flag = args.gateway_url.as_deref().is_some_and(is_https);
        let file = if args.gateway_url.is_none()
            || args.token_file.is_none()
            || (https_flag && args.ca_file.is_none())
        {
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
        let GatewayUrl { https, authority } = parse_gateway_url(&url)?;
        let default_port = if https { 443 } else { 80 };
        let addrs: Vec<SocketAddr> = with_default_port(&authority, default_port)
            .to_socket_addrs()
            .map_err(|e| ClientError::Usage(format!("gateway URL {url:?}: {e}")))?
            .collect();

        // HTTPS: the system's roots and the extra CA file, if any.
        let tls = if https {
            let ca_file = args.ca_file.as_deref().or(file.ca_file.as_deref());
            let name = ServerName::try_from(host_of(&authority).to_owned())
                .map_err(|e| ClientError::Usage(format!("gateway URL {url:?}: {e}")))?;
            Some((tls_connector(ca_file)?, name))
        } else {
            None
        };
        Ok(Api {
            addrs,
            authority,
            token,
            tls,
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

        // Connect, over TLS when the URL says https.
        let stream = connect_any(&self.addrs).await.map_err(|e| failed(&e))?;
        let resp = match &self.tls {
            None => exchange(stream, req).await.map_err(|e| failed(&e))?,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| self.tls_failed(e))?;
                exchange(stream, req).await.map_err(|e| failed(&e))?
            }
        };
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), ANSWER_LIMIT_BYTES)
            .collect()
            .await
            .map_err(|e| failed(&e))?
            .to_bytes();
        Ok((status, bytes))
    }

    // A failed TLS handshake; an untrusted certificate says how to trust it.
    fn tls_failed(&self, e: std::io::Error) -> ClientError {
        let rejected = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
        let authority = &self.authority;
        if rejected {
            return ClientError::Failed(format!(
                "the certificate of the gateway at {authority} was not trusted ({e}); if a CA \
                 of your own signed it, pass --ca-file FILE with that CA (or set \
                 FERRY_GATEWAY_CA, or `ca_file` under [gateway] in ferry's config file)"
            ));
        }
        ClientError::Failed(format!(
            "cannot reach the gateway at {authority}: TLS handshake failed: {e}"
        ))
    }
}

// One HTTP/1.1 request on an open connection.
async fn exchange<S>(
    stream: S,
    req: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    sender.send_request(req).await
}

// A TLS client that verifies the gateway against the system's roots and `ca_file`'s.
fn tls_connector(ca_file: Option<&Path>) -> Result<TlsConnector, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: the CA file may be all that is needed, and a
    // gateway nothing vouches for fails verification with advice on --ca-file.
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|e| bad_ca_file(path, &e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Failed(format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

// The certificates of a PEM file; none at all is an error too.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad_ca_file(path, &e))?;
    if certs.is_empty() {
        return Err(bad_ca_file(path, &"it holds no PEM certificate"));
    }
    Ok(certs)
}

fn bad_ca_file(path: &Path, e: &dyn std::fmt::Display) -> ClientError {
    ClientError::Usage(format!("cannot use CA file {}: {e}", path.display()))
}

#[derive(Default, Deserialize)]
struct FileSettings {
    url: Option<String>,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
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
        ca_file: Option<PathBuf>,
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
        ca_file: None,
    });
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(FileSettings {
        url: table.url,
        token_file: table.token_file.map(|f| base.join(f)),
        ca_file: table.ca_file.map(|f| base.join(f)),
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

/// A gateway URL, parsed: `http://` or `https://`, then `HOST[:PORT]`.
#[derive(Debug, PartialEq, Eq)]
pub struct GatewayUrl {
    /// Whether the URL is `https://`.
    pub https: bool,
    /// `HOST[:PORT]`, lowercased.
    pub authority: String,
}

/// Parses a gateway URL, which must be `http://HOST[:PORT][/]` or `https://HOST[:PORT][/]`.
pub fn parse_gateway_url(url: &str) -> Result<GatewayUrl, ClientError> {
    let refuse = |why: &str| ClientError::Usage(format!("gateway URL {url:?}: {why}"));
    let (https, rest) = if is_https(url) {
        (true, url.get(8..))
    } else {
        let http = url
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("http://"));
        (false, url.get(7..).filter(|_| http))
    };
    let rest = rest.ok_or_else(|| refuse("expected http://HOST[:PORT] or https://HOST[:PORT]"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let valid = |b: u8| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b);
    if authority.is_empty() || !authority.bytes().all(valid) {
        return Err(refuse("expected http(s)://HOST[:PORT] with no path"));
    }
    Ok(GatewayUrl {
        https,
        authority: authority.to_ascii_lowercase(),
    })
}

fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

// `host` alone means the scheme's default port.
fn with_default_port(authority: &str, default_port: u16) -> String {
    if has_port(authority) {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    }
}

// The host of an authority, as a certificate names it: no port, no IPv6 brackets.
fn host_of(authority: &str) -> &str {
    let host = match authority.rsplit_once(':') {
        Some((host, _)) if has_port(authority) => host,
        _ => authority,
    };
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn has_port(authority: &str) -> bool {
    match authority.rsplit_once(':') {
        Some((_, port)) => !port.contains(']'),
        None => false,
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
    fn gateway_urls_are_http_or_https_without_a_path() {
        let url = |https, authority: &str| GatewayUrl {
            https,
            authority: authority.to_owned(),
        };
        let ok = |u: &str| parse_gateway_url(u).ok().unwrap();
        assert_eq!(
            ok("http://Apps.Example.Test:8080/"),
            url(false, "apps.example.test:8080")
        );
        assert_eq!(ok("http://[::1]:80"), url(false, "[::1]:80"));
        assert_eq!(
            ok("HTTPS://apps.example.test"),
            url(true, "apps.example.test")
        );
        assert_eq!(ok("https://[::1]:8443/"), url(true, "[::1]:8443"));
        for bad in [
            "ftp://x",
            "x:80",
            "http://",
            "https://",
            "http://x/api",
            "https://x/api",
            "http://a b",
        ] {
            assert!(
                matches!(parse_gateway_url(bad), Err(ClientError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn default_ports_and_certificate_names() {
        assert_eq!(with_default_port("x", 80), "x:80");
        assert_eq!(with_default_port("x", 443), "x:443");
        assert_eq!(with_default_port("[::1]", 443), "[::1]:443");
        assert_eq!(with_default_port("[::1]:9", 443), "[::1]:9");
        assert_eq!(host_of("apps.test:8443"), "apps.test");
        assert_eq!(host_of("apps.test"), "apps.test");
        assert_eq!(host_of("[::1]:8443"), "::1");
        assert_eq!(host_of("[::1]"), "::1");
    }

    #[test]
    fn a_ca_file_without_certificates_is_a_usage_error() {
        let dir = std::env::temp_dir().join(format!("ferry-ca-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let missing = dir.join("missing.pem");
        for path in [&empty, &missing] {
            let Err(ClientError::Usage(m)) = tls_connector(Some(path)) else {
                panic!("{} was accepted", path.display());
            };
            assert!(m.contains("cannot use CA file"), "{m}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
