//! Stable ids of archived messages (XEP-0359 `<stanza-id/>`, XEP-0313
//! archive ids): `base + n` for the n-th message archived, as 16 hex
//! digits. Increasing, so the archive's indexes grow at their ends; the
//! base comes from outside (see [`super::Router::with_archive`]).

/// The archive id source (see the module docs).
#[derive(Debug)]
pub(crate) struct ArchiveIds {
    base: u64,
    issued: u64,
}

impl ArchiveIds {
    /// Ids after `base`.
    pub(crate) fn new(base: u64) -> Self {
        Self { base, issued: 0 }
    }

    /// The next id.
    pub(crate) fn next_id(&mut self) -> String {
        self.issued += 1;
        format!("{:016x}", self.base.wrapping_add(self.issued))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_from_the_base_as_sixteen_hex_digits() {
        let mut ids = ArchiveIds::new(0xff);
        assert_eq!(ids.next_id(), "0000000000000100");
        assert_eq!(ids.next_id(), "0000000000000101");
        assert!(ids.next_id() < ids.next_id());
    }

    #[test]
    fn ids_wrap_at_the_top_of_u64() {
        let mut ids = ArchiveIds::new(u64::MAX);
        assert_eq!(ids.next_id(), "0000000000000000");
    }
}
