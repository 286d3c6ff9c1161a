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

#[path = "reclaim-scope/watch.rs"]
mod watch;

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
    ($($arg:tt)*) => { say(format_args!($($arg)*)) };
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

// ---------------------------------------------------------------------------
// watch
// ---------------------------------------------------------------------------

fn watch_cmd(pids: Vec<i32>, duration: Option<u64>, json: bool, buffer_kb: Option<u64>) -> u8 {
    use std::io::IsTerminal as _;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            say!("reclaim-scope: cannot handle signal {sig}: {e}");
            return EXIT_WATCH_FAILED;
        }
    }
    let opts = watch::Options {
        pids,
        duration: duration.map(std::time::Duration::from_secs),
        progress: !json && io::stderr().is_terminal(),
        buffer_kb,
    };
    let outcome = match watch::watch(&opts, &stop) {
        Ok(o) => o,
        Err(watch::Failure::Tracefs(m)) => {
            say!("reclaim-scope: {m}");
            return EXIT_NO_TRACEFS;
        }
        Err(watch::Failure::Pid(m) | watch::Failure::Other(m)) => {
            say!("reclaim-scope: {m}");
            return EXIT_WATCH_FAILED;
        }
    };
    for p in &outcome.notes.exited_pids {
        say!("reclaim-scope: pid {p} exited while watched");
    }
    if outcome.tally.lost > 0 {
        say!(
            "reclaim-scope: {} trace events were lost: the counts are a lower bound",
            outcome.tally.lost
        );
    }
    let out = if json {
        watch::json(&outcome.tally, &outcome.notes)
    } else {
        watch::table(&outcome.tally, &outcome.notes)
    };
    // Status 1 means "unsafe seen" here: a write error is a failure of its own.
    if emit(&out).is_err() {
        return EXIT_WATCH_FAILED;
    }
    if outcome.tally.unsafe_seen() {
        EXIT_FAILURE
    } else if outcome.tally.lost > 0 {
        say!(
            "reclaim-scope: nothing unsafe seen, but with {} events lost that proves nothing \
             (status {EXIT_WATCH_LOST}); rerun with a larger --buffer-kb",
            outcome.tally.lost
        );
        EXIT_WATCH_LOST
    } else {
        EXIT_OK
    }
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
            let why = match e.raw_os_error() {
                Some(errno) => match diagnose(errno, &Here::read()) {
                    Some(d) => format!("{}: {d}", errno_text(errno)),
                    None => e.to_string(),
                },
                None => e.to_string(),
            };
            if strict {
                say!("reclaim-scope: error: not running `{shown}` (--strict): {why}");
                return EXIT_REFUSED;
            }
            say!("reclaim-scope: warning: running `{shown}` WITHOUT the I/O-flusher flag: {why}");
        }
    }
    let err = reclaim_scope::launch::exec(program, args);
    let (code, message) = exec_failure(program, &err);
    say!("reclaim-scope: {message}");
    code
}

/// The exit status and message for a failed exec. `ENOENT` for a file that
/// exists is a missing interpreter (a `#!` line naming a program that is
/// not there, often `/bin/sh\r` from CRLF line ends) or a missing ELF
/// dynamic loader: the command was found, it cannot be executed (126).
fn exec_failure(program: &OsStr, err: &io::Error) -> (u8, String) {
    let shown = program.to_string_lossy();
    if err.kind() != io::ErrorKind::NotFound {
        return (
            EXIT_CANNOT_EXECUTE,
            format!("cannot execute: `{shown}`: {err}"),
        );
    }
    let Some(path) = find_command(program) else {
        return (
            EXIT_NOT_FOUND,
            format!("command not found: `{shown}`: {err}"),
        );
    };
    let at = if path.as_os_str() == program {
        String::new()
    } else {
        format!(" ({})", path.display())
    };
    let why = match missing_interpreter(&path, 0) {
        Some(m) => m,
        None => "the file exists, so an interpreter or library it needs is missing".to_owned(),
    };
    (
        EXIT_CANNOT_EXECUTE,
        format!("cannot execute: `{shown}`{at}: {err}: {why}"),
    )
}

