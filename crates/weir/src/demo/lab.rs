//! The demo's cluster: network namespaces on a bridge, two `weir node`
//! processes, the broker, and everything needed to remove them again.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weir_testing::{Host, TestNet};

use super::procs::{self, Proc};
use super::ui;

/// Every network namespace of the demo is named `weir-demo-...`.
pub const PREFIX: &str = "weir-demo";
pub const BROKER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const KAFKA_PORT: u16 = 9092;
pub const METRICS_PORT: u16 = 9404;
pub const TOPIC: &str = "weir-demo";

/// A "pod": a Workload in the mesh config with its own network namespace.
pub struct Pod {
    pub name: &'static str,
    pub namespace: &'static str,
    pub service_account: &'static str,
    pub node: &'static str,
    pub ip: Ipv4Addr,
}

pub const PODS: [Pod; 4] = [
    Pod {
        name: "kafka-0",
        namespace: "kafka",
        service_account: "kafka",
        node: "node-a",
        ip: BROKER_IP,
    },
    Pod {
        name: "producer",
        namespace: "apps",
        service_account: "producer",
        node: "node-b",
        ip: Ipv4Addr::new(198, 18, 0, 20),
    },
    Pod {
        name: "consumer",
        namespace: "apps",
        service_account: "consumer",
        node: "node-b",
        ip: Ipv4Addr::new(198, 18, 0, 21),
    },
    Pod {
        name: "intruder",
        namespace: "apps",
        service_account: "intruder",
        node: "node-b",
        ip: Ipv4Addr::new(198, 18, 0, 22),
    },
];
/// The non-mesh host (not a Workload): a Prometheus outside the mesh.
pub const MONITORING: &str = "monitoring";
pub const MONITORING_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 30);

pub const CLIENT_PY: &str = include_str!("../../../../tools/kafka/client.py");
pub const MOCK_CLUSTER_PY: &str = include_str!("../../../../tools/kafka/mock_cluster.py");
pub const PROBE_PY: &str = include_str!("probe.py");
pub const POLICIES_YAML: &str = include_str!("../../../../examples/kafka-mesh/policies.yaml");

pub fn netns(host: &str) -> String {
    format!("{PREFIX}-{host}")
}

/// A running `weir node`.
pub struct NodeProxy {
    pub name: &'static str,
    pub proc: Proc,
    pub log: PathBuf,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub ready: SocketAddr,
}

/// Everything the demo created; [`Lab::cleanup`] (also on drop) removes it.
pub struct Lab {
    pub dir: PathBuf,
    pub net: Option<TestNet>,
    pub hosts: Vec<Host>,
    pub nodes: Vec<NodeProxy>,
    pub broker: Option<Proc>,
    pub metrics_server: Option<Proc>,
    cleaned: bool,
    /// Held for the demo's lifetime: see [`take_lock`].
    _lock: UnixListener,
}

