//! The fuzz targets' properties as functions of the fuzzer's raw bytes. The fuzz targets call them, and so
//! does the `fuzz_replay` test, so an input the fuzzer kept (a corpus entry or a crash) is replayed byte for
//! byte by an ordinary `cargo test` on stable. A property panics when it does not hold. Each includes this
//! file beside its `support` module rather than inside it: the server's tests share `support` and do not
//! depend on `arbitrary`.
// A fuzz target uses one of these properties.
#![allow(dead_code)]

use std::net::IpAddr;

use arbitrary::{Arbitrary, Result, Unstructured};
use bff_session_core::client_ip::{self, TrustedProxies};
use bff_session_core::cookie::{self, CookieError};
use bff_session_core::record::{self, Unsealed};
use bff_session_core::trace;
use bff_session_core::{Policy, Registry, RevocationReason, Trigger, return_path};

use crate::support::assertions::{History, check_step};
use crate::support::driver::{observe, run};
use crate::support::model::{Model, OidcOp, Op, Pick, Proof, ResultOp, Target, USERS, tiny_policy};

/// A fuzz target's property: panics on an input where it does not hold.
pub type Property = fn(&[u8]);

/// Every fuzz target by the name of its binary and of its directories under `fuzz/corpus` and
/// `fuzz/regressions`.
pub const TARGETS: [(&str, Property); 6] = [
    ("check_trace", check_trace),
    ("client_ip", client_ip),
    ("cookie_header", cookie_header),
    ("lifecycle", lifecycle),
    ("record_decode", record_decode),
    ("return_path", return_path),
];

/// Checking an arbitrary audit trail: a verdict or an error, never a panic; the same text always gets the
/// same verdict, and a violation names a line that exists.
pub fn check_trace(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let verdict = trace::check(text, Some(Policy::hardened()));
    assert_eq!(verdict, trace::check(text, Some(Policy::hardened())));
    if let Ok(Err(violation)) = &verdict {
        assert!(violation.line >= 1 && violation.line <= text.lines().count());
    }
}

#[derive(Arbitrary, Debug)]
struct ClientIpInput {
    peer: [u8; 4],
    peer_v6: Option<[u8; 16]>,
    trusted: String,
    forwarded: Vec<String>,
    x_forwarded_for: Vec<String>,
}

/// Client-IP resolution: never panics; an untrusted peer is always the answer; the answer is the peer or
/// an address that appears in the headers.
pub fn client_ip(data: &[u8]) {
    let Ok(input) = ClientIpInput::arbitrary_take_rest(Unstructured::new(data)) else { return };
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
}

/// `Cookie` header parsing: never panics, never picks one of two same-named cookies, and what it returns
/// was in the input under exactly that name.
pub fn cookie_header(data: &[u8]) {
    const NAME: &str = "__Host-bff-session";
    let Ok(headers) = Vec::<String>::arbitrary_take_rest(Unstructured::new(data)) else { return };
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
}

/// Decoding a stored record from arbitrary bytes: an error, never a panic; whatever decodes re-encodes to
/// a record that decodes to the same value.
pub fn record_decode(data: &[u8]) {
    if let Ok(session) = record::decode(data, &Unsealed) {
        let again = record::decode(&record::encode(&session, &Unsealed), &Unsealed);
        assert_eq!(again.as_ref(), Ok(&session));
    }
}

