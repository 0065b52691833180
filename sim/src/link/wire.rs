//! The sim-link wire format: frames and messages (see `docs/sim-protocol.md`, which matches this
//! file field for field).
//!
//! Every frame is an 8-byte header followed by `length` payload bytes. All integers are
//! little-endian: every machine that runs Verilator, Icarus or cocotb today is little-endian, so a C
//! peer can `memcpy` the header into a packed struct and a Python peer uses `struct.unpack("<...")`.
//! TLP bytes inside a TLP message are the exception: they are carried verbatim, in wire order
//! (big-endian DWs), exactly as a root port emits them.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

use transports::link::LinkEvent;

use crate::error::{Error, Result};

/// Header field byte ranges.
mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..2;
    pub const TYPE: usize = 2;
    pub const FLAGS: usize = 3;
    pub const LENGTH: Range<usize> = 4..8;
}

/// Frame header size in bytes.
pub const HEADER_LEN: usize = 8;
/// The two magic bytes every frame starts with: ASCII `"TS"` (TLP Sim).
pub const MAGIC: [u8; 2] = *b"TS";
/// The protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The largest TLP a TLP message may carry: 8 prefixes (32 bytes), a 4DW header (16), 4096 bytes
/// of data and an ECRC digest (4).
pub const MAX_TLP_LEN: usize = 32 + 16 + 4096 + 4;
/// The largest payload of any frame: a TLP message (8-byte time + the largest TLP). A header
/// announcing more is rejected before anything is allocated.
pub const MAX_PAYLOAD_LEN: usize = 8 + MAX_TLP_LEN;
/// Hello payload size.
pub const HELLO_LEN: usize = 24;

/// Message type codes (header byte 2).
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const TLP: u8 = 0x02;
    pub const TIME: u8 = 0x03;
    pub const TIME_ACK: u8 = 0x04;
    pub const EVENT: u8 = 0x05;
    pub const CLOSE: u8 = 0x06;
    pub const ERROR: u8 = 0x07;
}

/// Error codes carried by ERROR messages.
pub mod error_code {
    /// The peers' hellos are incompatible (version, mode, time unit, link parameters, role).
    pub const HELLO_MISMATCH: u16 = 1;
    /// A frame could not be decoded (bad magic, flags, length, payload size, field value).
    pub const MALFORMED: u16 = 2;
    /// The frame type is unknown to the receiver.
    pub const UNKNOWN_TYPE: u16 = 3;
    /// A well-formed message that is not allowed now (e.g. a TLP before HELLO, TIME_ACK from
    /// the simulator, time running backwards).
    pub const PROTOCOL: u16 = 4;
    /// The sender gave up waiting (e.g. lockstep acknowledgement overdue).
    pub const TIMEOUT: u16 = 5;
    /// Anything else; the text says what.
    pub const INTERNAL: u16 = 6;
}

/// Which end of the link a peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The side that hosts the root port (an RTL simulation or the reference root complex).
    Simulator,
    /// tlpbridge, which hosts the device side.
    Bridge,
}

impl Role {
    fn code(self) -> u8 {
        match self {
            Role::Simulator => 0,
            Role::Bridge => 1,
        }
    }
}

/// How simulated time is paced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SimMode {
    /// The simulator never waits; it reports time with TIME messages as it goes.
    FreeRunning,
    /// Every TIME message is a step the bridge acknowledges (TIME_ACK) once it has handled
    /// everything received before it; the simulator waits for the acknowledgement.
    Lockstep,
}

impl SimMode {
    fn code(self) -> u8 {
        match self {
            SimMode::FreeRunning => 0,
            SimMode::Lockstep => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SimMode::FreeRunning => "free-running",
            SimMode::Lockstep => "lockstep",
        }
    }
}

impl fmt::Display for SimMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Hello flag bits (payload bytes 14..16).
pub mod hello_flags {
    /// 8-bit (extended) tags are enabled on the link.
    pub const EXTENDED_TAG: u16 = 1 << 0;
    /// 10-bit tags are enabled on the link.
    pub const TEN_BIT_TAG: u16 = 1 << 1;
    /// Every defined bit.
    pub const ALL: u16 = EXTENDED_TAG | TEN_BIT_TAG;
}

/// `ps_per_tick` value meaning "whatever the simulator uses" (bridge only).
pub const ANY_TICK: u32 = 0;
/// `link_latency_ticks` value meaning "any latency" (bridge only).
pub const ANY_LATENCY: u32 = u32::MAX;

