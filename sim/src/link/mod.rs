//! The co-simulation link: PCIe TLPs and simulated time over TCP between tlpbridge and a
//! cycle-level simulator that hosts the root port (see `docs/sim-protocol.md`).
//!
//! - [`wire`]: frames and messages (the byte layout).
//! - Bridge side: [`connect`] / [`listen`] / [`SimListener::accept_bridge`] produce a
//!   [`transports::link::Link`] on a simulated [`LinkClock`](transports::link::LinkClock) that the
//!   simulator's TIME messages drive.
//! - Simulator side: [`SimulatorEnd`], for Rust simulators (the reference root complex) and tests.
//!
//! Disconnect behaviour (bridge side), see `docs/sim-protocol.md` §"Sessions and reconnection":
//! - [`listen`] / [`SimListener::serve_bridge`] (`sim-listen://`): when a simulator session ends
//!   without CLOSE (TCP drop, crash, ERROR, broken protocol) the link delivers
//!   [`LinkEvent::Down`](transports::link::LinkEvent), keeps listening, accepts the next simulator
//!   (full hello, same checks) and delivers `Up`. TLPs the engine sends meanwhile are dropped and
//!   counted. A new session's tick 0 maps to the link-clock instant where the previous session
//!   stopped, so the link clock never runs backwards. An orderly CLOSE ends the link.
//! - [`connect`] (`sim://`) and [`SimListener::accept_bridge`]: one session; its end (CLOSE or
//!   not) delivers `Down` and closes `rx`.

mod bridge;
mod simulator;
pub mod wire;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;

use tlp::split::LinkParams;
use tokio::net::{TcpListener, TcpStream};
use transports::link::Link;

pub use bridge::BridgeConfig;
pub use simulator::{BridgeTlp, SimulatorConfig, SimulatorEnd};
pub use wire::{Hello, Role, SimMode};

use crate::error::{Error, Result};

/// Where a sim link goes: `sim://HOST:PORT` connects to a listening peer, `sim-listen://HOST:PORT`
/// listens for one peer to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimAddress {
    Connect(String),
    Listen(String),
}

impl SimAddress {
    /// Parses `sim://HOST:PORT` or `sim-listen://HOST:PORT` (IPv6 hosts in brackets).
    pub fn parse(input: &str) -> Result<SimAddress> {
        let err = |reason: &str| Error::SimAddress { input: input.to_owned(), reason: reason.to_owned() };
        let (ctor, rest): (fn(String) -> SimAddress, &str) = if let Some(rest) = input.strip_prefix("sim://")
        {
            (SimAddress::Connect, rest)
        } else if let Some(rest) = input.strip_prefix("sim-listen://") {
            (SimAddress::Listen, rest)
        } else {
            return Err(err("expected sim://HOST:PORT (connect) or sim-listen://HOST:PORT (listen)"));
        };
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
        if host.is_empty() {
            return Err(err("missing HOST (use 127.0.0.1 or 0.0.0.0)"));
        }
        if port.parse::<u16>().is_err() {
            return Err(err("PORT must be a number 0..=65535"));
        }
        Ok(ctor(rest.to_owned()))
    }

    /// `HOST:PORT`.
    pub fn host_port(&self) -> &str {
        match self {
            SimAddress::Connect(a) | SimAddress::Listen(a) => a,
        }
    }
}

impl std::fmt::Display for SimAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimAddress::Connect(a) => write!(f, "sim://{a}"),
            SimAddress::Listen(a) => write!(f, "sim-listen://{a}"),
        }
    }
}

