//! The crate's error type.

use crate::sys;
use std::fmt;
use std::io;

/// What went wrong, in a form a program can match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request was refused with `EPERM`: almost always the caller lacks
    /// `CAP_SYS_RESOURCE` in the initial user namespace; a seccomp filter or
    /// a Linux security module answering `EPERM` looks the same (the
    /// message says which is likelier here; `reclaim-scope probe` tells).
    NotPermitted,
    /// The request does not exist here (`EINVAL`): Linux older than 5.6, or
    /// a seccomp filter or LSM answering `EINVAL` on a newer kernel (the
    /// message says which), or a target other than Linux.
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

/// What the running system says about a refusal, for its message.
#[derive(Clone, Copy, Debug, Default)]
struct Here {
    /// `major.minor` of the running kernel.
    kernel: Option<(u32, u32)>,
    /// Whether the thread holds `CAP_SYS_RESOURCE` (effective set).
    cap_sys_resource: Option<bool>,
}

impl Here {
    fn now() -> Here {
        Here {
            kernel: sys::procfs::kernel_version(),
            cap_sys_resource: sys::procfs::thread_has_capability(sys::CAP_SYS_RESOURCE),
        }
    }
}

impl Error {
    fn describe(&self, f: &mut fmt::Formatter<'_>, here: Here) -> fmt::Result {
        match self.kind {
            ErrorKind::NotPermitted if here.cap_sys_resource == Some(true) => write!(
                f,
                "{} was refused (EPERM) although this thread holds CAP_SYS_RESOURCE: either \
                 it holds it only inside a user namespace (the kernel checks the initial \
                 one: run the daemon outside it, or give the container SYS_RESOURCE from the \
                 host), or a seccomp filter or a Linux security module refused the call \
                 (allow prctl(57/58), e.g. in systemd's SystemCallFilter=); \
                 `reclaim-scope probe` tells which",
                self.op
            ),
            ErrorKind::NotPermitted => write!(
                f,
                "{} was refused (EPERM): it needs CAP_SYS_RESOURCE in the initial user \
                 namespace; run the daemon as root outside a container, add \
                 `--cap-add SYS_RESOURCE` to its container, or grant \
                 `AmbientCapabilities=CAP_SYS_RESOURCE` in its systemd unit",
                self.op
            ),
            ErrorKind::Unsupported if cfg!(target_os = "linux") => match here.kernel {
                Some((maj, min)) if (maj, min) >= (5, 6) => write!(
                    f,
                    "{} was refused with EINVAL although Linux {maj}.{min} has it (Linux 5.6 \
                     or newer): a seccomp filter or a Linux security module answers EINVAL \
                     for it; allow prctl(57/58) in the daemon's profile (`reclaim-scope \
                     probe` tells which)",
                    self.op
                ),
                Some((maj, min)) => write!(
                    f,
                    "{} is not supported by this kernel (EINVAL): it needs Linux 5.6 or \
                     newer, this is {maj}.{min}",
                    self.op
                ),
                None => write!(
                    f,
                    "{} is not supported by this kernel (EINVAL): it needs Linux 5.6 or newer",
                    self.op
                ),
            },
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

/// The message names the fix; for `EPERM` and `EINVAL` it reads the
/// running kernel's version and the thread's capabilities from `/proc` to
/// tell a missing capability or an old kernel from a filter.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let here = match self.kind {
            ErrorKind::NotPermitted | ErrorKind::Unsupported => Here::now(),
            ErrorKind::Os => Here::default(),
        };
        self.describe(f, here)
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

    /// The message as it would read on a system described by `here`.
    fn text(e: &Error, here: Here) -> String {
        struct With<'a>(&'a Error, Here);
        impl fmt::Display for With<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.describe(f, self.1)
            }
        }
        With(e, here).to_string()
    }

    #[test]
    fn refusals_name_the_likely_cause_on_the_running_system() {
        let eperm = Error::from_errno("prctl(PR_SET_IO_FLUSHER)", sys::EPERM);
        let einval = Error::from_errno("prctl(PR_SET_IO_FLUSHER)", sys::EINVAL);
        // No capability: the capability is the fix.
        let m = text(
            &eperm,
            Here {
                kernel: Some((6, 1)),
                cap_sys_resource: Some(false),
            },
        );
        assert!(
            m.contains("it needs CAP_SYS_RESOURCE") && !m.contains("seccomp"),
            "{m}"
        );
        // Capability held: a user namespace, a filter or an LSM.
        let m = text(
            &eperm,
            Here {
                kernel: Some((6, 1)),
                cap_sys_resource: Some(true),
            },
        );
        assert!(
            m.contains("although this thread holds CAP_SYS_RESOURCE")
                && m.contains("user namespace")
                && m.contains("seccomp"),
            "{m}"
        );
        // Old kernel: the version is the fix, and named.
        let m = text(
            &einval,
            Here {
                kernel: Some((5, 4)),
                cap_sys_resource: Some(true),
            },
        );
        assert!(m.contains("needs Linux 5.6 or newer, this is 5.4"), "{m}");
        // A kernel that has it: EINVAL comes from a filter.
        let m = text(
            &einval,
            Here {
                kernel: Some((6, 12)),
                cap_sys_resource: None,
            },
        );
        assert!(
            m.contains("although Linux 6.12 has it") && m.contains("seccomp"),
            "{m}"
        );
        // Nothing known: the general fixes.
        let m = text(&einval, Here::default());
        assert!(m.contains("needs Linux 5.6 or newer"), "{m}");
    }

    #[test]
    fn other_errno_is_os_and_keeps_its_kind() {
        let e = Error::from_errno("prctl(PR_GET_IO_FLUSHER)", libc::EFAULT);
        assert_eq!(e.kind(), ErrorKind::Os);
        assert_eq!(e.raw_os_error(), Some(libc::EFAULT));
        assert!(e.to_string().starts_with("prctl(PR_GET_IO_FLUSHER) failed"));
    }
}
