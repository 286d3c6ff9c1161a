//! `reclaim-scope probe`: whether this process may set the flag, and when it
//! may not, which of capability, user namespace, kernel, seccomp or LSM says no.

use super::*;

/// `CAP_SYS_RESOURCE` from `<linux/capability.h>`.
const CAP_SYS_RESOURCE: u32 = 24;
/// The inode number the kernel gives the initial user namespace
/// (`PROC_USER_INIT_INO` in `<linux/proc_ns.h>`), fixed since Linux 3.8.
const PROC_USER_INIT_INO: u64 = 0xEFFF_FFFD;

/// What this process is allowed, as far as a refusal's diagnosis needs it.
pub(crate) struct Here {
    release: String,
    kernel: Option<(u32, u32)>,
    cap_eff: io::Result<u64>,
    /// The user namespace's inode (`/proc/self/ns/user`).
    user_ns: io::Result<u64>,
    /// `Seccomp:` of /proc/self/status (0 none, 1 strict, 2 filter) and
    /// `Seccomp_filters:` (Linux ≥ 5.9).
    seccomp: Option<(u32, Option<u32>)>,
    /// The LSM's label of this process (`/proc/self/attr/current`), if one
    /// confines it.
    lsm: Option<String>,
}

impl Here {
    pub(crate) fn read() -> Here {
        use std::os::unix::fs::MetadataExt;
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|e| format!("unknown ({e})"));
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let cap_eff = field("CapEff")
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "no CapEff in /proc/self/status")
            });
        let seccomp = field("Seccomp")
            .and_then(|v| v.parse().ok())
            .map(|mode| (mode, field("Seccomp_filters").and_then(|v| v.parse().ok())));
        let lsm = std::fs::read_to_string("/proc/self/attr/current")
            .ok()
            .map(|l| l.trim_end_matches(['\0', '\n']).to_owned())
            .filter(|l| !l.is_empty() && l != "unconfined" && !l.starts_with("kernel"));
        Here {
            kernel: kernel_version(&release),
            release,
            cap_eff,
            user_ns: std::fs::metadata("/proc/self/ns/user").map(|m| m.ino()),
            seccomp,
            lsm,
        }
    }

    fn has_cap(&self) -> bool {
        self.cap_eff
            .as_ref()
            .is_ok_and(|c| c & (1 << CAP_SYS_RESOURCE) != 0)
    }

    fn initial_user_ns(&self) -> Option<bool> {
        self.user_ns.as_ref().ok().map(|&i| i == PROC_USER_INIT_INO)
    }

    fn new_kernel(&self) -> bool {
        self.kernel.is_some_and(|v| v >= (5, 6))
    }

    fn seccomp_filter(&self) -> Option<String> {
        match self.seccomp {
            Some((2, Some(n))) => Some(format!(
                "a seccomp filter ({n} installed; Seccomp: 2 in /proc/self/status)"
            )),
            Some((2, None)) => Some("a seccomp filter (Seccomp: 2 in /proc/self/status)".into()),
            Some((1, _)) => Some("seccomp strict mode".into()),
            _ => None,
        }
    }

    /// Who else than the capability check can refuse: the seccomp filter
    /// and LSM found, or both named as possibilities.
    fn blockers(&self) -> String {
        match (self.seccomp_filter(), &self.lsm) {
            (Some(f), Some(l)) => format!("{f} or the LSM confining this process (`{l}`)"),
            (Some(f), None) => f,
            (None, Some(l)) => format!("the LSM confining this process (`{l}`)"),
            (None, None) => "a seccomp filter or an LSM (AppArmor, SELinux)".into(),
        }
    }
}

/// `EPERM (Operation not permitted)`.
pub(crate) fn errno_text(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ENOSYS => "ENOSYS",
        libc::EINVAL => "EINVAL",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        _ => return format!("errno {errno} ({})", strerror(errno)),
    };
    format!("{name} ({})", strerror(errno))
}

