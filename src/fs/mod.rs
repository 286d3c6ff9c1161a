//! [`NoFsFile`]: a file whose every I/O call runs in the I/O-flusher
//! (`GFP_NOIO`) context.
//!
//! The seed deadlock starts with the daemon's own `pwrite()` into its
//! backing file: the page cache it allocates may enter reclaim, and reclaim
//! may write back the file system stacked on the daemon's own device. Each
//! `*_nofs` method enters a [`NoFsScope`] around exactly its syscall(s), so
//! that allocation is made with `GFP_NOIO`, whatever the rest of the thread
//! does.

mod error;
mod flags;
mod policy;
#[cfg(test)]
mod tests;

pub use error::NoFsIoError;
pub use flags::RwFlags;
pub use policy::NoFsPolicy;

use crate::sys::fileio as sio;
use crate::{Error, NoFsScope};
use error::{Cause, Op};
use policy::{policy_from_u8, policy_to_u8, DEFAULT_POLICY, POLICY_UNSET};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};

const OFF_MAX: u64 = i64::MAX as u64;

/// Checks that `offset..offset + len` is a valid file range (`loff_t`):
/// `offset + len <= i64::MAX` (which implies `offset <= i64::MAX`).
#[inline]
fn check_range(op: Op, offset: u64, len: u64, flags: RwFlags) -> Result<(), NoFsIoError> {
    match offset.checked_add(len) {
        Some(end) if end <= OFF_MAX => Ok(()),
        _ => Err(bad_range(op, offset, len, flags)),
    }
}

#[cold]
#[inline(never)]
fn bad_range(op: Op, offset: u64, len: u64, flags: RwFlags) -> NoFsIoError {
    let why = if offset > OFF_MAX {
        "the offset is beyond i64::MAX, the largest file offset"
    } else {
        "offset + length is beyond i64::MAX, the largest file offset"
    };
    NoFsIoError::new(op, offset, len, Cause::Invalid(why)).with_flags(flags)
}

/// The error of a failed syscall (kept out of line: the fast path only
/// moves an errno).
#[cold]
#[inline(never)]
fn os_error(op: Op, offset: u64, len: u64, flags: RwFlags, errno: i32) -> NoFsIoError {
    NoFsIoError::new(op, offset, len, Cause::Os(errno)).with_flags(flags)
}

#[cold]
#[inline(never)]
fn refused(op: Op, offset: u64, len: u64, flags: RwFlags, e: Error) -> NoFsIoError {
    NoFsIoError::new(op, offset, len, Cause::Refused(e)).with_flags(flags)
}

#[cold]
#[inline(never)]
fn loop_error(op: Op, offset: u64, len: u64, done: usize, cause: Cause) -> NoFsIoError {
    NoFsIoError::new(op, offset, len, cause).done(done as u64)
}

#[cold]
fn open_error(op: Op, path: &Path, e: io::Error) -> NoFsIoError {
    let cause = match e.raw_os_error() {
        Some(errno) => Cause::Os(errno),
        None => Cause::InvalidOwned(e.to_string().into()),
    };
    NoFsIoError::new(op, 0, 0, cause).with_path(path)
}

/// A [`File`] whose every I/O call runs in the I/O-flusher context
/// (`GFP_NOIO`: no file-system or block-I/O reclaim).
///
/// Each `*_nofs` method enters a [`NoFsScope`] around exactly its
/// syscall(s) and leaves it before returning, so the page cache a `pwrite`
/// allocates, and every other allocation the kernel makes for the call,
/// cannot recurse into writeback of a file system stacked on the daemon's
/// own device — the deadlock of the 2019 linux-ext4 report.
///
/// # Cost
///
/// - On a thread that is already an I/O flusher (inside an
///   [`IoFlusher`](crate::IoFlusher), or one that inherited the flag) a call
///   makes **no syscall besides the I/O itself**: the scope is a few
///   thread-local reads.
/// - On an unflagged thread each call costs two extra `prctl` syscalls (set,
///   then restore) — about 400 ns next to a ≈ 1 µs cached 4 KiB `pread`.
///   **Keep a hot I/O loop inside an [`IoFlusher`](crate::IoFlusher).**
/// - When the process lacks `CAP_SYS_RESOURCE` the refusal is remembered,
///   and a best-effort call then costs nothing extra — and protects
///   nothing (see [`NoFsPolicy`]).
///
/// # Policy
///
/// If the context cannot be entered, the call follows the file's
/// [`NoFsPolicy`]: by default best effort (the I/O is done unprotected and the
/// degradation reported once per process); [`NoFsPolicy::Strict`] fails the
/// call without doing any I/O.
///
/// # Errors
///
/// Every method returns a [`NoFsIoError`]: the errno of the failing syscall
/// (`raw_os_error()`, kept when `?` converts it into `io::Error`) and the
/// syscall, offset, length, flags and bytes transferred. Offsets beyond
/// `i64::MAX` (or an `offset + len` beyond it) fail with `InvalidInput`
/// before any syscall.
///
/// # Example
///
/// ```
/// use reclaim_scope::{IoFlusher, NoFsFile};
/// use std::fs::OpenOptions;
///
/// # let path = std::env::temp_dir().join(format!("rs-doc-nofsfile-{}", std::process::id()));
/// let file = NoFsFile::open(&path, OpenOptions::new().read(true).write(true).create(true))?;
/// let _worker = IoFlusher::enter(); // the worker loop: calls below make no prctl
/// file.write_all_at_nofs(b"block of the served device", 4096)?;
/// let mut back = [0u8; 5];
/// file.read_exact_at_nofs(&mut back, 4096)?;
/// assert_eq!(&back, b"block");
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// `NoFsFile` is `Send` and `Sync`: share it between worker threads in an
/// `Arc`; each call protects the thread that makes it.
#[doc(alias = "pread_nofs")]
#[doc(alias = "pwrite_nofs")]
pub struct NoFsFile {
    file: File,
    /// `NoFsPolicy as u8`, or `POLICY_UNSET` to follow the process default.
    policy: u8,
    /// How [`zero_range_nofs`](Self::zero_range_nofs) zeroes on this file:
    /// `ZERO_FALLOCATE` until a step answered `EOPNOTSUPP`.
    zero_mode: AtomicU8,
    /// `KIND_*`: what `fstat` said the file is, once asked.
    kind: AtomicU8,
}

