//! The engine never panics on link input: random bytes, mutated TLPs and stray completions are
//! dropped or answered, and the function keeps working afterwards.

mod support;

use std::time::Duration;

use bridge::engine::EngineConfig;
use support::*;
use tlp::{Body, CplStatus};

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test]
async fn random_and_mutated_link_input_never_breaks_the_engine() {
    let config = EngineConfig { device_timeout: Some(Duration::from_secs(5)), ..EngineConfig::default() };
    let Setup { engine, mut rc, .. } = setup(config).await;
    rc.enumerate().await;
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let seeds = [
        rc.mem_read_tlp(0x1234_0000, 64).to_bytes(),
        rc.config_request(tlp::RoutingId::new(1, 0, 5), tlp::CfgType::Type1, 0x10, None, 0xf).to_bytes(),
        {
            let read = rc.mem_read_tlp(HOST_BASE, 256);
            let read = tlp::completion::MemoryRead::from_tlp(&read).unwrap();
            let data = vec![0u8; 256];
            tlp::completion::read_completions(&read, RC_ID, &data, &rc.link)
                .unwrap()
                .next()
                .unwrap()
                .to_bytes()
        },
    ];
    let mut sent = 0u32;
    for _ in 0..3000 {
        let bytes = if rng.below(3) == 0 {
            (0..rng.below(40)).map(|_| rng.next() as u8).collect::<Vec<u8>>()
        } else {
            let mut bytes = seeds[rng.below(seeds.len() as u64) as usize].clone();
            for _ in 0..=rng.below(3) {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
            bytes
        };
        // Only requests that miss (UR) or malformed input: nothing may reach the BARs.
        if let Ok(t) = tlp::Tlp::parse(&bytes) {
            let harmless = match &t.body {
                Body::Memory(m) => m.op != tlp::MemOp::Write && m.address < BAR0_ADDRESS,
                Body::Config(c) => {
                    !c.write && (c.cfg_type == tlp::CfgType::Type1 || c.target.function() != 0)
                }
                Body::Completion(_) => true,
                _ => false,
            };
            if !harmless {
                continue;
            }
        }
        rc.send_raw(bytes).await;
        sent += 1;
    }
    assert!(sent > 2000);
    // Drain whatever the engine answered, then check it still works.
    while let Ok(Some(cpl)) = tokio::time::timeout(Duration::from_millis(200), rc.completions.recv()).await {
        assert_ne!(status(&cpl), CplStatus::Sc, "only misses were sent: {cpl}");
    }
    assert_eq!(rc.cfg_read(0).await, 0x1234_1af4);
    rc.mem_write(BAR2_ADDRESS, &[1, 2, 3, 4]).await;
    assert_eq!(rc.mem_read(BAR2_ADDRESS, 4).await.0, vec![1, 2, 3, 4]);
    let snap = engine.shutdown().await;
    assert!(snap.malformed > 0 && snap.unexpected_completions > 0 && snap.ur_sent > 0, "{snap}");
    assert_eq!(snap.task_panics, 0);
}
