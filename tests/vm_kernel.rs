//! Kernel truth for the crate's guards: every claim is checked against
//! `/proc/thread-self/stat` flags, `PR_GET_IO_FLUSHER`, or tracefs (gfp
//! masks of real page-cache allocations, and the prctl syscalls actually
//! made) — never against the crate's own bookkeeping.
//!
//! All tests are `#[ignore]`d: they need CAP_SYS_RESOURCE and tracefs, and
//! run in the VM via `cargo xtask vm-test` (which passes `--include-ignored`).
//! Each runs on a fresh thread so kernel flags cannot leak between tests.

mod common;

use common::*;
use reclaim_scope::{
    proc::{current_tid, ThreadFlags},
    refresh_thread_state, support, thread_io_flusher, AllowFsReclaim, IoFlusher, NoFsScope,
    Support,
};

const PAGES: usize = 16;
const LEN: usize = PAGES * 4096;

/// PR_GET_IO_FLUSHER (through the crate) and /proc must tell the same story.
#[track_caller]
fn assert_get_agrees(what: &str) {
    let get = thread_io_flusher().expect("PR_GET_IO_FLUSHER in the VM");
    assert_eq!(
        get,
        thread_is_flagged(),
        "{what}: PR_GET says {get}, /proc says {}",
        describe_flags(thread_flags())
    );
    let tf = ThreadFlags::current().unwrap();
    assert_eq!(
        tf.bits(),
        thread_flags(),
        "{what}: ThreadFlags::current() differs from /proc"
    );
    assert_eq!(
        tf.is_io_flusher(),
        get,
        "{what}: ThreadFlags::is_io_flusher() vs PR_GET"
    );
}

