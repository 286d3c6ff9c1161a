//! Threads that start in the context their creator had: drop-in forms of
//! [`std::thread::spawn`], [`std::thread::Builder`] and
//! [`std::thread::scope`].
//!
//! The kernel copies the I/O-flusher flag to a new thread at `clone()`
//! and never looks again ([inheritance](crate#inheritance)). That is right
//! by accident at best:
//!
//! - a thread spawned with `std::thread::spawn` **inside** a scope stays
//!   flagged **for its whole life**, long after the scope ended — a logger
//!   or compaction thread that allocates with `GFP_NOIO` and skips dirty
//!   throttling forever;
//! - a thread spawned by a thread that was itself flagged by inheritance
//!   carries that accident on.
//!
//! The helpers here run the child's closure in the spawning thread's
//! [`AllocContext`] — the crate's explicit context, see
//! [which context counts](crate::AllocContext#which-context-counts):
//!
//! - parent inside a [`NoFsScope`](crate::NoFsScope) or
//!   [`IoFlusher`](crate::IoFlusher): the closure runs inside an
//!   [`IoFlusher`](crate::IoFlusher), the thread's role (already flagged
//!   by `clone()`: no syscall);
//! - otherwise: the closure runs inside an
//!   [`AllowFsReclaim`](crate::AllowFsReclaim), so an inherited flag is
//!   cleared for the closure (one `prctl`) and a clear child costs nothing.
//!
//! The context is captured when `spawn` is called, not when a [`Builder`]
//! is made; [`Builder::context`] overrides it. The child learns its kernel
//! state from its creator (`clone()` copies it), so it needs no `/proc`
//! read. Clearing an inherited flag needs `CAP_SYS_RESOURCE` like setting
//! it: without it the closure runs flagged, and the refusal is
//! [reported once](crate::degradation).
//!
//! ```
//! use reclaim_scope::{thread, AllocContext, NoFsScope};
//!
//! let scope = NoFsScope::enter();
//! // Runs as an I/O flusher, like the code around the spawn.
//! let flusher = thread::spawn(AllocContext::current);
//! drop(scope);
//! // Runs clear: the scope has ended.
//! let helper = thread::spawn(AllocContext::current);
//! assert!(flusher.join().unwrap().is_io_flusher());
//! assert!(!helper.join().unwrap().is_io_flusher());
//! ```

use crate::scope::propagation;
use crate::{sys, AllocContext};
use std::fmt;
use std::io;
use std::thread::{JoinHandle, ScopedJoinHandle};

/// What a new thread takes from its creator: the context to run in, and
/// the kernel flag `clone()` copies.
struct Inherit {
    ctx: AllocContext,
    kernel: bool,
    /// The backend's per-thread state, copied like `clone()` copies the flags.
    backend: sys::CloneState,
}

impl Inherit {
    /// Called on the creating thread, right before it spawns.
    fn capture(ctx: Option<AllocContext>) -> Inherit {
        Inherit {
            ctx: ctx.unwrap_or_else(AllocContext::current),
            kernel: propagation::kernel_flag(),
            backend: sys::CloneState::capture(),
        }
    }

    /// Called first on the new thread.
    fn run<T>(self, f: impl FnOnce() -> T) -> T {
        self.backend.apply();
        propagation::inherited(self.kernel);
        let _role = self.ctx.enter_for_thread();
        f()
    }
}

/// Spawns a thread that runs `f` in the calling thread's [`AllocContext`], like
/// [`std::thread::spawn`].
///
/// # Panics
///
/// Like [`std::thread::spawn`], if the OS fails to create a thread; use
/// [`Builder::spawn`] to handle that.
///
/// # Examples
///
/// ```
/// use reclaim_scope::{thread, IoFlusher};
///
/// let _worker = IoFlusher::enter();
/// let child = thread::spawn(|| {
///     // An I/O flusher too: the parent is one.
///     reclaim_scope::AllocContext::current()
/// });
/// assert!(child.join().unwrap().is_io_flusher());
/// ```
pub fn spawn<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    Builder::new().spawn(f).expect("failed to spawn thread")
}

