//! The kernel-truth harness proves itself: raw `prctl(PR_SET_IO_FLUSHER)`
//! (no crate code) against what the kernel reports in `/proc` and tracefs.
//! If these fail, the crate's VM tests (`tests/vm_kernel.rs`) mean nothing.
//!
//! The `#[ignore]`d tests run in the VM (`cargo xtask vm-test`); the parser
//! tests at the end run on the host in every `cargo test`.

mod common;

use common::*;

vm_test! {
    fn vm_environment_is_usable() {
        require_vm();
        assert!(
            std::path::Path::new(TRACEFS)
                .join("events/kmem/mm_page_alloc")
                .is_dir(),
            "tracefs with kmem events must be mounted at {TRACEFS}"
        );
        assert!(
            std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
            "cgroup2 mounted"
        );
        let get = raw_get_io_flusher()
            .expect("PR_GET_IO_FLUSHER must succeed for PID 1's children in the VM");
        println!(
            "PR_GET_IO_FLUSHER on the test thread = {get}; flags {}",
            describe_flags(thread_flags())
        );
    }
}

vm_test! {
    fn raw_set_sets_noio_and_local_throttle_and_clear_clears() {
        require_vm();
        on_fresh_thread(|| {
            assert_thread_clear("fresh thread");
            assert_eq!(raw_get_io_flusher().unwrap(), 0);
            let before = thread_flags();

            raw_set_io_flusher(true).expect("PR_SET_IO_FLUSHER(1)");
            let on = thread_flags();
            println!(
                "flags before {} / after SET(1) {}",
                describe_flags(before),
                describe_flags(on)
            );
            assert_eq!(
                on & IO_FLUSHER_BITS,
                IO_FLUSHER_BITS,
                "SET(1): {}",
                describe_flags(on)
            );
            assert_eq!(raw_get_io_flusher().unwrap(), 1, "GET after SET(1)");
            // There is no NOFS-only prctl: SET(1) does not touch PF_MEMALLOC_NOFS.
            assert_eq!(on & PF_MEMALLOC_NOFS, before & PF_MEMALLOC_NOFS);

            raw_set_io_flusher(false).expect("PR_SET_IO_FLUSHER(0)");
            let off = thread_flags();
            println!("flags after SET(0) {}", describe_flags(off));
            assert_eq!(off & IO_FLUSHER_BITS, 0, "SET(0): {}", describe_flags(off));
            assert_eq!(raw_get_io_flusher().unwrap(), 0, "GET after SET(0)");
            // Only the two bits change (PF_SUPERPRIV, 0x100, may appear: capable() succeeded).
            assert_eq!(
                off & !0x100,
                before & !0x100,
                "SET(1)+SET(0) changed other flags"
            );
        });
    }
}

vm_test! {
    fn raw_flag_is_per_thread_and_inherited_by_clone_and_execve() {
        require_vm();
        on_fresh_thread(|| {
            raw_set_io_flusher(true).unwrap();
            let child = std::thread::spawn(thread_flags).join().unwrap();
            // A process forked by a flagged thread, after execve().
            let out = std::process::Command::new("cat")
                .arg("/proc/self/stat")
                .output()
                .unwrap();
            let exec_flags = parse_stat_flags(&String::from_utf8_lossy(&out.stdout)).unwrap();
            raw_set_io_flusher(false).unwrap();
            let child_after = std::thread::spawn(thread_flags).join().unwrap();
            assert_eq!(
                child & IO_FLUSHER_BITS,
                IO_FLUSHER_BITS,
                "spawned inside: {}",
                describe_flags(child)
            );
            assert_eq!(
                exec_flags & IO_FLUSHER_BITS,
                IO_FLUSHER_BITS,
                "forked+exec'd inside: {}",
                describe_flags(exec_flags)
            );
            assert_eq!(
                child_after & IO_FLUSHER_BITS,
                0,
                "spawned after: {}",
                describe_flags(child_after)
            );
        });
    }
}

