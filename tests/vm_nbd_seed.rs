//! The seed's deadlock setup, rebuilt in the VM, with the example NBD server
//! as the daemon (issue 7).
//!
//! brd ramdisk → ext4 → sparse 320 MiB backing file → `nbd_server` on a unix
//! socket, inside a cgroup with `memory.max=32M` → kernel NBD client
//! (`nbd-client`) → XFS on /dev/nbd0 → a write-heavy workload on the XFS.
//! Every page the server writes into the backing file is charged to its
//! cgroup, so the server's own threads must reclaim (memcg reclaim,
//! `vmscan:mm_vmscan_memcg_reclaim_begin`): with `__GFP_FS|__GFP_IO` allowed,
//! that reclaim may write back the file system the server itself serves —
//! the 2019 deadlock.
//!
//! Three runs, one server each:
//! - default: connection threads hold an `IoFlusher`, file I/O through
//!   `NoFsFile` — must reclaim only without FS/IO;
//! - `--no-flusher`: no `IoFlusher`, file I/O still NOIO-scoped per call by
//!   `NoFsFile` — reported (what is left unprotected between the calls);
//! - `--unprotected`: no `IoFlusher`, plain pread/pwrite — the daemon of the
//!   seed; must show FS/IO-capable reclaim (the danger is real here).
//!
//! Ground truth only: tracefs gfp flags of every reclaim entry and page
//! allocation of the server's threads (filtered on their tids, no event
//! lost), and the connection thread's flags sampled from /proc during the
//! run. The data written to the XFS is verified after unmount + remount.
//! Every external command has a timeout and teardown kills the server first,
//! so a real deadlock fails the test (the kernel NBD timeout turns stuck I/O
//! into errors) instead of hanging the VM.

mod common;

use common::seed::{self, Mode, Stats};
use common::*;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LOWER_DEV: &str = "/dev/ram1";
const LOWER: &str = "/mnt/seed-lower";
const UPPER: &str = "/mnt/seed-xfs";
const NBD_DEV: &str = "/dev/nbd0";
const SOCK: &str = "/run/seed-nbd.sock";
/// mkfs.xfs refuses file systems smaller than 300 MB.
const BACKING_MIB: u64 = 320;
const MEMORY_MAX: &str = "32M";
/// Written with `dd` onto the XFS. With mkfs.xfs and the data file the
/// server writes ~3 × memory.max: hundreds of memcg reclaims per run, while
/// the run stays well inside vm-test's per-binary timeout under TCG.
const DD_MIB: u64 = 64;
/// A patterned file written onto the XFS and verified after a remount.
const DATA_MIB: usize = 16;
/// Kernel NBD request timeout: stuck I/O becomes EIO instead of a hang.
const NBD_TIMEOUT_S: &str = "30";
/// Per-CPU trace buffer: a run records ~50k events, possibly all on one CPU.
const TRACE_BUFFER_KB: u64 = 16384;

// ---------------------------------------------------------------------------
// Commands with timeouts
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// The server and its threads
// ---------------------------------------------------------------------------

/// Everything a run set up, undone in reverse on drop — also when the run
/// panics. The server is killed first: that fails any NBD request still in
/// flight, so a file system stuck on the device can be unmounted.
struct Rig {
    server: Option<Child>,
    cgroup: String,
    connected: bool,
}

