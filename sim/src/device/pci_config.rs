//! An emulated PCI configuration space for device models: a [`ConfigImage`] plus per-byte
//! write masks (read-only fields stay put), write-1-to-clear masks (status bits) and BAR
//! emulation (sizing by all-ones writes, via [`bar_value_after_write`]).
//!
//! The layout itself (header fields, capabilities and their offsets) is built with
//! `tlp::config_space::ConfigImage`; this type only adds the write semantics.

use tlp::config_space::{BarKind, ConfigImage, ConfigView, bar_value_after_write, header};

/// One implemented BAR: what it decodes and how large it is (a power of two, at least 16 bytes
/// for memory BARs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarSpec {
    pub kind: BarKind,
    pub prefetchable: bool,
    pub size: u64,
}

/// A config space with write semantics.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    image: ConfigImage,
    /// The image as built, restored by [`ConfigSpace::reset`].
    initial: Vec<u8>,
    /// Bits software may write (1 = writable).
    write_mask: Vec<u8>,
    /// Bits software clears by writing 1.
    w1c_mask: Vec<u8>,
    /// BAR slots 0..=5; the upper half of a 64-bit BAR is `None` and handled with its low slot.
    bars: [Option<BarSpec>; 6],
}

impl ConfigSpace {
    /// Wraps a built image. Every byte starts read-only; BAR registers are emulated from
    /// `bars` (slot → spec), whose register values in `image` must already be set.
    pub fn new(image: ConfigImage, bars: [Option<BarSpec>; 6]) -> Result<Self, String> {
        for (slot, bar) in bars.iter().enumerate() {
            if let Some(bar) = bar {
                if !bar.size.is_power_of_two() || (bar.kind != BarKind::Io && bar.size < 16) {
                    return Err(format!("BAR{slot} size {:#x} is not a power of two >= 16", bar.size));
                }
                if bar.kind == BarKind::Mem64
                    && (slot >= 5 || bars.get(slot + 1).copied().flatten().is_some())
                {
                    return Err(format!("64-bit BAR{slot} needs slot {} free", slot + 1));
                }
                if bar.kind != BarKind::Mem64 && bar.size > u64::from(u32::MAX) {
                    return Err(format!("32-bit BAR{slot} cannot be {:#x} bytes", bar.size));
                }
            }
        }
        let len = image.bytes().len();
        let initial = image.bytes().to_vec();
        Ok(Self { image, initial, write_mask: vec![0; len], w1c_mask: vec![0; len], bars })
    }

    /// Makes the bits of `mask` (little-endian, `mask.len()` bytes from `offset`) writable.
    pub fn set_writable(&mut self, offset: u16, mask: &[u8]) {
        merge_mask(&mut self.write_mask, offset, mask);
    }

    /// Makes the bits of `mask` write-1-to-clear.
    pub fn set_write_one_to_clear(&mut self, offset: u16, mask: &[u8]) {
        merge_mask(&mut self.w1c_mask, offset, mask);
    }

    pub fn len(&self) -> usize {
        self.image.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.image.bytes().is_empty()
    }

    pub fn view(&self) -> ConfigView<'_> {
        self.image.view()
    }

    pub fn bytes(&self) -> &[u8] {
        self.image.bytes()
    }

    /// Direct access for the device itself (hardware-owned bits such as Interrupt Status or
    /// MSI pending bits). Software writes go through [`ConfigSpace::write`].
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.image.bytes_mut()
    }

    /// Back to the power-on image.
    pub fn reset(&mut self) {
        let bytes = self.image.bytes_mut();
        if bytes.len() == self.initial.len() {
            bytes.copy_from_slice(&self.initial);
        }
    }

    /// Copies `data.len()` bytes from `offset`; `false` if the range is outside the image.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> bool {
        match range(offset, data.len(), self.len()).and_then(|r| self.image.bytes().get(r)) {
            Some(src) => {
                data.copy_from_slice(src);
                true
            }
            None => false,
        }
    }

    /// Applies a software write; `false` if the range is outside the image. Read-only bits keep
    /// their value, W1C bits clear where 1 is written, BARs take `bar_value_after_write`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        let Some(span) = range(offset, data.len(), self.len()) else {
            return false;
        };
        let bar_start = usize::from(header::BAR0);
        let bar_end = usize::from(header::BAR5) + 4;
        let mut touched_bar_slots = [false; 6];
        for (i, &value) in data.iter().enumerate() {
            let at = span.start + i;
            if (bar_start..bar_end).contains(&at) {
                // Collected raw, then normalised per BAR below.
                let slot = (at - bar_start) / 4;
                if let (Some(flag), Some(byte)) =
                    (touched_bar_slots.get_mut(slot), self.image.bytes_mut().get_mut(at))
                {
                    *flag = true;
                    *byte = value;
                }
                continue;
            }
            let writable = self.write_mask.get(at).copied().unwrap_or(0);
            let w1c = self.w1c_mask.get(at).copied().unwrap_or(0);
            if let Some(byte) = self.image.bytes_mut().get_mut(at) {
                let kept = *byte & !writable & !(w1c & value);
                *byte = kept | (value & writable);
            }
        }
        for slot in 0..6u8 {
            let low_touched = touched_bar_slots.get(usize::from(slot)).copied().unwrap_or(false);
            let high_touched = touched_bar_slots.get(usize::from(slot) + 1).copied().unwrap_or(false);
            match self.bars.get(usize::from(slot)).copied().flatten() {
                Some(bar) if bar.kind == BarKind::Mem64 => {
                    if low_touched || high_touched {
                        let low = self.dword(header::bar(slot));
                        let high = self.dword(header::bar(slot + 1));
                        let written = (u64::from(high) << 32) | u64::from(low);
                        let value = bar_value_after_write(bar.kind, bar.prefetchable, bar.size, written);
                        self.set_dword(header::bar(slot), value as u32);
                        self.set_dword(header::bar(slot + 1), (value >> 32) as u32);
                    }
                }
                Some(bar) => {
                    if low_touched {
                        let written = u64::from(self.dword(header::bar(slot)));
                        let value = bar_value_after_write(bar.kind, bar.prefetchable, bar.size, written);
                        self.set_dword(header::bar(slot), value as u32);
                    }
                }
                None => {
                    // The upper half of a 64-bit BAR was handled with its low slot; an
                    // unimplemented slot reads 0 whatever is written.
                    let upper_of_64 = slot > 0
                        && matches!(
                            self.bars.get(usize::from(slot) - 1).copied().flatten(),
                            Some(BarSpec { kind: BarKind::Mem64, .. })
                        );
                    if low_touched && !upper_of_64 {
                        self.set_dword(header::bar(slot), 0);
                    }
                }
            }
        }
        true
    }

    /// The decoded BARs as currently programmed.
    pub fn bar_spec(&self, slot: u8) -> Option<BarSpec> {
        self.bars.get(usize::from(slot)).copied().flatten()
    }

    fn dword(&self, offset: u16) -> u32 {
        self.image.view().read_u32(offset).unwrap_or(0)
    }

    fn set_dword(&mut self, offset: u16, value: u32) {
        // Offsets come from `header::bar`, always inside the 64-byte header.
        let _ = self.image.set_u32(offset, value);
    }
}

