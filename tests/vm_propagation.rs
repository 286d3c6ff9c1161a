//! Kernel truth for propagation: threads, pools, futures and tokio tasks
//! carry the reclaim context, as `/proc/<pid>/task/<tid>/stat` flags show —
//! inside the work, between polls and after it.
//!
//! Run in the VM (PID 1 has CAP_SYS_RESOURCE): `cargo xtask vm-test`.
//! On a host these tests are ignored; run with `--include-ignored` there and
//! they fail loudly (`require_vm`).

mod common;

use common::{describe_flags, on_fresh_thread, require_vm, task_flags, thread_flags, vm_test};
use reclaim_scope::future::NoFsFutureExt;
use reclaim_scope::{thread, AllocContext, AllowFsReclaim, IoFlusher, NoFsScope};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::Arc;
use std::task::{Poll, Wake, Waker};

const BITS: u32 = common::IO_FLUSHER_BITS;

fn flagged(f: u32) -> bool {
    f & BITS == BITS
}
fn clear(f: u32) -> bool {
    f & BITS == 0
}
#[track_caller]
fn assert_flagged(f: u32, what: &str) {
    assert!(
        flagged(f),
        "{what}: expected flagged, kernel says {}",
        describe_flags(f)
    );
}
#[track_caller]
fn assert_clear(f: u32, what: &str) {
    assert!(
        clear(f),
        "{what}: expected clear, kernel says {}",
        describe_flags(f)
    );
}

fn pid() -> i32 {
    std::process::id() as i32
}

/// Flags of a live thread, read from outside it.
#[track_caller]
fn flags_of(tid: i32) -> u32 {
    task_flags(pid(), tid).unwrap_or_else(|| panic!("thread {tid} is gone"))
}

/// Sends the thread's flags when its thread-locals are destroyed: after the
/// spawned closure (and the crate's guard around it) has returned.
struct AfterWork(Option<mpsc::Sender<u32>>);
impl Drop for AfterWork {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(thread_flags());
        }
    }
}
thread_local! {
    static AFTER: RefCell<AfterWork> = const { RefCell::new(AfterWork(None)) };
}
fn report_after_work(tx: mpsc::Sender<u32>) {
    AFTER.with(|a| a.borrow_mut().0 = Some(tx));
}

/// (flags inside the closure, flags after it) of a thread spawned by `spawn`.
fn inside_and_after(spawn: impl FnOnce(Box<dyn FnOnce() -> u32 + Send>) -> u32) -> (u32, u32) {
    let (tx, rx) = mpsc::channel();
    let inside = spawn(Box::new(move || {
        report_after_work(tx);
        thread_flags()
    }));
    (inside, rx.recv().expect("after-work report"))
}

vm_test! {
    fn spawn_in_scope_is_flagged_outside_is_clear() {
        require_vm();
        on_fresh_thread(|| {
            assert_clear(thread_flags(), "fresh test thread");
            let scope = NoFsScope::try_enter().expect("the VM has CAP_SYS_RESOURCE");
            let (inside, after) = inside_and_after(|f| thread::spawn(f).join().unwrap());
            assert_flagged(inside, "child spawned in a scope, inside its closure");
            // clone() copied the flag; the child's guard restores that.
            assert_flagged(after, "child spawned in a scope, after its closure");
            drop(scope);
            assert_clear(thread_flags(), "parent after its scope");
            let (inside, after) = inside_and_after(|f| thread::spawn(f).join().unwrap());
            assert_clear(inside, "child spawned outside a scope");
            assert_clear(after, "child spawned outside a scope, after");
        });
    }
}

vm_test! {
    fn inherited_flag_is_cleared_for_the_child_but_std_spawn_keeps_it() {
        require_vm();
        on_fresh_thread(|| {
            // A thread flagged outside any guard (as by a launcher, or by
            // inheritance): the crate's context is clear.
            reclaim_scope::set_thread_io_flusher(true).unwrap();
            assert_flagged(thread_flags(), "raw-flagged parent");
            let (inside, after) = inside_and_after(|f| thread::spawn(f).join().unwrap());
            assert_clear(inside, "crate-spawned child of an inherited flag");
            assert_flagged(
                after,
                "the child's inherited flag, restored after the closure",
            );
            // The hazard the crate documents: std spawn keeps the accident.
            let std_child = std::thread::spawn(thread_flags).join().unwrap();
            assert_flagged(std_child, "std-spawned child of a flagged thread");
            reclaim_scope::set_thread_io_flusher(false).unwrap();
            assert_clear(thread_flags(), "parent after the raw clear");
        });
    }
}

