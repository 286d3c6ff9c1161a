//! [`AllocContext`]: the crate's reclaim context as a value that can travel to
//! another thread, a pool job or an async task.
//!
//! See [`AllocContext`] for which context counts.

use crate::scope::propagation;
use crate::{AllowFsReclaim, Error, IoFlusher, NoFsScope};
use std::fmt;

/// The reclaim context of a piece of work: run it as an I/O flusher, or
/// with the flag explicitly clear, on whatever thread it lands.
///
/// A `Copy + Send + Sync` value of one byte. Capture it where the work is
/// created ([`AllocContext::current`]) and apply it where the work runs
/// ([`run`](AllocContext::run), [`wrap`](AllocContext::wrap), [`enter`](AllocContext::enter),
/// the future wrapper [`InContext`](crate::future::InContext), the spawn
/// helpers of [`thread`](crate::thread)).
///
/// # Which context counts
///
/// The kernel flag is per thread and copied by `clone()` at spawn time
/// ([inheritance](crate#inheritance)). A thread's *kernel* state is
/// therefore often an accident: a helper thread spawned inside a scope stays
/// flagged for life, a runtime created before `main()` set the flag is
/// clear. This crate propagates its **explicit** context instead — the
/// guards alive on the calling thread:
///
/// - inside a [`NoFsScope`] or an [`IoFlusher`]: [`AllocContext::io_flusher`];
/// - inside an [`AllowFsReclaim`], or with **no guard alive**:
///   [`AllocContext::clear`], even when the thread itself carries an inherited
///   flag.
///
/// Inherited flags are exactly the accident the crate exists to stop, so a
/// flag nobody asked for is not passed on. A process flagged as a whole (by
/// a launcher, or a raw [`set_thread_io_flusher`](crate::set_thread_io_flusher))
/// says so explicitly by holding an [`IoFlusher`] in `main` — on an
/// already-flagged thread that costs no syscall.
///
/// # Examples
///
/// ```
/// use reclaim_scope::{AllocContext, NoFsScope};
///
/// let ctx = {
///     let _scope = NoFsScope::enter();
///     AllocContext::current() // captured inside the scope...
/// };
/// assert!(ctx.is_io_flusher());
/// let job = ctx.wrap(|| vec![0u8; 4096]); // ...applied wherever the job runs
/// let buf = std::thread::spawn(job).join().unwrap();
/// assert_eq!(buf.len(), 4096);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllocContext {
    io_flusher: bool,
}

impl AllocContext {
    /// The calling thread's context: [`io_flusher`](AllocContext::io_flusher)
    /// while a [`NoFsScope`] or [`IoFlusher`] is the innermost live guard,
    /// else [`clear`](AllocContext::clear) (no guard, or an [`AllowFsReclaim`]).
    ///
    /// A thread-local load: no syscall, no `/proc` read.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::{AllowFsReclaim, AllocContext, IoFlusher};
    ///
    /// assert_eq!(AllocContext::current(), AllocContext::clear());
    /// let _worker = IoFlusher::enter();
    /// assert_eq!(AllocContext::current(), AllocContext::io_flusher());
    /// let _clear = AllowFsReclaim::enter();
    /// assert_eq!(AllocContext::current(), AllocContext::clear());
    /// ```
    #[inline]
    pub fn current() -> AllocContext {
        AllocContext {
            io_flusher: propagation::desired().unwrap_or(false),
        }
    }

    /// The I/O-flusher context: work runs inside an [`IoFlusher`].
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(reclaim_scope::AllocContext::io_flusher().is_io_flusher());
    /// ```
    #[inline]
    pub const fn io_flusher() -> AllocContext {
        AllocContext { io_flusher: true }
    }

    /// The clear context: work runs inside an [`AllowFsReclaim`], so even
    /// a flagged thread runs it with the flag cleared.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!reclaim_scope::AllocContext::clear().is_io_flusher());
    /// ```
    #[inline]
    pub const fn clear() -> AllocContext {
        AllocContext { io_flusher: false }
    }

    /// Whether work in this context runs as an I/O flusher.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::AllocContext;
    /// assert!(AllocContext::io_flusher().is_io_flusher());
    /// assert!(!AllocContext::clear().is_io_flusher());
    /// ```
    #[inline]
    pub const fn is_io_flusher(self) -> bool {
        self.io_flusher
    }