/// The HELLO message: what each side states about itself and the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub role: Role,
    pub mode: SimMode,
    /// Picoseconds per simulator tick; every time field counts ticks. The bridge may send
    /// [`ANY_TICK`] to accept the simulator's unit.
    pub ps_per_tick: u32,
    /// Max_Payload_Size, Max_Read_Request_Size and Read Completion Boundary in bytes.
    pub mps: u16,
    pub mrrs: u16,
    pub rcb: u16,
    /// [`hello_flags`] bits.
    pub flags: u16,
    /// One-way link latency the simulator models, in ticks ([`ANY_LATENCY`]: bridge accepts any).
    pub link_latency_ticks: u32,
}

/// Hello payload field ranges.
mod hello_field {
    use std::ops::Range;
    pub const VERSION: Range<usize> = 0..2;
    pub const ROLE: usize = 2;
    pub const MODE: usize = 3;
    pub const PS_PER_TICK: Range<usize> = 4..8;
    pub const MPS: Range<usize> = 8..10;
    pub const MRRS: Range<usize> = 10..12;
    pub const RCB: Range<usize> = 12..14;
    pub const FLAGS: Range<usize> = 14..16;
    pub const LINK_LATENCY: Range<usize> = 16..20;
    pub const RESERVED: Range<usize> = 20..24;
}

impl Hello {
    /// Checks a hello received from the peer against ours; every incompatibility is listed, so
    /// the error names all fields to fix at once.
    pub fn check_peer(&self, peer: &Hello) -> Result<()> {
        let mut problems = Vec::new();
        if peer.version != self.version {
            problems.push(format!("protocol version: ours {}, peer {}", self.version, peer.version));
        }
        if peer.role == self.role {
            problems.push(format!("both sides are the {:?}; one side must be the simulator", self.role));
        }
        if peer.mode != self.mode {
            problems.push(format!("time mode: ours {}, peer {}", self.mode, peer.mode));
        }
        match (self.ps_per_tick, peer.ps_per_tick) {
            (ANY_TICK, ANY_TICK) => problems.push("neither side states picoseconds per tick".into()),
            (ANY_TICK, _) | (_, ANY_TICK) => {}
            (ours, theirs) if ours != theirs => {
                problems.push(format!("picoseconds per tick: ours {ours}, peer {theirs}"))
            }
            _ => {}
        }
        for (name, ours, theirs) in [
            ("Max_Payload_Size", self.mps, peer.mps),
            ("Max_Read_Request_Size", self.mrrs, peer.mrrs),
            ("Read Completion Boundary", self.rcb, peer.rcb),
        ] {
            if ours != theirs {
                problems.push(format!("{name}: ours {ours} bytes, peer {theirs} bytes"));
            }
        }
        if self.flags != peer.flags {
            problems.push(format!(
                "tag support (bit 0 extended, bit 1 10-bit): ours {:#06b}, peer {:#06b}",
                self.flags, peer.flags
            ));
        }
        match (self.link_latency_ticks, peer.link_latency_ticks) {
            (ANY_LATENCY, _) | (_, ANY_LATENCY) => {}
            (ours, theirs) if ours != theirs => {
                problems.push(format!("link latency: ours {ours} ticks, peer {theirs} ticks"))
            }
            _ => {}
        }
        if problems.is_empty() { Ok(()) } else { Err(Error::HelloMismatch { problems: problems.join("; ") }) }
    }

    /// The picoseconds per tick both sides agreed on (the non-wildcard one).
    pub fn agreed_ps_per_tick(&self, peer: &Hello) -> u32 {
        if self.ps_per_tick == ANY_TICK { peer.ps_per_tick } else { self.ps_per_tick }
    }

    fn emit(&self, out: &mut [u8; HELLO_LEN]) {
        out[hello_field::VERSION].copy_from_slice(&self.version.to_le_bytes());
        out[hello_field::ROLE] = self.role.code();
        out[hello_field::MODE] = self.mode.code();
        out[hello_field::PS_PER_TICK].copy_from_slice(&self.ps_per_tick.to_le_bytes());
        out[hello_field::MPS].copy_from_slice(&self.mps.to_le_bytes());
        out[hello_field::MRRS].copy_from_slice(&self.mrrs.to_le_bytes());
        out[hello_field::RCB].copy_from_slice(&self.rcb.to_le_bytes());
        out[hello_field::FLAGS].copy_from_slice(&self.flags.to_le_bytes());
        out[hello_field::LINK_LATENCY].copy_from_slice(&self.link_latency_ticks.to_le_bytes());
        out[hello_field::RESERVED].fill(0);
    }

