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

use crate::{proc::ThreadFlags, report, sys, Error};
use std::cell::{Cell, RefCell};
use std::fmt;
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

/// `prctl(PR_SET_IO_FLUSHER, on)`, published for `Audit::current()`: the call
/// every guard that changes the kernel's state makes, on the cold paths.
/// The outermost guard's two out-of-line functions ([`enter_change`],
/// [`restore`]) make the same three steps themselves (mark, syscall, done or
/// failed), with a failure in one cold call.
#[inline]
fn set_kernel_flag(on: bool) -> Result<(), sys::Errno> {
    crate::audit::guard_set(on, sys::set_io_flusher)
}

/// A refused set: remembered for the process when it is a missing
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

/// A code region whose allocations cannot recurse into file-system or I/O
/// reclaim: while the guard lives, the calling thread is an I/O flusher
/// (`PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE`).
///
/// Wrap the allocation-heavy part of serving a request — the `pwrite` into
/// the backing file, a buffer allocation — and the kernel will not write
/// back the file system that sits on your own device to satisfy it.
///
/// - Nested scopes, and scopes on a thread that is already flagged
///   (inherited, or inside an [`IoFlusher`]), make no syscall.
/// - The outermost scope costs two `prctl` calls (set, then restore): keep a
///   hot loop inside an [`IoFlusher`] instead.
/// - The guard is `!Send` and `!Sync` and must be dropped on its thread, in
///   the reverse order of creation.
/// - A thread spawned while the scope is active inherits the flag **for its
///   whole life** (and so does a process it execs): spawn with
///   [`AllowFsReclaim`] around the spawn, or use the crate's spawn helpers.
///
/// ```
/// use reclaim_scope::NoFsScope;
///
/// let scope = NoFsScope::enter(); // best effort: never fails
/// let buf = vec![0u8; 1 << 20];   // allocated with GFP_NOIO if effective
/// println!("protected: {}", scope.is_effective());
/// drop(scope);                    // the thread's previous state is back
/// # drop(buf);
/// ```
///
/// The guard cannot leave its thread:
///
/// ```compile_fail
/// fn assert_send<T: Send>() {}
/// assert_send::<reclaim_scope::NoFsScope>();
/// ```
///
/// ```compile_fail
/// fn assert_sync<T: Sync>() {}
/// assert_sync::<reclaim_scope::NoFsScope>();
/// ```
#[must_use = "the scope ends as soon as the guard is dropped: bind it with `let _scope = …` \
              (not `let _ = …`) to keep it for the region"]
#[clippy::has_significant_drop]
#[doc(alias = "PR_SET_IO_FLUSHER")]
#[doc(alias = "memalloc_noio_save")]
#[doc(alias = "GFP_NOFS")]
pub struct NoFsScope {
    scope: Scope,
}

impl NoFsScope {
    /// Enters the scope, best effort: never fails.
    ///
    /// If the kernel refuses (no `CAP_SYS_RESOURCE`, kernel < 5.6, not
    /// Linux), the guard is [not effective](Self::is_effective), the refusal
    /// is reported once per process, and later scopes cost no syscall.
    ///
    /// ```
    /// let scope = reclaim_scope::NoFsScope::enter();
    /// if !scope.is_effective() {
    ///     eprintln!("unprotected: {:?}", reclaim_scope::degradation());
    /// }
    /// ```
    #[inline]
    pub fn enter() -> NoFsScope {
        match Scope::enter(true, false) {
            Ok(scope) => NoFsScope { scope },
            Err(_) => unreachable!("best-effort enter does not fail"),
        }
    }

    /// Enters the scope, or fails with an [`Error`] saying why the kernel
    /// refused and how to fix it. On failure nothing changed.
    ///
    /// Succeeds without a syscall (and without the capability) when the
    /// thread is already flagged.
    ///
    /// ```
    /// match reclaim_scope::NoFsScope::try_enter() {
    ///     Ok(_scope) => { /* allocations here are GFP_NOIO */ }
    ///     Err(e) => eprintln!("{e}"),
    /// }
    /// ```
    #[inline]
    pub fn try_enter() -> Result<NoFsScope, Error> {
        Scope::enter(true, true).map(|scope| NoFsScope { scope })
    }
}

guard_common!(NoFsScope);

