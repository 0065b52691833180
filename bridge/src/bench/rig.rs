//! The measured setup: the sample device (vfio-user server on a UNIX socket), the engine on a
//! sim link (TCP on 127.0.0.1), and a load generator on the simulator end of that link that
//! plays the root port and serves host memory for the card's DMA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use sim::device::{DeviceBus, DeviceDescription, DeviceModel, DmaEngine, DmaEngineConfig, ServerConfig};
use sim::link::{BridgeConfig, SimListener, SimulatorConfig, SimulatorEnd};
use tlp::completion::{MemoryRead, read_completions};
use tlp::split::{LinkParams, RequestFields, SplitChunk, memory_read_tlp, memory_write_tlp};
use tlp::wire::{Kind, Packet};
use tlp::{Body, CfgType, ConfigRequest, MemOp, RoutingId, Tlp};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use transports::link::LinkInput;

use super::own_thread::OwnThread;
use crate::engine::{BridgeError, CountersSnapshot, Engine, EngineConfig, ServerEndpoint};

pub const BAR0: u64 = 0x8000_0000;
pub const BAR2: u64 = 0x40_0000_0000;
pub const MSI_ADDRESS: u64 = 0xfee0_0000;
const MSI_DATA: u32 = 0x4d3;
/// Host memory the load generator serves: bus addresses `0..HOST_MEMORY`.
pub const HOST_MEMORY: usize = 4 << 20;
/// BAR0 registers of the sample card (docs/sample-device.md).
const REG_SRC_LO: u64 = 0x08;
const REG_DST_LO: u64 = 0x10;
const REG_LENGTH: u64 = 0x18;
const REG_DOORBELL: u64 = 0x1c;
const REG_STATUS: u64 = 0x20;
const REG_IRQ_CONTROL: u64 = 0x24;
pub const REG_SCRATCH: u64 = 0x30;
/// MSI capability of the sample card.
const MSI_CAP: u16 = 0x48;
/// PCI Express capability of the sample card (docs/sample-device.md).
const PCIE_CAP: u16 = 0x6c;
/// Device Control at reset without its size fields: relaxed ordering and no snoop enabled.
const DEVICE_CONTROL_RESET: u32 = 0x0810;
/// BAR2 offset whose writes the [`SequenceCard`] checks for order and loss.
pub const SEQUENCE_PORT: u64 = 0;
/// Longest wait for any one TLP from the bridge (wall time; a safety net, not a measurement).
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// The root port's requester ID.
pub const RC: RoutingId = RoutingId::new(0, 0, 0);
/// The device's ID (bus 1, as below a root port).
pub const DEVICE: RoutingId = RoutingId::new(1, 0, 0);

/// A Type 0 configuration write of one whole dword `value` to `register` (byte offset) of
/// [`DEVICE`], from [`RC`] with `tag`: how a root port sets a BAR or the Command register.
pub fn config_write_tlp(tag: u16, register: u16, value: u32) -> Tlp {
    Tlp {
        prefixes: Vec::new(),
        tc: 0,
        attr: tlp::Attr::default(),
        ln: false,
        th: false,
        ep: false,
        at: 0,
        length: 1,
        body: Body::Config(ConfigRequest {
            cfg_type: CfgType::Type0,
            write: true,
            requester: RC,
            tag,
            first_be: 0xf,
            last_be: 0,
            target: DEVICE,
            register,
        }),
        payload: value.to_le_bytes().to_vec(),
        digest: None,
    }
}

pub fn bench_error(step: &str, reason: impl std::fmt::Display) -> BridgeError {
    BridgeError::Bench { step: step.to_owned(), reason: reason.to_string() }
}

/// The sample DMA card with a checker on BAR2 offset [`SEQUENCE_PORT`]: every 4-byte write there
/// must carry the next number of a sequence starting at 0, so that loss and reordering of posted
/// writes are seen by the device itself. Everything else goes to the card unchanged.
pub struct SequenceCard {
    card: DmaEngine,
    expected: AtomicU32,
    received: AtomicU64,
    out_of_order: AtomicU64,
}

impl SequenceCard {
    pub fn new(settings: DmaEngineConfig) -> Result<Self, BridgeError> {
        let card = DmaEngine::new(settings).map_err(|e| bench_error("creating the card", e))?;
        Ok(SequenceCard {
            card,
            expected: AtomicU32::new(0),
            received: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
        })
    }

