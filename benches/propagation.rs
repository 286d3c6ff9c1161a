//! Cost of propagation: the future wrapper per poll, and spawning through
//! `reclaim_scope::thread`.
//!
//! Run: `cargo bench --bench propagation --all-features`.
//!
//! Developer machines lack `CAP_SYS_RESOURCE`, so the prctl is refused and
//! the crate remembers the refusal. Two paths are measured per poll:
//!
//! - `flagged_worker`: the path of an I/O-flusher runtime worker — the
//!   thread is flagged and holds an `IoFlusher`, the wrapper asks for the
//!   same state, so entering and leaving is thread-local bookkeeping only.
//!   A flagged thread cannot be made here, so the crate's hidden bench hook
//!   `__bench::assume_thread_flag(true)` makes the crate *believe* the
//!   thread is flagged (exactly the state after inheriting the flag); no
//!   syscall is made on this path either way.
//! - `refused_host`: what this host really does — a clear thread whose
//!   every entry meets the remembered refusal.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use reclaim_scope::future::NoFsFutureExt;
use reclaim_scope::IoFlusher;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

struct Noop;
impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// A future that is never ready: each poll is one unit of work.
struct Spin(u64);
impl Future for Spin {
    type Output = ();
    #[inline]
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        self.0 = black_box(self.0.wrapping_add(1));
        Poll::Pending
    }
}

fn poll_loop<F: Future>(c: &mut Criterion, name: &str, fut: F) {
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    let mut fut = Box::pin(fut);
    c.bench_function(name, |b| {
        b.iter(|| black_box(fut.as_mut().poll(&mut cx)).is_pending())
    });
}

fn per_poll(c: &mut Criterion) {
    // Runs on criterion's (main) thread: set up the worker state once.
    poll_loop(c, "poll/bare", Spin(0));

    reclaim_scope::__bench::assume_thread_flag(true);
    let worker = IoFlusher::enter(); // the runtime hook's guard
    poll_loop(c, "poll/wrapped_flagged_worker", Spin(0).nofs());
    drop(worker);

    reclaim_scope::__bench::assume_thread_flag(false);
    let _ = reclaim_scope::NoFsScope::enter(); // meet and remember the refusal
    poll_loop(c, "poll/wrapped_refused_host", Spin(0).nofs());
}

fn spawn(c: &mut Criterion) {
    let mut g = c.benchmark_group("spawn_join");
    g.bench_function("std", |b| {
        b.iter(|| std::thread::spawn(|| black_box(1)).join().unwrap())
    });
    g.bench_function("reclaim_scope_clear_parent", |b| {
        b.iter(|| {
            reclaim_scope::thread::spawn(|| black_box(1))
                .join()
                .unwrap()
        })
    });
    reclaim_scope::__bench::assume_thread_flag(true);
    let flusher = IoFlusher::enter();
    g.bench_function("reclaim_scope_flusher_parent", |b| {
        b.iter(|| {
            reclaim_scope::thread::spawn(|| black_box(1))
                .join()
                .unwrap()
        })
    });
    drop(flusher);
    reclaim_scope::__bench::assume_thread_flag(false);
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(40);
    targets = per_poll, spawn
}
criterion_main!(benches);
