//! Root port → device: the link reader, the posted and non-posted dispatchers and the
//! completion tasks.
//!
//! Ordering (PCIe §2.4.1, the rules a completer's ingress must keep):
//! - posted requests are forwarded in arrival order by one task and never wait for a
//!   non-posted request (`region_write_posted` only queues on the client's socket writer);
//! - a non-posted request is forwarded only after every posted request that arrived before it
//!   has been queued (the `posted_done` watch), so a read never passes an earlier write; the
//!   client's single writer queue keeps that order on the socket;
//! - the non-posted dispatcher only *queues* server requests (two-phase client API) and hands
//!   the replies to a completion task, so one slow read does not stall the next one.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info, warn};

use tlp::byte_enable::{EnabledRuns, enabled_runs};
use tlp::completion::{
    MemoryRead, io_config_read_completion, io_config_write_completion, read_completions,
    unsuccessful_completion,
};
use tlp::{Body, CfgType, CplStatus, Limits, MemOp, Message, MessageCode, MsgRouting, Tlp};
use transports::Error as ClientError;
use transports::link::{LinkEvent, LinkInput, LinkInstant, LinkProgress};
use transports::vfio_user::{Client, PendingRegionRead, PendingRegionWrite, PostedWrites};

use super::config::AccessSplit;
use super::counters::Counters;
use super::function::{BarHit, CONFIG_REGION};
use super::interrupts::IrqCommand;
use super::{ResetKind, Shared};
use crate::capture::{Direction, TlpFlags};

/// A posted request (MWr) with its place in the posted order.
#[derive(Debug)]
pub struct PostedRequest {
    pub tlp: Tlp,
    /// Its ordinal among posted requests.
    pub ordinal: u64,
}

/// A non-posted request from the root port.
#[derive(Debug)]
pub struct Request {
    pub tlp: Tlp,
    /// Posted requests that arrived before this one.
    pub posted_before: u64,
    /// When the link reader took it: the device timeout counts from here, so time spent queued
    /// in the bridge (behind earlier writes, waiting for a slot) is part of it and the root port
    /// gets its Completer Abort before its own completion timeout fires.
    pub arrived: Instant,
}

/// Why the link reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderExit {
    Shutdown,
    LinkClosed,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(64).map(|b| format!("{b:02x}")).collect()
}

/// The link reader: parses, validates, delivers completions, queues requests.
pub struct LinkReader {
    pub shared: Arc<Shared>,
    pub posted: mpsc::Sender<PostedRequest>,
    pub non_posted: mpsc::Sender<Request>,
    pub posted_count: u64,
    /// Counts every input once handled (answered, dropped or queued for the device), which a
    /// lockstep simulator waits for before it advances time.
    pub progress: LinkProgress,
    /// A received completion's payload buffer, reused by the next parse (completions are
    /// consumed here; requests take theirs along), so a CplD costs no allocation.
    pub payload_buffer: Vec<u8>,
}