/// Splits a bridge-side address `HOST:PORT[?OPTIONS]` into `HOST:PORT` and the [`BridgeConfig`]
/// the options give, starting from `base`. Options (`&`-separated, for registries that only pass
/// an address string): `mode=lockstep|free`, `mps=N`, `mrrs=N`, `rcb=64|128`, `tick-ps=N`
/// (0 = accept the simulator's), `tags=5|8|10`, `latency=N` (ticks), `capacity=N`.
pub fn parse_bridge_address(address: &str, base: BridgeConfig) -> Result<(String, BridgeConfig)> {
    let err = |reason: String| Error::SimAddress { input: address.to_owned(), reason };
    let (host_port, query) = match address.split_once('?') {
        Some((h, q)) => (h, q),
        None => (address, ""),
    };
    SimAddress::parse(&format!("sim://{host_port}"))
        .map_err(|_| err("expected HOST:PORT[?OPTIONS]".into()))?;
    let mut config = base;
    let (mut mps, mut mrrs, mut rcb) = (
        config.hello.link.max_payload_size(),
        config.hello.link.max_read_request_size(),
        config.hello.link.read_completion_boundary(),
    );
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) =
            pair.split_once('=').ok_or_else(|| err(format!("option {pair:?} is not KEY=VALUE")))?;
        let number = || value.parse::<u32>().map_err(|_| err(format!("{key}={value}: not a number")));
        let size = || u16::try_from(number()?).map_err(|_| err(format!("{key}={value}: too large")));
        match key {
            "mode" => {
                config.hello.mode = match value {
                    "lockstep" => SimMode::Lockstep,
                    "free" | "free-running" => SimMode::FreeRunning,
                    _ => return Err(err(format!("mode={value}: expected lockstep or free"))),
                }
            }
            "mps" => mps = size()?,
            "mrrs" => mrrs = size()?,
            "rcb" => rcb = size()?,
            "tick-ps" => config.hello.ps_per_tick = number()?,
            "latency" => config.hello.link_latency_ticks = number()?,
            "capacity" => config.capacity = number()?.max(1) as usize,
            "tags" => {
                config.hello.tag_flags = match value {
                    "5" => 0,
                    "8" => wire::hello_flags::EXTENDED_TAG,
                    "10" => wire::hello_flags::EXTENDED_TAG | wire::hello_flags::TEN_BIT_TAG,
                    _ => return Err(err(format!("tags={value}: expected 5, 8 or 10"))),
                }
            }
            _ => {
                return Err(err(format!(
                    "unknown option {key:?} (mode, mps, mrrs, rcb, tick-ps, tags, latency, capacity)"
                )));
            }
        }
    }
    config.hello.link = LinkParams::new(mps, mrrs, rcb).map_err(|e| err(e.to_string()))?;
    Ok((host_port.to_owned(), config))
}

/// Bridge side, for a link registry that hands over a kind and an address string: kind `sim`
/// connects, `sim-listen` listens; the address is `HOST:PORT[?OPTIONS]` as
/// [`parse_bridge_address`] reads it, on top of [`BridgeConfig::default`].
pub async fn open_kind(kind: &str, address: &str) -> Result<Link> {
    let (host_port, config) = parse_bridge_address(address, BridgeConfig::default())?;
    match kind {
        "sim" => connect(&host_port, &config).await,
        "sim-listen" => listen(&host_port, &config).await,
        other => Err(Error::SimAddress {
            input: format!("{other}://{address}"),
            reason: "the sim link kinds are sim (connect) and sim-listen (listen)".into(),
        }),
    }
}

/// The link parameters both sides state in their HELLO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloParams {
    pub mode: SimMode,
    /// Picoseconds per tick ([`wire::ANY_TICK`] on the bridge: accept the simulator's).
    pub ps_per_tick: u32,
    pub link: LinkParams,
    /// [`wire::hello_flags`] bits.
    pub tag_flags: u16,
    /// Link latency in ticks ([`wire::ANY_LATENCY`] on the bridge: accept any).
    pub link_latency_ticks: u32,
}

impl HelloParams {
    pub(crate) fn hello(&self, role: Role) -> Hello {
        Hello {
            version: wire::PROTOCOL_VERSION,
            role,
            mode: self.mode,
            ps_per_tick: self.ps_per_tick,
            mps: self.link.max_payload_size(),
            mrrs: self.link.max_read_request_size(),
            rcb: self.link.read_completion_boundary(),
            flags: self.tag_flags,
            link_latency_ticks: self.link_latency_ticks,
        }
    }
}

