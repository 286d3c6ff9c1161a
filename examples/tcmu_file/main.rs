//! A TCMU (target_core_user) handler — the daemon of the 2019 deadlock,
//! tcmu-runner's place in the stack — serving a file or a block device as
//! a SCSI disk (SBC-4/SPC-5), exposed locally through tcm_loop as /dev/sdX.
//! The handler thread is an I/O flusher and every access to the backing
//! store goes through `NoFsFile`.
//!
//! ```sh
//! modprobe target_core_user; modprobe tcm_loop   # configfs mounted
//! cargo run --example tcmu_file -- --file /var/tmp/disk.img --size 1G
//! cargo run --example tcmu_file -- --file /dev/loop0 --read-only
//! cargo run --example tcmu_file -- --file /var/tmp/zoned.img --size 4G \
//!     --zbc --zone-size 64M --conventional-zones 4
//! ```
//!
//! `--zbc` serves a ZBC host-managed zoned disk (`zbc.rs`: zone model,
//! write-pointer rules, the zone-state file beside the backing file).
//!
//! Root only (configfs). Without CAP_SYS_RESOURCE it serves anyway after a
//! one-line warning; `--strict` refuses instead. `--no-flusher` serves
//! without the `IoFlusher` (each file I/O still NOIO-scoped by `NoFsFile`);
//! `--unprotected` also bypasses `NoFsFile`: tcmu-runner's behaviour, for
//! comparison. SIGINT/SIGTERM remove the disk and every configfs object;
//! after a SIGKILL, the next start with the same `--name` takes the objects
//! over (see `target.rs`).

mod target;

use clap::Parser;
use daemon::Protection;
use disk::Disk;
use pages::Unit;
use reclaim_scope::NoFsFile;
use reclaim_scope_examples::daemon::{self, exit};
use reclaim_scope_examples::tcmu::{disk, handler, pages, ring, zbc};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use target::{Config, Target};

#[derive(Parser, Debug)]
#[command(about = "TCMU disk on a file or block device, on reclaim-scope's NoFsFile and IoFlusher")]
struct Args {
    /// Backing file or block device. A missing or empty file is created
    /// sparse with --size bytes; a block device is served at its own size.
    #[arg(long)]
    file: PathBuf,
    /// Size of a newly created backing file (suffixes K, M, G, T); default
    /// 256M. An existing file keeps its size; a block device must match.
    #[arg(long, value_parser = daemon::parse_size)]
    size: Option<u64>,
    /// Backstore name (configfs core/user_0/NAME) and serial number.
    #[arg(long, default_value = "rs_tcmu_file")]
    name: String,
    /// Logical block size: 512 or 4096.
    #[arg(long, default_value_t = 512)]
    block_size: u32,
    /// Serve write protected: the backing store is opened read-only, MODE
    /// SENSE reports WP, every write command gets DATA PROTECT, WRITE
    /// PROTECTED.
    #[arg(long)]
    read_only: bool,
    /// The backstore's cmd_time_out: seconds a command may wait in the ring
    /// before the kernel fails it (0: never). The kernel's default is 30.
    #[arg(long, default_value_t = 30)]
    cmd_time_out: u32,
    /// The backstore's qfull_time_out: seconds a command may wait for room
    /// in a full ring; -1: as long as cmd_time_out, 0: fail at once. The
    /// kernel's default is -1.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(-1..))]
    qfull_time_out: i64,
    /// Serve a ZBC host-managed zoned block device (peripheral device type
    /// 14h, ZBC-2): conventional zones first, then sequential write
    /// required zones; the zone state persists in --zone-state.
    #[arg(long)]
    zbc: bool,
    /// Zone size in bytes (suffixes K, M, G: 64M is 64 MiB), a power of two
    /// and at least one logical block; the device must be a whole number of
    /// zones. Default 256M.
    #[arg(long, value_parser = daemon::parse_size, requires = "zbc")]
    zone_size: Option<u64>,
    /// Conventional zones at the start of the device (default 0); at least
    /// one sequential write required zone must remain.
    #[arg(long, requires = "zbc")]
    conventional_zones: Option<u32>,
    /// MAXIMUM NUMBER OF OPEN SEQUENTIAL WRITE REQUIRED ZONES (VPD 0xb6),
    /// at least 1; default 32.
    #[arg(long, requires = "zbc")]
    max_open_zones: Option<u32>,
    /// The zone-state file (default: the backing file's path + ".zones";
    /// required for a block device). Created with every zone empty when
    /// missing or empty; one that does not match the geometry, or is
    /// corrupt, is a start-up error (exit status 2).
    #[arg(long, requires = "zbc")]
    zone_state: Option<PathBuf>,
    #[command(flatten)]
    protection: daemon::ProtectionArgs,
}

