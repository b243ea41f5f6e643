//! The storage thread and [`Storage`], the async handle to it.
//!
//! Callers queue jobs; the thread drains the queue into one transaction at
//! a time (group commit). The queue is bounded in bytes and never blocks:
//! a job that does not fit is refused at once ([`StorageError::Overloaded`]).
//! A job that waits longer than the deadline without starting fails with
//! [`StorageError::Timeout`] and never runs. A job that panics fails its
//! batch ([`StorageError::Panicked`]); the thread carries on.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{StorageError, Store};

/// Bounds of the queue between callers and the storage thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of jobs queued or running (each job counts its declared
    /// size plus [`JOB_OVERHEAD`]).
    pub queue_bytes: usize,
    /// Longest a job may wait in the queue before it fails with
    /// [`StorageError::Timeout`].
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            queue_bytes: 64 << 20,
            deadline: Duration::from_secs(10),
        }
    }
}

/// Bytes every job counts on top of its declared size (its closure, channel
/// and bookkeeping); also what [`Storage::submit`] declares for small jobs.
pub const JOB_OVERHEAD: usize = 256;
/// Most jobs committed in one transaction.
const BATCH: usize = 512;
/// The pause before a failed transaction's jobs are tried again, times
/// the failures in a row.
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A job's progress. Leaving `QUEUED` is a race between its caller's
/// deadline and the storage thread, settled by one compare-and-swap.
const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const TIMED_OUT: u8 = 2;

/// A job with its caller's channel, type-erased for the queue.
trait Pending: Send {
    /// Runs the job in the open transaction, in a savepoint of its own so
    /// that its failure undoes only its writes; a transient failure of its
    /// own is tried again at once, in place (before any later job), while
    /// it has attempts left. An error means the transaction itself broke
    /// (a savepoint could not be set or rolled back to).
    fn run(&mut self, db: &mut dyn Store) -> Result<(), StorageError>;
    /// Delivers the result to the caller: the job's own if its transaction
    /// committed, else the batch's failure.
    fn complete(self: Box<Self>, batch: &Result<(), StorageError>);
    /// Its transaction failed: whether it runs again (an attempt was left,
    /// now spent) rather than failing.
    fn again(&mut self) -> bool;
    /// Moves the job from queued to `to`; false if it already left.
    fn leave_queue(&self, to: u8) -> bool;
}

struct Task<T, F> {
    f: F,
    /// Attempts left after this one.
    retries: u32,
    result: Option<Result<T, StorageError>>,
    tx: oneshot::Sender<Result<T, StorageError>>,
    state: Arc<AtomicU8>,
}

