//! CORS on app hosts, answered by the gateway rather than by apps.
//!
//! Credentials are allowed; a preflight's requested method and headers are echoed; the browser's
//! `Origin` is echoed only when it is another app URL of the same user (so one user's apps can
//! call each other with cookies, and nothing else can). The app's own `Access-Control-Allow-*`
//! headers are removed, and its `Vary` values are kept except the three the gateway sets.

use hyper::HeaderMap;
use hyper::header::{self, HeaderValue};

use crate::host::{AppHost, Name};

/// Whether a request is a CORS preflight (answered by the gateway, never proxied).
pub fn is_preflight(method: &hyper::Method, headers: &HeaderMap) -> bool {
    method == hyper::Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The headers of the gateway's answer to a preflight from `request` to an app of `user`.
pub fn preflight_headers(request: &HeaderMap, user: &Name, app_domain: &str) -> HeaderMap {
    let mut out = HeaderMap::new();
    allow_origin(&mut out, request, user, app_domain);
    for (from, to) in [
        (
            header::ACCESS_CONTROL_REQUEST_METHOD,
            header::ACCESS_CONTROL_ALLOW_METHODS,
        ),
        (
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
        ),
    ] {
        if let Some(v) = request.get(from) {
            out.insert(to, v.clone());
        }
    }
    out.insert(header::VARY, HeaderValue::from_static(VARY));
    out
}

/// Rewrites an app's response headers: removes its CORS grants, keeps its other `Vary` values
/// and adds the gateway's.
pub fn rewrite_response(
    response: &mut HeaderMap,
    request: &HeaderMap,
    user: &Name,
    app_domain: &str,
) {
    // The app's own grants go.
    let names: Vec<_> = response
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-allow-"))
        .cloned()
        .collect();
    for name in names {
        response.remove(name);
    }

    // Its Vary values stay, except the three the gateway sets.
    let kept: Vec<String> = response
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty() && !is_gateway_vary(v))
        .map(str::to_owned)
        .collect();
    let vary = kept
        .into_iter()
        .chain([VARY.to_owned()])
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(v) = HeaderValue::from_str(&vary) {
        response.insert(header::VARY, v);
    }
    allow_origin(response, request, user, app_domain);
}

// Grants the Origin (with credentials) when it is an app URL of the same user.
fn allow_origin(out: &mut HeaderMap, request: &HeaderMap, user: &Name, app_domain: &str) {
    let Some(origin) = request.get(header::ORIGIN) else {
        return;
    };
    let host = origin.to_str().ok().and_then(|o| {
        o.strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
    });
    let same_user = host
        .and_then(|h| AppHost::parse(h, app_domain).ok())
        .is_some_and(|app| &app.user == user);
    if same_user {
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        out.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

fn is_gateway_vary(value: &str) -> bool {
    [
        "origin",
        "access-control-request-method",
        "access-control-request-headers",
    ]
    .iter()
    .any(|g| value.eq_ignore_ascii_case(g))
}

const VARY: &str = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = "apps.test:8080";

    fn request(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("PUT"),
        );
        h.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("x-a, x-b"),
        );
        h
    }

    fn alice() -> Name {
        Name::parse("alice").unwrap()
    }

    #[test]
    fn preflight_echoes_same_user_origin_method_and_headers() {
        let origin = "http://3000--main--other--alice.apps.test:8080";
        let h = preflight_headers(&request(origin), &alice(), DOMAIN);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], origin);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "PUT");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], "x-a, x-b");
        assert_eq!(h[header::VARY], VARY);
    }

    #[test]
    fn other_users_and_foreign_origins_are_not_echoed() {
        for origin in [
            "http://3000--main--ws--bob.apps.test:8080",
            "http://evil.test",
            "http://apps.test:8080",
            "null",
        ] {
            let h = preflight_headers(&request(origin), &alice(), DOMAIN);
            assert!(
                !h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
                "{origin}"
            );
        }
    }

    #[test]
    fn app_grants_are_removed_and_its_other_vary_values_kept() {
        let mut resp = HeaderMap::new();
        resp.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        resp.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET"),
        );
        resp.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-e"),
        );
        resp.append(
            header::VARY,
            HeaderValue::from_static("Accept-Encoding, origin"),
        );
        resp.append(header::VARY, HeaderValue::from_static("Cookie"));
        rewrite_response(&mut resp, &request("http://evil.test"), &alice(), DOMAIN);
        assert!(!resp.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(!resp.contains_key(header::ACCESS_CONTROL_ALLOW_METHODS));
        assert_eq!(resp[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-e");
        assert_eq!(
            resp[header::VARY],
            format!("Accept-Encoding, Cookie, {VARY}")
        );
    }
}
