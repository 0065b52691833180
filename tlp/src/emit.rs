//! [`Tlp`] → bytes, through the [`wire::Packet`](crate::wire::Packet) setters.
//!
//! Emit writes exactly what the `Tlp` holds: the raw Length field, the payload as given, TD set
//! exactly when a digest is present, Fmt's data bit from [`Tlp::has_data`]. Values wider than
//! their field are cut to the field width (a TC of 9 is written as 1); prefix DWs get Fmt 100b
//! forced so that the header is where a receiver looks for it. [`Tlp::validate`] reports all of
//! these as rule violations, so validate before emitting anything built by hand. For every `Tlp`
//! whose fields fit, `Tlp::parse(&tlp.to_bytes()) == Ok(tlp)`.

use crate::error::TlpError;
use crate::model::{Body, Tlp};
use crate::wire::{DIGEST_LEN, DW_LEN, Packet};

/// Prefix DWs always carry Fmt = 100b in bits 31:29.
const PREFIX_FMT_MASK: u32 = 0xe000_0000;
const PREFIX_FMT_BITS: u32 = 0x8000_0000;

impl Tlp {
    /// Bytes [`Tlp::emit`] writes: prefixes + header + payload + digest.
    pub fn buffer_len(&self) -> usize {
        self.prefixes.len() * DW_LEN
            + self.header_len()
            + self.payload.len()
            + if self.digest.is_some() { DIGEST_LEN } else { 0 }
    }

    /// Writes the TLP to the start of `buf` and returns the number of bytes written.
    /// Fails only if `buf` is shorter than [`Tlp::buffer_len`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, TlpError> {
        let len = self.buffer_len();
        match buf.get_mut(..len) {
            Some(out) => {
                self.write(out);
                Ok(len)
            }
            None => Err(TlpError::BufferTooSmall { needed: len, got: buf.len() }),
        }
    }

    /// The emitted bytes in a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.buffer_len()];
        self.write(&mut out);
        out
    }

    /// Writes into `out`, which is exactly `buffer_len()` bytes long.
    fn write(&self, out: &mut [u8]) {
        let header_offset = self.prefixes.len() * DW_LEN;
        for (dw, prefix) in out.chunks_exact_mut(DW_LEN).zip(&self.prefixes) {
            let value = (prefix.0 & !PREFIX_FMT_MASK) | PREFIX_FMT_BITS;
            dw.copy_from_slice(&value.to_be_bytes());
        }
        let header_end = header_offset + self.header_len();
        out[header_offset..header_end].fill(0);

        let mut packet = Packet::new_unchecked(&mut *out);
        packet.set_fmt_type(self.fmt(), self.type_field());
        packet.set_tc(self.tc);
        packet.set_attr(self.attr);
        packet.set_ln(self.ln);
        packet.set_th(self.th);
        packet.set_td(self.digest.is_some());
        packet.set_ep(self.ep);
        packet.set_at(self.at);
        packet.set_length(self.length);
        if let Some(tag) = self.tag() {
            packet.set_tag(tag);
        }
        packet.set_requester_id(self.requester());
        match &self.body {
            Body::Memory(m) => {
                packet.set_first_be(m.first_be);
                packet.set_last_be(m.last_be);
                packet.set_address(m.address);
                packet.set_ph(m.ph);
            }
            Body::Atomic(a) => {
                packet.set_first_be(a.first_be);
                packet.set_last_be(a.last_be);
                packet.set_address(a.address);
                packet.set_ph(a.ph);
            }
            Body::Io(io) => {
                packet.set_first_be(io.first_be);
                packet.set_last_be(io.last_be);
                packet.set_address(u64::from(io.address));
            }
            Body::Config(c) => {
                packet.set_first_be(c.first_be);
                packet.set_last_be(c.last_be);
                packet.set_cfg_target(c.target);
                packet.set_cfg_register(c.register);
            }
            Body::Completion(c) => {
                packet.set_completer_id(c.completer);
                packet.set_cpl_status(c.status);
                packet.set_bcm(c.bcm);
                packet.set_byte_count(c.byte_count);
                packet.set_lower_address(c.lower_address);
            }
            Body::Message(m) => {
                packet.set_message_code(m.code);
                packet.message_fields_mut().copy_from_slice(&m.fields);
            }
        }
        // The payload goes right after the header whatever Length says, so that the bytes are
        // exactly what the model holds (validate reports a mismatch).
        let payload_end = header_end + self.payload.len();
        out[header_end..payload_end].copy_from_slice(&self.payload);
        if let Some(digest) = self.digest {
            out[payload_end..payload_end + DIGEST_LEN].copy_from_slice(&digest.to_be_bytes());
        }
    }
}
