//! The client against the in-test reference server (tests/support).

mod support;

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use transports::vfio_user::wire::{
    self, Command, DmaAccessRepr, MessageType, RegionAccessRepr, RegionInfoRepr,
};
use transports::vfio_user::{
    ClientConfig, ClientEvent, DmaMode, DmaWindow, IrqAction, IrqData, NoDma, RegionCap, SparseArea,
};
use transports::{DisconnectReason, Error};

fn config() -> ClientConfig {
    ClientConfig::default()
}

async fn expect_disconnected(events: &mut transports::vfio_user::EventReceiver) -> DisconnectReason {
    match tokio::time::timeout(STEP, events.recv()).await.unwrap() {
        Some(ClientEvent::Disconnected { reason }) => reason,
        None => panic!("event channel closed without Disconnected"),
    }
}

// --- negotiation -------------------------------------------------------------------------------

#[tokio::test]
async fn negotiation_proposes_0_2_with_twin_socket_and_limits() {
    let (client, _events, peer) = connect(config(), Hello::libvfio_user_like(8, 1 << 20, true), NoDma).await;
    assert_eq!((peer.client_version.major, peer.client_version.minor), (0, 2));
    assert_eq!(
        peer.client_version.json.as_deref(),
        Some(
            r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"twin_socket":{"supported":true}}}"#
        )
    );
    let negotiated = client.negotiated();
    assert!(negotiated.twin_socket);
    assert_eq!((negotiated.major, negotiated.minor), (0, 2));
    assert_eq!(negotiated.server.max_msg_fds, 8);
}

#[tokio::test]
async fn negotiation_without_twin_and_without_json_uses_defaults() {
    let hello = Hello { major: 0, minor: 0, json: None, grant_twin: false };
    let (client, _events, _peer) = connect(config(), hello, NoDma).await;
    let negotiated = client.negotiated();
    assert!(!negotiated.twin_socket);
    assert_eq!(negotiated.minor, 0);
    assert_eq!(negotiated.server.max_msg_fds, 1);
    assert_eq!(negotiated.server.max_data_xfer_size, 1 << 20);
    assert_eq!(negotiated.server.max_dma_maps, 65535);
}

#[tokio::test]
async fn negotiation_rejects_a_newer_minor_and_another_major() {
    for (major, minor) in [(0, 3), (1, 0)] {
        let hello = Hello { major, minor, json: None, grant_twin: false };
        let error = connect_err(config(), hello, NoDma).await;
        assert!(matches!(error, Error::UnsupportedVersion { .. }), "{error}");
    }
}

#[tokio::test]
async fn negotiation_rejects_twin_without_fd_index() {
    let hello = Hello {
        major: 0,
        minor: 2,
        json: Some(r#"{"capabilities":{"twin_socket":{"supported":true}}}"#.to_owned()),
        grant_twin: false,
    };
    assert!(matches!(connect_err(config(), hello, NoDma).await, Error::Capabilities(_)));
}

// --- limits -------------------------------------------------------------------------------------

#[tokio::test]
async fn region_accesses_are_split_by_the_server_transfer_size() {
    let (client, _events, peer) = connect(config(), Hello::libvfio_user_like(8, 1024, false), NoDma).await;
    let device = Device::new(1024);
    tokio::spawn(serve(peer, device.clone()));
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    client.region_write(0, 0x10, &data).await.unwrap();
    assert_eq!(client.region_read(0, 0x10, 3000).await.unwrap(), data);
    let counts: Vec<(Command, u64, u32)> =
        device.lock().unwrap().accesses.iter().map(|a| (a.command, a.offset, a.count)).collect();
    assert_eq!(
        counts,
        vec![
            (Command::RegionWrite, 0x10, 1024),
            (Command::RegionWrite, 0x410, 1024),
            (Command::RegionWrite, 0x810, 952),
            (Command::RegionRead, 0x10, 1024),
            (Command::RegionRead, 0x410, 1024),
            (Command::RegionRead, 0x810, 952),
        ]
    );
}

#[tokio::test]
async fn eventfds_are_split_by_the_server_max_msg_fds() {
    let (client, _events, peer) = connect(config(), Hello::libvfio_user_like(3, 1 << 20, false), NoDma).await;
    let device = Device::new(1 << 20);
    tokio::spawn(serve(peer, device.clone()));
    let fds: Vec<_> = (0..7).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    // MSI-X has 8 vectors in the reference device; vectors 1..=7.
    client.set_irqs_eventfds(2, 1, &borrowed).await.unwrap();
    let sets = device.lock().unwrap().irq_sets.clone();
    let eventfd_trigger = wire::irq_set_flags::DATA_EVENTFD | wire::irq_set_flags::ACTION_TRIGGER;
    assert_eq!(
        sets,
        vec![(eventfd_trigger, 2, 1, 3, 3), (eventfd_trigger, 2, 4, 3, 3), (eventfd_trigger, 2, 7, 1, 1),]
    );
}

#[tokio::test]
async fn irq_action_forms_and_disable() {
    let (client, _events, peer) = connect(config(), Hello::libvfio_user_like(8, 1 << 20, false), NoDma).await;
    let device = Device::new(1 << 20);
    tokio::spawn(serve(peer, device.clone()));
    client.set_irqs_action(0, 0, 1, IrqAction::Unmask, IrqData::None).await.unwrap();
    client.set_irqs_action(2, 2, 2, IrqAction::Mask, IrqData::Bool(vec![true, false])).await.unwrap();
    client.disable_irqs(2).await.unwrap();
    client.set_irqs_deassign(2, 0, 8).await.unwrap();
    assert!(matches!(
        client.set_irqs_action(2, 0, 2, IrqAction::Trigger, IrqData::Bool(vec![true])).await,
        Err(Error::InvalidArgument(_))
    ));
    use wire::irq_set_flags::*;
    let sets = device.lock().unwrap().irq_sets.clone();
    assert_eq!(
        sets,
        vec![
            (DATA_NONE | ACTION_UNMASK, 0, 0, 1, 0),
            (DATA_BOOL | ACTION_MASK, 2, 2, 2, 0),
            (DATA_NONE | ACTION_TRIGGER, 2, 0, 0, 0),
            (DATA_EVENTFD | ACTION_TRIGGER, 2, 0, 8, 0),
        ]
    );
}

// --- probe coverage -------------------------------------------------------------------------------

#[tokio::test]
async fn probe_queries_cover_device_regions_irqs_and_config_space() {
    let (client, _events, peer) = connect(config(), Hello::libvfio_user_like(8, 1 << 20, true), NoDma).await;
    let device = Device::new(1 << 20);
    tokio::spawn(serve(peer, device.clone()));
    let info = client.device_info().await.unwrap();
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));
    assert!(info.is_pci() && info.resettable());
    let bar0 = client.region_info(0).await.unwrap();
    assert_eq!(bar0.size, 0x1000);
    assert!(bar0.mmap_offered() && bar0.readable() && bar0.writable());
    assert_eq!(
        bar0.caps,
        vec![
            RegionCap::SparseMmap(vec![SparseArea { offset: 0, size: 0x1000 }]),
            RegionCap::Type { region_type: 5, subtype: 6 }
        ]
    );
    let config_region = client.region_info(7).await.unwrap();
    assert_eq!(config_region.size, 256);
    assert!(config_region.caps.is_empty());
    for index in 0..info.num_irqs {
        let irq = client.irq_info(index).await.unwrap();
        assert_eq!(irq.count, IRQ_COUNTS[index as usize]);
    }
    assert!(matches!(client.region_info(9).await, Err(Error::Server { errno: 22, .. })));
    let header = client.config_read(0, 64).await.unwrap();
    assert_eq!(&header[..], &device.lock().unwrap().config[..64]);
    // Unaligned start: 1-byte, 2-byte then 4-byte naturally aligned accesses.
    assert_eq!(client.config_read(1, 7).await.unwrap(), device.lock().unwrap().config[1..8].to_vec());
    let sizes: Vec<(u64, u32)> = device
        .lock()
        .unwrap()
        .accesses
        .iter()
        .filter(|a| a.region == 7)
        .map(|a| (a.offset, a.count))
        .collect();
    assert!(sizes.iter().all(|&(offset, count)| count <= 4 && offset % u64::from(count) == 0));
    assert_eq!(&sizes[16..], &[(1, 1), (2, 2), (4, 4)]);
    // Two-step argsz: one short request, then one with the full size.
    let region_info_requests =
        device.lock().unwrap().commands.iter().filter(|c| **c == Command::DeviceGetRegionInfo).count();
    assert_eq!(region_info_requests, 4);
    client.reset().await.unwrap();
    assert_eq!(device.lock().unwrap().resets, 1);
}

