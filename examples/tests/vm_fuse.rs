//! The example FUSE passthrough (`examples/fuse_passthrough`) as a real
//! daemon in the VM, over an ext4 on a brd ramdisk (issue 9).
//!
//! - Its serving threads (`fuse-serve`, which mounts, and fuser's workers
//!   `fuser-N`) carry `PF_MEMALLOC_NOIO|PF_LOCAL_THROTTLE` in
//!   `/proc/<pid>/task/<tid>/stat` while mounted — and none of the two with
//!   `--no-flusher`. SIGTERM unmounts and exits 0.
//! - In a cgroup with `memory.max`, a write workload through the mount makes
//!   the daemon allocate page cache of the source ext4 (charged to its
//!   cgroup, so it reclaims): every page allocation of its serving threads
//!   (tracefs `kmem:mm_page_alloc`, filtered on its tids, no event lost) is
//!   without `__GFP_FS`/`__GFP_IO`; with `--unprotected` (no `IoFlusher`,
//!   plain pwrite: the honest baseline, as `nbd_server --unprotected`) they
//!   carry FS|IO. `--no-flusher` (no `IoFlusher`, I/O still NOIO-scoped per
//!   call by `NoFsFile`) is reported, not asserted.
//! - FORGET: after the kernel drops its inodes (`drop_caches`), the
//!   passthrough's inode table is back to the root, and names still resolve.

#[path = "../../tests/common/mod.rs"]
mod common;
use reclaim_scope_examples::fuse as passthrough;

use common::*;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MNT: &str = "/mnt/rs-fuse";
const MEMORY_MAX: &str = "16M";
/// Written through the mount per gfp run: 3 × memory.max.
const WRITE_MIB: u64 = 48;
/// Per-CPU trace buffer: a run records ~15k events.
const TRACE_BUFFER_KB: u64 = 16384;

/// The threads that read /dev/fuse and serve requests.
fn serving(pid: u32) -> Vec<(i32, String)> {
    threads(pid)
        .into_iter()
        .filter(|(_, c)| c == "fuse-serve" || c.starts_with("fuser-"))
        .collect()
}

fn setup() -> &'static Path {
    require_vm();
    let scratch = scratch_fs();
    if !Path::new("/dev/fuse").exists() {
        sh("modprobe", &["fuse"]).unwrap_or_else(|e| panic!("{e} (vm-test adds --modules fuse)"));
    }
    wait_until("/dev/fuse", 10, || Path::new("/dev/fuse").exists());
    fs::create_dir_all(MNT).unwrap();
    // The memory controller for child cgroups of the root.
    let _ = fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
    scratch
}

/// The daemon, killed (SIGTERM, then SIGKILL) and its mount removed on drop.
struct Daemon {
    child: Option<Child>,
    cgroup: Option<String>,
    log: String,
}

