//! Regression check (CI-fast, no wall-clock asserts): the sample device moves its DMA data
//! without copying it into buffers of its own. The device server runs on a thread of its own
//! whose allocations of at least `LARGE` bytes are logged by a global allocator; the client
//! (the test thread) is not watched. One copy of `LEN` bytes by the card, each direction one
//! message: the device's only buffer of that size may be the one its DMA_READ reply is received
//! into (before: also the read's data gathered out of it, the DMA_WRITE payload and the
//! encoded DMA_WRITE message).

mod device_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use device_common::*;
use sim::device::dma_engine::{regs, status};
use sim::device::{DmaEngine, DmaEngineConfig, ServerConfig, server};
use transports::vfio_user::{Client, ClientConfig, DmaMode, DmaWindow};

const LEN: usize = 512 << 10;
/// Smaller than any buffer holding the data, larger than everything else the device allocates.
const LARGE: usize = LEN / 2;

struct Logging;

static LOGGING: AtomicBool = AtomicBool::new(false);
static LARGE_ALLOCATIONS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

thread_local! {
    /// Set on the device server's thread.
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

fn note(size: usize) {
    // The log's own growth is far below LARGE, so this never recurses into itself.
    if size >= LARGE
        && LOGGING.load(Ordering::Relaxed)
        && WATCHED.try_with(Cell::get).unwrap_or(false)
        && let Ok(mut log) = LARGE_ALLOCATIONS.lock()
    {
        log.push(size);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; logging only reads the
// requested size.
unsafe impl GlobalAlloc for Logging {
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
static GLOBAL: Logging = Logging;

#[test]
fn the_device_copies_no_dma_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.sock");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server_path = path.clone();
    let device = std::thread::spawn(move || {
        WATCHED.with(|watched| watched.set(true));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = server::bind(&server_path).unwrap();
            ready_tx.send(()).unwrap();
            let card = std::sync::Arc::new(DmaEngine::new(DmaEngineConfig::default()).unwrap());
            sim::device::serve_listener(listener, card, ServerConfig::default(), async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
    });
    ready_rx.recv().unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let log = runtime.block_on(async {
        let (memory, _gate) = HostMemory::new();
        // One message per direction: the client takes transfers of the whole copy.
        let config = ClientConfig {
            max_data_xfer_size: LEN as u32,
            dma: DmaMode::Windows(vec![DmaWindow::read_write(HOST_BASE, HOST_SIZE)]),
            ..ClientConfig::default()
        };
        let (client, _events) = Client::connect(&path, config, memory.clone()).await.unwrap();
        enable_device(&client).await;
        let msi = enable_msi(&client).await;
        let (src, dst) = (HOST_BASE, HOST_BASE + LEN as u64);
        let data = pattern(LEN, 3);
        memory.fill(src, &data);

        LARGE_ALLOCATIONS.lock().unwrap().clear();
        LOGGING.store(true, Ordering::Relaxed);
        start_copy(&client, src, dst, LEN as u32, msi_vector(0)).await;
        assert_eq!(wait_eventfd(&msi).await, 1);
        LOGGING.store(false, Ordering::Relaxed);

        assert_eq!(read_u32(&client, 0, regs::STATUS).await, status::DONE);
        assert!(memory.get(dst, LEN) == data, "the copy arrived");
        assert_eq!(*memory.request_sizes.lock().unwrap(), vec![LEN, LEN], "one message each way");
        client.close().await;
        std::mem::take(&mut *LARGE_ALLOCATIONS.lock().unwrap())
    });
    let _ = stop.send(());
    device.join().unwrap();
    println!("the device's allocations of >= {LARGE} bytes during a {LEN}-byte copy: {log:?}");
    assert_eq!(log, vec![LEN + 16], "only the buffer the DMA_READ reply is received into");
}
