//! Packet capture: both sides of the bridge in one pcapng file (see `docs/capture-format.md`).
//!
//! Interface 0 (LINKTYPE_USER0) carries the TLPs on the root-port link, interface 1
//! (LINKTYPE_USER1) the vfio-user messages on the client's sockets; each record has a small
//! pseudo-header ([`format`]). The data path only ever calls [`CaptureHandle::tlp`] or
//! [`CaptureHandle::vfio_user`], which append the record to a shared batch buffer (one short
//! lock, one copy, never an allocation: the buffer is allocated and touched at its full size,
//! [`CaptureConfig::queue_bytes`], when the capture starts, so capture's memory does not grow
//! while it runs): a full batch drops the record and counts it, never waits. One writer thread takes the whole batch at a time (swapping in an
//! empty buffer), encodes its Enhanced Packet Blocks straight into the file buffer, and flushes
//! whenever no records are waiting (and at least every [`CaptureConfig::flush_interval`]), so a
//! killed bridge leaves a file that is complete up to its last few records.
//!
//! Drops are written into the file twice: as `epb_dropcount` on the next record of the same
//! interface (so a file cut short by SIGKILL still shows them) and, by [`CaptureWriter::finish`],
//! as `isb_ifdrop` in an Interface Statistics Block per interface.

pub mod format;
pub mod read;
pub mod show;

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pcap_file::DataLink;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::interface_statistics::{InterfaceStatisticsBlock, InterfaceStatisticsOption};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::{Endianness, PcapError};
use tracing::{debug, warn};

use transports::link::LinkInstant;
use transports::vfio_user::{MessageTap, SocketRole, TapDirection};

use crate::engine::{BridgeError, Result};

pub use format::{Direction, TlpFlags, VfioSocket};
use format::{INTERFACE_TLP, INTERFACE_VFIO_USER};
pub use format::{TlpHeaderRepr, VfioUserHeaderRepr};

/// Which clock a link's timestamps count in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkClockKind {
    Wall,
    Simulated,
}

/// What the capture file says about the link, and how the writer behaves.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// Short link kind for `if_name` (`memory`, `sim`, `serial`...).
    pub link_kind: String,
    /// Human-readable link description for `if_description` (address, device).
    pub link_description: String,
    /// Written in every TLP record (several links may share a file).
    pub link_id: u8,
    pub clock: LinkClockKind,
    /// Records queued for the writer at most; beyond, records are dropped and counted.
    pub queue_depth: usize,
    /// Bytes queued for the writer at most (each record's data plus 16 bytes); beyond, records
    /// are dropped and counted. Two buffers of this size (the data path's and the writer's) are
    /// allocated when the capture starts; at least [`MIN_QUEUE_BYTES`].
    pub queue_bytes: usize,
    /// Longest time a written record may sit in the writer's buffer.
    pub flush_interval: Duration,
}

impl CaptureConfig {
    /// Interface name, description and clock from the link the bridge runs on; writer defaults.
    pub fn for_link(link: &transports::link::Link) -> Self {
        CaptureConfig {
            link_kind: link.info.kind.clone(),
            link_description: link.info.description.clone(),
            clock: if link.clock.is_simulated() { LinkClockKind::Simulated } else { LinkClockKind::Wall },
            ..CaptureConfig::default()
        }
    }
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            link_kind: "link".to_owned(),
            link_description: "root-port link".to_owned(),
            link_id: 0,
            clock: LinkClockKind::Wall,
            queue_depth: 16384,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            flush_interval: Duration::from_millis(20),
        }
    }
}

/// Default of [`CaptureConfig::queue_bytes`].
pub const DEFAULT_QUEUE_BYTES: usize = 8 << 20;
/// Least [`CaptureConfig::queue_bytes`]: room for the largest vfio-user message the bridge
/// exchanges (a DMA message of the client's 1 MiB `max_data_xfer_size` and its header) with
/// other records beside it.
pub const MIN_QUEUE_BYTES: usize = 2 << 20;

