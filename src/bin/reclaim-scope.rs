//! `reclaim-scope`: run unmodified storage daemons as I/O flushers, and show
//! the kernel's real allocation-context flags of any process's threads.
//!
//! `PR_SET_IO_FLUSHER` survives `execve()` and is inherited by every thread
//! and process the flagged thread creates, so `reclaim-scope exec -- DAEMON`
//! fixes a daemon (tcmu-runner, qemu-nbd, ...) without a line of its code.

use clap::{Parser, Subcommand};
use reclaim_scope::{support, threads_of, Support, ThreadFlags, ThreadInfo};
use std::ffi::OsString;
use std::io::{self, Write};
use std::process::ExitCode;

/// Success: `status` read every pid, `probe` found the flag available.
const EXIT_OK: u8 = 0;
/// `status`: a pid does not exist or exited while it was read (the others
/// are still reported). `probe`: the flag cannot be set here.
const EXIT_FAILURE: u8 = 1;
/// `exec --strict`: the kernel refused `PR_SET_IO_FLUSHER`; nothing was run.
const EXIT_REFUSED: u8 = 125;
/// `exec`: the command was found but could not be executed.
const EXIT_CANNOT_EXECUTE: u8 = 126;
/// `exec`: the command was not found.
const EXIT_NOT_FOUND: u8 = 127;

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0    success (status: every pid was read; probe: the flag can be set)
  1    status: a pid does not exist or exited while it was read (the others
       are still reported); probe: the flag cannot be set here
  2    usage error
  125  exec --strict: the kernel refused PR_SET_IO_FLUSHER; nothing was run
  126  exec: the command was found but cannot be executed
  127  exec: the command was not found
  Once exec has started the command, the status and signals are the command's own.

Examples:
  reclaim-scope exec -- qemu-nbd -k /run/nbd.sock -f raw /srv/disk.img
  reclaim-scope status $(pidof qemu-nbd) --json
  reclaim-scope probe";

#[derive(Parser, Debug)]
#[command(
    name = "reclaim-scope",
    version,
    about = "Run storage daemons as I/O flushers (PR_SET_IO_FLUSHER) and show any thread's real \
             NOIO/NOFS state",
    long_about = "Run storage daemons as I/O flushers (PR_SET_IO_FLUSHER) and show any thread's \
                  real NOIO/NOFS state.\n\n\
                  A user-space storage daemon (NBD, ublk, FUSE, TCMU, iSCSI server) whose own \
                  allocations enter file-system reclaim can deadlock on the device it serves. \
                  PR_SET_IO_FLUSHER makes a thread's allocations GFP_NOIO; it survives execve() \
                  and is inherited by every thread and child the daemon creates, so `exec` \
                  fixes an unmodified daemon. Setting it needs CAP_SYS_RESOURCE; reading it \
                  (status) needs nothing.",
    after_help = EXIT_STATUS_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Set PR_SET_IO_FLUSHER on this process and execute COMMAND in its place
    #[command(
        long_about = "Set PR_SET_IO_FLUSHER on this process, then execute COMMAND in its place \
                      (execvp: PATH lookup; argv, environment, pid and open files unchanged). \
                      The flag survives execve() and every thread and child COMMAND creates \
                      inherits it.\n\n\
                      Without CAP_SYS_RESOURCE the kernel refuses: a one-line warning goes to \
                      stderr and COMMAND runs anyway, unflagged; with --strict nothing runs and \
                      the exit status is 125. reclaim-scope never adds or raises capabilities: \
                      grant CAP_SYS_RESOURCE to it (e.g. AmbientCapabilities= in a systemd unit). \
                      If this process is flagged already (inherited), it is left as it is.",
        after_help = EXIT_STATUS_HELP
    )]
    Exec {
        /// Exit with status 125 instead of running COMMAND unflagged when the kernel refuses
        #[arg(long)]
        strict: bool,
        /// The command and its arguments (put `--` before it)
        #[arg(
            value_name = "COMMAND",
            required = true,
            num_args = 1..,
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        command: Vec<OsString>,
    },
    /// Show every thread of each process with its NOIO / NOFS / LOCAL_THROTTLE / io-flusher state
    #[command(
        long_about = "Show every thread of each process with its name and the allocation-context \
                      flags the kernel reports in /proc/PID/task/TID/stat: NOIO \
                      (PF_MEMALLOC_NOIO), NOFS (PF_MEMALLOC_NOFS), LOCAL_THROTTLE \
                      (PF_LOCAL_THROTTLE) and IO_FLUSHER (both bits PR_SET_IO_FLUSHER sets). \
                      Needs no capability.",
        after_help = EXIT_STATUS_HELP
    )]
    Status {
        /// Process ids
        #[arg(value_name = "PID", required = true, value_parser = clap::value_parser!(i32).range(1..))]
        pids: Vec<i32>,
        /// Print JSON: an array with one object per pid ({"pid", "name", "threads": [{"tid",
        /// "name", "flags", "noio", "nofs", "local_throttle", "io_flusher"}]} or {"pid", "error"})
        #[arg(long)]
        json: bool,
    },
    /// Show the kernel version, CAP_SYS_RESOURCE, whether the flag can be set here, and the fix
    #[command(after_help = EXIT_STATUS_HELP)]
    Probe,
}

