//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use weir_core::config::DEFAULT_ROOT_NAMESPACE;
use weir_core::spiffe::DEFAULT_TRUST_DOMAIN;
use weir_core::{MeshSettings, TrustDomain};

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "weir: a zero-trust ambient service mesh for event streaming",
    long_about = "weir secures Kafka and other event-streaming workloads with mutual TLS \
                  (HBONE tunnels between per-node proxies), SPIFFE identities and Istio's \
                  PeerAuthentication and AuthorizationPolicy, with no sidecar and no change \
                  to the application."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate configuration files; print a summary per kind, or every error
    /// with its file, document and field.
    #[command(after_long_help = CHECK_AFTER_HELP)]
    Check(CheckArgs),
    /// Explain the decision for one connection: allow or deny, the effective
    /// mTLS mode, and the policy that decided. With --topic, --group,
    /// --transactional-id or --cluster and --operation: the decision for one
    /// Kafka request at a KafkaGateway.
    #[command(after_long_help = EXPLAIN_AFTER_HELP)]
    Explain(ExplainArgs),
    /// Run the per-node L4 proxy (ztunnel's role) for the Workloads on a node.
    Node(Box<NodeArgs>),
    /// Run a TLS/SNI ingress gateway (Istio's ingress gateway role) for the
    /// Gateways whose spec.selector matches --labels.
    Gateway(Box<GatewayArgs>),
    /// Run the control plane (istiod's role): the mesh CA, signing node
    /// proxies' certificate requests for their own workloads only, and the
    /// config, pushed to every node proxy as a snapshot then deltas.
    Control(Box<ControlArgs>),
    /// Print the CustomResourceDefinitions of weir's own kinds (Workload,
    /// Service, KafkaGateway, KafkaAuthorizationPolicy) as YAML, generated
    /// from weir's types: `weir crds | kubectl apply -f -`.
    Crds,
    /// Run the whole mesh on this machine (needs root, Linux): network-namespace
    /// pods on a bridge, two node proxies, a real Kafka-protocol broker and
    /// real clients, with checks of mTLS, policy and metrics.
    #[command(after_long_help = DEMO_AFTER_HELP)]
    Demo(DemoArgs),
}

const DEMO_AFTER_HELP: &str = "\
What it does:
  1. finds or installs what it needs: iproute2, iptables, tcpdump and pip (apt-get),
     the Python Kafka clients confluent-kafka and kafka-python (pip), and the Tansu
     broker (cargo install, about 12 minutes on 2 cores, once; --broker mock needs no
     build); with --no-install it only says what is missing
  2. builds pods out of network namespaces (weir-demo-*) on a bridge, 198.18.0.0/15:
     kafka/kafka-0 (the broker), apps/producer, apps/consumer, apps/intruder, and
     monitoring, which is outside the mesh
  3. writes Istio policies to /tmp/weir-demo/config: namespace kafka STRICT mTLS,
     port 9404 (broker metrics) PERMISSIVE, only apps/producer and apps/consumer
     allowed to 9092
  4. starts two node proxies (`weir node --node node-a`, `node-b`)
  5. starts the broker in kafka-0
  6. checks: records produced and consumed through HBONE mTLS (counts match),
     nothing in clear text on the wire, plaintext refused on 9092 but admitted on
     9404, the intruder's service account denied
  7. shows the node proxies' connection metrics, then a summary table

Everything it creates is removed when it exits, also on Ctrl-C, SIGTERM, SIGHUP
or a failure. `weir demo --cleanup` stops a running demo and removes what a killed
one left behind.

Exit status: 0 every check passed; 1 a check failed or the setup failed; 2 this
machine cannot run it (what is missing is explained); 128+N stopped by signal N
(130 for Ctrl-C).

Examples:
  sudo weir demo
  sudo weir demo --broker mock --messages 10000
  sudo weir demo --keep        # explore it; Ctrl-C (or weir demo --cleanup) removes it";

/// Which Kafka-protocol broker `weir demo` runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum DemoBroker {
    /// Tansu, a Kafka-compatible broker (built once with cargo if missing).
    #[default]
    Tansu,
    /// librdkafka's mock cluster (from confluent-kafka): nothing to build.
    Mock,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The broker to run in the kafka-0 pod.
    #[arg(long, value_enum, default_value_t)]
    pub broker: DemoBroker,
    /// How many records the producer sends and the consumer must read back.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub messages: u32,
    /// Keep everything running after the checks, print how to reach each
    /// piece, and clean up on Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// Do not install missing prerequisites (apt-get, pip, cargo); explain
    /// what is missing instead.
    #[arg(long)]
    pub no_install: bool,
    /// Do not run the demo: stop a running one (e.g. `--keep` in another
    /// terminal) and remove what a killed one left behind (namespaces,
    /// processes, /tmp/weir-demo), then exit.
    #[arg(long, conflicts_with_all = ["broker", "messages", "keep", "no_install"])]
    pub cleanup: bool,
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Parses durations like `500ms`, `30s`, `5m`, `24h`, `1d`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 30s, 5m, 24h)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    if secs > MAX_DURATION_SECS {
        return Err(format!("{s:?} is too long (at most 3650d)"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// An `IP:PORT` listen address, with a message that shows the form.
pub fn parse_socket_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("{s:?} is not IP:PORT (e.g. 127.0.0.1:15020, 0.0.0.0:15020 or [::1]:15020; host names are not resolved)")
    })
}

/// The longest duration a flag takes: ten years (longer ones would overflow
/// the clocks they are added to).
const MAX_DURATION_SECS: f64 = 3650.0 * 86400.0;

