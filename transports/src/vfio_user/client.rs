//! The asynchronous vfio-user client.
//!
//! Tasks per connection (all owned by the client and stopped when it closes or is dropped):
//! - one reader per socket (main, and twin when granted): the only code that reads it;
//! - one reply writer per socket, writing the reader's refusals and error replies to server
//!   commands from a bounded queue;
//! - one DMA dispatcher running at most `max_concurrent_dma` handler calls at once, fed by a
//!   bounded queue the readers never wait on (a full queue refuses the command with EBUSY);
//!   each handler call writes its own reply, under the socket's write lock (no hop through a
//!   task: DMA replies are on the critical path of every device copy).
//!
//! Client commands are written by the requesting task itself, whole, under the socket's async
//! mutex (FIFO, so the order on the wire is the order in which writes began), with no hop
//! through a task. Requests register a oneshot in the pending table under a 16-bit id that is
//! unique among in-flight (and recently timed-out) requests; the main reader completes them by
//! id.
//!
//! Deadlock freedom with a single-socket server that floods DMA commands without reading its
//! replies (the old design stalled there): the main reader only ever waits on the refusal
//! queue, which only fills while the server does not read at all, and that is bounded by the
//! reply writer's stall limit (`request_timeout`), after which the connection is failed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UnixStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, timeout_at};
use tracing::{Instrument, debug, debug_span, error, info, trace, warn};

use super::caps::{self, ClientCapabilities, PROPOSED_MAJOR, PROPOSED_MINOR, ServerCapabilities, TwinSocket};
use super::dma::{DmaDirection, DmaError, DmaHandler, DmaWindow, DmaWindowTable};
use super::socket::{MAX_FDS_PER_MESSAGE, MessageSocket, ReceivedMessage};
use super::tap::{MessageTap, SocketRole};
use super::wire::{
    self, Command, DeviceInfoRepr, DmaAccessRepr, DmaMapRepr, DmaUnmapRepr, HeaderRepr, IrqInfoRepr,
    IrqSetRepr, MessageType, RegionAccessRepr, RegionCap, RegionInfoRepr, VersionRepr, device_flags,
    irq_set_flags, region_flags,
};
use crate::error::{DisconnectReason, Error};

/// QEMU's bounds on what a device may report.
pub const MAX_REGIONS: u32 = 100;
pub const MAX_IRQ_INDICES: u32 = 50;
/// The largest region-info reply (fixed part plus capabilities) the client asks for.
pub const MAX_REGION_INFO_ARGSZ: u32 = 64 * 1024;
/// Timed-out ids remembered so that their late replies are recognised and dropped.
const EXPIRED_IDS_REMEMBERED: usize = 1024;
/// The most requests in flight that `ClientConfig::max_in_flight` may ask for.
pub const MAX_IN_FLIGHT_LIMIT: usize = 4096;
/// Config space is region 7.
pub const CONFIG_REGION: u32 = 7;

/// What the client does about server DMA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmaMode {
    /// Never send DMA_MAP (for servers such as usbvfiod that cannot take a map without an fd);
    /// every server DMA request is refused with EFAULT.
    Disabled,
    /// Map these windows (without fd) right after negotiation; more can be mapped later.
    Windows(Vec<DmaWindow>),
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Longest wait for a reply, from the moment the request is queued (QEMU default: 5 s).
    pub request_timeout: Duration,
    /// Longest wait for DEVICE_RESET, which a device may take a while to complete.
    pub reset_timeout: Duration,
    /// Requests awaiting a reply at once (1..=4096); more wait for a slot.
    pub max_in_flight: usize,
    /// Largest DMA_READ/DMA_WRITE `count` we accept (advertised as `max_data_xfer_size`).
    pub max_data_xfer_size: u32,
    /// Most fds we accept in one message (advertised as `max_msg_fds`, at most 16).
    pub max_msg_fds: u32,
    /// Ask for a twin socket for server→client DMA.
    pub twin_socket: bool,
    /// DMA windows, or DMA disabled.
    pub dma: DmaMode,
    /// DMA handler calls running at once.
    pub max_concurrent_dma: usize,
    /// Longest wait for one DMA handler call; past it the server gets ETIMEDOUT.
    pub dma_handler_timeout: Duration,
    /// Depth of each socket's queue of refusals and error replies to server commands (about
    /// 100 bytes each; the reader waits while it is full, which only happens while the server
    /// does not read its socket).
    pub send_queue_depth: usize,
    /// Server DMA commands accepted and waiting for a handler slot; more are refused with
    /// EBUSY (counted in [`ClientStats::dma_refused_busy`]).
    pub dma_queue_depth: usize,
    /// DMA_WRITE data bytes held at once (waiting for a handler slot, or being written); a
    /// DMA_WRITE that does not fit is refused with EBUSY. At least `max_data_xfer_size`.
    pub dma_queue_bytes: usize,
    /// Sees every message on the main and twin sockets, VERSION included (capture).
    pub tap: Option<Arc<dyn MessageTap>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            reset_timeout: Duration::from_secs(5),
            max_in_flight: 64,
            max_data_xfer_size: caps::DEFAULT_MAX_DATA_XFER_SIZE,
            max_msg_fds: 8,
            twin_socket: true,
            dma: DmaMode::Windows(Vec::new()),
            max_concurrent_dma: 16,
            dma_handler_timeout: Duration::from_secs(5),
            send_queue_depth: 4096,
            dma_queue_depth: 1024,
            dma_queue_bytes: 16 << 20,
            tap: None,
        }
    }
}

impl ClientConfig {
    fn validate(&self) -> Result<(), Error> {
        let bad = |what: String| Err(Error::InvalidArgument(format!("client configuration: {what}")));
        if self.max_in_flight == 0 || self.max_in_flight > MAX_IN_FLIGHT_LIMIT {
            return bad(format!("max_in_flight {} not in 1..={MAX_IN_FLIGHT_LIMIT}", self.max_in_flight));
        }
        if self.max_data_xfer_size == 0 || self.max_data_xfer_size > caps::MAX_DATA_XFER_SIZE_LIMIT {
            return bad(format!(
                "max_data_xfer_size {} not in 1..={}",
                self.max_data_xfer_size,
                caps::MAX_DATA_XFER_SIZE_LIMIT
            ));
        }
        if self.max_msg_fds as usize > MAX_FDS_PER_MESSAGE {
            return bad(format!("max_msg_fds {} above {MAX_FDS_PER_MESSAGE}", self.max_msg_fds));
        }
        if self.twin_socket && self.max_msg_fds == 0 {
            return bad("twin_socket needs max_msg_fds >= 1 to receive the socket".to_owned());
        }
        if self.max_concurrent_dma == 0 || self.send_queue_depth == 0 || self.dma_queue_depth == 0 {
            return bad(
                "max_concurrent_dma, send_queue_depth and dma_queue_depth must be at least 1".to_owned()
            );
        }
        if self.dma_queue_bytes < self.max_data_xfer_size as usize {
            return bad(format!(
                "dma_queue_bytes {} is below max_data_xfer_size {}: the largest DMA_WRITE could never be served",
                self.dma_queue_bytes, self.max_data_xfer_size
            ));
        }
        if self.request_timeout.is_zero()
            || self.reset_timeout.is_zero()
            || self.dma_handler_timeout.is_zero()
        {
            return bad("timeouts must be non-zero".to_owned());
        }
        Ok(())
    }
}

/// The outcome of VERSION negotiation.
#[derive(Debug, Clone, PartialEq)]
pub struct Negotiated {
    pub major: u16,
    pub minor: u16,
    /// What we advertised.
    pub client: ClientCapabilities,
    /// The server's limits after defaults and bounds.
    pub server: ServerCapabilities,
    /// Server DMA arrives on a separate socket.
    pub twin_socket: bool,
}

/// Something the owner of the client should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The connection ended; every pending request failed with `Error::Disconnected`.
    Disconnected { reason: DisconnectReason },
}

/// Receives [`ClientEvent`]s (bounded; the client never blocks on it).
pub type EventReceiver = mpsc::Receiver<ClientEvent>;

/// DEVICE_GET_INFO result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
}

impl DeviceInfo {
    /// The server supports DEVICE_RESET.
    pub fn resettable(&self) -> bool {
        self.flags & device_flags::RESET != 0
    }

    pub fn is_pci(&self) -> bool {
        self.flags & device_flags::PCI != 0
    }
}

/// DEVICE_GET_REGION_INFO result, capabilities included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    pub index: u32,
    pub flags: u32,
    pub size: u64,
    /// The mmap offset for the region's fd (the client never maps; informational).
    pub offset: u64,
    pub caps: Vec<RegionCap>,
}

impl RegionInfo {
    pub fn readable(&self) -> bool {
        self.flags & region_flags::READ != 0
    }

    pub fn writable(&self) -> bool {
        self.flags & region_flags::WRITE != 0
    }

    /// The server offered an fd to mmap; the client closes it and uses messages.
    pub fn mmap_offered(&self) -> bool {
        self.flags & region_flags::MMAP != 0
    }
}

/// DEVICE_GET_IRQ_INFO result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    pub index: u32,
    pub flags: u32,
    pub count: u32,
}

/// SET_IRQS action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqAction {
    Mask,
    Unmask,
    Trigger,
}

impl IrqAction {
    fn flag(self) -> u32 {
        match self {
            IrqAction::Mask => irq_set_flags::ACTION_MASK,
            IrqAction::Unmask => irq_set_flags::ACTION_UNMASK,
            IrqAction::Trigger => irq_set_flags::ACTION_TRIGGER,
        }
    }
}

/// SET_IRQS data for [`Client::set_irqs_action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IrqData {
    /// DATA_NONE: apply the action to every vector in range.
    None,
    /// DATA_BOOL: one flag per vector (its length must equal `count`).
    Bool(Vec<bool>),
}

