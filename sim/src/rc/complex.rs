//! The root complex core: requester for config/MMIO/I/O (tags, completion timeout in cycles),
//! completer for the device's DMA (host memory), and the interrupt controller.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use tlp::completion::{MemoryRead, Progress, ReadReassembly, read_completions, unsuccessful_completion};
use tlp::split::{LinkParams, RequestFields, memory_read_requests, memory_read_tlp, memory_write_tlps};
use tlp::{Attr, Body, CfgType, ConfigRequest, CplStatus, IoRequest, MemOp, MessageCode, RoutingId, Tlp};

use super::io::RootPortIo;
use super::memory::HostMemory;
use super::report::{IrqKind, LatencyStats};
use crate::error::{Error, Result};

/// How many device messages [`RootComplex::messages`] keeps.
pub const MAX_LOGGED_MESSAGES: usize = 4096;

/// How the root complex behaves.
#[derive(Clone, Debug)]
pub struct RcConfig {
    /// MPS/MRRS it programs into the device and uses for its own requests; RCB for its
    /// completions of the device's reads.
    pub link: LinkParams,
    /// Host memory spans bus addresses `0..host_memory_size`.
    pub host_memory_size: u64,
    /// Cycles from receiving a DMA read to sending its first completion.
    pub completion_latency: u64,
    /// Cycles the root complex waits for a completion to its own requests.
    pub completion_timeout: u64,
    /// Cycles each time step advances.
    pub step_cycles: u64,
    /// Free-running only: wall time slept per step, so that the bridge and the device keep up
    /// (`None`: just yield).
    pub pace: Option<Duration>,
    /// Simulated picoseconds per cycle (converts `10ms`-style durations in scripts).
    pub ps_per_cycle: u32,
    /// The root complex's own ID (requester of its requests, completer of its completions).
    pub rc_id: RoutingId,
    /// The device it enumerates.
    pub device: RoutingId,
    /// Bus address of the interrupt window: MSI writes go to `msi_window`, MSI-X writes to
    /// `msi_window + 0x10`. Writes there raise interrupts instead of reaching memory.
    pub msi_window: u64,
    /// Allocation pools for BARs: 32-bit memory (and the ROM), 64-bit memory, I/O.
    pub mem32_base: u64,
    pub mem64_base: u64,
    pub io_base: u64,
    /// Use 8-bit tags (0..=255) instead of 5-bit ones (0..=31).
    pub extended_tags: bool,
    /// Simulated time a configuration request completed with CRS keeps being retried, counted
    /// from the first CRS completion (PCIe Base Spec §6.6.1 asks software to allow 1.0 s).
    pub crs_timeout: Duration,
}

impl Default for RcConfig {
    fn default() -> Self {
        RcConfig {
            link: LinkParams::DEFAULT,
            host_memory_size: 64 << 20,
            completion_latency: 100,
            completion_timeout: 50_000_000,
            step_cycles: 100,
            pace: None,
            ps_per_cycle: 1000,
            rc_id: RoutingId::new(0, 0, 0),
            device: RoutingId::new(1, 0, 0),
            msi_window: 0xfee0_0000,
            mem32_base: 0x8000_0000,
            mem64_base: 0x40_0000_0000,
            io_base: 0x1000,
            extended_tags: true,
            crs_timeout: Duration::from_secs(1),
        }
    }
}

/// Offset of the MSI-X target inside the interrupt window.
pub const MSIX_WINDOW_OFFSET: u64 = 0x10;
const WINDOW_LEN: u64 = 0x1000;
/// Most completions waiting for their due cycle: a device cannot make the root complex queue
/// more than this (beyond it, further reads are dropped and counted unsupported).
const MAX_SCHEDULED: usize = 1 << 16;
/// Most TLPs handed to the link in one call (at most about 1 MiB of frames).
const SEND_BATCH: usize = 256;
/// Interrupts kept in the log for the report (all are still counted for `wait-irq`).
const MAX_IRQ_LOG: usize = 1 << 16;
/// Highest MSI and MSI-X vector numbers (32 MSI vectors, 2048 MSI-X table entries).
const MAX_MSI_VECTOR: u32 = 31;
const MAX_MSIX_VECTOR: u32 = 2047;
/// Simulated time between CRS retries: starts short (a bridge that is just connecting answers
/// soon) and doubles up to the cap, so a long wait costs about a thousand requests, not millions.
const CRS_FIRST_RETRY: Duration = Duration::from_micros(1);
const CRS_MAX_RETRY: Duration = Duration::from_millis(1);

