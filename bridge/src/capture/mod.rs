//! Packet capture: both sides of the bridge in one pcapng file (see `docs/capture-format.md`).
//!
//! Interface 0 (LINKTYPE_USER0) carries the TLPs on the root-port link, interface 1
//! (LINKTYPE_USER1) the vfio-user messages on the client's sockets; each record has a small
//! pseudo-header ([`format`]). The data path only ever calls [`CaptureHandle::tlp`] or
//! [`CaptureHandle::vfio_user`], which copy the bytes into a bounded queue with `try_send`: a
//! full queue drops the record and counts it, never waits. One writer thread does the file I/O,
//! flushing whenever its queue runs empty (and at least every [`CaptureConfig::flush_interval`]),
//! so a killed bridge leaves a file that is complete up to its last few records.
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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pcap_file::DataLink;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::interface_statistics::{InterfaceStatisticsBlock, InterfaceStatisticsOption};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::{Endianness, PcapError};
use tracing::{debug, warn};

use transports::link::LinkInstant;
use transports::vfio_user::{MessageTap, SocketRole, TapDirection};

pub use format::{Direction, TlpFlags, VfioSocket};
use format::{INTERFACE_TLP, INTERFACE_VFIO_USER};
pub use format::{TlpHeaderRepr, VfioUserHeaderRepr};

/// What went wrong writing or reading a capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot create capture file {path}: {source}; check the directory exists and is writable")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("writing capture file {path} failed: {detail}")]
    Write { path: PathBuf, detail: String },
    #[error("cannot open capture file {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a pcap or pcapng file: {detail}")]
    NotACapture { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    /// A record whose pseudo-header cannot be decoded.
    #[error("{0}")]
    Record(String),
    /// A `--filter` expression that does not parse.
    #[error("invalid filter {expr:?}: {reason}")]
    Filter { expr: String, reason: String },
    #[error("capture writer thread: {0}")]
    Thread(String),
}

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
            flush_interval: Duration::from_millis(20),
        }
    }
}

/// How long the writer sleeps when its queue is empty: shortly after traffic, longer when idle.
/// With the default queue depth the writer can take 16384 records per 5 ms before one is dropped.
const POLL_BUSY: Duration = Duration::from_millis(1);
const POLL_IDLE: Duration = Duration::from_millis(5);

/// What to do when the writer's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    /// The data path: drop the record and count it.
    DropIfFull,
    /// Offline tools: wait for room.
    Wait,
}

fn tlp_record(header: &TlpHeaderRepr, bytes: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(format::tlp_header::LEN + bytes.len());
    header.emit(&mut data);
    data.extend_from_slice(bytes);
    data
}

fn vfio_user_record(header: &VfioUserHeaderRepr, message: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(format::vfio_user_header::LEN + message.len());
    header.emit(&mut data);
    data.extend_from_slice(message);
    data
}

/// A record on its way to the writer: interface, wall time, pseudo-header + bytes.
struct QueuedRecord {
    interface: u32,
    wall_ns: u64,
    direction: Direction,
    data: Vec<u8>,
}

enum WriterInput {
    Record(QueuedRecord),
    Finish,
}

#[derive(Debug, Default)]
struct Counts {
    offered: [AtomicU64; 2],
    dropped: [AtomicU64; 2],
}

