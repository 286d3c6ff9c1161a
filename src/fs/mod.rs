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
mod rw;
mod space;
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
/// # Examples
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
    /// # Examples
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
    /// # Examples
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
    /// # Examples
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
    /// # Examples
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
    /// # Examples
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
    /// # Examples
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
    /// # Examples
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
    /// # Examples
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
    fn from(file: File) -> NoFsFile {
        NoFsFile::new(file)
    }
}

impl From<OwnedFd> for NoFsFile {
    fn from(fd: OwnedFd) -> NoFsFile {
        NoFsFile::new(File::from(fd))
    }
}

impl From<NoFsFile> for File {
    fn from(f: NoFsFile) -> File {
        f.file
    }
}

impl From<NoFsFile> for OwnedFd {
    fn from(f: NoFsFile) -> OwnedFd {
        f.file.into()
    }
}

impl AsFd for NoFsFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for NoFsFile {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl IntoRawFd for NoFsFile {
    fn into_raw_fd(self) -> RawFd {
        self.file.into_raw_fd()
    }
}