impl LinkReader {
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<LinkInput>,
        mut shutdown: watch::Receiver<bool>,
    ) -> ReaderExit {
        // One shutdown future for the whole run: a new one per TLP registered and dropped a
        // waiter on the shutdown watch (two lock round trips) for every input.
        let stop = super::wait_shutdown(&mut shutdown);
        tokio::pin!(stop);
        loop {
            let input = tokio::select! {
                biased;
                _ = &mut stop => return ReaderExit::Shutdown,
                input = rx.recv() => input,
            };
            match input {
                None => return ReaderExit::LinkClosed,
                Some(LinkInput::Event { event, time }) => self.event(event, time).await,
                Some(LinkInput::Tlp(received)) => self.tlp(&received.bytes, received.time).await,
            }
            self.progress.handled_one();
        }
    }

    async fn event(&mut self, event: LinkEvent, time: transports::link::LinkInstant) {
        match event {
            LinkEvent::Up => info!(%time, "link up"),
            LinkEvent::Down | LinkEvent::HotReset => {
                warn!(?event, %time, "link reset: resetting the device");
                let kind = if event == LinkEvent::Down { ResetKind::LinkDown } else { ResetKind::HotReset };
                self.shared.begin_reset(kind);
                self.shared.request_reset(kind);
            }
        }
    }

    /// Records an incoming TLP (when capturing).
    fn capture(&self, bytes: &[u8], time: LinkInstant, flags: TlpFlags) {
        if let Some(capture) = &self.shared.config.capture {
            capture.tlp(Direction::Inbound, time, flags, bytes);
        }
    }

    async fn tlp(&mut self, bytes: &[u8], time: LinkInstant) {
        let shared = &self.shared;
        let malformed = TlpFlags { malformed: true, ..TlpFlags::default() };
        let tlp = match Tlp::parse_reusing(bytes, std::mem::take(&mut self.payload_buffer)) {
            Ok(tlp) => tlp,
            Err(e) => {
                self.capture(bytes, time, malformed);
                Counters::inc(&shared.counters.malformed);
                warn!(error = %e, hex = %hex(bytes), "malformed TLP dropped");
                return;
            }
        };
        if let Err(v) = tlp.validate(&Limits::default()) {
            self.capture(bytes, time, TlpFlags { poisoned: tlp.ep, ..malformed });
            Counters::inc(&shared.counters.malformed);
            warn!(rule = v.rule.name(), section = v.rule.spec_section(), detail = %v.detail, tlp = %tlp, hex = %hex(bytes), "malformed TLP dropped");
            return;
        }
        self.capture(bytes, time, TlpFlags { poisoned: tlp.ep, ..TlpFlags::default() });
        shared.counters.count_in(tlp.kind_name());
        if tlp.ep && !matches!(tlp.body, Body::Completion(_)) {
            Counters::inc(&shared.counters.poisoned);
            warn!(tlp = %tlp, "poisoned request dropped");
            return;
        }
        let (ready, server_lost, id) = {
            let f = shared.function();
            (f.ready, f.server_lost, f.id)
        };
        match &tlp.body {
            Body::Completion(_) => {
                shared.tags.deliver(&tlp, id);
                self.payload_buffer = tlp.payload;
            }
            Body::Message(m) => {
                Counters::inc(&shared.counters.messages_received);
                info!(tlp = %tlp, code = m.code.name().unwrap_or("unknown"), "message from the root port");
                if m.code == MessageCode::PME_TURN_OFF {
                    // The function has no power state to save: acknowledge at once (§5.3.3.2.1).
                    shared.send_message(MessageCode::PME_TO_ACK, MsgRouting::Gather, id).await;
                }
            }
            Body::Config(c) => {
                if c.cfg_type == CfgType::Type1 || c.target.function() != id.function() {
                    shared.complete_with(&tlp, CplStatus::Ur).await;
                } else if !ready {
                    shared.complete_with(&tlp, CplStatus::Crs).await;
                } else {
                    self.queue_non_posted(tlp).await;
                }
            }
            Body::Memory(m) if m.op == MemOp::Write => {
                let request = PostedRequest { tlp, ordinal: self.posted_count };
                self.posted_count += 1;
                let _ = self.posted.send(request).await;
            }
            Body::Memory(m) if m.op == MemOp::Read && ready => self.queue_non_posted(tlp).await,
            Body::Io(_) if ready => self.queue_non_posted(tlp).await,
            // The function exists but its server is gone: it cannot complete the request.
            Body::Memory(m) if m.op == MemOp::Read && server_lost => {
                shared.complete_with(&tlp, CplStatus::Ca).await
            }
            Body::Io(_) if server_lost => shared.complete_with(&tlp, CplStatus::Ca).await,
            // MRdLk (endpoints do not support locks), AtomicOps (no completer support), and
            // memory/I/O requests while the device is not ready.
            _ => shared.complete_with(&tlp, CplStatus::Ur).await,
        }
    }

    /// Never waits: a reader blocked on a full non-posted queue would hold the posted writes and
    /// completions behind it (PCIe §2.4.1: posted requests must be able to pass blocked
    /// non-posted ones).
    async fn queue_non_posted(&mut self, tlp: Tlp) {
        let request = Request { tlp, posted_before: self.posted_count, arrived: Instant::now() };
        match self.non_posted.try_send(request) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(request)) => {
                Counters::inc(&self.shared.counters.non_posted_overflow);
                warn!(
                    tlp = %request.tlp,
                    depth = self.shared.config.non_posted_queue_depth,
                    "non-posted queue full (more requests outstanding than the bridge holds); answering Completer Abort"
                );
                self.shared.complete_with(&request.tlp, CplStatus::Ca).await;
            }
            // The dispatcher has stopped: the engine is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Naturally aligned pieces of at most 8 bytes, or whole pieces of at most `max`. An iterator,