/// Where `execvp` would have found `program`: the path itself if it has a
/// `/`, else the first executable regular file in `PATH` (the C library's
/// default `/bin:/usr/bin` if unset; an empty entry is the current
/// directory).
fn find_command(program: &OsStr) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        return p.exists().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
    path.as_bytes()
        .split(|&b| b == b':')
        .map(|dir| {
            if dir.is_empty() {
                PathBuf::from(".").join(program)
            } else {
                PathBuf::from(OsStr::from_bytes(dir)).join(program)
            }
        })
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// How much of a file the kernel reads to find a `#!` line
/// (`BINPRM_BUF_SIZE`).
const BINPRM_BUF_SIZE: usize = 256;

/// Why executing the existing file `path` answered ENOENT, if its `#!` line
/// or ELF header names an interpreter that is missing (following
/// interpreters that are scripts themselves, as the kernel does, up to its
/// limit of 4 levels).
fn missing_interpreter(path: &Path, depth: u32) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).ok()?;
    let mut head = [0u8; BINPRM_BUF_SIZE];
    let n = file.read_at(&mut head, 0).ok()?;
    let head = &head[..n];
    if let Some(line) = head.strip_prefix(b"#!") {
        let line = line.split(|&b| b == b'\n').next().unwrap_or(line);
        let start = line.iter().position(|&b| b != b' ' && b != b'\t')?;
        let interp = &line[start..];
        let end = interp
            .iter()
            .position(|&b| b == b' ' || b == b'\t' || b == 0)
            .unwrap_or(interp.len());
        let interp = &interp[..end];
        let shown = String::from_utf8_lossy(interp);
        let shown = shown.escape_debug();
        let interp_path = Path::new(OsStr::from_bytes(interp));
        if interp.ends_with(b"\r") {
            return Some(format!(
                "its #! line names the interpreter `{shown}`, which does not exist: the script \
                 has CRLF (DOS) line ends; convert it (dos2unix, or sed -i 's/\\r$//')"
            ));
        }
        if !interp_path.exists() {
            return Some(format!(
                "its #! line names the interpreter `{shown}`, which does not exist"
            ));
        }
        if depth < 4 {
            return missing_interpreter(interp_path, depth + 1)
                .map(|inner| format!("its interpreter `{shown}` cannot run: {inner}"));
        }
        return None;
    }
    let loader = elf_interpreter(&file, head)?;
    let shown = loader.display().to_string();
    (!loader.exists()).then(|| {
        format!(
            "it is an ELF program whose dynamic loader `{shown}` does not exist (built for \
             another C library or distribution?)"
        )
    })
}

/// The `PT_INTERP` path of an ELF file (its dynamic loader), if it has one.
fn elf_interpreter(file: &std::fs::File, head: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileExt;
    if head.len() < 64 || &head[..4] != b"\x7fELF" {
        return None;
    }
    let le = match head[5] {
        1 => true,
        2 => false,
        _ => return None,
    };
    let num = |b: &[u8]| -> u64 {
        let mut v = 0u64;
        for (i, &x) in b.iter().enumerate() {
            let shift = if le { i } else { b.len() - 1 - i };
            v |= u64::from(x) << (8 * shift);
        }
        v
    };
    // (e_phoff, e_phentsize, e_phnum, p_offset, p_filesz) field ranges.
    let (phoff, phentsize, phnum, off, size) = match head[4] {
        1 => (
            num(&head[0x1c..0x20]),
            num(&head[0x2a..0x2c]),
            num(&head[0x2c..0x2e]),
            4..8,
            0x10..0x14,
        ),
        2 => (
            num(&head[0x20..0x28]),
            num(&head[0x36..0x38]),
            num(&head[0x38..0x3a]),
            8..16,
            0x20..0x28,
        ),
        _ => return None,
    };
    if phentsize < size.end as u64 || phnum == 0 || phnum > 4096 {
        return None;
    }
    let mut table = vec![0u8; (phentsize * phnum) as usize];
    file.read_exact_at(&mut table, phoff).ok()?;
    const PT_INTERP: u64 = 3;
    let ph = table
        .chunks_exact(phentsize as usize)
        .find(|ph| num(&ph[0..4]) == PT_INTERP)?;
    let len = num(&ph[size]).min(4096) as usize;
    let mut name = vec![0u8; len];
    file.read_exact_at(&mut name, num(&ph[off])).ok()?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(PathBuf::from(OsStr::from_bytes(&name[..end])))
}