/// Thread factory like [`std::thread::Builder`] (name, stack size, spawn
/// errors as [`io::Error`]) whose threads start in their creator's
/// [`AllocContext`] or one set with [`context`](Builder::context).
///
/// # Examples
///
/// ```
/// use reclaim_scope::{thread::Builder, AllocContext};
///
/// let h = Builder::new()
///     .name("flusher-0".into())
///     .stack_size(256 * 1024)
///     .context(AllocContext::io_flusher())
///     .spawn(|| std::thread::current().name().map(str::to_owned))?;
/// assert_eq!(h.join().unwrap().as_deref(), Some("flusher-0"));
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "a Builder does nothing until `spawn` is called"]
pub struct Builder {
    inner: std::thread::Builder,
    context: Option<AllocContext>,
}

impl Builder {
    /// A builder with std's defaults and the context captured at spawn.
    ///
    /// # Examples
    ///
    /// ```
    /// let h = reclaim_scope::thread::Builder::new().spawn(|| 1)?;
    /// assert_eq!(h.join().unwrap(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> Builder {
        Builder {
            inner: std::thread::Builder::new(),
            context: None,
        }
    }

    /// Names the thread, as [`std::thread::Builder::name`].
    ///
    /// # Examples
    ///
    /// ```
    /// let b = reclaim_scope::thread::Builder::new().name("queue-3".into());
    /// ```
    pub fn name(self, name: String) -> Builder {
        Builder {
            inner: self.inner.name(name),
            ..self
        }
    }

    /// Sets the stack size, as [`std::thread::Builder::stack_size`].
    ///
    /// # Examples
    ///
    /// ```
    /// let b = reclaim_scope::thread::Builder::new().stack_size(1 << 20);
    /// ```
    pub fn stack_size(self, size: usize) -> Builder {
        Builder {
            inner: self.inner.stack_size(size),
            ..self
        }
    }

    /// Runs the thread in `ctx` instead of the context of the thread that
    /// calls `spawn`.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::{thread::Builder, AllocContext};
    ///
    /// // A queue worker started from an unflagged control thread.
    /// let h = Builder::new().context(AllocContext::io_flusher()).spawn(AllocContext::current)?;
    /// assert_eq!(h.join().unwrap(), AllocContext::io_flusher());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn context(self, ctx: AllocContext) -> Builder {
        Builder {
            context: Some(ctx),
            ..self
        }
    }

    /// Spawns the thread, as [`std::thread::Builder::spawn`]: an error if
    /// the OS could not create it.
    ///
    /// # Errors
    ///
    /// The OS failed to create the thread (as [`std::thread::Builder::spawn`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let h = reclaim_scope::thread::Builder::new().spawn(|| 6 * 7)?;
    /// assert_eq!(h.join().unwrap(), 42);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn<F, T>(self, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let inherit = Inherit::capture(self.context);
        self.inner.spawn(move || inherit.run(f))
    }

    /// Spawns a scoped thread, as [`std::thread::Builder::spawn_scoped`].
    ///
    /// # Errors
    ///
    /// The OS failed to create the thread (as [`std::thread::Builder::spawn_scoped`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::thread::{self, Builder};
    ///
    /// let data = vec![1, 2, 3];
    /// let sum = thread::scope(|s| {
    ///     Builder::new()
    ///         .name("summer".into())
    ///         .spawn_scoped(s, || data.iter().sum::<i32>())
    ///         .map(|h| h.join().unwrap())
    /// })?;
    /// assert_eq!(sum, 6);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn_scoped<'scope, 'env, F, T>(
        self,
        scope: &Scope<'scope, 'env>,
        f: F,
    ) -> io::Result<ScopedJoinHandle<'scope, T>>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'scope,
    {
        let inherit = Inherit::capture(self.context);
        self.inner.spawn_scoped(scope.inner, move || inherit.run(f))
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("inner", &self.inner)
            .field("context", &self.context)
            .finish()
    }
}

