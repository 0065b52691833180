//! The engine driven over an in-memory link as a root port would, against the test device.

mod support;

use std::time::Duration;

use bridge::engine::{AccessSplit, DmaWindows, EngineConfig, MAX_DMA_WINDOW, WHOLE_BUS_WINDOW};
use support::*;
use tlp::{Body, CfgType, CplStatus, RoutingId};
use transports::vfio_user::DmaWindow;

fn config() -> EngineConfig {
    EngineConfig { device_timeout: Some(Duration::from_secs(5)), ..EngineConfig::default() }
}

fn completer(cpl: &tlp::Tlp) -> RoutingId {
    match &cpl.body {
        Body::Completion(c) => c.completer,
        _ => panic!("not a completion"),
    }
}

#[tokio::test]
async fn enumeration_captures_the_id_and_mmio_of_every_width_reaches_the_bars() {
    let Setup { engine, mut rc, device } = setup(config()).await;
    rc.enumerate().await;
    // The function captured bus 1, device 0 from the CfgWr0s.
    let cpl = rc.cfg_read_cpl(0, 0xf).await;
    assert_eq!(completer(&cpl), RoutingId::new(1, 0, 0));
    // Config read with partial byte enables: only the enabled bytes come back.
    let cpl = rc.cfg_read_cpl(0, 0b0100).await;
    assert_eq!(cpl.payload, vec![0, 0, 0x34, 0]);

    for (offset, data) in [
        (0x00u64, vec![0x11u8]),
        (0x02, vec![0x22, 0x23]),
        (0x04, vec![1, 2, 3, 4]),
        (0x08, (0..8).collect()),
        (0x13, (0..13).collect()),
    ] {
        rc.mem_write(BAR0_ADDRESS + offset, &data).await;
        let (read, _) = rc.mem_read(BAR0_ADDRESS + offset, data.len() as u32).await;
        assert_eq!(read, data, "offset {offset:#x}");
    }
    // Non-prefetchable BAR: every access naturally aligned and at most 8 bytes.
    let accesses = device.lock().unwrap().accesses.clone();
    for a in accesses.iter().filter(|a| a.region == 0 || a.region == 7) {
        assert!(a.count <= 8 && a.offset % u64::from(a.count) == 0, "{a:?}");
    }
    // Prefetchable BAR: a 1 KiB read is one access, answered with CplDs split at RCB/MPS.
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 3) as u8).collect();
    rc.mem_write(BAR2_ADDRESS + 0x40, &data).await;
    let (read, cpls) = rc.mem_read(BAR2_ADDRESS + 0x40, 1024).await;
    assert_eq!(read, data);
    // MPS 128, RCB 128: 0x40..0x80, then 128-byte pieces, then 0x400..0x440.
    assert_eq!(cpls.len(), 9);
    assert!(cpls.iter().all(|c| c.payload.len() <= 128));
    let ends: Vec<u64> = cpls
        .iter()
        .map(|c| match &c.body {
            Body::Completion(h) => {
                0x40 + 1024 - u64::from(h.byte_count) + c.payload.len() as u64
                    - u64::from(h.lower_address & 3)
            }
            _ => unreachable!(),
        })
        .collect();
    assert!(ends[..8].iter().all(|end| end % 128 == 0), "{ends:x?}");
    let bar2: Vec<_> = device.lock().unwrap().accesses.iter().filter(|a| a.region == 2).cloned().collect();
    assert_eq!(bar2.last().map(|a| a.count), Some(1024));
    let snap = engine.shutdown().await;
    assert_eq!(snap.ur_sent, 0);
    assert!(snap.received("CfgWr0") >= 6);
}

#[tokio::test]
async fn non_contiguous_byte_enables_touch_only_enabled_bytes() {
    let Setup { engine, mut rc, device } = setup(config()).await;
    rc.enumerate().await;
    rc.mem_write(BAR0_ADDRESS, &[0xaa; 8]).await;
    // This read is ordered after the write, so the write reached the device before the log is cleared.
    assert_eq!(rc.mem_read(BAR0_ADDRESS, 8).await.0, vec![0xaa; 8]);
    let request = {
        let mut r = rc.mem_read_tlp(BAR0_ADDRESS, 8);
        if let Body::Memory(m) = &mut r.body {
            m.first_be = 0b1001;
            m.last_be = 0b0101;
        }
        r
    };
    device.lock().unwrap().accesses.clear();
    rc.send(&request).await;
    let cpl = rc.next_completion().await;
    assert_eq!(status(&cpl), CplStatus::Sc);
    assert_eq!(cpl.payload, vec![0xaa, 0, 0, 0xaa, 0xaa, 0, 0xaa, 0]);
    let offsets: Vec<(u64, u32)> =
        device.lock().unwrap().accesses.iter().map(|a| (a.offset, a.count)).collect();
    assert_eq!(offsets, vec![(0, 1), (3, 1), (4, 1), (6, 1)]);
    engine.shutdown().await;
}

