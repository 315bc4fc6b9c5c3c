//! Proxying one request to an app, streaming both bodies.
//!
//! The upstream is a loopback listener of the workspace's tunnel; each request opens its own
//! HTTP/1.1 connection to it (no pooling), in TLS when the app speaks HTTPS (the `s` suffix;
//! see [`crate::tls`]). Bodies flow through as hyper streams them, never gathered whole. The
//! request loses hop-by-hop headers, the gateway's session cookie and, when the gateway used it
//! to sign the viewer in, its `Authorization` header; it gains `X-Forwarded-For`, `-Proto`
//! (`https` when browsers use HTTPS) and `-Host`. The original `Host` is kept, so apps build
//! correct absolute URLs. An upgrade (WebSocket) keeps its `Connection: upgrade` and `Upgrade`
//! headers, and after the app's 101 the two connections are spliced byte for byte.
//!
//! The app has [`Upstream::timeout`] to send its response headers. When the agent finds nothing
//! listening on the port it resets the tunnel flow, and the tunnel then resets (or, in some
//! races, closes) the loopback connection; [`ProxyError::is_no_answer`] tells the caller that
//! the app sent nothing at all, so it can ask the agent whether the port is listening.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use crate::access::SESSION_COOKIE;
use crate::pages::Body;
use crate::tls::AppTls;

/// What the proxy needs besides the request.
pub struct Upstream {
    /// The loopback address that reaches the app.
    pub addr: SocketAddr,
    /// The browser's address.
    pub client: SocketAddr,
    /// Whether `Authorization` carried the gateway's token and must not reach the app.
    pub strip_authorization: bool,
    /// Whether the browser reached the gateway over HTTPS (sets `X-Forwarded-Proto`).
    pub browser_https: bool,
    /// TLS towards the app, when it speaks HTTPS.
    pub app_tls: Option<AppTls>,
    /// How long the app may take to send its response headers.
    pub timeout: Duration,
}

/// Sends `request` to the app and returns its response, bodies streaming. An upgrade (a
/// WebSocket) that the app accepts with 101 is then spliced through in both directions.
pub async fn forward(
    mut request: Request<Incoming>,
    upstream: &Upstream,
) -> Result<Response<Body>, ProxyError> {
    // An upgrade request keeps its Upgrade header; the browser's side is taken for splicing.
    let protocol = upgrade_protocol(request.headers());
    let browser_side = protocol.is_some().then(|| hyper::upgrade::on(&mut request));
    rewrite_request(request.headers_mut(), upstream);
    if let Some(protocol) = protocol {
        let headers = request.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = path.parse().map_err(|_| ProxyError::BadPath)?;

    // One connection per request (in TLS for an HTTPS app), answered within the timeout.
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(upstream.addr)
            .await
            .map_err(ProxyError::from_connect)?;
        let _ = stream.set_nodelay(true);
        match &upstream.app_tls {
            None => send(stream, request).await,
            Some(tls) => {
                let stream = tls.connect(stream).await.map_err(ProxyError::from_tls)?;
                send(stream, request).await
            }
        }
    };
    let mut response = tokio::time::timeout(upstream.timeout, exchange)
        .await
        .map_err(|_| ProxyError::Timeout(upstream.timeout))??;
    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    match browser_side {
        Some(browser_side) if switched => splice(browser_side, &mut response),
        _ => remove_hop_by_hop(response.headers_mut()),
    }
    Ok(response.map(|b| b.boxed()))
}

// Sends the request on a new HTTP/1.1 connection over `stream`, driven by its own task.
async fn send<S>(stream: S, request: Request<Incoming>) -> Result<Response<Incoming>, ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ProxyError::from_hyper)?;
    let (ended, conn_reset) = oneshot::channel();
    tokio::spawn(async move {
        let result = conn.with_upgrades().await;
        if let Err(e) = &result {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
        let _ = ended.send(result.is_err_and(|e| is_reset(&e)));
    });
    let error = match sender.send_request(request).await {
        Ok(response) => return Ok(response),
        Err(e) => ProxyError::from_hyper(e),
    };

    // A reset may reach only the connection's task, the request then seeing "canceled".
    let reset = tokio::time::timeout(CONN_END_WAIT, conn_reset).await;
    match reset {
        Ok(Ok(true)) => Err(ProxyError::Refused),
        _ => Err(error),
    }
}