// ---------------------------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------------------------

/// A reply handed to the requester.
#[derive(Debug)]
struct Reply {
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

type ReplySender = oneshot::Sender<Result<Reply, Error>>;

struct Waiter {
    command: Command,
    reply: ReplySender,
    /// When [`deadline_sweeper`] fails the request with [`Error::Timeout`].
    deadline: Instant,
    timeout: Duration,
}

#[derive(Default)]
struct PendingTable {
    next_id: u16,
    waiting: HashMap<u16, Waiter>,
    expired: HashSet<u16>,
    expired_order: VecDeque<u16>,
    closed: Option<DisconnectReason>,
    /// When [`deadline_sweeper`] looks next; a request due earlier wakes it.
    sweep_at: Option<Instant>,
    /// The shortest timeout a request has had: the sweeper's period follows it, so that
    /// requests with a short timeout (the engine's device timeout, 8 ms on a wall-clock link)
    /// do not each have to wake it.
    shortest_timeout: Option<Duration>,
}

impl PendingTable {
    /// The next id not used by an in-flight or recently expired request.
    fn allocate_id(&mut self) -> u16 {
        // At most MAX_IN_FLIGHT_LIMIT + EXPIRED_IDS_REMEMBERED ids are taken, far below 65536,
        // so this ends within a few steps.
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.waiting.contains_key(&id) && !self.expired.contains(&id) {
                return id;
            }
        }
    }

    fn expire(&mut self, id: u16) -> Option<Waiter> {
        let waiter = self.waiting.remove(&id)?;
        self.remember_expired(id);
        Some(waiter)
    }

    fn remember_expired(&mut self, id: u16) {
        if self.expired_order.len() >= EXPIRED_IDS_REMEMBERED {
            if let Some(oldest) = self.expired_order.pop_front() {
                self.expired.remove(&oldest);
            }
        }
        self.expired.insert(id);
        self.expired_order.push_back(id);
    }
}

/// How long [`deadline_sweeper`] sleeps when no request is due sooner: less than the shortest
/// timeout in use, so a request started at any moment is due after the sweeper's next look and
/// does not need to wake it.
fn sweep_period(shortest_timeout: Duration) -> Duration {
    (shortest_timeout / 2).clamp(Duration::from_millis(1), Duration::from_secs(1))
}

/// Fails each request whose deadline has passed with [`Error::Timeout`]. One task per
/// connection rather than a timer per request: arming a tokio timer while no other timer is
/// armed wakes the runtime's driver (an eventfd write, and on a multi-threaded runtime often a
/// parked worker thread), which cost every MMIO read two such wakeups.
async fn deadline_sweeper(shared: Arc<Shared>, request_timeout: Duration) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut due: Vec<(u16, Waiter)> = Vec::new();
    loop {
        let now = Instant::now();
        let mut next;
        {
            let mut table = shared.pending();
            if table.closed.is_some() {
                return;
            }
            let shortest = table.shortest_timeout.map_or(request_timeout, |t| t.min(request_timeout));
            next = now + sweep_period(shortest);
            let mut any_due = false;
            for waiter in table.waiting.values() {
                if waiter.deadline <= now {
                    any_due = true;
                } else {
                    next = next.min(waiter.deadline);
                }
            }
            if any_due {
                let ids: Vec<u16> =
                    table.waiting.iter().filter(|(_, w)| w.deadline <= now).map(|(id, _)| *id).collect();
                due.extend(ids.into_iter().filter_map(|id| table.expire(id).map(|waiter| (id, waiter))));
            }
            table.sweep_at = Some(next);
        }
        for (id, waiter) in due.drain(..) {
            let Waiter { command, reply, timeout, .. } = waiter;
            warn!(command = %command, id, timeout = ?timeout, "vfio-user request timed out");
            let _ = reply.send(Err(Error::Timeout { command, id: Some(id), timeout }));
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shared.sweep.notified() => {}
            _ = wait_shutdown(&mut shutdown) => return,
        }
    }
}

struct Shared {
    pending: Mutex<PendingTable>,
    /// Wakes [`deadline_sweeper`] for a request due before its next look.
    sweep: Notify,
    shutdown: watch::Sender<bool>,
    events: mpsc::Sender<ClientEvent>,
    windows: Mutex<DmaWindowTable>,
    /// Our advertised max_data_xfer_size: the largest server DMA we serve.
    our_max_xfer: u32,
    dma_enabled: bool,
    /// Server DMA commands received whose reply is not yet written (see [`DmaTicket`]).
    dma_unanswered: watch::Sender<usize>,
    /// The part of `dma_unanswered` that arrived on the main socket of a connection without a
    /// twin socket: while it is non-zero, client commands are held (libvfio-user #279).
    dma_holding: watch::Sender<usize>,
    /// DMA_WRITE data bytes received and still held (waiting for a handler slot, or being
    /// written by the handler).
    dma_write_bytes: AtomicUsize,
    stats: StatsCounters,
}

/// The counters behind [`ClientStats`].
#[derive(Debug, Default)]
struct StatsCounters {
    unknown_replies: AtomicU64,
    late_replies: AtomicU64,
    dma_commands: AtomicU64,
    dma_refused_busy: AtomicU64,
    held_requests: AtomicU64,
}

/// What the client dropped, refused or held because of the server, since it connected (a
/// snapshot from [`Client::stats`]; every counter only grows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Replies to message ids not in flight (never sent, posted, or already answered), and
    /// replies on the twin socket: logged and dropped, the connection goes on.
    pub unknown_replies: u64,
    /// Replies that came after their request timed out or was abandoned: logged and dropped.
    pub late_replies: u64,
    /// DMA_READ/DMA_WRITE commands received from the server (both sockets).
    pub dma_commands: u64,
    /// Of those, refused with EBUSY because `dma_queue_depth` commands were already waiting
    /// for a handler slot or the DMA_WRITE data would exceed `dma_queue_bytes`.
    pub dma_refused_busy: u64,
    /// Client requests that had to wait for unanswered server DMA before they could be written
    /// (single-socket mode, libvfio-user #279).
    pub held_requests: u64,
}

/// Counts one server DMA command from its arrival until its reply is written, it turns out to
/// need none, or it is dropped with the connection: whichever path drops the ticket uncounts it
/// (and releases the hold and the DMA_WRITE bytes it stands for).
struct DmaTicket {
    shared: Arc<Shared>,
    holds: bool,
    write_bytes: usize,
}

impl DmaTicket {
    fn new(shared: Arc<Shared>, holds: bool) -> Self {
        shared.dma_unanswered.send_modify(|n| *n += 1);
        if holds {
            shared.dma_holding.send_modify(|n| *n += 1);
        }
        DmaTicket { shared, holds, write_bytes: 0 }
    }

    /// Charges `bytes` of DMA_WRITE data against `budget`; `false` (nothing charged) if they
    /// do not fit next to what is already held.
    fn charge_write_bytes(&mut self, bytes: usize, budget: usize) -> bool {
        let charged = self.shared.dma_write_bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            held.checked_add(bytes).filter(|total| *total <= budget)
        });
        if charged.is_ok() {
            self.write_bytes += bytes;
        }
        charged.is_ok()
    }

    /// Gives the DMA_WRITE bytes back once their data is gone (written by the handler, or
    /// refused), before the reply is queued.
    fn release_write_bytes(&mut self) {
        self.shared.dma_write_bytes.fetch_sub(self.write_bytes, Ordering::AcqRel);
        self.write_bytes = 0;
    }
}

