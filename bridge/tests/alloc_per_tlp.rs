//! Allocation-count regression check of the engine's per-TLP path (CI-fast, no wall-clock
//! asserts). A counting global allocator counts every allocation and reallocation made by the
//! threads that run the engine and the in-memory root port; the sample device runs on its own
//! thread, which is not counted. N posted MWrs, then N MRd round trips, go through the engine,
//! and the allocations per TLP must stay under the bounds below.
//!
//! The bounds were set just above what was measured (printed by this test with `--nocapture`;
//! see docs/performance.md, "Allocation regression check"). When an optimization lowers the
//! count, lower the bound with it; when a change raises it, that change has to say why.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bridge::bench::rig::{RC, config_write_tlp};
use bridge::engine::{Engine, EngineConfig, ServerEndpoint};
use sim::device::{DmaEngine, DmaEngineConfig, ServerConfig};
use tlp::Tlp;
use tlp::split::{RequestFields, SplitChunk, memory_read_tlp, memory_write_tlp};
use transports::link::{MemoryClock, RootPortEnd, memory_pair};

/// Allocations per posted MWr (root port → engine → REGION_WRITE with No_reply). Measured
/// 6.01 (2026-11-22, before any allocation work), 5.01 once `access_pieces` became an iterator,
/// 4.01 once the client's region chunks did too, 3.01 after later client work, 2.01 once the
/// engine stopped collecting a write's byte-enable runs into a `Vec`, 1.12 once the posted
/// dispatcher sent the writes already queued in one batch (one buffer per batch).
const MAX_ALLOCS_PER_POSTED_WRITE: f64 = 1.5;
/// Allocations per MRd round trip (MRd → REGION_READ → reply → CplD). Measured 16.00, then
/// 14.00 once single-piece requests skipped the per-request piece channel, 13.00 with the
/// `access_pieces` iterator, 10.00 after later client work, 7.00 once the engine kept the runs
/// as an iterator, used a whole-span reply as the read's data (no zeroed span and copy) and
/// sent completions as built (no `Vec<Tlp>`), 6.00 once CplDs were emitted straight from the
/// data (`ReadCompletions::next_bytes`, no payload `Vec`).
const MAX_ALLOCS_PER_READ: f64 = 6.5;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the device's thread: its allocations are the server's, not the bridge's.
    static NOT_COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if !NOT_COUNTED.try_with(Cell::get).unwrap_or(true) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

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

const BAR0: u64 = 0x8000_0000;
const SCRATCH: u64 = BAR0 + 0x30;
/// TLPs of each kind per measurement; `TLPBRIDGE_ALLOC_N` overrides it, so that instruction
/// counts per TLP can be taken as the difference of two runs under callgrind (docs/performance.md).
const DEFAULT_N: usize = 2_000;
const WARM_UP: usize = 200;

fn fields() -> RequestFields {
    RequestFields { requester: RC, tc: 0, attr: tlp::Attr::default() }
}

fn read(tag: u16) -> Vec<u8> {
    memory_read_tlp(&fields(), SplitChunk { address: SCRATCH, len: 4 }, tag, 4096).unwrap().to_bytes()
}

fn write(value: u32) -> Vec<u8> {
    memory_write_tlp(&fields(), SCRATCH, &value.to_le_bytes(), 4096).unwrap().to_bytes()
}

async fn next(end: &mut RootPortEnd) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(30), end.from_bridge.recv())
        .await
        .expect("bridge silent")
        .unwrap()
}

/// Sends `reads` (prebuilt) one at a time, each after the previous completion; returns the
/// last completion's bytes.
async fn round_trips(end: &mut RootPortEnd, reads: Vec<Vec<u8>>) -> Vec<u8> {
    let mut last = Vec::new();
    for bytes in reads {
        end.send_tlp(bytes).await.unwrap();
        last = next(end).await;
    }
    last
}

#[test]
fn engine_allocations_per_tlp_stay_bounded() {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let device = std::thread::spawn(move || {
        NOT_COUNTED.with(|c| c.set(true));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            theirs.set_nonblocking(true).unwrap();
            let stream = tokio::net::UnixStream::from_std(theirs).unwrap();
            let card = Arc::new(DmaEngine::new(DmaEngineConfig::default()).unwrap());
            let _ = sim::device::server::serve_connection(stream, card, &ServerConfig::default()).await;
        });
    });

    let n: usize = std::env::var("TLPBRIDGE_ALLOC_N").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_N);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (per_write, per_read) = runtime.block_on(async move {
        let (link, mut end) = memory_pair(MemoryClock::Wall, 256);
        let config =
            EngineConfig { device_timeout: Some(Duration::from_secs(10)), ..EngineConfig::default() };
        let engine = Engine::start(link, ServerEndpoint::Socket(ours.into()), config).await.unwrap();
        for (tag, register, value) in [(1, 0x10, BAR0 as u32), (2, 0x04, 0x0006)] {
            end.send_tlp(config_write_tlp(tag, register, value).to_bytes()).await.unwrap();
            next(&mut end).await;
        }

        // Warm-up: queues, maps and buffers reach their working size.
        for i in 0..WARM_UP {
            end.send_tlp(write(i as u32)).await.unwrap();
        }
        round_trips(&mut end, (0..WARM_UP).map(|i| read((i % 256) as u16)).collect()).await;

        let writes: Vec<Vec<u8>> = (0..n).map(|i| write(i as u32)).collect();
        let flush = vec![read(0)];
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for bytes in writes {
            end.send_tlp(bytes).await.unwrap();
        }
        // The read after the writes completes once every write reached the device.
        let last = round_trips(&mut end, flush).await;
        let after_writes = ALLOCATIONS.load(Ordering::Relaxed);
        assert_eq!(Tlp::parse(&last).unwrap().payload, ((n - 1) as u32).to_le_bytes());

        let reads: Vec<Vec<u8>> = (0..n).map(|i| read((i % 256) as u16)).collect();
        let before_reads = ALLOCATIONS.load(Ordering::Relaxed);
        let last = round_trips(&mut end, reads).await;
        let after_reads = ALLOCATIONS.load(Ordering::Relaxed);
        assert_eq!(Tlp::parse(&last).unwrap().payload, ((n - 1) as u32).to_le_bytes());

        let snapshot = engine.shutdown().await;
        assert_eq!(snapshot.device_timeouts + snapshot.malformed, 0);
        // The flush read is one round trip among N writes: counted with the writes.
        let per_write = (after_writes - before) as f64 / n as f64;
        let per_read = (after_reads - before_reads) as f64 / n as f64;
        (per_write, per_read)
    });
    device.join().unwrap();
    println!("allocations per posted MWr: {per_write:.2}, per MRd round trip: {per_read:.2}");
    assert!(per_write <= MAX_ALLOCS_PER_POSTED_WRITE, "{per_write:.2} allocations per posted MWr");
    assert!(per_read <= MAX_ALLOCS_PER_READ, "{per_read:.2} allocations per MRd round trip");
}