/// How long the writer sleeps when its queue is empty: shortly after traffic, longer when idle.
/// With the default queue depth the writer can take 16384 records per 5 ms before one is dropped.
const POLL_BUSY: Duration = Duration::from_millis(1);
const POLL_IDLE: Duration = Duration::from_millis(5);

/// Per-record fields in the batch buffer, in front of the record's data (pseudo-header and
/// bytes): interface (1 byte), direction bits (1), reserved (2), data length (u32), wall-clock
/// nanoseconds (u64), all native-endian. Private to this process: the file gets real EPBs.
mod batch_record {
    use std::ops::Range;
    pub const INTERFACE: usize = 0;
    pub const DIRECTION: usize = 1;
    pub const DATA_LEN: Range<usize> = 4..8;
    pub const WALL_NS: Range<usize> = 8..16;
    pub const LEN: usize = 16;
}

/// An empty buffer of `capacity` bytes whose pages are already resident (written once), so
/// that filling it later neither allocates nor faults pages in on the data path, and the
/// process's memory does not creep up as ever larger batches are seen.
fn resident_buffer(capacity: usize) -> Result<Vec<u8>> {
    let mut buffer = Vec::new();
    buffer.try_reserve_exact(capacity).map_err(|_| BridgeError::CaptureMemory { bytes: capacity })?;
    // Not zeros: a zeroed allocation may come from untouched (copy-on-write zero) pages.
    buffer.resize(capacity, 0xa5);
    buffer.clear();
    Ok(buffer)
}

/// Records waiting for the writer thread, packed into one buffer.
#[derive(Debug, Default)]
struct Batch {
    bytes: Vec<u8>,
    records: usize,
    /// The writer asked to finish (set by [`CaptureWriter::finish`]).
    finish: bool,
    /// The writer has taken its last batch: records offered now are dropped.
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    batch: Mutex<Batch>,
    /// Records a batch holds at most; beyond, records are dropped and counted.
    max_records: usize,
    /// Bytes a batch holds at most (the capacity its buffers were allocated with).
    max_bytes: usize,
    offered: [AtomicU64; 2],
    dropped: [AtomicU64; 2],
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Batch> {
        // A panic while appending bytes leaves the batch consistent enough to keep writing.
        self.batch.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What to do when the batch is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    /// The data path: drop the record and count it.
    DropIfFull,
    /// Offline tools: wait for room.
    Wait,
}

#[derive(Debug)]
struct HandleInner {
    shared: Arc<Shared>,
    link_id: u8,
    simulated: bool,
}

/// The data path's side of a capture: cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct CaptureHandle {
    inner: Arc<HandleInner>,
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A record's pseudo-header, emitted straight into the batch buffer.
#[derive(Clone, Copy)]
enum PseudoHeader<'a> {
    Tlp(&'a TlpHeaderRepr),
    VfioUser(&'a VfioUserHeaderRepr),
}

impl PseudoHeader<'_> {
    fn interface(&self) -> u32 {
        match self {
            PseudoHeader::Tlp(_) => INTERFACE_TLP,
            PseudoHeader::VfioUser(_) => INTERFACE_VFIO_USER,
        }
    }

    fn direction(&self) -> Direction {
        match self {
            PseudoHeader::Tlp(h) => h.direction,
            PseudoHeader::VfioUser(h) => h.direction,
        }
    }

    fn len(&self) -> usize {
        match self {
            PseudoHeader::Tlp(_) => format::tlp_header::LEN,
            PseudoHeader::VfioUser(_) => format::vfio_user_header::LEN,
        }
    }

    fn emit(&self, out: &mut Vec<u8>) {
        match self {
            PseudoHeader::Tlp(h) => h.emit(out),
            PseudoHeader::VfioUser(h) => h.emit(out),
        }
    }
}

impl CaptureHandle {
    /// Records one TLP as it crossed the link (`link_time`: on the link's clock). `flags`'s
    /// `simulated_time` is set from the configured clock.
    pub fn tlp(&self, direction: Direction, link_time: LinkInstant, flags: TlpFlags, bytes: &[u8]) {
        let header = TlpHeaderRepr {
            direction,
            link_id: self.inner.link_id,
            flags: TlpFlags { simulated_time: self.inner.simulated, ..flags },
            link_time_ps: link_time.as_picos(),
        };
        self.queue(PseudoHeader::Tlp(&header), bytes, Delivery::DropIfFull);
    }

