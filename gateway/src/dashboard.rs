//! A small web page per workspace, for its owner: the open ports (detected by the agent, plus
//! shared or health-checked ones not listening now), each with its app URL, its health (from
//! the agent's healthchecks) and share level and protocol controls.
//!
//! - `GET  /workspaces/WS`              the page (signed-out: sent to sign in)
//! - `POST /workspaces/WS/shares/PORT`  form `level=...&protocol=...`, then back to the page
//!
//! Plain HTML forms, no script. The session cookie is `SameSite=Lax`, but every app host is
//! the same site as this page, so a post that rides on the cookie must also come from the
//! gateway's own origin ([`crate::csrf`]; checked before the request gets here).

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::access::ShareLevel;
use crate::api::checked_share;
use crate::config::Workspace;
use crate::health::AppHealth;
use crate::pages::{self, Body, escape};
use crate::server::Gateway;
use crate::store::{Protocol, Share};

/// Answers a request under `/workspaces/`.
pub async fn handle(gateway: &Gateway, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/workspaces/").unwrap_or_default();
    let parts: Vec<&str> = rest.split('/').collect();
    let (viewer, _) = gateway.viewer(req.headers());
    let Some(viewer) = viewer else {
        return gateway.to_sign_in(&req);
    };
    let name = parts.first().copied().unwrap_or_default();
    let workspace = gateway
        .config
        .workspaces
        .values()
        .find(|w| w.name.as_str() == name && w.owner == viewer);
    let Some(workspace) = workspace else {
        return pages::page(
            StatusCode::NOT_FOUND,
            "Not found",
            "You own no such workspace.",
        );
    };
    match (req.method().clone(), &parts[1..]) {
        (Method::GET, []) => page(gateway, workspace).await,
        (Method::POST, ["shares", port]) => {
            let port = port.parse().unwrap_or(0);
            update(gateway, workspace, port, req).await
        }
        _ => pages::page(StatusCode::NOT_FOUND, "Not found", "There is nothing here."),
    }
}

async fn page(gateway: &Gateway, workspace: &Workspace) -> Response<Body> {
    // Detected and health-checked ports, then shares (a shared port may not be listening now).
    let detected = gateway.agent_ports(workspace).await;
    let mut rows: BTreeMap<u16, Row> = BTreeMap::new();
    let notice = match &detected {
        Ok(listing) => {
            let shown = listing
                .ports
                .iter()
                .filter(|p| !ferry_dataplane::ports::is_system_port(**p));
            for port in shown {
                rows.entry(*port).or_default().listening = true;
            }
            for health in &listing.health {
                rows.entry(health.port).or_default().health = Some(health.clone());
            }
            String::new()
        }
        Err(e) => format!(
            "<p role=\"alert\">Listening ports unavailable: {}</p>",
            escape(e)
        ),
    };
    for share in gateway
        .store
        .list(workspace.name.as_str())
        .unwrap_or_default()
    {
        let port = share.port;
        rows.entry(port).or_default().share = Some(share);
    }

    let body: String = rows
        .iter()
        .map(|(port, r)| row(gateway, workspace, *port, r))
        .collect();
    let ws = escape(workspace.name.as_str());
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{ws} ports</title>{STYLE}</head>\
         <body><h1>Workspace {ws}</h1>{notice}<p>Maximum share level: {cap}</p>\
         <table><thead><tr><th>Port</th><th>Listening</th><th>Health</th><th>App URL</th>\
         <th>Share</th></tr></thead><tbody>{body}</tbody></table></body></html>\n",
        cap = workspace.max_share_level
    );
    pages::html_response(StatusCode::OK, html)
}

// What the page knows of one port.
#[derive(Default)]
struct Row {
    listening: bool,
    health: Option<AppHealth>,
    share: Option<Share>,
}

fn row(gateway: &Gateway, workspace: &Workspace, port: u16, r: &Row) -> String {
    let (listening, share) = (r.listening, r.share.as_ref());
    let level = share.map_or(ShareLevel::Owner, |s| s.level);
    let protocol = share.map_or(Protocol::Http, |s| s.protocol);
    let shown = Share {
        workspace: workspace.name.to_string(),
        agent: workspace.agent.to_string(),
        port,
        level,
        protocol,
    };
    let url = crate::api::share_json(gateway, workspace, &shown)["url"]
        .as_str()
        .map(|u| format!("<a href=\"{0}\">{0}</a>", escape(u)))
        .unwrap_or_else(|| "(name too long for a URL)".into());
    let option = |value: &str, selected: bool| {
        let sel = if selected { " selected" } else { "" };
        format!("<option value=\"{value}\"{sel}>{value}</option>")
    };
    let levels: String = [
        ShareLevel::Owner,
        ShareLevel::Authenticated,
        ShareLevel::Public,
    ]
    .iter()
    .filter(|l| **l <= workspace.max_share_level)
    .map(|l| option(l.as_str(), *l == level))
    .collect();
    let protocols =
        option("http", protocol == Protocol::Http) + &option("https", protocol == Protocol::Https);
    format!(
        "<tr><td>{port}</td><td>{listening}</td><td>{health}</td><td>{url}</td><td>\
         <form method=\"post\" action=\"/workspaces/{ws}/shares/{port}\">\
         <select name=\"level\" aria-label=\"share level\">{levels}</select> \
         <select name=\"protocol\" aria-label=\"protocol\">{protocols}</select> \
         <button type=\"submit\">Save</button></form></td></tr>",
        listening = if listening { "yes" } else { "no" },
        health = health_cell(r.health.as_ref()),
        ws = escape(workspace.name.as_str()),
    )
}

// The health column: the state, with the checked URL as a tooltip; a dash without a check.
fn health_cell(health: Option<&AppHealth>) -> String {
    let Some(h) = health else {
        return "<span class=\"health\" data-health=\"none\">-</span>".into();
    };
    format!(
        "<span class=\"health {s}\" data-health=\"{s}\" title=\"{url}\">{s}</span>",
        s = h.state.as_str(),
        url = escape(&h.url)
    )
}

async fn update(
    gateway: &Gateway,
    workspace: &Workspace,
    port: u16,
    req: Request<Incoming>,
) -> Response<Body> {
    let form = match pages::read_form(req).await {
        Ok(form) => form,
        Err(too_large) => return too_large,
    };
    let level = pages::form_value(&form, "level").and_then(|l| l.parse().ok());
    let protocol = match pages::form_value(&form, "protocol").as_deref() {
        Some("https") => Protocol::Https,
        _ => Protocol::Http,
    };
    let Some(level) = level else {
        return pages::page(
            StatusCode::BAD_REQUEST,
            "Cannot share",
            "Choose a share level.",
        );
    };
    let result = checked_share(workspace, port, level, protocol)
        .and_then(|share| gateway.store.put(&share).map_err(|e| e.to_string()));
    match result {
        Ok(()) => {
            let back = format!("/workspaces/{}", workspace.name);
            pages::redirect(StatusCode::SEE_OTHER, &back)
        }
        Err(message) => pages::page(StatusCode::BAD_REQUEST, "Cannot share", &message),
    }
}

const STYLE: &str = "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
                     td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}\
                     td a{white-space:nowrap}form{margin:0;display:flex;gap:.4em}\
                     .healthy{color:#176a2c}.unhealthy{color:#b3261e;font-weight:bold}\
                     .initializing{color:#7a5d00}</style>";
