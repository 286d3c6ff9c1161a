//! Tests of `NoFsFile` on the fake backend and on this host's kernel.

use super::*;
use crate::scope::tests::on_fake;
use crate::sys;
use crate::sys::fake::{self, FakeThread, IoScript, Mode};
use crate::IoFlusher;
use std::path::PathBuf;

/// A file in the temporary directory, removed on drop.
pub(crate) struct Temp {
    pub path: PathBuf,
    pub file: NoFsFile,
}

impl Temp {
    pub(crate) fn new(tag: &str) -> Temp {
        use std::sync::atomic::AtomicU32;
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "reclaim-scope-fs-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let file = NoFsFile::open(
            &path,
            OpenOptions::new().read(true).write(true).create_new(true),
        )
        .unwrap();
        Temp { path, file }
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn sets() -> u32 {
    fake::state().unwrap().set_calls
}
fn gets() -> u32 {
    fake::state().unwrap().get_calls
}
fn flagged_now() -> bool {
    fake::state().unwrap().flags & sys::PF_MEMALLOC_NOIO != 0
}

/// Every kind of call once, on `t`.
fn every_call(t: &Temp) {
    let f = &t.file;
    f.pwrite_nofs(b"abcd", 0).unwrap();
    f.write_all_at_nofs(b"efgh", 4).unwrap();
    let mut b = [0u8; 8];
    assert_eq!(f.pread_nofs(&mut b, 0).unwrap(), 8);
    f.read_exact_at_nofs(&mut b, 0).unwrap();
    assert_eq!(&b, b"abcdefgh");
    f.pwritev2_nofs(&[IoSlice::new(b"ij")], 8, RwFlags::empty())
        .unwrap();
    f.preadv2_nofs(&mut [IoSliceMut::new(&mut b)], 2, RwFlags::empty())
        .unwrap();
    assert_eq!(&b, b"cdefghij");
    f.sync_data_nofs().unwrap();
    f.sync_all_nofs().unwrap();
    f.allocate_nofs(0, 4096).unwrap();
    f.punch_hole_nofs(0, 4096).unwrap();
    f.zero_range_nofs(0, 4096).unwrap();
    f.set_len_nofs(10).unwrap();
}

const CALLS: usize = 12;

#[test]
fn flagged_thread_makes_no_syscall_beyond_the_io() {
    for mode in [Mode::Permitted, Mode::NotPermitted] {
        on_fake(FakeThread::flagged(mode), || {
            let t = Temp::new("flagged");
            fake::script_io([]);
            for policy in [NoFsPolicy::BestEffort, NoFsPolicy::Strict] {
                let mut t2 = Temp::new("flagged");
                t2.file.set_policy(policy);
                every_call(&t2);
            }
            every_call(&t);
            assert_eq!((sets(), gets()), (0, 0), "a flagged thread made a prctl");
            let log = fake::io_log();
            assert_eq!(log.len(), 3 * CALLS, "{log:#?}");
            assert!(log.iter().all(|c| c.flagged), "{log:#?}");
            assert!(flagged_now(), "a NoFsFile call cleared an inherited flag");
        });
    }
}

#[test]
fn unflagged_thread_pays_two_prctls_per_call_and_is_clear_after() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        let t = Temp::new("unflagged");
        fake::script_io([]);
        every_call(&t);
        assert_eq!(sets() as usize, 2 * CALLS);
        assert!(!flagged_now());
        let log = fake::io_log();
        assert_eq!(log.len(), CALLS);
        assert!(
            log.iter().all(|c| c.flagged),
            "I/O outside the scope: {log:#?}"
        );
    });
}

#[test]
fn inside_an_io_flusher_calls_are_free() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        let t = Temp::new("flusher");
        let flusher = IoFlusher::try_enter().unwrap();
        assert_eq!(sets(), 1);
        for i in 0..100u64 {
            t.file.pwrite_nofs(&i.to_le_bytes(), i * 8).unwrap();
        }
        every_call(&t);
        assert_eq!(sets(), 1, "calls inside an IoFlusher made a prctl");
        drop(flusher);
        assert_eq!(sets(), 2);
        assert!(!flagged_now());
    });
}

