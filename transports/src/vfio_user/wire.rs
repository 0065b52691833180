//! vfio-user message layouts: the 16-byte header and every payload the client sends or accepts.
//!
//! Each layout is a zero-copy typed view (`Foo<T: AsRef<[u8]>>`, built with `new_checked`, which
//! verifies the buffer is long enough for every fixed field) plus a `FooRepr` with `parse` and
//! `emit`. Field byte ranges live in one `mod field` per layout. The protocol uses the host's
//! byte order; this crate only builds for little-endian hosts (checked below), so every field is
//! read and written as little-endian.
//!
//! Offsets in the payload layouts are relative to the end of the header, as in the spec.

use std::fmt;
use std::ops::Range;

use crate::error::Error;

#[cfg(not(target_endian = "little"))]
compile_error!(
    "vfio-user uses the host byte order and every known peer is little-endian; \
     this client encodes messages as little-endian and does not support big-endian hosts"
);

/// Size of the message header.
pub const HEADER_LEN: usize = 16;

fn malformed(what: impl Into<String>) -> Error {
    Error::Malformed(what.into())
}

fn read_u16(buf: &[u8], range: Range<usize>) -> u16 {
    buf.get(range).and_then(|s| s.try_into().ok()).map_or(0, u16::from_le_bytes)
}

fn read_u32(buf: &[u8], range: Range<usize>) -> u32 {
    buf.get(range).and_then(|s| s.try_into().ok()).map_or(0, u32::from_le_bytes)
}

fn read_u64(buf: &[u8], range: Range<usize>) -> u64 {
    buf.get(range).and_then(|s| s.try_into().ok()).map_or(0, u64::from_le_bytes)
}

fn write_bytes(buf: &mut [u8], range: Range<usize>, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(range) {
        if dst.len() == bytes.len() {
            dst.copy_from_slice(bytes);
        }
    }
}

