//! libFuzzer target: arbitrary bytes → UTF-8 → parse → elaborate every model.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bbc_fuzz::fuzz_elaborate(data));
