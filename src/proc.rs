//! Reading the real allocation context of any thread from `/proc`.
//!
//! The kernel publishes each task's `flags` word as field 9 of
//! `/proc/<pid>/task/<tid>/stat`. Reading it needs no capability, so a
//! daemon, a test or an operator can always check what the kernel really
//! does — which is the point: `prctl(PR_SET_IO_FLUSHER)` has shipped broken
//! in real projects because nobody looked.
//!
//! # Process and thread IDs
//!
//! IDs are `i32` because that is the kernel's `pid_t` (`libc::pid_t`), the
//! type `gettid(2)`, `/proc` and every syscall that takes a task use; a
//! daemon passes them on to `kill(2)`, `tgkill(2)` or `libc` without a cast.
//! std's `u32` (`std::process::id`, `Child::id`) converts with `as i32`
//! (Linux's `pid_max` is at most 2²² = 4 194 304). No newtype (as nix's
//! `Pid` or rustix's `Pid`): the crate only reads `/proc` with them, and an
//! ID that names no task, including `0` and negative values, is an
//! [`io::ErrorKind::NotFound`] error from every function here rather than a
//! type error.

use crate::sys;
use std::fmt;
use std::io;
use std::path::PathBuf;

/// The allocation-context bits of one thread, as the kernel reports them.
///
/// # Examples
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// use reclaim_scope::proc::ThreadFlags;
///
/// let flags = ThreadFlags::current()?;
/// println!("this thread: {flags}"); // e.g. "clear" or "NOIO|LOCAL_THROTTLE (io-flusher)"
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ThreadFlags {
    bits: u32,
}

impl ThreadFlags {
    /// Wraps a raw `flags` word (field 9 of `/proc/<pid>/task/<tid>/stat`).
    ///
    /// ```
    /// use reclaim_scope::proc::ThreadFlags;
    /// let f = ThreadFlags::from_bits(0x0008_0000 | 0x0010_0000);
    /// assert!(f.noio() && f.local_throttle() && f.is_io_flusher());
    /// ```
    pub const fn from_bits(bits: u32) -> Self {
        ThreadFlags { bits }
    }

    /// The raw `flags` word, every bit included.
    pub const fn bits(self) -> u32 {
        self.bits
    }

    /// Reads the calling thread's flags from `/proc/thread-self/stat`.
    ///
    /// Needs no capability. Fails only if `/proc` is not mounted (or not
    /// Linux).
    ///
    /// ```
    /// # #[cfg(target_os = "linux")] {
    /// let f = reclaim_scope::proc::ThreadFlags::current()?;
    /// assert_eq!(f.is_io_flusher(), f.noio() && f.local_throttle());
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "thread-self")]
    pub fn current() -> io::Result<Self> {
        sys::thread_flags_self().map(Self::from_bits)
    }

    /// Reads the flags of thread `tid` of process `pid` from
    /// `/proc/<pid>/task/<tid>/stat`.
    ///
    /// ```
    /// # #[cfg(target_os = "linux")] {
    /// use reclaim_scope::proc::{current_tid, ThreadFlags};
    /// let pid = std::process::id() as i32;
    /// let f = ThreadFlags::of_task(pid, current_tid())?;
    /// assert_eq!(f.noio(), ThreadFlags::current()?.noio());
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn of_task(pid: i32, tid: i32) -> io::Result<Self> {
        read_task(pid, tid).map(|t| t.flags)
    }

    /// `PF_MEMALLOC_NOIO`: every allocation of the thread drops `__GFP_IO`
    /// and `__GFP_FS`. Set by `PR_SET_IO_FLUSHER`.
    pub const fn noio(self) -> bool {
        self.bits & sys::PF_MEMALLOC_NOIO != 0
    }

    /// `PF_MEMALLOC_NOFS`: every allocation drops `__GFP_FS`. User space
    /// cannot set this bit alone; the kernel sets it inside file-system
    /// code. See [`blocks_fs_reclaim`](Self::blocks_fs_reclaim) for the
    /// question "can this thread recurse into the file system?".
    pub const fn nofs(self) -> bool {
        self.bits & sys::PF_MEMALLOC_NOFS != 0
    }

    /// Whether the thread's allocations cannot recurse into file-system
    /// reclaim: NOIO or NOFS is set (NOIO implies NOFS).
    pub const fn blocks_fs_reclaim(self) -> bool {
        self.noio() || self.nofs()
    }

    /// `PF_LOCAL_THROTTLE` (Linux ≥ 5.8): the thread is throttled only on
    /// its own dirty pages, not on the device it serves.
    pub const fn local_throttle(self) -> bool {
        self.bits & sys::PF_LOCAL_THROTTLE != 0
    }

    /// Both bits `PR_SET_IO_FLUSHER` sets: what `PR_GET_IO_FLUSHER` reports
    /// as 1 on Linux ≥ 5.8.
    pub const fn is_io_flusher(self) -> bool {
        self.noio() && self.local_throttle()
    }
}

