//! `tlpbridge sim device|rc`: the co-simulation tools.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct SimArgs {}

pub fn run(_args: SimArgs) -> ExitCode {
    ExitCode::FAILURE
}