#[test]
fn strict_refusal_does_no_io_and_names_the_fix() {
    on_fake(FakeThread::new(Mode::NotPermitted), || {
        let mut t = Temp::new("strict");
        t.file.set_policy(NoFsPolicy::BestEffort);
        let f = &t.file;
        fake::script_io([]);
        let strict =
            NoFsFile::new(f.get_ref().try_clone().unwrap()).with_policy(NoFsPolicy::Strict);
        let e = strict.pwrite_nofs(b"must not land", 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let msg = e.to_string();
        assert!(msg.contains("not attempted"), "{msg}");
        assert!(msg.contains("CAP_SYS_RESOURCE"), "{msg}");
        assert!(msg.contains("offset 0"), "{msg}");
        assert!(std::error::Error::source(&e).is_some());
        let e = strict
            .pwritev2_nofs(&[IoSlice::new(b"x")], 0, RwFlags::DSYNC)
            .unwrap_err();
        assert_eq!(e.flags(), RwFlags::DSYNC);
        assert!(strict.sync_data_nofs().is_err());
        assert!(strict.set_len_nofs(100).is_err());
        assert!(fake::io_log().is_empty(), "strict refusal did I/O");
        assert_eq!(f.get_ref().metadata().unwrap().len(), 0);
        // Best effort on the same thread: the I/O is served unprotected.
        assert_eq!(f.pwrite_nofs(b"served", 0).unwrap(), 6);
        let log = fake::io_log();
        assert_eq!(log.len(), 1);
        assert!(!log[0].flagged);
        assert!(crate::degradation().is_some());
    });
}

#[test]
fn eintr_and_short_io_are_continued() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        let t = Temp::new("short");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
        fake::script_io([
            IoScript::Err(sio::EINTR),
            IoScript::Short(1000),
            IoScript::Err(sio::EINTR),
            IoScript::Err(sio::EINTR),
            IoScript::Short(1),
            IoScript::Short(4095),
        ]);
        t.file.write_all_at_nofs(&data, 100).unwrap();
        assert_eq!(fake::io_script_left(), 0);
        let offs: Vec<(u64, u64)> = fake::io_log().iter().map(|c| (c.offset, c.len)).collect();
        assert_eq!(
            offs,
            [
                (100, 10_000),
                (100, 10_000),
                (1100, 9000),
                (1100, 9000),
                (1100, 9000),
                (1101, 8999),
                (5196, 4904),
            ]
        );
        // One scope around the whole loop: 2 prctls, not 2 per syscall.
        assert_eq!(sets(), 2);
        fake::script_io([
            IoScript::Short(3),
            IoScript::Err(sio::EINTR),
            IoScript::Short(0x1000),
            IoScript::Short(1),
        ]);
        let mut back = vec![0u8; 10_000];
        t.file.read_exact_at_nofs(&mut back, 100).unwrap();
        assert_eq!(back, data);
        assert_eq!(fake::io_script_left(), 0);
        // The single-call forms do not retry: like std's read_at.
        fake::script_io([IoScript::Err(sio::EINTR)]);
        let e = t.file.pread_nofs(&mut back, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
    });
}

