//! A ublk block device (`/dev/ublkbN`, Linux ≥ 6.0, `ublk_drv`) served from
//! a file or a block device, on the `libublk` crate: the queue threads are
//! I/O flushers through reclaim-scope and every access to the backing store
//! goes through `NoFsFile` — ublk is the user-space block device the
//! allocation-context rules were written for.
//!
//! ```sh
//! modprobe ublk_drv                                   # root (CAP_SYS_ADMIN)
//! cargo run --release -p ublk_file -- --file /var/tmp/disk.img --size 1G
//! # ublk-file: serving /var/tmp/disk.img (1073741824 bytes) as /dev/ublkb0 (1 queue, depth 64)
//! cargo run --release -p ublk_file -- --file /dev/loop0 --read-only --queues 2
//! ```
//!
//! The queue threads are spawned here, not by libublk's `run_target` (whose
//! threads libublk ≥ 0.4.7 flags with a raw `prctl`, outside any guard):
//! each holds an `IoFlusher` from before its ring exists until it exits, so
//! the flag is set, accounted for by `Audit::current()`, and inherited by anything
//! its ring creates. So does the main thread, whose control ring's io-wq
//! worker runs START_DEV and STOP_DEV. Without CAP_SYS_RESOURCE it serves anyway after a
//! one-line warning; `--strict` refuses (exit 3). `--no-flusher` serves
//! without the `IoFlusher` (each file I/O still NOIO-scoped by `NoFsFile`);
//! `--unprotected` also bypasses `NoFsFile` (plain `pread`/`pwrite`/
//! `fdatasync`/`fallocate`): the unprotected daemon, for comparison.
//!
//! SIGINT/SIGTERM stop the device (requests in flight complete), sync the
//! backing store and delete the device; SIGUSR1 prints `Audit::current()` of every
//! thread. Exit status 0 after a clean stop, 1 when the final sync failed,
//! 2 for a usage or set-up error, 3 for `--strict` refused.

use clap::Parser;
use daemon::Protection;
use libublk::ctrl::UblkCtrlBuilder;
use libublk::io::{BufDescList, UblkDev, UblkIOCtx, UblkQueue};
use libublk::{sys, BufDesc, UblkError, UblkFlags, UblkIORes};
use nix::sys::signal::{SigSet, Signal};
use reclaim_scope::{NoFsFile, NoFsIoError};
use reclaim_scope_examples::daemon::{self, exit, FileIo, IoError};
use std::fs::OpenOptions;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

const CONTROL: &str = "/dev/ublk-control";
const DEFAULT_SIZE: u64 = 256 << 20;

#[derive(Parser, Debug)]
#[command(
    about = "ublk block device on a file or block device, on reclaim-scope's NoFsFile and IoFlusher",
    long_about = "ublk block device (/dev/ublkbN) on a file or block device, on reclaim-scope's \
                  NoFsFile and IoFlusher. Needs root (CAP_SYS_ADMIN) and the ublk driver \
                  (`modprobe ublk_drv`; Linux >= 6.0 with CONFIG_BLK_DEV_UBLK). Example: \
                  ublk_file --file /var/tmp/disk.img --size 1G"
)]
struct Args {
    /// Backing file or block device. A missing or empty file is created
    /// sparse with --size bytes; a block device is served at its own size.
    #[arg(long, required_unless_present = "delete")]
    file: Option<PathBuf>,
    /// Instead of serving: delete ublk device ID (/dev/ublkcID) left behind
    /// by a daemon that was killed (SIGKILL cannot delete its device), and
    /// exit.
    #[arg(long, value_name = "ID", conflicts_with = "file")]
    delete: Option<u32>,
    /// Size of a newly created backing file (suffixes K, M, G, T); default
    /// 256M. An existing file or block device keeps its size: a --size that
    /// differs from it is refused.
    #[arg(long, value_parser = daemon::parse_size)]
    size: Option<u64>,
    /// Hardware queues, one queue thread each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    queues: u16,
    /// Requests in flight per queue (tags).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    depth: u16,
    /// Largest request, and the size of each tag's buffer (suffixes K, M):
    /// a multiple of 4096, at most 32M. Each queue's buffers take depth x
    /// this much memory (touched as requests that large arrive).
    #[arg(long, default_value = "512K", value_parser = parse_io_buf)]
    io_buf: u32,
    /// Serve read-only: the backing store is opened read-only and the
    /// device is marked read-only (UBLK_ATTR_READ_ONLY).
    #[arg(long)]
    read_only: bool,
    #[command(flatten)]
    protection: daemon::ProtectionArgs,
}

