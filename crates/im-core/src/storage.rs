//! Durable storage: accounts (SCRAM credentials, never passwords) and
//! offline messages, in an embedded SQLite database in the data directory.
//!
//! [`Db`] is the synchronous store (also used by `longlink adduser` while
//! the core is stopped). [`Storage`] runs a `Db` on its own thread and gives
//! the async core a handle; the thread drains every queued job into one
//! transaction (group commit), so durable writes do not cost one fsync each.

use std::path::Path;
use std::sync::mpsc;

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;
use xmpp_sasl::{ScramKeys, StoredCredentials};

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The storage thread is gone (the core is shutting down).
    #[error("storage is closed")]
    Closed,
    /// The user's offline queue is full.
    #[error("offline quota exceeded")]
    QuotaExceeded,
}

/// One stored offline message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineMessage {
    /// Row id (ascending in arrival order).
    pub id: i64,
    /// When it was stored (XEP-0082 timestamp).
    pub stamp: String,
    /// The stanza as routed.
    pub payload: Bytes,
}

/// Outcome of storing an offline message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Stored durably.
    Stored,
    /// The addressed local user does not exist.
    NoSuchUser,
}

const SCHEMA: &[&str] = &[
    // version 1
    "CREATE TABLE users (
        username TEXT PRIMARY KEY,
        salt BLOB NOT NULL,
        iterations INTEGER NOT NULL,
        sha1_stored BLOB NOT NULL,
        sha1_server BLOB NOT NULL,
        sha256_stored BLOB NOT NULL,
        sha256_server BLOB NOT NULL
    );
    CREATE TABLE offline (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        username TEXT NOT NULL,
        stamp TEXT NOT NULL,
        payload BLOB NOT NULL
    );
    CREATE INDEX offline_by_user ON offline(username, id);",
];

/// The synchronous store over one SQLite connection.
pub struct Db {
    conn: Connection,
    offline_quota: u32,
}