// ---------------------------------------------------------------------------
// status
// ---------------------------------------------------------------------------

/// What `status` found for one pid argument.
struct Found {
    /// The argument.
    pid: i32,
    result: io::Result<(ProcessIds, Vec<ThreadInfo>)>,
}

fn read_pid(pid: i32) -> io::Result<(ProcessIds, Vec<ThreadInfo>)> {
    let ids = process_ids(pid)?;
    // A thread id names its process's threads (and is said to be a thread).
    let threads = threads_of(ids.tgid)?;
    Ok((ids, threads))
}

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

/// The namespace whose pids `status` reads, for the JSON output.
fn namespace_word(ns: &io::Result<PidNamespace>) -> &'static str {
    match ns {
        Ok(PidNamespace::Own) => "own",
        Ok(PidNamespace::Ancestor { .. }) => "ancestor",
        Ok(PidNamespace::Unrelated) => "unrelated",
        Ok(_) | Err(_) => "unknown",
    }
}

fn status(pids: &[i32], json: bool) -> u8 {
    let ns = pid_namespace();
    match &ns {
        Ok(PidNamespace::Own) => {}
        Ok(other) => say!("reclaim-scope: note: {other}"),
        Err(e) => {
            say!("reclaim-scope: note: cannot tell which PID namespace /proc belongs to: {e}")
        }
    }
    let found: Vec<Found> = pids
        .iter()
        .map(|&pid| Found {
            pid,
            result: read_pid(pid),
        })
        .collect();
    let mut code = EXIT_OK;
    for f in &found {
        if let Err(e) = &f.result {
            say!("reclaim-scope: {e}");
            code = EXIT_FAILURE;
        }
    }
    let out = if json {
        status_json(&found, namespace_word(&ns))
    } else {
        status_text(&found)
    };
    match emit(&out) {
        Ok(()) => code,
        Err(c) => c,
    }
}

fn status_text(found: &[Found]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for f in found {
        let Ok((ids, threads)) = &f.result else {
            continue;
        };
        let flushers = threads.iter().filter(|t| t.flags.is_io_flusher()).count();
        let name = process_name(threads, ids.tgid);
        if ids.is_process() {
            let _ = write!(s, "pid {} {name:?}", f.pid);
        } else {
            let _ = write!(s, "tid {} is a thread of pid {} {name:?}", f.pid, ids.tgid);
        }
        if let [_, .., own] = ids.nspid.as_slice() {
            let _ = write!(s, " (pid {own} in its own PID namespace)");
        }
        let _ = writeln!(
            s,
            ": {} thread{}, {flushers} io-flusher{}",
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
            let fl = t.flags;
            let _ = writeln!(
                s,
                "  {:>8}  {:<4}  {:<4}  {:<14}  {:<10}  {:?}",
                t.tid,
                yes(fl.noio()),
                yes(fl.nofs()),
                yes(fl.local_throttle()),
                yes(fl.is_io_flusher()),
                t.name,
            );
        }
    }
    s
}

fn status_json(found: &[Found], namespace: &str) -> String {
    use serde_json::{json, Value};
    let procs: Vec<Value> = found
        .iter()
        .map(|f| match &f.result {
            Ok((ids, threads)) => json!({
                "pid": f.pid,
                "tgid": ids.tgid,
                "nspid": ids.nspid,
                "pid_namespace": namespace,
                "name": process_name(threads, ids.tgid),
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
            Err(e) => json!({
                "pid": f.pid,
                "pid_namespace": namespace,
                "error": e.to_string(),
            }),
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
/// The inode number the kernel gives the initial user namespace
/// (`PROC_USER_INIT_INO` in `<linux/proc_ns.h>`), fixed since Linux 3.8.
const PROC_USER_INIT_INO: u64 = 0xEFFF_FFFD;

/// What this process is allowed, as far as a refusal's diagnosis needs it.
struct Here {
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
    fn read() -> Here {
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
fn errno_text(errno: i32) -> String {
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
fn diagnose(errno: i32, here: &Here) -> Option<String> {
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

fn probe() -> u8 {
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
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

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
            &watch::Tally::sample(),
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
