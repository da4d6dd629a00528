//! One request frame body: header parsing, inspection of the authorized
//! APIs, and filtering of denied elements (checked to keep exactly the
//! allowed ones).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weir_kafka::fuzz::request(data);
});
