//! The client side of every workload. Each one is bounded in time (and the loops in count),
//! every socket has timeouts, and each returns an error instead of hanging.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::Result;
use crate::service::{Sink, header, read_head};

pub const RR_BYTES: usize = 64;
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// Upper bound on connections opened by one connection-rate measurement.
const MAX_CONNECTIONS: u64 = 50_000;
/// Datagrams in flight in the UDP rate measurement.
const UDP_WINDOW: u64 = 32;
/// Body size of each request in the HTTP download (cut at the deadline).
const HTTP_BODY: u64 = 1 << 30;

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn histogram() -> Result<Histogram<u64>> {
    // Nanoseconds, up to 60 s.
    Ok(Histogram::<u64>::new_with_bounds(100, 60_000_000_000, 3)?)
}

fn record(h: &mut Histogram<u64>, since: Instant) -> Result<()> {
    h.record((since.elapsed().as_nanos() as u64).clamp(100, 60_000_000_000))?;
    Ok(())
}

/// Percentiles in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub count: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let us = |q| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            p50: us(0.5),
            p99: us(0.99),
            p999: us(0.999),
            count: h.len(),
        }
    }
}

/// Bytes counted at the receiver inside the measurement window, the window's length, and the
/// CPU ticks the forwarding processes used in it.
pub struct Bulk {
    pub bytes: u64,
    pub secs: f64,
    pub ticks: u64,
}

impl Bulk {
    pub fn gbit_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs.max(1e-9) / 1e9
    }
}

/// Bulk TCP over `streams` connections for `secs`: upload (to the sink, counted at the
/// service) or download (from the source, counted here). `cpu` samples the forwarders.
pub fn bulk(
    addr: SocketAddr,
    upload: bool,
    streams: usize,
    secs: f64,
    sink: &Sink,
    cpu: &(dyn Fn() -> HashMap<u32, u64> + Sync),
) -> Result<Bulk> {
    let epoch = sink.epoch.fetch_add(1, Ordering::Relaxed) + 1;
    let mut conns = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut s = connect(addr)?;
        if upload {
            s.write_all(b"U")?;
            s.write_all(&epoch.to_le_bytes())?;
        } else {
            s.write_all(b"D")?;
        }
        conns.push(s);
    }
    let received = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let error: Mutex<Option<String>> = Mutex::new(None);
    let fail = |msg: String| {
        let mut e = error.lock().unwrap_or_else(|e| e.into_inner());
        if e.is_none() {
            *e = Some(msg);
        }
    };
    let counter = || {
        if upload {
            sink.bytes.load(Ordering::Relaxed)
        } else {
            received.load(Ordering::Relaxed)
        }
    };
    let window = Duration::from_secs_f64(secs);
    let result = thread::scope(|scope| {
        for c in &conns {
            let (stop, received, fail) = (&stop, &received, &fail);
            scope.spawn(move || {
                let mut c: &TcpStream = c;
                let mut buf = vec![0x5au8; 128 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    let r = if upload {
                        c.write_all(&buf).map(|()| buf.len())
                    } else {
                        c.read(&mut buf)
                    };
                    match r {
                        Ok(0) => {
                            if !stop.load(Ordering::Relaxed) {
                                fail("the connection closed early".into());
                            }
                            break;
                        }
                        Ok(n) => {
                            if !upload {
                                received.fetch_add(n as u64, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            if !stop.load(Ordering::Relaxed) {
                                fail(e.to_string());
                            }
                            break;
                        }
                    }
                }
            });
        }
        let c0 = cpu();
        let b0 = counter();
        let t0 = Instant::now();
        while t0.elapsed() < window {
            if error.lock().map(|e| e.is_some()).unwrap_or(true) {
                break;
            }
            thread::sleep(Duration::from_millis(20).min(window.saturating_sub(t0.elapsed())));
        }
        let b1 = counter();
        let secs = t0.elapsed().as_secs_f64();
        let c1 = cpu();
        stop.store(true, Ordering::Relaxed);
        for c in &conns {
            let _ = c.shutdown(Shutdown::Both);
        }
        Bulk {
            bytes: b1.saturating_sub(b0),
            secs,
            ticks: crate::procs::cpu_delta(&c0, &c1),
        }
    });
    if let Some(e) = error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e.into());
    }
    if result.bytes == 0 {
        return Err("no data arrived in the window".into());
    }
    Ok(result)
}

