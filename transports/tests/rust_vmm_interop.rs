//! Interoperability with an independent implementation: rust-vmm's `vfio_user` crate `Server`
//! (a blocking, single-connection server) with a small in-memory `ServerBackend`.
//!
//! That server cannot send DMA_READ/DMA_WRITE (rust-vmm/vfio #146) and offers no twin socket,
//! so this covers negotiation fallback, queries, region access, posted writes, SET_IRQS fd
//! chunking at its `max_msg_fds` of 1, DMA_MAP without fd, reset and error replies.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use transports::Error;
use transports::vfio_user::wire::{Command, irq_set_flags};
use transports::vfio_user::{Client, ClientConfig, DmaWindow, NoDma, RegionCap, SparseArea};
use vfio_bindings::bindings::vfio::{vfio_region_info, vfio_region_sparse_mmap_area};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion};

const BAR0_SIZE: u64 = 0x1000;
const CONFIG_SIZE: u64 = 256;
const IRQ_COUNTS: [u32; 5] = [1, 1, 4, 1, 1];

#[derive(Default)]
struct State {
    bar0: Vec<u8>,
    config: Vec<u8>,
    /// (flags, offset, address, size, fd passed)
    dma_maps: Vec<(u32, u64, u64, u64, bool)>,
    dma_unmaps: Vec<(u64, u64)>,
    /// (index, flags, start, count, fds)
    irq_sets: Vec<(u32, u32, u32, u32, usize)>,
    resets: usize,
}

struct Backend {
    state: Arc<Mutex<State>>,
}

fn out_of_range() -> std::io::Error {
    std::io::Error::from_raw_os_error(22) // EINVAL
}

impl Backend {
    fn region(state: &mut State, region: u32, offset: u64, len: usize) -> std::io::Result<&mut [u8]> {
        let backing = match region {
            0 => &mut state.bar0,
            7 => &mut state.config,
            _ => return Err(out_of_range()),
        };
        let start = offset as usize;
        backing.get_mut(start..start + len).ok_or_else(out_of_range)
    }
}

impl ServerBackend for Backend {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), std::io::Error> {
        let mut state = self.state.lock().unwrap();
        data.copy_from_slice(Self::region(&mut state, region, offset, data.len())?);
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut state = self.state.lock().unwrap();
        Self::region(&mut state, region, offset, data.len())?.copy_from_slice(data);
        Ok(())
    }

    fn dma_map(
        &mut self,
        flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> Result<(), std::io::Error> {
        self.state.lock().unwrap().dma_maps.push((flags.bits(), offset, address, size, fd.is_some()));
        Ok(())
    }

    fn dma_unmap(&mut self, _flags: DmaUnmapFlags, address: u64, size: u64) -> Result<(), std::io::Error> {
        self.state.lock().unwrap().dma_unmaps.push((address, size));
        Ok(())
    }

    fn reset(&mut self) -> Result<(), std::io::Error> {
        self.state.lock().unwrap().resets += 1;
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> Result<(), std::io::Error> {
        self.state.lock().unwrap().irq_sets.push((index, flags, start, count, fds.len()));
        Ok(())
    }
}

fn region(index: u32, size: u64, sparse: bool) -> ServerRegion {
    let flags = if size > 0 { 0b11 } else { 0 }; // READ | WRITE
    ServerRegion {
        region_info: vfio_region_info { argsz: 32, flags, index, cap_offset: 0, size, offset: 0 },
        sparse_areas: if sparse {
            vec![vfio_user::SparseArea { area: vfio_region_sparse_mmap_area { offset: 0, size } }]
        } else {
            Vec::new()
        },
        mmap_fd: None,
    }
}

fn socket_path() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "transports-rust-vmm-{}-{}.sock",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ))
}

