//! The clients of a chaos run: one task per user, a client-sdk [`Client`]
//! over QUIC through the balancer with stream management, resumption and
//! message states. Each sends numbered messages to random other users,
//! moves its UDP socket now and then (QUIC migration), and some go offline
//! for a while; everything they learn goes into the [`Ledger`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use client_sdk::{Client, ConnectOptions, Event, MessageState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use super::ledger::{self, Ledger};

/// Where the run is: what the clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Send, move, go offline and come back.
    Chaos,
    /// Stop sending; everybody comes (and stays) online so what is owed
    /// to them arrives.
    Heal,
    /// Log out and end.
    Stop,
}

/// What every client task shares.
pub struct Shared {
    /// The record of the run.
    pub ledger: Arc<Ledger>,
    /// The balancer.
    pub server: SocketAddr,
    /// The XMPP domain.
    pub domain: String,
    /// The cluster CA.
    pub ca: PathBuf,
    /// Accounts are PREFIX0…
    pub prefix: String,
    /// Their password.
    pub password: String,
    /// How many users.
    pub users: usize,
    /// Mean time between two messages of one user.
    pub send_every: Duration,
    /// Mean time between two moves of one client's UDP socket.
    pub migrate_every: Duration,
    /// Every N-th user goes offline now and then (0: nobody).
    pub offline_every: usize,
    /// Users that logged in at least once.
    pub online_once: AtomicUsize,
}

impl Shared {
    fn jid(&self, user: usize) -> String {
        format!("{}{user}@{}", self.prefix, self.domain)
    }

    fn options(&self, user: usize) -> ConnectOptions {
        ConnectOptions::new(self.server, &self.jid(user), &self.password)
            .with_ca_file(self.ca.clone())
            .with_resource("chaos")
            .with_receipts(false)
            .without_carbons()
            .with_message_states()
    }
}

/// Which of `lost` (sender, seq) are in their recipients' archives, as
/// the recipients see them from a separate resource; at most `users`
/// recipients are asked (None for the others), within `limit`. Also
/// returns how many of this run's messages the archives showed in all (a
/// check that the lookup itself works).
pub async fn audit_archive(
    shared: &Shared,
    lost: &[ledger::Lost],
    users: usize,
    limit: Duration,
) -> (Vec<Option<bool>>, usize) {
    use std::collections::{BTreeMap, BTreeSet, HashSet};
    let mut by_recipient: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for l in lost {
        if by_recipient.len() < users || by_recipient.contains_key(&l.recipient) {
            by_recipient
                .entry(l.recipient)
                .or_default()
                .insert(l.sender);
        }
    }
    let mut found: HashSet<(usize, usize, u64)> = HashSet::new();
    let mut asked: HashSet<usize> = HashSet::new();
    let audit = async {
        for (&recipient, senders) in &by_recipient {
            let opts = shared.options(recipient).with_resource("audit");
            let Ok(client) = Client::connect(opts).await else {
                continue;
            };
            let mut complete = true;
            for &sender in senders {
                let mut q = client_sdk::im::HistoryQuery {
                    with: Some(format!("{}{sender}@{}", shared.prefix, shared.domain)),
                    max: Some(250),
                    ..Default::default()
                };
                // bounded: a few pages per conversation are plenty here
                for _ in 0..20 {
                    let Ok(page) = client.history(&q).await else {
                        complete = false;
                        break;
                    };
                    for m in &page.messages {
                        if let Some((s, seq)) =
                            m.message.body.as_deref().and_then(ledger::parse_body)
                            && s == sender
                        {
                            found.insert((sender, recipient, seq));
                        }
                    }
                    if page.complete || page.last.is_none() {
                        break;
                    }
                    q.after = page.last;
                }
            }
            if complete {
                asked.insert(recipient);
            }
            client.disconnect().await;
        }
    };
    let _ = tokio::time::timeout(limit, audit).await;
    let verdicts = lost
        .iter()
        .map(|l| {
            asked
                .contains(&l.recipient)
                .then(|| found.contains(&(l.sender, l.recipient, l.seq)))
        })
        .collect();
    (verdicts, found.len())
}

/// How a connected stretch of a client ended.
enum End {
    /// The SDK ended the session for good.
    Gone,
    /// This user goes offline for a while.
    Offline,
    /// The run is over.
    Stop,
}

/// A uniformly random duration in [mean/2, 3·mean/2].
fn jitter(rng: &mut StdRng, mean: Duration) -> Duration {
    mean.mul_f64(rng.gen_range(0.5..1.5))
}

