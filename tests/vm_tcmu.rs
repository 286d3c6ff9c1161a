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
use common::tcmu::{configfs_leftovers, Rig, HANDLER, TARGET};
use common::*;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
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

fn setup_once() {
    tcmu::setup();
    for d in [LOWER, UPPER] {
        fs::create_dir_all(d).unwrap();
    }
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

vm_test! {
    fn tcmu_disk_roundtrips_data_and_xfs_and_tears_down_cleanly() {
        use std::io::{Read, Seek, SeekFrom};
        require_vm();
        setup_once();
        let backing = fresh_lower();
        let (mut rig, dev) = Rig::start(UPPER, &backing, None, &[], "/tmp/tcmu-basic.log");
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
    let (mut rig, dev) = Rig::start(UPPER, &backing, Some(cgroup.clone()), mode.flags(), &log);
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

vm_test! {
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
}

/// The host tools these tests drive, copied in by vm-test's `--host-bin`;
/// missing ones fail the test with the flags to add.
fn require_tools(tools: &[&str]) {
    let path = std::env::var("PATH").unwrap_or_default();
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !path.split(':').any(|d| Path::new(d).join(t).is_file()))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the VM: {missing:?}; run vm-test with {}",
        missing
            .iter()
            .map(|t| format!("--host-bin {t}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// sg3-utils programs the tests run.
const SG3: &[&str] = &[
    "sg_inq",
    "sg_vpd",
    "sg_modes",
    "sg_opcodes",
    "sg_readcap",
    "sg_write_same",
    "sg_unmap",
    "sg_sync",
    "sg_raw",
    "sg_verify",
    "sg_requests",
    "sg_turs",
    "sg_luns",
    "sg_get_lba_status",
];

/// Output (stdout and stderr) of a command, whether it succeeded or not.
fn out(secs: u64, prog: &str, args: &[&str]) -> String {
    run_for(secs, prog, args).unwrap_or_else(|e| e)
}

/// `out`, asserting it contains every one of `want`.
#[track_caller]
fn expect(prog: &str, args: &[&str], want: &[&str]) -> String {
    let text = out(60, prog, args);
    for w in want {
        assert!(
            text.contains(w),
            "`{prog} {}`: no {w:?} in:\n{text}",
            args.join(" ")
        );
    }
    text
}

/// A loop device over a new file of `mib` MiB in /tmp (tmpfs), detached
/// on drop.
struct Loop {
    dev: String,
    file: String,
}

impl Loop {
    fn new(tag: &str, mib: u64) -> Loop {
        let file = format!("/tmp/tcmu-{tag}.img");
        fs::File::create(&file)
            .and_then(|f| f.set_len(mib << 20))
            .unwrap();
        let dev = must(30, "losetup", &["-f", "--show", &file])
            .trim()
            .to_owned();
        Loop { dev, file }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = run_for(30, "losetup", &["-d", &self.dev]);
        let _ = fs::remove_file(&self.file);
    }
}

fn read_at(path: &str, off: u64, len: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact(&mut b).unwrap();
    b
}

/// A 10-byte READ/WRITE CDB for sg_raw.
fn rw10(op: u8, lba: u32, n: u16) -> Vec<String> {
    let mut c = vec![op, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&n.to_be_bytes());
    c.iter().map(|b| format!("{b:02x}")).collect()
}

/// sg_raw with a data-out of `data_file` (or data-in of `read` bytes).
fn sg_raw(dev: &str, cdb: &[String], data_file: Option<&str>, read: usize) -> String {
    let mut args: Vec<String> = Vec::new();
    if let Some(f) = data_file {
        let n = fs::metadata(f).unwrap().len();
        args.extend(["-s".into(), n.to_string(), "-i".into(), f.to_owned()]);
    }
    if read > 0 {
        args.extend(["-r".into(), read.to_string()]);
    }
    args.push(dev.to_owned());
    args.extend(cdb.iter().cloned());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    out(60, "sg_raw", &a)
}

fn hexes(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

vm_test! {
    fn tcmu_sg3_utils_see_an_sbc4_spc5_disk() {
        use std::os::unix::fs::MetadataExt;
        require_vm();
        require_tools(SG3);
        setup_once();
        let backing = fresh_lower();
        let (mut rig, dev) = Rig::start(
            UPPER,
            &backing,
            None,
            &["--name", "rs_sg3"],
            "/tmp/tcmu-sg3.log",
        );
        expect(
            "sg_inq",
            &["-d", &dev],
            &[
                "version=0x07  [SPC-5]",
                "CmdQue=1",
                "length=96 (0x60)",
                "Protect=0",
                "SAM-6 (no version claimed)",
                "SPC-5 (no version claimed)",
                "SBC-4 (no version claimed)",
            ],
        );
        expect(
            "sg_vpd",
            &["-p", "sv", &dev],
            &["[sn]", "[di]", "[bl]", "[bdc]", "[lbpv]"],
        );
        expect(
            "sg_vpd",
            &["-p", "di", &dev],
            &["designator type: NAA", "T10 vendor identification"],
        );
        expect(
            "sg_vpd",
            &["-p", "bl", &dev],
            &[
                "Write same non-zero (WSNZ): 1",
                "Maximum transfer length: 1024 blocks",
                "Maximum unmap LBA count: 1048576",
                "Maximum unmap block descriptor count: 64",
                "Maximum write same length: 0x100000 blocks",
            ],
        );
        expect(
            "sg_vpd",
            &["-p", "bdc", &dev],
            &[
                "rotation rate is not reported",
                "ZONED=0",
                "FUAB=1",
                "VBULS=1",
            ],
        );
        expect(
            "sg_vpd",
            &["-p", "lbpv", &dev],
            &[
                "(LBPU): 1",
                "(LBPWS): 1",
                "(LBPWS10): 1",
                "(LBPRZ): 1",
                "(ANC_SUP): 0",
                "Provisioning type: 2 (thin provisioned)",
            ],
        );
        // Response lengths through the kernel: exactly what the data has
        // (rsp.read_len), the rest of the 255-byte allocation is residual.
        for (cdb, n) in [
            ("12 00 00 00 ff 00", 96),
            ("12 01 00 00 ff 00", 10),
            ("12 01 b0 00 ff 00", 64),
            ("12 01 b1 00 ff 00", 64),
            ("12 01 b2 00 ff 00", 8),
            ("1a 00 3f 00 ff 00", 44),
        ] {
            let text = sg_raw(&dev, &hexes(cdb), None, 255);
            assert!(
                text.contains(&format!("Received {n} bytes of data")),
                "sg_raw {cdb}: {text}"
            );
        }
        expect(
            "sg_modes",
            &["-a", &dev],
            &[
                "WP=0, DpoFua=1",
                ">> Caching, page_control: current",
                " 00     08 12 04",
                ">> Control, page_control: current",
                " 00     0a 0a 02",
            ],
        );
        expect(
            "sg_modes",
            &["-c", "1", "-p", "8", &dev],
            &["Caching, page_control: changeable", " 00     08 12 00"],
        );
        expect(
            "sg_modes",
            &["-6", "-p", "0x3f,0xff", &dev],
            &["MODE SENSE(6)", ">> Caching", ">> Control"],
        );
        let saved = sg_raw(&dev, &hexes("1a 00 c8 00 ff 00"), None, 255);
        assert!(
            saved.contains("Saving parameters not supported"),
            "MODE SENSE saved values: {saved}"
        );
        let all = expect(
            "sg_opcodes",
            &["-c", &dev],
            &[
                "Report supported operation codes",
                "Read capacity(16)",
                "Write and verify(16)",
                "Verify(10)",
                "Pre-fetch(16)",
                "Read(12)",
                "Write(12)",
                "Unmap",
                "Write same(16)",
            ],
        );
        say(&format!(
            "  [sg3] sg_opcodes lists {} commands",
            all.lines()
                .filter(|l| l
                    .split_whitespace()
                    .next()
                    .is_some_and(|w| w.len() >= 2 && w[..2].chars().all(|c| c.is_ascii_hexdigit())))
                .count()
        ));
        expect(
            "sg_opcodes",
            &["-o", "0x28", &dev],
            &[
                "Command is supported [conforming to SCSI standard]",
                "Usage data: 28 1a ff ff ff ff 3f ff ff 00",
            ],
        );
        expect(
            "sg_opcodes",
            &["-o", "0x9e,0x10", &dev],
            &["Usage data: 9e 10 00 00 00 00 00 00 00 00 ff ff ff ff 00 00"],
        );
        expect(
            "sg_opcodes",
            &["-o", "0x04", &dev],
            &["Command is NOT supported"],
        );
        expect(
            "sg_readcap",
            &["-l", &dev],
            &[
                "lbpme=1, lbprz=1",
                "Logical block length=512 bytes",
                &format!("Number of logical blocks={}", (BACKING_MIB << 20) / 512),
            ],
        );
        // WRITE SAME of a pattern block, of zeros with UNMAP; UNMAP; each seen
        // in the backing file.
        let blk: Vec<u8> = pattern(0x5a3e, 512);
        fs::write("/tmp/tcmu-blk", &blk).unwrap();
        let zeros = "/tmp/tcmu-zero";
        fs::write(zeros, vec![0u8; 512]).unwrap();
        must(
            60,
            "sg_write_same",
            &[
                "--16",
                "--lba=1000",
                "--num=16",
                "-i",
                "/tmp/tcmu-blk",
                &dev,
            ],
        );
        let got = read_at(&backing, 1000 * 512, 16 * 512);
        assert!(
            got.chunks(512).all(|c| c == &blk[..]),
            "WRITE SAME(16) not in the backing file"
        );
        let allocated = || fs::metadata(&backing).unwrap().blocks() * 512;
        let filled = pattern(0x7e57, 2 << 20);
        dd_roundtrip(&dev, &filled, 2, "ws-fill");
        dd_roundtrip(&dev, &filled, 4, "unmap-fill");
        let before = allocated();
        must(
            60,
            "sg_write_same",
            &[
                "--10",
                "--unmap",
                "--lba=4096",
                "--num=4096",
                "-i",
                zeros,
                &dev,
            ],
        );
        must(
            60,
            "sg_unmap",
            &["--force", "--lba=8192", "--num=4096", &dev],
        );
        let freed = before.saturating_sub(allocated());
        say(&format!(
            "  [sg3] WRITE SAME with UNMAP and UNMAP of 2 MiB each freed {} KiB",
            freed >> 10
        ));
        assert!(freed >= 4 << 20, "only {freed} bytes freed");
        assert!(read_at(&backing, 2 << 20, 4 << 20).iter().all(|&b| b == 0));
        // GET LBA STATUS: the unmapped range is deallocated, the pattern mapped.
        let st = out(60, "sg_get_lba_status", &["--lba=8192", &dev]).to_lowercase();
        assert!(
            st.contains("dealloc"),
            "GET LBA STATUS of an unmapped range: {st}"
        );
        let st = out(60, "sg_get_lba_status", &["--lba=1000", &dev]).to_lowercase();
        assert!(
            st.contains("mapped") && !st.contains("dealloc"),
            "GET LBA STATUS of data: {st}"
        );
        must(60, "sg_sync", &[&dev]);
        must(60, "sg_sync", &["--16", "--lba=5", "--count=10", &dev]);
        must(60, "sg_verify", &["--lba=0", "--count=4096", &dev]);
        // VERIFY with BYTCHK 1: equal, then a miscompare (exit status 14).
        fs::write("/tmp/tcmu-16blk", blk.repeat(16)).unwrap();
        must(
            60,
            "sg_verify",
            &[
                "--lba=1000",
                "--count=16",
                "--ndo=8192",
                "--in=/tmp/tcmu-16blk",
                &dev,
            ],
        );
        let mis = run_for(
            60,
            "sg_verify",
            &[
                "--lba=999",
                "--count=16",
                "--ndo=8192",
                "--in=/tmp/tcmu-16blk",
                &dev,
            ],
        );
        assert!(
            mis.as_ref().is_err_and(
                |e| e.contains("exit status: 14") || e.to_lowercase().contains("miscompare")
            ),
            "VERIFY of other data: {mis:?}"
        );
        let vrp = out(
            60,
            "sg_verify",
            &["--vrprotect=1", "--lba=0", "--count=1", &dev],
        );
        assert!(
            vrp.contains("Illegal request") || vrp.contains("Illegal Request"),
            "VRPROTECT 1: {vrp}"
        );
        expect(
            "sg_requests",
            &[&dev],
            &["Fixed format, current; Sense key: No Sense"],
        );
        expect(
            "sg_requests",
            &["-d", &dev],
            &["Descriptor format, current; Sense key: No Sense"],
        );
        must(60, "sg_turs", &[&dev]);
        expect("sg_luns", &[&dev], &["0000000000000000"]);
        // Refusals with their sense.
        for (what, cdb, want) in [
            (
                "RDPROTECT",
                "28 20 00 00 00 00 00 00 01 00",
                "Error in Command: byte 1 bit 7",
            ),
            (
                "past the end",
                &*rw10(0x28, (BACKING_MIB << 11) as u32, 1).join(" "),
                "Logical block address out of range",
            ),
            (
                "FORMAT UNIT",
                "04 00 00 00 00 00",
                "Invalid command operation code",
            ),
            (
                "NACA",
                "00 00 00 00 00 04",
                "Error in Command: byte 5 bit 2",
            ),
        ] {
            let text = sg_raw(&dev, &hexes(cdb), None, 512);
            assert!(
                text.contains("Illegal Request") && text.contains(want),
                "{what}: {text}"
            );
        }
        let log = rig.stop().unwrap_or_else(|e| panic!("{e}"));
        say(&format!(
            "  [sg3] daemon: {}",
            log.lines().last().unwrap_or("")
        ));
        assert!(!log.contains("malformed"), "{log}");
        assert_eq!(
            configfs_leftovers(),
            Vec::<String>::new(),
            "configfs leftovers"
        );
    }
}

/// The sense of a WRITE(10) of one block at `lba` (sg_raw's decoding).
fn write_sense(dev: &str, lba: u32, blk: &str) -> String {
    sg_raw(dev, &rw10(0x2a, lba, 1), Some(blk), 0)
}

vm_test! {
    fn tcmu_backing_store_errnos_become_sense_data() {
        require_vm();
        require_tools(&["sg_raw", "losetup", "dmsetup", "mkfs.ext4"]);
        setup_once();
        must(30, "modprobe", &["dm_mod"]); // vm-test --modules dm_mod
        let blk = "/tmp/tcmu-errblk";
        fs::write(blk, pattern(0xe220, 512)).unwrap();

        // ENOSPC: a 32 MiB sparse backing file on an 8 MiB tmpfs.
        let full = "/mnt/tcmu-full";
        fs::create_dir_all(full).unwrap();
        must(10, "mount", &["-t", "tmpfs", "-o", "size=8M", "none", full]);
        let backing = format!("{full}/disk.img");
        let (mut rig, dev) = Rig::start(
            UPPER,
            &backing,
            None,
            &["--name", "rs_enospc", "--size", "32M"],
            "/tmp/tcmu-enospc.log",
        );
        let dd = run_for(
            60,
            "dd",
            &[
                "if=/dev/urandom",
                &format!("of={dev}"),
                "bs=1M",
                "count=16",
                "oflag=direct",
            ],
        );
        say(&format!(
            "  [errno] dd of 16 MiB onto the 8 MiB tmpfs: {}",
            dd.as_ref().map_or_else(
                |e| e
                    .lines()
                    .find(|l| l.contains("dd:"))
                    .unwrap_or(e)
                    .to_owned(),
                |_| "no error".into()
            )
        ));
        assert!(dd.is_err(), "16 MiB fit on an 8 MiB tmpfs");
        let s = write_sense(&dev, 20 << 11, blk);
        assert!(
            s.contains("Data Protect") && s.contains("Space allocation failed write protect"),
            "ENOSPC: {s}"
        );
        let log = rig.stop().unwrap_or_else(|e| panic!("{e}"));
        assert!(log.contains("No space left on device"), "{log}");
        drop(rig);
        must(10, "umount", &[full]);

        // EROFS: ext4 (errors=remount-ro) on a loop device; an ext4 error makes
        // it read-only under the open backing file. nodelalloc: every write
        // starts a journal handle, which then answers EROFS (with delayed
        // allocation a write only fills the page cache and fails at writeback).
        let lo = Loop::new("erofs", 64);
        must(60, "mkfs.ext4", &["-q", "-F", &lo.dev]);
        let mnt = "/mnt/tcmu-erofs";
        fs::create_dir_all(mnt).unwrap();
        must(
            10,
            "mount",
            &[
                "-t",
                "ext4",
                "-o",
                "errors=remount-ro,nodelalloc",
                &lo.dev,
                mnt,
            ],
        );
        let backing = format!("{mnt}/disk.img");
        let (mut rig, dev) = Rig::start(
            UPPER,
            &backing,
            None,
            &["--name", "rs_erofs", "--size", "16M"],
            "/tmp/tcmu-erofs.log",
        );
        let ok = write_sense(&dev, 8, blk);
        assert!(
            !ok.contains("Check Condition"),
            "write before the error: {ok}"
        );
        let name = lo.dev.trim_start_matches("/dev/");
        write_file(
            &format!("/sys/fs/ext4/{name}/trigger_fs_error"),
            "tcmu test",
        );
        let s = write_sense(&dev, 16, blk);
        let log = rig.stop().unwrap_or_else(|e| panic!("{e}"));
        if kernel_version() >= (6, 6) {
            // Since 6.6 an ext4 error shuts the file system down
            // (EXT4_FLAGS_SHUTDOWN replaced the "aborted" flag), also with
            // errors=remount-ro: a write answers EIO, not EROFS (measured on
            // 6.12). The daemon maps that EIO like any other.
            assert!(
                s.contains("Medium Error") && s.contains("Write error"),
                "EIO from a shut-down ext4 (kernel >= 6.6): {s}"
            );
            assert!(log.contains("Input/output error"), "{log}");
        } else {
            assert!(
                s.contains("Data Protect") && s.contains("Write protected"),
                "EROFS: {s}"
            );
            assert!(log.contains("Read-only file system"), "{log}");
        }
        drop(rig);
        must(10, "umount", &[mnt]);
        drop(lo);

        // EPERM: a block device set read-only under the daemon.
        let lo = Loop::new("eperm", 16);
        let (mut rig, dev) = Rig::start(
            UPPER,
            &lo.dev,
            None,
            &["--name", "rs_eperm"],
            "/tmp/tcmu-eperm.log",
        );
        must(10, "blockdev", &["--setro", &lo.dev]);
        let s = write_sense(&dev, 8, blk);
        let _ = run_for(10, "blockdev", &["--setrw", &lo.dev]);
        assert!(
            s.contains("Data Protect") && s.contains("Write protected"),
            "EPERM: {s}"
        );
        rig.stop().unwrap_or_else(|e| panic!("{e}"));
        drop(rig);
        drop(lo);

        // EIO: device-mapper, the first 8 MiB linear on a loop device, the
        // next 8 MiB the `error` target.
        let lo = Loop::new("eio", 8);
        fs::write(
            "/tmp/tcmu-dm-table",
            format!("0 16384 linear {} 0\n16384 16384 error\n", lo.dev),
        )
        .unwrap();
        let dm = run_for(
            30,
            "dmsetup",
            &["create", "--noudevsync", "tcmu-err", "/tmp/tcmu-dm-table"],
        );
        dm.unwrap_or_else(|e| {
            panic!("dmsetup (vm-test needs --modules dm_mod --host-bin dmsetup): {e}")
        });
        let dmdev = fs::read_dir("/sys/block")
            .unwrap()
            .flatten()
            .find(|e| {
                fs::read_to_string(e.path().join("dm/name")).is_ok_and(|n| n.trim() == "tcmu-err")
            })
            .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
            .expect("dm device of tcmu-err");
        let (mut rig, dev) = Rig::start(
            UPPER,
            &dmdev,
            None,
            &["--name", "rs_eio"],
            "/tmp/tcmu-eio.log",
        );
        let r = sg_raw(&dev, &rw10(0x28, 16384, 1), None, 512);
        assert!(
            r.contains("Medium Error") && r.contains("Unrecovered read error"),
            "EIO read: {r}"
        );
        assert!(r.contains("0x4000"), "the failing LBA in INFORMATION: {r}");
        let w = write_sense(&dev, 16385, blk);
        assert!(
            w.contains("Medium Error") && w.contains("Write error"),
            "EIO write: {w}"
        );
        let good = sg_raw(&dev, &rw10(0x28, 100, 1), None, 512);
        assert!(
            good.contains("Received 512 bytes"),
            "the linear part still reads: {good}"
        );
        let log = rig.stop().unwrap_or_else(|e| panic!("{e}"));
        say(&format!(
            "  [errno] EIO: {}",
            log.lines().filter(|l| l.contains("os error 5")).count()
        ));
        drop(rig);
        let _ = run_for(30, "dmsetup", &["remove", "--noudevsync", "tcmu-err"]);
        drop(lo);
        assert_eq!(
            configfs_leftovers(),
            Vec::<String>::new(),
            "configfs leftovers"
        );
    }
}

vm_test! {
    fn tcmu_serves_a_block_device_and_a_read_only_one_write_protected() {
        require_vm();
        require_tools(&["sg_raw", "sg_modes", "losetup"]);
        setup_once();
        let lo = Loop::new("bdev", 48);
        let (mut rig, dev) = Rig::start(
            UPPER,
            &lo.dev,
            None,
            &["--name", "rs_bdev"],
            "/tmp/tcmu-bdev.log",
        );
        let sd = dev.trim_start_matches("/dev/").to_owned();
        let sectors: u64 = fs::read_to_string(format!("/sys/block/{sd}/size"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(sectors * 512, 48 << 20, "{dev}: the loop device's size");
        let data = pattern(0xb10c, 4 << 20);
        dd_roundtrip(&dev, &data, 40, "bdev");
        rig.stop().unwrap_or_else(|e| panic!("{e}"));
        drop(rig);
        // On the device itself, read with O_DIRECT past any cache.
        assert!(
            dd_read_direct(&lo.dev, 40, 4, "bdev-direct") == data,
            "pattern not on {}",
            lo.dev
        );

        let (mut rig, dev) = Rig::start(
            UPPER,
            &lo.dev,
            None,
            &["--name", "rs_bdev", "--read-only"],
            "/tmp/tcmu-bdev-ro.log",
        );
        let sd = dev.trim_start_matches("/dev/").to_owned();
        expect("sg_modes", &["-p", "0x0a", &dev], &["WP=1"]);
        assert_eq!(
            fs::read_to_string(format!("/sys/block/{sd}/ro"))
                .unwrap()
                .trim(),
            "1",
            "{dev} read-only"
        );
        assert!(
            dd_read_direct(&dev, 40, 4, "bdev-ro") == data,
            "read-only disk reads back"
        );
        fs::write("/tmp/tcmu-roblk", [0x77u8; 512]).unwrap();
        let w = out(
            60,
            "sg_raw",
            &[
                "-R",
                "-s",
                "512",
                "-i",
                "/tmp/tcmu-roblk",
                &dev,
                "2a",
                "00",
                "00",
                "00",
                "00",
                "08",
                "00",
                "00",
                "01",
                "00",
            ],
        );
        assert!(
            w.contains("Data Protect") && w.contains("Write protected"),
            "write to a read-only disk: {w}"
        );
        rig.stop().unwrap_or_else(|e| panic!("{e}"));
        drop(rig);
        assert!(
            read_at(&lo.dev, 8 * 512, 512).iter().all(|&b| b != 0x77),
            "a refused write reached the device"
        );
        assert_eq!(
            configfs_leftovers(),
            Vec::<String>::new(),
            "configfs leftovers"
        );
    }
}

vm_test! {
    fn tcmu_restart_after_sigkill_adopts_or_replaces_the_stale_objects() {
        require_vm();
        setup_once();
        let backing = fresh_lower();
        let flags = ["--name", "rs_restart"];
        let (mut rig, dev) = Rig::start(UPPER, &backing, None, &flags, "/tmp/tcmu-restart1.log");
        let p1 = pattern(0x4e57, 4 << 20);
        dd_roundtrip(&dev, &p1, 8, "restart1");
        // Killed in the middle of a 64 MiB O_DIRECT write: commands are in the
        // ring (and more queue behind them) when the handler dies.
        let big = pattern(0x4e5a, 64 << 20);
        fs::write("/tmp/tcmu-inflight.in", &big).unwrap();
        let mut dd = Command::new("dd")
            .args([
                "if=/tmp/tcmu-inflight.in",
                &format!("of={dev}"),
                "bs=1M",
                "seek=64",
                "oflag=direct",
                "conv=notrunc",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create("/tmp/tcmu-inflight.err").unwrap())
            .spawn()
            .expect("dd");
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            dd.try_wait().unwrap().is_none(),
            "dd of 64 MiB finished within 0.5 s: nothing was in flight at the kill"
        );
        rig.kill9();
        assert!(
            Path::new(&format!("{TARGET}/core/user_0/rs_restart")).is_dir(),
            "SIGKILL left no backstore: {:?}",
            configfs_leftovers()
        );
        let sd = dev.trim_start_matches("/dev/").to_owned();
        assert!(
            Path::new(&format!("/sys/block/{sd}")).exists(),
            "the disk stays after SIGKILL"
        );

        // Same configuration: adopted, the same disk served on.
        let (mut rig, dev2) = Rig::start(UPPER, &backing, None, &flags, "/tmp/tcmu-restart2.log");
        assert!(rig.log().contains("adopting"), "{}", rig.log());
        assert_eq!(dev2, dev, "the adopted disk keeps its name");
        // The reset ring completed the commands in flight with BUSY; the
        // initiator retried them on the new instance and dd finished.
        let deadline = Instant::now() + Duration::from_secs(120);
        let st = loop {
            if let Some(st) = dd.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "dd still blocked 120 s after the restart"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let dd_err = fs::read_to_string("/tmp/tcmu-inflight.err").unwrap_or_default();
        assert!(st.success(), "dd across the kill -9: {st}: {dd_err}");
        assert!(
            dd_read_direct(&dev2, 64, 64, "restart-inflight") == big,
            "the write in flight at kill -9 did not land whole"
        );
        let _ = fs::remove_file("/tmp/tcmu-inflight.in");
        assert!(
            dd_read_direct(&dev2, 8, 4, "restart2") == p1,
            "data lost across kill -9"
        );
        let p2 = pattern(0x4e58, 4 << 20);
        dd_roundtrip(&dev2, &p2, 16, "restart2w");
        rig.kill9();

        // Another geometry: the stale disk goes, a new one comes.
        let mut more = flags.to_vec();
        more.extend(["--block-size", "4096"]);
        let (mut rig, dev3) = Rig::start(UPPER, &backing, None, &more, "/tmp/tcmu-restart3.log");
        assert!(rig.log().contains("replacing"), "{}", rig.log());
        let sd3 = dev3.trim_start_matches("/dev/").to_owned();
        let lbs = fs::read_to_string(format!("/sys/block/{sd3}/queue/logical_block_size")).unwrap();
        assert_eq!(lbs.trim(), "4096", "{dev3}: the new geometry");
        let disks: Vec<String> = fs::read_dir("/sys/block")
            .unwrap()
            .flatten()
            .filter(|e| {
                fs::read_to_string(e.path().join("device/model")).is_ok_and(|m| m.trim() == "TCMU-FILE")
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(disks, vec![sd3.clone()], "the stale disk is gone");
        assert!(
            dd_read_direct(&dev3, 8, 4, "restart3a") == p1,
            "pattern 1 after the replacement"
        );
        assert!(
            dd_read_direct(&dev3, 16, 4, "restart3b") == p2,
            "pattern 2 after the replacement"
        );
        let log = rig.stop().unwrap_or_else(|e| panic!("{e}"));
        say(&format!(
            "  [restart] {}",
            log.lines()
                .filter(|l| l.contains("adopting") || l.contains("replacing") || l.contains("time_out"))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
        drop(rig);
        assert_eq!(
            configfs_leftovers(),
            Vec::<String>::new(),
            "configfs leftovers"
        );
        assert!(
            !Path::new(&format!("/sys/block/{sd3}")).exists(),
            "{dev3} still there after teardown"
        );
        if is_mounted(LOWER) {
            let _ = run_for(30, "umount", &[LOWER]);
        }
    }
}