/// [`parse_duration`] for a flag that must be more than zero (an interval,
/// a timeout, a certificate lifetime).
pub fn parse_positive_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than 0"));
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// This node's name: the proxy serves Workloads whose spec.node equals it.
    #[arg(long, env = "WEIR_NODE_NAME", value_parser = parse_node_name)]
    pub node: String,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Do not install iptables capture rules (listeners only; for debugging).
    #[arg(long)]
    pub no_capture: bool,
    /// Connect to the app from the pod's own address instead of the
    /// client's. By default, as Istio's ztunnel, the app sees the real
    /// caller's address (an IP_TRANSPARENT socket; the pod gets mangle
    /// rules and a policy route, table 100, that return the replies).
    #[arg(long)]
    pub no_preserve_source_ip: bool,
    /// The host's /proc. A Workload made from a Pod (annotation
    /// weir.dev/pod-uid, set by `weir control --kubernetes`) is served in the
    /// network namespace of the Pod's processes, found here by the Pod UID in
    /// their cgroup paths; other Workloads in /var/run/netns/<spec.netns>.
    #[arg(
        long,
        env = "WEIR_PROC_ROOT",
        default_value = "/proc",
        value_name = "DIR"
    )]
    pub proc_root: PathBuf,
}

/// The flags `weir node` and `weir gateway` share. The config comes from
/// files (--config) or from the control plane (--control): one of the two
/// is required, and the error names both.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["config", "control"])))]
pub struct ProxyArgs {
    /// Files or directories of YAML (or JSON) documents; re-read every
    /// --reload-interval and on SIGHUP. An invalid change is refused and the
    /// last good config stays. Or --control, to get the config from `weir control`.
    #[arg(long, conflicts_with = "control", num_args = 1.., value_name = "PATH")]
    pub config: Vec<PathBuf>,
    #[command(flatten)]
    pub control: ControlClientArgs,
    #[command(flatten)]
    pub ca: CaArgs,
    /// Lifetime of the certificates the proxy holds (a node's workload
    /// certificates, a gateway's own); they are renewed at half-life.
    #[arg(long, default_value = "24h", value_parser = parse_positive_duration)]
    pub cert_ttl: std::time::Duration,
    #[command(flatten)]
    pub admin: AdminArgs,
    /// How often the config paths (and a gateway's certificate files) are re-read.
    #[arg(long, default_value = "1s", value_parser = parse_positive_duration)]
    pub reload_interval: std::time::Duration,
    /// On shutdown, how long open connections may finish.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: std::time::Duration,
    /// Bound on connecting to a destination: a workload's port, a
    /// passthrough destination, a gateway's upstream (TCP, HBONE, DNS).
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub connect_timeout: std::time::Duration,
    /// Log format on stderr; RUST_LOG filters (default info).
    #[arg(long, value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Worker threads of the async runtime (default: one per core).
    #[arg(long, env = "WEIR_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// HBONE: at most this many tunnels share one HTTP/2 connection to a
    /// destination; the next one opens another connection (as ztunnel).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000), value_name = "N")]
    pub hbone_max_streams: u32,
    /// HBONE: busy tunnels to one destination are spread over up to this
    /// many connections (TLS sessions, each driven on one core) before they
    /// share one [default: the number of cores, at most 4]. 1 shares one
    /// connection up to --hbone-max-streams, as ztunnel does.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64), value_name = "N")]
    pub hbone_parallel_connections: Option<u32>,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

impl ProxyArgs {
    /// The options these flags set; `settings` are the mesh settings of
    /// the --trust-domain and --root-namespace flags, already checked.
    pub fn options(&self, settings: weir_core::MeshSettings) -> weir_node::ProxyOptions {
        weir_node::ProxyOptions {
            config_paths: self.config.clone(),
            settings,
            state_dir: self.ca.state_dir.clone(),
            ca_files: self.ca.files(),
            cert_ttl: self.cert_ttl,
            admin_addr: self.admin.admin_addr,
            metrics_addr: self.admin.metrics_addr,
            readiness_addr: self.admin.readiness_addr,
            reload_interval: self.reload_interval,
            drain_timeout: self.drain_timeout,
            connect_timeout: self.connect_timeout,
            hbone_max_streams: self.hbone_max_streams as usize,
            hbone_parallel_connections: self.hbone_parallel_connections.map_or_else(
                || weir_hbone::PoolConfig::default().parallel_connections,
                |n| n as usize,
            ),
        }
    }
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Files or directories of YAML documents; re-read every
    /// --reload-interval. An invalid change is refused and the last good
    /// config stays in force.
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes",
        num_args = 1..,
        value_name = "PATH"
    )]
    pub config: Vec<PathBuf>,
    /// Cluster mode: read Namespaces, Pods, Services, the Istio kinds and
    /// weir's CRDs from the Kubernetes API (in-cluster service account or
    /// KUBECONFIG) instead of --config, and authenticate node proxies and
    /// gateways by their ServiceAccount tokens (TokenReview) instead of
    /// --node-tokens. Invalid resources are skipped, logged and counted.
    #[arg(long, conflicts_with = "node_tokens")]
    pub kubernetes: bool,
    /// Cluster mode: the audience node-proxy and gateway tokens must be
    /// bound to (repeatable): the audience of their projected tokens (the
    /// chart's control.tokenAudience). `--token-audience=` (empty): the API
    /// server's own audiences instead.
    #[arg(
        long = "token-audience",
        conflicts_with = "config",
        value_name = "AUDIENCE",
        default_value = weir_kube::token_review::DEFAULT_AUDIENCE
    )]
    pub token_audiences: Vec<String>,
    /// Cluster mode: a ServiceAccount (namespace/name) node proxies run as
    /// (repeatable; at least one). A token of any other account is refused.
    #[arg(long = "node-service-account", conflicts_with = "config", required_if_eq("kubernetes", "true"), value_name = "NS/NAME", value_parser = parse_service_account)]
    pub node_service_accounts: Vec<String>,
    /// Cluster mode: a ServiceAccount (namespace/name) gateways run as
    /// (repeatable); a gateway may have its own identity signed.
    #[arg(long = "gateway-service-account", conflicts_with = "config", value_name = "NS/NAME", value_parser = parse_service_account)]
    pub gateway_service_accounts: Vec<String>,
    /// The gRPC endpoint for node proxies and gateways (CA and config).
    #[arg(long, env = "WEIR_CONTROL_LISTEN", default_value = "0.0.0.0:15012", value_parser = parse_socket_addr)]
    pub listen: std::net::SocketAddr,
    /// /metrics, /healthz/ready and /version.
    #[arg(long, env = "WEIR_METRICS_ADDR", default_value = "0.0.0.0:15014", value_parser = parse_socket_addr)]
    pub metrics_addr: std::net::SocketAddr,
    /// YAML file of the nodes' (and gateways') bootstrap tokens:
    /// `nodes: {NODE: TOKEN}`, `gateways: {NAME: {token: TOKEN, identities: [SPIFFE-ID]}}`.
    #[arg(
        long,
        env = "WEIR_NODE_TOKENS",
        value_name = "FILE",
        required_unless_present = "kubernetes"
    )]
    pub node_tokens: Option<PathBuf>,
    #[command(flatten)]
    pub ca: CaArgs,
    /// A DNS name or IP address for the control plane's serving certificate,
    /// besides its SPIFFE id (repeatable).
    #[arg(long = "san", value_name = "NAME|IP", value_parser = parse_san)]
    pub sans: Vec<String>,
    /// Longest lifetime of the workload certificates it signs (and the default).
    #[arg(long, default_value = "24h", value_parser = parse_positive_duration)]
    pub cert_ttl: std::time::Duration,
    /// How often the config paths are re-read.
    #[arg(long, default_value = "1s", value_parser = parse_positive_duration)]
    pub reload_interval: std::time::Duration,
    /// Log format on stderr; RUST_LOG filters (default info).
    #[arg(long, value_enum, default_value_t)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

