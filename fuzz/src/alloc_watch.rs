//! A global allocator that remembers the largest single allocation (or reallocation) made by
//! the watching thread since its last [`reset`], so targets can assert "a frame decoder never
//! allocates more than the documented maximum". Only the thread that called [`reset`] is
//! watched: other threads of the process (the test harness printing another test's result, a
//! peer thread) cannot spoil the figure. One thread watches at a time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Watching;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set on the thread that called `reset`.
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

fn note(size: usize) {
    if WATCHED.try_with(Cell::get).unwrap_or(false) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the bookkeeping is a
// const-initialized thread-local read and one relaxed atomic max, and never allocates.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Watching = Watching;

/// Forgets the largest allocation seen so far and watches this thread's allocations from now on.
pub fn reset() {
    WATCHED.with(|watched| watched.set(true));
    LARGEST.store(0, Ordering::Relaxed);
}

/// The largest single allocation the watching thread made since the last [`reset`], in bytes.
pub fn largest() -> usize {
    LARGEST.load(Ordering::Relaxed)
}

/// Runs `f` and returns its result with the largest allocation it made.
pub fn largest_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    reset();
    let out = f();
    (out, largest())
}
