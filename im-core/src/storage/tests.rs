//! One conformance suite, run against both backends: the embedded one
//! always, PostgreSQL when `LONGLINK_TEST_POSTGRES` names a server (a libpq
//! key-value string such as `host=127.0.0.1 port=5432 user=postgres`; each
//! run creates its own database there). `.ci/run` starts one.

use super::*;

fn both(test: impl Fn(&mut dyn Store, &dyn Fn() -> Box<dyn Store>)) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let reopen = move || Box::new(Sqlite::open(&path, 2).unwrap()) as Box<dyn Store>;
    test(&mut *reopen(), &reopen);
    if let Some(url) = postgres_for_tests("ll_unit") {
        let reopen = move || Box::new(Postgres::open(&url, 2).unwrap()) as Box<dyn Store>;
        test(&mut *reopen(), &reopen);
    }
}

#[test]
fn accounts_and_offline_messages_survive_reopen() {
    both(|db, reopen| {
        let creds = StoredCredentials::new("pw", 4096);
        assert!(db.add_user("alice", &creds).unwrap());
        assert!(!db.add_user("alice", &creds).unwrap());
        assert_eq!(db.user_count().unwrap(), 1);
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
        let mut db = reopen();
        assert!(
            db.credentials("alice")
                .unwrap()
                .unwrap()
                .verify_password("pw")
        );
        let other = StoredCredentials::new("pw2", 4096);
        assert!(db.set_credentials("alice", &other).unwrap());
        assert!(!db.set_credentials("nobody", &other).unwrap());
        assert!(
            db.credentials("alice")
                .unwrap()
                .unwrap()
                .verify_password("pw2")
        );
        let msgs = db.offline("alice").unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(&msgs[0].payload[..], b"<m1/>");
        assert_eq!(msgs[1].stamp, "t2");
        db.remove_offline("alice", msgs[0].id).unwrap();
        assert_eq!(db.offline("alice").unwrap().len(), 1);
        assert!(db.delete_user("alice").unwrap());
        assert!(!db.delete_user("alice").unwrap());
        assert!(db.credentials("alice").unwrap().is_none());
        assert!(db.offline("alice").unwrap().is_empty());
    });
}

#[test]
fn rosters_keep_items_states_and_versions() {
    both(|db, reopen| {
        db.add_user("alice", &StoredCredentials::new("pw", 4096))
            .unwrap();
        assert_eq!(db.roster("alice").unwrap(), Roster::default());
        let bob = RosterItem {
            jid: "bob@x".into(),
            name: Some("Bob".into()),
            groups: vec!["Friends".into(), "Work, \"quoted\"".into()],
            subscription: Subscription::To,
            ask: false,
            pending_in: true,
            listed: true,
        };
        let carol = RosterItem {
            jid: "carol@x".into(),
            ask: true,
            ..Default::default()
        };
        db.put_roster_item("alice", &bob, 1).unwrap();
        db.put_roster_item("alice", &carol, 2).unwrap();
        let mut changed = bob.clone();
        changed.subscription = Subscription::Both;
        changed.name = None;
        db.put_roster_item("alice", &changed, 3).unwrap();
        let mut db = reopen();
        let mut roster = db.roster("alice").unwrap();
        roster.items.sort_by(|a, b| a.jid.cmp(&b.jid));
        assert_eq!(roster.version, 3);
        assert_eq!(roster.items, vec![changed, carol]);
        db.remove_roster_item("alice", "carol@x", 4).unwrap();
        let roster = db.roster("alice").unwrap();
        assert_eq!((roster.version, roster.items.len()), (4, 1));
        // versions never go back
        db.remove_roster_item("alice", "nobody@x", 2).unwrap();
        assert_eq!(db.roster("alice").unwrap().version, 4);
        // a deleted account leaves nobody subscribed to its name
        let creds = StoredCredentials::new("pw", 4096);
        db.add_user("bob", &creds).unwrap();
        db.add_user("bo", &creds).unwrap();
        for (v, jid) in [(1, "alice@x"), (2, "bob@x")] {
            let item = RosterItem {
                jid: jid.into(),
                ..Default::default()
            };
            db.put_roster_item("bo", &item, v).unwrap();
        }
        assert!(db.delete_user("bob").unwrap());
        let left: Vec<String> = db
            .roster("bo")
            .unwrap()
            .items
            .into_iter()
            .map(|i| i.jid)
            .collect();
        assert_eq!(left, vec!["alice@x".to_owned()]);
        assert!(db.delete_user("alice").unwrap());
        assert!(db.roster("alice").unwrap().items.is_empty());
    });
}

/// Archive ids are 16 hex digits (the router's increasing numbers).
fn hex(n: u64) -> String {
    format!("{n:016x}")
}

fn entry(user: &str, id: &str, peer: &str, stamp: i64) -> ArchiveEntry {
    ArchiveEntry {
        user: user.into(),
        id: id.into(),
        peer: peer.into(),
        stamp,
        payload: Bytes::from(format!("<message id='{id}'/>")),
    }
}