/// `namespace/name` of a ServiceAccount.
/// A subject alternative name for a serving certificate: an IP address or
/// a DNS name (a leading `*.` allowed).
pub fn parse_san(s: &str) -> Result<String, String> {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Ok(s.to_owned());
    }
    let name = s.strip_prefix("*.").unwrap_or(s).to_ascii_lowercase();
    parse_node_name(&name).map(|_| s.to_owned()).map_err(|_| {
        format!("{s:?} is neither an IP address nor a DNS name (letters, digits, '-' and '.'; a leading *. allowed)")
    })
}

/// A node name, as Kubernetes names nodes (a DNS subdomain).
pub fn parse_node_name(s: &str) -> Result<String, String> {
    let ok = weir_core::config::is_dns_subdomain(s);
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a node name (a Kubernetes node name: lower-case letters, digits, '-' and '.')"
        ))
    }
}

/// A Kubernetes namespace or service-account name as a SPIFFE path
/// segment: a DNS label (lower-case letters, digits, '-'; at most 63).
pub fn parse_dns_label(s: &str) -> Result<String, String> {
    let ok = weir_core::config::is_dns_label(s);
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a DNS label (lower-case letters, digits and '-', at most 63, not starting or ending with '-')"
        ))
    }
}

pub fn parse_service_account(s: &str) -> Result<String, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(s.to_owned())
        }
        _ => Err(format!(
            "{s:?} is not a ServiceAccount as namespace/name (e.g. weir-system/weir-node)"
        )),
    }
}

/// Parses `k=v,k2=v2` into labels; keys and values must be Kubernetes
/// label keys and values (a selector could never match anything else).
pub fn parse_labels(s: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut out = std::collections::BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            format!("{part:?} is not a label: use key=value, comma-separated (e.g. istio=ingressgateway)")
        })?;
        label_key(k).map_err(|e| format!("{part:?}: label key {k:?} {e}"))?;
        label_value(v).map_err(|e| format!("{part:?}: label value {v:?} {e}"))?;
        if out.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(format!("{part:?}: label key {k:?} given twice"));
        }
    }
    Ok(out)
}

/// A Kubernetes label name (the part after an optional `prefix/`, and a
/// non-empty value): at most 63 characters, letters, digits, `-`, `_` and
/// `.`, beginning and ending with a letter or digit.
fn label_name(s: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if s.is_empty() {
        return Err("is empty".to_owned());
    }
    if s.len() > 63 {
        return Err("is longer than 63 characters".to_owned());
    }
    if let Some(c) = s.chars().find(|c| !ok_char(*c)) {
        return Err(format!(
            "has {c:?}: only letters, digits, '-', '_' and '.' are allowed (no spaces around '=' or ',')"
        ));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !s.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err("must begin and end with a letter or digit".to_owned());
    }
    Ok(())
}