/// Counters for the report.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub tlps_sent: BTreeMap<&'static str, u64>,
    pub tlps_received: BTreeMap<&'static str, u64>,
    pub malformed_received: u64,
    pub unexpected_completions: u64,
    pub dma_read_requests: u64,
    pub dma_read_bytes: u64,
    pub dma_write_requests: u64,
    pub dma_write_bytes: u64,
    /// Device requests answered with UR (or dropped, for posted writes outside memory).
    pub unsupported_requests: u64,
    pub latency: LatencyStats,
}

/// One interrupt as the root complex saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqEvent {
    pub kind: IrqKind,
    pub vector: u32,
    pub cycle: u64,
}

#[derive(Debug)]
enum Pending {
    Read(ReadReassembly),
    /// Config/I/O request: one completion, with 4 data bytes for reads.
    Single {
        read: bool,
    },
}

#[derive(Debug)]
struct Outstanding {
    kind: &'static str,
    address: String,
    sent_at: u64,
    state: Pending,
    result: Option<Result<Vec<u8>, String>>,
    /// The completion had status CRS (the request may be retried).
    crs: bool,
}

/// A request that failed: what to report, and whether the completer asked for a retry (CRS).
struct Failed {
    message: String,
    crs: bool,
}

/// The reference root complex over any [`RootPortIo`].
pub struct RootComplex<I: RootPortIo> {
    io: I,
    config: RcConfig,
    memory: HostMemory,
    outstanding: HashMap<u16, Outstanding>,
    next_tag: u16,
    /// Completions to the device's reads, in due order (the latency is constant).
    scheduled: VecDeque<(u64, Tlp)>,
    pending_irqs: BTreeMap<(IrqKind, u32), u64>,
    irq_log: Vec<IrqEvent>,
    intx: [bool; 4],
    /// Messages from the device other than INTx (error reports, PM), oldest first, bounded.
    messages: Vec<MessageCode>,
    counters: Counters,
}

impl<I: RootPortIo> RootComplex<I> {
    pub fn new(io: I, config: RcConfig) -> Result<Self> {
        if config.step_cycles == 0 {
            return Err(rc_error("step cycles must be at least 1"));
        }
        let memory = HostMemory::new(config.host_memory_size);
        if config.msi_window < config.host_memory_size {
            return Err(rc_error(format!(
                "the interrupt window at {:#x} lies inside host memory (0..{:#x})",
                config.msi_window, config.host_memory_size
            )));
        }
        Ok(RootComplex {
            io,
            config,
            memory,
            outstanding: HashMap::new(),
            next_tag: 0,
            scheduled: VecDeque::new(),
            pending_irqs: BTreeMap::new(),
            irq_log: Vec::new(),
            intx: [false; 4],
            messages: Vec::new(),
            counters: Counters::default(),
        })
    }

    pub fn config(&self) -> &RcConfig {
        &self.config
    }

    pub fn now(&self) -> u64 {
        self.io.now()
    }

    pub fn memory(&self) -> &HostMemory {
        &self.memory
    }

