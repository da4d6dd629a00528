//! Broker responses built from the input (and truncated): address
//! rewriting, ApiVersions capping, listing filters, denial merging.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weir_kafka::fuzz::response(data);
});
