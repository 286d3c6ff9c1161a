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
//! Without CAP_SYS_RESOURCE it serves anyway, after a one-line warning;
//! `--strict` refuses instead. `--no-flusher` serves without the
//! `IoFlusher` (each file I/O is still NOIO-scoped by `NoFsFile`);
//! `--unprotected` also bypasses `NoFsFile`: the 2019 daemon, for comparison.

#[path = "../common/daemon.rs"]
mod daemon;
mod server;

use clap::Parser;
use daemon::Protection;
use server::{Export, Guarding};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(about = "NBD server on reclaim-scope's NoFsFile and IoFlusher")]
struct Args {
    /// Backing file; created (sparse, --size bytes) when missing or empty.
    #[arg(long, default_value_os_t = std::env::temp_dir().join("reclaim-scope-nbd.img"))]
    file: PathBuf,
    /// Size of a newly created backing file (suffixes K, M, G, T).
    #[arg(long, default_value = "256M", value_parser = daemon::parse_size)]
    size: u64,
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
    #[command(flatten)]
    protection: daemon::ProtectionArgs,
    /// Do not log connections.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let protection = args.protection.protection();
    if daemon::announce("nbd-server", "workers", protection).is_err() {
        return ExitCode::from(3);
    }
    let guarding = match protection {
        Protection::IoFlusher => Guarding::IoFlusher,
        Protection::Strict => Guarding::Strict,
        Protection::NoFlusher | Protection::Unprotected => Guarding::None,
    };
    let (file, size) = match server::open_backing(&args.file, args.size, args.read_only) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("nbd-server: {e}");
            return ExitCode::from(2);
        }
    };
    let mut export = Export::new(args.name.clone(), file, size, args.read_only, guarding);
    export.log = !args.quiet;
    export.plain_io = protection == Protection::Unprotected;
    let export = Arc::new(export);

    let mut threads = Vec::new();
    if let Some(path) = &args.unix {
        let _ = std::fs::remove_file(path);
        match UnixListener::bind(path) {
            Ok(l) => {
                eprintln!(
                    "nbd-server: serving {} ({size} bytes) as nbd+unix:///{}?socket={}",
                    args.file.display(),
                    args.name,
                    path.display()
                );
                let e = export.clone();
                threads.push(std::thread::spawn(move || server::run_unix(l, e)));
            }
            Err(e) => {
                eprintln!("nbd-server: cannot listen on {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    if args.listen != "none" {
        match TcpListener::bind(&args.listen) {
            Ok(l) => {
                eprintln!(
                    "nbd-server: serving {} ({size} bytes) as nbd://{}/{}",
                    args.file.display(),
                    args.listen,
                    args.name
                );
                let e = export.clone();
                threads.push(std::thread::spawn(move || server::run_tcp(l, e)));
            }
            Err(e) => {
                eprintln!("nbd-server: cannot listen on {}: {e}", args.listen);
                return ExitCode::from(2);
            }
        }
    }
    if threads.is_empty() {
        eprintln!("nbd-server: nothing to listen on (--listen none and no --unix)");
        return ExitCode::from(2);
    }
    for t in threads {
        let _ = t.join();
    }
    ExitCode::SUCCESS
}
