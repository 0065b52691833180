//! Runs the Wireshark dissector (docs/wireshark/tlpbridge.lua) under tshark and checks that its
//! fields equal `tlpbridge pcap show --json` on every record. Shared by the bridge's capture
//! tests and `tests/tests/capture_tshark.rs` (included with `#[path]`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// `tshark`, or `None` after printing a loud SKIP line. Under `CI=true` a missing tshark fails
/// the test: `.ci/install-peers` installs it.
pub fn tshark_or_skip(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("tshark")).find(|p| p.is_file()));
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        assert!(
            !ci,
            "tshark not installed (CI=true): run .ci/install-peers, which installs the Debian package tshark"
        );
        eprintln!("SKIP: tshark not installed; {test} did not run (apt-get install tshark)");
    }
    found
}

/// The dissector shipped in the repository (both test crates sit one level below the root).
pub fn dissector() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/wireshark/tlpbridge.lua")
}

/// How a pair of values is compared.
#[derive(Clone, Copy)]
enum Norm {
    /// Integers: JSON numbers or hex strings vs tshark decimal or 0x-hex.
    Int,
    /// Booleans: JSON bool vs tshark 0/1.
    Bool,
    /// Strings as they are.
    Text,
    /// Hex bytes: JSON hex vs tshark hex with optional ':' separators.
    Bytes,
}

/// (JSON pointer into the `pcap show --json` object, tshark field, comparison).
const TLP_FIELDS: &[(&str, &str, Norm)] = &[
    ("/direction", "tlpbridge.dir", Norm::Text),
    ("/link_id", "tlpbridge.link_id", Norm::Int),
    ("/link_time_ps", "tlpbridge.link_time", Norm::Int),
    ("/kind", "tlpbridge.tlp.kind", Norm::Text),
    ("/tlp/fmt", "tlpbridge.tlp.fmt", Norm::Int),
    ("/tlp/type", "tlpbridge.tlp.type", Norm::Int),
    ("/tlp/tc", "tlpbridge.tlp.tc", Norm::Int),
    ("/tlp/attr/ro", "tlpbridge.tlp.ro", Norm::Bool),
    ("/tlp/attr/ns", "tlpbridge.tlp.ns", Norm::Bool),
    ("/tlp/attr/ido", "tlpbridge.tlp.ido", Norm::Bool),
    ("/tlp/ln", "tlpbridge.tlp.ln", Norm::Bool),
    ("/tlp/th", "tlpbridge.tlp.th", Norm::Bool),
    ("/tlp/td", "tlpbridge.tlp.td", Norm::Bool),
    ("/tlp/ep", "tlpbridge.tlp.ep", Norm::Bool),
    ("/tlp/at", "tlpbridge.tlp.at", Norm::Int),
    ("/tlp/length_dw", "tlpbridge.tlp.length", Norm::Int),
    ("/tlp/requester_id", "tlpbridge.tlp.requester", Norm::Text),
    ("/tlp/tag", "tlpbridge.tlp.tag", Norm::Int),
    ("/tlp/first_be", "tlpbridge.tlp.first_be", Norm::Int),
    ("/tlp/last_be", "tlpbridge.tlp.last_be", Norm::Int),
    ("/tlp/address", "tlpbridge.tlp.address", Norm::Int),
    ("/tlp/register", "tlpbridge.tlp.register", Norm::Int),
    ("/tlp/completer_id", "tlpbridge.tlp.completer", Norm::Text),
    ("/tlp/status", "tlpbridge.tlp.status_name", Norm::Text),
    ("/tlp/bcm", "tlpbridge.tlp.bcm", Norm::Bool),
    ("/tlp/byte_count", "tlpbridge.tlp.byte_count", Norm::Int),
    ("/tlp/lower_address", "tlpbridge.tlp.lower_address", Norm::Int),
    ("/tlp/message_code", "tlpbridge.tlp.msg_code", Norm::Int),
    ("/tlp/routing", "tlpbridge.tlp.msg_routing", Norm::Text),
    ("/tlp/fields", "tlpbridge.tlp.msg_fields", Norm::Bytes),
    ("/tlp/payload", "tlpbridge.tlp.payload", Norm::Bytes),
    ("/tlp/digest", "tlpbridge.tlp.digest", Norm::Int),
    ("/request_record", "tlpbridge.request_in", Norm::Int),
    ("/latency_ns", "tlpbridge.latency_ns", Norm::Int),
];

