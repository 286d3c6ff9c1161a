//! The example FUSE passthrough (`examples/fuse_passthrough`) mounted for
//! real and driven through the kernel: files created, written at offsets,
//! read back, renamed, synced, listed, truncated and deleted through the
//! mount, compared with the source directory; a `cp -a` of a small tree and
//! `diff -r`. The file system runs in this process (best-effort guards: no
//! capability needed) and is mounted with mount(2) on /dev/fuse, which needs
//! root; without root or /dev/fuse the tests fail with that reason.
//!
//! Every mount is undone by a drop guard (`umount -l` if the session did not
//! unmount), also when a test panics; a watchdog aborts the FUSE connection,
//! unmounts and aborts the run if the workload hangs (`fuse/rig.rs`).

use reclaim_scope_examples::fuse as passthrough;

use reclaim_scope_examples::fuse::rig;

use reclaim_scope_examples::testkit::pattern;

use rig::{names, require_mount, run, wait_for, Rig};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[test]
fn workload_through_the_kernel_matches_the_source() {
    require_mount();
    let mut rig = Rig::new(1);

    // Create and write patterns at scattered offsets (sparse regions between).
    let writes: [(u64, usize); 5] = [
        (0, 4096),
        (8192, 100),
        (1 << 20, 300_000),
        (5 << 20, 4096),
        (3 << 20, 1),
    ];
    {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(rig.m("data.bin"))
            .unwrap();
        for (i, &(off, len)) in writes.iter().enumerate() {
            f.write_all_at(&pattern(i as u64 + 1, len), off).unwrap();
        }
        f.sync_all().unwrap(); // FUSE_FSYNC
        f.sync_data().unwrap();
        // Read back through the mount, on the same descriptor.
        for (i, &(off, len)) in writes.iter().enumerate() {
            let mut buf = vec![0; len];
            f.read_exact_at(&mut buf, off).unwrap();
            assert_eq!(buf, pattern(i as u64 + 1, len), "read back at {off}");
        }
    }
    let through_mount = fs::read(rig.m("data.bin")).unwrap();
    let in_source = fs::read(rig.s("data.bin")).unwrap();
    assert_eq!(through_mount.len(), (5 << 20) + 4096);
    assert!(through_mount == in_source, "mount and source differ");
    assert!(
        in_source[4096..8192].iter().all(|&b| b == 0),
        "hole is zero"
    );

    // Appends and sequential reads with std's buffered I/O.
    {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(rig.m("data.bin"))
            .unwrap();
        f.write_all(b"tail").unwrap();
        let mut f = fs::File::open(rig.m("data.bin")).unwrap();
        f.seek(SeekFrom::End(-4)).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "tail");
    }

    // Truncate (setattr size), chmod (setattr mode), utimes.
    fs::OpenOptions::new()
        .write(true)
        .open(rig.m("data.bin"))
        .unwrap()
        .set_len(12_345)
        .unwrap();
    assert_eq!(fs::metadata(rig.s("data.bin")).unwrap().len(), 12_345);
    assert_eq!(fs::metadata(rig.m("data.bin")).unwrap().len(), 12_345);
    fs::set_permissions(rig.m("data.bin"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(rig.s("data.bin"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    run(
        "touch",
        &[
            "-d".as_ref(),
            "2020-02-02 02:02:02".as_ref(),
            rig.m("data.bin").as_os_str(),
        ],
    );
    assert_eq!(
        fs::metadata(rig.s("data.bin")).unwrap().modified().unwrap(),
        fs::metadata(rig.m("data.bin")).unwrap().modified().unwrap()
    );

    // Directories, rename of a file and of a directory with contents.
    fs::create_dir(rig.m("d1")).unwrap();
    fs::create_dir(rig.m("d1/inner")).unwrap();
    fs::write(rig.m("d1/inner/f"), b"inner file").unwrap();
    fs::rename(rig.m("data.bin"), rig.m("d1/moved.bin")).unwrap();
    assert!(!rig.s("data.bin").exists());
    assert_eq!(fs::metadata(rig.s("d1/moved.bin")).unwrap().len(), 12_345);
    fs::rename(rig.m("d1"), rig.m("d2")).unwrap();
    assert_eq!(fs::read(rig.m("d2/inner/f")).unwrap(), b"inner file");
    assert_eq!(fs::read(rig.s("d2/inner/f")).unwrap(), b"inner file");
    assert_eq!(names(&rig.mnt), names(&rig.src));
    assert_eq!(names(&rig.m("d2")), ["inner", "moved.bin"]);
    // Rename over an existing file replaces it.
    fs::write(rig.m("d2/other"), b"other").unwrap();
    fs::rename(rig.m("d2/other"), rig.m("d2/moved.bin")).unwrap();
    assert_eq!(fs::read(rig.m("d2/moved.bin")).unwrap(), b"other");

    // A file changed behind the mount's back is seen (after the attr TTL
    // or on open) and one removed behind its back is ENOENT.
    fs::write(rig.s("outside"), b"made in the source").unwrap();
    assert_eq!(fs::read(rig.m("outside")).unwrap(), b"made in the source");
    fs::remove_file(rig.s("outside")).unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // entry TTL
    let e = fs::metadata(rig.m("outside")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");

    // Errors map to the right errno.
    let e = fs::create_dir(rig.m("d2")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
    let e = fs::remove_dir(rig.m("d2")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY), "{e}");
    let e = fs::read(rig.m("no/such/file")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");

    // statfs is the source's.
    run("stat", &["-f".as_ref(), rig.mnt.as_os_str()]);

    // Delete everything through the mount.
    fs::remove_file(rig.m("d2/moved.bin")).unwrap();
    fs::remove_file(rig.m("d2/inner/f")).unwrap();
    fs::remove_dir(rig.m("d2/inner")).unwrap();
    fs::remove_dir(rig.m("d2")).unwrap();
    assert!(names(&rig.src).is_empty(), "{:?}", names(&rig.src));
    assert!(names(&rig.mnt).is_empty());

    rig.unmount();
}

#[test]
fn inode_table_holds_looked_up_names_only() {
    use std::os::unix::fs::{DirEntryExt, MetadataExt};
    require_mount();
    // Plain READDIR: READDIRPLUS would look every listed name up.
    let mut rig = Rig::with(2, |fs| fs.readdirplus = false);
    let stats = rig.stats.clone();
    let inodes = || stats.inodes.load(Ordering::Relaxed);
    // Names made behind the mount's back.
    fs::create_dir(rig.s("d")).unwrap();
    for i in 0..300 {
        fs::write(rig.s(&format!("d/f{i}")), b"x").unwrap();
    }
    let listing = |rig: &Rig| -> Vec<(String, u64)> {
        fs::read_dir(rig.m("d"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().to_string_lossy().into_owned(), e.ino())
            })
            .collect()
    };
    // READDIR lists every name and registers none of them.
    let before = listing(&rig);
    assert_eq!(before.len(), 300);
    assert!(
        before
            .iter()
            .all(|(_, ino)| *ino == passthrough::UNKNOWN_INO),
        "names never looked up have d_ino FUSE_UNKNOWN_INO"
    );
    assert_eq!(inodes(), 2, "the root and d, after READDIR of 300 names");
    // LOOKUP registers; READDIR then agrees with stat.
    let mut st_ino = std::collections::HashMap::new();
    for i in 0..300 {
        let m = fs::symlink_metadata(rig.m(&format!("d/f{i}"))).unwrap();
        st_ino.insert(format!("f{i}"), m.ino());
    }
    assert_eq!(inodes(), 302);
    for (name, ino) in listing(&rig) {
        assert_eq!(Some(&ino), st_ino.get(&name), "d_ino of {name}");
    }
    // An unlinked file nobody holds open is evicted by the kernel at once,
    // and its FORGET (queued, asynchronous) closes the entry's descriptor.
    for i in 0..150 {
        fs::remove_file(rig.m(&format!("d/f{i}"))).unwrap();
    }
    wait_for("FORGET of the unlinked inodes", || inodes() == 152);
    rig.unmount();
}

#[test]
fn symlinks_and_hard_links_through_the_mount() {
    use std::os::unix::fs::{symlink, MetadataExt};
    require_mount();
    let mut rig = Rig::new(2);
    fs::write(rig.m("a"), b"first").unwrap();
    // A relative symlink, made and read through the kernel.
    symlink("a", rig.m("l")).unwrap();
    assert_eq!(fs::read_link(rig.m("l")).unwrap(), Path::new("a"));
    assert_eq!(
        fs::read_link(rig.s("l")).unwrap(),
        Path::new("a"),
        "in the source"
    );
    assert!(fs::symlink_metadata(rig.m("l"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::read(rig.m("l")).unwrap(),
        b"first",
        "followed by the kernel"
    );
    // A dangling one: readlink works, following it is ENOENT.
    symlink("nowhere", rig.m("d")).unwrap();
    assert_eq!(fs::read_link(rig.m("d")).unwrap(), Path::new("nowhere"));
    assert_eq!(
        fs::metadata(rig.m("d")).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    // Creating over an existing name is EEXIST, as in the source.
    assert_eq!(
        symlink("a", rig.m("a")).unwrap_err().raw_os_error(),
        Some(libc::EEXIST)
    );
    // A hard link is the same inode under two names: a write through one
    // name is read through the other at once (one page and attribute
    // cache), and the source counts two links.
    fs::hard_link(rig.m("a"), rig.m("h")).unwrap();
    let (ma, mh) = (
        fs::metadata(rig.m("a")).unwrap(),
        fs::metadata(rig.m("h")).unwrap(),
    );
    assert_eq!(ma.ino(), mh.ino(), "one inode for both names");
    assert_eq!(
        (ma.nlink(), fs::metadata(rig.s("a")).unwrap().nlink()),
        (2, 2)
    );
    fs::write(rig.m("h"), b"second, longer").unwrap();
    assert_eq!(fs::read(rig.m("a")).unwrap(), b"second, longer");
    assert_eq!(names(&rig.mnt), ["a", "d", "h", "l"]);
    // Removing a symlink leaves its target; removing one name of a file
    // leaves the other, still served.
    fs::remove_file(rig.m("l")).unwrap();
    fs::remove_file(rig.m("a")).unwrap();
    assert_eq!(fs::read(rig.m("h")).unwrap(), b"second, longer");
    fs::write(rig.m("h"), b"third").unwrap();
    assert_eq!(fs::read(rig.s("h")).unwrap(), b"third");
    assert_eq!(fs::metadata(rig.m("h")).unwrap().nlink(), 1);
    assert_eq!(names(&rig.src), ["d", "h"]);
    rig.unmount();
}

#[test]
fn cp_a_of_a_tree_and_diff_r() {
    require_mount();
    // Two serving threads: fuser's multi-threaded loop with cloned fds.
    let mut rig = Rig::new(2);
    // A small tree: nested dirs, empty and larger files, symlinks.
    let tree = rig.dir.join("tree");
    for d in ["a", "a/b", "a/b/c", "empty-dir"] {
        fs::create_dir_all(tree.join(d)).unwrap();
    }
    for (i, (f, len)) in [
        ("top.txt", 10),
        ("a/one", 0),
        ("a/b/two", 70_000),
        ("a/b/c/three", 1 << 20),
        ("a/b/c/four", 4097),
    ]
    .iter()
    .enumerate()
    {
        fs::write(tree.join(f), pattern(i as u64 + 7, *len)).unwrap();
    }
    fs::set_permissions(tree.join("top.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("b/c/three", tree.join("a/to-three")).unwrap();
    std::os::unix::fs::symlink("../gone", tree.join("a/dangling")).unwrap();

    let dest = rig.m("copy");
    run("cp", &["-a".as_ref(), tree.as_os_str(), dest.as_os_str()]);
    // --no-dereference: compare symlinks as links (one is dangling).
    let diff_r = |other: &Path| {
        run(
            "diff",
            &[
                "-r".as_ref(),
                "--no-dereference".as_ref(),
                tree.as_os_str(),
                other.as_os_str(),
            ],
        )
    };
    diff_r(&dest);
    diff_r(&rig.s("copy"));
    // cp -a kept modes and times.
    let (a, b) = (
        fs::metadata(tree.join("top.txt")).unwrap(),
        fs::metadata(rig.s("copy/top.txt")).unwrap(),
    );
    assert_eq!(a.permissions().mode(), b.permissions().mode());
    assert_eq!(a.modified().unwrap(), b.modified().unwrap());
    // ... and copied the symlinks as symlinks.
    for (l, t) in [("a/to-three", "b/c/three"), ("a/dangling", "../gone")] {
        assert_eq!(
            fs::read_link(rig.s(&format!("copy/{l}"))).unwrap(),
            Path::new(t)
        );
    }
    run("sync", &[dest.as_os_str()]);
    run("rm", &["-r".as_ref(), dest.as_os_str()]);
    assert!(!rig.s("copy").exists());
    rig.unmount();
}
