#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tlpbridge_fuzz::vfio_user_client::check(data));
