//! Device → root port DMA: the [`DmaHandler`] the vfio-user client calls for DMA_READ and
//! DMA_WRITE. Reads become MRds (split by Max_Read_Request_Size and 4 KiB, one tag each, at most
//! `max_reads_per_dma` outstanding per DMA) whose completions the tag table reassembles; writes
//! become MWrs (split by Max_Payload_Size and 4 KiB), queued in order before the reply is sent,
//! which is what orders a later MSI behind them.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::debug;

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
        let (fields, link, width) = self.check_bus_master()?;
        let shared = &*self.shared;
        let mrrs = link.max_read_request_size();
        let mut chunks = memory_read_requests(address, len as u64, mrrs)
            .map_err(|_| DmaError::UnsupportedRequest)?
            .peekable();
        let mut data = Vec::with_capacity(len);
        let mut outstanding = Outstanding { shared, reads: VecDeque::new() };
        loop {
            while outstanding.reads.len() < shared.config.max_reads_per_dma {
                let Some(&chunk) = chunks.peek() else { break };
                let reassembly =
                    ReadReassembly::for_chunk(&chunk).map_err(|_| DmaError::UnsupportedRequest)?;
                let freed = shared.tags.freed();
                tokio::pin!(freed);
                freed.as_mut().enable();
                let now = shared.clock.now();
                match shared.tags.allocate(width, now, reassembly) {
                    Some((tag, rx)) => {
                        chunks.next();
                        outstanding.reads.push_back((tag, rx, now.saturating_add(shared.cpl_timeout)));
                        let request = memory_read_tlp(&fields, chunk, tag, mrrs)
                            .map_err(|_| DmaError::UnsupportedRequest)?;
                        shared.tx.send(&request).await.map_err(|_| DmaError::LinkDown)?;
                    }
                    None if outstanding.reads.is_empty() => {
                        // Every tag is busy with other DMAs: wait for one, bounded.
                        tokio::select! {
                            _ = freed => continue,
                            _ = shared.clock.sleep(shared.cpl_timeout) => {
                                Counters::inc(&shared.counters.completion_timeouts);
                                return Err(DmaError::CompletionTimeout);
                            }
                        }
                    }
                    None => break,
                }
            }
            let Some((tag, mut rx, deadline)) = outstanding.reads.pop_front() else { break };
            let outcome = tokio::select! {
                outcome = &mut rx => outcome.unwrap_or(ReadOutcome::Aborted),
                _ = shared.clock.sleep_until(deadline) => {
                    Counters::inc(&shared.counters.completion_timeouts);
                    shared.tags.quarantine(tag, &mut rx, shared.clock.now().saturating_add(shared.cpl_timeout));
                    debug!(tag, address, len, "completion timeout on a device DMA read");
                    return Err(DmaError::CompletionTimeout);
                }
            };
            match outcome {
                ReadOutcome::Data(bytes) => data.extend_from_slice(&bytes),
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
        }
        Counters::add(&shared.counters.dma_bytes_read, data.len() as u64);
        Ok(data)
    }

    async fn write(&self, address: u64, data: Vec<u8>) -> Result<(), DmaError> {
        let (fields, link, _) = self.check_bus_master()?;
        let writes = memory_write_tlps(fields, address, &data, link.max_payload_size())
            .map_err(|_| DmaError::UnsupportedRequest)?;
        for request in writes {
            self.shared.tx.send(&request).await.map_err(|_| DmaError::LinkDown)?;
        }
        Counters::add(&self.shared.counters.dma_bytes_written, data.len() as u64);
        Ok(())
    }
}

impl DmaHandler for DmaBridge {
    async fn dma_read(&self, address: u64, len: usize) -> Result<Vec<u8>, DmaError> {
        self.read(address, len).await
    }

    async fn dma_write(&self, address: u64, data: Vec<u8>) -> Result<(), DmaError> {
        self.write(address, data).await
    }
}
