//! The flag set and read with a raw `prctl`, bypassing the crate: the tests'
//! only `unsafe` (the harness proves itself with it, and changes the flag
//! behind the crate's back).

use super::*;
use std::io;

/// `prctl(PR_SET_IO_FLUSHER, on, 0, 0, 0)`, bypassing the crate.
pub fn raw_set_io_flusher(on: bool) -> io::Result<()> {
    let z: libc::c_ulong = 0;
    // SAFETY: PR_SET_IO_FLUSHER reads only its integer arguments; all
    // variadic arguments are passed as full-width c_ulong (the kernel
    // rejects non-zero arg3..arg5).
    let r = unsafe { libc::prctl(PR_SET_IO_FLUSHER, libc::c_ulong::from(on), z, z, z) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `prctl(PR_GET_IO_FLUSHER, 0, 0, 0, 0)`, bypassing the crate.
pub fn raw_get_io_flusher() -> io::Result<i32> {
    let z: libc::c_ulong = 0;
    // SAFETY: as above; PR_GET_IO_FLUSHER takes no pointers.
    let r = unsafe { libc::prctl(PR_GET_IO_FLUSHER, z, z, z, z) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}
