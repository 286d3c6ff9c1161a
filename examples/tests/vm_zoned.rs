//! Kernel truth for examples/tcmu_file --zbc (issue 17): the seed's exact
//! stack, zoned.
//!
//! First the disk: the kernel takes it as a host-managed zoned block device
//! (`queue/zoned`, zone count and size, max open zones), `blkzone report`
//! shows what the handler reports and `blkzone reset/open/finish` change
//! it, a write off the write pointer fails, and the zone state the daemon
//! writes at its exit (and loads at its next start) is what `blkzone` saw.
//!
//! Then the 2019 setup: brd → ext4 → 512 MiB sparse backing file →
//! `tcmu_file --zbc` (8 MiB zones, 4 conventional) in a cgroup with
//! `memory.max=32M` → target_core_user + tcm_loop /dev/sdX (host managed)
//! → dm-zoned (formatted by `dmzadm`, the table set up with `dmsetup`) →
//! XFS → fio writing files with verification, a patterned file, then a
//! remount and a verify-only fio pass. The same tracefs measurements as the
//! other seed scenarios, in the three modes: guarded, no FS/IO-capable
//! reclaim; `--unprotected` (tcmu-runner's plain pwrite), FS/IO-capable
//! reclaim.
//!
//! Every external command has a timeout; teardown removes the dm-zoned
//! target, unmounts, then stops the daemon with SIGTERM.

#[path = "../../tests/common/mod.rs"]
mod common;
use reclaim_scope_examples::tcmu::zbc;

use common::seed::{self, Mode, Stats};
use common::tcmu::{configfs_leftovers, Rig, HANDLER};
use common::*;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

const LOWER_DEV: &str = "/dev/ram1";
const LOWER: &str = "/mnt/zoned-lower";
const UPPER: &str = "/mnt/zoned-xfs";
const DM_NAME: &str = "rs-dmz";
const BACKING_MIB: u64 = 512;
const ZONE_MIB: u64 = 8;
const CONVENTIONAL: u32 = 4;
const MAX_OPEN: u32 = 8;
/// Sequential zones dm-zoned keeps for its reclaim (dmzadm --seq).
const RESERVED_SEQ: u32 = 4;
const MEMORY_MAX: &str = "32M";
const DATA_MIB: usize = 16;
/// fio: jobs × size each, written and verified.
const FIO_JOBS: u32 = 2;
const FIO_MIB: u32 = 16;
const TRACE_BUFFER_KB: u64 = 16384;
const SECTORS_PER_ZONE: u64 = ZONE_MIB << 11;
const ZONES: u64 = BACKING_MIB / ZONE_MIB;

fn zbc_flags() -> Vec<String> {
    [
        "--zbc".to_owned(),
        "--zone-size".to_owned(),
        format!("{ZONE_MIB}M"),
        "--conventional-zones".to_owned(),
        CONVENTIONAL.to_string(),
        "--max-open-zones".to_owned(),
        MAX_OPEN.to_string(),
    ]
    .to_vec()
}

fn geometry() -> zbc::Geometry {
    zbc::Geometry::new(
        BACKING_MIB << 20,
        512,
        ZONE_MIB << 20,
        CONVENTIONAL,
        MAX_OPEN,
    )
    .unwrap()
}

