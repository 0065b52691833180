//! `tlpbridge probe`.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {}

pub fn run(_args: ProbeArgs) -> ExitCode {
    ExitCode::FAILURE
}
