//! Decoding arbitrary bytes never panics, and what is emitted parses back to itself.

use proptest::prelude::*;
use transports::vfio_user::caps::parse_server_capabilities;
use transports::vfio_user::wire::{self, Command, Header, HeaderRepr, MessageType};

proptest! {
    #[test]
    fn every_decoder_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256), offset in any::<u32>()) {
        if let Ok(header) = Header::new_checked(&bytes[..]) {
            let _ = HeaderRepr::parse(&header);
        }
        let _ = wire::parse_region_caps(&bytes, offset);
        let _ = wire::parse_region_caps(&bytes, offset % 256);
        if let Ok(view) = wire::version::View::new_checked(&bytes[..]) {
            let _ = wire::VersionRepr::parse(&view);
        }
        if let Ok(view) = wire::region_info::View::new_checked(&bytes[..]) {
            let _ = wire::RegionInfoRepr::parse(&view);
        }
        if let Ok(view) = wire::irq_set::View::new_checked(&bytes[..]) {
            let _ = wire::IrqSetRepr::parse(&view);
        }
        if let Ok(view) = wire::dma_access::View::new_checked(&bytes[..]) {
            let _ = wire::DmaAccessRepr::parse(&view);
        }
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = parse_server_capabilities(Some(text), true, 1);
        }
    }

    #[test]
    fn header_round_trips(id in any::<u16>(), command in 1u16..=18, reply in any::<bool>(), no_reply in any::<bool>(),
                          error in proptest::option::of(any::<u32>()), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let message_type = if reply { MessageType::Reply } else { MessageType::Command };
        let bytes = wire::encode_message(id, Command::from(command), message_type, no_reply, error, &payload).unwrap();
        let parsed = HeaderRepr::parse(&Header::new_checked(&bytes[..]).unwrap()).unwrap();
        prop_assert_eq!(parsed.id, id);
        prop_assert_eq!(u16::from(parsed.command), command);
        prop_assert_eq!(parsed.message_type, message_type);
        prop_assert_eq!(parsed.no_reply, no_reply);
        prop_assert_eq!(parsed.error, error);
        prop_assert_eq!(parsed.payload_len(), payload.len());
        prop_assert_eq!(&bytes[16..], &payload[..]);
    }
}
