//! Futures that run in a reclaim context on every poll, whatever thread
//! polls them.
//!
//! An async task hops between the worker threads of a runtime, and each
//! worker has its own kernel flag; a guard cannot be held across `.await`
//! (it is `!Send`, and the next poll may run elsewhere). The wrapper
//! [`InContext`] does what `tracing::Instrumented` does for spans: it
//! enters the context at the start of every `poll` and leaves it when the
//! poll returns, so between polls the worker is back in its own state —
//! and it enters it again while the inner future is **dropped**, because
//! destructors allocate and free too.
//!
//! ```
//! use reclaim_scope::future::NoFsFutureExt;
//!
//! async fn serve_request() -> usize {
//!     // allocations here run with GFP_NOIO, on whichever worker polls
//!     vec![0u8; 4096].len()
//! }
//!
//! let fut = serve_request().nofs();
//! # let _ = fut;
//! ```
//!
//! Never hold a scope guard across an `.await` inside the future: a poll
//! that returns `Pending` with a guard of the future still alive breaks
//! the thread's nesting (a debug-build panic). Wrap the future instead.

use crate::AllocContext;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{self, Poll};

pin_project! {
    /// A future (or, with the `futures-core` feature, a stream) that runs
    /// in a [`AllocContext`] during every `poll` and while it is dropped. Made
    /// by [`NoFsFutureExt`] or [`InContext::new`].
    ///
    /// Per poll on a thread already in the requested state (an I/O-flusher
    /// runtime worker), entering and leaving costs a few thread-local
    /// instructions and no syscall; on a thread in the other state it
    /// costs two `prctl` calls.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::{future::InContext, AllocContext};
    ///
    /// let fut = InContext::new(async { AllocContext::current() }, AllocContext::io_flusher());
    /// assert_eq!(fut.context(), AllocContext::io_flusher());
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct InContext<F> {
        // `Option` instead of tracing's `ManuallyDrop` so that the inner
        // future can be dropped in place inside the context without
        // `unsafe`: `Pin::set(None)` drops it where it is pinned. Always
        // `Some` until the wrapper is dropped or taken apart.
        #[pin]
        inner: Option<F>,
        ctx: AllocContext,
    }

    impl<F> PinnedDrop for InContext<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if this.inner.is_some() {
                let _guard = this.ctx.enter();
                this.inner.set(None);
            }
        }
    }
}

impl<F> InContext<F> {
    /// Wraps `inner` so that it is polled and dropped in `ctx`.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::{future::InContext, AllocContext};
    /// let fut = InContext::new(async { 1 }, AllocContext::clear());
    /// # let _ = fut;
    /// ```
    pub fn new(inner: F, ctx: AllocContext) -> Self {
        InContext {
            inner: Some(inner),
            ctx,
        }
    }

    /// The context the wrapper enters.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::{future::NoFsFutureExt, AllocContext};
    /// assert_eq!(async {}.nofs().context(), AllocContext::io_flusher());
    /// ```
    pub fn context(&self) -> AllocContext {
        self.ctx
    }

    /// The wrapped future.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::future::NoFsFutureExt;
    /// let fut = std::future::ready(3).nofs();
    /// let _inner: &std::future::Ready<i32> = fut.get_ref();
    /// ```
    pub fn get_ref(&self) -> &F {
        self.inner.as_ref().expect(TAKEN)
    }

    /// The wrapped future, mutably.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::future::NoFsFutureExt;
    /// let mut fut = std::future::ready(3).nofs();
    /// let _inner: &mut std::future::Ready<i32> = fut.get_mut();
    /// ```
    pub fn get_mut(&mut self) -> &mut F {
        self.inner.as_mut().expect(TAKEN)
    }

    /// The wrapped future, pinned.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::future::NoFsFutureExt;
    /// let mut fut = Box::pin(async { 1 }.nofs());
    /// let _inner = fut.as_mut().get_pin_mut();
    /// ```
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut F> {
        self.project().inner.as_pin_mut().expect(TAKEN)
    }

    /// Unwraps the inner future (which is then dropped outside the
    /// context, wherever its new owner drops it).
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::future::NoFsFutureExt;
    /// let fut = std::future::ready(3).nofs();
    /// let inner: std::future::Ready<i32> = fut.into_inner();
    /// # let _ = inner;
    /// ```
    pub fn into_inner(self) -> F {
        let mut this = self;
        this.inner.take().expect(TAKEN)
    }
}

const TAKEN: &str = "reclaim-scope: InContext used after its inner future was dropped";

