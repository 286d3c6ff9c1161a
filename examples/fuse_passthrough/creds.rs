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
//! Limitation: supplementary groups stay the daemon's (changing them is
//! process-wide through glibc's `setgroups`), so a requester whose write
//! permission on the parent directory comes only from a supplementary group
//! is refused by the source although the kernel's `default_permissions`
//! check allowed it.

use nix::unistd::{setfsgid, setfsuid, Gid, Uid};

/// Restores the thread's fsuid and fsgid on drop.
#[must_use = "the credentials are switched back when this is dropped"]
pub struct AsCaller {
    uid: Option<Uid>,
    gid: Option<Gid>,
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
    /// Switches the calling thread to `uid`/`gid` for file-system checks.
    /// `EPERM` if the daemon may not (it lacks `CAP_SETUID`/`CAP_SETGID`
    /// and serves someone else).
    pub fn switch(uid: u32, gid: u32) -> Result<AsCaller, fuser::Errno> {
        let mut g = AsCaller {
            uid: None,
            gid: None,
        };
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
    }
}
