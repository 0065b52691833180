//! Resets, link events, server loss, CRS while connecting, simulated time, 10-bit tags.

mod support;

use std::time::Duration;

use bridge::engine::{BridgeError, Engine, EngineConfig, ServerEndpoint};
use support::*;
use tlp::{Body, CfgType, CplStatus, RoutingId, Tlp};
use transports::link::{LinkEvent, MemoryClock, memory_pair};

fn config() -> EngineConfig {
    EngineConfig { device_timeout: Some(Duration::from_secs(5)), ..EngineConfig::default() }
}

fn completer(cpl: &Tlp) -> RoutingId {
    match &cpl.body {
        Body::Completion(c) => c.completer,
        _ => panic!("not a completion"),
    }
}

/// Reads the vendor/device ID, retrying while the device answers CRS.
async fn read_id_after_crs(rc: &mut RootComplex) -> Tlp {
    loop {
        let cpl = rc.cfg_read_cpl(0, 0xf).await;
        match status(&cpl) {
            CplStatus::Sc => return cpl,
            CplStatus::Crs => tokio::time::sleep(Duration::from_millis(1)).await,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn hot_reset_resets_the_device_and_forgets_the_bus_number() {
    let Setup { engine, mut rc, device } = setup(config()).await;
    rc.enumerate().await;
    rc.event(LinkEvent::HotReset).await;
    eventually(|| device.lock().unwrap().resets == 1).await;
    let cpl = read_id_after_crs(&mut rc).await;
    assert_eq!(completer(&cpl), RoutingId::new(0, 0, 0));
    let request = rc.mem_read_tlp(BAR0_ADDRESS, 4);
    rc.send(&request).await;
    assert_eq!(status(&rc.next_completion().await), CplStatus::Ur, "BARs are unassigned after reset");
    // Enumeration works again.
    rc.enumerate().await;
    let (data, _) = rc.mem_read(BAR0_ADDRESS + 0x40, 4).await;
    assert_eq!(data.len(), 4);
    let snap = engine.shutdown().await;
    assert_eq!(snap.resets, 1);
}

#[tokio::test]
async fn link_down_fails_outstanding_dma_with_enotconn() {
    let Setup { engine, mut rc, .. } = setup(config()).await;
    rc.enumerate().await;
    rc.host.lock().unwrap().policy = ReadPolicy::Hold;
    rc.mem_write(BAR0_ADDRESS + REG_DMA_ADDR, &HOST_BASE.to_le_bytes()).await;
    rc.mem_write(BAR0_ADDRESS + REG_DMA_LEN, &64u32.to_le_bytes()).await;
    rc.mem_write(BAR0_ADDRESS + REG_DOORBELL, &[1, 0, 0, 0]).await;
    let errno_read = rc.mem_read_tlp(BAR0_ADDRESS + REG_DMA_ERRNO, 4);
    rc.send(&errno_read).await;
    eventually(|| !rc.host.lock().unwrap().held.is_empty()).await;
    rc.event(LinkEvent::Down).await;
    let cpl = rc.next_completion().await;
    assert_eq!(status(&cpl), CplStatus::Sc);
    assert_eq!(u32::from_le_bytes(cpl.payload[..4].try_into().unwrap()), nix::errno::Errno::ENOTCONN as u32);
    rc.event(LinkEvent::Up).await;
    read_id_after_crs(&mut rc).await;
    engine.shutdown().await;
}

#[tokio::test]
async fn link_down_releases_the_aborted_tags_so_dma_works_at_once_after_link_up() {
    // A completion timeout far beyond the test: a tag quarantined by the link down would stay taken.
    let config = EngineConfig { completion_timeout: Some(Duration::from_secs(3600)), ..config() };
    let Setup { engine, mut rc, .. } = setup(config).await;
    rc.enumerate().await;
    rc.host.lock().unwrap().policy = ReadPolicy::Hold;
    rc.mem_write(BAR0_ADDRESS + REG_DMA_ADDR, &HOST_BASE.to_le_bytes()).await;
    rc.mem_write(BAR0_ADDRESS + REG_DMA_LEN, &4096u32.to_le_bytes()).await;
    rc.mem_write(BAR0_ADDRESS + REG_DOORBELL, &[1, 0, 0, 0]).await;
    eventually(|| !rc.host.lock().unwrap().held.is_empty()).await;
    assert!(engine.tags_in_use() > 0);
    rc.event(LinkEvent::Down).await;
    eventually(|| engine.counters().snapshot().resets == 1).await;
    // The held reads never complete: the link reset dropped them.
    rc.host.lock().unwrap().held.clear();
    rc.host.lock().unwrap().policy = ReadPolicy::InOrder;
    rc.event(LinkEvent::Up).await;
    read_id_after_crs(&mut rc).await;
    assert_eq!(engine.tags_in_use(), 0, "the link reset freed every tag");
    rc.enumerate().await;
    assert_eq!(rc.device_dma(1, HOST_BASE, 4096).await, 0, "a DMA right after link up succeeds");
    let snap = engine.shutdown().await;
    assert_eq!(snap.completion_timeouts, 0);
}

#[tokio::test]
async fn server_loss_stops_the_engine_and_fails_requests_with_ca() {
    let Setup { mut engine, mut rc, device } = setup(config()).await;
    rc.enumerate().await;
    device.lock().unwrap().hangup.notify_one();
    let reason = tokio::time::timeout(STEP, engine.stopped()).await.unwrap();
    assert!(matches!(*reason, BridgeError::ServerDisconnected(_)), "{reason}");
    let request = rc.mem_read_tlp(BAR0_ADDRESS, 4);
    rc.send(&request).await;
    assert_eq!(status(&rc.next_completion().await), CplStatus::Ca);
    engine.shutdown().await;
}

#[tokio::test]
async fn config_requests_get_crs_while_the_server_is_connecting() {
    let (link, mut rp) = memory_pair(MemoryClock::Wall, 16);
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let start = tokio::spawn(Engine::start(link, ServerEndpoint::Socket(ours.into()), config()));
    let mut rc_tag = RootComplexTags::default();
    let request = rc_tag.cfg_read(RoutingId::new(1, 0, 0));
    rp.send_tlp(request.to_bytes()).await.unwrap();
    let cpl = Tlp::parse(&tokio::time::timeout(STEP, rp.from_bridge.recv()).await.unwrap().unwrap()).unwrap();
    assert_eq!(status(&cpl), CplStatus::Crs);
    // Now the server answers and the engine starts.
    serve_on(theirs.into(), Device::new());
    let engine = tokio::time::timeout(STEP, start).await.unwrap().unwrap().unwrap();
    assert_eq!(engine.counters().snapshot().crs_sent, 1);
    engine.shutdown().await;
}

#[derive(Default)]
struct RootComplexTags {
    tag: u16,
}

impl RootComplexTags {
    fn cfg_read(&mut self, target: RoutingId) -> Tlp {
        self.tag += 1;
        Tlp {
            prefixes: Vec::new(),
            tc: 0,
            attr: tlp::Attr::default(),
            ln: false,
            th: false,
            ep: false,
            at: 0,
            length: 1,
            body: Body::Config(tlp::ConfigRequest {
                cfg_type: CfgType::Type0,
                write: false,
                requester: RC_ID,
                tag: self.tag,
                first_be: 0xf,
                last_be: 0,
                target,
                register: 0,
            }),
            payload: Vec::new(),
            digest: None,
        }
    }
}

#[tokio::test]
async fn completion_timeout_counts_simulated_time_not_wall_time() {
    let config = EngineConfig { completion_timeout: Some(Duration::from_millis(50)), ..config() };
    let Setup { engine, mut rc, .. } = setup_with_clock(config, MemoryClock::Simulated).await;
    rc.enumerate().await;
    rc.host.lock().unwrap().policy = ReadPolicy::Hold;
    rc.mem_write(BAR0_ADDRESS + REG_DMA_ADDR, &HOST_BASE.to_le_bytes()).await;
    rc.mem_write(BAR0_ADDRESS + REG_DMA_LEN, &16u32.to_le_bytes()).await;
    rc.mem_write(BAR0_ADDRESS + REG_DOORBELL, &[1, 0, 0, 0]).await;
    eventually(|| !rc.host.lock().unwrap().held.is_empty()).await;
    // Far more than 50 ms of wall time, no simulated time: still waiting.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(engine.counters().snapshot().completion_timeouts, 0);
    rc.advance(Duration::from_millis(51));
    let counters = engine.counters();
    eventually(|| counters.snapshot().completion_timeouts == 1).await;
    let (errno, _) = rc.mem_read(BAR0_ADDRESS + REG_DMA_ERRNO, 4).await;
    assert_eq!(u32::from_le_bytes(errno.try_into().unwrap()), nix::errno::Errno::ETIMEDOUT as u32);
    engine.shutdown().await;
}

#[tokio::test]
async fn ten_bit_tags_are_used_once_the_host_enables_them_and_mrrs_follows_device_control() {
    let Setup { engine, mut rc, .. } = setup(EngineConfig { ten_bit_tags: true, ..config() }).await;
    rc.enumerate().await;
    assert_eq!(rc.device_dma(1, HOST_BASE, 1024).await, 0);
    assert!(rc.host.lock().unwrap().tags_seen.iter().all(|&t| t < 256));
    rc.cfg_write(PCIE_CAP + 0x28, 1 << 12).await;
    // Device Control: MPS 256, MRRS 128.
    rc.cfg_write(PCIE_CAP + 8, 1 << 5).await; // MPS code 1 = 256, MRRS code 0 = 128
    rc.host.lock().unwrap().tags_seen.clear();
    assert_eq!(rc.device_dma(1, HOST_BASE, 1024).await, 0);
    let tags = rc.host.lock().unwrap().tags_seen.clone();
    assert_eq!(tags.len(), 8, "MRRS 128 splits 1 KiB into 8 reads");
    assert!(tags.iter().all(|&t| (256..1024).contains(&t)), "{tags:?}");
    engine.shutdown().await;
}