impl Drop for DmaTicket {
    fn drop(&mut self) {
        self.release_write_bytes();
        if self.holds {
            self.shared.dma_holding.send_modify(|n| *n = n.saturating_sub(1));
        }
        self.shared.dma_unanswered.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, PendingTable> {
        // A poisoned lock only means another thread panicked mid-update of plain maps; the
        // data is still consistent enough to fail requests, so keep going.
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn windows(&self) -> MutexGuard<'_, DmaWindowTable> {
        self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn disconnect_reason(&self) -> Option<DisconnectReason> {
        self.pending().closed.clone()
    }

    /// Ends the connection once: fails every pending request, stops the tasks, reports the event.
    fn fail(&self, reason: DisconnectReason) {
        let waiters = {
            let mut table = self.pending();
            if table.closed.is_some() {
                return;
            }
            table.closed = Some(reason.clone());
            std::mem::take(&mut table.waiting)
        };
        match &reason {
            DisconnectReason::ClosedByClient => info!(pending = waiters.len(), "vfio-user connection closed"),
            other => error!(reason = %other, pending = waiters.len(), "vfio-user connection lost"),
        }
        for (_, waiter) in waiters {
            let _ = waiter.reply.send(Err(Error::Disconnected(reason.clone())));
        }
        self.shutdown.send_replace(true);
        match self.events.try_send(ClientEvent::Disconnected { reason }) {
            Ok(()) => {}
            // The owner dropped its receiver: nobody to tell.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!("vfio-user event queue full; Disconnected event not delivered");
            }
        }
    }

    /// A structural problem found while interpreting a reply: close the connection.
    fn protocol_error(&self, what: String) -> Error {
        self.fail(DisconnectReason::Malformed(what.clone()));
        Error::Malformed(what)
    }
}

async fn wait_shutdown(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Writes whole messages to one socket. Requesters write their commands themselves (no hop
/// through a task); the lock keeps messages from different tasks from interleaving, and being
/// FIFO it keeps the order in which tasks asked to write.
struct MessageWriter {
    socket: Arc<MessageSocket>,
    lock: tokio::sync::Mutex<()>,
}

enum WriteError {
    /// The deadline passed before the first byte went out; the connection is intact.
    TimedOut,
    /// Server DMA arrived on this socket while waiting for the lock; nothing was written.
    Held,
    /// The connection is gone (or was just failed because a message was cut in half).
    Failed(DisconnectReason),
}

/// Fails the connection if a send is abandoned (its future dropped) after part of the message
/// went out: the peer can no longer find the next header.
struct HalfWritten<'a> {
    shared: &'a Shared,
    sent: AtomicUsize,
    settled: bool,
}

impl Drop for HalfWritten<'_> {
    fn drop(&mut self) {
        if !self.settled && self.sent.load(Ordering::Relaxed) > 0 {
            self.shared.fail(DisconnectReason::Io(
                "a message was abandoned half-written, so the stream's framing is lost".to_owned(),
            ));
        }
    }
}

impl MessageWriter {
    /// Writes the concatenation of `parts` whole, with `fds`, before `deadline`. With `hold`,
    /// nothing is written while it is non-zero (checked once the lock is held, so a command
    /// never overtakes DMA the reader has already seen).
    async fn write(
        &self,
        shared: &Shared,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
        deadline: Instant,
        hold: Option<&watch::Sender<usize>>,
    ) -> Result<(), WriteError> {
        let _turn = timeout_at(deadline, self.lock.lock()).await.map_err(|_| WriteError::TimedOut)?;
        if hold.is_some_and(|hold| *hold.borrow() > 0) {
            return Err(WriteError::Held);
        }
        let mut progress = HalfWritten { shared, sent: AtomicUsize::new(0), settled: false };
        let outcome = timeout_at(deadline, self.socket.send_parts_tracked(parts, fds, &progress.sent)).await;
        let sent = progress.sent.load(Ordering::Relaxed);
        progress.settled = true;
        match outcome {
            Ok(Ok(())) => Ok(()),
            Err(_) if sent == 0 => Err(WriteError::TimedOut),
            Err(_) => {
                let reason = DisconnectReason::Io(format!(
                    "the server stopped reading: {sent} of {} bytes of a message written when the deadline passed",
                    parts.iter().map(|part| part.len()).sum::<usize>()
                ));
                shared.fail(reason.clone());
                Err(WriteError::Failed(reason))
            }
            Ok(Err(e)) => {
                let reason = DisconnectReason::Io(e.to_string());
                shared.fail(reason.clone());
                Err(WriteError::Failed(reason))
            }
        }
    }
}

/// Posted REGION_WRITEs (No_reply) gathered for one socket write, in the order added; built by
/// [`Client::posted_writes`]. Dropping it unsent sends nothing.
pub struct PostedWrites<'a> {
    client: &'a Client,
    bytes: Vec<u8>,
    messages: usize,
    first_id: Option<u16>,
}

impl PostedWrites<'_> {
    /// Adds REGION_WRITE(s) of `data` at `offset` of region `index`, split into messages of at
    /// most the server's `max_data_xfer_size`. Nothing is added on error.
    pub fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Error> {
        let (len_before, messages_before) = (self.bytes.len(), self.messages);
        let mut consumed = 0usize;
        let added = self.client.chunks(offset, data.len()).and_then(|chunks| {
            for (at, count) in chunks {
                let piece = data.get(consumed..consumed + count as usize).unwrap_or(&[]);
                consumed += count as usize;
                let request = RegionAccessRepr { offset: at, region: index, count };
                let id = self.client.append_posted(
                    &mut self.bytes,
                    Command::RegionWrite,
                    &request.to_array(),
                    piece,
                )?;
                self.first_id.get_or_insert(id);
                self.messages += 1;
                trace!(id, region = index, offset = at, count, "posted REGION_WRITE gathered");
            }
            Ok(())
        });
        if added.is_err() {
            self.bytes.truncate(len_before);
            self.messages = messages_before;
        }
        added
    }

    /// Bytes gathered so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Messages gathered so far.
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Writes every gathered message with one write (waiting, like any command, while server
    /// DMA is unanswered in single-socket mode). Returns once written.
    pub async fn send(self) -> Result<(), Error> {
        let Some(id) = self.first_id else { return Ok(()) };
        let client = self.client;
        let timeout = client.inner.config.request_timeout;
        debug!(
            messages = self.messages,
            size = self.bytes.len(),
            first_id = id,
            "sending posted REGION_WRITEs"
        );
        client
            .write_command(&self.bytes, &[], Instant::now() + timeout, Command::RegionWrite, id, timeout)
            .await
    }
}

/// The answer to a server command, on its way to the socket the command came from: `head`
/// (header and fixed part) then `data` (a DMA_READ's, sent from the handler's buffer without a
/// copy). The ticket (a DMA command's) is dropped once the reply is written.
struct ServerReply {
    head: Vec<u8>,
    data: Vec<u8>,
    ticket: Option<DmaTicket>,
}

impl ServerReply {
    /// A reply that is all in `head` (a refusal, an error, a DMA_WRITE's).
    fn whole(head: Vec<u8>, ticket: Option<DmaTicket>) -> Self {
        ServerReply { head, data: Vec::new(), ticket }
    }
}

/// Writes the answers to server commands on one socket: DMA results from the handlers and
/// refusals from the reader, each from its own bounded queue. A reply the server does not take
/// within `stall_limit` (it stopped reading its socket) ends the connection.
async fn reply_writer(
    writer: Arc<MessageWriter>,
    mut refusals: mpsc::Receiver<ServerReply>,
    shared: Arc<Shared>,
    stall_limit: Duration,
) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let reply = tokio::select! {
            biased;
            _ = wait_shutdown(&mut shutdown) => return,
            reply = refusals.recv() => match reply {
                Some(reply) => reply,
                None => return,
            },
        };
        if !write_reply(&writer, &shared, reply, stall_limit).await {
            return;
        }
    }
}

/// Writes the answer to a server command; false once the connection is failed.
async fn write_reply(
    writer: &MessageWriter,
    shared: &Shared,
    reply: ServerReply,
    stall_limit: Duration,
) -> bool {
    let parts: [&[u8]; 2] = [&reply.head, &reply.data];
    match writer.write(shared, &parts, &[], Instant::now() + stall_limit, None).await {
        // The command is answered: release the hold and the DMA_WRITE bytes it stood for.
        Ok(()) => {
            drop(reply.ticket);
            true
        }
        Err(WriteError::TimedOut | WriteError::Held) => {
            shared.fail(DisconnectReason::Io(format!(
                "the server has not read its socket for {stall_limit:?} while replies to its commands wait"
            )));
            false
        }
        Err(WriteError::Failed(_)) => false,
    }
}

/// Logs the 1st, 2nd, 4th, 8th… occurrence of something a misbehaving server can repeat at
/// will at warn level and the rest at debug, so a flood cannot flood the log.
fn is_worth_a_warning(count: u64) -> bool {
    count.is_power_of_two()
}

// ---------------------------------------------------------------------------------------------
// Readers and DMA
// ---------------------------------------------------------------------------------------------

struct DmaJob {
    direction: DmaDirection,
    header: HeaderRepr,
    access: DmaAccessRepr,
    /// A DMA_WRITE's data: a slice of the received message, not a copy of it.
    data: Bytes,
    fds_attached: usize,
    /// The socket the command came from, which its reply goes to.
    reply_to: Arc<MessageWriter>,
    ticket: DmaTicket,
}

struct Reader {
    socket: Arc<MessageSocket>,
    shared: Arc<Shared>,
    /// The main socket carries replies; the twin socket carries only server commands.
    carries_replies: bool,
    /// DMA arriving here holds the main socket's commands (single-socket mode).
    counts_toward_hold: bool,
    /// Refusals and error replies, written by this socket's reply writer.
    refusals: mpsc::Sender<ServerReply>,
    /// This socket's writer, where handlers write their DMA results.
    writer: Arc<MessageWriter>,
    jobs: mpsc::Sender<DmaJob>,
    /// Budget of DMA_WRITE data held at once (see `ClientConfig::dma_queue_bytes`).
    dma_queue_bytes: usize,
    max_size: usize,
    max_fds: usize,
    name: &'static str,
}

impl Reader {
    async fn run(self) {
        let mut shutdown = self.shared.shutdown.subscribe();
        let outcome = loop {
            let received = tokio::select! {
                biased;
                _ = wait_shutdown(&mut shutdown) => break Ok(()),
                received = self.socket.recv_skipping_oversized_commands(self.max_size, self.max_fds) => received,
            };
            let message = match received {
                Ok(Some(message)) => message,
                Ok(None) => break Err(DisconnectReason::ServerClosed),
                Err(Error::OversizedCommand { header, limit }) => {
                    warn!(socket = self.name, command = %header.command, id = header.id, size = header.size, limit, "server command larger than the client accepts; replying E2BIG");
                    if header.no_reply {
                        continue;
                    }
                    let bytes = error_reply(&header, nix::errno::Errno::E2BIG as u32);
                    match self.refuse(ServerReply::whole(bytes, None)).await {
                        Ok(()) => continue,
                        Err(reason) => break Err(reason),
                    }
                }
                Err(Error::Malformed(what)) => break Err(DisconnectReason::Malformed(what)),
                Err(e) => break Err(DisconnectReason::Io(e.to_string())),
            };
            if let Err(reason) = self.dispatch(message).await {
                break Err(reason);
            }
        };
        if let Err(reason) = outcome {
            debug!(socket = self.name, reason = %reason, "vfio-user reader stopping");
            self.shared.fail(reason);
        }
    }

    async fn dispatch(&self, message: ReceivedMessage) -> Result<(), DisconnectReason> {
        let header = message.header;
        match header.message_type {
            MessageType::Reply if self.carries_replies => self.complete(message),
            MessageType::Reply => {
                self.unknown_reply(&header, "on the twin socket, where the client sends no commands");
                Ok(())
            }
            MessageType::Command => match header.command {
                Command::DmaRead | Command::DmaWrite => self.dma_command(message).await,
                other => {
                    warn!(socket = self.name, command = %other, id = header.id, "server sent a command only clients send; replying ENOSYS");
                    if !header.no_reply {
                        let bytes = error_reply(&header, nix::errno::Errno::ENOSYS as u32);
                        self.refuse(ServerReply::whole(bytes, None)).await?;
                    }
                    Ok(())
                }
            },
        }
    }

