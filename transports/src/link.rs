//! The link seam: what the bridge engine sees of a root port, whatever carries its TLPs.
//!
//! A [`Link`] is a pair of bounded channels plus a clock. The link implementation (in-memory pair,
//! co-simulation over TCP, FPGA serial/UDP/stream) owns the I/O task that fills `rx` with
//! [`LinkInput`]s and drains `tx`; the engine never sees sockets. TLPs cross the seam as raw bytes
//! (big-endian DWs, exactly as on the wire) so that capture sees what the wire saw and a malformed
//! TLP reaches the engine's validator intact.
//!
//! Time is the link's own: wall time for hardware links, simulated time for simulators. Both are
//! expressed as [`LinkInstant`]s in picoseconds since the link started, so the engine's timeouts are
//! plain [`Duration`]s on either clock — on a simulator link a 50 ms completion timeout means 50 ms
//! of *simulated* time, however long the simulator takes to get there.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

/// A point in time on a link's clock: picoseconds since the link started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkInstant(pub u64);

impl LinkInstant {
    pub const ZERO: LinkInstant = LinkInstant(0);

    pub fn from_picos(ps: u64) -> Self {
        LinkInstant(ps)
    }

    pub fn as_picos(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at the end of time (≈ 213 days of picoseconds).
    pub fn saturating_add(self, d: Duration) -> Self {
        let ps = u64::try_from(d.as_nanos().saturating_mul(1000)).unwrap_or(u64::MAX);
        LinkInstant(self.0.saturating_add(ps))
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: LinkInstant) -> Duration {
        let ps = self.0.saturating_sub(earlier.0);
        Duration::new(ps / 1_000_000_000_000, ((ps % 1_000_000_000_000) / 1000) as u32)
    }
}

impl fmt::Display for LinkInstant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0 / 1000;
        write!(f, "{}.{:03}µs", ns / 1000, ns % 1000)
    }
}

/// The clock a link's timestamps and the engine's timeouts count in.
#[derive(Clone, Debug)]
pub enum LinkClock {
    /// Wall time, from a start instant (tokio's clock, so tests may pause it).
    Wall { start: tokio::time::Instant },
    /// Simulated time, advanced by the simulator through a [`SimClockDriver`].
    Simulated(watch::Receiver<u64>),
}

impl LinkClock {
    /// A wall clock starting now.
    pub fn wall() -> Self {
        LinkClock::Wall { start: tokio::time::Instant::now() }
    }

    /// A simulated clock at time zero and the driver that advances it.
    pub fn simulated() -> (Self, SimClockDriver) {
        let (tx, rx) = watch::channel(0);
        (LinkClock::Simulated(rx), SimClockDriver { tx })
    }

    pub fn is_simulated(&self) -> bool {
        matches!(self, LinkClock::Simulated(_))
    }

    pub fn now(&self) -> LinkInstant {
        match self {
            LinkClock::Wall { start } => LinkInstant::ZERO
                .saturating_add(tokio::time::Instant::now().saturating_duration_since(*start)),
            LinkClock::Simulated(rx) => LinkInstant(*rx.borrow()),
        }
    }

    /// Completes once the clock reads `deadline` or later. On a simulated clock whose driver is
    /// gone (the simulator disconnected) time stops, so this never completes: callers pair it with
    /// their own cancellation (the link's `rx` closing), as every wait in the engine does.
    pub fn sleep_until(&self, deadline: LinkInstant) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        match self {
            LinkClock::Wall { start } => {
                let ps = deadline.as_picos();
                let at =
                    *start + Duration::new(ps / 1_000_000_000_000, ((ps % 1_000_000_000_000) / 1000) as u32);
                Box::pin(tokio::time::sleep_until(at))
            }
            LinkClock::Simulated(rx) => {
                let mut rx = rx.clone();
                Box::pin(async move {
                    if rx.wait_for(|now| *now >= deadline.as_picos()).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                })
            }
        }
    }

    /// `sleep_until(now + d)`.
    pub fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.sleep_until(self.now().saturating_add(d))
    }
}

/// The writing end of a simulated clock, held by the simulator side of a link.
#[derive(Debug)]
pub struct SimClockDriver {
    tx: watch::Sender<u64>,
}

impl SimClockDriver {
    /// Moves simulated time forward to `t`. Time never runs backwards: an earlier `t` is ignored
    /// and reported as `false`.
    pub fn advance_to(&self, t: LinkInstant) -> bool {
        self.tx.send_if_modified(|now| {
            if t.as_picos() > *now {
                *now = t.as_picos();
                true
            } else {
                false
            }
        })
    }

    pub fn now(&self) -> LinkInstant {
        LinkInstant(*self.tx.borrow())
    }
}