const FLAG_FIELDS: &[(&str, &str)] = &[
    ("malformed", "tlpbridge.flags.malformed"),
    ("poisoned", "tlpbridge.flags.poisoned"),
    ("retransmitted", "tlpbridge.flags.retransmitted"),
    ("simulated-time", "tlpbridge.flags.simulated_time"),
];

const VFIO_FIELDS: &[(&str, &str, Norm)] = &[
    ("/direction", "tlpbridge_vfu.dir", Norm::Text),
    ("/socket", "tlpbridge_vfu.socket", Norm::Text),
    ("/fds", "tlpbridge_vfu.fds", Norm::Int),
    ("/kind", "tlpbridge_vfu.command_name", Norm::Text),
    ("/vfio_user/id", "tlpbridge_vfu.id", Norm::Int),
    ("/vfio_user/command_number", "tlpbridge_vfu.command", Norm::Int),
    ("/vfio_user/type", "tlpbridge_vfu.type", Norm::Text),
    ("/vfio_user/size", "tlpbridge_vfu.size", Norm::Int),
    ("/vfio_user/no_reply", "tlpbridge_vfu.no_reply", Norm::Bool),
    ("/vfio_user/error", "tlpbridge_vfu.error", Norm::Int),
    ("/vfio_user/region", "tlpbridge_vfu.region", Norm::Int),
    ("/vfio_user/offset", "tlpbridge_vfu.offset", Norm::Int),
    ("/vfio_user/count", "tlpbridge_vfu.count", Norm::Int),
    ("/vfio_user/address", "tlpbridge_vfu.address", Norm::Int),
    ("/request_record", "tlpbridge_vfu.request_in", Norm::Int),
    ("/latency_ns", "tlpbridge_vfu.latency_ns", Norm::Int),
];