#[tokio::test]
async fn misses_type1_and_other_functions_get_ur_posted_misses_are_dropped() {
    let Setup { engine, mut rc, .. } = setup(config()).await;
    // Memory space not enabled yet: a read is a miss.
    let request = rc.mem_read_tlp(BAR0_ADDRESS, 4);
    rc.send(&request).await;
    assert_eq!(status(&rc.next_completion().await), CplStatus::Ur);
    rc.enumerate().await;
    let request = rc.mem_read_tlp(0x1234_0000, 4);
    rc.send(&request).await;
    assert_eq!(status(&rc.next_completion().await), CplStatus::Ur);
    rc.mem_write(0x1234_0000, &[1, 2, 3, 4]).await;
    let t1 = rc.config_request(RoutingId::new(2, 0, 0), CfgType::Type1, 0, None, 0xf);
    rc.send(&t1).await;
    assert_eq!(status(&rc.next_completion().await), CplStatus::Ur);
    let other = rc.config_request(RoutingId::new(1, 0, 3), CfgType::Type0, 0, None, 0xf);
    rc.send(&other).await;
    assert_eq!(status(&rc.next_completion().await), CplStatus::Ur);
    // A read behind the posted miss still works (the engine did not stall).
    assert_eq!(rc.cfg_read(0).await, 0x1234_1af4);
    let snap = engine.shutdown().await;
    assert_eq!(snap.ur_sent, 4);
    assert_eq!(snap.posted_misses, 1);
}

#[tokio::test]
async fn server_errors_and_slowness_become_completer_abort() {
    let config = EngineConfig { device_timeout: Some(Duration::from_millis(100)), ..EngineConfig::default() };
    let Setup { engine, mut rc, device } = setup(config).await;
    rc.enumerate().await;
    let request = rc.mem_read_tlp(BAR0_ADDRESS + REG_ERROR, 4);
    rc.send(&request).await;
    assert_eq!(status(&rc.next_completion().await), CplStatus::Ca);
    device.lock().unwrap().slow_reply = Duration::from_millis(400);
    let request = rc.mem_read_tlp(BAR0_ADDRESS + REG_SLOW, 4);
    rc.send(&request).await;
    assert_eq!(status(&rc.next_completion().await), CplStatus::Ca);
    let snap = engine.shutdown().await;
    assert_eq!(snap.ca_sent, 2);
    assert_eq!((snap.device_errors, snap.device_timeouts), (1, 1));
}

#[tokio::test]
async fn device_dma_of_many_sizes_at_odd_addresses_with_interleaved_completions() {
    let Setup { engine, mut rc, device } = setup(config()).await;
    rc.enumerate().await;
    rc.host.lock().unwrap().policy = ReadPolicy::Interleaved;
    for (offset, len) in [(1u64, 1u32), (3, 7), (0xffd, 9), (0x123, 4096), (0x7, 70_001), (0x3, 1 << 20)] {
        let errno = rc.device_dma(1, HOST_BASE + offset, len).await;
        assert_eq!(errno, 0, "read of {len} at +{offset:#x}");
        let expected = rc.host.lock().unwrap().memory[offset as usize..][..len as usize].to_vec();
        assert!(device.lock().unwrap().bar2[..len as usize] == expected[..], "read of {len} at +{offset:#x}");
    }
    assert!(rc.host.lock().unwrap().max_mrd_len <= 512, "MRRS respected");
    // DMA write: device BAR2 → host memory.
    let pattern: Vec<u8> = (0..5000u32).map(|i| (i % 249) as u8).collect();
    rc.mem_write(BAR2_ADDRESS, &pattern[..4096]).await;
    rc.mem_write(BAR2_ADDRESS + 4096, &pattern[4096..]).await;
    assert_eq!(rc.device_dma(2, HOST_BASE + 0x1001, 5000).await, 0);
    assert_eq!(rc.host.lock().unwrap().memory[0x1001..0x1001 + 5000], pattern[..]);
    assert_eq!(engine.tags_in_use(), 0);
    let snap = engine.shutdown().await;
    assert_eq!(snap.dma_bytes_written, 5000);
    assert_eq!(snap.unexpected_completions, 0);
}

#[tokio::test]
async fn completion_timeout_fails_the_dma_and_quarantines_the_tag_until_the_late_completion() {
    let config = EngineConfig { completion_timeout: Some(Duration::from_millis(30)), ..config() };
    let Setup { engine, mut rc, .. } = setup(config).await;
    rc.enumerate().await;
    rc.host.lock().unwrap().policy = ReadPolicy::Hold;
    assert_eq!(rc.device_dma(1, HOST_BASE + 0x10, 64).await, nix::errno::Errno::ETIMEDOUT as u32);
    assert_eq!(engine.tags_in_use(), 1, "the timed-out tag stays quarantined");
    let late = rc.host.lock().unwrap().held.pop().unwrap();
    let read = tlp::completion::MemoryRead::from_tlp(&late).unwrap();
    let data = vec![0u8; read.byte_count() as usize];
    for cpl in tlp::completion::read_completions(&read, RC_ID, &data, &rc.link).unwrap() {
        rc.send(&cpl).await;
    }
    // A completion nobody asked for.
    let mut stray = tlp::completion::read_completions(&read, RC_ID, &data, &rc.link).unwrap().next().unwrap();
    if let Body::Completion(c) = &mut stray.body {
        c.tag = 0x77;
    }
    rc.send(&stray).await;
    let counters = engine.counters();
    eventually(|| counters.snapshot().unexpected_completions == 1).await;
    assert_eq!(engine.tags_in_use(), 0);
    rc.host.lock().unwrap().policy = ReadPolicy::InOrder;
    assert_eq!(rc.device_dma(1, HOST_BASE, 16).await, 0);
    let snap = engine.shutdown().await;
    assert_eq!((snap.completion_timeouts, snap.late_completions), (1, 1));
}

