//! The `reclaim-scope` binary, run as a user would run it.
//!
//! These run on any machine: `status` and `probe` need no capability, and
//! `exec` is checked against whatever the kernel answers here (developer
//! machines and CI lack CAP_SYS_RESOURCE: the warning path). That the flag
//! really reaches every thread of an exec'd daemon is proven in the VM
//! (`tests/vm_cli.rs`).
#![cfg(feature = "cli")]

use reclaim_scope::{proc::current_tid, support, Support};
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
    let flags = reclaim_scope::proc::ThreadFlags::current().unwrap();
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
    let kernel = reclaim_scope::proc::ThreadFlags::of_task(pid as i32, tid).unwrap();
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
    // The program's help lists every status; each subcommand's only its own.
    let cases: &[(&[&str], &[&str], &[&str])] = &[
        (
            &["--help"],
            &["125", "126", "127", "watch: 0", "usage error"],
            &[],
        ),
        (
            &["exec", "--help"],
            &["125", "126", "127", "usage error"],
            &["tracefs"],
        ),
        (
            &["help", "status"],
            &["  1    a pid does not exist", "usage error"],
            &["125", "tracefs"],
        ),
        (
            &["probe", "--help"],
            &["cannot be set here", "usage error"],
            &["125", "tracefs"],
        ),
        (
            &["watch", "--help"],
            &["  3    tracefs", "  5    nothing unsafe", "usage error"],
            &["125"],
        ),
    ];
    for (args, has, lacks) in cases {
        let o = run(args);
        assert!(o.status.success(), "{args:?}: {o:?}");
        let out = text(&o.stdout);
        assert!(out.contains("Exit status:"), "{args:?}:\n{out}");
        for needle in *has {
            assert!(out.contains(needle), "{args:?}: {needle:?} missing:\n{out}");
        }
        let statuses = &out[out.find("Exit status:").unwrap()..];
        for needle in *lacks {
            assert!(
                !statuses.contains(needle),
                "{args:?}: {needle:?} is not its status:\n{out}"
            );
        }
    }
    let o = run(&["exec", "--help"]);
    let out = text(&o.stdout);
    assert!(out.contains("--strict"), "{out}");
    assert!(out.contains("never adds or raises capabilities"), "{out}");
}

// ---------------------------------------------------------------------------
// hostile environments (issue 18)
// ---------------------------------------------------------------------------

#[path = "support/seccomp.rs"]
mod seccomp;

