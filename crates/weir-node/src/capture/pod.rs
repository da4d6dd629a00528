//! Finding a Kubernetes Pod's network namespace from its UID.
//!
//! In cluster mode the node proxy knows a Pod by its UID (the control plane
//! puts it in the [`POD_UID_ANNOTATION`] of the Workload), not by a named
//! namespace: containerd and CRI-O name a Pod's namespace `cni-<uuid>`, which
//! the API does not show. Every container of a Pod, including the sandbox
//! (`pause`) process that holds its network namespace, runs in a cgroup whose
//! path names the Pod UID: `.../pod<uid>/<container>` with the kubelet's
//! `cgroupfs` driver, `.../kubepods-<qos>-pod<uid with _ for ->.slice/...`
//! with the `systemd` driver. So a process of the Pod is found by its
//! `/proc/<pid>/cgroup`, and `/proc/<pid>/ns/net` is the Pod's namespace —
//! the way istio-cni's node agent finds it when it starts after the Pod.
//!
//! The host's `/proc` must be visible to the proxy (the chart mounts it at
//! `/host/proc` and passes `--proc-root=/host/proc`), and the proxy needs
//! CAP_SYS_PTRACE to open another process' namespace.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::Netns;

pub use weir_core::config::POD_UID_ANNOTATION;

/// Opens the network namespace of the Pod with `uid`, from a process of the
/// Pod found under `proc_root` (the host's `/proc`).
///
/// A process in the same namespace as `proc_root`'s pid 1 (the host's) is
/// not taken: that would capture the node's own traffic. Fails with
/// `NotFound` when no process of the Pod runs (yet).
pub fn pod_netns(proc_root: &Path, uid: &str) -> io::Result<Netns> {
    let needles = pod_cgroup_needles(uid)?;
    let host = fs::metadata(proc_root.join("1/ns/net")).ok();
    let same_as_host = |path: &Path| match (&host, fs::metadata(path)) {
        (Some(h), Ok(m)) => h.dev() == m.dev() && h.ino() == m.ino(),
        _ => false,
    };
    let mut candidates = pod_processes(proc_root, &needles)?;
    // The sandbox is the Pod's oldest process: lowest pid, unless pids wrapped.
    candidates.sort_unstable();
    let mut last_error = None;
    for pid in candidates {
        let path = proc_root.join(pid.to_string()).join("ns/net");
        if same_as_host(&path) {
            continue;
        }
        match Netns::open(&path) {
            Ok(ns) => return Ok(ns),
            // The process may have exited between the scan and the open.
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no process of pod {uid} under {} (none has a cgroup path with pod{uid}); \
                 is the pod running, and is the host's /proc mounted there (--proc-root)?",
                proc_root.display()
            ),
        )
    }))
}

/// The strings a cgroup path of the Pod contains: `pod<uid>` (cgroupfs
/// driver) and `pod<uid with '_' for '-'>` (systemd driver).
fn pod_cgroup_needles(uid: &str) -> io::Result<[String; 2]> {
    if !weir_core::config::is_pod_uid(uid) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{uid:?} is not a pod UID (annotation {POD_UID_ANNOTATION})"),
        ));
    }
    Ok([format!("pod{uid}"), format!("pod{}", uid.replace('-', "_"))])
}

/// Pids under `proc_root` whose cgroup path contains one of `needles` as a
/// whole path element or systemd slice name.
fn pod_processes(proc_root: &Path, needles: &[String; 2]) -> io::Result<Vec<u32>> {
    let entries = fs::read_dir(proc_root).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot list {} to find pods' processes: {e} (mount the host's /proc and pass --proc-root)",
                proc_root.display()
            ),
        )
    })?;
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go while we scan: unreadable ones are skipped.
        let Ok(cgroups) = fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        if cgroups
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|path| names_pod(path, needles))
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Whether a cgroup path has an element that is `pod<uid>` or ends with it
/// before `.slice` (`kubepods-burstable-pod<uid>.slice`).
fn names_pod(cgroup_path: &str, needles: &[String; 2]) -> bool {
    cgroup_path.split('/').any(|element| {
        let element = element.strip_suffix(".slice").unwrap_or(element);
        needles.iter().any(|n| {
            element
                .strip_suffix(n.as_str())
                .is_some_and(|prefix| prefix.is_empty() || prefix.ends_with('-'))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "4f0e6e0b-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

    fn needles() -> [String; 2] {
        pod_cgroup_needles(UID).unwrap()
    }

    #[test]
    fn cgroup_paths_of_both_kubelet_drivers_name_the_pod() {
        let n = needles();
        // cgroupfs driver, cgroup v1 and v2.
        assert!(names_pod(
            &format!("/kubepods/besteffort/pod{UID}/0123abcd"),
            &n
        ));
        assert!(names_pod(&format!("/kubepods/pod{UID}/0123abcd"), &n));
        // systemd driver.
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-0123.scope",
            UID.replace('-', "_")
        );
        assert!(names_pod(&systemd, &n));
        // Another pod, a longer UID with this one as suffix, the host.
        assert!(!names_pod(
            "/kubepods/besteffort/pod11111111-1c2d-4e5f-8a9b-0c1d2e3f4a5b/x",
            &n
        ));
        assert!(!names_pod(&format!("/kubepods/xpod{UID}/x"), &n));
        assert!(!names_pod("/system.slice/containerd.service", &n));
        assert!(!names_pod("/", &n));
    }

    #[test]
    fn a_uid_that_is_not_one_is_refused() {
        for bad in ["", "../1", "a/b", "x y", &"a".repeat(65)] {
            let e = pod_cgroup_needles(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    /// A fake /proc: pid directories with a `cgroup` file and an `ns/net`
    /// (a plain file here; the real thing is tested in tests/pod_netns.rs).
    #[test]
    fn the_scan_finds_the_pods_processes_and_opens_the_sandbox_first() {
        struct Dir(std::path::PathBuf);
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(&self.0);
            }
        }
        impl Dir {
            fn path(&self) -> &Path {
                &self.0
            }
        }
        let root = Dir(std::env::temp_dir().join(format!("weir-fake-proc-{}", std::process::id())));
        let write = |pid: u32, cgroup: &str| {
            let dir = root.path().join(pid.to_string());
            fs::create_dir_all(dir.join("ns")).unwrap();
            fs::write(dir.join("cgroup"), cgroup).unwrap();
            fs::write(dir.join("ns/net"), format!("ns of {pid}")).unwrap();
        };
        write(1, "0::/init.scope\n");
        write(
            300,
            &format!("12:pids:/kubepods/besteffort/pod{UID}/app\n0::/\n"),
        );
        write(
            200,
            &format!("12:pids:/kubepods/besteffort/pod{UID}/pause\n0::/\n"),
        );
        write(250, "12:pids:/kubepods/besteffort/podother/x\n");
        fs::create_dir_all(root.path().join("self")).unwrap();
        let mut pids = pod_processes(root.path(), &needles()).unwrap();
        pids.sort_unstable();
        assert_eq!(pids, [200, 300]);
        let ns = pod_netns(root.path(), UID).unwrap();
        assert_eq!(ns.path(), root.path().join("200/ns/net"));

        let e = pod_netns(root.path(), "0000").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("no process of pod 0000"), "{e}");
    }
}
