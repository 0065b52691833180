//! Links to real root-port hardware: a serial port or a pair of stream device files carrying the
//! reliable framing of `docs/fpga-link.md`, and UDP in NetTLP format; plus an FPGA-side emulator
//! (`tlpbridge fpga emulate`) that hosts the reference root complex.

pub mod dll;
pub mod framing;
