//! The gateway's own responses: HTML pages, JSON, redirects, and the small text codecs they
//! need (HTML escaping, percent-encoding, form bodies, cookies).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

/// The body type of every gateway response: proxied bodies stream through it unbuffered.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A whole body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An HTML page with a title and a message (escaped here).
pub fn page(status: StatusCode, title: &str, message: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body><h1>{t}</h1><p>{m}</p><p><small>ferry gateway</small></p></body></html>\n",
        t = escape(title),
        m = escape(message)
    );
    html_response(status, html)
}

/// An HTML response of trusted markup.
pub fn html_response(status: StatusCode, html: String) -> Response<Body> {
    let mut r = Response::new(full(html));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A JSON error: `{"error": message}`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

/// A redirect to `location` with the given status (302 or 303).
pub fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The sign-in form; `back` is where to return after signing in.
pub fn sign_in(status: StatusCode, back: &str, error: Option<&str>) -> Response<Body> {
    let error = error
        .map(|e| format!("<p role=\"alert\"><strong>{}</strong></p>", escape(e)))
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign in</title></head><body>\
         <h1>Sign in to open this app</h1>{error}\
         <form method=\"post\" action=\"/signin\">\
         <input type=\"hidden\" name=\"return\" value=\"{back}\">\
         <label>API token <input type=\"password\" name=\"token\" autofocus></label> \
         <button type=\"submit\">Sign in</button></form></body></html>\n",
        back = escape(back)
    );
    html_response(status, html)
}

/// The sign-out page: one button that posts the form (a plain link elsewhere cannot sign the
/// browser out, as the session cookie is `SameSite=Lax`).
pub fn sign_out() -> Response<Body> {
    let html = "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign out</title>\
                </head><body><h1>Sign out of the gateway</h1>\
                <form method=\"post\" action=\"/signout\">\
                <button type=\"submit\">Sign out</button></form></body></html>\n";
    html_response(StatusCode::OK, html.to_owned())
}

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b, hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a small form body (at most [`FORM_LIMIT_BYTES`]); a larger one gets a 413 page.
pub async fn read_form(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<String, Response<Body>> {
    let limited = http_body_util::Limited::new(req.into_body(), FORM_LIMIT_BYTES);
    match limited.collect().await {
        Ok(body) => Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned()),
        Err(_) => Err(page(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Form too large",
            "Try again.",
        )),
    }
}

/// The largest form body the gateway reads.
pub const FORM_LIMIT_BYTES: usize = 16 * 1024;

/// The value of `key` in a form body or query string.
pub fn form_value(form: &str, key: &str) -> Option<String> {
    form.split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| percent_decode(k) == key)
        .map(|(_, v)| percent_decode(v))
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_codec_round_trips_and_forms_decode() {
        let url = "http://8080--a--b--c.apps.test:8080/x?y=1&z=<2>";
        assert_eq!(percent_decode(&percent_encode(url)), url);
        let form = "token=abc%2B1+2&return=http%3A%2F%2Fx%2F";
        assert_eq!(form_value(form, "token").unwrap(), "abc+1 2");
        assert_eq!(form_value(form, "return").unwrap(), "http://x/");
        assert!(form_value(form, "nope").is_none());
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = hyper::HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; ferry_session=xyz"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "ferry_session").unwrap(), "xyz");
        assert_eq!(cookie(&h, "b").unwrap(), "2");
        assert!(cookie(&h, "c").is_none());
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
