//! Allocation-count regression check of the bridge's DMA path (CI-fast, no wall-clock asserts):
//! copies of 64 KiB by the sample card through the bench rig (load generator on a real sim
//! link, sample device on a real vfio-user socket), at the card's reset MPS 128 B / MRRS 512 B,
//! where a copy is about 1 150 TLPs: MRds out, CplDs in, MWrs out, and the MSI. Only the
//! bridge's own runtime thread is counted (a task spawned on it sets a thread-local flag); load
//! generator and device run on the test's thread, which is not. The allocations per TLP the
//! bridge handles must stay under the bound below (docs/performance.md, "Fifth round").
//!
//! Its own test binary: the counting allocator sees the whole process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bridge::bench::rig::Rig;
use bridge::engine::{CountersSnapshot, EngineConfig};

/// Allocations per TLP the bridge sends or receives during a copy. Measured 1.26 (2026-11-22)
/// with a `Vec` per received CplD's payload, 0.81 once the link reader parsed completions into
/// one reused payload buffer (`Tlp::parse_reusing`); what is left is mostly one `Vec` per MWr
/// and a few per MRd (its bytes, its reassembly buffer, its completion channel).
const MAX_ALLOCS_PER_DMA_TLP: f64 = 0.95;

const LEN: u32 = 64 << 10;
const SRC: u64 = 0;
const DST: u64 = 2 << 20;
const WARM_UP: usize = 4;
const COPIES: usize = 24;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the bridge's runtime thread only.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only an
// atomic and a const-initialized thread-local (neither allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn tlps(snapshot: &CountersSnapshot) -> u64 {
    snapshot.tlps_in.iter().chain(&snapshot.tlps_out).sum()
}

#[test]
fn bridge_allocations_per_dma_tlp_stay_bounded() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (per_tlp, tlps_per_copy) = runtime.block_on(async {
        let config =
            EngineConfig { device_timeout: Some(Duration::from_secs(10)), ..EngineConfig::default() };
        let mut rig = Rig::start(config, 1, "alloc").await.unwrap();
        // One worker: this task runs on the bridge's only thread.
        rig.bridge_runtime().spawn(async { COUNTED.with(|c| c.set(true)) }).await.unwrap();
        rig.port.fill_host(SRC as usize, LEN as usize);
        for _ in 0..WARM_UP {
            rig.port.copy(SRC, DST, LEN).await.unwrap();
        }
        let (allocations, before) = (ALLOCATIONS.load(Ordering::Relaxed), rig.counters());
        for _ in 0..COPIES {
            rig.port.copy(SRC, DST, LEN).await.unwrap();
        }
        let (allocated, after) = (ALLOCATIONS.load(Ordering::Relaxed) - allocations, rig.counters());
        assert!(
            rig.port.host(SRC as usize, LEN as usize) == rig.port.host(DST as usize, LEN as usize),
            "the copies arrived"
        );
        let snapshot = rig.stop().await;
        assert_eq!(snapshot.device_timeouts + snapshot.completion_timeouts + snapshot.malformed, 0);
        assert!(allocated > 0, "the bridge's thread was counted");
        let handled = tlps(&after) - tlps(&before);
        (allocated as f64 / handled as f64, handled as f64 / COPIES as f64)
    });
    println!("{tlps_per_copy:.0} TLPs per {LEN}-byte copy; allocations per TLP: {per_tlp:.2}");
    assert!(tlps_per_copy > 1000.0, "{tlps_per_copy} TLPs per copy: not the MPS 128 split");
    assert!(per_tlp <= MAX_ALLOCS_PER_DMA_TLP, "{per_tlp:.2} allocations per DMA TLP");
}
