//! What the seed-scenario tests share (`tests/vm_nbd_seed.rs`,
//! `tests/vm_tcmu.rs`): the daemon's three modes, the statistics of one run,
//! the table printed to the console, and the assertions that make the
//! contrast a proof. Each test keeps its own rig (how the daemon is started
//! and its device attached).

use std::fmt::Write as _;
use std::fs;

/// How the daemon under test protects its worker.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Default: the worker is an `IoFlusher`, file I/O through `NoFsFile`.
    Guarded,
    /// `--no-flusher`: `NoFsFile` only.
    NoFlusher,
    /// `--unprotected`: plain file I/O, the daemon of the 2019 deadlock.
    Unprotected,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Guarded, Mode::NoFlusher, Mode::Unprotected];

    pub fn label(self) -> &'static str {
        match self {
            Mode::Guarded => "default (IoFlusher)",
            Mode::NoFlusher => "--no-flusher",
            Mode::Unprotected => "--unprotected",
        }
    }
    pub fn flags(self) -> &'static [&'static str] {
        match self {
            Mode::Guarded => &[],
            Mode::NoFlusher => &["--no-flusher"],
            Mode::Unprotected => &["--unprotected"],
        }
    }
    pub fn tag(self) -> &'static str {
        match self {
            Mode::Guarded => "guarded",
            Mode::NoFlusher => "noflusher",
            Mode::Unprotected => "unprotected",
        }
    }
}

/// What one run of the scenario measured.
#[derive(Debug, Default)]
pub struct Stats {
    pub memcg_reclaims: usize,
    pub direct_reclaims: usize,
    pub fs_io_reclaims: usize,
    /// Page allocations of the worker thread that does the file I/O.
    pub worker_allocs: usize,
    pub worker_fs_io_allocs: usize,
    /// Page allocations of the daemon's other threads.
    pub other_allocs: usize,
    /// `/proc` samples of the worker, and how many showed
    /// PF_MEMALLOC_NOIO|PF_LOCAL_THROTTLE.
    pub proc_samples: usize,
    pub proc_flagged: usize,
    /// `max` of the cgroup's memory.events: times usage hit memory.max.
    pub memcg_max_events: u64,
    pub reclaim_gfp: String,
    pub worker_fs_io_gfp: String,
    pub secs: f64,
}

/// The console table: `stack` describes the setup, `daemon` heads the first
/// column, `worker` names the worker thread.
pub fn table(stack: &str, daemon: &str, worker: &str, runs: &[(Mode, Stats)]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "seed scenario: {stack}");
    let _ = writeln!(
        t,
        "| {daemon} | reclaims entered (memcg+direct) | FS/IO-capable reclaims | page allocs \
         by {worker} | FS/IO-capable allocs | {worker} NOIO\\|LOCAL_THROTTLE in /proc | \
         memory.events max | data after remount | time |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
    for (m, s) in runs {
        let _ = writeln!(
            t,
            "| {} | {} ({}+{}) | {} | {} | {} | {}/{} samples | {} | verified | {:.0} s |",
            m.label(),
            s.memcg_reclaims + s.direct_reclaims,
            s.memcg_reclaims,
            s.direct_reclaims,
            s.fs_io_reclaims,
            s.worker_allocs,
            s.worker_fs_io_allocs,
            s.proc_flagged,
            s.proc_samples,
            s.memcg_max_events,
            s.secs
        );
    }
    t
}

/// The scenario in every mode, as both seed tests run it: a large trace
/// buffer while `run` does one mode at a time, the lower file system
/// unmounted afterwards, the table printed and the contrast asserted.
#[track_caller]
pub fn run_all_modes(
    buffer_kb: u64,
    lower: &str,
    stack: &str,
    daemon: &str,
    worker: &str,
    mut run: impl FnMut(Mode) -> Stats,
) {
    use super::*;
    let old_kb = set_trace_buffer_kb(buffer_kb).expect("size the trace buffer");
    let runs: Vec<(Mode, Stats)> = Mode::ALL.iter().map(|&m| (m, run(m))).collect();
    let _ = set_trace_buffer_kb(old_kb);
    if is_mounted(lower) {
        let _ = run_for(30, "umount", &[lower]);
    }
    say(&format!("\n{}", table(stack, daemon, worker, &runs)));
    assert_contrast(worker, &runs);
}

