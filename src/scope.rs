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
//! - A refusal (`EPERM`, `EINVAL`) is remembered per thread (capabilities
//!   are per thread), so a best-effort scope on an unprivileged daemon costs
//!   no syscall after each thread's first, and is reported once per process
//!   ([`crate::degradation`]). One thread's refusal never stops another
//!   thread that holds the capability.
//! - Guards dropped out of order are a bug: debug builds panic, release
//!   builds keep the flag right for the guards still alive.

use crate::{report, sys, Error};
use std::cell::{Cell, RefCell};
use std::marker::PhantomData;

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

/// The thread's memo of a refused `PR_SET_IO_FLUSHER` (0, or the errno):
/// per thread, as capabilities are (see [`sys::refused`]).
#[inline(always)]
fn refused() -> i32 {
    sys::refused()
}

fn set_refused(errno: i32) {
    sys::set_refused(errno)
}

/// `prctl(PR_SET_IO_FLUSHER, on)`, published for `Audit::current()`: the call
/// every guard that changes the kernel's state makes, on the cold paths.
/// The outermost guard's two out-of-line functions ([`enter_change`],
/// [`restore`]) make the same three steps themselves (mark, syscall, done or
/// failed), with a failure in one cold call.
#[inline]
fn set_kernel_flag(on: bool) -> Result<(), sys::Errno> {
    crate::audit::guard_set(on, sys::set_io_flusher)
}

/// A refused set: remembered for the thread when it is a missing
/// capability (`EPERM`) or an old kernel (`EINVAL`), so later scopes make no
/// syscall; any other errno (a seccomp filter, an LSM) is asked again.
/// Returns the errno.
#[cold]
#[inline(never)]
fn refusal(errno: sys::Errno) -> sys::Errno {
    if errno == sys::EPERM || errno == sys::EINVAL {
        set_refused(errno);
    }
    errno
}

/// The public error of a refused set: built only on failure, out of the
/// guards' inlined code.
#[cold]
#[inline(never)]
fn set_error(errno: sys::Errno) -> Error {
    Error::from_errno(OP_SET, errno)
}

