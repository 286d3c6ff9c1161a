//! Kernel truth for examples/ublk_file (issue 16): a ublk block device
//! (`/dev/ublkbN`) served from a file through `NoFsFile`, its queue threads
//! spawned by the example (not by libublk's `run_target`) and holding an
//! `IoFlusher`.
//!
//! First the device itself, to real clients: brd → ext4 → sparse backing
//! file → `ublk_file --queues 2` → `mkfs.xfs` on /dev/ublkb0 → `fio` with
//! verify on the mounted XFS; then `/proc/PID/task/TID/stat`,
//! `reclaim-scope status --json` and the daemon's own `Audit::current()` (SIGUSR1)
//! must show every queue thread, and every io_uring worker (`iou-wrk-*`)
//! of the daemon, NOIO|LOCAL_THROTTLE; SIGTERM deletes the device. The same
//! with `--no-flusher`: the queue threads are clear between requests.
//!
//! Then the seed scenario of `tests/vm_nbd_seed.rs` / `tests/vm_tcmu.rs`
//! (`common::seed`) with `ublk_file` in a cgroup with `memory.max=32M`:
//! tracefs reclaim entries and page allocations of the daemon's threads in
//! the three modes; guarded clean, unprotected reclaiming with FS/IO.
//!
//! ublk needs Linux >= 6.0 with `CONFIG_BLK_DEV_UBLK`: of the VM's kernels
//! only 6.12 (trixie) has it; on 6.1 and 5.10 every test here reports
//! itself not applicable (`common::not_applicable`).

mod common;

use common::seed::{self, Mode, Stats};
use common::*;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LOWER_DEV: &str = "/dev/ram1";
const LOWER: &str = "/mnt/ublk-lower";
const UPPER: &str = "/mnt/ublk-xfs";
/// mkfs.xfs refuses file systems smaller than 300 MB.
const BACKING_MIB: u64 = 320;
const MEMORY_MAX: &str = "32M";
const DD_MIB: u64 = 64;
const DATA_MIB: usize = 16;
const TRACE_BUFFER_KB: u64 = 16384;
const CONTROL: &str = "/dev/ublk-control";
/// The queue thread of a one-queue device (the example names queue N's
/// thread `ublk-qN`).
const WORKER: &str = "ublk-q0";

/// Whether ublk can run here; otherwise the calling test is reported not
/// applicable, with the reason, and must return.
fn ublk_available() -> bool {
    require_vm();
    let kver = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let kver = kver.trim();
    if kernel_version() < (6, 0) {
        not_applicable(&format!("ublk needs Linux >= 6.0; this is {kver}"));
        return false;
    }
    if !Path::new(CONTROL).exists() {
        if let Err(e) = run_for(30, "modprobe", &["ublk_drv"]) {
            not_applicable(&format!(
                "kernel {kver} has no ublk_drv (Debian's 6.1 cloud kernel is built without \
                 CONFIG_BLK_DEV_UBLK): {e}"
            ));
            return false;
        }
        wait_until(CONTROL, 10, || Path::new(CONTROL).exists());
    }
    true
}

fn setup_once() {
    load_brd();
    must(30, "modprobe", &["xfs"]);
    for d in [LOWER, UPPER] {
        fs::create_dir_all(d).unwrap();
    }
    let _ = fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
}

/// A fresh ext4 on the ramdisk with a sparse backing file; its path.
fn fresh_lower() -> String {
    fresh_ext4(LOWER_DEV, LOWER);
    let backing = format!("{LOWER}/disk.img");
    fs::File::create(&backing)
        .and_then(|f| f.set_len(BACKING_MIB << 20))
        .unwrap_or_else(|e| panic!("create {backing}: {e}"));
    must(60, "sync", &[]);
    write_file("/proc/sys/vm/drop_caches", "3");
    backing
}

/// ublk devices the driver has (`/sys/class/ublk-char-device/ublkcN`).
fn ublk_devices() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir("/sys/class/ublk-char-device")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `ublk_file` (in `cgroup` if given) and its device, torn down on drop.
struct Rig {
    daemon: Option<Child>,
    cgroup: Option<String>,
    log: String,
    /// N of /dev/ublkbN, once known: deleted with `ublk_file --delete N`
    /// if the daemon has to be killed.
    dev_id: Option<String>,
}

