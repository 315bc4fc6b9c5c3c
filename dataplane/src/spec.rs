//! Port-forward specs: the text of `--tcp`/`--udp` values, parsed into forwards.
//!
//! A spec is `[BIND:]LOCAL[-LOCAL_END][:REMOTE[-REMOTE_END]]`. `BIND` is an IPv4 dotted quad or
//! a bracketed IPv6 address (`[::1]`); hostnames, zone ids and unbracketed IPv6 addresses are
//! refused. Without a remote part the remote ports equal the local ones. A flag value may hold a
//! comma-separated list of specs, with whitespace around each item ignored.
//!
//! How to drive it: call [`parse_specs`] once per protocol with every flag and environment value,
//! concatenate the results, then call [`check_duplicates`] on the whole list before opening any
//! listener. Every error names the offending spec text and the rule it breaks.
//!
//! This module only parses. It opens no sockets and does not know which ports are free.
//!
//! Known shortcoming: duplicates are keyed by (protocol, bind address, local port) exactly, so
//! `0.0.0.0:8080` next to `8080` is accepted here although the second listener will fail to
//! bind; likewise `[::1]:8080` next to `8080` is accepted, and the default forward's
//! best-effort `[::1]` listener then fails (it is only logged).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// The bind address used when a spec names none. The listener also tries `[::1]` best-effort.
pub const DEFAULT_BIND_V4: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Parses every value (each may be a comma list) for one protocol and expands ranges.
///
/// Returns one [`Forward`] per local port, in the order the specs were given. Empty list items
/// (`8000,,9000`, a trailing comma, an empty value) are errors, and so are two specs of this
/// call that listen on the same address and port (see [`check_duplicates`] for the rule).
pub fn parse_specs(protocol: Protocol, values: &[&str]) -> Result<Vec<Forward>, SpecError> {
    let mut forwards = Vec::new();
    let mut sources = Vec::new();
    for value in values {
        for item in split_list(value)? {
            let spec: PortSpec = item.parse()?;
            for (local, remote) in spec.pairs() {
                let bind = spec.bind;
                forwards.push(Forward {
                    protocol,
                    bind,
                    local,
                    remote,
                });
                sources.push(item);
            }
        }
    }

    // Reject duplicates here too, where the user's own spec texts are still known.
    match find_duplicate(forwards.iter().copied().zip(sources)) {
        Some(dup) => Err(duplicate_error(dup.forward, dup.second, dup.first)),
        None => Ok(forwards),
    }
}

/// Rejects duplicates across all forwards (both protocols), after filling in the default bind.
///
/// Two forwards are duplicates when they share protocol, effective bind address and local port,
/// so `8080` and `127.0.0.1:8080` collide. The same port on TCP and UDP is fine, and so are two
/// local ports onto one remote port. The error names both forwards in spec form.
pub fn check_duplicates(forwards: &[Forward]) -> Result<(), SpecError> {
    match find_duplicate(forwards.iter().map(|forward| (*forward, forward))) {
        Some(dup) => Err(duplicate_error(
            dup.forward,
            &dup.second.spec_text(),
            &dup.first.spec_text(),
        )),
        None => Ok(()),
    }
}

/// The transport protocol a forward carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// Stream forwarding: one flow per accepted local connection.
    Tcp,
    /// Datagram forwarding: one flow per local client address.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// An inclusive range of ports. It always holds at least one port and never port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    start: u16,
    end: u16,
}

impl PortRange {
    /// Builds the range `start..=end`; refuses port 0 and an end below the start.
    pub fn new(start: u16, end: u16) -> Result<Self, SpecError> {
        let spec = Self { start, end }.to_string();
        if start == 0 || end == 0 {
            return Err(SpecError::PortZero { spec });
        }
        if end < start {
            return Err(SpecError::RangeReversed { spec, start, end });
        }
        Ok(Self { start, end })
    }

    /// The first port of the range.
    pub fn start(&self) -> u16 {
        self.start
    }

    /// The last port of the range (inclusive).
    pub fn end(&self) -> u16 {
        self.end
    }

    /// How many ports the range holds: at least 1, at most 65535.
    #[allow(
        clippy::len_without_is_empty,
        reason = "a PortRange is never empty, so is_empty would always be false"
    )]
    pub fn len(&self) -> u32 {
        u32::from(self.end - self.start) + 1
    }

    /// Every port of the range in ascending order. Ends after 65535 without wrapping.
    pub fn ports(&self) -> impl Iterator<Item = u16> + use<> {
        self.start..=self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// One parsed spec: an optional bind address, a local range and a remote range of equal length.
///
/// Parse it with [`str::parse`]; its [`Display`](fmt::Display) form is canonical and parses
/// back to an equal value. `bind: None` means the default (see [`Forward::bind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortSpec {
    /// The local address to listen on, or `None` for the default.
    pub bind: Option<IpAddr>,
    local: PortRange,
    remote: PortRange,
}

impl PortSpec {
    /// Builds a spec; refuses local and remote ranges of different lengths.
    pub fn new(
        bind: Option<IpAddr>,
        local: PortRange,
        remote: PortRange,
    ) -> Result<Self, SpecError> {
        let spec = Self {
            bind,
            local,
            remote,
        };
        check_lengths(&spec.to_string(), local, remote)?;
        Ok(spec)
    }

    /// The local ports to listen on.
    pub fn local(&self) -> PortRange {
        self.local
    }