impl<F: Future> Future for InContext<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let inner = this.inner.as_pin_mut().expect(TAKEN);
        this.ctx.run(|| inner.poll(cx))
    }
}

#[cfg(feature = "futures-core")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures-core")))]
impl<S: futures_core::Stream> futures_core::Stream for InContext<S> {
    type Item = S::Item;

    #[inline]
    fn poll_next(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        let inner = this.inner.as_pin_mut().expect(TAKEN);
        this.ctx.run(|| inner.poll_next(cx))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.as_ref().map_or((0, Some(0)), |s| s.size_hint())
    }
}

impl<F: fmt::Debug> fmt::Debug for InContext<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InContext")
            .field("inner", &self.inner)
            .field("ctx", &self.ctx)
            .finish()
    }
}

/// Runs a future (or, with the `futures-core` feature, a `Stream`) in a
/// reclaim context: `fut.nofs()`, `fut.allow_fs_reclaim()`,
/// `fut.in_context(ctx)`, `fut.in_current_context()`.
///
/// Implemented for every type, as tracing's `Instrument` is: the wrapper
/// [`InContext`] is a [`Future`] when the inner value is one, and a `Stream`
/// when it is one.
///
/// # Examples
///
/// ```
/// use reclaim_scope::{future::NoFsFutureExt, AllocContext};
///
/// let ctx = AllocContext::current();   // captured where the request arrives
/// let task = async { 42 }.in_context(ctx);
/// # let _ = task;
/// ```
pub trait NoFsFutureExt: Sized {
    /// Polls (and drops) the future inside a [`NoFsScope`](crate::NoFsScope):
    /// its allocations cannot recurse into file-system or I/O reclaim
    /// ([`AllocContext::io_flusher`]: the same kernel state for a region of a
    /// task as for a task that is the daemon's whole I/O path).
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::future::NoFsFutureExt;
    /// let fut = async { vec![0u8; 4096] }.nofs();
    /// # let _ = fut;
    /// ```
    fn nofs(self) -> InContext<Self> {
        InContext::new(self, AllocContext::io_flusher())
    }

    /// Polls (and drops) the future with the flag cleared, even on an
    /// I/O-flusher worker: for background work that may use full reclaim.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::future::NoFsFutureExt;
    /// let compaction = async { /* rewrite a big index */ }.allow_fs_reclaim();
    /// # let _ = compaction;
    /// ```
    fn allow_fs_reclaim(self) -> InContext<Self> {
        InContext::new(self, AllocContext::clear())
    }

    /// Polls (and drops) the future in `ctx`.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::{future::NoFsFutureExt, AllocContext};
    /// let fut = async {}.in_context(AllocContext::io_flusher());
    /// # let _ = fut;
    /// ```
    fn in_context(self, ctx: AllocContext) -> InContext<Self> {
        InContext::new(self, ctx)
    }

    /// Polls (and drops) the future in the calling thread's context,
    /// captured now ([`AllocContext::current`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::{future::NoFsFutureExt, AllocContext, NoFsScope};
    /// let _s = NoFsScope::enter();
    /// let fut = async {}.in_current_context();
    /// assert_eq!(fut.context(), AllocContext::io_flusher());
    /// ```
    fn in_current_context(self) -> InContext<Self> {
        InContext::new(self, AllocContext::current())
    }
}

impl<T> NoFsFutureExt for T {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::tests::on_fake;
    use crate::sys::fake::{self, FakeThread, Mode};
    use crate::sys::{PF_LOCAL_THROTTLE, PF_MEMALLOC_NOIO};
    use crate::IoFlusher;
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::task::Wake;

    const BOTH: u32 = PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE;

