//! `tlpbridge probe` (the real binary) against real vfio-user servers we did not write:
//! libvfio-user's samples, QEMU's `x-vfio-user-server` with edu and nvme, and usbvfiod.
//! A peer that is not installed skips the test locally and fails it under `CI=true`.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tlpbridge_tests::peers::{self, QemuDevice, RunningPeer};
use tlpbridge_tests::{TestDir, tlpbridge_bin};

/// Every probe request has its own 5 s timeout; a probe is a few dozen requests (1024 config
/// reads for a 4 KiB config space), so this only bounds a hung process.
const PROBE_DEADLINE: Duration = Duration::from_secs(120);

struct ProbeRun {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `tlpbridge probe --server SOCKET [extra…]` with its output in files in `dir`, killing it
/// if it runs past [`PROBE_DEADLINE`].
fn run_probe(dir: &TestDir, socket: &Path, extra: &[&str]) -> ProbeRun {
    let bin = tlpbridge_bin().unwrap();
    let stdout_path = dir.join("probe.stdout");
    let stderr_path = dir.join("probe.stderr");
    let mut child = Command::new(bin)
        .arg("probe")
        .arg("--server")
        .arg(socket)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PROBE_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tlpbridge probe still running after {PROBE_DEADLINE:?}; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    ProbeRun {
        status,
        stdout: std::fs::read_to_string(&stdout_path).unwrap(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap(),
    }
}

/// Probes `peer` with `--json` and returns the parsed document, failing with both sides'
/// output if the probe did not succeed.
fn probe_json(dir: &TestDir, peer: &mut RunningPeer) -> Value {
    let run = run_probe(dir, peer.socket(), &["--json"]);
    assert!(
        run.status.success(),
        "probe of {} failed ({}):\nstderr:\n{}\npeer output:\n{}",
        peer.peer(),
        run.status,
        run.stderr,
        peer.output()
    );
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("probe --json printed no JSON ({e}):\n{}", run.stdout))
}

/// A `"0x…"` field of the probe JSON (addresses and 64-bit sizes, docs/probe.md) as a number.
fn hex(value: &Value) -> u64 {
    let text = value.as_str().unwrap_or_else(|| panic!("{value} is not a \"0x…\" string"));
    tlp::json::hex_to_u64(text).unwrap()
}

fn region(report: &Value, index: u64) -> &Value {
    report["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["index"] == index)
        .unwrap_or_else(|| panic!("no region {index} in {:#}", report["regions"]))
}

fn irq_count(report: &Value, index: u64) -> u64 {
    let irq = report["irqs"].as_array().unwrap().iter().find(|i| i["index"] == index);
    irq.unwrap_or_else(|| panic!("no IRQ index {index} in {:#}", report["irqs"]))["count"].as_u64().unwrap()
}

fn bar(report: &Value, slot: u64) -> &Value {
    let bars = report["config"]["bars"].as_array().unwrap();
    bars.iter().find(|b| b["slot"] == slot).unwrap_or_else(|| panic!("no BAR{slot} in {bars:#?}"))
}

fn capability(report: &Value, id: u64) -> Option<&Value> {
    report["config"]["capabilities"].as_array().unwrap().iter().find(|c| c["id"] == id)
}

fn assert_ids(report: &Value, vendor: u64, device: u64) {
    let header = &report["config"]["header"];
    assert_eq!(header["vendor_id"], vendor, "{header:#}");
    assert_eq!(header["device_id"], device, "{header:#}");
}

fn assert_clean_config(report: &Value) {
    assert_eq!(report["config"]["errors"], serde_json::json!([]), "{:#}", report["config"]);
}

#[test]
fn libvfio_user_sample_server() {
    let dir = TestDir::new("probe-lvu").unwrap();
    let Some(mut peer) = peers::start_libvfio_user_server(&dir) else { return };
    let report = probe_json(&dir, &mut peer);

    assert_eq!(report["server"], peer.socket().display().to_string());
    assert_eq!(report["version"]["major"], 0);
    // The 2022 libvfio-user bundled with QEMU 7.2 predates the twin socket.
    assert_eq!(report["capabilities"]["twin_socket"], false);
    assert_ids(&report, 0xdead, 0xbeef);
    assert_eq!(report["config"]["header"]["subsystem_vendor_id"], 0xcafe);
    assert_eq!(report["config"]["header"]["subsystem_id"], 0xbabe);
    assert_eq!(report["config"]["length"], 256);
    assert_clean_config(&report);

    assert_eq!(report["device"]["is_pci"], true);
    assert_eq!(report["device"]["reset_supported"], true);
    // BAR0-BAR5, ROM, CONFIG, VGA and the (legacy) migration region 9.
    assert_eq!(report["device"]["num_regions"], 10);
    assert_eq!(report["regions"].as_array().unwrap().len(), 10);
    // BAR0: the 8-byte time_t register; BAR1: 3 pages, the first and last mappable.
    assert_eq!(hex(&region(&report, 0)["size"]), 8);
    assert_eq!(region(&report, 0)["flags"]["read"], true);
    assert_eq!(region(&report, 0)["flags"]["write"], true);
    assert_eq!(hex(&region(&report, 1)["size"]), 0x3000);
    assert_eq!(region(&report, 1)["flags"]["mmap"], true);
    assert_eq!(
        region(&report, 1)["caps"],
        serde_json::json!([{"kind": "sparse_mmap", "areas": [
            {"offset": "0x0", "size": "0x1000"}, {"offset": "0x2000", "size": "0x1000"}]}])
    );
    for unused in 2..=6 {
        assert_eq!(hex(&region(&report, unused)["size"]), 0, "region {unused}");
    }
    assert_eq!(hex(&region(&report, 7)["size"]), 256);

    // INTx only (count 1), no MSI or MSI-X vectors.
    assert_eq!(report["device"]["num_irqs"], 5);
    assert_eq!(irq_count(&report, 0), 1);
    assert_eq!(irq_count(&report, 1), 0);
    assert_eq!(irq_count(&report, 2), 0);
    assert!(peer.is_running().unwrap() || peer.exit_status().unwrap().is_some_and(|s| s.success()));
}

#[test]
fn libvfio_user_sample_server_as_text() {
    let dir = TestDir::new("probe-lvu-text").unwrap();
    let Some(peer) = peers::start_libvfio_user_server(&dir) else { return };
    let run = run_probe(&dir, peer.socket(), &[]);
    assert!(run.status.success(), "{}\n{}", run.status, run.stderr);
    assert!(run.stdout.contains("dead:beef"), "{}", run.stdout);
    assert!(run.stdout.contains("Subsystem: cafe:babe"), "{}", run.stdout);
    assert!(run.stdout.contains("twin socket         no"), "{}", run.stdout);
    assert!(!run.stdout.contains("MALFORMED"), "{}", run.stdout);
}

#[test]
fn libvfio_user_gpio_sample() {
    let dir = TestDir::new("probe-gpio").unwrap();
    let Some(mut peer) = peers::start_libvfio_user_gpio(&dir) else { return };
    let report = probe_json(&dir, &mut peer);
    assert_ids(&report, 0x494f, 0x0dc8);
    assert_clean_config(&report);
    // One 256-byte I/O BAR in slot 2, no other BAR regions.
    assert_eq!(hex(&region(&report, 2)["size"]), 0x100);
    assert_eq!(bar(&report, 2)["kind"], "io");
    assert_eq!(hex(&bar(&report, 2)["size"]), 0x100);
    for other in [0, 1, 3, 4, 5] {
        assert_eq!(hex(&region(&report, other)["size"]), 0, "region {other}");
    }
    assert_eq!(irq_count(&report, 0), 1);
}

#[test]
fn qemu_edu() {
    let dir = TestDir::new("probe-edu").unwrap();
    let Some(mut peer) = peers::start_qemu(&dir, QemuDevice::Edu) else { return };
    let report = probe_json(&dir, &mut peer);
    assert_ids(&report, 0x1234, 0x11e8);
    assert_clean_config(&report);
    assert_eq!(report["config"]["warnings"], serde_json::json!([]), "{:#}", report["config"]);
    // BAR0: 1 MiB of 32-bit non-prefetchable MMIO.
    assert_eq!(hex(&region(&report, 0)["size"]), 1 << 20);
    assert_eq!(bar(&report, 0)["kind"], "mem32");
    assert_eq!(bar(&report, 0)["prefetchable"], false);
    assert_eq!(hex(&bar(&report, 0)["size"]), 1 << 20);
    // INTA plus a single-vector MSI capability, mirrored by the IRQ indices.
    assert_eq!(report["config"]["header"]["interrupt_pin"], 1);
    let msi = capability(&report, 0x05).expect("edu has an MSI capability");
    assert_eq!(msi["msi"]["vectors_capable"], 1, "{msi:#}");
    assert_eq!(irq_count(&report, 0), 1);
    assert_eq!(irq_count(&report, 1), 1);
}

#[test]
fn qemu_nvme() {
    let dir = TestDir::new("probe-nvme").unwrap();
    let Some(mut peer) = peers::start_qemu(&dir, QemuDevice::Nvme) else { return };
    let report = probe_json(&dir, &mut peer);
    // QEMU's NVMe controller: Red Hat 1b36:0010, class 01 08 02 (NVM Express).
    assert_ids(&report, 0x1b36, 0x0010);
    let class = &report["config"]["header"]["class"];
    assert_eq!(
        (class["base"].as_u64(), class["sub"].as_u64(), class["prog_if"].as_u64()),
        (Some(1), Some(8), Some(2))
    );
    assert_clean_config(&report);
    assert_eq!(report["config"]["warnings"], serde_json::json!([]), "{:#}", report["config"]);
    assert_eq!(bar(&report, 0)["kind"], "mem64");
    assert!(hex(&region(&report, 0)["size"]) >= 0x1000);
    let msix = capability(&report, 0x11).expect("QEMU's nvme has an MSI-X capability");
    assert_eq!(irq_count(&report, 2), msix["msix"]["table_size"].as_u64().unwrap());
    assert!(capability(&report, 0x10).is_some(), "nvme is a PCI Express endpoint");
}

#[test]
fn usbvfiod_xhci() {
    let dir = TestDir::new("probe-usbvfiod").unwrap();
    let Some(mut peer) = peers::start_usbvfiod(&dir) else { return };
    let report = probe_json(&dir, &mut peer);
    // usbvfiod's xHCI: Red Hat's QEMU xHCI IDs 1b36:000d, class 0c 03 30.
    assert_ids(&report, 0x1b36, 0x000d);
    let class = &report["config"]["header"]["class"];
    assert_eq!(
        (class["base"].as_u64(), class["sub"].as_u64(), class["prog_if"].as_u64()),
        (Some(0x0c), Some(0x03), Some(0x30))
    );
    assert_clean_config(&report);
    // MSI-X with one vector, table at BAR3 + 0 and PBA at BAR3 + 0x1000.
    let msix = capability(&report, 0x11).expect("usbvfiod has an MSI-X capability");
    assert_eq!(msix["msix"]["table_size"], 1, "{msix:#}");
    assert_eq!(msix["msix"]["table_bir"], 3, "{msix:#}");
    assert_eq!(msix["msix"]["pba_bir"], 3, "{msix:#}");
    assert_eq!(msix["msix"]["pba_offset"], 0x1000, "{msix:#}");
    assert_eq!(irq_count(&report, 2), 1);
    assert_eq!(bar(&report, 0)["kind"], "mem32");
    assert_eq!(hex(&region(&report, 0)["size"]), 0x4000);
    assert_eq!(hex(&region(&report, 3)["size"]), 0x2000);
    // usbvfiod serves one connection and exits when it closes; no panic on the way (it panics
    // on a DMA_MAP without fd, which the probe never sends, and on unaligned config reads).
    let status = peer.wait_exit(Duration::from_secs(20)).unwrap();
    let output = peer.output();
    assert!(status.success() && !output.contains("panicked"), "usbvfiod exited with {status}:\n{output}");
}
