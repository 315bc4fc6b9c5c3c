//! App hosts: `PORT[s]--AGENT--WORKSPACE--USER.<app domain>`, parsed once into [`AppHost`].
//!
//! The first DNS label names the app: a port of 4 or 5 digits (an optional trailing `s` means
//! the upstream speaks HTTPS), then the agent, workspace and user names, joined by `--`. Names
//! are lowercase DNS-label characters without a `--` of their own (that is the separator). The
//! whole label holds at most [`MAX_LABEL_LEN`] characters, as DNS requires. Tunnel ports below
//! [`FIRST_APP_PORT`] belong to the agent itself and are refused.

use std::fmt;

/// A parsed app host. Every value it holds is valid: later code needs no checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppHost {
    /// The workspace port the app listens on.
    pub port: u16,
    /// Whether the upstream speaks HTTPS (the `s` suffix).
    pub https: bool,
    /// The agent's name.
    pub agent: Name,
    /// The workspace's name.
    pub workspace: Name,
    /// The owning user's name.
    pub user: Name,
}

impl AppHost {
    /// Parses a `Host` header value (or an Origin's host part) against the app domain, which
    /// carries its port when that is not the scheme's default (`apps.example.test:8080`).
    /// Case is ignored. A host that is the app domain itself, or not under it, gives
    /// [`HostError::NotUnderAppDomain`].
    pub fn parse(host: &str, app_domain: &str) -> Result<AppHost, HostError> {
        let host = host.to_ascii_lowercase();
        let domain = app_domain.to_ascii_lowercase();
        let label = host
            .strip_suffix(&domain)
            .and_then(|rest| rest.strip_suffix('.'))
            .ok_or(HostError::NotUnderAppDomain)?;
        parse_label(label)
    }

    /// The first label, as it appears in the host.
    pub fn label(&self) -> String {
        let s = if self.https { "s" } else { "" };
        let (port, agent, ws, user) = (self.port, &self.agent, &self.workspace, &self.user);
        format!("{port:04}{s}--{agent}--{ws}--{user}")
    }
}

/// Checks that the app label for these names fits in one DNS label, and returns it.
pub fn app_label(
    port: u16,
    https: bool,
    agent: &Name,
    workspace: &Name,
    user: &Name,
) -> Result<String, HostError> {
    if port < FIRST_APP_PORT {
        return Err(HostError::ReservedPort(port));
    }
    let host = AppHost {
        port,
        https,
        agent: agent.clone(),
        workspace: workspace.clone(),
        user: user.clone(),
    };
    let label = host.label();
    if label.len() > MAX_LABEL_LEN {
        return Err(HostError::TooLong(label.len()));
    }
    Ok(label)
}

/// A user, workspace or agent name that can appear in an app label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Parses a name: 1 to 63 characters of `a-z`, `0-9` and `-`, not starting or ending with
    /// `-` and without `--`. Upper case is refused rather than folded, so a name is stored the
    /// way it appears in URLs.
    pub fn parse(text: &str) -> Result<Name, HostError> {
        let bad = || HostError::BadName(text.to_owned());
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if text.is_empty() || text.len() > MAX_LABEL_LEN || !text.chars().all(allowed) {
            return Err(bad());
        }
        if text.starts_with('-') || text.ends_with('-') || text.contains("--") {
            return Err(bad());
        }
        Ok(Name(text.to_owned()))
    }

    /// The name's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a host is not an app host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The host is not one label under the app domain (it may be the app domain itself).
    #[error("the host is not an app under the gateway's app domain")]
    NotUnderAppDomain,
    /// The label is not `PORT[s]--AGENT--WORKSPACE--USER`.
    #[error(
        "the first label must read PORT[s]--AGENT--WORKSPACE--USER, e.g. 8080--main--myws--alice"
    )]
    BadShape,
    /// The port is not 4 or 5 digits, or above 65535.
    #[error("the port must be 4 or 5 digits (0000-65535), optionally followed by `s` for HTTPS")]
    BadPort,
    /// Ports below 9 are the agent's own services.
    #[error("port {0} is reserved for the agent; apps use ports from 9 up")]
    ReservedPort(u16),
    /// A name holds characters a DNS label cannot, or a `--`.
    #[error("`{0}` is not a valid name: use a-z, 0-9 and single dashes, not at either end")]
    BadName(String),
    /// The whole label is longer than DNS allows.
    #[error(
        "the app label would be {0} characters, and a DNS label holds at most 63: \
         use shorter agent, workspace or user names"
    )]
    TooLong(usize),
}

// Parses the first label.
fn parse_label(label: &str) -> Result<AppHost, HostError> {
    if label.len() > MAX_LABEL_LEN {
        return Err(HostError::TooLong(label.len()));
    }
    if label.contains('.') {
        return Err(HostError::BadShape);
    }
    let parts: Vec<&str> = label.split("--").collect();
    let [port, agent, workspace, user] = parts[..] else {
        return Err(HostError::BadShape);
    };
    let (port, https) = parse_port(port)?;
    Ok(AppHost {
        port,
        https,
        agent: Name::parse(agent)?,
        workspace: Name::parse(workspace)?,
        user: Name::parse(user)?,
    })
}

fn parse_port(text: &str) -> Result<(u16, bool), HostError> {
    let (digits, https) = match text.strip_suffix('s') {
        Some(d) => (d, true),
        None => (text, false),
    };
    let is_digits = digits.bytes().all(|b| b.is_ascii_digit());
    if !(4..=5).contains(&digits.len()) || !is_digits {
        return Err(HostError::BadPort);
    }
    let port: u16 = digits.parse().map_err(|_| HostError::BadPort)?;
    if port < FIRST_APP_PORT {
        return Err(HostError::ReservedPort(port));
    }
    Ok((port, https))
}

