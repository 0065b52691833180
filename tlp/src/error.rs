//! The crate's error type.
//!
//! Structural problems (bytes that do not form a TLP the model can hold) are [`TlpError`]s from
//! [`Tlp::parse`](crate::Tlp::parse), [`wire::Packet::new_checked`](crate::wire::Packet::new_checked)
//! and [`Tlp::emit`](crate::Tlp::emit). Semantic spec violations of a well-formed TLP are
//! [`Violation`](crate::validate::Violation)s from [`Tlp::validate`](crate::Tlp::validate); they can be
//! carried here as [`TlpError::Invalid`] where one error type is wanted.

use crate::validate::Violation;

/// Everything that can go wrong turning bytes into a TLP or a TLP into bytes.
///
/// Byte counts and offsets are in bytes from the start of the TLP (the first prefix, if any).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlpError {
    /// The bytes end before the prefixes, header or digest do.
    #[error("TLP truncated: {needed} bytes needed, {got} present")]
    Truncated { needed: usize, got: usize },

    /// More bytes follow a TLP that carries no data (or after its digest).
    #[error("{got} bytes given but the TLP ends after {expected} (Fmt says no data follows the header)")]
    TrailingBytes { expected: usize, got: usize },

    /// A data TLP whose byte count is not header + Length × 4 (+ 4 for the digest when TD is set).
    #[error(
        "Length field {length_field} ({length_dw} DW) with a {header_len}-byte header{} means {expected} bytes, but {got} are present",
        if *td { " and an ECRC digest" } else { "" }
    )]
    LengthMismatch {
        length_field: u16,
        length_dw: u16,
        header_len: usize,
        td: bool,
        expected: usize,
        got: usize,
    },

    /// The Fmt/Type pair (byte `offset` of the TLP) names no TLP kind (reserved or deprecated).
    #[error("reserved Fmt/Type combination Fmt={fmt:#05b} Type={ty:#07b} (byte {offset:#04x} = {byte:#04x})", byte = (fmt << 5) | ty)]
    ReservedFmtType { fmt: u8, ty: u8, offset: usize },

    /// A header bit the spec reserves is set and the model has no field to keep it, so the TLP
    /// could not be re-emitted unchanged; it is rejected as malformed instead.
    #[error("reserved bits set in {field} at byte {offset:#04x}: {value:#x}")]
    ReservedBitsSet { field: &'static str, offset: usize, value: u32 },

    /// The output buffer cannot hold the emitted TLP.
    #[error("buffer too small: the TLP needs {needed} bytes, the buffer has {got}")]
    BufferTooSmall { needed: usize, got: usize },

    /// A semantic rule of the spec is broken (see [`Violation`]).
    #[error(transparent)]
    Invalid(#[from] Violation),

    // Configuration space (`config_space`). Offsets there are config-space byte offsets.
    /// A config image shorter than the 64-byte header or longer than 4 KiB (or, for
    /// `ConfigImage::new`, not 256 or 4096 bytes).
    #[error("config space image is {len} bytes; expected 64 to 4096 (256 for PCI, 4096 for PCIe)")]
    ConfigImageLength { len: usize },

    /// A config register access past the end of the image.
    #[error("config access of {width} bytes at {offset:#05x} is past the end of the {len}-byte config space")]
    ConfigOutOfRange { offset: usize, width: usize, len: usize },

    /// A broken link in a capability list: the pointer read at `at` is `pointer`.
    #[error(
        "{chain} capability list is malformed: the pointer at {at:#05x} is {pointer:#05x}, which {problem}"
    )]
    CapabilityChain {
        chain: crate::config_space::CapabilityChain,
        at: u16,
        pointer: u16,
        problem: crate::config_space::ChainProblem,
    },

    /// A typed capability decoder was pointed at a capability with another ID.
    #[error("expected capability ID {expected:#04x} at {offset:#05x}, found {found:#04x}")]
    CapabilityIdMismatch { offset: u16, expected: u16, found: u16 },

    /// A standard capability whose registers run past `limit`: the end of the image or 0x100,
    /// where the standard capability area ends.
    #[error(
        "{name} capability at {offset:#05x} needs {needed} bytes, running past {limit:#05x} where standard capabilities must end"
    )]
    CapabilityTruncated { name: &'static str, offset: u16, needed: u16, limit: usize },

    /// A memory BAR with the reserved type 11b in bits 2:1.
    #[error("BAR{slot} has the reserved memory type 11b (register {raw:#010x})")]
    BarReservedType { slot: u8, raw: u32 },

    /// A 64-bit memory BAR in the last slot has no slot left for its upper half.
    #[error("BAR{slot} is a 64-bit memory BAR in the last BAR slot, leaving no slot for its upper 32 bits")]
    Bar64InLastSlot { slot: u8 },

    /// A capability that does not fit in the space left for its list.
    #[error("no room for capability {id:#06x} of {len} bytes: its list's space ends at {limit:#05x}")]
    NoRoomForCapability { id: u16, len: usize, limit: u16 },
}
