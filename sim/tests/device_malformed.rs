//! Malformed client messages, written as raw frames: the server answers with error replies or
//! closes the connection, never panics, and keeps accepting clients.

mod device_common;

use std::os::fd::AsFd;
use std::time::Duration;

use device_common::*;
use nix::errno::Errno;
use sim::device::ServerConfig;
use sim::device::dma_engine::{ID_MAGIC, regs};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use transports::vfio_user::socket::{MessageSocket, ReceivedMessage};
use transports::vfio_user::wire::{
    Command, DmaMapRepr, DmaUnmapRepr, IrqSetRepr, MessageType, RegionAccessRepr, VersionRepr,
    encode_message, irq_index, irq_set_flags,
};

async fn recv(socket: &MessageSocket) -> Option<ReceivedMessage> {
    tokio::time::timeout(Duration::from_secs(5), socket.recv(1 << 21, 16))
        .await
        .expect("server answers in time")
        .ok()
        .flatten()
}

async fn send(socket: &MessageSocket, id: u16, command: Command, payload: &[u8]) {
    let message = encode_message(id, command, MessageType::Command, false, None, payload).unwrap();
    socket.send(&message, &[]).await.unwrap();
}

/// Sends a command and returns the reply's errno (`None` = success).
async fn errno_of(socket: &MessageSocket, id: u16, command: Command, payload: &[u8]) -> Option<u32> {
    send(socket, id, command, payload).await;
    let reply = recv(socket).await.expect("a reply, not a closed connection");
    assert_eq!(reply.header.id, id);
    assert_eq!(reply.header.message_type, MessageType::Reply);
    reply.header.error
}

