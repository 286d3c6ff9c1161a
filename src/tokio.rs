//! Tokio integration (feature `tokio`): a reclaim context for every
//! runtime thread, and spawn helpers that carry the caller's [`AllocContext`].
//!
//! # Give every runtime a thread policy
//!
//! Tokio creates threads lazily — workers when the runtime is built,
//! blocking-pool threads when `spawn_blocking` (or `tokio::fs`, or
//! `block_in_place`) finds no idle one — and each new thread copies the
//! flag of **the thread that happened to trigger it** at that moment
//! ([inheritance](crate#inheritance)). A
//! task polled inside a scope that calls `spawn_blocking` creates a
//! blocking thread that is an I/O flusher for life; a runtime built inside
//! an `IoFlusher` has flagged workers. The kernel-truth suite shows both.
//! So pin the state of the runtime's threads with the builder's hooks:
//!
//! - [`io_flusher_threads`]: every thread — workers and blocking pool — is
//!   an I/O flusher for its whole life: the runtime that serves the device.
//! - [`clear_threads`]: every thread is clear for its whole life, whatever
//!   it inherited: any other runtime of a process that uses the flag.
//! - [`context_threads`] with any [`AllocContext`]; [`on_thread_start`] and
//!   [`on_thread_stop`] to combine with hooks of your own.
//!
//! # Tasks
//!
//! [`spawn`] and [`spawn_blocking`] run a task in the context of the code
//! that spawns it (see [`InContext`](crate::future::InContext)), on any
//! runtime: entered per poll, no syscall when the worker already is in that
//! state, two `prctl` calls per poll when it is not. So on an I/O-flusher
//! runtime spawn tasks that should simply take the worker's state with
//! plain `tokio::spawn`.
//!
//! A current-thread runtime polls on the thread that calls `block_on`:
//! wrap the root future ([`NoFsFutureExt`])
//! or call `block_on` inside an [`IoFlusher`](crate::IoFlusher); its
//! blocking pool still gets the hooks.

use crate::future::NoFsFutureExt;
use crate::{AllocContext, AllocContextGuard};
use ::tokio::runtime::Builder;
use ::tokio::task::JoinHandle;
use std::cell::RefCell;
use std::future::Future;

thread_local! {
    /// The guard that pins a runtime thread's context, held from
    /// `on_thread_start` to `on_thread_stop` (a guard is `!Send`: it must
    /// live and die on its thread).
    static THREAD_CONTEXT: RefCell<Option<AllocContextGuard>> = const { RefCell::new(None) };
}

/// Makes every thread the runtime starts — workers and blocking-pool
/// threads — an I/O flusher for its whole life, best effort.
///
/// Installs `on_thread_start` / `on_thread_stop` hooks, **replacing** hooks
/// set before (see [`on_thread_start`] to combine). A refusal (no
/// `CAP_SYS_RESOURCE`) is [reported once](crate::degradation); check
/// [`support`](crate::support) first to refuse to start unprotected.
///
/// # Examples
///
/// ```
/// use reclaim_scope::AllocContext;
///
/// let rt = reclaim_scope::tokio::io_flusher_threads(
///     tokio::runtime::Builder::new_multi_thread().worker_threads(2),
/// )
/// .build()?;
/// // Work on the runtime's threads runs as an I/O flusher.
/// let ctx = rt.block_on(async { tokio::spawn(async { AllocContext::current() }).await })?;
/// assert!(ctx.is_io_flusher());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn io_flusher_threads(builder: &mut Builder) -> &mut Builder {
    context_threads(builder, AllocContext::io_flusher())
}

