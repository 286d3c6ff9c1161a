//! The crate's error type.

use crate::sys;
use std::fmt;
use std::io;

/// What went wrong, in a form a program can match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The kernel refused the request: the caller lacks `CAP_SYS_RESOURCE`
    /// in the initial user namespace (`EPERM`).
    NotPermitted,
    /// The request does not exist here: Linux older than 5.6 (`EINVAL`), or
    /// a target other than Linux.
    Unsupported,
    /// Any other error from the operating system.
    Os,
}

/// An error from a request to the kernel, with a message that names the fix.
///
/// Converts into [`io::Error`] (`PermissionDenied`, `Unsupported`, or the
/// raw OS error), keeping the message.
///
/// # Examples
///
/// ```
/// use reclaim_scope::{ErrorKind, NoFsScope};
///
/// match NoFsScope::try_enter() {
///     Ok(scope) => drop(scope),
///     Err(e) if e.kind() == ErrorKind::NotPermitted => {
///         // The message says how to grant CAP_SYS_RESOURCE.
///         assert!(e.to_string().contains("CAP_SYS_RESOURCE"));
///     }
///     Err(e) => eprintln!("no I/O-flusher context: {e}"),
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Error {
    kind: ErrorKind,
    errno: Option<i32>,
    op: &'static str,
}

impl Error {
    /// Maps the `errno` that `prctl(op)` answered with.
    pub(crate) fn from_errno(op: &'static str, errno: i32) -> Self {
        let kind = if !cfg!(target_os = "linux") {
            ErrorKind::Unsupported
        } else if errno == sys::EPERM {
            ErrorKind::NotPermitted
        } else if errno == sys::EINVAL {
            ErrorKind::Unsupported
        } else {
            ErrorKind::Os
        };
        Error {
            kind,
            errno: Some(errno),
            op,
        }
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The raw `errno` the kernel answered with, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.errno
    }

    /// The request that failed, e.g. `"prctl(PR_SET_IO_FLUSHER)"`.
    pub fn operation(&self) -> &'static str {
        self.op
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::NotPermitted => write!(
                f,
                "{} was refused (EPERM): it needs CAP_SYS_RESOURCE in the initial user \
                 namespace; run the daemon as root outside a container, add \
                 `--cap-add SYS_RESOURCE` to its container, or grant \
                 `AmbientCapabilities=CAP_SYS_RESOURCE` in its systemd unit",
                self.op
            ),
            ErrorKind::Unsupported if cfg!(target_os = "linux") => write!(
                f,
                "{} is not supported by this kernel (EINVAL): it needs Linux 5.6 or newer",
                self.op
            ),
            ErrorKind::Unsupported => write!(
                f,
                "{} is not supported: PR_SET_IO_FLUSHER exists only on Linux 5.6 or newer",
                self.op
            ),
            ErrorKind::Os => {
                let errno = self.errno.unwrap_or(0);
                write!(
                    f,
                    "{} failed: {}",
                    self.op,
                    io::Error::from_raw_os_error(errno)
                )?;
                if self.op.starts_with("prctl") {
                    // PR_SET/GET_IO_FLUSHER answer only EPERM and EINVAL.
                    write!(
                        f,
                        " (an errno the prctl itself never answers: a seccomp filter or a \
                         Linux security module refused the call; allow prctl(57/58) in the \
                         daemon's seccomp profile, e.g. systemd's SystemCallFilter=)"
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match e.kind {
            ErrorKind::NotPermitted => io::ErrorKind::PermissionDenied,
            ErrorKind::Unsupported => io::ErrorKind::Unsupported,
            ErrorKind::Os => e.errno.map_or(io::ErrorKind::Other, |n| {
                io::Error::from_raw_os_error(n).kind()
            }),
        };
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eperm_names_the_capability_and_every_fix() {
        let e = Error::from_errno("prctl(PR_SET_IO_FLUSHER)", sys::EPERM);
        assert_eq!(e.kind(), ErrorKind::NotPermitted);
        let msg = e.to_string();
        for needle in [
            "CAP_SYS_RESOURCE",
            "root outside a container",
            "--cap-add SYS_RESOURCE",
            "AmbientCapabilities=CAP_SYS_RESOURCE",
        ] {
            assert!(msg.contains(needle), "{needle:?} missing from {msg:?}");
        }
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::PermissionDenied);
        assert!(io.to_string().contains("CAP_SYS_RESOURCE"));
    }

    #[test]
    fn einval_means_old_kernel() {
        let e = Error::from_errno("prctl(PR_SET_IO_FLUSHER)", sys::EINVAL);
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("5.6"));
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::Unsupported);
    }

    #[test]
    fn other_errno_is_os_and_keeps_its_kind() {
        let e = Error::from_errno("prctl(PR_GET_IO_FLUSHER)", libc::EFAULT);
        assert_eq!(e.kind(), ErrorKind::Os);
        assert_eq!(e.raw_os_error(), Some(libc::EFAULT));
        assert!(e.to_string().starts_with("prctl(PR_GET_IO_FLUSHER) failed"));
    }
}
