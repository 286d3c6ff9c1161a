//! The I/O syscalls behind [`NoFsFile`](crate::NoFsFile): `pread64`,
//! `pwrite64`, `preadv2`, `pwritev2`, `fallocate`, `fdatasync`, `fsync`,
//! `ftruncate`, `fstat`, `lseek(SEEK_DATA/SEEK_HOLE)` and the block-device
//! ioctls `BLKGETSIZE64` and `BLKDISCARD`, one call each, answering a raw
//! `errno`.
//!
//! Callers (`src/fs/`) validate offsets and clamp lengths first; these
//! wrappers only translate. On Linux they call `libc` (or the raw syscall
//! for `preadv2`/`pwritev2`, so no glibc ≥ 2.26 is needed); on other Unix
//! targets the positional calls go through `std`'s `FileExt`, and the
//! Linux-only calls answer `ENOSYS`.
//!
//! Under `cfg(test)` each wrapper first asks the per-thread fake
//! ([`super::fake::next_io`]) for a scripted answer (`EINTR`, a short
//! count), so the retry and continuation logic can be tested.

use super::Errno;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut};

#[cfg(test)]
use super::fake::{self, IoScript};

/// `MAX_RW_COUNT` (`INT_MAX & PAGE_MASK` with 4 KiB pages): the most one
/// read or write syscall transfers on Linux; larger requests are clamped by
/// the kernel. Clamping here keeps other Unix kernels (which answer `EINVAL`
/// above `INT_MAX`) in step.
pub(crate) const MAX_RW_COUNT: usize = 0x7fff_f000;
/// `UIO_MAXIOV`: the most buffers one vectored syscall takes (`EINVAL`
/// above).
pub(crate) const IOV_MAX: usize = 1024;

/// `FALLOC_FL_KEEP_SIZE` from `<linux/falloc.h>`.
pub(crate) const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
/// `FALLOC_FL_PUNCH_HOLE` (Linux 2.6.38).
pub(crate) const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
/// `FALLOC_FL_ZERO_RANGE` (Linux 3.15).
pub(crate) const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

// The values above are the kernel ABI; on Linux libc has them too, and they
// must agree (other Unix targets never pass them to a syscall).
#[cfg(target_os = "linux")]
const _: () = {
    assert!(FALLOC_FL_KEEP_SIZE == libc::FALLOC_FL_KEEP_SIZE);
    assert!(FALLOC_FL_PUNCH_HOLE == libc::FALLOC_FL_PUNCH_HOLE);
    assert!(FALLOC_FL_ZERO_RANGE == libc::FALLOC_FL_ZERO_RANGE);
};

pub(crate) const EINTR: Errno = libc::EINTR;
pub(crate) const EAGAIN: Errno = libc::EAGAIN;
pub(crate) const EBADF: Errno = libc::EBADF;
pub(crate) const ENOSYS: Errno = libc::ENOSYS;
pub(crate) const EOPNOTSUPP: Errno = libc::EOPNOTSUPP;
pub(crate) const ENXIO: Errno = libc::ENXIO;
pub(crate) const EFBIG: Errno = libc::EFBIG;

/// What kind of file a descriptor refers to, as far as `NoFsFile` cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    Regular,
    /// A block device, with its `st_rdev` (major, minor).
    Block(u32, u32),
    Other,
}

/// `fstat(2)`: the kind of file and, for a regular file, its size.
pub(crate) fn fstat_kind(f: &File) -> Result<(FileKind, u64), Errno> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = f
        .metadata()
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    let t = m.file_type();
    let kind = if t.is_file() {
        FileKind::Regular
    } else if t.is_block_device() {
        let rdev = m.rdev();
        // The kernel's new_encode_dev layout, as glibc's major()/minor().
        let major = (((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff)) as u32;
        let minor = (((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff)) as u32;
        FileKind::Block(major, minor)
    } else {
        FileKind::Other
    };
    Ok((kind, m.len()))
}

/// The path a descriptor was opened with, as `/proc/self/fd` shows it
/// (for messages only; `None` where /proc is not mounted).
pub(crate) fn fd_path(f: &File) -> Option<std::path::PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).ok()
}

/// `ioctl(BLKGETSIZE64)`: a block device's size in bytes.
pub(crate) fn blk_size(f: &File) -> Result<u64, Errno> {
    os::blk_size(f)
}