fn ids(page: &ArchivePage) -> Vec<&str> {
    page.items.iter().map(|a| a.id.as_str()).collect()
}

#[test]
fn the_archive_pages_both_ways_and_filters() {
    both(|db, reopen| {
        db.add_user("alice", &StoredCredentials::new("pw", 4096))
            .unwrap();
        // archive writes may wait for the commit (PostgreSQL batches them)
        db.begin().unwrap();
        // an unknown user's entry is dropped
        db.archive(&entry("nobody", &hex(1), "bob@x", 1)).unwrap();
        for i in 0..10 {
            let peer = if i % 2 == 0 { "bob@x" } else { "carol@x" };
            let e = entry("alice", &hex(100 + i as u64), peer, 1000 + i);
            assert_eq!(db.archive(&e).unwrap(), Stored::Stored);
        }
        // a repeated id is ignored, not an error that aborts the batch
        assert_eq!(
            db.archive(&entry("alice", &hex(103), "bob@x", 5)).unwrap(),
            Stored::Stored
        );
        db.commit().unwrap();
        let mut db = reopen();
        let h: Vec<String> = (100..110).map(hex).collect();
        assert!(
            db.query_archive(
                "nobody",
                &ArchiveQuery {
                    max: 9,
                    ..Default::default()
                }
            )
            .unwrap()
            .items
            .is_empty()
        );
        let q = |f: &dyn Fn(&mut ArchiveQuery)| {
            let mut q = ArchiveQuery {
                max: 3,
                ..Default::default()
            };
            f(&mut q);
            q
        };
        // oldest first, then the next page after the last id
        let p1 = db.query_archive("alice", &q(&|_| {})).unwrap();
        assert_eq!(
            (ids(&p1), p1.complete),
            (vec![h[0].as_str(), h[1].as_str(), h[2].as_str()], false)
        );
        let p2 = db
            .query_archive("alice", &q(&|q| q.after = Some(h[2].as_str().into())))
            .unwrap();
        assert_eq!(ids(&p2), vec![h[3].as_str(), h[4].as_str(), h[5].as_str()]);
        // newest first: the last page, then the one before it
        let last = db
            .query_archive("alice", &q(&|q| q.from_end = true))
            .unwrap();
        assert_eq!(
            (ids(&last), last.complete),
            (vec![h[7].as_str(), h[8].as_str(), h[9].as_str()], false)
        );
        let before = db
            .query_archive(
                "alice",
                &q(&|q| {
                    q.from_end = true;
                    q.before = Some(h[1].as_str().into());
                }),
            )
            .unwrap();
        assert_eq!((ids(&before), before.complete), (vec![h[0].as_str()], true));
        // by peer and time range
        let bob = db
            .query_archive(
                "alice",
                &q(&|q| {
                    q.with = Some("bob@x".into());
                    q.max = 100;
                }),
            )
            .unwrap();
        assert_eq!(
            (ids(&bob), bob.complete),
            (
                vec![
                    h[0].as_str(),
                    h[2].as_str(),
                    h[4].as_str(),
                    h[6].as_str(),
                    h[8].as_str()
                ],
                true
            )
        );
        let range = db
            .query_archive(
                "alice",
                &q(&|q| {
                    q.start = Some(1003);
                    q.end = Some(1005);
                }),
            )
            .unwrap();
        assert_eq!(
            (ids(&range), range.complete),
            (vec![h[3].as_str(), h[4].as_str(), h[5].as_str()], true)
        );
        assert_eq!(range.items[0].stamp, 1003);
        assert_eq!(
            &range.items[0].payload[..],
            b"<message id='0000000000000067'/>"
        );
        // an unknown id is an error (item-not-found)
        assert!(matches!(
            db.query_archive("alice", &q(&|q| q.after = Some("nope".into()))),
            Err(StorageError::UnknownId)
        ));
        assert!(matches!(
            db.query_archive("alice", &q(&|q| q.before = Some(hex(7)))),
            Err(StorageError::UnknownId)
        ));
        // another user's archive is separate
        assert!(
            db.query_archive("bob", &q(&|_| {}))
                .unwrap()
                .items
                .is_empty()
        );
    });
}

#[test]
fn vcards_are_replaced() {
    both(|db, reopen| {
        db.add_user("alice", &StoredCredentials::new("pw", 4096))
            .unwrap();
        assert_eq!(db.vcard("alice").unwrap(), None);
        assert_eq!(
            db.set_vcard("nobody", b"<vCard/>").unwrap(),
            Stored::NoSuchUser
        );
        db.set_vcard("alice", b"<vCard><NICKNAME>a</NICKNAME></vCard>")
            .unwrap();
        db.set_vcard("alice", b"<vCard><NICKNAME>b</NICKNAME></vCard>")
            .unwrap();
        let mut db = reopen();
        assert_eq!(
            db.vcard("alice").unwrap().as_deref(),
            Some(&b"<vCard><NICKNAME>b</NICKNAME></vCard>"[..])
        );
    });
}

