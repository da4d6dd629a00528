//! Step 1: find or install what the demo needs.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use weir_testing::find_in_path;

use super::{procs, ui};
use crate::cli::{DemoArgs, DemoBroker};

/// What the rest of the demo runs.
pub struct Tools {
    /// The real interpreter (not a pyenv shim, which `ip netns exec` may break).
    pub python: String,
    pub tansu: Option<PathBuf>,
    pub tcpdump: bool,
}

/// Why the demo cannot run here: one paragraph for the user.
pub struct Missing(pub String);

/// Directories [`find_in_path`] searches beyond PATH; see
/// [`add_system_dirs_to_path`].
const SYSTEM_DIRS: [&str; 5] = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];

const TANSU_VERSION: &str = "0.6.0";
const TANSU_ROOT: &str = "/opt/tansu";

/// Appends the system directories missing from PATH (a root shell started
/// with `su` or from cron often lacks the sbin ones). The demo finds `ip` and
/// `iptables` there itself; without this the node proxies it starts, which
/// run `iptables-restore` through PATH, would fail after the demo said
/// "iptables present". Call it before any thread is started.
pub fn add_system_dirs_to_path() {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&current).collect();
    let missing: Vec<PathBuf> = SYSTEM_DIRS
        .iter()
        .map(PathBuf::from)
        .filter(|d| !dirs.contains(d))
        .collect();
    if missing.is_empty() {
        return;
    }
    dirs.extend(missing);
    if let Ok(path) = std::env::join_paths(dirs) {
        std::env::set_var("PATH", path);
    }
}

/// Stops the checks once a signal arrived (the caller reports the interruption).
fn stop_if_cancelled() -> Result<(), Missing> {
    if procs::cancelled() {
        Err(Missing("interrupted".into()))
    } else {
        Ok(())
    }
}

pub fn ensure(args: &DemoArgs) -> Result<Tools, Missing> {
    if std::env::consts::OS != "linux" {
        return Err(Missing(format!(
            "weir demo builds a small cluster out of Linux network namespaces, iptables \
             rules and a bridge, so it needs Linux; this machine runs {}. Run it in a Linux \
             VM or container started with --privileged (e.g. `docker run --privileged -it \
             debian`), or use `weir check` and `weir explain`, which run anywhere.",
            std::env::consts::OS
        )));
    }
    require_root()?;
    ui::ok(&format!(
        "Linux, running as root (pid {})",
        std::process::id()
    ));

    // System packages.
    let mut need: Vec<&str> = Vec::new();
    if find_in_path("ip").is_none() {
        need.push("iproute2");
    }
    if find_in_path("iptables").is_none() || find_in_path("iptables-restore").is_none() {
        need.push("iptables");
    }
    if find_in_path("python3").is_none() {
        need.extend(["python3", "python3-pip"]);
    }
    if find_in_path("tcpdump").is_none() {
        need.push("tcpdump");
    }
    // Debian and Ubuntu ship python3 without pip; pip installs the clients.
    let mut clients_found = false;
    if find_in_path("python3").is_some() {
        let python = resolve_python();
        clients_found = python_has_clients(&python);
        if !clients_found && !python_has_pip(&python) {
            need.push("python3-pip");
        }
    }
    stop_if_cancelled()?;
    if !need.is_empty() {
        apt_install(&need, args.no_install)?;
    }
    for (tool, pkg) in [("ip", "iproute2"), ("iptables", "iptables")] {
        if find_in_path(tool).is_none() {
            return Err(Missing(format!(
                "weir demo needs `{tool}` (package {pkg}) to build its network namespaces \
                 and capture rules, and it is not installed{}. Install it with your package \
                 manager (e.g. `apt-get install -y iproute2 iptables`) and run the demo again.",
                if args.no_install {
                    " (--no-install given)"
                } else {
                    ""
                }
            )));
        }
    }
    if find_in_path("python3").is_none() {
        return Err(Missing(
            "weir demo runs real Kafka clients (confluent-kafka, kafka-python), which need \
             python3, and it is not installed. Install python3 and pip with your package \
             manager (e.g. `apt-get install -y python3 python3-pip`) and run the demo again."
                .to_string(),
        ));
    }
    stop_if_cancelled()?;
    ui::ok("iproute2 and iptables present");
    let tcpdump = find_in_path("tcpdump").is_some();
    if !tcpdump {
        ui::note("tcpdump not found: the \"nothing in clear text on the wire\" check is skipped");
    }

    let python = resolve_python();
    if !clients_found && !python_has_clients(&python) {
        stop_if_cancelled()?;
        if args.no_install {
            return Err(Missing(format!(
                "weir demo runs real Kafka clients from the Python packages confluent-kafka \
                 and kafka-python, which {python} cannot import (--no-install given). Install \
                 them with `{python} -m pip install confluent-kafka kafka-python` and run the \
                 demo again."
            )));
        }
        ui::progress(
            "installing the Python Kafka clients (confluent-kafka, kafka-python) with pip",
        );
        let pip = |extra: &[&str]| {
            let mut c = Command::new(&python);
            c.args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                .args(extra)
                .args(["confluent-kafka", "kafka-python"])
                .stdin(Stdio::null());
            !procs::cancelled() && procs::status(c)
        };
        // Debian's python refuses system-wide pip installs without the flag.
        let _ = pip(&[]) || pip(&["--break-system-packages"]);
        if !python_has_clients(&python) {
            return Err(Missing(format!(
                "weir demo runs real Kafka clients from the Python packages confluent-kafka \
                 and kafka-python, and installing them with pip failed (see pip's output \
                 above). Install them by hand (`{python} -m pip install confluent-kafka \
                 kafka-python`; a distribution's python3-confluent-kafka may link an older \
                 librdkafka than Tansu needs) and run the demo again."
            )));
        }
    }
    stop_if_cancelled()?;
    ui::ok(&format!(
        "Kafka clients: {} [{python}]",
        client_versions(&python)
    ));

    let tansu = match args.broker {
        DemoBroker::Mock => {
            ui::ok("broker: librdkafka's mock cluster (--broker mock)");
            None
        }
        DemoBroker::Tansu => Some(ensure_tansu(args)?),
    };
    Ok(Tools {
        python,
        tansu,
        tcpdump,
    })
}

