//! Test fixtures for the engine: a small vfio-user device server and a root complex that plays
//! host memory on the link.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bridge::engine::{Engine, EngineConfig, ServerEndpoint};
use tlp::completion::{MemoryRead, ReadReassembly, read_completions, unsuccessful_completion};
use tlp::config_space::{BarKind, bar_value_after_write};
use tlp::split::{LinkParams, RequestFields, SplitChunk, memory_read_tlp, memory_write_tlp};
use tlp::{Body, CfgType, ConfigRequest, CplStatus, MemOp, RoutingId, Tlp};
use tokio::sync::mpsc;
use transports::link::{MemoryClock, RootPortEnd, memory_pair};
use transports::vfio_user::socket::{MessageSocket, ReceivedMessage};
use transports::vfio_user::wire::{
    self, Command, DeviceInfoRepr, DmaAccessRepr, HeaderRepr, IrqInfoRepr, IrqSetRepr, MessageType,
    RegionAccessRepr, RegionInfoRepr, VersionRepr,
};

pub const STEP: Duration = Duration::from_secs(10);

pub const BAR0_SIZE: u64 = 0x1000;
pub const BAR2_SIZE: u64 = 0x20_0000;
pub const BAR1_SIZE: u64 = 0x100;
/// Expansion ROM (region 6); its bytes are `rom_byte(offset)`.
pub const ROM_SIZE: u64 = 0x800;

pub fn rom_byte(offset: usize) -> u8 {
    (offset as u8).wrapping_mul(3) ^ 0x55
}
pub const BAR1_IO_ADDRESS: u32 = 0xc000;
pub const MSI_CAP: u16 = 0x40;
pub const MSIX_CAP: u16 = 0x60;
pub const PCIE_CAP: u16 = 0x70;
pub const MSIX_TABLE: u64 = 0x800;
pub const MSIX_PBA: u64 = 0xc00;
/// BAR0 registers of the test device.
pub const REG_DMA_ADDR: u64 = 0x100;
pub const REG_DMA_LEN: u64 = 0x108;
/// Write 1: DMA_READ host memory into BAR2[0..]; 2: DMA_WRITE BAR2[0..] to host memory.
pub const REG_DOORBELL: u64 = 0x110;
/// Errno of the last DMA (0 = success).
pub const REG_DMA_ERRNO: u64 = 0x118;
/// Write `index << 16 | vector` to fire that eventfd.
pub const REG_IRQ: u64 = 0x120;
/// Reading it answers only after `slow_reply`; later messages are served meanwhile.
pub const REG_SLOW: u64 = 0x200;
/// Reading it fails with EIO.
pub const REG_ERROR: u64 = 0x208;

/// One region access the device saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub write: bool,
    pub no_reply: bool,
    pub region: u32,
    pub offset: u64,
    pub count: u32,
}

#[derive(Default)]
pub struct Device {
    pub config: Vec<u8>,
    pub bar0: Vec<u8>,
    pub bar2: Vec<u8>,
    pub bar1: Vec<u8>,
    pub rom: Vec<u8>,
    pub accesses: Vec<Access>,
    pub irq_fds: [Vec<Option<OwnedFd>>; 3],
    /// (index, flags, start, count, fds)
    pub irq_sets: Vec<(u32, u32, u32, u32, usize)>,
    pub resets: usize,
    pub dma_maps: Vec<(u64, u64)>,
    /// `(largest map, most maps)` the server accepts, refusing others with ENOSPC like
    /// libvfio-user (8 TiB, 16); `None`: any.
    pub dma_map_limits: Option<(u64, usize)>,
    pub slow_reply: Duration,
    /// Notified: the server closes its sockets (a crashed server).
    pub hangup: Arc<tokio::sync::Notify>,
}

