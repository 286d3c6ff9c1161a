//! A FUSE passthrough file system whose `/dev/fuse` loop runs as an I/O
//! flusher and whose every file data access goes through `NoFsFile`: the
//! daemon the kernel waits on while it writes back this mount's dirty pages
//! can never recurse into file-system or block-I/O reclaim itself.
//!
//! ```sh
//! mkdir -p /tmp/src /tmp/mnt
//! cargo run --release --example fuse_passthrough -- --source /tmp/src --mountpoint /tmp/mnt
//! # ... use /tmp/mnt; Ctrl-C or SIGTERM unmounts and exits
//! ```
//!
//! Mounts with mount(2) on /dev/fuse (needs root; no libfuse, no
//! fusermount). Without CAP_SYS_RESOURCE it serves anyway, after a one-line
//! warning; `--strict` refuses instead. `--no-flusher` serves without the
//! `IoFlusher` (each file data access is still NOIO-scoped by `NoFsFile`);
//! `--unprotected` also bypasses `NoFsFile`: the baseline for comparison.
//!
//! `--allow-other` lets other users use the mount (the kernel checks their
//! permissions, `default_permissions`); what they create is theirs.
//!
//! The first SIGINT/SIGTERM unmounts; when the mount is busy it is detached
//! lazily (`MNT_DETACH`) and the daemon exits after a grace period (`--grace`, 2 s), so
//! no mount and no daemon stay behind (users of files still open there get
//! `ENOTCONN`). A second signal exits at once.

use clap::Parser;
use passthrough::{Passthrough, Stats, Unmounted};
use reclaim_scope_examples::daemon::{self, exit};
use reclaim_scope_examples::fuse as passthrough;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "FUSE passthrough on reclaim-scope's NoFsFile and IoFlusher")]
struct Args {
    /// Directory whose contents the mount shows.
    #[arg(long)]
    source: PathBuf,
    /// Where to mount (an existing directory).
    #[arg(long)]
    mountpoint: PathBuf,
    /// Worker threads reading /dev/fuse (each its own cloned fd when > 1).
    #[arg(long, default_value_t = 1,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    threads: usize,
    /// Let other users use the mount (mount option allow_other).
    #[arg(long)]
    allow_other: bool,
    /// Plain READDIR only (no READDIRPLUS).
    #[arg(long)]
    no_readdirplus: bool,
    /// No extended attributes (EOPNOTSUPP to callers): spares the
    /// GETXATTR round trip the kernel makes before every cached write.
    #[arg(long)]
    no_xattr: bool,
    /// After a lazy unmount of a busy mount, serve the files still open
    /// there this many seconds before exiting (a second signal exits at
    /// once).
    #[arg(long, default_value_t = 2)]
    grace: u64,
    #[command(flatten)]
    protection: daemon::ProtectionArgs,
}

/// The closing line, on every way out.
fn print_stats(stats: &Stats) {
    eprintln!(
        "fuse-passthrough: {} requests served; {} inodes known at the end ({} kernel references forgotten)",
        stats.requests.load(Ordering::Relaxed),
        stats.inodes.load(Ordering::Relaxed),
        stats.forgotten.load(Ordering::Relaxed)
    );
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Usage errors before the protection warning, so they are not buried.
    let (source, mountpoint) = match passthrough::check_mount_paths(&args.source, &args.mountpoint)
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fuse-passthrough: {e}");
            return ExitCode::from(exit::SETUP);
        }
    };
    let protection = args.protection.protection();
    if let Err(code) = daemon::announce("fuse-passthrough", "serving threads", protection) {
        return code;
    }
    let guarding = protection.guarding();
    // Registered before mounting: a signal that arrives during the mount is
    // served after it, and the mount is never left behind.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fuse-passthrough: cannot handle signals: {e}");
            return ExitCode::from(exit::SETUP);
        }
    };
    let mut fs = match Passthrough::new(source.clone(), guarding) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("fuse-passthrough: --source {}: {e}", source.display());
            return ExitCode::from(exit::SETUP);
        }
    };
    fs.plain_io = protection.plain_io();
    fs.allow_other = args.allow_other;
    fs.readdirplus = !args.no_readdirplus;
    fs.xattr = !args.no_xattr;
    let stats = fs.stats();
    let mut mounted = match passthrough::mount(fs, &mountpoint, args.threads) {
        Ok(m) => m,
        Err(e) => {
            eprintln!(
                "fuse-passthrough: cannot mount {} on {}: {e}",
                source.display(),
                args.mountpoint.display()
            );
            return ExitCode::from(if e.kind() == std::io::ErrorKind::PermissionDenied {
                exit::REFUSED
            } else {
                exit::SETUP
            });
        }
    };
    eprintln!(
        "fuse-passthrough: {} mounted on {} ({} serving thread(s))",
        source.display(),
        args.mountpoint.display(),
        args.threads.max(1)
    );
    // The signal thread unmounts; the session then ends and `join` returns.
    // An unmount from outside (umount, fusermount -u) ends it the same way.
    let mut unmounter = mounted.take_unmounter().expect("fresh mount");
    let handle = signals.handle();
    let grace = Duration::from_secs(args.grace);
    let exit_stats = stats.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signals = signals.forever();
            let Some(sig) = signals.next() else { return };
            eprintln!("fuse-passthrough: signal {sig}: unmounting");
            match passthrough::unmount_or_detach(&mut unmounter, &mountpoint) {
                // The session ends; `join` returns in main.
                Ok(Unmounted::Clean) => return,
                Ok(Unmounted::Lazily) => eprintln!(
                    "fuse-passthrough: {} is busy: detached lazily; exiting in {} s \
                     (files still open there then get ENOTCONN)",
                    mountpoint.display(),
                    grace.as_secs()
                ),
                Err(e) => eprintln!("fuse-passthrough: unmount: {e}; exiting"),
            }
            // Busy or failed: the session may never end by itself (an open
            // file, a working directory). Exit after the grace period, or at
            // a second signal; closing /dev/fuse ends the connection.
            let grace_stats = exit_stats.clone();
            std::thread::spawn(move || {
                std::thread::sleep(grace);
                eprintln!("fuse-passthrough: grace period over: exiting");
                print_stats(&grace_stats);
                std::process::exit(0);
            });
            if let Some(sig) = signals.next() {
                eprintln!("fuse-passthrough: signal {sig} again: exiting now");
            }
            print_stats(&exit_stats);
            std::process::exit(0);
        })
        .expect("spawn the signal thread");
    let r = mounted.join();
    handle.close();
    print_stats(&stats);
    match r {
        Ok(()) => {
            eprintln!("fuse-passthrough: unmounted");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fuse-passthrough: session ended: {e}");
            ExitCode::FAILURE
        }
    }
}
