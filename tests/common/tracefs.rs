//! tracefs: per-thread trace instances and their parsed events.

use super::*;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const EV_PAGE_ALLOC: &str = "kmem:mm_page_alloc";
pub const EV_DIRECT_RECLAIM: &str = "vmscan:mm_vmscan_direct_reclaim_begin";
pub const EV_MEMCG_RECLAIM: &str = "vmscan:mm_vmscan_memcg_reclaim_begin";
/// Entry of prctl(2); printed as `sys_prctl(option: 39, arg2: 1, ...)`, values in hex.
pub const EV_SYS_PRCTL: &str = "syscalls:sys_enter_prctl";

/// One line of `/sys/kernel/tracing/trace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// Event name without its system, e.g. `mm_page_alloc`.
    pub event: String,
    pub pid: i32,
    /// The `gfp_flags=` field, if the event has one.
    pub gfp: Option<String>,
    pub line: String,
}

impl TraceEvent {
    pub fn is(&self, full_or_short: &str) -> bool {
        let short = full_or_short.rsplit(':').next().unwrap_or(full_or_short);
        // Syscall events print "sys_<name>", not "sys_enter_<name>".
        self.event == short
            || short
                .strip_prefix("sys_enter_")
                .is_some_and(|n| self.event == format!("sys_{n}"))
    }

    /// `(option, arg2)` of a `sys_enter_prctl` event.
    pub fn prctl_args(&self) -> Option<(u64, u64)> {
        if self.event != "sys_prctl" {
            return None;
        }
        let field = |name: &str| -> Option<u64> {
            let v = self.line.split(&format!("{name}: ")).nth(1)?;
            let v = v.split([',', ')']).next()?.trim();
            u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()
        };
        Some((field("option")?, field("arg2")?))
    }

    /// Classification of [`gfp`](Self::gfp); panics on unknown names or a
    /// missing field so a proof cannot pass on a misparse.
    pub fn gfp_class(&self) -> GfpClass {
        let g = self
            .gfp
            .as_deref()
            .unwrap_or_else(|| panic!("event without gfp_flags: {}", self.line));
        classify_gfp(g).unwrap_or_else(|e| panic!("{e} (line: {})", self.line))
    }
}

/// Parse the text of the `trace` file. Lines look like
/// `   vm_harness-123     [001] .....    12.345678: mm_page_alloc: page=... gfp_flags=GFP_KERNEL`
/// (the irq-flags column may be absent, the task name may contain spaces).
pub fn parse_trace(text: &str) -> Vec<TraceEvent> {
    text.lines().filter_map(parse_trace_line).collect()
}

pub fn parse_trace_line(line: &str) -> Option<TraceEvent> {
    if line.trim_start().starts_with('#') || line.trim().is_empty() {
        return None;
    }
    // Find the "[cpu]" column whose left neighbour is "-<pid>".
    let b = line.as_bytes();
    let mut search = 0;
    let (pid, after) = loop {
        let open = search + line[search..].find('[')?;
        let close = open + line[open..].find(']')?;
        search = open + 1;
        if close == open + 1 || !b[open + 1..close].iter().all(u8::is_ascii_digit) {
            continue;
        }
        let left = line[..open].trim_end();
        let Some(dash) = left.rfind('-') else {
            continue;
        };
        let Ok(pid) = left[dash + 1..].parse::<i32>() else {
            continue;
        };
        break (pid, &line[close + 1..]);
    };
    // "<irq flags> <timestamp>: <event>: <fields>"
    let ts_end = after.find(": ")?;
    let rest = &after[ts_end + 2..];
    // "mm_page_alloc: page=..." or, for syscall events, "sys_prctl(option: 39, ...)".
    let cut = rest.find([':', '(']).unwrap_or(rest.len());
    let (event, fields) = (&rest[..cut], rest.get(cut + 1..).unwrap_or(""));
    let gfp = fields
        .split_whitespace()
        .find_map(|f| f.strip_prefix("gfp_flags="))
        .map(str::to_owned);
    Some(TraceEvent {
        event: event.trim().to_owned(),
        pid,
        gfp,
        line: line.to_owned(),
    })
}

/// An active tracefs session: the events are enabled (with a pid filter)
/// until [`stop`](Tracer::stop) or drop. Only one may exist at a time; the VM
/// runs tests with `--test-threads=1`.
pub struct Tracer {
    events: Vec<String>,
    stopped: bool,
}

fn tracefs(rel: &str) -> PathBuf {
    Path::new(TRACEFS).join(rel)
}

fn write_tracefs(rel: &str, value: &str) -> io::Result<()> {
    fs::write(tracefs(rel), value)
        .map_err(|e| io::Error::new(e.kind(), format!("write {value:?} to {TRACEFS}/{rel}: {e}")))
}

fn event_dir(ev: &str) -> String {
    // "kmem:mm_page_alloc" → "events/kmem/mm_page_alloc"
    format!("events/{}", ev.replacen(':', "/", 1))
}

