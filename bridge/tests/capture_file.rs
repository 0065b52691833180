//! The capture file itself: drop accounting when the writer falls behind, files left by a killed
//! writer, `pcap show` filters and output, and NetTLP traces.

#[path = "capture_support/temp.rs"]
mod temp;

use std::borrow::Cow;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bridge::capture::read::read_capture;
use bridge::capture::{Capture, CaptureConfig, Direction, TlpFlags};
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use serde_json::{Value, json};
use transports::link::LinkInstant;

const MRD: &str = "000000010100120f00001000";
const CPLD: &str = "4a0000010000000401001200deadbeef";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tlpbridge"))
}

fn tlpbridge(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn json_lines(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn hex(text: &str) -> Vec<u8> {
    tlp::json::hex_to_bytes(text).unwrap()
}

#[test]
fn a_writer_that_falls_behind_drops_and_counts_instead_of_blocking() {
    let dir = temp::TempDir::new("drops");
    let path = dir.path().join("drops.pcapng");
    let config = CaptureConfig { queue_depth: 1, ..CaptureConfig::default() };
    let (handle, writer) = Capture::create(&path, config).unwrap();
    let offered = 20_000u64;
    for i in 0..offered {
        handle.tlp(Direction::Inbound, LinkInstant(i), TlpFlags::default(), &hex(MRD));
    }
    let dropped = handle.dropped();
    assert!(dropped > 0, "a 1-deep queue must overflow with {offered} records offered at once");
    drop(handle);
    let summary = writer.finish().unwrap();
    assert_eq!(summary.tlp_dropped, dropped);
    assert_eq!(summary.tlp_records + summary.tlp_dropped, offered);

    let capture = read_capture(&path).unwrap();
    assert_eq!(capture.records.len() as u64, summary.tlp_records);
    // isb_ifdrop carries the total; epb_dropcount on records carries the drops before each.
    assert_eq!(capture.interface_drops, vec![(0, dropped), (1, 0)]);
    let per_record: u64 = capture.records.iter().filter_map(|r| r.drop_count).sum();
    assert!(per_record <= dropped && per_record > 0);
    let out = tlpbridge(&["pcap", "show", path.to_str().unwrap()], "");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("lost {dropped} records")));
}

/// Records written so far, per a reader of the file as it is on disk now.
fn records_on_disk(path: &Path) -> usize {
    read_capture(path).map_or(0, |c| c.records.len())
}

