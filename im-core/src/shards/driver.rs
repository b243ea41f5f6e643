//! The thin tokio driver of [`SlotLeases`]: keeps its time, runs its rounds
//! on a [`LeaseStore`] connection (made again after any failure), and
//! passes its events to the core and the core's answers back.

use std::time::Instant;

use cm_protocol::slots::Slot;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::lease_store::LeaseStore;
use super::leases::{LeaseEvent, SlotLeases};

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
    /// produces at most two events per slot, and the driver waits for room
    /// before its next round.
    pub events: mpsc::Receiver<LeaseEvent>,
    /// Answers and requests to the driver (bounded like `events`).
    pub commands: mpsc::Sender<LeaseCommand>,
}

/// Starts driving `leases` against the database at `url` (migrated by the
/// PostgreSQL store; the cluster prepared with the configured slot count
/// by the first round) until `stop`.
pub fn spawn(leases: SlotLeases, url: String, slots: u16, stop: CancellationToken) -> LeaseHandle {
    let room = 2 * usize::from(slots) + 16;
    let (event_tx, events) = mpsc::channel(room);
    let (commands, command_rx) = mpsc::channel(room);
    tokio::spawn(run(leases, url, slots, event_tx, command_rx, stop));
    LeaseHandle { events, commands }
}

async fn run(
    mut leases: SlotLeases,
    url: String,
    slots: u16,
    events: mpsc::Sender<LeaseEvent>,
    mut commands: mpsc::Receiver<LeaseCommand>,
    stop: CancellationToken,
) {
    let mut store: Option<LeaseStore> = None;
    loop {
        let now = Instant::now();
        leases.handle_timeout(now);
        if let Some(round) = leases.poll_round(now) {
            // A round answered after half a lease is of little use (it
            // counts from when it was sent), and its statements are each
            // bounded only on their own.
            let bounded =
                tokio::time::timeout(round.lease / 2, round_on(&mut store, &url, slots, &round));
            let outcome = match bounded.await {
                Ok(Ok(outcome)) => Some(outcome),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "slot lease round failed");
                    store = None;
                    None
                }
                Err(_) => {
                    tracing::warn!("slot lease round timed out");
                    store = None;
                    None
                }
            };
            leases.handle_outcome(round.id, outcome, Instant::now());
        }
        while let Some(event) = leases.poll_event() {
            if events.send(event).await.is_err() {
                return;
            }
        }
        let deadline = leases
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + std::time::Duration::from_secs(1));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => {}
            command = commands.recv() => match command {
                Some(LeaseCommand::HandedOver(slot)) => leases.handed_over(slot),
                Some(LeaseCommand::Drain) => leases.drain(Instant::now()),
                None => return,
            },
        }
    }
}

/// Runs one round, connecting (and preparing the cluster) first if needed.
async fn round_on(
    store: &mut Option<LeaseStore>,
    url: &str,
    slots: u16,
    round: &super::leases::Round,
) -> Result<super::leases::RoundOutcome, super::lease_store::LeaseError> {
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