fn config_space() -> Vec<u8> {
    let mut c = vec![0u8; 256];
    let put = |c: &mut Vec<u8>, at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(&mut c, 0x00, &0x1af4u16.to_le_bytes());
    put(&mut c, 0x02, &0x1234u16.to_le_bytes());
    put(&mut c, 0x06, &0x0010u16.to_le_bytes()); // capabilities list
    put(&mut c, 0x0b, &[0x08]); // base class: system peripheral
    put(&mut c, 0x10, &0u32.to_le_bytes()); // BAR0: mem32
    put(&mut c, 0x14, &1u32.to_le_bytes()); // BAR1: I/O
    put(&mut c, 0x18, &0x0000_000cu32.to_le_bytes()); // BAR2: mem64 prefetchable
    put(&mut c, 0x34, &[MSI_CAP as u8]);
    put(&mut c, 0x3d, &[1]); // INTA
    // MSI: 64-bit, per-vector masking, 4 vectors capable.
    put(&mut c, MSI_CAP as usize, &[0x05, MSIX_CAP as u8]);
    put(&mut c, MSI_CAP as usize + 2, &((1u16 << 8) | (1 << 7) | (2 << 1)).to_le_bytes());
    // MSI-X: 4 entries, table BIR 0 at 0x800, PBA BIR 0 at 0xc00.
    put(&mut c, MSIX_CAP as usize, &[0x11, PCIE_CAP as u8]);
    put(&mut c, MSIX_CAP as usize + 2, &3u16.to_le_bytes());
    put(&mut c, MSIX_CAP as usize + 4, &(MSIX_TABLE as u32).to_le_bytes());
    put(&mut c, MSIX_CAP as usize + 8, &(MSIX_PBA as u32).to_le_bytes());
    // PCI Express v2 endpoint, FLR capable.
    put(&mut c, PCIE_CAP as usize, &[0x10, 0x00]);
    put(&mut c, PCIE_CAP as usize + 2, &0x0002u16.to_le_bytes());
    put(&mut c, PCIE_CAP as usize + 4, &(1u32 << 28).to_le_bytes());
    put(&mut c, PCIE_CAP as usize + 8, &0x2000u16.to_le_bytes()); // MRRS 512, MPS 128
    c
}

impl Device {
    pub fn new() -> Arc<Mutex<Device>> {
        Arc::new(Mutex::new(Device {
            config: config_space(),
            bar0: vec![0; BAR0_SIZE as usize],
            bar2: vec![0; BAR2_SIZE as usize],
            bar1: vec![0; BAR1_SIZE as usize],
            rom: (0..ROM_SIZE as usize).map(rom_byte).collect(),
            irq_fds: [Vec::new(), Vec::new(), Vec::new()],
            ..Default::default()
        }))
    }
}

/// Region 0 is as large as `Device::bar0` (a test may make it larger than what BAR0's sizing
/// answer, always `BAR0_SIZE`, tells the host).
fn region_size(index: u32, device: &Mutex<Device>) -> u64 {
    match index {
        0 => device.lock().unwrap().bar0.len() as u64,
        1 => BAR1_SIZE,
        6 => ROM_SIZE,
        2 => BAR2_SIZE,
        7 => 256,
        _ => 0,
    }
}

async fn send_reply(socket: &MessageSocket, request: &HeaderRepr, payload: &[u8]) {
    let bytes =
        wire::encode_message(request.id, request.command, MessageType::Reply, false, None, payload).unwrap();
    let _ = socket.send(&bytes, &[]).await;
}

async fn send_error(socket: &MessageSocket, request: &HeaderRepr, errno: u32) {
    let bytes =
        wire::encode_message(request.id, request.command, MessageType::Reply, false, Some(errno), &[])
            .unwrap();
    let _ = socket.send(&bytes, &[]).await;
}

/// Starts the device server on a socketpair; returns the engine's end.
pub fn spawn_server(device: Arc<Mutex<Device>>) -> OwnedFd {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    serve_on(OwnedFd::from(b), device);
    OwnedFd::from(a)
}

/// Serves the device on the server end of a socketpair.
pub fn serve_on(server_end: OwnedFd, device: Arc<Mutex<Device>>) {
    let main = MessageSocket::from_owned_fd(server_end).unwrap();
    tokio::spawn(serve(main, device));
}

async fn serve(main: MessageSocket, device: Arc<Mutex<Device>>) {
    let main = Arc::new(main);
    let Ok(Some(version)) = main.recv(1 << 26, 16).await else { return };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let reply = VersionRepr {
        major: 0,
        minor: 2,
        json: Some(
            r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"twin_socket":{"supported":true,"fd_index":0}}}"#
                .to_owned(),
        ),
    };
    let bytes = wire::encode_message(0, Command::Version, MessageType::Reply, false, None, &reply.to_bytes())
        .unwrap();
    let theirs = OwnedFd::from(theirs);
    main.send(&bytes, &[theirs.as_fd()]).await.unwrap();
    let _ = version;
    let twin = MessageSocket::from_owned_fd(OwnedFd::from(ours)).unwrap();
    let mut next_id = 0x100u16;
    let hangup = device.lock().unwrap().hangup.clone();
    loop {
        let received = tokio::select! {
            _ = hangup.notified() => return,
            received = main.recv(1 << 26, 16) => received,
        };
        let Ok(Some(message)) = received else { return };
        handle(&main, &twin, &device, message, &mut next_id).await;
    }
}

