//! Serial link faults end to end (docs/reliability.md §2): the real `tlpbridge run` between the
//! sample device (`tlpbridge sim device`) and the FPGA emulator (`tlpbridge fpga emulate --pty`),
//! which hosts the reference root complex and injects bit errors (1e-4 per bit) and dropped
//! frames (1 %) in both directions of the pty.
//!
//! The workload makes every loss, duplicate and reordering of a posted write visible:
//! - 300 writes of distinct values to one register (SCRATCH_LO), read back after every 25th:
//!   the read must return the value of the write just before it (last writer wins, in order);
//! - two passes of distinct values over 2 KiB of BAR2, then every dword read back: each must
//!   hold its second-pass value (a lost write leaves the first pass or 0, a stale duplicate of
//!   the first pass arriving late overwrites the second);
//! - DMA copies of 1 byte to 8 KiB through host memory, each ended by MSI vector 0: the
//!   destination must equal the source and the bytes after it stay untouched; COPY_COUNT at the
//!   end equals the number of doorbell writes (a duplicated doorbell would start an extra copy).
//!
//! The link counters the emulator prints must show that faults were injected and recovered by
//! retransmission. Waits are bounded; nothing asserts on wall time.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tlpbridge_tests::{Running, spawn_logged};

/// Longest the whole workload may take before the test gives up (a hang, not a slow run).
const WORKLOAD_LIMIT: Duration = Duration::from_secs(600);

const SCRATCH_LO: u32 = 0x30;
const COPY_COUNT: u32 = 0x28;
const STATUS_DONE: u32 = 0x2;

/// The root-complex script (docs/rc-script.md) and the number of copies it starts.
fn workload() -> (String, u32) {
    let mut s = String::from("enumerate\nexpect-id 1234:7e57\nenable-msi\n");
    // IRQ_CONTROL: enabled, MSI, vector 0.
    s += "write32 bar0+0x24 0x3\n";
    for i in 1..=300u32 {
        let value = i.wrapping_mul(0x9e37_79b9);
        s += &format!("write32 bar0+{SCRATCH_LO:#x} {value:#x}\n");
        if i % 25 == 0 {
            s += &format!("read32 bar0+{SCRATCH_LO:#x} expect {value:#x}\n");
        }
    }
    let dwords = 512u32;
    for pass in [0x1111_0000u32, 0x2222_0000] {
        for i in 0..dwords {
            s += &format!("write32 bar2+{:#x} {:#x}\n", i * 4, pass + i);
        }
    }
    for i in 0..dwords {
        s += &format!("read32 bar2+{:#x} expect {:#x}\n", i * 4, 0x2222_0000 + i);
    }
    let sizes = [1u32, 3, 64, 300, 1024, 4093, 4096, 8192];
    for (k, len) in sizes.iter().enumerate() {
        let src = 0x10_0000 + 0x1_0000 * k as u32 + k as u32;
        let dst = 0x80_0000 + 0x1_0000 * k as u32 + 3 * k as u32;
        let pattern = if k % 2 == 0 { "inc".to_owned() } else { format!("byte {:#x}", 0xa0 + k) };
        s += &format!("fill host {src:#x} {len} pattern {pattern}\n");
        s += &format!("fill host {dst:#x} {} pattern zero\n", len + 64);
        for (reg, value) in [(0x08, src), (0x0c, 0), (0x10, dst), (0x14, 0), (0x18, *len), (0x1c, 1)] {
            s += &format!("write32 bar0+{reg:#x} {value:#x}\n");
        }
        s += "wait-irq msi 0 timeout 60s\n";
        s += &format!("check host {dst:#x} {len} equals host {src:#x}\n");
        s += &format!("check host {:#x} 64 pattern zero\n", dst + len);
        s += &format!("read32 bar0+0x20 expect {STATUS_DONE:#x}\n");
        s += &format!("write32 bar0+0x20 {STATUS_DONE:#x}\n");
    }
    s += &format!("read32 bar0+{COPY_COUNT:#x} expect {}\n", sizes.len());
    (s, sizes.len() as u32)
}

