//! Our vfio-user client against usbvfiod 0.3 (an xHCI controller on rust-vmm's vfio_user
//! server). usbvfiod panics on a DMA_MAP without fd and on config accesses that are not
//! naturally aligned 1/2/4/8-byte ones, so the client runs with DMA disabled and reads config
//! space the way a root port issues CfgRd.
//!
//! Expected values, from usbvfiod 0.3.0's `src/device/pci/xhci.rs` and `constants.rs`: IDs
//! 1b36:000d, class 0c 03 30; BAR0 16 KiB; MSI-X with one vector. A BAR0 read returns the
//! register whose offset equals the access address: CAPLENGTH (byte 0) = OP_BASE 0x40, HCIVERSION
//! (0x02, 16 bits) = 0x0100, HCSPARAMS1 (0x04) = MaxPorts 8 << 24 | MaxIntrs 1 << 8 | MaxSlots 8
//! = 0x0800_0108, DBOFF (0x14) = 0x2000, RTSOFF (0x18) = 0x3000.

use std::time::Duration;

use tlpbridge_tests::TestDir;
use tlpbridge_tests::peers;
use transports::vfio_user::{Client, ClientConfig, DmaMode, NoDma};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn xhci_config_and_capability_registers() {
    let dir = TestDir::new("usbvfiod").unwrap();
    let Some(mut peer) = peers::start_usbvfiod(&dir) else { return };
    let config = ClientConfig { dma: DmaMode::Disabled, ..ClientConfig::default() };
    let (client, _events) = tokio::time::timeout(WAIT, Client::connect(peer.socket(), config, NoDma))
        .await
        .expect("usbvfiod did not negotiate")
        .unwrap();

    let header = client.config_read(0, 16).await.unwrap();
    assert_eq!(header[0..4], [0x36, 0x1b, 0x0d, 0x00], "1b36:000d");
    assert_eq!(header[9..12], [0x30, 0x03, 0x0c], "class 0c0330 (xHCI)");
    assert_eq!(client.region_info(0).await.unwrap().size, 0x4000);
    assert_eq!(client.irq_info(2).await.unwrap().count, 1, "MSI-X");

    let read = |offset: u64, len: usize| {
        let client = client.clone();
        async move {
            let bytes = client.region_read(0, offset, len).await.unwrap();
            bytes.iter().rev().fold(0u64, |value, &b| value << 8 | u64::from(b))
        }
    };
    assert_eq!(read(0x00, 1).await, 0x40, "CAPLENGTH");
    assert_eq!(read(0x02, 2).await, 0x0100, "HCIVERSION");
    assert_eq!(read(0x04, 4).await, 0x0800_0108, "HCSPARAMS1");
    assert_eq!(read(0x14, 4).await, 0x2000, "DBOFF");
    assert_eq!(read(0x18, 4).await, 0x3000, "RTSOFF");

    // usbvfiod serves one connection and exits 0 when it closes; a panic would show here.
    client.close().await;
    let status = peer.wait_exit(WAIT).unwrap();
    let output = peer.output();
    assert!(status.success() && !output.contains("panicked"), "usbvfiod exited with {status}:\n{output}");
}