/// What the queue threads share.
struct Backing {
    file: NoFsFile,
    size: u64,
    plain_io: bool,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    discards: AtomicU64,
    write_zeroes: AtomicU64,
    errors: AtomicU64,
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn nofs_errno(e: &NoFsIoError) -> i32 {
    // A range check fails before any syscall: no errno, the request is bad.
    e.raw_os_error().unwrap_or(libc::EINVAL)
}

/// The errno for the driver of a backing-store I/O error.
fn backing_errno(e: IoError) -> i32 {
    match e {
        IoError::Plain(e) => errno_of(&e),
        IoError::NoFs(e) => nofs_errno(&e),
    }
}

impl Backing {
    fn io(&self) -> FileIo<'_> {
        FileIo {
            file: &self.file,
            plain: self.plain_io,
        }
    }

    fn read(&self, buf: &mut [u8], off: u64) -> Result<(), i32> {
        self.io().read_exact_at(buf, off).map_err(backing_errno)
    }

    fn write(&self, buf: &[u8], off: u64) -> Result<(), i32> {
        self.io().write_all_at(buf, off).map_err(backing_errno)
    }

    fn sync(&self) -> Result<(), i32> {
        self.io().sync_data().map_err(backing_errno)
    }

    /// DISCARD (`unmap`) or WRITE_ZEROES (`!unmap`: the range must read as
    /// zeros and, with UBLK_IO_F_NOUNMAP, stay allocated).
    fn zero(&self, off: u64, len: u64, discard: bool, may_unmap: bool) -> Result<(), i32> {
        if self.plain_io {
            use nix::fcntl::{fallocate, FallocateFlags as F};
            let (o, l) = (off as libc::off_t, len as libc::off_t);
            let f = self.file.get_ref();
            let keep = F::FALLOC_FL_KEEP_SIZE;
            let punched = may_unmap && fallocate(f, F::FALLOC_FL_PUNCH_HOLE | keep, o, l).is_ok();
            if punched || discard {
                // A discard is advisory: where nothing can be punched, done.
                return Ok(());
            }
            return fallocate(f, F::FALLOC_FL_ZERO_RANGE | keep, o, l).map_err(|e| e as i32);
        }
        if discard {
            return match self.file.discard_nofs(off, len) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
                r => r.map_err(|e| nofs_errno(&e)),
            };
        }
        if may_unmap && !self.file.is_block_device() {
            match self.file.punch_hole_nofs(off, len) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                r => return r.map_err(|e| nofs_errno(&e)),
            }
        }
        // zero_range_nofs writes zeros itself where no fallocate mode works.
        self.file
            .zero_range_nofs(off, len)
            .map_err(|e| nofs_errno(&e))
    }

    /// Serves one request: the bytes done or `-errno` (what the ublk
    /// driver completes the block request with).
    fn serve(&self, iod: &sys::ublksrv_io_desc, buf: &mut [u8]) -> i32 {
        let op = iod.op_flags & 0xff;
        let off = iod.start_sector << 9;
        let len = (iod.nr_sectors as u64) << 9;
        let in_range = off.checked_add(len).is_some_and(|end| end <= self.size);
        let r = match op {
            sys::UBLK_IO_OP_READ | sys::UBLK_IO_OP_WRITE if len as usize > buf.len() => {
                Err(libc::EINVAL)
            }
            _ if op != sys::UBLK_IO_OP_FLUSH && !in_range => Err(libc::EIO),
            sys::UBLK_IO_OP_READ => {
                self.stats.reads.fetch_add(1, Ordering::Relaxed);
                self.read(&mut buf[..len as usize], off)
            }
            sys::UBLK_IO_OP_WRITE => {
                self.stats.writes.fetch_add(1, Ordering::Relaxed);
                self.write(&buf[..len as usize], off).and_then(|()| {
                    if iod.op_flags & sys::UBLK_IO_F_FUA != 0 {
                        self.sync()
                    } else {
                        Ok(())
                    }
                })
            }
            sys::UBLK_IO_OP_FLUSH => {
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                self.sync()
            }
            sys::UBLK_IO_OP_DISCARD => {
                self.stats.discards.fetch_add(1, Ordering::Relaxed);
                self.zero(off, len, true, true)
            }
            sys::UBLK_IO_OP_WRITE_ZEROES => {
                self.stats.write_zeroes.fetch_add(1, Ordering::Relaxed);
                let may_unmap = iod.op_flags & sys::UBLK_IO_F_NOUNMAP == 0;
                self.zero(off, len, false, may_unmap)
            }
            _ => Err(libc::EOPNOTSUPP),
        };
        match r {
            Ok(()) if op == sys::UBLK_IO_OP_READ || op == sys::UBLK_IO_OP_WRITE => len as i32,
            Ok(()) => 0,
            Err(errno) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                -errno
            }
        }
    }
}

