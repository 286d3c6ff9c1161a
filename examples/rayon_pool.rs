//! A rayon pool whose every thread is an I/O flusher, and per-job context
//! with `AllocContext::wrap` — with each claim read back from `/proc`.
//!
//! ```sh
//! cargo run --example rayon_pool            # here: EPERM, every thread clear
//! cargo xtask vm-run -- rayon_pool --require  # in the VM: every line flagged
//! ```
//!
//! Rayon creates its threads itself, so a flag set in `main()` after the
//! pool exists never reaches them, and one set before reaches them only by
//! the accident of inheritance. `start_handler` runs on each pool thread
//! before it takes work: enter an `IoFlusher` there and keep it in a
//! thread-local until `exit_handler` (guards are `!Send` and must be
//! dropped on their own thread, in nesting order — the exit handler runs
//! after the thread's last job).
//!
//! Exit status 1 with `--require` if any observation differs from the
//! expectation or the flag cannot take effect (used by the kernel-truth
//! suite), 2 for an unknown argument, else 0.

use rayon::ThreadPoolBuilder;
use reclaim_scope::{proc::ThreadFlags, AllocContext, IoFlusher, NoFsScope};
use std::cell::RefCell;
use std::process::ExitCode;

/// A rayon pool of I/O flushers and per-job context, each claim read back
/// from /proc.
#[derive(clap::Parser)]
#[command(name = "rayon_pool")]
struct Args {
    /// Exit with status 1 unless every observation matches and the flag
    /// takes effect here (the kernel-truth suite's mode).
    #[arg(long)]
    require: bool,
}

thread_local! {
    static POOL_THREAD_FLUSHER: RefCell<Option<IoFlusher>> = const { RefCell::new(None) };
}

fn flagged() -> bool {
    ThreadFlags::current().is_ok_and(|f| f.is_io_flusher())
}

fn main() -> ExitCode {
    let require = <Args as clap::Parser>::parse().require;
    let effective = reclaim_scope::support().is_available();
    println!("support: {}", reclaim_scope::support());

    // 1. A pool of I/O flushers, for the daemon's I/O path.
    let flushers = ThreadPoolBuilder::new()
        .num_threads(2)
        .thread_name(|i| format!("flusher-{i}"))
        .start_handler(|_| {
            POOL_THREAD_FLUSHER.with(|s| *s.borrow_mut() = Some(IoFlusher::enter()));
        })
        .exit_handler(|_| {
            let guard = POOL_THREAD_FLUSHER.with(|s| s.borrow_mut().take());
            drop(guard);
        })
        .build()
        .expect("build the flusher pool");
    let every_thread: Vec<bool> = flushers.broadcast(|_| flagged());
    println!("flusher pool, every thread flagged: {every_thread:?}");

    // 2. A plain pool (clear threads) and per-job context: jobs created in a
    //    scope run in it on the pool thread, and the thread is clear after.
    let plain = ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("build the plain pool");
    let job = {
        let _scope = NoFsScope::enter();
        AllocContext::current().wrap(flagged)
    };
    let in_job = plain.install(job);
    let after: Vec<bool> = plain.broadcast(|_| flagged());
    println!("plain pool, wrapped job flagged: {in_job}; threads after: {after:?}");

    // 3. Background work on the flusher pool that must not be an I/O
    //    flusher (it may use full reclaim): the clear context.
    let cleared = flushers.install(AllocContext::clear().wrap(flagged));
    let back: Vec<bool> = flushers.broadcast(|_| flagged());
    println!("flusher pool, clear job flagged: {cleared}; threads after: {back:?}");

    let ok = every_thread.iter().all(|&f| f == effective)
        && in_job == effective
        && after.iter().all(|&f| !f)
        && !cleared
        && back.iter().all(|&f| f == effective);
    println!(
        "{}",
        if ok && effective {
            "as expected: every I/O-flusher thread flagged, every other clear"
        } else if ok {
            "as expected without the capability: every thread clear"
        } else {
            "UNEXPECTED kernel state"
        }
    );
    if require && !(ok && effective) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
