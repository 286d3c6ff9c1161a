//! The caller's credentials for requests that create a file: the serving
//! thread's file-system uid and gid are switched to the requester's for the
//! one system call, so the source file system itself sets the owner (and
//! applies its own rules: the group of a set-group-ID directory, its
//! default ACL, quotas charged to the right user).
//!
//! `setfsuid(2)`/`setfsgid(2)` change the calling *thread* only (glibc does
//! not broadcast them to the other threads, unlike `setresuid`), so each
//! serving thread switches for its own request; this is virtiofsd's
//! approach. A thread whose fsuid is not 0 loses the file-system
//! capabilities (`CAP_DAC_OVERRIDE`, `CAP_FOWNER`, `CAP_CHOWN`,
//! `CAP_MKNOD`, ...) until it switches back, so the source checks the
//! requester's permission on the parent directory as a local file system
//! would.
//!
//! The requester's supplementary groups are switched too (the kernel's
//! `default_permissions` check counted them): FUSE requests carry only
//! the uid, gid and pid, so they are read from `/proc/<pid>/status`
//! (`Groups:`, the requesting thread's own, as libfuse's
//! `fuse_req_getgroups`) and set on the serving thread alone with the raw
//! `setgroups(2)` system call (rustix's `set_thread_groups`; glibc's
//! `setgroups` would change every thread of the daemon). A requester that
//! is gone by then (or a kernel-internal request, pid 0) gets no
//! supplementary groups: the source may refuse what only a group allowed,
//! never allow more.

use nix::unistd::{setfsgid, setfsuid, Gid, Uid};

/// Restores the thread's fsuid and fsgid on drop.
#[must_use = "the credentials are switched back when this is dropped"]
pub struct AsCaller {
    uid: Option<Uid>,
    gid: Option<Gid>,
    /// The thread's supplementary groups before the switch.
    groups: Option<Vec<rustix::thread::Gid>>,
}

/// The supplementary groups of thread `pid` (a FUSE request's pid is the
/// requesting thread's id), from `/proc/<pid>/status`; empty if it is gone.
fn groups_of(pid: u32) -> Vec<rustix::thread::Gid> {
    if pid == 0 {
        return Vec::new();
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .map(rustix::thread::Gid::from_raw)
                .collect()
        })
        .unwrap_or_default()
}

/// The calling thread's supplementary groups.
fn thread_groups() -> Result<Vec<rustix::thread::Gid>, fuser::Errno> {
    let g = nix::unistd::getgroups().map_err(|e| fuser::Errno::from_i32(e as i32))?;
    Ok(g.into_iter()
        .map(|g| rustix::thread::Gid::from_raw(g.as_raw()))
        .collect())
}

/// The thread's current fsuid (`setfsuid(-1)` changes nothing and answers
/// the current value).
fn fsuid() -> Uid {
    setfsuid(Uid::from_raw(u32::MAX))
}

fn fsgid() -> Gid {
    setfsgid(Gid::from_raw(u32::MAX))
}

impl AsCaller {
    /// Switches the calling thread to the credentials of the request
    /// `req`: its uid and gid for file-system checks and the supplementary
    /// groups of its thread. `EPERM` if the daemon may not (it lacks
    /// `CAP_SETUID`/`CAP_SETGID` and serves someone else).
    pub fn of(req: &fuser::Request) -> Result<AsCaller, fuser::Errno> {
        AsCaller::switch(req.uid(), req.gid(), req.pid())
    }

    /// Switches the calling thread to `uid`/`gid` and the supplementary
    /// groups of thread `pid`.
    pub fn switch(uid: u32, gid: u32, pid: u32) -> Result<AsCaller, fuser::Errno> {
        let mut g = AsCaller {
            uid: None,
            gid: None,
            groups: None,
        };
        let groups = groups_of(pid);
        let before = thread_groups()?;
        if groups != before {
            rustix::thread::set_thread_groups(&groups)
                .map_err(|e| fuser::Errno::from_i32(e.raw_os_error()))?;
            g.groups = Some(before);
        }
        // The group first: with a non-zero fsuid the thread keeps
        // CAP_SETGID (not a file-system capability), but there is no reason
        // to rely on it.
        let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
        if fsgid() != gid {
            g.gid = Some(setfsgid(gid));
            if fsgid() != gid {
                return Err(fuser::Errno::EPERM);
            }
        }
        if fsuid() != uid {
            g.uid = Some(setfsuid(uid));
            if fsuid() != uid {
                return Err(fuser::Errno::EPERM);
            }
        }
        Ok(g)
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        if let Some(uid) = self.uid.take() {
            setfsuid(uid);
        }
        if let Some(gid) = self.gid.take() {
            setfsgid(gid);
        }
        if let Some(groups) = self.groups.take() {
            // Back to the daemon's own: cannot fail for groups it had.
            let _ = rustix::thread::set_thread_groups(&groups);
        }
    }
}