fn main() -> ExitCode {
    // Everything below runs on the main thread: neither clap nor this program
    // starts a thread, so when `exec` sets the flag the process has one
    // thread, and that thread is the one execve() keeps.
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Exec { strict, command } => exec(strict, command),
        Cmd::Status { pids, json } => status(&pids, json),
        Cmd::Probe => probe(),
    };
    ExitCode::from(code)
}

// ---------------------------------------------------------------------------
// exec
// ---------------------------------------------------------------------------

fn exec(strict: bool, command: Vec<OsString>) -> u8 {
    let Some((program, args)) = command.split_first() else {
        unreachable!("clap requires COMMAND");
    };
    let shown = program.to_string_lossy();
    // Flagged already (started by a flagged parent): nothing to set, and a
    // refusal would be a false alarm.
    let flagged = ThreadFlags::current().is_ok_and(|f| f.noio());
    if !flagged {
        if let Err(e) = reclaim_scope::set_thread_io_flusher(true) {
            if strict {
                eprintln!("reclaim-scope: error: not running `{shown}` (--strict): {e}");
                return EXIT_REFUSED;
            }
            eprintln!(
                "reclaim-scope: warning: running `{shown}` WITHOUT the I/O-flusher flag: {e}"
            );
        }
    }
    let err = run(program, args);
    let code = if err.kind() == io::ErrorKind::NotFound {
        EXIT_NOT_FOUND
    } else {
        EXIT_CANNOT_EXECUTE
    };
    let what = if code == EXIT_NOT_FOUND {
        "command not found"
    } else {
        "cannot execute"
    };
    eprintln!("reclaim-scope: {what}: `{shown}`: {err}");
    code
}

/// Replaces this process with `program` (execvp); returns only on failure.
#[cfg(unix)]
fn run(program: &OsString, args: &[OsString]) -> io::Error {
    use std::os::unix::process::CommandExt;
    std::process::Command::new(program).args(args).exec()
}

#[cfg(not(unix))]
fn run(_program: &OsString, _args: &[OsString]) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "exec is only available on Unix (and the flag only on Linux)",
    )
}

// ---------------------------------------------------------------------------
// status
// ---------------------------------------------------------------------------

fn process_name(threads: &[ThreadInfo], pid: i32) -> &str {
    threads
        .iter()
        .find(|t| t.tid == pid)
        .or(threads.first())
        .map_or("", |t| t.name.as_str())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn status(pids: &[i32], json: bool) -> u8 {
    let results: Vec<(i32, io::Result<Vec<ThreadInfo>>)> =
        pids.iter().map(|&pid| (pid, threads_of(pid))).collect();
    let mut code = EXIT_OK;
    for (_, r) in &results {
        if let Err(e) = r {
            eprintln!("reclaim-scope: {e}");
            code = EXIT_FAILURE;
        }
    }
    let out = if json {
        status_json(&results)
    } else {
        status_text(&results)
    };
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() != io::ErrorKind::BrokenPipe {
            eprintln!("reclaim-scope: cannot write to standard output: {e}");
        }
        return EXIT_FAILURE;
    }
    code
}

fn status_text(results: &[(i32, io::Result<Vec<ThreadInfo>>)]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for (pid, r) in results {
        let Ok(threads) = r else { continue };
        let flushers = threads.iter().filter(|t| t.flags.is_io_flusher()).count();
        let _ = writeln!(
            s,
            "pid {pid} {:?}: {} thread{}, {flushers} io-flusher{}",
            process_name(threads, *pid),
            threads.len(),
            if threads.len() == 1 { "" } else { "s" },
            if flushers == threads.len() {
                " (all)"
            } else if flushers == 0 {
                " (none)"
            } else {
                " (MIXED: some threads are not protected)"
            },
        );
        let _ = writeln!(
            s,
            "  {:>8}  {:<4}  {:<4}  {:<14}  {:<10}  NAME",
            "TID", "NOIO", "NOFS", "LOCAL_THROTTLE", "IO_FLUSHER"
        );
        for t in threads {
            let f = t.flags;
            let _ = writeln!(
                s,
                "  {:>8}  {:<4}  {:<4}  {:<14}  {:<10}  {:?}",
                t.tid,
                yes(f.noio()),
                yes(f.nofs()),
                yes(f.local_throttle()),
                yes(f.is_io_flusher()),
                t.name,
            );
        }
    }
    s
}

