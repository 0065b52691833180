//! The tag table: one slot per tag the bridge may use for its memory reads (DMA_READ → MRd).
//!
//! Completions are delivered synchronously from the link reader ([`TagTable::deliver`] never
//! waits), so device DMA can always finish even when the request queues are full. A tag whose
//! read timed out is *quarantined*: it is not handed out again until its final late completion
//! arrives or a further completion timeout has passed, so a late completion can never be taken
//! for a newer request that reused the tag. A link reset (link down, hot reset) instead frees
//! every tag at once: completions for requests issued before it never arrive after it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, oneshot};
use tracing::{debug, warn};

use tlp::TlpError;
use tlp::completion::{Progress, ReadReassembly};
use tlp::{Body, CplStatus, RoutingId, Tlp};
use transports::link::LinkInstant;

use super::counters::Counters;

/// Which tags a requester may use (PCIe §2.2.6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagWidth {
    /// Extended Tag Field Enable written as 0: tags 0..=31.
    Five,
    /// Tags 0..=255 (the default: Extended Tag Field Enable is set at reset on current devices).
    Eight,
    /// 10-Bit Tag Requester Enable set: tags 256..=1023 (Tag\[9:8\] ≠ 00b, so a completer
    /// that truncates to 8 bits cannot alias an 8-bit tag).
    Ten,
}

impl TagWidth {
    fn range(self) -> std::ops::Range<usize> {
        match self {
            TagWidth::Five => 0..32,
            TagWidth::Eight => 0..256,
            TagWidth::Ten => 256..1024,
        }
    }
}

/// How one outstanding read ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    Data(Vec<u8>),
    /// The completer answered with a failure status (UR, CA, CRS or reserved).
    Status(CplStatus),
    /// The bridge gave up on it (reset, link down, shutdown).
    Aborted,
}

enum Slot {
    Free,
    Busy {
        reassembly: ReadReassembly,
        done: oneshot::Sender<ReadOutcome>,
    },
    /// Timed out or abandoned: reusable at `until`, or once its final completion arrives.
    Quarantined {
        until: LinkInstant,
    },
}

struct Inner {
    slots: Vec<Slot>,
    /// Round-robin start for allocation, so a just-freed tag is not immediately reused.
    next: usize,
}

/// One slot per 10-bit tag value; [`TagWidth`] selects which are handed out.
pub struct TagTable {
    inner: Mutex<Inner>,
    /// Bumped (under the `inner` lock) by every [`TagTable::abort_all`] and
    /// [`TagTable::release_all`]: a DMA that began before a reset must not issue requests
    /// after it (see [`TagTable::allocate_since`]).
    resets: AtomicU64,
    freed: Notify,
    /// Callers waiting on `freed` (see [`TagTable::waiting`]): a freed tag notifies only when
    /// there are some, so the common case (tags to spare) costs no `Notify` lock per completion.
    waiting: AtomicUsize,
    counters: Arc<Counters>,
}

/// Registers its holder as waiting for a freed tag for as long as it lives.
pub struct TagWaiter<'a> {
    table: &'a TagTable,
}

