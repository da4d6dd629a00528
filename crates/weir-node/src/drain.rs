//! Counting open connections so shutdown can wait for them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug, Clone, Default)]
pub(crate) struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    open: AtomicUsize,
    idle: Notify,
}

/// Held by each proxied connection.
#[derive(Debug)]
pub(crate) struct DrainGuard(Arc<Inner>);

impl Drain {
    pub(crate) fn guard(&self) -> DrainGuard {
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        DrainGuard(self.inner.clone())
    }

    pub(crate) fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Waits until no connection is open or `deadline` passes; returns how
    /// many were still open.
    pub(crate) async fn wait(&self, deadline: Duration) -> usize {
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
