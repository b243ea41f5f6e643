//! The PostgreSQL backend, for deployments that outgrow one machine's
//! embedded database. One connection on the storage thread, driven by a
//! runtime of its own with every round trip bounded in time; statements
//! are prepared once per connection and reused. A lost connection fails
//! the calls that needed it and is made again, with backoff.

use std::collections::HashMap;

use std::time::{Duration, Instant};

use ::postgres::{NoTls, Statement, types::ToSql};
use bytes::Bytes;
use tokio_postgres::{Client, Config};
use xmpp_sasl::{ScramKeys, StoredCredentials};

use super::pep::{PepAccess, PepTables};
use super::{
    ArchiveEntry, ArchivePage, ArchiveQuery, Archived, FastSlot, FastToken, OfflineMessage,
    OfflineQuota, OfflineRow, PepConfig, PepItem, PepLastItem, PushRegistration, Roster,
    RosterItem, StorageError, Store, Stored, Subscription, decode_groups, encode_groups,
};

/// Schema migrations; the `schema_version` table records how many ran.
const SCHEMA: &[&str] = &[
    // 1: accounts and offline messages
    "CREATE TABLE users (
        username TEXT PRIMARY KEY,
        salt BYTEA NOT NULL,
        iterations INTEGER NOT NULL,
        sha1_stored BYTEA NOT NULL,
        sha1_server BYTEA NOT NULL,
        sha256_stored BYTEA NOT NULL,
        sha256_server BYTEA NOT NULL
    );
    CREATE TABLE offline (
        id BIGSERIAL PRIMARY KEY,
        username TEXT NOT NULL,
        stamp TEXT NOT NULL,
        payload BYTEA NOT NULL
    );
    CREATE INDEX offline_by_user ON offline(username, id);",
    // 2: rosters, archive, vCards
    "ALTER TABLE users ADD COLUMN roster_version BIGINT NOT NULL DEFAULT 0;
    CREATE TABLE roster (
        username TEXT NOT NULL,
        jid TEXT NOT NULL,
        name TEXT,
        groups TEXT NOT NULL,
        subscription TEXT NOT NULL,
        ask BOOLEAN NOT NULL,
        pending_in BOOLEAN NOT NULL,
        listed BOOLEAN NOT NULL,
        PRIMARY KEY (username, jid)
    );
    CREATE TABLE archive (
        username TEXT NOT NULL,
        id BIGINT NOT NULL,
        peer TEXT NOT NULL,
        stamp BIGINT NOT NULL,
        payload BYTEA NOT NULL,
        PRIMARY KEY (username, id)
    );
    CREATE INDEX archive_by_peer ON archive(username, peer, id);
    CREATE TABLE vcards (
        username TEXT PRIMARY KEY,
        vcard BYTEA NOT NULL
    );",
    // 3: shard slots and the cores that own them (`crate::shards`)
    "CREATE TABLE cluster (slots INTEGER NOT NULL);
    CREATE TABLE cores (
        core_id TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL,
        draining BOOLEAN NOT NULL
    );
    CREATE TABLE slots (
        slot INTEGER PRIMARY KEY,
        owner TEXT,
        epoch BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX slots_by_owner ON slots(owner);",
    // 4: block lists (XEP-0191)
    "CREATE TABLE blocklist (
        username TEXT NOT NULL,
        jid TEXT NOT NULL,
        PRIMARY KEY (username, jid)
    );",
    // 5: private XML storage (XEP-0049)
    "CREATE TABLE private_xml (
        username TEXT NOT NULL,
        namespace TEXT NOT NULL,
        element BYTEA NOT NULL,
        PRIMARY KEY (username, namespace)
    );",
    // 6: personal eventing (XEP-0163): nodes and their items, by age
    "CREATE TABLE pep_nodes (
        username TEXT NOT NULL,
        node TEXT NOT NULL,
        access TEXT NOT NULL,
        max_items INTEGER NOT NULL,
        PRIMARY KEY (username, node)
    );
    CREATE TABLE pep_items (
        username TEXT NOT NULL,
        node TEXT NOT NULL,
        item_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        payload BYTEA NOT NULL,
        PRIMARY KEY (username, node, item_id)
    );
    CREATE INDEX pep_items_by_age ON pep_items(username, node, seq);",
    // 7: persistent group-chat rooms (XEP-0045), by bare JID, in byte
    // order (the "C" collation, as SQLite's BINARY); their archives are in
    // `archive` with the room's bare JID as `username`
    "CREATE TABLE muc_rooms (
        room TEXT COLLATE \"C\" PRIMARY KEY,
        record BYTEA NOT NULL
    );",
    // 8: push registrations (XEP-0357): an app server's node per row, with
    // the publish-options form; `created` (µs) orders a user's rows
    "CREATE TABLE push_registrations (
        username TEXT NOT NULL,
        jid TEXT NOT NULL,
        node TEXT NOT NULL,
        options BYTEA,
        created BIGINT NOT NULL,
        PRIMARY KEY (username, jid, node)
    );",
    // 9: FAST tokens (XEP-0484): per user and user agent (SHA-256 of its
    // id), slot 0 the current token and 1 a new unused one; the token is
    // derived from `seed` with the core's FAST key
    "CREATE TABLE fast_tokens (
        username TEXT NOT NULL,
        client BYTEA NOT NULL,
        slot SMALLINT NOT NULL,
        seed BYTEA NOT NULL,
        mechanism TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        last_count BIGINT NOT NULL DEFAULT -1,
        PRIMARY KEY (username, client, slot)
    );",
];

