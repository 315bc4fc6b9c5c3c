//! The in-process service every path leads to.
//!
//! TCP: the first byte of a connection selects the mode:
//! - `U` + 8-byte epoch: sink. Bytes read are added to the service's sink counter while the
//!   epoch is the current one, so that an upload is measured at the receiver and data a
//!   forwarder still delivers from an earlier measurement is not counted.
//! - `D`: source, writes until the peer goes away.
//! - `E`: echo.
//! - `C`: connection-rate probe: answers one byte, then waits for the peer to close.
//! - `G`: HTTP/1.1 (the `G` of `GET`): `GET /bytes/N` answers N bytes, keep-alive supported.
//!
//! UDP: echo, on its own socket.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use crate::Result;

/// Shared with the measurement code: see the module doc for `U`.
#[derive(Default)]
pub struct Sink {
    pub epoch: AtomicU64,
    pub bytes: AtomicU64,
}

pub struct Service {
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    pub sink: Arc<Sink>,
    stop: Arc<AtomicBool>,
    listener: TcpListener,
}

const BUF: usize = 256 * 1024;
/// Largest HTTP request head either side accepts.
const MAX_HEAD: usize = 16 * 1024;

impl Service {
    /// Binds TCP and UDP on `ip` with free ports and serves them on background threads, in the
    /// network namespace of the calling thread.
    pub fn start(ip: IpAddr) -> Result<Self> {
        let listener = TcpListener::bind((ip, 0))?;
        let udp = UdpSocket::bind((ip, 0))?;
        let sink = Arc::new(Sink::default());
        let stop = Arc::new(AtomicBool::new(false));
        let service = Service {
            tcp: listener.local_addr()?,
            udp: udp.local_addr()?,
            sink: sink.clone(),
            stop: stop.clone(),
            listener: listener.try_clone()?,
        };
        let stop_tcp = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop_tcp.load(Ordering::Relaxed) {
                    break;
                }
                match conn {
                    Ok(stream) => {
                        let sink = sink.clone();
                        thread::spawn(move || {
                            let _ = serve(stream, &sink);
                        });
                    }
                    // Out of descriptors or similar: do not spin.
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        udp.set_read_timeout(Some(Duration::from_millis(200)))?;
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        });
        Ok(service)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Shutting a listening socket down wakes the thread blocked in accept (Linux).
        #[allow(unsafe_code)]
        // SAFETY: shutdown has no memory-safety preconditions; the descriptor is owned by
        // self.listener and open for the call.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}

fn serve(mut s: TcpStream, sink: &Sink) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    s.set_write_timeout(Some(Duration::from_secs(120)))?;
    let mut mode = [0u8; 1];
    if s.read(&mut mode)? == 0 {
        return Ok(());
    }
    // Sized per mode: the connection-rate probe should cost as little as possible.
    let mut buf = vec![0u8; if mode[0] == b'C' { 1 } else { BUF }];
    match mode[0] {
        b'U' => {
            let mut epoch = [0u8; 8];
            s.read_exact(&mut epoch)?;
            let epoch = u64::from_le_bytes(epoch);
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                if sink.epoch.load(Ordering::Relaxed) == epoch {
                    sink.bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
        b'D' => loop {
            s.write_all(&buf)?;
        },
        b'E' => loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n])?;
        },
        b'C' => {
            s.write_all(b"c")?;
            while s.read(&mut buf)? > 0 {}
        }
        b'G' => http(&mut s, &buf, b'G')?,
        _ => {}
    }
    Ok(())
}

/// Reads an HTTP head (through the blank line) after the bytes already in `pending`.
/// Returns None on a clean end of stream before any byte; otherwise (head, bytes after it).
pub fn read_head(
    s: &mut impl Read,
    mut pending: Vec<u8>,
) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(pos) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = pending.split_off(pos + 4);
            return Ok(Some((String::from_utf8_lossy(&pending).into_owned(), rest)));
        }
        if pending.len() > MAX_HEAD {
            return Err(std::io::Error::other("HTTP head too large"));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            if pending.is_empty() {
                return Ok(None);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed inside an HTTP head",
            ));
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// The value of header `name` (case-insensitive) in an HTTP head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `GET /bytes/N` → N; None for anything else.
fn parse_request(head: &str) -> Option<(u64, bool)> {
    let mut parts = head.lines().next()?.split_whitespace();
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if method != "GET" {
        return None;
    }
    let n: u64 = target.strip_prefix("/bytes/")?.parse().ok()?;
    let connection = header(head, "connection").map(str::to_ascii_lowercase);
    let keep = match version {
        "HTTP/1.1" => connection.as_deref() != Some("close"),
        _ => connection.as_deref() == Some("keep-alive"),
    };
    Some((n.min(1 << 40), keep))
}

fn http(s: &mut TcpStream, body: &[u8], first: u8) -> std::io::Result<()> {
    let mut pending = vec![first];
    loop {
        let Some((head, rest)) = read_head(s, pending)? else {
            return Ok(());
        };
        pending = rest;
        let Some((n, keep)) = parse_request(&head) else {
            s.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
            return Ok(());
        };
        let close = if keep { "" } else { "Connection: close\r\n" };
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {n}\r\n{close}\r\n"
        )
        .into_bytes();
        // Head and the start of the body in one write: a small response written as two
        // segments would meet Nagle and delayed ACKs in a forwarder (a 40 ms stall).
        let first = n.min(body.len() as u64) as usize;
        out.extend_from_slice(&body[..first]);
        s.write_all(&out)?;
        let mut left = n - first as u64;
        while left > 0 {
            let k = left.min(body.len() as u64) as usize;
            s.write_all(&body[..k])?;
            left -= k as u64;
        }
        if !keep {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        let h = "GET /bytes/100 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse_request(h), Some((100, true)));
        let h = "GET /bytes/7 HTTP/1.0\r\nHost: x\r\n\r\n";
        assert_eq!(parse_request(h), Some((7, false)));
        let h = "GET /bytes/7 HTTP/1.1\r\nConnection: Close\r\n\r\n";
        assert_eq!(parse_request(h), Some((7, false)));
        assert_eq!(parse_request("POST /bytes/1 HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse_request("GET /other HTTP/1.1\r\n\r\n"), None);
    }

    #[test]
    fn reads_heads_with_leftovers() {
        let data = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcNEXT".to_vec();
        let mut r = &data[5..];
        let (head, rest) = read_head(&mut r, data[..5].to_vec()).unwrap().unwrap();
        assert_eq!(header(&head, "content-length"), Some("3"));
        assert_eq!(rest, b"abcNEXT");
        let mut empty: &[u8] = &[];
        assert!(read_head(&mut empty, Vec::new()).unwrap().is_none());
    }
}