impl Daemon {
    /// Start `fuse_passthrough` on `src` at [`MNT`] with `flags`, inside
    /// `cgroup` if given, and wait until it is mounted.
    fn start(src: &Path, flags: &[&str], cgroup: Option<&str>) -> Daemon {
        assert!(!is_mounted(MNT), "{MNT} is still mounted");
        let log = format!("/tmp/fuse-daemon-{}.log", flags.join("").replace('-', ""));
        let enter = cgroup
            .map(|c| format!("echo $$ > {c}/cgroup.procs && "))
            .unwrap_or_default();
        let cmd = format!(
            "{enter}exec fuse_passthrough --source {} --mountpoint {MNT} {}",
            src.display(),
            flags.join(" ")
        );
        let child = Command::new("sh")
            .args(["-c", &cmd])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("start fuse_passthrough");
        let mut d = Daemon {
            child: Some(child),
            cgroup: cgroup.map(str::to_owned),
            log,
        };
        let t0 = Instant::now();
        while !is_mounted(MNT) {
            if let Ok(Some(st)) = d.child.as_mut().unwrap().try_wait() {
                panic!("fuse_passthrough exited ({st}): {}", d.log_text());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "not mounted after 20 s: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon").id()
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; the daemon must unmount and exit 0 within 20 s.
    fn terminate(mut self) {
        let pid = self.pid().to_string();
        must(10, "kill", &["-TERM", &pid]);
        let mut child = self.child.take().unwrap();
        let t0 = Instant::now();
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no exit 20 s after SIGTERM: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(st.success(), "exit status {st}: {}", self.log_text());
        assert!(!is_mounted(MNT), "SIGTERM left {MNT} mounted");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            for _ in 0..100 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(MNT) {
            let _ = run_for(10, "umount", &["-l", MNT]);
        }
        if let Some(cg) = &self.cgroup {
            for _ in 0..50 {
                if fs::remove_dir(cg).is_ok() || !Path::new(cg).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn fresh_source(tag: &str) -> std::path::PathBuf {
    let src = setup().join(format!("fuse-src-{tag}"));
    let _ = fs::remove_dir_all(&src);
    fs::create_dir_all(&src).unwrap();
    src
}

/// Some I/O through the mount so every worker has served requests.
fn touch_the_mount(tag: &str) {
    let f = format!("{MNT}/hello-{tag}");
    fs::write(&f, b"through the kernel").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"through the kernel");
    fs::remove_file(&f).unwrap();
}

vm_test! {
    fn fuse_serving_threads_are_io_flushers_and_not_with_no_flusher() {
        let src = fresh_source("flags");
        for (flags, want) in [
            (&["--threads", "2"][..], true),
            (&["--no-flusher", "--threads", "2"][..], false),
        ] {
            let d = Daemon::start(&src, flags, None);
            touch_the_mount("flags");
            let pid = d.pid();
            let serving = serving(pid);
            assert!(
                serving
                    .iter()
                    .filter(|(_, c)| c.starts_with("fuser-"))
                    .count()
                    == 2,
                "want fuse-serve and two fuser-N workers: {:?}",
                threads(pid)
            );
            for (tid, comm) in &serving {
                let f = task_flags(pid as i32, *tid).expect("thread alive");
                say(&format!(
                    "  fuse_passthrough {flags:?}: {comm} ({tid}) flags {}",
                    describe_flags(f)
                ));
                if want {
                    assert_eq!(
                        f & IO_FLUSHER_BITS,
                        IO_FLUSHER_BITS,
                        "{comm} is not an I/O flusher: {}",
                        describe_flags(f)
                    );
                } else {
                    assert_eq!(
                        f & IO_FLUSHER_BITS,
                        0,
                        "{comm} is flagged with --no-flusher: {}",
                        describe_flags(f)
                    );
                }
            }
            // The main and signal threads are not flagged in either mode.
            for (tid, comm) in threads(pid).iter().filter(|t| !serving.contains(t)) {
                let f = task_flags(pid as i32, *tid).unwrap_or(0);
                assert_eq!(f & IO_FLUSHER_BITS, 0, "{comm}: {}", describe_flags(f));
            }
            d.terminate();
        }
        let _ = fs::remove_dir_all(&src);
    }
}

struct GfpRun {
    label: &'static str,
    serving_allocs: usize,
    serving_fs_io: usize,
    summary: String,
    memcg_max_events: u64,
}

fn gfp_run(label: &'static str, flags: &[&str]) -> GfpRun {
    let src = fresh_source(label);
    must(60, "sync", &[]);
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let cgroup = format!("/sys/fs/cgroup/fuse-{label}");
    if !Path::new(&cgroup).exists() {
        fs::create_dir(&cgroup).unwrap_or_else(|e| panic!("mkdir {cgroup}: {e}"));
    }
    fs::write(format!("{cgroup}/memory.max"), MEMORY_MAX).unwrap();
    let d = Daemon::start(&src, flags, Some(&cgroup));
    let pid = d.pid();
    let in_cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    assert!(
        in_cgroup.trim_end().ends_with(&format!("/fuse-{label}")),
        "daemon not in its cgroup: {in_cgroup:?}"
    );
    touch_the_mount(label);
    let all = threads(pid);
    let tids: Vec<i32> = all.iter().map(|(t, _)| *t).collect();
    let serving_tids: Vec<i32> = serving(pid).iter().map(|(t, _)| *t).collect();

    let tracer = Tracer::start(&[EV_PAGE_ALLOC], &tids).expect("start tracing");
    let count = format!("count={WRITE_MIB}");
    let of = format!("of={MNT}/big");
    let dd = run_for(
        120,
        "dd",
        &["if=/dev/zero", &of, "bs=1M", &count, "conv=fsync"],
    );
    let events = tracer.stop().expect("read trace");
    let lost = trace_lost_events().expect("read per_cpu stats");
    dd.unwrap_or_else(|e| panic!("{e}: {}", d.log_text()));
    assert_eq!(lost, 0, "the trace lost {lost} events");
    assert_eq!(
        fs::metadata(src.join("big")).unwrap().len(),
        WRITE_MIB << 20,
        "the source got every byte"
    );
    let after: Vec<i32> = threads(pid).iter().map(|(t, _)| *t).collect();
    assert_eq!(after, tids, "threads started during the trace: not traced");
    let memcg_max_events = fs::read_to_string(format!("{cgroup}/memory.events"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);

    let serving_ev: Vec<TraceEvent> = events
        .into_iter()
        .filter(|e| e.is(EV_PAGE_ALLOC) && serving_tids.contains(&e.pid))
        .collect();
    let fs_io = serving_ev
        .iter()
        .filter(|e| !e.gfp_class().is_noio())
        .count();
    let r = GfpRun {
        label,
        serving_allocs: serving_ev.len(),
        serving_fs_io: fs_io,
        summary: summarize_gfp(&serving_ev),
        memcg_max_events,
    };
    say(&format!(
        "  fuse_passthrough {label}: {} page allocations on serving threads, {} with FS|IO, \
         memory.events max={}: {}",
        r.serving_allocs, r.serving_fs_io, r.memcg_max_events, r.summary
    ));
    fs::remove_file(format!("{MNT}/big")).unwrap();
    d.terminate();
    let _ = fs::remove_dir_all(&src);
    r
}

vm_test! {
    fn fuse_under_memory_max_the_flusher_daemon_allocates_without_fs_or_io() {
        setup();
        let old_kb = set_trace_buffer_kb(TRACE_BUFFER_KB).expect("size the trace buffer");
        let runs: Vec<GfpRun> = [
            ("io-flusher", &[][..]),
            ("no-flusher", &["--no-flusher"][..]),
            ("unprotected", &["--unprotected"][..]),
        ]
        .into_iter()
        .map(|(l, f)| gfp_run(l, f))
        .collect();
        let _ = set_trace_buffer_kb(old_kb);
        say(&format!(
            "fuse passthrough under memory.max={MEMORY_MAX}, {WRITE_MIB} MiB dd conv=fsync through \
         the mount:"
        ));
        for r in &runs {
            say(&format!(
                "  {:12} page allocs {:6}  with FS|IO {:6}  memcg max events {}",
                r.label, r.serving_allocs, r.serving_fs_io, r.memcg_max_events
            ));
        }
        let flusher = &runs[0];
        assert!(
            flusher.serving_allocs as u64 >= (WRITE_MIB << 20) / 4096 / 2,
            "too few page allocations traced to prove anything: {}",
            flusher.summary
        );
        if page_alloc_trace_is_scoped() {
            assert_eq!(
                flusher.serving_fs_io, 0,
                "an I/O-flusher serving thread allocated with FS|IO: {}",
                flusher.summary
            );
        } else {
            not_applicable(&format!(
                "flusher page allocations: {UNSCOPED_PAGE_ALLOC_TRACE}"
            ));
        }
        let unprotected = &runs[2];
        assert!(
            unprotected.serving_fs_io > 0,
            "the unprotected baseline never allocated with FS|IO — the comparison proves nothing: {}",
            unprotected.summary
        );
    }
}

vm_test! {
    fn fuse_forget_returns_the_inode_table_to_what_the_kernel_holds() {
        use std::sync::atomic::Ordering::Relaxed;
        const N: u64 = 200;
        let src = fresh_source("forget");
        for i in 0..N {
            fs::write(src.join(format!("f{i}")), b"x").unwrap();
        }
        let mnt = Path::new("/mnt/rs-fuse-forget");
        fs::create_dir_all(mnt).unwrap();
        let pt = passthrough::Passthrough::new(src, passthrough::Guarding::IoFlusher)
            .expect("open the source");
        let stats = pt.stats();
        let mounted = passthrough::mount(pt, mnt, 2).expect("mount the passthrough");
        let inodes = || stats.inodes.load(Relaxed);
        for i in 0..N {
            fs::metadata(mnt.join(format!("f{i}"))).unwrap();
        }
        assert_eq!(
            inodes(),
            N + 1,
            "one entry per looked-up name, plus the root"
        );
        // The kernel evicts the unused dentries and inodes of the mount and
        // sends FORGET (or BATCH_FORGET) for each: the table must follow.
        write_file("/proc/sys/vm/drop_caches", "2");
        wait_until("FORGET of the evicted inodes", 30, || inodes() == 1);
        let forgotten = stats.forgotten.load(Relaxed);
        say(&format!(
            "FORGET: {forgotten} kernel references returned; the table holds {} entry",
            inodes()
        ));
        assert!(
            forgotten >= N,
            "{forgotten} references forgotten, want >= {N}"
        );
        // A forgotten name is looked up afresh, under a new inode number.
        fs::metadata(mnt.join("f7")).unwrap();
        assert_eq!(inodes(), 2);
        mounted.unmount().expect("unmount");
    }
}

vm_test! {
    /// SIGTERM while a file is open on the mount: the mount is detached lazily
    /// and gone at once, the daemon exits — after `--grace` with one signal, at
    /// the second signal with a grace too long to wait for — and the open file
    /// then answers ENOTCONN (issue 15).
    fn fuse_sigterm_on_a_busy_mount_detaches_lazily_and_exits() {
        use std::io::Read;
        let src = fresh_source("busy");
        for (grace, second_signal) in [("0", false), ("3600", true)] {
            let mut d = Daemon::start(&src, &["--grace", grace], None);
            let held_path = format!("{MNT}/held");
            fs::write(&held_path, b"held open").unwrap();
            let mut held = fs::File::open(&held_path).unwrap();
            let pid = d.pid().to_string();
            must(10, "kill", &["-TERM", &pid]);
            wait_until("the lazy unmount", 20, || {
                d.log_text().contains("detached lazily")
            });
            assert!(!is_mounted(MNT), "{MNT} still mounted after SIGTERM");
            if second_signal {
                must(10, "kill", &["-INT", &pid]);
            }
            let mut child = d.child.take().unwrap();
            let t0 = Instant::now();
            let st = loop {
                if let Some(st) = child.try_wait().unwrap() {
                    break st;
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("daemon still running 30 s after SIGTERM: {}", d.log_text());
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let log = d.log_text();
            assert!(st.success(), "exit status {st}: {log}");
            let why = if second_signal {
                "again: exiting now"
            } else {
                "grace period over"
            };
            assert!(log.contains(why), "want {why:?} in the log: {log}");
            // The closing line is printed on this way out too.
            assert!(
                log.lines()
                    .skip_while(|l| !l.contains(why))
                    .any(|l| l.contains(" requests served; ")),
                "no closing stats line after {why:?}: {log}"
            );
            let mut buf = Vec::new();
            let e = held.read_to_end(&mut buf).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
            say(&format!(
                "  fuse_passthrough --grace {grace}: busy mount detached, daemon exited ({why})"
            ));
        }
        let _ = fs::remove_dir_all(&src);
    }
}