    pub fn memory_mut(&mut self) -> &mut HostMemory {
        &mut self.memory
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn irq_log(&self) -> &[IrqEvent] {
        &self.irq_log
    }

    /// INTA..INTD as the device's Assert/Deassert messages left them.
    pub fn intx_state(&self) -> [bool; 4] {
        self.intx
    }

    /// Messages the device sent other than INTx Assert/Deassert (ERR_COR/NONFATAL/FATAL,
    /// PME_TO_Ack, ...), in arrival order; the first [`MAX_LOGGED_MESSAGES`] only.
    pub fn messages(&self) -> &[MessageCode] {
        &self.messages
    }

    /// Gives the link back (to close it).
    pub fn into_io(self) -> I {
        self.io
    }

    pub fn io_mut(&mut self) -> &mut I {
        &mut self.io
    }

    fn fields(&self) -> RequestFields {
        RequestFields { requester: self.config.rc_id, tc: 0, attr: Attr::default() }
    }

    fn tag_limit(&self) -> u16 {
        if self.config.extended_tags { 256 } else { 32 }
    }

    fn allocate_tag(&mut self) -> Result<u16> {
        let limit = self.tag_limit();
        for _ in 0..limit {
            let tag = self.next_tag % limit;
            self.next_tag = (tag + 1) % limit;
            if !self.outstanding.contains_key(&tag) {
                return Ok(tag);
            }
        }
        Err(rc_error(format!("all {limit} tags are outstanding")))
    }

    async fn send(&mut self, tlp: &Tlp) -> Result<()> {
        let bytes = self.encode_for_sending(tlp);
        self.io.send_tlp(bytes).await
    }

    /// Counts and logs a TLP about to be sent; its wire bytes.
    fn encode_for_sending(&mut self, tlp: &Tlp) -> Vec<u8> {
        *self.counters.tlps_sent.entry(tlp.kind_name()).or_default() += 1;
        tracing::debug!(tlp = %tlp, cycle = self.now(), "rc: sending");
        tlp.to_bytes()
    }

    /// One time step: `cycles` at most `step_cycles`.
    async fn step(&mut self, limit: Option<u64>) -> Result<()> {
        let now = self.now();
        let step = limit
            .map_or(self.config.step_cycles, |l| l.saturating_sub(now).clamp(1, self.config.step_cycles));
        self.io.advance_to(now.saturating_add(step)).await?;
        if !self.io.lockstep() {
            match self.config.pace {
                Some(pace) => tokio::time::sleep(pace).await,
                None => tokio::task::yield_now().await,
            }
        }
        Ok(())
    }

    /// Handles everything received and sends the completions that are due.
    async fn pump(&mut self) -> Result<()> {
        while let Some(bytes) = self.io.try_recv()? {
            self.on_tlp(&bytes);
        }
        let now = self.now();
        // What is due goes out in batches: one write on a sim link instead of one per CplD.
        loop {
            let mut due = Vec::new();
            while due.len() < SEND_BATCH && self.scheduled.front().is_some_and(|(at, _)| *at <= now) {
                if let Some((_, tlp)) = self.scheduled.pop_front() {
                    due.push(self.encode_for_sending(&tlp));
                }
            }
            if due.is_empty() {
                return Ok(());
            }
            self.io.send_tlps(due).await?;
        }
    }

    fn on_tlp(&mut self, bytes: &[u8]) {
        let tlp = match Tlp::parse(bytes) {
            Ok(tlp) => tlp,
            Err(e) => {
                self.counters.malformed_received += 1;
                tracing::warn!(error = %e, len = bytes.len(), "rc: malformed TLP from the bridge, dropped");
                return;
            }
        };
        *self.counters.tlps_received.entry(tlp.kind_name()).or_default() += 1;
        tracing::debug!(tlp = %tlp, cycle = self.now(), "rc: received");
        match &tlp.body {
            Body::Completion(c) => self.on_completion(c.tag, &tlp),
            Body::Memory(m) => match m.op {
                MemOp::Write => self.on_dma_write(&tlp, m.address, m.first_be, m.last_be),
                MemOp::Read | MemOp::ReadLocked => self.on_dma_read(&tlp),
            },
            Body::Message(m) => self.on_message(m.code),
            Body::Io(_) | Body::Config(_) | Body::Atomic(_) => {
                tracing::info!(tlp = %tlp, "rc: unsupported request from the device, answering UR");
                self.reject(&tlp);
            }
        }
    }

    fn on_completion(&mut self, tag: u16, tlp: &Tlp) {
        let now = self.now();
        let Some(out) = self.outstanding.get_mut(&tag).filter(|o| o.result.is_none()) else {
            self.counters.unexpected_completions += 1;
            tracing::warn!(tlp = %tlp, "rc: completion for no outstanding request, dropped");
            return;
        };
        let Body::Completion(c) = &tlp.body else { return };
        match &mut out.state {
            Pending::Read(reassembly) => match reassembly.accept(tlp) {
                Ok(Progress::More { .. }) => {}
                Ok(Progress::Done(data)) => out.result = Some(Ok(data)),
                Err(e) => out.result = Some(Err(e.to_string())),
            },
            Pending::Single { read } => {
                out.crs = c.status == CplStatus::Crs;
                out.result = Some(if c.status != CplStatus::Sc {
                    Err(format!("completed with status {}", c.status.name()))
                } else if *read {
                    match tlp.payload.first_chunk::<4>() {
                        Some(data) => Ok(data.to_vec()),
                        None => Err("successful read completion without data".into()),
                    }
                } else {
                    Ok(Vec::new())
                });
            }
        }
        if out.result.is_some() {
            self.counters.latency.record(now.saturating_sub(out.sent_at));
        }
    }

    fn on_dma_write(&mut self, tlp: &Tlp, address: u64, first_be: u8, last_be: u8) {
        let window = self.config.msi_window;
        if (window..window + WINDOW_LEN).contains(&address) {
            let mut data = [0u8; 4];
            for (i, byte) in data.iter_mut().enumerate() {
                if first_be & (1 << i) != 0 {
                    *byte = tlp.payload.get(i).copied().unwrap_or(0);
                }
            }
            let value = u32::from_le_bytes(data);
            let (kind, vector) = match address - window {
                0 if value & 0xffff <= MAX_MSI_VECTOR => (IrqKind::Msi, value & 0xffff),
                MSIX_WINDOW_OFFSET if value <= MAX_MSIX_VECTOR => (IrqKind::Msix, value),
                other => {
                    tracing::warn!(
                        offset = other,
                        value,
                        "rc: interrupt window write that names no vector, ignored"
                    );
                    return;
                }
            };
            self.raise(kind, vector);
            return;
        }
        let mut written = 0u64;
        for (offset, len) in tlp::byte_enable::enabled_runs(first_be, last_be, tlp.length_dw()) {
            let (o, l) = (offset as usize, len as usize);
            let Some(data) = tlp.payload.get(o..o + l) else { continue };
            if !self.memory.write(address.wrapping_add(u64::from(offset)), data) {
                self.counters.unsupported_requests += 1;
                tracing::warn!(
                    address,
                    len = tlp.payload.len(),
                    "rc: DMA write outside host memory, dropped"
                );
                return;
            }
            written += u64::from(len);
        }
        self.counters.dma_write_requests += 1;
        self.counters.dma_write_bytes += written;
    }

    fn on_dma_read(&mut self, tlp: &Tlp) {
        let read = match MemoryRead::from_tlp(tlp) {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, tlp = %tlp, "rc: malformed DMA read, answering UR");
                self.reject(tlp);
                return;
            }
        };
        let (address, len) = (read.first_byte_address(), read.byte_count());
        let mut data = vec![0u8; len as usize];
        if !self.memory.read(address, &mut data) {
            tracing::info!(address, len, "rc: DMA read outside host memory, answering UR");
            self.reject(tlp);
            return;
        }
        let due = self.now().saturating_add(self.config.completion_latency);
        if self.scheduled.len() >= MAX_SCHEDULED {
            self.counters.unsupported_requests += 1;
            tracing::error!(address, len, "rc: {MAX_SCHEDULED} completions already queued; DMA read dropped");
            return;
        }
        match read_completions(&read, self.config.rc_id, &data, &self.config.link) {
            Ok(completions) => {
                self.counters.dma_read_requests += 1;
                self.counters.dma_read_bytes += u64::from(len);
                self.scheduled.extend(completions.map(|c| (due, c)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "rc: cannot complete DMA read, answering CA");
                if let Ok(cpl) = unsuccessful_completion(tlp, self.config.rc_id, CplStatus::Ca) {
                    self.scheduled.push_back((due, cpl));
                }
            }
        }
    }

