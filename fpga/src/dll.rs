//! The reliable data-link layer of the serial and stream links: a sans-I/O state machine, the
//! same on the bridge side and the FPGA (emulator) side.
//!
//! Drive it with [`Dll::on_bytes`] (bytes from the wire), [`Dll::poll_transmit`] (bytes to
//! write), [`Dll::on_timer`] (at [`Dll::poll_timeout`]); hand it TLPs with [`Dll::send_tlp`] and
//! take what arrived with [`Dll::poll_delivery`]. Times are [`Duration`]s since any fixed origin.
//!
//! The protocol (`docs/fpga-link.md`): a HELLO handshake brings the link up and resets both
//! sides' sequence numbers. Each side starts a new session (a 32-bit identifier in its HELLO)
//! every time it goes down, and goes up only on a HELLO that echoes its current session, so a
//! HELLO sent before a link reset can never bring a side up alone (which would let frames of the
//! old session be accepted with restarted sequence numbers: TLPs delivered twice or never).
//! Going down reports every TLP not yet acknowledged as lost, so a TLP is delivered at most once
//! and the sender learns of every one not known to be delivered. TLP frames carry 16-bit sequence numbers; the receiver accepts only
//! the next one in order and acknowledges cumulatively (ACK), or asks for a go-back-N replay
//! (NAK) when it sees a gap or a damaged frame; the sender keeps unacknowledged frames in a
//! replay buffer and resends them on NAK or when its replay timer expires. ACK/NAK also carry
//! the receiver's credit limit: the sender never has more TLP frames outstanding than the
//! receiver has buffers. An idle side sends an ACK every keep-alive interval; silence for
//! `missed_keepalives` of the peer's intervals takes the link down.

use std::collections::VecDeque;
use std::time::Duration;

use crate::framing::{Deframer, FrameRepr, Hello, MAX_TLP_BYTES, VERSION, cobs, field, field::flags};

/// One side's configuration.
#[derive(Clone, Debug)]
pub struct DllConfig {
    /// What this side announces. `flags` may hold [`flags::TIMESTAMPS`]; the handshake flags and
    /// the session fields are managed by the state machine.
    pub hello: Hello,
    /// Resend unacknowledged frames when the oldest has waited this long for an ACK (plus
    /// [`REPLAY_FRAMES_IN_THE_WAY`] times the time the line takes to send the largest frame
    /// seen on this link, when `byte_time` is known).
    pub replay_timeout: Duration,
    /// Time the line takes to carry one byte (serial links); zero where that is unknown or
    /// negligible.
    pub byte_time: Duration,
    /// Resend HELLO this often while the link is down.
    pub hello_interval: Duration,
    /// The link goes down after this many of the peer's keep-alive intervals without a frame.
    pub missed_keepalives: u32,
    /// TLPs accepted by [`Dll::send_tlp`] but waiting for credits.
    pub tx_queue: usize,
}

impl DllConfig {
    /// Defaults for a side that buffers `credits` TLP frames.
    pub fn new(credits: u16) -> Self {
        DllConfig {
            hello: Hello {
                version: VERSION,
                flags: 0,
                mps: 256,
                mrrs: 512,
                rcb: 64,
                tag_bits: 8,
                credits: credits.clamp(1, MAX_CREDITS),
                max_tlp: MAX_TLP_BYTES as u16,
                keepalive_ms: 100,
                session: 0,
                peer_session: 0,
            },
            replay_timeout: Duration::from_millis(200),
            byte_time: Duration::ZERO,
            hello_interval: Duration::from_millis(100),
            missed_keepalives: 5,
            tx_queue: 32,
        }
    }
}

/// How many frames of the largest size seen may be on the line ahead of a frame and its ACK
/// (the peer's writer queue and a frame in progress each way) before its replay timer expires.
pub const REPLAY_FRAMES_IN_THE_WAY: u32 = 8;

/// Credits are limited so that sequence numbers of outstanding frames never wrap (half of 2^16).
pub const MAX_CREDITS: u16 = 0x7FFF;

