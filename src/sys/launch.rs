//! What the parent gave this process, recorded before the Rust runtime
//! changed it, and an `execvp(3)` that gives it back.
//!
//! Before `main`, std's runtime ignores `SIGPIPE`, installs `SIGSEGV` and
//! `SIGBUS` handlers (where they were `SIG_DFL`) and opens `/dev/null` on any
//! of the descriptors 0, 1 and 2 that the parent left closed. Those changes
//! happen in `std::rt::lang_start`, which `main` calls; `.init_array`
//! constructors run earlier, from the C library's start code, so the
//! constructor below sees exactly what `execve()` handed over: which signals
//! were ignored, the signal mask, and which standard descriptors were
//! closed. [`restore_and_execvp`] puts those back and calls `execvp(3)`
//! directly (std's `Command::exec` would reset `SIGPIPE` to the default and
//! empty the signal mask).
//!
//! Only the "ignored or not" part of a disposition survives `execve()`
//! (handlers are reset to `SIG_DFL`), so the ignored set is all that needs
//! recording.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

/// The highest signal number recorded (the kernel has 64).
const NSIG: i32 = 64;

/// Bit `n - 1` is set if signal `n` was ignored at start (like `SigIgn:` in
/// `/proc/PID/status`).
static IGNORED_AT_START: AtomicU64 = AtomicU64::new(0);
/// Bit `n - 1` is set if signal `n` was blocked at start (`SigBlk:`).
static BLOCKED_AT_START: AtomicU64 = AtomicU64::new(0);
/// Bit `fd` is set if standard descriptor `fd` (0, 1, 2) was closed at start.
static CLOSED_AT_START: AtomicU8 = AtomicU8::new(0);
/// Whether the constructor ran.
static RECORDED: AtomicBool = AtomicBool::new(false);

/// Registered in `.init_array`: the C library calls it before `main` (glibc
/// passes `argc, argv, envp`; musl passes nothing, which the C calling
/// convention makes harmless since the arguments are not read).
#[used]
#[link_section = ".init_array"]
static RECORD_AT_START: extern "C" fn(libc::c_int, *const *const u8, *const *const u8) =
    record_at_start;

extern "C" fn record_at_start(_: libc::c_int, _: *const *const u8, _: *const *const u8) {
    let ignored = current_ignored();
    let blocked = current_blocked();
    let mut closed = 0u8;
    for fd in 0..3 {
        // SAFETY: F_GETFD only reads the descriptor's flags; an fd that is
        // not open answers EBADF.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1
            && io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
        {
            closed |= 1 << fd;
        }
    }
    IGNORED_AT_START.store(ignored, Ordering::Relaxed);
    BLOCKED_AT_START.store(blocked, Ordering::Relaxed);
    CLOSED_AT_START.store(closed, Ordering::Relaxed);
    RECORDED.store(true, Ordering::Release);
}

/// The signals (bit `n - 1` for signal `n`) whose disposition is `SIG_IGN`.
fn current_ignored() -> u64 {
    let mut ignored = 0u64;
    for sig in 1..=NSIG {
        // SAFETY: `sigaction` with a null new action only writes the
        // current one into `old`, a zeroed, properly sized and aligned
        // `libc::sigaction` owned by this frame. Signals the C library
        // reserves answer EINVAL and are skipped.
        let handler = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            old.sa_sigaction
        };
        if handler == libc::SIG_IGN {
            ignored |= 1 << (sig - 1);
        }
    }
    ignored
}

/// The calling thread's signal mask (bit `n - 1` for signal `n`).
fn current_blocked() -> u64 {
    let mut blocked = 0u64;
    // SAFETY: `set` is a zeroed `sigset_t` owned by this frame;
    // `pthread_sigmask` with a null new set only writes the current mask
    // into it, and `sigismember` only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        if libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut set) == 0 {
            for sig in 1..=NSIG {
                if libc::sigismember(&set, sig) == 1 {
                    blocked |= 1 << (sig - 1);
                }
            }
        }
    }
    blocked
}

/// What the process was started with, as recorded before `main`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Inherited {
    pub ignored: u64,
    pub blocked: u64,
    pub closed: [bool; 3],
}

/// The recorded start state, or `None` if the constructor did not run.
pub(crate) fn inherited() -> Option<Inherited> {
    if !RECORDED.load(Ordering::Acquire) {
        return None;
    }
    let closed = CLOSED_AT_START.load(Ordering::Relaxed);
    Some(Inherited {
        ignored: IGNORED_AT_START.load(Ordering::Relaxed),
        blocked: BLOCKED_AT_START.load(Ordering::Relaxed),
        closed: [closed & 1 != 0, closed & 2 != 0, closed & 4 != 0],
    })
}

/// The dispositions and mask changed by [`restore`], to put back if the
/// exec fails (so that, e.g., the error message cannot die of `SIGPIPE`).
struct Undo {
    actions: Vec<(i32, libc::sigaction)>,
    mask: Option<libc::sigset_t>,
}

