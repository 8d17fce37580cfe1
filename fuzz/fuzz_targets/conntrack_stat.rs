//! `/proc/net/stat/nf_conntrack` (as `StatTotals::read` hands it over: text).
#![no_main]

use ctscope::host::procfs::StatTotals;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(s) = StatTotals::parse(text)
    {
        // What observe does with two readings.
        let _ = s.delta(&s);
        let _ = s.has_chain_limit_column();
    }
});
