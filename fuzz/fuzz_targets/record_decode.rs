//! Decoding a stored record from arbitrary bytes: an error, never a panic; whatever decodes re-encodes to a
//! record that decodes to the same value.
#![no_main]

use bff_session_core::record::{self, Unsealed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(session) = record::decode(data, &Unsealed) {
        let again = record::decode(&record::encode(&session, &Unsealed), &Unsealed);
        assert_eq!(again.as_ref(), Ok(&session));
    }
});
