//! `reclaim-scope status`: the kernel's flags of every thread of the given
//! processes, as text or JSON.

use super::*;

/// What `status` found for one pid argument.
pub(crate) struct Found {
    /// The argument.
    pub(crate) pid: i32,
    pub(crate) result: io::Result<(ProcessIds, Vec<ThreadInfo>)>,
}

pub(crate) fn read_pid(pid: i32) -> io::Result<(ProcessIds, Vec<ThreadInfo>)> {
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

pub(crate) fn status(pids: &[i32], json: bool) -> u8 {
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

pub(crate) fn status_json(found: &[Found], namespace: &str) -> String {
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
