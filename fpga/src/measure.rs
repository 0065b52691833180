//! Performance of the serial link over a pty pair (docs/performance.md, "FPGA serial link over a
//! pty"): payload throughput and framing efficiency for MWr TLPs of a given payload, and the
//! round trip of a 1-DW read (MRd out, CplD back) through both data-link layers; each next to a
//! raw pty baseline measured by the same call (bytes copied through a pty pair with no framing,
//! and a 1-byte ping-pong). Used by `cargo bench -p fpga --bench serial_link` and by
//! `tlpbridge bench`.
//!
//! The bridge's side is [`crate::open_monitored`] on the pty slave (`serial:`), the FPGA's side
//! the emulator ([`crate::emulator`]) on the master; no faults, FPGA credits 32. Needs a
//! multi-threaded tokio runtime.

use std::path::Path;
use std::time::{Duration, Instant};

use sim::rc::RootPortIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use transports::link::{Link, LinkInput};

use crate::emulator::{EmulatorConfig, FpgaPort, PtyPort, start_fpga_side};
use crate::error::{Error, Result};
use crate::{LinkStatus, Spec};

/// Longest wait for any one step (a safety net, not a measurement).
const WAIT: Duration = Duration::from_secs(30);

/// Sending `tlps` MWr TLPs of `payload` bytes each from the bridge's side to the FPGA's.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    pub payload: usize,
    pub tlps: u32,
    /// TLP payload bytes (headers not counted) per second.
    pub payload_per_second: f64,
    /// Bytes both sides wrote to the pty meanwhile: frames, and the ACKs going back.
    pub wire_bytes: u64,
}

impl Throughput {
    /// Payload bytes / all bytes on the wire.
    pub fn efficiency(&self) -> f64 {
        (self.tlps as f64 * self.payload as f64) / self.wire_bytes.max(1) as f64
    }
}

fn failed(what: impl Into<String>) -> Error {
    Error::Emulator(format!("serial link measurement: {}", what.into()))
}

fn io(context: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::io(context, source)
}

/// A 3-DW MWr with `payload` bytes (a multiple of 4, at most 4096), tag `n`.
fn mwr(payload: usize, n: u32) -> Vec<u8> {
    let dw = payload / 4;
    // Length 0 in the header means 1024 DW.
    let len = (dw % 1024) as u16;
    let mut t = vec![0x40, 0, (len >> 8) as u8 & 0x3, len as u8, 0, 0, n as u8, 0xff, 0x00, 0x10, 0x00, 0x00];
    t.resize(12 + payload, n as u8);
    t
}

/// Both sides of a serial link over a fresh pty in `dir`, up.
struct LinkPair {
    /// Keeps the pty pair open.
    _pty: PtyPort,
    fpga: FpgaPort,
    link: Link,
    status: watch::Receiver<LinkStatus>,
}

impl LinkPair {
    /// Closes the bridge's side first and waits (bounded) for its driver to end, so that closing
    /// the pty afterwards is not reported as a lost device.
    async fn close(self) {
        let LinkPair { _pty, fpga, link, mut status } = self;
        drop(link);
        let _ = tokio::time::timeout(WAIT, async { while status.changed().await.is_ok() {} }).await;
        drop(fpga);
    }
}

async fn link_pair(dir: &Path) -> Result<LinkPair> {
    let config = EmulatorConfig { dll: crate::dll::DllConfig::new(32), ..EmulatorConfig::default() };
    let mut pty = PtyPort::open(Some(&dir.join("tty")))?;
    let mut fpga = start_fpga_side(pty.take_device()?, &config);
    let (mut link, status) = crate::open_monitored(Spec::parse(&pty.link_spec())?).await?;
    match tokio::time::timeout(WAIT, link.rx.recv()).await {
        Ok(Some(_up)) => {}
        Ok(None) => return Err(failed("the bridge's link ended before it came up")),
        Err(_) => return Err(failed(format!("the bridge's link not up within {WAIT:?}"))),
    }
    fpga.wait_up(WAIT).await?;
    Ok(LinkPair { _pty: pty, fpga, link, status })
}

