//! Building an [`Audit`]: `/proc` read between two snapshots of the registry,
//! threads that changed in between read again, each judged against its entry.

use super::{Audit, AuditedThread, Verdict};
use super::{
    FLUSHERS_MASK, FLUSHERS_SHIFT, IN_TRANSITION, REGISTRY, SCOPED_MASK, SCOPED_OFF, SCOPED_ON,
};
use crate::proc::{ThreadFlags, ThreadInfo};
use std::collections::HashMap;
use std::io;

impl Audit {
    /// Audits the calling process: compares the kernel's flag of every thread
    /// (read from `/proc/self/task`, no capability needed) with what live
    /// guards account for.
    ///
    /// - [`missing`](Audit::missing): a live [`IoFlusher`](crate::IoFlusher)
    ///   expects the flag, the kernel has it clear.
    /// - [`unaccounted`](Audit::unaccounted): the kernel has the flag set, and
    ///   neither a live `IoFlusher` nor a guard that made the syscall (an
    ///   outermost [`NoFsScope`](crate::NoFsScope) on a clear thread) accounts
    ///   for it.
    ///
    /// io_uring's own threads — io-wq workers (`iou-wrk-TID`) and SQPOLL threads
    /// (`iou-sqp-TID`), recognised by the kernel's `PF_IO_WORKER` bit and that
    /// name — never run the process's code, so no guard of theirs exists: each
    /// copied its flags from thread `TID` when it was created and serves `TID`'s
    /// requests. Such a thread is judged by `TID`'s guards: flagged while `TID`
    /// holds a live `IoFlusher` is [`Flusher`](Verdict::Flusher); **clear while
    /// `TID` holds one is [`Missing`](Verdict::Missing)** (it was created
    /// before the guard, and keeps serving `TID`'s blocking requests
    /// unflagged); flagged while `TID` holds none (or `TID` is gone) is
    /// [`Unaccounted`](Verdict::Unaccounted).
    ///
    /// It is a snapshot: a thread whose guards change the flag while it is read
    /// is read again, and reported [`Verdict::Unsettled`] if it never holds
    /// still.
    ///
    /// # What it cannot know
    ///
    /// A [`NoFsScope`](crate::NoFsScope) on a thread that was flagged already
    /// makes no syscall and registers nothing (that is what keeps it at a few
    /// instructions), so such a thread is [`Unaccounted`](Verdict::Unaccounted)
    /// — rightly: it stays flagged after the scope ends. For the same reason a
    /// thread that inherited the flag, then changed it with guards and returned
    /// to depth 0, may still count as [`InScope`](Verdict::InScope). Raw
    /// `prctl` calls made *outside* any guard are seen only through the
    /// kernel's state. After `fork()` the child does not know the guards taken
    /// before it.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read (not mounted, not Linux).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(target_os = "linux")] {
    /// let report = reclaim_scope::audit::Audit::current()?;
    /// println!("{report}");
    /// for t in report.unaccounted() {
    ///     eprintln!("thread {} ({}) is an I/O flusher by accident", t.tid, t.name);
    /// }
    /// // This program never flagged anything, nor were its threads inherited
    /// // flagged (unless it was started by `reclaim-scope exec`).
    /// if !reclaim_scope::proc::ThreadFlags::current()?.noio() {
    ///     assert!(report.is_clean());
    /// }
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn current() -> io::Result<Audit> {
        let pid = std::process::id() as i32;
        audit_with(
            pid,
            || crate::proc::threads_of(pid),
            |tid| ThreadFlags::of_task(pid, tid),
        )
    }
}

/// How often a thread that changed during the read is read again.
const REREADS: u32 = 16;

fn snapshot() -> HashMap<i32, u64> {
    REGISTRY
        .lock()
        .live
        .iter()
        .map(|e| (e.tid(), e.read()))
        .collect()
}

