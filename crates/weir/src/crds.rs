//! `weir crds`: print the CustomResourceDefinitions of weir's own kinds
//! (`kubectl apply -f <(weir crds)`; the Helm chart ships the same output).

use std::io::Write;
use std::process::ExitCode;

/// Prints the CRDs as one YAML stream on stdout.
pub fn run() -> ExitCode {
    let yaml = weir_kube::crd::crds_yaml();
    let mut out = std::io::stdout().lock();
    match out.write_all(yaml.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir crds: cannot write: {e}");
            ExitCode::FAILURE
        }
    }
}
