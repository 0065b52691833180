//! The bridge end of a sim link: a [`Link`] whose clock the simulator drives.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use transports::link::{
    Link, LinkClock, LinkEvent, LinkInfo, LinkInput, LinkInstant, LinkProgress, ReceivedTlp, SimClockDriver,
};

use super::wire::{self, Hello, Message, Role, SimMode};
use super::{
    FrameReader, HelloParams, SimListener, error_code_for, handshake, ticks_to_picos, write_message,
};
use crate::error::{Error, Result};

/// How the bridge side of a sim link is set up.
#[derive(Clone, Copy, Debug)]
pub struct BridgeConfig {
    /// What the bridge states in its HELLO (and requires of the simulator's).
    pub hello: HelloParams,
    /// Longest wait for a TCP connection to a listening simulator.
    pub connect_timeout: Duration,
    /// Longest wait for the simulator's HELLO after connecting.
    pub hello_timeout: Duration,
    /// Capacity of the link's `rx` and `tx` queues.
    pub capacity: usize,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            hello: HelloParams {
                mode: SimMode::FreeRunning,
                ps_per_tick: wire::ANY_TICK,
                link: tlp::split::LinkParams::DEFAULT,
                tag_flags: wire::hello_flags::EXTENDED_TAG,
                link_latency_ticks: wire::ANY_LATENCY,
            },
            connect_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            capacity: 256,
        }
    }
}

/// A simulator session whose hello exchange succeeded.
pub(super) struct Session {
    reader: FrameReader,
    write: OwnedWriteHalf,
    peer: Hello,
    ps_per_tick: u32,
    peer_addr: String,
}

/// Accepts-side and connect-side common step: the hello exchange on a fresh connection.
async fn hello(stream: TcpStream, config: &BridgeConfig) -> Result<Session> {
    let peer_addr = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "unknown peer".into());
    let (read, mut write) = stream.into_split();
    let mut reader = FrameReader::new(read);
    let ours = config.hello.hello(Role::Bridge);
    let peer = handshake(&mut write, &mut reader, &ours, config.hello_timeout).await?;
    let ps_per_tick = ours.agreed_ps_per_tick(&peer);
    Ok(Session { reader, write, peer, ps_per_tick, peer_addr })
}

/// Hello exchange on a fresh connection, then the link and the task that serves it. With a
/// `listener` the link outlives the simulator: a session that ends without CLOSE reports
/// [`LinkEvent::Down`], the listener accepts the next simulator (full hello again) and the link
/// reports [`LinkEvent::Up`]. Without one, the first session's end closes the link.
pub(super) async fn start(
    stream: TcpStream,
    config: &BridgeConfig,
    listener: Option<SimListener>,
) -> Result<Link> {
    let first = hello(stream, config).await?;
    let capacity = config.capacity.max(1);
    let (to_engine, rx) = mpsc::channel(capacity);
    let (tx, from_engine) = mpsc::channel(capacity);
    let (clock, driver) = LinkClock::simulated();
    let progress = LinkProgress::new();
    let listening = listener.as_ref().and_then(|l| l.local_addr().ok());
    let info = LinkInfo {
        kind: "sim".into(),
        description: format!(
            "sim link with {} ({}, {} ps/tick, MPS {} MRRS {} RCB {}){}",
            first.peer_addr,
            first.peer.mode,
            first.ps_per_tick,
            first.peer.mps,
            first.peer.mrrs,
            first.peer.rcb,
            listening.map(|a| format!("; accepts the next simulator on {a}")).unwrap_or_default()
        ),
    };
    let sessions = Sessions {
        config: *config,
        listener,
        to_engine,
        from_engine,
        driver,
        progress: progress.clone(),
        delivered: 0,
        dropped: 0,
    };
    let task = tokio::spawn(sessions.run(first));
    Ok(Link::new(info, clock, rx, tx).with_progress(progress).with_task(task))
}

