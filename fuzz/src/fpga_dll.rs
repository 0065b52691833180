//! The FPGA link's reliable data-link layer (`fpga::dll::Dll`): two ends joined by a wire the
//! input controls (deliver, damage one bit, drop, inject garbage, advance time, reset).
//!
//! Properties: a side never holds more than the peer's `credits + tx_queue` unacknowledged TLPs;
//! each frame written is at most `MAX_ENCODED_BYTES + 1` bytes; each side delivers the TLPs the
//! other sent in order and at most once, across link resets too (each TLP carries its index;
//! received indices strictly increase); and with a clean wire and time moving on, both sides
//! come up, nothing stays unacknowledged and the last TLP sent since the sender's link last went
//! down arrives.

use std::collections::VecDeque;
use std::time::Duration;

use fpga::dll::{Delivery, Dll, DllConfig};
use fpga::framing::MAX_ENCODED_BYTES;

struct Side {
    dll: Dll,
    /// Frames written by this side, not yet delivered to the other.
    wire: VecDeque<Vec<u8>>,
    next_index: u32,
    last_received: Option<u32>,
    /// Sent since this side's link last went down (those may be lost with it).
    sent_since_down: bool,
    credits: usize,
    tx_queue: usize,
}

impl Side {
    fn new(credits: u16, now: Duration) -> Side {
        let config = DllConfig::new(credits);
        let tx_queue = config.tx_queue;
        Side {
            credits: usize::from(config.hello.credits),
            dll: Dll::new(config, now),
            wire: VecDeque::new(),
            next_index: 0,
            last_received: None,
            sent_since_down: false,
            tx_queue,
        }
    }

    fn send(&mut self, extra: u8) {
        let mut tlp = self.next_index.to_be_bytes().to_vec();
        tlp.extend(std::iter::repeat_n(extra, usize::from(extra % 8) * 4));
        if self.dll.send_tlp(tlp, None).is_ok() {
            self.next_index += 1;
            self.sent_since_down = true;
        }
    }

    /// `peer_credits`: what the other side grants, which bounds the unacknowledged frames.
    fn transmit(&mut self, now: Duration, peer_credits: usize) {
        // Bounded: a side has at most credits + queue frames plus a few control frames.
        for _ in 0..256 {
            let Some(frame) = self.dll.poll_transmit(now) else { break };
            assert!(frame.len() <= MAX_ENCODED_BYTES + 1, "{}-byte frame", frame.len());
            if self.wire.len() < 4096 {
                self.wire.push_back(frame);
            }
        }
        assert!(self.dll.in_flight() <= peer_credits + self.tx_queue, "{} in flight", self.dll.in_flight());
    }

    fn receive(&mut self) {
        while let Some(d) = self.dll.poll_delivery() {
            if let Delivery::Down { .. } = d {
                self.sent_since_down = false;
            }
            if let Delivery::Tlp { tlp, .. } = d {
                let index = u32::from_be_bytes(tlp[..4].try_into().unwrap());
                if let Some(last) = self.last_received {
                    assert!(index > last, "TLP {index} delivered after {last}: duplicate or reordered");
                }
                self.last_received = Some(index);
            }
        }
    }
}

pub fn check(data: &[u8]) {
    let mut now = Duration::ZERO;
    let credits = data.first().map_or(4, |c| u16::from(c % 16) + 1);
    let mut sides = [Side::new(credits, now), Side::new(credits.saturating_add(3), now)];
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
        let credits = [sides[0].credits, sides[1].credits];
        for (i, side) in sides.iter_mut().enumerate() {
            side.dll.on_timer(now);
            side.transmit(now, credits[1 - i]);
            side.receive();
            assert!(!side.dll.has_delivery());
            assert!(side.dll.in_flight() <= credits[1 - i] + side.tx_queue);
        }
    }
    // A clean wire from here on: run until quiet; every side that stays up drains.
    for _ in 0..200 {
        now += Duration::from_millis(10);
        for i in 0..2 {
            while let Some(frame) = sides[i].wire.pop_front() {
                sides[1 - i].dll.on_bytes(now, &frame);
            }
        }
        let credits = [sides[0].credits, sides[1].credits];
        for (i, side) in sides.iter_mut().enumerate() {
            side.dll.on_timer(now);
            side.transmit(now, credits[1 - i]);
            side.receive();
        }
    }
    // A stale HELLO bringing one side up alone (fixed, docs/reliability.md §4; inputs in
    // fuzz/regressions/fpga_dll/) left the sides' sequence numbers disagreeing: frames never
    // acknowledged, never delivered, or delivered twice.
    assert!(sides[0].dll.is_up() && sides[1].dll.is_up(), "a clean wire for 2 s did not bring the link up");
    for i in 0..2 {
        let (sender, receiver) = (&sides[i], &sides[1 - i]);
        if sender.dll.is_up() && receiver.dll.is_up() {
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
}
