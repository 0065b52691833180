//! Link resets in the data-link layer: a TLP is delivered at most once across a reset, a HELLO
//! sent before a reset never brings a side up, and TLPs not acknowledged at a reset are reported
//! lost (docs/fpga-link.md §3). Includes the fuzzer's findings (fuzz/regressions/fpga_dll/),
//! replayed through the same two-sided wire the `fpga_dll` fuzz target drives.

use std::collections::VecDeque;
use std::time::Duration;

use fpga::dll::{Delivery, Dll, DllConfig, DownReason};
use fpga::framing::{Deframer, FrameRepr, field::flags};

fn tlp(n: u32) -> Vec<u8> {
    let mut t = vec![0x40, 0, 0, 1, 0, 0, 0, 0xf, 0, 0, 0x10, 0];
    t.extend_from_slice(&n.to_be_bytes());
    t
}

fn index_of(tlp: &[u8]) -> u32 {
    u32::from_be_bytes(tlp[12..16].try_into().unwrap())
}

fn drain(d: &mut Dll) -> Vec<Delivery> {
    std::iter::from_fn(|| d.poll_delivery()).collect()
}

fn frames_of(d: &mut Dll, now: Duration) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| d.poll_transmit(now)).collect()
}

fn hello_flags(wire: &[u8]) -> Option<u8> {
    let mut deframer = Deframer::new();
    let mut flags = None;
    deframer.push(wire, |body| {
        if let Ok(body) = body
            && let Ok(FrameRepr::Hello(h)) = FrameRepr::parse(&body)
        {
            flags = Some(h.flags);
        }
    });
    flags
}

/// Runs the handshake, keeping every frame each side wrote; returns (A → B, B → A).
fn handshake(a: &mut Dll, b: &mut Dll, now: Duration) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut a_to_b, mut b_to_a) = (Vec::new(), Vec::new());
    for _ in 0..8 {
        for f in frames_of(a, now) {
            b.on_bytes(now, &f);
            a_to_b.push(f);
        }
        for f in frames_of(b, now) {
            a.on_bytes(now, &f);
            b_to_a.push(f);
        }
    }
    assert!(a.is_up() && b.is_up());
    (a_to_b, b_to_a)
}

#[test]
fn a_hello_from_before_a_reset_does_not_bring_the_side_up() {
    let now = Duration::ZERO;
    let mut a = Dll::new(DllConfig::new(4), now);
    let mut b = Dll::new(DllConfig::new(4), now);
    let (_, b_to_a) = handshake(&mut a, &mut b, now);
    // B's HELLOs of that session all say PEER_SEEN: the kind that used to bring A up alone.
    let stale: Vec<&Vec<u8>> =
        b_to_a.iter().filter(|f| hello_flags(f).is_some_and(|fl| fl & flags::PEER_SEEN != 0)).collect();
    assert!(!stale.is_empty());
    a.reset(now);
    for f in stale {
        a.on_bytes(now, f);
    }
    assert!(!a.is_up(), "a HELLO of the previous session brought the link up");
    // The real handshake still works: B learns of the reset and both come up again.
    handshake(&mut a, &mut b, now);
    let down_up = drain(&mut b);
    assert!(matches!(
        down_up.as_slice(),
        [Delivery::Up(_), Delivery::Down { reason: DownReason::PeerReset, .. }, Delivery::Up(_)]
    ));
}

#[test]
fn tlps_unacknowledged_at_a_reset_are_reported_lost_and_never_delivered_twice() {
    let mut now = Duration::ZERO;
    let mut a = Dll::new(DllConfig::new(8), now);
    let mut b = Dll::new(DllConfig::new(8), now);
    handshake(&mut a, &mut b, now);
    drain(&mut a);
    drain(&mut b);
    for n in 0..3 {
        a.send_tlp(tlp(n), None).unwrap();
    }
    // B receives all three (and acknowledges them), but A resets before any ACK arrives.
    for f in frames_of(&mut a, now) {
        b.on_bytes(now, &f);
    }
    let mut delivered: Vec<u32> = Vec::new();
    let collect = |d: &mut Dll, delivered: &mut Vec<u32>| {
        for x in drain(d) {
            if let Delivery::Tlp { tlp, .. } = x {
                delivered.push(index_of(&tlp));
            }
        }
    };
    collect(&mut b, &mut delivered);
    let b_stale = frames_of(&mut b, now);
    a.reset(now);
    assert!(matches!(drain(&mut a).as_slice(), [Delivery::Down { lost: 3, reason: DownReason::LocalReset }]));
    // B's frames of the old session arrive after the reset, then the link comes back.
    for f in &b_stale {
        a.on_bytes(now, f);
    }
    for _ in 0..20 {
        now += Duration::from_millis(50);
        a.on_timer(now);
        b.on_timer(now);
        for f in frames_of(&mut a, now) {
            b.on_bytes(now, &f);
        }
        for f in frames_of(&mut b, now) {
            a.on_bytes(now, &f);
        }
        collect(&mut b, &mut delivered);
        if a.is_up() && b.is_up() && a.in_flight() == 0 && a.stats().tlps_sent == 3 {
            a.send_tlp(tlp(3), None).unwrap();
        }
    }
    assert!(a.is_up() && b.is_up());
    assert_eq!(delivered, [0, 1, 2, 3], "each TLP once, in order");
    assert_eq!(a.in_flight(), 0);
}

