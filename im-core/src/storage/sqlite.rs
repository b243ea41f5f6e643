//! The embedded backend: SQLite in WAL mode with full fsync, one file in
//! the data directory.

use std::path::Path;

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use xmpp_sasl::{ScramKeys, StoredCredentials};

use super::pep::{PepAccess, PepTables};
use super::{
    ArchiveEntry, ArchivePage, ArchiveQuery, Archived, FastSlot, FastToken, OfflineMessage,
    OfflineQuota, OfflineRow, PepConfig, PepItem, PepLastItem, PushRegistration, Roster,
    RosterItem, StorageError, Store, Stored, Subscription, decode_groups, encode_groups,
};

/// Schema migrations; `PRAGMA user_version` records how many ran.
const SCHEMA: &[&str] = &[
    // 1: accounts and offline messages
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
    // 2: rosters, archive, vCards
    "ALTER TABLE users ADD COLUMN roster_version INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE roster (
        username TEXT NOT NULL,
        jid TEXT NOT NULL,
        name TEXT,
        groups TEXT NOT NULL,
        subscription TEXT NOT NULL,
        ask INTEGER NOT NULL,
        pending_in INTEGER NOT NULL,
        listed INTEGER NOT NULL,
        PRIMARY KEY (username, jid)
    );
    CREATE TABLE archive (
        username TEXT NOT NULL,
        id INTEGER NOT NULL,
        peer TEXT NOT NULL,
        stamp INTEGER NOT NULL,
        payload BLOB NOT NULL,
        PRIMARY KEY (username, id)
    ) WITHOUT ROWID;
    CREATE INDEX archive_by_peer ON archive(username, peer, id);
    CREATE TABLE vcards (
        username TEXT PRIMARY KEY,
        vcard BLOB NOT NULL
    );",
    // 3: block lists (XEP-0191)
    "CREATE TABLE blocklist (
        username TEXT NOT NULL,
        jid TEXT NOT NULL,
        PRIMARY KEY (username, jid)
    );",
    // 4: private XML storage (XEP-0049)
    "CREATE TABLE private_xml (
        username TEXT NOT NULL,
        namespace TEXT NOT NULL,
        element BLOB NOT NULL,
        PRIMARY KEY (username, namespace)
    );",
    // 5: personal eventing (XEP-0163): nodes and their items, by age
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
        seq INTEGER NOT NULL,
        payload BLOB NOT NULL,
        PRIMARY KEY (username, node, item_id)
    );
    CREATE INDEX pep_items_by_age ON pep_items(username, node, seq);",
    // 6: persistent group-chat rooms (XEP-0045), by bare JID; their
    // archives are in `archive` with the room's bare JID as `username`
    "CREATE TABLE muc_rooms (
        room TEXT PRIMARY KEY,
        record BLOB NOT NULL
    );",
    // 7: push registrations (XEP-0357): an app server's node per row, with
    // the publish-options form; `created` (µs) orders a user's rows
    "CREATE TABLE push_registrations (
        username TEXT NOT NULL,
        jid TEXT NOT NULL,
        node TEXT NOT NULL,
        options BLOB,
        created INTEGER NOT NULL,
        PRIMARY KEY (username, jid, node)
    );",
    // 8: FAST tokens (XEP-0484): per user and user agent (SHA-256 of its
    // id), slot 0 the current token and 1 a new unused one; the token is
    // derived from `seed` with the core's FAST key
    "CREATE TABLE fast_tokens (
        username TEXT NOT NULL,
        client BLOB NOT NULL,
        slot INTEGER NOT NULL,
        seed BLOB NOT NULL,
        mechanism TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        last_count INTEGER NOT NULL DEFAULT -1,
        PRIMARY KEY (username, client, slot)
    );",
];

/// The embedded store over one SQLite connection.
pub struct Sqlite {
    conn: Connection,
    offline_quota: u32,
}

