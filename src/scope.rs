//! Scope guards over the thread's allocation context.
//!
//! Mechanics shared by [`NoFsScope`], [`IoFlusher`] and [`AllowFsReclaim`]:
//!
//! - A thread-local stack depth. Each guard remembers its level and the
//!   state to restore, as the kernel's `memalloc_noio_save()` /
//!   `memalloc_noio_restore()` do; only a guard that changes the state makes
//!   a syscall, so nested scopes and scopes on an already-flagged thread are
//!   a few instructions.
//! - The kernel's real state is probed once per thread, at the first entry
//!   (threads inherit the flag from the thread that created them), and kept
//!   in step with every change this crate makes.
//! - A refusal (`EPERM`, `EINVAL`) is remembered for the process, so a
//!   best-effort scope on an unprivileged daemon costs no syscall after the
//!   first, and is reported once ([`crate::degradation`]).
//! - Guards dropped out of order are a bug: debug builds panic, release
//!   builds keep the flag right for the guards still alive.

use crate::{report, sys, Error};
use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicI32, Ordering};

const OP_SET: &str = "prctl(PR_SET_IO_FLUSHER)";
const OP_GET: &str = "prctl(PR_GET_IO_FLUSHER)";

/// The per-thread scope state, packed in one word so that the fast paths
/// are a load, a compare and a store:
///
/// | bits | meaning |
/// |---|---|
/// | 0 | `KNOWN`: the kernel's flag was probed (threads inherit it) |
/// | 1 | `KERNEL_ON`: the kernel's flag as last probed or set |
/// | 2 | `DESIRED`: the state the top guard asks for; at depth 0 the thread's own state |
/// | 3 | `OUT_OF_ORDER`: guards dropped before the guards above them are pending |
/// | 4–31 | depth: guards on this thread's stack |
///
/// A guard keeps the word to go back to, packed the same way
/// (`(level - 1) << 4 | restore << 2 | effective`): "dropped in order,
/// nothing pending" is `(word ^ (guard + DEPTH_ONE)) >> 3 == 0`, and the word
/// after the drop is the guard's bits with the kernel's, two instructions
/// on the load → store chain of the drop.
///
/// A `Cell<u32>` has no destructor, so the thread-local is usable (and never
/// panics) during thread-local teardown.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Word(u32);

const KNOWN: u32 = 1;
const KERNEL_ON: u32 = 1 << 1;
const KERNEL_MASK: u32 = KNOWN | KERNEL_ON;
const DESIRED: u32 = 1 << 2;
const OUT_OF_ORDER: u32 = 1 << 3;
const DEPTH_SHIFT: u32 = 4;
const DEPTH_ONE: u32 = 1 << DEPTH_SHIFT;
/// Deepest nesting; the level above it is `DETACHED`.
const MAX_DEPTH: u32 = (u32::MAX >> DEPTH_SHIFT) - 1;
/// The level of a guard created where the thread-local state is gone
/// (thread teardown): it does nothing. Never a real depth.
const DETACHED: u32 = u32::MAX >> DEPTH_SHIFT;
/// Bit `i` is set when the low three bits `i` of a word say "the kernel is
/// known and in the desired state": 0b001 (clear, clear) and 0b111 (on, on).
const IN_DESIRED_STATE: u32 = 1 << 0b001 | 1 << 0b111;

impl Word {
    #[inline]
    fn depth(self) -> u32 {
        self.0 >> DEPTH_SHIFT
    }
    #[inline]
    fn kernel(self) -> u32 {
        self.0 & KERNEL_MASK
    }
    /// Records the kernel's flag; at depth 0 it is also the thread's own
    /// state, which the outermost guard will restore.
    #[inline]
    fn with_kernel(self, on: bool) -> Word {
        let mut w = self.0 & !KERNEL_MASK | kernel_bits(on);
        if self.depth() == 0 {
            w = w & !DESIRED | u32::from(on) << 2;
        }
        Word(w)
    }
    #[inline]
    fn in_desired_state(self) -> bool {
        IN_DESIRED_STATE >> (self.0 & 0b111) & 1 != 0
    }
}

#[inline]
fn kernel_bits(on: bool) -> u32 {
    if on {
        KNOWN | KERNEL_ON
    } else {
        KNOWN
    }
}

thread_local! {
    static STATE: Cell<Word> = const { Cell::new(Word(0)) };
    /// `(level, restore)` of guards dropped before the guards above them.
    /// Cold: touched only after a nesting bug.
    static PENDING: RefCell<Vec<(u32, bool)>> = const { RefCell::new(Vec::new()) };
}

