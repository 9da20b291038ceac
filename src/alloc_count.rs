//! The lib tests' global allocator: the system allocator, counting each thread's allocations,
//! so that a test can show that a path allocates nothing per message
//! (`allocations()` before and after, on the test's own thread; tests running in parallel on
//! other threads do not disturb the count). A test that sees an allocation it did not expect
//! can say where it was made: [`record_sites`] has each allocation on the thread captured with
//! its backtrace until [`take_sites`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static RECORDING: Cell<bool> = const { Cell::new(false) };
    static SITES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// How many sites are kept: enough to tell a one-off from a per-round allocation.
const SITES_KEPT: usize = 16;

struct Counting;

fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    // Recording is switched off while a backtrace is taken, so the allocations the capture
    // itself makes are neither recorded nor recursed into, and they are taken off the count.
    if RECORDING.try_with(|r| r.replace(false)).unwrap_or(false) {
        let counted = ALLOCATIONS.try_with(|c| c.get()).unwrap_or(0);
        let site = Backtrace::force_capture().to_string();
        let _ = SITES.try_with(|s| {
            if let Ok(mut sites) = s.try_borrow_mut() {
                if sites.len() < SITES_KEPT {
                    sites.push(site);
                }
            }
        });
        let _ = ALLOCATIONS.try_with(|c| c.set(counted));
        let _ = RECORDING.try_with(|r| r.set(true));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only
// a const-initialised thread-local Cell, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from this allocator (System underneath) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Allocations (alloc, alloc_zeroed, realloc) made so far on the calling thread.
pub fn allocations() -> u64 {
    ALLOCATIONS.with(|c| c.get())
}

/// From now on, the calling thread's allocations are recorded with their backtraces (the
/// first few; see [`take_sites`]). Costs nothing until an allocation is made.
pub fn record_sites() {
    RECORDING.with(|r| r.set(true));
}

/// Stops recording on the calling thread and returns the backtraces recorded since
/// [`record_sites`] (the first few), oldest first.
pub fn take_sites() -> Vec<String> {
    RECORDING.with(|r| r.set(false));
    SITES.with(|s| std::mem::take(&mut *s.borrow_mut()))
}