impl Rig {
    /// Starts `ublk_file --file backing FLAGS` and waits for its
    /// "serving ... as /dev/ublkbN" line; the rig and the device path.
    fn start(backing: &str, cgroup: Option<String>, flags: &[&str], log: &str) -> (Rig, String) {
        let join = cgroup
            .as_ref()
            .map(|c| format!("echo $$ > {c}/cgroup.procs && "))
            .unwrap_or_default();
        let cmd = format!("{join}exec ublk_file --file {backing} {}", flags.join(" "));
        let child = Command::new("sh")
            .args(["-c", &cmd])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .expect("start ublk_file");
        let mut rig = Rig {
            daemon: Some(child),
            cgroup,
            log: log.to_owned(),
            dev_id: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let dev = loop {
            let text = rig.log();
            if let Some(i) = text.find(" as /dev/ublkb") {
                let dev = text[i + 4..].split_whitespace().next().unwrap_or("");
                break dev.to_owned();
            }
            let exited = rig
                .daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok())
                .flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "ublk_file without a device ({exited:?}): {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        rig.dev_id = Some(dev.trim_start_matches("/dev/ublkb").to_owned());
        wait_until(&dev, 20, || Path::new(&dev).exists());
        (rig, dev)
    }

    fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon").id()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `Audit::current()` as the daemon prints it on SIGUSR1 (every thread, `{:#}`).
    fn audit(&self) -> String {
        let before = self.log().matches("audit of process").count();
        must(5, "kill", &["-USR1", &self.pid().to_string()]);
        wait_until("the daemon's audit", 20, || {
            self.log().matches("audit of process").count() > before
        });
        // The report is one eprintln; give it time to be complete.
        std::thread::sleep(Duration::from_millis(200));
        let log = self.log();
        let start = log.rfind("ublk-file: audit of process").expect("audit");
        log[start..]
            .lines()
            .take_while(|l| l.starts_with("ublk-file: audit") || l.starts_with("  "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM, wait for exit 0; the daemon's log.
    fn stop(&mut self) -> Result<String, String> {
        let Some(mut child) = self.daemon.take() else {
            return Ok(self.log());
        };
        let _ = run_for(5, "kill", &["-TERM", &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(60);
        let st = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => break None,
            }
        };
        let log = self.log();
        match st {
            Some(st) if st.success() => Ok(log),
            Some(st) => Err(format!("ublk_file exited with {st}: {log}")),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                if let Some(id) = &self.dev_id {
                    let _ = run_for(30, "ublk_file", &["--delete", id]);
                }
                Err(format!(
                    "ublk_file did not stop within 60 s of SIGTERM: {log}"
                ))
            }
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if is_mounted(UPPER) && run_for(30, "umount", &[UPPER]).is_err() {
            let _ = run_for(10, "umount", &["-l", UPPER]);
        }
        if self.daemon.is_some() {
            let _ = self.stop();
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

/// (tid, name, flags) of every thread of `pid` whose name starts with `prefix`.
fn flags_of(pid: u32, prefix: &str) -> Vec<(i32, String, u32)> {
    threads(pid)
        .into_iter()
        .filter(|(_, n)| n.starts_with(prefix))
        .filter_map(|(t, n)| Some((t, n, task_flags(pid as i32, t)?)))
        .collect()
}

fn fio_verify(dir: &str, tag: &str) -> serde_json::Value {
    let out = must(
        180,
        "fio",
        &[
            &format!("--name=ublk-{tag}"),
            &format!("--directory={dir}"),
            "--size=16M",
            "--bs=4k",
            "--rw=randwrite",
            "--ioengine=psync",
            "--direct=1",
            "--numjobs=2",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--fsync_on_close=1",
            "--output-format=json",
        ],
    );
    let start = out
        .find('{')
        .unwrap_or_else(|| panic!("fio printed no JSON: {out}"));
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("fio JSON: {e}: {out}"))
}

vm_test! {
    reason "kernel truth: needs ublk_drv (Linux >= 6.0), brd, xfs; runs in the VM via `cargo xtask vm-test --kernel 6.12`";
    fn ublk_serves_xfs_and_fio_verify_with_every_queue_thread_flagged() {
        if !ublk_available() {
            return;
        }
        setup_once();
        let before = ublk_devices();
        let backing = fresh_lower();
        let log = "/tmp/ublk-guarded.log";
        let (mut rig, dev) = Rig::start(&backing, None, &["--queues", "2"], log);
        let pid = rig.pid();
        say(&format!("  ublk_file pid {pid} serves {dev}"));
        let size: u64 = fs::read_to_string(format!(
            "/sys/block/{}/size",
            dev.trim_start_matches("/dev/")
        ))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
        assert_eq!(size * 512, BACKING_MIB << 20, "{dev}'s size is the file's");

        must(120, "mkfs.xfs", &["-q", "-f", &dev]);
        must(60, "mount", &["-t", "xfs", &dev, UPPER]);
        let t0 = Instant::now();
        let fio = fio_verify(UPPER, "verify");
        let jobs = fio["jobs"].as_array().expect("fio jobs");
        assert!(!jobs.is_empty());
        for j in jobs {
            assert_eq!(j["error"], 0, "fio job failed: {j}");
            assert!(
                j["write"]["io_bytes"].as_u64().unwrap_or(0) >= 16 << 20,
                "fio wrote too little: {}",
                j["write"]
            );
            // The verify phase reads back everything written.
            assert!(
                j["read"]["io_bytes"].as_u64().unwrap_or(0) >= 16 << 20,
                "fio verified too little: {}",
                j["read"]
            );
        }
        say(&format!(
            "  fio randwrite 4 KiB + crc32c verify, 2 jobs x 16 MiB on XFS on {dev}: {:.1} s, write {} IOPS, verify-read {} IOPS",
            t0.elapsed().as_secs_f64(),
            jobs[0]["write"]["iops"],
            jobs[0]["read"]["iops"]
        ));

        // The kernel's flags of the queue threads and of any io_uring worker.
        let queues = flags_of(pid, "ublk-q");
        assert_eq!(queues.len(), 2, "two queue threads: {:?}", threads(pid));
        let workers = flags_of(pid, "iou-");
        for (tid, name, f) in queues.iter().chain(&workers) {
            assert_eq!(
                f & IO_FLUSHER_BITS,
                IO_FLUSHER_BITS,
                "{name} ({tid}) is {}",
                describe_flags(*f)
            );
        }
        say(&format!(
            "  /proc: {} queue threads, {} io_uring threads, all NOIO|LOCAL_THROTTLE: {:?}",
            queues.len(),
            workers.len(),
            queues
                .iter()
                .chain(&workers)
                .map(|(t, n, f)| format!("{n}/{t} {f:#x}"))
                .collect::<Vec<_>>()
        ));

        // reclaim-scope status: the same, read by the tool.
        let st = must(10, "reclaim-scope", &["status", &pid.to_string(), "--json"]);
        let st: serde_json::Value = serde_json::from_str(&st).expect("status JSON");
        let rows = st[0]["threads"].as_array().expect("status threads").clone();
        for (tid, name, _) in queues.iter().chain(&workers) {
            let row = rows
                .iter()
                .find(|r| r["tid"] == *tid)
                .unwrap_or_else(|| panic!("status has no {name} ({tid}): {st}"));
            assert!(
                row["noio"] == true && row["local_throttle"] == true && row["io_flusher"] == true,
                "status: {name} {row}"
            );
        }

        // Audit::current() inside the daemon: every queue thread held by its IoFlusher,
        // every io_uring worker accounted for by the IoFlusher of the thread it
        // works for (iou-wrk-TID), nothing missing or unaccounted.
        let audit = rig.audit();
        say(&format!("  daemon's Audit::current():\n{audit}"));
        assert!(
            audit.contains("every flag is accounted for"),
            "audit has findings: {audit}"
        );
        for (tid, name, _) in queues.iter().chain(&workers) {
            let line = audit
                .lines()
                .find(|l| l.contains(&format!("tid {tid} ")))
                .unwrap_or_else(|| panic!("audit has no {name} ({tid}): {audit}"));
            assert!(line.contains("held by an IoFlusher guard"), "audit: {line}");
        }
        let owners: Vec<String> = workers
            .iter()
            .map(|(t, n, _)| {
                let owner: u32 = n.trim_start_matches("iou-wrk-").parse().unwrap_or(0);
                let of = threads(pid)
                    .into_iter()
                    .find(|(o, _)| *o as u32 == owner)
                    .map_or("gone".to_owned(), |(_, c)| c);
                format!("{n} ({t}) works for {of}")
            })
            .collect();
        say(&format!("  io_uring workers: {owners:?}"));

        // The data survives an unmount and remount (fio verified it online).
        must(60, "umount", &[UPPER]);
        must(60, "mount", &["-t", "xfs", "-o", "ro", &dev, UPPER]);
        must(60, "umount", &[UPPER]);
        let text = rig.stop().unwrap_or_else(|e| panic!("{e}"));
        say(&format!("  daemon: {}", text.trim().replace('\n', " | ")));
        assert!(text.contains("device deleted"), "{text}");
        assert!(!Path::new(&dev).exists(), "{dev} still there after SIGTERM");
        assert_eq!(ublk_devices(), before, "ublk devices left behind");
        drop(rig);

        // --no-flusher: between requests the queue thread is clear (each file
        // call is still NOIO-scoped by NoFsFile), and Audit::current() agrees.
        let (mut rig, dev) = Rig::start(&backing, None, &["--no-flusher"], "/tmp/ublk-noflusher.log");
        let pid = rig.pid();
        must(
            30,
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={dev}"),
                "bs=1M",
                "count=4",
                "oflag=direct",
            ],
        );
        let q = flags_of(pid, "ublk-q");
        assert_eq!(q.len(), 1, "{:?}", threads(pid));
        assert_eq!(
            q[0].2 & IO_FLUSHER_BITS,
            0,
            "--no-flusher: {} is {}",
            q[0].1,
            describe_flags(q[0].2)
        );
        for (tid, name, f) in flags_of(pid, "iou-") {
            assert_eq!(
                f & IO_FLUSHER_BITS,
                0,
                "--no-flusher: {name} ({tid}) is {}",
                describe_flags(f)
            );
        }
        let audit = rig.audit();
        assert!(audit.contains("every flag is accounted for"), "{audit}");
        assert!(
            audit
                .lines()
                .any(|l| l.contains(&format!("tid {} ", q[0].0)) && l.ends_with(": clear")),
            "{audit}"
        );
        rig.stop().unwrap_or_else(|e| panic!("{e}"));
        drop(rig);
        if is_mounted(LOWER) {
            let _ = run_for(30, "umount", &[LOWER]);
        }
    }
}

fn run_scenario(mode: Mode) -> Stats {
    let t0 = Instant::now();
    let mut phase = t0;
    let mut lap = |what: &str| {
        say(&format!(
            "  [{}] {what}: {:.1} s",
            mode.tag(),
            phase.elapsed().as_secs_f64()
        ));
        phase = Instant::now();
    };
    let backing = fresh_lower();
    let cgroup = format!("/sys/fs/cgroup/ublk-{}", mode.tag());
    if !Path::new(&cgroup).exists() {
        fs::create_dir(&cgroup).unwrap_or_else(|e| panic!("mkdir {cgroup}: {e}"));
    }
    write_file(&format!("{cgroup}/memory.max"), MEMORY_MAX);
    let log = format!("/tmp/ublk-seed-{}.log", mode.tag());
    // 16 tags of 128 KiB: 2 MiB of request buffers, well inside the memcg
    // (libublk's 64 x 512 KiB default alone would fill it).
    let mut flags = vec!["--depth", "16", "--io-buf", "128K"];
    flags.extend_from_slice(mode.flags());
    let (mut rig, dev) = Rig::start(&backing, Some(cgroup.clone()), &flags, &log);
    let pid = rig.pid();
    let in_cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    assert!(
        in_cgroup
            .trim_end()
            .ends_with(&format!("/ublk-{}", mode.tag())),
        "daemon not in its cgroup: {in_cgroup:?}"
    );
    lap("lower ext4, ublk_file, /dev/ublkb");
    let mut s = seed::traced_workload(
        mode,
        pid,
        WORKER,
        &cgroup,
        &seed::Workload {
            dev: &dev,
            upper: UPPER,
            data_mib: DATA_MIB,
            dd_mib: DD_MIB,
            seed: 0x0b1c_0000,
        },
        &mut lap,
    );
    let daemon_log = rig.stop().unwrap_or_else(|e| panic!("{e}"));
    drop(rig);
    assert!(!Path::new(&dev).exists(), "{dev} left after SIGTERM");
    lap("remount, verify, teardown");
    s.secs = t0.elapsed().as_secs_f64();
    seed::report(mode, &daemon_log, WORKER, &s);
    s
}

vm_test! {
    reason "kernel truth: needs ublk_drv (Linux >= 6.0), brd, xfs, tracefs; runs in the VM via `cargo xtask vm-test --kernel 6.12`";
    fn seed_scenario_ublk_queue_thread_never_reclaims_with_fs_or_io() {
        if !ublk_available() {
            return;
        }
        setup_once();
        seed::run_all_modes(
            TRACE_BUFFER_KB,
            LOWER,
            &format!(
                "brd → ext4 → {BACKING_MIB} MiB sparse file → ublk_file (cgroup \
             memory.max={MEMORY_MAX}) → /dev/ublkb0 → XFS; mkfs.xfs + {DATA_MIB} MiB verified \
             file + {DD_MIB} MiB dd"
            ),
            "ublk_file",
            WORKER,
            run_scenario,
        );
    }
}

// ---------------------------------------------------------------------------
// The dirty-throttling scenario of tests/vm_throttle.rs, on ublk
// ---------------------------------------------------------------------------

/// Sparse; only what the XFS writes lands on the 384 MiB ramdisk.
const THR_BACKING_MIB: u64 = 768;
/// 10x `vm.dirty_bytes`: the system is over its dirty limit for most of the run.
const THR_DD_MIB: u64 = 160;
const DIRTY_BYTES: u64 = 16 << 20;
const DIRTY_BACKGROUND_BYTES: u64 = 4 << 20;
/// Past it the run counts as hung.
const THR_DEADLINE_S: u64 = 60;
const THR_TRACE_BUFFER_KB: u64 = 8192;
const EV_BDP: &str = "writeback:balance_dirty_pages";

/// `pause=` and the device (`bdi 259:1:`) of one balance_dirty_pages line.
fn parse_bdp(line: &str) -> Option<(String, i64)> {
    let rest = line.split_once("balance_dirty_pages: ")?.1;
    let bdi = rest.strip_prefix("bdi ")?.split_once(": ")?.0.to_owned();
    let pause = rest
        .split_whitespace()
        .find_map(|t| t.strip_prefix("pause="))?
        .parse()
        .ok()?;
    Some((bdi, pause))
}

#[derive(Debug, Default)]
struct ThrRun {
    bdp_events: usize,
    paused_events: usize,
    paused_ms: i64,
    max_pause_ms: i64,
    bdis: Vec<(String, usize)>,
    /// dd + sync wall time; `None` past the deadline.
    secs: Option<f64>,
    proc_samples: usize,
    proc_flagged: usize,
    /// Samples with the queue thread asleep in balance_dirty_pages (wchan).
    proc_in_bdp: usize,
    evidence: String,
}

fn read_sysctl(name: &str) -> String {
    fs::read_to_string(format!("/proc/sys/vm/{name}"))
        .unwrap_or_else(|e| panic!("read vm.{name}: {e}"))
        .trim()
        .to_owned()
}

/// Restores the dirty ratios (writing a ratio clears the `_bytes`) and
/// kills what a hung run left: the workload, the daemon (ublk then fails
/// its requests), the mount, the device.
struct ThrRig {
    ublk: Option<Rig>,
    workload: Option<Child>,
    dev_id: Option<String>,
    ratios: (String, String),
}

impl Drop for ThrRig {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/vm/dirty_ratio", &self.ratios.0);
        let _ = fs::write("/proc/sys/vm/dirty_background_ratio", &self.ratios.1);
        if let Some(mut w) = self.workload.take() {
            if let Some(mut r) = self.ublk.take() {
                if let Some(mut d) = r.daemon.take() {
                    let _ = d.kill();
                    let _ = d.wait();
                }
            }
            let _ = w.kill();
            let _ = w.wait();
            if is_mounted(UPPER) && run_for(60, "umount", &[UPPER]).is_err() {
                let _ = run_for(10, "umount", &["-l", UPPER]);
            }
            if let Some(id) = &self.dev_id {
                let _ = run_for(30, "ublk_file", &["--delete", id]);
            }
        }
        drop(self.ublk.take());
    }
}

/// State, wchan and the top of the stack of every thread of `pid`.
fn thread_evidence(pid: u32) -> String {
    let mut out = String::new();
    for (tid, comm) in threads(pid) {
        let base = format!("/proc/{pid}/task/{tid}");
        let stat = fs::read_to_string(format!("{base}/stat")).unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .unwrap_or("?")
            .to_owned();
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
    out
}

fn throttle_run(mode: Mode) -> ThrRun {
    let tag = mode.tag();
    fresh_ext4(LOWER_DEV, LOWER);
    let backing = format!("{LOWER}/disk.img");
    fs::File::create(&backing)
        .and_then(|f| f.set_len(THR_BACKING_MIB << 20))
        .unwrap_or_else(|e| panic!("create {backing}: {e}"));
    must(60, "sync", &[]);
    write_file("/proc/sys/vm/drop_caches", "3");

    let log = format!("/tmp/ublk-thr-{tag}.log");
    let (rig, dev) = Rig::start(&backing, None, mode.flags(), &log);
    let pid = rig.pid();
    let mut thr = ThrRig {
        ublk: Some(rig),
        workload: None,
        dev_id: Some(dev.trim_start_matches("/dev/ublkb").to_owned()),
        ratios: (
            read_sysctl("dirty_ratio"),
            read_sysctl("dirty_background_ratio"),
        ),
    };
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
    let queue: Vec<i32> = traced
        .iter()
        .filter(|(_, c)| c == WORKER)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(queue.len(), 1, "{traced:?}");
    let tracer = Tracer::start(&[EV_BDP], &tids).expect("start tracing");
    let t0 = Instant::now();
    thr.workload = Some(
        Command::new("sh")
            .args([
                "-c",
                &format!(
                    "dd if=/dev/zero of={UPPER}/big bs=1M count={THR_DD_MIB} 2>/dev/null && sync"
                ),
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("start dd"),
    );
    let mut run = ThrRun::default();
    let deadline = t0 + Duration::from_secs(THR_DEADLINE_S);
    loop {
        for &t in &queue {
            if let Some(f) = task_flags(pid as i32, t) {
                run.proc_samples += 1;
                if f & IO_FLUSHER_BITS == IO_FLUSHER_BITS {
                    run.proc_flagged += 1;
                }
                let wchan = fs::read_to_string(format!("/proc/{pid}/task/{t}/wchan"));
                if wchan.is_ok_and(|w| w.trim() == "balance_dirty_pages") {
                    run.proc_in_bdp += 1;
                }
            }
        }
        let w = thr.workload.as_mut().unwrap();
        match w.try_wait().expect("wait for dd") {
            Some(st) => {
                assert!(
                    st.success(),
                    "{}: dd + sync failed: {st}\n{}",
                    mode.label(),
                    thread_evidence(pid)
                );
                run.secs = Some(t0.elapsed().as_secs_f64());
                thr.workload = None;
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
    assert_eq!(lost, 0, "the trace lost {lost} events");
    assert_eq!(
        after.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        tids,
        "threads appeared that were not traced: {after:?} vs {traced:?}"
    );
    for e in events.iter().filter(|e| e.is(EV_BDP)) {
        let (bdi, pause) = parse_bdp(&e.line).unwrap_or_else(|| panic!("parse {}", e.line));
        run.bdp_events += 1;
        if pause > 0 {
            run.paused_events += 1;
            run.paused_ms += pause;
            run.max_pause_ms = run.max_pause_ms.max(pause);
            match run.bdis.iter_mut().find(|(n, _)| *n == bdi) {
                Some((_, n)) => *n += 1,
                None => run.bdis.push((bdi, 1)),
            }
        }
    }
    if run.secs.is_some() {
        let big = fs::metadata(format!("{UPPER}/big")).unwrap().len();
        assert_eq!(big, THR_DD_MIB << 20, "size of the dd file");
        must(60, "umount", &[UPPER]);
    }
    let log_text = thr.ublk.as_ref().map(Rig::log).unwrap_or_default();
    drop(thr);
    if is_mounted(LOWER) {
        let _ = run_for(30, "umount", &[LOWER]);
    }
    say(&format!(
        "  [{tag}] daemon: {}",
        log_text.trim().replace('\n', " | ")
    ));
    say(&format!(
        "  [{tag}] {} balance_dirty_pages events, {} with pause>0 ({} ms, max {} ms), by bdi {:?}; \
         {WORKER} NOIO|LOCAL_THROTTLE in {}/{} samples, in balance_dirty_pages in {}; {}",
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
            None => format!("dd + sync NOT DONE after {THR_DEADLINE_S} s"),
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
    reason "kernel truth: needs ublk_drv (Linux >= 6.0), brd, xfs, tracefs; runs in the VM via `cargo xtask vm-test --kernel 6.12`";
    fn dirty_throttle_io_flusher_ublk_queue_is_not_paused_for_the_device_it_serves() {
        if !ublk_available() {
            return;
        }
        setup_once();
        let old_kb = set_trace_buffer_kb(THR_TRACE_BUFFER_KB).expect("size the trace buffer");
        let runs: Vec<(Mode, ThrRun)> = Mode::ALL.iter().map(|&m| (m, throttle_run(m))).collect();
        let _ = set_trace_buffer_kb(old_kb);
        assert_eq!(
            ublk_devices(),
            Vec::<String>::new(),
            "ublk devices left behind (a hung run is killed and its device deleted with --delete)"
        );
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut t = format!(
            "dirty throttling (kernel {}): brd → ext4 → {THR_BACKING_MIB} MiB sparse file → \
         ublk_file → /dev/ublkb0 → XFS; vm.dirty_bytes=16M, dirty_background_bytes=4M; \
         dd {THR_DD_MIB} MiB + sync, deadline {THR_DEADLINE_S} s\n\
         | ublk_file | balance_dirty_pages events | with pause > 0 | total paused | max pause | \
         {WORKER} NOIO\\|LOCAL_THROTTLE in /proc | {WORKER} in balance_dirty_pages (wchan) | \
         dd + sync |\n|---|---|---|---|---|---|---|---|\n",
            kernel.trim()
        );
        for (m, r) in &runs {
            t.push_str(&format!(
                "| {} | {} | {} | {:.2} s | {} ms | {}/{} samples | {} samples | {} |\n",
                m.label(),
                r.bdp_events,
                r.paused_events,
                r.paused_ms as f64 / 1000.0,
                r.max_pause_ms,
                r.proc_flagged,
                r.proc_samples,
                r.proc_in_bdp,
                r.secs.map_or_else(
                    || format!("not done after {THR_DEADLINE_S} s"),
                    |s| format!("{s:.0} s")
                ),
            ));
        }
        say(&format!("\n{t}"));
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
            "guarded: dd + sync did not finish within {THR_DEADLINE_S} s:\n{}",
            g.evidence
        );
        assert!(
            g.proc_samples > 0 && g.proc_flagged == g.proc_samples,
            "guarded: {WORKER} flagged in only {}/{} samples",
            g.proc_flagged,
            g.proc_samples
        );
        assert!(
            g.paused_events <= 5 && g.paused_ms <= 500,
            "guarded: {} pauses, {} ms in balance_dirty_pages",
            g.paused_events,
            g.paused_ms
        );
        let u = get(Mode::Unprotected);
        assert!(
            u.proc_flagged < u.proc_samples,
            "unprotected: {WORKER} flagged in {}/{} samples",
            u.proc_flagged,
            u.proc_samples
        );
        assert!(
            u.paused_events >= 20 && u.paused_ms > 10 * g.paused_ms.max(100),
            "unprotected: only {} pauses, {} ms: the setup does not show the throttling",
            u.paused_events,
            u.paused_ms
        );
        assert!(
            u.proc_in_bdp > 0,
            "unprotected: /proc never showed {WORKER} asleep in balance_dirty_pages"
        );
    }
}