/// Longest wait for one round trip (a statement, `BEGIN`, `COMMIT`) or a
/// connection attempt: past it the connection counts as dead (a stopped or
/// frozen server, a lost network) and the call fails.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The server-side `statement_timeout` set on each connection (unless the
/// connection string sets one), so an abandoned statement frees its locks.
const STATEMENT_TIMEOUT_MS: u64 = 5000;
/// The server-side `idle_in_transaction_session_timeout` set on each
/// connection (unless the connection string sets one): a process paused
/// or cut off in the middle of a transaction loses its session, and the
/// row locks it held, within this — below a slot lease (8 s), so the slot
/// fences its writes took (`FOR SHARE`) cannot keep its slots from moving.
/// A transaction of the storage thread is never idle this long.
const IDLE_IN_TRANSACTION_MS: u64 = 4000;
/// First and longest pause between reconnection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));

/// One live connection; its I/O task runs while the store waits on it.
struct Connection {
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The PostgreSQL store over one connection, reconnecting (with backoff)
/// when it is lost; every round trip is bounded by [`IO_TIMEOUT`].
pub struct Postgres {
    /// Drives the connection: a single-threaded runtime of the storage
    /// thread's own, entered only while a call waits.
    runtime: tokio::runtime::Runtime,
    /// `None` after the connection was lost, until a reconnection works.
    conn: Option<Connection>,
    config: Config,
    statements: HashMap<String, Statement>,
    offline_quota: u32,
    /// Archive entries of the open transaction, written in one statement
    /// before it commits (or before anything reads the archive): one round
    /// trip for a whole group commit instead of one per message.
    archive_batch: Vec<ArchiveEntry>,
    /// A statement of the open transaction failed: PostgreSQL aborted it,
    /// and its `COMMIT` would quietly roll back, so `commit` reports failure.
    failed: Option<String>,
    /// The open savepoints, innermost last (see [`Mark`]).
    savepoints: Vec<Mark>,
    /// Archive rows written out (by a read of the archive) while a
    /// savepoint was open, in order: rolling back to that savepoint undoes
    /// them, so those buffered before it go back into the buffer.
    flushed: Vec<ArchiveEntry>,
    /// When the next reconnection may be tried, the pause after it, and why
    /// the last attempt failed.
    retry_at: Instant,
    backoff: Duration,
    down_because: String,
}

/// What a savepoint needs to be rolled back to.
#[derive(Clone, Copy, Debug)]
struct Mark {
    /// Archive rows buffered when it was set.
    buffered: usize,
    /// Rows in `flushed` when it was set.
    flushed: usize,
    /// Whether the transaction had failed already.
    failed: bool,
}

/// Runs one round trip on the store's connection, bounded by
/// [`IO_TIMEOUT`]: `io!(self, client => client.query(..))`.
macro_rules! io {
    ($self:ident, $client:ident => $call:expr) => {{
        let r = match $self.conn.as_ref() {
            None => None,
            Some(conn) => {
                let $client = &conn.client;
                Some(
                    $self
                        .runtime
                        .block_on(async { tokio::time::timeout(IO_TIMEOUT, $call).await }),
                )
            }
        };
        $self.settle(r)
    }};
}

impl Postgres {
    /// Connects (libpq key-value string or `postgres://` URL, no TLS: keep
    /// the database on loopback or a private network) and migrates.
    /// Connections get a connect timeout, TCP keepalives and a TCP user
    /// timeout unless the string sets them, and a `statement_timeout`.
    pub fn open(url: &str, offline_quota: u32) -> Result<Self, StorageError> {
        let mut config: Config = url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(IO_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(IO_TIMEOUT);
        }
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
        let options = config.get_options().unwrap_or_default();
        let mut options = options.to_owned();
        if !options.contains("statement_timeout") {
            options = format!("{options} -c statement_timeout={STATEMENT_TIMEOUT_MS}");
        }
        if !options.contains("idle_in_transaction_session_timeout") {
            options = format!(
                "{options} -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
            );
        }
        config.options(options.trim_start());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut store = Self {
            runtime,
            conn: None,
            config,
            statements: HashMap::new(),
            offline_quota,
            archive_batch: Vec::new(),
            failed: None,
            savepoints: Vec::new(),
            flushed: Vec::new(),
            retry_at: Instant::now(),
            backoff: BACKOFF.0,
            down_because: String::new(),
        };
        store.connect()?;
        store.migrate()?;
        Ok(store)
    }

    /// Runs the schema migrations not yet run.
    fn migrate(&mut self) -> Result<(), StorageError> {
        io!(self, c => c.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
        ))?;
        io!(self, c => c.batch_execute("BEGIN; LOCK TABLE schema_version IN EXCLUSIVE MODE"))?;
        let migrated = self.migrate_locked();
        match migrated {
            Ok(()) => io!(self, c => c.batch_execute("COMMIT")),
            Err(e) => {
                let _ = io!(self, c => c.batch_execute("ROLLBACK"));
                Err(e)
            }
        }
    }

