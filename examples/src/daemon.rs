//! What the example daemons share: the switches that choose how their
//! workers get the allocation context ([`ProtectionArgs`], [`Protection`]),
//! the one start-up line that says which it is ([`announce`]), entering the
//! `IoFlusher` strictly or not ([`Guarding::enter`]), whether file I/O
//! bypasses `NoFsFile` ([`Protection::plain_io`], [`FileIo`]), size arguments and the
//! exit statuses ([`exit`]).

use clap::Args;
use reclaim_scope::{support, IoFlusher, NoFsFile, NoFsIoError, Support};
use std::fmt;
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The daemons' exit statuses (besides 0: served, drained, stopped).
pub mod exit {
    /// Serving ended in an error (the backing store failed, a worker died).
    pub const FAILED: u8 = 1;
    /// A usage or set-up error: bad arguments, a backing store or device
    /// that cannot be opened or set up.
    pub const SETUP: u8 = 2;
    /// `--strict`, and the workers could not be I/O flushers (or the
    /// kernel refused the mount to an unprivileged daemon).
    pub const REFUSED: u8 = 3;
}

/// How a daemon's workers are protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Each worker holds an `IoFlusher`, best effort: a refusal is reported
    /// once at start-up and the daemon serves anyway.
    IoFlusher,
    /// Each worker must be an I/O flusher; the daemon refuses to start (exit
    /// 3) otherwise.
    Strict,
    /// No `IoFlusher`; file I/O is still NOIO-scoped per call by `NoFsFile`.
    NoFlusher,
    /// No `IoFlusher` and plain file I/O bypassing `NoFsFile`: the
    /// unprotected daemon of the 2019 deadlock, for comparison.
    Unprotected,
}

/// The command-line switches behind [`Protection`] (flatten into the
/// daemon's `clap` arguments).
#[derive(Args, Debug, Clone, Copy)]
pub struct ProtectionArgs {
    /// Serve without IoFlusher guards (file I/O is still NOIO-scoped per call
    /// by NoFsFile): a baseline for comparison.
    #[arg(long, conflicts_with_all = ["strict", "unprotected"])]
    pub no_flusher: bool,
    /// Like --no-flusher, and file I/O bypasses NoFsFile (plain
    /// pread/pwrite/fdatasync): the unprotected daemon of the 2019 deadlock,
    /// for comparison.
    #[arg(long, conflicts_with = "strict")]
    pub unprotected: bool,
    /// Refuse to start (exit 3) unless the workers can be I/O flushers.
    #[arg(long)]
    pub strict: bool,
}

impl ProtectionArgs {
    /// The protection the switches select (`--unprotected` over
    /// `--no-flusher` over `--strict`; clap refuses the conflicting pairs).
    pub fn protection(&self) -> Protection {
        if self.unprotected {
            Protection::Unprotected
        } else if self.no_flusher {
            Protection::NoFlusher
        } else if self.strict {
            Protection::Strict
        } else {
            Protection::IoFlusher
        }
    }
}

impl Protection {
    /// How the workers enter their allocation context.
    pub fn guarding(self) -> Guarding {
        match self {
            Protection::IoFlusher => Guarding::IoFlusher,
            Protection::Strict => Guarding::Strict,
            Protection::NoFlusher | Protection::Unprotected => Guarding::None,
        }
    }

    /// Whether file I/O bypasses `NoFsFile` (plain `pread`/`pwrite`/
    /// `fdatasync`/`fallocate`): `--unprotected` only.
    pub fn plain_io(self) -> bool {
        self == Protection::Unprotected
    }
}

/// How a worker thread gets its allocation context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarding {
    /// The thread holds an `IoFlusher`; best effort (a refusal was reported
    /// once at start-up by [`announce`]).
    IoFlusher,
    /// The thread must be an I/O flusher; it refuses to serve otherwise.
    Strict,
    /// No `IoFlusher`: the baseline for comparison.
    None,
}

impl Guarding {
    /// Enters the thread's `IoFlusher` (held until the guard drops): `None`
    /// for [`Guarding::None`]; under [`Guarding::Strict`] the kernel's
    /// refusal is the error, under [`Guarding::IoFlusher`] the guard is
    /// returned either way (see `IoFlusher::is_effective`).
    pub fn enter(self) -> Result<Option<IoFlusher>, reclaim_scope::Error> {
        match self {
            Guarding::None => Ok(None),
            Guarding::IoFlusher => Ok(Some(IoFlusher::enter())),
            Guarding::Strict => IoFlusher::try_enter().map(Some),
        }
    }
}