fn wait_for_records(path: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while records_on_disk(path) < n {
        assert!(Instant::now() < deadline, "{n} records never reached {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_capture_from_a_killed_process_opens_with_every_record_it_had_written() {
    let dir = temp::TempDir::new("kill");
    let path = dir.path().join("killed.pcapng");
    let mut child = Command::new(bin())
        .args(["pcap", "write"])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for (i, bytes) in [MRD, CPLD, MRD].iter().enumerate() {
        let line = json!({"interface": "tlp", "direction": "in", "link_time_ps": i, "bytes": bytes});
        writeln!(stdin, "{line}").unwrap();
    }
    stdin.flush().unwrap();
    // The writer flushes whenever its queue runs empty: all three reach the file while the
    // process still runs, without any finish.
    wait_for_records(&path, 3);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(stdin);

    let capture = read_capture(&path).unwrap();
    assert_eq!(capture.records.len(), 3);
    let shown = json_lines(&tlpbridge(&["pcap", "show", "--json", path.to_str().unwrap()], ""));
    assert_eq!(shown.iter().map(|r| r["kind"].as_str().unwrap()).collect::<Vec<_>>(), ["MRd", "CplD", "MRd"]);
}

#[test]
fn a_file_cut_inside_a_block_shows_the_whole_records_before_the_cut() {
    let dir = temp::TempDir::new("cut");
    let path = dir.path().join("cut.pcapng");
    let (handle, writer) = Capture::create(&path, CaptureConfig::default()).unwrap();
    for i in 0..5 {
        handle.tlp(Direction::Outbound, LinkInstant(i), TlpFlags::default(), &hex(CPLD));
    }
    drop(handle);
    writer.finish().unwrap();
    let full = std::fs::read(&path).unwrap();
    let complete = read_capture(&path).unwrap();
    assert_eq!(complete.records.len(), 5);
    // Cut 10 bytes into the fourth record's block: three whole records remain.
    let fourth =
        full.windows(4).enumerate().filter(|(_, w)| *w == [6, 0, 0, 0]).map(|(i, _)| i).nth(3).unwrap();
    std::fs::write(&path, &full[..fourth + 10]).unwrap();
    let cut = read_capture(&path).unwrap();
    assert_eq!(cut.records.len(), 3);
    assert!(cut.truncated.is_some());
    let out = tlpbridge(&["pcap", "show", path.to_str().unwrap()], "");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ends inside a block"), "{stderr}");
}

fn sample_capture(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("sample.pcapng");
    let lines = [
        json!({"interface": "tlp", "direction": "in", "link_time_ps": 1_000_000, "bytes": MRD}),
        json!({"interface": "tlp", "direction": "out", "link_time_ps": 1_750_000, "bytes": CPLD}),
        // MWr 4DW to 0x1_0000_2000 from 02:00.0, tag 0x34.
        json!({"interface": "tlp", "direction": "out", "link_time_ps": 2_000_000,
            "bytes": "60000001 020034 0f 00000001 00002000 01020304"}),
        json!({"interface": "vfio-user", "direction": "out", "socket": "main",
            "bytes": "0200090020000000000000000000000010000000000000000700000004000000"}),
        json!({"interface": "vfio-user", "direction": "in", "socket": "main",
            "bytes": "02000900200000000100000000000000100000000000000007000000040000000a0b0c0d"}),
        json!({"interface": "tlp", "direction": "in", "flags": ["malformed"], "bytes": "ff000001"}),
    ];
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let out = tlpbridge(&["pcap", "write", path.to_str().unwrap()], &input);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    path
}

#[test]
fn show_prints_one_line_per_record_with_matches_and_flags() {
    let dir = temp::TempDir::new("lines");
    let path = sample_capture(dir.path());
    let out = tlpbridge(&["pcap", "show", path.to_str().unwrap()], "");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6);
    // "     1    0.000000000 tlp       -> MRd32 ..."; times are relative to the first record.
    assert!(
        lines[0].starts_with("     1    0.000000000 tlp       -> MRd32 01:00.0 tag=0x12 addr=0x1000"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("<- CplD 00:00.0→01:00.0 tag=0x12 SC bc=4")
            && lines[1].ends_with("[reply to #1, 750 ns]"),
        "{}",
        lines[1]
    );
    assert!(lines[3].contains("vfio-user <- main REGION_READ Command id=2"), "{}", lines[3]);
    assert!(
        lines[4].contains("-> main REGION_READ Reply id=2") && lines[4].contains("[reply to #4,"),
        "{}",
        lines[4]
    );
    assert!(lines[5].contains("-> [malformed] not a TLP"), "{}", lines[5]);
}

#[test]
fn show_json_round_trips_through_pcap_write() {
    let dir = temp::TempDir::new("roundtrip");
    let path = sample_capture(dir.path());
    let first = json_lines(&tlpbridge(&["pcap", "show", "--json", path.to_str().unwrap()], ""));
    let input: String = first.iter().map(|r| format!("{r}\n")).collect();
    let copy = dir.path().join("copy.pcapng");
    let out = tlpbridge(&["pcap", "write", copy.to_str().unwrap()], &input);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second = json_lines(&tlpbridge(&["pcap", "show", "--json", copy.to_str().unwrap()], ""));
    let strip = |records: &[Value]| -> Vec<Value> {
        records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                let o = r.as_object_mut().unwrap();
                // Capture times (and the vfio-user latency derived from them) are the writer's.
                o.remove("time_ns");
                if o["interface"] == "vfio-user" {
                    o.remove("latency_ns");
                }
                r
            })
            .collect()
    };
    assert_eq!(strip(&first), strip(&second));
    assert_eq!(first[1]["request_record"], 1);
    assert_eq!(first[1]["latency_ns"], 750);
    assert_eq!(first[1]["tlp"]["status"], "SC");
    assert_eq!(first[5]["flags"], json!(["malformed"]));
    assert!(first[5]["error"].is_string());
    assert_eq!(first[4]["vfio_user"]["type"], "reply");
    assert_eq!(first[4]["request_record"], 4);
}