    /// Answers a non-posted request with UR (posted ones are only counted).
    fn reject(&mut self, tlp: &Tlp) {
        self.counters.unsupported_requests += 1;
        if self.scheduled.len() >= MAX_SCHEDULED {
            return;
        }
        if let Ok(cpl) = unsuccessful_completion(tlp, self.config.rc_id, CplStatus::Ur) {
            let due = self.now().saturating_add(self.config.completion_latency);
            self.scheduled.push_back((due, cpl));
        }
    }

    fn on_message(&mut self, code: MessageCode) {
        let c = code.0;
        if (MessageCode::ASSERT_INTA.0..=MessageCode::ASSERT_INTD.0).contains(&c) {
            let pin = usize::from(c - MessageCode::ASSERT_INTA.0);
            if let Some(state) = self.intx.get_mut(pin) {
                if !*state {
                    *state = true;
                    self.raise(IrqKind::Intx, pin as u32);
                }
            }
        } else if (MessageCode::DEASSERT_INTA.0..=MessageCode::DEASSERT_INTD.0).contains(&c) {
            if let Some(state) = self.intx.get_mut(usize::from(c - MessageCode::DEASSERT_INTA.0)) {
                *state = false;
            }
        } else {
            tracing::info!(code = c, name = code.name().unwrap_or("unknown"), "rc: message from the device");
            if self.messages.len() < MAX_LOGGED_MESSAGES {
                self.messages.push(code);
            }
        }
    }