    /// (writes received, writes that were not the next number).
    pub fn sequence(&self) -> (u64, u64) {
        (self.received.load(Ordering::Relaxed), self.out_of_order.load(Ordering::Relaxed))
    }
}

impl DeviceModel for SequenceCard {
    fn describe(&self) -> DeviceDescription {
        self.card.describe()
    }

    fn region_read(&self, bus: &DeviceBus, region: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        self.card.region_read(bus, region, offset, data)
    }

    fn region_write(&self, bus: &DeviceBus, region: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        if let (2, SEQUENCE_PORT, Ok(bytes)) = (region, offset, <[u8; 4]>::try_from(data)) {
            let value = u32::from_le_bytes(bytes);
            // Only the server's command handler calls this, one message at a time.
            if self.expected.swap(value.wrapping_add(1), Ordering::Relaxed) != value {
                self.out_of_order.fetch_add(1, Ordering::Relaxed);
            }
            self.received.fetch_add(1, Ordering::Relaxed);
        }
        self.card.region_write(bus, region, offset, data)
    }

    fn reset(&self, bus: &DeviceBus) {
        self.card.reset(bus)
    }

    fn connected(&self, bus: &DeviceBus) {
        self.card.connected(bus)
    }

    fn disconnected(&self) {
        self.card.disconnected()
    }

    fn irqs_changed(&self, bus: &DeviceBus, index: u32) {
        self.card.irqs_changed(bus, index)
    }
}

/// Device, bridge and load generator, started together and stopped with [`Rig::stop`]. The
/// bridge (engine and its end of the sim link) runs on a runtime of its own with the two
/// workers of `tlpbridge run`, as that process would; device and load generator run on the
/// caller's runtime.
pub struct Rig {
    pub port: LoadGen,
    pub card: Arc<SequenceCard>,
    /// Worker threads of the bridge's runtime.
    pub bridge_threads: usize,
    engine: Engine,
    bridge: OwnThread,
    device: DeviceServer,
}

/// The sample card served on a UNIX socket in this process (on the caller's runtime) until
/// [`DeviceServer::stop`].
pub struct DeviceServer {
    pub card: Arc<SequenceCard>,
    server: JoinHandle<Result<(), sim::Error>>,
    stop_server: oneshot::Sender<()>,
    socket: SocketFile,
}

impl DeviceServer {
    /// Serves a card built from `card` on a socket in the temp directory named after `name`.
    pub fn start(card: DmaEngineConfig, name: &str) -> Result<DeviceServer, BridgeError> {
        let socket = SocketFile(
            std::env::temp_dir().join(format!("tlpbridge-bench-{}-{name}.sock", std::process::id())),
        );
        let _ = std::fs::remove_file(&socket.0);
        let card = Arc::new(SequenceCard::new(card)?);
        let listener =
            sim::device::server::bind(&socket.0).map_err(|e| bench_error("binding the device socket", e))?;
        let (stop_server, stopped) = oneshot::channel::<()>();
        let server_card = card.clone();
        let server = tokio::spawn(async move {
            sim::device::serve_listener(listener, server_card, ServerConfig::default(), async {
                let _ = stopped.await;
            })
            .await
        });
        Ok(DeviceServer { card, server, stop_server, socket })
    }

    pub fn path(&self) -> &Path {
        &self.socket.0
    }

    pub async fn stop(self) {
        let _ = self.stop_server.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        drop(self.socket);
    }
}