/// A backing store's data I/O, the one place that chooses between
/// `NoFsFile` (each call NOIO-scoped) and, under `--unprotected`
/// ([`Protection::plain_io`]), the plain syscalls on the same descriptor.
#[derive(Clone, Copy, Debug)]
pub struct FileIo<'a> {
    /// The backing store.
    pub file: &'a NoFsFile,
    /// Plain `pread`/`pwrite`/`fdatasync`/`fsync`/`ftruncate`, bypassing
    /// `NoFsFile`: the unprotected baseline.
    pub plain: bool,
}

/// Why a [`FileIo`] call failed: the plain syscall's error, or `NoFsFile`'s
/// (which keeps the offset and the bytes done).
#[derive(Debug)]
pub enum IoError {
    /// From a plain syscall (`--unprotected`).
    Plain(io::Error),
    /// From `NoFsFile`.
    NoFs(NoFsIoError),
}

impl IoError {
    /// The errno of the failing syscall; `None` for an error found before
    /// any syscall (a `NoFsFile` range check).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            IoError::Plain(e) => e.raw_os_error(),
            IoError::NoFs(e) => e.raw_os_error(),
        }
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoError::Plain(e) => e.fmt(f),
            IoError::NoFs(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for IoError {}

impl From<IoError> for io::Error {
    fn from(e: IoError) -> io::Error {
        match e {
            IoError::Plain(e) => e,
            IoError::NoFs(e) => e.into(),
        }
    }
}

impl FileIo<'_> {
    /// Fills `buf` from `offset` (`pread` until done; EOF is an error).
    pub fn read_exact_at(self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        if self.plain {
            self.file
                .get_ref()
                .read_exact_at(buf, offset)
                .map_err(IoError::Plain)
        } else {
            self.file
                .read_exact_at_nofs(buf, offset)
                .map_err(IoError::NoFs)
        }
    }

    /// One `pread` at `offset`: the bytes read (0 at EOF).
    pub fn read_at(self, buf: &mut [u8], offset: u64) -> Result<usize, IoError> {
        if self.plain {
            self.file
                .get_ref()
                .read_at(buf, offset)
                .map_err(IoError::Plain)
        } else {
            self.file.pread_nofs(buf, offset).map_err(IoError::NoFs)
        }
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_all_at(self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        if self.plain {
            self.file
                .get_ref()
                .write_all_at(buf, offset)
                .map_err(IoError::Plain)
        } else {
            self.file
                .write_all_at_nofs(buf, offset)
                .map_err(IoError::NoFs)
        }
    }

    /// `fdatasync(2)`.
    pub fn sync_data(self) -> Result<(), IoError> {
        if self.plain {
            self.file.get_ref().sync_data().map_err(IoError::Plain)
        } else {
            self.file.sync_data_nofs().map_err(IoError::NoFs)
        }
    }

    /// `fsync(2)`.
    pub fn sync_all(self) -> Result<(), IoError> {
        if self.plain {
            self.file.get_ref().sync_all().map_err(IoError::Plain)
        } else {
            self.file.sync_all_nofs().map_err(IoError::NoFs)
        }
    }

    /// `ftruncate(2)` to `len` bytes.
    pub fn set_len(self, len: u64) -> Result<(), IoError> {
        if self.plain {
            self.file.get_ref().set_len(len).map_err(IoError::Plain)
        } else {
            self.file.set_len_nofs(len).map_err(IoError::NoFs)
        }
    }
}

/// How a daemon wants its backing store opened ([`open_backing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackingOpts {
    /// `--size`: the size a new (missing or empty) backing file gets; an
    /// existing file or device of another size is refused.
    pub size: Option<u64>,
    /// A new backing file's size without `--size`, in bytes.
    pub default_size: u64,
    /// `--read-only`: opened read-only, and never created or sized.
    pub read_only: bool,
}

