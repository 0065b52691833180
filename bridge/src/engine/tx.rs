//! The one outgoing TLP queue: every producer (completions, DMA requests, interrupts, UR/CRS)
//! sends through [`TxQueue`], which emits the bytes, counts the kind and hands them to the link's
//! bounded `tx` channel (a full channel is back-pressure from the link). Capture attaches here.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::trace;

use transports::link::LinkClock;

use super::counters::Counters;
use crate::capture::{CaptureHandle, Direction, TlpFlags};

/// The link went away; nothing can be sent any more. A marker the callers act on (stop
/// sending), never shown to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxClosed;

/// Cheap to clone; every clone feeds the same link queue, in call order per caller.
#[derive(Clone, Debug)]
pub struct TxQueue {
    link: mpsc::Sender<Vec<u8>>,
    counters: Arc<Counters>,
    /// Outgoing TLPs are recorded when queued, stamped with the link's clock.
    capture: Option<(CaptureHandle, LinkClock)>,
}

impl TxQueue {
    pub fn new(link: mpsc::Sender<Vec<u8>>, counters: Arc<Counters>) -> Self {
        TxQueue { link, counters, capture: None }
    }

    /// Records every TLP sent from now on (when `capture` is set).
    pub fn with_capture(mut self, capture: Option<CaptureHandle>, clock: LinkClock) -> Self {
        self.capture = capture.map(|c| (c, clock));
        self
    }

    /// Queues one TLP, waiting while the link's queue is full.
    pub async fn send(&self, tlp: &tlp::Tlp) -> Result<(), TxClosed> {
        trace!(tlp = %tlp, "tx");
        self.queue(tlp.to_bytes(), tlp.kind_name(), tlp.ep).await
    }

    /// Queues one TLP already emitted as `bytes` (a valid TLP of kind `kind`, as
    /// [`tlp::Tlp::kind_name`] names it; `poisoned` when EP is set).
    pub async fn send_encoded(
        &self,
        bytes: Vec<u8>,
        kind: &'static str,
        poisoned: bool,
    ) -> Result<(), TxClosed> {
        trace!(kind, len = bytes.len(), "tx");
        self.queue(bytes, kind, poisoned).await
    }

    async fn queue(&self, bytes: Vec<u8>, kind: &'static str, poisoned: bool) -> Result<(), TxClosed> {
        if let Some((capture, clock)) = &self.capture {
            let flags = TlpFlags { poisoned, ..TlpFlags::default() };
            capture.tlp(Direction::Outbound, clock.now(), flags, &bytes);
        }
        self.link.send(bytes).await.map_err(|_| TxClosed)?;
        self.counters.count_out(kind);
        Ok(())
    }
}
