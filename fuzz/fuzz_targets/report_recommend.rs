//! A report file (`recommend --from FILE`): parsed, recommended from, rendered.
#![no_main]

use ctscope::{report::Report, tune::recommend};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<Report>(data)
        && let Ok(rec) = recommend::recommend(&r, &recommend::Options::default())
    {
        let _ = recommend::render(&rec);
    }
});