    /// Records one vfio-user message (header and payload as on the socket).
    pub fn vfio_user(&self, direction: Direction, socket: VfioSocket, fds: usize, message: &[u8]) {
        let header = VfioUserHeaderRepr { direction, socket, fds: u8::try_from(fds).unwrap_or(u8::MAX) };
        self.queue(PseudoHeader::VfioUser(&header), message, Delivery::DropIfFull);
    }

    /// Writes a TLP record with exactly this pseudo-header, waiting for room in the queue: for
    /// offline tools (`tlpbridge pcap write`), never for the data path.
    pub fn write_tlp_waiting(&self, header: &TlpHeaderRepr, bytes: &[u8]) {
        self.queue(PseudoHeader::Tlp(header), bytes, Delivery::Wait);
    }

    /// Writes a vfio-user record, waiting for room in the queue (offline tools only).
    pub fn write_vfio_user_waiting(&self, header: &VfioUserHeaderRepr, message: &[u8]) {
        self.queue(PseudoHeader::VfioUser(header), message, Delivery::Wait);
    }

    fn queue(&self, header: PseudoHeader<'_>, bytes: &[u8], delivery: Delivery) {
        let shared = &self.inner.shared;
        let slot = header.interface() as usize;
        if let Some(offered) = shared.offered.get(slot) {
            offered.fetch_add(1, Ordering::Relaxed);
        }
        let wall = wall_ns();
        let data_len = u32::try_from(header.len() + bytes.len()).unwrap_or(u32::MAX);
        let mut fields = [0u8; batch_record::LEN];
        fields[batch_record::INTERFACE] = header.interface() as u8;
        fields[batch_record::DIRECTION] = header.direction().bits();
        fields[batch_record::DATA_LEN].copy_from_slice(&data_len.to_ne_bytes());
        fields[batch_record::WALL_NS].copy_from_slice(&wall.to_ne_bytes());
        let stored = loop {
            let mut batch = shared.lock();
            if batch.closed {
                break false;
            }
            let record_len = batch_record::LEN + data_len as usize;
            let fits =
                batch.records < shared.max_records && batch.bytes.len() + record_len <= shared.max_bytes;
            // Offline tools wait for room, but a record larger than the whole buffer must still
            // go (into an empty batch, which grows for it).
            let oversized = delivery == Delivery::Wait && batch.records == 0;
            if fits || oversized {
                batch.bytes.extend_from_slice(&fields);
                header.emit(&mut batch.bytes);
                batch.bytes.extend_from_slice(bytes);
                batch.records += 1;
                break true;
            }
            drop(batch);
            match delivery {
                Delivery::DropIfFull => break false,
                // The writer takes the whole batch at its next poll.
                Delivery::Wait => std::thread::sleep(POLL_BUSY),
            }
        };
        if !stored && let Some(dropped) = shared.dropped.get(slot) {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped so far (queue full or writer gone), both interfaces.
    pub fn dropped(&self) -> u64 {
        self.inner.shared.dropped.iter().map(|d| d.load(Ordering::Relaxed)).sum()
    }
}

/// The vfio-user client reports its socket traffic here (set as `ClientConfig::tap`).
impl MessageTap for CaptureHandle {
    fn message(&self, direction: TapDirection, socket: SocketRole, message: &[u8], fds: usize) {
        let direction = match direction {
            TapDirection::Sent => Direction::Outbound,
            TapDirection::Received => Direction::Inbound,
        };
        let socket = match socket {
            SocketRole::Main => VfioSocket::Main,
            SocketRole::Twin => VfioSocket::Twin,
        };
        self.vfio_user(direction, socket, fds, message);
    }
}

/// Totals at the end of a capture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CaptureSummary {
    pub tlp_records: u64,
    pub vfio_user_records: u64,
    pub tlp_dropped: u64,
    pub vfio_user_dropped: u64,
}

impl CaptureSummary {
    pub fn dropped(&self) -> u64 {
        self.tlp_dropped + self.vfio_user_dropped
    }
}

/// Owns the writer thread; [`CaptureWriter::finish`] writes the statistics and closes the file.
/// Dropping it without `finish` does the same, ignoring errors.
#[derive(Debug)]
pub struct CaptureWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<CaptureSummary>>>,
    path: PathBuf,
}

/// Creates captures.
#[derive(Debug)]
pub struct Capture;

impl Capture {
    /// Creates `path` (truncating it), writes the section and interface blocks, and starts the
    /// writer thread.
    pub fn create(path: &Path, config: CaptureConfig) -> Result<(CaptureHandle, CaptureWriter)> {
        let file = File::create(path)
            .map_err(|source| BridgeError::CaptureCreate { path: path.to_owned(), source })?;
        let write_err =
            |e: PcapError| BridgeError::CaptureWrite { path: path.to_owned(), detail: e.to_string() };
        let section = SectionHeaderBlock {
            endianness: Endianness::native(),
            options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
                "tlpbridge {}",
                env!("CARGO_PKG_VERSION")
            )))],
            ..SectionHeaderBlock::default()
        };
        let mut writer =
            PcapNgWriter::with_section_header(BufWriter::with_capacity(64 * 1024, file), section)
                .map_err(write_err)?;
        let clock = match config.clock {
            LinkClockKind::Wall => "wall clock",
            LinkClockKind::Simulated => "simulated clock",
        };
        let interfaces = [
            (
                format::LINKTYPE_TLP,
                format!("tlp-{}", config.link_kind),
                format!(
                    "TLPs on {} (link id {}); link_time in the pseudo-header counts on the {clock}",
                    config.link_description, config.link_id
                ),
            ),
            (
                format::LINKTYPE_VFIO_USER,
                "vfio-user".to_owned(),
                "vfio-user messages on the client's main and twin sockets (fds not captured)".to_owned(),
            ),
        ];
        for (linktype, name, description) in interfaces {
            writer
                .write_pcapng_block(InterfaceDescriptionBlock {
                    linktype: DataLink::from(linktype),
                    snaplen: 0,
                    options: vec![
                        InterfaceDescriptionOption::IfName(Cow::Owned(name)),
                        InterfaceDescriptionOption::IfDescription(Cow::Owned(description)),
                        InterfaceDescriptionOption::IfTsResol(format::TS_RESOLUTION_NS),
                    ],
                })
                .map_err(write_err)?;
        }
        writer
            .get_mut()
            .flush()
            .map_err(|e| BridgeError::CaptureWrite { path: path.to_owned(), detail: e.to_string() })?;

        let max_bytes = config.queue_bytes.max(MIN_QUEUE_BYTES);
        // The data path's buffer and the writer's half of the swap.
        let (bytes, taken) = (resident_buffer(max_bytes)?, resident_buffer(max_bytes)?);
        let shared = Arc::new(Shared {
            batch: Mutex::new(Batch { bytes, ..Batch::default() }),
            max_records: config.queue_depth.max(1),
            max_bytes,
            offered: Default::default(),
            dropped: Default::default(),
        });
        let thread_shared = shared.clone();
        let thread_path = path.to_owned();
        let flush_interval = config.flush_interval;
        let thread = std::thread::Builder::new()
            .name("tlpbridge-capture".to_owned())
            .spawn(move || write_loop(writer, thread_shared, taken, &thread_path, flush_interval))
            .map_err(|e| BridgeError::CaptureThread(format!("cannot start the writer thread: {e}")))?;
        let handle = CaptureHandle {
            inner: Arc::new(HandleInner {
                shared: shared.clone(),
                link_id: config.link_id,
                simulated: config.clock == LinkClockKind::Simulated,
            }),
        };
        Ok((handle, CaptureWriter { shared, thread: Some(thread), path: path.to_owned() }))
    }
}

