//! Helpers for the TLS, WebSocket and session tests, beside the shared harness in `common`:
//! certificates made at test time, a rustls client that trusts one, requests over TLS, and
//! small servers on the agent's side (loopback) that stop when dropped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::common::{DOMAIN, Harness, REQUEST_TIMEOUT, Reply};

/// A self-signed certificate and its key, as PEM and DER.
pub struct Cert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

/// A new self-signed certificate for `names`.
pub fn self_signed(names: &[&str]) -> Cert {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let pair = rcgen::generate_simple_self_signed(names).unwrap();
    Cert {
        cert_pem: pair.cert.pem(),
        key_pem: pair.signing_key.serialize_pem(),
        der: pair.cert.der().clone(),
    }
}

/// The app domain without its port, as certificates and SNI name it.
pub fn domain_name() -> &'static str {
    DOMAIN.split(':').next().unwrap()
}

/// Adds top-level keys to the harness's config (they must come before its tables).
pub fn add_config(h: &mut Harness, lines: &str) {
    let anchor = "database = \"shares.sqlite\"\n";
    assert!(h.config_text.contains(anchor));
    h.config_text = h.config_text.replace(anchor, &format!("{anchor}{lines}\n"));
}

/// Restarts the harness's gateway serving HTTPS with a new certificate for the app domain and
/// its wildcard; returns a client that trusts it.
pub fn enable_tls(h: &mut Harness) -> TlsConnector {
    let wildcard = format!("*.{}", domain_name());
    let cert = self_signed(&[domain_name(), &wildcard]);
    std::fs::write(h.dir.join("gw.crt"), &cert.cert_pem).unwrap();
    std::fs::write(h.dir.join("gw-key.pem"), &cert.key_pem).unwrap();
    add_config(h, "tls_cert = \"gw.crt\"\ntls_key = \"gw-key.pem\"");
    h.start_gateway();
    client_trusting(&cert.der)
}

/// A rustls client (ring) that trusts only `cert`.
pub fn client_trusting(cert: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Opens a TLS connection to the gateway, naming `host` (its port dropped) in SNI.
pub async fn tls_connect(
    gateway: SocketAddr,
    tls: &TlsConnector,
    host: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = host.split(':').next().unwrap().to_owned();
    let tcp = TcpStream::connect(gateway).await?;
    tls.connect(ServerName::try_from(name).unwrap(), tcp).await
}

/// Sends one request to the gateway over TLS and collects the response.
pub fn tls_send(
    h: &Harness,
    tls: &TlsConnector,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    h.rt.as_ref().unwrap().block_on(async {
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            let stream = tls_connect(h.gateway, tls, host).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let resp = sender.send_request(req).await.unwrap();
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

/// A GET over TLS.
pub fn tls_get(h: &Harness, tls: &TlsConnector, host: &str, path: &str, auth: &str) -> Reply {
    let bearer = format!("Bearer {auth}");
    tls_send(
        h,
        tls,
        "GET",
        host,
        path,
        &[("authorization", &bearer)],
        Vec::new(),
    )
}

/// A server on the agent's side: a loopback listener whose connections each run `handler` on
/// the server's own thread and runtime. Dropping it stops the runtime and every connection.
pub struct SideServer {
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SideServer {
    pub fn start<F, Fut>(handler: F) -> SideServer
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let (stop_tx, mut stop) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
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
                    if let Ok((stream, _)) = accepted {
                        tokio::spawn(handler(stream));
                    }
                }
            });
        });
        SideServer {
            port,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for SideServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The harness's test app (echo, `/download`, `/upload`) behind TLS with a self-signed
/// certificate for `localhost`, as an HTTPS-only development server would be.
pub fn https_app() -> SideServer {
    let cert = self_signed(&["localhost"]);
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    SideServer::start(move |stream| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let sni = stream.get_ref().1.server_name().map(str::to_owned);
            let service = hyper::service::service_fn(move |req| {
                let sni = sni.clone();
                async move {
                    let mut resp = crate::common::app(req).await?;
                    let seen = sni.unwrap_or_else(|| "none".into());
                    resp.headers_mut().insert(
                        "x-sni",
                        hyper::header::HeaderValue::from_str(&seen).unwrap(),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        }
    })
}

/// A server that accepts connections and never answers (until it is dropped, or a minute).
pub fn silent_app() -> SideServer {
    SideServer::start(|stream| async move {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        drop(stream);
    })
}

/// A server that closes every connection at once, without a word.
pub fn closing_app() -> SideServer {
    SideServer::start(|stream| async move { drop(stream) })
}

/// A WebSocket echo server: every text or binary message comes back as it was.
pub fn websocket_echo() -> SideServer {
    use futures_util::{SinkExt, StreamExt};
    SideServer::start(|stream| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(message)) = ws.next().await {
            let data = message.is_text() || message.is_binary();
            if data && ws.send(message).await.is_err() {
                return;
            }
        }
    })
}
