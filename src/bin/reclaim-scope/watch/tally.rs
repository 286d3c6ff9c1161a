//! The pure part, second half: events into per-thread counts, the counts
//! into a table or JSON.

use super::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub reclaims: u64,
    pub fs_io_reclaims: u64,
    pub allocs: u64,
    pub fs_io_allocs: u64,
    pub throttle_events: u64,
    pub pauses: u64,
    pub paused_ms: i64,
    pub max_pause_ms: i64,
    pub vmscan_throttled: u64,
    /// gfp masks with a name this tool does not know.
    pub unknown_gfp: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.reclaims += o.reclaims;
        self.fs_io_reclaims += o.fs_io_reclaims;
        self.allocs += o.allocs;
        self.fs_io_allocs += o.fs_io_allocs;
        self.throttle_events += o.throttle_events;
        self.pauses += o.pauses;
        self.paused_ms += o.paused_ms;
        self.max_pause_ms = self.max_pause_ms.max(o.max_pause_ms);
        self.vmscan_throttled += o.vmscan_throttled;
        self.unknown_gfp += o.unknown_gfp;
    }

    /// What makes the exit status 1: reclaim that could recurse into
    /// FS/IO (or whose mask is unknown), or a dirty-throttle pause.
    pub fn is_unsafe(&self) -> bool {
        self.fs_io_reclaims > 0 || self.pauses > 0
    }
}

#[derive(Debug, Clone, Default)]
pub struct ThreadRow {
    pub pid: i32,
    pub comm: String,
    pub counts: Counts,
    /// `task_struct::flags` when last read from /proc.
    pub flags: Option<u32>,
    pub exited: bool,
}

/// Everything seen: per thread, plus lost events.
#[derive(Debug, Default)]
pub struct Tally {
    pub threads: BTreeMap<i32, ThreadRow>,
    pub lost: u64,
    pub lines: u64,
}

impl Tally {
    pub fn feed(&mut self, line: &str) {
        self.lines += 1;
        match parse_line(line) {
            Some(Line::Lost(n)) => self.lost += n,
            Some(Line::Event { tid, comm, kind }) => {
                let row = self.threads.entry(tid).or_default();
                // The latest name: a forked task execs and renames itself.
                if row.comm != comm {
                    row.comm = comm;
                }
                let c = &mut row.counts;
                match kind {
                    Kind::Reclaim(g) => {
                        c.reclaims += 1;
                        if g.fs_or_io() || g.unknown {
                            c.fs_io_reclaims += 1;
                        }
                        c.unknown_gfp += u64::from(g.unknown);
                    }
                    Kind::PageAlloc(g) => {
                        c.allocs += 1;
                        if g.fs_or_io() {
                            c.fs_io_allocs += 1;
                        }
                        c.unknown_gfp += u64::from(g.unknown);
                    }
                    Kind::Throttle { pause_ms } => {
                        c.throttle_events += 1;
                        if pause_ms > 0 {
                            c.pauses += 1;
                            c.paused_ms += pause_ms;
                            c.max_pause_ms = c.max_pause_ms.max(pause_ms);
                        }
                    }
                    Kind::VmscanThrottled => c.vmscan_throttled += 1,
                }
            }
            None => {}
        }
    }

    pub fn total(&self) -> Counts {
        let mut t = Counts::default();
        for r in self.threads.values() {
            t.add(&r.counts);
        }
        t
    }

    pub fn unsafe_seen(&self) -> bool {
        self.total().is_unsafe()
    }

    /// The one-line progress update.
    pub fn progress(&self, secs: f64) -> String {
        let t = self.total();
        format!(
            "{secs:.0} s: {} threads, reclaims {} ({} FS/IO), allocs {} ({} FS/IO), \
             throttle pauses {} ({:.2} s), lost {}",
            self.threads.len(),
            t.reclaims,
            t.fs_io_reclaims,
            t.allocs,
            t.fs_io_allocs,
            t.pauses,
            t.paused_ms as f64 / 1000.0,
            self.lost
        )
    }
}

fn bits_word(flags: Option<u32>) -> String {
    match flags {
        None => "?".into(),
        Some(f) => {
            let mut v = Vec::new();
            if f & PF_MEMALLOC_NOIO != 0 {
                v.push("NOIO");
            }
            if f & PF_LOCAL_THROTTLE != 0 {
                v.push("LOCAL_THROTTLE");
            }
            if v.is_empty() {
                "clear".into()
            } else {
                v.join("|")
            }
        }
    }
}