impl CaptureWriter {
    /// Writes what is queued, the drop statistics, and closes the file. Records offered after
    /// this are dropped. Blocks until the writer thread is done (bounded: the queue is bounded).
    pub fn finish(mut self) -> Result<CaptureSummary> {
        self.stop()
    }

    fn stop(&mut self) -> Result<CaptureSummary> {
        let Some(thread) = self.thread.take() else {
            return Err(BridgeError::CaptureThread("already finished".to_owned()));
        };
        self.shared.lock().finish = true;
        thread.join().map_err(|_| {
            BridgeError::CaptureThread(format!("the writer of {} panicked", self.path.display()))
        })?
    }
}

impl Drop for CaptureWriter {
    fn drop(&mut self) {
        if self.thread.is_some()
            && let Err(e) = self.stop()
        {
            warn!(error = %e, "capture not finished cleanly");
        }
    }
}

/// pcapng block type of an Enhanced Packet Block.
const EPB_TYPE: u32 = 6;
/// EPB option codes (pcapng §4.3.1).
const EPB_FLAGS: u16 = 2;
const EPB_DROPCOUNT: u16 = 4;

/// Writes the records of a batch as Enhanced Packet Blocks; `written` and `drops_reported` are
/// per interface.
fn write_batch(
    out: &mut impl Write,
    batch: &[u8],
    shared: &Shared,
    written: &mut [u64; 2],
    drops_reported: &mut [u64; 2],
) -> std::io::Result<()> {
    let mut at = 0;
    while let Some(fields) = batch.get(at..at + batch_record::LEN) {
        let mut len = [0u8; 4];
        len.copy_from_slice(&fields[batch_record::DATA_LEN]);
        let mut wall = [0u8; 8];
        wall.copy_from_slice(&fields[batch_record::WALL_NS]);
        let (interface, direction) = (fields[batch_record::INTERFACE], fields[batch_record::DIRECTION]);
        let start = at + batch_record::LEN;
        let end = start + u32::from_ne_bytes(len) as usize;
        let Some(data) = batch.get(start..end) else {
            return Err(std::io::Error::other("capture batch cut short (internal error)"));
        };
        at = end;
        let slot = usize::from(interface);
        let dropped = shared.dropped.get(slot).map_or(0, |d| d.load(Ordering::Relaxed));
        let mut drop_count = None;
        if let Some(reported) = drops_reported.get_mut(slot)
            && dropped > *reported
        {
            drop_count = Some(dropped - *reported);
            *reported = dropped;
        }
        encode_epb(out, u32::from(interface), u64::from_ne_bytes(wall), direction, drop_count, data)?;
        if let Some(n) = written.get_mut(slot) {
            *n += 1;
        }
    }
    Ok(())
}