/// Sets the flag unless a refusal is remembered; remembers a new refusal.
fn apply(on: bool) -> Result<(), sys::Errno> {
    let memo = refused();
    if memo != 0 {
        return Err(memo);
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
/// if refused in best-effort mode (reported once), `Err(errno)` if refused
/// in strict mode.
#[cold]
#[inline(never)]
fn change(state: &Cell<Word>, on: bool, strict: bool) -> Result<bool, sys::Errno> {
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
        Err(errno) if strict => Err(errno),
        Err(errno) => {
            report::degraded(&set_error(errno));
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
/// or inherited), no syscall. `Err(word)`: the state must change; the word
/// goes to [`enter_change`] in a register, not read again there.
#[inline(always)]
fn enter_fast(state: &Cell<Word>, on: bool) -> Result<Scope, Word> {
    let w = state.get();
    if w.kernel() == kernel_bits(on) {
        return Ok(push(state, w, on, true));
    }
    Err(w)
}

/// A guard that changes the kernel's state: out of line, so that the fast
/// path stays a few inlined instructions, and one copy per `(on, strict)`,
/// so that neither is a register to keep across the syscall. The result is
/// the packed guard or an errno, both in registers; the public [`Error`] is
/// built by the caller, on failure only ([`set_error`]).
///
/// `w` is the thread's word as [`enter_fast`] read it. What lives across
/// the `prctl` call (in callee-saved registers, pushed and popped here): `w`,
/// the audit entry and its word. The guard and the new word are computed from the first after the
/// call; the depth check comes before it, so an overflow changes nothing.
#[inline(never)]
fn enter_change<const ON: bool, const STRICT: bool>(w: Word) -> Result<Scope, sys::Errno> {
    // `enter_fast` failed, so a known kernel flag is in the other state
    // (`KERNEL_ON` is never set without `KNOWN`).
    if w.0 & KNOWN == 0 || refused() != 0 {
        return enter_slow(ON, STRICT);
    }
    debug_assert!(w.kernel() == kernel_bits(!ON));
    if w.depth() >= MAX_DEPTH {
        too_deep();
    }
    // Nothing refused: the outermost guard's set. The guard restores the
    // DESIRED bit of `w`.
    let mark = crate::audit::begin_set();
    match sys::set_io_flusher(ON) {
        Ok(()) => {
            mark.done(ON);
            let up = (w.0 & !(KERNEL_MASK | DESIRED)) + DEPTH_ONE;
            STATE.with(|st| st.set(Word(up | kernel_bits(ON) | u32::from(ON) << 2)));
            Ok(Scope::from_packed(w.0 & !(KERNEL_MASK | OUT_OF_ORDER) | 1))
        }
        Err(errno) => enter_failed(mark, w, ON, STRICT, errno),
    }
}

/// [`enter_change`]'s refused syscall, all of it in one cold call (so the
/// errno needs no register of its own there).
#[cold]
#[inline(never)]
fn enter_failed(
    mark: crate::audit::SetMark,
    w: Word,
    on: bool,
    strict: bool,
    errno: sys::Errno,
) -> Result<Scope, sys::Errno> {
    mark.failed();
    enter_refused(w, on, strict, errno)
}

/// [`enter_change`] for a request known only at run time (every caller in
/// the crate passes constants, so this folds to one call).
#[inline(always)]
fn enter_change_dyn(w: Word, on: bool, strict: bool) -> Result<Scope, sys::Errno> {
    match (on, strict) {
        (true, true) => enter_change::<true, true>(w),
        (true, false) => enter_change::<true, false>(w),
        (false, true) => enter_change::<false, true>(w),
        (false, false) => enter_change::<false, false>(w),
    }
}

/// The kernel refused the outermost guard's set: fail (strict) or push a
/// level that is not effective (best effort, reported once).
#[cold]
#[inline(never)]
fn enter_refused(w: Word, on: bool, strict: bool, errno: sys::Errno) -> Result<Scope, sys::Errno> {
    let errno = refusal(errno);
    if strict {
        return Err(errno);
    }
    report::degraded(&set_error(errno));
    Ok(STATE.with(|state| push(state, w, on, false)))
}

#[cold]
#[inline(never)]
fn enter_slow(on: bool, strict: bool) -> Result<Scope, sys::Errno> {
    STATE.with(|state| enter_slow_at(state, on, strict))
}

fn enter_slow_at(state: &Cell<Word>, on: bool, strict: bool) -> Result<Scope, sys::Errno> {
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
        // One copy per direction: `on` is no register to keep across the
        // syscall.
        if down.0 & DESIRED != 0 {
            restore::<true>(down)
        } else {
            restore::<false>(down)
        }
    }
}

/// Puts the kernel flag back to `ON` when a guard that changed it ends:
/// `down` is the word after the drop, whose `DESIRED` bit is `ON` (the
/// guard's restore value). Best effort: a drop cannot fail. A refusal here
/// can only follow a refusal at entry, which was reported already.
#[inline(never)]
fn restore<const ON: bool>(down: Word) {
    debug_assert_eq!(down.0 & DESIRED != 0, ON);
    if down.kernel() & KNOWN != 0 && refused() == 0 {
        // Known to be in the other state (else `down` would be in the
        // desired one), nothing refused: the outermost guard's restore.
        // (After a refusal the memo, per thread as capabilities are, says
        // this thread's restore would be refused too.)
        let mark = crate::audit::begin_set();
        match sys::set_io_flusher(ON) {
            Ok(()) => {
                mark.done(ON);
                STATE.with(|st| st.set(Word(down.0 & !KERNEL_MASK | kernel_bits(ON))));
            }
            Err(errno) => restore_refused(mark, errno),
        }
    } else {
        restore_slow(ON);
    }
}

#[cold]
#[inline(never)]
fn restore_refused(mark: crate::audit::SetMark, errno: sys::Errno) {
    mark.failed();
    report::degraded(&set_error(refusal(errno)));
}

#[cold]
#[inline(never)]
fn restore_slow(on: bool) {
    let _ = STATE.try_with(|state| change(state, on, false));
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
            Ok(Ok(scope)) => Ok(scope),
            Ok(Err(w)) => enter_change_dyn(w, on, strict).map_err(set_error),
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
