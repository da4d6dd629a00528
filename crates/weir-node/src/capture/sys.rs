//! The only syscalls in weir that `std` and `socket2` do not wrap.
//!
//! Everything that needs `unsafe` for capture lives here, so a reviewer
//! has one short file to audit.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Moves the *calling thread* into the network namespace referred to by `ns`.
///
/// Only the calling thread changes namespace; sockets it creates afterwards
/// belong to that namespace for their whole life, wherever they are used.
pub(super) fn setns_net(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `setns` only reads its two integer arguments. The descriptor is
    // borrowed, so it stays open for the duration of the call, and
    // CLONE_NEWNET restricts the kernel to checking that it is a network
    // namespace descriptor (EINVAL otherwise). No memory is shared with the
    // kernel, and changing the network namespace of a thread in a
    // multi-threaded process is allowed (unlike mount/user namespaces).
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