fn parse_int(text: &str) -> Option<u128> {
    match text.strip_prefix("0x") {
        Some(hex) => u128::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Our side, normalized; `None` when the field is absent or null.
fn ours(record: &Value, pointer: &str, norm: Norm) -> Option<String> {
    let value = record.pointer(pointer).filter(|v| !v.is_null())?;
    Some(match norm {
        Norm::Int => match value {
            Value::Number(n) => n.to_string(),
            Value::String(s) => parse_int(s).map_or_else(|| format!("unparsable {s:?}"), |n| n.to_string()),
            other => format!("not an integer: {other}"),
        },
        Norm::Bool => match value.as_bool() {
            Some(b) => u8::from(b).to_string(),
            None => format!("not a bool: {value}"),
        },
        Norm::Text => value.as_str().map_or_else(|| value.to_string(), str::to_owned),
        Norm::Bytes => value.as_str().unwrap_or_default().to_ascii_lowercase(),
    })
}

/// tshark's side, normalized; `None` when the field is empty.
fn theirs(text: &str, norm: Norm) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    Some(match norm {
        Norm::Int => parse_int(text).map_or_else(|| format!("unparsable {text:?}"), |n| n.to_string()),
        Norm::Bool => match text {
            "1" | "True" | "true" => "1".to_owned(),
            "0" | "False" | "false" => "0".to_owned(),
            other => format!("not a bool: {other}"),
        },
        Norm::Text => text.to_owned(),
        Norm::Bytes => text.replace(':', "").to_ascii_lowercase(),
    })
}

fn run(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(out.status.success(), "{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `tlpbridge pcap show --json FILE`, one object per record.
pub fn show_json(tlpbridge: &Path, capture: &Path) -> Vec<Value> {
    let text = run(
        Command::new(tlpbridge).args(["pcap", "show", "--json"]).arg(capture),
        "tlpbridge pcap show --json",
    );
    text.lines().map(|l| serde_json::from_str(l).expect("pcap show --json prints JSON lines")).collect()
}

/// Runs tshark with the dissector on `capture` and asserts that every record's fields equal
/// what `tlpbridge pcap show --json` says. Returns our records and the number of compared
/// (record, field) pairs that had a value.
pub fn assert_dissector_agrees(tshark: &Path, tlpbridge: &Path, capture: &Path) -> (Vec<Value>, usize) {
    let ours_records = show_json(tlpbridge, capture);
    let mut fields: Vec<&str> = vec!["frame.number", "tlpbridge.malformed.expert"];
    fields.extend(TLP_FIELDS.iter().map(|f| f.1));
    fields.extend(FLAG_FIELDS.iter().map(|f| f.1));
    fields.extend(VFIO_FIELDS.iter().map(|f| f.1));
    let mut command = Command::new(tshark);
    command.arg("-X").arg(format!("lua_script:{}", dissector().display())).arg("-r").arg(capture).args([
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-E",
        "occurrence=f",
        "-E",
        "header=n",
    ]);
    for field in &fields {
        command.args(["-e", field]);
    }
    let text = run(&mut command, "tshark");
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), ours_records.len(), "tshark and pcap show see different record counts:\n{text}");
    let column = |row: &Vec<&str>, name: &str| -> String {
        let i = fields.iter().position(|f| *f == name).expect("requested field");
        row.get(i).copied().unwrap_or("").to_owned()
    };
    let mut mismatches = Vec::new();
    let mut compared = 0;
    for (record, row) in ours_records.iter().zip(&rows) {
        let number = record["record"].as_u64().expect("record number");
        assert_eq!(column(row, "frame.number"), number.to_string());
        let table = match record["interface"].as_str() {
            Some("tlp") => TLP_FIELDS,
            Some("vfio-user") => VFIO_FIELDS,
            other => panic!("record {number}: interface {other:?} in a tlpbridge capture"),
        };
        // Bytes our parser rejects: only the flags and the malformed marking must agree (the
        // dissector decodes what it can of a broken TLP).
        let parsed = record.get("error").is_none();
        for (pointer, field, norm) in table {
            if !parsed
                && !matches!(*pointer, "/direction" | "/link_id" | "/link_time_ps" | "/socket" | "/fds")
            {
                continue;
            }
            let a = ours(record, pointer, *norm);
            let b = theirs(&column(row, field), *norm);
            if a.is_some() {
                compared += 1;
            }
            if a != b {
                mismatches.push(format!("record {number} {field}: pcap show {a:?}, tshark {b:?}"));
            }
        }
        if table.as_ptr() == TLP_FIELDS.as_ptr() {
            let flags: Vec<&str> =
                record["flags"].as_array().expect("flags").iter().filter_map(Value::as_str).collect();
            for (name, field) in FLAG_FIELDS {
                let want = if flags.contains(name) { "1" } else { "0" };
                if theirs(&column(row, field), Norm::Bool).as_deref() != Some(want) {
                    mismatches.push(format!(
                        "record {number} {field}: pcap show {want}, tshark {:?}",
                        column(row, field)
                    ));
                }
            }
            // Malformed in either sense (the bridge said so, or our parser rejects the bytes)
            // must be marked by the dissector, and nothing else may be.
            let malformed = flags.contains(&"malformed") || !parsed;
            let marked = !column(row, "tlpbridge.malformed.expert").is_empty();
            if malformed != marked {
                mismatches.push(format!("record {number}: malformed {malformed}, dissector marked {marked}"));
            }
        }
    }
    assert!(mismatches.is_empty(), "the dissector disagrees with pcap show:\n{}", mismatches.join("\n"));
    (ours_records, compared)
}