/// The I/O-flusher role of a worker thread: the same kernel state as
/// [`NoFsScope`], held for a long stretch — typically a whole worker loop
/// of a storage daemon.
///
/// While it lives, the thread's allocations cannot recurse into
/// file-system or I/O reclaim, and the thread is exempt from dirty
/// throttling on the device it serves (`PF_LOCAL_THROTTLE`). Every scope and
/// `NoFsFile` call inside it is then free of syscalls. Dropping it
/// restores what the thread had before.
///
/// Threads this worker spawns inherit the flag (that is usually what a
/// daemon wants for its I/O helpers; see [`AllowFsReclaim`] for the others).
///
/// ```no_run
/// use reclaim_scope::IoFlusher;
///
/// std::thread::spawn(|| {
///     let _flusher = IoFlusher::try_enter().expect("needs CAP_SYS_RESOURCE");
///     loop {
///         // take a request from the device, serve it from the backing file
///         # break;
///     }
/// });
/// ```
///
/// ```compile_fail
/// fn assert_send<T: Send>() {}
/// assert_send::<reclaim_scope::IoFlusher>();
/// ```
///
/// ```compile_fail
/// fn assert_sync<T: Sync>() {}
/// assert_sync::<reclaim_scope::IoFlusher>();
/// ```
#[must_use = "the thread stops being an I/O flusher as soon as the guard is dropped: bind it \
              with `let _flusher = …` (not `let _ = …`)"]
#[clippy::has_significant_drop]
#[doc(alias = "PR_SET_IO_FLUSHER")]
#[doc(alias = "prctl")]
pub struct IoFlusher {
    scope: Scope,
    /// Its registration for `Audit::current()`, made only where it takes effect.
    _claim: crate::audit::Claim,
}

impl IoFlusher {
    /// Makes the calling thread an I/O flusher, best effort (see
    /// [`NoFsScope::enter`]).
    ///
    /// ```
    /// let flusher = reclaim_scope::IoFlusher::enter();
    /// println!("I/O flusher: {}", flusher.is_effective());
    /// ```
    #[inline]
    pub fn enter() -> IoFlusher {
        match Scope::enter(true, false) {
            Ok(scope) => IoFlusher::claim(scope),
            Err(_) => unreachable!("best-effort enter does not fail"),
        }
    }

    /// Makes the calling thread an I/O flusher, or says why the kernel
    /// refused (see [`NoFsScope::try_enter`]).
    ///
    /// ```
    /// if let Err(e) = reclaim_scope::IoFlusher::try_enter() {
    ///     eprintln!("refusing to serve unprotected: {e}");
    /// }
    /// ```
    #[inline]
    pub fn try_enter() -> Result<IoFlusher, Error> {
        Scope::enter(true, true).map(IoFlusher::claim)
    }

    #[inline]
    fn claim(scope: Scope) -> IoFlusher {
        let claim = crate::audit::Claim::new(scope.level(), scope.restore(), scope.effective());
        IoFlusher {
            scope,
            _claim: claim,
        }
    }
}

guard_common!(IoFlusher);

/// A region that runs with the flag **cleared** on a thread that is an I/O
/// flusher, restoring it on drop.
///
/// The flag is inherited by `clone()` and survives `execve()`, so anything an
/// I/O-flusher thread starts — a logging thread, a hook script, a
/// compaction helper — would be flagged for its whole life, exempt from
/// dirty throttling and allocating with `GFP_NOIO`. Start those inside this
/// scope. It also lets a large allocation that may fail under `GFP_NOIO`
/// use full reclaim, where the caller knows no lock of its own device is
/// held.
///
/// On a thread that is not flagged it makes no syscall.
///
/// ```
/// use reclaim_scope::{AllowFsReclaim, IoFlusher};
///
/// let _flusher = IoFlusher::enter();
/// let helper = {
///     let _clear = AllowFsReclaim::enter();
///     std::thread::spawn(|| { /* not an I/O flusher */ })
/// };
/// helper.join().unwrap();
/// ```
///
/// ```compile_fail
/// fn assert_send<T: Send>() {}
/// assert_send::<reclaim_scope::AllowFsReclaim>();
/// ```
#[must_use = "the flag comes back as soon as the guard is dropped: bind it with \
              `let _clear = …` (not `let _ = …`)"]
#[clippy::has_significant_drop]
pub struct AllowFsReclaim {
    scope: Scope,
}

impl AllowFsReclaim {
    /// Clears the flag for the region, best effort.
    ///
    /// ```
    /// let _clear = reclaim_scope::AllowFsReclaim::enter();
    /// ```
    #[inline]
    pub fn enter() -> AllowFsReclaim {
        match Scope::enter(false, false) {
            Ok(scope) => AllowFsReclaim { scope },
            Err(_) => unreachable!("best-effort enter does not fail"),
        }
    }