/// Generates a getter and a setter for each little-endian field of a view.
macro_rules! le_fields {
    ($( $(#[$meta:meta])* $get:ident, $set:ident : $ty:ident = $range:expr ;)*) => {
        impl<T: AsRef<[u8]>> View<T> {
            $(
                $(#[$meta])*
                pub fn $get(&self) -> $ty {
                    le_fields!(@read $ty, self.buffer.as_ref(), $range)
                }
            )*
        }
        impl<T: AsRef<[u8]> + AsMut<[u8]>> View<T> {
            $(
                #[doc = concat!("Sets the field read by [`Self::", stringify!($get), "`].")]
                pub fn $set(&mut self, value: $ty) {
                    write_bytes(self.buffer.as_mut(), $range, &value.to_le_bytes());
                }
            )*
        }
    };
    (@read u16, $buf:expr, $range:expr) => { read_u16($buf, $range) };
    (@read u32, $buf:expr, $range:expr) => { read_u32($buf, $range) };
    (@read u64, $buf:expr, $range:expr) => { read_u64($buf, $range) };
}

/// Generates the view type shared by every layout: a buffer checked to hold `$min` bytes.
macro_rules! view {
    ($(#[$meta:meta])* $name:ident, $min:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub struct View<T: AsRef<[u8]>> {
            pub(super) buffer: T,
        }

        impl<T: AsRef<[u8]>> View<T> {
            /// Wraps `buffer`, failing if it is shorter than the fixed part of the layout.
            pub fn new_checked(buffer: T) -> Result<Self, Error> {
                let len = buffer.as_ref().len();
                if len < $min {
                    return Err(malformed(format!(
                        "{} payload is {} bytes, needs at least {}",
                        stringify!($name),
                        len,
                        $min
                    )));
                }
                Ok(Self { buffer })
            }

            /// The wrapped buffer.
            pub fn into_inner(self) -> T {
                self.buffer
            }

            /// The bytes after the fixed part of the layout.
            pub fn trailing(&self) -> &[u8] {
                self.buffer.as_ref().get($min..).unwrap_or(&[])
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------------------------

/// Command numbers (spec "Commands" table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Version,
    DmaMap,
    DmaUnmap,
    DeviceGetInfo,
    DeviceGetRegionInfo,
    DeviceGetRegionIoFds,
    DeviceGetIrqInfo,
    DeviceSetIrqs,
    RegionRead,
    RegionWrite,
    DmaRead,
    DmaWrite,
    DeviceReset,
    DirtyPages,
    RegionWriteMulti,
    DeviceFeature,
    MigDataRead,
    MigDataWrite,
    /// A number this client does not know.
    Unknown(u16),
}

impl From<u16> for Command {
    fn from(value: u16) -> Self {
        match value {
            1 => Command::Version,
            2 => Command::DmaMap,
            3 => Command::DmaUnmap,
            4 => Command::DeviceGetInfo,
            5 => Command::DeviceGetRegionInfo,
            6 => Command::DeviceGetRegionIoFds,
            7 => Command::DeviceGetIrqInfo,
            8 => Command::DeviceSetIrqs,
            9 => Command::RegionRead,
            10 => Command::RegionWrite,
            11 => Command::DmaRead,
            12 => Command::DmaWrite,
            13 => Command::DeviceReset,
            14 => Command::DirtyPages,
            15 => Command::RegionWriteMulti,
            16 => Command::DeviceFeature,
            17 => Command::MigDataRead,
            18 => Command::MigDataWrite,
            other => Command::Unknown(other),
        }
    }
}

impl From<Command> for u16 {
    fn from(value: Command) -> Self {
        match value {
            Command::Version => 1,
            Command::DmaMap => 2,
            Command::DmaUnmap => 3,
            Command::DeviceGetInfo => 4,
            Command::DeviceGetRegionInfo => 5,
            Command::DeviceGetRegionIoFds => 6,
            Command::DeviceGetIrqInfo => 7,
            Command::DeviceSetIrqs => 8,
            Command::RegionRead => 9,
            Command::RegionWrite => 10,
            Command::DmaRead => 11,
            Command::DmaWrite => 12,
            Command::DeviceReset => 13,
            Command::DirtyPages => 14,
            Command::RegionWriteMulti => 15,
            Command::DeviceFeature => 16,
            Command::MigDataRead => 17,
            Command::MigDataWrite => 18,
            Command::Unknown(other) => other,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Command::Version => "VERSION",
            Command::DmaMap => "DMA_MAP",
            Command::DmaUnmap => "DMA_UNMAP",
            Command::DeviceGetInfo => "DEVICE_GET_INFO",
            Command::DeviceGetRegionInfo => "DEVICE_GET_REGION_INFO",
            Command::DeviceGetRegionIoFds => "DEVICE_GET_REGION_IO_FDS",
            Command::DeviceGetIrqInfo => "DEVICE_GET_IRQ_INFO",
            Command::DeviceSetIrqs => "DEVICE_SET_IRQS",
            Command::RegionRead => "REGION_READ",
            Command::RegionWrite => "REGION_WRITE",
            Command::DmaRead => "DMA_READ",
            Command::DmaWrite => "DMA_WRITE",
            Command::DeviceReset => "DEVICE_RESET",
            Command::DirtyPages => "DIRTY_PAGES",
            Command::RegionWriteMulti => "REGION_WRITE_MULTI",
            Command::DeviceFeature => "DEVICE_FEATURE",
            Command::MigDataRead => "MIG_DATA_READ",
            Command::MigDataWrite => "MIG_DATA_WRITE",
            Command::Unknown(n) => return write!(f, "UNKNOWN({n})"),
        };
        f.write_str(name)
    }
}

/// Header flag bits.
pub mod flags {
    /// Bits 0-3: message type.
    pub const TYPE_MASK: u32 = 0x0f;
    pub const TYPE_COMMAND: u32 = 0;
    pub const TYPE_REPLY: u32 = 1;
    /// The sender wants no reply.
    pub const NO_REPLY: u32 = 1 << 4;
    /// The reply reports an error; `error` holds the errno.
    pub const ERROR: u32 = 1 << 5;
}

pub mod header {
    use super::*;

    mod field {
        use std::ops::Range;
        pub const ID: Range<usize> = 0..2;
        pub const COMMAND: Range<usize> = 2..4;
        pub const SIZE: Range<usize> = 4..8;
        pub const FLAGS: Range<usize> = 8..12;
        pub const ERROR: Range<usize> = 12..16;
    }

    view!(
        /// The 16-byte header every message starts with.
        Header,
        HEADER_LEN
    );

    le_fields! {
        /// Message id, echoed in the reply.
        id, set_id: u16 = field::ID;
        /// Command number.
        command, set_command: u16 = field::COMMAND;
        /// Size of the whole message, header included.
        size, set_size: u32 = field::SIZE;
        /// Type, No_reply and Error bits.
        flags, set_flags: u32 = field::FLAGS;
        /// errno of an error reply.
        error, set_error: u32 = field::ERROR;
    }
}

pub use header::View as Header;

/// Whether a message is a command or a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Command,
    Reply,
}

/// The meaning of a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRepr {
    pub id: u16,
    pub command: Command,
    /// Whole message size, header included.
    pub size: u32,
    pub message_type: MessageType,
    pub no_reply: bool,
    /// `Some(errno)` when the Error bit is set (errno may be 0, which the spec allows).
    pub error: Option<u32>,
}

impl HeaderRepr {
    /// Parses and validates a header: type must be command or reply, size must cover the header.
    /// Reserved flag bits are ignored, as the spec only asks senders to clear them.
    pub fn parse<T: AsRef<[u8]>>(header: &Header<T>) -> Result<Self, Error> {
        let flag_bits = header.flags();
        let message_type = match flag_bits & flags::TYPE_MASK {
            flags::TYPE_COMMAND => MessageType::Command,
            flags::TYPE_REPLY => MessageType::Reply,
            other => return Err(malformed(format!("header type {other} is neither command nor reply"))),
        };
        let size = header.size();
        if (size as usize) < HEADER_LEN {
            return Err(malformed(format!("header size {size} is smaller than the 16-byte header")));
        }
        let error = if flag_bits & flags::ERROR != 0 { Some(header.error()) } else { None };
        Ok(Self {
            id: header.id(),
            command: Command::from(header.command()),
            size,
            message_type,
            no_reply: flag_bits & flags::NO_REPLY != 0,
            error,
        })
    }

    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, header: &mut Header<T>) {
        let mut flag_bits = match self.message_type {
            MessageType::Command => flags::TYPE_COMMAND,
            MessageType::Reply => flags::TYPE_REPLY,
        };
        if self.no_reply {
            flag_bits |= flags::NO_REPLY;
        }
        if self.error.is_some() {
            flag_bits |= flags::ERROR;
        }
        header.set_id(self.id);
        header.set_command(self.command.into());
        header.set_size(self.size);
        header.set_flags(flag_bits);
        header.set_error(self.error.unwrap_or(0));
    }

    /// Length of the payload that follows the header.
    pub fn payload_len(&self) -> usize {
        (self.size as usize).saturating_sub(HEADER_LEN)
    }
}

impl fmt::Display for HeaderRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} id={} size={}", self.command, self.message_type, self.id, self.size)?;
        if self.no_reply {
            f.write_str(" no_reply")?;
        }
        if let Some(errno) = self.error {
            write!(f, " error={errno}")?;
        }
        Ok(())
    }
}

/// Builds a whole message (header + payload). Fails if the message would not fit the 32-bit size.
pub fn encode_message(
    id: u16,
    command: Command,
    message_type: MessageType,
    no_reply: bool,
    error: Option<u32>,
    payload: &[u8],
) -> Result<Vec<u8>, Error> {
    encode_message_parts(id, command, message_type, no_reply, error, payload, &[])
}

/// [`encode_message`] with the payload given as a fixed part and trailing data, copied once
/// each into the one allocation (a REGION_WRITE needs no intermediate payload buffer).
pub fn encode_message_parts(
    id: u16,
    command: Command,
    message_type: MessageType,
    no_reply: bool,
    error: Option<u32>,
    fixed: &[u8],
    data: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + fixed.len() + data.len());
    append_message_parts(&mut bytes, id, command, message_type, no_reply, error, fixed, data)?;
    Ok(bytes)
}