#[tokio::test]
async fn dma_is_refused_without_bus_master_outside_windows_and_on_ur_or_ca() {
    let windows = DmaWindows::List(vec![DmaWindow::read_write(HOST_BASE, HOST_SIZE as u64)]);
    let Setup { engine, mut rc, device } = setup(EngineConfig { dma_windows: windows, ..config() }).await;
    assert_eq!(device.lock().unwrap().dma_maps, vec![(HOST_BASE, HOST_SIZE as u64)]);
    rc.enumerate().await;
    assert_eq!(rc.device_dma(1, HOST_BASE + HOST_SIZE as u64, 4).await, nix::errno::Errno::EFAULT as u32);
    rc.host.lock().unwrap().policy = ReadPolicy::Ur;
    assert_eq!(rc.device_dma(1, HOST_BASE, 4).await, nix::errno::Errno::EFAULT as u32);
    rc.host.lock().unwrap().policy = ReadPolicy::Ca;
    assert_eq!(rc.device_dma(1, HOST_BASE, 4).await, nix::errno::Errno::EIO as u32);
    rc.cfg_write(0x04, 0x0002).await; // memory space only, no bus mastering
    assert_eq!(rc.device_dma(1, HOST_BASE, 4).await, nix::errno::Errno::EPERM as u32);
    let snap = engine.shutdown().await;
    assert_eq!((snap.dma_refused_bme, snap.dma_failed_status), (1, 2));
}

#[tokio::test]
async fn msi_is_sent_with_the_programmed_address_and_data_and_held_while_masked() {
    let Setup { engine, mut rc, device } = setup(config()).await;
    rc.enumerate().await;
    let cap = u16::from(MSI_CAP as u8);
    rc.cfg_write(cap + 4, MSI_ADDRESS as u32).await;
    rc.cfg_write(cap + 8, 0).await;
    rc.cfg_write(cap + 0xc, 0x4440).await;
    // Enable with 4 vectors (MME = 2).
    rc.cfg_write(cap, ((1 | (2 << 4)) << 16) | 0x5).await;
    eventually(|| device.lock().unwrap().irq_fds[1].len() == 4).await;
    rc.mem_write(BAR0_ADDRESS + REG_IRQ, &((1u32 << 16) | 2).to_le_bytes()).await;
    eventually(|| !rc.host.lock().unwrap().interrupts.is_empty()).await;
    assert_eq!(rc.host.lock().unwrap().interrupts[0], (MSI_ADDRESS, 0x4442));
    // Mask vector 3, fire it, nothing; unmask, delivered.
    rc.cfg_write(cap + 0x10, 1 << 3).await;
    rc.mem_write(BAR0_ADDRESS + REG_IRQ, &((1u32 << 16) | 3).to_le_bytes()).await;
    let counters = engine.counters();
    eventually(|| counters.snapshot().interrupts_masked == 1).await;
    assert_eq!(rc.host.lock().unwrap().interrupts.len(), 1);
    rc.cfg_write(cap + 0x10, 0).await;
    eventually(|| rc.host.lock().unwrap().interrupts.len() == 2).await;
    assert_eq!(rc.host.lock().unwrap().interrupts[1], (MSI_ADDRESS, 0x4443));
    // MSI is a memory write: with Bus Master Enable clear it is held, and sent once it is set.
    rc.cfg_write(0x04, 0x0003).await;
    rc.mem_write(BAR0_ADDRESS + REG_IRQ, &((1u32 << 16) | 1).to_le_bytes()).await;
    eventually(|| counters.snapshot().interrupts_masked == 2).await;
    assert_eq!(rc.host.lock().unwrap().interrupts.len(), 2);
    rc.cfg_write(0x04, 0x0007).await;
    eventually(|| rc.host.lock().unwrap().interrupts.len() == 3).await;
    assert_eq!(rc.host.lock().unwrap().interrupts[2], (MSI_ADDRESS, 0x4441));
    // INTx was disabled on the server when MSI took over.
    assert!(device.lock().unwrap().irq_sets.iter().any(|s| s.0 == 0 && s.3 == 0));
    let snap = engine.shutdown().await;
    assert_eq!(snap.msi_sent, 3);
}

