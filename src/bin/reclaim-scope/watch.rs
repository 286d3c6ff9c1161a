//! `reclaim-scope watch`: what the kernel does to a live daemon's threads,
//! from tracefs, read-only.
//!
//! The pure part — a trace line into an event, events into per-thread
//! counts, the counts into a table or JSON — is driven by the unit tests
//! below from recorded trace lines. The tracefs part uses an instance of
//! its own (`<tracefs>/instances/reclaim-scope-watch-<our pid>`), never the
//! global buffer, with `set_event_pid` plus `options/event-fork` so that
//! threads the daemon creates while watched are followed by the kernel
//! from their first event; the instance is removed on every way out that
//! can run code (end of the duration, all pids gone, SIGINT, SIGTERM,
//! SIGHUP, an error).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The events watched, `system/name`. Missing ones (older kernels) are
/// reported, not fatal, except that without any reclaim event nothing
/// could be proved.
pub const EVENTS: &[&str] = &[
    "vmscan/mm_vmscan_direct_reclaim_begin",
    "vmscan/mm_vmscan_memcg_reclaim_begin",
    "kmem/mm_page_alloc",
    "writeback/balance_dirty_pages",
    "vmscan/mm_vmscan_throttled",
];

const PF_MEMALLOC_NOIO: u32 = 0x0008_0000;
const PF_LOCAL_THROTTLE: u32 = 0x0010_0000;

// ---------------------------------------------------------------------------
// gfp flags as tracefs prints them
// ---------------------------------------------------------------------------

/// Whether an allocation may recurse into file-system (`__GFP_FS`) or
/// block-I/O (`__GFP_IO`) reclaim; `unknown` when a name was not
/// recognized (counted apart, never taken as safe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gfp {
    pub fs: bool,
    pub io: bool,
    pub unknown: bool,
}

impl Gfp {
    pub fn fs_or_io(self) -> bool {
        self.fs || self.io
    }
}

/// FS/IO content of every name `show_gfp_flags()` prints
/// (include/trace/events/mmflags.h); composites first, as the kernel
/// emits them.
const GFP_NAMES: &[(&str, bool, bool)] = &[
    ("GFP_TRANSHUGE", true, true),
    ("GFP_TRANSHUGE_LIGHT", true, true),
    ("GFP_HIGHUSER_MOVABLE", true, true),
    ("GFP_HIGHUSER", true, true),
    ("GFP_USER", true, true),
    ("GFP_TEMPORARY", true, true),
    ("GFP_KERNEL_ACCOUNT", true, true),
    ("GFP_KERNEL", true, true),
    ("GFP_NOFS", false, true),
    ("GFP_ATOMIC", false, false),
    ("GFP_NOIO", false, false),
    ("GFP_NOWAIT", false, false),
    ("GFP_DMA", false, false),
    ("GFP_DMA32", false, false),
    ("GFP_IOFS", true, true),
    ("__GFP_IO", false, true),
    ("__GFP_FS", true, false),
    ("__GFP_RECLAIM", false, false),
];

/// `__GFP_*` bits that say nothing about FS/IO, across 4.x–6.x.
const GFP_OTHER_BITS: &[&str] = &[
    "DMA",
    "HIGHMEM",
    "DMA32",
    "MOVABLE",
    "RECLAIMABLE",
    "HIGH",
    "ATOMIC",
    "ZERO",
    "DIRECT_RECLAIM",
    "KSWAPD_RECLAIM",
    "WRITE",
    "NOWARN",
    "RETRY_MAYFAIL",
    "REPEAT",
    "NOFAIL",
    "NORETRY",
    "MEMALLOC",
    "COMP",
    "NOMEMALLOC",
    "HARDWALL",
    "THISNODE",
    "ACCOUNT",
    "ZEROTAGS",
    "SKIP_ZERO",
    "SKIP_KASAN",
    "SKIP_KASAN_POISON",
    "SKIP_KASAN_UNPOISON",
    "NOLOCKDEP",
    "NO_OBJ_EXT",
    "COLD",
    "NOTRACK",
    "OTHER_NODE",
    "NOACCOUNT",
    "WAIT",
    "NO_KSWAPD",
    "KMEMCG",
];