impl fmt::Display for ThreadFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Vec::new();
        if self.noio() {
            names.push("NOIO");
        }
        if self.nofs() {
            names.push("NOFS");
        }
        if self.local_throttle() {
            names.push("LOCAL_THROTTLE");
        }
        if names.is_empty() {
            return f.write_str("clear");
        }
        f.write_str(&names.join("|"))?;
        if self.is_io_flusher() {
            f.write_str(" (io-flusher)")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ThreadFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadFlags")
            .field("bits", &format_args!("{:#010x}", self.bits))
            .field("noio", &self.noio())
            .field("nofs", &self.nofs())
            .field("local_throttle", &self.local_throttle())
            .finish()
    }
}

/// One thread of a process, as `/proc` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ThreadInfo {
    /// The kernel's thread id.
    pub tid: i32,
    /// The thread's name (`comm`, at most 15 bytes), lossily decoded.
    pub name: String,
    /// Its allocation-context flags.
    pub flags: ThreadFlags,
}

/// Lists every thread of process `pid` with its name and flags.
///
/// Threads that exit while the list is read are left out; a process that
/// does not exist (or exits before its first thread is read) gives
/// `NotFound` with a message naming the pid. Needs no capability.
///
/// `pid` is looked up as `/proc` numbers processes (see
/// [`pid_namespace`]); the calling process's own pid
/// (`std::process::id()`) is always read through `/proc/self`, with the
/// thread ids [`current_tid`] gives, even when `/proc` belongs to an outer
/// PID namespace.
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// let me = std::process::id() as i32;
/// let threads = reclaim_scope::proc::threads_of(me)?;
/// assert!(threads.iter().any(|t| t.tid == reclaim_scope::proc::current_tid()));
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn threads_of(pid: i32) -> io::Result<Vec<ThreadInfo>> {
    if pid == own_pid() {
        return own_threads();
    }
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let entries = std::fs::read_dir(&dir).map_err(|e| not_found_pid(e, pid))?;
    let mut out = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        match read_task(pid, tid) {
            Ok(t) => out.push(t),
            // The thread exited between readdir and read: it is gone, skip it.
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    finish(out, pid)
}

/// The calling process's threads through `/proc/self/task`, with the tids
/// of the caller's PID namespace (what [`current_tid`] returns), whatever
/// namespace `/proc` belongs to.
fn own_threads() -> io::Result<Vec<ThreadInfo>> {
    let mut out = Vec::new();
    for (tid, proc_tid) in sys::procfs::own_tasks()? {
        match read_stat_file(&format!("/proc/self/task/{proc_tid}/stat"), tid) {
            Ok(t) => out.push(t),
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    finish(out, own_pid())
}

fn finish(mut out: Vec<ThreadInfo>, pid: i32) -> io::Result<Vec<ThreadInfo>> {
    if out.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("process {pid} exited while its threads were read"),
        ));
    }
    out.sort_by_key(|t| t.tid);
    Ok(out)
}

fn own_pid() -> i32 {
    std::process::id() as i32
}