// Once both sides have switched protocols, copies bytes between them until either closes.
fn splice(browser_side: OnUpgrade, response: &mut Response<Incoming>) {
    let app_side = hyper::upgrade::on(&mut *response);
    tokio::spawn(async move {
        let (Ok(browser), Ok(app)) = (browser_side.await, app_side.await) else {
            tracing::debug!("an upgrade did not complete");
            return;
        };
        let (mut browser, mut app) = (TokioIo::new(browser), TokioIo::new(app));
        if let Err(e) = tokio::io::copy_bidirectional(&mut browser, &mut app).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}

// The protocol a request asks to upgrade to, when its Connection header says "upgrade".
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Why an app could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request target has no usable path.
    #[error("the request path is not valid")]
    BadPath,
    /// The tunnel's loopback listener refused (the tunnel thread stopped).
    #[error("cannot reach the workspace tunnel: {0}")]
    Connect(std::io::Error),
    /// The connection was reset before any answer: the agent found nothing listening on the
    /// workspace port (or the app itself reset the connection).
    #[error("the connection was reset before the app answered")]
    Refused,
    /// The TLS handshake with an HTTPS app failed (the app may speak plain HTTP: drop the `s`).
    #[error("the TLS handshake with the app failed: {0}")]
    Tls(std::io::Error),
    /// The app closed the connection or sent something that is not HTTP.
    #[error("the app did not answer: {0}")]
    Upstream(hyper::Error),
    /// The app sent no response headers in time (or the tunnel to it stalled).
    #[error("the app did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
}

impl ProxyError {
    /// Whether the app sent nothing at all before its connection ended (reset or closed), as
    /// when nothing listens on the port.
    pub fn is_no_answer(&self) -> bool {
        match self {
            ProxyError::Refused => true,
            ProxyError::Tls(e) => e.kind() == std::io::ErrorKind::UnexpectedEof,
            ProxyError::Upstream(e) => e.is_incomplete_message() || e.is_canceled(),
            ProxyError::BadPath | ProxyError::Connect(_) | ProxyError::Timeout(_) => false,
        }
    }

    fn from_hyper(e: hyper::Error) -> ProxyError {
        if is_reset(&e) {
            ProxyError::Refused
        } else {
            ProxyError::Upstream(e)
        }
    }

    // The tunnel's listener accepts at once; a reset that arrives before the connect returns is
    // the agent's answer, not the listener's.
    fn from_connect(e: std::io::Error) -> ProxyError {
        if is_reset(&e) {
            ProxyError::Refused
        } else {
            ProxyError::Connect(e)
        }
    }

    fn from_tls(e: std::io::Error) -> ProxyError {
        if is_reset(&e) {
            ProxyError::Refused
        } else {
            ProxyError::Tls(e)
        }
    }
}

// Whether an error, or one of its sources, is a connection reset.
fn is_reset(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        let Some(io) = err.downcast_ref::<std::io::Error>() else {
            next = err.source();
            continue;
        };
        if io.kind() == std::io::ErrorKind::ConnectionReset {
            return true;
        }
        // An I/O error's `source` skips the error it wraps; look at that one first.
        next = match io.get_ref() {
            Some(inner) => Some(inner),
            None => err.source(),
        };
    }
    false
}

// Removes what must not reach the app and adds the forwarding headers.
fn rewrite_request(headers: &mut HeaderMap, upstream: &Upstream) {
    remove_hop_by_hop(headers);
    strip_session_cookie(headers);
    if upstream.strip_authorization {
        headers.remove(header::AUTHORIZATION);
    }

    let host = headers.get(header::HOST).cloned();
    let client = upstream.client.ip().to_string();
    let xff = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(before) => format!("{before}, {client}"),
        None => client,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    let proto = if upstream.browser_https {
        "https"
    } else {
        "http"
    };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(h) => headers.insert(X_FORWARDED_HOST, h),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

// Keeps every cookie but the gateway's own.
fn strip_session_cookie(headers: &mut HeaderMap) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split('=').next() != Some(SESSION_COOKIE))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if kept.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
        headers.insert(header::COOKIE, v);
    }
}

// Hop-by-hop headers (RFC 9110 section 7.6.1), plus those the Connection header names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// How long a failed request waits for its connection's own error, which may be a reset.
const CONN_END_WAIT: Duration = Duration::from_secs(1);
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_loses_gateway_secrets_and_gains_forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_static("8080--a--b--c.apps.test"),
        );
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("app=1; ferry_session=s3cret; b=2"),
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok"),
        );
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        let upstream = Upstream {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            client: SocketAddr::from(([127, 0, 0, 2], 5555)),
            strip_authorization: true,
            browser_https: false,
            app_tls: None,
            timeout: Duration::from_secs(1),
        };
        rewrite_request(&mut h, &upstream);
        assert_eq!(h[header::COOKIE], "app=1; b=2");
        assert!(!h.contains_key(header::AUTHORIZATION));
        assert!(!h.contains_key("x-private"));
        assert!(!h.contains_key(header::CONNECTION));
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, 127.0.0.2");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "8080--a--b--c.apps.test");

        let https = Upstream {
            browser_https: true,
            ..upstream
        };
        rewrite_request(&mut h, &https);
        assert_eq!(h[X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn resets_are_found_among_error_sources() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(is_reset(&reset));
        let wrapped = std::io::Error::other(reset);
        assert!(is_reset(&wrapped));
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert!(!is_reset(&eof));
        assert!(matches!(ProxyError::from_tls(wrapped), ProxyError::Refused));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(
            ProxyError::from_connect(refused),
            ProxyError::Connect(_)
        ));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(matches!(
            ProxyError::from_connect(reset),
            ProxyError::Refused
        ));
        let eof = ProxyError::from_tls(eof);
        assert!(matches!(eof, ProxyError::Tls(_)));
        assert!(eof.is_no_answer());
        let bad = std::io::Error::from(std::io::ErrorKind::InvalidData);
        assert!(!ProxyError::from_tls(bad).is_no_answer());
        assert!(!ProxyError::Timeout(Duration::from_secs(1)).is_no_answer());
    }

    #[test]
    fn only_cookie_being_the_gateways_removes_the_header() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("ferry_session=s3cret"),
        );
        strip_session_cookie(&mut h);
        assert!(!h.contains_key(header::COOKIE));
    }
}
