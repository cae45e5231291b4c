//! A [`Store`] that times every operation of the one it wraps, for `bff_store_operation_duration_seconds`.
//!
//! Owns nothing but the timing: each call goes through unchanged, its result included.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bff_session_core::{LoginKey, Lookup, PendingLogin, Session, SessionKey, Timestamp};

use super::{Store, StoreError, Write};
use crate::metrics::{StoreOp, StoreTimes};

#[derive(Debug)]
pub struct Timed {
    inner: Arc<dyn Store>,
    times: StoreTimes,
}

impl Timed {
    pub fn new(inner: Arc<dyn Store>, times: StoreTimes) -> Self {
        Self { inner, times }
    }

    async fn timed<T>(&self, op: StoreOp, call: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let answer = call.await;
        self.times.observe(op, started.elapsed());
        answer
    }
}

#[async_trait]
impl Store for Timed {
    async fn get(&self, key: &SessionKey) -> Result<Option<Arc<Session>>, StoreError> {
        self.timed(StoreOp::Get, self.inner.get(key)).await
    }

    async fn get_for_check(&self, key: &SessionKey) -> Result<Option<Arc<Session>>, StoreError> {
        self.timed(StoreOp::Get, self.inner.get_for_check(key)).await
    }

    async fn put(&self, previous: Option<&Session>, new: &Session) -> Result<(), StoreError> {
        self.timed(StoreOp::Put, self.inner.put(previous, new)).await
    }

    async fn delete(&self, previous: &Session) -> Result<(), StoreError> {
        self.timed(StoreOp::Delete, self.inner.delete(previous)).await
    }

    async fn purge(&self, key: &SessionKey, now: Timestamp) -> Result<(), StoreError> {
        self.timed(StoreOp::Delete, self.inner.purge(key, now)).await
    }

    async fn write_all(&self, writes: &[Write<'_>]) -> Vec<Result<(), StoreError>> {
        self.timed(StoreOp::Batch, self.inner.write_all(writes)).await
    }

    async fn keys(&self, lookup: &Lookup) -> Result<Vec<SessionKey>, StoreError> {
        self.timed(StoreOp::Keys, self.inner.keys(lookup)).await
    }

    async fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<SessionKey>, StoreError> {
        self.timed(StoreOp::Due, self.inner.due(now, limit)).await
    }

    async fn release(&self, keys: &[SessionKey]) -> Result<(), StoreError> {
        self.timed(StoreOp::Due, self.inner.release(keys)).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.timed(StoreOp::Flush, self.inner.flush()).await
    }

    async fn put_login(&self, key: &LoginKey, login: &PendingLogin, capacity: usize) -> Result<usize, StoreError> {
        self.timed(StoreOp::Logins, self.inner.put_login(key, login, capacity)).await
    }

    async fn take_login(&self, key: &LoginKey) -> Result<Option<PendingLogin>, StoreError> {
        self.timed(StoreOp::Logins, self.inner.take_login(key)).await
    }

    async fn sweep_logins(&self, now: Timestamp) -> Result<usize, StoreError> {
        self.timed(StoreOp::Logins, self.inner.sweep_logins(now)).await
    }

    async fn jti_seen(&self, jti: &str) -> Result<bool, StoreError> {
        self.timed(StoreOp::Jtis, self.inner.jti_seen(jti)).await
    }

    async fn sweep_jtis(&self, exp: u64) -> Result<usize, StoreError> {
        self.timed(StoreOp::Jtis, self.inner.sweep_jtis(exp)).await
    }

    async fn remember_jti(&self, jti: &str, exp: u64) -> Result<bool, StoreError> {
        self.timed(StoreOp::Jtis, self.inner.remember_jti(jti, exp)).await
    }
}