impl Drop for TagWaiter<'_> {
    fn drop(&mut self) {
        self.table.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The tag table was reset since the caller's DMA began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableReset;

/// Does this completion end its request (a failure status, or it carries the last bytes)?
fn is_final(tlp: &Tlp, cpl: &tlp::Completion) -> bool {
    if cpl.status != CplStatus::Sc {
        return true;
    }
    let carried = (tlp.payload.len() as u32).saturating_sub(u32::from(cpl.lower_address & 3));
    u32::from(cpl.byte_count) <= carried
}

impl TagTable {
    pub fn new(counters: Arc<Counters>) -> Self {
        let slots = (0..=tlp::split::MAX_TAG).map(|_| Slot::Free).collect();
        TagTable {
            inner: Mutex::new(Inner { slots, next: 0 }),
            resets: AtomicU64::new(0),
            freed: Notify::new(),
            waiting: AtomicUsize::new(0),
            counters,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reset count, to pass to [`TagTable::allocate_since`] for the reads of one DMA.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Acquire)
    }

    /// [`TagTable::allocate_since`] without the reset check, for tests of the table alone.
    #[cfg(test)]
    pub fn allocate(
        &self,
        width: TagWidth,
        now: LinkInstant,
        reassembly: ReadReassembly,
    ) -> Option<(u16, oneshot::Receiver<ReadOutcome>)> {
        Self::allocate_in(&mut self.lock(), width, now, reassembly)
    }

    /// Takes a free tag for a read of `reassembly` (`Ok(None)` if every usable tag is taken) for
    /// a DMA that began when [`TagTable::resets`] was `resets`; `Err` once the table has been
    /// reset since. A DMA whose reads a reset aborted may still be queueing its next read when
    /// the reset frees every tag; without this it would take the freed tags for reads of a dead
    /// request (sent across the link reset) and, on seeing its aborted read, quarantine them
    /// for a completion timeout, starving the next DMA.
    pub fn allocate_since(
        &self,
        resets: u64,
        width: TagWidth,
        now: LinkInstant,
        reassembly: ReadReassembly,
    ) -> Result<Option<(u16, oneshot::Receiver<ReadOutcome>)>, TableReset> {
        let mut inner = self.lock();
        // Resets bump the count under this lock: none can slip in before the allocation.
        if self.resets.load(Ordering::Acquire) != resets {
            return Err(TableReset);
        }
        Ok(Self::allocate_in(&mut inner, width, now, reassembly))
    }

    fn allocate_in(
        inner: &mut Inner,
        width: TagWidth,
        now: LinkInstant,
        reassembly: ReadReassembly,
    ) -> Option<(u16, oneshot::Receiver<ReadOutcome>)> {
        let range = width.range();
        let span = range.len();
        let start = inner.next;
        for step in 0..span {
            let tag = range.start + (start + step) % span;
            let Some(slot) = inner.slots.get_mut(tag) else { continue };
            let usable = match slot {
                Slot::Free => true,
                Slot::Quarantined { until } => *until <= now,
                Slot::Busy { .. } => false,
            };
            if usable {
                let (tx, rx) = oneshot::channel();
                *slot = Slot::Busy { reassembly, done: tx };
                inner.next = (start + step + 1) % span;
                return Some((tag as u16, rx));
            }
        }
        None
    }

    /// Completes when a tag may have been freed. Hold a [`TagTable::waiting`] guard and create
    /// (and `enable`) this before trying [`TagTable::allocate`] again, so that a tag freed in
    /// between is not missed; callers bound the wait with their own timeout.
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// Marks the caller as waiting for a freed tag until the guard drops. A tag freed after
    /// this is taken notifies [`TagTable::freed`]; one freed before it is seen by the next
    /// [`TagTable::allocate`] (the count is raised before that takes the lock, and read by the
    /// freeing side after it releases the lock).
    pub fn waiting(&self) -> TagWaiter<'_> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        TagWaiter { table: self }
    }

    fn notify_freed(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// The read on `tag` (whose outcome `read` would receive) timed out or was abandoned:
    /// quarantine it until `until`. Nothing happens if the read has already ended (completed,
    /// or aborted and its tag released by a link reset), since the tag may belong to a newer
    /// read by now.
    pub fn quarantine(&self, tag: u16, read: &mut oneshot::Receiver<ReadOutcome>, until: LinkInstant) {
        let mut inner = self.lock();
        // Senders leave their slot only under this lock, so an empty, open channel means the
        // slot still holds this read.
        if !matches!(read.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
            return;
        }
        if let Some(slot) = inner.slots.get_mut(usize::from(tag)) {
            if matches!(slot, Slot::Busy { .. }) {
                *slot = Slot::Quarantined { until };
            }
        }
    }

    /// Fails every outstanding read (reset, link down, shutdown); their tags are quarantined
    /// until `until` because their completions may still be on the way.
    pub fn abort_all(&self, until: LinkInstant) {
        let mut inner = self.lock();
        self.resets.fetch_add(1, Ordering::AcqRel);
        for slot in inner.slots.iter_mut() {
            if let Slot::Busy { .. } = slot {
                if let Slot::Busy { done, .. } = std::mem::replace(slot, Slot::Quarantined { until }) {
                    let _ = done.send(ReadOutcome::Aborted);
                }
            }
        }
        drop(inner);
        self.notify_freed();
    }

    /// Fails every outstanding read and frees every tag, quarantined ones included, at once:
    /// for a link reset (link down, hot reset), after which no completion for an earlier
    /// request can arrive.
    pub fn release_all(&self) {
        let mut inner = self.lock();
        self.resets.fetch_add(1, Ordering::AcqRel);
        for slot in inner.slots.iter_mut() {
            if let Slot::Busy { done, .. } = std::mem::replace(slot, Slot::Free) {
                let _ = done.send(ReadOutcome::Aborted);
            }
        }
        drop(inner);
        self.notify_freed();
    }

    /// Takes one completion from the link. Never blocks. `our_id` is the bridge's routing ID:
    /// completions routed to anyone else are unexpected.
    pub fn deliver(&self, tlp: &Tlp, our_id: RoutingId) {
        let Body::Completion(cpl) = &tlp.body else { return };
        let tag = usize::from(cpl.tag);
        if cpl.requester != our_id {
            Counters::inc(&self.counters.unexpected_completions);
            warn!(tlp = %tlp, our_id = %our_id, "completion for another requester dropped");
            return;
        }
        let mut inner = self.lock();
        let Some(slot) = inner.slots.get_mut(tag) else { return };
        let freed = match slot {
            Slot::Free => {
                Counters::inc(&self.counters.unexpected_completions);
                warn!(tlp = %tlp, "unexpected completion (tag not outstanding) dropped");
                false
            }
            Slot::Quarantined { .. } => {
                Counters::inc(&self.counters.late_completions);
                debug!(tlp = %tlp, "late completion for a timed-out tag dropped");
                if is_final(tlp, cpl) {
                    *slot = Slot::Free;
                    true
                } else {
                    false
                }
            }
            Slot::Busy { reassembly, .. } => match reassembly.accept(tlp) {
                Ok(Progress::More { .. }) => false,
                Ok(Progress::Done(data)) => {
                    if let Slot::Busy { done, .. } = std::mem::replace(slot, Slot::Free) {
                        let _ = done.send(ReadOutcome::Data(data));
                    }
                    true
                }
                Err(TlpError::Unsuccessful { status, .. }) => {
                    if let Slot::Busy { done, .. } = std::mem::replace(slot, Slot::Free) {
                        let _ = done.send(ReadOutcome::Status(status));
                    }
                    true
                }
                Err(e) => {
                    // A completion that breaks the rules is dropped; the read then times out.
                    Counters::inc(&self.counters.unexpected_completions);
                    warn!(tlp = %tlp, error = %e, "completion fails the reassembly checks; dropped");
                    false
                }
            },
        };
        drop(inner);
        if freed {
            self.notify_freed();
        }
    }

    /// Tags in use (busy or quarantined), for tests and diagnostics.
    pub fn in_use(&self) -> usize {
        self.lock().slots.iter().filter(|s| !matches!(s, Slot::Free)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tlp::completion::{MemoryRead, read_completions};
    use tlp::split::{LinkParams, RequestFields, memory_read_tlp};

    fn table() -> TagTable {
        TagTable::new(Arc::new(Counters::default()))
    }

    #[tokio::test]
    async fn completions_reassemble_and_free_the_tag() {
        let t = table();
        let me = RoutingId::new(1, 0, 0);
        let chunk = tlp::split::SplitChunk { address: 0x1003, len: 200 };
        let (tag, rx) =
            t.allocate(TagWidth::Eight, LinkInstant(0), ReadReassembly::for_chunk(&chunk).unwrap()).unwrap();
        let fields = RequestFields { requester: me, ..Default::default() };
        let request = memory_read_tlp(&fields, chunk, tag, 512).unwrap();
        let read = MemoryRead::from_tlp(&request).unwrap();
        let data: Vec<u8> = (0..200).map(|i| i as u8).collect();
        let link = LinkParams::new(128, 512, 64).unwrap();
        for cpl in read_completions(&read, RoutingId::new(0, 0, 0), &data, &link).unwrap() {
            t.deliver(&cpl, me);
        }
        assert_eq!(rx.await.unwrap(), ReadOutcome::Data(data));
        assert_eq!(t.in_use(), 0);
    }

    #[test]
    fn quarantined_tags_are_not_reused_until_expiry_and_8bit_mode_stays_below_256() {
        let t = table();
        let mut held = Vec::new();
        for _ in 0..256 {
            let r = ReadReassembly::new(0x1000, 4).unwrap();
            held.push(t.allocate(TagWidth::Eight, LinkInstant(0), r).unwrap());
        }
        assert!(held.iter().all(|(tag, _)| *tag < 256));
        assert!(t.allocate(TagWidth::Eight, LinkInstant(0), ReadReassembly::new(0, 4).unwrap()).is_none());
        let tag = held[0].0;
        t.quarantine(tag, &mut held[0].1, LinkInstant(100));
        assert!(t.allocate(TagWidth::Eight, LinkInstant(99), ReadReassembly::new(0, 4).unwrap()).is_none());
        let (again, _) =
            t.allocate(TagWidth::Eight, LinkInstant(100), ReadReassembly::new(0, 4).unwrap()).unwrap();
        assert_eq!(again, tag);
        let (ten, _) = t.allocate(TagWidth::Ten, LinkInstant(0), ReadReassembly::new(0, 4).unwrap()).unwrap();
        assert!(ten >= 256);
        // 5-bit mode: only tags 0..=31 count.
        t.quarantine(held[40].0, &mut held[40].1, LinkInstant(50));
        let five = |now| t.allocate(TagWidth::Five, LinkInstant(now), ReadReassembly::new(0, 4).unwrap());
        assert!(five(100).is_none(), "tag 40 is not a 5-bit tag");
        t.quarantine(held[1].0, &mut held[1].1, LinkInstant(50));
        assert_eq!(five(100).unwrap().0, held[1].0);
    }

    #[test]
    fn a_link_reset_frees_busy_and_quarantined_tags_and_a_stale_quarantine_spares_the_new_read() {
        let t = table();
        let read = || ReadReassembly::new(0x1000, 4).unwrap();
        let mut held: Vec<_> =
            (0..32).map(|_| t.allocate(TagWidth::Five, LinkInstant(0), read()).unwrap()).collect();
        let timed_out = held[0].0;
        t.quarantine(timed_out, &mut held[0].1, LinkInstant(1_000));
        assert_eq!(t.in_use(), 32);
        t.release_all();
        assert_eq!(t.in_use(), 0);
        for (_, rx) in held.iter_mut().skip(1) {
            assert_eq!(rx.try_recv().unwrap(), ReadOutcome::Aborted);
        }
        // Every 5-bit tag is usable at once, long before the quarantine would have ended.
        let mut again: Vec<_> =
            (0..32).map(|_| t.allocate(TagWidth::Five, LinkInstant(1), read()).unwrap()).collect();
        // The aborted read giving up on its tag late must not quarantine the newer read's tag.
        let (stale_tag, stale_rx) = &mut held[1];
        t.quarantine(*stale_tag, stale_rx, LinkInstant(1_000));
        assert_eq!(t.in_use(), 32);
        let owner = again.iter_mut().find(|(tag, _)| tag == stale_tag).unwrap();
        assert!(matches!(owner.1.try_recv(), Err(oneshot::error::TryRecvError::Empty)), "still busy");
    }

    #[test]
    fn a_dma_begun_before_a_reset_gets_no_tag_after_it() {
        let t = table();
        let read = || ReadReassembly::new(0x1000, 4).unwrap();
        let begun = t.resets();
        let (_, mut first) =
            t.allocate_since(begun, TagWidth::Five, LinkInstant(0), read()).unwrap().unwrap();
        t.release_all();
        assert_eq!(first.try_recv().unwrap(), ReadOutcome::Aborted);
        assert!(matches!(t.allocate_since(begun, TagWidth::Five, LinkInstant(0), read()), Err(TableReset)));
        assert_eq!(t.in_use(), 0, "the freed tags stay free for the next DMA");
        let after = t.resets();
        assert!(t.allocate_since(after, TagWidth::Five, LinkInstant(0), read()).unwrap().is_some());
        t.abort_all(LinkInstant(0));
        assert!(matches!(t.allocate_since(after, TagWidth::Five, LinkInstant(0), read()), Err(TableReset)));
    }
}