async fn handle(
    main: &Arc<MessageSocket>,
    twin: &MessageSocket,
    device: &Arc<Mutex<Device>>,
    message: ReceivedMessage,
    next_id: &mut u16,
) {
    let header = message.header;
    let payload = &message.payload[..];
    match header.command {
        Command::DeviceGetInfo => {
            let reply = DeviceInfoRepr {
                argsz: 16,
                flags: wire::device_flags::PCI | wire::device_flags::RESET,
                num_regions: 9,
                num_irqs: 5,
            };
            send_reply(main, &header, &reply.to_bytes()).await;
        }
        Command::DeviceGetRegionInfo => {
            let request =
                RegionInfoRepr::parse(&wire::region_info::View::new_checked(payload).unwrap()).unwrap();
            let size = region_size(request.index, device);
            let flags = if size == 0 { 0 } else { wire::region_flags::READ | wire::region_flags::WRITE };
            let reply =
                RegionInfoRepr { argsz: 32, flags, index: request.index, cap_offset: 0, size, offset: 0 };
            send_reply(main, &header, &reply.to_bytes()).await;
        }
        Command::DeviceGetIrqInfo => {
            let mut request =
                IrqInfoRepr::parse(&wire::irq_info::View::new_checked(payload).unwrap()).unwrap();
            request.count = match request.index {
                0 => 1,
                1 | 2 => 4,
                _ => 0,
            };
            request.flags = wire::irq_info_flags::EVENTFD;
            send_reply(main, &header, &request.to_bytes()).await;
        }
        Command::DeviceSetIrqs => {
            let set = IrqSetRepr::parse(&wire::irq_set::View::new_checked(payload).unwrap()).unwrap();
            {
                let mut dev = device.lock().unwrap();
                dev.irq_sets.push((set.index, set.flags, set.start, set.count, message.fds.len()));
                if let Some(slots) = dev.irq_fds.get_mut(set.index as usize) {
                    let data_eventfd = set.flags & wire::irq_set_flags::DATA_EVENTFD != 0;
                    let trigger = set.flags & wire::irq_set_flags::ACTION_TRIGGER != 0;
                    if trigger && set.count == 0 {
                        slots.clear();
                    } else if data_eventfd {
                        for (i, fd) in message.fds.into_iter().enumerate() {
                            let at = set.start as usize + i;
                            if slots.len() <= at {
                                slots.resize_with(at + 1, || None);
                            }
                            slots[at] = Some(fd);
                        }
                    }
                }
            }
            send_reply(main, &header, &[]).await;
        }
        Command::DmaMap => {
            let map = wire::DmaMapRepr::parse(&wire::dma_map::View::new_checked(payload).unwrap()).unwrap();
            let refused = {
                let mut dev = device.lock().unwrap();
                let refused = dev
                    .dma_map_limits
                    .is_some_and(|(size, maps)| map.size > size || dev.dma_maps.len() >= maps);
                if !refused {
                    dev.dma_maps.push((map.address, map.size));
                }
                refused
            };
            if refused {
                send_error(main, &header, nix::errno::Errno::ENOSPC as u32).await;
            } else {
                send_reply(main, &header, &[]).await;
            }
        }
        Command::DeviceReset => {
            {
                let mut dev = device.lock().unwrap();
                dev.resets += 1;
                dev.config = config_space();
                dev.irq_fds = [Vec::new(), Vec::new(), Vec::new()];
            }
            send_reply(main, &header, &[]).await;
        }
        Command::RegionRead | Command::RegionWrite => {
            region_access(main, twin, device, &header, payload, next_id).await
        }
        _ => send_error(main, &header, 22).await,
    }
}

