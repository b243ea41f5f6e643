//! Maglev consistent hashing (Eisenbud et al., NSDI 2016).
//!
//! A lookup table of `M` slots (`M` prime, much larger than the number of
//! backends). Backend `i` has the preference list
//! `perm[j] = (offset + j * skip) mod M` with `offset = h1(name) mod M` and
//! `skip = h2(name) mod (M - 1) + 1`; backends take turns (a backend of weight
//! `w` takes `w` turns per round) claiming their next preferred empty slot until
//! the table is full. A key goes to `table[hash(key) mod M]`.
//!
//! Every hash here is a fixed, seeded function of the bytes (no process-random
//! keys, nothing from `std::hash`), so two balancer instances — or two builds of
//! this crate — given the same backends build identical tables and route a
//! handshake's packets to the same backend.

use thiserror::Error;

/// Default table size: a prime, as used by Envoy and Katran.
pub const DEFAULT_TABLE_SIZE: usize = 65_537;

/// Largest table size accepted (bounds the allocation).
pub const MAX_TABLE_SIZE: usize = 1 << 24;

/// Slot marker while the table is being filled.
const EMPTY: u16 = u16::MAX;

/// Seed of `h1` (the offset hash).
const SEED_OFFSET: u64 = 0x6c6f_6e67_6c69_6e6b; // "longlink"
/// Seed of `h2` (the skip hash).
const SEED_SKIP: u64 = 0x6d61_676c_6576_2d32; // "maglev-2"
/// Seed of the lookup-key hash.
const SEED_KEY: u64 = 0x6b65_792d_6861_7368; // "key-hash"

/// Why a table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MaglevError {
    /// The table size is not a prime number.
    #[error("maglev table size {0} is not prime")]
    NotPrime(usize),
    /// The table size is not larger than the number of backends.
    #[error("maglev table size {size} must exceed the backend count {backends}")]
    TooSmall {
        /// Requested table size.
        size: usize,
        /// Number of backends.
        backends: usize,
    },
    /// The table size exceeds [`MAX_TABLE_SIZE`].
    #[error("maglev table size {0} exceeds {MAX_TABLE_SIZE}")]
    TooLarge(usize),
    /// More backends than a slot index can name.
    #[error("{0} backends exceed the maglev limit of {max}", max = u16::MAX)]
    TooManyBackends(usize),
    /// A backend has weight 0.
    #[error("maglev backend {0:?} has weight 0")]
    ZeroWeight(String),
    /// Two backends share a name (and so a preference list).
    #[error("maglev backend name {0:?} is given twice")]
    DuplicateName(String),
}

/// A Maglev lookup table over named backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maglev {
    /// Backend index per slot; empty when there are no backends.
    table: Vec<u16>,
    /// Backend names in the order given to [`Maglev::new`].
    backends: Vec<String>,
    /// Table size `M` (kept separately: `table` is empty without backends).
    size: usize,
}

impl Maglev {
    /// Builds the lookup table for backends given by stable names (e.g. "cm-1")
    /// with weights (>= 1: how many turns per round). `size` must be prime, at
    /// most [`MAX_TABLE_SIZE`] and larger than the backend count. An empty
    /// backend list gives a table whose lookups return `None`.
    pub fn new(backends: &[(String, u32)], size: usize) -> Result<Self, MaglevError> {
        if size > MAX_TABLE_SIZE {
            return Err(MaglevError::TooLarge(size));
        }
        if !is_prime(size) {
            return Err(MaglevError::NotPrime(size));
        }
        let n = backends.len();
        // Indices 0..n must fit below the EMPTY marker.
        if n > usize::from(u16::MAX) {
            return Err(MaglevError::TooManyBackends(n));
        }
        if size <= n {
            return Err(MaglevError::TooSmall { size, backends: n });
        }
        if let Some((name, _)) = backends.iter().find(|(_, w)| *w == 0) {
            return Err(MaglevError::ZeroWeight(name.clone()));
        }
        let mut sorted: Vec<&str> = backends.iter().map(|(name, _)| name.as_str()).collect();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|p| p[0] == p[1]) {
            return Err(MaglevError::DuplicateName(pair[0].to_owned()));
        }
        let names = backends.iter().map(|(name, _)| name.clone()).collect();
        if n == 0 {
            return Ok(Self {
                table: Vec::new(),
                backends: names,
                size,
            });
        }
        Ok(Self {
            table: populate(backends, size),
            backends: names,
            size,
        })
    }

    /// The backend name for `key` (e.g. a client-chosen destination CID), or
    /// `None` if there are no backends.
    pub fn lookup(&self, key: &[u8]) -> Option<&str> {
        self.lookup_index(key)
            .and_then(|i| self.backends.get(i))
            .map(String::as_str)
    }

    /// The index (into the backend slice given to [`Maglev::new`]) for `key`,
    /// or `None` if there are no backends.
    pub fn lookup_index(&self, key: &[u8]) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let slot = slot_of(hash64(SEED_KEY, key), self.table.len());
        self.table.get(slot).map(|&i| usize::from(i))
    }

    /// The table size `M`.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Backend names in the order given to [`Maglev::new`].
    pub fn backends(&self) -> &[String] {
        &self.backends
    }
}

