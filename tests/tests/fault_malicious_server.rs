//! A malicious vfio-user server behind `tlpbridge run` (docs/reliability.md). The server is a
//! thread of this test speaking vfio-user by hand; the root port is the reference root complex
//! over the sim link. Each scenario is started by a posted write of its number to the device's
//! doorbell (BAR0 + 0x1c):
//!
//! - 1: DMA outside every window, refused with EFAULT;
//! - 2: DMA above the advertised maximum, refused with E2BIG;
//! - 3: DMA with Bus Master Enable clear, refused with EPERM (served once it is set again);
//! - 4: a burst of 64 DMA requests, all served, while the root port keeps being served;
//! - 5: a reply to a message id never sent: counted, logged and dropped (the framing is
//!   intact), the root port keeps being served;
//! - 6: a DMA_WRITE whose count disagrees with its data: a protocol violation the client does
//!   not survive (the connection is dropped, pending requests fail with CA, and without
//!   reconnection the bridge exits with status 1);
//! - 7: a flood of 1000 DMA requests written back to back by a server that reads nothing until
//!   it is done (no twin socket): all served;
//! - 8: a flood of 3000 such requests: each answered exactly once, served or refused with
//!   EBUSY once the client's DMA queue (1024) is full.

mod e2e_common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sim::link::{SimulatorConfig, SimulatorEnd};
use sim::rc::{RcConfig, RootComplex};
use tlpbridge_tests::{Running, free_port, spawn_logged};
use transports::vfio_user::wire::{
    Command as Cmd, DmaAccessRepr, HEADER_LEN, Header, HeaderRepr, MessageType, RegionAccessRepr,
    RegionInfoRepr, VersionRepr, encode_message,
};

/// What the server saw: the client's answers to its DMA requests, by id.
#[derive(Default)]
struct ServerLog {
    /// id → errno (None: success) and the reply's payload length.
    dma_replies: HashMap<u16, (Option<u32>, usize)>,
    doorbells: Vec<u32>,
}

const BAR0_SIZE: usize = 0x1000;
const DOORBELL: u64 = 0x1c;
const OUTSIDE_WINDOW: u64 = 0x4000_0000;
/// DMA requests sent back to back by scenario 4 (a burst) and scenario 7 (a flood).
const BURST: u16 = 64;
const FLOOD: u16 = 1000;
const BIG_FLOOD: u16 = 3000;
const VERSION_JSON: &str = r#"{"capabilities":{"max_data_xfer_size":4096,"max_msg_fds":8}}"#;

struct Device {
    config: [u8; 256],
    bar0: Vec<u8>,
    next_id: u16,
}

impl Device {
    fn new() -> Device {
        let mut config = [0u8; 256];
        config[0..2].copy_from_slice(&0x1234u16.to_le_bytes());
        config[2..4].copy_from_slice(&0xbad0u16.to_le_bytes());
        config[8] = 1; // revision
        config[9..12].copy_from_slice(&[0x00, 0x80, 0x08]); // class 0x088000
        Device { config, bar0: vec![0; BAR0_SIZE], next_id: 0x100 }
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            let at = offset + i;
            let writable = match at {
                0x04 => 0x46,
                0x05 => 0x01,
                0x11 => 0xf0, // BAR0: 4 KiB, address bits 31:12
                0x12 | 0x13 => 0xff,
                _ => 0,
            };
            if let Some(slot) = self.config.get_mut(at) {
                *slot = (*slot & !writable) | (byte & writable);
            }
        }
    }
}

fn read_message(socket: &mut UnixStream) -> Option<(HeaderRepr, Vec<u8>)> {
    let mut header = [0u8; HEADER_LEN];
    socket.read_exact(&mut header).ok()?;
    let header = HeaderRepr::parse(&Header::new_checked(&header[..]).unwrap()).unwrap();
    let mut payload = vec![0u8; header.payload_len()];
    socket.read_exact(&mut payload).ok()?;
    Some((header, payload))
}

fn reply(socket: &mut UnixStream, request: &HeaderRepr, payload: &[u8]) {
    if !request.no_reply {
        let bytes =
            encode_message(request.id, request.command, MessageType::Reply, false, None, payload).unwrap();
        let _ = socket.write_all(&bytes);
    }
}

fn command(socket: &mut UnixStream, device: &mut Device, command: Cmd, payload: &[u8]) -> u16 {
    let id = device.next_id;
    device.next_id = device.next_id.wrapping_add(1);
    let bytes = encode_message(id, command, MessageType::Command, false, None, payload).unwrap();
    let _ = socket.write_all(&bytes);
    id
}

