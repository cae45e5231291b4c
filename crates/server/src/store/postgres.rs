//! The shared store: sessions in PostgreSQL, so several replicas serve one user base.
//!
//! Owns the schema and its versioned migrations, and the SQL of each store operation. The session key (a
//! hash of the ID) is the primary key; tokens are sealed inside the record exactly as with sled. Every
//! update is a compare-and-swap on the `version` column, and a trigger refuses any write that would make an
//! ended session active again, so a tombstone is final whatever a replica does. Due records are claimed
//! with `FOR UPDATE SKIP LOCKED` from an index on the next event, so replicas share background work without
//! doing it twice or scanning all sessions. It never decides anything about a session.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bff_session_core::{LoginKey, Lookup, PendingLogin, Policy, Session, SessionKey, Timestamp};
use bff_session_core::{background, record};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::NoTls;

use super::maintenance::{Maintenance, Progress, Resealed, Scanned, VerifyReport};
use super::notices::{self, Notices};
use super::{Decoded, Store, StoreError};
use crate::seal::TokenSealer;

/// The schema, in order. Each runs once, inside the transaction that records it; never edit one that has
/// shipped, add the next.
const MIGRATIONS: [(i32, &str); 4] = [
    (
        1,
        "CREATE TABLE bff_sessions (
        key bytea PRIMARY KEY,
        version bigint NOT NULL,
        record bytea NOT NULL,
        active boolean NOT NULL,
        user_id text NOT NULL,
        iss text,
        sid text,
        sub text,
        next_event bigint,
        claimed_until bigint
    );
    CREATE INDEX bff_sessions_by_user ON bff_sessions (user_id) WHERE active;
    CREATE INDEX bff_sessions_by_sid ON bff_sessions (iss, sid) WHERE active;
    CREATE INDEX bff_sessions_by_sub ON bff_sessions (iss, sub) WHERE active;
    CREATE INDEX bff_sessions_due ON bff_sessions (next_event) WHERE next_event IS NOT NULL;
    CREATE FUNCTION bff_tombstones_are_final() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NOT OLD.active AND NEW.active THEN
            RAISE EXCEPTION 'bff-session: an ended session cannot become active again';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER bff_tombstones_are_final BEFORE UPDATE ON bff_sessions
        FOR EACH ROW EXECUTE FUNCTION bff_tombstones_are_final();
    CREATE TABLE bff_logins (key bytea PRIMARY KEY, value bytea NOT NULL, expires_ms bigint NOT NULL);
    CREATE TABLE bff_jtis (jti text PRIMARY KEY, exp bigint NOT NULL);",
    ),
    (
        2,
        // Sweeps read only what is over.
        "CREATE INDEX bff_jtis_by_exp ON bff_jtis (exp);
    CREATE INDEX bff_logins_by_expiry ON bff_logins (expires_ms);",
    ),
    (
        3,
        // Pending logins in the order they began, so the oldest beyond the capacity go in one range delete.
        "ALTER TABLE bff_logins ADD COLUMN seq bigserial;
    CREATE INDEX bff_logins_by_seq ON bff_logins (seq);",
    ),
    (
        4,
        // A change notice for replicas that cache records (`--postgres-cache`), sent at commit by whoever
        // writes. Only a new version or a removal: claiming due records touches neither.
        "CREATE FUNCTION bff_sessions_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('bff_sessions_changed', encode(OLD.key, 'hex'));
        RETURN NULL;
    END $$;
    CREATE TRIGGER bff_sessions_changed AFTER UPDATE OF version, record OR DELETE ON bff_sessions
        FOR EACH ROW EXECUTE FUNCTION bff_sessions_changed();",
    ),
];

/// Connections per replica. Each check is one short query, so a few connections keep the database busy;
/// more only queue inside it (on 2 cores, 4 to 8 served the most checks and 32 had a p99 of 136 ms).
const POOL_SIZE: usize = 8;

