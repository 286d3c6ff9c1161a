//! Shared support for the kernel-truth tests (`tests/vm_*.rs`).
//!
//! These helpers read the kernel's own view — `/proc/thread-self/stat` flags
//! and tracefs gfp masks — never the crate's bookkeeping. Integration tests
//! include it with `mod common;`. Plain safe Rust: std only.
//!
//! The string parsers (stat flags, trace lines, gfp classification) are
//! unit-tested on the host by every `cargo test` (in `tests/vm_harness.rs`); the rest needs the VM
//! (`cargo xtask vm-test`), where PID 1 has CAP_SYS_RESOURCE and tracefs is
//! mounted.
//!
//! `raw_set_io_flusher`/`raw_get_io_flusher` are the tests' only `unsafe`:
//! the harness must be able to flip the flag without the crate, to prove
//! itself and to change the flag behind the crate's back.

// Each test file uses a different subset.
#![allow(dead_code)]

pub mod scratch;
pub mod seed;
pub mod tcmu;

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `prctl` options (not in `libc` for Linux targets).
pub const PR_SET_IO_FLUSHER: i32 = 57;
pub const PR_GET_IO_FLUSHER: i32 = 58;

/// Bits of `task_struct::flags` (include/linux/sched.h).
pub const PF_MEMALLOC_NOFS: u32 = 0x0004_0000;
pub const PF_MEMALLOC_NOIO: u32 = 0x0008_0000;
pub const PF_LOCAL_THROTTLE: u32 = 0x0010_0000;
/// What `PR_SET_IO_FLUSHER(1)` sets and `(0)` clears.
pub const IO_FLUSHER_BITS: u32 = PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE;

/// The reason string every VM-only test carries in `#[ignore = ...]`.
pub const VM_ONLY: &str =
    "kernel truth: needs CAP_SYS_RESOURCE; runs in the VM via `cargo xtask vm-test`";

/// True inside the kernel-truth VM (its /init exports `RECLAIM_SCOPE_VM=1`).
pub fn in_vm() -> bool {
    std::env::var_os("RECLAIM_SCOPE_VM").is_some_and(|v| v == "1")
}

/// First line of every VM test: a VM test run on a host (e.g. through
/// `cargo test -- --include-ignored`) must fail loudly, not pass vacuously.
pub fn require_vm() {
    assert!(
        in_vm(),
        "kernel-truth test: needs CAP_SYS_RESOURCE and tracefs; run `cargo xtask vm-test`"
    );
}

/// The running kernel's (major, minor), from /proc/sys/kernel/osrelease
/// (`5.10.0-35-cloud-amd64` → `(5, 10)`).
pub fn kernel_version() -> (u32, u32) {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut it = rel
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Report that the calling test cannot apply to the running kernel, and why.
/// `cargo xtask vm-test` reads `$RECLAIM_VM_NA_FILE` after each binary and
/// counts the test as not applicable, never as passed. The test returns
/// right after this call.
pub fn not_applicable(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("(unnamed test)")
        .to_owned();
    eprintln!("NOT APPLICABLE: {test}: {reason}");
    if let Some(path) = std::env::var_os("RECLAIM_VM_NA_FILE") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open $RECLAIM_VM_NA_FILE");
        writeln!(f, "{test}: {}", reason.replace('\n', " ")).expect("write $RECLAIM_VM_NA_FILE");
    }
}

/// The calling thread's kernel thread id, from the `/proc/thread-self`
/// symlink (`<pid>/task/<tid>`): no syscall wrapper, no `unsafe`.
pub fn gettid() -> i32 {
    let link = fs::read_link("/proc/thread-self").expect("readlink /proc/thread-self");
    let s = link.to_string_lossy();
    s.rsplit('/')
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("unexpected /proc/thread-self target {s:?}"))
}

/// Field 9 (`flags`) of a `/proc/.../stat` line. The comm field (2) may hold
/// spaces and parentheses, so fields are counted after the **last** `)`.
pub fn parse_stat_flags(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")": state(3) ppid(4) pgrp(5) session(6) tty_nr(7) tpgid(8) flags(9).
    rest.split_whitespace().nth(6)?.parse().ok()
}

/// The calling thread's `task_struct::flags`, as the kernel reports them.
pub fn thread_flags() -> u32 {
    let stat = fs::read_to_string("/proc/thread-self/stat").expect("read /proc/thread-self/stat");
    parse_stat_flags(&stat).unwrap_or_else(|| panic!("cannot parse flags from {stat:?}"))
}

/// Flags of any thread, or `None` if it has exited.
pub fn task_flags(pid: i32, tid: i32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    parse_stat_flags(&stat)
}

