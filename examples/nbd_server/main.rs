//! An NBD server whose connection workers are I/O flushers and whose every
//! access to the backing file goes through `NoFsFile` — the daemon of the
//! 2019 deadlock, written so that it cannot recurse into the reclaim of the
//! file system it serves.
//!
//! ```sh
//! cargo run --release --example nbd_server               # 256 MiB export on 127.0.0.1:10809
//! qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' nbd://127.0.0.1:10809
//! cargo run --release --example nbd_server -- --unix /tmp/nbd.sock --listen none
//! ```
//!
//! `--file` may be a block device (a disk, partition, LVM volume, loop
//! device): its size is the device's, and `--read-only` serves it read-only.
//! Clients must finish the handshake within `--handshake-timeout`; at most
//! `--max-handshakes` negotiate at once and `--max-connections` are open in
//! all. SIGTERM/SIGINT drain: requests in progress complete, later ones are
//! answered NBD_ESHUTDOWN, the backing store is synced, exit 0.
//!
//! Without CAP_SYS_RESOURCE it serves anyway, after a one-line warning;
//! `--strict` refuses instead. `--no-flusher` serves without the
//! `IoFlusher` (each file I/O is still NOIO-scoped by `NoFsFile`);
//! `--unprotected` also bypasses `NoFsFile`: the 2019 daemon, for comparison.

use clap::Parser;
use reclaim_scope_examples::daemon::{self, exit};
use reclaim_scope_examples::nbd as server;
use server::{Export, Limits};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A new backing file's size when --size is not given.
const DEFAULT_SIZE: u64 = 256 << 20;

#[derive(Parser, Debug)]
#[command(about = "NBD server on reclaim-scope's NoFsFile and IoFlusher")]
struct Args {
    /// Backing file or block device; a file is created (sparse, --size
    /// bytes) when missing or empty.
    #[arg(long, default_value_os_t = std::env::temp_dir().join("reclaim-scope-nbd.img"))]
    file: PathBuf,
    /// Size of a newly created backing file (suffixes K, M, G, T; default
    /// 256M). An existing file or device keeps its size: a --size that
    /// differs from it is refused.
    #[arg(long, value_parser = daemon::parse_size)]
    size: Option<u64>,
    /// TCP address to listen on, or "none".
    #[arg(long, default_value = "127.0.0.1:10809")]
    listen: String,
    /// Unix socket to listen on as well (removed and re-created).
    #[arg(long)]
    unix: Option<PathBuf>,
    /// Export name (the empty name selects it too).
    #[arg(long, default_value = "disk")]
    name: String,
    /// Serve read-only.
    #[arg(long)]
    read_only: bool,
    /// Seconds a client has from connecting to the end of option haggling.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    handshake_timeout: Duration,
    /// Connections negotiating at once; more are refused.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    max_handshakes: u32,
    /// Connections open in all; more are refused.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Seconds a message or reply may stall half-way before the connection
    /// is dropped.
    #[arg(long, default_value = "60", value_parser = parse_secs)]
    io_timeout: Duration,
    /// Close established connections idle for this many seconds (0: never;
    /// TCP keepalive finds dead peers).
    #[arg(long, default_value = "0", value_parser = parse_secs)]
    idle_timeout: Duration,
    /// Seconds SIGTERM waits for connections to drain before exiting anyway.
    #[arg(long, default_value = "30", value_parser = parse_secs)]
    drain_timeout: Duration,
    #[command(flatten)]
    protection: daemon::ProtectionArgs,
    /// Do not log connections.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let protection = args.protection.protection();
    if let Err(code) = daemon::announce("nbd-server", "workers", protection) {
        return code;
    }
    let guarding = protection.guarding();
    let opts = daemon::BackingOpts {
        size: args.size,
        default_size: DEFAULT_SIZE,
        read_only: args.read_only,
    };
    let (file, size) = match daemon::open_backing(&args.file, opts, |_| Ok(())) {
        Ok(b) => (b.file, b.size),
        Err(e) => {
            eprintln!("nbd-server: {e}");
            return ExitCode::from(exit::SETUP);
        }
    };
    let mut export = Export::new(args.name.clone(), file, size, args.read_only, guarding);
    export.log = !args.quiet;
    export.plain_io = protection.plain_io();
    export.limits = Limits {
        handshake_timeout: args.handshake_timeout,
        max_handshakes: args.max_handshakes as usize,
        max_connections: args.max_connections as usize,
        io_timeout: args.io_timeout,
        idle_timeout: Some(args.idle_timeout).filter(|d| !d.is_zero()),
    };
    let export = Arc::new(export);