const ZERO_FALLOCATE: u8 = 0;
const ZERO_PUNCH_ALLOCATE: u8 = 1;
const ZERO_WRITE: u8 = 2;

const KIND_UNKNOWN: u8 = 0;
const KIND_REGULAR: u8 = 1;
const KIND_BLOCK: u8 = 2;
const KIND_OTHER: u8 = 3;

impl NoFsFile {
    /// Wraps an open file. Its calls follow the process default policy
    /// ([`NoFsFile::default_policy`]) until [`with_policy`](Self::with_policy)
    /// chooses one.
    ///
    /// ```
    /// let file = reclaim_scope::NoFsFile::new(std::fs::File::open("/dev/zero")?);
    /// let mut buf = [1u8; 16];
    /// assert_eq!(file.pread_nofs(&mut buf, 0)?, 16);
    /// assert_eq!(buf, [0; 16]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[inline]
    pub fn new(file: File) -> NoFsFile {
        NoFsFile {
            file,
            policy: POLICY_UNSET,
            zero_mode: AtomicU8::new(ZERO_FALLOCATE),
            kind: AtomicU8::new(KIND_UNKNOWN),
        }
    }

    /// Opens `path` with `opts` (passed through unchanged).
    ///
    /// # Errors
    ///
    /// The errno of `open(2)` (`ENOENT`, `EACCES`, `EROFS` for writing on a
    /// read-only mount, …), with the path ([`NoFsIoError::path`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::NoFsFile;
    /// use std::fs::OpenOptions;
    ///
    /// let file = NoFsFile::open("/dev/null", OpenOptions::new().write(true))?;
    /// assert_eq!(file.pwrite_nofs(b"discarded", 0)?, 9);
    /// let err = NoFsFile::open("/nonexistent/x", OpenOptions::new().read(true)).unwrap_err();
    /// assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    /// assert!(err.to_string().contains("/nonexistent/x"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<NoFsFile, NoFsIoError> {
        let path = path.as_ref();
        opts.open(path)
            .map(NoFsFile::new)
            .map_err(|e| open_error(Op::Open, path, e))
    }

    /// Opens `path` with `opts` plus `O_DIRECT`: reads and writes bypass
    /// the page cache (no page-cache allocation and no dirty throttling on
    /// the data path). Buffers, offsets and lengths must then be aligned to
    /// the device's logical block size (4096 is always enough).
    ///
    /// `O_DIRECT` changes **no gfp context**: the kernel's other allocations
    /// for the call (bios, metadata, block mapping) are still made with the
    /// thread's context — which is why the `*_nofs` calls still enter their
    /// scope. It is a complement, not a substitute.
    ///
    /// This replaces any [`custom_flags`](std::os::unix::fs::OpenOptionsExt::custom_flags)
    /// of `opts`; to combine flags, pass
    /// `custom_flags(libc::O_DIRECT | other)` to [`open`](Self::open).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open); a file system without direct I/O answers
    /// `EINVAL` (the message says so). Not on Linux: `ENOSYS`.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::NoFsFile;
    /// use std::fs::OpenOptions;
    ///
    /// # let path = std::env::temp_dir().join(format!("rs-doc-direct-{}", std::process::id()));
    /// match NoFsFile::open_direct(&path, OpenOptions::new().read(true).write(true).create(true)) {
    ///     Ok(file) => println!("direct I/O: {file:?}"),
    ///     Err(e) => println!("no O_DIRECT here: {e}"),
    /// }
    /// # let _ = std::fs::remove_file(&path);
    /// ```
    #[doc(alias = "O_DIRECT")]
    pub fn open_direct(
        path: impl AsRef<Path>,
        opts: &OpenOptions,
    ) -> Result<NoFsFile, NoFsIoError> {
        let path = path.as_ref();
        cfg_if::cfg_if! {
            if #[cfg(target_os = "linux")] {
                use std::os::unix::fs::OpenOptionsExt;
                let mut opts = opts.clone();
                opts.custom_flags(libc::O_DIRECT);
                opts.open(path)
                    .map(NoFsFile::new)
                    .map_err(|e| open_error(Op::OpenDirect, path, e))
            } else {
                let _ = opts;
                Err(NoFsIoError::new(Op::OpenDirect, 0, 0, Cause::Os(sio::ENOSYS)).with_path(path))
            }
        }
    }

    /// Sets this file's [`NoFsPolicy`] (builder form).
    ///
    /// ```
    /// use reclaim_scope::{NoFsFile, NoFsPolicy};
    /// let file = NoFsFile::new(std::fs::File::open("/dev/zero")?).with_policy(NoFsPolicy::Strict);
    /// assert_eq!(file.policy(), NoFsPolicy::Strict);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn with_policy(mut self, policy: NoFsPolicy) -> NoFsFile {
        self.set_policy(policy);
        self
    }

    /// Sets this file's [`NoFsPolicy`].
    ///
    /// ```
    /// use reclaim_scope::{NoFsFile, NoFsPolicy};
    /// let mut file = NoFsFile::new(std::fs::File::open("/dev/zero")?);
    /// file.set_policy(NoFsPolicy::BestEffort);
    /// assert_eq!(file.policy(), NoFsPolicy::BestEffort);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_policy(&mut self, policy: NoFsPolicy) {
        self.policy = policy_to_u8(policy);
    }

    /// This file's policy: the one set with
    /// [`with_policy`](Self::with_policy), else the process default at the
    /// time of the call.
    ///
    /// ```
    /// use reclaim_scope::NoFsFile;
    /// let file = NoFsFile::new(std::fs::File::open("/dev/zero")?);
    /// assert_eq!(file.policy(), NoFsFile::default_policy());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[inline]
    pub fn policy(&self) -> NoFsPolicy {
        if self.policy == POLICY_UNSET {
            Self::default_policy()
        } else {
            policy_from_u8(self.policy)
        }
    }

    /// The process default [`NoFsPolicy`]: [`NoFsPolicy::BestEffort`]
    /// unless changed with [`set_default_policy`](Self::set_default_policy).
    ///
    /// ```
    /// println!("{:?}", reclaim_scope::NoFsFile::default_policy());
    /// ```
    #[inline]
    pub fn default_policy() -> NoFsPolicy {
        policy_from_u8(DEFAULT_POLICY.load(Ordering::Relaxed))
    }

    /// Sets the process default [`NoFsPolicy`], used by every file without
    /// its own (also files created before). Set it once at start-up.
    ///
    /// ```
    /// use reclaim_scope::{NoFsFile, NoFsPolicy};
    /// let own = NoFsFile::new(std::fs::File::open("/dev/null")?).with_policy(NoFsPolicy::BestEffort);
    /// let follows = NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// assert_eq!(NoFsFile::default_policy(), NoFsPolicy::BestEffort);
    ///
    /// // A daemon that refuses to serve unprotected:
    /// NoFsFile::set_default_policy(NoFsPolicy::Strict);
    /// assert_eq!(NoFsFile::default_policy(), NoFsPolicy::Strict);
    /// assert_eq!(follows.policy(), NoFsPolicy::Strict);
    /// assert_eq!(own.policy(), NoFsPolicy::BestEffort);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_default_policy(policy: NoFsPolicy) {
        DEFAULT_POLICY.store(policy_to_u8(policy), Ordering::Relaxed);
    }

    /// The wrapped file.
    ///
    /// ```
    /// let file = reclaim_scope::NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// assert_eq!(file.get_ref().metadata()?.len(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[inline]
    pub fn get_ref(&self) -> &File {
        &self.file
    }

    /// Unwraps the file.
    ///
    /// ```
    /// let file = reclaim_scope::NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let std_file: std::fs::File = file.into_inner();
    /// # drop(std_file);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[inline]
    pub fn into_inner(self) -> File {
        self.file
    }

    /// Enters the scope for `op`, following the policy.
    #[inline(always)]
    fn enter(
        &self,
        op: Op,
        offset: u64,
        len: u64,
        flags: RwFlags,
    ) -> Result<NoFsScope, NoFsIoError> {
        if self.policy() == NoFsPolicy::Strict {
            match NoFsScope::try_enter() {
                Ok(scope) => Ok(scope),
                Err(e) => Err(refused(op, offset, len, flags, e)),
            }
        } else {
            Ok(NoFsScope::enter())
        }
    }

    /// `pread64(2)` inside the scope: one syscall, reading up to
    /// `buf.len()` bytes (at most `0x7ffff000`, the kernel's limit per call)
    /// at `offset`. Returns the count read; 0 at end of file.
    ///
    /// Like [`FileExt::read_at`](std::os::unix::fs::FileExt::read_at) a
    /// signal may make it fail with [`io::ErrorKind::Interrupted`]; use
    /// [`read_exact_at_nofs`](Self::read_exact_at_nofs) for a loop that
    /// retries and continues.
    ///
    /// ```
    /// let file = reclaim_scope::NoFsFile::new(std::fs::File::open("/dev/zero")?);
    /// let mut buf = [0xffu8; 4096];
    /// let n = file.pread_nofs(&mut buf, 0)?;
    /// assert!(buf[..n].iter().all(|&b| b == 0));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// See [pread(2)](https://man7.org/linux/man-pages/man2/pread.2.html).
    #[doc(alias = "pread")]
    #[doc(alias = "pread64")]
    #[inline]
    pub fn pread_nofs(&self, buf: &mut [u8], offset: u64) -> Result<usize, NoFsIoError> {
        let len = buf.len() as u64;
        check_range(Op::Pread, offset, len, RwFlags::empty())?;
        let chunk = buf.len().min(sio::MAX_RW_COUNT);
        let r = {
            let _scope = self.enter(Op::Pread, offset, len, RwFlags::empty())?;
            sio::pread(&self.file, &mut buf[..chunk], offset)
        };
        r.map_err(|e| os_error(Op::Pread, offset, len, RwFlags::empty(), e))
    }

    /// `pwrite64(2)` inside the scope: one syscall, writing up to
    /// `buf.len()` bytes (at most `0x7ffff000` per call) at `offset`.
    /// Returns the count written, which may be short.
    ///
    /// This is the call of the seed deadlock: a buffered write allocates
    /// page cache, here with `GFP_NOIO`. A signal may make it fail with
    /// [`io::ErrorKind::Interrupted`]; use
    /// [`write_all_at_nofs`](Self::write_all_at_nofs) for a loop that retries
    /// and continues.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-pwrite-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// assert_eq!(file.pwrite_nofs(b"sector", 512)?, 6);
    /// assert_eq!(file.get_ref().metadata()?.len(), 518);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// See [pwrite(2)](https://man7.org/linux/man-pages/man2/pwrite.2.html).
    #[doc(alias = "pwrite")]
    #[doc(alias = "pwrite64")]
    #[inline]
    pub fn pwrite_nofs(&self, buf: &[u8], offset: u64) -> Result<usize, NoFsIoError> {
        let len = buf.len() as u64;
        check_range(Op::Pwrite, offset, len, RwFlags::empty())?;
        let chunk = buf.len().min(sio::MAX_RW_COUNT);
        let r = {
            let _scope = self.enter(Op::Pwrite, offset, len, RwFlags::empty())?;
            sio::pwrite(&self.file, &buf[..chunk], offset)
        };
        r.map_err(|e| os_error(Op::Pwrite, offset, len, RwFlags::empty(), e))
    }

    /// Fills `buf` from `offset`, inside one scope: `EINTR` is retried,
    /// short reads are continued, lengths above `0x7ffff000` are split.
    ///
    /// End of file before `buf` is full fails with
    /// [`io::ErrorKind::UnexpectedEof`], naming the offset, the length and
    /// where the file ended; [`NoFsIoError::bytes_done`] says how much of
    /// `buf` was filled.
    ///
    /// ```
    /// let file = reclaim_scope::NoFsFile::new(std::fs::File::open("/dev/zero")?);
    /// let mut block = vec![1u8; 64 * 1024];
    /// file.read_exact_at_nofs(&mut block, 1 << 20)?;
    /// assert!(block.iter().all(|&b| b == 0));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "read_exact_at")]
    pub fn read_exact_at_nofs(&self, buf: &mut [u8], offset: u64) -> Result<(), NoFsIoError> {
        let len = buf.len() as u64;
        check_range(Op::ReadExact, offset, len, RwFlags::empty())?;
        if buf.is_empty() {
            return Ok(());
        }
        let mut done = 0usize;
        let fail = {
            let _scope = self.enter(Op::ReadExact, offset, len, RwFlags::empty())?;
            loop {
                if done == buf.len() {
                    break None;
                }
                let end = done + (buf.len() - done).min(sio::MAX_RW_COUNT);
                match sio::pread(&self.file, &mut buf[done..end], offset + done as u64) {
                    Ok(0) => break Some(Cause::Eof),
                    Ok(n) => done += n.min(end - done),
                    Err(sio::EINTR) => {}
                    Err(e) => break Some(Cause::Os(e)),
                }
            }
        };
        match fail {
            None => Ok(()),
            Some(cause) => Err(loop_error(Op::ReadExact, offset, len, done, cause)),
        }
    }

    /// Writes all of `buf` at `offset`, inside one scope: `EINTR` is
    /// retried, short writes are continued, lengths above `0x7ffff000` are
    /// split.
    ///
    /// On failure nothing is written silently: the error says how many bytes
    /// (from `offset` on) were written before it
    /// ([`NoFsIoError::bytes_done`]); a write the kernel answers with 0 fails
    /// with [`io::ErrorKind::WriteZero`].
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-writeall-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.write_all_at_nofs(&[7u8; 8192], 0)?;
    /// assert_eq!(file.get_ref().metadata()?.len(), 8192);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "write_all_at")]
    pub fn write_all_at_nofs(&self, buf: &[u8], offset: u64) -> Result<(), NoFsIoError> {
        let len = buf.len() as u64;
        check_range(Op::WriteAll, offset, len, RwFlags::empty())?;
        if buf.is_empty() {
            return Ok(());
        }
        let mut done = 0usize;
        let fail = {
            let _scope = self.enter(Op::WriteAll, offset, len, RwFlags::empty())?;
            loop {
                if done == buf.len() {
                    break None;
                }
                let end = done + (buf.len() - done).min(sio::MAX_RW_COUNT);
                match sio::pwrite(&self.file, &buf[done..end], offset + done as u64) {
                    Ok(0) => break Some(Cause::WriteZero),
                    Ok(n) => done += n.min(end - done),
                    Err(sio::EINTR) => {}
                    Err(e) => break Some(Cause::Os(e)),
                }
            }
        };
        match fail {
            None => Ok(()),
            Some(cause) => Err(loop_error(Op::WriteAll, offset, len, done, cause)),
        }
    }

    /// `preadv2(2)` inside the scope: one syscall reading into `bufs` from
    /// `offset` with per-call [`RwFlags`]. Returns the count read, which may
    /// be short (at most 1024 buffers and `0x7ffff000` bytes per call).
    ///
    /// - [`RwFlags::NOWAIT`] on data not in the page cache fails with
    ///   [`io::ErrorKind::WouldBlock`] (`EAGAIN`).
    /// - A flag the kernel rejects (`EOPNOTSUPP`, or `EINVAL` for e.g.
    ///   `RWF_ATOMIC` without `O_DIRECT`) fails with an error naming the
    ///   flags and the Linux version that added each.
    /// - Not on Linux, or Linux < 4.6: `Unsupported`.
    ///
    /// ```
    /// use reclaim_scope::{NoFsFile, RwFlags};
    /// use std::io::IoSliceMut;
    ///
    /// let file = NoFsFile::new(std::fs::File::open("/dev/zero")?);
    /// let (mut head, mut body) = ([1u8; 8], [1u8; 56]);
    /// let n = file.preadv2_nofs(
    ///     &mut [IoSliceMut::new(&mut head), IoSliceMut::new(&mut body)],
    ///     0,
    ///     RwFlags::empty(),
    /// )?;
    /// assert_eq!(n, 64);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// See [preadv2(2)](https://man7.org/linux/man-pages/man2/preadv2.2.html).
    #[doc(alias = "preadv2")]
    #[doc(alias = "readv")]
    pub fn preadv2_nofs(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        offset: u64,
        flags: RwFlags,
    ) -> Result<usize, NoFsIoError> {
        let len = sio::total_len(bufs.iter().map(|b| &**b));
        check_range(Op::Preadv2, offset, len, flags)?;
        let r = {
            let _scope = self.enter(Op::Preadv2, offset, len, flags)?;
            sio::preadv2(&self.file, bufs, offset, flags.bits())
        };
        r.map_err(|e| os_error(Op::Preadv2, offset, len, flags, e))
    }

    /// `pwritev2(2)` inside the scope: one syscall writing `bufs` at
    /// `offset` with per-call [`RwFlags`]. Returns the count written, which
    /// may be short (at most 1024 buffers and `0x7ffff000` bytes per call).
    /// Errors as for [`preadv2_nofs`](Self::preadv2_nofs).
    ///
    /// ```
    /// use reclaim_scope::{NoFsFile, RwFlags};
    /// use std::io::IoSlice;
    ///
    /// # let path = std::env::temp_dir().join(format!("rs-doc-pwritev2-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = NoFsFile::new(f);
    /// // An NBD write with the FUA flag: durable before the reply.
    /// let n = file.pwritev2_nofs(&[IoSlice::new(b"hdr"), IoSlice::new(b"data")], 0, RwFlags::DSYNC)?;
    /// assert_eq!(n, 7);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// See [pwritev2(2)](https://man7.org/linux/man-pages/man2/pwritev2.2.html).
    #[doc(alias = "pwritev2")]
    #[doc(alias = "writev")]
    pub fn pwritev2_nofs(
        &self,
        bufs: &[IoSlice<'_>],
        offset: u64,
        flags: RwFlags,
    ) -> Result<usize, NoFsIoError> {
        let len = sio::total_len(bufs.iter().map(|b| &**b));
        check_range(Op::Pwritev2, offset, len, flags)?;
        let r = {
            let _scope = self.enter(Op::Pwritev2, offset, len, flags)?;
            sio::pwritev2(&self.file, bufs, offset, flags.bits())
        };
        r.map_err(|e| os_error(Op::Pwritev2, offset, len, flags, e))
    }

    /// Runs a non-transfer syscall inside the scope, retrying `EINTR`.
    #[inline]
    fn plain(
        &self,
        op: Op,
        offset: u64,
        len: u64,
        mut call: impl FnMut() -> Result<(), i32>,
    ) -> Result<(), NoFsIoError> {
        let r = {
            let _scope = self.enter(op, offset, len, RwFlags::empty())?;
            loop {
                match call() {
                    Err(sio::EINTR) => {}
                    r => break r,
                }
            }
        };
        r.map_err(|e| os_error(op, offset, len, RwFlags::empty(), e))
    }

    /// `fdatasync(2)` inside the scope (`EINTR` retried): the data, and the
    /// metadata needed to read it back, are durable.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-fdatasync-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.write_all_at_nofs(b"journal block", 0)?;
    /// file.sync_data_nofs()?; // NBD FLUSH
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "fdatasync")]
    pub fn sync_data_nofs(&self) -> Result<(), NoFsIoError> {
        self.plain(Op::Fdatasync, 0, 0, || sio::fdatasync(&self.file))
    }

    /// `fsync(2)` inside the scope (`EINTR` retried): data and all metadata
    /// are durable.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-fsync-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.set_len_nofs(1 << 20)?;
    /// file.sync_all_nofs()?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "fsync")]
    pub fn sync_all_nofs(&self) -> Result<(), NoFsIoError> {
        self.plain(Op::Fsync, 0, 0, || sio::fsync(&self.file))
    }

    /// `ftruncate(2)` inside the scope (`EINTR` retried): sets a regular
    /// file's size. `len` beyond `i64::MAX` fails with `InvalidInput` before
    /// any syscall, and so does a block device (its size is the device's:
    /// the error names the device and how to resize it).
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-setlen-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.set_len_nofs(4 << 30)?; // a sparse 4 GiB backing file
    /// assert_eq!(file.size_nofs()?, 4 << 30);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "ftruncate")]
    #[doc(alias = "set_len")]
    pub fn set_len_nofs(&self, len: u64) -> Result<(), NoFsIoError> {
        check_range(Op::Ftruncate, len, 0, RwFlags::empty())?;
        if let Some((major, minor)) = self.block_device() {
            let why = format!(
                "{} is a block device ({major}:{minor}); its size is the device's and \
                 ftruncate cannot change it: resize the device itself (lvextend, \
                 losetup --set-capacity, …)",
                self.display_path()
            );
            return Err(NoFsIoError::new(
                Op::Ftruncate,
                len,
                0,
                Cause::InvalidOwned(why.into()),
            ));
        }
        self.plain(Op::Ftruncate, len, 0, || sio::ftruncate(&self.file, len))
    }

    /// The size in bytes of the backing store, inside the scope: `st_size`
    /// of a regular file (`fstat(2)`), the device's size of a block device
    /// (`ioctl(BLKGETSIZE64)`), where `metadata().len()` says 0.
    ///
    /// # Errors
    ///
    /// The errno of `fstat` or of the ioctl (e.g. `ENOTTY` for a character
    /// device, whose size it reports as its `st_size` instead: 0).
    ///
    /// # Examples
    ///
    /// ```
    /// let file = reclaim_scope::NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// assert_eq!(file.size_nofs()?, 0); // a character device
    /// if let Ok(disk) = std::fs::File::open("/dev/loop0") {
    ///     // A block device: its real size, not metadata().len()'s 0.
    ///     println!("{} bytes", reclaim_scope::NoFsFile::new(disk).size_nofs()?);
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// See [fstat(2)](https://man7.org/linux/man-pages/man2/fstat.2.html)
    /// and `BLKGETSIZE64` in `<linux/fs.h>` (what
    /// [blockdev(8)](https://man7.org/linux/man-pages/man8/blockdev.8.html)
    /// `--getsize64` asks).
    #[doc(alias = "BLKGETSIZE64")]
    #[doc(alias = "len")]
    pub fn size_nofs(&self) -> Result<u64, NoFsIoError> {
        let _scope = self.enter(Op::Fstat, 0, 0, RwFlags::empty())?;
        // A descriptor's file type never changes: once it is known to be a
        // device, one ioctl answers (zeroing and seeking ask for every call).
        if self.kind.load(Ordering::Relaxed) == KIND_BLOCK {
            return sio::blk_size(&self.file)
                .map_err(|e| os_error(Op::BlkGetSize64, 0, 0, RwFlags::empty(), e));
        }
        let (kind, len) = sio::fstat_kind(&self.file)
            .map_err(|e| os_error(Op::Fstat, 0, 0, RwFlags::empty(), e))?;
        match self.remember_kind(kind) {
            KIND_BLOCK => sio::blk_size(&self.file)
                .map_err(|e| os_error(Op::BlkGetSize64, 0, 0, RwFlags::empty(), e)),
            _ => Ok(len),
        }
    }

    /// Whether the backing store is a block device (a disk, partition, LVM
    /// volume or loop device) rather than a file. One `fstat(2)` on the
    /// first call, remembered; `false` if `fstat` fails.
    ///
    /// # Examples
    ///
    /// ```
    /// let file = reclaim_scope::NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// assert!(!file.is_block_device());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_block_device(&self) -> bool {
        self.kind() == KIND_BLOCK
    }

    fn kind(&self) -> u8 {
        match self.kind.load(Ordering::Relaxed) {
            KIND_UNKNOWN => match sio::fstat_kind(&self.file) {
                Ok((k, _)) => self.remember_kind(k),
                Err(_) => KIND_OTHER,
            },
            k => k,
        }
    }

    fn remember_kind(&self, kind: sio::FileKind) -> u8 {
        let k = match kind {
            sio::FileKind::Regular => KIND_REGULAR,
            sio::FileKind::Block(..) => KIND_BLOCK,
            sio::FileKind::Other => KIND_OTHER,
        };
        self.kind.store(k, Ordering::Relaxed);
        k
    }

    /// `Some((major, minor))` for a block device.
    fn block_device(&self) -> Option<(u32, u32)> {
        if !self.is_block_device() {
            return None;
        }
        match sio::fstat_kind(&self.file) {
            Ok((sio::FileKind::Block(major, minor), _)) => Some((major, minor)),
            _ => None,
        }
    }

    fn display_path(&self) -> String {
        match sio::fd_path(&self.file) {
            Some(p) => p.display().to_string(),
            None => format!("descriptor {}", self.file.as_raw_fd()),
        }
    }

    /// `fallocate(2)` with `mode` over a checked range; `len == 0` is a
    /// no-op without syscall (the kernel would answer `EINVAL`).
    fn falloc(&self, op: Op, mode: i32, offset: u64, len: u64) -> Result<(), NoFsIoError> {
        check_range(op, offset, len, RwFlags::empty())?;
        if len == 0 {
            return Ok(());
        }
        self.plain(op, offset, len, || {
            sio::fallocate(&self.file, mode, offset, len)
        })
    }

    /// `fallocate(2)` mode 0 inside the scope: allocates blocks for
    /// `offset..offset + len`, extending the file if needed, so later
    /// writes there cannot fail with `ENOSPC`. Linux only (else
    /// `ENOSYS`); `len == 0` does nothing. Block devices answer
    /// `EOPNOTSUPP` (their blocks always exist).
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-alloc-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// match file.allocate_nofs(0, 1 << 20) {
    ///     Ok(()) => assert_eq!(file.size_nofs()?, 1 << 20),
    ///     Err(e) => println!("no fallocate here: {e}"),
    /// }
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "fallocate")]
    pub fn allocate_nofs(&self, offset: u64, len: u64) -> Result<(), NoFsIoError> {
        self.falloc(Op::Allocate, 0, offset, len)
    }

    /// `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)` inside the
    /// scope: deallocates `offset..offset + len`, which then reads as zeros;
    /// the size is unchanged. On a block device the kernel zeroes the range
    /// by unmapping it, and answers `EOPNOTSUPP` when the device cannot
    /// (it never writes zeros for it). A file system without hole punching
    /// answers `EOPNOTSUPP` too; `len == 0` does nothing.
    ///
    /// For a discard that may leave any data behind (NBD `TRIM`, SCSI
    /// `UNMAP` without LBPRZ) use [`discard_nofs`](Self::discard_nofs).
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-punch-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.write_all_at_nofs(&[9u8; 8192], 0)?;
    /// if file.punch_hole_nofs(0, 4096).is_ok() {
    ///     let mut b = [1u8; 4096];
    ///     file.read_exact_at_nofs(&mut b, 0)?;
    ///     assert_eq!(b, [0u8; 4096]);
    ///     assert_eq!(file.size_nofs()?, 8192);
    /// }
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "FALLOC_FL_PUNCH_HOLE")]
    pub fn punch_hole_nofs(&self, offset: u64, len: u64) -> Result<(), NoFsIoError> {
        self.falloc(
            Op::PunchHole,
            sio::FALLOC_FL_PUNCH_HOLE | sio::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Tells the backing store that `offset..offset + len` is no longer
    /// needed, inside the scope: a hole punched in a regular file
    /// ([`punch_hole_nofs`](Self::punch_hole_nofs): reads as zeros), an
    /// `ioctl(BLKDISCARD)` on a block device (what the range reads as
    /// afterwards is up to the device). This is NBD `TRIM` and SCSI `UNMAP`.
    /// `len == 0` does nothing.
    ///
    /// # Errors
    ///
    /// `EOPNOTSUPP` where the file system or device cannot discard (a
    /// discard is advisory: a daemon may ignore that), `EINVAL` for a block
    /// device range not aligned to its logical block size or beyond its
    /// end, `EBADF` if not open for writing.
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-discard-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.write_all_at_nofs(&[9u8; 8192], 0)?;
    /// match file.discard_nofs(0, 4096) {
    ///     Ok(()) => {}
    ///     Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {} // advisory
    ///     Err(e) => return Err(e.into()),
    /// }
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "BLKDISCARD")]
    #[doc(alias = "trim")]
    #[doc(alias = "unmap")]
    pub fn discard_nofs(&self, offset: u64, len: u64) -> Result<(), NoFsIoError> {
        if !self.is_block_device() {
            return self.punch_hole_nofs(offset, len);
        }
        check_range(Op::Discard, offset, len, RwFlags::empty())?;
        if len == 0 {
            return Ok(());
        }
        self.plain(Op::Discard, offset, len, || {
            sio::blk_discard(&self.file, offset, len)
        })
    }

    /// Makes `offset..offset + len` read as zeros **and stay allocated**,
    /// whatever the backing store, extending a regular file if the range
    /// ends beyond it. This is NBD `WRITE_ZEROES` (also with
    /// `NBD_CMD_FLAG_NO_HOLE`: the range is never left as a hole) and SCSI
    /// `WRITE SAME` of zeros. `len == 0` does nothing.
    ///
    /// Punching is an optimisation, never a requirement; in order:
    /// 1. `fallocate(FALLOC_FL_ZERO_RANGE)` — ext4, XFS, and block devices
    ///    (where the kernel uses the device's WRITE ZEROES or writes zeros
    ///    itself);
    /// 2. where that is `EOPNOTSUPP` (tmpfs, NFS, …): punch a hole, then
    ///    allocate the range (`fallocate` mode 0), as QEMU's file driver
    ///    does;
    /// 3. where either is unsupported too, or for a block-device range not
    ///    aligned to the device's logical block size (`BLKSSZGET`: 512 or
    ///    4096): zeros written with `pwrite64`, 64 KiB at a time, from a
    ///    static buffer (no allocation).
    ///
    /// Each step that answered `EOPNOTSUPP` is remembered per file.
    ///
    /// # Errors
    ///
    /// The errno of the step that failed for another reason: `ENOSPC`
    /// (e.g. when step 2's allocation fails: the range then reads as zeros
    /// but is a hole), `EFBIG`, `EIO`, `EBADF`, …; step 3's error says how
    /// many bytes were zeroed ([`NoFsIoError::bytes_done`]). A block-device
    /// range that ends beyond the device fails with `InvalidInput` before
    /// anything is written (no errno: no syscall was made).
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-zero-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.write_all_at_nofs(&[9u8; 8192], 0)?;
    /// file.zero_range_nofs(4096, 8192)?;
    /// let mut b = [1u8; 8192];
    /// file.read_exact_at_nofs(&mut b, 4096)?;
    /// assert_eq!(b, [0u8; 8192]);
    /// assert_eq!(file.size_nofs()?, 12288); // extended
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "FALLOC_FL_ZERO_RANGE")]
    #[doc(alias = "write_zeroes")]
    #[doc(alias = "BLKZEROOUT")]
    pub fn zero_range_nofs(&self, offset: u64, len: u64) -> Result<(), NoFsIoError> {
        check_range(Op::ZeroRange, offset, len, RwFlags::empty())?;
        if len == 0 {
            return Ok(());
        }
        // The kernel zeroes a device only in whole logical blocks (512 or
        // 4096 bytes: EINVAL otherwise); other ranges are written as zeros.
        let unaligned_block = self.is_block_device() && {
            let lbs = u64::from(sio::blk_logical_block_size(&self.file).unwrap_or(4096));
            offset % lbs != 0 || len % lbs != 0
        };
        if self.is_block_device() {
            let size = self.size_nofs()?;
            if offset.saturating_add(len) > size {
                let why = format!(
                    "the range ends beyond the end of {} ({size} bytes)",
                    self.display_path()
                );
                return Err(NoFsIoError::new(
                    Op::ZeroRange,
                    offset,
                    len,
                    Cause::InvalidOwned(why.into()),
                ));
            }
        }
        let mut mode = self.zero_mode.load(Ordering::Relaxed);
        if unaligned_block {
            mode = ZERO_WRITE;
        }
        if mode == ZERO_FALLOCATE {
            match self.falloc(Op::ZeroRange, sio::FALLOC_FL_ZERO_RANGE, offset, len) {
                Err(e) if e.raw_os_error() == Some(sio::EOPNOTSUPP) => {
                    mode = ZERO_PUNCH_ALLOCATE;
                    self.zero_mode.store(mode, Ordering::Relaxed);
                }
                r => return r,
            }
        }
        if mode == ZERO_PUNCH_ALLOCATE {
            let r = self
                .punch_hole_nofs(offset, len)
                .and_then(|()| self.allocate_nofs(offset, len));
            match r {
                Err(e) if e.raw_os_error() == Some(sio::EOPNOTSUPP) => {
                    self.zero_mode.store(ZERO_WRITE, Ordering::Relaxed);
                }
                r => return r,
            }
        }
        self.write_zeros(offset, len)
    }

    /// Step 3 of [`zero_range_nofs`](Self::zero_range_nofs): zeros written
    /// inside one scope, `EINTR` retried, short writes continued.
    fn write_zeros(&self, offset: u64, len: u64) -> Result<(), NoFsIoError> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut done = 0u64;
        let fail = {
            let _scope = self.enter(Op::WriteZeros, offset, len, RwFlags::empty())?;
            loop {
                if done == len {
                    break None;
                }
                let n = (len - done).min(ZEROS.len() as u64) as usize;
                match sio::pwrite(&self.file, &ZEROS[..n], offset + done) {
                    Ok(0) => break Some(Cause::WriteZero),
                    Ok(w) => done += w.min(n) as u64,
                    Err(sio::EINTR) => {}
                    Err(e) => break Some(Cause::Os(e)),
                }
            }
        };
        match fail {
            None => Ok(()),
            Some(cause) => Err(loop_error(
                Op::WriteZeros,
                offset,
                len,
                done as usize,
                cause,
            )),
        }
    }

    /// `lseek(2)` with `SEEK_DATA` inside the scope: the start of the first
    /// data region at or after `offset`, or `None` when only a hole follows
    /// up to the end of the file (the kernel's `ENXIO`), or `offset` is at
    /// or beyond the end. File systems without hole tracking report the
    /// whole file as data, and so does this method for a block device
    /// (whose `lseek` has no `SEEK_DATA`: it asks the device's size). The file position is
    /// changed (every `NoFsFile` transfer is positional).
    ///
    /// With [`seek_hole_nofs`](Self::seek_hole_nofs) this maps a sparse
    /// backing file (NBD `BLOCK_STATUS`, SCSI `GET LBA STATUS`).
    ///
    /// # Errors
    ///
    /// An offset beyond `i64::MAX` fails with `InvalidInput` before any
    /// syscall (no errno); the kernel answers `EINVAL` where the file does
    /// not support `SEEK_DATA`, `ESPIPE` for a pipe, `EBADF`.
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-seek-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.set_len_nofs(1 << 20)?;                     // 1 MiB hole
    /// file.write_all_at_nofs(&[7u8; 4096], 512 << 10)?; // data in the middle
    /// let data = file.seek_data_nofs(0)?.expect("there is data");
    /// assert!(data <= 512 << 10); // = 512 KiB where the file system tracks holes
    /// let hole = file.seek_hole_nofs(data)?.expect("before the end");
    /// assert!(hole > data);
    /// assert_eq!(file.seek_data_nofs(1 << 20)?, None); // at the end
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "SEEK_DATA")]
    #[doc(alias = "lseek")]
    pub fn seek_data_nofs(&self, offset: u64) -> Result<Option<u64>, NoFsIoError> {
        self.seek(Op::SeekData, offset, true)
    }

    /// `lseek(2)` with `SEEK_HOLE` inside the scope: the start of the first
    /// hole at or after `offset` — the end of the file counts as a hole —
    /// or `None` when `offset` is at or beyond the end (`ENXIO`). Errors as
    /// for [`seek_data_nofs`](Self::seek_data_nofs).
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-seekhole-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.write_all_at_nofs(&[7u8; 4096], 0)?;
    /// assert_eq!(file.seek_hole_nofs(0)?, Some(4096)); // the end of the file
    /// assert_eq!(file.seek_hole_nofs(4096)?, None);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "SEEK_HOLE")]
    pub fn seek_hole_nofs(&self, offset: u64) -> Result<Option<u64>, NoFsIoError> {
        self.seek(Op::SeekHole, offset, false)
    }

    fn seek(&self, op: Op, offset: u64, data: bool) -> Result<Option<u64>, NoFsIoError> {
        check_range(op, offset, 0, RwFlags::empty())?;
        if self.is_block_device() {
            // Block devices' llseek knows no SEEK_DATA/SEEK_HOLE (EINVAL):
            // a device is data from start to end, as SEEK_DATA's generic
            // form says of any file without hole tracking.
            let size = self.size_nofs()?;
            return Ok((offset < size).then_some(if data { offset } else { size }));
        }
        let r = {
            let _scope = self.enter(op, offset, 0, RwFlags::empty())?;
            sio::seek_data_hole(&self.file, offset, data)
        };
        match r {
            Ok(at) => Ok(Some(at)),
            Err(sio::ENXIO) => Ok(None),
            Err(e) => Err(os_error(op, offset, 0, RwFlags::empty(), e)),
        }
    }
}