// --- pipelining, timeouts, errors -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_matched_by_id_when_replies_come_out_of_order() {
    let (client, _events, peer) = connect(config(), Hello::libvfio_user_like(8, 1 << 20, true), NoDma).await;
    let mut tasks = Vec::new();
    for region in 0..4u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move { client.region_read(region, 0, 4).await }));
    }
    let mut requests = Vec::new();
    for _ in 0..4 {
        requests.push(recv(&peer.main).await);
    }
    let ids: std::collections::HashSet<u16> = requests.iter().map(|r| r.header.id).collect();
    assert_eq!(ids.len(), 4, "in-flight ids must be unique");
    for request in requests.iter().rev() {
        let access =
            RegionAccessRepr::parse(&wire::region_access::View::new_checked(&request.payload[..]).unwrap())
                .unwrap();
        let data = [access.region as u8; 4];
        send_reply(&peer.main, &request.header, &access.to_bytes_with(&data)).await;
    }
    for (region, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap().unwrap(), vec![region as u8; 4]);
    }
}

#[tokio::test]
async fn timeout_then_late_reply_is_dropped_and_connection_survives() {
    let config = ClientConfig { request_timeout: Duration::from_millis(200), ..config() };
    let (client, mut events, peer) = connect(config, Hello::libvfio_user_like(8, 1 << 20, true), NoDma).await;
    let stalled = recv_after(&peer, client.clone(), |c| async move { c.region_read(0, 0, 4).await }).await;
    let (request, task) = stalled;
    let error = task.await.unwrap().unwrap_err();
    assert!(matches!(error, Error::Timeout { command: Command::RegionRead, id: Some(_), .. }), "{error}");
    // The late reply must be dropped, not treated as malformed.
    let access =
        RegionAccessRepr::parse(&wire::region_access::View::new_checked(&request.payload[..]).unwrap())
            .unwrap();
    send_reply(&peer.main, &request.header, &access.to_bytes_with(&[9; 4])).await;
    let (next, task) =
        recv_after(&peer, client.clone(), |c| async move { c.region_read(0, 4, 4).await }).await;
    assert_ne!(next.header.id, request.header.id, "a timed-out id is not reused while remembered");
    let access =
        RegionAccessRepr::parse(&wire::region_access::View::new_checked(&next.payload[..]).unwrap()).unwrap();
    send_reply(&peer.main, &next.header, &access.to_bytes_with(&[1, 2, 3, 4])).await;
    assert_eq!(task.await.unwrap().unwrap(), vec![1, 2, 3, 4]);
    assert!(events.try_recv().is_err(), "no Disconnected event");
    assert!(client.disconnect_reason().is_none());
}

/// A request's own timeout far shorter than the client's default is enforced on time: the
/// deadline sweeper is woken for a request due before its next look.
#[tokio::test]
async fn short_request_timeout_fires_on_time() {
    let config = ClientConfig { request_timeout: Duration::from_secs(30), ..config() };
    let (client, _events, peer) = connect(config, Hello::libvfio_user_like(8, 1 << 20, true), NoDma).await;
    let started = std::time::Instant::now();
    let (_request, task) = recv_after(&peer, client.clone(), |c| async move {
        c.start_region_read(0, 0, 4, Duration::from_millis(100)).await?.wait().await
    })
    .await;
    let error = task.await.unwrap().unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(error, Error::Timeout { command: Command::RegionRead, id: Some(_), .. }), "{error}");
    assert!(waited >= Duration::from_millis(100), "timed out early, after {waited:?}");
    // The sweeper's idle period with a 30 s default is 1 s: a timeout seen well before that
    // came from the request's own deadline.
    assert!(waited < Duration::from_millis(900), "timed out late, after {waited:?}");
    assert!(client.disconnect_reason().is_none());
}

/// Starts `op` on a task and receives the message it sends.
async fn recv_after<F, Fut, T>(
    peer: &Peer,
    client: transports::vfio_user::Client,
    op: F,
) -> (transports::vfio_user::socket::ReceivedMessage, tokio::task::JoinHandle<T>)
where
    F: FnOnce(transports::vfio_user::Client) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let task = tokio::spawn(op(client));
    (recv(&peer.main).await, task)
}