/// `ioctl(BLKSSZGET)`: a block device's logical block size in bytes.
pub(crate) fn blk_logical_block_size(f: &File) -> Result<u32, Errno> {
    os::blk_logical_block_size(f)
}

/// `ioctl(BLKDISCARD)` of `offset..offset + len` of a block device.
pub(crate) fn blk_discard(f: &File, offset: u64, len: u64) -> Result<(), Errno> {
    #[cfg(test)]
    if let Some(r) = plain_script("ioctl(BLKDISCARD)", offset, len) {
        return r;
    }
    os::blk_discard(f, offset, len)
}

/// `lseek(2)` with `SEEK_DATA` (`data == true`) or `SEEK_HOLE` from
/// `offset`; answers the new offset. Does not move a position anybody
/// relies on: every `NoFsFile` transfer is positional.
pub(crate) fn seek_data_hole(f: &File, offset: u64, data: bool) -> Result<u64, Errno> {
    os::seek_data_hole(f, offset, data)
}

cfg_if::cfg_if! {
    if #[cfg(target_os = "linux")] {
        use self::linux as os;
    } else {
        use self::other as os;
    }
}

/// Total length of a list of buffers (saturating: only compared to limits).
pub(crate) fn total_len<'a>(lens: impl Iterator<Item = &'a [u8]>) -> u64 {
    lens.fold(0u64, |t, b| t.saturating_add(b.len() as u64))
}

/// `pread64(2)` into `buf` at `offset`.
#[inline]
pub(crate) fn pread(f: &File, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
    #[cfg(test)]
    if let Some(s) = fake::next_io("pread64", offset, buf.len() as u64) {
        return match s {
            IoScript::Err(e) => Err(e),
            IoScript::Pretend(n) => Ok(n.min(buf.len())),
            IoScript::Short(n) => {
                let n = n.min(buf.len());
                os::pread(f, &mut buf[..n], offset)
            }
        };
    }
    os::pread(f, buf, offset)
}

/// `pwrite64(2)` of `buf` at `offset`.
#[inline]
pub(crate) fn pwrite(f: &File, buf: &[u8], offset: u64) -> Result<usize, Errno> {
    #[cfg(test)]
    if let Some(s) = fake::next_io("pwrite64", offset, buf.len() as u64) {
        return match s {
            IoScript::Err(e) => Err(e),
            IoScript::Pretend(n) => Ok(n.min(buf.len())),
            IoScript::Short(n) => os::pwrite(f, &buf[..n.min(buf.len())], offset),
        };
    }
    os::pwrite(f, buf, offset)
}

#[cfg(test)]
fn vectored_script(op: &'static str, offset: u64, len: u64) -> Option<Result<usize, Errno>> {
    fake::next_io(op, offset, len).map(|s| match s {
        IoScript::Err(e) => Err(e),
        IoScript::Pretend(n) => Ok(n.min(len as usize)),
        IoScript::Short(_) => unimplemented!("the fake has no short vectored I/O"),
    })
}

