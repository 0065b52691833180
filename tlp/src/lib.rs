//! PCIe transaction layer packets (PCIe Base Specification, non-flit mode), with no I/O.
//!
//! - [`model`]: the high-level representation ([`Tlp`]) of every TLP kind.
//! - [`wire`]: a typed zero-copy view over TLP bytes (`Packet<T: AsRef<[u8]>>`).
//! - [`parse`] / [`emit`]: bytes → `Tlp` (with `nom`) and `Tlp` → bytes, exact inverses.
//! - [`validate`]: the spec's rules, each violation naming the rule and the values.
//! - [`json`]: the stable JSON form used by `tlpbridge tlp` (see `docs/tlp-json.md`).
//! - [`byte_enable`], [`split`], [`completion`]: what a requester or completer needs to build
//!   spec-conformant requests and completions.
//! - [`config_space`]: the PCI/PCIe configuration-space register layout.

pub mod byte_enable;
pub mod completion;
pub mod config_space;
pub mod display;
pub mod emit;
pub mod error;
pub mod json;
pub mod model;
pub mod parse;
pub mod split;
pub mod validate;
pub mod wire;

/// proptest strategies for every TLP kind (feature `proptest`).
#[cfg(feature = "proptest")]
pub mod arbitrary;

pub use error::TlpError;
pub use model::*;
pub use validate::{Limits, Rule, Violation};
pub use wire::Packet;
