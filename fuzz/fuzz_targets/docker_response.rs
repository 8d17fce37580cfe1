//! A Docker Engine answer over /var/run/docker.sock (HTTP/1.0 head + JSON).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ctscope::host::docker::parse_response("/containers/json", data);
});
