//! Where the control plane's config comes from.
//!
//! A [`ConfigSource`] yields whole states of the config ([`SourceEvent`]):
//! a [`Catalog`] to serve (with the documents it had to leave out, if any),
//! or the errors that keep the last good catalog in force. The control plane
//! diffs each catalog against the one it serves and pushes the difference,
//! so a source needs no notion of deltas.
//!
//! - [`FileSource`] (local mode): files and directories, re-read every
//!   interval. An invalid change is refused whole and the last good config
//!   stays, exactly as `weir node --config` does (and `weir check` on the
//!   same files prints the same errors): a half-edited directory must not go
//!   out to every node.
//! - The Kubernetes source (cluster mode, `weir_kube::KubeConfigSource`)
//!   loads one document per object, so that an invalid resource is left
//!   out (`skipped`, reported by the control plane when it first appears)
//!   while the rest is served.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use weir_core::config::{read_sources, SourceFile};
use weir_core::{ConfigError, ConfigErrors, MeshSettings};

use crate::catalog::Catalog;

/// A state of the config from a source.
#[derive(Debug)]
pub enum SourceEvent {
    /// Serve this catalog. `skipped` lists the documents left out because
    /// they are invalid (always empty for sources that refuse all-or-nothing).
    Update {
        /// The valid config.
        catalog: Catalog,
        /// Invalid documents left out.
        skipped: Vec<ConfigError>,
    },
    /// The source's current state is invalid: keep serving the last good one.
    Invalid(ConfigErrors),
}

/// The future [`ConfigSource::next`] returns.
pub type SourceFuture<'a> = Pin<Box<dyn Future<Output = Option<SourceEvent>> + Send + 'a>>;

/// A source of config states.
pub trait ConfigSource: Send {
    /// Waits for the next state that differs from the last one yielded (the
    /// first call yields the initial state at once). `None`: the source ended.
    fn next(&mut self) -> SourceFuture<'_>;

    /// What the source reads, for logs.
    fn describe(&self) -> String;

    /// Registers the source's own metrics in the control plane's registry
    /// (served on its `/metrics`); called once, before the first `next`.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}
}

/// Files and directories of YAML documents, re-read every `interval`.
#[derive(Debug)]
pub struct FileSource {
    paths: Vec<PathBuf>,
    settings: MeshSettings,
    interval: Duration,
    last: Option<Vec<SourceFile>>,
    last_error: Option<String>,
}

impl FileSource {
    /// Reads `paths` (files, or directories walked for `*.yaml`, `*.yml`,
    /// `*.json`) every `interval`.
    pub fn new(paths: Vec<PathBuf>, settings: MeshSettings, interval: Duration) -> Self {
        Self {
            paths,
            settings,
            interval,
            last: None,
            last_error: None,
        }
    }

    /// One read: `None` if nothing changed since the last one.
    fn poll(&mut self) -> Option<SourceEvent> {
        let sources = match read_sources(&self.paths) {
            Ok(s) => s,
            Err(e) => {
                let message = e.to_string();
                if self.last_error.as_deref() == Some(message.as_str()) {
                    return None;
                }
                self.last_error = Some(message);
                self.last = None;
                return Some(SourceEvent::Invalid(ConfigErrors(vec![*e])));
            }
        };
        if self.last.as_ref() == Some(&sources) {
            return None;
        }
        let event = match Catalog::load(&sources, self.settings.clone()) {
            Ok(catalog) => {
                self.last_error = None;
                SourceEvent::Update {
                    catalog,
                    skipped: Vec::new(),
                }
            }
            Err(errors) => {
                self.last_error = Some(errors.to_string());
                SourceEvent::Invalid(errors)
            }
        };
        self.last = Some(sources);
        Some(event)
    }
}

impl ConfigSource for FileSource {
    fn next(&mut self) -> SourceFuture<'_> {
        Box::pin(async move {
            if self.last.is_none() && self.last_error.is_none() {
                if let Some(event) = self.poll() {
                    return Some(event);
                }
            }
            loop {
                tokio::time::sleep(self.interval).await;
                if let Some(event) = self.poll() {
                    return Some(event);
                }
            }
        })
    }

    fn describe(&self) -> String {
        let paths: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        format!("files {}", paths.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("weir-control-source-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    const W: &str = "apiVersion: weir.dev/v1alpha1
kind: Workload
metadata: {name: a, namespace: apps}
spec: {address: 10.0.0.1, node: n1}
";

    #[tokio::test(flavor = "current_thread")]
    async fn yields_changes_and_refuses_invalid_states() {
        let d = dir("changes");
        std::fs::write(d.join("w.yaml"), W).unwrap();
        let mut src = FileSource::new(
            vec![d.clone()],
            MeshSettings::default(),
            Duration::from_millis(10),
        );
        let Some(SourceEvent::Update { catalog, skipped }) = src.next().await else {
            panic!("no initial catalog")
        };
        assert_eq!(catalog.entries.len(), 1);
        assert!(skipped.is_empty());
        assert!(src.poll().is_none(), "nothing changed");

        std::fs::write(
            d.join("bad.yaml"),
            "kind: Nope\napiVersion: x/v1\nmetadata: {name: x}\n",
        )
        .unwrap();
        let Some(SourceEvent::Invalid(errors)) = src.next().await else {
            panic!("invalid state not reported")
        };
        assert!(errors.to_string().contains("bad.yaml"), "{errors}");
        // Reported once, not on every read.
        assert!(src.poll().is_none());

        std::fs::remove_file(d.join("bad.yaml")).unwrap();
        std::fs::write(d.join("w.yaml"), W.replace("10.0.0.1", "10.0.0.2")).unwrap();
        let Some(SourceEvent::Update { catalog, .. }) = src.next().await else {
            panic!("fixed state not yielded")
        };
        assert_eq!(catalog.entries.len(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
