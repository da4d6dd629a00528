//! A client's byte stream: framing (size limits, truncation) and every
//! complete frame through the request path.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weir_kafka::fuzz::frames(data, 64 * 1024);
});
