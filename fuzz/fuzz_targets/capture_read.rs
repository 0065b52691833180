#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tlpbridge_fuzz::capture_read::check(data));
