//! Fault injection for the emulator: bit errors, dropped bytes, dropped frames and delay, with
//! counters of what was injected.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What to inject. Rates are probabilities in `0.0..1.0`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Probability that any one bit on the wire is flipped (both directions).
    pub bit_error_rate: f64,
    /// Probability that any one byte is lost (both directions).
    pub drop_byte_rate: f64,
    /// Probability that a whole frame is lost (both directions).
    pub drop_frame_rate: f64,
    /// Extra latency of every frame the emulator sends.
    pub delay: Duration,
    /// Seed of the pseudo-random generator, so that a failing run can be repeated.
    pub seed: u64,
}

impl FaultConfig {
    pub fn is_clean(&self) -> bool {
        self.bit_error_rate <= 0.0
            && self.drop_byte_rate <= 0.0
            && self.drop_frame_rate <= 0.0
            && self.delay.is_zero()
    }

    /// Checks the rates are probabilities.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("bit error rate", self.bit_error_rate),
            ("dropped byte rate", self.drop_byte_rate),
            ("dropped frame rate", self.drop_frame_rate),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("the {name} must be in [0, 1), got {p}"));
            }
        }
        Ok(())
    }
}

/// Counts of injected faults (shared between the I/O tasks and the report).
#[derive(Debug, Default)]
pub struct FaultCounters {
    pub bits_flipped: AtomicU64,
    pub bytes_dropped: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub frames_delayed: AtomicU64,
}

/// A snapshot of [`FaultCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultReport {
    pub bits_flipped: u64,
    pub bytes_dropped: u64,
    pub frames_dropped: u64,
    pub frames_delayed: u64,
}

impl FaultCounters {
    pub fn snapshot(&self) -> FaultReport {
        FaultReport {
            bits_flipped: self.bits_flipped.load(Ordering::Relaxed),
            bytes_dropped: self.bytes_dropped.load(Ordering::Relaxed),
            frames_dropped: self.frames_dropped.load(Ordering::Relaxed),
            frames_delayed: self.frames_delayed.load(Ordering::Relaxed),
        }
    }
}

/// xorshift64*: small, fast and reproducible; quality is ample for fault placement.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Trials until the next success of probability `p` (geometric), `u64::MAX` for p = 0.
    fn gap(&mut self, p: f64) -> u64 {
        if p <= 0.0 {
            return u64::MAX;
        }
        let g = (self.unit().ln() / (1.0 - p).ln()).floor();
        if g.is_finite() && g < u64::MAX as f64 { g as u64 } else { u64::MAX }
    }
}

/// One direction's injector. Geometric gaps between faults keep the cost per byte constant
/// however small the rates.
#[derive(Debug)]
pub struct Injector {
    config: FaultConfig,
    counters: Arc<FaultCounters>,
    rng: Rng,
    bits_to_flip: u64,
    bytes_to_drop: u64,
    /// Incoming direction: dropping the current frame up to its delimiter.
    dropping_frame: bool,
    at_frame_start: bool,
}

