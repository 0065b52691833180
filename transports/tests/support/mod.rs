//! An in-test vfio-user server built on the crate's own codec.
//!
//! Two levels:
//! - [`Peer`]: the raw server ends of the sockets, for tests that script every message
//!   (out-of-order replies, late replies, malformed messages);
//! - [`serve`] with a [`Device`]: a small, honest reference server (regions with a sparse-mmap
//!   capability, IRQ info, SET_IRQS, REGION_READ/WRITE with its own transfer limit, DMA_MAP,
//!   reset) whose "doorbell" register makes it DMA_READ from the client *before* replying to
//!   the doorbell write, waiting for the DMA reply the way libvfio-user does: on the twin
//!   socket if granted, else as the very next message on the main socket.
#![allow(dead_code)]

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use transports::vfio_user::socket::{MessageSocket, ReceivedMessage};
use transports::vfio_user::wire::{
    self, Command, DeviceInfoRepr, DmaAccessRepr, DmaMapRepr, HeaderRepr, IrqInfoRepr, IrqSetRepr,
    MessageType, RegionAccessRepr, RegionInfoRepr, VersionRepr, region_cap_id, region_flags,
};
use transports::vfio_user::{Client, ClientConfig, DmaHandler, DmaMode, DmaWindow, EventReceiver};

/// Longest a test waits for any one message; only guards against hangs.
pub const STEP: Duration = Duration::from_secs(10);

pub const EINVAL: u32 = 22;

/// What the server answers to VERSION.
#[derive(Clone)]
pub struct Hello {
    pub major: u16,
    pub minor: u16,
    pub json: Option<String>,
    pub grant_twin: bool,
}

impl Hello {
    /// libvfio-user's reply shape, with or without the twin socket.
    pub fn libvfio_user_like(max_msg_fds: u32, max_data_xfer_size: u32, grant_twin: bool) -> Self {
        let twin = if grant_twin { r#","twin_socket":{"supported":true,"fd_index":0}"# } else { "" };
        Self {
            major: 0,
            minor: 2,
            json: Some(format!(
                r#"{{"capabilities":{{"max_msg_fds":{max_msg_fds},"max_data_xfer_size":{max_data_xfer_size}{twin}}}}}"#
            )),
            grant_twin,
        }
    }
}

/// The server ends of a connection.
pub struct Peer {
    pub main: MessageSocket,
    pub twin: Option<MessageSocket>,
    /// What the client sent in VERSION.
    pub client_version: VersionRepr,
    /// DMA_MAPs sent while connecting: (request, fds attached, payload length).
    pub startup_maps: Vec<(DmaMapRepr, usize, usize)>,
    next_id: u16,
}

pub fn socket_pair() -> (OwnedFd, OwnedFd) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    (OwnedFd::from(a), OwnedFd::from(b))
}

/// Connects a client to a scripted server over a socketpair and answers VERSION.
pub async fn connect<H: DmaHandler>(
    config: ClientConfig,
    hello: Hello,
    handler: H,
) -> (Client, EventReceiver, Peer) {
    let config_windows = match &config.dma {
        DmaMode::Windows(windows) => Some(windows.clone()),
        DmaMode::Disabled => None,
    };
    let (client_end, server_end) = socket_pair();
    let client_task = tokio::spawn(Client::from_fd(client_end, config, handler));
    let main = MessageSocket::from_owned_fd(server_end).unwrap();
    let version = recv(&main).await;
    assert_eq!(version.header.command, Command::Version);
    assert_eq!(version.header.message_type, MessageType::Command);
    assert!(version.fds.is_empty());
    let client_version =
        VersionRepr::parse(&wire::version::View::new_checked(&version.payload[..]).unwrap()).unwrap();
    let reply = VersionRepr { major: hello.major, minor: hello.minor, json: hello.json.clone() };
    let mut twin = None;
    if hello.grant_twin {
        let (ours, theirs) = socket_pair();
        send_reply_with_fds(&main, &version.header, &reply.to_bytes(), &[theirs]).await;
        twin = Some(MessageSocket::from_owned_fd(ours).unwrap());
    } else {
        send_reply(&main, &version.header, &reply.to_bytes()).await;
    }
    let windows = match &config_windows {
        Some(windows) => windows.len(),
        None => 0,
    };
    let mut startup_maps = Vec::new();
    for _ in 0..windows {
        let map = recv(&main).await;
        assert_eq!(map.header.command, Command::DmaMap);
        let repr = DmaMapRepr::parse(&wire::dma_map::View::new_checked(&map.payload[..]).unwrap()).unwrap();
        startup_maps.push((repr, map.fds.len(), map.payload.len()));
        send_reply(&main, &map.header, &[]).await;
    }
    let (client, events) = tokio::time::timeout(STEP, client_task)
        .await
        .expect("client connect hangs")
        .unwrap()
        .expect("client connect failed");
    let peer = Peer { main, twin, client_version, startup_maps, next_id: 0x4000 };
    (client, events, peer)
}

