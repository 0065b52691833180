//! The sample device driven by the transports client over a real UNIX socket.

mod device_common;

use std::os::fd::AsFd;

use device_common::*;
use sim::device::ServerConfig;
use sim::device::dma_engine::{
    CLASS_CODE, DEVICE_ID, ID_MAGIC, MSIX_PBA_OFFSET, VENDOR_ID, error_code, regs, status,
};
use tlp::config_space::{BarKind, ConfigView, cap_id, size_from_probe};
use transports::vfio_user::wire::{irq_index, region_flags};

#[tokio::test]
async fn negotiation_with_twin_socket_and_device_queries() {
    let server = start_server(ServerConfig::default());
    let (client, _memory, _gate) = connect(&server, true).await;
    let negotiated = client.negotiated();
    assert!(negotiated.twin_socket);
    assert_eq!((negotiated.major, negotiated.minor), (0, 2));
    assert_eq!(negotiated.server.max_msg_fds, 8);

    let info = client.device_info().await.unwrap();
    assert!(info.is_pci() && info.resettable());
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));
    let bar0 = client.region_info(0).await.unwrap();
    assert_eq!(bar0.size, 0x1000);
    assert_eq!(bar0.flags, region_flags::READ | region_flags::WRITE);
    assert!(bar0.caps.is_empty());
    assert_eq!(client.region_info(1).await.unwrap().size, 0);
    assert_eq!(client.region_info(2).await.unwrap().size, 0x1_0000);
    assert_eq!(client.region_info(7).await.unwrap().size, 4096);
    assert!(client.region_info(9).await.is_err());
    assert_eq!(client.irq_info(irq_index::INTX).await.unwrap().count, 1);
    assert_eq!(client.irq_info(irq_index::MSI).await.unwrap().count, 4);
    assert_eq!(client.irq_info(irq_index::MSIX).await.unwrap().count, 8);
    assert!(client.irq_info(5).await.is_err());
    assert_eq!(read_u32(&client, 0, regs::ID).await, ID_MAGIC);
}

#[tokio::test]
async fn negotiation_without_twin_socket() {
    // The client does not ask.
    let server = start_server(ServerConfig::default());
    let (client, _memory, _gate) = connect(&server, false).await;
    assert!(!client.negotiated().twin_socket);
    // The server refuses although the client asks.
    let server = start_server(ServerConfig { offer_twin_socket: false, ..ServerConfig::default() });
    let (client, _memory, _gate) = connect(&server, true).await;
    assert!(!client.negotiated().twin_socket);
    assert_eq!(read_u32(&client, 0, regs::ID).await, ID_MAGIC);
}