    /// A reply nobody waits for: counted, logged and dropped (the framing is intact, so the
    /// stream goes on).
    fn unknown_reply(&self, header: &HeaderRepr, why: &str) {
        let count = self.shared.stats.unknown_replies.fetch_add(1, Ordering::Relaxed) + 1;
        if is_worth_a_warning(count) {
            warn!(socket = self.name, command = %header.command, id = header.id, size = header.size, count, why, "vfio-user reply to a message id never sent dropped");
        } else {
            debug!(socket = self.name, command = %header.command, id = header.id, size = header.size, count, why, "vfio-user reply to a message id never sent dropped");
        }
    }

    fn complete(&self, message: ReceivedMessage) -> Result<(), DisconnectReason> {
        let header = message.header;
        let waiter = {
            let mut table = self.shared.pending();
            match table.waiting.remove(&header.id) {
                Some(waiter) => Some(waiter),
                None if table.expired.contains(&header.id) => {
                    table.expired.remove(&header.id);
                    table.expired_order.retain(|&id| id != header.id);
                    None
                }
                None => {
                    drop(table);
                    self.unknown_reply(&header, "not in flight");
                    return Ok(());
                }
            }
        };
        let Some(waiter) = waiter else {
            let count = self.shared.stats.late_replies.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(command = %header.command, id = header.id, count, "late vfio-user reply after timeout dropped");
            return Ok(());
        };
        if waiter.command != header.command {
            return Err(DisconnectReason::Malformed(format!(
                "{header}: reply to message id {} names {} but the request was {}",
                header.id, header.command, waiter.command
            )));
        }
        let result = match header.error {
            Some(errno) => Err(Error::Server { command: header.command, errno }),
            None => Ok(Reply { payload: message.payload, fds: message.fds }),
        };
        // The requester may have given up (dropped its future) in the meantime.
        let _ = waiter.reply.send(result);
        Ok(())
    }

    async fn dma_command(&self, message: ReceivedMessage) -> Result<(), DisconnectReason> {
        let header = message.header;
        let mut ticket = DmaTicket::new(self.shared.clone(), self.counts_toward_hold);
        self.shared.stats.dma_commands.fetch_add(1, Ordering::Relaxed);
        let malformed = |what: String| DisconnectReason::Malformed(format!("{header}: {what}"));
        let view = wire::dma_access::View::new_checked(&message.payload[..])
            .map_err(|e| malformed(e.to_string()))?;
        let access = DmaAccessRepr::parse(&view).map_err(|e| malformed(e.to_string()))?;
        let (direction, data) = match header.command {
            Command::DmaWrite => {
                let len = view.trailing().len();
                if len as u64 != access.count {
                    return Err(malformed(format!("DMA_WRITE count {} but {len} data bytes", access.count)));
                }
                if !ticket.charge_write_bytes(len, self.dma_queue_bytes) {
                    return self.refuse_busy(&header, &access, ticket, "DMA_WRITE data budget spent").await;
                }
                (DmaDirection::DeviceWrite, Bytes::from(message.payload).slice(DmaAccessRepr::LEN..))
            }
            _ => {
                if !view.trailing().is_empty() {
                    return Err(malformed(format!(
                        "DMA_READ request carries {} unexpected bytes",
                        view.trailing().len()
                    )));
                }
                (DmaDirection::DeviceRead, Bytes::new())
            }
        };
        let job = DmaJob {
            direction,
            header,
            access,
            data,
            fds_attached: message.fds.len(),
            reply_to: self.writer.clone(),
            ticket,
        };
        // Never wait for a handler slot here: the handlers' replies may need the server to
        // read, and the server may be blocked writing more commands that only this task reads.
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => {
                self.refuse_busy(&job.header, &job.access, job.ticket, "DMA queue full").await
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(DisconnectReason::Io("DMA dispatcher stopped".to_owned()))
            }
        }
    }

    /// Refuses a DMA command the queue has no room for with EBUSY.
    async fn refuse_busy(
        &self,
        header: &HeaderRepr,
        access: &DmaAccessRepr,
        ticket: DmaTicket,
        why: &'static str,
    ) -> Result<(), DisconnectReason> {
        let count = self.shared.stats.dma_refused_busy.fetch_add(1, Ordering::Relaxed) + 1;
        if is_worth_a_warning(count) {
            warn!(socket = self.name, command = %header.command, id = header.id, address = access.address, len = access.count, count, why, "server DMA refused with EBUSY");
        } else {
            debug!(socket = self.name, command = %header.command, id = header.id, address = access.address, len = access.count, count, why, "server DMA refused with EBUSY");
        }
        if header.no_reply {
            return Ok(());
        }
        let bytes = error_reply(header, DmaError::Busy.errno());
        self.refuse(ServerReply::whole(bytes, Some(ticket))).await
    }

    /// Queues a refusal for the reply writer; waits while its queue is full, which only
    /// happens while the server does not read its socket (bounded by the writer's stall limit).
    async fn refuse(&self, reply: ServerReply) -> Result<(), DisconnectReason> {
        self.refusals
            .send(reply)
            .await
            .map_err(|_| DisconnectReason::Io(format!("{} reply writer stopped", self.name)))
    }
}

fn error_reply(request: &HeaderRepr, errno: u32) -> Vec<u8> {
    wire::encode_message(request.id, request.command, MessageType::Reply, false, Some(errno), &[])
        .unwrap_or_default()
}

async fn dma_dispatcher<H: DmaHandler>(
    handler: Arc<H>,
    shared: Arc<Shared>,
    mut jobs: mpsc::Receiver<DmaJob>,
    max_concurrent: usize,
    handler_timeout: Duration,
    stall_limit: Duration,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut running = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = wait_shutdown(&mut shutdown) => return,
            Some(_) = running.join_next(), if !running.is_empty() => {}
            job = jobs.recv(), if running.len() < max_concurrent => match job {
                Some(job) => {
                    let span = debug_span!("vfio_user_dma", command = %job.header.command, id = job.header.id,
                        address = job.access.address, count = job.access.count);
                    running.spawn(serve_dma(handler.clone(), shared.clone(), job, handler_timeout, stall_limit).instrument(span));
                }
                None => return,
            },
        }
    }
}

async fn serve_dma<H: DmaHandler>(
    handler: Arc<H>,
    shared: Arc<Shared>,
    mut job: DmaJob,
    handler_timeout: Duration,
    stall_limit: Duration,
) {
    let header = job.header;
    // The handler takes the DMA_WRITE data (no copy); its bytes are free once it returns.
    let data = std::mem::take(&mut job.data);
    let outcome = perform_dma(&*handler, &shared, &job, data, handler_timeout).await;
    job.ticket.release_write_bytes();
    if header.no_reply {
        // Answered by not answering: the ticket goes with the job.
        return;
    }
    let DmaJob { reply_to, ticket, access, .. } = job;
    let reply = match outcome {
        // The data goes out from the handler's buffer, behind the header and the echoed fixed
        // part (a vectored write, no copy).
        Ok(data) => match wire::encode_message_head(
            header.id,
            header.command,
            MessageType::Reply,
            None,
            &access.to_array(),
            data.len(),
        ) {
            Ok(head) => ServerReply { head, data, ticket: Some(ticket) },
            Err(e) => {
                error!(error = %e, "DMA reply could not be encoded");
                ServerReply::whole(error_reply(&header, DmaError::CompleterAbort.errno()), Some(ticket))
            }
        },
        Err(e) => {
            debug!(error = %e, errno = e.errno(), "server DMA refused or failed");
            ServerReply::whole(error_reply(&header, e.errno()), Some(ticket))
        }
    };
    // A failed write has failed the connection, which every waiter hears about.
    write_reply(&reply_to, &shared, reply, stall_limit).await;
}

/// Checks a server DMA request and runs it; the data is what the reply carries.
async fn perform_dma<H: DmaHandler>(
    handler: &H,
    shared: &Shared,
    job: &DmaJob,
    data: Bytes,
    handler_timeout: Duration,
) -> Result<Vec<u8>, DmaError> {
    if job.fds_attached > 0 {
        // QEMU answers EINVAL too; DMA requests never carry fds.
        warn!(fds = job.fds_attached, "server DMA request carried fds; refused");
        return Err(DmaError::UnexpectedFds);
    }
    if job.access.count > u64::from(shared.our_max_xfer) {
        return Err(DmaError::TooLarge);
    }
    if !shared.dma_enabled {
        return Err(DmaError::OutsideWindows);
    }
    shared.windows().check_access(job.access.address, job.access.count, job.direction)?;
    let deadline = Instant::now() + handler_timeout;
    match job.direction {
        DmaDirection::DeviceRead => {
            let len = job.access.count as usize;
            let data = timeout_at(deadline, handler.dma_read(job.access.address, len))
                .await
                .map_err(|_| DmaError::CompletionTimeout)??;
            if data.len() != len {
                error!(returned = data.len(), wanted = len, "DMA handler returned the wrong length");
                return Err(DmaError::CompleterAbort);
            }
            Ok(data)
        }
        DmaDirection::DeviceWrite => {
            timeout_at(deadline, handler.dma_write(job.access.address, data))
                .await
                .map_err(|_| DmaError::CompletionTimeout)??;
            Ok(Vec::new())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// An asynchronous vfio-user client. Cheap to clone; every clone drives the same connection
/// and may be used from any task. Dropping the last clone closes the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    negotiated: Negotiated,
    config: ClientConfig,
    /// Client commands are written by the requesting task itself through this.
    main_writer: Arc<MessageWriter>,
    /// No twin socket: commands wait while server DMA on the main socket is unanswered.
    hold_during_dma: bool,
    in_flight: Arc<Semaphore>,
    /// Serialises DMA_MAP/DMA_UNMAP so the window table matches the server's.
    map_lock: tokio::sync::Mutex<()>,
    sockets: Vec<Arc<MessageSocket>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.fail(DisconnectReason::ClosedByClient);
        for socket in &self.sockets {
            socket.shutdown();
        }
        let tasks = self.tasks.get_mut().map(std::mem::take).unwrap_or_default();
        for task in tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("negotiated", &self.inner.negotiated)
            .field("disconnect_reason", &self.disconnect_reason())
            .finish_non_exhaustive()
    }
}

/// A request whose reply is awaited; dropping it before completion forgets the id (a reply
/// arriving later is logged and dropped).
struct PendingReply {
    shared: Arc<Shared>,
    id: u16,
    reply: oneshot::Receiver<Result<Reply, Error>>,
    finished: bool,
    _slot: OwnedSemaphorePermit,
}

impl PendingReply {
    /// The reply, or [`Error::Timeout`] from [`deadline_sweeper`] once the request's deadline
    /// has passed.
    async fn wait(mut self) -> Result<Reply, Error> {
        let result = (&mut self.reply).await;
        self.finished = true;
        result.unwrap_or_else(|_| {
            Err(Error::Disconnected(
                self.shared.disconnect_reason().unwrap_or(DisconnectReason::ClosedByClient),
            ))
        })
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.pending().expire(self.id);
        }
    }
}