/// Most bytes of outgoing frames gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;
/// Requests from the reader to the writer: at most one acknowledgement is outstanding, plus the
/// final close or error.
const CONTROL_QUEUE: usize = 4;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// What the reader asks the writer to send.
#[derive(Debug)]
enum Control {
    /// Lockstep: acknowledge the step to `time` once the engine has handled `after` inputs
    /// (and after the TLPs it queued meanwhile).
    Ack { time: u64, after: u64 },
    /// The simulator closed orderly: answer CLOSE and stop.
    Close,
    /// Tell the simulator why the link is failing, then stop.
    Fail(Message),
    /// The simulator reported an error and is gone: stop without a word.
    Stop,
}

/// How a simulator session ended.
#[derive(Debug, PartialEq, Eq)]
enum SessionEnd {
    /// The simulator sent CLOSE: the link ends.
    Closed,
    /// The engine dropped the link's `rx` or `tx`: the link ends.
    EngineGone,
    /// The simulator went away without CLOSE (TCP drop, ERROR, broken protocol): a listening
    /// link waits for the next simulator.
    Lost,
}

/// The link's one task: serves simulator sessions one after another, owning the engine's ends of
/// the queues, the clock driver and the counters that span sessions.
struct Sessions {
    config: BridgeConfig,
    listener: Option<SimListener>,
    to_engine: mpsc::Sender<LinkInput>,
    from_engine: mpsc::Receiver<Vec<u8>>,
    driver: SimClockDriver,
    progress: LinkProgress,
    /// Inputs handed to the engine so far, over all sessions (TLPs and events): lockstep
    /// acknowledgements wait for the engine's [`LinkProgress`] to reach it.
    delivered: u64,
    /// TLPs from the engine dropped because no simulator could take them, over all sessions.
    dropped: u64,
}

impl Sessions {
    async fn run(mut self, first: Session) {
        let mut session = first;
        let mut number = 1u64;
        loop {
            let end = self.serve(session).await;
            // The link-clock instant where this session stopped is where the next one's tick 0 lies.
            let down = LinkInput::Event { event: LinkEvent::Down, time: self.driver.now() };
            match end {
                SessionEnd::EngineGone => {
                    tracing::info!(session = number, "sim link closed: the engine is gone");
                    return;
                }
                SessionEnd::Closed => {
                    tracing::info!(session = number, "sim link closed by the simulator (CLOSE)");
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.to_engine.send(down)).await;
                    return;
                }
                SessionEnd::Lost => {}
            }
            if self.listener.is_none() {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.to_engine.send(down)).await;
                return;
            }
            if !self.deliver_draining(down).await {
                return;
            }
            let dropped_before = self.dropped;
            tracing::warn!(session = number, "sim link down: waiting for the next simulator");
            let Some(next) = self.next_session().await else {
                tracing::info!("sim link closed: the engine is gone");
                return;
            };
            number += 1;
            tracing::info!(
                session = number,
                peer = %next.peer_addr,
                base = %self.driver.now(),
                dropped_while_down = self.dropped - dropped_before,
                dropped_total = self.dropped,
                "sim link up again: new simulator session"
            );
            session = next;
        }
    }

    /// Delivers `input` while discarding (and counting) what the engine sends meanwhile, so that
    /// neither side blocks on a full queue. `false` when the engine is gone.
    async fn deliver_draining(&mut self, input: LinkInput) -> bool {
        loop {
            tokio::select! {
                permit = self.to_engine.reserve() => {
                    let Ok(permit) = permit else { return false };
                    permit.send(input);
                    self.delivered += 1;
                    return true;
                }
                bytes = self.from_engine.recv() => match bytes {
                    Some(_) => self.dropped += 1,
                    None => return false,
                },
            }
        }
    }

    /// Accepts simulators until one completes the hello, dropping (and counting) the engine's TLPs
    /// meanwhile. A simulator whose hello fails is told why and the wait goes on. `None` when the
    /// engine is gone.
    async fn next_session(&mut self) -> Option<Session> {
        let listener = self.listener.as_ref()?;
        loop {
            let config = &self.config;
            let attempt = async move {
                // Accepting failed (`true`: pause before retrying) or the hello did (`false`).
                let stream = listener.accept(None).await.map_err(|e| (true, e))?;
                hello(stream, config).await.map_err(|e| (false, e))
            };
            tokio::pin!(attempt);
            let result = loop {
                tokio::select! {
                    result = &mut attempt => break result,
                    bytes = self.from_engine.recv() => match bytes {
                        Some(bytes) => {
                            self.dropped += 1;
                            tracing::debug!(len = bytes.len(), dropped = self.dropped, "sim link down: TLP dropped");
                        }
                        None => return None,
                    },
                }
            };
            match result {
                Ok(session) => return Some(session),
                Err((true, e)) => {
                    tracing::warn!(error = %e, "sim link: accepting a simulator failed; retrying");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
                Err((false, e)) => {
                    tracing::warn!(error = %e, "sim link: a simulator's hello failed; still listening")
                }
            }
        }
    }

    /// Runs one session: the reader and the writer side by side, until both have stopped.
    async fn serve(&mut self, session: Session) -> SessionEnd {
        let Session { reader, write, peer, ps_per_tick, .. } = session;
        let (to_writer, control) = mpsc::channel(CONTROL_QUEUE);
        let now_ticks = Arc::new(AtomicU64::new(0));
        let ack_pending = Arc::new(AtomicBool::new(false));
        let inbound = Inbound {
            reader,
            to_engine: &self.to_engine,
            to_writer,
            driver: &self.driver,
            mode: peer.mode,
            ps_per_tick,
            base_ps: self.driver.now().as_picos(),
            now_ticks: now_ticks.clone(),
            ack_pending: ack_pending.clone(),
            delivered: &mut self.delivered,
        };
        let outbound = Outbound {
            write,
            from_engine: &mut self.from_engine,
            control,
            progress: &self.progress,
            now_ticks,
            ack_pending,
            out: Vec::with_capacity(WRITE_BATCH + wire::HEADER_LEN + 8 + wire::MAX_TLP_LEN),
            dropped: 0,
        };
        let (end, written) = tokio::join!(inbound.run(), outbound.run());
        self.dropped += written.dropped;
        if written.engine_gone { SessionEnd::EngineGone } else { end }
    }
}