    fn migrate_locked(&mut self) -> Result<(), StorageError> {
        let version: i32 = io!(self, c => c.query_opt("SELECT version FROM schema_version", &[]))?
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0);
        for (i, step) in SCHEMA.iter().enumerate().skip(version as usize) {
            let next = i as i32 + 1;
            io!(self, c => c.batch_execute(step))?;
            io!(self, c => c.execute("DELETE FROM schema_version", &[]))?;
            io!(self, c => c.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&next],
            ))?;
        }
        Ok(())
    }

    /// Connects now, or fails at once with [`StorageError::Unavailable`]
    /// while the backoff after a failed attempt lasts.
    fn connect(&mut self) -> Result<(), StorageError> {
        let now = Instant::now();
        if now < self.retry_at {
            return Err(StorageError::Unavailable(format!(
                "{} (next attempt in {} ms)",
                self.down_because,
                (self.retry_at - now).as_millis()
            )));
        }
        let config = &self.config;
        let attempt = self.runtime.block_on(async {
            let (client, connection) =
                tokio::time::timeout(IO_TIMEOUT, config.connect(NoTls)).await??;
            let task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "the PostgreSQL connection ended");
                }
            });
            Ok::<_, ConnectError>(Connection { client, task })
        });
        match attempt {
            Ok(conn) => {
                self.conn = Some(conn);
                self.statements.clear();
                self.backoff = BACKOFF.0;
                Ok(())
            }
            Err(e) => {
                self.down_because = format!("connecting to PostgreSQL: {e}");
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(BACKOFF.1);
                tracing::warn!(error = %self.down_because, "PostgreSQL unavailable");
                Err(StorageError::Unavailable(self.down_because.clone()))
            }
        }
    }

    /// The result of a round trip; a timeout or a lost connection drops
    /// the connection (the next transaction reconnects) and fails with
    /// [`StorageError::Unavailable`]. Any failure aborts the transaction.
    fn settle<T>(
        &mut self,
        r: Option<Result<Result<T, ::postgres::Error>, tokio::time::error::Elapsed>>,
    ) -> Result<T, StorageError> {
        let e = match r {
            Some(Ok(Ok(t))) => return Ok(t),
            None => StorageError::Unavailable(self.down_because.clone()),
            Some(Err(_)) => {
                self.lost(format!(
                    "PostgreSQL did not answer within {} ms",
                    IO_TIMEOUT.as_millis()
                ));
                StorageError::Unavailable(self.down_because.clone())
            }
            Some(Ok(Err(e))) if connection_lost(&e) => {
                self.lost(format!("the PostgreSQL connection was lost: {e}"));
                StorageError::Unavailable(self.down_because.clone())
            }
            Some(Ok(Err(e))) => e.into(),
        };
        self.failed.get_or_insert_with(|| e.to_string());
        Err(e)
    }

    /// Drops the connection; the next transaction reconnects at once.
    fn lost(&mut self, why: String) {
        tracing::warn!(error = %why, "dropping the PostgreSQL connection");
        self.conn = None;
        self.down_because = why;
        self.retry_at = Instant::now();
    }

    /// The prepared statement for `sql` (prepared on first use).
    fn stmt(&mut self, sql: &str) -> Result<Statement, StorageError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = io!(self, c => c.prepare(sql))?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StorageError> {
        let s = self.stmt(sql)?;
        io!(self, c => c.execute(&s, params))
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<::postgres::Row>, StorageError> {
        let s = self.stmt(sql)?;
        io!(self, c => c.query(&s, params))
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<::postgres::Row>, StorageError> {
        let s = self.stmt(sql)?;
        io!(self, c => c.query_opt(&s, params))
    }

    /// Writes the batched archive entries (those of unknown users and
    /// rooms are skipped, as one at a time would).
    fn flush_archive(&mut self) -> Result<(), StorageError> {
        if self.archive_batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.archive_batch);
        if !self.savepoints.is_empty() {
            // (undone by a rollback to one of them: see `flushed`)
            self.flushed.extend(batch.iter().cloned());
        }
        let users: Vec<&str> = batch.iter().map(|e| e.user.as_str()).collect();
        let ids = batch
            .iter()
            .map(|e| super::archive_key(&e.id))
            .collect::<Result<Vec<i64>, _>>()?;
        let peers: Vec<&str> = batch.iter().map(|e| e.peer.as_str()).collect();
        let stamps: Vec<i64> = batch.iter().map(|e| e.stamp).collect();
        let payloads: Vec<&[u8]> = batch.iter().map(|e| &e.payload[..]).collect();
        self.execute(
            "INSERT INTO archive (username, id, peer, stamp, payload)
             SELECT t.u, t.i, t.p, t.s, t.b
             FROM unnest($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::BYTEA[])
                 WITH ORDINALITY AS t(u, i, p, s, b, n)
             WHERE EXISTS (SELECT 1 FROM users WHERE username = t.u)
                 OR (strpos(t.u, '@') > 0
                     AND EXISTS (SELECT 1 FROM muc_rooms WHERE room = t.u))
             ORDER BY t.n
             ON CONFLICT (username, id) DO NOTHING",
            &[&users, &ids, &peers, &stamps, &payloads],
        )?;
        Ok(())
    }

    fn user_exists(&mut self, username: &str) -> Result<bool, StorageError> {
        Ok(self
            .query_opt("SELECT 1 FROM users WHERE username=$1", &[&username])?
            .is_some())
    }

    /// The stored key of archive id `id`, or [`StorageError::UnknownId`].
    fn archive_key(&mut self, username: &str, id: &str) -> Result<i64, StorageError> {
        let key = super::archive_key(id)?;
        self.query_opt(
            "SELECT 1 FROM archive WHERE username=$1 AND id=$2",
            &[&username, &key],
        )?
        .map(|_| key)
        .ok_or(StorageError::UnknownId)
    }
}