#[derive(Debug)]
struct HandleInner {
    queue: SyncSender<WriterInput>,
    counts: Arc<Counts>,
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
        self.queue(INTERFACE_TLP, direction, tlp_record(&header, bytes), Delivery::DropIfFull);
    }

    /// Records one vfio-user message (header and payload as on the socket).
    pub fn vfio_user(&self, direction: Direction, socket: VfioSocket, fds: usize, message: &[u8]) {
        let header = VfioUserHeaderRepr { direction, socket, fds: u8::try_from(fds).unwrap_or(u8::MAX) };
        self.queue(
            INTERFACE_VFIO_USER,
            header.direction,
            vfio_user_record(&header, message),
            Delivery::DropIfFull,
        );
    }

    /// Writes a TLP record with exactly this pseudo-header, waiting for room in the queue: for
    /// offline tools (`tlpbridge pcap write`), never for the data path.
    pub fn write_tlp_waiting(&self, header: &TlpHeaderRepr, bytes: &[u8]) {
        self.queue(INTERFACE_TLP, header.direction, tlp_record(header, bytes), Delivery::Wait);
    }

    /// Writes a vfio-user record, waiting for room in the queue (offline tools only).
    pub fn write_vfio_user_waiting(&self, header: &VfioUserHeaderRepr, message: &[u8]) {
        self.queue(INTERFACE_VFIO_USER, header.direction, vfio_user_record(header, message), Delivery::Wait);
    }

    fn queue(&self, interface: u32, direction: Direction, data: Vec<u8>, delivery: Delivery) {
        let slot = interface as usize;
        if let Some(offered) = self.inner.counts.offered.get(slot) {
            offered.fetch_add(1, Ordering::Relaxed);
        }
        let record = WriterInput::Record(QueuedRecord { interface, wall_ns: wall_ns(), direction, data });
        let lost = match delivery {
            Delivery::DropIfFull => self.inner.queue.try_send(record).is_err(),
            Delivery::Wait => self.inner.queue.send(record).is_err(),
        };
        if lost && let Some(dropped) = self.inner.counts.dropped.get(slot) {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped so far (queue full or writer gone), both interfaces.
    pub fn dropped(&self) -> u64 {
        self.inner.counts.dropped.iter().map(|d| d.load(Ordering::Relaxed)).sum()
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
    queue: SyncSender<WriterInput>,
    thread: Option<JoinHandle<Result<CaptureSummary, CaptureError>>>,
    path: PathBuf,
}

/// Creates captures.
#[derive(Debug)]
pub struct Capture;

impl Capture {
    /// Creates `path` (truncating it), writes the section and interface blocks, and starts the
    /// writer thread.
    pub fn create(
        path: &Path,
        config: CaptureConfig,
    ) -> Result<(CaptureHandle, CaptureWriter), CaptureError> {
        let file =
            File::create(path).map_err(|source| CaptureError::Create { path: path.to_owned(), source })?;
        let write_err = |e: PcapError| CaptureError::Write { path: path.to_owned(), detail: e.to_string() };
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
            .map_err(|e| CaptureError::Write { path: path.to_owned(), detail: e.to_string() })?;

        let (queue, input) = sync_channel(config.queue_depth.max(1));
        let counts = Arc::new(Counts::default());
        let thread_counts = counts.clone();
        let thread_path = path.to_owned();
        let flush_interval = config.flush_interval;
        let thread = std::thread::Builder::new()
            .name("tlpbridge-capture".to_owned())
            .spawn(move || write_loop(writer, input, thread_counts, &thread_path, flush_interval))
            .map_err(|e| CaptureError::Thread(format!("cannot start the writer thread: {e}")))?;
        let handle = CaptureHandle {
            inner: Arc::new(HandleInner {
                queue: queue.clone(),
                counts,
                link_id: config.link_id,
                simulated: config.clock == LinkClockKind::Simulated,
            }),
        };
        Ok((handle, CaptureWriter { queue, thread: Some(thread), path: path.to_owned() }))
    }
}

impl CaptureWriter {
    /// Writes what is queued, the drop statistics, and closes the file. Records offered after
    /// this are dropped. Blocks until the writer thread is done (bounded: the queue is bounded).
    pub fn finish(mut self) -> Result<CaptureSummary, CaptureError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<CaptureSummary, CaptureError> {
        let Some(thread) = self.thread.take() else {
            return Err(CaptureError::Thread("already finished".to_owned()));
        };
        // Fails only when the thread is gone already; joining tells why.
        let _ = self.queue.send(WriterInput::Finish);
        thread
            .join()
            .map_err(|_| CaptureError::Thread(format!("the writer of {} panicked", self.path.display())))?
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

fn write_loop(
    mut writer: PcapNgWriter<BufWriter<File>>,
    input: Receiver<WriterInput>,
    counts: Arc<Counts>,
    path: &Path,
    flush_interval: Duration,
) -> Result<CaptureSummary, CaptureError> {
    let write_err = |detail: String| CaptureError::Write { path: path.to_owned(), detail };
    let start_ns = wall_ns();
    let mut written = [0u64; 2];
    let mut drops_reported = [0u64; 2];
    let mut dirty = false;
    let mut last_flush = Instant::now();
    let mut idle_polls = 0u32;
    loop {
        let next = match input.try_recv() {
            Ok(next) => {
                idle_polls = 0;
                Some(next)
            }
            // Every handle and the CaptureWriter are gone: finish as if asked.
            Err(TryRecvError::Disconnected) => Some(WriterInput::Finish),
            Err(TryRecvError::Empty) => {
                if dirty {
                    // Queue empty: flush so that a kill now loses nothing already queued.
                    writer.get_mut().flush().map_err(|e| write_err(e.to_string()))?;
                    dirty = false;
                    last_flush = Instant::now();
                }
                // Polling rather than blocking in `recv`: a sender then never has to wake this
                // thread, which (a futex wake per record) would cost the data path more than the
                // record itself. Short sleeps while traffic may resume, longer ones when idle.
                idle_polls = idle_polls.saturating_add(1);
                std::thread::sleep(if idle_polls < 20 { POLL_BUSY } else { POLL_IDLE });
                None
            }
        };
        match next {
            None => {}
            Some(WriterInput::Finish) => break,
            Some(WriterInput::Record(record)) => {
                let slot = record.interface as usize;
                let mut options = vec![EnhancedPacketOption::Flags(u32::from(record.direction.bits()))];
                let dropped = counts.dropped.get(slot).map_or(0, |d| d.load(Ordering::Relaxed));
                if let Some(reported) = drops_reported.get_mut(slot)
                    && dropped > *reported
                {
                    options.push(EnhancedPacketOption::DropCount(dropped - *reported));
                    *reported = dropped;
                }
                let len = u32::try_from(record.data.len()).unwrap_or(u32::MAX);
                writer
                    .write_pcapng_block(EnhancedPacketBlock {
                        interface_id: record.interface,
                        // pcap-file writes `as_nanos()` as the raw timestamp; with if_tsresol = 9
                        // that is exactly nanoseconds.
                        timestamp: Duration::from_nanos(record.wall_ns),
                        original_len: len,
                        data: Cow::Owned(record.data),
                        options,
                    })
                    .map_err(|e| write_err(e.to_string()))?;
                if let Some(n) = written.get_mut(slot) {
                    *n += 1;
                }
                dirty = true;
            }
        }
        if dirty && last_flush.elapsed() >= flush_interval {
            writer.get_mut().flush().map_err(|e| write_err(e.to_string()))?;
            dirty = false;
            last_flush = Instant::now();
        }
    }
    // Records still queued when Finish arrived were offered before it: write them too.
    while let Ok(WriterInput::Record(record)) = input.try_recv() {
        let slot = record.interface as usize;
        let len = u32::try_from(record.data.len()).unwrap_or(u32::MAX);
        writer
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: record.interface,
                timestamp: Duration::from_nanos(record.wall_ns),
                original_len: len,
                data: Cow::Owned(record.data),
                options: vec![EnhancedPacketOption::Flags(u32::from(record.direction.bits()))],
            })
            .map_err(|e| write_err(e.to_string()))?;
        if let Some(n) = written.get_mut(slot) {
            *n += 1;
        }
    }
    let end_ns = wall_ns();
    let dropped = [0, 1].map(|i| counts.dropped[i].load(Ordering::Relaxed));
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
