//! Capture from a running bridge: the engine between an in-memory root port and the sample
//! vfio-user device (`sim::device`), with `EngineConfig::capture` set. The file holds both sides
//! (TLPs in and out, vfio-user messages on both sockets), round-trips through `pcap show`, and
//! the Wireshark dissector agrees with `pcap show` on it.

#[path = "capture_support/temp.rs"]
mod temp;
#[path = "capture_support/tshark.rs"]
mod tshark;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bridge::capture::read::read_capture;
use bridge::capture::show::{Content, TlpRecord, analyze};
use bridge::capture::{Capture, CaptureConfig, Direction, LinkClockKind};
use bridge::engine::{Engine, EngineConfig, ServerEndpoint};
use serde_json::Value;
use sim::device::{DmaEngine, DmaEngineConfig, ServerConfig};
use tlp::split::{RequestFields, SplitChunk, memory_read_tlp, memory_write_tlp};
use tlp::{Body, CfgType, ConfigRequest, CplStatus, RoutingId, Tlp};
use transports::link::{MemoryClock, RootPortEnd, memory_pair};

const STEP: Duration = Duration::from_secs(10);
const RC: RoutingId = RoutingId::new(0, 0, 0);
const DEVICE: RoutingId = RoutingId::new(1, 0, 0);
const BAR0: u64 = 0x1000_0000;

struct RootPort {
    end: RootPortEnd,
    tag: u16,
}

impl RootPort {
    async fn send(&mut self, tlp: &Tlp) {
        self.end.send_tlp(tlp.to_bytes()).await.unwrap();
    }

    async fn next(&mut self) -> Tlp {
        let bytes =
            tokio::time::timeout(STEP, self.end.from_bridge.recv()).await.expect("bridge silent").unwrap();
        Tlp::parse(&bytes).unwrap()
    }

    fn tag(&mut self) -> u16 {
        self.tag = (self.tag + 1) % 256;
        self.tag
    }

    async fn cfg(&mut self, register: u16, write: Option<u32>) -> Tlp {
        let tag = self.tag();
        let tlp = Tlp {
            prefixes: Vec::new(),
            tc: 0,
            attr: tlp::Attr::default(),
            ln: false,
            th: false,
            ep: false,
            at: 0,
            length: 1,
            body: Body::Config(ConfigRequest {
                cfg_type: CfgType::Type0,
                write: write.is_some(),
                requester: RC,
                tag,
                first_be: 0xf,
                last_be: 0,
                target: DEVICE,
                register,
            }),
            payload: write.map(|v| v.to_le_bytes().to_vec()).unwrap_or_default(),
            digest: None,
        };
        self.send(&tlp).await;
        self.next().await
    }

    async fn write(&mut self, address: u64, data: &[u8]) {
        let fields = RequestFields { requester: RC, tc: 0, attr: tlp::Attr::default() };
        let tlp = memory_write_tlp(&fields, address, data, 4096).unwrap();
        self.send(&tlp).await;
    }

    async fn read32(&mut self, address: u64) -> u32 {
        let tag = self.tag();
        let fields = RequestFields { requester: RC, tc: 0, attr: tlp::Attr::default() };
        let tlp = memory_read_tlp(&fields, SplitChunk { address, len: 4 }, tag, 4096).unwrap();
        self.send(&tlp).await;
        let cpl = self.next().await;
        u32::from_le_bytes(cpl.payload[..4].try_into().unwrap())
    }
}

fn status(cpl: &Tlp) -> CplStatus {
    match &cpl.body {
        Body::Completion(c) => c.status,
        _ => panic!("not a completion: {cpl}"),
    }
}

/// Host memory for the device's DMA: byte i of the bus address space is `i as u8 ^ 0x5a`.
fn host_byte(address: u64) -> u8 {
    address as u8 ^ 0x5a
}