/// One mode's report on the console: the daemon's own log, the gfp masks of
/// the reclaims entered and the worker's FS/IO-capable allocations.
pub fn report(mode: Mode, daemon_log: &str, worker: &str, s: &Stats) {
    use super::say;
    let tag = mode.tag();
    say(&format!(
        "  [{tag}] daemon: {}",
        daemon_log.trim().replace('\n', " | ")
    ));
    say(&format!("  [{tag}] reclaim gfp: {}", s.reclaim_gfp));
    say(&format!(
        "  [{tag}] FS/IO-capable allocations of {worker}: {}",
        s.worker_fs_io_gfp
    ));
}

/// The proof: the guarded daemon was forced into reclaim and never with
/// `__GFP_FS`/`__GFP_IO` (nor allocated with them on its worker, which
/// `/proc` showed flagged in every sample); the unprotected one did both,
/// so the setup really shows the danger; `--no-flusher` was under pressure
/// too (its counts are reported, not asserted).
#[track_caller]
pub fn assert_contrast(worker: &str, runs: &[(Mode, Stats)]) {
    let get = |m: Mode| {
        &runs
            .iter()
            .find(|(x, _)| *x == m)
            .expect("every mode ran")
            .1
    };
    let g = get(Mode::Guarded);
    assert!(
        g.memcg_reclaims + g.direct_reclaims > 0,
        "guarded: the scenario forced no reclaim at all, it proves nothing"
    );
    assert_eq!(
        g.fs_io_reclaims, 0,
        "guarded: FS/IO-capable reclaims: {}",
        g.reclaim_gfp
    );
    assert!(
        g.worker_allocs > 0,
        "guarded: no page allocation traced on {worker}"
    );
    if super::page_alloc_trace_is_scoped() {
        assert_eq!(
            g.worker_fs_io_allocs, 0,
            "guarded: FS/IO-capable allocations on {worker}: {}",
            g.worker_fs_io_gfp
        );
    } else {
        super::not_applicable(&format!(
            "guarded: page allocations on {worker}: {}",
            super::UNSCOPED_PAGE_ALLOC_TRACE
        ));
    }
    assert!(
        g.proc_samples > 0 && g.proc_flagged == g.proc_samples,
        "guarded: {worker} was NOIO|LOCAL_THROTTLE in only {}/{} /proc samples",
        g.proc_flagged,
        g.proc_samples
    );

    let u = get(Mode::Unprotected);
    assert!(
        u.memcg_reclaims + u.direct_reclaims > 0,
        "unprotected: no reclaim forced"
    );
    assert!(
        u.fs_io_reclaims > 0,
        "unprotected: no FS/IO-capable reclaim, so the scenario does not show the danger: {}",
        u.reclaim_gfp
    );
    assert!(
        u.worker_fs_io_allocs > 0,
        "unprotected: no FS/IO-capable allocation on {worker}"
    );
    // Not an I/O flusher: flagged at most inside the few calls that still
    // go through NoFsFile (trims and zeroings, which std cannot do).
    assert!(
        u.proc_flagged < u.proc_samples,
        "unprotected: {worker} flagged in {}/{} /proc samples",
        u.proc_flagged,
        u.proc_samples
    );

    let n = get(Mode::NoFlusher);
    assert!(
        n.memcg_reclaims + n.direct_reclaims > 0,
        "--no-flusher: no reclaim forced"
    );
}

/// Where and how much the workload writes.
pub struct Workload<'a> {
    /// The daemon's block device (the XFS goes on it).
    pub dev: &'a str,
    /// Where the XFS is mounted.
    pub upper: &'a str,
    /// A patterned file verified after a remount.
    pub data_mib: usize,
    /// Then a `dd conv=fsync` of this many MiB.
    pub dd_mib: u64,
    /// Seed of the pattern.
    pub seed: u64,
}

