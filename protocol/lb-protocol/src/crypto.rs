//! The encrypted-CID algorithms: single-pass AES-128-ECB when server id + nonce is
//! exactly 16 octets, otherwise the draft's four-round Feistel network whose round
//! function is AES-128-ECB over `expand(len, pass, half)`.

use aes::Aes128;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};

/// Largest half of a plaintext block (19 octets rounded up / 2).
const MAX_HALF: usize = 10;
/// AES block size.
const BLOCK: usize = 16;

/// The draft's `expand(length, pass, input_bytes)`: `input` as the most significant
/// octets, zero padding, then `length` as the 15th octet and `pass` as the 16th.
///
/// Callers pass at most 14 input octets (halves are at most 10).
pub(crate) fn expand(length: u8, pass: u8, input: &[u8]) -> [u8; BLOCK] {
    let mut out = [0u8; BLOCK];
    let n = input.len().min(BLOCK - 2);
    out[..n].copy_from_slice(&input[..n]);
    out[BLOCK - 2] = length;
    out[BLOCK - 1] = pass;
    out
}

/// An AES-128-ECB key schedule for one configuration.
#[derive(Clone)]
pub(crate) struct CidCipher {
    aes: Aes128,
}

impl CidCipher {
    pub(crate) fn new(key: &[u8; 16]) -> Self {
        Self {
            aes: Aes128::new(GenericArray::from_slice(key)),
        }
    }

    fn encrypt_block(&self, block: [u8; BLOCK]) -> [u8; BLOCK] {
        let mut b = GenericArray::from(block);
        self.aes.encrypt_block(&mut b);
        b.into()
    }

    fn decrypt_block(&self, block: [u8; BLOCK]) -> [u8; BLOCK] {
        let mut b = GenericArray::from(block);
        self.aes.decrypt_block(&mut b);
        b.into()
    }

    /// Encrypts `server id || nonce` (5..=19 octets, validated by the config) in place.
    pub(crate) fn encrypt(&self, buf: &mut [u8]) {
        if let Ok(block) = <[u8; BLOCK]>::try_from(&*buf) {
            buf.copy_from_slice(&self.encrypt_block(block));
            return;
        }
        let Some(mut f) = Feistel::split(self, buf) else {
            return;
        };
        f.left_into_right(1);
        f.right_into_left(2);
        f.left_into_right(3);
        f.right_into_left(4);
        f.join(buf);
    }

    /// Decrypts a ciphertext block in place. Only the first `needed` octets are
    /// guaranteed to be the plaintext: when they all lie in the left half, the fourth
    /// Feistel pass is skipped, as the draft allows for load balancers.
    pub(crate) fn decrypt(&self, buf: &mut [u8], needed: usize) {
        if let Ok(block) = <[u8; BLOCK]>::try_from(&*buf) {
            buf.copy_from_slice(&self.decrypt_block(block));
            return;
        }
        let Some(mut f) = Feistel::split(self, buf) else {
            return;
        };
        f.right_into_left(4);
        f.left_into_right(3);
        f.right_into_left(2);
        // The left half carries len / 2 whole octets (for odd lengths the middle octet
        // is shared, and its low nibble belongs to the right half).
        if needed > buf.len() / 2 {
            f.left_into_right(1);
        }
        f.join(buf);
    }
}

/// State of the four-pass Feistel network over one plaintext/ciphertext block.
struct Feistel<'a> {
    cipher: &'a CidCipher,
    /// Total length in octets (5..=19, never 16).
    len: usize,
    /// `len / 2` rounded up.
    half: usize,
    odd: bool,
    left: [u8; MAX_HALF],
    right: [u8; MAX_HALF],
}

impl<'a> Feistel<'a> {
    /// Splits `data` into two halves of `half` octets; for odd lengths the middle octet's
    /// high nibble goes left and its low nibble right, the other nibbles cleared.
    fn split(cipher: &'a CidCipher, data: &[u8]) -> Option<Self> {
        let len = data.len();
        let half = len.div_ceil(2);
        if half > MAX_HALF || len < 2 {
            return None;
        }
        let odd = len % 2 == 1;
        let mut left = [0u8; MAX_HALF];
        let mut right = [0u8; MAX_HALF];
        left[..half].copy_from_slice(&data[..half]);
        right[..half].copy_from_slice(&data[len - half..]);
        if odd {
            left[half - 1] &= 0xf0;
            right[0] &= 0x0f;
        }
        Some(Self {
            cipher,
            len,
            half,
            odd,
            left,
            right,
        })
    }

