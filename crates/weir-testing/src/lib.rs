//! Test helpers shared by the whole workspace (dev-dependency only).
//!
//! - [`TestNet`]: a throw-away network of "hosts" (network namespaces) joined
//!   by a Linux bridge that lives in its own "hub" namespace, on
//!   198.18.0.0/15. Everything is removed on drop, also when a test panics.
//! - [`require_root`]: the first call of every test that needs namespaces.
//! - [`Tcpdump`]: a packet capture on the hub bridge, to assert what was (not)
//!   on the wire.
//!
//! ```no_run
//! use std::net::Ipv4Addr;
//! use weir_testing::{require_root, TestNet};
//!
//! if !require_root() {
//!     return;
//! }
//! let net = TestNet::new("demo");
//! let a = net.add_host("a", Ipv4Addr::new(198, 18, 0, 2));
//! let b = net.add_host("b", Ipv4Addr::new(198, 18, 0, 3));
//! let capture = net.tcpdump("br0");
//! // Nothing listens on b:9, so this fails with "Connection refused", which
//! // proves a can reach b.
//! let out = a.exec("bash", &["-c", "echo hi > /dev/tcp/198.18.0.3/9"]);
//! assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
//! let text = capture.stop();
//! assert!(text.contains("198.18.0.2.") && text.contains("> 198.18.0.3.9:"));
//! # drop(b);
//! ```
#![deny(unsafe_code)]

mod net;
mod tcpdump;

pub use net::{sweep_stale, Host, HostChild, TestNet, BRIDGE, NETNS_PREFIX};
pub use tcpdump::Tcpdump;

use std::path::{Path, PathBuf};

/// Environment variable that turns "not root / tools missing" from a test
/// failure into a skipped test.
pub const SKIP_ENV: &str = "WEIR_SKIP_NETNS_TESTS";

/// Binaries the namespace tests need.
const REQUIRED_TOOLS: [&str; 4] = ["ip", "iptables", "iptables-save", "iptables-restore"];

/// Checks that namespace tests can run: root, `ip` and `iptables` present.
///
/// Returns `true` if they can. Otherwise panics with what is missing, unless
/// `WEIR_SKIP_NETNS_TESTS=1`, in which case it prints a note and returns
/// `false` so the test can return early:
///
/// ```no_run
/// if !weir_testing::require_root() {
///     return;
/// }
/// ```
pub fn require_root() -> bool {
    let mut problems = Vec::new();
    match effective_uid() {
        Some(0) => {}
        Some(uid) => problems.push(format!("running as uid {uid}, not root")),
        None => problems.push("cannot read the effective uid from /proc/self/status".into()),
    }
    for tool in REQUIRED_TOOLS {
        if find_in_path(tool).is_none() {
            problems.push(format!("`{tool}` not found on PATH"));
        }
    }
    if problems.is_empty() {
        return true;
    }
    let problems = problems.join("; ");
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!("note: skipping network-namespace test ({SKIP_ENV}=1): {problems}");
        return false;
    }
    panic!(
        "this test needs root and network-namespace tools: {problems}. \
         Run it as root with iproute2 and iptables installed \
         (e.g. `apt-get install -y iproute2 iptables tcpdump`), \
         or set {SKIP_ENV}=1 to skip network-namespace tests."
    );
}

/// The effective uid of this process, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // Uid: real effective saved fs
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Looks `tool` up on `PATH` (plus the sbin directories, which a non-login
/// root shell may lack).
pub fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_uid() {
        assert!(effective_uid().is_some());
    }

    #[test]
    fn finds_sh() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("definitely-not-a-tool-weir").is_none());
    }
}
