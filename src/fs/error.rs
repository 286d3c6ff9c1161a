//! [`NoFsIoError`]: the error of every [`NoFsFile`](super::NoFsFile) call —
//! the kernel's `errno`, never lost, plus where and how far the call got.

use super::RwFlags;
use crate::sys::{self, fileio as sio};
use crate::Error;
use std::fmt;
use std::io;
use std::path::Path;

/// The call that failed. Private: [`NoFsIoError::operation`] gives its
/// syscall name, and the message logic matches on this, not on strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Pread,
    Pwrite,
    /// `read_exact_at_nofs`: a loop of `pread64`.
    ReadExact,
    /// `write_all_at_nofs`: a loop of `pwrite64`.
    WriteAll,
    Preadv2,
    Pwritev2,
    Fdatasync,
    Fsync,
    Ftruncate,
    /// `fallocate` mode 0.
    Allocate,
    /// `fallocate(PUNCH_HOLE|KEEP_SIZE)`.
    PunchHole,
    /// `fallocate(ZERO_RANGE)`.
    ZeroRange,
    /// `zero_range_nofs`'s last resort: zeros written with `pwrite64`.
    WriteZeros,
    /// `size_nofs`: `fstat`, then `ioctl(BLKGETSIZE64)` for a block device.
    Fstat,
    BlkGetSize64,
    SeekData,
    SeekHole,
    /// `discard_nofs` on a block device.
    Discard,
    /// `NoFsFile::open`.
    Open,
    /// `NoFsFile::open_direct`.
    OpenDirect,
}

impl Op {
    /// The syscall as the man pages name it.
    pub(crate) fn syscall(self) -> &'static str {
        match self {
            Op::Pread | Op::ReadExact => "pread64",
            Op::Pwrite | Op::WriteAll | Op::WriteZeros => "pwrite64",
            Op::Preadv2 => "preadv2",
            Op::Pwritev2 => "pwritev2",
            Op::Fdatasync => "fdatasync",
            Op::Fsync => "fsync",
            Op::Ftruncate => "ftruncate",
            Op::Allocate => "fallocate(0)",
            Op::PunchHole => "fallocate(FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE)",
            Op::ZeroRange => "fallocate(FALLOC_FL_ZERO_RANGE)",
            Op::Fstat => "fstat",
            Op::BlkGetSize64 => "ioctl(BLKGETSIZE64)",
            Op::SeekData => "lseek(SEEK_DATA)",
            Op::SeekHole => "lseek(SEEK_HOLE)",
            Op::Discard => "ioctl(BLKDISCARD)",
            Op::Open => "open",
            Op::OpenDirect => "open(O_DIRECT)",
        }
    }

    fn is_read(self) -> bool {
        matches!(self, Op::Pread | Op::ReadExact | Op::Preadv2)
    }

    fn is_write(self) -> bool {
        matches!(
            self,
            Op::Pwrite | Op::WriteAll | Op::Pwritev2 | Op::WriteZeros
        )
    }

    fn is_fallocate(self) -> bool {
        matches!(self, Op::Allocate | Op::PunchHole | Op::ZeroRange)
    }

    /// A call over a byte range that is not a transfer.
    fn is_range(self) -> bool {
        self.is_fallocate() || self == Op::Discard
    }

    fn is_vectored(self) -> bool {
        matches!(self, Op::Preadv2 | Op::Pwritev2)
    }

    /// A loop that transfers a whole buffer (and so reports bytes done).
    fn whole_buffer(self) -> bool {
        matches!(self, Op::ReadExact | Op::WriteAll | Op::WriteZeros)
    }
}

