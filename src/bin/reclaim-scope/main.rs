//! `reclaim-scope`: run unmodified storage daemons as I/O flushers, and show
//! the kernel's real allocation-context flags of any process's threads.
//!
//! `PR_SET_IO_FLUSHER` survives `execve()` and is inherited by every thread
//! and process the flagged thread creates, so `reclaim-scope exec -- DAEMON`
//! fixes a daemon (tcmu-runner, qemu-nbd, ...) without a line of its code.

use clap::{Parser, Subcommand};
use reclaim_scope::{
    proc::{
        pid_namespace, process_ids, threads_of, PidNamespace, ProcessIds, ThreadFlags, ThreadInfo,
    },
    support,
};
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Success: `status` read every pid, `probe` found the flag available.
const EXIT_OK: u8 = 0;
/// `status`: a pid does not exist or exited while it was read (the others
/// are still reported). `probe`: the flag cannot be set here.
const EXIT_FAILURE: u8 = 1;
/// `watch`: tracefs is not mounted or not permitted (the message names the
/// fix); nothing was watched.
const EXIT_NO_TRACEFS: u8 = 3;
/// `watch`: a pid does not exist, or tracefs failed in another way.
const EXIT_WATCH_FAILED: u8 = 4;
/// `watch`: nothing unsafe seen, but trace events were lost, so nothing
/// was proved either (the counts are a lower bound).
const EXIT_WATCH_LOST: u8 = 5;
/// `exec --strict`: the kernel refused `PR_SET_IO_FLUSHER`; nothing was run.
const EXIT_REFUSED: u8 = 125;
/// `exec`: the command was found but could not be executed (not
/// executable, a directory, or its interpreter or dynamic loader is
/// missing).
const EXIT_CANNOT_EXECUTE: u8 = 126;
/// `exec`: the command was not found.
const EXIT_NOT_FOUND: u8 = 127;

/// `status --json`'s fields; a test keeps them in step with the output.
const STATUS_JSON_HELP: &str = "Print JSON: an array with one object per pid, {\"pid\", \"tgid\", \
     \"nspid\", \"pid_namespace\", \"name\", \"threads\": [{\"tid\", \"name\", \"flags\", \"noio\", \
     \"nofs\", \"local_throttle\", \"io_flusher\"}]}, or {\"pid\", \"pid_namespace\", \"error\"} for a \
     pid that cannot be read";

/// `watch --json`'s fields; a test keeps them in step with the output.
const WATCH_JSON_HELP: &str = "Print the summary as one JSON object: {\"seconds\", \"interrupted\", \
     \"lost_events\", \"unsafe\", \"missing_events\", \"exited_pids\", \"total\": COUNTS, \"threads\": \
     [{\"pid\", \"tid\", \"name\", \"flags\", \"noio\", \"local_throttle\", \"exited\", \"counts\": \
     COUNTS}]}, COUNTS being {\"reclaims\", \"fs_io_reclaims\", \"page_allocs\", \
     \"fs_io_page_allocs\", \"throttle_events\", \"throttle_pauses\", \"paused_ms\", \
     \"max_pause_ms\", \"vmscan_throttled\", \"unknown_gfp\"}";

