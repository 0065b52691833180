//! Real vfio-user servers behind `tlpbridge run`, driven over the TCP sim link by the reference
//! root complex (`tlpbridge sim rc`): QEMU's `edu` device and libvfio-user's `samples/server`.
//! A peer that is not installed skips the test loudly (fails it under `CI=true`).

mod e2e_common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e_common::{Running, spawn};
use tlpbridge_tests::peers::{self, QemuDevice};
use tlpbridge_tests::{TestDir, run_bounded, tlpbridge_bin};

const WAIT: Duration = Duration::from_secs(60);

/// `tlpbridge run` on `socket`, listening on a free port for the root complex.
fn start_bridge(bin: &Path, dir: &TestDir, socket: &Path, extra: &[&str]) -> (Running, u16) {
    let port = e2e_common::free_port();
    let link = format!("sim-listen://127.0.0.1:{port}");
    let mut args = vec!["run", "--server", socket.to_str().unwrap(), "--link", &link];
    args.extend_from_slice(extra);
    let bridge = spawn(bin, &args, dir.join("run.log"));
    e2e_common::wait_listening(port, &bridge, WAIT);
    (bridge, port)
}

/// Runs `script` with the root complex in free-running mode, paced so that simulated time passes
/// at most about 100 times faster than wall time (a step of 100 cycles per pace tick), which
/// gives the peers, which run on wall time, time to work; returns the JSON report.
fn run_rc(bin: &Path, dir: &TestDir, port: u16, script: &str, bridge: &Running) -> serde_json::Value {
    let path = dir.join("workload.rcs");
    std::fs::write(&path, script).unwrap();
    let mut rc = Command::new(bin);
    rc.args(["sim", "rc", "--json", "--mode", "free", "--pace-us", "20", "--wait-s", "30", "--link"])
        .arg(format!("sim://127.0.0.1:{port}"))
        .arg("--script")
        .arg(&path);
    let out = run_bounded(rc, "tlpbridge sim rc", Duration::from_secs(180)).unwrap_or_else(|e| panic!("{e}"));
    let json = &out.output[out.output.find('{').unwrap_or(0)..];
    let report: serde_json::Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("sim rc --json ({e}):\n{}\nbridge:\n{}", out.output, bridge.output()));
    assert!(
        out.status.success() && report["passed"] == true,
        "sim rc failed:\n{}\nbridge:\n{}",
        out.output,
        bridge.output()
    );
    report
}

/// QEMU's edu (hw/misc/edu.c): identification 0x010000ed, liveness (inverts), factorial, and
/// the raise-interrupt register 0x60, which sends MSI when the guest enabled it.
const EDU_SCRIPT: &str = "\
sleep 100us                        # the bridge may still be connecting to QEMU (CRS)
enumerate                          # edu has MSI and no MSI-X: MSI is enabled
expect-id 1234:11e8
read32 bar0+0x00 expect 0x010000ed # identification
write32 bar0+0x04 0x12345678
read32 bar0+0x04 expect 0xedcba987 # liveness check: the inverse
write32 bar0+0x08 5                # factorial of 5, computed by a QEMU thread
sleep 10us
read32 bar0+0x20 expect 0          # status: no longer computing, no interrupt on completion
read32 bar0+0x08 expect 120
write32 bar0+0x60 0x1              # raise interrupt: status 0x24 gets 0x1, MSI is sent
wait-irq msi 0 timeout 1ms
read32 bar0+0x24 expect 0x1
write32 bar0+0x64 0x1              # acknowledge
read32 bar0+0x24 expect 0
";

#[test]
fn qemu_edu_behind_the_bridge_identifies_computes_a_factorial_and_sends_msi() {
    let bin = tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
    let dir = TestDir::new("e2e-edu").unwrap_or_else(|e| panic!("{e}"));
    let Some(mut qemu) = peers::start_qemu(&dir, QemuDevice::Edu) else { return };
    let (mut bridge, port) = start_bridge(&bin, &dir, qemu.socket(), &[]);
    let report = run_rc(&bin, &dir, port, EDU_SCRIPT, &bridge);
    let enumeration = &report["enumeration"];
    assert_eq!(enumeration["interrupts"], "msi", "{report:#}");
    assert_eq!(report["interrupts"].as_array().unwrap().len(), 1, "{report:#}");
    assert_eq!(report["interrupts"][0]["kind"], "msi");
    assert!(bridge.wait_exit(WAIT).is_some(), "the bridge kept running after the link closed");
    // auto-shutdown: QEMU leaves when its one client does.
    qemu.wait_exit(WAIT).unwrap_or_else(|e| panic!("{e}"));
}

/// libvfio-user's `samples/server` (QEMU 7.2's 2022 copy): Vendor:Device dead:beef, BAR0 an
/// 8-byte I/O region (the timer, which accepts only whole 8-byte accesses at offset 0), BAR1
/// 0x3000 bytes, also an I/O BAR (neither region has `VFU_REGION_FLAG_MEM`; docs/peers.md). A
/// host sizes BAR1 from the lowest set bit of the mask libvfio-user answers (`!0x3000 + 1`, low
/// bits 0xd000), i.e. as 0x1000: the bridge accepts the device, decodes BAR1 with that size
/// (warning once that only 0x1000 of its 0x3000 bytes are reachable) and the reference root
/// complex enumerates it.
///
/// The sample's timer path (INTx, then 4 KiB DMA written and read back) stays out of reach from a
/// root port: arming it takes one 8-byte write to BAR0, whose handler refuses every access but a
/// single 8-byte one at offset 0 (EINVAL), and I/O requests carry at most one DW (PCIe Base 6.0
/// §2.2.7), so a root complex can only send two 4-byte IOWr, each of which the sample refuses.
#[test]
fn libvfio_user_sample_server_with_a_0x3000_byte_bar_is_bridged_and_enumerated() {
    let bin = tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
    let dir = TestDir::new("e2e-lvu").unwrap_or_else(|e| panic!("{e}"));
    let Some(mut server) = peers::start_libvfio_user_server(&dir) else { return };
    let (mut bridge, port) = start_bridge(&bin, &dir, server.socket(), &["--dma-window", "0x100000:1M"]);
    let script = "\
sleep 100us             # the bridge may still be connecting to the server (CRS)
enumerate
expect-id dead:beef
";
    let report = run_rc(&bin, &dir, port, script, &bridge);
    let bar1 = &report["enumeration"]["bars"][1];
    assert_eq!((bar1["slot"].as_u64(), bar1["kind"].as_str()), (Some(1), Some("io")), "{report:#}");
    assert_eq!(
        bar1["size"].as_u64(),
        Some(0x1000),
        "the host sizes BAR1 from the lowest set bit: {report:#}"
    );
    let status =
        bridge.wait_exit(WAIT).unwrap_or_else(|| panic!("the bridge kept running:\n{}", bridge.output()));
    // The root complex left: the link closed (status 1), the device was never refused (status 2).
    assert_eq!(status.code(), Some(1), "{}", bridge.output());
    let message = bridge.output();
    assert!(
        message.contains("BAR1 region size 0x3000 is not a power of two")
            && message.contains("only its first 0x1000 bytes are reachable"),
        "{message}"
    );
    // The server saw its client leave and stopped on its own.
    let _ = server.wait_exit(WAIT);
}