vm_test! {
    fn std_spawn_inside_a_scope_stays_flagged_for_life() {
        require_vm();
        on_fresh_thread(|| {
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let child = {
                let _s = NoFsScope::try_enter().unwrap();
                std::thread::spawn(move || {
                    go_rx.recv().unwrap(); // wait until the parent's scope is over
                    thread_flags()
                })
            };
            assert_clear(thread_flags(), "parent after its scope");
            go_tx.send(()).unwrap();
            assert_flagged(
                child.join().unwrap(),
                "std child after the parent's scope ended",
            );
        });
    }
}

vm_test! {
    fn builder_name_stack_and_explicit_context() {
        require_vm();
        on_fresh_thread(|| {
            let (inside, after) = inside_and_after(|f| {
                thread::Builder::new()
                    .name("vm-flusher".into())
                    .stack_size(256 * 1024)
                    .context(AllocContext::io_flusher())
                    .spawn(move || {
                        assert_eq!(std::thread::current().name(), Some("vm-flusher"));
                        f()
                    })
                    .unwrap()
                    .join()
                    .unwrap()
            });
            assert_flagged(inside, "Builder::context(io_flusher) from a clear parent");
            assert_clear(after, "that child after its closure");
            assert_clear(thread_flags(), "the clear parent");
        });
    }
}

vm_test! {
    fn scoped_threads() {
        require_vm();
        on_fresh_thread(|| {
            let _worker = IoFlusher::try_enter().unwrap();
            let mut seen = Vec::new();
            thread::scope(|s| {
                let a = s.spawn(thread_flags);
                let nested = {
                    let s = *s;
                    s.spawn(move || s.spawn(thread_flags).join().unwrap())
                };
                let clear_child = {
                    let _c = AllowFsReclaim::try_enter().unwrap();
                    s.spawn(thread_flags)
                };
                seen.push(("scoped child", a.join().unwrap(), true));
                seen.push(("nested scoped child", nested.join().unwrap(), true));
                seen.push((
                    "child spawned in AllowFsReclaim",
                    clear_child.join().unwrap(),
                    false,
                ));
            });
            for (what, f, want) in seen {
                if want {
                    assert_flagged(f, what)
                } else {
                    assert_clear(f, what)
                }
            }
            assert_flagged(thread_flags(), "parent still in its IoFlusher");
        });
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A pool thread made before any flag existed, taking boxed jobs.
fn plain_pool_thread() -> (mpsc::Sender<Job>, i32, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Job>();
    let (tid_tx, tid_rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        tid_tx.send(common::gettid()).unwrap();
        for job in rx {
            job();
        }
    });
    (tx, tid_rx.recv().unwrap(), h)
}

vm_test! {
    fn context_run_on_an_existing_pool_thread() {
        require_vm();
        on_fresh_thread(|| {
            let (jobs, tid, h) = plain_pool_thread();
            let (tx, rx) = mpsc::channel();
            let job = {
                let _s = NoFsScope::try_enter().unwrap();
                let tx = tx.clone();
                AllocContext::current().wrap(move || tx.send(thread_flags()).unwrap())
            };
            jobs.send(Box::new(job)).unwrap();
            assert_flagged(rx.recv().unwrap(), "wrapped job on a plain pool thread");
            // Synchronise with the pool thread, then look at it from outside.
            let tx2 = tx.clone();
            jobs.send(Box::new(move || tx2.send(0).unwrap())).unwrap();
            rx.recv().unwrap();
            assert_clear(flags_of(tid), "pool thread after the job");
            // AllocContext::run directly, and the clear context on a flagged thread.
            let ctx = AllocContext::io_flusher();
            jobs.send(Box::new(move || {
                let _worker = IoFlusher::enter();
                let inner = AllocContext::clear().run(thread_flags);
                let outer = ctx.run(thread_flags);
                tx.send(inner).unwrap();
                tx.send(outer).unwrap();
            }))
            .unwrap();
            assert_clear(rx.recv().unwrap(), "AllocContext::clear().run on a flusher");
            assert_flagged(rx.recv().unwrap(), "AllocContext::io_flusher().run");
            drop(jobs);
            h.join().unwrap();
        });
    }
}

vm_test! {
    fn rayon_start_handler_and_wrapped_jobs() {
        require_vm();
        thread_local! {
            static HELD: RefCell<Option<IoFlusher>> = const { RefCell::new(None) };
        }
        on_fresh_thread(|| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .start_handler(|_| HELD.with(|h| *h.borrow_mut() = Some(IoFlusher::enter())))
                .exit_handler(|_| drop(HELD.with(|h| h.borrow_mut().take())))
                .build()
                .unwrap();
            let every: Vec<(i32, u32)> = pool.broadcast(|_| (common::gettid(), thread_flags()));
            assert_eq!(every.len(), 2);
            for &(tid, f) in &every {
                assert_flagged(f, &format!("rayon pool thread {tid}"));
            }
            let cleared = pool.install(AllocContext::clear().wrap(thread_flags));
            assert_clear(cleared, "clear job on the flusher pool");
            for (tid, _) in every {
                assert_flagged(flags_of(tid), "rayon thread after the clear job");
            }
            assert_clear(thread_flags(), "the thread that built the pool");
            // And through the example program, as a user would run it.
            let exe = std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("rayon_pool"))
                    .find(|p| p.exists())
            });
            let exe = exe.expect("the rayon_pool example on the guest PATH (/opt/bin)");
            let out = std::process::Command::new(exe)
                .arg("--require")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "examples/rayon_pool --require: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        });
    }
}

