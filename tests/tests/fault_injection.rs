//! Fault injection end to end (docs/reliability.md): `tlpbridge run` between the sample device
//! (`tlpbridge sim device`, a separate process we stop, continue and kill) and the reference
//! root complex over the sim link (in this process, so it can withhold completions and flood
//! posted writes).
//!
//! - a server that stops answering (SIGSTOP): the read in flight gets Completer Abort after the
//!   device timeout; after SIGCONT the late reply is dropped and later reads see later writes;
//! - a server killed with a read in flight: the bridge answers it with Completer Abort (never
//!   hangs); with `--no-reconnect` it stops with status 1;
//! - a server killed and restarted at its socket path: meanwhile reads get Completer Abort and
//!   config reads CRS; the bridge reconnects, restores the host's config (BARs, MSI-X), reports
//!   the lost device state with ERR_FATAL, and MMIO, DMA and MSI-X work again;
//! - a root port that never returns completions: the device's DMA read fails with ETIMEDOUT
//!   after the completion timeout and the bridge keeps serving;
//! - a flood of posted writes: back-pressure, every write lands, in order, and the bridge's
//!   memory stays bounded;
//! - a simulator that drops the link: the bridge resets the device and stops (status 1); a new
//!   bridge and simulator session on the same server find it reset and working.

mod e2e_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sim::device::dma_engine::regs::{
    DMA_ERRNO, DOORBELL, DST_LO, ID, IRQ_CONTROL, LENGTH, SCRATCH_LO, SRC_LO, STATUS,
};
use sim::link::{SimulatorConfig, SimulatorEnd};
use sim::rc::{RcConfig, RootComplex};
use tlpbridge_tests::{Running, free_port, spawn_logged, wait_listening};

/// How long the bridge may take to read the device and listen for the root complex.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `tlpbridge run` against the server at `socket`, connects a root complex to it and
/// enumerates the device: the bridge, its log, the root complex, BAR0 and BAR2.
async fn attach(
    bin: &Path,
    dir: &tlpbridge_tests::TestDir,
    socket: &Path,
    bridge_args: &[&str],
    rc: RcConfig,
    log_name: &str,
) -> (Running, PathBuf, RootComplex<SimulatorEnd>, u64, u64) {
    let port = free_port().unwrap();
    let bridge_log = dir.join(log_name);
    let link = format!("sim-listen://127.0.0.1:{port}");
    let mut args = vec!["run", "--server", socket.to_str().unwrap(), "--link", &link];
    args.extend_from_slice(bridge_args);
    let bridge = spawn_logged(bin, &args, &[], &bridge_log).unwrap();
    wait_listening(port, LISTEN_TIMEOUT, &bridge_log).unwrap_or_else(|e| panic!("{e}"));
    let end = SimulatorEnd::connect(&format!("127.0.0.1:{port}"), &SimulatorConfig::default()).await.unwrap();
    let mut rc = RootComplex::new(end, rc).unwrap();
    let enumeration = e2e_common::enumerate_past_crs(&mut rc, &bridge_log).await;
    let bar = |slot: u8| enumeration.bars.iter().find(|b| b.slot == slot).unwrap().address;
    let (bar0, bar2) = (bar(0), bar(2));
    (bridge, bridge_log, rc, bar0, bar2)
}

struct Bench {
    device: Running,
    bridge: Running,
    bridge_log: PathBuf,
    rc: RootComplex<SimulatorEnd>,
    bar0: u64,
    bar2: u64,
    _dir: tlpbridge_tests::TestDir,
}