fn status_json(results: &[(i32, io::Result<Vec<ThreadInfo>>)]) -> String {
    use serde_json::{json, Value};
    let procs: Vec<Value> = results
        .iter()
        .map(|(pid, r)| match r {
            Ok(threads) => json!({
                "pid": pid,
                "name": process_name(threads, *pid),
                "threads": threads.iter().map(|t| json!({
                    "tid": t.tid,
                    "name": t.name,
                    "flags": t.flags.bits(),
                    "noio": t.flags.noio(),
                    "nofs": t.flags.nofs(),
                    "local_throttle": t.flags.local_throttle(),
                    "io_flusher": t.flags.is_io_flusher(),
                })).collect::<Vec<_>>(),
            }),
            Err(e) => json!({ "pid": pid, "error": e.to_string() }),
        })
        .collect();
    let mut s = serde_json::to_string_pretty(&Value::Array(procs))
        .expect("a serde_json::Value always serializes");
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------
// probe
// ---------------------------------------------------------------------------

/// `CAP_SYS_RESOURCE` from `<linux/capability.h>`.
const CAP_SYS_RESOURCE: u32 = 24;

fn cap_eff() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapEff in /proc/self/status"))
}

/// Whether this process is in the initial user namespace: its uid_map maps
/// every uid to itself.
fn initial_user_ns() -> Option<bool> {
    let map = std::fs::read_to_string("/proc/self/uid_map").ok()?;
    let fields: Vec<&str> = map.split_whitespace().collect();
    Some(fields == ["0", "0", "4294967295"])
}

/// `(major, minor)` of a kernel release such as `6.1.0-13-cloud-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn probe() -> u8 {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let kernel_note = match kernel_version(&release) {
        Some(v) if v >= (5, 8) => "has PR_SET_IO_FLUSHER (5.6) and PF_LOCAL_THROTTLE (5.8)",
        Some(v) if v >= (5, 6) => "has PR_SET_IO_FLUSHER but not PF_LOCAL_THROTTLE (5.8)",
        Some(_) => "too old: PR_SET_IO_FLUSHER needs Linux 5.6",
        None => "version not recognised",
    };
    println!("kernel:             {release} ({kernel_note})");

    let cap = cap_eff();
    let has_cap = cap.as_ref().is_ok_and(|c| c & (1 << CAP_SYS_RESOURCE) != 0);
    match &cap {
        Ok(c) => println!(
            "CAP_SYS_RESOURCE:   {} (CapEff {c:016x})",
            if has_cap {
                "in the effective set"
            } else {
                "NOT in the effective set"
            }
        ),
        Err(e) => println!("CAP_SYS_RESOURCE:   unknown ({e})"),
    }
    let initial_ns = initial_user_ns();
    match initial_ns {
        Some(true) => println!("user namespace:     initial"),
        Some(false) => println!(
            "user namespace:     not the initial one (a container?): capabilities held here do \
             not count for PR_SET_IO_FLUSHER"
        ),
        None => println!("user namespace:     unknown (no /proc/self/uid_map)"),
    }
    let sup = support();
    println!("PR_SET_IO_FLUSHER:  {sup}");
    match ThreadFlags::current() {
        Ok(f) => println!("this process:       {f}"),
        Err(e) => println!("this process:       unknown ({e})"),
    }
    match sup {
        Support::Available => {
            println!(
                "ok:                 `reclaim-scope exec -- DAEMON ARGS...` runs DAEMON and every \
                 thread it creates as an I/O flusher"
            );
            EXIT_OK
        }
        Support::NotPermitted if has_cap && initial_ns == Some(false) => {
            println!(
                "fix:                CAP_SYS_RESOURCE is held only inside this user namespace; the \
                 kernel checks the initial one: run the daemon in a container started by root \
                 with `--cap-add SYS_RESOURCE` (not a rootless one), or outside the container"
            );
            EXIT_FAILURE
        }
        other => {
            if let Some(e) = other.error() {
                println!("fix:                {e}");
            }
            if other == Support::NotPermitted {
                println!(
                    "                    systemd: AmbientCapabilities=CAP_SYS_RESOURCE and \
                     ExecStart=/usr/local/bin/reclaim-scope exec -- DAEMON ARGS..."
                );
            }
            EXIT_FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.1.0-13-cloud-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.10.200"), Some((5, 10)));
        assert_eq!(kernel_version("4.19"), Some((4, 19)));
        assert_eq!(kernel_version("garbage"), None);
    }

    #[test]
    fn exec_keeps_hyphen_arguments_for_the_command() {
        let cli =
            Cli::try_parse_from(["reclaim-scope", "exec", "--", "sh", "-c", "--strict"]).unwrap();
        match cli.command {
            Cmd::Exec { strict, command } => {
                assert!(!strict);
                assert_eq!(command, ["sh", "-c", "--strict"]);
            }
            other => panic!("{other:?}"),
        }
        let cli =
            Cli::try_parse_from(["reclaim-scope", "exec", "--strict", "daemon", "-f"]).unwrap();
        assert!(
            matches!(cli.command, Cmd::Exec { strict: true, ref command } if command == &["daemon", "-f"])
        );
    }
}