#[test]
fn write_all_error_says_how_much_was_written() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        let t = Temp::new("partial");
        fake::script_io([IoScript::Short(100), IoScript::Err(libc::ENOSPC)]);
        let e = t.file.write_all_at_nofs(&[1u8; 300], 4096).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        let d = &e;
        assert_eq!((d.offset(), d.len(), d.bytes_done()), (4096, 300, 100));
        assert_eq!(d.raw_os_error(), Some(libc::ENOSPC));
        let msg = e.to_string();
        assert!(msg.contains("100 of 300 bytes were written"), "{msg}");
        assert!(msg.contains("offset 4096"), "{msg}");
        // What it claims is what the file holds.
        assert_eq!(t.file.get_ref().metadata().unwrap().len(), 4196);

        fake::script_io([IoScript::Short(7), IoScript::Pretend(0)]);
        let e = t.file.write_all_at_nofs(&[1u8; 30], 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
        assert_eq!(e.bytes_done(), 7);
        assert!(e.to_string().contains("7 of 30 bytes were written"), "{e}");
    });
}

#[test]
fn eof_names_offset_length_and_end() {
    let t = Temp::new("eof");
    t.file.write_all_at_nofs(&[5u8; 10], 0).unwrap();
    let mut buf = [0u8; 20];
    let e = t.file.read_exact_at_nofs(&mut buf, 5).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    let d = &e;
    assert_eq!((d.offset(), d.len(), d.bytes_done()), (5, 20, 5));
    let msg = e.to_string();
    for needle in ["20 bytes", "offset 5", "after 5 bytes", "ends at offset 10"] {
        assert!(msg.contains(needle), "{needle:?} missing from {msg:?}");
    }
    assert_eq!(buf[..5], [5u8; 5]);
    // An empty read at any valid offset is fine and makes no syscall.
    t.file.read_exact_at_nofs(&mut [], 1 << 40).unwrap();
}

#[test]
fn huge_lengths_are_clamped_per_syscall() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        let t = Temp::new("huge");
        let len = sio::MAX_RW_COUNT + 4096 + 1;
        // calloc'ed and never touched: the fake pretends to transfer.
        let mut big = vec![0u8; len];
        fake::script_io([
            IoScript::Pretend(usize::MAX),
            IoScript::Pretend(usize::MAX),
            IoScript::Pretend(usize::MAX),
            IoScript::Pretend(usize::MAX),
            IoScript::Pretend(usize::MAX),
        ]);
        assert_eq!(t.file.pwrite_nofs(&big, 0).unwrap(), sio::MAX_RW_COUNT);
        t.file.write_all_at_nofs(&big, 1).unwrap();
        t.file.read_exact_at_nofs(&mut big, 2).unwrap();
        let calls: Vec<(&str, u64, u64)> = fake::io_log()
            .iter()
            .map(|c| (c.op, c.offset, c.len))
            .collect();
        let m = sio::MAX_RW_COUNT as u64;
        assert_eq!(
            calls,
            [
                ("pwrite64", 0, m),
                ("pwrite64", 1, m),
                ("pwrite64", 1 + m, 4097),
                ("pread64", 2, m),
                ("pread64", 2 + m, 4097),
            ]
        );
    });
}

#[test]
fn bad_offsets_fail_before_any_syscall() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        let t = Temp::new("badoff");
        let f = &t.file;
        fake::script_io([]);
        let max = i64::MAX as u64;
        let mut b = [0u8; 16];
        let errs = [
            f.pread_nofs(&mut b, max + 1).unwrap_err(),
            f.pwrite_nofs(&b, u64::MAX).unwrap_err(),
            f.pwrite_nofs(&b, max - 15 + 1).unwrap_err(),
            f.read_exact_at_nofs(&mut b, max).unwrap_err(),
            f.write_all_at_nofs(&b, max - 8).unwrap_err(),
            f.preadv2_nofs(&mut [IoSliceMut::new(&mut b)], max, RwFlags::empty())
                .unwrap_err(),
            f.pwritev2_nofs(&[IoSlice::new(&b)], max, RwFlags::DSYNC)
                .unwrap_err(),
            f.allocate_nofs(max, 1).unwrap_err(),
            f.punch_hole_nofs(1, max).unwrap_err(),
            f.zero_range_nofs(u64::MAX, u64::MAX).unwrap_err(),
            f.set_len_nofs(max + 1).unwrap_err(),
        ];
        for e in &errs {
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
            assert!(e.to_string().contains("i64::MAX"), "{e}");
            assert!(e.to_string().contains("before any syscall"), "{e}");
        }
        assert!(errs[6].to_string().contains("RWF_DSYNC"), "{}", errs[6]);
        assert!(fake::io_log().is_empty(), "{:?}", fake::io_log());
        assert_eq!(sets(), 0, "entered a scope for a rejected call");
        // The largest valid end is accepted (and reaches the kernel).
        assert_eq!(f.pread_nofs(&mut b, max - 16).unwrap(), 0);
        assert_eq!(fake::io_log().len(), 1);
    });
}