/// Something that happened to the link itself rather than a TLP on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The link trained (or the simulator/FPGA connected and finished its hello).
    Up,
    /// The link went down; TLPs in flight on it are lost.
    Down,
    /// The root port signalled a hot reset (secondary bus reset).
    HotReset,
}

/// One TLP as received, with the link-clock time at which it arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedTlp {
    /// The TLP's bytes; a link may hand out a slice of its receive buffer (no copy per TLP).
    pub bytes: Bytes,
    pub time: LinkInstant,
}

/// What a link delivers to the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkInput {
    Tlp(ReceivedTlp),
    Event { event: LinkEvent, time: LinkInstant },
}

/// Observes the TLPs a link sends again below the transaction layer (a data-link replay after
/// a NAK or a replay timeout), so that a capture can record each resend with its
/// retransmitted flag. Links that never retransmit never report; without an observer a report
/// costs one atomic load.
#[derive(Clone, Default)]
pub struct RetransmitTap(Arc<std::sync::OnceLock<RetransmitObserver>>);

type RetransmitObserver = Box<dyn Fn(&[u8], LinkInstant) + Send + Sync>;

impl RetransmitTap {
    /// Sets the observer; `false` if one was set already (the first stays).
    pub fn observe(&self, observer: impl Fn(&[u8], LinkInstant) + Send + Sync + 'static) -> bool {
        self.0.set(Box::new(observer)).is_ok()
    }

    /// The link resent `tlp` at `time` (its clock).
    pub fn report(&self, tlp: &[u8], time: LinkInstant) {
        if let Some(observer) = self.0.get() {
            observer(tlp, time);
        }
    }
}

impl fmt::Debug for RetransmitTap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetransmitTap").field("observed", &self.0.get().is_some()).finish()
    }
}

/// Static facts about a link, for logs and capture metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Short kind, e.g. `memory`, `sim`, `serial`, `nettlp`, `stream`.
    pub kind: String,
    /// Human-readable description: the address or device the link uses.
    pub description: String,
}

/// How many [`LinkInput`]s the engine has fully handled: a TLP is handled once it has been answered,
/// dropped, or handed to the device (a request waiting on the device counts as handled); an event
/// once its effects have been applied. Every input is counted exactly once, in any order.
///
/// Lockstep co-simulation needs this: the simulator may only advance time once every TLP it sent
/// before has been handled, so the link implementation waits on [`LinkProgress::wait_for`] before
/// acknowledging a time step.
///
/// The engine counts every input, but only a lockstep link waits, so counting is one atomic add
/// plus one atomic load; the waiters' [`Notify`] is signalled only while a waiter is registered.
#[derive(Clone, Debug)]
pub struct LinkProgress {
    shared: Arc<ProgressShared>,
}

#[derive(Debug, Default)]
struct ProgressShared {
    handled: AtomicU64,
    /// Waiters registered in [`LinkProgress::wait_for`] (each with its `Notified` already enabled).
    waiters: AtomicUsize,
    notify: Notify,
}

/// Unregisters a waiter however its wait ends (completion or cancellation).
struct WaiterGuard<'a>(&'a AtomicUsize);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LinkProgress {
    pub fn new() -> Self {
        LinkProgress { shared: Arc::new(ProgressShared::default()) }
    }

    /// Records that one more input has been handled.
    pub fn handled_one(&self) {
        // SeqCst pairs with `wait_for`: either this load sees the waiter registered (and wakes
        // it), or the waiter's re-check after registering sees this count.
        self.shared.handled.fetch_add(1, Ordering::SeqCst);
        if self.shared.waiters.load(Ordering::SeqCst) > 0 {
            self.shared.notify.notify_waiters();
        }
    }

    pub fn handled(&self) -> u64 {
        self.shared.handled.load(Ordering::SeqCst)
    }

    /// Completes once at least `count` inputs have been handled. Cancel-safe; callers bound it
    /// with their own timeout (the engine may be gone and never count again).
    pub async fn wait_for(&self, count: u64) {
        let shared = &*self.shared;
        loop {
            if shared.handled.load(Ordering::SeqCst) >= count {
                return;
            }
            // Register, re-check, then wait: no wake-up is lost between the check and the wait.
            let notified = shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            shared.waiters.fetch_add(1, Ordering::SeqCst);
            let _registered = WaiterGuard(&shared.waiters);
            if shared.handled.load(Ordering::SeqCst) >= count {
                return;
            }
            notified.await;
        }
    }
}

impl Default for LinkProgress {
    fn default() -> Self {
        Self::new()
    }
}

