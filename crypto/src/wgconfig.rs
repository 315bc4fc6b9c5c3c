//! Reading and writing wg-quick configuration files (the format of `/etc/wireguard/wg0.conf`).
//!
//! [`WgQuickConfig::parse`] turns the text into typed values: one [`InterfaceConfig`] and any
//! number of [`PeerConfig`]s. Every value is parsed on the way in (keys, [`IpNet`]s,
//! [`Endpoint`]s, ports), so code holding a `WgQuickConfig` needs no further checks.
//! [`WgQuickConfig::to_wg_quick`] writes the same format back.
//!
//! # What is accepted
//! - Sections `[Interface]` (exactly one) and `[Peer]` (any number); section and key names are
//!   case-insensitive.
//! - `key = value` lines, with any whitespace around the `=` and the value.
//! - Comments starting with `#` or `;`, on their own line or after a value; blank lines; CRLF
//!   line ends; a UTF-8 byte order mark.
//! - `Address` and `AllowedIPs` take a comma-separated list and may be repeated; the lists add
//!   up. Every other key may appear once per section.
//! - Keys ferry does not apply are collected in [`WgQuickConfig::ignored`] so callers can tell
//!   the user: both wg-quick's own keys (`DNS`, `PostUp`, `PostDown`, `PreUp`, `PreDown`,
//!   `Table`, `SaveConfig`, `FwMark`) and keys nobody knows.
//!
//! # What is not done
//! Endpoint host names are kept as text and never resolved here. Stricter than wg-quick: a
//! single-valued key given twice in one section, and two peers with the same public key, are
//! errors rather than "the last one wins". Comments and ignored keys are not kept, so
//! [`WgQuickConfig::to_wg_quick`] does not reproduce them.
//!
//! # Errors
//! Every [`WgConfigError`] from parsing names the 1-based line and what is wrong there. Errors
//! carry line numbers, key names and reasons but never values: a value may be a secret pasted
//! in the wrong place. A text that looks like a key name but is not one (for example a bare
//! base64 key) is reported without being echoed. As in [`crate::keys`], a message describes
//! its own layer and the cause is reached through [`std::error::Error::source`].

use std::fmt::{self, Write as _};
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use zeroize::Zeroizing;

use crate::keys::{KeyError, PresharedKey, PrivateKey, PublicKey};

/// A parsed wg-quick configuration: one interface and its peers.
///
/// Build it with [`WgQuickConfig::parse`] or [`WgQuickConfig::from_file`]; write it back with
/// [`WgQuickConfig::to_wg_quick`]. `Debug` output redacts the secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgQuickConfig {
    /// The `[Interface]` section.
    pub interface: InterfaceConfig,
    /// The `[Peer]` sections, in file order. No two share a public key.
    pub peers: Vec<PeerConfig>,
    /// Names of keys that were read but are not applied by ferry, as written in the file, in
    /// order of first appearance, each once (compared case-insensitively).
    pub ignored: Vec<String>,
}

impl WgQuickConfig {
    /// Parses the text of a wg-quick configuration file.
    pub fn parse(text: &str) -> Result<Self, WgConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut parser = Parser::default();
        for (index, line) in text.lines().enumerate() {
            parser.handle_line(index + 1, line)?;
        }
        parser.finish()
    }

    /// Reads and parses a wg-quick configuration file.
    ///
    /// Errors name `path`; a parse error is wrapped in [`WgConfigError::InFile`]. The text read
    /// is wiped from memory once parsed.
    pub fn from_file(path: &Path) -> Result<Self, WgConfigError> {
        let text = read_config_file(path)?;
        Self::parse(&text).map_err(|error| WgConfigError::InFile {
            path: path.to_owned(),
            source: Box::new(error),
        })
    }

    /// Writes the configuration back in wg-quick format, secrets included.
    ///
    /// Parsing the result gives back an equal configuration, except that [`Self::ignored`] is
    /// empty: comments and ignored keys are not written. The returned text holds the private
    /// key; wrap it in [`zeroize::Zeroizing`] to wipe it after use.
    pub fn to_wg_quick(&self) -> String {
        let mut out = String::new();
        self.interface.render(&mut out);
        for peer in &self.peers {
            out.push('\n');
            peer.render(&mut out);
        }
        out
    }
}

/// The `[Interface]` section: this side of the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// `PrivateKey`: this side's secret.
    pub private_key: PrivateKey,
    /// `Address`: the tunnel addresses of this side, with their prefixes. May be empty.
    pub addresses: Vec<IpNet>,
    /// `ListenPort`: the UDP port to listen on. `Some(0)` asks for any free port, as with `wg`;
    /// `None` means the key was absent.
    pub listen_port: Option<u16>,
    /// `MTU`: the tunnel's MTU in bytes, never 0.
    pub mtu: Option<u16>,
}

impl InterfaceConfig {
    fn render(&self, out: &mut String) {
        out.push_str("[Interface]\n");
        let private_key = Zeroizing::new(self.private_key.to_base64());
        push_entry(out, "PrivateKey", private_key.as_str());
        if !self.addresses.is_empty() {
            push_entry(out, "Address", join(&self.addresses));
        }
        if let Some(port) = self.listen_port {
            push_entry(out, "ListenPort", port);
        }
        if let Some(mtu) = self.mtu {
            push_entry(out, "MTU", mtu);
        }
    }
}

/// One `[Peer]` section: the other end of a tunnel, known by its public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// `PublicKey`: who the peer is.
    pub public_key: PublicKey,
    /// `PresharedKey`: an extra symmetric secret, if the two sides share one.
    pub preshared_key: Option<PresharedKey>,
    /// `Endpoint`: where to send the first handshake; `None` waits for the peer to call.
    pub endpoint: Option<Endpoint>,
    /// `AllowedIPs`: the inner addresses routed to and accepted from this peer. May be empty.
    pub allowed_ips: Vec<IpNet>,
    /// `PersistentKeepalive`: seconds between keepalives; `None` when absent, `off` or 0.
    pub persistent_keepalive: Option<u16>,
}

impl PeerConfig {
    fn render(&self, out: &mut String) {
        out.push_str("[Peer]\n");
        push_entry(out, "PublicKey", self.public_key);
        if let Some(psk) = &self.preshared_key {
            let psk = Zeroizing::new(psk.to_base64());
            push_entry(out, "PresharedKey", psk.as_str());
        }
        if let Some(endpoint) = &self.endpoint {
            push_entry(out, "Endpoint", endpoint);
        }
        if !self.allowed_ips.is_empty() {
            push_entry(out, "AllowedIPs", join(&self.allowed_ips));
        }
        if let Some(seconds) = self.persistent_keepalive {
            push_entry(out, "PersistentKeepalive", seconds);
        }
    }
}

