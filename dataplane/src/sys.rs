//! The few socket calls the standard library and socket2 cannot make on a bare descriptor.
//!
//! tokio-uring's streams expose only `AsRawFd`, so resetting one (as a reset that arrived through
//! the tunnel asks) needs `setsockopt` and `shutdown` on the raw descriptor. Each `unsafe` block
//! passes a live descriptor and buffers that outlive the call.
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::RawFd;

/// Sets an integer socket option.
pub fn set_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` lives across the call and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes the next close of a TCP socket send a reset, and wakes any pending read on it (which
/// then completes with end of stream), so that an in-flight io_uring read lets the socket go.
///
/// `writing`: a write is pending too, which only completes once the local reader takes data
/// (it may never). Shutting the write side as well completes it with an error. The FIN this
/// queues sits behind the unsent data the pending write is waiting on, so it does not leave
/// before the close's reset discards it.
pub fn reset_tcp(fd: RawFd, writing: bool) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` lives across the call and its size is passed with it; `fd` is open
    // (borrowed from a live stream by the caller).
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
        let how = if writing {
            libc::SHUT_RDWR
        } else {
            libc::SHUT_RD
        };
        libc::shutdown(fd, how);
    }
}
