//! Slot ownership: the state machine alone, then against a real
//! PostgreSQL (`LONGLINK_TEST_POSTGRES`; skipped visibly without it).

use std::time::{Duration, Instant};

use cm_protocol::slots::Slot;

use super::*;

fn config(core: &str, slots: u16) -> LeaseConfig {
    LeaseConfig {
        slots,
        ..LeaseConfig::new(core, format!("{core}.test:5000"), 0)
    }
}

/// The member id of `core`'s process in these tests (incarnation 0).
fn id(core: &str) -> String {
    config(core, 1).member()
}

fn member(core: &str, slots: u32) -> Member {
    Member {
        core: id(core),
        address: format!("{core}.test:5000"),
        draining: false,
        slots,
    }
}

fn events(leases: &mut SlotLeases) -> Vec<LeaseEvent> {
    std::iter::from_fn(|| leases.poll_event()).collect()
}

fn owned(range: std::ops::Range<u16>, epoch: i64) -> Vec<(Slot, Epoch)> {
    range.map(|s| (Slot(s), Epoch(epoch))).collect()
}

/// Runs the round due at `now` and answers it with what the database owns
/// for the core (`owned`) and who is live (`members`).
fn answer_round(
    leases: &mut SlotLeases,
    now: Instant,
    owned: Vec<(Slot, Epoch)>,
    members: Vec<Member>,
) {
    let r = leases.poll_round(now).expect("a round is due");
    leases.handle_outcome(r.id, Some(RoundOutcome { owned, members }), now);
}

#[test]
fn a_lone_core_rejoins_first_then_claims_every_slot_at_once() {
    let t0 = Instant::now();
    let mut leases = SlotLeases::new(config("a", 8), t0);
    let first = leases.poll_round(t0).expect("a round is due at start");
    assert!(
        first.rejoin,
        "the first round gives back what a past run owned"
    );
    assert_eq!(first.claim, 0, "nothing is known of the members yet");
    assert_eq!(leases.poll_round(t0), None, "one round at a time");
    let outcome = RoundOutcome {
        owned: vec![],
        members: vec![member("a", 0)],
    };
    leases.handle_outcome(first.id, Some(outcome), t0);
    let second = leases
        .poll_round(t0)
        .expect("unowned slots are claimed without waiting a round");
    assert!(!second.rejoin);
    assert_eq!(second.claim, 8);
    let outcome = RoundOutcome {
        owned: owned(0..8, 1),
        members: vec![member("a", 8)],
    };
    leases.handle_outcome(second.id, Some(outcome), t0);
    let got = events(&mut leases);
    assert_eq!(got.len(), 8);
    assert!(got.contains(&LeaseEvent::Owned {
        slot: Slot(3),
        epoch: Epoch(1)
    }));
    assert_eq!(leases.epoch(Slot(7)), Some(Epoch(1)));
    assert_eq!(leases.poll_round(t0), None, "the next round waits");
    assert_eq!(leases.poll_timeout(), Some(t0 + Duration::from_secs(2)));
}

#[test]
fn the_share_of_each_core_follows_its_place_among_the_live_members() {
    let t0 = Instant::now();
    // 10 slots over 3 members: 4, 3, 3 in id order.
    for (core, share) in [("a", 4), ("b", 3), ("c", 3)] {
        let mut leases = SlotLeases::new(config(core, 10), t0);
        let r = leases.poll_round(t0).expect("round");
        let members = vec![member("a", 0), member("b", 0), member("c", 0)];
        leases.handle_outcome(
            r.id,
            Some(RoundOutcome {
                owned: vec![],
                members,
            }),
            t0,
        );
        assert_eq!(leases.poll_round(t0).expect("round").claim, share, "{core}");
    }
}

