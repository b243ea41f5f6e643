//! Upload slots: what a client may PUT, where, until when.
//!
//! A slot's PUT URL carries its path (`<user hash>/<slot>/<file name>`),
//! and its `Authorization` header `Bearer EXPIRES.MAC`, where MAC is
//! HMAC-SHA256 over the path, the size, the content type and EXPIRES under
//! the service's key. The HTTP server recomputes it from the request (its
//! path, `Content-Length`, `Content-Type`), so a PUT of another size, type
//! or name, or after EXPIRES, is refused without any shared state.
//!
//! The quota counts the user's stored files (read from the directory) and
//! the slots granted and not yet used or expired.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::Sha256;

/// How long a slot's PUT URL stays valid, in seconds.
pub const SLOT_VALID_SECS: u64 = 300;
/// Most files one user keeps.
pub const MAX_FILES_PER_USER: usize = 10_000;
/// Most slots granted and not used at once, all users together.
pub const MAX_RESERVED: usize = 100_000;
/// Most slots one user holds granted and not used at once.
pub const MAX_RESERVED_PER_USER: usize = 64;
/// Most slot requests answered at once (each reads a directory or lists
/// the bucket on the blocking pool); past it they are refused.
pub const MAX_GRANTS_AT_ONCE: usize = 16;
/// Longest file name kept, in bytes.
pub const MAX_NAME_BYTES: usize = 200;
/// Longest content type taken.
pub const MAX_TYPE_BYTES: usize = 128;
/// The content type of a file uploaded without one.
pub const DEFAULT_TYPE: &str = "application/octet-stream";

/// What a URL path segment keeps unencoded (RFC 3986 unreserved).
pub(crate) const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A granted slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Where to PUT the file.
    pub put_url: String,
    /// The headers the PUT must carry (`Authorization`).
    pub put_headers: Vec<(String, String)>,
    /// Where it is fetched from once uploaded.
    pub get_url: String,
}

/// Why a slot is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlotRefusal {
    /// Larger than the service takes.
    #[error("file too large (at most {max} bytes)")]
    TooLarge {
        /// The most it takes.
        max: u64,
    },
    /// The user's quota would be exceeded.
    #[error("upload quota exceeded")]
    Quota,
    /// No usable file name, size or content type.
    #[error("bad request")]
    BadRequest,
    /// The directory could not be read.
    #[error("storage failed: {0}")]
    Io(String),
}

/// Why a PUT gets no hold on its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoHold {
    /// Another PUT to the slot is running.
    Busy,
    /// The slot has no reservation here.
    Unknown,
}

/// A running PUT's hold on its slot's reservation (see [`Slots::hold`]).
#[derive(Debug)]
pub struct PutHold {
    slots: std::sync::Arc<Slots>,
    user: String,
    slot: String,
    expires: u64,
    stored: bool,
}

impl PutHold {
    /// The file was stored: it counts from now on, not the reservation.
    pub fn stored(mut self) {
        self.stored = true;
    }
}

impl Drop for PutHold {
    fn drop(&mut self) {
        let mut reserved = self
            .slots
            .reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(slots) = reserved.get_mut(&self.user) else {
            return;
        };
        let Some(i) = slots.iter().position(|r| r.slot == self.slot) else {
            return;
        };
        match self.stored {
            true => {
                slots.swap_remove(i);
            }
            false => slots[i].expires = self.expires,
        }
    }
}

/// Where a PUT that checked out goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutTarget {
    /// The user's directory name.
    pub user: String,
    /// The slot's name.
    pub slot: String,
    /// When its signature lapses (seconds since the epoch; 0 for a GET).
    pub expires: u64,
    /// The slot's directory.
    pub slot_dir: PathBuf,
    /// The file.
    pub file: PathBuf,
}

/// A slot granted and not finished.
#[derive(Debug)]
struct Reservation {
    slot: String,
    size: u64,
    /// When it lapses; `u64::MAX` while its PUT runs.
    expires: u64,
}

/// Where an upload service keeps its files.
#[derive(Debug)]
pub enum Store {
    /// A directory on local disk, the upload server taking the PUTs and
    /// serving the files.
    Disk(PathBuf),
    /// An S3-compatible bucket the clients PUT to directly.
    S3(super::s3::S3Store),
}