/// Render the memalloc bits of a flags word for assertion messages.
pub fn describe_flags(f: u32) -> String {
    let mut v = Vec::new();
    for (bit, name) in [
        (PF_MEMALLOC_NOFS, "PF_MEMALLOC_NOFS"),
        (PF_MEMALLOC_NOIO, "PF_MEMALLOC_NOIO"),
        (PF_LOCAL_THROTTLE, "PF_LOCAL_THROTTLE"),
    ] {
        if f & bit != 0 {
            v.push(name);
        }
    }
    format!(
        "{f:#x} [{}]",
        if v.is_empty() {
            "none".into()
        } else {
            v.join("|")
        }
    )
}

/// Run `f` on a new thread and return its result; a panic in `f` is resumed
/// here. Kernel state is per thread and inherited by `clone()`, so each test
/// starts from a thread whose flags it can check instead of the harness's.
pub fn on_fresh_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    // Named after the test (libtest's thread name), so that
    // `not_applicable` can say which test it is.
    let mut b = std::thread::Builder::new();
    if let Some(n) = std::thread::current().name() {
        b = b.name(n.to_owned());
    }
    match b.spawn(f).expect("spawn a test thread").join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    }
}

// ---------------------------------------------------------------------------
// gfp flags as printed by tracefs
// ---------------------------------------------------------------------------

/// Whether an allocation may recurse into file-system (`__GFP_FS`) and
/// block-I/O (`__GFP_IO`) reclaim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GfpClass {
    pub fs: bool,
    pub io: bool,
}

impl GfpClass {
    /// Neither FS nor IO: what every allocation of an I/O flusher must be.
    pub fn is_noio(self) -> bool {
        !self.fs && !self.io
    }
}

const GFP_IO_BIT: u64 = 0x40;
const GFP_FS_BIT: u64 = 0x80;

/// FS/IO content of every name `show_gfp_flags()` can print
/// (include/trace/events/mmflags.h, include/linux/gfp_types.h; older names
/// from 4.x kept so a different guest kernel does not break the parser).
/// `__print_flags` emits the first matching mask of its table and removes
/// its bits, so the names in one string are disjoint and their union is the
/// mask: composites first (`GFP_HIGHUSER_MOVABLE|__GFP_COMP`), then single
/// bits, then leftover bits in hex.
const GFP_NAMES: &[(&str, bool, bool)] = &[
    // (name, __GFP_FS, __GFP_IO)
    ("GFP_TRANSHUGE", true, true), // GFP_TRANSHUGE_LIGHT | __GFP_DIRECT_RECLAIM
    ("GFP_TRANSHUGE_LIGHT", true, true), // (GFP_HIGHUSER_MOVABLE|...) & ~__GFP_RECLAIM
    ("GFP_HIGHUSER_MOVABLE", true, true), // GFP_HIGHUSER | __GFP_MOVABLE
    ("GFP_HIGHUSER", true, true),  // GFP_USER | __GFP_HIGHMEM
    ("GFP_USER", true, true),      // __GFP_RECLAIM|__GFP_IO|__GFP_FS|__GFP_HARDWALL
    ("GFP_TEMPORARY", true, true), // (≤4.14) GFP_KERNEL | __GFP_RECLAIMABLE
    ("GFP_KERNEL_ACCOUNT", true, true), // GFP_KERNEL | __GFP_ACCOUNT
    ("GFP_KERNEL", true, true),    // __GFP_RECLAIM | __GFP_IO | __GFP_FS
    ("GFP_NOFS", false, true),     // __GFP_RECLAIM | __GFP_IO
    ("GFP_ATOMIC", false, false),  // __GFP_HIGH | (__GFP_ATOMIC) | __GFP_KSWAPD_RECLAIM
    ("GFP_NOIO", false, false),    // __GFP_RECLAIM
    ("GFP_NOWAIT", false, false),  // __GFP_KSWAPD_RECLAIM (| __GFP_NOWARN)
    ("GFP_DMA", false, false),
    ("GFP_DMA32", false, false),
    ("GFP_IOFS", true, true), // (≤3.x) __GFP_IO | __GFP_FS
    ("__GFP_IO", false, true),
    ("__GFP_FS", true, false),
    ("__GFP_RECLAIM", false, false),
];

/// Single `__GFP_*` bits that say nothing about FS/IO, across 4.x–6.x.
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

