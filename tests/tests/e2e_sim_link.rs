//! Three processes over real sockets: `tlpbridge sim device` (the sample card) behind
//! `tlpbridge run` (the bridge, listening on the TCP sim link), driven by `tlpbridge sim rc`
//! (the reference root complex) running a DMA copy script, in free-running and lockstep mode.
//! Lockstep twice with the same script gives the same TLP sequence.

mod e2e_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e_common::{Running, spawn};
use tlpbridge_tests::{TestDir, run_bounded, tlpbridge_bin};

/// Starts with a simulated pause: `tlpbridge run` opens the link before it connects to the
/// device and answers configuration reads with CRS meanwhile. The root complex retries those, but
/// how many there are depends on wall-clock timing and would show in the report's TLP counts,
/// which the lockstep test compares between runs; the pause lets the bridge connect first.
const COPY_SCRIPT: &str = "\
sleep 1ms
enumerate
expect-id 1234:7e57
read32 bar0 expect 0xd3a00001
enable-msi
fill host 0x10_0000 4096 pattern inc
write64 bar0+0x08 0x10_0000
write64 bar0+0x10 0x20_0000
write32 bar0+0x18 4096
write32 bar0+0x24 0x3
write32 bar0+0x1c 1
wait-irq msi 0 timeout 10ms
check host 0x20_0000 4096 equals host 0x10_0000
read32 bar0+0x20 expect 0x2
read32 bar0+0x28 expect 1
";

const WAIT: Duration = Duration::from_secs(60);

/// The sample device and `tlpbridge run --pcap` listening for the root complex.
struct Bench {
    _device: Running,
    bridge: Running,
    port: u16,
    capture: PathBuf,
}

fn start_bench(bin: &Path, dir: &TestDir, name: &str, mode: &str, extra_run_args: &[&str]) -> Bench {
    let socket = dir.socket_path(&format!("{name}.sock")).unwrap_or_else(|e| panic!("{e}"));
    let device = spawn(
        bin,
        &["sim", "device", "--socket", socket.to_str().unwrap()],
        dir.join(format!("{name}-device.log")),
    );
    e2e_common::wait_for_path(&socket, &device, WAIT);
    let port = e2e_common::free_port();
    let capture = dir.join(format!("{name}.pcapng"));
    let bridge = spawn(
        bin,
        &[
            "run",
            "--server",
            socket.to_str().unwrap(),
            "--link",
            &format!("sim-listen://127.0.0.1:{port}?mode={mode}"),
            "--pcap",
            capture.to_str().unwrap(),
        ]
        .into_iter()
        .chain(extra_run_args.iter().copied())
        .collect::<Vec<_>>(),
        dir.join(format!("{name}-run.log")),
    );
    e2e_common::wait_listening(port, &bridge, WAIT);
    Bench { _device: device, bridge, port, capture }
}

/// Runs the root complex with `--json` to completion; its report.
fn run_rc(bin: &Path, dir: &TestDir, port: u16, mode: &str) -> serde_json::Value {
    let script = dir.join("copy.rcs");
    std::fs::write(&script, COPY_SCRIPT).unwrap();
    let mut rc = Command::new(bin);
    rc.args(["sim", "rc", "--json", "--wait-s", "30", "--mode", mode, "--link"])
        .arg(format!("sim://127.0.0.1:{port}"))
        .arg("--script")
        .arg(&script);
    if mode == "free" {
        rc.args(["--pace-us", "10"]);
    }
    let out = run_bounded(rc, "tlpbridge sim rc", Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "sim rc ({mode}) failed:\n{}", out.output);
    let json = &out.output[out.output.find('{').unwrap_or(0)..];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("sim rc --json ({e}):\n{}", out.output))
}

/// One whole run; returns the root complex's report and the capture's TLP records.
fn copy_run(
    bin: &Path,
    dir: &TestDir,
    name: &str,
    mode: &str,
) -> (serde_json::Value, Vec<serde_json::Value>) {
    let mut bench = start_bench(bin, dir, name, mode, &[]);
    let report = run_rc(bin, dir, bench.port, mode);
    // The root complex closing the link ends the bridge (docs/run.md: status 1, "link closed"),
    // which flushes the capture first.
    let status = bench
        .bridge
        .wait_exit(WAIT)
        .unwrap_or_else(|| panic!("the bridge kept running:\n{}", bench.bridge.output()));
    assert_eq!(status.code(), Some(1), "{}", bench.bridge.output());
    assert!(bench.bridge.output().contains("link closed"), "{}", bench.bridge.output());
    let records = e2e_common::pcap_show_json(bin, &bench.capture);
    (report, records)
}

