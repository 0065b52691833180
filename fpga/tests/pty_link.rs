//! The serial link against the emulator's FPGA side over a real pty pair: handshake, exactly-once
//! in-order delivery under bit errors and lost frames, credit limits, unplug and replug.

use std::time::Duration;

use fpga::dll::{Delivery, Dll, DllConfig};
use fpga::emulator::{EmulatorConfig, FpgaPort, PtyPort, start_fpga_side};
use fpga::faults::FaultConfig;
use fpga::{LinkStatus, Spec};
use sim::rc::RootPortIo;
use tokio::sync::watch;
use transports::link::{Link, LinkEvent, LinkInput};

const WAIT: Duration = Duration::from_secs(20);

/// Keep-alive intervals of silence before a side declares the link down, on both sides. The
/// defaults (5 × 100 ms) take the link down when a loaded machine starves one side's task for
/// half a second; these tests check delivery and repair, not keep-alive timing (the DLL's own
/// tests do), and unplugging is detected by end of file, not by silence.
const PATIENT_MISSED: u32 = 1000;

/// A 3-DW MWr header plus one DW carrying `n`, tagged with `n` (so NetTLP-style port spreading
/// and any reordering would show).
fn mwr(n: u32, payload_dw: usize) -> Vec<u8> {
    let len = payload_dw as u8;
    let mut t = vec![0x40, 0, 0, len, 0, 0, n as u8, 0xff, 0x00, 0x10, 0x00, 0x00];
    for i in 0..payload_dw {
        t.extend_from_slice(&(n.wrapping_mul(31).wrapping_add(i as u32)).to_be_bytes());
    }
    t
}

async fn next_event(link: &mut Link) -> LinkEvent {
    loop {
        match tokio::time::timeout(WAIT, link.rx.recv()).await.expect("link event in time") {
            Some(LinkInput::Event { event, .. }) => return event,
            Some(LinkInput::Tlp(_)) => continue,
            None => panic!("link closed"),
        }
    }
}

async fn setup(
    dir: &tempfile::TempDir,
    config: &EmulatorConfig,
    options: &str,
) -> (PtyPort, FpgaPort, Link, watch::Receiver<LinkStatus>) {
    let mut pty = PtyPort::open(Some(&dir.path().join("ttyFPGA"))).unwrap();
    let fpga = start_fpga_side(pty.take_device().unwrap(), &patient(config));
    let separator = if options.is_empty() { "?" } else { "&" };
    let spec = format!("{}{options}{separator}missed={PATIENT_MISSED}", pty.link_spec());
    let (mut link, status) = fpga::open_monitored(Spec::parse(&spec).unwrap()).await.unwrap();
    assert_eq!(link.info.kind, "serial");
    assert_eq!(next_event(&mut link).await, LinkEvent::Up);
    (pty, fpga, link, status)
}

/// `config` with [`PATIENT_MISSED`].
fn patient(config: &EmulatorConfig) -> EmulatorConfig {
    let mut config = config.clone();
    config.dll.missed_keepalives = PATIENT_MISSED;
    config
}