fn merge_mask(target: &mut [u8], offset: u16, mask: &[u8]) {
    let start = usize::from(offset);
    if let Some(dst) = target.get_mut(start..start + mask.len()) {
        for (d, m) in dst.iter_mut().zip(mask) {
            *d |= m;
        }
    }
}

fn range(offset: u64, len: usize, limit: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(len)?;
    (end <= limit).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tlp::config_space::{Bar, PCI_CONFIG_LEN};

    fn space() -> ConfigSpace {
        let mut image = ConfigImage::new(PCI_CONFIG_LEN).unwrap();
        image.set_bar(&Bar { slot: 0, kind: BarKind::Mem32, prefetchable: false, address: 0 }).unwrap();
        image.set_bar(&Bar { slot: 2, kind: BarKind::Mem64, prefetchable: true, address: 0 }).unwrap();
        let bars = [
            Some(BarSpec { kind: BarKind::Mem32, prefetchable: false, size: 0x1000 }),
            None,
            Some(BarSpec { kind: BarKind::Mem64, prefetchable: true, size: 0x1_0000 }),
            None,
            None,
            None,
        ];
        let mut space = ConfigSpace::new(image, bars).unwrap();
        space.set_writable(header::COMMAND, &[0x06, 0x04]);
        space.set_write_one_to_clear(header::STATUS, &[0x00, 0xf9]);
        space
    }

    fn read_u32(space: &ConfigSpace, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        assert!(space.read(offset, &mut b));
        u32::from_le_bytes(b)
    }

    #[test]
    fn bar_sizing_reads_back_size_mask() {
        let mut s = space();
        assert!(s.write(0x10, &u32::MAX.to_le_bytes()));
        assert_eq!(read_u32(&s, 0x10), 0xffff_f000);
        assert!(s.write(0x18, &u32::MAX.to_le_bytes()));
        assert!(s.write(0x1c, &u32::MAX.to_le_bytes()));
        assert_eq!(read_u32(&s, 0x18), 0xffff_000c);
        assert_eq!(read_u32(&s, 0x1c), 0xffff_ffff);
        // Unimplemented slot reads 0.
        assert!(s.write(0x14, &u32::MAX.to_le_bytes()));
        assert_eq!(read_u32(&s, 0x14), 0);
        assert!(s.write(0x10, &0xfebf_0000u32.to_le_bytes()));
        assert_eq!(read_u32(&s, 0x10), 0xfebf_0000);
    }

    #[test]
    fn read_only_and_w1c_bits() {
        let mut s = space();
        s.bytes_mut()[7] = 0x20; // Received Master Abort... set by hardware
        assert!(s.write(4, &[0xff, 0xff, 0xff, 0xff]));
        assert_eq!(read_u32(&s, 4) & 0xffff, 0x0406);
        assert_eq!(s.bytes()[7], 0x00);
        assert!(s.write(0, &[0x12, 0x34]));
        assert_eq!(read_u32(&s, 0) & 0xffff, 0);
        assert!(!s.write(0xfe, &[0, 0, 0, 0]));
        assert!(!s.read(u64::MAX, &mut [0u8; 2]));
        s.reset();
        assert_eq!(read_u32(&s, 4), 0);
    }
}
