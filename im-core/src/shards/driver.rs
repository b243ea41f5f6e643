//! The thin tokio driver of [`SlotLeases`]: keeps its time, runs its rounds
//! on a [`LeaseStore`] connection (made again after any failure), and
//! passes its events to the core and the core's answers back. The local
//! lease is watched while a round is under way too, so a round that hangs
//! cannot keep a core serving slots past its lease.

use std::time::{Duration, Instant};

use cm_protocol::slots::Slot;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::lease_store::{LeaseError, LeaseStore};
use super::leases::{LeaseEvent, Member, Round, RoundOutcome, SlotLeases};

/// What the core tells the lease driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseCommand {
    /// A slot asked for by [`LeaseEvent::HandOver`] is handed over.
    HandedOver(Slot),
    /// Give every slot away (before a planned shutdown).
    Drain,
}

/// The core's end of a running lease driver.
pub struct LeaseHandle {
    /// Ownership changes, in order. Bounded by the slot count: a round
    /// produces at most two events per slot.
    pub events: mpsc::Receiver<LeaseEvent>,
    /// Answers and requests to the driver (bounded like `events`).
    pub commands: mpsc::Sender<LeaseCommand>,
    /// The live cores as the latest successful round read them.
    pub members: watch::Receiver<Vec<Member>>,
}

/// Starts driving `leases` against the database at `url` (migrated by the
/// PostgreSQL store; the cluster prepared with the configured slot count
/// by the first round) until `stop`. A cluster prepared with another slot
/// count stops the driver (logged): this core cannot take part.
pub fn spawn(leases: SlotLeases, url: String, slots: u16, stop: CancellationToken) -> LeaseHandle {
    let room = 2 * usize::from(slots) + 16;
    let (event_tx, events) = mpsc::channel(room);
    let (commands, command_rx) = mpsc::channel(room);
    let (members_tx, members) = watch::channel(Vec::new());
    let driver = Driver {
        leases,
        url,
        slots,
        store: None,
        events: event_tx,
        members: members_tx,
    };
    tokio::spawn(driver.run(command_rx, stop));
    LeaseHandle {
        events,
        commands,
        members,
    }
}

struct Driver {
    leases: SlotLeases,
    url: String,
    slots: u16,
    store: Option<LeaseStore>,
    events: mpsc::Sender<LeaseEvent>,
    members: watch::Sender<Vec<Member>>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<LeaseCommand>, stop: CancellationToken) {
        loop {
            let now = Instant::now();
            self.leases.handle_timeout(now);
            if !self.pass_events().await {
                return;
            }
            if let Some(round) = self.leases.poll_round(now) {
                let outcome = tokio::select! {
                    () = stop.cancelled() => return,
                    outcome = self.round(&round) => outcome,
                };
                match outcome {
                    Err(LeaseError::SlotCount { found, configured }) => {
                        tracing::error!(
                            found,
                            configured,
                            "slot counts differ: this core takes no slots"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "slot lease round failed");
                        self.store = None;
                        self.leases.handle_outcome(round.id, None, Instant::now());
                    }
                    Ok(outcome) => {
                        self.members.send_if_modified(|m| {
                            let changed = *m != outcome.members;
                            if changed {
                                m.clone_from(&outcome.members);
                            }
                            changed
                        });
                        self.leases
                            .handle_outcome(round.id, Some(outcome), Instant::now())
                    }
                }
                continue;
            }
            let deadline = self
                .leases
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => {}
                command = commands.recv() => match command {
                    Some(LeaseCommand::HandedOver(slot)) => self.leases.handed_over(slot),
                    Some(LeaseCommand::Drain) => self.leases.drain(Instant::now()),
                    None => return,
                },
            }
        }
    }

    /// Runs `round` within half a lease (it counts from when it was sent),
    /// meanwhile losing the slots if the local lease runs out.
    async fn round(&mut self, round: &Round) -> Result<RoundOutcome, LeaseError> {
        let Self {
            leases,
            url,
            slots,
            store,
            events,
            ..
        } = self;
        let work = tokio::time::timeout(round.lease / 2, round_on(store, url, *slots, round));
        tokio::pin!(work);
        loop {
            let expiry = leases.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                outcome = &mut work => return outcome.unwrap_or(Err(LeaseError::Timeout)),
                () = sleep_until(expiry) => {
                    leases.handle_timeout(Instant::now());
                    while let Some(event) = leases.poll_event() {
                        if events.send(event).await.is_err() {
                            return Err(LeaseError::Timeout);
                        }
                    }
                }
            }
        }
    }

    /// Hands the core every event waiting; false once the core is gone.
    async fn pass_events(&mut self) -> bool {
        while let Some(event) = self.leases.poll_event() {
            if self.events.send(event).await.is_err() {
                return false;
            }
        }
        true
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs one round, connecting (and preparing the cluster) first if needed.
async fn round_on(
    store: &mut Option<LeaseStore>,
    url: &str,
    slots: u16,
    round: &Round,
) -> Result<RoundOutcome, LeaseError> {
    let conn = match store {
        Some(conn) => conn,
        None => {
            let mut conn = LeaseStore::connect(url).await?;
            conn.prepare(slots).await?;
            store.insert(conn)
        }
    };
    conn.run(round).await
}