    fn parse(p: &[u8; HELLO_LEN]) -> Result<Hello> {
        let role = match p[hello_field::ROLE] {
            0 => Role::Simulator,
            1 => Role::Bridge,
            other => return Err(malformed(format!("HELLO role {other} is not 0 (simulator) or 1 (bridge)"))),
        };
        let mode = match p[hello_field::MODE] {
            0 => SimMode::FreeRunning,
            1 => SimMode::Lockstep,
            other => {
                return Err(malformed(format!("HELLO mode {other} is not 0 (free-running) or 1 (lockstep)")));
            }
        };
        let flags = le16(p, hello_field::FLAGS.start);
        if flags & !hello_flags::ALL != 0 {
            return Err(malformed(format!("HELLO flags {flags:#06x} set undefined bits")));
        }
        if le32(p, hello_field::RESERVED.start) != 0 {
            return Err(malformed("HELLO reserved bytes 20..24 are not zero".into()));
        }
        Ok(Hello {
            version: le16(p, hello_field::VERSION.start),
            role,
            mode,
            ps_per_tick: le32(p, hello_field::PS_PER_TICK.start),
            mps: le16(p, hello_field::MPS.start),
            mrrs: le16(p, hello_field::MRRS.start),
            rcb: le16(p, hello_field::RCB.start),
            flags,
            link_latency_ticks: le32(p, hello_field::LINK_LATENCY.start),
        })
    }
}

/// One message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    /// A TLP and the simulated time (ticks) at which it was sent. `bytes` may share the
    /// buffer the frame was read into ([`split_frame`]): no copy per TLP.
    Tlp {
        time: u64,
        bytes: Bytes,
    },
    /// Simulator → bridge: simulated time has reached `time` ticks.
    Time {
        time: u64,
    },
    /// Bridge → simulator (lockstep): the step to `time` is acknowledged.
    TimeAck {
        time: u64,
    },
    /// Simulator → bridge: a link event at `time`.
    Event {
        time: u64,
        event: LinkEvent,
    },
    /// Orderly close: the sender sends nothing more.
    Close,
    /// The sender hit an error and closes the connection after this frame.
    Error {
        code: u16,
        message: String,
    },
}

/// Event codes in EVENT messages.
pub mod event_code {
    pub const LINK_UP: u8 = 1;
    pub const LINK_DOWN: u8 = 2;
    pub const HOT_RESET: u8 = 3;
}

fn event_to_code(event: LinkEvent) -> u8 {
    match event {
        LinkEvent::Up => event_code::LINK_UP,
        LinkEvent::Down => event_code::LINK_DOWN,
        LinkEvent::HotReset => event_code::HOT_RESET,
    }
}

fn malformed(reason: String) -> Error {
    Error::SimFrame { code: error_code::MALFORMED, reason }
}

fn le16(b: &[u8], at: usize) -> u16 {
    let mut v = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        v.copy_from_slice(s);
    }
    u16::from_le_bytes(v)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        v.copy_from_slice(s);
    }
    u32::from_le_bytes(v)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        v.copy_from_slice(s);
    }
    u64::from_le_bytes(v)
}

/// A decoded frame header: type and payload length, checked against the limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: u8,
    pub length: u32,
}

/// Appends one TLP frame (header, time, TLP bytes) to `out`: the same bytes as
/// `Message::Tlp { time, bytes }.to_frame()`, without building the message, so that a writer can
/// put several frames in one buffer and one system call.
pub fn append_tlp_frame(out: &mut Vec<u8>, time: u64, bytes: &[u8]) {
    let header = FrameHeader { kind: kind::TLP, length: (8 + bytes.len()) as u32 };
    out.extend_from_slice(&header.emit());
    out.extend_from_slice(&time.to_le_bytes());
    out.extend_from_slice(bytes);
}

