//! Differential test of the example FUSE passthrough (issue 15): one seeded
//! random sequence of file-system operations is applied through the mount
//! and to a plain directory of the same file system, every result and errno
//! is compared, and the final trees are compared byte for byte (names,
//! types, modes, owners, link counts, sizes, contents, symlink targets).
//!
//! Operations: create/open with random flags (append, truncate, exclusive),
//! positional writes, appends, reads, ftruncate, truncate, fstat/lstat,
//! close, rename (plain, `RENAME_NOREPLACE`, `RENAME_EXCHANGE`), link,
//! unlink (also of open files), mkdir/rmdir, readdir while the directory
//! changes, chmod, chown and creation as another user, utimensat,
//! fallocate (four modes), SEEK_DATA/SEEK_HOLE, symlink/readlink, mkfifo,
//! fsync, extended attributes (set with `XATTR_CREATE`/`XATTR_REPLACE`, get
//! and list with size queries and short buffers, remove; on links and
//! through them, as another user). Not compared: times other than those set
//! explicitly, inode numbers, directory sizes and seek offsets in
//! directories (each file system's own), and the order of a listxattr
//! answer (sorted before comparing). The final trees include every file's
//! extended attributes.
//!
//! `FUSE_DIFF_SEED=<n>` replays a run, `FUSE_DIFF_OPS=<n>` sets its length
//! (default 10000), `FUSE_DIFF_TRACE=1` prints each step; every failure
//! message names the seed and the step.

use reclaim_scope_examples::fuse as passthrough;
use reclaim_scope_examples::fuse::rig;

use nix::fcntl::{fallocate, renameat2, FallocateFlags, RenameFlags, AT_FDCWD};
use nix::sys::stat::{utimensat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{lseek, setfsgid, setfsuid, Gid, Uid, Whence};
use rig::{require_mount, Rig};
use rustix::fs::XattrFlags;
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use reclaim_scope_examples::testkit::rng::Rng;

/// What an operation answered: a value rendered as text, or an errno.
type Outcome = Result<String, i32>;

fn os<T>(r: std::io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn nx<T>(r: nix::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e as i32)
}

fn rx<T>(r: rustix::io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.raw_os_error())
}

/// A listxattr(2) answer, its names sorted (each file system lists in its
/// own order).
fn xattr_list(buf: &[u8]) -> String {
    let mut v: Vec<String> = buf
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    v.sort();
    v.join(" ")
}

/// The extended attributes of a file itself (not a symlink's target):
/// sorted names with a digest of each value.
fn xattrs(p: &Path) -> String {
    let names = xattr::list(p).unwrap();
    let mut v: Vec<String> = names
        .map(|n| {
            let value = xattr::get(p, &n).unwrap().unwrap_or_default();
            format!("{}={}", n.to_string_lossy(), digest(&value))
        })
        .collect();
    v.sort();
    v.join(",")
}

/// The calling thread as another user for file-system access (FUSE
/// requests carry fsuid/fsgid; the plain directory checks them too).
struct As;

impl As {
    fn user(uid: u32) -> As {
        setfsgid(Gid::from_raw(uid));
        setfsuid(Uid::from_raw(uid));
        As
    }
}

impl Drop for As {
    fn drop(&mut self) {
        setfsuid(Uid::from_raw(0));
        setfsgid(Gid::from_raw(0));
    }
}

const SLOTS: usize = 6;
const USER: u32 = 1500;

/// One side: a root directory and the open files of its slots.
struct Side {
    root: PathBuf,
    slots: Vec<Option<File>>,
}

