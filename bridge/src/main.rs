//! `tlpbridge`: plugs a vfio-user device into a PCIe root port that speaks TLPs.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = cli::Cli::parse_or_exit();
    cli::init_tracing();
    cli.run()
}

/// Large buffers (DMA data and vfio-user messages of 64 KiB to 1 MiB) are allocated and freed
/// for every transfer. With glibc's defaults the heap top is trimmed back to the kernel after
/// such a free (and buffers above the dynamic mmap threshold are unmapped), so the next
/// transfer faults every page in again: about 55 page faults per 64 KiB copy in `tlpbridge
/// bench`, half the copy's CPU time. Keeping up to 32 MiB of freed memory (the largest
/// threshold glibc takes) ends that; the memory stays bounded by the bridge's queue limits.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const KEEP: nix::libc::c_int = 32 << 20;
        // SAFETY: mallopt only sets allocator parameters; called before any other thread runs.
        // A refusal (return 0) leaves glibc's defaults, which are correct, only slower.
        unsafe {
            nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, KEEP);
            nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, KEEP);
        }
    }
}
