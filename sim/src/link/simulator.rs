//! The simulator end of a sim link, for simulators written in Rust (the reference root complex)
//! and for tests.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use transports::link::LinkEvent;

use super::wire::{self, Hello, Message, Role, SimMode};
use super::{FrameReader, HelloParams, SimListener, TryFrame, connect_stream, handshake, send_error};
use crate::error::{Error, Result};

/// How the simulator side of a sim link is set up.
#[derive(Clone, Copy, Debug)]
pub struct SimulatorConfig {
    /// What the simulator states in its HELLO. `ps_per_tick` must not be [`wire::ANY_TICK`].
    pub hello: HelloParams,
    /// Longest wait for the TCP connection (connecting, or a bridge connecting to us).
    pub connect_timeout: Duration,
    /// Longest wait for the bridge's HELLO.
    pub hello_timeout: Duration,
    /// Lockstep: longest wall-clock wait for a TIME_ACK. A safety net against a hung bridge, not
    /// part of the simulated behaviour.
    pub ack_timeout: Duration,
    /// Most TLPs from the bridge buffered before the simulator takes them with `try_recv`
    /// (while it waits for a TIME_ACK, or writes and keeps reading so that neither side blocks
    /// the other).
    pub max_buffered: usize,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            hello: HelloParams {
                mode: SimMode::FreeRunning,
                ps_per_tick: 1000,
                link: tlp::split::LinkParams::DEFAULT,
                tag_flags: wire::hello_flags::EXTENDED_TAG,
                link_latency_ticks: 0,
            },
            connect_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(30),
            max_buffered: 4096,
        }
    }
}

/// A TLP the bridge sent, with the bridge's time (ticks) when it sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeTlp {
    /// A slice of the reader's buffer: no copy per TLP.
    pub bytes: bytes::Bytes,
    pub time: u64,
}

/// Why the connection ended, kept so that every later call reports it.
#[derive(Clone, Debug)]
enum Ended {
    Orderly,
    PeerError { code: u16, message: String },
    Failed(String),
}

impl Ended {
    fn to_error(&self) -> Error {
        match self {
            Ended::Orderly => Error::SimClosed("the bridge closed the link".into()),
            Ended::PeerError { code, message } => {
                Error::SimPeerError { code: *code, message: message.clone() }
            }
            Ended::Failed(reason) => Error::SimClosed(reason.clone()),
        }
    }
}

/// One item read off the socket: a message, a read error, or `None` for the end of the stream.
type Incoming = Option<Result<Message>>;

/// The simulator's end of a sim link. It has no task of its own: it reads the socket when asked
/// for a TLP (and while its own writes wait), so a TLP from the bridge crosses no channel.
#[derive(Debug)]
pub struct SimulatorEnd {
    write: OwnedWriteHalf,
    reader: FrameReader,
    /// Items read while writing, not yet handled (bounded by `config.max_buffered`).
    unread: VecDeque<Incoming>,
    received: VecDeque<BridgeTlp>,
    peer: Hello,
    config: SimulatorConfig,
    now: u64,
    ended: Option<Ended>,
    close_sent: bool,
    /// Outgoing frames of one write, reused.
    out: Vec<u8>,
}

impl SimulatorEnd {
    /// Connects to a bridge listening at `addr` (`HOST:PORT`).
    pub async fn connect(addr: &str, config: &SimulatorConfig) -> Result<SimulatorEnd> {
        let stream = connect_stream(addr, config.connect_timeout).await?;
        Self::start(stream, config).await
    }

    /// Listens on `addr` and accepts one bridge (waiting up to `config.connect_timeout`).
    pub async fn listen(addr: &str, config: &SimulatorConfig) -> Result<SimulatorEnd> {
        SimListener::bind(addr).await?.accept_simulator(config).await
    }