/// Starts the rust-vmm server on a thread; returns its state and the thread.
fn start_server(path: &Path) -> (Arc<Mutex<State>>, std::thread::JoinHandle<()>) {
    let state = Arc::new(Mutex::new(State {
        bar0: vec![0; BAR0_SIZE as usize],
        config: (0..CONFIG_SIZE).map(|i| i as u8).collect(),
        ..Default::default()
    }));
    let regions = (0..9)
        .map(|index| match index {
            0 => region(0, BAR0_SIZE, true),
            7 => region(7, CONFIG_SIZE, false),
            other => region(other, 0, false),
        })
        .collect();
    let irqs = IRQ_COUNTS
        .iter()
        .enumerate()
        .map(|(index, &count)| IrqInfo { index: index as u32, flags: 1, count })
        .collect();
    let server = Server::new(path, true, irqs, regions).expect("rust-vmm server binds");
    let mut backend = Backend { state: state.clone() };
    let thread = std::thread::spawn(move || {
        // Returns when the client closes the connection.
        let _ = server.run(&mut backend);
    });
    (state, thread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_interoperates_with_rust_vmm_server() {
    let path = socket_path();
    let (state, server_thread) = start_server(&path);
    let (client, _events) = Client::connect(&path, ClientConfig::default(), NoDma).await.unwrap();

    // Negotiation: rust-vmm answers 0.0 with max_msg_fds 1 and no twin socket.
    let negotiated = client.negotiated().clone();
    assert_eq!((negotiated.major, negotiated.minor), (0, 0));
    assert!(!negotiated.twin_socket);
    assert_eq!(negotiated.server.max_msg_fds, 1);
    assert_eq!(negotiated.server.max_data_xfer_size, 1 << 20);
    assert!(negotiated.server.migration.is_some());

    // Queries, as `tlpbridge probe` issues them.
    let info = client.device_info().await.unwrap();
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));
    assert!(info.is_pci() && info.resettable());
    let bar0 = client.region_info(0).await.unwrap();
    assert_eq!(bar0.size, BAR0_SIZE);
    assert_eq!(bar0.caps, vec![RegionCap::SparseMmap(vec![SparseArea { offset: 0, size: BAR0_SIZE }])]);
    for index in 1..info.num_regions {
        let region = client.region_info(index).await.unwrap();
        let expected = if index == 7 { CONFIG_SIZE } else { 0 };
        assert_eq!(region.size, expected, "region {index}");
    }
    for index in 0..info.num_irqs {
        assert_eq!(client.irq_info(index).await.unwrap().count, IRQ_COUNTS[index as usize]);
    }
    let config_space = client.config_read(0, CONFIG_SIZE as usize).await.unwrap();
    assert_eq!(config_space, state.lock().unwrap().config);

    // Region access, pipelined from several tasks, then posted writes read back.
    let mut writers = Vec::new();
    for i in 0..8u64 {
        let client = client.clone();
        writers.push(tokio::spawn(async move { client.region_write(0, i * 16, &[i as u8; 16]).await }));
    }
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    for i in 0..8u32 {
        client.region_write_posted(0, 0x800 + u64::from(i) * 4, &i.to_le_bytes()).await.unwrap();
    }
    let first = client.region_read(0, 0, 128).await.unwrap();
    assert_eq!(first, (0..8u8).flat_map(|i| [i; 16]).collect::<Vec<_>>());
    let posted = client.region_read(0, 0x800, 32).await.unwrap();
    assert_eq!(posted, (0..8u32).flat_map(|i| i.to_le_bytes()).collect::<Vec<_>>());

    // Eventfds: the server takes one fd per message, so three vectors take three messages.
    let eventfds: Vec<File> = (0..3).map(|_| File::open("/dev/null").unwrap()).collect();
    let borrowed: Vec<_> = eventfds.iter().map(|f| f.as_fd()).collect();
    client.set_irqs_eventfds(2, 0, &borrowed).await.unwrap();
    let trigger = irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER;
    assert_eq!(
        state.lock().unwrap().irq_sets,
        vec![(2, trigger, 0, 1, 1), (2, trigger, 1, 1, 1), (2, trigger, 2, 1, 1)]
    );

    // DMA windows without fd.
    let window = DmaWindow::read_write(0x1_0000_0000, 0x10_0000);
    client.dma_map(window).await.unwrap();
    client.dma_unmap(window).await.unwrap();
    assert_eq!(state.lock().unwrap().dma_maps, vec![(0b11, 0, 0x1_0000_0000, 0x10_0000, false)]);
    assert_eq!(state.lock().unwrap().dma_unmaps, vec![(0x1_0000_0000, 0x10_0000)]);

    // An error reply carries the errno and leaves the connection usable.
    match client.region_read(5, 0, 4).await {
        Err(Error::Server { command, .. }) => assert_eq!(command, Command::RegionRead),
        other => panic!("expected an error reply, got {other:?}"),
    }
    client.reset().await.unwrap();
    assert_eq!(state.lock().unwrap().resets, 1);
    assert!(client.disconnect_reason().is_none());

    client.close().await;
    tokio::task::spawn_blocking(move || server_thread.join().unwrap()).await.unwrap();
    let _ = std::fs::remove_file(&path);
}
