//! Checking an arbitrary audit trail: a verdict or an error, never a panic; the same text always gets the
//! same verdict, and a violation names a line that exists.
#![no_main]

use bff_session_core::Policy;
use bff_session_core::trace::check;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let verdict = check(text, Some(Policy::hardened()));
    assert_eq!(verdict, check(text, Some(Policy::hardened())));
    if let Ok(Err(violation)) = &verdict {
        assert!(violation.line >= 1 && violation.line <= text.lines().count());
    }
});
