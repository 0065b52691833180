//! PCIe transaction layer packets (PCIe Base Specification, non-flit mode), with no I/O.
//!
//! - [`model`]: the high-level representation ([`Tlp`]) of every TLP kind.
//! - Parsing from wire bytes and emitting back, validation against the spec's rules, request
//!   splitting and completion building live in the modules beside it.

pub mod model;

pub use model::*;