/// The device's socket file, removed when dropped: after [`Rig::stop`], and also when a rig is
/// abandoned on an error.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Rig {
    /// Starts everything and enumerates the card: BAR0, BAR2, Memory Space + Bus Master, MSI
    /// vector 0 to [`MSI_ADDRESS`], the copy engine's interrupt on MSI. The bridge runs on a
    /// runtime of `threads` worker threads (as `tlpbridge run --threads`).
    pub async fn start(config: EngineConfig, threads: usize, name: &str) -> Result<Rig, BridgeError> {
        Rig::start_with_card(config, DmaEngineConfig::default(), threads, name).await
    }

    /// [`Rig::start`] with a card built from `card` instead of the defaults.
    pub async fn start_with_card(
        config: EngineConfig,
        card: DmaEngineConfig,
        threads: usize,
        name: &str,
    ) -> Result<Rig, BridgeError> {
        let device = DeviceServer::start(card, name)?;
        let bridge = OwnThread::start(&format!("bridge-{name}"), threads)?;
        let (addr_tx, addr_rx) = oneshot::channel();
        let server_path = device.path().to_owned();
        // Listener, link tasks and engine tasks all belong to the bridge's runtime.
        let bridge_side = bridge.handle().spawn(async move {
            let sim_listener =
                SimListener::bind("127.0.0.1:0").await.map_err(|e| bench_error("binding the sim link", e))?;
            let addr =
                sim_listener.local_addr().map_err(|e| bench_error("binding the sim link", e))?.to_string();
            let _ = addr_tx.send(addr);
            let link = sim_listener
                .accept_bridge(&BridgeConfig::default())
                .await
                .map_err(|e| bench_error("opening the sim link (bridge side)", e))?;
            Engine::start(link, ServerEndpoint::Path(server_path), config).await
        });
        let addr =
            addr_rx.await.map_err(|_| bench_error("binding the sim link", "the bridge thread ended"))?;
        let end = SimulatorEnd::connect(&addr, &SimulatorConfig::default())
            .await
            .map_err(|e| bench_error("opening the sim link (simulator side)", e))?;
        let engine = bridge_side
            .await
            .map_err(|e| bench_error("starting the bridge", format!("the bridge task: {e}")))??;
        let mut port = LoadGen::new(end);
        port.enumerate().await?;
        Ok(Rig { port, card: device.card.clone(), bridge_threads: threads, engine, bridge, device })
    }

    pub fn counters(&self) -> CountersSnapshot {
        self.engine.counters().snapshot()
    }

    /// The runtime the bridge's tasks run on (for measurements that need to run something on
    /// its threads, such as the allocation check of `bridge/tests/alloc_per_dma.rs`).
    pub fn bridge_runtime(&self) -> &tokio::runtime::Handle {
        self.bridge.handle()
    }

    pub async fn stop(self) -> CountersSnapshot {
        let Rig { port, engine, bridge, device, .. } = self;
        // Shut down where its tasks and sockets live.
        let snapshot = match bridge.handle().spawn(engine.shutdown()).await {
            Ok(snapshot) => snapshot,
            Err(e) => {
                tracing::warn!(error = %e, "bridge shutdown task failed");
                CountersSnapshot::default()
            }
        };
        bridge.stop().await;
        drop(port);
        device.stop().await;
        snapshot
    }
}

/// A sim link whose bridge side is a task that sends every TLP straight back (no engine): the
/// link's own share of a round trip. Returns the simulator end and the echo task, which ends
/// when the simulator end is dropped.
pub async fn link_echo() -> Result<(SimulatorEnd, JoinHandle<()>), BridgeError> {
    let sim_listener =
        SimListener::bind("127.0.0.1:0").await.map_err(|e| bench_error("binding the echo sim link", e))?;
    let addr =
        sim_listener.local_addr().map_err(|e| bench_error("binding the echo sim link", e))?.to_string();
    let bridge_side = async { sim_listener.accept_bridge(&BridgeConfig::default()).await };
    let sim_config = SimulatorConfig::default();
    let (link, end) = tokio::join!(bridge_side, SimulatorEnd::connect(&addr, &sim_config));
    let mut link = link.map_err(|e| bench_error("opening the echo sim link (bridge side)", e))?;
    let end = end.map_err(|e| bench_error("opening the echo sim link (simulator side)", e))?;
    let echo = tokio::spawn(async move {
        while let Some(input) = link.rx.recv().await {
            if let LinkInput::Tlp(tlp) = input
                && link.tx.send(Vec::from(tlp.bytes)).await.is_err()
            {
                return;
            }
            link.progress.handled_one();
        }
    });
    Ok((end, echo))
}

/// One TLP through [`link_echo`] and back.
pub async fn echo_round_trip(end: &mut SimulatorEnd, bytes: &[u8]) -> Result<(), BridgeError> {
    end.send_tlp(bytes).await.map_err(|e| bench_error("sim link echo", e))?;
    match end.recv(STEP_TIMEOUT).await.map_err(|e| bench_error("sim link echo", e))? {
        Some(tlp) if tlp.bytes == bytes => Ok(()),
        Some(tlp) => {
            Err(bench_error("sim link echo", format!("echoed {:02x?}, sent {bytes:02x?}", tlp.bytes)))
        }
        None => Err(bench_error("sim link echo", format!("no echo within {STEP_TIMEOUT:?}"))),
    }
}

