//! Splitting a requester's memory accesses into legal MWr and MRd TLPs (PCIe Base Spec r6.3
//! §2.2.7.1 Memory, I/O, and Configuration Request Rules (Non-Flit Mode), §2.2.2 TLPs with Data
//! Payloads - Rules, §2.2.4.1 Address-Based Routing Rules).
//!
//! Rules applied:
//!
//! - No request may cross a naturally aligned 4 KiB boundary (§2.2.7.1).
//! - A write's payload (Length × 4 bytes, including disabled bytes of its first and last DW) must
//!   not exceed Max_Payload_Size (§2.2.2); a read's Length × 4 must not exceed
//!   Max_Read_Request_Size (§2.2.7.1).
//! - Addresses below 4 GiB use the 3DW header, others the 4DW header (§2.2.4.1). No chunk
//!   crosses 4 GiB, since 4 GiB is a 4 KiB boundary.
//! - Byte enables per §2.2.5.1 (see [`crate::byte_enable`]).
//!
//! Chunks end on naturally aligned multiples of the limit (MPS or MRRS): a range starting at
//! 0x1010 with MPS 128 becomes 0x1010..0x1080, 0x1080..0x1100, …. Every limit is a power of two
//! that divides 4096, so this also keeps chunks inside 4 KiB pages, and it follows the spec's
//! advice (§2.2.2, implementation note "Maintaining Alignment in Data Payloads") that writes
//! respecting 64/128-byte boundaries perform better; it costs at most one extra TLP per range.
//!
//! Reads are split into [`SplitChunk`]s first so that the caller can give each its own tag from
//! its tag table, then turned into TLPs with [`memory_read_tlp`]; the matching
//! [`ReadReassembly`](crate::completion::ReadReassembly) collects the completions of one chunk.

use crate::TlpError;
use crate::byte_enable::ByteEnables;
use crate::model::{Attr, Body, MemOp, MemRequest, RoutingId, Tlp};

/// Memory requests must not cross a naturally aligned boundary of this many bytes.
pub const PAGE_SIZE: u64 = 4096;

/// The largest tag: tags are 10 bits.
pub const MAX_TAG: u16 = 0x3ff;

/// Checks that `value` is a power of two in 128..=4096.
fn check_size(parameter: &'static str, value: u16) -> Result<u16, TlpError> {
    if value.is_power_of_two() && (128..=4096).contains(&value) {
        Ok(value)
    } else {
        Err(TlpError::InvalidSize { parameter, value })
    }
}

/// The transfer limits of a link, as software programmed them: Max_Payload_Size and
/// Max_Read_Request_Size (Device Control, §7.5.3.4) and the Read Completion Boundary (Link
/// Control bit 3, §7.5.3.7; 128 bytes for every completer other than a Root Complex, §2.3.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinkParams {
    mps: u16,
    mrrs: u16,
    rcb: u16,
}

impl LinkParams {
    /// The reset values: MPS 128, MRRS 512, RCB 64.
    pub const DEFAULT: LinkParams = LinkParams { mps: 128, mrrs: 512, rcb: 64 };

    /// Validates MPS and MRRS (powers of two, 128..=4096) and RCB (64 or 128).
    pub fn new(mps: u16, mrrs: u16, rcb: u16) -> Result<Self, TlpError> {
        check_size("Max_Payload_Size", mps)?;
        check_size("Max_Read_Request_Size", mrrs)?;
        if rcb != 64 && rcb != 128 {
            return Err(TlpError::InvalidRcb { value: rcb });
        }
        Ok(LinkParams { mps, mrrs, rcb })
    }

    /// From the register encodings: Device Control Max_Payload_Size (bits 7:5) and
    /// Max_Read_Request_Size (bits 14:12), 000b = 128 … 101b = 4096, and Link Control bit 3
    /// (RCB, set = 128 bytes).
    pub fn from_encodings(mps_code: u8, mrrs_code: u8, rcb_128: bool) -> Result<Self, TlpError> {
        let mps = size_from_encoding("Max_Payload_Size", mps_code)?;
        let mrrs = size_from_encoding("Max_Read_Request_Size", mrrs_code)?;
        LinkParams::new(mps, mrrs, if rcb_128 { 128 } else { 64 })
    }

    /// Max_Payload_Size in bytes.
    pub const fn max_payload_size(&self) -> u16 {
        self.mps
    }

    /// Max_Read_Request_Size in bytes.
    pub const fn max_read_request_size(&self) -> u16 {
        self.mrrs
    }

    /// Read Completion Boundary in bytes.
    pub const fn read_completion_boundary(&self) -> u16 {
        self.rcb
    }
}

impl Default for LinkParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Decodes a 3-bit Max_Payload_Size / Max_Read_Request_Size field: 128 << code for 0..=5.
pub fn size_from_encoding(parameter: &'static str, code: u8) -> Result<u16, TlpError> {
    if code <= 5 { Ok(128 << code) } else { Err(TlpError::ReservedSizeEncoding { parameter, code }) }
}

/// One request's worth of a split range: `len` bytes at byte address `address` (0 bytes only
/// for a zero-length request built by hand).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SplitChunk {
    pub address: u64,
    pub len: u32,
}

