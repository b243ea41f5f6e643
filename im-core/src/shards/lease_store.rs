//! Slot ownership in PostgreSQL: the tables, one lease round as one
//! transaction, and the fence a durable write checks.
//!
//! Tables (migration 3 of the PostgreSQL store): `cluster` (the slot
//! count, fixed when the first core prepares it), `cores` (one row per
//! member, a core process `core#incarnation`: address, membership lease
//! expiry, draining) and `slots` (owner member and epoch of each slot). A slot's owner holds it while the owner's
//! membership lease is live; there is no per-slot expiry, so renewing is
//! one row's update however many slots a core owns.
//!
//! Safety rests on row locks, not on clocks agreeing: a fenced write locks
//! its slot's row `FOR SHARE` and checks owner, epoch and the owner's live
//! lease in the same transaction; a claim takes only rows it can lock
//! `FOR UPDATE SKIP LOCKED`, so it never waits on (or deadlocks with) a
//! write under way, and a write that passed its fence commits before the
//! slot can change hands. Every claim raises the slot's epoch.

use std::time::Duration;

use cm_protocol::slots::Slot;
use tokio_postgres::{Client, GenericClient, NoTls};

use super::leases::{Epoch, Member, Round, RoundOutcome};

/// Longest wait for one lease round or fence check (well under a lease).
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// PostgreSQL reported an error or the connection failed.
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// PostgreSQL did not answer within the deadline.
    #[error("PostgreSQL did not answer within {} ms", IO_TIMEOUT.as_millis())]
    Timeout,
    /// The cluster was prepared with another slot count.
    #[error("the cluster has {found} slots, this core is configured for {configured}")]
    SlotCount {
        /// In the database.
        found: i32,
        /// In this core's configuration.
        configured: u16,
    },
    /// A fenced write's check failed: the writer does not own the slot at
    /// that epoch (it was taken over, or its lease lapsed).
    #[error("fenced: slot {slot} is not this core's at epoch {epoch}")]
    Fenced {
        /// The slot.
        slot: Slot,
        /// The epoch the write carried.
        epoch: i64,
    },
}

/// Runs `call` within [`IO_TIMEOUT`].
async fn bounded<T>(
    call: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, LeaseError> {
    match tokio::time::timeout(IO_TIMEOUT, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(LeaseError::Timeout),
    }
}

/// A connection for lease rounds, apart from the storage thread's so that
/// renewing never waits behind a queue of writes.
pub struct LeaseStore {
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LeaseStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LeaseStore {
    /// Connects to the database the PostgreSQL store migrated (migration 3
    /// made the tables).
    pub async fn connect(url: &str) -> Result<Self, LeaseError> {
        let (client, connection) = bounded(tokio_postgres::connect(url, NoTls)).await?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "the lease connection to PostgreSQL ended");
            }
        });
        Ok(Self { client, task })
    }

    /// Fixes the cluster's slot count and makes the slot rows, or checks
    /// that an existing cluster has `slots` slots.
    pub async fn prepare(&mut self, slots: u16) -> Result<(), LeaseError> {
        let tx = bounded(self.client.transaction()).await?;
        bounded(tx.batch_execute("LOCK TABLE cluster IN EXCLUSIVE MODE")).await?;
        let found = bounded(tx.query_opt("SELECT slots FROM cluster", &[])).await?;
        match found.map(|row| row.try_get::<_, i32>(0)).transpose()? {
            Some(n) if n == i32::from(slots) => {}
            Some(found) => {
                return Err(LeaseError::SlotCount {
                    found,
                    configured: slots,
                });
            }
            None => {
                let n = i32::from(slots);
                bounded(tx.execute("INSERT INTO cluster (slots) VALUES ($1)", &[&n])).await?;
                bounded(tx.execute(
                    "INSERT INTO slots (slot) SELECT generate_series(0, $1 - 1)",
                    &[&n],
                ))
                .await?;
            }
        }
        bounded(tx.commit()).await
    }

    /// Runs `round` in one transaction (see [`Round`]'s fields).
    pub async fn run(&mut self, round: &Round) -> Result<RoundOutcome, LeaseError> {
        let tx = bounded(self.client.transaction()).await?;
        let core = &round.core;
        if round.rejoin {
            bounded(tx.execute("UPDATE slots SET owner = NULL WHERE owner = $1", &[core])).await?;
        } else if !round.release.is_empty() {
            let release: Vec<i32> = round.release.iter().map(|s| i32::from(s.0)).collect();
            bounded(tx.execute(
                "UPDATE slots SET owner = NULL WHERE owner = $1 AND slot = ANY($2)",
                &[core, &release],
            ))
            .await?;
        }
        let lease_ms = i64::try_from(round.lease.as_millis()).unwrap_or(i64::MAX);
        bounded(tx.execute(
            "INSERT INTO cores (core_id, address, expires_at, draining)
             VALUES ($1, $2, now() + $3::BIGINT * interval '1 millisecond', $4)
             ON CONFLICT (core_id) DO UPDATE SET address = EXCLUDED.address,
                 expires_at = EXCLUDED.expires_at, draining = EXCLUDED.draining",
            &[core, &round.address, &lease_ms, &round.draining],
        ))
        .await?;
        if round.claim > 0 {
            let claim = i64::from(round.claim);
            bounded(tx.execute(
                "UPDATE slots SET owner = $1, epoch = epoch + 1 WHERE slot IN (
                     SELECT s.slot FROM slots s
                     WHERE s.owner IS NULL OR NOT EXISTS (
                         SELECT 1 FROM cores c
                         WHERE c.core_id = s.owner AND c.expires_at > now())
                     ORDER BY s.slot LIMIT $2
                     FOR UPDATE SKIP LOCKED)",
                &[core, &claim],
            ))
            .await?;
        }
        let owned = bounded(tx.query(
            "SELECT slot, epoch FROM slots WHERE owner = $1 ORDER BY slot",
            &[core],
        ))
        .await?;
        let members = live_members(&tx).await?;
        bounded(tx.commit()).await?;
        let owned = owned
            .iter()
            .map(|row| Ok((slot_from(row.try_get::<_, i32>(0)?), Epoch(row.try_get(1)?))))
            .collect::<Result<_, tokio_postgres::Error>>()?;
        Ok(RoundOutcome { owned, members })
    }

    /// The live members and how many slots each owns.
    pub async fn members(&self) -> Result<Vec<Member>, LeaseError> {
        live_members(&self.client).await
    }
}