fn assert_copy_passed(report: &serde_json::Value, records: &[serde_json::Value]) {
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["dma_read_bytes"], 4096);
    assert_eq!(report["dma_write_bytes"], 4096);
    assert_eq!(report["interrupts"][0]["kind"], "msi");
    let tlps: Vec<&serde_json::Value> = records.iter().filter(|r| r["interface"] == "tlp").collect();
    assert_eq!(tlps.iter().filter(|r| r["kind"] == "MRd" && r["direction"] == "out").count(), 8);
    assert!(
        tlps.iter()
            .any(|r| r["kind"] == "MWr" && r["direction"] == "out" && r["tlp"]["address"] == "0xfee00000")
    );
    assert!(tlps.iter().all(|r| r["flags"].as_array().unwrap().iter().any(|f| f == "simulated-time")));
}

#[test]
fn device_bridge_and_root_complex_as_processes_copy_in_free_running_mode() {
    let bin = tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
    let dir = TestDir::new("e2e-free").unwrap_or_else(|e| panic!("{e}"));
    let (report, records) = copy_run(&bin, &dir, "free", "free");
    assert_copy_passed(&report, &records);
}

/// Leading configuration reads answered with CRS (the bridge still connecting to the device
/// when the root complex starts) depend on wall-clock timing; the rest must not.
fn without_leading_retries(sequence: Vec<String>) -> Vec<String> {
    let mut rest = sequence.as_slice();
    while let [request, completion, tail @ ..] = rest {
        if request.starts_with("in CfgRd0") && completion.contains("status=\"CRS\"") {
            rest = tail;
        } else {
            break;
        }
    }
    rest.to_vec()
}

#[test]
fn lockstep_twice_with_the_same_script_gives_the_same_tlp_sequence() {
    let bin = tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
    let dir = TestDir::new("e2e-lockstep").unwrap_or_else(|e| panic!("{e}"));
    let (first_report, first) = copy_run(&bin, &dir, "first", "lockstep");
    assert_copy_passed(&first_report, &first);
    let (second_report, second) = copy_run(&bin, &dir, "second", "lockstep");
    assert_copy_passed(&second_report, &second);

    let first = without_leading_retries(e2e_common::tlp_sequence(&first));
    let second = without_leading_retries(e2e_common::tlp_sequence(&second));
    assert!(first.len() > 200, "{} TLPs", first.len());
    if let Some(at) = first.iter().zip(&second).position(|(a, b)| a != b) {
        panic!("the runs differ at TLP {at}: {:?} vs {:?}", first[at], second[at]);
    }
    assert_eq!(first.len(), second.len());
    // The root complex's own view agrees: same steps, same TLP counts.
    assert_eq!(first_report["tlps_received"], second_report["tlps_received"]);
    let details = |r: &serde_json::Value| -> Vec<String> {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| !s["command"].as_str().unwrap().starts_with("wait-irq"))
            .map(|s| s["detail"].to_string())
            .collect()
    };
    assert_eq!(details(&first_report), details(&second_report));
}

/// A capture whose writer cannot keep up (a queue of one record) loses records without slowing
/// the bridge: the copy passes, `tlpbridge run` reports the loss at exit, and the file says the
/// same number (`pcap show` reads it from the statistics blocks).
#[test]
fn a_capture_that_falls_behind_drops_records_and_says_how_many() {
    let bin = tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
    let dir = TestDir::new("e2e-drops").unwrap_or_else(|e| panic!("{e}"));
    let mut bench = start_bench(&bin, &dir, "drops", "free", &["--pcap-queue", "1"]);
    let report = run_rc(&bin, &dir, bench.port, "free");
    assert_eq!(report["passed"], true, "{report:#}");
    bench
        .bridge
        .wait_exit(WAIT)
        .unwrap_or_else(|| panic!("the bridge kept running:\n{}", bench.bridge.output()));
    let output = bench.bridge.output();
    let lost = |text: &str, before: &str| -> Option<u64> {
        text.split("the capture lost ").nth(1)?.split(before).next()?.trim().parse().ok()
    };
    let reported = lost(&output, " of ").unwrap_or_else(|| panic!("no loss reported:\n{output}"));
    assert!(reported > 0);
    let shown = Command::new(&bin).args(["pcap", "show"]).arg(&bench.capture).output().unwrap();
    assert!(shown.status.success());
    let warning = String::from_utf8_lossy(&shown.stderr);
    assert_eq!(lost(&warning, " records"), Some(reported), "{warning}");
}