/// Open (or create) the backing store: canonical path, file, size.
fn open_backing(args: &Args, path: &std::path::Path) -> Result<(PathBuf, NoFsFile, u64), String> {
    let opts = daemon::BackingOpts {
        size: args.size,
        default_size: DEFAULT_SIZE,
        read_only: args.read_only,
    };
    let daemon::Backing {
        path,
        file,
        mut size,
        ..
    } = daemon::open_backing(path, opts, |_| Ok(())).map_err(|e| e.to_string())?;
    if size % 512 != 0 {
        eprintln!(
            "ublk-file: {}: {size} bytes is not a multiple of 512; the last {} bytes are not served",
            path.display(),
            size % 512
        );
        size -= size % 512;
    }
    if size == 0 {
        return Err(format!("{}: smaller than one sector", path.display()));
    }
    Ok((path, file, size))
}

fn parse_io_buf(s: &str) -> Result<u32, String> {
    let n = daemon::parse_size(s)?;
    if n % 4096 != 0 || n > 32 << 20 {
        return Err(format!("{s:?}: a multiple of 4096 bytes, at most 32M"));
    }
    Ok(n as u32)
}

/// Why the ublk control device cannot be used, in words an operator can act on.
fn check_control() -> Result<(), String> {
    match OpenOptions::new().read(true).write(true).open(CONTROL) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "no {CONTROL}: load the ublk driver (`modprobe ublk_drv`); it needs Linux >= 6.0 \
             built with CONFIG_BLK_DEV_UBLK"
        )),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => Err(format!(
            "{CONTROL}: {e}: adding a ublk device needs root (CAP_SYS_ADMIN)"
        )),
        Err(e) => Err(format!("{CONTROL}: {e}")),
    }
}

fn ublk_error(what: &str, e: UblkError) -> String {
    match e {
        UblkError::OtherError(n) if n < 0 => {
            let err = io::Error::from_raw_os_error(-n);
            let hint = match -n {
                libc::EPERM | libc::EACCES => " (needs root: CAP_SYS_ADMIN)",
                _ => "",
            };
            format!("{what}: {err}{hint}")
        }
        UblkError::IOError(err) => format!("{what}: {err}"),
        e => format!("{what}: {e:?}"),
    }
}

/// One queue thread: an `IoFlusher` (per `protection`) from before its
/// io_uring exists until it exits, then FETCH on every tag and serve until
/// the device stops. Reports its tid, or why it could not start, on `ready`.
fn queue_thread(
    qid: u16,
    dev: &UblkDev,
    backing: &Backing,
    protection: Protection,
    ready: mpsc::Sender<Result<(u16, i32), String>>,
) {
    let _guard = match protection.guarding().enter() {
        Ok(g) => g,
        Err(e) => {
            let _ = ready.send(Err(format!("queue {qid}: --strict: {e}")));
            return;
        }
    };
    let mut bufs = dev.alloc_queue_io_bufs();
    let queue = UblkQueue::new_for_thread(qid, dev, 0)
        .and_then(|q| q.submit_fetch_commands_unified(BufDescList::Slices(Some(&bufs))));
    let queue = match queue {
        Ok(q) => q,
        Err(e) => {
            let _ = ready.send(Err(ublk_error(&format!("queue {qid}"), e)));
            return;
        }
    };
    if ready
        .send(Ok((qid, reclaim_scope::proc::current_tid())))
        .is_err()
    {
        return;
    }
    drop(ready);
    queue.wait_and_handle_io(move |q: &UblkQueue, tag: u16, _io: &UblkIOCtx| {
        let buf = &mut bufs[tag as usize];
        let res = backing.serve(q.get_iod(tag), buf.as_mut_slice());
        if let Err(e) = q.complete_io_cmd_unified(
            tag,
            BufDesc::Slice(buf.as_slice()),
            Ok(UblkIORes::Result(res)),
        ) {
            eprintln!(
                "ublk-file: queue {}: complete tag {tag}: {e:?}",
                q.get_qid()
            );
        }
    });
}

