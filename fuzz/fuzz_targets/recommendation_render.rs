//! A recommendation file (`apply --from FILE`): parsed and rendered.
#![no_main]

use ctscope::tune::recommend::{self, Recommendation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<Recommendation>(data) {
        let _ = recommend::render(&r);
    }
});