impl Store for Postgres {
    fn begin(&mut self) -> Result<(), StorageError> {
        self.failed = None;
        self.archive_batch.clear();
        self.savepoints.clear();
        self.flushed.clear();
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            // The server restarted or the network failed: connect again.
            self.conn = None;
            self.connect()?;
        }
        io!(self, c => c.batch_execute("BEGIN"))
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        let flushed = self.flush_archive();
        if let Some(why) = self.failed.take() {
            let _ = io!(self, c => c.batch_execute("ROLLBACK"));
            return Err(StorageError::Commit(why));
        }
        flushed?;
        io!(self, c => c.batch_execute("COMMIT"))
    }

    fn rollback(&mut self) {
        self.archive_batch.clear();
        self.savepoints.clear();
        self.flushed.clear();
        if self.conn.is_some() {
            let _ = io!(self, c => c.batch_execute("ROLLBACK"));
        }
        self.failed = None;
    }

    fn savepoint(&mut self) -> Result<(), StorageError> {
        io!(self, c => c.batch_execute("SAVEPOINT job"))?;
        self.savepoints.push(Mark {
            buffered: self.archive_batch.len(),
            flushed: self.flushed.len(),
            failed: self.failed.is_some(),
        });
        Ok(())
    }

    fn rollback_to_savepoint(&mut self) -> Result<(), StorageError> {
        let mark = self.savepoints.pop().unwrap_or(Mark {
            buffered: 0,
            flushed: self.flushed.len(),
            failed: true,
        });
        io!(self, c => c.batch_execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job"))?;
        // A statement that failed after the savepoint no longer aborts the
        // transaction, and archive rows buffered since are not written;
        // rows buffered before it but written out since are undone, so
        // they are buffered again.
        if self.flushed.len() > mark.flushed {
            let end = (mark.flushed + mark.buffered).min(self.flushed.len());
            self.archive_batch = self.flushed[mark.flushed..end].to_vec();
            self.flushed.truncate(mark.flushed);
        } else {
            self.archive_batch.truncate(mark.buffered);
        }
        if !mark.failed {
            self.failed = None;
        }
        Ok(())
    }

    fn release_savepoint(&mut self) -> Result<(), StorageError> {
        self.savepoints.pop();
        if self.savepoints.is_empty() {
            self.flushed.clear();
        }
        io!(self, c => c.batch_execute("RELEASE SAVEPOINT job"))
    }

    fn check_fence(&mut self, fence: &super::WriteFence) -> Result<(), StorageError> {
        let slot = i32::from(fence.slot);
        let holds = self.query_opt(
            crate::shards::FENCE_CHECK,
            &[&slot, &fence.core, &fence.epoch],
        )?;
        match holds {
            Some(_) => Ok(()),
            None => Err(StorageError::Fenced {
                slot: fence.slot,
                epoch: fence.epoch,
            }),
        }
    }

    fn add_user(&mut self, username: &str, c: &StoredCredentials) -> Result<bool, StorageError> {
        let n = self.execute(
            "INSERT INTO users (username, salt, iterations, sha1_stored, sha1_server,
             sha256_stored, sha256_server) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (username) DO NOTHING",
            &[
                &username,
                &c.salt,
                &(c.iterations as i32),
                &c.sha1.stored_key,
                &c.sha1.server_key,
                &c.sha256.stored_key,
                &c.sha256.server_key,
            ],
        )?;
        Ok(n == 1)
    }

    fn set_credentials(
        &mut self,
        username: &str,
        c: &StoredCredentials,
    ) -> Result<bool, StorageError> {
        let n = self.execute(
            "UPDATE users SET salt=$2, iterations=$3, sha1_stored=$4, sha1_server=$5,
             sha256_stored=$6, sha256_server=$7 WHERE username=$1",
            &[
                &username,
                &c.salt,
                &(c.iterations as i32),
                &c.sha1.stored_key,
                &c.sha1.server_key,
                &c.sha256.stored_key,
                &c.sha256.server_key,
            ],
        )?;
        // a new password ends every FAST token (XEP-0484 §6)
        self.execute("DELETE FROM fast_tokens WHERE username=$1", &[&username])?;
        Ok(n == 1)
    }

    fn delete_user(&mut self, username: &str) -> Result<bool, StorageError> {
        self.flush_archive()?;
        // Every table but users (below), the cluster's and muc_rooms: rooms
        // belong to no account, and a room's archive rows (owner a bare
        // JID, with '@') are never a username's (see `delete_muc_room`).
        self.execute("DELETE FROM offline WHERE username=$1", &[&username])?;
        self.execute("DELETE FROM roster WHERE username=$1", &[&username])?;
        self.execute("DELETE FROM archive WHERE username=$1", &[&username])?;
        self.execute("DELETE FROM vcards WHERE username=$1", &[&username])?;
        self.execute("DELETE FROM blocklist WHERE username=$1", &[&username])?;
        self.execute("DELETE FROM private_xml WHERE username=$1", &[&username])?;
        self.execute("DELETE FROM pep_nodes WHERE username=$1", &[&username])?;
        self.execute("DELETE FROM pep_items WHERE username=$1", &[&username])?;
        self.execute(
            "DELETE FROM push_registrations WHERE username=$1",
            &[&username],
        )?;
        self.execute("DELETE FROM fast_tokens WHERE username=$1", &[&username])?;
        // Nobody keeps a subscription to the name (it may be registered again).
        self.execute(
            "DELETE FROM roster WHERE left(jid, length($1) + 1) = $1 || '@'",
            &[&username],
        )?;
        let n = self.execute("DELETE FROM users WHERE username=$1", &[&username])?;
        Ok(n == 1)
    }

    fn credentials(&mut self, username: &str) -> Result<Option<StoredCredentials>, StorageError> {
        let row = self.query_opt(
            "SELECT salt, iterations, sha1_stored, sha1_server, sha256_stored, sha256_server
             FROM users WHERE username=$1",
            &[&username],
        )?;
        Ok(row.map(|r| StoredCredentials {
            salt: r.get(0),
            iterations: r.get::<_, i32>(1) as u32,
            sha1: ScramKeys {
                stored_key: r.get(2),
                server_key: r.get(3),
            },
            sha256: ScramKeys {
                stored_key: r.get(4),
                server_key: r.get(5),
            },
        }))
    }

    fn user_count(&mut self) -> Result<u64, StorageError> {
        let rows = self.query("SELECT COUNT(*) FROM users", &[])?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)) as u64)
    }

    fn store_offline_row(
        &mut self,
        username: &str,
        stamp: &str,
        payload: &[u8],
        quota: OfflineQuota,
    ) -> Result<OfflineRow, StorageError> {
        let count = match quota {
            OfflineQuota::Checked => self.query_opt(
                "SELECT (SELECT COUNT(*) FROM offline WHERE username=$1) FROM users WHERE username=$1",
                &[&username],
            )?,
            OfflineQuota::Exempt => self.query_opt(
                "SELECT 0::BIGINT FROM users WHERE username=$1",
                &[&username],
            )?,
        };
        match count.map(|r| r.get::<_, i64>(0)) {
            None => Ok(OfflineRow::NoSuchUser),
            Some(n) if n >= i64::from(self.offline_quota) => Err(StorageError::QuotaExceeded),
            Some(_) => {
                let row = self.query_opt(
                    "INSERT INTO offline (username, stamp, payload) VALUES ($1, $2, $3) RETURNING id",
                    &[&username, &stamp, &payload],
                )?;
                row.map(|r| OfflineRow::Row(r.get::<_, i64>(0)))
                    .ok_or_else(|| StorageError::Commit("INSERT … RETURNING gave no row".into()))
            }
        }
    }

    fn offline(&mut self, username: &str) -> Result<Vec<OfflineMessage>, StorageError> {
        let rows = self.query(
            "SELECT id, stamp, payload FROM offline WHERE username=$1 ORDER BY id",
            &[&username],
        )?;
        Ok(rows
            .iter()
            .map(|r| OfflineMessage {
                id: r.get(0),
                stamp: r.get(1),
                payload: Bytes::from(r.get::<_, Vec<u8>>(2)),
            })
            .collect())
    }

    fn remove_offline(&mut self, username: &str, last_id: i64) -> Result<(), StorageError> {
        self.execute(
            "DELETE FROM offline WHERE username=$1 AND id<=$2",
            &[&username, &last_id],
        )?;
        Ok(())
    }

    fn remove_offline_rows(&mut self, username: &str, ids: &[i64]) -> Result<(), StorageError> {
        self.execute(
            "DELETE FROM offline WHERE username=$1 AND id = ANY($2)",
            &[&username, &ids],
        )?;
        Ok(())
    }

    fn roster(&mut self, username: &str) -> Result<Roster, StorageError> {
        let version = self
            .query_opt(
                "SELECT roster_version FROM users WHERE username=$1",
                &[&username],
            )?
            .map_or(0, |r| r.get::<_, i64>(0));
        let rows = self.query(
            "SELECT jid, name, groups, subscription, ask, pending_in, listed
             FROM roster WHERE username=$1",
            &[&username],
        )?;
        let items = rows
            .iter()
            .map(|r| RosterItem {
                jid: r.get(0),
                name: r.get(1),
                groups: decode_groups(r.get(2)),
                subscription: Subscription::parse(r.get(3)),
                ask: r.get(4),
                pending_in: r.get(5),
                listed: r.get(6),
            })
            .collect();
        let blocked = self
            .query("SELECT jid FROM blocklist WHERE username=$1", &[&username])?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(Roster {
            version: version as u64,
            items,
            blocked,
        })
    }

    fn block(&mut self, username: &str, jids: &[String]) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO blocklist (username, jid) SELECT $1, j FROM unnest($2::TEXT[]) AS j
             ON CONFLICT (username, jid) DO NOTHING",
            &[&username, &jids],
        )?;
        Ok(())
    }

    fn unblock(&mut self, username: &str, jids: &[String]) -> Result<(), StorageError> {
        if jids.is_empty() {
            self.execute("DELETE FROM blocklist WHERE username=$1", &[&username])?;
        } else {
            self.execute(
                "DELETE FROM blocklist WHERE username=$1 AND jid = ANY($2)",
                &[&username, &jids],
            )?;
        }
        Ok(())
    }

    fn blocks_any(&mut self, username: &str, jids: &[String]) -> Result<bool, StorageError> {
        Ok(self
            .query_opt(
                "SELECT 1 FROM blocklist WHERE username=$1 AND jid = ANY($2) LIMIT 1",
                &[&username, &jids],
            )?
            .is_some())
    }

    fn blockers(&mut self, users: &[String], jids: &[String]) -> Result<Vec<String>, StorageError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        // (one round trip for a whole roster)
        Ok(self
            .query(
                "SELECT DISTINCT username FROM blocklist
                 WHERE username = ANY($1) AND jid = ANY($2)",
                &[&users, &jids],
            )?
            .into_iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn put_roster_item(
        &mut self,
        username: &str,
        item: &RosterItem,
        version: u64,
    ) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO roster (username, jid, name, groups, subscription, ask, pending_in, listed)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (username, jid) DO UPDATE SET name=EXCLUDED.name,
             groups=EXCLUDED.groups, subscription=EXCLUDED.subscription, ask=EXCLUDED.ask,
             pending_in=EXCLUDED.pending_in, listed=EXCLUDED.listed",
            &[
                &username,
                &item.jid,
                &item.name,
                &encode_groups(&item.groups),
                &item.subscription.as_str(),
                &item.ask,
                &item.pending_in,
                &item.listed,
            ],
        )?;
        self.execute(
            "UPDATE users SET roster_version=GREATEST(roster_version, $2) WHERE username=$1",
            &[&username, &(version as i64)],
        )?;
        Ok(())
    }

    fn remove_roster_item(
        &mut self,
        username: &str,
        jid: &str,
        version: u64,
    ) -> Result<(), StorageError> {
        self.execute(
            "DELETE FROM roster WHERE username=$1 AND jid=$2",
            &[&username, &jid],
        )?;
        self.execute(
            "UPDATE users SET roster_version=GREATEST(roster_version, $2) WHERE username=$1",
            &[&username, &(version as i64)],
        )?;
        Ok(())
    }

    fn archive(&mut self, e: &ArchiveEntry) -> Result<Stored, StorageError> {
        // Written with the rest of the transaction's entries (see
        // `archive_batch`); an unknown user's entry is dropped then.
        self.archive_batch.push(e.clone());
        Ok(Stored::Stored)
    }

    fn query_archive(
        &mut self,
        username: &str,
        q: &ArchiveQuery,
    ) -> Result<ArchivePage, StorageError> {
        self.flush_archive()?;
        let (filter, _) = super::archive_filter(q);
        let keys = [&q.after, &q.before]
            .into_iter()
            .flatten()
            .map(|id| self.archive_key(username, id))
            .collect::<Result<Vec<i64>, _>>()?;
        let limit = q.max as i64 + 1;
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&username];
        if let Some(w) = &q.with {
            args.push(w);
        }
        if let Some(t) = &q.start {
            args.push(t);
        }
        if let Some(t) = &q.end {
            args.push(t);
        }
        for k in &keys {
            args.push(k);
        }
        args.push(&limit);
        let sql = format!("SELECT id, stamp, payload FROM archive WHERE username = $1{filter}");
        let rows = self.query(&sql, &args)?;
        let mut items = rows
            .iter()
            .map(|r| Archived {
                id: super::archive_id(r.get(0)),
                stamp: r.get(1),
                payload: Bytes::from(r.get::<_, Vec<u8>>(2)),
            })
            .collect();
        Ok(super::page(&mut items, q))
    }

    fn vcard(&mut self, username: &str) -> Result<Option<Bytes>, StorageError> {
        Ok(self
            .query_opt("SELECT vcard FROM vcards WHERE username=$1", &[&username])?
            .map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))))
    }

    fn private_xml(
        &mut self,
        username: &str,
        namespace: &str,
    ) -> Result<Option<Bytes>, StorageError> {
        Ok(self
            .query_opt(
                "SELECT element FROM private_xml WHERE username=$1 AND namespace=$2",
                &[&username, &namespace],
            )?
            .map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))))
    }

    fn set_private_xml(
        &mut self,
        username: &str,
        namespace: &str,
        element: &[u8],
    ) -> Result<Stored, StorageError> {
        if !self.user_exists(username)? {
            return Ok(Stored::NoSuchUser);
        }
        let others: i64 = self
            .query_opt(
                "SELECT COUNT(*) FROM private_xml WHERE username=$1 AND namespace<>$2",
                &[&username, &namespace],
            )?
            .map_or(0, |r| r.get(0));
        if others >= super::MAX_PRIVATE_NAMESPACES {
            return Err(StorageError::QuotaExceeded);
        }
        self.execute(
            "INSERT INTO private_xml (username, namespace, element) VALUES ($1, $2, $3)
             ON CONFLICT (username, namespace) DO UPDATE SET element=EXCLUDED.element",
            &[&username, &namespace, &element],
        )?;
        Ok(Stored::Stored)
    }

    super::pep::store_calls!();

    fn pep_last_items(
        &mut self,
        owners: &[String],
        nodes: &[String],
    ) -> Result<Vec<PepLastItem>, StorageError> {
        if owners.is_empty() || nodes.is_empty() {
            return Ok(Vec::new());
        }
        // (one round trip for a whole roster)
        let rows = self.query(
            "SELECT DISTINCT ON (i.username, i.node)
                 i.username, i.node, n.access, n.max_items, i.item_id, i.payload
             FROM pep_items i JOIN pep_nodes n ON n.username = i.username AND n.node = i.node
             WHERE i.username = ANY($1) AND i.node = ANY($2)
             ORDER BY i.username, i.node, i.seq DESC",
            &[&owners, &nodes],
        )?;
        Ok(rows
            .into_iter()
            .map(|r| PepLastItem {
                owner: r.get(0),
                node: r.get(1),
                config: PepConfig {
                    access: PepAccess::stored(r.get(2)),
                    max_items: r.get::<_, i32>(3) as u32,
                },
                item: PepItem {
                    id: r.get(4),
                    payload: Bytes::from(r.get::<_, Vec<u8>>(5)),
                },
            })
            .collect())
    }

    fn set_vcard(&mut self, username: &str, vcard: &[u8]) -> Result<Stored, StorageError> {
        if !self.user_exists(username)? {
            return Ok(Stored::NoSuchUser);
        }
        self.execute(
            "INSERT INTO vcards (username, vcard) VALUES ($1, $2)
             ON CONFLICT (username) DO UPDATE SET vcard=EXCLUDED.vcard",
            &[&username, &vcard],
        )?;
        Ok(Stored::Stored)
    }

    fn muc_room(&mut self, room: &str) -> Result<Option<Bytes>, StorageError> {
        self.query_opt("SELECT record FROM muc_rooms WHERE room=$1", &[&room])?
            .map(|r| r.try_get::<_, Vec<u8>>(0).map(Bytes::from))
            .transpose()
            .map_err(StorageError::from)
    }

    fn set_muc_room(&mut self, room: &str, record: &[u8]) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO muc_rooms (room, record) VALUES ($1, $2)
             ON CONFLICT (room) DO UPDATE SET record=EXCLUDED.record",
            &[&room, &record],
        )?;
        Ok(())
    }

    fn delete_muc_room(&mut self, room: &str) -> Result<bool, StorageError> {
        // (entries buffered for the room are written first, then deleted)
        self.flush_archive()?;
        if super::is_room(room) {
            self.execute("DELETE FROM archive WHERE username=$1", &[&room])?;
        }
        let n = self.execute("DELETE FROM muc_rooms WHERE room=$1", &[&room])?;
        Ok(n > 0)
    }

    fn muc_rooms(&mut self, limit: usize) -> Result<Vec<String>, StorageError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query(
            "SELECT room FROM muc_rooms ORDER BY room LIMIT $1",
            &[&limit],
        )?
        .iter()
        .map(|r| r.try_get(0).map_err(StorageError::from))
        .collect()
    }

    fn push_enable(
        &mut self,
        username: &str,
        jid: &str,
        node: &str,
        options: Option<&[u8]>,
    ) -> Result<Stored, StorageError> {
        if !self.user_exists(username)? {
            return Ok(Stored::NoSuchUser);
        }
        let newest: i64 = self
            .query_opt(
                "SELECT COALESCE(MAX(created), 0)::BIGINT FROM push_registrations
                 WHERE username=$1",
                &[&username],
            )?
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0);
        let created = super::push::created_stamp(newest);
        self.execute(
            "INSERT INTO push_registrations (username, jid, node, options, created)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (username, jid, node)
             DO UPDATE SET options=EXCLUDED.options, created=EXCLUDED.created",
            &[&username, &jid, &node, &options, &created],
        )?;
        // (stamps are distinct per user: everything at or before the
        // newest beyond the bound goes)
        self.execute(
            "DELETE FROM push_registrations WHERE username=$1 AND created <=
             (SELECT created FROM push_registrations WHERE username=$1
              ORDER BY created DESC LIMIT 1 OFFSET $2)",
            &[&username, &super::MAX_PUSH_REGISTRATIONS],
        )?;
        Ok(Stored::Stored)
    }

    fn push_disable(
        &mut self,
        username: &str,
        jid: &str,
        node: Option<&str>,
    ) -> Result<usize, StorageError> {
        let n = match node {
            Some(node) => self.execute(
                "DELETE FROM push_registrations WHERE username=$1 AND jid=$2 AND node=$3",
                &[&username, &jid, &node],
            )?,
            None => self.execute(
                "DELETE FROM push_registrations WHERE username=$1 AND jid=$2",
                &[&username, &jid],
            )?,
        };
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn push_registrations(
        &mut self,
        username: &str,
    ) -> Result<Vec<PushRegistration>, StorageError> {
        self.query(
            "SELECT jid, node, options, created FROM push_registrations
             WHERE username=$1 ORDER BY created, jid, node",
            &[&username],
        )?
        .iter()
        .map(|r| {
            Ok(PushRegistration {
                jid: r.try_get(0)?,
                node: r.try_get(1)?,
                options: r.try_get::<_, Option<Vec<u8>>>(2)?.map(Bytes::from),
                created: r.try_get(3)?,
            })
        })
        .collect()
    }

    fn fast_tokens(
        &mut self,
        username: &str,
        client: &[u8],
    ) -> Result<Vec<FastToken>, StorageError> {
        let rows = self
            .query(
                "SELECT slot, seed, mechanism, expires_at, last_count FROM fast_tokens
                 WHERE username=$1 AND client=$2 ORDER BY slot",
                &[&username, &client],
            )?
            .iter()
            .map(|r| {
                Ok((
                    i64::from(r.try_get::<_, i16>(0)?),
                    FastToken {
                        slot: FastSlot::Current,
                        seed: r.try_get(1)?,
                        mechanism: r.try_get(2)?,
                        expires_at: r.try_get(3)?,
                        last_count: r.try_get(4)?,
                    },
                ))
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        Ok(super::fast::with_slots(rows))
    }

    fn fast_issue(
        &mut self,
        username: &str,
        client: &[u8],
        token: &FastToken,
    ) -> Result<Stored, StorageError> {
        if !self.user_exists(username)? {
            return Ok(Stored::NoSuchUser);
        }
        self.execute(
            "INSERT INTO fast_tokens
             (username, client, slot, seed, mechanism, expires_at, last_count)
             VALUES ($1, $2, 1, $3, $4, $5, -1)
             ON CONFLICT (username, client, slot) DO UPDATE SET seed=EXCLUDED.seed,
             mechanism=EXCLUDED.mechanism, expires_at=EXCLUDED.expires_at, last_count=-1",
            &[
                &username,
                &client,
                &token.seed,
                &token.mechanism,
                &token.expires_at,
            ],
        )?;
        self.execute(
            "DELETE FROM fast_tokens WHERE username=$1 AND client IN
             (SELECT client FROM fast_tokens WHERE username=$1 GROUP BY client
              ORDER BY MAX(expires_at) DESC, client OFFSET $2)",
            &[&username, &super::MAX_FAST_CLIENTS],
        )?;
        Ok(Stored::Stored)
    }

    fn fast_use(
        &mut self,
        username: &str,
        client: &[u8],
        token: &FastToken,
        count: Option<i64>,
    ) -> Result<bool, StorageError> {
        let stored = token.slot.stored() as i16;
        let n = self.execute(
            "UPDATE fast_tokens SET last_count = COALESCE($5::BIGINT, last_count)
             WHERE username=$1 AND client=$2 AND slot=$3 AND seed=$4
             AND ($5::BIGINT IS NULL OR last_count < $5::BIGINT)",
            &[&username, &client, &stored, &token.seed, &count],
        )?;
        if n != 1 {
            return Ok(false);
        }
        if token.slot == FastSlot::New {
            self.execute(
                "DELETE FROM fast_tokens WHERE username=$1 AND client=$2 AND slot=0",
                &[&username, &client],
            )?;
            self.execute(
                "UPDATE fast_tokens SET slot=0
                 WHERE username=$1 AND client=$2 AND slot=1 AND seed=$3",
                &[&username, &client, &token.seed],
            )?;
        }
        Ok(true)
    }

    fn fast_invalidate(&mut self, username: &str, client: &[u8]) -> Result<(), StorageError> {
        self.execute(
            "DELETE FROM fast_tokens WHERE username=$1 AND client=$2",
            &[&username, &client],
        )?;
        Ok(())
    }
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Postgres(#[from] ::postgres::Error),
    #[error("no answer within {} ms", IO_TIMEOUT.as_millis())]
    Timeout(#[from] tokio::time::error::Elapsed),
}

/// Whether `e` means the connection is gone (closed, an I/O error, or the
/// server going down: SQLSTATE classes 08 and 57), not just the statement.
fn connection_lost(e: &::postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let class = &code.code()[..2];
        return class == "08" || class == "57" && code.code() != "57014";
    }
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

impl PepTables for Postgres {
    fn account_exists(&mut self, user: &str) -> Result<bool, StorageError> {
        self.user_exists(user)
    }

    fn node(&mut self, user: &str, node: &str) -> Result<Option<PepConfig>, StorageError> {
        Ok(self
            .query_opt(
                "SELECT access, max_items FROM pep_nodes WHERE username=$1 AND node=$2",
                &[&user, &node],
            )?
            .map(|r| PepConfig {
                access: PepAccess::stored(r.get(0)),
                max_items: r.get::<_, i32>(1) as u32,
            }))
    }

    fn node_count(&mut self, user: &str) -> Result<i64, StorageError> {
        Ok(self
            .query_opt("SELECT COUNT(*) FROM pep_nodes WHERE username=$1", &[&user])?
            .map_or(0, |r| r.get(0)))
    }

    fn put_node(&mut self, user: &str, node: &str, config: PepConfig) -> Result<(), StorageError> {
        let max = config.max_items as i32;
        self.execute(
            "INSERT INTO pep_nodes (username, node, access, max_items) VALUES ($1, $2, $3, $4)
             ON CONFLICT (username, node)
             DO UPDATE SET access=EXCLUDED.access, max_items=EXCLUDED.max_items",
            &[&user, &node, &config.access.name(), &max],
        )?;
        Ok(())
    }

    fn drop_node(&mut self, user: &str, node: &str) -> Result<(), StorageError> {
        self.execute(
            "DELETE FROM pep_items WHERE username=$1 AND node=$2",
            &[&user, &node],
        )?;
        self.execute(
            "DELETE FROM pep_nodes WHERE username=$1 AND node=$2",
            &[&user, &node],
        )?;
        Ok(())
    }

    fn bytes_kept(
        &mut self,
        user: &str,
        node: &str,
        id: &str,
        newest: u32,
    ) -> Result<i64, StorageError> {
        let newest = i64::from(newest);
        Ok(self
            .query_opt(
                "SELECT
                     (SELECT COALESCE(SUM(octet_length(payload)), 0) FROM pep_items
                      WHERE username=$1 AND node<>$2)::BIGINT
                   + (SELECT COALESCE(SUM(octet_length(payload)), 0) FROM
                         (SELECT payload FROM pep_items
                          WHERE username=$1 AND node=$2 AND item_id<>$3
                          ORDER BY seq DESC LIMIT $4) AS kept)::BIGINT",
                &[&user, &node, &id, &newest],
            )?
            .map_or(0, |r| r.get(0)))
    }

    fn put_item(&mut self, user: &str, node: &str, item: &PepItem) -> Result<(), StorageError> {
        let payload: &[u8] = &item.payload;
        self.execute(
            "INSERT INTO pep_items (username, node, item_id, seq, payload)
             VALUES ($1, $2, $3,
                 (SELECT COALESCE(MAX(seq), 0) + 1 FROM pep_items WHERE username=$1 AND node=$2),
                 $4)
             ON CONFLICT (username, node, item_id)
             DO UPDATE SET seq=EXCLUDED.seq, payload=EXCLUDED.payload",
            &[&user, &node, &item.id, &payload],
        )?;
        Ok(())
    }

    fn drop_item(&mut self, user: &str, node: &str, id: &str) -> Result<bool, StorageError> {
        Ok(self.execute(
            "DELETE FROM pep_items WHERE username=$1 AND node=$2 AND item_id=$3",
            &[&user, &node, &id],
        )? > 0)
    }

    fn trim(&mut self, user: &str, node: &str, keep: u32) -> Result<(), StorageError> {
        let keep = i64::from(keep);
        self.execute(
            "DELETE FROM pep_items WHERE username=$1 AND node=$2 AND seq <=
             (SELECT seq FROM pep_items WHERE username=$1 AND node=$2
              ORDER BY seq DESC LIMIT 1 OFFSET $3)",
            &[&user, &node, &keep],
        )?;
        Ok(())
    }

    fn items(
        &mut self,
        user: &str,
        node: &str,
        ids: &[String],
        max: u32,
    ) -> Result<Vec<PepItem>, StorageError> {
        let rows = if ids.is_empty() {
            let max = i64::from(max);
            let mut rows = self.query(
                "SELECT item_id, payload FROM pep_items WHERE username=$1 AND node=$2
                 ORDER BY seq DESC LIMIT $3",
                &[&user, &node, &max],
            )?;
            rows.reverse();
            rows
        } else {
            self.query(
                "SELECT item_id, payload FROM pep_items
                 WHERE username=$1 AND node=$2 AND item_id = ANY($3) ORDER BY seq",
                &[&user, &node, &ids],
            )?
        };
        Ok(rows
            .into_iter()
            .map(|r| PepItem {
                id: r.get(0),
                payload: Bytes::from(r.get::<_, Vec<u8>>(1)),
            })
            .collect())
    }
}
