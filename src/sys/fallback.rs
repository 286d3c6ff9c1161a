//! Fallback backend for targets other than Linux: there is no
//! `PR_SET_IO_FLUSHER`, so every request answers "unsupported" and scopes are
//! no-ops that say so.

use super::Errno;
use std::io;

/// The error every prctl request answers with: the same `EINVAL` an old
/// Linux kernel gives for an unknown prctl option.
const UNSUPPORTED: Errno = libc::EINVAL;

pub(crate) fn set_io_flusher(_on: bool) -> Result<(), Errno> {
    Err(UNSUPPORTED)
}

pub(crate) fn get_io_flusher() -> Result<bool, Errno> {
    Err(UNSUPPORTED)
}

pub(crate) fn gettid() -> i32 {
    std::process::id() as i32
}

pub(crate) fn read_thread_self_stat() -> io::Result<Vec<u8>> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "thread flags are only readable on Linux (/proc/thread-self/stat)",
    ))
}