// ---------------------------------------------------------------------------
// Futures
// ---------------------------------------------------------------------------

struct Noop;
impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// Pending `left` times; records the kernel flags at every poll and when
/// dropped.
struct Probe {
    left: u32,
    log: mpsc::Sender<(&'static str, u32)>,
}
impl Future for Probe {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        self.log.send(("poll", thread_flags())).unwrap();
        if self.left == 0 {
            return Poll::Ready(());
        }
        self.left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
impl Drop for Probe {
    fn drop(&mut self) {
        self.log.send(("drop", thread_flags())).unwrap();
    }
}

vm_test! {
    fn future_flagged_in_every_poll_clear_between() {
        require_vm();
        on_fresh_thread(|| {
            let (tx, rx) = mpsc::channel();
            let waker = Waker::from(Arc::new(Noop));
            let mut cx = std::task::Context::from_waker(&waker);
            let mut fut = Box::pin(Probe { left: 4, log: tx }.nofs());
            let mut polls = 0;
            while fut.as_mut().poll(&mut cx).is_pending() {
                polls += 1;
                assert_clear(
                    thread_flags(),
                    &format!("the polling thread after poll {polls}"),
                );
            }
            assert_eq!(polls, 4);
            assert_clear(thread_flags(), "after Ready");
            drop(fut);
            let log: Vec<_> = rx.iter().collect();
            assert_eq!(log.len(), 6, "{log:?}");
            for (i, (what, f)) in log.into_iter().enumerate() {
                assert_flagged(f, &format!("{what} #{i}"));
            }
            assert_clear(thread_flags(), "after the drop");
        });
    }
}

vm_test! {
    fn future_dropped_midway_is_dropped_flagged() {
        require_vm();
        on_fresh_thread(|| {
            let (tx, rx) = mpsc::channel();
            let waker = Waker::from(Arc::new(Noop));
            let mut cx = std::task::Context::from_waker(&waker);
            let mut fut = Box::pin(Probe { left: 100, log: tx }.nofs());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            assert_clear(thread_flags(), "between polls");
            drop(fut);
            let log: Vec<_> = rx.iter().collect();
            assert_eq!(log.last().map(|l| l.0), Some("drop"));
            assert_flagged(log.last().unwrap().1, "inner future's destructor");
            assert_clear(thread_flags(), "after the drop");
            // The other direction: a future that must run clear, on a flusher.
            let _worker = IoFlusher::try_enter().unwrap();
            let (tx, rx) = mpsc::channel();
            let mut fut = Box::pin(Probe { left: 1, log: tx }.allow_fs_reclaim());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            assert_flagged(thread_flags(), "flusher between polls");
            drop(fut);
            assert!(rx.iter().all(|(_, f)| clear(f)));
        });
    }
}

// ---------------------------------------------------------------------------
// Tokio (the `tokio` feature)
// ---------------------------------------------------------------------------

#[cfg(feature = "tokio")]
mod with_tokio {
    use super::*;
    use std::time::Duration;