/// Small-message request/response on one connection (64 B echo) for `secs`.
pub fn request_response(addr: SocketAddr, secs: f64) -> Result<Latency> {
    let mut s = connect(addr)?;
    s.write_all(b"E")?;
    let mut h = histogram()?;
    let msg = [0xa5u8; RR_BYTES];
    let mut back = [0u8; RR_BYTES];
    for _ in 0..50 {
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
    }
    let start = Instant::now();
    let until = Duration::from_secs_f64(secs);
    while start.elapsed() < until {
        let t = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        record(&mut h, t)?;
        if back != msg {
            return Err("request/response: the echo differs".into());
        }
    }
    Ok(Latency::of(&h))
}

/// New connections per second: connect, one byte each way, close; sequential, for `secs` or
/// at most MAX_CONNECTIONS. Returns (connections per second, transaction latency).
pub fn connection_rate(addr: SocketAddr, secs: f64) -> Result<(f64, Latency)> {
    let mut h = histogram()?;
    let start = Instant::now();
    let until = Duration::from_secs_f64(secs);
    let mut done = 0u64;
    let mut buf = [0u8; 1];
    while start.elapsed() < until && done < MAX_CONNECTIONS {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect #{done}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_nodelay(true)?;
        s.write_all(b"C")?;
        s.read_exact(&mut buf)
            .map_err(|e| format!("connection #{done}: no answer: {e}"))?;
        drop(s);
        record(&mut h, t)?;
        done += 1;
    }
    Ok((done as f64 / start.elapsed().as_secs_f64(), Latency::of(&h)))
}

/// An HTTP/1.1 keep-alive client connection; it reconnects after a `Connection: close`.
struct HttpClient {
    addr: SocketAddr,
    s: TcpStream,
    pending: Vec<u8>,
    closed: bool,
}

impl HttpClient {
    fn connect(addr: SocketAddr) -> Result<Self> {
        Ok(HttpClient {
            addr,
            s: connect(addr)?,
            pending: Vec::new(),
            closed: false,
        })
    }

    /// GET /bytes/N; reads the body until it is complete or `deadline` passes, calling
    /// `counted` with each body chunk's length. Returns true when the body was complete.
    fn get(
        &mut self,
        n: u64,
        deadline: Option<Instant>,
        counted: &mut dyn FnMut(u64),
    ) -> Result<bool> {
        if self.closed {
            self.s = connect(self.addr)?;
            self.pending.clear();
            self.closed = false;
        }
        self.s.write_all(
            format!("GET /bytes/{n} HTTP/1.1\r\nHost: ferry-bench\r\n\r\n").as_bytes(),
        )?;
        let (head, rest) = read_head(&mut self.s, std::mem::take(&mut self.pending))?
            .ok_or("the server closed the connection")?;
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            let line = head.lines().next().unwrap_or("");
            return Err(format!("HTTP status {line:?}").into());
        }
        let len: u64 = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .ok_or("the response has no Content-Length")?;
        if len != n {
            return Err(format!("asked for {n} bytes, Content-Length is {len}").into());
        }
        self.closed = header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut left = n;
        let take = (rest.len() as u64).min(left) as usize;
        left -= take as u64;
        counted(take as u64);
        self.pending = rest[take..].to_vec();
        let mut buf = vec![0u8; 256 * 1024];
        while left > 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            let want = left.min(buf.len() as u64) as usize;
            let k = self.s.read(&mut buf[..want])?;
            if k == 0 {
                return Err(format!("the connection closed with {left} body bytes to go").into());
            }
            left -= k as u64;
            counted(k as u64);
        }
        Ok(true)
    }
}

/// HTTP download: keep-alive GETs of HTTP_BODY bytes for `secs`, the last one cut at the
/// deadline. Counted from the first request.
pub fn http_download(
    addr: SocketAddr,
    secs: f64,
    cpu: &(dyn Fn() -> HashMap<u32, u64> + Sync),
) -> Result<Bulk> {
    let mut c = HttpClient::connect(addr)?;
    let c0 = cpu();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs);
    let mut bytes = 0u64;
    while Instant::now() < deadline {
        c.get(HTTP_BODY, Some(deadline), &mut |n| bytes += n)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let c1 = cpu();
    drop(c);
    if bytes == 0 {
        return Err("no body bytes arrived".into());
    }
    Ok(Bulk {
        bytes,
        secs,
        ticks: crate::procs::cpu_delta(&c0, &c1),
    })
}