/// Scoped threads, as [`std::thread::scope`], that start in the context of
/// the thread that spawns them.
///
/// The closure gets a [`Scope`] handle; it is `Copy`, so a spawned thread
/// can spawn more: `let s = *s;` then `move` it in.
///
/// # Examples
///
/// ```
/// use reclaim_scope::{thread, AllocContext, NoFsScope};
///
/// let mut results = [AllocContext::clear(); 2];
/// let _scope = NoFsScope::enter();
/// thread::scope(|s| {
///     for r in results.iter_mut() {
///         s.spawn(move || *r = AllocContext::current());
///     }
/// });
/// assert!(results.iter().all(|c| c.is_io_flusher()));
/// ```
pub fn scope<'env, F, T>(f: F) -> T
where
    F: for<'scope> FnOnce(&Scope<'scope, 'env>) -> T,
{
    std::thread::scope(|s| f(&Scope::new(s)))
}

/// A handle to a [`std::thread::Scope`] whose [`spawn`](Scope::spawn)
/// carries the spawning thread's [`AllocContext`]. `Copy`: a reference to the
/// std scope.
///
/// # Examples
///
/// ```
/// use reclaim_scope::thread::Scope;
///
/// let n = 5;
/// std::thread::scope(|s| {
///     let s = Scope::new(s); // wrap a std scope
///     assert_eq!(s.spawn(|| n * 2).join().unwrap(), 10);
/// });
/// ```
#[derive(Clone, Copy)]
pub struct Scope<'scope, 'env: 'scope> {
    inner: &'scope std::thread::Scope<'scope, 'env>,
}

impl<'scope, 'env> Scope<'scope, 'env> {
    /// Wraps a std scope.
    ///
    /// # Examples
    ///
    /// ```
    /// std::thread::scope(|s| {
    ///     let s = reclaim_scope::thread::Scope::new(s);
    ///     s.spawn(|| ());
    /// });
    /// ```
    pub fn new(inner: &'scope std::thread::Scope<'scope, 'env>) -> Self {
        Scope { inner }
    }

    /// The std scope, for spawning a thread that must start in its
    /// inherited state.
    ///
    /// # Examples
    ///
    /// ```
    /// reclaim_scope::thread::scope(|s| {
    ///     s.as_std().spawn(|| ()); // plain std: inherits whatever the flag is
    /// });
    /// ```
    pub fn as_std(&self) -> &'scope std::thread::Scope<'scope, 'env> {
        self.inner
    }

    /// Spawns a scoped thread running `f` in the calling thread's
    /// [`AllocContext`], as [`std::thread::Scope::spawn`].
    ///
    /// # Panics
    ///
    /// If the OS fails to create a thread; use [`Builder::spawn_scoped`] to
    /// handle that.
    ///
    /// # Examples
    ///
    /// ```
    /// let v = vec![1, 2];
    /// let n = reclaim_scope::thread::scope(|s| s.spawn(|| v.len()).join().unwrap());
    /// assert_eq!(n, 2);
    /// ```
    pub fn spawn<F, T>(&self, f: F) -> ScopedJoinHandle<'scope, T>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'scope,
    {
        Builder::new()
            .spawn_scoped(self, f)
            .expect("failed to spawn thread")
    }
}

