//! App healthchecks, run by the agent against the workspace's own loopback.
//!
//! A healthcheck is given as `PORT=URL,INTERVAL,THRESHOLD` ([`HealthCheck`]'s `FromStr`): the
//! app port it describes, an `http://` URL on 127.0.0.1, `[::1]` or `localhost` (anything else
//! is refused, so the agent never sends a check off the workspace), the seconds between checks,
//! and how many failures in a row are tolerated.
//!
//! [`HealthState`] is the state machine, pure logic: it starts [`Health::Initializing`], one
//! success makes it [`Health::Healthy`], and the (threshold + 1)-th consecutive failure makes it
//! [`Health::Unhealthy`]. A response with a status below 500 is a success; a refused
//! connection, a timeout or a malformed answer is a failure. [`start`] runs one task per check
//! on the current (local) runtime: the first check one interval after start, then one per
//! interval, each bounded by [`check_timeout`]. The [`HealthBoard`] holds every check's state
//! for the agent's port listing (tunnel port [`crate::ports::PORTS_PORT`]).

use std::cell::RefCell;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::agent::FIRST_FORWARDED_PORT;

/// One app healthcheck, parsed from `PORT=URL,INTERVAL,THRESHOLD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The app port whose health this is.
    pub port: u16,
    /// What to request.
    pub url: HealthUrl,
    /// Time between checks.
    pub interval: Duration,
    /// Consecutive failures tolerated before the app is unhealthy.
    pub threshold: u32,
}

/// A checked healthcheck URL: plain HTTP to the workspace's loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthUrl {
    host: LoopbackHost,
    port: u16,
    path: String,
}

/// The loopback names a healthcheck may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoopbackHost {
    V4,
    V6,
    Localhost,
}

/// An app's health, as the gateway shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No check has succeeded yet, and not enough have failed.
    Initializing,
    /// The last check succeeded, or too few have failed since.
    Healthy,
    /// More than the threshold of checks in a row have failed.
    Unhealthy,
}

/// The healthcheck state machine. Feed it each check's outcome with [`HealthState::handle`];
/// it does no I/O and reads no clock.
#[derive(Debug, Clone)]
pub struct HealthState {
    health: Health,
    failures: u32,
    threshold: u32,
}

/// Why a `--healthcheck` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthCheckError {
    /// The value is not `PORT=URL,INTERVAL,THRESHOLD`.
    #[error("healthcheck {0:?}: expected PORT=URL,INTERVAL,THRESHOLD")]
    Shape(String),
    /// The app port is not a number from 9 to 65535.
    #[error(
        "healthcheck port {0:?}: expected a port from 9 to 65535 (lower ports are the agent's)"
    )]
    Port(String),
    /// The URL is not plain HTTP to 127.0.0.1, `[::1]` or localhost.
    #[error(
        "healthcheck URL {url:?}: {why}; only http:// URLs to 127.0.0.1, [::1] or localhost \
         are allowed, so that checks never leave the workspace"
    )]
    Url { url: String, why: &'static str },
    /// The interval is not a whole number of seconds in range.
    #[error("healthcheck interval {0:?}: expected whole seconds from 1 to 86400")]
    Interval(String),
    /// The threshold is not a small whole number.
    #[error("healthcheck threshold {0:?}: expected a whole number from 0 to 1000")]
    Threshold(String),
    /// Two healthchecks name the same app port.
    #[error("two healthchecks for port {0}: give at most one per port")]
    Duplicate(u16),
}

impl FromStr for HealthCheck {
    type Err = HealthCheckError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let shape = || HealthCheckError::Shape(text.to_owned());
        let (port, rest) = text.split_once('=').ok_or_else(shape)?;
        let mut fields = rest.rsplitn(3, ',');
        let threshold = fields.next().ok_or_else(shape)?;
        let interval = fields.next().ok_or_else(shape)?;
        let url = fields.next().ok_or_else(shape)?;
        Ok(HealthCheck {
            port: parse_app_port(port)?,
            url: url.parse()?,
            interval: parse_interval(interval)?,
            threshold: parse_threshold(threshold)?,
        })
    }
}

impl HealthCheck {
    /// Refuses two checks for one port.
    pub fn check_unique(checks: &[HealthCheck]) -> Result<(), HealthCheckError> {
        for (i, check) in checks.iter().enumerate() {
            if checks[..i].iter().any(|c| c.port == check.port) {
                return Err(HealthCheckError::Duplicate(check.port));
            }
        }
        Ok(())
    }
}

