//! The three guards: [`NoFsScope`], [`IoFlusher`] and [`AllowFsReclaim`],
//! each a [`Scope`] of the engine in the parent module.

use super::Scope;
use crate::Error;
use std::fmt;

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
/// - A thread (or process) spawned while the scope is active is flagged
///   **for its whole life** (see [inheritance](crate#inheritance)): spawn
///   with [`AllowFsReclaim`] around the spawn, or use the crate's spawn
///   helpers ([`thread`](crate::thread)).
///
/// # Examples
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
    /// is reported once per process, and the thread's later scopes cost no
    /// syscall (the memo is per thread, as capabilities are).
    ///
    /// # Examples
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
    /// # Errors
    ///
    /// The kernel refused the `prctl` ([`Error`]: `EPERM` without
    /// `CAP_SYS_RESOURCE`, `EINVAL` before Linux 5.6, another errno from a
    /// seccomp filter or security module); the thread's state is unchanged.
    ///
    /// # Examples
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
/// Threads this worker spawns are flagged too ([inheritance](crate#inheritance)):
/// usually what a daemon wants for its I/O helpers; see [`AllowFsReclaim`]
/// for the others.
///
/// # Examples
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
    /// # Examples
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
    /// # Errors
    ///
    /// The kernel refused the `prctl` ([`Error`]: `EPERM` without
    /// `CAP_SYS_RESOURCE`, `EINVAL` before Linux 5.6, another errno from a
    /// seccomp filter or security module); the thread's state is unchanged.
    ///
    /// # Examples
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
/// Anything an I/O-flusher thread starts — a logging thread, a hook script,
/// a compaction helper — would be flagged for its whole life
/// ([inheritance](crate#inheritance)), exempt from dirty throttling and
/// allocating with `GFP_NOIO`. Start those inside this
/// scope. It also lets a large allocation that may fail under `GFP_NOIO`
/// use full reclaim, where the caller knows no lock of its own device is
/// held.
///
/// On a thread that is not flagged it makes no syscall.
///
/// # Examples
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
    /// # Examples
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
    /// # Errors
    ///
    /// The kernel refused the `prctl` ([`Error`]: `EPERM` without
    /// `CAP_SYS_RESOURCE`, `EINVAL` before Linux 5.6, another errno from a
    /// seccomp filter or security module); the thread's state is unchanged.
    ///
    /// # Examples
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
