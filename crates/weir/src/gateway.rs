//! `weir gateway`: runtime, logging and signal wiring around `weir_gateway::run`.

use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

use crate::cli::GatewayArgs;
use crate::node::init_logging;

pub fn run(args: GatewayArgs) -> ExitCode {
    init_logging(args.proxy.log_format);
    let settings = match args.proxy.mesh.settings() {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = args.proxy.admin.check() {
        error!("{e}");
        return ExitCode::from(2);
    }
    let options = weir_gateway::GatewayOptions {
        common: args.proxy.options(settings),
        labels: args.labels.clone(),
        namespace: args.namespace.clone(),
        service_account: args.service_account.clone(),
        listen_address: args.listen_address,
        client_hello_timeout: args.client_hello_timeout,
        // KafkaGateway listeners: Kafka-aware sessions behind terminated TLS.
        extensions: vec![std::sync::Arc::new(
            weir_gateway::kafka::KafkaListeners::new(),
        )],
    };

    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all().thread_name("weir-worker");
    if let Some(n) = args.proxy.worker_threads {
        rt.worker_threads(usize::from(n));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                info!("SIGHUP: reloading config");
                let _ = reload_tx.try_send(());
            }
        });
        let shutdown = async {
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
            }
        };
        let sources = match &args.proxy.control.address {
            Some(address) => {
                match crate::control::gateway_sources(&args, address, &options.common.settings) {
                    Ok(s) => s,
                    Err(e) => {
                        error!("{e}");
                        return Err(None);
                    }
                }
            }
            None => weir_gateway::GatewaySources::default(),
        };
        weir_gateway::run_with(options, sources, shutdown, reload_rx)
            .await
            .map_err(Some)
    });
    // Connections still open after the drain deadline are closed with the runtime.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A --control flag problem: already explained, a usage error.
        Err(None) => ExitCode::from(2),
        Err(Some(e)) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