impl FromStr for HealthUrl {
    type Err = HealthCheckError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refuse = |why| HealthCheckError::Url {
            url: text.to_owned(),
            why,
        };
        let rest =
            strip_prefix_ignore_case(text, "http://").ok_or_else(|| refuse("not http://"))?;
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(refuse("it has spaces or characters outside ASCII"));
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.contains('@') {
            return Err(refuse("it carries user information"));
        }

        // Host, then the optional port.
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, Some(port)),
            _ => (authority, None),
        };
        let host = match host.to_ascii_lowercase().as_str() {
            "127.0.0.1" => LoopbackHost::V4,
            "[::1]" => LoopbackHost::V6,
            "localhost" => LoopbackHost::Localhost,
            _ => return Err(refuse("the host is not loopback")),
        };
        let port = match port {
            None => HTTP_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| refuse("the port is not 1-65535"))?,
        };
        let path = path.split('#').next().unwrap_or_default();
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        Ok(HealthUrl { host, port, path })
    }
}

impl HealthUrl {
    /// The addresses to dial, in order (`localhost` tries IPv4, then IPv6; no name lookup).
    pub fn targets(&self) -> Vec<SocketAddr> {
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, self.port));
        match self.host {
            LoopbackHost::V4 => vec![v4],
            LoopbackHost::V6 => vec![v6],
            LoopbackHost::Localhost => vec![v4, v6],
        }
    }

    /// The request head of one check.
    pub fn request(&self) -> String {
        format!(
            "GET {} HTTP/1.1\r\nhost: {}\r\nuser-agent: ferry-agent-healthcheck\r\n\
             accept: */*\r\nconnection: close\r\n\r\n",
            self.path,
            self.authority()
        )
    }

    fn authority(&self) -> String {
        let host = match self.host {
            LoopbackHost::V4 => "127.0.0.1",
            LoopbackHost::V6 => "[::1]",
            LoopbackHost::Localhost => "localhost",
        };
        if self.port == HTTP_PORT {
            host.to_owned()
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for HealthUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

impl Health {
    /// The state's name, as the listing and the gateway show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Initializing => "initializing",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl HealthState {
    /// A new state, `initializing`, that tolerates `threshold` failures in a row.
    pub fn new(threshold: u32) -> HealthState {
        HealthState {
            health: Health::Initializing,
            failures: 0,
            threshold,
        }
    }

    /// Takes one check's outcome (`true` for success) and returns the new health.
    pub fn handle(&mut self, success: bool) -> Health {
        if success {
            self.failures = 0;
            self.health = Health::Healthy;
        } else {
            self.failures = self.failures.saturating_add(1);
            if self.failures > self.threshold {
                self.health = Health::Unhealthy;
            }
        }
        self.health
    }

    /// The current health.
    pub fn health(&self) -> Health {
        self.health
    }
}

/// Whether an HTTP status counts as a passed check: anything below 500.
pub fn is_success(status: u16) -> bool {
    status < 500
}

/// The status code of an HTTP/1.x response head's first line, if it is one.
pub fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(head.get(..line_end)?).ok()?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..=599).contains(c))
}

/// Every check's current state, shared by the check tasks and the port listing.
#[derive(Debug, Default)]
pub struct HealthBoard {
    entries: RefCell<Vec<(HealthCheck, HealthState)>>,
}

impl HealthBoard {
    /// The checks' states as a JSON array of `{"port":P,"url":"...","state":"..."}`.
    pub fn json(&self) -> String {
        let items: Vec<String> = self
            .entries
            .borrow()
            .iter()
            .map(|(check, state)| {
                format!(
                    "{{\"port\":{},\"url\":\"{}\",\"state\":\"{}\"}}",
                    check.port,
                    json_escape(&check.url.to_string()),
                    state.health()
                )
            })
            .collect();
        format!("[{}]", items.join(","))
    }

    /// The current health of `port`'s check, if it has one.
    pub fn health(&self, port: u16) -> Option<Health> {
        let entries = self.entries.borrow();
        let entry = entries.iter().find(|(c, _)| c.port == port);
        entry.map(|(_, s)| s.health())
    }