/// What a durable write for a slot's user carries: who writes, for which
/// slot, at which epoch.
#[derive(Clone, Copy, Debug)]
pub struct Fence<'a> {
    /// The writing member ([`super::LeaseConfig::member`]).
    pub core: &'a str,
    /// The user's slot.
    pub slot: Slot,
    /// The epoch the core owns it at.
    pub epoch: Epoch,
}

/// The fence as one statement, for stores that run their own transactions:
/// parameters slot (`INTEGER`), core (`TEXT`), epoch (`BIGINT`); it returns
/// a row if and only if the write may go ahead, and locks the slot's row
/// until the transaction ends.
pub const FENCE_CHECK: &str = "SELECT 1 FROM slots s JOIN cores c ON c.core_id = s.owner
     WHERE s.slot = $1 AND s.owner = $2 AND s.epoch = $3 AND c.expires_at > clock_timestamp()
     FOR SHARE OF s";

/// Checks `fence` inside a transaction, locking the slot's row so that it
/// cannot change hands before the transaction ends.
pub async fn check_fence(
    tx: &tokio_postgres::Transaction<'_>,
    fence: Fence<'_>,
) -> Result<(), LeaseError> {
    let slot = i32::from(fence.slot.0);
    let holds = bounded(tx.query_opt(FENCE_CHECK, &[&slot, &fence.core, &fence.epoch.0])).await?;
    match holds {
        Some(_) => Ok(()),
        None => Err(LeaseError::Fenced {
            slot: fence.slot,
            epoch: fence.epoch.0,
        }),
    }
}

async fn live_members(client: &impl GenericClient) -> Result<Vec<Member>, LeaseError> {
    let rows = bounded(client.query(
        "SELECT c.core_id, c.address, c.draining,
                (SELECT count(*) FROM slots s WHERE s.owner = c.core_id)
         FROM cores c WHERE c.expires_at > now() ORDER BY c.core_id",
        &[],
    ))
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Member {
                core: row.try_get(0)?,
                address: row.try_get(1)?,
                draining: row.try_get(2)?,
                slots: u32::try_from(row.try_get::<_, i64>(3)?).unwrap_or(u32::MAX),
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(LeaseError::from)
}

/// A slot number from its column (rows are made in `0..slots`, a `u16`).
fn slot_from(n: i32) -> Slot {
    Slot(u16::try_from(n).unwrap_or(u16::MAX))
}
