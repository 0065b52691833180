//! The bridge end of a sim link: a [`Link`] whose clock the simulator drives.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};
use transports::link::{
    Link, LinkClock, LinkEvent, LinkInfo, LinkInput, LinkInstant, LinkProgress, ReceivedTlp, SimClockDriver,
};

use super::wire::{self, Message, Role, SimMode};
use super::{FrameReader, HelloParams, error_code_for, handshake, ticks_to_picos, write_message};
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

/// Hello exchange on a fresh connection, then the link and its two I/O tasks: the reader
/// decodes frames straight into the link's `rx` (no task in between), the writer drains the
/// link's `tx` into batched socket writes.
pub(super) async fn start(stream: TcpStream, config: &BridgeConfig) -> Result<Link> {
    let peer_addr = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "unknown peer".into());
    let (read, mut write) = stream.into_split();
    let mut reader = FrameReader::new(read);
    let ours = config.hello.hello(Role::Bridge);
    let peer = handshake(&mut write, &mut reader, &ours, config.hello_timeout).await?;
    let ps_per_tick = ours.agreed_ps_per_tick(&peer);
    let capacity = config.capacity.max(1);
    let (to_engine, rx) = mpsc::channel(capacity);
    let (tx, from_engine) = mpsc::channel(capacity);
    let (to_writer, control) = mpsc::channel(CONTROL_QUEUE);
    let (clock, driver) = LinkClock::simulated();
    let progress = LinkProgress::new();
    let info = LinkInfo {
        kind: "sim".into(),
        description: format!(
            "sim link with {peer_addr} ({}, {ps_per_tick} ps/tick, MPS {} MRRS {} RCB {})",
            peer.mode, peer.mps, peer.mrrs, peer.rcb
        ),
    };
    let now_ticks = Arc::new(AtomicU64::new(0));
    let ack_pending = Arc::new(AtomicBool::new(false));
    let inbound = Inbound {
        reader,
        to_engine,
        to_writer,
        driver,
        mode: peer.mode,
        ps_per_tick,
        now_ticks: now_ticks.clone(),
        ack_pending: ack_pending.clone(),
        delivered: 0,
    };
    let outbound = Outbound {
        write,
        from_engine,
        control,
        handled: progress.subscribe(),
        now_ticks,
        ack_pending,
        out: Vec::with_capacity(WRITE_BATCH + wire::HEADER_LEN + 8 + wire::MAX_TLP_LEN),
    };
    let reader_task = tokio::spawn(inbound.run());
    let writer_task = tokio::spawn(outbound.run());
    Ok(Link::new(info, clock, rx, tx).with_progress(progress).with_task(reader_task).with_task(writer_task))
}

/// Most bytes of outgoing frames gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;
/// Requests from the reader to the writer: at most one acknowledgement is outstanding, plus the
/// final close or error.
const CONTROL_QUEUE: usize = 4;

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

/// The reader task: frames from the simulator, straight into the engine's `rx`.
struct Inbound {
    reader: FrameReader,
    to_engine: mpsc::Sender<LinkInput>,
    to_writer: mpsc::Sender<Control>,
    driver: SimClockDriver,
    mode: SimMode,
    ps_per_tick: u32,
    /// The simulator's latest time in ticks, which the writer stamps on outgoing frames.
    now_ticks: Arc<AtomicU64>,
    /// Lockstep: a TIME awaits its TIME_ACK (set here, cleared by the writer).
    ack_pending: Arc<AtomicBool>,
    /// Inputs handed to the engine so far (TLPs and events).
    delivered: u64,
}

/// Why the reader stopped.
enum Stop {
    /// The simulator closed orderly or reported an error, or the engine is gone.
    Quiet,
    /// The connection failed or the peer broke the protocol; tell the peer if we can.
    Failed(Error),
}