#[tokio::test]
async fn config_space_ids_capabilities_and_bar_sizing() {
    let server = start_server(ServerConfig::default());
    let (client, _memory, _gate) = connect(&server, true).await;
    let bytes = config_image(&client).await;
    let view = ConfigView::new(&bytes).unwrap();
    assert_eq!(view.vendor_id(), VENDOR_ID);
    assert_eq!(view.device_id(), DEVICE_ID);
    assert_eq!(view.class_code().to_u24(), CLASS_CODE);
    assert_eq!(view.interrupt_pin(), 1);
    let caps: Vec<(u8, u16)> = view.capabilities().map(|c| c.map(|c| (c.id, c.offset)).unwrap()).collect();
    // The offsets documented in docs/sample-device.md.
    assert_eq!(
        caps,
        vec![
            (cap_id::POWER_MANAGEMENT, 0x40),
            (cap_id::MSI, 0x48),
            (cap_id::MSI_X, 0x60),
            (cap_id::PCI_EXPRESS, 0x6c)
        ]
    );
    assert_eq!(server.card.capability_offsets().msix, 0x60);
    let msix = view.msix().unwrap().unwrap();
    assert_eq!(
        (msix.table_bir, msix.table_offset, msix.pba_bir, msix.pba_offset),
        (4, 0, 4, MSIX_PBA_OFFSET)
    );
    assert_eq!(msix.control.table_size(), 8);
    let msi = view.msi().unwrap().unwrap();
    assert!(msi.control.is_64bit() && msi.control.per_vector_masking());
    assert_eq!(msi.control.vectors_capable(), 4);
    assert!(view.pci_express().unwrap().is_some());

    // Read-only fields stay; the command register takes only its writable bits.
    write_u32(&client, CONFIG, 0, 0xffff_ffff).await;
    assert_eq!(read_u32(&client, CONFIG, 0).await, u32::from(DEVICE_ID) << 16 | u32::from(VENDOR_ID));
    write_u16(&client, CONFIG, 4, 0xffff).await;
    assert_eq!(read_u32(&client, CONFIG, 4).await & 0xffff, 0x0546);

    // BAR sizing with all-ones writes.
    write_u32(&client, CONFIG, 0x10, 0xffff_ffff).await;
    let bar0 = read_u32(&client, CONFIG, 0x10).await;
    assert_eq!(size_from_probe(BarKind::Mem32, u64::from(bar0)), Some(0x1000));
    write_u32(&client, CONFIG, 0x18, 0xffff_ffff).await;
    write_u32(&client, CONFIG, 0x1c, 0xffff_ffff).await;
    let low = read_u32(&client, CONFIG, 0x18).await;
    let high = read_u32(&client, CONFIG, 0x1c).await;
    assert_eq!(low & 0xf, 0xc, "64-bit prefetchable");
    assert_eq!(size_from_probe(BarKind::Mem64, u64::from(high) << 32 | u64::from(low)), Some(0x1_0000));
    write_u32(&client, CONFIG, 0x14, 0xffff_ffff).await;
    assert_eq!(read_u32(&client, CONFIG, 0x14).await, 0, "unimplemented BAR1");
    write_u32(&client, CONFIG, 0x10, 0xfebf_1234).await;
    assert_eq!(read_u32(&client, CONFIG, 0x10).await, 0xfebf_1000);

    // Out-of-range config access is refused.
    assert!(client.region_read(CONFIG, 4094, 4).await.is_err());
}

async fn copy_job(twin_socket: bool) {
    let server = start_server(ServerConfig::default());
    let (client, memory, _gate) = connect(&server, twin_socket).await;
    assert_eq!(client.negotiated().twin_socket, twin_socket);
    enable_device(&client).await;
    let msi = enable_msi(&client).await;
    let src = HOST_BASE + 0x1000;
    let dst = HOST_BASE + 0x8_0000;
    let data = pattern(10_000, 7);
    memory.fill(src, &data);
    start_copy(&client, src, dst, data.len() as u32, msi_vector(0)).await;
    assert_eq!(wait_eventfd(&msi).await, 1);
    assert_eq!(read_u32(&client, 0, regs::STATUS).await, status::DONE);
    assert_eq!(read_u32(&client, 0, regs::COPY_COUNT).await, 1);
    assert_eq!(memory.get(dst, data.len()), data);
    // Chunked by the client's max_data_xfer_size (4096): 3 reads and 3 writes.
    let sizes = memory.request_sizes.lock().unwrap().clone();
    assert_eq!(sizes, vec![4096, 4096, 1808, 4096, 4096, 1808]);
    // DONE is W1C.
    write_u32(&client, 0, regs::STATUS, status::DONE).await;
    assert_eq!(read_u32(&client, 0, regs::STATUS).await, 0);
}

#[tokio::test]
async fn copy_job_on_the_twin_socket_raises_msi() {
    copy_job(true).await;
}

#[tokio::test]
async fn copy_job_on_the_main_socket_raises_msi() {
    copy_job(false).await;
}

