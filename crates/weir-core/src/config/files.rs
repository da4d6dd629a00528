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
/// and `*.json`. A file reached twice (named twice, named and inside a
/// named directory, or through a symlink) is read once, where it is first
/// reached: its documents are not duplicates of themselves.
pub fn read_sources<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<SourceFile>, Box<ConfigError>> {
    read(paths, false)
}

/// [`read_sources`] for a one-shot reader (`weir check`, `weir explain`): a
/// path `-` is standard input, as for `kubectl apply -f -`. Not for a
/// proxy, which re-reads its paths.
pub fn read_sources_or_stdin<P: AsRef<Path>>(
    paths: &[P],
) -> Result<Vec<SourceFile>, Box<ConfigError>> {
    read(paths, true)
}

fn read<P: AsRef<Path>>(
    paths: &[P],
    stdin_allowed: bool,
) -> Result<Vec<SourceFile>, Box<ConfigError>> {
    let stdin = Path::new("-");
    let mut files = Vec::new();
    let mut walked = std::collections::HashSet::new();
    for p in paths {
        let p = p.as_ref();
        if stdin_allowed && p == stdin {
            // Kept where it is first named (a walk never yields "-").
            files.push(p.to_path_buf());
            continue;
        }
        let meta = std::fs::metadata(p).map_err(|e| file_error(p, &e))?;
        if meta.is_dir() {
            walk(p, &mut files, &mut walked)?;
        } else {
            files.push(p.to_path_buf());
        }
    }
    let mut read = std::collections::HashSet::new();
    let mut out = Vec::new();
    for p in files {
        let is_stdin = stdin_allowed && p == stdin;
        let real = if is_stdin {
            p.clone()
        } else {
            std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone())
        };
        if !read.insert(real) {
            continue;
        }
        out.push(if is_stdin {
            read_stdin()?
        } else {
            let content = std::fs::read_to_string(&p).map_err(|e| file_error(&p, &e))?;
            SourceFile::new(p.display().to_string(), content)
        });
    }
    Ok(out)
}

fn read_stdin() -> Result<SourceFile, Box<ConfigError>> {
    let mut content = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut content)
        .map_err(|e| file_error(Path::new("<stdin>"), &e))?;
    Ok(SourceFile::new("<stdin>", content))
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

    #[test]
    fn a_file_reached_twice_is_read_once() {
        let dir = std::env::temp_dir().join(format!("weir-files-twice-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cfg")).unwrap();
        std::fs::write(dir.join("cfg/a.yaml"), "a: 1\n").unwrap();
        std::fs::write(dir.join("cfg/b.yaml"), "b: 1\n").unwrap();
        std::os::unix::fs::symlink("cfg/a.yaml", dir.join("link.yaml")).unwrap();
        let a = dir.join("cfg/a.yaml");
        let files = read_sources(&[a.clone(), a.clone(), dir.join("cfg"), dir.join("link.yaml")]);
        let _ = std::fs::remove_dir_all(&dir);
        let names: Vec<String> = files.unwrap().into_iter().map(|f| f.name).collect();
        assert_eq!(
            names,
            [
                a.display().to_string(),
                dir.join("cfg/b.yaml").display().to_string()
            ]
        );
    }
}
