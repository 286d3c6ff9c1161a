//! The system backend: the only module of the crate that contains `unsafe`.
//!
//! One backend is compiled in, chosen by target:
//! - `linux`: `prctl(2)` and `gettid(2)` through `libc`;
//! - `fallback`: every other target; the prctl answers "unsupported".
//!
//! Unit tests (`cfg(test)`) can install a per-thread [`fake`] kernel that
//! simulates the flag, `EPERM` and `EINVAL`; when none is installed the real
//! backend answers, so the same code paths are exercised either way.

use std::io;

cfg_if::cfg_if! {
    if #[cfg(target_os = "linux")] {
        mod linux;
        use linux as os;
    } else {
        mod fallback;
        use fallback as os;
    }
}

#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod fileio;
#[cfg(all(target_os = "linux", feature = "cli"))]
mod launch;
#[cfg(all(target_os = "linux", feature = "cli"))]
pub(crate) use launch::restore_and_execvp;
pub(crate) mod procfs;

thread_local! {
    static REFUSED: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// The calling thread's memo of a refused `PR_SET_IO_FLUSHER`: 0, or the
/// errno. Per thread, as capabilities are (`capset(2)`, libcap's
/// `cap_set_proc`): a thread that dropped `CAP_SYS_RESOURCE` must not stop a
/// thread that holds it from being flagged. A `const` `Cell` without a
/// destructor: one `%fs`-relative load, never inaccessible. Under
/// `cfg(test)` the installed [`fake`] kernel's memo, if any.
#[inline(always)]
pub(crate) fn refused() -> i32 {
    #[cfg(test)]
    if let Some(s) = fake::state() {
        return s.refused;
    }
    REFUSED.with(std::cell::Cell::get)
}

/// Remembers a refusal for the calling thread (see [`refused`]).
pub(crate) fn set_refused(errno: i32) {
    #[cfg(test)]
    if fake::state().is_some() {
        return fake::update(|s| s.refused = errno);
    }
    REFUSED.with(|r| r.set(errno));
}

/// `PF_SUPERPRIV`: set by the kernel when a task used a capability.
#[cfg(test)]
pub(crate) const PF_SUPERPRIV: u32 = 0x0000_0100;
/// `PF_MEMALLOC_NOFS`: allocations of the task drop `__GFP_FS`.
pub(crate) const PF_MEMALLOC_NOFS: u32 = 0x0004_0000;
/// `PF_MEMALLOC_NOIO`: allocations of the task drop `__GFP_IO` and `__GFP_FS`.
pub(crate) const PF_MEMALLOC_NOIO: u32 = 0x0008_0000;
/// `PF_LOCAL_THROTTLE` (Linux ≥ 5.8): throttle the task only on its own dirty pages.
pub(crate) const PF_LOCAL_THROTTLE: u32 = 0x0010_0000;

/// A raw `errno` value.
pub(crate) type Errno = i32;

pub(crate) const EPERM: Errno = libc::EPERM;
pub(crate) const EINVAL: Errno = libc::EINVAL;
/// `CAP_SYS_RESOURCE` from `<linux/capability.h>`: what `PR_SET_IO_FLUSHER` checks.
pub(crate) const CAP_SYS_RESOURCE: u32 = 24;

/// `prctl(PR_SET_IO_FLUSHER, on)` on the calling thread.
#[inline]
pub(crate) fn set_io_flusher(on: bool) -> Result<(), Errno> {
    #[cfg(test)]
    if let Some(r) = fake::set_io_flusher(on) {
        return r;
    }
    os::set_io_flusher(on)
}

/// `prctl(PR_GET_IO_FLUSHER)` on the calling thread.
#[inline]
pub(crate) fn get_io_flusher() -> Result<bool, Errno> {
    #[cfg(test)]
    if let Some(r) = fake::get_io_flusher() {
        return r;
    }
    os::get_io_flusher()
}

/// The `flags` field of the calling thread, as the kernel reports it in
/// `/proc/thread-self/stat`.
pub(crate) fn thread_flags_self() -> io::Result<u32> {
    #[cfg(test)]
    if let Some(flags) = fake::flags() {
        return Ok(flags);
    }
    let stat = os::read_thread_self_stat()?;
    procfs::parse_stat(&stat).map(|s| s.flags)
}

/// What a new thread takes of the backend's per-thread state from its
/// creator, as `clone()` copies the kernel's flags: nothing in the real
/// backend (the kernel copies them itself); in unit tests, the creator's
/// [`fake`] kernel. Captured on the creating thread right before it spawns
/// ([`capture`](Self::capture)), applied first thing on the new thread
/// ([`apply`](Self::apply)).
pub(crate) struct CloneState {
    #[cfg(test)]
    fake: Option<fake::FakeThread>,
}

impl CloneState {
    /// Called on the creating thread, right before it spawns.
    #[inline]
    pub(crate) fn capture() -> CloneState {
        CloneState {
            #[cfg(test)]
            fake: fake::inherit_capture(),
        }
    }

    /// Called first on the new thread.
    #[inline]
    pub(crate) fn apply(self) {
        #[cfg(test)]
        fake::inherit_apply(self.fake);
    }
}

/// The kernel's id of the calling thread (`gettid(2)`).
#[inline]
pub(crate) fn gettid() -> i32 {
    os::gettid()
}