/// not a `Vec`: this runs for every request, and most have one piece.
pub fn access_pieces(
    offset: u64,
    len: u32,
    split: AccessSplit,
    max: u32,
) -> impl Iterator<Item = (u64, u32)> {
    let end = offset.saturating_add(u64::from(len));
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let remaining = end - at;
        let size = match split {
            AccessSplit::Aligned8 => {
                [8u64, 4, 2, 1].into_iter().find(|&s| at % s == 0 && s <= remaining).unwrap_or(1)
            }
            AccessSplit::Whole => remaining.min(u64::from(max.max(1))),
        };
        let piece = (at, size as u32);
        at += size;
        Some(piece)
    })
}

/// `(offset of the first enabled byte, bytes from it to the end of the last run)` of `runs`, in
/// one pass; `None` when no byte is enabled.
fn enabled_span(runs: &EnabledRuns) -> Option<(u32, u32)> {
    let mut rest = runs.clone();
    let (first, len) = rest.next()?;
    let end = rest.last().map_or(first + len, |(offset, len)| offset + len);
    Some((first, end - first))
}

/// Bytes of REGION_WRITE messages the posted dispatcher gathers, at most, into one socket write
/// (one more write may take it past this).
const POSTED_BATCH_BYTES: usize = 64 * 1024;

/// The posted dispatcher. The writes already queued when it wakes go to the server in one
/// socket write (in order), so a burst of MWrs costs few system calls.
pub async fn posted_dispatcher(
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<PostedRequest>,
    done: watch::Sender<u64>,
) {
    while let Some(first) = queue.recv().await {
        let mut forwarded = first.ordinal + 1;
        match shared.client() {
            Some(client) if !shared.function().server_lost => {
                let mut batch = client.posted_writes();
                let mut next = Some(first);
                // Writes with messages in the batch (a BAR miss has none; a write that could not
                // be added was counted lost already).
                let mut tlps = 0u64;
                while let Some(request) = next {
                    forwarded = request.ordinal + 1;
                    tlps += u64::from(add_posted(&shared, &mut batch, &request.tlp).await);
                    next = if batch.len() < POSTED_BATCH_BYTES { queue.try_recv().ok() } else { None };
                }
                let messages = batch.messages();
                if let Err(e) = batch.send().await {
                    shared.counters.posted_lost.fetch_add(tlps, Ordering::Relaxed);
                    warn!(error = %e, tlps, messages, "posted writes could not be forwarded");
                }
            }
            _ => {
                Counters::inc(&shared.counters.posted_lost);
                debug!(tlp = %first.tlp, "posted write dropped: the server is gone");
            }
        }
        done.send_replace(forwarded);
    }
}

/// Adds the REGION_WRITEs of one posted MWr to `batch`; `true` when every one of them was added
/// (and there was at least one).
async fn add_posted(shared: &Shared, batch: &mut PostedWrites<'_>, tlp: &Tlp) -> bool {
    let Body::Memory(m) = &tlp.body else { return false };
    // Runs are recomputed rather than collected: no allocation per posted write.
    let runs = enabled_runs(m.first_be, m.last_be, tlp.length_dw());
    let Some((first, span)) = enabled_span(&runs) else { return false };
    let start = m.address.wrapping_add(u64::from(first));
    let span = u64::from(span);
    let Some(hit) = shared.function().decode(start, span, false) else {
        Counters::inc(&shared.counters.posted_misses);
        debug!(tlp = %tlp, "posted write hits no BAR; dropped");
        return false;
    };
    shared.bar_accessed().await;
    let base = hit.offset.wrapping_sub(u64::from(first));
    shared.snoop_msix_write(&hit, base, runs.clone(), &tlp.payload).await;
    let split = shared.split_for(&hit);
    for (offset, len) in runs {
        let Some(data) = tlp.payload.get(offset as usize..(offset + len) as usize) else { continue };
        for (at, count) in access_pieces(base + u64::from(offset), len, split, shared.max_xfer()) {
            let from = (at - base - u64::from(offset)) as usize;
            let piece = data.get(from..from + count as usize).unwrap_or(&[]);
            if let Err(e) = batch.region_write(hit.region, at, piece) {
                Counters::inc(&shared.counters.posted_lost);
                warn!(tlp = %tlp, error = %e, "posted write could not be forwarded");
                return false;
            }
        }
    }
    true
}