/// A [`vm_test!`] whose body runs on a fresh thread that starts clear.
macro_rules! fresh_thread_test {
    ($(#[$m:meta])* fn $name:ident() $body:block) => {
        vm_test! {
            $(#[$m])*
            fn $name() {
                require_vm();
                on_fresh_thread(|| {
                    assert_thread_clear("precondition (fresh thread)");
                    $body
                });
            }
        }
    };
}

fresh_thread_test! {
    fn support_is_available_and_probe_changes_nothing() {
        let before = thread_flags();
        assert_eq!(support(), Support::Available);
        // The capability check sets PF_SUPERPRIV (0x100, accounting only) on
        // the caller; the memalloc bits must not move.
        let memalloc = IO_FLUSHER_BITS | PF_MEMALLOC_NOFS;
        assert_eq!(
            thread_flags() & memalloc,
            before & memalloc,
            "support() changed the caller's flags: {} -> {}",
            describe_flags(before),
            describe_flags(thread_flags())
        );
        let again = thread_flags();
        assert_eq!(support(), Support::Available);
        assert_eq!(thread_flags(), again, "a second probe changed the flags word");
        assert_eq!(current_tid(), gettid());
    }
}

fresh_thread_test! {
    fn nofs_scope_sets_both_bits_and_drop_clears_them() {
        let scope = NoFsScope::try_enter().expect("try_enter in the VM");
        assert!(scope.is_effective());
        assert_thread_flagged("inside NoFsScope");
        let tf = ThreadFlags::current().unwrap();
        assert!(tf.noio() && tf.local_throttle() && tf.is_io_flusher(), "{tf}");
        assert_get_agrees("inside NoFsScope");
        drop(scope);
        assert_thread_clear("after NoFsScope");
        assert_get_agrees("after NoFsScope");
        assert!(!ThreadFlags::current().unwrap().is_io_flusher());
    }
}

fresh_thread_test! {
    fn best_effort_enter_is_effective_here() {
        let scope = NoFsScope::enter();
        assert!(scope.is_effective(), "best-effort enter must be effective with the capability");
        assert_thread_flagged("inside NoFsScope::enter");
        drop(scope);
        assert_thread_clear("after NoFsScope::enter");
    }
}

fresh_thread_test! {
    fn nesting_changes_nothing_at_inner_levels() {
        let outer = NoFsScope::try_enter().unwrap();
        let at_outer = thread_flags();
        {
            let inner = NoFsScope::try_enter().unwrap();
            assert!(inner.is_effective());
            assert_eq!(thread_flags(), at_outer, "inner enter changed flags");
            {
                let _innermost = NoFsScope::enter();
                assert_eq!(thread_flags(), at_outer);
            }
            assert_eq!(thread_flags(), at_outer, "innermost exit changed flags");
        }
        assert_thread_flagged("after the inner scope ended, inside the outer");
        drop(outer);
        assert_thread_clear("after the outer scope");
    }
}

fresh_thread_test! {
    fn only_the_outermost_level_makes_syscalls() {
        // Warm up: the crate may probe a thread's state once.
        drop(NoFsScope::try_enter().unwrap());

        let (_, ev) = trace_thread(&[EV_SYS_PRCTL], || {
            let outer = NoFsScope::try_enter().unwrap();
            {
                // Nested levels inside the traced outermost scope.
                let _a = NoFsScope::try_enter().unwrap();
                let _b = NoFsScope::enter();
                NoFsScope::run(|| ());
            }
            drop(outer);
        });
        let calls = io_flusher_prctls(&ev);
        assert_eq!(
            calls,
            vec![(PR_SET_IO_FLUSHER as u64, 1), (PR_SET_IO_FLUSHER as u64, 0)],
            "outermost enter/exit must be exactly SET(1) then SET(0); saw {:?}",
            ev.iter().map(|e| &e.line).collect::<Vec<_>>()
        );

        let outer = NoFsScope::try_enter().unwrap();
        let (_, inner) = trace_thread(&[EV_SYS_PRCTL], || {
            let _a = NoFsScope::try_enter().unwrap();
            let _b = IoFlusher::try_enter().unwrap();
            let _c = NoFsScope::enter();
        });
        drop(outer);
        assert_eq!(io_flusher_prctls(&inner), vec![], "nested levels made prctl calls: {inner:?}");
    }
}

fresh_thread_test! {
    fn pre_flagged_thread_stays_flagged_after_a_scope() {
        raw_set_io_flusher(true).unwrap();
        refresh_thread_state().unwrap();
        assert_thread_flagged("after raw SET(1)");
        let (_, ev) = trace_thread(&[EV_SYS_PRCTL], || {
            let scope = NoFsScope::try_enter().unwrap();
            assert!(scope.is_effective());
            drop(scope);
        });
        assert_thread_flagged("after a scope on a pre-flagged thread");
        assert_eq!(io_flusher_prctls(&ev), vec![], "a scope on a flagged thread made prctl calls");
        raw_set_io_flusher(false).unwrap();
        refresh_thread_state().unwrap();
        assert_thread_clear("cleanup");
    }
}

fresh_thread_test! {
    fn inherited_flag_survives_a_scope_in_the_child() {
        raw_set_io_flusher(true).unwrap();
        // The child inherits the flag; its first scope must probe, not assume "clear".
        let child = std::thread::spawn(|| {
            let inherited = thread_flags();
            drop(NoFsScope::try_enter().unwrap());
            drop(IoFlusher::try_enter().unwrap());
            (inherited, thread_flags())
        })
        .join()
        .unwrap();
        raw_set_io_flusher(false).unwrap();
        refresh_thread_state().unwrap();
        assert_eq!(child.0 & IO_FLUSHER_BITS, IO_FLUSHER_BITS, "child did not inherit: {}", describe_flags(child.0));
        assert_eq!(child.1 & IO_FLUSHER_BITS, IO_FLUSHER_BITS, "a scope cleared an inherited flag: {}", describe_flags(child.1));
    }
}

fresh_thread_test! {
    fn panic_unwinding_through_a_scope_leaves_the_thread_clear() {
        let r = std::panic::catch_unwind(|| {
            let _scope = NoFsScope::try_enter().unwrap();
            let _inner = NoFsScope::try_enter().unwrap();
            assert_thread_flagged("inside, before the panic");
            panic!("unwinding through two scopes");
        });
        assert!(r.is_err());
        assert_thread_clear("after unwinding");
        assert_get_agrees("after unwinding");
        // The crate's state is consistent again: a new scope works normally.
        let s = NoFsScope::try_enter().unwrap();
        assert_thread_flagged("new scope after the panic");
        drop(s);
        assert_thread_clear("after the new scope");
    }
}

fresh_thread_test! {
    fn threads_spawned_inside_inherit_and_outside_do_not() {
        let outside = std::thread::spawn(thread_flags).join().unwrap();
        let scope = NoFsScope::try_enter().unwrap();
        let inside = std::thread::spawn(thread_flags).join().unwrap();
        let allowed = {
            let _clear = AllowFsReclaim::try_enter().unwrap();
            std::thread::spawn(thread_flags).join().unwrap()
        };
        assert_thread_flagged("after AllowFsReclaim, still inside the scope");
        drop(scope);
        let after = std::thread::spawn(thread_flags).join().unwrap();
        assert_eq!(outside & IO_FLUSHER_BITS, 0, "spawned before: {}", describe_flags(outside));
        assert_eq!(inside & IO_FLUSHER_BITS, IO_FLUSHER_BITS, "spawned inside: {}", describe_flags(inside));
        assert_eq!(allowed & IO_FLUSHER_BITS, 0, "spawned inside AllowFsReclaim: {}", describe_flags(allowed));
        assert_eq!(after & IO_FLUSHER_BITS, 0, "spawned after: {}", describe_flags(after));
    }
}

fresh_thread_test! {
    fn a_long_lived_thread_spawned_inside_stays_flagged_after_the_scope() {
        let pid = std::process::id() as i32;
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let scope = NoFsScope::try_enter().unwrap();
        let worker = std::thread::spawn(move || {
            tid_tx.send(current_tid()).unwrap();
            let _ = go_rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        drop(scope);
        let worker_flags = task_flags(pid, tid).expect("worker alive");
        let via_crate = ThreadFlags::of_task(pid, tid).unwrap();
        go_tx.send(()).unwrap();
        worker.join().unwrap();
        assert_thread_clear("spawner after its scope");
        assert_eq!(worker_flags & IO_FLUSHER_BITS, IO_FLUSHER_BITS, "the kernel's inheritance outlives the scope");
        // Before 6.1's freezer rework a task asleep in a futex sets
        // PF_FREEZER_SKIP (0x40000000) on itself (freezable_schedule), and
        // the two reads straddle that sleep (measured on 5.10).
        let own = if kernel_version() < (6, 1) { 0x4000_0000 } else { 0 };
        assert_eq!(via_crate.bits() & !own, worker_flags & !own, "ThreadFlags::of_task vs /proc");
    }
}

fresh_thread_test! {
    fn thread_io_flusher_agrees_with_proc() {
        assert_get_agrees("clear");
        let s = NoFsScope::try_enter().unwrap();
        assert_get_agrees("in NoFsScope");
        drop(s);
        assert_get_agrees("after NoFsScope");
        raw_set_io_flusher(true).unwrap();
        assert_get_agrees("raw SET(1)");
        raw_set_io_flusher(false).unwrap();
        assert_get_agrees("raw SET(0)");
    }
}

fresh_thread_test! {
    fn io_flusher_sets_and_restores() {
        let f = IoFlusher::try_enter().unwrap();
        assert!(f.is_effective());
        assert_thread_flagged("inside IoFlusher");
        assert_get_agrees("inside IoFlusher");
        {
            let s = NoFsScope::try_enter().unwrap();
            assert!(s.is_effective());
            assert_thread_flagged("NoFsScope inside IoFlusher");
        }
        assert_thread_flagged("IoFlusher after an inner NoFsScope");
        drop(f);
        assert_thread_clear("after IoFlusher");
        let f = IoFlusher::enter();
        assert!(f.is_effective());
        assert_thread_flagged("IoFlusher::enter");
        drop(f);
        assert_thread_clear("after IoFlusher::enter");
    }
}

fresh_thread_test! {
    fn allow_fs_reclaim_inside_io_flusher_clears_and_restores() {
        let f = IoFlusher::try_enter().unwrap();
        {
            let a = AllowFsReclaim::try_enter().unwrap();
            assert!(a.is_effective());
            assert_thread_clear("inside AllowFsReclaim");
            assert_get_agrees("inside AllowFsReclaim");
            {
                let s = NoFsScope::try_enter().unwrap();
                assert!(s.is_effective());
                assert_thread_flagged("NoFsScope inside AllowFsReclaim");
            }
            assert_thread_clear("AllowFsReclaim after an inner NoFsScope");
        }
        assert_thread_flagged("IoFlusher after AllowFsReclaim");
        drop(f);
        assert_thread_clear("after IoFlusher");
        // On a clear thread AllowFsReclaim is a no-op.
        let a = AllowFsReclaim::try_enter().unwrap();
        assert_thread_clear("AllowFsReclaim on a clear thread");
        drop(a);
        assert_thread_clear("after it");
    }
}

fresh_thread_test! {
    fn closures_run_inside_the_scope() {
        assert!(NoFsScope::run(thread_is_flagged));
        assert_thread_clear("after NoFsScope::run");
        assert!(NoFsScope::try_run(thread_is_flagged).unwrap());
        assert_thread_clear("after NoFsScope::try_run");
    }
}

fresh_thread_test! {
    fn nofs_scope_removes_fs_and_io_from_page_cache_allocations() {
        let (_, f) = fresh_file("plain");
        let plain = traced_pwrite(&f, LEN);
        let (_, f) = fresh_file("scoped");
        let scope = NoFsScope::try_enter().unwrap();
        let scoped = traced_pwrite(&f, LEN);
        drop(scope);
        let (_, f) = fresh_file("after");
        let after = traced_pwrite(&f, LEN);
        println!("ext4 on brd, 64 KiB pwrite: unflagged: {}", summarize_gfp(&plain));
        println!("ext4 on brd, 64 KiB pwrite: NoFsScope: {}", summarize_gfp(&scoped));
        assert_fs_io("unflagged", &plain, PAGES);
        assert_all_noio("inside NoFsScope", &scoped, PAGES);
        assert_fs_io("after NoFsScope", &after, PAGES);
    }
}

fresh_thread_test! {
    fn io_flusher_and_allow_fs_reclaim_gfp_proof() {
        let flusher = IoFlusher::try_enter().unwrap();
        let (_, f) = fresh_file("flusher");
        let flushed = traced_pwrite(&f, LEN);
        let (_, f) = fresh_file("allowed");
        let allowed = {
            let _a = AllowFsReclaim::try_enter().unwrap();
            traced_pwrite(&f, LEN)
        };
        drop(flusher);
        assert_all_noio("inside IoFlusher", &flushed, PAGES);
        assert_fs_io("inside AllowFsReclaim", &allowed, PAGES);
    }
}

vm_test! {
    /// Capabilities are per thread (`capset(2)`): a thread that dropped
    /// `CAP_SYS_RESOURCE` and was refused must not stop the others. A thread
    /// flagged before that refusal still clears its flag on drop, and a
    /// thread that enters after it is still flagged (the crate's refusal memo
    /// is per thread; a process-wide memo failed both).
    fn one_threads_refusal_does_not_stop_threads_that_hold_the_capability() {
        use std::sync::{mpsc, Arc, Barrier};
        require_vm();
        const CAP_SYS_RESOURCE: u32 = 24;
        let refused = Arc::new(Barrier::new(2));
        let (holder_tx, holder_rx) = mpsc::channel();
        let holder = {
            let refused = Arc::clone(&refused);
            std::thread::spawn(move || {
                assert_thread_clear("holder, fresh thread");
                let flusher = IoFlusher::try_enter().expect("holder has CAP_SYS_RESOURCE");
                assert_thread_flagged("holder inside its IoFlusher");
                holder_tx.send(()).unwrap();
                refused.wait(); // another thread has been refused meanwhile
                drop(flusher);
                assert_thread_clear("holder after its IoFlusher, past another thread's refusal");
            })
        };
        holder_rx.recv().unwrap();
        on_fresh_thread(|| {
            drop_effective_cap_of_this_thread(CAP_SYS_RESOURCE).expect("capset");
            let e = IoFlusher::try_enter().expect_err("flagged without CAP_SYS_RESOURCE");
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
            assert!(!NoFsScope::enter().is_effective());
            assert_thread_clear("the thread without the capability");
        });
        refused.wait();
        holder.join().unwrap();
        on_fresh_thread(|| {
            assert_thread_clear("late thread, fresh");
            let flusher = IoFlusher::try_enter()
                .expect("a thread holding CAP_SYS_RESOURCE after another thread's refusal");
            assert!(flusher.is_effective());
            assert_thread_flagged("late thread inside its IoFlusher");
            drop(flusher);
            assert_thread_clear("late thread after its IoFlusher");
        });
    }
}
