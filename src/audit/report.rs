//! The read side's results: [`Verdict`], [`AuditedThread`] and [`Audit`],
//! with their `Display`.

use crate::proc::ThreadFlags;
use std::fmt;

/// How one thread's kernel flag compares with the crate's guards.
///
/// # Examples
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// use reclaim_scope::{proc::current_tid, audit::{Audit, Verdict}};
///
/// let report = Audit::current()?;
/// match report.verdict(current_tid()) {
///     Some(Verdict::Missing) => eprintln!("this worker lost its I/O-flusher flag"),
///     Some(v) => println!("this thread: {v}"),
///     None => unreachable!("the calling thread is part of the process"),
/// }
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Verdict {
    /// Not flagged, and no guard expects it to be (this includes an
    /// [`IoFlusher`](crate::IoFlusher) suspended by an
    /// [`AllowFsReclaim`](crate::AllowFsReclaim)).
    Clear,
    /// Flagged, and a live [`IoFlusher`](crate::IoFlusher) accounts for it
    /// (for an io_uring worker: one of the thread it works for, see
    /// [`Audit::current`]).
    Flusher,
    /// Flagged by a guard of this crate that made the syscall, typically an
    /// outermost [`NoFsScope`](crate::NoFsScope) alive at this moment.
    InScope,
    /// A live [`IoFlusher`](crate::IoFlusher) expects the flag, but the
    /// kernel says it is clear: someone cleared it behind the guard's back
    /// (a raw `prctl(PR_SET_IO_FLUSHER, 0)`, a C library,
    /// [`set_thread_io_flusher`](crate::set_thread_io_flusher)). The thread
    /// is not protected.
    Missing,
    /// Flagged, but no guard of this crate accounts for it: inherited from
    /// the thread that created it (spawned inside a scope), from a launcher
    /// (`reclaim-scope exec`), or set with a raw `prctl`.
    Unaccounted,
    /// The thread kept changing its flag while the audit read it.
    Unsettled,
}

impl Verdict {
    /// Whether this verdict is a finding: [`Missing`](Verdict::Missing) or
    /// [`Unaccounted`](Verdict::Unaccounted).
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::audit::Verdict;
    /// assert!(Verdict::Missing.is_finding());
    /// assert!(!Verdict::Flusher.is_finding());
    /// ```
    pub fn is_finding(self) -> bool {
        matches!(self, Verdict::Missing | Verdict::Unaccounted)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Clear => "clear",
            Verdict::Flusher => "flagged, held by an IoFlusher guard",
            Verdict::InScope => "flagged by a scope guard (inside a NoFsScope or IoFlusher)",
            Verdict::Missing => {
                "NOT flagged although an IoFlusher guard is alive: cleared behind the guard's \
                 back (a raw prctl(PR_SET_IO_FLUSHER, 0), a C library, or \
                 set_thread_io_flusher(false)); this thread is not protected"
            }
            Verdict::Unaccounted => {
                "flagged, but no guard accounts for it: inherited from the thread that created \
                 it (spawned inside a scope? spawn helpers inside AllowFsReclaim), from a \
                 launcher such as `reclaim-scope exec`, or set with a raw prctl"
            }
            Verdict::Unsettled => "kept changing while the audit read it",
        })
    }
}

/// One thread of the audited process.
///
/// # Examples
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// for t in reclaim_scope::audit::Audit::current()?.threads() {
///     println!("{:>7} {:<16} {} -> {}", t.tid, t.name, t.flags, t.verdict);
/// }
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditedThread {
    /// The kernel's thread id.
    pub tid: i32,
    /// The thread's name (`comm`).
    pub name: String,
    /// The kernel's flags of the thread, read from `/proc`.
    pub flags: ThreadFlags,
    /// How the flags compare with the guards.
    pub verdict: Verdict,
}