/// One server access of a non-posted request, queued, waiting for its reply.
enum Piece {
    Read {
        pending: PendingRegionRead,
        at: usize,
    },
    Write(PendingRegionWrite),
    /// The bridge answers these bytes itself (MSI-X PBA).
    Local {
        data: Vec<u8>,
        at: usize,
    },
    /// The access could not be queued, or its time ran out first.
    Failed {
        timed_out: bool,
        why: String,
    },
}

impl Piece {
    fn failed(e: ClientError) -> Piece {
        Piece::Failed { timed_out: matches!(e, ClientError::Timeout { .. }), why: e.to_string() }
    }
}

/// How a completion task receives its pieces: a request of one piece (most MMIO accesses) hands
/// it over directly; longer ones stream through a bounded channel, so that the completion task
/// awaits replies while the dispatcher still queues later pieces. (A tokio channel costs two
/// allocations, about 4 KiB, per request.)
enum Pieces {
    One(Option<Piece>),
    Stream(mpsc::Receiver<Piece>),
}

impl Pieces {
    async fn recv(&mut self) -> Option<Piece> {
        match self {
            Pieces::One(piece) => piece.take(),
            Pieces::Stream(rx) => rx.recv().await,
        }
    }
}

/// The non-posted dispatcher.
pub async fn non_posted_dispatcher(
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<Request>,
    mut posted_done: watch::Receiver<u64>,
) {
    let limit = Arc::new(Semaphore::new(shared.config.max_outstanding_non_posted));
    let mut completions = JoinSet::new();
    loop {
        let request = tokio::select! {
            request = queue.recv() => match request { Some(r) => r, None => break },
            Some(done) = completions.join_next(), if !completions.is_empty() => {
                shared.counters.joined(Some(done));
                continue;
            }
        };
        let deadline = request.arrived + shared.device_timeout;
        // A read must not pass an earlier posted write.
        // (The watch's read guard must not live across an await: one statement.)
        let waited = timeout_at(deadline, posted_done.wait_for(|done| *done >= request.posted_before))
            .await
            .map(|seen| seen.is_ok());
        match waited {
            Ok(true) => {}
            Ok(false) => break,
            Err(_) => {
                shared.expire_request(&request.tlp, "earlier posted writes").await;
                continue;
            }
        }
        let permit = match timeout_at(deadline, limit.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => break,
            Err(_) => {
                shared.expire_request(&request.tlp, "an outstanding-request slot").await;
                continue;
            }
        };
        let Some(client) = shared.client() else {
            shared.complete_with(&request.tlp, CplStatus::Ca).await;
            continue;
        };
        dispatch_non_posted(&shared, &client, request.tlp, deadline, permit, &mut completions).await;
    }
    let grace = Instant::now() + shared.config.shutdown_grace;
    while !completions.is_empty() {
        match timeout_at(grace, completions.join_next()).await {
            Ok(done) => shared.counters.joined(done),
            Err(_) => {
                completions.abort_all();
                break;
            }
        }
    }
}