    /// Enters this context on the calling thread until the guard is
    /// dropped (best effort): a [`NoFsScope`] or an [`AllowFsReclaim`]
    /// region — the building block of custom executors and pools.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::AllocContext;
    ///
    /// let ctx = AllocContext::io_flusher();
    /// let guard = ctx.enter();
    /// assert_eq!(AllocContext::current(), ctx);
    /// println!("in effect: {}", guard.is_effective());
    /// drop(guard);
    /// assert_eq!(AllocContext::current(), AllocContext::clear());
    /// ```
    #[inline]
    pub fn enter(self) -> AllocContextGuard {
        AllocContextGuard {
            inner: if self.io_flusher {
                Inner::NoFs(NoFsScope::enter())
            } else {
                Inner::Clear(AllowFsReclaim::enter())
            },
        }
    }

    /// Enters this context as the role of the calling thread for the rest
    /// of its life (an [`IoFlusher`] rather than a [`NoFsScope`] region):
    /// for threads the crate starts or pins.
    pub(crate) fn enter_for_thread(self) -> AllocContextGuard {
        AllocContextGuard {
            inner: if self.io_flusher {
                Inner::IoFlusher(IoFlusher::enter())
            } else {
                Inner::Clear(AllowFsReclaim::enter())
            },
        }
    }

    /// Enters this context strictly: fails, naming the fix, when the kernel
    /// refuses the change (see [`NoFsScope::try_enter`]).
    ///
    /// # Errors
    ///
    /// The kernel refused the `prctl` the context needs ([`Error`]: `EPERM`
    /// without `CAP_SYS_RESOURCE`, `EINVAL` before Linux 5.6); nothing changed.
    ///
    /// # Examples
    ///
    /// ```
    /// match reclaim_scope::AllocContext::io_flusher().try_enter() {
    ///     Ok(_guard) => println!("protected"),
    ///     Err(e) => eprintln!("not protected: {e}"),
    /// }
    /// ```
    #[inline]
    pub fn try_enter(self) -> Result<AllocContextGuard, Error> {
        Ok(AllocContextGuard {
            inner: if self.io_flusher {
                Inner::NoFs(NoFsScope::try_enter()?)
            } else {
                Inner::Clear(AllowFsReclaim::try_enter()?)
            },
        })
    }

    /// Runs `f` in this context on the calling thread, best effort.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::AllocContext;
    ///
    /// let inside = AllocContext::io_flusher().run(AllocContext::current);
    /// assert!(inside.is_io_flusher());
    /// ```
    #[inline]
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        // One branch per guard type (not the `AllocContextGuard` enum), so that
        // each guard's enter and drop inline: this is the per-poll path of
        // the future wrapper.
        if self.io_flusher {
            let _scope = NoFsScope::enter();
            f()
        } else {
            let _clear = AllowFsReclaim::enter();
            f()
        }
    }

    /// Runs `f` in this context, or returns why the kernel refused (then
    /// `f` does not run).
    ///
    /// # Errors
    ///
    /// The [`Error`] of [`try_enter`](Self::try_enter): then `f` does not run.
    ///
    /// # Examples
    ///
    /// ```
    /// match reclaim_scope::AllocContext::io_flusher().try_run(|| 7) {
    ///     Ok(v) => assert_eq!(v, 7),
    ///     Err(e) => eprintln!("not run: {e}"),
    /// }
    /// ```
    #[inline]
    pub fn try_run<R>(self, f: impl FnOnce() -> R) -> Result<R, Error> {
        let _guard = self.try_enter()?;
        Ok(f())
    }

    /// Wraps `f` so that it runs in this context on whatever thread calls
    /// it: for jobs handed to pools (`rayon::spawn`, a channel of boxed
    /// closures, `tokio::task::spawn_blocking`). The wrapper is `Send` when
    /// `f` is.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::AllocContext;
    ///
    /// let job = AllocContext::io_flusher().wrap(|| AllocContext::current());
    /// let seen = std::thread::spawn(job).join().unwrap();
    /// assert_eq!(seen, AllocContext::io_flusher());
    /// ```
    #[inline]
    pub fn wrap<R, F: FnOnce() -> R>(self, f: F) -> impl FnOnce() -> R {
        move || self.run(f)
    }
}

impl Default for AllocContext {
    /// [`AllocContext::current`].
    fn default() -> Self {
        AllocContext::current()
    }
}

impl fmt::Debug for AllocContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.io_flusher {
            "AllocContext::io_flusher()"
        } else {
            "AllocContext::clear()"
        })
    }
}

/// A [`AllocContext`] entered on the calling thread: a [`NoFsScope`] (or, for a
/// thread's role, an [`IoFlusher`]) or an [`AllowFsReclaim`]. Same rules as those guards: `!Send`, strictly
/// nested, restores on drop.
///
/// # Examples
///
/// ```
/// let guard = reclaim_scope::AllocContext::clear().enter();
/// assert!(guard.is_effective() || reclaim_scope::proc::ThreadFlags::current()?.noio());
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// ```compile_fail
/// fn assert_send<T: Send>() {}
/// assert_send::<reclaim_scope::AllocContextGuard>();
/// ```
#[must_use = "the context ends as soon as the guard is dropped: bind it with `let _ctx = …`"]
#[clippy::has_significant_drop]
pub struct AllocContextGuard {
    inner: Inner,
}

