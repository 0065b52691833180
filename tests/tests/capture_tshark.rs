//! The Wireshark dissector (docs/wireshark/tlpbridge.lua) under tshark agrees with
//! `tlpbridge pcap show --json` on every record of a capture holding every TLP kind (valid ones
//! from the proptest strategies, rule breakers, unparsable bytes), request/completion pairs with
//! split and unsuccessful completions, and vfio-user messages on both sockets.
//!
//! The capture is written with `tlpbridge pcap write`, which goes through the same capture
//! writer as `--pcap`. The bridge's own end-to-end capture is compared the same way in
//! `bridge/tests/capture_engine.rs`.

#[path = "../../bridge/tests/capture_support/tshark.rs"]
mod tshark;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use tlp::Limits;
use tlp::arbitrary::{KIND_NAMES, any_tlp, valid_tlp_of};
use tlpbridge_tests::{Running, free_port, spawn_logged, wait_listening};

fn hex(bytes: &[u8]) -> String {
    tlp::json::bytes_to_hex(bytes)
}

/// A vfio-user message: header (id, command, size, flags, error) and payload, little-endian.
fn vfio_message(id: u16, command: u16, flags: u32, error: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&command.to_le_bytes());
    m.extend_from_slice(&(16 + payload.len() as u32).to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&error.to_le_bytes());
    m.extend_from_slice(payload);
    m
}

fn region_access(offset: u64, region: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&offset.to_le_bytes());
    p.extend_from_slice(&region.to_le_bytes());
    p.extend_from_slice(&count.to_le_bytes());
    p.extend_from_slice(data);
    p
}

fn dma_access(address: u64, count: u64, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&address.to_le_bytes());
    p.extend_from_slice(&count.to_le_bytes());
    p.extend_from_slice(data);
    p
}