#[test]
fn with_no_successful_round_for_a_lease_every_slot_is_lost_and_the_core_rejoins() {
    let t0 = Instant::now();
    let mut leases = SlotLeases::new(config("a", 4), t0);
    answer_round(&mut leases, t0, owned(0..4, 5), vec![member("a", 4)]);
    events(&mut leases);
    // Rounds fail (the database is unreachable) until the lease runs out.
    let mut now = t0;
    while now < t0 + Duration::from_secs(8) {
        now = leases.poll_timeout().expect("a deadline");
        leases.handle_timeout(now);
        if let Some(r) = leases.poll_round(now) {
            leases.handle_outcome(r.id, None, now);
        }
    }
    assert_eq!(
        now,
        t0 + Duration::from_secs(8),
        "lost exactly a lease after"
    );
    let lost = events(&mut leases);
    assert_eq!(lost.len(), 4);
    assert!(lost.iter().all(|e| matches!(e, LeaseEvent::Lost { .. })));
    assert_eq!(leases.owned(), 0);
    let next = leases
        .poll_round(now + Duration::from_secs(2))
        .expect("round");
    assert!(next.rejoin, "what the old incarnation held is given back");
}

#[test]
fn a_round_answered_after_the_local_lease_ran_out_is_not_believed() {
    let t0 = Instant::now();
    let mut leases = SlotLeases::new(config("a", 2), t0);
    answer_round(&mut leases, t0, owned(0..2, 1), vec![member("a", 2)]);
    events(&mut leases);
    let t1 = t0 + Duration::from_secs(2);
    let slow = leases.poll_round(t1).expect("round");
    // The core was paused (or the database slow) past its lease.
    let t2 = t0 + Duration::from_secs(11);
    leases.handle_timeout(t2);
    assert_eq!(events(&mut leases).len(), 2, "both slots lost at expiry");
    leases.handle_outcome(
        slow.id,
        Some(RoundOutcome {
            owned: owned(0..2, 1),
            members: vec![member("a", 2)],
        }),
        t2,
    );
    assert_eq!(events(&mut leases), vec![], "the stale answer owns nothing");
    assert_eq!(leases.epoch(Slot(0)), None);
    assert!(leases.poll_round(t2).expect("at once").rejoin);
}

#[test]
fn a_slot_whose_epoch_changed_is_lost_then_owned_again() {
    let t0 = Instant::now();
    let mut leases = SlotLeases::new(config("a", 1), t0);
    let r = leases.poll_round(t0).expect("round");
    let one = |epoch| RoundOutcome {
        owned: owned(0..1, epoch),
        members: vec![member("a", 1)],
    };
    leases.handle_outcome(r.id, Some(one(1)), t0);
    events(&mut leases);
    let t1 = t0 + Duration::from_secs(2);
    let r = leases.poll_round(t1).expect("round");
    leases.handle_outcome(r.id, Some(one(2)), t1);
    assert_eq!(
        events(&mut leases),
        vec![
            LeaseEvent::Lost { slot: Slot(0) },
            LeaseEvent::Owned {
                slot: Slot(0),
                epoch: Epoch(2)
            }
        ]
    );
}

#[test]
fn a_core_above_its_share_hands_over_in_batches_while_another_is_below() {
    let t0 = Instant::now();
    let mut leases = SlotLeases::new(
        LeaseConfig {
            handover_batch: 3,
            ..config("a", 10)
        },
        t0,
    );
    answer_round(&mut leases, t0, owned(0..10, 1), vec![member("a", 10)]);
    events(&mut leases);
    // b joined: a's share is 5, b owns nothing.
    let t1 = t0 + Duration::from_secs(2);
    answer_round(
        &mut leases,
        t1,
        owned(0..10, 1),
        vec![member("a", 10), member("b", 0)],
    );
    let asked = events(&mut leases);
    assert_eq!(
        asked,
        [9, 8, 7]
            .map(|s| LeaseEvent::HandOver { slot: Slot(s) })
            .to_vec(),
        "the highest slots, one batch"
    );
    assert_eq!(
        leases.epoch(Slot(9)),
        Some(Epoch(1)),
        "owned until given back"
    );
    leases.handed_over(Slot(9));
    leases.handed_over(Slot(8));
    leases.handed_over(Slot(3)); // never asked for: ignored
    let t2 = t1 + Duration::from_secs(2);
    let r = leases.poll_round(t2).expect("round");
    assert_eq!(r.release, vec![Slot(8), Slot(9)]);
    assert_eq!(r.claim, 0);
    leases.handle_outcome(
        r.id,
        Some(RoundOutcome {
            owned: owned(0..8, 1),
            members: vec![member("a", 8), member("b", 2)],
        }),
        t2,
    );
    // 7 is still being handed over: one more batch of 3 - 1 = 2.
    assert_eq!(
        events(&mut leases),
        vec![
            LeaseEvent::HandOver { slot: Slot(6) },
            LeaseEvent::HandOver { slot: Slot(5) }
        ]
    );
    // Once b is at its share, nothing more moves.
    for s in [7, 6, 5] {
        leases.handed_over(Slot(s));
    }
    let t3 = t2 + Duration::from_secs(2);
    answer_round(
        &mut leases,
        t3,
        owned(0..5, 1),
        vec![member("a", 5), member("b", 5)],
    );
    assert_eq!(events(&mut leases), vec![]);
    assert_eq!(leases.owned(), 5);
}

