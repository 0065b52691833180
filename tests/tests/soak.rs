//! Soak (docs/reliability.md §3): mixed operations through `tlpbridge run` between the sample
//! device and the reference root complex, with the server stopped (SIGSTOP) for a while, or
//! killed and started again at the same socket, at random moments. At the end every posted
//! write to BAR2 is there (the model of BAR2 equals what the device holds, read back whole),
//! every read got exactly one completion (a value equal to the model, or CA while the server was
//! stopped, gone or just resumed; no completion the root complex did not expect, none the
//! bridge did not expect), every DMA copy completed with its MSI-X interrupt and the right
//! bytes, no posted write was dropped by the bridge while the server was there (its counters at
//! SIGINT), and the bridge's RSS did not grow between the first quarter and the end. A restart
//! resets the model (the new device is at its reset values); while the server is gone every read
//! is CA and every posted write is lost and counted by the bridge (`posted_lost`), a DMA copy
//! rung just before the kill is abandoned, and each restart is one ERR_FATAL at the root
//! complex and one `server_reconnects`.
//!
//! Knobs (environment variables; the defaults are what CI runs, well under 30 s):
//! - `TLPBRIDGE_SOAK_OPS`: operations (default 1000);
//! - `TLPBRIDGE_SOAK_SEED`: the seed of the operation mix (default 0x5eed1234);
//! - `TLPBRIDGE_SOAK_STALL_PERMILLE`: chance per operation, in ‰, of stopping the server
//!   (default 10);
//! - `TLPBRIDGE_SOAK_RESTART_PERMILLE`: chance per operation, in ‰, of killing the server
//!   (SIGKILL) and starting a new one at the same socket (default 3);
//! - `TLPBRIDGE_SOAK_STALL_OPS`: a stop lasts 1..=this many operations (default 20); all but
//!   the first read while stopped become writes, so long stops flood the stopped server; a
//!   restart has 1..=this many operations (reads and writes) before the new server starts;
//! - `TLPBRIDGE_SOAK_STEP_US`: longest wall time of one root-complex step, which ends early
//!   when the bridge sends a TLP (default 1000; 0: 100 ns steps with only a yield between them,
//!   the root complex spinning, as the soak ran before);
//! - `TLPBRIDGE_SOAK_DEVICE_DMA_TIMEOUT_MS`: the device's wait for a DMA reply (default 30000;
//!   small values reproduce the historical TIMEOUT failure, see docs/reliability.md §3);
//! - `TLPBRIDGE_SOAK_DEVICE_TIMEOUT_MS`: the bridge's `--device-timeout` (default 500), what a
//!   read costs while the server is stopped.
//!
//! A million operations (986 s in a debug build on 2 cores, docs/reliability.md §3; progress
//! every 10 000):
//! `TLPBRIDGE_SOAK_OPS=1000000 TLPBRIDGE_SOAK_STALL_PERMILLE=2 TLPBRIDGE_SOAK_SEED=7
//! TLPBRIDGE_SOAK_DEVICE_TIMEOUT_MS=200 cargo test -p tlpbridge-tests --test soak -- --nocapture`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sim::link::{SimulatorConfig, SimulatorEnd};
use sim::rc::{IrqKind, RcConfig, RootComplex, RootPortIo};

/// The free-running sim link with steps that end early: after telling the bridge the new time,
/// `advance_to` waits up to `step` of wall time for the bridge's next TLP instead of sleeping
/// blindly, so the root complex neither spins (a TIME message per few microseconds, a core
/// kept busy) nor adds a fixed sleep to every round trip.
struct WakingSimEnd {
    end: SimulatorEnd,
    step: Duration,
    early: Option<Vec<u8>>,
}

impl RootPortIo for WakingSimEnd {
    fn now(&self) -> u64 {
        self.end.now()
    }

    async fn send_tlp(&mut self, bytes: Vec<u8>) -> sim::Result<()> {
        self.end.send_tlp(&bytes).await
    }