#[tokio::test]
async fn msix_entries_function_mask_and_pba() {
    let Setup { engine, mut rc, device } = setup(config()).await;
    rc.enumerate().await;
    // Enable MSI-X with the function masked.
    rc.cfg_write(MSIX_CAP, (0xc000u32 << 16) | 0x7011).await;
    eventually(|| device.lock().unwrap().irq_fds[2].len() == 4).await;
    let entry = |data: u32, masked: bool| {
        let mut e = Vec::new();
        e.extend_from_slice(&((MSI_ADDRESS + 0x10) as u32).to_le_bytes());
        e.extend_from_slice(&0u32.to_le_bytes());
        e.extend_from_slice(&data.to_le_bytes());
        e.extend_from_slice(&u32::from(masked).to_le_bytes());
        e
    };
    rc.mem_write(BAR0_ADDRESS + MSIX_TABLE + 2 * 16, &entry(0x99, false)).await;
    rc.mem_write(BAR0_ADDRESS + REG_IRQ, &((2u32 << 16) | 2).to_le_bytes()).await;
    let counters = engine.counters();
    eventually(|| counters.snapshot().interrupts_masked == 1).await;
    let (pba, _) = rc.mem_read(BAR0_ADDRESS + MSIX_PBA, 8).await;
    assert_eq!(pba, vec![0b100, 0, 0, 0, 0, 0, 0, 0]);
    // Clear the function mask: the pending vector is delivered.
    rc.cfg_write(MSIX_CAP, (0x8000u32 << 16) | 0x7011).await;
    eventually(|| rc.host.lock().unwrap().interrupts.len() == 1).await;
    assert_eq!(rc.host.lock().unwrap().interrupts[0], (MSI_ADDRESS + 0x10, 0x99));
    let (pba, _) = rc.mem_read(BAR0_ADDRESS + MSIX_PBA, 8).await;
    assert_eq!(pba, vec![0; 8]);
    // A vector masked in its own entry is held until the entry is unmasked.
    rc.mem_write(BAR0_ADDRESS + MSIX_TABLE + 16, &entry(0x55, true)).await;
    rc.mem_write(BAR0_ADDRESS + REG_IRQ, &((2u32 << 16) | 1).to_le_bytes()).await;
    eventually(|| counters.snapshot().interrupts_masked == 2).await;
    let (pba, _) = rc.mem_read(BAR0_ADDRESS + MSIX_PBA, 8).await;
    assert_eq!(pba[0], 0b10);
    rc.mem_write(BAR0_ADDRESS + MSIX_TABLE + 16 + 12, &0u32.to_le_bytes()).await;
    eventually(|| rc.host.lock().unwrap().interrupts.len() == 2).await;
    assert_eq!(rc.host.lock().unwrap().interrupts[1], (MSI_ADDRESS + 0x10, 0x55));
    // Bus Master Enable clear: held pending (the PBA shows it) until it is set again.
    rc.cfg_write(0x04, 0x0003).await;
    rc.mem_write(BAR0_ADDRESS + REG_IRQ, &((2u32 << 16) | 2).to_le_bytes()).await;
    eventually(|| counters.snapshot().interrupts_masked == 3).await;
    let (pba, _) = rc.mem_read(BAR0_ADDRESS + MSIX_PBA, 8).await;
    assert_eq!(pba[0], 0b100);
    assert_eq!(rc.host.lock().unwrap().interrupts.len(), 2);
    rc.cfg_write(0x04, 0x0007).await;
    eventually(|| rc.host.lock().unwrap().interrupts.len() == 3).await;
    assert_eq!(rc.host.lock().unwrap().interrupts[2], (MSI_ADDRESS + 0x10, 0x99));
    let snap = engine.shutdown().await;
    assert_eq!(snap.msix_sent, 3);
}

#[tokio::test]
async fn intx_asserts_once_and_deasserts_with_unmask_on_the_next_bar_access() {
    let Setup { engine, mut rc, device } = setup(config()).await;
    rc.enumerate().await;
    eventually(|| device.lock().unwrap().irq_fds[0].len() == 1).await;
    rc.mem_write(BAR0_ADDRESS + REG_IRQ, &0u32.to_le_bytes()).await;
    eventually(|| rc.host.lock().unwrap().messages.len() == 1).await;
    let names: Vec<_> = rc
        .host
        .lock()
        .unwrap()
        .messages
        .iter()
        .map(|m| match &m.body {
            Body::Message(m) => m.code.name().unwrap_or("?"),
            _ => "?",
        })
        .collect();
    assert_eq!(names, vec!["Assert_INTA"]);
    let _ = rc.mem_read(BAR0_ADDRESS, 4).await;
    eventually(|| rc.host.lock().unwrap().messages.len() == 2).await;
    eventually(|| {
        device
            .lock()
            .unwrap()
            .irq_sets
            .iter()
            .any(|s| s.0 == 0 && s.1 & transports::vfio_user::wire::irq_set_flags::ACTION_UNMASK != 0)
    })
    .await;
    // Command.INTx Disable holds a firing pending until it is cleared.
    rc.cfg_write(0x04, 0x0407).await;
    rc.mem_write(BAR0_ADDRESS + REG_IRQ, &0u32.to_le_bytes()).await;
    let counters = engine.counters();
    eventually(|| counters.snapshot().interrupts_masked == 1).await;
    assert_eq!(rc.host.lock().unwrap().messages.len(), 2);
    rc.cfg_write(0x04, 0x0007).await;
    eventually(|| rc.host.lock().unwrap().messages.len() == 3).await;
    let snap = engine.shutdown().await;
    assert_eq!(snap.intx_asserted, 2);
}

