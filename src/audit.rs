//! Auditing the own process: does the kernel's flag on each thread match what
//! the crate's guards account for?
//!
//! The flag is per thread, inherited by `clone()`, and anyone — a C library,
//! a raw `prctl`, a launcher — can change it behind the guards' back. Both
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

use crate::proc::{ThreadFlags, ThreadInfo};
use crate::sys;
use parking_lot::Mutex;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::io;
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

/// The registry's writer side against the audit: what a thread in the middle
/// of a guard's syscall, and after one, looks like to [`Audit::current`]'s
/// logic (`audit_with`).
#[cfg(test)]
mod registry_tests {
    use super::*;
    use crate::proc::current_tid;
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

// ---------------------------------------------------------------------------
// The audit (read side)
// ---------------------------------------------------------------------------

/// How one thread's kernel flag compares with the crate's guards.
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// use reclaim_scope::{proc::current_tid, audit::{Audit, Verdict}};
///
/// let report = Audit::current()?;
/// match report.verdict(current_tid()) {
///     Some(Verdict::Missing) => eprintln!("this worker lost its I/O-flusher flag"),
///     Some(v) => println!("this thread: {v}"),
///     None => unreachable!("the calling thread is part of the process"),
/// }
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Verdict {
    /// Not flagged, and no guard expects it to be (this includes an
    /// [`IoFlusher`](crate::IoFlusher) suspended by an
    /// [`AllowFsReclaim`](crate::AllowFsReclaim)).
    Clear,
    /// Flagged, and a live [`IoFlusher`](crate::IoFlusher) accounts for it
    /// (for an io_uring worker: one of the thread it works for, see
    /// [`Audit::current`]).
    Flusher,
    /// Flagged by a guard of this crate that made the syscall, typically an
    /// outermost [`NoFsScope`](crate::NoFsScope) alive at this moment.
    InScope,
    /// A live [`IoFlusher`](crate::IoFlusher) expects the flag, but the
    /// kernel says it is clear: someone cleared it behind the guard's back
    /// (a raw `prctl(PR_SET_IO_FLUSHER, 0)`, a C library,
    /// [`set_thread_io_flusher`](crate::set_thread_io_flusher)). The thread
    /// is not protected.
    Missing,
    /// Flagged, but no guard of this crate accounts for it: inherited from
    /// the thread that created it (spawned inside a scope), from a launcher
    /// (`reclaim-scope exec`), or set with a raw `prctl`.
    Unaccounted,
    /// The thread kept changing its flag while the audit read it.
    Unsettled,
}

impl Verdict {
    /// Whether this verdict is a finding: [`Missing`](Verdict::Missing) or
    /// [`Unaccounted`](Verdict::Unaccounted).
    ///
    /// ```
    /// use reclaim_scope::audit::Verdict;
    /// assert!(Verdict::Missing.is_finding());
    /// assert!(!Verdict::Flusher.is_finding());
    /// ```
    pub fn is_finding(self) -> bool {
        matches!(self, Verdict::Missing | Verdict::Unaccounted)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Clear => "clear",
            Verdict::Flusher => "flagged, held by an IoFlusher guard",
            Verdict::InScope => "flagged by a scope guard (inside a NoFsScope or IoFlusher)",
            Verdict::Missing => {
                "NOT flagged although an IoFlusher guard is alive: cleared behind the guard's \
                 back (a raw prctl(PR_SET_IO_FLUSHER, 0), a C library, or \
                 set_thread_io_flusher(false)); this thread is not protected"
            }
            Verdict::Unaccounted => {
                "flagged, but no guard accounts for it: inherited from the thread that created \
                 it (spawned inside a scope? spawn helpers inside AllowFsReclaim), from a \
                 launcher such as `reclaim-scope exec`, or set with a raw prctl"
            }
            Verdict::Unsettled => "kept changing while the audit read it",
        })
    }
}