    fn try_recv(&mut self) -> sim::Result<Option<Vec<u8>>> {
        match self.early.take() {
            Some(bytes) => Ok(Some(bytes)),
            None => Ok(self.end.try_recv()?.map(|tlp| Vec::from(tlp.bytes))),
        }
    }

    async fn advance_to(&mut self, cycle: u64) -> sim::Result<()> {
        self.end.advance_to(cycle).await?;
        if !self.step.is_zero() && self.early.is_none() {
            self.early = self.end.recv(self.step).await?.map(|tlp| Vec::from(tlp.bytes));
        }
        Ok(())
    }

    fn lockstep(&self) -> bool {
        false
    }
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(bin: &Path, args: &[&str], log: &Path) -> Running {
    let log = std::fs::File::create(log).unwrap();
    Running(
        Command::new(bin)
            .args(args)
            // Warnings, the bridge's counters when it stops, and the engine's steps when the
            // server goes away and comes back (`SERVER_LOST_LINE`).
            .env("RUST_LOG", "warn,bridge::engine=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn signal(child: &Running, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(child.0.id().to_string()).status().unwrap();
    assert!(status.success());
}

fn rss_kib(child: &Running) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("{name}={text}: {e}"))
        }
        Err(_) => default,
    }
}

/// xorshift64*: reproducible from the seed printed at the start.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const BAR2_SIZE: u64 = 0x1_0000;
const SRC_LO: u64 = 0x08;
const DST_LO: u64 = 0x10;
const LENGTH: u64 = 0x18;
const DOORBELL: u64 = 0x1c;
const STATUS: u64 = 0x20;
const IRQ_CONTROL: u64 = 0x24;
const DMA_ERRNO: u64 = 0x2c;

/// What the bridge logs once it has marked the server gone (reads CA, posted writes dropped and
/// counted as `posted_lost`), docs/run.md "When the server goes away".
const SERVER_LOST_LINE: &str = "waiting for the vfio-user server to come back";

#[derive(Debug, Default)]
struct Tally {
    writes: u64,
    reads: u64,
    reads_aborted: u64,
    /// Reads answered CA while the server was running (it answered late).
    reads_aborted_server_late: u64,
    completions_after_abort: u64,
    dma_copies: u64,
    dma_bytes: u64,
    interrupts: u64,
    stops: u64,
    restarts: u64,
    /// Reads while the server was gone (all CA).
    reads_server_gone: u64,
    /// Writes while the server was gone, and their MWr TLPs (each one `posted_lost`).
    writes_server_gone: u64,
    mwr_server_gone: u64,
    /// DMA copies rung just before a kill, never waited for.
    dma_copies_abandoned: u64,
    dma_bytes_abandoned: u64,
}

