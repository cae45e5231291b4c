//! The server's storage path: sled get, compare-and-swap update, durable revoke, record encode/decode and
//! token sealing.

use std::hint::black_box;
use std::time::Duration;

use bff_session_core::lifecycle;
use bff_session_core::record;
use bff_session_core::record::Sealer as _;
use bff_session_core::{Policy, RevocationReason, Timestamp};
use bff_session_server::seal::TokenSealer;
use bff_session_server::store::SledStore as Store;
use criterion::{Criterion, criterion_group, criterion_main};

const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

fn new_session(n: u64) -> bff_session_core::NewSession {
    bff_session_benches::oidc_session(0x33, n, 1000, Duration::from_secs(300))
}

fn store(dir: &std::path::Path, n: u64) -> Store {
    let s = Store::open(dir, TokenSealer::from_key([7; 32]), Policy::hardened(), 256 << 20).unwrap();
    for i in 0..n {
        s.put(None, &lifecycle::create(&new_session(i), T0, &Policy::hardened()).outcome).unwrap();
    }
    s
}

fn storage(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 10_000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let policy = Policy::hardened();
    let keys: Vec<_> = (0..10_000).map(|i| new_session(i).id.key()).collect();
    let mut i = 0usize;
    c.bench_function("store/get_10k", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(s.get(&keys[i]).unwrap())
        })
    });
    let key = keys[42];
    let mut now = T0;
    c.bench_function("store/cas_touch", |b| {
        b.iter(|| {
            let previous = s.get(&key).unwrap().unwrap();
            let mut next = (*previous).clone();
            now = now.saturating_add(policy.touch_interval);
            let _ = lifecycle::touch(Some(&mut next), now, &policy);
            s.put(Some(&previous), &next).unwrap();
        })
    });
    let mut n = 1_000_000u64;
    let mut group = c.benchmark_group("store");
    group.sample_size(20);
    group.bench_function("durable_revoke", |b| {
        b.iter(|| {
            n += 1;
            let created = lifecycle::create(&new_session(n), T0, &policy).outcome;
            s.put(None, &created).unwrap();
            let mut revoked = created.clone();
            let _ = lifecycle::revoke(Some(&mut revoked), RevocationReason::Logout, T0, &policy);
            s.put(Some(&created), &revoked).unwrap();
            rt.block_on(s.flush()).unwrap();
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    let sealer = TokenSealer::from_key([9; 32]);
    let session = lifecycle::create(&new_session(1), T0, &Policy::hardened()).outcome;
    let bytes = record::encode(&session, &sealer);
    c.bench_function("record/encode_sealed", |b| b.iter(|| black_box(record::encode(black_box(&session), &sealer))));
    c.bench_function("record/decode_sealed", |b| {
        b.iter(|| black_box(record::decode(black_box(&bytes), &sealer).unwrap()))
    });
    let tokens = vec![0x61u8; 1800];
    let sealed = sealer.seal(&tokens, b"context");
    c.bench_function("seal/seal_1800B", |b| b.iter(|| black_box(sealer.seal(black_box(&tokens), b"context"))));
    c.bench_function("seal/open_1800B", |b| b.iter(|| black_box(sealer.open(black_box(&sealed), b"context").unwrap())));
}

criterion_group!(benches, storage, codec);
criterion_main!(benches);
