//! Removing uploads past their expiry: a slot whose file (or unfinished
//! part) was last written before the cut goes, with its directory.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// How long a part file (a PUT cut off, or a crash) is left before it
/// goes.
pub const PART_AGE: Duration = Duration::from_secs(3600);

/// Removes every slot under `dir` last written before `cut` (an empty
/// one by its own time), and part files older than [`PART_AGE`] before
/// `now`; how many slots went.
pub fn sweep(dir: &Path, cut: SystemTime, now: SystemTime) -> usize {
    let mut removed = 0;
    let Ok(users) = std::fs::read_dir(dir) else {
        return 0;
    };
    let modified = |p: &Path| std::fs::metadata(p).ok()?.modified().ok();
    for user in users.flatten() {
        let Ok(slots) = std::fs::read_dir(user.path()) else {
            continue;
        };
        for slot in slots.flatten() {
            let mut newest = modified(&slot.path());
            for entry in std::fs::read_dir(slot.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let Some(m) = modified(&entry.path()) else {
                    continue;
                };
                let part = entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(super::http::PART_PREFIX));
                if part && m + PART_AGE < now {
                    let _ = std::fs::remove_file(entry.path());
                    continue;
                }
                newest = newest.max(Some(m));
            }
            if newest.is_none_or(|m| m < cut) && std::fs::remove_dir_all(slot.path()).is_ok() {
                removed += 1;
            }
        }
        // (an emptied user directory goes too)
        let _ = std::fs::remove_dir(user.path());
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_written_before_the_cut_go_newer_and_empty_fresh_ones_stay_and_stale_parts_go() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        for (user, slot, age) in [("u1", "old", 40), ("u1", "new", 1), ("u2", "old", 40)] {
            let d = dir.path().join(user).join(slot);
            std::fs::create_dir_all(&d).unwrap();
            let f = std::fs::File::create(d.join("f")).unwrap();
            f.set_modified(now - Duration::from_secs(age * 86_400))
                .unwrap();
            // (the directory's own time is old too)
            std::fs::File::open(&d)
                .unwrap()
                .set_modified(now - Duration::from_secs(age * 86_400))
                .unwrap();
        }
        // a part file of a PUT cut off two hours ago goes; a fresh one stays
        let new = dir.path().join("u1").join("new");
        let stale = std::fs::File::create(new.join(".part-1")).unwrap();
        stale.set_modified(now - Duration::from_secs(7200)).unwrap();
        std::fs::File::create(new.join(".part-2")).unwrap();
        // an empty slot just made by a PUT stays
        std::fs::create_dir_all(dir.path().join("u3").join("fresh")).unwrap();
        let cut = now - Duration::from_secs(30 * 86_400);
        assert_eq!(sweep(dir.path(), cut, now), 2);
        assert!(!new.join(".part-1").exists() && new.join(".part-2").exists());
        assert!(dir.path().join("u3").join("fresh").exists());
        assert!(dir.path().join("u1").join("new").join("f").exists());
        assert!(!dir.path().join("u1").join("old").exists());
        assert!(
            !dir.path().join("u2").exists(),
            "an emptied user directory goes"
        );
    }
}
