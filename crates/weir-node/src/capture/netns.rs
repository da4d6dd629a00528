//! Network namespace handles and a per-namespace worker thread.
//!
//! The in-pod model: the node proxy runs in its own namespace but opens every
//! listener and outbound socket *inside the pod's* namespace. A socket keeps
//! the namespace it was created in, so only socket creation has to happen on
//! a thread that entered the pod namespace; afterwards the async runtime uses
//! the socket from any thread.

use std::fmt;
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

use super::sys;

/// Where `ip netns add NAME` bind-mounts named namespaces.
pub const NAMED_NETNS_DIR: &str = "/var/run/netns";

/// Listen backlog for in-pod listeners.
const LISTEN_BACKLOG: i32 = 1024;

/// Where a namespace's ephemeral port range is (read from a thread inside it).
const PORT_RANGE_SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The ports of that range the kernel does not pick (`1000,2000-2010`).
const RESERVED_PORTS_SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// The kernel's default ephemeral port range.
const DEFAULT_PORT_RANGE: (u16, u16) = (32768, 60999);

/// Ports [`NetnsWorker::connect_as`] tries before it gives up.
const SOURCE_PORT_ATTEMPTS: usize = 8;

/// An open handle to a network namespace (a file descriptor on an nsfs file).
///
/// Holding the handle keeps the namespace alive even if its name is removed.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens a namespace created with `ip netns add NAME` (`/var/run/netns/NAME`).
    pub fn open_named(name: &str) -> io::Result<Netns> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid network namespace name {name:?}"),
            ));
        }
        Netns::open(Path::new(NAMED_NETNS_DIR).join(name))
    }

    /// Opens a namespace by path, e.g. `/proc/<pid>/ns/net` or a bind mount
    /// handed over by the CNI plugin.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Netns> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot open network namespace {}: {e} (does it exist, and does the proxy run as root?)",
                    path.display()
                ),
            )
        })?;
        Ok(Netns { file, path })
    }

    /// The namespace of the calling thread.
    pub fn current() -> io::Result<Netns> {
        Netns::open("/proc/thread-self/ns/net")
    }

    /// The path the handle was opened from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Duplicates the handle.
    pub fn try_clone(&self) -> io::Result<Netns> {
        Ok(Netns {
            file: self.file.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// Runs `f` on a short-lived thread that entered this namespace, and
    /// waits for it. Child processes spawned by `f` inherit the namespace.
    ///
    /// For repeated socket creation prefer a [`NetnsWorker`], which enters
    /// the namespace once.
    pub fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name("weir-netns-run".into())
                .spawn_scoped(scope, || {
                    self.enter_current_thread()?;
                    Ok(f())
                })?;
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Moves the calling thread into this namespace. Private: callers must
    /// own the thread (a worker or a scoped thread), never a runtime thread.
    fn enter_current_thread(&self) -> io::Result<()> {
        sys::setns_net(self.file.as_fd()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot enter network namespace {}: {e} (the proxy needs CAP_SYS_ADMIN)",
                    self.path.display()
                ),
            )
        })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.path.display().fmt(f)
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A dedicated OS thread that entered a network namespace once and creates
/// sockets there on request.
///
/// Cloning is cheap (a channel sender); the thread exits when the last clone
/// is dropped. A request costs one boxed closure, one channel send and one
/// wake-up of the worker thread; no thread is spawned per socket.
///
/// Sockets created by the worker stay in the worker's namespace and can be
/// driven by the tokio runtime from any thread:
///
/// ```no_run
/// # async fn example() -> std::io::Result<()> {
/// use weir_node::capture::{Netns, NetnsWorker, PROXY_MARK};
///
/// let pod = NetnsWorker::spawn(&Netns::open_named("pod-a")?)?;
/// // A socket in the pod's namespace, marked so the pod's capture rules let it pass.
/// let sock = pod.socket(socket2::Domain::IPV4, Some(PROXY_MARK))?;
/// let sock = tokio::net::TcpSocket::from_std_stream(sock.into());
/// let stream = sock.connect("198.18.0.3:15008".parse().unwrap()).await?;
/// # drop(stream);
/// // Or, without blocking the runtime for the channel round trip:
/// let stream = pod.connect("198.18.0.3:15008".parse().unwrap(), Some(PROXY_MARK)).await?;
/// # drop(stream);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NetnsWorker {
    tx: mpsc::Sender<Job>,
    netns: Arc<str>,
    /// The namespace's ephemeral ports, read when the worker started.
    ports: Arc<SourcePorts>,
}