    // A write beyond RLIMIT_FSIZE must fail with EFBIG (answered
    // NBD_ENOSPC), not kill the server with SIGXFSZ's default action.
    if let Err(e) = signal_hook::flag::register(libc::SIGXFSZ, Arc::default()) {
        eprintln!("nbd-server: cannot catch SIGXFSZ: {e}");
    }
    // Before any client is served: a SIGTERM from then on drains.
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| eprintln!("nbd-server: no clean shutdown on SIGTERM: {e}"))
    .ok();
    let mut threads = Vec::new();
    if let Some(path) = &args.unix {
        let _ = std::fs::remove_file(path);
        match UnixListener::bind(path) {
            Ok(l) => {
                let e = export.clone();
                threads.push(std::thread::spawn(move || server::run_unix(l, e)));
                // Said once the accept thread exists: tests take the thread
                // count from here.
                eprintln!(
                    "nbd-server: serving {}{} ({size} bytes) as nbd+unix:///{}?socket={}",
                    args.file.display(),
                    kind(&export),
                    args.name,
                    path.display()
                );
            }
            Err(e) => {
                eprintln!("nbd-server: cannot listen on {}: {e}", path.display());
                return ExitCode::from(exit::SETUP);
            }
        }
    }
    if args.listen != "none" {
        match TcpListener::bind(&args.listen) {
            Ok(l) => {
                let e = export.clone();
                threads.push(std::thread::spawn(move || server::run_tcp(l, e)));
                eprintln!(
                    "nbd-server: serving {}{} ({size} bytes) as nbd://{}/{}",
                    args.file.display(),
                    kind(&export),
                    args.listen,
                    args.name
                );
            }
            Err(e) => {
                eprintln!("nbd-server: cannot listen on {}: {e}", args.listen);
                return ExitCode::from(exit::SETUP);
            }
        }
    }
    if threads.is_empty() {
        eprintln!("nbd-server: nothing to listen on (--listen none and no --unix)");
        return ExitCode::from(exit::SETUP);
    }
    let Some(mut signals) = signals else {
        for t in threads {
            let _ = t.join();
        }
        return ExitCode::SUCCESS;
    };
    let sig = signals
        .forever()
        .next()
        .unwrap_or(signal_hook::consts::SIGTERM);
    // No new client can reach a server that is going away; the socket file
    // it bound goes with it.
    if let Some(path) = &args.unix {
        let _ = std::fs::remove_file(path);
    }
    drain(&export, sig, args.drain_timeout)
}

fn kind(export: &Export) -> &'static str {
    if export.file.is_block_device() {
        " (block device)"
    } else {
        ""
    }
}

/// A clean shutdown: the connections finish what they are doing (see
/// `Export::begin_shutdown`), then the backing store is synced.
fn drain(export: &Export, sig: i32, timeout: Duration) -> ExitCode {
    export.begin_shutdown();
    let open = export.active.load(Ordering::SeqCst);
    eprintln!("nbd-server: signal {sig}: shutting down, draining {open} connections");
    let until = Instant::now() + timeout;
    while export.active.load(Ordering::SeqCst) > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = export.active.load(Ordering::SeqCst);
    let synced = if export.read_only {
        Ok(())
    } else {
        export.file.sync_all_nofs()
    };
    match (left, synced) {
        (0, Ok(())) => {
            eprintln!("nbd-server: drained, backing store synced, exiting");
            ExitCode::SUCCESS
        }
        (n, Ok(())) => {
            eprintln!("nbd-server: {n} connections still busy after {timeout:?}; exiting anyway");
            ExitCode::from(exit::FAILED)
        }
        (_, Err(e)) => {
            eprintln!("nbd-server: final sync failed: {e}");
            ExitCode::from(exit::FAILED)
        }
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=86400.0 * 365.0).contains(&v) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(v))
}