/// The JSON lines `tlpbridge pcap write` takes.
fn records() -> Vec<Value> {
    let mut out = Vec::new();
    let mut time_ps = 1_000_000u64;
    let mut tlp_record = |direction: &str, flags: &[&str], bytes: &[u8], out: &mut Vec<Value>| {
        time_ps += 12_345;
        out.push(json!({"interface": "tlp", "direction": direction, "link_id": 0,
            "link_time_ps": time_ps, "flags": flags, "bytes": hex(bytes)}));
    };
    let mut runner = TestRunner::deterministic();
    // Every kind, several times, both directions.
    for (i, kind) in KIND_NAMES.iter().enumerate() {
        for n in 0..4 {
            let tlp = valid_tlp_of(kind).new_tree(&mut runner).unwrap().current();
            let flags: &[&str] = if tlp.ep { &["poisoned"] } else { &[] };
            let direction = if (i + n) % 2 == 0 { "in" } else { "out" };
            tlp_record(direction, flags, &tlp.to_bytes(), &mut out);
        }
    }
    // Rule breakers (they parse; the bridge flags what fails validation as malformed).
    for _ in 0..24 {
        let tlp = any_tlp().new_tree(&mut runner).unwrap().current();
        let flags: Vec<&str> =
            [(tlp.validate(&Limits::default()).is_err(), "malformed"), (tlp.ep, "poisoned")]
                .iter()
                .filter(|(set, _)| *set)
                .map(|(_, name)| *name)
                .collect();
        tlp_record("in", &flags, &tlp.to_bytes(), &mut out);
    }
    // A request and its completions: MRd of 128 bytes at 0x1040 answered by two CplDs (64 + 64
    // bytes, RCB 64), a CfgRd0 answered with UR, a MRd answered with CA (status 4), a CfgWr0 with
    // its Cpl, one retransmitted TLP.
    let mrd = tlp::json::from_json(&json!({"kind": "MRd", "requester_id": "01:00.0", "tag": 0x21,
        "length_dw": 32, "first_be": 15, "last_be": 15, "address": "0x00001040"}))
    .unwrap();
    tlp_record("out", &[], &mrd.to_bytes(), &mut out);
    for (byte_count, lower) in [(128u16, 0x40u8), (64, 0x00)] {
        let cpl = tlp::json::from_json(&json!({"kind": "CplD", "completer_id": "00:00.0", "status": "SC",
            "byte_count": byte_count, "requester_id": "01:00.0", "tag": 0x21, "lower_address": lower,
            "length_dw": 16, "payload": "ab".repeat(64)}))
        .unwrap();
        tlp_record("in", &[], &cpl.to_bytes(), &mut out);
    }
    let cfg = tlp::json::from_json(&json!({"kind": "CfgRd0", "requester_id": "00:00.0", "tag": 5,
        "first_be": 15, "last_be": 0, "bus": 1, "device": 0, "function": 1, "register": 0x100}))
    .unwrap();
    tlp_record("in", &[], &cfg.to_bytes(), &mut out);
    let ur = tlp::json::from_json(&json!({"kind": "Cpl", "completer_id": "01:00.1", "status": "UR",
        "byte_count": 4, "requester_id": "00:00.0", "tag": 5, "lower_address": 0}))
    .unwrap();
    tlp_record("out", &[], &ur.to_bytes(), &mut out);
    let mrd2 = tlp::json::from_json(&json!({"kind": "MRd", "requester_id": "00:00.0", "tag": 0x3ff,
        "length_dw": 1, "first_be": 15, "last_be": 0, "address": "0x0000000123456780"}))
    .unwrap();
    tlp_record("in", &["retransmitted"], &mrd2.to_bytes(), &mut out);
    let ca = tlp::json::from_json(&json!({"kind": "Cpl", "completer_id": "01:00.0", "status": "CA",
        "byte_count": 4, "requester_id": "00:00.0", "tag": 0x3ff, "lower_address": 0}))
    .unwrap();
    tlp_record("out", &[], &ca.to_bytes(), &mut out);
    // Bytes that are not a TLP: a reserved Fmt/Type, a header cut short, a payload shorter than
    // Length.
    tlp_record("in", &["malformed"], &[0xff, 0, 0, 1, 0, 0, 0, 0], &mut out);
    tlp_record("in", &["malformed"], &[0x00, 0, 0, 1, 0x01, 0x00], &mut out);
    tlp_record("in", &["malformed"], &[0x40, 0, 0, 2, 1, 0, 0, 0xff, 0, 0, 0x10, 0, 1, 2, 3, 4], &mut out);

    // vfio-user: a REGION_READ and its reply, a posted REGION_WRITE, an error reply, a DMA_WRITE
    // on the twin socket and its reply, the VERSION command with its fd-carrying reply.
    let mut vfio = |direction: &str, socket: &str, fds: u8, bytes: Vec<u8>| {
        out.push(json!({"interface": "vfio-user", "direction": direction, "socket": socket, "fds": fds,
            "bytes": hex(&bytes)}));
    };
    vfio("out", "main", 0, vfio_message(0, 1, 0, 0, b"\x00\x00\x02\x00{}\x00"));
    vfio("in", "main", 1, vfio_message(0, 1, 1, 0, b"\x00\x00\x02\x00{}\x00"));
    vfio("out", "main", 0, vfio_message(7, 9, 0, 0, &region_access(0x10, 7, 4, &[])));
    vfio("in", "main", 0, vfio_message(7, 9, 1, 0, &region_access(0x10, 7, 4, &[1, 2, 3, 4])));
    vfio("out", "main", 0, vfio_message(8, 10, 0x10, 0, &region_access(0x2000, 0, 4, &[9, 9, 9, 9])));
    vfio("out", "main", 0, vfio_message(9, 9, 0, 0, &region_access(0x3000, 2, 8, &[])));
    vfio("in", "main", 0, vfio_message(9, 9, 0x21, 5, &[]));
    vfio("in", "twin", 0, vfio_message(3, 12, 0, 0, &dma_access(0x8000_0000, 4, &[5, 6, 7, 8])));
    vfio("out", "twin", 0, vfio_message(3, 12, 1, 0, &dma_access(0x8000_0000, 4, &[])));
    out
}

