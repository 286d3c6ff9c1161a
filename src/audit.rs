//! Auditing the own process: does the kernel's flag on each thread match what
//! the crate's guards account for?
//!
//! The flag is per thread, inherited by `clone()`
//! ([inheritance](crate#inheritance)), and anyone — a C library, a raw
//! `prctl`, a launcher — can change it behind the guards' back. Both
//! mistakes are silent: a worker that should be an I/O flusher and is not
//! (the ublksrv and libublk-rs bug), and a thread that is one by accident (a
//! `std::thread::spawn` inside a scope: exempt from dirty throttling and
//! allocating with `GFP_NOIO` for its whole life). [`Audit::current`] compares the
//! kernel's state of every thread, read from `/proc`, with a registry that
//! the guards keep.
//!
//! # What the registry costs
//!
//! - [`IoFlusher`](crate::IoFlusher) registers when it takes effect: as the
//!   outermost guard of its thread, or over a cleared state (inside an
//!   [`AllowFsReclaim`](crate::AllowFsReclaim)). A nested `IoFlusher`
//!   registers nothing. Registering is one thread-local access and one
//!   atomic store (the first time on a thread, one lock of a
//!   [`parking_lot::Mutex`]).
//! - A guard that makes the `prctl` syscall publishes the state it set: a
//!   thread-local access and two atomic stores beside a ~200 ns syscall.
//!   Guards that make no syscall — nested scopes, scopes on a thread that is
//!   already in the state they ask for: the hot paths — touch nothing here.
//! - A thread's entry leaves the registry when the thread exits and is kept
//!   for the next thread that registers: entries are never freed, so the
//!   memory is bounded by the most threads that had a guard at once (16
//!   bytes each), and the guards reach theirs through a destructor-less
//!   thread-local (a load and a test).

use crate::sys;
use parking_lot::Mutex;
use std::cell::Cell;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

// ---------------------------------------------------------------------------
// The registry (written by the guards)
// ---------------------------------------------------------------------------

/// Layout of an [`Entry`] word. Only the entry's own thread writes it; every
/// write bumps the generation but the in-transition mark (which changes the
/// word by itself, and whose end bumps it), so a reader that sees the same
/// word, not in transition, before and after reading `/proc` knows the
/// thread changed nothing (of what the crate does) in between.
const SCOPED_MASK: u64 = 0b11;
/// No guard of this thread made a syscall since the thread had no guard.
const SCOPED_NONE: u64 = 0;
/// The last syscall a guard made cleared the flag.
const SCOPED_OFF: u64 = 1;
/// The last syscall a guard made set the flag.
const SCOPED_ON: u64 = 2;
/// A guard's syscall is under way: the kernel's state is in flux.
const IN_TRANSITION: u64 = 1 << 2;
const FLUSHERS_SHIFT: u32 = 8;
const FLUSHERS_MASK: u64 = 0x00ff_ffff << FLUSHERS_SHIFT;
const LOW_MASK: u64 = (1 << 32) - 1;
const GENERATION_ONE: u64 = 1 << 32;

/// What the guards of one thread account for.
///
/// Entries are `'static`: allocated once and never freed, an exited
/// thread's entry is kept for the next thread that registers. So a
/// thread's entry is a plain reference in a destructor-less thread-local
/// (the guards' path checks no thread-local state and no `OnceCell`), and
/// the memory is bounded by the most threads that ever had a guard at the
/// same time (16 bytes each).
struct Entry {
    /// The owning thread; written under the registry's lock.
    tid: AtomicI32,
    word: AtomicU64,
}

impl Entry {
    /// Changes the low bits; called on the entry's own thread only (so a
    /// plain load and store suffice: no read-modify-write instruction).
    #[inline]
    fn update(&self, f: impl FnOnce(u64) -> u64) {
        let old = self.word.load(Ordering::Relaxed);
        let high = (old & !LOW_MASK).wrapping_add(GENERATION_ONE);
        self.word
            .store(high | (f(old & LOW_MASK) & LOW_MASK), Ordering::Release);
    }

    /// Marks the entry in transition: a guard's syscall is under way. No
    /// generation bump: the bit itself changes the word, and the store that
    /// ends the transition ([`end_set`](Self::end_set), [`SetMark::failed`]) bumps it (so set +
    /// clear is never ABA). Returns the word from before.
    #[inline(always)]
    fn begin_set(&self) -> u64 {
        let old = self.word.load(Ordering::Relaxed);
        self.word.store(old | IN_TRANSITION, Ordering::Release);
        old
    }

