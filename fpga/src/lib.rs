//! Links to real root-port hardware: serial/UART with reliable framing, UDP in NetTLP format and
//! byte-stream device files, plus an FPGA-side emulator for tests. Filled in by the FPGA-link work.
