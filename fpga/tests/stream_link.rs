//! The stream link over a pair of FIFOs (the shape of XDMA's C2H/H2C files), against the
//! emulator's FPGA side.

use std::fs::OpenOptions;
use std::time::Duration;

use fpga::driver::{Device, FdIo};
use fpga::emulator::{EmulatorConfig, start_fpga_side};
use fpga::faults::FaultConfig;
use sim::rc::RootPortIo;
use transports::link::{LinkEvent, LinkInput};

const WAIT: Duration = Duration::from_secs(20);

fn mwr(n: u32) -> Vec<u8> {
    let mut t = vec![0x40, 0, 0, 1, 0, 0, n as u8, 0x0f, 0x00, 0x10, 0x00, 0x00];
    t.extend_from_slice(&n.to_be_bytes());
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_files_carry_the_framing_with_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let c2h = dir.path().join("c2h");
    let h2c = dir.path().join("h2c");
    for p in [&c2h, &h2c] {
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }
    // The FPGA end opens both FIFOs read-write, so it never sees end-of-file.
    let open_rw = |p: &std::path::Path| OpenOptions::new().read(true).write(true).open(p).unwrap();
    let device = Device {
        reader: Box::new(FdIo::new(open_rw(&h2c)).unwrap()),
        writer: Box::new(FdIo::new(open_rw(&c2h)).unwrap()),
        name: "fifos".into(),
    };
    let config = EmulatorConfig {
        faults: FaultConfig { bit_error_rate: 1e-4, seed: 5, ..FaultConfig::default() },
        ..EmulatorConfig::default()
    };
    let mut fpga = start_fpga_side(device, &config);
    let spec = format!("stream:{},{}?replay-ms=50", c2h.display(), h2c.display());
    let (mut link, status) = fpga::open_monitored(fpga::Spec::parse(&spec).unwrap()).await.unwrap();
    assert_eq!(link.info.kind, "stream");
    let first = tokio::time::timeout(WAIT, link.rx.recv()).await.unwrap();
    assert!(matches!(first, Some(LinkInput::Event { event: LinkEvent::Up, .. })), "{first:?}");
    let tx = link.tx.clone();
    tokio::spawn(async move {
        for n in 0..300 {
            tx.send(mwr(n)).await.unwrap();
        }
    });
    let collector = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 300 {
            match tokio::time::timeout(WAIT, link.rx.recv()).await.unwrap() {
                Some(LinkInput::Tlp(t)) => got.push(t.bytes),
                other => panic!("expected a TLP, got {other:?}"),
            }
        }
        got
    });
    for n in 0..300 {
        fpga.send_tlp(mwr(n)).await.unwrap();
        assert_eq!(fpga.recv_tlp(WAIT).await, Some(mwr(n)));
    }
    assert_eq!(collector.await.unwrap(), (0..300).map(mwr).collect::<Vec<_>>());
    assert!(fpga.faults().bits_flipped > 0);
    assert!(status.borrow().stats.bad_frames + fpga.status().stats.bad_frames > 0);
}
