//! `/proc/PID/status` identity fields and the PID namespace the mounted
//! `/proc` numbers processes in.
//!
//! A `/proc` shows the PIDs of the PID namespace it was mounted in. A
//! process in a child namespace that still sees its parent's `/proc`
//! (`unshare --pid --fork` without `--mount-proc`, some container setups)
//! has one pid for itself (`getpid()`, `gettid()`) and another in `/proc`;
//! `/proc/<getpid()>` is then somebody else. `/proc/self` and
//! `/proc/thread-self` always name the caller, and the `NSpid:` line of a
//! task's `status` lists its id in every namespace from `/proc`'s down to
//! its own (Linux ≥ 4.1).

use std::io;

/// The identity lines of a `status` file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct StatusIds {
    /// `Tgid:`: the thread group (process) the task belongs to.
    pub tgid: Option<i32>,
    /// `Pid:`: the task's id as this `/proc` numbers it.
    pub pid: Option<i32>,
    /// `NSpid:`: the task's id in each PID namespace, outermost (this
    /// `/proc`'s) first; empty before Linux 4.1.
    pub nspid: Vec<i32>,
}

/// Parses the `Tgid:`, `Pid:` and `NSpid:` lines of a `status` file.
pub(crate) fn parse_status_ids(text: &str) -> StatusIds {
    let mut ids = StatusIds::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "Tgid" => ids.tgid = value.trim().parse().ok(),
            "Pid" => ids.pid = value.trim().parse().ok(),
            "NSpid" => {
                ids.nspid = value
                    .split_ascii_whitespace()
                    .map_while(|v| v.parse().ok())
                    .collect()
            }
            _ => {}
        }
    }
    ids
}

/// Reads and parses `path` (a `status` file).
pub(crate) fn read_status_ids(path: &str) -> io::Result<StatusIds> {
    std::fs::read_to_string(path).map(|t| parse_status_ids(&t))
}

/// How the mounted `/proc` relates to the caller's PID namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProcNs {
    /// `/proc` belongs to the caller's PID namespace.
    Own,
    /// `/proc` belongs to an ancestor of the caller's PID namespace; the
    /// caller is `proc_pid` there and `pid` in its own.
    Ancestor { pid: i32, proc_pid: i32 },
    /// The caller has no pid in `/proc`'s namespace (`/proc/self` dangles).
    Unrelated,
}

/// Which PID namespace `/proc` numbers processes in, relative to the caller.
pub(crate) fn proc_ns() -> io::Result<ProcNs> {
    let own = std::process::id() as i32;
    match std::fs::read_to_string("/proc/self/status") {
        Ok(text) => {
            let ids = parse_status_ids(&text);
            match ids.nspid.as_slice() {
                [_] => Ok(ProcNs::Own),
                [first, .., last] => Ok(ProcNs::Ancestor {
                    pid: *last,
                    proc_pid: *first,
                }),
                // Linux < 4.1: no NSpid; the pid /proc/self names tells.
                [] => match ids.pid {
                    Some(p) if p != own => Ok(ProcNs::Ancestor {
                        pid: own,
                        proc_pid: p,
                    }),
                    _ => Ok(ProcNs::Own),
                },
            }
        }
        // The "self" link exists but points at no pid: /proc was mounted in a
        // namespace this process is not part of.
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                && std::fs::symlink_metadata("/proc/self").is_ok() =>
        {
            Ok(ProcNs::Unrelated)
        }
        Err(e) => Err(e),
    }
}

/// The calling process's threads: `(tid, proc_tid)` pairs, the id the
/// caller's namespace gives each thread (what `gettid()` returns) and the
/// name of its directory under `/proc/self/task`.
pub(crate) fn own_tasks() -> io::Result<Vec<(i32, i32)>> {
    let ns = proc_ns()?;
    if ns == ProcNs::Unrelated {
        return Err(unrelated());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let Ok(entry) = entry else { continue };
        let Some(proc_tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let tid = match ns {
            ProcNs::Own => proc_tid,
            _ => match read_status_ids(&format!("/proc/self/task/{proc_tid}/status")) {
                Ok(ids) => match ids.nspid.last() {
                    Some(&t) => t,
                    None => continue,
                },
                // Exited in between.
                Err(_) => continue,
            },
        };
        out.push((tid, proc_tid));
    }
    Ok(out)
}

/// The name of the calling process's thread `tid` (as `gettid()` gives it)
/// under `/proc/self/task`.
pub(crate) fn own_proc_tid(tid: i32) -> io::Result<i32> {
    match proc_ns()? {
        ProcNs::Own => Ok(tid),
        ProcNs::Unrelated => Err(unrelated()),
        ProcNs::Ancestor { .. } => own_tasks()?
            .into_iter()
            .find(|&(t, _)| t == tid)
            .map(|(_, p)| p)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no thread {tid} in this process"),
                )
            }),
    }
}