/// [`encode_message_parts`] appending to `out` (several messages written with one `write`).
/// Nothing is appended on error.
#[allow(clippy::too_many_arguments)]
pub fn append_message_parts(
    out: &mut Vec<u8>,
    id: u16,
    command: Command,
    message_type: MessageType,
    no_reply: bool,
    error: Option<u32>,
    fixed: &[u8],
    data: &[u8],
) -> Result<(), Error> {
    let header = header_bytes(id, command, message_type, no_reply, error, fixed.len(), data.len())?;
    out.reserve(HEADER_LEN + fixed.len() + data.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(fixed);
    out.extend_from_slice(data);
    Ok(())
}

/// The start of a message whose trailing data of `data_len` bytes is sent separately (a
/// vectored write, so that large data is not copied behind the header): the header, sized for
/// the whole message, followed by `fixed`.
pub fn encode_message_head(
    id: u16,
    command: Command,
    message_type: MessageType,
    error: Option<u32>,
    fixed: &[u8],
    data_len: usize,
) -> Result<Vec<u8>, Error> {
    let header = header_bytes(id, command, message_type, false, error, fixed.len(), data_len)?;
    let mut head = Vec::with_capacity(HEADER_LEN + fixed.len());
    head.extend_from_slice(&header);
    head.extend_from_slice(fixed);
    Ok(head)
}

fn header_bytes(
    id: u16,
    command: Command,
    message_type: MessageType,
    no_reply: bool,
    error: Option<u32>,
    fixed_len: usize,
    data_len: usize,
) -> Result<[u8; HEADER_LEN], Error> {
    let total = HEADER_LEN + fixed_len + data_len;
    let size = u32::try_from(total).map_err(|_| {
        Error::InvalidArgument(format!("message of {total} bytes exceeds the 32-bit size field"))
    })?;
    let mut header_bytes = [0u8; HEADER_LEN];
    let repr = HeaderRepr { id, command, size, message_type, no_reply, error };
    let mut header = Header::new_checked(&mut header_bytes[..])?;
    repr.emit(&mut header);
    Ok(header_bytes)
}

// ---------------------------------------------------------------------------------------------
// VERSION
// ---------------------------------------------------------------------------------------------

pub mod version {
    use super::*;

    pub(super) mod field {
        use std::ops::Range;
        pub const MAJOR: Range<usize> = 0..2;
        pub const MINOR: Range<usize> = 2..4;
        pub const JSON_START: usize = 4;
    }

    view!(
        /// VERSION payload: major, minor, optional NUL-terminated JSON.
        Version,
        field::JSON_START
    );

    le_fields! {
        major, set_major: u16 = field::MAJOR;
        minor, set_minor: u16 = field::MINOR;
    }
}

/// VERSION payload meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRepr {
    pub major: u16,
    pub minor: u16,
    /// The capabilities JSON without its trailing NUL.
    pub json: Option<String>,
}

impl VersionRepr {
    pub fn parse<T: AsRef<[u8]>>(view: &version::View<T>) -> Result<Self, Error> {
        let raw = view.trailing();
        let json = if raw.is_empty() {
            None
        } else {
            // The NUL is mandatory (libvfio-user and QEMU reject JSON without it); what follows
            // it is ignored, and no interior NUL may precede the end of the JSON text.
            let nul = raw
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| malformed("VERSION JSON is not NUL-terminated"))?;
            let text = std::str::from_utf8(raw.get(..nul).unwrap_or(&[]))
                .map_err(|e| malformed(format!("VERSION JSON is not UTF-8: {e}")))?;
            Some(text.to_owned())
        };
        Ok(Self { major: view.major(), minor: view.minor(), json })
    }

    pub fn buffer_len(&self) -> usize {
        version::field::JSON_START + self.json.as_ref().map_or(0, |j| j.len() + 1)
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, view: &mut version::View<T>) {
        view.set_major(self.major);
        view.set_minor(self.minor);
        if let Some(json) = &self.json {
            let start = version::field::JSON_START;
            let buf = view.buffer.as_mut();
            write_bytes(buf, start..start + json.len(), json.as_bytes());
            write_bytes(buf, start + json.len()..start + json.len() + 1, &[0]);
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; self.buffer_len()];
        if let Ok(mut view) = version::View::new_checked(&mut bytes[..]) {
            self.emit(&mut view);
        }
        bytes
    }
}

// ---------------------------------------------------------------------------------------------
// DMA_MAP / DMA_UNMAP
// ---------------------------------------------------------------------------------------------

/// DMA_MAP flag bits: what the device may do in the window.
pub mod dma_map_flags {
    pub const READ: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
}

pub mod dma_map {
    use super::*;

    pub(super) mod field {
        use std::ops::Range;
        pub const ARGSZ: Range<usize> = 0..4;
        pub const FLAGS: Range<usize> = 4..8;
        pub const OFFSET: Range<usize> = 8..16;
        pub const ADDRESS: Range<usize> = 16..24;
        pub const SIZE: Range<usize> = 24..32;
        pub const LEN: usize = 32;
    }

    view!(
        /// DMA_MAP request payload (32 bytes).
        DmaMap,
        field::LEN
    );

    le_fields! {
        argsz, set_argsz: u32 = field::ARGSZ;
        flags, set_flags: u32 = field::FLAGS;
        offset, set_offset: u64 = field::OFFSET;
        address, set_address: u64 = field::ADDRESS;
        size, set_size: u64 = field::SIZE;
    }
}

/// DMA_MAP request meaning. `argsz` is always 32 (the size of the request itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMapRepr {
    pub flags: u32,
    /// File offset into the passed fd; 0 when no fd is passed.
    pub offset: u64,
    pub address: u64,
    pub size: u64,
}

impl DmaMapRepr {
    pub const LEN: usize = dma_map::field::LEN;

    pub fn parse<T: AsRef<[u8]>>(view: &dma_map::View<T>) -> Result<Self, Error> {
        Ok(Self { flags: view.flags(), offset: view.offset(), address: view.address(), size: view.size() })
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, view: &mut dma_map::View<T>) {
        view.set_argsz(Self::LEN as u32);
        view.set_flags(self.flags);
        view.set_offset(self.offset);
        view.set_address(self.address);
        view.set_size(self.size);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; Self::LEN];
        if let Ok(mut view) = dma_map::View::new_checked(&mut bytes[..]) {
            self.emit(&mut view);
        }
        bytes
    }
}