impl Bench {
    /// The device, the bridge (`bridge_args` added to `run`), the root complex connected and
    /// the device enumerated (BARs assigned, memory decode and bus mastering on).
    async fn start(name: &str, bridge_args: &[&str], rc: RcConfig) -> Bench {
        let bin = tlpbridge_tests::tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
        let dir = tlpbridge_tests::TestDir::new(name).unwrap_or_else(|e| panic!("{e}"));
        let socket = dir.socket_path("dev.sock").unwrap_or_else(|e| panic!("{e}"));
        let device = spawn_logged(
            &bin,
            &["sim", "device", "--socket", socket.to_str().unwrap()],
            &[],
            &dir.join("device.log"),
        )
        .unwrap();
        let (bridge, bridge_log, rc, bar0, bar2) =
            attach(&bin, &dir, &socket, bridge_args, rc, "run.log").await;
        Bench { device, bridge, bridge_log, rc, bar0, bar2, _dir: dir }
    }

    async fn read32(&mut self, address: u64) -> Result<u32, String> {
        self.rc
            .mem_read(address, 4)
            .await
            .map(|d| u32::from_le_bytes(d.try_into().unwrap()))
            .map_err(|e| e.to_string())
    }

    async fn write32(&mut self, address: u64, value: u32) {
        self.rc.mem_write(address, &value.to_le_bytes()).await.unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.bridge_log).unwrap_or_default()
    }
}

/// A root complex that waits as long as it takes for its own completions (the bridge's device
/// timeout decides) and paces simulated time so the bridge and the device keep up.
fn patient_rc() -> RcConfig {
    RcConfig { completion_timeout: 1 << 40, pace: Some(Duration::from_micros(10)), ..RcConfig::default() }
}