/// Connections of the pool that reads share, so concurrent reads are pipelined: tokio-postgres sends a
/// query without waiting for the answers to those before it, and each batch costs one write and one read
/// of the socket on both sides instead of one per query.
const READERS: usize = 2;

/// Serialises migrations of replicas starting at once (an arbitrary, fixed advisory-lock number).
const MIGRATION_LOCK: i64 = 0x6266_6673_6573_7331;

pub struct PgStore {
    pool: Pool,
    sealer: TokenSealer,
    policy: Policy,
    decoded: Decoded,
    /// The `--cache-mb` budget for `decoded` (and the cached mode's copy).
    cache_bytes: u64,
    /// The shared read connections ([`READERS`]); an empty or closed place is filled from the pool.
    readers: Vec<Mutex<Option<Arc<deadpool_postgres::Object>>>>,
    next_reader: AtomicUsize,
    config: tokio_postgres::Config,
    /// The cached mode's records and the stop of its listener; `None`: strict (every check reads).
    notices: Option<(Arc<Notices>, tokio::sync::oneshot::Sender<()>)>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore").field("pool", &self.pool.status()).finish_non_exhaustive()
    }
}

fn io(e: impl fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn key_of(bytes: &[u8]) -> Option<SessionKey> {
    <[u8; 32]>::try_from(bytes).ok().map(SessionKey::from_bytes)
}

fn ms(t: Timestamp) -> i64 {
    i64::try_from(t.as_millis()).unwrap_or(i64::MAX)
}

/// The columns PostgreSQL indexes, derived from a record: what `put` writes and `verify` checks.
#[derive(Debug, PartialEq, Eq)]
struct Columns<'a> {
    active: bool,
    user: &'a str,
    iss: Option<&'a str>,
    sid: Option<&'a str>,
    sub: Option<&'a str>,
    next_event: Option<i64>,
}