    fn raise(&mut self, kind: IrqKind, vector: u32) {
        let cycle = self.now();
        tracing::debug!(?kind, vector, cycle, "rc: interrupt");
        let pending = self.pending_irqs.entry((kind, vector)).or_default();
        *pending = pending.saturating_add(1);
        if self.irq_log.len() < MAX_IRQ_LOG {
            self.irq_log.push(IrqEvent { kind, vector, cycle });
        }
    }

    /// Waits for the completions of `tags`, stepping time; the completion timeout counts cycles.
    async fn wait_for(&mut self, tags: &[u16]) -> Result<Vec<Vec<u8>>> {
        self.wait_outcome(tags).await?.map_err(|failed| rc_error(failed.message))
    }

    /// [`Self::wait_for`], telling a failed request (unsuccessful completion, timeout) apart from
    /// a link error.
    async fn wait_outcome(&mut self, tags: &[u16]) -> Result<Result<Vec<Vec<u8>>, Failed>> {
        loop {
            self.pump().await?;
            let now = self.now();
            let mut all_done = true;
            for tag in tags {
                let Some(out) = self.outstanding.get(tag) else { continue };
                if let Some(Err(e)) = &out.result {
                    let failed =
                        Failed { message: format!("{} at {}: {e}", out.kind, out.address), crs: out.crs };
                    self.release(tags);
                    return Ok(Err(failed));
                }
                if out.result.is_none() {
                    all_done = false;
                    let waited = now.saturating_sub(out.sent_at);
                    if waited >= self.config.completion_timeout {
                        let message = format!(
                            "completion timeout: {} at {} (tag {tag:#x}) sent at cycle {} got no completion within {} cycles",
                            out.kind, out.address, out.sent_at, self.config.completion_timeout
                        );
                        self.release(tags);
                        return Ok(Err(Failed { message, crs: false }));
                    }
                }
            }
            if all_done {
                let mut results = Vec::with_capacity(tags.len());
                for tag in tags {
                    if let Some(Outstanding { result: Some(Ok(data)), .. }) = self.outstanding.remove(tag) {
                        results.push(data);
                    }
                }
                return Ok(Ok(results));
            }
            let deadline = tags
                .iter()
                .filter_map(|t| self.outstanding.get(t))
                .map(|o| o.sent_at.saturating_add(self.config.completion_timeout))
                .min();
            self.step(deadline).await?;
        }
    }

