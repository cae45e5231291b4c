//! A copy of the records a process has read, kept true by notices of change: PostgreSQL's opt-in cached
//! mode, where every write to `bff_sessions` sends one (`LISTEN`/`NOTIFY`), and sled, which only this
//! process opens, so its own writes are all the notices there are.
//!
//! Owns the cache, PostgreSQL's listening connection and what is dropped when. A record is answered from
//! here only while notices arrive; losing PostgreSQL's connection empties the cache and every check reads
//! the database again until it is back. An entry read from the store is kept only if no notice for its part
//! of the cache arrived while it was being read, so a notice is never overtaken by the read it should have
//! cancelled. PostgreSQL asks it only for [`Store::get_for_check`](super::Store::get_for_check), so every write
//! there reads the database; sled, whose copy is exact, asks it for every read, and a write's compare-and-swap
//! on the version it read still catches any race. It decides nothing about a session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bff_session_core::{Session, SessionKey};
use futures_util::future::poll_fn;
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{info, warn};

/// The channel the `bff_sessions_changed` trigger notifies, with the changed record's key in hex.
pub(super) const CHANNEL: &str = "bff_sessions_changed";

/// Parts of the cache, each with its own lock and its own count of notices.
const SHARDS: usize = 64;

#[derive(Debug)]
pub(super) struct Notices {
    shards: Vec<Mutex<HashMap<SessionKey, Arc<Session>>>>,
    /// Records each part keeps, at most; a full part is emptied rather than tracked for recency.
    per_shard: usize,
    /// Notices seen per part: a read that began before a notice does not fill the cache.
    seen: Vec<AtomicU64>,
    listening: AtomicBool,
}

/// What a read saw of the cache before it went to the database: where to put its answer, and whether it
/// still may.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ticket {
    shard: usize,
    seen: u64,
}

impl Notices {
    /// A copy of at most `capacity` records (rounded down to a whole number per part; none below that).
    pub(super) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity / SHARDS,
            seen: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            listening: AtomicBool::new(false),
        })
    }

    /// A copy whose notices are its owner's own writes (sled's, as only this process opens it): it
    /// answers from the start, and nothing turns it off.
    pub(super) fn of_own_writes(capacity: usize) -> Arc<Self> {
        let copy = Self::new(capacity);
        copy.listening.store(true, Ordering::Release);
        copy
    }

    fn shard(key: &SessionKey) -> usize {
        usize::from(key.as_bytes()[0]) % SHARDS
    }

    /// The cached record, or a ticket to fill the cache with what the database answers.
    pub(super) fn get(&self, key: &SessionKey) -> Result<Arc<Session>, Ticket> {
        let shard = Self::shard(key);
        // Read the count before the entry: a notice between the two makes the ticket stale, never the reverse.
        let seen = self.seen[shard].load(Ordering::Acquire);
        if self.listening.load(Ordering::Acquire)
            && let Some(s) = self.shards[shard].lock().ok().and_then(|m| m.get(key).cloned())
        {
            return Ok(s);
        }
        Err(Ticket { shard, seen })
    }

    /// Keeps what the database answered, unless a notice for this part arrived since the ticket was taken.
    pub(super) fn fill(&self, key: SessionKey, session: Arc<Session>, ticket: Ticket) {
        if !self.listening.load(Ordering::Acquire) || self.per_shard == 0 {
            return;
        }
        let Ok(mut map) = self.shards[ticket.shard].lock() else { return };
        // Checked under the lock `forget` takes, so a notice cannot slip between the check and the insert.
        if self.seen[ticket.shard].load(Ordering::Acquire) != ticket.seen {
            return;
        }
        if map.len() >= self.per_shard {
            map.clear();
        }
        map.insert(key, session);
    }

    /// A notice (or this replica's own write): the record under `key` changed.
    pub(super) fn forget(&self, key: &SessionKey) {
        let shard = Self::shard(key);
        if let Ok(mut map) = self.shards[shard].lock() {
            self.seen[shard].fetch_add(1, Ordering::AcqRel);
            map.remove(key);
        }
    }

    /// The connection is lost or not yet listening: no record is answered from memory until it is.
    fn forget_all(&self, listening: bool) {
        self.listening.store(false, Ordering::Release);
        for (map, seen) in self.shards.iter().zip(&self.seen) {
            if let Ok(mut map) = map.lock() {
                seen.fetch_add(1, Ordering::AcqRel);
                map.clear();
            }
        }
        self.listening.store(listening, Ordering::Release);
    }

    /// Whether records are answered from memory now.
    pub(super) fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }
}

