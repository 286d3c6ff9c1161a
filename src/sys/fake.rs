//! A fake kernel for unit tests: per-thread flags, and a mode that makes the
//! prctl answer like a kernel with the capability, without it (`EPERM`), or
//! older than 5.6 (`EINVAL`). It counts the syscalls it would have made, so
//! tests can assert "only the outermost enter makes a syscall".
//!
//! Install it on the test's thread with [`install`]; the real backend answers
//! on every thread where none is installed.

use super::{Errno, EINVAL, EPERM, PF_LOCAL_THROTTLE, PF_MEMALLOC_NOIO, PF_SUPERPRIV};
use std::cell::RefCell;

/// How the fake prctl answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The caller has CAP_SYS_RESOURCE on a kernel ≥ 5.8.
    Permitted,
    /// No capability: SET and GET answer EPERM.
    NotPermitted,
    /// Kernel < 5.6: SET and GET answer EINVAL.
    Old,
}

/// The fake state of one thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FakeThread {
    pub mode: Mode,
    pub flags: u32,
    pub set_calls: u32,
    pub get_calls: u32,
    /// The per-thread stand-in for the crate's process-wide memo of a
    /// refused prctl (0: none, else the errno).
    pub refused: i32,
}

impl FakeThread {
    pub(crate) fn new(mode: Mode) -> Self {
        FakeThread {
            mode,
            flags: 0,
            set_calls: 0,
            get_calls: 0,
            refused: 0,
        }
    }

    /// A thread that already carries the flag (inherited from its parent).
    pub(crate) fn flagged(mode: Mode) -> Self {
        FakeThread {
            flags: PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE,
            ..Self::new(mode)
        }
    }
}

thread_local! {
    static FAKE: RefCell<Option<FakeThread>> = const { RefCell::new(None) };
}

/// Installs `state` as this thread's fake kernel.
pub(crate) fn install(state: FakeThread) {
    FAKE.with(|f| *f.borrow_mut() = Some(state));
}

/// The current fake state of this thread, if one is installed.
pub(crate) fn state() -> Option<FakeThread> {
    FAKE.with(|f| *f.borrow())
}

/// Changes the fake state of this thread (e.g. to clear the flag "behind the
/// crate's back"). Panics when none is installed.
pub(crate) fn update(f: impl FnOnce(&mut FakeThread)) {
    FAKE.with(|s| f(s.borrow_mut().as_mut().expect("no fake kernel installed")));
}

pub(crate) fn flags() -> Option<u32> {
    state().map(|s| s.flags)
}

fn refusal(mode: Mode) -> Option<Errno> {
    match mode {
        Mode::Permitted => None,
        Mode::NotPermitted => Some(EPERM),
        Mode::Old => Some(EINVAL),
    }
}

pub(crate) fn set_io_flusher(on: bool) -> Option<Result<(), Errno>> {
    FAKE.with(|f| {
        let mut f = f.borrow_mut();
        let s = f.as_mut()?;
        s.set_calls += 1;
        if let Some(e) = refusal(s.mode) {
            return Some(Err(e));
        }
        // Like the kernel: SET(1) sets both bits (and PF_SUPERPRIV, because
        // the capability was used), SET(0) clears both.
        s.flags |= PF_SUPERPRIV;
        if on {
            s.flags |= PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE;
        } else {
            s.flags &= !(PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE);
        }
        Some(Ok(()))
    })
}

pub(crate) fn get_io_flusher() -> Option<Result<bool, Errno>> {
    FAKE.with(|f| {
        let mut f = f.borrow_mut();
        let s = f.as_mut()?;
        s.get_calls += 1;
        if let Some(e) = refusal(s.mode) {
            return Some(Err(e));
        }
        let both = PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE;
        Some(Ok(s.flags & both == both))
    })
}
