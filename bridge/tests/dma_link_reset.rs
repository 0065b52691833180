//! A device DMA read that a link reset interrupts while its MRds wait for room on the link: it
//! must issue no further MRd after the reset, and leave every tag free for the next DMA.
//!
//! The root port is driven by hand here (not by `support::RootComplex`, which drains the link at
//! once) so that the link's transmit queue can be kept full: that holds the DMA handler inside
//! its issuing loop when the reset frees the tags, which is the case the fix is about.

mod support;

use std::time::Duration;

use bridge::engine::{Engine, EngineConfig, ServerEndpoint};
use support::*;
use tlp::{Body, CfgType, ConfigRequest, CplStatus, MemOp, RoutingId, Tlp};
use transports::link::{LinkEvent, MemoryClock, RootPortEnd, memory_pair};

/// Room in the link's transmit queue: the DMA handler blocks once it holds this many MRds.
const LINK_QUEUE: usize = 4;

struct HandRc {
    rp: RootPortEnd,
    tag: u16,
    /// MRds the bridge sent (the device's DMA reads), counted while waiting for completions.
    mrds: usize,
}

impl HandRc {
    fn config(&mut self, register: u16, write: Option<u32>) -> Tlp {
        self.tag = (self.tag + 1) & 0xff;
        Tlp {
            prefixes: Vec::new(),
            tc: 0,
            attr: tlp::Attr::default(),
            ln: false,
            th: false,
            ep: false,
            at: 0,
            length: 1,
            body: Body::Config(ConfigRequest {
                cfg_type: CfgType::Type0,
                write: write.is_some(),
                requester: RC_ID,
                tag: self.tag,
                first_be: 0xf,
                last_be: 0,
                target: RoutingId::new(1, 0, 0),
                register,
            }),
            payload: write.map(|v| v.to_le_bytes().to_vec()).unwrap_or_default(),
            digest: None,
        }
    }

    /// The next TLP from the bridge that is not an MRd (MRds are counted and left unanswered).
    async fn next_completion(&mut self) -> Tlp {
        loop {
            let bytes = tokio::time::timeout(STEP, self.rp.from_bridge.recv()).await.expect("a TLP").unwrap();
            let tlp = Tlp::parse(&bytes).unwrap();
            match &tlp.body {
                Body::Memory(m) if m.op == MemOp::Read => self.mrds += 1,
                Body::Completion(_) => return tlp,
                _ => {}
            }
        }
    }

    /// A config request, retried while the device answers CRS (it is resetting).
    async fn config_access(&mut self, register: u16, write: Option<u32>) -> Tlp {
        loop {
            let request = self.config(register, write);
            self.rp.send_tlp(request.to_bytes()).await.unwrap();
            let cpl = self.next_completion().await;
            if status(&cpl) != CplStatus::Crs {
                assert_eq!(status(&cpl), CplStatus::Sc, "{cpl}");
                return cpl;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// BAR0 at `BAR0_ADDRESS`, memory space and bus mastering on.
    async fn enable(&mut self) {
        self.config_access(0x10, Some(BAR0_ADDRESS as u32)).await;
        self.config_access(0x04, Some(0x0006)).await;
    }

    async fn write_bar0(&mut self, offset: u64, data: &[u8]) {
        let fields = tlp::split::RequestFields { requester: RC_ID, tc: 0, attr: tlp::Attr::default() };
        let tlp = tlp::split::memory_write_tlp(&fields, BAR0_ADDRESS + offset, data, 4096).unwrap();
        self.rp.send_tlp(tlp.to_bytes()).await.unwrap();
    }

    async fn read_bar0_u32(&mut self, offset: u64) -> u32 {
        self.tag = (self.tag + 1) & 0xff;
        let fields = tlp::split::RequestFields { requester: RC_ID, tc: 0, attr: tlp::Attr::default() };
        let chunk = tlp::split::SplitChunk { address: BAR0_ADDRESS + offset, len: 4 };
        let request = tlp::split::memory_read_tlp(&fields, chunk, self.tag, 4096).unwrap();
        self.rp.send_tlp(request.to_bytes()).await.unwrap();
        let cpl = self.next_completion().await;
        assert_eq!(status(&cpl), CplStatus::Sc, "{cpl}");
        u32::from_le_bytes(cpl.payload[..4].try_into().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dma_read_interrupted_by_a_link_reset_issues_nothing_after_it_and_frees_every_tag() {
    let device = Device::new();
    let (link, rp) = memory_pair(MemoryClock::Wall, LINK_QUEUE);
    // A completion timeout far beyond the test: a tag quarantined by the aborted DMA stays taken.
    let config = EngineConfig {
        completion_timeout: Some(Duration::from_secs(3600)),
        device_timeout: Some(Duration::from_secs(5)),
        ..EngineConfig::default()
    };
    let engine =
        Engine::start(link, ServerEndpoint::Socket(spawn_server(device.clone())), config).await.unwrap();
    let mut rc = HandRc { rp, tag: 0, mrds: 0 };
    rc.enable().await;
    // A 64 KiB DMA read: 128 MRds of 512 bytes, far more than the link queue holds.
    rc.write_bar0(REG_DMA_ADDR, &HOST_BASE.to_le_bytes()).await;
    rc.write_bar0(REG_DMA_LEN, &0x1_0000u32.to_le_bytes()).await;
    rc.write_bar0(REG_DOORBELL, &[1, 0, 0, 0]).await;
    // Nothing is taken from the link: the handler fills the queue and blocks with its next MRd.
    let mut before_reset = 0;
    eventually(|| {
        let in_use = engine.tags_in_use();
        let settled = in_use == before_reset && in_use > LINK_QUEUE;
        before_reset = in_use;
        settled
    })
    .await;
    rc.rp.send_event(LinkEvent::Down).await.unwrap();
    // The reset frees every tag at once (the handler, blocked, cannot take one meanwhile).
    eventually(|| engine.counters().snapshot().resets == 1 && engine.tags_in_use() == 0).await;
    rc.rp.send_event(LinkEvent::Up).await.unwrap();
    rc.enable().await;
    // Ordered behind the doorbell, whose DMA the server finishes first: the handler is done.
    assert_eq!(rc.read_bar0_u32(REG_DMA_ERRNO).await, nix::errno::Errno::ENOTCONN as u32);
    assert!(
        rc.mrds <= before_reset,
        "{} MRds reached the link, {before_reset} were issued before the reset",
        rc.mrds
    );
    assert_eq!(engine.tags_in_use(), 0, "no tag is left quarantined by the aborted DMA");
    let snap = engine.shutdown().await;
    assert_eq!(snap.completion_timeouts, 0);
}