/// A peer's `Endpoint`: a host (an IP literal or a name, never resolved here) and a UDP port.
///
/// Parsed from `host:port` or `[ipv6]:port`; displayed the same way, with brackets whenever
/// the host contains a `:`. A parsed endpoint has a non-empty host of ASCII letters, digits and
/// `.-_` (plus `:` and `%` inside brackets) and a non-zero port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Host name or IP address, without brackets.
    pub host: String,
    /// UDP port.
    pub port: u16,
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (host, port) = split_host_port(text)?;
        let port = parse_decimal::<u16>(port)
            .filter(|&port| port != 0)
            .ok_or(EndpointError::BadPort)?;
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// An IP address with a prefix length, such as `10.0.0.2/24` or `fd00::1/128`.
///
/// The prefix never exceeds the address's bit length (32 or 128). The address keeps any host
/// bits it was written with (an interface `Address` needs them); [`IpNet::network`] clears them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Pairs `addr` with `prefix`, refusing a prefix longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, IpNetError> {
        Self::with_prefix(addr, u32::from(prefix))
    }

    /// The network holding only `addr` (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            prefix: max_prefix(addr),
        }
    }

    /// The address as written, host bits included.
    pub const fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub const fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether the prefix covers the whole address, so the network is one host.
    pub fn is_host(&self) -> bool {
        self.prefix == max_prefix(self.addr)
    }

    /// The address with its host bits cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(addr) => IpAddr::V4((u32::from(addr) & v4_mask(self.prefix)).into()),
            IpAddr::V6(addr) => IpAddr::V6((u128::from(addr) & v6_mask(self.prefix)).into()),
        }
    }

    /// Whether `addr` lies in this network. An address of the other family never does.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, addr) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = v4_mask(self.prefix);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = v6_mask(self.prefix);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    fn with_prefix(addr: IpAddr, prefix: u32) -> Result<Self, IpNetError> {
        let max = max_prefix(addr);
        match u8::try_from(prefix) {
            Ok(prefix) if prefix <= max => Ok(Self { addr, prefix }),
            _ => Err(IpNetError::PrefixTooLong { prefix, max }),
        }
    }
}

impl From<IpAddr> for IpNet {
    fn from(addr: IpAddr) -> Self {
        Self::host(addr)
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    /// Parses `addr/prefix`, or a bare `addr` as a single host.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| IpNetError::BadAddress)?;
        let Some(prefix) = prefix else {
            return Ok(Self::host(addr));
        };
        let prefix = parse_decimal::<u32>(prefix).ok_or(IpNetError::BadPrefix)?;
        Self::with_prefix(addr, prefix)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a wg-quick configuration could not be read or parsed.
///
/// Parse errors name the 1-based line; none holds a value from the file.
#[derive(Debug, thiserror::Error)]
pub enum WgConfigError {
    /// The configuration file could not be read, or is not UTF-8 text; `source` says why.
    #[error("could not read config file {}", path.display())]
    Io {
        /// The file that was to be read.
        path: PathBuf,
        /// What the operating system reported, or `InvalidData` for text that is not UTF-8.
        source: io::Error,
    },

    /// The file is far larger than any configuration, so it was not read. Check the path.
    #[error("config file {} is larger than {limit} bytes", path.display())]
    FileTooLarge {
        /// The file that was to be read.
        path: PathBuf,
        /// The most bytes a configuration file may hold.
        limit: usize,
    },

    /// The file was read but is not a valid configuration; `source` names the line and says why.
    #[error("config file {} is not a valid wg-quick configuration", path.display())]
    InFile {
        /// The file that was read.
        path: PathBuf,
        /// The parse error, naming the line.
        source: Box<WgConfigError>,
    },

    /// There is no `[Interface]` section. Add one with at least a `PrivateKey`.
    #[error("no [Interface] section")]
    NoInterface,

    /// A second `[Interface]` section starts here; a configuration describes one interface.
    #[error("line {line}: a second [Interface] section (the first is on line {first_line})")]
    DuplicateInterface {
        /// Line of the second header.
        line: usize,
        /// Line of the first header.
        first_line: usize,
    },

    /// The `[Interface]` section starting here has no `PrivateKey`. Add one (`wg genkey`).
    #[error("line {line}: the [Interface] section has no PrivateKey")]
    MissingPrivateKey {
        /// Line of the `[Interface]` header.
        line: usize,
    },

    /// The `[Peer]` section starting here has no `PublicKey`, so the peer cannot be known.
    #[error("line {line}: the [Peer] section has no PublicKey")]
    MissingPublicKey {
        /// Line of the `[Peer]` header.
        line: usize,
    },

    /// The `[Peer]` section starting here has the same public key as an earlier one. Merge
    /// the two sections.
    #[error("line {line}: this [Peer] has the same PublicKey as the [Peer] on line {first_line}")]
    DuplicatePeer {
        /// Line of the later `[Peer]` header.
        line: usize,
        /// Line of the earlier `[Peer]` header.
        first_line: usize,
    },

    /// A section header names a section other than `[Interface]` or `[Peer]`.
    #[error("line {line}: unknown section [{name}]; expected [Interface] or [Peer]")]
    UnknownSection {
        /// Line of the header.
        line: usize,
        /// The section name as written.
        name: String,
    },

    /// A line starts with `[` but is not a `[Name]` header (missing `]`, text after it, or a
    /// name that is not a plain word).
    #[error("line {line}: malformed section header; expected [Interface] or [Peer]")]
    BadSectionHeader {
        /// The line.
        line: usize,
    },

    /// A `key = value` line comes before the first section header.
    #[error("line {line}: {key} is outside any section; put it under [Interface] or [Peer]")]
    KeyOutsideSection {
        /// The line.
        line: usize,
        /// The key name as written.
        key: String,
    },

    /// A line is neither blank, a comment, a section header, nor `key = value`.
    #[error("line {line}: expected `key = value`, but there is no '='")]
    MissingEquals {
        /// The line.
        line: usize,
    },

    /// The text before `=` is not a key name (empty, too long, or not letters and digits), for
    /// example a key pasted without `PrivateKey =` in front. It is not repeated here.
    #[error("line {line}: the text before '=' is not a key name")]
    BadKeyName {
        /// The line.
        line: usize,
    },

    /// A key that may appear only once per section appears again here. Remove one of them.
    #[error("line {line}: {key} is given a second time in this section")]
    DuplicateKey {
        /// The line of the repeat.
        line: usize,
        /// The key's canonical name.
        key: &'static str,
    },

    /// `PrivateKey`, `PublicKey` or `PresharedKey` is not a WireGuard key; `source` says why.
    /// The value is never repeated.
    #[error("line {line}: {key} is not a valid WireGuard key")]
    BadKey {
        /// The line.
        line: usize,
        /// The key's canonical name.
        key: &'static str,
        /// Why the value is not a key.
        source: KeyError,
    },

    /// One entry of an `Address` or `AllowedIPs` list is not `address[/prefix]`; `source`
    /// says why (for example a prefix longer than 32 for IPv4 or 128 for IPv6).
    #[error("line {line}: entry {entry} of {key} is not a valid IP network")]
    BadCidr {
        /// The line.
        line: usize,
        /// The key's canonical name.
        key: &'static str,
        /// The 1-based position of the bad entry in the comma-separated list.
        entry: usize,
        /// Why the entry is invalid.
        source: IpNetError,
    },

    /// `ListenPort` is not a whole number from 0 to 65535.
    #[error("line {line}: {key} must be a whole number from 0 to 65535")]
    BadPort {
        /// The line.
        line: usize,
        /// The key's canonical name.
        key: &'static str,
    },

    /// `MTU` is not a whole number from 1 to 65535.
    #[error("line {line}: MTU must be a whole number from 1 to 65535")]
    BadMtu {
        /// The line.
        line: usize,
    },

    /// `PersistentKeepalive` is neither `off` nor a whole number of seconds from 0 to 65535.
    #[error("line {line}: PersistentKeepalive must be `off` or whole seconds from 0 to 65535")]
    BadKeepalive {
        /// The line.
        line: usize,
    },

    /// `Endpoint` is not `host:port` or `[ipv6]:port`; `source` says why.
    #[error("line {line}: Endpoint is not host:port or [ipv6]:port")]
    BadEndpoint {
        /// The line.
        line: usize,
        /// Why the value is not an endpoint.
        source: EndpointError,
    },
}

/// Why a text is not an [`Endpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The text is empty.
    #[error("the endpoint is empty")]
    Empty,

    /// There is no `:port` after the host. WireGuard has no default port: add one.
    #[error("the endpoint has no :port")]
    MissingPort,

    /// The port is not a whole number from 1 to 65535.
    #[error("the port must be a whole number from 1 to 65535")]
    BadPort,

    /// An IPv6 address was written without brackets, so the port cannot be told apart. Write
    /// `[fd00::1]:51820`.
    #[error("an IPv6 endpoint must be written in brackets, as [address]:port")]
    Ipv6NeedsBrackets,

    /// A `[` is not closed by `]` followed by `:port`.
    #[error("the '[' of the endpoint is not closed by ']:port'")]
    UnclosedBracket,

    /// The host is empty or has characters no host name or IP address has.
    #[error("the host is empty or not a host name or IP address")]
    BadHost,
}

/// Why a text is not an [`IpNet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    /// The part before `/` is not an IPv4 or IPv6 address.
    #[error("not an IPv4 or IPv6 address")]
    BadAddress,

