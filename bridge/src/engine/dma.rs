//! Device → root port DMA: the [`DmaHandler`] the vfio-user client calls for DMA_READ and
//! DMA_WRITE. Reads become MRds (split by Max_Read_Request_Size and 4 KiB, one tag each, at most
//! `max_reads_per_dma` outstanding per DMA) whose completions the tag table reassembles; writes
//! become MWrs (split by Max_Payload_Size and 4 KiB), queued in order before the reply is sent,
//! which is what orders a later MSI behind them.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::{debug, trace};

use tlp::CplStatus;
use tlp::completion::ReadReassembly;
use tlp::split::{RequestFields, memory_read_requests, memory_read_tlp, memory_write_tlps};
use transports::link::LinkInstant;
use transports::vfio_user::{DmaError, DmaHandler};

use super::Shared;
use super::counters::Counters;
use super::tags::{ReadOutcome, TagWidth};

/// The engine's DMA handler; cheap to clone.
#[derive(Clone)]
pub struct DmaBridge {
    pub(crate) shared: Arc<Shared>,
}

/// Reads on the link that one DMA still waits for. Dropping it (the DMA failed, or the client
/// gave up on the handler) quarantines their tags, since their completions may still come.
struct Outstanding<'a> {
    shared: &'a Shared,
    reads: VecDeque<(u16, oneshot::Receiver<ReadOutcome>, LinkInstant)>,
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        let until = self.shared.clock.now().saturating_add(self.shared.cpl_timeout);
        for (tag, mut read, _) in self.reads.drain(..) {
            self.shared.tags.quarantine(tag, &mut read, until);
        }
    }
}

impl DmaBridge {
    fn check_bus_master(&self) -> Result<(RequestFields, tlp::split::LinkParams, TagWidth), DmaError> {
        let f = self.shared.function();
        if !f.bus_master() {
            Counters::inc(&self.shared.counters.dma_refused_bme);
            debug!("device DMA refused: Bus Master Enable is clear");
            return Err(DmaError::BusMasterDisabled);
        }
        Ok((RequestFields { requester: f.id, tc: 0, attr: tlp::Attr::default() }, f.link, f.tag_width()))
    }

    async fn read(&self, address: u64, len: usize) -> Result<Vec<u8>, DmaError> {
        let shared = &*self.shared;
        // Taken before the bus-master check: a reset after it must stop this DMA.
        let resets = shared.tags.resets();
        let (fields, link, width) = self.check_bus_master()?;
        let mrrs = link.max_read_request_size();
        let mut chunks = memory_read_requests(address, len as u64, mrrs)
            .map_err(|_| DmaError::UnsupportedRequest)?
            .peekable();
        // Allocated when the first chunk arrives, unless that chunk is the whole read.
        let mut data = Vec::new();
        let mut outstanding = Outstanding { shared, reads: VecDeque::new() };
        loop {
            while outstanding.reads.len() < shared.config.max_reads_per_dma {
                let Some(&chunk) = chunks.peek() else { break };
                let reassembly =
                    ReadReassembly::for_chunk(&chunk).map_err(|_| DmaError::UnsupportedRequest)?;
                let now = shared.clock.now();
                let (tag, rx) = match allocate(shared, resets, width, now, reassembly)? {
                    Some(allocated) => allocated,
                    None if outstanding.reads.is_empty() => {
                        // Every tag is busy with other DMAs: wait for one, bounded. Registered
                        // as a waiter before trying again, so a tag freed in between wakes us.
                        let _waiting = shared.tags.waiting();
                        let freed = shared.tags.freed();
                        tokio::pin!(freed);
                        freed.as_mut().enable();
                        let reassembly =
                            ReadReassembly::for_chunk(&chunk).map_err(|_| DmaError::UnsupportedRequest)?;
                        match allocate(shared, resets, width, now, reassembly)? {
                            Some(allocated) => allocated,
                            None => tokio::select! {
                                _ = freed => continue,
                                _ = shared.clock.sleep(shared.cpl_timeout) => {
                                    Counters::inc(&shared.counters.completion_timeouts);
                                    return Err(DmaError::CompletionTimeout);
                                }
                            },
                        }
                    }
                    None => break,
                };
                chunks.next();
                outstanding.reads.push_back((tag, rx, now.saturating_add(shared.cpl_timeout)));
                let request =
                    memory_read_tlp(&fields, chunk, tag, mrrs).map_err(|_| DmaError::UnsupportedRequest)?;
                shared.tx.send(&request).await.map_err(|_| DmaError::LinkDown)?;
            }
            let Some((tag, mut rx, deadline)) = outstanding.reads.pop_front() else { break };
            let outcome = match rx.try_recv() {
                // Already there: no timer to arm.
                Ok(outcome) => outcome,
                Err(oneshot::error::TryRecvError::Closed) => ReadOutcome::Aborted,
                Err(oneshot::error::TryRecvError::Empty) => tokio::select! {
                    outcome = &mut rx => outcome.unwrap_or(ReadOutcome::Aborted),
                    _ = shared.clock.sleep_until(deadline) => {
                        Counters::inc(&shared.counters.completion_timeouts);
                        let until = shared.clock.now().saturating_add(shared.cpl_timeout);
                        shared.tags.quarantine(tag, &mut rx, until);
                        debug!(tag, address, len, "completion timeout on a device DMA read");
                        return Err(DmaError::CompletionTimeout);
                    }
                },
            };
            take_outcome(shared, tag, outcome, &mut data, len)?;
            // Take every later read that has finished as well before issuing more MRds, so
            // that the next ones go to the link back to back (one write) rather than one per
            // wakeup. Chunks still arrive in address order: only the front is taken.
            while let Some((_, rx, _)) = outstanding.reads.front_mut() {
                let outcome = match rx.try_recv() {
                    Ok(outcome) => outcome,
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => ReadOutcome::Aborted,
                };
                let Some((tag, _, _)) = outstanding.reads.pop_front() else { break };
                take_outcome(shared, tag, outcome, &mut data, len)?;
            }
        }
        Counters::add(&shared.counters.dma_bytes_read, data.len() as u64);
        Ok(data)
    }

