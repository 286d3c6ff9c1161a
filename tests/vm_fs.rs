//! Kernel truth for `NoFsFile`: the gfp flags of the page-cache
//! allocations its calls make, read from tracefs (`kmem:mm_page_alloc`),
//! and the thread's flags read from `/proc` — never the crate's own
//! bookkeeping.
//!
//! Every test is `#[ignore]`d: it needs CAP_SYS_RESOURCE, tracefs and a
//! block-backed file system (ext4 on brd, [`common::scratch_fs`]), which the
//! VM of `cargo xtask vm-test` provides.

mod common;

use common::*;
use reclaim_scope::{IoFlusher, NoFsFile, NoFsIoError, NoFsPolicy, RwFlags};
use std::io::IoSlice;
use std::os::unix::fs::FileExt;

const LEN: usize = 64 * 1024;
const PAGES: usize = LEN / 4096;

fn page_allocs(ev: Vec<TraceEvent>) -> Vec<TraceEvent> {
    ev.into_iter().filter(|e| e.is(EV_PAGE_ALLOC)).collect()
}

vm_test! {
    fn pwrite_nofs_allocates_noio_where_plain_pwrite_allocates_fs_io() {
        require_vm();
        on_fresh_thread(|| {
            assert_thread_clear("fresh thread");
            let data = vec![0x5au8; LEN]; // allocated before tracing starts

            // Plain pwrite (std FileExt) on this unflagged thread.
            let (_, plain_file) = fresh_file("fs-plain");
            let (r, plain) = trace_thread(&[EV_PAGE_ALLOC], || plain_file.write_at(&data, 0));
            assert_eq!(r.expect("plain pwrite"), LEN);
            let plain = page_allocs(plain);

            // pwrite_nofs on the same thread, strict: it must take effect here.
            let (_, f) = fresh_file("fs-nofs");
            let file = NoFsFile::new(f).with_policy(NoFsPolicy::Strict);
            let (r, nofs) = trace_thread(&[EV_PAGE_ALLOC], || file.pwrite_nofs(&data, 0));
            assert_eq!(r.expect("pwrite_nofs"), LEN);
            let nofs = page_allocs(nofs);
            assert_thread_clear("after pwrite_nofs");

            // And a plain pwrite after it is unprotected again.
            let (_, after_file) = fresh_file("fs-after");
            let (r, after) = trace_thread(&[EV_PAGE_ALLOC], || after_file.write_at(&data, 0));
            assert_eq!(r.expect("plain pwrite after"), LEN);
            let after = page_allocs(after);

            println!(
                "ext4 on brd, 64 KiB plain pwrite:  {}",
                summarize_gfp(&plain)
            );
            println!(
                "ext4 on brd, 64 KiB pwrite_nofs:   {}",
                summarize_gfp(&nofs)
            );
            println!(
                "ext4 on brd, 64 KiB pwrite after:  {}",
                summarize_gfp(&after)
            );
            assert_fs_io("plain pwrite on an unflagged thread", &plain, PAGES);
            assert_all_noio("pwrite_nofs on an unflagged thread", &nofs, PAGES);
            assert_fs_io("plain pwrite after pwrite_nofs", &after, PAGES);
        });
    }
}

vm_test! {
    fn every_write_form_allocates_noio_and_leaves_the_thread_clear() {
        require_vm();
        on_fresh_thread(|| {
            assert_thread_clear("fresh thread");
            let data = vec![0xa5u8; LEN];
            let (_, f) = fresh_file("fs-forms");
            let file = NoFsFile::new(f).with_policy(NoFsPolicy::Strict);
            type Form<'a> = (&'a str, &'a dyn Fn(u64) -> Result<(), NoFsIoError>);
            let forms: [Form<'_>; 3] = [
                ("write_all_at_nofs", &|off| {
                    file.write_all_at_nofs(&data, off)
                }),
                ("pwritev2_nofs(RWF_DSYNC)", &|off| {
                    let (a, b) = data.split_at(LEN / 3);
                    let n =
                        file.pwritev2_nofs(&[IoSlice::new(a), IoSlice::new(b)], off, RwFlags::DSYNC)?;
                    assert_eq!(n, LEN);
                    Ok(())
                }),
                ("zero_range_nofs + write_all_at_nofs", &|off| {
                    file.zero_range_nofs(off, LEN as u64)?;
                    file.write_all_at_nofs(&data, off)
                }),
            ];
            for (i, (what, call)) in forms.iter().enumerate() {
                // Each form writes fresh pages of the file.
                let off = (i * 4 * LEN) as u64;
                let (r, ev) = trace_thread(&[EV_PAGE_ALLOC], || call(off));
                r.unwrap_or_else(|e| panic!("{what}: {e}"));
                let ev = page_allocs(ev);
                println!("ext4 on brd, 64 KiB {what}: {}", summarize_gfp(&ev));
                assert_all_noio(what, &ev, PAGES);
                assert_thread_clear(what);
            }
            let (r, _) = trace_thread(&[EV_PAGE_ALLOC], || file.sync_all_nofs());
            r.expect("fsync");
            assert_thread_clear("after sync_all_nofs");
        });
    }
}

