//! A real gateway, a real agent and a real app, all on loopback, for end-to-end tests.
//!
//! The agent runs in-process on its own thread (ferry's epoll backend); the app is a small
//! hyper server on the agent's side of the tunnel; the gateway runs on a multi-threaded tokio
//! runtime. App hosts resolve by sending the `Host` header to 127.0.0.1. Everything stops when
//! the [`Harness`] drops, and its temporary folder is removed.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ferry_crypto::keys::PrivateKey;
use ferry_dataplane::agent::{AGENT_ADDRS, AgentConfig, AgentPeer};
use ferry_dataplane::io::{Backend, LocalIo, RunWith};
use ferry_gateway::{Config, Gateway};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

pub const DOMAIN: &str = "apps.test:8080";
pub const ALICE: &str = "alice-token";
pub const BOB: &str = "bob-token";
pub const CAROL: &str = "carol-token";
/// Every request in these tests finishes within this or fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Harness {
    pub dir: PathBuf,
    pub app_port: u16,
    pub gateway: SocketAddr,
    pub rt: Option<tokio::runtime::Runtime>,
    agent_stop: Option<oneshot::Sender<()>>,
    app_stop: Option<oneshot::Sender<()>>,
    /// The gateway's config; edit it and call [`Harness::start_gateway`] to apply.
    pub config_text: String,
}

impl Harness {
    pub fn start(name: &str) -> Harness {
        let dir = std::env::temp_dir().join(format!("ferry-gw-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let gateway_key = PrivateKey::generate();
        let agent_key = PrivateKey::generate();
        std::fs::write(dir.join("gw.key"), gateway_key.to_base64()).unwrap();

        let (agent_addr, agent_stop) = start_agent(&agent_key, &gateway_key);
        let (app_port, app_stop) = start_app();
        let config_text = config_text("127.0.0.1:0", DOMAIN, agent_addr, &agent_key);
        let mut h = Harness {
            dir,
            app_port,
            gateway: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            rt: None,
            agent_stop: Some(agent_stop),
            app_stop: Some(app_stop),
            config_text,
        };
        h.start_gateway();
        h
    }

    /// Starts (or starts again) the gateway from the same config and database.
    pub fn start_gateway(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        let config = Config::parse(&self.config_text, &self.dir).unwrap();
        let gateway = Gateway::new(config).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .unwrap();
        self.gateway = listener.local_addr().unwrap();
        rt.spawn(gateway.serve(listener));
        self.rt = Some(rt);
    }

    pub fn app_host(&self, user: &str, workspace: &str) -> String {
        format!("{}--main--{workspace}--{user}.{DOMAIN}", self.app_port)
    }

    /// Sends one request to the gateway and collects the response.
    pub fn send(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let req = build(method, host, path, headers, Full::new(Bytes::from(body)));
        let rt = self.rt.as_ref().unwrap();
        rt.block_on(async {
            tokio::time::timeout(REQUEST_TIMEOUT, async {
                let resp = send(self.gateway, req).await;
                let (parts, body) = resp.into_parts();
                let body = body.collect().await.unwrap().to_bytes().to_vec();
                Reply {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body,
                }
            })
            .await
            .expect("request timed out")
        })
    }

    /// Upgrades to `protocol` through the gateway, then sends `message` and reads it back.
    pub fn upgrade_echo(&self, host: &str, protocol: &str, message: &[u8]) -> (u16, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let auth = format!("Bearer {ALICE}");
        let headers = [
            ("authorization", auth.as_str()),
            ("connection", "Upgrade"),
            ("upgrade", protocol),
        ];
        let req = build("GET", host, "/ws", &headers, Full::new(Bytes::new()));
        self.rt.as_ref().unwrap().block_on(async {
            tokio::time::timeout(REQUEST_TIMEOUT, async {
                let stream = tokio::net::TcpStream::connect(self.gateway).await.unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn.with_upgrades());
                let resp = sender.send_request(req).await.unwrap();
                let status = resp.status().as_u16();
                let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
                io.write_all(message).await.unwrap();
                let mut back = vec![0u8; message.len()];
                io.read_exact(&mut back).await.unwrap();
                (status, back)
            })
            .await
            .expect("upgrade timed out")
        })
    }

    pub fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", host, path, headers, Vec::new())
    }

