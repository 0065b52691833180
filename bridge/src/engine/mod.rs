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

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use tlp::split::LinkParams;
use transports::link::{Link, LinkClock};
use transports::vfio_user::wire::irq_index;
use transports::vfio_user::{Client, ClientConfig, ClientEvent, EventReceiver};

pub use config::{AccessSplit, DmaWindows, EngineConfig, ServerEndpoint};
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
    client: Client,
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
        });
        let exit_tx = Arc::new(exit_tx);
        let (posted_tx, posted_rx) = mpsc::channel(config.request_queue_depth);
        let (np_tx, np_rx) = mpsc::channel(config.request_queue_depth);
        let mut request_tasks = JoinSet::new();
        // The reader runs from the start so that the root port gets CRS while we connect.
        let reader = LinkReader {
            shared: shared.clone(),
            posted: posted_tx,
            non_posted: np_tx,
            control: shared.control.clone(),
            posted_count: 0,
            progress: link.progress.clone(),
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
        let (client, events) = match connect(server, &config, shared.device_timeout, handler).await {
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
        let irq_task = interrupts::InterruptTask::new(shared.clone(), client.clone(), intx, msi, msix);
        tasks.spawn(irq_task.run(irq_rx, shutdown_rx.clone()));
        let _ = irq_tx.try_send(IrqCommand::Reconfigure);
        tasks.spawn(control_task(
            shared.clone(),
            client.clone(),
            control_rx,
            events,
            exit_tx.clone(),
            shutdown_rx.clone(),
        ));
        let (posted_done_tx, posted_done_rx) = watch::channel(0u64);
        request_tasks.spawn(requests::posted_dispatcher(
            shared.clone(),
            client.clone(),
            posted_rx,
            posted_done_tx,
        ));
        request_tasks.spawn(requests::non_posted_dispatcher(
            shared.clone(),
            client.clone(),
            np_rx,
            posted_done_rx,
        ));
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
        Ok(Engine { shared, client, link, tasks, request_tasks, shutdown, exit })
    }

    /// The live counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    /// Tags busy or quarantined (outstanding device DMA reads).
    pub fn tags_in_use(&self) -> usize {
        self.shared.tags.in_use()
    }

    /// The vfio-user client (for diagnostics; the engine owns the connection).
    pub fn client(&self) -> &Client {
        &self.client
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
        // The failed DMA's error replies reach the server before the connection closes.
        if !self.client.flush_dma_replies(self.shared.config.shutdown_grace).await {
            warn!("device DMA still unanswered at shutdown; the server sees the connection close instead");
        }
        self.client.close().await;
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
    match server {
        ServerEndpoint::Socket(fd) => Client::from_fd(fd, client_config, handler)
            .await
            .map_err(|source| BridgeError::ServerSetup { step: "connecting".to_owned(), source }),
        ServerEndpoint::Path(path) => {
            let deadline = tokio::time::Instant::now() + config.connect_window;
            loop {
                match Client::connect(&path, client_config.clone(), handler.clone()).await {
                    Ok(c) => return Ok(c),
                    Err(transports::Error::Connect { source, path: p })
                        if tokio::time::Instant::now() < deadline =>
                    {
                        tracing::debug!(path = %p.display(), error = %source, "server socket not ready; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(source @ transports::Error::Connect { .. }) => {
                        return Err(BridgeError::ServerUnreachable {
                            path,
                            window: config.connect_window,
                            source,
                        });
                    }
                    Err(source) => {
                        return Err(BridgeError::ServerSetup { step: "connecting".to_owned(), source });
                    }
                }
            }
        }
    }
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

/// Resets and server events.
async fn control_task(
    shared: Arc<Shared>,
    client: Client,
    mut control: mpsc::Receiver<Control>,
    mut events: EventReceiver,
    exit: Arc<watch::Sender<Option<Arc<BridgeError>>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = wait_shutdown(&mut shutdown) => return,
            event = events.recv() => match event {
                Some(ClientEvent::Disconnected { reason }) => {
                    warn!(reason = %reason, "vfio-user server connection ended");
                    shared.tags.abort_all(shared.clock.now().saturating_add(shared.cpl_timeout));
                    exit.send_replace(Some(Arc::new(BridgeError::ServerDisconnected(reason))));
                    return;
                }
                None => return,
            },
            request = control.recv() => match request {
                Some(Control::Reset(kind)) => reset(&shared, &client, kind).await,
                None => return,
            },
        }
    }
}

/// The asynchronous half of a reset (after [`Shared::begin_reset`]): fail outstanding DMA,
/// DEVICE_RESET, re-arm interrupts, ready again.
async fn reset(shared: &Shared, client: &Client, kind: ResetKind) {
    Counters::inc(&shared.counters.resets);
    info!(?kind, "device reset");
    match kind {
        // Completions may still come for reads issued before an FLR: quarantine their tags.
        ResetKind::Flr => shared.tags.abort_all(shared.clock.now().saturating_add(shared.cpl_timeout)),
        // A link reset drops everything in flight on the link: no completion comes after it.
        ResetKind::HotReset | ResetKind::LinkDown => shared.tags.release_all(),
    }
    let _ = shared.irq_commands.send(IrqCommand::Reset).await;
    if let Err(e) = client.reset().await {
        warn!(?kind, error = %e, "DEVICE_RESET failed; the device may keep its old state");
    }
    shared.function().ready = true;
    let _ = shared.irq_commands.send(IrqCommand::Reconfigure).await;
}
