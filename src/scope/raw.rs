//! The raw per-thread API, with no scope: [`thread_io_flusher`],
//! [`set_thread_io_flusher`] and [`refresh_thread_state`].

use super::{set_refused, Word, KERNEL_MASK, OP_GET, OP_SET, STATE};
use crate::{proc::ThreadFlags, sys, Error};

/// `prctl(PR_GET_IO_FLUSHER)`: whether the kernel says the calling thread is
/// an I/O flusher.
///
/// Needs `CAP_SYS_RESOURCE` like the setter; [`ThreadFlags::current`] reads
/// the same state without it.
///
/// See [prctl(2)](https://man7.org/linux/man-pages/man2/prctl.2.html).
///
/// # Errors
///
/// The kernel refused `PR_GET_IO_FLUSHER` ([`Error`]: `EPERM` without
/// `CAP_SYS_RESOURCE`, `EINVAL` before Linux 5.6).
///
/// # Examples
///
/// ```
/// match reclaim_scope::thread_io_flusher() {
///     Ok(on) => println!("io flusher: {on}"),
///     Err(e) => println!("cannot ask: {e}"),
/// }
/// ```
#[doc(alias = "PR_GET_IO_FLUSHER")]
pub fn thread_io_flusher() -> Result<bool, Error> {
    sys::get_io_flusher().map_err(|e| Error::from_errno(OP_GET, e))
}

/// `prctl(PR_SET_IO_FLUSHER, on)` on the calling thread, with no scope.
///
/// The building block of launchers (`reclaim-scope exec` sets the flag and
/// execs the daemon, which keeps it: [inheritance](crate#inheritance)).
/// Inside a program prefer the guards: this call does not restore anything.
/// The crate's guards on this thread see the change.
///
/// See [prctl(2)](https://man7.org/linux/man-pages/man2/prctl.2.html).
///
/// # Errors
///
/// The kernel refused `PR_SET_IO_FLUSHER` ([`Error`]: `EPERM` without
/// `CAP_SYS_RESOURCE`, `EINVAL` before Linux 5.6); nothing changed.
///
/// # Examples
///
/// ```
/// if reclaim_scope::set_thread_io_flusher(true).is_ok() {
///     assert!(reclaim_scope::proc::ThreadFlags::current()?.is_io_flusher());
///     reclaim_scope::set_thread_io_flusher(false).unwrap();
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
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
/// # Errors
///
/// When `/proc/thread-self/stat` cannot be read; the crate then forgets
/// what it knew of the thread's flag and probes again at the next scope.
///
/// # Examples
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
