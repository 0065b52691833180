//! Parse and emit time per TLP, as a ratio against copying the same bytes (`to_vec`) measured in
//! the same run. Run with `cargo bench -p tlp --bench codec`.
//!
//! Each figure is the median of `RUNS` runs of `ITERATIONS` operations; the ratio divides the
//! median time per operation by the median time per `to_vec` of the TLP's bytes.

use std::hint::black_box;
use std::time::Instant;

use tlp::{Attr, Body, Completion, CplStatus, MemOp, MemRequest, RoutingId, Tlp};

const ITERATIONS: u32 = 200_000;
const RUNS: usize = 11;

/// Median nanoseconds per call of `op` over `RUNS` runs.
fn median_ns(mut op: impl FnMut()) -> f64 {
    // Warm caches and the allocator.
    for _ in 0..ITERATIONS / 10 {
        op();
    }
    let mut per_op: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..ITERATIONS {
                op();
            }
            start.elapsed().as_nanos() as f64 / f64::from(ITERATIONS)
        })
        .collect();
    per_op.sort_by(f64::total_cmp);
    per_op[RUNS / 2]
}

fn base(body: Body, length: u16, payload: Vec<u8>) -> Tlp {
    Tlp {
        prefixes: Vec::new(),
        tc: 0,
        attr: Attr::default(),
        ln: false,
        th: false,
        ep: false,
        at: 0,
        length,
        body,
        payload,
        digest: None,
    }
}

fn main() {
    let requester = RoutingId::new(1, 0, 0);
    let cases = [
        (
            "MRd 3DW (12 B)",
            base(
                Body::Memory(MemRequest {
                    op: MemOp::Read,
                    requester,
                    tag: 0x12,
                    first_be: 0xf,
                    last_be: 0xf,
                    address: 0x8000_0040,
                    ph: 0,
                    addr64: false,
                }),
                4,
                Vec::new(),
            ),
        ),
        (
            "MWr 4DW + 256 B (272 B)",
            base(
                Body::Memory(MemRequest {
                    op: MemOp::Write,
                    requester,
                    tag: 0,
                    first_be: 0xf,
                    last_be: 0xf,
                    address: 0x1_2345_6700,
                    ph: 0,
                    addr64: true,
                }),
                64,
                (0..=255u8).collect(),
            ),
        ),
        (
            "CplD + 16 B (28 B)",
            base(
                Body::Completion(Completion {
                    locked: false,
                    completer: RoutingId::new(0, 0, 0),
                    status: CplStatus::Sc,
                    bcm: false,
                    byte_count: 16,
                    requester,
                    tag: 0x12,
                    lower_address: 0x40,
                }),
                4,
                vec![0xa5; 16],
            ),
        ),
    ];

    println!("TLP codec, median of {RUNS} runs x {ITERATIONS} iterations; ratio = time / to_vec time");
    println!(
        "{:<26} {:>10} {:>10} {:>8} {:>10} {:>8}",
        "TLP", "to_vec ns", "parse ns", "ratio", "emit ns", "ratio"
    );
    for (name, tlp) in &cases {
        assert_eq!(tlp.validate(&tlp::Limits::default()), Ok(()), "{name}");
        let bytes = tlp.to_bytes();
        let mut out = vec![0u8; bytes.len()];
        let copy = median_ns(|| {
            black_box(black_box(bytes.as_slice()).to_vec());
        });
        let parse = median_ns(|| {
            let _ = black_box(Tlp::parse(black_box(bytes.as_slice())));
        });
        let emit = median_ns(|| {
            let _ = black_box(black_box(tlp).emit(black_box(out.as_mut_slice())));
        });
        assert_eq!(out, bytes);
        println!(
            "{name:<26} {copy:>10.1} {parse:>10.1} {:>8.2} {emit:>10.1} {:>8.2}",
            parse / copy,
            emit / copy
        );
    }
}