    /// Ends the transition [`begin_set`](Self::begin_set) started (`old`:
    /// its result) after a successful syscall: the scoped bits say what it
    /// set, the generation is bumped, the mark is gone. One store.
    #[inline(always)]
    fn end_set(&self, old: u64, on: bool) {
        let scoped = if on { SCOPED_ON } else { SCOPED_OFF };
        // With the mark and the scoped bits cleared (`old` has no mark
        // unless a guard in a signal handler interrupted another's set; the
        // same `and` clears it then), the add changes only the generation
        // (wrapping at bit 63, as `update` does) and sets the scoped bits.
        let new = (old & !(SCOPED_MASK | IN_TRANSITION)).wrapping_add(GENERATION_ONE | scoped);
        self.word.store(new, Ordering::Release);
    }

    #[inline]
    fn read(&self) -> u64 {
        self.word.load(Ordering::Acquire)
    }

    fn tid(&self) -> i32 {
        self.tid.load(Ordering::Relaxed)
    }
}

/// The entries of live threads, and those of exited threads for reuse.
struct Registry {
    live: Vec<&'static Entry>,
    free: Vec<&'static Entry>,
}

/// Locked when a thread gets its entry, when it exits, and by [`Audit::current`].
static REGISTRY: Mutex<Registry> = parking_lot::const_mutex(Registry {
    live: Vec::new(),
    free: Vec::new(),
});

/// Gives the calling thread's entry back at thread exit.
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(Some(e)) = ENTRY.try_with(Cell::take) {
            let mut reg = REGISTRY.lock();
            reg.live.retain(|x| !std::ptr::eq(*x, e));
            reg.free.push(e);
        }
    }
}

thread_local! {
    /// The calling thread's entry, once it registered. No destructor: the
    /// guards' path is a load and a test.
    static ENTRY: Cell<Option<&'static Entry>> = const { Cell::new(None) };
    /// Armed at registration; its destructor unregisters.
    static SLOT: Slot = const { Slot };
}

/// The calling thread's entry, created on first use; `None` during
/// thread-local teardown (after [`Slot`]'s destructor).
#[inline]
fn entry() -> Option<&'static Entry> {
    match ENTRY.try_with(Cell::get) {
        Ok(Some(e)) => Some(e),
        Ok(None) => register(),
        Err(_) => None,
    }
}

#[cold]
#[inline(never)]
fn register() -> Option<&'static Entry> {
    // Arms the destructor that gives the entry back; fails once the
    // thread-local teardown has begun, and then no entry is made.
    SLOT.try_with(|_| ()).ok()?;
    let e = {
        let mut reg = REGISTRY.lock();
        let e = reg.free.pop().unwrap_or_else(|| {
            Box::leak(Box::new(Entry {
                tid: AtomicI32::new(0),
                word: AtomicU64::new(0),
            }))
        });
        e.tid.store(sys::gettid(), Ordering::Relaxed);
        e.word.store(0, Ordering::Relaxed);
        reg.live.push(e);
        e
    };
    ENTRY.try_with(|c| c.set(Some(e))).ok()?;
    Some(e)
}

/// Runs `f` on the calling thread's entry, creating it on first use. Does
/// nothing during thread-local teardown.
#[inline]
fn with_entry(f: impl FnOnce(&Entry)) {
    if let Some(e) = entry() {
        f(e)
    }
}

/// A guard's `prctl(PR_SET_IO_FLUSHER)` under way, published for
/// [`Audit::current`]: [`begin_set`] marks the thread in transition before
/// the syscall, [`done`](SetMark::done) or [`failed`](SetMark::failed) ends
/// the transition after it, so that an audit never judges a state the
/// registry does not show yet.
///
/// Beside the ~200 ns syscall this costs one thread-local load and test,
/// one load and two stores: the word after the syscall is computed from the
/// word before it (only this thread writes it, so nothing changed it
/// meanwhile). The guards' outermost path uses the three steps directly, so
/// that a failure is one cold call with everything it needs.
#[must_use]
pub(crate) struct SetMark {
    e: &'static Entry,
    old: u64,
}

