//! `tlpbridge`: plugs a vfio-user device into a PCIe root port that speaks TLPs.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli::init_tracing();
    cli.run()
}
