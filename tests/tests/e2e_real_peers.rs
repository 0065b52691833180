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
    run_rc_paced(bin, dir, port, script, bridge, &["--pace-us", "20"])
}

/// [`run_rc`] with its own pacing arguments (`--pace-us`, `--step-cycles`).
fn run_rc_paced(
    bin: &Path,
    dir: &TestDir,
    port: u16,
    script: &str,
    bridge: &Running,
    pacing: &[&str],
) -> serde_json::Value {
    let path = dir.join("workload.rcs");
    std::fs::write(&path, script).unwrap();
    let mut rc = Command::new(bin);
    rc.args(["sim", "rc", "--json", "--mode", "free", "--wait-s", "30"])
        .args(pacing)
        .arg("--link")
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
/// Its timer path (INTx, then 4 KiB of DMA) needs one 8-byte write to BAR0, which an I/O request
/// cannot carry: see the next test.
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

/// libvfio-user's `samples/server` end to end: BAR0 takes only one 8-byte access at offset 0 and
/// is an I/O BAR, and I/O requests carry one DW (PCIe Base 6.0 §2.2.7), so the bridge presents it
/// as a memory BAR (`--io-bars-as-memory`) and the root complex arms the timer with one 8-byte
/// MWr of the second it is to fire at. When the timer fires the server raises INTx (Assert_INTA at the root complex), writes
/// 4 KiB of 'A' to the start of its first DMA region by DMA_WRITE (MWrs into root-complex
/// memory) and reads it back by DMA_READ (MRds answered with CplDs); it exits with failure if
/// the data read back differs, and with 0 when its client leaves.
#[test]
fn libvfio_user_sample_server_timer_raises_intx_and_dmas_4_kib_through_the_bridge() {
    let bin = tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
    let dir = TestDir::new("e2e-lvu-dma").unwrap_or_else(|e| panic!("{e}"));
    let Some(mut server) = peers::start_libvfio_user_server(&dir) else { return };
    let (mut bridge, port) =
        start_bridge(&bin, &dir, server.socket(), &["--dma-window", "0x100000:1M", "--io-bars-as-memory"]);
    // BAR0 holds the wall-clock second (time_t) at which the timer fires: two seconds from now.
    // Simulated time runs no faster than wall time here (1 ms steps, each at least 1 ms of wall
    // time), so the waits below are generous bounds.
    let fire_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 2;
    let script = format!(
        "\
sleep 100us                       # the bridge may still be connecting to the server (CRS)
enumerate
expect-id dead:beef
fill host 0x100000 4096 pattern zero
write64 bar0 {fire_at}           # arm the sample's timer
wait-irq intx a timeout 20s
sleep 1s                          # the server's DMA: 4 KiB written, then read back
check host 0x100000 4096 pattern byte 0x41
"
    );
    let report =
        run_rc_paced(&bin, &dir, port, &script, &bridge, &["--pace-us", "1000", "--step-cycles", "1000000"]);
    let bar0 = &report["enumeration"]["bars"][0];
    assert_eq!((bar0["kind"].as_str(), bar0["size"].as_u64()), (Some("mem32"), Some(16)), "{report:#}");
    let status =
        bridge.wait_exit(WAIT).unwrap_or_else(|| panic!("the bridge kept running:\n{}", bridge.output()));
    assert_eq!(status.code(), Some(1), "the root complex left, the link closed:\n{}", bridge.output());
    let status = server.wait_exit(WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "the server exits 0 only if its DMA read-back matched: {status:?}");
}