/// The ids `/proc/<pid>/status` reports for a task: the process it belongs
/// to, and its id in each PID namespace.
///
/// `/proc/<tid>` exists for every thread, not only for thread-group
/// leaders, so a thread id passed where a pid is expected is found; its
/// [`tgid`](Self::tgid) names the process.
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// let ids = reclaim_scope::proc::process_ids(std::process::id() as i32)?;
/// assert!(ids.is_process());
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessIds {
    /// The id that was read, as `/proc` numbers it.
    pub pid: i32,
    /// The process (thread group) the task belongs to (`Tgid:`): `pid`
    /// itself for a process, the leader's pid for any other thread.
    pub tgid: i32,
    /// The task's id in every PID namespace from `/proc`'s down to its own
    /// (`NSpid:`, Linux ≥ 4.1; empty before). More than one entry: the task
    /// lives in a nested PID namespace and calls itself by the last one.
    pub nspid: Vec<i32>,
}

impl ProcessIds {
    /// Whether the id names a process (a thread-group leader), not one of
    /// its other threads.
    ///
    /// ```
    /// # #[cfg(target_os = "linux")] {
    /// let me = reclaim_scope::proc::process_ids(std::process::id() as i32)?;
    /// assert_eq!(me.tgid, me.pid);
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_process(&self) -> bool {
        self.tgid == self.pid
    }
}

/// Reads [`ProcessIds`] of `pid` (a process or thread id as `/proc` numbers
/// it) from `/proc/<pid>/status`; the calling process's own pid is read
/// through `/proc/self`, so it names the caller even when `/proc` belongs to
/// another PID namespace.
///
/// # Errors
///
/// `NotFound` with a message naming the pid if there is no such task.
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// let me = reclaim_scope::proc::process_ids(std::process::id() as i32)?;
/// assert!(me.is_process());
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn process_ids(pid: i32) -> io::Result<ProcessIds> {
    let own = pid == own_pid();
    let path = if own {
        // The leader's status, whichever thread asks.
        "/proc/self/status".to_owned()
    } else {
        format!("/proc/{pid}/status")
    };
    let ids = sys::procfs::read_status_ids(&path).map_err(|e| not_found_pid(e, pid))?;
    let tgid = ids.tgid.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no Tgid: line in {path}"),
        )
    })?;
    Ok(ProcessIds {
        pid,
        // For the caller, /proc's number of its leader is not its own pid.
        tgid: if own { pid } else { tgid },
        nspid: ids.nspid,
    })
}

/// Which PID namespace the mounted `/proc` numbers processes in, relative
/// to the calling process.
///
/// Pids given to [`threads_of`], [`ThreadFlags::of_task`] and
/// [`process_ids`] are looked up in `/proc`, so outside
/// [`Own`](PidNamespace::Own) they are `/proc`'s numbers, not the
/// caller's (the calling process itself is always read through
/// `/proc/self`, with its own numbers).
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// use reclaim_scope::proc::{pid_namespace, PidNamespace};
/// match pid_namespace()? {
///     PidNamespace::Own => {}
///     other => eprintln!("note: {other}"),
/// }
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PidNamespace {
    /// `/proc` belongs to the caller's PID namespace: its pids are the ones
    /// `getpid()`, `kill()` and `waitpid()` use.
    Own,
    /// `/proc` belongs to an ancestor of the caller's PID namespace (for
    /// instance after `unshare --pid --fork` without `--mount-proc`): the
    /// caller is `pid` to itself and `proc_pid` in `/proc`.
    Ancestor {
        /// The caller's pid in its own namespace (`getpid()`).
        pid: i32,
        /// The caller's pid as `/proc` numbers it.
        proc_pid: i32,
    },
    /// The caller has no pid in `/proc`'s namespace (`/proc/self` does not
    /// resolve): `/proc` was mounted for a namespace the caller is not part of.
    Unrelated,
}

impl fmt::Display for PidNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PidNamespace::Own => f.write_str("/proc belongs to this PID namespace"),
            PidNamespace::Ancestor { pid, proc_pid } => write!(
                f,
                "/proc belongs to an ancestor PID namespace, not this process's (this process is \
                 pid {pid} here and {proc_pid} in /proc): pids are read as /proc numbers them; \
                 mount a /proc for this namespace (`unshare --pid --fork --mount-proc`) to use \
                 this namespace's pids"
            ),
            PidNamespace::Unrelated => f.write_str(
                "/proc belongs to a PID namespace this process is not part of (/proc/self does \
                 not exist); its pids are not this namespace's",
            ),
        }
    }
}

