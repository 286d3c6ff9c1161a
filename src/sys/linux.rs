//! Linux backend: `prctl(2)`, `gettid(2)` and the `/proc` readers.

use super::Errno;
use libc::{c_int, c_ulong};
use std::io;

/// `PR_SET_IO_FLUSHER` from `<linux/prctl.h>` (Linux 5.6). `libc` defines it
/// only for Android, so it is defined here.
const PR_SET_IO_FLUSHER: c_int = 57;
/// `PR_GET_IO_FLUSHER` from `<linux/prctl.h>` (Linux 5.6).
const PR_GET_IO_FLUSHER: c_int = 58;

/// The calling thread's `errno`. Cold: only failed calls read it, and out
/// of line it keeps the callers' success paths short.
#[cold]
#[inline(never)]
fn errno() -> Errno {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL)
}

pub(crate) fn set_io_flusher(on: bool) -> Result<(), Errno> {
    // SAFETY: PR_SET_IO_FLUSHER takes integer arguments only; no memory is
    // passed to or written by the kernel. The unused arguments must be 0
    // (the kernel answers EINVAL otherwise), so all five are passed as
    // `unsigned long`, the type the kernel reads them as.
    let r = unsafe {
        libc::prctl(
            PR_SET_IO_FLUSHER,
            c_ulong::from(on),
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

pub(crate) fn get_io_flusher() -> Result<bool, Errno> {
    // SAFETY: PR_GET_IO_FLUSHER takes integer arguments only (all must be
    // 0) and returns the state as the return value; no memory is touched.
    let r = unsafe {
        libc::prctl(
            PR_GET_IO_FLUSHER,
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
        )
    };
    match r {
        0 => Ok(false),
        r if r > 0 => Ok(true),
        _ => Err(errno()),
    }
}

pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid(2) takes no arguments, cannot fail and touches no
    // memory; the raw syscall avoids depending on glibc ≥ 2.30's wrapper.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    tid as i32
}

/// Reads `/proc/thread-self/stat` (Linux ≥ 3.17), falling back to
/// `/proc/self/task/<tid>/stat`.
pub(crate) fn read_thread_self_stat() -> io::Result<Vec<u8>> {
    match std::fs::read("/proc/thread-self/stat") {
        Ok(v) => Ok(v),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::read(format!("/proc/self/task/{}/stat", gettid()))
        }
        Err(e) => Err(e),
    }
}