#[test]
fn dissector_agrees_with_pcap_show_on_every_tlp_kind_and_vfio_user_messages() {
    let Some(tshark) = tshark::tshark_or_skip("dissector_agrees_with_pcap_show_on_every_tlp_kind") else {
        return;
    };
    let bin = tlpbridge_tests::tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
    let dir = tlpbridge_tests::TestDir::new("capture-tshark").unwrap_or_else(|e| panic!("{e}"));
    let capture = dir.path().join("every-kind.pcapng");
    let input: String = records().iter().map(|r| format!("{r}\n")).collect();
    let mut child = Command::new(&bin)
        .args(["pcap", "write"])
        .arg(&capture)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tlpbridge pcap write");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "pcap write: {}", String::from_utf8_lossy(&out.stderr));

    let (ours, compared) = tshark::assert_dissector_agrees(&tshark, &bin, &capture);
    assert_eq!(ours.len(), input.lines().count());
    let kinds: BTreeSet<&str> = ours.iter().filter_map(|r| r["kind"].as_str()).collect();
    for kind in KIND_NAMES {
        assert!(kinds.contains(kind), "no {kind} record in the capture");
    }
    // The hand-made pairs were matched, so request_in and latency were compared, not absent.
    let matched: Vec<&Value> = ours.iter().filter(|r| r.get("request_record").is_some()).collect();
    assert!(matched.iter().any(|r| r["tlp"]["status"] == "CA"), "CA completion matched");
    assert!(matched.iter().any(|r| r["kind"] == "DMA_WRITE"), "twin-socket reply matched");
    assert!(matched.iter().filter(|r| r["kind"] == "CplD").count() >= 2, "both split CplDs matched");
    assert!(compared > 1000, "only {compared} field values compared");
}

// ---------------------------------------------------------------------------------------------
// Captures from `tlpbridge run --pcap` over the sim link: the sample device behind the bridge,
// the reference root complex in front, running a DMA copy.
// ---------------------------------------------------------------------------------------------

const COPY_SCRIPT: &str = "\
enumerate
expect-id 1234:7e57
read32 bar0 expect 0xd3a00001
fill host 0x1010 256 pattern inc
write32 bar0+0x08 0x1010
write32 bar0+0x0c 0
write32 bar0+0x10 0x3000
write32 bar0+0x14 0
write32 bar0+0x18 256
write32 bar0+0x24 0x5
write32 bar0+0x1c 1
wait-irq msix 0 timeout 1ms
check host 0x3000 256 equals host 0x1010
read32 bar0+0x20 expect 0x2
";

/// The sample device and `tlpbridge run --pcap` listening for the root complex.
struct Bench {
    _device: Running,
    bridge: Running,
    port: u16,
    capture: std::path::PathBuf,
    bridge_log: std::path::PathBuf,
}

fn start_bridge(bin: &std::path::Path, dir: &tlpbridge_tests::TestDir, name: &str) -> Bench {
    let socket = dir.socket_path(&format!("{name}.sock")).unwrap_or_else(|e| panic!("{e}"));
    let device = spawn_logged(
        bin,
        &["sim", "device", "--socket", socket.to_str().unwrap()],
        &[],
        &dir.join(format!("{name}-device.log")),
    )
    .unwrap();
    let port = free_port().unwrap();
    let capture = dir.join(format!("{name}.pcapng"));
    let bridge_log = dir.join(format!("{name}-run.log"));
    let bridge = spawn_logged(
        bin,
        &[
            "run",
            "--server",
            socket.to_str().unwrap(),
            "--link",
            &format!("sim-listen://127.0.0.1:{port}"),
            "--pcap",
            capture.to_str().unwrap(),
        ],
        &[],
        &bridge_log,
    )
    .unwrap();
    wait_listening(port, std::time::Duration::from_secs(60), &bridge_log).unwrap_or_else(|e| panic!("{e}"));
    Bench { _device: device, bridge, port, capture, bridge_log }
}