pub mod dma_unmap {
    use super::*;

    pub(super) mod field {
        use std::ops::Range;
        pub const ARGSZ: Range<usize> = 0..4;
        pub const FLAGS: Range<usize> = 4..8;
        pub const ADDRESS: Range<usize> = 8..16;
        pub const SIZE: Range<usize> = 16..24;
        pub const LEN: usize = 24;
    }

    view!(
        /// DMA_UNMAP request and reply payload (24 bytes).
        DmaUnmap,
        field::LEN
    );

    le_fields! {
        argsz, set_argsz: u32 = field::ARGSZ;
        flags, set_flags: u32 = field::FLAGS;
        address, set_address: u64 = field::ADDRESS;
        size, set_size: u64 = field::SIZE;
    }
}

/// DMA_UNMAP meaning (request and reply share it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaUnmapRepr {
    pub argsz: u32,
    pub flags: u32,
    pub address: u64,
    pub size: u64,
}

impl DmaUnmapRepr {
    pub const LEN: usize = dma_unmap::field::LEN;

    pub fn parse<T: AsRef<[u8]>>(view: &dma_unmap::View<T>) -> Result<Self, Error> {
        Ok(Self { argsz: view.argsz(), flags: view.flags(), address: view.address(), size: view.size() })
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, view: &mut dma_unmap::View<T>) {
        view.set_argsz(self.argsz);
        view.set_flags(self.flags);
        view.set_address(self.address);
        view.set_size(self.size);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; Self::LEN];
        if let Ok(mut view) = dma_unmap::View::new_checked(&mut bytes[..]) {
            self.emit(&mut view);
        }
        bytes
    }
}

// ---------------------------------------------------------------------------------------------
// DEVICE_GET_INFO
// ---------------------------------------------------------------------------------------------

/// DEVICE_GET_INFO flag bits.
pub mod device_flags {
    pub const RESET: u32 = 1 << 0;
    pub const PCI: u32 = 1 << 1;
}

pub mod device_info {
    use super::*;

    pub(super) mod field {
        use std::ops::Range;
        pub const ARGSZ: Range<usize> = 0..4;
        pub const FLAGS: Range<usize> = 4..8;
        pub const NUM_REGIONS: Range<usize> = 8..12;
        pub const NUM_IRQS: Range<usize> = 12..16;
        pub const LEN: usize = 16;
    }

    view!(
        /// DEVICE_GET_INFO request and reply payload (16 bytes).
        DeviceInfo,
        field::LEN
    );

    le_fields! {
        argsz, set_argsz: u32 = field::ARGSZ;
        flags, set_flags: u32 = field::FLAGS;
        num_regions, set_num_regions: u32 = field::NUM_REGIONS;
        num_irqs, set_num_irqs: u32 = field::NUM_IRQS;
    }
}

/// DEVICE_GET_INFO meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfoRepr {
    pub argsz: u32,
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
}

impl DeviceInfoRepr {
    pub const LEN: usize = device_info::field::LEN;

    pub fn parse<T: AsRef<[u8]>>(view: &device_info::View<T>) -> Result<Self, Error> {
        Ok(Self {
            argsz: view.argsz(),
            flags: view.flags(),
            num_regions: view.num_regions(),
            num_irqs: view.num_irqs(),
        })
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, view: &mut device_info::View<T>) {
        view.set_argsz(self.argsz);
        view.set_flags(self.flags);
        view.set_num_regions(self.num_regions);
        view.set_num_irqs(self.num_irqs);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; Self::LEN];
        if let Ok(mut view) = device_info::View::new_checked(&mut bytes[..]) {
            self.emit(&mut view);
        }
        bytes
    }
}

// ---------------------------------------------------------------------------------------------
// DEVICE_GET_REGION_INFO and its capability chain
// ---------------------------------------------------------------------------------------------

/// DEVICE_GET_REGION_INFO flag bits.
pub mod region_flags {
    pub const READ: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const MMAP: u32 = 1 << 2;
    pub const CAPS: u32 = 1 << 3;
}

pub mod region_info {
    use super::*;

    pub(super) mod field {
        use std::ops::Range;
        pub const ARGSZ: Range<usize> = 0..4;
        pub const FLAGS: Range<usize> = 4..8;
        pub const INDEX: Range<usize> = 8..12;
        pub const CAP_OFFSET: Range<usize> = 12..16;
        pub const SIZE: Range<usize> = 16..24;
        pub const OFFSET: Range<usize> = 24..32;
        pub const LEN: usize = 32;
    }

    view!(
        /// DEVICE_GET_REGION_INFO request and reply payload (32 bytes, then capabilities).
        RegionInfo,
        field::LEN
    );

    le_fields! {
        argsz, set_argsz: u32 = field::ARGSZ;
        flags, set_flags: u32 = field::FLAGS;
        index, set_index: u32 = field::INDEX;
        cap_offset, set_cap_offset: u32 = field::CAP_OFFSET;
        size, set_size: u64 = field::SIZE;
        offset, set_offset: u64 = field::OFFSET;
    }
}

/// DEVICE_GET_REGION_INFO fixed-part meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfoRepr {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub cap_offset: u32,
    pub size: u64,
    pub offset: u64,
}

impl RegionInfoRepr {
    pub const LEN: usize = region_info::field::LEN;

    pub fn parse<T: AsRef<[u8]>>(view: &region_info::View<T>) -> Result<Self, Error> {
        Ok(Self {
            argsz: view.argsz(),
            flags: view.flags(),
            index: view.index(),
            cap_offset: view.cap_offset(),
            size: view.size(),
            offset: view.offset(),
        })
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, view: &mut region_info::View<T>) {
        view.set_argsz(self.argsz);
        view.set_flags(self.flags);
        view.set_index(self.index);
        view.set_cap_offset(self.cap_offset);
        view.set_size(self.size);
        view.set_offset(self.offset);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; Self::LEN];
        if let Ok(mut view) = region_info::View::new_checked(&mut bytes[..]) {
            self.emit(&mut view);
        }
        bytes
    }
}

