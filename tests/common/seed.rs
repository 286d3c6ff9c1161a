//! What the seed-scenario tests share (`tests/vm_nbd_seed.rs`,
//! `tests/vm_tcmu.rs`): the daemon's three modes, the statistics of one run,
//! the table printed to the console, and the assertions that make the
//! contrast a proof. Each test keeps its own rig (how the daemon is started
//! and its device attached).

use std::fmt::Write as _;

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
    assert_eq!(
        g.worker_fs_io_allocs, 0,
        "guarded: FS/IO-capable allocations on {worker}: {}",
        g.worker_fs_io_gfp
    );
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