const DEFAULT_ZONE_SIZE: u64 = 256 << 20;
const DEFAULT_MAX_OPEN_ZONES: u32 = 32;

/// The zone geometry the flags ask for over `bytes` bytes.
fn zbc_geometry(args: &Args, bytes: u64) -> Result<zbc::Geometry, String> {
    zbc::Geometry::new(
        bytes,
        args.block_size,
        args.zone_size.unwrap_or(DEFAULT_ZONE_SIZE),
        args.conventional_zones.unwrap_or(0),
        args.max_open_zones.unwrap_or(DEFAULT_MAX_OPEN_ZONES),
    )
}

/// The zone-state file `--zbc` uses for `backing`.
fn zone_state_path(args: &Args, backing: &Path) -> PathBuf {
    args.zone_state.clone().unwrap_or_else(|| {
        let mut p = backing.as_os_str().to_owned();
        p.push(".zones");
        PathBuf::from(p)
    })
}

/// The zones of `--zbc` over `bytes` bytes of `backing`; `None` without it.
fn open_zones(
    args: &Args,
    backing: &Path,
    bytes: u64,
    block_device: bool,
    plain_io: bool,
) -> Result<Option<zbc::Zones>, String> {
    if !args.zbc {
        return Ok(None);
    }
    let geo = zbc_geometry(args, bytes)?;
    if args.zone_state.is_none() && block_device {
        return Err(format!(
            "{}: a block device: --zbc needs --zone-state",
            backing.display()
        ));
    }
    let state = zone_state_path(args, backing);
    zbc::Zones::open(&state, geo, args.read_only, plain_io).map(Some)
}

const DEFAULT_SIZE: u64 = 256 << 20;

/// FNV-1a, for a stable per-name WWN.
fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A backing file (and zone-state file) this run created, removed again
/// on drop unless the daemon got to serve it: a start-up that fails leaves
/// nothing behind.
#[derive(Default)]
struct Created {
    paths: Vec<PathBuf>,
}

impl Created {
    fn keep(&mut self) {
        self.paths.clear();
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Open (or create) the backing store; the file, its size and whether this
/// call created it. Everything a new file's size must satisfy (`--zbc`'s
/// zone geometry) is checked before it is created.
fn open_backing(args: &Args) -> Result<(PathBuf, NoFsFile, u64, bool), String> {
    let opts = daemon::BackingOpts {
        size: args.size,
        default_size: DEFAULT_SIZE,
        read_only: args.read_only,
    };
    // A new disk's size must be a whole number of zones.
    let check_zones = |bytes: u64| -> Result<(), String> {
        if args.zbc {
            let bs = u64::from(args.block_size);
            zbc_geometry(args, bytes - bytes % bs.max(1))
                .map(drop)
                .map_err(|e| format!("--zbc: {e}"))?;
        }
        Ok(())
    };
    let b = daemon::open_backing(&args.file, opts, check_zones).map_err(|e| e.to_string())?;
    if b.path.to_str().is_none_or(|p| p.contains(',')) {
        return Err(format!(
            "{}: needs a UTF-8 path without ','",
            b.path.display()
        ));
    }
    Ok((b.path, b.file, b.size, b.created))
}

/// The handler thread: opens the ring (after `reset` of an adopted
/// backstore's ring, once it is ours), then serves `disk` until `stop`.
fn spawn_handler(
    uio: PathBuf,
    map_len: usize,
    disk: Arc<Disk>,
    protection: Protection,
    reset: Option<PathBuf>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, String> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let handler = std::thread::Builder::new()
        .name("tcmu-handler".into())
        .spawn(move || {
            let _guard = match protection.guarding().enter() {
                Ok(g) => g,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("--strict: {e}")));
                    return;
                }
            };
            let ring = match ring::Ring::open(&uio, map_len) {
                Ok(r) => r,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    let _ = ready_tx.send(Err(format!(
                        "{}: busy: another process serves this backstore",
                        uio.display()
                    )));
                    return;
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{}: {e}", uio.display())));
                    return;
                }
            };
            if let Some(dev) = reset {
                if let Err(e) = Target::reset_ring(&dev) {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            }
            let _ = ready_tx.send(Ok(()));
            if let Err(e) = handler::serve(&ring, &disk, &stop) {
                eprintln!("tcmu-file: handler: {e}");
            }
        })
        .map_err(|e| format!("spawn the handler thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handler),
        Ok(Err(e)) => {
            let _ = handler.join();
            Err(e)
        }
        Err(_) => Err("the handler thread died".to_owned()),
    }
}