/// Fills a table of `size` slots (`size` prime, > backends.len() > 0, weights >= 1).
fn populate(backends: &[(String, u32)], size: usize) -> Vec<u16> {
    // (next preferred position, skip) per backend.
    let mut cursor: Vec<(usize, usize)> = backends
        .iter()
        .map(|(name, _)| {
            let offset = slot_of(hash64(SEED_OFFSET, name.as_bytes()), size);
            let skip = slot_of(hash64(SEED_SKIP, name.as_bytes()), size - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut table = vec![EMPTY; size];
    let mut filled = 0usize;
    'rounds: loop {
        for (index, ((_, weight), (pos, skip))) in
            backends.iter().zip(cursor.iter_mut()).enumerate()
        {
            for _ in 0..*weight {
                // `size` is prime and 1 <= skip < size, so the preference list
                // visits every slot: an empty one is found while filled < size.
                while table[*pos] != EMPTY {
                    *pos = advance(*pos, *skip, size);
                }
                // The index fits: backends.len() <= u16::MAX was checked.
                table[*pos] = index as u16;
                *pos = advance(*pos, *skip, size);
                filled += 1;
                if filled == size {
                    break 'rounds;
                }
            }
        }
    }
    table
}

/// `(pos + skip) mod size` for `pos, skip < size` without overflow.
fn advance(pos: usize, skip: usize, size: usize) -> usize {
    let next = pos + skip;
    if next >= size { next - size } else { next }
}

/// `hash mod size` as a slot index (`size` > 0).
fn slot_of(hash: u64, size: usize) -> usize {
    // size <= MAX_TABLE_SIZE, so both conversions are lossless.
    (hash % size as u64) as usize
}

/// Whether `n` is prime (trial division; `n` <= [`MAX_TABLE_SIZE`] here).
fn is_prime(n: usize) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let mut d = 5usize;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// MurmurHash3's 64-bit finalizer: a bijection with full avalanche.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// A small deterministic seeded 64-bit hash: the length and seed start the
/// state, each little-endian 8-octet word (zero-padded at the end) is mixed in
/// with [`fmix64`], and the result is finalized once more. Not cryptographic;
/// different seeds give independent-looking functions.
fn hash64(seed: u64, data: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15; // 2^64 / golden ratio
    let mut h = fmix64(seed ^ (data.len() as u64).wrapping_mul(K));
    for chunk in data.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = fmix64(h ^ u64::from_le_bytes(word))
            .wrapping_add(seed)
            .wrapping_add(K);
    }
    fmix64(h ^ seed.rotate_left(32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(n: usize) -> Vec<(String, u32)> {
        (1..=n).map(|i| (format!("cm-{i}"), 1)).collect()
    }

    /// Slots per backend index.
    fn counts(m: &Maglev) -> Vec<usize> {
        let mut c = vec![0usize; m.backends.len()];
        for &i in &m.table {
            c[usize::from(i)] += 1;
        }
        c
    }

    /// Owner name of every slot.
    fn owners(m: &Maglev) -> Vec<&str> {
        m.table
            .iter()
            .map(|&i| m.backends[usize::from(i)].as_str())
            .collect()
    }

    /// Deterministic xorshift64* PRNG for test keys.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn primality() {
        let primes = [2, 3, 5, 7, 11, 13, 251, 65_521, 65_537, 655_373, 16_777_213];
        for p in primes {
            assert!(is_prime(p), "{p}");
        }
        let composites = [
            0,
            1,
            4,
            9,
            25,
            49,
            65_535,
            65_536,
            65_541,
            1 << 24,
            4_294_967_297usize / 3,
        ];
        for c in composites {
            assert!(!is_prime(c), "{c}");
        }
    }

    #[test]
    fn rejects_bad_sizes_and_backends() {
        assert_eq!(
            Maglev::new(&named(3), 65_536),
            Err(MaglevError::NotPrime(65_536))
        );
        assert_eq!(Maglev::new(&[], 1), Err(MaglevError::NotPrime(1)));
        assert_eq!(Maglev::new(&[], 0), Err(MaglevError::NotPrime(0)));
        assert_eq!(
            Maglev::new(&named(5), 5),
            Err(MaglevError::TooSmall {
                size: 5,
                backends: 5
            })
        );
        assert_eq!(
            Maglev::new(&[], MAX_TABLE_SIZE + 1),
            Err(MaglevError::TooLarge(MAX_TABLE_SIZE + 1))
        );
        let zero = vec![("a".to_owned(), 1), ("b".to_owned(), 0)];
        assert_eq!(
            Maglev::new(&zero, 13),
            Err(MaglevError::ZeroWeight("b".into()))
        );
        let dup = vec![
            ("a".to_owned(), 1),
            ("b".to_owned(), 1),
            ("a".to_owned(), 2),
        ];
        assert_eq!(
            Maglev::new(&dup, 13),
            Err(MaglevError::DuplicateName("a".into()))
        );
        assert!(Maglev::new(&named(5), 7).is_ok());
    }

    #[test]
    fn empty_table_returns_none() {
        let m = Maglev::new(&[], DEFAULT_TABLE_SIZE).unwrap();
        assert_eq!(m.size(), DEFAULT_TABLE_SIZE);
        assert_eq!(m.lookup(b"anything"), None);
        assert_eq!(m.lookup_index(b""), None);
        assert!(m.backends().is_empty());
    }

    #[test]
    fn single_backend_gets_everything() {
        let m = Maglev::new(&named(1), 13).unwrap();
        assert!(m.table.iter().all(|&i| i == 0));
        assert_eq!(m.lookup(b"x"), Some("cm-1"));
    }

    #[test]
    fn tiny_table_is_full_and_balanced() {
        let m = Maglev::new(&named(3), 7).unwrap();
        assert_eq!(m.table.len(), 7);
        assert!(m.table.iter().all(|&i| i < 3));
        let c = counts(&m);
        assert!(c.iter().all(|&x| x == 2 || x == 3), "{c:?}");
    }

    #[test]
    fn even_distribution() {
        for n in [3usize, 10] {
            let m = Maglev::new(&named(n), DEFAULT_TABLE_SIZE).unwrap();
            assert_eq!(m.size(), DEFAULT_TABLE_SIZE);
            let ideal = DEFAULT_TABLE_SIZE as f64 / n as f64;
            for (i, c) in counts(&m).into_iter().enumerate() {
                let share = c as f64 / DEFAULT_TABLE_SIZE as f64;
                assert!(
                    (c as f64 - ideal).abs() <= 0.02 * ideal,
                    "n={n} backend {i}: {c} slots, share {share:.4}"
                );
            }
        }
    }

    #[test]
    fn removing_one_of_ten_moves_little_else() {
        let before = Maglev::new(&named(10), DEFAULT_TABLE_SIZE).unwrap();
        let old = owners(&before);
        // Remove each backend in turn.
        for removed in 0..10 {
            let mut fewer = named(10);
            let (gone, _) = fewer.remove(removed);
            let after = Maglev::new(&fewer, DEFAULT_TABLE_SIZE).unwrap();
            let new = owners(&after);
            let mut others_moved = 0usize;
            for (o, n) in old.iter().zip(&new) {
                assert_ne!(*n, gone);
                if *o != gone && o != n {
                    others_moved += 1;
                }
            }
            let frac = others_moved as f64 / DEFAULT_TABLE_SIZE as f64;
            // Measured: about 0.2% of the table (146 slots removing cm-4).
            assert!(
                frac < 0.01,
                "removing {gone}: {others_moved} slots of other backends moved ({frac:.4})"
            );
        }
    }

    #[test]
    fn adding_an_eleventh_moves_about_a_eleventh() {
        let before = Maglev::new(&named(10), DEFAULT_TABLE_SIZE).unwrap();
        let after = Maglev::new(&named(11), DEFAULT_TABLE_SIZE).unwrap();
        let (old, new) = (owners(&before), owners(&after));
        let moved = old.iter().zip(&new).filter(|(o, n)| o != n).count();
        let to_new = new.iter().filter(|n| **n == "cm-11").count();
        let frac_moved = moved as f64 / DEFAULT_TABLE_SIZE as f64;
        let frac_new = to_new as f64 / DEFAULT_TABLE_SIZE as f64;
        assert!((frac_new - 1.0 / 11.0).abs() < 0.002, "{frac_new:.4}");
        // Everything moved went to the newcomer, plus a little churn
        // (measured: 152 slots, 0.23% of the table).
        assert!(frac_moved >= frac_new);
        assert!(
            frac_moved - frac_new < 0.01,
            "moved {frac_moved:.4}, new {frac_new:.4}"
        );
    }

    #[test]
    fn weights_two_to_one() {
        let backends = vec![("big".to_owned(), 2), ("small".to_owned(), 1)];
        let m = Maglev::new(&backends, DEFAULT_TABLE_SIZE).unwrap();
        let c = counts(&m);
        let big = c[0] as f64 / DEFAULT_TABLE_SIZE as f64;
        let small = c[1] as f64 / DEFAULT_TABLE_SIZE as f64;
        assert!((big - 2.0 / 3.0).abs() < 0.01, "{big}");
        assert!((small - 1.0 / 3.0).abs() < 0.01, "{small}");
    }

    #[test]
    fn deterministic() {
        let a = Maglev::new(&named(7), DEFAULT_TABLE_SIZE).unwrap();
        let b = Maglev::new(&named(7), DEFAULT_TABLE_SIZE).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.lookup(b"some-dcid"), b.lookup(b"some-dcid"));
    }

    /// Pins the hash and table so that a change (which would move flows
    /// between balancer instances running different builds) is noticed.
    #[test]
    fn hash_and_table_are_pinned() {
        assert_eq!(hash64(SEED_KEY, b""), PINNED_HASH_EMPTY);
        assert_eq!(hash64(SEED_OFFSET, b"cm-1"), PINNED_HASH_CM1);
        let m = Maglev::new(&named(3), DEFAULT_TABLE_SIZE).unwrap();
        assert_eq!(&m.table[..16], &PINNED_TABLE_HEAD);
        assert_eq!(m.lookup(&[0x11; 8]), Some(PINNED_LOOKUP));
    }
    const PINNED_HASH_EMPTY: u64 = 0xc3e8_6e0e_bfbf_543b;
    const PINNED_HASH_CM1: u64 = 0x28b5_21c3_e363_f574;
    const PINNED_TABLE_HEAD: [u16; 16] = [2, 2, 2, 1, 1, 2, 1, 1, 2, 0, 1, 0, 0, 0, 0, 1];
    const PINNED_LOOKUP: &str = "cm-3";

    #[test]
    fn hash_distinguishes_padding_and_seeds() {
        assert_ne!(hash64(SEED_KEY, b"a"), hash64(SEED_KEY, b"a\0"));
        assert_ne!(hash64(SEED_KEY, b""), hash64(SEED_KEY, b"\0"));
        assert_ne!(hash64(SEED_OFFSET, b"cm-1"), hash64(SEED_SKIP, b"cm-1"));
    }

    #[test]
    fn random_keys_spread_over_three() {
        let m = Maglev::new(&named(3), DEFAULT_TABLE_SIZE).unwrap();
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut hits = [0usize; 3];
        let mut key = [0u8; 20];
        for _ in 0..3000 {
            let len = 8 + (rng.next() % 13) as usize;
            for b in &mut key[..len] {
                *b = rng.next() as u8;
            }
            let i = m.lookup_index(&key[..len]).unwrap();
            assert_eq!(m.lookup(&key[..len]), Some(m.backends()[i].as_str()));
            hits[i] += 1;
        }
        for h in hits {
            assert!((900..=1100).contains(&h), "{hits:?}");
        }
    }
}
