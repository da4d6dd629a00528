//! `weir control` (runtime, logging, signals around `weir_control::run`), and
//! the `--control` wiring of `weir node`: the control-plane client, the
//! identity manager that signs through it, and the pushed config.

use std::process::ExitCode;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};
use weir_control::metrics::ClientMetrics;
use weir_control::{ClientOptions, ControlClient, ControlOptions};
use weir_core::MeshSettings;
use weir_identity::{IdentityManager, TlsMetrics};
use weir_node::NodeSources;

use crate::cli::{ControlArgs, ControlClientArgs, GatewayArgs, NodeArgs};
use crate::node::init_logging;

pub fn run(args: ControlArgs) -> ExitCode {
    init_logging(args.log_format);
    let settings = match args.mesh.settings() {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = args.check() {
        error!("{e}");
        return ExitCode::from(2);
    }
    let mut options = ControlOptions::new(args.config.clone());
    options.settings = settings;
    options.listen = args.listen;
    options.metrics_addr = args.metrics_addr;
    options.state_dir = args.ca.state_dir.clone();
    options.ca_files = args.ca.files();
    options.node_tokens = args.node_tokens.clone();
    options.sans = args.sans.clone();
    options.cert_ttl = args.cert_ttl;
    options.reload_interval = args.reload_interval;

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weir-control")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let shutdown = async {
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
            }
        };
        if args.kubernetes {
            run_kubernetes(options, &args, shutdown).await
        } else {
            weir_control::run(options, shutdown).await
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `weir control --kubernetes`: the cluster as the config source and
/// TokenReview as the node authenticator.
async fn run_kubernetes(
    options: ControlOptions,
    args: &ControlArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), weir_control::Error> {
    use weir_kube::{
        ClusterAuthenticator, KubeAuthenticator, KubeConfigSource, KubeMetrics, KubeSourceOptions,
        ServiceAccountRef, TokenReviewer,
    };
    let client = kube::Client::try_default().await.map_err(|e| {
        weir_control::Error::Setup(format!(
            "cannot reach the Kubernetes API (in-cluster service account or KUBECONFIG): {e}"
        ))
    })?;
    let accounts = |v: &[String]| -> Vec<ServiceAccountRef> {
        v.iter()
            .filter_map(|s| ServiceAccountRef::parse(s))
            .collect()
    };
    let audiences: Vec<String> = args
        .token_audiences
        .iter()
        .filter(|a| !a.is_empty())
        .cloned()
        .collect();
    let auth = KubeAuthenticator::new(
        ClusterAuthenticator::new(
            TokenReviewer::new(client.clone(), audiences),
            accounts(&args.node_service_accounts),
            accounts(&args.gateway_service_accounts),
        ),
        options.settings.trust_domain.clone(),
    );
    let source = KubeConfigSource::start(
        client,
        KubeSourceOptions {
            settings: options.settings.clone(),
            ..KubeSourceOptions::default()
        },
        KubeMetrics::default(),
    );
    weir_control::server::run_with(options, Box::new(source), Arc::new(auth), shutdown).await
}

/// What `weir node --control` runs with: config pushed by the control plane,
/// certificates signed by it from CSRs, and the client's metrics next to the
/// node's. Must be called inside the runtime (it starts the config stream).
pub fn node_sources(
    args: &NodeArgs,
    address: &str,
    settings: &MeshSettings,
) -> Result<NodeSources, String> {
    let c = connect(
        address,
        &args.node,
        weir_control::Role::Node,
        &args.proxy.control,
        args.proxy.cert_ttl,
        settings,
    )?;
    Ok(NodeSources {
        registry: c.registry,
        identity: Some(c.identity),
        config: Some(c.config),
    })
}

/// What `weir gateway --control` runs with (the gateway role: the whole
/// config, and the identities registered for it).
pub fn gateway_sources(
    args: &GatewayArgs,
    address: &str,
    settings: &MeshSettings,
) -> Result<weir_gateway::GatewaySources, String> {
    let c = connect(
        address,
        &args.gateway_name,
        weir_control::Role::Gateway,
        &args.proxy.control,
        args.proxy.cert_ttl,
        settings,
    )?;
    Ok(weir_gateway::GatewaySources {
        registry: Some(c.registry),
        identity: Some(c.identity),
        config: Some(c.config),
    })
}

struct Connected {
    registry: prometheus_client::registry::Registry,
    identity: Arc<IdentityManager>,
    config: tokio::sync::watch::Receiver<Option<Arc<weir_core::Config>>>,
}

/// A control-plane client for `name` in `role`, an identity manager signing
/// through it, and the pushed config stream.
fn connect(
    address: &str,
    name: &str,
    role: weir_control::Role,
    control: &ControlClientArgs,
    cert_ttl: std::time::Duration,
    settings: &MeshSettings,
) -> Result<Connected, String> {
    let token_file = control.control_token_file.as_deref().ok_or(
        "--control needs --control-token-file: the file holding this proxy's bootstrap token",
    )?;
    let token = std::fs::read_to_string(token_file)
        .map_err(|e| format!("--control-token-file {}: {e}", token_file.display()))?
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(format!(
            "--control-token-file {}: the file is empty",
            token_file.display()
        ));
    }
    let root_file = control.control_ca.as_deref().ok_or(
        "--control needs --control-ca: the PEM file of the mesh root (the control plane's ca-cert.pem)",
    )?;
    let root = CertificateDer::from_pem_file(root_file).map_err(|e| {
        format!(
            "--control-ca {}: no PEM certificate ({e}); pass the mesh root the control plane signs with",
            root_file.display()
        )
    })?;

    let mut registry = prometheus_client::registry::Registry::default();
    let client_metrics = ClientMetrics::register(&mut registry);
    let tls_metrics = TlsMetrics::register(&mut registry);
    let mut options = ClientOptions::new(address, name, token, root.clone(), settings.clone());
    options.role = role;
    // Re-read before every call: a projected ServiceAccount token is
    // rotated by the kubelet long before the proxy restarts.
    options.token_file = Some(token_file.to_owned());
    let client = ControlClient::new(options, client_metrics).map_err(|e| e.to_string())?;
    let identity = IdentityManager::with_remote_signer(
        root,
        settings.trust_domain.clone(),
        cert_ttl,
        tls_metrics,
        client.clone(),
    )
    .map_err(|e| format!("identity: {e}"))?;
    let (config, _task) = client.spawn_config_watch();
    Ok(Connected {
        registry,
        identity: Arc::new(identity),
        config,
    })
}