/// The root port: requests to the card, and host memory for the card's DMA.
pub struct LoadGen {
    end: SimulatorEnd,
    fields: RequestFields,
    /// The root complex's completions: MPS 128 (until `set_payload_sizes`), RCB 64.
    link: LinkParams,
    host: Vec<u8>,
    next_tag: u16,
    irqs: u64,
    /// When the last completion to one of the card's DMA reads was sent.
    last_completion_sent: Option<Instant>,
    /// Encoding buffer for completions.
    scratch: Vec<u8>,
}

/// Timing of one copy by the card, seen at the root port.
#[derive(Clone, Copy, Debug)]
pub struct CopyTiming {
    /// Doorbell sent → last completion for the card's DMA read sent: the DMA read of the source.
    pub read: Duration,
    /// Last completion sent → MSI: the DMA read's reply to the card, the card's DMA write of the
    /// destination (MWrs into host memory, the write's reply) and the interrupt.
    pub write: Duration,
}

impl LoadGen {
    pub(crate) fn new(end: SimulatorEnd) -> LoadGen {
        LoadGen {
            end,
            fields: RequestFields { requester: RC, tc: 0, attr: tlp::Attr::default() },
            link: LinkParams::DEFAULT,
            host: vec![0; HOST_MEMORY],
            next_tag: 0,
            irqs: 0,
            last_completion_sent: None,
            scratch: Vec::new(),
        }
    }

    fn tag(&mut self) -> u16 {
        self.next_tag = (self.next_tag + 1) % 256;
        self.next_tag
    }

    /// Fills host memory `[at, at + len)` with a pattern.
    pub fn fill_host(&mut self, at: usize, len: usize) {
        for (i, byte) in self.host[at..at + len].iter_mut().enumerate() {
            *byte = (i as u8) ^ ((i >> 8) as u8);
        }
    }

    pub fn host(&self, at: usize, len: usize) -> &[u8] {
        &self.host[at..at + len]
    }

    async fn send(&mut self, tlp: &Tlp, step: &str) -> Result<(), BridgeError> {
        self.end.send_tlp(&tlp.to_bytes()).await.map_err(|e| bench_error(step, e))
    }

    /// The next TLP from the bridge that is not a DMA request from the card or an MSI.
    async fn next_for_us(&mut self, step: &str) -> Result<Tlp, BridgeError> {
        loop {
            if let Some(tlp) = self.pump_one(step).await? {
                return Ok(tlp);
            }
        }
    }

    /// Takes one TLP from the bridge and serves it if it is a DMA request from the card or an
    /// MSI (see [`LoadGen::serve`]); then serves, in the same write, the card's requests that
    /// have already arrived behind it. Returns the first TLP that is none of these.
    async fn pump_one(&mut self, step: &str) -> Result<Option<Tlp>, BridgeError> {
        let received =
            self.end.recv(STEP_TIMEOUT).await.map_err(|e| bench_error(step, e))?.ok_or_else(|| {
                bench_error(step, format!("no TLP from the bridge within {STEP_TIMEOUT:?}"))
            })?;
        let mut completions = false;
        let mut ours = self.serve(&received.bytes, &mut completions, step)?;
        while ours.is_none() {
            match self.end.try_recv().map_err(|e| bench_error(step, e))? {
                Some(received) => ours = self.serve(&received.bytes, &mut completions, step)?,
                None => break,
            }
        }
        if self.end.has_queued() {
            self.end.flush().await.map_err(|e| bench_error(step, e))?;
        }
        if completions {
            self.last_completion_sent = Some(Instant::now());
        }
        Ok(ours)
    }

    /// Serves a DMA request from the card (MRd: CplDs from host memory, queued on the link and
    /// `completions` set; MWr: into host memory) or counts an MSI and returns `None`; returns
    /// anything else.
    /// An MWr into host memory, or the MSI.
    fn memory_write(&mut self, packet: &Packet<&[u8]>, step: &str) -> Result<(), BridgeError> {
        let (address, payload) = (packet.address(), packet.payload());
        if address == MSI_ADDRESS {
            self.irqs += 1;
            return Ok(());
        }
        let at = usize::try_from(address).unwrap_or(usize::MAX);
        let end = at.saturating_add(payload.len());
        let target = self.host.get_mut(at..end).ok_or_else(|| {
            bench_error(
                step,
                format!("DMA write of {} bytes at {address:#x} outside host memory", payload.len()),
            )
        })?;
        let (first_be, last_be) = (packet.first_be(), packet.last_be());
        let last_dw = payload.len().saturating_sub(1) / 4;
        let last_full = last_be == 0xf || (last_dw == 0 && last_be == 0);
        if first_be == 0xf && last_full {
            // All bytes enabled (the card's aligned copies): one copy, not a byte loop.
            target.copy_from_slice(payload);
            return Ok(());
        }
        for (i, (to, from)) in target.iter_mut().zip(payload).enumerate() {
            let (dw, lane) = (i / 4, i % 4);
            let enables = match (dw, last_dw) {
                (0, _) => first_be,
                (d, l) if d == l => last_be,
                _ => 0xf,
            };
            if enables >> lane & 1 == 1 {
                *to = *from;
            }
        }
        Ok(())
    }

