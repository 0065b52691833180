//! A misbehaving simulator in front of a real `tlpbridge run` process with the sample device
//! (`tlpbridge sim device`) behind it. The simulator is the test: the reference root complex's
//! model (`sim::rc::RootComplex`) over a `SimulatorEnd` that can swallow the device's DMA reads.
//!
//! - Stall: the device's DMA MRds are never answered. While simulated time stands still no
//!   completion timeout fires, however long the wall-clock wait; once time moves past the
//!   bridge's `--cpl-timeout`, the bridge fails the DMA and the card reports READ_REJECTED.
//! - Disconnect mid-transfer: the simulator drops the TCP connection with the device's reads in
//!   flight. As docs/run.md and docs/design.md say, the bridge fails the in-flight DMA back to the
//!   device with an error reply (ENOTCONN) before it closes the connection, and `tlpbridge run`
//!   exits with status 1 ("link closed"); the device process is unharmed and serves the next
//!   bridge.

mod e2e_common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e_common::{Running, spawn};
// The sample card's BAR0 (docs/sample-device.md).
use sim::device::dma_engine::regs::{DMA_ERRNO, STATUS};
use sim::device::dma_engine::{error_code, status as status_bits};
use sim::link::wire::hello_flags;
use sim::link::{HelloParams, SimListener, SimMode, SimulatorConfig, SimulatorEnd};
use sim::rc::{RcConfig, RootComplex, RootPortIo};
use tlp::split::LinkParams;
use tlpbridge_tests::{TestDir, tlpbridge_bin};

const WAIT: Duration = Duration::from_secs(60);
/// The bridge's completion timeout, simulated: 2 ms = 2 000 000 cycles of 1 ns.
const CPL_TIMEOUT_CYCLES: u64 = 2_000_000;
const SRC: u64 = 0x10_0000;
const DST: u64 = 0x20_0000;
const LEN: u32 = 4096;

/// The simulator end, swallowing the device's memory reads while `stall` is set.
struct StallingPort {
    end: SimulatorEnd,
    stall: Arc<AtomicBool>,
    swallowed: Arc<AtomicUsize>,
}

impl RootPortIo for StallingPort {
    fn now(&self) -> u64 {
        self.end.now()
    }

    async fn send_tlp(&mut self, bytes: Vec<u8>) -> sim::Result<()> {
        self.end.send_tlp(&bytes).await
    }