fn run_rc(
    bin: &std::path::Path,
    dir: &tlpbridge_tests::TestDir,
    port: u16,
) -> tlpbridge_tests::CommandOutput {
    let script = dir.join("copy.rcs");
    std::fs::write(&script, COPY_SCRIPT).unwrap();
    let mut rc = Command::new(bin);
    rc.args(["sim", "rc", "--mode", "free", "--pace-us", "10", "--wait-s", "30", "--link"])
        .arg(format!("sim://127.0.0.1:{port}"))
        .arg("--script")
        .arg(&script);
    tlpbridge_tests::run_bounded(rc, "tlpbridge sim rc", std::time::Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_bridge_run_with_pcap_captures_both_sides_and_the_dissector_agrees() {
    let bin = tlpbridge_tests::tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
    let dir = tlpbridge_tests::TestDir::new("capture-run").unwrap_or_else(|e| panic!("{e}"));
    let mut bench = start_bridge(&bin, &dir, "run");
    let rc = run_rc(&bin, &dir, bench.port);
    assert!(rc.status.success(), "sim rc failed:\n{}", rc.output);
    // The root complex closing the link ends the bridge, which then finishes the capture.
    let status = bench.bridge.wait_exit(std::time::Duration::from_secs(60)).unwrap();
    assert!(
        status.is_some(),
        "the bridge did not stop after the link closed:\n{}",
        std::fs::read_to_string(&bench.bridge_log).unwrap_or_default()
    );

    let records = tshark::show_json(&bin, &bench.capture);
    let tlps: Vec<&Value> = records.iter().filter(|r| r["interface"] == "tlp").collect();
    assert!(tlps.len() > 100, "{} TLP records", tlps.len());
    // The sim link runs on simulated time: every TLP record says so.
    assert!(tlps.iter().all(|r| r["flags"].as_array().unwrap().contains(&json!("simulated-time"))));
    let seen =
        |kind: &str, direction: &str| tlps.iter().any(|r| r["kind"] == kind && r["direction"] == direction);
    for (kind, direction) in [
        ("CfgRd0", "in"),
        ("CfgWr0", "in"),
        ("CplD", "out"),
        ("MRd", "in"),
        ("MWr", "in"),
        ("MRd", "out"),
        ("CplD", "in"),
        ("MWr", "out"),
    ] {
        assert!(seen(kind, direction), "no {kind} {direction}");
    }
    for r in &tlps {
        if r["kind"].as_str().is_some_and(|k| k.starts_with("Cpl")) {
            assert!(r["request_record"].is_u64(), "unmatched completion {r}");
        }
    }
    let vfio: Vec<&Value> = records.iter().filter(|r| r["interface"] == "vfio-user").collect();
    assert_eq!(vfio[0]["kind"], "VERSION");
    assert!(vfio.iter().any(|r| r["socket"] == "twin" && r["kind"] == "DMA_READ"));
    assert!(vfio.iter().any(|r| r["direction"] == "in") && vfio.iter().any(|r| r["direction"] == "out"));

    if let Some(tshark_bin) = tshark::tshark_or_skip("a_bridge_run_with_pcap (dissector part)") {
        tshark::assert_dissector_agrees(&tshark_bin, &bin, &bench.capture);
    }
}

#[test]
fn a_capture_from_a_sigkilled_bridge_still_opens() {
    let bin = tlpbridge_tests::tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
    let dir = tlpbridge_tests::TestDir::new("capture-kill").unwrap_or_else(|e| panic!("{e}"));
    let bench = start_bridge(&bin, &dir, "kill");
    let script = dir.join("copy.rcs");
    std::fs::write(&script, COPY_SCRIPT).unwrap();
    let _rc = spawn_logged(
        &bin,
        &[
            "sim",
            "rc",
            "--mode",
            "free",
            "--pace-us",
            "10",
            "--link",
            &format!("sim://127.0.0.1:{}", bench.port),
            "--script",
            script.to_str().unwrap(),
        ],
        &[],
        &dir.join("kill-rc.log"),
    )
    .unwrap();
    // Wait until the bridge has written a good part of the run, then SIGKILL it mid-flight.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let shown = loop {
        let out = Command::new(&bin).args(["pcap", "show", "--json"]).arg(&bench.capture).output().unwrap();
        let n = String::from_utf8_lossy(&out.stdout).lines().count();
        if out.status.success() && n >= 60 {
            break n;
        }
        assert!(std::time::Instant::now() < deadline, "the capture never reached 60 records");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    drop(bench); // SIGKILL: no chance to finish the file.

    let out =
        Command::new(&bin).args(["pcap", "show", "--json"]).arg(dir.join("kill.pcapng")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(records.len() >= shown, "{} records after the kill, {shown} before", records.len());
    assert!(records.iter().all(|r| r.get("error").is_none()), "every surviving record decodes");
}