#[tokio::test]
async fn error_reply_becomes_an_error_with_the_errno() {
    let (client, _events, peer) = connect(config(), Hello::libvfio_user_like(8, 1 << 20, true), NoDma).await;
    let (request, task) =
        recv_after(&peer, client.clone(), |c| async move { c.region_write(3, 0, &[1]).await }).await;
    send_error(&peer.main, &request.header, 14).await;
    match task.await.unwrap() {
        Err(Error::Server { command, errno }) => {
            assert_eq!(command, Command::RegionWrite);
            assert_eq!(errno, 14);
        }
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test]
async fn posted_writes_are_processed_before_a_later_read() {
    let (client, _events, peer) = connect(config(), Hello::libvfio_user_like(8, 1 << 20, true), NoDma).await;
    let device = Device::new(1 << 20);
    tokio::spawn(serve(peer, device.clone()));
    for i in 0..32u32 {
        client.region_write_posted(0, u64::from(i) * 4, &i.to_le_bytes()).await.unwrap();
    }
    let read = client.region_read(0, 0, 128).await.unwrap();
    let expected: Vec<u8> = (0..32u32).flat_map(|i| i.to_le_bytes()).collect();
    assert_eq!(read, expected);
    let accesses = device.lock().unwrap().accesses.clone();
    assert_eq!(accesses.len(), 33);
    assert!(accesses[..32].iter().all(|a| a.no_reply && a.command == Command::RegionWrite));
    assert!(!accesses[32].no_reply);
}

#[tokio::test]
async fn two_phase_region_requests_are_queued_in_start_order_before_any_wait() {
    let (client, _events, peer) = connect(config(), Hello::libvfio_user_like(8, 1024, true), NoDma).await;
    let device = Device::new(1024);
    tokio::spawn(serve(peer, device.clone()));
    let write = client.start_region_write(0, 0x20, &[1, 2, 3, 4], Duration::from_secs(5)).await.unwrap();
    let read = client.start_region_read(0, 0x20, 4, Duration::from_secs(5)).await.unwrap();
    // Replies are awaited in the opposite order: the read still sees the earlier write.
    assert_eq!(read.wait().await.unwrap(), vec![1, 2, 3, 4]);
    write.wait().await.unwrap();
    assert!(matches!(
        client.start_region_read(0, 0, 1025, Duration::from_secs(5)).await,
        Err(Error::InvalidArgument(_))
    ));
    let order: Vec<Command> = device.lock().unwrap().accesses.iter().map(|a| a.command).collect();
    assert_eq!(order, vec![Command::RegionWrite, Command::RegionRead]);
}

// --- server DMA -----------------------------------------------------------------------------------

const MEM_BASE: u64 = 0x8000_0000;

#[tokio::test]
async fn dma_windows_are_mapped_without_fd_at_connect() {
    let memory = Memory::new(MEM_BASE, 0x2000);
    let config = ClientConfig { dma: DmaMode::Windows(vec![memory.window()]), ..config() };
    let (client, _events, peer) =
        connect(config, Hello::libvfio_user_like(8, 1 << 20, true), memory.clone()).await;
    let (map, fds, payload_len) = peer.startup_maps[0];
    assert_eq!((fds, payload_len), (0, 32));
    assert_eq!((map.address, map.size, map.flags, map.offset), (MEM_BASE, 0x2000, 3, 0));
    assert_eq!(client.dma_windows(), vec![memory.window()]);
    let device = Device::new(1 << 20);
    tokio::spawn(serve(peer, device.clone()));
    let overlapping = DmaWindow::read_write(MEM_BASE + 0x1000, 0x2000);
    assert!(matches!(client.dma_map(overlapping).await, Err(Error::InvalidArgument(_))));
    client.dma_unmap(memory.window()).await.unwrap();
    assert!(client.dma_windows().is_empty());
    assert_eq!(device.lock().unwrap().dma_unmaps, vec![(MEM_BASE, 0x2000)]);
}

#[tokio::test]
async fn dma_disabled_sends_no_dma_map() {
    let config = ClientConfig { dma: DmaMode::Disabled, ..config() };
    let (client, _events, peer) = connect(config, Hello::libvfio_user_like(8, 1 << 20, true), NoDma).await;
    assert!(peer.startup_maps.is_empty());
    let device = Device::new(1 << 20);
    tokio::spawn(serve(peer, device.clone()));
    assert!(matches!(client.dma_map(DmaWindow::read_write(0, 0x1000)).await, Err(Error::DmaDisabled)));
    client.device_info().await.unwrap();
    assert_eq!(device.lock().unwrap().commands, vec![Command::DeviceGetInfo]);
}

/// The doorbell write makes the device DMA_READ before it replies to the write; with the twin
/// socket, other MMIO keeps flowing while the DMA is outstanding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dma_on_twin_socket_while_mmio_write_is_blocked() {
    let mut memory = Memory::new(MEM_BASE, 0x1000);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    memory.gate = Some(gate.clone());
    let config = ClientConfig { dma: DmaMode::Windows(vec![memory.window()]), ..config() };
    let (client, _events, peer) =
        connect(config, Hello::libvfio_user_like(8, 1 << 20, true), memory.clone()).await;
    assert!(peer.twin.is_some());
    let device = Device::new(1 << 20);
    device.lock().unwrap().doorbell_dma = Some((MEM_BASE + 0x10, 64));
    // The reference server handles one main-socket message at a time, like libvfio-user; the
    // doorbell write is blocked in it until the DMA reply arrives on the twin socket.
    tokio::spawn(serve(peer, device.clone()));
    let doorbell = {
        let client = client.clone();
        tokio::spawn(async move { client.region_write(0, DOORBELL_OFFSET, &[1, 0, 0, 0]).await })
    };
    while memory.calls() == 0 {
        tokio::task::yield_now().await;
    }
    // The handler is parked; the client must still accept and queue more MMIO.
    let posted = client.region_write_posted(0, 0x300, &[7; 4]);
    tokio::time::timeout(STEP, posted).await.unwrap().unwrap();
    gate.add_permits(1);
    tokio::time::timeout(STEP, doorbell).await.unwrap().unwrap().unwrap();
    let expected = memory.bytes.lock().unwrap()[0x10..0x50].to_vec();
    assert_eq!(device.lock().unwrap().dma_outcome, Some(Ok(expected.clone())));
    assert_eq!(client.region_read(0, RESULT_OFFSET as u64, 64).await.unwrap(), expected);
    assert_eq!(client.region_read(0, 0x300, 4).await.unwrap(), vec![7; 4]);
    assert!(device.lock().unwrap().stray_while_waiting.is_empty());
}