impl Tracer {
    /// Enable `events` (`system:name`) for the given pids (empty: all tasks),
    /// with a cleared buffer.
    pub fn start(events: &[&str], pids: &[i32]) -> io::Result<Tracer> {
        if !tracefs("trace").exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{TRACEFS} is not mounted (run in the VM: `cargo xtask vm-test`)"),
            ));
        }
        let filter = if pids.is_empty() {
            "0".to_owned() // writing 0 clears a filter
        } else {
            pids.iter()
                .map(|p| format!("common_pid == {p}"))
                .collect::<Vec<_>>()
                .join(" || ")
        };
        let mut t = Tracer {
            events: Vec::new(),
            stopped: false,
        };
        for ev in events {
            let dir = event_dir(ev);
            write_tracefs(&format!("{dir}/filter"), &filter)?;
            t.events.push(ev.to_string());
        }
        write_tracefs("tracing_on", "1")?;
        // Opening `trace` with O_TRUNC empties the ring buffer.
        write_tracefs("trace", "")?;
        for ev in &t.events {
            write_tracefs(&format!("{}/enable", event_dir(ev)), "1")?;
        }
        Ok(t)
    }

    fn disable(&mut self) -> io::Result<()> {
        self.stopped = true;
        let mut r = Ok(());
        for ev in &self.events {
            let dir = event_dir(ev);
            if let Err(e) = write_tracefs(&format!("{dir}/enable"), "0") {
                r = Err(e);
            }
            let _ = write_tracefs(&format!("{dir}/filter"), "0");
        }
        r
    }

    /// Disable the events and return what was recorded.
    pub fn stop(mut self) -> io::Result<Vec<TraceEvent>> {
        // Disable before reading so nothing is appended while we read.
        let events = self.events.clone();
        let off = self.disable();
        let text = fs::read_to_string(tracefs("trace"))?;
        off?;
        if let Some(lost) = text
            .lines()
            .find(|l| l.contains("entries-in-buffer/entries-written:"))
        {
            // "# entries-in-buffer/entries-written: 17/17   #P:2": a
            // difference means the ring buffer overflowed and events are missing.
            let counts = lost
                .split(':')
                .nth(1)
                .and_then(|v| v.split_whitespace().next());
            if let Some((a, b)) = counts.and_then(|c| c.split_once('/')) {
                assert_eq!(
                    a, b,
                    "trace ring buffer overflowed while tracing {events:?}"
                );
            }
        }
        Ok(parse_trace(&text))
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.disable();
        }
    }
}

/// Set the per-CPU ring buffer size (`buffer_size_kb`); returns the previous
/// size, to restore it. A proof that counts events ("0 FS/IO reclaims") must
/// not lose any: size the buffer for all of them on one CPU, then check
/// [`trace_lost_events`].
pub fn set_trace_buffer_kb(kb: u64) -> io::Result<u64> {
    let old = fs::read_to_string(tracefs("buffer_size_kb"))?;
    // "1408", or "7 (expanded: 1408)" before the buffer was first used.
    let old = old
        .split("expanded: ")
        .nth(1)
        .unwrap_or(&old)
        .trim_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or(1408);
    write_tracefs("buffer_size_kb", &kb.to_string())?;
    Ok(old)
}

/// Events lost since the buffer was last cleared (a [`Tracer::start`]): the
/// sum of `overrun`, `commit overrun` and `dropped events` over
/// `per_cpu/cpu*/stats`.
pub fn trace_lost_events() -> io::Result<u64> {
    let mut lost = 0;
    for e in fs::read_dir(tracefs("per_cpu"))? {
        let stats = fs::read_to_string(e?.path().join("stats"))?;
        lost += parse_trace_stats_lost(&stats);
    }
    Ok(lost)
}

/// The lost-event counters of one `per_cpu/cpuN/stats` file.
pub fn parse_trace_stats_lost(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| matches!(k.trim(), "overrun" | "commit overrun" | "dropped events"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// Trace `events` of the calling thread while `f` runs.
pub fn trace_thread<R>(events: &[&str], f: impl FnOnce() -> R) -> (R, Vec<TraceEvent>) {
    trace_pids(events, &[gettid()], f)
}

/// Trace `events` of the given tasks (empty: all) while `f` runs.
pub fn trace_pids<R>(events: &[&str], pids: &[i32], f: impl FnOnce() -> R) -> (R, Vec<TraceEvent>) {
    let t = Tracer::start(events, pids).expect("start tracing");
    let r = f();
    let ev = t.stop().expect("read trace");
    (r, ev)
}

/// "GFP_HIGHUSER_MOVABLE|__GFP_COMP ×16, GFP_NOFS ×1" for messages and logs.
pub fn summarize_gfp(events: &[TraceEvent]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for e in events {
        let g = format!("{}:{}", e.event, e.gfp.as_deref().unwrap_or("-"));
        match counts.iter_mut().find(|(k, _)| *k == g) {
            Some((_, n)) => *n += 1,
            None => counts.push((g, 1)),
        }
    }
    if counts.is_empty() {
        return "no events".into();
    }
    counts
        .iter()
        .map(|(g, n)| format!("{g} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
