//! The share REST API, on the app domain itself, for a workspace's owner.
//!
//! - `GET    /api/v1/workspaces/WS/shares`        every share, with its app URL
//! - `PUT    /api/v1/workspaces/WS/shares/PORT`   body `{"level": "...", "protocol": "http|https"}`
//! - `DELETE /api/v1/workspaces/WS/shares/PORT`   back to the owner level
//! - `GET    /api/v1/workspaces/WS/ports`         ports from the agent, with shares and health
//! - `GET    /api/v1/workspaces`                  the caller's workspaces, each with its shares
//!
//! A `ports` entry has `listening` (the agent saw a listener) and `health` (`initializing`,
//! `healthy`, `unhealthy`, or null when the agent runs no healthcheck for the port); a port with
//! a healthcheck is listed even when nothing listens on it.
//!
//! Requests carry `Authorization: Bearer TOKEN`. Without a valid token: 401. A workspace the
//! caller does not own answers 404, as if it did not exist. A level above the template's maximum
//! and an app label longer than 63 characters are refused with 400 and a message saying why.

use std::collections::BTreeSet;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use ferry_dataplane::ports::is_system_port;

use crate::access::{ShareLevel, user_by_token};
use crate::config::Workspace;
use crate::host::{FIRST_APP_PORT, Name, app_label};
use crate::pages::{self, Body, json_error};
use crate::server::{Gateway, bearer_token};
use crate::store::{Protocol, Share, StoreError};

/// Answers one API request.
pub async fn handle(gateway: &Gateway, req: Request<Incoming>) -> Response<Body> {
    // Authenticate, then find the workspace and the optional port in the path.
    let user = bearer_token(req.headers()).and_then(|t| user_by_token(&gateway.config.users, t));
    let Some(user) = user else {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "send a valid API token as `Authorization: Bearer TOKEN`",
        );
    };
    let path = req.uri().path().to_owned();
    if path == "/api/v1/workspaces" {
        return match req.method() {
            &Method::GET => workspaces(gateway, &user.name),
            _ => json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET on workspaces"),
        };
    }
    let Some(rest) = path.strip_prefix("/api/v1/workspaces/") else {
        return json_error(StatusCode::NOT_FOUND, "no such API endpoint");
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let (ws, port) = match parts[..] {
        [ws, "ports"] => (ws, Some("ports")),
        [ws, "shares"] => (ws, None),
        [ws, "shares", port] => (ws, Some(port)),
        _ => return json_error(StatusCode::NOT_FOUND, "no such API endpoint"),
    };
    let workspace = gateway
        .config
        .workspaces
        .values()
        .find(|w| w.name.as_str() == ws && w.owner == user.name);
    let Some(workspace) = workspace else {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("you own no workspace named `{ws}`"),
        );
    };
    if port == Some("ports") {
        return match req.method() {
            &Method::GET => ports(gateway, workspace).await,
            _ => json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET on ports"),
        };
    }
    let port = match port.map(parse_port).transpose() {
        Ok(p) => p,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e),
    };

    // Dispatch.
    let result = match (req.method().clone(), port) {
        (Method::GET, None) => list(gateway, workspace),
        (Method::PUT, Some(port)) => put(gateway, workspace, port, req).await,
        (Method::DELETE, Some(port)) => delete(gateway, workspace, port),
        _ => Ok(json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET on shares, PUT or DELETE on shares/PORT",
        )),
    };
    result.unwrap_or_else(|e| {
        tracing::error!(error = %e, "share database failed");
        json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the share database failed",
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutShare {
    level: ShareLevel,
    #[serde(default)]
    protocol: Protocol,
}

fn list(gateway: &Gateway, workspace: &Workspace) -> Result<Response<Body>, StoreError> {
    let shares: Vec<_> = gateway
        .store
        .list(workspace.name.as_str())?
        .iter()
        .map(|s| share_json(gateway, workspace, s))
        .collect();
    Ok(pages::json(StatusCode::OK, &json!({ "shares": shares })))
}

async fn put(
    gateway: &Gateway,
    workspace: &Workspace,
    port: u16,
    req: Request<Incoming>,
) -> Result<Response<Body>, StoreError> {
    let Ok(body) = Limited::new(req.into_body(), BODY_LIMIT_BYTES)
        .collect()
        .await
    else {
        return Ok(json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is too large",
        ));
    };
    let wanted: PutShare = match serde_json::from_slice(&body.to_bytes()) {
        Ok(w) => w,
        Err(e) => return Ok(json_error(StatusCode::BAD_REQUEST, &format!("body: {e}"))),
    };

    let share = match checked_share(workspace, port, wanted.level, wanted.protocol) {
        Ok(share) => share,
        Err(message) => return Ok(json_error(StatusCode::BAD_REQUEST, &message)),
    };
    gateway.store.put(&share)?;
    Ok(pages::json(
        StatusCode::OK,
        &share_json(gateway, workspace, &share),
    ))
}

/// A share the workspace's template and the DNS label limit allow, or why not.
pub fn checked_share(
    workspace: &Workspace,
    port: u16,
    level: ShareLevel,
    protocol: Protocol,
) -> Result<Share, String> {
    // The template cap, then the label length.
    let cap = workspace.max_share_level;
    if level > cap {
        return Err(format!(
            "share level {level} is above the maximum this workspace's template allows, \
             which is {cap}"
        ));
    }
    let w = workspace;
    let https = protocol == Protocol::Https;
    app_label(port, https, &w.agent, &w.name, &w.owner).map_err(|e| e.to_string())?;
    Ok(Share {
        workspace: w.name.to_string(),
        agent: w.agent.to_string(),
        port,
        level,
        protocol,
    })
}

fn delete(
    gateway: &Gateway,
    workspace: &Workspace,
    port: u16,
) -> Result<Response<Body>, StoreError> {
    let w = workspace;
    let existed = gateway
        .store
        .delete(w.name.as_str(), w.agent.as_str(), port)?;
    Ok(pages::json(StatusCode::OK, &json!({ "deleted": existed })))
}

// The workspace's ports (listening, from its agent, system ports hidden; and health-checked),
// each with its share and health.
async fn ports(gateway: &Gateway, workspace: &Workspace) -> Response<Body> {
    let listing = match gateway.agent_ports(workspace).await {
        Ok(listing) => listing,
        Err(e) => return json_error(StatusCode::BAD_GATEWAY, &e),
    };
    let shares = match gateway.store.list(workspace.name.as_str()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "share database failed");
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the share database failed",
            );
        }
    };
    let listening: BTreeSet<u16> = listing
        .ports
        .iter()
        .copied()
        .filter(|p| !is_system_port(*p))
        .collect();
    let mut shown = listening.clone();
    shown.extend(listing.health.iter().map(|h| h.port));
    let entries: Vec<_> = shown
        .into_iter()
        .map(|port| {
            let share = shares
                .iter()
                .find(|s| s.port == port)
                .cloned()
                .unwrap_or_else(|| owner_share(workspace, port));
            let mut entry = share_json(gateway, workspace, &share);
            entry["listening"] = json!(listening.contains(&port));
            entry["health"] = json!(listing.health(port).map(|h| h.state));
            entry
        })
        .collect();
    pages::json(StatusCode::OK, &json!({ "ports": entries }))
}

