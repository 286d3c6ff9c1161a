use super::build::{audit_with, judge, word_of, PF_IO_WORKER};
use super::*;
use crate::proc::ThreadInfo;
use crate::scope::tests::on_fake;
use crate::sys::fake::{self, FakeThread, Mode};
use crate::{
    proc::{current_tid, ThreadFlags},
    set_thread_io_flusher, AllowFsReclaim, IoFlusher, NoFsScope,
};
use std::collections::HashMap;
use std::io;

/// Audits the calling (fake-kernel) thread alone.
fn audit_me() -> Verdict {
    let tid = current_tid();
    let me = || ThreadFlags::from_bits(fake::state().unwrap().flags);
    let info = ThreadInfo {
        tid,
        name: "fake".into(),
        flags: me(),
    };
    let a = audit_with(1, || Ok(vec![info]), |_| Ok(me())).unwrap();
    assert_eq!(a.threads().len(), 1);
    a.verdict(tid).unwrap()
}

#[test]
fn io_uring_workers_are_judged_by_the_guards_of_the_thread_they_work_for() {
    use crate::sys::{PF_LOCAL_THROTTLE, PF_MEMALLOC_NOIO};
    on_fake(FakeThread::new(Mode::Permitted), || {
        let tid = current_tid();
        let me = || ThreadFlags::from_bits(fake::state().unwrap().flags);
        let flagged = ThreadFlags::from_bits(PF_IO_WORKER | PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE);
        let clear = ThreadFlags::from_bits(PF_IO_WORKER);
        let row = |tid: i32, name: &str, flags| ThreadInfo {
            tid,
            name: name.to_owned(),
            flags,
        };
        let run = |threads: Vec<ThreadInfo>| {
            let by_tid: HashMap<i32, ThreadFlags> =
                threads.iter().map(|t| (t.tid, t.flags)).collect();
            audit_with(
                1,
                || Ok(threads),
                |t| Ok(if t == tid { me() } else { by_tid[&t] }),
            )
            .unwrap()
        };
        let wrk = format!("iou-wrk-{tid}");
        let sqp = format!("iou-sqp-{tid}");
        let guard = IoFlusher::try_enter().unwrap();
        let a = run(vec![
            row(tid, "fake", me()),
            row(tid + 1, &wrk, flagged),
            row(tid + 2, &wrk, clear),
            row(tid + 3, &sqp, flagged),
            // Not io_uring's (no PF_IO_WORKER): judged as any thread.
            row(tid + 4, &wrk, ThreadFlags::from_bits(PF_MEMALLOC_NOIO)),
            // Works for a thread that holds no guard.
            row(tid + 5, "iou-wrk-999999", flagged),
        ]);
        assert_eq!(a.verdict(tid), Some(Verdict::Flusher));
        assert_eq!(a.verdict(tid + 1), Some(Verdict::Flusher));
        assert_eq!(
            a.verdict(tid + 2),
            Some(Verdict::Missing),
            "created before the guard"
        );
        assert_eq!(a.verdict(tid + 3), Some(Verdict::Flusher));
        assert_eq!(a.verdict(tid + 4), Some(Verdict::Unaccounted));
        assert_eq!(a.verdict(tid + 5), Some(Verdict::Unaccounted));
        drop(guard);
        let a = run(vec![row(tid + 1, &wrk, flagged), row(tid + 2, &wrk, clear)]);
        assert_eq!(
            a.verdict(tid + 1),
            Some(Verdict::Unaccounted),
            "outlived the guard"
        );
        assert_eq!(a.verdict(tid + 2), Some(Verdict::Clear));
    });
}

#[test]
fn flusher_is_accounted_and_raw_clear_is_missing() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        assert_eq!(audit_me(), Verdict::Clear);
        let f = IoFlusher::try_enter().unwrap();
        assert_eq!(audit_me(), Verdict::Flusher);
        set_thread_io_flusher(false).unwrap();
        assert_eq!(audit_me(), Verdict::Missing);
        set_thread_io_flusher(true).unwrap();
        assert_eq!(audit_me(), Verdict::Flusher);
        drop(f);
        assert_eq!(
            fake::state().unwrap().flags & crate::sys::PF_MEMALLOC_NOIO,
            0
        );
        assert_eq!(audit_me(), Verdict::Clear);
    });
}