/// Each subcommand's help shows its own exit statuses; the program's help
/// shows them all ([`EXIT_STATUS_HELP`]).
const EXEC_EXIT_HELP: &str = "\
Exit status:
  125  --strict: the kernel refused PR_SET_IO_FLUSHER; nothing was run
  126  the command was found but cannot be executed (not executable, a
       directory, or its #! interpreter or ELF dynamic loader is missing)
  127  the command was not found
  2    usage error
  Once the command has started, the status and signals are the command's own.

Example:
  reclaim-scope exec -- qemu-nbd -k /run/nbd.sock -f raw /srv/disk.img";

const STATUS_EXIT_HELP: &str = "\
Exit status:
  0    every pid was read
  1    a pid does not exist or exited while it was read (the others are still
       reported), or standard output could not be written
  2    usage error

Example:
  reclaim-scope status $(pidof qemu-nbd) --json";

const PROBE_EXIT_HELP: &str = "\
Exit status:
  0    the flag can be set here
  1    the flag cannot be set here (the reason and the fix are printed), or
       standard output could not be written
  2    usage error

Example:
  reclaim-scope probe";

const WATCH_EXIT_HELP: &str = "\
Exit status:
  0    nothing unsafe seen
  1    FS/IO-capable reclaim or a dirty-throttle pause of a watched thread seen
  2    usage error
  3    tracefs not mounted or not permitted (the fix is printed)
  4    a pid does not exist, tracefs failed otherwise, or standard output could
       not be written
  5    nothing unsafe seen but trace events were lost (not proved safe: rerun
       with a larger --buffer-kb)

Example:
  reclaim-scope watch $(pidof qemu-nbd) --duration 60";

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0    success (status: every pid was read; probe: the flag can be set)
  1    status: a pid does not exist or exited while it was read (the others
       are still reported); probe: the flag cannot be set here; status, probe,
       --help: standard output could not be written
  2    usage error
  watch: 0 nothing unsafe seen, 1 FS/IO-capable reclaim or a dirty-throttle
       pause of a watched thread seen, 3 tracefs not mounted or not permitted,
       4 a pid does not exist, tracefs failed otherwise, or standard output
       could not be written, 5 nothing unsafe seen but trace events were lost
       (not proved safe: rerun with a larger --buffer-kb)
  125  exec --strict: the kernel refused PR_SET_IO_FLUSHER; nothing was run
  126  exec: the command was found but cannot be executed (not executable, a
       directory, or its #! interpreter or ELF dynamic loader is missing)
  127  exec: the command was not found
  Once exec has started the command, the status and signals are the command's own.

Examples:
  reclaim-scope exec -- qemu-nbd -k /run/nbd.sock -f raw /srv/disk.img
  reclaim-scope status $(pidof qemu-nbd) --json
  reclaim-scope probe
  reclaim-scope watch $(pidof qemu-nbd) --duration 60";

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
                      (execvp: PATH lookup; argv, environment, pid, open files, ignored signals \
                      and signal mask as this process received them; standard descriptors that \
                      were closed stay closed). The flag survives execve() and every thread and \
                      child COMMAND creates inherits it.\n\n\
                      Without CAP_SYS_RESOURCE the kernel refuses: a one-line warning goes to \
                      stderr and COMMAND runs anyway, unflagged; with --strict nothing runs and \
                      the exit status is 125. reclaim-scope never adds or raises capabilities: \
                      grant CAP_SYS_RESOURCE to it (e.g. AmbientCapabilities= in a systemd unit; \
                      a file capability from setcap puts the command in secure-execution mode, \
                      where the dynamic loader drops LD_LIBRARY_PATH and similar variables). \
                      If this process is flagged already (inherited), it is left as it is. \
                      Warnings are best effort: an unwritable stderr never stops the command.",
        after_help = EXEC_EXIT_HELP
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
        after_help = STATUS_EXIT_HELP
    )]
    Status {
        /// Process ids
        #[arg(value_name = "PID", required = true, value_parser = clap::value_parser!(i32).range(1..))]
        pids: Vec<i32>,
        #[arg(long, help = STATUS_JSON_HELP)]
        json: bool,
    },
    /// Show the kernel version, CAP_SYS_RESOURCE, whether the flag can be set here, and the fix
    #[command(after_help = PROBE_EXIT_HELP)]
    Probe,
    /// Watch live processes: FS/IO-capable reclaim, page allocations, dirty-throttle pauses
    #[command(
        long_about = "Watch the threads of live processes through tracefs, read-only: reclaim \
                      entries (vmscan direct and memcg reclaim) and how many could recurse into \
                      FS/IO by their gfp flags, page allocations with __GFP_FS/__GFP_IO, \
                      dirty-throttle pauses in balance_dirty_pages and their total, \
                      vmscan throttling, and each thread's current NOIO/LOCAL_THROTTLE bits \
                      from /proc. Threads created while watching are followed (set_event_pid \
                      with event-fork). Uses its own trace instance \
                      (<tracefs>/instances/reclaim-scope-watch-<pid>), never the global buffer, \
                      and removes it on exit, SIGINT, SIGTERM and SIGHUP. Needs root. \
                      Lost events are reported; with lost events the counts are a lower bound.\n\n\
                      Ends after --duration, when every pid has exited, or on SIGINT/SIGTERM; \
                      then prints a table (or one JSON object with --json). On a terminal a \
                      progress line is updated every second on stderr (not with --json).",
        after_help = WATCH_EXIT_HELP
    )]
    Watch {
        /// Process ids
        #[arg(value_name = "PID", required = true, value_parser = clap::value_parser!(i32).range(1..))]
        pids: Vec<i32>,
        /// Stop after this many seconds (default: until interrupted or every pid exits)
        #[arg(long, value_name = "SECS", value_parser = parse_duration_secs)]
        duration: Option<u64>,
        #[arg(long, help = WATCH_JSON_HELP)]
        json: bool,
        /// Per-CPU ring buffer of the trace instance, in KiB (default 4096); a smaller one
        /// loses events sooner
        #[arg(long, value_name = "KB", value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
        buffer_kb: Option<u64>,
    },
}

