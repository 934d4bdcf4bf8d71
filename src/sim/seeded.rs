//! Seeded randomness shared by the simulation's pure functions.
//!
//! The generator and the request mix draw from `rand`'s `StdRng`; the simulated compute and
//! the listing dataset need values that are a pure function of their inputs (so concurrent
//! builds or a million instances need no shared state), which a SplitMix64 stream seeded by
//! a hash of the inputs gives without any dependency.

use rand::Rng;
use uuid::Uuid;

/// A v4-shaped UUID drawn from `rng`.
pub(crate) fn uuid_from(rng: &mut impl Rng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

/// A v4-shaped UUID from two 64-bit values.
pub(crate) fn uuid_of(a: u64, b: u64) -> Uuid {
    uuid::Builder::from_random_bytes((u128::from(a) << 64 | u128::from(b)).to_be_bytes()).into_uuid()
}

/// splitmix64's output function: a fast, well-mixed hash of one 64-bit value.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A SplitMix64 stream: `next_u64` is [`mix`] of a counter advanced by the golden ratio.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let z = mix(self.0);
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// FNV-1a of `s`: a stable hash of a name (std's hasher is randomly keyed per process).
pub(crate) fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream must stay the scheduler's SplitMix64 (same outputs for the same seed):
    /// the simulated compute's failures, and so every benchmark's figures, depend on it.
    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // Reference values of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
    }
}