fn config_write(config: &mut [u8], offset: usize, data: &[u8]) {
    for (i, byte) in data.iter().enumerate() {
        if let Some(slot) = config.get_mut(offset + i) {
            *slot = *byte;
        }
    }
    // BARs keep their size and type bits.
    let read = |c: &[u8], at: usize| u32::from_le_bytes(c[at..at + 4].try_into().unwrap());
    let bar0 = bar_value_after_write(BarKind::Mem32, false, BAR0_SIZE, u64::from(read(config, 0x10)));
    config[0x10..0x14].copy_from_slice(&(bar0 as u32).to_le_bytes());
    let written = u64::from(read(config, 0x18)) | (u64::from(read(config, 0x1c)) << 32);
    let bar2 = bar_value_after_write(BarKind::Mem64, true, BAR2_SIZE, written);
    config[0x18..0x20].copy_from_slice(&bar2.to_le_bytes());
    let bar1 = bar_value_after_write(BarKind::Io, false, BAR1_SIZE, u64::from(read(config, 0x14)));
    config[0x14..0x18].copy_from_slice(&(bar1 as u32).to_le_bytes());
    // The ROM BAR keeps its address bits above the size and the enable bit.
    let rom = read(config, 0x30) & (!(ROM_SIZE as u32 - 1) | 1);
    config[0x30..0x34].copy_from_slice(&rom.to_le_bytes());
    for unimplemented in [0x20usize, 0x24] {
        config[unimplemented..unimplemented + 4].fill(0);
    }
}

async fn region_access(
    main: &Arc<MessageSocket>,
    twin: &MessageSocket,
    device: &Arc<Mutex<Device>>,
    header: &HeaderRepr,
    payload: &[u8],
    next_id: &mut u16,
) {
    let view = wire::region_access::View::new_checked(payload).unwrap();
    let access = RegionAccessRepr::parse(&view).unwrap();
    let data = view.trailing().to_vec();
    let write = header.command == Command::RegionWrite;
    let (offset, count) = (access.offset as usize, access.count as usize);
    if !matches!(access.region, 0 | 1 | 2 | 6 | 7) || (access.region == 6 && write) {
        return send_error(main, header, 22).await;
    }
    let mut action = None;
    let mut slow = None;
    let result: Result<Vec<u8>, u32> = {
        let mut dev = device.lock().unwrap();
        dev.accesses.push(Access {
            write,
            no_reply: header.no_reply,
            region: access.region,
            offset: access.offset,
            count: access.count,
        });
        if access.region == 0 && !write && access.offset == REG_ERROR {
            Err(5)
        } else {
            if access.region == 0 && !write && access.offset == REG_SLOW {
                slow = Some(dev.slow_reply);
            }
            let backing = match access.region {
                0 => Some(&mut dev.bar0),
                1 => Some(&mut dev.bar1),
                2 => Some(&mut dev.bar2),
                6 => Some(&mut dev.rom),
                _ => None,
            };
            match backing {
                Some(mem) if offset + count <= mem.len() => {
                    if write {
                        mem[offset..offset + count].copy_from_slice(&data);
                        if access.region == 0 && access.offset == REG_DOORBELL {
                            action = data.first().copied();
                        }
                        if access.region == 0 && access.offset == REG_IRQ && data.len() == 4 {
                            let v = u32::from_le_bytes(data[..4].try_into().unwrap());
                            let (index, vector) = ((v >> 16) as usize, (v & 0xffff) as usize);
                            if let Some(Some(fd)) = dev.irq_fds.get(index).and_then(|s| s.get(vector)) {
                                let _ = nix::unistd::write(fd, &1u64.to_ne_bytes());
                            }
                        }
                        Ok(Vec::new())
                    } else {
                        Ok(mem[offset..offset + count].to_vec())
                    }
                }
                Some(_) => Err(22),
                None if offset + count <= 256 => {
                    if write {
                        config_write(&mut dev.config, offset, &data);
                        Ok(Vec::new())
                    } else {
                        Ok(dev.config[offset..offset + count].to_vec())
                    }
                }
                None => Err(22),
            }
        }
    };
    if let Some(delay) = slow {
        // Answered later while the server goes on with the next messages, like a device
        // that completes reads out of order.
        let (main, header, reply) = (main.clone(), *header, result.map(|bytes| access.to_bytes_with(&bytes)));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            match reply {
                Ok(payload) => send_reply(&main, &header, &payload).await,
                Err(errno) => send_error(&main, &header, errno).await,
            }
        });
        return;
    }
    if let Some(op) = action {
        doorbell(twin, device, op, next_id).await;
    }
    if header.no_reply {
        return;
    }
    match result {
        Ok(bytes) => send_reply(main, header, &access.to_bytes_with(&bytes)).await,
        Err(errno) => send_error(main, header, errno).await,
    }
}