fn restore(start: Inherited) -> Undo {
    let mut undo = Undo {
        actions: Vec::new(),
        mask: None,
    };
    for sig in 1..=NSIG {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let want_ignored = start.ignored & (1 << (sig - 1)) != 0;
        // SAFETY: as in `record_at_start`: a query into a zeroed local.
        let old = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            old
        };
        if (old.sa_sigaction == libc::SIG_IGN) == want_ignored {
            // A handler installed since start (std's SIGSEGV/SIGBUS ones)
            // becomes SIG_DFL at execve(), which is what it was.
            continue;
        }
        // SAFETY: installs SIG_IGN or SIG_DFL (no handler code runs in this
        // process because of it) with an empty mask and no flags; `new` is
        // a fully initialised local.
        let ok = unsafe {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = if want_ignored {
                libc::SIG_IGN
            } else {
                libc::SIG_DFL
            };
            libc::sigemptyset(&mut new.sa_mask);
            libc::sigaction(sig, &new, std::ptr::null_mut()) == 0
        };
        if ok {
            undo.actions.push((sig, old));
        }
    }
    // SAFETY: `set` and `old` are zeroed locals; `sigaddset` writes only
    // `set`; `pthread_sigmask` reads `set` and writes the previous mask into
    // `old`. SIGKILL and SIGSTOP cannot be blocked and the kernel ignores
    // them in the mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in 1..=NSIG {
            if start.blocked & (1 << (sig - 1)) != 0 {
                libc::sigaddset(&mut set, sig);
            }
        }
        if libc::pthread_sigmask(libc::SIG_SETMASK, &set, &mut old) == 0 {
            undo.mask = Some(old);
        }
    }
    undo
}

fn undo(u: Undo) {
    for (sig, old) in u.actions {
        // SAFETY: reinstalls the exact action `sigaction` reported before
        // `restore` replaced it (SIG_IGN, SIG_DFL or a handler std
        // installed, which is still in this process's code).
        unsafe {
            libc::sigaction(sig, &old, std::ptr::null_mut());
        }
    }
    if let Some(mask) = u.mask {
        // SAFETY: reinstalls the mask `pthread_sigmask` reported before.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut());
        }
    }
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("argument contains a NUL byte: {:?}", s),
        )
    })
}

/// Restores what the process was started with (ignored signals, signal
/// mask, closed standard descriptors) and replaces the process with
/// `program` via `execvp(3)`: `argv[0]` is `program`, the environment is
/// `environ` as it is. Returns only on failure, with dispositions and mask
/// back as they were before the call (closed descriptors stay closed).
///
/// If the start state was not recorded (the constructor did not run), only
/// `SIGPIPE` is reset to `SIG_DFL`, as std's `Command::exec` does.
pub(crate) fn restore_and_execvp(program: &OsStr, args: &[OsString]) -> io::Error {
    let prog = match cstring(program) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut argv = Vec::with_capacity(args.len() + 1);
    argv.push(prog.clone());
    for a in args {
        match cstring(a) {
            Ok(c) => argv.push(c),
            Err(e) => return e,
        }
    }
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    ptrs.push(std::ptr::null());

    let start = inherited().unwrap_or_else(|| Inherited {
        ignored: current_ignored() & !(1 << (libc::SIGPIPE - 1)),
        blocked: current_blocked(),
        closed: [false; 3],
    });
    let saved = restore(start);
    for (fd, closed) in start.closed.iter().enumerate() {
        if *closed {
            // SAFETY: closes a standard descriptor that was closed when the
            // process started and that std's runtime filled with /dev/null;
            // nothing in this process owns it (std's stdio handles treat a
            // closed descriptor like /dev/null).
            unsafe {
                libc::close(fd as libc::c_int);
            }
        }
    }
    // SAFETY: `prog` and every element of `ptrs` point into `CString`s in
    // `argv`, alive until the call returns; `ptrs` ends with a null pointer
    // as execvp(3) requires. On success the call does not return.
    unsafe {
        libc::execvp(prog.as_ptr(), ptrs.as_ptr());
    }
    let err = io::Error::last_os_error();
    undo(saved);
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constructor_ran_and_recorded_the_ignored_set() {
        let start = inherited().expect("the .init_array constructor did not run");
        // std's runtime ignores SIGPIPE in this process whatever the parent
        // gave (tests/cli.rs checks that the record predates it).
        let now = std::fs::read_to_string("/proc/self/status").unwrap();
        let sig_ign = now
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert_ne!(
            sig_ign & (1 << (libc::SIGPIPE - 1)),
            0,
            "std ignores SIGPIPE"
        );
        // Everything else ignored now was ignored at start, except the
        // signals the C library reserves for itself (32 and 33 in glibc),
        // which sigaction() does not show.
        let mine = !(1u64 << (libc::SIGPIPE - 1) | 1 << 31 | 1 << 32);
        assert_eq!(sig_ign & mine, start.ignored & mine);
    }

    #[test]
    fn nul_bytes_are_an_error_not_a_panic() {
        let e = restore_and_execvp(OsStr::new("a\0b"), &[]);
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = restore_and_execvp(OsStr::new("true"), &[OsString::from("x\0")]);
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
