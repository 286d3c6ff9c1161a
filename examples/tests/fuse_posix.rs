//! POSIX semantics of the example FUSE passthrough (`examples/fuse_passthrough`),
//! mounted for real and driven through the kernel (issue 15): the three
//! cases of the issue with their exact expected results, and the operations
//! a file-handle passthrough adds (mknod/mkfifo, renameat2 flags, fallocate,
//! SEEK_DATA/SEEK_HOLE, copy_file_range, READDIRPLUS, requests as the
//! caller, extended attributes, fcntl locks on the source, READDIR at the
//! source's d_off cookies, lazy unmount of a busy mount). Needs root
//! and /dev/fuse.

use reclaim_scope_examples::fuse as passthrough;
use reclaim_scope_examples::fuse::rig;

use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::unistd::{setfsgid, setfsuid, Gid, Uid};
use rig::{is_mounted, names, require_mount, wait_for, Rig};
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

/// `futimens(2)`: both times of an open file to `secs`.
fn futimens(f: &fs::File, secs: i64) {
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::futimens(f, &t, &t).expect("futimens");
}

/// `(size, nlink)` of an open file, from `fstat`.
fn size_nlink(f: &fs::File) -> (u64, u64) {
    let m = f.metadata().expect("fstat");
    (m.len(), m.nlink())
}

/// Every step of issue 15's first case on one open descriptor: fstat,
/// ftruncate, fchmod, futimens, fchown, read and write, after its name was
/// unlinked, and on a file replaced by a rename.
fn open_file_survives_its_name(rig: &Rig) {
    fs::write(rig.m("a"), b"hello world").unwrap();
    let a = OpenOptions::new()
        .read(true)
        .write(true)
        .open(rig.m("a"))
        .unwrap();
    fs::remove_file(rig.m("a")).unwrap();
    assert_eq!(size_nlink(&a), (11, 0), "fstat after unlink");
    a.set_len(5).unwrap();
    assert_eq!(size_nlink(&a), (5, 0), "after ftruncate");
    a.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    assert_eq!(a.metadata().unwrap().mode() & 0o7777, 0o600, "fchmod");
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    futimens(&a, 1_000_000_000);
    assert_eq!(a.metadata().unwrap().modified().unwrap(), t, "futimens");
    std::os::unix::fs::fchown(&a, Some(1234), Some(5678)).unwrap();
    let m = a.metadata().unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678), "fchown");
    let mut buf = [0; 5];
    a.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"hello");
    a.write_all_at(b"HE", 0).unwrap();
    a.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"HEllo");

    // Replaced by a rename: the descriptor keeps the old file.
    fs::write(rig.m("b"), b"hi").unwrap();
    let b = OpenOptions::new()
        .read(true)
        .write(true)
        .open(rig.m("b"))
        .unwrap();
    fs::write(rig.m("c"), b"the new b").unwrap();
    fs::rename(rig.m("c"), rig.m("b")).unwrap();
    b.set_permissions(fs::Permissions::from_mode(0o640))
        .unwrap();
    futimens(&b, 1_000_000_000);
    b.set_len(2).unwrap();
    assert_eq!(size_nlink(&b), (2, 0), "the replaced file");
    let mut s = String::new();
    (&b).read_to_string(&mut s).unwrap();
    assert_eq!(s, "hi");
    assert_eq!(fs::read(rig.m("b")).unwrap(), b"the new b");
    assert_eq!(fs::read(rig.s("b")).unwrap(), b"the new b");
}

#[test]
fn case_1_open_files_survive_unlink_and_replacing_rename() {
    require_mount();
    let mut rig = Rig::new(2);
    open_file_survives_its_name(&rig);
    rig.unmount();
}

/// Issue 15's second case: a program reads a directory of 5000 files and
/// unlinks each as it goes; every name is visited once, none is left.
fn unlink_while_reading(rig: &Rig) {
    const N: usize = 5000;
    fs::create_dir(rig.s("many")).unwrap();
    for i in 0..N {
        fs::write(rig.s(&format!("many/file-{i:05}")), b"").unwrap();
    }
    let mut visited = std::collections::HashSet::new();
    for e in fs::read_dir(rig.m("many")).unwrap() {
        let e = e.unwrap();
        assert!(visited.insert(e.file_name()), "{:?} twice", e.file_name());
        fs::remove_file(e.path()).unwrap();
    }
    let left = fs::read_dir(rig.s("many")).unwrap().count();
    assert_eq!((visited.len(), left), (N, 0), "visited, left behind");
    fs::remove_dir(rig.m("many")).unwrap();
}

#[test]
fn case_2_unlinking_while_reading_a_directory_visits_every_name() {
    require_mount();
    let mut rig = Rig::new(2);
    unlink_while_reading(&rig);
    rig.unmount();
}

#[test]
fn case_2_also_with_plain_readdir() {
    require_mount();
    let mut rig = Rig::with(2, |fs| fs.readdirplus = false);
    unlink_while_reading(&rig);
    rig.unmount();
}

/// `(name, d_off)` of every entry from `dir`'s current position to its end,
/// read with `getdents64` in small batches (many READDIR requests).
fn cookies(dir: &fs::File) -> Vec<(String, u64)> {
    let mut buf = Vec::with_capacity(1024);
    let mut raw = rustix::fs::RawDir::new(dir, buf.spare_capacity_mut());
    let mut out = Vec::new();
    while let Some(e) = raw.next() {
        let e = e.unwrap();
        out.push((
            e.file_name().to_str().unwrap().to_owned(),
            e.next_entry_cookie(),
        ));
    }
    out
}

/// `lseek(2)` of a directory to a cookie: `seekdir(3)`.
fn seekdir(dir: &fs::File, cookie: u64) {
    let at = rustix::fs::seek(dir, rustix::fs::SeekFrom::Start(cookie)).unwrap();
    assert_eq!(at, cookie, "lseek answered another position");
}

fn open_dir(p: &std::path::Path) -> fs::File {
    fs::File::open(p).unwrap()
}

/// telldir/seekdir through the mount: the position after each entry is the
/// source's own `d_off` of that entry, and seeking to any of them (forward,
/// back, 0) resumes there as on the source.
fn seekdir_and_telldir(rig: &Rig) {
    fs::create_dir(rig.s("d")).unwrap();
    for i in 0..400 {
        fs::write(rig.s(&format!("d/entry-{i:04}")), b"").unwrap();
    }
    let source = cookies(&open_dir(&rig.s("d")));
    let d = open_dir(&rig.m("d"));
    let mount = cookies(&d);
    assert_eq!(source.len(), 402, "400 names, . and ..");
    assert_eq!(mount, source, "the mount's (name, d_off) vs the source's");
    for k in [0, 1, 57, 200, 399, 401] {
        seekdir(&d, source[k].1);
        assert_eq!(cookies(&d), source[k + 1..], "resumed after entry {k}");
    }
    seekdir(&d, 0);
    assert_eq!(cookies(&d), source, "rewinddir");
    // A fresh handle of the mount seeking straight to a cookie.
    let e = open_dir(&rig.m("d"));
    seekdir(&e, source[300].1);
    assert_eq!(cookies(&e), source[301..]);
    fs::remove_dir_all(rig.s("d")).unwrap();
}