    /// Thread ids of this process whose `comm` starts with `prefix`.
    fn threads_named(prefix: &str) -> Vec<i32> {
        let mut v = Vec::new();
        for e in std::fs::read_dir("/proc/self/task").unwrap() {
            let e = e.unwrap();
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if comm.trim_end().starts_with(prefix) {
                v.push(e.file_name().to_string_lossy().parse().unwrap());
            }
        }
        v
    }

    vm_test! {
        fn tokio_io_flusher_runtime_every_thread_and_task() {
            require_vm();
            on_fresh_thread(|| {
                let rt = reclaim_scope::tokio::io_flusher_threads(
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .thread_name("rs-flush-rt"),
                )
                .build()
                .unwrap();
                let (tasks, blocking) = rt.block_on(async {
                    let mut hs = Vec::new();
                    for _ in 0..8 {
                        hs.push(tokio::spawn(async {
                            let a = thread_flags();
                            tokio::task::yield_now().await;
                            (a, thread_flags())
                        }));
                    }
                    let mut v = Vec::new();
                    for h in hs {
                        v.push(h.await.unwrap());
                    }
                    let b = tokio::task::spawn_blocking(thread_flags).await.unwrap();
                    (v, b)
                });
                for (a, b) in tasks {
                    assert_flagged(a, "task on a flusher runtime, first poll");
                    assert_flagged(b, "task on a flusher runtime, after a yield");
                }
                assert_flagged(blocking, "spawn_blocking on a flusher runtime");
                let tids = threads_named("rs-flush-rt");
                assert!(tids.len() >= 3, "workers + blocking thread: {tids:?}");
                for tid in tids {
                    assert_flagged(flags_of(tid), &format!("runtime thread {tid}, idle"));
                }
                assert_clear(thread_flags(), "the thread that built the runtime");
                drop(rt);
            });
        }
    }

    /// Runs a `spawn_blocking` job created inside a scope on `rt` (whose pool
    /// has no idle thread yet, so the call creates one); returns the flags in
    /// the job and the flags of its pool thread after it, read from outside.
    fn blocking_job_from_a_scope(rt: &tokio::runtime::Runtime) -> (u32, u32) {
        let (inside, tid) = rt.block_on(async {
            let h = {
                let _s = NoFsScope::try_enter().unwrap();
                reclaim_scope::tokio::spawn_blocking(|| (thread_flags(), common::gettid()))
            };
            h.await.unwrap()
        });
        // The blocking thread idles in the pool (keep-alive): read it.
        (inside, flags_of(tid))
    }

    vm_test! {
        fn tokio_spawn_blocking_carries_context_and_clear_threads_pins_the_pool() {
            require_vm();
            on_fresh_thread(|| {
                let rt = reclaim_scope::tokio::clear_threads(
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .thread_name("rs-clear-rt"),
                )
                .build()
                .unwrap();
                let (inside, after) = blocking_job_from_a_scope(&rt);
                assert_flagged(inside, "spawn_blocking job spawned in a scope");
                assert_clear(after, "clear_threads blocking thread after the job");
                let plain =
                    rt.block_on(async { tokio::task::spawn_blocking(thread_flags).await.unwrap() });
                assert_clear(plain, "a plain spawn_blocking job afterwards");
                // Built inside an IoFlusher, a clear_threads runtime is still clear.
                let rt = {
                    let _f = IoFlusher::try_enter().unwrap();
                    reclaim_scope::tokio::clear_threads(
                        tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(2)
                            .thread_name("rs-clear2-rt"),
                    )
                    .build()
                    .unwrap()
                };
                let in_task =
                    rt.block_on(async { tokio::spawn(async { thread_flags() }).await.unwrap() });
                assert_clear(
                    in_task,
                    "task on a clear_threads runtime built by a flusher",
                );
                // Workers name themselves when they start: wait (bounded) for both.
                let mut tids = threads_named("rs-clear2-rt");
                for _ in 0..500 {
                    if tids.len() >= 2 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    tids = threads_named("rs-clear2-rt");
                }
                assert!(tids.len() >= 2, "workers never started: {tids:?}");
                // A worker has its name from clone(), i.e. before tokio runs its
                // on_thread_start hook, which is where clear_threads clears the flag
                // the worker inherited from this flusher: sampled in that window it
                // still shows it. What must hold is that every worker is clear once
                // started (tasks, checked above, only ever run after the hook).
                for tid in tids {
                    let mut flags = flags_of(tid);
                    for _ in 0..500 {
                        if clear(flags) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                        flags = flags_of(tid);
                    }
                    assert_clear(
                        flags,
                        "clear_threads worker built by a flusher, once started",
                    );
                }
            });
        }
    }