#[test]
fn filters_select_by_kind_requester_tag_address_direction_and_interface() {
    let dir = temp::TempDir::new("filter");
    let path = sample_capture(dir.path());
    let records = |filter: &str| -> Vec<u64> {
        json_lines(&tlpbridge(&["pcap", "show", "--json", "--filter", filter, path.to_str().unwrap()], ""))
            .iter()
            .map(|r| r["record"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(records("kind=MRd,CplD"), [1, 2]);
    assert_eq!(records("kind=region_read"), [4, 5]);
    assert_eq!(records("requester=02:00.0"), [3]);
    assert_eq!(records("tag=0x12"), [1, 2]);
    assert_eq!(records("tag=52"), [3]);
    // A completion passes an address filter through the request it answers.
    assert_eq!(records("addr=0x1000-0x1fff"), [1, 2]);
    assert_eq!(records("addr=0x100002000"), [3]);
    assert_eq!(records("dir=out iface=tlp"), [2, 3]);
    assert_eq!(records("iface=vfio-user dir=in"), [5]);
    assert_eq!(records("kind=MRd dir=out"), Vec::<u64>::new());
    for bad in ["kind", "tag=0x400", "addr=5-1", "color=red", "dir=up"] {
        let out = tlpbridge(&["pcap", "show", "--filter", bad, path.to_str().unwrap()], "");
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid filter"), "{bad}");
    }
}

#[test]
fn bad_input_exits_2_with_the_reason() {
    let dir = temp::TempDir::new("bad");
    let not_capture = dir.path().join("text.pcapng");
    std::fs::write(&not_capture, "hello, this is not a capture").unwrap();
    let out = tlpbridge(&["pcap", "show", not_capture.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a pcap or pcapng file"));
    let missing = dir.path().join("missing.pcapng");
    let out = tlpbridge(&["pcap", "show", missing.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    let out = tlpbridge(
        &["pcap", "write", dir.path().join("w.pcapng").to_str().unwrap()],
        "{\"interface\":\"tlp\",\"direction\":\"sideways\",\"bytes\":\"00\"}\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stdin line 1: direction \"sideways\""));
}

/// One Ethernet/IPv4/UDP frame carrying a NetTLP header and a TLP.
fn nettlp_frame(src_port: u16, dst_port: u16, seq: u16, tstamp: u32, tlp: &[u8]) -> Vec<u8> {
    let udp_len = 8 + 6 + tlp.len();
    let mut f = Vec::new();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0, 0, 0]);
    let ip_len = (20 + udp_len) as u16;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 192, 168, 10, 1, 192, 168, 10, 3]);
    f.extend_from_slice(&src_port.to_be_bytes());
    f.extend_from_slice(&dst_port.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&tstamp.to_be_bytes());
    f.extend_from_slice(tlp);
    f
}

#[test]
fn nettlp_traces_are_decoded_and_matched_with_latency_from_the_adapter_clock() {
    // Synthesized for this test (no real NetTLP trace is shipped): an MRd from the NetTLP
    // adapter to LibTLP's port 0x3000 + tag, its CplD back, and an unrelated DNS packet.
    let dir = temp::TempDir::new("nettlp");
    let path = dir.path().join("nettlp.pcap");
    let header = PcapHeader { datalink: DataLink::ETHERNET, ..PcapHeader::default() };
    let mut writer = PcapWriter::with_header(std::fs::File::create(&path).unwrap(), header).unwrap();
    let frames = [
        nettlp_frame(0x3002, 0x3002, 7, 1_000, &hex("000000010100020f00001000")),
        nettlp_frame(0x3002, 0x3002, 8, 1_025, &hex("4a000001 00000004 01000200 deadbeef")),
        nettlp_frame(5353, 53, 0, 0, b"not nettlp"),
    ];
    for (i, frame) in frames.iter().enumerate() {
        let packet = PcapPacket {
            timestamp: Duration::from_micros(1_000 + i as u64),
            orig_len: frame.len() as u32,
            data: Cow::Borrowed(frame),
        };
        writer.write_packet(&packet).unwrap();
    }
    drop(writer);
    let shown = json_lines(&tlpbridge(&["pcap", "show", "--json", path.to_str().unwrap()], ""));
    assert_eq!(shown.len(), 3);
    assert_eq!(shown[0]["interface"], "nettlp");
    assert_eq!(shown[0]["kind"], "MRd");
    assert_eq!(shown[0]["nettlp"], json!({"seq": 7, "tstamp": 1000, "src_port": 0x3002, "dst_port": 0x3002}));
    assert_eq!(shown[1]["kind"], "CplD");
    assert_eq!(shown[1]["request_record"], 1);
    assert_eq!(shown[1]["latency_ns"], 25 * 4);
    assert_eq!(shown[2]["interface"], "other");
    assert_eq!(shown[0]["time_ns"], 1_000_000);
    let out = tlpbridge(&["pcap", "show", "--filter", "iface=nettlp kind=CplD", path.to_str().unwrap()], "");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}
