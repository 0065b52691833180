//! The bridge behind an emulated FPGA over a pty serial link: the engine, the sample DMA card
//! (`docs/sample-device.md`) and the reference root complex hosted by the FPGA emulator.

use std::sync::Arc;
use std::time::Duration;

use bridge::capture::format::TlpHeaderRepr;
use bridge::capture::read::read_capture;
use bridge::capture::{Capture, CaptureConfig};
use bridge::engine::{Engine, EngineConfig, ServerEndpoint};
use fpga::dll::DllConfig;
use fpga::emulator::{EmulatorConfig, EmulatorReport, FpgaPort, PtyPort, run_rc, start_fpga_side};
use fpga::faults::FaultConfig;
use fpga::{LinkStatus, Spec};
use sim::device::{DmaEngine, DmaEngineConfig, ServerConfig};
use sim::rc::Script;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(30);

/// Keep-alive intervals of silence before either side declares the link down. The default
/// (5 × 100 ms) takes the link down when a loaded machine starves a task for half a second;
/// these tests check delivery, not keep-alive timing, and an unplug is seen as end of file.
const PATIENT_MISSED: u32 = 1000;

/// Posted writes of distinct values to BAR2 (the card's RAM), then every one read back: a lost,
/// duplicated or reordered write changes a value read back.
fn posted_writes_then_readback(count: u32) -> String {
    let mut s = String::new();
    for i in 0..count {
        s += &format!("write32 bar2+{:#x} {:#x}\n", i * 4, 0x5a00_0000 + i * 0x0101);
    }
    // A later write to the same address must win.
    s += "write32 bar2+0x0 0x11111111\nwrite32 bar2+0x0 0x22222222\n";
    for i in 1..count {
        s += &format!("read32 bar2+{:#x} expect {:#x}\n", i * 4, 0x5a00_0000 + i * 0x0101);
    }
    s += "read32 bar2+0x0 expect 0x22222222\n";
    s
}

/// Enumeration, MMIO, a 4 KiB DMA copy through host memory, and its MSI.
fn workload(writes: u32) -> String {
    format!(
        "enumerate
expect-id 1234:7e57
read32 bar0 expect 0xd3a00001
write64 bar0+0x30 0x0123456789abcdef
read64 bar0+0x30 expect 0x0123456789abcdef
{}enable-msi
fill host 0x10000 4096 pattern inc
write32 bar0+0x08 0x10000
write32 bar0+0x0c 0
write32 bar0+0x10 0x30000
write32 bar0+0x14 0
write32 bar0+0x18 4096
write32 bar0+0x24 0x3
write32 bar0+0x1c 1
wait-irq msi 0 timeout 5s
check host 0x30000 4096 equals host 0x10000
read32 bar0+0x20 expect 0x2
read32 bar0+0x28 expect 1
",
        posted_writes_then_readback(writes)
    )
}

/// `config` with the emulator side as patient as the bridge side (see [`PATIENT_MISSED`]).
fn patient(mut config: EmulatorConfig) -> EmulatorConfig {
    config.dll.missed_keepalives = PATIENT_MISSED;
    config
}

struct Bench {
    engine: Engine,
    bridge_status: watch::Receiver<LinkStatus>,
    dir: tempfile::TempDir,
    pty: Option<PtyPort>,
    fpga: Option<FpgaPort>,
}

async fn start(config: &EmulatorConfig, link_options: &str, engine_config: EngineConfig) -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("card.sock");
    let card = Arc::new(DmaEngine::new(DmaEngineConfig::default()).unwrap());
    let serve_path = socket.clone();
    tokio::spawn(async move {
        let _ = sim::device::serve(&serve_path, card, ServerConfig::default(), std::future::pending()).await;
    });
    let mut pty = PtyPort::open(Some(&dir.path().join("ttyFPGA"))).unwrap();
    let fpga = start_fpga_side(pty.take_device().unwrap(), config);
    let separator = if link_options.is_empty() { "?" } else { "&" };
    let spec =
        Spec::parse(&format!("{}{link_options}{separator}missed={PATIENT_MISSED}", pty.link_spec())).unwrap();
    let (link, bridge_status) = fpga::open_monitored(spec).await.unwrap();
    let engine = Engine::start(link, ServerEndpoint::Path(socket), engine_config).await.unwrap();
    Bench { engine, bridge_status, dir, pty: Some(pty), fpga: Some(fpga) }
}