    fn flags() -> u32 {
        fake::state().unwrap().flags & BOTH
    }

    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let waker = Arc::new(Noop).into();
        let mut cx = task::Context::from_waker(&waker);
        Pin::new(f).poll(&mut cx)
    }

    /// A future that records the fake flags at each poll and is `Pending`
    /// `n` times, and records them again when dropped.
    struct Probe {
        left: u32,
        log: mpsc::Sender<(&'static str, u32)>,
    }
    impl Future for Probe {
        type Output = u32;
        fn poll(mut self: Pin<&mut Self>, _: &mut task::Context<'_>) -> Poll<u32> {
            self.log.send(("poll", flags())).unwrap();
            if self.left == 0 {
                Poll::Ready(flags())
            } else {
                self.left -= 1;
                Poll::Pending
            }
        }
    }
    impl Drop for Probe {
        fn drop(&mut self) {
            self.log.send(("drop", flags())).unwrap();
        }
    }

    #[test]
    fn flagged_in_every_poll_clear_between() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let (tx, rx) = mpsc::channel();
            let mut fut = Box::pin(Probe { left: 3, log: tx }.nofs());
            for _ in 0..3 {
                assert!(poll_once(&mut fut).is_pending());
                assert_eq!(flags(), 0, "flag leaked out of poll");
            }
            assert_eq!(poll_once(&mut fut), Poll::Ready(BOTH));
            assert_eq!(flags(), 0);
            drop(fut);
            let log: Vec<_> = rx.iter().collect();
            assert_eq!(log.len(), 5);
            assert!(log[..4].iter().all(|&(k, f)| k == "poll" && f == BOTH));
            assert_eq!(log[4], ("drop", BOTH));
            assert_eq!(flags(), 0);
        });
    }

    #[test]
    fn dropped_midway_is_dropped_in_context() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let (tx, rx) = mpsc::channel();
            let mut fut = Box::pin(Probe { left: 10, log: tx }.nofs());
            assert!(poll_once(&mut fut).is_pending());
            drop(fut);
            assert_eq!(rx.iter().last(), Some(("drop", BOTH)));
            assert_eq!(flags(), 0);
        });
    }

    #[test]
    fn allow_fs_reclaim_clears_on_a_flusher_worker() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let _worker = IoFlusher::enter();
            let (tx, rx) = mpsc::channel();
            let mut fut = Box::pin(Probe { left: 1, log: tx }.allow_fs_reclaim());
            assert!(poll_once(&mut fut).is_pending());
            assert_eq!(flags(), BOTH);
            assert_eq!(poll_once(&mut fut), Poll::Ready(0));
            drop(fut);
            assert!(rx.iter().all(|(_, f)| f == 0));
            assert_eq!(flags(), BOTH);
        });
    }

    #[test]
    fn migrates_between_threads() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let (tx, rx) = mpsc::channel();
            let ctx = {
                let _f = IoFlusher::enter();
                AllocContext::current()
            };
            let mut fut = Box::pin(Probe { left: 2, log: tx }.in_context(ctx));
            for _ in 0..3 {
                // Each poll on a fresh "worker" with its own clear kernel.
                fut = std::thread::spawn(move || {
                    fake::install(FakeThread::new(Mode::Permitted));
                    let _ = poll_once(&mut fut);
                    assert_eq!(flags(), 0, "worker left flagged");
                    fut
                })
                .join()
                .unwrap();
            }
            drop(fut); // here, on the test thread
            let log: Vec<_> = rx.iter().collect();
            assert_eq!(log.len(), 4);
            assert!(log.iter().all(|&(_, f)| f == BOTH), "{log:?}");
            assert_eq!(flags(), 0);
        });
    }

    #[test]
    fn into_inner_and_accessors() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let (tx, rx) = mpsc::channel();
            let mut fut = Probe { left: 0, log: tx }.in_current_context();
            assert_eq!(fut.context(), AllocContext::clear());
            fut.get_mut().left = 0;
            assert_eq!(fut.get_ref().left, 0);
            let inner = fut.into_inner(); // no drop of the inner future yet
            assert!(rx.try_recv().is_err());
            drop(inner);
            assert_eq!(rx.recv().unwrap(), ("drop", 0));
            assert!(format!("{:?}", std::future::ready(1).nofs()).contains("io_flusher"));
        });
    }

    #[cfg(feature = "futures-core")]
    #[test]
    fn stream_items_are_produced_in_context() {
        use futures_core::Stream;
        struct Count(u32);
        impl Stream for Count {
            type Item = u32;
            fn poll_next(mut self: Pin<&mut Self>, _: &mut task::Context<'_>) -> Poll<Option<u32>> {
                self.0 += 1;
                Poll::Ready((self.0 <= 2).then(flags))
            }
        }
        on_fake(FakeThread::new(Mode::Permitted), || {
            // The extension trait applies to streams too.
            let mut s = Box::pin(Count(0).nofs());
            let waker = Arc::new(Noop).into();
            let mut cx = task::Context::from_waker(&waker);
            assert_eq!(s.as_mut().poll_next(&mut cx), Poll::Ready(Some(BOTH)));
            assert_eq!(flags(), 0);
            assert_eq!(s.as_mut().poll_next(&mut cx), Poll::Ready(Some(BOTH)));
            assert_eq!(s.as_mut().poll_next(&mut cx), Poll::Ready(None));
        });
    }
}