/// The `fpga_dll` fuzz target's wire, reduced to what the regression inputs need: two sides,
/// one FIFO of written frames each way; the input delivers, damages, drops, injects garbage,
/// advances time and resets (op byte layout as in fuzz/src/fpga_dll.rs).
struct Side {
    dll: Dll,
    wire: VecDeque<Vec<u8>>,
    next_index: u32,
    last_received: Option<u32>,
    sent_since_down: bool,
}

impl Side {
    fn new(credits: u16) -> Side {
        Side {
            dll: Dll::new(DllConfig::new(credits), Duration::ZERO),
            wire: VecDeque::new(),
            next_index: 0,
            last_received: None,
            sent_since_down: false,
        }
    }

    fn send(&mut self, extra: u8) {
        let mut t = self.next_index.to_be_bytes().to_vec();
        t.extend(std::iter::repeat_n(extra, usize::from(extra % 8) * 4));
        if self.dll.send_tlp(t, None).is_ok() {
            self.next_index += 1;
            self.sent_since_down = true;
        }
    }

    fn step(&mut self, now: Duration) {
        self.dll.on_timer(now);
        while let Some(f) = self.dll.poll_transmit(now) {
            self.wire.push_back(f);
        }
        while let Some(d) = self.dll.poll_delivery() {
            match d {
                Delivery::Down { .. } => self.sent_since_down = false,
                Delivery::Tlp { tlp, .. } => {
                    let index = u32::from_be_bytes(tlp[..4].try_into().unwrap());
                    if let Some(last) = self.last_received {
                        assert!(index > last, "TLP {index} delivered after {last}: duplicate or reordered");
                    }
                    self.last_received = Some(index);
                }
                Delivery::Up(_) => {}
            }
        }
    }
}

fn replay_fuzz_input(data: &[u8]) {
    let mut now = Duration::ZERO;
    let credits = data.first().map_or(4, |c| u16::from(c % 16) + 1);
    let mut sides = [Side::new(credits), Side::new(credits.saturating_add(3))];
    let mut ops = data.iter().skip(1).copied();
    while let Some(op) = ops.next() {
        let from = usize::from(op & 1);
        let to = 1 - from;
        match op >> 1 {
            0..=19 => sides[from].send(op),
            20..=59 => {
                if let Some(frame) = sides[from].wire.pop_front() {
                    sides[to].dll.on_bytes(now, &frame);
                }
            }
            60..=64 => {
                if let Some(mut frame) = sides[from].wire.pop_front() {
                    let bit = usize::from(ops.next().unwrap_or(0)) % (frame.len() * 8);
                    frame[bit / 8] ^= 1 << (bit % 8);
                    sides[to].dll.on_bytes(now, &frame);
                }
            }
            65..=69 => {
                sides[from].wire.pop_front();
            }
            70..=72 => {
                let n = usize::from(ops.next().unwrap_or(0) % 32);
                let garbage: Vec<u8> = ops.by_ref().take(n).collect();
                sides[to].dll.on_bytes(now, &garbage);
            }
            73..=120 => now += Duration::from_millis(u64::from(op % 64)),
            121 => sides[from].dll.reset(now),
            _ => {}
        }
        for side in &mut sides {
            side.step(now);
        }
    }
    for _ in 0..200 {
        now += Duration::from_millis(10);
        for i in 0..2 {
            while let Some(frame) = sides[i].wire.pop_front() {
                sides[1 - i].dll.on_bytes(now, &frame);
            }
        }
        for side in &mut sides {
            side.step(now);
        }
    }
    assert!(sides[0].dll.is_up() && sides[1].dll.is_up(), "a clean wire did not bring the link up");
    for i in 0..2 {
        let (sender, receiver) = (&sides[i], &sides[1 - i]);
        assert_eq!(sender.dll.in_flight(), 0, "frames still unacknowledged on a clean, idle link");
        if sender.sent_since_down {
            assert_eq!(
                receiver.last_received,
                Some(sender.next_index - 1),
                "the last TLP sent never arrived"
            );
        }
    }
}

#[test]
fn fuzz_finding_stale_hello_sequence_desync() {
    replay_fuzz_input(include_bytes!("../../fuzz/regressions/fpga_dll/stale-hello-sequence-desync"));
}

#[test]
fn fuzz_finding_acked_tlp_never_delivered() {
    replay_fuzz_input(include_bytes!("../../fuzz/regressions/fpga_dll/acked-tlp-never-delivered"));
}

#[test]
fn fuzz_finding_duplicate_after_reset() {
    replay_fuzz_input(include_bytes!("../../fuzz/regressions/fpga_dll/duplicate-after-reset"));
}