async fn dispatch_non_posted(
    shared: &Arc<Shared>,
    client: &Client,
    tlp: Tlp,
    deadline: Instant,
    permit: OwnedSemaphorePermit,
    completions: &mut JoinSet<()>,
) {
    if Instant::now() >= deadline {
        // Before any effect (a config write's snoop): a request the root port has given up on
        // is answered CA, not carried out.
        shared.expire_request(&tlp, "dispatch").await;
        return;
    }
    let mut after = AfterCompletion::default();
    let target = match &tlp.body {
        Body::Config(c) => {
            if !shared.function().ready {
                shared.complete_with(&tlp, CplStatus::Crs).await;
                return;
            }
            let runs = enabled_runs(c.first_be, 0, 1);
            if c.write {
                let mut f = shared.function();
                f.capture_id(c.target);
                for (offset, len) in runs.clone() {
                    if let Some(data) = tlp.payload.get(offset as usize..(offset + len) as usize) {
                        let effects = f.snoop_config_write(c.register + offset as u16, data);
                        after.flr |= effects.flr;
                        after.interrupts |= effects.interrupts_changed;
                    }
                }
                drop(f);
                if after.flr {
                    // The function's state resets before the dispatcher takes the next request,
                    // so a request right behind the FLR sees the reset function (CRS or UR), not
                    // the old BAR map; the server's DEVICE_RESET follows the write's completion.
                    shared.begin_reset(ResetKind::Flr);
                }
            }
            let span = enabled_span(&runs);
            let first = span.map_or(0, |(first, _)| u64::from(first));
            Target {
                region: CONFIG_REGION,
                base: u64::from(c.register) + first,
                runs,
                span,
                split: shared.config.split_non_prefetchable,
                write: c.write,
                local_pba: None,
            }
        }
        Body::Io(io) => {
            let runs = enabled_runs(io.first_be, 0, 1);
            let span = enabled_span(&runs);
            match shared.decode_span(u64::from(io.address), span, true) {
                Some(hit) => {
                    shared.bar_accessed().await;
                    Target {
                        region: hit.region,
                        base: hit.offset,
                        runs,
                        span,
                        split: shared.split_for(&hit),
                        write: io.write,
                        local_pba: None,
                    }
                }
                None => {
                    shared.complete_with(&tlp, CplStatus::Ur).await;
                    return;
                }
            }
        }
        Body::Memory(m) => {
            let Ok(read) = MemoryRead::from_tlp(&tlp) else {
                shared.complete_with(&tlp, CplStatus::Ur).await;
                return;
            };
            let runs = read.enables.runs();
            let span = enabled_span(&runs);
            match shared.decode_span(m.address & !3, span, false) {
                Some(hit) => {
                    shared.bar_accessed().await;
                    let local_pba = shared.pba_read(&hit, read.byte_count());
                    Target {
                        region: hit.region,
                        base: hit.offset,
                        runs,
                        span,
                        split: shared.split_for(&hit),
                        write: false,
                        local_pba,
                    }
                }
                None => {
                    shared.complete_with(&tlp, CplStatus::Ur).await;
                    return;
                }
            }
        }
        _ => {
            shared.complete_with(&tlp, CplStatus::Ur).await;
            return;
        }
    };
    let (first, total) = target.span.unwrap_or((0, 0));
    if let Some(data) = target.local_pba {
        let pieces = Pieces::One(Some(Piece::Local { data, at: 0 }));
        completions.spawn(complete(shared.clone(), tlp, pieces, total as usize, after, deadline, permit));
        return;
    }
    // `base` is the region offset of the request's first DW (byte offset 0 of the runs).
    let base = target.base.wrapping_sub(u64::from(first));
    let mut plan = target.runs.clone().flat_map(|(offset, len)| {
        access_pieces(base + u64::from(offset), len, target.split, shared.max_xfer())
    });
    let (first_piece, second_piece) = (plan.next(), plan.next());
    let Some(second_piece) = second_piece else {
        let piece = match first_piece {
            Some(at_count) => {
                Some(start_piece(client, &target, base, first, at_count, &tlp.payload, deadline).await)
            }
            // Nothing to access (no byte enabled): the completion task answers at once.
            None => None,
        };
        completions.spawn(complete(
            shared.clone(),
            tlp,
            Pieces::One(piece),
            total as usize,
            after,
            deadline,
            permit,
        ));
        return;
    };
    let (tx, rx) = mpsc::channel::<Piece>(16);
    let payload = tlp.payload.clone();
    completions.spawn(complete(
        shared.clone(),
        tlp,
        Pieces::Stream(rx),
        total as usize,
        after,
        deadline,
        permit,
    ));
    for at_count in first_piece.into_iter().chain([second_piece]).chain(plan) {
        let piece = start_piece(client, &target, base, first, at_count, &payload, deadline).await;
        let failed = matches!(piece, Piece::Failed { .. });
        if tx.send(piece).await.is_err() || failed {
            return;
        }
    }
}