/// The hex value of `field` (`SigIgn`, `SigBlk`, ...) in a `/proc/PID/status`
/// text.
fn status_field(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

/// Runs `launcher... cat /proc/self/status` (not through a shell: dash
/// empties the signal mask) under a perl parent that
/// ignores SIGPIPE and SIGHUP and blocks SIGUSR1 and SIGUSR2 before it execs
/// (what systemd and nohup-style supervisors hand over; std's Command cannot
/// hand over a mask or an ignored SIGPIPE, it resets both).
fn status_under_hostile_parent(launcher: &[&str]) -> String {
    let perl = r#"use POSIX; sigprocmask(SIG_BLOCK, POSIX::SigSet->new(SIGUSR1, SIGUSR2)) or die;
        $SIG{PIPE} = "IGNORE"; $SIG{HUP} = "IGNORE"; exec { $ARGV[0] } @ARGV or die "exec: $!";"#;
    let o = Command::new("perl")
        .args(["-e", perl])
        .args(launcher)
        .args(["cat", "/proc/self/status"])
        .stdin(Stdio::null())
        .output()
        .expect("run perl (the test needs perl with POSIX to set a signal mask)");
    no_panic(&o);
    assert!(o.status.success(), "{launcher:?}: {o:?}");
    text(&o.stdout)
}

#[test]
fn exec_gives_the_command_the_ignored_signals_and_mask_it_inherited() {
    let reference = status_under_hostile_parent(&["env"]);
    let launched = status_under_hostile_parent(&[BIN, "exec", "--"]);
    for field in ["SigIgn", "SigBlk"] {
        assert_eq!(
            status_field(&launched, field),
            status_field(&reference, field),
            "{field}: through env:\n{reference}\nthrough reclaim-scope exec:\n{launched}"
        );
    }
    let ign = status_field(&launched, "SigIgn");
    assert_eq!(
        ign & (bit(libc::SIGPIPE) | bit(libc::SIGHUP)),
        bit(libc::SIGPIPE) | bit(libc::SIGHUP)
    );
    let blk = status_field(&launched, "SigBlk");
    assert_eq!(
        blk & (bit(libc::SIGUSR1) | bit(libc::SIGUSR2)),
        bit(libc::SIGUSR1) | bit(libc::SIGUSR2)
    );

    // And from a parent that ignores nothing (std's Command): nothing
    // ignored, nothing blocked, although this launcher's own runtime
    // ignores SIGPIPE.
    let o = run(&["exec", "--", "cat", "/proc/self/status"]);
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    assert_eq!(
        status_field(&out, "SigIgn") & bit(libc::SIGPIPE),
        0,
        "{out}"
    );
    assert_eq!(status_field(&out, "SigBlk"), 0, "{out}");
}

/// `for fd in 0 1 2`: "open" or "closed" for the shell that runs it.
const FD_REPORT: &str =
    "for fd in 0 1 2; do if [ -e /proc/$$/fd/$fd ]; then echo $fd open; else echo $fd closed; fi; done";

#[test]
fn exec_keeps_standard_descriptors_the_parent_closed_closed() {
    let closed = |launcher: &str| {
        let script = format!("exec {launcher} sh -c '{FD_REPORT}' 0<&- 2>&-");
        let o = Command::new("sh").args(["-c", &script]).output().unwrap();
        assert!(o.status.success(), "{script}: {o:?}");
        text(&o.stdout)
    };
    let reference = closed("env");
    assert_eq!(reference, "0 closed\n1 open\n2 closed\n");
    assert_eq!(closed(&format!("{BIN} exec --")), reference);
}

#[test]
fn exec_runs_the_command_when_its_warning_cannot_be_written() {
    let dir = tempdir("unwritable-stderr");
    for (i, stderr) in ["/dev/full", "closed-pipe"].iter().enumerate() {
        let marker = dir.join(format!("marker{i}"));
        let mut cmd = Command::new(BIN);
        cmd.args(["exec", "--", "touch"]).arg(&marker);
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let st = if *stderr == "/dev/full" {
            cmd.stderr(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            );
            cmd.status().unwrap()
        } else {
            // The reader is gone before the launcher starts: EPIPE on its
            // first write (closing it after spawn would race that write).
            let (read_end, write_end) = nix::unistd::pipe().unwrap();
            drop(read_end);
            cmd.stderr(Stdio::from(write_end));
            cmd.status().unwrap()
        };
        assert_eq!(st.code(), Some(0), "stderr {stderr}: {st}");
        assert!(marker.exists(), "stderr {stderr}: the command did not run");
    }
    // --strict: still no panic (101), the refusal's own status.
    if refused_here() {
        let st = Command::new(BIN)
            .args(["exec", "--strict", "--", "true"])
            .stderr(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            )
            .status()
            .unwrap();
        assert_eq!(st.code(), Some(125), "{st}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn probe_status_help_and_version_fail_cleanly_on_an_unwritable_stdout() {
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let pid = std::process::id().to_string();
    for args in [
        &["probe"][..],
        &["status", &pid],
        &["status", "--json", &pid],
        &["--help"],
        &["--version"],
        &["watch", "--help"],
    ] {
        let o = Command::new(BIN)
            .args(args)
            .stdout(full())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        no_panic(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
        let err = text(&o.stderr);
        assert!(
            err.contains("write error on standard output: No space left on device"),
            "{args:?}: {err}"
        );
        // Both streams unwritable: the same status, no panic.
        let o = Command::new(BIN)
            .args(args)
            .stdout(full())
            .stderr(full())
            .status()
            .unwrap();
        assert_eq!(o.code(), Some(1), "{args:?}: {o}");
    }
    // A reader that went away: status 1 without a message, not a panic.
    // The read end is closed before the child starts, so its first write
    // fails with EPIPE (closing it after spawn races with that write).
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    drop(read_end);
    let o = Command::new(BIN)
        .args(["status", &pid])
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
}

#[test]
fn status_of_a_thread_id_names_its_process() {
    let (tid, stop, h) = parked_thread("cli-tid-arg");
    let pid = std::process::id() as i32;
    assert_ne!(tid, pid);
    let o = run(&["status", &tid.to_string()]);
    no_panic(&o);
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    let first = out.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("tid {tid} is a thread of pid {pid} ")),
        "{out}"
    );
    // The process's name (the main thread's), not the thread's.
    assert!(!first.contains("cli-tid-arg"), "{first}");
    assert!(out.contains("\"cli-tid-arg\""), "{out}");
    let o = run(&["status", "--json", &tid.to_string()]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["pid"], tid);
    assert_eq!(v[0]["tgid"], pid);
    assert!(v[0]["threads"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["tid"] == pid));
    // A process's own pid: tgid is the pid.
    let o = run(&["status", "--json", &pid.to_string()]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["tgid"], pid);
    assert_eq!(v[0]["pid_namespace"], "own");
    drop(stop);
    h.join().unwrap();
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("reclaim-scope-cli-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_executable(path: &std::path::Path, content: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn exec_of_a_script_or_program_with_a_missing_interpreter_says_so() {
    let dir = tempdir("interp");
    let missing = dir.join("missing-interp");
    write_executable(&missing, b"#!/nonexistent/bin/python9 -u\nprint('ran')\n");
    let crlf = dir.join("crlf");
    write_executable(&crlf, b"#!/bin/sh\r\necho ran\r\n");
    // A copy of a real program whose dynamic loader path points nowhere
    // (same length, so the ELF stays valid).
    let elf = dir.join("elf-no-loader");
    let mut bytes = std::fs::read("/bin/true").unwrap();
    let interp = b"/lib64/ld-linux-x86-64.so.2";
    let pos = bytes.windows(interp.len()).position(|w| w == interp);
    if let Some(pos) = pos {
        bytes[pos..pos + interp.len()].copy_from_slice(b"/nonexistent/ld-linux.so.99");
    }
    write_executable(&elf, &bytes);

    let mut cases = vec![
        (
            missing.clone(),
            "its #! line names the interpreter `/nonexistent/bin/python9`, which does not exist",
        ),
        (
            crlf.clone(),
            "`/bin/sh\\r`, which does not exist: the script has CRLF (DOS) line ends",
        ),
    ];
    if pos.is_some() {
        cases.push((
            elf.clone(),
            "dynamic loader `/nonexistent/ld-linux.so.99` does not exist",
        ));
    } else if cfg!(all(target_arch = "x86_64", target_env = "gnu")) {
        panic!("/bin/true has no /lib64/ld-linux-x86-64.so.2 on an x86_64 glibc host?");
    }
    for (path, needle) in &cases {
        for (args, env_path) in [
            (vec![path.to_str().unwrap()], None),
            // Found through PATH: still the interpreter, not "command not found".
            (
                vec![path.file_name().unwrap().to_str().unwrap()],
                Some(&dir),
            ),
        ] {
            let mut cmd = Command::new(BIN);
            cmd.arg("exec").arg("--").args(&args).stdin(Stdio::null());
            if let Some(d) = env_path {
                cmd.env("PATH", format!("{}:/usr/bin:/bin", d.display()));
            }
            let o = cmd.output().unwrap();
            no_panic(&o);
            assert_eq!(o.status.code(), Some(126), "{args:?}: {o:?}");
            assert!(o.stdout.is_empty(), "{o:?}");
            let err = text(&o.stderr);
            let last = err.lines().last().unwrap();
            assert!(
                last.starts_with("reclaim-scope: cannot execute: `"),
                "{last}"
            );
            assert!(last.contains("No such file or directory"), "{last}");
            assert!(last.contains(needle), "{needle:?} missing: {last}");
            assert!(!err.contains("command not found"), "{err}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `reclaim-scope probe` started from a thread whose seccomp filter makes
/// both io-flusher prctls answer `errno`.
fn probe_under_filter(errno: i32) -> Output {
    seccomp::with_refused_prctl(errno, || run(&["probe"]))
}

#[test]
fn probe_names_seccomp_for_enosys_and_eacces_not_the_capability_or_the_kernel() {
    for (errno, name) in [(libc::ENOSYS, "ENOSYS"), (libc::EACCES, "EACCES")] {
        let o = probe_under_filter(errno);
        no_panic(&o);
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        let out = text(&o.stdout);
        assert!(
            out.contains(&format!("PR_SET_IO_FLUSHER:  refused with {name} (")),
            "{out}"
        );
        assert!(
            out.contains("seccomp:            a seccomp filter"),
            "{out}"
        );
        let fix = out
            .lines()
            .find(|l| l.starts_with("fix:"))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(
            fix.contains(name) && fix.contains("seccomp filter"),
            "{fix}"
        );
        assert!(
            !fix.contains("5.6 or newer") && !fix.contains("needs CAP_SYS_RESOURCE"),
            "{fix}"
        );
        assert!(!out.contains("systemd: AmbientCapabilities"), "{out}");
        println!("{name}:\n{out}");

        // exec's warning says the same.
        let o = seccomp::with_refused_prctl(errno, || run(&["exec", "--", "true"]));
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        let err = text(&o.stderr);
        assert!(
            err.contains(&format!("{name} (")) && err.contains("seccomp filter"),
            "{err}"
        );
    }
}

#[test]
fn probe_under_an_eperm_filter_names_the_capability_or_the_filter() {
    let o = probe_under_filter(libc::EPERM);
    no_panic(&o);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        out.contains("PR_SET_IO_FLUSHER:  refused with EPERM ("),
        "{out}"
    );
    let fix = out.lines().find(|l| l.starts_with("fix:")).unwrap();
    assert!(fix.contains("seccomp filter"), "{fix}");
    if out.contains("CAP_SYS_RESOURCE:   in the effective set") {
        // Held (the VM): the filter is the cause, not the capability.
        assert!(
            fix.contains("although CAP_SYS_RESOURCE is in the effective set"),
            "{fix}"
        );
    } else {
        assert!(
            fix.contains("CAP_SYS_RESOURCE, which this process lacks"),
            "{fix}"
        );
    }
}

/// Set in the environment of this test binary when it runs inside a PID
/// namespace as the helper of the test below.
const PIDNS_HELPER: &str = "RECLAIM_SCOPE_PIDNS_HELPER";

#[test]
fn own_process_and_status_in_a_pid_namespace_without_its_own_proc() {
    if let Some(mode) = std::env::var_os(PIDNS_HELPER) {
        // In the namespace: pid 1 here, another pid in /proc.
        let me = std::process::id() as i32;
        let ns = reclaim_scope::proc::pid_namespace().unwrap();
        let threads = reclaim_scope::proc::threads_of(me).unwrap();
        assert!(
            threads.iter().any(|t| t.tid == current_tid()),
            "{threads:?}"
        );
        let report = reclaim_scope::audit::Audit::current().unwrap();
        assert!(report.verdict(current_tid()).is_some(), "{report:#}");
        assert!(reclaim_scope::proc::ThreadFlags::of_task(me, current_tid()).is_ok());
        if mode == "outer-proc" {
            assert_eq!(me, 1);
            assert!(
                matches!(ns, reclaim_scope::proc::PidNamespace::Ancestor { pid: 1, proc_pid } if proc_pid > 1),
                "{ns:?}"
            );
            // /proc/1 is the outer namespace's init, not this process.
            assert!(!threads
                .iter()
                .any(|t| t.name.starts_with("systemd") || t.name == "init"));
        } else {
            assert_eq!(ns, reclaim_scope::proc::PidNamespace::Own);
        }
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for (mode, extra) in [("outer-proc", None), ("own-proc", Some("--mount-proc"))] {
        let o = Command::new("unshare")
            .args(["--pid", "--fork"])
            .args(extra)
            .arg(&exe)
            .args([
                "own_process_and_status_in_a_pid_namespace_without_its_own_proc",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PIDNS_HELPER, mode)
            .output()
            .expect("run unshare (util-linux)");
        assert!(o.status.success(), "{mode}: {o:?}");
        assert!(text(&o.stdout).contains("1 passed"), "{mode}: {o:?}");

        // The tool inside: which namespace's pid it read.
        let o = Command::new("unshare")
            .args(["--pid", "--fork"])
            .args(extra)
            .args([BIN, "status", "--json", "1"])
            .output()
            .unwrap();
        no_panic(&o);
        assert!(o.status.success(), "{mode}: {o:?}");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let err = text(&o.stderr);
        if mode == "outer-proc" {
            assert_eq!(v[0]["pid_namespace"], "ancestor", "{v}");
            assert!(
                err.contains("note: /proc belongs to an ancestor PID namespace, not this process's (this process is pid 1 here and "),
                "{err}"
            );
        } else {
            assert_eq!(v[0]["pid_namespace"], "own", "{v}");
            // Pid 1 of the new namespace is the tool itself.
            assert_eq!(v[0]["name"], "reclaim-scope", "{v}");
            assert!(err.is_empty(), "{err}");
        }
    }
}