async fn negotiated(server: &TestServer) -> MessageSocket {
    let socket = MessageSocket::new(UnixStream::connect(&server.path).await.unwrap());
    let version =
        VersionRepr { major: 0, minor: 2, json: Some(r#"{"capabilities":{"max_msg_fds":1}}"#.into()) };
    send(&socket, 0, Command::Version, &version.to_bytes()).await;
    let reply = recv(&socket).await.unwrap();
    assert_eq!(reply.header.error, None);
    socket
}

async fn still_serves(server: &TestServer) {
    assert!(!server.task.is_finished(), "server loop still running");
    let (client, _memory, _gate) = connect(server, true).await;
    assert_eq!(read_u32(&client, 0, regs::ID).await, ID_MAGIC);
}

const EINVAL: Option<u32> = Some(Errno::EINVAL as u32);

#[tokio::test]
async fn bad_negotiation_gets_an_error_reply_and_a_closed_connection() {
    let server = start_server(ServerConfig::default());
    // Not VERSION first.
    let socket = MessageSocket::new(UnixStream::connect(&server.path).await.unwrap());
    let read = RegionAccessRepr { offset: 0, region: 0, count: 4 }.to_bytes_with(&[]);
    assert_eq!(errno_of(&socket, 5, Command::RegionRead, &read).await, EINVAL);
    assert!(recv(&socket).await.is_none());
    // Major 1.
    let socket = MessageSocket::new(UnixStream::connect(&server.path).await.unwrap());
    let version = VersionRepr { major: 1, minor: 0, json: None };
    assert_eq!(
        errno_of(&socket, 1, Command::Version, &version.to_bytes()).await,
        Some(Errno::ENOTSUP as u32)
    );
    assert!(recv(&socket).await.is_none());
    // JSON without its NUL, and JSON of the wrong shape.
    for payload in
        [b"\0\0\x02\0{}".to_vec(), b"\0\0\x02\0{\"capabilities\":{\"max_msg_fds\":\"x\"}}\0".to_vec()]
    {
        let socket = MessageSocket::new(UnixStream::connect(&server.path).await.unwrap());
        assert_eq!(errno_of(&socket, 1, Command::Version, &payload).await, EINVAL);
        assert!(recv(&socket).await.is_none());
    }
    // A client proposing 0.7 gets 0.2; one proposing 0.0 gets 0.0.
    for (proposed, answered) in [(7u16, 2u16), (0, 0)] {
        let socket = MessageSocket::new(UnixStream::connect(&server.path).await.unwrap());
        send(&socket, 1, Command::Version, &VersionRepr { major: 0, minor: proposed, json: None }.to_bytes())
            .await;
        let reply = recv(&socket).await.unwrap();
        assert_eq!(u16::from_le_bytes([reply.payload[2], reply.payload[3]]), answered);
        assert!(reply.fds.is_empty(), "no twin socket unless asked");
    }
    still_serves(&server).await;
}

#[tokio::test]
async fn broken_framing_closes_the_connection() {
    let server = start_server(ServerConfig::default());
    // Type 3 in the flags.
    let mut stream = UnixStream::connect(&server.path).await.unwrap();
    let mut bad = encode_message(1, Command::Version, MessageType::Command, false, None, &[0; 4]).unwrap();
    bad[8] = 3;
    stream.write_all(&bad).await.unwrap();
    let socket = MessageSocket::new(stream);
    assert!(recv(&socket).await.is_none());
    // A size of 2 GiB after negotiation.
    let socket = negotiated(&server).await;
    let mut huge = encode_message(2, Command::RegionWrite, MessageType::Command, false, None, &[]).unwrap();
    huge[4..8].copy_from_slice(&0x8000_0000u32.to_le_bytes());
    socket.send(&huge, &[]).await.unwrap();
    assert!(recv(&socket).await.is_none());
    // A size smaller than the header.
    let socket = negotiated(&server).await;
    let mut tiny = encode_message(2, Command::DeviceReset, MessageType::Command, false, None, &[]).unwrap();
    tiny[4..8].copy_from_slice(&8u32.to_le_bytes());
    socket.send(&tiny, &[]).await.unwrap();
    assert!(recv(&socket).await.is_none());
    // A reply on the main socket in twin-socket mode... and EOF in the middle of a message.
    let socket = negotiated(&server).await;
    socket
        .send(&encode_message(3, Command::DmaRead, MessageType::Reply, false, None, &[0; 16]).unwrap(), &[])
        .await
        .unwrap();
    // (single-socket mode here: a stray reply matches no DMA request and is dropped)
    assert_eq!(errno_of(&socket, 4, Command::DeviceReset, &[]).await, None);
    drop(socket);
    // In twin-socket mode a reply on the main socket breaks the protocol.
    let socket = MessageSocket::new(UnixStream::connect(&server.path).await.unwrap());
    let twin = VersionRepr {
        major: 0,
        minor: 2,
        json: Some(r#"{"capabilities":{"twin_socket":{"supported":true}}}"#.into()),
    };
    send(&socket, 0, Command::Version, &twin.to_bytes()).await;
    let reply = recv(&socket).await.unwrap();
    assert_eq!(reply.fds.len(), 1, "the twin socket travels with the VERSION reply");
    assert!(
        std::str::from_utf8(&reply.payload[4..])
            .unwrap()
            .contains(r#""twin_socket":{"fd_index":0,"supported":true}"#)
    );
    socket
        .send(&encode_message(3, Command::DmaRead, MessageType::Reply, false, None, &[0; 16]).unwrap(), &[])
        .await
        .unwrap();
    assert!(recv(&socket).await.is_none());
    let mut stream = UnixStream::connect(&server.path).await.unwrap();
    stream.write_all(&bad[..10]).await.unwrap();
    drop(stream);
    drop(socket); // one client at a time: the next one is served once this one leaves
    still_serves(&server).await;
}

#[tokio::test]
async fn bad_requests_get_errno_replies() {
    let server = start_server(ServerConfig::default());
    let socket = negotiated(&server).await;
    let mut id = 10u16;
    let mut check = async |command: Command, payload: Vec<u8>, expected: Option<u32>| {
        id += 1;
        assert_eq!(errno_of(&socket, id, command, &payload).await, expected, "{command} {payload:02x?}");
    };
    let access = |offset: u64, region: u32, count: u32| RegionAccessRepr { offset, region, count };
    check(Command::RegionRead, access(0, 0, 4).to_bytes_with(&[]), None).await;
    check(Command::RegionRead, vec![0; 8], EINVAL).await;
    check(Command::RegionRead, access(0, 9, 4).to_bytes_with(&[]), EINVAL).await;
    check(Command::RegionRead, access(0, 1, 4).to_bytes_with(&[]), EINVAL).await; // absent BAR1
    check(Command::RegionRead, access(0x1000, 0, 1).to_bytes_with(&[]), EINVAL).await;
    check(Command::RegionRead, access(u64::MAX, 0, 4).to_bytes_with(&[]), EINVAL).await;
    check(Command::RegionRead, access(0, 2, 2 << 20).to_bytes_with(&[]), EINVAL).await;
    check(Command::RegionRead, access(0, 0, 4).to_bytes_with(&[1]), EINVAL).await;
    check(Command::RegionWrite, access(0, 0, 4).to_bytes_with(&[1, 2]), EINVAL).await;
    check(Command::RegionWrite, access(0, 0, 2).to_bytes_with(&[1, 2, 3]), EINVAL).await;
    check(Command::DeviceGetInfo, vec![8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], EINVAL).await;
    check(Command::DeviceGetInfo, vec![], EINVAL).await;
    check(Command::DeviceGetRegionInfo, vec![0; 12], EINVAL).await;
    check(Command::DeviceGetIrqInfo, vec![16, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0], EINVAL).await;
    check(Command::DeviceGetRegionIoFds, vec![16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], None).await;
    // SET_IRQS: argsz mismatch, two data types, count 0 without NONE|TRIGGER, BOOL length.
    let set = |flags: u32, index: u32, start: u32, count: u32, data: Vec<u8>| {
        IrqSetRepr { flags, index, start, count, data }.to_bytes()
    };
    let mut wrong_argsz = set(irq_set_flags::DATA_NONE | irq_set_flags::ACTION_TRIGGER, 2, 0, 1, vec![]);
    wrong_argsz[0] = 99;
    check(Command::DeviceSetIrqs, wrong_argsz, EINVAL).await;
    let both = irq_set_flags::DATA_NONE | irq_set_flags::DATA_BOOL | irq_set_flags::ACTION_TRIGGER;
    check(Command::DeviceSetIrqs, set(both, 2, 0, 1, vec![]), EINVAL).await;
    check(
        Command::DeviceSetIrqs,
        set(irq_set_flags::DATA_NONE | irq_set_flags::ACTION_MASK, 2, 0, 0, vec![]),
        EINVAL,
    )
    .await;
    check(
        Command::DeviceSetIrqs,
        set(irq_set_flags::DATA_BOOL | irq_set_flags::ACTION_TRIGGER, 2, 0, 2, vec![1]),
        EINVAL,
    )
    .await;
    check(
        Command::DeviceSetIrqs,
        set(irq_set_flags::DATA_NONE | irq_set_flags::ACTION_TRIGGER, 2, u32::MAX, 2, vec![]),
        EINVAL,
    )
    .await;
    check(
        Command::DeviceSetIrqs,
        set(irq_set_flags::DATA_NONE | irq_set_flags::ACTION_TRIGGER, 2, 0, 0, vec![]),
        None,
    )
    .await;
    // DMA_MAP / DMA_UNMAP.
    let map = |flags: u32, address: u64, size: u64| DmaMapRepr { flags, offset: 0, address, size }.to_bytes();
    check(Command::DmaMap, map(3, 0x10000, 0x1000), None).await;
    check(Command::DmaMap, map(3, 0x10000, 0x1000), None).await; // exact duplicate
    check(Command::DmaMap, map(3, 0x10800, 0x1000), Some(Errno::EEXIST as u32)).await;
    check(Command::DmaMap, map(0x100, 0x20000, 0x1000), EINVAL).await;
    check(Command::DmaMap, map(3, u64::MAX - 10, 0x1000), EINVAL).await;
    check(Command::DmaMap, map(3, 0x30000, 0), EINVAL).await;
    let unmap =
        |flags: u32, address: u64, size: u64| DmaUnmapRepr { argsz: 24, flags, address, size }.to_bytes();
    check(Command::DmaUnmap, unmap(0, 0x20000, 0x1000), Some(Errno::ENOENT as u32)).await;
    check(Command::DmaUnmap, unmap(2, 0x10000, 0), EINVAL).await;
    check(Command::DmaUnmap, unmap(0, 0x10000, 0x1000), None).await;
    check(Command::DmaUnmap, unmap(2, 0, 0), None).await;
    // Commands a client may not send, or this device does not implement.
    check(Command::DmaRead, vec![0; 16], EINVAL).await;
    check(Command::Unknown(99), vec![], EINVAL).await;
    check(Command::Version, VersionRepr { major: 0, minor: 2, json: None }.to_bytes(), EINVAL).await;
    check(Command::RegionWriteMulti, vec![0; 8], Some(Errno::ENOTSUP as u32)).await;

    // fds on a command that takes none.
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let message = encode_message(
        200,
        Command::RegionRead,
        MessageType::Command,
        false,
        None,
        &access(0, 0, 4).to_bytes_with(&[]),
    )
    .unwrap();
    socket.send(&message, &[a.as_fd()]).await.unwrap();
    let reply = recv(&socket).await.unwrap();
    assert_eq!((reply.header.id, reply.header.error), (200, EINVAL));

    // A failing No_reply command produces no reply; the next reply is the next command's.
    let posted = encode_message(
        201,
        Command::RegionWrite,
        MessageType::Command,
        true,
        None,
        &access(0, 9, 1).to_bytes_with(&[0]),
    )
    .unwrap();
    socket.send(&posted, &[]).await.unwrap();
    assert_eq!(errno_of(&socket, 202, Command::DeviceReset, &[]).await, None);
    drop(socket);
    still_serves(&server).await;
}

#[tokio::test]
async fn random_payloads_never_break_the_server() {
    let server = start_server(ServerConfig::default());
    let mut socket = negotiated(&server).await;
    // A small deterministic generator (xorshift) keeps the test reproducible.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let commands = [
        Command::DmaMap,
        Command::DmaUnmap,
        Command::DeviceGetInfo,
        Command::DeviceGetRegionInfo,
        Command::DeviceGetRegionIoFds,
        Command::DeviceGetIrqInfo,
        Command::DeviceSetIrqs,
        Command::RegionRead,
        Command::RegionWrite,
        Command::DeviceReset,
        Command::DeviceFeature,
    ];
    let mut replies = 0;
    for id in 0..400u16 {
        let command = commands[(next() % commands.len() as u64) as usize];
        let len = (next() % 48) as usize;
        let mut payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Keep region accesses in small regions so replies stay small, and steer some at real ones.
        if matches!(command, Command::RegionRead | Command::RegionWrite) && payload.len() >= 16 {
            payload[8..12].copy_from_slice(&((next() % 10) as u32).to_le_bytes());
            payload[12..16].copy_from_slice(&((next() % 16) as u32).to_le_bytes());
            payload[0..8].copy_from_slice(&(next() % 0x1100).to_le_bytes());
        }
        send(&socket, id, command, &payload).await;
        match recv(&socket).await {
            Some(reply) => {
                assert_eq!(reply.header.id, id);
                replies += 1;
            }
            None => socket = negotiated(&server).await,
        }
    }
    assert!(replies > 300, "most garbage gets an error reply rather than a closed connection");
    drop(socket);
    still_serves(&server).await;
}

#[tokio::test]
async fn set_irqs_with_eventfds_over_the_raw_socket() {
    let server = start_server(ServerConfig::default());
    let socket = negotiated(&server).await;
    let fd = eventfd();
    // fds on a NONE request: EINVAL; more fds than count: EINVAL.
    let none = IrqSetRepr {
        flags: irq_set_flags::DATA_NONE | irq_set_flags::ACTION_TRIGGER,
        index: irq_index::MSIX,
        start: 0,
        count: 1,
        data: vec![],
    };
    let message =
        encode_message(1, Command::DeviceSetIrqs, MessageType::Command, false, None, &none.to_bytes())
            .unwrap();
    socket.send(&message, &[fd.as_fd()]).await.unwrap();
    assert_eq!(recv(&socket).await.unwrap().header.error, EINVAL);
    let two = IrqSetRepr {
        flags: irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER,
        count: 2,
        ..none.clone()
    };
    let message =
        encode_message(2, Command::DeviceSetIrqs, MessageType::Command, false, None, &two.to_bytes())
            .unwrap();
    socket.send(&message, &[fd.as_fd()]).await.unwrap();
    assert_eq!(recv(&socket).await.unwrap().header.error, EINVAL);
    // One fd for one vector, then a trigger from the client.
    let one = IrqSetRepr { count: 1, ..two };
    let message =
        encode_message(3, Command::DeviceSetIrqs, MessageType::Command, false, None, &one.to_bytes())
            .unwrap();
    socket.send(&message, &[fd.as_fd()]).await.unwrap();
    assert_eq!(recv(&socket).await.unwrap().header.error, None);
    assert_eq!(errno_of(&socket, 4, Command::DeviceSetIrqs, &none.to_bytes()).await, None);
    assert_eq!(wait_eventfd(&fd).await, 1);
}
