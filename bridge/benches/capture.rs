//! Throughput of the bridge with capture on vs off, as ratios measured in the same run.
//! Run with `cargo bench -p bridge --bench capture`.
//!
//! 1. **Record cost**: nanoseconds per `CaptureHandle::tlp` call (copy behind the pseudo-header,
//!    wall-clock stamp, append to the writer's bounded batch) for a 12-byte MRd and a 272-byte MWr, against
//!    `Tlp::to_bytes` of the same TLP, which the transmit queue does for every TLP anyway.
//! 2. **Bridge throughput**: the engine between an in-memory root port and the sample vfio-user
//!    device (`sim::device`), capture off and on (to a file in the temp directory): posted MWrs
//!    per second (each one TLP in and one REGION_WRITE out) and MRd round trips per second (TLP
//!    in, REGION_READ and its reply, CplD out). Runs alternate off/on; the median of each is
//!    reported, with on/off as the ratio.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge::bench::rig::{RC, config_write_tlp};
use bridge::capture::{Capture, CaptureConfig, Direction, TlpFlags};
use bridge::engine::{Engine, EngineConfig, ServerEndpoint};
use sim::device::{DmaEngine, DmaEngineConfig, ServerConfig};
use tlp::Tlp;
use tlp::split::{RequestFields, SplitChunk, memory_read_tlp, memory_write_tlp};
use transports::link::{LinkInstant, MemoryClock, RootPortEnd, memory_pair};

const BAR0: u64 = 0x1000_0000;
const SCRATCH: u64 = BAR0 + 0x30;
const RUNS: usize = 5;
const WRITES: usize = 20_000;
const READS: usize = 3_000;
const STEP: Duration = Duration::from_secs(30);

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn median_ns_per_call(iterations: u32, mut op: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 {
        op();
    }
    median(
        (0..11)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..iterations {
                    op();
                }
                start.elapsed().as_nanos() as f64 / f64::from(iterations)
            })
            .collect(),
    )
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tlpbridge-bench-{}-{name}", std::process::id()))
}

fn record_cost() {
    let fields = RequestFields { requester: RC, tc: 0, attr: tlp::Attr::default() };
    let mrd = memory_read_tlp(&fields, SplitChunk { address: 0x8000_0040, len: 4 }, 1, 4096).unwrap();
    let mwr = memory_write_tlp(&fields, 0x1_2345_6700, &[0xa5; 256], 4096).unwrap();
    println!("Record cost (ns per call, median of 11 runs of 200 000 calls):");
    println!("| TLP | to_bytes ns | capture ns | capture / to_bytes |");
    println!("|---|---:|---:|---:|");
    for (name, tlp) in [("MRd 3DW (12 B)", &mrd), ("MWr 4DW + 256 B (272 B)", &mwr)] {
        let path = temp_path("record.pcapng");
        // A deep queue so that the writer keeps up and records are written, not dropped.
        let config = CaptureConfig { queue_depth: 1 << 16, ..CaptureConfig::default() };
        let (handle, writer) = Capture::create(&path, config).unwrap();
        let bytes = tlp.to_bytes();
        let baseline = median_ns_per_call(200_000, || {
            black_box(black_box(tlp).to_bytes());
        });
        let mut t = 0u64;
        let capture = median_ns_per_call(200_000, || {
            t += 1;
            handle.tlp(Direction::Outbound, LinkInstant(t), TlpFlags::default(), black_box(&bytes));
        });
        let dropped = handle.dropped();
        drop(handle);
        let summary = writer.finish().unwrap();
        let _ = std::fs::remove_file(&path);
        println!("| {name} | {baseline:.1} | {capture:.1} | {:.2} |", capture / baseline);
        println!("  ({} records written, {dropped} dropped while the writer caught up)", summary.tlp_records);
    }
}

async fn next(end: &mut RootPortEnd) -> Tlp {
    let bytes = tokio::time::timeout(STEP, end.from_bridge.recv()).await.expect("bridge silent").unwrap();
    Tlp::parse(&bytes).unwrap()
}

