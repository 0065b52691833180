//! The bridge engine: a root-port link on one side, a vfio-user device on the other.
//!
//! See `docs/design.md` for the tasks, queues, ordering rules, timeouts and resets. In short:
//! [`Engine::start`] connects to the server, reads the device's layout, maps DMA windows,
//! assigns interrupt eventfds and spawns the link reader, the posted and non-posted
//! dispatchers, the interrupt task and the control task (resets, server events). Everything is
//! owned by the [`Engine`] and stopped by [`Engine::shutdown`].

pub mod config;
pub mod counters;
mod dma;
pub mod error;
pub mod function;
mod interrupts;
pub mod link_spec;
mod requests;
mod tags;
mod tx;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use tlp::split::LinkParams;
use tlp::{MessageCode, MsgRouting};
use transports::link::{Link, LinkClock};
use transports::vfio_user::wire::irq_index;
use transports::vfio_user::{Client, ClientConfig, ClientEvent, DmaWindow, EventReceiver};

pub use config::{
    AccessSplit, DEFAULT_DMA_REACH, DmaWindows, EngineConfig, MAX_DMA_WINDOW, ServerEndpoint,
    WHOLE_BUS_WINDOW,
};
pub use counters::{Counters, CountersSnapshot};
pub use error::{BridgeError, Result};
pub use link_spec::{LinkKind, LinkRegistry, LinkSpec};

use function::{DeviceLayout, FunctionState};
use interrupts::{IrqCommand, IrqShared};
use requests::{LinkReader, ReaderExit};
use tags::TagTable;
use tx::TxQueue;

/// Why the device is being reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetKind {
    /// Function Level Reset (Device Control bit 15): the captured bus/device number is kept.
    Flr,
    HotReset,
    LinkDown,
}

/// Requests to the control task.
#[derive(Debug)]
pub(crate) enum Control {
    Reset(ResetKind),
}

/// State every engine task shares.
pub(crate) struct Shared {
    pub config: EngineConfig,
    pub counters: Arc<Counters>,
    pub tx: TxQueue,
    pub clock: LinkClock,
    pub tags: TagTable,
    pub cpl_timeout: Duration,
    pub device_timeout: Duration,
    /// The server's max_data_xfer_size (set once connected).
    max_xfer: AtomicU32,
    pub control: mpsc::Sender<Control>,
    pub irq_commands: mpsc::Sender<IrqCommand>,
    function: Mutex<FunctionState>,
    irq: Mutex<IrqShared>,
    /// The connection to the server: `None` until the first one, replaced when the engine
    /// reconnects to a restarted server. Tasks take a clone per request.
    client: Mutex<Option<Client>>,
}

impl Shared {
    /// The function state. Never held across an await, and never together with [`Shared::irq`].
    pub(crate) fn function(&self) -> MutexGuard<'_, FunctionState> {
        self.function.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The largest region access the server takes in one message.
    pub(crate) fn max_xfer(&self) -> u32 {
        self.max_xfer.load(Ordering::Relaxed).max(1)
    }

    pub(crate) fn irq(&self) -> MutexGuard<'_, IrqShared> {
        self.irq.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current server connection (a cheap clone).
    pub(crate) fn client(&self) -> Option<Client> {
        self.client.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_client(&self, client: Option<Client>) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = client;
    }

    /// Hands the asynchronous half of a reset to the control task. Never waits: a full queue
    /// already holds a reset, whose asynchronous half (fail DMA, DEVICE_RESET, re-arm) covers
    /// this one too, and the link reader must not stall behind a reconnecting control task.
    pub(crate) fn request_reset(&self, kind: ResetKind) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.control.try_send(Control::Reset(kind)) {
            debug!(?kind, "a reset is already pending; this one is folded into it");
        }
    }

    /// The synchronous half of a reset: from now on config requests get CRS and nothing
    /// decodes; the control task does the rest.
    pub(crate) fn begin_reset(&self, kind: ResetKind) {
        let table_size = {
            let mut f = self.function();
            f.reset(kind == ResetKind::Flr);
            f.ready = false;
            f.msix.map_or(0, |m| m.table_size)
        };
        self.irq().reset(table_size);
    }
}