fn dma_read(socket: &mut UnixStream, device: &mut Device, address: u64, count: u64) -> u16 {
    command(socket, device, Cmd::DmaRead, &DmaAccessRepr { address, count }.to_bytes_with(&[]))
}

/// Runs the misbehaviour a doorbell value names.
fn misbehave(socket: &mut UnixStream, device: &mut Device, scenario: u32) {
    match scenario {
        1 => {
            dma_read(socket, device, OUTSIDE_WINDOW, 4);
        }
        2 => {
            dma_read(socket, device, 0x1000, 2 << 20);
        }
        3 => {
            dma_read(socket, device, 0x1000, 4);
        }
        4 | 7 | 8 => {
            let count = match scenario {
                4 => BURST,
                7 => FLOOD,
                _ => BIG_FLOOD,
            };
            for _ in 0..count {
                dma_read(socket, device, 0x1000, 4);
            }
        }
        5 => {
            let bogus =
                encode_message(0x7777, Cmd::RegionRead, MessageType::Reply, false, None, &[0; 20]).unwrap();
            let _ = socket.write_all(&bogus);
        }
        6 => {
            let access = DmaAccessRepr { address: 0x1000, count: 64 }.to_bytes_with(&[1, 2, 3]);
            command(socket, device, Cmd::DmaWrite, &access);
        }
        _ => {}
    }
}