/// The longest DNS label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;
/// The first tunnel port that reaches a workspace service; lower ones are the agent's own.
pub const FIRST_APP_PORT: u16 = 9;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const DOMAIN: &str = "apps.example.test:8080";

    #[test]
    fn parses_a_plain_app_host() {
        let h = AppHost::parse("8080--main--myws--alice.apps.example.test:8080", DOMAIN).unwrap();
        assert_eq!(h.port, 8080);
        assert!(!h.https);
        assert_eq!(h.agent.as_str(), "main");
        assert_eq!(h.workspace.as_str(), "myws");
        assert_eq!(h.user.as_str(), "alice");
    }

    #[test]
    fn s_suffix_means_https_and_case_is_ignored() {
        let h = AppHost::parse("12345S--Main--WS--Bob.APPS.example.test:8080", DOMAIN).unwrap();
        assert_eq!((h.port, h.https), (12345, true));
        assert_eq!(h.user.as_str(), "bob");
    }

    #[test]
    fn leading_zeros_pad_short_ports_and_low_ports_are_reserved() {
        let h = AppHost::parse("0080--a--b--c.apps.example.test:8080", DOMAIN).unwrap();
        assert_eq!(h.port, 80);
        let err = AppHost::parse("0008--a--b--c.apps.example.test:8080", DOMAIN);
        assert_eq!(err, Err(HostError::ReservedPort(8)));
        let err = AppHost::parse("0000--a--b--c.apps.example.test:8080", DOMAIN);
        assert_eq!(err, Err(HostError::ReservedPort(0)));
    }

    #[test]
    fn malformed_hosts_are_refused() {
        let bad = [
            ("apps.example.test:8080", HostError::NotUnderAppDomain),
            ("8080--a--b--c.other.test", HostError::NotUnderAppDomain),
            (
                "8080--a--b--c.apps.example.test",
                HostError::NotUnderAppDomain,
            ),
            (
                "x.8080--a--b--c.apps.example.test:8080",
                HostError::BadShape,
            ),
            ("8080--a--b.apps.example.test:8080", HostError::BadShape),
            (
                "8080--a--b--c--d.apps.example.test:8080",
                HostError::BadShape,
            ),
            ("808--a--b--c.apps.example.test:8080", HostError::BadPort),
            ("123456--a--b--c.apps.example.test:8080", HostError::BadPort),
            ("65536--a--b--c.apps.example.test:8080", HostError::BadPort),
            ("80x0--a--b--c.apps.example.test:8080", HostError::BadPort),
            ("8080ss--a--b--c.apps.example.test:8080", HostError::BadPort),
            (
                "8080--a_b--b--c.apps.example.test:8080",
                HostError::BadName("a_b".into()),
            ),
            (
                "8080---a--b--c.apps.example.test:8080",
                HostError::BadName("-a".into()),
            ),
            (
                "8080--a--b--.apps.example.test:8080",
                HostError::BadName("".into()),
            ),
        ];
        for (host, want) in bad {
            assert_eq!(AppHost::parse(host, DOMAIN), Err(want), "{host}");
        }
    }

    #[test]
    fn labels_over_63_characters_are_refused() {
        let host = format!("8080--{}--b--c.{DOMAIN}", "a".repeat(52));
        assert_eq!(AppHost::parse(&host, DOMAIN), Err(HostError::TooLong(64)));
        let fits = format!("8080--{}--b--c.{DOMAIN}", "a".repeat(51));
        assert!(AppHost::parse(&fits, DOMAIN).is_ok());
    }

    #[test]
    fn app_label_counts_the_port_width_and_suffix() {
        let n = |s: &str| Name::parse(s).unwrap();
        let (a, w, u) = (n(&"a".repeat(20)), n(&"w".repeat(20)), n("alice-smith"));
        assert_eq!(app_label(8080, false, &a, &w, &u).unwrap().len(), 61);
        assert_eq!(app_label(18080, false, &a, &w, &u).unwrap().len(), 62);
        assert_eq!(app_label(18080, true, &a, &w, &u).unwrap().len(), 63);
        let w2 = n(&"w".repeat(21));
        assert_eq!(
            app_label(18080, true, &a, &w2, &u),
            Err(HostError::TooLong(64))
        );
        assert_eq!(
            app_label(5, false, &a, &w, &u),
            Err(HostError::ReservedPort(5))
        );
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9]|-[a-z0-9]){0,8}"
    }

    proptest! {
        #[test]
        fn label_round_trips(port in 9u16.., https: bool, a in name(), w in name(), u in name()) {
            let (a, w, u) = (Name::parse(&a).unwrap(), Name::parse(&w).unwrap(), Name::parse(&u).unwrap());
            let label = app_label(port, https, &a, &w, &u).unwrap();
            let parsed = AppHost::parse(&format!("{label}.{DOMAIN}"), DOMAIN).unwrap();
            prop_assert_eq!(parsed.port, port);
            prop_assert_eq!(parsed.https, https);
            prop_assert_eq!(parsed.label(), label);
        }

        #[test]
        fn parse_never_panics_and_accepted_labels_are_short(host in "\\PC{0,80}") {
            if let Ok(h) = AppHost::parse(&host, DOMAIN) {
                prop_assert!(h.label().len() <= MAX_LABEL_LEN);
                prop_assert!(h.port >= FIRST_APP_PORT);
            }
        }
    }
}
