//! Building completions as a completer, and reassembling split read completions as a requester
//! (PCIe Base Spec r6.3 §2.2.9.1 "Completion Rules for Non-Flit Mode", §2.3.1.1 "Data Return
//! for Non-UIO Read Requests", §2.2.5.1 byte enables).
//!
//! # Completer side
//!
//! - Every completion echoes the request's Requester ID, Tag, TC and Attr and carries the
//!   completer's ID (§2.2.9.1).
//! - A memory read may be answered by several CplDs (§2.3.1.1), in increasing address order, the
//!   first starting at the requested address, each one except the last ending on a naturally
//!   aligned multiple of the Read Completion Boundary (RCB: 64 or 128 bytes for a Root Complex,
//!   128 for every other completer), each payload at most Max_Payload_Size. A read that crosses no
//!   RCB boundary gets exactly one completion. [`read_completions`] returns the largest legal
//!   pieces: each ends at the last RCB boundary its MPS allows.
//! - Byte Count: the bytes still to be returned including this completion (Table 2-40 for the
//!   first: from the first to the last enabled byte; 1 for a zero-length read); the model holds
//!   1..=4096 and 4096 goes on the wire as 0. Lower Address: address bits \[6:0\] of the first
//!   enabled byte returned in this completion (Table 2-41 for the first).
//! - The payload starts at the DW that holds the completion's first byte; bytes the request did
//!   not enable are 0 (§2.2.5 recommends zeros to avoid leaking data).
//! - A zero-length read (Length 1, no byte enabled) gets one CplD of Length 1 and Byte Count 1
//!   whose data is unspecified (here: 0) (§2.2.5.1).
//! - I/O and configuration requests get exactly one completion with Byte Count 4 and Lower
//!   Address 0 (§2.2.9.1), a CplD of 1 DW for reads, a Cpl for writes.
//! - A completion with a status other than SC is a Cpl (CplLk) without data and ends the request;
//!   for a memory read its Byte Count and Lower Address are what a successful completion at that
//!   point would carry (§2.3.1.1). Configuration Request Retry Status is for configuration
//!   requests only. AtomicOp completions carry the operand size as Byte Count and a reserved
//!   (0) Lower Address.
//!
//! # Requester side
//!
//! [`ReadReassembly`] follows the completions of one outstanding read and checks each against
//! the rules above: status, poisoning, Lower Address equal to the next expected byte's address
//! \[6:0\], Byte Count equal to the bytes still missing, Length covering exactly the remaining
//! bytes in the final completion (`Length × 4 == ((Lower Address & 3) + Byte Count + 3) & !3`),
//! every non-final completion ending on an RCB boundary (64 bytes unless told otherwise: every
//! legal RCB is a multiple of 64). A duplicate or overlapping completion shows up as a wrong
//! Byte Count or Lower Address. The BCM bit of PCI-X completers is honoured: such a first
//! completion's Byte Count counts only its own bytes.
//!
//! # Example
//!
//! ```
//! use tlp::completion::{MemoryRead, Progress, ReadReassembly, read_completions};
//! use tlp::split::{LinkParams, RequestFields, memory_read_requests, memory_read_tlp};
//! use tlp::{Attr, RoutingId};
//!
//! let requester = RequestFields { requester: RoutingId::new(0, 0, 0), tc: 0, attr: Attr::default() };
//! let link = LinkParams::new(128, 512, 64)?;
//! // Requester: 100 bytes at 0x1fe0 cross 4 KiB, so they take two MRds, each with its own tag.
//! for (tag, chunk) in memory_read_requests(0x1fe0, 100, link.max_read_request_size())?.enumerate() {
//!     let request = memory_read_tlp(&requester, chunk, tag as u16, link.max_read_request_size())?;
//!     let mut reassembly = ReadReassembly::for_chunk(&chunk)?;
//!     // Completer: answer it with the bytes it asks for.
//!     let read = MemoryRead::from_tlp(&request)?;
//!     let data = vec![0xab; read.byte_count() as usize];
//!     for completion in read_completions(&read, RoutingId::new(1, 0, 0), &data, &link)? {
//!         if let Progress::Done(bytes) = reassembly.accept(&completion)? {
//!             assert_eq!(bytes, data);
//!         }
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::TlpError;
use crate::byte_enable::ByteEnables;
use crate::model::{AtomicOp, Attr, Body, Completion, CplStatus, MemOp, RoutingId, Tlp};
use crate::split::{LinkParams, PAGE_SIZE, SplitChunk, check_within_page};