#[test]
fn a_draining_core_claims_nothing_and_hands_everything_over() {
    let t0 = Instant::now();
    let mut leases = SlotLeases::new(config("a", 4), t0);
    answer_round(
        &mut leases,
        t0,
        owned(0..2, 1),
        vec![member("a", 2), member("b", 2)],
    );
    events(&mut leases);
    leases.drain(t0);
    assert_eq!(
        events(&mut leases),
        vec![
            LeaseEvent::HandOver { slot: Slot(1) },
            LeaseEvent::HandOver { slot: Slot(0) }
        ]
    );
    let r = leases
        .poll_round(t0)
        .expect("draining announces itself at once");
    assert!(r.draining);
    assert_eq!(r.claim, 0);
}

/// A real PostgreSQL database with the store's schema, or `None` (the
/// caller prints "skipped").
fn database(prefix: &str) -> Option<String> {
    let url = crate::storage::postgres_for_tests(prefix)?;
    let migrate = url.clone();
    std::thread::spawn(move || crate::storage::Postgres::open(&migrate, 100).map(drop))
        .join()
        .expect("migration thread")
        .expect("migrating the test database");
    Some(url)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A fast lease for tests: 1 s, renewed every 200 ms.
fn fast(core: &str, slots: u16) -> LeaseConfig {
    LeaseConfig {
        lease: Duration::from_secs(1),
        round_every: Duration::from_millis(200),
        ..config(core, slots)
    }
}

/// Plays a core's part for a lease driver: records what it owns and hands
/// slots over as soon as asked.
struct Owner {
    handle: LeaseHandle,
    owned: std::collections::BTreeMap<Slot, Epoch>,
}

impl Owner {
    /// Takes every event that came, acting on hand-overs.
    async fn absorb(&mut self) {
        while let Ok(event) = self.handle.events.try_recv() {
            match event {
                LeaseEvent::Owned { slot, epoch } => {
                    self.owned.insert(slot, epoch);
                }
                LeaseEvent::Lost { slot } => {
                    self.owned.remove(&slot);
                }
                LeaseEvent::HandOver { slot } => {
                    self.owned.remove(&slot);
                    let _ = self
                        .handle
                        .commands
                        .send(LeaseCommand::HandedOver(slot))
                        .await;
                }
            }
        }
    }
}

/// Waits (at most `limit`) until `done` holds of the owners.
async fn until(owners: &mut [&mut Owner], limit: Duration, done: impl Fn(&[&mut Owner]) -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        for owner in owners.iter_mut() {
            owner.absorb().await;
        }
        if done(&*owners) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: owned {:?}",
            owners.iter().map(|o| o.owned.len()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn two_cores_share_the_slots_and_a_killed_ones_move_to_the_survivor_within_lease_and_round() {
    let Some(url) = database("leases_move") else {
        println!("skipped: LONGLINK_TEST_POSTGRES is unset");
        return;
    };
    runtime().block_on(async {
        let spawn = |core: &str| {
            let leases = SlotLeases::new(fast(core, 64), Instant::now());
            let stop = tokio_util::sync::CancellationToken::new();
            let handle = driver::spawn(leases, url.clone(), 64, stop.clone());
            (
                Owner {
                    handle,
                    owned: Default::default(),
                },
                stop,
            )
        };
        let (mut a, stop_a) = spawn("core-a");
        until(&mut [&mut a], Duration::from_secs(5), |o| {
            o[0].owned.len() == 64
        })
        .await;
        let (mut b, _stop_b) = spawn("core-b");
        until(&mut [&mut a, &mut b], Duration::from_secs(10), |o| {
            o[0].owned.len() == 32 && o[1].owned.len() == 32
        })
        .await;
        assert!(
            a.owned.keys().all(|s| !b.owned.contains_key(s)),
            "no slot is owned twice"
        );
        let a_had = a.owned.clone();
        // a dies at once (like SIGKILL: no drain, no release).
        stop_a.cancel();
        let killed = tokio::time::Instant::now();
        until(&mut [&mut b], Duration::from_secs(5), |o| {
            o[0].owned.len() == 64
        })
        .await;
        let moved = killed.elapsed();
        assert!(
            // lease + round, and slack for a loaded machine
            moved <= Duration::from_millis(1000 + 200 + 1800),
            "slots moved after {moved:?}, past lease + round + slack"
        );
        for (slot, epoch) in &a_had {
            assert!(b.owned[slot] > *epoch, "slot {slot} moved with a new epoch");
        }
    });
}

#[test]
fn a_write_fenced_with_a_lost_slots_epoch_is_refused_and_the_new_owners_passes() {
    let Some(url) = database("leases_fence") else {
        println!("skipped: LONGLINK_TEST_POSTGRES is unset");
        return;
    };
    runtime().block_on(async {
        let mut a_store = LeaseStore::connect(&url).await.expect("connect");
        a_store.prepare(4).await.expect("prepare");
        let mut a = SlotLeases::new(fast("core-a", 4), Instant::now());
        let a_epoch = own_all(&mut a, &mut a_store).await;
        let a_id = id("core-a");
        let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
            .batch_execute("CREATE TABLE fenced_log (slot INTEGER, writer TEXT)")
            .await
            .expect("table");
        let fence_a = Fence {
            core: &a_id,
            slot: Slot(2),
            epoch: a_epoch,
        };
        assert!(
            fenced_write(&mut client, fence_a).await.is_ok(),
            "a owns slot 2"
        );
        // a stops renewing (paused); after its lease, before anyone claims,
        // its writes are refused already.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(matches!(
            fenced_write(&mut client, fence_a).await,
            Err(LeaseError::Fenced { .. })
        ));
        let mut b_store = LeaseStore::connect(&url).await.expect("connect");
        let mut b = SlotLeases::new(fast("core-b", 4), Instant::now());
        let b_epoch = own_all(&mut b, &mut b_store).await;
        assert!(b_epoch > a_epoch);
        // a wakes and renews its membership (a rejoin round): its old
        // epoch still does not pass, though its lease is live again.
        let rejoin = Round {
            id: 99,
            rejoin: true,
            claim: 0,
            ..round_of(&fast("core-a", 4))
        };
        let outcome = a_store.run(&rejoin).await.expect("rejoin");
        assert_eq!(outcome.owned, vec![], "b owns everything");
        assert!(matches!(
            fenced_write(&mut client, fence_a).await,
            Err(LeaseError::Fenced { .. })
        ));
        let fence_b = Fence {
            core: &id("core-b"),
            slot: Slot(2),
            epoch: b_epoch,
        };
        assert!(fenced_write(&mut client, fence_b).await.is_ok());
        let writers: Vec<String> = client
            .query("SELECT writer FROM fenced_log ORDER BY writer", &[])
            .await
            .expect("read")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            writers,
            vec![a_id.clone(), id("core-b")],
            "exactly the passed writes"
        );
    });
}