    /// The workspace ports the local ports forward to, in the same order.
    pub fn remote(&self) -> PortRange {
        self.remote
    }

    /// Every `(local, remote)` port pair, in ascending order.
    pub fn pairs(&self) -> impl Iterator<Item = (u16, u16)> + use<> {
        self.local.ports().zip(self.remote.ports())
    }
}

impl FromStr for PortSpec {
    type Err = SpecError;

    /// Parses one spec. Commas and surrounding whitespace are not accepted here; lists are
    /// split (and items trimmed) by [`parse_specs`].
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let parts = split_spec(spec)?;
        let local = parse_range(spec, parts.local)?;
        let remote = match parts.remote {
            Some(text) => parse_range(spec, text)?,
            None => local,
        };
        check_lengths(spec, local, remote)?;
        Ok(Self {
            bind: parts.bind,
            local,
            remote,
        })
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_bind(f, self.bind)?;
        write!(f, "{}", self.local)?;
        if self.remote != self.local {
            write!(f, ":{}", self.remote)?;
        }
        Ok(())
    }
}

/// One local listener bound to one remote port: the result of expanding specs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Forward {
    /// The transport carried.
    pub protocol: Protocol,
    /// The local address; `None` is the default: 127.0.0.1 and, best-effort, `[::1]`.
    pub bind: Option<IpAddr>,
    /// The local port to listen on.
    pub local: u16,
    /// The workspace port to forward to.
    pub remote: u16,
}

impl Forward {
    /// The bind address with the default filled in: `bind`, or [`DEFAULT_BIND_V4`].
    pub fn effective_bind(&self) -> IpAddr {
        self.bind.unwrap_or(IpAddr::V4(DEFAULT_BIND_V4))
    }

    /// This forward written as a one-port spec, for error messages.
    fn spec_text(&self) -> String {
        let bind = BindText(self.bind);
        if self.local == self.remote {
            format!("{bind}{}", self.local)
        } else {
            format!("{bind}{}:{}", self.local, self.remote)
        }
    }
}

/// Why a spec or a list of specs was refused. Every message names the offending spec text.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum SpecError {
    /// The spec is empty or only whitespace. Give at least a local port, such as `8080`.
    #[error("invalid spec {spec:?}: a spec must name at least a local port")]
    Empty {
        /// The offending spec text.
        spec: String,
    },

    /// A comma list holds an empty item (`8000,,9000`, a trailing comma or an empty value).
    /// Remove the extra comma.
    #[error("invalid spec list {list:?}: item {item} is empty")]
    EmptyItem {
        /// The whole comma list as given.
        list: String,
        /// The 1-based position of the empty item.
        item: usize,
    },

    /// A single spec contains a comma. Split lists with [`parse_specs`] instead.
    #[error("invalid spec {spec:?}: one spec cannot hold a ',' (lists are split before parsing)")]
    Comma {
        /// The offending spec text.
        spec: String,
    },

    /// A port number is missing, as in `8000:` or `-8000`. Write the port.
    #[error("invalid spec {spec:?}: a port number is missing")]
    EmptyPort {
        /// The offending spec text.
        spec: String,
    },

    /// A port is not written in decimal digits (signs and spaces are refused too).
    #[error("invalid spec {spec:?}: port {port:?} is not a decimal number")]
    NotDecimal {
        /// The offending spec text.
        spec: String,
        /// The text that should have been a port.
        port: String,
    },

    /// A port is 0. Ports are 1 to 65535.
    #[error("invalid spec {spec:?}: port 0 is not allowed; ports are 1 to 65535")]
    PortZero {
        /// The offending spec text.
        spec: String,
    },

    /// A port is above 65535. Ports are 1 to 65535.
    #[error("invalid spec {spec:?}: port {port} is above 65535")]
    PortTooLarge {
        /// The offending spec text.
        spec: String,
        /// The digits of the oversized port.
        port: String,
    },

    /// A range has more than one `-`. Write a range as `START-END`.
    #[error("invalid spec {spec:?}: range {range:?} has more than one '-'")]
    InvalidRange {
        /// The offending spec text.
        spec: String,
        /// The malformed range text.
        range: String,
    },

    /// A range ends below its start. Swap the two ports.
    #[error("invalid spec {spec:?}: range end {end} is below its start {start}")]
    RangeReversed {
        /// The offending spec text.
        spec: String,
        /// The first port of the range.
        start: u16,
        /// The last port of the range.
        end: u16,
    },

    /// The local and remote ranges have different lengths, so ports cannot be paired.
    #[error(
        "invalid spec {spec:?}: the local range has {local} ports but the remote range has \
         {remote}; they must be the same length"
    )]
    LengthMismatch {
        /// The offending spec text.
        spec: String,
        /// How many local ports the spec names.
        local: u32,
        /// How many remote ports the spec names.
        remote: u32,
    },

    /// The spec has too many `:`-separated parts.
    #[error(
        "invalid spec {spec:?}: too many ':'-separated parts; the form is \
         [BIND:]LOCAL[-LOCAL_END][:REMOTE[-REMOTE_END]]"
    )]
    TooManyParts {
        /// The offending spec text.
        spec: String,
    },

    /// An IPv6 bind address is not in brackets. Write it as `[::1]:8080`.
    #[error("invalid spec {spec:?}: an IPv6 bind address must be in brackets, as in [::1]:8080")]
    UnbracketedIpv6 {
        /// The offending spec text.
        spec: String,
    },

    /// The `[` that opens an IPv6 bind address has no matching `]`.
    #[error("invalid spec {spec:?}: the '[' of the IPv6 bind address has no closing ']'")]
    UnclosedBracket {
        /// The offending spec text.
        spec: String,
    },

    /// A bracketed bind address is not followed by `:` and a local port.
    #[error("invalid spec {spec:?}: expected ':' and a local port after the bind address")]
    MissingLocalPort {
        /// The offending spec text.
        spec: String,
    },

    /// The bind address carries a zone id (`%eth0`), which is not supported. Drop the zone.
    #[error("invalid spec {spec:?}: bind address {bind:?} has a zone id, which is not supported")]
    ZoneId {
        /// The offending spec text.
        spec: String,
        /// The bind address text.
        bind: String,
    },

    /// The bind address is a hostname. Use an IPv4 address or a bracketed IPv6 address.
    #[error(
        "invalid spec {spec:?}: bind address {bind:?} is a hostname; use an IPv4 address or a \
         bracketed IPv6 address"
    )]
    HostnameBind {
        /// The offending spec text.
        spec: String,
        /// The bind address text.
        bind: String,
    },

    /// The bind address is neither an IPv4 dotted quad nor a bracketed IPv6 address.
    #[error(
        "invalid spec {spec:?}: bind address {bind:?} is not an IPv4 address or a bracketed \
         IPv6 address"
    )]
    InvalidBind {
        /// The offending spec text.
        spec: String,
        /// The bind address text.
        bind: String,
    },

    /// Two forwards of one protocol listen on the same address and port (after the default
    /// bind address is filled in). Remove one, or give one a different local port.
    #[error(
        "invalid spec {spec:?}: {protocol} listener {listen} is already forwarded by {first:?}"
    )]
    Duplicate {
        /// The later spec text (from [`check_duplicates`]: the forward in spec form).
        spec: String,
        /// The protocol both forwards carry.
        protocol: Protocol,
        /// The address and port both would listen on.
        listen: SocketAddr,
        /// The earlier spec text that claimed the listener first.
        first: String,
    },
}

