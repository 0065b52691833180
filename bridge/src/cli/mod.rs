//! Command-line front end: one module per subcommand.

mod bench_cmd;
mod demo_cmd;
mod fpga_cmd;
mod pcap_cmd;
mod probe_cmd;
mod run_cmd;
mod sim_cmd;
mod tlp_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status for bad input (a malformed TLP, a bad argument, an unreachable server).
pub const EXIT_BAD_INPUT: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "tlpbridge",
    version,
    about = "Bridge a vfio-user PCIe device to a root port that speaks TLPs"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode and encode TLPs.
    Tlp(tlp_cmd::TlpArgs),
    /// Bridge a vfio-user server to a root-port link until Ctrl-C (docs/run.md).
    Run(run_cmd::RunArgs),
    /// Connect to a vfio-user server and describe the device behind it.
    Probe(probe_cmd::ProbeArgs),
    /// Run the built-in end-to-end demonstration.
    Demo(demo_cmd::DemoArgs),
    /// Read packet captures (--pcap files and NetTLP traces).
    Pcap(pcap_cmd::PcapArgs),
    /// Co-simulation tools: the sample vfio-user device and the reference root complex.
    Sim(sim_cmd::SimArgs),
    /// FPGA link tools: the FPGA emulator (docs/fpga-link.md).
    Fpga(fpga_cmd::FpgaArgs),
    /// Measure the bridge against same-run socket baselines (docs/performance.md).
    Bench(bench_cmd::BenchArgs),
}

impl Cli {
    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Tlp(args) => tlp_cmd::run(args),
            Command::Run(args) => run_cmd::run(args),
            Command::Probe(args) => probe_cmd::run(args),
            Command::Demo(args) => demo_cmd::run(args),
            Command::Sim(args) => sim_cmd::run(args),
            Command::Fpga(args) => fpga_cmd::run(args),
            Command::Pcap(args) => pcap_cmd::run(args),
            Command::Bench(args) => bench_cmd::run(args),
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// `--threads N` and `--bridge-threads N`: a runtime's worker threads, 1..=64.
fn parse_threads(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(format!("{text:?} is not a thread count from 1 to 64")),
    }
}