pub(super) fn word_of(tid: i32) -> Option<u64> {
    REGISTRY
        .lock()
        .live
        .iter()
        .rev()
        .find(|e| e.tid() == tid)
        .map(|e| e.read())
}

fn settled(before: Option<u64>, after: Option<u64>) -> bool {
    before == after && before.map_or(true, |w| w & IN_TRANSITION == 0)
}

/// `PF_IO_WORKER` (`include/linux/sched.h`): an io_uring worker or SQPOLL
/// thread (`create_io_thread()`).
pub(super) const PF_IO_WORKER: u32 = 0x0000_0010;

/// The thread an io_uring thread works for: `TID` of `iou-wrk-TID` (io-wq,
/// `io_uring/io-wq.c`) or `iou-sqp-TID` (SQPOLL, `io_uring/sqpoll.c`), if
/// the kernel marks it `PF_IO_WORKER` (a thread of the process could name
/// itself so).
fn io_uring_owner(t: &ThreadInfo) -> Option<i32> {
    if t.flags.bits() & PF_IO_WORKER == 0 {
        return None;
    }
    let n = &t.name;
    n.strip_prefix("iou-wrk-")
        .or_else(|| n.strip_prefix("iou-sqp-"))?
        .parse()
        .ok()
}

/// The audit over a thread list and a per-thread re-reader (real `/proc`, or
/// the fake kernel in unit tests).
pub(super) fn audit_with(
    pid: i32,
    list: impl FnOnce() -> io::Result<Vec<ThreadInfo>>,
    reread: impl Fn(i32) -> io::Result<ThreadFlags>,
) -> io::Result<Audit> {
    let before = snapshot();
    let threads = list()?;
    let after = snapshot();
    let mut out = Vec::with_capacity(threads.len());
    for t in threads {
        let (mut b, mut a) = (before.get(&t.tid).copied(), after.get(&t.tid).copied());
        let mut flags = t.flags;
        let mut tries = 0;
        let mut gone = false;
        while !settled(b, a) && tries < REREADS {
            tries += 1;
            std::thread::yield_now();
            b = word_of(t.tid);
            match reread(t.tid) {
                Ok(f) => flags = f,
                Err(_) => {
                    // The thread exited: it is no longer part of the process.
                    gone = true;
                    break;
                }
            }
            a = word_of(t.tid);
        }
        if gone {
            continue;
        }
        if let Some(owner) = io_uring_owner(&t) {
            let w = after.get(&owner).copied().unwrap_or(0);
            let expected = w & FLUSHERS_MASK != 0;
            let verdict = match (flags.noio(), expected) {
                (true, true) => Verdict::Flusher,
                (true, false) => Verdict::Unaccounted,
                (false, true) => Verdict::Missing,
                (false, false) => Verdict::Clear,
            };
            out.push(AuditedThread {
                tid: t.tid,
                name: t.name,
                flags,
                verdict,
            });
            continue;
        }
        let verdict = if settled(b, a) {
            judge(flags, a)
        } else {
            Verdict::Unsettled
        };
        out.push(AuditedThread {
            tid: t.tid,
            name: t.name,
            flags,
            verdict,
        });
    }
    out.sort_by_key(|t| t.tid);
    Ok(Audit { pid, threads: out })
}

pub(super) fn judge(flags: ThreadFlags, word: Option<u64>) -> Verdict {
    let w = word.unwrap_or(0);
    let flushers = (w & FLUSHERS_MASK) >> FLUSHERS_SHIFT;
    let scoped = w & SCOPED_MASK;
    match (flags.noio(), flushers > 0, scoped) {
        (true, true, _) => Verdict::Flusher,
        (true, false, SCOPED_ON) => Verdict::InScope,
        (true, false, _) => Verdict::Unaccounted,
        (false, true, SCOPED_OFF) => Verdict::Clear,
        (false, true, _) => Verdict::Missing,
        (false, false, _) => Verdict::Clear,
    }
}