#[test]
fn a_claim_skips_a_slot_whose_fenced_write_is_open_and_takes_it_after_the_commit() {
    let Some(url) = database("leases_skip") else {
        println!("skipped: LONGLINK_TEST_POSTGRES is unset");
        return;
    };
    runtime().block_on(async {
        let mut a_store = LeaseStore::connect(&url).await.expect("connect");
        a_store.prepare(2).await.expect("prepare");
        let mut a = SlotLeases::new(fast("core-a", 2), Instant::now());
        let a_epoch = own_all(&mut a, &mut a_store).await;
        let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        // a's write passes its fence and stays open past a's lease.
        let tx = client.transaction().await.expect("begin");
        let fence = Fence {
            core: &id("core-a"),
            slot: Slot(0),
            epoch: a_epoch,
        };
        check_fence(&tx, fence).await.expect("a owns slot 0");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut b_store = LeaseStore::connect(&url).await.expect("connect");
        let b_round = Round {
            id: 1,
            rejoin: false,
            claim: 2,
            ..round_of(&fast("core-b", 2))
        };
        let started = Instant::now();
        let outcome = b_store.run(&b_round).await.expect("b's round");
        // (a claim that waited for the open write would wait until its
        // commit below, which never comes first)
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the claim did not wait for the open write"
        );
        assert_eq!(
            outcome.owned.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![Slot(1)],
            "slot 0 is skipped while a's write holds it"
        );
        tx.commit()
            .await
            .expect("a's write commits: it passed its fence");
        let outcome = b_store
            .run(&Round { id: 2, ..b_round })
            .await
            .expect("b's next round");
        assert_eq!(outcome.owned.len(), 2);
        assert!(outcome.owned.iter().all(|(_, e)| *e > a_epoch));
    });
}