/// Like [`connect`] but returns the client's connect error.
pub async fn connect_err<H: DmaHandler>(config: ClientConfig, hello: Hello, handler: H) -> transports::Error {
    let (client_end, server_end) = socket_pair();
    let client_task = tokio::spawn(Client::from_fd(client_end, config, handler));
    let main = MessageSocket::from_owned_fd(server_end).unwrap();
    let version = recv(&main).await;
    let reply = VersionRepr { major: hello.major, minor: hello.minor, json: hello.json.clone() };
    send_reply(&main, &version.header, &reply.to_bytes()).await;
    match tokio::time::timeout(STEP, client_task).await.unwrap().unwrap() {
        Ok(_) => panic!("connect succeeded"),
        Err(e) => e,
    }
}

pub async fn recv(socket: &MessageSocket) -> ReceivedMessage {
    tokio::time::timeout(STEP, socket.recv(1 << 26, 16))
        .await
        .expect("no message within the test step")
        .expect("receive failed")
        .expect("client closed the socket")
}

pub async fn send_reply(socket: &MessageSocket, request: &HeaderRepr, payload: &[u8]) {
    send_reply_with_fds(socket, request, payload, &[]).await;
}

pub async fn send_reply_with_fds(
    socket: &MessageSocket,
    request: &HeaderRepr,
    payload: &[u8],
    fds: &[OwnedFd],
) {
    use std::os::fd::AsFd;
    let bytes =
        wire::encode_message(request.id, request.command, MessageType::Reply, false, None, payload).unwrap();
    let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    socket.send(&bytes, &borrowed).await.unwrap();
}

pub async fn send_error(socket: &MessageSocket, request: &HeaderRepr, errno: u32) {
    let bytes =
        wire::encode_message(request.id, request.command, MessageType::Reply, false, Some(errno), &[])
            .unwrap();
    socket.send(&bytes, &[]).await.unwrap();
}

impl Peer {
    /// A peer on an already-connected socket, with no VERSION exchange (for raw baselines).
    pub fn from_socket(main: MessageSocket) -> Self {
        Self {
            main,
            twin: None,
            client_version: VersionRepr { major: 0, minor: 0, json: None },
            startup_maps: Vec::new(),
            next_id: 0x4000,
        }
    }

    pub fn next_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Sends a server→client DMA command on `socket` (twin if present, else main).
    pub async fn send_dma(&mut self, command: Command, address: u64, count: u64, data: &[u8]) -> u16 {
        let id = self.next_id();
        let payload = DmaAccessRepr { address, count }.to_bytes_with(data);
        let bytes = wire::encode_message(id, command, MessageType::Command, false, None, &payload).unwrap();
        self.dma_socket().send(&bytes, &[]).await.unwrap();
        id
    }

    pub fn dma_socket(&self) -> &MessageSocket {
        self.twin.as_ref().unwrap_or(&self.main)
    }
}

// ---------------------------------------------------------------------------------------------
// Reference device
// ---------------------------------------------------------------------------------------------

pub const BAR0_SIZE: usize = 0x1000;
pub const CONFIG_SIZE: usize = 256;
/// Writing here makes the device DMA_READ `doorbell_dma` and store the data at RESULT_OFFSET.
pub const DOORBELL_OFFSET: u64 = 0x100;
pub const RESULT_OFFSET: usize = 0x200;
pub const IRQ_COUNTS: [u32; 5] = [1, 1, 8, 1, 1];

/// What the device saw of one region access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub command: Command,
    pub no_reply: bool,
    pub region: u32,
    pub offset: u64,
    pub count: u32,
}

