//! Once-per-process reporting of a best-effort scope that could not take
//! effect.
//!
//! Projects that only logged a failed `PR_SET_IO_FLUSHER` at every call
//! buried it in noise, and projects that ignored it ran unprotected for
//! years. Here the first degradation is reported once — through the
//! [`log`](https://docs.rs/log) crate when the `log` feature is on, else on
//! standard error, or through a hook you install — and stays queryable with
//! [`degradation`]. The report never panics: a standard error that is full,
//! a broken pipe or closed loses the line, nothing else.

use crate::Error;
use std::sync::OnceLock;

type Hook = Box<dyn Fn(&Error) + Send + Sync + 'static>;

/// The first degradation and the hook that hears about it.
pub(crate) struct Reporter {
    first: OnceLock<Error>,
    hook: OnceLock<Hook>,
}

impl Reporter {
    pub(crate) const fn new() -> Self {
        Reporter {
            first: OnceLock::new(),
            hook: OnceLock::new(),
        }
    }

    /// Records `err`; the first one recorded is passed to the hook (or the
    /// default reporter), every later one is dropped silently.
    pub(crate) fn degraded(&self, err: &Error, default: impl FnOnce(&Error)) {
        if self.first.get().is_some() {
            return;
        }
        if self.first.set(err.clone()).is_ok() {
            match self.hook.get() {
                Some(hook) => hook(err),
                None => default(err),
            }
        }
    }

    pub(crate) fn first(&self) -> Option<Error> {
        self.first.get().cloned()
    }

    pub(crate) fn set_hook(&self, hook: Hook) -> Result<(), Hook> {
        self.hook.set(hook)
    }
}

static REPORTER: Reporter = Reporter::new();

pub(crate) fn degraded(err: &Error) {
    REPORTER.degraded(err, default_report);
}

/// [`degraded`] for a remembered refusal: builds the error only if it is
/// the first to report.
#[inline]
pub(crate) fn degraded_errno(op: &'static str, errno: i32) {
    if REPORTER.first.get().is_none() {
        degraded(&Error::from_errno(op, errno));
    }
}

#[cold]
fn default_report(err: &Error) {
    cfg_if::cfg_if! {
        if #[cfg(feature = "log")] {
            log::warn!(
                target: "reclaim_scope",
                "I/O-flusher context not in effect, allocations may recurse into \
                 file-system reclaim: {err} (reported once per process)"
            );
        } else {
            let line = format!(
                "reclaim-scope: warning: I/O-flusher context not in effect, allocations \
                 may recurse into file-system reclaim: {err} (reported once per process; \
                 see reclaim_scope::set_degradation_hook)\n"
            );
            write_best_effort(&mut std::io::stderr().lock(), &line);
        }
    }
}

/// Writes `line` in one call where it fits and ignores any error: the
/// report must not panic (as `eprintln!` does) when standard error is a
/// closed pipe, a full device or gone, since a best-effort guard promises
/// never to fail. A short first write (a signal, a nearly full pipe) is
/// completed by `write_all`.
#[cfg_attr(feature = "log", allow(dead_code))]
fn write_best_effort(w: &mut impl std::io::Write, line: &str) {
    let _ = w.write_all(line.as_bytes()).and_then(|()| w.flush());
}

/// The first error that made a best-effort scope ineffective in this
/// process, if any.
///
/// Best-effort guards ([`NoFsScope::enter`](crate::NoFsScope::enter),
/// [`IoFlusher::enter`](crate::IoFlusher::enter), [`NoFsScope::run`](crate::NoFsScope::run))
/// never fail; this is how a daemon asks afterwards, e.g. for a health
/// endpoint, whether it ran protected.
///
/// # Examples
///
/// ```
/// let _scope = reclaim_scope::NoFsScope::enter();
/// if let Some(err) = reclaim_scope::degradation() {
///     assert!(!_scope.is_effective());
///     println!("running without protection: {err}");
/// }
/// ```
pub fn degradation() -> Option<Error> {
    REPORTER.first()
}

/// Installs the function that hears about the first degradation instead of
/// the default report (a `log::warn!` with the `log` feature, else a line on
/// standard error).
///
/// The hook is called at most once per process, on the thread whose scope
/// failed, with no lock held. Install it early (before the first scope): a
/// degradation that happened before was reported the default way.
///
/// # Errors
///
/// [`HookAlreadySet`] if a hook was installed already (the first one stays).
///
/// # Examples
///
/// ```
/// let installed = reclaim_scope::set_degradation_hook(|err| {
///     // Route it to your own logger or metrics.
///     eprintln!("storage daemon is unprotected: {err}");
/// });
/// assert!(installed.is_ok());
/// assert_eq!(
///     reclaim_scope::set_degradation_hook(|_| {}),
///     Err(reclaim_scope::HookAlreadySet)
/// );
/// ```
pub fn set_degradation_hook(
    hook: impl Fn(&Error) + Send + Sync + 'static,
) -> Result<(), HookAlreadySet> {
    REPORTER
        .set_hook(Box::new(hook))
        .map_err(|_| HookAlreadySet)
}

/// [`set_degradation_hook`] was called when a hook was installed already;
/// the first hook stays installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HookAlreadySet;

impl std::fmt::Display for HookAlreadySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a degradation hook is installed already")
    }
}

impl std::error::Error for HookAlreadySet {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn reports_once_and_remembers_the_first() {
        let r = Reporter::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        r.set_hook(Box::new(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        }))
        .ok()
        .unwrap();
        let eperm = Error::from_errno("prctl(PR_SET_IO_FLUSHER)", sys::EPERM);
        let einval = Error::from_errno("prctl(PR_SET_IO_FLUSHER)", sys::EINVAL);
        assert_eq!(r.first(), None);
        for _ in 0..100 {
            r.degraded(&eperm, |_| panic!("hook installed: default must not run"));
        }
        r.degraded(&einval, |_| panic!("hook installed: default must not run"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(r.first(), Some(eperm));
    }

    #[test]
    fn default_runs_once_without_hook() {
        let r = Reporter::new();
        let mut n = 0;
        let e = Error::from_errno("prctl(PR_SET_IO_FLUSHER)", sys::EPERM);
        r.degraded(&e, |_| n += 1);
        r.degraded(&e, |_| unreachable!("reported twice"));
        assert_eq!(n, 1);
    }

    /// A writer that fails every call, like stderr on /dev/full or a pipe
    /// whose reader is gone.
    struct Broken;

    impl std::io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc::EPIPE))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        }
    }

    #[test]
    fn best_effort_write_ignores_errors() {
        write_best_effort(&mut Broken, "lost\n");
        let mut v = Vec::new();
        write_best_effort(&mut v, "kept\n");
        assert_eq!(v, b"kept\n");
    }

    #[test]
    fn second_hook_is_refused() {
        let r = Reporter::new();
        assert!(r.set_hook(Box::new(|_| {})).is_ok());
        assert!(r.set_hook(Box::new(|_| {})).is_err());
    }
}