/// A spec split at its colons, before the ports are parsed.
struct SpecParts<'a> {
    bind: Option<IpAddr>,
    local: &'a str,
    remote: Option<&'a str>,
}

/// Splits a spec into bind address, local range text and optional remote range text.
fn split_spec(spec: &str) -> Result<SpecParts<'_>, SpecError> {
    if spec.trim().is_empty() {
        return Err(SpecError::Empty {
            spec: spec.to_owned(),
        });
    }
    if spec.contains(',') {
        return Err(SpecError::Comma {
            spec: spec.to_owned(),
        });
    }
    if let Some(rest) = spec.strip_prefix('[') {
        return split_bracketed(spec, rest);
    }
    if is_unbracketed_ipv6(spec) {
        return Err(SpecError::UnbracketedIpv6 {
            spec: spec.to_owned(),
        });
    }
    split_unbracketed(spec)
}

/// Splits a spec that starts with a bracketed IPv6 bind address; `rest` follows the `[`.
fn split_bracketed<'a>(spec: &str, rest: &'a str) -> Result<SpecParts<'a>, SpecError> {
    let Some((inner, after)) = rest.split_once(']') else {
        return Err(SpecError::UnclosedBracket {
            spec: spec.to_owned(),
        });
    };
    let bind = Some(parse_v6_bind(spec, inner)?);
    let Some(ports) = after.strip_prefix(':') else {
        return Err(SpecError::MissingLocalPort {
            spec: spec.to_owned(),
        });
    };
    match ports.split_once(':') {
        None => Ok(SpecParts {
            bind,
            local: ports,
            remote: None,
        }),
        Some((_, remote)) if remote.contains(':') => Err(too_many_parts(spec)),
        Some((local, remote)) => Ok(SpecParts {
            bind,
            local,
            remote: Some(remote),
        }),
    }
}

/// Splits a spec with no bracket: `LOCAL`, `LOCAL:REMOTE`, `BIND:LOCAL` or `BIND:LOCAL:REMOTE`.
fn split_unbracketed(spec: &str) -> Result<SpecParts<'_>, SpecError> {
    let parts: Vec<&str> = spec.split(':').collect();
    match parts.as_slice() {
        [local] => Ok(SpecParts {
            bind: None,
            local,
            remote: None,
        }),
        [bind, local] if looks_like_bind(bind) => {
            let bind = Some(parse_v4_bind(spec, bind)?);
            Ok(SpecParts {
                bind,
                local,
                remote: None,
            })
        }
        [local, remote] => Ok(SpecParts {
            bind: None,
            local,
            remote: Some(remote),
        }),
        [bind, local, remote] => {
            let bind = Some(parse_v4_bind(spec, bind)?);
            Ok(SpecParts {
                bind,
                local,
                remote: Some(remote),
            })
        }
        _ => Err(too_many_parts(spec)),
    }
}

/// Whether the spec, or the spec without its last one or two `:` parts, is an IPv6 address.
///
/// A valid unbracketed spec never passes: IPv6 text needs `::` or seven colons.
fn is_unbracketed_ipv6(spec: &str) -> bool {
    let mut candidate = spec;
    for _ in 0..3 {
        let address = candidate
            .split_once('%')
            .map_or(candidate, |(address, _)| address);
        if address.parse::<Ipv6Addr>().is_ok() {
            return true;
        }
        match candidate.rsplit_once(':') {
            Some((head, _)) => candidate = head,
            None => return false,
        }
    }
    false
}