/// Region capability ids (`vfio_info_cap_header.id`).
pub mod region_cap_id {
    pub const SPARSE_MMAP: u16 = 1;
    pub const TYPE: u16 = 2;
}

pub mod cap_header {
    use super::*;

    pub(super) mod field {
        use std::ops::Range;
        pub const ID: Range<usize> = 0..2;
        pub const VERSION: Range<usize> = 2..4;
        pub const NEXT: Range<usize> = 4..8;
        pub const LEN: usize = 8;
    }

    view!(
        /// Capability header (8 bytes); `next` is an offset from the start of the region info.
        CapHeader,
        field::LEN
    );

    le_fields! {
        id, set_id: u16 = field::ID;
        version, set_version: u16 = field::VERSION;
        next, set_next: u32 = field::NEXT;
    }
}

pub mod sparse_mmap_cap {
    use super::*;

    pub(super) mod field {
        use std::ops::Range;
        pub const NR_AREAS: Range<usize> = 8..12;
        pub const RESERVED: Range<usize> = 12..16;
        pub const AREAS_START: usize = 16;
        pub const AREA_LEN: usize = 16;
        pub const AREA_OFFSET: Range<usize> = 0..8;
        pub const AREA_SIZE: Range<usize> = 8..16;
    }

    view!(
        /// SPARSE_MMAP capability: header, nr_areas, reserved, then {offset u64, size u64} areas.
        SparseMmapCap,
        field::AREAS_START
    );

    le_fields! {
        nr_areas, set_nr_areas: u32 = field::NR_AREAS;
        reserved, set_reserved: u32 = field::RESERVED;
    }
}

pub mod type_cap {
    use super::*;

    pub(super) mod field {
        use std::ops::Range;
        pub const TYPE: Range<usize> = 8..12;
        pub const SUBTYPE: Range<usize> = 12..16;
        pub const LEN: usize = 16;
    }

    view!(
        /// TYPE capability: header, type u32, subtype u32.
        TypeCap,
        field::LEN
    );

    le_fields! {
        region_type, set_region_type: u32 = field::TYPE;
        subtype, set_subtype: u32 = field::SUBTYPE;
    }
}

/// One mmappable area of a region (offsets relative to the region info's `offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseArea {
    pub offset: u64,
    pub size: u64,
}

/// A capability found in a region info chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionCap {
    SparseMmap(Vec<SparseArea>),
    Type {
        region_type: u32,
        subtype: u32,
    },
    /// A capability this client does not interpret.
    Unknown {
        id: u16,
        version: u16,
    },
}

/// Walks the capability chain of a region info payload (`info` = the whole reply payload,
/// fixed part first). Every offset must point past the fixed part, inside `info`, and strictly
/// after the previous capability, so the walk ends after at most `info.len() / 8` steps.
pub fn parse_region_caps(info: &[u8], cap_offset: u32) -> Result<Vec<RegionCap>, Error> {
    let mut caps = Vec::new();
    let mut offset = cap_offset as usize;
    let mut previous_end = RegionInfoRepr::LEN;
    while offset != 0 {
        if offset < previous_end {
            return Err(malformed(format!(
                "region capability offset {offset} overlaps the region info or an earlier capability (ends at {previous_end})"
            )));
        }
        let cap = info.get(offset..).ok_or_else(|| {
            malformed(format!("region capability offset {offset} lies beyond the {}-byte reply", info.len()))
        })?;
        let header = cap_header::View::new_checked(cap)?;
        let (id, version, next) = (header.id(), header.version(), header.next());
        let (parsed, len) = match id {
            region_cap_id::SPARSE_MMAP => {
                let view = sparse_mmap_cap::View::new_checked(cap)?;
                let nr_areas = view.nr_areas() as usize;
                let areas_bytes = view.trailing();
                let needed = nr_areas
                    .checked_mul(sparse_mmap_cap::field::AREA_LEN)
                    .filter(|&n| n <= areas_bytes.len())
                    .ok_or_else(|| {
                        malformed(format!(
                            "sparse mmap capability claims {nr_areas} areas but only {} bytes follow",
                            areas_bytes.len()
                        ))
                    })?;
                let areas = areas_bytes
                    .get(..needed)
                    .unwrap_or(&[])
                    .chunks_exact(sparse_mmap_cap::field::AREA_LEN)
                    .map(|area| SparseArea {
                        offset: read_u64(area, sparse_mmap_cap::field::AREA_OFFSET),
                        size: read_u64(area, sparse_mmap_cap::field::AREA_SIZE),
                    })
                    .collect();
                (RegionCap::SparseMmap(areas), sparse_mmap_cap::field::AREAS_START + needed)
            }
            region_cap_id::TYPE => {
                let view = type_cap::View::new_checked(cap)?;
                (
                    RegionCap::Type { region_type: view.region_type(), subtype: view.subtype() },
                    type_cap::field::LEN,
                )
            }
            _ => (RegionCap::Unknown { id, version }, cap_header::field::LEN),
        };
        caps.push(parsed);
        previous_end = offset + len;
        offset = next as usize;
    }
    Ok(caps)
}

// ---------------------------------------------------------------------------------------------
// DEVICE_GET_IRQ_INFO / DEVICE_SET_IRQS
// ---------------------------------------------------------------------------------------------

/// IRQ info flag bits.
pub mod irq_info_flags {
    pub const EVENTFD: u32 = 1 << 0;
    pub const MASKABLE: u32 = 1 << 1;
    pub const AUTOMASKED: u32 = 1 << 2;
    pub const NORESIZE: u32 = 1 << 3;
}

/// SET_IRQS flag bits: one data type plus one action.
pub mod irq_set_flags {
    pub const DATA_NONE: u32 = 1 << 0;
    pub const DATA_BOOL: u32 = 1 << 1;
    pub const DATA_EVENTFD: u32 = 1 << 2;
    pub const DATA_MASK: u32 = 0x07;
    pub const ACTION_MASK: u32 = 1 << 3;
    pub const ACTION_UNMASK: u32 = 1 << 4;
    pub const ACTION_TRIGGER: u32 = 1 << 5;
    pub const ACTION_TYPE_MASK: u32 = 0x38;
}

