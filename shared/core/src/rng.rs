//! The one seeded random generator: splitmix64 (Steele, Lea and Flood, "Fast splittable
//! pseudorandom number generators", 2014). Tiny, fast and fully determined by its seed, which
//! is all the toolkit asks of randomness: generated test cases, simulated clinics and
//! workloads, fault schedules. Every run with the same seed makes the same choices, so a
//! failing case reproduces from the seed it prints. Not for secrets (tokens and keys come from
//! the operating system's generator).

/// A splitmix64 generator. `Clone` copies its position, so two clones make the same choices.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough below `n` (the modulo bias is under 2^-40 for the small `n` used here);
    /// 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `below` for indexes and counts.
    pub fn below_usize(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True with probability `p` percent.
    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    /// One of `items`, which must not be empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below_usize(items.len())]
    }

    /// A new generator for a sub-part, so adding choices in one part leaves the others alone.
    pub fn fork(&mut self) -> SplitMix64 {
        SplitMix64(self.next_u64())
    }

    /// A version-4 uuid in the 36-character lower-case form OpenMRS stores.
    pub fn uuid(&mut self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_be_bytes());
        uuid_text(bytes)
    }

    /// `chars` lower-case hexadecimal digits.
    pub fn hex(&mut self, chars: usize) -> String {
        (0..chars).map(|_| char::from_digit(self.below(16) as u32, 16).expect("digit below 16")).collect()
    }
}

/// The 36-character text of 16 bytes made a version-4, variant-1 uuid.
pub fn uuid_text(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_splitmix64() {
        // Reference values of splitmix64 seeded with 1234567 (Vigna's published C code).
        let mut rng = SplitMix64::new(1234567);
        assert_eq!(rng.next_u64(), 6457827717110365317);
        assert_eq!(rng.next_u64(), 3203168211198807973);
        assert_eq!(rng.next_u64(), 9817491932198370423);
    }

    #[test]
    fn the_same_seed_makes_the_same_choices() {
        let (mut a, mut b) = (SplitMix64::new(7), SplitMix64::new(7));
        let mut fork = a.clone().fork();
        for _ in 0..1_000 {
            assert_eq!(a.below(1_000), b.below(1_000));
        }
        assert_ne!(fork.uuid(), SplitMix64::new(8).uuid());
        assert_eq!(SplitMix64::new(3).below(0), 0);
        let uuid = SplitMix64::new(9).uuid();
        assert_eq!((uuid.len(), &uuid[14..15]), (36, "4"));
        assert!(matches!(&uuid[19..20], "8" | "9" | "a" | "b"), "{uuid}");
        assert!(SplitMix64::new(5).hex(12).chars().all(|c| c.is_ascii_hexdigit()));
    }
}
