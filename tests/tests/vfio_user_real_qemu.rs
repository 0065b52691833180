//! Our vfio-user client against QEMU's `x-vfio-user-server` (Debian's QEMU 7.2), driving the
//! device models the way a guest driver would: program the BAR in config space, enable Memory
//! Space, then use the registers.
//!
//! - edu (`hw/misc/edu.c`): BAR0 is 1 MiB of MMIO taking 4-byte accesses below 0x80. 0x00 reads
//!   the identification 0x010000ed; writing n to 0x08 starts a factorial in a worker thread that
//!   sets status (0x20) bit 0 while computing, after which 0x08 reads n!; writing v to 0x60 ORs v
//!   into the interrupt status (0x24) and raises the interrupt: MSI if the guest enabled it, else
//!   INTx, which the server delivers to the INTx eventfd (vfu_irq_trigger vector 0); 0x64 acks.
//! - nvme (`hw/nvme/ctrl.c`, `nvme_init_ctrl`): CAP (0x00, 64 bits) is MQES 0x7ff | CQR |
//!   TO 0xf | CSS (NVM, CSI supported, admin only = 0xc1) << 37 | MPSMAX 4 << 52, no CMB or PMR:
//!   0x0040_1820_0f01_07ff; VS (0x08) is NVME_SPEC_VER 0x00010400 (NVMe 1.4).

use std::os::fd::AsFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use tlpbridge_tests::TestDir;
use tlpbridge_tests::peers::{self, QemuDevice};
use transports::Error;
use transports::vfio_user::{Client, ClientConfig, DmaMode, NoDma};

/// Bounds every wait in these tests.
const WAIT: Duration = Duration::from_secs(20);
/// Where the tests place BAR0, as a firmware would: a 32-bit address aligned to the BAR sizes.
const BAR0_ADDRESS: u32 = 0xfe00_0000;
/// Command register: Memory Space Enable.
const COMMAND_MEMORY_SPACE: u16 = 1 << 1;

const EDU_ID: u64 = 0x00;
const EDU_FACTORIAL: u64 = 0x08;
const EDU_STATUS: u64 = 0x20;
const EDU_STATUS_COMPUTING: u32 = 1 << 0;
const EDU_IRQ_STATUS: u64 = 0x24;
const EDU_IRQ_RAISE: u64 = 0x60;
const EDU_IRQ_ACK: u64 = 0x64;

const NVME_CAP: u64 = 0x00;
const NVME_VS: u64 = 0x08;

async fn connect(socket: &std::path::Path) -> Client {
    // Probe-like connection: these tests make the device do no DMA.
    let config = ClientConfig { dma: DmaMode::Disabled, ..ClientConfig::default() };
    let (client, _events) = Client::connect(socket, config, NoDma).await.unwrap();
    client
}

async fn read_u32(client: &Client, region: u32, offset: u64) -> u32 {
    u32::from_le_bytes(client.region_read(region, offset, 4).await.unwrap().try_into().unwrap())
}

async fn write_u32(client: &Client, region: u32, offset: u64, value: u32) {
    client.region_write(region, offset, &value.to_le_bytes()).await.unwrap();
}

/// Places BAR0 at [`BAR0_ADDRESS`] (upper half 0 for a 64-bit BAR) and sets Memory Space
/// Enable, checking both through config reads.
async fn enable_bar0(client: &Client) {
    let bar0 = u32::from_le_bytes(client.config_read(0x10, 4).await.unwrap().try_into().unwrap());
    assert_eq!(bar0 & 1, 0, "BAR0 is not a memory BAR: {bar0:#x}");
    let is_64bit = (bar0 >> 1) & 0b11 == 0b10;
    client.region_write(7, 0x10, &BAR0_ADDRESS.to_le_bytes()).await.unwrap();
    if is_64bit {
        client.region_write(7, 0x14, &0u32.to_le_bytes()).await.unwrap();
    }
    let programmed = u32::from_le_bytes(client.config_read(0x10, 4).await.unwrap().try_into().unwrap());
    assert_eq!(programmed & !0xf, BAR0_ADDRESS, "BAR0 read back {programmed:#x}");

    let command = u16::from_le_bytes(client.config_read(0x04, 2).await.unwrap().try_into().unwrap());
    client.region_write(7, 0x04, &(command | COMMAND_MEMORY_SPACE).to_le_bytes()).await.unwrap();
    let command = u16::from_le_bytes(client.config_read(0x04, 2).await.unwrap().try_into().unwrap());
    assert_ne!(command & COMMAND_MEMORY_SPACE, 0, "Memory Space Enable did not stick: {command:#06x}");
}