fn assert_completer_abort(result: Result<u32, String>, log: &str) {
    match result {
        Err(e) => assert!(e.contains("status CA"), "expected Completer Abort, got {e}\n{log}"),
        Ok(v) => panic!("expected Completer Abort, read {v:#x}\n{log}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_gets_completer_abort_and_its_late_reply_is_dropped() {
    let mut bench = Bench::start("fault-sigstop", &["--device-timeout", "300ms"], patient_rc()).await;
    let scratch = bench.bar0 + SCRATCH_LO;
    bench.write32(scratch, 1).await;
    assert_eq!(bench.read32(scratch).await, Ok(1));

    bench.device.signal("STOP").unwrap();
    let stalled = bench.read32(scratch).await;
    assert_completer_abort(stalled, &bench.log());
    // Queued behind the stalled read on the socket; the server sees it after SIGCONT.
    bench.write32(scratch, 2).await;
    bench.device.signal("CONT").unwrap();

    // The late reply to the timed-out read (value 1) must not complete this one.
    assert_eq!(bench.read32(scratch).await, Ok(2), "{}", bench.log());
    assert_eq!(bench.read32(bench.bar0 + ID).await, Ok(0xd3a0_0001));
    for value in 3..50u32 {
        bench.write32(scratch, value).await;
        assert_eq!(bench.read32(scratch).await, Ok(value));
    }
    assert!(bench.bridge.0.try_wait().unwrap().is_none(), "the bridge stopped:\n{}", bench.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_with_a_read_in_flight_fails_the_read_and_the_bridge_stops() {
    let mut bench =
        Bench::start("fault-kill", &["--device-timeout", "10s", "--no-reconnect"], patient_rc()).await;
    let scratch = bench.bar0 + SCRATCH_LO;
    bench.write32(scratch, 7).await;
    assert_eq!(bench.read32(scratch).await, Ok(7));

    bench.device.signal("STOP").unwrap();
    let pid = bench.device.0.id();
    // The read goes out while the server is stopped; the kill comes while it is in flight.
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    });
    let in_flight = bench.read32(scratch).await;
    killer.join().unwrap();
    // The bridge answers the read with CA and then stops, closing the link; the root complex
    // sees the CA or, when the close overtakes it, the closed link. Never data, never a hang.
    assert!(in_flight.is_err(), "read {in_flight:?} from a killed server");

    // Without reconnection the bridge reports the lost server and exits with status 1.
    let status = bench
        .bridge
        .wait_exit(Duration::from_secs(30))
        .unwrap()
        .unwrap_or_else(|| panic!("the bridge kept running:\n{}", bench.log()));
    assert_eq!(status.code(), Some(1), "{}", bench.log());
    let log = bench.log();
    assert!(log.contains("answering Completer Abort"), "the in-flight read was not answered:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_reconnected_restored_and_reported_with_err_fatal() {
    let bin = tlpbridge_tests::tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
    // CRS retried for 100 us of simulated time only, so that the test sees it.
    let rc = RcConfig { crs_timeout: Duration::from_micros(100), ..patient_rc() };
    let mut bench = Bench::start("fault-restart", &["--reconnect-window", "60s"], rc).await;
    let (bar0, bar2) = (bench.bar0, bench.bar2);
    bench.write32(bar0 + SCRATCH_LO, 0xfeed_f00d).await;
    assert_eq!(bench.read32(bar0 + SCRATCH_LO).await, Ok(0xfeed_f00d));
    let vendor_device = bench.rc.config_read(0).await.unwrap();
    let bar0_register = bench.rc.config_read(0x10).await.unwrap();
    let command = bench.rc.config_read(0x04).await.unwrap() & 0xffff;

    bench.device.0.kill().unwrap();
    bench.device.0.wait().unwrap();
    // The server is gone: a read cannot complete (CA, never a hang), a config read gets CRS,
    // and a posted write is dropped.
    assert_completer_abort(bench.read32(bar0 + SCRATCH_LO).await, &bench.log());
    let crs = bench.rc.config_read(0).await;
    assert!(
        crs.as_ref().is_err_and(|e| e.to_string().contains("CRS")),
        "config read while the server is gone: {crs:?}"
    );
    bench.write32(bar0 + SCRATCH_LO, 0x1111_1111).await;
    assert!(bench.bridge.0.try_wait().unwrap().is_none(), "the bridge stopped:\n{}", bench.log());

    let socket = bench._dir.socket_path("dev.sock").unwrap_or_else(|e| panic!("{e}"));
    bench.device = spawn_logged(
        &bin,
        &["sim", "device", "--socket", socket.to_str().unwrap()],
        &[],
        &bench._dir.join("device2.log"),
    )
    .unwrap();
    // Reads get CA until the bridge has reconnected; then the device answers at the same BAR.
    let mut id = Err(String::new());
    for _ in 0..3000 {
        id = bench.read32(bar0 + ID).await;
        if id.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(id, Ok(0xd3a0_0001), "{}", bench.log());
    // The device lost its state, and the bridge reported that to the root complex.
    assert_eq!(bench.read32(bar0 + SCRATCH_LO).await, Ok(0), "SCRATCH of the restarted device");
    assert!(
        bench.rc.messages().contains(&tlp::MessageCode::ERR_FATAL),
        "no ERR_FATAL; messages {:?}\n{}",
        bench.rc.messages(),
        bench.log()
    );
    // The host's configuration was restored: same IDs, BAR and Command as enumerated.
    assert_eq!(bench.rc.config_read(0).await.unwrap(), vendor_device);
    assert_eq!(bench.rc.config_read(0x10).await.unwrap(), bar0_register);
    assert_eq!(bench.rc.config_read(0x04).await.unwrap() & 0xffff, command);

    // MMIO, DMA and the interrupt enumeration programmed (MSI-X vector 0) all work again.
    bench.write32(bar0 + SCRATCH_LO, 0x0bad_cafe).await;
    assert_eq!(bench.read32(bar0 + SCRATCH_LO).await, Ok(0x0bad_cafe));
    bench.rc.mem_write(bar2 + 0x40, &[9, 8, 7, 6]).await.unwrap();
    assert_eq!(bench.rc.mem_read(bar2 + 0x40, 4).await.unwrap(), vec![9, 8, 7, 6]);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    bench.rc.memory_mut().write(0x4000, &pattern);
    bench.write32(bar0 + SRC_LO, 0x4000).await;
    bench.write32(bar0 + DST_LO, 0x8000).await;
    bench.write32(bar0 + LENGTH, 4096).await;
    bench.write32(bar0 + IRQ_CONTROL, 0x0000_0005).await; // MSI-X vector 0
    let irqs_before = bench.rc.irq_log().len();
    bench.write32(bar0 + DOORBELL, 1).await;
    let mut status = 1;
    for _ in 0..20_000 {
        status = bench.read32(bar0 + STATUS).await.unwrap();
        if status & 1 == 0 {
            break;
        }
    }
    assert_eq!(status & 0xff07, 0x0002, "STATUS {status:#x} (DONE expected)\n{}", bench.log());
    let mut copied = vec![0u8; 4096];
    assert!(bench.rc.memory().read(0x8000, &mut copied));
    assert_eq!(copied, pattern, "the copy after the restart");
    for _ in 0..1000 {
        if bench.rc.irq_log().len() > irqs_before {
            break;
        }
        bench.rc.sleep_until(bench.rc.now() + 10_000).await.unwrap();
    }
    assert!(bench.rc.irq_log().len() > irqs_before, "no MSI-X after the restart\n{}", bench.log());
    assert!(bench.bridge.0.try_wait().unwrap().is_none(), "the bridge stopped:\n{}", bench.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_port_that_never_completes_fails_the_device_dma_and_the_bridge_keeps_serving() {
    // Completions to the device's reads are scheduled a simulated hour away: never, here.
    let rc = RcConfig { completion_latency: 3_600_000_000_000, ..patient_rc() };
    let mut bench = Bench::start("fault-no-cpl", &["--cpl-timeout", "100us"], rc).await;
    let bar0 = bench.bar0;
    bench.rc.memory_mut().write(0x1000, &[0x5a; 256]);
    bench.write32(bar0 + SRC_LO, 0x1000).await;
    bench.write32(bar0 + DST_LO, 0x3000).await;
    bench.write32(bar0 + LENGTH, 256).await;
    bench.write32(bar0 + DOORBELL, 1).await;
    // Let simulated time pass well beyond the completion timeout (100 000 cycles of 1 ns).
    let until = bench.rc.now() + 300_000;
    bench.rc.sleep_until(until).await.unwrap();
    let mut status = 0;
    for _ in 0..20_000 {
        status = bench.read32(bar0 + STATUS).await.unwrap();
        if status & 1 == 0 {
            break;
        }
    }
    // ERROR with ERROR_CODE 0x03 READ_REJECTED: the bridge answered the DMA_READ with ETIMEDOUT.
    assert_eq!(status & 0xff07, 0x0304, "STATUS {status:#x}\n{}", bench.log());
    assert_eq!(bench.read32(bar0 + DMA_ERRNO).await, Ok(110), "ETIMEDOUT");
    let mut untouched = [0u8; 256];
    assert!(bench.rc.memory().read(0x3000, &mut untouched));
    assert_eq!(untouched, [0u8; 256], "nothing was written to the destination");
    assert_eq!(bench.read32(bar0 + ID).await, Ok(0xd3a0_0001));
    bench.write32(bar0 + SCRATCH_LO, 0x1234).await;
    assert_eq!(bench.read32(bar0 + SCRATCH_LO).await, Ok(0x1234));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_posted_writes_lands_once_in_order_with_bounded_bridge_memory() {
    // No pacing: the root complex sends as fast as the link takes TLPs.
    let rc = RcConfig { completion_timeout: 1 << 40, ..RcConfig::default() };
    let mut bench = Bench::start("fault-flood", &[], rc).await;
    let (bar0, bar2) = (bench.bar0, bench.bar2);
    let rss_before = bench.bridge.rss_kib().unwrap();
    const WORDS: u32 = 8192; // half of the 64 KiB BAR2 window
    for i in 0..WORDS {
        bench.rc.mem_write(bar2 + u64::from(i) * 4, &(i ^ 0xa5a5_0000).to_le_bytes()).await.unwrap();
    }
    // Order: one register written many times holds the last value.
    for value in 0..4000u32 {
        bench.rc.mem_write(bar0 + SCRATCH_LO, &value.to_le_bytes()).await.unwrap();
    }
    assert_eq!(bench.read32(bar0 + SCRATCH_LO).await, Ok(3999), "{}", bench.log());
    let back = bench.rc.mem_read(bar2, u64::from(WORDS) * 4).await.unwrap();
    for (i, word) in back.chunks_exact(4).enumerate() {
        let got = u32::from_le_bytes(word.try_into().unwrap());
        assert_eq!(got, i as u32 ^ 0xa5a5_0000, "BAR2 word {i}");
    }
    let rss_after = bench.bridge.rss_kib().unwrap();
    // 12k posted writes went through bounded queues: the bridge grew by far less than they are.
    assert!(rss_after < rss_before + 32 * 1024, "bridge RSS {rss_before} KiB -> {rss_after} KiB");
    assert!(bench.bridge.0.try_wait().unwrap().is_none(), "{}", bench.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_simulator_link_keeps_the_bridge_up_and_the_next_session_finds_the_device_reset() {
    let mut bench = Bench::start("fault-link-drop", &[], patient_rc()).await;
    let (bar0, bar2) = (bench.bar0, bench.bar2);
    bench.write32(bar0 + SCRATCH_LO, 0xfeed_f00d).await;
    bench.rc.mem_write(bar2 + 0x100, &[1, 2, 3, 4, 5, 6, 7, 8]).await.unwrap();
    assert_eq!(bench.read32(bar0 + SCRATCH_LO).await, Ok(0xfeed_f00d));

    // The simulator goes away without CLOSE (a crashed simulator): the TCP connection drops.
    let Bench { device, mut bridge, bridge_log, rc, .. } = bench;
    drop(rc);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", bridge.0.id())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).into_owned();
    let port = cmdline
        .split('\0')
        .find_map(|arg| arg.strip_prefix("sim-listen://127.0.0.1:"))
        .map(|p| p.to_owned())
        .unwrap();

    // The same bridge accepts the next simulator session (full hello again). Link down is a
    // conventional reset of the function (docs/design.md §7): the device is found at its reset
    // values, enumerates again and works.
    let end = SimulatorEnd::connect(&format!("127.0.0.1:{port}"), &SimulatorConfig::default())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&bridge_log).unwrap_or_default()));
    let mut rc = RootComplex::new(end, patient_rc()).unwrap();
    let enumeration = e2e_common::enumerate_past_crs(&mut rc, &bridge_log).await;
    let bar0 = enumeration.bars.iter().find(|b| b.slot == 0).unwrap().address;
    let read = |data: Vec<u8>| u32::from_le_bytes(data.try_into().unwrap());
    let scratch = rc
        .mem_read(bar0 + SCRATCH_LO, 4)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&bridge_log).unwrap_or_default()));
    assert_eq!(read(scratch), 0, "SCRATCH after the link-down reset");
    assert_eq!(read(rc.mem_read(bar0 + ID, 4).await.unwrap()), 0xd3a0_0001);
    rc.mem_write(bar0 + SCRATCH_LO, &0x0bad_cafeu32.to_le_bytes()).await.unwrap();
    assert_eq!(read(rc.mem_read(bar0 + SCRATCH_LO, 4).await.unwrap()), 0x0bad_cafe);
    assert!(bridge.0.try_wait().unwrap().is_none(), "the bridge stayed up across the sessions");
    let log = std::fs::read_to_string(&bridge_log).unwrap_or_default();
    assert!(log.contains("sim link down: waiting for the next simulator"), "{log}");
    assert!(log.contains("link reset: resetting the device"), "{log}");
    drop(device);
}