impl fmt::Debug for NoFsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoFsFile")
            .field("file", &self.file)
            .field("policy", &self.policy())
            .field("policy_is_default", &(self.policy == POLICY_UNSET))
            .finish()
    }
}

impl From<File> for NoFsFile {
    /// ```
    /// let file: reclaim_scope::NoFsFile = std::fs::File::open("/dev/null")?.into();
    /// # drop(file);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn from(file: File) -> NoFsFile {
        NoFsFile::new(file)
    }
}

impl From<OwnedFd> for NoFsFile {
    /// ```
    /// use std::os::fd::OwnedFd;
    /// let fd: OwnedFd = std::fs::File::open("/dev/null")?.into();
    /// let file = reclaim_scope::NoFsFile::from(fd);
    /// # drop(file);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn from(fd: OwnedFd) -> NoFsFile {
        NoFsFile::new(File::from(fd))
    }
}

impl From<NoFsFile> for File {
    /// ```
    /// let file = reclaim_scope::NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let back: std::fs::File = file.into();
    /// # drop(back);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn from(f: NoFsFile) -> File {
        f.file
    }
}

impl From<NoFsFile> for OwnedFd {
    /// ```
    /// let file = reclaim_scope::NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let fd: std::os::fd::OwnedFd = file.into();
    /// # drop(fd);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn from(f: NoFsFile) -> OwnedFd {
        f.file.into()
    }
}

impl AsFd for NoFsFile {
    /// ```
    /// use std::os::fd::AsFd;
    /// let file = reclaim_scope::NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let dup = file.as_fd().try_clone_to_owned()?;
    /// # drop(dup);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for NoFsFile {
    /// ```
    /// use std::os::fd::AsRawFd;
    /// let file = reclaim_scope::NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// assert!(file.as_raw_fd() >= 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl IntoRawFd for NoFsFile {
    /// ```
    /// use std::os::fd::{FromRawFd, IntoRawFd};
    /// let file = reclaim_scope::NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let raw = file.into_raw_fd();
    /// // SAFETY: `raw` was just released by `into_raw_fd` and is owned here.
    /// let back = unsafe { std::fs::File::from_raw_fd(raw) };
    /// # drop(back);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn into_raw_fd(self) -> RawFd {
        self.file.into_raw_fd()
    }
}