#[test]
fn allow_fs_reclaim_inside_a_flusher_is_not_missing() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        let _f = IoFlusher::try_enter().unwrap();
        {
            let _c = AllowFsReclaim::try_enter().unwrap();
            assert_eq!(audit_me(), Verdict::Clear);
            let _n = NoFsScope::try_enter().unwrap();
            assert_eq!(audit_me(), Verdict::Flusher);
        }
        assert_eq!(audit_me(), Verdict::Flusher);
    });
}

#[test]
fn nofs_scope_that_set_the_flag_accounts_for_it() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        {
            let _s = NoFsScope::try_enter().unwrap();
            assert_eq!(audit_me(), Verdict::InScope);
            // A nested IoFlusher does not take effect: no registration.
            let _f = IoFlusher::try_enter().unwrap();
            assert_eq!(audit_me(), Verdict::InScope);
        }
        assert_eq!(audit_me(), Verdict::Clear);
    });
}

#[test]
fn inherited_flag_is_unaccounted_until_a_flusher_claims_it() {
    on_fake(FakeThread::flagged(Mode::NotPermitted), || {
        assert_eq!(audit_me(), Verdict::Unaccounted);
        {
            // No syscall: the scope does not account for an inherited flag.
            let _s = NoFsScope::enter();
            assert_eq!(audit_me(), Verdict::Unaccounted);
        }
        {
            let _f = IoFlusher::enter();
            assert_eq!(audit_me(), Verdict::Flusher);
            let _g = IoFlusher::enter(); // nested
            assert_eq!(audit_me(), Verdict::Flusher);
        }
        assert_eq!(audit_me(), Verdict::Unaccounted);
    });
    on_fake(FakeThread::flagged(Mode::Permitted), || {
        {
            let _f = IoFlusher::try_enter().unwrap();
            let _c = AllowFsReclaim::try_enter().unwrap();
            assert_eq!(audit_me(), Verdict::Clear);
        }
        // The flusher ended: nothing accounts for the inherited flag.
        assert_eq!(audit_me(), Verdict::Unaccounted);
    });
}

#[test]
fn refused_flusher_registers_nothing() {
    on_fake(FakeThread::new(Mode::NotPermitted), || {
        let f = IoFlusher::enter();
        assert!(!f.is_effective());
        assert_eq!(audit_me(), Verdict::Clear);
    });
}

#[test]
fn a_thread_in_transition_is_reread_or_unsettled() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        let tid = current_tid();
        with_entry(|e| e.update(|w| w | IN_TRANSITION));
        let info = ThreadInfo {
            tid,
            name: "x".into(),
            flags: ThreadFlags::from_bits(0),
        };
        let a = audit_with(1, || Ok(vec![info.clone()]), |_| Ok(ThreadFlags::default())).unwrap();
        assert_eq!(a.verdict(tid), Some(Verdict::Unsettled));
        // The transition ends during the first re-read: judged on the
        // state the second one sees.
        let ended = std::cell::Cell::new(false);
        let a = audit_with(
            1,
            || Ok(vec![info.clone()]),
            |_| {
                if !ended.replace(true) {
                    with_entry(|e| e.update(|w| (w & !IN_TRANSITION) | SCOPED_ON));
                }
                Ok(ThreadFlags::from_bits(crate::sys::PF_MEMALLOC_NOIO))
            },
        )
        .unwrap();
        assert_eq!(a.verdict(tid), Some(Verdict::InScope));
        // A thread that exits during the re-read is left out.
        with_entry(|e| e.update(|w| w | IN_TRANSITION));
        let a = audit_with(
            1,
            || Ok(vec![info.clone()]),
            |_| Err(io::ErrorKind::NotFound.into()),
        )
        .unwrap();
        assert!(a.threads().is_empty());
        with_entry(|e| e.update(|w| w & !IN_TRANSITION));
    });
}

#[test]
fn entry_is_removed_at_thread_exit() {
    let tid = std::thread::spawn(|| {
        with_entry(|_| {});
        let tid = current_tid();
        assert!(word_of(tid).is_some());
        tid
    })
    .join()
    .unwrap();
    assert!(!REGISTRY.lock().live.iter().any(|e| e.tid() == tid));
}