impl Inbound {
    async fn run(mut self) {
        if self.deliver(LinkInput::Event { event: LinkEvent::Up, time: self.now() }).await.is_ok() {
            match self.serve().await {
                Stop::Quiet => tracing::info!("sim link closed"),
                Stop::Failed(e) => {
                    tracing::warn!(error = %e, "sim link failed");
                    let message = Message::Error { code: error_code_for(&e), message: e.to_string() };
                    self.tell_writer(Control::Fail(message)).await;
                }
            }
        } else {
            self.tell_writer(Control::Stop).await;
        }
        // The engine learns the simulator is gone, then `rx` closes when both tasks end.
        let down = LinkInput::Event { event: LinkEvent::Down, time: self.now() };
        let _ = tokio::time::timeout(Duration::from_secs(1), self.to_engine.send(down)).await;
    }

    /// Best effort: the writer may be gone already (the engine closed `tx`).
    async fn tell_writer(&self, control: Control) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.to_writer.send(control)).await;
    }

    fn now(&self) -> LinkInstant {
        LinkInstant::from_picos(ticks_to_picos(self.now_ticks.load(Ordering::Relaxed), self.ps_per_tick))
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
                        return Stop::Quiet;
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
                        let ack = Control::Ack { time, after: self.delivered };
                        if self.to_writer.send(ack).await.is_err() {
                            return Stop::Quiet;
                        }
                    }
                }
                Message::Event { time, event } => {
                    if let Err(e) = self.advance(time, "EVENT") {
                        return Stop::Failed(e);
                    }
                    tracing::info!(?event, time, "sim link: event from the simulator");
                    if self.deliver(LinkInput::Event { event, time: self.now() }).await.is_err() {
                        return Stop::Quiet;
                    }
                }
                Message::Close => {
                    self.tell_writer(Control::Close).await;
                    return Stop::Quiet;
                }
                Message::Error { code, message } => {
                    tracing::warn!(code, %message, "sim link: the simulator reported an error");
                    self.tell_writer(Control::Stop).await;
                    return Stop::Quiet;
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
        self.delivered += 1;
        Ok(())
    }
}

/// The writer task: the engine's TLPs, gathered into few writes, and the reader's requests.
struct Outbound {
    write: OwnedWriteHalf,
    from_engine: mpsc::Receiver<Vec<u8>>,
    control: mpsc::Receiver<Control>,
    handled: watch::Receiver<u64>,
    now_ticks: Arc<AtomicU64>,
    ack_pending: Arc<AtomicBool>,
    /// Outgoing frames gathered for one write.
    out: Vec<u8>,
}

/// What woke the writer.
enum Wake {
    Control(Option<Control>),
    Outgoing(Option<Vec<u8>>),
    Handled(bool),
}

impl Outbound {
    async fn run(mut self) {
        if let Err(e) = self.serve().await {
            tracing::warn!(error = %e, "sim link: sending to the simulator failed");
        }
    }

    async fn serve(&mut self) -> Result<()> {
        // Lockstep: (time, inputs the engine must have handled) of the step awaiting its ack.
        let mut pending_ack: Option<(u64, u64)> = None;
        loop {
            let after = pending_ack.map_or(0, |(_, after)| after);
            let wake = tokio::select! {
                control = self.control.recv() => Wake::Control(control),
                bytes = self.from_engine.recv() => Wake::Outgoing(bytes),
                handled = self.handled.wait_for(|n| *n >= after), if pending_ack.is_some() => {
                    Wake::Handled(handled.is_ok())
                }
            };
            match wake {
                Wake::Outgoing(Some(bytes)) => {
                    // The TLPs the engine has queued meanwhile go in the same write.
                    self.append_tlp(&bytes);
                    self.gather_queued();
                    self.flush().await?;
                }
                Wake::Outgoing(None) => return write_message(&mut self.write, &Message::Close).await,
                Wake::Control(Some(Control::Ack { time, after })) => pending_ack = Some((time, after)),
                Wake::Control(Some(Control::Close)) => {
                    return write_message(&mut self.write, &Message::Close).await;
                }
                Wake::Control(Some(Control::Fail(message))) => {
                    if let Err(e) = write_message(&mut self.write, &message).await {
                        tracing::debug!(error = %e, "sim link: could not send ERROR to the simulator");
                    }
                    return Ok(());
                }
                Wake::Control(Some(Control::Stop) | None) | Wake::Handled(false) => return Ok(()),
                Wake::Handled(true) => {
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