/// PCI IRQ indices.
pub mod irq_index {
    pub const INTX: u32 = 0;
    pub const MSI: u32 = 1;
    pub const MSIX: u32 = 2;
    pub const ERR: u32 = 3;
    pub const REQ: u32 = 4;
}

pub mod irq_info {
    use super::*;

    pub(super) mod field {
        use std::ops::Range;
        pub const ARGSZ: Range<usize> = 0..4;
        pub const FLAGS: Range<usize> = 4..8;
        pub const INDEX: Range<usize> = 8..12;
        pub const COUNT: Range<usize> = 12..16;
        pub const LEN: usize = 16;
    }

    view!(
        /// DEVICE_GET_IRQ_INFO request and reply payload (16 bytes).
        IrqInfo,
        field::LEN
    );

    le_fields! {
        argsz, set_argsz: u32 = field::ARGSZ;
        flags, set_flags: u32 = field::FLAGS;
        index, set_index: u32 = field::INDEX;
        count, set_count: u32 = field::COUNT;
    }
}

/// DEVICE_GET_IRQ_INFO meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfoRepr {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub count: u32,
}

impl IrqInfoRepr {
    pub const LEN: usize = irq_info::field::LEN;

    pub fn parse<T: AsRef<[u8]>>(view: &irq_info::View<T>) -> Result<Self, Error> {
        Ok(Self { argsz: view.argsz(), flags: view.flags(), index: view.index(), count: view.count() })
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, view: &mut irq_info::View<T>) {
        view.set_argsz(self.argsz);
        view.set_flags(self.flags);
        view.set_index(self.index);
        view.set_count(self.count);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; Self::LEN];
        if let Ok(mut view) = irq_info::View::new_checked(&mut bytes[..]) {
            self.emit(&mut view);
        }
        bytes
    }
}

pub mod irq_set {
    use super::*;

    pub(super) mod field {
        use std::ops::Range;
        pub const ARGSZ: Range<usize> = 0..4;
        pub const FLAGS: Range<usize> = 4..8;
        pub const INDEX: Range<usize> = 8..12;
        pub const START: Range<usize> = 12..16;
        pub const COUNT: Range<usize> = 16..20;
        pub const DATA_START: usize = 20;
    }

    view!(
        /// DEVICE_SET_IRQS request payload (20 bytes, then DATA_BOOL bytes).
        IrqSet,
        field::DATA_START
    );

    le_fields! {
        argsz, set_argsz: u32 = field::ARGSZ;
        flags, set_flags: u32 = field::FLAGS;
        index, set_index: u32 = field::INDEX;
        start, set_start: u32 = field::START;
        count, set_count: u32 = field::COUNT;
    }
}

/// DEVICE_SET_IRQS meaning. `argsz` is always 20 + `data.len()` (the request's own size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqSetRepr {
    pub flags: u32,
    pub index: u32,
    pub start: u32,
    pub count: u32,
    /// DATA_BOOL: one byte per vector; empty otherwise.
    pub data: Vec<u8>,
}

impl IrqSetRepr {
    pub const FIXED_LEN: usize = irq_set::field::DATA_START;

    pub fn parse<T: AsRef<[u8]>>(view: &irq_set::View<T>) -> Result<Self, Error> {
        let payload_len = view.buffer.as_ref().len();
        if view.argsz() as usize != payload_len {
            return Err(malformed(format!(
                "SET_IRQS argsz {} differs from the {payload_len}-byte payload",
                view.argsz()
            )));
        }
        Ok(Self {
            flags: view.flags(),
            index: view.index(),
            start: view.start(),
            count: view.count(),
            data: view.trailing().to_vec(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        Self::FIXED_LEN + self.data.len()
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, view: &mut irq_set::View<T>) {
        view.set_argsz(self.buffer_len() as u32);
        view.set_flags(self.flags);
        view.set_index(self.index);
        view.set_start(self.start);
        view.set_count(self.count);
        let start = Self::FIXED_LEN;
        write_bytes(view.buffer.as_mut(), start..start + self.data.len(), &self.data);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; self.buffer_len()];
        if let Ok(mut view) = irq_set::View::new_checked(&mut bytes[..]) {
            self.emit(&mut view);
        }
        bytes
    }
}

// ---------------------------------------------------------------------------------------------
// REGION_READ / REGION_WRITE
// ---------------------------------------------------------------------------------------------

pub mod region_access {
    use super::*;

    pub(super) mod field {
        use std::ops::Range;
        pub const OFFSET: Range<usize> = 0..8;
        pub const REGION: Range<usize> = 8..12;
        pub const COUNT: Range<usize> = 12..16;
        pub const DATA_START: usize = 16;
    }

    view!(
        /// REGION_READ/REGION_WRITE payload: offset, region, count, then data where present.
        RegionAccess,
        field::DATA_START
    );

    le_fields! {
        offset, set_offset: u64 = field::OFFSET;
        region, set_region: u32 = field::REGION;
        count, set_count: u32 = field::COUNT;
    }
}

/// REGION_READ/REGION_WRITE fixed-part meaning; the data (if any) follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionAccessRepr {
    pub offset: u64,
    pub region: u32,
    pub count: u32,
}

impl RegionAccessRepr {
    pub const LEN: usize = region_access::field::DATA_START;

    pub fn parse<T: AsRef<[u8]>>(view: &region_access::View<T>) -> Result<Self, Error> {
        Ok(Self { offset: view.offset(), region: view.region(), count: view.count() })
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, view: &mut region_access::View<T>) {
        view.set_offset(self.offset);
        view.set_region(self.region);
        view.set_count(self.count);
    }

    /// The fixed part alone, without allocating.
    pub fn to_array(&self) -> [u8; Self::LEN] {
        let mut bytes = [0u8; Self::LEN];
        if let Ok(mut view) = region_access::View::new_checked(&mut bytes[..]) {
            self.emit(&mut view);
        }
        bytes
    }