#[tokio::test]
async fn the_storage_thread_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let mut backends: Vec<Option<String>> = vec![None];
    backends.extend(postgres_for_tests("ll_unit").map(Some));
    for url in backends {
        let path = path.clone();
        let storage = Storage::start(move || open(url.as_deref(), &path, 1000)).unwrap();
        let creds = StoredCredentials::new("pw", 4096);
        storage
            .call(move |db| db.add_user("u", &creds))
            .await
            .unwrap();
        let calls: Vec<_> = (0..200)
            .map(|i| {
                storage.submit(move |db| db.archive(&entry("u", &hex(i as u64 + 1), "p@x", i)))
            })
            .collect();
        for c in calls {
            assert_eq!(c.await.unwrap(), Stored::Stored);
        }
        let page = storage
            .call(|db| {
                db.query_archive(
                    "u",
                    &ArchiveQuery {
                        max: 1000,
                        ..Default::default()
                    },
                )
            })
            .await
            .unwrap();
        // all committed, in submission order
        let want: Vec<String> = (1..=200).map(hex).collect();
        assert_eq!(ids(&page), want);
    }
}

/// Each real backend (SQLite in a temp dir; PostgreSQL when configured),
/// freshly opened, as a closure that opens it again.
fn backends(dir: &std::path::Path) -> Vec<Box<dyn Fn() -> Box<dyn Store> + Send + Sync>> {
    let path = dir.to_owned();
    let mut all: Vec<Box<dyn Fn() -> Box<dyn Store> + Send + Sync>> = vec![Box::new(move || {
        Box::new(Sqlite::open(&path, 1000).unwrap()) as Box<dyn Store>
    })];
    if let Some(url) = postgres_for_tests("ll_unit") {
        all.push(Box::new(move || {
            Box::new(Postgres::open(&url, 1000).unwrap()) as Box<dyn Store>
        }));
    }
    all
}

#[test]
fn the_fault_plan_fails_writes_commits_and_everything_then_heals() {
    let dir = tempfile::tempdir().unwrap();
    for reopen in backends(dir.path()) {
        let plan = FaultPlan::new();
        let mut db = FaultyStore::new(reopen(), plan.clone());
        let creds = StoredCredentials::new("pw", 4096);
        assert!(db.add_user("alice", &creds).unwrap());

        // the next two writes fail, reads do not, the third write works
        plan.fail_writes(2);
        assert!(matches!(
            db.store_offline("alice", "t", b"<a/>"),
            Err(StorageError::Injected)
        ));
        assert_eq!(db.offline("alice").unwrap().len(), 0);
        assert!(matches!(
            db.set_vcard("alice", b"<vCard/>"),
            Err(StorageError::Injected)
        ));
        assert_eq!(
            db.store_offline("alice", "t", b"<b/>").unwrap(),
            Stored::Stored
        );

        // a failed commit rolls the batch back in the real store
        plan.fail_commits(1);
        db.begin().unwrap();
        db.store_offline("alice", "t", b"<lost/>").unwrap();
        assert!(matches!(db.commit(), Err(StorageError::Injected)));
        db.rollback();
        db.begin().unwrap();
        db.store_offline("alice", "t", b"<kept/>").unwrap();
        db.commit().unwrap();

        // everything fails until healed
        plan.fail_all();
        assert!(matches!(db.begin(), Err(StorageError::Injected)));
        assert!(matches!(db.offline("alice"), Err(StorageError::Injected)));
        assert!(matches!(db.commit(), Err(StorageError::Injected)));
        plan.heal();
        let payloads: Vec<Bytes> = db
            .offline("alice")
            .unwrap()
            .into_iter()
            .map(|m| m.payload)
            .collect();
        assert_eq!(payloads, vec![Bytes::from("<b/>"), Bytes::from("<kept/>")]);
        // and the real store underneath holds the same
        assert_eq!(reopen().offline("alice").unwrap().len(), 2);
        assert!(plan.calls() >= 13);
    }
}

#[test]
fn a_stalled_fault_plan_blocks_calls_until_healed() {
    let dir = tempfile::tempdir().unwrap();
    for reopen in backends(dir.path()) {
        let plan = FaultPlan::new();
        let mut db = FaultyStore::new(reopen(), plan.clone());
        db.add_user("alice", &StoredCredentials::new("pw", 4096))
            .unwrap();
        plan.stall();
        let before = plan.calls();
        let (done_tx, done) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let r = db.store_offline("alice", "t", b"<m/>");
            done_tx.send(r.is_ok()).unwrap();
            db
        });
        // the call was attempted, and it waits
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while plan.calls() == before {
            assert!(std::time::Instant::now() < deadline, "the call never came");
            std::thread::yield_now();
        }
        assert!(matches!(
            done.recv_timeout(std::time::Duration::from_millis(200)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        ));
        plan.heal();
        assert!(
            done.recv_timeout(std::time::Duration::from_secs(10))
                .unwrap()
        );
        let mut db = worker.join().unwrap();
        assert_eq!(db.offline("alice").unwrap().len(), 1);
    }
}