/// At least one page per 4 KiB allocated with `__GFP_IO` (block-I/O
/// reclaim allowed).
fn assert_io_allowed(what: &str, ev: &[TraceEvent]) {
    let n = ev.iter().filter(|e| e.gfp_class().io).count();
    assert!(
        n >= PAGES,
        "{what}: expected {PAGES} page allocations with __GFP_IO, saw {}",
        summarize_gfp(ev)
    );
}

vm_test! {
    fn read_of_uncached_data_allocates_noio_only_through_pread_nofs() {
        require_vm();
        on_fresh_thread(|| {
            assert_thread_clear("fresh thread");
            // Two files, so the readahead of one read cannot serve the other.
            let mut paths = Vec::new();
            for tag in ["fs-read-plain", "fs-read-nofs"] {
                let (path, f) = fresh_file(tag);
                f.write_all_at(&vec![0x3cu8; LEN], 0).unwrap();
                f.sync_all().unwrap();
                paths.push(path);
            }
            // Drop the clean page cache so both reads must allocate and read.
            std::fs::write("/proc/sys/vm/drop_caches", "1").expect("drop_caches");
            let open = |p| {
                NoFsFile::open(p, std::fs::OpenOptions::new().read(true))
                    .unwrap()
                    .with_policy(NoFsPolicy::Strict)
            };
            let (plain_file, nofs_file) = (open(&paths[0]), open(&paths[1]));
            let mut buf = vec![0u8; LEN];

            let (r, plain) = trace_thread(&[EV_PAGE_ALLOC], || {
                plain_file.get_ref().read_exact_at(&mut buf, 0)
            });
            r.expect("plain pread");
            let plain = page_allocs(plain);
            buf.fill(0);
            let (r, nofs) = trace_thread(&[EV_PAGE_ALLOC], || {
                nofs_file.read_exact_at_nofs(&mut buf, 0)
            });
            r.expect("read_exact_at_nofs");
            let nofs = page_allocs(nofs);
            assert!(buf.iter().all(|&b| b == 0x3c), "read back wrong data");
            assert_thread_clear("after read_exact_at_nofs");

            println!(
                "ext4 on brd, 64 KiB uncached plain pread:  {}",
                summarize_gfp(&plain)
            );
            println!(
                "ext4 on brd, 64 KiB uncached pread_nofs:   {}",
                summarize_gfp(&nofs)
            );
            // ext4 already masks __GFP_FS for its readahead (GFP_NOFS); the
            // flag also removes __GFP_IO.
            assert_io_allowed("uncached plain pread", &plain);
            assert_all_noio("uncached read_exact_at_nofs", &nofs, PAGES);
        });
    }
}

vm_test! {
    fn calls_inside_an_io_flusher_keep_the_flag() {
        require_vm();
        on_fresh_thread(|| {
            assert_thread_clear("fresh thread");
            let (_, f) = fresh_file("fs-flusher");
            let file = NoFsFile::new(f).with_policy(NoFsPolicy::Strict);
            let data = vec![1u8; LEN];
            let flusher = IoFlusher::try_enter().expect("PID 1 of the VM has CAP_SYS_RESOURCE");
            let (r, ev) = trace_thread(&[EV_PAGE_ALLOC], || file.pwrite_nofs(&data, 0));
            assert_eq!(r.unwrap(), LEN);
            let flags = thread_flags();
            assert_eq!(
                flags & IO_FLUSHER_BITS,
                IO_FLUSHER_BITS,
                "a NoFsFile call inside an IoFlusher cleared the flag: {}",
                describe_flags(flags)
            );
            drop(flusher);
            assert_thread_clear("after the IoFlusher");
            assert_all_noio("pwrite_nofs inside IoFlusher", &page_allocs(ev), PAGES);
        });
    }
}