impl SplitChunk {
    /// The DW address the request header carries.
    pub const fn dw_address(&self) -> u64 {
        self.address & !3
    }

    /// The byte enables and Length of the request for this chunk.
    pub fn byte_enables(&self) -> Result<ByteEnables, TlpError> {
        ByteEnables::for_range(self.address, self.len)
    }

    /// Checks that one request can carry this chunk: inside one 4 KiB page and at most `limit`
    /// bytes of DW-aligned span (`parameter` names the limit for the error).
    fn check_single(&self, parameter: &'static str, limit: u16) -> Result<ByteEnables, TlpError> {
        let (address, len) = (self.address, self.len as u64);
        check_within_page(address, len)?;
        let enables = self.byte_enables()?;
        if enables.length_dw as u64 * 4 > limit as u64 {
            return Err(TlpError::ExceedsLimit {
                address,
                len,
                length_dw: enables.length_dw as u64,
                parameter,
                limit,
            });
        }
        Ok(enables)
    }
}

/// Checks that the last of `len` bytes at `address` is below 2^64.
fn check_address_space(address: u64, len: u64) -> Result<(), TlpError> {
    match len.checked_sub(1) {
        Some(last) if address.checked_add(last).is_none() => Err(TlpError::AddressOverflow { address, len }),
        _ => Ok(()),
    }
}

/// Checks that `len` bytes at `address` fit in the 64-bit address space and inside the 4 KiB page of `address`
/// (an empty range always fits).
pub(crate) fn check_within_page(address: u64, len: u64) -> Result<(), TlpError> {
    check_address_space(address, len)?;
    if (address & (PAGE_SIZE - 1)) + len > PAGE_SIZE {
        // Not the last page (the range would not fit below 2^64), so the boundary fits in u64.
        let boundary = (address | (PAGE_SIZE - 1)) + 1;
        return Err(TlpError::CrossesPage { address, len, boundary });
    }
    Ok(())
}

/// The chunks of `len` bytes at `address`, each ending at the range end or at a multiple of
/// `limit` (see the module documentation); nothing for an empty range. `limit` must be a power
/// of two in 128..=4096 (`parameter` names it in the error).
pub fn split_range(address: u64, len: u64, parameter: &'static str, limit: u16) -> Result<Chunks, TlpError> {
    let limit = check_size(parameter, limit)?;
    check_address_space(address, len)?;
    Ok(Chunks { next: address, remaining: len, limit: limit as u64 })
}

/// Iterator over the chunks of a split range, from [`split_range`], [`memory_read_requests`].
#[derive(Clone, Debug)]
pub struct Chunks {
    next: u64,
    remaining: u64,
    limit: u64,
}

impl Iterator for Chunks {
    type Item = SplitChunk;

    fn next(&mut self) -> Option<SplitChunk> {
        if self.remaining == 0 {
            return None;
        }
        let address = self.next;
        // Up to the next multiple of `limit`.
        let room = self.limit - (address & (self.limit - 1));
        let len = room.min(self.remaining);
        self.remaining -= len;
        // Wraps to 0 only after the last byte of the address space, when nothing remains.
        self.next = address.wrapping_add(len);
        // A chunk is at most `limit` <= 4096 bytes.
        Some(SplitChunk { address, len: len as u32 })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let room = self.limit - (self.next & (self.limit - 1));
        let n = match self.remaining {
            0 => 0,
            r if r <= room => 1,
            r => 1 + (r - room).div_ceil(self.limit),
        };
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

/// The header fields a requester chooses for its requests, besides address, length and tag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RequestFields {
    pub requester: RoutingId,
    /// Traffic Class, 0..=7 (higher bits are masked off).
    pub tc: u8,
    pub attr: Attr,
}

/// A memory request TLP with the header fields every builder here shares.
fn memory_tlp(
    fields: &RequestFields,
    op: MemOp,
    tag: u16,
    chunk: &SplitChunk,
    enables: ByteEnables,
    payload: Vec<u8>,
) -> Tlp {
    let dw_address = chunk.dw_address();
    Tlp {
        prefixes: Vec::new(),
        tc: fields.tc & 0x7,
        attr: fields.attr,
        ln: false,
        th: false,
        ep: false,
        at: 0,
        // The Length field is 10 bits; 1024 DW is encoded as 0.
        length: enables.length_dw & 0x3ff,
        body: Body::Memory(MemRequest {
            op,
            requester: fields.requester,
            tag,
            first_be: enables.first_be,
            last_be: enables.last_be,
            address: dw_address,
            ph: 0,
            addr64: dw_address >= 1 << 32,
        }),
        payload,
        digest: None,
    }
}

/// One MWr for `data` written at byte `address`: payload laid out at its byte lanes from the DW
/// address on, disabled bytes 0. Empty `data` gives the zero-length write (Length 1, no byte
/// enabled). Fails if the write crosses 4 KiB or its payload exceeds `mps`.
pub fn memory_write_tlp(
    fields: &RequestFields,
    address: u64,
    data: &[u8],
    mps: u16,
) -> Result<Tlp, TlpError> {
    let mps = check_size("Max_Payload_Size", mps)?;
    let len = u32::try_from(data.len()).map_err(|_| TlpError::RequestTooLong {
        address,
        len: data.len() as u64,
        length_dw: (data.len() as u64).div_ceil(4),
    })?;
    let chunk = SplitChunk { address, len };
    let enables = chunk.check_single("Max_Payload_Size", mps)?;
    Ok(write_tlp(fields, &chunk, enables, data))
}

fn write_tlp(fields: &RequestFields, chunk: &SplitChunk, enables: ByteEnables, data: &[u8]) -> Tlp {
    let mut payload = vec![0u8; enables.length_dw as usize * 4];
    let offset = (chunk.address & 3) as usize;
    payload[offset..offset + data.len()].copy_from_slice(data);
    memory_tlp(fields, MemOp::Write, 0, chunk, enables, payload)
}

/// The MWr TLPs that write `data` at byte `address`: none crossing 4 KiB, each payload at most
/// `mps` bytes, split at multiples of `mps`, in increasing address order. Posted requests carry
/// no meaningful tag; it is 0. Empty `data` yields nothing (use [`memory_write_tlp`] for a
/// zero-length write).
pub fn memory_write_tlps<'a>(
    fields: RequestFields,
    address: u64,
    data: &'a [u8],
    mps: u16,
) -> Result<MemoryWrites<'a>, TlpError> {
    let chunks = split_range(address, data.len() as u64, "Max_Payload_Size", mps)?;
    Ok(MemoryWrites { fields, chunks, data })
}