/// The traced part of a run, the same for every daemon: samples `worker`'s
/// `/proc` flags, traces reclaim and page allocations of every thread of
/// `pid` while `mkfs.xfs`, the data file and the `dd` go to `w.dev`, checks
/// that no event was lost and no thread appeared, then remounts and
/// verifies the data. Returns the run's statistics (without `secs`); the
/// XFS is left unmounted. `lap` hears each phase's end.
pub fn traced_workload(
    mode: Mode,
    pid: u32,
    worker: &str,
    cgroup: &str,
    w: &Workload<'_>,
    lap: &mut dyn FnMut(&str),
) -> Stats {
    use super::*;
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    let traced = threads(pid);
    let tids: Vec<i32> = traced.iter().map(|(t, _)| *t).collect();
    let workers: Vec<i32> = traced
        .iter()
        .filter(|(_, c)| c == worker)
        .map(|(t, _)| *t)
        .collect();
    assert!(!workers.is_empty(), "no {worker} thread: {traced:?}");

    // /proc sampler: the worker's flags while it works.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let workers = workers.clone();
        std::thread::spawn(move || {
            let (mut n, mut flagged) = (0usize, 0usize);
            while !stop.load(Ordering::Relaxed) {
                for &t in &workers {
                    if let Some(f) = task_flags(pid as i32, t) {
                        n += 1;
                        if f & IO_FLUSHER_BITS == IO_FLUSHER_BITS {
                            flagged += 1;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (n, flagged)
        })
    };
    let tracer = Tracer::start(&[EV_MEMCG_RECLAIM, EV_DIRECT_RECLAIM, EV_PAGE_ALLOC], &tids)
        .expect("start tracing");

    // The workload on the XFS that the daemon serves.
    must(120, "mkfs.xfs", &["-q", "-f", w.dev]);
    must(60, "mount", &["-t", "xfs", w.dev, w.upper]);
    lap("mkfs.xfs + mount (traced)");
    let data = pattern(w.seed + mode as u64, w.data_mib << 20);
    let data_path = format!("{}/data", w.upper);
    {
        let mut f = fs::File::create(&data_path).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    let count = format!("count={}", w.dd_mib);
    let of = format!("of={}/big", w.upper);
    must(
        180,
        "dd",
        &["if=/dev/zero", &of, "bs=1M", &count, "conv=fsync"],
    );
    must(60, "sync", &[]);
    lap(&format!(
        "{} MiB data + {} MiB dd (traced)",
        w.data_mib, w.dd_mib
    ));

    stop.store(true, Ordering::Relaxed);
    let (proc_samples, proc_flagged) = sampler.join().expect("sampler");
    let after = threads(pid);
    let events = tracer.stop().expect("read trace");
    let lost = trace_lost_events().expect("read per_cpu stats");
    assert_eq!(
        lost, 0,
        "the trace lost {lost} events: counts would be meaningless"
    );
    assert_eq!(
        after.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        tids,
        "the daemon started threads that were not traced: {after:?} vs {traced:?}"
    );
    let memcg_max_events = fs::read_to_string(format!("{cgroup}/memory.events"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("max ").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0);
    lap("trace read");

    // Unmount, remount, verify: the data went through the daemon intact.
    must(60, "umount", &[w.upper]);
    must(60, "mount", &["-t", "xfs", w.dev, w.upper]);
    let back = fs::read(&data_path).unwrap_or_else(|e| panic!("read back {data_path}: {e}"));
    assert!(
        back == data,
        "{}: data read after remount differs from what was written",
        mode.label()
    );
    let big = fs::metadata(format!("{}/big", w.upper)).unwrap().len();
    assert_eq!(big, w.dd_mib << 20, "size of the dd file after remount");
    must(60, "umount", &[w.upper]);

    let mut s = Stats {
        proc_samples,
        proc_flagged,
        memcg_max_events,
        ..Stats::default()
    };
    let mut reclaim_gfp = Vec::new();
    let mut worker_fs_io = Vec::new();
    for e in &events {
        if e.is(EV_MEMCG_RECLAIM) || e.is(EV_DIRECT_RECLAIM) {
            if e.is(EV_MEMCG_RECLAIM) {
                s.memcg_reclaims += 1;
            } else {
                s.direct_reclaims += 1;
            }
            let c = e.gfp_class();
            if c.fs || c.io {
                s.fs_io_reclaims += 1;
            }
            reclaim_gfp.push(e.clone());
        } else if e.is(EV_PAGE_ALLOC) {
            if workers.contains(&e.pid) {
                s.worker_allocs += 1;
                if !e.gfp_class().is_noio() {
                    s.worker_fs_io_allocs += 1;
                    worker_fs_io.push(e.clone());
                }
            } else {
                s.other_allocs += 1;
            }
        }
    }
    s.reclaim_gfp = summarize_gfp(&reclaim_gfp);
    s.worker_fs_io_gfp = summarize_gfp(&worker_fs_io);
    s
}