async fn run(bench: &mut Bench, config: &EmulatorConfig, script: &str) -> EmulatorReport {
    let script = Script::parse("fpga-test.rcs", script).unwrap();
    let fpga = bench.fpga.take().unwrap();
    let (report, fpga) = tokio::time::timeout(Duration::from_secs(120), run_rc(fpga, config, &script, WAIT))
        .await
        .expect("the workload finishes")
        .unwrap();
    bench.fpga = Some(fpga);
    report
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        // Wall-clock link with replays: give DMA reads and the card time to answer.
        completion_timeout: Some(Duration::from_secs(5)),
        device_timeout: Some(Duration::from_secs(5)),
        ..EngineConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enumeration_mmio_dma_and_msi_over_a_clean_serial_link() {
    let config = patient(EmulatorConfig::default());
    let mut bench = start(&config, "?baud=3000000", engine_config()).await;
    let report = run(&mut bench, &config, &workload(64)).await;
    assert!(report.rc.passed, "{report}");
    assert_eq!(report.link.stats.bad_frames, 0);
    assert_eq!(report.link.stats.retransmissions, 0);
    assert!(report.rc.dma_read_bytes >= 4096 && report.rc.dma_write_bytes >= 4096, "{report}");
    let bridge = bench.bridge_status.borrow().stats;
    assert_eq!(bridge.overruns, 0);
    bench.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bit_errors_and_dropped_frames_lose_and_duplicate_nothing() {
    let mut dll = DllConfig::new(8);
    dll.replay_timeout = Duration::from_millis(50);
    let config = patient(EmulatorConfig {
        dll,
        faults: FaultConfig {
            bit_error_rate: 1e-4,
            drop_frame_rate: 0.01,
            seed: 7,
            ..FaultConfig::default()
        },
        ..EmulatorConfig::default()
    });
    // Captured: every TLP the bridge's data-link layer resends is a record flagged retransmitted.
    let capture_dir = tempfile::tempdir().unwrap();
    let capture_path = capture_dir.path().join("replays.pcapng");
    let (capture, writer) = Capture::create(&capture_path, CaptureConfig::default()).unwrap();
    let engine_config = EngineConfig { capture: Some(capture), ..engine_config() };
    let mut bench = start(&config, "?replay-ms=50", engine_config).await;
    let report = run(&mut bench, &config, &workload(256)).await;
    assert!(report.rc.passed, "{report}");
    assert!(report.faults.bits_flipped > 0 && report.faults.frames_dropped > 0, "{report}");
    let bridge = bench.bridge_status.borrow().stats;
    assert!(report.link.stats.retransmissions + bridge.retransmissions > 0, "{report}");
    assert_eq!(bridge.links_down, 0);
    bench.engine.shutdown().await;
    let bridge = bench.bridge_status.borrow().stats;
    writer.finish().unwrap();
    let file = read_capture(&capture_path).unwrap();
    let retransmitted = file
        .records
        .iter()
        .filter(|r| r.interface == 0)
        .filter(|r| TlpHeaderRepr::parse(&r.data).is_ok_and(|(h, _)| h.flags.retransmitted))
        .count() as u64;
    assert!(bridge.retransmissions > 0, "the bridge's side resent nothing: {bridge:?}");
    assert_eq!(retransmitted, bridge.retransmissions, "one record per TLP the bridge's link resent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_starved_fpga_is_never_overrun_by_dma() {
    let config = patient(EmulatorConfig { dll: DllConfig::new(1), ..EmulatorConfig::default() });
    let mut bench = start(&config, "", engine_config()).await;
    // The copy's 4 KiB of MWr at MPS 128 is 32 TLPs in a burst towards a 1-frame buffer.
    let report = run(&mut bench, &config, &workload(16)).await;
    assert!(report.rc.passed, "{report}");
    assert_eq!(report.link.stats.overruns, 0);
    assert!(bench.bridge_status.borrow().stats.credit_stalls > 0);
    bench.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_reset_from_the_root_port_resets_the_device_and_it_works_again() {
    let config = patient(EmulatorConfig::default());
    let mut bench = start(&config, "", engine_config()).await;
    let before = "enumerate
write64 bar0+0x30 0x0123456789abcdef
write32 bar2+0x40 0x5a5a5a5a
read64 bar0+0x30 expect 0x0123456789abcdef
read32 bar2+0x40 expect 0x5a5a5a5a
";
    let report = run(&mut bench, &config, before).await;
    assert!(report.rc.passed, "{report}");
    // Secondary Bus Reset at the root port: the FPGA link carries it as a hot reset.
    bench.fpga.as_mut().unwrap().hot_reset(WAIT).await.unwrap();
    // The BARs are unassigned again and the card is back at its power-on state.
    let after = "enumerate
read64 bar0+0x30 expect 0
read32 bar2+0x40 expect 0
";
    let report = run(&mut bench, &config, &format!("{after}{}", workload(8))).await;
    assert!(report.rc.passed, "{report}");
    assert_eq!(bench.engine.counters().snapshot().resets, 1);
    let status = bench.bridge_status.borrow().clone();
    assert_eq!((status.hot_resets, status.device_lost, status.stats.links_up), (1, 0, 2), "{status:?}");
    bench.engine.shutdown().await;
}

/// `tlpbridge fpga emulate --hot-reset`: the emulator signals the hot reset once the bridge has
/// the link up (the engine resets the card), then runs its script against the card.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_program_signals_a_hot_reset_that_resets_the_card() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("card.sock");
    let card = Arc::new(DmaEngine::new(DmaEngineConfig::default()).unwrap());
    let serve_path = socket.clone();
    tokio::spawn(async move {
        let _ = sim::device::serve(&serve_path, card, ServerConfig::default(), std::future::pending()).await;
    });
    let script = dir.path().join("after-reset.rcs");
    std::fs::write(
        &script,
        "enumerate\nread64 bar0+0x30 expect 0\nwrite64 bar0+0x30 0x5a\nread64 bar0+0x30 expect 0x5a\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tlpbridge"))
        .args(["fpga", "emulate", "--pty", "--hot-reset", "--wait-s", "30", "--script"])
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let spec = Spec::parse(first.trim()).unwrap();
    let (link, status) = fpga::open_monitored(spec).await.unwrap();
    let engine = Engine::start(link, ServerEndpoint::Path(socket), engine_config()).await.unwrap();
    let finished = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        (child.wait().unwrap(), rest)
    });
    let (code, report) = tokio::time::timeout(Duration::from_secs(120), finished).await.unwrap().unwrap();
    assert!(code.success(), "{report}");
    assert!(report.contains("(1 hot resets)"), "{report}");
    assert_eq!(status.borrow().hot_resets, 1);
    // The emulator has exited and closed the pty: that link down is the second device reset.
    let counters = engine.counters();
    let deadline = tokio::time::Instant::now() + WAIT;
    while status.borrow().device_lost == 0 || counters.snapshot().resets < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{:?} {:?}", status.borrow(), counters.snapshot());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!((counters.snapshot().resets, status.borrow().hot_resets), (2, 1));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_fails_the_dma_in_flight_and_replug_brings_the_link_back() {
    let config = patient(EmulatorConfig::default());
    let mut bench = start(&config, "", engine_config()).await;
    // Start a 1 MiB copy and stop serving the device's reads: they stay in flight.
    let start_copy = "enumerate
fill host 0x10000 1048576 pattern inc
write32 bar0+0x08 0x10000
write32 bar0+0x10 0x200000
write32 bar0+0x18 1048576
write32 bar0+0x1c 1
";
    let report = run(&mut bench, &config, start_copy).await;
    assert!(report.rc.passed, "{report}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while bench.engine.tags_in_use() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the copy never read host memory");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Unplug: the pty pair closes.
    bench.fpga = None;
    bench.pty = None;
    let counters = bench.engine.counters();
    let deadline = tokio::time::Instant::now() + WAIT;
    while counters.snapshot().resets == 0 {
        assert!(tokio::time::Instant::now() < deadline, "link down did not reset the device");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        bench.engine.counters().snapshot().completion_timeouts,
        0,
        "failed by link down, not by timeout"
    );
    // Replug behind the same path: the bridge reopens it and the device works again.
    let mut pty = PtyPort::open(Some(&bench.dir.path().join("ttyFPGA"))).unwrap();
    bench.fpga = Some(start_fpga_side(pty.take_device().unwrap(), &config));
    bench.pty = Some(pty);
    let report = run(&mut bench, &config, &workload(16)).await;
    assert!(report.rc.passed, "{report}");
    let status = bench.bridge_status.borrow().clone();
    assert_eq!((status.device_lost, status.reopened, status.stats.links_up), (1, 1, 2), "{status:?}");
    bench.engine.shutdown().await;
}