    fn try_recv(&mut self) -> sim::Result<Option<Vec<u8>>> {
        while let Some(tlp) = self.end.try_recv()? {
            let is_read = tlp::Tlp::parse(&tlp.bytes).is_ok_and(|t| t.kind_name() == "MRd");
            if is_read && self.stall.load(Ordering::SeqCst) {
                self.swallowed.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            return Ok(Some(Vec::from(tlp.bytes)));
        }
        Ok(None)
    }

    async fn advance_to(&mut self, cycle: u64) -> sim::Result<()> {
        self.end.advance_to(cycle).await
    }

    fn lockstep(&self) -> bool {
        false
    }
}

struct Setup {
    _dir: TestDir,
    device: Running,
    socket: std::path::PathBuf,
    bridge: Running,
    capture: std::path::PathBuf,
    rc: RootComplex<StallingPort>,
    stall: Arc<AtomicBool>,
    swallowed: Arc<AtomicUsize>,
    bar0: u64,
}

fn simulator_config() -> SimulatorConfig {
    SimulatorConfig {
        hello: HelloParams {
            mode: SimMode::FreeRunning,
            ps_per_tick: 1000,
            link: LinkParams::DEFAULT,
            tag_flags: hello_flags::EXTENDED_TAG,
            link_latency_ticks: 0,
        },
        connect_timeout: WAIT,
        ..SimulatorConfig::default()
    }
}

fn rc_config() -> RcConfig {
    RcConfig {
        link: LinkParams::DEFAULT,
        ps_per_cycle: 1000,
        // Free-running time, paced: 1000 cycles per step and at least 20 µs (in practice about
        // a timer tick) of wall time per step, so the bridge's 2 ms completion timeout is 2000
        // steps away while an MMIO read completes in a few.
        step_cycles: 1000,
        pace: Some(Duration::from_micros(20)),
        ..RcConfig::default()
    }
}

/// Starts a bridge on `socket` connecting to a fresh listener; returns it and the root complex.
async fn connect_bridge(
    bin: &Path,
    dir: &TestDir,
    socket: &Path,
    name: &str,
) -> (Running, std::path::PathBuf, RootComplex<StallingPort>, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let listener = SimListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let capture = dir.join(format!("{name}.pcapng"));
    // Info logs: the bridge prints its counters when it stops.
    let bridge = e2e_common::spawn_with_env(
        bin,
        &[
            "run",
            "--server",
            socket.to_str().unwrap(),
            "--link",
            &format!("sim://127.0.0.1:{port}"),
            "--cpl-timeout",
            "2ms",
            "--pcap",
            capture.to_str().unwrap(),
        ],
        &[("RUST_LOG", "info")],
        dir.join(format!("{name}-run.log")),
    );
    let end = listener
        .accept_simulator(&simulator_config())
        .await
        .unwrap_or_else(|e| panic!("{e}:\n{}", bridge.output()));
    let stall = Arc::new(AtomicBool::new(false));
    let swallowed = Arc::new(AtomicUsize::new(0));
    let port = StallingPort { end, stall: stall.clone(), swallowed: swallowed.clone() };
    let rc = RootComplex::new(port, rc_config()).unwrap();
    (bridge, capture, rc, stall, swallowed)
}

async fn setup(label: &str) -> Setup {
    let bin = tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
    let dir = TestDir::new(label).unwrap_or_else(|e| panic!("{e}"));
    let socket = dir.socket_path("card.sock").unwrap_or_else(|e| panic!("{e}"));
    // The card's own DMA timeout (wall clock) is far away: only the bridge may end the DMA.
    let device = spawn(
        &bin,
        &["sim", "device", "--socket", socket.to_str().unwrap(), "--dma-timeout-ms", "600000"],
        dir.join("device.log"),
    );
    e2e_common::wait_for_path(&socket, &device, WAIT);
    let (bridge, capture, mut rc, stall, swallowed) = connect_bridge(&bin, &dir, &socket, "bridge").await;
    // The bridge may still be connecting to the card: CRS retries are 1000 cycles apart.
    rc.sleep_until(rc.now() + 500_000).await.unwrap();
    let enumeration = rc.enumerate().await.unwrap_or_else(|e| panic!("{e}:\n{}", bridge.output()));
    assert_eq!((enumeration.vendor_id, enumeration.device_id), (0x1234, 0x7e57));
    let bar0 = enumeration.bars.iter().find(|b| b.slot == 0).unwrap().address;
    Setup { _dir: dir, device, socket, bridge, capture, rc, stall, swallowed, bar0 }
}

async fn read32(rc: &mut RootComplex<StallingPort>, address: u64) -> u32 {
    let bytes = rc.mem_read(address, 4).await.unwrap();
    u32::from_le_bytes(bytes.try_into().unwrap())
}

/// Programs a 4 KiB copy with the reads stalled and rings the doorbell; returns once the
/// bridge has sent (and the simulator swallowed) the first DMA read, without advancing time.
async fn start_stalled_copy(s: &mut Setup) {
    s.stall.store(true, Ordering::SeqCst);
    s.rc.mem_write(s.bar0 + 0x08, &SRC.to_le_bytes()).await.unwrap();
    s.rc.mem_write(s.bar0 + 0x10, &DST.to_le_bytes()).await.unwrap();
    s.rc.mem_write(s.bar0 + 0x18, &LEN.to_le_bytes()).await.unwrap();
    s.rc.mem_write(s.bar0 + 0x1c, &1u32.to_le_bytes()).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while s.swallowed.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no DMA read from the bridge:\n{}", s.bridge.output());
        s.rc.io_mut().try_recv().unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_simulator_times_out_dma_in_simulated_time_not_wall_time() {
    let mut s = setup("e2e-stall").await;
    start_stalled_copy(&mut s).await;
    // Simulated time stands still for 2 s of wall time (1000 times the completion timeout).
    let frozen_at = s.rc.now();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        s.rc.io_mut().try_recv().unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.rc.now(), frozen_at);
    // All 8 reads of the 4 KiB (MRRS 512) are out, unanswered, and the copy is still running.
    assert_eq!(s.swallowed.load(Ordering::SeqCst), 8);
    let status = read32(&mut s.rc, s.bar0 + STATUS).await;
    assert_eq!(
        status & (status_bits::BUSY | status_bits::ERROR),
        status_bits::BUSY,
        "status {status:#x}: no timeout without time"
    );
    assert!(s.rc.now() - frozen_at < CPL_TIMEOUT_CYCLES, "the status read itself must not reach the timeout");

    // Now time moves past the completion timeout: the bridge fails the DMA read, the card
    // reports it.
    s.rc.sleep_until(frozen_at + CPL_TIMEOUT_CYCLES + 100_000).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let status = read32(&mut s.rc, s.bar0 + STATUS).await;
        if status & status_bits::BUSY == 0 {
            break status;
        }
        assert!(Instant::now() < deadline, "the copy never ended:\n{}", s.bridge.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status & status_bits::ERROR, status_bits::ERROR, "status {status:#x}");
    assert_eq!(
        (status & status_bits::ERROR_CODE_MASK) >> status_bits::ERROR_CODE_SHIFT,
        u32::from(error_code::READ_REJECTED),
        "status {status:#x}"
    );
    assert_ne!(read32(&mut s.rc, s.bar0 + DMA_ERRNO).await, 0, "the client's error reply carried an errno");
    assert_eq!(s.swallowed.load(Ordering::SeqCst), 8, "no retried reads");

    // Orderly close; the bridge then exits as documented (status 1, link closed).
    s.rc.into_io().end.close().await.unwrap();
    let status =
        s.bridge.wait_exit(WAIT).unwrap_or_else(|| panic!("bridge kept running:\n{}", s.bridge.output()));
    assert_eq!(status.code(), Some(1), "{}", s.bridge.output());
    // The bridge counted the timeouts (one per outstanding read it gave up on).
    let output = s.bridge.output();
    let counters = output
        .lines()
        .rev()
        .find(|l| l.contains("completion_timeouts="))
        .unwrap_or_else(|| panic!("{output}"));
    let timeouts: u64 = counters
        .split("completion_timeouts=")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(timeouts >= 1, "{counters}");
    // The capture shows the DMA_READ answered with an error.
    let bin = tlpbridge_bin().unwrap();
    let records = e2e_common::pcap_show_json(&bin, &s.capture);
    assert!(
        records.iter().any(|r| r["kind"] == "DMA_READ"
            && r["vfio_user"]["type"] == "reply"
            && !r["vfio_user"]["error"].is_null()),
        "no DMA_READ error reply in the capture"
    );
    assert!(s.device.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulator_that_disconnects_mid_transfer_fails_the_dma_and_the_bridge_exits() {
    let mut s = setup("e2e-disconnect").await;
    start_stalled_copy(&mut s).await;
    // Gone without CLOSE, with the device's reads in flight.
    drop(s.rc);
    let status =
        s.bridge.wait_exit(WAIT).unwrap_or_else(|| panic!("bridge kept running:\n{}", s.bridge.output()));
    assert_eq!(status.code(), Some(1), "{}", s.bridge.output());
    let output = s.bridge.output();
    assert!(output.contains("tlpbridge run: ") && output.contains("link closed"), "{output}");

    // The in-flight DMA read failed for the device with an error reply (ENOTCONN, docs/design.md
    // §7), written before `run` closed the vfio-user connection; never with data.
    let bin = tlpbridge_bin().unwrap();
    let records = e2e_common::pcap_show_json(&bin, &s.capture);
    assert!(
        records.iter().any(|r| r["kind"] == "DMA_READ" && r["vfio_user"]["type"] == "command"),
        "the device's DMA_READ is not in the capture"
    );
    let dma_replies: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["kind"] == "DMA_READ" && r["vfio_user"]["type"] == "reply").collect();
    assert!(!dma_replies.is_empty(), "the in-flight DMA_READ got no reply before the close");
    let enotconn = nix::errno::Errno::ENOTCONN as u64;
    assert!(
        dma_replies.iter().all(|r| r["vfio_user"]["error"].as_u64() == Some(enotconn)),
        "{dma_replies:?}"
    );

    // The device survived and serves the next bridge: enumerate and read its ID register.
    assert!(s.device.is_running(), "{}", s.device.output());
    let dir = TestDir::new("e2e-disconnect-again").unwrap();
    let (mut bridge, _, mut rc, _, _) = connect_bridge(&bin, &dir, &s.socket, "again").await;
    rc.sleep_until(rc.now() + 500_000).await.unwrap();
    let enumeration = rc.enumerate().await.unwrap_or_else(|e| panic!("{e}:\n{}", bridge.output()));
    let bar0 = enumeration.bars.iter().find(|b| b.slot == 0).unwrap().address;
    assert_eq!(read32(&mut rc, bar0).await, 0xd3a0_0001);
    rc.into_io().end.close().await.unwrap();
    assert!(bridge.wait_exit(WAIT).is_some());
}