/// Iterator returned by [`memory_write_tlps`].
#[derive(Clone, Debug)]
pub struct MemoryWrites<'a> {
    fields: RequestFields,
    chunks: Chunks,
    /// The data not yet turned into TLPs.
    data: &'a [u8],
}

impl MemoryWrites<'_> {
    /// The next MWr as wire bytes, in a new `Vec` of exactly its length: the same bytes as
    /// `self.next().map(|t| t.to_bytes())`, with the data copied once behind the emitted header
    /// (zero bytes pad an unaligned start and end), where building the [`Tlp`] first would
    /// zero-fill its payload, copy the data into it and copy it again when emitting. For
    /// senders that only need the bytes, such as a DMA write of many MWrs.
    pub fn next_bytes(&mut self) -> Option<Vec<u8>> {
        let chunk = self.chunks.next()?;
        let (now, rest) = self.data.split_at(chunk.len as usize);
        self.data = rest;
        // As in `next`: a chunk from `split_range` always has byte enables.
        let enables = chunk.byte_enables().ok()?;
        let header = memory_tlp(&self.fields, MemOp::Write, 0, &chunk, enables, Vec::new());
        let header_len = header.buffer_len();
        let total = header_len + enables.length_dw as usize * 4;
        let mut bytes = Vec::with_capacity(total);
        bytes.resize(header_len, 0);
        header.emit(&mut bytes).ok()?;
        bytes.resize(header_len + (chunk.address & 3) as usize, 0);
        bytes.extend_from_slice(now);
        bytes.resize(total, 0);
        Some(bytes)
    }
}

impl Iterator for MemoryWrites<'_> {
    type Item = Tlp;

    fn next(&mut self) -> Option<Tlp> {
        let chunk = self.chunks.next()?;
        let (now, rest) = self.data.split_at(chunk.len as usize);
        self.data = rest;
        // A chunk from `split_range` lies inside one aligned `limit` <= 4096 block, so it spans at
        // most 1024 DW and `for_range` cannot fail; stop rather than panic if that ever changed.
        let enables = chunk.byte_enables().ok()?;
        Some(write_tlp(&self.fields, &chunk, enables, now))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

/// The chunks a read of `len` bytes at `address` must be split into: none crossing 4 KiB, each
/// Length at most `mrrs` bytes, in increasing address order. Give each a tag and turn it into a
/// TLP with [`memory_read_tlp`]; collect its completions with
/// [`ReadReassembly::for_chunk`](crate::completion::ReadReassembly::for_chunk).
pub fn memory_read_requests(address: u64, len: u64, mrrs: u16) -> Result<Chunks, TlpError> {
    split_range(address, len, "Max_Read_Request_Size", mrrs)
}

/// The MRd for one chunk with the caller's `tag` (10 bits). A chunk of 0 bytes gives the
/// zero-length read (Length 1, no byte enabled). Fails if the chunk crosses 4 KiB or needs more
/// than `mrrs` bytes.
pub fn memory_read_tlp(
    fields: &RequestFields,
    chunk: SplitChunk,
    tag: u16,
    mrrs: u16,
) -> Result<Tlp, TlpError> {
    let mrrs = check_size("Max_Read_Request_Size", mrrs)?;
    if tag > MAX_TAG {
        return Err(TlpError::TagOutOfRange { tag });
    }
    let enables = chunk.check_single("Max_Read_Request_Size", mrrs)?;
    Ok(memory_tlp(fields, MemOp::Read, tag, &chunk, enables, Vec::new()))
}