/// One operation, drawn once and applied to both sides.
#[derive(Debug, Clone)]
enum Op {
    Open {
        path: String,
        slot: usize,
        read: bool,
        write: bool,
        append: bool,
        create: bool,
        excl: bool,
        trunc: bool,
        mode: u32,
        as_user: bool,
    },
    Pwrite {
        slot: usize,
        off: u64,
        len: usize,
        seed: u64,
    },
    Append {
        slot: usize,
        len: usize,
        seed: u64,
    },
    Pread {
        slot: usize,
        off: u64,
        len: usize,
    },
    Ftruncate {
        slot: usize,
        len: u64,
    },
    Fstat {
        slot: usize,
    },
    Close {
        slot: usize,
    },
    Fsync {
        slot: usize,
    },
    Fallocate {
        slot: usize,
        mode: i32,
        off: i64,
        len: i64,
    },
    Seek {
        slot: usize,
        data: bool,
        off: i64,
    },
    Truncate {
        path: String,
        len: u64,
    },
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Link {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
        mode: u32,
        as_user: bool,
    },
    Rmdir {
        path: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Readlink {
        path: String,
    },
    Mkfifo {
        path: String,
        mode: u32,
    },
    Lstat {
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
        as_user: bool,
    },
    Chown {
        path: String,
        uid: Option<u32>,
        gid: Option<u32>,
        as_user: bool,
    },
    Utimens {
        path: String,
        secs: i64,
    },
    ReaddirMutating {
        dir: String,
        after: usize,
        create: String,
    },
    List {
        dir: String,
    },
    /// `follow`: setxattr(2), else lsetxattr(2). `flags`: 0,
    /// `XATTR_CREATE` or `XATTR_REPLACE`.
    Setxattr {
        path: String,
        name: &'static str,
        len: usize,
        seed: u64,
        flags: u32,
        follow: bool,
        as_user: bool,
    },
    /// `size` 0 asks the size; a short buffer is ERANGE.
    Getxattr {
        path: String,
        name: &'static str,
        size: usize,
        follow: bool,
        as_user: bool,
    },
    Listxattr {
        path: String,
        size: usize,
        follow: bool,
    },
    Removexattr {
        path: String,
        name: &'static str,
        follow: bool,
        as_user: bool,
    },
}

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
/// Extended attribute names: `user.*` (regular files and directories
/// only, write permission) and `trusted.*` (any file type, CAP_SYS_ADMIN).
const XNAMES: [&str; 3] = ["user.a", "user.b", "trusted.t"];
/// Buffer sizes: the size query, short ones, and exact fits of values (5,
/// 40) and of lists (7: one `user.*` name, 14: two).
const XSIZES: [usize; 8] = [0, 3, 5, 7, 14, 40, 64, 4096];
const MODES: [u32; 8] = [0o644, 0o600, 0o755, 0o777, 0o2777, 0o1777, 0o4755, 0o000];
const DIR_MODES: [u32; 5] = [0o755, 0o777, 0o700, 0o2777, 0o1777];

/// A path: most often one that exists (from the plain side's last walk),
/// else a random one of depth 1 to 3 over a small alphabet.
fn path(rng: &mut Rng, existing: &[String]) -> String {
    if !existing.is_empty() && rng.chance(60) {
        return rng.pick(existing).clone();
    }
    let depth = 1 + rng.below(3).min(rng.below(3));
    (0..depth)
        .map(|_| *rng.pick(&NAMES))
        .collect::<Vec<_>>()
        .join("/")
}

fn dir_path(rng: &mut Rng) -> String {
    if rng.chance(30) {
        ".".into()
    } else {
        let depth = 1 + rng.below(2);
        (0..depth)
            .map(|_| *rng.pick(&NAMES))
            .collect::<Vec<_>>()
            .join("/")
    }
}

fn draw(rng: &mut Rng, existing: &[String]) -> Op {
    let path = |rng: &mut Rng| path(rng, existing);
    let slot = rng.below(SLOTS as u64) as usize;
    match rng.below(28) {
        0..=3 => Op::Open {
            path: path(rng),
            slot,
            read: rng.chance(70),
            write: rng.chance(70),
            append: rng.chance(30),
            create: rng.chance(60),
            excl: rng.chance(20),
            trunc: rng.chance(15),
            mode: *rng.pick(&MODES),
            as_user: rng.chance(15),
        },
        4..=5 => Op::Pwrite {
            slot,
            off: rng.below(3) * rng.below(70_000),
            len: rng.below(6000) as usize,
            seed: rng.next(),
        },
        6 => Op::Append {
            slot,
            len: 1 + rng.below(3000) as usize,
            seed: rng.next(),
        },
        7 => Op::Pread {
            slot,
            off: rng.below(80_000),
            len: rng.below(9000) as usize,
        },
        8 => Op::Ftruncate {
            slot,
            len: rng.below(2) * rng.below(100_000),
        },
        9 => Op::Fstat { slot },
        10 => Op::Close { slot },
        11 => match rng.below(3) {
            0 => Op::Fsync { slot },
            _ => Op::Seek {
                slot,
                data: rng.chance(50),
                off: rng.below(90_000) as i64,
            },
        },
        12 => Op::Fallocate {
            slot,
            mode: *rng.pick(&[
                0,
                libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_ZERO_RANGE,
                libc::FALLOC_FL_PUNCH_HOLE,
            ]),
            off: rng.below(70_000) as i64,
            len: rng.below(20_000) as i64,
        },
        13 => Op::Truncate {
            path: path(rng),
            len: rng.below(50_000),
        },
        14..=15 => Op::Rename {
            from: path(rng),
            to: path(rng),
            flags: *rng.pick(&[
                0,
                0,
                RenameFlags::RENAME_NOREPLACE.bits(),
                RenameFlags::RENAME_EXCHANGE.bits(),
            ]),
        },
        16 => Op::Link {
            from: path(rng),
            to: path(rng),
        },
        17 => Op::Unlink { path: path(rng) },
        18 => Op::Mkdir {
            path: path(rng),
            mode: *rng.pick(&DIR_MODES),
            as_user: rng.chance(20),
        },
        19 => Op::Rmdir { path: path(rng) },
        20 => match rng.below(3) {
            0 => Op::Symlink {
                target: rng.pick(&["a", "../b", "nowhere", "c/d", "."]).to_string(),
                path: path(rng),
            },
            1 => Op::Readlink { path: path(rng) },
            _ => Op::Mkfifo {
                path: path(rng),
                mode: 0o640,
            },
        },
        21 => Op::Lstat { path: path(rng) },
        22 => Op::Chmod {
            path: path(rng),
            mode: *rng.pick(&MODES),
            as_user: rng.chance(30),
        },
        23 => Op::Chown {
            path: path(rng),
            uid: rng.chance(60).then(|| *rng.pick(&[0, USER, USER + 1])),
            gid: rng.chance(60).then(|| *rng.pick(&[0, USER, USER + 1])),
            as_user: rng.chance(40),
        },
        24 => match rng.below(2) {
            0 => Op::Utimens {
                path: path(rng),
                secs: rng.below(2_000_000_000) as i64,
            },
            _ => Op::List { dir: dir_path(rng) },
        },
        25..=26 => {
            let (path, name) = (path(rng), *rng.pick(&XNAMES));
            let (follow, as_user) = (rng.chance(50), rng.chance(15));
            match rng.below(7) {
                0..=2 => Op::Setxattr {
                    path,
                    name,
                    len: *rng.pick(&[0, 5, 40, 3000]),
                    seed: rng.next(),
                    flags: *rng.pick(&[0, libc::XATTR_CREATE as u32, libc::XATTR_REPLACE as u32]),
                    follow,
                    as_user,
                },
                3..=4 => Op::Getxattr {
                    path,
                    name,
                    size: *rng.pick(&XSIZES),
                    follow,
                    as_user,
                },
                5 => Op::Listxattr {
                    path,
                    size: *rng.pick(&XSIZES),
                    follow,
                },
                _ => Op::Removexattr {
                    path,
                    name,
                    follow,
                    as_user,
                },
            }
        }
        _ => Op::ReaddirMutating {
            dir: dir_path(rng),
            after: rng.below(4) as usize,
            create: NAMES[rng.below(5) as usize].to_string() + "x",
        },
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    (0..len).map(|_| r.next() as u8).collect()
}

/// A digest of bytes for messages: length and FNV-1a.
fn digest(b: &[u8]) -> String {
    let h = b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{} bytes {h:016x}", b.len())
}

/// Type, permission bits, owner, link count and (but for directories)
/// size: what a local file system and the passthrough must agree on.
fn describe(m: &fs::Metadata) -> String {
    let size = if m.is_dir() { 0 } else { m.len() };
    format!(
        "{:o} {}:{} nlink {} size {size}",
        m.mode(),
        m.uid(),
        m.gid(),
        m.nlink()
    )
}

impl Side {
    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn slot(&self, slot: usize) -> Result<&File, i32> {
        self.slots[slot].as_ref().ok_or(libc::EBADF)
    }

    fn apply(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Open {
                path,
                slot,
                read,
                write,
                append,
                create,
                excl,
                trunc,
                mode,
                as_user,
            } => {
                let mut flags = libc::O_NONBLOCK; // never block on a FIFO
                flags |= match (*read, *write || *append) {
                    (true, true) => libc::O_RDWR,
                    (false, true) => libc::O_WRONLY,
                    _ => libc::O_RDONLY,
                };
                for (on, f) in [
                    (*append, libc::O_APPEND),
                    (*create, libc::O_CREAT),
                    (*excl && *create, libc::O_EXCL),
                    (*trunc, libc::O_TRUNC),
                ] {
                    if on {
                        flags |= f;
                    }
                }
                let _as = as_user.then(|| As::user(USER));
                let f = nx(nix::fcntl::open(
                    &self.p(path),
                    nix::fcntl::OFlag::from_bits_retain(flags | libc::O_CLOEXEC),
                    Mode::from_bits_retain(*mode),
                ))?;
                self.slots[*slot] = Some(File::from(f));
                Ok(String::new())
            }
            Op::Pwrite {
                slot,
                off,
                len,
                seed,
            } => {
                let f = self.slot(*slot)?;
                os(f.write_at(&pattern(*seed, *len), *off)).map(|n| n.to_string())
            }
            Op::Append { slot, len, seed } => {
                let mut f = self.slot(*slot)?;
                os(f.write(&pattern(*seed, *len))).map(|n| n.to_string())
            }
            Op::Pread { slot, off, len } => {
                let f = self.slot(*slot)?;
                let mut buf = vec![0; *len];
                let mut done = 0;
                while done < buf.len() {
                    match os(f.read_at(&mut buf[done..], off + done as u64))? {
                        0 => break,
                        n => done += n,
                    }
                }
                buf.truncate(done);
                Ok(digest(&buf))
            }
            Op::Ftruncate { slot, len } => {
                os(self.slot(*slot)?.set_len(*len)).map(|_| String::new())
            }
            Op::Fstat { slot } => os(self.slot(*slot)?.metadata()).map(|m| describe(&m)),
            Op::Close { slot } => {
                self.slots[*slot].take().ok_or(libc::EBADF)?;
                Ok(String::new())
            }
            Op::Fsync { slot } => os(self.slot(*slot)?.sync_all()).map(|_| String::new()),
            Op::Fallocate {
                slot,
                mode,
                off,
                len,
            } => nx(fallocate(
                self.slot(*slot)?,
                FallocateFlags::from_bits_retain(*mode),
                *off,
                *len,
            ))
            .map(|_| String::new()),
            Op::Seek { slot, data, off } => {
                let w = if *data {
                    Whence::SeekData
                } else {
                    Whence::SeekHole
                };
                let f = self.slot(*slot)?;
                // Offsets in a directory are each file system's own cookies
                // (ext4's htree hashes): not comparable with any other.
                if os(f.metadata())?.is_dir() {
                    return Ok("a directory".into());
                }
                // Where ext4 reports data over an unwritten extent depends on
                // its page cache (which differs once the FUSE page cache
                // serves reads): the answer is checked against the contract
                // of SEEK_DATA/SEEK_HOLE on each side, not compared.
                let m = os(f.metadata())?;
                if !m.is_file() {
                    // A FIFO: ESPIPE, the same on both sides.
                    return nx(lseek(f, *off, w)).map(|o| o.to_string());
                }
                let size = m.len() as i64;
                // Read back through a reader of the same file (the slot may
                // be write-only, its name gone).
                let reader = os(File::open(format!("/proc/self/fd/{}", f.as_raw_fd())))?;
                let zeros = |a: i64, b: i64| {
                    let mut buf = vec![1; (b - a).max(0) as usize];
                    reader.read_exact_at(&mut buf, a as u64).is_ok() && buf.iter().all(|&x| x == 0)
                };
                // The answers may differ, so the position they set must not
                // leak into later writes: put it back.
                let pos = nx(lseek(f, 0, Whence::SeekCur))?;
                let r = nx(lseek(f, *off, w));
                nx(lseek(f, pos, Whence::SeekSet))?;
                Ok(match (data, r) {
                    (_, Err(e)) if *off >= size => return Err(e),
                    (_, Err(e)) if e != libc::ENXIO || !data => return Err(e),
                    (_, Err(_)) if zeros(*off, size) => "valid".into(),
                    (true, Ok(r)) if r >= *off && r < size && zeros(*off, r) => "valid".into(),
                    (false, Ok(r)) if r >= *off && r <= size => "valid".into(),
                    (_, r) => format!("INVALID: {r:?} for size {size}"),
                })
            }
            Op::Truncate { path, len } => {
                nx(nix::unistd::truncate(&self.p(path), *len as i64)).map(|_| String::new())
            }
            Op::Rename { from, to, flags } => nx(renameat2(
                AT_FDCWD,
                &self.p(from),
                AT_FDCWD,
                &self.p(to),
                RenameFlags::from_bits_retain(*flags),
            ))
            .map(|_| String::new()),
            Op::Link { from, to } => {
                os(fs::hard_link(self.p(from), self.p(to))).map(|_| String::new())
            }
            Op::Unlink { path } => os(fs::remove_file(self.p(path))).map(|_| String::new()),
            Op::Mkdir {
                path,
                mode,
                as_user,
            } => {
                let _as = as_user.then(|| As::user(USER));
                nx(nix::unistd::mkdir(
                    &self.p(path),
                    Mode::from_bits_retain(*mode),
                ))
                .map(|_| String::new())
            }
            Op::Rmdir { path } => os(fs::remove_dir(self.p(path))).map(|_| String::new()),
            Op::Symlink { target, path } => {
                os(std::os::unix::fs::symlink(target, self.p(path))).map(|_| String::new())
            }
            Op::Readlink { path } => {
                os(fs::read_link(self.p(path))).map(|t| t.display().to_string())
            }
            Op::Mkfifo { path, mode } => nx(nix::unistd::mkfifo(
                &self.p(path),
                Mode::from_bits_retain(*mode),
            ))
            .map(|_| String::new()),
            Op::Lstat { path } => os(fs::symlink_metadata(self.p(path))).map(|m| describe(&m)),
            Op::Chmod {
                path,
                mode,
                as_user,
            } => {
                let _as = as_user.then(|| As::user(USER));
                os(fs::set_permissions(
                    self.p(path),
                    fs::Permissions::from_mode(*mode),
                ))
                .map(|_| String::new())
            }
            Op::Chown {
                path,
                uid,
                gid,
                as_user,
            } => {
                let _as = as_user.then(|| As::user(USER));
                os(std::os::unix::fs::lchown(self.p(path), *uid, *gid)).map(|_| String::new())
            }
            Op::Utimens { path, secs } => {
                let t = TimeSpec::new(*secs, 123_456_789);
                nx(utimensat(
                    AT_FDCWD,
                    &self.p(path),
                    &t,
                    &t,
                    UtimensatFlags::NoFollowSymlink,
                ))?;
                let m = os(fs::symlink_metadata(self.p(path)))?;
                Ok(format!("{} {}", m.mtime(), m.mtime_nsec()))
            }
            Op::List { dir } => {
                let mut v: Vec<String> = os(fs::read_dir(self.p(dir)))?
                    .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect::<std::io::Result<_>>()
                    .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
                v.sort();
                Ok(v.join(" "))
            }
            Op::ReaddirMutating { dir, after, create } => {
                self.readdir_mutating(dir, *after, create)
            }
            Op::Setxattr {
                path,
                name,
                len,
                seed,
                flags,
                follow,
                as_user,
            } => {
                let _as = as_user.then(|| As::user(USER));
                let (p, v) = (self.p(path), pattern(*seed, *len));
                let flags = XattrFlags::from_bits_retain(*flags);
                rx(if *follow {
                    rustix::fs::setxattr(&p, *name, &v, flags)
                } else {
                    rustix::fs::lsetxattr(&p, *name, &v, flags)
                })
                .map(|_| String::new())
            }
            Op::Getxattr {
                path,
                name,
                size,
                follow,
                as_user,
            } => {
                let _as = as_user.then(|| As::user(USER));
                let p = self.p(path);
                let mut buf = vec![0; *size];
                let n = rx(match (*follow, *size) {
                    (true, 0) => rustix::fs::getxattr_query(&p, *name),
                    (false, 0) => rustix::fs::lgetxattr_query(&p, *name),
                    (true, _) => rustix::fs::getxattr(&p, *name, &mut buf[..]),
                    (false, _) => rustix::fs::lgetxattr(&p, *name, &mut buf[..]),
                })?;
                Ok(match size {
                    0 => format!("size {n}"),
                    _ => digest(&buf[..n]),
                })
            }
            Op::Listxattr { path, size, follow } => {
                let p = self.p(path);
                let mut buf = vec![0; *size];
                let n = rx(match (*follow, *size) {
                    (true, 0) => rustix::fs::listxattr_query(&p),
                    (false, 0) => rustix::fs::llistxattr_query(&p),
                    (true, _) => rustix::fs::listxattr(&p, &mut buf[..]),
                    (false, _) => rustix::fs::llistxattr(&p, &mut buf[..]),
                })?;
                Ok(match size {
                    0 => format!("size {n}"),
                    _ => xattr_list(&buf[..n]),
                })
            }
            Op::Removexattr {
                path,
                name,
                follow,
                as_user,
            } => {
                let _as = as_user.then(|| As::user(USER));
                let p = self.p(path);
                os(if *follow {
                    xattr::remove_deref(&p, name)
                } else {
                    xattr::remove(&p, name)
                })
                .map(|_| String::new())
            }
        }
    }

    /// Reads `dir`, and after `after` entries unlinks the last name it has
    /// not seen yet and creates `create`. POSIX: every name present before
    /// and not removed is returned exactly once; the changed ones may or may
    /// not be. Answers the names that must be there, and the listing after.
    fn readdir_mutating(&mut self, dir: &str, after: usize, create: &str) -> Outcome {
        let d = self.p(dir);
        let before: HashSet<String> = os(fs::read_dir(&d))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let mut seen: Vec<String> = Vec::new();
        let mut removed = None;
        let mut it = os(fs::read_dir(&d))?;
        loop {
            if seen.len() == after && removed.is_none() {
                let mut rest: Vec<&String> = before.iter().filter(|n| !seen.contains(n)).collect();
                rest.sort();
                if let Some(victim) = rest.last() {
                    let _ = fs::remove_file(d.join(victim));
                    removed = Some((*victim).clone());
                }
                // O_NONBLOCK: `create` may have become a FIFO by a rename.
                let _ = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(d.join(create))
                    .and_then(|mut f| f.write_all(b"new"));
                removed.get_or_insert_with(String::new);
            }
            match it.next() {
                Some(e) => seen.push(os(e)?.file_name().to_string_lossy().into_owned()),
                None => break,
            }
        }
        let mut uniq = HashSet::new();
        for n in &seen {
            assert!(
                uniq.insert(n),
                "readdir returned {n} twice in {}",
                d.display()
            );
        }
        let mut must: Vec<&String> = before
            .iter()
            .filter(|n| Some(*n) != removed.as_ref() && *n != create)
            .collect();
        must.sort();
        for n in &must {
            assert!(
                uniq.contains(n),
                "readdir skipped {n}, present all along, in {}",
                d.display()
            );
        }
        let mut after_list: Vec<String> = os(fs::read_dir(&d))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        after_list.sort();
        Ok(format!("{must:?} then {after_list:?}"))
    }
}

/// Everything under `root`, keyed by relative path: the description and the
/// content (file bytes, symlink target).
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let m = fs::symlink_metadata(e.path()).unwrap();
            let content = if m.file_type().is_symlink() {
                fs::read_link(e.path()).unwrap().display().to_string()
            } else if m.is_file() {
                digest(&fs::read(e.path()).unwrap())
            } else {
                String::new()
            };
            if m.is_dir() {
                stack.push(r.clone());
            }
            out.insert(
                r.display().to_string(),
                format!("{} {content} xattrs [{}]", describe(&m), xattrs(&e.path())),
            );
        }
    }
    out
}

