//! The bridge end of a sim link: a [`Link`] whose clock the simulator drives.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};
use transports::link::{
    Link, LinkClock, LinkEvent, LinkInfo, LinkInput, LinkInstant, LinkProgress, ReceivedTlp, SimClockDriver,
};

use super::wire::{self, Message, Role, SimMode};
use super::{HelloParams, handshake, send_error, spawn_reader, ticks_to_picos, write_message};
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

/// Hello exchange on a fresh connection, then the link and its I/O tasks.
pub(super) async fn start(stream: TcpStream, config: &BridgeConfig) -> Result<Link> {
    let peer_addr = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "unknown peer".into());
    let (read, mut write) = stream.into_split();
    let (mut incoming, reader_task) = spawn_reader(read);
    let ours = config.hello.hello(Role::Bridge);
    let peer = match handshake(&mut write, &mut incoming, &ours, config.hello_timeout).await {
        Ok(peer) => peer,
        Err(e) => {
            reader_task.abort();
            return Err(e);
        }
    };
    let ps_per_tick = ours.agreed_ps_per_tick(&peer);
    let capacity = config.capacity.max(1);
    let (to_engine, rx) = mpsc::channel(capacity);
    let (tx, from_engine) = mpsc::channel(capacity);
    let (clock, driver) = LinkClock::simulated();
    let progress = LinkProgress::new();
    let info = LinkInfo {
        kind: "sim".into(),
        description: format!(
            "sim link with {peer_addr} ({}, {ps_per_tick} ps/tick, MPS {} MRRS {} RCB {})",
            peer.mode, peer.mps, peer.mrrs, peer.rcb
        ),
    };
    let io = BridgeIo {
        incoming,
        write,
        to_engine,
        from_engine,
        driver,
        handled: progress.subscribe(),
        mode: peer.mode,
        ps_per_tick,
        now_ticks: 0,
        delivered: 0,
        out: Vec::with_capacity(WRITE_BATCH + wire::HEADER_LEN + 8 + wire::MAX_TLP_LEN),
    };
    let task = tokio::spawn(io.run());
    Ok(Link::new(info, clock, rx, tx).with_progress(progress).with_task(reader_task).with_task(task))
}

/// The task that owns the write half and the link's queues.
struct BridgeIo {
    incoming: mpsc::Receiver<Result<Message>>,
    write: OwnedWriteHalf,
    to_engine: mpsc::Sender<LinkInput>,
    from_engine: mpsc::Receiver<Vec<u8>>,
    driver: SimClockDriver,
    handled: watch::Receiver<u64>,
    mode: SimMode,
    ps_per_tick: u32,
    /// The simulator's latest time, in ticks.
    now_ticks: u64,
    /// Inputs handed to the engine so far (TLPs and events).
    delivered: u64,
    /// Outgoing frames gathered for one write.
    out: Vec<u8>,
}

/// Most bytes of outgoing frames gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;

/// Why the I/O loop stopped.
enum Stop {
    /// The simulator closed orderly, or the engine is gone; nothing more to say.
    Quiet,
    /// The connection failed or the peer broke the protocol; tell the peer if we can.
    Failed(Error),
}

impl BridgeIo {
    async fn run(mut self) {
        if self.deliver(LinkInput::Event { event: LinkEvent::Up, time: self.now() }).await.is_err() {
            return;
        }
        let stop = self.serve().await;
        match &stop {
            Stop::Quiet => tracing::info!("sim link closed"),
            Stop::Failed(e) => {
                tracing::warn!(error = %e, "sim link failed");
                send_error(&mut self.write, e).await;
            }
        }
        // The engine learns the simulator is gone, then `rx` closes when this task ends.
        let down = LinkInput::Event { event: LinkEvent::Down, time: self.now() };
        let _ = tokio::time::timeout(Duration::from_secs(1), self.to_engine.send(down)).await;
    }

    fn now(&self) -> LinkInstant {
        LinkInstant::from_picos(ticks_to_picos(self.now_ticks, self.ps_per_tick))
    }