/// An exited thread's entry goes back to the free list, and the next
/// thread to register (which may get it) starts from a clean word under
/// its own tid: nothing of the old thread's accounting leaks into it.
#[test]
fn an_exited_threads_entry_is_reused_clean() {
    for _ in 0..4 {
        let (old_tid, addr) = std::thread::spawn(|| {
            with_entry(|e| e.update(|w| (w + (1 << FLUSHERS_SHIFT)) | SCOPED_ON));
            (current_tid(), entry().unwrap() as *const Entry as usize)
        })
        .join()
        .unwrap();
        {
            let reg = REGISTRY.lock();
            assert!(!reg.live.iter().any(|e| e.tid() == old_tid));
            let freed = reg.free.iter().any(|e| *e as *const Entry as usize == addr);
            let reused = reg.live.iter().any(|e| *e as *const Entry as usize == addr);
            // Another test's thread may have taken it again already.
            assert!(freed || reused, "an exited thread's entry was lost");
        }
        std::thread::spawn(|| {
            with_entry(|_| {});
            assert_eq!(word_of(current_tid()), Some(0));
            assert_eq!(entry().unwrap().tid(), current_tid());
        })
        .join()
        .unwrap();
    }
}

#[test]
fn display_names_findings_and_escapes_names() {
    let t = |tid, name: &str, bits, verdict| AuditedThread {
        tid,
        name: name.into(),
        flags: ThreadFlags::from_bits(bits),
        verdict,
    };
    let both = crate::sys::PF_MEMALLOC_NOIO | crate::sys::PF_LOCAL_THROTTLE;
    let a = Audit {
        pid: 10,
        threads: vec![
            t(10, "main", 0, Verdict::Clear),
            t(11, "worker", 0, Verdict::Missing),
            t(12, "he\"l\nper", both, Verdict::Unaccounted),
            t(13, "flusher", both, Verdict::Flusher),
        ],
    };
    assert!(!a.is_clean());
    let s = a.to_string();
    assert!(
        s.starts_with("audit of process 10: 4 threads, 2 flagged; 1 missing, 1 unaccounted"),
        "{s}"
    );
    assert!(
        s.contains("MISSING     tid 11 \"worker\" [clear]: NOT flagged"),
        "{s}"
    );
    assert!(s.contains("UNACCOUNTED tid 12 \"he\\\"l\\nper\""), "{s}");
    assert!(!s.contains("tid 13"), "{s}");
    assert_eq!(s.lines().count(), 3, "{s}");
    let all = format!("{a:#}");
    assert_eq!(all.lines().count(), 5, "{all}");
    assert!(all.contains("ok          tid 13 \"flusher\""), "{all}");
    let clean = Audit {
        pid: 1,
        threads: vec![t(1, "init", both, Verdict::Flusher)],
    };
    assert_eq!(
        clean.to_string(),
        "audit of process 1: 1 thread, 1 flagged; every flag is accounted for"
    );
}

#[test]
fn judge_table() {
    let on = ThreadFlags::from_bits(crate::sys::PF_MEMALLOC_NOIO);
    let off = ThreadFlags::from_bits(0);
    let w = |flushers: u64, scoped: u64| Some(flushers << FLUSHERS_SHIFT | scoped);
    assert_eq!(judge(on, None), Verdict::Unaccounted);
    assert_eq!(judge(off, None), Verdict::Clear);
    assert_eq!(judge(on, w(0, SCOPED_ON)), Verdict::InScope);
    assert_eq!(judge(on, w(0, SCOPED_OFF)), Verdict::Unaccounted);
    assert_eq!(judge(on, w(2, SCOPED_NONE)), Verdict::Flusher);
    assert_eq!(judge(off, w(1, SCOPED_ON)), Verdict::Missing);
    assert_eq!(judge(off, w(1, SCOPED_NONE)), Verdict::Missing);
    assert_eq!(judge(off, w(1, SCOPED_OFF)), Verdict::Clear);
    assert_eq!(judge(off, w(0, SCOPED_ON)), Verdict::Clear);
}