/// The number just before `label` in `text` (e.g. `12 retransmissions`).
fn count_before(text: &str, label: &str) -> Option<u64> {
    let at = text.find(&format!(" {label}"))?;
    text.get(..at)?.rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[test]
fn posted_writes_reads_and_dma_survive_bit_errors_and_dropped_frames() {
    let bin = tlpbridge_tests::tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
    let dir = tlpbridge_tests::TestDir::new("serial-faults").unwrap_or_else(|e| panic!("{e}"));
    let socket = dir.socket_path("dev.sock").unwrap_or_else(|e| panic!("{e}"));
    let tty = dir.socket_path("ttyFPGA").unwrap_or_else(|e| panic!("{e}"));
    let (script, copies) = workload();
    let script_path = dir.join("workload.rcs");
    std::fs::write(&script_path, &script).unwrap();

    let _device = spawn_logged(
        &bin,
        &["sim", "device", "--socket", socket.to_str().unwrap()],
        &[],
        &dir.join("device.log"),
    )
    .unwrap();
    let emulator_log = dir.join("emulator.log");
    let mut emulator = Running(
        Command::new(&bin)
            .args(["fpga", "emulate", "--pty", "--pty-link", tty.to_str().unwrap()])
            .args(["--script", script_path.to_str().unwrap()])
            .args(["--ber", "1e-4", "--drop-frames", "0.01", "--seed", "7", "--replay-ms", "50"])
            .args(["--wait-s", "120"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&emulator_log).unwrap())
            .spawn()
            .unwrap(),
    );
    // Its stdout: the bridge's link argument first, the report at the end.
    let stdout = emulator.0.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut first = String::new();
        let _ = stdout.read_line(&mut first);
        let _ = lines_tx.send(first);
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        rest
    });
    let emulator_output = || std::fs::read_to_string(&emulator_log).unwrap_or_default();
    let link = lines
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("no link line from the emulator ({e}):\n{}", emulator_output()));
    let link = link.trim();
    // `serial:PATH` (docs/fpga-link.md §9) is `serial://PATH` for `tlpbridge run`.
    let path = link
        .strip_prefix("serial:")
        .unwrap_or_else(|| panic!("emulator printed {link:?}:\n{}", emulator_output()));
    let link = format!("serial://{path}?baud=3000000&replay-ms=50");

    let bridge_log = dir.join("run.log");
    let capture = dir.join("run.pcapng");
    let mut bridge = spawn_logged(
        &bin,
        &[
            "run",
            "--pcap",
            capture.to_str().unwrap(),
            "--server",
            socket.to_str().unwrap(),
            "--link",
            &link,
            "--connect-timeout",
            "60s",
            // A wall-clock link with replays: allow for a burst of losses before anything is
            // answered with CA or a DMA read fails.
            "--cpl-timeout",
            "10s",
            "--device-timeout",
            "10s",
        ],
        &[],
        &bridge_log,
    )
    .unwrap();
    let bridge_output = || std::fs::read_to_string(&bridge_log).unwrap_or_default();

    let status = emulator.wait_exit(WORKLOAD_LIMIT).unwrap().unwrap_or_else(|| {
        panic!(
            "the workload did not end within {WORKLOAD_LIMIT:?}:\n{}\n{}",
            emulator_output(),
            bridge_output()
        )
    });
    let report = reader.join().unwrap();
    let stderr = emulator_output();
    eprintln!("{report}\n{stderr}");
    assert!(
        status.success(),
        "workload failed ({status}):\n{report}\n{stderr}\nbridge:\n{}",
        bridge_output()
    );

    // Faults were injected, in both kinds, and the data-link layer recovered from them.
    let field = |label: &str| {
        count_before(&report, label).unwrap_or_else(|| panic!("no `{label}` in the report:\n{report}"))
    };
    assert!(field("bits flipped") > 0, "{report}");
    assert!(field("frames dropped") > 0, "{report}");
    assert!(field("bad frames") > 0, "{report}");
    assert!(field("retransmissions") > 0, "{report}");
    assert_eq!(field("overruns"), 0, "{report}");
    assert_eq!(field("times down"), 0, "the link went down:\n{report}");

    // The bridge: nothing dropped, timed out or completed twice on its side either.
    let _ = bridge.signal("INT");
    assert!(
        bridge.wait_exit(Duration::from_secs(30)).unwrap().is_some(),
        "bridge ignored SIGINT:\n{}",
        bridge_output()
    );
    let log = bridge_output();
    // The capture was finished on Ctrl-C: complete (no block cut short, nothing dropped), every
    // TLP the bridge counted is in it, and TLPs its data-link layer resent are flagged.
    let shown = Command::new(&bin).args(["pcap", "show", "--json"]).arg(&capture).output().unwrap();
    let warnings = String::from_utf8_lossy(&shown.stderr);
    assert!(shown.status.success() && warnings.is_empty(), "pcap show: {warnings}");
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&shown.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let tlps = records.iter().filter(|r| r["interface"] == "tlp");
    let (resent, first): (Vec<_>, Vec<_>) =
        tlps.partition(|r| r["flags"].as_array().is_some_and(|f| f.iter().any(|f| f == "retransmitted")));
    // `... in: MRd=3 CplD=2; out: MWr=1; ...`: the TLPs of one direction, all kinds.
    let tlps_counted = |line: &str, direction: &str| -> u64 {
        line.split(&format!(" {direction}:"))
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .map_or(0, |kinds| {
                kinds.split_whitespace().filter_map(|kv| kv.split('=').nth(1)?.parse::<u64>().ok()).sum()
            })
    };
    let finished =
        tlpbridge_tests::final_counters_line(&log).unwrap_or_else(|| panic!("no counters:\n{log}"));
    let malformed = tlpbridge_tests::bridge_counter(&log, "malformed").unwrap_or(0);
    assert_eq!(
        first.len() as u64,
        tlps_counted(finished, "in") + tlps_counted(finished, "out") + malformed,
        "one record per TLP received or sent ({} resent):\n{finished}",
        resent.len()
    );
    assert!(resent.iter().all(|r| r["direction"] == "out"), "only the bridge's own TLPs are resent by it");
    for name in
        ["ca_sent", "device_timeouts", "completion_timeouts", "unexpected_completions", "dma_refused_bme"]
    {
        assert_eq!(tlpbridge_tests::bridge_counter(&log, name), Some(0), "bridge counter {name}:\n{log}");
    }
    assert!(tlpbridge_tests::bridge_counter(&log, "posted_lost").is_none_or(|n| n == 0), "{log}");
    assert_eq!(
        tlpbridge_tests::bridge_counter(&log, "msi_sent"),
        Some(u64::from(copies)),
        "one MSI per copy:\n{log}"
    );
}

#[test]
fn the_workload_checks_what_it_claims() {
    let (script, copies) = workload();
    assert_eq!(copies, 8);
    // 300 register writes, 2 x 512 BAR2 writes, 6 register writes per copy, IRQ_CONTROL and
    // the STATUS clears.
    let writes = script.lines().filter(|l| l.starts_with("write32")).count();
    assert_eq!(writes, 300 + 1024 + 1 + 7 * copies as usize);
    assert_eq!(script.lines().filter(|l| l.starts_with("wait-irq msi 0")).count(), copies as usize);
    assert_eq!(
        count_before("link recovery: 12 retransmissions, 3 replay timeouts", "retransmissions"),
        Some(12)
    );
    assert_eq!(count_before("0 bits flipped", "bits flipped"), Some(0));
    assert_eq!(count_before("no number here", "retransmissions"), None);
}
