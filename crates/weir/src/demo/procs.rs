//! Child processes of the demo: each in its own process group (so a Ctrl-C
//! in the terminal reaches only `weir demo`, which then stops them in order),
//! registered so a signal can stop them all.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Set when SIGINT/SIGTERM arrived: the demo body stops at the next step.
static CANCELLED: AtomicBool = AtomicBool::new(false);
/// Pids of every live child (unregistered once reaped, so never a reused pid).
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn children() -> std::sync::MutexGuard<'static, Vec<u32>> {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// Marks the run cancelled and asks every child to stop (SIGTERM).
pub fn cancel_all() {
    CANCELLED.store(true, Ordering::SeqCst);
    for pid in children().iter() {
        signal(*pid, "TERM");
    }
}

/// Last resort (second Ctrl-C): SIGKILL every child.
pub fn kill_all() {
    for pid in children().iter() {
        signal(*pid, "KILL");
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A long-running child (node proxy, broker, metrics server).
pub struct Proc {
    child: Option<Child>,
    /// Kept open: mock_cluster.py serves until its stdin closes.
    stdin: Option<ChildStdin>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Proc, String> {
        cmd.process_group(0);
        let mut reg = children();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        reg.push(child.id());
        drop(reg);
        let stdin = child.stdin.take();
        Ok(Proc {
            child: Some(child),
            stdin,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until reaped")
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. True if it exited on its own.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        drop(self.stdin.take());
        let mut clean = true;
        if child.try_wait().ok().flatten().is_none() {
            signal(child.id(), "TERM");
            let deadline = Instant::now() + grace;
            loop {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if Instant::now() >= deadline {
                    clean = false;
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.wait();
        children().retain(|p| *p != child.id());
        clean
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(3));
    }
}

/// What a short-lived command printed.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion (registered, so Ctrl-C stops it), killing it
/// after `timeout`.
pub fn run(mut cmd: Command, timeout: Duration) -> Result<Finished, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut p = Proc::spawn("command", cmd)?;
    let child = p.child_mut();
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = p.exited() {
            break status;
        }
        if Instant::now() >= deadline {
            p.terminate(Duration::from_secs(2));
            let _ = t_out.join();
            let _ = t_err.join();
            return Err(format!("timed out after {}s", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    p.terminate(Duration::ZERO);
    Ok(Finished {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Runs `cmd` to completion with inherited output (installers), registered
/// so a signal stops it. True if it succeeded.
pub fn status(cmd: Command) -> bool {
    let Ok(mut p) = Proc::spawn("installer", cmd) else {
        return false;
    };
    loop {
        if let Some(status) = p.exited() {
            p.terminate(Duration::ZERO);
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sleeps up to `d`, returning early (false) when the run is cancelled.
pub fn sleep(d: Duration) -> bool {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        if cancelled() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50).min(deadline - Instant::now()));
    }
    !cancelled()
}
