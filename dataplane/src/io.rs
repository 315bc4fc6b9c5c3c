//! The I/O backends: io_uring (tokio-uring) and epoll (tokio), behind one small interface.
//!
//! The engine is written once against [`LocalIo`] and [`LocalStream`]: local TCP connections,
//! accepted or dialled, read and written with owned buffers (the form io_uring needs, since the
//! kernel holds a buffer until the operation completes). [`Backend::detect`] picks io_uring when
//! the kernel allows it and falls back to epoll with a one-line notice otherwise, as in the
//! default seccomp profile of common container runtimes. `FERRY_IO=epoll|uring` forces a choice.
//!
//! Both backends run a single-threaded tokio runtime, so tokio's timers, channels, signals and
//! `spawn_local` work the same under either.

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;

use tokio_uring::buf::BoundedBuf;

/// Which I/O backend runs the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring through tokio-uring.
    Uring,
    /// epoll through tokio.
    Epoll,
}

impl Backend {
    /// Chooses the backend: `FERRY_IO` if set, else io_uring if the kernel allows it.
    pub fn detect() -> Backend {
        match std::env::var("FERRY_IO").as_deref() {
            Ok("epoll") => return Backend::Epoll,
            Ok("uring") => return Backend::Uring,
            _ => {}
        }
        match tokio_uring::Runtime::new(&tokio_uring::builder()) {
            Ok(_) => Backend::Uring,
            Err(e) => {
                eprintln!("ferry: io_uring is unavailable ({e}); using the epoll backend");
                Backend::Epoll
            }
        }
    }

    /// The backend's name, for logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }
}

/// Runs `make(backend)`'s future to completion on a single-threaded runtime of that backend.
/// The closure is generic over the backend through [`RunWith`].
pub fn run<R: RunWith>(backend: Backend, job: R) -> io::Result<R::Output> {
    match backend {
        Backend::Uring => {
            let rt = tokio_uring::Runtime::new(&tokio_uring::builder())?;
            Ok(rt.block_on(job.run::<UringIo>()))
        }
        Backend::Epoll => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let local = tokio::task::LocalSet::new();
            Ok(local.block_on(&rt, job.run::<EpollIo>()))
        }
    }
}

/// A job that can run on either backend.
pub trait RunWith {
    /// What the job returns.
    type Output;
    /// Runs the job with backend `L`.
    fn run<L: LocalIo>(self) -> impl Future<Output = Self::Output>;
}

/// Local TCP sockets for one backend.
#[allow(async_fn_in_trait)] // Futures run on a single-threaded runtime and need not be Send.
pub trait LocalIo: 'static {
    /// A connected stream.
    type Stream: LocalStream;
    /// A listener.
    type Listener: 'static;
    /// Wraps a bound, listening, non-blocking std listener.
    fn listener(std: std::net::TcpListener) -> io::Result<Self::Listener>;
    /// Accepts one connection.
    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)>;
    /// Connects to `addr`.
    async fn connect(addr: SocketAddr) -> io::Result<Self::Stream>;
}

/// A connected local TCP stream, used with owned buffers.
#[allow(async_fn_in_trait)] // As above.
pub trait LocalStream: 'static {
    /// Reads at most `max` bytes into `buf` (cleared first); `buf.len()` is then the count.
    async fn read(&self, buf: Vec<u8>, max: usize) -> (io::Result<usize>, Vec<u8>);
    /// Writes `buf[..len]` entirely.
    async fn write_all(&self, buf: Vec<u8>, len: usize) -> (io::Result<()>, Vec<u8>);
    /// Shuts down the write side (sends FIN), keeping the read side open.
    fn shutdown_write(&self) -> io::Result<()>;
    /// Makes closing the stream send a reset, and ends any pending read; with `writing`, also
    /// ends a pending write (one that waits on a reader that may never read).
    fn reset(&self, writing: bool);
}

/// The io_uring backend.
pub struct UringIo;

impl LocalIo for UringIo {
    type Stream = tokio_uring::net::TcpStream;
    type Listener = tokio_uring::net::TcpListener;

    fn listener(std: std::net::TcpListener) -> io::Result<Self::Listener> {
        Ok(tokio_uring::net::TcpListener::from_std(std))
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, addr) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, addr))
    }

    async fn connect(addr: SocketAddr) -> io::Result<Self::Stream> {
        let stream = tokio_uring::net::TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl LocalStream for tokio_uring::net::TcpStream {
    async fn read(&self, mut buf: Vec<u8>, max: usize) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        if buf.capacity() < max {
            buf.reserve(max);
        }
        let max = max.max(1).min(buf.capacity());
        let (result, slice) = tokio_uring::net::TcpStream::read(self, buf.slice(..max)).await;
        (result, slice.into_inner())
    }

    async fn write_all(&self, buf: Vec<u8>, len: usize) -> (io::Result<()>, Vec<u8>) {
        let len = len.min(buf.len());
        let (result, slice) = tokio_uring::net::TcpStream::write_all(self, buf.slice(..len)).await;
        (result, slice.into_inner())
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    fn reset(&self, writing: bool) {
        crate::sys::reset_tcp(self.as_raw_fd(), writing);
    }
}

/// The epoll backend.
pub struct EpollIo;

impl LocalIo for EpollIo {
    type Stream = tokio::net::TcpStream;
    type Listener = tokio::net::TcpListener;

    fn listener(std: std::net::TcpListener) -> io::Result<Self::Listener> {
        tokio::net::TcpListener::from_std(std)
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, addr) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, addr))
    }

    async fn connect(addr: SocketAddr) -> io::Result<Self::Stream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl LocalStream for tokio::net::TcpStream {
    async fn read(&self, mut buf: Vec<u8>, max: usize) -> (io::Result<usize>, Vec<u8>) {
        buf.resize(max.max(1), 0);
        loop {
            if let Err(e) = self.readable().await {
                buf.clear();
                return (Err(e), buf);
            }
            match self.try_read(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return (Ok(n), buf);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    buf.clear();
                    return (Err(e), buf);
                }
            }
        }
    }

    async fn write_all(&self, buf: Vec<u8>, len: usize) -> (io::Result<()>, Vec<u8>) {
        let mut written = 0;
        let len = len.min(buf.len());
        while written < len {
            if let Err(e) = self.writable().await {
                return (Err(e), buf);
            }
            match self.try_write(&buf[written..len]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        socket2::SockRef::from(self).shutdown(Shutdown::Write)
    }

    fn reset(&self, writing: bool) {
        crate::sys::reset_tcp(self.as_raw_fd(), writing);
    }
}