/// What the summary says besides the counts.
#[derive(Debug, Default)]
pub struct Notes {
    pub secs: f64,
    pub missing_events: Vec<String>,
    pub exited_pids: Vec<i32>,
    pub interrupted: bool,
}

/// The summary table (text).
pub fn table(t: &Tally, n: &Notes) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>7} {:>7} {:<16} {:>9} {:>7} {:>9} {:>7} {:>7} {:>9} {:>9} {:<20}",
        "PID",
        "TID",
        "NAME",
        "RECLAIMS",
        "FS/IO",
        "ALLOCS",
        "FS/IO",
        "PAUSES",
        "PAUSED",
        "VMTHROTL",
        "NOW"
    );
    let row = |s: &mut String, pid: String, tid: String, name: &str, c: &Counts, now: String| {
        let _ = writeln!(
            s,
            "{pid:>7} {tid:>7} {name:<16} {:>9} {:>7} {:>9} {:>7} {:>7} {:>8.2}s {:>9} {now:<20}",
            c.reclaims,
            c.fs_io_reclaims,
            c.allocs,
            c.fs_io_allocs,
            c.pauses,
            c.paused_ms as f64 / 1000.0,
            c.vmscan_throttled,
        );
    };
    for (tid, r) in &t.threads {
        let now = if r.exited {
            "exited".to_owned()
        } else {
            bits_word(r.flags)
        };
        row(
            &mut s,
            r.pid.to_string(),
            tid.to_string(),
            &r.comm,
            &r.counts,
            now,
        );
    }
    let total = t.total();
    row(
        &mut s,
        "total".into(),
        String::new(),
        &format!("{} threads", t.threads.len()),
        &total,
        String::new(),
    );
    let _ = writeln!(
        s,
        "watched {:.1} s{}; lost events: {}{}",
        n.secs,
        if n.interrupted { " (interrupted)" } else { "" },
        t.lost,
        if t.lost > 0 {
            " (the counts are a lower bound)"
        } else {
            ""
        }
    );
    if total.unknown_gfp > 0 {
        let _ = writeln!(
            s,
            "{} events had gfp flags this tool does not know; their reclaims count as FS/IO-capable",
            total.unknown_gfp
        );
    }
    for e in &n.missing_events {
        let _ = writeln!(s, "not traced (the kernel has no such event): {e}");
    }
    for p in &n.exited_pids {
        let _ = writeln!(s, "pid {p} exited while watched");
    }
    if total.is_unsafe() {
        let _ = writeln!(
            s,
            "UNSAFE: FS/IO-capable reclaim or dirty-throttle pauses seen (exit status 1)"
        );
    } else if t.lost > 0 {
        let _ = writeln!(
            s,
            "NOT PROVED: nothing unsafe seen, but {} events were lost (exit status 5)",
            t.lost
        );
    } else {
        let _ = writeln!(
            s,
            "safe: no FS/IO-capable reclaim and no dirty-throttle pause seen"
        );
    }
    s
}

fn counts_json(c: &Counts) -> serde_json::Value {
    serde_json::json!({
        "reclaims": c.reclaims,
        "fs_io_reclaims": c.fs_io_reclaims,
        "page_allocs": c.allocs,
        "fs_io_page_allocs": c.fs_io_allocs,
        "throttle_events": c.throttle_events,
        "throttle_pauses": c.pauses,
        "paused_ms": c.paused_ms,
        "max_pause_ms": c.max_pause_ms,
        "vmscan_throttled": c.vmscan_throttled,
        "unknown_gfp": c.unknown_gfp,
    })
}

/// The summary as one JSON object.
pub fn json(t: &Tally, n: &Notes) -> String {
    let threads: Vec<serde_json::Value> = t
        .threads
        .iter()
        .map(|(tid, r)| {
            serde_json::json!({
                "pid": r.pid,
                "tid": tid,
                "name": r.comm,
                "counts": counts_json(&r.counts),
                "flags": r.flags,
                "noio": r.flags.map(|f| f & PF_MEMALLOC_NOIO != 0),
                "local_throttle": r.flags.map(|f| f & PF_LOCAL_THROTTLE != 0),
                "exited": r.exited,
            })
        })
        .collect();
    let total = t.total();
    let v = serde_json::json!({
        "seconds": (n.secs * 10.0).round() / 10.0,
        "interrupted": n.interrupted,
        "lost_events": t.lost,
        "unsafe": total.is_unsafe(),
        "total": counts_json(&total),
        "threads": threads,
        "missing_events": n.missing_events,
        "exited_pids": n.exited_pids,
    });
    let mut s = v.to_string();
    s.push('\n');
    s
}
