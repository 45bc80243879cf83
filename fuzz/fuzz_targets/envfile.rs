//! The env-file parser on arbitrary text: no panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ragspool::fuzzing::parse_env_file(text);
    }
});