#[tokio::test]
async fn flr_resets_the_device_and_the_bar_map() {
    let Setup { engine, mut rc, device } = setup(config()).await;
    rc.enumerate().await;
    let devctl = PCIE_CAP + 8;
    rc.cfg_write(devctl, 0x8000 | 0x2000).await;
    eventually(|| device.lock().unwrap().resets == 1).await;
    let counters = engine.counters();
    eventually(|| counters.snapshot().resets == 1).await;
    // Until the host re-programs, config works (after CRS, if any) and the BARs decode nothing.
    let id = loop {
        let cpl = rc.cfg_read_cpl(0, 0xf).await;
        if status(&cpl) == CplStatus::Sc {
            break cpl;
        }
    };
    assert_eq!(completer(&id), RoutingId::new(1, 0, 0), "FLR keeps the captured bus/device");
    let request = rc.mem_read_tlp(BAR0_ADDRESS, 4);
    rc.send(&request).await;
    assert_eq!(status(&rc.next_completion().await), CplStatus::Ur);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_request_right_behind_an_flr_sees_the_reset_function() {
    let Setup { engine, mut rc, .. } = setup(config()).await;
    rc.enumerate().await;
    // The MRd follows the FLR write on the link before its completion comes back.
    let flr = rc.config_request(RoutingId::new(1, 0, 0), CfgType::Type0, PCIE_CAP + 8, Some(0xa000), 0xf);
    let read = rc.mem_read_tlp(BAR0_ADDRESS, 4);
    rc.send(&flr).await;
    rc.send(&read).await;
    let mut statuses = std::collections::HashMap::new();
    for _ in 0..2 {
        let cpl = rc.next_completion().await;
        statuses.insert(cpl.tag(), status(&cpl));
    }
    assert_eq!(statuses[&flr.tag()], CplStatus::Sc);
    assert_eq!(statuses[&read.tag()], CplStatus::Ur, "the BAR map was reset by the FLR");
    engine.shutdown().await;
}

#[tokio::test]
async fn malformed_and_poisoned_tlps_are_dropped_and_counted() {
    let Setup { engine, mut rc, .. } = setup(config()).await;
    rc.enumerate().await;
    rc.send_raw(vec![0xff, 0, 0]).await;
    rc.send_raw(vec![0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0x0f, 0, 0, 0x10, 0x02]).await; // address bits
    let mut poisoned = rc.mem_read_tlp(BAR0_ADDRESS, 4);
    poisoned.ep = true;
    rc.send(&poisoned).await;
    let turn_off = tlp::Tlp {
        prefixes: Vec::new(),
        tc: 0,
        attr: tlp::Attr::default(),
        ln: false,
        th: false,
        ep: false,
        at: 0,
        length: 0,
        body: Body::Message(tlp::Message {
            routing: tlp::MsgRouting::Broadcast,
            requester: RC_ID,
            tag: 0,
            code: tlp::MessageCode::PME_TURN_OFF,
            fields: [0; 8],
        }),
        payload: Vec::new(),
        digest: None,
    };
    rc.send(&turn_off).await;
    assert_eq!(rc.cfg_read(0).await, 0x1234_1af4);
    eventually(|| rc.host.lock().unwrap().messages.len() == 1).await;
    match &rc.host.lock().unwrap().messages[0].body {
        Body::Message(m) => {
            assert_eq!((m.code, m.routing), (tlp::MessageCode::PME_TO_ACK, tlp::MsgRouting::Gather))
        }
        _ => unreachable!(),
    }
    let snap = engine.shutdown().await;
    assert_eq!(snap.messages_received, 1);
    assert_eq!(snap.malformed, 2);
    assert_eq!(snap.poisoned, 1);
}

#[tokio::test]
async fn a_read_after_posted_writes_sees_them() {
    let Setup { engine, mut rc, .. } = setup(config()).await;
    rc.enumerate().await;
    for i in 0..64u32 {
        rc.mem_write(BAR2_ADDRESS + u64::from(i) * 4, &i.to_le_bytes()).await;
    }
    let (read, _) = rc.mem_read(BAR2_ADDRESS, 256).await;
    let expected: Vec<u8> = (0..64u32).flat_map(|i| i.to_le_bytes()).collect();
    assert_eq!(read, expected);
    engine.shutdown().await;
}

#[tokio::test]
async fn io_bar_reads_and_writes_honour_byte_enables() {
    let Setup { engine, mut rc, device } = setup(config()).await;
    rc.enumerate().await;
    let write = rc.io_request(BAR1_IO_ADDRESS + 8, 0b0110, Some([1, 2, 3, 4]));
    rc.send(&write).await;
    let cpl = rc.next_completion().await;
    assert_eq!((status(&cpl), cpl.kind_name()), (CplStatus::Sc, "Cpl"));
    assert_eq!(device.lock().unwrap().bar1[8..12], [0, 2, 3, 0]);
    let read = rc.io_request(BAR1_IO_ADDRESS + 8, 0b1111, None);
    rc.send(&read).await;
    let cpl = rc.next_completion().await;
    assert_eq!(cpl.payload, vec![0, 2, 3, 0]);
    // Outside the I/O BAR: UR.
    let miss = rc.io_request(0xd000, 0b1111, None);
    rc.send(&miss).await;
    assert_eq!(status(&rc.next_completion().await), CplStatus::Ur);
    engine.shutdown().await;
}

#[tokio::test]
async fn many_reads_in_flight_complete_by_tag() {
    let Setup { engine, mut rc, .. } = setup(config()).await;
    rc.enumerate().await;
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    rc.mem_write(BAR2_ADDRESS, &data).await;
    let mut expected = std::collections::HashMap::new();
    for i in 0..48u64 {
        let request = rc.mem_read_tlp(BAR2_ADDRESS + i * 64, 64);
        expected.insert(request.tag().unwrap(), i);
        rc.send(&request).await;
    }
    while !expected.is_empty() {
        let cpl = rc.next_completion().await;
        let i = expected.remove(&cpl.tag().unwrap()).expect("one completion per tag");
        assert_eq!(cpl.payload, data[(i * 64) as usize..][..64]);
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn every_valid_two_dw_byte_enable_pattern_reads_and_writes_only_enabled_bytes() {
    let Setup { engine, mut rc, device } = setup(config()).await;
    rc.enumerate().await;
    let base = BAR0_ADDRESS + 0x40;
    let mut patterns = 0;
    for first_be in 0..16u8 {
        for last_be in 0..16u8 {
            let mut write = tlp::split::memory_write_tlp(
                &tlp::split::RequestFields { requester: RC_ID, ..Default::default() },
                base,
                &[1, 2, 3, 4, 5, 6, 7, 8],
                4096,
            )
            .unwrap();
            let mut read = rc.mem_read_tlp(base, 8);
            for t in [&mut write, &mut read] {
                if let Body::Memory(m) = &mut t.body {
                    m.first_be = first_be;
                    m.last_be = last_be;
                }
            }
            if write.validate(&tlp::Limits::default()).is_err() {
                continue;
            }
            patterns += 1;
            rc.mem_write(base, &[0xee; 8]).await;
            rc.send(&write).await;
            let enabled =
                |i: usize| if i < 4 { first_be & (1 << i) != 0 } else { last_be & (1 << (i - 4)) != 0 };
            let expected: Vec<u8> = (0..8).map(|i| if enabled(i) { i as u8 + 1 } else { 0xee }).collect();
            rc.send(&read).await;
            let cpl = rc.next_completion().await;
            let visible: Vec<u8> = (0..8).map(|i| if enabled(i) { expected[i] } else { 0 }).collect();
            assert_eq!(cpl.payload, visible, "BE {first_be:04b}/{last_be:04b}");
            assert_eq!(
                device.lock().unwrap().bar0[0x40..0x48],
                expected[..],
                "BE {first_be:04b}/{last_be:04b}"
            );
        }
    }
    assert_eq!(patterns, 15 * 15, "every First/Last BE pair but 0 is legal for 2 DW");
    engine.shutdown().await;
}

#[tokio::test]
async fn posted_writes_and_later_reads_pass_a_read_the_server_is_slow_to_answer() {
    let Setup { engine, mut rc, device } = setup(config()).await;
    rc.enumerate().await;
    device.lock().unwrap().slow_reply = Duration::from_millis(300);
    let slow = rc.mem_read_tlp(BAR0_ADDRESS + REG_SLOW, 4);
    rc.send(&slow).await;
    rc.mem_write(BAR2_ADDRESS + 0x100, &[9, 8, 7, 6]).await;
    let fast = rc.mem_read_tlp(BAR2_ADDRESS + 0x100, 4);
    rc.send(&fast).await;
    // The later read completes first, and it sees the write that arrived after the slow read.
    let first = rc.next_completion().await;
    assert_eq!(first.tag(), fast.tag());
    assert_eq!(first.payload, vec![9, 8, 7, 6]);
    let second = rc.next_completion().await;
    assert_eq!((second.tag(), status(&second)), (slow.tag(), CplStatus::Sc));
    engine.shutdown().await;
}

#[tokio::test]
async fn shutdown_answers_requests_already_in_flight() {
    let Setup { engine, mut rc, device } = setup(config()).await;
    rc.enumerate().await;
    device.lock().unwrap().slow_reply = Duration::from_millis(200);
    let slow = rc.mem_read_tlp(BAR0_ADDRESS + REG_SLOW, 4);
    rc.send(&slow).await;
    eventually(|| device.lock().unwrap().accesses.iter().any(|a| a.offset == REG_SLOW)).await;
    let snap = engine.shutdown().await;
    let cpl = rc.next_completion().await;
    assert_eq!((cpl.tag(), status(&cpl)), (slow.tag(), CplStatus::Sc));
    assert_eq!(snap.sent("CplD"), snap.received("CfgRd0") + snap.received("MRd"));
}

#[tokio::test]
async fn a_bar_region_that_is_not_a_power_of_two_is_decoded_as_the_host_sizes_it() {
    // Region 0 of 0x3000 bytes (like libvfio-user's samples/server BAR1); the sizing answer
    // says 0x1000 (`!0x3000 + 1` has its lowest set bit there), which `enumerate` checks.
    let device = Device::new();
    device.lock().unwrap().bar0 = vec![0; 0x3000];
    let fd = spawn_server(device.clone());
    let (engine, mut rc) = setup_on(config(), transports::link::MemoryClock::Wall, fd).await;
    rc.enumerate().await;
    rc.mem_write(BAR0_ADDRESS + 0xff8, &[1, 2, 3, 4]).await;
    let (data, _) = rc.mem_read(BAR0_ADDRESS + 0xff8, 4).await;
    assert_eq!(data, [1, 2, 3, 4]);
    let beyond = rc.mem_read_tlp(BAR0_ADDRESS + 0x1000, 4);
    rc.send(&beyond).await;
    assert_eq!(status(&rc.next_completion().await), CplStatus::Ur, "beyond what the host sized");
    rc.mem_write(BAR0_ADDRESS + 0x2ff0, &[5, 6, 7, 8]).await;
    assert_eq!(rc.cfg_read(0).await, 0x1234_1af4);
    let snap = engine.shutdown().await;
    assert_eq!(snap.posted_misses, 1);
    let device = device.lock().unwrap();
    assert!(device.accesses.iter().all(|a| a.region != 0 || a.offset + u64::from(a.count) <= 0x1000));
    assert!(device.bar0[0x1000..].iter().all(|&b| b == 0), "nothing reached the rest of the region");
}

#[tokio::test]
async fn the_device_timeout_counts_from_arrival_including_time_queued_in_the_bridge() {
    // One request at the server at a time: the second read waits 200 ms for the first, so only
    // 100 ms of its 300 ms are left when it reaches the server, which takes 200 ms. Counted from
    // dispatch it would get SC; counted from arrival (what the root port's timer does) it gets CA.
    let config = EngineConfig {
        device_timeout: Some(Duration::from_millis(300)),
        max_outstanding_non_posted: 1,
        ..EngineConfig::default()
    };
    let Setup { engine, mut rc, device } = setup(config).await;
    rc.enumerate().await;
    device.lock().unwrap().slow_reply = Duration::from_millis(200);
    let first = rc.mem_read_tlp(BAR0_ADDRESS + REG_SLOW, 4);
    let second = rc.mem_read_tlp(BAR0_ADDRESS + REG_SLOW, 4);
    rc.send(&first).await;
    rc.send(&second).await;
    let mut statuses = std::collections::HashMap::new();
    for _ in 0..2 {
        let cpl = rc.next_completion().await;
        statuses.insert(cpl.tag(), status(&cpl));
    }
    assert_eq!(statuses[&second.tag()], CplStatus::Ca);
    let snap = engine.shutdown().await;
    assert!(snap.device_timeouts >= 1, "{snap}");
}

#[tokio::test]
async fn posted_writes_and_dma_completions_pass_a_full_non_posted_queue() {
    // 200 reads of a register the server answers after 200 ms, one at a time: 40 s of work
    // queued in the bridge. A posted write and the completions of a device DMA read that arrive
    // behind them on the link must get through at once, and every read is answered within its
    // device timeout of arrival (SC from the server, or CA once its 2 s have passed).
    let config = EngineConfig {
        device_timeout: Some(Duration::from_secs(2)),
        max_outstanding_non_posted: 1,
        ..EngineConfig::default()
    };
    let Setup { engine, mut rc, device } = setup(config).await;
    rc.enumerate().await;
    let pattern: Vec<u8> = (0..256u32).map(|i| (i * 7 + 3) as u8).collect();
    rc.host.lock().unwrap().memory[..256].copy_from_slice(&pattern);
    device.lock().unwrap().slow_reply = Duration::from_millis(200);
    let reads: Vec<_> = (0..200).map(|_| rc.mem_read_tlp(BAR0_ADDRESS + REG_SLOW, 4)).collect();
    for read in &reads {
        rc.send(read).await;
    }
    rc.mem_write(BAR2_ADDRESS + 0x1000, &[1, 2, 3, 4]).await;
    eventually(|| device.lock().unwrap().bar2[0x1000..0x1004] == [1, 2, 3, 4]).await;
    // A device DMA read of host memory (the doorbell write is posted; the device's MRds are
    // answered by the root complex, and their CplDs reach the bridge behind the queued reads).
    rc.mem_write(BAR0_ADDRESS + REG_DMA_ADDR, &HOST_BASE.to_le_bytes()).await;
    rc.mem_write(BAR0_ADDRESS + REG_DMA_LEN, &256u32.to_le_bytes()).await;
    rc.mem_write(BAR0_ADDRESS + REG_DOORBELL, &[1, 0, 0, 0]).await;
    eventually(|| device.lock().unwrap().bar2[..256] == pattern[..]).await;
    let mut answered = 0;
    for _ in 0..reads.len() {
        let cpl = rc.next_completion().await;
        assert!(matches!(status(&cpl), CplStatus::Sc | CplStatus::Ca), "{cpl}");
        answered += 1;
    }
    let snap = engine.shutdown().await;
    assert_eq!(answered, 200);
    assert!(snap.device_timeouts > 0 && snap.ca_sent == snap.device_timeouts, "{snap}");
    assert_eq!(snap.non_posted_overflow, 0);
}

#[tokio::test]
async fn a_non_posted_request_that_finds_the_queue_full_gets_completer_abort_at_once() {
    let config = EngineConfig {
        device_timeout: Some(Duration::from_secs(5)),
        max_outstanding_non_posted: 1,
        non_posted_queue_depth: 8,
        ..EngineConfig::default()
    };
    let Setup { engine, mut rc, device } = setup(config).await;
    rc.enumerate().await;
    device.lock().unwrap().slow_reply = Duration::from_millis(300);
    for _ in 0..20 {
        let read = rc.mem_read_tlp(BAR0_ADDRESS + REG_SLOW, 4);
        rc.send(&read).await;
    }
    let (mut sc, mut ca) = (0, 0);
    for _ in 0..20 {
        match status(&rc.next_completion().await) {
            CplStatus::Sc => sc += 1,
            CplStatus::Ca => ca += 1,
            other => panic!("unexpected status {other:?}"),
        }
    }
    let snap = engine.shutdown().await;
    // 8 queued, and at most 2 taken off the queue by the dispatcher (one at the server, one
    // waiting for the slot) when the rest arrived.
    assert!((10..=12).contains(&snap.non_posted_overflow), "{snap}");
    assert_eq!((ca, sc), (snap.non_posted_overflow, 20 - snap.non_posted_overflow));
    assert_eq!(snap.device_timeouts, 0);
}

#[tokio::test]
async fn the_expansion_rom_is_decoded_once_enabled_and_read_whole() {
    let Setup { engine, mut rc, device } = setup(config()).await;
    rc.enumerate().await;
    rc.cfg_write(0x30, 0xffff_f800).await;
    assert_eq!(rc.cfg_read(0x30).await, !(ROM_SIZE as u32 - 1));
    const ROM_ADDRESS: u64 = 0xfe10_0000;
    rc.cfg_write(0x30, ROM_ADDRESS as u32).await;
    // Not enabled yet: nothing decodes there.
    let request = rc.mem_read_tlp(ROM_ADDRESS, 4);
    rc.send(&request).await;
    assert_eq!(status(&rc.next_completion().await), CplStatus::Ur);
    rc.cfg_write(0x30, ROM_ADDRESS as u32 | 1).await;
    device.lock().unwrap().accesses.clear();
    let (data, _) = rc.mem_read(ROM_ADDRESS + 0x7f0, 16).await;
    assert_eq!(data, (0x7f0..0x800).map(rom_byte).collect::<Vec<_>>());
    // The ROM is prefetchable memory: one access, not pieces of 8 bytes.
    let accesses = device.lock().unwrap().accesses.clone();
    assert_eq!(accesses.len(), 1, "{accesses:?}");
    assert_eq!((accesses[0].region, accesses[0].offset, accesses[0].count), (6, 0x7f0, 16));
    // Past its end: UR.
    let request = rc.mem_read_tlp(ROM_ADDRESS + ROM_SIZE, 4);
    rc.send(&request).await;
    assert_eq!(status(&rc.next_completion().await), CplStatus::Ur);
    engine.shutdown().await;
}

#[tokio::test]
async fn access_splitting_is_configurable_for_each_kind_of_bar() {
    // The opposite of the defaults: non-prefetchable whole, prefetchable in aligned pieces.
    let config = EngineConfig {
        split_non_prefetchable: AccessSplit::Whole,
        split_prefetchable: AccessSplit::Aligned8,
        ..config()
    };
    let Setup { engine, mut rc, device } = setup(config).await;
    rc.enumerate().await;
    device.lock().unwrap().accesses.clear();
    rc.mem_read(BAR0_ADDRESS + 0x10, 16).await;
    rc.mem_read(BAR2_ADDRESS + 0x10, 16).await;
    let seen: Vec<(u32, u64, u32)> =
        device.lock().unwrap().accesses.iter().map(|a| (a.region, a.offset, a.count)).collect();
    assert_eq!(seen, vec![(0, 0x10, 16), (2, 0x10, 8), (2, 0x18, 8)]);
    engine.shutdown().await;
}

#[tokio::test]
async fn the_default_dma_window_is_the_whole_address_space_the_server_accepts() {
    // A server that takes any map: one window of the whole 64-bit space.
    let Setup { engine, device, .. } = setup(config()).await;
    assert_eq!(device.lock().unwrap().dma_maps, vec![(0, WHOLE_BUS_WINDOW)]);
    engine.shutdown().await;
    // libvfio-user's limits (8 TiB per map, 16 maps): 16 windows of 8 TiB, 128 TiB from 0.
    let device = Device::new();
    device.lock().unwrap().dma_map_limits = Some((MAX_DMA_WINDOW, 16));
    let fd = spawn_server(device.clone());
    let (engine, mut rc) = setup_on(config(), transports::link::MemoryClock::Wall, fd).await;
    let maps = device.lock().unwrap().dma_maps.clone();
    let expected: Vec<(u64, u64)> = (0..16).map(|i| (i * MAX_DMA_WINDOW, MAX_DMA_WINDOW)).collect();
    assert_eq!(maps, expected);
    // A DMA read near the top of the last window reaches the link (the root complex answers
    // UR: nothing is there); one beyond it is refused by the client before any MRd.
    rc.enumerate().await;
    rc.host.lock().unwrap().policy = ReadPolicy::Ur;
    let top = 16 * MAX_DMA_WINDOW;
    assert_eq!(rc.device_dma(1, top - 0x1000, 4).await, nix::errno::Errno::EFAULT as u32);
    assert_eq!(rc.host.lock().unwrap().mrds, 1);
    assert_eq!(rc.device_dma(1, top, 4).await, nix::errno::Errno::EFAULT as u32);
    assert_eq!(rc.host.lock().unwrap().mrds, 1);
    engine.shutdown().await;
}

#[tokio::test]
async fn io_bars_can_be_presented_as_memory_bars() {
    // BAR1 of the test device is a 0x100-byte I/O BAR.
    let config = EngineConfig { io_bars_as_memory: true, ..config() };
    let Setup { engine, mut rc, device } = setup(config).await;
    rc.enumerate().await;
    // Sizing reads back a 32-bit non-prefetchable memory BAR of 0x100 bytes.
    rc.cfg_write(0x14, 0xffff_ffff).await;
    assert_eq!(rc.cfg_read(0x14).await, 0xffff_ff00);
    const BAR1_MEMORY: u64 = 0xfe20_0000;
    rc.cfg_write(0x14, BAR1_MEMORY as u32).await;
    assert_eq!(rc.cfg_read(0x14).await, BAR1_MEMORY as u32);
    // An 8-byte MWr reaches region 1 as one 8-byte access; a read returns it.
    device.lock().unwrap().accesses.clear();
    rc.mem_write(BAR1_MEMORY + 0x10, &[1, 2, 3, 4, 5, 6, 7, 8]).await;
    let (data, _) = rc.mem_read(BAR1_MEMORY + 0x10, 8).await;
    assert_eq!(data, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    let seen: Vec<(bool, u32, u64, u32)> =
        device.lock().unwrap().accesses.iter().map(|a| (a.write, a.region, a.offset, a.count)).collect();
    assert_eq!(seen, vec![(true, 1, 0x10, 8), (false, 1, 0x10, 8)]);
    // Nothing decodes at its old I/O address any more.
    let io = rc.io_request(BAR1_IO_ADDRESS, 0xf, None);
    rc.send(&io).await;
    assert_eq!(status(&rc.next_completion().await), CplStatus::Ur);
    engine.shutdown().await;
}
