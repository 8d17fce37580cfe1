//! One `recv` of a ctnetlink socket (a dump datagram or an event burst).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ctscope::host::ctnetlink::parse_messages(data);
});
