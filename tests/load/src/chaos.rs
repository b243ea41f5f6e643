//! The chaos run (issue 14): a balancer, CMs and a core as separate
//! `longlink` processes, clients chatting through them with stream
//! management, and every few seconds one process SIGKILLed and started
//! again. At the end, after healing and letting everybody reconnect: every
//! message the server acknowledged was delivered exactly once (after the
//! SDK's duplicate filter), in order per sender. Seeded: `--seed` replays
//! the same kill schedule and traffic choices (timing still varies).
//!
//! `longlink-bench chaos --longlink PATH` runs it; `scripts/chaos.sh` the
//! five-minute variant, `tests/chaos.rs` a one-minute one in CI.

mod cluster;
pub mod ledger;
mod traffic;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use cluster::Cluster;
pub use cluster::Role;
use ledger::Ledger;
pub use ledger::{Counts, Disorder, Kill, Lost};
use traffic::{Phase, Shared};

/// Lost messages explained in detail in the report (all are counted).
const EXPLAINED: usize = 40;
/// Recipients of lost messages whose archives are looked up at the end.
const AUDITED_RECIPIENTS: usize = 50;

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The `longlink` binary.
    pub longlink: PathBuf,
    /// Directory for PKI, data, configuration and logs (a new one under
    /// the system's temporary directory if None; removed after a passing
    /// run unless `keep`).
    pub dir: Option<PathBuf>,
    /// Keep the directory even if the run passed.
    pub keep: bool,
    /// Users (clients), one session each.
    pub users: usize,
    /// CM nodes.
    pub cms: u32,
    /// How long processes are killed and clients chat.
    pub duration: Duration,
    /// Time between two kills: uniformly random in this range.
    pub kill_every: (Duration, Duration),
    /// How long a killed process stays down: uniformly random in this range.
    pub down_for: (Duration, Duration),
    /// Mean time between two messages of one user.
    pub send_every: Duration,
    /// Mean time between two moves of one client's UDP socket.
    pub migrate_every: Duration,
    /// Every N-th user goes offline now and then (0: nobody).
    pub offline_every: usize,
    /// After healing, how long to wait at most for what is owed to arrive.
    pub settle: Duration,
    /// The whole run ends (failing) after this long, whatever happens.
    pub deadline: Duration,
    /// Seeds the kill schedule and the clients' choices.
    pub seed: u64,
}

impl Config {
    /// The five-minute run of issue 14: 300 users, 3 CMs, a kill every
    /// 10–20 s, a message per user every 2 s.
    pub fn long(longlink: &Path, seed: u64) -> Self {
        Self {
            longlink: longlink.to_owned(),
            dir: None,
            keep: false,
            users: 300,
            cms: 3,
            duration: Duration::from_secs(300),
            kill_every: (Duration::from_secs(10), Duration::from_secs(20)),
            down_for: (Duration::from_millis(500), Duration::from_secs(3)),
            send_every: Duration::from_secs(2),
            migrate_every: Duration::from_secs(30),
            offline_every: 10,
            settle: Duration::from_secs(90),
            deadline: Duration::from_secs(600),
            seed,
        }
    }

    /// The CI run: 60 users for about 60 s with a kill every 10–14 s (at
    /// least 3: a CM, the core and the balancer come first, in a seeded
    /// order).
    pub fn short(longlink: &Path, seed: u64) -> Self {
        Self {
            users: 60,
            duration: Duration::from_secs(60),
            kill_every: (Duration::from_secs(10), Duration::from_secs(14)),
            settle: Duration::from_secs(60),
            deadline: Duration::from_secs(240),
            ..Self::long(longlink, seed)
        }
    }
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The seed (to replay).
    pub seed: u64,
    /// Where logs and data are (gone if the run passed and was not kept).
    pub dir: PathBuf,
    /// The totals.
    pub counts: Counts,
    /// Every kill.
    pub kills: Vec<Kill>,
    /// Processes that exited without being killed: (seconds, role, status).
    pub crashes: Vec<(f64, String, String)>,
    /// Acknowledged messages never delivered.
    pub lost: Vec<Lost>,
    /// Samples of out-of-order deliveries.
    pub disorder: Vec<Disorder>,
    /// The lost messages with the kills and the two users' connection
    /// events around them, as text.
    pub explanations: String,
    /// Whether every acknowledged message was delivered by the end of the
    /// settle time (else the counts are as of then).
    pub settled: bool,
}