impl FrameHeader {
    /// Checks magic, flags and that the length is within [`MAX_PAYLOAD_LEN`] (so the caller may
    /// allocate `length` bytes). The type is checked when the payload is parsed.
    pub fn parse(h: &[u8; HEADER_LEN]) -> Result<FrameHeader> {
        if h[field::MAGIC] != MAGIC {
            return Err(malformed(format!(
                "bad magic {:02x} {:02x} (expected 54 53, \"TS\"): not a sim-link peer or out of sync",
                h[0], h[1]
            )));
        }
        if h[field::FLAGS] != 0 {
            return Err(malformed(format!("header flags byte is {:#04x}, must be 0", h[field::FLAGS])));
        }
        let length = le32(h, field::LENGTH.start);
        if length as usize > MAX_PAYLOAD_LEN {
            return Err(malformed(format!(
                "frame type {:#04x} announces {length} payload bytes; the maximum is {MAX_PAYLOAD_LEN}",
                h[field::TYPE]
            )));
        }
        Ok(FrameHeader { kind: h[field::TYPE], length })
    }

    pub fn emit(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[field::MAGIC].copy_from_slice(&MAGIC);
        h[field::TYPE] = self.kind;
        h[field::FLAGS] = 0;
        h[field::LENGTH].copy_from_slice(&self.length.to_le_bytes());
        h
    }
}

impl Message {
    /// The type code of this message.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Hello(_) => kind::HELLO,
            Message::Tlp { .. } => kind::TLP,
            Message::Time { .. } => kind::TIME,
            Message::TimeAck { .. } => kind::TIME_ACK,
            Message::Event { .. } => kind::EVENT,
            Message::Close => kind::CLOSE,
            Message::Error { .. } => kind::ERROR,
        }
    }

    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        kind_name(self.kind())
    }

    /// Parses the payload of a frame of type `kind`.
    pub fn parse(kind: u8, payload: &[u8]) -> Result<Message> {
        let exact = |want: usize| -> Result<()> {
            if payload.len() == want {
                Ok(())
            } else {
                Err(malformed(format!(
                    "{} payload is {} bytes, must be {want}",
                    kind_name(kind),
                    payload.len()
                )))
            }
        };
        match kind {
            kind::HELLO => {
                let p: &[u8; HELLO_LEN] = payload.try_into().map_err(|_| {
                    malformed(format!("HELLO payload is {} bytes, must be {HELLO_LEN}", payload.len()))
                })?;
                Ok(Message::Hello(Hello::parse(p)?))
            }
            kind::TLP => {
                let time = tlp_payload_time(payload)?;
                Ok(Message::Tlp { time, bytes: Bytes::copy_from_slice(payload.get(8..).unwrap_or(&[])) })
            }
            kind::TIME => {
                exact(8)?;
                Ok(Message::Time { time: le64(payload, 0) })
            }
            kind::TIME_ACK => {
                exact(8)?;
                Ok(Message::TimeAck { time: le64(payload, 0) })
            }
            kind::EVENT => {
                exact(12)?;
                let (code, reserved) = (payload.get(8).copied(), payload.get(9..12));
                let event = match code.unwrap_or(0) {
                    event_code::LINK_UP => LinkEvent::Up,
                    event_code::LINK_DOWN => LinkEvent::Down,
                    event_code::HOT_RESET => LinkEvent::HotReset,
                    other => return Err(malformed(format!("EVENT code {other} is not 1, 2 or 3"))),
                };
                if reserved != Some(&[0, 0, 0][..]) {
                    return Err(malformed("EVENT reserved bytes 9..12 are not zero".into()));
                }
                Ok(Message::Event { time: le64(payload, 0), event })
            }
            kind::CLOSE => {
                exact(0)?;
                Ok(Message::Close)
            }
            kind::ERROR => {
                if payload.len() < 4 {
                    return Err(malformed(format!("ERROR payload is {} bytes, at least 4", payload.len())));
                }
                let message = String::from_utf8_lossy(payload.get(4..).unwrap_or(&[])).into_owned();
                Ok(Message::Error { code: le16(payload, 0), message })
            }
            other => Err(Error::SimFrame {
                code: error_code::UNKNOWN_TYPE,
                reason: format!("unknown frame type {other:#04x}"),
            }),
        }
    }

    /// The whole frame: header and payload. An ERROR text is cut to fit the maximum payload.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut payload: Vec<u8> = Vec::new();
        match self {
            Message::Hello(h) => {
                let mut p = [0u8; HELLO_LEN];
                h.emit(&mut p);
                payload.extend_from_slice(&p);
            }
            Message::Tlp { time, bytes } => {
                payload.extend_from_slice(&time.to_le_bytes());
                payload.extend_from_slice(bytes);
            }
            Message::Time { time } | Message::TimeAck { time } => {
                payload.extend_from_slice(&time.to_le_bytes())
            }
            Message::Event { time, event } => {
                payload.extend_from_slice(&time.to_le_bytes());
                payload.extend_from_slice(&[event_to_code(*event), 0, 0, 0]);
            }
            Message::Close => {}
            Message::Error { code, message } => {
                payload.extend_from_slice(&code.to_le_bytes());
                payload.extend_from_slice(&[0, 0]);
                let text = truncate_utf8(message, MAX_PAYLOAD_LEN - 4);
                payload.extend_from_slice(text.as_bytes());
            }
        }
        let header = FrameHeader { kind: self.kind(), length: payload.len() as u32 };
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
        frame.extend_from_slice(&header.emit());
        frame.extend_from_slice(&payload);
        frame
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The name of a frame type, `"unknown"` for codes this version does not define.
pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        kind::HELLO => "HELLO",
        kind::TLP => "TLP",
        kind::TIME => "TIME",
        kind::TIME_ACK => "TIME_ACK",
        kind::EVENT => "EVENT",
        kind::CLOSE => "CLOSE",
        kind::ERROR => "ERROR",
        _ => "unknown",
    }
}