/// A Kubernetes label key: `name` or `prefix/name`, the prefix a DNS
/// subdomain (lower case, at most 253 characters).
fn label_key(k: &str) -> Result<(), String> {
    let name = match k.rsplit_once('/') {
        Some((prefix, name)) => {
            let dns_label = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            if prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(dns_label) {
                return Err(format!(
                    "has prefix {prefix:?}, which is not a DNS subdomain (e.g. cloud.streamnative.io)"
                ));
            }
            name
        }
        None => k,
    };
    label_name(name)
}

/// A Kubernetes label value: empty, or as a label name.
fn label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        Ok(())
    } else {
        label_name(v)
    }
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// The name this gateway registers under with --control (its entry
    /// under `gateways:` in the token file).
    #[arg(long, env = "WEIR_GATEWAY_NAME", default_value = "ingress")]
    pub gateway_name: String,
    /// This gateway's labels (Istio's gateway pod labels): it serves the
    /// Gateways whose spec.selector they match.
    #[arg(long, env = "WEIR_GATEWAY_LABELS", default_value = "istio=ingressgateway", value_parser = parse_labels, value_name = "K=V,...")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The gateway's namespace (its SPIFFE identity spiffe://<td>/ns/<namespace>/sa/<service-account>).
    #[arg(long, env = "WEIR_GATEWAY_NAMESPACE", default_value = "istio-system", value_parser = parse_dns_label)]
    pub namespace: String,
    /// The gateway's service account (its SPIFFE identity).
    #[arg(
        long,
        env = "WEIR_GATEWAY_SERVICE_ACCOUNT",
        default_value = "weir-gateway",
        value_parser = parse_dns_label
    )]
    pub service_account: String,
    /// Address the Gateway servers' ports are opened on.
    #[arg(long, env = "WEIR_GATEWAY_LISTEN_ADDRESS", default_value = "0.0.0.0")]
    pub listen_address: std::net::IpAddr,
    /// Bound on a client's ClientHello and on a terminated TLS handshake.
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub client_hello_timeout: std::time::Duration,
}

/// The control plane a node proxy or gateway gets its config and
/// certificates from, instead of --config files and a local CA.
#[derive(Debug, Args)]
pub struct ControlClientArgs {
    /// Get config and certificates from the control plane at HOST:PORT
    /// (`weir control`) instead of --config files and a local CA. While it is
    /// unreachable the proxy keeps serving with what it has and reconnects.
    #[arg(
        long = "control",
        id = "control",
        env = "WEIR_CONTROL",
        value_name = "HOST:PORT",
        value_parser = parse_control_address,
        requires_all = ["control_token_file", "control_ca"]
    )]
    pub address: Option<String>,
    /// File holding the token presented to --control: in local mode this
    /// node's bootstrap token, or this gateway's entry under `gateways:` in
    /// the control plane's --node-tokens file; in a cluster the projected
    /// ServiceAccount token. Read again before each call, so a rotated
    /// token is used without a restart.
    #[arg(
        long,
        env = "WEIR_CONTROL_TOKEN_FILE",
        requires = "control",
        value_name = "FILE"
    )]
    pub control_token_file: Option<PathBuf>,
    /// PEM file of the mesh root: the control plane's certificate must chain
    /// to it, and so must every peer's (Istio's istio-ca-root-cert).
    #[arg(
        long,
        env = "WEIR_CONTROL_CA",
        requires = "control",
        value_name = "PEM"
    )]
    pub control_ca: Option<PathBuf>,
}

/// `--control`: `HOST:PORT`, HOST a DNS name, an IPv4 address or a
/// bracketed IPv6 address, PORT 1-65535 (istiod's is 15012). Checked when
/// the proxy starts: a typo would otherwise only show as a connection that
/// never comes up.
pub fn parse_control_address(s: &str) -> Result<String, String> {
    let example = "e.g. weir-control.weir-system.svc:15012 or 198.18.0.1:15012";
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} has no port: use HOST:PORT ({example})"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => {
            return Err(format!(
                "{s:?}: port {port:?} is not a number from 1 to 65535 ({example})"
            ))
        }
    }
    let valid_host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        host.parse::<std::net::Ipv4Addr>().is_ok()
            || (!host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                }))
    };
    if !valid_host {
        return Err(format!(
            "{s:?}: {host:?} is not a host name or IP address (an IPv6 address goes in brackets: [fd00::1]:15012)"
        ));
    }
    Ok(s.to_owned())
}

/// Where the mesh CA comes from (node proxy, gateway and control plane).
#[derive(Debug, Args)]
pub struct CaArgs {
    /// Directory holding the mesh CA (ca-cert.pem, ca-key.pem), created on first use.
    #[arg(long, env = "WEIR_STATE_DIR", default_value = "/var/lib/weir")]
    pub state_dir: PathBuf,
    /// PEM file of the mesh root CA certificate (instead of --state-dir).
    #[arg(long, requires = "ca_key", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// PEM file of the mesh root CA's private key, PKCS#8 ("BEGIN PRIVATE
    /// KEY"; `openssl pkcs8 -topk8 -nocrypt` converts others). The CA weir
    /// creates itself uses P-256; an RSA key works too.
    #[arg(long, requires = "ca_cert", value_name = "PEM")]
    pub ca_key: Option<PathBuf>,
}

impl CaArgs {
    /// `--ca-cert` and `--ca-key`, when both are given.
    pub fn files(&self) -> Option<(PathBuf, PathBuf)> {
        self.ca_cert.clone().zip(self.ca_key.clone())
    }
}

