//! The workspace's listening TCP ports, as the agent reports them to the gateway.
//!
//! [`parse_listeners`] reads the text of `/proc/net/tcp` or `/proc/net/tcp6` (no I/O);
//! [`listening_ports`] reads both files and merges them: IPv4 and IPv6 duplicates become one
//! port, ports below [`FIRST_FORWARDED_PORT`] (the agent's own tunnel ports) and the ports the
//! caller names as its own are dropped. The gateway may hide well-known system ports as well
//! ([`is_system_port`]). [`serve_listing`] answers the list as JSON over plain HTTP, together
//! with the state of each app healthcheck (see [`crate::health`]); the agent carries flows to
//! tunnel port [`PORTS_PORT`] there.
//!
//! The list only covers the agent's network namespace: a service in another container or
//! namespace of the workspace does not appear.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::agent::FIRST_FORWARDED_PORT;
use crate::health::HealthBoard;

/// The reserved tunnel port on which the agent serves the listening-ports list.
pub const PORTS_PORT: u16 = 4;

/// The local ports of TCP sockets in the LISTEN state in one `/proc/net/tcp{,6}` text.
/// Malformed lines are skipped.
pub fn parse_listeners(text: &str) -> Vec<u16> {
    text.lines().skip(1).filter_map(parse_line).collect()
}

/// The workspace's listening TCP ports, sorted, without duplicates, without ports below 9 and
/// without `own` (the agent's own listeners). A missing file (no IPv6) counts as empty.
pub fn listening_ports(own: &[u16]) -> Vec<u16> {
    let mut ports = BTreeSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            ports.extend(parse_listeners(&text));
        }
    }
    ports
        .into_iter()
        .filter(|p| *p >= FIRST_FORWARDED_PORT && !own.contains(p))
        .collect()
}

/// Whether a dashboard should hide this well-known system port (SSH, SMTP, DNS, databases...).
pub fn is_system_port(port: u16) -> bool {
    SYSTEM_PORTS.contains(&port) || (27_017..=27_019).contains(&port)
}

/// Serves the list on a new loopback listener, on the current runtime, and returns its address.
/// Each connection gets one HTTP/1.1 response, then is closed:
/// `{"ports":[3000,8080],"health":[{"port":3000,"url":"http://...","state":"healthy"}]}`.
/// The port list is read at most once per [`CACHE_MS`]; health states are always current.
pub fn serve_listing(health: Rc<HealthBoard>) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tokio::task::spawn_local(async move {
        let mut cache: Option<(Instant, String)> = None;
        while let Ok((mut stream, _)) = listener.accept().await {
            let ports = cached_listing(&mut cache, addr.port());
            let body = format!("{{\"ports\":{ports},\"health\":{}}}", health.json());
            tokio::task::spawn_local(async move {
                // Read the request head (one read suffices for a short GET), then answer.
                let mut head = [0u8; 2048];
                let _ = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut head)).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(addr)
}

// The JSON array of ports, read again when older than CACHE_MS.
fn cached_listing(cache: &mut Option<(Instant, String)>, own: u16) -> String {
    let now = Instant::now();
    let fresh = |at: &Instant| now.duration_since(*at) < Duration::from_millis(CACHE_MS);
    if let Some((_, body)) = cache.as_ref().filter(|(at, _)| fresh(at)) {
        return body.clone();
    }
    let ports: Vec<String> = listening_ports(&[own]).iter().map(u16::to_string).collect();
    let body = format!("[{}]", ports.join(","));
    *cache = Some((now, body.clone()));
    body
}

// `  0: 0100007F:1F90 00000000:0000 0A ...`: the local port if the state is LISTEN (0A).
fn parse_line(line: &str) -> Option<u16> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let state = fields.nth(1)?;
    if state != TCP_LISTEN {
        return None;
    }
    let (_, port) = local.rsplit_once(':')?;
    u16::from_str_radix(port, 16).ok()
}

/// The kernel's code for the LISTEN state in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";
const SYSTEM_PORTS: [u16; 21] = [
    20, 21, 22, 23, 25, 53, 110, 143, 179, 389, 465, 587, 636, 989, 990, 993, 995, 3306, 3389,
    5432, 28_017,
];
/// How long a read listing is reused.
pub const CACHE_MS: u64 = 1000;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 3 1 0 20 4 30 10 -1
   3: garbage
   4: 0100007F:0004 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4 1 0 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5 1 0 100 0 0 10 0
   1: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 6 1 0 100 0 0 10 0
";

    #[test]
    fn listeners_are_parsed_and_other_states_and_garbage_skipped() {
        assert_eq!(parse_listeners(TCP), vec![8080, 22, 4]);
        assert_eq!(parse_listeners(TCP6), vec![8080, 3000]);
        assert!(parse_listeners("").is_empty());
    }

    #[test]
    fn system_ports_are_recognised() {
        for p in [22, 53, 5432, 27_017, 27_019, 28_017] {
            assert!(is_system_port(p), "{p}");
        }
        for p in [80, 3000, 8080, 27_020] {
            assert!(!is_system_port(p), "{p}");
        }
    }

    #[test]
    fn a_real_listener_is_found_and_own_and_reserved_ports_dropped() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let ports = listening_ports(&[]);
        assert!(ports.contains(&port), "{port} not in {ports:?}");
        assert!(ports.iter().all(|p| *p >= FIRST_FORWARDED_PORT));
        assert!(!listening_ports(&[port]).contains(&port));
        let mut sorted = ports.clone();
        sorted.dedup();
        assert_eq!(sorted, ports);
    }
}