/// What the link delivers to its user, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The handshake finished; the peer's parameters.
    Up(Hello),
    Tlp {
        tlp: Vec<u8>,
        timestamp: Option<u64>,
    },
    /// The link went down: `lost` TLPs this side had accepted were not acknowledged by the peer
    /// and are dropped; `reason` says why.
    Down {
        lost: usize,
        reason: DownReason,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownReason {
    /// No frame for `missed_keepalives` keep-alive intervals.
    KeepaliveTimeout,
    /// The peer restarted its handshake (link reset from the other side).
    PeerReset,
    /// [`Dll::reset`] was called (local link reset, or the device was reopened).
    LocalReset,
    /// [`Dll::hot_reset`] was called (this side's user, the root port, reset the hierarchy).
    LocalHotReset,
    /// The peer went down for a hot reset (its HELLO carried HOT_RESET).
    PeerHotReset,
}

impl DownReason {
    /// Whether the link went down for a hot reset (secondary bus reset) rather than a plain
    /// link reset or loss.
    pub fn is_hot_reset(self) -> bool {
        matches!(self, DownReason::LocalHotReset | DownReason::PeerHotReset)
    }
}

impl std::fmt::Display for DownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DownReason::KeepaliveTimeout => "keep-alive timeout",
            DownReason::PeerReset => "the peer reset the link",
            DownReason::LocalReset => "local link reset",
            DownReason::LocalHotReset => "local hot reset",
            DownReason::PeerHotReset => "the peer signalled a hot reset",
        })
    }
}

/// Why [`Dll::send_tlp`] refused a TLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the transmit queue is full")]
    QueueFull,
    #[error("the link is down")]
    Down,
    #[error("TLP of {len} bytes exceeds the peer's limit of {max} bytes per frame")]
    TooLarge { len: usize, max: usize },
    #[error("empty TLP")]
    Empty,
}

/// Counters, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DllStats {
    pub frames_sent: u64,
    pub frames_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub tlps_sent: u64,
    pub tlps_delivered: u64,
    /// TLP payload bytes (frame contents) sent the first time.
    pub tlp_bytes_sent: u64,
    /// TLP frames sent again (NAK or replay timeout).
    pub retransmissions: u64,
    pub replay_timeouts: u64,
    pub naks_sent: u64,
    pub naks_received: u64,
    /// Frames with a bad CRC, broken COBS, bad length or unknown type.
    pub bad_frames: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// TLP frames that arrived with no free buffer (the peer exceeded its credits).
    pub overruns: u64,
    /// Times this side's transmitter waited with TLPs queued and no credit.
    pub credit_stalls: u64,
    pub links_up: u64,
    pub links_down: u64,
}

#[derive(Debug)]
struct Unacked {
    seq: u16,
    wire: Vec<u8>,
    /// The TLP the frame carries (kept, not copied: it was moved out of `queued`).
    tlp: Vec<u8>,
}

/// The data-link state machine.
#[derive(Debug)]
pub struct Dll {
    config: DllConfig,
    deframer: Deframer,
    up: bool,
    peer: Option<Hello>,
    /// A peer HELLO arrived since this side last went down.
    peer_seen: bool,
    /// This side's session; a new one each time it goes down.
    session: u32,
    hello_pending: bool,
    next_hello: Duration,
    // transmit
    next_tx_seq: u16,
    replay: VecDeque<Unacked>,
    /// Index in `replay` of the next frame to (re)send.
    replay_cursor: usize,
    replay_started: Option<Duration>,
    /// The TLP of the frame the last `poll_transmit` resent, for [`Dll::take_replayed`].
    replayed: Option<Vec<u8>>,
    queued: VecDeque<(Vec<u8>, Option<u64>)>,
    /// New TLP frames sent since up, and the peer's limit for that count (both mod 2^16).
    tx_sent_total: u16,
    tx_credit_limit: u16,
    stalled: bool,
    // receive
    next_rx_seq: u16,
    deliveries: VecDeque<Delivery>,
    buffered_tlps: usize,
    rx_credit_limit: u16,
    ack_pending: bool,
    nak_pending: bool,
    nak_scheduled: bool,
    last_rx: Duration,
    last_tx: Duration,
    /// Down for a hot reset: HELLOs carry HOT_RESET until up again.
    hot_reset: bool,
    /// Largest frame (wire bytes) sent or received intact so far: what can be in the way of a
    /// frame or its ACK on a slow line.
    largest_frame: usize,
    stats: DllStats,
}