/// A raw pty pair: the pty (keep it), its master and its slave, both non-blocking.
fn raw_pty() -> Result<(PtyPort, crate::driver::Device, crate::driver::FdIo<std::fs::File>)> {
    let mut pty = PtyPort::open(None)?;
    let master = pty.take_device()?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(pty.slave_path())
        .map_err(|source| Error::Open { path: pty.slave_path().to_owned(), source })?;
    let slave = crate::driver::FdIo::new(slave).map_err(io("registering the pty slave"))?;
    Ok((pty, master, slave))
}

/// Baseline: `total` raw bytes written to a pty slave in 4 KiB writes and read from the master;
/// bytes per second.
pub async fn raw_pty_throughput(total: usize) -> Result<f64> {
    let (_pty, mut master, mut slave) = raw_pty()?;
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![0x55u8; 4096];
        let mut sent = 0;
        while sent < total {
            slave.write_all(&chunk).await?;
            sent += chunk.len();
        }
        Ok::<_, std::io::Error>(slave)
    });
    let mut buf = vec![0u8; 65536];
    let mut got = 0;
    while got < total {
        match tokio::time::timeout(WAIT, master.reader.read(&mut buf)).await {
            Ok(Ok(n)) => got += n,
            Ok(Err(e)) => return Err(Error::io("reading the pty master", e)),
            Err(_) => return Err(failed(format!("raw pty: {got} of {total} bytes after {WAIT:?}"))),
        }
    }
    let elapsed = start.elapsed();
    match writer.await {
        Ok(Ok(_slave)) => {}
        Ok(Err(e)) => return Err(Error::io("writing the pty slave", e)),
        Err(e) => return Err(failed(format!("the raw pty writer: {e}"))),
    }
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// `total_payload` bytes of MWr TLPs with `payload` bytes each through the serial link (the clock
/// stops when the FPGA side has taken the last one).
pub async fn throughput(dir: &Path, payload: usize, total_payload: usize) -> Result<Throughput> {
    if payload == 0 || payload % 4 != 0 || payload > 4096 {
        return Err(failed(format!("payload {payload} is not a multiple of 4 in 4..=4096")));
    }
    let mut pair = link_pair(dir).await?;
    let tlps = u32::try_from(total_payload / payload).map_err(|_| failed("too many TLPs"))?;
    let before = (pair.status.borrow().stats.bytes_sent, pair.fpga.status().stats.bytes_sent);
    let start = Instant::now();
    let tx = pair.link.tx.clone();
    let sender = tokio::spawn(async move {
        for n in 0..tlps {
            if tx.send(mwr(payload, n)).await.is_err() {
                return;
            }
        }
    });
    for i in 0..tlps {
        if pair.fpga.recv_tlp(WAIT).await.is_none() {
            sender.abort();
            let why = format!(
                "TLP {i} of {tlps} missing after {WAIT:?}; bridge side {:?}; FPGA side {:?}",
                pair.status.borrow(),
                pair.fpga.status()
            );
            pair.close().await;
            return Err(failed(why));
        }
    }
    let elapsed = start.elapsed();
    let _ = sender.await;
    let wire_bytes =
        (pair.status.borrow().stats.bytes_sent - before.0) + (pair.fpga.status().stats.bytes_sent - before.1);
    pair.close().await;
    Ok(Throughput {
        payload,
        tlps,
        payload_per_second: (tlps as f64 * payload as f64) / elapsed.as_secs_f64(),
        wire_bytes,
    })
}

