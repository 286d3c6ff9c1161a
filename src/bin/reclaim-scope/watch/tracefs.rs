//! The tracefs part: an instance of our own, the watched pids' threads
//! followed, the trace pipe read until the end.

use super::*;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
pub fn stat_is_dead(stat: &str) -> bool {
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
