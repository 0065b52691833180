//! Host memory of the reference root complex: sparse 4 KiB pages below a configured size.

use std::collections::BTreeMap;

const PAGE: u64 = 4096;

/// Sparse host memory covering bus addresses `0..size`. Pages are allocated on first write;
/// unwritten bytes read as 0. `size` bounds both the address range and the memory used.
#[derive(Clone, Debug)]
pub struct HostMemory {
    size: u64,
    pages: BTreeMap<u64, Box<[u8; PAGE as usize]>>,
}

impl HostMemory {
    pub fn new(size: u64) -> Self {
        HostMemory { size, pages: BTreeMap::new() }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether `len` bytes at `address` lie inside host memory.
    pub fn contains(&self, address: u64, len: u64) -> bool {
        address.checked_add(len).is_some_and(|end| end <= self.size)
    }

    /// Reads `buf.len()` bytes at `address`; `false` (and nothing read) when out of range.
    pub fn read(&self, address: u64, buf: &mut [u8]) -> bool {
        if !self.contains(address, buf.len() as u64) {
            return false;
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = address + done as u64;
            let (page, offset) = (at / PAGE, (at % PAGE) as usize);
            let n = (PAGE as usize - offset).min(buf.len() - done);
            let dst = &mut buf[done..done + n];
            match self.pages.get(&page) {
                Some(p) => dst.copy_from_slice(&p[offset..offset + n]),
                None => dst.fill(0),
            }
            done += n;
        }
        true
    }

    /// Writes `data` at `address`; `false` (and nothing written) when out of range.
    pub fn write(&mut self, address: u64, data: &[u8]) -> bool {
        if !self.contains(address, data.len() as u64) {
            return false;
        }
        let mut done = 0usize;
        while done < data.len() {
            let at = address + done as u64;
            let (page, offset) = (at / PAGE, (at % PAGE) as usize);
            let n = (PAGE as usize - offset).min(data.len() - done);
            let p = self.pages.entry(page).or_insert_with(|| Box::new([0; PAGE as usize]));
            p[offset..offset + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        true
    }

    /// Pages allocated so far.
    pub fn pages_in_use(&self) -> usize {
        self.pages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_writes_across_pages_and_zero_elsewhere() {
        let mut m = HostMemory::new(0x10000);
        let data: Vec<u8> = (0..100).collect();
        assert!(m.write(0x0fd0, &data));
        let mut back = vec![0xffu8; 120];
        assert!(m.read(0x0fc0, &mut back));
        assert_eq!(&back[..16], &[0; 16]);
        assert_eq!(&back[16..116], &data[..]);
        assert_eq!(m.pages_in_use(), 2);
    }

    #[test]
    fn out_of_range_accesses_are_refused() {
        let mut m = HostMemory::new(0x2000);
        assert!(!m.write(0x1fff, &[1, 2]));
        assert!(!m.read(u64::MAX, &mut [0]));
        assert!(m.write(0x1fff, &[1]));
        assert_eq!(m.pages_in_use(), 1);
    }
}
