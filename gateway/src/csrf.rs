//! Cross-site request checks for the gateway's own cookie-authenticated forms.
//!
//! Every app host is a subdomain of the app domain, so every app (another user's public app
//! included) is the *same site* as the dashboard: `SameSite=Lax` lets an app's page post a
//! form to the dashboard with the viewer's session cookie. The gateway therefore checks where a
//! state-changing request comes from: its `Origin` (else its `Referer`) must be exactly the
//! dashboard's origin (scheme, app domain, port), and `Sec-Fetch-Site`, when present, must say
//! `same-origin`. A request with neither header is refused too: browsers send `Origin` on every
//! cross-origin and form POST.
//!
//! Requests authenticated by `Authorization: Bearer` (the command-line client) carry no ambient
//! credential and are not checked; the caller decides which requests need the check.

use hyper::HeaderMap;
use hyper::header;

/// Whether a request claims to come from `origin` (`scheme://host[:port]`, as browsers write
/// it, default port omitted), or why not.
pub fn check(headers: &HeaderMap, origin: &str) -> Result<(), CrossSite> {
    // Fetch metadata, when the browser sends it, is the most precise signal.
    let site = text(headers, "sec-fetch-site");
    if let Some(site) = site.filter(|s| !s.eq_ignore_ascii_case("same-origin")) {
        return Err(CrossSite::FetchSite(site.to_owned()));
    }

    // Then the origin, or the referrer's origin.
    if let Some(sent) = text(headers, header::ORIGIN.as_str()) {
        return match sent.eq_ignore_ascii_case(origin) {
            true => Ok(()),
            false => Err(CrossSite::Origin(sent.to_owned())),
        };
    }
    let Some(referer) = text(headers, header::REFERER.as_str()) else {
        return Err(CrossSite::Unknown);
    };
    let rest = referer.get(origin.len()..).unwrap_or("-");
    let same = referer
        .get(..origin.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(origin));
    match same && (rest.is_empty() || rest.starts_with(['/', '?', '#'])) {
        true => Ok(()),
        false => Err(CrossSite::Origin(referer.to_owned())),
    }
}

/// The browser origin of a gateway reached at `app_domain` over `scheme`: the default port
/// (80 for http, 443 for https) is left out, as browsers leave it out of `Origin`.
pub fn origin(scheme: &str, app_domain: &str) -> String {
    let default = if scheme == "https" { ":443" } else { ":80" };
    let host = app_domain.strip_suffix(default).unwrap_or(app_domain);
    format!("{scheme}://{host}")
}

/// Why a request was taken as cross-site.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrossSite {
    /// `Sec-Fetch-Site` says the request came from another origin or site.
    #[error("the browser says this request came from another site (Sec-Fetch-Site: {0})")]
    FetchSite(String),
    /// `Origin` (or `Referer`) names another origin.
    #[error("this request came from {0}, not from the gateway's own pages")]
    Origin(String),
    /// Neither `Origin` nor `Referer` was sent.
    #[error("this request does not say which page sent it (no Origin or Referer header)")]
    Unknown,
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "http://apps.test:8080";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_the_dashboard_origin_passes() {
        assert!(check(&headers(&[("origin", OURS)]), OURS).is_ok());
        assert!(check(&headers(&[("origin", "HTTP://Apps.Test:8080")]), OURS).is_ok());
        for other in [
            "http://19001--main--myws--alice.apps.test:8080",
            "http://evil.example.com",
            "https://apps.test:8080",
            "http://apps.test:8081",
            "http://apps.test",
            "http://apps.test:8080.evil.example.com",
            "null",
        ] {
            let e = check(&headers(&[("origin", other)]), OURS).unwrap_err();
            assert_eq!(e, CrossSite::Origin(other.into()));
        }
        assert_eq!(check(&HeaderMap::new(), OURS), Err(CrossSite::Unknown));
    }

    #[test]
    fn referer_stands_in_for_a_missing_origin() {
        let ok = [
            OURS,
            "http://apps.test:8080/",
            "http://apps.test:8080/workspaces/ws",
        ];
        for r in ok {
            assert!(check(&headers(&[("referer", r)]), OURS).is_ok(), "{r}");
        }
        for r in [
            "http://apps.test:80801/",
            "http://apps.test:8080.evil.test/",
            "/x",
        ] {
            assert!(check(&headers(&[("referer", r)]), OURS).is_err(), "{r}");
        }
        let both = [("origin", "http://evil.example.com"), ("referer", OURS)];
        assert!(check(&headers(&both), OURS).is_err(), "Origin wins");
    }

    #[test]
    fn fetch_metadata_must_say_same_origin() {
        let same = [("origin", OURS), ("sec-fetch-site", "same-origin")];
        assert!(check(&headers(&same), OURS).is_ok());
        let site = [("origin", OURS), ("sec-fetch-site", "same-site")];
        assert!(matches!(
            check(&headers(&site), OURS),
            Err(CrossSite::FetchSite(_))
        ));
    }

    #[test]
    fn default_ports_are_left_out_of_the_origin() {
        assert_eq!(origin("http", "apps.test:8080"), OURS);
        assert_eq!(origin("http", "apps.test:80"), "http://apps.test");
        assert_eq!(origin("https", "apps.test:443"), "https://apps.test");
        assert_eq!(origin("https", "apps.test:80"), "https://apps.test:80");
    }
}
