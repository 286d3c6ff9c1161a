//! A real block-backed file system in the VM (ext4 on brd), and traced
//! writes into it.

use super::*;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const SCRATCH_MNT: &str = "/mnt/rs-ext4";

pub fn sh(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{cmd} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub fn is_mounted(mnt: &str) -> bool {
    fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(mnt)))
        .unwrap_or(false)
}

/// Unmounts every mount of `dev` (`umount`, else `umount -l`), whoever left
/// it: a test binary that failed half-way must not make the next one's
/// `mkfs` refuse a device that is still mounted somewhere else.
pub fn unmount_device(dev: &str) {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    for mnt in mounts.lines().filter_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(dev)).then(|| f.next().map(str::to_owned))?
    }) {
        if let Err(e) = run_for(30, "umount", &[&mnt]) {
            say(&format!(
                "  {dev} still mounted on {mnt} ({e}): lazy unmount"
            ));
            must(30, "umount", &["-l", &mnt]);
        }
    }
}

/// A fresh ext4 on `dev`, mounted on `mnt`, after [`unmount_device`].
pub fn fresh_ext4(dev: &str, mnt: &str) {
    unmount_device(dev);
    if is_mounted(mnt) {
        must(30, "umount", &[mnt]);
    }
    must(60, "mkfs.ext4", &["-q", "-F", dev]);
    must(30, "mount", &["-t", "ext4", dev, mnt]);
}

/// Parameters of the one `modprobe brd` of a VM boot: module parameters
/// only apply on the first load, so every test that wants a ramdisk loads it
/// through [`load_brd`]. `/dev/ram0` is [`scratch_fs`]; `/dev/ram1` is the
/// lower ext4 of tests/vm_nbd_seed.rs, which needs room for a 320 MiB
/// sparse backing file. brd allocates memory only for sectors written.
pub const BRD_PARAMS: &[&str] = &["rd_nr=2", "rd_size=393216"];

/// Load brd with [`BRD_PARAMS`] unless it is loaded; panics if the devices
/// it has are fewer or smaller (someone loaded it with other parameters).
pub fn load_brd() {
    require_vm();
    if !Path::new("/dev/ram0").exists() {
        let mut args = vec!["brd"];
        args.extend_from_slice(BRD_PARAMS);
        sh("modprobe", &args).unwrap_or_else(|e| panic!("{e} (vm-test adds --modules brd)"));
    }
    let want_kib: u64 = BRD_PARAMS
        .iter()
        .find_map(|p| p.strip_prefix("rd_size="))
        .and_then(|v| v.parse().ok())
        .expect("rd_size in BRD_PARAMS");
    for dev in ["ram0", "ram1"] {
        let sectors: u64 = fs::read_to_string(format!("/sys/block/{dev}/size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            sectors / 2 >= want_kib,
            "/dev/{dev}: {} KiB, want {want_kib}: brd was loaded with parameters other \
             than {BRD_PARAMS:?} (load it through common::load_brd)",
            sectors / 2
        );
    }
}

/// An ext4 mount on a brd ramdisk (`/dev/ram0`, [`BRD_PARAMS`]), created once per VM
/// boot and shared by all test binaries. Page cache of a real block-backed
/// file system — the allocation the seed deadlock is about — unlike tmpfs,
/// whose pages come from shmem. Formatted with the host's mkfs.ext4 when
/// `vm-test` copied it in, else busybox mke2fs (ext2 layout, mounted by the
/// ext4 driver).
pub fn scratch_fs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        require_vm();
        if !is_mounted(SCRATCH_MNT) {
            load_brd();
            let mkfs = if Command::new("mkfs.ext4").arg("-V").output().is_ok() {
                sh("mkfs.ext4", &["-q", "-F", "/dev/ram0"])
            } else {
                sh("mke2fs", &["-F", "/dev/ram0"])
            };
            mkfs.unwrap_or_else(|e| panic!("scratch fs: {e}"));
            fs::create_dir_all(SCRATCH_MNT).expect("mkdir scratch mount point");
            sh("mount", &["-t", "ext4", "/dev/ram0", SCRATCH_MNT])
                .unwrap_or_else(|e| panic!("scratch fs: {e}"));
        }
        PathBuf::from(SCRATCH_MNT)
    })
}

/// A new, empty file on [`scratch_fs`] (unique per call).
pub fn fresh_file(tag: &str) -> (PathBuf, fs::File) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let p = scratch_fs().join(format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    (p, f)
}

/// Buffered write of `len` bytes of fresh page cache at offset 0 of `f`,
/// traced: every page allocation of this thread during the write.
pub fn traced_pwrite(f: &fs::File, len: usize) -> Vec<TraceEvent> {
    use std::os::unix::fs::FileExt;
    let buf = vec![0x5au8; len]; // allocated before tracing starts
    let (r, ev) = trace_thread(&[EV_PAGE_ALLOC], || f.write_all_at(&buf, 0));
    r.expect("pwrite");
    ev.into_iter().filter(|e| e.is(EV_PAGE_ALLOC)).collect()
}

impl fmt::Display for GfpClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fs={} io={}", self.fs, self.io)
    }
}
