//! The HTTP front: routes each request by its `Host` to the gateway's own pages and API (the
//! app domain itself) or to an app (one label under it). With a configured certificate every
//! browser connection is TLS first (see [`crate::tls`]).

use std::net::SocketAddr;
use std::sync::Arc;

use ferry_crypto::keys::PrivateKey;
use ferry_dataplane::ports::PORTS_PORT;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::access::{Access, SESSION_COOKIE, ShareLevel, decide, user_by_token};
use crate::config::{Config, Workspace};
use crate::cors;
use crate::health::Listing;
use crate::host::{AppHost, HostError, Name};
use crate::pages::{self, Body};
use crate::proxy::{self, ProxyError, Upstream};
use crate::sessions::Sessions;
use crate::store::{Store, StoreError};
use crate::tls::{AppTls, TlsError, browser_acceptor};
use crate::tunnels::{TunnelError, Tunnels};

/// A running gateway's shared state.
pub struct Gateway {
    pub(crate) config: Config,
    pub(crate) store: Store,
    sessions: Sessions,
    tunnels: Tunnels,
    browser_tls: Option<TlsAcceptor>,
    app_tls: AppTls,
}

impl Gateway {
    /// Reads the gateway's key and TLS files and opens its database.
    pub fn new(config: Config) -> Result<Arc<Gateway>, StartError> {
        let key = PrivateKey::from_file(&config.private_key_file)
            .map_err(|e| StartError::Key(e.to_string()))?;
        let browser_tls = config.tls.as_ref().map(browser_acceptor).transpose()?;
        let store = Store::open(&config.database)?;
        let sessions = Sessions::open(&config.database, config.session_lifetime)?;
        Ok(Arc::new(Gateway {
            config,
            store,
            sessions,
            tunnels: Tunnels::new(key),
            browser_tls,
            app_tls: AppTls::new()?,
        }))
    }

