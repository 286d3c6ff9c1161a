//! The other half of `PR_SET_IO_FLUSHER`: `PF_LOCAL_THROTTLE` on the
//! dirty-throttling hang (issue 21), with the example NBD server and the
//! example TCMU handler as the daemon.
//!
//! brd ramdisk → ext4 → sparse backing file → `nbd_server` → kernel NBD
//! client (`nbd-client`) → XFS on /dev/nbd0 (or `tcmu_file` → /dev/sdX), with `vm.dirty_bytes` = 16 MiB
//! and `vm.dirty_background_bytes` = 4 MiB. A `dd` onto the XFS, then
//! `sync`, dirties far more than the limit, nearly all of it pages of
//! /dev/nbd0 — which only the server can clean. Every `pwrite` the server
//! makes into its backing file dirties page cache too and calls
//! `balance_dirty_pages()`: without `PF_LOCAL_THROTTLE` the server is
//! paused for the system's dirty pages (those of the device it serves);
//! with it, it is measured against its own backing device only
//! (NeilBrown, 2020).
//!
//! Three runs, one per mode of the server (`common::seed::Mode`):
//! - default: the connection thread holds an `IoFlusher` — both bits for
//!   its whole loop;
//! - `--no-flusher`: `NoFsFile` only — both bits inside each file call (the
//!   `pwrite` that calls `balance_dirty_pages`), none between them;
//! - `--unprotected`: no flag at all.
//!
//! Ground truth only: tracefs `writeback:balance_dirty_pages` and
//! `vmscan:mm_vmscan_throttled` of the server's threads (filtered on their
//! tids, no event lost), fields parsed by name. The workload runs in the
//! background with a deadline: on a kernel that hangs the unprotected
//! server (Debian 6.12), the run ends there with the threads' states,
//! `wchan` and `stack` from /proc as the evidence, and the rig is torn down
//! by killing the server (which fails its outstanding NBD requests).
//!
//! The same scenario serves the XFS with `tcmu_file` behind
//! target_core_user + tcm_loop (/dev/sdX): the page cache of the SCSI
//! disk is cleaned only by the handler's `pwrite`s into its backing file,
//! the same shape. `fuse_passthrough` does not apply: it does not request
//! `FUSE_WRITEBACK_CACHE`, so a `write(2)` onto its mount is sent to the
//! daemon synchronously (write-through), the mount holds no dirty page
//! cache that only the daemon could clean, and a `dd` onto it cannot put
//! the daemon's own `pwrite` over the limit with the served pages (a
//! shared writable `mmap` of a file on the mount still dirties pages the
//! daemon must write back: not covered).

mod common;

use common::seed::Mode;
use common::*;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LOWER_DEV: &str = "/dev/ram1";
const LOWER: &str = "/mnt/thr-lower";
const UPPER: &str = "/mnt/thr-xfs";
const NBD_DEV: &str = "/dev/nbd0";
const SOCK: &str = "/run/thr-nbd.sock";
/// Sparse; only what the XFS writes lands on the 384 MiB ramdisk
/// (`common::BRD_PARAMS`): its log and the `dd` file.
const BACKING_MIB: u64 = 768;
/// Written with `dd` onto the XFS: 10× `vm.dirty_bytes`, so the system
/// is over its dirty limit for most of the run, and still short enough
/// under TCG.
const DD_MIB: u64 = 160;
const DIRTY_BYTES: u64 = 16 << 20;
const DIRTY_BACKGROUND_BYTES: u64 = 4 << 20;
/// The workload's deadline: past it the run counts as hung.
const DEADLINE_S: u64 = 60;
/// Kernel NBD request timeout, longer than the deadline: a server stuck
/// in `balance_dirty_pages` is caught in the act at the deadline, not
/// turned into EIO by the NBD client first. Teardown kills the server,
/// which fails the outstanding requests at once.
const NBD_TIMEOUT_S: &str = "120";
/// Per-CPU trace buffer: a few thousand events per run.
const TRACE_BUFFER_KB: u64 = 8192;
const EV_BDP: &str = "writeback:balance_dirty_pages";
const EV_THROTTLED: &str = "vmscan:mm_vmscan_throttled";

/// What one `balance_dirty_pages` event says, by field name: 6.1 prints
/// `bdi_setpoint=`/`bdi_dirty=`, newer kernels `wb_setpoint=`/`wb_dirty=`;
/// `dirtied_pause=` is another field than `pause=`.
#[derive(Debug, PartialEq, Eq)]
struct Bdp {
    /// The device whose writeback the task was measured against (`bdi 254:0:`).
    bdi: String,
    /// Milliseconds this call sleeps; ≤ 0 when it does not.
    pause_ms: i64,
    dirty: u64,
    limit: u64,
    /// `bdi_dirty` or `wb_dirty`.
    wb_dirty: u64,
}

fn field<'a>(fields: &'a str, name: &str) -> Option<&'a str> {
    fields
        .split_whitespace()
        .find_map(|t| t.strip_prefix(name)?.strip_prefix('='))
}