/// A REGION_READ already queued for the server; [`PendingRegionRead::wait`] returns its data.
/// Dropping it forgets the request (a late reply is logged and dropped).
pub struct PendingRegionRead {
    client: Client,
    request: RegionAccessRepr,
    reply: PendingReply,
}

impl PendingRegionRead {
    /// Awaits the reply (bounded by `ClientConfig::request_timeout` from the moment the request
    /// was started) and checks that it echoes the request and carries `count` bytes.
    pub async fn wait(self) -> Result<Vec<u8>, Error> {
        let request = self.request;
        let reply = self.reply.wait().await?;
        let view = wire::region_access::View::new_checked(&reply.payload[..])
            .map_err(|e| self.client.protocol_error(format!("REGION_READ reply: {e}")))?;
        let answered = RegionAccessRepr::parse(&view)?;
        if answered != request || view.trailing().len() != request.count as usize {
            return Err(self.client.protocol_error(format!(
                "REGION_READ of region {} offset {:#x} count {} answered with region {} offset {:#x} count {} and {} data bytes",
                request.region,
                request.offset,
                request.count,
                answered.region,
                answered.offset,
                answered.count,
                view.trailing().len()
            )));
        }
        // Drop the echoed fixed part in place instead of copying the data out.
        let mut data = reply.payload;
        data.drain(..RegionAccessRepr::LEN);
        Ok(data)
    }
}

impl std::fmt::Debug for PendingRegionRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRegionRead").field("request", &self.request).finish_non_exhaustive()
    }
}

/// A REGION_WRITE already queued for the server; [`PendingRegionWrite::wait`] awaits its reply.
pub struct PendingRegionWrite {
    client: Client,
    request: RegionAccessRepr,
    reply: PendingReply,
}

impl PendingRegionWrite {
    /// Awaits the reply; a server that echoes a different count breaks the protocol.
    pub async fn wait(self) -> Result<(), Error> {
        let request = self.request;
        let reply = self.reply.wait().await?;
        // The spec echoes {offset, region, count}; a server that replies with the header
        // alone is accepted, but a different echo is not.
        if !reply.payload.is_empty() {
            let view = wire::region_access::View::new_checked(&reply.payload[..])
                .map_err(|e| self.client.protocol_error(format!("REGION_WRITE reply: {e}")))?;
            let answered = RegionAccessRepr::parse(&view)?;
            if answered.count != request.count {
                return Err(self.client.protocol_error(format!(
                    "REGION_WRITE of {} bytes at region {} offset {:#x} answered with count {}",
                    request.count, request.region, request.offset, answered.count
                )));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for PendingRegionWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRegionWrite").field("request", &self.request).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the server's UNIX socket and negotiates.
    pub async fn connect<H: DmaHandler>(
        path: impl AsRef<Path>,
        config: ClientConfig,
        handler: H,
    ) -> Result<(Client, EventReceiver), Error> {
        let path = path.as_ref();
        config.validate()?;
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| Error::Connect { path: path.to_path_buf(), source })?;
        Self::start(MessageSocket::new(stream), config, handler).await
    }

    /// Uses an already-connected socket (e.g. from `socketpair` or a `--fd=N` convention).
    pub async fn from_fd<H: DmaHandler>(
        fd: OwnedFd,
        config: ClientConfig,
        handler: H,
    ) -> Result<(Client, EventReceiver), Error> {
        config.validate()?;
        Self::start(MessageSocket::from_owned_fd(fd)?, config, handler).await
    }

    async fn start<H: DmaHandler>(
        mut socket: MessageSocket,
        config: ClientConfig,
        handler: H,
    ) -> Result<(Client, EventReceiver), Error> {
        if let Some(tap) = &config.tap {
            socket.set_tap(tap.clone(), SocketRole::Main);
        }
        let client_caps = ClientCapabilities {
            max_msg_fds: config.max_msg_fds,
            max_data_xfer_size: config.max_data_xfer_size,
            twin_socket: config.twin_socket,
        };
        let (negotiated, mut twin) = negotiate(&socket, client_caps, config.request_timeout)
            .instrument(debug_span!("vfio_user_negotiate"))
            .await?;
        if let (Some(twin), Some(tap)) = (twin.as_mut(), &config.tap) {
            twin.set_tap(tap.clone(), SocketRole::Twin);
        }
        if config.twin_socket && twin.is_none() {
            // Only a client that serves DMA is affected; for one that refuses all DMA (e.g.
            // `tlpbridge probe`) the missing twin socket is noise.
            if config.dma == DmaMode::Disabled {
                debug!("vfio-user server did not grant a twin socket (DMA is disabled: no effect)");
            } else {
                warn!(
                    "vfio-user server did not grant a twin socket: server DMA shares the main socket, \
                     and client commands are held while a DMA request is unanswered (libvfio-user #279)"
                );
            }
        }
        info!(
            version = %format_args!("{}.{}", negotiated.major, negotiated.minor),
            twin_socket = negotiated.twin_socket,
            server_max_data_xfer_size = negotiated.server.max_data_xfer_size,
            server_max_msg_fds = negotiated.server.max_msg_fds,
            "vfio-user negotiated"
        );

        let (shutdown, _) = watch::channel(false);
        let (events_tx, events_rx) = mpsc::channel(8);
        let shared = Arc::new(Shared {
            pending: Mutex::new(PendingTable::default()),
            sweep: Notify::new(),
            shutdown,
            events: events_tx,
            windows: Mutex::new(DmaWindowTable::default()),
            our_max_xfer: config.max_data_xfer_size,
            dma_enabled: config.dma != DmaMode::Disabled,
            dma_unanswered: watch::channel(0).0,
            dma_holding: watch::channel(0).0,
            dma_write_bytes: AtomicUsize::new(0),
            stats: StatsCounters::default(),
        });
        // Replies carry at most the larger transfer size plus two fixed parts; info replies
        // are bounded by MAX_REGION_INFO_ARGSZ.
        let largest_xfer = negotiated.server.max_data_xfer_size.max(config.max_data_xfer_size) as usize;
        let max_size =
            (wire::HEADER_LEN + 16 + largest_xfer).max(wire::HEADER_LEN + MAX_REGION_INFO_ARGSZ as usize);
        let max_fds = config.max_msg_fds as usize;

        let main = Arc::new(socket);
        let handler = Arc::new(handler);
        let (jobs_tx, jobs_rx) = mpsc::channel(config.dma_queue_depth);
        let mut tasks = Vec::new();
        let serve_socket =
            |socket: Arc<MessageSocket>, name: &'static str, tasks: &mut Vec<JoinHandle<()>>| {
                let writer =
                    Arc::new(MessageWriter { socket: socket.clone(), lock: tokio::sync::Mutex::new(()) });
                let (refusals_tx, refusals_rx) = mpsc::channel(config.send_queue_depth);
                tasks.push(tokio::spawn(
                    reply_writer(writer.clone(), refusals_rx, shared.clone(), config.request_timeout)
                        .instrument(debug_span!("vfio_user_writer", socket = name)),
                ));
                let is_main = name == "main";
                tasks.push(tokio::spawn(
                    Reader {
                        socket,
                        shared: shared.clone(),
                        carries_replies: is_main,
                        counts_toward_hold: is_main && !negotiated.twin_socket,
                        refusals: refusals_tx,
                        writer: writer.clone(),
                        jobs: jobs_tx.clone(),
                        dma_queue_bytes: config.dma_queue_bytes,
                        max_size,
                        max_fds,
                        name,
                    }
                    .run()
                    .instrument(debug_span!("vfio_user_reader", socket = name)),
                ));
                writer
            };
        let main_writer = serve_socket(main.clone(), "main", &mut tasks);
        let mut sockets = vec![main];
        if let Some(twin) = twin {
            let twin = Arc::new(twin);
            serve_socket(twin.clone(), "twin", &mut tasks);
            sockets.push(twin);
        }
        drop(jobs_tx);
        tasks.push(tokio::spawn(deadline_sweeper(shared.clone(), config.request_timeout)));
        tasks.push(tokio::spawn(dma_dispatcher(
            handler,
            shared.clone(),
            jobs_rx,
            config.max_concurrent_dma,
            config.dma_handler_timeout,
            config.request_timeout,
        )));

        let hold_during_dma = !negotiated.twin_socket;
        let client = Client {
            inner: Arc::new(Inner {
                shared,
                negotiated,
                in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
                config: config.clone(),
                main_writer,
                hold_during_dma,
                map_lock: tokio::sync::Mutex::new(()),
                sockets,
                tasks: Mutex::new(tasks),
            }),
        };
        if let DmaMode::Windows(windows) = &config.dma {
            for window in windows {
                client.dma_map(*window).await?;
            }
        }
        Ok((client, events_rx))
    }

    /// Version, capabilities on both sides, twin socket yes/no.
    pub fn negotiated(&self) -> &Negotiated {
        &self.inner.negotiated
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// `None` while connected; the reason once the connection has ended.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        self.inner.shared.disconnect_reason()
    }

    /// What the client has dropped, refused or held because of the server so far.
    pub fn stats(&self) -> ClientStats {
        let counters = &self.inner.shared.stats;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ClientStats {
            unknown_replies: load(&counters.unknown_replies),
            late_replies: load(&counters.late_replies),
            dma_commands: load(&counters.dma_commands),
            dma_refused_busy: load(&counters.dma_refused_busy),
            held_requests: load(&counters.held_requests),
        }
    }

    /// The DMA windows currently mapped.
    pub fn dma_windows(&self) -> Vec<DmaWindow> {
        self.inner.shared.windows().iter().copied().collect()
    }

    /// Waits, at most `timeout`, until every server DMA command received so far has its reply
    /// written to the socket, or the connection has ended. Called before [`Client::close`] so
    /// that DMA the handler has just failed reaches the server as error replies instead of
    /// being cut off by the close. Returns whether no DMA command is left unanswered.
    pub async fn flush_dma_replies(&self, timeout: Duration) -> bool {
        let shared = &self.inner.shared;
        let mut unanswered = shared.dma_unanswered.subscribe();
        let mut shutdown = shared.shutdown.subscribe();
        tokio::select! {
            _ = unanswered.wait_for(|n| *n == 0) => {}
            _ = wait_shutdown(&mut shutdown) => {}
            _ = tokio::time::sleep(timeout) => {}
        }
        *shared.dma_unanswered.borrow() == 0
    }

    /// Closes the connection: pending requests fail, tasks stop, a `Disconnected` event is sent.
    pub async fn close(&self) {
        self.inner.shared.fail(DisconnectReason::ClosedByClient);
        for socket in &self.inner.sockets {
            socket.shutdown();
        }
        let tasks = {
            let mut guard = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *guard)
        };
        for mut task in tasks {
            // Every task watches the shutdown signal; the timeout only guards against a bug.
            if tokio::time::timeout(Duration::from_secs(1), &mut task).await.is_err() {
                task.abort();
            }
        }
    }

