//! This process's id without a system call per use.
//!
//! The usage log and the ledger check on every record that their writer
//! thread runs in this process, because a daemon fork (Pingora's
//! `daemon: true`) leaves the parent's threads behind. glibc no longer
//! caches `getpid`, so that check was a system call per request. The id is
//! cached here and forgotten in every forked child by a `pthread_atfork`
//! handler, which runs in the child before `fork` returns there.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// 0: not known in this process (never asked, or forked since).
static PID: AtomicU32 = AtomicU32::new(0);
/// Whether the forgetting handler is registered: without it nothing is
/// cached.
static FORGETS_IN_CHILD: OnceLock<bool> = OnceLock::new();

extern "C" fn forget() {
    // Async-signal-safe: one atomic store.
    PID.store(0, Ordering::Relaxed);
}

/// This process's id (`std::process::id()`), correct across `fork`.
pub fn current() -> u32 {
    let known = PID.load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    // Registered before the first id is cached, so no fork can happen
    // between caching an id and being able to forget it.
    let forgets = *FORGETS_IN_CHILD.get_or_init(|| {
        // SAFETY: registers a child handler that only does an atomic store;
        // pthread_atfork has no other preconditions. On failure (ENOMEM)
        // nothing is cached, and every call asks the kernel.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(forget)) };
        if rc != 0 {
            log::warn!("pthread_atfork failed ({rc}): the process id is asked for on every use");
        }
        rc == 0
    });
    let pid = std::process::id();
    if forgets {
        PID.store(pid, Ordering::Relaxed);
    }
    pid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_the_process_id() {
        assert_eq!(current(), std::process::id());
        assert_eq!(current(), std::process::id());
    }

    #[test]
    fn a_forked_child_gets_its_own_id() {
        let parent = current();
        // SAFETY: the child only reads atomics, calls getpid and _exit
        // (async-signal-safe), as a child of a multithreaded process must.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let ok = current() != parent && current() == unsafe { libc::getpid() } as u32;
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        let waited = unsafe { libc::waitpid(child, &mut status, 0) };
        assert_eq!(waited, child);
        assert!(libc::WIFEXITED(status), "child did not exit: {status}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "the child saw its parent's id"
        );
        assert_eq!(current(), parent);
    }
}
