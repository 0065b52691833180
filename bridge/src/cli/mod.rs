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
    /// Parses the command line. A bad argument ends the process with one line on stderr that
    /// says what to fix (clap's message with its tips folded in) and exit status 2; `--help` and
    /// `--version` print as usual.
    pub fn parse_or_exit() -> Cli {
        use clap::error::ErrorKind;
        match Cli::try_parse() {
            Ok(cli) => cli,
            Err(e) if !e.use_stderr() || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                e.exit()
            }
            Err(e) => {
                eprintln!("tlpbridge: {}", one_line_error(&e.render().to_string()));
                std::process::exit(EXIT_BAD_INPUT.into())
            }
        }
    }

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

/// Folds clap's multi-line error (message, indented continuation lines, tips, then a usage
/// block) into one line, without the usage block.
fn one_line_error(rendered: &str) -> String {
    let mut line = String::new();
    for text in rendered.lines() {
        let trimmed = text.trim();
        if trimmed.starts_with("Usage:") || trimmed.starts_with("For more information") {
            break;
        }
        if trimmed.is_empty() {
            continue;
        }
        let trimmed = trimmed.strip_prefix("error: ").unwrap_or(trimmed);
        if !line.is_empty() {
            line.push_str(if text.starts_with(' ') && !trimmed.starts_with("tip:") { " " } else { "; " });
        }
        line.push_str(trimmed);
    }
    line.push_str(" (see --help)");
    line
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_fold_into_one_line_without_the_usage_block() {
        let rendered = "error: the following required arguments were not provided:\n  --server <PATH>\n  \
            --link <LINK>\n\nUsage: tlpbridge run --server <PATH> --link <LINK>\n\nFor more information, \
            try '--help'.\n";
        assert_eq!(
            one_line_error(rendered),
            "the following required arguments were not provided: --server <PATH> --link <LINK> (see --help)"
        );
        let rendered = "error: unexpected argument '--mpss' found\n\n  tip: a similar argument exists: \
            '--mps'\n\nUsage: tlpbridge run [OPTIONS]\n";
        assert_eq!(
            one_line_error(rendered),
            "unexpected argument '--mpss' found; tip: a similar argument exists: '--mps' (see --help)"
        );
    }
}