    fn handle(&self, index: usize, success: bool) -> Option<Health> {
        let mut entries = self.entries.borrow_mut();
        let (check, state) = entries.get_mut(index)?;
        let before = state.health();
        let after = state.handle(success);
        if before != after {
            tracing::info!(port = check.port, health = %after, "app health changed");
        }
        Some(after)
    }
}

/// Starts one task per check on the current local runtime and returns their shared board.
pub fn start(checks: Vec<HealthCheck>) -> Rc<HealthBoard> {
    let board = Rc::new(HealthBoard::default());
    for (index, check) in checks.into_iter().enumerate() {
        let state = HealthState::new(check.threshold);
        board.entries.borrow_mut().push((check.clone(), state));
        tokio::task::spawn_local(run_check(board.clone(), index, check));
    }
    board
}

/// How long one check may take: its interval, at most [`CHECK_TIMEOUT_MAX_S`].
pub fn check_timeout(interval: Duration) -> Duration {
    interval.min(Duration::from_secs(CHECK_TIMEOUT_MAX_S))
}

// Checks once per interval, the first one interval after start, until the runtime stops.
async fn run_check(board: Rc<HealthBoard>, index: usize, check: HealthCheck) {
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + check.interval, check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let timeout = check_timeout(check.interval);
        let success = matches!(
            tokio::time::timeout(timeout, probe(&check.url)).await,
            Ok(Some(status)) if is_success(status)
        );
        if board.handle(index, success).is_none() {
            return;
        }
    }
}

// One request: the response's status, or None on any connection or protocol failure.
async fn probe(url: &HealthUrl) -> Option<u16> {
    let mut stream = None;
    for target in url.targets() {
        if let Ok(s) = tokio::net::TcpStream::connect(target).await {
            stream = Some(s);
            break;
        }
    }
    let mut stream = stream?;
    stream.write_all(url.request().as_bytes()).await.ok()?;

    // Read until the first line is complete (or the head limit is reached).
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < HEAD_LIMIT_BYTES {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(buf.get(..n)?);
    }
    parse_status_line(&head)
}

fn parse_app_port(text: &str) -> Result<u16, HealthCheckError> {
    text.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p >= FIRST_FORWARDED_PORT)
        .ok_or_else(|| HealthCheckError::Port(text.to_owned()))
}

fn parse_interval(text: &str) -> Result<Duration, HealthCheckError> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|s| (1..=MAX_INTERVAL_S).contains(s))
        .map(Duration::from_secs)
        .ok_or_else(|| HealthCheckError::Interval(text.to_owned()))
}

fn parse_threshold(text: &str) -> Result<u32, HealthCheckError> {
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|t| *t <= MAX_THRESHOLD)
        .ok_or_else(|| HealthCheckError::Threshold(text.to_owned()))
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| text.get(prefix.len()..))
        .flatten()
}

fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// The longest time one check may take, in seconds (shorter when the interval is).
pub const CHECK_TIMEOUT_MAX_S: u64 = 10;
const MAX_INTERVAL_S: u64 = 86_400;
const MAX_THRESHOLD: u32 = 1000;
const HTTP_PORT: u16 = 80;
const HEAD_LIMIT_BYTES: usize = 8 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_starts_initializing_and_one_success_makes_it_healthy() {
        let mut s = HealthState::new(2);
        assert_eq!(s.health(), Health::Initializing);
        assert_eq!(s.handle(true), Health::Healthy);
    }

    #[test]
    fn unhealthy_comes_on_the_threshold_plus_first_failure_in_a_row() {
        let mut s = HealthState::new(2);
        s.handle(true);
        assert_eq!(s.handle(false), Health::Healthy);
        assert_eq!(s.handle(false), Health::Healthy);
        assert_eq!(s.handle(false), Health::Unhealthy);
        assert_eq!(s.handle(false), Health::Unhealthy);
        assert_eq!(s.handle(true), Health::Healthy);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut s = HealthState::new(1);
        s.handle(false);
        s.handle(true);
        assert_eq!(s.handle(false), Health::Healthy);
        assert_eq!(s.handle(false), Health::Unhealthy);
    }

    #[test]
    fn failures_before_any_success_stay_initializing_up_to_the_threshold() {
        let mut s = HealthState::new(1);
        assert_eq!(s.handle(false), Health::Initializing);
        assert_eq!(s.handle(false), Health::Unhealthy);
        let mut zero = HealthState::new(0);
        assert_eq!(zero.handle(false), Health::Unhealthy);
    }

    #[test]
    fn statuses_below_500_are_successes() {
        for s in [200, 204, 301, 404, 499] {
            assert!(is_success(s), "{s}");
        }
        for s in [500, 502, 503, 599] {
            assert!(!is_success(s), "{s}");
        }
    }

    #[test]
    fn status_lines_parse_and_garbage_does_not() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503\r\nx: y\r\n"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), None);
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 099 x\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[test]
    fn healthchecks_parse_with_loopback_urls() {
        let c: HealthCheck = "3000=http://127.0.0.1:3000/healthz?x=1,5,3"
            .parse()
            .unwrap();
        assert_eq!(c.port, 3000);
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.threshold, 3);
        assert_eq!(c.url.to_string(), "http://127.0.0.1:3000/healthz?x=1");
        assert!(c.url.request().starts_with("GET /healthz?x=1 HTTP/1.1\r\n"));
        let v6: HealthUrl = "http://[::1]:8080".parse().unwrap();
        assert_eq!(v6.targets(), vec!["[::1]:8080".parse().unwrap()]);
        assert_eq!(v6.to_string(), "http://[::1]:8080/");
        let name: HealthUrl = "HTTP://LocalHost/a,b".parse().unwrap();
        assert_eq!(name.targets().len(), 2);
        assert_eq!(name.to_string(), "http://localhost/a,b");
    }

    #[test]
    fn non_loopback_and_non_http_urls_are_refused() {
        for url in [
            "https://127.0.0.1/",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest",
            "http://127.0.0.2/",
            "http://example.com/",
            "http://localhost.example.com/",
            "http://user@127.0.0.1/",
            "http://127.0.0.1@example.com/",
            "http://[::2]/",
            "http://127.0.0.1:0/",
            "http://127.0.0.1:99999/",
            "http://127.0.0.1/a b",
            "ftp://localhost/",
            "127.0.0.1:80",
        ] {
            let e = url.parse::<HealthUrl>().unwrap_err();
            assert!(
                e.to_string().contains("only http:// URLs to 127.0.0.1"),
                "{url}: {e}"
            );
        }
    }

    #[test]
    fn bad_ports_intervals_thresholds_and_shapes_are_refused() {
        let cases = [
            ("3000", "PORT=URL,INTERVAL,THRESHOLD"),
            ("3000=http://127.0.0.1/,5", "PORT=URL,INTERVAL,THRESHOLD"),
            ("4=http://127.0.0.1/,5,1", "port \"4\""),
            ("x=http://127.0.0.1/,5,1", "port \"x\""),
            ("3000=http://127.0.0.1/,0,1", "interval \"0\""),
            ("3000=http://127.0.0.1/,1.5,1", "interval"),
            ("3000=http://127.0.0.1/,5,-1", "threshold \"-1\""),
            ("3000=http://127.0.0.1/,5,1001", "threshold"),
        ];
        for (text, words) in cases {
            let e = text.parse::<HealthCheck>().unwrap_err();
            assert!(e.to_string().contains(words), "{text}: {e}");
        }
        let a: HealthCheck = "3000=http://127.0.0.1/,5,1".parse().unwrap();
        let b: HealthCheck = "3000=http://[::1]/,9,2".parse().unwrap();
        let e = HealthCheck::check_unique(&[a.clone(), b]).unwrap_err();
        assert_eq!(e, HealthCheckError::Duplicate(3000));
        assert!(HealthCheck::check_unique(&[a]).is_ok());
    }

    #[test]
    fn the_board_lists_states_as_json() {
        let board = HealthBoard::default();
        let check: HealthCheck = "3000=http://127.0.0.1:3000/\"q\",5,0".parse().unwrap();
        board
            .entries
            .borrow_mut()
            .push((check, HealthState::new(0)));
        assert_eq!(
            board.json(),
            r#"[{"port":3000,"url":"http://127.0.0.1:3000/\"q\"","state":"initializing"}]"#
        );
        assert_eq!(board.handle(0, false), Some(Health::Unhealthy));
        assert_eq!(board.health(3000), Some(Health::Unhealthy));
        assert_eq!(board.health(3001), None);
        assert_eq!(board.handle(1, true), None);
    }

    #[test]
    fn check_timeouts_are_bounded() {
        assert_eq!(
            check_timeout(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        assert_eq!(
            check_timeout(Duration::from_secs(600)),
            Duration::from_secs(CHECK_TIMEOUT_MAX_S)
        );
    }
}