    pub(super) async fn start(stream: TcpStream, config: &SimulatorConfig) -> Result<SimulatorEnd> {
        if config.hello.ps_per_tick == wire::ANY_TICK {
            return Err(Error::SimProtocol(
                "the simulator must state its picoseconds per tick (not 0)".into(),
            ));
        }
        let (read, mut write) = stream.into_split();
        let mut reader = FrameReader::new(read);
        let ours = config.hello.hello(Role::Simulator);
        let peer = handshake(&mut write, &mut reader, &ours, config.hello_timeout).await?;
        Ok(SimulatorEnd {
            write,
            reader,
            unread: VecDeque::new(),
            received: VecDeque::new(),
            peer,
            config: *config,
            now: 0,
            ended: None,
            close_sent: false,
            out: Vec::new(),
        })
    }

    /// The bridge's HELLO.
    pub fn peer_hello(&self) -> &Hello {
        &self.peer
    }

    pub fn mode(&self) -> SimMode {
        self.config.hello.mode
    }

    pub fn ps_per_tick(&self) -> u32 {
        self.config.hello.ps_per_tick
    }

    /// The simulator's current time in ticks (the last `advance_to`).
    pub fn now(&self) -> u64 {
        self.now
    }

    fn check_open(&self) -> Result<()> {
        match &self.ended {
            Some(ended) => Err(ended.to_error()),
            None if self.close_sent => Err(Error::SimClosed("this side already sent CLOSE".into())),
            None => Ok(()),
        }
    }

    /// Sends a TLP (raw wire bytes) stamped with the current time (after any TLPs queued with
    /// [`SimulatorEnd::queue_tlp`]).
    pub async fn send_tlp(&mut self, bytes: &[u8]) -> Result<()> {
        self.send_tlps([bytes]).await
    }