#[tokio::test]
async fn dma_outside_mapped_windows_sets_error_and_raises_msix() {
    let server = start_server(ServerConfig::default());
    let (client, memory, _gate) = connect(&server, true).await;
    enable_device(&client).await;
    let msix_cap = cap_offset(&client, cap_id::MSI_X).await;
    write_u16(&client, CONFIG, msix_cap + 2, 0x8000).await; // MSI-X enable
    // Entry 3: address, data, unmask.
    client.region_write(4, 3 * 16, &[0, 0, 0xe0, 0xfe, 0, 0, 0, 0, 0x33, 0, 0, 0, 0, 0, 0, 0]).await.unwrap();
    let fd = eventfd();
    client.set_irqs_eventfds(irq_index::MSIX, 3, &[fd.as_fd()]).await.unwrap();

    // Source below the window.
    start_copy(&client, 0x1000, HOST_BASE, 64, msix_vector(3)).await;
    assert_eq!(wait_eventfd(&fd).await, 1);
    let st = read_u32(&client, 0, regs::STATUS).await;
    assert_eq!(st, status::ERROR | u32::from(error_code::SOURCE_NOT_MAPPED) << status::ERROR_CODE_SHIFT);
    // Destination crossing the window end.
    write_u32(&client, 0, regs::STATUS, status::ERROR).await;
    assert_eq!(read_u32(&client, 0, regs::STATUS).await, 0);
    start_copy(&client, HOST_BASE, HOST_BASE + HOST_SIZE - 16, 64, msix_vector(3)).await;
    assert_eq!(wait_eventfd(&fd).await, 1);
    let st = read_u32(&client, 0, regs::STATUS).await;
    assert_eq!(st >> status::ERROR_CODE_SHIFT, u32::from(error_code::DESTINATION_NOT_MAPPED));
    assert_eq!(read_u32(&client, 0, regs::COPY_COUNT).await, 0);
    assert!(memory.request_sizes.lock().unwrap().iter().all(|&s| s == 64), "only the valid read went out");

    // A masked entry holds the interrupt in the PBA until it is unmasked.
    write_u32(&client, 0, regs::STATUS, status::ERROR).await;
    client.region_write(4, 3 * 16 + 12, &[1, 0, 0, 0]).await.unwrap();
    start_copy(&client, HOST_BASE, HOST_BASE + 0x100, 16, msix_vector(3)).await;
    while read_u32(&client, 0, regs::STATUS).await & status::DONE == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(!eventfd_signalled(&fd));
    assert_eq!(read_u32(&client, 4, u64::from(MSIX_PBA_OFFSET)).await, 1 << 3);
    client.region_write(4, 3 * 16 + 12, &[0, 0, 0, 0]).await.unwrap();
    assert_eq!(wait_eventfd(&fd).await, 1);
    assert_eq!(read_u32(&client, 4, u64::from(MSIX_PBA_OFFSET)).await, 0);
}

#[tokio::test]
async fn status_is_served_while_busy_and_reset_aborts_the_copy() {
    let server = start_server(ServerConfig::default());
    let (client, memory, gate) = connect(&server, true).await;
    enable_device(&client).await;
    let msi = enable_msi(&client).await;
    write_u32(&client, 0, regs::SCRATCH_LO, 0xdead_beef).await;
    gate.send(false).unwrap(); // hold the host's DMA read completions
    start_copy(&client, HOST_BASE, HOST_BASE + 0x1000, 256, msi_vector(0)).await;
    assert_eq!(read_u32(&client, 0, regs::STATUS).await, status::BUSY);
    client.reset().await.unwrap();
    assert_eq!(read_u32(&client, 0, regs::STATUS).await, 0);
    assert_eq!(read_u32(&client, 0, regs::SCRATCH_LO).await, 0);
    assert_eq!(read_u32(&client, CONFIG, 4).await & 0xffff, 0, "command register reset");
    gate.send(true).unwrap(); // the aborted DMA's reply arrives late and is dropped
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(read_u32(&client, 0, regs::STATUS).await, 0);
    assert!(!eventfd_signalled(&msi));
    assert_eq!(memory.get(HOST_BASE + 0x1000, 256), vec![0; 256]);

    // The device works after the reset.
    enable_device(&client).await;
    let msi = enable_msi(&client).await;
    memory.fill(HOST_BASE, &pattern(256, 3));
    start_copy(&client, HOST_BASE, HOST_BASE + 0x1000, 256, msi_vector(0)).await;
    assert_eq!(wait_eventfd(&msi).await, 1);
    assert_eq!(memory.get(HOST_BASE + 0x1000, 256), pattern(256, 3));
}