/// The slots of one upload service.
#[derive(Debug)]
pub struct Slots {
    store: Store,
    public_url: String,
    key: [u8; 32],
    max_file_bytes: u64,
    quota_bytes: u64,
    /// Slots granted and not finished, by user directory.
    reserved: Mutex<HashMap<String, Vec<Reservation>>>,
    /// Slot requests being answered.
    grants: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Slots {
    /// Slots of files kept in `store`, reached at `public_url` (the
    /// upload server), signed with `key`.
    pub fn new(
        store: Store,
        public_url: &str,
        key: [u8; 32],
        max_file_bytes: u64,
        quota_bytes: u64,
    ) -> Self {
        Self {
            store,
            public_url: public_url.trim_end_matches('/').to_owned(),
            key,
            max_file_bytes,
            quota_bytes,
            reserved: Mutex::new(HashMap::new()),
            grants: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_GRANTS_AT_ONCE)),
        }
    }

    /// A place among the [`MAX_GRANTS_AT_ONCE`] slot requests answered
    /// at once, held until dropped; none if all are taken.
    pub fn grant_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.grants.clone().try_acquire_owned().ok()
    }

    /// Where the files are kept.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The largest file taken.
    pub fn max_file_bytes(&self) -> u64 {
        self.max_file_bytes
    }

    /// Grants `user` a slot for `filename` of `size` bytes and
    /// `content_type`, at `now` (seconds since the epoch), with `slot` (a
    /// random 128-bit number) naming it. Reads the user's directory, or
    /// lists the user's objects in the bucket (blocking).
    pub fn grant(
        &self,
        user: &str,
        filename: &str,
        size: u64,
        content_type: Option<&str>,
        now: u64,
        slot: u128,
    ) -> Result<Slot, SlotRefusal> {
        let name = clean_name(filename).ok_or(SlotRefusal::BadRequest)?;
        let requested_type = content_type;
        let content_type = clean_type(content_type).ok_or(SlotRefusal::BadRequest)?;
        if size == 0 {
            return Err(SlotRefusal::BadRequest);
        }
        if size > self.max_file_bytes {
            return Err(SlotRefusal::TooLarge {
                max: self.max_file_bytes,
            });
        }
        let user = self.user_dir(user);
        // (in a bucket, a slot whose object is listed is stored: its
        // reservation ends, or the file would count twice)
        let (stored, files, landed) = match &self.store {
            Store::Disk(dir) => {
                let (bytes, files) = stored_bytes(&dir.join(&user))?;
                (bytes, files, Vec::new())
            }
            Store::S3(s3) => {
                let (bytes, keys) = s3
                    .usage(&format!("{user}/"), MAX_FILES_PER_USER)
                    .map_err(|e| SlotRefusal::Io(e.to_string()))?
                    .ok_or(SlotRefusal::Quota)?;
                let landed: Vec<String> = keys
                    .iter()
                    .filter_map(|k| k.split('/').nth(1).map(str::to_owned))
                    .collect();
                (bytes, keys.len(), landed)
            }
        };
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        reserved.retain(|_, slots| {
            slots.retain(|r| r.expires > now);
            !slots.is_empty()
        });
        let mine = reserved.get(&user).map_or(&[][..], Vec::as_slice);
        // (a reservation whose object this listing shows is counted by the
        // object; it lapses in its time, as another grant's listing may
        // predate the object)
        let unlanded = || mine.iter().filter(|r| !landed.contains(&r.slot));
        let held: u64 = unlanded().map(|r| r.size).sum();
        let holding = unlanded().count();
        if stored.saturating_add(held).saturating_add(size) > self.quota_bytes
            || files + holding >= MAX_FILES_PER_USER
            || holding >= MAX_RESERVED_PER_USER
            || reserved.values().map(Vec::len).sum::<usize>() >= MAX_RESERVED
        {
            return Err(SlotRefusal::Quota);
        }
        let expires = now + SLOT_VALID_SECS;
        let slot = format!("{slot:032x}");
        reserved.entry(user.clone()).or_default().push(Reservation {
            slot: slot.clone(),
            size,
            expires,
        });
        let path = format!("{user}/{slot}/{name}");
        let url = format!(
            "{}/upload/{user}/{slot}/{}",
            self.public_url,
            utf8_percent_encode(&name, SEGMENT)
        );
        match &self.store {
            Store::Disk(_) => {
                let mac = self.mac(&path, size, &content_type, expires);
                Ok(Slot {
                    put_url: url.clone(),
                    put_headers: vec![("Authorization".into(), format!("Bearer {expires}.{mac}"))],
                    get_url: url,
                })
            }
            // (the type signed as the client named it: it sends that)
            Store::S3(s3) => Ok(Slot {
                put_url: s3.presign_put(
                    &path,
                    size,
                    requested_type.map(str::trim),
                    std::time::Duration::from_secs(SLOT_VALID_SECS),
                ),
                put_headers: Vec::new(),
                get_url: s3.public_get_url(&path).unwrap_or(url),
            }),
        }
    }

    /// Checks a PUT of `size` bytes of `content_type` to `user/slot/name`
    /// (as decoded from its URL) with `authorization`, at `now`.
    pub fn check_put(
        &self,
        (user, slot, name): (&str, &str, &str),
        size: u64,
        content_type: Option<&str>,
        authorization: Option<&str>,
        now: u64,
    ) -> Option<PutTarget> {
        let target = self.target(user, slot, name)?;
        let content_type = clean_type(content_type)?;
        let (expires, mac) = authorization?.strip_prefix("Bearer ")?.split_once('.')?;
        let expires: u64 = expires.parse().ok()?;
        if expires < now || size > self.max_file_bytes {
            return None;
        }
        let expected = self.mac(
            &format!("{user}/{slot}/{name}"),
            size,
            &content_type,
            expires,
        );
        // (compared in constant time)
        let same = expected.len() == mac.len()
            && expected
                .bytes()
                .zip(mac.bytes())
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0;
        same.then_some(PutTarget { expires, ..target })
    }

    /// The object key of `user/slot/name`, if those could name a file.
    pub fn key(&self, user: &str, slot: &str, name: &str) -> Option<String> {
        upload_key(user, slot, name)
    }

    /// The stored file of `user/slot/name` on local disk, if those name
    /// one (none with an S3 store).
    pub fn target(&self, user: &str, slot: &str, name: &str) -> Option<PutTarget> {
        let Store::Disk(dir) = &self.store else {
            return None;
        };
        self.key(user, slot, name)?;
        let slot_dir = dir.join(user).join(slot);
        Some(PutTarget {
            user: user.to_owned(),
            slot: slot.to_owned(),
            expires: 0,
            file: slot_dir.join(name),
            slot_dir,
        })
    }

    /// A PUT to `target` starts: its slot's reservation holds (a slow
    /// upload keeps counting in full) until the hold is dropped: then it
    /// ends if the file was stored, else it lapses with the slot's
    /// signature. Refused if another PUT to the slot runs, or the slot has
    /// no reservation here (granted before a restart, or used).
    pub fn hold(self: &std::sync::Arc<Self>, target: &PutTarget) -> Result<PutHold, NoHold> {
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        let r = reserved
            .get_mut(&target.user)
            .and_then(|slots| slots.iter_mut().find(|r| r.slot == target.slot))
            .ok_or(NoHold::Unknown)?;
        if r.expires == u64::MAX {
            return Err(NoHold::Busy);
        }
        r.expires = u64::MAX;
        Ok(PutHold {
            slots: self.clone(),
            user: target.user.clone(),
            slot: target.slot.clone(),
            expires: target.expires,
            stored: false,
        })
    }

    /// The directory name of `user`'s files: keyed, so a file's URL does
    /// not tell whose it is (and a local part may hold `..`).
    pub fn user_dir(&self, user: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(format!("user\n{user}").as_bytes());
        mac.finalize().into_bytes()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn mac(&self, path: &str, size: u64, content_type: &str, expires: u64) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(format!("put\n{path}\n{size}\n{content_type}\n{expires}").as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The object key of `user/slot/name`, if those could name a file.
fn upload_key(user: &str, slot: &str, name: &str) -> Option<String> {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = hex(user, 32) && hex(slot, 32) && clean_name(name).as_deref() == Some(name);
    ok.then(|| format!("{user}/{slot}/{name}"))
}

/// Whether `key` is an upload's object key (`USER/SLOT/NAME`, as
/// granted): what the expiry sweep of a bucket may delete.
pub fn is_upload_key(key: &str) -> bool {
    let mut parts = key.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(user), Some(slot), Some(name)) => upload_key(user, slot, name).is_some(),
        _ => false,
    }
}