    /// `truncate(AES_ECB(key, expand(len, pass, input)), half)` as a full block.
    fn round(&self, pass: u8, input: &[u8]) -> [u8; BLOCK] {
        // len <= 19 (validated config), so the cast is exact.
        self.cipher
            .encrypt_block(expand(self.len as u8, pass, input))
    }

    /// `right ^= truncate(AES(expand(len, pass, left)), half)`, first nibble cleared if odd.
    fn left_into_right(&mut self, pass: u8) {
        let mask = self.round(pass, &self.left[..self.half]);
        for (r, m) in self.right[..self.half].iter_mut().zip(mask) {
            *r ^= m;
        }
        if self.odd {
            self.right[0] &= 0x0f;
        }
    }

    /// `left ^= truncate(AES(expand(len, pass, right)), half)`, last nibble cleared if odd.
    fn right_into_left(&mut self, pass: u8) {
        let mask = self.round(pass, &self.right[..self.half]);
        for (l, m) in self.left[..self.half].iter_mut().zip(mask) {
            *l ^= m;
        }
        if self.odd {
            self.left[self.half - 1] &= 0xf0;
        }
    }

    /// Concatenates the halves back into `out` (`len` octets), merging the shared
    /// middle octet for odd lengths.
    fn join(&self, out: &mut [u8]) {
        let h = self.half;
        out[..h].copy_from_slice(&self.left[..h]);
        if self.odd {
            out[h - 1] |= self.right[0];
            out[h..self.len].copy_from_slice(&self.right[1..h]);
        } else {
            out[h..self.len].copy_from_slice(&self.right[..h]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn block(s: &str) -> [u8; 16] {
        hex(s).try_into().unwrap()
    }

    #[test]
    fn expand_matches_draft_example() {
        // expand(0x06, 0x02, 0xaaba3c) = 0xaaba3c00000000000000000000000602
        assert_eq!(
            expand(0x06, 0x02, &hex("aaba3c")),
            block("aaba3c00000000000000000000000602")
        );
    }

    #[test]
    fn split_matches_draft_example() {
        // 0x7040b81b55ccf3 splits into left_0 = 0x7040b810, right_0 = 0x0b55ccf3.
        let cipher = CidCipher::new(&[0; 16]);
        let data = hex("7040b81b55ccf3");
        let f = Feistel::split(&cipher, &data).unwrap();
        assert_eq!(f.half, 4);
        assert_eq!(&f.left[..4], hex("7040b810").as_slice());
        assert_eq!(&f.right[..4], hex("0b55ccf3").as_slice());
        let mut out = [0u8; 7];
        f.join(&mut out);
        assert_eq!(out.as_slice(), data.as_slice());
    }

    /// Every intermediate AES input/output of the draft's worked four-pass example.
    #[test]
    fn four_pass_example_intermediates() {
        let cipher = CidCipher::new(&block("fdf726a9893ec05c0632d3956680baf0"));
        let steps = [
            (
                "31441a90000000000000000000000701",
                "a255dd8cdacf01948d3a848c3c7fee23",
            ),
            (
                "0e3c1ff9000000000000000000000702",
                "e5e452cb9e1bedb0b2bf830506bf4c4e",
            ),
            (
                "d4a04850000000000000000000000703",
                "b7821ab3024fed0913b6a04d18e3216f",
            ),
            (
                "09be054a000000000000000000000704",
                "b334357cfdf81e3fafe180154eaf7378",
            ),
        ];
        for (input, output) in steps {
            assert_eq!(cipher.encrypt_block(block(input)), block(output), "{input}");
        }
        let mut buf = hex("31441a9c69c275");
        cipher.encrypt(&mut buf);
        assert_eq!(buf, hex("67947d29be054a"));
        cipher.decrypt(&mut buf, 7);
        assert_eq!(buf, hex("31441a9c69c275"));
    }

    #[test]
    fn short_inputs_do_not_panic() {
        let cipher = CidCipher::new(&[7; 16]);
        for len in 0..=20 {
            let mut buf = vec![0xa5; len];
            cipher.encrypt(&mut buf);
            cipher.decrypt(&mut buf, len);
        }
    }
}