pub(crate) async fn wait_shutdown(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A running bridge.
pub struct Engine {
    shared: Arc<Shared>,
    link: Link,
    tasks: JoinSet<()>,
    /// The reader, the dispatchers and their completion tasks: stopped first, drained.
    request_tasks: JoinSet<()>,
    shutdown: watch::Sender<bool>,
    /// Set when the engine stops on its own (link closed, server gone).
    exit: watch::Receiver<Option<Arc<BridgeError>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("link", &self.link).finish_non_exhaustive()
    }
}

impl Engine {
    /// Connects to the server, reads the device, and starts bridging `link`. While connecting,
    /// config requests from the link get CRS and other non-posted requests UR.
    pub async fn start(mut link: Link, server: ServerEndpoint, config: EngineConfig) -> Result<Engine> {
        config.validate()?;
        let counters = Arc::new(Counters::default());
        let clock = link.clock.clone();
        let simulated = clock.is_simulated();
        if let Some(capture) = config.capture.clone() {
            // A link that replays TLPs below the transaction layer (the FPGA serial link's data
            // link layer): each resend is a record of its own, flagged retransmitted.
            let retransmitted = crate::capture::TlpFlags { retransmitted: true, ..Default::default() };
            link.retransmits.observe(move |tlp, time| {
                capture.tlp(crate::capture::Direction::Outbound, time, retransmitted, tlp);
            });
        }
        let (_closed, placeholder) = mpsc::channel(1);
        let link_rx = std::mem::replace(&mut link.rx, placeholder);
        let (control_tx, control_rx) = mpsc::channel(8);
        let (irq_tx, irq_rx) = mpsc::channel(256);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (exit_tx, exit) = watch::channel(None);
        let link_params = LinkParams::new(config.mps, config.mrrs, config.rcb)
            .map_err(|e| BridgeError::InvalidConfig(e.to_string()))?;
        let blank = DeviceLayout { config: vec![0; 256], region_sizes: [0; 7] };
        let unconnected = FunctionState::new(&blank, config.initial_id, link_params, config.ten_bit_tags)
            .map_err(BridgeError::UnsupportedDevice)?;
        let shared = Arc::new(Shared {
            cpl_timeout: config.completion_timeout(),
            device_timeout: config.device_timeout(simulated),
            config: config.clone(),
            tags: TagTable::new(counters.clone()),
            tx: TxQueue::new(link.tx.clone(), counters.clone())
                .with_capture(config.capture.clone(), clock.clone()),
            counters,
            clock,
            max_xfer: AtomicU32::new(0),
            control: control_tx,
            irq_commands: irq_tx.clone(),
            function: Mutex::new(unconnected),
            irq: Mutex::new(IrqShared::default()),
            client: Mutex::new(None),
        });
        let exit_tx = Arc::new(exit_tx);
        let (posted_tx, posted_rx) = mpsc::channel(config.posted_queue_depth);
        let (np_tx, np_rx) = mpsc::channel(config.non_posted_queue_depth);
        let mut request_tasks = JoinSet::new();
        // The reader runs from the start so that the root port gets CRS while we connect.
        let reader = LinkReader {
            shared: shared.clone(),
            posted: posted_tx,
            non_posted: np_tx,
            posted_count: 0,
            progress: link.progress.clone(),
            payload_buffer: Vec::new(),
        };
        let reader_exit = exit_tx.clone();
        let link_name = link.info.description.clone();
        let reader_shutdown = shutdown_rx.clone();
        let reader_shared = shared.clone();
        request_tasks.spawn(async move {
            if reader.run(link_rx, reader_shutdown).await == ReaderExit::LinkClosed {
                warn!(link = %link_name, "link closed");
                // Nothing completes on a closed link: fail the device's DMA reads now, so that
                // their error replies are on their way before anyone stops the engine.
                reader_shared.tags.release_all();
                reader_exit.send_replace(Some(Arc::new(BridgeError::LinkClosed(link_name))));
            }
        });
        let stop = |mut tasks: JoinSet<()>, shutdown: watch::Sender<bool>| async move {
            shutdown.send_replace(true);
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        };

        let handler = dma::DmaBridge { shared: shared.clone() };
        let server_path = match &server {
            ServerEndpoint::Path(path) => Some(path.clone()),
            ServerEndpoint::Socket(_) => None,
        };
        let (client, events) =
            match connect(server, config.connect_window, &config, shared.device_timeout, handler).await {
                Ok(c) => c,
                Err(e) => {
                    stop(request_tasks, shutdown).await;
                    return Err(e);
                }
            };
        shared.max_xfer.store(client.negotiated().server.max_data_xfer_size, Ordering::Relaxed);
        let layout = match read_layout(&client).await {
            Ok(layout) => layout,
            Err(e) => {
                client.close().await;
                stop(request_tasks, shutdown).await;
                return Err(e);
            }
        };
        let function =
            match FunctionState::new(&layout.device, config.initial_id, link_params, config.ten_bit_tags) {
                Ok(f) if config.io_bars_as_memory => f.with_io_bars_as_memory(),
                Ok(f) => f,
                Err(e) => {
                    client.close().await;
                    stop(request_tasks, shutdown).await;
                    return Err(BridgeError::UnsupportedDevice(e));
                }
            };
        let table_size = function.msix.map_or(0, |m| m.table_size);
        shared.irq().reset(table_size);

        let mut tasks = JoinSet::new();
        let irq_fds = match setup_eventfds(&layout, &function, &mut tasks, &irq_tx, &shutdown_rx) {
            Ok(fds) => fds,
            Err(e) => {
                client.close().await;
                stop(request_tasks, shutdown).await;
                return Err(e);
            }
        };
        {
            let mut f = shared.function();
            *f = function;
            f.ready = true;
        }
        let (intx, msi, msix) = irq_fds;
        let reconnect = match (server_path, config.reconnect_window) {
            (Some(path), Some(window)) => {
                Some(Reconnect { path, window, identity: DeviceIdentity::of(&layout) })
            }
            _ => None,
        };
        shared.set_client(Some(client));
        let irq_task = interrupts::InterruptTask::new(shared.clone(), intx, msi, msix);
        tasks.spawn(irq_task.run(irq_rx, shutdown_rx.clone()));
        let _ = irq_tx.try_send(IrqCommand::Reconfigure);
        // With the request tasks: shutdown waits for it, so that a reset already requested (a
        // link that went down as it closed) reaches the server before the connection closes.
        request_tasks.spawn(control_task(
            shared.clone(),
            control_rx,
            events,
            exit_tx.clone(),
            shutdown_rx.clone(),
            reconnect,
        ));
        let (posted_done_tx, posted_done_rx) = watch::channel(0u64);
        request_tasks.spawn(requests::posted_dispatcher(shared.clone(), posted_rx, posted_done_tx));
        request_tasks.spawn(requests::non_posted_dispatcher(shared.clone(), np_rx, posted_done_rx));
        let (bars, msi, msix) = {
            let f = shared.function();
            (f.bars.clone(), f.msi.is_some(), f.msix.is_some())
        };
        info!(
            link = %link.info.description,
            ?bars,
            msi,
            msix,
            device_timeout = ?shared.device_timeout,
            completion_timeout = ?shared.cpl_timeout,
            "bridge running"
        );
        Ok(Engine { shared, link, tasks, request_tasks, shutdown, exit })
    }