impl Report {
    /// Nothing acknowledged lost, nothing duplicated, nothing out of order.
    pub fn passed(&self) -> bool {
        self.counts.lost == 0 && self.counts.duplicates == 0 && self.counts.out_of_order == 0
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counts;
        writeln!(
            f,
            "chaos run, seed {}: {} kills",
            self.seed,
            self.kills.len()
        )?;
        for k in &self.kills {
            writeln!(f, "  {}", describe_kill(k))?;
        }
        for (at, role, status) in &self.crashes {
            writeln!(
                f,
                "  CRASH {at:7.1}s {role} exited by itself ({status}), restarted"
            )?;
        }
        writeln!(
            f,
            "sent {} acknowledged {} delivered {} duplicates {} out-of-order {} refused {} failed {} unacknowledged {} unknown {} lost {}",
            c.sent,
            c.acknowledged,
            c.delivered,
            c.duplicates,
            c.out_of_order,
            c.refused,
            c.failed,
            c.unacknowledged,
            c.unknown,
            c.lost
        )?;
        if c.lost > 0 {
            let yes = self
                .lost
                .iter()
                .filter(|l| l.archived == Some(true))
                .count();
            let no = self
                .lost
                .iter()
                .filter(|l| l.archived == Some(false))
                .count();
            writeln!(
                f,
                "lost and in the recipient's archive {yes}, lost and not archived {no}, not looked up {}",
                self.lost.len() - yes - no
            )?;
        }
        if !self.settled {
            writeln!(
                f,
                "(the settle time ran out before everything acknowledged arrived)"
            )?;
        }
        for d in &self.disorder {
            writeln!(
                f,
                "  out of order at {:.1}s: user {} got #{} of user {} after #{}",
                d.at, d.recipient, d.seq, d.sender, d.after
            )?;
        }
        f.write_str(&self.explanations)?;
        writeln!(
            f,
            "{} (logs in {})",
            if self.passed() { "PASSED" } else { "FAILED" },
            self.dir.display()
        )
    }
}

fn describe_kill(k: &Kill) -> String {
    match k.restarted_at {
        Some(r) => format!("{:7.1}s SIGKILL {} (restarted at {r:.1}s)", k.at, k.victim),
        None => format!("{:7.1}s SIGKILL {} (not restarted)", k.at, k.victim),
    }
}

/// Which process each kill takes: one of each kind first (shuffled), then
/// a random kind each time; a CM is picked among all of them.
struct Victims {
    rng: StdRng,
    cms: u32,
    first: Vec<u8>,
}

impl Victims {
    fn new(seed: u64, cms: u32) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut first = vec![0u8, 1, 2];
        first.shuffle(&mut rng);
        Self { rng, cms, first }
    }

    fn next(&mut self) -> Role {
        let kind = match self.first.pop() {
            Some(k) => k,
            None => self.rng.gen_range(0..3),
        };
        match kind {
            0 => Role::Cm(self.rng.gen_range(1..=self.cms)),
            1 => Role::Core,
            _ => Role::Balancer,
        }
    }
}

fn between(rng: &mut StdRng, (lo, hi): (Duration, Duration)) -> Duration {
    if hi <= lo { lo } else { rng.gen_range(lo..hi) }
}

/// Runs the chaos run; the report says whether it passed. An error means
/// the run itself could not be carried out (the deployment did not start,
/// or the deadline passed). Every process it started is gone when it
/// returns.
pub async fn run(config: Config) -> Result<Report> {
    let deadline = config.deadline;
    tokio::time::timeout(deadline, run_within(config))
        .await
        .with_context(|| format!("the chaos run did not finish within {deadline:?}"))?
}