    /// Forgets `tags` (their late completions will count as unexpected).
    fn release(&mut self, tags: &[u16]) {
        for tag in tags {
            self.outstanding.remove(tag);
        }
    }

    async fn issue(&mut self, tlp: Tlp, kind: &'static str, address: String, state: Pending) -> Result<u16> {
        let tag = tlp.tag().unwrap_or(0);
        self.send(&tlp).await?;
        self.outstanding
            .insert(tag, Outstanding { kind, address, sent_at: self.now(), state, result: None, crs: false });
        Ok(tag)
    }

    fn config_tlp(&self, tag: u16, write: bool, offset: u16, first_be: u8, data: [u8; 4]) -> Tlp {
        Tlp {
            prefixes: Vec::new(),
            tc: 0,
            attr: Attr::default(),
            ln: false,
            th: false,
            ep: false,
            at: 0,
            length: 1,
            body: Body::Config(ConfigRequest {
                cfg_type: CfgType::Type0,
                write,
                requester: self.config.rc_id,
                tag,
                first_be,
                last_be: 0,
                target: self.config.device,
                register: offset & 0xffc,
            }),
            payload: if write { data.to_vec() } else { Vec::new() },
            digest: None,
        }
    }

    /// Configuration read of the dword at `offset` (its low two bits ignored). CRS completions
    /// are retried (see [`RcConfig::crs_timeout`]).
    pub async fn config_read(&mut self, offset: u16) -> Result<u32> {
        let data = self.config_request(false, offset, 0xf, [0; 4]).await?;
        let bytes = data.first_chunk::<4>().copied().unwrap_or([0xff; 4]);
        Ok(u32::from_le_bytes(bytes))
    }

    /// Configuration write of `width` (1, 2 or 4) bytes of `value` at `offset`, which must be
    /// naturally aligned. CRS completions are retried (see [`RcConfig::crs_timeout`]).
    pub async fn config_write(&mut self, offset: u16, width: u8, value: u32) -> Result<()> {
        let lane = offset & 3;
        let first_be = match (width, lane) {
            (1, l) => 1u8 << l,
            (2, 0) => 0b0011,
            (2, 2) => 0b1100,
            (4, 0) => 0b1111,
            _ => {
                return Err(rc_error(format!("config write of {width} bytes at {offset:#x} is not aligned")));
            }
        };
        let data = (value << (8 * lane)).to_le_bytes();
        self.config_request(true, offset, first_be, data).await.map(|_| ())
    }

