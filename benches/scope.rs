//! Cost of the scope guards, beside the syscalls they wrap, in one run.
//!
//! Run: `cargo bench --bench scope`.
//!
//! Where the process lacks CAP_SYS_RESOURCE (developer machines and CI here)
//! the kernel refuses the prctl, so:
//! - `outermost/*` makes the crate ask the kernel on every iteration
//!   (`forget_refusal`) and compares one refused enter + exit with one raw
//!   refused `prctl`: the crate's overhead around the syscall;
//! - `already_flagged` makes the crate believe the thread inherited the flag
//!   (`assume_thread_flag`): the exact path of a flagged thread, no syscall;
//! - `nested` runs under an effective outer guard: no syscall;
//! - `refused_best_effort` is a best-effort scope after a remembered
//!   refusal: no syscall, no protection.
//!
//! With the capability, `outermost/scope` is the real set + restore pair and
//! `outermost/raw` the raw pair.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use reclaim_scope::{__bench, set_thread_io_flusher, support, IoFlusher, NoFsScope};
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let available = support().is_available();
    eprintln!("support(): {}", support());

    let mut g = c.benchmark_group("outermost");
    if available {
        g.bench_function("raw_prctl_pair", |b| {
            b.iter(|| {
                set_thread_io_flusher(black_box(true)).unwrap();
                set_thread_io_flusher(black_box(false)).unwrap();
            })
        });
        g.bench_function("scope_enter_exit", |b| {
            b.iter(|| drop(black_box(NoFsScope::try_enter().unwrap())))
        });
    } else {
        g.bench_function("raw_prctl_refused", |b| {
            b.iter(|| black_box(set_thread_io_flusher(black_box(true))).is_err())
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
    g.bench_function("already_flagged_enter_exit", |b| {
        b.iter(|| drop(black_box(NoFsScope::enter())))
    });
    {
        let outer = IoFlusher::enter();
        assert!(outer.is_effective());
        g.bench_function("nested_enter_exit", |b| {
            b.iter(|| drop(black_box(NoFsScope::enter())))
        });
    }
    __bench::assume_thread_flag(false);
    if !available {
        // Best effort after a remembered refusal: what an unprivileged
        // daemon pays per scope (no syscall, no protection).
        g.bench_function("refused_best_effort_enter_exit", |b| {
            b.iter(|| drop(black_box(NoFsScope::enter())))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
