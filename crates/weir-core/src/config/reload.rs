//! Re-reading config files in a running proxy: what `weir node` and `weir
//! gateway` do on every tick and on SIGHUP. A change is loaded only when
//! the whole config is valid; otherwise every error is logged, the refusal
//! is recorded, and the proxy keeps the config it has.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use tracing::{error, info, warn};

use super::{read_sources, Config, MeshSettings, SourceFile};

/// How a proxy's config reloads went (its `/config_dump` shows this).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadStatus {
    /// Configs loaded since start (the first one not counted).
    pub reloads: u64,
    /// The errors of the last refused reload, until a reload succeeds.
    pub last_error: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_at_unix: Option<u64>,
}

impl ReloadStatus {
    /// A new config is in force.
    pub fn loaded(&mut self) {
        self.reloads += 1;
        self.last_error = None;
        self.last_error_at_unix = None;
    }

    /// A new config was refused for `errors`.
    pub fn refused(&mut self, errors: Vec<String>) {
        self.last_error = Some(errors);
        self.last_error_at_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
    }
}

/// What [`ConfigFiles::reload`] found.
#[derive(Debug)]
pub enum Reload {
    /// The files hold what they held (or stay unreadable, already reported).
    Unchanged,
    /// They changed and the config is valid: put it in force.
    Loaded(Box<Config>),
    /// They cannot be read or the config is invalid: keep the current one.
    Refused,
}

impl Reload {
    /// For a reload counter: `Some(true)` loaded, `Some(false)` refused.
    pub fn outcome(&self) -> Option<bool> {
        match self {
            Reload::Unchanged => None,
            Reload::Loaded(_) => Some(true),
            Reload::Refused => Some(false),
        }
    }
}

/// The files a proxy's config comes from and what they held when last read.
#[derive(Debug)]
pub struct ConfigFiles {
    paths: Vec<PathBuf>,
    settings: MeshSettings,
    last: Vec<SourceFile>,
    unreadable: bool,
}

impl ConfigFiles {
    /// `last`: the sources of the config in force.
    pub fn new(paths: Vec<PathBuf>, settings: MeshSettings, last: Vec<SourceFile>) -> Self {
        Self {
            paths,
            settings,
            last,
            unreadable: false,
        }
    }

    /// Re-reads the files and loads them when they changed (or when
    /// `forced`, e.g. on SIGHUP). A refusal is logged with every error and
    /// recorded in `status`; a file that stays unreadable is reported once,
    /// not on every tick, unless `forced`. A load is recorded in `status`.
    pub fn reload(&mut self, forced: bool, status: &Mutex<ReloadStatus>) -> Reload {
        let status = || status.lock().unwrap_or_else(|p| p.into_inner());
        let sources = match read_sources(&self.paths) {
            Ok(s) => s,
            Err(e) => {
                if forced || !self.unreadable {
                    self.unreadable = true;
                    error!("config reload refused, keeping the previous config: {e}");
                    status().refused(vec![e.to_string()]);
                    return Reload::Refused;
                }
                return Reload::Unchanged;
            }
        };
        self.unreadable = false;
        if !forced && sources == self.last {
            return Reload::Unchanged;
        }
        self.last = sources;
        match Config::from_sources(&self.last, self.settings.clone()) {
            Ok(config) => {
                for w in &config.warnings {
                    warn!("config: {w}");
                }
                let objects: Vec<String> = config
                    .summary()
                    .into_iter()
                    .filter(|&(_, n)| n > 0)
                    .map(|(kind, n)| format!("{kind}={n}"))
                    .collect();
                info!(objects = %objects.join(" "), "config reloaded");
                status().loaded();
                Reload::Loaded(Box::new(config))
            }
            Err(errors) => {
                error!(
                    errors = errors.0.len(),
                    "config reload refused, keeping the previous config"
                );
                for e in &errors.0 {
                    error!("config: {e}");
                }
                status().refused(errors.0.iter().map(ToString::to_string).collect());
                Reload::Refused
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKLOAD: &str = "apiVersion: weir.dev/v1alpha1
kind: Workload
metadata: {name: w, namespace: ns}
spec: {address: 198.18.0.10, node: node-a, netns: w}
";

    fn setup(content: &str) -> (PathBuf, ConfigFiles, Mutex<ReloadStatus>) {
        let dir = std::env::temp_dir().join(format!(
            "weir-reload-{}-{}",
            std::process::id(),
            content.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.yaml");
        std::fs::write(&file, content).unwrap();
        let last = read_sources(&[&file]).unwrap();
        let files = ConfigFiles::new(vec![file.clone()], MeshSettings::default(), last);
        (file, files, Mutex::new(ReloadStatus::default()))
    }

    #[test]
    fn loads_a_valid_change_refuses_an_invalid_one_and_reports_a_missing_file_once() {
        let (file, mut files, status) = setup(WORKLOAD);
        assert!(matches!(files.reload(false, &status), Reload::Unchanged));

        std::fs::write(&file, WORKLOAD.replace("198.18.0.10", "198.18.0.11")).unwrap();
        let Reload::Loaded(c) = files.reload(false, &status) else {
            panic!("a valid change is loaded");
        };
        assert_eq!(c.workloads[0].address.to_string(), "198.18.0.11");
        assert_eq!(status.lock().unwrap().reloads, 1);

        std::fs::write(&file, WORKLOAD.replace("netns: w", "netns: w, colour: red")).unwrap();
        assert!(matches!(files.reload(false, &status), Reload::Refused));
        let errors = status.lock().unwrap().last_error.clone().unwrap();
        assert!(errors.iter().any(|e| e.contains("colour")), "{errors:?}");
        // The same invalid files are not refused again on every tick.
        assert!(matches!(files.reload(false, &status), Reload::Unchanged));

        std::fs::remove_file(&file).unwrap();
        assert!(matches!(files.reload(false, &status), Reload::Refused));
        assert!(matches!(files.reload(false, &status), Reload::Unchanged));
        assert!(matches!(files.reload(true, &status), Reload::Refused));

        std::fs::write(&file, WORKLOAD).unwrap();
        assert!(matches!(files.reload(false, &status), Reload::Loaded(_)));
        let s = status.lock().unwrap().clone();
        assert_eq!((s.reloads, s.last_error), (2, None));
        std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
    }
}