impl AdminArgs {
    /// The three endpoints need three addresses: two on one would fail to
    /// bind with an 'address in use' that seems to blame another program.
    pub fn check(&self) -> Result<(), String> {
        distinct_addresses(&[
            ("--admin-addr", self.admin_addr),
            ("--metrics-addr", self.metrics_addr),
            ("--readiness-addr", self.readiness_addr),
        ])
    }
}

impl ControlArgs {
    /// The gRPC and monitoring endpoints need two addresses (as
    /// [`AdminArgs::check`]).
    pub fn check(&self) -> Result<(), String> {
        distinct_addresses(&[
            ("--listen", self.listen),
            ("--metrics-addr", self.metrics_addr),
        ])
    }
}

/// Endpoints that each need an address of their own: two on one port would
/// fail to bind with an 'address in use' that seems to blame another
/// program. Port 0 binds any free port (twice is fine); an unspecified
/// address (0.0.0.0) clashes with every address on its port.
fn distinct_addresses(named: &[(&str, std::net::SocketAddr)]) -> Result<(), String> {
    let clash = |x: &std::net::SocketAddr, y: &std::net::SocketAddr| {
        x.port() != 0
            && x.port() == y.port()
            && (x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified())
    };
    for (i, (a, x)) in named.iter().enumerate() {
        for (b, y) in &named[i + 1..] {
            if clash(x, y) {
                return Err(format!(
                    "{a} {x} and {b} {y} use the same port: each endpoint needs its own address"
                ));
            }
        }
    }
    Ok(())
}

/// The admin, metrics and readiness endpoints (node proxy and gateway).
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Admin endpoint (/config_dump); keep it on localhost.
    #[arg(long, env = "WEIR_ADMIN_ADDR", default_value = "127.0.0.1:15000", value_parser = parse_socket_addr)]
    pub admin_addr: std::net::SocketAddr,
    /// Prometheus endpoint (/metrics).
    #[arg(long, env = "WEIR_METRICS_ADDR", default_value = "0.0.0.0:15020", value_parser = parse_socket_addr)]
    pub metrics_addr: std::net::SocketAddr,
    /// Readiness endpoint (/healthz/ready).
    #[arg(long, env = "WEIR_READINESS_ADDR", default_value = "0.0.0.0:15021", value_parser = parse_socket_addr)]
    pub readiness_addr: std::net::SocketAddr,
}

/// Settings shared by every command that reads mesh configuration.
#[derive(Debug, Args, Clone)]
pub struct MeshArgs {
    /// SPIFFE trust domain of the mesh.
    #[arg(long, env = "WEIR_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Root namespace: policies there apply mesh-wide (Istio's rootNamespace).
    #[arg(long, env = "WEIR_ROOT_NAMESPACE", default_value = DEFAULT_ROOT_NAMESPACE, value_parser = parse_dns_label)]
    pub root_namespace: String,
}