/// Single-socket mode: DMA_READ arrives on the main socket between a request and its reply;
/// the client answers it and holds new commands until it has, so the server (which, like
/// libvfio-user, takes the next message as the DMA reply) never sees a stray command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_socket_dma_is_demultiplexed_and_commands_are_held() {
    let mut memory = Memory::new(MEM_BASE, 0x1000);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    memory.gate = Some(gate.clone());
    let config = ClientConfig { dma: DmaMode::Windows(vec![memory.window()]), ..config() };
    let (client, _events, peer) =
        connect(config, Hello::libvfio_user_like(8, 1 << 20, false), memory.clone()).await;
    assert!(peer.twin.is_none() && !client.negotiated().twin_socket);
    let device = Device::new(1 << 20);
    device.lock().unwrap().doorbell_dma = Some((MEM_BASE, 32));
    tokio::spawn(serve(peer, device.clone()));
    let doorbell = {
        let client = client.clone();
        tokio::spawn(async move { client.region_write(0, DOORBELL_OFFSET, &[1]).await })
    };
    while memory.calls() == 0 {
        tokio::task::yield_now().await;
    }
    // Commands issued while the DMA is outstanding must wait behind its reply.
    let reads: Vec<_> = (0..3)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.region_read(7, i * 4, 4).await })
        })
        .collect();
    let posted = {
        let client = client.clone();
        tokio::spawn(async move { client.region_write_posted(0, 0x400, &[5; 4]).await })
    };
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(1);
    tokio::time::timeout(STEP, doorbell).await.unwrap().unwrap().unwrap();
    for read in reads {
        tokio::time::timeout(STEP, read).await.unwrap().unwrap().unwrap();
    }
    posted.await.unwrap().unwrap();
    let dev = device.lock().unwrap();
    assert!(dev.stray_while_waiting.is_empty(), "stray: {:?}", dev.stray_while_waiting);
    assert_eq!(dev.dma_outcome, Some(Ok(memory.bytes.lock().unwrap()[..32].to_vec())));
}

/// `flush_dma_replies` waits for a DMA the handler is still serving and returns once its reply
/// is written, so a close right after it cannot cut the reply off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_dma_replies_waits_until_the_reply_is_written_then_close_keeps_it() {
    let mut memory = Memory::new(MEM_BASE, 0x1000);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    memory.gate = Some(gate.clone());
    let config = ClientConfig { dma: DmaMode::Windows(vec![memory.window()]), ..config() };
    let (client, _events, mut peer) =
        connect(config, Hello::libvfio_user_like(8, 1 << 20, true), memory.clone()).await;
    assert!(client.flush_dma_replies(STEP).await, "nothing to answer yet");
    let id = peer.send_dma(Command::DmaRead, MEM_BASE + 0x10, 4, &[]).await;
    while memory.calls() == 0 {
        tokio::task::yield_now().await;
    }
    assert!(!client.flush_dma_replies(Duration::from_millis(20)).await, "the handler is parked");
    gate.add_permits(1);
    assert!(client.flush_dma_replies(STEP).await);
    client.close().await;
    let reply = recv(peer.dma_socket()).await;
    assert_eq!((reply.header.id, reply.header.message_type), (id, MessageType::Reply));
    let data = memory.bytes.lock().unwrap()[0x10..0x14].to_vec();
    assert_eq!(reply.payload, DmaAccessRepr { address: MEM_BASE + 0x10, count: 4 }.to_bytes_with(&data));
}

#[tokio::test]
async fn dma_write_reaches_the_handler_and_gets_a_16_byte_reply() {
    let memory = Memory::new(MEM_BASE, 0x1000);
    let config = ClientConfig { dma: DmaMode::Windows(vec![memory.window()]), ..config() };
    let (_client, _events, mut peer) =
        connect(config, Hello::libvfio_user_like(8, 1 << 20, true), memory.clone()).await;
    let id = peer.send_dma(Command::DmaWrite, MEM_BASE + 0x20, 3, &[0xaa, 0xbb, 0xcc]).await;
    let reply = recv(peer.dma_socket()).await;
    assert_eq!(reply.header.id, id);
    assert_eq!(reply.header.message_type, MessageType::Reply);
    assert_eq!(reply.header.error, None);
    assert_eq!(reply.payload, DmaAccessRepr { address: MEM_BASE + 0x20, count: 3 }.to_bytes_with(&[]));
    assert_eq!(&memory.bytes.lock().unwrap()[0x20..0x23], &[0xaa, 0xbb, 0xcc]);
    // DMA_READ reply: u64 count, data at +16.
    let id = peer.send_dma(Command::DmaRead, MEM_BASE + 0x20, 3, &[]).await;
    let reply = recv(peer.dma_socket()).await;
    assert_eq!(reply.header.id, id);
    assert_eq!(
        reply.payload,
        DmaAccessRepr { address: MEM_BASE + 0x20, count: 3 }.to_bytes_with(&[0xaa, 0xbb, 0xcc])
    );
}

#[tokio::test]
async fn dma_outside_windows_or_oversized_is_refused_before_the_handler() {
    let memory = Memory::new(MEM_BASE, 0x1000);
    let config =
        ClientConfig { dma: DmaMode::Windows(vec![memory.window()]), max_data_xfer_size: 256, ..config() };
    let (_client, _events, mut peer) =
        connect(config, Hello::libvfio_user_like(8, 1 << 20, true), memory.clone()).await;
    let cases = [
        (Command::DmaRead, MEM_BASE - 4, 8, 14), // straddles the window start: EFAULT
        (Command::DmaRead, MEM_BASE + 0xffc, 8, 14), // runs past the window end: EFAULT
        (Command::DmaWrite, 0x1000, 4, 14),      // no window at all: EFAULT
        (Command::DmaRead, MEM_BASE, 257, 7),    // beyond our max_data_xfer_size: E2BIG
        (Command::DmaRead, u64::MAX - 1, 4, 14), // wraps: EFAULT
    ];
    for (command, address, count, errno) in cases {
        let data = if command == Command::DmaWrite { vec![0u8; count as usize] } else { Vec::new() };
        let id = peer.send_dma(command, address, count, &data).await;
        let reply = recv(peer.dma_socket()).await;
        assert_eq!(reply.header.id, id);
        assert_eq!(reply.header.error, Some(errno), "{command} {address:#x}+{count}");
        assert!(reply.payload.is_empty());
    }
    assert_eq!(memory.calls(), 0);
}

