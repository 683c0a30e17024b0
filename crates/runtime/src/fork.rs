//! Fork detection: a `pthread_atfork` child handler marks the process as a
//! forked child, and every entry that touches device state checks the mark and
//! returns [`Error::ForkedChild`]. Owns that flag and its registration.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

static FORKED: AtomicBool = AtomicBool::new(false);
static REGISTER: Once = Once::new();

extern "C" fn on_fork_child() {
    // Relaxed: the child is single-threaded right after fork; later threads
    // it spawns see the store through thread creation's happens-before.
    FORKED.store(true, Ordering::Relaxed);
}

/// Install the child handler (idempotent). Called when the first device is made.
pub fn register() {
    REGISTER.call_once(|| {
        #[cfg(unix)]
        // SAFETY: `on_fork_child` is async-signal-safe (one atomic store) as
        // a child handler must be; null prepare/parent handlers are allowed.
        unsafe {
            libc::pthread_atfork(None, None, Some(on_fork_child));
        }
    });
}

/// `Err(ForkedChild)` in a forked child.
pub fn check() -> Result<()> {
    // Relaxed: see `on_fork_child`.
    if FORKED.load(Ordering::Relaxed) {
        Err(Error::ForkedChild)
    } else {
        Ok(())
    }
}