/// Queues one server access of a non-posted request.
async fn start_piece(
    client: &Client,
    target: &Target,
    base: u64,
    first: u32,
    (at, count): (u64, u32),
    payload: &[u8],
    deadline: Instant,
) -> Piece {
    // The client times the access out at the request's deadline, not a full device timeout
    // after it was sent.
    let device_timeout = deadline.saturating_duration_since(Instant::now());
    if device_timeout.is_zero() {
        return Piece::Failed {
            timed_out: true,
            why: "device timeout passed before the access was sent".into(),
        };
    }
    let dest = (at - base) as usize - first as usize;
    if target.write {
        let from = (at - base) as usize;
        let data = payload.get(from..from + count as usize).unwrap_or(&[]);
        match client.start_region_write(target.region, at, data, device_timeout).await {
            Ok(pending) => Piece::Write(pending),
            Err(e) => Piece::failed(e),
        }
    } else {
        match client.start_region_read(target.region, at, count, device_timeout).await {
            Ok(pending) => Piece::Read { pending, at: dest },
            Err(e) => Piece::failed(e),
        }
    }
}

/// Where a non-posted request goes.
struct Target {
    region: u32,
    /// Region offset of the first enabled byte.
    base: u64,
    /// The enabled runs, an iterator run where needed (no allocation per request).
    runs: EnabledRuns,
    /// `(offset of the first enabled byte, bytes to the end of the last run)`; `None` when no
    /// byte is enabled.
    span: Option<(u32, u32)>,
    split: AccessSplit,
    write: bool,
    local_pba: Option<Vec<u8>>,
}

/// What to do once a config write has been completed.
#[derive(Clone, Copy, Debug, Default)]
struct AfterCompletion {
    flr: bool,
    interrupts: bool,
}