#[test]
fn a_core_configured_for_another_slot_count_is_refused() {
    let Some(url) = database("leases_count") else {
        println!("skipped: LONGLINK_TEST_POSTGRES is unset");
        return;
    };
    runtime().block_on(async {
        let mut store = LeaseStore::connect(&url).await.expect("connect");
        store.prepare(16).await.expect("first prepare fixes 16");
        store
            .prepare(16)
            .await
            .expect("the same count again is fine");
        assert!(matches!(
            store.prepare(32).await,
            Err(LeaseError::SlotCount {
                found: 16,
                configured: 32
            })
        ));
    });
}

/// A round for `config`'s core with nothing to release.
fn round_of(config: &LeaseConfig) -> Round {
    Round {
        id: 0,
        core: config.member(),
        address: config.address.clone(),
        lease: config.lease,
        draining: false,
        rejoin: false,
        release: vec![],
        claim: 0,
    }
}

/// Runs rounds of `leases` until they stop coming at once (it then owns
/// its share); every slot's epoch must be the same, which is returned.
async fn own_all(leases: &mut SlotLeases, store: &mut LeaseStore) -> Epoch {
    while let Some(round) = leases.poll_round(Instant::now()) {
        let outcome = store.run(&round).await.expect("round");
        leases.handle_outcome(round.id, Some(outcome), Instant::now());
    }
    let mut epochs = std::iter::from_fn(|| leases.poll_event()).filter_map(|e| match e {
        LeaseEvent::Owned { epoch, .. } => Some(epoch),
        _ => None,
    });
    let first = epochs.next().expect("owns something");
    assert!(epochs.all(|e| e == first));
    first
}

