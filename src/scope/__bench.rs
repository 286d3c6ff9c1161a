//! Hooks for the crate's own benchmarks, behind the explicitly unstable
//! `unstable-bench` feature (as tokio's `test-util`): never enable it in a
//! daemon — `assume_thread_flag(true)` makes guards report effective on a
//! thread the kernel does not protect.

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
///
/// # Errors
///
/// The errno of the `prctl`.
#[inline]
pub fn raw_set_io_flusher(on: bool) -> Result<(), i32> {
    sys::set_io_flusher(on)
}