/// HTTP request latency: keep-alive GETs of 64 bytes for `secs`.
pub fn http_request_response(addr: SocketAddr, secs: f64) -> Result<Latency> {
    let mut c = HttpClient::connect(addr)?;
    let mut h = histogram()?;
    for _ in 0..20 {
        c.get(RR_BYTES as u64, None, &mut |_| {})?;
    }
    let start = Instant::now();
    let until = Duration::from_secs_f64(secs);
    while start.elapsed() < until {
        let t = Instant::now();
        c.get(RR_BYTES as u64, None, &mut |_| {})?;
        record(&mut h, t)?;
    }
    Ok(Latency::of(&h))
}

fn udp_socket(addr: SocketAddr, timeout: Duration) -> Result<UdpSocket> {
    let any: IpAddr = if addr.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let s = UdpSocket::bind((any, 0))?;
    s.connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// UDP round trips of `size`-byte datagrams, one at a time, for `secs`. A datagram with no
/// answer within 200 ms counts as lost. Returns the latency and the number lost.
pub fn udp_rtt(addr: SocketAddr, size: usize, secs: f64) -> Result<(Latency, u64)> {
    let s = udp_socket(addr, Duration::from_millis(200))?;
    let mut h = histogram()?;
    let mut msg = vec![0x3cu8; size.max(8)];
    let mut back = vec![0u8; 65536];
    let mut lost = 0u64;
    let start = Instant::now();
    let until = Duration::from_secs_f64(secs);
    let warmup = 20;
    let mut seq = 0u64;
    while start.elapsed() < until {
        seq += 1;
        msg[..8].copy_from_slice(&seq.to_le_bytes());
        let t = Instant::now();
        s.send(&msg)?;
        loop {
            match s.recv(&mut back) {
                Ok(n) if n == msg.len() && back[..8] == msg[..8] => {
                    if seq > warmup {
                        record(&mut h, t)?;
                    }
                    break;
                }
                Ok(_) => continue, // a late answer to an earlier datagram
                Err(e) if is_timeout(&e) => {
                    lost += 1;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if h.is_empty() {
        return Err(format!("no UDP answer ({lost} datagrams lost)").into());
    }
    Ok((Latency::of(&h), lost))
}

/// UDP echo rate: keeps UDP_WINDOW datagrams of `size` bytes in flight for `secs` (one new
/// datagram per answer; after 20 ms without any answer the window is refilled) and counts
/// answers. Returns (answered datagrams per second, loss in %).
pub fn udp_rate(addr: SocketAddr, size: usize, secs: f64) -> Result<(f64, f64)> {
    let s = udp_socket(addr, Duration::from_millis(20))?;
    let msg = vec![0x3cu8; size];
    let mut back = vec![0u8; 65536];
    let (mut sent, mut answered, mut in_flight) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let until = Duration::from_secs_f64(secs);
    while start.elapsed() < until {
        while in_flight < UDP_WINDOW {
            s.send(&msg)?;
            sent += 1;
            in_flight += 1;
        }
        match s.recv(&mut back) {
            Ok(n) if n == size => {
                answered += 1;
                in_flight = in_flight.saturating_sub(1);
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) => in_flight = 0,
            Err(e) => return Err(e.into()),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if answered == 0 {
        return Err(format!("no UDP answer to {sent} datagrams").into());
    }
    // Datagrams still in flight at the end are neither answered nor lost.
    let settled = sent.saturating_sub(in_flight).max(1);
    let lost = settled.saturating_sub(answered);
    Ok((answered as f64 / secs, lost as f64 * 100.0 / settled as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Service;

    #[test]
    fn every_workload_runs_against_the_service_on_loopback() {
        let svc = Service::start(Ipv4Addr::LOCALHOST.into()).unwrap();
        let none = || HashMap::new();
        let up = bulk(svc.tcp, true, 2, 0.2, &svc.sink, &none).unwrap();
        assert!(up.bytes > 0);
        let down = bulk(svc.tcp, false, 1, 0.2, &svc.sink, &none).unwrap();
        assert!(down.bytes > 0);
        assert!(http_download(svc.tcp, 0.2, &none).unwrap().bytes > 0);
        assert!(http_request_response(svc.tcp, 0.1).unwrap().count > 0);
        assert!(request_response(svc.tcp, 0.1).unwrap().count > 0);
        let (rate, _) = connection_rate(svc.tcp, 0.1).unwrap();
        assert!(rate > 0.0);
        let (lat, _) = udp_rtt(svc.udp, 64, 0.2).unwrap();
        assert!(lat.count > 0);
        let (pps, _) = udp_rate(svc.udp, 1200, 0.2).unwrap();
        assert!(pps > 0.0);
    }
}
