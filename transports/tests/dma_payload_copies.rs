//! Regression check (CI-fast, no wall-clock asserts): the client moves a DMA's data without
//! copying it into buffers of its own. A counting global allocator logs every allocation of at
//! least `LARGE` bytes while one 1 MiB DMA_WRITE and one 1 MiB DMA_READ go through the client;
//! the only buffers of that size may be the ones that must hold the data once:
//! - DMA_WRITE: the received message's payload (header fields and data), handed to the handler
//!   as a slice (it was copied into a second buffer before).
//! - DMA_READ: the handler's result and the test server's receive buffer for the reply; the
//!   reply goes out from the handler's buffer with a vectored write (it was copied behind the
//!   header into a third buffer before).

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use support::*;
use transports::vfio_user::wire::{self, Command, DmaAccessRepr, MessageType};
use transports::vfio_user::{ClientConfig, DmaMode};

/// Bus address of the DMA window.
const MEM_BASE: u64 = 0x1_0000_0000;
const LEN: usize = 1 << 20;
/// Smaller than any buffer holding the data, larger than everything else the client allocates.
const LARGE: usize = LEN / 2;

struct Counting;

static LOGGING: AtomicBool = AtomicBool::new(false);
static LARGE_ALLOCATIONS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn note(size: usize) {
    // The log's own growth is far below LARGE, so this never recurses into itself.
    if size >= LARGE
        && LOGGING.load(Ordering::Relaxed)
        && let Ok(mut log) = LARGE_ALLOCATIONS.lock()
    {
        log.push(size);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; logging only reads the
// requested size.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn dma_data_is_not_copied_into_client_buffers() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let memory = Memory::new(MEM_BASE, LEN);
        let config = ClientConfig { dma: DmaMode::Windows(vec![memory.window()]), ..ClientConfig::default() };
        let (client, _events, mut peer) =
            connect(config, Hello::libvfio_user_like(8, 2 << 20, true), memory.clone()).await;
        let data: Vec<u8> = (0..LEN).map(|i| (i % 253) as u8).collect();

        // The test server's message is built before logging starts.
        let id = peer.next_id();
        let payload = DmaAccessRepr { address: MEM_BASE, count: LEN as u64 }.to_bytes_with(&data);
        let write =
            wire::encode_message(id, Command::DmaWrite, MessageType::Command, false, None, &payload).unwrap();
        let mut reply = None;
        let write_log = logged_async(async {
            peer.dma_socket().send(&write, &[]).await.unwrap();
            reply = Some(recv(peer.dma_socket()).await);
        })
        .await;
        let reply = reply.unwrap();
        assert_eq!((reply.header.id, reply.header.error), (id, None));
        assert!(*memory.bytes.lock().unwrap() == data, "the DMA_WRITE reached memory");
        println!("allocations of >= {LARGE} bytes during a {LEN}-byte DMA_WRITE: {write_log:?}");
        assert_eq!(write_log, vec![LEN + DmaAccessRepr::LEN], "only the received message's buffer");

        let id = peer.next_id();
        let read = wire::encode_message(
            id,
            Command::DmaRead,
            MessageType::Command,
            false,
            None,
            &DmaAccessRepr { address: MEM_BASE, count: LEN as u64 }.to_array(),
        )
        .unwrap();
        let mut reply = None;
        let read_log = logged_async(async {
            peer.dma_socket().send(&read, &[]).await.unwrap();
            reply = Some(recv(peer.dma_socket()).await);
        })
        .await;
        let reply = reply.unwrap();
        assert_eq!((reply.header.id, reply.header.error), (id, None));
        assert!(reply.payload[DmaAccessRepr::LEN..] == data[..], "the DMA_READ reply carries the data");
        println!("allocations of >= {LARGE} bytes during a {LEN}-byte DMA_READ: {read_log:?}");
        assert_eq!(
            read_log,
            vec![LEN, LEN + DmaAccessRepr::LEN],
            "only the handler's result and the test server's receive buffer"
        );
        client.close().await;
    });
}

/// The sizes of the large allocations made while `during` runs (the client's tasks run on the
/// same thread meanwhile, which is the point: their allocations are logged too).
async fn logged_async(during: impl std::future::Future<Output = ()>) -> Vec<usize> {
    LARGE_ALLOCATIONS.lock().unwrap().clear();
    LOGGING.store(true, Ordering::Relaxed);
    during.await;
    LOGGING.store(false, Ordering::Relaxed);
    std::mem::take(&mut *LARGE_ALLOCATIONS.lock().unwrap())
}
