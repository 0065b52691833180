//! The workload script (`docs/rc-script.md`): parsing with line numbers, and running it against
//! a [`RootComplex`].

use super::complex::RootComplex;
use super::enumerate::IrqMode;
use super::io::RootPortIo;
use super::report::{Enumeration, IrqKind, IrqReport, Report, StepReport};
use crate::error::{Error, Result};

/// A parsed script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    pub file: String,
    pub steps: Vec<Step>,
}

/// One command with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub line: usize,
    /// The command text without its comment.
    pub text: String,
    pub command: Command,
}

/// Where an MMIO access goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// BAR `slot` (as enumeration assigned it) plus an offset.
    Bar { slot: u8, offset: u64 },
    /// An absolute bus address.
    Absolute(u64),
}

/// A time span: plain cycles, or a simulated duration converted with the cycle length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    Cycles(u64),
    Picos(u64),
}

/// How `fill`/`check` generate bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    Zero,
    /// Byte `i` is `i mod 256`.
    Inc,
    /// Every byte is the value.
    Byte(u8),
}

impl Pattern {
    fn bytes(self, len: usize) -> Vec<u8> {
        match self {
            Pattern::Zero => vec![0; len],
            Pattern::Inc => (0..len).map(|i| i as u8).collect(),
            Pattern::Byte(b) => vec![b; len],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Enumerate,
    ExpectId { vendor: u16, device: u16 },
    Read { width: u8, target: Target, expect: Option<u64> },
    Write { width: u8, target: Target, value: u64 },
    Fill { address: u64, len: u64, pattern: Pattern },
    CheckEquals { address: u64, len: u64, other: u64 },
    CheckPattern { address: u64, len: u64, pattern: Pattern },
    WaitIrq { kind: IrqKind, vector: u32, timeout: Span },
    Sleep(Span),
    EnableMsi,
    EnableMsix,
}

/// Largest `fill`/`check` length, so a script cannot ask for unbounded memory.
pub const MAX_HOST_SPAN: u64 = 64 << 20;

impl Script {
    /// Parses `text`; `file` names it in errors (`file:line: message`).
    pub fn parse(file: &str, text: &str) -> Result<Script> {
        let mut steps = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let code = raw.split('#').next().unwrap_or("").trim();
            if code.is_empty() {
                continue;
            }
            let words: Vec<&str> = code.split_whitespace().collect();
            let command = parse_command(&words).map_err(|message| Error::Script {
                file: file.to_owned(),
                line,
                message,
            })?;
            steps.push(Step { line, text: words.join(" "), command });
        }
        Ok(Script { file: file.to_owned(), steps })
    }
}

fn parse_command(words: &[&str]) -> Result<Command, String> {
    let (name, args) = words.split_first().ok_or("empty command")?;
    let arity = |n: usize, usage: &str| -> Result<(), String> {
        if args.len() == n { Ok(()) } else { Err(format!("usage: {usage}")) }
    };
    let width = |name: &str, prefix: &str| -> Option<u8> {
        match name.strip_prefix(prefix)? {
            "8" => Some(1),
            "16" => Some(2),
            "32" => Some(4),
            "64" => Some(8),
            _ => None,
        }
    };
    if let Some(w) = width(name, "read") {
        return match args {
            [target] => Ok(Command::Read { width: w, target: parse_target(target)?, expect: None }),
            [target, "expect", value] => Ok(Command::Read {
                width: w,
                target: parse_target(target)?,
                expect: Some(parse_value(value, w)?),
            }),
            _ => Err(format!("usage: {name} ADDRESS [expect VALUE]")),
        };
    }
    if let Some(w) = width(name, "write") {
        arity(2, &format!("{name} ADDRESS VALUE"))?;
        return Ok(Command::Write {
            width: w,
            target: parse_target(args[0])?,
            value: parse_value(args[1], w)?,
        });
    }
    match *name {
        "enumerate" => arity(0, "enumerate").map(|()| Command::Enumerate),
        "enable-msi" => arity(0, "enable-msi").map(|()| Command::EnableMsi),
        "enable-msix" => arity(0, "enable-msix").map(|()| Command::EnableMsix),
        "expect-id" => {
            arity(1, "expect-id VVVV:DDDD")?;
            let (v, d) = args[0].split_once(':').ok_or("expected VVVV:DDDD (hex vendor and device IDs)")?;
            let hex = |s: &str| u16::from_str_radix(s, 16).map_err(|_| format!("{s:?} is not a 16-bit hex ID"));
            Ok(Command::ExpectId { vendor: hex(v)?, device: hex(d)? })
        }
        "fill" => match args {
            ["host", address, len, "pattern", pattern @ ..] => Ok(Command::Fill {
                address: parse_number(address)?,
                len: parse_len(len)?,
                pattern: parse_pattern(pattern)?,
            }),
            _ => Err("usage: fill host ADDRESS LENGTH pattern inc|zero|byte VALUE".into()),
        },
        "check" => match args {
            ["host", address, len, "equals", "host", other] => Ok(Command::CheckEquals {
                address: parse_number(address)?,
                len: parse_len(len)?,
                other: parse_number(other)?,
            }),
            ["host", address, len, "pattern", pattern @ ..] => Ok(Command::CheckPattern {
                address: parse_number(address)?,
                len: parse_len(len)?,
                pattern: parse_pattern(pattern)?,
            }),
            _ => Err(
                "usage: check host ADDRESS LENGTH equals host ADDRESS | check host ADDRESS LENGTH pattern PATTERN"
                    .into(),
            ),
        },
        "wait-irq" => match args {
            [kind, vector, "timeout", span] => {
                let (kind, vector) = match *kind {
                    "msi" => (IrqKind::Msi, parse_vector(vector, 31)?),
                    "msix" => (IrqKind::Msix, parse_vector(vector, 2047)?),
                    "intx" => {
                        let pin = match vector.to_ascii_lowercase().as_str() {
                            "a" => 0,
                            "b" => 1,
                            "c" => 2,
                            "d" => 3,
                            _ => return Err(format!("INTx pin {vector:?} is not a, b, c or d")),
                        };
                        (IrqKind::Intx, pin)
                    }
                    other => return Err(format!("interrupt kind {other:?} is not msi, msix or intx")),
                };
                Ok(Command::WaitIrq { kind, vector, timeout: parse_span(span)? })
            }
            _ => Err("usage: wait-irq msi|msix N timeout DURATION | wait-irq intx a|b|c|d timeout DURATION".into()),
        },
        "sleep" => {
            arity(1, "sleep DURATION (cycles, or with a unit: ps ns us ms s)")?;
            Ok(Command::Sleep(parse_span(args[0])?))
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

fn parse_number(s: &str) -> Result<u64, String> {
    let clean = s.replace('_', "");
    let parsed = match clean.strip_prefix("0x").or_else(|| clean.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => clean.parse::<u64>(),
    };
    parsed.map_err(|_| format!("{s:?} is not a number (decimal or 0x hex, up to 64 bits)"))
}

fn parse_value(s: &str, width: u8) -> Result<u64, String> {
    let v = parse_number(s)?;
    if width < 8 && v >> (8 * u32::from(width)) != 0 {
        return Err(format!("{s} does not fit in {} bits", 8 * u32::from(width)));
    }
    Ok(v)
}

fn parse_len(s: &str) -> Result<u64, String> {
    let len = parse_number(s)?;
    if len == 0 || len > MAX_HOST_SPAN {
        return Err(format!("length {len} must be 1..={MAX_HOST_SPAN}"));
    }
    Ok(len)
}

fn parse_vector(s: &str, max: u32) -> Result<u32, String> {
    match parse_number(s)? {
        v if v <= u64::from(max) => Ok(v as u32),
        v => Err(format!("vector {v} is above {max}")),
    }
}

fn parse_target(s: &str) -> Result<Target, String> {
    let lower = s.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("bar") else { return parse_number(s).map(Target::Absolute) };
    let (slot, offset) = match rest.split_once('+') {
        Some((slot, offset)) => (slot, parse_number(offset)?),
        None => (rest, 0),
    };
    match slot.parse::<u8>() {
        Ok(slot) if slot <= 5 => Ok(Target::Bar { slot, offset }),
        _ => Err(format!("{s:?}: BAR number must be 0..=5 (barN or barN+OFFSET)")),
    }
}

fn parse_pattern(words: &[&str]) -> Result<Pattern, String> {
    match words {
        ["zero"] => Ok(Pattern::Zero),
        ["inc"] => Ok(Pattern::Inc),
        ["byte", v] => Ok(Pattern::Byte(parse_value(v, 1)? as u8)),
        _ => Err("pattern must be inc, zero or byte VALUE".into()),
    }
}

fn parse_span(s: &str) -> Result<Span, String> {
    let split = s.find(|c: char| c.is_ascii_alphabetic() && c != 'x' && c != 'X').unwrap_or(s.len());
    // `0x10` is a number; units start after the digits.
    let (number, unit) = if s.starts_with("0x") || s.starts_with("0X") { (s, "") } else { s.split_at(split) };
    let n = parse_number(number)?;
    let scale: u64 = match unit {
        "" | "cycles" => return Ok(Span::Cycles(n)),
        "ps" => 1,
        "ns" => 1_000,
        "us" => 1_000_000,
        "ms" => 1_000_000_000,
        "s" => 1_000_000_000_000,
        other => return Err(format!("unknown time unit {other:?} (cycles, ps, ns, us, ms or s)")),
    };
    n.checked_mul(scale).map(Span::Picos).ok_or_else(|| format!("{s} is too long"))
}

impl std::str::FromStr for Span {
    type Err = String;

    /// `N` (cycles), `Ncycles`, or `N` with a unit: `ps`, `ns`, `us`, `ms`, `s`.
    fn from_str(s: &str) -> Result<Span, String> {
        parse_span(s)
    }
}

impl Span {
    /// In cycles of `ps_per_cycle` picoseconds (rounded up).
    pub fn cycles(self, ps_per_cycle: u32) -> u64 {
        match self {
            Span::Cycles(c) => c,
            Span::Picos(ps) => ps.div_ceil(u64::from(ps_per_cycle.max(1))),
        }
    }
}

/// Runs `script` to the end or the first failure and reports. `enumeration` carries over an
/// enumeration done before (or `None`).
pub async fn run_script<I: RootPortIo>(rc: &mut RootComplex<I>, script: &Script) -> Report {
    let mut enumeration: Option<Enumeration> = None;
    let mut steps = Vec::new();
    let mut error = None;
    for step in &script.steps {
        let start = rc.now();
        let outcome = run_step(rc, &mut enumeration, &step.command).await;
        let cycles = rc.now().saturating_sub(start);
        let (passed, detail) = match outcome {
            Ok(detail) => (true, detail),
            Err(e) => (false, e.to_string()),
        };
        tracing::info!(line = step.line, command = %step.text, passed, %detail, "rc: script step");
        steps.push(StepReport {
            line: step.line,
            command: step.text.clone(),
            passed,
            detail: detail.clone(),
            start_cycle: start,
            cycles,
        });
        if !passed {
            error = Some(
                Error::Rc { line: Some(step.line), message: format!("{}: {detail}", step.text) }.to_string(),
            );
            break;
        }
    }
    // Let posted writes and completions still in flight reach their destination.
    if error.is_none() {
        if let Err(e) = rc.settle().await {
            error = Some(e.to_string());
        }
    }
    build_report(rc, enumeration, steps, error)
}

fn build_report<I: RootPortIo>(
    rc: &RootComplex<I>,
    enumeration: Option<Enumeration>,
    steps: Vec<StepReport>,
    error: Option<String>,
) -> Report {
    let c = rc.counters();
    Report {
        passed: error.is_none(),
        error,
        enumeration,
        steps,
        tlps_sent: c.tlps_sent.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        tlps_received: c.tlps_received.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        malformed_received: c.malformed_received,
        unexpected_completions: c.unexpected_completions,
        dma_read_requests: c.dma_read_requests,
        dma_read_bytes: c.dma_read_bytes,
        dma_write_requests: c.dma_write_requests,
        dma_write_bytes: c.dma_write_bytes,
        unsupported_requests: c.unsupported_requests,
        latency: c.latency,
        mean_latency_cycles: c.latency.mean_cycles(),
        interrupts: rc
            .irq_log()
            .iter()
            .map(|e| IrqReport { kind: e.kind, vector: e.vector, cycle: e.cycle })
            .collect(),
        ps_per_cycle: rc.config().ps_per_cycle,
        final_cycle: rc.now(),
    }
}

fn fail(message: impl Into<String>) -> Error {
    Error::Rc { line: None, message: message.into() }
}

fn resolve(enumeration: &Option<Enumeration>, target: Target, width: u8) -> Result<(u64, bool)> {
    match target {
        Target::Absolute(address) => Ok((address, false)),
        Target::Bar { slot, offset } => {
            let e = enumeration.as_ref().ok_or_else(|| fail(format!("bar{slot} used before enumerate")))?;
            let bar = e
                .bars
                .iter()
                .find(|b| b.slot == slot)
                .ok_or_else(|| fail(format!("BAR{slot} is not implemented by the device")))?;
            if offset.saturating_add(u64::from(width)) > bar.size {
                return Err(fail(format!(
                    "bar{slot}+{offset:#x} ({width} bytes) is outside BAR{slot} ({} bytes)",
                    bar.size
                )));
            }
            Ok((bar.address + offset, bar.kind == "io"))
        }
    }
}

fn host_bytes<I: RootPortIo>(rc: &RootComplex<I>, address: u64, len: u64) -> Result<Vec<u8>> {
    let mut data = vec![0u8; len as usize];
    if rc.memory().read(address, &mut data) {
        Ok(data)
    } else {
        Err(fail(format!(
            "host range {address:#x}+{len:#x} is outside host memory ({:#x} bytes)",
            rc.memory().size()
        )))
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

async fn run_step<I: RootPortIo>(
    rc: &mut RootComplex<I>,
    enumeration: &mut Option<Enumeration>,
    command: &Command,
) -> Result<String> {
    let ps = rc.config().ps_per_cycle;
    match command {
        Command::Enumerate => {
            let e = rc.enumerate().await?;
            let detail = format!(
                "{} {:04x}:{:04x}, {} BARs, interrupts {}",
                e.bdf,
                e.vendor_id,
                e.device_id,
                e.bars.len(),
                e.interrupts
            );
            *enumeration = Some(e);
            Ok(detail)
        }
        Command::ExpectId { vendor, device } => {
            let e = enumeration.as_ref().ok_or_else(|| fail("expect-id before enumerate"))?;
            if (e.vendor_id, e.device_id) == (*vendor, *device) {
                Ok(format!("{vendor:04x}:{device:04x}"))
            } else {
                Err(fail(format!(
                    "expected ID {vendor:04x}:{device:04x}, the device is {:04x}:{:04x}",
                    e.vendor_id, e.device_id
                )))
            }
        }
        Command::Read { width, target, expect } => {
            let (address, io) = resolve(enumeration, *target, *width)?;
            let data = if io {
                rc.io_read(address, *width).await?
            } else {
                rc.mem_read(address, u64::from(*width)).await?
            };
            let mut le = [0u8; 8];
            let n = data.len().min(8);
            le[..n].copy_from_slice(&data[..n]);
            let value = u64::from_le_bytes(le);
            let digits = usize::from(*width) * 2;
            match expect {
                Some(expected) if *expected != value => Err(fail(format!(
                    "read {value:#0w$x} at {address:#x}, expected {expected:#0w$x}",
                    w = digits + 2
                ))),
                _ => Ok(format!("read {value:#0w$x} at {address:#x}", w = digits + 2)),
            }
        }
        Command::Write { width, target, value } => {
            let (address, io) = resolve(enumeration, *target, *width)?;
            let bytes = value.to_le_bytes();
            let data = &bytes[..usize::from(*width)];
            if io {
                rc.io_write(address, data).await?;
            } else {
                rc.mem_write(address, data).await?;
            }
            Ok(format!("wrote {value:#x} at {address:#x}"))
        }
        Command::Fill { address, len, pattern } => {
            let data = pattern.bytes(*len as usize);
            if rc.memory_mut().write(*address, &data) {
                Ok(format!("filled {len} bytes at {address:#x}"))
            } else {
                Err(fail(format!("host range {address:#x}+{len:#x} is outside host memory")))
            }
        }
        Command::CheckEquals { address, len, other } => {
            let a = host_bytes(rc, *address, *len)?;
            let b = host_bytes(rc, *other, *len)?;
            match first_difference(&a, &b) {
                None => Ok(format!("{len} bytes at {address:#x} equal those at {other:#x}")),
                Some(i) => Err(fail(format!(
                    "host {:#x} is {:#04x} but host {:#x} is {:#04x} (first of the {len} bytes to differ)",
                    address + i as u64,
                    a[i],
                    other + i as u64,
                    b[i]
                ))),
            }
        }
        Command::CheckPattern { address, len, pattern } => {
            let a = host_bytes(rc, *address, *len)?;
            let b = pattern.bytes(*len as usize);
            match first_difference(&a, &b) {
                None => Ok(format!("{len} bytes at {address:#x} match {pattern:?}")),
                Some(i) => Err(fail(format!(
                    "host {:#x} is {:#04x}, pattern {pattern:?} expects {:#04x}",
                    address + i as u64,
                    a[i],
                    b[i]
                ))),
            }
        }
        Command::WaitIrq { kind, vector, timeout } => {
            let waited = rc.wait_irq(*kind, *vector, timeout.cycles(ps)).await?;
            Ok(format!("{} {} after {waited} cycles", kind.name(), kind.vector_name(*vector)))
        }
        Command::Sleep(span) => {
            let until = rc.now().saturating_add(span.cycles(ps));
            rc.sleep_until(until).await?;
            Ok(format!("slept until cycle {until}"))
        }
        Command::EnableMsi | Command::EnableMsix => {
            let e = enumeration.as_mut().ok_or_else(|| fail("enable-msi/enable-msix before enumerate"))?;
            let mode = if *command == Command::EnableMsi { IrqMode::Msi } else { IrqMode::Msix };
            rc.enable_interrupts(e, mode).await?;
            Ok(format!("interrupts {}", e.interrupts))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command_with_comments_and_blank_lines() {
        let text = "# setup\nenumerate\nexpect-id 1de5:0001  # our card\n\nread32 bar0+0x10 expect 0xdead_beef\n\
                    write64 bar2 0x1122334455667788\nread8 0x8000_0000\nfill host 0x1000 256 pattern inc\n\
                    check host 0x2000 256 equals host 0x1000\ncheck host 0 4 pattern byte 0xaa\n\
                    wait-irq msi 0 timeout 10ms\nwait-irq intx A timeout 500\nsleep 1000\nsleep 2us\nenable-msix\n";
        let s = Script::parse("t.rcs", text).unwrap();
        assert_eq!(s.steps.len(), 13);
        assert_eq!(s.steps[1].line, 3);
        assert_eq!(s.steps[1].command, Command::ExpectId { vendor: 0x1de5, device: 1 });
        assert_eq!(
            s.steps[2].command,
            Command::Read {
                width: 4,
                target: Target::Bar { slot: 0, offset: 0x10 },
                expect: Some(0xdead_beef)
            }
        );
        assert_eq!(
            s.steps[8].command,
            Command::WaitIrq { kind: IrqKind::Msi, vector: 0, timeout: Span::Picos(10_000_000_000) }
        );
        assert_eq!(Span::Picos(2_000_000).cycles(1000), 2000);
        assert_eq!(
            s.steps[9].command,
            Command::WaitIrq { kind: IrqKind::Intx, vector: 0, timeout: Span::Cycles(500) }
        );
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let err = Script::parse("w.rcs", "enumerate\n\nread32 bar9 expect 1\n").unwrap_err().to_string();
        assert_eq!(err, "w.rcs:3: \"bar9\": BAR number must be 0..=5 (barN or barN+OFFSET)");
        let err = Script::parse("w.rcs", "write8 bar0 0x100").unwrap_err().to_string();
        assert_eq!(err, "w.rcs:1: 0x100 does not fit in 8 bits");
        let err = Script::parse("w.rcs", "frobnicate").unwrap_err().to_string();
        assert_eq!(err, "w.rcs:1: unknown command \"frobnicate\"");
        let err = Script::parse("w.rcs", "sleep 3 days").unwrap_err().to_string();
        assert!(err.starts_with("w.rcs:1: usage: sleep"), "{err}");
        let err = Script::parse("w.rcs", "sleep 3h").unwrap_err().to_string();
        assert_eq!(err, "w.rcs:1: unknown time unit \"h\" (cycles, ps, ns, us, ms or s)");
    }
}
