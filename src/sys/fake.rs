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
    /// A seccomp filter or an LSM: SET and GET answer this errno.
    Filtered(Errno),
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
        Mode::Filtered(e) => Some(e),
    }
}

thread_local! {
    /// Run inside every fake `PR_SET_IO_FLUSHER` of this thread, after the
    /// fake kernel answered (and changed its flags) and before the call
    /// returns: the moment a real thread is "in the syscall".
    static DURING_SET: std::cell::Cell<Option<fn()>> = const { std::cell::Cell::new(None) };
}

/// Makes `hook` run inside each fake `PR_SET_IO_FLUSHER` of this thread
/// (`None`: no more), e.g. to audit the thread in the middle of a guard's
/// change.
pub(crate) fn during_set(hook: Option<fn()>) {
    DURING_SET.with(|h| h.set(hook));
}

pub(crate) fn set_io_flusher(on: bool) -> Option<Result<(), Errno>> {
    let r = fake_set(on);
    if r.is_some() {
        if let Some(hook) = DURING_SET.with(std::cell::Cell::get) {
            hook();
        }
    }
    r
}

fn fake_set(on: bool) -> Option<Result<(), Errno>> {
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

/// What a thread created now would inherit from the calling thread's fake
/// kernel (`None`: no fake installed here). Taken by the crate's spawn
/// helpers before spawning, like `clone()` copies `task_struct::flags`.
pub(crate) fn inherit_capture() -> Option<FakeThread> {
    state()
}

/// Installs, on a new thread, the fake kernel it inherited: the creator's
/// flags (minus `PF_SUPERPRIV`, which `copy_process()` clears), mode and
/// refusal memo; the syscall counters start at zero.
pub(crate) fn inherit_apply(parent: Option<FakeThread>) {
    if let Some(p) = parent {
        install(FakeThread {
            flags: p.flags & !PF_SUPERPRIV,
            set_calls: 0,
            get_calls: 0,
            ..p
        });
    }
}

// ---------------------------------------------------------------------------
// Scripted I/O syscalls (for `NoFsFile`'s retry and continuation logic)
// ---------------------------------------------------------------------------

/// One scripted answer of the next fake I/O syscall (`pread64`, `pwrite64`,
/// `preadv2`, `pwritev2`, `fallocate`, `fdatasync`, `fsync`, `ftruncate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IoScript {
    /// Fail with this errno without doing anything (`EINTR`, `EIO`, ...).
    Err(Errno),
    /// Do the real syscall with the length capped at this many bytes: a
    /// short read or write (`pread64`/`pwrite64` only).
    Short(usize),
    /// Claim this many bytes (at most the requested length) were
    /// transferred, without doing any I/O: for lengths no test can afford.
    Pretend(usize),
}

/// One I/O syscall as the fake saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IoCall {
    pub op: &'static str,
    pub offset: u64,
    pub len: u64,
    /// Whether the thread was an I/O flusher (fake flags) during the call.
    pub flagged: bool,
}

#[derive(Default)]
struct IoFake {
    script: std::collections::VecDeque<IoScript>,
    log: Vec<IoCall>,
    recording: bool,
}

thread_local! {
    static IO: RefCell<IoFake> = RefCell::new(IoFake::default());
}

/// Queues scripted answers for this thread's next I/O syscalls and starts
/// recording every I/O syscall (scripted or real) in [`io_log`]. When the
/// queue is empty the real syscall answers.
pub(crate) fn script_io(answers: impl IntoIterator<Item = IoScript>) {
    IO.with(|io| {
        let mut io = io.borrow_mut();
        io.script.extend(answers);
        io.recording = true;
    });
}

/// The I/O syscalls made on this thread since the first [`script_io`].
pub(crate) fn io_log() -> Vec<IoCall> {
    IO.with(|io| io.borrow().log.clone())
}

/// Scripted answers not consumed yet.
pub(crate) fn io_script_left() -> usize {
    IO.with(|io| io.borrow().script.len())
}

/// Called by the sys I/O wrappers: records the call and returns the
/// scripted answer, if any.
pub(crate) fn next_io(op: &'static str, offset: u64, len: u64) -> Option<IoScript> {
    IO.with(|io| {
        let mut io = io.borrow_mut();
        if !io.recording {
            return None;
        }
        let flagged = flags().is_some_and(|f| f & PF_MEMALLOC_NOIO != 0);
        io.log.push(IoCall {
            op,
            offset,
            len,
            flagged,
        });
        io.script.pop_front()
    })
}