async fn exchange(fpga: &mut FpgaPort, link: &mut Link, count: u32, payload_dw: usize) {
    let expected: Vec<Vec<u8>> = (0..count).map(|n| mwr(n, payload_dw)).collect();
    let to_fpga = expected.clone();
    let tx = link.tx.clone();
    let sender = tokio::spawn(async move {
        for t in to_fpga {
            tx.send(t).await.unwrap();
        }
    });
    // Both directions at once: the FPGA sends while it receives.
    let mut sent_back = 0usize;
    let mut got_fpga = Vec::new();
    let mut got_bridge = Vec::new();
    // A guard against a hang, not a speed check: it fails only when nothing moves for WAIT.
    let mut progress = (0, 0, 0);
    let mut last_progress = tokio::time::Instant::now();
    while got_fpga.len() < expected.len() || got_bridge.len() < expected.len() {
        let now = (sent_back, got_fpga.len(), got_bridge.len());
        if now != progress {
            progress = now;
            last_progress = tokio::time::Instant::now();
        }
        assert!(
            last_progress.elapsed() < WAIT,
            "stalled: fpga got {}, bridge got {}, fpga sent {}",
            got_fpga.len(),
            got_bridge.len(),
            sent_back
        );
        if sent_back < expected.len() {
            fpga.send_tlp(expected[sent_back].clone()).await.unwrap();
            sent_back += 1;
        }
        while let Some(t) = fpga.try_recv().unwrap() {
            got_fpga.push(t);
        }
        while let Ok(input) = link.rx.try_recv() {
            match input {
                LinkInput::Tlp(t) => got_bridge.push(t.bytes),
                LinkInput::Event { event, .. } => panic!("unexpected {event:?}"),
            }
        }
        if sent_back >= expected.len() {
            if let Some(t) = fpga.recv_tlp(Duration::from_millis(20)).await {
                got_fpga.push(t);
            }
        }
    }
    sender.await.unwrap();
    assert_eq!(got_fpga, expected, "bridge → FPGA: every TLP once, in order");
    assert_eq!(got_bridge, expected, "FPGA → bridge: every TLP once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_link_carries_tlps_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmulatorConfig::default();
    let (_pty, mut fpga, mut link, status) = setup(&dir, &config, "?baud=3000000").await;
    exchange(&mut fpga, &mut link, 300, 16).await;
    let s = status.borrow().clone();
    assert_eq!(s.stats.bad_frames, 0);
    assert_eq!(s.stats.tlps_sent, 300);
    assert_eq!(fpga.status().stats.overruns, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bit_errors_and_lost_frames_are_repaired_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut dll = DllConfig::new(8);
    dll.replay_timeout = Duration::from_millis(50);
    let config = EmulatorConfig {
        dll,
        faults: FaultConfig {
            bit_error_rate: 1e-4,
            drop_frame_rate: 0.02,
            seed: 42,
            ..FaultConfig::default()
        },
        ..EmulatorConfig::default()
    };
    let (_pty, mut fpga, mut link, status) = setup(&dir, &config, "?replay-ms=50").await;
    exchange(&mut fpga, &mut link, 1000, 16).await;
    let faults = fpga.faults();
    assert!(faults.bits_flipped > 0 && faults.frames_dropped > 0, "{faults:?}");
    let bridge = status.borrow().stats;
    let fpga_stats = fpga.status().stats;
    assert!(bridge.retransmissions > 0 && fpga_stats.retransmissions > 0, "{bridge:?} {fpga_stats:?}");
    assert!(bridge.bad_frames + fpga_stats.bad_frames > 0);
    assert_eq!(fpga_stats.overruns, 0);
    assert_eq!(bridge.links_down, 0, "faults alone must not take the link down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_starved_fpga_is_never_overrun() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmulatorConfig { dll: DllConfig::new(1), ..EmulatorConfig::default() };
    let (_pty, mut fpga, link, status) = setup(&dir, &config, "").await;
    for n in 0..50 {
        link.tx.send(mwr(n, 64)).await.unwrap();
    }
    // Take them slowly: the bridge must wait for each credit.
    for n in 0..50 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(fpga.recv_tlp(WAIT).await, Some(mwr(n, 64)));
    }
    assert_eq!(fpga.status().stats.overruns, 0);
    assert!(status.borrow().stats.credit_stalls > 0, "the bridge never ran out of credit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_reports_down_and_replug_brings_the_link_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmulatorConfig::default();
    let (pty, fpga, mut link, status) = setup(&dir, &config, "").await;
    drop(fpga);
    drop(pty);
    assert_eq!(next_event(&mut link).await, LinkEvent::Down);
    // Replug: a new pty pair behind the same path.
    let mut pty = PtyPort::open(Some(&dir.path().join("ttyFPGA"))).unwrap();
    let mut fpga = start_fpga_side(pty.take_device().unwrap(), &config);
    assert_eq!(next_event(&mut link).await, LinkEvent::Up);
    fpga.wait_up(WAIT).await.unwrap();
    exchange(&mut fpga, &mut link, 20, 4).await;
    let s = status.borrow().clone();
    assert_eq!((s.device_lost, s.reopened), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlps_queued_while_the_link_is_down_never_reach_the_replugged_link() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmulatorConfig::default();
    let (pty, fpga, mut link, status) = setup(&dir, &config, "").await;
    drop(fpga);
    drop(pty);
    assert_eq!(next_event(&mut link).await, LinkEvent::Down);
    // What a user sends between Down and Up was meant for the old link (an engine's DMA reads
    // of a request the reset aborted): it must be dropped, not carried across the reset.
    let stale = 20u32;
    for n in 0..stale {
        link.tx.send(mwr(0x80 + n, 4)).await.unwrap();
    }
    let mut pty = PtyPort::open(Some(&dir.path().join("ttyFPGA"))).unwrap();
    let mut fpga = start_fpga_side(pty.take_device().unwrap(), &config);
    assert_eq!(next_event(&mut link).await, LinkEvent::Up);
    assert_eq!(status.borrow().dropped_on_down, u64::from(stale));
    fpga.wait_up(WAIT).await.unwrap();
    // Only what is sent after Up arrives, once and in order (a stale TLP would come first).
    exchange(&mut fpga, &mut link, 20, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_reset_from_the_fpga_reaches_the_bridge_as_hot_reset_then_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmulatorConfig::default();
    let (_pty, mut fpga, mut link, status) = setup(&dir, &config, "").await;
    exchange(&mut fpga, &mut link, 10, 4).await;
    fpga.hot_reset(WAIT).await.unwrap();
    assert_eq!(next_event(&mut link).await, LinkEvent::HotReset);
    assert_eq!(next_event(&mut link).await, LinkEvent::Up);
    let bridge = status.borrow().clone();
    assert_eq!((bridge.hot_resets, bridge.stats.links_down, bridge.device_lost), (1, 1, 0), "{bridge:?}");
    assert_eq!(fpga.status().hot_resets, 1);
    // The link carries TLPs again, from sequence number 0 of the new session.
    exchange(&mut fpga, &mut link, 10, 4).await;
}

/// The FPGA stamps two TLPs 7 s apart on its counter and sends them back to back: the bridge
/// must place them 7 s apart on its link clock, whatever their arrival spacing. The FPGA side is
/// a bare [`Dll`] driven here, so that the stamps are exact (the emulator stamps at the moment
/// its driver task sends, which a loaded machine delays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fpga_timestamps_become_link_times() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut pty = PtyPort::open(Some(&dir.path().join("ttyFPGA"))).unwrap();
    let device = pty.take_device().unwrap();
    let (mut reader, mut writer) = (device.reader, device.writer);
    let spec = format!("{}?missed={PATIENT_MISSED}", pty.link_spec());
    let (mut link, _status) = fpga::open_monitored(Spec::parse(&spec).unwrap()).await.unwrap();
    let start = tokio::time::Instant::now();
    let mut config = DllConfig::new(8);
    config.hello.flags |= fpga::framing::field::flags::TIMESTAMPS;
    config.missed_keepalives = PATIENT_MISSED;
    let mut fpga = Dll::new(config, start.elapsed());
    let stamps = [1_000u64, 1_000 + 7_000_000_000];
    let mut sent = false;
    let mut times = Vec::new();
    let mut buf = vec![0u8; 4096];
    while times.len() < 2 {
        while let Some(frame) = fpga.poll_transmit(start.elapsed()) {
            writer.write_all(&frame).await.unwrap();
        }
        while let Some(delivery) = fpga.poll_delivery() {
            if matches!(delivery, Delivery::Up(_)) && !sent {
                for (n, stamp) in stamps.iter().enumerate() {
                    fpga.send_tlp(mwr(n as u32, 1), Some(*stamp)).unwrap();
                }
                sent = true;
            }
        }
        let timer = fpga.poll_timeout().map(|at| start + at);
        tokio::select! {
            read = tokio::time::timeout(WAIT, reader.read(&mut buf)) => {
                let n = read.expect("the bridge answers").unwrap();
                fpga.on_bytes(start.elapsed(), &buf[..n]);
            }
            _ = async { tokio::time::sleep_until(timer.unwrap()).await }, if timer.is_some() => {
                fpga.on_timer(start.elapsed());
            }
            input = link.rx.recv() => match input.expect("link open") {
                LinkInput::Tlp(t) => times.push(t.time),
                LinkInput::Event { event, .. } => assert_eq!(event, LinkEvent::Up),
            },
        }
    }
    assert_eq!(times[1].saturating_duration_since(times[0]), Duration::from_nanos(stamps[1] - stamps[0]));
}

#[tokio::test]
async fn bad_link_arguments_say_why() {
    let err = fpga::open("serial:/nonexistent/tty?baud=9600").await.unwrap_err().to_string();
    assert!(err.contains("/nonexistent/tty"), "{err}");
    let err = fpga::open("serial:/dev/null?parity=mark").await.unwrap_err().to_string();
    assert!(err.contains("parity=mark"), "{err}");
    let err = fpga::open("stream:/only/one").await.unwrap_err().to_string();
    assert!(err.contains("RX_PATH,TX_PATH"), "{err}");
    let err = fpga::open("nettlp:not-an-ip").await.unwrap_err().to_string();
    assert!(err.contains("IPv4"), "{err}");
    let err = fpga::open("usb:/dev/x").await.unwrap_err().to_string();
    assert!(err.contains("unknown FPGA link kind"), "{err}");
}