    fn serve(
        &mut self,
        bytes: &[u8],
        completions: &mut bool,
        step: &str,
    ) -> Result<Option<Tlp>, BridgeError> {
        // MWrs (the card's DMA writes, and MSIs) are read in place: a root port's memory takes
        // the payload straight off the link, without building a TLP model first.
        let packet = Packet::new_checked(bytes).map_err(|e| bench_error(step, e))?;
        if packet.kind() == Some(Kind::MemWrite) {
            self.memory_write(&packet, step)?;
            return Ok(None);
        }
        let tlp = Tlp::parse(bytes).map_err(|e| bench_error(step, e))?;
        match &tlp.body {
            Body::Memory(request) if request.op == MemOp::Read => {
                let read = MemoryRead::from_tlp(&tlp).map_err(|e| bench_error(step, e))?;
                let at = usize::try_from(read.first_byte_address()).unwrap_or(usize::MAX);
                let end = at.saturating_add(read.byte_count() as usize);
                let data = self
                    .host
                    .get(at..end)
                    .ok_or_else(|| bench_error(step, format!("DMA read outside host memory: {tlp}")))?;
                // Each completion is emitted from host memory into one reused buffer (no TLP
                // model, no allocation) and queued as a frame.
                let mut cpls =
                    read_completions(&read, RC, data, &self.link).map_err(|e| bench_error(step, e))?;
                while cpls.next_into(&mut self.scratch) {
                    self.end.queue_tlp(&self.scratch).map_err(|e| bench_error(step, e))?;
                }
                *completions = true;
                Ok(None)
            }
            _ => Ok(Some(tlp)),
        }
    }

    async fn completion(&mut self, tag: u16, len: usize, step: &str) -> Result<Vec<u8>, BridgeError> {
        let mut data = Vec::with_capacity(len);
        loop {
            let tlp = self.next_for_us(step).await?;
            match &tlp.body {
                Body::Completion(cpl) if cpl.tag == tag => {
                    if cpl.status != tlp::CplStatus::Sc {
                        return Err(bench_error(step, format!("unsuccessful completion {tlp}")));
                    }
                    data.extend_from_slice(&tlp.payload);
                    if tlp.payload.is_empty() || data.len() >= len {
                        data.truncate(len);
                        return Ok(data);
                    }
                }
                _ => return Err(bench_error(step, format!("unexpected TLP from the bridge: {tlp}"))),
            }
        }
    }

    pub async fn cfg_write(&mut self, register: u16, value: u32) -> Result<(), BridgeError> {
        let tag = self.tag();
        let tlp = config_write_tlp(tag, register, value);
        self.send(&tlp, "config write").await?;
        self.completion(tag, 0, "config write").await.map(drop)
    }

