//! `tlpbridge demo` as a user runs it: exit status, the summary, the kept capture, a failing
//! script, the built-in script.

mod e2e_common;

use std::process::Command;
use std::time::Duration;

use tlpbridge_tests::{TestDir, run_bounded, tlpbridge_bin};

/// Far beyond the few seconds the demo takes, also in a debug build on a loaded machine.
const DEMO_LIMIT: Duration = Duration::from_secs(120);

fn demo(args: &[&str]) -> tlpbridge_tests::CommandOutput {
    let bin = tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
    let mut command = Command::new(bin);
    command.arg("demo").args(args);
    run_bounded(command, "tlpbridge demo", DEMO_LIMIT).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_demo_exits_0_and_prints_the_transcript_and_the_summary() {
    let out = demo(&[]);
    assert!(out.status.success(), "demo failed:\n{}", out.output);
    let text = &out.output;
    let checks =
        text.lines().find(|l| l.starts_with("checks: ")).unwrap_or_else(|| panic!("no checks line:\n{text}"));
    let (passed, total) = checks["checks: ".len()..].split_once(' ').unwrap().0.split_once('/').unwrap();
    assert_eq!(passed, total, "{checks}");
    assert!(passed.parse::<u32>().unwrap() >= 15, "{checks}");
    for expected in [
        "device 01:00.0 1234:7e57",
        "-> config        CfgRd0",
        "-> MMIO read     MRd32 00:00.0 tag=",
        "addr=0x8000_0000 len=1",
        "data=0100a0d3",                               // the ID register's CplD
        "addr=0x8000_001c len=1 be=f/0 data=01000000", // the doorbell
        "<- DMA read      MRd32 01:00.0",
        "-> DMA read cpl  CplD",
        "<- DMA write     MWr32 01:00.0",
        "<- interrupt     MWr32 01:00.0 tag=0x00 addr=0xfee0_0000",
        "more (",
        "DMA: 4096 bytes read from host memory, 4096 bytes written; interrupts: 1 MSI",
        "MMIO read round trip",
        "doorbell to interrupt",
        "lockstep mode",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }
    assert_eq!(text.lines().last(), Some("PASS"), "{text}");
}

#[test]
fn demo_pcap_keeps_a_capture_that_pcap_show_reads() {
    let bin = tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
    let dir = TestDir::new("e2e-demo").unwrap_or_else(|e| panic!("{e}"));
    let capture = dir.join("demo.pcapng");
    let out = demo(&["--pcap", capture.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "demo failed:\n{}", out.output);
    let outcome: serde_json::Value = serde_json::from_str(out.output.trim())
        .unwrap_or_else(|e| panic!("--json output is not one JSON object ({e}):\n{}", out.output));
    assert_eq!(outcome["passed"], true);
    assert_eq!(outcome["pcap"], capture.to_str().unwrap());

    let records = e2e_common::pcap_show_json(&bin, &capture);
    let tlps: Vec<&serde_json::Value> = records.iter().filter(|r| r["interface"] == "tlp").collect();
    // The capture holds exactly the TLPs the demo counted, both directions.
    let to_device = outcome["transcript"]["tlps_to_device"].as_u64().unwrap();
    let to_root_port = outcome["transcript"]["tlps_to_root_port"].as_u64().unwrap();
    assert_eq!(tlps.iter().filter(|r| r["direction"] == "in").count() as u64, to_device);
    assert_eq!(tlps.iter().filter(|r| r["direction"] == "out").count() as u64, to_root_port);
    assert!(tlps.iter().all(|r| r["flags"].as_array().unwrap().iter().any(|f| f == "simulated-time")));
    // The MSI write and the device's DMA are there, and vfio-user traffic on the device side.
    assert!(tlps.iter().any(|r| r["kind"] == "MWr" && r["tlp"]["address"] == "0xfee00000"), "no MSI write");
    let dma_reads = tlps.iter().filter(|r| r["kind"] == "MRd" && r["direction"] == "out").count();
    assert_eq!(dma_reads, 8, "4 KiB read in MRRS-sized (512 B) requests");
    assert!(records.iter().any(|r| r["interface"] == "vfio-user" && r["kind"] == "DMA_READ"));
    // Every transcript line with a record number names a TLP record of this capture.
    for line in outcome["transcript"]["lines"].as_array().unwrap() {
        if let Some(n) = line["record"].as_u64() {
            let record = records.iter().find(|r| r["record"] == n).unwrap_or_else(|| panic!("no record {n}"));
            assert_eq!(record["summary"], line["text"]);
        }
    }
}

#[test]
fn a_failing_script_makes_the_demo_exit_1_and_name_the_failed_check() {
    let dir = TestDir::new("e2e-demo-fail").unwrap_or_else(|e| panic!("{e}"));
    let script = dir.join("wrong-id.rcs");
    std::fs::write(&script, "enumerate\nread32 bar0 expect 0x12345678\n").unwrap();
    let out = demo(&["--script", script.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", out.output);
    assert!(
        out.output.contains("FAILED line 2: read32 bar0 expect 0x12345678: read 0xd3a00001"),
        "{}",
        out.output
    );
    assert!(out.output.lines().any(|l| l == "FAIL"), "{}", out.output);

    std::fs::write(&script, "enumerate\nfrobnicate\n").unwrap();
    let out = demo(&["--script", script.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "a script that does not parse is a bad argument: {}", out.output);
    assert!(out.output.contains("wrong-id.rcs:2"), "{}", out.output);
}

#[test]
fn print_script_prints_the_built_in_script_which_runs_as_a_script_file() {
    let out = demo(&["--print-script"]);
    assert!(out.status.success());
    assert!(out.output.contains("enumerate") && out.output.contains("wait-irq msi 0"), "{}", out.output);
    let dir = TestDir::new("e2e-demo-print").unwrap_or_else(|e| panic!("{e}"));
    let script = dir.join("printed.rcs");
    std::fs::write(&script, &out.output).unwrap();
    let rerun = demo(&["--script", script.to_str().unwrap(), "--mode", "free"]);
    assert!(rerun.status.success(), "{}", rerun.output);
    assert!(rerun.output.contains("free mode"), "{}", rerun.output);
}

/// Lockstep on one thread: the same TLPs at the same simulated times, the same latencies.
#[test]
fn two_lockstep_demos_print_the_same_transcript() {
    let outcome = |out: &tlpbridge_tests::CommandOutput| -> serde_json::Value {
        assert!(out.status.success(), "{}", out.output);
        serde_json::from_str(out.output.trim()).unwrap()
    };
    let first = outcome(&demo(&["--json"]));
    let second = outcome(&demo(&["--json"]));
    let lines = first["transcript"]["lines"].as_array().unwrap();
    assert!(lines.len() > 20, "{lines:?}");
    for (a, b) in lines.iter().zip(second["transcript"]["lines"].as_array().unwrap()) {
        assert_eq!((&a["time_ps"], &a["text"]), (&b["time_ps"], &b["text"]));
    }
    assert_eq!(first["transcript"], second["transcript"]);
    assert_eq!(first["latencies"], second["latencies"]);
    assert_eq!(first["simulated_ps"], second["simulated_ps"]);
    assert_eq!(first["tlps_from_root_port"], second["tlps_from_root_port"]);
}