impl<'a> Columns<'a> {
    fn of(s: &'a Session, policy: &Policy) -> Self {
        let oidc = s.oidc();
        Columns {
            active: s.is_active(),
            user: s.user().as_str(),
            iss: oidc.map(|o| o.iss.as_str()),
            sid: oidc.and_then(|o| o.sid.as_deref()),
            sub: oidc.map(|o| o.sub.as_str()),
            next_event: s.next_event(policy).map(ms),
        }
    }
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl PgStore {
    /// Connects, and applies the migrations this database has not seen.
    /// `cache_bytes` bounds the decoded records this replica keeps (and, in the cached mode, its copy).
    pub async fn connect(url: &str, sealer: TokenSealer, policy: Policy, cache_bytes: u64) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(io)?;
        config.connect_timeout(Duration::from_secs(5));
        let timeouts = Timeouts {
            wait: Some(Duration::from_secs(5)),
            create: Some(Duration::from_secs(5)),
            recycle: Some(Duration::from_secs(5)),
        };
        let pool = Pool::builder(Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        ))
        .max_size(POOL_SIZE)
        .timeouts(timeouts)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(io)?;
        let store = Self {
            pool,
            sealer,
            policy,
            decoded: Decoded::with_capacity(super::records_in(cache_bytes)),
            cache_bytes,
            readers: (0..READERS).map(|_| Mutex::new(None)).collect(),
            next_reader: AtomicUsize::new(0),
            config,
            notices: None,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The opt-in cached mode (`--postgres-cache`): checks are answered from this replica's copy of the
    /// records, which a listening connection keeps true with the change notices of every writer. A session
    /// ended on another replica is refused here once its notice arrives (see BENCHMARKS.md for how long that
    /// takes), not at once. Needs a Tokio runtime.
    pub fn with_change_notices(mut self) -> Self {
        // The budget is shared: half for the copy checks are answered from, half for the decoded records
        // that writes start from.
        let (decoded, copy) = super::halves(self.cache_bytes);
        self.decoded = Decoded::with_capacity(super::records_in(decoded));
        let notices = Notices::new(super::records_in(copy));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(notices::listen(self.config.clone(), notices.clone(), stopped));
        self.notices = Some((notices, stop));
        self
    }

    /// Whether the cached mode answers from memory now (its connection listens).
    pub fn is_listening(&self) -> bool {
        self.notices.as_ref().is_some_and(|(n, _)| n.is_listening())
    }

    /// This replica wrote (or tried to write) the record under `key`: its copy is stale either way.
    fn changed(&self, key: &SessionKey) {
        if let Some((notices, _)) = &self.notices {
            notices.forget(key);
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(io)
    }

    /// A shared read connection, taking turns; a closed one is replaced from the pool.
    async fn reader(&self) -> Result<Arc<deadpool_postgres::Object>, StoreError> {
        let place = &self.readers[self.next_reader.fetch_add(1, Ordering::Relaxed) % READERS];
        let held = place.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(client) = held.filter(|c| !c.is_closed()) {
            return Ok(client);
        }
        let fresh = Arc::new(self.client().await?);
        *place.lock().unwrap_or_else(PoisonError::into_inner) = Some(fresh.clone());
        Ok(fresh)
    }

    /// Applies pending migrations, one transaction each, under an advisory lock. Running it again, or from
    /// two replicas at once, changes nothing.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS bff_schema_migrations (
                    version integer PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .map_err(io)?;
        for (version, sql) in MIGRATIONS {
            let tx = client.transaction().await.map_err(io)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(io)?;
            let applied = tx
                .query_opt("SELECT 1 FROM bff_schema_migrations WHERE version = $1", &[&version])
                .await
                .map_err(io)?
                .is_some();
            if !applied {
                tx.batch_execute(sql).await.map_err(io)?;
                tx.execute("INSERT INTO bff_schema_migrations (version) VALUES ($1)", &[&version]).await.map_err(io)?;
            }
            tx.commit().await.map_err(io)?;
        }
        Ok(())
    }

    /// The migrations applied, in order.
    pub async fn applied_migrations(&self) -> Result<Vec<i32>, StoreError> {
        let client = self.client().await?;
        let rows = client.query("SELECT version FROM bff_schema_migrations ORDER BY version", &[]).await.map_err(io)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

#[async_trait]
impl Store for PgStore {
    async fn get(&self, key: &SessionKey) -> Result<Option<Arc<Session>>, StoreError> {
        let client = self.reader().await?;
        let key_bytes = key.as_bytes().as_slice();
        // The sealed record only when this replica has not decoded that version already: most reads then
        // carry a version number, not kilobytes.
        let decoded = self.decoded.version_of(key).map_or(-1, signed);
        let statement = client
            .prepare_cached(
                "SELECT version, CASE WHEN version = $2 THEN NULL ELSE record END FROM bff_sessions WHERE key = $1",
            )
            .await
            .map_err(io)?;
        let row = client.query_opt(&statement, &[&key_bytes, &decoded]).await.map_err(io)?;
        let Some(row) = row else { return Ok(None) };
        let version = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        let bytes: Option<Vec<u8>> = row.get(1);
        if let Some(s) = self.decoded.get(key, version) {
            return Ok(Some(s));
        }
        let (version, bytes) = match bytes {
            Some(bytes) => (version, bytes),
            // Evicted since the version was looked up: read the record whole.
            None => {
                let row = client
                    .query_opt("SELECT version, record FROM bff_sessions WHERE key = $1", &[&key_bytes])
                    .await
                    .map_err(io)?;
                let Some(row) = row else { return Ok(None) };
                (u64::try_from(row.get::<_, i64>(0)).unwrap_or(0), row.get(1))
            }
        };
        let session =
            Arc::new(record::decode(&bytes, &self.sealer).map_err(|error| StoreError::Corrupt { key: *key, error })?);
        self.decoded.insert(*key, version, session.clone());
        Ok(Some(session))
    }

    async fn get_for_check(&self, key: &SessionKey) -> Result<Option<Arc<Session>>, StoreError> {
        let Some((notices, _)) = &self.notices else { return self.get(key).await };
        let ticket = match notices.get(key) {
            Ok(session) => return Ok(Some(session)),
            Err(ticket) => ticket,
        };
        let session = self.get(key).await?;
        if let Some(s) = &session {
            notices.fill(*key, s.clone(), ticket);
        }
        Ok(session)
    }

    async fn put(&self, previous: Option<&Session>, new: &Session) -> Result<(), StoreError> {
        let client = self.client().await?;
        let key = new.key();
        let record = record::encode(new, &self.sealer);
        let Columns { active, user, iss, sid, sub, next_event } = Columns::of(new, &self.policy);
        let version = signed(new.version());
        let key_bytes = key.as_bytes().as_slice();
        const INSERT: &str =
            "INSERT INTO bff_sessions (key, version, record, active, user_id, iss, sid, sub, next_event)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (key) DO NOTHING";
        const UPDATE: &str = "UPDATE bff_sessions SET version = $2, record = $3, active = $4, user_id = $5, iss = $6,
            sid = $7, sub = $8, next_event = $9, claimed_until = NULL WHERE key = $1 AND version = $10";
        let statement = client.prepare_cached(if previous.is_some() { UPDATE } else { INSERT }).await.map_err(io)?;
        let previous_version = previous.map(|p| signed(p.version()));
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&key_bytes, &version, &record, &active, &user, &iss, &sid, &sub, &next_event];
        if let Some(v) = &previous_version {
            params.push(v);
        }
        let written = client.execute(&statement, &params).await.map_err(io);
        // After the write, so a check of this replica's that follows the write's answer reads it.
        self.changed(&key);
        if written? == 1 { Ok(()) } else { Err(StoreError::Conflict) }
    }

    async fn delete(&self, previous: &Session) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement =
            client.prepare_cached("DELETE FROM bff_sessions WHERE key = $1 AND version = $2").await.map_err(io)?;
        let deleted = client
            .execute(&statement, &[&previous.key().as_bytes().as_slice(), &signed(previous.version())])
            .await
            .map_err(io);
        self.changed(&previous.key());
        if deleted? == 1 { Ok(()) } else { Err(StoreError::Conflict) }
    }

    async fn purge(&self, key: &SessionKey, _now: Timestamp) -> Result<(), StoreError> {
        // The schedule is a column of the row: deleting the row unschedules it.
        let client = self.client().await?;
        let purged = client.execute("DELETE FROM bff_sessions WHERE key = $1", &[&key.as_bytes().as_slice()]).await;
        self.changed(key);
        purged.map(drop).map_err(io)
    }

    async fn keys(&self, lookup: &Lookup) -> Result<Vec<SessionKey>, StoreError> {
        let client = self.client().await?;
        let rows = match lookup {
            Lookup::User(user) => {
                client.query("SELECT key FROM bff_sessions WHERE active AND user_id = $1", &[&user.as_str()]).await
            }
            Lookup::Sid { iss, sid } => {
                client.query("SELECT key FROM bff_sessions WHERE active AND iss = $1 AND sid = $2", &[iss, sid]).await
            }
            Lookup::Sub { iss, sub } => {
                client.query("SELECT key FROM bff_sessions WHERE active AND iss = $1 AND sub = $2", &[iss, sub]).await
            }
        }
        .map_err(io)?;
        Ok(rows.iter().filter_map(|r| key_of(r.get::<_, &[u8]>(0))).collect())
    }

    async fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<SessionKey>, StoreError> {
        let client = self.client().await?;
        let until = ms(background::claimed_until(now));
        let rows = client
            .query(
                "UPDATE bff_sessions SET claimed_until = $2 WHERE key IN (
                    SELECT key FROM bff_sessions
                    WHERE next_event <= $1 AND (claimed_until IS NULL OR claimed_until <= $1)
                    ORDER BY next_event LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING key, next_event",
                &[&ms(now), &until, &i64::try_from(limit).unwrap_or(i64::MAX)],
            )
            .await
            .map_err(io)?;
        let mut due: Vec<(i64, SessionKey)> =
            rows.iter().filter_map(|r| Some((r.get::<_, i64>(1), key_of(r.get::<_, &[u8]>(0))?))).collect();
        due.sort();
        Ok(due.into_iter().map(|(_, k)| k).collect())
    }

    async fn release(&self, keys: &[SessionKey]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes().as_slice()).collect();
        client
            .execute("UPDATE bff_sessions SET claimed_until = NULL WHERE key = ANY($1)", &[&keys])
            .await
            .map_err(io)?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // A committed statement is durable: there is nothing left to wait for.
        Ok(())
    }