impl Db {
    /// Opens (creating and migrating) `dir/longlink.db`.
    pub fn open(dir: &Path, offline_quota: u32) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!("{}: {e}", dir.display())),
            )
        })?;
        let conn = Connection::open(dir.join("longlink.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, step) in SCHEMA.iter().enumerate().skip(version as usize) {
            conn.execute_batch(&format!(
                "BEGIN; {step}; PRAGMA user_version = {}; COMMIT;",
                i + 1
            ))?;
        }
        Ok(Self {
            conn,
            offline_quota,
        })
    }

    /// The seven parameters of an account row, username first.
    fn account_params<'a>(
        username: &'a str,
        c: &'a StoredCredentials,
    ) -> impl rusqlite::Params + 'a {
        (
            username,
            &c.salt,
            c.iterations,
            &c.sha1.stored_key,
            &c.sha1.server_key,
            &c.sha256.stored_key,
            &c.sha256.server_key,
        )
    }

    /// Creates an account; returns false if it exists.
    pub fn add_user(
        &self,
        username: &str,
        creds: &StoredCredentials,
    ) -> Result<bool, StorageError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO users VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            Self::account_params(username, creds),
        )?;
        Ok(n == 1)
    }

    /// Replaces an account's credentials; returns false if it does not exist.
    pub fn set_credentials(
        &self,
        username: &str,
        creds: &StoredCredentials,
    ) -> Result<bool, StorageError> {
        let n = self.conn.execute(
            "UPDATE users SET salt=?2, iterations=?3, sha1_stored=?4, sha1_server=?5,
             sha256_stored=?6, sha256_server=?7 WHERE username=?1",
            Self::account_params(username, creds),
        )?;
        Ok(n == 1)
    }

    /// Deletes an account and its offline messages; returns false if absent.
    pub fn delete_user(&self, username: &str) -> Result<bool, StorageError> {
        self.conn
            .execute("DELETE FROM offline WHERE username=?1", [username])?;
        let n = self
            .conn
            .execute("DELETE FROM users WHERE username=?1", [username])?;
        Ok(n == 1)
    }

    /// An account's stored credentials.
    pub fn credentials(&self, username: &str) -> Result<Option<StoredCredentials>, StorageError> {
        Ok(self
            .conn
            .query_row(
                "SELECT salt, iterations, sha1_stored, sha1_server, sha256_stored, sha256_server
                 FROM users WHERE username=?1",
                [username],
                |r| {
                    Ok(StoredCredentials {
                        salt: r.get(0)?,
                        iterations: r.get(1)?,
                        sha1: ScramKeys {
                            stored_key: r.get(2)?,
                            server_key: r.get(3)?,
                        },
                        sha256: ScramKeys {
                            stored_key: r.get(4)?,
                            server_key: r.get(5)?,
                        },
                    })
                },
            )
            .optional()?)
    }

    /// Number of accounts.
    pub fn user_count(&self) -> Result<u64, StorageError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?)
    }

    /// Stores an offline message for an existing user, within the quota.
    pub fn store_offline(
        &self,
        username: &str,
        stamp: &str,
        payload: &[u8],
    ) -> Result<Stored, StorageError> {
        let count: Option<u32> = self
            .conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM offline WHERE username=?1) FROM users WHERE username=?1",
                [username],
                |r| r.get(0),
            )
            .optional()?;
        match count {
            None => Ok(Stored::NoSuchUser),
            Some(n) if n >= self.offline_quota => Err(StorageError::QuotaExceeded),
            Some(_) => {
                self.conn.execute(
                    "INSERT INTO offline (username, stamp, payload) VALUES (?1, ?2, ?3)",
                    params![username, stamp, payload],
                )?;
                Ok(Stored::Stored)
            }
        }
    }

    /// A user's offline messages, oldest first.
    pub fn offline(&self, username: &str) -> Result<Vec<OfflineMessage>, StorageError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, stamp, payload FROM offline WHERE username=?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([username], |r| {
            Ok(OfflineMessage {
                id: r.get(0)?,
                stamp: r.get(1)?,
                payload: Bytes::from(r.get::<_, Vec<u8>>(2)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes delivered offline messages up to and including `last_id`.
    pub fn remove_offline(&self, username: &str, last_id: i64) -> Result<(), StorageError> {
        self.conn.execute(
            "DELETE FROM offline WHERE username=?1 AND id<=?2",
            params![username, last_id],
        )?;
        Ok(())
    }
}

/// Called with the commit outcome once the job's transaction is over.
type Completion = Box<dyn FnOnce(Result<(), StorageError>) + Send>;
type Job = Box<dyn FnOnce(&Db) -> Completion + Send>;

/// Async handle to the storage thread (cheap to clone).
#[derive(Clone)]
pub struct Storage {
    jobs: mpsc::SyncSender<Job>,
}

/// Most jobs waiting for the storage thread; callers wait beyond that.
const QUEUE: usize = 4096;
/// Most jobs committed in one transaction.
const BATCH: usize = 512;

impl Storage {
    /// Starts the storage thread over an opened database.
    pub fn start(db: Db) -> Self {
        let (jobs, rx) = mpsc::sync_channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("storage".into())
            .spawn(move || run(db, rx))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the storage thread"));
        Self { jobs }
    }

    /// Runs `f` on the storage thread inside a transaction; the result is
    /// returned after the transaction committed.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        self.submit(f).await
    }

    /// Queues `f` now (jobs run in the order they were submitted, unless the
    /// queue is full) and returns the future of its committed result.
    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<T, StorageError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, StorageError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |db| {
            let result = f(db);
            Box::new(move |commit: Result<(), StorageError>| {
                let _ = tx.send(commit.and(result));
            })
        });
        let jobs = self.jobs.clone();
        let queued = jobs.try_send(job);
        async move {
            match queued {
                Ok(()) => {}
                // The channel is bounded: wait on a blocking thread when it is full.
                Err(mpsc::TrySendError::Full(job)) => {
                    tokio::task::spawn_blocking(move || jobs.send(job))
                        .await
                        .map_err(|_| StorageError::Closed)?
                        .map_err(|_| StorageError::Closed)?;
                }
                Err(mpsc::TrySendError::Disconnected(_)) => return Err(StorageError::Closed),
            }
            rx.await.map_err(|_| StorageError::Closed)?
        }
    }
}

fn run(db: Db, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let begun = db.conn.execute_batch("BEGIN IMMEDIATE");
        let completions: Vec<Completion> = batch.into_iter().map(|job| job(&db)).collect();
        let commit = begun.and_then(|()| db.conn.execute_batch("COMMIT"));
        if let Err(e) = &commit {
            tracing::error!(error = %e, "storage commit failed");
            let _ = db.conn.execute_batch("ROLLBACK");
        }
        for done in completions {
            done(match &commit {
                Ok(()) => Ok(()),
                Err(e) => Err(StorageError::Sqlite(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                    Some(e.to_string()),
                ))),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_offline_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path(), 2).unwrap();
            let creds = StoredCredentials::new("pw", 4096);
            assert!(db.add_user("alice", &creds).unwrap());
            assert!(!db.add_user("alice", &creds).unwrap());
            assert_eq!(
                db.store_offline("bob", "t", b"x").unwrap(),
                Stored::NoSuchUser
            );
            assert_eq!(
                db.store_offline("alice", "t1", b"<m1/>").unwrap(),
                Stored::Stored
            );
            assert_eq!(
                db.store_offline("alice", "t2", b"<m2/>").unwrap(),
                Stored::Stored
            );
            assert!(matches!(
                db.store_offline("alice", "t3", b"<m3/>"),
                Err(StorageError::QuotaExceeded)
            ));
        }
        let db = Db::open(dir.path(), 2).unwrap();
        assert!(
            db.credentials("alice")
                .unwrap()
                .unwrap()
                .verify_password("pw")
        );
        let msgs = db.offline("alice").unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(&msgs[0].payload[..], b"<m1/>");
        db.remove_offline("alice", msgs[1].id).unwrap();
        assert!(db.offline("alice").unwrap().is_empty());
        assert!(db.delete_user("alice").unwrap());
        assert!(db.credentials("alice").unwrap().is_none());
    }

    #[tokio::test]
    async fn storage_thread_group_commits() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::start(Db::open(dir.path(), 1000).unwrap());
        let creds = StoredCredentials::new("pw", 4096);
        storage
            .call(move |db| db.add_user("u", &creds))
            .await
            .unwrap();
        let mut calls = Vec::new();
        for i in 0..100 {
            let s = storage.clone();
            calls.push(tokio::spawn(async move {
                s.call(move |db| db.store_offline("u", "t", format!("<m{i}/>").as_bytes()))
                    .await
            }));
        }
        for c in calls {
            assert_eq!(c.await.unwrap().unwrap(), Stored::Stored);
        }
        let n = storage
            .call(|db| db.offline("u").map(|v| v.len()))
            .await
            .unwrap();
        assert_eq!(n, 100);
    }
}