/// The process-wide memo of a refused `PR_SET_IO_FLUSHER`: 0, or the errno.
static REFUSED: AtomicI32 = AtomicI32::new(0);

fn refused() -> i32 {
    #[cfg(test)]
    if let Some(s) = sys::fake::state() {
        return s.refused;
    }
    REFUSED.load(Ordering::Relaxed)
}

fn set_refused(errno: i32) {
    #[cfg(test)]
    if sys::fake::state().is_some() {
        return sys::fake::update(|s| s.refused = errno);
    }
    REFUSED.store(errno, Ordering::Relaxed);
}

/// `prctl(PR_SET_IO_FLUSHER, on)`, published for `Audit::current()`: the one call
/// every guard that changes the kernel's state makes. Lean (an `Errno` in a
/// register, no `Error` built) because it is the outermost guard's common
/// path, not a cold one; inlined into the two out-of-line callers of that
/// path ([`enter_change`], [`restore`]), so each is one call deep.
#[inline(always)]
fn set_kernel_flag(on: bool) -> Result<(), sys::Errno> {
    crate::audit::guard_set(on, sys::set_io_flusher)
}

/// A refused set: remembered for the process when it is a missing
/// capability (`EPERM`) or an old kernel (`EINVAL`), so later scopes make no
/// syscall; any other errno (a seccomp filter, an LSM) is asked again.
#[cold]
#[inline(never)]
fn refusal(errno: sys::Errno) -> Error {
    if errno == sys::EPERM || errno == sys::EINVAL {
        set_refused(errno);
    }
    Error::from_errno(OP_SET, errno)
}

/// Sets the flag unless a refusal is remembered; remembers a new refusal.
fn apply(on: bool) -> Result<(), Error> {
    let memo = refused();
    if memo != 0 {
        return Err(Error::from_errno(OP_SET, memo));
    }
    set_kernel_flag(on).map_err(refusal)
}

/// Reads the calling thread's real flag (once per thread).
#[cold]
#[inline(never)]
fn probe(state: &Cell<Word>) {
    let on = match sys::thread_flags_self() {
        Ok(bits) => bits & sys::PF_MEMALLOC_NOIO != 0,
        // No /proc: ask the prctl (which needs the capability; without it
        // the flag cannot have been set by this process's code anyway).
        Err(_) => sys::get_io_flusher().unwrap_or(false),
    };
    state.set(state.get().with_kernel(on));
}

/// Changes the kernel flag and records it: `Ok(true)` if done, `Ok(false)`
/// if refused in best-effort mode (reported once), `Err` if refused in
/// strict mode.
#[cold]
#[inline(never)]
fn change(state: &Cell<Word>, on: bool, strict: bool) -> Result<bool, Error> {
    let memo = refused();
    if memo != 0 && !strict {
        // Refused before: no syscall, no error to build unless this is the
        // first best-effort scope to run unprotected.
        report::degraded_errno(OP_SET, memo);
        return Ok(false);
    }
    match apply(on) {
        Ok(()) => {
            let w = state.get();
            state.set(Word(w.0 & !KERNEL_MASK | kernel_bits(on)));
            Ok(true)
        }
        Err(e) if strict => Err(e),
        Err(e) => {
            report::degraded(&e);
            Ok(false)
        }
    }
}

/// Pushes a level asking for `on`; the guard restores the current
/// `DESIRED` bit.
#[inline(always)]
fn push(state: &Cell<Word>, w: Word, on: bool, effective: bool) -> Scope {
    if w.depth() >= MAX_DEPTH {
        too_deep();
    }
    let up = w.0 + DEPTH_ONE;
    state.set(Word(up & !DESIRED | u32::from(on) << 2));
    Scope::from_packed(w.0 & !(KERNEL_MASK | OUT_OF_ORDER) | u32::from(effective))
}

#[cold]
#[inline(never)]
fn too_deep() -> ! {
    panic!("reclaim-scope: more than {MAX_DEPTH} nested scopes on one thread")
}

/// The fast path of every guard: already in the requested state (nested,
/// or inherited), no syscall. `None`: the state must change.
#[inline(always)]
fn enter_fast(state: &Cell<Word>, on: bool) -> Option<Scope> {
    let w = state.get();
    if w.kernel() == kernel_bits(on) {
        return Some(push(state, w, on, true));
    }
    None
}

