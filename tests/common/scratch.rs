//! Scratch backing stores for the host tests: tmpfs/ramfs mounts and loop
//! devices, undone on drop. They need root (the project's machines and CI
//! are root).

use reclaim_scope::NoFsFile;
use std::fs::{self, OpenOptions};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Root, for the host tests that mount file systems and attach loop
/// devices: without it they fail naming the reason, never pass as skipped.
pub fn require_root() {
    let root = fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    assert!(
        root,
        "these tests mount tmpfs/ramfs and attach loop devices: run them as root (the \
         project's test machines and CI are root)"
    );
}

/// Runs `prog`, panics with its stderr unless it succeeds; its stdout.
pub fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A fresh directory in the temporary directory.
pub fn scratch(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "rs-errno-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&p).unwrap();
    p
}

/// A file system mounted on a fresh directory; unmounted (lazily) on drop.
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    pub fn new(fstype: &str, opts: &str) -> Mount {
        require_root();
        let dir = scratch(fstype);
        run(
            "mount",
            &["-t", fstype, "-o", opts, fstype, dir.to_str().unwrap()],
        );
        Mount { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn remount(&self, opts: &str) {
        run(
            "mount",
            &["-o", &format!("remount,{opts}"), self.dir.to_str().unwrap()],
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = fs::remove_dir(&self.dir);
    }
}

/// A loop device over a fresh file of `size` bytes; detached on drop.
pub struct Loop {
    pub dev: String,
    pub file: PathBuf,
}

impl Loop {
    pub fn new(size: u64) -> Loop {
        Loop::with_sector_size(size, 512)
    }

    /// A loop device with `sector` byte logical blocks (a "4Kn" disk with 4096).
    pub fn with_sector_size(size: u64, sector: u32) -> Loop {
        require_root();
        let file = scratch("loop").join("backing");
        let f = fs::File::create(&file).unwrap();
        f.set_len(size).unwrap();
        drop(f);
        let sector = sector.to_string();
        let dev = run(
            "losetup",
            &[
                "-f",
                "--show",
                "--sector-size",
                &sector,
                file.to_str().unwrap(),
            ],
        );
        assert!(dev.starts_with("/dev/loop"), "losetup said {dev:?}");
        Loop { dev, file }
    }

    pub fn open(&self, write: bool) -> NoFsFile {
        NoFsFile::open(&self.dev, OpenOptions::new().read(true).write(write))
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("blockdev")
            .args(["--setrw", &self.dev])
            .status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = fs::remove_file(&self.file);
        if let Some(d) = self.file.parent() {
            let _ = fs::remove_dir(d);
        }
    }
}
