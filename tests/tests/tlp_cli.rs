//! `tlpbridge tlp decode|encode` as a user runs it: the documented summary and JSON lines, the
//! decode → encode round trip, and exit status 2 with the broken rule named on stderr.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

fn run(args: &[&str], stdin: &str) -> Output {
    // The shared helper builds `tlpbridge` if needed (or takes $TLPBRIDGE_BIN).
    let bin = tlpbridge_tests::tlpbridge_bin().unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tlpbridge");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().expect("wait for tlpbridge")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// MRd, 3DW, Length 4, requester 01:00.0, tag 0x12, BEs f/f, address 0x40 (docs/tlp-json.md).
const MRD_HEX: &str = "00000004010012ff00000040";

#[test]
fn decode_prints_the_documented_summary_line() {
    let out = run(&["tlp", "decode", MRD_HEX], "");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "MRd32 01:00.0 tag=0x12 addr=0x40 len=4 be=f/f\n");
}

#[test]
fn decode_json_prints_the_documented_object() {
    let out = run(&["tlp", "decode", "--json", MRD_HEX], "");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(
        text,
        concat!(
            r#"{"kind":"MRd","fmt":0,"type":0,"tc":0,"attr":{"ro":false,"ns":false,"ido":false},"#,
            r#""ln":false,"th":false,"td":false,"ep":false,"at":0,"length_dw":4,"requester_id":"01:00.0","#,
            r#""tag":18,"first_be":15,"last_be":15,"address":"0x00000040","ph":0}"#,
            "\n"
        )
    );
}

#[test]
fn decode_accepts_spaces_and_underscores_and_one_line_per_argument() {
    let out = run(
        &["tlp", "decode", "--json", "0000 0004 0100_12ff 0000_0040", "4a000001 01000004 01001200 cafef00d"],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["kind"], json!("MRd"));
    assert_eq!(lines[1]["kind"], json!("CplD"));
    assert_eq!(lines[1]["completer_id"], json!("01:00.0"));
    assert_eq!(lines[1]["byte_count"], json!(4));
    assert_eq!(lines[1]["payload"], json!("cafef00d"));
}

/// Valid TLPs of several kinds, as hex.
const VECTORS: &[&str] = &[
    MRD_HEX,
    "600000010100000f000000010000001011223344", // MWr, 4DW, address 0x1_0000_0010
    "420000010100010f0000c0f8aabbccdd",         // IOWr to 0xc0f8
    "040000010100020f0108001c",                 // CfgRd0 to 01:01.0, register 0x1c
    "450000010100030f02080110deadbeef",         // CfgWr1 to 02:01.0, register 0x110
    "4a0000010100000402000500cafef00d",         // CplD SC, byte count 4
    "0a0000000100204002000500",                 // Cpl UR, byte count 0x40
    "34000000010000200000000000000000",         // Msg Assert_INTA, routed local
    "4c0000010100000000001000000000ff",         // FetchAdd, 32-bit operand at 0x1000
    "0000800101000a0f000000408badf00d",         // MRd with ECRC digest 0x8badf00d
    "9e000001400000010100000f0000100001020304", // VendPrefixE0 prefix + MWr
];

#[test]
fn encode_of_decode_gives_back_the_same_bytes() {
    for hex in VECTORS {
        let decoded = run(&["tlp", "decode", "--json", hex], "");
        assert_eq!(decoded.status.code(), Some(0), "{hex}: {}", stderr(&decoded));
        let json_line = stdout(&decoded);
        let encoded = run(&["tlp", "encode", json_line.trim()], "");
        assert_eq!(encoded.status.code(), Some(0), "{hex}: {}", stderr(&encoded));
        assert_eq!(stdout(&encoded), format!("{hex}\n"), "{json_line}");
    }
}

#[test]
fn encode_reads_json_lines_from_stdin() {
    let input = concat!(
        r#"{"kind":"MRd","length_dw":4,"requester_id":"01:00.0","tag":18,"address":"0x40"}"#,
        "\n\n",
        r#"{"kind":"Msg","routing":"local","message":"Assert_INTA","requester_id":"01:00.0"}"#,
        "\n"
    );
    let out = run(&["tlp", "encode", "-"], input);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{MRD_HEX}\n34000000010000200000000000000000\n"));
}

#[test]
fn malformed_tlp_exits_2_and_names_the_rule() {
    // Same MRd with Last DW BE 0 although Length is 4: it parses, so the summary is printed too.
    let out = run(&["tlp", "decode", "000000040100120f00000040"], "");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout(&out), "MRd32 01:00.0 tag=0x12 addr=0x40 len=4 be=f/0\n");
    assert!(stderr(&out).contains("last-be-zero-for-multi-dw"), "{}", stderr(&out));

    // Structural: a 3DW header cut short.
    let out = run(&["tlp", "decode", "00000004010012"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty());
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));

    // Link limits are checked only when given.
    let mrd_256 = "00000040010012ff00000000";
    assert_eq!(run(&["tlp", "decode", mrd_256], "").status.code(), Some(0));
    let out = run(&["tlp", "decode", "--mrrs", "128", mrd_256], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("read-request-exceeds-mrrs"), "{}", stderr(&out));
}