    /// Clears the flag for the region, or says why the kernel refused.
    ///
    /// ```
    /// let clear = reclaim_scope::AllowFsReclaim::try_enter();
    /// assert!(clear.is_ok() || reclaim_scope::proc::ThreadFlags::current()?.noio());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[inline]
    pub fn try_enter() -> Result<AllowFsReclaim, Error> {
        Scope::enter(false, true).map(|scope| AllowFsReclaim { scope })
    }
}

guard_common!(AllowFsReclaim);

/// Whether `PR_SET_IO_FLUSHER` can be used by this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Support {
    /// The kernel has it and the caller holds `CAP_SYS_RESOURCE`.
    Available,
    /// The kernel has it, but the caller lacks `CAP_SYS_RESOURCE` (`EPERM`).
    NotPermitted,
    /// Linux older than 5.6, or not Linux.
    Unsupported,
    /// The call was refused with another errno, which `PR_SET_IO_FLUSHER`
    /// itself never answers: a seccomp filter (`ENOSYS`, `EACCES`, …) or a
    /// Linux security module (`EACCES`) stands between the caller and the
    /// prctl. (A seccomp filter or LSM answering `EPERM` looks like
    /// [`NotPermitted`](Support::NotPermitted) here; `reclaim-scope probe`
    /// tells the two apart from the capability set.)
    Refused(i32),
}

impl Support {
    /// Whether scopes can take effect.
    pub fn is_available(self) -> bool {
        self == Support::Available
    }

    /// The error a strict scope would fail with, naming the fix.
    ///
    /// ```
    /// if let Some(e) = reclaim_scope::support().error() {
    ///     eprintln!("{e}");
    /// }
    /// ```
    pub fn error(self) -> Option<Error> {
        match self {
            Support::Available => None,
            Support::NotPermitted => Some(Error::from_errno(OP_SET, sys::EPERM)),
            Support::Unsupported => Some(Error::from_errno(OP_SET, sys::EINVAL)),
            Support::Refused(errno) => Some(Error::from_errno(OP_SET, errno)),
        }
    }
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Support::Available => "available",
            Support::NotPermitted => "not permitted (needs CAP_SYS_RESOURCE)",
            Support::Unsupported => "unsupported (needs Linux 5.6 or newer)",
            Support::Refused(_) => "refused by a seccomp filter or a security module",
        })
    }
}

/// Asks the kernel whether `PR_SET_IO_FLUSHER` can be used, without
/// changing the caller's flags (it asks with `PR_GET_IO_FLUSHER`, which
/// checks the same capability).
///
/// An answer of [`Support::Available`] also forgets an earlier refusal, so
/// a process that gained the capability later can use scopes again.
///
/// The memalloc bits are left alone; like any successful capability check,
/// the kernel does set `PF_SUPERPRIV` (0x100) on the caller.
///
/// ```
/// use reclaim_scope::{support, Support};
///
/// match support() {
///     Support::Available => println!("scopes take effect"),
///     other => println!("scopes are no-ops here: {other}"),
/// }
/// ```
#[doc(alias = "probe")]
pub fn support() -> Support {
    match sys::get_io_flusher() {
        Ok(_) => {
            set_refused(0);
            Support::Available
        }
        Err(e) if e == sys::EPERM && cfg!(target_os = "linux") => Support::NotPermitted,
        Err(e) if e == sys::EINVAL || !cfg!(target_os = "linux") => Support::Unsupported,
        Err(e) => Support::Refused(e),
    }
}

/// `prctl(PR_GET_IO_FLUSHER)`: whether the kernel says the calling thread is
/// an I/O flusher.
///
/// Needs `CAP_SYS_RESOURCE` like the setter; [`ThreadFlags::current`] reads
/// the same state without it.
///
/// ```
/// match reclaim_scope::thread_io_flusher() {
///     Ok(on) => println!("io flusher: {on}"),
///     Err(e) => println!("cannot ask: {e}"),
/// }
/// ```
///
/// See [prctl(2)](https://man7.org/linux/man-pages/man2/prctl.2.html).
#[doc(alias = "PR_GET_IO_FLUSHER")]
pub fn thread_io_flusher() -> Result<bool, Error> {
    sys::get_io_flusher().map_err(|e| Error::from_errno(OP_GET, e))
}

