//! A TCMU (target_core_user) handler — the daemon of the 2019 deadlock,
//! tcmu-runner's place in the stack — serving a file-backed SCSI disk,
//! exposed locally through tcm_loop as /dev/sdX. The handler thread is an
//! I/O flusher and every access to the backing file goes through `NoFsFile`.
//!
//! ```sh
//! modprobe target_core_user; modprobe tcm_loop   # configfs mounted
//! cargo run --example tcmu_file -- --file /var/tmp/disk.img --size 1G
//! ```
//!
//! Root only (configfs). Without CAP_SYS_RESOURCE it serves anyway after a
//! one-line warning; `--strict` refuses instead. `--no-flusher` serves
//! without the `IoFlusher` (each file I/O still NOIO-scoped by `NoFsFile`);
//! `--unprotected` also bypasses `NoFsFile`: tcmu-runner's behaviour, for
//! comparison. SIGINT/SIGTERM remove the disk and every configfs object.

#[path = "../common/daemon.rs"]
mod daemon;
mod handler;
mod ring;
mod scsi;
mod target;

use clap::Parser;
use daemon::Protection;
use reclaim_scope::{IoFlusher, NoFsFile};
use scsi::Disk;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "TCMU file-backed disk on reclaim-scope's NoFsFile and IoFlusher")]
struct Args {
    /// Backing file; created (sparse, --size bytes) when missing or empty.
    #[arg(long)]
    file: PathBuf,
    /// Size of a newly created backing file (suffixes K, M, G, T).
    #[arg(long, default_value = "256M", value_parser = daemon::parse_size)]
    size: u64,
    /// Backstore name (configfs core/user_0/NAME) and serial number.
    #[arg(long, default_value = "rs_tcmu_file")]
    name: String,
    /// Logical block size: 512 or 4096.
    #[arg(long, default_value_t = 512)]
    block_size: u32,
    #[command(flatten)]
    protection: daemon::ProtectionArgs,
}

/// FNV-1a, for a stable per-name WWN.
fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.block_size != 512 && args.block_size != 4096 {
        eprintln!("tcmu-file: --block-size must be 512 or 4096");
        return ExitCode::from(2);
    }
    if !args
        .name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        eprintln!("tcmu-file: --name: letters, digits, '_' and '-' only");
        return ExitCode::from(2);
    }
    let protection = args.protection.protection();
    if daemon::announce("tcmu-file", "handler threads", protection).is_err() {
        return ExitCode::from(3);
    }
    let flusher = matches!(protection, Protection::IoFlusher | Protection::Strict);
    let strict = protection == Protection::Strict;
    let path = match std::fs::canonicalize(&args.file).or_else(|_| {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&args.file)?;
        std::fs::canonicalize(&args.file)
    }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tcmu-file: {}: {e}", args.file.display());
            return ExitCode::from(2);
        }
    };
    let file = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tcmu-file: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size == 0 {
        size = args.size;
        if let Err(e) = file.set_len(size) {
            eprintln!("tcmu-file: size {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    let blocks = size / args.block_size as u64;
    if blocks == 0 || path.to_str().map_or(true, |p| p.contains(',')) {
        eprintln!(
            "tcmu-file: {}: needs at least one block and a UTF-8 path without ','",
            path.display()
        );
        return ExitCode::from(2);
    }
    let h = hash(&args.name);
    let disk = Arc::new(Disk {
        file: NoFsFile::new(file),
        block_size: args.block_size,
        blocks,
        plain_io: protection == Protection::Unprotected,
        serial: format!("{:016x}", h),
        naa: (0x5u64 << 60) | (0x001_4051u64 << 36) | (h & 0xf_ffff_ffff),
        counters: Default::default(),
        max_sectors: target::MAX_SECTORS,
    });

    let stop = Arc::new(AtomicBool::new(false));
    let signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tcmu-file: signals: {e}");
            return ExitCode::from(2);
        }
    };

    let mut tgt = target::Target::new(&args.name, h);
    let dev_bytes = blocks * args.block_size as u64;
    let (uio, map_len) = match tgt.create_backstore(&path, dev_bytes, args.block_size) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("tcmu-file: {e}");
            return ExitCode::from(2);
        }
    };

    // The handler: the only thread that touches the backing file.
    let (ready_tx, ready_rx) = mpsc::channel();
    let handler = {
        let (disk, stop) = (disk.clone(), stop.clone());
        std::thread::Builder::new()
            .name("tcmu-handler".into())
            .spawn(move || {
                let _guard = if flusher {
                    match IoFlusher::try_enter() {
                        Ok(g) => Some(g),
                        Err(e) if strict => {
                            let _ = ready_tx.send(Err(format!("--strict: {e}")));
                            return;
                        }
                        Err(_) => None,
                    }
                } else {
                    None
                };
                let ring = match ring::Ring::open(&uio, map_len) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{}: {e}", uio.display())));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                if let Err(e) = handler::serve(&ring, &disk, &stop) {
                    eprintln!("tcmu-file: handler: {e}");
                }
            })
            .expect("spawn the handler thread")
    };
    let started = match ready_rx.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the handler thread died".to_owned()),
    };
    let served = started.and_then(|()| tgt.create_loopback().map_err(|e| e.to_string()));
    let code = match served {
        Ok(()) => {
            let mut signals = signals;
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut sig = None;
            loop {
                if let Some(sd) = target::find_disk() {
                    eprintln!(
                        "tcmu-file: serving {} ({dev_bytes} bytes) as /dev/{sd}",
                        path.display()
                    );
                    break;
                }
                sig = signals.pending().next();
                if sig.is_some() || Instant::now() > deadline {
                    eprintln!(
                        "tcmu-file: serving {} ({dev_bytes} bytes); no /dev/sd* with model TCMU-FILE (sd_mod loaded?)",
                        path.display()
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let sig = sig.or_else(|| signals.forever().next());
            eprintln!("tcmu-file: signal {sig:?}, tearing down");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tcmu-file: {e}");
            ExitCode::from(2)
        }
    };
    // The LUN goes first, while the handler still serves the final
    // SYNCHRONIZE CACHE of the SCSI disk's removal.
    tgt.remove_loopback();
    stop.store(true, Ordering::Relaxed);
    let _ = handler.join();
    tgt.remove_backstore();
    let c = &disk.counters;
    let refused: Vec<String> = c
        .refused_opcodes()
        .iter()
        .map(|op| format!("{op:#04x}"))
        .collect();
    eprintln!(
        "tcmu-file: {} commands ({} reads, {} writes, {} syncs, {} write sames, {} unmaps, {} check conditions; opcodes refused: {})",
        c.commands.load(Ordering::Relaxed),
        c.reads.load(Ordering::Relaxed),
        c.writes.load(Ordering::Relaxed),
        c.syncs.load(Ordering::Relaxed),
        c.write_sames.load(Ordering::Relaxed),
        c.unmaps.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        if refused.is_empty() { "none".to_owned() } else { refused.join(" ") }
    );
    code
}
