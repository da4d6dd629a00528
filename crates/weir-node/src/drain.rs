//! Counting open connections so shutdown can wait for them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// Counts open connections (one [`DrainGuard`] each) so shutdown can wait
/// for them; clones share the count.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    open: AtomicUsize,
    idle: Notify,
}

/// Held by each proxied connection; dropping it marks the connection closed.
#[derive(Debug)]
pub struct DrainGuard(Arc<Inner>);

impl Drain {
    pub fn guard(&self) -> DrainGuard {
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        DrainGuard(self.inner.clone())
    }

    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Waits until no connection is open or `deadline` passes; returns how
    /// many were still open.
    pub async fn wait(&self, deadline: Duration) -> usize {
        let wait = async {
            loop {
                let idle = self.inner.idle.notified();
                if self.open() == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.open()
    }
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