    /// The part after `/` is not a whole number.
    #[error("the prefix after '/' is not a whole number")]
    BadPrefix,

    /// The prefix is longer than the address: over 32 for IPv4 or over 128 for IPv6.
    #[error("prefix /{prefix} is longer than the {max} bits of the address")]
    PrefixTooLong {
        /// The prefix as written.
        prefix: u32,
        /// The address's length in bits.
        max: u8,
    },
}

/// Reads the file at `path`, refusing anything larger than a configuration can be.
fn read_config_file(path: &Path) -> Result<Zeroizing<String>, WgConfigError> {
    let io_error = |source| WgConfigError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_error)?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(CONFIG_FILE_MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() > CONFIG_FILE_MAX_BYTES {
        return Err(WgConfigError::FileTooLarge {
            path: path.to_owned(),
            limit: CONFIG_FILE_MAX_BYTES,
        });
    }

    // Move the bytes into a String without copying, so the one buffer is wiped on drop.
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(error) => {
            drop(Zeroizing::new(error.into_bytes()));
            Err(io_error(io::Error::new(
                io::ErrorKind::InvalidData,
                "the file is not UTF-8 text",
            )))
        }
    }
}

/// Which section the lines being read belong to.
#[derive(Default)]
enum Section {
    /// Before the first header.
    #[default]
    None,
    /// Inside `[Interface]`.
    Interface,
    /// Inside a `[Peer]`; its draft is the last in `Parser::peers`.
    Peer,
}

/// Line-by-line parsing state.
#[derive(Default)]
struct Parser {
    section: Section,
    interface: Option<InterfaceDraft>,
    peers: Vec<PeerDraft>,
    ignored: Vec<String>,
}

impl Parser {
    fn handle_line(&mut self, line: usize, raw: &str) -> Result<(), WgConfigError> {
        let content = strip_comment(raw).trim();
        if content.is_empty() {
            return Ok(());
        }
        if let Some(header) = content.strip_prefix('[') {
            return self.handle_header(line, header);
        }

        // Split `key = value`; a bad key name is reported without echoing it.
        let (key, value) = content
            .split_once('=')
            .ok_or(WgConfigError::MissingEquals { line })?;
        let key = key.trim();
        if !is_name(key) {
            return Err(WgConfigError::BadKeyName { line });
        }
        let entry = Entry {
            line,
            value: value.trim(),
        };

        match self.section {
            Section::None => Err(WgConfigError::KeyOutsideSection {
                line,
                key: key.to_owned(),
            }),
            Section::Interface => self.handle_interface_key(key, entry),
            Section::Peer => self.handle_peer_key(key, entry),
        }
    }

    fn handle_header(&mut self, line: usize, header: &str) -> Result<(), WgConfigError> {
        let name = header
            .strip_suffix(']')
            .map(str::trim)
            .filter(|name| is_name(name))
            .ok_or(WgConfigError::BadSectionHeader { line })?;

        if name.eq_ignore_ascii_case("peer") {
            self.section = Section::Peer;
            self.peers.push(PeerDraft::new(line));
            return Ok(());
        }
        if !name.eq_ignore_ascii_case("interface") {
            return Err(WgConfigError::UnknownSection {
                line,
                name: name.to_owned(),
            });
        }
        if let Some(first) = &self.interface {
            return Err(WgConfigError::DuplicateInterface {
                line,
                first_line: first.header_line,
            });
        }
        self.section = Section::Interface;
        self.interface = Some(InterfaceDraft::new(line));
        Ok(())
    }

    fn handle_interface_key(&mut self, key: &str, entry: Entry<'_>) -> Result<(), WgConfigError> {
        let Some(draft) = self.interface.as_mut() else {
            return Ok(());
        };
        match key.to_ascii_lowercase().as_str() {
            "privatekey" => set_once(&mut draft.private_key, entry.key("PrivateKey")?, entry),
            "address" => entry.extend_nets("Address", &mut draft.addresses),
            "listenport" => set_once(&mut draft.listen_port, entry.listen_port()?, entry),
            "mtu" => set_once(&mut draft.mtu, entry.mtu()?, entry),
            _ => {
                note_ignored(&mut self.ignored, key);
                Ok(())
            }
        }
    }

