//! Helpers shared by the benches: the paired ratio, and the callgrind mode's
//! iteration count.
//!
//! Not a bench target of its own (Cargo only discovers `benches/*.rs` and
//! `benches/*/main.rs`); each bench includes it with `mod common;`.

#![allow(dead_code)] // each bench uses a part

use std::time::Instant;

/// Rounds of a paired ratio.
pub const ROUNDS: usize = 400;

/// Median over `ROUNDS` of (time of `per_round` × `b`) / (time of
/// `per_round` × `a`), the two blocks run back to back, which one goes first
/// alternating from round to round so that drift within a round cancels.
///
/// Robust to what makes criterion's medians noise under TCG and on a shared
/// machine: a slow phase of the host hits both blocks of a round alike.
pub fn paired_ratio(per_round: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> f64 {
    let mut ratios: Vec<f64> = (0..ROUNDS)
        .map(|round| {
            let time = |f: &mut dyn FnMut()| {
                let t = Instant::now();
                for _ in 0..per_round {
                    f();
                }
                t.elapsed().as_nanos() as f64
            };
            if round % 2 == 0 {
                let ta = time(&mut a);
                time(&mut b) / ta
            } else {
                let tb = time(&mut b);
                tb / time(&mut a)
            }
        })
        .collect();
    ratios.sort_by(|x, y| x.partial_cmp(y).unwrap());
    ratios[ROUNDS / 2]
}

/// Iterations of a callgrind run: `$<var>`, default 100 000.
pub fn callgrind_iters(var: &str) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}