impl Sqlite {
    /// Opens (creating and migrating) `dir/longlink.db`.
    pub fn open(dir: &Path, offline_quota: u32) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)?;
        let conn = Connection::open(dir.join("longlink.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // 64 MiB of page cache (the archive's indexes stay in memory) and
        // checkpoints every 32 MiB of WAL instead of every 4 MiB.
        conn.pragma_update(None, "cache_size", -65536)?;
        conn.pragma_update(None, "wal_autocheckpoint", 8192)?;
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

    fn user_exists(&self, username: &str) -> Result<bool, StorageError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM users WHERE username=?1")?
            .exists([username])?)
    }

    /// Whether an archive entry of `owner` is kept: the account's, or the
    /// stored room's if `owner` is a room's bare JID.
    fn archive_owner_exists(&self, owner: &str) -> Result<bool, StorageError> {
        if !super::is_room(owner) {
            return self.user_exists(owner);
        }
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM muc_rooms WHERE room=?1")?
            .exists([owner])?)
    }

    /// The stored key of archive id `id`, or [`StorageError::UnknownId`].
    fn archive_key(&self, username: &str, id: &str) -> Result<i64, StorageError> {
        let key = super::archive_key(id)?;
        let found = self
            .conn
            .prepare_cached("SELECT 1 FROM archive WHERE username=?1 AND id=?2")?
            .exists(params![username, key])?;
        found.then_some(key).ok_or(StorageError::UnknownId)
    }
}

impl Store for Sqlite {
    fn begin(&mut self) -> Result<(), StorageError> {
        Ok(self.conn.execute_batch("BEGIN IMMEDIATE")?)
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        Ok(self.conn.execute_batch("COMMIT")?)
    }

    fn rollback(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }

    fn savepoint(&mut self) -> Result<(), StorageError> {
        Ok(self.conn.execute_batch("SAVEPOINT job")?)
    }

    fn rollback_to_savepoint(&mut self) -> Result<(), StorageError> {
        Ok(self.conn.execute_batch("ROLLBACK TO job; RELEASE job")?)
    }

    fn release_savepoint(&mut self) -> Result<(), StorageError> {
        Ok(self.conn.execute_batch("RELEASE job")?)
    }