vm_test! {
    fn raw_flag_does_not_reach_existing_threads() {
        require_vm();
        on_fresh_thread(|| {
            let pid = std::process::id() as i32;
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let (tid_tx, tid_rx) = std::sync::mpsc::channel::<i32>();
            let sibling = std::thread::spawn(move || {
                tid_tx.send(gettid()).unwrap();
                let _ = go_rx.recv(); // stay alive while the other thread is flagged
            });
            let sib = tid_rx.recv().unwrap();
            raw_set_io_flusher(true).unwrap();
            let mine = thread_flags();
            let theirs = task_flags(pid, sib).expect("sibling alive");
            raw_set_io_flusher(false).unwrap();
            go_tx.send(()).unwrap();
            sibling.join().unwrap();
            assert_eq!(
                mine & IO_FLUSHER_BITS,
                IO_FLUSHER_BITS,
                "caller: {}",
                describe_flags(mine)
            );
            assert_eq!(
                theirs & IO_FLUSHER_BITS,
                0,
                "existing sibling: {}",
                describe_flags(theirs)
            );
        });
    }
}

/// The proof that matters: page-cache allocations of a buffered write.
fn gfp_proof(dir_label: &'static str, make: fn(&str) -> std::fs::File) {
    on_fresh_thread(move || {
        assert_thread_clear("fresh thread");
        const LEN: usize = 64 * 1024;
        let pages = LEN / 4096;

        let f = make("unflagged");
        let plain = traced_pwrite(&f, LEN);
        let f2 = make("flagged");
        raw_set_io_flusher(true).unwrap();
        let flagged = traced_pwrite(&f2, LEN);
        raw_set_io_flusher(false).unwrap();

        println!(
            "{dir_label}: unflagged 64 KiB pwrite: {}",
            summarize_gfp(&plain)
        );
        println!(
            "{dir_label}: flagged   64 KiB pwrite: {}",
            summarize_gfp(&flagged)
        );
        assert_fs_io(
            &format!("{dir_label}: unflagged buffered write of fresh pages"),
            &plain,
            pages,
        );
        assert_all_noio(
            &format!("{dir_label}: write by a PR_SET_IO_FLUSHER thread"),
            &flagged,
            pages,
        );
    });
}

vm_test! {
    fn raw_flag_removes_fs_and_io_from_page_cache_allocations_ext4() {
        require_vm();
        gfp_proof("ext4 on brd", |tag| fresh_file(tag).1);
    }
}