    async fn put_login(&self, key: &LoginKey, login: &PendingLogin, capacity: usize) -> Result<usize, StoreError> {
        // Rows at least `capacity` places behind this one in the sequence are the oldest beyond it. Gaps in
        // the sequence (rolled-back inserts) only leave fewer rows, never more.
        let client = self.client().await?;
        let capacity = i64::try_from(capacity.max(1)).unwrap_or(i64::MAX);
        let evicted = client
            .execute(
                "WITH added AS (
                     INSERT INTO bff_logins (key, value, expires_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_ms = EXCLUDED.expires_ms
                     RETURNING seq)
                 DELETE FROM bff_logins WHERE seq <= (SELECT seq FROM added) - $4",
                &[&key.as_bytes().as_slice(), &login.encode(), &ms(login.expires_at), &capacity],
            )
            .await
            .map_err(io)?;
        Ok(usize::try_from(evicted).unwrap_or(usize::MAX))
    }

    async fn take_login(&self, key: &LoginKey) -> Result<Option<PendingLogin>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("DELETE FROM bff_logins WHERE key = $1 RETURNING value", &[&key.as_bytes().as_slice()])
            .await
            .map_err(io)?;
        let Some(row) = row else { return Ok(None) };
        PendingLogin::decode(row.get::<_, &[u8]>(0)).map(Some).map_err(StoreError::CorruptLogin)
    }

    async fn sweep_logins(&self, now: Timestamp) -> Result<usize, StoreError> {
        // `expires_ms` is core's `expires_at`, so this is `PendingLogin::is_over` evaluated by the index.
        let client = self.client().await?;
        let n = client.execute("DELETE FROM bff_logins WHERE expires_ms <= $1", &[&ms(now)]).await.map_err(io)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn sweep_jtis(&self, exp: u64) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let n = client.execute("DELETE FROM bff_jtis WHERE exp < $1", &[&signed(exp)]).await.map_err(io)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn jti_seen(&self, jti: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client.query_opt("SELECT 1 FROM bff_jtis WHERE jti = $1", &[&jti]).await.map_err(io)?;
        Ok(row.is_some())
    }

    async fn remember_jti(&self, jti: &str, exp: u64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let inserted = client
            .execute(
                "INSERT INTO bff_jtis (jti, exp) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
                &[&jti, &signed(exp)],
            )
            .await
            .map_err(io)?;
        Ok(inserted == 1)
    }
}