    // --- request plumbing ---------------------------------------------------------------

    /// Sends a command whose payload is `fixed` followed by `data` (encoded in one buffer).
    async fn start_request(
        &self,
        command: Command,
        fixed: &[u8],
        data: &[u8],
        fds: Vec<OwnedFd>,
        timeout: Duration,
    ) -> Result<PendingReply, Error> {
        let shared = &self.inner.shared;
        let deadline = Instant::now() + timeout;
        let queued_timeout = || Error::Timeout { command, id: None, timeout };
        let slot = timeout_at(deadline, self.inner.in_flight.clone().acquire_owned())
            .await
            .map_err(|_| queued_timeout())?
            .map_err(|_| Error::Disconnected(DisconnectReason::ClosedByClient))?;
        let (reply_tx, reply_rx) = oneshot::channel();
        let (id, wake_sweeper) = {
            let mut table = shared.pending();
            if let Some(reason) = &table.closed {
                return Err(Error::Disconnected(reason.clone()));
            }
            let id = table.allocate_id();
            table.waiting.insert(id, Waiter { command, reply: reply_tx, deadline, timeout });
            table.shortest_timeout = Some(table.shortest_timeout.map_or(timeout, |t| t.min(timeout)));
            (id, table.sweep_at.is_none_or(|at| deadline < at))
        };
        if wake_sweeper {
            shared.sweep.notify_one();
        }
        tracing::Span::current().record("id", id);
        let pending =
            PendingReply { shared: shared.clone(), id, reply: reply_rx, finished: false, _slot: slot };
        let bytes = wire::encode_message_parts(id, command, MessageType::Command, false, None, fixed, data)?;
        self.write_command(&bytes, &fds, deadline, command, id, timeout).await?;
        debug!(command = %command, id, size = bytes.len(), fds = fds.len(), "vfio-user request sent");
        Ok(pending)
    }

    /// Writes one client command on the main socket, first waiting (without a turn at the
    /// socket) while server DMA on the main socket is unanswered in single-socket mode.
    async fn write_command(
        &self,
        bytes: &[u8],
        fds: &[OwnedFd],
        deadline: Instant,
        command: Command,
        id: u16,
        timeout: Duration,
    ) -> Result<(), Error> {
        let shared = &*self.inner.shared;
        let hold = self.inner.hold_during_dma.then_some(&shared.dma_holding);
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
        let mut counted = false;
        loop {
            if let Some(hold) = hold {
                if *hold.borrow() > 0 {
                    if !counted {
                        counted = true;
                        shared.stats.held_requests.fetch_add(1, Ordering::Relaxed);
                        debug!(command = %command, id, dma_outstanding = *hold.borrow(), "request held until server DMA is answered (libvfio-user #279)");
                    }
                    self.wait_hold_released(hold, deadline, command, id, timeout).await?;
                }
            }
            match self.inner.main_writer.write(shared, &[bytes], &borrowed, deadline, hold).await {
                Ok(()) => return Ok(()),
                Err(WriteError::Held) => continue,
                Err(WriteError::TimedOut) => return Err(Error::Timeout { command, id: Some(id), timeout }),
                Err(WriteError::Failed(reason)) => return Err(Error::Disconnected(reason)),
            }
        }
    }

    async fn wait_hold_released(
        &self,
        hold: &watch::Sender<usize>,
        deadline: Instant,
        command: Command,
        id: u16,
        timeout: Duration,
    ) -> Result<(), Error> {
        let shared = &self.inner.shared;
        let mut holding = hold.subscribe();
        let mut shutdown = shared.shutdown.subscribe();
        tokio::select! {
            released = timeout_at(deadline, holding.wait_for(|n| *n == 0)) => match released {
                Ok(_) => Ok(()),
                Err(_) => Err(Error::Timeout { command, id: Some(id), timeout }),
            },
            _ = wait_shutdown(&mut shutdown) => Err(Error::Disconnected(
                shared.disconnect_reason().unwrap_or(DisconnectReason::ClosedByClient),
            )),
        }
    }

    async fn request(&self, command: Command, payload: Vec<u8>, fds: Vec<OwnedFd>) -> Result<Reply, Error> {
        self.request_with_timeout(command, payload, fds, self.inner.config.request_timeout).await
    }

    async fn request_with_timeout(
        &self,
        command: Command,
        payload: Vec<u8>,
        fds: Vec<OwnedFd>,
        timeout: Duration,
    ) -> Result<Reply, Error> {
        let pending = self.start_request(command, &payload, &[], fds, timeout).await?;
        pending.wait().await
    }

    /// Appends a command with No_reply set to `out`.
    fn append_posted(
        &self,
        out: &mut Vec<u8>,
        command: Command,
        fixed: &[u8],
        data: &[u8],
    ) -> Result<u16, Error> {
        let id = {
            let mut table = self.inner.shared.pending();
            if let Some(reason) = &table.closed {
                return Err(Error::Disconnected(reason.clone()));
            }
            table.allocate_id()
        };
        wire::append_message_parts(out, id, command, MessageType::Command, true, None, fixed, data)?;
        Ok(id)
    }

    fn protocol_error(&self, what: String) -> Error {
        self.inner.shared.protocol_error(what)
    }

    fn server_caps(&self) -> &ServerCapabilities {
        &self.inner.negotiated.server
    }

    // --- device queries -------------------------------------------------------------------

    /// DEVICE_GET_INFO.
    pub async fn device_info(&self) -> Result<DeviceInfo, Error> {
        let span =
            debug_span!("vfio_user_request", command = %Command::DeviceGetInfo, id = tracing::field::Empty);
        async {
            let request = DeviceInfoRepr {
                argsz: DeviceInfoRepr::LEN as u32,
                flags: 0,
                num_regions: 0,
                num_irqs: 0,
            };
            let reply = self
                .request(Command::DeviceGetInfo, request.to_bytes(), Vec::new())
                .await?;
            let view = wire::device_info::View::new_checked(&reply.payload[..])
                .map_err(|e| self.protocol_error(format!("DEVICE_GET_INFO reply: {e}")))?;
            let info = DeviceInfoRepr::parse(&view)?;
            if info.num_regions > MAX_REGIONS || info.num_irqs > MAX_IRQ_INDICES {
                return Err(self.protocol_error(format!(
                    "DEVICE_GET_INFO reports {} regions and {} irq indices (at most {MAX_REGIONS} and {MAX_IRQ_INDICES})",
                    info.num_regions, info.num_irqs
                )));
            }
            Ok(DeviceInfo {
                flags: info.flags,
                num_regions: info.num_regions,
                num_irqs: info.num_irqs,
            })
        }
        .instrument(span)
        .await
    }