/// Runs a short workload through the bridge with capture on; returns the capture summary.
async fn run_bridge_with_capture(dir: &Path, capture_path: &Path) -> bridge::capture::CaptureSummary {
    let socket = dir.join("device.sock");
    let card = Arc::new(DmaEngine::new(DmaEngineConfig::default()).unwrap());
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_socket = socket.clone();
    let server = tokio::spawn(async move {
        sim::device::serve(&server_socket, card, ServerConfig::default(), async {
            let _ = stopped.await;
        })
        .await
    });

    let (capture, writer) = Capture::create(
        capture_path,
        CaptureConfig {
            link_kind: "memory".to_owned(),
            link_description: "in-memory test link".to_owned(),
            clock: LinkClockKind::Wall,
            ..CaptureConfig::default()
        },
    )
    .unwrap();
    let (link, end) = memory_pair(MemoryClock::Wall, 64);
    let config = EngineConfig {
        device_timeout: Some(Duration::from_secs(5)),
        capture: Some(capture.clone()),
        ..EngineConfig::default()
    };
    let engine = tokio::time::timeout(STEP, Engine::start(link, ServerEndpoint::Path(socket), config))
        .await
        .expect("engine start hangs")
        .expect("engine start");
    let mut rp = RootPort { end, tag: 0 };

    // Enumerate: IDs, BAR0, memory space and bus mastering.
    let id = rp.cfg(0x00, None).await;
    assert_eq!(id.payload, 0x7e57_1234u32.to_le_bytes());
    assert_eq!(status(&rp.cfg(0x10, Some(BAR0 as u32)).await), CplStatus::Sc);
    assert_eq!(status(&rp.cfg(0x04, Some(0x0006)).await), CplStatus::Sc);
    assert_eq!(rp.read32(BAR0).await, 0xd3a0_0001);
    rp.write(BAR0 + 0x30, &0x1234_5678u32.to_le_bytes()).await;
    assert_eq!(rp.read32(BAR0 + 0x30).await, 0x1234_5678);

    // A 64-byte copy: the device reads host memory (MRd out, CplD in) and writes it back (MWr).
    rp.write(BAR0 + 0x08, &0x4000u32.to_le_bytes()).await;
    rp.write(BAR0 + 0x10, &0x8000u32.to_le_bytes()).await;
    rp.write(BAR0 + 0x18, &64u32.to_le_bytes()).await;
    rp.write(BAR0 + 0x1c, &1u32.to_le_bytes()).await;
    let mut written = 0usize;
    while written < 64 {
        let tlp = rp.next().await;
        match &tlp.body {
            Body::Memory(m) if m.op == tlp::MemOp::Read => {
                let read = tlp::completion::MemoryRead::from_tlp(&tlp).unwrap();
                let start = read.first_byte_address();
                let data: Vec<u8> = (start..start + u64::from(read.byte_count())).map(host_byte).collect();
                let link = tlp::split::LinkParams::new(128, 512, 64).unwrap();
                let cpls: Vec<Tlp> =
                    tlp::completion::read_completions(&read, RC, &data, &link).unwrap().collect();
                for cpl in cpls {
                    rp.send(&cpl).await;
                }
            }
            Body::Memory(m) if m.op == tlp::MemOp::Write => {
                let expected: Vec<u8> =
                    (0x4000 + written as u64..).take(tlp.payload.len()).map(host_byte).collect();
                assert_eq!(m.address, 0x8000 + written as u64);
                assert_eq!(tlp.payload, expected);
                written += tlp.payload.len();
            }
            _ => {}
        }
    }
    // STATUS: DONE.
    let mut done = false;
    for _ in 0..100 {
        if rp.read32(BAR0 + 0x20).await & 0x2 != 0 {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(done, "the copy finished");
    // A malformed TLP (Length 2 with one DW of data): captured, flagged, dropped by the bridge.
    rp.end.send_tlp(vec![0x40, 0, 0, 2, 0, 0, 0, 0xff, 0x10, 0, 0, 0, 1, 2, 3, 4]).await.unwrap();
    // A poisoned MWr (EP set): captured, flagged poisoned, dropped by the bridge.
    let mut poisoned = Tlp::parse(&[0x40, 0, 0, 1, 0, 0, 0, 0x0f, 0x10, 0, 0, 0x40, 9, 9, 9, 9]).unwrap();
    poisoned.ep = true;
    rp.send(&poisoned).await;
    // A request to a function we are not: UR.
    let tag = rp.tag();
    let other_function = rp.cfg_tlp_for(RoutingId::new(1, 0, 3), tag);
    rp.send(&other_function).await;
    let ur = rp.next().await;
    assert_eq!(status(&ur), CplStatus::Ur);

    let _counters = engine.shutdown().await;
    let _ = stop_server.send(());
    let _ = tokio::time::timeout(STEP, server).await;
    drop(capture);
    writer.finish().unwrap()
}

impl RootPort {
    fn cfg_tlp_for(&self, target: RoutingId, tag: u16) -> Tlp {
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
                cfg_type: CfgType::Type0,
                write: false,
                requester: RC,
                tag,
                first_be: 0xf,
                last_be: 0,
                target,
                register: 0,
            }),
            payload: Vec::new(),
            digest: None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_bridge_captures_both_sides_and_pcap_show_matches_them() {
    let dir = temp::TempDir::new("engine");
    let path = dir.path().join("bridge.pcapng");
    let summary = run_bridge_with_capture(dir.path(), &path).await;
    assert_eq!(summary.dropped(), 0);

    let capture = read_capture(&path).unwrap();
    assert!(capture.truncated.is_none());
    assert_eq!(capture.dropped(), 0);
    assert_eq!(capture.interfaces.len(), 2);
    assert_eq!(capture.interfaces[0].linktype, 147);
    assert_eq!(capture.interfaces[0].tsresol, 9);
    assert_eq!(capture.interfaces[1].linktype, 148);
    // Interface names and descriptions say what each one is.
    assert_eq!(capture.interfaces[0].name.as_deref(), Some("tlp-memory"));
    let description = capture.interfaces[0].description.as_deref().unwrap_or_default();
    assert!(
        description.contains("in-memory test link") && description.contains("wall clock"),
        "{description}"
    );
    assert_eq!(capture.interfaces[1].name.as_deref(), Some("vfio-user"));
    assert!(
        capture.interfaces[1].description.as_deref().unwrap_or_default().contains("main and twin sockets")
    );
    assert_eq!(
        capture.records.len() as u64,
        summary.tlp_records + summary.vfio_user_records,
        "every record written is read back"
    );
    let records = analyze(&capture.records);
    let tlps: Vec<(&TlpRecord, Option<Direction>, Option<u64>)> = records
        .iter()
        .filter_map(|r| match &r.content {
            Content::Tlp(t) => Some((t, r.direction, r.request_record)),
            _ => None,
        })
        .collect();
    let kind = |t: &TlpRecord| t.tlp.as_ref().map(|t| t.kind_name()).unwrap_or("?");
    let count =
        |k: &str, d: Direction| tlps.iter().filter(|(t, dir, _)| kind(t) == k && *dir == Some(d)).count();
    assert_eq!(count("CfgRd0", Direction::Inbound), 2);
    assert_eq!(count("CfgWr0", Direction::Inbound), 2);
    assert!(count("MRd", Direction::Inbound) >= 3);
    assert!(count("MWr", Direction::Inbound) >= 5);
    assert!(count("MRd", Direction::Outbound) >= 1, "the device's DMA read");
    assert!(count("CplD", Direction::Inbound) >= 1, "the host's completions");
    assert!(count("MWr", Direction::Outbound) >= 1, "the device's DMA write");
    // Every completion the bridge sent answers a request the root port sent, and vice versa.
    for (t, dir, request) in &tlps {
        if matches!(t.tlp.as_ref().map(|t| &t.body), Ok(Body::Completion(_))) {
            let request = request.unwrap_or_else(|| panic!("unmatched completion {:?}", t.tlp));
            let req = records.iter().find(|r| r.raw_number == request).unwrap();
            assert_eq!(req.direction, dir.map(Direction::opposite));
        }
    }
    let malformed: Vec<_> = tlps
        .iter()
        .filter(
            |(t, _, _)| matches!(t.source, bridge::capture::show::TlpSource::Bridge(h) if h.flags.malformed),
        )
        .collect();
    assert_eq!(malformed.len(), 1);
    assert!(malformed[0].0.tlp.is_err());
    let poisoned: Vec<_> = tlps
        .iter()
        .filter(
            |(t, _, _)| matches!(t.source, bridge::capture::show::TlpSource::Bridge(h) if h.flags.poisoned),
        )
        .collect();
    assert_eq!(poisoned.len(), 1);
    assert!(poisoned[0].0.tlp.as_ref().is_ok_and(|t| t.ep && t.kind_name() == "MWr"));
    // Both sides of the vfio-user conversation, VERSION first, DMA on the twin socket.
    let vfio: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.content {
            Content::VfioUser(v) => Some((v, r.request_record)),
            _ => None,
        })
        .collect();
    let first = vfio.first().unwrap().0.message.as_ref().unwrap();
    assert_eq!(first.header.command, transports::vfio_user::Command::Version);
    assert!(
        vfio.iter()
            .any(|(v, reply_to)| v.header.socket == bridge::capture::VfioSocket::Twin && reply_to.is_some())
    );
    assert!(vfio.iter().any(|(v, _)| v.header.direction == Direction::Inbound));
    assert!(vfio.iter().any(|(v, _)| v.header.direction == Direction::Outbound));

    // The command line shows the same records, and the dissector agrees with it.
    let bin = Path::new(env!("CARGO_BIN_EXE_tlpbridge"));
    let shown = tshark::show_json(bin, &path);
    assert_eq!(shown.len(), records.len());
    assert!(shown.iter().all(|r| r["kind"] != Value::Null || r["interface"] == "tlp"));
    if let Some(tshark_bin) = tshark::tshark_or_skip("a_running_bridge_captures_both_sides (dissector part)")
    {
        let (_, compared) = tshark::assert_dissector_agrees(&tshark_bin, bin, &path);
        assert!(compared > 200, "only {compared} values compared");
    }
}