vm_test! {
    fn raw_flag_removes_fs_and_io_from_page_cache_allocations_tmpfs() {
        require_vm();
        gfp_proof("tmpfs", |tag| {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = format!(
                "/tmp/{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(p)
                .unwrap()
        });
    }
}
// ---------------------------------------------------------------------------
// Parser unit tests: not ignored, they run on the host in every `cargo test`
// ---------------------------------------------------------------------------

#[test]
fn common_stat_flags_after_last_paren() {
    // comm "a) b (c" with spaces and parentheses; flags = 4194368 = 0x400040.
    let stat = "1234 (a) b (c) S 1 1234 1234 0 -1 4194368 100 0 0 0 0 0 0 0 20 0 1 0";
    assert_eq!(parse_stat_flags(stat), Some(4194368));
    let plain = "7 (kworker/0:1) I 2 0 0 0 -1 69238880 0 0";
    assert_eq!(parse_stat_flags(plain), Some(69238880));
    assert_eq!(parse_stat_flags("garbage"), None);
    assert_eq!(parse_stat_flags("1 (x) S 1 2"), None);
}

#[test]
fn common_thread_flags_readable_on_host() {
    // Reading needs no capability; a plain thread is not an I/O flusher
    // unless the test runner itself was started flagged.
    let f = thread_flags();
    assert!(f != 0, "task flags are never all zero");
    assert!(gettid() > 0);
}

#[test]
fn common_gfp_classifier() {
    let c = |s: &str| classify_gfp(s).unwrap();
    let both = GfpClass { fs: true, io: true };
    let none = GfpClass::default();
    // What an unflagged buffered write allocates with, and what NOIO makes of it.
    assert_eq!(c("GFP_HIGHUSER_MOVABLE|__GFP_COMP"), both);
    assert_eq!(
        c("GFP_NOIO|__GFP_HIGHMEM|__GFP_HARDWALL|__GFP_MOVABLE"),
        none
    );
    assert!(c("GFP_NOIO|__GFP_COMP|__GFP_HIGHMEM|__GFP_HARDWALL|__GFP_MOVABLE").is_noio());
    assert_eq!(
        c("GFP_NOFS"),
        GfpClass {
            fs: false,
            io: true
        }
    );
    assert_eq!(
        c("GFP_NOFS|__GFP_ACCOUNT"),
        GfpClass {
            fs: false,
            io: true
        }
    );
    assert_eq!(c("GFP_KERNEL"), both);
    assert_eq!(c("GFP_KERNEL_ACCOUNT|__GFP_ZERO"), both);
    assert_eq!(c("GFP_USER"), both);
    assert_eq!(c("GFP_HIGHUSER"), both);
    assert_eq!(c("GFP_TRANSHUGE"), both);
    assert_eq!(c("GFP_TRANSHUGE_LIGHT"), both);
    assert_eq!(c("GFP_ATOMIC|__GFP_NOWARN"), none);
    assert_eq!(c("GFP_NOWAIT|__GFP_ZERO"), none);
    assert_eq!(c("none"), none);
    assert_eq!(
        c("__GFP_IO"),
        GfpClass {
            fs: false,
            io: true
        }
    );
    assert_eq!(
        c("__GFP_FS|__GFP_RECLAIM"),
        GfpClass {
            fs: true,
            io: false
        }
    );
    assert_eq!(
        c("GFP_NOIO|__GFP_FS"),
        GfpClass {
            fs: true,
            io: false
        }
    );
    assert_eq!(
        c("GFP_DMA32|0x80"),
        GfpClass {
            fs: true,
            io: false
        }
    );
    assert_eq!(c("__GFP_HIGH|__GFP_ATOMIC|__GFP_KSWAPD_RECLAIM"), none);
    assert!(classify_gfp("GFP_SOMETHING_NEW").is_err());
    assert!(classify_gfp("GFP_KERNEL|0xzz").is_err());
}

#[test]
fn common_trace_line_parser() {
    let text = "\
# tracer: nop
#
# entries-in-buffer/entries-written: 2/2   #P:2
#
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
      vm_harness-97      [001] .....    12.345678: mm_page_alloc: page=0000000012345678 pfn=0x1234 order=0 migratetype=1 gfp_flags=GFP_HIGHUSER_MOVABLE|__GFP_COMP
 my [odd]-name-42      [000] d..1.    13.000001: mm_vmscan_memcg_reclaim_begin: order=0 gfp_flags=GFP_NOIO|__GFP_HIGHMEM
          <idle>-0       [001]    14.5: sched_switch: prev_comm=x
      vm_kernel-55      [000] .....    15.0: sys_prctl(option: 00000039, arg2: 00000001, arg3: 00000000, arg4: 00000000, arg5: 00000000)
";
    let ev = parse_trace(text);
    assert_eq!(ev.len(), 4);
    assert_eq!(ev[0].event, "mm_page_alloc");
    assert!(ev[0].is(EV_PAGE_ALLOC));
    assert_eq!(ev[0].pid, 97);
    assert_eq!(
        ev[0].gfp.as_deref(),
        Some("GFP_HIGHUSER_MOVABLE|__GFP_COMP")
    );
    assert_eq!(ev[0].gfp_class(), GfpClass { fs: true, io: true });
    assert_eq!(ev[1].pid, 42);
    assert!(ev[1].is(EV_MEMCG_RECLAIM));
    assert!(ev[1].gfp_class().is_noio());
    assert_eq!(
        (ev[2].pid, ev[2].event.as_str(), ev[2].gfp.as_deref()),
        (0, "sched_switch", None)
    );
    assert!(ev[3].is(EV_SYS_PRCTL));
    assert_eq!(ev[3].prctl_args(), Some((57, 1)));
    assert_eq!(io_flusher_prctls(&ev), vec![(57, 1)]);
    assert_eq!(ev[0].prctl_args(), None);
    assert_eq!(
        summarize_gfp(&ev[..2]),
        "mm_page_alloc:GFP_HIGHUSER_MOVABLE|__GFP_COMP x1, mm_vmscan_memcg_reclaim_begin:GFP_NOIO|__GFP_HIGHMEM x1"
    );
}

#[test]
fn common_require_vm_message() {
    if in_vm() {
        return;
    }
    let err = std::panic::catch_unwind(require_vm).expect_err("must panic outside the VM");
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(msg.contains("cargo xtask vm-test"), "{msg}");
}