/// A file name safe to keep and serve: no path separators, control or
/// quote characters (replaced), not `.` or `..`, at most
/// [`MAX_NAME_BYTES`]; none if nothing is left.
pub fn clean_name(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.trim().chars() {
        let c = match c {
            '/' | '\\' | '"' | '\'' | '<' | '>' | '%' => '_',
            c if c.is_control() => '_',
            c => c,
        };
        if out.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        out.push(c);
    }
    (!out.is_empty() && out != "." && out != ".." && !out.starts_with('.')).then_some(out)
}

/// A content type as kept: `type/subtype` of token characters (lower
/// case), parameters dropped; the default if none is given.
pub fn clean_type(content_type: Option<&str>) -> Option<String> {
    let Some(t) = content_type else {
        return Some(DEFAULT_TYPE.to_owned());
    };
    let t = t
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let ok =
        t.len() <= MAX_TYPE_BYTES && t.split_once('/').is_some_and(|(a, b)| token(a) && token(b));
    ok.then_some(t)
}

/// Bytes of the files under a user's directory, and its slots (none if
/// it does not exist); refused past [`MAX_FILES_PER_USER`] slots.
fn stored_bytes(dir: &Path) -> Result<(u64, usize), SlotRefusal> {
    let io = |e: std::io::Error| SlotRefusal::Io(e.to_string());
    let slots = match std::fs::read_dir(dir) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(io(e)),
    };
    let (mut bytes, mut count) = (0u64, 0usize);
    for slot in slots {
        let slot = slot.map_err(io)?;
        count += 1;
        if count > MAX_FILES_PER_USER {
            return Err(SlotRefusal::Quota);
        }
        let Ok(entries) = std::fs::read_dir(slot.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    Ok((bytes, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(dir: &Path) -> Slots {
        Slots::new(
            Store::Disk(dir.to_owned()),
            "https://up.example:5281/",
            [9; 32],
            1000,
            2500,
        )
    }

    fn parts(url: &str) -> (String, String, String) {
        let path = url.split("/upload/").nth(1).unwrap();
        let mut it = path.split('/');
        let (u, s, n) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let n = percent_encoding::percent_decode_str(n)
            .decode_utf8()
            .unwrap();
        (u.into(), s.into(), n.into_owned())
    }

    #[test]
    fn a_slot_signs_its_path_size_type_and_expiry_and_a_put_must_match_all() {
        let dir = tempfile::tempdir().unwrap();
        let s = slots(dir.path());
        let slot = s
            .grant("alice", "my photo.jpg", 500, Some("image/jpeg"), 1000, 7)
            .unwrap();
        assert!(slot.put_url.starts_with("https://up.example:5281/upload/"));
        assert!(
            slot.put_url
                .ends_with("/00000000000000000000000000000007/my%20photo.jpg")
        );
        assert_eq!(slot.put_url, slot.get_url);
        let auth = slot.put_headers[0].1.clone();
        let (u, sl, n) = parts(&slot.put_url);
        let at = |size, ty: Option<&str>, auth: &str, now| {
            s.check_put((&u, &sl, &n), size, ty, Some(auth), now)
        };
        let ok = at(500, Some("image/jpeg"), &auth, 1200).expect("the granted PUT");
        assert_eq!(ok.file, dir.path().join(&u).join(&sl).join("my photo.jpg"));
        // (parameters and case of the type do not matter)
        assert!(at(500, Some("Image/JPEG; q=1"), &auth, 1200).is_some());
        assert!(
            at(501, Some("image/jpeg"), &auth, 1200).is_none(),
            "another size"
        );
        assert!(
            at(500, Some("text/html"), &auth, 1200).is_none(),
            "another type"
        );
        assert!(
            at(500, Some("image/jpeg"), &auth, 1000 + SLOT_VALID_SECS + 1).is_none(),
            "late"
        );
        let forged = auth.replace("Bearer 1300", "Bearer 9999");
        assert!(
            at(500, Some("image/jpeg"), &forged, 1200).is_none(),
            "a later expiry"
        );
        assert!(
            s.check_put(
                (&u, &sl, "other.jpg"),
                500,
                Some("image/jpeg"),
                Some(&auth),
                1200
            )
            .is_none()
        );
    }

    #[test]
    fn sizes_past_the_bound_or_the_quota_and_bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = slots(dir.path());
        assert_eq!(
            s.grant("alice", "a", 1001, None, 0, 1),
            Err(SlotRefusal::TooLarge { max: 1000 })
        );
        for bad in ["", "..", ".hidden", "   "] {
            assert_eq!(
                s.grant("alice", bad, 10, None, 0, 1),
                Err(SlotRefusal::BadRequest),
                "{bad:?}"
            );
        }
        assert_eq!(
            s.grant("alice", "a", 10, Some("no-slash"), 0, 1),
            Err(SlotRefusal::BadRequest)
        );
        // two granted slots hold 2000 of 2500 bytes; a stored file counts too
        s.grant("alice", "a", 1000, None, 0, 1).unwrap();
        s.grant("alice", "b", 1000, None, 0, 2).unwrap();
        assert_eq!(
            s.grant("alice", "c", 600, None, 0, 3),
            Err(SlotRefusal::Quota)
        );
        // others have their own quota; unused slots expire
        s.grant("bob", "c", 1000, None, 0, 4).unwrap();
        s.grant("alice", "c", 600, None, SLOT_VALID_SECS + 1, 5)
            .unwrap();
        let user = s.user_dir("alice");
        std::fs::create_dir_all(dir.path().join(&user).join("x")).unwrap();
        std::fs::write(dir.path().join(&user).join("x").join("f"), vec![0; 1900]).unwrap();
        assert_eq!(
            s.grant("alice", "d", 1, None, 2 * SLOT_VALID_SECS, 6),
            Err(SlotRefusal::Quota)
        );
    }

    #[test]
    fn a_slow_puts_slot_counts_in_full_until_the_put_ends() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(slots(dir.path()));
        let mut holds = Vec::new();
        for i in 1..=2 {
            let slot = s.grant("alice", "a", 1000, None, 0, i).unwrap();
            let (u, sl, n) = parts(&slot.put_url);
            let target = s
                .check_put((&u, &sl, &n), 1000, None, Some(&slot.put_headers[0].1), 10)
                .unwrap();
            holds.push(s.hold(&target).expect("a reservation to hold"));
            // (one PUT at a time holds a slot)
            assert_eq!(s.hold(&target).err(), Some(NoHold::Busy));
        }
        // long after the slots' validity, the running PUTs still count
        let later = 10 * SLOT_VALID_SECS;
        assert_eq!(
            s.grant("alice", "b", 1000, None, later, 3),
            Err(SlotRefusal::Quota)
        );
        // one is stored (its reservation ends), one fails (its reservation
        // lapses with its signature, already past: it counts no more)
        holds.remove(0).stored();
        drop(holds);
        s.grant("alice", "b", 1000, None, later, 3).unwrap();
        s.grant("alice", "c", 1000, None, later, 4).unwrap();
        // a failed PUT's slot can be tried again while its signature holds
        let slot = s.grant("bob", "d", 1000, None, 0, 5).unwrap();
        let (u, sl, n) = parts(&slot.put_url);
        let target = s
            .check_put((&u, &sl, &n), 1000, None, Some(&slot.put_headers[0].1), 10)
            .unwrap();
        drop(s.hold(&target).unwrap());
        let stored = s.hold(&target).expect("held again");
        stored.stored();
        assert_eq!(s.hold(&target).err(), Some(NoHold::Unknown), "used");
        // and one user cannot hold every reservation
        for i in 0..MAX_RESERVED_PER_USER as u128 {
            s.grant("carol", "c", 1, None, later, 100 + i).unwrap();
        }
        assert_eq!(
            s.grant("carol", "c", 1, None, later, 99),
            Err(SlotRefusal::Quota)
        );
    }

    #[test]
    fn names_are_cleaned_and_user_directories_are_keyed_hashes() {
        assert_eq!(clean_name("../../etc/passwd"), None);
        assert_eq!(clean_name("x/../y").as_deref(), Some("x_.._y"));
        assert_eq!(clean_name("a/b\\c\"d\u{7}").as_deref(), Some("a_b_c_d_"));
        assert_eq!(
            clean_name(&"é".repeat(200)).map(|n| n.len()),
            Some(MAX_NAME_BYTES)
        );
        let dir = tempfile::tempdir().unwrap();
        let s = slots(dir.path());
        let other = Slots::new(Store::Disk(dir.path().into()), "https://x", [1; 32], 1, 1);
        assert_eq!(s.user_dir("a").len(), 32);
        assert_ne!(s.user_dir("a"), s.user_dir("b"));
        assert_ne!(s.user_dir("a"), other.user_dir("a"), "keyed");
    }
}
