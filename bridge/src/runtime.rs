//! The async runtime a bridge (or sample device, or root complex) process runs on.
//!
//! One thread by default: the bridge is a pipeline (link reader → engine → vfio-user socket and
//! back) in which every hand-off between tasks on different worker threads costs a cross-thread
//! wakeup (a futex and often an idle CPU woken). On one thread those hand-offs are plain task
//! switches. Measured in `tlpbridge bench` (docs/performance.md, "Fourth round"): MMIO read
//! latency and DMA throughput were better with one thread than with two; the rate of
//! back-to-back posted writes was better with two (reader and posted dispatcher in parallel).
//! In a co-simulation of three processes (sample device, bridge, reference root complex) one
//! thread each for bridge and device was faster for MMIO reads and DMA copies.

use tokio::runtime::{Builder, Runtime};

/// Worker threads of `tlpbridge run` and `tlpbridge sim device` unless `--threads` says
/// otherwise. (`tlpbridge sim rc` keeps two: no difference was measured for it.)
pub const DEFAULT_THREADS: usize = 1;

/// A runtime with `threads` worker threads: 1 gives a current-thread runtime (driven by the
/// thread that calls `block_on`), more a multi-threaded one. `name` names its threads.
pub fn build(threads: usize, name: &str) -> std::io::Result<Runtime> {
    if threads > 1 {
        Builder::new_multi_thread().worker_threads(threads).thread_name(name).enable_all().build()
    } else {
        Builder::new_current_thread().thread_name(name).enable_all().build()
    }
}