#[test]
fn bad_hex_exits_2_with_a_clear_message() {
    let out = run(&["tlp", "decode", "0000zz04"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("'z' at position 4 is not a hex digit"), "{}", stderr(&out));
    let out = run(&["tlp", "decode", "000"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("odd number of hex digits"), "{}", stderr(&out));
}

#[test]
fn encode_rejects_invalid_tlps_unless_allowed() {
    let crossing = r#"{"kind":"MRd","length_dw":4,"address":"0xff8"}"#;
    let out = run(&["tlp", "encode", crossing], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty());
    assert!(stderr(&out).contains("crosses-4k-boundary"), "{}", stderr(&out));

    let out = run(&["tlp", "encode", "--allow-invalid", crossing], "");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "00000004000000ff00000ff8\n");
    assert!(stderr(&out).contains("crosses-4k-boundary"), "still warned: {}", stderr(&out));
}

#[test]
fn encode_names_the_bad_field() {
    let out = run(&["tlp", "encode", r#"{"kind":"MRd","length_dw":1,"address":"0x40","tag":4096}"#], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("field `tag`"), "{}", stderr(&out));
    let out = run(&["tlp", "encode", "{not json"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not valid JSON"), "{}", stderr(&out));
}

/// Every `hex:`/`summary:`/`json:` example and every `input:`/`output:` example in
/// docs/tlp-json.md is exactly what the code does, and the examples cover every kind.
#[test]
fn docs_tlp_json_examples_are_exact() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/tlp-json.md")).unwrap();
    let field = |line: &str, name: &str| line.strip_prefix(name).map(|rest| rest.trim().to_owned());
    let lines: Vec<&str> = doc.lines().collect();
    let mut kinds = std::collections::BTreeSet::new();
    let (mut decoded, mut encoded) = (0, 0);
    for (i, line) in lines.iter().enumerate() {
        if let Some(hex) = field(line, "hex:") {
            let bytes = tlp::json::hex_to_bytes(&hex).unwrap();
            let tlp = tlp::Tlp::parse(&bytes).unwrap_or_else(|e| panic!("doc line {}: {e}", i + 1));
            tlp.validate(&tlp::Limits::default()).unwrap_or_else(|v| panic!("doc line {}: {v}", i + 1));
            let mut next = i + 1;
            if let Some(summary) = lines.get(next).and_then(|l| field(l, "summary:")) {
                assert_eq!(tlp.to_string(), summary, "doc line {}", next + 1);
                next += 1;
            }
            let json = lines.get(next).and_then(|l| field(l, "json:")).expect("json: after hex:");
            assert_eq!(tlp::json::to_json_string(&tlp), json, "doc line {}", next + 1);
            assert_eq!(tlp::json::from_json_str(&json).unwrap().to_bytes(), bytes, "doc line {}", next + 1);
            kinds.insert(tlp.kind_name());
            decoded += 1;
        }
        if let Some(input) = field(line, "input:") {
            let output = lines.get(i + 1).and_then(|l| field(l, "output:")).expect("output: after input:");
            let tlp = tlp::json::from_json_str(&input).unwrap_or_else(|e| panic!("doc line {}: {e}", i + 1));
            tlp.validate(&tlp::Limits::default()).unwrap_or_else(|v| panic!("doc line {}: {v}", i + 1));
            assert_eq!(tlp::json::bytes_to_hex(&tlp.to_bytes()), output, "doc line {}", i + 2);
            encoded += 1;
        }
    }
    assert_eq!(kinds.len(), 18, "kinds with an example: {kinds:?}");
    assert!(decoded >= 18 && encoded >= 5, "{decoded} decode and {encoded} encode examples");
}

#[test]
fn limit_options_take_only_the_spec_sizes() {
    let out = run(&["tlp", "decode", "--mps", "100", MRD_HEX], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not one of 128, 256, 512, 1024, 2048, 4096"), "{}", stderr(&out));
    // A 1-DW MWr fits every Max_Payload_Size.
    let mwr = "400000010100000f0000100001020304";
    let out = run(&["tlp", "decode", "--mps", "128", "--mrrs", "4096", mwr], "");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A 64-DW (256-byte) MWr does not fit a 128-byte Max_Payload_Size.
    let mwr_256 = format!("40000040010000ff00001000{}", "00".repeat(256));
    assert_eq!(run(&["tlp", "decode", &mwr_256], "").status.code(), Some(0));
    let out = run(&["tlp", "decode", "--mps", "128", &mwr_256], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("payload-exceeds-mps"), "{}", stderr(&out));
}
