//! `Cookie` header parsing: never panics, never picks one of two same-named cookies, and what it returns
//! was in the input under exactly that name.
#![no_main]

use bff_session_core::cookie::{self, CookieError};
use libfuzzer_sys::fuzz_target;

const NAME: &str = "__Host-bff-session";

fuzz_target!(|headers: Vec<String>| {
    let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    let occurrences = refs
        .iter()
        .flat_map(|h| h.split(';'))
        .filter(|pair| pair.split_once('=').is_some_and(|(n, _)| n.trim_matches([' ', '\t']) == NAME))
        .count();
    match cookie::find(refs.iter().copied(), NAME) {
        Ok(Some(value)) => {
            assert_eq!(occurrences, 1);
            assert!(refs.iter().any(|h| h.contains(value)));
        }
        Ok(None) => assert_eq!(occurrences, 0),
        Err(CookieError::Duplicate { .. }) => assert!(occurrences > 1),
        Err(CookieError::TooLarge { len }) => assert!(len > cookie::MAX_COOKIE_HEADER_BYTES),
        Err(e) => panic!("unexpected error {e}"),
    }
});
