//! The kernel under test: `prctl` options and task flag bits, the VM check,
//! the kernel version, `/proc` flags of threads, the `vm_test!` macro.

use std::fs;

/// `prctl` options (not in `libc` for Linux targets).
pub const PR_SET_IO_FLUSHER: i32 = 57;
pub const PR_GET_IO_FLUSHER: i32 = 58;

/// Bits of `task_struct::flags` (include/linux/sched.h).
pub const PF_MEMALLOC_NOFS: u32 = 0x0004_0000;
pub const PF_MEMALLOC_NOIO: u32 = 0x0008_0000;
pub const PF_LOCAL_THROTTLE: u32 = 0x0010_0000;
/// What `PR_SET_IO_FLUSHER(1)` sets and `(0)` clears.
pub const IO_FLUSHER_BITS: u32 = PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE;

/// True inside the kernel-truth VM (its /init exports `RECLAIM_SCOPE_VM=1`).
pub fn in_vm() -> bool {
    std::env::var_os("RECLAIM_SCOPE_VM").is_some_and(|v| v == "1")
}

/// First line of every VM test: a VM test run on a host (e.g. through
/// `cargo test -- --include-ignored`) must fail loudly, not pass vacuously.
pub fn require_vm() {
    assert!(
        in_vm(),
        "kernel-truth test: needs CAP_SYS_RESOURCE and tracefs; run `cargo xtask vm-test`"
    );
}

/// The running kernel's (major, minor), from /proc/sys/kernel/osrelease
/// (`5.10.0-35-cloud-amd64` → `(5, 10)`).
pub fn kernel_version() -> (u32, u32) {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut it = rel
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Report that the calling test cannot apply to the running kernel, and why.
/// `cargo xtask vm-test` reads `$RECLAIM_VM_NA_FILE` after each binary and
/// counts the test as not applicable, never as passed. The test returns
/// right after this call.
pub fn not_applicable(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("(unnamed test)")
        .to_owned();
    eprintln!("NOT APPLICABLE: {test}: {reason}");
    if let Some(path) = std::env::var_os("RECLAIM_VM_NA_FILE") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open $RECLAIM_VM_NA_FILE");
        writeln!(f, "{test}: {}", reason.replace('\n', " ")).expect("write $RECLAIM_VM_NA_FILE");
    }
}

/// The calling thread's kernel thread id, from the `/proc/thread-self`
/// symlink (`<pid>/task/<tid>`): no syscall wrapper, no `unsafe`.
pub fn gettid() -> i32 {
    let link = fs::read_link("/proc/thread-self").expect("readlink /proc/thread-self");
    let s = link.to_string_lossy();
    s.rsplit('/')
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("unexpected /proc/thread-self target {s:?}"))
}

/// Field 9 (`flags`) of a `/proc/.../stat` line. The comm field (2) may hold
/// spaces and parentheses, so fields are counted after the **last** `)`.
pub fn parse_stat_flags(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")": state(3) ppid(4) pgrp(5) session(6) tty_nr(7) tpgid(8) flags(9).
    rest.split_whitespace().nth(6)?.parse().ok()
}

/// The calling thread's `task_struct::flags`, as the kernel reports them.
pub fn thread_flags() -> u32 {
    let stat = fs::read_to_string("/proc/thread-self/stat").expect("read /proc/thread-self/stat");
    parse_stat_flags(&stat).unwrap_or_else(|| panic!("cannot parse flags from {stat:?}"))
}

/// Flags of any thread, or `None` if it has exited.
pub fn task_flags(pid: i32, tid: i32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    parse_stat_flags(&stat)
}

/// Render the memalloc bits of a flags word for assertion messages.
pub fn describe_flags(f: u32) -> String {
    let mut v = Vec::new();
    for (bit, name) in [
        (PF_MEMALLOC_NOFS, "PF_MEMALLOC_NOFS"),
        (PF_MEMALLOC_NOIO, "PF_MEMALLOC_NOIO"),
        (PF_LOCAL_THROTTLE, "PF_LOCAL_THROTTLE"),
    ] {
        if f & bit != 0 {
            v.push(name);
        }
    }
    format!(
        "{f:#x} [{}]",
        if v.is_empty() {
            "none".into()
        } else {
            v.join("|")
        }
    )
}

/// Run `f` on a new thread and return its result; a panic in `f` is resumed
/// here. Kernel state is per thread and inherited by `clone()`, so each test
/// starts from a thread whose flags it can check instead of the harness's.
pub fn on_fresh_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    // Named after the test (libtest's thread name), so that
    // `not_applicable` can say which test it is.
    let mut b = std::thread::Builder::new();
    if let Some(n) = std::thread::current().name() {
        b = b.name(n.to_owned());
    }
    match b.spawn(f).expect("spawn a test thread").join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// A kernel-truth test: `#[test]`, ignored on the host with the reason it
/// shows there, run in the VM by `cargo xtask vm-test` (which passes
/// `--include-ignored`). Names and bodies are the test's own. The reason is
/// "needs `CAP_SYS_RESOURCE`" unless a `reason "...";` line names what else
/// the test needs (modules, tracefs, a kernel):
///
/// ```ignore
/// vm_test! {
///     /// What it proves.
///     fn name_of_the_test() {
///         require_vm();
///         // ...
///     }
/// }
/// vm_test! {
///     reason "kernel truth: needs tracefs; runs in the VM via `cargo xtask vm-test`";
///     fn another_test() { /* ... */ }
/// }
/// ```
#[allow(unused_macros)]
macro_rules! vm_test {
    (reason $reason:literal; $(#[$m:meta])* fn $name:ident() $body:block) => {
        $(#[$m])*
        #[test]
        #[ignore = $reason]
        fn $name() $body
    };
    ($(#[$m:meta])* fn $name:ident() $body:block) => {
        $crate::common::vm_test! {
            reason "kernel truth: needs CAP_SYS_RESOURCE; runs in the VM via `cargo xtask vm-test`";
            $(#[$m])*
            fn $name() $body
        }
    };
}
#[allow(unused_imports)]
pub(crate) use vm_test;
