//! Forking a process that has threads, safely. Between `clone`/`fork` and `exec`, a container's
//! child runs Rust code that allocates; if another thread of the caller was inside the allocator
//! at the fork, the child inherits its lock held and hangs. The init has one such thread (its
//! config worker, which parses large user-data off the main loop), so its binary installs
//! [`ForkSafe`] as its allocator: once [`threads_started`] has been called, every allocation
//! takes one lock, and every fork in this crate holds that lock across the system call
//! ([`fork_guard`]), so no other thread is inside the allocator at that moment. The child's copy
//! of the lock is released by the guard's drop in the child. Before any thread exists the
//! allocator takes no lock at all. (libc's `fork` does the same for its own allocator with
//! atfork handlers; the raw `clone3` here bypasses them.)
//!
//! The other threads must stay off libc functions that allocate internally (`opendir`,
//! `getaddrinfo`): those bypass this lock. The init's worker only parses and writes files.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

static THREADED: AtomicBool = AtomicBool::new(false);
static LOCK: Mutex<()> = Mutex::new(());

/// The system allocator, serialised with forks once the process has threads.
#[derive(Debug, Default)]
pub struct ForkSafe;

fn guard() -> Option<MutexGuard<'static, ()>> {
    THREADED
        .load(Ordering::Acquire)
        .then(|| LOCK.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Call before starting the process's first thread (from the thread that will fork).
pub fn threads_started() {
    THREADED.store(true, Ordering::Release);
}

/// Hold across a fork: no other thread is in the allocator meanwhile. The caller must not
/// allocate while holding it (the lock is not reentrant). Dropped in both processes.
pub fn fork_guard() -> Option<MutexGuard<'static, ()>> {
    guard()
}

// SAFETY: every method forwards to the system allocator with the same arguments; the lock only
// orders the calls.
unsafe impl GlobalAlloc for ForkSafe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _g = guard();
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _g = guard();
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _g = guard();
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _g = guard();
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
