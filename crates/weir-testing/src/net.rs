//! Network namespaces joined by a bridge.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::tcpdump::Tcpdump;

/// Every namespace the harness creates is named `wt<pid>-...`, so
/// [`sweep_stale`] can tell which process owns it.
pub const NETNS_PREFIX: &str = "wt";
/// Name of the bridge in the hub namespace.
pub const BRIDGE: &str = "br0";
/// Where `ip netns` keeps named namespaces.
const NETNS_DIR: &str = "/var/run/netns";
/// Prefix length given to host addresses (all hosts of a test share a /24).
const HOST_PREFIX_LEN: u8 = 24;

static NEXT_NET: AtomicU32 = AtomicU32::new(0);

/// State shared by a [`TestNet`] and its [`Host`]s.
#[derive(Debug, Default)]
struct Shared {
    /// Pids of children spawned through [`Host::spawn`] and not yet reaped.
    /// A pid stays here until its [`HostChild`] reaps it, so killing a pid
    /// from this set never hits an unrelated process.
    children: Mutex<HashSet<u32>>,
}

impl Shared {
    fn children(&self) -> MutexGuard<'_, HashSet<u32>> {
        // A test that panicked while holding the lock must not stop cleanup.
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A test network: one hub namespace with bridge [`BRIDGE`], plus one
/// namespace per host, each with `eth0` on the bridge.
///
/// Dropping it kills the children spawned in its hosts and deletes all its
/// namespaces (which removes the veth pairs and the bridge).
pub struct TestNet {
    id: String,
    hub: String,
    namespaces: Mutex<Vec<String>>,
    next_link: AtomicU32,
    shared: Arc<Shared>,
}

impl fmt::Debug for TestNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestNet")
            .field("id", &self.id)
            .field("namespaces", &*self.lock_namespaces())
            .finish()
    }
}

impl TestNet {
    /// Creates the hub namespace and its bridge. `name_hint` (a few letters
    /// naming the test) goes into the namespace names to ease debugging.
    ///
    /// First removes namespaces left behind by test processes that died (see
    /// [`sweep_stale`]). Panics if a namespace cannot be created.
    pub fn new(name_hint: &str) -> TestNet {
        sweep_stale();
        let hint: String = name_hint
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(10)
            .collect::<String>()
            .to_ascii_lowercase();
        let n = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        let id = format!("{NETNS_PREFIX}{}-{n}-{hint}", std::process::id());
        let hub = format!("{id}-hub");
        let net = TestNet {
            id,
            hub,
            namespaces: Mutex::new(Vec::new()),
            next_link: AtomicU32::new(0),
            shared: Arc::default(),
        };
        net.init_hub();
        net
    }

    /// Like [`Self::new`], but with stable, readable names: hub `<prefix>-hub`
    /// and hosts `<prefix>-<name>` (e.g. `weir-demo-kafka-0`), for tools such
    /// as `weir demo` whose users type the names. Unlike [`Self::new`] it does
    /// not sweep stale `wt...` namespaces; the caller must make sure no
    /// namespace of that prefix exists (creation panics otherwise).
    pub fn with_prefix(prefix: &str) -> TestNet {
        assert!(
            !prefix.is_empty()
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "namespace prefix {prefix:?} must be ASCII alphanumerics and '-'"
        );
        let hub = format!("{prefix}-hub");
        let net = TestNet {
            id: prefix.to_string(),
            hub,
            namespaces: Mutex::new(Vec::new()),
            next_link: AtomicU32::new(0),
            shared: Arc::default(),
        };
        net.init_hub();
        net
    }