/// Awaits the pieces of one non-posted request and sends its completion(s).
async fn complete(
    shared: Arc<Shared>,
    tlp: Tlp,
    mut pieces: Pieces,
    len: usize,
    after: AfterCompletion,
    deadline: Instant,
    _permit: OwnedSemaphorePermit,
) {
    let mut data: Option<Vec<u8>> = None;
    let mut failure: Option<(bool, String)> = None;
    loop {
        let piece = match timeout_at(deadline, pieces.recv()).await {
            Ok(Some(piece)) => piece,
            Ok(None) => break,
            Err(_) => {
                failure = Some((true, "pieces not queued in time".to_owned()));
                break;
            }
        };
        if failure.is_some() {
            continue;
        }
        let outcome = match piece {
            // The client fails a piece with Error::Timeout once the device timeout has passed
            // since it was started (no timer here: see transports' deadline sweeper).
            Piece::Read { pending, at } => match pending.wait().await {
                Ok(bytes) => {
                    place_piece(&mut data, len, at, bytes);
                    Ok(())
                }
                Err(e) => Err((matches!(e, ClientError::Timeout { .. }), e.to_string())),
            },
            Piece::Write(pending) => match pending.wait().await {
                Ok(()) => Ok(()),
                Err(e) => Err((matches!(e, ClientError::Timeout { .. }), e.to_string())),
            },
            Piece::Local { data: bytes, at } => {
                place_piece(&mut data, len, at, bytes);
                Ok(())
            }
            Piece::Failed { timed_out, why } => Err((timed_out, why)),
        };
        if let Err(f) = outcome {
            failure = Some(f);
        }
    }
    let (id, link) = {
        let f = shared.function();
        (f.id, f.link)
    };
    if let Some((timed_out, why)) = failure {
        let counter =
            if timed_out { &shared.counters.device_timeouts } else { &shared.counters.device_errors };
        Counters::inc(counter);
        warn!(tlp = %tlp, timed_out, error = %why, timeout = ?shared.device_timeout, "server failed the request; answering Completer Abort");
        shared.complete_with(&tlp, CplStatus::Ca).await;
    } else {
        let data = data.unwrap_or_else(|| vec![0u8; len]);
        // A memory read's completions are sent as they are built, not collected first; I/O and
        // config requests have a single completion.
        let single: Result<Option<Tlp>, String> = match &tlp.body {
            Body::Memory(_) => {
                match MemoryRead::from_tlp(&tlp).and_then(|read| read_completions(&read, id, &data, &link)) {
                    Ok(mut completions) => {
                        // Emitted straight from the data (no payload `Vec` per completion).
                        while let Some(bytes) = completions.next_bytes() {
                            if shared.tx.send_encoded(bytes, "CplD", false).await.is_err() {
                                return;
                            }
                        }
                        Ok(None)
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Body::Config(_) | Body::Io(_) if !tlp.has_data() => io_config_dword(&tlp, &data)
                .map(|dw| shared.presented_register(&tlp, dw))
                .and_then(|dw| io_config_read_completion(&tlp, id, dw).map(Some).map_err(|e| e.to_string())),
            _ => io_config_write_completion(&tlp, id).map(Some).map_err(|e| e.to_string()),
        };
        match single {
            Ok(Some(completion)) => {
                if shared.tx.send(&completion).await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                warn!(tlp = %tlp, error = %e, "cannot build the completion; answering Completer Abort");
                shared.complete_with(&tlp, CplStatus::Ca).await;
            }
        }
    }
    if after.flr {
        shared.request_reset(ResetKind::Flr);
    } else if after.interrupts {
        let _ = shared.irq_commands.send(IrqCommand::Reconfigure).await;
    }
}

/// Puts one piece's bytes at `at` in the request's span of `len` bytes. A piece that is the
/// whole span (most MMIO reads) becomes the span as it is, without a zeroed buffer and a copy.
fn place_piece(span: &mut Option<Vec<u8>>, len: usize, at: usize, bytes: Vec<u8>) {
    if span.is_none() && at == 0 && bytes.len() == len {
        *span = Some(bytes);
        return;
    }
    let span = span.get_or_insert_with(|| vec![0u8; len]);
    if let Some(dst) = span.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(&bytes);
    }
}

/// The 4 register bytes of an I/O or config read, from the bytes of its enabled span.
fn io_config_dword(tlp: &Tlp, span: &[u8]) -> Result<[u8; 4], String> {
    let first_be = match &tlp.body {
        Body::Config(c) => c.first_be,
        Body::Io(io) => io.first_be,
        _ => return Err("not an I/O or config request".to_owned()),
    };
    let mut dw = [0u8; 4];
    let first = (0..4).find(|i| first_be & (1 << i) != 0).unwrap_or(0);
    for (i, byte) in span.iter().enumerate() {
        if let Some(slot) = dw.get_mut(first + i) {
            *slot = *byte;
        }
    }
    Ok(dw)
}

impl Shared {
    /// Decodes the enabled `span` ([`enabled_span`]) of a request at `dw_address`.
    fn decode_span(&self, dw_address: u64, span: Option<(u32, u32)>, io: bool) -> Option<BarHit> {
        // A zero-length request (no byte enabled) addresses its first DW.
        let (first, len) = span.unwrap_or((0, 1));
        let start = dw_address.checked_add(u64::from(first))?;
        self.function().decode(start, u64::from(len), io)
    }

    /// A config read's DW as the host must see it: a BAR register the bridge presents itself
    /// replaces what the server answered.
    fn presented_register(&self, tlp: &Tlp, dw: [u8; 4]) -> [u8; 4] {
        let Body::Config(c) = &tlp.body else { return dw };
        self.function().emulated_bar_register(c.register).map_or(dw, u32::to_le_bytes)
    }

    fn split_for(&self, hit: &BarHit) -> AccessSplit {
        if hit.prefetchable { self.config.split_prefetchable } else { self.config.split_non_prefetchable }
    }

    /// QEMU's INTx EOI heuristic: any BAR access while INTx is asserted ends it.
    async fn bar_accessed(&self) {
        if self.irq().intx_asserted {
            let _ = self.irq_commands.send(IrqCommand::IntxEoi).await;
        }
    }

    /// A posted write into the MSI-X table updates the bridge's copy (and may unmask).
    async fn snoop_msix_write(
        &self,
        hit: &BarHit,
        base: u64,
        runs: impl Iterator<Item = (u32, u32)>,
        payload: &[u8],
    ) {
        let Some(msix) = self.function().msix else { return };
        if hit.region != u32::from(msix.table_bir) {
            return;
        }
        let table = u64::from(msix.table_offset)..u64::from(msix.table_offset) + msix.table_len();
        let mut touched = false;
        for (offset, len) in runs {
            let at = base + u64::from(offset);
            if at + u64::from(len) <= table.start || at >= table.end {
                continue;
            }
            if let Some(data) = payload.get(offset as usize..(offset + len) as usize) {
                // Clip to the table.
                let skip = table.start.saturating_sub(at) as usize;
                let from = at.max(table.start) - table.start;
                if let Some(data) = data.get(skip..) {
                    let keep = (table.end - (table.start + from)).min(data.len() as u64) as usize;
                    self.irq().write_table(from, data.get(..keep).unwrap_or(&[]));
                    touched = true;
                }
            }
        }
        if touched {
            let _ = self.irq_commands.send(IrqCommand::Reconfigure).await;
        }
    }

    /// A read entirely inside the MSI-X PBA is answered from the bridge's pending bits.
    fn pba_read(&self, hit: &BarHit, len: u32) -> Option<Vec<u8>> {
        let msix = self.function().msix?;
        if hit.region != u32::from(msix.pba_bir) {
            return None;
        }
        let start = u64::from(msix.pba_offset);
        let inside = hit.offset >= start && hit.offset + u64::from(len) <= start + msix.pba_len();
        inside.then(|| self.irq().pba_bytes(hit.offset - start, len as usize))
    }

    /// Sends a message without data (PME_TO_Ack, INTx) from the function.
    pub(crate) async fn send_message(
        &self,
        code: MessageCode,
        routing: MsgRouting,
        requester: tlp::RoutingId,
    ) {
        let tlp = Tlp {
            prefixes: Vec::new(),
            tc: 0,
            attr: tlp::Attr::default(),
            ln: false,
            th: false,
            ep: false,
            at: 0,
            length: 0,
            body: Body::Message(Message { routing, requester, tag: 0, code, fields: [0; 8] }),
            payload: Vec::new(),
            digest: None,
        };
        let _ = self.tx.send(&tlp).await;
    }

    /// Answers CA to a non-posted request whose device timeout ran out while it waited in the
    /// bridge for `waiting_for`, before it reached the server.
    async fn expire_request(&self, tlp: &Tlp, waiting_for: &str) {
        Counters::inc(&self.counters.device_timeouts);
        warn!(tlp = %tlp, waiting_for, timeout = ?self.device_timeout, "device timeout passed while the request was queued in the bridge; answering Completer Abort");
        self.complete_with(tlp, CplStatus::Ca).await;
    }

    /// Answers a non-posted request with a failure status (UR, CA, CRS) and counts it.
    pub(crate) async fn complete_with(&self, tlp: &Tlp, status: CplStatus) {
        let id = self.function().id;
        let counter = match status {
            CplStatus::Ur => &self.counters.ur_sent,
            CplStatus::Crs => &self.counters.crs_sent,
            _ => &self.counters.ca_sent,
        };
        match unsuccessful_completion(tlp, id, status) {
            Ok(completion) => {
                Counters::inc(counter);
                debug!(request = %tlp, status = status.name(), "failing request");
                let _ = self.tx.send(&completion).await;
            }
            Err(e) => debug!(request = %tlp, error = %e, "no completion for this request"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_naturally_aligned_and_at_most_8_bytes() {
        assert_eq!(
            access_pieces(0x3, 14, AccessSplit::Aligned8, 1 << 20).collect::<Vec<_>>(),
            vec![(0x3, 1), (0x4, 4), (0x8, 8), (0x10, 1)]
        );
        assert_eq!(access_pieces(0x6, 2, AccessSplit::Aligned8, 8).collect::<Vec<_>>(), vec![(0x6, 2)]);
        assert_eq!(
            access_pieces(0x0, 10, AccessSplit::Whole, 4).collect::<Vec<_>>(),
            vec![(0, 4), (4, 4), (8, 2)]
        );
        assert!(access_pieces(5, 0, AccessSplit::Whole, 4).next().is_none());
    }
}