/// Why a [`NoFsFile`](super::NoFsFile) call failed: the kernel's `errno`,
/// and where and how far the call got.
///
/// Every `NoFsFile` I/O method returns `Result<_, NoFsIoError>`. The error
/// keeps the `errno` of the failing syscall ([`raw_os_error`](Self::raw_os_error))
/// — what a daemon maps to its protocol's error (NBD's `NBD_ENOSPC`, a SCSI
/// sense key) — and the context: the syscall
/// ([`operation`](Self::operation)), [`offset`](Self::offset),
/// [`len`](Self::len), the `RWF_*` [`flags`](Self::flags) and the
/// [`bytes_done`](Self::bytes_done) before the failure. Its `Display` says
/// all of it, with a hint where the errno has a usual cause.
///
/// # Into `io::Error`
///
/// `?` in a function returning [`io::Result`] converts it with
/// [`From`]: a syscall failure becomes
/// [`io::Error::from_raw_os_error`]`(errno)` — `raw_os_error()` and `kind()`
/// stay right, the context is dropped (log the `NoFsIoError` first if you
/// want it) — and a failure without errno (end of file, a write of 0
/// bytes, a range rejected before any syscall, a strict refusal) becomes an
/// `io::Error` of the same [`kind`](Self::kind) carrying this error, which
/// [`NoFsIoError::of`] gets back.
///
/// # Examples
///
/// ```
/// use reclaim_scope::NoFsFile;
///
/// let file = NoFsFile::new(std::fs::File::open("/dev/null")?); // read-only
/// let err = file.write_all_at_nofs(b"data", 4096).unwrap_err();
/// assert_eq!(err.raw_os_error(), Some(libc::EBADF));
/// assert_eq!(err.operation(), "pwrite64");
/// assert_eq!((err.offset(), err.len(), err.bytes_done()), (4096, 4, 0));
/// assert!(err.to_string().contains("not open for writing"));
///
/// // Into io::Error (what `?` does), the errno stays:
/// let io: std::io::Error = err.into();
/// assert_eq!(io.raw_os_error(), Some(libc::EBADF));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct NoFsIoError {
    op: Op,
    offset: u64,
    len: u64,
    done: u64,
    flags: RwFlags,
    cause: Cause,
    /// The path of `open`/`open_direct`.
    path: Option<Box<Path>>,
}

#[derive(Debug)]
pub(crate) enum Cause {
    /// The syscall answered this errno.
    Os(i32),
    /// The file ended before the buffer was full.
    Eof,
    /// A write syscall wrote nothing.
    WriteZero,
    /// Rejected before any syscall.
    Invalid(&'static str),
    /// Rejected before any syscall, with a message built at run time
    /// (e.g. naming a block device).
    InvalidOwned(Box<str>),
    /// A strict scope could not be entered; no I/O was attempted.
    Refused(Error),
}

impl NoFsIoError {
    /// The detail of an [`io::Error`] converted from a `NoFsIoError` that
    /// has no errno (see [Into `io::Error`](NoFsIoError#into-ioerror)).
    /// Errors with an errno convert to a plain OS error and answer `None`:
    /// keep the `NoFsIoError` itself when the context matters.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::{NoFsFile, NoFsIoError};
    ///
    /// let file = NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let io: std::io::Error = file.pwrite_nofs(b"x", u64::MAX).unwrap_err().into();
    /// assert_eq!(NoFsIoError::of(&io).unwrap().offset(), u64::MAX);
    /// let other = std::io::Error::other("not from NoFsFile");
    /// assert!(NoFsIoError::of(&other).is_none());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn of(err: &io::Error) -> Option<&NoFsIoError> {
        err.get_ref()?.downcast_ref()
    }

