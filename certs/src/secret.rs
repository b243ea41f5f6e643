//! Secrets kept in files (admin tokens, the SM id key): read, or made once,
//! whole and private.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use ring::rand::SecureRandom;

/// Bytes of a secret [`hex_secret`] makes (it is written as twice as many
/// hex digits).
pub const SECRET_BYTES: usize = 32;

/// Reads the hex secret in `path`, or makes one of [`SECRET_BYTES`] random
/// bytes there with mode 0600. The file is written whole under a temporary
/// name and then linked into place, so nobody reads a partial secret, and
/// of two processes making it at once (a core and a balancer sharing one
/// token) one wins and the other reads the winner's. A file that is not
/// exactly the hex digits of a secret is refused, never used.
pub fn hex_secret(path: &Path) -> io::Result<String> {
    if let Some(secret) = read(path)? {
        return Ok(secret);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let secret = random_hex::<SECRET_BYTES>()?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // (a name of its own for every maker, threads of one process included)
    let tmp = dir.join(format!(".{name}.{}.tmp", random_hex::<8>()?));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&tmp).and_then(|mut f| {
        f.write_all(secret.as_bytes())?;
        f.sync_all()
    });
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            read(path)?.ok_or_else(|| io::Error::other(format!("{} vanished", path.display())))
        }
        Err(e) => Err(e),
    }
}

/// `N` random bytes as hex digits.
fn random_hex<const N: usize>() -> io::Result<String> {
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| io::Error::other("no system randomness"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The secret in `path`, if the file exists.
fn read(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let secret = text.trim();
            if secret.len() == 2 * SECRET_BYTES && secret.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(Some(secret.to_owned()))
            } else {
                Err(io::Error::other(format!(
                    "{} is not a secret of {} hex digits",
                    path.display(),
                    2 * SECRET_BYTES
                )))
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_made_once_private_and_read_back_and_a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.token");
        let made = hex_secret(&path).unwrap();
        assert_eq!(made.len(), 64);
        assert_eq!(
            hex_secret(&path).unwrap(),
            made,
            "read back, not made again"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        // no temporary file is left behind
        assert_eq!(fs::read_dir(dir.path().join("sub")).unwrap().count(), 1);
        for damaged in ["", "abc", &"g".repeat(64)] {
            fs::write(&path, damaged).unwrap();
            assert!(hex_secret(&path).is_err(), "{damaged:?} is refused");
        }
    }

    #[test]
    fn of_two_makers_at_once_both_get_the_same_secret() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("token");
            let (a, b) = std::thread::scope(|s| {
                let a = s.spawn(|| hex_secret(&path).unwrap());
                let b = s.spawn(|| hex_secret(&path).unwrap());
                (a.join().unwrap(), b.join().unwrap())
            });
            assert_eq!(a, b);
        }
    }
}