/// A DMA_WRITE larger than the client's whole receive limit (16 + 16 + the larger of the two
/// max_data_xfer_sizes) cannot be buffered; its body is skipped, it gets E2BIG, and the
/// connection goes on.
#[tokio::test]
async fn dma_write_beyond_the_receive_limit_gets_e2big_and_the_connection_goes_on() {
    let memory = Memory::new(MEM_BASE, 0x1000);
    let config =
        ClientConfig { dma: DmaMode::Windows(vec![memory.window()]), max_data_xfer_size: 256, ..config() };
    let (client, _events, mut peer) =
        connect(config, Hello::libvfio_user_like(8, 64 * 1024, true), memory.clone()).await;
    let huge = vec![0x5a; 256 * 1024];
    let id = peer.send_dma(Command::DmaWrite, MEM_BASE, huge.len() as u64, &huge).await;
    let reply = recv(peer.dma_socket()).await;
    assert_eq!((reply.header.id, reply.header.error), (id, Some(7)));
    let id = peer.send_dma(Command::DmaWrite, MEM_BASE + 0x10, 2, &[1, 2]).await;
    let reply = recv(peer.dma_socket()).await;
    assert_eq!((reply.header.id, reply.header.error), (id, None));
    assert_eq!(memory.calls(), 1);
    drop(client);
}

#[tokio::test]
async fn dma_with_dma_disabled_is_refused() {
    let memory = Memory::new(MEM_BASE, 0x1000);
    let config = ClientConfig { dma: DmaMode::Disabled, ..config() };
    let (_client, _events, mut peer) =
        connect(config, Hello::libvfio_user_like(8, 1 << 20, true), memory.clone()).await;
    let id = peer.send_dma(Command::DmaRead, MEM_BASE, 4, &[]).await;
    let reply = recv(peer.dma_socket()).await;
    assert_eq!((reply.header.id, reply.header.error), (id, Some(14)));
    assert_eq!(memory.calls(), 0);
}

// --- malformed input and disconnection ----------------------------------------------------------

async fn assert_malformed_closes(raw: Vec<u8>) {
    let (client, mut events, peer) =
        connect(config(), Hello::libvfio_user_like(8, 1 << 20, true), NoDma).await;
    let (request, task) = recv_after(&peer, client.clone(), |c| async move { c.device_info().await }).await;
    let mut raw = raw;
    raw[0..2].copy_from_slice(&request.header.id.to_le_bytes());
    peer.main.send(&raw, &[]).await.unwrap();
    let error = task.await.unwrap().unwrap_err();
    assert!(matches!(error, Error::Disconnected(DisconnectReason::Malformed(_))), "{error}");
    assert!(matches!(expect_disconnected(&mut events).await, DisconnectReason::Malformed(_)));
    assert!(matches!(client.device_info().await, Err(Error::Disconnected(_))));
}

#[tokio::test]
async fn malformed_size_smaller_than_header_closes_the_connection() {
    let mut raw =
        wire::encode_message(0, Command::DeviceGetInfo, MessageType::Reply, false, None, &[]).unwrap();
    raw[4..8].copy_from_slice(&8u32.to_le_bytes());
    assert_malformed_closes(raw).await;
}

#[tokio::test]
async fn oversized_message_closes_the_connection() {
    let mut raw =
        wire::encode_message(0, Command::DeviceGetInfo, MessageType::Reply, false, None, &[]).unwrap();
    raw[4..8].copy_from_slice(&(1u32 << 30).to_le_bytes());
    assert_malformed_closes(raw).await;
}

#[tokio::test]
async fn reply_naming_another_command_closes_the_connection() {
    let raw =
        wire::encode_message(0, Command::RegionRead, MessageType::Reply, false, None, &[0; 16]).unwrap();
    assert_malformed_closes(raw).await;
}

/// Replies to ids never sent (main socket), replies on the twin socket and a reply after a
/// timeout are counted and dropped; the framing is intact, so the connection goes on and the
/// real reply still completes its request.
#[tokio::test]
async fn replies_to_ids_never_sent_are_counted_and_dropped() {
    let config = ClientConfig { request_timeout: Duration::from_millis(200), ..config() };
    let (client, mut events, mut peer) =
        connect(config, Hello::libvfio_user_like(8, 1 << 20, true), NoDma).await;
    assert_eq!(client.stats(), transports::vfio_user::ClientStats::default());
    let (request, task) = recv_after(&peer, client.clone(), |c| async move { c.device_info().await }).await;
    for offset in [100u16, 101, 0x8000] {
        let mut bogus = request.header;
        bogus.id = request.header.id.wrapping_add(offset);
        send_reply(&peer.main, &bogus, &[0; 16]).await;
    }
    let twin = peer.twin.take().unwrap();
    send_reply(&twin, &request.header, &[0; 16]).await;
    let info = [16u32, 3, 9, 5].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>();
    send_reply(&peer.main, &request.header, &info).await;
    let info = task.await.unwrap().unwrap();
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));

    // A late reply is counted apart.
    let (late, task) = recv_after(&peer, client.clone(), |c| async move { c.device_info().await }).await;
    assert!(matches!(task.await.unwrap(), Err(Error::Timeout { .. })));
    send_reply(&peer.main, &late.header, &[0; 16]).await;
    // Replies are handled in order: once this request completes, every reply above was seen.
    let (request, task) =
        recv_after(&peer, client.clone(), |c| async move { c.region_read(7, 0, 4).await }).await;
    let access = RegionAccessRepr { offset: 0, region: 7, count: 4 };
    send_reply(&peer.main, &request.header, &access.to_bytes_with(&[1, 2, 3, 4])).await;
    assert_eq!(task.await.unwrap().unwrap(), vec![1, 2, 3, 4]);
    let stats = client.stats();
    assert_eq!((stats.unknown_replies, stats.late_replies), (4, 1), "{stats:?}");
    assert!(client.disconnect_reason().is_none());
    assert!(events.try_recv().is_err(), "no Disconnected event");
    drop(twin);
}