    /// One configuration request, reissued while it completes with CRS: after a back-off that
    /// doubles from [`CRS_FIRST_RETRY`] to [`CRS_MAX_RETRY`], until `crs_timeout` of simulated
    /// time has passed since the first CRS. Returns the read data (empty for a write).
    async fn config_request(
        &mut self,
        write: bool,
        offset: u16,
        first_be: u8,
        data: [u8; 4],
    ) -> Result<Vec<u8>> {
        let kind = if write { "CfgWr0" } else { "CfgRd0" };
        let what = format!("{} offset {:#05x}", self.config.device, offset & 0xffc);
        let budget = self.cycles_in(self.config.crs_timeout);
        let max_interval = self.cycles_in(CRS_MAX_RETRY).max(1);
        let mut interval = self.cycles_in(CRS_FIRST_RETRY).clamp(1, max_interval);
        let mut first_crs: Option<u64> = None;
        let mut retries = 0u64;
        let mut previous_tag: Option<u16> = None;
        loop {
            // A retry reuses the tag its CRS completion freed, so that how many CRS completions
            // a run sees does not shift the tags of everything after (lockstep traces repeat).
            let tag = match previous_tag.filter(|t| !self.outstanding.contains_key(t)) {
                Some(tag) => tag,
                None => self.allocate_tag()?,
            };
            previous_tag = Some(tag);
            let tlp = self.config_tlp(tag, write, offset, first_be, data);
            let tag = self.issue(tlp, kind, what.clone(), Pending::Single { read: !write }).await?;
            let failed = match self.wait_outcome(&[tag]).await? {
                Ok(mut results) => return Ok(results.pop().unwrap_or_default()),
                Err(failed) => failed,
            };
            if !failed.crs {
                return Err(rc_error(failed.message));
            }
            let now = self.now();
            let since = *first_crs.get_or_insert(now);
            let elapsed = now.saturating_sub(since);
            if elapsed >= budget {
                return Err(rc_error(format!(
                    "{}, still after {retries} retries over {elapsed} cycles ({:?}) of simulated time; \
                     the CRS timeout of {:?} (--crs-timeout) is exhausted",
                    failed.message,
                    self.simulated(elapsed),
                    self.config.crs_timeout
                )));
            }
            tracing::debug!(
                request = kind,
                target = %what,
                retries,
                elapsed_cycles = elapsed,
                next_in_cycles = interval,
                "rc: configuration request completed with CRS, retrying"
            );
            // The last retry goes out right at the end of the budget.
            let until = now.saturating_add(interval).min(since.saturating_add(budget));
            self.sleep_until(until).await?;
            interval = interval.saturating_mul(2).min(max_interval);
            retries += 1;
        }
    }

    /// `duration` of simulated time in cycles (rounded up).
    fn cycles_in(&self, duration: Duration) -> u64 {
        let ps = u64::try_from(duration.as_nanos().saturating_mul(1000)).unwrap_or(u64::MAX);
        ps.div_ceil(u64::from(self.config.ps_per_cycle.max(1)))
    }

    /// `cycles` as simulated time.
    fn simulated(&self, cycles: u64) -> Duration {
        Duration::from_nanos(cycles.saturating_mul(u64::from(self.config.ps_per_cycle)) / 1000)
    }

