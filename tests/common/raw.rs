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

/// Drops capability number `cap` (e.g. 24, `CAP_SYS_RESOURCE`) from the
/// **calling thread's** effective set with `capset(2)`, which acts on one
/// thread only (as libcap's `cap_set_proc` does): the other threads of the
/// process keep it.
pub fn drop_effective_cap_of_this_thread(cap: u32) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522; // _LINUX_CAPABILITY_VERSION_3: two Data
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget(2) with version 3 reads the header and writes exactly
    // two `Data` (the `#[repr(C)]` layout of `struct __user_cap_data_struct`)
    // through pointers to live, writable locals.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut Header, data.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
    // SAFETY: capset(2) reads the header and two `Data` from live locals.
    let r = unsafe { libc::syscall(libc::SYS_capset, &hdr as *const Header, data.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