async fn doorbell(twin: &MessageSocket, device: &Arc<Mutex<Device>>, op: u8, next_id: &mut u16) {
    let (address, len, data) = {
        let dev = device.lock().unwrap();
        let address = u64::from_le_bytes(dev.bar0[REG_DMA_ADDR as usize..][..8].try_into().unwrap());
        let len = u32::from_le_bytes(dev.bar0[REG_DMA_LEN as usize..][..4].try_into().unwrap()) as u64;
        (address, len, dev.bar2[..len as usize].to_vec())
    };
    *next_id = next_id.wrapping_add(1);
    let (command, payload) = match op {
        1 => (Command::DmaRead, DmaAccessRepr { address, count: len }.to_bytes_with(&[])),
        _ => (Command::DmaWrite, DmaAccessRepr { address, count: len }.to_bytes_with(&data)),
    };
    let bytes = wire::encode_message(*next_id, command, MessageType::Command, false, None, &payload).unwrap();
    twin.send(&bytes, &[]).await.unwrap();
    let reply = twin.recv(1 << 26, 0).await.unwrap().unwrap();
    let errno = reply.header.error.unwrap_or(0);
    let mut dev = device.lock().unwrap();
    if errno == 0 && command == Command::DmaRead {
        let view = wire::dma_access::View::new_checked(&reply.payload[..]).unwrap();
        let bytes = view.trailing().to_vec();
        dev.bar2[..bytes.len()].copy_from_slice(&bytes);
    }
    dev.bar0[REG_DMA_ERRNO as usize..][..4].copy_from_slice(&errno.to_le_bytes());
}

// ---------------------------------------------------------------------------------------------
// Root complex
// ---------------------------------------------------------------------------------------------

pub const RC_ID: RoutingId = RoutingId::new(0, 0, 0);
pub const HOST_BASE: u64 = 0x1000_0000;
pub const HOST_SIZE: usize = 0x20_0000;
pub const MSI_ADDRESS: u64 = 0xfee0_0000;
pub const BAR0_ADDRESS: u64 = 0xfe00_0000;
pub const BAR2_ADDRESS: u64 = 0x8_0000_0000;

/// How the root complex answers the bridge's MRds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadPolicy {
    /// In order, each read's completions back to back.
    #[default]
    InOrder,
    /// Collect up to 8 reads, then answer them interleaved, newest first.
    Interleaved,
    /// Hold every read (never answer) until `release_held`.
    Hold,
    /// Answer with Unsupported Request.
    Ur,
    /// Answer with Completer Abort.
    Ca,
}

pub struct Host {
    pub memory: Vec<u8>,
    pub policy: ReadPolicy,
    pub held: Vec<Tlp>,
    /// MWrs to the MSI address range: (address, data).
    pub interrupts: Vec<(u64, u32)>,
    pub messages: Vec<Tlp>,
    pub mrds: usize,
    pub max_mrd_len: u32,
    pub tags_seen: Vec<u16>,
}

/// The root-port side of the test.
pub struct RootComplex {
    pub to_bridge: mpsc::Sender<transports::link::LinkInput>,
    pub completions: mpsc::Receiver<Tlp>,
    pub host: Arc<Mutex<Host>>,
    pub link: LinkParams,
    tag: u16,
    rp: Arc<RootPortEnd>,
}

pub struct Setup {
    pub engine: Engine,
    pub rc: RootComplex,
    pub device: Arc<Mutex<Device>>,
}

/// Engine + device server + root complex on an in-memory wall-clock link.
pub async fn setup(config: EngineConfig) -> Setup {
    setup_with_clock(config, MemoryClock::Wall).await
}

/// Engine + device server + root complex on an in-memory link with the given clock.
pub async fn setup_with_clock(config: EngineConfig, clock: MemoryClock) -> Setup {
    let device = Device::new();
    let fd = spawn_server(device.clone());
    let (engine, rc) = setup_on(config, clock, fd).await;
    Setup { engine, rc, device }
}