fn compare_trees(a: &Path, b: &Path, ctx: &str) {
    let (ta, tb) = (tree(a), tree(b));
    for (k, v) in &ta {
        assert_eq!(Some(v), tb.get(k), "{ctx}: {k} through the mount vs plain");
    }
    for k in tb.keys() {
        assert!(ta.contains_key(k), "{ctx}: {k} only in the plain directory");
    }
}

#[test]
fn random_operations_match_a_local_file_system() {
    differential(|fs| fs.allow_other = true, 2);
}

/// The same with plain READDIR and one serving thread.
#[test]
fn random_operations_match_a_local_file_system_plain_readdir_one_thread() {
    differential(
        |fs| {
            fs.allow_other = true;
            fs.readdirplus = false;
        },
        1,
    );
}

fn differential(configure: impl FnOnce(&mut passthrough::Passthrough), threads: usize) {
    require_mount();
    let seed = std::env::var("FUSE_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let ops: usize = std::env::var("FUSE_DIFF_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    eprintln!("fuse differential: seed {seed} (FUSE_DIFF_SEED={seed} replays), {ops} operations");
    let mut rig = Rig::with(threads, configure);
    let plain = rig.dir.join("plain");
    fs::create_dir(&plain).unwrap();
    fs::create_dir(rig.m("t")).unwrap();
    for d in [&plain, &rig.m("t")] {
        // Another user may create at the top.
        fs::set_permissions(d, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let mut mount = Side {
        root: rig.m("t"),
        slots: (0..SLOTS).map(|_| None).collect(),
    };
    let mut local = Side {
        root: plain.clone(),
        slots: (0..SLOTS).map(|_| None).collect(),
    };
    let mut rng = Rng::new(seed);
    let mut counts: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut existing = Vec::new();
    // FUSE_DIFF_TRACE=1 prints each operation before it runs.
    let trace = std::env::var_os("FUSE_DIFF_TRACE").is_some();
    for step in 0..ops {
        if step % 16 == 0 {
            existing = tree(&local.root).into_keys().collect();
        }
        let op = draw(&mut rng, &existing);
        if trace {
            eprintln!("step {step}: {op:?}");
        }
        let (a, b) = (mount.apply(&op), local.apply(&op));
        for (side, r) in [("through the mount", &a), ("in the plain directory", &b)] {
            assert!(
                !r.as_ref().is_ok_and(|v| v.starts_with("INVALID")),
                "seed {seed} step {step}: {op:?} {side}: {r:?}"
            );
        }
        assert_eq!(
            a, b,
            "seed {seed} step {step}: {op:?}: through the mount vs plain directory"
        );
        let name = format!("{op:?}");
        let name = name.split([' ', '{']).next().unwrap_or("").to_string();
        let c = counts.entry(name).or_default();
        c.0 += 1;
        c.1 += u32::from(a.is_err());
        if step % 500 == 499 {
            compare_trees(
                &mount.root,
                &local.root,
                &format!("seed {seed} step {step}"),
            );
        }
    }
    drop(mount.slots.drain(..));
    drop(local.slots.drain(..));
    compare_trees(&rig.m("t"), &plain, &format!("seed {seed} at the end"));
    compare_trees(
        &rig.s("t"),
        &plain,
        &format!("seed {seed} at the end, the source"),
    );
    eprintln!("fuse differential: operation (count, of which errors): {counts:?}");
    // The run exercised both outcomes of the operations that matter.
    for op in [
        "Open",
        "Pwrite",
        "Append",
        "Pread",
        "Rename",
        "Link",
        "Unlink",
        "Mkdir",
        "Rmdir",
        "Chmod",
        "Chown",
        "Fallocate",
        "Truncate",
        "Symlink",
        "Utimens",
        "Setxattr",
        "Getxattr",
        "Listxattr",
        "Removexattr",
    ] {
        let (n, err) = counts.get(op).copied().unwrap_or_default();
        assert!(
            n > 0 && err < n,
            "seed {seed}: {op}: {n} runs, {err} errors"
        );
    }
    rig.unmount();
}
