//! The input as a report body; a decoded report round-trips (see `checks::report`).
#![no_main]

use libfuzzer_sys::fuzz_target;

// The checks are shared with the corpus replay test in crates/proto/tests/fuzz_corpus.rs.
#[allow(dead_code)]
#[path = "../../crates/proto/tests/checks/mod.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    checks::report(data);
});
