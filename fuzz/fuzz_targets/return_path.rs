//! Return-path validation: never panics, and anything accepted is a same-origin path by construction.
#![no_main]

use bff_session_core::return_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    if let Ok(path) = return_path::validate(input) {
        let s = path.as_str();
        assert_eq!(s, input);
        assert!(s.starts_with('/'));
        assert!(!s.starts_with("//"));
        assert!(!s.contains('\\'));
        assert!(s.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{s:?}");
        assert!(s.len() <= return_path::MAX_LEN);
    }
});