vm_test! {
    /// EIO, the errno no host can produce on demand: a device-mapper `error`
    /// target fails every bio. Each reading and writing method must hand the
    /// daemon EIO (NBD_EIO, SCSI MEDIUM ERROR) with its context, strict (so the
    /// scope is really in effect) and through `io::Error`.
    fn eio_from_a_device_mapper_error_target_reaches_the_caller() {
        require_vm();
        use std::fs::OpenOptions;
        let _ = sh("modprobe", &["dm_mod"]);
        sh("dmsetup", &["create", "rs-eio", "--table", "0 8192 error"])
            .unwrap_or_else(|e| panic!("{e} (vm-test adds --modules dm_mod --host-bin dmsetup)"));
        let _ = sh("dmsetup", &["mknodes", "rs-eio"]);
        let dev = "/dev/mapper/rs-eio";
        let eio = |e: NoFsIoError, op: &str, offset: u64, len: u64| {
            let what = format!("{op}: {e}");
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}");
            assert_eq!(
                (e.operation(), e.offset(), e.len()),
                (op, offset, len),
                "{what}"
            );
            assert!(e.to_string().contains("Input/output error"), "{what}");
            let io_err: std::io::Error = e.into();
            assert_eq!(io_err.raw_os_error(), Some(libc::EIO), "{what}");
            println!("EIO from {op} at {offset}+{len}: ok");
        };
        let f = NoFsFile::open(dev, OpenOptions::new().read(true).write(true))
            .unwrap()
            .with_policy(NoFsPolicy::Strict);
        assert!(f.is_block_device());
        assert_eq!(f.size_nofs().unwrap(), 8192 * 512);
        let mut buf = vec![0u8; 4096];
        eio(f.pread_nofs(&mut buf, 0).unwrap_err(), "pread64", 0, 4096);
        eio(
            f.read_exact_at_nofs(&mut buf, 8192).unwrap_err(),
            "pread64",
            8192,
            4096,
        );
        eio(
            f.preadv2_nofs(
                &mut [std::io::IoSliceMut::new(&mut buf)],
                0,
                RwFlags::empty(),
            )
            .unwrap_err(),
            "preadv2",
            0,
            4096,
        );
        // A buffered write of whole pages lands in the page cache; the EIO
        // comes with the flush, as for any disk.
        f.write_all_at_nofs(&buf, 0).unwrap();
        eio(f.sync_data_nofs().unwrap_err(), "fdatasync", 0, 0);
        // A synchronous write reports it at once.
        eio(
            f.pwritev2_nofs(&[IoSlice::new(&buf)], 4096, RwFlags::DSYNC)
                .unwrap_err(),
            "pwritev2",
            4096,
            4096,
        );
        // Zeroing: the kernel's zero-out (which writes zeros itself where the
        // device has no WRITE ZEROES) fails the same way.
        eio(
            f.zero_range_nofs(0, 65536).unwrap_err(),
            "fallocate(FALLOC_FL_ZERO_RANGE)",
            0,
            65536,
        );
        // Direct I/O: every transfer fails with EIO.
        let d = NoFsFile::open_direct(dev, OpenOptions::new().read(true).write(true)).unwrap();
        let mut storage = vec![0u8; 8192];
        let start = storage.as_ptr().align_offset(4096);
        let aligned = &mut storage[start..start + 4096];
        eio(d.pwrite_nofs(aligned, 0).unwrap_err(), "pwrite64", 0, 4096);
        eio(
            d.write_all_at_nofs(aligned, 4096).unwrap_err(),
            "pwrite64",
            4096,
            4096,
        );
        eio(d.pread_nofs(aligned, 0).unwrap_err(), "pread64", 0, 4096);
        drop((f, d));
        sh("dmsetup", &["remove", "rs-eio"]).unwrap();
    }
}