impl<T, F> Pending for Task<T, F>
where
    T: Send + 'static,
    F: FnMut(&mut dyn Store) -> Result<T, StorageError> + Send + 'static,
{
    fn run(&mut self, db: &mut dyn Store) -> Result<(), StorageError> {
        loop {
            self.result = None;
            db.savepoint()?;
            let result = (self.f)(db);
            match &result {
                Ok(_) => db.release_savepoint()?,
                Err(e) => {
                    db.rollback_to_savepoint()?;
                    if e.is_transient() && self.retries > 0 {
                        self.retries -= 1;
                        tracing::warn!(error = %e, "a storage job failed; retrying it in place");
                        continue;
                    }
                }
            }
            self.result = Some(result);
            return Ok(());
        }
    }

    fn complete(self: Box<Self>, batch: &Result<(), StorageError>) {
        let result = match batch {
            Ok(()) => self.result.unwrap_or(Err(StorageError::Panicked)),
            Err(e) => Err(e.for_batch()),
        };
        let _ = self.tx.send(result);
    }

    fn again(&mut self) -> bool {
        self.result = None;
        if self.retries == 0 {
            return false;
        }
        self.retries -= 1;
        true
    }

    fn leave_queue(&self, to: u8) -> bool {
        self.state
            .compare_exchange(QUEUED, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl StorageError {
    /// Whether trying the job again may work: not for refusals (quota,
    /// unknown id, a full or late queue, closed storage).
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            Self::QuotaExceeded
                | Self::UnknownId
                | Self::Overloaded
                | Self::Timeout
                | Self::Closed
                | Self::Fenced { .. }
        )
    }

    /// This batch-wide failure as each of the batch's jobs reports it.
    fn for_batch(&self) -> Self {
        match self {
            Self::Panicked => Self::Panicked,
            Self::Timeout => Self::Timeout,
            Self::Injected => Self::Injected,
            Self::Unavailable(why) => Self::Unavailable(why.clone()),
            Self::Commit(why) => Self::Commit(why.clone()),
            other => Self::Commit(other.to_string()),
        }
    }
}

/// One queued job.
struct Queued {
    task: Box<dyn Pending>,
    bytes: usize,
    since: Instant,
}

/// The jobs waiting for the storage thread, in submission order.
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    limits: Limits,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Queued>,
    /// Bytes of the queued jobs and of the batch running.
    bytes: usize,
    /// No handle is left: the thread ends once the queue is empty.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a job unless the budget is spent.
    fn push(&self, job: Queued) -> Result<(), StorageError> {
        let mut q = self.lock();
        if q.closed {
            return Err(StorageError::Closed);
        }
        if q.bytes.saturating_add(job.bytes) > self.limits.queue_bytes {
            return Err(StorageError::Overloaded);
        }
        q.bytes += job.bytes;
        q.jobs.push_back(job);
        drop(q);
        self.ready.notify_one();
        Ok(())
    }

    /// Moves up to [`BATCH`] jobs into `batch`, oldest first, waiting for
    /// one; false once the queue is closed and empty. Their bytes stay counted until
    /// [`Queue::release`].
    fn take(&self, batch: &mut Vec<Queued>) -> bool {
        let mut q = self.lock();
        while q.jobs.is_empty() {
            if q.closed {
                return false;
            }
            q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        let n = q.jobs.len().min(BATCH);
        batch.extend(q.jobs.drain(..n));
        true
    }

    /// Returns the budget of finished jobs.
    fn release(&self, bytes: usize) {
        let mut q = self.lock();
        q.bytes = q.bytes.saturating_sub(bytes);
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

/// Closes the queue when the last [`Storage`] handle goes.
struct Handle {
    queue: Arc<Queue>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// Async handle to the storage thread (cheap to clone).
#[derive(Clone)]
pub struct Storage {
    handle: Arc<Handle>,
}

impl Storage {
    /// Starts the storage thread, with the default [`Limits`], over the
    /// store `open` opens there; waits for the opening.
    pub fn start(
        open: impl FnOnce() -> Result<Box<dyn Store>, StorageError> + Send + 'static,
    ) -> Result<Self, StorageError> {
        Self::start_with(Limits::default(), open)
    }

    /// Starts the storage thread over the store `open` opens there (the
    /// PostgreSQL client runs its own runtime, so it must live on its own
    /// thread); waits for the opening.
    pub fn start_with(
        limits: Limits,
        open: impl FnOnce() -> Result<Box<dyn Store>, StorageError> + Send + 'static,
    ) -> Result<Self, StorageError> {
        let queue = Arc::new(Queue {
            state: Mutex::default(),
            ready: Condvar::new(),
            limits,
        });
        let (opened_tx, opened) = std::sync::mpsc::sync_channel(1);
        let jobs = queue.clone();
        std::thread::Builder::new()
            .name("storage".into())
            .spawn(move || match open() {
                Ok(store) => {
                    let _ = opened_tx.send(Ok(()));
                    run(store, &jobs)
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            })?;
        opened.recv().map_err(|_| StorageError::Closed)??;
        Ok(Self {
            handle: Arc::new(Handle { queue }),
        })
    }

    /// Runs `f` on the storage thread inside a transaction; the result is
    /// returned after the transaction committed.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Store) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        self.submit(f).await
    }

    /// [`Storage::submit_sized`] for a job that holds no more than a few
    /// hundred bytes (a name, an id, a roster item).
    pub fn submit<T, F>(
        &self,
        f: F,
    ) -> impl std::future::Future<Output = Result<T, StorageError>> + Send + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Store) -> Result<T, StorageError> + Send + 'static,
    {
        self.submit_sized(0, f)
    }

    /// Queues `f` now, counting `bytes` (what it holds, e.g. its payload's
    /// length) against the queue's budget, and returns the future of its
    /// committed result. Never blocks; jobs run in submission order. The
    /// future fails with [`StorageError::Overloaded`] if the queue was full,
    /// and with [`StorageError::Timeout`] if the job did not start within
    /// the deadline (it then never runs). A job that started is never
    /// abandoned: its future resolves when its transaction ends.
    pub fn submit_sized<T, F>(
        &self,
        bytes: usize,
        f: F,
    ) -> impl std::future::Future<Output = Result<T, StorageError>> + Send + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Store) -> Result<T, StorageError> + Send + 'static,
    {
        let mut f = Some(f);
        self.submit_retried(bytes, 0, move |db| match f.take() {
            Some(f) => f(db),
            None => Err(StorageError::Panicked),
        })
    }

    /// [`Storage::submit_sized`] for a job tried up to `retries` more
    /// times by the storage thread, in queue order: a transient failure of
    /// its own is tried again at once in its transaction, and a failed
    /// transaction (its commit, a panic) is tried again, after a pause
    /// ([`RETRY_PAUSE`] × attempt), with the jobs of its batch still to
    /// try, before any later job. So a retried write never lands behind a
    /// later one. Refusals (see [`StorageError::is_transient`]) are not
    /// tried again.
    pub fn submit_retried<T, F>(
        &self,
        bytes: usize,
        retries: u32,
        f: F,
    ) -> impl std::future::Future<Output = Result<T, StorageError>> + Send + use<T, F>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn Store) -> Result<T, StorageError> + Send + 'static,
    {
        let (tx, mut rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let since = Instant::now();
        let queue = &self.handle.queue;
        let deadline = since + queue.limits.deadline;
        let queued = queue.push(Queued {
            task: Box::new(Task {
                f,
                retries,
                result: None,
                tx,
                state: state.clone(),
            }),
            bytes: bytes.saturating_add(JOB_OVERHEAD),
            since,
        });
        async move {
            queued?;
            tokio::select! {
                biased;
                done = &mut rx => return done.map_err(|_| StorageError::Closed)?,
                () = tokio::time::sleep_until(deadline.into()) => {}
            }
            if state
                .compare_exchange(QUEUED, TIMED_OUT, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Err(StorageError::Timeout);
            }
            // Started before the deadline: it cannot be called back.
            rx.await.map_err(|_| StorageError::Closed)?
        }
    }
}

/// The storage thread: batches until the queue closes.
fn run(mut store: Box<dyn Store>, queue: &Queue) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut tasks = Vec::with_capacity(BATCH);
    while queue.take(&mut batch) {
        let now = Instant::now();
        let mut bytes = 0;
        for job in batch.drain(..) {
            bytes += job.bytes;
            if now.duration_since(job.since) > queue.limits.deadline
                && job.task.leave_queue(TIMED_OUT)
            {
                job.task.complete(&Err(StorageError::Timeout));
            } else if job.task.leave_queue(RUNNING) {
                tasks.push(job.task);
            }
            // (else its caller gave up at the deadline: it never runs)
        }
        // Jobs to try again (and those left unrun by a panic) run next,
        // before any later job, in a transaction of their own.
        let mut failures = 0;
        while !tasks.is_empty() {
            if failures > 0 {
                std::thread::sleep(RETRY_PAUSE * failures);
            }
            match transaction(&mut *store, &mut tasks) {
                true => failures = 0,
                false => failures += 1,
            }
        }
        queue.release(bytes);
    }
}

/// Runs `tasks` in one transaction and completes them; false if it failed.
/// Then those with attempts left stay in `tasks` to run again; so do
/// those a panic left unrun.
fn transaction(store: &mut dyn Store, tasks: &mut Vec<Box<dyn Pending>>) -> bool {
    tracing::trace!(jobs = tasks.len(), "storage batch");
    let mut ran = 0;
    let outcome = match guarded(|| store.begin()) {
        Err(e) => {
            ran = tasks.len();
            Err(e)
        }
        Ok(()) => {
            let mut failed = None;
            for task in tasks.iter_mut() {
                ran += 1;
                match catch_unwind(AssertUnwindSafe(|| task.run(&mut *store))) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        failed = Some(e);
                        break;
                    }
                    Err(_) => {
                        tracing::error!("a storage job panicked; its batch is rolled back");
                        failed = Some(StorageError::Panicked);
                        break;
                    }
                }
            }
            match failed {
                Some(e) => Err(e),
                None => guarded(|| store.commit()),
            }
        }
    };
    if let Err(e) = &outcome {
        tracing::error!(error = %e, jobs = ran, "storage transaction failed");
        if catch_unwind(AssertUnwindSafe(|| store.rollback())).is_err() {
            tracing::error!("rolling back panicked");
        }
    }
    let failed = outcome.is_err();
    let mut kept = Vec::with_capacity(tasks.len());
    for mut task in tasks.drain(..) {
        if ran == 0 {
            kept.push(task); // left unrun: runs next as it is
            continue;
        }
        ran -= 1;
        if failed && task.again() {
            kept.push(task);
        } else {
            task.complete(&outcome);
        }
    }
    *tasks = kept;
    !failed
}

/// `f`'s result, or [`StorageError::Panicked`] if it panicked.
fn guarded(f: impl FnOnce() -> Result<(), StorageError>) -> Result<(), StorageError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(StorageError::Panicked))
}
