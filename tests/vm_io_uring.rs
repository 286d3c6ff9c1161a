//! Kernel truth for the README's io_uring section: the kernel's io threads
//! copy the flags of the task that creates them, at the moment it creates
//! them, as `/proc/<pid>/task/<tid>/stat` shows.
//!
//! - io-wq workers (`iou-wrk-<tid>`) of a submitting thread that holds an
//!   `IoFlusher` carry `PF_MEMALLOC_NOIO|PF_LOCAL_THROTTLE`; those of a
//!   thread that does not, carry neither. `IORING_OP_FSYNC` never completes
//!   inline, so it always reaches a worker.
//! - A worker keeps the flags it was created with, for life, and the last
//!   idle worker of an io-wq does not exit (an idle one was still there
//!   after 7 s, past `WORKER_IDLE_TIMEOUT`): a thread that submits once
//!   before it becomes an I/O flusher keeps a clear worker that serves its
//!   later blocking requests.
//! - The SQPOLL thread (`iou-sqp-<tid>`) copies the flags of the thread that
//!   calls `io_uring_setup()`.
//!
//! io_uring is driven through `tokio-uring` (a dev-dependency): its API is
//! safe, so this test needs no `unsafe` of its own.

mod common;

use common::*;
use reclaim_scope::IoFlusher;
use std::path::PathBuf;

fn flagged(f: u32) -> bool {
    f & IO_FLUSHER_BITS == IO_FLUSHER_BITS
}

fn clear(f: u32) -> bool {
    f & IO_FLUSHER_BITS == 0
}

/// This process's io threads named `{prefix}-{tid}`, with their flags.
fn io_threads(prefix: &str, tid: i32) -> Vec<(i32, u32)> {
    let pid = std::process::id();
    let name = format!("{prefix}-{tid}");
    threads(pid)
        .into_iter()
        .filter(|(_, comm)| *comm == name)
        .filter_map(|(t, _)| task_flags(pid as i32, t).map(|f| (t, f)))
        .collect()
}

fn describe(v: &[(i32, u32)]) -> String {
    let parts: Vec<String> = v
        .iter()
        .map(|(t, f)| format!("{t}: {}", describe_flags(*f)))
        .collect();
    format!("[{}]", parts.join(", "))
}

fn scratch_path(tag: &str) -> PathBuf {
    scratch_fs().join(format!("uring-{tag}-{}", gettid()))
}

/// A 64 KiB write and an fsync of a new file on ext4 through the ring.
async fn write_and_fsync(tag: &str) {
    let f = tokio_uring::fs::File::create(scratch_path(tag))
        .await
        .expect("create through io_uring");
    let (r, _) = f.write_at(vec![0x5a_u8; 65536], 0).submit().await;
    assert_eq!(r.expect("write through io_uring"), 65536);
    f.sync_all().await.expect("fsync through io_uring");
    f.close().await.expect("close through io_uring");
}

vm_test! {
    fn io_wq_workers_copy_the_flags_of_the_submitting_thread() {
        require_vm();
        for submitter_is_flusher in [true, false] {
            let (tid, workers) = on_fresh_thread(move || {
                let _g =
                    submitter_is_flusher.then(|| IoFlusher::try_enter().expect("IoFlusher in the VM"));
                let tid = gettid();
                let workers = tokio_uring::start(async move {
                    write_and_fsync("wq").await;
                    // Idle workers live 5 s: still there.
                    io_threads("iou-wrk", tid)
                });
                (tid, workers)
            });
            say(&format!(
                "submitter {tid} {}: io-wq workers {}",
                if submitter_is_flusher {
                    "holds an IoFlusher"
                } else {
                    "is clear"
                },
                describe(&workers)
            ));
            assert!(
                !workers.is_empty(),
                "no iou-wrk-{tid} after an IORING_OP_FSYNC"
            );
            for (w, f) in &workers {
                if submitter_is_flusher {
                    assert!(
                        flagged(*f),
                        "worker {w} of a flusher submitter: {}",
                        describe_flags(*f)
                    );
                } else {
                    assert!(
                        clear(*f),
                        "worker {w} of a clear submitter: {}",
                        describe_flags(*f)
                    );
                }
            }
        }
    }
}

vm_test! {
    fn io_wq_workers_keep_the_flags_they_were_created_with() {
        require_vm();
        on_fresh_thread(|| {
            let tid = gettid();
            tokio_uring::start(async move {
                // First submission while the thread is clear: clear workers.
                write_and_fsync("clear").await;
                let before = io_threads("iou-wrk", tid);
                assert!(!before.is_empty(), "no iou-wrk-{tid}");
                assert!(
                    before.iter().all(|(_, f)| clear(*f)),
                    "workers of a clear submitter: {}",
                    describe(&before)
                );
                // Past WORKER_IDLE_TIMEOUT (5 s) the last idle worker of the
                // io-wq does not exit.
                std::thread::sleep(std::time::Duration::from_secs(7));
                let idle = io_threads("iou-wrk", tid);
                say(&format!("after 7 s idle: {}", describe(&idle)));
                assert!(
                    before.iter().any(|w| idle.contains(w)),
                    "the last idle io-wq worker exited: {} then {}",
                    describe(&before),
                    describe(&idle)
                );
                // Now the submitter becomes a flusher; its io-wq still has the
                // clear worker, which takes the next blocking request.
                let _g = IoFlusher::try_enter().expect("IoFlusher in the VM");
                assert_thread_flagged("the submitter in its IoFlusher");
                write_and_fsync("flagged").await;
                let after = io_threads("iou-wrk", tid);
                say(&format!(
                    "after an fsync submitted in an IoFlusher: {}",
                    describe(&after)
                ));
                let old: Vec<(i32, u32)> = after
                    .iter()
                    .filter(|(t, _)| before.iter().any(|(b, _)| b == t))
                    .copied()
                    .collect();
                assert!(
                    !old.is_empty() && old.iter().all(|(_, f)| clear(*f)),
                    "a worker created before the IoFlusher stays clear for its life: {}",
                    describe(&after)
                );
            });
        });
    }
}

vm_test! {
    fn sqpoll_thread_copies_the_flags_of_the_thread_that_sets_up_the_ring() {
        require_vm();
        for creator_is_flusher in [true, false] {
            let (tid, sqp) = on_fresh_thread(move || {
                let _g =
                    creator_is_flusher.then(|| IoFlusher::try_enter().expect("IoFlusher in the VM"));
                let tid = gettid();
                let sqp = tokio_uring::builder()
                    .uring_builder(tokio_uring::uring_builder().setup_sqpoll(2000))
                    .start(async move {
                        // The SQ thread exists when io_uring_setup() returns, but
                        // names itself iou-sqp-<tid> only once it runs.
                        wait_until("the SQPOLL thread to name itself", 20, || {
                            !io_threads("iou-sqp", tid).is_empty()
                        });
                        let sqp = io_threads("iou-sqp", tid);
                        // The ring works through the SQ thread.
                        write_and_fsync("sqpoll").await;
                        sqp
                    });
                (tid, sqp)
            });
            say(&format!(
                "ring set up by {tid} ({}): SQPOLL thread {}",
                if creator_is_flusher {
                    "IoFlusher"
                } else {
                    "clear"
                },
                describe(&sqp)
            ));
            assert_eq!(sqp.len(), 1, "one iou-sqp-{tid}: {}", describe(&sqp));
            let f = sqp[0].1;
            if creator_is_flusher {
                assert!(flagged(f), "SQPOLL thread: {}", describe_flags(f));
            } else {
                assert!(clear(f), "SQPOLL thread: {}", describe_flags(f));
            }
        }
    }
}