/// The share a port has without a row: owner only, plain HTTP.
pub fn owner_share(workspace: &Workspace, port: u16) -> Share {
    Share {
        workspace: workspace.name.to_string(),
        agent: workspace.agent.to_string(),
        port,
        level: ShareLevel::Owner,
        protocol: Protocol::Http,
    }
}

// Every workspace `user` owns, by name, with its template cap and its shares.
fn workspaces(gateway: &Gateway, user: &Name) -> Response<Body> {
    let mut owned: Vec<&Workspace> = gateway
        .config
        .workspaces
        .values()
        .filter(|w| w.owner == *user)
        .collect();
    owned.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    let mut list = Vec::new();
    for w in owned {
        let shares = match gateway.store.list(w.name.as_str()) {
            Ok(shares) => shares,
            Err(e) => {
                tracing::error!(error = %e, "share database failed");
                return json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the share database failed",
                );
            }
        };
        let shares: Vec<_> = shares.iter().map(|s| share_json(gateway, w, s)).collect();
        list.push(json!({
            "name": w.name.as_str(),
            "agent": w.agent.as_str(),
            "max_share_level": w.max_share_level,
            "shares": shares,
        }));
    }
    pages::json(StatusCode::OK, &json!({ "workspaces": list }))
}

/// A share as the API shows it, with its app URL.
pub fn share_json(gateway: &Gateway, workspace: &Workspace, share: &Share) -> serde_json::Value {
    let https = share.protocol == Protocol::Https;
    let w = workspace;
    let url = app_label(share.port, https, &w.agent, &w.name, &w.owner)
        .ok()
        .map(|label| {
            format!(
                "{}://{label}.{}/",
                gateway.config.scheme(),
                gateway.config.app_domain
            )
        });
    json!({
        "workspace": share.workspace,
        "agent": share.agent,
        "port": share.port,
        "level": share.level,
        "protocol": share.protocol,
        "url": url,
    })
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(p) if p >= FIRST_APP_PORT => Ok(p),
        Ok(p) => Err(format!(
            "port {p} is reserved for the agent; apps use ports from 9 up"
        )),
        Err(_) => Err(format!("`{text}` is not a port (1-65535)")),
    }
}

const BODY_LIMIT_BYTES: usize = 16 * 1024;
