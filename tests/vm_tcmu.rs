//! Kernel truth for examples/tcmu_file (issue 8): the seed's exact stack.
//!
//! `tcmu_file` serves a file through target_core_user; tcm_loop makes it a
//! local SCSI disk (/dev/sdX). First the disk itself: patterns written with
//! `dd` (direct I/O) read back and found in the backing file, XFS made,
//! written, remounted and verified, configfs left empty after SIGTERM.
//!
//! Then the 2019 deadlock setup, as in tests/vm_nbd_seed.rs but with the
//! TCMU handler of the seed: brd → ext4 → 320 MiB sparse backing file →
//! `tcmu_file` in a cgroup with `memory.max=32M` → tcm_loop /dev/sdX → XFS →
//! a write workload. Every page the handler writes into the backing file is
//! charged to its cgroup, so its thread reclaims; tracefs records the gfp
//! flags of every reclaim entry and page allocation of the daemon's
//! threads. Guarded: no FS/IO-capable reclaim or allocation on the handler;
//! `--unprotected` (tcmu-runner's plain pwrite): FS/IO-capable reclaim.
//!
//! Every external command has a timeout; teardown unmounts, then stops the
//! daemon with SIGTERM (it removes its LUN and backstore), SIGKILL and a
//! best-effort configfs cleanup only if that fails.

mod common;

use common::seed::{self, Mode, Stats};
use common::*;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LOWER_DEV: &str = "/dev/ram1";
const LOWER: &str = "/mnt/tcmu-lower";
const UPPER: &str = "/mnt/tcmu-xfs";
/// mkfs.xfs refuses file systems smaller than 300 MB.
const BACKING_MIB: u64 = 320;
const MEMORY_MAX: &str = "32M";
const DD_MIB: u64 = 64;
const DATA_MIB: usize = 16;
const TRACE_BUFFER_KB: u64 = 16384;
const CONFIGFS: &str = "/sys/kernel/config";
const TARGET: &str = "/sys/kernel/config/target";
const HANDLER: &str = "tcmu-handler";

fn setup_once() {
    load_brd();
    for m in ["target_core_user", "tcm_loop", "sd_mod", "xfs"] {
        must(30, "modprobe", &[m]);
    }
    if !Path::new(TARGET).is_dir() {
        must(10, "mount", &["-t", "configfs", "none", CONFIGFS]);
    }
    assert!(
        Path::new(TARGET).is_dir(),
        "{TARGET} missing after modprobe + mount"
    );
    let _ = fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
    for d in [LOWER, UPPER] {
        fs::create_dir_all(d).unwrap();
    }
}

/// A fresh ext4 on the ramdisk with a sparse backing file; its path.
fn fresh_lower() -> String {
    if is_mounted(LOWER) {
        must(30, "umount", &[LOWER]);
    }
    must(60, "mkfs.ext4", &["-q", "-F", LOWER_DEV]);
    must(30, "mount", &["-t", "ext4", LOWER_DEV, LOWER]);
    let backing = format!("{LOWER}/disk.img");
    fs::File::create(&backing)
        .and_then(|f| f.set_len(BACKING_MIB << 20))
        .unwrap_or_else(|e| panic!("create {backing}: {e}"));
    must(60, "sync", &[]);
    write_file("/proc/sys/vm/drop_caches", "3");
    backing
}

/// Our configfs objects still present: backstores under core/user_0 and
/// tcm_loop targets.
fn configfs_leftovers() -> Vec<String> {
    let mut v = Vec::new();
    for d in ["core/user_0", "loopback"] {
        let p = Path::new(TARGET).join(d);
        for e in fs::read_dir(&p).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("naa.") || (d == "core/user_0" && e.path().is_dir()) {
                v.push(format!("{d}/{n}"));
            }
        }
    }
    v
}

