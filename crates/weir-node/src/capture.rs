//! In-pod traffic capture: network namespaces, sockets opened inside a pod,
//! the pod's iptables rules and the original destination of a redirected
//! connection.
//!
//! ```text
//! app --connect(10.0.0.5:9092)--> nat OUTPUT: WEIR_OUTPUT REDIRECT --> pod:15001 (outbound listener)
//!                                   orig_dst(&stream) == 10.0.0.5:9092
//! peer --> pod:15008 (HBONE listener, not redirected)
//! peer --> pod:9092 --> nat PREROUTING: WEIR_PREROUTING REDIRECT --> pod:15006 (plaintext inbound)
//! proxy socket with SO_MARK 0x539 --> not captured
//! ```
//!
//! - [`Netns`] is a handle to a namespace; [`NetnsWorker`] is a thread parked
//!   in one that creates listeners and sockets for the async runtime.
//! - [`CaptureRules`] installs and removes the iptables rules (see
//!   [`rules`] for the exact rule set and why each rule exists).
//! - [`pod_netns`] finds a Kubernetes Pod's namespace from its UID.
//! - [`orig_dst`] reads `SO_ORIGINAL_DST` from an accepted connection.
//!
//! All `unsafe` (the `setns` call) is in the private `sys` module.

mod netns;
mod pod;
pub mod rules;
mod sys;

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

pub use netns::{Netns, NetnsWorker, NAMED_NETNS_DIR};
pub use pod::{pod_netns, POD_UID_ANNOTATION};
pub use rules::{CaptureRules, Error, PROXY_MARK, PROXY_MARK_MASK};

/// The destination the client asked for before an iptables `REDIRECT`
/// rewrote it (`SO_ORIGINAL_DST`, or `IP6T_SO_ORIGINAL_DST` for IPv6).
///
/// Works on `tokio::net::TcpStream`, `std::net::TcpStream` or a
/// `socket2::Socket`. Fails with `ENOENT` if conntrack has no entry for the
/// connection (it was not NATed and not tracked).
pub fn orig_dst<S: AsFd>(stream: &S) -> io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let addr = if sock.local_addr()?.is_ipv6() {
        // A dual-stack socket may carry an IPv4 connection (v4-mapped); fall
        // back to the IPv4 conntrack lookup then.
        sock.original_dst_v6().or_else(|_| sock.original_dst_v4())?
    } else {
        sock.original_dst_v4()?
    };
    let addr = addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_ORIGINAL_DST returned a non-IP address",
        )
    })?;
    Ok(match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    })
}