/// A bound listening socket that accepts one peer (either role).
#[derive(Debug)]
pub struct SimListener {
    listener: TcpListener,
}

impl SimListener {
    pub async fn bind(addr: &str) -> Result<SimListener> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::SimIo { context: format!("listening on {addr}"), source })?;
        Ok(SimListener { listener })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|source| Error::SimIo { context: "reading the listening address".into(), source })
    }

    async fn accept(&self, timeout: Option<Duration>) -> Result<TcpStream> {
        let accept = self.listener.accept();
        let (stream, peer) = match timeout {
            Some(t) => tokio::time::timeout(t, accept)
                .await
                .map_err(|_| Error::SimTimeout { what: "a peer connecting".into(), timeout: t })?,
            None => accept.await,
        }
        .map_err(|source| Error::SimIo { context: "accepting a connection".into(), source })?;
        tracing::info!(%peer, "sim link: peer connected");
        prepare(&stream)?;
        Ok(stream)
    }

    /// Waits (without limit: the simulator may take long to build) for a simulator, does the
    /// hello exchange and returns the bridge's link, which ends with this one simulator session.
    pub async fn accept_bridge(&self, config: &BridgeConfig) -> Result<Link> {
        let stream = self.accept(None).await?;
        bridge::start(stream, config, None).await
    }

    /// Like [`accept_bridge`](Self::accept_bridge), but the link keeps this listener and
    /// survives the simulator: a session that ends without CLOSE reports `Down`, the next
    /// simulator to connect and pass the hello starts a new session and the link reports `Up`.
    /// Only an orderly CLOSE (or the engine dropping the link) ends it. A failed first hello is
    /// returned as an error; later failed hellos are logged and the listener waits on.
    pub async fn serve_bridge(self, config: &BridgeConfig) -> Result<Link> {
        let stream = self.accept(None).await?;
        bridge::start(stream, config, Some(self)).await
    }

    /// Waits up to `config.connect_timeout` for a bridge and does the hello exchange.
    pub async fn accept_simulator(&self, config: &SimulatorConfig) -> Result<SimulatorEnd> {
        let stream = self.accept(Some(config.connect_timeout)).await?;
        SimulatorEnd::start(stream, config).await
    }
}

/// Bridge side: connects to a simulator listening at `addr` (`HOST:PORT`).
pub async fn connect(addr: &str, config: &BridgeConfig) -> Result<Link> {
    let stream = connect_stream(addr, config.connect_timeout).await?;
    bridge::start(stream, config, None).await
}

/// Bridge side: listens on `addr`, accepts a simulator and keeps accepting the next one after
/// each session that ends without CLOSE ([`SimListener::serve_bridge`]).
pub async fn listen(addr: &str, config: &BridgeConfig) -> Result<Link> {
    SimListener::bind(addr).await?.serve_bridge(config).await
}

/// Bridge side: [`connect`] or [`listen`] as the address says.
pub async fn open(address: &SimAddress, config: &BridgeConfig) -> Result<Link> {
    match address {
        SimAddress::Connect(a) => connect(a, config).await,
        SimAddress::Listen(a) => listen(a, config).await,
    }
}

pub(crate) async fn connect_stream(addr: &str, timeout: Duration) -> Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| Error::SimTimeout { what: format!("connecting to {addr}"), timeout })?
        .map_err(|source| Error::SimIo { context: format!("connecting to {addr}"), source })?;
    prepare(&stream)?;
    Ok(stream)
}

fn prepare(stream: &TcpStream) -> Result<()> {
    // Frames are small and latency-bound; Nagle would hold a TLP back waiting for the next.
    stream.set_nodelay(true).map_err(|source| Error::SimIo { context: "setting TCP_NODELAY".into(), source })
}