impl Dll {
    pub fn new(config: DllConfig, now: Duration) -> Self {
        let mut dll = Dll {
            config,
            deframer: Deframer::new(),
            up: false,
            peer: None,
            peer_seen: false,
            session: initial_session(now),
            hello_pending: true,
            next_hello: now,
            next_tx_seq: 0,
            replay: VecDeque::new(),
            replay_cursor: 0,
            replay_started: None,
            replayed: None,
            queued: VecDeque::new(),
            tx_sent_total: 0,
            tx_credit_limit: 0,
            stalled: false,
            next_rx_seq: 0,
            deliveries: VecDeque::new(),
            buffered_tlps: 0,
            rx_credit_limit: 0,
            ack_pending: false,
            nak_pending: false,
            nak_scheduled: false,
            last_rx: now,
            last_tx: now,
            hot_reset: false,
            largest_frame: 0,
            stats: DllStats::default(),
        };
        dll.config.hello.credits = dll.config.hello.credits.clamp(1, MAX_CREDITS);
        dll
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The peer's HELLO, once one arrived.
    pub fn peer(&self) -> Option<&Hello> {
        self.peer.as_ref()
    }

    pub fn stats(&self) -> DllStats {
        self.stats
    }

    pub fn config(&self) -> &DllConfig {
        &self.config
    }

    /// Whether [`Dll::send_tlp`] would accept a TLP now.
    pub fn can_send(&self) -> bool {
        self.up && self.queued.len() < self.config.tx_queue
    }

    /// TLPs accepted but not yet acknowledged by the peer.
    pub fn in_flight(&self) -> usize {
        self.replay.len() + self.queued.len()
    }

    /// Queues a TLP (raw bytes) for reliable delivery.
    pub fn send_tlp(&mut self, tlp: Vec<u8>, timestamp: Option<u64>) -> Result<(), SendError> {
        if !self.up {
            return Err(SendError::Down);
        }
        if tlp.is_empty() {
            return Err(SendError::Empty);
        }
        let max = self.peer.map_or(MAX_TLP_BYTES, |p| usize::from(p.max_tlp)).min(MAX_TLP_BYTES);
        if tlp.len() > max {
            return Err(SendError::TooLarge { len: tlp.len(), max });
        }
        if self.queued.len() >= self.config.tx_queue {
            return Err(SendError::QueueFull);
        }
        self.queued.push_back((tlp, timestamp));
        self.note_stall();
        Ok(())
    }

    /// Counts the start of each wait for credit with TLPs queued.
    fn note_stall(&mut self) {
        if !self.queued.is_empty() && !self.has_credit() {
            if !self.stalled {
                self.stalled = true;
                self.stats.credit_stalls += 1;
            }
        } else {
            self.stalled = false;
        }
    }

    /// The next thing received, in order. Taking a TLP frees its buffer (the credit goes back
    /// to the peer with the next ACK).
    pub fn poll_delivery(&mut self) -> Option<Delivery> {
        let d = self.deliveries.pop_front()?;
        if matches!(d, Delivery::Tlp { .. }) {
            self.buffered_tlps = self.buffered_tlps.saturating_sub(1);
            self.stats.tlps_delivered += 1;
            if self.up {
                self.rx_credit_limit = self.rx_credit_limit.wrapping_add(1);
                self.ack_pending = true;
            }
        }
        Some(d)
    }

    pub fn has_delivery(&self) -> bool {
        !self.deliveries.is_empty()
    }

    /// Takes the link down and restarts the handshake (link reset).
    pub fn reset(&mut self, now: Duration) {
        self.go_down(now, DownReason::LocalReset);
        self.deframer.reset();
    }

    /// Takes the link down for a hot reset (secondary bus reset): like [`Dll::reset`], but
    /// the HELLOs sent until the link is up again carry HOT_RESET, so that the peer reports a
    /// hot reset. The wire itself is fine, so partial frames are kept.
    pub fn hot_reset(&mut self, now: Duration) {
        self.go_down(now, DownReason::LocalHotReset);
        self.hot_reset = true;
    }

    fn go_down(&mut self, now: Duration, reason: DownReason) {
        let lost = self.replay.len() + self.queued.len();
        if self.up {
            self.stats.links_down += 1;
            tracing::warn!(%reason, lost, "fpga link: down");
            self.deliveries.push_back(Delivery::Down { lost, reason });
        }
        self.up = false;
        self.peer_seen = false;
        // HELLOs of the peer that echo the old session (still on the wire) must not bring this
        // side up again.
        self.session = self.session.wrapping_add(1);
        self.replay.clear();
        self.replay_cursor = 0;
        self.replay_started = None;
        self.queued.clear();
        self.ack_pending = false;
        self.nak_pending = false;
        self.nak_scheduled = false;
        self.hello_pending = true;
        self.next_hello = now;
    }

    fn go_up(&mut self, now: Duration, peer: Hello) {
        self.up = true;
        self.hot_reset = false;
        self.stats.links_up += 1;
        self.next_tx_seq = 0;
        self.next_rx_seq = 0;
        self.tx_sent_total = 0;
        // No credit until the peer's first ACK says how many buffers it has free.
        self.tx_credit_limit = 0;
        let free = usize::from(self.config.hello.credits).saturating_sub(self.buffered_tlps);
        self.rx_credit_limit = free as u16;
        self.ack_pending = true;
        self.last_rx = now;
        tracing::info!(
            mps = peer.mps,
            mrrs = peer.mrrs,
            rcb = peer.rcb,
            tag_bits = peer.tag_bits,
            credits = peer.credits,
            timestamps = peer.has(flags::TIMESTAMPS),
            "fpga link: up"
        );
        self.deliveries.push_back(Delivery::Up(peer));
    }

    fn our_hello(&self) -> Hello {
        let mut h = self.config.hello;
        h.flags &= flags::TIMESTAMPS;
        h.session = self.session;
        h.peer_session = 0;
        if self.peer_seen
            && let Some(peer) = self.peer
        {
            h.flags |= flags::PEER_SEEN;
            h.peer_session = peer.session;
        }
        if self.up {
            h.flags |= flags::UP;
        }
        if self.hot_reset {
            h.flags |= flags::HOT_RESET;
        }
        h
    }

    /// Feeds bytes read from the wire.
    pub fn on_bytes(&mut self, now: Duration, bytes: &[u8]) {
        self.stats.bytes_received += bytes.len() as u64;
        let mut bodies = Vec::new();
        self.deframer.push(bytes, |f| bodies.push(f));
        for body in bodies {
            match body {
                Ok(body) => match FrameRepr::parse(&body) {
                    Ok(frame) => {
                        let wire_len = cobs::max_encoded_len(body.len() + field::CRC_LEN) + 1;
                        self.largest_frame = self.largest_frame.max(wire_len);
                        self.stats.frames_received += 1;
                        self.last_rx = now;
                        self.on_frame(now, frame);
                    }
                    Err(e) => self.on_bad_frame(&e),
                },
                Err(e) => self.on_bad_frame(&e),
            }
        }
    }

    fn on_bad_frame(&mut self, error: &dyn std::fmt::Display) {
        self.stats.bad_frames += 1;
        tracing::debug!(%error, "fpga link: bad frame dropped");
        if self.up && !self.nak_scheduled {
            self.nak_scheduled = true;
            self.nak_pending = true;
        }
    }

    fn on_frame(&mut self, now: Duration, frame: FrameRepr<'_>) {
        match frame {
            FrameRepr::Hello(h) => self.on_hello(now, h),
            FrameRepr::Tlp { seq, timestamp, tlp } if self.up => self.on_tlp(seq, timestamp, tlp),
            FrameRepr::Ack { seq, credit_limit } if self.up => self.on_ack(now, seq, credit_limit, false),
            FrameRepr::Nak { seq, credit_limit } if self.up => self.on_ack(now, seq, credit_limit, true),
            // Frames of a link that is not up (yet) on this side: the peer will replay.
            _ => {}
        }
    }

    fn on_hello(&mut self, now: Duration, h: Hello) {
        if h.version != VERSION {
            tracing::warn!(
                version = h.version,
                ours = VERSION,
                "fpga link: HELLO with another version ignored"
            );
            return;
        }
        if h.credits == 0 || h.keepalive_ms == 0 {
            tracing::warn!(?h, "fpga link: HELLO with zero credits or keep-alive ignored");
            return;
        }
        if self.up {
            let current = self.peer.is_some_and(|p| p.session == h.session);
            if !current || !h.has(flags::PEER_SEEN) {
                // The peer started over (a new session): its sequence numbers restart, so must
                // ours, and what it had not acknowledged is lost.
                let reason =
                    if h.has(flags::HOT_RESET) { DownReason::PeerHotReset } else { DownReason::PeerReset };
                self.go_down(now, reason);
            } else if h.peer_session != self.session {
                // The peer's current session, but not echoing ours: cannot be sent by a peer
                // that is up with us; a stale or corrupted HELLO. Ignore it.
                tracing::debug!(?h, session = self.session, "fpga link: HELLO for another session ignored");
                return;
            }
        }
        self.peer = Some(h);
        self.peer_seen = true;
        // Up only on a HELLO that echoes this side's current session: one sent before this side
        // last went down echoes an older session.
        if !self.up && h.has(flags::PEER_SEEN) && h.peer_session == self.session {
            self.go_up(now, h);
        }
        if !h.has(flags::UP) {
            self.hello_pending = true;
        }
    }

    fn on_tlp(&mut self, seq: u16, timestamp: Option<u64>, tlp: &[u8]) {
        let d = seq.wrapping_sub(self.next_rx_seq) as i16;
        if d == 0 {
            if self.buffered_tlps >= usize::from(self.config.hello.credits) {
                self.stats.overruns += 1;
                tracing::warn!(seq, "fpga link: TLP frame beyond the credits granted, dropped");
                return;
            }
            self.next_rx_seq = self.next_rx_seq.wrapping_add(1);
            self.buffered_tlps += 1;
            self.deliveries.push_back(Delivery::Tlp { tlp: tlp.to_vec(), timestamp });
            self.ack_pending = true;
            self.nak_scheduled = false;
        } else if d < 0 {
            self.stats.duplicates += 1;
            self.ack_pending = true;
        } else {
            self.stats.out_of_order += 1;
            if !self.nak_scheduled {
                self.nak_scheduled = true;
                self.nak_pending = true;
            }
        }
    }

    fn on_ack(&mut self, now: Duration, seq: u16, credit_limit: u16, nak: bool) {
        // An ACK for a frame never sent is garbage that passed the CRC; ignore it.
        if (seq.wrapping_sub(self.next_tx_seq) as i16) >= 0 {
            return;
        }
        let before = self.replay.len();
        while self.replay.front().is_some_and(|u| (u.seq.wrapping_sub(seq) as i16) <= 0) {
            self.replay.pop_front();
            self.replay_cursor = self.replay_cursor.saturating_sub(1);
        }
        if self.replay.len() != before {
            self.replay_started = (!self.replay.is_empty()).then_some(now);
        }
        // Credit limits only grow (mod 2^16); an older one is stale.
        if (credit_limit.wrapping_sub(self.tx_credit_limit) as i16) > 0 {
            self.tx_credit_limit = credit_limit;
            self.note_stall();
        }
        if nak {
            self.stats.naks_received += 1;
            self.replay_cursor = 0;
            if !self.replay.is_empty() {
                self.replay_started = Some(now);
            }
        }
    }

    fn has_credit(&self) -> bool {
        (self.tx_credit_limit.wrapping_sub(self.tx_sent_total) as i16) > 0
    }

    /// Whether [`Dll::poll_transmit`] has something.
    pub fn wants_transmit(&self) -> bool {
        self.hello_pending
            || (self.up
                && (self.nak_pending
                    || self.ack_pending
                    || self.replay_cursor < self.replay.len()
                    || (!self.queued.is_empty() && self.has_credit())))
    }

    /// The TLP whose frame the last [`Dll::poll_transmit`] sent again (a replay), once.
    pub fn take_replayed(&mut self) -> Option<Vec<u8>> {
        self.replayed.take()
    }

    /// The next frame to write (complete, with delimiter).
    pub fn poll_transmit(&mut self, now: Duration) -> Option<Vec<u8>> {
        self.replayed = None;
        let wire = self.next_frame(now)?;
        self.largest_frame = self.largest_frame.max(wire.len());
        self.stats.frames_sent += 1;
        self.stats.bytes_sent += wire.len() as u64;
        self.last_tx = now;
        Some(wire)
    }

    fn next_frame(&mut self, now: Duration) -> Option<Vec<u8>> {
        if self.hello_pending {
            self.hello_pending = false;
            self.next_hello = now + self.config.hello_interval;
            return Some(FrameRepr::Hello(self.our_hello()).to_wire());
        }
        if !self.up {
            return None;
        }
        let acked = self.next_rx_seq.wrapping_sub(1);
        if self.nak_pending {
            self.nak_pending = false;
            self.ack_pending = false;
            self.stats.naks_sent += 1;
            return Some(FrameRepr::Nak { seq: acked, credit_limit: self.rx_credit_limit }.to_wire());
        }
        if self.ack_pending {
            self.ack_pending = false;
            return Some(FrameRepr::Ack { seq: acked, credit_limit: self.rx_credit_limit }.to_wire());
        }
        if let Some(frame) = self.replay.get(self.replay_cursor) {
            self.replay_cursor += 1;
            self.stats.retransmissions += 1;
            self.replayed = Some(frame.tlp.clone());
            return Some(frame.wire.clone());
        }
        if self.queued.is_empty() {
            return None;
        }
        if !self.has_credit() {
            self.note_stall();
            return None;
        }
        let (tlp, timestamp) = self.queued.pop_front()?;
        let seq = self.next_tx_seq;
        self.next_tx_seq = seq.wrapping_add(1);
        self.tx_sent_total = self.tx_sent_total.wrapping_add(1);
        let wire = FrameRepr::Tlp { seq, timestamp, tlp: &tlp }.to_wire();
        self.stats.tlps_sent += 1;
        self.stats.tlp_bytes_sent += tlp.len() as u64;
        if self.replay.is_empty() {
            self.replay_started = Some(now);
        }
        self.replay.push_back(Unacked { seq, wire: wire.clone(), tlp });
        self.replay_cursor = self.replay.len();
        self.note_stall();
        Some(wire)
    }

    fn peer_keepalive(&self) -> Duration {
        Duration::from_millis(u64::from(self.peer.map_or(self.config.hello.keepalive_ms, |p| p.keepalive_ms)))
    }

    fn own_keepalive(&self) -> Duration {
        Duration::from_millis(u64::from(self.config.hello.keepalive_ms))
    }

    /// The configured replay timeout plus the time [`REPLAY_FRAMES_IN_THE_WAY`] frames of the
    /// largest size seen take on the line. Scaled by what the link carries rather than by the
    /// largest frame possible: a tail frame lost with nothing after it (so no NAK), or a lost
    /// NAK, is recovered only by this timer, and at 115200 baud eight 4 KiB frames take 2.9 s.
    pub fn replay_timeout(&self) -> Duration {
        let frames =
            u32::try_from(self.largest_frame).unwrap_or(u32::MAX).saturating_mul(REPLAY_FRAMES_IN_THE_WAY);
        self.config.replay_timeout.saturating_add(self.config.byte_time.saturating_mul(frames))
    }

    /// When [`Dll::on_timer`] next has work (`None`: only after new input). Deadlines whose
    /// frame is already waiting to be sent are left out, so a slow writer causes no busy loop.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if !self.up {
            return (!self.hello_pending).then_some(self.next_hello);
        }
        let mut at = self.last_rx + self.peer_keepalive() * self.config.missed_keepalives;
        if !self.ack_pending && !self.nak_pending {
            at = at.min(self.last_tx + self.own_keepalive());
        }
        if let Some(started) = self.replay_started {
            at = at.min(started + self.replay_timeout());
        }
        Some(at)
    }

    /// Runs the timers: HELLO resend, replay timeout, keep-alive, link-down detection.
    pub fn on_timer(&mut self, now: Duration) {
        if !self.up {
            if now >= self.next_hello {
                self.hello_pending = true;
            }
            return;
        }
        if now >= self.last_rx + self.peer_keepalive() * self.config.missed_keepalives {
            self.go_down(now, DownReason::KeepaliveTimeout);
            return;
        }
        if let Some(started) = self.replay_started {
            if now >= started + self.replay_timeout() && !self.replay.is_empty() {
                self.stats.replay_timeouts += 1;
                tracing::debug!(frames = self.replay.len(), "fpga link: replay timeout, resending");
                self.replay_cursor = 0;
                self.replay_started = Some(now);
            }
        }
        if now >= self.last_tx + self.own_keepalive() {
            self.ack_pending = true;
        }
    }
}

