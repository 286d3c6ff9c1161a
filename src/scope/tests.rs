use super::*;
use crate::sys::fake::{self, FakeThread, Mode};
use crate::sys::{PF_LOCAL_THROTTLE, PF_MEMALLOC_NOIO};

const BOTH: u32 = PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE;

fn flags() -> u32 {
    fake::state().unwrap().flags & BOTH
}
fn sets() -> u32 {
    fake::state().unwrap().set_calls
}

/// Runs `f` on a fresh thread (fresh thread-local state) with a fake
/// kernel installed; panics propagate.
pub(crate) fn on_fake(state: FakeThread, f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        fake::install(state);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

#[test]
fn outermost_sets_and_restores_nested_make_no_syscall() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        let a = NoFsScope::try_enter().unwrap();
        assert!(a.is_effective());
        assert_eq!(flags(), BOTH);
        assert_eq!(sets(), 1);
        {
            let b = NoFsScope::enter();
            let c = IoFlusher::try_enter().unwrap();
            assert!(b.is_effective() && c.is_effective());
            assert_eq!(sets(), 1, "nested scopes made a syscall");
        }
        assert_eq!(flags(), BOTH);
        drop(a);
        assert_eq!(flags(), 0);
        assert_eq!(sets(), 2);
    });
}

#[test]
fn pre_flagged_thread_is_left_alone() {
    on_fake(FakeThread::flagged(Mode::NotPermitted), || {
        // Inherited flag, no capability: strict entry still succeeds,
        // because the kernel state already is what the scope asks for.
        let s = NoFsScope::try_enter().unwrap();
        assert!(s.is_effective());
        drop(s);
        assert_eq!(flags(), BOTH, "a scope cleared an inherited flag");
        assert_eq!(sets(), 0);
    });
    on_fake(FakeThread::flagged(Mode::Permitted), || {
        for _ in 0..3 {
            let _f = IoFlusher::enter();
        }
        assert_eq!((flags(), sets()), (BOTH, 0));
    });
}

#[test]
fn eperm_strict_fails_best_effort_degrades_once() {
    on_fake(FakeThread::new(Mode::NotPermitted), || {
        let e = NoFsScope::try_enter().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::NotPermitted);
        assert!(e.to_string().contains("CAP_SYS_RESOURCE"));
        assert_eq!(sets(), 1);
        for _ in 0..10 {
            let s = NoFsScope::enter();
            assert!(!s.is_effective());
            let _inner = NoFsScope::enter();
        }
        assert_eq!(sets(), 1, "a remembered refusal was asked again");
        assert_eq!(flags(), 0);
        assert!(crate::degradation().is_some());
        // Strict entry after the memo fails the same way, without a syscall.
        assert_eq!(
            IoFlusher::try_enter().unwrap_err().kind(),
            crate::ErrorKind::NotPermitted
        );
        assert_eq!(sets(), 1);
    });
}

#[test]
fn einval_is_unsupported() {
    on_fake(FakeThread::new(Mode::Old), || {
        let e = IoFlusher::try_enter().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        assert_eq!(support(), Support::Unsupported);
        assert!(!NoFsScope::run(|| NoFsScope::enter().is_effective()));
    });
}

#[test]
fn strict_failure_leaves_no_level_behind() {
    on_fake(FakeThread::new(Mode::NotPermitted), || {
        assert!(NoFsScope::try_enter().is_err());
        STATE.with(|st| assert_eq!(st.get().depth(), 0));
        assert!(NoFsScope::try_run(|| unreachable!("ran without scope")).is_err());
        assert!(IoFlusher::try_run(|| unreachable!("ran without scope")).is_err());
        assert!(!IoFlusher::run(|| IoFlusher::enter().is_effective()));
        STATE.with(|st| assert_eq!(st.get().depth(), 0));
    });
}

#[test]
fn support_has_no_side_effect_and_forgets_refusal() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        assert_eq!(support(), Support::Available);
        assert_eq!((flags(), sets()), (0, 0));
        fake::update(|s| s.refused = sys::EPERM);
        assert_eq!(support(), Support::Available);
        assert!(NoFsScope::try_enter().is_ok());
    });
    on_fake(FakeThread::new(Mode::NotPermitted), || {
        assert_eq!(support(), Support::NotPermitted);
        assert!(support()
            .error()
            .unwrap()
            .to_string()
            .contains("CAP_SYS_RESOURCE"));
    });
}

/// A seccomp filter or LSM answering another errno is neither a missing
/// capability nor an old kernel, and the strict error says so.
#[test]
fn an_errno_the_prctl_never_answers_is_a_filter_not_an_old_kernel() {
    for errno in [libc::ENOSYS, libc::EACCES] {
        on_fake(FakeThread::new(Mode::Filtered(errno)), move || {
            assert_eq!(support(), Support::Refused(errno));
            assert!(!support().is_available());
            let e = support().error().unwrap();
            assert_eq!(
                (e.kind(), e.raw_os_error()),
                (crate::ErrorKind::Os, Some(errno))
            );
            let msg = e.to_string();
            assert!(msg.contains("seccomp") && !msg.contains("5.6"), "{msg}");
            assert!(!msg.contains("CAP_SYS_RESOURCE"), "{msg}");
            let strict = NoFsScope::try_enter().unwrap_err();
            assert_eq!(strict.raw_os_error(), Some(errno));
            assert!(strict.to_string().contains("seccomp"), "{strict}");
            assert!(!NoFsScope::enter().is_effective());
        });
    }
}