/// Decodes one frame from the start of `buf`: `Ok(None)` when more bytes are needed,
/// `Ok(Some((message, consumed)))` otherwise. Never reads past `HEADER_LEN + MAX_PAYLOAD_LEN`
/// bytes and never allocates more than the payload it returns.
/// Checks a TLP frame's payload (an 8-byte time, then 4..=`MAX_TLP_LEN` TLP bytes in whole DWs)
/// and returns the time.
fn tlp_payload_time(payload: &[u8]) -> Result<u64> {
    let bytes = payload.get(8..).unwrap_or(&[]);
    if payload.len() < 8 + 4 || bytes.len() % 4 != 0 || bytes.len() > MAX_TLP_LEN {
        return Err(malformed(format!(
            "TLP payload is {} bytes: need an 8-byte time and 4..={MAX_TLP_LEN} TLP bytes in whole DWs",
            payload.len()
        )));
    }
    Ok(le64(payload, 0))
}

/// [`decode_frame`] that takes the frame off the front of `buf`: a TLP's bytes are a slice of
/// `buf`'s storage (no allocation, no copy), other messages are parsed and their frame dropped.
/// `Ok(None)` (nothing taken) while the frame is incomplete; nothing is taken on error either.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<Message>> {
    let Some(h) = buf.first_chunk::<HEADER_LEN>() else { return Ok(None) };
    let header = FrameHeader::parse(h)?;
    let end = HEADER_LEN + header.length as usize;
    let Some(payload) = buf.get(HEADER_LEN..end) else { return Ok(None) };
    if header.kind == kind::TLP {
        let time = tlp_payload_time(payload)?;
        let frame = buf.split_to(end).freeze();
        return Ok(Some(Message::Tlp { time, bytes: frame.slice(HEADER_LEN + 8..) }));
    }
    let message = Message::parse(header.kind, payload)?;
    buf.advance(end);
    Ok(Some(message))
}

pub fn decode_frame(buf: &[u8]) -> Result<Option<(Message, usize)>> {
    let Some(h) = buf.first_chunk::<HEADER_LEN>() else { return Ok(None) };
    let header = FrameHeader::parse(h)?;
    let end = HEADER_LEN + header.length as usize;
    match buf.get(HEADER_LEN..end) {
        Some(payload) => Ok(Some((Message::parse(header.kind, payload)?, end))),
        None => Ok(None),
    }
}