#[derive(Debug, Default)]
pub struct Device {
    pub bar0: Vec<u8>,
    pub config: Vec<u8>,
    pub max_data_xfer_size: u32,
    pub accesses: Vec<Access>,
    pub dma_maps: Vec<(DmaMapRepr, usize)>,
    pub dma_unmaps: Vec<(u64, u64)>,
    /// (flags, index, start, count, fds received)
    pub irq_sets: Vec<(u32, u32, u32, u32, usize)>,
    pub doorbell_dma: Option<(u64, u64)>,
    /// The outcome of the last doorbell DMA: data, or the errno of the error reply.
    pub dma_outcome: Option<Result<Vec<u8>, u32>>,
    /// Messages that arrived on the main socket while the device waited for a DMA reply
    /// there (libvfio-user #279 would misread them as the reply).
    pub stray_while_waiting: Vec<Command>,
    pub resets: usize,
    pub commands: Vec<Command>,
}

impl Device {
    pub fn new(max_data_xfer_size: u32) -> Arc<Mutex<Device>> {
        let mut config = vec![0u8; CONFIG_SIZE];
        config[0..4].copy_from_slice(&0x1234_1af4u32.to_le_bytes());
        for (i, byte) in config.iter_mut().enumerate().skip(4) {
            *byte = i as u8;
        }
        Arc::new(Mutex::new(Device {
            bar0: vec![0u8; BAR0_SIZE],
            config,
            max_data_xfer_size,
            ..Default::default()
        }))
    }
}

fn region_size(index: u32) -> u64 {
    match index {
        0 => BAR0_SIZE as u64,
        7 => CONFIG_SIZE as u64,
        _ => 0,
    }
}

fn region_info_reply(index: u32, argsz: u32) -> (Vec<u8>, bool) {
    let mut caps = Vec::new();
    let mut flags = region_flags::READ | region_flags::WRITE;
    if index == 0 {
        flags |= region_flags::MMAP | region_flags::CAPS;
        caps.extend_from_slice(&region_cap_id::SPARSE_MMAP.to_le_bytes());
        caps.extend_from_slice(&1u16.to_le_bytes());
        caps.extend_from_slice(&64u32.to_le_bytes()); // next: 32 + this 32-byte capability
        caps.extend_from_slice(&1u32.to_le_bytes());
        caps.extend_from_slice(&0u32.to_le_bytes());
        caps.extend_from_slice(&0u64.to_le_bytes());
        caps.extend_from_slice(&(BAR0_SIZE as u64).to_le_bytes());
        caps.extend_from_slice(&region_cap_id::TYPE.to_le_bytes());
        caps.extend_from_slice(&1u16.to_le_bytes());
        caps.extend_from_slice(&0u32.to_le_bytes());
        caps.extend_from_slice(&5u32.to_le_bytes());
        caps.extend_from_slice(&6u32.to_le_bytes());
    } else if region_size(index) == 0 {
        flags = 0;
    }
    let full = (32 + caps.len()) as u32;
    // Like libvfio-user: the caps, their cap_offset and the fd only when the client's argsz is
    // large enough; a short reply still says CAPS and the full argsz, with cap_offset 0.
    let complete = argsz >= full;
    let fixed = RegionInfoRepr {
        argsz: full,
        flags,
        index,
        cap_offset: if caps.is_empty() || !complete { 0 } else { 32 },
        size: region_size(index),
        offset: 0,
    };
    let mut bytes = fixed.to_bytes();
    if complete {
        bytes.extend_from_slice(&caps);
    }
    (bytes, complete && index == 0)
}

/// Serves the reference device until the client closes the connection.
pub async fn serve(mut peer: Peer, device: Arc<Mutex<Device>>) {
    loop {
        let message = match tokio::time::timeout(STEP * 3, peer.main.recv(1 << 26, 16)).await {
            Ok(Ok(Some(message))) => message,
            _ => return,
        };
        handle(&mut peer, &device, message).await;
    }
}