/// Whether the first of two `:` parts is meant as an address rather than a port range.
fn looks_like_bind(text: &str) -> bool {
    text.chars()
        .any(|c| c == '.' || c == '%' || c.is_alphabetic())
}

/// Parses an unbracketed bind address, which must be an IPv4 dotted quad.
fn parse_v4_bind(spec: &str, text: &str) -> Result<IpAddr, SpecError> {
    if let Ok(address) = text.parse::<Ipv4Addr>() {
        return Ok(IpAddr::V4(address));
    }
    let (spec, bind) = (spec.to_owned(), text.to_owned());
    if text.contains('%') {
        return Err(SpecError::ZoneId { spec, bind });
    }
    if is_hostname(text) {
        return Err(SpecError::HostnameBind { spec, bind });
    }
    Err(SpecError::InvalidBind { spec, bind })
}

/// Parses the text between `[` and `]`, which must be an IPv6 address without a zone id.
fn parse_v6_bind(spec: &str, inner: &str) -> Result<IpAddr, SpecError> {
    let (spec_text, bind) = (spec.to_owned(), format!("[{inner}]"));
    if inner.contains('%') {
        return Err(SpecError::ZoneId {
            spec: spec_text,
            bind,
        });
    }
    match inner.parse::<Ipv6Addr>() {
        Ok(address) => Ok(IpAddr::V6(address)),
        Err(_) => Err(SpecError::InvalidBind {
            spec: spec_text,
            bind,
        }),
    }
}

/// Whether the text reads as a DNS name: letters, digits, `-` and `.`, with a letter.
fn is_hostname(text: &str) -> bool {
    let allowed = |c: char| c.is_alphanumeric() || c == '-' || c == '.';
    text.chars().all(allowed) && text.chars().any(char::is_alphabetic)
}

/// Parses `PORT` or `START-END`.
fn parse_range(spec: &str, text: &str) -> Result<PortRange, SpecError> {
    let (start, end) = text.split_once('-').unwrap_or((text, text));
    if end.contains('-') {
        let range = text.to_owned();
        return Err(SpecError::InvalidRange {
            spec: spec.to_owned(),
            range,
        });
    }
    let (start, end) = (parse_port(spec, start)?, parse_port(spec, end)?);
    if end < start {
        return Err(SpecError::RangeReversed {
            spec: spec.to_owned(),
            start,
            end,
        });
    }
    Ok(PortRange { start, end })
}

/// Parses one decimal port in 1..=65535; leading zeros are accepted.
fn parse_port(spec: &str, text: &str) -> Result<u16, SpecError> {
    if text.is_empty() {
        return Err(SpecError::EmptyPort {
            spec: spec.to_owned(),
        });
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        let port = text.to_owned();
        return Err(SpecError::NotDecimal {
            spec: spec.to_owned(),
            port,
        });
    }
    let value = text.bytes().try_fold(0_u16, |value, digit| {
        value.checked_mul(10)?.checked_add(u16::from(digit - b'0'))
    });
    match value {
        None => Err(SpecError::PortTooLarge {
            spec: spec.to_owned(),
            port: text.to_owned(),
        }),
        Some(0) => Err(SpecError::PortZero {
            spec: spec.to_owned(),
        }),
        Some(port) => Ok(port),
    }
}

/// Refuses local and remote ranges of different lengths.
fn check_lengths(spec: &str, local: PortRange, remote: PortRange) -> Result<(), SpecError> {
    if local.len() == remote.len() {
        return Ok(());
    }
    Err(SpecError::LengthMismatch {
        spec: spec.to_owned(),
        local: local.len(),
        remote: remote.len(),
    })
}

fn too_many_parts(spec: &str) -> SpecError {
    SpecError::TooManyParts {
        spec: spec.to_owned(),
    }
}

/// Splits a comma list into trimmed items; an empty item is an error.
fn split_list(value: &str) -> Result<Vec<&str>, SpecError> {
    value
        .split(',')
        .enumerate()
        .map(|(index, item)| match item.trim() {
            "" => Err(SpecError::EmptyItem {
                list: value.to_owned(),
                item: index + 1,
            }),
            item => Ok(item),
        })
        .collect()
}

/// Two forwards that claim the same listener, with whatever identifies each one's source.
struct DuplicatePair<T> {
    forward: Forward,
    first: T,
    second: T,
}

/// Finds the first forward whose (protocol, effective bind, local port) was already claimed.
fn find_duplicate<T: Copy>(
    entries: impl IntoIterator<Item = (Forward, T)>,
) -> Option<DuplicatePair<T>> {
    let mut seen = HashMap::new();
    for (forward, source) in entries {
        let key = (forward.protocol, forward.effective_bind(), forward.local);
        if let Some(first) = seen.insert(key, source) {
            return Some(DuplicatePair {
                forward,
                first,
                second: source,
            });
        }
    }
    None
}

fn duplicate_error(forward: Forward, spec: &str, first: &str) -> SpecError {
    SpecError::Duplicate {
        spec: spec.to_owned(),
        protocol: forward.protocol,
        listen: SocketAddr::new(forward.effective_bind(), forward.local),
        first: first.to_owned(),
    }
}