/// One Enhanced Packet Block in native byte order (the section's), with `epb_flags` (the
/// direction bits) and, if given, `epb_dropcount`: the bytes `pcap_file` writes for the same
/// block, without its per-block allocations and its second, length-counting pass.
fn encode_epb(
    out: &mut impl Write,
    interface: u32,
    timestamp_ns: u64,
    direction: u8,
    drop_count: Option<u64>,
    data: &[u8],
) -> std::io::Result<()> {
    let pad = (4 - data.len() % 4) % 4;
    let options = 8 + if drop_count.is_some() { 12 } else { 0 } + 4;
    let total = u32::try_from(12 + 20 + data.len() + pad + options).unwrap_or(u32::MAX);
    let captured = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut head = [0u8; 28];
    for (i, word) in
        [EPB_TYPE, total, interface, (timestamp_ns >> 32) as u32, timestamp_ns as u32, captured, captured]
            .into_iter()
            .enumerate()
    {
        head[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    out.write_all(&head)?;
    out.write_all(data)?;
    out.write_all(&[0u8; 3][..pad])?;
    let mut tail = [0u8; 28];
    tail[0..2].copy_from_slice(&EPB_FLAGS.to_ne_bytes());
    tail[2..4].copy_from_slice(&4u16.to_ne_bytes());
    tail[4..8].copy_from_slice(&u32::from(direction).to_ne_bytes());
    let mut end = 8;
    if let Some(count) = drop_count {
        tail[8..10].copy_from_slice(&EPB_DROPCOUNT.to_ne_bytes());
        tail[10..12].copy_from_slice(&8u16.to_ne_bytes());
        tail[12..20].copy_from_slice(&count.to_ne_bytes());
        end = 20;
    }
    // opt_endofopt (four zero bytes), then the trailing block length.
    tail[end + 4..end + 8].copy_from_slice(&total.to_ne_bytes());
    out.write_all(&tail[..end + 8])
}

fn write_loop(
    mut writer: PcapNgWriter<BufWriter<File>>,
    shared: Arc<Shared>,
    mut taken: Vec<u8>,
    path: &Path,
    flush_interval: Duration,
) -> Result<CaptureSummary> {
    let write_err = |detail: String| BridgeError::CaptureWrite { path: path.to_owned(), detail };
    let start_ns = wall_ns();
    let mut written = [0u64; 2];
    let mut drops_reported = [0u64; 2];
    let mut dirty = false;
    let mut last_flush = Instant::now();
    let mut idle_polls = 0u32;
    // `taken`: the batch taken from the data path; swapped back empty, so both buffers keep
    // their size.
    loop {
        let (records, full, finishing) = {
            let mut batch = shared.lock();
            // Asked to finish, or every handle and the CaptureWriter are gone.
            let finishing = batch.finish || Arc::strong_count(&shared) == 1;
            std::mem::swap(&mut batch.bytes, &mut taken);
            let records = std::mem::take(&mut batch.records);
            // Records offered after the last batch are dropped and counted.
            batch.closed = finishing;
            (records, records >= shared.max_records, finishing)
        };
        if records > 0 {
            write_batch(writer.get_mut(), &taken, &shared, &mut written, &mut drops_reported)
                .map_err(|e| write_err(e.to_string()))?;
            taken.clear();
            dirty = true;
            idle_polls = 0;
        }
        if finishing {
            break;
        }
        if records == 0 && dirty {
            // Nothing waiting: flush so that a kill now loses nothing already offered.
            writer.get_mut().flush().map_err(|e| write_err(e.to_string()))?;
            dirty = false;
            last_flush = Instant::now();
        } else if dirty && last_flush.elapsed() >= flush_interval {
            writer.get_mut().flush().map_err(|e| write_err(e.to_string()))?;
            dirty = false;
            last_flush = Instant::now();
        }
        if !full {
            // Polling rather than being woken: the data path then never makes a wake-up system
            // call, and the records of a whole poll interval are written as one batch. Short
            // sleeps while traffic may resume, longer ones when idle.
            idle_polls = idle_polls.saturating_add(u32::from(records == 0));
            std::thread::sleep(if idle_polls < 20 { POLL_BUSY } else { POLL_IDLE });
        }
    }
    let end_ns = wall_ns();
    let dropped = [0, 1].map(|i| shared.dropped[i].load(Ordering::Relaxed));
    for interface in [INTERFACE_TLP, INTERFACE_VFIO_USER] {
        let i = interface as usize;
        writer
            .write_pcapng_block(InterfaceStatisticsBlock {
                interface_id: interface,
                timestamp: end_ns,
                options: vec![
                    InterfaceStatisticsOption::IsbStartTime(start_ns),
                    InterfaceStatisticsOption::IsbEndTime(end_ns),
                    InterfaceStatisticsOption::IsbIfRecv(written[i] + dropped[i]),
                    InterfaceStatisticsOption::IsbIfDrop(dropped[i]),
                    InterfaceStatisticsOption::Comment(Cow::Owned(format!(
                        "tlpbridge: {} records written, {} dropped because the writer fell behind",
                        written[i], dropped[i]
                    ))),
                ],
            })
            .map_err(|e| write_err(e.to_string()))?;
    }
    let mut file = writer.into_inner();
    file.flush().map_err(|e| write_err(e.to_string()))?;
    let summary = CaptureSummary {
        tlp_records: written[0],
        vfio_user_records: written[1],
        tlp_dropped: dropped[0],
        vfio_user_dropped: dropped[1],
    };
    debug!(?summary, path = %path.display(), "capture finished");
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};

    /// The bytes `pcap_file` writes for the same Enhanced Packet Block.
    fn pcap_file_epb(timestamp_ns: u64, direction: u8, drop_count: Option<u64>, data: &[u8]) -> Vec<u8> {
        let mut options = vec![EnhancedPacketOption::Flags(u32::from(direction))];
        options.extend(drop_count.map(EnhancedPacketOption::DropCount));
        let block = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(timestamp_ns),
            original_len: data.len() as u32,
            data: Cow::Borrowed(data),
            options,
        };
        let section =
            SectionHeaderBlock { endianness: Endianness::native(), ..SectionHeaderBlock::default() };
        let mut writer = PcapNgWriter::with_section_header(Vec::new(), section).unwrap();
        for linktype in [format::LINKTYPE_TLP, format::LINKTYPE_VFIO_USER] {
            writer
                .write_pcapng_block(InterfaceDescriptionBlock {
                    linktype: DataLink::from(linktype),
                    snaplen: 0,
                    options: Vec::new(),
                })
                .unwrap();
        }
        let before = writer.get_ref().len();
        writer.write_pcapng_block(block).unwrap();
        writer.get_ref()[before..].to_vec()
    }

    #[test]
    fn encoded_epb_is_byte_for_byte_what_pcap_file_writes() {
        for (len, drop_count) in [(0usize, None), (5, Some(3u64)), (28, None), (4151, Some(1 << 40))] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let timestamp = 0x1234_5678_9abc_def0;
            let mut ours = Vec::new();
            encode_epb(&mut ours, 0, timestamp, 2, drop_count, &data).unwrap();
            assert_eq!(ours, pcap_file_epb(timestamp, 2, drop_count, &data), "len {len}");
        }
    }

    #[test]
    fn a_batch_is_written_in_order_with_each_interface_drop_count_once() {
        let handle = stalled(2, MIN_QUEUE_BYTES, 7, true);
        handle.tlp(Direction::Inbound, LinkInstant(5), TlpFlags::default(), &[1, 2, 3, 4]);
        handle.vfio_user(Direction::Outbound, VfioSocket::Main, 0, &[9; 16]);
        handle.tlp(Direction::Inbound, LinkInstant(6), TlpFlags::default(), &[5, 6, 7, 8]);
        assert_eq!(handle.dropped(), 1, "the third record overflows a 2-record batch");
        let shared = &handle.inner.shared;
        let batch = std::mem::take(&mut shared.lock().bytes);
        let (mut written, mut reported) = ([0u64; 2], [0u64; 2]);
        let mut out = Vec::new();
        write_batch(&mut out, &batch, shared, &mut written, &mut reported).unwrap();
        assert_eq!(written, [1, 1]);
        assert_eq!(reported, [1, 0]);
        let mut tlp_data = Vec::new();
        TlpHeaderRepr {
            direction: Direction::Inbound,
            link_id: 7,
            flags: TlpFlags { simulated_time: true, ..TlpFlags::default() },
            link_time_ps: 5,
        }
        .emit(&mut tlp_data);
        tlp_data.extend_from_slice(&[1, 2, 3, 4]);
        let first_len = u32::from_ne_bytes(out[4..8].try_into().unwrap()) as usize;
        let wall = |block: &[u8]| {
            let word = |at: usize| u64::from(u32::from_ne_bytes(block[at..at + 4].try_into().unwrap()));
            word(12) << 32 | word(16)
        };
        let (first, second) = out.split_at(first_len);
        assert_eq!(first, pcap_file_epb(wall(first), 1, Some(1), &tlp_data));
        assert_eq!(u32::from_ne_bytes(second[8..12].try_into().unwrap()), INTERFACE_VFIO_USER);
    }

    /// A handle on a batch with no writer thread: what the data path sees while the writer
    /// is stalled.
    fn stalled(max_records: usize, max_bytes: usize, link_id: u8, simulated: bool) -> CaptureHandle {
        let shared = Arc::new(Shared {
            batch: Mutex::new(Batch { bytes: resident_buffer(max_bytes).unwrap(), ..Batch::default() }),
            max_records,
            max_bytes,
            offered: Default::default(),
            dropped: Default::default(),
        });
        CaptureHandle { inner: Arc::new(HandleInner { shared, link_id, simulated }) }
    }

    fn buffer_identity(handle: &CaptureHandle) -> (usize, *const u8, usize) {
        let batch = handle.inner.shared.lock();
        (batch.bytes.capacity(), batch.bytes.as_ptr(), batch.records)
    }

    #[test]
    fn records_beyond_the_byte_bound_are_dropped_and_the_buffer_never_grows() {
        let handle = stalled(16384, MIN_QUEUE_BYTES, 0, false);
        let (capacity, address, _) = buffer_identity(&handle);
        assert!(capacity >= MIN_QUEUE_BYTES);
        // Two DMA messages of 700 KiB fit in 2 MiB, a third does not, though the record bound
        // (16384) is far away: the old record-only bound queued all of them.
        let message = vec![0x5au8; 700 << 10];
        for _ in 0..3 {
            handle.vfio_user(Direction::Inbound, VfioSocket::Twin, 0, &message);
        }
        assert_eq!(handle.dropped(), 1);
        // Small records still fit beside them until the bytes run out.
        let mrd = [0u8; 12];
        let room = MIN_QUEUE_BYTES - 2 * (batch_record::LEN + format::vfio_user_header::LEN + message.len());
        let per_record = batch_record::LEN + format::tlp_header::LEN + mrd.len();
        for i in 0..(room / per_record + 10) {
            handle.tlp(Direction::Inbound, LinkInstant(i as u64), TlpFlags::default(), &mrd);
        }
        assert_eq!(handle.dropped(), 1 + 10);
        let (capacity_after, address_after, records) = buffer_identity(&handle);
        assert_eq!((capacity_after, address_after), (capacity, address), "the batch buffer was reallocated");
        assert_eq!(records, 2 + room / per_record);
        assert!(handle.inner.shared.lock().bytes.len() <= MIN_QUEUE_BYTES);
    }

    #[test]
    fn a_queue_that_cannot_be_allocated_is_an_error_not_an_abort() {
        let dir = std::env::temp_dir().join(format!("tlpbridge-capture-memory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = CaptureConfig { queue_bytes: 1 << 62, ..CaptureConfig::default() };
        let result = Capture::create(&dir.join("big.pcapng"), config);
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Err(e @ BridgeError::CaptureMemory { .. }) => {
                assert!(e.to_string().contains("--pcap-queue-bytes"), "{e}")
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("a 4 EiB queue was allocated"),
        }
    }

    #[test]
    fn an_offline_tool_may_queue_one_record_larger_than_the_whole_buffer() {
        let handle = stalled(16384, MIN_QUEUE_BYTES, 0, false);
        let header = VfioUserHeaderRepr { direction: Direction::Outbound, socket: VfioSocket::Main, fds: 0 };
        let message = vec![1u8; MIN_QUEUE_BYTES + 1];
        // Would wait forever if an empty batch refused it.
        handle.write_vfio_user_waiting(&header, &message);
        assert_eq!(handle.dropped(), 0);
        assert_eq!(buffer_identity(&handle).2, 1);
    }
}