    /// The syscall, e.g. `"pwrite64"` or
    /// `"fallocate(FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE)"`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use reclaim_scope::NoFsFile;
    /// # let file = NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let err = file.pwrite_nofs(b"x", 0).unwrap_err();
    /// assert_eq!(err.operation(), "pwrite64");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn operation(&self) -> &'static str {
        self.op.syscall()
    }

    /// The file offset the call was asked to start at (for `ftruncate`,
    /// the new length; 0 for the sync calls and `fstat`).
    ///
    /// # Examples
    ///
    /// ```
    /// # use reclaim_scope::NoFsFile;
    /// # let file = NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let err = file.pwrite_nofs(b"x", 512).unwrap_err();
    /// assert_eq!(err.offset(), 512);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The length in bytes the call was asked for.
    ///
    /// # Examples
    ///
    /// ```
    /// # use reclaim_scope::NoFsFile;
    /// # let file = NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let err = file.pwrite_nofs(b"xyz", 0).unwrap_err();
    /// assert_eq!(err.len(), 3);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// How many bytes were read or written (from [`offset`](Self::offset)
    /// on) before the failure. The bytes after them were not touched by
    /// this call.
    ///
    /// # Examples
    ///
    /// ```
    /// # use reclaim_scope::NoFsFile;
    /// # let file = NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let mut buf = [0u8; 8];
    /// let err = file.read_exact_at_nofs(&mut buf, 0).unwrap_err(); // /dev/null is empty
    /// assert_eq!(err.bytes_done(), 0);
    /// assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bytes_done(&self) -> u64 {
        self.done
    }

    /// The path [`NoFsFile::open`](super::NoFsFile::open) or
    /// [`open_direct`](super::NoFsFile::open_direct) was given; `None` for
    /// the calls on an open file.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::NoFsFile;
    /// use std::fs::OpenOptions;
    ///
    /// let err = NoFsFile::open("/nonexistent/disk.img", OpenOptions::new().read(true)).unwrap_err();
    /// assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    /// assert_eq!(err.path(), Some(std::path::Path::new("/nonexistent/disk.img")));
    /// assert!(err.to_string().starts_with("open /nonexistent/disk.img failed"));
    /// ```
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The `RWF_*` flags of the call (empty for the non-vectored calls).
    ///
    /// # Examples
    ///
    /// ```
    /// # use reclaim_scope::{NoFsFile, RwFlags};
    /// # let file = NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let err = file
    ///     .pwritev2_nofs(&[std::io::IoSlice::new(b"x")], 0, RwFlags::DSYNC)
    ///     .unwrap_err();
    /// assert_eq!(err.flags(), RwFlags::DSYNC);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn flags(&self) -> RwFlags {
        self.flags
    }

    /// The `errno` the I/O syscall answered; `None` when no syscall failed
    /// (end of file, a write of 0 bytes, a range rejected before any
    /// syscall, or a strict refusal — see [`refusal`](Self::refusal)).
    ///
    /// # Examples
    ///
    /// ```
    /// # use reclaim_scope::NoFsFile;
    /// # let file = NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// assert_eq!(file.pwrite_nofs(b"x", 0).unwrap_err().raw_os_error(), Some(libc::EBADF));
    /// let err = file.pwrite_nofs(b"x", u64::MAX).unwrap_err(); // rejected before the syscall
    /// assert_eq!(err.raw_os_error(), None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "errno")]
    pub fn raw_os_error(&self) -> Option<i32> {
        match self.cause {
            Cause::Os(e) => Some(e),
            _ => None,
        }
    }

    /// Why the I/O was not attempted, when the file's policy is
    /// [`NoFsPolicy::Strict`](super::NoFsPolicy::Strict) and the
    /// I/O-flusher context could not be entered.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::{NoFsFile, NoFsPolicy};
    ///
    /// let file = NoFsFile::new(std::fs::File::open("/dev/zero")?).with_policy(NoFsPolicy::Strict);
    /// match file.pread_nofs(&mut [0u8; 8], 0) {
    ///     Ok(n) => assert_eq!(n, 8), // this thread can be an I/O flusher
    ///     Err(e) => {
    ///         let why = e.refusal().expect("the only way this read fails");
    ///         assert!(why.to_string().contains("CAP_SYS_RESOURCE") || cfg!(not(target_os = "linux")));
    ///         assert_eq!(e.raw_os_error(), None); // no I/O syscall was made
    ///     }
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn refusal(&self) -> Option<&Error> {
        match &self.cause {
            Cause::Refused(e) => Some(e),
            _ => None,
        }
    }

    /// The [`io::ErrorKind`] of the failure: for an errno, exactly what
    /// [`io::Error::from_raw_os_error`] answers (so it does not change when
    /// the error is converted).
    ///
    /// # Examples
    ///
    /// ```
    /// # use reclaim_scope::NoFsFile;
    /// # let file = NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let err = file.pwrite_nofs(b"x", u64::MAX).unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn kind(&self) -> io::ErrorKind {
        match &self.cause {
            Cause::Os(e) => io::Error::from_raw_os_error(*e).kind(),
            Cause::Eof => io::ErrorKind::UnexpectedEof,
            Cause::WriteZero => io::ErrorKind::WriteZero,
            Cause::Invalid(_) | Cause::InvalidOwned(_) => io::ErrorKind::InvalidInput,
            Cause::Refused(e) => io::Error::from(e.clone()).kind(),
        }
    }

    pub(crate) fn new(op: Op, offset: u64, len: u64, cause: Cause) -> Self {
        NoFsIoError {
            op,
            offset,
            len,
            done: 0,
            flags: RwFlags::empty(),
            cause,
            path: None,
        }
    }

    pub(crate) fn with_path(mut self, path: &Path) -> Self {
        self.path = Some(path.into());
        self
    }

    pub(crate) fn done(mut self, done: u64) -> Self {
        self.done = done;
        self
    }

    pub(crate) fn with_flags(mut self, flags: RwFlags) -> Self {
        self.flags = flags;
        self
    }
}