    /// DEVICE_GET_REGION_INFO, fetching the capability chain with a second request when the
    /// first reply says it needs a larger `argsz`. Any region fd offered is closed.
    pub async fn region_info(&self, index: u32) -> Result<RegionInfo, Error> {
        let span = debug_span!("vfio_user_request", command = %Command::DeviceGetRegionInfo, id = tracing::field::Empty, region = index);
        async {
            let mut argsz = RegionInfoRepr::LEN as u32;
            loop {
                let request = RegionInfoRepr {
                    argsz,
                    flags: 0,
                    index,
                    cap_offset: 0,
                    size: 0,
                    offset: 0,
                };
                let reply = self
                    .request(Command::DeviceGetRegionInfo, request.to_bytes(), Vec::new())
                    .await?;
                let view = wire::region_info::View::new_checked(&reply.payload[..])
                    .map_err(|e| self.protocol_error(format!("DEVICE_GET_REGION_INFO reply: {e}")))?;
                let info = RegionInfoRepr::parse(&view)?;
                if info.index != index {
                    return Err(self.protocol_error(format!(
                        "DEVICE_GET_REGION_INFO for region {index} answered for region {}",
                        info.index
                    )));
                }
                drop(reply.fds);
                // libvfio-user answers a short argsz with the full argsz and cap_offset 0 (the
                // chain is only filled in when it fits); current versions set CAPS in that short
                // reply, the 2022 copy bundled with QEMU 7.2 does not. So the retry depends on
                // neither cap_offset nor CAPS.
                let flags_caps = info.flags & region_flags::CAPS != 0;
                let truncated = (reply.payload.len() as u64) < u64::from(info.argsz);
                if info.argsz > argsz && truncated {
                    if argsz != RegionInfoRepr::LEN as u32 || info.argsz > MAX_REGION_INFO_ARGSZ {
                        return Err(self.protocol_error(format!(
                            "DEVICE_GET_REGION_INFO for region {index} needs argsz {} (asked {argsz}, limit {MAX_REGION_INFO_ARGSZ})",
                            info.argsz
                        )));
                    }
                    argsz = info.argsz;
                    continue;
                }
                let has_caps = flags_caps && info.cap_offset != 0;
                let caps = if has_caps {
                    wire::parse_region_caps(&reply.payload, info.cap_offset)
                        .map_err(|e| self.protocol_error(format!("region {index} capabilities: {e}")))?
                } else {
                    Vec::new()
                };
                return Ok(RegionInfo {
                    index,
                    flags: info.flags,
                    size: info.size,
                    offset: info.offset,
                    caps,
                });
            }
        }
        .instrument(span)
        .await
    }

    /// DEVICE_GET_IRQ_INFO.
    pub async fn irq_info(&self, index: u32) -> Result<IrqInfo, Error> {
        let span = debug_span!("vfio_user_request", command = %Command::DeviceGetIrqInfo, id = tracing::field::Empty, irq_index = index);
        async {
            let request = IrqInfoRepr { argsz: IrqInfoRepr::LEN as u32, flags: 0, index, count: 0 };
            let reply = self.request(Command::DeviceGetIrqInfo, request.to_bytes(), Vec::new()).await?;
            let view = wire::irq_info::View::new_checked(&reply.payload[..])
                .map_err(|e| self.protocol_error(format!("DEVICE_GET_IRQ_INFO reply: {e}")))?;
            let info = IrqInfoRepr::parse(&view)?;
            if info.index != index {
                return Err(self.protocol_error(format!(
                    "DEVICE_GET_IRQ_INFO for index {index} answered for index {}",
                    info.index
                )));
            }
            Ok(IrqInfo { index, flags: info.flags, count: info.count })
        }
        .instrument(span)
        .await
    }

    // --- interrupts -------------------------------------------------------------------------

    async fn set_irqs(&self, repr: IrqSetRepr, fds: Vec<OwnedFd>) -> Result<PendingReply, Error> {
        self.start_request(
            Command::DeviceSetIrqs,
            &repr.to_bytes(),
            &[],
            fds,
            self.inner.config.request_timeout,
        )
        .await
    }