#[test]
fn allow_fs_reclaim_clears_inside_flusher_and_restores() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        let f = IoFlusher::try_enter().unwrap();
        {
            let c = AllowFsReclaim::try_enter().unwrap();
            assert!(c.is_effective());
            assert_eq!(flags(), 0);
            {
                let _n = NoFsScope::enter();
                assert_eq!(flags(), BOTH);
            }
            assert_eq!(flags(), 0);
        }
        assert_eq!(flags(), BOTH);
        drop(f);
        assert_eq!(flags(), 0);
        // On a clear thread it is a no-op.
        let before = sets();
        let _c = AllowFsReclaim::enter();
        assert_eq!(sets(), before);
    });
}

#[test]
fn panic_unwinding_through_scopes_restores() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        let r = std::panic::catch_unwind(|| {
            let _a = NoFsScope::enter();
            let _b = IoFlusher::enter();
            assert_eq!(flags(), BOTH);
            panic!("request handler failed");
        });
        assert!(r.is_err());
        assert_eq!(flags(), 0);
        STATE.with(|st| assert_eq!(st.get().depth(), 0));
        // The thread is usable again.
        let _s = NoFsScope::try_enter().unwrap();
        assert_eq!(flags(), BOTH);
    });
}

fn drop_out_of_order_release_semantics() {
    // a: on (level 1), b: clear (level 2), c: on (level 3)
    let a = IoFlusher::try_enter().unwrap();
    let b = AllowFsReclaim::try_enter().unwrap();
    let c = NoFsScope::try_enter().unwrap();
    assert_eq!(flags(), BOTH);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(b)));
    assert_eq!(r.is_err(), cfg!(debug_assertions));
    // c still alive and decides.
    assert_eq!(flags(), BOTH);
    drop(c);
    // b is gone, so a decides: flagged.
    assert_eq!(flags(), BOTH);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let d = NoFsScope::enter();
        let _e = AllowFsReclaim::enter();
        assert_eq!(flags(), 0);
        drop(d); // out of order: e still alive, stays clear
    }));
    assert_eq!(r.is_err(), cfg!(debug_assertions));
    assert_eq!(flags(), BOTH);
    drop(a);
    assert_eq!(flags(), 0);
    STATE.with(|st| {
        assert_eq!(st.get().depth(), 0);
        assert_eq!(st.get().0 & OUT_OF_ORDER, 0);
        assert!(st.get().in_desired_state());
    });
}

#[test]
fn out_of_order_drop_panics_in_debug_and_keeps_state_right() {
    on_fake(
        FakeThread::new(Mode::Permitted),
        drop_out_of_order_release_semantics,
    );
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "the panic exists in debug builds only"
)]
fn out_of_order_message_says_so() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        let a = NoFsScope::enter();
        let b = NoFsScope::enter();
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(a))).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("dropped while the thread is at level 2"),
            "{msg}"
        );
        assert!(msg.contains("reverse order"), "{msg}");
        drop(b);
        assert_eq!(flags(), 0);
    });
}

#[test]
fn raw_changes_are_seen_after_refresh() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        {
            let _s = NoFsScope::enter();
        }
        // Someone sets the flag behind the crate's back.
        fake::update(|s| s.flags |= BOTH);
        assert!(refresh_thread_state().unwrap().is_io_flusher());
        {
            let _s = NoFsScope::enter();
        }
        assert_eq!(flags(), BOTH, "a scope cleared a flag it did not set");
        set_thread_io_flusher(false).unwrap();
        assert_eq!(flags(), 0);
        assert!(!thread_io_flusher().unwrap());
    });
}

#[test]
fn deep_nesting() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        fn rec(n: u32) {
            if n == 0 {
                assert_eq!(flags(), BOTH);
                return;
            }
            let _s = NoFsScope::enter();
            if n % 7 == 0 {
                let _c = AllowFsReclaim::enter();
                assert_eq!(flags(), 0);
                rec(n - 1);
                assert_eq!(flags(), 0);
            } else {
                rec(n - 1);
            }
        }
        rec(500);
        assert_eq!(flags(), 0);
    });
}

#[test]
fn guard_in_thread_local_dropped_at_teardown_does_not_panic() {
    struct Holder(RefCell<Option<NoFsScope>>);
    thread_local! {
        static HELD: Holder = const { Holder(RefCell::new(None)) };
    }
    on_fake(FakeThread::new(Mode::Permitted), || {
        HELD.with(|h| *h.0.borrow_mut() = Some(NoFsScope::enter()));
        assert_eq!(flags(), BOTH);
        // The guard is dropped by thread-local destructors when this
        // thread exits; `on_fake` would re-raise a panic.
    });
}
