//! Commands, threads and files of the VM: running with a timeout, polling,
//! writing sysfs files, a deterministic data pattern.

use std::fs;
use std::process::Command;

/// Runs a command to completion within `secs`; stdout+stderr are returned
/// (or put in the error). On timeout the command is killed — a process stuck
/// in the kernel may survive that, so scenario tests tear down by killing
/// their daemon, which fails its outstanding I/O.
pub fn run_for(secs: u64, prog: &str, args: &[&str]) -> Result<String, String> {
    use std::process::Stdio;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};
    static N: AtomicU64 = AtomicU64::new(0);
    let shown = format!("{prog} {}", args.join(" "));
    let out = std::env::temp_dir().join(format!(
        "vm-cmd-{}-{}.out",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = fs::File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone().map_err(|e| e.to_string())?)
        .stderr(f)
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                break None;
            }
        }
    };
    let text = fs::read_to_string(&out).unwrap_or_default();
    let _ = fs::remove_file(&out);
    match status {
        Some(st) if st.success() => Ok(text),
        Some(st) => Err(format!("`{shown}` failed ({st}): {}", text.trim())),
        None => Err(format!(
            "`{shown}` did not finish within {secs} s (deadlock?): {}",
            text.trim()
        )),
    }
}

/// [`run_for`], panicking with its error.
pub fn must(secs: u64, prog: &str, args: &[&str]) -> String {
    run_for(secs, prog, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Straight to the process's stdout, past libtest's capture: progress and
/// tables belong in the VM console (and CI log) even when the test passes.
pub fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Polls `ok` every 20 ms; panics after `secs` seconds.
#[track_caller]
pub fn wait_until(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (tid, comm) of every thread of `pid`, sorted; empty if it is gone.
pub fn threads(pid: u32) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let tid: i32 = e.file_name().to_str()?.parse().ok()?;
                    let comm = fs::read_to_string(e.path().join("comm")).ok()?;
                    Some((tid, comm.trim().to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Writes `value` to a sysfs/cgroupfs/configfs file, panicking with both.
#[track_caller]
pub fn write_file(path: &str, value: &str) {
    fs::write(path, value).unwrap_or_else(|e| panic!("write {value:?} to {path}: {e}"));
}

/// A deterministic, incompressible pattern (xorshift64*).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}