/// Logs `fence`'s writer in `fenced_log` if the fence holds.
async fn fenced_write(
    client: &mut tokio_postgres::Client,
    fence: Fence<'_>,
) -> Result<(), LeaseError> {
    let tx = client.transaction().await?;
    check_fence(&tx, fence).await?;
    tx.execute(
        "INSERT INTO fenced_log (slot, writer) VALUES ($1, $2)",
        &[&i32::from(fence.slot.0), &fence.core],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

#[test]
fn a_replacement_process_of_the_same_core_cannot_be_robbed_by_the_old_one_coming_back() {
    let Some(url) = database("leases_twins") else {
        println!("skipped: LONGLINK_TEST_POSTGRES is unset");
        return;
    };
    runtime().block_on(async {
        let old_config = LeaseConfig {
            incarnation: 1,
            ..fast("core-a", 4)
        };
        let new_config = LeaseConfig {
            incarnation: 2,
            ..fast("core-a", 4)
        };
        let mut store = LeaseStore::connect(&url).await.expect("connect");
        store.prepare(4).await.expect("prepare");
        let mut old = SlotLeases::new(old_config.clone(), Instant::now());
        let old_epoch = own_all(&mut old, &mut store).await;
        // The old process is paused past its lease; its replacement starts.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut new = SlotLeases::new(new_config.clone(), Instant::now());
        let new_epoch = own_all(&mut new, &mut store).await;
        assert!(new_epoch > old_epoch);
        assert_eq!(new.owned(), 4);
        // The old process wakes and rejoins: it gives back only its own
        // rows, and the live replacement's slots are not claimable.
        let rejoin = Round {
            id: 7,
            rejoin: true,
            claim: 4,
            ..round_of(&old_config)
        };
        assert_eq!(store.run(&rejoin).await.expect("rejoin").owned, vec![]);
        let again = Round {
            id: 8,
            ..round_of(&new_config)
        };
        let kept = store.run(&again).await.expect("the replacement's round");
        assert_eq!(kept.owned.len(), 4);
        assert!(kept.owned.iter().all(|(_, e)| *e == new_epoch));
        let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
            .batch_execute("CREATE TABLE fenced_log (slot INTEGER, writer TEXT)")
            .await
            .expect("table");
        let (old_id, new_id) = (old_config.member(), new_config.member());
        let fence = |core, epoch| Fence {
            core,
            slot: Slot(1),
            epoch,
        };
        assert!(matches!(
            fenced_write(&mut client, fence(&old_id, new_epoch)).await,
            Err(LeaseError::Fenced { .. })
        ));
        assert!(
            fenced_write(&mut client, fence(&new_id, new_epoch))
                .await
                .is_ok()
        );
    });
}

#[test]
fn the_postgres_stores_fenced_write_passes_while_the_slot_is_owned_and_is_refused_once_the_lease_ran_out()
 {
    let Some(url) = database("leases_store_fence") else {
        println!("skipped: LONGLINK_TEST_POSTGRES is unset");
        return;
    };
    let (epoch, member) = runtime().block_on(async {
        let mut store = LeaseStore::connect(&url).await.expect("connect");
        store.prepare(4).await.expect("prepare");
        let mut a = SlotLeases::new(fast("core-a", 4), Instant::now());
        (own_all(&mut a, &mut store).await, id("core-a"))
    });
    let store_url = url.clone();
    std::thread::spawn(move || {
        use crate::storage::{OfflineQuota, StorageError, Store, WriteFence};
        let mut db = crate::storage::Postgres::open(&store_url, 100).expect("store");
        db.add_user("alice", &xmpp_sasl::StoredCredentials::new("pw", 4096))
            .expect("user");
        let fence = WriteFence {
            core: member.clone(),
            slot: 2,
            epoch: epoch.0,
        };
        let write = |db: &mut crate::storage::Postgres, body: &[u8]| {
            db.begin()?;
            let done = db.check_fence(&fence).and_then(|()| {
                db.store_offline_row("alice", "2026-01-01T00:00:00Z", body, OfflineQuota::Checked)
            });
            match done {
                Ok(_) => db.commit(),
                Err(e) => {
                    db.rollback();
                    Err(e)
                }
            }
        };
        write(&mut db, b"<message>one</message>").expect("a owns slot 2: written");
        // a stops renewing (paused): once its lease ran out, refused
        std::thread::sleep(Duration::from_millis(1100));
        assert!(matches!(
            write(&mut db, b"<message>two</message>"),
            Err(StorageError::Fenced { slot: 2, .. })
        ));
        // a fence naming another epoch never holds
        let stale = WriteFence {
            epoch: epoch.0 - 1,
            ..fence.clone()
        };
        db.begin().expect("begin");
        assert!(matches!(
            db.check_fence(&stale),
            Err(StorageError::Fenced { .. })
        ));
        db.rollback();
        let stored = db.offline("alice").expect("read");
        assert_eq!(stored.len(), 1, "exactly the fenced write that held");
    })
    .join()
    .expect("store thread");
}