#[test]
fn ebadf_says_which_direction() {
    let t = Temp::new("ebadf");
    let ro = NoFsFile::open(&t.path, OpenOptions::new().read(true)).unwrap();
    let e = ro.pwrite_nofs(b"x", 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    assert!(e.to_string().contains("not open for writing"), "{e}");
    let e = ro.write_all_at_nofs(b"xyz", 0).unwrap_err();
    assert!(e.to_string().contains("0 of 3 bytes were written"), "{e}");
    assert!(ro
        .allocate_nofs(0, 10)
        .unwrap_err()
        .to_string()
        .contains("not open for writing"));
    let wo = NoFsFile::open(&t.path, OpenOptions::new().write(true)).unwrap();
    let e = wo.pread_nofs(&mut [0u8; 4], 0).unwrap_err();
    assert!(e.to_string().contains("not open for reading"), "{e}");
    // A descriptor closed behind the file's back (scripted: safe code
    // cannot close an owned fd).
    on_fake(FakeThread::new(Mode::Permitted), || {
        let t = Temp::new("closed");
        fake::script_io([IoScript::Err(sio::EBADF)]);
        let e = t.file.sync_all_nofs().unwrap_err();
        assert!(e.to_string().starts_with("fsync failed"), "{e}");
        assert!(e.to_string().contains("closed"), "{e}");
    });
}

#[test]
fn zero_range_falls_back_to_punch_and_allocate() {
    on_fake(FakeThread::new(Mode::Permitted), || {
        let t = Temp::new("zero");
        t.file.write_all_at_nofs(&[0xaa; 16384], 0).unwrap();
        fake::script_io([IoScript::Err(sio::EOPNOTSUPP)]);
        t.file.zero_range_nofs(4096, 8192).unwrap();
        t.file.zero_range_nofs(16384, 4096).unwrap(); // extends
        let ops: Vec<&str> = fake::io_log().iter().map(|c| c.op).collect();
        assert_eq!(
            ops,
            [
                "fallocate(ZERO_RANGE)",
                "fallocate(PUNCH_HOLE)",
                "fallocate(0)",
                // remembered: no second ZERO_RANGE attempt
                "fallocate(PUNCH_HOLE)",
                "fallocate(0)",
            ]
        );
        let mut back = vec![1u8; 20480];
        t.file.read_exact_at_nofs(&mut back, 0).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0xaa));
        assert!(back[4096..12288].iter().all(|&b| b == 0));
        assert!(back[12288..16384].iter().all(|&b| b == 0xaa));
        assert!(back[16384..].iter().all(|&b| b == 0));
        assert_eq!(t.file.get_ref().metadata().unwrap().len(), 20480);

        // Neither works: zeros are written (inside the scope), and that is
        // remembered too.
        let t = Temp::new("zero2");
        t.file.write_all_at_nofs(&[0xbb; 8192], 0).unwrap();
        fake::script_io([
            IoScript::Err(sio::EOPNOTSUPP),
            IoScript::Err(sio::EOPNOTSUPP),
        ]);
        t.file.zero_range_nofs(0, 4096).unwrap();
        t.file.zero_range_nofs(4096, 100_000).unwrap(); // extends, > 64 KiB
        let ops: Vec<&str> = fake::io_log().iter().map(|c| c.op).collect();
        assert_eq!(
            ops[ops.len() - 5..],
            [
                "fallocate(ZERO_RANGE)",
                "fallocate(PUNCH_HOLE)",
                "pwrite64",
                // remembered: straight to writing, in 64 KiB pieces
                "pwrite64",
                "pwrite64",
            ]
        );
        let mut back = vec![1u8; 104_096];
        t.file.read_exact_at_nofs(&mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        assert_eq!(t.file.size_nofs().unwrap(), 104_096);

        // A failure while writing zeros keeps its errno and says how far
        // it got.
        fake::script_io([IoScript::Short(4096), IoScript::Err(libc::ENOSPC)]);
        let e = t.file.zero_range_nofs(0, 65536).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(e.operation(), "pwrite64");
        assert_eq!((e.offset(), e.len(), e.bytes_done()), (0, 65536, 4096));
        assert!(e.to_string().contains("of zeros"), "{e}");
        assert!(
            e.to_string().contains("4096 of 65536 bytes were written"),
            "{e}"
        );
    });
}