/// A session to start from that differs, with high probability, from the one a previous
/// instance of this side used (a reopened device, a restarted process), whose HELLOs may still
/// be on the wire.
fn initial_session(now: Duration) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(now.as_nanos());
    if let Ok(since_epoch) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(since_epoch.as_nanos());
    }
    hasher.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two DLLs joined by a wire that can lose or damage frames.
    struct Pair {
        a: Dll,
        b: Dll,
        now: Duration,
    }

    impl Pair {
        fn new(credits_a: u16, credits_b: u16) -> Self {
            let now = Duration::ZERO;
            Pair {
                a: Dll::new(DllConfig::new(credits_a), now),
                b: Dll::new(DllConfig::new(credits_b), now),
                now,
            }
        }

        /// Moves every frame once each way; `fault(frame_index, bytes)` may change a frame.
        fn exchange(&mut self, fault: &mut dyn FnMut(&mut Vec<u8>)) {
            for _ in 0..64 {
                let mut moved = false;
                while let Some(mut f) = self.a.poll_transmit(self.now) {
                    fault(&mut f);
                    self.b.on_bytes(self.now, &f);
                    moved = true;
                }
                while let Some(mut f) = self.b.poll_transmit(self.now) {
                    fault(&mut f);
                    self.a.on_bytes(self.now, &f);
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
        }

        fn tick(&mut self, d: Duration, fault: &mut dyn FnMut(&mut Vec<u8>)) {
            self.now += d;
            self.a.on_timer(self.now);
            self.b.on_timer(self.now);
            self.exchange(fault);
        }
    }

    fn tlp(n: u32) -> Vec<u8> {
        let mut t = vec![0x40, 0, 0, 1, 0, 0, 0, 0xf, 0, 0, 0x10, 0];
        t.extend_from_slice(&n.to_be_bytes());
        t
    }

    fn drain(d: &mut Dll) -> Vec<Delivery> {
        std::iter::from_fn(|| d.poll_delivery()).collect()
    }

    #[test]
    fn handshake_brings_both_sides_up_with_peer_parameters() {
        let mut p = Pair::new(4, 2);
        p.exchange(&mut |_| {});
        assert!(p.a.is_up() && p.b.is_up());
        assert!(matches!(drain(&mut p.a).as_slice(), [Delivery::Up(h)] if h.credits == 2));
        assert!(matches!(drain(&mut p.b).as_slice(), [Delivery::Up(h)] if h.credits == 4));
    }

    #[test]
    fn handshake_survives_lost_hellos() {
        let mut p = Pair::new(4, 4);
        let mut n = 0;
        p.exchange(&mut |f| {
            n += 1;
            if n <= 2 {
                f.clear();
            }
        });
        for _ in 0..5 {
            p.tick(Duration::from_millis(100), &mut |_| {});
        }
        assert!(p.a.is_up() && p.b.is_up());
    }

    #[test]
    fn tlps_arrive_once_in_order_despite_damage_and_loss() {
        let mut p = Pair::new(4, 4);
        p.exchange(&mut |_| {});
        drain(&mut p.a);
        drain(&mut p.b);
        let mut received = Vec::new();
        let mut next = 0u32;
        let mut k = 0u64;
        // Damage every 7th frame, drop every 11th.
        let mut fault = |f: &mut Vec<u8>| {
            k += 1;
            if k % 11 == 0 {
                f.clear();
            } else if k % 7 == 0 && f.len() > 3 {
                f[2] ^= 0x40;
            }
        };
        for _ in 0..400 {
            while next < 200 && p.a.can_send() {
                p.a.send_tlp(tlp(next), None).unwrap();
                next += 1;
            }
            p.exchange(&mut fault);
            for d in drain(&mut p.b) {
                if let Delivery::Tlp { tlp, .. } = d {
                    received.push(tlp);
                }
            }
            p.tick(Duration::from_millis(50), &mut fault);
            if received.len() == 200 {
                break;
            }
        }
        let expected: Vec<Vec<u8>> = (0..200).map(tlp).collect();
        assert_eq!(received, expected);
        assert!(p.a.stats().retransmissions > 0);
        assert!(p.b.stats().bad_frames > 0);
        assert_eq!(p.b.stats().overruns, 0);
    }

    #[test]
    fn sender_never_exceeds_the_receivers_credits() {
        let mut p = Pair::new(8, 1);
        p.exchange(&mut |_| {});
        drain(&mut p.a);
        drain(&mut p.b);
        for n in 0..5 {
            p.a.send_tlp(tlp(n), None).unwrap();
        }
        p.exchange(&mut |_| {});
        // B consumes nothing: only one frame may be outstanding.
        assert_eq!(p.a.stats().tlps_sent, 1);
        assert!(p.a.stats().credit_stalls >= 1);
        let mut got = 0;
        for _ in 0..20 {
            got += drain(&mut p.b).len();
            p.exchange(&mut |_| {});
        }
        assert_eq!(got, 5);
        assert_eq!(p.b.stats().overruns, 0);
    }

    #[test]
    fn silence_takes_the_link_down_and_it_comes_back() {
        let mut p = Pair::new(4, 4);
        p.exchange(&mut |_| {});
        drain(&mut p.a);
        p.a.send_tlp(tlp(1), None).unwrap();
        // Cut the wire.
        for _ in 0..10 {
            p.tick(Duration::from_millis(100), &mut |f| f.clear());
        }
        assert!(!p.a.is_up());
        assert!(matches!(
            drain(&mut p.a).as_slice(),
            [Delivery::Down { lost: 1, reason: DownReason::KeepaliveTimeout }]
        ));
        for _ in 0..3 {
            p.tick(Duration::from_millis(100), &mut |_| {});
        }
        assert!(p.a.is_up() && p.b.is_up());
    }

    #[test]
    fn a_hot_reset_is_reported_as_such_on_both_sides_and_only_while_down() {
        let mut p = Pair::new(4, 4);
        p.exchange(&mut |_| {});
        drain(&mut p.a);
        drain(&mut p.b);
        p.a.send_tlp(tlp(1), None).unwrap();
        p.a.hot_reset(p.now);
        let hello = p.a.poll_transmit(p.now).unwrap();
        let body = cobs::decode(&hello[..hello.len() - 1]).unwrap();
        let Ok(FrameRepr::Hello(h)) = FrameRepr::parse(&body[..body.len() - field::CRC_LEN]) else {
            panic!("not a HELLO: {body:02x?}")
        };
        assert_eq!(h.flags, flags::HOT_RESET, "down, peer not seen yet, hot reset");
        p.b.on_bytes(p.now, &hello);
        p.exchange(&mut |_| {});
        assert!(p.a.is_up() && p.b.is_up());
        assert!(matches!(
            drain(&mut p.a).as_slice(),
            [Delivery::Down { lost: 1, reason: DownReason::LocalHotReset }, Delivery::Up(_)]
        ));
        assert!(matches!(
            drain(&mut p.b).as_slice(),
            [Delivery::Down { reason: DownReason::PeerHotReset, .. }, Delivery::Up(_)]
        ));
        assert_eq!(p.a.our_hello().flags & flags::HOT_RESET, 0, "cleared once up again");
        // A later plain link reset is not a hot reset.
        p.a.reset(p.now);
        p.exchange(&mut |_| {});
        assert!(matches!(
            drain(&mut p.b).as_slice(),
            [Delivery::Down { reason: DownReason::PeerReset, .. }, Delivery::Up(_)]
        ));
    }

    #[test]
    fn local_reset_resets_the_peer_too() {
        let mut p = Pair::new(4, 4);
        p.exchange(&mut |_| {});
        drain(&mut p.b);
        p.a.reset(p.now);
        p.exchange(&mut |_| {});
        assert!(p.a.is_up() && p.b.is_up());
        let d = drain(&mut p.b);
        assert!(matches!(
            d.as_slice(),
            [Delivery::Down { reason: DownReason::PeerReset, .. }, Delivery::Up(_)]
        ));
    }
}