/// The fields a completion copies from its request (§2.2.9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestEcho {
    pub requester: RoutingId,
    pub tag: u16,
    pub tc: u8,
    pub attr: Attr,
}

impl RequestEcho {
    /// The echoed fields of a non-posted request (MRd, MRdLk, IORd/Wr, CfgRd/Wr, AtomicOps).
    pub fn from_request(request: &Tlp) -> Result<Self, TlpError> {
        let (requester, tag) = match &request.body {
            Body::Memory(m) if m.op != MemOp::Write => (m.requester, m.tag),
            Body::Io(io) => (io.requester, io.tag),
            Body::Config(c) => (c.requester, c.tag),
            Body::Atomic(a) => (a.requester, a.tag),
            Body::Memory(_) | Body::Message(_) | Body::Completion(_) => {
                return Err(TlpError::NoCompletion { kind: request.kind_name() });
            }
        };
        Ok(RequestEcho { requester, tag, tc: request.tc, attr: request.attr })
    }
}

/// A memory read (MRd or MRdLk) as a completer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemoryRead {
    pub echo: RequestEcho,
    /// MRdLk: completions are CplDLk / CplLk.
    pub locked: bool,
    /// The DW address from the header.
    pub dw_address: u64,
    /// Byte enables and Length (implied all-enabled when TH is set, §2.2.5.1).
    pub enables: ByteEnables,
}

impl MemoryRead {
    /// Reads an MRd/MRdLk and checks what a completer relies on: the byte-enable rules of
    /// §2.2.5.1 and that the request does not cross 4 KiB (§2.2.7.1).
    pub fn from_tlp(request: &Tlp) -> Result<Self, TlpError> {
        let read = Self::from_tlp_unchecked(request)?;
        read.check()?;
        Ok(read)
    }

    /// Checks the §2.2.5.1 byte-enable rules and that the DWs read stay inside one 4 KiB page
    /// (§2.2.7.1), which also keeps every address below 2^64.
    pub fn check(&self) -> Result<(), TlpError> {
        self.enables.check(self.dw_address, true)?;
        if self.dw_address & 3 != 0 {
            return Err(TlpError::UnalignedAddress { address: self.dw_address });
        }
        check_within_page(self.dw_address, self.enables.length_dw as u64 * 4)?;
        Ok(())
    }

    /// The fields of an MRd/MRdLk without the byte-enable and 4 KiB checks (to answer even a
    /// doubtful request with a failure status).
    fn from_tlp_unchecked(request: &Tlp) -> Result<Self, TlpError> {
        let Body::Memory(m) = &request.body else {
            return Err(TlpError::WrongRequestKind { kind: request.kind_name(), expected: "a memory read" });
        };
        let locked = match m.op {
            MemOp::Read => false,
            MemOp::ReadLocked => true,
            MemOp::Write => return Err(TlpError::NoCompletion { kind: request.kind_name() }),
        };
        let length_dw = request.length_dw();
        let enables = if request.th {
            // The byte-enable fields carry ST[7:0]; all bytes are implied enabled (§2.2.5.1).
            ByteEnables { first_be: 0xf, last_be: if length_dw == 1 { 0 } else { 0xf }, length_dw }
        } else {
            ByteEnables { first_be: m.first_be, last_be: m.last_be, length_dw }
        };
        Ok(MemoryRead {
            echo: RequestEcho { requester: m.requester, tag: m.tag, tc: request.tc, attr: request.attr },
            locked,
            dw_address: m.address & !3,
            enables,
        })
    }

