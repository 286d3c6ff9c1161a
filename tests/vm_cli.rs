//! Kernel truth for the `reclaim-scope` tool and for `Audit::current()`.
//!
//! - `reclaim-scope exec` flags an unmodified program and every thread it
//!   creates: a threaded helper (this test binary re-invoked) and a real
//!   daemon, qemu-nbd, serving a file on a unix socket to a small NBD client
//!   below. Without `exec`, none of their threads is flagged.
//! - `Audit::current()` finds a thread whose flag was cleared behind its
//!   `IoFlusher`'s back, and a thread that inherited the flag by being
//!   spawned inside a scope.
//!
//! Every claim is checked against `/proc/<pid>/task/<tid>/stat` read here,
//! not only through the tool. All tests are `#[ignore]`d and run in the VM
//! (`cargo xtask vm-test`, which puts `reclaim-scope` and `qemu-nbd` on the
//! guest's PATH).

mod common;

use common::*;
use reclaim_scope::{
    audit::{Audit, Verdict},
    proc::current_tid,
    set_thread_io_flusher, IoFlusher, NoFsScope,
};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Set in the environment of this test binary when it is re-invoked as the
/// threaded helper program.
const HELPER_ENV: &str = "RECLAIM_SCOPE_CLI_HELPER";
const HELPER_TEST: &str = "exec_flags_every_thread_of_a_threaded_program";
const HELPER_THREADS: usize = 3;

fn tool() -> Command {
    Command::new("reclaim-scope")
}

/// Every thread id of `pid`, from /proc.
fn tids(pid: u32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("list threads of {pid}: {e}"))
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort();
    v
}

/// Asserts, from /proc directly, that every thread of `pid` is (or is not)
/// an I/O flusher; returns the thread count.
#[track_caller]
fn assert_every_thread(pid: u32, flagged: bool) -> usize {
    let tids = tids(pid);
    for &tid in &tids {
        let Some(f) = task_flags(pid as i32, tid) else {
            continue; // exited in between
        };
        let want = if flagged { IO_FLUSHER_BITS } else { 0 };
        assert_eq!(
            f & IO_FLUSHER_BITS,
            want,
            "pid {pid} tid {tid}: expected {}, /proc says {}",
            if flagged {
                "NOIO|LOCAL_THROTTLE"
            } else {
                "clear"
            },
            describe_flags(f)
        );
    }
    tids.len()
}

/// `reclaim-scope status PID --json`, checked against `flagged`; returns
/// the text form too, for the log.
#[track_caller]
fn assert_status(pid: u32, flagged: bool, min_threads: usize) -> String {
    let o = tool()
        .args(["status", "--json", &pid.to_string()])
        .output()
        .expect("run reclaim-scope status");
    assert!(o.status.success(), "status {pid}: {o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).expect("status --json is JSON");
    let threads = v[0]["threads"].as_array().expect("threads");
    assert!(
        threads.len() >= min_threads,
        "pid {pid}: expected at least {min_threads} threads: {v}"
    );
    for t in threads {
        assert_eq!(t["io_flusher"], flagged, "pid {pid}: {t}");
        assert_eq!(t["noio"], flagged, "pid {pid}: {t}");
        assert_eq!(t["local_throttle"], flagged, "pid {pid}: {t}");
    }
    let o = tool()
        .args(["status", &pid.to_string()])
        .output()
        .expect("run reclaim-scope status");
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// exec: a threaded program
// ---------------------------------------------------------------------------

/// The helper program: threads (and a thread of a thread), then "READY",
/// then wait for standard input to close.
fn helper_main() {
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let stop_rx = std::sync::Arc::new(std::sync::Mutex::new(stop_rx));
    let mut handles = Vec::new();
    for i in 0..HELPER_THREADS {
        let rx = stop_rx.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("cli-helper-{i}"))
                .spawn(move || {
                    // A thread created by a thread: inheritance is transitive.
                    let inner = (i == 0).then(|| {
                        let rx = rx.clone();
                        std::thread::Builder::new()
                            .name("cli-helper-in".into())
                            .spawn(move || {
                                let _ = rx.lock().unwrap().recv();
                            })
                            .unwrap()
                    });
                    let _ = rx.lock().unwrap().recv();
                    if let Some(h) = inner {
                        h.join().unwrap();
                    }
                })
                .unwrap(),
        );
    }
    // Wait until every thread exists, so the driver sees all of them.
    let me = std::process::id();
    while tids(me).len() < HELPER_THREADS + 2 {
        std::thread::yield_now();
    }
    println!("READY {me}");
    std::io::stdout().flush().unwrap();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(stop_tx); // every recv() returns Err: the threads end
    for h in handles {
        h.join().unwrap();
    }
}