impl Injector {
    pub fn new(config: FaultConfig, counters: Arc<FaultCounters>, stream: u64) -> Self {
        let mut rng = Rng::new(config.seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let bits_to_flip = rng.gap(config.bit_error_rate);
        let bytes_to_drop = rng.gap(config.drop_byte_rate);
        Injector {
            config,
            counters,
            rng,
            bits_to_flip,
            bytes_to_drop,
            dropping_frame: false,
            at_frame_start: true,
        }
    }

    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    /// Whether the next whole frame should be lost.
    pub fn drop_frame(&mut self) -> bool {
        let p = self.config.drop_frame_rate;
        let drop = p > 0.0 && self.rng.unit() <= p;
        if drop {
            self.counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
        }
        drop
    }

    /// Applies byte drops and bit errors to `bytes` in place.
    pub fn corrupt(&mut self, bytes: &mut Vec<u8>) {
        if self.config.drop_byte_rate > 0.0 {
            let mut kept = Vec::with_capacity(bytes.len());
            for &b in bytes.iter() {
                if self.bytes_to_drop == 0 {
                    self.bytes_to_drop = self.rng.gap(self.config.drop_byte_rate);
                    self.counters.bytes_dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.bytes_to_drop -= 1;
                    kept.push(b);
                }
            }
            *bytes = kept;
        }
        if self.config.bit_error_rate > 0.0 {
            let mut bit = 0u64;
            let total = bytes.len() as u64 * 8;
            loop {
                let remaining = total - bit;
                if self.bits_to_flip >= remaining {
                    self.bits_to_flip -= remaining;
                    break;
                }
                bit += self.bits_to_flip;
                if let Some(b) = bytes.get_mut((bit / 8) as usize) {
                    *b ^= 1 << (bit % 8);
                }
                self.counters.bits_flipped.fetch_add(1, Ordering::Relaxed);
                bit += 1;
                self.bits_to_flip = self.rng.gap(self.config.bit_error_rate);
            }
        }
    }

    /// Incoming bytes: drops whole frames (decided at each frame's first byte), then corrupts.
    pub fn incoming(&mut self, bytes: &mut Vec<u8>) {
        if self.config.drop_frame_rate > 0.0 {
            let mut kept = Vec::with_capacity(bytes.len());
            for &b in bytes.iter() {
                if self.at_frame_start {
                    self.at_frame_start = false;
                    self.dropping_frame = self.drop_frame();
                }
                if !self.dropping_frame {
                    kept.push(b);
                }
                if b == crate::framing::DELIMITER {
                    self.at_frame_start = true;
                }
            }
            *bytes = kept;
        }
        self.corrupt(bytes);
    }

    /// An outgoing frame: `None` when it is dropped.
    pub fn outgoing(&mut self, mut frame: Vec<u8>) -> Option<Vec<u8>> {
        if self.drop_frame() {
            return None;
        }
        self.corrupt(&mut frame);
        if !self.config.delay.is_zero() {
            self.counters.frames_delayed.fetch_add(1, Ordering::Relaxed);
        }
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_error_rate_is_roughly_honoured_and_counted() {
        let counters = Arc::new(FaultCounters::default());
        let config = FaultConfig { bit_error_rate: 1e-3, seed: 7, ..FaultConfig::default() };
        let mut inj = Injector::new(config, counters.clone(), 0);
        let mut flipped = 0u64;
        for _ in 0..100 {
            let mut data = vec![0u8; 1000];
            inj.corrupt(&mut data);
            flipped += data.iter().map(|b| u64::from(b.count_ones())).sum::<u64>();
        }
        assert_eq!(flipped, counters.snapshot().bits_flipped);
        assert!((400..1600).contains(&flipped), "800 000 bits at 1e-3 flipped {flipped}");
    }

    #[test]
    fn dropped_frames_are_whole_frames() {
        let counters = Arc::new(FaultCounters::default());
        let config = FaultConfig { drop_frame_rate: 0.5, seed: 3, ..FaultConfig::default() };
        let mut inj = Injector::new(config, counters.clone(), 1);
        let mut wire = Vec::new();
        for i in 1..=100u8 {
            wire.extend_from_slice(&[i, i, 0]);
        }
        inj.incoming(&mut wire);
        let frames: Vec<&[u8]> = wire.split(|b| *b == 0).filter(|f| !f.is_empty()).collect();
        assert!(frames.iter().all(|f| f.len() == 2 && f[0] == f[1]));
        assert_eq!(frames.len() as u64 + counters.snapshot().frames_dropped, 100);
    }

    #[test]
    fn clean_config_changes_nothing() {
        let mut inj = Injector::new(FaultConfig::default(), Arc::new(FaultCounters::default()), 0);
        let mut data: Vec<u8> = (0..=255).collect();
        inj.incoming(&mut data);
        assert_eq!(data, (0..=255).collect::<Vec<u8>>());
    }
}
