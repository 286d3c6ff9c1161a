//! [`NoFsFile`]: a file whose every I/O call runs in the I/O-flusher
//! (`GFP_NOIO`) context.
//!
//! The seed deadlock starts with the daemon's own `pwrite()` into its
//! backing file: the page cache it allocates may enter reclaim, and reclaim
//! may write back the file system stacked on the daemon's own device. Each
//! `*_nofs` method enters a [`NoFsScope`] around exactly its syscall(s), so
//! that allocation is made with `GFP_NOIO`, whatever the rest of the thread
//! does.

use crate::sys::{self, fileio as sio};
use crate::{Error, NoFsScope};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut};
use std::ops::{BitAnd, BitOr, BitOrAssign};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

// ---------------------------------------------------------------------------
// RwFlags
// ---------------------------------------------------------------------------

/// Per-call `RWF_*` flags of `preadv2(2)` / `pwritev2(2)`, typed.
///
/// Combine with `|`; every flag names the kernel that added it, and a flag
/// the running kernel rejects fails the call with an error naming the flag
/// and that version (see [`NoFsFile::preadv2_nofs`]).
///
/// No `RWF_NOFS` was ever merged: these flags change no allocation context;
/// [`NoFsFile`] gets that from its scope.
///
/// ```
/// use reclaim_scope::RwFlags;
///
/// let f = RwFlags::DSYNC | RwFlags::NOWAIT;
/// assert!(f.contains(RwFlags::DSYNC));
/// assert!(!f.contains(RwFlags::SYNC));
/// assert_eq!(f.bits(), 0x2 | 0x8);
/// assert_eq!(f.to_string(), "RWF_DSYNC|RWF_NOWAIT");
/// assert!(RwFlags::empty().is_empty());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[doc(alias = "rwf_t")]
pub struct RwFlags(u32);

/// `(bit, name, first Linux version)` of every flag known to this crate.
const RWF_TABLE: &[(u32, &str, &str)] = &[
    (0x01, "RWF_HIPRI", "4.6"),
    (0x02, "RWF_DSYNC", "4.7"),
    (0x04, "RWF_SYNC", "4.7"),
    (0x08, "RWF_NOWAIT", "4.14"),
    (0x10, "RWF_APPEND", "4.16"),
    (0x20, "RWF_NOAPPEND", "6.9"),
    (0x40, "RWF_ATOMIC", "6.11"),
    (0x80, "RWF_DONTCACHE", "6.14"),
];

impl RwFlags {
    /// `RWF_HIPRI` (Linux 4.6): poll for completion (only meaningful with
    /// `O_DIRECT` on a polled queue).
    pub const HIPRI: RwFlags = RwFlags(0x01);
    /// `RWF_DSYNC` (Linux 4.7): per-call `O_DSYNC`.
    pub const DSYNC: RwFlags = RwFlags(0x02);
    /// `RWF_SYNC` (Linux 4.7): per-call `O_SYNC`.
    pub const SYNC: RwFlags = RwFlags(0x04);
    /// `RWF_NOWAIT` (Linux 4.14): do not block; a buffered read that would
    /// wait for the disk fails with [`io::ErrorKind::WouldBlock`] (`EAGAIN`;
    /// recent kernels start readahead first, and serve holes).
    pub const NOWAIT: RwFlags = RwFlags(0x08);
    /// `RWF_APPEND` (Linux 4.16): per-call `O_APPEND` (the offset is
    /// ignored).
    pub const APPEND: RwFlags = RwFlags(0x10);
    /// `RWF_NOAPPEND` (Linux 6.9): ignore `O_APPEND` for this call.
    pub const NOAPPEND: RwFlags = RwFlags(0x20);
    /// `RWF_ATOMIC` (Linux 6.11): an untorn write; needs `O_DIRECT`, a file
    /// system and device with atomic-write support, and a power-of-two
    /// length aligned to its offset within the advertised unit (`statx`
    /// `STATX_WRITE_ATOMIC`).
    pub const ATOMIC: RwFlags = RwFlags(0x40);
    /// `RWF_DONTCACHE` (Linux 6.14): buffered I/O that drops its page cache
    /// once done (the pages are still allocated, with the scope's gfp).
    pub const DONTCACHE: RwFlags = RwFlags(0x80);

    const KNOWN: u32 = 0xff;

    /// No flag: `preadv2`/`pwritev2` behave like `preadv`/`pwritev`.
    ///
    /// ```
    /// assert_eq!(reclaim_scope::RwFlags::empty().bits(), 0);
    /// ```
    #[inline]
    pub const fn empty() -> RwFlags {
        RwFlags(0)
    }

    /// The raw `rwf_t` value.
    ///
    /// ```
    /// assert_eq!(reclaim_scope::RwFlags::NOWAIT.bits(), 0x8);
    /// ```
    #[inline]
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The flags of `bits`, or `None` if a bit is unknown to this crate.
    ///
    /// ```
    /// use reclaim_scope::RwFlags;
    /// assert_eq!(RwFlags::from_bits(0x6), Some(RwFlags::DSYNC | RwFlags::SYNC));
    /// assert_eq!(RwFlags::from_bits(0x100), None);
    /// ```
    #[inline]
    pub const fn from_bits(bits: u32) -> Option<RwFlags> {
        if bits & !Self::KNOWN == 0 {
            Some(RwFlags(bits))
        } else {
            None
        }
    }

    /// The flags of `bits`, keeping bits unknown to this crate (for flags of
    /// kernels newer than it; the kernel rejects what it does not know).
    ///
    /// ```
    /// let f = reclaim_scope::RwFlags::from_bits_retain(0x100);
    /// assert_eq!(f.bits(), 0x100);
    /// ```
    #[inline]
    pub const fn from_bits_retain(bits: u32) -> RwFlags {
        RwFlags(bits)
    }

    /// Whether every flag of `other` is set in `self`.
    ///
    /// ```
    /// use reclaim_scope::RwFlags;
    /// assert!((RwFlags::SYNC | RwFlags::HIPRI).contains(RwFlags::SYNC));
    /// ```
    #[inline]
    pub const fn contains(self, other: RwFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no flag is set.
    ///
    /// ```
    /// assert!(!reclaim_scope::RwFlags::SYNC.is_empty());
    /// ```
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Both sets of flags (the `const` form of `|`).
    ///
    /// ```
    /// use reclaim_scope::RwFlags;
    /// const F: RwFlags = RwFlags::DSYNC.union(RwFlags::HIPRI);
    /// assert_eq!(F, RwFlags::DSYNC | RwFlags::HIPRI);
    /// ```
    #[inline]
    pub const fn union(self, other: RwFlags) -> RwFlags {
        RwFlags(self.0 | other.0)
    }

    /// The first Linux version that accepts every flag of `self`, e.g.
    /// `"6.11"`; `None` if a bit is unknown to this crate.
    ///
    /// ```
    /// use reclaim_scope::RwFlags;
    /// assert_eq!((RwFlags::DSYNC | RwFlags::ATOMIC).min_kernel(), Some("6.11"));
    /// assert_eq!(RwFlags::empty().min_kernel(), Some("4.6"));
    /// ```
    pub fn min_kernel(self) -> Option<&'static str> {
        if self.0 & !Self::KNOWN != 0 {
            return None;
        }
        // The table is in version order.
        let newest = RWF_TABLE.iter().rev().find(|(b, _, _)| self.0 & b != 0);
        Some(newest.map_or("4.6", |(_, _, v)| v))
    }

    /// "RWF_DSYNC (Linux 4.7), RWF_ATOMIC (Linux 6.11)" for error messages.
    fn describe_with_versions(self) -> String {
        let mut parts: Vec<String> = RWF_TABLE
            .iter()
            .filter(|(b, _, _)| self.0 & b != 0)
            .map(|(_, n, v)| format!("{n} (Linux {v})"))
            .collect();
        let unknown = self.0 & !Self::KNOWN;
        if unknown != 0 {
            parts.push(format!("unknown bits {unknown:#x}"));
        }
        parts.join(", ")
    }
}

