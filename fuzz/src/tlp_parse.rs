//! `Tlp::parse` (the link reader's first step), `validate`, the `Packet` view, `Display` and
//! the JSON form.
//!
//! Properties: a TLP that parses emits back to exactly the input bytes (parse and emit are
//! inverses); the checked `Packet` view accepts what the parser accepts and agrees on kind,
//! length and tag; `validate` fails exactly when `violations` is non-empty; the JSON form
//! reads back to the same TLP; parsing allocates no more than twice the input's size (Vec growth).

use tlp::Tlp;
use tlp::validate::Limits;
use tlp::wire::Packet;

use crate::alloc_watch;

pub fn check(data: &[u8]) {
    let (parsed, largest) = alloc_watch::largest_during(|| Tlp::parse(data));
    assert!(largest <= 2 * data.len() + 256, "parsing {} bytes allocated {largest}", data.len());
    let Ok(tlp) = parsed else {
        return;
    };
    assert_eq!(tlp.to_bytes(), data, "emit(parse(x)) != x for {tlp:?}");
    assert_eq!(tlp.buffer_len(), data.len());
    let packet = Packet::new_checked(data).unwrap_or_else(|e| panic!("parse accepted, Packet refused: {e}"));
    assert_eq!(packet.length(), tlp.length);
    if let Some(tag) = tlp.tag() {
        assert_eq!(packet.tag(), tag, "{tlp:?}");
    }
    for limits in
        [Limits::default(), Limits { max_payload_size: Some(128), max_read_request_size: Some(512) }]
    {
        let first = tlp.validate(&limits);
        let all = tlp.violations(&limits);
        assert_eq!(first.is_ok(), all.is_empty(), "{tlp:?}: validate {first:?}, violations {all:?}");
    }
    let _ = tlp.to_string();
    let json = tlp::json::to_json_string(&tlp);
    let back =
        tlp::json::from_json_str(&json).unwrap_or_else(|e| panic!("JSON {json} does not read back: {e}"));
    assert_eq!(back, tlp, "JSON round trip changed the TLP: {json}");
}
