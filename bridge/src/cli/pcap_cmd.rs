//! `tlpbridge pcap show`: decode a capture (ours, or a NetTLP trace) with our own decoders.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bridge::capture::read::RecordReader;
use bridge::capture::show::{Analyzer, Filter, to_json, to_line};
use bridge::capture::{
    Capture, CaptureConfig, Direction, TlpFlags, TlpHeaderRepr, VfioSocket, VfioUserHeaderRepr,
};
use serde_json::Value;

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
    /// (pcap/pcapng, Ethernet/IPv4/UDP with the 6-byte NetTLP header), one record at a time.
    /// Exits 2 if the file cannot be read or the filter does not parse; a file cut short (a
    /// killed bridge) is read up to its last whole record, with a warning on stderr.
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
    /// Write a capture from JSON lines on stdin: the objects `pcap show --json` prints (only
    /// `interface`, `direction`, `bytes` and, for TLPs, `link_id`, `link_time_ps`, `flags`, for
    /// vfio-user messages `socket` and `fds` are read), so test vectors for the dissector and
    /// edited captures can be made by hand. Exits 2 on the first line that is not such a record.
    Write {
        /// The capture file to create.
        file: PathBuf,
    },
}

pub fn run(args: PcapArgs) -> ExitCode {
    match args.command {
        PcapCommand::Show { json, filter, file } => show(&file, json, filter.as_deref()),
        PcapCommand::Write { file } => write(&file),
    }
}

/// One input line as a record to write.
enum InputRecord {
    Tlp(TlpHeaderRepr, Vec<u8>),
    VfioUser(VfioUserHeaderRepr, Vec<u8>),
}

fn parse_input_line(line: &str) -> Result<InputRecord, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let field = |name: &str| value.get(name).filter(|v| !v.is_null());
    let text = |name: &str| -> Result<&str, String> {
        field(name).and_then(Value::as_str).ok_or_else(|| format!("\"{name}\" must be a string"))
    };
    let number = |name: &str, default: u64| -> Result<u64, String> {
        match field(name) {
            None => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| format!("\"{name}\" must be a non-negative integer")),
        }
    };
    let direction = match text("direction")? {
        "in" => Direction::Inbound,
        "out" => Direction::Outbound,
        other => return Err(format!("direction {other:?} is neither \"in\" nor \"out\"")),
    };
    let bytes = tlp::json::hex_to_bytes(text("bytes")?).map_err(|e| format!("bytes: {e}"))?;
    match text("interface")? {
        "tlp" => {
            let mut flags = TlpFlags::default();
            if let Some(list) = field("flags") {
                for flag in list.as_array().ok_or("\"flags\" must be an array of names")? {
                    match flag.as_str() {
                        Some("malformed") => flags.malformed = true,
                        Some("poisoned") => flags.poisoned = true,
                        Some("retransmitted") => flags.retransmitted = true,
                        Some("simulated-time") => flags.simulated_time = true,
                        _ => return Err(format!("unknown flag {flag}")),
                    }
                }
            }
            let link_id = u8::try_from(number("link_id", 0)?).map_err(|_| "link_id must be 0..=255")?;
            let link_time_ps = number("link_time_ps", 0)?;
            Ok(InputRecord::Tlp(TlpHeaderRepr { direction, link_id, flags, link_time_ps }, bytes))
        }
        "vfio-user" => {
            let socket = match field("socket").and_then(Value::as_str).unwrap_or("main") {
                "main" => VfioSocket::Main,
                "twin" => VfioSocket::Twin,
                other => return Err(format!("socket {other:?} is neither \"main\" nor \"twin\"")),
            };
            let fds = u8::try_from(number("fds", 0)?).map_err(|_| "fds must be 0..=255")?;
            Ok(InputRecord::VfioUser(VfioUserHeaderRepr { direction, socket, fds }, bytes))
        }
        other => Err(format!("interface {other:?} is neither \"tlp\" nor \"vfio-user\"")),
    }
}

fn write(file: &Path) -> ExitCode {
    let config = CaptureConfig {
        link_kind: "file".to_owned(),
        link_description: "records written by tlpbridge pcap write".to_owned(),
        ..CaptureConfig::default()
    };
    let (handle, writer) = match Capture::create(file, config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let mut status = ExitCode::SUCCESS;
    for (index, line) in std::io::stdin().lock().lines().enumerate() {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                eprintln!("error: reading stdin: {e}");
                status = ExitCode::from(EXIT_BAD_INPUT);
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match parse_input_line(&line) {
            Ok(InputRecord::Tlp(header, bytes)) => handle.write_tlp_waiting(&header, &bytes),
            Ok(InputRecord::VfioUser(header, bytes)) => handle.write_vfio_user_waiting(&header, &bytes),
            Err(e) => {
                eprintln!("error: stdin line {}: {e}", index + 1);
                status = ExitCode::from(EXIT_BAD_INPUT);
                break;
            }
        }
    }
    drop(handle);
    if let Err(e) = writer.finish() {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    status
}

fn show(file: &Path, json: bool, filter: Option<&str>) -> ExitCode {
    let filter = match filter.map(Filter::parse).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let mut reader = match RecordReader::open(file) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut analyzer = Analyzer::new();
    let mut t0 = None;
    let mut records = 0u64;
    let mut record_drops = 0u64;
    loop {
        let raw = match reader.next_record() {
            Ok(Some(raw)) => raw,
            Ok(None) => break,
            Err(e) => {
                let _ = out.flush();
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        };
        records += 1;
        record_drops += raw.drop_count.unwrap_or(0);
        let t0 = *t0.get_or_insert(raw.time_ns);
        let record = analyzer.record(&raw);
        if !filter.matches(&record) {
            continue;
        }
        let line = if json { to_json(&record).to_string() } else { to_line(&record, t0) };
        if writeln!(out, "{line}").is_err() {
            // stdout closed (e.g. piped into head): nothing more to do.
            return ExitCode::SUCCESS;
        }
    }
    if out.flush().is_err() {
        return ExitCode::SUCCESS;
    }
    if let Some(reason) = reader.truncated() {
        eprintln!("warning: {}: {reason}; showed the {records} whole records before it", file.display());
    }
    // Statistics blocks carry the totals; a file cut short has only the per-record counts.
    let dropped = if reader.interface_drops().is_empty() {
        record_drops
    } else {
        reader.interface_drops().iter().map(|(_, d)| d).sum()
    };
    if dropped > 0 {
        eprintln!("warning: the capture lost {dropped} records (the writer fell behind the bridge)");
    }
    ExitCode::SUCCESS
}