/// The engine's view of a root-port link.
///
/// Dropping a `Link` aborts the I/O task the implementation attached with [`Link::with_task`], so no
/// task outlives its link. `rx` closing means the link is gone for good (the implementation exits);
/// a link that can come back reports [`LinkEvent::Down`] and later [`LinkEvent::Up`] instead.
pub struct Link {
    pub info: LinkInfo,
    pub clock: LinkClock,
    /// TLPs and events from the root port. Bounded by the implementation.
    pub rx: mpsc::Receiver<LinkInput>,
    /// TLPs to the root port (raw bytes). Bounded: a full queue is back-pressure from the link.
    pub tx: mpsc::Sender<Vec<u8>>,
    /// The engine reports each handled input here (see [`LinkProgress`]).
    pub progress: LinkProgress,
    /// TLPs the link resends by itself (see [`RetransmitTap`]).
    pub retransmits: RetransmitTap,
    tasks: Vec<JoinHandle<()>>,
}

impl Link {
    pub fn new(
        info: LinkInfo,
        clock: LinkClock,
        rx: mpsc::Receiver<LinkInput>,
        tx: mpsc::Sender<Vec<u8>>,
    ) -> Self {
        Link {
            info,
            clock,
            rx,
            tx,
            progress: LinkProgress::new(),
            retransmits: RetransmitTap::default(),
            tasks: Vec::new(),
        }
    }

    /// Uses `tap` (which the link implementation already reports to) for [`Link::retransmits`].
    pub fn with_retransmit_tap(mut self, tap: RetransmitTap) -> Self {
        self.retransmits = tap;
        self
    }

    /// Uses `progress` (whose receivers the link implementation already holds) instead of a fresh
    /// counter.
    pub fn with_progress(mut self, progress: LinkProgress) -> Self {
        self.progress = progress;
        self
    }

    /// Attaches an I/O task that the link owns: it is aborted when the link is dropped.
    pub fn with_task(mut self, task: JoinHandle<()>) -> Self {
        self.tasks.push(task);
        self
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link").field("info", &self.info).field("clock", &self.clock).finish_non_exhaustive()
    }
}

/// The root-port end of an in-memory link: what a test (or an in-process simulator) uses to play
/// the root port.
#[derive(Debug)]
pub struct RootPortEnd {
    /// Send TLPs and events to the bridge.
    pub to_bridge: mpsc::Sender<LinkInput>,
    /// TLPs the bridge sent.
    pub from_bridge: mpsc::Receiver<Vec<u8>>,
    /// Present when the link runs on simulated time.
    pub sim_clock: Option<SimClockDriver>,
    /// How many inputs the engine has handled (see [`LinkProgress`]).
    pub progress: LinkProgress,
    clock: LinkClock,
}

impl RootPortEnd {
    /// The time a TLP sent now would carry.
    pub fn now(&self) -> LinkInstant {
        self.clock.now()
    }

    /// Sends one TLP to the bridge, stamped with the current link time.
    pub async fn send_tlp(&self, bytes: Vec<u8>) -> Result<(), mpsc::error::SendError<LinkInput>> {
        let time = self.now();
        self.to_bridge.send(LinkInput::Tlp(ReceivedTlp { bytes: bytes.into(), time })).await
    }

    /// Sends a link event to the bridge.
    pub async fn send_event(&self, event: LinkEvent) -> Result<(), mpsc::error::SendError<LinkInput>> {
        let time = self.now();
        self.to_bridge.send(LinkInput::Event { event, time }).await
    }
}

/// Which clock an in-memory link runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryClock {
    Wall,
    Simulated,
}