#[test]
fn zero_punch_allocate_on_this_file_system() {
    let t = Temp::new("falloc");
    let f = &t.file;
    f.write_all_at_nofs(&[3u8; 16384], 0).unwrap();
    f.punch_hole_nofs(0, 4096).unwrap();
    f.zero_range_nofs(8192, 4096).unwrap();
    f.allocate_nofs(16384, 4096).unwrap();
    let mut back = vec![1u8; 20480];
    f.read_exact_at_nofs(&mut back, 0).unwrap();
    let expect: Vec<u8> = (0..20480)
        .map(|i| match i {
            0..=4095 | 8192..=12287 | 16384.. => 0,
            _ => 3,
        })
        .collect();
    assert_eq!(back, expect);
    assert_eq!(f.get_ref().metadata().unwrap().len(), 20480);
    // Zero-length requests are no-ops, not EINVAL.
    f.allocate_nofs(0, 0).unwrap();
    f.punch_hole_nofs(1 << 40, 0).unwrap();
}

#[test]
fn rwflags_ops_and_names() {
    let f = RwFlags::SYNC | RwFlags::HIPRI;
    assert_eq!(f.bits(), 0x5);
    assert!(f.contains(RwFlags::SYNC) && !f.contains(RwFlags::DSYNC));
    assert_eq!(f & RwFlags::SYNC, RwFlags::SYNC);
    let mut g = RwFlags::empty();
    g |= RwFlags::DONTCACHE;
    assert_eq!(format!("{g:?}"), "RwFlags(RWF_DONTCACHE)");
    assert_eq!(
        RwFlags::from_bits_retain(0x101).to_string(),
        "RWF_HIPRI|0x100"
    );
    assert_eq!(RwFlags::empty().to_string(), "0");
    let all = [
        (RwFlags::HIPRI, 0x1),
        (RwFlags::DSYNC, 0x2),
        (RwFlags::SYNC, 0x4),
        (RwFlags::NOWAIT, 0x8),
        (RwFlags::APPEND, 0x10),
        (RwFlags::NOAPPEND, 0x20),
        (RwFlags::ATOMIC, 0x40),
        (RwFlags::DONTCACHE, 0x80),
    ];
    for (flag, bits) in all {
        assert_eq!(flag.bits(), bits);
    }
    assert_eq!(RwFlags::NOAPPEND.min_kernel(), Some("6.9"));
    assert_eq!(RwFlags::DONTCACHE.min_kernel(), Some("6.14"));
    assert_eq!(RwFlags::from_bits_retain(0x200).min_kernel(), None);
    assert_eq!(
        (RwFlags::DSYNC | RwFlags::ATOMIC).describe_with_versions(),
        "RWF_DSYNC (Linux 4.7), RWF_ATOMIC (Linux 6.11)"
    );
}

mod model;
mod rwf;
