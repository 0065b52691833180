//! `tlpbridge bench --quick --json` end to end: every section of docs/performance.md is in the
//! report, the posted writes arrived in order, and the bridge's memory was measured on a
//! `tlpbridge run` process of its own that stopped cleanly. No figure is checked against its
//! target here: wall-clock targets belong to the benchmark, not to tests.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tlpbridge"))
}

#[test]
fn the_quick_bench_reports_every_section_and_measures_the_bridge_process() {
    let out = Command::new(bin()).args(["bench", "--quick", "--json"]).output().unwrap();
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let sections: BTreeSet<&str> = rows.iter().filter_map(|r| r["section"].as_str()).collect();
    for section in ["MMIO", "DMA", "capture", "tags", "memory", "serial"] {
        assert!(sections.contains(section), "no {section} rows in {sections:?}");
    }
    for row in rows {
        let value = row["value"].as_f64().unwrap();
        assert!(value.is_finite() && value > 0.0, "row without a figure: {row}");
    }

    let peak = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["value"].as_f64())
            .unwrap_or_else(|| panic!("no row {name:?}"))
    };
    let plain = peak("bridge process: peak RSS (VmHWM)");
    let with_capture = peak("bridge process with --pcap: peak RSS (VmHWM)");
    // A process of its own: megabytes, not the bench's whole process; the capture's two
    // preallocated 8 MiB buffers are resident in the second one.
    assert!(plain > 1.0 && plain < 200.0, "bridge process peak {plain} MiB");
    assert!(with_capture > plain + 8.0, "with --pcap {with_capture} MiB, without {plain} MiB");

    let notes: Vec<&str> = report["notes"].as_array().unwrap().iter().filter_map(|n| n.as_str()).collect();
    let has = |text: &str| notes.iter().any(|n| n.contains(text));
    assert!(has("none lost, none out of order"), "{notes:?}");
    assert!(has("bridge process: stopped by SIGINT, exit status 0, no problem reported"), "{notes:?}");
    assert!(has("bridge process with --pcap: stopped by SIGINT, exit status 0"), "{notes:?}");
}

#[test]
fn a_section_option_runs_only_that_section() {
    let out = Command::new(bin()).args(["bench", "--quick", "--json", "--section", "mmio"]).output().unwrap();
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sections: BTreeSet<&str> =
        report["rows"].as_array().unwrap().iter().filter_map(|r| r["section"].as_str()).collect();
    assert_eq!(sections, BTreeSet::from(["MMIO"]));

    let out = Command::new(bin()).args(["bench", "--section", "nonsense"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nonsense") && stderr.lines().count() == 1, "{stderr}");
}