/// `watch --duration`: whole seconds, at least one.
fn parse_duration_secs(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => {
            Err("must be at least 1 second (omit --duration to watch until interrupted)".into())
        }
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number of seconds")),
    }
}

fn main() -> ExitCode {
    // Everything below runs on the main thread: neither clap nor this program
    // starts a thread, so when `exec` sets the flag the process has one
    // thread, and that thread is the one execve() keeps.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Usage errors go to stderr (status 2), --help and --version to
            // stdout (status 0, or 1 if they could not be written).
            let code = e.exit_code();
            if code == 0 {
                // --help / --version: through emit(), which says so on
                // stderr when stdout cannot be written.
                return match emit(&e.render().to_string()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(c) => ExitCode::from(c),
                };
            }
            let _ = e.print();
            return ExitCode::from(u8::try_from(code).unwrap_or(EXIT_FAILURE));
        }
    };
    let code = match cli.command {
        Cmd::Exec { strict, command } => exec(strict, command),
        Cmd::Status { pids, json } => status(&pids, json),
        Cmd::Probe => probe(),
        Cmd::Watch {
            pids,
            duration,
            json,
            buffer_kb,
        } => watch_cmd(pids, duration, json, buffer_kb),
    };
    ExitCode::from(code)
}

// ---------------------------------------------------------------------------
// output that never panics
// ---------------------------------------------------------------------------

/// Writes one diagnostic line on stderr, best effort: a full, closed or
/// broken stderr loses the line and changes nothing else (never a panic,
/// and for `exec` never a reason not to run the command).
fn say(line: std::fmt::Arguments<'_>) {
    let mut s = line.to_string();
    s.push('\n');
    let _ = io::stderr().lock().write_all(s.as_bytes());
}

macro_rules! say {
    ($($arg:tt)*) => { $crate::say(format_args!($($arg)*)) };
}

/// Writes a command's whole output on stdout. On failure (a full disk, a
/// closed descriptor, a reader that went away) it says so on stderr, as
/// coreutils do ("write error"), except for a broken pipe, and returns
/// the status to exit with.
fn emit(out: &str) -> Result<(), u8> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) => {
            if e.kind() != io::ErrorKind::BrokenPipe {
                say!("reclaim-scope: write error on standard output: {e}");
            }
            Err(EXIT_FAILURE)
        }
    }
}

mod exec;
mod probe;
mod status;
mod watch;

use exec::exec;
use probe::probe;
use status::status;
use watch::watch_cmd;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{read_pid, status_json, Found};
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every key of a JSON value, nested ones too.
    fn json_keys(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    out.push(k.clone());
                    json_keys(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| json_keys(v, out)),
            _ => {}
        }
    }

    /// The help lists exactly the keys the output has.
    fn assert_help_lists(help: &str, v: &serde_json::Value) {
        let mut keys = Vec::new();
        json_keys(v, &mut keys);
        for k in &keys {
            assert!(
                help.contains(&format!("\"{k}\"")),
                "help lacks {k:?}: {help}"
            );
        }
        for quoted in help.split('"').skip(1).step_by(2) {
            assert!(
                keys.iter().any(|k| k == quoted),
                "help names {quoted:?}, which the output lacks: {v}"
            );
        }
    }

    #[test]
    fn json_help_names_every_field_of_the_output() {
        let me = std::process::id() as i32;
        let found = [
            Found {
                pid: me,
                result: read_pid(me),
            },
            Found {
                pid: i32::MAX,
                result: read_pid(i32::MAX),
            },
        ];
        assert!(found[0].result.is_ok() && found[1].result.is_err());
        let v: serde_json::Value = serde_json::from_str(&status_json(&found, "own")).unwrap();
        assert_help_lists(STATUS_JSON_HELP, &v);
        let v: serde_json::Value = serde_json::from_str(&watch::json(
            &watch::tests::sample_tally(),
            &watch::Notes::default(),
        ))
        .unwrap();
        assert!(
            v["threads"].as_array().is_some_and(|a| !a.is_empty()),
            "{v}"
        );
        assert_help_lists(WATCH_JSON_HELP, &v);
    }

    #[test]
    fn watch_duration_is_whole_seconds_from_one() {
        assert_eq!(parse_duration_secs("60"), Ok(60));
        assert!(parse_duration_secs("0")
            .unwrap_err()
            .contains("at least 1 second"));
        assert!(parse_duration_secs("1.5")
            .unwrap_err()
            .contains("whole number"));
        assert!(parse_duration_secs("-3").is_err());
        let e =
            Cli::try_parse_from(["reclaim-scope", "watch", "1", "--duration", "0"]).unwrap_err();
        assert!(e.to_string().contains("at least 1 second"), "{e}");
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