/// Starts the helper (through `reclaim-scope exec` or directly), waits for
/// READY, and returns the child with its stdin still open, and the rest of
/// its output (read it to the end, or the helper dies of EPIPE).
fn start_helper(through_exec: bool) -> (Child, impl Iterator<Item = std::io::Result<String>>) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = if through_exec {
        let mut c = tool();
        c.args(["exec", "--strict", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    cmd.args([
        HELPER_TEST,
        "--exact",
        "--include-ignored",
        "--test-threads=1",
        "--nocapture",
    ])
    .env(HELPER_ENV, "1")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("start the helper");
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    loop {
        let line = lines
            .next()
            .expect("helper ended before READY")
            .expect("read helper output");
        // libtest prints "test NAME ... " without a newline before the
        // test's own output.
        if let Some(pid) = line.split("READY ").nth(1) {
            assert_eq!(pid.trim(), child.id().to_string(), "exec must not fork");
            break;
        }
    }
    (child, lines)
}

vm_test! {
    fn exec_flags_every_thread_of_a_threaded_program() {
        if std::env::var_os(HELPER_ENV).is_some() {
            return helper_main();
        }
        require_vm();
        assert_eq!(
            thread_flags() & IO_FLUSHER_BITS,
            0,
            "the test thread is flagged"
        );
        for through_exec in [true, false] {
            let (mut child, rest) = start_helper(through_exec);
            let pid = child.id();
            let n = assert_every_thread(pid, through_exec);
            assert!(n > HELPER_THREADS + 1, "only {n} threads");
            let text = assert_status(pid, through_exec, HELPER_THREADS + 2);
            assert!(text.contains("\"cli-helper-in\""), "{text}");
            println!(
                "helper {} reclaim-scope exec:\n{text}",
                if through_exec { "with" } else { "without" }
            );
            drop(child.stdin.take());
            let rest: Vec<String> = rest.map(|l| l.unwrap()).collect();
            let st = child.wait().unwrap();
            assert!(rest.iter().any(|l| l.contains("1 passed")), "{rest:?}");
            assert!(st.success(), "helper: {st}");
        }
    }
}

// ---------------------------------------------------------------------------
// exec: a real daemon (qemu-nbd)
// ---------------------------------------------------------------------------

/// A minimal NBD client (fixed newstyle handshake, simple replies): enough
/// to make the daemon serve real reads and writes.
struct Nbd {
    s: UnixStream,
    handle: u64,
}

const NBD_CMD_READ: u16 = 0;
const NBD_CMD_WRITE: u16 = 1;
const NBD_CMD_DISC: u16 = 2;

impl Nbd {
    fn connect(sock: &Path) -> std::io::Result<Nbd> {
        let mut s = UnixStream::connect(sock)?;
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello)?;
        assert_eq!(
            &hello[..16],
            b"NBDMAGICIHAVEOPT",
            "not a newstyle NBD server"
        );
        let server_flags = u16::from_be_bytes([hello[16], hello[17]]);
        // FIXED_NEWSTYLE, and NO_ZEROES if the server offers it.
        let client_flags = u32::from(server_flags & 0b11);
        s.write_all(&client_flags.to_be_bytes())?;
        // NBD_OPT_EXPORT_NAME with the default (empty) export name.
        s.write_all(&0x4948_4156_454F_5054u64.to_be_bytes())?;
        s.write_all(&1u32.to_be_bytes())?;
        s.write_all(&0u32.to_be_bytes())?;
        let mut info = [0u8; 10];
        s.read_exact(&mut info)?;
        if server_flags & 0b10 == 0 {
            let mut zeroes = [0u8; 124];
            s.read_exact(&mut zeroes)?;
        }
        Ok(Nbd { s, handle: 1 })
    }

    fn request(&mut self, cmd: u16, offset: u64, len: u32, data: &[u8]) -> Vec<u8> {
        self.handle += 1;
        let mut req = Vec::with_capacity(28 + data.len());
        req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&cmd.to_be_bytes());
        req.extend_from_slice(&self.handle.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(data);
        self.s.write_all(&req).expect("send NBD request");
        if cmd == NBD_CMD_DISC {
            return Vec::new();
        }
        let mut reply = [0u8; 16];
        self.s.read_exact(&mut reply).expect("NBD reply");
        assert_eq!(
            reply[..4],
            0x6744_6698u32.to_be_bytes(),
            "simple reply magic"
        );
        assert_eq!(reply[4..8], [0; 4], "NBD error {:?}", &reply[4..8]);
        assert_eq!(reply[8..], self.handle.to_be_bytes());
        let mut buf = vec![0u8; if cmd == NBD_CMD_READ { len as usize } else { 0 }];
        self.s.read_exact(&mut buf).expect("NBD read data");
        buf
    }
}

/// Kills the daemon when the test ends, however it ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_qemu_nbd(through_exec: bool) -> String {
    let dir = std::env::temp_dir().join(format!("rs-cli-nbd-{through_exec}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("disk.raw");
    let sock = dir.join("nbd.sock");
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let mut disk = vec![0u8; 4 << 20];
    disk[..4096].copy_from_slice(&pattern);
    std::fs::write(&file, &disk).unwrap();

    let nbd_args = [
        "-k".as_ref(),
        sock.as_os_str(),
        "-f".as_ref(),
        "raw".as_ref(),
        "--persistent".as_ref(),
        file.as_os_str(),
    ];
    let mut cmd = if through_exec {
        let mut c = tool();
        c.args(["exec", "--strict", "--", "qemu-nbd"]);
        c
    } else {
        Command::new("qemu-nbd")
    };
    cmd.args(nbd_args).stdin(Stdio::null());
    let mut daemon = Daemon(
        cmd.spawn()
            .expect("start qemu-nbd (vm-test copies it from the host; install qemu-utils there)"),
    );
    let pid = daemon.0.id();

    // Wait for the socket; a dead daemon or a very slow start fails loudly.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut nbd = loop {
        if let Some(st) = daemon.0.try_wait().unwrap() {
            panic!("qemu-nbd exited before serving: {st}");
        }
        if let Ok(c) = Nbd::connect(&sock) {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "qemu-nbd did not open {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Real I/O through the daemon (its thread pool serves it).
    assert_eq!(nbd.request(NBD_CMD_READ, 0, 4096, &[]), pattern);
    let block = vec![0xa5u8; 65536];
    nbd.request(NBD_CMD_WRITE, 1 << 20, block.len() as u32, &block);
    assert_eq!(nbd.request(NBD_CMD_READ, 1 << 20, 65536, &[]), block);

    // While the client is connected: every thread of the daemon.
    let n = assert_every_thread(pid, through_exec);
    let text = assert_status(pid, through_exec, 2);
    assert!(text.contains("\"qemu-nbd\""), "{text}");
    println!(
        "qemu-nbd {} reclaim-scope exec ({n} threads):\n{text}",
        if through_exec { "with" } else { "without" }
    );
    nbd.request(NBD_CMD_DISC, 0, 0, &[]);
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    text
}

vm_test! {
    fn exec_flags_every_thread_of_qemu_nbd_and_without_exec_none() {
        require_vm();
        assert_eq!(
            thread_flags() & IO_FLUSHER_BITS,
            0,
            "the test thread is flagged"
        );
        let with = serve_qemu_nbd(true);
        let without = serve_qemu_nbd(false);
        assert!(with.contains("io-flusher (all)"), "{with}");
        assert!(without.contains("0 io-flusher (none)"), "{without}");
    }
}

vm_test! {
    fn probe_and_strict_exec_succeed_with_the_capability() {
        require_vm();
        let o = tool().arg("probe").output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{o:?}");
        assert!(out.contains("PR_SET_IO_FLUSHER:  available"), "{out}");
        assert!(
            out.contains("CAP_SYS_RESOURCE:   in the effective set"),
            "{out}"
        );
        println!("{out}");
        // The exec'd shell reads its own flags: set, and no warning.
        let o = tool()
            .args(["exec", "--strict", "--", "sh", "-c", "cat /proc/self/stat"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        assert!(o.stderr.is_empty(), "{o:?}");
        let flags = parse_stat_flags(&String::from_utf8_lossy(&o.stdout)).unwrap();
        assert_eq!(
            flags & IO_FLUSHER_BITS,
            IO_FLUSHER_BITS,
            "{}",
            describe_flags(flags)
        );
    }
}

// ---------------------------------------------------------------------------
// Audit::current()
// ---------------------------------------------------------------------------

vm_test! {
    fn audit_finds_a_thread_cleared_behind_its_flushers_back() {
        require_vm();
        on_fresh_thread(|| {
            let me = current_tid();
            let flusher = IoFlusher::try_enter().expect("the VM has CAP_SYS_RESOURCE");
            assert_eq!(thread_flags() & IO_FLUSHER_BITS, IO_FLUSHER_BITS);
            let a = Audit::current().unwrap();
            assert_eq!(a.verdict(me), Some(Verdict::Flusher), "{a:#}");

            // Behind the guard's back: the raw setter, not a guard.
            set_thread_io_flusher(false).unwrap();
            assert_eq!(thread_flags() & IO_FLUSHER_BITS, 0, "/proc still flagged");
            let a = Audit::current().unwrap();
            println!("{a}");
            assert_eq!(a.verdict(me), Some(Verdict::Missing), "{a:#}");
            assert_eq!(
                a.missing().map(|t| t.tid).collect::<Vec<_>>(),
                [me],
                "{a:#}"
            );
            assert!(!a.is_clean());
            assert!(
                a.to_string().contains(&format!("MISSING     tid {me} ")),
                "{a}"
            );

            drop(flusher);
            let a = Audit::current().unwrap();
            assert_eq!(a.verdict(me), Some(Verdict::Clear), "{a:#}");
        });
    }
}

vm_test! {
    fn audit_finds_a_thread_spawned_inside_a_scope() {
        require_vm();
        on_fresh_thread(|| {
            let me = current_tid();
            let pid = std::process::id() as i32;
            let scope = NoFsScope::try_enter().expect("the VM has CAP_SYS_RESOURCE");
            let (tid_tx, tid_rx) = mpsc::channel();
            let (stop_tx, stop_rx) = mpsc::channel::<()>();
            let child = std::thread::Builder::new()
                .name("in-scope-child".into())
                .spawn(move || {
                    tid_tx.send(current_tid()).unwrap();
                    let _ = stop_rx.recv();
                })
                .unwrap();
            let child_tid = tid_rx.recv().unwrap();

            // Inside the scope: this thread is accounted for, the child is not.
            let a = Audit::current().unwrap();
            assert_eq!(a.verdict(me), Some(Verdict::InScope), "{a:#}");
            assert_eq!(a.verdict(child_tid), Some(Verdict::Unaccounted), "{a:#}");

            drop(scope);
            assert_eq!(thread_flags() & IO_FLUSHER_BITS, 0, "scope did not restore");
            let f = task_flags(pid, child_tid).unwrap();
            assert_eq!(
                f & IO_FLUSHER_BITS,
                IO_FLUSHER_BITS,
                "{}",
                describe_flags(f)
            );
            let a = Audit::current().unwrap();
            println!("{a}");
            assert_eq!(a.verdict(me), Some(Verdict::Clear), "{a:#}");
            assert_eq!(
                a.unaccounted().map(|t| t.tid).collect::<Vec<_>>(),
                [child_tid],
                "{a:#}"
            );
            assert!(
                a.to_string()
                    .contains(&format!("UNACCOUNTED tid {child_tid} \"in-scope-child\"")),
                "{a}"
            );

            drop(stop_tx);
            child.join().unwrap();
        });
    }
}

// ---------------------------------------------------------------------------
// hostile environments (issue 18): a seccomp refusal with the capability
// held, and PID namespaces
// ---------------------------------------------------------------------------

#[path = "support/seccomp.rs"]
mod seccomp;

vm_test! {
    fn probe_and_exec_blame_seccomp_when_eperm_comes_with_the_capability() {
        require_vm();
        for (errno, name) in [(libc::EPERM, "EPERM"), (libc::EACCES, "EACCES")] {
            let (probe, strict) = seccomp::with_refused_prctl(errno, || {
                let probe = tool().arg("probe").output().unwrap();
                let strict = tool()
                    .args(["exec", "--strict", "--", "true"])
                    .output()
                    .unwrap();
                (probe, strict)
            });
            let out = String::from_utf8_lossy(&probe.stdout);
            println!("{name}:\n{out}");
            assert_eq!(probe.status.code(), Some(1), "{probe:?}");
            assert!(
                out.contains("CAP_SYS_RESOURCE:   in the effective set"),
                "{out}"
            );
            assert!(out.contains("user namespace:     initial"), "{out}");
            assert!(
                out.contains(&format!("PR_SET_IO_FLUSHER:  refused with {name} (")),
                "{out}"
            );
            let fix = out.lines().find(|l| l.starts_with("fix:")).unwrap();
            assert!(fix.contains("seccomp filter"), "{fix}");
            assert!(
                !fix.contains("needs CAP_SYS_RESOURCE in the initial user namespace; run"),
                "{fix}"
            );
            if errno == libc::EPERM {
                assert!(
                    fix.contains("although CAP_SYS_RESOURCE is in the effective set"),
                    "{fix}"
                );
            }
            assert_eq!(strict.status.code(), Some(125), "{strict:?}");
            let err = String::from_utf8_lossy(&strict.stderr);
            assert!(
                err.contains(&format!("{name} (")) && err.contains("seccomp filter"),
                "{err}"
            );
        }
        // Without the filter the same probe succeeds: the filter was the cause.
        let o = tool().arg("probe").output().unwrap();
        assert!(o.status.success(), "{o:?}");
    }
}

/// Set when this test binary runs inside a PID namespace as the helper of
/// the test below; the value says whether /proc is the namespace's own.
const PIDNS_HELPER: &str = "RECLAIM_SCOPE_VM_PIDNS_HELPER";
const PIDNS_TEST: &str = "exec_and_audit_in_a_pid_namespace_with_and_without_its_own_proc";

fn pidns_helper(mode: &str) {
    let me = std::process::id() as i32;
    assert_eq!(me, 1, "not the first process of a new PID namespace");
    let ns = reclaim_scope::proc::pid_namespace().unwrap();
    println!("{mode}: {ns:?}");
    if mode == "outer-proc" {
        assert!(
            matches!(
                ns,
                reclaim_scope::proc::PidNamespace::Ancestor { pid: 1, .. }
            ),
            "{ns:?}"
        );
    } else {
        assert_eq!(ns, reclaim_scope::proc::PidNamespace::Own);
    }
    // Started by `reclaim-scope exec`: every own thread flagged, read
    // through /proc/self with this namespace's tids.
    let threads = reclaim_scope::proc::threads_of(me).unwrap();
    assert!(
        threads.iter().any(|t| t.tid == current_tid()),
        "{threads:?}"
    );
    for t in &threads {
        assert!(t.flags.is_io_flusher(), "{t:?}");
    }
    on_fresh_thread(|| {
        let tid = current_tid();
        // The registry's tid (gettid) and the audit's must match: an
        // inherited flag is unaccounted, a claiming IoFlusher accounts for it.
        let a = Audit::current().unwrap();
        assert_eq!(a.verdict(tid), Some(Verdict::Unaccounted), "{a:#}");
        let flusher = IoFlusher::try_enter().expect("the VM has CAP_SYS_RESOURCE");
        let a = Audit::current().unwrap();
        assert_eq!(a.verdict(tid), Some(Verdict::Flusher), "{a:#}");
        assert_eq!(a.pid(), 1);
        set_thread_io_flusher(false).unwrap();
        let a = Audit::current().unwrap();
        assert_eq!(a.verdict(tid), Some(Verdict::Missing), "{a:#}");
        set_thread_io_flusher(true).unwrap();
        drop(flusher);
    });
}

vm_test! {
    fn exec_and_audit_in_a_pid_namespace_with_and_without_its_own_proc() {
        if let Some(mode) = std::env::var_os(PIDNS_HELPER) {
            return pidns_helper(mode.to_str().unwrap());
        }
        require_vm();
        let exe = std::env::current_exe().unwrap();
        for (mode, extra) in [("outer-proc", None), ("own-proc", Some("--mount-proc"))] {
            let o = Command::new("unshare")
                .args(["--pid", "--fork"])
                .args(extra)
                .args(["reclaim-scope", "exec", "--strict", "--"])
                .arg(&exe)
                .args([
                    PIDNS_TEST,
                    "--exact",
                    "--include-ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(PIDNS_HELPER, mode)
                .output()
                .expect("run unshare");
            let out = String::from_utf8_lossy(&o.stdout);
            println!("{mode}:\n{out}");
            assert!(o.status.success(), "{mode}: {o:?}");
            assert!(out.contains("1 passed"), "{mode}: {out}");

            // `status` inside the namespace says which namespace's pid it read.
            let o = Command::new("unshare")
                .args(["--pid", "--fork"])
                .args(extra)
                .args(["reclaim-scope", "status", "--json", "1"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{mode}: {o:?}");
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            let want = if mode == "outer-proc" {
                "ancestor"
            } else {
                "own"
            };
            assert_eq!(v[0]["pid_namespace"], want, "{mode}: {v}");
        }
    }
}