    /// An API call as `token`.
    pub fn api(&self, method: &str, path: &str, token: &str, body: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.send(
            method,
            DOMAIN,
            path,
            &[("authorization", &auth)],
            body.as_bytes().to_vec(),
        )
    }

    pub fn share(&self, workspace: &str, port: u16, level: &str) -> Reply {
        let path = format!("/api/v1/workspaces/{workspace}/shares/{port}");
        self.api("PUT", &path, ALICE, &format!("{{\"level\":\"{level}\"}}"))
    }

    /// Downloads `bytes` through the app, hashing as frames arrive; returns (count, sha256).
    pub fn download(&self, host: &str, bytes: u64) -> (u64, [u8; 32]) {
        let path = format!("/download?n={bytes}");
        let auth = format!("Bearer {ALICE}");
        let req = build(
            "GET",
            host,
            &path,
            &[("authorization", &auth)],
            Full::new(Bytes::new()),
        );
        self.rt.as_ref().unwrap().block_on(async {
            tokio::time::timeout(REQUEST_TIMEOUT, async {
                let mut body = send(self.gateway, req).await.into_body();
                let (mut n, mut hasher) = (0u64, Sha256::new());
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.unwrap().into_data() {
                        n += data.len() as u64;
                        hasher.update(&data);
                    }
                }
                (n, hasher.finalize().into())
            })
            .await
            .expect("download timed out")
        })
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        if let Some(s) = self.agent_stop.take() {
            let _ = s.send(());
        }
        if let Some(s) = self.app_stop.take() {
            let _ = s.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

/// The expected SHA-256 of the app's `/download?n=bytes`.
pub fn pattern_digest(bytes: u64) -> [u8; 32] {
    let mut body = PatternBody {
        left: bytes,
        state: 1,
    };
    let mut hasher = Sha256::new();
    while let Some(chunk) = body.next_chunk() {
        hasher.update(&chunk);
    }
    hasher.finalize().into()
}

fn build<B>(method: &str, host: &str, path: &str, headers: &[(&str, &str)], body: B) -> Request<B> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(body).unwrap()
}

async fn send<B>(gateway: SocketAddr, req: Request<B>) -> Response<Incoming>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender.send_request(req).await.unwrap()
}