/// Makes every thread the runtime starts clear for its whole life, even a
/// thread created by a flagged thread (which `clone()` would flag).
///
/// # Examples
///
/// ```
/// use reclaim_scope::{AllocContext, IoFlusher};
///
/// let _worker = IoFlusher::enter(); // would be inherited by new threads...
/// let rt = reclaim_scope::tokio::clear_threads(
///     tokio::runtime::Builder::new_multi_thread().worker_threads(1),
/// )
/// .build()?;
/// let ctx = rt.block_on(async { tokio::spawn(async { AllocContext::current() }).await })?;
/// assert_eq!(ctx, AllocContext::clear()); // ...but the runtime's threads are clear
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn clear_threads(builder: &mut Builder) -> &mut Builder {
    context_threads(builder, AllocContext::clear())
}

/// Runs every thread the runtime starts in `ctx` for its whole life.
///
/// # Examples
///
/// ```
/// let rt = reclaim_scope::tokio::context_threads(
///     &mut tokio::runtime::Builder::new_multi_thread(),
///     reclaim_scope::AllocContext::io_flusher(),
/// )
/// .build()?;
/// # drop(rt);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn context_threads(builder: &mut Builder, ctx: AllocContext) -> &mut Builder {
    builder
        .on_thread_start(move || on_thread_start(ctx))
        .on_thread_stop(on_thread_stop)
}

/// Thread-start hook: enters `ctx` on the calling thread — an
/// [`IoFlusher`](crate::IoFlusher) role or an
/// [`AllowFsReclaim`](crate::AllowFsReclaim) — and holds it in a
/// thread-local until [`on_thread_stop`]. A second call on the same thread
/// keeps the first context.
///
/// # Examples
///
/// ```
/// use reclaim_scope::AllocContext;
///
/// let rt = tokio::runtime::Builder::new_multi_thread()
///     .worker_threads(1)
///     .on_thread_start(|| {
///         reclaim_scope::tokio::on_thread_start(AllocContext::io_flusher());
///         // ...your own per-thread setup
///     })
///     .on_thread_stop(reclaim_scope::tokio::on_thread_stop)
///     .build()?;
/// # drop(rt);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn on_thread_start(ctx: AllocContext) {
    let _ = THREAD_CONTEXT.try_with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            *slot = Some(ctx.enter_for_thread());
        }
    });
}

/// Thread-stop hook: drops the thread's context guard, on its own thread
/// and after all work the thread ran (so in nesting order). A thread that
/// exits without the hook drops it during thread-local teardown, which is
/// harmless.
///
/// # Examples
///
/// ```
/// use reclaim_scope::AllocContext;
///
/// reclaim_scope::tokio::on_thread_start(AllocContext::io_flusher());
/// assert_eq!(AllocContext::current(), AllocContext::io_flusher());
/// reclaim_scope::tokio::on_thread_stop(); // this thread is back as it was
/// assert_eq!(AllocContext::current(), AllocContext::clear());
/// ```
pub fn on_thread_stop() {
    let guard = THREAD_CONTEXT
        .try_with(|slot| slot.borrow_mut().take())
        .ok()
        .flatten();
    drop(guard);
}

/// [`tokio::spawn`]s `future` so that every poll of it
/// (and its drop) runs in the caller's [`AllocContext`].
///
/// # Panics
///
/// Like `tokio::spawn`, outside a runtime.
///
/// # Examples
///
/// ```
/// use reclaim_scope::{AllocContext, NoFsScope};
///
/// let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build()?;
/// let ctx = rt.block_on(async {
///     let task = {
///         let _scope = NoFsScope::enter(); // never across an .await
///         reclaim_scope::tokio::spawn(async { AllocContext::current() })
///     };
///     task.await
/// })?;
/// assert!(ctx.is_io_flusher());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[track_caller]
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    ::tokio::spawn(future.in_current_context())
}