/// Engine + root complex for a server already listening on `fd`'s peer.
pub async fn setup_on(config: EngineConfig, clock: MemoryClock, fd: OwnedFd) -> (Engine, RootComplex) {
    let (link, mut rp) = memory_pair(clock, 256);
    let engine = tokio::time::timeout(STEP, Engine::start(link, ServerEndpoint::Socket(fd), config))
        .await
        .expect("engine start hangs")
        .expect("engine start failed");
    let host = Arc::new(Mutex::new(Host {
        memory: (0..HOST_SIZE).map(|i| (i * 13 + 7) as u8).collect(),
        policy: ReadPolicy::InOrder,
        held: Vec::new(),
        interrupts: Vec::new(),
        messages: Vec::new(),
        mrds: 0,
        max_mrd_len: 0,
        tags_seen: Vec::new(),
    }));
    let (cpl_tx, completions) = mpsc::channel(4096);
    let from_bridge = std::mem::replace(&mut rp.from_bridge, mpsc::channel(1).1);
    let rp = Arc::new(rp);
    let link = LinkParams::new(128, 512, 64).unwrap();
    tokio::spawn(host_task(from_bridge, rp.clone(), host.clone(), cpl_tx, link));
    let rc = RootComplex { to_bridge: rp.to_bridge.clone(), completions, host, link, tag: 0, rp };
    (engine, rc)
}

async fn host_task(
    mut from_bridge: mpsc::Receiver<Vec<u8>>,
    rp: Arc<RootPortEnd>,
    host: Arc<Mutex<Host>>,
    completions: mpsc::Sender<Tlp>,
    link: LinkParams,
) {
    let mut batch: VecDeque<Tlp> = VecDeque::new();
    loop {
        let bytes = if batch.is_empty() {
            from_bridge.recv().await
        } else {
            match tokio::time::timeout(Duration::from_millis(2), from_bridge.recv()).await {
                Ok(b) => b,
                Err(_) => {
                    answer_interleaved(&rp, &host, std::mem::take(&mut batch), link).await;
                    continue;
                }
            }
        };
        let Some(bytes) = bytes else { return };
        let tlp = Tlp::parse(&bytes).expect("bridge sent an unparsable TLP");
        tlp.validate(&tlp::Limits::default()).expect("bridge sent an invalid TLP");
        match &tlp.body {
            Body::Memory(m) if m.op == MemOp::Read => {
                let policy = {
                    let mut h = host.lock().unwrap();
                    h.mrds += 1;
                    h.tags_seen.push(m.tag);
                    h.max_mrd_len = h.max_mrd_len.max(u32::from(tlp.length_dw()) * 4);
                    h.policy
                };
                match policy {
                    ReadPolicy::InOrder => answer(&rp, &host, &tlp, link).await,
                    ReadPolicy::Ur | ReadPolicy::Ca => {
                        let status = if policy == ReadPolicy::Ur { CplStatus::Ur } else { CplStatus::Ca };
                        let cpl = unsuccessful_completion(&tlp, RC_ID, status).unwrap();
                        rp.send_tlp(cpl.to_bytes()).await.unwrap();
                    }
                    ReadPolicy::Hold => host.lock().unwrap().held.push(tlp),
                    ReadPolicy::Interleaved => {
                        batch.push_back(tlp);
                        if batch.len() >= 8 {
                            answer_interleaved(&rp, &host, std::mem::take(&mut batch), link).await;
                        }
                    }
                }
            }
            Body::Memory(m) if m.op == MemOp::Write => {
                let mut h = host.lock().unwrap();
                if m.address & !0xfffff == MSI_ADDRESS {
                    let data = u32::from_le_bytes(tlp.payload[..4].try_into().unwrap());
                    h.interrupts.push((m.address, data));
                } else {
                    let read = MemoryRead {
                        echo: tlp::completion::RequestEcho {
                            requester: RC_ID,
                            tag: 0,
                            tc: 0,
                            attr: tlp::Attr::default(),
                        },
                        locked: false,
                        dw_address: m.address,
                        enables: tlp::byte_enable::ByteEnables {
                            first_be: m.first_be,
                            last_be: m.last_be,
                            length_dw: tlp.length_dw(),
                        },
                    };
                    for (address, len) in read.enabled_runs() {
                        let from = (address - m.address) as usize;
                        let at = (address - HOST_BASE) as usize;
                        h.memory[at..at + len as usize]
                            .copy_from_slice(&tlp.payload[from..from + len as usize]);
                    }
                }
            }
            Body::Message(_) => host.lock().unwrap().messages.push(tlp),
            _ => {
                let _ = completions.send(tlp).await;
            }
        }
    }
}