/// One thread of the audited process.
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// for t in reclaim_scope::audit::Audit::current()?.threads() {
///     println!("{:>7} {:<16} {} -> {}", t.tid, t.name, t.flags, t.verdict);
/// }
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditedThread {
    /// The kernel's thread id.
    pub tid: i32,
    /// The thread's name (`comm`).
    pub name: String,
    /// The kernel's flags of the thread, read from `/proc`.
    pub flags: ThreadFlags,
    /// How the flags compare with the guards.
    pub verdict: Verdict,
}

/// The result of [`Audit::current`]: every thread of the process with a [`Verdict`].
///
/// `Display` prints a summary line and the findings; the alternate form
/// (`{:#}`) lists every thread.
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// let report = reclaim_scope::audit::Audit::current()?;
/// if !report.is_clean() {
///     eprintln!("{report}"); // "audit of process 42: 5 threads, 2 flagged; 1 missing, ..."
/// }
/// println!("{report:#}"); // every thread with its verdict
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Audit {
    pid: i32,
    threads: Vec<AuditedThread>,
}

impl Audit {
    /// The audited process.
    ///
    /// ```
    /// # #[cfg(target_os = "linux")] {
    /// assert_eq!(reclaim_scope::audit::Audit::current()?.pid(), std::process::id() as i32);
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Every thread, ordered by thread id.
    ///
    /// ```
    /// # #[cfg(target_os = "linux")] {
    /// let report = reclaim_scope::audit::Audit::current()?;
    /// assert!(report.threads().iter().any(|t| t.tid == reclaim_scope::proc::current_tid()));
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn threads(&self) -> &[AuditedThread] {
        &self.threads
    }

    /// Threads a live [`IoFlusher`](crate::IoFlusher) expects to be flagged
    /// but the kernel says are clear ([`Verdict::Missing`]).
    ///
    /// ```
    /// # #[cfg(target_os = "linux")] {
    /// let _flusher = reclaim_scope::IoFlusher::enter();
    /// // ... a C library calls prctl(PR_SET_IO_FLUSHER, 0) on this thread ...
    /// for t in reclaim_scope::audit::Audit::current()?.missing() {
    ///     eprintln!("worker {} ({}) is not protected", t.tid, t.name);
    /// }
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn missing(&self) -> impl Iterator<Item = &AuditedThread> {
        self.with(Verdict::Missing)
    }

    /// Flagged threads no guard accounts for ([`Verdict::Unaccounted`]).
    ///
    /// ```
    /// # #[cfg(target_os = "linux")] {
    /// let n = reclaim_scope::audit::Audit::current()?.unaccounted().count();
    /// println!("{n} threads are I/O flushers without a guard");
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn unaccounted(&self) -> impl Iterator<Item = &AuditedThread> {
        self.with(Verdict::Unaccounted)
    }

    /// The verdict on thread `tid`, if it was seen.
    ///
    /// ```
    /// # #[cfg(target_os = "linux")] {
    /// use reclaim_scope::{proc::current_tid, audit::Audit};
    /// assert!(Audit::current()?.verdict(current_tid()).is_some());
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn verdict(&self, tid: i32) -> Option<Verdict> {
        self.threads
            .iter()
            .find(|t| t.tid == tid)
            .map(|t| t.verdict)
    }

    /// Whether nothing is missing and nothing is unaccounted.
    ///
    /// ```
    /// # #[cfg(target_os = "linux")] {
    /// let report = reclaim_scope::audit::Audit::current()?;
    /// assert_eq!(report.is_clean(), report.missing().count() + report.unaccounted().count() == 0);
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_clean(&self) -> bool {
        !self.threads.iter().any(|t| t.verdict.is_finding())
    }

    fn with(&self, v: Verdict) -> impl Iterator<Item = &AuditedThread> {
        self.threads.iter().filter(move |t| t.verdict == v)
    }
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flagged = self.threads.iter().filter(|t| t.flags.noio()).count();
        let missing = self.missing().count();
        let unaccounted = self.unaccounted().count();
        write!(
            f,
            "audit of process {}: {} thread{}, {flagged} flagged",
            self.pid,
            self.threads.len(),
            if self.threads.len() == 1 { "" } else { "s" },
        )?;
        if self.is_clean() {
            f.write_str("; every flag is accounted for")?;
        } else {
            write!(f, "; {missing} missing, {unaccounted} unaccounted")?;
        }
        for t in &self.threads {
            if !f.alternate() && !t.verdict.is_finding() {
                continue;
            }
            let label = match t.verdict {
                Verdict::Missing => "MISSING",
                Verdict::Unaccounted => "UNACCOUNTED",
                _ => "ok",
            };
            write!(
                f,
                "\n  {label:<11} tid {} {:?} [{}]: {}",
                t.tid, t.name, t.flags, t.verdict
            )?;
        }
        Ok(())
    }
}

