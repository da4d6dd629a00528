//! The only libc calls of the benchmark: file-descriptor limit, signals
//! and waiting for a child without reaping it.
#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// Raises the soft `RLIMIT_NOFILE` to `want` (or to the hard limit if that
/// is lower; root may also raise the hard limit, which is tried first).
/// Children (the node proxies, the load generators) inherit the result.
/// Returns the soft limit now in force.
pub fn raise_nofile(want: libc::rlim_t) -> io::Result<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let both = libc::rlimit {
        rlim_cur: want,
        rlim_max: want.max(lim.rlim_max),
    };
    // SAFETY: `both` is a valid rlimit read by setrlimit; no memory is shared.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &both) } == 0 {
        return Ok(want);
    }
    // Not allowed to raise the hard limit (no CAP_SYS_RESOURCE in this
    // container): settle for soft = hard.
    let soft = libc::rlimit {
        rlim_cur: lim.rlim_max.min(want),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(soft.rlim_cur)
}

/// Sends `SIGTERM` to `pid` (a child of this process that has not been
/// reaped yet, so the pid cannot have been reused).
pub fn sigterm(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the child `pid` has exited, without reaping it (`waitid` with
/// `WNOWAIT`): until it is reaped, `/proc/<pid>/stat` still holds the CPU
/// time it used, which is how the benchmark measures its load generators.
pub fn exited_unreaped(pid: u32) -> io::Result<bool> {
    let id = libc::id_t::from(pid);
    // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable siginfo_t for waitid to fill.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            id,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // With WNOHANG and no state change, waitid leaves si_pid zero.
    // SAFETY: waitid filled (or left zeroed) `info`; si_pid is valid to read
    // for SIGCHLD information.
    Ok(unsafe { info.si_pid() } != 0)
}

/// Set by the SIGINT/SIGTERM handler of [`catch_interrupts`].
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on, SIGINT and SIGTERM only set a flag ([`interrupted`]), so
/// the benchmark can stop its children and remove its namespaces and files
/// on the way out. The handler is reset after the first signal: a second
/// Ctrl-C ends the process at once.
pub fn catch_interrupts() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction is plain data (all zeroes valid); the handler
        // only stores to an atomic, which is async-signal-safe.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
        act.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
        // SAFETY: `act` is a valid sigaction; the old action is not wanted.
        if unsafe { libc::sigaction(sig, &act, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived since [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