fn parse_bdp(line: &str) -> Result<Bdp, String> {
    let rest = line
        .split_once("balance_dirty_pages: ")
        .ok_or_else(|| format!("not a balance_dirty_pages line: {line}"))?
        .1;
    let num = |n: &str| -> Result<i64, String> {
        field(rest, n)
            .ok_or_else(|| format!("no {n}= in {line}"))?
            .parse()
            .map_err(|e| format!("{n}= in {line}: {e}"))
    };
    let bdi = rest
        .strip_prefix("bdi ")
        .and_then(|r| r.split_once(": "))
        .map(|(b, _)| b.to_owned())
        .ok_or_else(|| format!("no bdi in {line}"))?;
    let wb_dirty = num("bdi_dirty").or_else(|_| num("wb_dirty"))?;
    Ok(Bdp {
        bdi,
        pause_ms: num("pause")?,
        dirty: num("dirty")? as u64,
        limit: num("limit")? as u64,
        wb_dirty: wb_dirty as u64,
    })
}

#[derive(Debug, Default)]
struct Run {
    bdp_events: usize,
    paused_events: usize,
    paused_ms: i64,
    max_pause_ms: i64,
    /// bdi → paused events.
    bdis: Vec<(String, usize)>,
    /// `None`: the kernel has no `mm_vmscan_throttled` (before 5.16).
    throttled: Option<usize>,
    /// Wall time of dd + sync; `None` when the deadline passed.
    secs: Option<f64>,
    /// /proc samples of the connection thread with both bits.
    proc_samples: usize,
    proc_flagged: usize,
    /// ... and with `wchan` `balance_dirty_pages` (asleep in a pause).
    proc_in_bdp: usize,
    evidence: String,
    watch: Option<Watched>,
}

/// What `reclaim-scope watch --json` reported on the server.
#[derive(Debug)]
struct Watched {
    status: Option<i32>,
    json: serde_json::Value,
    stderr: String,
    instance_removed: bool,
}

struct Watcher {
    child: Child,
    out: String,
    err: String,
    instance: String,
}

impl Watcher {
    fn start(pid: u32) -> Watcher {
        let out = format!("/tmp/thr-watch-{pid}.json");
        let err = format!("/tmp/thr-watch-{pid}.err");
        let child = Command::new("reclaim-scope")
            .args(["watch", &pid.to_string(), "--json"])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .expect("start reclaim-scope watch");
        let instance = format!("{TRACEFS}/instances/reclaim-scope-watch-{}", child.id());
        let w = Watcher {
            child,
            out,
            err,
            instance,
        };
        // Its events are on once its trace_pipe is open; the enable files
        // say so.
        let enabled = format!("{}/events/writeback/balance_dirty_pages/enable", w.instance);
        wait_until("reclaim-scope watch's trace instance", 20, || {
            fs::read_to_string(&enabled).is_ok_and(|v| v.trim() == "1")
        });
        std::thread::sleep(Duration::from_millis(300));
        w
    }

    fn interrupt(self) -> Watched {
        must(10, "kill", &["-INT", &self.child.id().to_string()]);
        self.finish()
    }

    fn wait_for_exit(self) -> Watched {
        self.finish()
    }

    fn finish(mut self) -> Watched {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match self.child.try_wait().expect("wait for watch") {
                Some(st) => break st.code(),
                None if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!("reclaim-scope watch did not end within 30 s");
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        let stderr = fs::read_to_string(&self.err).unwrap_or_default();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("watch --json output {text:?}: {e}; stderr {stderr}"));
        Watched {
            status,
            json,
            stderr,
            instance_removed: !Path::new(&self.instance).exists(),
        }
    }
}

fn summarize(events: &[TraceEvent], r: &mut Run) {
    for e in events {
        if e.is(EV_BDP) {
            let b = parse_bdp(&e.line).unwrap_or_else(|m| panic!("{m}"));
            r.bdp_events += 1;
            if b.pause_ms > 0 {
                r.paused_events += 1;
                r.paused_ms += b.pause_ms;
                r.max_pause_ms = r.max_pause_ms.max(b.pause_ms);
                match r.bdis.iter_mut().find(|(n, _)| *n == b.bdi) {
                    Some((_, n)) => *n += 1,
                    None => r.bdis.push((b.bdi.clone(), 1)),
                }
            }
        } else if e.is(EV_THROTTLED) {
            *r.throttled.get_or_insert(0) += 1;
        }
    }
}

fn read_sysctl(name: &str) -> String {
    fs::read_to_string(format!("/proc/sys/vm/{name}"))
        .unwrap_or_else(|e| panic!("read vm.{name}: {e}"))
        .trim()
        .to_owned()
}

/// The daemon serving the upper XFS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Daemon {
    /// examples/nbd_server behind the kernel NBD client (/dev/nbd0).
    Nbd,
    /// examples/tcmu_file behind target_core_user + tcm_loop (/dev/sdX).
    Tcmu,
}

impl Daemon {
    fn name(self) -> &'static str {
        match self {
            Daemon::Nbd => "nbd_server",
            Daemon::Tcmu => "tcmu_file",
        }
    }

    /// The thread that makes the backing file's `pwrite`s.
    fn worker(self) -> &'static str {
        match self {
            Daemon::Nbd => "nbd-conn",
            Daemon::Tcmu => tcmu::HANDLER,
        }
    }

    /// The client that turns its service into a disk.
    fn client(self) -> &'static str {
        match self {
            Daemon::Nbd => "nbd-client /dev/nbd0",
            Daemon::Tcmu => "target_core_user + tcm_loop /dev/sdX",
        }
    }
}