impl fmt::Debug for NetnsWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetnsWorker")
            .field("netns", &self.netns)
            .finish()
    }
}

impl NetnsWorker {
    /// Starts the worker thread and waits until it entered `netns`.
    pub fn spawn(netns: &Netns) -> io::Result<NetnsWorker> {
        let ns = netns.try_clone()?;
        let name: Arc<str> = netns.path.display().to_string().into();
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<io::Result<SourcePorts>>(1);
        std::thread::Builder::new()
            .name("weir-netns".into())
            .spawn(move || {
                let entered = ns
                    .enter_current_thread()
                    .map(|()| SourcePorts::of_current_netns());
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                drop(ns);
                if !ok {
                    return;
                }
                // Serve until every `NetnsWorker` clone is dropped.
                while let Ok(job) = rx.recv() {
                    // A panicking job only loses its own reply (the caller sees
                    // "worker stopped"); the worker keeps serving.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })?;
        let ports = ready_rx
            .recv()
            .map_err(|_| io::Error::other("netns worker thread exited during start-up"))??;
        tracing::debug!(netns = %name, ?ports, "netns worker started");
        Ok(NetnsWorker {
            tx,
            netns: name,
            ports: Arc::new(ports),
        })
    }

    /// The namespace path the worker serves (for messages).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    fn stopped(&self) -> io::Error {
        io::Error::other(format!(
            "netns worker for {} stopped (a request panicked or the thread died)",
            self.netns
        ))
    }

    /// Runs `f` on the worker thread (inside the namespace) and blocks the
    /// calling thread until it returns. From async code use [`Self::run_async`].
    pub fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        self.tx
            .send(Box::new(move || {
                let _ = reply_tx.send(f());
            }))
            .map_err(|_| self.stopped())?;
        reply_rx.recv().map_err(|_| self.stopped())
    }

    /// Runs `f` on the worker thread (inside the namespace) and awaits the
    /// result without blocking the runtime.
    pub async fn run_async<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Box::new(move || {
                let _ = reply_tx.send(f());
            }))
            .map_err(|_| self.stopped())?;
        reply_rx.await.map_err(|_| self.stopped())
    }

    /// A nonblocking TCP listener on `addr` in the namespace (SO_REUSEADDR,
    /// backlog 1024). Blocks for the round trip to the worker.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        let netns = self.netns.clone();
        self.run(move || new_listener(addr, &netns))?
    }

    /// A nonblocking, unconnected TCP socket in the namespace, with
    /// TCP_NODELAY and, if given, SO_MARK. Blocks for the round trip.
    pub fn socket(&self, domain: Domain, mark: Option<u32>) -> io::Result<Socket> {
        self.run(move || new_socket(domain, mark))?
    }

    /// Async [`Self::listen`], registered with the current tokio runtime.
    pub async fn bind_listener(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        let netns = self.netns.clone();
        let listener = self.run_async(move || new_listener(addr, &netns)).await??;
        tokio::net::TcpListener::from_std(listener)
    }

    /// Async [`Self::socket`] as a tokio socket, ready for `connect`.
    pub async fn tcp_socket(
        &self,
        domain: Domain,
        mark: Option<u32>,
    ) -> io::Result<tokio::net::TcpSocket> {
        let sock = self.run_async(move || new_socket(domain, mark)).await??;
        Ok(tokio::net::TcpSocket::from_std_stream(sock.into()))
    }

    /// Connects to `dst` from inside the namespace. With `mark` set to the
    /// proxy mark the connection bypasses the pod's capture rules.
    pub async fn connect(
        &self,
        dst: SocketAddr,
        mark: Option<u32>,
    ) -> io::Result<tokio::net::TcpStream> {
        self.tcp_socket(Domain::for_address(dst), mark)
            .await?
            .connect(dst)
            .await
    }

    /// Connects to `dst` from inside the namespace *as* `source`: the socket
    /// is transparent (`IP_TRANSPARENT`, needs CAP_NET_ADMIN) and bound to
    /// `source` with a port of the namespace's ephemeral range (none of its
    /// `ip_local_reserved_ports`), never `avoid_port` (the client's own, whose redirected connection conntrack
    /// still holds with the same addresses). The replies only reach this
    /// socket if the namespace routes them back (see
    /// `CaptureRules::install_source_routing`).
    ///
    /// The port is drawn at random and bound with `SO_REUSEADDR`, and
    /// another is tried if that one is taken for `dst`: a `bind` to port 0
    /// would make the kernel search the whole range for a port no socket
    /// holds, for every connection, which with tens of thousands of sockets
    /// in TIME_WAIT takes milliseconds of CPU each (connection rates fell to
    /// a few hundred per second). Sharing a port between connections to
    /// different destinations is what `connect` does by itself; the 4-tuple
    /// stays unique because `connect` refuses one in use (`EADDRNOTAVAIL`).
    pub async fn connect_as(
        &self,
        dst: SocketAddr,
        mark: Option<u32>,
        source: IpAddr,
        avoid_port: u16,
    ) -> io::Result<tokio::net::TcpStream> {
        for attempt in 0..=SOURCE_PORT_ATTEMPTS {
            let sock = self
                .run_async(move || new_socket(Domain::for_address(dst), mark))
                .await??;
            if source.is_ipv4() {
                sock.set_ip_transparent_v4(true)?;
            } else {
                sock.set_ip_transparent_v6(true)?;
            }
            // After the random draws, the kernel's own search: slow with many
            // sockets around, but it finds a port if one is free.
            let port = if attempt < SOURCE_PORT_ATTEMPTS {
                sock.set_reuse_address(true)?;
                self.ports.draw(avoid_port)
            } else {
                0
            };
            match sock.bind(&SocketAddr::new(source, port).into()) {
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                r => r?,
            }
            if port == 0 && sock.local_addr()?.as_socket().map(|a| a.port()) == Some(avoid_port) {
                break;
            }
            match tokio::net::TcpSocket::from_std_stream(sock.into())
                .connect(dst)
                .await
            {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse
                    ) =>
                {
                    continue
                }
                r => return r,
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "no free port on {source} for {dst}: {SOURCE_PORT_ATTEMPTS} random ports of {}-{} and the kernel's own choice were taken",
                self.ports.range.0, self.ports.range.1
            ),
        ))
    }
}