impl BitOr for RwFlags {
    type Output = RwFlags;
    #[inline]
    fn bitor(self, rhs: RwFlags) -> RwFlags {
        RwFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for RwFlags {
    #[inline]
    fn bitor_assign(&mut self, rhs: RwFlags) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for RwFlags {
    type Output = RwFlags;
    #[inline]
    fn bitand(self, rhs: RwFlags) -> RwFlags {
        RwFlags(self.0 & rhs.0)
    }
}

impl fmt::Display for RwFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0");
        }
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let r = if first { Ok(()) } else { f.write_str("|") };
            first = false;
            r
        };
        for (b, n, _) in RWF_TABLE {
            if self.0 & b != 0 {
                sep(f)?;
                f.write_str(n)?;
            }
        }
        let unknown = self.0 & !Self::KNOWN;
        if unknown != 0 {
            sep(f)?;
            write!(f, "{unknown:#x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RwFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RwFlags({self})")
    }
}

// ---------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------

/// What a [`NoFsFile`] call does when the I/O-flusher context cannot be
/// entered (no `CAP_SYS_RESOURCE`, kernel < 5.6, not Linux).
///
/// The process default is [`BestEffort`](NoFsPolicy::BestEffort): the I/O a
/// daemon was asked to do must still be served, the degradation is reported
/// once per process and stays queryable with
/// [`degradation`](crate::degradation). Daemons that refuse to run
/// unprotected choose [`Strict`](NoFsPolicy::Strict) — per file with
/// [`NoFsFile::with_policy`], or for the process with
/// [`NoFsFile::set_default_policy`] — or, better, check once at start-up with
/// [`IoFlusher::try_enter`](crate::IoFlusher::try_enter).
///
/// ```
/// use reclaim_scope::{NoFsFile, NoFsPolicy};
///
/// let file = NoFsFile::new(tempfile()?).with_policy(NoFsPolicy::Strict);
/// match file.pwrite_nofs(b"block", 0) {
///     Ok(n) => assert_eq!(n, 5),
///     // Not written: the thread could not be made an I/O flusher.
///     Err(e) => assert!(e.to_string().contains("not attempted")),
/// }
/// # fn tempfile() -> std::io::Result<std::fs::File> {
/// #     let p = std::env::temp_dir().join(format!("rs-doc-policy-{}", std::process::id()));
/// #     let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&p)?;
/// #     std::fs::remove_file(&p)?;
/// #     Ok(f)
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum NoFsPolicy {
    /// Do the I/O anyway, unprotected; the first refusal is reported once
    /// per process (like [`NoFsScope::enter`]).
    #[default]
    BestEffort,
    /// Fail the call without doing any I/O (like [`NoFsScope::try_enter`]):
    /// the error has kind `PermissionDenied` or `Unsupported` and names the
    /// fix.
    Strict,
}

/// The process default, as `NoFsPolicy as u8`.
static DEFAULT_POLICY: AtomicU8 = AtomicU8::new(0);

const POLICY_UNSET: u8 = u8::MAX;

fn policy_to_u8(p: NoFsPolicy) -> u8 {
    match p {
        NoFsPolicy::BestEffort => 0,
        NoFsPolicy::Strict => 1,
    }
}

fn policy_from_u8(v: u8) -> NoFsPolicy {
    if v == 1 {
        NoFsPolicy::Strict
    } else {
        NoFsPolicy::BestEffort
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a [`NoFsFile`] call failed, with where and how far it got.
///
/// Every error a `NoFsFile` method returns is an [`io::Error`] that carries
/// one of these (get it with [`NoFsIoError::of`]); its message names the
/// syscall, the offset and length, the `RWF_*` flags and — for
/// [`write_all_at_nofs`](NoFsFile::write_all_at_nofs) and
/// [`read_exact_at_nofs`](NoFsFile::read_exact_at_nofs) — how many bytes
/// were transferred before the failure.
///
/// ```
/// use reclaim_scope::{NoFsFile, NoFsIoError};
///
/// let file = NoFsFile::new(std::fs::File::open("/dev/null")?); // read-only
/// let err = file.write_all_at_nofs(b"data", 0).unwrap_err();
/// let detail = NoFsIoError::of(&err).expect("NoFsFile errors carry a NoFsIoError");
/// assert_eq!(detail.bytes_done(), 0);
/// assert_eq!(detail.raw_os_error(), Some(libc::EBADF));
/// assert!(err.to_string().contains("not open for writing"));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct NoFsIoError {
    op: &'static str,
    offset: u64,
    len: u64,
    done: u64,
    flags: RwFlags,
    cause: Cause,
}

#[derive(Debug)]
enum Cause {
    /// The syscall answered this errno.
    Os(i32),
    /// The file ended before the buffer was full.
    Eof,
    /// A write syscall wrote nothing.
    WriteZero,
    /// Rejected before any syscall.
    Invalid(&'static str),
    /// A strict scope could not be entered; no I/O was attempted.
    Refused(Error),
}

impl NoFsIoError {
    /// The detail of an error returned by a [`NoFsFile`] method.
    ///
    /// ```
    /// # use reclaim_scope::NoFsIoError;
    /// let other = std::io::Error::other("not from NoFsFile");
    /// assert!(NoFsIoError::of(&other).is_none());
    /// ```
    pub fn of(err: &io::Error) -> Option<&NoFsIoError> {
        err.get_ref()?.downcast_ref()
    }

    /// The syscall, e.g. `"pwrite64"` or
    /// `"fallocate(FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE)"`.
    ///
    /// ```
    /// # use reclaim_scope::{NoFsFile, NoFsIoError};
    /// # let file = NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let err = file.pwrite_nofs(b"x", 0).unwrap_err();
    /// assert_eq!(NoFsIoError::of(&err).unwrap().operation(), "pwrite64");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn operation(&self) -> &'static str {
        self.op
    }

    /// The file offset the call was asked to start at (for `ftruncate`,
    /// the new length; 0 for the sync calls).
    ///
    /// ```
    /// # use reclaim_scope::{NoFsFile, NoFsIoError};
    /// # let file = NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let err = file.pwrite_nofs(b"x", 512).unwrap_err();
    /// assert_eq!(NoFsIoError::of(&err).unwrap().offset(), 512);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The length the call was asked for.
    ///
    /// ```
    /// # use reclaim_scope::{NoFsFile, NoFsIoError};
    /// # let file = NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let err = file.pwrite_nofs(b"xyz", 0).unwrap_err();
    /// assert_eq!(NoFsIoError::of(&err).unwrap().len(), 3);
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
    /// ```
    /// # use reclaim_scope::{NoFsFile, NoFsIoError};
    /// # let file = NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let mut buf = [0u8; 8];
    /// let err = file.read_exact_at_nofs(&mut buf, 0).unwrap_err(); // /dev/null is empty
    /// assert_eq!(NoFsIoError::of(&err).unwrap().bytes_done(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bytes_done(&self) -> u64 {
        self.done
    }

    /// The `RWF_*` flags of the call (empty for the non-vectored calls).
    ///
    /// ```
    /// # use reclaim_scope::{NoFsFile, NoFsIoError, RwFlags};
    /// # let file = NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let err = file
    ///     .pwritev2_nofs(&[std::io::IoSlice::new(b"x")], 0, RwFlags::DSYNC)
    ///     .unwrap_err();
    /// assert_eq!(NoFsIoError::of(&err).unwrap().flags(), RwFlags::DSYNC);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn flags(&self) -> RwFlags {
        self.flags
    }

    /// The `errno` the kernel answered with, if the failure came from a
    /// syscall.
    ///
    /// ```
    /// # use reclaim_scope::{NoFsFile, NoFsIoError};
    /// # let file = NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let err = file.pwrite_nofs(b"x", u64::MAX).unwrap_err(); // rejected before the syscall
    /// assert_eq!(NoFsIoError::of(&err).unwrap().raw_os_error(), None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn raw_os_error(&self) -> Option<i32> {
        match &self.cause {
            Cause::Os(e) => Some(*e),
            Cause::Refused(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// The [`io::ErrorKind`] of the failure.
    ///
    /// ```
    /// # use reclaim_scope::{NoFsFile, NoFsIoError};
    /// # let file = NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// let err = file.pwrite_nofs(b"x", u64::MAX).unwrap_err();
    /// assert_eq!(NoFsIoError::of(&err).unwrap().kind(), std::io::ErrorKind::InvalidInput);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn kind(&self) -> io::ErrorKind {
        match &self.cause {
            Cause::Os(e) if *e == sio::ENOSYS || *e == sio::EOPNOTSUPP => {
                io::ErrorKind::Unsupported
            }
            Cause::Os(e) => io::Error::from_raw_os_error(*e).kind(),
            Cause::Eof => io::ErrorKind::UnexpectedEof,
            Cause::WriteZero => io::ErrorKind::WriteZero,
            Cause::Invalid(_) => io::ErrorKind::InvalidInput,
            Cause::Refused(e) => io::Error::from(e.clone()).kind(),
        }
    }

    fn new(op: &'static str, offset: u64, len: u64, cause: Cause) -> Self {
        NoFsIoError {
            op,
            offset,
            len,
            done: 0,
            flags: RwFlags::empty(),
            cause,
        }
    }

    fn done(mut self, done: u64) -> Self {
        self.done = done;
        self
    }

    fn flags_(mut self, flags: RwFlags) -> Self {
        self.flags = flags;
        self
    }

    fn is_write(&self) -> bool {
        self.op.starts_with("pwrite")
    }

    fn is_read(&self) -> bool {
        self.op.starts_with("pread")
    }

    /// Whether the call was one of the loops that transfer a whole buffer.
    fn whole_buffer(&self) -> bool {
        self.op.ends_with("(all)")
    }
}

