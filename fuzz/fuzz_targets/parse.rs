//! libFuzzer target: arbitrary bytes → UTF-8 → `.bb` parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bbc_fuzz::fuzz_parse(data));