impl Rig {
    fn pid(&self) -> u32 {
        self.server.as_ref().expect("server").id()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if is_mounted(UPPER) {
            let _ = run_for(30, "umount", &[UPPER]);
        }
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        if self.connected {
            let _ = run_for(30, "nbd-client", &["-d", NBD_DEV]);
        }
        if is_mounted(UPPER) {
            let _ = run_for(10, "umount", &["-l", UPPER]);
        }
        let _ = fs::remove_file(SOCK);
        // The cgroup is empty once the server is reaped; page cache still
        // charged to it does not keep rmdir from succeeding.
        for _ in 0..50 {
            if fs::remove_dir(&self.cgroup).is_ok() || !Path::new(&self.cgroup).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn setup_once() {
    load_brd();
    must(30, "modprobe", &["nbd"]);
    must(30, "modprobe", &["xfs"]);
    // The memory controller for child cgroups of the root.
    write_file("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
    for d in [LOWER, UPPER] {
        fs::create_dir_all(d).unwrap();
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

    // A fresh lower ext4 each run: same layout, so brd reuses the same pages
    // instead of growing by one backing file per run.
    fresh_ext4(LOWER_DEV, LOWER);
    let backing = format!("{LOWER}/disk.img");
    fs::File::create(&backing)
        .and_then(|f| f.set_len(BACKING_MIB << 20))
        .unwrap_or_else(|e| panic!("create {backing}: {e}"));
    // Same starting point for every run: no page cache left from the last.
    must(60, "sync", &[]);
    write_file("/proc/sys/vm/drop_caches", "3");

    let cgroup = format!("/sys/fs/cgroup/seed-{}", mode.tag());
    if !Path::new(&cgroup).exists() {
        fs::create_dir(&cgroup).unwrap_or_else(|e| panic!("mkdir {cgroup}: {e}"));
    }
    write_file(&format!("{cgroup}/memory.max"), MEMORY_MAX);
    let _ = fs::remove_file(SOCK);

    // The server starts inside the cgroup: every page it charges from its
    // first allocation on counts against memory.max.
    let log = format!("/tmp/seed-server-{}.log", mode.tag());
    let cmd = format!(
        "echo $$ > {cgroup}/cgroup.procs && exec nbd_server --file {backing} --listen none \
         --unix {SOCK} {}",
        mode.flags().join(" ")
    );
    let server = Command::new("sh")
        .args(["-c", &cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("start nbd_server");
    let mut rig = Rig {
        server: Some(server),
        cgroup: cgroup.clone(),
        connected: false,
    };
    let pid = rig.pid();
    wait_until("the server's unix socket", 20, || Path::new(SOCK).exists());
    let in_cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    assert!(
        in_cgroup
            .trim_end()
            .ends_with(&format!("/seed-{}", mode.tag())),
        "server not in its cgroup: {in_cgroup:?}"
    );

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
    wait_until("the nbd-conn thread", 20, || {
        threads(pid).iter().any(|(_, c)| c == "nbd-conn")
    });
    lap("lower ext4, server, nbd-client");
    let mut s = seed::traced_workload(
        mode,
        pid,
        "nbd-conn",
        &cgroup,
        &seed::Workload {
            dev: NBD_DEV,
            upper: UPPER,
            data_mib: DATA_MIB,
            dd_mib: DD_MIB,
            seed: 0x5eed_0000,
        },
        &mut lap,
    );
    must(30, "nbd-client", &["-d", NBD_DEV]);
    rig.connected = false;
    drop(rig);
    lap("remount, verify, teardown");
    s.secs = t0.elapsed().as_secs_f64();
    let server_log = fs::read_to_string(&log).unwrap_or_default();
    seed::report(mode, &server_log, "nbd-conn", &s);
    s
}

vm_test! {
    fn seed_scenario_io_flusher_server_never_reclaims_with_fs_or_io() {
        require_vm();
        setup_once();
        seed::run_all_modes(
            TRACE_BUFFER_KB,
            LOWER,
            &format!(
                "brd → ext4 → {BACKING_MIB} MiB sparse file → nbd_server (cgroup \
         memory.max={MEMORY_MAX}) → nbd-client /dev/nbd0 → XFS; mkfs.xfs + {DATA_MIB} MiB \
         verified file + {DD_MIB} MiB dd"
            ),
            "server",
            "nbd-conn",
            run_scenario,
        );
    }
}

vm_test! {
    reason "kernel truth: needs the nbd and loop modules; runs in the VM via `cargo xtask vm-test`";
    /// Issue 12: a block device as the backing store, through the kernel's NBD
    /// client. A loop device (over a file in the VM's RAM) is served by
    /// `nbd_server --file /dev/loopN`; the kernel sees its size on /dev/nbd1, a
    /// pattern written to /dev/nbd1 and flushed is read back from the loop
    /// device itself and from the file under it; served `--read-only`, the
    /// kernel marks /dev/nbd1 read-only and a write there fails.
    fn block_device_backing_store_through_the_kernel_client() {
        use std::os::unix::fs::FileExt;
        require_vm();
        must(30, "modprobe", &["nbd"]);
        let _ = run_for(30, "modprobe", &["loop"]);
        const MIB: u64 = 48;
        const DEV: &str = "/dev/nbd1";
        const BSOCK: &str = "/run/blk-nbd.sock";
        let file = "/tmp/blk-lower.img";
        fs::File::create(file)
            .and_then(|f| f.set_len(MIB << 20))
            .unwrap();
        let lo = must(30, "losetup", &["-f"]).trim().to_string();
        must(30, "losetup", &[&lo, file]);
        struct Teardown(Vec<Child>, String);
        impl Drop for Teardown {
            fn drop(&mut self) {
                let _ = run_for(30, "nbd-client", &["-d", DEV]);
                for c in &mut self.0 {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                let _ = run_for(30, "losetup", &["-d", &self.1]);
                let _ = fs::remove_file(BSOCK);
            }
        }
        let mut td = Teardown(Vec::new(), lo.clone());
        // A device is served at its own size: a --size that differs is refused.
        let o = Command::new("nbd_server")
            .args([
                "--file", &lo, "--listen", "none", "--unix", BSOCK, "--size", "1M",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run nbd_server");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.code() == Some(2) && err.contains(&format!("already {} bytes", MIB << 20)),
            "nbd_server --size 1M on a {MIB} MiB device: {:?} {err}",
            o.status
        );
        let start = |td: &mut Teardown, extra: &[&str]| {
            let _ = fs::remove_file(BSOCK);
            let log = fs::File::create("/tmp/blk-server.log").unwrap();
            let c = Command::new("nbd_server")
                .args(["--file", &lo, "--listen", "none", "--unix", BSOCK])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start nbd_server");
            td.0.push(c);
            wait_until("the server's unix socket", 20, || Path::new(BSOCK).exists());
            must(
                60,
                "nbd-client",
                &[
                    "-unix",
                    BSOCK,
                    DEV,
                    "-N",
                    "disk",
                    "-b",
                    "4096",
                    "-t",
                    NBD_TIMEOUT_S,
                ],
            );
        };
        start(&mut td, &[]);
        let sectors: u64 = fs::read_to_string("/sys/block/nbd1/size")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(sectors * 512, MIB << 20, "the kernel's size of {DEV}");
        let data = pattern(0xb10c, 4 << 20);
        let off = 8u64 << 20;
        {
            let nbd = fs::OpenOptions::new().write(true).open(DEV).unwrap();
            nbd.write_all_at(&data, off).unwrap();
            nbd.sync_all().unwrap(); // NBD_CMD_FLUSH
        }
        must(30, "nbd-client", &["-d", DEV]);
        let mut got = vec![0u8; data.len()];
        fs::File::open(&lo)
            .unwrap()
            .read_exact_at(&mut got, off)
            .unwrap();
        assert!(
            got == data,
            "the loop device differs from what was written to {DEV}"
        );
        got.fill(0);
        fs::File::open(file)
            .unwrap()
            .read_exact_at(&mut got, off)
            .unwrap();
        assert!(got == data, "the file under the loop device differs");
        assert_eq!(
            fs::metadata(file).unwrap().len(),
            MIB << 20,
            "the device was resized"
        );
        // Read-only: the kernel honours NBD_FLAG_READ_ONLY.
        let mut srv = td.0.pop().unwrap();
        let _ = srv.kill();
        let _ = srv.wait();
        start(&mut td, &["--read-only"]);
        let ro = fs::read_to_string("/sys/block/nbd1/ro").unwrap();
        assert_eq!(ro.trim(), "1", "{DEV} not read-only");
        let w = fs::OpenOptions::new()
            .write(true)
            .open(DEV)
            .and_then(|f| f.write_all_at(&[0u8; 4096], 0));
        assert!(w.is_err(), "a write to the read-only {DEV} succeeded");
        got.fill(0);
        fs::File::open(DEV)
            .unwrap()
            .read_exact_at(&mut got, off)
            .unwrap();
        assert!(got == data, "{DEV} read-only reads other data");
        say(&format!(
            "block device export: {lo} ({MIB} MiB) via {DEV}: size, 4 MiB pattern on the \
         device and its file, read-only honoured"
        ));
    }
}

/// Host-side check of the lost-event parser the proof relies on.
#[test]
fn trace_stats_lost_counters_are_parsed() {
    let stats = "entries: 50138\noverrun: 0\ncommit overrun: 0\nbytes: 3282944\n\
                 oldest event ts:    50.796527\nnow ts:    87.1\ndropped events: 0\n\
                 read events: 0\n";
    assert_eq!(parse_trace_stats_lost(stats), 0);
    let lossy = "entries: 10\noverrun: 7\ncommit overrun: 1\ndropped events: 2\n";
    assert_eq!(parse_trace_stats_lost(lossy), 10);
}