    async fn serve(&mut self) -> Stop {
        let mut pending_ack: Option<u64> = None;
        loop {
            let delivered = self.delivered;
            let waiting_ack = pending_ack.is_some();
            let wake = tokio::select! {
                message = self.incoming.recv() => Wake::Incoming(message),
                bytes = self.from_engine.recv() => Wake::Outgoing(bytes),
                handled = self.handled.wait_for(|n| *n >= delivered), if waiting_ack => Wake::Handled(handled.is_ok()),
            };
            match wake {
                Wake::Incoming(None) => {
                    return Stop::Failed(Error::SimClosed("the simulator disconnected without CLOSE".into()));
                }
                Wake::Incoming(Some(Err(e))) => return Stop::Failed(e),
                Wake::Incoming(Some(Ok(message))) => match self.on_message(message, &mut pending_ack).await {
                    Ok(true) => {}
                    Ok(false) => return Stop::Quiet,
                    Err(stop) => return stop,
                },
                Wake::Outgoing(Some(bytes)) => {
                    // The TLPs the engine has queued meanwhile go in the same write.
                    self.append_tlp(&bytes);
                    while self.out.len() < WRITE_BATCH {
                        match self.from_engine.try_recv() {
                            Ok(more) => self.append_tlp(&more),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = self.flush().await {
                        return Stop::Failed(e);
                    }
                }
                Wake::Outgoing(None) => {
                    let _ = write_message(&mut self.write, &Message::Close).await;
                    return Stop::Quiet;
                }
                Wake::Handled(false) => return Stop::Quiet,
                Wake::Handled(true) => {
                    // Responses the engine queued before counting its inputs handled belong to
                    // this step: flush them before the acknowledgement.
                    while let Ok(bytes) = self.from_engine.try_recv() {
                        self.append_tlp(&bytes);
                    }
                    if let Err(e) = self.flush().await {
                        return Stop::Failed(e);
                    }
                    let time = pending_ack.take().unwrap_or(self.now_ticks);
                    tracing::trace!(time, "sim link: TIME_ACK");
                    if let Err(e) = write_message(&mut self.write, &Message::TimeAck { time }).await {
                        return Stop::Failed(e);
                    }
                }
            }
        }
    }

    /// `Ok(false)` when the simulator closed orderly.
    async fn on_message(&mut self, message: Message, pending_ack: &mut Option<u64>) -> Result<bool, Stop> {
        match message {
            Message::Tlp { time, bytes } => {
                self.advance(time, "TLP").map_err(Stop::Failed)?;
                tracing::trace!(time, len = bytes.len(), "sim link: TLP from the simulator");
                let input = LinkInput::Tlp(ReceivedTlp { bytes, time: self.now() });
                self.deliver(input).await.map_err(|()| Stop::Quiet)?;
            }
            Message::Time { time } => {
                self.advance(time, "TIME").map_err(Stop::Failed)?;
                if self.mode == SimMode::Lockstep {
                    if let Some(previous) = pending_ack {
                        return Err(Stop::Failed(Error::SimProtocol(format!(
                            "lockstep TIME {time} sent before TIME {previous} was acknowledged"
                        ))));
                    }
                    *pending_ack = Some(time);
                }
            }
            Message::Event { time, event } => {
                self.advance(time, "EVENT").map_err(Stop::Failed)?;
                tracing::info!(?event, time, "sim link: event from the simulator");
                self.deliver(LinkInput::Event { event, time: self.now() }).await.map_err(|()| Stop::Quiet)?;
            }
            Message::Close => {
                let _ = write_message(&mut self.write, &Message::Close).await;
                return Ok(false);
            }
            Message::Error { code, message } => {
                tracing::warn!(code, %message, "sim link: the simulator reported an error");
                return Ok(false);
            }
            other @ (Message::Hello(_) | Message::TimeAck { .. }) => {
                return Err(Stop::Failed(Error::SimProtocol(format!(
                    "the simulator may not send {} after the hello exchange",
                    other.name()
                ))));
            }
        }
        Ok(true)
    }

    /// Moves the clock to the simulator's `time` (ticks); time running backwards is an error.
    fn advance(&mut self, time: u64, what: &str) -> Result<()> {
        if time < self.now_ticks {
            return Err(Error::SimProtocol(format!(
                "{what} at tick {time} is earlier than tick {} already reported",
                self.now_ticks
            )));
        }
        self.now_ticks = time;
        self.driver.advance_to(self.now());
        Ok(())
    }

    async fn send_tlp(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.append_tlp(&bytes);
        self.flush().await
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
        tracing::trace!(time = self.now_ticks, len = bytes.len(), "sim link: TLP to the simulator");
        wire::append_tlp_frame(&mut self.out, self.now_ticks, bytes);
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

    /// Hands an input to the engine, still sending the engine's TLPs while `rx` is full (so that
    /// neither side blocks the other). `Err` when the engine dropped `rx`.
    async fn deliver(&mut self, input: LinkInput) -> Result<(), ()> {
        let mut input = Some(input);
        loop {
            let wake = tokio::select! {
                permit = self.to_engine.reserve() => match permit {
                    Ok(permit) => {
                        if let Some(input) = input.take() {
                            permit.send(input);
                        }
                        None
                    }
                    Err(_) => return Err(()),
                },
                Some(bytes) = self.from_engine.recv() => Some(bytes),
            };
            match wake {
                None => {
                    self.delivered += 1;
                    return Ok(());
                }
                Some(bytes) => {
                    if self.send_tlp(bytes).await.is_err() {
                        return Err(());
                    }
                }
            }
        }
    }
}

/// What woke the I/O loop.
enum Wake {
    Incoming(Option<Result<Message>>),
    Outgoing(Option<Vec<u8>>),
    Handled(bool),
}