fn serve(listener: UnixListener, log: Arc<Mutex<ServerLog>>) {
    let Ok((mut socket, _)) = listener.accept() else { return };
    let mut device = Device::new();
    while let Some((header, payload)) = read_message(&mut socket) {
        if header.message_type == MessageType::Reply {
            log.lock().unwrap().dma_replies.insert(header.id, (header.error, payload.len()));
            continue;
        }
        let u32_at = |at: usize| u32::from_le_bytes(payload[at..at + 4].try_into().unwrap());
        match header.command {
            Cmd::Version => {
                let version = VersionRepr { major: 0, minor: 1, json: Some(VERSION_JSON.to_owned()) };
                reply(&mut socket, &header, &version.to_bytes());
            }
            Cmd::DeviceGetInfo => {
                // argsz 16, flags PCI | RESET, 9 regions, no interrupts.
                let info: Vec<u8> = [16u32, 3, 9, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
                reply(&mut socket, &header, &info);
            }
            Cmd::DeviceGetRegionInfo => {
                let index = u32_at(8);
                let size = match index {
                    0 => BAR0_SIZE as u64,
                    7 => 256,
                    _ => 0,
                };
                let flags = if size > 0 { 3 } else { 0 };
                let info = RegionInfoRepr { argsz: 32, flags, index, cap_offset: 0, size, offset: 0 };
                reply(&mut socket, &header, &info.to_bytes());
            }
            Cmd::RegionRead | Cmd::RegionWrite => {
                let access = RegionAccessRepr {
                    offset: u64::from_le_bytes(payload[0..8].try_into().unwrap()),
                    region: u32_at(8),
                    count: u32_at(12),
                };
                let (at, len) = (access.offset as usize, access.count as usize);
                let space: &mut [u8] = if access.region == 7 { &mut device.config } else { &mut device.bar0 };
                if at + len > space.len() {
                    let bytes =
                        encode_message(header.id, header.command, MessageType::Reply, false, Some(22), &[])
                            .unwrap();
                    let _ = socket.write_all(&bytes);
                    continue;
                }
                if header.command == Cmd::RegionRead {
                    let data = space[at..at + len].to_vec();
                    reply(&mut socket, &header, &access.to_bytes_with(&data));
                    continue;
                }
                let data = &payload[16..];
                if access.region == 7 {
                    device.config_write(at, data);
                } else {
                    device.bar0[at..at + len].copy_from_slice(data);
                }
                reply(&mut socket, &header, &access.to_bytes_with(&[]));
                if access.region == 0 && access.offset == DOORBELL && len == 4 {
                    let scenario = u32::from_le_bytes(data.try_into().unwrap());
                    log.lock().unwrap().doorbells.push(scenario);
                    misbehave(&mut socket, &mut device, scenario);
                }
            }
            // DMA_MAP, SET_IRQS, DEVICE_RESET: accepted, empty reply.
            _ => reply(&mut socket, &header, &[]),
        }
    }
}

struct Bench {
    bridge: Running,
    bridge_log: PathBuf,
    rc: RootComplex<SimulatorEnd>,
    bar0: u64,
    log: Arc<Mutex<ServerLog>>,
    _dir: tlpbridge_tests::TestDir,
}

impl Bench {
    async fn start(name: &str) -> Bench {
        let bin = tlpbridge_tests::tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
        let dir = tlpbridge_tests::TestDir::new(name).unwrap_or_else(|e| panic!("{e}"));
        let socket = dir.socket_path("evil.sock").unwrap_or_else(|e| panic!("{e}"));
        let listener = UnixListener::bind(&socket).unwrap();
        let log = Arc::new(Mutex::new(ServerLog::default()));
        let server_log = log.clone();
        std::thread::spawn(move || serve(listener, server_log));
        let port = free_port().unwrap();
        let bridge_log = dir.join("run.log");
        let link = format!("sim-listen://127.0.0.1:{port}");
        let bridge = spawn_logged(
            &bin,
            &[
                "run",
                "--server",
                socket.to_str().unwrap(),
                "--link",
                &link,
                // The scripted server serves one connection: nothing to reconnect to.
                "--dma-window",
                "0:1M",
                "--device-timeout",
                "2s",
                "--no-reconnect",
            ],
            &[],
            &bridge_log,
        )
        .unwrap();
        let config = SimulatorConfig::default();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let end = loop {
            // The bridge listens once it has read the device; until then connecting fails.
            match SimulatorEnd::connect(&format!("127.0.0.1:{port}"), &config).await {
                Ok(end) => break end,
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "no bridge on port {port}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let rc_config = RcConfig {
            completion_timeout: 1 << 40,
            pace: Some(Duration::from_micros(10)),
            ..RcConfig::default()
        };
        let mut rc = RootComplex::new(end, rc_config).unwrap();
        let enumeration = e2e_common::enumerate_past_crs(&mut rc, &bridge_log).await;
        let bar0 = enumeration.bars.iter().find(|b| b.slot == 0).unwrap().address;
        Bench { bridge, bridge_log, rc, bar0, log, _dir: dir }
    }

    fn bridge_log(&self) -> String {
        std::fs::read_to_string(&self.bridge_log).unwrap_or_default()
    }

    async fn doorbell(&mut self, scenario: u32) {
        self.rc.mem_write(self.bar0 + DOORBELL, &scenario.to_le_bytes()).await.unwrap();
    }

    /// Moves simulated time on (so the root complex answers the bridge's DMA reads) until the
    /// server has `count` DMA replies.
    async fn wait_replies(&mut self, count: usize) {
        for _ in 0..200_000 {
            if self.log.lock().unwrap().dma_replies.len() >= count {
                return;
            }
            let until = self.rc.now() + 1000;
            self.rc.sleep_until(until).await.unwrap();
        }
        panic!(
            "{} of {count} DMA replies\n{}",
            self.log.lock().unwrap().dma_replies.len(),
            self.bridge_log()
        );
    }

    fn replies(&self) -> Vec<(u16, Option<u32>, usize)> {
        let log = self.log.lock().unwrap();
        let mut all: Vec<_> = log.dma_replies.iter().map(|(id, (e, len))| (*id, *e, *len)).collect();
        all.sort();
        all
    }

    /// The root port is still served: a BAR0 write reads back.
    async fn still_serving(&mut self, value: u32) {
        let at = self.bar0 + 0x40;
        self.rc.mem_write(at, &value.to_le_bytes()).await.unwrap();
        let back = self
            .rc
            .mem_read(at, 4)
            .await
            .unwrap_or_else(|e| panic!("still_serving({value}): {e}\n{}", self.bridge_log()));
        assert_eq!(back, value.to_le_bytes());
    }
}

const EFAULT: u32 = 14;
const E2BIG: u32 = 7;
const EPERM: u32 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dma_is_refused_a_dma_flood_is_served_and_the_root_port_keeps_being_served() {
    let mut bench = Bench::start("fault-evil-dma").await;
    bench.rc.memory_mut().write(0x1000, &[0xde, 0xad, 0xbe, 0xef]);

    bench.doorbell(1).await;
    bench.wait_replies(1).await;
    assert_eq!(bench.replies()[0].1, Some(EFAULT), "DMA outside the windows");
    bench.still_serving(1).await;

    bench.doorbell(2).await;
    bench.wait_replies(2).await;
    assert_eq!(bench.replies()[1].1, Some(E2BIG), "DMA above max_data_xfer_size");
    bench.still_serving(2).await;

    // Memory decode on, Bus Master Enable off.
    bench.rc.config_write(0x04, 2, 0x0002).await.unwrap();
    bench.doorbell(3).await;
    bench.wait_replies(3).await;
    assert_eq!(bench.replies()[2].1, Some(EPERM), "DMA with Bus Master Enable clear");
    bench.rc.config_write(0x04, 2, 0x0006).await.unwrap();
    bench.doorbell(3).await;
    bench.wait_replies(4).await;
    assert_eq!(bench.replies()[3].1, None, "DMA once Bus Master Enable is set again");
    assert_eq!(bench.replies()[3].2, 16 + 4, "the reply carries the 4 bytes read");

    bench.doorbell(4).await;
    // Without a twin socket the client holds its commands while the server's DMA is unanswered
    // (docs/design.md §4): a read during the flood may wait out the device timeout and get CA.
    // It is answered either way, and never with wrong data.
    match bench.rc.mem_read(bench.bar0 + 0x40, 4).await {
        Ok(data) => assert_eq!(data, 2u32.to_le_bytes()),
        Err(e) => assert!(e.to_string().contains("status CA"), "{e}"),
    }
    bench.wait_replies(4 + usize::from(BURST)).await;
    let flood = &bench.replies()[4..];
    assert_eq!(flood.len(), usize::from(BURST));
    assert!(flood.iter().all(|(_, errno, len)| errno.is_none() && *len == 20), "every flooded DMA served");
    bench.still_serving(4).await;
    assert!(bench.bridge.0.try_wait().unwrap().is_none(), "{}", bench.bridge_log());
}

async fn violation_ends_the_connection(name: &str, scenario: u32, why: &str) {
    let mut bench = Bench::start(name).await;
    bench.still_serving(1).await;
    bench.doorbell(scenario).await;
    // A read right behind it: answered (CA once the connection is dropped), never left hanging.
    let read = bench.rc.mem_read(bench.bar0 + 0x40, 4).await;
    if let Ok(data) = &read {
        assert_eq!(data, &1u32.to_le_bytes(), "stale or corrupt data");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = bench.bridge.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the bridge kept running:\n{}", bench.bridge_log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(1), "{}", bench.bridge_log());
    let log = bench.bridge_log();
    assert!(log.contains(why), "the bridge log does not say {why:?}:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_an_id_never_sent_is_dropped_and_the_root_port_is_still_served() {
    let mut bench = Bench::start("fault-evil-id").await;
    bench.still_serving(1).await;
    bench.doorbell(5).await;
    bench.still_serving(2).await;
    bench.still_serving(3).await;
    let log = bench.bridge_log();
    assert!(log.contains("reply to a message id never sent dropped"), "{log}");
    assert!(log.contains("30583"), "the log names the bogus id 0x7777:\n{log}");
    assert!(bench.bridge.0.try_wait().unwrap().is_none(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dma_write_whose_count_disagrees_with_its_data_drops_the_server() {
    violation_ends_the_connection("fault-evil-count", 6, "DMA_WRITE count 64 but 3 data bytes").await;
}

/// A flood of 1000 back-to-back DMA_READs from a server without a twin socket that reads
/// nothing until it has written them all. (This used to stall: the client stopped reading once
/// its replies backed up behind the server's full socket, while the server was blocked writing
/// commands only the client's reader could take.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dma_flood_from_a_single_socket_server_is_served() {
    let mut bench = Bench::start("fault-evil-flood").await;
    bench.doorbell(7).await;
    bench.wait_replies(usize::from(FLOOD)).await;
    let replies = bench.replies();
    assert_eq!(replies.len(), usize::from(FLOOD));
    assert!(replies.iter().all(|(_, errno, len)| errno.is_none() && *len == 20));
    bench.still_serving(5).await;
    assert!(bench.bridge.0.try_wait().unwrap().is_none(), "{}", bench.bridge_log());
}

/// A flood beyond the client's DMA queue: every request is answered exactly once, served or
/// refused with EBUSY (counted and logged), and the root port is served afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dma_flood_beyond_the_queue_is_served_or_refused_once_each() {
    const EBUSY: u32 = 16;
    let mut bench = Bench::start("fault-evil-big-flood").await;
    bench.doorbell(8).await;
    bench.wait_replies(usize::from(BIG_FLOOD)).await;
    let replies = bench.replies();
    assert_eq!(replies.len(), usize::from(BIG_FLOOD), "one reply per request id");
    let refused = replies.iter().filter(|(_, errno, _)| *errno == Some(EBUSY)).count();
    assert!(
        replies
            .iter()
            .all(|(_, errno, len)| (errno.is_none() && *len == 20) || (*errno == Some(EBUSY) && *len == 0)),
        "served or refused with EBUSY"
    );
    bench.still_serving(6).await;
    let log = bench.bridge_log();
    assert!(bench.bridge.0.try_wait().unwrap().is_none(), "{log}");
    assert_eq!(refused > 0, log.contains("server DMA refused with EBUSY"), "{refused} refused:\n{log}");
}
