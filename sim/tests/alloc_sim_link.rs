//! Allocation regression check for the bridge side of the sim link (issue #8,
//! docs/performance.md "Fourth round"): TLP frames read from the simulator reach `Link::rx`
//! as slices of the reader's buffer, without an allocation per TLP.
//!
//! Its own test binary: the counting allocator sees the whole process. Everything runs on one
//! current-thread runtime; the simulator end writes its frames into a reused buffer, so the
//! allocations counted are the bridge side's (and the channel's, amortized).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use sim::link::{BridgeConfig, SimListener, SimulatorConfig, SimulatorEnd};
use transports::link::{Link, LinkInput};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations per TLP received by the bridge side. Measured 1.000 (2026-11-22) when every
/// decoded frame copied its TLP into a `Vec`, 0.003 once the TLP became a slice of the read
/// buffer (the rest: a new buffer when earlier TLPs still share the old one as it fills, and
/// the channel's blocks).
const MAX_ALLOCS_PER_TLP: f64 = 0.25;

/// An MWr of 64 bytes to 0x8000_0000 (3 DW header + 16 DW), as a burst of DMA data would be.
fn mwr() -> Vec<u8> {
    let mut tlp = vec![0x40, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0xff, 0x80, 0x00, 0x00, 0x00];
    tlp.extend((0..64u8).map(|i| i.wrapping_mul(7)));
    tlp
}

/// Sends `bursts` bursts of `burst` copies of `tlp` (one write each) and receives every one.
async fn send_and_receive(end: &mut SimulatorEnd, link: &mut Link, tlp: &[u8], burst: usize, bursts: usize) {
    for _ in 0..bursts {
        for _ in 0..burst {
            end.queue_tlp(tlp).unwrap();
        }
        end.flush().await.unwrap();
        for _ in 0..burst {
            match link.rx.recv().await {
                Some(LinkInput::Tlp(received)) => assert_eq!(received.bytes, tlp),
                other => panic!("expected a TLP, got {other:?}"),
            }
        }
    }
}

#[test]
fn received_tlps_are_not_copied_into_allocations_of_their_own() {
    const BURST: usize = 64;
    const BURSTS: usize = 64;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let per_tlp = runtime.block_on(async {
        let listener = SimListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (bridge_config, sim_config) = (BridgeConfig::default(), SimulatorConfig::default());
        let (link, end) =
            tokio::join!(listener.accept_bridge(&bridge_config), SimulatorEnd::connect(&addr, &sim_config));
        let (mut link, mut end) = (link.unwrap(), end.unwrap());
        // The link reports itself up first.
        assert!(matches!(link.rx.recv().await, Some(LinkInput::Event { .. })));
        let tlp = mwr();
        send_and_receive(&mut end, &mut link, &tlp, BURST, 8).await;
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        send_and_receive(&mut end, &mut link, &tlp, BURST, BURSTS).await;
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        (after - before) as f64 / (BURST * BURSTS) as f64
    });
    println!("allocations per TLP received over the sim link: {per_tlp:.3}");
    assert!(per_tlp <= MAX_ALLOCS_PER_TLP, "{per_tlp:.3} allocations per received TLP");
}