    /// Address of the first enabled byte.
    pub fn first_byte_address(&self) -> u64 {
        self.enables.byte_range(self.dw_address).0
    }

    /// Bytes a successful read returns, first to last enabled byte (0 for a zero-length read).
    pub fn byte_count(&self) -> u32 {
        self.enables.enabled_span().1
    }

    /// The enabled bytes as `(address, len)` runs: the accesses a completer makes so that
    /// disabled bytes with read side effects are not read.
    pub fn enabled_runs(&self) -> impl Iterator<Item = (u64, u32)> + use<> {
        let base = self.dw_address;
        self.enables.runs().map(move |(offset, len)| (base.wrapping_add(offset as u64), len))
    }
}

fn completion_tlp(echo: &RequestEcho, completion: Completion, payload: Vec<u8>) -> Tlp {
    Tlp {
        prefixes: Vec::new(),
        tc: echo.tc,
        attr: echo.attr,
        ln: false,
        th: false,
        ep: false,
        at: 0,
        // Reserved (0) without data; 1024 DW is encoded as 0.
        length: (payload.len() / 4) as u16 & 0x3ff,
        body: Body::Completion(completion),
        payload,
        digest: None,
    }
}

fn completion_header(
    echo: &RequestEcho,
    completer: RoutingId,
    locked: bool,
    status: CplStatus,
    byte_count: u16,
    lower_address: u8,
) -> Completion {
    Completion {
        locked,
        completer,
        status,
        bcm: false,
        byte_count,
        requester: echo.requester,
        tag: echo.tag,
        lower_address: lower_address & 0x7f,
    }
}

/// The CplDs returning `data` for a memory read: `data` holds the bytes from the first to the
/// last enabled byte ([`MemoryRead::byte_count`] of them; empty for a zero-length read). Each
/// completion is at most `link`'s MPS and all but the last end on its RCB.
pub fn read_completions<'a>(
    read: &MemoryRead,
    completer: RoutingId,
    data: &'a [u8],
    link: &LinkParams,
) -> Result<ReadCompletions<'a>, TlpError> {
    read.check()?;
    let expected = read.byte_count();
    if data.len() != expected as usize {
        return Err(TlpError::ReadDataLength { expected, got: data.len() });
    }
    // Positions are offsets in the read's 4 KiB page (which the check above keeps it in), so
    // that nothing overflows in the top page of the address space; the page base is a multiple
    // of 128, so an offset's bits [6:0] are the Lower Address.
    let read_offset = read.dw_address & (PAGE_SIZE - 1);
    let start = read_offset + read.enables.enabled_span().0 as u64;
    Ok(ReadCompletions {
        read: *read,
        completer,
        data,
        read_offset,
        start,
        next: start,
        end: start + expected as u64,
        mps: link.max_payload_size() as u64,
        rcb: link.read_completion_boundary() as u64,
        zero_length_pending: read.enables.is_zero_length(),
    })
}

/// Iterator returned by [`read_completions`].
#[derive(Clone, Debug)]
pub struct ReadCompletions<'a> {
    read: MemoryRead,
    completer: RoutingId,
    data: &'a [u8],
    /// Page offset of the read's DW address.
    read_offset: u64,
    /// Page offset of `data[0]`.
    start: u64,
    /// Page offset of the next byte to return.
    next: u64,
    /// Page offset just past the last byte.
    end: u64,
    mps: u64,
    rcb: u64,
    zero_length_pending: bool,
}