/// `prctl(PR_SET_IO_FLUSHER, on)` on the calling thread, with no scope.
///
/// The building block of launchers (`reclaim-scope exec` sets the flag and
/// execs the daemon, which keeps it). Inside a program prefer the guards:
/// this call does not restore anything. The crate's guards on this thread
/// see the change.
///
/// ```
/// if reclaim_scope::set_thread_io_flusher(true).is_ok() {
///     assert!(reclaim_scope::proc::ThreadFlags::current()?.is_io_flusher());
///     reclaim_scope::set_thread_io_flusher(false).unwrap();
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// See [prctl(2)](https://man7.org/linux/man-pages/man2/prctl.2.html).
#[doc(alias = "PR_SET_IO_FLUSHER")]
#[doc(alias = "prctl")]
pub fn set_thread_io_flusher(on: bool) -> Result<(), Error> {
    sys::set_io_flusher(on).map_err(|e| Error::from_errno(OP_SET, e))?;
    set_refused(0);
    let _ = STATE.try_with(|st| st.set(st.get().with_kernel(on)));
    Ok(())
}

/// Re-reads the calling thread's real flags from the kernel and returns
/// them.
///
/// The crate probes a thread's state once, at its first scope, and then
/// tracks its own changes. Call this after changing the flag by other means
/// (a raw `prctl`, a C library) so the next scope sees the truth.
///
/// ```
/// let flags = reclaim_scope::refresh_thread_state()?;
/// println!("{flags}");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn refresh_thread_state() -> std::io::Result<ThreadFlags> {
    let flags = ThreadFlags::current();
    let _ = STATE.try_with(|st| {
        let w = st.get();
        st.set(match &flags {
            Ok(f) => w.with_kernel(f.noio()),
            Err(_) => Word(w.0 & !KERNEL_MASK),
        })
    });
    flags
}

/// Hooks for propagation (`crate::context`, `crate::thread`): the thread's
/// state as the crate tracks it.
pub(crate) mod propagation {
    use super::*;

    /// What the guards alive on the calling thread ask for: `Some(on)` while
    /// at least one guard lives, `None` when none does.
    #[inline]
    pub(crate) fn desired() -> Option<bool> {
        STATE
            .try_with(|st| {
                let w = st.get();
                (w.depth() > 0).then_some(w.0 & DESIRED != 0)
            })
            .ok()
            .flatten()
    }

    /// The calling thread's kernel flag (probed once per thread).
    pub(crate) fn kernel_flag() -> bool {
        STATE
            .try_with(|st| {
                if st.get().kernel() & KNOWN == 0 {
                    probe(st);
                }
                st.get().0 & KERNEL_ON != 0
            })
            .unwrap_or(false)
    }

    /// Records the flag a new thread inherited from its creator, whose flag
    /// the crate knew at `clone()`: saves the new thread's `/proc` probe.
    pub(crate) fn inherited(on: bool) {
        let _ = STATE.try_with(|st| {
            if st.get().kernel() & KNOWN == 0 {
                st.set(st.get().with_kernel(on));
            }
        });
    }
}

/// Hooks for the crate's own benchmarks, behind the explicitly unstable
/// `unstable-bench` feature (as tokio's `test-util`): never enable it in a
/// daemon — `assume_thread_flag(true)` makes guards report effective on a
/// thread the kernel does not protect.
#[cfg(feature = "unstable-bench")]
#[doc(hidden)]
pub mod __bench {
    use super::*;

    /// Makes the crate believe the calling thread's kernel flag is `on`
    /// without a syscall: the exact state of a thread that inherited the
    /// flag, so the already-flagged path can be measured on a host that
    /// lacks `CAP_SYS_RESOURCE`.
    pub fn assume_thread_flag(on: bool) {
        STATE.with(|st| st.set(st.get().with_kernel(on)));
    }

    /// Forgets a remembered refusal, so the next scope asks the kernel again.
    pub fn forget_refusal() {
        set_refused(0);
    }

    /// One raw `prctl(PR_SET_IO_FLUSHER, on)` on the calling thread: the
    /// syscall wrapper the guards call, with nothing of the crate around it
    /// (no thread state, no audit registry, no refusal memo): the baseline
    /// the outermost scope is measured against. `Err` is the errno.
    ///
    /// The crate does not see the change: restore the thread's state before
    /// any guard runs on it.
    #[inline]
    pub fn raw_set_io_flusher(on: bool) -> Result<(), i32> {
        sys::set_io_flusher(on)
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
            let err =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(a))).unwrap_err();
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
}