    async fn write(&self, address: u64, data: bytes::Bytes) -> Result<(), DmaError> {
        let resets = self.shared.tags.resets();
        let (fields, link, _) = self.check_bus_master()?;
        let mut writes = memory_write_tlps(fields, address, &data, link.max_payload_size())
            .map_err(|_| DmaError::UnsupportedRequest)?;
        // Emitted straight from the data: no Tlp with its own copy of each payload.
        while let Some(request) = writes.next_bytes() {
            // The rest of a write a reset interrupted must not reach the host after it.
            if self.shared.tags.resets() != resets {
                return Err(DmaError::LinkDown);
            }
            trace!(address, len = request.len(), "tx MWr of a device DMA write");
            self.shared.tx.send_encoded(request, "MWr", false).await.map_err(|_| DmaError::LinkDown)?;
        }
        Counters::add(&self.shared.counters.dma_bytes_written, data.len() as u64);
        Ok(())
    }
}

/// A tag for the next read of a DMA that began at reset count `resets`. A reset since then
/// aborted the DMA's reads: it must issue no more of them (`TagTable::allocate_since`).
fn allocate(
    shared: &Shared,
    resets: u64,
    width: TagWidth,
    now: LinkInstant,
    reassembly: ReadReassembly,
) -> Result<Option<(u16, oneshot::Receiver<ReadOutcome>)>, DmaError> {
    shared.tags.allocate_since(resets, width, now, reassembly).map_err(|_| DmaError::LinkDown)
}

/// Appends one finished read's data to the DMA's `data` (of `len` bytes in all), or turns its
/// failure into the DMA's error.
fn take_outcome(
    shared: &Shared,
    tag: u16,
    outcome: ReadOutcome,
    data: &mut Vec<u8>,
    len: usize,
) -> Result<(), DmaError> {
    match outcome {
        // A DMA of one chunk (up to MRRS bytes) hands the reassembled buffer on as it is.
        ReadOutcome::Data(bytes) if data.is_empty() && bytes.len() == len => *data = bytes,
        ReadOutcome::Data(bytes) => {
            data.reserve(len.saturating_sub(data.len()));
            data.extend_from_slice(&bytes);
        }
        ReadOutcome::Status(status) => {
            Counters::inc(&shared.counters.dma_failed_status);
            debug!(tag, status = status.name(), "device DMA read failed on the host");
            return Err(if status == CplStatus::Ur {
                DmaError::UnsupportedRequest
            } else {
                DmaError::CompleterAbort
            });
        }
        ReadOutcome::Aborted => return Err(DmaError::LinkDown),
    }
    Ok(())
}

impl DmaHandler for DmaBridge {
    async fn dma_read(&self, address: u64, len: usize) -> Result<Vec<u8>, DmaError> {
        self.read(address, len).await
    }

    async fn dma_write(&self, address: u64, data: bytes::Bytes) -> Result<(), DmaError> {
        self.write(address, data).await
    }
}