    /// SET_IRQS(EVENTFD|TRIGGER): vector `start + i` signals `fds[i]`. The fds are duplicated
    /// and sent in chunks of the server's `max_msg_fds`, each chunk with its own `start`.
    pub async fn set_irqs_eventfds(
        &self,
        index: u32,
        start: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), Error> {
        let span = debug_span!("vfio_user_request", command = %Command::DeviceSetIrqs, id = tracing::field::Empty, irq_index = index, start, count = fds.len());
        async {
            if fds.is_empty() {
                return Err(Error::InvalidArgument(
                    "set_irqs_eventfds needs at least one fd (use set_irqs_deassign or disable_irqs)"
                        .to_owned(),
                ));
            }
            let per_message = self.server_caps().max_msg_fds as usize;
            if per_message == 0 {
                return Err(Error::InvalidArgument(
                    "the server accepts no fds (max_msg_fds 0), so eventfds cannot be assigned".to_owned(),
                ));
            }
            let mut pending = Vec::new();
            for (chunk_number, chunk) in fds.chunks(per_message).enumerate() {
                let chunk_start = (chunk_number * per_message)
                    .try_into()
                    .ok()
                    .and_then(|offset: u32| start.checked_add(offset))
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!("irq start {start} + {} overflows", fds.len()))
                    })?;
                let owned = chunk
                    .iter()
                    .map(|fd| fd.try_clone_to_owned())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|source| Error::Io { context: "duplicating an eventfd", source })?;
                let repr = IrqSetRepr {
                    flags: irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER,
                    index,
                    start: chunk_start,
                    count: chunk.len() as u32,
                    data: Vec::new(),
                };
                pending.push(self.set_irqs(repr, owned).await?);
            }
            for reply in pending {
                reply.wait().await?;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// SET_IRQS(EVENTFD|TRIGGER) with no fds: de-assigns vectors `start..start+count`.
    pub async fn set_irqs_deassign(&self, index: u32, start: u32, count: u32) -> Result<(), Error> {
        let repr = IrqSetRepr {
            flags: irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER,
            index,
            start,
            count,
            data: Vec::new(),
        };
        let span = debug_span!("vfio_user_request", command = %Command::DeviceSetIrqs, id = tracing::field::Empty, irq_index = index, start, count);
        async { self.set_irqs(repr, Vec::new()).await?.wait().await.map(|_| ()) }.instrument(span).await
    }

    /// SET_IRQS with DATA_NONE or DATA_BOOL: mask, unmask or trigger vectors.
    pub async fn set_irqs_action(
        &self,
        index: u32,
        start: u32,
        count: u32,
        action: IrqAction,
        data: IrqData,
    ) -> Result<(), Error> {
        let (data_flag, bytes) = match data {
            IrqData::None => (irq_set_flags::DATA_NONE, Vec::new()),
            IrqData::Bool(flags) => {
                if flags.len() != count as usize {
                    return Err(Error::InvalidArgument(format!(
                        "DATA_BOOL needs one flag per vector: {} flags for count {count}",
                        flags.len()
                    )));
                }
                (irq_set_flags::DATA_BOOL, flags.into_iter().map(u8::from).collect())
            }
        };
        let repr = IrqSetRepr { flags: data_flag | action.flag(), index, start, count, data: bytes };
        let span = debug_span!("vfio_user_request", command = %Command::DeviceSetIrqs, id = tracing::field::Empty, irq_index = index, start, count, action = ?action);
        async { self.set_irqs(repr, Vec::new()).await?.wait().await.map(|_| ()) }.instrument(span).await
    }

    /// SET_IRQS(NONE|TRIGGER, start 0, count 0): disables every vector of `index`.
    pub async fn disable_irqs(&self, index: u32) -> Result<(), Error> {
        self.set_irqs_action(index, 0, 0, IrqAction::Trigger, IrqData::None).await
    }

    // --- region access ----------------------------------------------------------------------

    /// `(offset, count)` pieces of at most the server's `max_data_xfer_size`.
    /// `(offset, count)` chunks of at most the server's `max_data_xfer_size`; an iterator, so that
    /// the common one-chunk access allocates nothing for it.
    fn chunks(&self, offset: u64, len: usize) -> Result<impl Iterator<Item = (u64, u32)> + use<>, Error> {
        let max = (self.server_caps().max_data_xfer_size as u64).max(1);
        let end = offset.checked_add(len as u64).ok_or_else(|| {
            Error::InvalidArgument(format!("region access at {offset:#x} + {len} overflows"))
        })?;
        let mut at = offset;
        Ok(std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let count = (end - at).min(max);
            let chunk = (at, count as u32);
            at += count;
            Some(chunk)
        }))
    }

    /// REGION_READ of `len` bytes, split into chunks of the server's `max_data_xfer_size`
    /// (all chunks are sent before the first reply is awaited).
    pub async fn region_read(&self, index: u32, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        let span = debug_span!("vfio_user_request", command = %Command::RegionRead, id = tracing::field::Empty, region = index, offset, len);
        async {
            let mut pending = Vec::new();
            for (at, count) in self.chunks(offset, len)? {
                pending
                    .push(self.start_region_read(index, at, count, self.inner.config.request_timeout).await?);
            }
            let mut data = Vec::with_capacity(len);
            for reply in pending {
                data.extend(reply.wait().await?);
            }
            Ok(data)
        }
        .instrument(span)
        .await
    }

    /// Checks that one region access fits in one message.
    fn check_single_access(&self, offset: u64, count: u64) -> Result<u32, Error> {
        let max = u64::from(self.server_caps().max_data_xfer_size);
        if count > max || offset.checked_add(count).is_none() {
            return Err(Error::InvalidArgument(format!(
                "one region access of {count} bytes at {offset:#x}: at most the server's max_data_xfer_size {max} without overflowing the offset"
            )));
        }
        Ok(count as u32)
    }

    /// Phase one of a REGION_READ of `count` bytes (at most the server's `max_data_xfer_size`):
    /// returns once the request is queued on the socket writer, so that requests started one
    /// after the other reach the server in that order; [`PendingRegionRead::wait`] awaits the
    /// reply, failing with [`Error::Timeout`] once `timeout` has passed since this call.
    pub async fn start_region_read(
        &self,
        index: u32,
        offset: u64,
        count: u32,
        timeout: Duration,
    ) -> Result<PendingRegionRead, Error> {
        let count = self.check_single_access(offset, u64::from(count))?;
        let request = RegionAccessRepr { offset, region: index, count };
        let reply =
            self.start_request(Command::RegionRead, &request.to_array(), &[], Vec::new(), timeout).await?;
        trace!(id = reply.id, region = index, offset, count, "REGION_READ queued");
        Ok(PendingRegionRead { client: self.clone(), request, reply })
    }

    /// Phase one of a REGION_WRITE of `data` (at most the server's `max_data_xfer_size` bytes):
    /// returns once queued; [`PendingRegionWrite::wait`] awaits the reply, failing with
    /// [`Error::Timeout`] once `timeout` has passed since this call.
    pub async fn start_region_write(
        &self,
        index: u32,
        offset: u64,
        data: &[u8],
        timeout: Duration,
    ) -> Result<PendingRegionWrite, Error> {
        let count = self.check_single_access(offset, data.len() as u64)?;
        let request = RegionAccessRepr { offset, region: index, count };
        let reply =
            self.start_request(Command::RegionWrite, &request.to_array(), data, Vec::new(), timeout).await?;
        trace!(id = reply.id, region = index, offset, count, "REGION_WRITE queued");
        Ok(PendingRegionWrite { client: self.clone(), request, reply })
    }

    /// REGION_WRITE awaiting each reply (for config space, I/O BARs, anything non-posted).
    pub async fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), Error> {
        let span = debug_span!("vfio_user_request", command = %Command::RegionWrite, id = tracing::field::Empty, region = index, offset, len = data.len());
        async {
            let mut pending = Vec::new();
            let mut consumed = 0usize;
            for (at, count) in self.chunks(offset, data.len())? {
                let piece = data.get(consumed..consumed + count as usize).unwrap_or(&[]);
                consumed += count as usize;
                pending.push(
                    self.start_region_write(index, at, piece, self.inner.config.request_timeout).await?,
                );
            }
            for reply in pending {
                reply.wait().await?;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// REGION_WRITE with No_reply (a posted memory write). Returns once written to the socket;
    /// errors are never reported by the server. Any later request is processed after it (the
    /// server handles messages in order and the client keeps queue order on the wire).
    pub async fn region_write_posted(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), Error> {
        let mut batch = self.posted_writes();
        batch.region_write(index, offset, data)?;
        batch.send().await
    }

    /// An empty batch of posted REGION_WRITEs, sent with one socket write: a burst of posted
    /// writes costs one system call instead of one per write.
    pub fn posted_writes(&self) -> PostedWrites<'_> {
        PostedWrites { client: self, bytes: Vec::new(), messages: 0, first_id: None }
    }

    /// Reads config space (region 7) in naturally aligned accesses of at most 4 bytes, the
    /// way a root port would issue CfgRd.
    pub async fn config_read(&self, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        let end = offset
            .checked_add(len as u64)
            .ok_or_else(|| Error::InvalidArgument(format!("config read at {offset:#x} + {len} overflows")))?;
        let mut data = Vec::with_capacity(len);
        let mut at = offset;
        while at < end {
            let size = [4u64, 2, 1].into_iter().find(|&size| at % size == 0 && at + size <= end).unwrap_or(1);
            data.extend(self.region_read(CONFIG_REGION, at, size as usize).await?);
            at += size;
        }
        Ok(data)
    }

    // --- DMA windows ------------------------------------------------------------------------

    /// DMA_MAP of `window` without fd (message-based DMA).
    pub async fn dma_map(&self, window: DmaWindow) -> Result<(), Error> {
        if !self.inner.shared.dma_enabled {
            return Err(Error::DmaDisabled);
        }
        let span = debug_span!("vfio_user_request", command = %Command::DmaMap, id = tracing::field::Empty, address = window.address, size = window.size);
        async {
            let _serialised = self.inner.map_lock.lock().await;
            {
                let table = self.inner.shared.windows();
                table.check_insert(&window)?;
                if table.len() >= self.server_caps().max_dma_maps as usize {
                    return Err(Error::InvalidArgument(format!(
                        "the server allows {} DMA windows and all are mapped",
                        self.server_caps().max_dma_maps
                    )));
                }
            }
            let request = DmaMapRepr {
                flags: window.map_flags(),
                offset: 0,
                address: window.address,
                size: window.size,
            };
            self.request(Command::DmaMap, request.to_bytes(), Vec::new()).await?;
            self.inner.shared.windows().insert(window)?;
            info!(window = %window, "DMA window mapped");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// DMA_UNMAP of a window mapped earlier (address and size must match exactly).
    pub async fn dma_unmap(&self, window: DmaWindow) -> Result<(), Error> {
        if !self.inner.shared.dma_enabled {
            return Err(Error::DmaDisabled);
        }
        let span = debug_span!("vfio_user_request", command = %Command::DmaUnmap, id = tracing::field::Empty, address = window.address, size = window.size);
        async {
            let _serialised = self.inner.map_lock.lock().await;
            if self.inner.shared.windows().find_exact(window.address, window.size).is_none() {
                return Err(Error::InvalidArgument(format!("DMA window {window} is not mapped")));
            }
            let request = DmaUnmapRepr {
                argsz: DmaUnmapRepr::LEN as u32,
                flags: 0,
                address: window.address,
                size: window.size,
            };
            self.request(Command::DmaUnmap, request.to_bytes(), Vec::new()).await?;
            self.inner.shared.windows().remove(window.address);
            info!(window = %window, "DMA window unmapped");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// DEVICE_RESET (bounded by `ClientConfig::reset_timeout`).
    pub async fn reset(&self) -> Result<(), Error> {
        let span =
            debug_span!("vfio_user_request", command = %Command::DeviceReset, id = tracing::field::Empty);
        async {
            self.request_with_timeout(
                Command::DeviceReset,
                Vec::new(),
                Vec::new(),
                self.inner.config.reset_timeout,
            )
            .await
            .map(|_| ())
        }
        .instrument(span)
        .await
    }
}

/// VERSION exchange on a fresh socket; returns the outcome and the twin socket if granted.
async fn negotiate(
    socket: &MessageSocket,
    client_caps: ClientCapabilities,
    timeout: Duration,
) -> Result<(Negotiated, Option<MessageSocket>), Error> {
    let version =
        VersionRepr { major: PROPOSED_MAJOR, minor: PROPOSED_MINOR, json: Some(client_caps.to_json()) };
    let request =
        wire::encode_message(0, Command::Version, MessageType::Command, false, None, &version.to_bytes())?;
    let deadline = Instant::now() + timeout;
    let timed_out = || Error::Timeout { command: Command::Version, id: Some(0), timeout };
    timeout_at(deadline, socket.send(&request, &[])).await.map_err(|_| timed_out())??;
    let max_size = wire::HEADER_LEN + MAX_REGION_INFO_ARGSZ as usize;
    let reply = timeout_at(deadline, socket.recv(max_size, MAX_FDS_PER_MESSAGE))
        .await
        .map_err(|_| timed_out())??
        .ok_or(Error::Disconnected(DisconnectReason::ServerClosed))?;
    let header = reply.header;
    if header.message_type != MessageType::Reply || header.command != Command::Version || header.id != 0 {
        return Err(Error::Malformed(format!("{header}: expected the VERSION reply to message id 0")));
    }
    if let Some(errno) = header.error {
        return Err(Error::Server { command: Command::Version, errno });
    }
    let view = wire::version::View::new_checked(&reply.payload[..])?;
    let answered = VersionRepr::parse(&view)?;
    caps::check_version(answered.major, answered.minor)?;
    let server =
        caps::parse_server_capabilities(answered.json.as_deref(), client_caps.twin_socket, reply.fds.len())?;
    let twin = match server.twin_socket {
        TwinSocket::Granted { fd_index } => {
            let fd =
                reply.fds.into_iter().nth(fd_index as usize).ok_or_else(|| {
                    Error::Capabilities(format!("twin socket fd_index {fd_index} names no fd"))
                })?;
            Some(MessageSocket::from_owned_fd(fd)?)
        }
        TwinSocket::NotGranted => None,
    };
    Ok((
        Negotiated {
            major: answered.major,
            minor: answered.minor,
            client: client_caps,
            twin_socket: twin.is_some(),
            server,
        },
        twin,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(reply: ReplySender) -> Waiter {
        Waiter {
            command: Command::RegionRead,
            reply,
            deadline: Instant::now(),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn ids_skip_in_flight_and_expired() {
        let mut table = PendingTable { next_id: u16::MAX, ..Default::default() };
        let (tx, _rx) = oneshot::channel();
        table.waiting.insert(0, waiter(tx));
        let (tx, _rx2) = oneshot::channel();
        table.waiting.insert(1, waiter(tx));
        table.expire(1);
        assert_eq!(table.allocate_id(), u16::MAX);
        assert_eq!(table.allocate_id(), 2);
        assert!(table.expired.contains(&1));
    }

    #[test]
    fn expired_ids_are_bounded() {
        let mut table = PendingTable::default();
        for id in 0..(EXPIRED_IDS_REMEMBERED as u16 + 10) {
            let (tx, _rx) = oneshot::channel();
            table.waiting.insert(id, waiter(tx));
            table.expire(id);
        }
        assert_eq!(table.expired.len(), EXPIRED_IDS_REMEMBERED);
        assert!(!table.expired.contains(&0));
    }

    #[test]
    fn default_config_is_valid() {
        assert!(ClientConfig::default().validate().is_ok());
        let bad = ClientConfig { max_msg_fds: 0, ..ClientConfig::default() };
        assert!(bad.validate().is_err());
    }
}
