//! The one seeded generator of the project's tests (splitmix64): small,
//! reproducible from its seed, good enough to pick operations, lengths and
//! patterns. Included with `#[path]` by the tests that need it (and by the
//! library's own `fs` unit tests), so a seed printed by a failing test
//! replays it exactly.
//!
//! Not for anything but tests: it is not cryptographic.

#![allow(dead_code)] // each test uses the part it needs

/// splitmix64 (Steele, Lea, Flood 2014), as `java.util.SplittableRandom`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed` (any value, 0 too).
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// `RECLAIM_SCOPE_SEED` from the environment, else `default`: the
    /// generator and the seed it started from (print it on failure).
    pub fn from_env(default: u64) -> (Rng, u64) {
        let seed = std::env::var("RECLAIM_SCOPE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default);
        (Rng::new(seed), seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` (`0` for `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn a_seed_replays_its_sequence() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..8).map(|_| r.next()).collect()
        };
        let mut r = Rng::new(7);
        assert!(a.iter().all(|&v| v == r.next()));
        // splitmix64's published first output for seed 0.
        assert_eq!(Rng::new(0).next(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(Rng::new(1).below(0), 0);
    }
}