/// The TCMU backstore's name (`--name`), and its cmd_time_out: longer than
/// the deadline, so a handler stuck in `balance_dirty_pages` is caught in
/// the act rather than its commands failed by the kernel first.
const TCMU_NAME: &str = "rs_throttle";
const TCMU_CMD_TIME_OUT: &str = "120";

/// Everything a run set up, undone in reverse on drop (also on a panic):
/// the server is killed first, which fails its outstanding requests (NBD:
/// the client fails them when the socket closes; TCMU: the ring is reset
/// until the disk is gone).
struct Rig {
    server: Option<Child>,
    tcmu: Option<tcmu::Rig>,
    workload: Option<Child>,
    connected: bool,
    /// vm.dirty_ratio and vm.dirty_background_ratio to restore (writing a
    /// ratio clears the matching `_bytes`).
    ratios: (String, String),
}

impl Rig {
    /// A handler that is killed leaves its commands in the ring until
    /// cmd_time_out; `reset_ring` with 2 fails them (and those queued
    /// after) at once, as tcmu-runner does on recovery.
    fn unwedge_tcmu(&mut self) {
        let Some(mut t) = self.tcmu.take() else {
            return;
        };
        t.kill9();
        let ring = format!("{}/core/user_0/{TCMU_NAME}/action/reset_ring", tcmu::TARGET);
        let reset = || {
            let _ = fs::write(&ring, "2");
        };
        reset();
        if let Some(mut w) = self.workload.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let resetter = {
            let stop = stop.clone();
            let ring = ring.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = fs::write(&ring, "2");
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        if is_mounted(UPPER) && run_for(60, "umount", &[UPPER]).is_err() {
            let _ = run_for(10, "umount", &["-l", UPPER]);
        }
        tcmu::force_configfs_cleanup();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = resetter.join();
        drop(t);
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        if self.connected {
            let _ = run_for(30, "nbd-client", &["-d", NBD_DEV]);
        }
        if self.workload.is_some() {
            self.unwedge_tcmu();
        }
        if let Some(mut w) = self.workload.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if is_mounted(UPPER) && run_for(30, "umount", &[UPPER]).is_err() {
            let _ = run_for(10, "umount", &["-l", UPPER]);
        }
        // A TCMU daemon that is not wedged stops with SIGTERM and removes
        // its configfs objects (tcmu::Rig's drop).
        drop(self.tcmu.take());
        let _ = fs::write("/proc/sys/vm/dirty_ratio", &self.ratios.0);
        let _ = fs::write("/proc/sys/vm/dirty_background_ratio", &self.ratios.1);
        let _ = fs::remove_file(SOCK);
    }
}

/// State (field 3), `wchan` and the top of `stack` of every thread of `pid`.
fn thread_evidence(pid: u32) -> String {
    let mut out = String::new();
    for (tid, comm) in threads(pid) {
        let base = format!("/proc/{pid}/task/{tid}");
        let state = fs::read_to_string(format!("{base}/stat"))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_owned))
            })
            .unwrap_or_else(|| "?".into());
        let wchan = fs::read_to_string(format!("{base}/wchan")).unwrap_or_default();
        let stack: Vec<String> = fs::read_to_string(format!("{base}/stack"))
            .unwrap_or_default()
            .lines()
            .take(6)
            .map(|l| l.split_whitespace().nth(1).unwrap_or(l).to_owned())
            .collect();
        out.push_str(&format!(
            "    {tid} {comm}: state {state}, wchan {}, stack {}\n",
            if wchan.is_empty() { "-" } else { wchan.trim() },
            stack.join(" < ")
        ));
    }
    let mi = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    for l in mi
        .lines()
        .filter(|l| l.starts_with("Dirty:") || l.starts_with("Writeback:"))
    {
        out.push_str(&format!(
            "    {}\n",
            l.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    out
}

fn setup_once() {
    tcmu::setup();
    must(30, "modprobe", &["nbd"]);
    for d in [LOWER, UPPER] {
        fs::create_dir_all(d).unwrap();
    }
}

fn run_mode(daemon: Daemon, mode: Mode) -> Run {
    let tag = format!("{}-{}", daemon.name(), mode.tag());
    let worker = daemon.worker();
    fresh_ext4(LOWER_DEV, LOWER);
    let backing = format!("{LOWER}/disk.img");
    fs::File::create(&backing)
        .and_then(|f| f.set_len(BACKING_MIB << 20))
        .unwrap_or_else(|e| panic!("create {backing}: {e}"));
    must(60, "sync", &[]);
    write_file("/proc/sys/vm/drop_caches", "3");
    let _ = fs::remove_file(SOCK);

    let log = format!("/tmp/thr-server-{tag}.log");
    let mut rig = Rig {
        server: None,
        tcmu: None,
        workload: None,
        connected: false,
        ratios: (
            read_sysctl("dirty_ratio"),
            read_sysctl("dirty_background_ratio"),
        ),
    };
    let (pid, dev) = match daemon {
        Daemon::Nbd => {
            let server = Command::new("nbd_server")
                .args(["--file", &backing, "--listen", "none", "--unix", SOCK])
                .args(mode.flags())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).unwrap())
                .spawn()
                .expect("start nbd_server");
            let pid = server.id();
            rig.server = Some(server);
            wait_until("the server's unix socket", 20, || Path::new(SOCK).exists());
            must(
                60,
                "nbd-client",
                &[
                    "-unix",
                    SOCK,
                    NBD_DEV,
                    "-N",
                    "disk",
                    "-b",
                    "4096",
                    "-t",
                    NBD_TIMEOUT_S,
                ],
            );
            rig.connected = true;
            (pid, NBD_DEV.to_owned())
        }
        Daemon::Tcmu => {
            let mut flags = vec!["--name", TCMU_NAME, "--cmd-time-out", TCMU_CMD_TIME_OUT];
            flags.extend_from_slice(mode.flags());
            let (t, dev) = tcmu::Rig::start(UPPER, &backing, None, &flags, &log);
            let pid = t.pid();
            rig.tcmu = Some(t);
            (pid, dev)
        }
    };
    wait_until(&format!("the {worker} thread"), 20, || {
        threads(pid).iter().any(|(_, c)| c == worker)
    });
    must(120, "mkfs.xfs", &["-q", "-f", &dev]);
    must(60, "mount", &["-t", "xfs", &dev, UPPER]);
    must(60, "sync", &[]);

    write_file("/proc/sys/vm/dirty_bytes", &DIRTY_BYTES.to_string());
    write_file(
        "/proc/sys/vm/dirty_background_bytes",
        &DIRTY_BACKGROUND_BYTES.to_string(),
    );
    let traced = threads(pid);
    let tids: Vec<i32> = traced.iter().map(|(t, _)| *t).collect();
    let conn: Vec<i32> = traced
        .iter()
        .filter(|(_, c)| c == worker)
        .map(|(t, _)| *t)
        .collect();
    let has_throttled = Path::new(TRACEFS)
        .join("events/vmscan/mm_vmscan_throttled")
        .exists();
    let mut evs = vec![EV_BDP];
    if has_throttled {
        evs.push(EV_THROTTLED);
    }
    // `reclaim-scope watch` on the server, in its own trace instance, side
    // by side with this test's tracing of the global buffer.
    let mut watcher = Some(Watcher::start(pid));
    let tracer = Tracer::start(&evs, &tids).expect("start tracing");

    let t0 = Instant::now();
    rig.workload = Some(
        Command::new("sh")
            .args([
                "-c",
                &format!("dd if=/dev/zero of={UPPER}/big bs=1M count={DD_MIB} 2>/dev/null && sync"),
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("start dd"),
    );
    let mut run = Run {
        throttled: has_throttled.then_some(0),
        ..Run::default()
    };
    let deadline = t0 + Duration::from_secs(DEADLINE_S);
    loop {
        for &t in &conn {
            if let Some(f) = task_flags(pid as i32, t) {
                run.proc_samples += 1;
                if f & IO_FLUSHER_BITS == IO_FLUSHER_BITS {
                    run.proc_flagged += 1;
                }
                let wchan = fs::read_to_string(format!("/proc/{pid}/task/{t}/wchan"));
                let in_bdp = match wchan {
                    Ok(w) if w.trim() == "balance_dirty_pages" => true,
                    // Before 5.16 x86's get_wchan() walks frame pointers,
                    // which Debian's ORC-unwound kernels lack: wchan reads
                    // "0" (measured on 5.10). The top frame of the task's
                    // stack is the same evidence there.
                    Ok(w) if w.trim() == "0" && kernel_version() < (5, 16) => {
                        fs::read_to_string(format!("/proc/{pid}/task/{t}/stack")).is_ok_and(|s| {
                            s.lines()
                                .next()
                                .is_some_and(|l| l.contains(" balance_dirty_pages+"))
                        })
                    }
                    _ => false,
                };
                if in_bdp {
                    run.proc_in_bdp += 1;
                }
            }
        }
        let w = rig.workload.as_mut().unwrap();
        match w.try_wait().expect("wait for dd") {
            Some(st) => {
                assert!(
                    st.success(),
                    "{}: dd + sync failed: {st}\n{}",
                    mode.label(),
                    thread_evidence(pid)
                );
                run.secs = Some(t0.elapsed().as_secs_f64());
                rig.workload = None;
                break;
            }
            None if Instant::now() >= deadline => {
                run.evidence = thread_evidence(pid);
                break;
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
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
        "the server started threads that were not traced: {after:?} vs {traced:?}"
    );
    summarize(&events, &mut run);

    // Guarded and --no-flusher: stopped by SIGINT while the worker still
    // serves (its guard is dropped when the connection or the daemon ends,
    // and a watch that outlives it reads the bits of a thread that has
    // already cleared them: measured on 5.10). Unprotected: the server is
    // killed by the teardown and watch ends on its own when the pid is gone.
    if mode != Mode::Unprotected {
        run.watch = watcher.take().map(Watcher::interrupt);
    }
    if run.secs.is_some() {
        let big = fs::metadata(format!("{UPPER}/big")).unwrap().len();
        assert_eq!(big, DD_MIB << 20, "size of the dd file");
        must(60, "umount", &[UPPER]);
        if rig.connected {
            must(30, "nbd-client", &["-d", NBD_DEV]);
            rig.connected = false;
        }
    }
    drop(rig);
    if mode == Mode::Unprotected {
        run.watch = watcher.take().map(Watcher::wait_for_exit);
    }
    if is_mounted(LOWER) {
        let _ = run_for(30, "umount", &[LOWER]);
    }
    let server_log = fs::read_to_string(&log).unwrap_or_default();
    say(&format!(
        "  [{tag}] daemon: {}",
        server_log.trim().replace('\n', " | ")
    ));
    say(&format!(
        "  [{tag}] {} balance_dirty_pages events, {} with pause>0 ({} ms, max {} ms), by bdi {:?}; \
         {worker} NOIO|LOCAL_THROTTLE in {}/{} samples, in balance_dirty_pages in {}; {}",
        run.bdp_events,
        run.paused_events,
        run.paused_ms,
        run.max_pause_ms,
        run.bdis,
        run.proc_flagged,
        run.proc_samples,
        run.proc_in_bdp,
        match run.secs {
            Some(s) => format!("dd + sync {s:.1} s"),
            None => format!("dd + sync NOT DONE after {DEADLINE_S} s"),
        }
    ));
    if !run.evidence.is_empty() {
        say(&format!(
            "  [{tag}] evidence at the deadline:\n{}",
            run.evidence
        ));
    }
    run
}

vm_test! {
    reason "kernel truth: needs the nbd, xfs and brd modules; runs in the VM via `cargo xtask vm-test`";
    fn dirty_throttle_io_flusher_server_is_not_paused_for_the_device_it_serves() {
        throttle_scenario(Daemon::Nbd);
    }
}

vm_test! {
    reason "kernel truth: needs target_core_user, tcm_loop, xfs and brd; runs in the VM via `cargo xtask vm-test`";
    fn dirty_throttle_io_flusher_tcmu_handler_is_not_paused_for_the_disk_it_serves() {
        throttle_scenario(Daemon::Tcmu);
    }
}

/// Unprotected runs made at most until one shows the throttling.
const BASELINE_ATTEMPTS: u32 = 3;

/// The unprotected daemon was paused again and again: the effect the
/// guarded run is compared with.
fn shows_throttling(u: &Run) -> bool {
    u.paused_events >= 20 && u.paused_ms >= 2000
}

fn throttle_scenario(daemon: Daemon) {
    require_vm();
    setup_once();
    let worker = daemon.worker();
    let old_kb = set_trace_buffer_kb(TRACE_BUFFER_KB).expect("size the trace buffer");
    let mut runs: Vec<(Mode, Run)> = Mode::ALL
        .iter()
        .map(|&m| (m, run_mode(daemon, m)))
        .collect();
    // The baseline must show the throttling for the contrast to mean
    // anything, and on 5.10 it sometimes does not build up (measured: 4
    // pauses and done in 11 s in one run of three; 347–622 pauses in the
    // others). The unprotected run is repeated, at most twice, until it
    // shows the effect; every attempt is printed. The guarded runs are
    // never repeated.
    for attempt in 2..=BASELINE_ATTEMPTS {
        let u = &runs
            .iter()
            .find(|(m, _)| *m == Mode::Unprotected)
            .unwrap()
            .1;
        if shows_throttling(u) {
            break;
        }
        say(&format!(
            "  unprotected {}: only {} pauses ({} ms): the baseline did not build up; \
             attempt {attempt} of {BASELINE_ATTEMPTS}",
            daemon.name(),
            u.paused_events,
            u.paused_ms
        ));
        let again = run_mode(daemon, Mode::Unprotected);
        runs.retain(|(m, _)| *m != Mode::Unprotected);
        runs.push((Mode::Unprotected, again));
    }
    let _ = set_trace_buffer_kb(old_kb);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut t = format!(
        "dirty throttling (kernel {}): brd → ext4 → {BACKING_MIB} MiB sparse file → {} → \
         {} → XFS; vm.dirty_bytes=16M, dirty_background_bytes=4M; \
         dd {DD_MIB} MiB + sync, deadline {DEADLINE_S} s\n\
         | server | balance_dirty_pages events | with pause > 0 | total paused | max pause | \
         mm_vmscan_throttled | {worker} NOIO\\|LOCAL_THROTTLE in /proc | {worker} \
         in balance_dirty_pages (wchan) | dd + sync |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        kernel.trim(),
        daemon.name(),
        daemon.client(),
    );
    for (m, r) in &runs {
        t.push_str(&format!(
            "| {} | {} | {} | {:.2} s | {} ms | {} | {}/{} samples | {} samples | {} |\n",
            m.label(),
            r.bdp_events,
            r.paused_events,
            r.paused_ms as f64 / 1000.0,
            r.max_pause_ms,
            r.throttled
                .map_or_else(|| "n/a (no tracepoint)".to_owned(), |n| n.to_string()),
            r.proc_flagged,
            r.proc_samples,
            r.proc_in_bdp,
            r.secs.map_or_else(
                || format!("not done after {DEADLINE_S} s"),
                |s| format!("{s:.0} s")
            ),
        ));
    }
    say(&format!("\n{t}"));

    for (m, r) in &runs {
        if let Some(w) = &r.watch {
            say(&format!(
                "  [{}] reclaim-scope watch: exit {:?}, total {}, lost {}, stderr: {}",
                m.tag(),
                w.status,
                w.json["total"],
                w.json["lost_events"],
                w.stderr.trim().replace('\n', " | ")
            ));
        }
    }

    let get = |m: Mode| {
        &runs
            .iter()
            .find(|(x, _)| *x == m)
            .expect("every mode ran")
            .1
    };
    let g = get(Mode::Guarded);
    assert!(
        g.secs.is_some(),
        "guarded: dd + sync did not finish within {DEADLINE_S} s:\n{}",
        g.evidence
    );
    assert!(
        g.proc_samples > 0 && g.proc_flagged == g.proc_samples,
        "guarded: {worker} flagged in only {}/{} /proc samples",
        g.proc_flagged,
        g.proc_samples
    );
    // Near zero: a private allowance, not a promise of no pause at all
    // (qemu-nbd under `reclaim-scope exec`: 2 pauses, 0.04 s).
    assert!(
        g.paused_events <= 5 && g.paused_ms <= 500,
        "guarded: {} pauses, {} ms in balance_dirty_pages",
        g.paused_events,
        g.paused_ms
    );
    let u = get(Mode::Unprotected);
    assert!(
        u.proc_flagged < u.proc_samples,
        "unprotected: {worker} flagged in {}/{} samples",
        u.proc_flagged,
        u.proc_samples
    );
    // Paused again and again for the dirty pages of the device the server
    // itself serves — up to a hang, whose evidence is then on the console.
    assert!(
        shows_throttling(u) && u.paused_ms > 10 * g.paused_ms.max(100),
        "unprotected: only {} pauses, {} ms in {BASELINE_ATTEMPTS} attempts: the setup does \
         not show the throttling",
        u.paused_events,
        u.paused_ms
    );
    assert!(
        u.proc_in_bdp > 0,
        "unprotected: /proc never showed {worker} asleep in balance_dirty_pages"
    );

    // `reclaim-scope watch` saw the same: exit 0 on the guarded server,
    // 1 on the unprotected one, with at least the pauses this test counted
    // (it watched a little longer on both ends), nothing lost, and its
    // trace instance gone afterwards.
    let conn_row = |w: &Watched| {
        w.json["threads"]
            .as_array()
            .and_then(|a| a.iter().find(|t| t["name"] == worker).cloned())
            .unwrap_or_else(|| panic!("watch reported no {worker} thread: {}", w.json))
    };
    let gw = g.watch.as_ref().expect("watch ran on the guarded server");
    // watch calls any dirty-throttle pause of a watched thread unsafe; a
    // flagged daemon may still be paused now and then for its own backing
    // device's dirty pages (measured on 6.12: one 200 ms pause of the
    // guarded tcmu-handler), which the test's own trace allows above. So
    // watch must agree with that trace: 0 when it saw no pause, 1 with the
    // same count when it did.
    let want = if g.paused_events == 0 { 0 } else { 1 };
    assert_eq!(
        gw.status,
        Some(want),
        "watch on the guarded server ({} pauses traced): {gw:?}",
        g.paused_events
    );
    assert_eq!(gw.json["unsafe"], g.paused_events > 0);
    assert_eq!(gw.json["interrupted"], true, "{}", gw.json);
    assert_eq!(gw.json["lost_events"], 0);
    assert_eq!(gw.json["total"]["fs_io_reclaims"], 0);
    assert_eq!(gw.json["total"]["throttle_pauses"], g.paused_events as u64);
    let c = conn_row(gw);
    assert!(
        c["noio"] == true && c["local_throttle"] == true,
        "watch: guarded {worker} bits {c}"
    );
    let uw = u
        .watch
        .as_ref()
        .expect("watch ran on the unprotected server");
    assert_eq!(
        uw.status,
        Some(1),
        "watch on the unprotected server: {uw:?}"
    );
    assert_eq!(uw.json["unsafe"], true);
    assert_eq!(uw.json["lost_events"], 0);
    let pauses = uw.json["total"]["throttle_pauses"].as_u64().unwrap_or(0);
    let paused_ms = uw.json["total"]["paused_ms"].as_i64().unwrap_or(0);
    assert!(
        pauses >= u.paused_events as u64 && paused_ms >= u.paused_ms,
        "watch saw {pauses} pauses / {paused_ms} ms, the test's own trace {} / {} ms",
        u.paused_events,
        u.paused_ms
    );
    assert!(
        uw.stderr.contains("exited while watched")
            && uw.json["exited_pids"]
                .as_array()
                .is_some_and(|a| a.len() == 1),
        "watch did not report the killed server: {uw:?}"
    );
    assert_eq!(conn_row(uw)["local_throttle"], false);
    for (m, r) in &runs {
        let w = r.watch.as_ref().expect("watch ran");
        assert!(
            w.instance_removed,
            "{}: watch left its trace instance",
            m.label()
        );
    }
}

vm_test! {
    reason "kernel truth: needs tracefs; runs in the VM via `cargo xtask vm-test`";
    /// `watch` without the right to use tracefs: status 3 and the fix named,
    /// no instance left behind, no panic.
    fn throttle_watch_unprivileged_is_refused_with_the_fix() {
        use std::os::unix::process::CommandExt as _;
        require_vm();
        let instances = || -> Vec<std::ffi::OsString> {
            fs::read_dir(format!("{TRACEFS}/instances"))
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default()
        };
        let before = instances();
        let o = Command::new("reclaim-scope")
            .args(["watch", "1", "--duration", "1"])
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::null())
            .output()
            .expect("run reclaim-scope watch as nobody");
        let err = String::from_utf8_lossy(&o.stderr);
        say(&format!(
            "  watch as uid 65534: exit {:?}: {}",
            o.status.code(),
            err.trim()
        ));
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(o.status.code(), Some(3), "{err}");
        assert!(err.contains("as root"), "{err}");
        assert_eq!(before, instances(), "an instance was left behind");
    }
}

vm_test! {
    reason "kernel truth: needs tracefs; runs in the VM via `cargo xtask vm-test`";
    /// `watch` follows tasks created while it watches (a `dd` forked by the
    /// watched shell after `watch` started) and keeps up with a burst of page
    /// allocations: its overhead figure. Lost events, if any, are reported,
    /// never hidden.
    fn throttle_watch_follows_new_tasks_and_keeps_up() {
        require_vm();
        const MIB: u64 = 64;
        let sh = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "sleep 2; dd if=/dev/zero of=/tmp/watch-burst bs=1M count={MIB} 2>/dev/null; \
                 rm -f /tmp/watch-burst; sleep 1"
                ),
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("start sh");
        let mut sh = sh;
        let t0 = Instant::now();
        let o = Command::new("reclaim-scope")
            .args(["watch", &sh.id().to_string(), "--json", "--duration", "60"])
            .stdin(Stdio::null())
            .output()
            .expect("run reclaim-scope watch");
        let secs = t0.elapsed().as_secs_f64();
        let _ = sh.wait();
        let err = String::from_utf8_lossy(&o.stderr);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("watch --json: {e}; stderr {err}"));
        let allocs = v["total"]["page_allocs"].as_u64().unwrap_or(0);
        let lost = v["lost_events"].as_u64().unwrap_or(u64::MAX);
        let dd = v["threads"]
            .as_array()
            .and_then(|a| a.iter().find(|t| t["name"] == "dd").cloned())
            .unwrap_or_else(|| panic!("watch did not follow the forked dd: {v}"));
        let dd_allocs = dd["counts"]["page_allocs"].as_u64().unwrap_or(0);
        say(&format!(
            "  watch on a shell that forks dd ({MIB} MiB into the initramfs): exit {:?}, {allocs} page \
         allocations ({dd_allocs} by dd) in {secs:.1} s = {:.0}/s, lost {lost}; stderr: {}",
            o.status.code(),
            allocs as f64 / secs,
            err.trim().replace('\n', " | ")
        ));
        assert!(!err.contains("panicked"), "{err}");
        // Every page of the file is one order-0 allocation by dd: counted,
        // or accounted as lost.
        assert!(
            dd_allocs + lost >= MIB << 8,
            "dd: {dd_allocs} page allocations + {lost} lost, want >= {}",
            MIB << 8
        );
        if lost > 0 {
            assert!(err.contains("were lost"), "lost events not reported: {err}");
        }
        assert!(
            err.contains("exited while watched"),
            "watch did not end on the pid's exit: {err}"
        );
        // Page allocations alone are not unsafe; no reclaim, no throttle here:
        // 0, or 5 (not proved) if events were lost.
        assert_eq!(o.status.code(), Some(if lost > 0 { 5 } else { 0 }), "{v}");
    }
}

/// The lost events of `watch`'s own instance: the sum of its per-CPU
/// `overrun`/`commit overrun`/`dropped events`.
fn instance_lost(instance: &str) -> Option<u64> {
    let rd = fs::read_dir(format!("{instance}/per_cpu")).ok()?;
    let mut lost = 0;
    for e in rd.flatten() {
        lost += parse_trace_stats_lost(&fs::read_to_string(e.path().join("stats")).ok()?);
    }
    Some(lost)
}

vm_test! {
    reason "kernel truth: needs tracefs; runs in the VM via `cargo xtask vm-test`";
    /// `watch` with a one-page ring buffer per CPU (`--buffer-kb 4`) under a
    /// burst of page allocations (two `dd` of the watched shell at once)
    /// loses events, and says so: its `lost_events` equals the overruns of its
    /// instance's `per_cpu/cpuN/stats` (read here once the burst is over and
    /// the counters are still), stderr names the count, and with nothing
    /// unsafe seen the status is 5 (not proved), not 0.
    fn throttle_watch_with_a_tiny_buffer_reports_its_lost_events() {
        require_vm();
        const MIB: u64 = 64;
        let done = "/tmp/watch-lossy.done";
        let _ = fs::remove_file(done);
        let mut sh = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "sleep 2; for i in 1 2; do dd if=/dev/zero of=/tmp/watch-lossy$i bs=1M \
                 count={MIB} 2>/dev/null & done; wait; rm -f /tmp/watch-lossy1 \
                 /tmp/watch-lossy2; : > {done}; exec sleep 120"
                ),
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("start sh");
        let out = "/tmp/watch-lossy.json";
        let err = "/tmp/watch-lossy.err";
        let mut w = Command::new("reclaim-scope")
            .args(["watch", &sh.id().to_string(), "--json", "--buffer-kb", "4"])
            .stdin(Stdio::null())
            .stdout(fs::File::create(out).unwrap())
            .stderr(fs::File::create(err).unwrap())
            .spawn()
            .expect("start reclaim-scope watch");
        let instance = format!("{TRACEFS}/instances/reclaim-scope-watch-{}", w.id());
        let t0 = Instant::now();
        wait_until("the burst of the watched shell", 120, || {
            Path::new(done).exists()
        });
        let burst_s = t0.elapsed().as_secs_f64();
        // Still counters: the shell now sleeps, nothing of it allocates.
        let mut stats = instance_lost(&instance);
        for _ in 0..30 {
            std::thread::sleep(Duration::from_secs(1));
            let now = instance_lost(&instance);
            if now == stats {
                break;
            }
            stats = now;
        }
        let ring = fs::read_to_string(format!("{instance}/buffer_size_kb")).unwrap_or_default();
        must(10, "kill", &["-INT", &w.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match w.try_wait().expect("wait for watch") {
                Some(st) => break st.code(),
                None if Instant::now() >= deadline => {
                    let _ = w.kill();
                    let _ = w.wait();
                    panic!("reclaim-scope watch did not end within 30 s of SIGINT");
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let _ = sh.kill();
        let _ = sh.wait();
        let stderr = fs::read_to_string(err).unwrap_or_default();
        let text = fs::read_to_string(out).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("watch --json output {text:?}: {e}; stderr {stderr}"));
        let lost = v["lost_events"].as_u64().unwrap_or(0);
        let allocs = v["total"]["page_allocs"].as_u64().unwrap_or(0);
        let stats = stats.expect("read the instance's per_cpu stats");
        say(&format!(
            "  watch --buffer-kb 4 (instance buffer_size_kb {}) on two dd of {MIB} MiB: exit {status:?}, \
         {allocs} page allocations seen, {lost} lost (instance stats: {stats}), burst {burst_s:.1} s \
         = {:.0} events/s offered, {:.0}/s seen; stderr: {}",
            ring.trim(),
            (allocs + lost) as f64 / burst_s,
            allocs as f64 / burst_s,
            stderr.trim().replace('\n', " | ")
        ));
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            lost > 0,
            "a one-page buffer under {} MiB of page allocations lost nothing: {v}",
            2 * MIB
        );
        assert_eq!(
            lost, stats,
            "watch's lost_events vs its instance's per_cpu stats"
        );
        assert!(
            stderr.contains(&format!("{lost} trace events were lost")),
            "lost events not reported: {stderr}"
        );
        // Every page of both files is one order-0 allocation: seen or lost.
        assert!(
            allocs + lost >= 2 * (MIB << 8),
            "{allocs} page allocations + {lost} lost, want >= {}",
            2 * (MIB << 8)
        );
        assert_eq!(v["unsafe"], false, "{v}");
        assert_eq!(status, Some(5), "nothing unsafe but events lost: {stderr}");
        assert!(stderr.contains("proves nothing"), "{stderr}");
        assert!(
            !Path::new(&instance).exists(),
            "watch left its trace instance"
        );
    }
}

/// Host-side: the fields of the tracepoint are found by name on both
/// layouts, and `dirtied_pause=` is never taken for `pause=`.
#[test]
fn throttle_balance_dirty_pages_fields_parse_by_name() {
    let v61 = "        nbd-conn-231     [000] .....    88.914321: balance_dirty_pages: \
               bdi 1:1: limit=4096 setpoint=3072 dirty=4500 bdi_setpoint=120 bdi_dirty=40 \
               dirty_ratelimit=102 task_ratelimit=0 dirtied=32 dirtied_pause=32 paused=0 \
               pause=200 period=200 think=0 cgroup_ino=1";
    let b = parse_bdp(v61).unwrap();
    assert_eq!(
        b,
        Bdp {
            bdi: "1:1".into(),
            pause_ms: 200,
            dirty: 4500,
            limit: 4096,
            wb_dirty: 40
        }
    );
    let v612 = "nbd-conn-9 [001] ..... 5.0: balance_dirty_pages: bdi 43:0: limit=4096 \
                setpoint=3072 dirty=3900 wb_setpoint=3000 wb_dirty=3800 dirty_ratelimit=25 \
                task_ratelimit=12 dirtied=7 dirtied_pause=64 paused=0 pause=-12 period=4 \
                think=16 cgroup_ino=1";
    let b = parse_bdp(v612).unwrap();
    assert_eq!(
        (b.bdi.as_str(), b.pause_ms, b.wb_dirty),
        ("43:0", -12, 3800)
    );
    let mut r = Run::default();
    let ev: Vec<TraceEvent> = [v61, v612, v61]
        .iter()
        .filter_map(|l| parse_trace_line(l))
        .collect();
    summarize(&ev, &mut r);
    assert_eq!((r.bdp_events, r.paused_events, r.paused_ms), (3, 2, 400));
    assert_eq!(r.bdis, vec![("1:1".to_owned(), 2)]);
    assert!(parse_bdp("x-1 [000] 1.0: balance_dirty_pages: bdi 1:0: dirtied_pause=3").is_err());
}