fn apt_install(pkgs: &[&str], no_install: bool) -> Result<(), Missing> {
    if no_install || find_in_path("apt-get").is_none() {
        // The caller explains what is still missing.
        return Ok(());
    }
    ui::progress(&format!(
        "installing {} with apt-get (apt-get update first)",
        pkgs.join(" ")
    ));
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        !procs::cancelled() && procs::status(c)
    };
    if !apt(&["update", "-qq"]) {
        ui::note("apt-get update failed; trying the install anyway");
    }
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend_from_slice(pkgs);
    if !apt(&install) {
        ui::note(&format!("apt-get install {} failed", pkgs.join(" ")));
    }
    Ok(())
}

fn ensure_tansu(args: &DemoArgs) -> Result<PathBuf, Missing> {
    if let Some(p) = find_tansu() {
        ui::ok(&format!("broker: Tansu at {}", p.display()));
        return Ok(p);
    }
    stop_if_cancelled()?;
    let cargo = find_in_path("cargo").or_else(|| {
        let p = home().join(".cargo/bin/cargo");
        p.exists().then_some(p)
    });
    let Some(cargo) = cargo.filter(|_| !args.no_install) else {
        return Err(Missing(format!(
            "weir demo runs Tansu, a Kafka-compatible broker written in Rust, and it is not \
             installed (looked on PATH, in {TANSU_ROOT}/bin and ~/.cargo/bin){}. Either \
             build it once (about 12 minutes on 2 cores) with `cargo install --locked tansu \
             --version {TANSU_VERSION} --features dynostore --root {TANSU_ROOT}`, or run the \
             demo with `--broker mock`, which uses librdkafka's built-in mock Kafka cluster \
             (from the confluent-kafka package) instead and needs nothing else.",
            if args.no_install {
                " and --no-install was given"
            } else {
                " and cargo is not available to build it"
            }
        )));
    };
    // Tansu's build compiles C code and links with `cc`.
    if find_in_path("cc").is_none() {
        apt_install(&["gcc", "libc6-dev"], args.no_install)?;
    }
    ui::progress(&format!(
        "building the Tansu broker with cargo (once, into {TANSU_ROOT}; about 12 minutes on 2 \
         cores — or stop now and run `weir demo --broker mock`)"
    ));
    let mut c = Command::new(&cargo);
    c.args(["install", "--locked", "tansu", "--version", TANSU_VERSION])
        .args(["--features", "dynostore", "--root", TANSU_ROOT])
        .stdin(Stdio::null());
    let ok = procs::status(c);
    match find_tansu() {
        Some(p) if ok => {
            ui::ok(&format!("broker: Tansu built at {}", p.display()));
            Ok(p)
        }
        _ => Err(Missing(format!(
            "weir demo tried to build the Tansu broker with `cargo install --locked tansu \
             --version {TANSU_VERSION} --features dynostore --root {TANSU_ROOT}` and it failed \
             (see cargo's output above). Fix the build (it needs a C compiler and a recent \
             Rust), or run the demo with `--broker mock`, which uses librdkafka's mock Kafka \
             cluster instead."
        ))),
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

pub fn find_tansu() -> Option<PathBuf> {
    find_in_path("tansu")
        .into_iter()
        .chain([
            PathBuf::from(TANSU_ROOT).join("bin/tansu"),
            home().join(".cargo/bin/tansu"),
        ])
        .find(|p| p.is_file())
}

/// Root, or why the demo needs it.
pub fn require_root() -> Result<(), Missing> {
    match effective_uid() {
        Some(0) => Ok(()),
        uid => Err(Missing(format!(
            "weir demo creates network namespaces, a bridge and iptables rules, which \
             needs root, but it runs as uid {}. Run it again with sudo: `sudo \
             scripts/demo.sh` (or `sudo weir demo`). Everything it creates is removed \
             when it exits.",
            uid.map_or("unknown".to_string(), |u| u.to_string())
        ))),
    }
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The interpreter behind `python3` (resolving pyenv shims and the like).
fn resolve_python() -> String {
    procs::own_group(Command::new("python3").args(["-c", "import sys; print(sys.executable)"]))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "python3".to_string())
}

fn python_has_clients(python: &str) -> bool {
    procs::own_group(Command::new(python).args(["-c", "import confluent_kafka, kafka"]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn python_has_pip(python: &str) -> bool {
    procs::own_group(Command::new(python).args(["-m", "pip", "--version"]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn client_versions(python: &str) -> String {
    procs::own_group(Command::new(python).args([
        "-c",
        "import confluent_kafka as c, kafka; v = c.version(); \
             print(v[0] if isinstance(v, tuple) else v, c.libversion()[0], kafka.__version__)",
    ]))
    .stdin(Stdio::null())
    .stderr(Stdio::null())
    .output()
    .ok()
    .map(|o| {
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        match out.split_whitespace().collect::<Vec<_>>()[..] {
            [ck, rd, kp] => {
                format!("confluent-kafka {ck} (librdkafka {rd}), kafka-python {kp}")
            }
            _ => "confluent-kafka, kafka-python".to_string(),
        }
    })
    .unwrap_or_default()
}
