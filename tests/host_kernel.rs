//! Checks against the real kernel of the machine the tests run on.
//!
//! Developer machines and CI here are root but lack `CAP_SYS_RESOURCE`, so
//! the kernel refuses `PR_SET_IO_FLUSHER`. These tests assert exactly what
//! the kernel answers — whatever that is — and that the crate reports it
//! honestly. The effect of the flag itself is proven inside the VM
//! (`tests/vm_kernel.rs`, `cargo xtask vm-test`).

use reclaim_scope::{
    proc::{current_tid, threads_of, ThreadFlags},
    support, thread_io_flusher, ErrorKind, IoFlusher, NoFsScope, Support,
};

/// What the kernel says about PR_GET_IO_FLUSHER on this machine, asked
/// without the crate.
fn raw_support() -> Support {
    // Independent of the crate: the effective capability set.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    const CAP_SYS_RESOURCE: u32 = 24;
    // The kernel checks the capability in the initial user namespace only:
    // CapEff inside a user namespace does not count.
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap();
    let initial_ns = uid_map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
    if cap_eff & (1 << CAP_SYS_RESOURCE) != 0 && initial_ns {
        Support::Available
    } else {
        Support::NotPermitted
    }
}

#[test]
fn support_matches_the_capability_set() {
    assert_eq!(support(), raw_support());
}

#[test]
fn strict_entry_reports_exactly_what_the_kernel_says() {
    let before = ThreadFlags::current().unwrap();
    match support() {
        Support::NotPermitted => {
            let e = NoFsScope::try_enter().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NotPermitted);
            assert_eq!(e.raw_os_error(), Some(libc::EPERM));
            let msg = e.to_string();
            assert!(msg.contains("CAP_SYS_RESOURCE"), "{msg}");
            assert!(
                msg.contains("AmbientCapabilities=CAP_SYS_RESOURCE"),
                "{msg}"
            );
            let io: std::io::Error = IoFlusher::try_enter().unwrap_err().into();
            assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
            assert_eq!(
                thread_io_flusher().unwrap_err().kind(),
                ErrorKind::NotPermitted
            );
            // Best effort: not effective, and the thread's real flags did not move.
            let s = NoFsScope::enter();
            assert!(!s.is_effective());
            assert_eq!(ThreadFlags::current().unwrap(), before);
            assert!(reclaim_scope::degradation().is_some());
        }
        Support::Available => {
            let s = NoFsScope::try_enter().unwrap();
            assert!(ThreadFlags::current().unwrap().noio());
            drop(s);
            assert_eq!(ThreadFlags::current().unwrap().noio(), before.noio());
        }
        Support::Unsupported => {
            assert_eq!(
                NoFsScope::try_enter().unwrap_err().kind(),
                ErrorKind::Unsupported
            );
        }
        other => panic!("unexpected support answer {other:?}"),
    }
}

#[test]
fn proc_reader_returns_this_threads_real_flags() {
    // Compare the crate's reader with an independent parse of the same file.
    let raw = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after = &raw[raw.rfind(')').unwrap() + 1..];
    let flags: u32 = after.split_whitespace().nth(6).unwrap().parse().unwrap();
    let ours = ThreadFlags::current().unwrap();
    // PF_* bits that change between two reads (e.g. PF_SUPERPRIV is sticky,
    // others are scheduler state) are masked to the ones the crate is about.
    let mask = 0x0004_0000 | 0x0008_0000 | 0x0010_0000;
    assert_eq!(ours.bits() & mask, flags & mask);
    // PF_KTHREAD (0x00200000) is never set on a user thread.
    assert_eq!(ours.bits() & 0x0020_0000, 0);
    let pid = std::process::id() as i32;
    let via_task = ThreadFlags::of_task(pid, current_tid()).unwrap();
    assert_eq!(via_task.bits() & mask, ours.bits() & mask);
}

#[test]
fn threads_of_lists_named_threads_and_rejects_missing_pids() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let h = std::thread::Builder::new()
        .name("a) b (c".into())
        .spawn(move || {
            tx.send(current_tid()).unwrap();
            done_rx.recv().unwrap();
        })
        .unwrap();
    let tid = rx.recv().unwrap();
    let me = std::process::id() as i32;
    let threads = threads_of(me).unwrap();
    let t = threads
        .iter()
        .find(|t| t.tid == tid)
        .expect("spawned thread listed");
    assert_eq!(t.name, "a) b (c");
    assert!(threads.iter().any(|t| t.tid == current_tid()));
    done_tx.send(()).unwrap();
    h.join().unwrap();

    let e = threads_of(i32::MAX).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    assert!(e.to_string().contains(&i32::MAX.to_string()), "{e}");
    let e = ThreadFlags::of_task(me, i32::MAX).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
}