/// Writes a bind address as a spec prefix: `1.2.3.4:`, `[::1]:` or nothing.
fn write_bind(f: &mut fmt::Formatter<'_>, bind: Option<IpAddr>) -> fmt::Result {
    match bind {
        Some(IpAddr::V4(address)) => write!(f, "{address}:"),
        Some(IpAddr::V6(address)) => write!(f, "[{address}]:"),
        None => Ok(()),
    }
}

/// Displays a bind address as a spec prefix.
struct BindText(Option<IpAddr>);

impl fmt::Display for BindText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_bind(f, self.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    const LOCALHOST_V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

    fn spec(text: &str) -> PortSpec {
        text.parse().unwrap()
    }

    fn err(text: &str) -> SpecError {
        text.parse::<PortSpec>().unwrap_err()
    }

    fn range(start: u16, end: u16) -> PortRange {
        PortRange::new(start, end).unwrap()
    }

    fn tcp(values: &[&str]) -> Result<Vec<Forward>, SpecError> {
        parse_specs(Protocol::Tcp, values)
    }

    fn fwd(protocol: Protocol, bind: Option<IpAddr>, local: u16, remote: u16) -> Forward {
        Forward {
            protocol,
            bind,
            local,
            remote,
        }
    }

    // Accepted forms.

    #[test]
    fn single_port_forwards_to_same_port() {
        let parsed = spec("8000");
        assert_eq!(parsed.bind, None);
        assert_eq!(parsed.local(), range(8000, 8000));
        assert_eq!(parsed.remote(), range(8000, 8000));
    }

    #[test]
    fn local_and_remote_port() {
        let parsed = spec("8000:8080");
        assert_eq!(parsed.bind, None);
        assert_eq!(parsed.pairs().collect::<Vec<_>>(), vec![(8000, 8080)]);
    }

    #[test]
    fn range_without_remote_forwards_to_same_range() {
        let parsed = spec("8000-8005");
        assert_eq!(parsed.local(), range(8000, 8005));
        assert_eq!(parsed.remote(), range(8000, 8005));
        assert_eq!(parsed.pairs().count(), 6);
    }

    #[test]
    fn range_onto_range_pairs_in_order() {
        let pairs: Vec<_> = spec("1-5:6-10").pairs().collect();
        assert_eq!(pairs, vec![(1, 6), (2, 7), (3, 8), (4, 9), (5, 10)]);
    }

    #[test]
    fn ipv4_bind_with_local_and_remote() {
        let parsed = spec("127.0.0.1:4000:4000");
        assert_eq!(parsed.bind, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(parsed.pairs().collect::<Vec<_>>(), vec![(4000, 4000)]);
    }

    #[test]
    fn ipv4_bind_with_local_only() {
        let parsed = spec("0.0.0.0:4000-4001");
        assert_eq!(parsed.bind, Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        assert_eq!(parsed.remote(), range(4000, 4001));
    }

    #[test]
    fn bracketed_ipv6_bind() {
        let parsed = spec("[::1]:8080:8081");
        assert_eq!(parsed.bind, Some(LOCALHOST_V6));
        assert_eq!(parsed.pairs().collect::<Vec<_>>(), vec![(8080, 8081)]);
    }

    #[test]
    fn bracketed_ipv6_bind_with_ranges() {
        let parsed = spec("[::1]:4000-4001:5000-5001");
        assert_eq!(parsed.bind, Some(LOCALHOST_V6));
        let pairs: Vec<_> = parsed.pairs().collect();
        assert_eq!(pairs, vec![(4000, 5000), (4001, 5001)]);
    }

    #[test]
    fn bracketed_ipv6_bind_with_local_only() {
        let parsed = spec("[::1]:4000");
        assert_eq!(parsed.bind, Some(LOCALHOST_V6));
        assert_eq!(parsed.remote(), range(4000, 4000));
    }

    #[test]
    fn one_port_range_is_fine() {
        assert_eq!(spec("4444-4444").local(), range(4444, 4444));
        assert_eq!(
            spec("4444-4444:80").pairs().collect::<Vec<_>>(),
            vec![(4444, 80)]
        );
    }

    #[test]
    fn leading_zeros_are_accepted() {
        assert_eq!(spec("08080").local(), range(8080, 8080));
        assert_eq!(spec("0000001-00002").local(), range(1, 2));
    }

    #[test]
    fn extreme_ports_are_accepted() {
        assert_eq!(spec("1").local(), range(1, 1));
        assert_eq!(spec("65535").local(), range(65535, 65535));
    }

    #[test]
    fn range_ending_at_65535_terminates() {
        let parsed = spec("65530-65535");
        let ports: Vec<u16> = parsed.local().ports().collect();
        assert_eq!(ports, vec![65530, 65531, 65532, 65533, 65534, 65535]);
        assert_eq!(parsed.pairs().count(), 6);
        assert_eq!(parsed.local().len(), 6);
    }

    #[test]
    fn full_port_range_has_65535_ports() {
        let full = range(1, 65535);
        assert_eq!(full.len(), 65535);
        assert_eq!(full.ports().count(), 65535);
        assert_eq!(tcp(&["1-65535"]).unwrap().len(), 65535);
    }

    #[test]
    fn comma_list_with_whitespace() {
        let forwards = tcp(&[" 8000 , 9000:9001 "]).unwrap();
        let expected = vec![
            fwd(Protocol::Tcp, None, 8000, 8000),
            fwd(Protocol::Tcp, None, 9000, 9001),
        ];
        assert_eq!(forwards, expected);
    }

    #[test]
    fn every_value_and_form_is_expanded_in_order() {
        let values = [
            "8000,1-2:6-7",
            "127.0.0.1:4000:4000",
            "[::1]:4000-4001:5000-5001",
        ];
        let forwards = parse_specs(Protocol::Udp, &values).unwrap();
        let v4 = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let expected = vec![
            fwd(Protocol::Udp, None, 8000, 8000),
            fwd(Protocol::Udp, None, 1, 6),
            fwd(Protocol::Udp, None, 2, 7),
            fwd(Protocol::Udp, v4, 4000, 4000),
            fwd(Protocol::Udp, Some(LOCALHOST_V6), 4000, 5000),
            fwd(Protocol::Udp, Some(LOCALHOST_V6), 4001, 5001),
        ];
        assert_eq!(forwards, expected);
    }

    #[test]
    fn no_values_give_no_forwards() {
        assert_eq!(tcp(&[]).unwrap(), Vec::new());
    }

    #[test]
    fn effective_bind_fills_in_default() {
        assert_eq!(
            fwd(Protocol::Tcp, None, 1, 1).effective_bind(),
            IpAddr::V4(DEFAULT_BIND_V4)
        );
        let v6 = fwd(Protocol::Tcp, Some(LOCALHOST_V6), 1, 1);
        assert_eq!(v6.effective_bind(), LOCALHOST_V6);
    }

    #[test]
    fn protocol_displays_lowercase() {
        assert_eq!(Protocol::Tcp.to_string(), "tcp");
        assert_eq!(Protocol::Udp.to_string(), "udp");
    }

    #[test]
    fn display_is_canonical() {
        let cases = [
            ("8000", "8000"),
            ("8000:8000", "8000"),
            ("08000:8080", "8000:8080"),
            ("1-5:6-10", "1-5:6-10"),
            ("4444-4444", "4444"),
            ("127.0.0.1:4000:4000", "127.0.0.1:4000"),
            ("[::1]:8080:8081", "[::1]:8080:8081"),
            ("[0:0::1]:4000-4001:5000-5001", "[::1]:4000-4001:5000-5001"),
        ];
        for (input, canonical) in cases {
            let parsed = spec(input);
            assert_eq!(parsed.to_string(), canonical, "display of {input}");
            assert_eq!(spec(canonical), parsed, "reparse of {canonical}");
        }
    }

    #[test]
    fn constructors_agree_with_parser() {
        let built = PortSpec::new(Some(LOCALHOST_V6), range(1, 5), range(6, 10)).unwrap();
        assert_eq!(built, spec("[::1]:1-5:6-10"));
        assert_eq!(range(3, 9).start(), 3);
        assert_eq!(range(3, 9).end(), 9);
    }

    // Errors, one class at a time.

    #[test]
    fn port_zero_is_rejected() {
        assert_eq!(err("0"), SpecError::PortZero { spec: "0".into() });
        assert!(matches!(err("8000:0"), SpecError::PortZero { .. }));
        assert!(matches!(err("0-5"), SpecError::PortZero { .. }));
        assert!(matches!(err("000"), SpecError::PortZero { .. }));
    }

    #[test]
    fn port_above_65535_is_rejected() {
        let expected = SpecError::PortTooLarge {
            spec: "65536".into(),
            port: "65536".into(),
        };
        assert_eq!(err("65536"), expected);
        assert!(matches!(err("8000:70000"), SpecError::PortTooLarge { .. }));
        assert!(matches!(
            err("99999999999999999999999"),
            SpecError::PortTooLarge { .. }
        ));
    }

    #[test]
    fn non_numeric_port_is_rejected() {
        for text in [
            "http", "80a", "+80", "8000:+80", "８０", "80 ", "1.5", "0x50",
        ] {
            assert!(matches!(err(text), SpecError::NotDecimal { .. }), "{text}");
        }
    }

    #[test]
    fn empty_port_is_rejected() {
        for text in [
            "8000:", ":8000", "-8000", "8000-", "8000:-", "[::1]:", "1.2.3.4:",
        ] {
            assert!(matches!(err(text), SpecError::EmptyPort { .. }), "{text}");
        }
    }

    #[test]
    fn empty_spec_is_rejected() {
        assert_eq!(
            err(""),
            SpecError::Empty {
                spec: String::new()
            }
        );
        assert!(matches!(err("   "), SpecError::Empty { .. }));
    }

    #[test]
    fn malformed_range_is_rejected() {
        let expected = SpecError::InvalidRange {
            spec: "1-2-3".into(),
            range: "1-2-3".into(),
        };
        assert_eq!(err("1-2-3"), expected);
        assert!(matches!(err("--5"), SpecError::InvalidRange { .. }));
    }

    #[test]
    fn unbracketed_ipv6_bind_is_rejected() {
        for text in [
            "::1:8080:8081",
            "::1:8080",
            "::1",
            "fe80::1:80",
            "1:2:3:4:5:6:7:8:80:80",
        ] {
            assert!(
                matches!(err(text), SpecError::UnbracketedIpv6 { .. }),
                "{text}"
            );
        }
    }

    #[test]
    fn hostname_bind_is_rejected() {
        let expected = SpecError::HostnameBind {
            spec: "localhost:8080:8080".into(),
            bind: "localhost".into(),
        };
        assert_eq!(err("localhost:8080:8080"), expected);
        assert!(matches!(
            err("example.com:80"),
            SpecError::HostnameBind { .. }
        ));
    }

    #[test]
    fn zone_id_is_rejected() {
        let expected = SpecError::ZoneId {
            spec: "[fe80::1%eth0]:8080".into(),
            bind: "[fe80::1%eth0]".into(),
        };
        assert_eq!(err("[fe80::1%eth0]:8080"), expected);
        assert!(matches!(
            err("fe80::1%eth0:8080"),
            SpecError::UnbracketedIpv6 { .. }
        ));
        assert!(matches!(err("127.0.0.1%lo:80"), SpecError::ZoneId { .. }));
    }

    #[test]
    fn invalid_bind_addresses_are_rejected() {
        for text in [
            "999.1.1.1:80",
            "[127.0.0.1]:80",
            "[zz]:80",
            "127.0.0.01:80",
            ":80:80",
        ] {
            assert!(matches!(err(text), SpecError::InvalidBind { .. }), "{text}");
        }
    }

    #[test]
    fn broken_brackets_are_rejected() {
        assert!(matches!(
            err("[::1:8080"),
            SpecError::UnclosedBracket { .. }
        ));
        assert!(matches!(err("[::1]"), SpecError::MissingLocalPort { .. }));
        assert!(matches!(
            err("[::1]8080"),
            SpecError::MissingLocalPort { .. }
        ));
    }

    #[test]
    fn too_many_parts_are_rejected() {
        for text in ["1.2.3.4:1:2:3", "1:2:3:4", "[::1]:1:2:3", "8000:[::1]"] {
            assert!(
                matches!(err(text), SpecError::TooManyParts { .. }),
                "{text}"
            );
        }
    }

    #[test]
    fn comma_in_single_spec_is_rejected() {
        assert!(matches!(err("8000,9000"), SpecError::Comma { .. }));
    }

    #[test]
    fn reversed_range_is_rejected_with_clear_message() {
        let error = err("8000-7000");
        let expected = SpecError::RangeReversed {
            spec: "8000-7000".into(),
            start: 8000,
            end: 7000,
        };
        assert_eq!(error, expected);
        let message = r#"invalid spec "8000-7000": range end 7000 is below its start 8000"#;
        assert_eq!(error.to_string(), message);
        assert!(matches!(err("1:9-8"), SpecError::RangeReversed { .. }));
    }

    #[test]
    fn range_onto_one_port_is_rejected() {
        let expected = SpecError::LengthMismatch {
            spec: "1-5:6".into(),
            local: 5,
            remote: 1,
        };
        assert_eq!(err("1-5:6"), expected);
    }

    #[test]
    fn one_port_onto_range_is_rejected() {
        let expected = SpecError::LengthMismatch {
            spec: "1:6-10".into(),
            local: 1,
            remote: 5,
        };
        assert_eq!(err("1:6-10"), expected);
        assert!(matches!(err("1-3:6-10"), SpecError::LengthMismatch { .. }));
    }

    #[test]
    fn constructors_reject_what_the_parser_rejects() {
        assert!(matches!(
            PortRange::new(0, 5),
            Err(SpecError::PortZero { .. })
        ));
        let reversed = PortRange::new(9, 3).unwrap_err();
        assert_eq!(
            reversed.to_string(),
            r#"invalid spec "9-3": range end 3 is below its start 9"#
        );
        let mismatch = PortSpec::new(None, range(1, 2), range(5, 5));
        assert!(matches!(mismatch, Err(SpecError::LengthMismatch { .. })));
    }

    #[test]
    fn empty_list_items_are_rejected() {
        let expected = SpecError::EmptyItem {
            list: "8000,,9000".into(),
            item: 2,
        };
        assert_eq!(tcp(&["8000,,9000"]).unwrap_err(), expected);
        let trailing = SpecError::EmptyItem {
            list: "8000, ".into(),
            item: 2,
        };
        assert_eq!(tcp(&["8000, "]).unwrap_err(), trailing);
        assert!(matches!(
            tcp(&[""]),
            Err(SpecError::EmptyItem { item: 1, .. })
        ));
        assert!(matches!(
            tcp(&[",8000"]),
            Err(SpecError::EmptyItem { item: 1, .. })
        ));
    }

    #[test]
    fn list_item_errors_name_the_trimmed_item() {
        let error = tcp(&["8000, 0 "]).unwrap_err();
        assert_eq!(error, SpecError::PortZero { spec: "0".into() });
    }

    #[test]
    fn every_error_message_names_its_spec() {
        let bad = [
            "0",
            "65536",
            "x",
            "8000:",
            "1-2-3",
            "::1:80",
            "a.b:80",
            "[fe80::1%lo]:80",
            "999.1.1.1:80",
            "[::1",
            "[::1]",
            "1:2:3:4",
            "8000-7000",
            "1-5:6",
            " ",
        ];
        for text in bad {
            let message = err(text).to_string();
            assert!(
                message.starts_with(&format!("invalid spec {text:?}: ")),
                "{message}"
            );
        }
    }

    // Duplicates.

    #[test]
    fn duplicate_after_default_bind_is_rejected() {
        let error = tcp(&["8080", "127.0.0.1:8080"]).unwrap_err();
        let expected = SpecError::Duplicate {
            spec: "127.0.0.1:8080".into(),
            protocol: Protocol::Tcp,
            listen: "127.0.0.1:8080".parse().unwrap(),
            first: "8080".into(),
        };
        assert_eq!(error, expected);
        let message = concat!(
            r#"invalid spec "127.0.0.1:8080": "#,
            r#"tcp listener 127.0.0.1:8080 is already forwarded by "8080""#,
        );
        assert_eq!(error.to_string(), message);
    }

    #[test]
    fn check_duplicates_fills_in_default_bind() {
        let v4 = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let forwards = [
            fwd(Protocol::Tcp, None, 8080, 1),
            fwd(Protocol::Tcp, v4, 8080, 2),
        ];
        let error = check_duplicates(&forwards).unwrap_err();
        let expected = SpecError::Duplicate {
            spec: "127.0.0.1:8080:2".into(),
            protocol: Protocol::Tcp,
            listen: "127.0.0.1:8080".parse().unwrap(),
            first: "8080:1".into(),
        };
        assert_eq!(error, expected);
    }

    #[test]
    fn overlapping_ranges_are_duplicates() {
        let error = tcp(&["8000-8005", "8005-8010:9000-9005"]).unwrap_err();
        let listen: SocketAddr = "127.0.0.1:8005".parse().unwrap();
        assert!(matches!(error, SpecError::Duplicate { listen: l, .. } if l == listen));
        assert!(matches!(
            tcp(&["8000-8005,8003"]),
            Err(SpecError::Duplicate { .. })
        ));
    }

    #[test]
    fn same_port_twice_in_one_list_is_duplicate() {
        assert!(matches!(
            tcp(&["8000,8000:9000"]),
            Err(SpecError::Duplicate { .. })
        ));
        assert!(matches!(
            tcp(&["[::1]:80", "[::1]:80:81"]),
            Err(SpecError::Duplicate { .. })
        ));
    }

    #[test]
    fn check_duplicates_catches_split_parses() {
        let mut forwards = tcp(&["8080"]).unwrap();
        forwards.extend(tcp(&["127.0.0.1:8080:9090"]).unwrap());
        assert!(matches!(
            check_duplicates(&forwards),
            Err(SpecError::Duplicate { .. })
        ));
    }

    #[test]
    fn same_port_on_tcp_and_udp_is_fine() {
        let mut forwards = tcp(&["8080"]).unwrap();
        forwards.extend(parse_specs(Protocol::Udp, &["8080"]).unwrap());
        assert_eq!(forwards.len(), 2);
        assert_eq!(check_duplicates(&forwards), Ok(()));
    }

    #[test]
    fn two_locals_onto_one_remote_are_fine() {
        let forwards = tcp(&["8000:9000", "8001:9000"]).unwrap();
        assert_eq!(forwards.len(), 2);
        assert_eq!(check_duplicates(&forwards), Ok(()));
    }

    #[test]
    fn different_bind_addresses_are_not_duplicates() {
        let forwards = tcp(&["8080", "[::1]:8080", "10.0.0.1:8080"]).unwrap();
        assert_eq!(forwards.len(), 3);
        assert_eq!(check_duplicates(&forwards), Ok(()));
    }

    // Properties.

    /// Strings made of the characters the grammar uses, plus a few that it does not.
    const GRAMMAR_CHARS: &str = "[0-9:\\-\\[\\],. af%]{0,40}";

    fn check_parse_outcome(text: &str) {
        match text.parse::<PortSpec>() {
            Ok(parsed) => {
                assert_eq!(parsed.local().len(), parsed.remote().len());
                assert_eq!(spec(&parsed.to_string()), parsed);
            }
            Err(error) => assert!(error.to_string().starts_with("invalid spec ")),
        }
    }

    fn check_list_outcome(values: &[String]) {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        match parse_specs(Protocol::Tcp, &values) {
            Ok(forwards) => {
                assert!(forwards.iter().all(|f| f.local != 0 && f.remote != 0));
                assert_eq!(check_duplicates(&forwards), Ok(()));
            }
            Err(error) => assert!(error.to_string().starts_with("invalid spec ")),
        }
    }

    fn port_range() -> impl Strategy<Value = (u16, u16)> {
        (1_u16..=65535).prop_flat_map(|start| (Just(start), start..=65535))
    }

    fn valid_spec() -> impl Strategy<Value = PortSpec> {
        let bind = prop_oneof![
            Just(None),
            any::<Ipv4Addr>().prop_map(|a| Some(IpAddr::V4(a))),
            any::<Ipv6Addr>().prop_map(|a| Some(IpAddr::V6(a))),
        ];
        (bind, port_range(), any::<u16>()).prop_map(|(bind, (start, end), offset)| {
            let local = range(start, end);
            let span = end - start;
            let remote_start = 1 + offset % (65535 - span);
            PortSpec::new(bind, local, range(remote_start, remote_start + span)).unwrap()
        })
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            check_parse_outcome(&text);
        }

        #[test]
        fn grammar_text_never_panics(text in GRAMMAR_CHARS) {
            check_parse_outcome(&text);
        }

        #[test]
        fn arbitrary_lists_never_panic(values in prop::collection::vec(any::<String>(), 0..4)) {
            check_list_outcome(&values);
        }

        #[test]
        fn grammar_lists_never_panic(values in prop::collection::vec(GRAMMAR_CHARS, 0..4)) {
            check_list_outcome(&values);
        }

        #[test]
        fn valid_specs_round_trip(original in valid_spec()) {
            let text = original.to_string();
            prop_assert_eq!(text.parse::<PortSpec>(), Ok(original));
            let pairs = original.pairs().count();
            prop_assert_eq!(u32::try_from(pairs).unwrap(), original.local().len());
        }
    }
}