impl Audit {
    /// Audits the calling process: compares the kernel's flag of every thread
    /// (read from `/proc/self/task`, no capability needed) with what live
    /// guards account for.
    ///
    /// - [`missing`](Audit::missing): a live [`IoFlusher`](crate::IoFlusher)
    ///   expects the flag, the kernel has it clear.
    /// - [`unaccounted`](Audit::unaccounted): the kernel has the flag set, and
    ///   neither a live `IoFlusher` nor a guard that made the syscall (an
    ///   outermost [`NoFsScope`](crate::NoFsScope) on a clear thread) accounts
    ///   for it.
    ///
    /// io_uring's own threads — io-wq workers (`iou-wrk-TID`) and SQPOLL threads
    /// (`iou-sqp-TID`), recognised by the kernel's `PF_IO_WORKER` bit and that
    /// name — never run the process's code, so no guard of theirs exists: each
    /// copied its flags from thread `TID` when it was created and serves `TID`'s
    /// requests. Such a thread is judged by `TID`'s guards: flagged while `TID`
    /// holds a live `IoFlusher` is [`Flusher`](Verdict::Flusher); **clear while
    /// `TID` holds one is [`Missing`](Verdict::Missing)** (it was created
    /// before the guard, and keeps serving `TID`'s blocking requests
    /// unflagged); flagged while `TID` holds none (or `TID` is gone) is
    /// [`Unaccounted`](Verdict::Unaccounted).
    ///
    /// It is a snapshot: a thread whose guards change the flag while it is read
    /// is read again, and reported [`Verdict::Unsettled`] if it never holds
    /// still.
    ///
    /// # What it cannot know
    ///
    /// A [`NoFsScope`](crate::NoFsScope) on a thread that was flagged already
    /// makes no syscall and registers nothing (that is what keeps it at a few
    /// instructions), so such a thread is [`Unaccounted`](Verdict::Unaccounted)
    /// — rightly: it stays flagged after the scope ends. For the same reason a
    /// thread that inherited the flag, then changed it with guards and returned
    /// to depth 0, may still count as [`InScope`](Verdict::InScope). Raw
    /// `prctl` calls made *outside* any guard are seen only through the
    /// kernel's state. After `fork()` the child does not know the guards taken
    /// before it.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read (not mounted, not Linux).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(target_os = "linux")] {
    /// let report = reclaim_scope::audit::Audit::current()?;
    /// println!("{report}");
    /// for t in report.unaccounted() {
    ///     eprintln!("thread {} ({}) is an I/O flusher by accident", t.tid, t.name);
    /// }
    /// // This program never flagged anything, nor were its threads inherited
    /// // flagged (unless it was started by `reclaim-scope exec`).
    /// if !reclaim_scope::proc::ThreadFlags::current()?.noio() {
    ///     assert!(report.is_clean());
    /// }
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn current() -> io::Result<Audit> {
        let pid = std::process::id() as i32;
        audit_with(
            pid,
            || crate::proc::threads_of(pid),
            |tid| ThreadFlags::of_task(pid, tid),
        )
    }
}

/// How often a thread that changed during the read is read again.
const REREADS: u32 = 16;

fn snapshot() -> HashMap<i32, u64> {
    REGISTRY
        .lock()
        .live
        .iter()
        .map(|e| (e.tid(), e.read()))
        .collect()
}

fn word_of(tid: i32) -> Option<u64> {
    REGISTRY
        .lock()
        .live
        .iter()
        .rev()
        .find(|e| e.tid() == tid)
        .map(|e| e.read())
}