/// Reads one frame from an async byte stream. `Ok(None)` on a clean end of stream before the
/// first header byte.
pub async fn read_message<R: tokio::io::AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Message>> {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = reader
            .read(&mut h[got..])
            .await
            .map_err(|source| Error::SimIo { context: "reading a frame header".into(), source })?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(Error::SimProtocol(format!(
                "connection closed inside a frame header ({got} of 8 bytes)"
            )));
        }
        got += n;
    }
    let header = FrameHeader::parse(&h)?;
    let mut payload = vec![0u8; header.length as usize];
    reader.read_exact(&mut payload).await.map_err(|source| Error::SimIo {
        context: format!("reading the {}-byte payload of a {} frame", header.length, kind_name(header.kind)),
        source,
    })?;
    Message::parse(header.kind, &payload).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_tlp_frame_equals_message_frame() {
        let bytes = vec![0x40, 0x00, 0x00, 0x01, 0, 0, 0, 0x0f, 0x80, 0, 0, 0x10, 1, 2, 3, 4];
        let mut out = vec![0xee];
        append_tlp_frame(&mut out, 0x0102_0304_0506, &bytes);
        assert_eq!(out[1..], Message::Tlp { time: 0x0102_0304_0506, bytes: bytes.into() }.to_frame());
    }

    fn hello() -> Hello {
        Hello {
            version: 1,
            role: Role::Simulator,
            mode: SimMode::Lockstep,
            ps_per_tick: 1000,
            mps: 256,
            mrrs: 512,
            rcb: 64,
            flags: hello_flags::EXTENDED_TAG,
            link_latency_ticks: 100,
        }
    }

    #[test]
    fn hello_frame_matches_the_documented_bytes() {
        let frame = Message::Hello(hello()).to_frame();
        let expected: [u8; 32] = [
            0x54, 0x53, 0x01, 0x00, 0x18, 0x00, 0x00, 0x00, // header: "TS", HELLO, flags 0, length 24
            0x01, 0x00, 0x00, 0x01, 0xe8, 0x03, 0x00, 0x00, // version 1, simulator, lockstep, 1000 ps
            0x00, 0x01, 0x00, 0x02, 0x40, 0x00, 0x01, 0x00, // MPS 256, MRRS 512, RCB 64, ext tag
            0x64, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // latency 100 ticks, reserved
        ];
        assert_eq!(frame, expected);
        assert_eq!(decode_frame(&frame).unwrap(), Some((Message::Hello(hello()), 32)));
    }

    #[test]
    fn tlp_frame_carries_time_then_wire_bytes() {
        let msg =
            Message::Tlp { time: 0x0102, bytes: vec![0x00, 0x00, 0x00, 0x01, 0xaa, 0xbb, 0xcc, 0xdd].into() };
        let frame = msg.to_frame();
        assert_eq!(&frame[..8], &[0x54, 0x53, 0x02, 0x00, 0x10, 0x00, 0x00, 0x00]);
        assert_eq!(&frame[8..16], &[0x02, 0x01, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_frame(&frame).unwrap(), Some((msg, 24)));
    }

    #[test]
    fn oversized_length_is_rejected_before_reading_the_payload() {
        let header = [0x54, 0x53, 0x02, 0x00, 0xff, 0xff, 0xff, 0x7f];
        let err = decode_frame(&header).unwrap_err().to_string();
        assert!(err.contains("announces 2147483647 payload bytes"), "{err}");
    }

    #[test]
    fn unknown_type_is_its_own_error_code() {
        let frame = FrameHeader { kind: 0x7e, length: 0 }.emit();
        match decode_frame(&frame) {
            Err(Error::SimFrame { code, reason }) => {
                assert_eq!(code, error_code::UNKNOWN_TYPE);
                assert!(reason.contains("0x7e"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_frames_need_more_bytes() {
        let frame = Message::Time { time: 5 }.to_frame();
        for cut in 0..frame.len() {
            assert_eq!(decode_frame(&frame[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn hello_mismatch_lists_every_field() {
        let ours = Hello { role: Role::Bridge, ..hello() };
        let peer = Hello { mps: 128, mode: SimMode::FreeRunning, ps_per_tick: 2000, ..hello() };
        let err = ours.check_peer(&peer).unwrap_err().to_string();
        assert!(err.contains("Max_Payload_Size: ours 256 bytes, peer 128 bytes"), "{err}");
        assert!(err.contains("time mode: ours lockstep, peer free-running"), "{err}");
        assert!(err.contains("picoseconds per tick: ours 1000, peer 2000"), "{err}");
        let any =
            Hello { role: Role::Bridge, ps_per_tick: ANY_TICK, link_latency_ticks: ANY_LATENCY, ..hello() };
        any.check_peer(&hello()).unwrap();
        assert_eq!(any.agreed_ps_per_tick(&hello()), 1000);
        assert!(hello().check_peer(&hello()).unwrap_err().to_string().contains("both sides"));
    }
}