impl ReadCompletions<'_> {
    /// The Cpl (CplLk) that ends the read with a failure `status` instead of the completions not
    /// yet produced: Byte Count and Lower Address are those the next successful completion would
    /// carry (§2.3.1.1). `None` once every byte was returned.
    pub fn unsuccessful(&self, status: CplStatus) -> Result<Option<Tlp>, TlpError> {
        if status == CplStatus::Sc {
            return Err(TlpError::SuccessIsNotFailure);
        }
        let (byte_count, lower_address) = if self.zero_length_pending {
            (1, self.read.enables.lower_address(self.read.dw_address))
        } else if self.next < self.end {
            ((self.end - self.next) as u16, self.next as u8)
        } else {
            return Ok(None);
        };
        let header = completion_header(
            &self.read.echo,
            self.completer,
            self.read.locked,
            status,
            byte_count,
            lower_address,
        );
        Ok(Some(completion_tlp(&self.read.echo, header, Vec::new())))
    }

    /// Bytes not yet returned.
    pub fn remaining(&self) -> u32 {
        (self.end - self.next) as u32
    }
}

/// One CplD of a [`ReadCompletions`], before its payload is copied anywhere.
struct NextCompletion<'a> {
    header: Completion,
    /// Payload length in bytes (whole DWs).
    payload_len: usize,
    /// Where `data` starts in the payload (the first byte's lane).
    lane: usize,
    data: &'a [u8],
    /// Page offset of the payload's first byte (DW aligned).
    dw_start: u64,
}

impl<'a> ReadCompletions<'a> {
    fn next_completion(&mut self) -> Option<NextCompletion<'a>> {
        let read = &self.read;
        if self.zero_length_pending {
            self.zero_length_pending = false;
            let header = completion_header(
                &read.echo,
                self.completer,
                read.locked,
                CplStatus::Sc,
                1,
                read.enables.lower_address(read.dw_address),
            );
            let dw_start = read.dw_address & (PAGE_SIZE - 1);
            return Some(NextCompletion { header, payload_len: 4, lane: 0, data: &[], dw_start });
        }
        if self.next >= self.end {
            return None;
        }
        let first = self.next;
        let dw_start = first & !3;
        // The farthest RCB boundary an MPS-sized payload from `dw_start` reaches; MPS is a
        // multiple of RCB, so this is beyond `first`.
        let limit = (dw_start + self.mps) & !(self.rcb - 1);
        let last_end = limit.min(self.end);
        let payload_end = (last_end + 3) & !3;
        let from = (first - self.start) as usize;
        let to = (last_end - self.start) as usize;
        let header = completion_header(
            &read.echo,
            self.completer,
            read.locked,
            CplStatus::Sc,
            (self.end - first) as u16,
            first as u8,
        );
        self.next = last_end;
        Some(NextCompletion {
            header,
            payload_len: (payload_end - dw_start) as usize,
            lane: (first - dw_start) as usize,
            data: self.data.get(from..to).unwrap_or(&[]),
            dw_start,
        })
    }

    /// Fills `payload` (zeroed, `next.payload_len` bytes) with the completion's data; disabled
    /// bytes between enabled ones (non-contiguous enables of 1-2 DW reads) stay 0. Only the
    /// request's first and last DW have disabled bytes, and they can only be this payload's
    /// first and last DW.
    fn fill_payload(&self, next: &NextCompletion<'_>, payload: &mut [u8]) {
        if let Some(dst) = payload.get_mut(next.lane..next.lane + next.data.len()) {
            dst.copy_from_slice(next.data);
        }
        let payload_len = payload.len();
        let edges = (0..4.min(payload_len)).chain(payload_len.saturating_sub(4).max(4)..payload_len);
        for i in edges {
            let offset = (next.dw_start + i as u64).wrapping_sub(self.read_offset) as u32;
            if !self.read.enables.is_enabled(offset) {
                payload[i] = 0;
            }
        }
    }

    /// The next CplD emitted straight into bytes (header, then the data with disabled bytes 0):
    /// the same bytes as emitting [`Iterator::next`]'s TLP, without building its payload `Vec`
    /// first and copying it again. For completers that only need the bytes. `None` when every
    /// completion was returned.
    pub fn next_bytes(&mut self) -> Option<Vec<u8>> {
        let mut bytes = Vec::new();
        self.next_into(&mut bytes).then_some(bytes)
    }

    /// [`ReadCompletions::next_bytes`] into `out` (cleared first; a buffer reused for every
    /// completion allocates nothing). `false`, with `out` empty, when every completion was
    /// returned.
    pub fn next_into(&mut self, out: &mut Vec<u8>) -> bool {
        out.clear();
        let Some(next) = self.next_completion() else { return false };
        let header = completion_tlp(&self.read.echo, next.header, Vec::new());
        let header_len = header.buffer_len();
        out.resize(header_len + next.payload_len, 0);
        if header.emit(out).is_err() {
            // Unreachable: `out` holds the header's `buffer_len()` bytes.
            out.clear();
            return false;
        }
        let mut packet = crate::wire::Packet::new_unchecked(&mut out[..]);
        // A Cpl header with no payload was emitted: make it a CplD of the payload's length.
        packet.set_fmt_type(crate::model::Fmt::for_header(false, true), header.type_field());
        packet.set_length((next.payload_len / 4) as u16 & 0x3ff);
        let (_, payload) = out.split_at_mut(header_len);
        self.fill_payload(&next, payload);
        true
    }
}