    /// The fixed part followed by `data`.
    pub fn to_bytes_with(&self, data: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; Self::LEN + data.len()];
        if let Ok(mut view) = region_access::View::new_checked(&mut bytes[..]) {
            self.emit(&mut view);
        }
        write_bytes(&mut bytes, Self::LEN..Self::LEN + data.len(), data);
        bytes
    }
}

// ---------------------------------------------------------------------------------------------
// DMA_READ / DMA_WRITE (server to client)
// ---------------------------------------------------------------------------------------------

pub mod dma_access {
    use super::*;

    pub(super) mod field {
        use std::ops::Range;
        pub const ADDRESS: Range<usize> = 0..8;
        pub const COUNT: Range<usize> = 8..16;
        pub const DATA_START: usize = 16;
    }

    view!(
        /// DMA_READ/DMA_WRITE payload: address u64, count u64, then data where present
        /// (spec and libvfio-user layout; QEMU's u32 count with data at +12 is not followed).
        DmaAccess,
        field::DATA_START
    );

    le_fields! {
        address, set_address: u64 = field::ADDRESS;
        count, set_count: u64 = field::COUNT;
    }
}

/// DMA_READ/DMA_WRITE fixed-part meaning; the data (if any) follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaAccessRepr {
    pub address: u64,
    pub count: u64,
}

impl DmaAccessRepr {
    pub const LEN: usize = dma_access::field::DATA_START;

    pub fn parse<T: AsRef<[u8]>>(view: &dma_access::View<T>) -> Result<Self, Error> {
        Ok(Self { address: view.address(), count: view.count() })
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, view: &mut dma_access::View<T>) {
        view.set_address(self.address);
        view.set_count(self.count);
    }

    /// The fixed part alone, without allocating.
    pub fn to_array(&self) -> [u8; Self::LEN] {
        let mut bytes = [0u8; Self::LEN];
        if let Ok(mut view) = dma_access::View::new_checked(&mut bytes[..]) {
            self.emit(&mut view);
        }
        bytes
    }

    /// The fixed part followed by `data`.
    pub fn to_bytes_with(&self, data: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; Self::LEN + data.len()];
        if let Ok(mut view) = dma_access::View::new_checked(&mut bytes[..]) {
            self.emit(&mut view);
        }
        write_bytes(&mut bytes, Self::LEN..Self::LEN + data.len(), data);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A REGION_READ command: id 0x0102, command 9, size 32, flags 0, error 0;
    // offset 0x10, region 7, count 4.
    static REGION_READ_BYTES: [u8; 32] = [
        0x02, 0x01, 0x09, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00,
    ];

    fn region_read_header() -> HeaderRepr {
        HeaderRepr {
            id: 0x0102,
            command: Command::RegionRead,
            size: 32,
            message_type: MessageType::Command,
            no_reply: false,
            error: None,
        }
    }

    #[test]
    fn header_deconstruct() {
        let header = Header::new_checked(&REGION_READ_BYTES[..]).unwrap();
        assert_eq!(header.id(), 0x0102);
        assert_eq!(header.command(), 9);
        assert_eq!(header.size(), 32);
        assert_eq!(header.flags(), 0);
        assert_eq!(header.error(), 0);
    }

    #[test]
    fn header_construct() {
        let mut bytes = [0u8; 16];
        let mut header = Header::new_checked(&mut bytes[..]).unwrap();
        header.set_id(0x0102);
        header.set_command(9);
        header.set_size(32);
        header.set_flags(0);
        header.set_error(0);
        assert_eq!(&bytes[..], &REGION_READ_BYTES[..16]);
    }

    #[test]
    fn header_parse_and_emit_round_trip() {
        let header = Header::new_checked(&REGION_READ_BYTES[..]).unwrap();
        assert_eq!(HeaderRepr::parse(&header).unwrap(), region_read_header());
        let payload = RegionAccessRepr { offset: 0x10, region: 7, count: 4 }.to_bytes_with(&[]);
        let message =
            encode_message(0x0102, Command::RegionRead, MessageType::Command, false, None, &payload).unwrap();
        assert_eq!(&message[..], &REGION_READ_BYTES[..]);
    }

    #[test]
    fn header_rejects_bad_type_and_short_size() {
        let mut bytes = REGION_READ_BYTES;
        bytes[8] = 2;
        let header = Header::new_checked(&bytes[..]).unwrap();
        assert!(matches!(HeaderRepr::parse(&header), Err(Error::Malformed(_))));
        let mut bytes = REGION_READ_BYTES;
        bytes[4] = 15;
        let header = Header::new_checked(&bytes[..]).unwrap();
        assert!(matches!(HeaderRepr::parse(&header), Err(Error::Malformed(_))));
        assert!(Header::new_checked(&REGION_READ_BYTES[..15]).is_err());
    }