/// An in-memory link: the bridge's [`Link`] and the [`RootPortEnd`] a test drives, joined by bounded
/// channels of `capacity` entries each way.
pub fn memory_pair(clock: MemoryClock, capacity: usize) -> (Link, RootPortEnd) {
    let capacity = capacity.max(1);
    let (to_bridge, rx) = mpsc::channel(capacity);
    let (tx, from_bridge) = mpsc::channel(capacity);
    let (clock, sim_clock) = match clock {
        MemoryClock::Wall => (LinkClock::wall(), None),
        MemoryClock::Simulated => {
            let (clock, driver) = LinkClock::simulated();
            (clock, Some(driver))
        }
    };
    let info = LinkInfo { kind: "memory".into(), description: "in-memory link".into() };
    let progress = LinkProgress::new();
    let link = Link::new(info, clock.clone(), rx, tx).with_progress(progress.clone());
    (link, RootPortEnd { to_bridge, from_bridge, sim_clock, progress, clock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instant_arithmetic_round_trips_durations() {
        let t = LinkInstant::ZERO.saturating_add(Duration::from_micros(1500));
        assert_eq!(t.as_picos(), 1_500_000_000);
        assert_eq!(t.saturating_duration_since(LinkInstant::ZERO), Duration::from_micros(1500));
        assert_eq!(LinkInstant::ZERO.saturating_duration_since(t), Duration::ZERO);
        assert_eq!(LinkInstant(u64::MAX).saturating_add(Duration::from_secs(1)), LinkInstant(u64::MAX));
        assert_eq!(t.to_string(), "1500.000µs");
    }

    #[tokio::test]
    async fn simulated_sleep_waits_for_simulated_time_not_wall_time() {
        let (clock, driver) = LinkClock::simulated();
        let sleeper = tokio::spawn(clock.sleep(Duration::from_nanos(100)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sleeper.is_finished(), "no simulated time passed, the sleep must still be pending");
        assert!(driver.advance_to(LinkInstant(50_000)));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(!sleeper.is_finished(), "50 ns of 100 ns passed");
        assert!(driver.advance_to(LinkInstant(100_000)));
        tokio::time::timeout(Duration::from_secs(5), sleeper).await.unwrap().unwrap();
        assert_eq!(clock.now(), LinkInstant(100_000));
    }

    #[test]
    fn simulated_time_never_runs_backwards() {
        let (clock, driver) = LinkClock::simulated();
        assert!(driver.advance_to(LinkInstant(10)));
        assert!(!driver.advance_to(LinkInstant(5)));
        assert_eq!(clock.now(), LinkInstant(10));
    }

    #[tokio::test(start_paused = true)]
    async fn wall_sleep_follows_tokio_time() {
        let clock = LinkClock::wall();
        let before = clock.now();
        clock.sleep(Duration::from_millis(50)).await;
        assert!(clock.now().saturating_duration_since(before) >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn memory_pair_carries_tlps_and_events_both_ways() {
        let (mut link, mut rp) = memory_pair(MemoryClock::Simulated, 4);
        rp.sim_clock.as_ref().unwrap().advance_to(LinkInstant(7));
        rp.send_tlp(vec![0, 0, 0, 1]).await.unwrap();
        rp.send_event(LinkEvent::HotReset).await.unwrap();
        assert_eq!(
            link.rx.recv().await,
            Some(LinkInput::Tlp(ReceivedTlp { bytes: vec![0, 0, 0, 1].into(), time: LinkInstant(7) }))
        );
        assert_eq!(
            link.rx.recv().await,
            Some(LinkInput::Event { event: LinkEvent::HotReset, time: LinkInstant(7) })
        );
        link.tx.send(vec![1, 2, 3, 4]).await.unwrap();
        assert_eq!(rp.from_bridge.recv().await, Some(vec![1, 2, 3, 4]));
    }

    #[tokio::test]
    async fn progress_reported_by_the_engine_reaches_the_root_port_end() {
        let (link, rp) = memory_pair(MemoryClock::Simulated, 1);
        let waiter = {
            let progress = rp.progress.clone();
            tokio::spawn(async move { progress.wait_for(2).await })
        };
        link.progress.handled_one();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one input of two handled");
        link.progress.handled_one();
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(rp.progress.handled(), 2);
        // Already reached: completes without any further count.
        tokio::time::timeout(Duration::from_secs(5), rp.progress.wait_for(2)).await.unwrap();
    }

    #[test]
    fn progress_wakes_every_waiter_across_threads_without_losing_one() {
        // Counter and waiters on different threads, racing the register/re-check window many
        // times: a lost wake-up would leave a waiter hanging past its timeout.
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let progress = LinkProgress::new();
            for round in 1..=2000u64 {
                let waiter = {
                    let progress = progress.clone();
                    tokio::spawn(async move { progress.wait_for(round).await })
                };
                let counter = {
                    let progress = progress.clone();
                    tokio::spawn(async move { progress.handled_one() })
                };
                counter.await.unwrap();
                tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
            }
            assert_eq!(progress.handled(), 2000);
            assert_eq!(progress.shared.waiters.load(Ordering::SeqCst), 0, "every waiter unregistered");
        });
    }

    #[tokio::test]
    async fn a_cancelled_progress_wait_unregisters() {
        let progress = LinkProgress::new();
        assert!(tokio::time::timeout(Duration::from_millis(10), progress.wait_for(1)).await.is_err());
        assert_eq!(progress.shared.waiters.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn dropping_the_link_aborts_its_task() {
        let (link, _rp) = memory_pair(MemoryClock::Wall, 1);
        let task = tokio::spawn(std::future::pending::<()>());
        let abort = task.abort_handle();
        let link = link.with_task(task);
        drop(link);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(abort.is_finished());
    }
}