fn completions_for(host: &Arc<Mutex<Host>>, request: &Tlp, link: LinkParams) -> Vec<Tlp> {
    let read = MemoryRead::from_tlp(request).unwrap();
    let h = host.lock().unwrap();
    let start = (read.first_byte_address() - HOST_BASE) as usize;
    let data = h.memory[start..start + read.byte_count() as usize].to_vec();
    read_completions(&read, RC_ID, &data, &link).unwrap().collect()
}

async fn answer(rp: &RootPortEnd, host: &Arc<Mutex<Host>>, request: &Tlp, link: LinkParams) {
    for cpl in completions_for(host, request, link) {
        rp.send_tlp(cpl.to_bytes()).await.unwrap();
    }
}

async fn answer_interleaved(
    rp: &RootPortEnd,
    host: &Arc<Mutex<Host>>,
    batch: VecDeque<Tlp>,
    link: LinkParams,
) {
    let mut queues: Vec<VecDeque<Tlp>> =
        batch.iter().rev().map(|r| completions_for(host, r, link).into_iter().collect()).collect();
    while queues.iter().any(|q| !q.is_empty()) {
        for q in queues.iter_mut() {
            if let Some(cpl) = q.pop_front() {
                rp.send_tlp(cpl.to_bytes()).await.unwrap();
            }
        }
    }
}

impl RootComplex {
    /// Moves simulated time forward by `d` (simulated links only).
    pub fn advance(&self, d: Duration) {
        let driver = self.rp.sim_clock.as_ref().expect("not a simulated link");
        driver.advance_to(driver.now().saturating_add(d));
    }

    pub async fn send(&self, tlp: &Tlp) {
        self.rp.send_tlp(tlp.to_bytes()).await.unwrap();
    }

    pub async fn send_raw(&self, bytes: Vec<u8>) {
        self.rp.send_tlp(bytes).await.unwrap();
    }

    pub async fn event(&self, event: transports::link::LinkEvent) {
        self.rp.send_event(event).await.unwrap();
    }

    pub async fn next_completion(&mut self) -> Tlp {
        tokio::time::timeout(STEP, self.completions.recv()).await.expect("no completion in time").unwrap()
    }

    fn next_tag(&mut self) -> u16 {
        self.tag = (self.tag + 1) & 0xff;
        self.tag
    }

