//! The `reclaim-scope` binary, run as a user would run it.
//!
//! These run on any machine: `status` and `probe` need no capability, and
//! `exec` is checked against whatever the kernel answers here (developer
//! machines and CI lack CAP_SYS_RESOURCE: the warning path). That the flag
//! really reaches every thread of an exec'd daemon is proven in the VM
//! (`tests/vm_cli.rs`).
#![cfg(feature = "cli")]

use reclaim_scope::{current_tid, support, Support};
use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_reclaim-scope");
/// No pid is this large (`pid_max` is at most 2^22).
const NO_SUCH_PID: &str = "2000000000";

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run reclaim-scope")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn no_panic(o: &Output) {
    let err = text(&o.stderr);
    assert!(!err.contains("panicked"), "reclaim-scope panicked: {err}");
}

/// A thread of this test process, parked until the returned sender drops.
fn parked_thread(name: &str) -> (i32, mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (tid_tx, tid_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let h = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            tid_tx.send(current_tid()).unwrap();
            let _ = stop_rx.recv();
        })
        .unwrap();
    (tid_rx.recv().unwrap(), stop_tx, h)
}

fn refused_here() -> bool {
    support() != Support::Available
}

// ---------------------------------------------------------------------------
// status
// ---------------------------------------------------------------------------

#[test]
fn status_lists_this_process_and_its_threads() {
    let (tid, stop, h) = parked_thread("cli-status-thr");
    let pid = std::process::id().to_string();
    let o = run(&["status", &pid]);
    no_panic(&o);
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    assert!(out.starts_with(&format!("pid {pid} ")), "{out}");
    assert!(
        out.contains("TID  NOIO  NOFS  LOCAL_THROTTLE  IO_FLUSHER  NAME"),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&tid.to_string()))
        .unwrap_or_else(|| panic!("thread {tid} missing from:\n{out}"));
    assert!(row.ends_with("\"cli-status-thr\""), "{row}");
    let me = current_tid().to_string();
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().next() == Some(me.as_str())),
        "the calling thread {me} is missing:\n{out}"
    );
    // Nothing in this process sets the flag; the kernel agrees.
    let flags = reclaim_scope::ThreadFlags::current().unwrap();
    if !flags.noio() {
        assert!(row.contains(" no    no    no              no "), "{row}");
    }
    drop(stop);
    h.join().unwrap();
}

#[test]
fn status_json_parses_back_with_hostile_thread_names() {
    // A name with a quote, a backslash and control characters (15 bytes).
    let hostile = "q\"b\\s\n\t\u{1}end";
    let (tid, stop, h) = parked_thread(hostile);
    let pid = std::process::id();
    let o = run(&["status", "--json", &pid.to_string()]);
    no_panic(&o);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", text(&o.stdout)));
    let procs = v.as_array().expect("an array of processes");
    assert_eq!(procs.len(), 1);
    let p = &procs[0];
    assert_eq!(p["pid"], pid);
    assert!(p["name"].is_string());
    let threads = p["threads"].as_array().unwrap();
    let t = threads
        .iter()
        .find(|t| t["tid"] == tid)
        .unwrap_or_else(|| panic!("thread {tid} missing: {v}"));
    assert_eq!(
        t["name"], hostile,
        "the name did not survive the round trip"
    );
    for key in ["noio", "nofs", "local_throttle", "io_flusher"] {
        assert!(t[key].is_boolean(), "{key}: {t}");
    }
    let bits = t["flags"].as_u64().unwrap() as u32;
    let kernel = reclaim_scope::ThreadFlags::of_task(pid as i32, tid).unwrap();
    assert_eq!(t["noio"], kernel.noio());
    assert_eq!(bits & 0x0018_0000, kernel.bits() & 0x0018_0000);
    assert!(threads.iter().any(|t| t["tid"] == current_tid()));
    drop(stop);
    h.join().unwrap();
}

#[test]
fn status_of_a_missing_pid_is_a_clear_error() {
    let o = run(&["status", NO_SUCH_PID]);
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_eq!(
        text(&o.stderr).trim(),
        format!("reclaim-scope: no process with pid {NO_SUCH_PID}")
    );
    assert!(o.stdout.is_empty(), "{o:?}");
}