/// The stall from the end-to-end fault tests (a single-socket server writing 1000 DMA_READs
/// back to back, reading nothing until it is done): the reader keeps reading while the replies
/// wait for the server, every command is answered exactly once, and the hold is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dma_flood_from_a_server_that_does_not_read_is_served_on_one_socket() {
    let memory = Memory::new(MEM_BASE, 0x1000);
    let config = ClientConfig { dma: DmaMode::Windows(vec![memory.window()]), ..config() };
    let (client, _events, mut peer) =
        connect(config, Hello::libvfio_user_like(8, 1 << 20, false), memory.clone()).await;
    const FLOOD: usize = 1000;
    let mut flood = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for i in 0..FLOOD {
        let id = peer.next_id();
        ids.insert(id);
        let access = DmaAccessRepr { address: MEM_BASE + (i as u64 % 64) * 4, count: 4 };
        let bytes = wire::encode_message(
            id,
            Command::DmaRead,
            MessageType::Command,
            false,
            None,
            &access.to_bytes_with(&[]),
        )
        .unwrap();
        flood.extend_from_slice(&bytes);
    }
    // One write of all 1000 (far more than the socket buffer holds): it completes only if
    // the client keeps reading while its own replies back up.
    tokio::time::timeout(STEP, peer.main.send(&flood, &[]))
        .await
        .expect("the client stopped reading")
        .unwrap();
    for _ in 0..FLOOD {
        let reply = recv(&peer.main).await;
        assert_eq!((reply.header.message_type, reply.header.error), (MessageType::Reply, None));
        assert!(ids.remove(&reply.header.id), "reply to {} twice or never asked", reply.header.id);
        assert_eq!(reply.payload.len(), 16 + 4);
    }
    let (request, task) =
        recv_after(&peer, client.clone(), |c| async move { c.region_read(7, 0, 4).await }).await;
    let access = RegionAccessRepr { offset: 0, region: 7, count: 4 };
    send_reply(&peer.main, &request.header, &access.to_bytes_with(&[9; 4])).await;
    assert_eq!(task.await.unwrap().unwrap(), vec![9; 4]);
    let stats = client.stats();
    assert_eq!((stats.dma_commands, stats.dma_refused_busy), (FLOOD as u64, 0));
}

/// Past `dma_queue_depth` waiting commands, DMA is refused with EBUSY (counted), and past the
/// DMA_WRITE byte budget too; everything accepted is served once the handler moves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dma_beyond_the_queue_bounds_is_refused_with_ebusy_and_counted() {
    const EBUSY: u32 = 16;
    let mut memory = Memory::new(MEM_BASE, 0x1000);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    memory.gate = Some(gate.clone());
    let config = ClientConfig {
        dma: DmaMode::Windows(vec![memory.window()]),
        max_concurrent_dma: 1,
        dma_queue_depth: 4,
        max_data_xfer_size: 64,
        dma_queue_bytes: 100,
        ..config()
    };
    let (client, _events, mut peer) =
        connect(config, Hello::libvfio_user_like(8, 1 << 20, true), memory.clone()).await;
    // One running (parked at the gate), then four queued: the sixth and seventh are refused.
    let mut sent = vec![peer.send_dma(Command::DmaRead, MEM_BASE, 4, &[]).await];
    while memory.calls() == 0 {
        tokio::task::yield_now().await;
    }
    for _ in 0..6 {
        sent.push(peer.send_dma(Command::DmaRead, MEM_BASE, 4, &[]).await);
    }
    let mut busy = Vec::new();
    for _ in 0..2 {
        let reply = recv(peer.dma_socket()).await;
        assert_eq!(reply.header.error, Some(EBUSY));
        busy.push(reply.header.id);
    }
    assert_eq!(busy, sent[5..7].to_vec(), "the last two are refused, in order");
    gate.add_permits(5);
    for _ in 0..5 {
        let reply = recv(peer.dma_socket()).await;
        assert_eq!(reply.header.error, None);
        assert!(sent[..5].contains(&reply.header.id));
    }
    // Two 64-byte DMA_WRITEs: the first is held at the gate (64 of 100 bytes), the second
    // would need 128 and is refused; once the first is answered its bytes are free again.
    let first = peer.send_dma(Command::DmaWrite, MEM_BASE, 64, &[7; 64]).await;
    let second = peer.send_dma(Command::DmaWrite, MEM_BASE + 64, 64, &[8; 64]).await;
    let reply = recv(peer.dma_socket()).await;
    assert_eq!((reply.header.id, reply.header.error), (second, Some(EBUSY)));
    gate.add_permits(2);
    let reply = recv(peer.dma_socket()).await;
    assert_eq!((reply.header.id, reply.header.error), (first, None));
    let third = peer.send_dma(Command::DmaWrite, MEM_BASE + 128, 64, &[9; 64]).await;
    let reply = recv(peer.dma_socket()).await;
    assert_eq!((reply.header.id, reply.header.error), (third, None));
    let stats = client.stats();
    assert_eq!((stats.dma_commands, stats.dma_refused_busy), (10, 3), "{stats:?}");
    assert!(client.disconnect_reason().is_none());
}

#[tokio::test]
async fn short_device_info_reply_closes_the_connection() {
    let (client, mut events, peer) =
        connect(config(), Hello::libvfio_user_like(8, 1 << 20, true), NoDma).await;
    let (request, task) = recv_after(&peer, client.clone(), |c| async move { c.device_info().await }).await;
    send_reply(&peer.main, &request.header, &[16, 0, 0, 0]).await;
    assert!(matches!(task.await.unwrap(), Err(Error::Malformed(_))));
    assert!(matches!(expect_disconnected(&mut events).await, DisconnectReason::Malformed(_)));
}

