//! [`Support`] and [`support()`]: whether `PR_SET_IO_FLUSHER` can be used
//! by this process.

use super::{set_refused, OP_SET};
use crate::{sys, Error};
use std::fmt;

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
    /// # Examples
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
/// # Examples
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