/// Read buffer of a connection: a burst of frames costs one `read` system call, not two per frame
/// (header, then payload).
const READ_BUFFER: usize = 64 * 1024;

/// What [`FrameReader::try_next`] found without waiting.
pub(crate) enum TryFrame {
    Message(wire::Message),
    /// Nothing complete has arrived yet.
    Pending,
    /// The peer closed the connection cleanly between frames.
    End,
}

/// The frames arriving on the read half of a connection, decoded out of one buffer: a burst of
/// frames costs one `read`, nothing is zero-filled, and a TLP's bytes are not copied at all (its
/// message holds a slice of the buffer; the buffer's storage is reused once every slice of it
/// has been dropped, else a new one is allocated per burst, not per TLP). Both `next` and
/// `try_next` are cancel-safe: bytes read are kept in the buffer until a whole frame is there.
#[derive(Debug)]
pub(crate) struct FrameReader {
    read: tokio::net::tcp::OwnedReadHalf,
    /// Bytes read and not yet decoded.
    buf: BytesMut,
}

impl FrameReader {
    pub(crate) fn new(read: tokio::net::tcp::OwnedReadHalf) -> Self {
        FrameReader { read, buf: BytesMut::with_capacity(READ_BUFFER) }
    }

    /// The next frame already buffered, if a whole one is.
    fn decode(&mut self) -> Result<Option<wire::Message>> {
        wire::split_frame(&mut self.buf)
    }

    /// Makes room for at least a whole frame after the undecoded tail, so that the spare capacity
    /// takes a burst: the storage is reclaimed in place when no decoded TLP still shares it, or a
    /// new one is allocated (the tail, at most one partial frame, moves along).
    fn make_room(&mut self) {
        let frame = wire::HEADER_LEN + wire::MAX_PAYLOAD_LEN;
        if self.buf.capacity() - self.buf.len() < frame {
            self.buf.reserve(READ_BUFFER.max(frame));
        }
    }

    /// What a read of `n` bytes means: `Ok(false)` at a clean end of stream.
    fn after_read(&self, n: usize) -> Result<bool> {
        if n > 0 {
            return Ok(true);
        }
        let partial = self.buf.len();
        if partial == 0 {
            Ok(false)
        } else {
            Err(Error::SimProtocol(format!(
                "connection closed inside a frame ({partial} bytes of it received)"
            )))
        }
    }

    fn read_error(source: std::io::Error) -> Error {
        Error::SimIo { context: "reading frames".into(), source }
    }

    /// The next frame, waiting for it. `Ok(None)` at a clean end of stream between frames.
    pub(crate) async fn next(&mut self) -> Result<Option<wire::Message>> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(message) = self.decode()? {
                return Ok(Some(message));
            }
            self.make_room();
            let n = self.read.read_buf(&mut self.buf).await.map_err(Self::read_error)?;
            if !self.after_read(n)? {
                return Ok(None);
            }
        }
    }

    /// The next frame if one has arrived, without waiting.
    pub(crate) fn try_next(&mut self) -> Result<TryFrame> {
        loop {
            if let Some(message) = self.decode()? {
                return Ok(TryFrame::Message(message));
            }
            self.make_room();
            match self.read.try_read_buf(&mut self.buf) {
                Ok(n) => {
                    if !self.after_read(n)? {
                        return Ok(TryFrame::End);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(TryFrame::Pending),
                Err(e) => return Err(Self::read_error(e)),
            }
        }
    }
}

/// Sends our HELLO, reads the peer's and checks it. On a mismatch the peer is told why in an
/// ERROR frame before the error is returned.
pub(crate) async fn handshake(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    incoming: &mut FrameReader,
    ours: &Hello,
    timeout: Duration,
) -> Result<Hello> {
    write_message(write, &wire::Message::Hello(*ours)).await?;
    let received = tokio::time::timeout(timeout, incoming.next())
        .await
        .map_err(|_| Error::SimTimeout { what: "the peer's HELLO".into(), timeout })?
        .transpose();
    let peer = match received {
        Some(Ok(wire::Message::Hello(peer))) => peer,
        Some(Ok(wire::Message::Error { code, message })) => {
            return Err(Error::SimPeerError { code, message });
        }
        Some(Ok(other)) => {
            let e = Error::SimProtocol(format!("expected HELLO first, got {}", other.name()));
            send_error(write, &e).await;
            return Err(e);
        }
        Some(Err(e)) => {
            send_error(write, &e).await;
            return Err(e);
        }
        None => return Err(Error::SimClosed("the peer closed the connection before its HELLO".into())),
    };
    if let Err(e) = ours.check_peer(&peer) {
        send_error(write, &e).await;
        return Err(e);
    }
    tracing::info!(?peer, "sim link: hello exchanged");
    Ok(peer)
}

pub(crate) async fn write_message(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    message: &wire::Message,
) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    write
        .write_all(&message.to_frame())
        .await
        .map_err(|source| Error::SimIo { context: format!("sending a {} frame", message.name()), source })
}