impl fmt::Debug for Scope<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::tests::on_fake;
    use crate::sys::fake::{self, FakeThread, Mode};
    use crate::sys::{PF_LOCAL_THROTTLE, PF_MEMALLOC_NOIO};
    use crate::{AllowFsReclaim, IoFlusher, NoFsScope};

    const BOTH: u32 = PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE;

    fn flags() -> u32 {
        fake::state().unwrap().flags & BOTH
    }
    fn sets() -> u32 {
        fake::state().unwrap().set_calls
    }

    /// (flags inside, set syscalls inside, context inside) of a child.
    type Seen = (u32, u32, AllocContext);
    fn look() -> Seen {
        (flags(), sets(), AllocContext::current())
    }

    #[test]
    fn child_of_a_scope_is_flagged_without_a_syscall() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let s = NoFsScope::enter();
            let seen = spawn(look).join().unwrap();
            assert_eq!(seen, (BOTH, 0, AllocContext::io_flusher()));
            drop(s);
            assert_eq!(flags(), 0, "the parent's scope still restores");
        });
    }

    #[test]
    fn child_outside_a_scope_is_cleared_even_if_parent_inherited_the_flag() {
        on_fake(FakeThread::flagged(Mode::Permitted), || {
            let seen = spawn(look).join().unwrap();
            assert_eq!(seen, (0, 1, AllocContext::clear()));
            assert_eq!(flags(), BOTH, "the parent is left as it was");
            // Inside an AllowFsReclaim the child is clear too.
            let _f = IoFlusher::enter();
            let _c = AllowFsReclaim::enter();
            assert_eq!(spawn(look).join().unwrap(), (0, 0, AllocContext::clear()));
        });
    }

    #[test]
    fn clear_child_of_clear_parent_makes_no_prctl() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let (f, s, c) = spawn(look).join().unwrap();
            assert_eq!((f, s, c), (0, 0, AllocContext::clear()));
            let gets = spawn(|| fake::state().unwrap().get_calls).join().unwrap();
            assert_eq!(gets, 0);
        });
    }

    #[test]
    fn without_capability_an_inherited_flag_stays() {
        on_fake(FakeThread::flagged(Mode::NotPermitted), || {
            let (f, _, c) = spawn(look).join().unwrap();
            assert_eq!(f, BOTH, "EPERM: the flag cannot be cleared");
            assert_eq!(c, AllocContext::clear(), "but the crate's context is clear");
        });
    }

    #[test]
    fn builder_passes_name_stack_and_context() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let h = Builder::new()
                .name("q0".into())
                .stack_size(128 * 1024)
                .context(AllocContext::io_flusher())
                .spawn(|| (std::thread::current().name().map(str::to_owned), look()))
                .unwrap();
            let (name, seen) = h.join().unwrap();
            assert_eq!(name.as_deref(), Some("q0"));
            assert_eq!(seen, (BOTH, 1, AllocContext::io_flusher()));
            assert_eq!(flags(), 0);
            assert!(format!("{:?}", Builder::default()).contains("context: None"));
        });
    }

    #[test]
    fn context_is_captured_at_spawn_not_at_builder() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let b = Builder::new();
            let _s = NoFsScope::enter();
            assert_eq!(
                b.spawn(look).unwrap().join().unwrap().2,
                AllocContext::io_flusher()
            );
        });
    }

    #[test]
    fn scoped_threads_borrow_and_carry_the_context() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let mut out: Vec<Seen> = Vec::new();
            let _f = IoFlusher::enter();
            scope(|s| {
                let a = s.spawn(look);
                let nested = {
                    let s = *s;
                    s.spawn(move || s.spawn(look).join().unwrap())
                };
                let c = Builder::new().spawn_scoped(s, look).unwrap();
                out.push(a.join().unwrap());
                out.push(nested.join().unwrap());
                out.push(c.join().unwrap());
            });
            assert!(
                out.iter()
                    .all(|&x| x == (BOTH, 0, AllocContext::io_flusher())),
                "{out:?}"
            );
            // A wrapped std scope, spawning from a clear region.
            let _c = AllowFsReclaim::enter();
            let seen = std::thread::scope(|s| Scope::new(s).spawn(look).join().unwrap());
            assert_eq!(seen, (0, 0, AllocContext::clear()));
        });
    }

    #[test]
    fn child_is_back_to_its_inherited_state_after_the_closure() {
        on_fake(FakeThread::flagged(Mode::Permitted), || {
            // Run the child side by hand to look after the closure.
            let inherit = Inherit::capture(None);
            let after = std::thread::spawn(move || {
                inherit.run(|| assert_eq!(flags(), 0));
                flags()
            })
            .join()
            .unwrap();
            assert_eq!(after, BOTH);
        });
    }
}