    /// The live counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    /// Tags busy or quarantined (outstanding device DMA reads).
    pub fn tags_in_use(&self) -> usize {
        self.shared.tags.in_use()
    }

    /// The current vfio-user connection (for diagnostics; the engine owns it). `None` once
    /// shut down.
    pub fn client(&self) -> Option<Client> {
        self.shared.client()
    }

    /// Completes when the engine stops on its own (link closed, server disconnected), with why.
    pub async fn stopped(&mut self) -> Arc<BridgeError> {
        loop {
            if let Some(reason) = self.exit.borrow_and_update().clone() {
                return reason;
            }
            if self.exit.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops the engine: the reader stops taking TLPs, requests already queued are answered
    /// (each bounded by the device timeout, all by `shutdown_grace`), then every task ends and
    /// the connection closes. Returns the final counters.
    pub async fn shutdown(mut self) -> CountersSnapshot {
        self.shutdown.send_replace(true);
        let grace =
            tokio::time::Instant::now() + self.shared.config.shutdown_grace + self.shared.device_timeout;
        while !self.request_tasks.is_empty() {
            match tokio::time::timeout_at(grace, self.request_tasks.join_next()).await {
                Ok(result) => self.shared.counters.joined(result),
                Err(_) => self.request_tasks.abort_all(),
            }
        }
        self.shared.tags.abort_all(self.shared.clock.now());
        if let Some(client) = self.shared.client() {
            // The failed DMA's error replies reach the server before the connection closes.
            if !client.flush_dma_replies(self.shared.config.shutdown_grace).await {
                warn!(
                    "device DMA still unanswered at shutdown; the server sees the connection close instead"
                );
            }
            client.close().await;
            self.shared.counters.add_client_stats(&client.stats());
        }
        self.shared.set_client(None);
        self.tasks.abort_all();
        while let Some(result) = self.tasks.join_next().await {
            self.shared.counters.joined(Some(result));
        }
        let snapshot = self.shared.counters.snapshot();
        info!(counters = %snapshot, "bridge stopped");
        drop(self.link);
        snapshot
    }
}

/// What the engine learns from the device at start.
struct Layout {
    device: DeviceLayout,
    /// IRQ counts for INTx, MSI, MSI-X (0 when the index does not exist).
    irq_counts: [u32; 3],
}

async fn connect(
    server: ServerEndpoint,
    window: Duration,
    config: &EngineConfig,
    device_timeout: Duration,
    handler: dma::DmaBridge,
) -> Result<(Client, EventReceiver)> {
    let client_config = ClientConfig {
        request_timeout: device_timeout.max(Duration::from_secs(5)),
        max_in_flight: 256,
        dma: config.windows(),
        max_concurrent_dma: config.max_concurrent_dma,
        // A DMA read may need many completion timeouts' worth of MRds.
        dma_handler_timeout: Duration::from_secs(60),
        tap: config.capture.clone().map(|c| Arc::new(c) as Arc<dyn transports::vfio_user::MessageTap>),
        ..ClientConfig::default()
    };
    let (client, events) = match server {
        ServerEndpoint::Socket(fd) => Client::from_fd(fd, client_config, handler)
            .await
            .map_err(|source| BridgeError::ServerSetup { step: "connecting".to_owned(), source })?,
        ServerEndpoint::Path(path) => {
            let deadline = tokio::time::Instant::now() + window;
            loop {
                match Client::connect(&path, client_config.clone(), handler.clone()).await {
                    Ok(c) => break c,
                    Err(e) if retryable(&e) && tokio::time::Instant::now() < deadline => {
                        tracing::debug!(path = %path.display(), error = %e, "server not ready; retrying");
                        tokio::time::sleep(RECONNECT_INTERVAL).await;
                    }
                    Err(source) if retryable(&source) => {
                        return Err(BridgeError::ServerUnreachable { path, window, source });
                    }
                    Err(source) => {
                        return Err(BridgeError::ServerSetup { step: "connecting".to_owned(), source });
                    }
                }
            }
        }
    };
    if config.dma_windows == DmaWindows::Default {
        map_default_windows(&client).await?;
    }
    Ok((client, events))
}

/// Maps [`DmaWindows::Default`]: the whole bus address space if the server takes one window that
/// large, else [`MAX_DMA_WINDOW`]-sized windows from 0 for as far as it takes them.
async fn map_default_windows(client: &Client) -> Result<()> {
    let setup =
        |source| BridgeError::ServerSetup { step: "mapping the default DMA window".to_owned(), source };
    match client.dma_map(DmaWindow::read_write(0, WHOLE_BUS_WINDOW)).await {
        Ok(()) => {
            tracing::info!("DMA window: the whole bus address space");
            return Ok(());
        }
        Err(transports::Error::Server { errno, .. }) => tracing::debug!(
            errno,
            "the server refused one window of the whole address space; mapping 8 TiB windows"
        ),
        Err(e) => return Err(setup(e)),
    }
    let mut reach = 0u64;
    while reach < DEFAULT_DMA_REACH {
        match client.dma_map(DmaWindow::read_write(reach, MAX_DMA_WINDOW)).await {
            Ok(()) => reach += MAX_DMA_WINDOW,
            // The server's window count is spent (its refusal, or its advertised max_dma_maps).
            Err(transports::Error::Server { .. } | transports::Error::InvalidArgument(_)) if reach > 0 => {
                break;
            }
            Err(e) => return Err(setup(e)),
        }
    }
    tracing::info!(windows = reach / MAX_DMA_WINDOW, reach, "DMA windows mapped from bus address 0");
    Ok(())
}

/// How often a missing, refusing or dying server is tried again.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(50);

/// Failures a server that is not up yet (socket missing or refusing) or is going down (accepts,
/// then drops the connection) causes: worth another try within the window.
fn retryable(e: &transports::Error) -> bool {
    matches!(
        e,
        transports::Error::Connect { .. } | transports::Error::Io { .. } | transports::Error::Disconnected(_)
    )
}

async fn read_layout(client: &Client) -> Result<Layout> {
    let step = |step: &str| {
        let step = step.to_owned();
        move |source| BridgeError::ServerSetup { step, source }
    };
    let info = client.device_info().await.map_err(step("reading DEVICE_GET_INFO"))?;
    if !info.is_pci() {
        return Err(BridgeError::UnsupportedDevice("the server does not report a PCI device".to_owned()));
    }
    if info.num_regions <= function::CONFIG_REGION {
        return Err(BridgeError::UnsupportedDevice(format!(
            "the device has {} regions; a PCI device has at least 8 (config space is region 7)",
            info.num_regions
        )));
    }
    let mut region_sizes = [0u64; 7];
    for (index, size) in region_sizes.iter_mut().enumerate() {
        let region =
            client.region_info(index as u32).await.map_err(step(&format!("reading region {index} info")))?;
        *size = if region.readable() || region.writable() { region.size } else { 0 };
    }
    let config = client.config_read(0, 256).await.map_err(step("reading config space"))?;
    let mut irq_counts = [0u32; 3];
    for (index, count) in irq_counts.iter_mut().enumerate() {
        if (index as u32) < info.num_irqs {
            *count = client
                .irq_info(index as u32)
                .await
                .map_err(step(&format!("reading irq {index} info")))?
                .count;
        }
    }
    Ok(Layout { device: DeviceLayout { config, region_sizes }, irq_counts })
}

type IrqFds = (Option<interrupts::IndexFds>, Option<interrupts::IndexFds>, Option<interrupts::IndexFds>);

fn setup_eventfds(
    layout: &Layout,
    function: &FunctionState,
    tasks: &mut JoinSet<()>,
    commands: &mpsc::Sender<IrqCommand>,
    shutdown: &watch::Receiver<bool>,
) -> Result<IrqFds> {
    let make = |index: u32, count: u32, tasks: &mut JoinSet<()>| -> Result<Option<interrupts::IndexFds>> {
        if count == 0 {
            return Ok(None);
        }
        let fds = interrupts::eventfds(index, count)
            .map_err(|e| BridgeError::Interrupts(format!("eventfd: {e}")))?;
        interrupts::spawn_watchers(tasks, &fds, commands, shutdown)
            .map_err(|e| BridgeError::Interrupts(format!("watching eventfds: {e}")))?;
        Ok(Some(fds))
    };
    let [intx, msi, msix] = layout.irq_counts;
    let intx = if function.interrupt_pin != 0 { intx.min(1) } else { 0 };
    let msi = if function.msi.is_some() { msi.min(32) } else { 0 };
    let msix = match function.msix {
        Some(m) => msix.min(u32::from(m.table_size)).min(interrupts::MAX_MSIX_VECTORS),
        None => 0,
    };
    Ok((
        make(irq_index::INTX, intx, tasks)?,
        make(irq_index::MSI, msi, tasks)?,
        make(irq_index::MSIX, msix, tasks)?,
    ))
}

/// What the engine needs to reconnect to a restarted server.
struct Reconnect {
    path: PathBuf,
    window: Duration,
    /// What the host enumerated: a restarted server must present the same device.
    identity: DeviceIdentity,
}

/// The parts of a device that the host's enumeration depends on.
#[derive(Debug, PartialEq, Eq)]
struct DeviceIdentity {
    /// Vendor/Device ID, Revision/Class Code, Header Type, Subsystem IDs, Interrupt Pin.
    header: [u8; 14],
    region_sizes: [u64; 7],
    irq_counts: [u32; 3],
}

impl DeviceIdentity {
    fn of(layout: &Layout) -> Self {
        let byte = |i: usize| layout.device.config.get(i).copied().unwrap_or(0);
        let mut header = [0u8; 14];
        let offsets = [0x00, 0x01, 0x02, 0x03, 0x08, 0x09, 0x0a, 0x0b, 0x0e, 0x2c, 0x2d, 0x2e, 0x2f, 0x3d];
        for (dst, offset) in header.iter_mut().zip(offsets) {
            *dst = byte(offset);
        }
        DeviceIdentity { header, region_sizes: layout.device.region_sizes, irq_counts: layout.irq_counts }
    }

    /// What differs from `other`, in words.
    fn difference(&self, other: &DeviceIdentity) -> Option<String> {
        if self.header != other.header {
            let ids = |h: &[u8; 14]| {
                format!(
                    "{:02x}{:02x}:{:02x}{:02x} class {:02x}{:02x}{:02x}",
                    h[1], h[0], h[3], h[2], h[7], h[6], h[5]
                )
            };
            return Some(format!("config header {} (was {})", ids(&other.header), ids(&self.header)));
        }
        if self.region_sizes != other.region_sizes {
            return Some(format!("region sizes {:x?} (were {:x?})", other.region_sizes, self.region_sizes));
        }
        if self.irq_counts != other.irq_counts {
            return Some(format!(
                "INTx/MSI/MSI-X counts {:?} (were {:?})",
                other.irq_counts, self.irq_counts
            ));
        }
        None
    }
}

/// Resets and server events. Pending resets are served before shutdown is noticed, so that
/// a link that went down as it closed still resets the device.
async fn control_task(
    shared: Arc<Shared>,
    mut control: mpsc::Receiver<Control>,
    mut events: EventReceiver,
    exit: Arc<watch::Sender<Option<Arc<BridgeError>>>>,
    mut shutdown: watch::Receiver<bool>,
    reconnect: Option<Reconnect>,
) {
    loop {
        tokio::select! {
            biased;
            request = control.recv() => match request {
                Some(Control::Reset(kind)) => reset(&shared, kind).await,
                None => return,
            },
            event = events.recv() => match event {
                Some(ClientEvent::Disconnected { reason }) => {
                    warn!(reason = %reason, "vfio-user server connection ended");
                    let outcome = match &reconnect {
                        Some(r) => tokio::select! {
                            _ = wait_shutdown(&mut shutdown) => return,
                            outcome = recover_server(&shared, r, reason) => outcome,
                        },
                        None => {
                            shared.tags.abort_all(shared.clock.now().saturating_add(shared.cpl_timeout));
                            Err(BridgeError::ServerDisconnected(reason))
                        }
                    };
                    match outcome {
                        Ok(new_events) => events = new_events,
                        Err(e) => {
                            warn!(error = %e, "the bridge stops");
                            exit.send_replace(Some(Arc::new(e)));
                            return;
                        }
                    }
                }
                None => return,
            },
            _ = wait_shutdown(&mut shutdown) => return,
        }
    }
}

/// The asynchronous half of a reset (after [`Shared::begin_reset`]): fail outstanding DMA,
/// DEVICE_RESET, re-arm interrupts, ready again.
async fn reset(shared: &Shared, kind: ResetKind) {
    Counters::inc(&shared.counters.resets);
    info!(?kind, "device reset");
    match kind {
        // Completions may still come for reads issued before an FLR: quarantine their tags.
        ResetKind::Flr => shared.tags.abort_all(shared.clock.now().saturating_add(shared.cpl_timeout)),
        // A link reset drops everything in flight on the link: no completion comes after it.
        ResetKind::HotReset | ResetKind::LinkDown => shared.tags.release_all(),
    }
    let _ = shared.irq_commands.send(IrqCommand::Reset).await;
    if let Some(client) = shared.client() {
        // The failed DMA's error replies go first: a server that waits on a DMA reply (one
        // socket, libvfio-user #279) takes the next message as that reply.
        client.flush_dma_replies(shared.device_timeout).await;
        if let Err(e) = client.reset().await {
            warn!(?kind, error = %e, "DEVICE_RESET failed; the device may keep its old state");
        }
    }
    {
        let mut f = shared.function();
        // A reset while the server is gone leaves the function waiting for it.
        f.ready = !f.server_lost;
    }
    let _ = shared.irq_commands.send(IrqCommand::Reconfigure).await;
}

/// The server's connection ended: keep the function as the host programmed it, answer the
/// root port meanwhile (config CRS, memory CA, posted writes dropped), connect to the restarted
/// server, check that it is the same device, replay the host's config writes, re-map DMA and
/// re-arm interrupts, then report the lost device state to the root complex with ERR_FATAL
/// (docs/design.md §7).
async fn recover_server(
    shared: &Arc<Shared>,
    r: &Reconnect,
    reason: transports::DisconnectReason,
) -> Result<EventReceiver> {
    {
        let mut f = shared.function();
        f.ready = false;
        f.server_lost = true;
    }
    shared.tags.abort_all(shared.clock.now().saturating_add(shared.cpl_timeout));
    let _ = shared.irq_commands.send(IrqCommand::Reset).await;
    info!(path = %r.path.display(), window = ?r.window, "waiting for the vfio-user server to come back");
    let handler = dma::DmaBridge { shared: shared.clone() };
    let deadline = tokio::time::Instant::now() + r.window;
    // A dying server may accept and drop a connection, even after VERSION: until the window
    // ends, a connection that breaks before the device is read is tried again.
    let (client, events, layout) =
        loop {
            let endpoint = ServerEndpoint::Path(r.path.clone());
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (client, events) =
                match connect(endpoint, remaining, &shared.config, shared.device_timeout, handler.clone())
                    .await
                {
                    Ok(c) => c,
                    Err(BridgeError::ServerUnreachable { path, source, .. }) => {
                        let last_error = source.to_string();
                        return Err(BridgeError::ServerLost { reason, path, window: r.window, last_error });
                    }
                    Err(e) => return Err(e),
                };
            match read_layout(&client).await {
                Ok(layout) => break (client, events, layout),
                Err(BridgeError::ServerSetup { source, step })
                    if retryable(&source) && tokio::time::Instant::now() < deadline =>
                {
                    debug!(step, error = %source, "the restarted server dropped the connection; retrying");
                    client.close().await;
                    tokio::time::sleep(RECONNECT_INTERVAL).await;
                }
                Err(e) => {
                    client.close().await;
                    return Err(e);
                }
            }
        };
    if let Some(difference) = r.identity.difference(&DeviceIdentity::of(&layout)) {
        client.close().await;
        return Err(BridgeError::ServerChanged(difference));
    }
    let max_xfer = client.negotiated().server.max_data_xfer_size;
    // The new device is at its reset values: put back what the host programmed, as a host's
    // own error recovery would (pci_restore_state), so that its BARs decode again.
    let writes = shared.function().host_config_writes();
    for (offset, bytes) in writes {
        let pieces =
            requests::access_pieces(u64::from(offset), bytes.len() as u32, AccessSplit::Aligned8, max_xfer);
        for (at, count) in pieces {
            let from = (at - u64::from(offset)) as usize;
            let piece = bytes.get(from..from + count as usize).unwrap_or(&[]);
            if let Err(source) = client.region_write(function::CONFIG_REGION, at, piece).await {
                client.close().await;
                return Err(BridgeError::ServerSetup {
                    step: format!("restoring config register {at:#x} on the restarted server"),
                    source,
                });
            }
        }
    }
    // The MSI-X table lives in a BAR: the engine's copy is the host's, the server's is new.
    let msix_table = shared.function().msix.map(|m| (u32::from(m.table_bir), u64::from(m.table_offset)));
    if let Some((region, base)) = msix_table {
        let table = shared.irq().msix_table.clone();
        for (at, count) in requests::access_pieces(base, table.len() as u32, AccessSplit::Aligned8, max_xfer)
        {
            let from = (at - base) as usize;
            let piece = table.get(from..from + count as usize).unwrap_or(&[]);
            if let Err(source) = client.region_write(region, at, piece).await {
                client.close().await;
                return Err(BridgeError::ServerSetup {
                    step: format!(
                        "restoring the MSI-X table (region {region}, offset {at:#x}) on the restarted server"
                    ),
                    source,
                });
            }
        }
    }
    shared.max_xfer.store(max_xfer, Ordering::Relaxed);
    if let Some(old) = shared.client() {
        shared.counters.add_client_stats(&old.stats());
    }
    shared.set_client(Some(client));
    let id = {
        let mut f = shared.function();
        f.server_lost = false;
        f.ready = true;
        f.id
    };
    Counters::inc(&shared.counters.server_reconnects);
    Counters::inc(&shared.counters.resets);
    let _ = shared.irq_commands.send(IrqCommand::Reconfigure).await;
    shared.send_message(MessageCode::ERR_FATAL, MsgRouting::ToRootComplex, id).await;
    info!(path = %r.path.display(), "vfio-user server reconnected; device state lost, ERR_FATAL sent");
    Ok(events)
}