    vm_test! {
        fn tokio_without_thread_policy_a_lazily_created_thread_inherits_the_flag() {
            require_vm();
            on_fresh_thread(|| {
                // The hazard `clear_threads` exists for: tokio creates the blocking
                // thread from the thread that calls spawn_blocking, inside the scope.
                // Look at a job that landed on a thread this call created (a fresh
                // runtime has none idle; retried in case tokio reused one).
                let all_tids = || -> Vec<i32> {
                    std::fs::read_dir("/proc/self/task")
                        .unwrap()
                        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
                        .collect()
                };
                let mut newborn = None;
                for _ in 0..5 {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .build()
                        .unwrap();
                    let before = all_tids();
                    let (inside, tid) = rt.block_on(async {
                        let h = {
                            let _s = NoFsScope::try_enter().unwrap();
                            reclaim_scope::tokio::spawn_blocking(|| (thread_flags(), common::gettid()))
                        };
                        h.await.unwrap()
                    });
                    assert_flagged(inside, "spawn_blocking job spawned in a scope");
                    if !before.contains(&tid) {
                        newborn = Some(flags_of(tid));
                        break;
                    }
                }
                let after = newborn.expect("tokio never created a blocking thread for the job");
                assert_flagged(
                    after,
                    "policy-less blocking thread, born in a scope, after the job",
                );
            });
        }
    }

    vm_test! {
        fn tokio_task_migrating_between_workers_is_flagged_on_every_poll() {
            require_vm();
            on_fresh_thread(|| {
                let rt = reclaim_scope::tokio::clear_threads(
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .thread_name("rs-migrate-rt"),
                )
                .build()
                .unwrap();
                let (polls, hogs) = rt.block_on(async {
                    let task = {
                        let _s = NoFsScope::try_enter().unwrap();
                        reclaim_scope::tokio::spawn(async {
                            let mut polls = Vec::new();
                            let mut hogs = Vec::new();
                            for _ in 0..12 {
                                polls.push((common::gettid(), thread_flags()));
                                // Occupy this worker with a plain task (it lands in
                                // this worker's LIFO slot and records the worker's
                                // own state), and be woken from the blocking pool,
                                // so the other worker picks this task up.
                                hogs.push(tokio::spawn(async {
                                    let f = (common::gettid(), thread_flags());
                                    std::thread::sleep(Duration::from_millis(30));
                                    f
                                }));
                                tokio::task::spawn_blocking(|| ()).await.unwrap();
                            }
                            polls.push((common::gettid(), thread_flags()));
                            (polls, hogs)
                        })
                    };
                    let (polls, hogs) = task.await.unwrap();
                    let mut seen = Vec::new();
                    for h in hogs {
                        seen.push(h.await.unwrap());
                    }
                    (polls, seen)
                });
                for (i, &(tid, f)) in polls.iter().enumerate() {
                    assert_flagged(f, &format!("poll {i} of the wrapped task, on worker {tid}"));
                }
                for &(tid, f) in &hogs {
                    assert_clear(
                        f,
                        &format!("plain task between the wrapped task's polls, worker {tid}"),
                    );
                }
                let mut workers: Vec<i32> = polls.iter().map(|p| p.0).collect();
                workers.sort_unstable();
                workers.dedup();
                println!("wrapped task polled on workers {workers:?}");
                assert!(
                    workers.len() >= 2,
                    "the task never migrated ({workers:?}): the test did not test migration"
                );
                for tid in threads_named("rs-migrate-rt") {
                    assert_clear(flags_of(tid), &format!("worker {tid} after the task"));
                }
            });
        }
    }
}
