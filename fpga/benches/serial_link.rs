//! Serial link over a pty pair: payload throughput and framing efficiency for 64 B, 256 B and
//! 4 KiB MWr TLPs, and the round trip of a 1-DW read (MRd out, CplD back) through both data-link
//! layers; each against a raw pty baseline measured in the same run (bytes copied through a pty
//! pair with no framing, and a 1-byte ping-pong).
//!
//! `cargo bench -p fpga --bench serial_link`

use std::time::{Duration, Instant};

use fpga::emulator::{EmulatorConfig, PtyPort, start_fpga_side};
use fpga::{LinkStatus, Spec};
use sim::rc::RootPortIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use transports::link::{Link, LinkInput};

const WAIT: Duration = Duration::from_secs(30);

fn mwr(payload: usize, n: u32) -> Vec<u8> {
    let dw = payload / 4;
    // Length 0 in the header means 1024 DW.
    let len = (dw % 1024) as u16;
    let mut t = vec![0x40, 0, (len >> 8) as u8 & 0x3, len as u8, 0, 0, n as u8, 0xff, 0x00, 0x10, 0x00, 0x00];
    t.resize(12 + payload, n as u8);
    t
}

async fn link_pair(
    dir: &std::path::Path,
) -> (PtyPort, fpga::emulator::FpgaPort, Link, watch::Receiver<LinkStatus>) {
    let config = EmulatorConfig { dll: fpga::dll::DllConfig::new(32), ..EmulatorConfig::default() };
    let mut pty = PtyPort::open(Some(&dir.join("tty"))).unwrap();
    let mut fpga = start_fpga_side(pty.take_device().unwrap(), &config);
    let (mut link, status) = fpga::open_monitored(Spec::parse(&pty.link_spec()).unwrap()).await.unwrap();
    let _up = tokio::time::timeout(WAIT, link.rx.recv()).await.unwrap();
    fpga.wait_up(WAIT).await.unwrap();
    (pty, fpga, link, status)
}

/// Raw pty throughput: `total` bytes written to the slave and read from the master.
async fn raw_pty_throughput(total: usize) -> f64 {
    let mut pty = PtyPort::open(None).unwrap();
    let mut master = pty.take_device().unwrap();
    let slave = std::fs::OpenOptions::new().read(true).write(true).open(pty.slave_path()).unwrap();
    let mut slave = fpga::driver::FdIo::new(slave).unwrap();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![0x55u8; 4096];
        let mut sent = 0;
        while sent < total {
            slave.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        slave
    });
    let mut buf = vec![0u8; 65536];
    let mut got = 0;
    while got < total {
        got += master.reader.read(&mut buf).await.unwrap();
    }
    let _slave = writer.await.unwrap();
    total as f64 / start.elapsed().as_secs_f64()
}

/// Raw pty round trip: one byte slave → master → slave.
async fn raw_pty_round_trip(rounds: u32) -> Duration {
    let mut pty = PtyPort::open(None).unwrap();
    let mut master = pty.take_device().unwrap();
    let slave = std::fs::OpenOptions::new().read(true).write(true).open(pty.slave_path()).unwrap();
    let mut slave = fpga::driver::FdIo::new(slave).unwrap();
    let echo = tokio::spawn(async move {
        let mut b = [0u8; 1];
        for _ in 0..rounds {
            while master.reader.read(&mut b).await.unwrap() == 0 {}
            master.writer.write_all(&b).await.unwrap();
        }
    });
    let start = Instant::now();
    let mut b = [7u8; 1];
    for _ in 0..rounds {
        slave.write_all(&b).await.unwrap();
        // A tty read may return 0 bytes when woken without data (VMIN semantics): read again.
        while slave.read(&mut b).await.unwrap() == 0 {}
    }
    let elapsed = start.elapsed();
    echo.await.unwrap();
    elapsed / rounds
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = std::env::temp_dir().join(format!("fpga-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let total_payload = 8usize << 20;
    let raw = raw_pty_throughput(total_payload).await;
    println!("raw pty baseline: {:.1} MB/s", raw / 1e6);
    println!(
        "| TLP payload | TLPs | payload MB/s | × raw pty | wire bytes / payload byte | framing efficiency |"
    );
    println!("|---|---|---|---|---|---|");
    for payload in [64usize, 256, 4096] {
        let (_pty, mut fpga, link, status) = link_pair(&dir).await;
        let count = (total_payload / payload) as u32;
        let before = (status.borrow().stats.bytes_sent, fpga.status().stats.bytes_sent);
        let start = Instant::now();
        let tx = link.tx.clone();
        let sender = tokio::spawn(async move {
            for n in 0..count {
                tx.send(mwr(payload, n)).await.unwrap();
            }
        });
        for i in 0..count {
            if fpga.recv_tlp(WAIT).await.is_none() {
                panic!("TLP {i} of {count} missing; bridge {:?}; fpga {:?}", status.borrow(), fpga.status());
            }
        }
        let elapsed = start.elapsed();
        sender.await.unwrap();
        let wire =
            (status.borrow().stats.bytes_sent - before.0) + (fpga.status().stats.bytes_sent - before.1);
        let bytes = (count as usize * payload) as f64;
        let rate = bytes / elapsed.as_secs_f64();
        println!(
            "| {payload} B | {count} | {:.1} | {:.2} | {:.3} | {:.1} % |",
            rate / 1e6,
            rate / raw,
            wire as f64 / bytes,
            100.0 * bytes / wire as f64
        );
    }
    let rounds = 2000u32;
    let raw_rtt = raw_pty_round_trip(rounds).await;
    let (_pty, mut fpga, mut link, _status) = link_pair(&dir).await;
    // The bridge end answers every read with a 1-DW CplD at once (no device behind it).
    let answer = tokio::spawn(async move {
        for _ in 0..rounds {
            match tokio::time::timeout(WAIT, link.rx.recv()).await.unwrap() {
                Some(LinkInput::Tlp(t)) => {
                    let tag = t.bytes[6];
                    let cpl = vec![0x4a, 0, 0, 1, 0x01, 0, 0, 4, 0, 0, tag, 0x10, 0xef, 0xbe, 0xad, 0xde];
                    link.tx.send(cpl).await.unwrap();
                }
                other => panic!("{other:?}"),
            }
        }
        link
    });
    let start = Instant::now();
    for i in 0..rounds {
        let mrd = vec![0x00, 0, 0, 1, 0, 0, i as u8, 0x0f, 0x80, 0x00, 0x00, 0x10];
        fpga.send_tlp(mrd).await.unwrap();
        fpga.recv_tlp(WAIT).await.expect("CplD");
    }
    let rtt = start.elapsed() / rounds;
    let _link = answer.await.unwrap();
    println!();
    println!("| round trip | mean | × raw pty 1-byte round trip |");
    println!("|---|---|---|");
    println!("| raw pty 1-byte ping-pong (baseline) | {:.1} µs | 1.00 |", raw_rtt.as_secs_f64() * 1e6);
    println!(
        "| MRd → CplD through both data-link layers | {:.1} µs | {:.2} |",
        rtt.as_secs_f64() * 1e6,
        rtt.as_secs_f64() / raw_rtt.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