/// Classifies a `gfp_flags=` value (`GFP_KERNEL|__GFP_COMP`, `0x400c00`).
pub fn classify_gfp(s: &str) -> Gfp {
    let s = s.trim();
    let mut c = Gfp::default();
    if s == "none" || s == "0" || s == "0x0" {
        return c;
    }
    for tok in s.split('|').map(str::trim) {
        if let Some((_, fs, io)) = GFP_NAMES.iter().find(|(n, _, _)| *n == tok) {
            c.fs |= fs;
            c.io |= io;
        } else if tok
            .strip_prefix("__GFP_")
            .is_some_and(|b| GFP_OTHER_BITS.contains(&b))
        {
        } else if let Some(v) = tok
            .strip_prefix("0x")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            // Unnamed bits; __GFP_IO and __GFP_FS are 0x40 and 0x80.
            c.io |= v & 0x40 != 0;
            c.fs |= v & 0x80 != 0;
        } else {
            c.unknown = true;
        }
    }
    c
}

// ---------------------------------------------------------------------------
// trace lines
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Direct or memcg reclaim entered, with its gfp mask.
    Reclaim(Gfp),
    PageAlloc(Gfp),
    /// `balance_dirty_pages`: milliseconds this call sleeps (≤ 0: none).
    Throttle {
        pause_ms: i64,
    },
    /// `mm_vmscan_throttled`: reclaim made the task wait.
    VmscanThrottled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Event {
        tid: i32,
        comm: String,
        kind: Kind,
    },
    /// `CPU:1 [LOST 42 EVENTS]` from trace_pipe.
    Lost(u64),
}

/// The value of `name=` among space-separated fields (exact name:
/// `pause=` never matches `dirtied_pause=`).
pub fn field<'a>(fields: &'a str, name: &str) -> Option<&'a str> {
    fields
        .split_whitespace()
        .find_map(|t| t.strip_prefix(name)?.strip_prefix('='))
}

/// Parses one line of `trace_pipe`; `None` for anything else (comments,
/// other events, a malformed line).
pub fn parse_line(line: &str) -> Option<Line> {
    let t = line.trim();
    if let Some(rest) = t.split_once("[LOST ").map(|(_, r)| r) {
        return rest.split_whitespace().next()?.parse().ok().map(Line::Lost);
    }
    if t.starts_with('#') || t.is_empty() {
        return None;
    }
    // "<comm>-<tid> [cpu] <flags> <ts>: <event>: <fields>"; comm may hold
    // spaces, dashes and brackets: the "[cpu]" column is the first "[digits]"
    // whose left neighbour ends in "-<digits>".
    let b = line.as_bytes();
    let mut search = 0;
    let (tid, comm, after) = loop {
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
        let Ok(tid) = left[dash + 1..].parse::<i32>() else {
            continue;
        };
        break (tid, left[..dash].trim().to_owned(), &line[close + 1..]);
    };
    let rest = &after[after.find(": ")? + 2..];
    let (event, fields) = rest
        .split_once(": ")
        .unwrap_or((rest.trim_end_matches(':'), ""));
    let gfp = || classify_gfp(field(fields, "gfp_flags").unwrap_or("?"));
    let kind = match event.trim() {
        "mm_vmscan_direct_reclaim_begin" | "mm_vmscan_memcg_reclaim_begin" => Kind::Reclaim(gfp()),
        "mm_page_alloc" => Kind::PageAlloc(gfp()),
        "balance_dirty_pages" => Kind::Throttle {
            pause_ms: field(fields, "pause")?.parse().ok()?,
        },
        "mm_vmscan_throttled" => Kind::VmscanThrottled,
        _ => return None,
    };
    Some(Line::Event { tid, comm, kind })
}

// ---------------------------------------------------------------------------
// counts
// ---------------------------------------------------------------------------

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