/// Best effort, only after the daemon failed to tear down itself.
fn force_configfs_cleanup() {
    let lb = Path::new(TARGET).join("loopback");
    for e in fs::read_dir(&lb).into_iter().flatten().flatten() {
        if !e.file_name().to_string_lossy().starts_with("naa.") {
            continue;
        }
        let tpg = e.path().join("tpgt_1");
        let lun = tpg.join("lun/lun_0");
        for l in fs::read_dir(&lun).into_iter().flatten().flatten() {
            if l.path().is_symlink() {
                let _ = fs::remove_file(l.path());
            }
        }
        let _ = fs::remove_dir(&lun);
        let _ = fs::remove_dir(&tpg);
        let _ = fs::remove_dir(e.path());
    }
    let hba = Path::new(TARGET).join("core/user_0");
    for e in fs::read_dir(&hba).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            let _ = fs::remove_dir(e.path());
        }
    }
    let _ = fs::remove_dir(&hba);
}

/// The daemon and its cgroup, torn down on drop (also on panic).
struct Rig {
    daemon: Option<Child>,
    cgroup: Option<String>,
    log: String,
}

impl Rig {
    /// Start `tcmu_file` (in `cgroup` if given) and wait for its disk.
    fn start(backing: &str, cgroup: Option<String>, flags: &[&str], log: &str) -> (Rig, String) {
        let join = cgroup
            .as_ref()
            .map(|c| format!("echo $$ > {c}/cgroup.procs && "))
            .unwrap_or_default();
        let cmd = format!("{join}exec tcmu_file --file {backing} {}", flags.join(" "));
        let child = Command::new("sh")
            .args(["-c", &cmd])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .expect("start tcmu_file");
        let mut rig = Rig {
            daemon: Some(child),
            cgroup,
            log: log.to_owned(),
        };
        let mut dev = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = rig.log();
            if let Some(i) = text.find(" as /dev/") {
                dev = text[i + 4..].lines().next().unwrap_or("").trim().to_owned();
            }
            let exited = rig
                .daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok())
                .flatten();
            if !dev.is_empty() {
                break;
            }
            assert!(
                exited.is_none() && !text.contains("no /dev/sd") && Instant::now() < deadline,
                "tcmu_file without a disk ({exited:?}): {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (rig, dev)
    }

    fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon").id()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, wait for a clean exit; the daemon's log.
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
            Some(st) => {
                force_configfs_cleanup();
                Err(format!("tcmu_file exited with {st}: {log}"))
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                force_configfs_cleanup();
                Err(format!(
                    "tcmu_file did not stop within 60 s of SIGTERM: {log}"
                ))
            }
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if is_mounted(UPPER) {
            let _ = run_for(30, "umount", &[UPPER]);
        }
        if self.daemon.is_some() {
            let _ = self.stop();
        }
        if is_mounted(UPPER) {
            let _ = run_for(10, "umount", &["-l", UPPER]);
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

/// `mib` MiB of `dev` from `offset_mib` on, read with O_DIRECT.
fn dd_read_direct(dev: &str, offset_mib: u64, mib: u64, tag: &str) -> Vec<u8> {
    let back = format!("/tmp/tcmu-{tag}.out");
    must(
        60,
        "dd",
        &[
            &format!("if={dev}"),
            &format!("of={back}"),
            "bs=1M",
            &format!("skip={offset_mib}"),
            &format!("count={mib}"),
            "iflag=direct",
        ],
    );
    let got = fs::read(&back).unwrap();
    let _ = fs::remove_file(&back);
    got
}

/// Write `data` at `offset_mib` of `dev` with O_DIRECT and read it back.
fn dd_roundtrip(dev: &str, data: &[u8], offset_mib: u64, tag: &str) {
    let src = format!("/tmp/tcmu-{tag}.in");
    fs::write(&src, data).unwrap();
    must(
        60,
        "dd",
        &[
            &format!("if={src}"),
            &format!("of={dev}"),
            "bs=1M",
            &format!("seek={offset_mib}"),
            &format!("count={}", data.len() >> 20),
            "oflag=direct",
            "conv=notrunc",
        ],
    );
    let got = dd_read_direct(dev, offset_mib, data.len() as u64 >> 20, tag);
    assert!(
        got == data,
        "{tag}: {dev} read back differs at {offset_mib} MiB"
    );
    let _ = fs::remove_file(&src);
}

#[test]
#[ignore = "kernel truth: needs CAP_SYS_RESOURCE; runs in the VM via `cargo xtask vm-test`"]
fn tcmu_disk_roundtrips_data_and_xfs_and_tears_down_cleanly() {
    use std::io::{Read, Seek, SeekFrom};
    require_vm();
    setup_once();
    let backing = fresh_lower();
    let (mut rig, dev) = Rig::start(&backing, None, &[], "/tmp/tcmu-basic.log");
    let sd = dev.trim_start_matches("/dev/").to_owned();
    let model = fs::read_to_string(format!("/sys/block/{sd}/device/model")).unwrap_or_default();
    assert_eq!(model.trim(), "TCMU-FILE", "{dev}: model");
    let sectors: u64 = fs::read_to_string(format!("/sys/block/{sd}/size"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(sectors * 512, BACKING_MIB << 20, "{dev}: capacity");

    // Raw patterns at the start, the middle and the last 4 MiB; each is in
    // the backing file at the same offset.
    let mut disk = fs::File::open(&backing).unwrap();
    for (i, off) in [0, 100, BACKING_MIB - 4].into_iter().enumerate() {
        let data = pattern(0x7c30 + i as u64, 4 << 20);
        dd_roundtrip(&dev, &data, off, &format!("dd{i}"));
        let mut inback = vec![0u8; data.len()];
        disk.seek(SeekFrom::Start(off << 20)).unwrap();
        disk.read_exact(&mut inback).unwrap();
        assert!(
            inback == data,
            "pattern {i} not in the backing file at {off} MiB"
        );
    }

    // Thin provisioning: a discard becomes UNMAP (a hole in the backing
    // file), a zero-out becomes WRITE SAME of a zero block (a zeroed range).
    // util-linux's blkdiscard (vm-test copies it in; busybox's has no -z).
    use std::os::unix::fs::MetadataExt;
    let allocated = || fs::metadata(&backing).unwrap().blocks() * 512;
    let before = allocated();
    must(
        60,
        "blkdiscard",
        &[
            "-o",
            &(100u64 << 20).to_string(),
            "-l",
            &(4u64 << 20).to_string(),
            &dev,
        ],
    );
    let punched = before.saturating_sub(allocated());
    must(
        60,
        "blkdiscard",
        &["-z", "-o", "0", "-l", &(4u64 << 20).to_string(), &dev],
    );
    for off in [0u64, 100] {
        let mut inback = vec![0xffu8; 4 << 20];
        disk.seek(SeekFrom::Start(off << 20)).unwrap();
        disk.read_exact(&mut inback).unwrap();
        assert!(
            inback.iter().all(|&b| b == 0),
            "backing file not zero at {off} MiB after discard/zero-out"
        );
        assert!(
            dd_read_direct(&dev, off, 4, &format!("zero{off}"))
                .iter()
                .all(|&b| b == 0),
            "{dev} does not read zeros at {off} MiB after discard/zero-out"
        );
    }
    say(&format!(
        "  [basic] blkdiscard of 4 MiB freed {} KiB of the backing file",
        punched >> 10
    ));
    assert!(
        punched >= 4 << 20,
        "a 4 MiB discard freed only {punched} bytes of the backing file"
    );

    // XFS: make, write, remount, verify.
    must(120, "mkfs.xfs", &["-q", "-f", &dev]);
    must(60, "mount", &["-t", "xfs", &dev, UPPER]);
    let data = pattern(0xf11e, 8 << 20);
    let path = format!("{UPPER}/data");
    {
        let mut f = fs::File::create(&path).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    must(60, "umount", &[UPPER]);
    must(60, "mount", &["-t", "xfs", &dev, UPPER]);
    assert!(
        fs::read(&path).unwrap() == data,
        "XFS file differs after remount"
    );
    must(60, "umount", &[UPPER]);

    let log = rig.stop().unwrap_or_else(|e| panic!("{e}"));
    say(&format!(
        "  [basic] daemon: {}",
        log.trim().replace('\n', " | ")
    ));
    assert!(
        log.contains("tearing down"),
        "no teardown in the log: {log}"
    );
    assert!(
        !log.contains("malformed"),
        "the kernel's ring entries were judged malformed: {log}"
    );
    let count = |what: &str| -> u64 {
        log.split(&format!(" {what}"))
            .next()
            .and_then(|h| h.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no '{what}' count in the log: {log}"))
    };
    assert!(count("unmaps") >= 1, "no UNMAP served: {log}");
    assert!(count("write sames") >= 1, "no WRITE SAME served: {log}");
    for op in ["0x41", "0x42", "0x93"] {
        assert!(
            !log.contains(&format!("refused opcode {op}")),
            "{op} refused: {log}"
        );
    }
    assert_eq!(
        configfs_leftovers(),
        Vec::<String>::new(),
        "configfs leftovers"
    );
    assert!(
        !Path::new(&format!("/sys/block/{sd}")).exists(),
        "{dev} still there after teardown"
    );
    drop(rig);
    if is_mounted(LOWER) {
        let _ = run_for(30, "umount", &[LOWER]);
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
    let cgroup = format!("/sys/fs/cgroup/tcmu-{}", mode.tag());
    if !Path::new(&cgroup).exists() {
        fs::create_dir(&cgroup).unwrap_or_else(|e| panic!("mkdir {cgroup}: {e}"));
    }
    write_file(&format!("{cgroup}/memory.max"), MEMORY_MAX);
    let log = format!("/tmp/tcmu-{}.log", mode.tag());
    let (mut rig, dev) = Rig::start(&backing, Some(cgroup.clone()), mode.flags(), &log);
    let pid = rig.pid();
    let in_cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    assert!(
        in_cgroup
            .trim_end()
            .ends_with(&format!("/tcmu-{}", mode.tag())),
        "daemon not in its cgroup: {in_cgroup:?}"
    );
    lap("lower ext4, tcmu_file, tcm_loop disk");
    let mut s = seed::traced_workload(
        mode,
        pid,
        HANDLER,
        &cgroup,
        &seed::Workload {
            dev: &dev,
            upper: UPPER,
            data_mib: DATA_MIB,
            dd_mib: DD_MIB,
            seed: 0x7c35_0000,
        },
        &mut lap,
    );
    let daemon_log = rig.stop().unwrap_or_else(|e| panic!("{e}"));
    drop(rig);
    assert_eq!(
        configfs_leftovers(),
        Vec::<String>::new(),
        "configfs leftovers"
    );
    lap("remount, verify, teardown");
    s.secs = t0.elapsed().as_secs_f64();
    seed::report(mode, &daemon_log, HANDLER, &s);
    s
}

#[test]
#[ignore = "kernel truth: needs CAP_SYS_RESOURCE; runs in the VM via `cargo xtask vm-test`"]
fn seed_scenario_tcmu_handler_never_reclaims_with_fs_or_io() {
    require_vm();
    setup_once();
    seed::run_all_modes(
        TRACE_BUFFER_KB,
        LOWER,
        &format!(
            "brd → ext4 → {BACKING_MIB} MiB sparse file → tcmu_file (cgroup \
         memory.max={MEMORY_MAX}) → target_core_user + tcm_loop /dev/sdX → XFS; mkfs.xfs + \
         {DATA_MIB} MiB verified file + {DD_MIB} MiB dd"
        ),
        "handler",
        HANDLER,
        run_scenario,
    );
}