/// QEMU was started with auto-shutdown: it exits once its client disconnects.
fn assert_exits_after_close(peer: &mut peers::RunningPeer) {
    let status = peer.wait_exit(WAIT).unwrap();
    assert!(status.success(), "QEMU exited with {status}:\n{}", peer.output());
}

#[tokio::test]
async fn edu_identification_factorial_and_intx() {
    let dir = TestDir::new("qemu-edu").unwrap();
    let Some(mut peer) = peers::start_qemu(&dir, QemuDevice::Edu) else { return };
    let client = connect(peer.socket()).await;

    assert_eq!(client.config_read(0, 4).await.unwrap(), [0x34, 0x12, 0xe8, 0x11], "1234:11e8");
    assert_eq!(client.region_info(0).await.unwrap().size, 1 << 20);
    // Until BAR0 is placed and Memory Space enabled, QEMU's server refuses BAR accesses.
    let refused = client.region_read(0, EDU_ID, 4).await;
    assert!(matches!(refused, Err(Error::Server { errno: 22, .. })), "{refused:?}");
    enable_bar0(&client).await;

    assert_eq!(read_u32(&client, 0, EDU_ID).await, 0x0100_00ed);

    // 10! = 3628800 fits the 32-bit register.
    write_u32(&client, 0, EDU_FACTORIAL, 10).await;
    let polling = async {
        while read_u32(&client, 0, EDU_STATUS).await & EDU_STATUS_COMPUTING != 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(WAIT, polling).await.expect("edu factorial still computing");
    assert_eq!(read_u32(&client, 0, EDU_FACTORIAL).await, 3_628_800);

    // MSI is left disabled (edu's MSI capability Enable bit is clear), so edu raises INTx.
    assert_eq!(client.irq_info(0).await.unwrap().count, 1, "INTx");
    let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).unwrap();
    client.set_irqs_eventfds(0, 0, &[efd.as_fd()]).await.unwrap();
    write_u32(&client, 0, EDU_IRQ_RAISE, 0x5).await;
    let fired = async {
        loop {
            match efd.read() {
                Ok(count) => return count,
                Err(Errno::EAGAIN) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => panic!("reading the INTx eventfd: {e}"),
            }
        }
    };
    let count = tokio::time::timeout(WAIT, fired).await.expect("INTx eventfd did not fire");
    assert!(count >= 1);
    assert_eq!(read_u32(&client, 0, EDU_IRQ_STATUS).await, 0x5);
    write_u32(&client, 0, EDU_IRQ_ACK, 0x5).await;
    assert_eq!(read_u32(&client, 0, EDU_IRQ_STATUS).await, 0);

    client.close().await;
    assert_exits_after_close(&mut peer);
}

#[tokio::test]
async fn nvme_capability_and_version_registers() {
    let dir = TestDir::new("qemu-nvme").unwrap();
    let Some(mut peer) = peers::start_qemu(&dir, QemuDevice::Nvme) else { return };
    let client = connect(peer.socket()).await;

    enable_bar0(&client).await;
    let cap = u64::from_le_bytes(client.region_read(0, NVME_CAP, 8).await.unwrap().try_into().unwrap());
    assert_eq!(cap, 0x0040_1820_0f01_07ff, "CAP {cap:#018x}");
    assert_eq!(read_u32(&client, 0, NVME_VS).await, 0x0001_0400, "NVMe 1.4");
    // The two halves of CAP read as 32-bit registers agree with the 64-bit read.
    assert_eq!(read_u32(&client, 0, NVME_CAP).await, cap as u32);
    assert_eq!(read_u32(&client, 0, NVME_CAP + 4).await, (cap >> 32) as u32);

    client.close().await;
    assert_exits_after_close(&mut peer);
}
