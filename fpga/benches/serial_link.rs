//! Serial link over a pty pair: payload throughput and framing efficiency for 64 B, 256 B and
//! 4 KiB MWr TLPs, and the round trip of a 1-DW read (MRd out, CplD back) through both data-link
//! layers; each against a raw pty baseline measured in the same run (`fpga::measure`).
//! `tlpbridge bench` reports the same figures in its "serial" section.
//!
//! `cargo bench -p fpga --bench serial_link`

use fpga::measure;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), fpga::error::Error> {
    let dir =
        tempfile::tempdir().map_err(|e| fpga::error::Error::Io { context: "temp dir".into(), source: e })?;
    let total_payload = 8usize << 20;
    println!(
        "| TLP payload | TLPs | payload MB/s | raw pty MB/s (just before) | × raw pty | wire bytes / payload byte | framing efficiency |"
    );
    println!("|---|---|---|---|---|---|---|");
    for payload in [64usize, 256, 4096] {
        let raw = measure::raw_pty_throughput(total_payload).await?;
        let t = measure::throughput(dir.path(), payload, total_payload).await?;
        println!(
            "| {payload} B | {} | {:.1} | {:.1} | {:.2} | {:.3} | {:.1} % |",
            t.tlps,
            t.payload_per_second / 1e6,
            raw / 1e6,
            t.payload_per_second / raw,
            1.0 / t.efficiency(),
            100.0 * t.efficiency()
        );
    }
    let rounds = 2000u32;
    let raw_rtt = measure::raw_pty_round_trip(rounds).await?;
    let rtt = measure::read_round_trip(dir.path(), rounds).await?;
    println!();
    println!("| round trip | mean | × raw pty 1-byte round trip |");
    println!("|---|---|---|");
    println!("| raw pty 1-byte ping-pong (baseline) | {:.1} µs | 1.00 |", raw_rtt.as_secs_f64() * 1e6);
    println!(
        "| MRd → CplD through both data-link layers | {:.1} µs | {:.2} |",
        rtt.as_secs_f64() * 1e6,
        rtt.as_secs_f64() / raw_rtt.as_secs_f64()
    );
    Ok(())
}
