//! vfio-user message decoding in both directions: the 16-byte header, then the payload of the
//! command it names, read as the client reads it (replies from the server, DMA_READ/DMA_WRITE
//! commands from the server) and as a server reads the client's commands; the VERSION
//! capabilities JSON; the region-info capability chain.
//!
//! Properties: a header that parses emits back to an equal header; every payload `Repr` that
//! parses emits back to an equal `Repr`; an accepted capabilities JSON has values within the
//! documented bounds (`max_data_xfer_size` in 1..=64 MiB, `max_msg_fds` ≤ 16, `pgsizes` ≠ 0); a
//! capability chain walk returns at most one capability per 8 bytes of reply; decoding
//! allocates at most a small multiple of the message's size (the chain's Vec of 32-byte
//! entries, one per 8 input bytes, with Vec growth).

use transports::vfio_user::caps::{
    MAX_DATA_XFER_SIZE_LIMIT, MAX_MSG_FDS_LIMIT, TwinSocket, parse_server_capabilities,
};
use transports::vfio_user::wire::{
    self, Command, DeviceInfoRepr, DmaAccessRepr, DmaMapRepr, DmaUnmapRepr, HEADER_LEN, Header, HeaderRepr,
    IrqInfoRepr, IrqSetRepr, RegionAccessRepr, RegionInfoRepr, VersionRepr,
};

use crate::alloc_watch;

/// Parses `bytes` with `view`/`parse`, then re-emits and re-parses: equal `Repr`s.
macro_rules! round_trip {
    ($module:ident, $repr:ty, $bytes:expr, $len:expr) => {{
        match wire::$module::View::new_checked($bytes).map(|v| <$repr>::parse(&v)) {
            Ok(Ok(repr)) => {
                let mut again = vec![0u8; $len(&repr)];
                let mut view = wire::$module::View::new_checked(&mut again[..]).unwrap();
                repr.emit(&mut view);
                let back = <$repr>::parse(&wire::$module::View::new_checked(&again[..]).unwrap()).unwrap();
                assert_eq!(back, repr);
                Some(repr)
            }
            _ => None,
        }
    }};
}

fn fixed<T>(len: usize) -> impl Fn(&T) -> usize {
    move |_| len
}

pub fn check(data: &[u8]) {
    let ((), largest) = alloc_watch::largest_during(|| decode(data));
    // Payload copies (VERSION JSON, SET_IRQS data) are at most the input's size; the
    // capability chain's Vec holds at most one 32-byte entry per 8 input bytes, doubled by growth.
    assert!(largest <= 16 * data.len() + 1024, "decoding {} bytes allocated {largest}", data.len());
}

fn decode(data: &[u8]) {
    let Some(header_bytes) = data.get(..HEADER_LEN) else {
        assert!(Header::new_checked(data).is_err(), "a {}-byte header was accepted", data.len());
        return;
    };
    let Ok(header) = HeaderRepr::parse(&Header::new_checked(header_bytes).unwrap()) else {
        return;
    };
    let mut again = [0u8; HEADER_LEN];
    header.emit(&mut Header::new_checked(&mut again[..]).unwrap());
    assert_eq!(HeaderRepr::parse(&Header::new_checked(&again[..]).unwrap()).unwrap(), header);
    assert_eq!(Command::from(u16::from(header.command)), header.command);
    let Some(payload) = data.get(HEADER_LEN..) else { return };
    match header.command {
        Command::Version => {
            if let Some(version) =
                round_trip!(version, VersionRepr, payload, |r: &VersionRepr| r.buffer_len())
            {
                let fds = usize::from(header.id % 3);
                for asked_twin in [false, true] {
                    if let Ok(caps) = parse_server_capabilities(version.json.as_deref(), asked_twin, fds) {
                        assert!((1..=MAX_DATA_XFER_SIZE_LIMIT).contains(&caps.max_data_xfer_size));
                        assert!(caps.max_msg_fds <= MAX_MSG_FDS_LIMIT);
                        assert_ne!(caps.pgsizes, 0);
                        if let TwinSocket::Granted { fd_index } = caps.twin_socket {
                            assert!(asked_twin && (fd_index as usize) < fds);
                        }
                    }
                }
            }
        }
        Command::DmaMap => {
            round_trip!(dma_map, DmaMapRepr, payload, fixed(DmaMapRepr::LEN));
        }
        Command::DmaUnmap => {
            round_trip!(dma_unmap, DmaUnmapRepr, payload, fixed(DmaUnmapRepr::LEN));
        }
        Command::DeviceGetInfo => {
            round_trip!(device_info, DeviceInfoRepr, payload, fixed(DeviceInfoRepr::LEN));
        }
        Command::DeviceGetRegionInfo => {
            if let Some(info) = round_trip!(region_info, RegionInfoRepr, payload, fixed(RegionInfoRepr::LEN))
                && let Ok(caps) = wire::parse_region_caps(payload, info.cap_offset)
            {
                assert!(caps.len() <= payload.len() / 8, "{} caps in {} bytes", caps.len(), payload.len());
            }
        }
        Command::DeviceGetIrqInfo => {
            round_trip!(irq_info, IrqInfoRepr, payload, fixed(IrqInfoRepr::LEN));
        }
        Command::DeviceSetIrqs => {
            if let Some(set) = round_trip!(irq_set, IrqSetRepr, payload, |r: &IrqSetRepr| r.buffer_len()) {
                assert_eq!(set.buffer_len(), payload.len(), "SET_IRQS argsz is the payload size");
            }
        }
        Command::RegionRead | Command::RegionWrite => {
            round_trip!(region_access, RegionAccessRepr, payload, fixed(RegionAccessRepr::LEN));
        }
        Command::DmaRead | Command::DmaWrite => {
            round_trip!(dma_access, DmaAccessRepr, payload, fixed(DmaAccessRepr::LEN));
        }
        _ => {}
    }
}
