//! The library's once-per-process degradation report never panics, whatever
//! standard error is: a full device, a pipe whose reader is gone (std
//! ignores SIGPIPE, so the write answers EPIPE), or closed. `eprintln!`
//! panics on the first two; a best-effort guard promises never to fail.
//!
//! The refusal is made certain with a seccomp filter on the scope's thread
//! (EPERM for the io-flusher prctls), so this holds with or without
//! CAP_SYS_RESOURCE.

#[path = "support/seccomp.rs"]
mod seccomp;

use std::process::{Command, Stdio};

const HELPER_ENV: &str = "RECLAIM_SCOPE_REPORT_HELPER";
const TEST: &str = "a_refused_scope_with_stderr_gone_does_not_panic";

#[test]
fn a_refused_scope_with_stderr_gone_does_not_panic() {
    if std::env::var_os(HELPER_ENV).is_some() {
        let effective = seccomp::with_refused_prctl(libc::EPERM, || {
            let scope = reclaim_scope::NoFsScope::enter();
            scope.is_effective()
        });
        assert!(!effective, "the filter should refuse the scope");
        let err = reclaim_scope::degradation().expect("the refusal is remembered");
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        println!("HELPER-DONE");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for stderr in ["/dev/full", "broken-pipe", "closed"] {
        let mut cmd = if stderr == "closed" {
            let mut c = Command::new("sh");
            c.args(["-c", "exec \"$0\" \"$@\" 2>&-"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(HELPER_ENV, "1")
            .stdout(Stdio::piped());
        let out = match stderr {
            "/dev/full" => {
                cmd.stderr(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open("/dev/full")
                        .unwrap(),
                );
                cmd.output().unwrap()
            }
            "broken-pipe" => {
                // Closed before the child starts: every write is EPIPE.
                let (read_end, write_end) = nix::unistd::pipe().unwrap();
                drop(read_end);
                cmd.stderr(Stdio::from(write_end));
                cmd.output().unwrap()
            }
            _ => cmd.output().unwrap(),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "stderr {stderr}: {out:?}");
        assert!(stdout.contains("HELPER-DONE"), "stderr {stderr}: {stdout}");
        assert!(stdout.contains("1 passed"), "stderr {stderr}: {stdout}");
    }
}