#[test]
fn seekdir_telldir_are_the_sources_cookies() {
    require_mount();
    let mut rig = Rig::new(2);
    seekdir_and_telldir(&rig);
    rig.unmount();
}

#[test]
fn seekdir_telldir_also_with_plain_readdir() {
    require_mount();
    let mut rig = Rig::with(2, |fs| fs.readdirplus = false);
    seekdir_and_telldir(&rig);
    rig.unmount();
}

/// Resuming at an offset from an earlier READDIR after names were unlinked
/// and created meanwhile (through the mount and in the source): every name
/// that stays comes exactly once across the two halves, none twice.
fn resume_after_mutation(rig: &Rig) {
    fs::create_dir(rig.s("d")).unwrap();
    for i in 0..1000 {
        fs::write(rig.s(&format!("d/old-{i:04}")), b"").unwrap();
    }
    let d = open_dir(&rig.m("d"));
    let all = cookies(&d);
    assert_eq!(all.len(), 1002);
    let cut = all[500].1;
    let before: Vec<&str> = all[..=500].iter().map(|(n, _)| n.as_str()).collect();
    // Unlink every third name (on both sides of the cut, half of them
    // through the mount), create new ones.
    let mut gone = std::collections::HashSet::new();
    for (i, (name, _)) in all.iter().enumerate() {
        if name.starts_with("old-") && i % 3 == 0 {
            let side = if i % 2 == 0 { rig.m("d") } else { rig.s("d") };
            fs::remove_file(side.join(name)).unwrap();
            gone.insert(name.clone());
        }
    }
    for i in 0..300 {
        let side = if i % 2 == 0 { rig.m("d") } else { rig.s("d") };
        fs::write(side.join(format!("new-{i:04}")), b"").unwrap();
    }
    // The same handle, seeked back to the old cookie (the stream stands
    // elsewhere), and a fresh one seeked to it.
    for d in [d, open_dir(&rig.m("d"))] {
        seekdir(&d, cut);
        let after = cookies(&d);
        let mut seen = std::collections::HashSet::new();
        for (name, _) in &after {
            assert!(seen.insert(name.clone()), "{name} twice after the cut");
            if name.starts_with("old-") {
                assert!(!before.contains(&name.as_str()), "{name} repeated");
            }
        }
        let stayed: Vec<&String> = all[501..]
            .iter()
            .map(|(n, _)| n)
            .filter(|n| !gone.contains(*n))
            .collect();
        for n in &stayed {
            assert!(seen.contains(*n), "{n} skipped");
        }
        assert_eq!(
            after.iter().filter(|(n, _)| n.starts_with("old-")).count(),
            stayed.len(),
            "old names after the cut"
        );
    }
    fs::remove_dir_all(rig.s("d")).unwrap();
}

#[test]
fn resuming_at_an_old_offset_after_unlinks_and_creations() {
    require_mount();
    let mut rig = Rig::new(2);
    resume_after_mutation(&rig);
    rig.unmount();
}

#[test]
fn resuming_at_an_old_offset_also_with_plain_readdir() {
    require_mount();
    let mut rig = Rig::with(2, |fs| fs.readdirplus = false);
    resume_after_mutation(&rig);
    rig.unmount();
}

/// Issue 15's third case: appends through the mount interleaved with
/// appends in the source: A (mount), B (source), C (mount), D (source),
/// E (mount), 10 bytes each.
#[test]
fn case_3_appends_land_at_the_true_end() {
    require_mount();
    let mut rig = Rig::new(2);
    fs::write(rig.m("log"), b"").unwrap();
    let append = |p: &std::path::Path| OpenOptions::new().append(true).open(p).unwrap();
    let mut through_mount = append(&rig.m("log"));
    let mut in_source = append(&rig.s("log"));
    let rec = |c: u8| [c; 10];
    through_mount.write_all(&rec(b'A')).unwrap();
    in_source.write_all(&rec(b'B')).unwrap();
    through_mount.write_all(&rec(b'C')).unwrap();
    in_source.write_all(&rec(b'D')).unwrap();
    through_mount.write_all(&rec(b'E')).unwrap();
    drop((through_mount, in_source));
    let want: Vec<u8> = b"ABCDE".iter().flat_map(|&c| rec(c)).collect();
    assert_eq!(fs::read(rig.s("log")).unwrap(), want, "in the source");
    assert_eq!(fs::read(rig.m("log")).unwrap(), want, "through the mount");
    assert_eq!(fs::metadata(rig.m("log")).unwrap().len(), 50);
    rig.unmount();
}

#[test]
fn readdirplus_hands_out_references_forget_returns() {
    require_mount();
    let mut rig = Rig::new(2);
    let stats = rig.stats.clone();
    let inodes = || stats.inodes.load(Ordering::Relaxed);
    fs::create_dir(rig.s("d")).unwrap();
    for i in 0..300 {
        fs::write(rig.s(&format!("d/f{i}")), b"x").unwrap();
    }
    // READDIRPLUS_AUTO: the kernel asks for READDIRPLUS at offset 0 (and
    // after lookups in the directory), READDIR for the rest; each name that
    // came with READDIRPLUS is one reference.
    let listing: Vec<(String, u64)> = fs::read_dir(rig.m("d"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), {
                use std::os::unix::fs::DirEntryExt;
                e.ino()
            })
        })
        .collect();
    assert_eq!(listing.len(), 300);
    let n = inodes();
    assert!(n > 2 && n <= 302, "{n} inodes: READDIRPLUS looked none up");
    // A name that came with READDIRPLUS has its st_ino as d_ino, the rest
    // FUSE_UNKNOWN_INO: exactly the registered ones are known.
    let known = listing
        .iter()
        .filter(|(_, ino)| *ino != passthrough::UNKNOWN_INO)
        .count() as u64;
    assert_eq!(known, n - 2, "names with a d_ino vs inodes registered");
    for (name, ino) in listing
        .iter()
        .filter(|(_, i)| *i != passthrough::UNKNOWN_INO)
    {
        let m = fs::symlink_metadata(rig.m(&format!("d/{name}"))).unwrap();
        assert_eq!(m.ino(), *ino, "d_ino of {name}");
    }
    // The kernel lets go of the entries it no longer needs.
    for (name, _) in &listing {
        fs::remove_file(rig.m(&format!("d/{name}"))).unwrap();
    }
    wait_for("FORGET after unlink", || inodes() == 2);
    rig.unmount();
}

