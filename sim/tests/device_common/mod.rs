//! Shared helpers for the device server tests: a server on a temporary socket, an in-memory
//! host memory behind the transports client, and eventfds.

#![allow(dead_code)]

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};
use sim::device::dma_engine::{irq_control, regs};
use sim::device::{DmaEngine, DmaEngineConfig, ServerConfig, server};
use tlp::config_space::{ConfigView, cap_id};
use tokio::sync::watch;
use transports::vfio_user::{Client, ClientConfig, DmaError, DmaHandler, DmaMode, DmaWindow};

pub const HOST_BASE: u64 = 0x1_0000_0000;
pub const HOST_SIZE: u64 = 0x10_0000;
pub const CONFIG: u32 = 7;

/// A running server; dropping it stops the server.
pub struct TestServer {
    pub path: PathBuf,
    pub card: Arc<DmaEngine>,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), sim::Error>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn start_server(config: ServerConfig) -> TestServer {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("debug").try_init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.sock");
    let listener = server::bind(&path).unwrap();
    let card = Arc::new(DmaEngine::new(DmaEngineConfig::default()).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sim::device::serve_listener(listener, card.clone(), config, async move {
        let _ = stopped.await;
    }));
    TestServer { path, card, _dir: dir, stop: Some(stop), task }
}

/// Host memory at `HOST_BASE`, with a gate that can hold DMA reads and a log of request sizes.
#[derive(Clone)]
pub struct HostMemory {
    pub bytes: Arc<Mutex<Vec<u8>>>,
    pub request_sizes: Arc<Mutex<Vec<usize>>>,
    pub gate: watch::Receiver<bool>,
}

impl HostMemory {
    pub fn new() -> (Self, watch::Sender<bool>) {
        let (open, gate) = watch::channel(true);
        let memory = Self {
            bytes: Arc::new(Mutex::new(vec![0; HOST_SIZE as usize])),
            request_sizes: Arc::new(Mutex::new(Vec::new())),
            gate,
        };
        (memory, open)
    }

    pub fn fill(&self, address: u64, data: &[u8]) {
        let at = (address - HOST_BASE) as usize;
        self.bytes.lock().unwrap()[at..at + data.len()].copy_from_slice(data);
    }

    pub fn get(&self, address: u64, len: usize) -> Vec<u8> {
        let at = (address - HOST_BASE) as usize;
        self.bytes.lock().unwrap()[at..at + len].to_vec()
    }
}

impl DmaHandler for HostMemory {
    async fn dma_read(&self, address: u64, len: usize) -> Result<Vec<u8>, DmaError> {
        let mut gate = self.gate.clone();
        let _ = gate.wait_for(|open| *open).await;
        self.request_sizes.lock().unwrap().push(len);
        let at = address.checked_sub(HOST_BASE).ok_or(DmaError::UnsupportedRequest)? as usize;
        self.bytes.lock().unwrap().get(at..at + len).map(<[u8]>::to_vec).ok_or(DmaError::UnsupportedRequest)
    }

    async fn dma_write(&self, address: u64, data: bytes::Bytes) -> Result<(), DmaError> {
        self.request_sizes.lock().unwrap().push(data.len());
        let at = address.checked_sub(HOST_BASE).ok_or(DmaError::UnsupportedRequest)? as usize;
        let mut bytes = self.bytes.lock().unwrap();
        let dst = bytes.get_mut(at..at + data.len()).ok_or(DmaError::UnsupportedRequest)?;
        dst.copy_from_slice(&data);
        Ok(())
    }
}

pub fn client_config(twin_socket: bool) -> ClientConfig {
    ClientConfig {
        twin_socket,
        max_data_xfer_size: 4096,
        dma: DmaMode::Windows(vec![DmaWindow::read_write(HOST_BASE, HOST_SIZE)]),
        ..ClientConfig::default()
    }
}

pub async fn connect(server: &TestServer, twin_socket: bool) -> (Client, HostMemory, watch::Sender<bool>) {
    let (memory, gate) = HostMemory::new();
    let (client, _events) =
        Client::connect(&server.path, client_config(twin_socket), memory.clone()).await.unwrap();
    (client, memory, gate)
}

pub fn eventfd() -> EventFd {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).unwrap()
}

/// Waits (bounded) until the eventfd was signalled; returns its counter.
pub async fn wait_eventfd(fd: &EventFd) -> u64 {
    for _ in 0..1000 {
        if let Ok(value) = fd.read() {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("interrupt eventfd not signalled within 5 s");
}

/// Whether the eventfd has been signalled (non-blocking).
pub fn eventfd_signalled(fd: &EventFd) -> bool {
    fd.read().is_ok()
}

pub async fn read_u32(client: &Client, region: u32, offset: u64) -> u32 {
    u32::from_le_bytes(client.region_read(region, offset, 4).await.unwrap().try_into().unwrap())
}

pub async fn write_u32(client: &Client, region: u32, offset: u64, value: u32) {
    client.region_write(region, offset, &value.to_le_bytes()).await.unwrap();
}

pub async fn write_u16(client: &Client, region: u32, offset: u64, value: u16) {
    client.region_write(region, offset, &value.to_le_bytes()).await.unwrap();
}

pub async fn config_image(client: &Client) -> Vec<u8> {
    client.config_read(0, 256).await.unwrap()
}

pub async fn cap_offset(client: &Client, id: u8) -> u64 {
    let bytes = config_image(client).await;
    let view = ConfigView::new(&bytes).unwrap();
    u64::from(view.find_capability(id).unwrap().unwrap().offset)
}

/// Memory space + bus master on.
pub async fn enable_device(client: &Client) {
    write_u16(client, CONFIG, 0x04, 0x0006).await;
}

/// Enables MSI (vector 0 only) and gives it an eventfd.
pub async fn enable_msi(client: &Client) -> EventFd {
    let msi = cap_offset(client, cap_id::MSI).await;
    write_u32(client, CONFIG, msi + 4, 0xfee0_0000).await;
    write_u16(client, CONFIG, msi + 0x0c, 0x0041).await;
    write_u16(client, CONFIG, msi + 2, 0x0001).await;
    let fd = eventfd();
    client.set_irqs_eventfds(transports::vfio_user::wire::irq_index::MSI, 0, &[fd.as_fd()]).await.unwrap();
    fd
}

/// Programs a copy with posted writes and rings the doorbell.
pub async fn start_copy(client: &Client, src: u64, dst: u64, len: u32, irq: u32) {
    let posted = |offset: u64, value: u32| async move {
        client.region_write_posted(0, offset, &value.to_le_bytes()).await.unwrap();
    };
    // The 64-bit source goes in one 8-byte access; the destination as two dwords.
    client.region_write_posted(0, regs::SRC_LO, &src.to_le_bytes()).await.unwrap();
    posted(regs::DST_LO, dst as u32).await;
    posted(regs::DST_HI, (dst >> 32) as u32).await;
    posted(regs::LENGTH, len).await;
    posted(regs::IRQ_CONTROL, irq).await;
    posted(regs::DOORBELL, 1).await;
}

pub fn msi_vector(vector: u32) -> u32 {
    irq_control::ENABLE
        | (irq_control::MODE_MSI << irq_control::MODE_SHIFT)
        | (vector << irq_control::VECTOR_SHIFT)
}

pub fn msix_vector(vector: u32) -> u32 {
    irq_control::ENABLE
        | (irq_control::MODE_MSIX << irq_control::MODE_SHIFT)
        | (vector << irq_control::VECTOR_SHIFT)
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}