    fn handle_peer_key(&mut self, key: &str, entry: Entry<'_>) -> Result<(), WgConfigError> {
        let Some(draft) = self.peers.last_mut() else {
            return Ok(());
        };
        match key.to_ascii_lowercase().as_str() {
            "publickey" => set_once(&mut draft.public_key, entry.key("PublicKey")?, entry),
            "presharedkey" => set_once(&mut draft.preshared_key, entry.key("PresharedKey")?, entry),
            "endpoint" => set_once(&mut draft.endpoint, entry.endpoint()?, entry),
            "allowedips" => entry.extend_nets("AllowedIPs", &mut draft.allowed_ips),
            "persistentkeepalive" => set_once(&mut draft.keepalive, entry.keepalive()?, entry),
            _ => {
                note_ignored(&mut self.ignored, key);
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<WgQuickConfig, WgConfigError> {
        let draft = self.interface.ok_or(WgConfigError::NoInterface)?;
        let interface = draft.finish()?;

        // Finish the peers, refusing a public key seen before.
        let mut peers: Vec<PeerConfig> = Vec::with_capacity(self.peers.len());
        let mut header_lines = Vec::with_capacity(self.peers.len());
        for draft in self.peers {
            let line = draft.header_line;
            let peer = draft.finish()?;
            if let Some(index) = peers.iter().position(|p| p.public_key == peer.public_key) {
                let first_line = header_lines.get(index).copied().unwrap_or(line);
                return Err(WgConfigError::DuplicatePeer { line, first_line });
            }
            peers.push(peer);
            header_lines.push(line);
        }

        Ok(WgQuickConfig {
            interface,
            peers,
            ignored: self.ignored,
        })
    }
}

/// One `key = value` line's value and where it is.
#[derive(Clone, Copy)]
struct Entry<'a> {
    line: usize,
    value: &'a str,
}

impl Entry<'_> {
    fn key<K: FromStr<Err = KeyError>>(
        self,
        key: &'static str,
    ) -> Result<(K, &'static str), WgConfigError> {
        let parsed = self.value.parse().map_err(|source| WgConfigError::BadKey {
            line: self.line,
            key,
            source,
        })?;
        Ok((parsed, key))
    }

    fn extend_nets(self, key: &'static str, nets: &mut Vec<IpNet>) -> Result<(), WgConfigError> {
        let entries = self.value.split(',').map(str::trim);
        for (index, text) in entries.enumerate().filter(|(_, text)| !text.is_empty()) {
            let net = text.parse().map_err(|source| WgConfigError::BadCidr {
                line: self.line,
                key,
                entry: index + 1,
                source,
            })?;
            nets.push(net);
        }
        Ok(())
    }

    fn listen_port(self) -> Result<(u16, &'static str), WgConfigError> {
        let key = "ListenPort";
        let port = parse_decimal(self.value).ok_or(WgConfigError::BadPort {
            line: self.line,
            key,
        })?;
        Ok((port, key))
    }

    fn mtu(self) -> Result<(u16, &'static str), WgConfigError> {
        let mtu = parse_decimal::<u16>(self.value)
            .filter(|&mtu| mtu != 0)
            .ok_or(WgConfigError::BadMtu { line: self.line })?;
        Ok((mtu, "MTU"))
    }

    fn keepalive(self) -> Result<(Option<u16>, &'static str), WgConfigError> {
        let key = "PersistentKeepalive";
        if self.value.eq_ignore_ascii_case("off") {
            return Ok((None, key));
        }
        let seconds = parse_decimal::<u16>(self.value)
            .ok_or(WgConfigError::BadKeepalive { line: self.line })?;
        Ok(((seconds != 0).then_some(seconds), key))
    }

    fn endpoint(self) -> Result<(Endpoint, &'static str), WgConfigError> {
        let endpoint = self
            .value
            .parse()
            .map_err(|source| WgConfigError::BadEndpoint {
                line: self.line,
                source,
            })?;
        Ok((endpoint, "Endpoint"))
    }
}

/// An `[Interface]` section being read.
struct InterfaceDraft {
    header_line: usize,
    private_key: Option<PrivateKey>,
    addresses: Vec<IpNet>,
    listen_port: Option<u16>,
    mtu: Option<u16>,
}

impl InterfaceDraft {
    fn new(header_line: usize) -> Self {
        Self {
            header_line,
            private_key: None,
            addresses: Vec::new(),
            listen_port: None,
            mtu: None,
        }
    }

    fn finish(self) -> Result<InterfaceConfig, WgConfigError> {
        let private_key = self.private_key.ok_or(WgConfigError::MissingPrivateKey {
            line: self.header_line,
        })?;
        Ok(InterfaceConfig {
            private_key,
            addresses: self.addresses,
            listen_port: self.listen_port,
            mtu: self.mtu,
        })
    }
}

/// A `[Peer]` section being read.
struct PeerDraft {
    header_line: usize,
    public_key: Option<PublicKey>,
    preshared_key: Option<PresharedKey>,
    endpoint: Option<Endpoint>,
    allowed_ips: Vec<IpNet>,
    /// `Some(None)` records an explicit `off`, so a repeat is still caught.
    keepalive: Option<Option<u16>>,
}

impl PeerDraft {
    fn new(header_line: usize) -> Self {
        Self {
            header_line,
            public_key: None,
            preshared_key: None,
            endpoint: None,
            allowed_ips: Vec::new(),
            keepalive: None,
        }
    }

    fn finish(self) -> Result<PeerConfig, WgConfigError> {
        let public_key = self.public_key.ok_or(WgConfigError::MissingPublicKey {
            line: self.header_line,
        })?;
        Ok(PeerConfig {
            public_key,
            preshared_key: self.preshared_key,
            endpoint: self.endpoint,
            allowed_ips: self.allowed_ips,
            persistent_keepalive: self.keepalive.flatten(),
        })
    }
}

/// Stores a single-valued key's parsed value, refusing a second one.
fn set_once<T>(
    slot: &mut Option<T>,
    (value, key): (T, &'static str),
    entry: Entry<'_>,
) -> Result<(), WgConfigError> {
    if slot.is_some() {
        return Err(WgConfigError::DuplicateKey {
            line: entry.line,
            key,
        });
    }
    *slot = Some(value);
    Ok(())
}

/// Records an ignored key name once, compared case-insensitively.
fn note_ignored(ignored: &mut Vec<String>, key: &str) {
    if !ignored.iter().any(|seen| seen.eq_ignore_ascii_case(key)) {
        ignored.push(key.to_owned());
    }
}

/// Cuts a line at the first `#` or `;`. Neither occurs in a key, address or endpoint.
fn strip_comment(line: &str) -> &str {
    line.split(['#', ';']).next().unwrap_or(line)
}

/// Whether `text` can be a section or key name: a short run of ASCII letters and digits.
///
/// Base64 keys are 43 characters before their `=`, so a pasted key is never taken for a name.
fn is_name(text: &str) -> bool {
    (1..=NAME_MAX_CHARS).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Parses an unsigned decimal number made of digits only (no sign, no spaces).
fn parse_decimal<T: FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Splits `host:port` or `[host]:port`, checking the host's characters.
fn split_host_port(text: &str) -> Result<(&str, &str), EndpointError> {
    if text.is_empty() {
        return Err(EndpointError::Empty);
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(EndpointError::UnclosedBracket)?;
        let port = after
            .strip_prefix(':')
            .ok_or(EndpointError::UnclosedBracket)?;
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| is_host_byte(b) || b == b':' || b == b'%');
        return if host_ok {
            Ok((host, port))
        } else {
            Err(EndpointError::BadHost)
        };
    }

    let (host, port) = text.rsplit_once(':').ok_or(EndpointError::MissingPort)?;
    if host.contains(':') {
        return Err(EndpointError::Ipv6NeedsBrackets);
    }
    if host.is_empty() || !host.bytes().all(is_host_byte) {
        return Err(EndpointError::BadHost);
    }
    Ok((host, port))
}

fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn v4_mask(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32_u32.saturating_sub(prefix.into()))
        .unwrap_or(0)
}

fn v6_mask(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128_u32.saturating_sub(prefix.into()))
        .unwrap_or(0)
}