impl MeshArgs {
    pub fn settings(&self) -> Result<MeshSettings, String> {
        let trust_domain = TrustDomain::new(&self.trust_domain)
            .map_err(|e| format!("--trust-domain {:?}: {e}", self.trust_domain))?;
        Ok(MeshSettings {
            trust_domain,
            root_namespace: self.root_namespace.clone(),
        })
    }
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

const CHECK_AFTER_HELP: &str = "\
Exit status: 0 valid (warnings are printed on stderr), 1 invalid or no documents, 2 bad flags (e.g. --trust-domain, --root-namespace, --output).

Examples:
  weir check examples/kafka-mesh
  kubectl get peerauthentications,authorizationpolicies -A -o yaml | weir check -
  weir check -o json config/ | jq '.errors[] | .field'";

const EXPLAIN_AFTER_HELP: &str = "\
Exit status: 0 when a decision was printed (allow or deny alike), 2 when the question or the config is invalid.

Examples:
  weir explain --config examples/kafka-mesh --from cluster.local/ns/apps/sa/producer --to kafka/kafka-0 --port 9092
  weir explain --config examples/kafka-mesh --from plaintext --source-ip 198.18.0.40 --to kafka/kafka-0 --port 9404 -o json
  weir explain --config examples/kafka-gateway --from 'CN=billing,O=Example' --group billing --operation Read";

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Files or directories of YAML or JSON documents, `-` for standard
    /// input. A directory is read recursively for *.yaml, *.yml and *.json
    /// (hidden entries skipped); a file named is read whatever its name; a
    /// file reached twice is read once.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// `json`: one object with `valid`, `kinds` (documents per kind),
    /// `warnings` and `errors` (each with `file`, `document`, `field`,
    /// `message`).
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// The Kafka resource flags of `weir explain`; one of them selects Kafka mode.
pub const KAFKA_RESOURCE_FLAGS: [&str; 4] = ["topic", "group", "transactional_id", "cluster"];
/// A Kafka question's flags: a resource, or `--operation` (whose missing
/// resource `weir explain` then names itself).
pub const KAFKA_QUESTION_FLAGS: [&str; 5] =
    ["topic", "group", "transactional_id", "cluster", "operation"];

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Files or directories of YAML or JSON documents (as for `weir check`;
    /// `-` for standard input).
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub config: Vec<PathBuf>,
    /// The caller: a SPIFFE id (spiffe://td/ns/x/sa/y), a principal as Istio
    /// writes it (td/ns/x/sa/y), or `plaintext` for a non-mesh client. For a
    /// Kafka question also a certificate subject (CN=app,O=Example) or
    /// `anonymous` (a client without a certificate).
    #[arg(long, value_name = "SPIFFE-ID|PRINCIPAL|SUBJECT|plaintext|anonymous")]
    pub from: String,
    /// The caller's IP address (for ipBlocks and source.ip). Without it the
    /// address is unknown: ipBlocks and source.ip values match nothing,
    /// notIpBlocks and source.ip notValues match anything.
    #[arg(long, value_name = "IP", conflicts_with_all = KAFKA_RESOURCE_FLAGS)]
    pub source_ip: Option<std::net::IpAddr>,
    /// The destination workload (connection questions).
    #[arg(long, value_name = "NAMESPACE/WORKLOAD", required_unless_present_any = KAFKA_QUESTION_FLAGS, conflicts_with_all = KAFKA_QUESTION_FLAGS)]
    pub to: Option<String>,
    /// The destination port (connection questions): the workload's port
    /// (a Service's targetPort), as policies see it.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..), required_unless_present_any = KAFKA_QUESTION_FLAGS, conflicts_with_all = KAFKA_QUESTION_FLAGS)]
    pub port: Option<u16>,
    /// Kafka question: the topic the request is about.
    #[arg(
        long,
        value_name = "NAME",
        group = "kafka_resource",
        requires = "operation"
    )]
    pub topic: Option<String>,
    /// Kafka question: the consumer group the request is about.
    #[arg(
        long,
        value_name = "NAME",
        group = "kafka_resource",
        requires = "operation"
    )]
    pub group: Option<String>,
    /// Kafka question: the transactional id the request is about.
    #[arg(
        long,
        value_name = "NAME",
        group = "kafka_resource",
        requires = "operation"
    )]
    pub transactional_id: Option<String>,
    /// Kafka question: the request is about the cluster resource.
    #[arg(long, group = "kafka_resource", requires = "operation")]
    pub cluster: bool,
    /// Kafka question: the operation (Read, Write, Create, Delete, Alter,
    /// Describe, DescribeConfigs, AlterConfigs, IdempotentWrite; any case).
    /// `All` is refused: Kafka never asks it, it is a wildcard in rules.
    #[arg(long, value_name = "OPERATION", value_parser = parse_kafka_operation)]
    pub operation: Option<weir_core::kafka::Operation>,
    /// Kafka question: the KafkaGateway (needed when there are several).
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "kafka_resource")]
    pub gateway: Option<String>,
    /// Kafka question: a SAN of the client certificate named by --from (repeatable).
    #[arg(long, value_name = "SAN", requires = "kafka_resource")]
    pub san: Vec<String>,
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// `json`: the decision as one object (keys `decision`, `mtls_mode`,
    /// `mtls_policy`, `mtls_port_level`, `policy`, `policy_kind`, `rule`, `reason`, `source`, `destination`;
    /// for a Kafka question `decision`, `gateway`, `principal`, `resource`,
    /// `operation`, `policy`, `rule`, `reason`).
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

