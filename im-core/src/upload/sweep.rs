//! Removing uploads past their expiry: a slot whose file (or unfinished
//! part) was last written before the cut goes, with its directory.

use std::path::Path;
use std::time::SystemTime;

/// Removes every slot under `dir` last written before `cut`; how many.
pub fn sweep(dir: &Path, cut: SystemTime) -> usize {
    let mut removed = 0;
    let Ok(users) = std::fs::read_dir(dir) else {
        return 0;
    };
    for user in users.flatten() {
        let Ok(slots) = std::fs::read_dir(user.path()) else {
            continue;
        };
        for slot in slots.flatten() {
            let newest = std::fs::read_dir(slot.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.metadata().ok()?.modified().ok())
                .max();
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn slots_written_before_the_cut_go_and_newer_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        for (user, slot, age) in [("u1", "old", 40), ("u1", "new", 1), ("u2", "old", 40)] {
            let d = dir.path().join(user).join(slot);
            std::fs::create_dir_all(&d).unwrap();
            let f = std::fs::File::create(d.join("f")).unwrap();
            f.set_modified(now - Duration::from_secs(age * 86_400))
                .unwrap();
        }
        assert_eq!(sweep(dir.path(), now - Duration::from_secs(30 * 86_400)), 2);
        assert!(dir.path().join("u1").join("new").join("f").exists());
        assert!(!dir.path().join("u1").join("old").exists());
        assert!(
            !dir.path().join("u2").exists(),
            "an emptied user directory goes"
        );
    }
}