/// One run: (posted writes per second, read round trips per second, records dropped).
async fn bridge_run(capture: bool, run: usize) -> (f64, f64, u64) {
    let socket = temp_path(&format!("dev-{run}-{capture}.sock"));
    let card = Arc::new(DmaEngine::new(DmaEngineConfig::default()).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_socket = socket.clone();
    let server = tokio::spawn(async move {
        sim::device::serve(&server_socket, card, ServerConfig::default(), async {
            let _ = stopped.await;
        })
        .await
    });
    let pcap = temp_path(&format!("run-{run}.pcapng"));
    let (handle, writer) = if capture {
        let (h, w) = Capture::create(&pcap, CaptureConfig::default()).unwrap();
        (Some(h), Some(w))
    } else {
        (None, None)
    };
    let (link, mut end) = memory_pair(MemoryClock::Wall, 256);
    let config = EngineConfig {
        device_timeout: Some(Duration::from_secs(5)),
        capture: handle.clone(),
        ..EngineConfig::default()
    };
    let engine = Engine::start(link, ServerEndpoint::Path(socket), config).await.unwrap();
    for (tag, register, value) in [(1, 0x10, BAR0 as u32), (2, 0x04, 0x0006)] {
        end.send_tlp(config_write_tlp(tag, register, value).to_bytes()).await.unwrap();
        next(&mut end).await;
    }
    let fields = RequestFields { requester: RC, tc: 0, attr: tlp::Attr::default() };
    let read =
        |tag: u16| memory_read_tlp(&fields, SplitChunk { address: SCRATCH, len: 4 }, tag, 4096).unwrap();

    let start = Instant::now();
    for i in 0..WRITES {
        let tlp = memory_write_tlp(&fields, SCRATCH, &(i as u32).to_le_bytes(), 4096).unwrap();
        end.send_tlp(tlp.to_bytes()).await.unwrap();
    }
    // A read after the writes completes only after all of them reached the device.
    end.send_tlp(read(0).to_bytes()).await.unwrap();
    let last = next(&mut end).await;
    assert_eq!(last.payload, ((WRITES - 1) as u32).to_le_bytes());
    let writes_per_s = WRITES as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    for i in 0..READS {
        end.send_tlp(read((i % 256) as u16).to_bytes()).await.unwrap();
        next(&mut end).await;
    }
    let reads_per_s = READS as f64 / start.elapsed().as_secs_f64();

    engine.shutdown().await;
    let _ = stop.send(());
    let _ = server.await;
    drop(handle);
    let dropped = match writer {
        Some(w) => w.finish().unwrap().dropped(),
        None => 0,
    };
    let _ = std::fs::remove_file(&pcap);
    (writes_per_s, reads_per_s, dropped)
}

fn bridge_throughput() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut off = (Vec::new(), Vec::new());
    let mut on = (Vec::new(), Vec::new());
    let mut dropped = 0;
    runtime.block_on(async {
        // Warm-up run, not counted.
        bridge_run(false, 99).await;
        for run in 0..RUNS {
            let (w, r, _) = bridge_run(false, run).await;
            off.0.push(w);
            off.1.push(r);
            let (w, r, d) = bridge_run(true, run).await;
            on.0.push(w);
            on.1.push(r);
            dropped += d;
        }
    });
    let (w_off, r_off, w_on, r_on) = (median(off.0), median(off.1), median(on.0), median(on.1));
    println!();
    println!(
        "Bridge throughput (median of {RUNS} alternating runs; {WRITES} posted MWr, {READS} MRd round trips):"
    );
    println!("| workload | capture off /s | capture on /s | on / off |");
    println!("|---|---:|---:|---:|");
    println!("| posted MWr (4 B) | {w_off:.0} | {w_on:.0} | {:.2} |", w_on / w_off);
    println!("| MRd round trip (4 B) | {r_off:.0} | {r_on:.0} | {:.2} |", r_on / r_off);
    println!("records dropped by the capture over all runs: {dropped}");
}

fn main() {
    record_cost();
    bridge_throughput();
}