/// Appends `key = value` and a newline.
fn push_entry(out: &mut String, key: &str, value: impl fmt::Display) {
    // Writing into a String cannot fail.
    let _ = writeln!(out, "{key} = {value}");
}

fn join(nets: &[IpNet]) -> String {
    let texts: Vec<String> = nets.iter().map(IpNet::to_string).collect();
    texts.join(", ")
}

/// Longest section or key name accepted; wg-quick's longest is `PersistentKeepalive` (19).
const NAME_MAX_CHARS: usize = 32;

/// The most a configuration file may hold; real ones are a few kilobytes.
const CONFIG_FILE_MAX_BYTES: usize = 1024 * 1024;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    const PRIVATE: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const PEER_PUBLIC: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
    const PEER2_PUBLIC: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const PSK: &str = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=";

    const FULL: &str = "\
# ferry test config
[Interface]
PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=
Address = 10.0.0.2/32, fd00::2/128
ListenPort = 51820
MTU = 1420
DNS = 1.1.1.1
PostUp = iptables -A FORWARD -i %i -j ACCEPT
SaveConfig = false

[Peer]
PublicKey = HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=
PresharedKey = FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=
Endpoint = vpn.example.com:51820
AllowedIPs = 10.0.0.1/32, fd00::1/128
PersistentKeepalive = 25
";

    fn parse_err(text: &str) -> WgConfigError {
        WgQuickConfig::parse(text).unwrap_err()
    }

    /// The minimal interface, followed by `rest`.
    fn with_interface(rest: &str) -> String {
        format!("[Interface]\nPrivateKey = {PRIVATE}\n{rest}")
    }

    /// Joins an error and all its sources, the way a CLI prints one line.
    fn chain(error: &dyn std::error::Error) -> String {
        let mut text = error.to_string();
        let mut next = error.source();
        while let Some(cause) = next {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            next = cause.source();
        }
        text
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn parses_a_full_config() {
        let config = WgQuickConfig::parse(FULL).unwrap();
        let interface = &config.interface;
        assert_eq!(interface.private_key.to_base64(), PRIVATE);
        assert_eq!(
            interface.addresses,
            [net("10.0.0.2/32"), net("fd00::2/128")]
        );
        assert_eq!(interface.listen_port, Some(51820));
        assert_eq!(interface.mtu, Some(1420));

        assert_eq!(config.peers.len(), 1);
        let peer = &config.peers[0];
        assert_eq!(peer.public_key.to_string(), PEER_PUBLIC);
        assert_eq!(peer.preshared_key.as_ref().unwrap().to_base64(), PSK);
        let endpoint = peer.endpoint.as_ref().unwrap();
        assert_eq!(
            (endpoint.host.as_str(), endpoint.port),
            ("vpn.example.com", 51820)
        );
        assert_eq!(peer.allowed_ips, [net("10.0.0.1/32"), net("fd00::1/128")]);
        assert_eq!(peer.persistent_keepalive, Some(25));

        assert_eq!(config.ignored, ["DNS", "PostUp", "SaveConfig"]);
    }

    #[test]
    fn optional_keys_may_be_absent() {
        let text = with_interface(&format!("[Peer]\nPublicKey = {PEER_PUBLIC}\n"));
        let config = WgQuickConfig::parse(&text).unwrap();
        assert!(config.interface.addresses.is_empty());
        assert_eq!(
            (config.interface.listen_port, config.interface.mtu),
            (None, None)
        );
        let peer = &config.peers[0];
        assert!(peer.preshared_key.is_none() && peer.endpoint.is_none());
        assert!(peer.allowed_ips.is_empty() && peer.persistent_keepalive.is_none());
    }

    #[test]
    fn empty_key_value_is_a_bad_key() {
        let error = parse_err(&with_interface("[Peer]\nPublicKey = \n"));
        assert!(matches!(
            error,
            WgConfigError::BadKey {
                line: 4,
                key: "PublicKey",
                source: KeyError::Empty
            }
        ));
    }

    #[test]
    fn interface_without_peers_is_fine() {
        let config = WgQuickConfig::parse(&with_interface("")).unwrap();
        assert!(config.peers.is_empty() && config.ignored.is_empty());
    }

    #[test]
    fn names_are_case_insensitive() {
        let text = format!(
            "[INTERFACE]\nprivatekey={PRIVATE}\nADDRESS=10.0.0.2\nlistenPORT=1\nmtu=1280\n\
             [peer]\npublickey = {PEER_PUBLIC}\nALLOWEDIPS = 0.0.0.0/0\npersistentkeepalive=OFF\n"
        );
        let config = WgQuickConfig::parse(&text).unwrap();
        assert_eq!(config.interface.addresses, [net("10.0.0.2/32")]);
        assert_eq!(
            (config.interface.listen_port, config.interface.mtu),
            (Some(1), Some(1280))
        );
        assert_eq!(config.peers[0].allowed_ips, [net("0.0.0.0/0")]);
        assert!(config.ignored.is_empty());
    }

    #[test]
    fn comments_blank_lines_and_whitespace_are_skipped() {
        let text = format!(
            "\u{feff}; leading comment\r\n\r\n  [Interface]  # the interface\r\n\
             \tPrivateKey\t=\t{PRIVATE}   ; trailing\r\n\
             # Address = 192.0.2.1/32\r\n\
             Address = 10.0.0.2/24 # host bits kept\r\n   \r\n\
             [ Peer ];x\r\nPublicKey={PEER_PUBLIC}#x\r\n"
        );
        let config = WgQuickConfig::parse(&text).unwrap();
        assert_eq!(config.interface.private_key.to_base64(), PRIVATE);
        assert_eq!(config.interface.addresses, [net("10.0.0.2/24")]);
        assert_eq!(config.peers[0].public_key.to_string(), PEER_PUBLIC);
    }

    #[test]
    fn repeated_list_keys_accumulate() {
        let text = with_interface(&format!(
            "Address = 10.0.0.2/32\naddress = fd00::2/128, 10.0.1.2/32,\n\
             [Peer]\nPublicKey = {PEER_PUBLIC}\nAllowedIPs = 10.0.0.0/24\nAllowedIPs = ::/0\n"
        ));
        let config = WgQuickConfig::parse(&text).unwrap();
        let addresses = [net("10.0.0.2/32"), net("fd00::2/128"), net("10.0.1.2/32")];
        assert_eq!(config.interface.addresses, addresses);
        assert_eq!(
            config.peers[0].allowed_ips,
            [net("10.0.0.0/24"), net("::/0")]
        );
    }

    #[test]
    fn several_peers_keep_their_order() {
        let text = with_interface(&format!(
            "[Peer]\nPublicKey = {PEER_PUBLIC}\nEndpoint = [fd00::1]:51820\n\
             [Peer]\nPublicKey = {PEER2_PUBLIC}\nEndpoint = 192.0.2.7:4500\n"
        ));
        let config = WgQuickConfig::parse(&text).unwrap();
        let keys: Vec<String> = config
            .peers
            .iter()
            .map(|p| p.public_key.to_string())
            .collect();
        assert_eq!(keys, [PEER_PUBLIC, PEER2_PUBLIC]);
        let endpoint = config.peers[0].endpoint.as_ref().unwrap();
        assert_eq!((endpoint.host.as_str(), endpoint.port), ("fd00::1", 51820));
        assert_eq!(
            config.peers[1].endpoint.as_ref().unwrap().to_string(),
            "192.0.2.7:4500"
        );
    }

    #[test]
    fn keepalive_off_or_zero_means_none() {
        for (value, expected) in [
            ("off", None),
            ("0", None),
            ("25", Some(25)),
            ("65535", Some(65535)),
        ] {
            let text = with_interface(&format!(
                "[Peer]\nPublicKey = {PEER_PUBLIC}\nPersistentKeepalive = {value}\n"
            ));
            let config = WgQuickConfig::parse(&text).unwrap();
            assert_eq!(config.peers[0].persistent_keepalive, expected, "{value}");
        }
        let text = with_interface(&format!(
            "[Peer]\nPublicKey = {PEER_PUBLIC}\nPersistentKeepalive = -1\n"
        ));
        assert!(matches!(
            parse_err(&text),
            WgConfigError::BadKeepalive { line: 5 }
        ));
    }

    #[test]
    fn unknown_keys_are_collected_once() {
        let text = with_interface(&format!(
            "Table = off\nFwMark = 0x1\nFrobnicate = yes\nfrobnicate = again\n\
             [Peer]\nPublicKey = {PEER_PUBLIC}\nWeird = 1\nTABLE = 3\n"
        ));
        let config = WgQuickConfig::parse(&text).unwrap();
        assert_eq!(config.ignored, ["Table", "FwMark", "Frobnicate", "Weird"]);
    }

    #[test]
    fn key_outside_section_names_line_and_key() {
        let error = parse_err(&format!("# hi\nPrivateKey = {PRIVATE}\n[Interface]\n"));
        assert!(
            matches!(&error, WgConfigError::KeyOutsideSection { line: 2, key } if key == "PrivateKey")
        );
        assert_eq!(
            error.to_string(),
            "line 2: PrivateKey is outside any section; put it under [Interface] or [Peer]"
        );
    }

    #[test]
    fn unknown_section_is_an_error() {
        let error = parse_err(&with_interface("[Peers]\n"));
        assert!(
            matches!(&error, WgConfigError::UnknownSection { line: 3, name } if name == "Peers")
        );
        assert!(
            error
                .to_string()
                .starts_with("line 3: unknown section [Peers]")
        );
    }

    #[test]
    fn malformed_headers_are_errors() {
        for header in [
            "[Interface",
            "[Interface] x",
            "[]",
            "[Inter face]",
            "[[Peer]]",
        ] {
            let error = parse_err(&format!("{header}\nPrivateKey = {PRIVATE}\n"));
            assert!(
                matches!(error, WgConfigError::BadSectionHeader { line: 1 }),
                "{header}"
            );
        }
    }

    #[test]
    fn missing_equals_names_the_line() {
        let error = parse_err(&with_interface("ListenPort 51820\n"));
        assert!(matches!(error, WgConfigError::MissingEquals { line: 3 }));
        assert_eq!(
            error.to_string(),
            "line 3: expected `key = value`, but there is no '='"
        );
    }

    #[test]
    fn bad_key_is_reported_without_its_text() {
        let truncated = &PRIVATE[..40];
        let error = parse_err(&format!("[Interface]\nPrivateKey = {truncated}\n"));
        assert!(matches!(
            &error,
            WgConfigError::BadKey {
                line: 2,
                key: "PrivateKey",
                source: KeyError::WrongLength { len: 30 }
            }
        ));
        let shown = format!("{} {error:?}", chain(&error));
        assert!(!shown.contains(truncated), "{shown}");

        let error = parse_err(&with_interface("[Peer]\nPublicKey = not*base64\n"));
        assert!(matches!(
            &error,
            WgConfigError::BadKey {
                line: 4,
                key: "PublicKey",
                source: KeyError::NotBase64
            }
        ));
        let error = parse_err(&with_interface(&format!(
            "[Peer]\nPublicKey = {PEER_PUBLIC}\nPresharedKey = AAAA\n"
        )));
        assert!(matches!(
            error,
            WgConfigError::BadKey {
                line: 5,
                key: "PresharedKey",
                ..
            }
        ));
    }

    #[test]
    fn pasted_key_lines_are_never_echoed() {
        // A bare key ends in '=', so it looks like `key =` with an empty value.
        for text in [
            format!("{PRIVATE}\n[Interface]\n"),
            with_interface(&format!("{PSK}\n")),
            with_interface(&format!("PrivateKey {PSK}\n")),
            format!("[{PSK}]\n"),
        ] {
            let error = parse_err(&text);
            let shown = format!("{} {error:?}", chain(&error));
            assert!(
                !shown.contains(&PSK[..20]) && !shown.contains(&PRIVATE[..20]),
                "{shown}"
            );
        }
    }

    #[test]
    fn bad_cidr_names_line_and_entry() {
        let error = parse_err(&with_interface("Address = 10.0.0.2/32, 10.0.0.3/33\n"));
        assert!(matches!(
            error,
            WgConfigError::BadCidr {
                line: 3,
                key: "Address",
                entry: 2,
                source: IpNetError::PrefixTooLong {
                    prefix: 33,
                    max: 32
                }
            }
        ));
        assert_eq!(
            chain(&error),
            "line 3: entry 2 of Address is not a valid IP network: \
             prefix /33 is longer than the 32 bits of the address"
        );

        let text = with_interface(&format!(
            "[Peer]\nPublicKey = {PEER_PUBLIC}\nAllowedIPs = fd00::/129\n"
        ));
        assert!(matches!(
            parse_err(&text),
            WgConfigError::BadCidr {
                line: 5,
                key: "AllowedIPs",
                entry: 1,
                source: IpNetError::PrefixTooLong {
                    prefix: 129,
                    max: 128
                }
            }
        ));
        let error = parse_err(&with_interface("Address = 10.0.0.256/32\n"));
        assert!(matches!(
            error,
            WgConfigError::BadCidr {
                source: IpNetError::BadAddress,
                ..
            }
        ));
    }

    #[test]
    fn bad_ports_are_errors() {
        for value in ["65536", "-1", "port", "", "+80", "5 1"] {
            let error = parse_err(&with_interface(&format!("ListenPort = {value}\n")));
            assert!(
                matches!(
                    error,
                    WgConfigError::BadPort {
                        line: 3,
                        key: "ListenPort"
                    }
                ),
                "{value:?}: {error:?}"
            );
        }
        for value in ["host:0", "host:65536", "host:", "host:http"] {
            let text = with_interface(&format!(
                "[Peer]\nPublicKey = {PEER_PUBLIC}\nEndpoint = {value}\n"
            ));
            let error = parse_err(&text);
            assert!(
                matches!(
                    error,
                    WgConfigError::BadEndpoint {
                        line: 5,
                        source: EndpointError::BadPort
                    }
                ),
                "{value:?}: {error:?}"
            );
        }
    }

    #[test]
    fn mtu_must_be_positive() {
        let error = parse_err(&with_interface("MTU = 0\n"));
        assert!(matches!(error, WgConfigError::BadMtu { line: 3 }));
        assert!(matches!(
            parse_err(&with_interface("MTU = 70000\n")),
            WgConfigError::BadMtu { .. }
        ));
    }

    #[test]
    fn missing_private_key_names_the_section() {
        let error = parse_err("\n[Interface]\nListenPort = 1\n");
        assert!(matches!(
            error,
            WgConfigError::MissingPrivateKey { line: 2 }
        ));
        assert_eq!(
            error.to_string(),
            "line 2: the [Interface] section has no PrivateKey"
        );
    }

    #[test]
    fn peer_missing_public_key_names_the_section() {
        let text = with_interface(&format!(
            "[Peer]\nPublicKey = {PEER_PUBLIC}\n\n[Peer]\nAllowedIPs = 10.0.0.0/8\n"
        ));
        let error = parse_err(&text);
        assert!(matches!(error, WgConfigError::MissingPublicKey { line: 6 }));
    }

    #[test]
    fn no_interface_is_an_error() {
        assert!(matches!(parse_err(""), WgConfigError::NoInterface));
        let error = parse_err(&format!("[Peer]\nPublicKey = {PEER_PUBLIC}\n"));
        assert!(matches!(error, WgConfigError::NoInterface));
    }

    #[test]
    fn duplicate_interface_is_an_error() {
        let error = parse_err(&with_interface("[Peer]\n[interface]\n"));
        assert!(matches!(
            error,
            WgConfigError::DuplicateInterface {
                line: 4,
                first_line: 1
            }
        ));
    }

    #[test]
    fn duplicate_single_keys_are_errors() {
        let error = parse_err(&with_interface("MTU = 1420\nmtu = 1280\n"));
        assert!(matches!(
            error,
            WgConfigError::DuplicateKey {
                line: 4,
                key: "MTU"
            }
        ));
        let error = parse_err(&with_interface(&format!("PrivateKey = {PSK}\n")));
        assert!(matches!(
            error,
            WgConfigError::DuplicateKey {
                line: 3,
                key: "PrivateKey"
            }
        ));
        let text = with_interface(&format!(
            "[Peer]\nPublicKey = {PEER_PUBLIC}\nPersistentKeepalive = off\nPersistentKeepalive = 5\n"
        ));
        let error = parse_err(&text);
        assert!(matches!(
            error,
            WgConfigError::DuplicateKey {
                line: 6,
                key: "PersistentKeepalive"
            }
        ));
    }

    #[test]
    fn duplicate_peers_are_errors() {
        let text = with_interface(&format!(
            "[Peer]\nPublicKey = {PEER_PUBLIC}\n[Peer]\nPublicKey = {PEER2_PUBLIC}\n\
             [Peer]\nPublicKey = {PEER_PUBLIC}\n"
        ));
        let error = parse_err(&text);
        assert!(matches!(
            error,
            WgConfigError::DuplicatePeer {
                line: 7,
                first_line: 3
            }
        ));
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let config = WgQuickConfig::parse(FULL).unwrap();
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains(PRIVATE) && !shown.contains(PSK), "{shown}");
        assert!(shown.contains(PEER_PUBLIC));
    }

    #[test]
    fn renders_and_parses_back() {
        let config = WgQuickConfig::parse(FULL).unwrap();
        let text = config.to_wg_quick();
        assert_eq!(
            text,
            format!(
                "[Interface]\nPrivateKey = {PRIVATE}\nAddress = 10.0.0.2/32, fd00::2/128\n\
                 ListenPort = 51820\nMTU = 1420\n\n[Peer]\nPublicKey = {PEER_PUBLIC}\n\
                 PresharedKey = {PSK}\nEndpoint = vpn.example.com:51820\n\
                 AllowedIPs = 10.0.0.1/32, fd00::1/128\nPersistentKeepalive = 25\n"
            )
        );
        let again = WgQuickConfig::parse(&text).unwrap();
        assert_eq!(
            again,
            WgQuickConfig {
                ignored: Vec::new(),
                ..config
            }
        );
    }

    #[test]
    fn from_file_reads_and_names_the_path() {
        let dir = std::env::temp_dir().join(format!("ferry-wgconfig-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        let good = dir.join("wg0.conf");
        std::fs::write(&good, FULL).unwrap();
        assert_eq!(
            WgQuickConfig::from_file(&good).unwrap(),
            WgQuickConfig::parse(FULL).unwrap()
        );

        let bad = dir.join("bad.conf");
        std::fs::write(
            &bad,
            format!("[Interface]\nPrivateKey = {PRIVATE}\nMTU 1\n"),
        )
        .unwrap();
        let error = WgQuickConfig::from_file(&bad).unwrap_err();
        let shown = chain(&error);
        assert!(
            shown.contains(&bad.display().to_string()) && shown.contains("line 3"),
            "{shown}"
        );
        assert!(!shown.contains(PRIVATE));

        let missing = dir.join("missing.conf");
        let error = WgQuickConfig::from_file(&missing).unwrap_err();
        assert!(matches!(&error, WgConfigError::Io { path, .. } if path == &missing));

        let binary = dir.join("binary.conf");
        std::fs::write(&binary, [0xff, 0xfe, b'\n']).unwrap();
        let error = WgQuickConfig::from_file(&binary).unwrap_err();
        assert!(
            matches!(&error, WgConfigError::Io { source, .. } if source.kind() == io::ErrorKind::InvalidData)
        );

        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ipnet_parses_and_displays() {
        let v4 = net("10.0.0.1");
        assert_eq!(
            (v4.addr(), v4.prefix()),
            (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 32)
        );
        assert!(v4.is_host());
        assert_eq!(v4.to_string(), "10.0.0.1/32");
        let v6 = net("fd00::1");
        assert_eq!((v6.prefix(), v6.is_host()), (128, true));
        assert_eq!(v6.to_string(), "fd00::1/128");
        let subnet = net("10.1.2.3/16");
        assert!(!subnet.is_host());
        assert_eq!(subnet.to_string(), "10.1.2.3/16");
        assert_eq!(subnet.network(), IpAddr::V4(Ipv4Addr::new(10, 1, 0, 0)));
    }

    #[test]
    fn ipnet_rejects_malformed_text() {
        assert_eq!(
            "10.0.0.1/33".parse::<IpNet>(),
            Err(IpNetError::PrefixTooLong {
                prefix: 33,
                max: 32
            })
        );
        assert_eq!(
            "::/129".parse::<IpNet>(),
            Err(IpNetError::PrefixTooLong {
                prefix: 129,
                max: 128
            })
        );
        assert_eq!(
            "::/99999999999".parse::<IpNet>(),
            Err(IpNetError::BadPrefix),
            "overflow is not a number we can hold"
        );
        for text in ["10.0.0.1/", "10.0.0.1/+8", "10.0.0.1/ 8", "10.0.0.1/x"] {
            assert_eq!(text.parse::<IpNet>(), Err(IpNetError::BadPrefix), "{text}");
        }
        for text in ["", "10.0.0", "host/8", " 10.0.0.1", "fd00::1%eth0/64"] {
            assert_eq!(text.parse::<IpNet>(), Err(IpNetError::BadAddress), "{text}");
        }
        assert!(IpNet::new(Ipv4Addr::LOCALHOST.into(), 33).is_err());
        assert!(IpNet::new(Ipv6Addr::LOCALHOST.into(), 128).is_ok());
    }

    #[test]
    fn ipnet_contains() {
        let subnet = net("10.1.2.3/16");
        assert!(subnet.contains("10.1.255.255".parse().unwrap()));
        assert!(!subnet.contains("10.2.0.0".parse().unwrap()));
        assert!(!subnet.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(net("0.0.0.0/0").contains("203.0.113.9".parse().unwrap()));
        assert!(!net("0.0.0.0/0").contains("::1".parse().unwrap()));
        assert!(net("::/0").contains("fd00::7".parse().unwrap()));
        let v6 = net("fd00:1::/33");
        assert!(v6.contains("fd00:1:7fff::1".parse().unwrap()));
        assert!(!v6.contains("fd00:1:8000::1".parse().unwrap()));
        let host = net("192.0.2.1");
        assert!(host.contains("192.0.2.1".parse().unwrap()));
        assert!(!host.contains("192.0.2.2".parse().unwrap()));
    }

    #[test]
    fn endpoint_parses_and_displays() {
        let cases = [
            ("vpn.example.com:51820", "vpn.example.com", 51820),
            ("192.0.2.1:1", "192.0.2.1", 1),
            ("[fd00::1]:51820", "fd00::1", 51820),
            ("[fe80::1%eth0]:65535", "fe80::1%eth0", 65535),
        ];
        for (text, host, port) in cases {
            let endpoint: Endpoint = text.parse().unwrap();
            assert_eq!((endpoint.host.as_str(), endpoint.port), (host, port));
            assert_eq!(endpoint.to_string(), text);
        }
    }

    #[test]
    fn endpoint_rejects_malformed_text() {
        let cases = [
            ("", EndpointError::Empty),
            ("vpn.example.com", EndpointError::MissingPort),
            ("fd00::1:51820", EndpointError::Ipv6NeedsBrackets),
            ("[fd00::1:51820", EndpointError::UnclosedBracket),
            ("[fd00::1]51820", EndpointError::UnclosedBracket),
            ("[]:51820", EndpointError::BadHost),
            (":51820", EndpointError::BadHost),
            ("bad host:51820", EndpointError::BadHost),
            ("user@host:51820", EndpointError::BadHost),
            ("host:0", EndpointError::BadPort),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<Endpoint>(), Err(expected), "{text:?}");
        }
    }

    fn ipnet_strategy() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u32>(), 0..=32u8)
                .prop_map(|(a, p)| IpNet::new(Ipv4Addr::from(a).into(), p).unwrap()),
            (any::<u128>(), 0..=128u8)
                .prop_map(|(a, p)| IpNet::new(Ipv6Addr::from(a).into(), p).unwrap()),
        ]
    }

    fn endpoint_strategy() -> impl Strategy<Value = Endpoint> {
        let host = prop_oneof![
            "[a-z][a-z0-9-]{0,12}(\\.[a-z]{2,6}){0,2}",
            any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string()),
            any::<u128>().prop_map(|a| Ipv6Addr::from(a).to_string()),
        ];
        (host, 1..=u16::MAX).prop_map(|(host, port)| Endpoint { host, port })
    }

    fn peer_strategy() -> impl Strategy<Value = PeerConfig> {
        (
            any::<[u8; 32]>(),
            proptest::option::of(any::<[u8; 32]>()),
            proptest::option::of(endpoint_strategy()),
            proptest::collection::vec(ipnet_strategy(), 0..4),
            proptest::option::of(1..=u16::MAX),
        )
            .prop_map(
                |(public, psk, endpoint, allowed_ips, keepalive)| PeerConfig {
                    public_key: PublicKey::from_bytes(public),
                    preshared_key: psk.map(PresharedKey::from_bytes),
                    endpoint,
                    allowed_ips,
                    persistent_keepalive: keepalive,
                },
            )
    }

    fn config_strategy() -> impl Strategy<Value = WgQuickConfig> {
        let interface = (
            any::<[u8; 32]>(),
            proptest::collection::vec(ipnet_strategy(), 0..4),
            proptest::option::of(any::<u16>()),
            proptest::option::of(1..=u16::MAX),
        )
            .prop_map(|(private, addresses, listen_port, mtu)| InterfaceConfig {
                private_key: PrivateKey::from_bytes(private),
                addresses,
                listen_port,
                mtu,
            });
        let peers = proptest::collection::vec(peer_strategy(), 0..4).prop_map(|mut peers| {
            peers.sort_by_key(|p| p.public_key);
            peers.dedup_by_key(|p| p.public_key);
            peers
        });
        (interface, peers).prop_map(|(interface, peers)| WgQuickConfig {
            interface,
            peers,
            ignored: Vec::new(),
        })
    }

    proptest! {
        #[test]
        fn render_then_parse_is_identity(config in config_strategy()) {
            let text = config.to_wg_quick();
            prop_assert_eq!(WgQuickConfig::parse(&text).unwrap(), config);
        }

        #[test]
        fn ipnet_text_round_trips(net in ipnet_strategy()) {
            prop_assert_eq!(net.to_string().parse::<IpNet>().unwrap(), net);
            prop_assert!(net.contains(net.addr()));
            prop_assert!(net.contains(net.network()));
        }

        #[test]
        fn endpoint_text_round_trips(endpoint in endpoint_strategy()) {
            prop_assert_eq!(endpoint.to_string().parse::<Endpoint>().unwrap(), endpoint);
        }

        #[test]
        fn parse_never_panics(text in "(\\[?[A-Za-z]{0,12}\\]?|[ =#;,/:.\\[\\]0-9a-fA-F+]{0,60})(\n(\\[?[A-Za-z]{0,12}\\]?|[ =#;,/:.0-9a-fA-F+]{0,60})){0,12}") {
            let _ = WgQuickConfig::parse(&text);
        }
    }
}