/// Runs user `me` until the phase is [`Phase::Stop`].
pub async fn client(shared: Arc<Shared>, me: usize, seed: u64, mut phase: watch::Receiver<Phase>) {
    let ledger = shared.ledger.clone();
    let mut rng = StdRng::seed_from_u64(seed);
    // this user's messages by id, to match acknowledgements and errors
    let mut seq_of: HashMap<String, u64> = HashMap::new();
    let goes_offline = shared.offline_every > 0 && me.is_multiple_of(shared.offline_every);
    let mut first = true;
    loop {
        let Some(mut client) = login(&shared, me, &mut phase).await else {
            return;
        };
        if first {
            shared.online_once.fetch_add(1, Ordering::Relaxed);
            first = false;
        }
        ledger.note(me, format!("logged in as {}", client.jid()));
        if let Err(e) = client.send_presence(0).await {
            ledger.note(me, format!("presence failed: {e}"));
        }
        let mut next_send = Instant::now() + jitter(&mut rng, shared.send_every);
        let mut next_move = Instant::now() + jitter(&mut rng, shared.migrate_every);
        let offline_at = Instant::now() + Duration::from_secs(rng.gen_range(8..25));
        let end = loop {
            let chaos = *phase.borrow() == Phase::Chaos;
            tokio::select! {
                ev = client.next_event() => match ev {
                    None | Some(Event::Disconnected) => break End::Gone,
                    Some(ev) => handle(&shared, me, &seq_of, ev),
                },
                _ = sleep_until(next_send), if chaos => {
                    next_send = Instant::now() + jitter(&mut rng, shared.send_every);
                    let to = (me + rng.gen_range(1..shared.users)) % shared.users;
                    let seq = ledger.sending(me, to);
                    match client.send_message(&shared.jid(to), &ledger::body(me, seq)).await {
                        Ok(id) => {
                            ledger.sent(me, seq, &id);
                            seq_of.insert(id, seq);
                        }
                        Err(e) => {
                            ledger.abandoned(me, seq);
                            ledger.note(me, format!("send failed: {e}"));
                        }
                    }
                }
                _ = sleep_until(next_move), if chaos => {
                    next_move = Instant::now() + jitter(&mut rng, shared.migrate_every);
                    match client.network_changed() {
                        Ok(()) => ledger.note(me, format!("moved to {:?}", client.local_addr())),
                        Err(e) => ledger.note(me, format!("move failed: {e}")),
                    }
                }
                _ = sleep_until(offline_at), if chaos && goes_offline => break End::Offline,
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow() == Phase::Stop {
                        break End::Stop;
                    }
                }
            }
        };
        match end {
            End::Gone => {
                ledger.closed(me);
                ledger.note(me, "session over, logging in again");
            }
            End::Offline => {
                drain(&shared, me, &seq_of, &mut client).await;
                client.disconnect().await;
                ledger.closed(me);
                let back = Instant::now() + Duration::from_secs(rng.gen_range(5..15));
                ledger.note(me, "went offline");
                // back at its time, or as soon as the run heals
                while *phase.borrow() == Phase::Chaos {
                    tokio::select! {
                        _ = sleep_until(back) => break,
                        changed = phase.changed() => if changed.is_err() { break },
                    }
                }
            }
            End::Stop => {
                drain(&shared, me, &seq_of, &mut client).await;
                client.disconnect().await;
                return;
            }
        }
    }
}

/// Logs `me` in, trying again until it works or the run stops.
async fn login(shared: &Shared, me: usize, phase: &mut watch::Receiver<Phase>) -> Option<Client> {
    let mut attempt = 0u32;
    loop {
        if *phase.borrow() == Phase::Stop {
            return None;
        }
        match Client::connect(shared.options(me)).await {
            Ok(c) => return Some(c),
            Err(e) => {
                attempt += 1;
                shared
                    .ledger
                    .note(me, format!("login attempt {attempt} failed: {e}"));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            changed = phase.changed() => if changed.is_err() { return None },
        }
    }
}

/// Reads the events already waiting (until none comes for 200 ms), so
/// what the SDK received is counted before the client closes.
async fn drain(shared: &Shared, me: usize, seq_of: &HashMap<String, u64>, client: &mut Client) {
    while let Ok(Some(ev)) =
        tokio::time::timeout(Duration::from_millis(200), client.next_event()).await
    {
        handle(shared, me, seq_of, ev);
    }
}

/// Records what one event says.
fn handle(shared: &Shared, me: usize, seq_of: &HashMap<String, u64>, ev: Event) {
    let ledger = &shared.ledger;
    match ev {
        Event::MessageState { id, state } => {
            let Some(&seq) = seq_of.get(&id) else { return };
            match state {
                MessageState::Acknowledged => ledger.acknowledged(me, seq),
                MessageState::Failed(why) => ledger.failed(me, seq, &why),
                _ => {}
            }
        }
        Event::Message(m) if m.kind == "error" => {
            if let Some(&seq) = m.id.as_ref().and_then(|id| seq_of.get(id)) {
                let condition = m.error.unwrap_or_else(|| "unknown".into());
                ledger.note(me, format!("message {seq} refused: {condition}"));
                ledger.refused(me, seq, &condition);
            }
        }
        Event::Message(m) => {
            if let Some((sender, seq)) = m.body.as_deref().and_then(ledger::parse_body) {
                ledger.delivered(me, sender, seq);
            }
        }
        Event::ConnectionLost(why) => ledger.note(me, format!("connection lost: {why}")),
        Event::Reconnected { resumed } => ledger.note(
            me,
            if resumed {
                "reconnected, resumed"
            } else {
                "reconnected, new session"
            },
        ),
        Event::StreamError(condition) => ledger.note(me, format!("stream error {condition}")),
        _ => {}
    }
}