/// A guard that changes the kernel's state: out of line, so that the fast
/// path stays a few inlined instructions.
#[inline(never)]
fn enter_change(on: bool, strict: bool) -> Result<Scope, Error> {
    // Small closures, each a thread-local access: one that returned the
    // whole `Result` would copy it through the stack.
    let Ok(w) = STATE.try_with(Cell::get) else {
        // Thread-local teardown; `Scope::enter` checked, but stay total.
        return Ok(Scope::detached());
    };
    // `enter_fast` failed, so a known kernel flag is in the other state
    // (`KERNEL_ON` is never set without `KNOWN`).
    if w.0 & KNOWN != 0 && refused() == 0 {
        debug_assert!(w.kernel() == kernel_bits(!on));
        // Nothing refused: the outermost guard's set. The guard restores
        // the DESIRED bit of `w`.
        return match set_kernel_flag(on) {
            Ok(()) => Ok(STATE
                .with(|state| push(state, Word(w.0 & !KERNEL_MASK | kernel_bits(on)), on, true))),
            Err(errno) => enter_refused(w, on, strict, errno),
        };
    }
    enter_slow(on, strict)
}

/// The kernel refused the outermost guard's set: fail (strict) or push a
/// level that is not effective (best effort, reported once).
#[cold]
#[inline(never)]
fn enter_refused(w: Word, on: bool, strict: bool, errno: sys::Errno) -> Result<Scope, Error> {
    let e = refusal(errno);
    if strict {
        return Err(e);
    }
    report::degraded(&e);
    Ok(STATE.with(|state| push(state, w, on, false)))
}

#[cold]
#[inline(never)]
fn enter_slow(on: bool, strict: bool) -> Result<Scope, Error> {
    STATE.with(|state| enter_slow_at(state, on, strict))
}

fn enter_slow_at(state: &Cell<Word>, on: bool, strict: bool) -> Result<Scope, Error> {
    if state.get().kernel() & KNOWN == 0 {
        probe(state);
    }
    // The state to restore is the DESIRED bit from before any change.
    let before = state.get();
    let effective = before.kernel() == kernel_bits(on) || change(state, on, strict)?;
    let now = state.get();
    Ok(push(
        state,
        Word(now.0 & !DESIRED | before.0 & DESIRED),
        on,
        effective,
    ))
}

#[inline(always)]
fn exit(state: &Cell<Word>, scope: &Scope) {
    let w = state.get();
    let g = scope.packed;
    // Same level and nothing pending (the guard's bit 3 is always 0).
    if (w.0 ^ (g + DEPTH_ONE)) >> 3 != 0 {
        return exit_slow(state, scope);
    }
    // Down one level; DESIRED becomes what this guard restores.
    let down = Word(w.0 & KERNEL_MASK | g & !KERNEL_MASK);
    state.set(down);
    if !down.in_desired_state() {
        restore(down, scope.restore());
    }
}

/// Puts the kernel flag back to `on` when a guard that changed it ends.
/// Best effort: a drop cannot fail. A refusal here can only follow a
/// refusal at entry, which was reported already.
#[inline(never)]
fn restore(down: Word, on: bool) {
    let _ = STATE.try_with(|state| {
        if down.kernel() & KNOWN != 0 && refused() == 0 {
            // Known to be in the other state (else `down` would be in the
            // desired one), nothing refused: the outermost guard's restore.
            match set_kernel_flag(on) {
                Ok(()) => state.set(Word(down.0 & !KERNEL_MASK | kernel_bits(on))),
                Err(errno) => report::degraded(&refusal(errno)),
            }
        } else {
            let _ = change(state, on, false);
        }
    });
}

/// Out-of-order drops, pending out-of-order entries, and detached guards.
#[cold]
#[inline(never)]
fn exit_slow(state: &Cell<Word>, scope: &Scope) {
    if scope.level() == DETACHED {
        return;
    }
    let w = state.get();
    let depth = w.depth();
    if scope.level() != depth {
        // The guards above this one are still alive and decide the state,
        // so nothing changes now; this guard's restore value is kept until
        // the guard above it is dropped.
        let _ = PENDING.try_with(|v| v.borrow_mut().push((scope.level(), scope.restore())));
        state.set(Word(w.0 | OUT_OF_ORDER));
        if cfg!(debug_assertions) && !std::thread::panicking() {
            panic!(
                "reclaim-scope: a scope guard of nesting level {} was dropped while the \
                 thread is at level {}: guards must be dropped in the reverse order of \
                 their creation (was one moved into a struct, or leaked with mem::forget?). \
                 The thread's flag stays right for the guards still alive.",
                scope.level(),
                depth
            );
        }
        return;
    }
    // In order, with out-of-order drops pending below: pop them too.
    let mut level = depth - 1;
    let mut target = scope.restore();
    let mut pending = false;
    let _ = PENDING.try_with(|v| {
        let mut v = v.borrow_mut();
        while let Some(i) = v.iter().position(|&(l, _)| l == level && level > 0) {
            target = v.swap_remove(i).1;
            level -= 1;
        }
        pending = !v.is_empty();
    });
    let mut low = w.0 & KERNEL_MASK | u32::from(target) << 2;
    if pending {
        low |= OUT_OF_ORDER;
    }
    let w = Word(level << DEPTH_SHIFT | low);
    state.set(w);
    if !w.in_desired_state() {
        let _ = change(state, target, false);
    }
}

