//! Cost of the scope guards, beside the syscalls they wrap, in one run.
//!
//! Run: `cargo bench --features unstable-bench --bench scope` (host), or
//! `cargo xtask vm-bench` (inside the VM, with `CAP_SYS_RESOURCE`).
//!
//! With the capability:
//! - `outermost/scope_enter_exit` is the real set + restore pair of an
//!   outermost `NoFsScope::try_enter()` + drop, `outermost/raw_prctl_pair`
//!   two raw `prctl(PR_SET_IO_FLUSHER, 1/0)` calls
//!   (`__bench::raw_set_io_flusher`: the crate's syscall wrapper, nothing
//!   around it), and the bench prints the **paired ratio** of the two
//!   (alternating blocks, median of the per-round ratios):
//!   `paired ratio outermost scope / raw prctl pair: X.XXX`.
//!
//! Where the process lacks `CAP_SYS_RESOURCE` (developer machines and CI
//! here) the kernel refuses the prctl, so the paired ratio is not measured
//! (the bench says why) and:
//! - `outermost/*` makes the crate ask the kernel on every iteration
//!   (`forget_refusal`) and compares one refused enter + exit with one raw
//!   refused `prctl`: the crate's overhead around the syscall;
//! - `already_flagged` makes the crate believe the thread inherited the flag
//!   (`assume_thread_flag`): the exact path of a flagged thread, no syscall;
//! - `nested` runs under an effective outer guard: no syscall;
//! - `refused_best_effort` is a best-effort scope after a remembered
//!   refusal: no syscall, no protection.
//!
//! Instruction counts (user space; the kernel's work is the same on every
//! path): `SCOPE_BENCH_CALLGRIND=<path> SCOPE_BENCH_ITERS=<n> valgrind
//! --tool=callgrind --toggle-collect='*callgrind_loop*' <bench binary>
//! --bench` runs `n` iterations of one path and exits; the per-iteration
//! count is the difference of two runs (`n` and `n − 10000`) over 10 000, so
//! process start-up, the first-entry probe and the loop's set-up cancel.
//! Paths: `empty`, `raw_pair`, `outermost`, `nested`, `flagged`
//! (`raw_pair` and `outermost` need the capability; `flagged` is a thread
//! the kernel really flagged where the capability is there, else one the
//! crate is told is flagged). `cargo xtask vm-bench` runs all of them.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

mod common;

use common::{callgrind_iters, paired_ratio};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use reclaim_scope::{__bench, set_thread_io_flusher, support, IoFlusher, NoFsScope};
use std::time::Duration;

/// Scope pairs per block of the paired ratio: ≈ 0.4 ms native, a few ms
/// under TCG.
const PER_ROUND: usize = 500;

/// Two raw syscalls: set, then clear.
#[inline(always)]
fn raw_pair() {
    __bench::raw_set_io_flusher(black_box(true)).unwrap();
    __bench::raw_set_io_flusher(black_box(false)).unwrap();
}

#[inline(always)]
fn outermost() {
    drop(black_box(NoFsScope::try_enter().unwrap()))
}

#[inline(always)]
fn scope_no_syscall() {
    drop(black_box(NoFsScope::enter()))
}

#[inline(never)]
fn callgrind_loop_empty(iters: usize) {
    for i in 0..iters {
        black_box(i);
    }
}

#[inline(never)]
fn callgrind_loop_raw_pair(iters: usize) {
    for _ in 0..iters {
        raw_pair();
    }
}

#[inline(never)]
fn callgrind_loop_outermost(iters: usize) {
    for _ in 0..iters {
        outermost();
    }
}

/// Nested and already-flagged scopes are the same code; two names so the
/// two runs' per-function counts stay apart.
#[inline(never)]
fn callgrind_loop_nested(iters: usize) {
    for _ in 0..iters {
        scope_no_syscall();
    }
}

#[inline(never)]
fn callgrind_loop_flagged(iters: usize) {
    for _ in 0..iters {
        scope_no_syscall();
    }
}

/// The callgrind mode: one path, `SCOPE_BENCH_ITERS` times, then exit.
fn callgrind(path: &str) {
    let iters = callgrind_iters("SCOPE_BENCH_ITERS");
    let available = support().is_available();
    if matches!(path, "raw_pair" | "outermost") && !available {
        eprintln!(
            "SCOPE_BENCH_CALLGRIND={path} needs CAP_SYS_RESOURCE (support(): {}); \
             run it in the VM: cargo xtask vm-bench",
            support()
        );
        std::process::exit(2);
    }
    match path {
        "empty" => callgrind_loop_empty(iters),
        "raw_pair" => callgrind_loop_raw_pair(iters),
        "outermost" => callgrind_loop_outermost(iters),
        "nested" => {
            if !available {
                __bench::assume_thread_flag(true);
            }
            let outer = IoFlusher::enter();
            assert!(outer.is_effective());
            callgrind_loop_nested(iters);
            drop(outer);
        }
        "flagged" => {
            if available {
                set_thread_io_flusher(true).unwrap();
            } else {
                __bench::assume_thread_flag(true);
            }
            callgrind_loop_flagged(iters);
        }
        other => panic!("unknown SCOPE_BENCH_CALLGRIND path {other:?}"),
    }
    std::process::exit(0);
}

fn bench(c: &mut Criterion) {
    if let Ok(path) = std::env::var("SCOPE_BENCH_CALLGRIND") {
        return callgrind(&path);
    }
    let available = support().is_available();
    eprintln!("support(): {}", support());

    let mut g = c.benchmark_group("outermost");
    if available {
        g.bench_function("raw_prctl_pair", |b| b.iter(raw_pair));
        g.bench_function("scope_enter_exit", |b| b.iter(outermost));
    } else {
        g.bench_function("raw_prctl_refused", |b| {
            b.iter(|| black_box(__bench::raw_set_io_flusher(black_box(true))).is_err())
        });
        g.bench_function("scope_enter_exit_refused", |b| {
            b.iter(|| {
                __bench::forget_refusal();
                drop(black_box(NoFsScope::enter()))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("no_syscall");
    g.bench_function("baseline_empty", |b| b.iter(|| black_box(0u32)));
    // The thread is flagged as if inherited (or set by an outer guard that
    // took effect): the paths every scope of a flagged daemon takes.
    __bench::assume_thread_flag(true);
    g.bench_function("already_flagged_enter_exit", |b| b.iter(scope_no_syscall));
    {
        let outer = IoFlusher::enter();
        assert!(outer.is_effective());
        g.bench_function("nested_enter_exit", |b| b.iter(scope_no_syscall));
    }
    __bench::assume_thread_flag(false);
    if !available {
        // Best effort after a remembered refusal: what an unprivileged
        // daemon pays per scope (no syscall, no protection).
        g.bench_function("refused_best_effort_enter_exit", |b| {
            b.iter(scope_no_syscall)
        });
    }
    g.finish();

    if available {
        let r = paired_ratio(PER_ROUND, raw_pair, outermost);
        println!(
            "outermost NoFsScope::try_enter() + drop against two raw prctl(PR_SET_IO_FLUSHER) \
             calls: {PER_ROUND} pairs per block, median of {} rounds",
            common::ROUNDS
        );
        println!("paired ratio outermost scope / raw prctl pair: {r:.3}");
    } else {
        println!(
            "paired ratio outermost scope / raw prctl pair: not measured: the kernel refuses \
             PR_SET_IO_FLUSHER here ({}); run `cargo xtask vm-bench`",
            support()
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
