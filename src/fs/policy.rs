//! [`NoFsPolicy`]: what a [`NoFsFile`](super::NoFsFile) call does when the
//! I/O-flusher context cannot be entered, and the process default.

#[cfg(doc)]
use super::NoFsFile;
use std::sync::atomic::AtomicU8;

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
/// # Examples
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
    /// per process (like [`NoFsScope::enter`](crate::NoFsScope::enter)).
    #[default]
    BestEffort,
    /// Fail the call without doing any I/O (like [`NoFsScope::try_enter`](crate::NoFsScope::try_enter)):
    /// the error has kind `PermissionDenied` or `Unsupported` and names the
    /// fix.
    Strict,
}

/// The process default, as `NoFsPolicy as u8`.
pub(super) static DEFAULT_POLICY: AtomicU8 = AtomicU8::new(0);

pub(super) const POLICY_UNSET: u8 = u8::MAX;

pub(super) fn policy_to_u8(p: NoFsPolicy) -> u8 {
    match p {
        NoFsPolicy::BestEffort => 0,
        NoFsPolicy::Strict => 1,
    }
}

pub(super) fn policy_from_u8(v: u8) -> NoFsPolicy {
    if v == 1 {
        NoFsPolicy::Strict
    } else {
        NoFsPolicy::BestEffort
    }
}