#[cfg(test)]
impl Tally {
    /// One thread with one event, for tests of the output's shape.
    pub fn sample() -> Tally {
        let mut t = Tally::default();
        t.feed("nbd-conn-231 [000] ..... 88.9: mm_page_alloc: page=0 pfn=0x1 order=0 migratetype=1 gfp_flags=GFP_NOIO");
        t
    }
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

// ---------------------------------------------------------------------------
// tracefs
// ---------------------------------------------------------------------------

/// Why watching could not start.
#[derive(Debug)]
pub enum Failure {
    /// tracefs is not mounted, or not permitted: the message names the fix.
    Tracefs(String),
    /// A pid does not exist (or cannot be read).
    Pid(String),
    /// Something else went wrong with tracefs or /proc.
    Other(String),
}

/// The tracefs mount point, from /proc/mounts (tracefs itself, else the
/// one under debugfs).
fn tracefs_root() -> Result<PathBuf, Failure> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, ty) = (f.next()?, f.next()?, f.next()?);
            match ty {
                "tracefs" => Some(PathBuf::from(dir)),
                "debugfs" => Some(Path::new(dir).join("tracing")),
                _ => None,
            }
        })
        .collect();
    found.sort_by_key(|p| !p.starts_with("/sys/kernel/tracing"));
    for p in found {
        match fs::metadata(p.join("instances")) {
            Ok(_) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(not_permitted(&p, &e));
            }
            Err(_) => {}
        }
    }
    Err(Failure::Tracefs(
        "tracefs is not mounted (no /sys/kernel/tracing/instances): mount it with \
         `mount -t tracefs nodev /sys/kernel/tracing` (a kernel with CONFIG_TRACING)"
            .into(),
    ))
}

fn not_permitted(dir: &Path, e: &io::Error) -> Failure {
    Failure::Tracefs(format!(
        "tracefs at {} is not accessible ({e}): run `reclaim-scope watch` as root (it \
         creates its own trace instance there; reading a daemon's events needs what \
         root has)",
        dir.display()
    ))
}

/// Our trace instance; removed on drop.
pub struct Instance {
    dir: PathBuf,
    /// `system/name` of the enabled events.
    enabled: Vec<String>,
}

impl Instance {
    fn create(root: &Path) -> Result<Instance, Failure> {
        let dir = root
            .join("instances")
            .join(format!("reclaim-scope-watch-{}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => Ok(Instance {
                dir,
                enabled: Vec::new(),
            }),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                ) || e.raw_os_error() == Some(libc::EPERM) =>
            {
                Err(not_permitted(root, &e))
            }
            Err(e) => Err(Failure::Other(format!(
                "cannot create the trace instance {}: {e}",
                dir.display()
            ))),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn write(&self, rel: &str, value: &str) -> Result<(), Failure> {
        fs::write(self.path(rel), value).map_err(|e| {
            Failure::Other(format!(
                "write {value:?} to {}: {e}",
                self.path(rel).display()
            ))
        })
    }

    /// Adds tids to `set_event_pid` (appending: the file is not truncated).
    fn follow(&self, tids: &[i32]) -> Result<(), Failure> {
        if tids.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = tids.iter().map(i32::to_string).collect();
        fs::OpenOptions::new()
            .append(true)
            .open(self.path("set_event_pid"))
            .and_then(|mut f| f.write_all(format!("{}\n", list.join(" ")).as_bytes()))
            .map_err(|e| Failure::Other(format!("set_event_pid {}: {e}", list.join(" "))))
    }

    fn disable(&mut self) {
        for ev in std::mem::take(&mut self.enabled) {
            let _ = fs::write(self.path(&format!("events/{ev}/enable")), "0");
        }
    }