    pub fn config_request(
        &mut self,
        target: RoutingId,
        cfg_type: CfgType,
        register: u16,
        write: Option<u32>,
        be: u8,
    ) -> Tlp {
        let tag = self.next_tag();
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
                cfg_type,
                write: write.is_some(),
                requester: RC_ID,
                tag,
                first_be: be,
                last_be: 0,
                target,
                register,
            }),
            payload: write.map(|v| v.to_le_bytes().to_vec()).unwrap_or_default(),
            digest: None,
        }
    }

    /// CfgRd0 to 01:00.0; returns the completion.
    pub async fn cfg_read_cpl(&mut self, register: u16, be: u8) -> Tlp {
        let tlp = self.config_request(RoutingId::new(1, 0, 0), CfgType::Type0, register, None, be);
        self.send(&tlp).await;
        self.next_completion().await
    }

    pub async fn cfg_read(&mut self, register: u16) -> u32 {
        let cpl = self.cfg_read_cpl(register, 0xf).await;
        assert_eq!(status(&cpl), CplStatus::Sc, "{cpl}");
        u32::from_le_bytes(cpl.payload[..4].try_into().unwrap())
    }

    pub async fn cfg_write_be(&mut self, register: u16, value: u32, be: u8) -> Tlp {
        let tlp = self.config_request(RoutingId::new(1, 0, 0), CfgType::Type0, register, Some(value), be);
        self.send(&tlp).await;
        self.next_completion().await
    }

    pub async fn cfg_write(&mut self, register: u16, value: u32) {
        let cpl = self.cfg_write_be(register, value, 0xf).await;
        assert_eq!(status(&cpl), CplStatus::Sc, "{cpl}");
    }

    /// Reads IDs, sizes and assigns the BARs, enables memory space and bus mastering.
    pub async fn enumerate(&mut self) {
        assert_eq!(self.cfg_read(0).await, 0x1234_1af4);
        self.cfg_write(0x10, 0xffff_ffff).await;
        assert_eq!(self.cfg_read(0x10).await, !(BAR0_SIZE as u32 - 1));
        self.cfg_write(0x18, 0xffff_ffff).await;
        self.cfg_write(0x1c, 0xffff_ffff).await;
        let low = self.cfg_read(0x18).await;
        let high = self.cfg_read(0x1c).await;
        assert_eq!(((u64::from(high) << 32) | u64::from(low & !0xf)).wrapping_neg(), BAR2_SIZE);
        self.cfg_write(0x10, BAR0_ADDRESS as u32).await;
        self.cfg_write(0x18, BAR2_ADDRESS as u32).await;
        self.cfg_write(0x1c, (BAR2_ADDRESS >> 32) as u32).await;
        self.cfg_write(0x14, BAR1_IO_ADDRESS).await;
        self.cfg_write(0x04, 0x0007).await;
    }

    /// IORd (`data` None) or IOWr of one DW at `address` with `be`.
    pub fn io_request(&mut self, address: u32, be: u8, data: Option<[u8; 4]>) -> Tlp {
        let tag = self.next_tag();
        Tlp {
            prefixes: Vec::new(),
            tc: 0,
            attr: tlp::Attr::default(),
            ln: false,
            th: false,
            ep: false,
            at: 0,
            length: 1,
            body: Body::Io(tlp::IoRequest {
                write: data.is_some(),
                requester: RC_ID,
                tag,
                first_be: be,
                last_be: 0,
                address,
            }),
            payload: data.map(|d| d.to_vec()).unwrap_or_default(),
            digest: None,
        }
    }

    pub fn mem_read_tlp(&mut self, address: u64, len: u32) -> Tlp {
        let tag = self.next_tag();
        let fields = RequestFields { requester: RC_ID, tc: 0, attr: tlp::Attr::default() };
        memory_read_tlp(&fields, SplitChunk { address, len }, tag, 4096).unwrap()
    }

    /// MRd of `len` bytes; returns the data and the completions.
    pub async fn mem_read(&mut self, address: u64, len: u32) -> (Vec<u8>, Vec<Tlp>) {
        let request = self.mem_read_tlp(address, len);
        self.send(&request).await;
        let mut reassembly = ReadReassembly::for_request(&request).unwrap();
        let mut cpls = Vec::new();
        loop {
            let cpl = self.next_completion().await;
            cpls.push(cpl.clone());
            match reassembly.accept(&cpl) {
                Ok(tlp::completion::Progress::Done(data)) => return (data, cpls),
                Ok(_) => {}
                Err(e) => panic!("{e}: {cpl}"),
            }
        }
    }

    pub async fn mem_write(&mut self, address: u64, data: &[u8]) {
        let fields = RequestFields { requester: RC_ID, tc: 0, attr: tlp::Attr::default() };
        let tlp = memory_write_tlp(&fields, address, data, 4096).unwrap();
        self.send(&tlp).await;
    }

    /// Programs the device's DMA registers and rings the doorbell; returns the DMA errno.
    pub async fn device_dma(&mut self, op: u8, address: u64, len: u32) -> u32 {
        self.mem_write(BAR0_ADDRESS + REG_DMA_ADDR, &address.to_le_bytes()).await;
        self.mem_write(BAR0_ADDRESS + REG_DMA_LEN, &len.to_le_bytes()).await;
        self.mem_write(BAR0_ADDRESS + REG_DOORBELL, &[op, 0, 0, 0]).await;
        // The read is ordered after the doorbell write, which the server finishes (DMA included)
        // before it takes the read.
        let (errno, _) = self.mem_read(BAR0_ADDRESS + REG_DMA_ERRNO, 4).await;
        u32::from_le_bytes(errno.try_into().unwrap())
    }
}

pub fn status(cpl: &Tlp) -> CplStatus {
    match &cpl.body {
        Body::Completion(c) => c.status,
        _ => panic!("not a completion: {cpl}"),
    }
}

/// Waits until `check` holds (tests never assert on timing; this only bounds a hang).
pub async fn eventually(mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "condition not reached");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