/// libvfio-user as bundled with QEMU 7.2 (2022) answers a short argsz with the full argsz but
/// *without* CAPS (it sets CAPS only when the chain fits); found probing its samples/server.
#[tokio::test]
async fn region_info_retries_a_short_reply_that_omits_the_caps_flag() {
    let (client, _events, peer) = connect(config(), Hello::libvfio_user_like(8, 1 << 20, false), NoDma).await;
    let (request, task) = recv_after(&peer, client.clone(), |c| async move { c.region_info(1).await }).await;
    assert_eq!(
        RegionInfoRepr::parse(&wire::region_info::View::new_checked(&request.payload[..]).unwrap())
            .unwrap()
            .argsz,
        32
    );
    let mut sparse = Vec::new();
    sparse.extend_from_slice(&wire::region_cap_id::SPARSE_MMAP.to_le_bytes());
    sparse.extend_from_slice(&1u16.to_le_bytes());
    sparse.extend_from_slice(&0u32.to_le_bytes()); // next: end of chain
    sparse.extend_from_slice(&2u32.to_le_bytes()); // nr_areas
    sparse.extend_from_slice(&0u32.to_le_bytes());
    for (offset, size) in [(0u64, 0x1000u64), (0x2000, 0x1000)] {
        sparse.extend_from_slice(&offset.to_le_bytes());
        sparse.extend_from_slice(&size.to_le_bytes());
    }
    let full = 32 + sparse.len() as u32;
    let rw_mmap = wire::region_flags::READ | wire::region_flags::WRITE | wire::region_flags::MMAP;
    let short =
        RegionInfoRepr { argsz: full, flags: rw_mmap, index: 1, cap_offset: 0, size: 0x3000, offset: 0 };
    send_reply(&peer.main, &request.header, &short.to_bytes()).await;

    let retry = recv(&peer.main).await;
    let asked =
        RegionInfoRepr::parse(&wire::region_info::View::new_checked(&retry.payload[..]).unwrap()).unwrap();
    assert_eq!((asked.argsz, asked.index), (full, 1));
    let mut reply =
        RegionInfoRepr { flags: rw_mmap | wire::region_flags::CAPS, cap_offset: 32, ..short }.to_bytes();
    reply.extend_from_slice(&sparse);
    send_reply(&peer.main, &retry.header, &reply).await;

    let info = task.await.unwrap().unwrap();
    assert_eq!(
        info.caps,
        vec![RegionCap::SparseMmap(vec![
            SparseArea { offset: 0, size: 0x1000 },
            SparseArea { offset: 0x2000, size: 0x1000 }
        ])]
    );
}

#[tokio::test]
async fn bad_capability_offset_closes_the_connection() {
    let (client, mut events, peer) =
        connect(config(), Hello::libvfio_user_like(8, 1 << 20, true), NoDma).await;
    let (request, task) = recv_after(&peer, client.clone(), |c| async move { c.region_info(0).await }).await;
    let mut reply = RegionInfoRepr {
        argsz: 48,
        flags: wire::region_flags::CAPS | wire::region_flags::READ,
        index: 0,
        cap_offset: 4000,
        size: 0x1000,
        offset: 0,
    }
    .to_bytes();
    reply.extend_from_slice(&[0u8; 16]);
    send_reply(&peer.main, &request.header, &reply).await;
    let error = task.await.unwrap().unwrap_err();
    assert!(matches!(error, Error::Malformed(_)), "{error}");
    assert!(matches!(expect_disconnected(&mut events).await, DisconnectReason::Malformed(_)));
}

#[tokio::test]
async fn dma_write_with_wrong_data_length_closes_the_connection() {
    let memory = Memory::new(MEM_BASE, 0x1000);
    let config = ClientConfig { dma: DmaMode::Windows(vec![memory.window()]), ..config() };
    let (_client, mut events, mut peer) =
        connect(config, Hello::libvfio_user_like(8, 1 << 20, true), memory.clone()).await;
    peer.send_dma(Command::DmaWrite, MEM_BASE, 8, &[1, 2, 3]).await;
    assert!(matches!(expect_disconnected(&mut events).await, DisconnectReason::Malformed(_)));
    assert_eq!(memory.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closing_mid_request_fails_every_pending_request() {
    let (client, mut events, peer) =
        connect(config(), Hello::libvfio_user_like(8, 1 << 20, true), NoDma).await;
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.region_read(0, i * 4, 4).await })
        })
        .collect();
    for _ in 0..5 {
        recv(&peer.main).await;
    }
    drop(peer);
    for task in tasks {
        let error = task.await.unwrap().unwrap_err();
        assert!(matches!(error, Error::Disconnected(DisconnectReason::ServerClosed)), "{error}");
    }
    assert_eq!(expect_disconnected(&mut events).await, DisconnectReason::ServerClosed);
    assert_eq!(client.disconnect_reason(), Some(DisconnectReason::ServerClosed));
}

#[tokio::test]
async fn close_fails_pending_requests_and_reports_the_event() {
    let (client, mut events, peer) =
        connect(config(), Hello::libvfio_user_like(8, 1 << 20, true), NoDma).await;
    let (_request, task) = recv_after(&peer, client.clone(), |c| async move { c.device_info().await }).await;
    client.close().await;
    assert!(matches!(task.await.unwrap(), Err(Error::Disconnected(DisconnectReason::ClosedByClient))));
    assert_eq!(expect_disconnected(&mut events).await, DisconnectReason::ClosedByClient);
    // The server sees EOF.
    assert!(peer.main.recv(1024, 1).await.unwrap().is_none());
}

#[tokio::test]
async fn dma_handler_errors_become_error_replies_with_their_errno() {
    let mut memory = Memory::new(MEM_BASE, 0x1000);
    memory.fail = Some(transports::vfio_user::DmaError::CompleterAbort);
    let config = ClientConfig { dma: DmaMode::Windows(vec![memory.window()]), ..config() };
    let (_client, _events, mut peer) =
        connect(config, Hello::libvfio_user_like(8, 1 << 20, true), memory.clone()).await;
    let id = peer.send_dma(Command::DmaRead, MEM_BASE, 4, &[]).await;
    let reply = recv(peer.dma_socket()).await;
    assert_eq!((reply.header.id, reply.header.error), (id, Some(5)));
    assert!(reply.payload.is_empty());
    assert_eq!(memory.calls(), 1);
}

#[tokio::test]
async fn dma_handler_that_never_finishes_gets_etimedout() {
    let mut memory = Memory::new(MEM_BASE, 0x1000);
    memory.gate = Some(Arc::new(tokio::sync::Semaphore::new(0)));
    let config = ClientConfig {
        dma: DmaMode::Windows(vec![memory.window()]),
        dma_handler_timeout: Duration::from_millis(100),
        ..config()
    };
    let (_client, _events, mut peer) =
        connect(config, Hello::libvfio_user_like(8, 1 << 20, true), memory.clone()).await;
    let id = peer.send_dma(Command::DmaWrite, MEM_BASE, 4, &[1, 2, 3, 4]).await;
    let reply = recv(peer.dma_socket()).await;
    assert_eq!((reply.header.id, reply.header.error), (id, Some(110)));
}

