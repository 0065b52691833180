#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tlpbridge_fuzz::fpga_dll::check(data));
