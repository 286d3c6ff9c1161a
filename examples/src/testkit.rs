//! Helpers for this package's tests (`examples/tests/`): root checks,
//! running a command, byte patterns, and the project's one seeded test RNG.

use std::fs;
use std::process::Command;

/// The project's seeded test generator, shared with the library's tests
/// (`tests/support/rng.rs`), so a seed printed by a failing test replays it.
// Its `next` is the generator's step, not an iterator's.
#[allow(clippy::should_implement_trait)]
#[path = "../../tests/support/rng.rs"]
pub mod rng;

/// Panics unless the tests run as root: they mount tmpfs/ramfs and attach
/// loop devices, and fail with the reason rather than pass as skipped.
pub fn require_root() {
    let root = fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    assert!(
        root,
        "these tests mount tmpfs/ramfs and attach loop devices: run them as root (the \
         project's test machines and CI are root)"
    );
}

/// Runs `prog` with `args`, panics unless it exits 0; its stdout, trimmed.
pub fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `len` pseudo-random bytes fixed by `seed` (xorshift64*): data whose
/// every block differs, so a misplaced block is noticed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}