pub(crate) fn unrelated() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "/proc belongs to a PID namespace this process is not part of (/proc/self does not \
         exist): mount a /proc for this PID namespace (e.g. `unshare --pid --fork --mount-proc`)",
    )
}

/// `major.minor` of the running kernel, from `/proc/sys/kernel/osrelease`.
pub(crate) fn kernel_version() -> Option<(u32, u32)> {
    parse_kernel_version(&std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?)
}

/// `major.minor` of a release string such as `6.1.0-13-cloud-amd64`.
pub(crate) fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Whether the calling thread holds capability `cap` in its effective set
/// (`CapEff:` of `/proc/thread-self/status`); `None` if that cannot be read.
pub(crate) fn thread_has_capability(cap: u32) -> Option<bool> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    let bits = u64::from_str_radix(hex.trim(), 16).ok()?;
    Some(cap < 64 && bits & (1 << cap) != 0)
}

/// The fields of a `stat` line this crate uses.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    pub comm: String,
    pub flags: u32,
}

/// Parses a `/proc/<pid>/task/<tid>/stat` line.
///
/// `comm` (field 2) is enclosed in parentheses but may itself contain spaces
/// and parentheses, so the fields are counted after the **last** `)`: the
/// first one there is field 3 (`state`), the seventh is field 9 (`flags`).
pub(crate) fn parse_stat(raw: &[u8]) -> io::Result<Stat> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "malformed /proc stat line ({why}): {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(120)])
            ),
        )
    };
    let open = raw
        .iter()
        .position(|&b| b == b'(')
        .ok_or_else(|| bad("no '('"))?;
    let close = raw
        .iter()
        .rposition(|&b| b == b')')
        .ok_or_else(|| bad("no ')'"))?;
    if close < open {
        return Err(bad("')' before '('"));
    }
    let comm = String::from_utf8_lossy(&raw[open + 1..close]).into_owned();
    let rest = std::str::from_utf8(&raw[close + 1..]).map_err(|_| bad("not UTF-8"))?;
    let flags = rest
        .split_ascii_whitespace()
        .nth(6)
        .ok_or_else(|| bad("fewer than 9 fields"))?
        .parse::<u32>()
        .map_err(|_| bad("flags is not a number"))?;
    Ok(Stat { comm, flags })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel_version("6.1.0-13-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel_version("5.10.223\n"), Some((5, 10)));
        assert_eq!(parse_kernel_version("garbage"), None);
        assert!(kernel_version().is_some());
        assert!(thread_has_capability(0).is_some());
    }

    fn line(comm: &str, flags: u32) -> Vec<u8> {
        format!("4242 ({comm}) S 1 4242 4242 0 -1 {flags} 120 0 0 0 5 3 0 0 20 0 3 0 99 1 2")
            .into_bytes()
    }

    #[test]
    fn parses_plain_line() {
        let s = parse_stat(&line("nbd-worker", 0x0018_0040)).unwrap();
        assert_eq!(s.comm, "nbd-worker");
        assert_eq!(s.flags, 0x0018_0040);
    }

    #[test]
    fn hostile_comm_names() {
        for comm in [
            "a) b (c",
            "",
            ")))))))))))))))",
            "((((",
            ") S 1 2 3 4 5 999 ",
            "x y",
        ] {
            let s = parse_stat(&line(comm, 4_194_560)).unwrap();
            assert_eq!(s.comm, comm);
            assert_eq!(s.flags, 4_194_560, "comm {comm:?}");
        }
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        for raw in [
            &b""[..],
            b"12 comm S 1",
            b"12 (comm) S 1 2 3",
            b"12 (comm) S 1 2 3 4 5 notanumber",
            b") 12 (",
            b"12 (comm) S 1 2 3 4 5 \xff\xfe",
        ] {
            let e = parse_stat(raw).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{raw:?}");
        }
    }

    #[test]
    fn parses_identity_lines() {
        let text = "Name:\tsh\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\n\
                    Pid:\t4243\nPPid:\t1\nNSpid:\t4243\t7\nNSpgid:\t4242\t1\n";
        let ids = parse_status_ids(text);
        assert_eq!(ids.tgid, Some(4242));
        assert_eq!(ids.pid, Some(4243));
        assert_eq!(ids.nspid, [4243, 7]);
        let old_kernel = parse_status_ids("Tgid:\t5\nPid:\t5\n");
        assert!(old_kernel.nspid.is_empty());
        assert_eq!(parse_status_ids("garbage"), StatusIds::default());
    }

    #[test]
    fn own_tasks_include_the_calling_thread() {
        let me = super::super::gettid();
        let tasks = own_tasks().unwrap();
        assert!(tasks.iter().any(|&(t, _)| t == me), "{tasks:?}");
        assert!(own_proc_tid(me).is_ok());
    }
}
