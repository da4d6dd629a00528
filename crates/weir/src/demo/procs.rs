//! Child processes of the demo: each in its own process group (so a Ctrl-C
//! in the terminal reaches only `weir demo`, which then stops them in order),
//! registered so a signal can stop them all.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Set when SIGINT, SIGTERM or SIGHUP arrived: the demo body stops at the next step.
static CANCELLED: AtomicBool = AtomicBool::new(false);
/// The signal that cancelled the run (its number), 0 before one arrived.
static SIGNAL: AtomicU8 = AtomicU8::new(0);
/// Pids of every live child (unregistered once reaped, so never a reused pid).
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn children() -> std::sync::MutexGuard<'static, Vec<u32>> {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// The signals that stop the demo (and remove what it created).
#[derive(Debug, Clone, Copy)]
pub enum Signal {
    Hup = 1,
    Int = 2,
    Term = 15,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Hup => "SIGHUP",
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        }
    }
}

/// The exit code of a run stopped by a signal: 128 + its number, as a shell
/// reports it (130 for Ctrl-C).
pub fn interrupted_code() -> u8 {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => 128 + Signal::Int as u8,
        n => 128 + n,
    }
}

/// Marks the run cancelled by `sig` and asks every child to stop (SIGTERM).
pub fn cancel_all(sig: Signal) {
    SIGNAL.store(sig as u8, Ordering::SeqCst);
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
    let _ = own_group(Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Puts a short-lived helper command in its own process group, so the
/// Ctrl-C the terminal sends to `weir demo`'s group does not kill it halfway
/// (the demo notices the signal itself and stops at the next step).
pub fn own_group(cmd: &mut Command) -> &mut Command {
    cmd.process_group(0)
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
        // Checked under the registry lock: `cancel_all` sets the flag, then
        // signals every registered child, so a child is either refused here
        // or signalled there, never missed (a produce started just after a
        // Ctrl-C would otherwise run to its end).
        if cancelled() {
            return Err(format!("not starting {name}: the demo is stopping"));
        }
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
        if cancelled() {
            p.terminate(Duration::from_secs(2));
            let _ = t_out.join();
            let _ = t_err.join();
            return Err("stopped: the demo is stopping".into());
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