impl Iterator for ReadCompletions<'_> {
    type Item = Tlp;

    fn next(&mut self) -> Option<Tlp> {
        let next = self.next_completion()?;
        let mut payload = vec![0u8; next.payload_len];
        self.fill_payload(&next, &mut payload);
        Some(completion_tlp(&self.read.echo, next.header, payload))
    }
}

/// The I/O or configuration request's byte enables, checked (Length 1, Last DW BE 0).
fn io_config_enables(request: &Tlp, want_write: bool) -> Result<(RequestEcho, ByteEnables), TlpError> {
    let expected = if want_write { "an I/O or configuration write" } else { "an I/O or configuration read" };
    let (write, first_be, last_be) = match &request.body {
        Body::Io(io) => (io.write, io.first_be, io.last_be),
        Body::Config(c) => (c.write, c.first_be, c.last_be),
        _ => return Err(TlpError::WrongRequestKind { kind: request.kind_name(), expected }),
    };
    if write != want_write {
        return Err(TlpError::WrongRequestKind { kind: request.kind_name(), expected });
    }
    let enables = ByteEnables { first_be, last_be, length_dw: request.length_dw() };
    enables.check(0, false)?;
    Ok((RequestEcho::from_request(request)?, enables))
}

/// The CplD for an I/O or configuration read: 1 DW of `data` (bytes in register order, byte 0
/// at the DW address), disabled bytes 0, Byte Count 4, Lower Address 0.
pub fn io_config_read_completion(
    request: &Tlp,
    completer: RoutingId,
    data: [u8; 4],
) -> Result<Tlp, TlpError> {
    let (echo, enables) = io_config_enables(request, false)?;
    let mut payload = data.to_vec();
    for (i, byte) in payload.iter_mut().enumerate() {
        if !enables.is_enabled(i as u32) {
            *byte = 0;
        }
    }
    let header = completion_header(&echo, completer, false, CplStatus::Sc, 4, 0);
    Ok(completion_tlp(&echo, header, payload))
}

/// The Cpl (status SC) for an I/O or configuration write: Byte Count 4, Lower Address 0.
pub fn io_config_write_completion(request: &Tlp, completer: RoutingId) -> Result<Tlp, TlpError> {
    let (echo, _) = io_config_enables(request, true)?;
    let header = completion_header(&echo, completer, false, CplStatus::Sc, 4, 0);
    Ok(completion_tlp(&echo, header, Vec::new()))
}