async fn handle(peer: &mut Peer, device: &Arc<Mutex<Device>>, message: ReceivedMessage) {
    let header = message.header;
    let payload = &message.payload[..];
    device.lock().unwrap().commands.push(header.command);
    match header.command {
        Command::DeviceGetInfo => {
            let reply = DeviceInfoRepr {
                argsz: 16,
                flags: wire::device_flags::PCI | wire::device_flags::RESET,
                num_regions: 9,
                num_irqs: 5,
            };
            send_reply(&peer.main, &header, &reply.to_bytes()).await;
        }
        Command::DeviceGetRegionInfo => {
            let request =
                RegionInfoRepr::parse(&wire::region_info::View::new_checked(payload).unwrap()).unwrap();
            if request.index >= 9 {
                return send_error(&peer.main, &header, EINVAL).await;
            }
            let (bytes, with_fd) = region_info_reply(request.index, request.argsz);
            if with_fd {
                let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
                send_reply_with_fds(&peer.main, &header, &bytes, &[fd]).await;
            } else {
                send_reply(&peer.main, &header, &bytes).await;
            }
        }
        Command::DeviceGetIrqInfo => {
            let mut request =
                IrqInfoRepr::parse(&wire::irq_info::View::new_checked(payload).unwrap()).unwrap();
            let Some(&count) = IRQ_COUNTS.get(request.index as usize) else {
                return send_error(&peer.main, &header, EINVAL).await;
            };
            request.count = count;
            request.flags = wire::irq_info_flags::EVENTFD;
            send_reply(&peer.main, &header, &request.to_bytes()).await;
        }
        Command::DeviceSetIrqs => {
            let set = IrqSetRepr::parse(&wire::irq_set::View::new_checked(payload).unwrap()).unwrap();
            device.lock().unwrap().irq_sets.push((
                set.flags,
                set.index,
                set.start,
                set.count,
                message.fds.len(),
            ));
            let limit = IRQ_COUNTS.get(set.index as usize).copied().unwrap_or(0);
            let fds_ok = message.fds.is_empty() || message.fds.len() == set.count as usize;
            if set.start + set.count > limit || !fds_ok {
                return send_error(&peer.main, &header, EINVAL).await;
            }
            send_reply(&peer.main, &header, &[]).await;
        }
        Command::RegionRead | Command::RegionWrite => region_access(peer, device, &header, payload).await,
        Command::DmaMap => {
            let map = DmaMapRepr::parse(&wire::dma_map::View::new_checked(payload).unwrap()).unwrap();
            device.lock().unwrap().dma_maps.push((map, message.fds.len()));
            send_reply(&peer.main, &header, &[]).await;
        }
        Command::DmaUnmap => {
            let unmap =
                wire::DmaUnmapRepr::parse(&wire::dma_unmap::View::new_checked(payload).unwrap()).unwrap();
            device.lock().unwrap().dma_unmaps.push((unmap.address, unmap.size));
            send_reply(&peer.main, &header, &unmap.to_bytes()).await;
        }
        Command::DeviceReset => {
            device.lock().unwrap().resets += 1;
            send_reply(&peer.main, &header, &[]).await;
        }
        _ => send_error(&peer.main, &header, EINVAL).await,
    }
}

async fn region_access(peer: &mut Peer, device: &Arc<Mutex<Device>>, header: &HeaderRepr, payload: &[u8]) {
    let view = wire::region_access::View::new_checked(payload).unwrap();
    let access = RegionAccessRepr::parse(&view).unwrap();
    let data = view.trailing().to_vec();
    let is_write = header.command == Command::RegionWrite;
    enum Outcome {
        Invalid,
        Read(Vec<u8>),
        Written(Option<(u64, u64)>),
    }
    let outcome = {
        let mut dev = device.lock().unwrap();
        dev.accesses.push(Access {
            command: header.command,
            no_reply: header.no_reply,
            region: access.region,
            offset: access.offset,
            count: access.count,
        });
        let max = dev.max_data_xfer_size;
        let doorbell_dma = dev.doorbell_dma;
        let end = access.offset + u64::from(access.count);
        let backing = match access.region {
            0 => Some(&mut dev.bar0),
            7 => Some(&mut dev.config),
            _ => None,
        };
        match backing {
            Some(backing)
                if access.count <= max
                    && end <= backing.len() as u64
                    && (!is_write || data.len() == access.count as usize) =>
            {
                let range = access.offset as usize..end as usize;
                if is_write {
                    backing[range].copy_from_slice(&data);
                    let rings = access.region == 0 && access.offset == DOORBELL_OFFSET;
                    Outcome::Written(if rings { doorbell_dma } else { None })
                } else {
                    Outcome::Read(backing[range].to_vec())
                }
            }
            _ => Outcome::Invalid,
        }
    };
    let doorbell = match outcome {
        Outcome::Invalid => {
            if !header.no_reply {
                send_error(&peer.main, header, EINVAL).await;
            }
            return;
        }
        Outcome::Read(bytes) => {
            if !header.no_reply {
                send_reply(&peer.main, header, &access.to_bytes_with(&bytes)).await;
            }
            return;
        }
        Outcome::Written(doorbell) => doorbell,
    };
    if let Some((address, count)) = doorbell {
        let outcome = doorbell_dma(peer, device, address, count).await;
        {
            let mut dev = device.lock().unwrap();
            if let Ok(bytes) = &outcome {
                let end = (RESULT_OFFSET + bytes.len()).min(BAR0_SIZE);
                dev.bar0[RESULT_OFFSET..end].copy_from_slice(&bytes[..end - RESULT_OFFSET]);
            }
            dev.dma_outcome = Some(outcome);
        }
    }
    if !header.no_reply {
        send_reply(&peer.main, header, &access.to_bytes_with(&[])).await;
    }
}