#[tokio::test]
async fn dma_request_carrying_fds_is_refused_with_einval() {
    let memory = Memory::new(MEM_BASE, 0x1000);
    let config = ClientConfig { dma: DmaMode::Windows(vec![memory.window()]), ..config() };
    let (_client, _events, peer) =
        connect(config, Hello::libvfio_user_like(8, 1 << 20, true), memory.clone()).await;
    let payload = DmaAccessRepr { address: MEM_BASE, count: 4 }.to_bytes_with(&[]);
    let bytes =
        wire::encode_message(77, Command::DmaRead, MessageType::Command, false, None, &payload).unwrap();
    let file = std::fs::File::open("/dev/null").unwrap();
    peer.dma_socket().send(&bytes, &[file.as_fd()]).await.unwrap();
    let reply = recv(peer.dma_socket()).await;
    assert_eq!((reply.header.id, reply.header.error), (77, Some(22)));
    assert_eq!(memory.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_dma_replies_carry_their_own_ids_when_completing_out_of_order() {
    let mut memory = Memory::new(MEM_BASE, 0x1000);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    memory.gate = Some(gate.clone());
    memory.gate_address = Some(MEM_BASE);
    let config = ClientConfig { dma: DmaMode::Windows(vec![memory.window()]), ..config() };
    let (_client, _events, mut peer) =
        connect(config, Hello::libvfio_user_like(8, 1 << 20, true), memory.clone()).await;
    let slow = peer.send_dma(Command::DmaRead, MEM_BASE, 8, &[]).await;
    let fast = peer.send_dma(Command::DmaRead, MEM_BASE + 0x100, 8, &[]).await;
    let expected = |offset: usize| memory.bytes.lock().unwrap()[offset..offset + 8].to_vec();
    let first = recv(peer.dma_socket()).await;
    assert_eq!(first.header.id, fast);
    assert_eq!(&first.payload[16..], &expected(0x100)[..]);
    gate.add_permits(1);
    let second = recv(peer.dma_socket()).await;
    assert_eq!(second.header.id, slow);
    assert_eq!(&second.payload[16..], &expected(0)[..]);
}

/// Single-socket mode: server commands arrive between replies to pipelined requests and are
/// told apart by the type bits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_socket_dma_between_replies_is_demultiplexed() {
    let memory = Memory::new(MEM_BASE, 0x1000);
    let config = ClientConfig { dma: DmaMode::Windows(vec![memory.window()]), ..config() };
    let (client, _events, mut peer) =
        connect(config, Hello::libvfio_user_like(8, 1 << 20, false), memory.clone()).await;
    let reads: Vec<_> = (0..2u64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.region_read(0, i * 4, 4).await })
        })
        .collect();
    let first = recv(&peer.main).await;
    let second = recv(&peer.main).await;
    let answer = |request: &transports::vfio_user::socket::ReceivedMessage| {
        let access =
            RegionAccessRepr::parse(&wire::region_access::View::new_checked(&request.payload[..]).unwrap())
                .unwrap();
        access.to_bytes_with(&(access.offset as u32).to_le_bytes())
    };
    send_reply(&peer.main, &first.header, &answer(&first)).await;
    let dma = peer.send_dma(Command::DmaWrite, MEM_BASE + 8, 2, &[0x5a, 0xa5]).await;
    send_reply(&peer.main, &second.header, &answer(&second)).await;
    let dma_reply = recv(&peer.main).await;
    assert_eq!(dma_reply.header.id, dma);
    assert_eq!(dma_reply.header.command, Command::DmaWrite);
    assert_eq!(dma_reply.header.message_type, MessageType::Reply);
    assert_eq!(dma_reply.header.error, None);
    assert_eq!(&memory.bytes.lock().unwrap()[8..10], &[0x5a, 0xa5]);
    let mut results = Vec::new();
    for read in reads {
        results.push(read.await.unwrap().unwrap());
    }
    results.sort();
    assert_eq!(results, vec![0u32.to_le_bytes().to_vec(), 4u32.to_le_bytes().to_vec()]);
}

/// Records what the client reports sending.
#[derive(Debug, Default)]
struct SentTap(std::sync::Mutex<Vec<(usize, u16)>>);

impl transports::vfio_user::MessageTap for SentTap {
    fn message(
        &self,
        direction: transports::vfio_user::TapDirection,
        _socket: transports::vfio_user::SocketRole,
        message: &[u8],
        _fds: usize,
    ) {
        if direction == transports::vfio_user::TapDirection::Sent {
            let command = u16::from_le_bytes([message[2], message[3]]);
            self.0.lock().unwrap().push((message.len(), command));
        }
    }
}

#[tokio::test]
async fn a_batch_of_posted_writes_reaches_the_server_as_separate_messages_in_order() {
    let tap = Arc::new(SentTap::default());
    let config = ClientConfig { tap: Some(tap.clone()), ..config() };
    let (client, _events, peer) = connect(config, Hello::libvfio_user_like(8, 1024, true), NoDma).await;
    let device = Device::new(8192);
    tokio::spawn(serve(peer, device.clone()));
    let big: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
    let mut batch = client.posted_writes();
    assert!(batch.is_empty());
    batch.region_write(0, 0x10, &[1, 2, 3, 4]).unwrap();
    batch.region_write(0, 0x100, &big).unwrap();
    batch.region_write(0, 0x10, &[9]).unwrap();
    // Too long for the region offset space: rejected, and nothing of it is added.
    assert!(batch.region_write(0, u64::MAX, &[0; 2]).is_err());
    // 1 + 3 (2500 bytes split at the server's 1024-byte limit) + 1.
    assert_eq!(batch.messages(), 5);
    let tapped_before = tap.0.lock().unwrap().len();
    batch.send().await.unwrap();

    assert_eq!(client.region_read(0, 0x10, 4).await.unwrap(), vec![9, 2, 3, 4]);
    assert_eq!(client.region_read(0, 0x100, 1024).await.unwrap(), big[..1024]);
    assert_eq!(client.region_read(0, 0x500, 1024).await.unwrap(), big[1024..2048]);
    assert_eq!(client.region_read(0, 0x900, 452).await.unwrap(), big[2048..]);
    let accesses = device.lock().unwrap().accesses.clone();
    let posted: Vec<(u64, u32)> =
        accesses.iter().filter(|a| a.no_reply).map(|a| (a.offset, a.count)).collect();
    assert_eq!(posted, vec![(0x10, 4), (0x100, 1024), (0x500, 1024), (0x900, 452), (0x10, 1)]);
    // The tap (capture) sees each message of the one write on its own.
    let tapped: Vec<(usize, u16)> = tap.0.lock().unwrap()[tapped_before..tapped_before + 5].to_vec();
    let region_write = u16::from(Command::RegionWrite);
    assert_eq!(
        tapped,
        vec![
            (16 + 16 + 4, region_write),
            (16 + 16 + 1024, region_write),
            (16 + 16 + 1024, region_write),
            (16 + 16 + 452, region_write),
            (16 + 16 + 1, region_write)
        ]
    );
}
