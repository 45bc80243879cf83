//! The record decoder on arbitrary bytes: no panic, no unbounded allocation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ragspool::fuzzing::decode_records(data);
});
