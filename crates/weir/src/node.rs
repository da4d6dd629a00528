//! `weir node`: runtime, logging and signal wiring around `weir_node::run`.

use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use crate::cli::{LogFormat, NodeArgs};

pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

pub fn run(args: NodeArgs) -> ExitCode {
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
    let options = weir_node::NodeOptions {
        node: args.node.clone(),
        common: args.proxy.options(settings),
        capture: !args.no_capture,
        preserve_source_ip: !args.no_preserve_source_ip,
        proc_root: args.proc_root.clone(),
        control: args.proxy.control.address.clone(),
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
        match &args.proxy.control.address {
            Some(address) => {
                let sources =
                    crate::control::node_sources(&args, address, &options.common.settings)
                        .map_err(weir_node::Error::Setup)?;
                weir_node::run_with(options, sources, shutdown, reload_rx).await
            }
            None => weir_node::run(options, shutdown, reload_rx).await,
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
