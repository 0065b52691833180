//! Capture reading (docs/capture-format.md), what `tlpbridge pcap show` does with a file:
//! `read_capture` (pcapng or classic pcap), the pseudo-header parsers, `analyze` (decode and
//! request/completion matching) and both output forms.
//!
//! Properties: any file reads or fails with a `BridgeError` (a file cut inside a block reads
//! up to the cut and says so); each record's pseudo-header, when it parses, emits to bytes that
//! parse back to it with the same body; `analyze` returns one shown record per record and a completion's matched request
//! comes before it; reading allocates at most pcap-file's fixed 8 MB buffer (or a small multiple of the file's
//! size), never what a block length field claims.

use std::io::Write;

use bridge::capture::format::{TlpHeaderRepr, VfioUserHeaderRepr};
use bridge::capture::read::read_capture;
use bridge::capture::show;

use crate::alloc_watch;

/// pcap-file 2.0 reads through one fixed buffer of this size (`ReadBuffer::new`), whatever
/// the block lengths say; it never grows.
const PCAP_FILE_BUFFER: usize = 8_000_000;

fn scratch_path() -> std::path::PathBuf {
    let dir =
        if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
    dir.join(format!("tlpbridge-fuzz-capture-{}.pcapng", std::process::id()))
}

pub fn check(data: &[u8]) {
    let path = scratch_path();
    {
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(data).unwrap();
    }
    let (read, largest) = alloc_watch::largest_during(|| read_capture(&path));
    // The reader's buffers and the records' copies: bounded by the file, not by length fields.
    assert!(
        largest <= PCAP_FILE_BUFFER.max(4 * data.len() + 64 * 1024),
        "reading {} bytes allocated {largest}",
        data.len()
    );
    let Ok(capture) = read else { return };
    for record in &capture.records {
        if let Ok((header, rest)) = TlpHeaderRepr::parse(&record.data) {
            let mut out = Vec::new();
            header.emit(&mut out);
            out.extend_from_slice(rest);
            let (again, body) = TlpHeaderRepr::parse(&out).unwrap();
            assert_eq!((again, body), (header, rest), "pseudo-header does not read back");
        }
        if let Ok((header, rest)) = VfioUserHeaderRepr::parse(&record.data) {
            let mut out = Vec::new();
            header.emit(&mut out);
            out.extend_from_slice(rest);
            let (again, body) = VfioUserHeaderRepr::parse(&out).unwrap();
            assert_eq!((again, body), (header, rest), "pseudo-header does not read back");
        }
    }
    let shown = show::analyze(&capture.records);
    assert_eq!(shown.len(), capture.records.len());
    let t0 = capture.records.first().map_or(0, |r| r.time_ns);
    for record in &shown {
        let _ = show::to_json(record);
        let _ = show::to_line(record, t0);
    }
    let _ = std::fs::remove_file(&path);
}