/// The result of [`Audit::current`]: every thread of the process with a [`Verdict`].
///
/// `Display` prints a summary line and the findings; the alternate form
/// (`{:#}`) lists every thread.
///
/// # Examples
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// let report = reclaim_scope::audit::Audit::current()?;
/// if !report.is_clean() {
///     eprintln!("{report}"); // "audit of process 42: 5 threads, 2 flagged; 1 missing, ..."
/// }
/// println!("{report:#}"); // every thread with its verdict
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Audit {
    pub(super) pid: i32,
    pub(super) threads: Vec<AuditedThread>,
}

impl Audit {
    /// The audited process.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(target_os = "linux")] {
    /// assert_eq!(reclaim_scope::audit::Audit::current()?.pid(), std::process::id() as i32);
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Every thread, ordered by thread id.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(target_os = "linux")] {
    /// let report = reclaim_scope::audit::Audit::current()?;
    /// assert!(report.threads().iter().any(|t| t.tid == reclaim_scope::proc::current_tid()));
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn threads(&self) -> &[AuditedThread] {
        &self.threads
    }

    /// Threads a live [`IoFlusher`](crate::IoFlusher) expects to be flagged
    /// but the kernel says are clear ([`Verdict::Missing`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(target_os = "linux")] {
    /// let _flusher = reclaim_scope::IoFlusher::enter();
    /// // ... a C library calls prctl(PR_SET_IO_FLUSHER, 0) on this thread ...
    /// for t in reclaim_scope::audit::Audit::current()?.missing() {
    ///     eprintln!("worker {} ({}) is not protected", t.tid, t.name);
    /// }
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn missing(&self) -> impl Iterator<Item = &AuditedThread> {
        self.with(Verdict::Missing)
    }

    /// Flagged threads no guard accounts for ([`Verdict::Unaccounted`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(target_os = "linux")] {
    /// let n = reclaim_scope::audit::Audit::current()?.unaccounted().count();
    /// println!("{n} threads are I/O flushers without a guard");
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn unaccounted(&self) -> impl Iterator<Item = &AuditedThread> {
        self.with(Verdict::Unaccounted)
    }

    /// The verdict on thread `tid`, if it was seen.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(target_os = "linux")] {
    /// use reclaim_scope::{proc::current_tid, audit::Audit};
    /// assert!(Audit::current()?.verdict(current_tid()).is_some());
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn verdict(&self, tid: i32) -> Option<Verdict> {
        self.threads
            .iter()
            .find(|t| t.tid == tid)
            .map(|t| t.verdict)
    }

    /// Whether nothing is missing and nothing is unaccounted.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(target_os = "linux")] {
    /// let report = reclaim_scope::audit::Audit::current()?;
    /// assert_eq!(report.is_clean(), report.missing().count() + report.unaccounted().count() == 0);
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_clean(&self) -> bool {
        !self.threads.iter().any(|t| t.verdict.is_finding())
    }

    fn with(&self, v: Verdict) -> impl Iterator<Item = &AuditedThread> {
        self.threads.iter().filter(move |t| t.verdict == v)
    }
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flagged = self.threads.iter().filter(|t| t.flags.noio()).count();
        let missing = self.missing().count();
        let unaccounted = self.unaccounted().count();
        write!(
            f,
            "audit of process {}: {} thread{}, {flagged} flagged",
            self.pid,
            self.threads.len(),
            if self.threads.len() == 1 { "" } else { "s" },
        )?;
        if self.is_clean() {
            f.write_str("; every flag is accounted for")?;
        } else {
            write!(f, "; {missing} missing, {unaccounted} unaccounted")?;
        }
        for t in &self.threads {
            if !f.alternate() && !t.verdict.is_finding() {
                continue;
            }
            let label = match t.verdict {
                Verdict::Missing => "MISSING",
                Verdict::Unaccounted => "UNACCOUNTED",
                _ => "ok",
            };
            write!(
                f,
                "\n  {label:<11} tid {} {:?} [{}]: {}",
                t.tid, t.name, t.flags, t.verdict
            )?;
        }
        Ok(())
    }
}