    /// Memory read of `len` bytes at `address`, split at MRRS, all chunks outstanding at once.
    pub async fn mem_read(&mut self, address: u64, len: u64) -> Result<Vec<u8>> {
        let mrrs = self.config.link.max_read_request_size();
        let chunks: Vec<_> =
            memory_read_requests(address, len, mrrs).map_err(|e| rc_error(e.to_string()))?.collect();
        let mut tags = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let tag = match self.allocate_tag() {
                Ok(tag) => tag,
                Err(e) => {
                    self.release(&tags);
                    return Err(e);
                }
            };
            let fields = self.fields();
            let tlp = memory_read_tlp(&fields, chunk, tag, mrrs).map_err(|e| rc_error(e.to_string()))?;
            let reassembly = ReadReassembly::for_request(&tlp)
                .and_then(|r| r.with_read_completion_boundary(64))
                .map_err(|e| rc_error(e.to_string()))?;
            let what = format!("{:#x} ({} bytes)", chunk.address, chunk.len);
            tags.push(self.issue(tlp, "MRd", what, Pending::Read(reassembly)).await?);
        }
        Ok(self.wait_for(&tags).await?.concat())
    }

    /// Posted memory write of `data` at `address`, split at MPS.
    pub async fn mem_write(&mut self, address: u64, data: &[u8]) -> Result<()> {
        let mps = self.config.link.max_payload_size();
        let tlps: Vec<Tlp> = memory_write_tlps(self.fields(), address, data, mps)
            .map_err(|e| rc_error(e.to_string()))?
            .collect();
        for tlp in &tlps {
            self.send(tlp).await?;
        }
        self.pump().await
    }

    fn io_tlp(&self, tag: u16, write: bool, address: u32, first_be: u8, data: [u8; 4]) -> Tlp {
        Tlp {
            prefixes: Vec::new(),
            tc: 0,
            attr: Attr::default(),
            ln: false,
            th: false,
            ep: false,
            at: 0,
            length: 1,
            body: Body::Io(IoRequest {
                write,
                requester: self.config.rc_id,
                tag,
                first_be,
                last_be: 0,
                address: address & !3,
            }),
            payload: if write { data.to_vec() } else { Vec::new() },
            digest: None,
        }
    }

    fn io_enables(address: u64, width: u8) -> Result<(u32, u8)> {
        let lane = (address & 3) as u8;
        let first_be = match width {
            1 | 2 | 4 if u64::from(lane) + u64::from(width) <= 4 => ((1u16 << width) - 1) as u8 & 0xf,
            _ => {
                return Err(rc_error(format!(
                    "I/O access of {width} bytes at {address:#x} must stay in one DW"
                )));
            }
        };
        let address =
            u32::try_from(address).map_err(|_| rc_error(format!("I/O address {address:#x} above 4 GiB")))?;
        Ok((address, first_be << lane))
    }

    /// I/O read of `width` bytes (within one DW) at `address`.
    pub async fn io_read(&mut self, address: u64, width: u8) -> Result<Vec<u8>> {
        let (addr, first_be) = Self::io_enables(address, width)?;
        let tag = self.allocate_tag()?;
        let tlp = self.io_tlp(tag, false, addr, first_be, [0; 4]);
        let tag =
            self.issue(tlp, "IORd", format!("I/O {address:#x}"), Pending::Single { read: true }).await?;
        let data = self.wait_for(&[tag]).await?.concat();
        let lane = (address & 3) as usize;
        Ok(data.get(lane..lane + usize::from(width)).map(<[u8]>::to_vec).unwrap_or_default())
    }

    /// I/O write of `data` (1, 2 or 4 bytes within one DW) at `address`.
    pub async fn io_write(&mut self, address: u64, data: &[u8]) -> Result<()> {
        let width = u8::try_from(data.len()).unwrap_or(0);
        let (addr, first_be) = Self::io_enables(address, width)?;
        let lane = (address & 3) as usize;
        let mut dw = [0u8; 4];
        if let Some(dst) = dw.get_mut(lane..lane + data.len()) {
            dst.copy_from_slice(data);
        }
        let tag = self.allocate_tag()?;
        let tlp = self.io_tlp(tag, true, addr, first_be, dw);
        let tag =
            self.issue(tlp, "IOWr", format!("I/O {address:#x}"), Pending::Single { read: false }).await?;
        self.wait_for(&[tag]).await.map(|_| ())
    }

    /// Serves the device until cycle `until`.
    pub async fn sleep_until(&mut self, until: u64) -> Result<()> {
        loop {
            self.pump().await?;
            if self.now() >= until {
                return Ok(());
            }
            self.step(Some(until)).await?;
        }
    }

    /// Waits up to `timeout` cycles for an interrupt (kind, vector) and consumes it; returns the
    /// cycles waited.
    pub async fn wait_irq(&mut self, kind: IrqKind, vector: u32, timeout: u64) -> Result<u64> {
        let start = self.now();
        let deadline = start.saturating_add(timeout);
        loop {
            self.pump().await?;
            if let Some(count) = self.pending_irqs.get_mut(&(kind, vector)).filter(|c| **c > 0) {
                *count -= 1;
                return Ok(self.now() - start);
            }
            if kind == IrqKind::Intx && self.intx.get(vector as usize).copied().unwrap_or(false) {
                return Ok(self.now() - start);
            }
            if self.now() >= deadline {
                return Err(rc_error(format!(
                    "no {} interrupt {} within {timeout} cycles (cycles {start}..{})",
                    kind.name(),
                    kind.vector_name(vector),
                    self.now()
                )));
            }
            self.step(Some(deadline)).await?;
        }
    }

    /// Sends everything due and lets the device finish what it is doing for one step.
    pub async fn settle(&mut self) -> Result<()> {
        self.pump().await?;
        self.step(None).await?;
        self.pump().await
    }
}

pub(crate) fn rc_error(message: impl Into<String>) -> Error {
    Error::Rc { line: None, message: message.into() }
}
