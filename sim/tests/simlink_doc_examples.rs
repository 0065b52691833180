//! The hex session in docs/sim-protocol.md is made of frames this implementation decodes as
//! annotated and emits byte for byte.

use sim::link::wire::{Message, decode_frame};

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/sim-protocol.md")).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

#[test]
fn documented_session_decodes_and_re_emits_exactly() {
    let doc = doc();
    let start = doc.find("<!-- session-begin -->").unwrap();
    let end = doc.find("<!-- session-end -->").unwrap();
    let mut names = Vec::new();
    for line in doc[start..end].lines().filter(|l| l.starts_with("S→B") || l.starts_with("B→S")) {
        let mut words = line.split_whitespace();
        let (_direction, name) = (words.next().unwrap(), words.next().unwrap());
        let bytes = hex(&words.collect::<Vec<_>>().join(" "));
        let (message, used) = decode_frame(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len(), "{line}");
        assert_eq!(message.name(), name, "{line}");
        assert_eq!(message.to_frame(), bytes, "{line}");
        if let Message::Tlp { bytes, .. } = &message {
            tlp::Tlp::parse(bytes).unwrap();
        }
        names.push(name.to_owned());
    }
    assert_eq!(names, ["HELLO", "HELLO", "TLP", "TIME", "TLP", "TIME_ACK", "EVENT", "CLOSE", "CLOSE"]);
    // The two HELLOs are compatible, as the text says.
    let hellos: Vec<_> = doc[start..end]
        .lines()
        .filter(|l| l.contains("HELLO"))
        .map(|l| match decode_frame(&hex(&l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))) {
            Ok(Some((Message::Hello(h), _))) => h,
            other => panic!("{other:?}"),
        })
        .collect();
    hellos[0].check_peer(&hellos[1]).unwrap();
    hellos[1].check_peer(&hellos[0]).unwrap();
}

#[test]
fn documented_error_frame_decodes() {
    let bytes = hex(
        "54 53 07 00 1b 00 00 00 03 00 00 00 75 6e 6b 6e 6f 77 6e 20 66 72 61 6d 65 20 74 79 70 65 20 30 78 34 32",
    );
    assert!(doc().contains("54 53 07 00 1b 00 00 00 03 00 00 00 75 6e"));
    let (message, _) = decode_frame(&bytes).unwrap().unwrap();
    assert_eq!(message, Message::Error { code: 3, message: "unknown frame type 0x42".into() });
}
