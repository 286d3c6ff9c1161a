//! A seccomp filter for tests: makes `prctl(PR_SET_IO_FLUSHER)` and
//! `prctl(PR_GET_IO_FLUSHER)` fail with a chosen errno, on one thread and
//! every process it then starts, as a container runtime's or systemd's
//! `SystemCallFilter=` would.
//!
//! Why `unsafe` here: installing a filter is `prctl(PR_SET_SECCOMP,
//! SECCOMP_MODE_FILTER, &prog)`, a call that passes a pointer; neither `nix`
//! nor `libc` has a safe wrapper, and the library must not ship a seccomp
//! installer only for its tests. The two calls below are the only `unsafe`
//! in the test suite.

#![allow(unsafe_code)]

use std::io;

// <linux/filter.h>, <linux/seccomp.h>, <linux/audit.h>
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64
/// `offsetof(struct seccomp_data, nr / arch / args[0])`; the low 32 bits of
/// `args[0]` on a little-endian machine.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0: u32 = 16;
const PR_SET_IO_FLUSHER: u32 = 57;
const PR_GET_IO_FLUSHER: u32 = 58;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Installs, on the calling thread only, a filter under which both
/// `PR_SET_IO_FLUSHER` and `PR_GET_IO_FLUSHER` answer `errno` and every other
/// system call runs. Children started from this thread inherit it. Sets
/// `no_new_privs` on the thread first (required without CAP_SYS_ADMIN; it
/// does not take capabilities from root's children).
pub fn refuse_io_flusher_prctl(errno: i32) -> io::Result<()> {
    let ret_errno = SECCOMP_RET_ERRNO | (errno as u32 & 0xffff);
    let prog = [
        insn(BPF_LD_W_ABS, 0, 0, OFF_ARCH),
        insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        insn(BPF_LD_W_ABS, 0, 0, OFF_NR),
        insn(BPF_JEQ_K, 1, 0, libc::SYS_prctl as u32),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        insn(BPF_LD_W_ABS, 0, 0, OFF_ARG0),
        insn(BPF_JEQ_K, 2, 0, PR_SET_IO_FLUSHER),
        insn(BPF_JEQ_K, 1, 0, PR_GET_IO_FLUSHER),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        insn(BPF_RET_K, 0, 0, ret_errno),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1u64, 0u64, 0u64, 0u64) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fprog` points at `prog`, a valid BPF program of `len`
    // instructions that outlives the call (the kernel copies it).
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new thread that carries the filter; the thread (and its
/// filter) ends with `f`.
pub fn with_refused_prctl<R: Send>(errno: i32, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            refuse_io_flusher_prctl(errno).expect("install the seccomp filter");
            f()
        })
        .join()
        .expect("filtered thread")
    })
}