    /// Sends several TLPs (raw wire bytes) stamped with the current time in one write, e.g. the
    /// completions of one read. Each is checked as by [`SimulatorEnd::send_tlp`]; nothing of this
    /// call is sent if one is malformed.
    pub async fn send_tlps<'a>(&mut self, tlps: impl IntoIterator<Item = &'a [u8]>) -> Result<()> {
        self.check_open()?;
        let before = self.out.len();
        for bytes in tlps {
            if let Err(e) = self.queue_tlp(bytes) {
                self.out.truncate(before);
                return Err(e);
            }
        }
        self.flush().await
    }

    /// Queues a TLP (raw wire bytes, stamped with the current time) for the next write: the
    /// next [`SimulatorEnd::flush`] or send. Lets a simulator answer several requests in one
    /// system call.
    pub fn queue_tlp(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() < 4 || bytes.len() > wire::MAX_TLP_LEN || bytes.len() % 4 != 0 {
            return Err(Error::SimProtocol(format!(
                "a TLP is 4..={} bytes in whole DWs, not {} bytes",
                wire::MAX_TLP_LEN,
                bytes.len()
            )));
        }
        wire::append_tlp_frame(&mut self.out, self.now, bytes);
        Ok(())
    }

    /// Whether TLPs are queued and not yet written.
    pub fn has_queued(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes the queued TLPs.
    pub async fn flush(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.check_open() {
            self.out.clear();
            return Err(e);
        }
        self.write_out("sending TLP frames").await
    }

    /// Writes `self.out`, reading what the bridge sends meanwhile into `unread` (up to
    /// `max_buffered` items): a bridge that is itself blocked writing to us then still drains
    /// our frames, so neither side waits for the other forever.
    async fn write_out(&mut self, what: &str) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let fail = |source| Error::SimIo { context: what.to_owned(), source };
        let mut written = 0;
        while written < self.out.len() {
            let draining = self.unread.len() < self.config.max_buffered
                && !matches!(self.unread.back(), Some(None | Some(Err(_))));
            tokio::select! {
                // The write first: reading is only for while the socket is full.
                biased;
                n = self.write.write(&self.out[written..]) => {
                    let n = match n {
                        Ok(0) => Err(std::io::ErrorKind::WriteZero.into()),
                        other => other,
                    };
                    let n = match n {
                        Ok(n) => n,
                        Err(e) => {
                            // The connection is broken: nothing queued can be sent any more.
                            self.out.clear();
                            return Err(fail(e));
                        }
                    };
                    written += n;
                }
                item = self.reader.next(), if draining => self.unread.push_back(item.transpose()),
            }
        }
        self.out.clear();
        Ok(())
    }

    /// Writes one non-TLP message (reading meanwhile, as [`SimulatorEnd::write_out`]).
    async fn send_message(&mut self, message: &Message) -> Result<()> {
        // After any queued TLPs, which were stamped earlier.
        self.out.extend_from_slice(&message.to_frame());
        self.write_out(&format!("sending a {} frame", message.name())).await
    }

    /// The next item from the bridge: one read while writing, else from the socket.
    async fn next_item(&mut self) -> Incoming {
        match self.unread.pop_front() {
            Some(item) => item,
            None => self.reader.next().await.transpose(),
        }
    }

    /// Reports a link event at the current time.
    pub async fn send_event(&mut self, event: LinkEvent) -> Result<()> {
        self.check_open()?;
        self.send_message(&Message::Event { time: self.now, event }).await
    }

    /// Tells the bridge that simulated time has reached `time` ticks. Lockstep: then waits (at most
    /// `ack_timeout` of wall time) for the bridge's TIME_ACK; TLPs the bridge sent before the
    /// acknowledgement are buffered for [`SimulatorEnd::try_recv`].
    pub async fn advance_to(&mut self, time: u64) -> Result<()> {
        self.check_open()?;
        if time < self.now {
            return Err(Error::SimProtocol(format!(
                "cannot move time back from tick {} to {time}",
                self.now
            )));
        }
        self.now = time;
        self.send_message(&Message::Time { time }).await?;
        if self.mode() == SimMode::FreeRunning {
            return Ok(());
        }
        let timeout = self.config.ack_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = match tokio::time::timeout_at(deadline, self.next_item()).await {
                Ok(m) => m,
                Err(_) => {
                    let e =
                        Error::SimTimeout { what: format!("the bridge's TIME_ACK for tick {time}"), timeout };
                    send_error(&mut self.write, &e).await;
                    self.ended = Some(Ended::Failed(e.to_string()));
                    return Err(e);
                }
            };
            if let Some(ack) = self.on_message(message).await? {
                if ack == time {
                    return Ok(());
                }
                let e = Error::SimProtocol(format!("TIME_ACK for tick {ack} while waiting for tick {time}"));
                return Err(self.fail(e).await);
            }
        }
    }

    /// The next TLP from the bridge without waiting: `Ok(None)` when none has arrived. Once the
    /// bridge has closed and everything it sent was taken, the close is reported as an error.
    pub fn try_recv(&mut self) -> Result<Option<BridgeTlp>> {
        loop {
            if let Some(tlp) = self.received.pop_front() {
                return Ok(Some(tlp));
            }
            if let Some(ended) = &self.ended {
                return Err(ended.to_error());
            }
            // Handled synchronously: `on_message` only writes to the socket on errors, which
            // `try_recv` reports without telling the peer.
            let item = match self.unread.pop_front() {
                Some(item) => item,
                None => match self.reader.try_next() {
                    Ok(TryFrame::Message(message)) => Some(Ok(message)),
                    Ok(TryFrame::Pending) => return Ok(None),
                    Ok(TryFrame::End) => None,
                    Err(e) => Some(Err(e)),
                },
            };
            self.on_message_sync(item)?;
        }
    }

    /// The next TLP from the bridge, waiting up to `timeout` of wall time (`Ok(None)` then).
    pub async fn recv(&mut self, timeout: Duration) -> Result<Option<BridgeTlp>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(tlp) = self.try_recv()? {
                return Ok(Some(tlp));
            }
            match tokio::time::timeout_at(deadline, self.next_item()).await {
                Ok(message) => {
                    if self.on_message(message).await?.is_some() {
                        let e = Error::SimProtocol("TIME_ACK without a pending TIME".into());
                        return Err(self.fail(e).await);
                    }
                }
                Err(_) => return Ok(None),
            }
        }
    }

    /// Orderly close: sends CLOSE and waits (up to `hello_timeout`) for the bridge's CLOSE or end
    /// of stream. TLPs still arriving meanwhile are dropped.
    pub async fn close(mut self) -> Result<()> {
        if self.ended.is_some() {
            return Ok(());
        }
        self.send_message(&Message::Close).await?;
        self.close_sent = true;
        let timeout = self.config.hello_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.next_item()).await {
                Ok(Some(Ok(Message::Close))) | Ok(None) => return Ok(()),
                Ok(Some(Ok(Message::Error { code, message }))) => {
                    return Err(Error::SimPeerError { code, message });
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(e),
                Err(_) => return Err(Error::SimTimeout { what: "the bridge's CLOSE".into(), timeout }),
            }
        }
    }

    /// Records a failure, tells the peer, returns the error.
    async fn fail(&mut self, e: Error) -> Error {
        send_error(&mut self.write, &e).await;
        self.ended = Some(Ended::Failed(e.to_string()));
        e
    }

    /// Handles one incoming item; `Ok(Some(t))` for a TIME_ACK of tick `t`.
    async fn on_message(&mut self, message: Option<Result<Message>>) -> Result<Option<u64>> {
        match self.classify(message) {
            Ok(ack) => Ok(ack),
            Err((e, tell_peer)) => {
                if tell_peer {
                    send_error(&mut self.write, &e).await;
                }
                self.ended = Some(Ended::Failed(e.to_string()));
                Err(e)
            }
        }
    }

    fn on_message_sync(&mut self, message: Option<Result<Message>>) -> Result<Option<u64>> {
        self.classify(message).map_err(|(e, _)| {
            self.ended.get_or_insert_with(|| Ended::Failed(e.to_string()));
            e
        })
    }

    /// `Err((error, tell_peer))`.
    fn classify(&mut self, message: Option<Result<Message>>) -> Result<Option<u64>, (Error, bool)> {
        let message = match message {
            None => {
                if self.ended.is_none() {
                    self.ended = Some(Ended::Failed("the bridge disconnected without CLOSE".into()));
                }
                return Err((self.ended.as_ref().map(Ended::to_error).unwrap_or(Error::Disconnected), false));
            }
            Some(Err(e)) => return Err((e, true)),
            Some(Ok(m)) => m,
        };
        match message {
            Message::Tlp { time, bytes } => {
                if self.received.len() >= self.config.max_buffered {
                    return Err((
                        Error::SimProtocol(format!(
                            "the bridge sent more than {} TLPs the simulator has not taken",
                            self.config.max_buffered
                        )),
                        true,
                    ));
                }
                self.received.push_back(BridgeTlp { bytes, time });
                Ok(None)
            }
            Message::TimeAck { time } => {
                if self.mode() == SimMode::Lockstep {
                    Ok(Some(time))
                } else {
                    Err((Error::SimProtocol("TIME_ACK on a free-running link".into()), true))
                }
            }
            Message::Close => {
                self.ended = Some(Ended::Orderly);
                Err((Ended::Orderly.to_error(), false))
            }
            Message::Error { code, message } => {
                let ended = Ended::PeerError { code, message };
                let e = ended.to_error();
                self.ended = Some(ended);
                Err((e, false))
            }
            other @ (Message::Hello(_) | Message::Time { .. } | Message::Event { .. }) => Err((
                Error::SimProtocol(format!(
                    "the bridge may not send {} after the hello exchange",
                    other.name()
                )),
                true,
            )),
        }
    }
}