    /// Serves browsers on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, client) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let gateway = self.clone();
            tokio::spawn(async move {
                let Some(tls) = gateway.browser_tls.clone() else {
                    return gateway.serve_connection(stream, client).await;
                };
                let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream));
                match handshake.await {
                    Ok(Ok(stream)) => gateway.serve_connection(stream, client).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, %client, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%client, "TLS handshake timed out"),
                }
            });
        }
    }

    // Serves HTTP/1.1 (with upgrades) on one browser connection until it ends.
    async fn serve_connection<S>(self: Arc<Self>, stream: S, client: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let header_read_timeout = self.config.header_read_timeout;
        let service = hyper::service::service_fn(move |req| {
            let gateway = self.clone();
            async move { Ok::<_, std::convert::Infallible>(gateway.handle(req, client).await) }
        });
        // A connection that does not finish its request headers in time is closed.
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "browser connection ended with an error");
        }
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        let host = request_host(&req).to_ascii_lowercase();
        if host == self.config.app_domain {
            return self.handle_own(req).await;
        }
        match AppHost::parse(&host, &self.config.app_domain) {
            Ok(app) => self.handle_app(req, app, client).await,
            Err(HostError::NotUnderAppDomain) => pages::page(
                StatusCode::BAD_REQUEST,
                "Not an app address",
                &format!(
                    "This gateway serves apps at PORT--AGENT--WORKSPACE--USER.{}; \
                     the host `{host}` is not one of them.",
                    self.config.app_domain
                ),
            ),
            Err(e) => pages::page(
                StatusCode::BAD_REQUEST,
                "Malformed app address",
                &e.to_string(),
            ),
        }
    }

    // The gateway's own pages and API, on the app domain itself.
    async fn handle_own(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        if let Err(e) = self.check_cross_site(&req) {
            return self.cross_site(&e);
        }
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/signin") => {
                let back = req
                    .uri()
                    .query()
                    .and_then(|q| pages::form_value(q, "return"));
                pages::sign_in(StatusCode::OK, &self.safe_return(back.as_deref()), None)
            }
            (Method::POST, "/signin") => self.handle_sign_in(req).await,
            (Method::GET, "/signout") => pages::sign_out(),
            (Method::POST, "/signout") => self.handle_sign_out(&req),
            (_, p) if p.starts_with("/api/") => crate::api::handle(self, req).await,
            (_, p) if p.starts_with("/workspaces/") => crate::dashboard::handle(self, req).await,
            _ => pages::page(StatusCode::NOT_FOUND, "Not found", "There is nothing here."),
        }
    }

    // A state-changing request to the dashboard that rides on the session cookie must come
    // from the dashboard's own pages (see [`crate::csrf`]). Not checked: safe methods; the API
    // (it takes only `Authorization: Bearer`, which no other page can make a browser send);
    // requests with a valid bearer token; requests without a session cookie, which the
    // dashboard refuses anyway; and sign-in, which needs the user's secret token, so another
    // page can at worst sign a browser in as the page's author (and the sign-in form is meant
    // to be postable from a local page or a portal).
    fn check_cross_site(&self, req: &Request<Incoming>) -> Result<(), crate::csrf::CrossSite> {
        let path = req.uri().path();
        let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        let exempt = path == "/signin" || path.starts_with("/api/");
        let by_cookie = pages::cookie(req.headers(), SESSION_COOKIE).is_some();
        if safe || exempt || !by_cookie || self.viewer(req.headers()).1 {
            return Ok(());
        }
        let origin = crate::csrf::origin(self.config.scheme(), &self.config.app_domain);
        crate::csrf::check(req.headers(), &origin)
    }

    // The page for a refused cross-site request.
    fn cross_site(&self, e: &crate::csrf::CrossSite) -> Response<Body> {
        tracing::debug!(error = %e, "cross-site request refused");
        let home = crate::csrf::origin(self.config.scheme(), &self.config.app_domain);
        pages::page(
            StatusCode::FORBIDDEN,
            "Request refused",
            &format!(
                "Nothing was changed: {e}. The gateway accepts this form only from its own \
                 pages at {home}/; open it there to try again."
            ),
        )
    }

    // A sign-in form post: on a valid token, a session cookie and a redirect back.
    async fn handle_sign_in(&self, req: Request<Incoming>) -> Response<Body> {
        let form = match pages::read_form(req).await {
            Ok(form) => form,
            Err(too_large) => return too_large,
        };
        let back = self.safe_return(pages::form_value(&form, "return").as_deref());
        let token = pages::form_value(&form, "token").unwrap_or_default();
        let Some(user) = user_by_token(&self.config.users, &token) else {
            let error = Some("That token is not valid.");
            return pages::sign_in(StatusCode::UNAUTHORIZED, &back, error);
        };
        let id = match self.sessions.start(&user.name) {
            Ok(id) => id,
            Err(e) => return store_failure(&e),
        };
        let max_age = self.sessions.lifetime().as_secs();
        let mut response = pages::redirect(StatusCode::SEE_OTHER, &back);
        self.set_session_cookie(&mut response, &id, max_age);
        response
    }

    // A sign-out form post: the session ends in the database and the cookie is cleared.
    fn handle_sign_out(&self, req: &Request<Incoming>) -> Response<Body> {
        let id = pages::cookie(req.headers(), SESSION_COOKIE);
        if let Err(e) = id.map(|id| self.sessions.end(&id)).transpose() {
            return store_failure(&e);
        }
        let signin = format!(
            "{}://{}/signin",
            self.config.scheme(),
            self.config.app_domain
        );
        let mut response = pages::redirect(StatusCode::SEE_OTHER, &signin);
        self.set_session_cookie(&mut response, "", 0);
        response
    }

    // The session cookie for the app domain and its apps; `Secure` when browsers use HTTPS.
    fn set_session_cookie(&self, response: &mut Response<Body>, id: &str, max_age_s: u64) {
        let secure = if self.config.tls.is_some() {
            "; Secure"
        } else {
            ""
        };
        let cookie = format!(
            "{SESSION_COOKIE}={id}; Domain={}; Path=/; Max-Age={max_age_s}; HttpOnly; \
             SameSite=Lax{secure}",
            self.config.cookie_domain()
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, v);
        }
    }

    // Only the gateway's own URLs are valid return targets (no open redirect).
    fn safe_return(&self, back: Option<&str>) -> String {
        let domain = &self.config.app_domain;
        let scheme = self.config.scheme();
        let home = format!("{scheme}://{domain}/");
        let Some(back) = back else { return home };
        let Some(rest) = back
            .strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("://"))
        else {
            return home;
        };
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let ours = host.eq_ignore_ascii_case(domain) || AppHost::parse(host, domain).is_ok();
        if ours { back.to_owned() } else { home }
    }

    // A request for an app: CORS preflight, access decision, then the proxy.
    async fn handle_app(
        &self,
        req: Request<Incoming>,
        app: AppHost,
        client: SocketAddr,
    ) -> Response<Body> {
        let domain = &self.config.app_domain;
        if cors::is_preflight(req.method(), req.headers()) {
            let mut r = Response::new(pages::full(bytes::Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            *r.headers_mut() = cors::preflight_headers(req.headers(), &app.user, domain);
            return r;
        }

        // Who is asking, and may they?
        let (viewer, by_bearer) = self.viewer(req.headers());
        let workspace = self.workspace_of(&app);
        let level = match workspace.map(|w| self.level(w, &app)).transpose() {
            Ok(level) => level,
            Err(e) => return store_failure(&e),
        };
        let access = match (workspace, level) {
            (Some(w), Some(level)) => decide(level, &w.owner, viewer.as_ref()),
            _ if viewer.is_none() => Access::SignIn,
            _ => Access::NotFound,
        };
        match access {
            Access::Allow => {}
            Access::SignIn => return self.to_sign_in(&req),
            Access::NotFound => return not_found(),
        }
        let Some(workspace) = workspace else {
            return not_found();
        };
        self.proxy(req, workspace, &app, client, by_bearer).await
    }

    async fn proxy(
        &self,
        req: Request<Incoming>,
        workspace: &Workspace,
        app: &AppHost,
        client: SocketAddr,
        strip_authorization: bool,
    ) -> Response<Body> {
        let request_headers = req.headers().clone();
        let addr = match self.tunnels.port(workspace, app.port).await {
            Ok(addr) => addr,
            Err(e) => return unreachable(&e),
        };
        let upstream = Upstream {
            addr,
            client,
            strip_authorization,
            browser_https: self.config.tls.is_some(),
            app_tls: app.https.then(|| self.app_tls.clone()),
            timeout: self.config.upstream_timeout,
        };
        match proxy::forward(req, &upstream).await {
            Ok(mut response) => {
                let domain = &self.config.app_domain;
                cors::rewrite_response(response.headers_mut(), &request_headers, &app.user, domain);
                drop_session_cookies(response.headers_mut());
                response
            }
            Err(e) => self.app_failure(&e, workspace, app).await,
        }
    }

    // The app could not be reached through a working tunnel. When it sent nothing at all and
    // its agent does not list the port, nothing listens there: a 404 saying so (the viewer
    // already passed the access check, so this reveals nothing). A timeout is a 504.
    async fn app_failure(
        &self,
        e: &ProxyError,
        workspace: &Workspace,
        app: &AppHost,
    ) -> Response<Body> {
        let (port, name) = (app.port, &app.workspace);
        if e.is_no_answer() && !self.is_listening(workspace, port, e).await {
            return pages::page(
                StatusCode::NOT_FOUND,
                "No app is listening on this port",
                &format!(
                    "Nothing is listening on port {port} in workspace {name}. Start the app \
                     (listening on 127.0.0.1 or ::1), then reload this page."
                ),
            );
        }
        pages::page(
            failure_status(e),
            failure_title(e),
            &failure_message(e, port, name),
        )
    }

    // Whether the agent lists `port` as listening. Without a list, a reset counts as nothing
    // listening, as that is what the agent sends for a closed port.
    async fn is_listening(&self, workspace: &Workspace, port: u16, e: &ProxyError) -> bool {
        match self.agent_ports(workspace).await {
            Ok(listing) => listing.ports.contains(&port),
            Err(list_error) => {
                tracing::debug!(error = %list_error, "no port list to explain a failed request");
                !matches!(e, ProxyError::Refused)
            }
        }
    }

    /// The workspace's listening TCP ports and app health, as its agent reports them on its
    /// reserved port.
    pub(crate) async fn agent_ports(&self, workspace: &Workspace) -> Result<Listing, String> {
        let addr = self
            .tunnels
            .port(workspace, PORTS_PORT)
            .await
            .map_err(|e| e.to_string())?;
        let fetch = async {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = Request::get("/ports")
                .header(header::HOST, "agent")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let body = Limited::new(resp.into_body(), LISTING_LIMIT_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            let listing: Listing =
                serde_json::from_slice(&body.to_bytes()).map_err(|e| e.to_string())?;
            Ok::<_, String>(listing)
        };
        tokio::time::timeout(LISTING_TIMEOUT, fetch)
            .await
            .map_err(|_| "the agent did not send its port list in time".to_owned())?
            .map_err(|e| format!("cannot read the agent's port list: {e}"))
    }

    // The signed-in user: a session cookie, or an API token as `Authorization: Bearer`.
    // The flag says the Authorization header was the gateway's and must be stripped.
    pub(crate) fn viewer(&self, headers: &hyper::HeaderMap) -> (Option<Name>, bool) {
        if let Some(user) = bearer_token(headers).and_then(|t| user_by_token(&self.config.users, t))
        {
            return (Some(user.name.clone()), true);
        }
        let by_cookie = pages::cookie(headers, SESSION_COOKIE).and_then(|id| {
            self.sessions
                .user(&id)
                .inspect_err(|e| tracing::error!(error = %e, "session database failed"))
                .ok()
                .flatten()
        });
        // A session outlives a restart, but not its user's removal from the config.
        let by_cookie = by_cookie.filter(|name| self.config.users.contains_key(name));
        (by_cookie, false)
    }

    // The workspace an app host names, if its agent and owner match too.
    fn workspace_of(&self, app: &AppHost) -> Option<&Workspace> {
        self.config
            .workspaces
            .get(&app.workspace)
            .filter(|w| w.agent == app.agent && w.owner == app.user)
    }

    // A port's share level, capped by the template (the cap may have dropped since).
    fn level(&self, workspace: &Workspace, app: &AppHost) -> Result<ShareLevel, StoreError> {
        let share =
            self.store
                .share(workspace.name.as_str(), workspace.agent.as_str(), app.port)?;
        let level = share.map(|s| s.level).unwrap_or_default();
        Ok(level.min(workspace.max_share_level))
    }

    pub(crate) fn to_sign_in(&self, req: &Request<Incoming>) -> Response<Body> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let scheme = self.config.scheme();
        let back = format!("{scheme}://{}{path}", request_host(req));
        let location = format!(
            "{scheme}://{}/signin?return={}",
            self.config.app_domain,
            pages::percent_encode(&back)
        );
        pages::redirect(StatusCode::FOUND, &location)
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The private key file is missing or malformed.
    #[error("gateway private key: {0}")]
    Key(String),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The TLS certificate or key is missing, unreadable or mismatched.
    #[error("gateway TLS: {0}")]
    Tls(#[from] TlsError),
}

/// The request's host: the `Host` header, else the URI's authority.
pub(crate) fn request_host(req: &Request<Incoming>) -> String {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

/// The token of an `Authorization: Bearer TOKEN` header; the scheme name is matched without
/// case (RFC 7235).
pub(crate) fn bearer_token(headers: &hyper::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

// A timeout is a 504; every other failure to get an answer a 502.
fn failure_status(e: &ProxyError) -> StatusCode {
    match e {
        ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

fn failure_title(e: &ProxyError) -> &'static str {
    match e {
        ProxyError::Timeout(_) => "No answer in time",
        _ => "The app did not answer",
    }
}

// A timeout cannot tell a stalled agent (stopped, or its machine gone with the session still
// up) from a slow app, so its message names both.
fn failure_message(e: &ProxyError, port: u16, name: &Name) -> String {
    match e {
        ProxyError::Timeout(t) => format!(
            "Port {port} in workspace {name}: neither the workspace's agent nor the app \
             answered within {} s. The agent may be stopped or its machine unreachable, or \
             the app may be busy; check both, then reload this page.",
            t.as_secs()
        ),
        _ => format!("Port {port} in workspace {name}: {e}."),
    }
}

/// Removes an app's `Set-Cookie` headers that name the gateway's session cookie: an app shares
/// the cookie's domain and could otherwise overwrite it (signing the viewer out, or into the
/// app author's session).
pub(crate) fn drop_session_cookies(headers: &mut hyper::HeaderMap) {
    let all: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    let (tossed, kept): (Vec<_>, Vec<_>) = all.into_iter().partition(names_session_cookie);
    if tossed.is_empty() {
        return;
    }
    tracing::debug!(
        count = tossed.len(),
        "dropped an app's Set-Cookie for the session cookie"
    );
    headers.remove(header::SET_COOKIE);
    for value in kept {
        headers.append(header::SET_COOKIE, value);
    }
}

// Whether a `Set-Cookie` value sets the session cookie (names compare without case, as some
// browsers and frameworks do).
fn names_session_cookie(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    let pair = bytes.split(|b| *b == b';').next().unwrap_or_default();
    let Some(eq) = pair.iter().position(|b| *b == b'=') else {
        return false;
    };
    let name = pair.get(..eq).unwrap_or_default().trim_ascii();
    name.eq_ignore_ascii_case(SESSION_COOKIE.as_bytes())
}

fn not_found() -> Response<Body> {
    pages::page(
        StatusCode::NOT_FOUND,
        "Not found",
        "No app is available at this address.",
    )
}

// The workspace's tunnel could not give a connection: 504 when its agent did not answer in
// time, else 502.
fn unreachable(e: &TunnelError) -> Response<Body> {
    let status = match e {
        TunnelError::NoHandshake => StatusCode::GATEWAY_TIMEOUT,
        TunnelError::Start(_) | TunnelError::Gone => StatusCode::BAD_GATEWAY,
    };
    pages::page(status, "Workspace unreachable", &e.to_string())
}

fn store_failure(e: &StoreError) -> Response<Body> {
    tracing::error!(error = %e, "share database failed");
    pages::page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Gateway error",
        "The share database failed.",
    )
}

const LISTING_LIMIT_BYTES: usize = 1024 * 1024;
const LISTING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a browser may take to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_names_the_agent_and_the_app() {
        let name = Name::parse("myws").unwrap();
        let e = ProxyError::Timeout(std::time::Duration::from_secs(60));
        assert_eq!(failure_status(&e), StatusCode::GATEWAY_TIMEOUT);
        let text = failure_message(&e, 28000, &name);
        assert!(
            text.contains("agent nor the app answered within 60 s"),
            "{text}"
        );
        assert!(!text.contains("Is the app listening"), "{text}");
    }

    #[test]
    fn app_cookies_named_like_the_session_are_dropped() {
        let mut h = hyper::HeaderMap::new();
        for v in [
            "ferry_session=x; Domain=apps.test; Path=/",
            "other=1; Path=/",
            "FERRY_SESSION=y",
            " Ferry_Session =z",
            "ferry_sessions=kept",
        ] {
            h.append(header::SET_COOKIE, HeaderValue::from_static(v));
        }
        drop_session_cookies(&mut h);
        let left: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(left, ["other=1; Path=/", "ferry_sessions=kept"]);
    }
}