#[test]
fn status_reports_the_pids_it_can_and_fails_for_the_rest() {
    let pid = std::process::id().to_string();
    let o = run(&["status", NO_SUCH_PID, &pid, "--json"]);
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["pid"], 2_000_000_000);
    assert_eq!(
        v[0]["error"],
        format!("no process with pid {NO_SUCH_PID}"),
        "{v}"
    );
    assert!(v[0].get("threads").is_none());
    assert!(!v[1]["threads"].as_array().unwrap().is_empty());
    assert!(text(&o.stderr).contains("no process with pid"));
}

#[test]
fn status_of_a_process_that_exits() {
    // A process that has exited and been reaped is "no process".
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id().to_string();
    child.wait().unwrap();
    let o = run(&["status", &pid]);
    no_panic(&o);
    // The pid may have been reused in between; either way no panic, and a
    // failure says why.
    if !o.status.success() {
        assert_eq!(o.status.code(), Some(1));
        assert!(text(&o.stderr).contains(&format!("pid {pid}")), "{o:?}");
    }
}

// ---------------------------------------------------------------------------
// exec
// ---------------------------------------------------------------------------

const WARNING: &str = "reclaim-scope: warning: running `";

#[test]
fn exec_true_warns_once_without_capability_and_succeeds() {
    let o = run(&["exec", "--", "/bin/true"]);
    no_panic(&o);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let err = text(&o.stderr);
    if refused_here() {
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with(WARNING), "{err}");
        assert!(err.contains("WITHOUT the I/O-flusher flag"), "{err}");
        assert!(err.contains("CAP_SYS_RESOURCE"), "{err}");
    } else {
        assert!(err.is_empty(), "{err}");
    }
}

#[test]
fn exec_strict_refuses_with_its_own_code() {
    let o = run(&["exec", "--strict", "--", "sh", "-c", "echo ran"]);
    no_panic(&o);
    if refused_here() {
        assert_eq!(o.status.code(), Some(125), "{o:?}");
        assert!(o.stdout.is_empty(), "the command ran: {o:?}");
        let err = text(&o.stderr);
        assert!(
            err.starts_with("reclaim-scope: error: not running `sh` (--strict): "),
            "{err}"
        );
        assert!(err.contains("CAP_SYS_RESOURCE"), "{err}");
    } else {
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        assert_eq!(text(&o.stdout), "ran\n");
    }
}

#[test]
fn exec_of_a_missing_command_is_127() {
    let o = run(&["exec", "--", "reclaim-scope-test-no-such-command"]);
    no_panic(&o);
    assert_eq!(o.status.code(), Some(127), "{o:?}");
    let err = text(&o.stderr);
    assert!(
        err.lines().last().unwrap().starts_with(
            "reclaim-scope: command not found: `reclaim-scope-test-no-such-command`: "
        ),
        "{err}"
    );
    let o = run(&["exec", "/nonexistent/dir/daemon"]);
    assert_eq!(o.status.code(), Some(127), "{o:?}");
}

