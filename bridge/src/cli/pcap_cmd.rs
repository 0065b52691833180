//! `tlpbridge pcap show`: decode a capture (ours, or a NetTLP trace) with our own decoders.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use bridge::capture::read::read_capture;
use bridge::capture::show::{Filter, analyze, to_json, to_line};

use super::EXIT_BAD_INPUT;

#[derive(Debug, clap::Args)]
pub struct PcapArgs {
    #[command(subcommand)]
    command: PcapCommand,
}

#[derive(Debug, clap::Subcommand)]
enum PcapCommand {
    /// Print every record of a capture: time, direction, decoded TLP or vfio-user message, and
    /// for completions/replies the request they answer with latency.
    ///
    /// Reads pcapng files written with --pcap (docs/capture-format.md) and NetTLP traces
    /// (pcap/pcapng, Ethernet/IPv4/UDP with the 6-byte NetTLP header). Exits 2 if the file
    /// cannot be read or the filter does not parse; a file cut short (a killed bridge) is read
    /// up to its last whole record, with a warning on stderr.
    Show {
        /// One JSON object per record (fields in docs/capture-format.md).
        #[arg(long)]
        json: bool,
        /// Only records matching every term, e.g. "kind=MRd,CplD requester=01:00.0 tag=0x12
        /// addr=0x1000-0x1fff dir=in iface=tlp".
        #[arg(long, value_name = "EXPR")]
        filter: Option<String>,
        /// The capture file.
        file: PathBuf,
    },
}

pub fn run(args: PcapArgs) -> ExitCode {
    match args.command {
        PcapCommand::Show { json, filter, file } => show(&file, json, filter.as_deref()),
    }
}

fn show(file: &std::path::Path, json: bool, filter: Option<&str>) -> ExitCode {
    let filter = match filter.map(Filter::parse).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let capture = match read_capture(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    if let Some(reason) = &capture.truncated {
        eprintln!(
            "warning: {}: {reason}; showing the {} whole records before it",
            file.display(),
            capture.records.len()
        );
    }
    let t0 = capture.records.first().map_or(0, |r| r.time_ns);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for record in analyze(&capture.records).iter().filter(|r| filter.matches(r)) {
        let line = if json { to_json(record).to_string() } else { to_line(record, t0) };
        if writeln!(out, "{line}").is_err() {
            // stdout closed (e.g. piped into head): nothing more to do.
            return ExitCode::SUCCESS;
        }
    }
    if out.flush().is_err() {
        return ExitCode::SUCCESS;
    }
    let dropped = capture.dropped();
    if dropped > 0 {
        eprintln!("warning: the capture lost {dropped} records (the writer fell behind the bridge)");
    }
    ExitCode::SUCCESS
}