/// The Cpl (CplLk for MRdLk) without data that fails any non-posted `request` with `status`
/// (UR, CA, or CRS for configuration requests). Byte Count and Lower Address: for a memory
/// read, those of its first successful completion; for an AtomicOp, the operand size and 0; for
/// I/O and configuration requests, 4 and 0. The request's byte enables are not checked, so that
/// even a doubtful request can be answered.
pub fn unsuccessful_completion(
    request: &Tlp,
    completer: RoutingId,
    status: CplStatus,
) -> Result<Tlp, TlpError> {
    if status == CplStatus::Sc {
        return Err(TlpError::SuccessIsNotFailure);
    }
    let echo = RequestEcho::from_request(request)?;
    if status == CplStatus::Crs && !matches!(request.body, Body::Config(_)) {
        return Err(TlpError::CrsForNonConfig { kind: request.kind_name() });
    }
    let (locked, byte_count, lower_address) = match &request.body {
        Body::Memory(_) => {
            let read = MemoryRead::from_tlp_unchecked(request)?;
            (read.locked, read.enables.byte_count(), read.enables.lower_address(read.dw_address))
        }
        Body::Atomic(a) => {
            // CAS carries two operands; the others one (§2.2.7.1, Table 2-15).
            let data_len = request.length_dw() * 4;
            let operand = if a.op == AtomicOp::Cas { data_len / 2 } else { data_len };
            (false, operand, 0)
        }
        _ => (false, 4, 0),
    };
    let header = completion_header(&echo, completer, locked, status, byte_count, lower_address);
    Ok(completion_tlp(&echo, header, Vec::new()))
}

/// What [`ReadReassembly::accept`] made of a completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// More completions are due; `remaining` bytes are still missing.
    More { remaining: u32 },
    /// The read is complete: the bytes from the first to the last requested byte (empty for a
    /// zero-length read).
    Done(Vec<u8>),
}

/// The state of one outstanding memory read while its completions arrive.
#[derive(Clone, Debug)]
pub struct ReadReassembly {
    /// Address of the first requested byte.
    address: u64,
    /// Bytes requested; 0 for a zero-length read.
    requested: u32,
    received: u32,
    data: Vec<u8>,
    rcb: u16,
    /// Requester ID and Tag to check, when known.
    transaction: Option<(RoutingId, u16)>,
    finished: bool,
}

impl ReadReassembly {
    /// For a read of `len` bytes at byte `address` (0 bytes: a zero-length read). Fails when no
    /// single read can ask for that range (more than 4096 bytes, crossing 4 KiB).
    pub fn new(address: u64, len: u32) -> Result<Self, TlpError> {
        ByteEnables::for_range(address, len)?;
        check_within_page(address, len as u64)?;
        // A zero-length read names a DW; its completion's Lower Address ends in 00b.
        let address = if len == 0 { address & !3 } else { address };
        Ok(ReadReassembly {
            address,
            requested: len,
            received: 0,
            data: vec![0; len as usize],
            rcb: 64,
            transaction: None,
            finished: false,
        })
    }

    /// For one chunk from [`memory_read_requests`](crate::split::memory_read_requests).
    pub fn for_chunk(chunk: &SplitChunk) -> Result<Self, TlpError> {
        Self::new(chunk.address, chunk.len)
    }

    /// For a read request TLP (MRd/MRdLk) this side sent; completions are also checked for its
    /// Requester ID and Tag. A read with non-contiguous enables returns the span from the first
    /// to the last enabled byte.
    pub fn for_request(request: &Tlp) -> Result<Self, TlpError> {
        let read = MemoryRead::from_tlp(request)?;
        let mut reassembly = Self::new(read.first_byte_address(), read.byte_count())?;
        reassembly.transaction = Some((read.echo.requester, read.echo.tag));
        Ok(reassembly)
    }