fn settled(before: Option<u64>, after: Option<u64>) -> bool {
    before == after && before.map_or(true, |w| w & IN_TRANSITION == 0)
}

/// `PF_IO_WORKER` (`include/linux/sched.h`): an io_uring worker or SQPOLL
/// thread (`create_io_thread()`).
const PF_IO_WORKER: u32 = 0x0000_0010;

/// The thread an io_uring thread works for: `TID` of `iou-wrk-TID` (io-wq,
/// `io_uring/io-wq.c`) or `iou-sqp-TID` (SQPOLL, `io_uring/sqpoll.c`), if
/// the kernel marks it `PF_IO_WORKER` (a thread of the process could name
/// itself so).
fn io_uring_owner(t: &ThreadInfo) -> Option<i32> {
    if t.flags.bits() & PF_IO_WORKER == 0 {
        return None;
    }
    let n = &t.name;
    n.strip_prefix("iou-wrk-")
        .or_else(|| n.strip_prefix("iou-sqp-"))?
        .parse()
        .ok()
}

/// The audit over a thread list and a per-thread re-reader (real `/proc`, or
/// the fake kernel in unit tests).
fn audit_with(
    pid: i32,
    list: impl FnOnce() -> io::Result<Vec<ThreadInfo>>,
    reread: impl Fn(i32) -> io::Result<ThreadFlags>,
) -> io::Result<Audit> {
    let before = snapshot();
    let threads = list()?;
    let after = snapshot();
    let mut out = Vec::with_capacity(threads.len());
    for t in threads {
        let (mut b, mut a) = (before.get(&t.tid).copied(), after.get(&t.tid).copied());
        let mut flags = t.flags;
        let mut tries = 0;
        let mut gone = false;
        while !settled(b, a) && tries < REREADS {
            tries += 1;
            std::thread::yield_now();
            b = word_of(t.tid);
            match reread(t.tid) {
                Ok(f) => flags = f,
                Err(_) => {
                    // The thread exited: it is no longer part of the process.
                    gone = true;
                    break;
                }
            }
            a = word_of(t.tid);
        }
        if gone {
            continue;
        }
        if let Some(owner) = io_uring_owner(&t) {
            let w = after.get(&owner).copied().unwrap_or(0);
            let expected = w & FLUSHERS_MASK != 0;
            let verdict = match (flags.noio(), expected) {
                (true, true) => Verdict::Flusher,
                (true, false) => Verdict::Unaccounted,
                (false, true) => Verdict::Missing,
                (false, false) => Verdict::Clear,
            };
            out.push(AuditedThread {
                tid: t.tid,
                name: t.name,
                flags,
                verdict,
            });
            continue;
        }
        let verdict = if settled(b, a) {
            judge(flags, a)
        } else {
            Verdict::Unsettled
        };
        out.push(AuditedThread {
            tid: t.tid,
            name: t.name,
            flags,
            verdict,
        });
    }
    out.sort_by_key(|t| t.tid);
    Ok(Audit { pid, threads: out })
}

fn judge(flags: ThreadFlags, word: Option<u64>) -> Verdict {
    let w = word.unwrap_or(0);
    let flushers = (w & FLUSHERS_MASK) >> FLUSHERS_SHIFT;
    let scoped = w & SCOPED_MASK;
    match (flags.noio(), flushers > 0, scoped) {
        (true, true, _) => Verdict::Flusher,
        (true, false, SCOPED_ON) => Verdict::InScope,
        (true, false, _) => Verdict::Unaccounted,
        (false, true, SCOPED_OFF) => Verdict::Clear,
        (false, true, _) => Verdict::Missing,
        (false, false, _) => Verdict::Clear,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::tests::on_fake;
    use crate::sys::fake::{self, FakeThread, Mode};
    use crate::{
        proc::{current_tid, ThreadFlags},
        set_thread_io_flusher, AllowFsReclaim, IoFlusher, NoFsScope,
    };

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
            let flagged =
                ThreadFlags::from_bits(PF_IO_WORKER | PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE);
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
            let a =
                audit_with(1, || Ok(vec![info.clone()]), |_| Ok(ThreadFlags::default())).unwrap();
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
}