enum Inner {
    NoFs(NoFsScope),
    IoFlusher(IoFlusher),
    Clear(AllowFsReclaim),
}

impl AllocContextGuard {
    /// Whether the kernel flag is in the state the context asks for.
    ///
    /// # Examples
    ///
    /// ```
    /// let g = reclaim_scope::AllocContext::io_flusher().enter();
    /// println!("protected: {}", g.is_effective());
    /// ```
    #[inline]
    pub fn is_effective(&self) -> bool {
        match &self.inner {
            Inner::NoFs(g) => g.is_effective(),
            Inner::IoFlusher(g) => g.is_effective(),
            Inner::Clear(g) => g.is_effective(),
        }
    }
}

impl fmt::Debug for AllocContextGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::NoFs(g) => g.fmt(f),
            Inner::IoFlusher(g) => g.fmt(f),
            Inner::Clear(g) => g.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::tests::on_fake;
    use crate::sys::fake::{self, FakeThread, Mode};
    use crate::sys::{PF_LOCAL_THROTTLE, PF_MEMALLOC_NOIO};

    const BOTH: u32 = PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE;

    fn flags() -> u32 {
        fake::state().unwrap().flags & BOTH
    }

    #[test]
    fn current_follows_the_innermost_guard() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            assert_eq!(AllocContext::current(), AllocContext::clear());
            let a = NoFsScope::enter();
            assert_eq!(AllocContext::current(), AllocContext::io_flusher());
            {
                let _c = AllowFsReclaim::enter();
                assert_eq!(AllocContext::current(), AllocContext::clear());
                let _f = IoFlusher::enter();
                assert_eq!(AllocContext::current(), AllocContext::io_flusher());
            }
            drop(a);
            assert_eq!(AllocContext::current(), AllocContext::clear());
        });
    }

    #[test]
    fn inherited_flag_without_guard_is_clear() {
        on_fake(FakeThread::flagged(Mode::Permitted), || {
            assert_eq!(AllocContext::current(), AllocContext::clear());
            // Running the clear context on this flagged thread clears it.
            AllocContext::current().run(|| assert_eq!(flags(), 0));
            assert_eq!(flags(), BOTH, "restored the inherited flag");
        });
    }

    #[test]
    fn run_sets_and_restores() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let r = AllocContext::io_flusher().run(|| {
                assert_eq!(flags(), BOTH);
                assert_eq!(AllocContext::current(), AllocContext::io_flusher());
                7
            });
            assert_eq!(r, 7);
            assert_eq!(flags(), 0);
            let _f = IoFlusher::enter();
            AllocContext::clear().run(|| assert_eq!(flags(), 0));
            assert_eq!(flags(), BOTH);
        });
    }

    #[test]
    fn wrap_carries_to_another_thread() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let job = {
                let _s = NoFsScope::enter();
                AllocContext::current().wrap(|| (flags(), AllocContext::current()))
            };
            // A pool thread with its own (clear) fake kernel.
            let (seen, ctx) = std::thread::spawn(move || {
                fake::install(FakeThread::new(Mode::Permitted));
                let r = job();
                assert_eq!(flags(), 0, "the pool thread is back to clear");
                r
            })
            .join()
            .unwrap();
            assert_eq!(seen, BOTH);
            assert_eq!(ctx, AllocContext::io_flusher());
        });
    }

    #[test]
    fn strict_forms_fail_without_running() {
        on_fake(FakeThread::new(Mode::NotPermitted), || {
            let e = AllocContext::io_flusher()
                .try_run(|| unreachable!())
                .unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::NotPermitted);
            // Clearing a clear thread needs no syscall, so it succeeds.
            assert_eq!(AllocContext::clear().try_run(|| 1).unwrap(), 1);
            let g = AllocContext::io_flusher().enter();
            assert!(!g.is_effective());
        });
    }

    #[test]
    fn debug_and_default() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            assert_eq!(
                format!("{:?}", AllocContext::clear()),
                "AllocContext::clear()"
            );
            let _f = IoFlusher::enter();
            assert_eq!(AllocContext::default(), AllocContext::io_flusher());
            let g = AllocContext::io_flusher().enter();
            assert!(format!("{g:?}").starts_with("NoFsScope"));
            drop(g);
            let t = AllocContext::io_flusher().enter_for_thread();
            assert!(format!("{t:?}").starts_with("IoFlusher"));
        });
    }
}