/// Marks the calling thread in transition: its guard is about to make the
/// syscall.
#[inline(always)]
pub(crate) fn begin_set() -> SetMark {
    let e = guard_entry();
    SetMark {
        e,
        old: e.begin_set(),
    }
}

impl SetMark {
    /// The syscall set the flag to `on`.
    #[inline(always)]
    pub(crate) fn done(self, on: bool) {
        self.e.end_set(self.old, on);
    }

    /// The syscall was refused: the word from before comes back (generation
    /// bumped).
    #[cold]
    #[inline(never)]
    pub(crate) fn failed(self) {
        self.e
            .word
            .store(self.old.wrapping_add(GENERATION_ONE), Ordering::Release);
    }
}

/// Runs a guard's `prctl(PR_SET_IO_FLUSHER, on)` (`set`) and publishes the
/// state it set (see [`SetMark`]).
#[inline]
pub(crate) fn guard_set<E>(on: bool, set: impl FnOnce(bool) -> Result<(), E>) -> Result<(), E> {
    let mark = begin_set();
    match set(on) {
        Ok(()) => {
            mark.done(on);
            Ok(())
        }
        Err(err) => {
            mark.failed();
            Err(err)
        }
    }
}

/// The entry a guard's syscall publishes to: the calling thread's, created
/// on first use, or during thread-local teardown (no entry can be made)
/// [`UNLISTED`]. Never "none", so that the guards' path has one branch (a
/// thread's first set) and no second way out.
#[inline(always)]
fn guard_entry() -> &'static Entry {
    match ENTRY.try_with(Cell::get) {
        Ok(Some(e)) => e,
        _ => guard_entry_cold(),
    }
}

#[cold]
#[inline(never)]
fn guard_entry_cold() -> &'static Entry {
    match ENTRY.try_with(Cell::get) {
        Ok(Some(e)) => e,
        Ok(None) => register().unwrap_or(&UNLISTED),
        Err(_) => &UNLISTED,
    }
}

/// The entry of threads in thread-local teardown: in no registry list, so
/// no audit reads it; the guards of such threads write it (atomically, so
/// several at once are harmless) and nothing else does.
static UNLISTED: Entry = Entry {
    tid: AtomicI32::new(0),
    word: AtomicU64::new(0),
};

/// An [`IoFlusher`](crate::IoFlusher)'s registration, dropped with it.
pub(crate) struct Claim(ClaimKind);

#[derive(Clone, Copy, PartialEq, Eq)]
enum ClaimKind {
    /// Nested or not effective: the guard does not decide the state.
    None,
    /// Took effect over a cleared state.
    OverClear,
    /// The outermost guard of a thread that was flagged already (inherited,
    /// or set raw): when it ends, nothing of the crate accounts for the
    /// flag any more.
    OverFlagged,
}

impl Claim {
    /// Registers an `IoFlusher` guard at nesting `level` (1 = outermost)
    /// that restores `restore` when dropped, if it takes effect there.
    #[inline]
    pub(crate) fn new(level: u32, restore: bool, effective: bool) -> Claim {
        let kind = match (effective, level, restore) {
            (false, _, _) => ClaimKind::None,
            (true, _, false) => ClaimKind::OverClear,
            (true, 1, true) => ClaimKind::OverFlagged,
            (true, _, true) => ClaimKind::None,
        };
        if kind != ClaimKind::None {
            with_entry(|e| e.update(|w| w + (1 << FLUSHERS_SHIFT)));
        }
        Claim(kind)
    }
}

impl Drop for Claim {
    #[inline]
    fn drop(&mut self) {
        if self.0 == ClaimKind::None {
            return;
        }
        let over_flagged = self.0 == ClaimKind::OverFlagged;
        with_entry(|e| {
            e.update(|w| {
                let w = if w & FLUSHERS_MASK != 0 {
                    w - (1 << FLUSHERS_SHIFT)
                } else {
                    w
                };
                if over_flagged {
                    w & !SCOPED_MASK | SCOPED_NONE
                } else {
                    w
                }
            })
        });
    }
}

mod build;
mod report;