    /// Checks non-final completions against this RCB (64 or 128) instead of 64, for a completer
    /// known to use 128 (any completer but a Root Complex with RCB 64).
    pub fn with_read_completion_boundary(mut self, rcb: u16) -> Result<Self, TlpError> {
        if rcb != 64 && rcb != 128 {
            return Err(TlpError::InvalidRcb { value: rcb });
        }
        self.rcb = rcb;
        Ok(self)
    }

    /// Bytes received so far.
    pub fn received(&self) -> u32 {
        self.received
    }

    /// Bytes still missing.
    pub fn remaining(&self) -> u32 {
        self.requested - self.received
    }

    /// True once the read completed or failed.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Takes one completion for this read. On a malformed completion the state is unchanged (the
    /// caller decides whether to give up); an unsuccessful status finishes the read.
    pub fn accept(&mut self, completion: &Tlp) -> Result<Progress, TlpError> {
        if self.finished {
            return Err(TlpError::AlreadyFinished { address: self.address, requested: self.requested });
        }
        let Body::Completion(cpl) = &completion.body else {
            return Err(TlpError::NotACompletion { kind: completion.kind_name() });
        };
        if let Some((requester, tag)) = self.transaction {
            if cpl.requester != requester || cpl.tag != tag {
                return Err(TlpError::TransactionId {
                    expected_requester: requester,
                    expected_tag: tag,
                    got_requester: cpl.requester,
                    got_tag: cpl.tag,
                });
            }
        }
        if cpl.status != CplStatus::Sc {
            self.finished = true;
            return Err(TlpError::Unsuccessful {
                status: cpl.status,
                received: self.received,
                requested: self.requested,
            });
        }
        let remaining = self.remaining();
        if completion.ep {
            return Err(TlpError::Poisoned { lower_address: cpl.lower_address });
        }
        if completion.payload.is_empty() {
            return Err(TlpError::MissingData { remaining });
        }
        let length_dw = completion.length_dw();
        if completion.payload.len() != length_dw as usize * 4 {
            return Err(TlpError::PayloadLength { length_dw, payload_len: completion.payload.len() });
        }
        let next_address = self.address + self.received as u64;
        let expected_la = (next_address & 0x7f) as u8;
        if cpl.lower_address != expected_la {
            return Err(TlpError::LowerAddress {
                expected: expected_la,
                got: cpl.lower_address,
                next_address,
            });
        }
        let lane = (next_address & 3) as u32;
        let capacity = length_dw as u32 * 4 - lane;
        let (take, is_final) = if self.requested == 0 {
            // Zero-length read: one DW of unspecified data, Byte Count 1.
            (0, true)
        } else if capacity >= remaining {
            (remaining, true)
        } else {
            (capacity, false)
        };
        let expected_bc = if self.requested == 0 {
            1
        } else if cpl.bcm && self.received == 0 {
            // A PCI-X completer's first completion counts only its own bytes.
            take as u16
        } else {
            remaining as u16
        };
        if cpl.byte_count != expected_bc {
            return Err(TlpError::ByteCount { expected: expected_bc, got: cpl.byte_count });
        }
        if is_final {
            let expected_dw = (lane + take.max(1)).div_ceil(4) as u16;
            if length_dw != expected_dw {
                return Err(TlpError::FinalCompletionLength {
                    expected_dw,
                    got_dw: length_dw,
                    remaining,
                    lower_address: cpl.lower_address,
                });
            }
        } else {
            let end = next_address + take as u64;
            if end % self.rcb as u64 != 0 {
                return Err(TlpError::RcbBoundary { end, rcb: self.rcb, remaining });
            }
        }
        let from = self.received as usize;
        let lane = lane as usize;
        self.data[from..from + take as usize]
            .copy_from_slice(&completion.payload[lane..lane + take as usize]);
        self.received += take;
        if is_final {
            self.finished = true;
            Ok(Progress::Done(std::mem::take(&mut self.data)))
        } else {
            Ok(Progress::More { remaining: self.remaining() })
        }
    }
}
