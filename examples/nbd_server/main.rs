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

mod server;

use clap::Parser;
use reclaim_scope::{support, Support};
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
    #[arg(long, default_value = "256M", value_parser = parse_size)]
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
    /// Serve without IoFlusher guards: the unprotected baseline.
    #[arg(long, conflicts_with = "strict")]
    no_flusher: bool,
    /// Like --no-flusher, and file reads, writes and flushes bypass NoFsFile
    /// (plain pread/pwrite/fdatasync): the unprotected daemon of the 2019
    /// deadlock, for comparison. --no-flusher alone still NOIO-scopes each
    /// file I/O through NoFsFile.
    #[arg(long, conflicts_with = "strict")]
    unprotected: bool,
    /// Refuse to start (exit 3) unless workers can be I/O flushers.
    #[arg(long)]
    strict: bool,
    /// Do not log connections.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        Some('T' | 't') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4096, 512K, 256M, 2G)"))?;
    let bytes = n
        .checked_mul(1 << shift)
        .filter(|&b| b > 0 && b <= i64::MAX as u64)
        .ok_or_else(|| format!("{s:?} is out of range (1 byte to 8 EiB)"))?;
    Ok(bytes)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let guarding = if args.no_flusher || args.unprotected {
        Guarding::None
    } else if args.strict {
        Guarding::Strict
    } else {
        Guarding::IoFlusher
    };
    match (support(), guarding) {
        (_, Guarding::None) if args.unprotected => eprintln!(
            "nbd-server: --unprotected: no IoFlusher and plain file I/O (baseline for comparison)"
        ),
        (_, Guarding::None) => eprintln!(
            "nbd-server: --no-flusher: workers are not I/O flushers; file I/O is still \
             NOIO-scoped per call by NoFsFile"
        ),
        (Support::Available, _) => eprintln!("nbd-server: workers are I/O flushers"),
        (s, Guarding::Strict) => {
            eprintln!(
                "nbd-server: --strict: {}",
                s.error().map_or(s.to_string(), |e| e.to_string())
            );
            return ExitCode::from(3);
        }
        (s, _) => {
            eprintln!(
                "nbd-server: warning: serving UNPROTECTED from reclaim recursion: {}",
                s.error().map_or(s.to_string(), |e| e.to_string())
            );
            // Said once here; the crate's own once-per-process report would repeat it.
            let _ = reclaim_scope::set_degradation_hook(|_| {});
        }
    }
    let (file, size) = match server::open_backing(&args.file, args.size, args.read_only) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("nbd-server: {e}");
            return ExitCode::from(2);
        }
    };
    let mut export = Export::new(args.name.clone(), file, size, args.read_only, guarding);
    export.log = !args.quiet;
    export.plain_io = args.unprotected;
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