/// Classify a tracefs `gfp_flags=` value. Unknown names are an error, so a
/// kernel that prints something new fails the proof instead of passing it.
pub fn classify_gfp(s: &str) -> Result<GfpClass, String> {
    let s = s.trim();
    let mut c = GfpClass::default();
    if s == "none" || s == "0" || s == "0x0" {
        return Ok(c);
    }
    for tok in s.split('|').map(str::trim) {
        if let Some((_, fs, io)) = GFP_NAMES.iter().find(|(n, _, _)| *n == tok) {
            c.fs |= fs;
            c.io |= io;
        } else if tok
            .strip_prefix("__GFP_")
            .is_some_and(|b| GFP_OTHER_BITS.contains(&b))
        {
            // Neither FS nor IO.
        } else if let Some(hex) = tok.strip_prefix("0x") {
            // Bits without a name; __GFP_IO/__GFP_FS are 0x40/0x80 in every
            // kernel since 2.6 (and always have names, so this is defensive).
            let v = u64::from_str_radix(hex, 16)
                .map_err(|_| format!("bad gfp token {tok:?} in {s:?}"))?;
            c.io |= v & GFP_IO_BIT != 0;
            c.fs |= v & GFP_FS_BIT != 0;
        } else {
            return Err(format!("unknown gfp name {tok:?} in {s:?}"));
        }
    }
    Ok(c)
}

// ---------------------------------------------------------------------------
// tracefs
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// A real block-backed file system in the VM
// ---------------------------------------------------------------------------

pub const SCRATCH_MNT: &str = "/mnt/rs-ext4";

pub fn sh(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{cmd} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub fn is_mounted(mnt: &str) -> bool {
    fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(mnt)))
        .unwrap_or(false)
}

/// Parameters of the one `modprobe brd` of a VM boot: module parameters
/// only apply on the first load, so every test that wants a ramdisk loads it
/// through [`load_brd`]. `/dev/ram0` is [`scratch_fs`]; `/dev/ram1` is the
/// lower ext4 of tests/vm_nbd_seed.rs, which needs room for a 320 MiB
/// sparse backing file. brd allocates memory only for sectors written.
pub const BRD_PARAMS: &[&str] = &["rd_nr=2", "rd_size=393216"];

/// Load brd with [`BRD_PARAMS`] unless it is loaded; panics if the devices
/// it has are fewer or smaller (someone loaded it with other parameters).
pub fn load_brd() {
    require_vm();
    if !Path::new("/dev/ram0").exists() {
        let mut args = vec!["brd"];
        args.extend_from_slice(BRD_PARAMS);
        sh("modprobe", &args).unwrap_or_else(|e| panic!("{e} (vm-test adds --modules brd)"));
    }
    let want_kib: u64 = BRD_PARAMS
        .iter()
        .find_map(|p| p.strip_prefix("rd_size="))
        .and_then(|v| v.parse().ok())
        .expect("rd_size in BRD_PARAMS");
    for dev in ["ram0", "ram1"] {
        let sectors: u64 = fs::read_to_string(format!("/sys/block/{dev}/size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            sectors / 2 >= want_kib,
            "/dev/{dev}: {} KiB, want {want_kib}: brd was loaded with parameters other \
             than {BRD_PARAMS:?} (load it through common::load_brd)",
            sectors / 2
        );
    }
}

/// An ext4 mount on a brd ramdisk (`/dev/ram0`, [`BRD_PARAMS`]), created once per VM
/// boot and shared by all test binaries. Page cache of a real block-backed
/// file system — the allocation the seed deadlock is about — unlike tmpfs,
/// whose pages come from shmem. Formatted with the host's mkfs.ext4 when
/// `vm-test` copied it in, else busybox mke2fs (ext2 layout, mounted by the
/// ext4 driver).
pub fn scratch_fs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        require_vm();
        if !is_mounted(SCRATCH_MNT) {
            load_brd();
            let mkfs = if Command::new("mkfs.ext4").arg("-V").output().is_ok() {
                sh("mkfs.ext4", &["-q", "-F", "/dev/ram0"])
            } else {
                sh("mke2fs", &["-F", "/dev/ram0"])
            };
            mkfs.unwrap_or_else(|e| panic!("scratch fs: {e}"));
            fs::create_dir_all(SCRATCH_MNT).expect("mkdir scratch mount point");
            sh("mount", &["-t", "ext4", "/dev/ram0", SCRATCH_MNT])
                .unwrap_or_else(|e| panic!("scratch fs: {e}"));
        }
        PathBuf::from(SCRATCH_MNT)
    })
}

/// A new, empty file on [`scratch_fs`] (unique per call).
pub fn fresh_file(tag: &str) -> (PathBuf, fs::File) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let p = scratch_fs().join(format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    (p, f)
}

/// Buffered write of `len` bytes of fresh page cache at offset 0 of `f`,
/// traced: every page allocation of this thread during the write.
pub fn traced_pwrite(f: &fs::File, len: usize) -> Vec<TraceEvent> {
    use std::os::unix::fs::FileExt;
    let buf = vec![0x5au8; len]; // allocated before tracing starts
    let (r, ev) = trace_thread(&[EV_PAGE_ALLOC], || f.write_all_at(&buf, 0));
    r.expect("pwrite");
    ev.into_iter().filter(|e| e.is(EV_PAGE_ALLOC)).collect()
}