/// Baseline: the mean round trip of one byte through a raw pty pair (slave → master → slave).
pub async fn raw_pty_round_trip(rounds: u32) -> Result<Duration> {
    let (_pty, mut master, mut slave) = raw_pty()?;
    let echo = tokio::spawn(async move {
        let mut b = [0u8; 1];
        for _ in 0..rounds {
            while master.reader.read(&mut b).await? == 0 {}
            master.writer.write_all(&b).await?;
        }
        // Handed back, not dropped: closing the master hangs the slave up, and the last echo
        // may not have reached the slave's reader yet.
        Ok::<_, std::io::Error>(master)
    });
    let start = Instant::now();
    let mut b = [7u8; 1];
    let pings = async {
        for _ in 0..rounds {
            slave.write_all(&b).await?;
            // A tty read may return 0 bytes when woken without data (VMIN semantics): read again.
            while slave.read(&mut b).await? == 0 {}
        }
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(WAIT, pings).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Error::io("pty ping-pong", e)),
        Err(_) => {
            echo.abort();
            return Err(failed(format!("pty ping-pong not done within {WAIT:?}")));
        }
    }
    let elapsed = start.elapsed();
    match echo.await {
        Ok(Ok(_master)) => {}
        Ok(Err(e)) => return Err(Error::io("pty echo", e)),
        Err(e) => return Err(failed(format!("the pty echo: {e}"))),
    }
    Ok(elapsed / rounds.max(1))
}

/// The mean round trip of a 1-DW MRd sent by the FPGA side and answered by the bridge's side
/// with a 1-DW CplD as soon as it arrives (no device behind it: the link's share of an MMIO
/// read).
pub async fn read_round_trip(dir: &Path, rounds: u32) -> Result<Duration> {
    let LinkPair { _pty, mut fpga, mut link, status } = link_pair(dir).await?;
    let answer = tokio::spawn(async move {
        for _ in 0..rounds {
            match tokio::time::timeout(WAIT, link.rx.recv()).await {
                Ok(Some(LinkInput::Tlp(t))) => {
                    let tag = t.bytes.get(6).copied().unwrap_or(0);
                    let cpl = vec![0x4a, 0, 0, 1, 0x01, 0, 0, 4, 0, 0, tag, 0x10, 0xef, 0xbe, 0xad, 0xde];
                    if link.tx.send(cpl).await.is_err() {
                        return Err("the bridge's link closed".to_owned());
                    }
                }
                Ok(Some(other)) => return Err(format!("unexpected {other:?}")),
                Ok(None) => return Err("the bridge's link ended".to_owned()),
                Err(_) => return Err(format!("no MRd within {WAIT:?}")),
            }
        }
        Ok(link)
    });
    let start = Instant::now();
    for i in 0..rounds {
        let mrd = vec![0x00, 0, 0, 1, 0, 0, i as u8, 0x0f, 0x80, 0x00, 0x00, 0x10];
        fpga.send_tlp(mrd).await?;
        if fpga.recv_tlp(WAIT).await.is_none() {
            answer.abort();
            return Err(failed(format!("no CplD for read {i} within {WAIT:?}")));
        }
    }
    let elapsed = start.elapsed();
    let link = match answer.await {
        Ok(Ok(link)) => link,
        Ok(Err(why)) => return Err(failed(why)),
        Err(e) => return Err(failed(format!("the answering task: {e}"))),
    };
    LinkPair { _pty, fpga, link, status }.close().await;
    Ok(elapsed / rounds.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_measurement_completes_and_reports_a_figure() {
        let dir = tempfile::tempdir().unwrap();
        assert!(raw_pty_throughput(256 << 10).await.unwrap() > 0.0);
        let t = throughput(dir.path(), 256, 64 << 10).await.unwrap();
        assert_eq!(t.tlps, 256);
        // Every payload byte crossed, with at least a header per TLP beside it.
        assert!(t.wire_bytes > 256 * (256 + 12), "{t:?}");
        assert!(t.efficiency() > 0.5 && t.efficiency() < 1.0, "{t:?}");
        assert!(raw_pty_round_trip(50).await.unwrap() > Duration::ZERO);
        assert!(read_round_trip(dir.path(), 50).await.unwrap() > Duration::ZERO);
    }
}