/// The registry's writer side against the audit: what a thread in the middle
/// of a guard's syscall, and after one, looks like to [`Audit::current`]'s
/// logic (`audit_with`).
#[cfg(test)]
mod registry_tests {
    use super::build::{audit_with, word_of};
    use super::*;
    use crate::proc::current_tid;
    use crate::proc::{ThreadFlags, ThreadInfo};
    use crate::scope::tests::on_fake;
    use crate::sys::fake::{self, FakeThread, Mode};
    use crate::{IoFlusher, NoFsScope};

    fn audit_self() -> Verdict {
        let me = || ThreadFlags::from_bits(fake::state().unwrap().flags);
        let info = ThreadInfo {
            tid: current_tid(),
            name: "fake".into(),
            flags: me(),
        };
        audit_with(1, || Ok(vec![info]), |_| Ok(me()))
            .unwrap()
            .verdict(current_tid())
            .unwrap()
    }

    fn word() -> u64 {
        word_of(current_tid()).unwrap()
    }

    thread_local! {
        static SEEN: std::cell::RefCell<Vec<(Verdict, u64)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Inside the syscall: the kernel's flag has changed, the registry's
    /// state not yet.
    fn record() {
        let v = audit_self();
        SEEN.with(|s| s.borrow_mut().push((v, word())));
    }

    fn seen() -> Vec<(Verdict, u64)> {
        SEEN.with(|s| s.take())
    }

    /// The outermost set and restore each publish with one store before and
    /// one after the syscall: in between the thread is in transition (never
    /// judged on a state the registry does not show), after it the scoped
    /// bits say what the syscall set, with a new generation each time.
    #[test]
    fn a_thread_inside_its_guards_syscall_is_never_misjudged() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let _ = guard_entry();
            let w0 = word();
            fake::during_set(Some(record));
            let s = NoFsScope::try_enter().unwrap();
            let w1 = word();
            drop(s);
            let w2 = word();
            let f = IoFlusher::try_enter().unwrap();
            drop(f);
            fake::during_set(None);
            let inside = seen();
            assert_eq!(inside.len(), 4, "one audit inside each syscall");
            for (v, w) in &inside {
                assert_eq!(*v, Verdict::Unsettled, "judged mid-change: {v:?}");
                assert_ne!(w & IN_TRANSITION, 0);
            }
            assert_eq!(
                inside[0].1,
                w0 | IN_TRANSITION,
                "the mark is the only change"
            );
            assert_eq!(w1 & (IN_TRANSITION | SCOPED_MASK), SCOPED_ON);
            assert_eq!(w2 & (IN_TRANSITION | SCOPED_MASK), SCOPED_OFF);
            assert_eq!(w1 >> 32, (w0 >> 32) + 1, "the set bumps the generation");
            assert_eq!(w2 >> 32, (w1 >> 32) + 1, "the restore bumps the generation");
            assert_eq!(w1 & FLUSHERS_MASK, w0 & FLUSHERS_MASK);
            assert_eq!(audit_self(), Verdict::Clear);
        });
    }

    /// A refused set: the word from before comes back under a new
    /// generation (the in-transition mark then its end is no ABA for a
    /// reader that saw the word before the mark).
    #[test]
    fn a_refused_set_restores_the_word_with_a_new_generation() {
        on_fake(FakeThread::new(Mode::Filtered(libc::EACCES)), || {
            let _ = guard_entry();
            let w0 = word();
            fake::during_set(Some(record));
            assert!(NoFsScope::try_enter().is_err());
            fake::during_set(None);
            let inside = seen();
            assert_eq!(inside, vec![(Verdict::Unsettled, w0 | IN_TRANSITION)]);
            let w1 = word();
            assert_eq!(w1 & !(u64::MAX << 32), w0 & !(u64::MAX << 32));
            assert_eq!(w1 >> 32, (w0 >> 32) + 1);
            assert_eq!(audit_self(), Verdict::Clear);
        });
    }

    /// During thread-local teardown a guard's syscall writes the unlisted
    /// entry, which no audit reads.
    #[test]
    fn the_unlisted_entry_is_in_no_list() {
        let reg = REGISTRY.lock();
        assert!(!reg.live.iter().any(|e| std::ptr::eq(*e, &UNLISTED)));
        assert!(!reg.free.iter().any(|e| std::ptr::eq(*e, &UNLISTED)));
    }
}

#[cfg(test)]
mod tests;

pub use report::{Audit, AuditedThread, Verdict};
