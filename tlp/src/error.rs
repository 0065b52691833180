//! The crate's error type: one [`TlpError`] for every module.
//!
//! Structural problems (bytes that do not form a TLP the model can hold) come from
//! [`Tlp::parse`](crate::Tlp::parse), [`wire::Packet::new_checked`](crate::wire::Packet::new_checked)
//! and [`Tlp::emit`](crate::Tlp::emit). Semantic spec violations of a well-formed TLP are
//! [`Violation`]s from [`Tlp::validate`](crate::Tlp::validate); they can be
//! carried here as [`TlpError::Invalid`] where one error type is wanted. The other variants come from
//! [`config_space`](crate::config_space), request building ([`split`](crate::split),
//! [`byte_enable`](crate::byte_enable)), [`completion`](crate::completion) and the JSON form
//! ([`json`](crate::json)), grouped below in that order.

use crate::model::{CplStatus, RoutingId};
use crate::validate::Violation;

/// Everything that can go wrong turning bytes into a TLP or a TLP into bytes, reading config
/// space, building requests and completions, reassembling a read, or reading the JSON form.
///
/// In the wire-format variants, byte counts and offsets are in bytes from the start of the TLP (the
/// first prefix, if any).
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

    // Building requests (`split`, `byte_enable`): bad link parameters, a range no TLP can
    // describe, byte enables breaking §2.2.5.1.
    /// Max_Payload_Size or Max_Read_Request_Size is not 128, 256, 512, 1024, 2048 or 4096.
    #[error("{parameter} must be a power of two from 128 to 4096 bytes, got {value}")]
    InvalidSize { parameter: &'static str, value: u16 },

    /// A Device Control size encoding (MPS bits 7:5, MRRS bits 14:12) outside 000b..=101b.
    #[error("{parameter} encoding {code:#05b} is reserved (000b..=101b = 128..=4096 bytes)")]
    ReservedSizeEncoding { parameter: &'static str, code: u8 },

    /// The Read Completion Boundary is not 64 or 128 bytes.
    #[error("Read Completion Boundary must be 64 or 128 bytes, got {value}")]
    InvalidRcb { value: u16 },

    /// `address + len` does not fit in 64 bits.
    #[error("range of {len} bytes at {address:#x} extends past the 64-bit address space")]
    AddressOverflow { address: u64, len: u64 },

    /// The range needs more than the 1024 DW one TLP can carry.
    #[error("{len} bytes at {address:#x} span {length_dw} DW; one TLP carries at most 1024")]
    RequestTooLong { address: u64, len: u64, length_dw: u64 },

    /// A single request would cross a naturally aligned 4 KiB boundary.
    #[error("{len} bytes at {address:#x} cross the 4 KiB boundary at {boundary:#x}")]
    CrossesPage { address: u64, len: u64, boundary: u64 },

    /// A single request is longer than the limit that applies to it.
    #[error("{len} bytes at {address:#x} need {length_dw} DW, more than {parameter} = {limit} bytes")]
    ExceedsLimit { address: u64, len: u64, length_dw: u64, parameter: &'static str, limit: u16 },

    /// A tag above 10 bits.
    #[error("tag {tag:#x} does not fit in 10 bits")]
    TagOutOfRange { tag: u16 },

    /// Byte enables that break a §2.2.5.1 rule.
    #[error(
        "byte enables First DW BE {first_be:#06b}, Last DW BE {last_be:#06b} with Length {length_dw} DW: {rule}"
    )]
    ByteEnables { first_be: u8, last_be: u8, length_dw: u16, rule: &'static str },

    // Completions (`completion`): a request a completion was asked for, or a completion
    // received for an outstanding read.
    /// A hand-built [`MemoryRead`](crate::completion::MemoryRead) whose DW address has bits \[1:0\] set.
    #[error("memory read DW address {address:#x} has bits [1:0] set")]
    UnalignedAddress { address: u64 },

    /// The TLP is not the kind of request this builder completes.
    #[error("{kind} is not {expected}")]
    WrongRequestKind { kind: &'static str, expected: &'static str },

    /// Posted requests (MWr, Msg) and completions never get a completion.
    #[error("{kind} gets no completion")]
    NoCompletion { kind: &'static str },

    /// The data handed to the builder does not match what the request asks for.
    #[error("the read asks for {expected} bytes (first to last enabled byte) but {got} were given")]
    ReadDataLength { expected: u32, got: usize },

    /// An unsuccessful completion was asked for with status SC.
    #[error("status SC is not a failure; use the completion builders for successful completions")]
    SuccessIsNotFailure,

    /// Configuration Request Retry Status answers configuration requests only.
    #[error("CRS status is only for configuration requests, not {kind}")]
    CrsForNonConfig { kind: &'static str },

    /// A received TLP that is not a completion was handed to the reassembly.
    #[error("{kind} is not a completion")]
    NotACompletion { kind: &'static str },

    /// The completion's Requester ID and Tag are not the read's.
    #[error(
        "completion for requester {got_requester} tag {got_tag:#x}, expected requester {expected_requester} tag {expected_tag:#x}"
    )]
    TransactionId { expected_requester: RoutingId, expected_tag: u16, got_requester: RoutingId, got_tag: u16 },

    /// The completer reported a failure (UR, CA, CRS or a reserved status); the read is over.
    #[error("read completed with status {} ({status:?}) after {received} of {requested} bytes", status.name())]
    Unsuccessful { status: CplStatus, received: u32, requested: u32 },

    /// The completion is poisoned (EP set): its data must not be used.
    #[error("completion is poisoned (EP set) at Lower Address {lower_address:#04x}")]
    Poisoned { lower_address: u8 },

    /// A successful read completion without data.
    #[error("successful completion carries no data while {remaining} bytes remain")]
    MissingData { remaining: u32 },

    /// The payload is not Length × 4 bytes.
    #[error("payload of {payload_len} bytes does not match Length {length_dw} DW")]
    PayloadLength { length_dw: u16, payload_len: usize },

    /// Lower Address is not bits \[6:0\] of the next byte expected.
    #[error("Lower Address {got:#04x}, expected {expected:#04x} (next byte at {next_address:#x})")]
    LowerAddress { expected: u8, got: u8, next_address: u64 },

    /// Byte Count is not the number of bytes still missing (more: a duplicate or overlapping
    /// completion; fewer: a lost one).
    #[error("Byte Count {got}, expected {expected} (bytes of the read still missing)")]
    ByteCount { expected: u16, got: u16 },

    /// The final completion's Length does not cover exactly the remaining bytes.
    #[error(
        "final completion has Length {got_dw} DW; {remaining} bytes at Lower Address {lower_address:#04x} need {expected_dw} DW"
    )]
    FinalCompletionLength { expected_dw: u16, got_dw: u16, remaining: u32, lower_address: u8 },

    /// A non-final completion does not end on a naturally aligned RCB boundary.
    #[error(
        "completion ends at {end:#x}, not on a {rcb}-byte Read Completion Boundary, with {remaining} bytes still missing"
    )]
    RcbBoundary { end: u64, rcb: u16, remaining: u32 },

    /// Everything was already received (or the read already failed).
    #[error("read of {requested} bytes at {address:#x} is already finished")]
    AlreadyFinished { address: u64, requested: u32 },

    // The JSON form (`json`, docs/tlp-json.md): why a JSON value does not describe a TLP.
    /// The text is not JSON at all.
    #[error("not valid JSON: {0}")]
    JsonSyntax(String),
    /// The JSON value is not an object.
    #[error("expected a JSON object describing one TLP, got {0}")]
    JsonNotAnObject(&'static str),
    /// A field is missing, of the wrong type, out of range, unknown, not applicable to the kind,
    /// or inconsistent with another field.
    #[error("field `{field}`: {problem}")]
    JsonField { field: String, problem: String },
}