/// Listens on its own connection until `stop` is dropped, reconnecting after a loss; meanwhile the cache
/// answers nothing.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    notices: Arc<Notices>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    const FIRST: Duration = Duration::from_millis(100);
    let mut backoff = FIRST;
    loop {
        let session = tokio::select! {
            _ = &mut stop => return,
            r = listen_once(&config, &notices) => r,
        };
        // A connection that got as far as listening was a success: the next loss starts the backoff over.
        if notices.is_listening() {
            backoff = FIRST;
        }
        notices.forget_all(false);
        match session {
            Ok(()) => warn!("the change-notice connection closed; the cache is off until it is back"),
            Err(e) => warn!(error = %e, "the change-notice connection failed; the cache is off until it is back"),
        }
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection's life: `LISTEN`, then drop each record a notice names, until the connection ends.
async fn listen_once(config: &tokio_postgres::Config, notices: &Notices) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    // The connection only makes progress while polled, and the LISTEN below needs it to.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(message)) => {
                    if tx.send(Ok(message)).is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    let _ = tx.send(Err(e));
                    return;
                }
                None => return,
            }
        }
    });
    let listened = client.batch_execute(&format!("LISTEN {CHANNEL}")).await;
    if let Err(e) = listened {
        driver.abort();
        return Err(e);
    }
    // Whatever was cached before this connection listened may have missed notices.
    notices.forget_all(true);
    info!("listening for session changes; checks are answered from this replica's cache");
    let result = loop {
        match rx.recv().await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if let Some(key) = key_of_hex(n.payload()) {
                    notices.forget(&key);
                } else {
                    // A notice we cannot read could name any record.
                    notices.forget_all(true);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        }
    };
    driver.abort();
    drop(client);
    result
}

fn key_of_hex(hex: &str) -> Option<SessionKey> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex, &mut key).ok()?;
    Some(SessionKey::from_bytes(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Arc<Session> {
        numbered(7)
    }

    fn numbered(n: u32) -> Arc<Session> {
        let mut id = [7; 32];
        id[..4].copy_from_slice(&n.to_be_bytes());
        let new = bff_session_core::NewSession {
            id: bff_session_core::SessionId::from_random_bytes(id),
            user: bff_session_core::UserId::new("u"),
            login: bff_session_core::Login::Local,
            device: bff_session_core::Device::default(),
        };
        let policy = bff_session_core::Policy::hardened();
        Arc::new(
            bff_session_core::lifecycle::create(&new, bff_session_core::Timestamp::from_millis(1), &policy).outcome,
        )
    }

    #[test]
    fn a_read_overtaken_by_a_notice_is_not_kept() {
        let notices = Notices::new(1_000);
        let s = session();
        let key = s.key();
        // Not listening yet: nothing is kept.
        let ticket = notices.get(&key).unwrap_err();
        notices.fill(key, s.clone(), ticket);
        assert!(notices.get(&key).is_err());

        notices.forget_all(true);
        let ticket = notices.get(&key).unwrap_err();
        notices.forget(&key);
        notices.fill(key, s.clone(), ticket);
        assert!(notices.get(&key).is_err(), "a read that began before a notice was kept");

        let ticket = notices.get(&key).unwrap_err();
        notices.fill(key, s.clone(), ticket);
        assert!(notices.get(&key).is_ok());
        notices.forget_all(false);
        assert!(notices.get(&key).is_err(), "answered from memory while not listening");
    }

    fn held(copy: &Notices) -> usize {
        copy.shards.iter().map(|m| m.lock().unwrap().len()).sum()
    }

    /// The copy's share of `--cache-mb` bounds it, however many records are read.
    #[test]
    fn a_copy_never_holds_more_than_its_capacity() {
        let copy = Notices::of_own_writes(640);
        for n in 0..20_000 {
            let s = numbered(n);
            let ticket = copy.get(&s.key()).unwrap_err();
            copy.fill(s.key(), s, ticket);
            assert!(held(&copy) <= 640);
        }
        assert!(held(&copy) > 0, "the copy keeps what it is given");

        let none = Notices::of_own_writes(SHARDS - 1);
        let s = session();
        let ticket = none.get(&s.key()).unwrap_err();
        none.fill(s.key(), s.clone(), ticket);
        assert_eq!(held(&none), 0, "too small a budget for one record a part keeps none");
        assert!(none.get(&s.key()).is_err());
    }

    #[test]
    fn keys_come_back_from_their_hex() {
        let key = SessionKey::from_bytes([0xab; 32]);
        let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(key_of_hex(&hex), Some(key));
        assert_eq!(key_of_hex(&hex.to_uppercase()), Some(key));
        assert_eq!(key_of_hex(&hex[2..]), None);
        assert_eq!(key_of_hex(&"zz".repeat(32)), None);
    }
}
