//! What the server processes cost, read from /proc: CPU time (user +
//! system) and resident memory, for every `--pid` and for the tool itself.

use std::time::Duration;

/// A process to watch.
#[derive(Clone, Debug)]
pub struct Watched {
    /// Label in reports (`core`, `cm`, `ejabberd`...).
    pub name: String,
    /// PID (0: this process).
    pub pid: u32,
}

impl std::str::FromStr for Watched {
    type Err = String;
    /// `name=PID`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, pid) = s.split_once('=').ok_or("expected name=PID")?;
        let pid = pid.parse().map_err(|_| format!("bad PID in {s}"))?;
        Ok(Self {
            name: name.to_owned(),
            pid,
        })
    }
}

fn path(pid: u32, file: &str) -> String {
    match pid {
        0 => format!("/proc/self/{file}"),
        p => format!("/proc/{p}/{file}"),
    }
}

/// CPU time used so far (user + system).
pub fn cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(path(pid, "stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3,
    // utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_micros(ticks * 1_000_000 / clock_ticks()))
}

/// Resident memory in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(path(pid, "status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Voluntary context switches so far, by thread: each is a thread going
/// to sleep to wait for something (a timer, a socket, a lock), so their rate
/// at idle counts the wakeups timers and keep-alives cause. (Involuntary
/// switches are preemption by other processes, and are left out.)
pub fn voluntary_switches(pid: u32) -> Option<std::collections::HashMap<String, u64>> {
    let mut by_thread = std::collections::HashMap::new();
    for task in std::fs::read_dir(path(pid, "task")).ok()? {
        let task = task.ok()?;
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(n) = switches {
            by_thread.insert(task.file_name().to_string_lossy().into_owned(), n);
        }
    }
    Some(by_thread)
}

/// Voluntary switches between two readings of [`voluntary_switches`]:
/// per thread, so a thread that ended between them takes away nothing but
/// its own (uncounted) share, and one that began counts from zero.
pub fn switches_between(
    before: &std::collections::HashMap<String, u64>,
    after: &std::collections::HashMap<String, u64>,
) -> u64 {
    after
        .iter()
        .map(|(tid, n)| n.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

fn clock_ticks() -> u64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on.
    100
}

/// CPU times of a set of processes at one moment.
#[derive(Clone, Debug)]
pub struct CpuSnapshot(pub Vec<(String, Option<Duration>)>);

impl CpuSnapshot {
    /// Reads every watched process and this one (as `load-tool`).
    pub fn take(watched: &[Watched]) -> Self {
        let mut v: Vec<(String, Option<Duration>)> = watched
            .iter()
            .map(|w| (w.name.clone(), cpu(w.pid)))
            .collect();
        v.push(("load-tool".into(), cpu(0)));
        Self(v)
    }

    /// CPU microseconds per `per` units of work since `earlier`, by process.
    pub fn per(&self, earlier: &CpuSnapshot, units: u64, per: u64) -> Vec<(String, f64)> {
        self.0
            .iter()
            .zip(&earlier.0)
            .filter_map(|((name, now), (_, then))| {
                let spent = now.as_ref()?.checked_sub(*then.as_ref()?)?;
                let value = match units {
                    0 => f64::NAN,
                    u => spent.as_micros() as f64 * per as f64 / u as f64,
                };
                Some((name.clone(), value))
            })
            .collect()
    }
}