/// The ports a namespace's kernel would pick for outgoing connections: its
/// `ip_local_port_range` without its `ip_local_reserved_ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SourcePorts {
    range: (u16, u16),
    /// Sorted, inclusive ranges.
    reserved: Vec<(u16, u16)>,
}

impl SourcePorts {
    /// Reads the sysctls of the calling thread's namespace (defaults if
    /// they cannot be read).
    fn of_current_netns() -> SourcePorts {
        let read = |path| std::fs::read_to_string(path).ok();
        SourcePorts {
            range: read(PORT_RANGE_SYSCTL)
                .and_then(|s| parse_port_range(&s))
                .unwrap_or(DEFAULT_PORT_RANGE),
            reserved: read(RESERVED_PORTS_SYSCTL)
                .map(|s| parse_port_list(&s))
                .unwrap_or_default(),
        }
    }

    fn is_reserved(&self, port: u16) -> bool {
        self.reserved
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&port))
    }

    /// A random port of the range, not reserved and not `avoid` (after 64
    /// draws that all were, the last one: `bind` then has the last word).
    fn draw(&self, avoid: u16) -> u16 {
        use std::hash::{BuildHasher, RandomState};
        let (lo, hi) = self.range;
        let n = u64::from(hi - lo) + 1;
        let mut port = lo;
        for _ in 0..64 {
            // Each RandomState has fresh keys: a cheap random u64 without a
            // random-number crate.
            let offset = RandomState::new().hash_one(0u8) % n;
            port = lo + u16::try_from(offset).expect("offset < n <= 65535");
            if port != avoid && !self.is_reserved(port) {
                break;
            }
        }
        port
    }
}

/// `ip_local_port_range`'s "low high".
fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    (lo > 0 && lo <= hi).then_some((lo, hi))
}

/// `ip_local_reserved_ports`' "1000,2000-2010" (empty: none); entries that
/// do not parse are left out.
fn parse_port_list(s: &str) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = s
        .trim()
        .split(',')
        .filter_map(|item| {
            let item = item.trim();
            let (lo, hi) = item.split_once('-').unwrap_or((item, item));
            let (lo, hi) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
            (lo <= hi).then_some((lo, hi))
        })
        .collect();
    out.sort_unstable();
    out
}