/// `--delete ID`: DEL_DEV of a device whose daemon is gone.
fn delete(id: u32) -> ExitCode {
    let ctrl = match i32::try_from(id).map(libublk::ctrl::UblkCtrl::new_simple) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            eprintln!("ublk-file: {}", ublk_error(&format!("device {id}"), e));
            return ExitCode::from(exit::SETUP);
        }
        Err(_) => {
            eprintln!("ublk-file: --delete {id}: out of range");
            return ExitCode::from(exit::SETUP);
        }
    };
    match ctrl.del_dev() {
        Ok(_) => {
            eprintln!("ublk-file: device {id} deleted");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "ublk-file: {}",
                ublk_error(&format!("delete device {id}"), e)
            );
            ExitCode::from(exit::SETUP)
        }
    }
}

fn print_audit() {
    match reclaim_scope::audit::Audit::current() {
        Ok(a) => eprintln!("ublk-file: {a:#}"),
        Err(e) => eprintln!("ublk-file: audit: {e}"),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = check_control() {
        eprintln!("ublk-file: {e}");
        return ExitCode::from(exit::SETUP);
    }
    if let Some(id) = args.delete {
        return delete(id);
    }
    let protection = args.protection.protection();
    if let Err(code) = daemon::announce("ublk-file", "queue threads", protection) {
        return code;
    }
    let Some(file) = &args.file else {
        unreachable!("clap requires --file without --delete");
    };
    let (path, file, size) = match open_backing(&args, file) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("ublk-file: {e}");
            return ExitCode::from(exit::SETUP);
        }
    };
    let backing = Arc::new(Backing {
        file,
        size,
        plain_io: protection.plain_io(),
        stats: Stats::default(),
    });

    // Every thread blocks these; main takes them with sigwait. No handler
    // runs, so no queue thread's io_uring_enter() is interrupted (libublk
    // ends a queue on any error from it). SIGXFSZ blocked: a write beyond
    // RLIMIT_FSIZE fails with EFBIG instead of killing the daemon.
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGUSR1,
        Signal::SIGXFSZ,
    ] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("ublk-file: cannot block signals: {e}");
        return ExitCode::from(exit::SETUP);
    }

    // The main thread adds, starts, stops and deletes the device through
    // its own io_uring (libublk's control ring, created by build()); START
    // and STOP wait, so io_uring hands them to an io-wq worker of this
    // thread, which copies this thread's flags when it is created. So this
    // thread is an I/O flusher too, from before its ring exists.
    let _main_guard = match protection.guarding().enter() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("ublk-file: --strict: {e}");
            return ExitCode::from(exit::REFUSED);
        }
    };
    let ctrl = match UblkCtrlBuilder::default()
        .name("ublk_file")
        .id(-1)
        .nr_queues(args.queues)
        .depth(args.depth)
        .io_buf_bytes(args.io_buf)
        .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ublk-file: {}", ublk_error("add the ublk device", e));
            return ExitCode::from(exit::SETUP);
        }
    };
    let read_only = args.read_only;
    let tgt_init = move |dev: &mut UblkDev| {
        dev.set_default_params(size);
        let p = &mut dev.tgt.params;
        // A write with FUA is followed by fdatasync before it completes.
        p.basic.attrs |= sys::UBLK_ATTR_FUA;
        if read_only {
            p.basic.attrs |= sys::UBLK_ATTR_READ_ONLY;
        } else {
            p.types |= sys::UBLK_PARAM_TYPE_DISCARD;
            p.discard = sys::ublk_param_discard {
                discard_granularity: 4096,
                max_discard_sectors: u32::MAX >> 9,
                max_write_zeroes_sectors: u32::MAX >> 9,
                max_discard_segments: 1,
                ..Default::default()
            };
        }
        Ok(())
    };
    let dev = match UblkDev::new(ctrl.get_name(), tgt_init, &ctrl) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            eprintln!("ublk-file: {}", ublk_error("set up the ublk device", e));
            return ExitCode::from(exit::SETUP);
        }
    };

    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for qid in 0..args.queues {
        let (dev, backing, tx) = (dev.clone(), backing.clone(), tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("ublk-q{qid}"))
            .spawn(move || queue_thread(qid, &dev, &backing, protection, tx));
        match spawned {
            Ok(h) => threads.push(h),
            Err(e) => {
                eprintln!("ublk-file: spawn queue thread {qid}: {e}");
                return ExitCode::from(exit::SETUP);
            }
        }
    }
    drop(tx);
    let mut failed = None;
    for _ in 0..args.queues {
        match rx.recv() {
            Ok(Ok((qid, tid))) => {
                ctrl.set_thread_affinity(qid, tid);
                if let Err(e) = ctrl.configure_queue(&dev, qid, tid) {
                    failed = Some(ublk_error(&format!("configure queue {qid}"), e));
                }
            }
            Ok(Err(e)) => failed = Some(e),
            Err(_) => failed = Some("a queue thread died".to_owned()),
        }
        if failed.is_some() {
            break;
        }
    }
    let started = match failed {
        Some(e) => Err(e),
        None => ctrl
            .start_dev(&dev)
            .map_err(|e| ublk_error("start the ublk device", e)),
    };
    let code = match started {
        Ok(_) => {
            let mode = if read_only { ", read-only" } else { "" };
            let kind = if backing.file.is_block_device() {
                " (block device)"
            } else {
                ""
            };
            eprintln!(
                "ublk-file: serving {}{kind} ({size} bytes{mode}) as {} ({} queue{}, depth {})",
                path.display(),
                ctrl.get_bdev_path(),
                args.queues,
                if args.queues == 1 { "" } else { "s" },
                args.depth
            );
            loop {
                match signals.wait() {
                    Ok(Signal::SIGUSR1) => print_audit(),
                    Ok(Signal::SIGXFSZ) => {}
                    Ok(s) => {
                        eprintln!("ublk-file: {s}: stopping {}", ctrl.get_bdev_path());
                        break;
                    }
                    Err(e) => {
                        eprintln!("ublk-file: sigwait: {e}; stopping");
                        break;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ublk-file: {e}");
            ExitCode::from(exit::SETUP)
        }
    };
    // STOP_DEV: the block device goes away, requests still queued fail, the
    // queue threads' FETCHes complete with UBLK_IO_RES_ABORT and they return.
    if let Err(e) = ctrl.kill_dev() {
        eprintln!("ublk-file: stop the device: {e:?}");
    }
    for h in threads {
        let _ = h.join();
    }
    let synced = if read_only { Ok(()) } else { backing.sync() };
    // DEL_DEV waits until /dev/ublkcN is closed: the UblkDev holds it open.
    drop(dev);
    if let Err(e) = ctrl.del_dev() {
        eprintln!("ublk-file: delete the device: {e:?}");
    }
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let s = &backing.stats;
    eprintln!(
        "ublk-file: {} reads, {} writes, {} flushes, {} discards, {} write-zeroes, {} errors",
        n(&s.reads),
        n(&s.writes),
        n(&s.flushes),
        n(&s.discards),
        n(&s.write_zeroes),
        n(&s.errors)
    );
    match synced {
        Ok(()) if code == ExitCode::SUCCESS => {
            eprintln!("ublk-file: backing store synced, device deleted, exiting");
            code
        }
        Ok(()) => code,
        Err(errno) => {
            eprintln!(
                "ublk-file: final sync failed: {}",
                io::Error::from_raw_os_error(errno)
            );
            ExitCode::from(exit::FAILED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn backing(size: u64) -> (tempdir::Dir, Backing) {
        let d = tempdir::Dir::new();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.0.join("img"))
            .unwrap();
        f.set_len(size).unwrap();
        let b = Backing {
            file: NoFsFile::new(f),
            size,
            plain_io: false,
            stats: Stats::default(),
        };
        (d, b)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p =
                    std::env::temp_dir().join(format!("ublk-file-test-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn iod(op: u32, flags: u32, sector: u64, sectors: u32) -> sys::ublksrv_io_desc {
        sys::ublksrv_io_desc {
            op_flags: op | flags,
            start_sector: sector,
            nr_sectors: sectors,
            ..Default::default()
        }
    }

    #[test]
    fn write_read_flush_discard_zeroes_round_trip() {
        for plain_io in [false, true] {
            let (_d, mut b) = backing(1 << 20);
            b.plain_io = plain_io;
            let mut buf = vec![0xabu8; 8192];
            assert_eq!(
                b.serve(&iod(sys::UBLK_IO_OP_WRITE, 0, 8, 16), &mut buf),
                8192
            );
            assert_eq!(
                b.serve(
                    &iod(sys::UBLK_IO_OP_WRITE, sys::UBLK_IO_F_FUA, 24, 16),
                    &mut buf
                ),
                8192
            );
            assert_eq!(b.serve(&iod(sys::UBLK_IO_OP_FLUSH, 0, 0, 0), &mut buf), 0);
            let mut back = vec![0u8; 16384];
            assert_eq!(
                b.serve(&iod(sys::UBLK_IO_OP_READ, 0, 8, 32), &mut back),
                16384
            );
            assert!(back.iter().all(|&x| x == 0xab));
            let mut file = vec![0u8; 16384];
            b.file.get_ref().read_exact_at(&mut file, 4096).unwrap();
            assert_eq!(file, back, "the backing file holds what the device wrote");

            assert_eq!(b.serve(&iod(sys::UBLK_IO_OP_DISCARD, 0, 8, 8), &mut buf), 0);
            let flags = sys::UBLK_IO_F_NOUNMAP;
            assert_eq!(
                b.serve(&iod(sys::UBLK_IO_OP_WRITE_ZEROES, flags, 16, 8), &mut buf),
                0
            );
            assert_eq!(
                b.serve(&iod(sys::UBLK_IO_OP_WRITE_ZEROES, 0, 24, 8), &mut buf),
                0
            );
            b.file
                .get_ref()
                .read_exact_at(&mut file[..12288], 4096)
                .unwrap();
            // The discarded range reads as zeros where the file system punched it
            // (tmpfs, ext4, XFS all do); the write-zeroes ranges always do.
            assert!(
                file[4096..12288].iter().all(|&x| x == 0),
                "write-zeroes left data"
            );
            assert!(
                file[..4096].iter().all(|&x| x == 0),
                "discard of a file is a hole"
            );
            assert_eq!(b.stats.errors.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn out_of_range_and_unknown_ops_are_errors() {
        let (_d, b) = backing(64 << 10);
        let mut buf = vec![0u8; 8192];
        // Ends one sector past the end.
        assert_eq!(
            b.serve(&iod(sys::UBLK_IO_OP_READ, 0, 121, 8), &mut buf),
            -libc::EIO
        );
        assert_eq!(
            b.serve(&iod(sys::UBLK_IO_OP_DISCARD, 0, 127, 2), &mut buf),
            -libc::EIO
        );
        // Larger than the tag's buffer.
        assert_eq!(
            b.serve(&iod(sys::UBLK_IO_OP_WRITE, 0, 0, 32), &mut buf),
            -libc::EINVAL
        );
        assert_eq!(
            b.serve(&iod(sys::UBLK_IO_OP_ZONE_RESET, 0, 0, 8), &mut buf),
            -libc::EOPNOTSUPP
        );
        assert_eq!(b.stats.errors.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_read_only_store_answers_ebadf_to_writes() {
        let (d, b) = backing(64 << 10);
        drop(b);
        let f = OpenOptions::new().read(true).open(d.0.join("img")).unwrap();
        let b = Backing {
            file: NoFsFile::new(f),
            size: 64 << 10,
            plain_io: false,
            stats: Stats::default(),
        };
        let mut buf = vec![0u8; 4096];
        assert_eq!(
            b.serve(&iod(sys::UBLK_IO_OP_WRITE, 0, 0, 8), &mut buf),
            -libc::EBADF
        );
        assert_eq!(b.serve(&iod(sys::UBLK_IO_OP_READ, 0, 0, 8), &mut buf), 4096);
    }

    #[test]
    fn no_file_argument_is_a_usage_error_that_names_it() {
        let e = Args::try_parse_from(["ublk_file"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(e.to_string().contains("--file"), "{e}");
        let e = Args::try_parse_from(["ublk_file", "--file", "x", "--strict", "--unprotected"])
            .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        let e = Args::try_parse_from(["ublk_file", "--file", "x", "--delete", "0"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        let a = Args::try_parse_from(["ublk_file", "--delete", "3"]).unwrap();
        assert_eq!((a.delete, a.file), (Some(3), None));
    }
}