#[tokio::test]
async fn intx_respects_the_command_register() {
    let server = start_server(ServerConfig::default());
    let (client, memory, _gate) = connect(&server, true).await;
    write_u16(&client, CONFIG, 4, 0x0406).await; // MEM | BME | INTx disable
    let fd = eventfd();
    client.set_irqs_eventfds(irq_index::INTX, 0, &[fd.as_fd()]).await.unwrap();
    memory.fill(HOST_BASE, &pattern(32, 1));
    start_copy(&client, HOST_BASE, HOST_BASE + 0x100, 32, 1).await; // enable, INTx
    while read_u32(&client, 0, regs::STATUS).await & status::DONE == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(!eventfd_signalled(&fd));
    assert_ne!(read_u32(&client, CONFIG, 4).await & (1 << 19), 0, "Interrupt Status set");
    write_u16(&client, CONFIG, 4, 0x0006).await; // INTx enabled again: asserts
    assert_eq!(wait_eventfd(&fd).await, 1);
    write_u32(&client, 0, regs::STATUS, status::DONE).await;
    assert_eq!(read_u32(&client, CONFIG, 4).await & (1 << 19), 0, "Interrupt Status cleared");
}

#[tokio::test]
async fn bus_master_off_and_oversized_length_fail_without_dma() {
    let server = start_server(ServerConfig::default());
    let (client, memory, _gate) = connect(&server, true).await;
    let msi = enable_msi(&client).await;
    write_u16(&client, CONFIG, 4, 0x0002).await; // memory only
    start_copy(&client, HOST_BASE, HOST_BASE + 0x100, 16, msi_vector(0)).await;
    assert_eq!(wait_eventfd(&msi).await, 1);
    let st = read_u32(&client, 0, regs::STATUS).await;
    assert_eq!(st >> status::ERROR_CODE_SHIFT, u32::from(error_code::BUS_MASTER_DISABLED));
    enable_device(&client).await;
    let max = read_u32(&client, 0, regs::MAX_LENGTH).await;
    start_copy(&client, HOST_BASE, HOST_BASE + 0x100, max + 1, msi_vector(0)).await;
    assert_eq!(wait_eventfd(&msi).await, 1);
    let st = read_u32(&client, 0, regs::STATUS).await;
    assert_eq!(st >> status::ERROR_CODE_SHIFT, u32::from(error_code::BAD_LENGTH));
    assert!(memory.request_sizes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn bar2_window_and_scratch_registers() {
    let server = start_server(ServerConfig::default());
    let (client, _memory, _gate) = connect(&server, true).await;
    let data = pattern(0x1_0000, 9);
    client.region_write(2, 0, &data).await.unwrap();
    assert_eq!(client.region_read(2, 0, data.len()).await.unwrap(), data);
    assert!(client.region_read(2, 0xfffc, 8).await.is_err());
    client.region_write(0, regs::SCRATCH_LO, &0x0123_4567_89ab_cdefu64.to_le_bytes()).await.unwrap();
    assert_eq!(
        client.region_read(0, regs::SCRATCH_LO, 8).await.unwrap(),
        0x0123_4567_89ab_cdefu64.to_le_bytes()
    );
    // A 2-byte write into the middle of a register merges.
    client.region_write(0, regs::SCRATCH_LO + 1, &[0, 0]).await.unwrap();
    assert_eq!(read_u32(&client, 0, regs::SCRATCH_LO).await, 0x8900_00ef);
    // ID is read-only.
    write_u32(&client, 0, regs::ID, 0).await;
    assert_eq!(read_u32(&client, 0, regs::ID).await, ID_MAGIC);
}

#[tokio::test]
async fn reconnect_keeps_device_state_and_drops_windows() {
    let server = start_server(ServerConfig::default());
    let (client, _memory, _gate) = connect(&server, true).await;
    enable_device(&client).await;
    write_u32(&client, 0, regs::SCRATCH_HI, 0x5555_aaaa).await;
    client.close().await;
    drop(client);

    let (memory, _gate) = HostMemory::new();
    let config = transports::vfio_user::ClientConfig {
        dma: transports::vfio_user::DmaMode::Windows(Vec::new()),
        ..client_config(false)
    };
    let (client, _events) =
        transports::vfio_user::Client::connect(&server.path, config, memory.clone()).await.unwrap();
    assert_eq!(read_u32(&client, 0, regs::SCRATCH_HI).await, 0x5555_aaaa);
    // The first client's window is gone: a copy cannot reach host memory.
    let msi = enable_msi(&client).await;
    start_copy(&client, HOST_BASE, HOST_BASE + 0x100, 16, msi_vector(0)).await;
    assert_eq!(wait_eventfd(&msi).await, 1);
    let st = read_u32(&client, 0, regs::STATUS).await;
    assert_eq!(st >> status::ERROR_CODE_SHIFT, u32::from(error_code::SOURCE_NOT_MAPPED));
}

#[tokio::test]
async fn set_irqs_validation() {
    use transports::vfio_user::{IrqAction, IrqData};
    let server = start_server(ServerConfig::default());
    let (client, _memory, _gate) = connect(&server, true).await;
    let fd = eventfd();
    // Out of range vectors and indices.
    assert!(client.set_irqs_eventfds(irq_index::MSI, 4, &[fd.as_fd()]).await.is_err());
    assert!(client.set_irqs_eventfds(irq_index::MSI, 3, &[fd.as_fd(), fd.as_fd()]).await.is_err());
    assert!(client.set_irqs_eventfds(7, 0, &[fd.as_fd()]).await.is_err());
    // ERR/REQ: trigger only.
    assert!(client.set_irqs_action(irq_index::ERR, 0, 1, IrqAction::Mask, IrqData::None).await.is_err());
    // Trigger from the client signals the eventfd; mask holds it until unmask.
    client.set_irqs_eventfds(irq_index::MSIX, 0, &[fd.as_fd()]).await.unwrap();
    client.set_irqs_action(irq_index::MSIX, 0, 1, IrqAction::Trigger, IrqData::None).await.unwrap();
    assert_eq!(wait_eventfd(&fd).await, 1);
    client.set_irqs_action(irq_index::MSIX, 0, 1, IrqAction::Mask, IrqData::None).await.unwrap();
    client
        .set_irqs_action(irq_index::MSIX, 0, 1, IrqAction::Trigger, IrqData::Bool(vec![true]))
        .await
        .unwrap();
    assert!(!eventfd_signalled(&fd));
    client.set_irqs_action(irq_index::MSIX, 0, 1, IrqAction::Unmask, IrqData::None).await.unwrap();
    assert_eq!(wait_eventfd(&fd).await, 1);
    // De-assign, then a trigger goes nowhere.
    client.set_irqs_deassign(irq_index::MSIX, 0, 1).await.unwrap();
    client.set_irqs_action(irq_index::MSIX, 0, 1, IrqAction::Trigger, IrqData::None).await.unwrap();
    assert!(!eventfd_signalled(&fd));
    client.disable_irqs(irq_index::MSIX).await.unwrap();
}

#[tokio::test]
async fn dma_error_reply_and_timeout_set_error_codes() {
    let server = start_server(ServerConfig {
        dma_timeout: std::time::Duration::from_millis(200),
        ..ServerConfig::default()
    });
    let (memory, gate) = HostMemory::new();
    // A window larger than the host memory behind it: the handler fails reads past the end
    // (EFAULT error replies), although the window check passes.
    let config = transports::vfio_user::ClientConfig {
        dma: transports::vfio_user::DmaMode::Windows(vec![transports::vfio_user::DmaWindow::read_write(
            HOST_BASE,
            2 * HOST_SIZE,
        )]),
        ..client_config(true)
    };
    let (client, _events) =
        transports::vfio_user::Client::connect(&server.path, config, memory.clone()).await.unwrap();
    enable_device(&client).await;
    let msi = enable_msi(&client).await;
    start_copy(&client, HOST_BASE + HOST_SIZE, HOST_BASE, 64, msi_vector(0)).await;
    assert_eq!(wait_eventfd(&msi).await, 1);
    let st = read_u32(&client, 0, regs::STATUS).await;
    assert_eq!(st, status::ERROR | u32::from(error_code::READ_REJECTED) << status::ERROR_CODE_SHIFT);
    assert_eq!(read_u32(&client, 0, regs::DMA_ERRNO).await, nix::errno::Errno::EFAULT as u32);
    write_u32(&client, 0, regs::STATUS, status::ERROR).await;
    assert_eq!(read_u32(&client, 0, regs::DMA_ERRNO).await, 0);
    // Writes past the memory fail too.
    start_copy(&client, HOST_BASE, HOST_BASE + HOST_SIZE, 64, msi_vector(0)).await;
    assert_eq!(wait_eventfd(&msi).await, 1);
    let st = read_u32(&client, 0, regs::STATUS).await;
    assert_eq!(st >> status::ERROR_CODE_SHIFT, u32::from(error_code::WRITE_REJECTED));

    // No reply within the server's DMA timeout.
    gate.send(false).unwrap();
    start_copy(&client, HOST_BASE, HOST_BASE + 0x100, 64, msi_vector(0)).await;
    assert_eq!(wait_eventfd(&msi).await, 1);
    let st = read_u32(&client, 0, regs::STATUS).await;
    assert_eq!(st >> status::ERROR_CODE_SHIFT, u32::from(error_code::TIMEOUT));
    gate.send(true).unwrap();
}

#[tokio::test]
async fn serve_replaces_stale_sockets_refuses_live_ones_and_removes_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.sock");
    // A stale socket file: bound, then its listener dropped.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let card = std::sync::Arc::new(sim::device::DmaEngine::new(Default::default()).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_path = path.clone();
    let server_card = card.clone();
    let task = tokio::spawn(async move {
        sim::device::serve(&server_path, server_card, ServerConfig::default(), async move {
            let _ = stopped.await;
        })
        .await
    });
    // Wait until it accepts connections.
    let mut connected = None;
    for _ in 0..500 {
        if let Ok(stream) = tokio::net::UnixStream::connect(&path).await {
            connected = Some(stream);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop(connected.expect("server listening"));
    // A second server on the live socket is refused.
    let second = sim::device::serve(&path, card, ServerConfig::default(), async {}).await;
    assert!(matches!(second, Err(sim::Error::Listen { .. })), "{second:?}");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(!path.exists(), "socket file removed on exit");
    // A path that is not a socket is never replaced.
    std::fs::write(&path, b"data").unwrap();
    let refused = sim::device::serve(
        &path,
        std::sync::Arc::new(sim::device::DmaEngine::new(Default::default()).unwrap()),
        ServerConfig::default(),
        async {},
    )
    .await;
    assert!(matches!(refused, Err(sim::Error::Listen { .. })));
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
}

#[tokio::test]
async fn msi_per_vector_mask_holds_the_interrupt_pending() {
    let server = start_server(ServerConfig::default());
    let (client, memory, _gate) = connect(&server, false).await;
    enable_device(&client).await;
    let msi = enable_msi(&client).await;
    let cap = cap_offset(&client, cap_id::MSI).await;
    write_u32(&client, CONFIG, cap + 0x10, 1).await; // mask vector 0
    memory.fill(HOST_BASE, &pattern(8, 5));
    start_copy(&client, HOST_BASE, HOST_BASE + 0x40, 8, msi_vector(0)).await;
    while read_u32(&client, 0, regs::STATUS).await & status::DONE == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(!eventfd_signalled(&msi));
    assert_eq!(read_u32(&client, CONFIG, cap + 0x14).await, 1, "pending bit");
    write_u32(&client, CONFIG, cap + 0x14, 0).await; // pending bits are read-only
    assert_eq!(read_u32(&client, CONFIG, cap + 0x14).await, 1);
    write_u32(&client, CONFIG, cap + 0x10, 0).await; // unmask: delivered now
    assert_eq!(wait_eventfd(&msi).await, 1);
    assert_eq!(read_u32(&client, CONFIG, cap + 0x14).await, 0);
    // A vector beyond the enabled count (MME = 0: one vector) is not signalled.
    start_copy(&client, HOST_BASE, HOST_BASE + 0x40, 8, msi_vector(2)).await;
    while read_u32(&client, 0, regs::STATUS).await & status::DONE == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(!eventfd_signalled(&msi));
    assert_eq!(memory.get(HOST_BASE + 0x40, 8), pattern(8, 5));
}