    fn init_hub(&self) {
        let hub = self.hub.clone();
        self.add_netns(&hub);
        self.ip(&["-n", &hub, "link", "set", "lo", "up"]);
        self.ip(&[
            "-n",
            &hub,
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        self.ip(&["-n", &hub, "link", "set", BRIDGE, "up"]);
    }

    /// The `wt<pid>-<n>-<hint>` prefix shared by this network's namespaces.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Name of the hub namespace holding the bridge.
    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// Names of every namespace this network created (hub first).
    pub fn namespaces(&self) -> Vec<String> {
        self.lock_namespaces().clone()
    }

    /// Adds a host: namespace `<id>-<name>` with loopback up and `eth0` at
    /// `addr/24`, whose veth peer is attached to the hub bridge.
    ///
    /// `addr` must be in 198.18.0.0/15, the range reserved for benchmarks, so
    /// test traffic can never be mistaken for (or routed to) real networks.
    pub fn add_host(&self, name: &str, addr: Ipv4Addr) -> Host {
        let [a, b, ..] = addr.octets();
        assert!(
            a == 198 && (b & 0xfe) == 18,
            "test host address {addr} is outside 198.18.0.0/15"
        );
        assert!(
            !name.is_empty()
                && !name.starts_with('-')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "host name {name:?} must be non-empty ASCII alphanumerics and '-'"
        );
        let ns = format!("{}-{name}", self.id);
        self.add_netns(&ns);
        // The hub side is named after a per-network counter: interface names
        // are per namespace, and this hub belongs to this network only.
        let link = format!("v{}", self.next_link.fetch_add(1, Ordering::Relaxed));
        let hub = self.hub.as_str();
        self.ip(&[
            "-n", hub, "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        self.ip(&["-n", hub, "link", "set", &link, "master", BRIDGE, "up"]);
        self.ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let cidr = format!("{addr}/{HOST_PREFIX_LEN}");
        self.ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
        self.ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        Host {
            netns_path: PathBuf::from(NETNS_DIR).join(&ns),
            name: ns,
            addr,
            shared: self.shared.clone(),
        }
    }

    /// Runs a command in the hub namespace and returns its output.
    pub fn exec_hub<S: AsRef<OsStr>>(&self, cmd: &str, args: &[S]) -> Output {
        exec_in(&self.hub, cmd, args)
    }

    /// Starts a packet capture on `ifname` (usually [`BRIDGE`]) in the hub
    /// namespace, printing every packet with its payload in ASCII.
    pub fn tcpdump(&self, ifname: &str) -> Tcpdump {
        self.tcpdump_filtered(ifname, "")
    }

    /// [`Self::tcpdump`] with a pcap filter expression (e.g. `"tcp"`).
    pub fn tcpdump_filtered(&self, ifname: &str, filter: &str) -> Tcpdump {
        Tcpdump::start(&self.hub, ifname, filter)
    }

    fn lock_namespaces(&self) -> MutexGuard<'_, Vec<String>> {
        self.namespaces.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a namespace and records it for deletion *before* anything
    /// else can fail.
    fn add_netns(&self, ns: &str) {
        let out = run(setup(Command::new("ip").args(["netns", "add", ns])));
        assert!(
            out.status.success(),
            "ip netns add {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        self.lock_namespaces().push(ns.to_string());
    }

    fn ip(&self, args: &[&str]) {
        let out = run(setup(Command::new("ip").args(args)));
        assert!(
            out.status.success(),
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        {
            let children = self.shared.children();
            for pid in children.iter() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let namespaces = std::mem::take(&mut *self.lock_namespaces());
        for ns in namespaces.iter().rev() {
            let out = setup(Command::new("ip").args(["netns", "del", ns]))
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "weir-testing: ip netns del {ns} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => eprintln!("weir-testing: cannot run ip netns del {ns}: {e}"),
            }
        }
    }
}

/// A host of a [`TestNet`]: a network namespace with `eth0` on the bridge.
#[derive(Clone)]
pub struct Host {
    /// Namespace name (as in `ip netns list`).
    pub name: String,
    /// Address of `eth0`.
    pub addr: Ipv4Addr,
    /// `/var/run/netns/<name>`, for opening the namespace directly.
    pub netns_path: PathBuf,
    shared: Arc<Shared>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish()
    }
}

impl Host {
    /// A `Command` that runs `cmd` inside this host (`ip netns exec`).
    pub fn command(&self, cmd: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, cmd]);
        c
    }

    /// Runs `cmd args...` inside the host and returns its output, whatever
    /// its exit status. Panics only if `ip` cannot be started.
    pub fn exec<S: AsRef<OsStr>>(&self, cmd: &str, args: &[S]) -> Output {
        exec_in(&self.name, cmd, args)
    }

    /// Like [`Self::exec`], but panics with stderr unless the command
    /// succeeded; returns stdout.
    pub fn exec_ok<S: AsRef<OsStr>>(&self, cmd: &str, args: &[S]) -> String {
        let out = self.exec(cmd, args);
        assert!(
            out.status.success(),
            "`{cmd}` in {} failed ({}): {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `cmd args...` inside the host (stdin null, output inherited).
    /// The child is killed when the handle or the [`TestNet`] is dropped.
    pub fn spawn<S: AsRef<OsStr>>(&self, cmd: &str, args: &[S]) -> HostChild {
        let mut command = self.command(cmd);
        command.args(args).stdin(Stdio::null());
        self.spawn_command(command)
    }

    /// Starts a prepared [`Self::command`], tracked like [`Self::spawn`].
    pub fn spawn_command(&self, mut command: Command) -> HostChild {
        // Hold the lock across spawn so TestNet's drop sees every child.
        let mut children = self.shared.children();
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {command:?} in {}: {e}", self.name));
        children.insert(child.id());
        drop(children);
        HostChild {
            child: Some(child),
            shared: self.shared.clone(),
        }
    }
}

/// A process running inside a [`Host`]; killed and reaped on drop.
pub struct HostChild {
    child: Option<Child>,
    shared: Arc<Shared>,
}

impl HostChild {
    /// The process id (of the command itself: `ip netns exec` execs it).
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The underlying child, e.g. to take its piped stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until drop")
    }

    /// Kills the process and returns once it is reaped.
    pub fn kill(mut self) {
        self.reap();
    }

    fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Unregister first: once reaped, the pid may be reused.
            self.shared.children().remove(&child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for HostChild {
    fn drop(&mut self) {
        self.reap();
    }
}

impl fmt::Debug for HostChild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostChild")
            .field("pid", &self.id())
            .finish()
    }
}

/// Deletes `wt<pid>-...` namespaces whose owning process is gone (left
/// behind by a test process that was killed before its `Drop` ran).
///
/// Namespaces of a live process, including this one, are never touched;
/// names not of the form `wt<digits>-...` are ignored. Returns the names
/// removed. Called by [`TestNet::new`].
pub fn sweep_stale() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid == me || PathBuf::from(format!("/proc/{pid}")).exists() {
            continue;
        }
        let ok = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            removed.push(name);
        }
    }
    removed
}

/// The pid encoded in a harness namespace name `wt<pid>-...`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let (digits, _) = rest.split_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Puts a short `ip` command that builds or removes the network in its own
/// process group: the Ctrl-C a terminal sends to the foreground group (a
/// `weir demo`, which then removes what it built) must not kill it halfway
/// and turn an orderly stop into a failed `ip` command.
fn setup(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
}

fn exec_in<S: AsRef<OsStr>>(ns: &str, cmd: &str, args: &[S]) -> Output {
    run(Command::new("ip")
        .args(["netns", "exec", ns, cmd])
        .args(args))
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is iproute2 installed?)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_harness_names() {
        assert_eq!(owner_pid("wt123-0-x-hub"), Some(123));
        assert_eq!(owner_pid("wt9-1-a"), Some(9));
        assert_eq!(owner_pid("wt-1-a"), None);
        assert_eq!(owner_pid("wtx1-1"), None);
        assert_eq!(owner_pid("wt123"), None);
        assert_eq!(owner_pid("wtf-is-this"), None);
        assert_eq!(owner_pid("cni-1234"), None);
    }
}