/// The host tools these tests drive; missing ones fail with the flags to add.
fn require_tools(tools: &[&str]) {
    let path = std::env::var("PATH").unwrap_or_default();
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !path.split(':').any(|d| Path::new(d).join(t).is_file()))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the VM: {missing:?}; run vm-test with {} (dmzadm: fetched from trixie's \
         dm-zoned-tools by xtask)",
        missing
            .iter()
            .map(|t| format!("--host-bin {t}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn setup_once() {
    tcmu::setup();
    must(30, "modprobe", &["dm_mod"]);
    must(30, "modprobe", &["dm_zoned"]);
    for d in [LOWER, UPPER] {
        fs::create_dir_all(d).unwrap();
    }
}

/// A fresh ext4 on the ramdisk with a sparse backing file; its path.
fn fresh_lower() -> String {
    fresh_ext4(LOWER_DEV, LOWER);
    let backing = format!("{LOWER}/zoned.img");
    fs::File::create(&backing)
        .and_then(|f| f.set_len(BACKING_MIB << 20))
        .unwrap_or_else(|e| panic!("create {backing}: {e}"));
    must(60, "sync", &[]);
    write_file("/proc/sys/vm/drop_caches", "3");
    backing
}

fn start(backing: &str, cgroup: Option<String>, mode_flags: &[&str], log: &str) -> (Rig, String) {
    let zf = zbc_flags();
    let mut flags: Vec<&str> = zf.iter().map(String::as_str).collect();
    flags.extend_from_slice(mode_flags);
    Rig::start(UPPER, backing, cgroup, &flags, log)
}

fn sysfs(sd: &str, attr: &str) -> String {
    fs::read_to_string(format!("/sys/block/{sd}/{attr}"))
        .unwrap_or_else(|e| panic!("/sys/block/{sd}/{attr}: {e}"))
        .trim()
        .to_owned()
}

/// One line of `blkzone report`: (start sector, length, write pointer
/// sector, condition, type), the write pointer made absolute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BlkZone {
    start: u64,
    len: u64,
    wp: u64,
    cond: u8,
    ztype: u8,
}

/// util-linux 2.38's format: `  start: 0x000010000, len 0x004000, cap
/// 0x004000, wptr 0x000020 reset:0 non-seq:0, zcond: 2(oi) [type:
/// 2(SEQ_WRITE_REQUIRED)]` (wptr relative to the zone's start).
fn parse_blkzone(out: &str) -> Vec<BlkZone> {
    let hex = |l: &str, key: &str| -> u64 {
        let i = l.find(key).unwrap_or_else(|| panic!("no {key:?} in {l:?}")) + key.len();
        let v: String = l[i..]
            .trim_start()
            .trim_start_matches("0x")
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect();
        u64::from_str_radix(&v, 16).unwrap_or_else(|_| panic!("{key} in {l:?}"))
    };
    let num = |l: &str, key: &str| -> u8 {
        let i = l.find(key).unwrap_or_else(|| panic!("no {key:?} in {l:?}")) + key.len();
        let v: String = l[i..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        v.parse().unwrap_or_else(|_| panic!("{key} in {l:?}"))
    };
    out.lines()
        .filter(|l| l.contains("start:"))
        .map(|l| {
            let start = hex(l, "start:");
            BlkZone {
                start,
                len: hex(l, "len"),
                wp: start + hex(l, "wptr"),
                cond: num(l, "zcond:"),
                ztype: num(l, "[type:"),
            }
        })
        .collect()
}

fn blkzone_report(dev: &str) -> Vec<BlkZone> {
    let z = parse_blkzone(&must(60, "blkzone", &["report", dev]));
    assert_eq!(z.len() as u64, ZONES, "blkzone report: {z:?}");
    z
}

/// What a power cycle leaves of `z` (opened zones load CLOSED, or EMPTY
/// at their start), in the handler's terms: (condition code, write pointer
/// LBA; 512-byte blocks, so LBAs are sectors).
fn after_power_cycle(z: &BlkZone) -> (u8, u64) {
    match z.cond {
        2 | 3 if z.wp == z.start => (1, z.wp),
        2 | 3 => (4, z.wp),
        0 => (0, u64::MAX),
        c => (c, z.wp),
    }
}

/// The zone state file as the daemon left it.
fn saved_zones(backing: &str) -> Vec<(u8, u64)> {
    let z = zbc::Zones::open(
        Path::new(&format!("{backing}.zones")),
        geometry(),
        true,
        false,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    z.snapshot().iter().map(|z| (z.cond as u8, z.wp)).collect()
}

fn dd_direct(dev: &str, seek_4k: u64, count: u64) -> Result<String, String> {
    run_for(
        60,
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={dev}"),
            "bs=4k",
            &format!("seek={seek_4k}"),
            &format!("count={count}"),
            "oflag=direct",
        ],
    )
}

common::vm_test! {
    fn zoned_disk_is_host_managed_and_blkzone_agrees_with_the_handler() {
        require_vm();
        require_tools(&["blkzone", "mkfs.ext4"]);
        setup_once();
        let backing = fresh_lower();
        let (mut rig, dev) = start(&backing, None, &[], "/tmp/zoned-basic.log");
        let sd = dev.trim_start_matches("/dev/").to_owned();
        assert_eq!(sysfs(&sd, "queue/zoned"), "host-managed", "{dev}");
        assert_eq!(sysfs(&sd, "queue/nr_zones"), ZONES.to_string());
        assert_eq!(
            sysfs(&sd, "queue/chunk_sectors"),
            SECTORS_PER_ZONE.to_string()
        );
        assert_eq!(sysfs(&sd, "queue/max_open_zones"), MAX_OPEN.to_string());
        assert_eq!(sysfs(&sd, "size"), (BACKING_MIB << 11).to_string());

        let z = blkzone_report(&dev);
        for (i, zone) in z.iter().enumerate() {
            let conv = (i as u32) < CONVENTIONAL;
            assert_eq!(
                (zone.start, zone.len, zone.ztype, zone.cond),
                (
                    i as u64 * SECTORS_PER_ZONE,
                    SECTORS_PER_ZONE,
                    if conv { 1 } else { 2 },
                    if conv { 0 } else { 1 }
                ),
                "zone {i}: {zone:?}"
            );
        }

        // Writes: at a sequential zone's write pointer (zone 4, then on), off
        // it (zone 5's middle: the handler answers UNALIGNED WRITE COMMAND, the
        // kernel fails the write), anywhere in a conventional zone.
        let zone_4k = SECTORS_PER_ZONE / 8;
        dd_direct(&dev, 4 * zone_4k, 4).unwrap_or_else(|e| panic!("write at the wp: {e}"));
        dd_direct(&dev, 4 * zone_4k + 4, 2).unwrap_or_else(|e| panic!("write at the wp: {e}"));
        let off = dd_direct(&dev, 5 * zone_4k + 8, 1);
        assert!(
            off.is_err(),
            "a write off the write pointer succeeded: {off:?}"
        );
        dd_direct(&dev, zone_4k + 100, 3).unwrap_or_else(|e| panic!("conventional: {e}"));
        let z = blkzone_report(&dev);
        assert_eq!(
            (z[4].cond, z[4].wp),
            (2, z[4].start + 48),
            "zone 4 implicitly open"
        );
        assert_eq!((z[5].cond, z[5].wp), (1, z[5].start), "zone 5 untouched");

        // Zone management through the kernel: open, finish, reset.
        let at = |zone: u64| (zone * SECTORS_PER_ZONE).to_string();
        must(30, "blkzone", &["open", "-o", &at(6), "-c", "1", &dev]);
        must(30, "blkzone", &["finish", "-o", &at(7), "-c", "1", &dev]);
        dd_direct(&dev, 8 * zone_4k, 1).unwrap();
        must(30, "blkzone", &["finish", "-o", &at(8), "-c", "1", &dev]);
        dd_direct(&dev, 9 * zone_4k, 2).unwrap();
        must(30, "blkzone", &["close", "-o", &at(9), "-c", "1", &dev]);
        dd_direct(&dev, 10 * zone_4k, 1).unwrap();
        must(30, "blkzone", &["reset", "-o", &at(10), "-c", "1", &dev]);
        let z = blkzone_report(&dev);
        let got: Vec<(u8, u64)> = z[4..11].iter().map(|z| (z.cond, z.wp - z.start)).collect();
        assert_eq!(
            got,
            [
                (2, 48),
                (1, 0),
                (3, 0),
                (14, SECTORS_PER_ZONE),
                (14, SECTORS_PER_ZONE),
                (4, 16),
                (1, 0)
            ],
            "zones 4..10 after open, finish, close, reset"
        );
        // The kernel's view, before the daemon stops.
        let seen = z.clone();

        // SIGTERM: the daemon writes its zone state; it is what blkzone saw
        // (opened zones closed, as a restart loads them).
        let log = rig.stop().unwrap_or_else(|e| panic!("{e}"));
        drop(rig);
        say(&format!(
            "  [zoned] daemon: {}",
            log.trim().replace('\n', " | ")
        ));
        assert!(log.contains("zones at exit"), "{log}");
        let want: Vec<(u8, u64)> = seen.iter().map(after_power_cycle).collect();
        assert_eq!(saved_zones(&backing), want, "zone-state file vs blkzone");

        // Restarted on the same backing file: the kernel sees the same zones.
        let (mut rig, dev) = start(&backing, None, &[], "/tmp/zoned-restart.log");
        let again: Vec<(u8, u64)> = blkzone_report(&dev)
            .iter()
            .map(|z| match z.cond {
                0 => (0, u64::MAX),
                c => (c, z.wp),
            })
            .collect();
        assert_eq!(again, want, "blkzone after a restart");
        // The data written at zone 4's write pointer survived the restart.
        let back = must(
            30,
            "dd",
            &[
                &format!("if={dev}"),
                "of=/dev/null",
                "bs=4k",
                &format!("skip={}", 4 * zone_4k),
                "count=6",
                "iflag=direct",
            ],
        );
        assert!(!back.contains("error"), "{back}");
        // blkzone reset of everything: every sequential zone EMPTY.
        must(60, "blkzone", &["reset", &dev]);
        let z = blkzone_report(&dev);
        assert!(
            z[CONVENTIONAL as usize..]
                .iter()
                .all(|z| z.cond == 1 && z.wp == z.start),
            "after blkzone reset: {z:?}"
        );
        rig.stop().unwrap_or_else(|e| panic!("{e}"));
        drop(rig);
        assert_eq!(
            configfs_leftovers(),
            Vec::<String>::new(),
            "configfs leftovers"
        );
        if is_mounted(LOWER) {
            let _ = run_for(30, "umount", &[LOWER]);
        }
    }
}

/// The dm-zoned target over the zoned disk; removed on drop (before the
/// rig stops the daemon: declare it after the rig).
struct DmZoned {
    dev: String,
}

impl DmZoned {
    /// `dmzadm --format` (its metadata in the conventional zones), then the
    /// table `0 <sectors> zoned <dev>` (dm-zoned sets the length to the
    /// chunks it maps).
    fn create(disk: &str) -> DmZoned {
        let seq = format!("--seq={RESERVED_SEQ}");
        let label = format!("--label={DM_NAME}");
        let fmt = run_for(300, "dmzadm", &["--format", disk, &seq, "--force", &label]);
        let fmt = fmt.unwrap_or_else(|e| panic!("dmzadm --format {disk}: {e}"));
        say(&format!(
            "  [dm-zoned] dmzadm: {}",
            fmt.trim().lines().last().unwrap_or("")
        ));
        let sectors = BACKING_MIB << 11;
        let table = format!("0 {sectors} zoned {disk}");
        must(
            60,
            "dmsetup",
            &["create", "--noudevsync", DM_NAME, "--table", &table],
        );
        let _ = run_for(10, "dmsetup", &["mknodes", DM_NAME]);
        let dev = format!("/dev/mapper/{DM_NAME}");
        assert!(
            Path::new(&dev).exists(),
            "{dev} missing after dmsetup create"
        );
        DmZoned { dev }
    }
}

impl Drop for DmZoned {
    fn drop(&mut self) {
        if is_mounted(UPPER) {
            let _ = run_for(30, "umount", &[UPPER]);
        }
        let _ = run_for(60, "dmsetup", &["remove", "--noudevsync", DM_NAME]);
    }
}

/// fio: `FIO_JOBS` files of `FIO_MIB` MiB written sequentially in 64 KiB
/// blocks with CRC32C headers and read back verified (`verify_only`: the
/// read-back pass alone, after the remount).
fn fio(dir: &str, verify_only: bool) -> String {
    let mut args = vec![
        "--name=zoned".to_owned(),
        format!("--directory={dir}"),
        "--rw=write".to_owned(),
        "--bs=64k".to_owned(),
        format!("--size={FIO_MIB}m"),
        format!("--numjobs={FIO_JOBS}"),
        "--ioengine=psync".to_owned(),
        "--verify=crc32c".to_owned(),
        "--verify_fatal=1".to_owned(),
        "--group_reporting".to_owned(),
    ];
    if verify_only {
        args.push("--verify_only".to_owned());
    } else {
        args.extend(["--do_verify=1".to_owned(), "--end_fsync=1".to_owned()]);
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run_for(300, "fio", &a).unwrap_or_else(|e| panic!("fio {a:?}: {e}"))
}

/// The traced part of one run, as `seed::traced_workload` does it, with
/// fio as the workload: the handler's `/proc` flags sampled, reclaim and
/// page allocations of every daemon thread traced while mkfs.xfs, the
/// patterned file and fio's verified writes go to the XFS on dm-zoned;
/// then a remount, the file compared and fio's verify-only pass.
fn traced_fio(mode: Mode, pid: u32, cgroup: &str, dev: &str, lap: &mut dyn FnMut(&str)) -> Stats {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let traced = threads(pid);
    let tids: Vec<i32> = traced.iter().map(|(t, _)| *t).collect();
    let workers: Vec<i32> = traced
        .iter()
        .filter(|(_, c)| c == HANDLER)
        .map(|(t, _)| *t)
        .collect();
    assert!(!workers.is_empty(), "no {HANDLER} thread: {traced:?}");
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

    must(180, "mkfs.xfs", &["-q", "-f", dev]);
    must(60, "mount", &["-t", "xfs", dev, UPPER]);
    lap("mkfs.xfs + mount on dm-zoned (traced)");
    let data = pattern(0x20e_0000 + mode as u64, DATA_MIB << 20);
    let data_path = format!("{UPPER}/data");
    {
        let mut f = fs::File::create(&data_path).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    let out = fio(UPPER, false);
    must(60, "sync", &[]);
    lap(&format!(
        "{DATA_MIB} MiB file + fio {FIO_JOBS}×{FIO_MIB} MiB written and verified (traced)"
    ));
    say(&format!(
        "  [{}] fio: {}",
        mode.tag(),
        out.lines()
            .filter(|l| l.contains("WRITE:") || l.contains("READ:") || l.contains("err="))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" | ")
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

    must(60, "umount", &[UPPER]);
    must(60, "mount", &["-t", "xfs", dev, UPPER]);
    let back = fs::read(&data_path).unwrap_or_else(|e| panic!("read back {data_path}: {e}"));
    assert!(
        back == data,
        "{}: the file differs after remount",
        mode.label()
    );
    let v = fio(UPPER, true);
    assert!(
        !v.contains("verify: bad"),
        "{}: fio verify after remount: {v}",
        mode.label()
    );
    must(60, "umount", &[UPPER]);
    lap("remount, file compared, fio verify-only");

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
    let cgroup = format!("/sys/fs/cgroup/zoned-{}", mode.tag());
    if !Path::new(&cgroup).exists() {
        fs::create_dir(&cgroup).unwrap_or_else(|e| panic!("mkdir {cgroup}: {e}"));
    }
    write_file(&format!("{cgroup}/memory.max"), MEMORY_MAX);
    let log = format!("/tmp/zoned-{}.log", mode.tag());
    let (mut rig, disk) = start(&backing, Some(cgroup.clone()), mode.flags(), &log);
    let pid = rig.pid();
    let sd = disk.trim_start_matches("/dev/").to_owned();
    assert_eq!(sysfs(&sd, "queue/zoned"), "host-managed");
    let dm = DmZoned::create(&disk);
    lap("lower ext4, tcmu_file --zbc, tcm_loop disk, dm-zoned");
    let mut s = traced_fio(mode, pid, &cgroup, &dm.dev, &mut lap);
    drop(dm);
    let daemon_log = rig.stop().unwrap_or_else(|e| panic!("{e}"));
    drop(rig);
    assert_eq!(
        configfs_leftovers(),
        Vec::<String>::new(),
        "configfs leftovers"
    );
    assert!(
        !daemon_log.contains("malformed"),
        "ring entries judged malformed: {daemon_log}"
    );
    lap("dm-zoned removed, teardown");
    s.secs = t0.elapsed().as_secs_f64();
    seed::report(mode, &daemon_log, HANDLER, &s);
    s
}

common::vm_test! {
    fn seed_scenario_zoned_dm_zoned_xfs_fio_handler_never_reclaims_with_fs_or_io() {
        require_vm();
        require_tools(&[
            "blkzone",
            "dmzadm",
            "dmsetup",
            "mkfs.xfs",
            "mkfs.ext4",
            "fio",
        ]);
        setup_once();
        seed::run_all_modes(
            TRACE_BUFFER_KB,
            LOWER,
            &format!(
                "brd → ext4 → {BACKING_MIB} MiB sparse file → tcmu_file --zbc ({ZONE_MIB} MiB zones, \
                 {CONVENTIONAL} conventional, cgroup memory.max={MEMORY_MAX}) → target_core_user + \
                 tcm_loop /dev/sdX (host managed) → dm-zoned → XFS; mkfs.xfs + {DATA_MIB} MiB \
                 verified file + fio {FIO_JOBS}×{FIO_MIB} MiB crc32c-verified, verified again after \
                 remount"
            ),
            "handler",
            HANDLER,
            run_scenario,
        );
    }
}

#[test]
fn blkzone_report_lines_parse() {
    let out = "  start: 0x000000000, len 0x004000, cap 0x004000, wptr 0x000000 reset:0 non-seq:0, \
               zcond: 0(nw) [type: 1(CONVENTIONAL)]\n  start: 0x000010000, len 0x004000, cap \
               0x004000, wptr 0x000020 reset:0 non-seq:0, zcond: 2(oi) [type: \
               2(SEQ_WRITE_REQUIRED)]\n  start: 0x00001c000, len 0x004000, cap 0x004000, wptr \
               0x004000 reset:0 non-seq:0, zcond:14(fu) [type: 2(SEQ_WRITE_REQUIRED)]\n";
    let z = parse_blkzone(out);
    assert_eq!(
        z,
        [
            BlkZone {
                start: 0,
                len: 0x4000,
                wp: 0,
                cond: 0,
                ztype: 1
            },
            BlkZone {
                start: 0x10000,
                len: 0x4000,
                wp: 0x10020,
                cond: 2,
                ztype: 2
            },
            BlkZone {
                start: 0x1c000,
                len: 0x4000,
                wp: 0x20000,
                cond: 14,
                ztype: 2
            },
        ]
    );
    assert_eq!(after_power_cycle(&z[1]), (4, 0x10020));
    assert_eq!(after_power_cycle(&z[0]), (0, u64::MAX));
}