impl fmt::Display for NoFsIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = self.op.trim_end_matches(" (all)");
        write!(f, "{op}")?;
        if self.is_read() || self.is_write() || op.starts_with("fallocate") {
            write!(f, " of {} bytes at offset {}", self.len, self.offset)?;
        } else if op == "ftruncate" {
            write!(f, " to length {}", self.offset)?;
        }
        if !self.flags.is_empty() {
            write!(f, " with {}", self.flags)?;
        }
        match &self.cause {
            Cause::Invalid(why) => write!(f, " rejected before any syscall: {why}")?,
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
        if self.whole_buffer() && !matches!(self.cause, Cause::Eof) {
            let verb = if self.is_write() { "written" } else { "read" };
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
        let vectored = self.op.starts_with("preadv2") || self.op.starts_with("pwritev2");
        if errno == sio::EBADF {
            let mode = if self.is_write() || self.op.starts_with("fallocate") {
                "not open for writing"
            } else if self.is_read() {
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
        } else if errno == sio::ENOSYS && cfg!(target_os = "linux") && vectored {
            write!(f, " ({} needs Linux 4.6 or newer)", self.op)
        } else if errno == sio::ENOSYS && vectored {
            write!(f, " ({} exists only on Linux)", self.op)
        } else if errno == sio::ENOSYS && self.op.starts_with("fallocate") {
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
        } else if errno == sio::EOPNOTSUPP && self.op.starts_with("fallocate") {
            write!(f, " (the file system does not support this fallocate mode)")
        } else if errno == sys::EINVAL
            && self.flags.is_empty()
            && (self.is_read() || self.is_write())
        {
            write!(
                f,
                " (with O_DIRECT, the buffer address, offset and length must be aligned to \
                 the logical block size)"
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
    fn from(e: NoFsIoError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

// ---------------------------------------------------------------------------
// NoFsFile
// ---------------------------------------------------------------------------

const OP_PREAD: &str = "pread64";
const OP_PWRITE: &str = "pwrite64";
const OP_READ_EXACT: &str = "pread64 (all)";
const OP_WRITE_ALL: &str = "pwrite64 (all)";
const OP_PREADV2: &str = "preadv2";
const OP_PWRITEV2: &str = "pwritev2";
const OP_FDATASYNC: &str = "fdatasync";
const OP_FSYNC: &str = "fsync";
const OP_FTRUNCATE: &str = "ftruncate";
const OP_ALLOCATE: &str = "fallocate(0)";
const OP_PUNCH: &str = "fallocate(FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE)";
const OP_ZERO: &str = "fallocate(FALLOC_FL_ZERO_RANGE)";

const OFF_MAX: u64 = i64::MAX as u64;

/// Checks that `offset..offset + len` is a valid file range (`loff_t`):
/// `offset + len <= i64::MAX` (which implies `offset <= i64::MAX`).
#[inline]
fn check_range(op: &'static str, offset: u64, len: u64, flags: RwFlags) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= OFF_MAX => Ok(()),
        _ => Err(bad_range(op, offset, len, flags)),
    }
}

#[cold]
#[inline(never)]
fn bad_range(op: &'static str, offset: u64, len: u64, flags: RwFlags) -> io::Error {
    let why = if offset > OFF_MAX {
        "the offset is beyond i64::MAX, the largest file offset"
    } else {
        "offset + length is beyond i64::MAX, the largest file offset"
    };
    NoFsIoError::new(op, offset, len, Cause::Invalid(why))
        .flags_(flags)
        .into()
}

/// The error of a failed syscall (kept out of line: the fast path only
/// moves an errno).
#[cold]
#[inline(never)]
fn os_error(op: &'static str, offset: u64, len: u64, flags: RwFlags, errno: i32) -> io::Error {
    NoFsIoError::new(op, offset, len, Cause::Os(errno))
        .flags_(flags)
        .into()
}

#[cold]
#[inline(never)]
fn refused(op: &'static str, offset: u64, len: u64, flags: RwFlags, e: Error) -> io::Error {
    NoFsIoError::new(op, offset, len, Cause::Refused(e))
        .flags_(flags)
        .into()
}

#[cold]
#[inline(never)]
fn loop_error(op: &'static str, offset: u64, len: u64, done: usize, cause: Cause) -> io::Error {
    NoFsIoError::new(op, offset, len, cause)
        .done(done as u64)
        .into()
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
/// Every error carries a [`NoFsIoError`] naming the syscall, offset, length,
/// flags and bytes transferred. Offsets beyond `i64::MAX` (or an
/// `offset + len` beyond it) fail with `InvalidInput` before any syscall.
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
    /// `FALLOC_FL_ZERO_RANGE` answered `EOPNOTSUPP` on this file.
    no_zero_range: AtomicBool,
}

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
            no_zero_range: AtomicBool::new(false),
        }
    }

    /// Opens `path` with `opts` (passed through unchanged). The error names
    /// the path.
    ///
    /// ```
    /// use reclaim_scope::NoFsFile;
    /// use std::fs::OpenOptions;
    ///
    /// let file = NoFsFile::open("/dev/null", OpenOptions::new().write(true))?;
    /// assert_eq!(file.pwrite_nofs(b"discarded", 0)?, 9);
    /// let err = NoFsFile::open("/nonexistent/x", OpenOptions::new().read(true)).unwrap_err();
    /// assert!(err.to_string().contains("/nonexistent/x"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> io::Result<NoFsFile> {
        let path = path.as_ref();
        opts.open(path)
            .map(NoFsFile::new)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))
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
    /// `custom_flags(libc::O_DIRECT | other)` to [`open`](Self::open). Not on
    /// Linux: fails with `Unsupported`. A file system without direct I/O
    /// fails with `InvalidInput` (`EINVAL`).
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
    pub fn open_direct(path: impl AsRef<Path>, opts: &OpenOptions) -> io::Result<NoFsFile> {
        let path = path.as_ref();
        cfg_if::cfg_if! {
            if #[cfg(target_os = "linux")] {
                use std::os::unix::fs::OpenOptionsExt;
                let mut opts = opts.clone();
                opts.custom_flags(libc::O_DIRECT);
                opts.open(path).map(NoFsFile::new).map_err(|e| {
                    let hint = if e.raw_os_error() == Some(sys::EINVAL) {
                        " (this file system does not support O_DIRECT)"
                    } else {
                        ""
                    };
                    io::Error::new(
                        e.kind(),
                        format!("open {} with O_DIRECT: {e}{hint}", path.display()),
                    )
                })
            } else {
                let _ = opts;
                Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("open {} with O_DIRECT: O_DIRECT is Linux-only here", path.display()),
                ))
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
        op: &'static str,
        offset: u64,
        len: u64,
        flags: RwFlags,
    ) -> io::Result<NoFsScope> {
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
    pub fn pread_nofs(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let len = buf.len() as u64;
        check_range(OP_PREAD, offset, len, RwFlags::empty())?;
        let chunk = buf.len().min(sio::MAX_RW_COUNT);
        let r = {
            let _scope = self.enter(OP_PREAD, offset, len, RwFlags::empty())?;
            sio::pread(&self.file, &mut buf[..chunk], offset)
        };
        r.map_err(|e| os_error(OP_PREAD, offset, len, RwFlags::empty(), e))
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
    pub fn pwrite_nofs(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let len = buf.len() as u64;
        check_range(OP_PWRITE, offset, len, RwFlags::empty())?;
        let chunk = buf.len().min(sio::MAX_RW_COUNT);
        let r = {
            let _scope = self.enter(OP_PWRITE, offset, len, RwFlags::empty())?;
            sio::pwrite(&self.file, &buf[..chunk], offset)
        };
        r.map_err(|e| os_error(OP_PWRITE, offset, len, RwFlags::empty(), e))
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
    pub fn read_exact_at_nofs(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        check_range(OP_READ_EXACT, offset, len, RwFlags::empty())?;
        if buf.is_empty() {
            return Ok(());
        }
        let mut done = 0usize;
        let fail = {
            let _scope = self.enter(OP_READ_EXACT, offset, len, RwFlags::empty())?;
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
            Some(cause) => Err(loop_error(OP_READ_EXACT, offset, len, done, cause)),
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
    pub fn write_all_at_nofs(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        check_range(OP_WRITE_ALL, offset, len, RwFlags::empty())?;
        if buf.is_empty() {
            return Ok(());
        }
        let mut done = 0usize;
        let fail = {
            let _scope = self.enter(OP_WRITE_ALL, offset, len, RwFlags::empty())?;
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
            Some(cause) => Err(loop_error(OP_WRITE_ALL, offset, len, done, cause)),
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
    ) -> io::Result<usize> {
        let len = sio::total_len(bufs.iter().map(|b| &**b));
        check_range(OP_PREADV2, offset, len, flags)?;
        let r = {
            let _scope = self.enter(OP_PREADV2, offset, len, flags)?;
            sio::preadv2(&self.file, bufs, offset, flags.bits())
        };
        r.map_err(|e| os_error(OP_PREADV2, offset, len, flags, e))
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
    ) -> io::Result<usize> {
        let len = sio::total_len(bufs.iter().map(|b| &**b));
        check_range(OP_PWRITEV2, offset, len, flags)?;
        let r = {
            let _scope = self.enter(OP_PWRITEV2, offset, len, flags)?;
            sio::pwritev2(&self.file, bufs, offset, flags.bits())
        };
        r.map_err(|e| os_error(OP_PWRITEV2, offset, len, flags, e))
    }

    /// Runs a non-transfer syscall inside the scope, retrying `EINTR`.
    #[inline]
    fn plain(
        &self,
        op: &'static str,
        offset: u64,
        len: u64,
        mut call: impl FnMut() -> Result<(), i32>,
    ) -> io::Result<()> {
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
    pub fn sync_data_nofs(&self) -> io::Result<()> {
        self.plain(OP_FDATASYNC, 0, 0, || sio::fdatasync(&self.file))
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
    pub fn sync_all_nofs(&self) -> io::Result<()> {
        self.plain(OP_FSYNC, 0, 0, || sio::fsync(&self.file))
    }

    /// `ftruncate(2)` inside the scope (`EINTR` retried). `len` beyond
    /// `i64::MAX` fails with `InvalidInput` before any syscall.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-setlen-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.set_len_nofs(4 << 30)?; // a sparse 4 GiB backing file
    /// assert_eq!(file.get_ref().metadata()?.len(), 4 << 30);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "ftruncate")]
    #[doc(alias = "set_len")]
    pub fn set_len_nofs(&self, len: u64) -> io::Result<()> {
        check_range(OP_FTRUNCATE, len, 0, RwFlags::empty())?;
        self.plain(OP_FTRUNCATE, len, 0, || sio::ftruncate(&self.file, len))
    }

    /// `fallocate(2)` with `mode` over a checked range; `len == 0` is a
    /// no-op without syscall (the kernel would answer `EINVAL`).
    fn falloc(&self, op: &'static str, mode: i32, offset: u64, len: u64) -> io::Result<()> {
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
    /// `Unsupported`); `len == 0` does nothing.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-alloc-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// match file.allocate_nofs(0, 1 << 20) {
    ///     Ok(()) => assert_eq!(file.get_ref().metadata()?.len(), 1 << 20),
    ///     Err(e) => println!("no fallocate here: {e}"),
    /// }
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "fallocate")]
    pub fn allocate_nofs(&self, offset: u64, len: u64) -> io::Result<()> {
        self.falloc(OP_ALLOCATE, 0, offset, len)
    }

    /// `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)` inside the
    /// scope: deallocates `offset..offset + len`, which then reads as zeros;
    /// the file size is unchanged. This is NBD `TRIM`. A file system
    /// without hole punching fails with `Unsupported` (a TRIM may be
    /// ignored); `len == 0` does nothing.
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
    ///     assert_eq!(file.get_ref().metadata()?.len(), 8192);
    /// }
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "FALLOC_FL_PUNCH_HOLE")]
    #[doc(alias = "trim")]
    pub fn punch_hole_nofs(&self, offset: u64, len: u64) -> io::Result<()> {
        self.falloc(
            OP_PUNCH,
            sio::FALLOC_FL_PUNCH_HOLE | sio::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Makes `offset..offset + len` read as zeros **and stay allocated**,
    /// extending the file if the range ends beyond it. This is NBD
    /// `WRITE_ZEROES` (honouring `NBD_CMD_FLAG_NO_HOLE`: the range is never
    /// left as a hole).
    ///
    /// It uses `fallocate(FALLOC_FL_ZERO_RANGE)`. Where the file system
    /// lacks it (`EOPNOTSUPP`: e.g. tmpfs, NFS), it falls back — as QEMU's
    /// file driver does — to punching a hole and then allocating the range
    /// (`fallocate` mode 0), which ends in the same state but is not
    /// atomic: if the second step fails (`ENOSPC`), the range reads as zeros
    /// but is a hole, and the error says so. The fallback is remembered per
    /// file. If neither works the error is `Unsupported`; write zeros with
    /// [`write_all_at_nofs`](Self::write_all_at_nofs) then. `len == 0` does
    /// nothing.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-zero-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.write_all_at_nofs(&[9u8; 8192], 0)?;
    /// if file.zero_range_nofs(4096, 8192).is_ok() {
    ///     let mut b = [1u8; 8192];
    ///     file.read_exact_at_nofs(&mut b, 4096)?;
    ///     assert_eq!(b, [0u8; 8192]);
    ///     assert_eq!(file.get_ref().metadata()?.len(), 12288); // extended
    /// }
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "FALLOC_FL_ZERO_RANGE")]
    #[doc(alias = "write_zeroes")]
    pub fn zero_range_nofs(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.no_zero_range.load(Ordering::Relaxed) {
            match self.falloc(OP_ZERO, sio::FALLOC_FL_ZERO_RANGE, offset, len) {
                Err(e)
                    if NoFsIoError::of(&e).and_then(NoFsIoError::raw_os_error)
                        == Some(sio::EOPNOTSUPP) =>
                {
                    self.no_zero_range.store(true, Ordering::Relaxed);
                }
                r => return r,
            }
        }
        self.punch_hole_nofs(offset, len)?;
        self.allocate_nofs(offset, len).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "zeroing {len} bytes at offset {offset} without FALLOC_FL_ZERO_RANGE: \
                     the hole was punched (the range reads as zeros) but allocating it \
                     failed: {e}"
                ),
            )
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::tests::on_fake;
    use crate::sys::fake::{self, FakeThread, IoScript, Mode};
    use crate::IoFlusher;
    use std::path::PathBuf;

    /// A file in the temporary directory, removed on drop.
    pub(crate) struct Temp {
        pub path: PathBuf,
        pub file: NoFsFile,
    }

    impl Temp {
        pub(crate) fn new(tag: &str) -> Temp {
            use std::sync::atomic::AtomicU32;
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "reclaim-scope-fs-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let file = NoFsFile::open(
                &path,
                OpenOptions::new().read(true).write(true).create_new(true),
            )
            .unwrap();
            Temp { path, file }
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn detail(e: &io::Error) -> &NoFsIoError {
        NoFsIoError::of(e).unwrap_or_else(|| panic!("no NoFsIoError in {e:?}"))
    }

    fn sets() -> u32 {
        fake::state().unwrap().set_calls
    }
    fn gets() -> u32 {
        fake::state().unwrap().get_calls
    }
    fn flagged_now() -> bool {
        fake::state().unwrap().flags & sys::PF_MEMALLOC_NOIO != 0
    }

    /// Every kind of call once, on `t`.
    fn every_call(t: &Temp) {
        let f = &t.file;
        f.pwrite_nofs(b"abcd", 0).unwrap();
        f.write_all_at_nofs(b"efgh", 4).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(f.pread_nofs(&mut b, 0).unwrap(), 8);
        f.read_exact_at_nofs(&mut b, 0).unwrap();
        assert_eq!(&b, b"abcdefgh");
        f.pwritev2_nofs(&[IoSlice::new(b"ij")], 8, RwFlags::empty())
            .unwrap();
        f.preadv2_nofs(&mut [IoSliceMut::new(&mut b)], 2, RwFlags::empty())
            .unwrap();
        assert_eq!(&b, b"cdefghij");
        f.sync_data_nofs().unwrap();
        f.sync_all_nofs().unwrap();
        f.allocate_nofs(0, 4096).unwrap();
        f.punch_hole_nofs(0, 4096).unwrap();
        f.zero_range_nofs(0, 4096).unwrap();
        f.set_len_nofs(10).unwrap();
    }

    const CALLS: usize = 12;

    #[test]
    fn flagged_thread_makes_no_syscall_beyond_the_io() {
        for mode in [Mode::Permitted, Mode::NotPermitted] {
            on_fake(FakeThread::flagged(mode), || {
                let t = Temp::new("flagged");
                fake::script_io([]);
                for policy in [NoFsPolicy::BestEffort, NoFsPolicy::Strict] {
                    let mut t2 = Temp::new("flagged");
                    t2.file.set_policy(policy);
                    every_call(&t2);
                }
                every_call(&t);
                assert_eq!((sets(), gets()), (0, 0), "a flagged thread made a prctl");
                let log = fake::io_log();
                assert_eq!(log.len(), 3 * CALLS, "{log:#?}");
                assert!(log.iter().all(|c| c.flagged), "{log:#?}");
                assert!(flagged_now(), "a NoFsFile call cleared an inherited flag");
            });
        }
    }

    #[test]
    fn unflagged_thread_pays_two_prctls_per_call_and_is_clear_after() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let t = Temp::new("unflagged");
            fake::script_io([]);
            every_call(&t);
            assert_eq!(sets() as usize, 2 * CALLS);
            assert!(!flagged_now());
            let log = fake::io_log();
            assert_eq!(log.len(), CALLS);
            assert!(
                log.iter().all(|c| c.flagged),
                "I/O outside the scope: {log:#?}"
            );
        });
    }

    #[test]
    fn inside_an_io_flusher_calls_are_free() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let t = Temp::new("flusher");
            let flusher = IoFlusher::try_enter().unwrap();
            assert_eq!(sets(), 1);
            for i in 0..100u64 {
                t.file.pwrite_nofs(&i.to_le_bytes(), i * 8).unwrap();
            }
            every_call(&t);
            assert_eq!(sets(), 1, "calls inside an IoFlusher made a prctl");
            drop(flusher);
            assert_eq!(sets(), 2);
            assert!(!flagged_now());
        });
    }

    #[test]
    fn strict_refusal_does_no_io_and_names_the_fix() {
        on_fake(FakeThread::new(Mode::NotPermitted), || {
            let mut t = Temp::new("strict");
            t.file.set_policy(NoFsPolicy::BestEffort);
            let f = &t.file;
            fake::script_io([]);
            let strict =
                NoFsFile::new(f.get_ref().try_clone().unwrap()).with_policy(NoFsPolicy::Strict);
            let e = strict.pwrite_nofs(b"must not land", 0).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            let msg = e.to_string();
            assert!(msg.contains("not attempted"), "{msg}");
            assert!(msg.contains("CAP_SYS_RESOURCE"), "{msg}");
            assert!(msg.contains("offset 0"), "{msg}");
            assert!(std::error::Error::source(detail(&e)).is_some());
            let e = strict
                .pwritev2_nofs(&[IoSlice::new(b"x")], 0, RwFlags::DSYNC)
                .unwrap_err();
            assert_eq!(detail(&e).flags(), RwFlags::DSYNC);
            assert!(strict.sync_data_nofs().is_err());
            assert!(strict.set_len_nofs(100).is_err());
            assert!(fake::io_log().is_empty(), "strict refusal did I/O");
            assert_eq!(f.get_ref().metadata().unwrap().len(), 0);
            // Best effort on the same thread: the I/O is served unprotected.
            assert_eq!(f.pwrite_nofs(b"served", 0).unwrap(), 6);
            let log = fake::io_log();
            assert_eq!(log.len(), 1);
            assert!(!log[0].flagged);
            assert!(crate::degradation().is_some());
        });
    }

    #[test]
    fn eintr_and_short_io_are_continued() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let t = Temp::new("short");
            let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
            fake::script_io([
                IoScript::Err(sio::EINTR),
                IoScript::Short(1000),
                IoScript::Err(sio::EINTR),
                IoScript::Err(sio::EINTR),
                IoScript::Short(1),
                IoScript::Short(4095),
            ]);
            t.file.write_all_at_nofs(&data, 100).unwrap();
            assert_eq!(fake::io_script_left(), 0);
            let offs: Vec<(u64, u64)> = fake::io_log().iter().map(|c| (c.offset, c.len)).collect();
            assert_eq!(
                offs,
                [
                    (100, 10_000),
                    (100, 10_000),
                    (1100, 9000),
                    (1100, 9000),
                    (1100, 9000),
                    (1101, 8999),
                    (5196, 4904),
                ]
            );
            // One scope around the whole loop: 2 prctls, not 2 per syscall.
            assert_eq!(sets(), 2);
            fake::script_io([
                IoScript::Short(3),
                IoScript::Err(sio::EINTR),
                IoScript::Short(0x1000),
                IoScript::Short(1),
            ]);
            let mut back = vec![0u8; 10_000];
            t.file.read_exact_at_nofs(&mut back, 100).unwrap();
            assert_eq!(back, data);
            assert_eq!(fake::io_script_left(), 0);
            // The single-call forms do not retry: like std's read_at.
            fake::script_io([IoScript::Err(sio::EINTR)]);
            let e = t.file.pread_nofs(&mut back, 0).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        });
    }

    #[test]
    fn write_all_error_says_how_much_was_written() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let t = Temp::new("partial");
            fake::script_io([IoScript::Short(100), IoScript::Err(libc::ENOSPC)]);
            let e = t.file.write_all_at_nofs(&[1u8; 300], 4096).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::StorageFull);
            let d = detail(&e);
            assert_eq!((d.offset(), d.len(), d.bytes_done()), (4096, 300, 100));
            assert_eq!(d.raw_os_error(), Some(libc::ENOSPC));
            let msg = e.to_string();
            assert!(msg.contains("100 of 300 bytes were written"), "{msg}");
            assert!(msg.contains("offset 4096"), "{msg}");
            // What it claims is what the file holds.
            assert_eq!(t.file.get_ref().metadata().unwrap().len(), 4196);

            fake::script_io([IoScript::Short(7), IoScript::Pretend(0)]);
            let e = t.file.write_all_at_nofs(&[1u8; 30], 0).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WriteZero);
            assert_eq!(detail(&e).bytes_done(), 7);
            assert!(e.to_string().contains("7 of 30 bytes were written"), "{e}");
        });
    }

    #[test]
    fn eof_names_offset_length_and_end() {
        let t = Temp::new("eof");
        t.file.write_all_at_nofs(&[5u8; 10], 0).unwrap();
        let mut buf = [0u8; 20];
        let e = t.file.read_exact_at_nofs(&mut buf, 5).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let d = detail(&e);
        assert_eq!((d.offset(), d.len(), d.bytes_done()), (5, 20, 5));
        let msg = e.to_string();
        for needle in ["20 bytes", "offset 5", "after 5 bytes", "ends at offset 10"] {
            assert!(msg.contains(needle), "{needle:?} missing from {msg:?}");
        }
        assert_eq!(buf[..5], [5u8; 5]);
        // An empty read at any valid offset is fine and makes no syscall.
        t.file.read_exact_at_nofs(&mut [], 1 << 40).unwrap();
    }

    #[test]
    fn huge_lengths_are_clamped_per_syscall() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let t = Temp::new("huge");
            let len = sio::MAX_RW_COUNT + 4096 + 1;
            // calloc'ed and never touched: the fake pretends to transfer.
            let mut big = vec![0u8; len];
            fake::script_io([
                IoScript::Pretend(usize::MAX),
                IoScript::Pretend(usize::MAX),
                IoScript::Pretend(usize::MAX),
                IoScript::Pretend(usize::MAX),
                IoScript::Pretend(usize::MAX),
            ]);
            assert_eq!(t.file.pwrite_nofs(&big, 0).unwrap(), sio::MAX_RW_COUNT);
            t.file.write_all_at_nofs(&big, 1).unwrap();
            t.file.read_exact_at_nofs(&mut big, 2).unwrap();
            let calls: Vec<(&str, u64, u64)> = fake::io_log()
                .iter()
                .map(|c| (c.op, c.offset, c.len))
                .collect();
            let m = sio::MAX_RW_COUNT as u64;
            assert_eq!(
                calls,
                [
                    ("pwrite64", 0, m),
                    ("pwrite64", 1, m),
                    ("pwrite64", 1 + m, 4097),
                    ("pread64", 2, m),
                    ("pread64", 2 + m, 4097),
                ]
            );
        });
    }

    #[test]
    fn bad_offsets_fail_before_any_syscall() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let t = Temp::new("badoff");
            let f = &t.file;
            fake::script_io([]);
            let max = i64::MAX as u64;
            let mut b = [0u8; 16];
            let errs = [
                f.pread_nofs(&mut b, max + 1).unwrap_err(),
                f.pwrite_nofs(&b, u64::MAX).unwrap_err(),
                f.pwrite_nofs(&b, max - 15 + 1).unwrap_err(),
                f.read_exact_at_nofs(&mut b, max).unwrap_err(),
                f.write_all_at_nofs(&b, max - 8).unwrap_err(),
                f.preadv2_nofs(&mut [IoSliceMut::new(&mut b)], max, RwFlags::empty())
                    .unwrap_err(),
                f.pwritev2_nofs(&[IoSlice::new(&b)], max, RwFlags::DSYNC)
                    .unwrap_err(),
                f.allocate_nofs(max, 1).unwrap_err(),
                f.punch_hole_nofs(1, max).unwrap_err(),
                f.zero_range_nofs(u64::MAX, u64::MAX).unwrap_err(),
                f.set_len_nofs(max + 1).unwrap_err(),
            ];
            for e in &errs {
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
                assert!(e.to_string().contains("i64::MAX"), "{e}");
                assert!(e.to_string().contains("before any syscall"), "{e}");
            }
            assert!(errs[6].to_string().contains("RWF_DSYNC"), "{}", errs[6]);
            assert!(fake::io_log().is_empty(), "{:?}", fake::io_log());
            assert_eq!(sets(), 0, "entered a scope for a rejected call");
            // The largest valid end is accepted (and reaches the kernel).
            assert_eq!(f.pread_nofs(&mut b, max - 16).unwrap(), 0);
            assert_eq!(fake::io_log().len(), 1);
        });
    }

    #[test]
    fn ebadf_says_which_direction() {
        let t = Temp::new("ebadf");
        let ro = NoFsFile::open(&t.path, OpenOptions::new().read(true)).unwrap();
        let e = ro.pwrite_nofs(b"x", 0).unwrap_err();
        assert_eq!(detail(&e).raw_os_error(), Some(libc::EBADF));
        assert!(e.to_string().contains("not open for writing"), "{e}");
        let e = ro.write_all_at_nofs(b"xyz", 0).unwrap_err();
        assert!(e.to_string().contains("0 of 3 bytes were written"), "{e}");
        assert!(ro
            .allocate_nofs(0, 10)
            .unwrap_err()
            .to_string()
            .contains("not open for writing"));
        let wo = NoFsFile::open(&t.path, OpenOptions::new().write(true)).unwrap();
        let e = wo.pread_nofs(&mut [0u8; 4], 0).unwrap_err();
        assert!(e.to_string().contains("not open for reading"), "{e}");
        // A descriptor closed behind the file's back (scripted: safe code
        // cannot close an owned fd).
        on_fake(FakeThread::new(Mode::Permitted), || {
            let t = Temp::new("closed");
            fake::script_io([IoScript::Err(sio::EBADF)]);
            let e = t.file.sync_all_nofs().unwrap_err();
            assert!(e.to_string().starts_with("fsync failed"), "{e}");
            assert!(e.to_string().contains("closed"), "{e}");
        });
    }

    #[test]
    fn zero_range_falls_back_to_punch_and_allocate() {
        on_fake(FakeThread::new(Mode::Permitted), || {
            let t = Temp::new("zero");
            t.file.write_all_at_nofs(&[0xaa; 16384], 0).unwrap();
            fake::script_io([IoScript::Err(sio::EOPNOTSUPP)]);
            t.file.zero_range_nofs(4096, 8192).unwrap();
            t.file.zero_range_nofs(16384, 4096).unwrap(); // extends
            let ops: Vec<&str> = fake::io_log().iter().map(|c| c.op).collect();
            assert_eq!(
                ops,
                [
                    "fallocate(ZERO_RANGE)",
                    "fallocate(PUNCH_HOLE)",
                    "fallocate(0)",
                    // remembered: no second ZERO_RANGE attempt
                    "fallocate(PUNCH_HOLE)",
                    "fallocate(0)",
                ]
            );
            let mut back = vec![1u8; 20480];
            t.file.read_exact_at_nofs(&mut back, 0).unwrap();
            assert!(back[..4096].iter().all(|&b| b == 0xaa));
            assert!(back[4096..12288].iter().all(|&b| b == 0));
            assert!(back[12288..16384].iter().all(|&b| b == 0xaa));
            assert!(back[16384..].iter().all(|&b| b == 0));
            assert_eq!(t.file.get_ref().metadata().unwrap().len(), 20480);

            // Neither works: Unsupported, naming the punch.
            let t = Temp::new("zero2");
            fake::script_io([
                IoScript::Err(sio::EOPNOTSUPP),
                IoScript::Err(sio::EOPNOTSUPP),
            ]);
            let e = t.file.zero_range_nofs(0, 4096).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::Unsupported);
            assert!(e.to_string().contains("PUNCH_HOLE"), "{e}");
        });
    }

    #[test]
    fn zero_punch_allocate_on_this_file_system() {
        let t = Temp::new("falloc");
        let f = &t.file;
        f.write_all_at_nofs(&[3u8; 16384], 0).unwrap();
        f.punch_hole_nofs(0, 4096).unwrap();
        f.zero_range_nofs(8192, 4096).unwrap();
        f.allocate_nofs(16384, 4096).unwrap();
        let mut back = vec![1u8; 20480];
        f.read_exact_at_nofs(&mut back, 0).unwrap();
        let expect: Vec<u8> = (0..20480)
            .map(|i| match i {
                0..=4095 | 8192..=12287 | 16384.. => 0,
                _ => 3,
            })
            .collect();
        assert_eq!(back, expect);
        assert_eq!(f.get_ref().metadata().unwrap().len(), 20480);
        // Zero-length requests are no-ops, not EINVAL.
        f.allocate_nofs(0, 0).unwrap();
        f.punch_hole_nofs(1 << 40, 0).unwrap();
    }

    #[test]
    fn rwflags_ops_and_names() {
        let f = RwFlags::SYNC | RwFlags::HIPRI;
        assert_eq!(f.bits(), 0x5);
        assert!(f.contains(RwFlags::SYNC) && !f.contains(RwFlags::DSYNC));
        assert_eq!(f & RwFlags::SYNC, RwFlags::SYNC);
        let mut g = RwFlags::empty();
        g |= RwFlags::DONTCACHE;
        assert_eq!(format!("{g:?}"), "RwFlags(RWF_DONTCACHE)");
        assert_eq!(
            RwFlags::from_bits_retain(0x101).to_string(),
            "RWF_HIPRI|0x100"
        );
        assert_eq!(RwFlags::empty().to_string(), "0");
        let all = [
            (RwFlags::HIPRI, 0x1),
            (RwFlags::DSYNC, 0x2),
            (RwFlags::SYNC, 0x4),
            (RwFlags::NOWAIT, 0x8),
            (RwFlags::APPEND, 0x10),
            (RwFlags::NOAPPEND, 0x20),
            (RwFlags::ATOMIC, 0x40),
            (RwFlags::DONTCACHE, 0x80),
        ];
        for (flag, bits) in all {
            assert_eq!(flag.bits(), bits);
        }
        assert_eq!(RwFlags::NOAPPEND.min_kernel(), Some("6.9"));
        assert_eq!(RwFlags::DONTCACHE.min_kernel(), Some("6.14"));
        assert_eq!(RwFlags::from_bits_retain(0x200).min_kernel(), None);
        assert_eq!(
            (RwFlags::DSYNC | RwFlags::ATOMIC).describe_with_versions(),
            "RWF_DSYNC (Linux 4.7), RWF_ATOMIC (Linux 6.11)"
        );
    }

    // --- RWF flags against this machine's kernel -------------------------

    /// A buffer of `len` bytes aligned to 4096 (for O_DIRECT), without unsafe.
    fn aligned(storage: &mut Vec<u8>, len: usize) -> &mut [u8] {
        *storage = vec![0u8; len + 4096];
        let skip = storage.as_ptr().align_offset(4096);
        &mut storage[skip..skip + len]
    }

    #[test]
    fn rwf_dsync_sync_hipri_write_and_read_back() {
        let t = Temp::new("rwf-sync");
        let f = &t.file;
        for (i, flags) in [
            RwFlags::DSYNC,
            RwFlags::SYNC,
            RwFlags::DSYNC | RwFlags::SYNC,
            RwFlags::HIPRI,
        ]
        .into_iter()
        .enumerate()
        {
            let data = [i as u8 + 1; 512];
            let off = i as u64 * 512;
            let n = f
                .pwritev2_nofs(
                    &[IoSlice::new(&data[..100]), IoSlice::new(&data[100..])],
                    off,
                    flags,
                )
                .unwrap_or_else(|e| panic!("{flags}: {e}"));
            assert_eq!(n, 512);
            let (mut a, mut b) = ([0u8; 12], [0u8; 500]);
            let n = f
                .preadv2_nofs(
                    &mut [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)],
                    off,
                    flags,
                )
                .unwrap_or_else(|e| panic!("{flags}: {e}"));
            assert_eq!(n, 512);
            assert!(a.iter().chain(&b).all(|&x| x == i as u8 + 1), "{flags}");
        }
    }

    #[test]
    fn rwf_nowait_on_uncached_buffered_read_would_block() {
        let t = Temp::new("rwf-nowait");
        let f = &t.file;
        // Data on disk but not in the page cache: written with O_DIRECT,
        // which invalidates the cached range. (A hole would not do: since
        // Linux 6.x a NOWAIT read starts NOIO readahead, which fills holes
        // without I/O.) The NOWAIT read then starts readahead and returns
        // EAGAIN rather than wait for the disk — unless the disk finished
        // first, so try fresh regions a few times.
        let d = NoFsFile::open_direct(&t.path, OpenOptions::new().write(true)).unwrap();
        let mut storage = Vec::new();
        let w = aligned(&mut storage, 64 << 10);
        w.fill(0x77);
        let mut blocked = None;
        for round in 0..32u64 {
            let off = round * (1 << 20);
            d.write_all_at_nofs(w, off).unwrap();
            let mut buf = [1u8; 4096];
            match f.preadv2_nofs(&mut [IoSliceMut::new(&mut buf)], off, RwFlags::NOWAIT) {
                Ok(n) => assert_eq!((n, buf), (4096, [0x77; 4096])),
                Err(e) => {
                    blocked = Some((e, off));
                    break;
                }
            }
        }
        let (e, off) = blocked.expect("32 NOWAIT reads of uncached data never blocked");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
        assert!(e.to_string().contains("RWF_NOWAIT"), "{e}");
        assert_eq!(detail(&e).flags(), RwFlags::NOWAIT);
        // Once cached, the same call succeeds without blocking.
        let mut buf = [1u8; 4096];
        f.read_exact_at_nofs(&mut buf, off).unwrap();
        buf = [1u8; 4096];
        let n = f
            .preadv2_nofs(&mut [IoSliceMut::new(&mut buf)], off, RwFlags::NOWAIT)
            .unwrap();
        assert_eq!((n, buf), (4096, [0x77; 4096]));
    }

    #[test]
    fn rwf_append_and_noappend() {
        let t = Temp::new("rwf-append");
        let f = &t.file;
        f.write_all_at_nofs(b"0123", 0).unwrap();
        // RWF_APPEND ignores the offset.
        f.pwritev2_nofs(&[IoSlice::new(b"45")], 0, RwFlags::APPEND)
            .unwrap();
        let mut b = [0u8; 6];
        f.read_exact_at_nofs(&mut b, 0).unwrap();
        assert_eq!(&b, b"012345");
        // RWF_NOAPPEND (6.9) overrides O_APPEND for one call.
        let app = NoFsFile::open(&t.path, OpenOptions::new().append(true)).unwrap();
        app.pwritev2_nofs(&[IoSlice::new(b"ab")], 0, RwFlags::NOAPPEND)
            .unwrap();
        f.read_exact_at_nofs(&mut b, 0).unwrap();
        assert_eq!(&b, b"ab2345");
    }

    #[test]
    fn rwf_dontcache_round_trips_or_names_the_flag() {
        let t = Temp::new("rwf-dontcache");
        let data = [0x5au8; 8192];
        match t
            .file
            .pwritev2_nofs(&[IoSlice::new(&data)], 0, RwFlags::DONTCACHE)
        {
            Ok(n) => {
                eprintln!("RWF_DONTCACHE: supported here");
                assert_eq!(n, 8192);
                let mut b = [0u8; 8192];
                let n = t
                    .file
                    .preadv2_nofs(&mut [IoSliceMut::new(&mut b)], 0, RwFlags::DONTCACHE)
                    .unwrap();
                assert_eq!((n, &b[..]), (8192, &data[..]));
            }
            // A file system without FOP_DONTCACHE answers EOPNOTSUPP.
            Err(e) => {
                eprintln!("RWF_DONTCACHE: rejected here: {e}");
                assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
                assert!(e.to_string().contains("RWF_DONTCACHE (Linux 6.14)"), "{e}");
            }
        }
    }

    #[test]
    fn rwf_atomic_is_rejected_where_unsupported_naming_the_flag() {
        let t = Temp::new("rwf-atomic");
        // Reads never take RWF_ATOMIC; buffered writes need file-system
        // support this host's ext4 does not advertise without O_DIRECT.
        let mut b = [0u8; 4096];
        let e = t
            .file
            .preadv2_nofs(&mut [IoSliceMut::new(&mut b)], 0, RwFlags::ATOMIC)
            .unwrap_err();
        eprintln!("RWF_ATOMIC read: {e}");
        assert!(e.to_string().contains("RWF_ATOMIC (Linux 6.11)"), "{e}");
        assert!(matches!(
            detail(&e).raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::EINVAL)
        ));
        // O_DIRECT, aligned buffer, offset and power-of-two length: either
        // the device offers atomic writes, or the error names the flag.
        let direct = match NoFsFile::open_direct(&t.path, OpenOptions::new().read(true).write(true))
        {
            Ok(f) => f,
            Err(e) => panic!("O_DIRECT on the temp dir's file system: {e}"),
        };
        let mut storage = Vec::new();
        let buf = aligned(&mut storage, 4096);
        buf.fill(0xa5);
        match direct.pwritev2_nofs(&[IoSlice::new(buf)], 0, RwFlags::ATOMIC) {
            Ok(n) => {
                eprintln!("RWF_ATOMIC with O_DIRECT: supported here");
                assert_eq!(n, 4096);
                let mut back = [0u8; 4096];
                t.file.read_exact_at_nofs(&mut back, 0).unwrap();
                assert_eq!(back, [0xa5; 4096]);
            }
            Err(e) => {
                eprintln!("RWF_ATOMIC with O_DIRECT: rejected here: {e}");
                assert!(e.to_string().contains("RWF_ATOMIC (Linux 6.11)"), "{e}");
                assert_eq!(detail(&e).bytes_done(), 0);
            }
        }
    }

    #[test]
    fn unknown_rwf_bit_is_unsupported_and_named() {
        let t = Temp::new("rwf-unknown");
        let e = t
            .file
            .pwritev2_nofs(
                &[IoSlice::new(b"x")],
                0,
                RwFlags::from_bits_retain(0x4000_0000),
            )
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains("unknown bits 0x40000000"), "{e}");
        assert_eq!(t.file.get_ref().metadata().unwrap().len(), 0);
    }

    #[test]
    fn o_direct_round_trip_with_aligned_buffers() {
        let t = Temp::new("direct");
        let d = NoFsFile::open_direct(&t.path, OpenOptions::new().read(true).write(true)).unwrap();
        let mut s1 = Vec::new();
        let w = aligned(&mut s1, 8192);
        for (i, b) in w.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        d.write_all_at_nofs(w, 4096).unwrap();
        let mut s2 = Vec::new();
        let r = aligned(&mut s2, 8192);
        d.read_exact_at_nofs(r, 4096).unwrap();
        assert_eq!(r, w);
        // Misaligned O_DIRECT I/O: EINVAL, with the alignment hint.
        let e = d.pwrite_nofs(&w[1..513], 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("aligned"), "{e}");
    }

    // --- Model-based round trips -----------------------------------------

    /// xorshift64*: a seeded generator, so a failure is reproducible with
    /// `RECLAIM_SCOPE_SEED=<seed> cargo test fs::tests::model`.
    struct Rng(u64);

    impl Rng {
        fn from_env(default: u64) -> (Rng, u64) {
            let seed = std::env::var("RECLAIM_SCOPE_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(default);
            (Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1), seed)
        }
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        /// Mostly small, sometimes page-crossing, sometimes large.
        fn len(&mut self) -> usize {
            match self.below(4) {
                0 => self.below(16) as usize,
                1 => self.below(4097) as usize,
                2 => 4096 * (1 + self.below(4)) as usize,
                _ => self.below(70_000) as usize,
            }
        }
        fn offset(&mut self) -> u64 {
            match self.below(3) {
                0 => self.below(8192),
                1 => 4096 * self.below(64),
                _ => self.below(300_000),
            }
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn model_write(model: &mut Vec<u8>, off: u64, data: &[u8]) {
        if data.is_empty() {
            return; // a zero-length write does not extend the file
        }
        let (off, end) = (off as usize, off as usize + data.len());
        if model.len() < end {
            model.resize(end, 0);
        }
        model[off..end].copy_from_slice(data);
    }

    /// `model[off..off + n]`, empty when `n == 0` (even beyond the end).
    fn span(model: &[u8], off: u64, n: usize) -> &[u8] {
        if n == 0 {
            &[]
        } else {
            &model[off as usize..off as usize + n]
        }
    }

    /// Splits `len` into 1..=5 random slice lengths.
    fn split(rng: &mut Rng, len: usize) -> Vec<usize> {
        let parts = 1 + rng.below(5) as usize;
        let mut cuts: Vec<usize> = (0..parts - 1)
            .map(|_| rng.below(len as u64 + 1) as usize)
            .collect();
        cuts.sort_unstable();
        let mut last = 0;
        let mut out = Vec::new();
        for c in cuts.into_iter().chain([len]) {
            out.push(c - last);
            last = c;
        }
        out
    }

    /// Random operations against a `Vec<u8>` model; every read is checked
    /// against the model, and the whole file at the end.
    fn model_run(rng: &mut Rng, seed: u64, t: &Temp, ops: usize) {
        let f = &t.file;
        let mut model: Vec<u8> = Vec::new();
        for step in 0..ops {
            let ctx = format!("seed {seed}, step {step}");
            let off = rng.offset();
            let len = rng.len();
            match rng.below(10) {
                0 | 1 => {
                    let data = rng.bytes(len);
                    f.write_all_at_nofs(&data, off).expect(&ctx);
                    model_write(&mut model, off, &data);
                }
                2 => {
                    let data = rng.bytes(len);
                    let n = f.pwrite_nofs(&data, off).expect(&ctx);
                    model_write(&mut model, off, &data[..n]);
                }
                3 => {
                    let data = rng.bytes(len);
                    let lens = split(rng, len);
                    let mut rest = &data[..];
                    let slices: Vec<IoSlice<'_>> = lens
                        .iter()
                        .map(|&l| {
                            let (a, b) = rest.split_at(l);
                            rest = b;
                            IoSlice::new(a)
                        })
                        .collect();
                    let n = f.pwritev2_nofs(&slices, off, RwFlags::empty()).expect(&ctx);
                    model_write(&mut model, off, &data[..n]);
                }
                4 | 5 => {
                    let mut buf = vec![0xeeu8; len];
                    let r = f.read_exact_at_nofs(&mut buf, off);
                    let end = off as usize + len;
                    if end <= model.len() || len == 0 {
                        r.expect(&ctx);
                        assert_eq!(buf[..], *span(&model, off, len), "{ctx}");
                    } else {
                        let e = r.expect_err(&ctx);
                        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{ctx}: {e}");
                        let have = model.len().saturating_sub(off as usize);
                        assert_eq!(detail(&e).bytes_done(), have as u64, "{ctx}");
                        assert_eq!(buf[..have], *span(&model, off, have), "{ctx}");
                    }
                }
                6 => {
                    let mut buf = vec![0xeeu8; len];
                    let n = f.pread_nofs(&mut buf, off).expect(&ctx);
                    let have = model.len().saturating_sub(off as usize).min(len);
                    assert_eq!(n, have, "{ctx}");
                    assert_eq!(buf[..n], *span(&model, off, n), "{ctx}");
                }
                7 => {
                    let mut buf = vec![0xeeu8; len];
                    let lens = split(rng, len);
                    let mut rest = &mut buf[..];
                    let mut slices: Vec<IoSliceMut<'_>> = Vec::new();
                    for l in lens {
                        let (a, b) = std::mem::take(&mut rest).split_at_mut(l);
                        rest = b;
                        slices.push(IoSliceMut::new(a));
                    }
                    let n = f
                        .preadv2_nofs(&mut slices, off, RwFlags::empty())
                        .expect(&ctx);
                    drop(slices);
                    let have = model.len().saturating_sub(off as usize).min(len);
                    assert_eq!(n, have, "{ctx}");
                    assert_eq!(buf[..n], *span(&model, off, n), "{ctx}");
                }
                8 => {
                    let new_len = rng.offset();
                    f.set_len_nofs(new_len).expect(&ctx);
                    model.resize(new_len as usize, 0);
                }
                _ => {
                    let len = len as u64;
                    match rng.below(3) {
                        0 => {
                            f.punch_hole_nofs(off, len).expect(&ctx);
                            let end = ((off + len) as usize).min(model.len());
                            if (off as usize) < end {
                                model[off as usize..end].fill(0);
                            }
                        }
                        1 => {
                            f.zero_range_nofs(off, len).expect(&ctx);
                            if len > 0 {
                                model_write(&mut model, off, &vec![0; len as usize]);
                            }
                        }
                        _ => {
                            f.allocate_nofs(off, len).expect(&ctx);
                            if len > 0 && model.len() < (off + len) as usize {
                                model.resize((off + len) as usize, 0);
                            }
                        }
                    }
                }
            }
            assert_eq!(
                f.get_ref().metadata().unwrap().len(),
                model.len() as u64,
                "{ctx}: file size"
            );
        }
        let mut all = vec![0u8; model.len()];
        f.read_exact_at_nofs(&mut all, 0).unwrap();
        assert!(
            all == model,
            "seed {seed}: final contents differ from the model"
        );
    }

    #[test]
    fn model_round_trips_on_the_real_kernel() {
        let (mut rng, seed) = Rng::from_env(0x5eed_f11e);
        for _ in 0..8 {
            let t = Temp::new("model");
            model_run(&mut rng, seed, &t, 150);
        }
    }

    /// Up to 5 `EINTR`s and short transfers for a loop over `len` bytes;
    /// each short count leaves bytes to go, so the loop consumes them all.
    fn random_script(rng: &mut Rng, len: usize) -> Vec<IoScript> {
        let mut left = len;
        let mut script = Vec::new();
        for _ in 0..rng.below(6) {
            if rng.below(2) == 0 || left < 2 {
                script.push(IoScript::Err(sio::EINTR));
            } else {
                let n = 1 + rng.below(left as u64 - 1) as usize;
                left -= n;
                script.push(IoScript::Short(n));
            }
        }
        script
    }

    #[test]
    fn model_round_trips_through_random_eintr_and_short_io() {
        let (mut rng, seed) = Rng::from_env(0xe1_4700);
        on_fake(FakeThread::new(Mode::Permitted), move || {
            let t = Temp::new("model-fake");
            let mut interrupted = 0;
            for step in 0..300 {
                let ctx = format!("seed {seed}, step {step}");
                let off = rng.offset();
                let len = 1 + rng.len();
                let data = rng.bytes(len);
                let script = random_script(&mut rng, len);
                interrupted += script.len();
                fake::script_io(script);
                t.file.write_all_at_nofs(&data, off).expect(&ctx);
                assert_eq!(fake::io_script_left(), 0, "{ctx}: script not consumed");
                let mut back = vec![0u8; len];
                fake::script_io(random_script(&mut rng, len));
                t.file.read_exact_at_nofs(&mut back, off).expect(&ctx);
                assert_eq!(fake::io_script_left(), 0, "{ctx}: script not consumed");
                assert!(back == data, "{ctx}: read back differs");
            }
            assert!(interrupted > 300, "the script hardly interrupted anything");
            // Each call entered one scope: 2 prctls per call, not per syscall.
            assert_eq!(sets(), 2 * 600);
        });
    }
}