/// The reader half of a session: frames from the simulator, straight into the engine's `rx`.
struct Inbound<'a> {
    reader: FrameReader,
    to_engine: &'a mpsc::Sender<LinkInput>,
    to_writer: mpsc::Sender<Control>,
    driver: &'a SimClockDriver,
    mode: SimMode,
    ps_per_tick: u32,
    /// Link-clock picoseconds of this session's tick 0: where the previous session stopped.
    base_ps: u64,
    /// The simulator's latest time in ticks, which the writer stamps on outgoing frames.
    now_ticks: Arc<AtomicU64>,
    /// Lockstep: a TIME awaits its TIME_ACK (set here, cleared by the writer).
    ack_pending: Arc<AtomicBool>,
    /// Inputs handed to the engine so far, over all sessions.
    delivered: &'a mut u64,
}

/// Why the reader stopped.
enum Stop {
    /// The simulator closed orderly.
    Closed,
    /// The simulator reported an error and is gone.
    PeerError,
    /// The engine dropped `rx`.
    EngineGone,
    /// The connection failed or the peer broke the protocol; tell the peer if we can.
    Failed(Error),
}

impl Inbound<'_> {
    /// Consumes the reader, so that the writer sees the control queue close when it ends.
    async fn run(mut self) -> SessionEnd {
        if self.deliver(LinkInput::Event { event: LinkEvent::Up, time: self.now() }).await.is_err() {
            self.tell_writer(Control::Stop).await;
            return SessionEnd::EngineGone;
        }
        match self.serve().await {
            Stop::Closed => SessionEnd::Closed,
            Stop::EngineGone => SessionEnd::EngineGone,
            Stop::PeerError => SessionEnd::Lost,
            Stop::Failed(e) => {
                tracing::warn!(error = %e, "sim link failed");
                let message = Message::Error { code: error_code_for(&e), message: e.to_string() };
                self.tell_writer(Control::Fail(message)).await;
                SessionEnd::Lost
            }
        }
    }

    /// Best effort: the writer may be gone already (the engine closed `tx`).
    async fn tell_writer(&self, control: Control) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.to_writer.send(control)).await;
    }

    fn now(&self) -> LinkInstant {
        LinkInstant::from_picos(
            self.base_ps
                .saturating_add(ticks_to_picos(self.now_ticks.load(Ordering::Relaxed), self.ps_per_tick)),
        )
    }

    async fn serve(&mut self) -> Stop {
        loop {
            let message = match self.reader.next().await {
                Ok(Some(message)) => message,
                Ok(None) => {
                    return Stop::Failed(Error::SimClosed("the simulator disconnected without CLOSE".into()));
                }
                Err(e) => return Stop::Failed(e),
            };
            match message {
                Message::Tlp { time, bytes } => {
                    if let Err(e) = self.advance(time, "TLP") {
                        return Stop::Failed(e);
                    }
                    tracing::trace!(time, len = bytes.len(), "sim link: TLP from the simulator");
                    let input = LinkInput::Tlp(ReceivedTlp { bytes, time: self.now() });
                    if self.deliver(input).await.is_err() {
                        return Stop::EngineGone;
                    }
                }
                Message::Time { time } => {
                    if let Err(e) = self.advance(time, "TIME") {
                        return Stop::Failed(e);
                    }
                    if self.mode == SimMode::Lockstep {
                        if self.ack_pending.swap(true, Ordering::AcqRel) {
                            return Stop::Failed(Error::SimProtocol(format!(
                                "lockstep TIME {time} sent before the previous TIME was acknowledged"
                            )));
                        }
                        let ack = Control::Ack { time, after: *self.delivered };
                        if self.to_writer.send(ack).await.is_err() {
                            return Stop::EngineGone;
                        }
                    }
                }
                Message::Event { time, event } => {
                    if let Err(e) = self.advance(time, "EVENT") {
                        return Stop::Failed(e);
                    }
                    tracing::info!(?event, time, "sim link: event from the simulator");
                    if self.deliver(LinkInput::Event { event, time: self.now() }).await.is_err() {
                        return Stop::EngineGone;
                    }
                }
                Message::Close => {
                    self.tell_writer(Control::Close).await;
                    return Stop::Closed;
                }
                Message::Error { code, message } => {
                    tracing::warn!(code, %message, "sim link: the simulator reported an error");
                    self.tell_writer(Control::Stop).await;
                    return Stop::PeerError;
                }
                other @ (Message::Hello(_) | Message::TimeAck { .. }) => {
                    return Stop::Failed(Error::SimProtocol(format!(
                        "the simulator may not send {} after the hello exchange",
                        other.name()
                    )));
                }
            }
        }
    }

    /// Moves the clock to the simulator's `time` (ticks); time running backwards is an error.
    fn advance(&mut self, time: u64, what: &str) -> Result<()> {
        let now = self.now_ticks.load(Ordering::Relaxed);
        if time < now {
            return Err(Error::SimProtocol(format!(
                "{what} at tick {time} is earlier than tick {now} already reported"
            )));
        }
        self.now_ticks.store(time, Ordering::Relaxed);
        self.driver.advance_to(self.now());
        Ok(())
    }

    /// Hands an input to the engine. `Err` when the engine dropped `rx`.
    async fn deliver(&mut self, input: LinkInput) -> Result<(), ()> {
        self.to_engine.send(input).await.map_err(drop)?;
        *self.delivered += 1;
        Ok(())
    }
}