fn strerror(errno: i32) -> String {
    let s = io::Error::from_raw_os_error(errno).to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// The diagnosis of a refused `prctl(PR_SET_IO_FLUSHER)` when the plain
/// reading of its errno (EPERM: no capability, EINVAL: kernel < 5.6) is
/// wrong or incomplete; `None` when the library's message is right.
pub(crate) fn diagnose(errno: i32, here: &Here) -> Option<String> {
    let op = "prctl(PR_SET_IO_FLUSHER)";
    match errno {
        libc::EPERM if !here.has_cap() => here.seccomp_filter().map(|f| {
            format!(
                "{op} needs CAP_SYS_RESOURCE, which this process lacks (and {f} is installed, \
                 which may refuse it too); grant the capability: AmbientCapabilities= in a \
                 systemd unit, `--cap-add SYS_RESOURCE` for a container"
            )
        }),
        libc::EPERM if here.initial_user_ns() == Some(false) => Some(format!(
            "{op} needs CAP_SYS_RESOURCE in the initial user namespace; this process holds it \
             only inside its own user namespace (a rootless container, systemd PrivateUsers=): \
             run the daemon in a container started by root with `--cap-add SYS_RESOURCE`, or \
             outside the user namespace"
        )),
        libc::EPERM if here.new_kernel() => Some(format!(
            "{op} was refused although CAP_SYS_RESOURCE is in the effective set in the initial \
             user namespace, on a kernel that has it: {} refused it; allow prctl option 57 \
             (PR_SET_IO_FLUSHER) in the filter or policy",
            here.blockers()
        )),
        libc::EINVAL if here.new_kernel() => Some(format!(
            "{op} answered EINVAL although Linux {} has it (5.6): {} returning EINVAL, or a \
             kernel built without it",
            here.release,
            here.seccomp_filter()
                .unwrap_or_else(|| "a seccomp filter".to_owned())
        )),
        libc::EINVAL => None,
        libc::ENOSYS => Some(format!(
            "{op} answered ENOSYS, which prctl(2) never does by itself: {} blocks it; allow \
             prctl option 57 (PR_SET_IO_FLUSHER) in the filter",
            here.seccomp_filter()
                .unwrap_or_else(|| "a seccomp filter".to_owned())
        )),
        libc::EACCES => Some(format!(
            "{op} answered EACCES, which the capability check never does: {} refused it; allow \
             prctl option 57 (PR_SET_IO_FLUSHER) in the filter or policy",
            here.blockers()
        )),
        _ => Some(format!(
            "{op} failed with {}: not the capability check (EPERM) nor an old kernel (EINVAL); \
             {} may be involved",
            errno_text(errno),
            here.blockers()
        )),
    }
}

/// `(major, minor)` of a kernel release such as `6.1.0-13-cloud-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

pub(crate) fn probe() -> u8 {
    use std::fmt::Write as _;
    let here = Here::read();
    let mut s = String::new();
    let kernel_note = match here.kernel {
        Some(v) if v >= (5, 8) => "has PR_SET_IO_FLUSHER (5.6) and PF_LOCAL_THROTTLE (5.8)",
        Some(v) if v >= (5, 6) => "has PR_SET_IO_FLUSHER but not PF_LOCAL_THROTTLE (5.8)",
        Some(_) => "too old: PR_SET_IO_FLUSHER needs Linux 5.6",
        None => "version not recognised",
    };
    let _ = writeln!(s, "kernel:             {} ({kernel_note})", here.release);
    let has_cap = here.has_cap();
    let _ = match &here.cap_eff {
        Ok(c) => writeln!(
            s,
            "CAP_SYS_RESOURCE:   {} (CapEff {c:016x})",
            if has_cap {
                "in the effective set"
            } else {
                "NOT in the effective set"
            }
        ),
        Err(e) => writeln!(s, "CAP_SYS_RESOURCE:   unknown ({e})"),
    };
    let _ = match (&here.user_ns, here.initial_user_ns()) {
        (Ok(ino), Some(true)) => writeln!(s, "user namespace:     initial (user:[{ino}])"),
        (Ok(ino), _) => writeln!(
            s,
            "user namespace:     not the initial one (user:[{ino}]; a container, systemd \
             PrivateUsers=?): capabilities held here do not count for PR_SET_IO_FLUSHER"
        ),
        (Err(e), _) => writeln!(s, "user namespace:     unknown (/proc/self/ns/user: {e})"),
    };
    let _ = match (here.seccomp_filter(), here.seccomp) {
        (Some(f), _) => writeln!(s, "seccomp:            {f}"),
        (None, Some(_)) => writeln!(s, "seccomp:            none"),
        (None, None) => writeln!(s, "seccomp:            unknown (no Seccomp: line)"),
    };
    let _ = match &here.lsm {
        Some(l) => writeln!(s, "LSM label:          {l}"),
        None => writeln!(s, "LSM label:          none (unconfined)"),
    };
    match pid_namespace() {
        Ok(PidNamespace::Own) => {}
        Ok(other) => {
            let _ = writeln!(s, "/proc:              {other}");
        }
        Err(e) => {
            let _ = writeln!(s, "/proc:              unreadable ({e})");
        }
    }
    // Ask with the setter, setting the state the thread has already (so
    // nothing changes): a filter may treat PR_SET and PR_GET differently,
    // and `exec` uses the setter.
    let before = ThreadFlags::current();
    let set = reclaim_scope::set_thread_io_flusher(before.as_ref().is_ok_and(|f| f.noio()));
    let refusal = set.as_ref().err().and_then(|e| e.raw_os_error());
    let _ = match (&set, refusal) {
        (Ok(()), _) => writeln!(s, "PR_SET_IO_FLUSHER:  available"),
        (Err(_), Some(errno)) => {
            writeln!(s, "PR_SET_IO_FLUSHER:  refused with {}", errno_text(errno))
        }
        (Err(e), None) => writeln!(s, "PR_SET_IO_FLUSHER:  refused: {e}"),
    };
    // What the library's support() (PR_GET_IO_FLUSHER) concludes, where a
    // filter treats the getter differently.
    let sup = support();
    if sup.is_available() != set.is_ok() {
        let _ = writeln!(s, "PR_GET_IO_FLUSHER:  {sup}");
    }
    let _ = match before {
        Ok(f) => writeln!(s, "this process:       {f}"),
        Err(e) => writeln!(s, "this process:       unknown ({e})"),
    };
    let code = match (&set, refusal) {
        (Ok(()), _) => {
            let _ = writeln!(
                s,
                "ok:                 `reclaim-scope exec -- DAEMON ARGS...` runs DAEMON and every \
                 thread it creates as an I/O flusher"
            );
            EXIT_OK
        }
        (Err(e), errno) => {
            match errno.and_then(|n| diagnose(n, &here)) {
                Some(d) => {
                    let _ = writeln!(s, "fix:                {d}");
                }
                None => {
                    let _ = writeln!(s, "fix:                {e}");
                }
            }
            if errno == Some(libc::EPERM) && !has_cap {
                let _ = writeln!(
                    s,
                    "                    systemd: AmbientCapabilities=CAP_SYS_RESOURCE and \
                     ExecStart=/usr/local/bin/reclaim-scope exec -- DAEMON ARGS..."
                );
            }
            EXIT_FAILURE
        }
    };
    match emit(&s) {
        Ok(()) => code,
        Err(c) => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here(cap: bool, user_ns: u64, kernel: (u32, u32), seccomp: u32) -> Here {
        Here {
            release: format!("{}.{}.0", kernel.0, kernel.1),
            kernel: Some(kernel),
            cap_eff: Ok(if cap { 1 << CAP_SYS_RESOURCE } else { 0 }),
            user_ns: Ok(user_ns),
            seccomp: Some((seccomp, Some(u32::from(seccomp == 2)))),
            lsm: None,
        }
    }

    #[test]
    fn refusals_are_diagnosed_by_errno_and_context() {
        let init = PROC_USER_INIT_INO;
        // The library's messages are right: no capability, old kernel.
        assert_eq!(diagnose(libc::EPERM, &here(false, init, (6, 1), 0)), None);
        assert_eq!(diagnose(libc::EINVAL, &here(true, init, (5, 4), 0)), None);
        // No capability, but a filter too: both named.
        let d = diagnose(libc::EPERM, &here(false, init, (6, 1), 2)).unwrap();
        assert!(
            d.contains("lacks") && d.contains("seccomp filter (1 installed"),
            "{d}"
        );
        // Capability only in a user namespace (an identity uid_map or not).
        let d = diagnose(libc::EPERM, &here(true, 4026532000, (6, 1), 0)).unwrap();
        assert!(d.contains("only inside its own user namespace"), "{d}");
        // Capability held where it counts: a filter or an LSM.
        let d = diagnose(libc::EPERM, &here(true, init, (6, 1), 0)).unwrap();
        assert!(
            d.contains("although CAP_SYS_RESOURCE") && d.contains("an LSM"),
            "{d}"
        );
        let d = diagnose(libc::ENOSYS, &here(false, init, (6, 1), 2)).unwrap();
        assert!(d.contains("ENOSYS") && d.contains("seccomp filter"), "{d}");
        let d = diagnose(libc::EACCES, &here(true, init, (6, 1), 0)).unwrap();
        assert!(d.contains("EACCES") && d.contains("LSM"), "{d}");
        let d = diagnose(libc::EINVAL, &here(true, init, (6, 1), 2)).unwrap();
        assert!(d.contains("EINVAL although Linux 6.1.0 has it"), "{d}");
        assert_eq!(
            errno_text(libc::ENOSYS),
            "ENOSYS (Function not implemented)"
        );
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.1.0-13-cloud-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.10.200"), Some((5, 10)));
        assert_eq!(kernel_version("4.19"), Some((4, 19)));
        assert_eq!(kernel_version("garbage"), None);
    }
}