/// DMA_READ from the client, waiting for the reply like libvfio-user: on the twin socket, or
/// as the next message on the main socket (anything else there is recorded as a #279 hazard
/// and then treated as a failed DMA, which is what libvfio-user would do).
async fn doorbell_dma(
    peer: &mut Peer,
    device: &Arc<Mutex<Device>>,
    address: u64,
    count: u64,
) -> Result<Vec<u8>, u32> {
    let id = peer.send_dma(Command::DmaRead, address, count, &[]).await;
    let reply = recv(peer.dma_socket()).await;
    if reply.header.message_type != MessageType::Reply || reply.header.id != id {
        {
            device.lock().unwrap().stray_while_waiting.push(reply.header.command);
        }
        return Err(71); // EPROTO
    }
    if let Some(errno) = reply.header.error {
        return Err(errno);
    }
    let view = wire::dma_access::View::new_checked(&reply.payload[..]).unwrap();
    let answered = DmaAccessRepr::parse(&view).unwrap();
    assert_eq!(answered, DmaAccessRepr { address, count });
    Ok(view.trailing().to_vec())
}

// ---------------------------------------------------------------------------------------------
// DMA handler used by the tests: a flat memory with an optional gate.
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
pub struct Memory {
    pub base: u64,
    pub bytes: Arc<Mutex<Vec<u8>>>,
    pub calls: Arc<std::sync::atomic::AtomicUsize>,
    /// When set, every call (or only calls at `gate_address`, if set) waits until the
    /// semaphore grants a permit.
    pub gate: Option<Arc<tokio::sync::Semaphore>>,
    pub gate_address: Option<u64>,
    /// When set, every call fails with this error (after the gate).
    pub fail: Option<transports::vfio_user::DmaError>,
}

impl Memory {
    pub fn new(base: u64, size: usize) -> Self {
        let bytes = (0..size).map(|i| (i * 7 + 3) as u8).collect();
        Self {
            base,
            bytes: Arc::new(Mutex::new(bytes)),
            calls: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            gate: None,
            gate_address: None,
            fail: None,
        }
    }

    pub fn window(&self) -> DmaWindow {
        DmaWindow::read_write(self.base, self.bytes.lock().unwrap().len() as u64)
    }

    pub fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn pass_gate(&self, address: u64) {
        if self.gate_address.is_some_and(|gated| gated != address) {
            return;
        }
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
    }
}

impl DmaHandler for Memory {
    async fn dma_read(&self, address: u64, len: usize) -> Result<Vec<u8>, transports::vfio_user::DmaError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.pass_gate(address).await;
        if let Some(error) = self.fail {
            return Err(error);
        }
        let start = (address - self.base) as usize;
        Ok(self.bytes.lock().unwrap()[start..start + len].to_vec())
    }

    async fn dma_write(
        &self,
        address: u64,
        data: bytes::Bytes,
    ) -> Result<(), transports::vfio_user::DmaError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.pass_gate(address).await;
        if let Some(error) = self.fail {
            return Err(error);
        }
        let start = (address - self.base) as usize;
        self.bytes.lock().unwrap()[start..start + data.len()].copy_from_slice(&data);
        Ok(())
    }
}
