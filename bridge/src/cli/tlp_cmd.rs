//! `tlpbridge tlp decode|encode`: inspect TLPs and build test vectors. The JSON form is
//! `tlp::json`, documented in `docs/tlp-json.md` together with these commands' exit statuses.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use tlp::Tlp;
use tlp::json;
use tlp::validate::Limits;

use super::EXIT_BAD_INPUT;

#[derive(Debug, clap::Args)]
pub struct TlpArgs {
    #[command(subcommand)]
    command: TlpCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TlpCommand {
    /// Decode TLPs given as hex, one per argument.
    ///
    /// Spaces and underscores inside an argument are ignored. Prints one line per TLP: the
    /// summary, or with --json the JSON form (docs/tlp-json.md). Exits with status 2 if any TLP
    /// is malformed or breaks a rule (the rule is named on stderr).
    Decode {
        /// Print the JSON form (docs/tlp-json.md) instead of the one-line summary.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        limits: LimitArgs,
        /// TLP bytes in hex, e.g. "00000001 0100 00 0f 00001000".
        #[arg(required = true, value_name = "HEX")]
        hex: Vec<String>,
    },
    /// Encode TLPs described in JSON and print each as hex.
    ///
    /// One JSON object (docs/tlp-json.md) per argument; `-` reads JSON lines from stdin, one TLP
    /// per line. Prints one hex line per TLP. Exits with status 2 if any JSON is not a TLP or the
    /// TLP breaks a rule (unless --allow-invalid).
    Encode {
        /// Emit TLPs that break the spec's rules too (for malformed test vectors); the broken rule
        /// is still reported on stderr as a warning.
        #[arg(long)]
        allow_invalid: bool,
        #[command(flatten)]
        limits: LimitArgs,
        /// One JSON object per argument, or `-` for JSON lines on stdin.
        #[arg(required = true, value_name = "JSON")]
        json: Vec<String>,
    },
}

/// The link limits checked in addition to the unconditional rules.
#[derive(Debug, clap::Args)]
struct LimitArgs {
    /// Also check payloads against this Max_Payload_Size in bytes (128, 256, ..., 4096).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    mps: Option<u16>,
    /// Also check memory reads against this Max_Read_Request_Size in bytes (128, 256, ..., 4096).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    mrrs: Option<u16>,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits { max_payload_size: self.mps, max_read_request_size: self.mrrs }
    }
}

/// Max_Payload_Size and Max_Read_Request_Size are 128 << n bytes, n = 0..=5.
fn parse_size(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(n) if (128..=4096).contains(&n) && n.is_power_of_two() => Ok(n),
        _ => Err(format!("{text:?} is not one of 128, 256, 512, 1024, 2048, 4096")),
    }
}

pub fn run(args: TlpArgs) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let outcome = match args.command {
        TlpCommand::Decode { json, limits, hex } => decode(&hex, json, &limits.limits(), &mut out),
        TlpCommand::Encode { allow_invalid, limits, json } => {
            encode(&json, allow_invalid, &limits.limits(), &mut out)
        }
    };
    match outcome.and_then(|o| out.flush().map(|()| o)) {
        Ok(Outcome::AllGood) => ExitCode::SUCCESS,
        Ok(Outcome::BadInput) => ExitCode::from(EXIT_BAD_INPUT),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether every TLP was fine; I/O errors are the `Err` side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    AllGood,
    BadInput,
}

impl Outcome {
    fn and(self, ok: bool) -> Outcome {
        if ok { self } else { Outcome::BadInput }
    }
}

/// The kebab-case name of what made `Tlp::parse` reject the bytes.
fn parse_error_rule(e: &tlp::TlpError) -> &'static str {
    use tlp::TlpError::*;
    match e {
        Truncated { .. } => "truncated",
        TrailingBytes { .. } => "trailing-bytes",
        LengthMismatch { .. } => "length-mismatch",
        ReservedFmtType { .. } => "reserved-fmt-type",
        ReservedBitsSet { .. } => "reserved-bits-set",
        Invalid(v) => v.rule.name(),
        // Parse returns only the variants above; the crate's other errors (buffers, config space)
        // are not about TLP bytes.
        _ => "malformed",
    }
}

fn violation_message(v: &tlp::validate::Violation) -> String {
    format!("breaks rule {} ({}): {}", v.rule.name(), v.rule.spec_section(), v.detail)
}

fn decode(hex: &[String], as_json: bool, limits: &Limits, out: &mut impl Write) -> std::io::Result<Outcome> {
    let mut outcome = Outcome::AllGood;
    for (i, text) in hex.iter().enumerate() {
        let n = i + 1;
        let bytes = match json::hex_to_bytes(text) {
            Ok(bytes) => bytes,
            Err(problem) => {
                eprintln!("error: TLP {n}: not hex: {problem}");
                outcome = Outcome::BadInput;
                continue;
            }
        };
        let tlp = match Tlp::parse(&bytes) {
            Ok(tlp) => tlp,
            Err(e) => {
                eprintln!("error: TLP {n}: malformed ({}): {e}", parse_error_rule(&e));
                outcome = Outcome::BadInput;
                continue;
            }
        };
        tracing::debug!(tlp = %tlp, bytes = bytes.len(), "decoded");
        if as_json {
            writeln!(out, "{}", json::to_json_string(&tlp))?;
        } else {
            writeln!(out, "{tlp}")?;
        }
        if let Err(v) = tlp.validate(limits) {
            eprintln!("error: TLP {n}: {}", violation_message(&v));
            outcome = Outcome::BadInput;
        }
    }
    Ok(outcome)
}

fn encode(
    args: &[String],
    allow_invalid: bool,
    limits: &Limits,
    out: &mut impl Write,
) -> std::io::Result<Outcome> {
    let mut outcome = Outcome::AllGood;
    let mut n = 0usize;
    for arg in args {
        if arg == "-" {
            let stdin = std::io::stdin();
            for (line_no, line) in stdin.lock().lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                n += 1;
                let ok = encode_one(
                    &line,
                    &format!("TLP {n} (stdin line {})", line_no + 1),
                    allow_invalid,
                    limits,
                    out,
                )?;
                outcome = outcome.and(ok);
            }
        } else {
            n += 1;
            let ok = encode_one(arg, &format!("TLP {n}"), allow_invalid, limits, out)?;
            outcome = outcome.and(ok);
        }
    }
    Ok(outcome)
}

/// Encodes one JSON text; false when it is not a TLP or breaks a rule that is not allowed.
fn encode_one(
    text: &str,
    which: &str,
    allow_invalid: bool,
    limits: &Limits,
    out: &mut impl Write,
) -> std::io::Result<bool> {
    let tlp = match json::from_json_str(text) {
        Ok(tlp) => tlp,
        Err(e) => {
            eprintln!("error: {which}: {e}");
            return Ok(false);
        }
    };
    if let Err(v) = tlp.validate(limits) {
        if !allow_invalid {
            eprintln!("error: {which}: {} (--allow-invalid emits it anyway)", violation_message(&v));
            return Ok(false);
        }
        eprintln!("warning: {which}: {}", violation_message(&v));
    }
    tracing::debug!(tlp = %tlp, "encoded");
    writeln!(out, "{}", json::bytes_to_hex(&tlp.to_bytes()))?;
    Ok(true)
}
