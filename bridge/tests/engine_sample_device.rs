//! End to end against the sample device (`sim::device`, the DMA-engine card): enumerate, program
//! MSI-X through BAR4, copy host memory with the card's DMA engine, take the MSI-X interrupt.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bridge::engine::EngineConfig;
use sim::device::{DmaEngine, DmaEngineConfig, ServerConfig};
use support::*;
use transports::link::MemoryClock;

const BAR4_ADDRESS: u64 = 0xfe10_0000;
const MSIX_CAP_SAMPLE: u16 = 0x60;

#[tokio::test]
async fn sample_card_copies_host_memory_and_signals_msix() {
    let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
    let card = Arc::new(DmaEngine::new(DmaEngineConfig::default()).unwrap());
    tokio::spawn(async move {
        let _ = sim::device::server::serve_connection(theirs, card, &ServerConfig::default()).await;
    });
    let fd = ours.into_std().unwrap();
    fd.set_nonblocking(false).unwrap();
    let config = EngineConfig { device_timeout: Some(Duration::from_secs(5)), ..EngineConfig::default() };
    let (engine, mut rc) = setup_on(config, MemoryClock::Wall, fd.into()).await;

    assert_eq!(rc.cfg_read(0).await, 0x7e57_1234);
    rc.cfg_write(0x10, 0xffff_ffff).await;
    assert_eq!(rc.cfg_read(0x10).await, 0xffff_f000);
    rc.cfg_write(0x10, BAR0_ADDRESS as u32).await;
    rc.cfg_write(0x18, BAR2_ADDRESS as u32).await;
    rc.cfg_write(0x1c, (BAR2_ADDRESS >> 32) as u32).await;
    rc.cfg_write(0x20, BAR4_ADDRESS as u32).await;
    rc.cfg_write(0x04, 0x0006).await;
    // MSI-X on, vector 3 programmed and unmasked.
    rc.cfg_write(MSIX_CAP_SAMPLE, (0x8000u32 << 16) | 0x6c11).await;
    let mut entry = Vec::new();
    entry.extend_from_slice(&(MSI_ADDRESS as u32).to_le_bytes());
    entry.extend_from_slice(&0u32.to_le_bytes());
    entry.extend_from_slice(&0x4d3u32.to_le_bytes());
    entry.extend_from_slice(&0u32.to_le_bytes());
    rc.mem_write(BAR4_ADDRESS + 3 * 16, &entry).await;

    let (src, dst, len) = (HOST_BASE + 0x11, HOST_BASE + 0x10_0003, 100_000u32);
    rc.mem_write(BAR0_ADDRESS + 0x08, &src.to_le_bytes()).await;
    rc.mem_write(BAR0_ADDRESS + 0x10, &dst.to_le_bytes()).await;
    rc.mem_write(BAR0_ADDRESS + 0x18, &len.to_le_bytes()).await;
    rc.mem_write(BAR0_ADDRESS + 0x24, &0x0000_0305u32.to_le_bytes()).await;
    rc.mem_write(BAR0_ADDRESS + 0x1c, &1u32.to_le_bytes()).await;
    eventually(|| !rc.host.lock().unwrap().interrupts.is_empty()).await;
    assert_eq!(rc.host.lock().unwrap().interrupts[0], (MSI_ADDRESS, 0x4d3));
    let (status, _) = rc.mem_read(BAR0_ADDRESS + 0x20, 4).await;
    assert_eq!(u32::from_le_bytes(status.try_into().unwrap()) & 0x7, 0b010, "DONE, not BUSY or ERROR");
    {
        let host = rc.host.lock().unwrap();
        let src_at = (src - HOST_BASE) as usize;
        let dst_at = (dst - HOST_BASE) as usize;
        assert!(host.memory[dst_at..dst_at + len as usize] == host.memory[src_at..src_at + len as usize]);
    }
    let snap = engine.shutdown().await;
    assert_eq!((snap.dma_bytes_read, snap.dma_bytes_written), (u64::from(len), u64::from(len)));
    assert_eq!(snap.msix_sent, 1);
}