    fn add_user(
        &mut self,
        username: &str,
        creds: &StoredCredentials,
    ) -> Result<bool, StorageError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO users (username, salt, iterations, sha1_stored, sha1_server,
             sha256_stored, sha256_server) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            Self::account_params(username, creds),
        )?;
        Ok(n == 1)
    }

    fn set_credentials(
        &mut self,
        username: &str,
        creds: &StoredCredentials,
    ) -> Result<bool, StorageError> {
        let n = self.conn.execute(
            "UPDATE users SET salt=?2, iterations=?3, sha1_stored=?4, sha1_server=?5,
             sha256_stored=?6, sha256_server=?7 WHERE username=?1",
            Self::account_params(username, creds),
        )?;
        // a new password ends every FAST token (XEP-0484 §6)
        self.conn
            .execute("DELETE FROM fast_tokens WHERE username=?1", [username])?;
        Ok(n == 1)
    }

    fn delete_user(&mut self, username: &str) -> Result<bool, StorageError> {
        // Every table but users (below) and muc_rooms: rooms belong to no
        // account, and a room's archive rows (owner a bare JID, with '@')
        // are never a username's (see `delete_muc_room`).
        for table in [
            "offline",
            "roster",
            "archive",
            "vcards",
            "blocklist",
            "private_xml",
            "pep_nodes",
            "pep_items",
            "push_registrations",
            "fast_tokens",
        ] {
            self.conn.execute(
                &format!("DELETE FROM {table} WHERE username=?1"),
                [username],
            )?;
        }
        // Nobody keeps a subscription to the name (it may be registered again).
        self.conn.execute(
            "DELETE FROM roster WHERE substr(jid, 1, length(?1) + 1) = ?1 || '@'",
            [username],
        )?;
        let n = self
            .conn
            .execute("DELETE FROM users WHERE username=?1", [username])?;
        Ok(n == 1)
    }

    fn credentials(&mut self, username: &str) -> Result<Option<StoredCredentials>, StorageError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT salt, iterations, sha1_stored, sha1_server, sha256_stored, sha256_server
                 FROM users WHERE username=?1",
            )?
            .query_row([username], |r| {
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
            })
            .optional()?)
    }

    fn user_count(&mut self) -> Result<u64, StorageError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?)
    }

    fn store_offline_row(
        &mut self,
        username: &str,
        stamp: &str,
        payload: &[u8],
        quota: OfflineQuota,
    ) -> Result<OfflineRow, StorageError> {
        let count: Option<u32> = match quota {
            OfflineQuota::Checked => self
                .conn
                .prepare_cached(
                    "SELECT (SELECT COUNT(*) FROM offline WHERE username=?1) FROM users WHERE username=?1",
                )?
                .query_row([username], |r| r.get(0))
                .optional()?,
            OfflineQuota::Exempt => self
                .conn
                .prepare_cached("SELECT 0 FROM users WHERE username=?1")?
                .query_row([username], |r| r.get(0))
                .optional()?,
        };
        match count {
            None => Ok(OfflineRow::NoSuchUser),
            Some(n) if n >= self.offline_quota => Err(StorageError::QuotaExceeded),
            Some(_) => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO offline (username, stamp, payload) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![username, stamp, payload])?;
                Ok(OfflineRow::Row(self.conn.last_insert_rowid()))
            }
        }
    }

    fn offline(&mut self, username: &str) -> Result<Vec<OfflineMessage>, StorageError> {
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

    fn remove_offline(&mut self, username: &str, last_id: i64) -> Result<(), StorageError> {
        self.conn
            .prepare_cached("DELETE FROM offline WHERE username=?1 AND id<=?2")?
            .execute(params![username, last_id])?;
        Ok(())
    }

    fn remove_offline_rows(&mut self, username: &str, ids: &[i64]) -> Result<(), StorageError> {
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM offline WHERE username=?1 AND id=?2")?;
        for id in ids {
            stmt.execute(params![username, id])?;
        }
        Ok(())
    }

    fn roster(&mut self, username: &str) -> Result<Roster, StorageError> {
        let version: Option<i64> = self
            .conn
            .prepare_cached("SELECT roster_version FROM users WHERE username=?1")?
            .query_row([username], |r| r.get(0))
            .optional()?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT jid, name, groups, subscription, ask, pending_in, listed
             FROM roster WHERE username=?1",
        )?;
        let items = stmt
            .query_map([username], |r| {
                Ok(RosterItem {
                    jid: r.get(0)?,
                    name: r.get(1)?,
                    groups: decode_groups(&r.get::<_, String>(2)?),
                    subscription: Subscription::parse(&r.get::<_, String>(3)?),
                    ask: r.get(4)?,
                    pending_in: r.get(5)?,
                    listed: r.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let blocked = self
            .conn
            .prepare_cached("SELECT jid FROM blocklist WHERE username=?1")?
            .query_map([username], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(Roster {
            version: version.unwrap_or(0) as u64,
            items,
            blocked,
        })
    }

    fn block(&mut self, username: &str, jids: &[String]) -> Result<(), StorageError> {
        let mut stmt = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO blocklist (username, jid) VALUES (?1, ?2)")?;
        for jid in jids {
            stmt.execute(params![username, jid])?;
        }
        Ok(())
    }

    fn unblock(&mut self, username: &str, jids: &[String]) -> Result<(), StorageError> {
        if jids.is_empty() {
            self.conn
                .prepare_cached("DELETE FROM blocklist WHERE username=?1")?
                .execute([username])?;
            return Ok(());
        }
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM blocklist WHERE username=?1 AND jid=?2")?;
        for jid in jids {
            stmt.execute(params![username, jid])?;
        }
        Ok(())
    }

    fn blocks_any(&mut self, username: &str, jids: &[String]) -> Result<bool, StorageError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM blocklist WHERE username=?1 AND jid=?2")?;
        for jid in jids {
            if stmt.exists(params![username, jid])? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn put_roster_item(
        &mut self,
        username: &str,
        item: &RosterItem,
        version: u64,
    ) -> Result<(), StorageError> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO roster
                 (username, jid, name, groups, subscription, ask, pending_in, listed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                username,
                item.jid,
                item.name,
                encode_groups(&item.groups),
                item.subscription.as_str(),
                item.ask,
                item.pending_in,
                item.listed
            ])?;
        self.conn
            .prepare_cached(
                "UPDATE users SET roster_version=MAX(roster_version, ?2) WHERE username=?1",
            )?
            .execute(params![username, version as i64])?;
        Ok(())
    }

    fn remove_roster_item(
        &mut self,
        username: &str,
        jid: &str,
        version: u64,
    ) -> Result<(), StorageError> {
        self.conn
            .prepare_cached("DELETE FROM roster WHERE username=?1 AND jid=?2")?
            .execute([username, jid])?;
        self.conn
            .prepare_cached(
                "UPDATE users SET roster_version=MAX(roster_version, ?2) WHERE username=?1",
            )?
            .execute(params![username, version as i64])?;
        Ok(())
    }

    fn archive(&mut self, e: &ArchiveEntry) -> Result<Stored, StorageError> {
        if !self.archive_owner_exists(&e.user)? {
            return Ok(Stored::NoSuchUser);
        }
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO archive (username, id, peer, stamp, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                e.user,
                super::archive_key(&e.id)?,
                e.peer,
                e.stamp,
                &e.payload[..]
            ])?;
        Ok(Stored::Stored)
    }

    fn query_archive(
        &mut self,
        username: &str,
        q: &ArchiveQuery,
    ) -> Result<ArchivePage, StorageError> {
        use rusqlite::types::Value;
        let mut args = vec![Value::Text(username.to_owned())];
        let (filter, used) = super::archive_filter(q);
        if let Some(w) = &q.with {
            args.push(Value::Text(w.clone()));
        }
        args.extend(q.start.map(Value::Integer));
        args.extend(q.end.map(Value::Integer));
        for id in [&q.after, &q.before].into_iter().flatten() {
            args.push(Value::Integer(self.archive_key(username, id)?));
        }
        debug_assert_eq!(args.len(), 1 + used.iter().filter(|u| **u).count());
        args.push(Value::Integer(q.max as i64 + 1));
        let sql = format!("SELECT id, stamp, payload FROM archive WHERE username = $1{filter}");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut items: Vec<Archived> = stmt
            .query_map(rusqlite::params_from_iter(args), |r| {
                Ok(Archived {
                    id: super::archive_id(r.get(0)?),
                    stamp: r.get(1)?,
                    payload: Bytes::from(r.get::<_, Vec<u8>>(2)?),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(super::page(&mut items, q))
    }

    fn vcard(&mut self, username: &str) -> Result<Option<Bytes>, StorageError> {
        Ok(self
            .conn
            .prepare_cached("SELECT vcard FROM vcards WHERE username=?1")?
            .query_row([username], |r| r.get::<_, Vec<u8>>(0))
            .optional()?
            .map(Bytes::from))
    }

    fn private_xml(
        &mut self,
        username: &str,
        namespace: &str,
    ) -> Result<Option<Bytes>, StorageError> {
        Ok(self
            .conn
            .prepare_cached("SELECT element FROM private_xml WHERE username=?1 AND namespace=?2")?
            .query_row([username, namespace], |r| r.get::<_, Vec<u8>>(0))
            .optional()?
            .map(Bytes::from))
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
            .conn
            .prepare_cached("SELECT COUNT(*) FROM private_xml WHERE username=?1 AND namespace<>?2")?
            .query_row([username, namespace], |r| r.get(0))?;
        if others >= super::MAX_PRIVATE_NAMESPACES {
            return Err(StorageError::QuotaExceeded);
        }
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO private_xml (username, namespace, element)
                 VALUES (?1, ?2, ?3)",
            )?
            .execute(params![username, namespace, element])?;
        Ok(Stored::Stored)
    }

    super::pep::store_calls!();

    fn pep_last_items(
        &mut self,
        owners: &[String],
        nodes: &[String],
    ) -> Result<Vec<PepLastItem>, StorageError> {
        // (an indexed lookup per pair: cheap in-process)
        let mut stmt = self.conn.prepare_cached(
            "SELECT n.access, n.max_items, i.item_id, i.payload
             FROM pep_nodes n JOIN pep_items i ON i.username = n.username AND i.node = n.node
             WHERE n.username=?1 AND n.node=?2 ORDER BY i.seq DESC LIMIT 1",
        )?;
        let mut out = Vec::new();
        for owner in owners {
            for node in nodes {
                let found = stmt
                    .query_row([owner, node], |r| {
                        Ok(PepLastItem {
                            owner: owner.clone(),
                            node: node.clone(),
                            config: PepConfig {
                                access: PepAccess::stored(&r.get::<_, String>(0)?),
                                max_items: r.get(1)?,
                            },
                            item: PepItem {
                                id: r.get(2)?,
                                payload: Bytes::from(r.get::<_, Vec<u8>>(3)?),
                            },
                        })
                    })
                    .optional()?;
                out.extend(found);
            }
        }
        Ok(out)
    }

    fn set_vcard(&mut self, username: &str, vcard: &[u8]) -> Result<Stored, StorageError> {
        if !self.user_exists(username)? {
            return Ok(Stored::NoSuchUser);
        }
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO vcards (username, vcard) VALUES (?1, ?2)")?
            .execute(params![username, vcard])?;
        Ok(Stored::Stored)
    }

    fn muc_room(&mut self, room: &str) -> Result<Option<Bytes>, StorageError> {
        Ok(self
            .conn
            .prepare_cached("SELECT record FROM muc_rooms WHERE room=?1")?
            .query_row([room], |r| r.get::<_, Vec<u8>>(0))
            .optional()?
            .map(Bytes::from))
    }

    fn set_muc_room(&mut self, room: &str, record: &[u8]) -> Result<(), StorageError> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO muc_rooms (room, record) VALUES (?1, ?2)")?
            .execute(params![room, record])?;
        Ok(())
    }

    fn delete_muc_room(&mut self, room: &str) -> Result<bool, StorageError> {
        if super::is_room(room) {
            self.conn
                .prepare_cached("DELETE FROM archive WHERE username=?1")?
                .execute([room])?;
        }
        let n = self
            .conn
            .prepare_cached("DELETE FROM muc_rooms WHERE room=?1")?
            .execute([room])?;
        Ok(n > 0)
    }

    fn muc_rooms(&mut self, limit: usize) -> Result<Vec<String>, StorageError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // (TEXT compares as BINARY here: byte order, as in PostgreSQL's "C")
        Ok(self
            .conn
            .prepare_cached("SELECT room FROM muc_rooms ORDER BY room LIMIT ?1")?
            .query_map([limit], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
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
            .conn
            .prepare_cached(
                "SELECT COALESCE(MAX(created), 0) FROM push_registrations WHERE username=?1",
            )?
            .query_row([username], |r| r.get(0))?;
        let created = super::push::created_stamp(newest);
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO push_registrations (username, jid, node, options, created)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![username, jid, node, options, created])?;
        // (stamps are distinct per user: everything at or before the
        // newest beyond the bound goes)
        self.conn
            .prepare_cached(
                "DELETE FROM push_registrations WHERE username=?1 AND created <=
                 (SELECT created FROM push_registrations WHERE username=?1
                  ORDER BY created DESC LIMIT 1 OFFSET ?2)",
            )?
            .execute(params![username, super::MAX_PUSH_REGISTRATIONS])?;
        Ok(Stored::Stored)
    }

    fn push_disable(
        &mut self,
        username: &str,
        jid: &str,
        node: Option<&str>,
    ) -> Result<usize, StorageError> {
        Ok(match node {
            Some(node) => self
                .conn
                .prepare_cached(
                    "DELETE FROM push_registrations WHERE username=?1 AND jid=?2 AND node=?3",
                )?
                .execute([username, jid, node])?,
            None => self
                .conn
                .prepare_cached("DELETE FROM push_registrations WHERE username=?1 AND jid=?2")?
                .execute([username, jid])?,
        })
    }

    fn push_registrations(
        &mut self,
        username: &str,
    ) -> Result<Vec<PushRegistration>, StorageError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT jid, node, options, created FROM push_registrations
                 WHERE username=?1 ORDER BY created, jid, node",
            )?
            .query_map([username], |r| {
                Ok(PushRegistration {
                    jid: r.get(0)?,
                    node: r.get(1)?,
                    options: r.get::<_, Option<Vec<u8>>>(2)?.map(Bytes::from),
                    created: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    }

    fn fast_tokens(
        &mut self,
        username: &str,
        client: &[u8],
    ) -> Result<Vec<FastToken>, StorageError> {
        self.fast_tokens_of(username, client)
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
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO fast_tokens
                 (username, client, slot, seed, mechanism, expires_at, last_count)
                 VALUES (?1, ?2, 1, ?3, ?4, ?5, -1)",
            )?
            .execute(params![
                username,
                client,
                token.seed,
                token.mechanism,
                token.expires_at
            ])?;
        self.conn
            .prepare_cached(
                "DELETE FROM fast_tokens WHERE username=?1 AND client IN
                 (SELECT client FROM fast_tokens WHERE username=?1 GROUP BY client
                  ORDER BY MAX(expires_at) DESC, client LIMIT -1 OFFSET ?2)",
            )?
            .execute(params![username, super::MAX_FAST_CLIENTS])?;
        Ok(Stored::Stored)
    }

    fn fast_use(
        &mut self,
        username: &str,
        client: &[u8],
        token: &FastToken,
        count: Option<i64>,
    ) -> Result<bool, StorageError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE fast_tokens SET last_count = COALESCE(?5, last_count)
                 WHERE username=?1 AND client=?2 AND slot=?3 AND seed=?4
                 AND (?5 IS NULL OR last_count < ?5)",
            )?
            .execute(params![
                username,
                client,
                token.slot.stored(),
                token.seed,
                count
            ])?;
        if n != 1 {
            return Ok(false);
        }
        if token.slot == FastSlot::New {
            self.conn
                .prepare_cached(
                    "DELETE FROM fast_tokens WHERE username=?1 AND client=?2 AND slot=0",
                )?
                .execute(params![username, client])?;
            self.conn
                .prepare_cached(
                    "UPDATE fast_tokens SET slot=0
                     WHERE username=?1 AND client=?2 AND slot=1 AND seed=?3",
                )?
                .execute(params![username, client, token.seed])?;
        }
        Ok(true)
    }

    fn fast_invalidate(&mut self, username: &str, client: &[u8]) -> Result<(), StorageError> {
        self.conn
            .prepare_cached("DELETE FROM fast_tokens WHERE username=?1 AND client=?2")?
            .execute(params![username, client])?;
        Ok(())
    }
}

impl Sqlite {
    fn fast_tokens_of(
        &mut self,
        username: &str,
        client: &[u8],
    ) -> Result<Vec<FastToken>, StorageError> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT slot, seed, mechanism, expires_at, last_count FROM fast_tokens
                 WHERE username=?1 AND client=?2 ORDER BY slot",
            )?
            .query_map(params![username, client], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    FastToken {
                        slot: FastSlot::Current,
                        seed: r.get(1)?,
                        mechanism: r.get(2)?,
                        expires_at: r.get(3)?,
                        last_count: r.get(4)?,
                    },
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(super::fast::with_slots(rows))
    }
}

impl PepTables for Sqlite {
    fn account_exists(&mut self, user: &str) -> Result<bool, StorageError> {
        self.user_exists(user)
    }

    fn node(&mut self, user: &str, node: &str) -> Result<Option<PepConfig>, StorageError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT access, max_items FROM pep_nodes WHERE username=?1 AND node=?2",
            )?
            .query_row([user, node], |r| {
                Ok(PepConfig {
                    access: PepAccess::stored(&r.get::<_, String>(0)?),
                    max_items: r.get(1)?,
                })
            })
            .optional()?)
    }

    fn node_count(&mut self, user: &str) -> Result<i64, StorageError> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM pep_nodes WHERE username=?1")?
            .query_row([user], |r| r.get(0))?)
    }

    fn put_node(&mut self, user: &str, node: &str, config: PepConfig) -> Result<(), StorageError> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO pep_nodes (username, node, access, max_items)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![user, node, config.access.name(), config.max_items])?;
        Ok(())
    }

    fn drop_node(&mut self, user: &str, node: &str) -> Result<(), StorageError> {
        for sql in [
            "DELETE FROM pep_items WHERE username=?1 AND node=?2",
            "DELETE FROM pep_nodes WHERE username=?1 AND node=?2",
        ] {
            self.conn.prepare_cached(sql)?.execute([user, node])?;
        }
        Ok(())
    }

    fn bytes_kept(
        &mut self,
        user: &str,
        node: &str,
        id: &str,
        newest: u32,
    ) -> Result<i64, StorageError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT
                     (SELECT COALESCE(SUM(length(payload)), 0) FROM pep_items
                      WHERE username=?1 AND node<>?2)
                   + (SELECT COALESCE(SUM(length(payload)), 0) FROM
                         (SELECT payload FROM pep_items
                          WHERE username=?1 AND node=?2 AND item_id<>?3
                          ORDER BY seq DESC LIMIT ?4))",
            )?
            .query_row(params![user, node, id, newest], |r| r.get(0))?)
    }

    fn put_item(&mut self, user: &str, node: &str, item: &PepItem) -> Result<(), StorageError> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO pep_items (username, node, item_id, seq, payload)
                 VALUES (?1, ?2, ?3,
                     (SELECT COALESCE(MAX(seq), 0) + 1 FROM pep_items
                      WHERE username=?1 AND node=?2),
                     ?4)",
            )?
            .execute(params![user, node, item.id, &item.payload[..]])?;
        Ok(())
    }

    fn drop_item(&mut self, user: &str, node: &str, id: &str) -> Result<bool, StorageError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM pep_items WHERE username=?1 AND node=?2 AND item_id=?3")?
            .execute([user, node, id])?
            > 0)
    }

    fn trim(&mut self, user: &str, node: &str, keep: u32) -> Result<(), StorageError> {
        self.conn
            .prepare_cached(
                "DELETE FROM pep_items WHERE username=?1 AND node=?2 AND seq <=
                 (SELECT seq FROM pep_items WHERE username=?1 AND node=?2
                  ORDER BY seq DESC LIMIT 1 OFFSET ?3)",
            )?
            .execute(params![user, node, keep])?;
        Ok(())
    }

    fn items(
        &mut self,
        user: &str,
        node: &str,
        ids: &[String],
        max: u32,
    ) -> Result<Vec<PepItem>, StorageError> {
        let row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(i64, PepItem)> {
            Ok((
                r.get(0)?,
                PepItem {
                    id: r.get(1)?,
                    payload: Bytes::from(r.get::<_, Vec<u8>>(2)?),
                },
            ))
        };
        let mut found: Vec<(i64, PepItem)> = Vec::new();
        if ids.is_empty() {
            let mut stmt = self.conn.prepare_cached(
                "SELECT seq, item_id, payload FROM pep_items WHERE username=?1 AND node=?2
                 ORDER BY seq DESC LIMIT ?3",
            )?;
            for r in stmt.query_map(params![user, node, max], row)? {
                found.push(r?);
            }
        } else {
            let mut stmt = self.conn.prepare_cached(
                "SELECT seq, item_id, payload FROM pep_items
                 WHERE username=?1 AND node=?2 AND item_id=?3",
            )?;
            for id in ids {
                found.extend(stmt.query_row([user, node, id], row).optional()?);
            }
        }
        found.sort_by_key(|(seq, _)| *seq);
        Ok(found.into_iter().map(|(_, item)| item).collect())
    }
}
