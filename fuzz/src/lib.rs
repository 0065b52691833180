//! The properties each fuzz target checks, one module per target (`fuzz_targets/NAME.rs` calls
//! `NAME::check`). They are plain functions so that a corpus can also be replayed without
//! libFuzzer (`cargo run --release --bin replay -- DIR...` is not needed: libFuzzer binaries
//! replay files given as arguments).
//!
//! Beyond "no panic", every target checks what the decoder documents: decode(encode(x)) == x,
//! the largest single allocation while decoding stays under the documented maximum
//! ([`alloc_watch`]), and malformed input gets the documented error.

pub mod alloc_watch;
pub mod capture_read;
pub mod fpga_dll;
pub mod fpga_frame;
pub mod sim_frame;
pub mod tlp_parse;
pub mod vfio_user_client;
pub mod vfio_user_message;
