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
fn offline_rows_get_increasing_ids_live_ones_past_the_quota_and_go_by_id() {
    both(|db, reopen| {
        let creds = StoredCredentials::new("pw", 4096);
        assert!(db.add_user("alice", &creds).unwrap());
        assert_eq!(
            db.store_offline_row("bob", "t", b"x", OfflineQuota::Exempt)
                .unwrap(),
            OfflineRow::NoSuchUser
        );
        // the quota (2) holds checked stores; live ones go past it
        let mut ids = Vec::new();
        for (i, quota) in [
            OfflineQuota::Checked,
            OfflineQuota::Checked,
            OfflineQuota::Exempt,
            OfflineQuota::Exempt,
        ]
        .into_iter()
        .enumerate()
        {
            match db.store_offline_row("alice", "t", format!("<m{i}/>").as_bytes(), quota) {
                Ok(OfflineRow::Row(id)) => ids.push(id),
                other => panic!("store {i}: {other:?}"),
            }
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
        assert!(matches!(
            db.store_offline_row("alice", "t", b"<over/>", OfflineQuota::Checked),
            Err(StorageError::QuotaExceeded)
        ));
        let loaded: Vec<i64> = db.offline("alice").unwrap().iter().map(|m| m.id).collect();
        assert_eq!(loaded, ids, "the ids returned are the rows' ids");
        // removal by id takes exactly those rows, and only the user's
        db.remove_offline_rows("alice", &[ids[1], ids[3]]).unwrap();
        db.remove_offline_rows("bob", &[ids[0]]).unwrap();
        let mut db = reopen();
        let left: Vec<i64> = db.offline("alice").unwrap().iter().map(|m| m.id).collect();
        assert_eq!(left, vec![ids[0], ids[2]]);
        // (live rows count against later checked stores: 2 rows, quota 2)
        // ids keep increasing after removals and a reopen
        match db.store_offline_row("alice", "t", b"<next/>", OfflineQuota::Exempt) {
            Ok(OfflineRow::Row(id)) => assert!(id > ids[3], "{id} after {ids:?}"),
            other => panic!("{other:?}"),
        }
    });
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
fn block_lists_load_with_the_roster_match_any_form_and_unblock_some_or_all() {
    both(|db, reopen| {
        let creds = StoredCredentials::new("pw", 4096);
        assert!(db.add_user("alice", &creds).unwrap());
        let jids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        db.block("alice", &jids(&["bob@x", "evil.example", "carol@x/phone"]))
            .unwrap();
        // blocking again changes nothing
        db.block("alice", &jids(&["bob@x"])).unwrap();
        let mut db = reopen();
        let mut blocked = db.roster("alice").unwrap().blocked;
        blocked.sort();
        assert_eq!(blocked, jids(&["bob@x", "carol@x/phone", "evil.example"]));
        let forms = crate::block_list::owned_forms;
        assert!(db.blocks_any("alice", &forms("bob@x/desk")).unwrap());
        assert!(db.blocks_any("alice", &forms("m@evil.example/a")).unwrap());
        assert!(db.blocks_any("alice", &forms("carol@x/phone")).unwrap());
        assert!(!db.blocks_any("alice", &forms("carol@x/desk")).unwrap());
        assert!(!db.blocks_any("bob", &forms("alice@x")).unwrap());
        db.unblock("alice", &jids(&["bob@x", "nobody@x"])).unwrap();
        let mut blocked = db.roster("alice").unwrap().blocked;
        blocked.sort();
        assert_eq!(blocked, jids(&["carol@x/phone", "evil.example"]));
        db.unblock("alice", &[]).unwrap();
        assert!(db.roster("alice").unwrap().blocked.is_empty());
        // an account deleted and registered again starts with no list
        db.block("alice", &jids(&["bob@x"])).unwrap();
        assert!(db.delete_user("alice").unwrap());
        assert!(db.add_user("alice", &creds).unwrap());
        assert!(db.roster("alice").unwrap().blocked.is_empty());
    });
}

#[test]
fn private_xml_is_kept_per_namespace_replaced_and_bounded_in_namespaces() {
    both(|db, reopen| {
        let creds = StoredCredentials::new("pw", 4096);
        assert!(db.add_user("alice", &creds).unwrap());
        assert_eq!(db.private_xml("alice", "a:b").unwrap(), None);
        assert_eq!(
            db.set_private_xml("nobody", "a:b", b"<b xmlns='a:b'/>")
                .unwrap(),
            Stored::NoSuchUser
        );
        db.set_private_xml("alice", "a:b", b"<b xmlns='a:b'>1</b>")
            .unwrap();
        db.set_private_xml("alice", "a:b", b"<b xmlns='a:b'>2</b>")
            .unwrap();
        let mut db = reopen();
        assert_eq!(
            db.private_xml("alice", "a:b").unwrap().as_deref(),
            Some(&b"<b xmlns='a:b'>2</b>"[..])
        );
        for i in 1..MAX_PRIVATE_NAMESPACES {
            db.set_private_xml("alice", &format!("n:{i}"), b"<x/>")
                .unwrap();
        }
        // full: a new namespace is refused, a kept one still replaced
        assert!(matches!(
            db.set_private_xml("alice", "one:more", b"<x/>"),
            Err(StorageError::QuotaExceeded)
        ));
        db.set_private_xml("alice", "a:b", b"<b xmlns='a:b'>3</b>")
            .unwrap();
        // an account deleted and registered again starts with none
        assert!(db.delete_user("alice").unwrap());
        assert!(db.add_user("alice", &creds).unwrap());
        assert_eq!(db.private_xml("alice", "a:b").unwrap(), None);
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

#[test]
fn rooms_are_stored_replaced_and_deleted() {
    both(|db, reopen| {
        let room = "room@conference.example.org";
        assert_eq!(db.muc_room(room).unwrap(), None);
        assert!(!db.delete_muc_room(room).unwrap(), "nothing to delete");
        db.set_muc_room(room, b"<room v='1'/>").unwrap();
        assert_eq!(
            db.muc_room(room).unwrap().as_deref(),
            Some(&b"<room v='1'/>"[..])
        );
        db.set_muc_room(room, b"<room v='2'/>").unwrap();
        let mut db = reopen();
        assert_eq!(
            db.muc_room(room).unwrap().as_deref(),
            Some(&b"<room v='2'/>"[..]),
            "replaced, and kept across a reopen"
        );
        assert_eq!(db.muc_rooms(10).unwrap(), vec![room.to_owned()]);
        assert!(
            db.muc_room("other@conference.example.org")
                .unwrap()
                .is_none()
        );
        assert!(db.delete_muc_room(room).unwrap());
        assert!(!db.delete_muc_room(room).unwrap());
        let mut db = reopen();
        assert_eq!(db.muc_room(room).unwrap(), None);
        assert!(db.muc_rooms(10).unwrap().is_empty());
    });
}

#[test]
fn rooms_are_listed_in_byte_order_up_to_the_limit() {
    both(|db, reopen| {
        // (byte order: upper case before lower, non-ASCII after both, '.'
        // before letters; a collation of a locale would order them apart)
        let rooms = [
            "zeta@conf.x",
            "\u{e4}pfel@conf.x",
            "b@conf.x",
            "Zeta@conf.x",
            "a.b@conf.x",
            "a@conf.x",
            "ab@conf.x",
            "b@another.x",
        ];
        for (i, room) in rooms.iter().enumerate() {
            db.set_muc_room(room, format!("<r{i}/>").as_bytes())
                .unwrap();
        }
        let mut sorted: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
        sorted.sort();
        let mut db = reopen();
        assert_eq!(db.muc_rooms(100).unwrap(), sorted);
        assert_eq!(db.muc_rooms(rooms.len()).unwrap(), sorted);
        assert_eq!(db.muc_rooms(3).unwrap(), sorted[..3].to_vec());
        assert_eq!(db.muc_rooms(1).unwrap(), vec!["Zeta@conf.x".to_owned()]);
        assert!(db.muc_rooms(0).unwrap().is_empty());
        assert_eq!(db.muc_rooms(usize::MAX).unwrap(), sorted);
        // a replaced record is listed once
        db.set_muc_room("b@conf.x", b"<again/>").unwrap();
        assert_eq!(db.muc_rooms(100).unwrap().len(), rooms.len());
    });
}

#[test]
fn deleting_a_room_deletes_its_archive_and_no_other() {
    both(|db, reopen| {
        let (room, other, ghost) = ("room@conf.x", "other@conf.x", "ghost@conf.x");
        let all = ArchiveQuery {
            max: 100,
            ..Default::default()
        };
        db.add_user("alice", &StoredCredentials::new("pw", 4096))
            .unwrap();
        db.set_muc_room(room, b"<room/>").unwrap();
        db.set_muc_room(other, b"<other/>").unwrap();
        db.begin().unwrap();
        for i in 0..3 {
            let e = entry(room, &hex(10 + i), "room@conf.x/nick", 100 + i as i64);
            assert_eq!(db.archive(&e).unwrap(), Stored::Stored);
        }
        db.archive(&entry(other, &hex(20), "other@conf.x/nick", 200))
            .unwrap();
        db.archive(&entry("alice", &hex(30), "bob@x", 300)).unwrap();
        // a room not stored keeps no archive (as an unknown user)
        db.archive(&entry(ghost, &hex(40), "ghost@conf.x/nick", 400))
            .unwrap();
        db.commit().unwrap();
        let mut db = reopen();
        assert_eq!(
            ids(&db.query_archive(room, &all).unwrap()),
            vec![hex(10), hex(11), hex(12)]
        );
        assert!(db.query_archive(ghost, &all).unwrap().items.is_empty());

        // entries written in the deleting transaction go with it
        db.begin().unwrap();
        db.archive(&entry(room, &hex(13), "room@conf.x/nick", 103))
            .unwrap();
        assert!(db.delete_muc_room(room).unwrap());
        // a key without '@' is no room: the account's archive stays
        assert!(!db.delete_muc_room("alice").unwrap());
        db.commit().unwrap();

        let mut db = reopen();
        assert_eq!(db.muc_room(room).unwrap(), None);
        assert!(db.query_archive(room, &all).unwrap().items.is_empty());
        assert_eq!(ids(&db.query_archive(other, &all).unwrap()), vec![hex(20)]);
        assert_eq!(
            ids(&db.query_archive("alice", &all).unwrap()),
            vec![hex(30)]
        );
        assert_eq!(
            db.muc_room(other).unwrap().as_deref(),
            Some(&b"<other/>"[..])
        );
        // a room made again under the name starts with an empty archive
        db.set_muc_room(room, b"<room again='1'/>").unwrap();
        assert!(db.query_archive(room, &all).unwrap().items.is_empty());
        // and deleting an account leaves the rooms and their archives
        assert!(db.delete_user("alice").unwrap());
        assert_eq!(ids(&db.query_archive(other, &all).unwrap()), vec![hex(20)]);
        assert_eq!(db.muc_rooms(10).unwrap(), vec![other, room]);
    });
}

#[test]
fn room_records_of_256_kib_and_any_bytes_round_trip() {
    both(|db, reopen| {
        let big: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 31 % 251) as u8).collect();
        // every byte value, NUL and invalid UTF-8 among them
        let binary: Vec<u8> = (0..=255u8).rev().chain(0..=255u8).collect();
        db.set_muc_room("big@conf.x", &big).unwrap();
        db.set_muc_room("binary@conf.x", &binary).unwrap();
        db.set_muc_room("empty@conf.x", b"").unwrap();
        let mut db = reopen();
        assert_eq!(
            db.muc_room("big@conf.x").unwrap().as_deref(),
            Some(&big[..])
        );
        assert_eq!(
            db.muc_room("binary@conf.x").unwrap().as_deref(),
            Some(&binary[..])
        );
        assert_eq!(
            db.muc_room("empty@conf.x").unwrap().as_deref(),
            Some(&b""[..])
        );
    });
}

/// A user's push registrations as (jid, node), oldest first.
fn push_keys(db: &mut dyn Store, user: &str) -> Vec<(String, String)> {
    db.push_registrations(user)
        .unwrap()
        .into_iter()
        .map(|r| (r.jid, r.node))
        .collect()
}

fn key(jid: &str, node: &str) -> (String, String) {
    (jid.to_owned(), node.to_owned())
}

#[test]
fn push_registrations_are_replaced_disabled_one_or_all_and_kept_across_a_reopen() {
    both(|db, reopen| {
        let creds = StoredCredentials::new("pw", 4096);
        db.add_user("alice", &creds).unwrap();
        db.add_user("bob", &creds).unwrap();
        assert_eq!(
            db.push_enable("nobody", "push.x", "n", None).unwrap(),
            Stored::NoSuchUser
        );
        assert!(db.push_registrations("nobody").unwrap().is_empty());
        assert!(db.push_registrations("alice").unwrap().is_empty());
        let form = b"<x xmlns='jabber:x:data' type='submit'><field var='secret'><value>s\x00\xff</value></field></x>";
        for (jid, node, options) in [
            ("push.x", "n1", Some(&form[..])),
            ("push.x", "n2", None),
            ("other.x", "n1", None),
        ] {
            assert_eq!(
                db.push_enable("alice", jid, node, options).unwrap(),
                Stored::Stored
            );
        }
        db.push_enable("bob", "push.x", "n1", None).unwrap();
        let mut db = reopen();
        let regs = db.push_registrations("alice").unwrap();
        assert_eq!(
            regs.iter()
                .map(|r| key(&r.jid, &r.node))
                .collect::<Vec<_>>(),
            vec![
                key("push.x", "n1"),
                key("push.x", "n2"),
                key("other.x", "n1")
            ]
        );
        assert_eq!(regs[0].options.as_deref(), Some(&form[..]), "any bytes");
        assert_eq!(regs[1].options, None);
        assert!(regs.windows(2).all(|w| w[0].created < w[1].created));
        assert!(
            regs[0].created > 1_600_000_000_000_000,
            "µs since the epoch"
        );

        // enabled again: its options replaced, and it is the newest now
        db.push_enable("alice", "push.x", "n1", Some(b"<x2/>"))
            .unwrap();
        db.push_enable("alice", "push.x", "n2", None).unwrap();
        let regs = db.push_registrations("alice").unwrap();
        assert_eq!(regs.len(), 3, "replaced, not added");
        assert_eq!(
            regs.iter()
                .map(|r| key(&r.jid, &r.node))
                .collect::<Vec<_>>(),
            vec![
                key("other.x", "n1"),
                key("push.x", "n1"),
                key("push.x", "n2")
            ]
        );
        assert_eq!(regs[1].options.as_deref(), Some(&b"<x2/>"[..]));

        // one by node, then every node of one app server
        assert_eq!(db.push_disable("alice", "push.x", Some("n2")).unwrap(), 1);
        assert_eq!(db.push_disable("alice", "push.x", Some("n2")).unwrap(), 0);
        assert_eq!(db.push_disable("alice", "nowhere.x", None).unwrap(), 0);
        db.push_enable("alice", "push.x", "n3", None).unwrap();
        assert_eq!(db.push_disable("alice", "push.x", None).unwrap(), 2);
        let mut db = reopen();
        assert_eq!(push_keys(&mut *db, "alice"), vec![key("other.x", "n1")]);
        assert_eq!(
            push_keys(&mut *db, "bob"),
            vec![key("push.x", "n1")],
            "another user's are left alone"
        );

        // an account's deletion takes its registrations with it
        assert!(db.delete_user("bob").unwrap());
        assert!(db.push_registrations("bob").unwrap().is_empty());
        db.add_user("bob", &creds).unwrap();
        assert!(db.push_registrations("bob").unwrap().is_empty());
        assert_eq!(push_keys(&mut *db, "alice").len(), 1);
    });
}

#[test]
fn push_registrations_are_bounded_the_oldest_replaced() {
    both(|db, reopen| {
        db.add_user("alice", &StoredCredentials::new("pw", 4096))
            .unwrap();
        let max = MAX_PUSH_REGISTRATIONS as usize;
        for i in 0..max + 4 {
            db.push_enable("alice", "push.x", &format!("n{i}"), None)
                .unwrap();
        }
        let mut db = reopen();
        let expected: Vec<_> = (4..max + 4)
            .map(|i| key("push.x", &format!("n{i}")))
            .collect();
        assert_eq!(push_keys(&mut *db, "alice"), expected, "the oldest went");
        // enabling the oldest again makes it the newest: the next one to go
        // is the one after it
        db.push_enable("alice", "push.x", "n4", None).unwrap();
        assert_eq!(push_keys(&mut *db, "alice").len(), max);
        db.push_enable("alice", "new.x", "m", None).unwrap();
        let keys = push_keys(&mut *db, "alice");
        assert_eq!(keys.len(), max);
        assert_eq!(keys[0], key("push.x", "n6"));
        assert!(!keys.contains(&key("push.x", "n5")));
        assert_eq!(keys[max - 2], key("push.x", "n4"));
        assert_eq!(keys[max - 1], key("new.x", "m"));
    });
}

#[test]
fn the_fault_plan_fails_push_writes_and_lets_push_reads_through() {
    let dir = tempfile::tempdir().unwrap();
    for reopen in backends(dir.path()) {
        let plan = FaultPlan::new();
        let mut db = FaultyStore::new(reopen(), plan.clone());
        db.add_user("alice", &StoredCredentials::new("pw", 4096))
            .unwrap();
        db.push_enable("alice", "push.x", "n", None).unwrap();
        plan.fail_writes(2);
        assert!(matches!(
            db.push_enable("alice", "push.x", "m", None),
            Err(StorageError::Injected)
        ));
        assert!(matches!(
            db.push_disable("alice", "push.x", None),
            Err(StorageError::Injected)
        ));
        assert_eq!(push_keys(&mut db, "alice"), vec![key("push.x", "n")]);
        plan.fail_all();
        assert!(matches!(
            db.push_registrations("alice"),
            Err(StorageError::Injected)
        ));
        plan.heal();
        assert_eq!(db.push_disable("alice", "push.x", Some("n")).unwrap(), 1);
        assert!(reopen().push_registrations("alice").unwrap().is_empty());
    }
}

/// Storage threads over each real backend, wrapped in a fault plan.
fn faulty_storages(dir: &std::path::Path, limits: Limits) -> Vec<(Storage, FaultPlan)> {
    backends(dir)
        .into_iter()
        .map(|reopen| {
            let plan = FaultPlan::new();
            let faults = plan.clone();
            let storage = Storage::start_with(limits, move || {
                Ok(Box::new(FaultyStore::new(reopen(), faults)) as Box<dyn Store>)
            })
            .unwrap();
            (storage, plan)
        })
        .collect()
}

/// Waits (bounded) until the plan has seen more than `n` calls.
fn wait_for_calls(plan: &FaultPlan, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while plan.calls() <= n {
        assert!(std::time::Instant::now() < deadline, "no storage call came");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Polls a future once: its output if it is ready at once.
fn poll_once<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

async fn add_user(storage: &Storage, name: &'static str) {
    let creds = StoredCredentials::new("pw", 4096);
    storage
        .call(move |db| db.add_user(name, &creds))
        .await
        .unwrap();
}

async fn archived_ids(storage: &Storage, user: &'static str) -> Vec<String> {
    let page = storage
        .call(move |db| {
            db.query_archive(
                user,
                &ArchiveQuery {
                    max: 10_000,
                    ..Default::default()
                },
            )
        })
        .await
        .unwrap();
    page.items.into_iter().map(|a| a.id).collect()
}

#[tokio::test]
async fn the_storage_thread_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    for (storage, plan) in faulty_storages(dir.path(), Limits::default()) {
        add_user(&storage, "u").await;
        // The thread stalls on a first job; 200 more queue behind it.
        plan.stall();
        let calls = plan.calls();
        let first = storage.submit(|db| db.archive(&entry("u", &hex(1), "p@x", 0)));
        wait_for_calls(&plan, calls);
        let queued: Vec<_> = (1..=200)
            .map(|i| storage.submit(move |db| db.archive(&entry("u", &hex(i + 1), "p@x", 0))))
            .collect();
        let commits = plan.commits();
        plan.heal();
        assert_eq!(first.await.unwrap(), Stored::Stored);
        for c in queued {
            assert_eq!(c.await.unwrap(), Stored::Stored);
        }
        // the first job's commit, then one for all 200 queued behind it
        assert_eq!(plan.commits() - commits, 2, "201 jobs, committed in groups");
        // all committed, in submission order
        let want: Vec<String> = (1..=201).map(hex).collect();
        assert_eq!(archived_ids(&storage, "u").await, want);
    }
}

#[tokio::test]
async fn a_panicking_job_fails_its_batch_and_the_thread_serves_later_jobs() {
    let dir = tempfile::tempdir().unwrap();
    for (storage, plan) in faulty_storages(dir.path(), Limits::default()) {
        add_user(&storage, "u").await;
        // Three jobs in one batch: a write, one that panics, a write.
        plan.stall();
        let calls = plan.calls();
        let blocker = storage.submit(|db| db.user_count());
        wait_for_calls(&plan, calls);
        let before = storage.submit(|db| db.store_offline("u", "t", b"<before/>"));
        let panics = storage.submit(|db| -> Result<(), StorageError> {
            db.user_count()?;
            panic!("a type mismatch in Row::get")
        });
        let after = storage.submit(|db| db.store_offline("u", "t", b"<after/>"));
        plan.heal();
        blocker.await.unwrap();
        assert!(matches!(panics.await, Err(StorageError::Panicked)));
        // the panicking job's batch was rolled back, with the job before it
        assert!(matches!(before.await, Err(StorageError::Panicked)));
        // the job queued behind it ran in a transaction of its own
        assert_eq!(after.await.unwrap(), Stored::Stored);
        // and the thread keeps serving
        let later = storage.submit(|db| db.store_offline("u", "t", b"<later/>"));
        assert_eq!(later.await.unwrap(), Stored::Stored);
        let stored: Vec<Bytes> = storage
            .call(|db| db.offline("u"))
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.payload)
            .collect();
        assert_eq!(
            stored,
            vec![Bytes::from("<after/>"), Bytes::from("<later/>")]
        );
    }
}

#[tokio::test]
async fn a_full_queue_refuses_jobs_at_once_keeps_order_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let job = JOB_OVERHEAD + 1000;
    let limits = Limits {
        queue_bytes: 10 * job,
        ..Limits::default()
    };
    for (storage, plan) in faulty_storages(dir.path(), limits) {
        add_user(&storage, "u").await;
        plan.stall();
        let calls = plan.calls();
        let blocker = storage.submit_sized(1000, |db| db.user_count());
        wait_for_calls(&plan, calls);
        // the running job still counts: nine more fit
        let accepted: Vec<_> = (1..=9)
            .map(|i| {
                storage.submit_sized(1000, move |db| db.archive(&entry("u", &hex(i), "p@x", 0)))
            })
            .collect();
        // the tenth is refused at once, without waiting for the stalled store
        let refused = storage.submit_sized(1000, |db| db.archive(&entry("u", &hex(99), "p@x", 0)));
        assert!(matches!(
            poll_once(refused),
            Some(Err(StorageError::Overloaded))
        ));
        // a small job does not fit either
        assert!(matches!(
            poll_once(storage.submit(|db| db.user_count())),
            Some(Err(StorageError::Overloaded))
        ));
        plan.heal();
        blocker.await.unwrap();
        for a in accepted {
            assert_eq!(a.await.unwrap(), Stored::Stored);
        }
        let want: Vec<String> = (1..=9).map(hex).collect();
        assert_eq!(archived_ids(&storage, "u").await, want);
        // drained: the budget is back
        let again = storage.submit_sized(5 * job, |db| db.archive(&entry("u", &hex(10), "p@x", 0)));
        assert_eq!(again.await.unwrap(), Stored::Stored);
    }
}

#[tokio::test]
async fn a_job_queued_past_its_deadline_times_out_and_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        deadline: std::time::Duration::from_millis(300),
        ..Limits::default()
    };
    for (storage, plan) in faulty_storages(dir.path(), limits) {
        add_user(&storage, "u").await;
        plan.stall();
        let calls = plan.calls();
        let running = storage.submit(|db| db.store_offline("u", "t", b"<running/>"));
        wait_for_calls(&plan, calls);
        let waiting = storage.submit(|db| db.store_offline("u", "t", b"<waiting/>"));
        let waited = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await;
        assert!(
            matches!(waited, Ok(Err(StorageError::Timeout))),
            "{waited:?}"
        );
        // the stall outlasts the deadline of the job that had started: it is
        // not abandoned, its result comes once the store is back
        plan.heal();
        assert_eq!(running.await.unwrap(), Stored::Stored);
        let stored: Vec<Bytes> = storage
            .call(|db| db.offline("u"))
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.payload)
            .collect();
        assert_eq!(
            stored,
            vec![Bytes::from("<running/>")],
            "the timed-out job never ran"
        );
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
fn the_fault_plan_fails_room_writes_and_lets_room_reads_through() {
    let dir = tempfile::tempdir().unwrap();
    for reopen in backends(dir.path()) {
        let plan = FaultPlan::new();
        let mut db = FaultyStore::new(reopen(), plan.clone());
        let room = "room@conf.x";
        db.set_muc_room(room, b"<room/>").unwrap();
        plan.fail_writes(2);
        assert!(matches!(
            db.set_muc_room(room, b"<lost/>"),
            Err(StorageError::Injected)
        ));
        assert!(matches!(
            db.delete_muc_room(room),
            Err(StorageError::Injected)
        ));
        assert_eq!(plan.writes_to_fail(), 0);
        assert_eq!(db.muc_room(room).unwrap().as_deref(), Some(&b"<room/>"[..]));
        assert_eq!(db.muc_rooms(10).unwrap(), vec![room]);
        plan.fail_all();
        assert!(matches!(db.muc_room(room), Err(StorageError::Injected)));
        assert!(matches!(db.muc_rooms(10), Err(StorageError::Injected)));
        plan.heal();
        assert!(db.delete_muc_room(room).unwrap());
        assert_eq!(reopen().muc_room(room).unwrap(), None);
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

#[tokio::test]
async fn a_lost_postgres_connection_fails_the_job_on_it_and_the_next_reconnects() {
    let Some(url) = postgres_for_tests("ll_unit") else {
        println!("skipped: LONGLINK_TEST_POSTGRES is unset");
        return;
    };
    let open_url = url.clone();
    let storage =
        Storage::start(move || Ok(Box::new(Postgres::open(&open_url, 10)?) as _)).unwrap();
    add_user(&storage, "u").await;
    // Another session ends the store's connection, as a server restart would.
    let killed = postgres_backends(&url, true).len();
    assert_eq!(killed, 1, "one store connection ended");
    let started = std::time::Instant::now();
    let on_dead = storage
        .submit(|db| db.store_offline("u", "t", b"<lost/>"))
        .await;
    assert!(
        matches!(on_dead, Err(StorageError::Unavailable(_))),
        "{on_dead:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "failed promptly"
    );
    // the next job reconnects
    let next = storage.submit(|db| db.store_offline("u", "t", b"<kept/>"));
    assert_eq!(next.await.unwrap(), Stored::Stored);
    let stored = storage.call(|db| db.offline("u")).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(&stored[0].payload[..], b"<kept/>");
}

#[test]
fn opening_postgres_where_no_server_listens_fails_promptly_as_unavailable() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let opened = Postgres::open(&format!("host=127.0.0.1 port={port} user=postgres"), 10);
    assert!(
        matches!(opened, Err(StorageError::Unavailable(_))),
        "{:?}",
        opened.err()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(6));
}

/// Resumes a stopped process when dropped (also when the test fails).
struct Stopped(u32);

impl Stopped {
    fn signal(pid: u32, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    fn stop(pid: u32) -> Self {
        Self::signal(pid, "-STOP");
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        Self::signal(self.0, "-CONT");
    }
}

/// The pids of the server processes serving the database `url` names,
/// but for the session asking (on a thread: the client runs a runtime).
fn postgres_backends(url: &str, terminate: bool) -> Vec<i32> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let db = url.rsplit("dbname=").next().unwrap_or_default().to_owned();
        let mut admin = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        let rows = admin
            .query(
                "SELECT pid, CASE WHEN $2 THEN pg_terminate_backend(pid) END
                 FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&db, &terminate],
            )
            .unwrap();
        rows.iter().map(|r| r.get::<_, i32>(0)).collect()
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn a_frozen_postgres_backend_fails_the_job_within_the_io_timeout_and_the_next_reconnects() {
    let Some(url) = postgres_for_tests("ll_unit") else {
        println!("skipped: LONGLINK_TEST_POSTGRES is unset");
        return;
    };
    let open_url = url.clone();
    let storage =
        Storage::start(move || Ok(Box::new(Postgres::open(&open_url, 10)?) as _)).unwrap();
    add_user(&storage, "u").await;
    let pids = postgres_backends(&url, false);
    assert_eq!(pids.len(), 1, "one store connection: {pids:?}");
    // The server's process for the store's connection freezes (the kernel
    // still accepts its TCP traffic, so only a client-side timeout helps).
    let frozen = Stopped::stop(pids[0] as u32);
    let started = std::time::Instant::now();
    let on_frozen = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        storage.submit(|db| db.store_offline("u", "t", b"<lost/>")),
    )
    .await
    .expect("the job on a frozen server must not hang");
    assert!(
        matches!(on_frozen, Err(StorageError::Unavailable(_))),
        "{on_frozen:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
    // the next job reconnects (a new backend) while the old one stays frozen
    let next = storage.submit(|db| db.store_offline("u", "t", b"<kept/>"));
    assert_eq!(next.await.unwrap(), Stored::Stored);
    drop(frozen);
    let stored = storage.call(|db| db.offline("u")).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(&stored[0].payload[..], b"<kept/>");
}

#[test]
fn a_failed_all_or_none_job_leaves_nothing_and_the_rest_of_its_transaction_commits() {
    both(|db, reopen| {
        db.add_user("alice", &StoredCredentials::new("pw", 4096))
            .unwrap();
        let item = |jid: &str| RosterItem {
            jid: jid.into(),
            ..Default::default()
        };
        // One transaction, as a batch of the storage thread: a job that
        // commits, then one of two writes that fails after its first write.
        db.begin().unwrap();
        db.put_roster_item("alice", &item("bob@x"), 1).unwrap();
        let failed = all_or_none(db, |db| {
            db.put_roster_item("alice", &item("carol@x"), 2)?;
            Err::<(), _>(StorageError::Injected)
        });
        assert!(matches!(failed, Err(StorageError::Injected)));
        let kept = all_or_none(db, |db| db.put_roster_item("alice", &item("dave@x"), 3));
        assert!(kept.is_ok());
        db.commit().unwrap();
        let mut jids: Vec<_> = reopen()
            .roster("alice")
            .unwrap()
            .items
            .into_iter()
            .map(|i| i.jid)
            .collect();
        jids.sort();
        assert_eq!(
            jids,
            ["bob@x", "dave@x"],
            "carol's half-done change is undone"
        );
    });
}

#[tokio::test]
async fn a_job_whose_statement_fails_fails_alone_and_the_rest_of_its_batch_commits() {
    let dir = tempfile::tempdir().unwrap();
    for (storage, plan) in faulty_storages(dir.path(), Limits::default()) {
        add_user(&storage, "u").await;
        add_user(&storage, "v").await;
        // Three jobs in one batch: a write, one whose statement the
        // database refuses (PostgreSQL refuses a NUL in text; SQLite takes
        // it: no such user), a write.
        plan.stall();
        let calls = plan.calls();
        let blocker = storage.submit(|db| db.user_count());
        wait_for_calls(&plan, calls);
        let before = storage.submit(|db| db.store_offline("u", "t", b"<before/>"));
        let refused = storage.submit(|db| db.store_offline("v\0", "t", b"<nul/>"));
        let after = storage.submit(|db| db.store_offline("u", "t", b"<after/>"));
        plan.heal();
        blocker.await.unwrap();
        let refused = refused.await;
        assert!(
            matches!(
                refused,
                Err(StorageError::Postgres(_)) | Ok(Stored::NoSuchUser)
            ),
            "{refused:?}"
        );
        assert_eq!(before.await.unwrap(), Stored::Stored);
        assert_eq!(after.await.unwrap(), Stored::Stored);
        let stored: Vec<Bytes> = storage
            .call(|db| db.offline("u"))
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.payload)
            .collect();
        assert_eq!(
            stored,
            vec![Bytes::from("<before/>"), Bytes::from("<after/>")]
        );
    }
}

#[tokio::test]
async fn an_archive_query_that_fails_after_reading_keeps_the_batchs_buffered_archive_rows() {
    let dir = tempfile::tempdir().unwrap();
    for (storage, plan) in faulty_storages(dir.path(), Limits::default()) {
        add_user(&storage, "u").await;
        // One batch: an archive write (PostgreSQL buffers it), a query
        // that reads the archive (which writes the buffer out) then fails,
        // and another write.
        plan.stall();
        let calls = plan.calls();
        let blocker = storage.submit(|db| db.user_count());
        wait_for_calls(&plan, calls);
        let first = storage.submit(|db| db.archive(&entry("u", &hex(1), "p@x", 0)));
        let query = storage.submit(|db| -> Result<(), StorageError> {
            db.query_archive("u", &ArchiveQuery::default())?;
            db.store_offline("v\0", "t", b"<nul/>")?;
            Err(StorageError::Injected)
        });
        let second = storage.submit(|db| db.archive(&entry("u", &hex(2), "p@x", 0)));
        plan.heal();
        blocker.await.unwrap();
        assert!(query.await.is_err());
        assert_eq!(first.await.unwrap(), Stored::Stored);
        assert_eq!(second.await.unwrap(), Stored::Stored);
        assert_eq!(archived_ids(&storage, "u").await, vec![hex(1), hex(2)]);
    }
}

#[test]
fn a_query_whose_statement_fails_leaves_its_batchs_transaction_usable() {
    both(|db, reopen| {
        let creds = StoredCredentials::new("pw", 4096);
        assert!(db.add_user("alice", &creds).unwrap());
        db.begin().unwrap();
        // (a key over PostgreSQL's index row limit fails its statement)
        let query = crate::router::Query::PrivateSet {
            user: "alice".into(),
            // (not compressible, or PostgreSQL would store it compressed)
            namespace: format!(
                "urn:{}",
                (0..2000u64)
                    .map(|i| format!("{:x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40))
                    .collect::<String>()
            ),
            element: bytes::Bytes::from_static(b"<x/>"),
            requester: "alice@x/phone".into(),
            iq_id: "i".into(),
        };
        let _answer = crate::queries::answer(db, &query, "x");
        db.set_vcard("alice", b"<vCard xmlns='vcard-temp'/>")
            .unwrap();
        db.commit().unwrap();
        let mut db = reopen();
        assert!(db.vcard("alice").unwrap().is_some());
    });
}

fn pep_item(id: &str, payload: &str) -> PepItem {
    PepItem {
        id: id.into(),
        payload: Bytes::from(payload.to_owned()),
    }
}

#[test]
fn pep_items_are_kept_newest_last_to_max_items_and_options_are_preconditions() {
    both(|db, reopen| {
        let creds = StoredCredentials::new("pw", 4096);
        assert!(db.add_user("alice", &creds).unwrap());
        let none = PepOptions::default();
        assert_eq!(
            db.pep_publish("nobody", "n", &pep_item("1", "<a/>"), &none)
                .unwrap(),
            PepPublished::NoSuchUser
        );
        // auto-created with the defaults: presence, one item
        assert_eq!(
            db.pep_publish("alice", "nick", &pep_item("1", "<a/>"), &none)
                .unwrap(),
            PepPublished::Published(PepConfig::default())
        );
        db.pep_publish("alice", "nick", &pep_item("2", "<b/>"), &none)
            .unwrap();
        let (config, items) = db.pep_items("alice", "nick", &[], None).unwrap().unwrap();
        assert_eq!(config, PepConfig::default());
        assert_eq!(items, vec![pep_item("2", "<b/>")]);
        // options naming another configuration are a precondition not met
        let open = PepOptions {
            access: Some(PepAccess::Open),
            max_items: Some(3),
        };
        assert_eq!(
            db.pep_publish("alice", "nick", &pep_item("3", "<c/>"), &open)
                .unwrap(),
            PepPublished::PreconditionNotMet
        );
        let open3 = PepConfig {
            access: PepAccess::Open,
            max_items: 3,
        };
        for i in 1..=4 {
            assert_eq!(
                db.pep_publish("alice", "list", &pep_item(&i.to_string(), "<x/>"), &open)
                    .unwrap(),
                PepPublished::Published(open3)
            );
        }
        // republishing an id makes it the newest
        db.pep_publish("alice", "list", &pep_item("2", "<y/>"), &open)
            .unwrap();
        let mut db = reopen();
        let ids = |db: &mut dyn Store, ids: &[String], max| {
            let (_, items) = db.pep_items("alice", "list", ids, max).unwrap().unwrap();
            items.into_iter().map(|i| i.id).collect::<Vec<_>>()
        };
        assert_eq!(ids(&mut *db, &[], None), ["3", "4", "2"]);
        assert_eq!(ids(&mut *db, &[], Some(2)), ["4", "2"]);
        assert_eq!(
            ids(&mut *db, &["2".into(), "9".into(), "3".into()], None),
            ["3", "2"]
        );
        // the newest of each named node of each owner
        let last = db
            .pep_last_items(
                &["alice".into(), "bob".into()],
                &["list".into(), "nick".into(), "none".into()],
            )
            .unwrap();
        let mut found: Vec<(String, String)> = last
            .iter()
            .map(|l| (l.node.clone(), l.item.id.clone()))
            .collect();
        found.sort();
        assert_eq!(
            found,
            [("list".into(), "2".into()), ("nick".into(), "2".into())]
        );
        assert!(last.iter().all(|l| l.owner == "alice"));
        assert_eq!(db.pep_items("alice", "none", &[], None).unwrap(), None);
    });
}

#[test]
fn pep_nodes_are_configured_retracted_deleted_and_bounded() {
    both(|db, _reopen| {
        let creds = StoredCredentials::new("pw", 4096);
        assert!(db.add_user("alice", &creds).unwrap());
        let two = PepOptions {
            access: Some(PepAccess::Whitelist),
            max_items: Some(2),
        };
        assert_eq!(
            db.pep_configure("alice", "n", &two, false).unwrap(),
            PepConfigured::NoSuchNode
        );
        let done = PepConfig {
            access: PepAccess::Whitelist,
            max_items: 2,
        };
        assert_eq!(
            db.pep_configure("alice", "n", &two, true).unwrap(),
            PepConfigured::Done(done)
        );
        assert_eq!(
            db.pep_configure("alice", "n", &two, true).unwrap(),
            PepConfigured::Exists
        );
        for i in 1..=2 {
            db.pep_publish(
                "alice",
                "n",
                &pep_item(&i.to_string(), "<x/>"),
                &PepOptions::default(),
            )
            .unwrap();
        }
        // lowering max_items drops the oldest
        let one = PepOptions {
            access: None,
            max_items: Some(1),
        };
        assert!(matches!(
            db.pep_configure("alice", "n", &one, false).unwrap(),
            PepConfigured::Done(PepConfig {
                access: PepAccess::Whitelist,
                max_items: 1
            })
        ));
        let (_, items) = db.pep_items("alice", "n", &[], None).unwrap().unwrap();
        assert_eq!(items, vec![pep_item("2", "<x/>")]);
        assert_eq!(db.pep_retract("alice", "n", "1").unwrap(), None);
        assert!(db.pep_retract("alice", "n", "2").unwrap().is_some());
        assert!(db.pep_delete("alice", "n").unwrap().is_some());
        assert_eq!(db.pep_delete("alice", "n").unwrap(), None);
        // a user's bytes are bounded, all nodes together
        let big = "x".repeat(1024 * 1024);
        for i in 0..MAX_PEP_BYTES / (1024 * 1024) {
            db.pep_publish(
                "alice",
                &format!("big{i}"),
                &pep_item("1", &big),
                &PepOptions::default(),
            )
            .unwrap();
        }
        assert!(matches!(
            db.pep_publish(
                "alice",
                "one-more",
                &pep_item("1", &big),
                &PepOptions::default()
            ),
            Err(StorageError::QuotaExceeded)
        ));
        // (replacing an item counts only its new size, and so does
        // publishing a new one that pushes the old out of its node)
        db.pep_publish(
            "alice",
            "big0",
            &pep_item("2", &big),
            &PepOptions::default(),
        )
        .unwrap();
        db.pep_publish(
            "alice",
            "big0",
            &pep_item("1", &big),
            &PepOptions::default(),
        )
        .unwrap();
        assert!(db.delete_user("alice").unwrap());
        assert!(db.add_user("alice", &creds).unwrap());
        assert_eq!(db.pep_items("alice", "big0", &[], None).unwrap(), None);
    });
}

fn fast_token(seed: u8, mechanism: &str, expires_at: i64) -> FastToken {
    FastToken {
        slot: FastSlot::New,
        seed: vec![seed; 16],
        mechanism: mechanism.into(),
        expires_at,
        last_count: -1,
    }
}

fn fast_slots(db: &mut dyn Store, user: &str, client: &[u8]) -> Vec<(FastSlot, u8, i64)> {
    db.fast_tokens(user, client)
        .unwrap()
        .into_iter()
        .map(|t| (t.slot, t.seed[0], t.last_count))
        .collect()
}

/// Uses the token now in `slot` (a bogus one if the slot is empty).
fn use_slot(
    db: &mut dyn Store,
    user: &str,
    client: &[u8],
    slot: FastSlot,
    count: Option<i64>,
) -> bool {
    let row = db
        .fast_tokens(user, client)
        .unwrap()
        .into_iter()
        .find(|t| t.slot == slot)
        .unwrap_or(FastToken {
            slot,
            ..fast_token(0xee, "HT-SHA-256-NONE", i64::MAX)
        });
    db.fast_use(user, client, &row, count).unwrap()
}

#[test]
fn a_fast_token_read_before_another_core_replaced_it_is_refused_though_its_slot_is_filled() {
    both(|db, _reopen| {
        db.add_user("dave", &StoredCredentials::new("pw", 4096))
            .unwrap();
        let client = &[9u8; 32][..];
        db.fast_issue("dave", client, &fast_token(1, "HT-SHA-256-NONE", 100))
            .unwrap();
        assert!(use_slot(db, "dave", client, FastSlot::New, Some(1)));
        db.fast_issue("dave", client, &fast_token(2, "HT-SHA-256-NONE", 200))
            .unwrap();
        // a core reads both rows (a replay of the current token, count 6)...
        let old = db.fast_tokens("dave", client).unwrap()[0].clone();
        assert_eq!((old.slot, old.seed[0]), (FastSlot::Current, 1));
        // ...meanwhile the client uses the new one elsewhere: promoted, the old deleted
        assert!(use_slot(db, "dave", client, FastSlot::New, Some(1)));
        // the old row's use matches nothing, though slot 0 holds a token
        assert!(!db.fast_use("dave", client, &old, Some(6)).unwrap());
        assert_eq!(
            fast_slots(db, "dave", client),
            [(FastSlot::Current, 2, 1)],
            "the new token's count untouched"
        );
        // and a New read before a newer one replaced it is not promoted
        db.fast_issue("dave", client, &fast_token(3, "HT-SHA-256-NONE", 300))
            .unwrap();
        let stale = db.fast_tokens("dave", client).unwrap()[1].clone();
        db.fast_issue("dave", client, &fast_token(4, "HT-SHA-256-NONE", 400))
            .unwrap();
        assert!(!db.fast_use("dave", client, &stale, Some(1)).unwrap());
        assert_eq!(
            fast_slots(db, "dave", client),
            [(FastSlot::Current, 2, 1), (FastSlot::New, 4, -1)]
        );
    });
}

#[test]
fn fast_tokens_issue_into_new_promote_on_use_refuse_replayed_counts_and_go_with_the_password() {
    both(|db, reopen| {
        let creds = StoredCredentials::new("pw", 4096);
        db.add_user("alice", &creds).unwrap();
        let (phone, laptop) = (&[1u8; 32][..], &[2u8; 32][..]);
        assert_eq!(
            db.fast_issue("nobody", phone, &fast_token(1, "HT-SHA-256-NONE", 10))
                .unwrap(),
            Stored::NoSuchUser
        );
        assert!(db.fast_tokens("alice", phone).unwrap().is_empty());
        // the first token waits in New until used
        db.fast_issue("alice", phone, &fast_token(1, "HT-SHA-256-NONE", 100))
            .unwrap();
        db.fast_issue("alice", laptop, &fast_token(9, "HT-SHA-256-EXPR", 100))
            .unwrap();
        let mut db = reopen();
        let stored = db.fast_tokens("alice", phone).unwrap();
        assert_eq!(stored, vec![fast_token(1, "HT-SHA-256-NONE", 100)]);
        // used with count 1: promoted to Current; the same count again is a replay
        assert!(use_slot(&mut *db, "alice", phone, FastSlot::New, Some(1)));
        assert_eq!(
            fast_slots(&mut *db, "alice", phone),
            [(FastSlot::Current, 1, 1)]
        );
        assert!(!use_slot(
            &mut *db,
            "alice",
            phone,
            FastSlot::Current,
            Some(1)
        ));
        assert!(!use_slot(
            &mut *db,
            "alice",
            phone,
            FastSlot::Current,
            Some(0)
        ));
        assert!(
            !use_slot(&mut *db, "alice", phone, FastSlot::New, Some(5)),
            "no New token"
        );
        // no count (a client outside 0-RTT that sends none): accepted, count kept
        assert!(use_slot(&mut *db, "alice", phone, FastSlot::Current, None));
        assert!(use_slot(
            &mut *db,
            "alice",
            phone,
            FastSlot::Current,
            Some(2)
        ));
        // a rotation: Current stays valid until New is used, then goes
        db.fast_issue("alice", phone, &fast_token(2, "HT-SHA-256-NONE", 200))
            .unwrap();
        assert_eq!(
            fast_slots(&mut *db, "alice", phone),
            [(FastSlot::Current, 1, 2), (FastSlot::New, 2, -1)]
        );
        assert!(use_slot(
            &mut *db,
            "alice",
            phone,
            FastSlot::Current,
            Some(3)
        ));
        assert_eq!(fast_slots(&mut *db, "alice", phone).len(), 2);
        // an unused New is replaced by a newer one
        db.fast_issue("alice", phone, &fast_token(3, "HT-SHA-256-NONE", 300))
            .unwrap();
        assert!(use_slot(&mut *db, "alice", phone, FastSlot::New, Some(0)));
        assert_eq!(
            fast_slots(&mut *db, "alice", phone),
            [(FastSlot::Current, 3, 0)]
        );
        // the other user agent's token is its own
        assert_eq!(
            fast_slots(&mut *db, "alice", laptop),
            [(FastSlot::New, 9, -1)]
        );
        db.fast_invalidate("alice", laptop).unwrap();
        assert!(db.fast_tokens("alice", laptop).unwrap().is_empty());
        // a new password ends them all; so does deleting the user
        db.fast_issue("alice", laptop, &fast_token(9, "HT-SHA-256-EXPR", 100))
            .unwrap();
        assert!(db.set_credentials("alice", &creds).unwrap());
        assert!(db.fast_tokens("alice", phone).unwrap().is_empty());
        assert!(db.fast_tokens("alice", laptop).unwrap().is_empty());
        db.fast_issue("alice", phone, &fast_token(4, "HT-SHA-256-NONE", 100))
            .unwrap();
        assert!(db.delete_user("alice").unwrap());
        db.add_user("alice", &creds).unwrap();
        assert!(db.fast_tokens("alice", phone).unwrap().is_empty());
    });
}

#[test]
fn fast_tokens_keep_at_most_max_clients_user_agents_per_user_dropping_the_soonest_to_expire() {
    both(|db, _reopen| {
        let creds = StoredCredentials::new("pw", 4096);
        db.add_user("bob", &creds).unwrap();
        let clients: Vec<[u8; 32]> = (0..=MAX_FAST_CLIENTS as u8).map(|i| [i; 32]).collect();
        // client 0 expires first; the one past the bound evicts it
        for (i, c) in clients.iter().enumerate() {
            db.fast_issue("bob", c, &fast_token(1, "HT-SHA-256-NONE", 1000 + i as i64))
                .unwrap();
        }
        assert!(db.fast_tokens("bob", &clients[0]).unwrap().is_empty());
        for c in &clients[1..] {
            assert_eq!(db.fast_tokens("bob", c).unwrap().len(), 1);
        }
    });
}

#[test]
fn fast_use_with_the_same_count_from_two_stores_succeeds_once() {
    // two connections to one database, as two cores have: the conditional
    // update lets exactly one use of a count through
    let dir = tempfile::tempdir().unwrap();
    let mut opens: Vec<Box<dyn Fn() -> Box<dyn Store>>> = Vec::new();
    let path = dir.path().to_owned();
    opens.push(Box::new(move || Box::new(Sqlite::open(&path, 2).unwrap())));
    if let Some(url) = postgres_for_tests("ll_unit") {
        opens.push(Box::new(move || Box::new(Postgres::open(&url, 2).unwrap())));
    }
    for open in opens {
        let (mut a, mut b) = (open(), open());
        a.add_user("carol", &StoredCredentials::new("pw", 4096))
            .unwrap();
        a.fast_issue("carol", &[7; 32], &fast_token(1, "HT-SHA-256-NONE", 100))
            .unwrap();
        // both cores read the New row, then both use it with count 1
        let read_by_a = a.fast_tokens("carol", &[7; 32]).unwrap()[0].clone();
        let read_by_b = b.fast_tokens("carol", &[7; 32]).unwrap()[0].clone();
        let first = a.fast_use("carol", &[7; 32], &read_by_a, Some(1)).unwrap();
        let second = b.fast_use("carol", &[7; 32], &read_by_b, Some(1)).unwrap();
        // (and the promoted token, read afresh, with the same count)
        let again = use_slot(&mut *b, "carol", &[7; 32], FastSlot::Current, Some(1));
        assert!(first && !second && !again);
    }
}