/// [`tokio::task::spawn_blocking`]s `f` so
/// that it runs in the caller's [`AllocContext`] on the blocking pool.
///
/// If this call makes tokio create a blocking thread, the new thread copies
/// the caller's kernel flag: give the runtime a [thread
/// policy](self#give-every-runtime-a-thread-policy).
///
/// # Panics
///
/// Like `tokio::task::spawn_blocking`, outside a runtime.
///
/// # Examples
///
/// ```
/// use reclaim_scope::{AllocContext, IoFlusher};
///
/// let rt = reclaim_scope::tokio::clear_threads(
///     tokio::runtime::Builder::new_multi_thread().worker_threads(1),
/// )
/// .build()?;
/// let ctx = rt.block_on(async {
///     let job = {
///         let _flusher = IoFlusher::enter();
///         reclaim_scope::tokio::spawn_blocking(AllocContext::current)
///     };
///     job.await
/// })?;
/// assert!(ctx.is_io_flusher());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[track_caller]
pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    ::tokio::task::spawn_blocking(AllocContext::current().wrap(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::future::NoFsFutureExt;
    use crate::NoFsScope;

    // The fake kernel is per thread and tokio's threads have none, so these
    // tests check the crate's context on the runtime's threads; the kernel
    // flags themselves are checked in the VM (tests/vm_propagation.rs).

    #[test]
    fn runtime_threads_are_flushers_and_tasks_carry_context() {
        let rt =
            io_flusher_threads(::tokio::runtime::Builder::new_multi_thread().worker_threads(2))
                .build()
                .unwrap();
        let (worker, blocking) = rt.block_on(async {
            let w = ::tokio::spawn(async { AllocContext::current() })
                .await
                .unwrap();
            let b = ::tokio::task::spawn_blocking(AllocContext::current)
                .await
                .unwrap();
            (w, b)
        });
        assert_eq!(worker, AllocContext::io_flusher());
        assert_eq!(blocking, AllocContext::io_flusher());

        // A task spawned from a clear context runs clear on a flusher worker.
        let clear = rt.block_on(async { spawn(async { AllocContext::current() }).await.unwrap() });
        assert_eq!(clear, AllocContext::clear());
        let clear_blocking = rt.block_on(async {
            let _c = crate::AllowFsReclaim::enter();
            spawn_blocking(AllocContext::current).await.unwrap()
        });
        assert_eq!(clear_blocking, AllocContext::clear());
    }

    #[test]
    fn clear_threads_pins_clear_even_when_built_in_a_flusher() {
        let _worker = crate::IoFlusher::enter();
        let rt = clear_threads(::tokio::runtime::Builder::new_multi_thread().worker_threads(1))
            .build()
            .unwrap();
        let (w, b) = rt.block_on(async {
            let w = ::tokio::spawn(async { AllocContext::current() })
                .await
                .unwrap();
            let b = ::tokio::task::spawn_blocking(AllocContext::current)
                .await
                .unwrap();
            (w, b)
        });
        assert_eq!((w, b), (AllocContext::clear(), AllocContext::clear()));
    }

    #[test]
    fn spawn_carries_a_scope_into_a_plain_runtime() {
        let rt = ::tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let seen = rt.block_on(
            async {
                // Captured inside the scope, polled on the workers.
                let t = spawn(async {
                    let mut v = Vec::new();
                    for _ in 0..4 {
                        v.push(AllocContext::current());
                        ::tokio::task::yield_now().await;
                    }
                    v
                });
                t.await.unwrap()
            }
            .nofs(),
        );
        assert!(seen.iter().all(|c| c.is_io_flusher()), "{seen:?}");
        // block_on itself is back to clear on this thread.
        assert_eq!(AllocContext::current(), AllocContext::clear());
    }

    #[test]
    fn hooks_are_idempotent_and_restore() {
        std::thread::spawn(|| {
            on_thread_start(AllocContext::io_flusher());
            on_thread_start(AllocContext::clear());
            assert_eq!(AllocContext::current(), AllocContext::io_flusher());
            {
                let _s = NoFsScope::enter();
            }
            on_thread_stop();
            on_thread_stop();
            assert_eq!(AllocContext::current(), AllocContext::clear());
        })
        .join()
        .unwrap();
    }
}