/// Finds out [`PidNamespace`] from `/proc/self/status` (its `NSpid:`
/// line lists one id per namespace from `/proc`'s down to the caller's).
///
/// # Errors
///
/// When `/proc` is not mounted (or not Linux).
pub fn pid_namespace() -> io::Result<PidNamespace> {
    Ok(match sys::procfs::proc_ns()? {
        sys::procfs::ProcNs::Own => PidNamespace::Own,
        sys::procfs::ProcNs::Ancestor { pid, proc_pid } => PidNamespace::Ancestor { pid, proc_pid },
        sys::procfs::ProcNs::Unrelated => PidNamespace::Unrelated,
    })
}

/// The kernel's id of the calling thread (`gettid(2)`): the `tid` that
/// `/proc/<pid>/task/<tid>` and tracefs' `common_pid` use.
///
/// ```
/// let tid = reclaim_scope::proc::current_tid();
/// assert!(tid > 0);
/// ```
pub fn current_tid() -> i32 {
    sys::gettid()
}

fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

fn not_found_pid(e: io::Error, pid: i32) -> io::Error {
    if gone(&e) {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no process with pid {pid}"),
        )
    } else {
        io::Error::new(e.kind(), format!("reading /proc/{pid}/task: {e}"))
    }
}

fn read_task(pid: i32, tid: i32) -> io::Result<ThreadInfo> {
    if pid == own_pid() {
        let proc_tid = sys::procfs::own_proc_tid(tid).map_err(|e| {
            if gone(&e) {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no thread {tid} in process {pid}"),
                )
            } else {
                e
            }
        })?;
        return read_stat_file(&format!("/proc/self/task/{proc_tid}/stat"), tid);
    }
    read_stat_file(&format!("/proc/{pid}/task/{tid}/stat"), tid)
}

fn read_stat_file(path: &str, tid: i32) -> io::Result<ThreadInfo> {
    let raw = std::fs::read(path).map_err(|e| {
        if gone(&e) {
            io::Error::new(io::ErrorKind::NotFound, format!("no thread {tid} ({path})"))
        } else {
            io::Error::new(e.kind(), format!("reading {path}: {e}"))
        }
    })?;
    let stat = sys::procfs::parse_stat(&raw)?;
    Ok(ThreadInfo {
        tid,
        name: stat.comm,
        flags: ThreadFlags::from_bits(stat.flags),
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn ids_that_name_no_task_are_not_found() {
        for (pid, tid) in [(0, 0), (-1, -1), (i32::MIN, 1), (1, i32::MAX)] {
            let e = ThreadFlags::of_task(pid, tid).unwrap_err();
            assert_eq!(
                e.kind(),
                io::ErrorKind::NotFound,
                "of_task({pid}, {tid}): {e}"
            );
        }
        for pid in [0, -1, i32::MIN, i32::MAX] {
            let e = threads_of(pid).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound, "threads_of({pid}): {e}");
            let e = process_ids(pid).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound, "process_ids({pid}): {e}");
        }
    }
    use super::*;

    #[test]
    fn flag_accessors_and_display() {
        let none = ThreadFlags::from_bits(0x40);
        assert!(!none.noio() && !none.nofs() && !none.local_throttle());
        assert_eq!(none.to_string(), "clear");
        let fl = ThreadFlags::from_bits(sys::PF_MEMALLOC_NOIO | sys::PF_LOCAL_THROTTLE);
        assert!(fl.is_io_flusher() && fl.blocks_fs_reclaim() && !fl.nofs());
        assert_eq!(fl.to_string(), "NOIO|LOCAL_THROTTLE (io-flusher)");
        let nofs = ThreadFlags::from_bits(sys::PF_MEMALLOC_NOFS);
        assert!(nofs.blocks_fs_reclaim() && !nofs.is_io_flusher());
        assert_eq!(nofs.to_string(), "NOFS");
        let old_kernel = ThreadFlags::from_bits(sys::PF_MEMALLOC_NOIO);
        assert!(old_kernel.blocks_fs_reclaim() && !old_kernel.is_io_flusher());
    }
}