impl fmt::Display for NoFsIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = self.op;
        write!(f, "{}", op.syscall())?;
        if let Some(p) = &self.path {
            write!(f, " {}", p.display())?;
        }
        if op == Op::WriteZeros {
            write!(
                f,
                " of zeros (written because no fallocate mode applies to this file or range)"
            )?;
        }
        if op.is_read() || op.is_write() || op.is_range() {
            write!(f, " of {} bytes at offset {}", self.len, self.offset)?;
        } else if op == Op::Ftruncate {
            write!(f, " to length {}", self.offset)?;
        } else if matches!(op, Op::SeekData | Op::SeekHole) {
            write!(f, " from offset {}", self.offset)?;
        }
        if !self.flags.is_empty() {
            write!(f, " with {}", self.flags)?;
        }
        match &self.cause {
            Cause::Invalid(why) => write!(f, " rejected before any syscall: {why}")?,
            Cause::InvalidOwned(why) => write!(f, " rejected before any syscall: {why}")?,
            Cause::Refused(e) => write!(
                f,
                " not attempted (NoFsPolicy::Strict): the I/O-flusher context could not be \
                 entered: {e}"
            )?,
            Cause::Eof => write!(
                f,
                " hit end of file after {} bytes (the file ends at offset {})",
                self.done,
                self.offset.saturating_add(self.done)
            )?,
            Cause::WriteZero => write!(f, " wrote nothing (the kernel answered 0)")?,
            Cause::Os(e) => {
                write!(f, " failed: {}", io::Error::from_raw_os_error(*e))?;
                self.hint(f, *e)?;
            }
        }
        if op.whole_buffer() && !matches!(self.cause, Cause::Eof) {
            let verb = if op.is_write() { "written" } else { "read" };
            write!(
                f,
                "; {} of {} bytes were {verb} before the failure",
                self.done, self.len
            )?;
        }
        Ok(())
    }
}

impl NoFsIoError {
    fn hint(&self, f: &mut fmt::Formatter<'_>, errno: i32) -> fmt::Result {
        let op = self.op;
        if errno == sio::EBADF {
            let mode = if op.is_write() || op.is_range() || op == Op::Ftruncate {
                "not open for writing"
            } else if op.is_read() {
                "not open for reading"
            } else {
                "not an open file"
            };
            write!(
                f,
                " (the descriptor is {mode}, or was closed behind the NoFsFile's back)"
            )
        } else if errno == sio::EAGAIN && self.flags.contains(RwFlags::NOWAIT) {
            write!(
                f,
                " (RWF_NOWAIT: the data is not in the page cache or the call would block; \
                 retry without RWF_NOWAIT, e.g. from a worker thread)"
            )
        } else if errno == sio::ENOSYS && cfg!(target_os = "linux") && op.is_vectored() {
            write!(f, " ({} needs Linux 4.6 or newer)", op.syscall())
        } else if errno == sio::ENOSYS && op.is_vectored() {
            write!(f, " ({} exists only on Linux)", op.syscall())
        } else if errno == sio::ENOSYS && op.is_fallocate() {
            write!(f, " (fallocate(2) exists only on Linux)")
        } else if errno == sio::EOPNOTSUPP && !self.flags.is_empty() {
            write!(
                f,
                " (this kernel, file system or file does not support one of the flags: {})",
                self.flags.describe_with_versions()
            )
        } else if errno == sys::EINVAL && !self.flags.is_empty() {
            write!(
                f,
                " (one of the flags is invalid for this file or request: {} — RWF_ATOMIC \
                 needs O_DIRECT and a power-of-two length aligned to its offset; or the \
                 O_DIRECT buffer, offset or length is misaligned)",
                self.flags.describe_with_versions()
            )
        } else if errno == sio::EOPNOTSUPP && op.is_fallocate() {
            write!(
                f,
                " (the file system or device does not support this fallocate mode)"
            )
        } else if errno == sys::EINVAL && (op.is_read() || op.is_write()) {
            write!(
                f,
                " (with O_DIRECT, the buffer address, offset and length must be aligned to \
                 the logical block size)"
            )
        } else if errno == sys::EINVAL && op == Op::OpenDirect {
            write!(f, " (this file system does not support O_DIRECT)")
        } else if errno == sys::EINVAL && op == Op::Ftruncate {
            write!(
                f,
                " (the descriptor is not open for writing, or the file is not a regular file)"
            )
        } else if errno == sio::ENXIO && matches!(op, Op::SeekData | Op::SeekHole) {
            write!(f, " (the offset is at or beyond the end of the file)")
        } else if errno == sio::EFBIG && op.is_write() {
            write!(
                f,
                " (beyond the process's RLIMIT_FSIZE or the file system's largest file)"
            )
        } else {
            Ok(())
        }
    }
}

impl std::error::Error for NoFsIoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Refused(e) => Some(e),
            _ => None,
        }
    }
}

impl From<NoFsIoError> for io::Error {
    /// A syscall failure becomes the plain OS error (`raw_os_error()` kept);
    /// anything else an error of the same kind carrying the `NoFsIoError`.
    fn from(e: NoFsIoError) -> io::Error {
        match e.cause {
            Cause::Os(errno) => io::Error::from_raw_os_error(errno),
            _ => io::Error::new(e.kind(), e),
        }
    }
}