/// The ERROR code that reports `e` to the peer.
pub(crate) fn error_code_for(e: &Error) -> u16 {
    match e {
        Error::SimFrame { code, .. } => *code,
        Error::HelloMismatch { .. } => wire::error_code::HELLO_MISMATCH,
        Error::SimProtocol(_) => wire::error_code::PROTOCOL,
        Error::SimTimeout { .. } => wire::error_code::TIMEOUT,
        _ => wire::error_code::INTERNAL,
    }
}

/// Best effort: tells the peer why we are closing (it may already be gone).
pub(crate) async fn send_error(write: &mut tokio::net::tcp::OwnedWriteHalf, e: &Error) {
    let message = wire::Message::Error { code: error_code_for(e), message: e.to_string() };
    if let Err(send) = write_message(write, &message).await {
        tracing::debug!(error = %send, "sim link: could not send ERROR to the peer");
    }
}

/// Ticks to picoseconds, saturating.
pub(crate) fn ticks_to_picos(ticks: u64, ps_per_tick: u32) -> u64 {
    ticks.saturating_mul(u64::from(ps_per_tick))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_both_directions_and_reject_junk() {
        assert_eq!(
            SimAddress::parse("sim://127.0.0.1:7000").unwrap(),
            SimAddress::Connect("127.0.0.1:7000".into())
        );
        assert_eq!(SimAddress::parse("sim-listen://[::1]:0").unwrap(), SimAddress::Listen("[::1]:0".into()));
        assert_eq!(SimAddress::parse("sim://h:1").unwrap().to_string(), "sim://h:1");
        for bad in ["tcp://h:1", "sim://h", "sim://:1", "sim://h:port", "sim://h:70000"] {
            assert!(SimAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bridge_address_options_set_the_hello() {
        let (addr, config) = parse_bridge_address(
            "127.0.0.1:7000?mode=lockstep&mps=256&rcb=128&tags=10&tick-ps=500",
            BridgeConfig::default(),
        )
        .unwrap();
        assert_eq!(addr, "127.0.0.1:7000");
        assert_eq!(config.hello.mode, SimMode::Lockstep);
        assert_eq!(config.hello.link, LinkParams::new(256, 512, 128).unwrap());
        assert_eq!(config.hello.tag_flags, wire::hello_flags::ALL);
        assert_eq!(config.hello.ps_per_tick, 500);
        let (_, plain) = parse_bridge_address("h:1", BridgeConfig::default()).unwrap();
        assert_eq!(plain.hello, BridgeConfig::default().hello);
        for bad in ["h:1?mps=100", "h:1?mode=fast", "h:1?colour=red", "h:1?mps", "h", "h:1?tags=9"] {
            assert!(parse_bridge_address(bad, BridgeConfig::default()).is_err(), "{bad}");
        }
    }
}