/// The mechanics behind every guard: one level of the thread's stack,
/// packed as `(level - 1) << 4 | restore << 2 | effective` (see [`Word`]).
struct Scope {
    packed: u32,
    /// `!Send` and `!Sync`: the flag belongs to the thread.
    _not_send: PhantomData<*mut ()>,
}

impl Scope {
    #[inline]
    fn from_packed(packed: u32) -> Scope {
        Scope {
            packed,
            _not_send: PhantomData,
        }
    }
    /// The guard of a thread whose thread-local state is gone: does nothing.
    #[inline]
    fn detached() -> Scope {
        Scope::from_packed((DETACHED - 1) << DEPTH_SHIFT)
    }
    #[inline]
    fn level(&self) -> u32 {
        (self.packed >> DEPTH_SHIFT) + 1
    }
    #[inline]
    fn restore(&self) -> bool {
        self.packed & DESIRED != 0
    }
    #[inline]
    fn effective(&self) -> bool {
        self.packed & 1 != 0
    }

    #[inline(always)]
    fn enter(on: bool, strict: bool) -> Result<Scope, Error> {
        match STATE.try_with(|st| enter_fast(st, on)) {
            Ok(Some(scope)) => Ok(scope),
            Ok(None) => enter_change(on, strict),
            // Thread-local teardown. Lazily: an unused fallback guard would
            // be dropped, i.e. exited.
            Err(_) => Ok(Scope::detached()),
        }
    }
}

impl Drop for Scope {
    #[inline(always)]
    fn drop(&mut self) {
        let _ = STATE.try_with(|st| exit(st, self));
    }
}

macro_rules! guard_common {
    ($ty:ident) => {
        impl $ty {
            #[doc = concat!("Runs `f` inside a best-effort [`", stringify!($ty), "`] (see [`",
                stringify!($ty), "::enter`]).")]
            ///
            /// The closure form of the guard: the one family of closure helpers
            /// is `run`/`try_run` on every guard type and on
            /// [`AllocContext`](crate::AllocContext).
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!("let len = reclaim_scope::", stringify!($ty), "::run(|| vec![0u8; 4096].len());")]
            /// assert_eq!(len, 4096);
            /// ```
            #[inline]
            pub fn run<R>(f: impl FnOnce() -> R) -> R {
                let _guard = $ty::enter();
                f()
            }

            #[doc = concat!("Runs `f` inside a strict [`", stringify!($ty), "`] (see [`",
                stringify!($ty), "::try_enter`]), or returns why the kernel refused: then `f` \
                does not run.")]
            ///
            /// # Errors
            ///
            /// The [`Error`] of `try_enter`: the kernel refused the `prctl`
            /// (`EPERM` without `CAP_SYS_RESOURCE`, `EINVAL` before Linux 5.6).
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!("match reclaim_scope::", stringify!($ty), "::try_run(|| 42) {")]
            ///     Ok(v) => assert_eq!(v, 42),
            ///     Err(e) => eprintln!("not run: {e}"),
            /// }
            /// ```
            #[inline]
            pub fn try_run<R>(f: impl FnOnce() -> R) -> Result<R, Error> {
                let _guard = $ty::try_enter()?;
                Ok(f())
            }

            /// Whether the kernel flag is in the state this guard asks for.
            ///
            /// `false` only for a best-effort guard whose request was
            /// refused (see [`degradation`](crate::degradation)).
            #[inline]
            pub fn is_effective(&self) -> bool {
                self.scope.effective()
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("level", &self.scope.level())
                    .field("effective", &self.scope.effective())
                    .finish()
            }
        }
    };
}

#[cfg(feature = "unstable-bench")]
#[doc(hidden)]
pub mod __bench;
mod guards;
pub(crate) mod propagation;
mod raw;
mod support;
#[cfg(test)]
pub(crate) mod tests;

pub use guards::{AllowFsReclaim, IoFlusher, NoFsScope};
pub use raw::{refresh_thread_state, set_thread_io_flusher, thread_io_flusher};
pub use support::{support, Support};