/// Rows a verify reads at once.
const PAGE: i64 = 1000;

/// Replicas may serve meanwhile: every repair is a compare-and-swap on the row's version.
#[async_trait]
impl Maintenance for PgStore {
    async fn scan(&self, after: Option<SessionKey>, limit: usize) -> Result<Vec<Scanned>, StoreError> {
        let client = self.client().await?;
        let after = after.map(|k| k.as_bytes().to_vec()).unwrap_or_default();
        let rows = client
            .query(
                "SELECT key, record FROM bff_sessions WHERE key > $1 ORDER BY key LIMIT $2",
                &[&after, &i64::try_from(limit).unwrap_or(i64::MAX)],
            )
            .await
            .map_err(io)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let key = key_of(r.get::<_, &[u8]>(0))?;
                Some(Scanned { key, record: record::decode(r.get::<_, &[u8]>(1), &self.sealer) })
            })
            .collect())
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client.query_one("SELECT count(*) FROM bff_sessions", &[]).await.map_err(io)?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn size_on_disk(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT pg_total_relation_size('bff_sessions') + pg_total_relation_size('bff_logins')
                    + pg_total_relation_size('bff_jtis')",
                &[],
            )
            .await
            .map_err(io)?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn verify(&self, repair: bool, progress: Progress<'_>) -> Result<VerifyReport, StoreError> {
        // The indexes are PostgreSQL's own and cannot stray; what can is the columns they index, which must be
        // what the record says.
        let mut report = VerifyReport { repaired: repair, ..VerifyReport::default() };
        let client = self.client().await?;
        let mut after: Vec<u8> = Vec::new();
        loop {
            let rows = client
                .query(
                    "SELECT key, version, record, active, user_id, iss, sid, sub, next_event FROM bff_sessions
                     WHERE key > $1 ORDER BY key LIMIT $2",
                    &[&after, &PAGE],
                )
                .await
                .map_err(io)?;
            let Some(last) = rows.last() else { break };
            after = last.get::<_, Vec<u8>>(0);
            for row in &rows {
                report.records += 1;
                progress(report.records);
                let raw_key: &[u8] = row.get(0);
                let version: i64 = row.get(1);
                let key = key_of(raw_key).unwrap_or(SessionKey::from_bytes([0; 32]));
                let session = match record::decode(row.get::<_, &[u8]>(2), &self.sealer) {
                    Ok(s) => s,
                    Err(error) => {
                        report.undecodable(key, &error);
                        if repair && !matches!(error, record::DecodeError::Seal(_)) {
                            client
                                .execute(
                                    "DELETE FROM bff_sessions WHERE key = $1 AND version = $2",
                                    &[&raw_key, &version],
                                )
                                .await
                                .map_err(io)?;
                        }
                        continue;
                    }
                };
                let wanted = Columns::of(&session, &self.policy);
                let stored = Columns {
                    active: row.get(3),
                    user: row.get(4),
                    iss: row.get(5),
                    sid: row.get(6),
                    sub: row.get(7),
                    next_event: row.get(8),
                };
                if stored == wanted {
                    continue;
                }
                report.stray_entries += 1;
                if repair {
                    let Columns { active, user, iss, sid, sub, next_event } = wanted;
                    client
                        .execute(
                            "UPDATE bff_sessions SET active = $3, user_id = $4, iss = $5, sid = $6, sub = $7,
                                next_event = $8 WHERE key = $1 AND version = $2",
                            &[&raw_key, &version, &active, &user, &iss, &sid, &sub, &next_event],
                        )
                        .await
                        .map_err(io)?;
                }
            }
        }
        Ok(report)
    }

    async fn reseal(&self, key: &SessionKey) -> Result<Resealed, StoreError> {
        let client = self.client().await?;
        let key_bytes = key.as_bytes().as_slice();
        let Some(row) = client
            .query_opt("SELECT version, record FROM bff_sessions WHERE key = $1", &[&key_bytes])
            .await
            .map_err(io)?
        else {
            return Ok(Resealed::Gone);
        };
        let version: i64 = row.get(0);
        let stored: &[u8] = row.get(1);
        if record::decode(stored, &self.sealer.current_only()).is_ok() {
            return Ok(Resealed::Current);
        }
        let session = record::decode(stored, &self.sealer).map_err(|error| StoreError::Corrupt { key: *key, error })?;
        let resealed = record::encode(&session, &self.sealer);
        let written = client
            .execute(
                "UPDATE bff_sessions SET record = $3 WHERE key = $1 AND version = $2 AND record = $4",
                &[&key_bytes, &version, &resealed, &stored],
            )
            .await
            .map_err(io)?;
        if written == 1 { Ok(Resealed::Resealed) } else { Err(StoreError::Conflict) }
    }
}