/// A backing store opened by [`open_backing`].
#[derive(Debug)]
pub struct Backing {
    /// The canonical path.
    pub path: PathBuf,
    /// The file or block device, for `NoFsFile` I/O.
    pub file: NoFsFile,
    /// Its size in bytes (never 0).
    pub size: u64,
    /// Whether this call created the file (the daemon may remove it if it
    /// never served).
    pub created: bool,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Opens (or creates, sparse) the backing store at `path`: a regular file or
/// a block device, never anything else; a missing path under `/dev` is a
/// mistyped device and never becomes a file in devtmpfs; `--read-only`
/// never creates or sizes a file; a new or empty file gets `opts.size` (or
/// `opts.default_size`) bytes after `check_new` accepted that size; an
/// existing file or device of another size than `--size` is refused (a
/// client would get a disk it did not expect). Each error names the path
/// and keeps the kind of the failing call (`NotFound`, `ReadOnlyFilesystem`,
/// ...; `InvalidInput` for a refusal).
pub fn open_backing(
    path: &Path,
    opts: BackingOpts,
    check_new: impl FnOnce(u64) -> Result<(), String>,
) -> io::Result<Backing> {
    let new_size = opts.size.unwrap_or(opts.default_size);
    let mut check_new = Some(check_new);
    let mut check = |bytes: u64| match check_new.take() {
        Some(f) => f(bytes).map_err(invalid),
        None => Ok(()),
    };
    let created = match std::fs::metadata(path) {
        Ok(m) if !m.is_file() && !m.file_type().is_block_device() => {
            return Err(invalid(format!(
                "{}: not a regular file or a block device (a {:?})",
                path.display(),
                m.file_type()
            )));
        }
        Ok(_) => false,
        // A mistyped device name must not become a file in devtmpfs.
        Err(_) if path.starts_with("/dev") => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{}: no such device (a backing file is never created under /dev)",
                    path.display()
                ),
            ));
        }
        Err(_) if opts.read_only => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{}: no such file (--read-only never creates a backing file)",
                    path.display()
                ),
            ));
        }
        Err(_) => {
            check(new_size)?;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", path.display())))?;
            true
        }
    };
    let path = std::fs::canonicalize(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let mut oo = std::fs::OpenOptions::new();
    oo.read(true).write(!opts.read_only);
    // The error names the path and keeps its kind.
    let file = NoFsFile::open(&path, &oo).map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
    let mut size = file
        .size_nofs()
        .map_err(|e| io::Error::new(e.kind(), format!("{}: size: {e}", path.display())))?;
    if file.is_block_device() {
        if size == 0 {
            return Err(invalid(format!(
                "{}: the block device has no media (size 0)",
                path.display()
            )));
        }
        if let Some(asked) = opts.size.filter(|&s| s != size) {
            return Err(invalid(format!(
                "--size {asked} bytes, but {} is already {size} bytes: a block device \
                 keeps its size; drop --size",
                path.display()
            )));
        }
    } else if size == 0 {
        if opts.read_only {
            return Err(invalid(format!(
                "{}: the backing file is empty (and --read-only)",
                path.display()
            )));
        }
        check(new_size)?;
        file.set_len_nofs(new_size)
            .map_err(|e| io::Error::new(e.kind(), format!("size {}: {e}", path.display())))?;
        size = new_size;
    } else if let Some(asked) = opts.size.filter(|&s| s != size) {
        return Err(invalid(format!(
            "--size {asked} bytes, but {} is already {size} bytes: --size only sizes a new \
             backing file; drop --size, or resize the file first (truncate -s)",
            path.display()
        )));
    }
    if size == 0 {
        return Err(invalid(format!(
            "{}: the backing file is empty",
            path.display()
        )));
    }
    Ok(Backing {
        path,
        file,
        size,
        created,
    })
}

/// Prints the one start-up line about `protection` (`daemon` prefixes it,
/// `workers` names the threads). Under `--strict`, when the kernel refuses,
/// the status to exit with ([`exit::REFUSED`]).
pub fn announce(daemon: &str, workers: &str, protection: Protection) -> Result<(), ExitCode> {
    let why = |s: Support| s.error().map_or(s.to_string(), |e| e.to_string());
    match (protection, support()) {
        (Protection::Unprotected, _) => eprintln!(
            "{daemon}: --unprotected: no IoFlusher and plain file I/O (baseline for comparison)"
        ),
        (Protection::NoFlusher, _) => eprintln!(
            "{daemon}: --no-flusher: {workers} are not I/O flushers; file I/O is still \
             NOIO-scoped per call by NoFsFile"
        ),
        (_, Support::Available) => eprintln!("{daemon}: {workers} are I/O flushers"),
        (Protection::Strict, s) => {
            eprintln!("{daemon}: --strict: {}", why(s));
            return Err(ExitCode::from(exit::REFUSED));
        }
        (_, s) => {
            eprintln!(
                "{daemon}: warning: serving UNPROTECTED from reclaim recursion: {}",
                why(s)
            );
            // Said once here; the crate's own once-per-process report would repeat it.
            let _ = reclaim_scope::set_degradation_hook(|_| {});
        }
    }
    Ok(())
}

/// Parses a size with an optional K, M, G or T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        Some('T' | 't') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4096, 512K, 256M, 2G)"))?;
    n.checked_mul(1 << shift)
        .filter(|&b| b > 0 && b <= i64::MAX as u64)
        .ok_or_else(|| format!("{s:?} is out of range (1 byte to 8 EiB)"))
}