/// The test deployment: alice owns `ws` (on the real agent, template cap public) and `capped`
/// (cap authenticated), bob owns `bobs`, carol's long names leave little room in a label.
pub fn config_text(
    listen: &str,
    domain: &str,
    agent: SocketAddr,
    agent_key: &PrivateKey,
) -> String {
    let hash = |t: &str| -> String {
        Sha256::digest(t.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let public = agent_key.public_key();
    // Only `ws` reaches the real agent; the others exist for API rules and never dial (each
    // names an agent of its own: one agent in two workspaces is refused).
    let other = || PrivateKey::generate().public_key();
    format!(
        r#"
listen = "{listen}"
app_domain = "{domain}"
private_key_file = "gw.key"
database = "shares.sqlite"

[[users]]
name = "alice"
token_sha256 = "{alice}"
[[users]]
name = "bob"
token_sha256 = "{bob}"
[[users]]
name = "carol-with-a-long-name"
token_sha256 = "{carol}"

[templates.open]
max_share_level = "public"
[templates.team]
max_share_level = "authenticated"
default_owner = "alice"

[[workspaces]]
name = "ws"
owner = "alice"
agent = "main"
endpoint = "{agent}"
public_key = "{public}"
template = "open"

[[workspaces]]
name = "capped"
agent = "main"
endpoint = "127.0.0.1:9"
public_key = "{capped_key}"
template = "team"

[[workspaces]]
name = "bobs"
owner = "bob"
agent = "main"
endpoint = "127.0.0.1:9"
public_key = "{bobs_key}"
template = "open"

[[workspaces]]
name = "a-workspace-name-of-26-chr"
owner = "carol-with-a-long-name"
agent = "main"
endpoint = "127.0.0.1:9"
public_key = "{carol_key}"
template = "open"
"#,
        alice = hash(ALICE),
        bob = hash(BOB),
        carol = hash(CAROL),
        capped_key = other(),
        bobs_key = other(),
        carol_key = other(),
    )
}

// ---- the agent ----

fn start_agent(
    agent_key: &PrivateKey,
    gateway_key: &PrivateKey,
) -> (SocketAddr, oneshot::Sender<()>) {
    let config = AgentConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        private_key: agent_key.clone(),
        peers: vec![AgentPeer {
            public_key: gateway_key.public_key(),
            preshared_key: None,
        }],
        mtu: 1420,
        addrs: AGENT_ADDRS,
        healthchecks: Vec::new(),
    };
    let (tx, rx) = mpsc::channel();
    let (stop_tx, stop) = oneshot::channel();
    std::thread::spawn(move || {
        ferry_dataplane::io::run(Backend::Epoll, AgentThread { config, tx, stop })
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    (addr, stop_tx)
}

struct AgentThread {
    config: AgentConfig,
    tx: mpsc::Sender<SocketAddr>,
    stop: oneshot::Receiver<()>,
}

impl RunWith for AgentThread {
    type Output = ();

    async fn run<L: LocalIo>(self) {
        let engine = ferry_dataplane::agent::start::<L>(self.config).unwrap();
        self.tx.send(engine.local_addr().unwrap()).unwrap();
        let _ = self.stop.await;
    }
}

// ---- the app, on the agent's side ----

fn start_app() -> (u16, oneshot::Sender<()>) {
    let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let port = std_listener.local_addr().unwrap().port();
    let (stop_tx, mut stop) = oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = &mut stop => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
    });
    (port, stop_tx)
}

type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

// `/download?n=N` streams N pattern bytes; `/upload` answers the SHA-256 of the body;
// anything else echoes the request line and headers. Every answer carries the app's own CORS
// grants and a Vary, which the gateway must rewrite.
pub async fn app(mut req: Request<Incoming>) -> Result<Response<AppBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/ws" {
        return Ok(accept_upgrade(&mut req));
    }
    let body: AppBody = if path == "/download" {
        let n = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("n="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        PatternBody { left: n, state: 1 }.boxed()
    } else if path == "/upload" {
        let mut body = req.into_body();
        let mut hasher = Sha256::new();
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                hasher.update(&data);
            }
        }
        let hex: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Full::new(Bytes::from(hex)).boxed()
    } else {
        let mut text = format!("{} {}\n", req.method(), req.uri());
        for (k, v) in req.headers() {
            text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
        }
        Full::new(Bytes::from(text)).boxed()
    };
    let mut resp = Response::builder();
    if path == "/toss" {
        // An app that tries to overwrite the gateway's session cookie (cookie tossing).
        resp = resp
            .header(
                "set-cookie",
                "ferry_session=tossed; Domain=apps.test; Path=/",
            )
            .header("set-cookie", "FERRY_SESSION=tossed")
            .header("set-cookie", "app=1; Path=/");
    }
    let resp = resp
        .header("access-control-allow-origin", "*")
        .header("access-control-allow-methods", "GET, POST")
        .header("access-control-expose-headers", "x-app")
        .header("vary", "Accept-Encoding, Origin")
        .header("x-app", "1")
        .body(body)
        .unwrap();
    Ok(resp)
}

// Answers an upgrade with 101 and then echoes raw bytes (a stand-in for a WebSocket echo: the
// gateway only splices bytes, so frames need no codec here).
fn accept_upgrade(req: &mut Request<Incoming>) -> Response<AppBody> {
    let asked = req
        .headers()
        .get("upgrade")
        .map(|v| v.to_str().unwrap().to_owned());
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let upgraded = on_upgrade.await.unwrap();
        let mut io = TokioIo::new(upgraded);
        let (mut r, mut w) = tokio::io::split(&mut io);
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", asked.unwrap_or_default())
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

/// A deterministic byte stream (xorshift) in 64 KiB frames, generated as it is sent.
struct PatternBody {
    left: u64,
    state: u64,
}

impl PatternBody {
    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.left == 0 {
            return None;
        }
        let n = self.left.min(64 * 1024) as usize;
        let mut buf = vec![0u8; n];
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes()[..chunk.len()]);
        }
        self.left -= n as u64;
        Some(Bytes::from(buf))
    }
}

impl hyper::body::Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.next_chunk().map(|b| Ok(Frame::data(b))))
    }
}