/// Return-path validation: never panics, and anything accepted is a same-origin path by construction.
pub fn return_path(data: &[u8]) {
    let Ok(input) = <&str>::arbitrary_take_rest(Unstructured::new(data)) else { return };
    if let Ok(path) = return_path::validate(input) {
        let s = path.as_str();
        assert_eq!(s, input);
        assert!(s.starts_with('/'));
        assert!(!s.starts_with("//"));
        assert!(!s.contains('\\'));
        assert!(s.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{s:?}");
        assert!(s.len() <= return_path::MAX_LEN);
    }
}

/// The longest command sequence one input drives.
const MAX_STEPS: usize = 200;

/// Command sequences from raw bytes: the registry against the reference model of the property tests, with
/// every named invariant checked after every step.
pub fn lifecycle(data: &[u8]) {
    let policy = tiny_policy();
    let scale = policy.assumed_token_lifetime.as_millis() as u64;
    let mut u = Unstructured::new(data);
    let mut model = Model::new(policy.clone());
    let Ok(mut registry) = Registry::new(policy) else { return };
    let mut history = History::default();
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = op(&mut u, scale, &model) else { break };
        model.step(&op);
        if let Some(step) = run(&mut registry, &model) {
            let expected = &model.last.as_ref().map(|(_, e)| e.clone());
            assert_eq!(Some(observe(&step.transition)), *expected, "{:?}", step.command);
            check_step(&mut history, &step, &registry);
        }
    }
}

fn op(u: &mut Unstructured<'_>, scale: u64, model: &Model) -> Result<Op> {
    let idx = |u: &mut Unstructured<'_>| -> Result<Pick> {
        Ok(if u.arbitrary()? { Pick::Nth(u.arbitrary()?) } else { Pick::Newest(u.int_in_range(0..=2)?) })
    };
    let user = |u: &mut Unstructured<'_>| u.int_in_range(0..=USERS - 1);
    let lifetime = |u: &mut Unstructured<'_>| -> Result<Option<u64>> {
        Ok(if u.ratio(4, 5)? { Some(u.int_in_range(0..=2 * scale)?) } else { None })
    };
    Ok(match u.int_in_range(0..=15u8)? {
        0 => Op::Create {
            user: user(u)?,
            oidc: if u.ratio(4, 5)? {
                Some(OidcOp {
                    sid: if u.arbitrary()? { Some(u.int_in_range(0..=2)?) } else { None },
                    expires_in: lifetime(u)?,
                    refresh_token: u.ratio(9, 10)?,
                    refresh_expires_in: if u.ratio(1, 5)? { Some(u.int_in_range(0..=12 * scale)?) } else { None },
                })
            } else {
                None
            },
            supersede: if u.ratio(1, 5)? { Some(idx(u)?) } else { None },
        },
        1 => Op::Authenticate {
            target: match u.int_in_range(0..=9u8)? {
                0 => Target::Garbage,
                1 => Target::NoCookie,
                _ => Target::Session(idx(u)?),
            },
            unsafe_method: u.arbitrary()?,
            proof: match u.int_in_range(0..=8u8)? {
                0 => Proof::Missing,
                1 => Proof::Foreign(idx(u)?),
                2 => Proof::Forged(u.arbitrary()?),
                _ => Proof::Own,
            },
        },
        2 => Op::Touch(idx(u)?),
        3 => Op::BeginRefresh(idx(u)?, u.arbitrary::<Trigger>()?),
        4 => Op::CompleteRefresh(
            idx(u)?,
            match u.int_in_range(0..=8u8)? {
                0 => ResultOp::InvalidGrant,
                1 | 2 => ResultOp::Transient,
                _ => ResultOp::Success { expires_in: lifetime(u)?, rotate: u.arbitrary()?, refresh_expires_in: None },
            },
        ),
        5 => Op::Revoke(idx(u)?, u.arbitrary::<RevocationReason>()?),
        6 => Op::RevokeUser(user(u)?, u.arbitrary::<RevocationReason>()?),
        7 => Op::RevokeHandle(user(u)?, idx(u)?, idx(u)?),
        8 => Op::RevokeBySid(u.int_in_range(0..=2)?),
        9 => Op::RevokeBySub(user(u)?),
        10 => Op::Tick,
        11 => Op::Rewind(u.int_in_range(0..=scale / 2)?),
        12 => Op::RenewLease(idx(u)?),
        13 => Op::ClockTo(idx(u)?, u.int_in_range(-1..=1)?),
        14 => model.chain_step().unwrap_or(Op::Tick),
        _ => Op::Advance(if u.ratio(1, 8)? { u.int_in_range(0..=14 * scale)? } else { u.int_in_range(0..=scale / 2)? }),
    })
}