    /// Waits until the function takes configuration requests, as a root port does after a
    /// reset: a config write of `register` answered Configuration Request Retry Status is
    /// sent again every 10 ms, for at most `patience`.
    pub async fn wait_config_ready(
        &mut self,
        register: u16,
        value: u32,
        patience: Duration,
    ) -> Result<(), BridgeError> {
        let step = "config write until not CRS";
        let give_up = Instant::now() + patience;
        loop {
            let tag = self.tag();
            self.send(&config_write_tlp(tag, register, value), step).await?;
            let tlp = self.next_for_us(step).await?;
            match &tlp.body {
                Body::Completion(cpl) if cpl.tag == tag && cpl.status == tlp::CplStatus::Sc => return Ok(()),
                Body::Completion(cpl) if cpl.tag == tag && cpl.status == tlp::CplStatus::Crs => {
                    if Instant::now() >= give_up {
                        return Err(bench_error(step, format!("still CRS after {patience:?}")));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                _ => return Err(bench_error(step, format!("unexpected TLP from the bridge: {tlp}"))),
            }
        }
    }

    /// One MRd of `len` ≤ 4096 bytes; returns the data.
    pub async fn mem_read(&mut self, address: u64, len: u32) -> Result<Vec<u8>, BridgeError> {
        let tag = self.tag();
        let tlp = memory_read_tlp(&self.fields, SplitChunk { address, len }, tag, 4096)
            .map_err(|e| bench_error("building an MRd", e))?;
        self.send(&tlp, "MMIO read").await?;
        self.completion(tag, len as usize, "MMIO read").await
    }

    /// One posted MWr.
    pub async fn mem_write(&mut self, address: u64, data: &[u8]) -> Result<(), BridgeError> {
        let tlp = memory_write_tlp(&self.fields, address, data, 4096)
            .map_err(|e| bench_error("building an MWr", e))?;
        self.send(&tlp, "MMIO write").await
    }

    /// Programs the card's Device Control with Max_Payload_Size `mps` and
    /// Max_Read_Request_Size `mrrs` (relaxed ordering and no snoop stay enabled, as at reset),
    /// and completes the card's reads at the same MPS from now on.
    pub async fn set_payload_sizes(&mut self, mps: u16, mrrs: u16) -> Result<(), BridgeError> {
        let link = LinkParams::new(mps, mrrs, self.link.read_completion_boundary())
            .map_err(|e| bench_error("setting MPS and MRRS", e))?;
        let code = |bytes: u16| u32::from((bytes / 128).trailing_zeros() as u16);
        let control = DEVICE_CONTROL_RESET | code(mps) << 5 | code(mrrs) << 12;
        // Device Status, the upper half of the dword, is write-1-to-clear: zeros change nothing.
        self.cfg_write(PCIE_CAP + 8, control).await?;
        self.link = link;
        Ok(())
    }

    pub(crate) async fn enumerate(&mut self) -> Result<(), BridgeError> {
        self.cfg_write(0x10, BAR0 as u32).await?;
        self.cfg_write(0x18, BAR2 as u32).await?;
        self.cfg_write(0x1c, (BAR2 >> 32) as u32).await?;
        // MSI: address, data, then Message Control with Enable (one vector).
        self.cfg_write(MSI_CAP + 4, MSI_ADDRESS as u32).await?;
        self.cfg_write(MSI_CAP + 8, 0).await?;
        self.cfg_write(MSI_CAP + 12, MSI_DATA).await?;
        self.cfg_write(MSI_CAP, 0x0185_6005).await?;
        self.cfg_write(0x04, 0x0006).await?;
        // Copy engine: interrupt on MSI vector 0 when a copy ends.
        self.mem_write(BAR0 + REG_IRQ_CONTROL, &3u32.to_le_bytes()).await?;
        let id = self.mem_read(BAR0, 4).await?;
        if id != 0xd3a0_0001u32.to_le_bytes() {
            return Err(bench_error(
                "enumeration",
                format!("BAR0 ID register reads {id:02x?}, not d3a00001"),
            ));
        }
        Ok(())
    }

    /// The card copies `len` bytes from host `src` to host `dst`; returns when its MSI arrives.
    pub async fn copy(&mut self, src: u64, dst: u64, len: u32) -> Result<CopyTiming, BridgeError> {
        self.mem_write(BAR0 + REG_SRC_LO, &src.to_le_bytes()).await?;
        self.mem_write(BAR0 + REG_DST_LO, &dst.to_le_bytes()).await?;
        self.mem_write(BAR0 + REG_LENGTH, &len.to_le_bytes()).await?;
        let irqs = self.irqs;
        self.last_completion_sent = None;
        let start = Instant::now();
        self.mem_write(BAR0 + REG_DOORBELL, &1u32.to_le_bytes()).await?;
        while self.irqs == irqs {
            if let Some(tlp) = self.pump_one("DMA copy").await? {
                return Err(bench_error("DMA copy", format!("unexpected TLP from the bridge: {tlp}")));
            }
        }
        let end = Instant::now();
        let read_done = self.last_completion_sent.unwrap_or(start);
        let status = self.mem_read(BAR0 + REG_STATUS, 4).await?;
        if status.first().copied().unwrap_or(0) & 0x7 != 0b010 {
            return Err(bench_error("DMA copy", format!("the card's STATUS is {status:02x?}, not DONE")));
        }
        Ok(CopyTiming { read: read_done - start, write: end - read_done })
    }
}