/// Wall time spent per kind of operation: where a slow soak spends its time.
#[derive(Default)]
struct Profile(BTreeMap<&'static str, (u64, Duration, Duration)>);

impl Profile {
    fn add(&mut self, kind: &'static str, started: Instant) {
        let entry = self.0.entry(kind).or_default();
        let took = started.elapsed();
        entry.0 += 1;
        entry.1 += took;
        entry.2 = entry.2.max(took);
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (kind, (count, total, longest)) in &self.0 {
            let mean = total.checked_div(u32::try_from(*count).unwrap_or(u32::MAX)).unwrap_or_default();
            writeln!(
                f,
                "  {kind:<22} {count:>9} ops {:>9.3} s  mean {mean:>10.1?}  longest {longest:>10.1?}",
                total.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_operations_with_server_stalls_keep_every_write_and_answer_every_read() {
    let ops = env_u64("TLPBRIDGE_SOAK_OPS", 1000);
    let seed = env_u64("TLPBRIDGE_SOAK_SEED", 0x5eed_1234);
    let stall_permille = env_u64("TLPBRIDGE_SOAK_STALL_PERMILLE", 10);
    assert!(stall_permille <= 100, "TLPBRIDGE_SOAK_STALL_PERMILLE={stall_permille}: at most 100");
    let restart_permille = env_u64("TLPBRIDGE_SOAK_RESTART_PERMILLE", 3);
    assert!(restart_permille <= 100, "TLPBRIDGE_SOAK_RESTART_PERMILLE={restart_permille}: at most 100");
    let dma_timeout_ms = env_u64("TLPBRIDGE_SOAK_DEVICE_DMA_TIMEOUT_MS", 30_000).to_string();
    let device_timeout = format!("{}ms", env_u64("TLPBRIDGE_SOAK_DEVICE_TIMEOUT_MS", 500));
    let stall_ops = env_u64("TLPBRIDGE_SOAK_STALL_OPS", 20).max(1);
    let step_us = env_u64("TLPBRIDGE_SOAK_STEP_US", 1000);
    eprintln!(
        "soak: {ops} operations, seed {seed:#x}, stall {stall_permille}‰ for up to {stall_ops} operations, \
         restart {restart_permille}‰, device timeout {device_timeout}, device DMA timeout {dma_timeout_ms} ms, \
         root-complex step {step_us} µs"
    );
    let bin = tlpbridge_tests::tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
    let dir = tlpbridge_tests::TestDir::new("soak").unwrap_or_else(|e| panic!("{e}"));
    let socket = dir.socket_path("dev.sock").unwrap_or_else(|e| panic!("{e}"));
    let device_args =
        ["sim", "device", "--socket", socket.to_str().unwrap(), "--dma-timeout-ms", &dma_timeout_ms];
    let mut device = spawn(&bin, &device_args, &dir.join("device.log"));
    let port = tlpbridge_tests::free_port().unwrap_or_else(|e| panic!("{e}"));
    let log_path = dir.join("run.log");
    let link = format!("sim-listen://127.0.0.1:{port}");
    let mut bridge = spawn(
        &bin,
        &[
            "run",
            "--server",
            socket.to_str().unwrap(),
            "--link",
            &link,
            // What a read costs while the server is stopped; a stopped server is the only
            // thing that may take this long (reads took at most 130 ms with 8 busy loops beside).
            "--device-timeout",
            &device_timeout,
            // Free-running: the root complex's simulated clock races ahead while the bridge
            // works, so the completion timeout (simulated time) must not be what ends a copy.
            "--cpl-timeout",
            "1000s",
            // A restarted server is back within a second; a failed restart ends the soak.
            "--reconnect-window",
            "30s",
        ],
        &log_path,
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let end = loop {
        match SimulatorEnd::connect(&format!("127.0.0.1:{port}"), &SimulatorConfig::default()).await {
            Ok(end) => break end,
            Err(e) => {
                assert!(Instant::now() < deadline, "no bridge: {e}\n{}", log());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // Default: steps of 1 ms of simulated time that last until the bridge's next TLP, at most
    // `TLPBRIDGE_SOAK_STEP_US` of wall time (see `WakingSimEnd`). `TLPBRIDGE_SOAK_STEP_US=0`:
    // what the soak did before, a TIME message per 100 ns of simulated time with only a yield
    // between steps (the root complex spins).
    let step_cycles = if step_us == 0 { RcConfig::default().step_cycles } else { 1_000_000 };
    // Waking steps: completions for the device's reads go out in the step their request arrives
    // in (a latency of even one cycle would wait for the next step, a full `step` of wall time
    // when nothing else arrives).
    let completion_latency = if step_us == 0 { RcConfig::default().completion_latency } else { 0 };
    let config =
        RcConfig { completion_timeout: 1 << 50, step_cycles, completion_latency, ..RcConfig::default() };
    let end = WakingSimEnd { end, step: Duration::from_micros(step_us), early: None };
    let mut rc = RootComplex::new(end, config).unwrap();
    let mut attempts = 0;
    let enumeration = loop {
        match rc.enumerate().await {
            Ok(e) => break e,
            Err(e) if e.to_string().contains("CRS") && attempts < 100 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("enumeration: {e}\n{}", log()),
        }
    };
    assert_eq!(enumeration.interrupts, "msix");
    let bar = |slot: u8| enumeration.bars.iter().find(|b| b.slot == slot).unwrap().address;
    let (bar0, bar2) = (bar(0), bar(2));
    // MSI-X vector 0 when a copy ends.
    rc.mem_write(bar0 + IRQ_CONTROL, &0x0000_0005u32.to_le_bytes()).await.unwrap();

    let mut rng = Rng(seed | 1);
    let mut model = vec![0u8; BAR2_SIZE as usize];
    let mut tally = Tally::default();
    let mut profile = Profile::default();
    let mut stopped_until: Option<u64> = None;
    // Reads while stopped: only the first of a stall waits out the device timeout (the rest
    // become writes, which queue behind it); that one proves "CA, never a hang".
    let mut stalled_read_done = false;
    // Operations after a SIGCONT during which the server may still be working off its backlog.
    let mut recovering_until = 0u64;
    let mut rss_quarter = None;
    // The operation at which the server was last resumed (for failure messages).
    let mut last_resumed: Option<u64> = None;
    let started = Instant::now();
    for op in 0..ops {
        if op == ops / 4 {
            rss_quarter = Some(rss_kib(&bridge));
        }
        if op > 0 && op % 10_000 == 0 {
            let rate = op as f64 / started.elapsed().as_secs_f64();
            eprintln!("soak: {op} operations, {rate:.0}/s, bridge RSS {} KiB; {tally:?}", rss_kib(&bridge));
        }
        if let Some(until) = stopped_until
            && op >= until
        {
            let t = Instant::now();
            signal(&device, "CONT");
            profile.add("SIGCONT", t);
            stopped_until = None;
            recovering_until = op + 3;
            last_resumed = Some(op);
        }
        let t = Instant::now();
        let roll = rng.below(1000);
        let stall_read_allowed = stopped_until.is_none() || !stalled_read_done;
        match roll {
            // Stop the server for the next 1..=`stall_ops` operations (first, so that it takes its share
            // from the copies and writes whatever the rate).
            r if r >= 1000 - stall_permille && stopped_until.is_none() => {
                signal(&device, "STOP");
                stopped_until = Some(op + 1 + rng.below(stall_ops));
                stalled_read_done = false;
                tally.stops += 1;
                profile.add("SIGSTOP", t);
            }
            // Kill the server (half the time just after ringing a copy's doorbell), run
            // 1..=`stall_ops` reads and writes while it is gone, start a new one at the same
            // socket and wait for the bridge to reconnect: the device is then at its reset values.
            r if r >= 1000 - stall_permille - restart_permille && stopped_until.is_none() => {
                // A read answered by the server: every request before it reached the server and
                // was answered (late replies to reads it timed out included), so the only writes
                // in flight at the kill are the copy's.
                loop {
                    match rc.mem_read(bar2, 4).await {
                        Ok(data) => break assert_eq!(data, &model[..4], "op {op}: read before the kill"),
                        Err(e) if e.to_string().contains("status CA") => tally.reads_aborted += 1,
                        Err(e) => panic!("op {op}: read before the kill: {e}\n{}", log()),
                    }
                }
                let irqs_before = rc.irq_log().len();
                if rng.below(2) == 0 {
                    let len = 1 + rng.below(4096);
                    tally.dma_bytes_abandoned += len;
                    for (reg, value) in
                        [(SRC_LO, 0x10_0000), (DST_LO, 0x20_0000), (LENGTH, len as u32), (DOORBELL, 1)]
                    {
                        rc.mem_write(bar0 + reg, &value.to_le_bytes()).await.unwrap();
                    }
                    tally.dma_copies_abandoned += 1;
                }
                device.0.kill().unwrap();
                device.0.wait().unwrap();
                tally.restarts += 1;
                let deadline = Instant::now() + Duration::from_secs(30);
                while (log().matches(SERVER_LOST_LINE).count() as u64) < tally.restarts {
                    assert!(
                        Instant::now() < deadline,
                        "op {op}: the bridge did not notice the kill\n{}",
                        log()
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                for _ in 0..1 + rng.below(stall_ops) {
                    let len = 1 + rng.below(256);
                    let at = rng.below(BAR2_SIZE - len);
                    if rng.below(2) == 0 {
                        let read = rc.mem_read(bar2 + at, len).await;
                        assert!(
                            read.as_ref().is_err_and(|e| e.to_string().contains("status CA")),
                            "op {op}: read {len} at {at:#x} while the server is gone: {read:?}\n{}",
                            log()
                        );
                        tally.reads_server_gone += 1;
                        let mrrs = rc.config().link.max_read_request_size();
                        let chunks = tlp::split::memory_read_requests(bar2 + at, len, mrrs).unwrap().count();
                        tally.completions_after_abort += chunks as u64 - 1;
                    } else {
                        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                        rc.mem_write(bar2 + at, &data).await.unwrap();
                        let mps = rc.config().link.max_payload_size();
                        let mwrs =
                            tlp::split::split_range(bar2 + at, len, "Max_Payload_Size", mps).unwrap().count();
                        tally.writes_server_gone += 1;
                        tally.mwr_server_gone += mwrs as u64;
                    }
                }
                device = spawn(&bin, &device_args, &dir.join(format!("device-{}.log", tally.restarts)));
                // Reads get CA until the bridge has reconnected; the first answer is the new
                // device's BAR2, all zeros.
                let back = loop {
                    match rc.mem_read(bar2, 4).await {
                        Ok(data) => break data,
                        Err(e) if e.to_string().contains("status CA") => {
                            assert!(Instant::now() < deadline, "op {op}: no reconnection\n{}", log());
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(e) => panic!("op {op}: read while reconnecting: {e}\n{}", log()),
                    }
                };
                assert_eq!(back, [0; 4], "op {op}: BAR2 of the restarted device");
                model.fill(0);
                // The ERR_FATAL follows the reconnection; nothing else may send one.
                let err_fatals = |rc: &RootComplex<WakingSimEnd>| {
                    rc.messages().iter().filter(|m| **m == tlp::MessageCode::ERR_FATAL).count() as u64
                };
                while err_fatals(&rc) < tally.restarts {
                    assert!(
                        Instant::now() < deadline,
                        "op {op}: no ERR_FATAL; {:?}\n{}",
                        rc.messages(),
                        log()
                    );
                    rc.settle().await.unwrap();
                }
                assert_eq!(err_fatals(&rc), tally.restarts, "op {op}: {:?}", rc.messages());
                // The abandoned copy may have ended before the kill: its interrupt is not the
                // next copy's.
                for _ in irqs_before..rc.irq_log().len() {
                    rc.wait_irq(IrqKind::Msix, 0, 1 << 50).await.unwrap();
                }
                // IRQ_CONTROL is at its reset value (interrupts off) too.
                rc.mem_write(bar0 + IRQ_CONTROL, &0x0000_0005u32.to_le_bytes()).await.unwrap();
                profile.add("restart", t);
            }
            // Reads of 1..=256 bytes: exactly one answer, equal to the model or CA.
            0..=449 if stall_read_allowed => {
                let len = 1 + rng.below(256);
                let at = rng.below(BAR2_SIZE - len);
                tally.reads += 1;
                let stalled = stopped_until.is_some();
                stalled_read_done |= stalled;
                match rc.mem_read(bar2 + at, len).await {
                    Ok(data) => assert_eq!(
                        data,
                        &model[at as usize..(at + len) as usize],
                        "op {op}: read {len} at {at:#x}"
                    ),
                    Err(e) if e.to_string().contains("status CA") => {
                        if stalled || op < recovering_until {
                            tally.reads_aborted += 1;
                        } else {
                            // The server answered after the device timeout although it was not
                            // stopped (a loaded machine, or more backlog after a stop than 3
                            // operations absorb): still exactly one answer. Checked at the end
                            // against the bridge's count of late server replies.
                            tally.reads_aborted_server_late += 1;
                        }
                        // The root complex forgets every tag of a read at its first failed
                        // completion; the answers to its other MRds (a read is split at
                        // multiples of MRRS) then arrive for no outstanding request.
                        let mrrs = rc.config().link.max_read_request_size();
                        let chunks = tlp::split::memory_read_requests(bar2 + at, len, mrrs).unwrap().count();
                        tally.completions_after_abort += chunks as u64 - 1;
                    }
                    Err(e) => panic!("op {op}: read {len} at {at:#x}: {e}\n{}", log()),
                }
                profile.add(if stalled { "read (server stopped)" } else { "read" }, t);
            }
            // A DMA copy of 1..=4096 bytes between host buffers, ended by MSI-X vector 0.
            900..=979 if stopped_until.is_none() => {
                let len = 1 + rng.below(4096);
                let src = 0x10_0000 + rng.below(0x1000);
                let dst = 0x20_0000 + rng.below(0x1000);
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                rc.memory_mut().write(src, &data);
                for (reg, value) in
                    [(SRC_LO, src as u32), (DST_LO, dst as u32), (LENGTH, len as u32), (DOORBELL, 1)]
                {
                    rc.mem_write(bar0 + reg, &value.to_le_bytes()).await.unwrap();
                }
                rc.wait_irq(IrqKind::Msix, 0, 1 << 50)
                    .await
                    .unwrap_or_else(|e| panic!("op {op}: {e}\n{}", log()));
                let status =
                    u32::from_le_bytes(rc.mem_read(bar0 + STATUS, 4).await.unwrap().try_into().unwrap());
                let errno = rc.mem_read(bar0 + DMA_ERRNO, 4).await.unwrap();
                assert_eq!(
                    status & 0x7,
                    0x2,
                    "op {op}: copy of {len} ended with STATUS {status:#x}, DMA_ERRNO {errno:?} (server last \
                     resumed at op {last_resumed:?})\n{}",
                    log()
                );
                rc.mem_write(bar0 + STATUS, &0x2u32.to_le_bytes()).await.unwrap();
                let mut copied = vec![0u8; len as usize];
                assert!(rc.memory().read(dst, &mut copied));
                assert_eq!(copied, data, "op {op}: DMA copy of {len} bytes");
                tally.dma_copies += 1;
                tally.dma_bytes += len;
                tally.interrupts += 1;
                profile.add(
                    if op < recovering_until { "DMA copy, just resumed" } else { "DMA copy + MSI-X" },
                    t,
                );
            }
            // Everything else: a posted write of 1..=64 bytes anywhere in BAR2 (split at DW
            // boundaries by the RC).
            _ => {
                let len = 1 + rng.below(64);
                let at = rng.below(BAR2_SIZE - len);
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                rc.mem_write(bar2 + at, &data).await.unwrap();
                model[at as usize..(at + len) as usize].copy_from_slice(&data);
                tally.writes += 1;
                profile.add(if stopped_until.is_some() { "write (server stopped)" } else { "write" }, t);
            }
        }
    }
    if stopped_until.is_some() {
        signal(&device, "CONT");
    }
    // Every posted write is in the device: BAR2 read back whole equals the model.
    let back = rc.mem_read(bar2, BAR2_SIZE).await.unwrap_or_else(|e| panic!("{e}\n{}", log()));
    let first_difference = back.iter().zip(&model).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "BAR2 differs from the writes sent");
    let elapsed = started.elapsed();
    let rss_end = rss_kib(&bridge);
    let rss_quarter = rss_quarter.unwrap_or(rss_end);
    eprintln!(
        "soak: {tally:?}; {:.0} operations/s over {:.1} s; bridge RSS {rss_quarter} KiB at 1/4, {rss_end} KiB at the end\n\
         soak: wall time per kind of operation:\n{profile}",
        ops as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    // Every read got exactly one completion per MRd: none the root complex did not expect,
    // beyond the second halves of aborted reads it had already given up on.
    let unexpected = rc.counters().unexpected_completions;
    assert!(unexpected <= tally.completions_after_abort, "{unexpected} unexpected completions; {tally:?}");
    assert!(rss_end <= rss_quarter + 16 * 1024, "bridge RSS grew from {rss_quarter} to {rss_end} KiB");
    // Exactly one ERR_FATAL per restart, none for anything else.
    assert_eq!(
        rc.messages().iter().filter(|m| **m == tlp::MessageCode::ERR_FATAL).count() as u64,
        tally.restarts,
        "messages {:?}",
        rc.messages()
    );
    assert!(bridge_alive(&bridge), "{}", log());
    // The bridge's own view: nothing dropped, nothing completed that it did not ask for.
    signal(&bridge, "INT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while bridge.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the bridge did not stop on SIGINT\n{}", log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = log();
    let counters = tlpbridge_tests::final_counters_line(&log).unwrap_or_default();
    eprintln!("soak: bridge counters: {counters}");
    assert!(!counters.is_empty(), "no counters from the bridge\n{log}");
    for name in ["unexpected_completions", "completion_timeouts", "dma_refused_bme"] {
        assert_eq!(tlpbridge_tests::bridge_counter(&log, name), Some(0), "bridge counter {name}\n{counters}");
    }
    // Every request the bridge gave up on (CA after the device timeout) was answered by the
    // server later: nothing sent to the server was lost, and no CA was for a lost request.
    let late_replies = log.matches("late vfio-user reply after timeout dropped").count() as u64;
    assert_eq!(
        tlpbridge_tests::bridge_counter(&log, "device_timeouts"),
        Some(late_replies),
        "device timeouts vs late replies; {tally:?}\n{counters}"
    );
    assert!(late_replies >= tally.reads_aborted + tally.reads_aborted_server_late, "{tally:?}\n{counters}");
    // Completions for the DMA reads of copies abandoned at a kill arrive after the bridge gave
    // their tags up: at most one per 64 bytes (the smallest RCB) plus two per MRd (unaligned
    // ends) of at least 128 bytes (the smallest MRRS). None otherwise.
    let late_completions = tlpbridge_tests::bridge_counter(&log, "late_completions").unwrap();
    let late_bound = tally.dma_bytes_abandoned.div_ceil(64)
        + 2 * (tally.dma_bytes_abandoned.div_ceil(128) + tally.dma_copies_abandoned);
    assert!(
        late_completions <= late_bound,
        "late_completions {late_completions} > {late_bound}; {tally:?}\n{counters}"
    );
    // Every MWr sent while the server was gone was dropped and counted; so may be (or not,
    // when the device took them or they went to the dead socket) the 4 register writes of a
    // copy rung just before the kill. Nothing else is lost. Each restart was one reconnection.
    let posted_lost = tlpbridge_tests::bridge_counter(&log, "posted_lost").unwrap();
    assert!(
        (tally.mwr_server_gone..=tally.mwr_server_gone + 4 * tally.dma_copies_abandoned)
            .contains(&posted_lost),
        "posted_lost {posted_lost}; {tally:?}\n{counters}"
    );
    assert_eq!(
        tlpbridge_tests::bridge_counter(&log, "server_reconnects"),
        Some(tally.restarts),
        "server_reconnects; {tally:?}\n{counters}"
    );
}

fn bridge_alive(bridge: &Running) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{}/stat", bridge.0.id())).unwrap_or_default();
    !status.is_empty() && !status.contains(") Z ")
}