impl fmt::Display for GfpClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fs={} io={}", self.fs, self.io)
    }
}

/// The `PR_SET_IO_FLUSHER`/`PR_GET_IO_FLUSHER` calls among traced
/// `sys_enter_prctl` events, as `(option, arg2)`.
pub fn io_flusher_prctls(events: &[TraceEvent]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(TraceEvent::prctl_args)
        .filter(|(o, _)| *o == PR_SET_IO_FLUSHER as u64 || *o == PR_GET_IO_FLUSHER as u64)
        .collect()
}

/// `prctl(PR_SET_IO_FLUSHER, on, 0, 0, 0)`, bypassing the crate.
pub fn raw_set_io_flusher(on: bool) -> io::Result<()> {
    let z: libc::c_ulong = 0;
    // SAFETY: PR_SET_IO_FLUSHER reads only its integer arguments; all
    // variadic arguments are passed as full-width c_ulong (the kernel
    // rejects non-zero arg3..arg5).
    let r = unsafe { libc::prctl(PR_SET_IO_FLUSHER, libc::c_ulong::from(on), z, z, z) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `prctl(PR_GET_IO_FLUSHER, 0, 0, 0, 0)`, bypassing the crate.
pub fn raw_get_io_flusher() -> io::Result<i32> {
    let z: libc::c_ulong = 0;
    // SAFETY: as above; PR_GET_IO_FLUSHER takes no pointers.
    let r = unsafe { libc::prctl(PR_GET_IO_FLUSHER, z, z, z, z) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Whether `/proc` shows the calling thread with both I/O-flusher bits.
pub fn thread_is_flagged() -> bool {
    thread_flags() & IO_FLUSHER_BITS == IO_FLUSHER_BITS
}

/// `/proc` shows the calling thread with NOIO|LOCAL_THROTTLE.
#[track_caller]
pub fn assert_thread_flagged(what: &str) {
    let f = thread_flags();
    assert_eq!(
        f & IO_FLUSHER_BITS,
        IO_FLUSHER_BITS,
        "{what}: expected NOIO|LOCAL_THROTTLE, /proc says {}",
        describe_flags(f)
    );
}

/// `/proc` shows the calling thread with neither I/O-flusher bit.
#[track_caller]
pub fn assert_thread_clear(what: &str) {
    let f = thread_flags();
    assert_eq!(
        f & IO_FLUSHER_BITS,
        0,
        "{what}: expected a clear thread, /proc says {}",
        describe_flags(f)
    );
}

/// At least `min` page allocations, every one without `__GFP_FS` and
/// `__GFP_IO`.
#[track_caller]
pub fn assert_all_noio(what: &str, ev: &[TraceEvent], min: usize) {
    assert!(
        ev.len() >= min,
        "{what}: expected at least {min} page allocations, saw {}",
        summarize_gfp(ev)
    );
    if !page_alloc_trace_is_scoped() {
        not_applicable(&format!("{what}: {UNSCOPED_PAGE_ALLOC_TRACE}"));
        return;
    }
    let bad: Vec<&str> = ev
        .iter()
        .filter(|e| !e.gfp_class().is_noio())
        .map(|e| e.line.as_str())
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: allocations with __GFP_FS or __GFP_IO: {bad:#?}"
    );
}

/// Why `kmem:mm_page_alloc` cannot prove a scope before 5.12.
pub const UNSCOPED_PAGE_ALLOC_TRACE: &str =
    "kmem:mm_page_alloc shows the caller's gfp mask, not the task's NOIO/NOFS scope, on this \
     kernel (before 5.12 the scope is applied only on the allocator's slow path, where reclaim \
     happens: measured on 5.10, GFP_HIGHUSER_MOVABLE|__GFP_WRITE inside IoFlusher)";

/// Whether `kmem:mm_page_alloc`'s `gfp_flags` include the task's
/// `memalloc_noio`/`nofs` scope. Since 5.12 ("mm: apply per-task gfp
/// constraints in fast path") `__alloc_pages` applies `current_gfp_context`
/// before the fast path; 5.10 applies it only before the slow path (direct
/// reclaim, whose tracepoints do show it), so a fast-path allocation is
/// traced with the caller's mask.
pub fn page_alloc_trace_is_scoped() -> bool {
    kernel_version() >= (5, 12)
}

/// At least `min` page allocations with both `__GFP_FS` and `__GFP_IO`:
/// what the crate protects against.
#[track_caller]
pub fn assert_fs_io(what: &str, ev: &[TraceEvent], min: usize) {
    let n = ev
        .iter()
        .filter(|e| {
            let c = e.gfp_class();
            c.fs && c.io
        })
        .count();
    assert!(
        n >= min,
        "{what}: expected {min} page allocations with __GFP_FS|__GFP_IO, saw {}",
        summarize_gfp(ev)
    );
}

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
