//! The FUSE test rig shared by the tests of the passthrough
//! (`examples/tests/fuse_*.rs`): a
//! source directory, a mount point, the passthrough mounted in this process,
//! undone on drop (also when a test panics), and a watchdog that unmounts
//! and aborts the run if a workload hangs.

use super::{Guarding, Mounted, Passthrough};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// These tests mount a real FUSE file system; where that is impossible they
/// fail with the reason rather than pass as skipped.
pub fn require_mount() {
    let root = fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    assert!(
        root && Path::new("/dev/fuse").exists(),
        "mounting FUSE with mount(2) needs root and /dev/fuse (the project's test machines \
         have both): run the tests as root"
    );
}

pub fn is_mounted(mnt: &Path) -> bool {
    let mnt = mnt.to_string_lossy();
    fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(&*mnt))
        })
        .unwrap_or(false)
}

/// Aborts the FUSE connection of the mount at `mnt` through fusectl
/// (`/sys/fs/fuse/connections/<minor of st_dev>/abort`), mounting fusectl if
/// needed: every pending and later request fails with ENOTCONN.
pub fn abort_connection(mnt: &Path) {
    // From mountinfo, not stat(2): a stat of a hung mount would hang too.
    let mnt = mnt.to_string_lossy();
    let Some(minor) = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some(&*mnt))
        .and_then(|l| {
            l.split_whitespace()
                .nth(2)?
                .split(':')
                .nth(1)?
                .parse::<u32>()
                .ok()
        })
    else {
        return;
    };
    let ctl = Path::new("/sys/fs/fuse/connections");
    if fs::read_dir(ctl).map_or(true, |mut d| d.next().is_none()) {
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "none"])
            .arg(ctl)
            .status();
    }
    let _ = fs::write(ctl.join(minor.to_string()).join("abort"), "1");
}

/// A source directory, a mount point and the mounted passthrough; undone in
/// reverse on drop.
pub struct Rig {
    pub dir: PathBuf,
    pub src: PathBuf,
    pub mnt: PathBuf,
    pub mounted: Option<Mounted>,
    done: Arc<AtomicBool>,
    pub stats: Arc<super::Stats>,
}

impl Rig {
    pub fn new(threads: usize) -> Rig {
        Rig::with(threads, |_| {})
    }

    /// A rig whose file system `configure` adjusts before mounting.
    pub fn with(threads: usize, configure: impl FnOnce(&mut Passthrough)) -> Rig {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "reclaim-scope-fuse-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        let (src, mnt) = (dir.join("src"), dir.join("mnt"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&mnt).unwrap();
        let mut fs = Passthrough::new(src.clone(), Guarding::IoFlusher).expect("open the source");
        configure(&mut fs);
        let stats = fs.stats();
        let mounted = super::mount(fs, &mnt, threads).expect("mount the passthrough");
        assert!(is_mounted(&mnt), "{} is not in /proc/mounts", mnt.display());
        // Watchdog: a hung workload must not hang the test run or leave the
        // mount behind.
        let done = Arc::new(AtomicBool::new(false));
        let (d, m) = (done.clone(), mnt.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(120) {
                if d.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!(
                "fuse test hung for 120 s: unmounting {} and aborting",
                m.display()
            );
            // A request the dying process would never answer would keep
            // it (and its mount's users) in D state: abort the connection.
            abort_connection(&m);
            let _ = Command::new("umount").arg("-l").arg(&m).status();
            std::process::abort();
        });
        Rig {
            dir,
            src,
            mnt,
            mounted: Some(mounted),
            done,
            stats,
        }
    }

    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn s(&self, rel: &str) -> PathBuf {
        self.src.join(rel)
    }

    /// Unmount through the session and wait for it to end.
    pub fn unmount(&mut self) {
        if let Some(m) = self.mounted.take() {
            m.unmount().expect("unmount");
        }
        assert!(!is_mounted(&self.mnt), "still mounted after unmount");
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(m) = self.mounted.take() {
            let _ = m.unmount();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        self.done.store(true, Ordering::Relaxed);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn run(cmd: &str, args: &[&std::ffi::OsStr]) {
    // `timeout` bounds a command stuck on the mount.
    let out = Command::new("timeout")
        .arg("60")
        .arg(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `cond` for up to 10 s (work the kernel queues, such as FORGET).
pub fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: not after 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
