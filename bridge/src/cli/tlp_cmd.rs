//! `tlpbridge tlp decode|encode`.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct TlpArgs {}

pub fn run(_args: TlpArgs) -> ExitCode {
    ExitCode::FAILURE
}