    /// Events lost in the ring buffer: `overrun` + `dropped events` of
    /// every `per_cpu/cpuN/stats`.
    fn lost(&self) -> u64 {
        let Ok(rd) = fs::read_dir(self.path("per_cpu")) else {
            return 0;
        };
        rd.flatten()
            .filter_map(|e| fs::read_to_string(e.path().join("stats")).ok())
            .map(|s| parse_stats_lost(&s))
            .sum()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.disable();
        // EBUSY while a reader still has a file open: ours are closed by
        // now, but give the kernel a moment.
        for _ in 0..50 {
            match fs::remove_dir(&self.dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return,
            }
        }
        let _ = writeln!(
            io::stderr(),
            "reclaim-scope: could not remove the trace instance {}; remove it with rmdir",
            self.dir.display()
        );
    }
}

/// `overrun` + `commit overrun` + `dropped events` of one stats file.
pub fn parse_stats_lost(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| matches!(k.trim(), "overrun" | "commit overrun" | "dropped events"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// Whether a `/proc/.../stat` line says the task is dead: a zombie
/// (exited, not yet reaped by its parent) or dead.
fn stat_is_dead(stat: &str) -> bool {
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|st| st == "Z" || st == "X")
}

/// Thread ids of a process; `None` when it is gone (or a zombie).
fn tids_of(pid: i32) -> Option<Vec<i32>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    if stat_is_dead(&stat) {
        return None;
    }
    let rd = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut v: Vec<i32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    Some(v)
}

fn read_flags(pid: i32, tid: i32) -> Option<(u32, String)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let flags = stat[close + 1..].split_whitespace().nth(6)?.parse().ok()?;
    Some((flags, stat[open + 1..close].to_owned()))
}

pub struct Options {
    pub pids: Vec<i32>,
    pub duration: Option<Duration>,
    /// A progress line every second on stderr.
    pub progress: bool,
    /// Per-CPU ring buffer of the instance, KiB (`buffer_size_kb`); `None`:
    /// [`DEFAULT_BUFFER_KB`], and a kernel that refuses it keeps its own.
    pub buffer_kb: Option<u64>,
}

/// The instance's per-CPU ring buffer unless `--buffer-kb` says otherwise:
/// large enough for bursts of page allocations between two reads.
pub const DEFAULT_BUFFER_KB: u64 = 4096;

/// What a finished watch hands back to the command line.
pub struct Outcome {
    pub tally: Tally,
    pub notes: Notes,
}

/// Refreshes the rows from /proc: new threads (followed), flags, exits.
/// Returns false when every watched pid is gone.
fn refresh(
    inst: &Instance,
    pids: &[i32],
    tally: &mut Tally,
    notes: &mut Notes,
) -> Result<bool, Failure> {
    let mut any = false;
    for &pid in pids {
        let Some(tids) = tids_of(pid) else {
            if !notes.exited_pids.contains(&pid) {
                notes.exited_pids.push(pid);
            }
            continue;
        };
        any = true;
        let new: Vec<i32> = tids
            .iter()
            .copied()
            .filter(|t| tally.threads.get(t).map_or(true, |r| r.pid == 0))
            .collect();
        inst.follow(&new)?;
        for tid in tids {
            let row = tally.threads.entry(tid).or_default();
            row.pid = pid;
            if let Some((f, comm)) = read_flags(pid, tid) {
                row.flags = Some(f);
                row.comm = comm;
            }
        }
    }
    // Threads seen in the trace but gone from /proc; children the kernel
    // followed (event-fork) have no watched pid: mark them with their tgid.
    for (tid, row) in tally.threads.iter_mut() {
        if row.pid == 0 {
            if let Some(tgid) = fs::read_to_string(format!("/proc/{tid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Tgid:"))
                        .and_then(|v| v.trim().parse().ok())
                })
            {
                row.pid = tgid;
            }
        }
        let stat = (row.pid != 0)
            .then(|| fs::read_to_string(format!("/proc/{}/task/{tid}/stat", row.pid)).ok())
            .flatten();
        match stat {
            Some(st) if !stat_is_dead(&st) => {
                if let Some((f, comm)) = read_flags(row.pid, *tid) {
                    row.flags = Some(f);
                    row.comm = comm;
                }
            }
            _ => row.exited = true,
        }
    }
    Ok(any)
}