fn new_socket(domain: Domain, mark: Option<u32>) -> io::Result<Socket> {
    let sock = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    if let Some(mark) = mark {
        sock.set_mark(mark).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot set SO_MARK {mark:#x}: {e} (the proxy needs CAP_NET_ADMIN)"),
            )
        })?;
    }
    sock.set_tcp_nodelay(true)?;
    Ok(sock)
}

fn new_listener(addr: SocketAddr, netns: &str) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())
        .and_then(|()| sock.listen(LISTEN_BACKLOG))
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} in network namespace {netns}: {e}"),
            )
        })?;
    Ok(sock.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_named_rejects_paths() {
        for bad in ["", "a/b", "..", "."] {
            let err = Netns::open_named(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn port_ranges_and_random_ports() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("20000 65535"), Some((20000, 65535)));
        for bad in ["", "1", "60999 32768", "0 10", "a b"] {
            assert_eq!(parse_port_range(bad), None, "{bad:?}");
        }
        assert_eq!(parse_port_list("\n"), vec![]);
        assert_eq!(
            parse_port_list("40005-40006,40001, x,9-8\n"),
            vec![(40001, 40001), (40005, 40006)]
        );
        // The worker read its namespace's sysctls (this one's, here).
        let worker = NetnsWorker::spawn(&Netns::current().unwrap()).unwrap();
        assert_eq!(*worker.ports, SourcePorts::of_current_netns());
        // In range, never the avoided or a reserved port, and spread over
        // the rest.
        let ports = SourcePorts {
            range: (40000, 40009),
            reserved: parse_port_list("40005-40006,40001"),
        };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let p = ports.draw(40003);
            assert!((40000..=40009).contains(&p), "{p}");
            assert!(![40001, 40003, 40005, 40006].contains(&p), "{p}");
            seen.insert(p);
        }
        assert_eq!(seen.len(), 6);
        let single = SourcePorts {
            range: (5000, 5000),
            reserved: vec![],
        };
        assert_eq!(single.draw(5000), 5000);
    }

    /// With every drawn port taken for the destination, the kernel's own
    /// choice still connects (as root: IP_TRANSPARENT needs CAP_NET_ADMIN).
    #[tokio::test]
    async fn connect_as_falls_back_to_the_kernels_port_choice() {
        let mut worker = NetnsWorker::spawn(&Netns::current().unwrap()).unwrap();
        let probe = worker.socket(Domain::IPV4, None).unwrap();
        if probe.set_ip_transparent_v4(true).is_err() {
            eprintln!("skipped: IP_TRANSPARENT needs CAP_NET_ADMIN");
            return;
        }
        let listener = worker
            .bind_listener("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let dst = listener.local_addr().unwrap();
        // One connection holds (127.0.0.1:P -> dst); P is the only port the
        // worker may draw.
        let held = worker.connect(dst, None).await.unwrap();
        let taken = held.local_addr().unwrap().port();
        worker.ports = Arc::new(SourcePorts {
            range: (taken, taken),
            reserved: vec![],
        });
        let (stream, accepted) = tokio::join!(
            worker.connect_as(dst, None, "127.0.0.1".parse().unwrap(), 0),
            async {
                let _first = listener.accept().await.unwrap();
                listener.accept().await.unwrap()
            }
        );
        let stream = stream.expect("the kernel's choice connects");
        assert_ne!(stream.local_addr().unwrap().port(), taken);
        assert_eq!(accepted.1, stream.local_addr().unwrap());
        drop(held);
    }

    #[test]
    fn worker_in_current_namespace_creates_sockets() {
        let worker = NetnsWorker::spawn(&Netns::current().unwrap()).unwrap();
        let listener = worker.listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let sock = worker.socket(Domain::IPV4, None).unwrap();
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.nonblocking().unwrap());
        // Nonblocking connect: EINPROGRESS is expected.
        match sock.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => panic!("connect: {e}"),
        }
        // A panicking job does not kill the worker.
        assert!(worker.run::<(), _>(|| panic!("boom")).is_err());
        assert_eq!(worker.run(|| 7).unwrap(), 7);
    }

    #[tokio::test]
    async fn async_round_trip() {
        let worker = NetnsWorker::spawn(&Netns::current().unwrap()).unwrap();
        let listener = worker
            .bind_listener("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(worker.connect(addr, None), listener.accept());
        let client = client.unwrap();
        let (server, peer) = accepted.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert_eq!(server.local_addr().unwrap(), addr);
    }
}
