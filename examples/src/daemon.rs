//! What the example daemons share: the switches that choose how their
//! workers get the allocation context ([`ProtectionArgs`], [`Protection`]),
//! the one start-up line that says which it is ([`announce`]), entering the
//! `IoFlusher` strictly or not ([`Guarding::enter`]), whether file I/O
//! bypasses `NoFsFile` ([`Protection::plain_io`]), size arguments and the
//! exit statuses ([`exit`]).

use clap::Args;
use reclaim_scope::{support, IoFlusher, Support};
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
