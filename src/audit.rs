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
    /// generation bump: the bit itself changes the word, and the update
    /// that ends the transition bumps it (so set + clear is never ABA).
    #[inline]
    fn mark_in_transition(&self) {
        let old = self.word.load(Ordering::Relaxed);
        self.word.store(old | IN_TRANSITION, Ordering::Release);
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

/// Runs a guard's `prctl(PR_SET_IO_FLUSHER, on)` and publishes the state
/// it set. Marks the thread in transition around the syscall, so that an
/// audit never judges a state the registry does not show yet.
///
/// Beside the ~200 ns syscall this costs one thread-local load and test,
/// and two plain load + store pairs.
#[inline]
pub(crate) fn guard_set<E>(on: bool, set: impl FnOnce(bool) -> Result<(), E>) -> Result<(), E> {
    let Some(e) = entry() else {
        // Thread-local teardown: no entry, the syscall all the same.
        return set(on);
    };
    e.mark_in_transition();
    match set(on) {
        Ok(()) => {
            let scoped = if on { SCOPED_ON } else { SCOPED_OFF };
            e.update(|w| w & !(IN_TRANSITION | SCOPED_MASK) | scoped);
            Ok(())
        }
        Err(err) => {
            e.update(|w| w & !IN_TRANSITION);
            Err(err)
        }
    }
}

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
#[cfg(test)]
mod tests;

pub use report::{Audit, AuditedThread, Verdict};