fn unit_for(cfg: &Config, serial: &str, naa: u64, read_only: bool, timeout: u32) -> Unit {
    Unit {
        blocks: cfg.dev_size / cfg.block_size as u64,
        block_size: cfg.block_size,
        serial: serial.to_owned(),
        naa,
        read_only,
        max_transfer: target::MAX_SECTORS * 512 / cfg.block_size,
        timeout_secs: timeout,
        max_open_zones: None,
    }
}

/// Serve the stale backstore (its own backing store and geometry) while
/// its LUN goes, so the SCSI disk's removal completes; then remove it.
fn replace_stale(
    tgt: &mut Target,
    stale: target::Stale,
    unit: &Unit,
    protection: Protection,
) -> Result<(), String> {
    let (Some((uio, map_len)), Some(old)) = (stale.uio, stale.config) else {
        // Never enabled (no ring, so no disk): nothing to serve.
        tgt.remove_loopback();
        tgt.remove_backstore();
        return Ok(());
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&old.backing)
        .map_err(|e| format!("the earlier backstore's {}: {e}", old.backing.display()))?;
    let disk = Arc::new(Disk {
        file: NoFsFile::new(file),
        unit: unit_for(&old, &unit.serial, unit.naa, false, unit.timeout_secs),
        plain_io: protection.plain_io(),
        counters: Default::default(),
        zones: None,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let dev = tgt.dev().map(Path::to_owned);
    let h = spawn_handler(uio, map_len, disk, protection, dev, stop.clone())?;
    tgt.remove_loopback();
    stop.store(true, Ordering::Relaxed);
    let _ = h.join();
    tgt.remove_backstore();
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.block_size != 512 && args.block_size != 4096 {
        eprintln!("tcmu-file: --block-size must be 512 or 4096");
        return ExitCode::from(exit::SETUP);
    }
    if !args
        .name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        eprintln!("tcmu-file: --name: letters, digits, '_' and '-' only");
        return ExitCode::from(exit::SETUP);
    }
    let protection = args.protection.protection();
    if let Err(code) = daemon::announce("tcmu-file", "handler threads", protection) {
        return code;
    }
    let (path, file, size, created) = match open_backing(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("tcmu-file: {e}");
            return ExitCode::from(exit::SETUP);
        }
    };
    let mut created_files = Created::default();
    if created {
        created_files.paths.push(path.clone());
        let state = zone_state_path(&args, &path);
        if args.zbc && !state.exists() {
            created_files.paths.push(state);
        }
    }
    let blocks = size / args.block_size as u64;
    if blocks == 0 {
        eprintln!("tcmu-file: {}: smaller than one block", path.display());
        return ExitCode::from(exit::SETUP);
    }
    let h = hash(&args.name);
    let cfg = Config {
        backing: path.clone(),
        dev_size: blocks * args.block_size as u64,
        block_size: args.block_size,
    };
    let serial = format!("{:016x}", h);
    let naa = (0x5u64 << 60) | (0x001_4051u64 << 36) | (h & 0xf_ffff_ffff);
    let mut unit = unit_for(&cfg, &serial, naa, args.read_only, args.cmd_time_out);
    let plain_io = protection.plain_io();
    let zones = match open_zones(&args, &path, cfg.dev_size, file.is_block_device(), plain_io) {
        Ok(z) => z,
        Err(e) => {
            eprintln!("tcmu-file: --zbc: {e}");
            return ExitCode::from(exit::SETUP);
        }
    };
    if let Some(z) = &zones {
        unit.max_open_zones = Some(z.geo.max_open);
        eprintln!(
            "tcmu-file: zoned (host managed): {} zones of {} blocks, {} conventional, {} open at most",
            z.geo.zones(),
            z.geo.zone_blocks,
            z.geo.conventional,
            z.geo.max_open
        );
    }
    let disk = Arc::new(Disk {
        file,
        unit: unit.clone(),
        plain_io,
        counters: Default::default(),
        zones,
    });

    let stop = Arc::new(AtomicBool::new(false));
    let signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tcmu-file: signals: {e}");
            return ExitCode::from(exit::SETUP);
        }
    };

    let mut tgt = Target::new(&args.name, h);
    let started: Result<JoinHandle<()>, String> = (|| {
        let stale = tgt.stale()?;
        let mut resume = None;
        if let Some(stale) = stale {
            tgt.adopt();
            match (&stale.uio, &stale.config) {
                (Some(uio), Some(old)) if *old == cfg => {
                    eprintln!(
                        "tcmu-file: adopting the configfs objects of an earlier {:?} (same \
                         backing store and geometry): resetting its ring, serving it on",
                        args.name
                    );
                    resume = Some(uio.clone());
                }
                _ => {
                    eprintln!(
                        "tcmu-file: replacing the configfs objects of an earlier {:?} ({:?})",
                        args.name, stale.config
                    );
                    replace_stale(&mut tgt, stale, &unit, protection).inspect_err(|_| {
                        tgt.forget();
                    })?;
                }
            }
        } else {
            tgt.adopt_loopback();
        }
        let handler = match resume {
            Some((uio, map_len)) => {
                let dev = tgt.dev().map(Path::to_owned);
                let h = spawn_handler(uio, map_len, disk.clone(), protection, dev, stop.clone())
                    .inspect_err(|_| {
                        tgt.forget();
                    })?;
                if let Err(e) = tgt.set_timeouts(args.cmd_time_out, args.qfull_time_out) {
                    eprintln!("tcmu-file: warning: {e}");
                }
                h
            }
            None => {
                let (uio, map_len) =
                    tgt.create_backstore(&cfg, args.cmd_time_out, args.qfull_time_out)?;
                spawn_handler(uio, map_len, disk.clone(), protection, None, stop.clone())?
            }
        };
        if let Some((c, q)) = tgt.timeouts() {
            eprintln!("tcmu-file: backstore cmd_time_out {c} s, qfull_time_out {q} s");
        }
        if let Err(e) = tgt.create_loopback() {
            stop.store(true, Ordering::Relaxed);
            let _ = handler.join();
            return Err(e);
        }
        Ok(handler)
    })();
    let (code, handler) = match started {
        Ok(handler) => {
            let mut signals = signals;
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut sig = None;
            let mode = if args.read_only { ", read-only" } else { "" };
            loop {
                if let Some(sd) = tgt.disk() {
                    eprintln!(
                        "tcmu-file: serving {} ({} bytes{mode}) as /dev/{sd}",
                        path.display(),
                        cfg.dev_size
                    );
                    break;
                }
                sig = signals.pending().next();
                if sig.is_some() || Instant::now() > deadline {
                    eprintln!(
                        "tcmu-file: serving {} ({} bytes{mode}); no /dev/sd* for its LUN within 20 s (sd_mod loaded?)",
                        path.display(),
                        cfg.dev_size
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let sig = sig.or_else(|| signals.forever().next());
            eprintln!("tcmu-file: signal {sig:?}, tearing down");
            (ExitCode::SUCCESS, Some(handler))
        }
        Err(e) => {
            eprintln!("tcmu-file: {e}");
            (ExitCode::from(exit::SETUP), None)
        }
    };
    let served = handler.is_some();
    if served {
        created_files.keep();
    }
    // The LUN goes first, while the handler still serves the final
    // SYNCHRONIZE CACHE of the SCSI disk's removal.
    tgt.remove_loopback();
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = handler {
        let _ = h.join();
    }
    tgt.remove_backstore();
    if !served {
        // Nothing was served: no zone state or counters to report, and a
        // backing file this run created goes again (`created_files`).
        if created {
            eprintln!(
                "tcmu-file: removing {}, created by this run and never served",
                path.display()
            );
        }
        return code;
    }
    if let Err(e) = disk.persist_zones() {
        eprintln!("tcmu-file: writing the zone state at exit: {e:?}");
    }
    if let Some(z) = &disk.zones {
        let snap = z.snapshot();
        let n = |c: zbc::Cond| snap.iter().filter(|z| z.cond == c).count();
        eprintln!(
            "tcmu-file: zones at exit: {} empty, {} implicitly open, {} explicitly open, {} closed, {} full",
            n(zbc::Cond::Empty),
            n(zbc::Cond::ImpOpen),
            n(zbc::Cond::ExpOpen),
            n(zbc::Cond::Closed),
            n(zbc::Cond::Full)
        );
    }
    let c = &disk.counters;
    let refused: Vec<String> = c
        .refused_opcodes()
        .iter()
        .map(|op| format!("{op:#04x}"))
        .collect();
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "tcmu-file: {} commands ({} reads, {} writes, {} syncs, {} write sames, {} unmaps, {} verifies, {} check conditions, {} I/O errors; opcodes refused: {})",
        n(&c.commands),
        n(&c.reads),
        n(&c.writes),
        n(&c.syncs),
        n(&c.write_sames),
        n(&c.unmaps),
        n(&c.verifies),
        n(&c.errors),
        n(&c.io_errors),
        if refused.is_empty() { "none".to_owned() } else { refused.join(" ") }
    );
    code
}
