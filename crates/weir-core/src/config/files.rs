//! Reading config files and directories. Plain `std::fs`: the only I/O in this
//! crate, kept here so callers (check, the node proxy's reload) share it.

use std::path::{Path, PathBuf};

use super::ConfigError;

/// A config file's name (as given, for messages) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub name: String,
    pub content: String,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            content: content.into(),
        }
    }
}

fn is_config_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Walks `dir` into `out`; `seen` holds the directories already walked (by
/// their real path), so a symlink back to a parent, or two links to one
/// directory, are walked once.
fn walk(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut std::collections::HashSet<PathBuf>,
) -> Result<(), Box<ConfigError>> {
    let real = std::fs::canonicalize(dir).map_err(|e| file_error(dir, &e))?;
    if !seen.insert(real) {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| file_error(dir, &e))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !is_hidden(p))
        .collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            walk(&p, out, seen)?;
        } else if is_config_file(&p) {
            out.push(p);
        }
    }
    Ok(())
}

fn file_error(path: &Path, e: &std::io::Error) -> Box<ConfigError> {
    Box::new(ConfigError {
        document: None,
        file: path.display().to_string(),
        field: None,
        message: format!("cannot read: {e}"),
    })
}

/// Reads every path: a file is read whatever its extension; a directory is
/// walked recursively (sorted, hidden entries skipped) for `*.yaml`, `*.yml`
/// and `*.json`.
pub fn read_sources<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<SourceFile>, Box<ConfigError>> {
    let mut files = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in paths {
        let p = p.as_ref();
        let meta = std::fs::metadata(p).map_err(|e| file_error(p, &e))?;
        if meta.is_dir() {
            walk(p, &mut files, &mut seen)?;
        } else {
            files.push(p.to_path_buf());
        }
    }
    files
        .into_iter()
        .map(|p| {
            let content = std::fs::read_to_string(&p).map_err(|e| file_error(&p, &e))?;
            Ok(SourceFile::new(p.display().to_string(), content))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_loop_is_walked_once() {
        let dir = std::env::temp_dir().join(format!("weir-files-loop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cfg/sub")).unwrap();
        std::fs::write(dir.join("cfg/a.yaml"), "a: 1\n").unwrap();
        std::fs::write(dir.join("cfg/sub/b.yaml"), "b: 1\n").unwrap();
        // A link back to the top, and a second link to sub.
        std::os::unix::fs::symlink("..", dir.join("cfg/sub/up")).unwrap();
        std::os::unix::fs::symlink("sub", dir.join("cfg/again")).unwrap();
        let files = read_sources(&[dir.join("cfg")]);
        let _ = std::fs::remove_dir_all(&dir);
        let names: Vec<String> = files
            .unwrap()
            .into_iter()
            .map(|f| {
                Path::new(&f.name)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["a.yaml", "b.yaml"]);
    }
}