/// The writer half of a session: the engine's TLPs, gathered into few writes, and the reader's
/// requests.
struct Outbound<'a> {
    write: OwnedWriteHalf,
    from_engine: &'a mut mpsc::Receiver<Vec<u8>>,
    control: mpsc::Receiver<Control>,
    progress: &'a LinkProgress,
    now_ticks: Arc<AtomicU64>,
    ack_pending: Arc<AtomicBool>,
    /// Outgoing frames gathered for one write.
    out: Vec<u8>,
    /// Engine TLPs discarded after the connection failed, while the reader winds down.
    dropped: u64,
}

/// What woke the writer.
enum Wake {
    Control(Option<Control>),
    Outgoing(Option<Vec<u8>>),
    Handled,
}

/// How the writer half ended.
struct Written {
    /// The engine closed `tx`.
    engine_gone: bool,
    dropped: u64,
}

impl Outbound<'_> {
    async fn run(mut self) -> Written {
        let engine_gone = match self.serve().await {
            Ok(engine_gone) => engine_gone,
            Err(e) => {
                tracing::warn!(error = %e, "sim link: sending to the simulator failed");
                false
            }
        };
        if !engine_gone {
            // The reader may still be delivering (it stops when the connection does): keep the
            // engine's queue moving so neither side blocks on a full one.
            loop {
                tokio::select! {
                    control = self.control.recv() => if control.is_none() { break },
                    bytes = self.from_engine.recv() => match bytes {
                        Some(_) => self.dropped += 1,
                        None => return Written { engine_gone: true, dropped: self.dropped },
                    },
                }
            }
        }
        Written { engine_gone, dropped: self.dropped }
    }

    /// `Ok(true)` when the engine closed `tx` (CLOSE sent), `Ok(false)` when the reader stopped it.
    async fn serve(&mut self) -> Result<bool> {
        // Lockstep: (time, inputs the engine must have handled) of the step awaiting its ack.
        let mut pending_ack: Option<(u64, u64)> = None;
        loop {
            let after = pending_ack.map_or(0, |(_, after)| after);
            let wake = tokio::select! {
                control = self.control.recv() => Wake::Control(control),
                bytes = self.from_engine.recv() => Wake::Outgoing(bytes),
                () = self.progress.wait_for(after), if pending_ack.is_some() => Wake::Handled,
            };
            match wake {
                Wake::Outgoing(Some(bytes)) => {
                    // The TLPs the engine has queued meanwhile go in the same write.
                    self.append_tlp(&bytes);
                    self.gather_queued();
                    self.flush().await?;
                }
                Wake::Outgoing(None) => {
                    write_message(&mut self.write, &Message::Close).await?;
                    return Ok(true);
                }
                Wake::Control(Some(Control::Ack { time, after })) => pending_ack = Some((time, after)),
                Wake::Control(Some(Control::Close)) => {
                    write_message(&mut self.write, &Message::Close).await?;
                    return Ok(false);
                }
                Wake::Control(Some(Control::Fail(message))) => {
                    if let Err(e) = write_message(&mut self.write, &message).await {
                        tracing::debug!(error = %e, "sim link: could not send ERROR to the simulator");
                    }
                    return Ok(false);
                }
                Wake::Control(Some(Control::Stop) | None) => return Ok(false),
                Wake::Handled => {
                    // Responses the engine queued before counting its inputs handled belong to
                    // this step: flush them before the acknowledgement.
                    self.gather_queued();
                    self.flush().await?;
                    let time = pending_ack.take().map_or(0, |(time, _)| time);
                    tracing::trace!(time, "sim link: TIME_ACK");
                    // Cleared before the write: once the simulator has the ack it may send the
                    // next TIME, which the reader must not take for a premature one.
                    self.ack_pending.store(false, Ordering::Release);
                    write_message(&mut self.write, &Message::TimeAck { time }).await?;
                }
            }
        }
    }

    /// Appends the TLPs already queued by the engine, up to one batch.
    fn gather_queued(&mut self) {
        while self.out.len() < WRITE_BATCH {
            match self.from_engine.try_recv() {
                Ok(more) => self.append_tlp(&more),
                Err(_) => break,
            }
        }
    }

    /// Adds a TLP's frame to the outgoing buffer.
    fn append_tlp(&mut self, bytes: &[u8]) {
        if bytes.len() < 4 || bytes.len() > wire::MAX_TLP_LEN || bytes.len() % 4 != 0 {
            // The engine only emits TLPs it built; a bad one is dropped rather than sent.
            tracing::error!(
                len = bytes.len(),
                "sim link: refusing to send a TLP that is not 4..=4148 bytes in DWs"
            );
            return;
        }
        let time = self.now_ticks.load(Ordering::Relaxed);
        tracing::trace!(time, len = bytes.len(), "sim link: TLP to the simulator");
        wire::append_tlp_frame(&mut self.out, time, bytes);
    }

    /// Writes the outgoing buffer.
    async fn flush(&mut self) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        if self.out.is_empty() {
            return Ok(());
        }
        let result = self.write.write_all(&self.out).await;
        self.out.clear();
        result.map_err(|source| Error::SimIo { context: "sending TLP frames".into(), source })
    }
}