    #[test]
    fn error_reply_header() {
        let bytes =
            encode_message(5, Command::RegionWrite, MessageType::Reply, false, Some(22), &[]).unwrap();
        assert_eq!(
            bytes,
            [0x05, 0x00, 0x0a, 0x00, 0x10, 0x00, 0x00, 0x00, 0x21, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x00]
        );
        let repr = HeaderRepr::parse(&Header::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(repr.error, Some(22));
        assert_eq!(repr.message_type, MessageType::Reply);
    }

    #[test]
    fn region_access_payload_round_trip() {
        let view = region_access::View::new_checked(&REGION_READ_BYTES[16..]).unwrap();
        let repr = RegionAccessRepr::parse(&view).unwrap();
        assert_eq!(repr, RegionAccessRepr { offset: 0x10, region: 7, count: 4 });
        assert_eq!(repr.to_bytes_with(&[]), &REGION_READ_BYTES[16..]);
    }

    /// The VERSION request shown in docs/vfio-user-client.md.
    #[test]
    fn version_request_matches_the_documented_bytes() {
        let json = r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"twin_socket":{"supported":true}}}"#;
        let payload = VersionRepr { major: 0, minor: 2, json: Some(json.to_owned()) }.to_bytes();
        let message =
            encode_message(0, Command::Version, MessageType::Command, false, None, &payload).unwrap();
        assert_eq!(message.len(), 0x75);
        assert_eq!(
            &message[..20],
            &[0x00, 0x00, 0x01, 0x00, 0x75, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x02, 0x00]
        );
        assert_eq!(&message[20..116], json.as_bytes());
        assert_eq!(message[116], 0);
    }

    /// The posted REGION_WRITE shown in docs/vfio-user-client.md.
    #[test]
    fn posted_region_write_matches_the_documented_bytes() {
        let payload = RegionAccessRepr { offset: 0x1000, region: 0, count: 4 }.to_bytes_with(&[1, 0, 0, 0]);
        let message =
            encode_message(6, Command::RegionWrite, MessageType::Command, true, None, &payload).unwrap();
        assert_eq!(
            message,
            [
                0x06, 0x00, 0x0a, 0x00, 0x24, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
                0x00, 0x00, 0x01, 0x00, 0x00, 0x00
            ]
        );
    }

    #[test]
    fn version_requires_nul() {
        let mut payload = vec![0, 0, 2, 0];
        payload.extend_from_slice(b"{}");
        let view = version::View::new_checked(&payload[..]).unwrap();
        assert!(matches!(VersionRepr::parse(&view), Err(Error::Malformed(_))));
        payload.push(0);
        let view = version::View::new_checked(&payload[..]).unwrap();
        let repr = VersionRepr::parse(&view).unwrap();
        assert_eq!(repr.json.as_deref(), Some("{}"));
        assert_eq!(repr.minor, 2);
        assert_eq!(repr.to_bytes(), payload);
    }

    fn region_info_with_caps(cap_offset: u32, caps: &[u8]) -> Vec<u8> {
        let mut bytes = RegionInfoRepr {
            argsz: (32 + caps.len()) as u32,
            flags: region_flags::CAPS,
            index: 0,
            cap_offset,
            size: 0x1000,
            offset: 0,
        }
        .to_bytes();
        bytes.extend_from_slice(caps);
        bytes
    }

    fn sparse_cap(next: u32, areas: &[(u64, u64)], claimed: u32) -> Vec<u8> {
        let mut cap = Vec::new();
        cap.extend_from_slice(&region_cap_id::SPARSE_MMAP.to_le_bytes());
        cap.extend_from_slice(&1u16.to_le_bytes());
        cap.extend_from_slice(&next.to_le_bytes());
        cap.extend_from_slice(&claimed.to_le_bytes());
        cap.extend_from_slice(&0u32.to_le_bytes());
        for (offset, size) in areas {
            cap.extend_from_slice(&offset.to_le_bytes());
            cap.extend_from_slice(&size.to_le_bytes());
        }
        cap
    }

    #[test]
    fn region_caps_chain_parses_sparse_and_type() {
        let mut caps = sparse_cap(32 + 48, &[(0, 0x800), (0x800, 0x800)], 2);
        caps.extend_from_slice(&region_cap_id::TYPE.to_le_bytes());
        caps.extend_from_slice(&1u16.to_le_bytes());
        caps.extend_from_slice(&0u32.to_le_bytes());
        caps.extend_from_slice(&3u32.to_le_bytes());
        caps.extend_from_slice(&4u32.to_le_bytes());
        let info = region_info_with_caps(32, &caps);
        let parsed = parse_region_caps(&info, 32).unwrap();
        assert_eq!(
            parsed,
            vec![
                RegionCap::SparseMmap(vec![
                    SparseArea { offset: 0, size: 0x800 },
                    SparseArea { offset: 0x800, size: 0x800 }
                ]),
                RegionCap::Type { region_type: 3, subtype: 4 }
            ]
        );
    }

    #[test]
    fn region_caps_reject_offset_inside_fixed_part() {
        let info = region_info_with_caps(8, &sparse_cap(0, &[], 0));
        assert!(matches!(parse_region_caps(&info, 8), Err(Error::Malformed(_))));
    }

    #[test]
    fn region_caps_reject_offset_past_end() {
        let info = region_info_with_caps(200, &sparse_cap(0, &[], 0));
        assert!(matches!(parse_region_caps(&info, 200), Err(Error::Malformed(_))));
    }

    #[test]
    fn region_caps_reject_loop() {
        let info = region_info_with_caps(32, &sparse_cap(32, &[], 0));
        assert!(matches!(parse_region_caps(&info, 32), Err(Error::Malformed(_))));
    }

    #[test]
    fn region_caps_reject_area_count_beyond_payload() {
        let info = region_info_with_caps(32, &sparse_cap(0, &[(0, 1)], u32::MAX));
        assert!(matches!(parse_region_caps(&info, 32), Err(Error::Malformed(_))));
    }

    #[test]
    fn irq_set_argsz_is_request_size() {
        let repr = IrqSetRepr {
            flags: irq_set_flags::DATA_BOOL | irq_set_flags::ACTION_TRIGGER,
            index: irq_index::MSIX,
            start: 1,
            count: 2,
            data: vec![1, 0],
        };
        let bytes = repr.to_bytes();
        assert_eq!(bytes.len(), 22);
        assert_eq!(&bytes[0..4], &22u32.to_le_bytes());
        let view = irq_set::View::new_checked(&bytes[..]).unwrap();
        assert_eq!(IrqSetRepr::parse(&view).unwrap(), repr);
    }

    #[test]
    fn dma_access_layout_has_u64_count_and_data_at_16() {
        let bytes = DmaAccessRepr { address: 0x1000, count: 3 }.to_bytes_with(&[0xaa, 0xbb, 0xcc]);
        assert_eq!(bytes, [0x00, 0x10, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0xbb, 0xcc]);
    }

    #[test]
    fn dma_map_layout() {
        let bytes = DmaMapRepr {
            flags: dma_map_flags::READ | dma_map_flags::WRITE,
            offset: 0,
            address: 0x8000_0000,
            size: 0x10000,
        }
        .to_bytes();
        assert_eq!(&bytes[0..4], &32u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &3u32.to_le_bytes());
        assert_eq!(&bytes[16..24], &0x8000_0000u64.to_le_bytes());
        assert_eq!(&bytes[24..32], &0x10000u64.to_le_bytes());
    }
}