/// `preadv2(2)` into at most [`IOV_MAX`] of `bufs` at `offset` with `RWF_*`
/// `flags`.
#[inline]
pub(crate) fn preadv2(
    f: &File,
    bufs: &mut [IoSliceMut<'_>],
    offset: u64,
    flags: u32,
) -> Result<usize, Errno> {
    let n = bufs.len().min(IOV_MAX);
    let bufs = &mut bufs[..n];
    #[cfg(test)]
    if let Some(r) = vectored_script("preadv2", offset, total_len(bufs.iter().map(|b| &**b))) {
        return r;
    }
    os::preadv2(f, bufs, offset, flags)
}

/// `pwritev2(2)` of at most [`IOV_MAX`] of `bufs` at `offset` with `RWF_*`
/// `flags`.
#[inline]
pub(crate) fn pwritev2(
    f: &File,
    bufs: &[IoSlice<'_>],
    offset: u64,
    flags: u32,
) -> Result<usize, Errno> {
    let bufs = &bufs[..bufs.len().min(IOV_MAX)];
    #[cfg(test)]
    if let Some(r) = vectored_script("pwritev2", offset, total_len(bufs.iter().map(|b| &**b))) {
        return r;
    }
    os::pwritev2(f, bufs, offset, flags)
}

#[cfg(test)]
fn plain_script(op: &'static str, offset: u64, len: u64) -> Option<Result<(), Errno>> {
    fake::next_io(op, offset, len).map(|s| match s {
        IoScript::Err(e) => Err(e),
        IoScript::Pretend(_) => Ok(()),
        IoScript::Short(_) => unimplemented!("{op} has no short form"),
    })
}

#[cfg(test)]
fn falloc_name(mode: i32) -> &'static str {
    match mode {
        0 => "fallocate(0)",
        FALLOC_FL_ZERO_RANGE => "fallocate(ZERO_RANGE)",
        m if m == FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE => "fallocate(PUNCH_HOLE)",
        _ => "fallocate(?)",
    }
}

/// `fallocate(2)` with `mode` over `offset..offset + len`.
#[inline]
pub(crate) fn fallocate(f: &File, mode: i32, offset: u64, len: u64) -> Result<(), Errno> {
    #[cfg(test)]
    if let Some(r) = plain_script(falloc_name(mode), offset, len) {
        return r;
    }
    os::fallocate(f, mode, offset, len)
}

/// `fdatasync(2)`.
#[inline]
pub(crate) fn fdatasync(f: &File) -> Result<(), Errno> {
    #[cfg(test)]
    if let Some(r) = plain_script("fdatasync", 0, 0) {
        return r;
    }
    os::fdatasync(f)
}

/// `fsync(2)`.
#[inline]
pub(crate) fn fsync(f: &File) -> Result<(), Errno> {
    #[cfg(test)]
    if let Some(r) = plain_script("fsync", 0, 0) {
        return r;
    }
    os::fsync(f)
}

/// `ftruncate64(2)` to `len`.
#[inline]
pub(crate) fn ftruncate(f: &File, len: u64) -> Result<(), Errno> {
    #[cfg(test)]
    if let Some(r) = plain_script("ftruncate", len, 0) {
        return r;
    }
    os::ftruncate(f, len)
}

#[cfg(target_os = "linux")]
mod linux {
    use super::Errno;
    use libc::{c_long, c_ulong};
    use std::fs::File;
    use std::io::{self, IoSlice, IoSliceMut};
    use std::os::fd::AsRawFd;

    #[cold]
    fn errno() -> Errno {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    }

    #[inline(always)]
    fn cvt_len(r: isize) -> Result<usize, Errno> {
        if r >= 0 {
            Ok(r as usize)
        } else {
            Err(errno())
        }
    }

    #[inline]
    fn cvt(r: libc::c_int) -> Result<(), Errno> {
        if r == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    }

    #[inline]
    pub(super) fn pread(f: &File, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
        // SAFETY: `buf` is a live, exclusively borrowed region of
        // `buf.len()` writable bytes for the whole call, and the kernel
        // writes at most `buf.len()` bytes into it. The descriptor is owned
        // by `f`, which outlives the call. An offset above `i64::MAX` turns
        // negative and the kernel answers EINVAL; nothing else is touched.
        let r = unsafe {
            libc::pread64(
                f.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                offset as libc::off64_t,
            )
        };
        cvt_len(r)
    }

    #[inline]
    pub(super) fn pwrite(f: &File, buf: &[u8], offset: u64) -> Result<usize, Errno> {
        // SAFETY: `buf` is a live region of `buf.len()` readable bytes for
        // the whole call; the kernel only reads from it. The descriptor is
        // owned by `f`, which outlives the call.
        let r = unsafe {
            libc::pwrite64(
                f.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                offset as libc::off64_t,
            )
        };
        cvt_len(r)
    }

    /// The `pos_l, pos_h` pair of the `preadv2`/`pwritev2` syscalls, as
    /// glibc's `LO_HI_LONG` builds it: on 64-bit targets the kernel ignores
    /// `pos_h`, on 32-bit ones it supplies the upper half.
    #[inline]
    fn lo_hi(offset: u64) -> (c_ulong, c_ulong) {
        (offset as c_ulong, (offset >> 32) as c_ulong)
    }

    pub(super) fn preadv2(
        f: &File,
        bufs: &mut [IoSliceMut<'_>],
        offset: u64,
        flags: u32,
    ) -> Result<usize, Errno> {
        let (lo, hi) = lo_hi(offset);
        // SAFETY: `IoSliceMut` is guaranteed ABI-compatible with `struct
        // iovec` on Unix; the slice holds `bufs.len()` (≤ IOV_MAX) of them,
        // each describing a live, exclusively borrowed writable region, and
        // the kernel writes only inside those regions. Every variadic
        // argument is passed as a full-width `long`, which is how the
        // `syscall(2)` wrapper reads them; `flags` is an `rwf_t` (int) whose
        // unknown bits the kernel rejects with EOPNOTSUPP.
        let r = unsafe {
            libc::syscall(
                libc::SYS_preadv2,
                f.as_raw_fd() as c_long,
                bufs.as_mut_ptr() as c_long,
                bufs.len() as c_long,
                lo,
                hi,
                flags as c_ulong,
            )
        };
        cvt_len(r as isize)
    }

    pub(super) fn pwritev2(
        f: &File,
        bufs: &[IoSlice<'_>],
        offset: u64,
        flags: u32,
    ) -> Result<usize, Errno> {
        let (lo, hi) = lo_hi(offset);
        // SAFETY: `IoSlice` is guaranteed ABI-compatible with `struct iovec`
        // on Unix; the slice holds `bufs.len()` (≤ IOV_MAX) of them, each
        // describing a live readable region, and the kernel only reads from
        // them. Every variadic argument is passed as a full-width `long`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pwritev2,
                f.as_raw_fd() as c_long,
                bufs.as_ptr() as c_long,
                bufs.len() as c_long,
                lo,
                hi,
                flags as c_ulong,
            )
        };
        cvt_len(r as isize)
    }

    pub(super) fn fallocate(f: &File, mode: i32, offset: u64, len: u64) -> Result<(), Errno> {
        // SAFETY: fallocate(2) takes integers only and touches no user
        // memory; the descriptor is owned by `f`, which outlives the call.
        // Values above `i64::MAX` turn negative and the kernel answers
        // EINVAL.
        cvt(unsafe {
            libc::fallocate64(
                f.as_raw_fd(),
                mode,
                offset as libc::off64_t,
                len as libc::off64_t,
            )
        })
    }

    pub(super) fn fdatasync(f: &File) -> Result<(), Errno> {
        // SAFETY: fdatasync(2) takes a descriptor only (owned by `f`, which
        // outlives the call) and touches no user memory.
        cvt(unsafe { libc::fdatasync(f.as_raw_fd()) })
    }

    pub(super) fn fsync(f: &File) -> Result<(), Errno> {
        // SAFETY: fsync(2) takes a descriptor only (owned by `f`, which
        // outlives the call) and touches no user memory.
        cvt(unsafe { libc::fsync(f.as_raw_fd()) })
    }

    pub(super) fn ftruncate(f: &File, len: u64) -> Result<(), Errno> {
        // SAFETY: ftruncate(2) takes integers only and touches no user
        // memory; the descriptor is owned by `f`, which outlives the call.
        cvt(unsafe { libc::ftruncate64(f.as_raw_fd(), len as libc::off64_t) })
    }

    /// `_IOC(dir, type, nr, size)` of `<asm-generic/ioctl.h>`, with the
    /// field widths of the architectures that do not use the generic ones.
    const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
        cfg_if::cfg_if! {
            if #[cfg(any(target_arch = "powerpc", target_arch = "powerpc64",
                         target_arch = "mips", target_arch = "mips64",
                         target_arch = "sparc", target_arch = "sparc64"))] {
                const SIZEBITS: u32 = 13;
            } else {
                const SIZEBITS: u32 = 14;
            }
        }
        (dir << (16 + SIZEBITS)) | ((size as u32) << 16) | (ty << 8) | nr
    }

    cfg_if::cfg_if! {
        if #[cfg(any(target_arch = "powerpc", target_arch = "powerpc64",
                     target_arch = "mips", target_arch = "mips64",
                     target_arch = "sparc", target_arch = "sparc64"))] {
            const IOC_NONE: u32 = 1;
        } else {
            const IOC_NONE: u32 = 0;
        }
    }
    const IOC_READ: u32 = 2;

    /// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)` of `<linux/fs.h>`.
    const BLKGETSIZE64: u32 = ioc(IOC_READ, 0x12, 114, std::mem::size_of::<usize>());
    /// `BLKSSZGET`: `_IO(0x12, 104)`, argument `int *`.
    const BLKSSZGET: u32 = ioc(IOC_NONE, 0x12, 104, 0);
    /// `BLKDISCARD`: `_IO(0x12, 119)`, argument `uint64_t[2]` {start, len}.
    const BLKDISCARD: u32 = ioc(IOC_NONE, 0x12, 119, 0);

    #[cfg(target_arch = "x86_64")]
    const _: () = {
        assert!(BLKGETSIZE64 == 0x8008_1272);
        assert!(BLKDISCARD == 0x1277);
        assert!(BLKSSZGET == 0x1268);
    };

    pub(super) fn blk_logical_block_size(f: &File) -> Result<u32, Errno> {
        let mut size: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer, which points
        // at `size`, a live, exclusively borrowed c_int for the whole call.
        // The descriptor is owned by `f`, which outlives the call.
        cvt(unsafe { libc::ioctl(f.as_raw_fd(), BLKSSZGET as _, &mut size as *mut libc::c_int) })?;
        Ok(size.max(512) as u32)
    }

    pub(super) fn blk_size(f: &File) -> Result<u64, Errno> {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 (the kernel's `u64 __user *`
        // argument) through the pointer, which points at `size`, a live,
        // exclusively borrowed u64 for the whole call. The descriptor is
        // owned by `f`, which outlives the call. The request type is
        // `c_ulong` on glibc and `c_int` on musl: `as _` converts.
        cvt(unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) })?;
        Ok(size)
    }

    pub(super) fn blk_discard(f: &File, offset: u64, len: u64) -> Result<(), Errno> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKDISCARD reads two u64 (start, length) through the
        // pointer, which points at `range`, live for the whole call; the
        // kernel does not write to it. The descriptor is owned by `f`.
        cvt(unsafe { libc::ioctl(f.as_raw_fd(), BLKDISCARD as _, range.as_ptr()) })
    }

    pub(super) fn seek_data_hole(f: &File, offset: u64, data: bool) -> Result<u64, Errno> {
        let whence = if data {
            libc::SEEK_DATA
        } else {
            libc::SEEK_HOLE
        };
        // SAFETY: lseek(2) takes integers only and touches no user memory;
        // the descriptor is owned by `f`, which outlives the call. Offsets
        // above i64::MAX are rejected by the caller.
        let r = unsafe { libc::lseek64(f.as_raw_fd(), offset as libc::off64_t, whence) };
        if r >= 0 {
            Ok(r as u64)
        } else {
            Err(errno())
        }
    }
}