#[test]
fn exec_of_a_non_executable_is_126() {
    let dir = std::env::temp_dir().join(format!("reclaim-scope-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("not-executable");
    std::fs::write(&file, "#!/bin/sh\necho ran\n").unwrap();
    for target in [&file, &dir] {
        let o = run(&["exec", "--", target.to_str().unwrap()]);
        no_panic(&o);
        assert_eq!(o.status.code(), Some(126), "{} {o:?}", target.display());
        assert!(o.stdout.is_empty());
        let err = text(&o.stderr);
        assert!(
            err.lines()
                .last()
                .unwrap()
                .starts_with("reclaim-scope: cannot execute: `"),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exec_passes_exit_status_argv_and_environment_through() {
    let o = run(&["exec", "--", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");

    let args = ["a", "b c", "--strict", "-x", "", "--", "ü\\\""];
    let mut cmd = vec![
        "exec",
        "--",
        "sh",
        "-c",
        r#"printf '<%s>\n' "$0" "$@""#,
        "name0",
    ];
    cmd.extend(args);
    let o = run(&cmd);
    assert!(o.status.success(), "{o:?}");
    let expected: String = std::iter::once("name0")
        .chain(args)
        .map(|a| format!("<{a}>\n"))
        .collect();
    assert_eq!(text(&o.stdout), expected);

    // PATH lookup and the environment, unchanged.
    let o = Command::new(BIN)
        .args(["exec", "printenv", "RECLAIM_SCOPE_CLI_TEST"])
        .env("RECLAIM_SCOPE_CLI_TEST", "x y=z")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(text(&o.stdout), "x y=z\n");
}

#[test]
fn exec_replaces_the_process_and_signals_are_the_commands_own() {
    // Same pid: exec, not spawn.
    let child = Command::new(BIN)
        .args(["exec", "--", "sh", "-c", "echo $$"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(text(&o.stdout).trim(), pid.to_string());

    // Killed by a signal: the launcher's status is that signal.
    let o = run(&["exec", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(o.status.signal(), Some(libc::SIGTERM), "{o:?}");

    // Signal dispositions are not changed on the way (Rust ignores SIGPIPE
    // in its own process; the command must get the default back).
    let ignored = |o: Output| {
        text(&o.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .map(|v| v.trim().to_owned())
            .expect("SigIgn line")
    };
    let script = "grep SigIgn /proc/self/status";
    let direct = Command::new("sh").args(["-c", script]).output().unwrap();
    let launched = run(&["exec", "--", "sh", "-c", script]);
    assert_eq!(ignored(launched), ignored(direct));
}

// ---------------------------------------------------------------------------
// probe, usage
// ---------------------------------------------------------------------------

#[test]
fn probe_reports_kernel_capability_support_and_fix() {
    let o = run(&["probe"]);
    no_panic(&o);
    let out = text(&o.stdout);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(
        out.lines()
            .next()
            .unwrap()
            .starts_with(&format!("kernel:             {}", release.trim())),
        "{out}"
    );
    assert!(out.contains("CAP_SYS_RESOURCE:   "), "{out}");
    let set_line = out
        .lines()
        .find(|l| l.starts_with("PR_SET_IO_FLUSHER:  "))
        .unwrap_or_else(|| panic!("no PR_SET_IO_FLUSHER line: {out}"));
    if refused_here() {
        // The real errno the setter answered here (no capability: EPERM).
        assert_eq!(
            set_line,
            "PR_SET_IO_FLUSHER:  refused with EPERM (Operation not permitted)"
        );
    } else {
        assert_eq!(set_line, "PR_SET_IO_FLUSHER:  available");
    }
    // Compared by inode with the kernel's fixed number for the initial one.
    let user_ns = std::fs::read_link("/proc/self/ns/user").unwrap();
    let initial = user_ns.to_str() == Some("user:[4026531837]");
    assert!(
        out.contains(&format!(
            "user namespace:     {}",
            if initial {
                "initial"
            } else {
                "not the initial one"
            }
        )),
        "{out}"
    );
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_owned()))
        .unwrap();
    assert!(out.contains(&format!("(CapEff {cap_eff})")), "{out}");
    let has_cap = u64::from_str_radix(&cap_eff, 16).unwrap() & (1 << 24) != 0;
    assert_eq!(out.contains("NOT in the effective set"), !has_cap, "{out}");
    if refused_here() {
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        assert!(out.contains("fix:"), "{out}");
        assert!(
            out.contains("AmbientCapabilities=CAP_SYS_RESOURCE"),
            "{out}"
        );
    } else {
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        assert!(!out.contains("fix:"), "{out}");
    }
}

#[test]
fn argument_errors_exit_2_with_usage() {
    for args in [
        &[][..],
        &["status"],
        &["status", "abc"],
        &["status", "0"],
        &["status", "-5"],
        &["exec"],
        &["exec", "--strict"],
        &["frobnicate"],
        &["probe", "extra"],
    ] {
        let o = run(args);
        no_panic(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(o.stdout.is_empty(), "{args:?}");
        let err = text(&o.stderr);
        assert!(
            err.starts_with("error: ") || err.contains("Usage: reclaim-scope"),
            "{args:?}: {err}"
        );
    }
    let o = run(&["status", "abc"]);
    assert!(text(&o.stderr).contains("invalid value 'abc' for '<PID>...'"));
}

#[test]
fn help_documents_exit_codes() {
    for args in [&["--help"][..], &["exec", "--help"], &["help", "status"]] {
        let o = run(args);
        assert!(o.status.success(), "{args:?}: {o:?}");
        let out = text(&o.stdout);
        for needle in ["Exit status:", "125", "126", "127", "usage error"] {
            assert!(out.contains(needle), "{args:?}: {needle:?} missing:\n{out}");
        }
    }
    let o = run(&["exec", "--help"]);
    let out = text(&o.stdout);
    assert!(out.contains("--strict"), "{out}");
    assert!(out.contains("never adds or raises capabilities"), "{out}");
}