async fn run_within(config: Config) -> Result<Report> {
    let dir = match &config.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "longlink-chaos-{}-{}",
            config.seed,
            std::process::id()
        )),
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let ledger = Arc::new(Ledger::new(config.users));
    let say = |what: String| println!("[{:7.1}s] {what}", ledger.now());
    say(format!(
        "chaos run: seed {}, {} users, {} CMs, {:?}, directory {}",
        config.seed,
        config.users,
        config.cms,
        config.duration,
        dir.display()
    ));
    let mut cluster = Cluster::start(
        &config.longlink,
        &dir,
        "chaos.example",
        config.cms,
        "user",
        config.users,
        "pw",
    )?;
    cluster.wait_healthy(Duration::from_secs(60)).await?;
    say(format!("deployment up: {:?}", cluster.roles()));

    let shared = Arc::new(Shared {
        ledger: ledger.clone(),
        server: cluster.public,
        domain: cluster.domain().to_owned(),
        ca: cluster.ca(),
        prefix: "user".into(),
        password: "pw".into(),
        users: config.users,
        send_every: config.send_every,
        migrate_every: config.migrate_every,
        offline_every: config.offline_every,
        online_once: Default::default(),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Chaos);
    // dropped on every exit path: aborts the client tasks
    let mut clients = tokio::task::JoinSet::new();
    let mut seeds = StdRng::seed_from_u64(config.seed ^ 0x636c_6965_6e74);
    for me in 0..config.users {
        clients.spawn(traffic::client(
            shared.clone(),
            me,
            seeds.r#gen(),
            phase_rx.clone(),
        ));
        // a login burst is not what this run tests
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let online_by = tokio::time::Instant::now() + Duration::from_secs(60);
    while shared
        .online_once
        .load(std::sync::atomic::Ordering::Relaxed)
        < config.users
        && tokio::time::Instant::now() < online_by
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say(format!(
        "{} of {} users logged in; chaos for {:?}",
        shared
            .online_once
            .load(std::sync::atomic::Ordering::Relaxed),
        config.users,
        config.duration
    ));

    // the chaos phase: kill, wait, restart; watch for crashes meanwhile
    let mut crashes = Vec::new();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut victims = Victims::new(config.seed ^ 0x6b69_6c6c, config.cms);
    let chaos_end = tokio::time::Instant::now() + config.duration;
    loop {
        let next = tokio::time::Instant::now() + between(&mut rng, config.kill_every);
        if next > chaos_end {
            watch_until(&mut cluster, &ledger, &mut crashes, chaos_end).await?;
            break;
        }
        watch_until(&mut cluster, &ledger, &mut crashes, next).await?;
        let victim = victims.next();
        let down = between(&mut rng, config.down_for);
        cluster.kill(victim)?;
        let index = ledger.killed(&victim.to_string());
        say(format!("SIGKILL {victim}, down for {down:?}"));
        watch_until(
            &mut cluster,
            &ledger,
            &mut crashes,
            tokio::time::Instant::now() + down,
        )
        .await?;
        cluster.spawn(victim)?;
        ledger.restarted(index);
        say(format!("restarted {victim}"));
    }

    // heal: everything up, everybody online, nothing new sent
    phase_tx.send_replace(Phase::Heal);
    say("healing: no more kills or new messages".into());
    check_crashes(&mut cluster, &ledger, &mut crashes)?;
    cluster.wait_healthy(Duration::from_secs(60)).await?;
    say("deployment healthy; waiting for what is owed".into());
    let settle_end = tokio::time::Instant::now() + config.settle;
    let mut last_print = tokio::time::Instant::now();
    let settled = loop {
        let (undelivered, unacked) = ledger.outstanding();
        if undelivered == 0 && unacked == 0 {
            break true;
        }
        if tokio::time::Instant::now() >= settle_end {
            break false;
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            say(format!(
                "waiting: {undelivered} acknowledged not yet delivered, {unacked} not yet acknowledged"
            ));
            last_print = tokio::time::Instant::now();
        }
        check_crashes(&mut cluster, &ledger, &mut crashes)?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // let deliveries of unacknowledged messages that were resent arrive too,
    // so late duplicates are seen
    tokio::time::sleep(Duration::from_secs(2)).await;
    phase_tx.send_replace(Phase::Stop);
    let stop_by = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::timeout_at(stop_by, clients.join_next())
        .await
        .is_ok_and(|r| r.is_some())
    {}
    clients.abort_all();

    let (counts, mut lost, disorder) = ledger.tally();
    if !lost.is_empty() {
        say(format!(
            "{} acknowledged messages lost; looking them up in the recipients' archives",
            lost.len()
        ));
        let (archived, seen) =
            traffic::audit_archive(&shared, &lost, AUDITED_RECIPIENTS, Duration::from_secs(60))
                .await;
        for (l, a) in lost.iter_mut().zip(archived) {
            l.archived = a;
        }
        say(format!(
            "the archives looked at hold {seen} messages of these conversations"
        ));
    }
    let kills = ledger.kills();
    let explanations = explain(&ledger, &lost, &kills);
    let _ = std::fs::write(dir.join("clients.txt"), ledger.histories());
    let _ = std::fs::write(dir.join("lost.txt"), &explanations);
    let _ = std::fs::write(dir.join("messages.csv"), ledger.messages_csv());
    drop(cluster);
    let report = Report {
        seed: config.seed,
        dir: dir.clone(),
        counts,
        kills,
        crashes,
        lost,
        disorder,
        explanations,
        settled,
    };
    if report.passed() && !config.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

/// Waits until `until`, restarting (and recording) any process that
/// exited by itself.
async fn watch_until(
    cluster: &mut Cluster,
    ledger: &Ledger,
    crashes: &mut Vec<(f64, String, String)>,
    until: tokio::time::Instant,
) -> Result<()> {
    loop {
        check_crashes(cluster, ledger, crashes)?;
        let now = tokio::time::Instant::now();
        if now >= until {
            return Ok(());
        }
        tokio::time::sleep_until(until.min(now + Duration::from_millis(500))).await;
    }
}

fn check_crashes(
    cluster: &mut Cluster,
    ledger: &Ledger,
    crashes: &mut Vec<(f64, String, String)>,
) -> Result<()> {
    for (role, status) in cluster.restart_exited()? {
        println!(
            "[{:7.1}s] CRASH: {role} exited by itself ({status}); restarted",
            ledger.now()
        );
        crashes.push((ledger.now(), role.to_string(), status));
    }
    Ok(())
}

/// Each lost message (the first [`EXPLAINED`]) with the kills and the
/// sender's and recipient's connection events around it.
fn explain(ledger: &Ledger, lost: &[Lost], kills: &[Kill]) -> String {
    let mut out = String::new();
    for l in lost.iter().take(EXPLAINED) {
        let (from, to) = (l.sent_at - 5.0, l.acked_at + 30.0);
        let _ = writeln!(
            out,
            "LOST user{} → user{} #{} id {} sent {:.2}s acknowledged {:.2}s",
            l.sender, l.recipient, l.seq, l.id, l.sent_at, l.acked_at
        );
        let _ = writeln!(
            out,
            "    in the recipient's archive: {}",
            match l.archived {
                Some(true) => "yes (stored, not delivered)",
                Some(false) => "no (never routed)",
                None => "not looked up",
            }
        );
        let (before, after) = ledger.deliveries_around(l.recipient, l.acked_at);
        let show = |t: Option<f64>| t.map_or("never".to_owned(), |t| format!("{t:.2}s"));
        let _ = writeln!(
            out,
            "    recipient's deliveries: last before {}, first after {}",
            show(before),
            show(after)
        );
        for k in kills
            .iter()
            .filter(|k| (l.sent_at - 30.0..=to).contains(&k.at))
        {
            let _ = writeln!(out, "    kill {}", describe_kill(k));
        }
        for (who, user) in [("sender", l.sender), ("recipient", l.recipient)] {
            for (t, what) in ledger.history(user, from, to) {
                let _ = writeln!(out, "    {who} {t:7.2}s {what}");
            }
        }
    }
    if lost.len() > EXPLAINED {
        let _ = writeln!(out, "... and {} more lost", lost.len() - EXPLAINED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_three_kills_take_a_cm_the_core_and_the_balancer() {
        for seed in 0..20 {
            let mut v = Victims::new(seed, 3);
            let mut kinds: Vec<String> = (0..3)
                .map(|_| match v.next() {
                    Role::Cm(n) => {
                        assert!((1..=3).contains(&n));
                        "cm".to_owned()
                    }
                    other => other.to_string(),
                })
                .collect();
            kinds.sort();
            assert_eq!(kinds, ["cm", "core", "lb"], "seed {seed}");
        }
    }

    #[test]
    fn the_same_seed_kills_in_the_same_order() {
        let a: Vec<Role> = {
            let mut v = Victims::new(7, 3);
            (0..10).map(|_| v.next()).collect()
        };
        let b: Vec<Role> = {
            let mut v = Victims::new(7, 3);
            (0..10).map(|_| v.next()).collect()
        };
        assert_eq!(a, b);
    }
}