/// Other Unix targets: the positional calls through `std` (no `unsafe`),
/// the Linux-only ones answer `ENOSYS`.
#[cfg(not(target_os = "linux"))]
mod other {
    use super::{Errno, ENOSYS};
    use std::fs::File;
    use std::io::{self, IoSlice, IoSliceMut};
    use std::os::unix::fs::FileExt;

    fn errno(e: io::Error) -> Errno {
        e.raw_os_error().unwrap_or(libc::EIO)
    }

    #[inline]
    pub(super) fn pread(f: &File, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
        f.read_at(buf, offset).map_err(errno)
    }

    #[inline]
    pub(super) fn pwrite(f: &File, buf: &[u8], offset: u64) -> Result<usize, Errno> {
        f.write_at(buf, offset).map_err(errno)
    }

    pub(super) fn preadv2(
        _: &File,
        _: &mut [IoSliceMut<'_>],
        _: u64,
        _: u32,
    ) -> Result<usize, Errno> {
        Err(ENOSYS)
    }

    pub(super) fn pwritev2(_: &File, _: &[IoSlice<'_>], _: u64, _: u32) -> Result<usize, Errno> {
        Err(ENOSYS)
    }

    pub(super) fn fallocate(_: &File, _: i32, _: u64, _: u64) -> Result<(), Errno> {
        Err(ENOSYS)
    }

    pub(super) fn fdatasync(f: &File) -> Result<(), Errno> {
        f.sync_data().map_err(errno)
    }

    pub(super) fn fsync(f: &File) -> Result<(), Errno> {
        f.sync_all().map_err(errno)
    }

    pub(super) fn ftruncate(f: &File, len: u64) -> Result<(), Errno> {
        f.set_len(len).map_err(errno)
    }

    pub(super) fn blk_size(_: &File) -> Result<u64, Errno> {
        Err(ENOSYS)
    }

    pub(super) fn blk_discard(_: &File, _: u64, _: u64) -> Result<(), Errno> {
        Err(ENOSYS)
    }

    pub(super) fn blk_logical_block_size(_: &File) -> Result<u32, Errno> {
        Err(ENOSYS)
    }

    pub(super) fn seek_data_hole(_: &File, _: u64, _: bool) -> Result<u64, Errno> {
        Err(ENOSYS)
    }
}
