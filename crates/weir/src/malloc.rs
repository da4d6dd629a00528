//! glibc malloc settings for the proxies' allocation pattern.
//!
//! A proxy moving bulk data allocates and frees large buffers all the time:
//! HTTP/2 DATA frames of up to 1 MiB, 256 KiB TLS read-ahead buffers that
//! exist only while they hold bytes (so idle connections cost almost
//! nothing), adaptive read buffers. glibc hands the top of a heap back to
//! the kernel whenever more than `M_TRIM_THRESHOLD` bytes are free there —
//! by default twice the largest chunk freed so far, about 2 MiB here — and
//! the next buffer then faults every page back in, zeroed. In the L4
//! benchmark the receiving node proxy took one page fault per 4 KiB it
//! moved (236 000 in 1.2 s), and a quarter of its CPU went to the faults.
//!
//! So the proxies keep up to [`TRIM_THRESHOLD`] free at the top of each
//! heap, and only allocations of [`MMAP_THRESHOLD`] and more (a large Kafka
//! frame) get their own mapping, returned at once when freed. The price:
//! after a burst a proxy's RSS stays up to that much per heap higher (at
//! the end of the benchmark node-b held 28–34 MiB instead of 19; 16 MiB
//! kept 32–35 for no fewer faults). A fixed threshold also turns off
//! glibc's dynamic adjustment. Settings the user made
//! (`GLIBC_TUNABLES=glibc.malloc.…`, `MALLOC_TRIM_THRESHOLD_`,
//! `MALLOC_MMAP_THRESHOLD_`) are left in force. An allocator crate
//! (jemalloc, mimalloc) would do the same at the cost of building C code.
#![allow(unsafe_code)]

/// Free bytes kept at the top of a heap before it is trimmed.
pub const TRIM_THRESHOLD: usize = 8 << 20;
/// Allocations of this size and more are mapped on their own.
pub const MMAP_THRESHOLD: usize = 4 << 20;

/// Whether the environment already sets the thresholds.
fn set_by_user(env: impl Fn(&str) -> Option<String>) -> bool {
    env("GLIBC_TUNABLES").is_some_and(|t| {
        t.split(':').any(|kv| {
            kv.starts_with("glibc.malloc.trim_threshold=")
                || kv.starts_with("glibc.malloc.mmap_threshold=")
        })
    }) || env("MALLOC_TRIM_THRESHOLD_").is_some()
        || env("MALLOC_MMAP_THRESHOLD_").is_some()
}

/// Applies the settings (glibc on Linux; elsewhere nothing). Call first
/// thing, before threads allocate.
pub fn tune_for_proxying() {
    if set_by_user(|k| std::env::var(k).ok()) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets two of glibc's malloc parameters (integers
    // that fit a c_int); it takes no pointers and is safe to call at any
    // time, from any thread.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_made_by_the_user_win() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(!set_by_user(env(&[])));
        assert!(!set_by_user(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_max=2"
        )])));
        assert!(set_by_user(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=1"
        )])));
        assert!(set_by_user(env(&[("MALLOC_MMAP_THRESHOLD_", "65536")])));
    }
}