/// Watches until the duration ends, every pid exits, or `stop` is set.
pub fn watch(opts: &Options, stop: &Arc<AtomicBool>) -> Result<Outcome, Failure> {
    let mut tally = Tally::default();
    let mut notes = Notes::default();
    for &pid in &opts.pids {
        match fs::read_dir(format!("/proc/{pid}/task")) {
            Ok(_) if tids_of(pid).is_none() => {
                return Err(Failure::Pid(format!(
                    "pid {pid} has exited (a zombie its parent has not reaped)"
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Failure::Pid(format!("pid {pid} does not exist")));
            }
            Err(e) => return Err(Failure::Pid(format!("cannot read /proc/{pid}/task: {e}"))),
        }
    }
    let root = tracefs_root()?;
    let mut inst = Instance::create(&root)?;
    match opts.buffer_kb {
        Some(kb) => inst.write("buffer_size_kb", &kb.to_string())?,
        None => {
            let _ = inst.write("buffer_size_kb", &DEFAULT_BUFFER_KB.to_string());
        }
    }
    inst.write("options/event-fork", "1")?;
    refresh(&inst, &opts.pids, &mut tally, &mut notes)?;
    for ev in EVENTS {
        if inst.path(&format!("events/{ev}")).exists() {
            inst.write(&format!("events/{ev}/enable"), "1")?;
            inst.enabled.push((*ev).to_owned());
        } else {
            notes.missing_events.push(ev.replace('/', ":"));
        }
    }
    if !inst.enabled.iter().any(|e| e.contains("reclaim_begin")) {
        return Err(Failure::Other(
            "this kernel has no vmscan reclaim tracepoints: nothing to watch".into(),
        ));
    }
    // Threads created between the first listing and event-fork taking hold.
    refresh(&inst, &opts.pids, &mut tally, &mut notes)?;
    let mut pipe = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(inst.path("trace_pipe"))
        .map_err(|e| Failure::Other(format!("open trace_pipe: {e}")))?;

    let t0 = Instant::now();
    let mut last = t0;
    let mut buf = vec![0u8; 1 << 16];
    let mut pending: Vec<u8> = Vec::new();
    let feed = |bytes: &[u8], pending: &mut Vec<u8>, tally: &mut Tally| {
        pending.extend_from_slice(bytes);
        if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
            for l in String::from_utf8_lossy(&pending[..end]).lines() {
                tally.feed(l);
            }
            pending.drain(..=end);
        }
    };
    let mut ended = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            notes.interrupted = true;
            break;
        }
        if opts.duration.is_some_and(|d| t0.elapsed() >= d) || ended {
            break;
        }
        match pipe.read(&mut buf) {
            Ok(0) => std::thread::sleep(Duration::from_millis(20)),
            Ok(n) => feed(&buf[..n], &mut pending, &mut tally),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::Other(format!("read trace_pipe: {e}"))),
        }
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            ended = !refresh(&inst, &opts.pids, &mut tally, &mut notes)?;
            if opts.progress {
                let _ = write!(
                    io::stderr(),
                    "\r{}\x1b[K",
                    tally.progress(t0.elapsed().as_secs_f64())
                );
            }
        }
    }
    notes.secs = t0.elapsed().as_secs_f64();
    inst.disable();
    // Drain what the ring buffer still holds.
    loop {
        match pipe.read(&mut buf) {
            Ok(n) if n > 0 => feed(&buf[..n], &mut pending, &mut tally),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    if !pending.is_empty() {
        let rest = std::mem::take(&mut pending);
        tally.feed(&String::from_utf8_lossy(&rest));
    }
    drop(pipe);
    let _ = refresh(&inst, &opts.pids, &mut tally, &mut notes);
    // LOST lines already counted what trace_pipe skipped; the stats say
    // what the ring buffer overwrote or dropped.
    tally.lost = tally.lost.max(inst.lost());
    if opts.progress {
        let _ = writeln!(io::stderr());
    }
    drop(inst);
    Ok(Outcome { tally, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORDED: &str = "\
# tracer: nop
      nbd-conn-231     [000] d..1.    88.914100: mm_page_alloc: page=000000001 pfn=0x1234 order=0 migratetype=1 gfp_flags=GFP_NOIO|__GFP_COMP
      nbd-conn-231     [000] .....    88.914200: mm_vmscan_memcg_reclaim_begin: order=0 gfp_flags=GFP_NOIO
      nbd-conn-231     [000] .....    88.914321: balance_dirty_pages: bdi 1:1: limit=4096 setpoint=3072 dirty=4500 bdi_setpoint=120 bdi_dirty=40 dirty_ratelimit=102 task_ratelimit=0 dirtied=32 dirtied_pause=32 paused=0 pause=0 period=0 think=0 cgroup_ino=1
      nbd server-232   [001] .....    89.000001: mm_page_alloc: page=000000002 pfn=0x1235 order=0 migratetype=1 gfp_flags=GFP_HIGHUSER_MOVABLE|__GFP_COMP
      nbd server-232   [001] .....    89.000002: mm_vmscan_direct_reclaim_begin: order=0 gfp_flags=GFP_KERNEL|__GFP_ACCOUNT
      nbd server-232   [001] .....    89.100000: balance_dirty_pages: bdi 1:1: limit=4096 setpoint=3072 dirty=4600 wb_setpoint=120 wb_dirty=40 dirty_ratelimit=25 task_ratelimit=12 dirtied=8 dirtied_pause=64 paused=0 pause=200 period=200 think=0 cgroup_ino=1
      nbd server-232   [001] .....    89.300000: mm_vmscan_throttled: nid=0 usec_timeout=100000 usect_delayed=100000 reason=VMSCAN_THROTTLE_WRITEBACK
CPU:1 [LOST 3 EVENTS]
      nbd-conn-231     [000] .....    90.0: sched_switch: prev_comm=x
";

    #[test]
    fn recorded_lines_are_counted_per_thread() {
        let mut t = Tally::default();
        for l in RECORDED.lines() {
            t.feed(l);
        }
        assert_eq!(t.lost, 3);
        let a = &t.threads[&231];
        assert_eq!(a.comm, "nbd-conn");
        assert_eq!(
            a.counts,
            Counts {
                reclaims: 1,
                allocs: 1,
                throttle_events: 1,
                ..Counts::default()
            }
        );
        assert!(!a.counts.is_unsafe());
        let b = &t.threads[&232];
        assert_eq!(b.comm, "nbd server");
        assert_eq!(
            b.counts,
            Counts {
                reclaims: 1,
                fs_io_reclaims: 1,
                allocs: 1,
                fs_io_allocs: 1,
                throttle_events: 1,
                pauses: 1,
                paused_ms: 200,
                max_pause_ms: 200,
                vmscan_throttled: 1,
                unknown_gfp: 0,
            }
        );
        assert!(t.unsafe_seen());
        let tot = t.total();
        assert_eq!((tot.reclaims, tot.fs_io_reclaims, tot.pauses), (2, 1, 1));
        let notes = Notes {
            secs: 2.0,
            ..Notes::default()
        };
        let text = table(&t, &notes);
        assert!(text.contains("UNSAFE"), "{text}");
        assert!(
            text.contains("lost events: 3 (the counts are a lower bound)"),
            "{text}"
        );
        let j: serde_json::Value = serde_json::from_str(&json(&t, &notes)).unwrap();
        assert_eq!(j["unsafe"], true);
        assert_eq!(j["lost_events"], 3);
        assert_eq!(j["total"]["throttle_pauses"], 1);
        assert_eq!(j["total"]["paused_ms"], 200);
        assert_eq!(j["threads"][1]["name"], "nbd server");
        assert_eq!(j["threads"][1]["counts"]["fs_io_reclaims"], 1);
    }

    #[test]
    fn a_noio_thread_is_safe_and_its_bits_are_shown() {
        let mut t = Tally::default();
        t.feed(RECORDED.lines().nth(2).unwrap());
        t.threads.get_mut(&231).unwrap().flags = Some(PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE);
        assert!(!t.unsafe_seen());
        let text = table(&t, &Notes::default());
        assert!(text.contains("NOIO|LOCAL_THROTTLE"), "{text}");
        assert!(text.contains("safe: no FS/IO-capable reclaim"), "{text}");
        let j: serde_json::Value = serde_json::from_str(&json(&t, &Notes::default())).unwrap();
        assert_eq!(j["unsafe"], false);
        assert_eq!(j["threads"][0]["local_throttle"], true);
    }

    #[test]
    fn lost_events_without_anything_unsafe_are_not_proved_safe() {
        let mut t = Tally::default();
        t.feed(RECORDED.lines().nth(2).unwrap());
        t.feed("CPU:1 [LOST 17 EVENTS]");
        assert!(!t.unsafe_seen());
        assert_eq!(t.lost, 17);
        let text = table(&t, &Notes::default());
        assert!(
            text.contains("lost events: 17 (the counts are a lower bound)"),
            "{text}"
        );
        assert!(
            text.contains(
                "NOT PROVED: nothing unsafe seen, but 17 events were lost (exit status 5)"
            ),
            "{text}"
        );
        assert!(!text.contains("safe: no FS/IO"), "{text}");
        let j: serde_json::Value = serde_json::from_str(&json(&t, &Notes::default())).unwrap();
        assert_eq!(
            (j["unsafe"].clone(), j["lost_events"].clone()),
            (false.into(), 17.into())
        );
    }

    #[test]
    fn fields_by_exact_name_and_bad_lines() {
        assert_eq!(field("dirtied_pause=32 pause=-4", "pause"), Some("-4"));
        assert_eq!(field("dirtied_pause=32", "pause"), None);
        // A throttle line without pause= is not counted as a pause.
        assert_eq!(
            parse_line("x-1 [000] .... 1.0: balance_dirty_pages: bdi 1:0: dirtied_pause=3"),
            None
        );
        assert_eq!(parse_line("garbage"), None);
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("CPU:0 [LOST 12 EVENTS]"), Some(Line::Lost(12)));
        // Unknown gfp names are never safe for a reclaim.
        let mut t = Tally::default();
        t.feed(
            "d-5 [000] .... 1.0: mm_vmscan_direct_reclaim_begin: order=0 gfp_flags=GFP_NEWTHING",
        );
        assert_eq!(t.threads[&5].counts.fs_io_reclaims, 1);
        assert_eq!(t.threads[&5].counts.unknown_gfp, 1);
        assert_eq!(
            classify_gfp("0xc0"),
            Gfp {
                fs: true,
                io: true,
                unknown: false
            }
        );
        assert_eq!(
            classify_gfp("GFP_NOFS"),
            Gfp {
                fs: false,
                io: true,
                unknown: false
            }
        );
        assert_eq!(classify_gfp("GFP_NOWAIT|__GFP_NOWARN"), Gfp::default());
    }

    #[test]
    fn zombies_count_as_exited() {
        assert!(stat_is_dead("245 (sleep) Z 1 245 245 0 -1 4227084 0"));
        assert!(stat_is_dead("245 (a) b) X 1"));
        assert!(!stat_is_dead("245 (Z) S 1 245"));
        assert!(!stat_is_dead("garbage"));
    }

    #[test]
    fn a_task_renamed_by_exec_gets_its_new_name() {
        let mut t = Tally::default();
        t.feed("sh-248 [000] .... 1.0: mm_page_alloc: page=0 pfn=0x1 order=0 migratetype=0 gfp_flags=GFP_KERNEL");
        t.feed("dd-248 [000] .... 1.1: mm_page_alloc: page=0 pfn=0x2 order=0 migratetype=0 gfp_flags=GFP_KERNEL");
        assert_eq!(t.threads[&248].comm, "dd");
        assert_eq!(t.threads[&248].counts.allocs, 2);
    }

    #[test]
    fn stats_lost_counters() {
        assert_eq!(
            parse_stats_lost("entries: 5\noverrun: 2\ncommit overrun: 1\ndropped events: 4\n"),
            7
        );
    }
}