fn parse_kafka_operation(s: &str) -> Result<weir_core::kafka::Operation, String> {
    use weir_core::kafka::Operation;
    let op: Operation = s.parse().map_err(|_| {
        let asked: Vec<&str> = Operation::ALL
            .into_iter()
            .filter(|o| *o != Operation::All)
            .map(|o| o.as_str())
            .collect();
        format!(
            "unknown Kafka operation {s:?} (expected one of {})",
            asked.join(", ")
        )
    })?;
    if op == weir_core::kafka::Operation::All {
        return Err(format!(
            "{s:?} is not a question Kafka asks: All is a wildcard in rules (a rule with All covers every operation), and every request is authorized for one operation; ask about that one (Read, Write, Create, Delete, Alter, Describe, DescribeConfigs, AlterConfigs or IdempotentWrite)"
        ));
    }
    Ok(op)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{parse_control_address, parse_duration, parse_labels};

    #[test]
    fn cluster_mode_flags() {
        use clap::Parser;
        let control = |argv: &[&str]| -> Result<Box<super::ControlArgs>, String> {
            let mut all = vec!["weir", "control"];
            all.extend_from_slice(argv);
            match super::Cli::try_parse_from(&all)
                .map_err(|e| e.to_string())?
                .command
            {
                super::Command::Control(c) => Ok(c),
                _ => unreachable!(),
            }
        };
        // Without a node ServiceAccount every node proxy would be refused.
        let e = control(&["--kubernetes"]).unwrap_err();
        assert!(e.contains("--node-service-account"), "{e}");
        let c = control(&[
            "--kubernetes",
            "--node-service-account",
            "weir-system/weir-node",
        ])
        .unwrap();
        // The audience of the chart's projected tokens, unless told otherwise.
        assert_eq!(c.token_audiences, ["weir-control"]);
        let c = control(&[
            "--kubernetes",
            "--node-service-account=weir-system/weir-node",
            "--token-audience=",
        ])
        .unwrap();
        assert_eq!(c.token_audiences, [""]);
        // Local mode needs none of them, and the default audience does not
        // count as a cluster-mode flag.
        let c = control(&["--config", "cfg", "--node-tokens", "t"]).unwrap();
        assert!(c.node_service_accounts.is_empty());
        for flag in [
            "--token-audience=x",
            "--node-service-account=a/b",
            "--gateway-service-account=a/b",
        ] {
            let e = control(&["--config", "cfg", "--node-tokens", "t", flag]).unwrap_err();
            assert!(
                e.contains("'--config <PATH>...' cannot be used with"),
                "{flag}: {e}"
            );
        }
    }

    #[test]
    fn control_addresses_are_host_and_port() {
        for ok in [
            "weir-control.weir-system.svc:15012",
            "198.18.0.1:15012",
            "[fd00::1]:15012",
            "localhost:1",
        ] {
            assert_eq!(parse_control_address(ok).as_deref(), Ok(ok));
        }
        for (bad, why) in [
            ("198.18.0.1", "has no port"),
            ("weir-control", "has no port"),
            ("nohost:abc", "is not a number from 1 to 65535"),
            ("198.18.0.1:0", "is not a number from 1 to 65535"),
            ("198.18.0.1:65536", "is not a number from 1 to 65535"),
            (":15012", "is not a host name or IP address"),
            ("fd00::1:15012", "is not a host name or IP address"),
            (
                "http://weir-control:15012",
                "is not a host name or IP address",
            ),
            ("weir_control:15012", "is not a host name or IP address"),
        ] {
            let e = parse_control_address(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        // Refused when the command line is parsed, naming the flag, for
        // the node proxy and the gateway alike.
        use clap::Parser;
        for cmd in [&["node", "--node", "node-a"][..], &["gateway"][..]] {
            let mut argv = vec!["weir"];
            argv.extend_from_slice(cmd);
            argv.extend_from_slice(&["--control", "198.18.0.1", "--control-token-file", "t"]);
            let e = super::Cli::try_parse_from(&argv).unwrap_err().to_string();
            assert!(e.contains("--control") && e.contains("has no port"), "{e}");
        }
    }

    #[test]
    fn hbone_pool_flags_reach_the_pool() {
        use clap::Parser;
        let node = |extra: &[&str]| -> Result<weir_hbone::PoolConfig, String> {
            let mut argv = vec!["weir", "node", "--node", "node-a", "--config", "cfg"];
            argv.extend_from_slice(extra);
            match super::Cli::try_parse_from(&argv)
                .map_err(|e| e.to_string())?
                .command
            {
                super::Command::Node(n) => Ok(n
                    .proxy
                    .options(weir_core::MeshSettings::default())
                    .pool_config()),
                _ => unreachable!(),
            }
        };
        let d = node(&[]).unwrap();
        let default = weir_hbone::PoolConfig::default();
        assert_eq!(d.max_streams_per_connection, 100);
        assert_eq!(d.parallel_connections, default.parallel_connections);
        assert_eq!(d.connect_timeout, Duration::from_secs(10));
        let c = node(&[
            "--hbone-max-streams=5",
            "--hbone-parallel-connections=1",
            "--connect-timeout=3s",
        ])
        .unwrap();
        assert_eq!(
            (
                c.max_streams_per_connection,
                c.parallel_connections,
                c.connect_timeout
            ),
            (5, 1, Duration::from_secs(3))
        );
        for bad in ["--hbone-max-streams=0", "--hbone-parallel-connections=0"] {
            let e = node(&[bad]).unwrap_err();
            assert!(e.contains("not in 1.."), "{bad}: {e}");
        }
    }

    #[test]
    fn node_names_are_checked() {
        use clap::Parser;
        for bad in ["", "Node A", "node_b"] {
            let e = super::Cli::try_parse_from(["weir", "node", "--config", "c", "--node", bad])
                .unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
            assert!(e.to_string().contains("is not a node name"), "{bad:?}: {e}");
        }
        assert!(super::parse_node_name("ip-10-0-0-1.ec2.internal").is_ok());
    }

    #[test]
    fn gateway_identity_flags_are_dns_labels() {
        use clap::Parser;
        for flag in [
            "--namespace=Bad NS",
            "--service-account=Bad SA",
            "--namespace=-x",
        ] {
            let e =
                super::Cli::try_parse_from(["weir", "gateway", "--config", "c", flag]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{flag}");
            assert!(e.to_string().contains("is not a DNS label"), "{flag}: {e}");
        }
        assert!(super::Cli::try_parse_from([
            "weir",
            "gateway",
            "--config",
            "c",
            "--namespace=kafka-edge",
            "--service-account=gw-1"
        ])
        .is_ok());
    }

    #[test]
    fn control_client_and_local_control_plane_flags_come_together() {
        use clap::Parser;
        for argv in [
            &[
                "weir",
                "node",
                "--node",
                "a",
                "--control",
                "198.18.0.1:15012",
            ][..],
            &[
                "weir",
                "node",
                "--node",
                "a",
                "--control",
                "198.18.0.1:15012",
                "--control-token-file",
                "t",
            ][..],
            &[
                "weir",
                "gateway",
                "--control",
                "198.18.0.1:15012",
                "--control-ca",
                "ca.pem",
            ][..],
            &["weir", "control", "--config", "c"][..],
        ] {
            let e = super::Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{argv:?}: {e}");
            let text = e.to_string();
            assert!(
                text.contains("--control-token-file")
                    || text.contains("--control-ca")
                    || text.contains("--node-tokens"),
                "{argv:?}: {text}"
            );
        }
        assert!(super::Cli::try_parse_from([
            "weir",
            "node",
            "--node",
            "a",
            "--control",
            "198.18.0.1:15012",
            "--control-token-file",
            "t",
            "--control-ca",
            "ca.pem"
        ])
        .is_ok());
    }

    #[test]
    fn control_plane_sans_are_names_or_addresses() {
        for ok in [
            "weir-control.weir-system.svc",
            "198.18.0.1",
            "fd00::1",
            "*.example.com",
            "Control.Example.COM",
        ] {
            assert!(super::parse_san(ok).is_ok(), "{ok}");
        }
        for bad in ["bad name!", "", "a..b", "http://x"] {
            let e = super::parse_san(bad).unwrap_err();
            assert!(
                e.contains("neither an IP address nor a DNS name"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn root_namespace_and_worker_threads_are_checked() {
        use clap::Parser;
        for flag in ["--root-namespace=Bad NS", "--worker-threads=0"] {
            let e =
                super::Cli::try_parse_from(["weir", "node", "--node", "a", "--config", "c", flag])
                    .unwrap_err();
            assert_eq!(e.exit_code(), 2, "{flag}: {e}");
        }
        let e = super::Cli::try_parse_from(["weir", "check", "--root-namespace=Bad NS", "c"])
            .unwrap_err();
        assert!(e.to_string().contains("is not a DNS label"), "{e}");
    }

    #[test]
    fn admin_endpoints_need_their_own_addresses() {
        use clap::Parser;
        let node = |extra: &[&str]| {
            let mut argv = vec!["weir", "node", "--node", "a", "--config", "c"];
            argv.extend_from_slice(extra);
            match super::Cli::try_parse_from(argv).unwrap().command {
                super::Command::Node(n) => n.proxy.admin.check(),
                _ => unreachable!(),
            }
        };
        assert!(node(&[]).is_ok());
        let e = node(&[
            "--admin-addr=127.0.0.1:25000",
            "--metrics-addr=127.0.0.1:25000",
        ])
        .unwrap_err();
        assert!(
            e.contains(
                "--admin-addr 127.0.0.1:25000 and --metrics-addr 127.0.0.1:25000 use the same port"
            ),
            "{e}"
        );
        // 0.0.0.0 clashes with any address on its port; port 0 never does.
        assert!(node(&["--admin-addr=127.0.0.1:15021"]).is_err());
        assert!(node(&[
            "--admin-addr=127.0.0.1:0",
            "--metrics-addr=127.0.0.1:0",
            "--readiness-addr=127.0.0.1:0"
        ])
        .is_ok());

        let control = |extra: &[&str]| {
            let mut argv = vec!["weir", "control", "--config", "c", "--node-tokens", "t"];
            argv.extend_from_slice(extra);
            match super::Cli::try_parse_from(argv).unwrap().command {
                super::Command::Control(c) => c.check(),
                _ => unreachable!(),
            }
        };
        assert!(control(&[]).is_ok());
        let e =
            control(&["--listen=127.0.0.1:25012", "--metrics-addr=127.0.0.1:25012"]).unwrap_err();
        assert!(
            e.contains(
                "--listen 127.0.0.1:25012 and --metrics-addr 127.0.0.1:25012 use the same port"
            ),
            "{e}"
        );
    }

    #[test]
    fn listen_addresses_show_their_form() {
        assert_eq!(
            super::parse_socket_addr("127.0.0.1:15020").unwrap(),
            "127.0.0.1:15020".parse::<std::net::SocketAddr>().unwrap()
        );
        for bad in ["localhost:25001", "127.0.0.1", "15020"] {
            let e = super::parse_socket_addr(bad).unwrap_err();
            assert!(
                e.contains("is not IP:PORT (e.g. 127.0.0.1:15020"),
                "{bad}: {e}"
            );
        }
        use clap::Parser;
        let e = super::Cli::try_parse_from([
            "weir",
            "node",
            "--node",
            "a",
            "--config",
            "c",
            "--metrics-addr",
            "localhost:25001",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--metrics-addr") && e.contains("is not IP:PORT"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5 parsecs").is_err());
        // Too long for the clocks they are added to, and zero where an
        // interval or timeout must be positive: refused, not a panic.
        assert!(parse_duration("99999999999999999999999s")
            .unwrap_err()
            .contains("too long"));
        assert!(parse_duration("999999999999999d").is_err());
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(super::parse_positive_duration("0s")
            .unwrap_err()
            .contains("more than 0"));
        assert!(super::parse_positive_duration("0ms").is_err());
        use clap::Parser;
        for flag in [
            "--reload-interval=0s",
            "--cert-ttl=0s",
            "--connect-timeout=0ms",
        ] {
            let e =
                super::Cli::try_parse_from(["weir", "node", "--node", "a", "--config", "c", flag])
                    .unwrap_err()
                    .to_string();
            assert!(e.contains("must be more than 0"), "{flag}: {e}");
        }
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn labels_must_be_kubernetes_labels() {
        let l = parse_labels(
            "istio=ingressgateway, cloud.streamnative.io/role=istio-ingressgateway,empty=",
        )
        .unwrap();
        assert_eq!(l["istio"], "ingressgateway");
        assert_eq!(l["cloud.streamnative.io/role"], "istio-ingressgateway");
        assert_eq!(l["empty"], "");
        assert!(parse_labels("").unwrap().is_empty());
        for (bad, why) in [
            ("istio = ingressgateway", "label key \"istio \" has ' '"),
            (
                "istio= ingressgateway",
                "label value \" ingressgateway\" has ' '",
            ),
            ("istio", "is not a label: use key=value"),
            ("=x", "label key \"\" is empty"),
            ("-a=b", "must begin and end with a letter or digit"),
            ("a=b_", "must begin and end with a letter or digit"),
            ("Bad.Prefix/a=b", "not a DNS subdomain"),
            ("/a=b", "not a DNS subdomain"),
            ("a=b,a=c", "given twice"),
        ] {
            let e = parse_labels(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(parse_labels(&format!("{}=x", "k".repeat(64)))
            .unwrap_err()
            .contains("longer than 63"));
    }
}
