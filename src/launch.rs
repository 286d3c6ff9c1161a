//! Replacing the process with a command while changing nothing its parent
//! gave it (feature `cli`): what `reclaim-scope exec` does after setting the
//! flag.
//!
//! A Rust program does not run with what `execve()` handed it: before `main`
//! std ignores `SIGPIPE` and opens `/dev/null` on closed standard
//! descriptors, and `std::process::Command::exec` resets `SIGPIPE` to the
//! default and empties the signal mask. A launcher that uses them changes
//! the daemon it launches: a service that systemd started with `SIGPIPE`
//! ignored dies on its first broken pipe. [`exec`] gives the command what
//! this process was started with.

#[cfg(target_os = "linux")]
use crate::sys;
use std::ffi::{OsStr, OsString};
use std::io;

/// Replaces the calling process with `program` and `args`, found on `PATH`
/// as `execvp(3)` finds it (`argv[0]` is `program`), with exactly what this
/// process was started with:
///
/// - the set of ignored signals (`SigIgn` in `/proc/PID/status`): `SIGPIPE`
///   is ignored again if, and only if, the parent had it ignored;
/// - the signal mask (`SigBlk`);
/// - standard descriptors (0, 1, 2) that were closed stay closed, not
///   `/dev/null`;
/// - argv, the environment, the pid and every other open descriptor.
///
/// The start state is recorded by an `.init_array` constructor, which the C
/// library runs before `main` and so before std's runtime changes anything;
/// it reads every signal's disposition, the mask and descriptors 0–2 (about
/// 70 system calls) in every program linked with this crate's `cli` feature.
///
/// Returns only if the exec failed; dispositions and mask are then as they
/// were before the call.
///
/// # Errors
///
/// What `execvp(3)` answered (`NotFound`, `PermissionDenied`, ...), or
/// `InvalidInput` for an argument containing a NUL byte.
///
/// See [execvp(3)](https://man7.org/linux/man-pages/man3/execvp.3.html),
/// [signal(7)](https://man7.org/linux/man-pages/man7/signal.7.html).
///
/// # Examples
///
/// ```no_run
/// use std::ffi::OsString;
///
/// let err = reclaim_scope::launch::exec("qemu-nbd".as_ref(), &[OsString::from("--help")]);
/// eprintln!("cannot run qemu-nbd: {err}");
/// ```
#[doc(alias = "execvp")]
pub fn exec(program: &OsStr, args: &[OsString]) -> io::Error {
    #[cfg(target_os = "linux")]
    return sys::restore_and_execvp(program, args);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (program, args);
        io::Error::new(
            io::ErrorKind::Unsupported,
            "reclaim_scope::launch::exec is only available on Linux",
        )
    }
}
