//! What the root complex needs from the link to the bridge: a small trait, implemented by the
//! TCP [`SimulatorEnd`] and by the in-memory [`RootPortEnd`] (for tests without TCP).

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc::error::TryRecvError;
use transports::link::{LinkInput, LinkInstant, ReceivedTlp, RootPortEnd};

use crate::error::{Error, Result};
use crate::link::{SimMode, SimulatorEnd};

/// The root complex's side of a link, in simulated cycles.
pub trait RootPortIo: Send {
    /// The current simulated time in cycles.
    fn now(&self) -> u64;

    /// Sends one TLP (raw wire bytes) at the current time.
    fn send_tlp(&mut self, bytes: Vec<u8>) -> impl Future<Output = Result<()>> + Send;

    /// Sends several TLPs at the current time, in order; a link that can batches them into one
    /// write (the completions due in one step).
    fn send_tlps(&mut self, tlps: Vec<Vec<u8>>) -> impl Future<Output = Result<()>> + Send {
        async move {
            for bytes in tlps {
                self.send_tlp(bytes).await?;
            }
            Ok(())
        }
    }

    /// The next TLP the bridge sent, without waiting. An error once the link is gone.
    fn try_recv(&mut self) -> Result<Option<Vec<u8>>>;

    /// Moves simulated time to `cycle`. Lockstep: returns once the bridge has handled everything
    /// sent before (its responses are then already queued for `try_recv`).
    fn advance_to(&mut self, cycle: u64) -> impl Future<Output = Result<()>> + Send;

    /// Whether time advances only after the bridge acknowledges each step.
    fn lockstep(&self) -> bool;
}

impl RootPortIo for SimulatorEnd {
    fn now(&self) -> u64 {
        SimulatorEnd::now(self)
    }

    async fn send_tlp(&mut self, bytes: Vec<u8>) -> Result<()> {
        SimulatorEnd::send_tlp(self, &bytes).await
    }

    async fn send_tlps(&mut self, tlps: Vec<Vec<u8>>) -> Result<()> {
        SimulatorEnd::send_tlps(self, tlps.iter().map(Vec::as_slice)).await
    }

    fn try_recv(&mut self) -> Result<Option<Vec<u8>>> {
        // `RootPortIo` hands out owned `Vec`s (the other ports have them): one copy here.
        Ok(SimulatorEnd::try_recv(self)?.map(|tlp| Vec::from(tlp.bytes)))
    }

    async fn advance_to(&mut self, cycle: u64) -> Result<()> {
        SimulatorEnd::advance_to(self, cycle).await
    }

    fn lockstep(&self) -> bool {
        self.mode() == SimMode::Lockstep
    }
}

/// The in-memory root-port end of [`transports::link::memory_pair`] (simulated clock), driven
/// in cycles of `ps_per_cycle`. In lockstep, `advance_to` waits (up to `ack_timeout` of wall
/// time) until the engine side has counted every input it was sent as handled. This end drains
/// the bridge's TLPs only between steps, so the pair's capacity must hold every TLP the bridge
/// side sends within one step (otherwise the bridge side blocks and the step times out).
#[derive(Debug)]
pub struct MemoryRootPort {
    end: RootPortEnd,
    ps_per_cycle: u32,
    lockstep: bool,
    ack_timeout: Duration,
    now: u64,
    delivered: u64,
}

impl MemoryRootPort {
    pub fn new(end: RootPortEnd, ps_per_cycle: u32, lockstep: bool, ack_timeout: Duration) -> Result<Self> {
        if end.sim_clock.is_none() {
            return Err(Error::Rc {
                line: None,
                message: "the in-memory link must run on a simulated clock (MemoryClock::Simulated)".into(),
            });
        }
        if ps_per_cycle == 0 {
            return Err(Error::Rc { line: None, message: "picoseconds per cycle must be at least 1".into() });
        }
        Ok(MemoryRootPort { end, ps_per_cycle, lockstep, ack_timeout, now: 0, delivered: 0 })
    }

    fn instant(&self, cycle: u64) -> LinkInstant {
        LinkInstant::from_picos(cycle.saturating_mul(u64::from(self.ps_per_cycle)))
    }

    /// Sends a link event (counted like a TLP for lockstep).
    pub async fn send_event(&mut self, event: transports::link::LinkEvent) -> Result<()> {
        let time = self.instant(self.now);
        self.end
            .to_bridge
            .send(LinkInput::Event { event, time })
            .await
            .map_err(|_| Error::SimClosed("the bridge side of the in-memory link is gone".into()))?;
        self.delivered += 1;
        Ok(())
    }
}

impl RootPortIo for MemoryRootPort {
    fn now(&self) -> u64 {
        self.now
    }

    async fn send_tlp(&mut self, bytes: Vec<u8>) -> Result<()> {
        let time = self.instant(self.now);
        self.end
            .to_bridge
            .send(LinkInput::Tlp(ReceivedTlp { bytes: bytes.into(), time }))
            .await
            .map_err(|_| Error::SimClosed("the bridge side of the in-memory link is gone".into()))?;
        self.delivered += 1;
        Ok(())
    }

    fn try_recv(&mut self) -> Result<Option<Vec<u8>>> {
        match self.end.from_bridge.try_recv() {
            Ok(bytes) => Ok(Some(bytes)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => {
                Err(Error::SimClosed("the bridge side of the in-memory link is gone".into()))
            }
        }
    }

    async fn advance_to(&mut self, cycle: u64) -> Result<()> {
        self.now = self.now.max(cycle);
        let at = self.instant(self.now);
        if let Some(driver) = &self.end.sim_clock {
            driver.advance_to(at);
        }
        if self.lockstep {
            let delivered = self.delivered;
            let timeout = self.ack_timeout;
            tokio::time::timeout(timeout, self.end.progress.wait_for(delivered)).await.map_err(|_| {
                Error::SimTimeout {
                    what: format!("the bridge handling {delivered} inputs (lockstep step to cycle {cycle})"),
                    timeout,
                }
            })?;
        }
        Ok(())
    }

    fn lockstep(&self) -> bool {
        self.lockstep
    }
}