#[test]
fn mknod_fifo_and_devices_as_a_local_file_system() {
    require_mount();
    let mut rig = Rig::new(2);
    nix::unistd::mkfifo(&rig.m("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
    let m = fs::symlink_metadata(rig.s("fifo")).unwrap();
    assert!(m.file_type().is_fifo());
    assert_eq!(m.mode() & 0o777, 0o640 & !umask());
    let dev = nix::sys::stat::makedev(1, 3); // /dev/null
    mknod(
        &rig.m("null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        dev,
    )
    .unwrap();
    let (mm, ms) = (
        fs::symlink_metadata(rig.m("null")).unwrap(),
        fs::symlink_metadata(rig.s("null")).unwrap(),
    );
    assert!(mm.file_type().is_char_device() && ms.file_type().is_char_device());
    assert_eq!(
        (mm.rdev(), ms.rdev()),
        (dev, dev),
        "st_rdev through the mount"
    );
    let big = nix::sys::stat::makedev(259, 70_000);
    mknod(
        &rig.m("blk"),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o600),
        big,
    )
    .unwrap();
    assert_eq!(fs::symlink_metadata(rig.m("blk")).unwrap().rdev(), big);
    assert_eq!(fs::symlink_metadata(rig.s("blk")).unwrap().rdev(), big);
    // A socket node and a regular file by mknod.
    mknod(
        &rig.m("sock"),
        SFlag::S_IFSOCK,
        Mode::from_bits_truncate(0o600),
        0,
    )
    .unwrap();
    assert!(fs::symlink_metadata(rig.s("sock"))
        .unwrap()
        .file_type()
        .is_socket());
    let e = mknod(&rig.m("fifo"), SFlag::S_IFIFO, Mode::empty(), 0).unwrap_err();
    assert_eq!(e, nix::errno::Errno::EEXIST);
    assert_eq!(names(&rig.mnt), ["blk", "fifo", "null", "sock"]);
    rig.unmount();
}

fn umask() -> u32 {
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    nix::sys::stat::umask(old);
    old.bits()
}

#[test]
fn renameat2_noreplace_and_exchange() {
    require_mount();
    let mut rig = Rig::new(2);
    fs::write(rig.m("x"), b"xx").unwrap();
    fs::write(rig.m("y"), b"yyy").unwrap();
    let r = |a: &str, b: &str, f| renameat2(AT_FDCWD, &rig.m(a), AT_FDCWD, &rig.m(b), f);
    assert_eq!(
        r("x", "y", RenameFlags::RENAME_NOREPLACE),
        Err(nix::errno::Errno::EEXIST)
    );
    // An open descriptor follows its file through an exchange.
    let fx = fs::File::open(rig.m("x")).unwrap();
    r("x", "y", RenameFlags::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(rig.m("x")).unwrap(), b"yyy");
    assert_eq!(fs::read(rig.m("y")).unwrap(), b"xx");
    assert_eq!(fs::read(rig.s("x")).unwrap(), b"yyy");
    assert_eq!(fx.metadata().unwrap().len(), 2);
    assert_eq!(
        r("x", "nothing", RenameFlags::RENAME_EXCHANGE),
        Err(nix::errno::Errno::ENOENT)
    );
    r("x", "z", RenameFlags::RENAME_NOREPLACE).unwrap();
    assert_eq!(names(&rig.src), ["y", "z"]);
    // A directory and a file exchange places too.
    fs::create_dir(rig.m("dir")).unwrap();
    fs::write(rig.m("dir/inside"), b"i").unwrap();
    r("dir", "z", RenameFlags::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(rig.m("z/inside")).unwrap(), b"i");
    assert_eq!(fs::read(rig.m("dir")).unwrap(), b"yyy");
    drop(fx);
    rig.unmount();
}

#[test]
fn fallocate_seek_data_hole_and_copy_file_range() {
    use nix::fcntl::{fallocate, FallocateFlags};
    use nix::unistd::{lseek, Whence};
    require_mount();
    let mut rig = Rig::new(2);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(rig.m("sparse"))
        .unwrap();
    f.write_all_at(&[7; 4096], 1 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), (1 << 20) + 4096);
    // The source's extent map, through the kernel.
    assert_eq!(lseek(&f, 0, Whence::SeekData), Ok(1 << 20));
    assert_eq!(lseek(&f, 0, Whence::SeekHole), Ok(0));
    assert_eq!(lseek(&f, 1 << 20, Whence::SeekHole), Ok((1 << 20) + 4096));
    assert_eq!(
        lseek(&f, (1 << 20) + 4096, Whence::SeekData),
        Err(nix::errno::Errno::ENXIO)
    );
    // Mode 0 extends; KEEP_SIZE does not; a punched hole reads as zeros.
    fallocate(&f, FallocateFlags::empty(), 0, 3 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 3 << 20);
    fallocate(&f, FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, 8 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 3 << 20);
    fallocate(
        &f,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        1 << 20,
        4096,
    )
    .unwrap();
    let mut b = [1; 4096];
    f.read_exact_at(&mut b, 1 << 20).unwrap();
    assert_eq!(b, [0; 4096]);
    f.write_all_at(b"ranged", 100).unwrap();
    fallocate(&f, FallocateFlags::FALLOC_FL_ZERO_RANGE, 100, 3).unwrap();
    let mut b = [1; 6];
    f.read_exact_at(&mut b, 100).unwrap();
    assert_eq!(&b, b"\0\0\0ged");
    // The source's errno for what it refuses (PUNCH_HOLE without KEEP_SIZE).
    assert_eq!(
        fallocate(&f, FallocateFlags::FALLOC_FL_PUNCH_HOLE, 0, 4096),
        Err(nix::errno::Errno::EOPNOTSUPP)
    );
    // copy_file_range between two files of the mount.
    let g = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(rig.m("copy"))
        .unwrap();
    let (mut off_in, mut off_out) = (100i64, 0i64);
    let n = nix::fcntl::copy_file_range(&f, Some(&mut off_in), &g, Some(&mut off_out), 6).unwrap();
    assert_eq!(n, 6);
    assert_eq!(fs::read(rig.s("copy")).unwrap(), b"\0\0\0ged");
    drop((f, g));
    rig.unmount();
}

/// The calling thread as `uid`/`gid` for file-system access (FUSE requests
/// carry the fsuid/fsgid), back to root on drop.
struct As;

impl As {
    fn user(uid: u32, gid: u32) -> As {
        setfsgid(Gid::from_raw(gid));
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

#[test]
fn creating_requests_are_made_as_the_caller() {
    require_mount();
    let mut rig = Rig::with(2, |fs| fs.allow_other = true);
    fs::create_dir(rig.m("shared")).unwrap();
    fs::set_permissions(rig.m("shared"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::create_dir(rig.m("private")).unwrap();
    {
        let _as = As::user(4242, 4343);
        fs::write(rig.m("shared/file"), b"mine").unwrap();
        fs::create_dir(rig.m("shared/dir")).unwrap();
        std::os::unix::fs::symlink("file", rig.m("shared/link")).unwrap();
        nix::unistd::mkfifo(&rig.m("shared/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        fs::hard_link(rig.m("shared/file"), rig.m("shared/hard")).unwrap();
        // The kernel's default_permissions check, and the source's.
        let e = fs::write(rig.m("private/nope"), b"").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
        let e = std::os::unix::fs::chown(rig.m("shared/file"), Some(0), None).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        fs::set_permissions(rig.m("shared/file"), fs::Permissions::from_mode(0o600)).unwrap();
    }
    for name in ["file", "dir", "link", "fifo"] {
        let (m, s) = (
            fs::symlink_metadata(rig.m(&format!("shared/{name}"))).unwrap(),
            fs::symlink_metadata(rig.s(&format!("shared/{name}"))).unwrap(),
        );
        assert_eq!((s.uid(), s.gid()), (4242, 4343), "{name} in the source");
        assert_eq!((m.uid(), m.gid()), (4242, 4343), "{name} through the mount");
    }
    assert_eq!(
        fs::metadata(rig.s("shared/file")).unwrap().mode() & 0o777,
        0o600
    );
    // A set-group-ID directory gives its group, as the source decides.
    fs::create_dir(rig.m("sgid")).unwrap();
    std::os::unix::fs::chown(rig.m("sgid"), None, Some(777)).unwrap();
    fs::set_permissions(rig.m("sgid"), fs::Permissions::from_mode(0o2777)).unwrap();
    {
        let _as = As::user(4242, 4343);
        fs::write(rig.m("sgid/f"), b"").unwrap();
        fs::create_dir(rig.m("sgid/d")).unwrap();
    }
    assert_eq!(fs::metadata(rig.s("sgid/f")).unwrap().gid(), 777);
    let d = fs::metadata(rig.s("sgid/d")).unwrap();
    assert_eq!((d.uid(), d.gid()), (4242, 777));
    assert_ne!(d.mode() & 0o2000, 0, "the new directory inherits S_ISGID");
    rig.unmount();
}

/// The calling thread's supplementary groups as `groups` (the raw
/// per-thread setgroups(2)), back to none on drop.
struct Groups;

impl Groups {
    fn set(groups: &[u32]) -> Groups {
        let g: Vec<_> = groups
            .iter()
            .map(|&g| rustix::thread::Gid::from_raw(g))
            .collect();
        rustix::thread::set_thread_groups(&g).unwrap();
        Groups
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        rustix::thread::set_thread_groups(&[]).unwrap();
    }
}

/// A caller whose permission on the parent directory comes only from a
/// supplementary group: every creating request succeeds through the mount
/// as on the source (the daemon takes the requesting thread's groups), and
/// a caller without that group is refused by both.
#[test]
fn creating_requests_count_the_callers_supplementary_groups() {
    require_mount();
    let mut rig = Rig::with(2, |fs| fs.allow_other = true);
    fs::create_dir(rig.m("team")).unwrap();
    std::os::unix::fs::chown(rig.m("team"), Some(0), Some(5151)).unwrap();
    fs::set_permissions(rig.m("team"), fs::Permissions::from_mode(0o770)).unwrap();
    fs::write(rig.m("team/existing"), b"x").unwrap();
    {
        let _g = Groups::set(&[5151, 6161]);
        let _as = As::user(4242, 4343);
        fs::write(rig.m("team/file"), b"mine").unwrap();
        fs::create_dir(rig.m("team/dir")).unwrap();
        std::os::unix::fs::symlink("file", rig.m("team/link")).unwrap();
        nix::unistd::mkfifo(&rig.m("team/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        fs::rename(rig.m("team/file"), rig.m("team/renamed")).unwrap();
        fs::remove_file(rig.m("team/existing")).unwrap();
    }
    for name in ["renamed", "dir", "link", "fifo"] {
        let s = fs::symlink_metadata(rig.s(&format!("team/{name}"))).unwrap();
        assert_eq!((s.uid(), s.gid()), (4242, 4343), "{name} in the source");
    }
    {
        let _g = Groups::set(&[6161]);
        let _as = As::user(4242, 4343);
        let e = fs::write(rig.m("team/other"), b"").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
        let e = fs::create_dir(rig.m("team/other")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    }
    rig.unmount();
}

/// chmod/chown/utimensat rules for an owner who is not root, on the mount
/// as on the source: `S_ISGID` set by an owner outside the file's group is
/// cleared (chmod(2)), kept for a group of theirs (a supplementary one),
/// chown to such a group works, and `utimensat` with UTIME_OMIT, a given
/// time and UTIME_NOW sets what it names.
#[test]
fn chmod_chown_utimensat_rules_for_an_owner_as_on_the_source() {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    require_mount();
    let mut rig = Rig::with(2, |fs| fs.allow_other = true);
    for side in ["m", "s"] {
        let p = |n: &str| {
            if side == "m" {
                rig.m(n)
            } else {
                rig.s(n)
            }
        };
        let name = format!("sgid-{side}");
        fs::write(p(&name), b"x").unwrap();
        std::os::unix::fs::chown(p(&name), Some(4242), Some(777)).unwrap();
        {
            let _g = Groups::set(&[5151]);
            let _as = As::user(4242, 4343);
            fs::set_permissions(p(&name), fs::Permissions::from_mode(0o2755)).unwrap();
            let mode = fs::metadata(p(&name)).unwrap().mode() & 0o7777;
            assert_eq!(mode, 0o755, "{side}: S_ISGID cleared outside the group");
            std::os::unix::fs::chown(p(&name), None, Some(5151)).unwrap();
            // A supplementary group of the caller's: kept.
            fs::set_permissions(p(&name), fs::Permissions::from_mode(0o2755)).unwrap();
            let t = TimeSpec::new(1_000_000, 0);
            utimensat(
                AT_FDCWD,
                &p(&name),
                &TimeSpec::UTIME_OMIT,
                &t,
                UtimensatFlags::FollowSymlink,
            )
            .unwrap();
            utimensat(
                AT_FDCWD,
                &p(&name),
                &TimeSpec::UTIME_NOW,
                &TimeSpec::UTIME_OMIT,
                UtimensatFlags::FollowSymlink,
            )
            .unwrap();
        }
        let m = fs::metadata(rig.s(&name)).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.gid(), m.mtime()),
            (0o2755, 5151, 1_000_000),
            "{side}: mode, group, mtime"
        );
    }
    rig.unmount();
}

/// Outcome of one probe: `Ok(detail)` or the errno.
type Probe = (&'static str, Result<String, i32>);

/// pjdfstest-like probes of namespace rules under `base`: link counts,
/// rename of a directory over a non-empty one and into itself, rmdir of a
/// non-empty directory and of ".", ENAMETOOLONG, O_EXCL (also on a dangling
/// symlink), symlink loops, truncate/open errnos, hard links of a
/// directory, rename between hard links of one inode, trailing slashes; and
/// a sticky directory's rules for another user (fsuid 4343).
fn namespace_probes(base: &std::path::Path) -> Vec<Probe> {
    use std::os::unix::fs::symlink;
    let p = |n: &str| base.join(n);
    let e = |r: std::io::Result<String>| r.map_err(|e| e.raw_os_error().unwrap());
    let ok = |r: std::io::Result<()>| e(r.map(|()| String::new()));
    let open = |n: &str, flags: i32| {
        ok(OpenOptions::new()
            .read(flags & libc::O_ACCMODE != libc::O_WRONLY)
            .write(flags & libc::O_ACCMODE != libc::O_RDONLY)
            .create(flags & libc::O_CREAT != 0)
            .custom_flags(flags & !(libc::O_ACCMODE | libc::O_CREAT))
            .open(p(n))
            .map(drop))
    };
    use std::os::unix::fs::OpenOptionsExt;
    fs::create_dir_all(p("d/x")).unwrap();
    fs::create_dir(p("e")).unwrap();
    fs::write(p("e/f"), b"x").unwrap();
    let nlink = |n: &str| e(fs::symlink_metadata(p(n)).map(|m| m.nlink().to_string()));
    let long = "a".repeat(256);
    let mut out: Vec<Probe> = vec![
        ("nlink of a dir with a subdir", nlink("d")),
        (
            "rename dir over non-empty dir",
            ok(fs::rename(p("d"), p("e"))),
        ),
        ("rename dir into itself", ok(fs::rename(p("d"), p("d/x/y")))),
        ("rmdir non-empty", ok(fs::remove_dir(p("e")))),
        ("rmdir .", ok(fs::remove_dir(p("d/.")))),
        ("create a 256-byte name", ok(fs::write(p(&long), b""))),
        ("stat a 256-byte name", ok(fs::metadata(p(&long)).map(drop))),
        (
            "O_EXCL on a file",
            open("e/f", libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL),
        ),
        ("dangling symlink", ok(symlink("nowhere", p("dangling")))),
        (
            "O_EXCL on a dangling symlink",
            open("dangling", libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL),
        ),
        (
            "symlink loop",
            ok(symlink("l2", p("l1")).and_then(|()| symlink("l1", p("l2")))),
        ),
        ("open a loop", open("l1", libc::O_RDONLY)),
        (
            "O_NOFOLLOW on a symlink",
            open("l1", libc::O_RDONLY | libc::O_NOFOLLOW),
        ),
        (
            "truncate a dir",
            ok(nix::unistd::truncate(&p("d"), 0).map_err(std::io::Error::from)),
        ),
        ("open a dir for writing", open("d", libc::O_WRONLY)),
        (
            "O_DIRECTORY on a file",
            open("e/f", libc::O_RDONLY | libc::O_DIRECTORY),
        ),
        ("unlink a dir", ok(fs::remove_file(p("d")))),
        ("rmdir a file", ok(fs::remove_dir(p("e/f")))),
        ("hard link a dir", ok(fs::hard_link(p("d"), p("dl")))),
        ("hard link", ok(fs::hard_link(p("e/f"), p("e/g")))),
        ("nlink after link", nlink("e/f")),
        (
            "rename onto another link of the inode",
            ok(fs::rename(p("e/f"), p("e/g"))),
        ),
        ("both names stay", e(Ok(names(&p("e")).join(",")))),
        ("rename file over dir", ok(fs::rename(p("e/g"), p("d")))),
        ("rename dir over file", ok(fs::rename(p("d/x"), p("e/g")))),
        ("mkdir over a dir", ok(fs::create_dir(p("e")))),
        ("stat file/", ok(fs::metadata(p("e/g/")).map(drop))),
        ("create under a file", ok(fs::write(p("e/g/z"), b""))),
        ("rename to .", ok(fs::rename(p("d/x"), p("d/.")))),
    ];
    // A sticky directory: only the owner of a file (or of the directory)
    // may unlink or rename it.
    fs::create_dir(p("st")).unwrap();
    fs::set_permissions(p("st"), fs::Permissions::from_mode(0o1777)).unwrap();
    for (n, id) in [("st/his", 4242), ("st/mine", 4343)] {
        fs::write(p(n), b"").unwrap();
        std::os::unix::fs::chown(p(n), Some(id), Some(id)).unwrap();
    }
    {
        let _as = As::user(4343, 4343);
        out.extend([
            ("sticky: unlink another's", ok(fs::remove_file(p("st/his")))),
            (
                "sticky: rename another's",
                ok(fs::rename(p("st/his"), p("st/x"))),
            ),
            (
                "sticky: rename over another's",
                ok(fs::rename(p("st/mine"), p("st/his"))),
            ),
            (
                "chmod another's",
                ok(fs::set_permissions(
                    p("st/his"),
                    fs::Permissions::from_mode(0o777),
                )),
            ),
            (
                "chown own to root's group",
                ok(std::os::unix::fs::chown(p("st/mine"), None, Some(0))),
            ),
            ("sticky: unlink own", ok(fs::remove_file(p("st/mine")))),
        ]);
    }
    out
}

/// The namespace probes give the same results and errnos through the mount
/// as on a plain directory of the source's file system.
#[test]
fn namespace_rules_and_errnos_as_the_source() {
    require_mount();
    let mut rig = Rig::with(2, |fs| fs.allow_other = true);
    let plain = rig.dir.join("plain");
    fs::create_dir(&plain).unwrap();
    let want = namespace_probes(&plain);
    // The probes hit the rules they name (on the plain directory).
    for (name, errno) in [
        ("rename dir over non-empty dir", libc::ENOTEMPTY),
        ("create a 256-byte name", libc::ENAMETOOLONG),
        ("open a loop", libc::ELOOP),
        ("sticky: unlink another's", libc::EPERM),
    ] {
        assert!(want.contains(&(name, Err(errno))), "{name}: {want:?}");
    }
    fs::create_dir(rig.m("p")).unwrap();
    let got = namespace_probes(&rig.m("p"));
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(g, w, "through the mount vs a plain directory");
    }
    assert_eq!(got.len(), want.len());
    rig.unmount();
}

#[test]
fn without_allow_other_other_users_are_refused() {
    require_mount();
    let mut rig = Rig::new(1);
    fs::write(rig.m("f"), b"x").unwrap();
    {
        let _as = As::user(4242, 4343);
        let e = fs::read(rig.m("f")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    }
    assert_eq!(fs::read(rig.m("f")).unwrap(), b"x");
    rig.unmount();
}

#[test]
fn a_busy_mount_is_detached_lazily() {
    require_mount();
    let mut rig = Rig::new(2);
    fs::write(rig.m("held"), b"open while unmounting").unwrap();
    let held = fs::File::open(rig.m("held")).unwrap();
    let mut mounted = rig.mounted.take().unwrap();
    let mut unmounter = mounted.take_unmounter().unwrap();
    let how = passthrough::unmount_or_detach(&mut unmounter, &rig.mnt).unwrap();
    assert_eq!(how, passthrough::Unmounted::Lazily);
    assert!(!is_mounted(&rig.mnt), "gone from the namespace");
    // The open file is still served; closing it ends the session.
    let mut s = String::new();
    (&held).read_to_string(&mut s).unwrap();
    assert_eq!(s, "open while unmounting");
    assert!(!mounted.ended(), "served while a file is open");
    drop(held);
    wait_for("the session to end", || mounted.ended());
    mounted.join().unwrap();
}

/// A `struct flock` of `typ` over `len` bytes at `start` (0: to the end).
fn flock(typ: i32, start: i64, len: i64) -> libc::flock {
    libc::flock {
        l_type: typ as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: len,
        l_pid: 0,
    }
}

#[derive(Clone, Copy)]
enum Lk {
    /// Traditional (process-owned) record locks: F_SETLK, F_GETLK.
    Posix,
    /// Open file description locks: F_OFD_SETLK, F_OFD_GETLK.
    Ofd,
}

fn setlk(f: &fs::File, kind: Lk, typ: i32, start: i64, len: i64) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    let fl = flock(typ, start, len);
    match kind {
        Lk::Posix => fcntl(f, FcntlArg::F_SETLK(&fl)),
        Lk::Ofd => fcntl(f, FcntlArg::F_OFD_SETLK(&fl)),
    }
    .map(drop)
}

/// `(l_type, l_start, l_len)` of the first lock conflicting with a `typ`
/// lock over `start`/`len`, or F_UNLCK.
fn getlk(f: &fs::File, kind: Lk, typ: i32, start: i64, len: i64) -> (i32, i64, i64) {
    use nix::fcntl::{fcntl, FcntlArg};
    let mut fl = flock(typ, start, len);
    match kind {
        Lk::Posix => fcntl(f, FcntlArg::F_GETLK(&mut fl)),
        Lk::Ofd => fcntl(f, FcntlArg::F_OFD_GETLK(&mut fl)),
    }
    .unwrap();
    if i32::from(fl.l_type) == libc::F_UNLCK {
        (libc::F_UNLCK, 0, 0)
    } else {
        (i32::from(fl.l_type), fl.l_start, fl.l_len)
    }
}

fn rw(p: &std::path::Path) -> fs::File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

/// fcntl locks taken through the mount are taken on the source (the
/// daemon's OFD lock per lock owner): they conflict with locks taken on
/// the source directly and the other way round, F_GETLK reports the
/// conflicting lock's type and range on both sides, an unlock frees the
/// range, and a close through the mount drops the closing process's locks
/// (POSIX). The test process's own traditional locks through the mount
/// and its OFD locks on the source are different owners, so they conflict.
#[test]
fn fcntl_locks_pass_through_to_the_source() {
    use nix::errno::Errno;
    require_mount();
    let mut rig = Rig::new(1);
    fs::write(rig.s("locked"), vec![0u8; 4096]).unwrap();
    let (m, m2, src) = (
        rw(&rig.m("locked")),
        rw(&rig.m("locked")),
        rw(&rig.s("locked")),
    );
    // Mount → source.
    setlk(&m, Lk::Posix, libc::F_WRLCK, 0, 10).unwrap();
    assert_eq!(
        setlk(&src, Lk::Ofd, libc::F_WRLCK, 5, 1),
        Err(Errno::EAGAIN),
        "the source sees the mount's write lock"
    );
    assert_eq!(
        setlk(&src, Lk::Ofd, libc::F_RDLCK, 9, 1),
        Err(Errno::EAGAIN)
    );
    setlk(&src, Lk::Ofd, libc::F_WRLCK, 10, 5).expect("outside the range");
    setlk(&src, Lk::Ofd, libc::F_UNLCK, 10, 5).unwrap();
    assert_eq!(
        getlk(&src, Lk::Ofd, libc::F_RDLCK, 0, 0),
        (libc::F_WRLCK, 0, 10)
    );
    // The process's own lock does not conflict with itself, through any of
    // its descriptors of the file.
    assert_eq!(getlk(&m2, Lk::Posix, libc::F_WRLCK, 0, 0).0, libc::F_UNLCK);
    setlk(&m2, Lk::Posix, libc::F_RDLCK, 100, 10).expect("same owner");
    // Closing any descriptor of the file drops all the process's locks.
    drop(m2);
    setlk(&src, Lk::Ofd, libc::F_WRLCK, 0, 0).expect("dropped at close");
    // Source → mount.
    setlk(&src, Lk::Ofd, libc::F_UNLCK, 0, 0).unwrap();
    setlk(&src, Lk::Ofd, libc::F_WRLCK, 100, 100).unwrap();
    assert_eq!(
        setlk(&m, Lk::Posix, libc::F_WRLCK, 150, 1),
        Err(Errno::EAGAIN),
        "the mount sees the source's write lock"
    );
    assert_eq!(
        getlk(&m, Lk::Posix, libc::F_WRLCK, 0, 0),
        (libc::F_WRLCK, 100, 100)
    );
    setlk(&src, Lk::Ofd, libc::F_UNLCK, 0, 0).unwrap();
    setlk(&src, Lk::Ofd, libc::F_RDLCK, 0, 0).unwrap();
    // Read locks share; a write lock through the mount conflicts.
    setlk(&m, Lk::Posix, libc::F_RDLCK, 0, 0).expect("read locks share");
    assert_eq!(
        setlk(&m, Lk::Posix, libc::F_WRLCK, 0, 1),
        Err(Errno::EAGAIN)
    );
    assert_eq!(
        getlk(&m, Lk::Posix, libc::F_WRLCK, 0, 0),
        (libc::F_RDLCK, 0, 0)
    );
    setlk(&src, Lk::Ofd, libc::F_UNLCK, 0, 0).unwrap();
    // An explicit unlock through the mount frees the range on the source.
    setlk(&m, Lk::Posix, libc::F_WRLCK, 0, 0).unwrap();
    assert_eq!(
        setlk(&src, Lk::Ofd, libc::F_WRLCK, 4000, 1),
        Err(Errno::EAGAIN)
    );
    setlk(&m, Lk::Posix, libc::F_UNLCK, 0, 0).unwrap();
    setlk(&src, Lk::Ofd, libc::F_WRLCK, 4000, 1).expect("released");
    setlk(&src, Lk::Ofd, libc::F_UNLCK, 0, 0).unwrap();
    // OFD locks through the mount: each open file of the mount is its own
    // owner, and the lock ends with the open file (RELEASE).
    let (a, b) = (rw(&rig.m("locked")), rw(&rig.m("locked")));
    setlk(&a, Lk::Ofd, libc::F_WRLCK, 0, 0).unwrap();
    assert_eq!(setlk(&b, Lk::Ofd, libc::F_WRLCK, 0, 1), Err(Errno::EAGAIN));
    assert_eq!(
        getlk(&b, Lk::Ofd, libc::F_RDLCK, 7, 1),
        (libc::F_WRLCK, 0, 0)
    );
    assert_eq!(
        setlk(&src, Lk::Ofd, libc::F_RDLCK, 0, 1),
        Err(Errno::EAGAIN)
    );
    drop(a);
    // RELEASE is asynchronous to close(2).
    wait_for("the OFD lock to end with its file", || {
        setlk(&src, Lk::Ofd, libc::F_WRLCK, 0, 0).is_ok()
    });
    drop((m, b, src));
    rig.unmount();
}

/// F_SETLKW through the mount waits for a lock held on the source without
/// blocking the (single) serving thread: the mount keeps answering while
/// one caller waits, and the wait ends with the lock granted once the
/// source lets go; the granted lock then holds on the source.
#[test]
fn setlkw_waits_without_blocking_the_serving_thread() {
    use nix::errno::Errno;
    use nix::fcntl::{fcntl, FcntlArg};
    require_mount();
    let mut rig = Rig::new(1);
    fs::write(rig.s("locked"), b"data").unwrap();
    let src = rw(&rig.s("locked"));
    setlk(&src, Lk::Ofd, libc::F_WRLCK, 0, 0).unwrap();
    let waiter_file = rw(&rig.m("locked"));
    let waiter = std::thread::spawn(move || {
        let fl = flock(libc::F_WRLCK, 0, 0);
        fcntl(&waiter_file, FcntlArg::F_OFD_SETLKW(&fl)).unwrap();
        waiter_file
    });
    // The serving thread keeps serving while the waiter waits; the waiter
    // cannot finish while the source holds the lock.
    // The daemon's wait shows in /proc/locks as a blocked ("->") OFD lock
    // on the source file.
    let ino = src.metadata().unwrap().ino();
    wait_for("the daemon to wait on the source's lock", || {
        fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.contains("-> OFDLCK") && l.contains(&format!(":{ino} ")))
    });
    for i in 0..20 {
        fs::write(rig.m(&format!("other-{i}")), b"x").unwrap();
        assert_eq!(fs::read(rig.m("locked")).unwrap(), b"data");
    }
    assert!(!waiter.is_finished(), "granted while the source holds it");
    setlk(&src, Lk::Ofd, libc::F_UNLCK, 0, 0).unwrap();
    let held = waiter.join().unwrap();
    assert_eq!(
        setlk(&src, Lk::Ofd, libc::F_RDLCK, 0, 1),
        Err(Errno::EAGAIN),
        "the waiter's lock holds on the source"
    );
    drop(held);
    wait_for("the lock to end with its file", || {
        setlk(&src, Lk::Ofd, libc::F_WRLCK, 0, 0).is_ok()
    });
    rig.unmount();
}

/// The errno of a rustix call.
fn rx<T>(r: rustix::io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.raw_os_error())
}

/// The errno of a std/xattr call.
fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("must fail")
        .raw_os_error()
        .expect("an OS error")
}

/// The `user.*` names of a listing, sorted.
fn user_names(names: xattr::XAttrs) -> Vec<String> {
    let mut v: Vec<String> = names
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.starts_with("user."))
        .collect();
    v.sort();
    v
}

#[test]
fn extended_attributes_pass_through_to_the_source() {
    use rustix::fs::XattrFlags;
    require_mount();
    let mut rig = Rig::with(2, |fs| fs.allow_other = true);
    fs::write(rig.m("f"), b"x").unwrap();
    fs::create_dir(rig.m("d")).unwrap();

    // A source without user xattrs (tmpfs before 6.6, some mount options)
    // must answer ENOTSUP through the mount too, both ways.
    fs::write(rig.s("probe"), b"").unwrap();
    if let Err(e) = xattr::set(rig.s("probe"), "user.probe", b"1") {
        assert_eq!(e.raw_os_error(), Some(libc::ENOTSUP), "{e}");
        eprintln!("the source has no user xattrs: checking ENOTSUP through the mount");
        assert_eq!(errno(xattr::set(rig.m("f"), "user.a", b"v")), libc::ENOTSUP);
        assert_eq!(errno(xattr::get(rig.m("f"), "user.a")), libc::ENOTSUP);
        rig.unmount();
        return;
    }

    // Set through the mount, seen in the source; an empty value is a value.
    xattr::set(rig.m("f"), "user.a", b"alpha").unwrap();
    xattr::set(rig.m("f"), "user.empty", b"").unwrap();
    xattr::set(rig.m("d"), "user.dir", b"D").unwrap();
    assert_eq!(
        xattr::get(rig.s("f"), "user.a").unwrap().as_deref(),
        Some(&b"alpha"[..])
    );
    assert_eq!(
        xattr::get(rig.s("f"), "user.empty").unwrap().as_deref(),
        Some(&b""[..])
    );
    assert_eq!(
        xattr::get(rig.s("d"), "user.dir").unwrap().as_deref(),
        Some(&b"D"[..])
    );
    // Set in the source, seen through the mount.
    xattr::set(rig.s("f"), "user.src", b"from the source").unwrap();
    assert_eq!(
        xattr::get(rig.m("f"), "user.src").unwrap().as_deref(),
        Some(&b"from the source"[..])
    );

    // GETXATTR: size 0 asks the size, a short buffer is ERANGE, an exact
    // one gets the bytes, a missing name is ENODATA.
    let f = rig.m("f");
    assert_eq!(rx(rustix::fs::getxattr_query(&f, "user.a")), Ok(5));
    assert_eq!(rx(rustix::fs::getxattr_query(&f, "user.empty")), Ok(0));
    let mut buf = [0u8; 5];
    assert_eq!(
        rx(rustix::fs::getxattr(&f, "user.a", &mut buf[..4])),
        Err(libc::ERANGE)
    );
    assert_eq!(rx(rustix::fs::getxattr(&f, "user.a", &mut buf)), Ok(5));
    assert_eq!(&buf, b"alpha");
    assert_eq!(
        rx(rustix::fs::getxattr(&f, "user.none", &mut buf)),
        Err(libc::ENODATA)
    );
    assert_eq!(xattr::get(&f, "user.none").unwrap(), None);

    // LISTXATTR: the same names as the source, with the same size rules.
    assert_eq!(
        user_names(xattr::list(&f).unwrap()),
        ["user.a", "user.empty", "user.src"]
    );
    assert_eq!(
        user_names(xattr::list(&f).unwrap()),
        user_names(xattr::list(rig.s("f")).unwrap())
    );
    assert_eq!(user_names(xattr::list(rig.m("d")).unwrap()), ["user.dir"]);
    let full = rx(rustix::fs::listxattr_query(rig.s("f"))).unwrap();
    assert_eq!(rx(rustix::fs::listxattr_query(&f)), Ok(full));
    let mut list = vec![0u8; full];
    assert_eq!(
        rx(rustix::fs::listxattr(&f, &mut list[..full - 1])),
        Err(libc::ERANGE)
    );
    assert_eq!(rx(rustix::fs::listxattr(&f, &mut list)), Ok(full));
    let mut src_list = vec![0u8; full];
    rustix::fs::listxattr(rig.s("f"), &mut src_list).unwrap();
    assert_eq!(list, src_list, "the list is the source's, byte for byte");

    // XATTR_CREATE / XATTR_REPLACE, answered by the source.
    assert_eq!(
        rx(rustix::fs::setxattr(
            &f,
            "user.a",
            b"again",
            XattrFlags::CREATE
        )),
        Err(libc::EEXIST)
    );
    assert_eq!(
        rx(rustix::fs::setxattr(
            &f,
            "user.new",
            b"n",
            XattrFlags::REPLACE
        )),
        Err(libc::ENODATA)
    );
    assert_eq!(xattr::get(rig.s("f"), "user.new").unwrap(), None);
    rx(rustix::fs::setxattr(
        &f,
        "user.a",
        b"replaced",
        XattrFlags::REPLACE,
    ))
    .unwrap();
    rx(rustix::fs::setxattr(
        &f,
        "user.new",
        b"created",
        XattrFlags::CREATE,
    ))
    .unwrap();
    assert_eq!(
        xattr::get(rig.s("f"), "user.a").unwrap().as_deref(),
        Some(&b"replaced"[..])
    );
    assert_eq!(
        xattr::get(rig.s("f"), "user.new").unwrap().as_deref(),
        Some(&b"created"[..])
    );

    // A value the source cannot store gets the source's own errno.
    let big = vec![b'v'; 60_000];
    let src_err = errno(xattr::set(rig.s("probe"), "user.big", &big));
    assert_eq!(errno(xattr::set(&f, "user.big", &big)), src_err);

    // REMOVEXATTR: gone in the source; again is ENODATA.
    xattr::remove(&f, "user.a").unwrap();
    assert_eq!(xattr::get(rig.s("f"), "user.a").unwrap(), None);
    assert_eq!(errno(xattr::remove(&f, "user.a")), libc::ENODATA);
    assert_eq!(
        user_names(xattr::list(&f).unwrap()),
        ["user.empty", "user.new", "user.src"]
    );

    // An open file whose name is gone keeps its attributes (the inode's
    // descriptor, not a path).
    let open = fs::File::open(rig.m("d")).unwrap();
    fs::remove_dir(rig.m("d")).unwrap();
    use xattr::FileExt as _;
    assert_eq!(
        open.get_xattr("user.dir").unwrap().as_deref(),
        Some(&b"D"[..])
    );
    open.set_xattr("user.late", b"L").unwrap();
    assert_eq!(
        open.get_xattr("user.late").unwrap().as_deref(),
        Some(&b"L"[..])
    );
    drop(open);

    // A symlink: the l*xattr calls act on the link itself. user.* is
    // EPERM to set and ENODATA to read (as on any local file system);
    // trusted.* (root) is stored on the link in the source, not on its
    // target; the following calls reach the target.
    std::os::unix::fs::symlink("f", rig.m("l")).unwrap();
    assert_eq!(errno(xattr::set(rig.m("l"), "user.x", b"1")), libc::EPERM);
    assert_eq!(
        rx(rustix::fs::lgetxattr(
            rig.m("l"),
            "user.x",
            &mut [0u8; 0][..]
        )),
        Err(libc::ENODATA)
    );
    xattr::set(rig.m("l"), "trusted.t", b"on the link").unwrap();
    assert_eq!(
        xattr::get(rig.s("l"), "trusted.t").unwrap().as_deref(),
        Some(&b"on the link"[..])
    );
    assert_eq!(xattr::get(rig.s("f"), "trusted.t").unwrap(), None);
    assert_eq!(
        xattr::get(rig.m("l"), "trusted.t").unwrap().as_deref(),
        Some(&b"on the link"[..])
    );
    assert_eq!(
        xattr::get_deref(rig.m("l"), "user.src").unwrap().as_deref(),
        Some(&b"from the source"[..])
    );
    xattr::set_deref(rig.m("l"), "user.via_link", b"t").unwrap();
    assert_eq!(
        xattr::get(rig.s("f"), "user.via_link").unwrap().as_deref(),
        Some(&b"t"[..])
    );
    xattr::remove(rig.m("l"), "trusted.t").unwrap();
    assert_eq!(xattr::get(rig.s("l"), "trusted.t").unwrap(), None);

    // As another user: the kernel's and the source's permission checks.
    fs::write(rig.m("theirs"), b"").unwrap();
    xattr::set(rig.m("theirs"), "user.r", b"r").unwrap();
    fs::set_permissions(rig.m("theirs"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(rig.m("mine"), b"").unwrap();
    std::os::unix::fs::chown(rig.m("mine"), Some(4242), Some(4343)).unwrap();
    fs::set_permissions(rig.m("mine"), fs::Permissions::from_mode(0o600)).unwrap();
    {
        let _as = As::user(4242, 4343);
        assert_eq!(
            errno(xattr::set(rig.m("theirs"), "user.u", b"1")),
            libc::EACCES
        );
        xattr::set(rig.m("mine"), "user.u", b"mine").unwrap();
        assert_eq!(errno(xattr::get(rig.m("theirs"), "user.r")), libc::EACCES);
        xattr::remove(rig.m("mine"), "user.u").unwrap();
        xattr::set(rig.m("mine"), "user.u", b"kept").unwrap();
    }
    assert_eq!(
        xattr::get(rig.s("mine"), "user.u").unwrap().as_deref(),
        Some(&b"kept"[..])
    );
    rig.unmount();
}

/// `--no-xattr`: every xattr call answers EOPNOTSUPP, as on a file system
/// without xattrs (the daemon's ENOSYS makes the kernel stop asking).
#[test]
fn without_xattrs_callers_get_eopnotsupp() {
    require_mount();
    let mut rig = Rig::with(1, |fs| fs.xattr = false);
    fs::write(rig.m("f"), b"x").unwrap();
    xattr::set(rig.s("f"), "user.src", b"1").unwrap();
    for _ in 0..2 {
        assert_eq!(
            errno(xattr::set(rig.m("f"), "user.a", b"v")),
            libc::EOPNOTSUPP
        );
        assert_eq!(errno(xattr::get(rig.m("f"), "user.src")), libc::EOPNOTSUPP);
        assert_eq!(errno(xattr::list(rig.m("f"))), libc::EOPNOTSUPP);
        assert_eq!(
            errno(xattr::remove(rig.m("f"), "user.src")),
            libc::EOPNOTSUPP
        );
    }
    assert_eq!(xattr::get(rig.s("f"), "user.a").unwrap(), None);
    assert_eq!(
        xattr::get(rig.s("f"), "user.src").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    rig.unmount();
}

/// `--source`/`--mountpoint` are checked before mounting: each must be an
/// existing directory (the errno kept, the flag named), and a mountpoint
/// inside the source — which would make the daemon wait on itself — is
/// refused; the source itself as mountpoint (a shadowing mount) is not.
#[test]
fn mount_paths_are_checked_and_a_mountpoint_inside_the_source_is_refused() {
    let base = std::env::temp_dir().join(format!("fuse-paths-{}", std::process::id()));
    let (src, inner, other, file) = (
        base.join("src"),
        base.join("src/a/inner"),
        base.join("other"),
        base.join("file"),
    );
    fs::create_dir_all(&inner).unwrap();
    fs::create_dir_all(&other).unwrap();
    fs::write(&file, b"x").unwrap();
    let check = passthrough::check_mount_paths;
    let e = check(&src, &inner).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("is inside --source"), "{e}");
    // Also when spelled with `..` or through a symlink to the source.
    std::os::unix::fs::symlink(&src, base.join("link")).unwrap();
    assert!(check(&base.join("link"), &base.join("other/../src/a")).is_err());
    let e = check(&src, &file).unwrap_err();
    assert_eq!(e.raw_os_error(), None, "wrapped with the flag");
    assert_eq!(e.kind(), std::io::ErrorKind::NotADirectory, "{e}");
    assert!(e.to_string().starts_with("--mountpoint "), "{e}");
    let e = check(&base.join("nosuch"), &other).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    assert!(e.to_string().starts_with("--source "), "{e}");
    assert_eq!(
        check(&file, &other).unwrap_err().kind(),
        std::io::ErrorKind::NotADirectory
    );
    // Allowed: a sibling, and the source itself.
    let (s, m) = check(&src, &other).unwrap();
    assert_eq!(
        (s, m),
        (src.canonicalize().unwrap(), other.canonicalize().unwrap())
    );
    assert!(check(&src, &src).is_ok());
    assert!(
        check(&inner, &src).is_ok(),
        "the source under the mountpoint is fine"
    );
    fs::remove_dir_all(&base).unwrap();
}