impl Lab {
    /// Prepares the work directory, refusing to run beside another live demo
    /// and removing what a killed one left behind.
    pub fn new() -> Result<Lab, String> {
        let dir = work_dir();
        let pidfile = dir.join("pid");
        let lock = take_lock()?.ok_or_else(|| match lock_holder() {
            Some(pid) => format!(
                "another `weir demo` is running (pid {pid}); stop it with Ctrl-C in its \
                 terminal, `kill {pid}`, or `weir demo --cleanup`, then run this again"
            ),
            None => "another `weir demo` is running (it holds the lock @weir-demo.lock); \
                     stop it with Ctrl-C in its terminal or `weir demo --cleanup`, then \
                     run this again"
                .to_string(),
        })?;
        remove_leftovers();
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["config", "ca", "logs", "tools", "broker-metrics"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("cannot create {}: {e}", dir.join(sub).display()))?;
        }
        std::fs::write(&pidfile, std::process::id().to_string())
            .map_err(|e| format!("cannot write {}: {e}", pidfile.display()))?;
        for (name, text) in [
            ("client.py", CLIENT_PY),
            ("mock_cluster.py", MOCK_CLUSTER_PY),
            ("probe.py", PROBE_PY),
        ] {
            std::fs::write(dir.join("tools").join(name), text)
                .map_err(|e| format!("cannot write the {name} tool: {e}"))?;
        }
        Ok(Lab {
            dir,
            net: None,
            hosts: Vec::new(),
            nodes: Vec::new(),
            broker: None,
            metrics_server: None,
            cleaned: false,
            _lock: lock,
        })
    }

    pub fn tool(&self, name: &str) -> String {
        self.dir
            .join("tools")
            .join(name)
            .to_string_lossy()
            .into_owned()
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// The bridge, one namespace per pod and one for monitoring.
    pub fn build_network(&mut self) {
        let net = TestNet::with_prefix(PREFIX);
        ui::ok(&format!(
            "bridge {} in namespace {}",
            weir_testing::BRIDGE,
            net.hub()
        ));
        for pod in &PODS {
            let h = net.add_host(pod.name, pod.ip);
            ui::ok(&format!(
                "{:<22} {:<13} {}/{} (sa {}) on {}",
                h.name, pod.ip, pod.namespace, pod.name, pod.service_account, pod.node
            ));
            self.hosts.push(h);
        }
        let h = net.add_host(MONITORING, MONITORING_IP);
        ui::ok(&format!(
            "{:<22} {:<13} not in the mesh (a Prometheus outside it)",
            h.name, MONITORING_IP
        ));
        self.hosts.push(h);
        self.net = Some(net);
    }

    /// Writes the Workloads and the policies into the config directory.
    pub fn write_config(&self) -> Result<(PathBuf, PathBuf), String> {
        let mut w = String::from(
            "# weir demo: one Workload per \"pod\" (a network namespace on the demo bridge).\n\
             # The node proxy named in spec.node serves it inside spec.netns.\n",
        );
        for (i, pod) in PODS.iter().enumerate() {
            if i > 0 {
                w.push_str("---\n");
            }
            w.push_str(&format!(
                "apiVersion: weir.dev/v1alpha1\nkind: Workload\n\
                 metadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\n\
                 spec:\n  serviceAccount: {sa}\n  address: {ip}\n  node: {node}\n  netns: {netns}\n",
                name = pod.name,
                ns = pod.namespace,
                app = if pod.name == "kafka-0" {
                    "kafka"
                } else {
                    pod.name
                },
                sa = pod.service_account,
                ip = pod.ip,
                node = pod.node,
                netns = netns(pod.name),
            ));
        }
        let workloads = self.config_dir().join("workloads.yaml");
        let policies = self.config_dir().join("policies.yaml");
        std::fs::write(&workloads, w).map_err(|e| format!("{}: {e}", workloads.display()))?;
        std::fs::write(&policies, POLICIES_YAML)
            .map_err(|e| format!("{}: {e}", policies.display()))?;
        Ok((workloads, policies))
    }

    /// Starts `weir node --node <name>` and waits for /healthz/ready.
    pub fn start_node(&mut self, name: &'static str) -> Result<(), String> {
        let [admin, metrics, ready] = free_ports()?;
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find weir itself: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("node")
            .arg("--config")
            .arg(self.config_dir())
            .args(["--node", name])
            .arg("--state-dir")
            .arg(self.dir.join("ca"))
            .args(["--admin-addr", &admin.to_string()])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(["--readiness-addr", &ready.to_string()])
            .args(["--reload-interval", "1s", "--drain-timeout", "1s"])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file);
        let proc = Proc::spawn(name, cmd)?;
        let mut node = NodeProxy {
            name,
            proc,
            log,
            admin,
            metrics,
            ready,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last;
        loop {
            if procs::cancelled() {
                self.nodes.push(node);
                return Err("cancelled".into());
            }
            if let Some(status) = node.proc.exited() {
                let tail = log_tail(&node.log, 15);
                self.nodes.push(node);
                return Err(format!(
                    "{name} exited ({status}) before it was ready; its log ends:\n{tail}"
                ));
            }
            match http_get(node.ready, "/healthz/ready") {
                Ok((200, _)) => break,
                Ok((code, body)) => last = format!("HTTP {code}: {}", body.trim()),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                let tail = log_tail(&node.log, 15);
                self.nodes.push(node);
                return Err(format!(
                    "{name} not ready within 30 s (last: {last}); its log ends:\n{tail}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        ui::ok(&format!(
            "{name} ready (pid {}): metrics http://{metrics}/metrics, admin http://{admin}/config_dump",
            node.proc.pid()
        ));
        self.nodes.push(node);
        Ok(())
    }

    pub fn node(&self, name: &str) -> &NodeProxy {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("node started")
    }

    /// Removes everything, in order: node proxies first (SIGTERM, so they
    /// remove their iptables rules), then broker and helpers, then the
    /// namespaces, then the work directory. True if nothing is left.
    pub fn cleanup(&mut self) -> bool {
        if self.cleaned {
            return true;
        }
        self.cleaned = true;
        for mut node in std::mem::take(&mut self.nodes) {
            let clean = node.proc.terminate(Duration::from_secs(5));
            if clean {
                ui::ok(&format!(
                    "{} stopped (its iptables rules removed)",
                    node.name
                ));
            } else {
                ui::fail(&format!("{} did not stop within 5 s; killed", node.name));
            }
        }
        if let Some(mut b) = self.broker.take() {
            b.terminate(Duration::from_secs(3));
            ui::ok("broker stopped");
        }
        if let Some(mut m) = self.metrics_server.take() {
            m.terminate(Duration::from_secs(2));
        }
        self.hosts.clear();
        let mut all_gone = true;
        if let Some(net) = self.net.take() {
            let n = net.namespaces().len();
            drop(net);
            let left = stale_namespaces();
            if left.is_empty() {
                ui::ok(&format!(
                    "{n} network namespaces deleted (and the bridge with them)"
                ));
            } else {
                ui::fail(&format!("namespaces still present: {}", left.join(" ")));
                all_gone = false;
            }
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => ui::ok(&format!("{} removed", self.dir.display())),
            Err(e) => {
                ui::fail(&format!("cannot remove {}: {e}", self.dir.display()));
                all_gone = false;
            }
        }
        all_gone
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// The demo's work directory (config, CA, logs, tools).
pub fn work_dir() -> PathBuf {
    std::env::temp_dir().join(PREFIX)
}

/// Whether `pid` is a running process (not gone, not a zombie waiting for
/// its parent to reap it).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // pid (comm) state ...: comm may hold spaces and parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// The name of the demo's lock: an abstract Unix socket in the root network
/// namespace.
const LOCK_NAME: &[u8] = b"weir-demo.lock";

/// Takes the lock that lets one `weir demo` run at a time: `Ok(None)` when
/// another demo holds it. Binding a name is atomic, so two demos started in
/// the same instant cannot both pass (a pid file checked, then written, can);
/// the kernel drops the name when the holder exits however it ends, even on
/// SIGKILL, so a killed demo leaves no stale lock behind; and the socket is
/// close-on-exec, so the node proxies and the broker a demo started do not
/// hold it after it is gone.
pub fn take_lock() -> Result<Option<UnixListener>, String> {
    let failed = |e: std::io::Error| format!("cannot take the demo's lock (@weir-demo.lock): {e}");
    let addr = UnixAddr::from_abstract_name(LOCK_NAME).map_err(failed)?;
    match UnixListener::bind_addr(&addr) {
        Ok(lock) => Ok(Some(lock)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(None),
        Err(e) => Err(failed(e)),
    }
}

/// The pid of the demo that holds the lock another caller found taken: the
/// holder writes its pid file once it has set up the work directory, so this
/// waits up to 3 s for [`live_demo`] to name it.
pub fn lock_holder() -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match live_demo() {
            Some(pid) => return Some(pid),
            None if Instant::now() >= deadline => return None,
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The pid of another `weir demo` that is running now (its pid file names a
/// live process that is a demo), if any.
pub fn live_demo() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(work_dir().join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let is_demo = pid != std::process::id()
        && alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("demo"));
    is_demo.then_some(pid)
}

/// Stops the processes and deletes the namespaces an earlier run left
/// behind when it was killed (SIGKILL, a crash), reporting each with a note.
/// True if there was anything to remove.
pub fn remove_leftovers() -> bool {
    let dir_marker = format!("{}/", work_dir().display());
    let leftovers = leftover_processes(&dir_marker);
    if !leftovers.is_empty() {
        for pid in &leftovers {
            procs::signal(*pid, "TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && leftovers
                .iter()
                .any(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        for pid in &leftovers {
            if Path::new(&format!("/proc/{pid}")).exists() {
                procs::signal(*pid, "KILL");
            }
        }
        ui::note(&format!(
            "stopped {} processes left by an earlier run that was killed (pids {})",
            leftovers.len(),
            leftovers
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    let stale = stale_namespaces();
    if !stale.is_empty() {
        for ns in &stale {
            let _ = procs::own_group(Command::new("ip").args(["netns", "del", ns]))
                .stderr(Stdio::null())
                .status();
        }
        ui::note(&format!(
            "removed {} network namespaces left by an earlier run that was killed: {}",
            stale.len(),
            stale.join(" ")
        ));
    }
    let captures = stale_captures();
    for f in &captures {
        let _ = std::fs::remove_file(f);
    }
    !leftovers.is_empty() || !stale.is_empty() || !captures.is_empty()
}

/// Packet captures (`weir-demo-hub-tcpdump-N.txt`) a killed run left in the
/// temporary directory.
fn stale_captures() -> Vec<PathBuf> {
    let prefix = format!("{PREFIX}-hub-tcpdump-");
    std::fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// `weir-demo-*` namespaces that exist now.
pub fn stale_namespaces() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{PREFIX}-")))
        .collect();
    v.sort();
    v
}

/// Processes an earlier, killed demo left behind: those inside a
/// `weir-demo-*` network namespace, and those whose command line names the
/// demo's work directory (the node proxies, in the root namespace).
fn leftover_processes(dir_marker: &str) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let inodes: Vec<u64> = stale_namespaces()
        .iter()
        .filter_map(|n| std::fs::metadata(format!("/var/run/netns/{n}")).ok())
        .map(|m| m.ino())
        .collect();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let in_demo_ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|m| inodes.contains(&m.ino()));
        let names_dir = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(dir_marker));
        if in_demo_ns || names_dir {
            pids.push(pid);
        }
    }
    pids
}

/// Last resort after a second Ctrl-C, or when cleanup hangs: kill children
/// and whatever else runs in the demo's namespaces (a packet capture, say),
/// delete the namespaces and the work directory.
pub fn emergency_cleanup() {
    procs::kill_all();
    for pid in leftover_processes(&format!("{}/", work_dir().display())) {
        procs::signal(pid, "KILL");
    }
    for ns in stale_namespaces() {
        let _ = procs::own_group(Command::new("ip").args(["netns", "del", &ns]))
            .stderr(Stdio::null())
            .status();
    }
    for f in stale_captures() {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_dir_all(work_dir());
}

fn free_ports() -> Result<[SocketAddr; 3], String> {
    let ls: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot find free local ports: {e}"))?;
    let addrs: Vec<SocketAddr> = ls
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    Ok([addrs[0], addrs[1], addrs[2]])
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `GET path` over HTTP/1.0 with a 5 s bound: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status line in {head:?}")))?;
    Ok((status, body.to_string()))
}
