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

/// Context switches so far, voluntary and not, summed over the process's
/// threads: each is a thread going to sleep or being woken, so their rate
/// at idle counts the wakeups timers and keep-alives cause.
pub fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(path(pid, "task")).ok()? {
        let Ok(status) = std::fs::read_to_string(task.ok()?.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        total += status
            .lines()
            .filter(|l| {
                l.starts_with("voluntary_ctxt_switches:")
                    || l.starts_with("nonvoluntary_ctxt_switches:")
            })
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
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
