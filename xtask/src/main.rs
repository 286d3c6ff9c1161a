//! `cargo xtask`: the project's test entry points.
//!
//! The host cannot call prctl(PR_SET_IO_FLUSHER) (no CAP_SYS_RESOURCE), so the
//! tests that need the real kernel run in a throwaway QEMU/TCG VM whose PID 1
//! has every capability. See `cargo xtask help`.

mod nbd_bench;
mod util;
mod vm;
mod vm_bench;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;
use util::{bail, run, Phases, Result};
use vm::{VmOpts, Workspace};

const HELP: &str = "\
cargo xtask COMMAND [OPTIONS]

Commands:
  test [VM-OPTIONS] [-- TEST-ARGS]
        The project's single test command: `cargo test --workspace --all-features`
        on the host, then the feature matrix (no features, and each feature
        alone), then `vm-test` on each of the three kernels (`--kernel all`;
        `--kernel K` for one). Fails if any fails.
  vm-test [VM-OPTIONS] [-- TEST-ARGS]
        Build every tests/vm_*.rs and examples/tests/vm_*.rs, boot them in a
        QEMU/TCG VM with Debian's cloud kernel, run each with `--include-ignored --test-threads=1 TEST-ARGS`.
        Fails if any fails, if the VM does not finish, or if zero tests ran.
        Defaults: --mem 1G, --modules brd,fuse,loop,nbd,xfs,target_core_user,tcm_loop,
        sd_mod (tests/vm_tcmu.rs), --host-bin for qemu-nbd, qemu-io, qemu-img,
        mkfs.ext4, mkfs.xfs and nbd-client (tests/vm_nbd_seed.rs: the seed's
        brd/ext4/NBD/XFS stack under a 32M memcg), blkdiscard (util-linux's,
        with -z, for tests/vm_tcmu.rs), dmsetup with dm_mod (tests/vm_fs.rs,
        tests/vm_tcmu.rs: EIO from a device-mapper error target), sg3-utils'
        sg_* and losetup (tests/vm_tcmu.rs), fio and ublk_drv where the kernel
        has it (tests/vm_ublk.rs), dm_zoned, blkzone and dmzadm (trixie's
        dm-zoned-tools, downloaded; examples/tests/vm_zoned.rs).
  vm-run [VM-OPTIONS] -- SCRIPT [ARGS...] | -- COMMAND...
        Boot the same VM and run a host shell script (copied in) or a shell
        command; its exit status becomes this command's. Examples and package
        binaries of reclaim-scope are built and put on the guest PATH (/opt/bin).
  vm-bench [VM-OPTIONS] [-- CRITERION-ARGS]
        Build benches/scope.rs and benches/fs.rs (release, --features
        unstable-bench) and run them in the VM, where PID 1 has CAP_SYS_RESOURCE:
        criterion, then the paired ratios (outermost scope / raw prctl pair,
        pread_nofs / pread, pwrite_nofs / pwrite on an unflagged thread), then
        callgrind (valgrind copied from the host) for the user-space instructions
        per iteration of the raw prctl pair and the outermost, nested and
        already-flagged scopes. CRITERION-ARGS go to both bench binaries (a
        filter; `-- none` skips criterion and keeps the ratios and counts).
        Profiles land in target/vm-bench/.
  nbd-bench [--count N] [--rounds N] [--size MiB] [--dir DIR]
        Benchmark examples/nbd_server (release) against nbdkit's file plugin
        and qemu-nbd on one pre-filled backing file over unix sockets with
        `qemu-img bench` (4 KiB, QD1/QD16, read/write, -t none); installs
        nbdkit/qemu-utils if missing. Prints the median IOPS per cell and the
        ratios ours/nbdkit, ours/qemu-nbd. Defaults: --count 100000, --rounds 3
        (interleaved), --size 1024, --dir target/nbd-bench.

VM-OPTIONS:
  --modules a,b,..     kernel modules to make available (with dependencies);
                       load them in the payload: `modprobe brd rd_size=...`
  --host-bin NAME      copy a host executable (and its libraries) to /opt/bin;
                       installs its Debian package if missing (qemu-nbd, mkfs.xfs,
                       nbd-client, mkfs.ext4, nbdkit, ...). Repeatable.
  --apt PKG            install a Debian package on the host if missing. Repeatable.
  --file HOST[:GUEST]  copy a file or directory in (default /opt/files/NAME).
  --mem SIZE           guest memory (default 512M)
  --smp N              guest CPUs (default 2)
  --timeout SECS       kill a VM boot after SECS (default 900; vm-test may
                       boot twice, see --retries)
  --test-timeout SECS  vm-test: kill one test binary after SECS (default 480)
  --cmdline ARGS       appended to the kernel command line
  --mttcg              multi-threaded TCG (one host thread per vCPU); the
                       default is single-threaded TCG, see xtask/src/vm/boot.rs
  --retries N          vm-test: boot a fresh VM up to N more times for test
                       binaries that never finished because the guest died
                       (soft lockup, panic, timeout); failed tests are never
                       retried (default 1)
  --no-install         never run apt-get; fail if something is missing
  --kernel K           Debian cloud kernel to boot: 6.1 (bookworm, default),
                       5.10 (bullseye), 6.12 (trixie), or `all` (vm-test:
                       each in turn, then a per-kernel table); downloaded
                       through a private apt configuration in target/vm/
  --refresh-kernel     re-resolve linux-image-cloud-amd64 instead of the cache
  --keep-debug         do not strip debug info from our binaries

Inside the guest: RECLAIM_SCOPE_VM=1; proc, sysfs, devtmpfs, tracefs
(/sys/kernel/tracing), cgroup2 (/sys/fs/cgroup) and tmpfs /tmp are mounted;
/var/lock exists. Caches and console logs live in target/vm/.
";

/// The feature sets `xtask test` runs the host tests with, besides
/// `--all-features`: none, and each feature of Cargo.toml alone.
const FEATURE_MATRIX: &[&str] = &["", "cli", "tokio", "futures-core", "log", "unstable-bench"];

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        print!("{HELP}");
        return Ok(ExitCode::from(2));
    };
    match cmd.as_str() {
        "help" | "-h" | "--help" => {
            print!("{HELP}");
            Ok(ExitCode::SUCCESS)
        }
        "vm-test" => {
            let (opts, tail) = parse_vm_opts(rest, true)?;
            let ws = Workspace::locate()?;
            let mut phases = Phases::default();
            if opts.kernel == "all" {
                return vm_test_all(&ws, &opts, &tail);
            }
            let r = vm::vm_test(&ws, &opts, &tail, &mut phases);
            phases.report();
            r.map(|_| ExitCode::SUCCESS)
        }
        "vm-run" => {
            let (opts, tail) = parse_vm_opts(rest, false)?;
            let ws = Workspace::locate()?;
            let mut phases = Phases::default();
            let r = vm::vm_run(&ws, &opts, &tail, &mut phases);
            phases.report();
            let s = r?;
            Ok(ExitCode::from(u8::try_from(s).unwrap_or(1)))
        }
        "test" => {
            let (mut opts, tail) = parse_vm_opts(rest, true)?;
            // The kernels daemons run on differ where it matters (issue 16):
            // the project's test command proves every claim on all three.
            if !kernel_given(rest) {
                opts.kernel = "all".into();
            }
            let ws = Workspace::locate()?;
            let mut phases = Phases::default();
            // Install first: the host tests drive the example NBD server with
            // qemu-io and qemu-img, which a bare machine may not have yet.
            phases.time("install", || vm::ensure_host_tools(&opts))?;
            // Host tests first: they are fast and catch most mistakes. stdout is
            // inherited so cargo's "test result:" lines stay visible.
            let host = phases.time("host tests", || {
                run(Command::new(&ws.cargo).current_dir(&ws.root).args([
                    "test",
                    "--workspace",
                    "--all-features",
                ]))
            });
            // Every feature combination a user can pick must build and pass:
            // no features (`default` is empty, so this is also
            // `--no-default-features`) and each feature alone; all features ran
            // above.
            let host = host.and_then(|()| {
                phases.time("feature matrix", || {
                    for features in FEATURE_MATRIX {
                        println!("xtask: host tests with features [{features}]");
                        let mut c = Command::new(&ws.cargo);
                        c.current_dir(&ws.root).args([
                            "test",
                            "--package",
                            "reclaim-scope",
                            "--no-default-features",
                        ]);
                        if !features.is_empty() {
                            c.args(["--features", features]);
                        }
                        run(&mut c).map_err(|e| format!("features [{features}]: {e}"))?;
                    }
                    Ok(())
                })
            });
            if let Err(e) = &host {
                eprintln!("xtask: host tests failed: {e}; running the VM tests anyway");
            }
            let vm = if opts.kernel == "all" {
                vm_test_all(&ws, &opts, &tail).map(|_| ())
            } else {
                vm::vm_test(&ws, &opts, &tail, &mut phases)
            };
            phases.report();
            match (host, vm) {
                (Ok(()), Ok(())) => {
                    println!("xtask: all tests passed (host and VM)");
                    Ok(ExitCode::SUCCESS)
                }
                (h, v) => {
                    if let Err(e) = h {
                        eprintln!("xtask: FAILED host: {e}");
                    }
                    if let Err(e) = v {
                        eprintln!("xtask: FAILED vm: {e}");
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        "vm-bench" => {
            let (opts, tail) = parse_vm_opts(rest, false)?;
            vm_bench::main(&Workspace::locate()?, opts, &tail).map(|()| ExitCode::SUCCESS)
        }
        "nbd-bench" => nbd_bench::main(&Workspace::locate()?, rest).map(|()| ExitCode::SUCCESS),
        other => bail!("unknown command `{other}`; try `cargo xtask help`"),
    }
}

/// Parse VM options; everything after `--` is returned as the tail.
fn parse_vm_opts(args: &[String], test_defaults: bool) -> Result<(VmOpts, Vec<String>)> {
    let mut o = VmOpts::default();
    if test_defaults {
        // The gfp proof formats an ext4 on a brd ramdisk: page cache of a real
        // block-backed file system, not shmem.
        o.modules = vec!["brd".into(), "loop".into()];
        // examples/tests/vm_fuse.rs mounts examples/fuse_passthrough over that ext4.
        o.modules.push("fuse".into());
        // tests/vm_cli.rs runs an unmodified daemon under `reclaim-scope exec`.
        o.host_bins = vec!["qemu-nbd".into()];
        // examples/tests/nbd_server.rs (host): real NBD clients for the example server,
        // block status maps (libnbd-bin), loop devices and RLIMIT_FSIZE.
        o.host_bins.extend(
            [
                "qemu-io", "qemu-img", "nbdinfo", "nbdcopy", "prlimit", "blockdev",
            ]
            .map(String::from),
        );
        // tests/vm_nbd_seed.rs: brd → ext4 → nbd_server → kernel NBD → XFS,
        // with ~200 MiB on the ramdisk and a 16 MiB trace buffer per CPU.
        o.modules.extend(["nbd".into(), "xfs".into()]);
        o.host_bins
            .extend(["mkfs.ext4".into(), "mkfs.xfs".into(), "nbd-client".into()]);
        // tests/vm_tcmu.rs: examples/tcmu_file through target_core_user and
        // tcm_loop as a SCSI disk (sd_mod), the same stack with the TCMU handler.
        o.modules.extend([
            "target_core_user".into(),
            "tcm_loop".into(),
            "sd_mod".into(),
        ]);
        // tests/vm_tcmu.rs: discard and zero-out (`-z`, which busybox's lacks).
        o.host_bins.push("blkdiscard".into());
        // tests/vm_fs.rs: EIO from a device-mapper `error` target.
        o.modules.push("dm_mod".into());
        o.host_bins.push("dmsetup".into());
        // tests/vm_tcmu.rs: sg3-utils against the disk, a loop device as the
        // backing store.
        o.host_bins.extend(
            [
                "sg_inq",
                "sg_vpd",
                "sg_modes",
                "sg_opcodes",
                "sg_readcap",
                "sg_write_same",
                "sg_unmap",
                "sg_sync",
                "sg_raw",
                "sg_verify",
                "sg_requests",
                "sg_turs",
                "sg_luns",
                "sg_get_lba_status",
                "losetup",
            ]
            .map(String::from),
        );
        // tests/vm_ublk.rs: examples/ublk_file as /dev/ublkb0 (6.12 has
        // ublk_drv; 6.1 and 5.10 do not), XFS and fio with verify on it.
        o.optional_modules.push("ublk_drv".into());
        o.host_bins.push("fio".into());
        // examples/tests/vm_zoned.rs: tcmu_file --zbc as a host-managed disk, blkzone
        // on it, dm-zoned over it (dmzadm from trixie's dm-zoned-tools,
        // fetched, since bookworm has none).
        o.modules.push("dm_zoned".into());
        o.host_bins.push("blkzone".into());
        o.optional_host_bins.push("dmzadm".into());
        o.mem = "1G".into();
    }
    let mut it = args.iter();
    let mut tail = Vec::new();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (a.as_str(), None),
        };
        let mut val = |name: &str| -> Result<String> {
            match inline.clone().or_else(|| it.next().cloned()) {
                Some(v) => Ok(v),
                None => bail!("{name} needs a value"),
            }
        };
        match flag {
            "--" => {
                tail.extend(it.by_ref().cloned());
                break;
            }
            "--modules" | "--module" => o.modules.extend(
                val(flag)?
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            "--host-bin" => o.host_bins.push(val(flag)?),
            "--apt" => o.apt.push(val(flag)?),
            "--file" => {
                let v = val(flag)?;
                let (h, g) = match v.split_once(':') {
                    Some((h, g)) => (h.to_owned(), g.to_owned()),
                    None => {
                        let name = PathBuf::from(&v)
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        (v.clone(), format!("/opt/files/{name}"))
                    }
                };
                if !g.starts_with('/') {
                    bail!("--file guest path must be absolute: {g}");
                }
                o.files.push((PathBuf::from(h), g));
            }
            "--mem" => o.mem = val(flag)?,
            "--smp" => o.smp = parse_num(flag, &val(flag)?)? as u32,
            "--timeout" => o.timeout = Duration::from_secs(parse_num(flag, &val(flag)?)?),
            "--test-timeout" => o.test_timeout = Duration::from_secs(parse_num(flag, &val(flag)?)?),
            "--cmdline" => o.cmdline = val(flag)?,
            "--mttcg" => o.mttcg = true,
            "--retries" => o.retries = parse_num(flag, &val(flag)?)? as u32,
            "--no-install" => o.install = false,
            "--refresh-kernel" => o.refresh_kernel = true,
            "--kernel" => {
                let k = val(flag)?;
                if k != "all" {
                    vm::suite_of(&k)?;
                }
                o.kernel = k;
            }
            "--keep-debug" => o.keep_debug = true,
            _ => bail!("unknown option `{a}`; try `cargo xtask help`"),
        }
    }
    o.modules.sort();
    o.modules.dedup();
    Ok((o, tail))
}

/// `vm-test --kernel all`: the suite on each kernel in turn, then a table.
fn vm_test_all(ws: &Workspace, opts: &VmOpts, tail: &[String]) -> Result<ExitCode> {
    let mut rows = Vec::new();
    for (series, _) in vm::KERNELS {
        println!("xtask: ===== kernel {series} =====");
        let mut o = opts.clone();
        o.kernel = (*series).to_owned();
        let mut phases = Phases::default();
        let t = std::time::Instant::now();
        let r = vm::vm_test_summary(ws, &o, tail, &mut phases);
        phases.report();
        rows.push((*series, r, t.elapsed()));
    }
    println!("xtask: ===== VM suite per kernel =====");
    let mut ok = true;
    for (series, r, took) in &rows {
        let secs = took.as_secs();
        match r {
            Ok(s) => {
                ok &= s.error.is_none();
                println!(
                    "xtask:   {series:<5} passed {:>4}  failed {:>3}  not applicable {:>3}  {:>3}m{:02}s  {}",
                    s.passed,
                    s.failed,
                    s.not_applicable,
                    secs / 60,
                    secs % 60,
                    s.error.as_deref().unwrap_or("ok")
                );
            }
            Err(e) => {
                ok = false;
                println!(
                    "xtask:   {series:<5} did not run: {e}  {}m{:02}s",
                    secs / 60,
                    secs % 60
                );
            }
        }
    }
    if ok {
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("the VM suite failed on at least one kernel")
    }
}

/// Whether VM options before any `--` name a kernel.
fn kernel_given(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "--kernel" || a.starts_with("--kernel="))
}

fn parse_num(flag: &str, v: &str) -> Result<u64> {
    v.parse()
        .map_err(|_| util::Error(format!("{flag}: `{v}` is not a number")))
}

#[cfg(test)]
mod tests {
    use super::parse_vm_opts;
    use std::collections::BTreeSet;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options() {
        let (o, tail) = parse_vm_opts(
            &s(&[
                "--modules",
                "nbd,xfs",
                "--module=fuse",
                "--host-bin",
                "qemu-nbd",
                "--timeout=60",
                "--mem",
                "1G",
                "--file",
                "a/b.sh",
                "--",
                "run.sh",
                "--x",
            ]),
            false,
        )
        .unwrap();
        assert_eq!(o.modules, s(&["fuse", "nbd", "xfs"]));
        assert_eq!(o.host_bins, s(&["qemu-nbd"]));
        assert_eq!(o.timeout.as_secs(), 60);
        assert_eq!(o.mem, "1G");
        assert_eq!(o.files[0].1, "/opt/files/b.sh");
        assert_eq!(tail, s(&["run.sh", "--x"]));
        assert!(parse_vm_opts(&s(&["--bogus"]), false).is_err());
        assert!(parse_vm_opts(&s(&["--timeout"]), false).is_err());
        let (t, _) = parse_vm_opts(&[], true).unwrap();
        assert!(t.modules.contains(&"brd".to_owned()));
        assert_eq!(t.kernel, "6.1");
        for k in ["5.10", "6.1", "6.12", "all"] {
            assert_eq!(
                parse_vm_opts(&s(&["--kernel", k]), true).unwrap().0.kernel,
                k
            );
        }
        assert!(parse_vm_opts(&s(&["--kernel=4.19"]), true).is_err());
    }

    /// The matrix names every feature of the library's Cargo.toml: the
    /// `[features]` table (but `default`) and every optional dependency.
    #[test]
    fn feature_matrix_covers_every_feature() {
        let toml =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml")).unwrap();
        let mut section = "";
        let (mut want, mut optional) = (BTreeSet::new(), BTreeSet::new());
        for line in toml.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line;
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim().to_owned();
            if section == "[features]" && key != "default" {
                want.insert(key);
            } else if section == "[dependencies]" && value.contains("optional = true") {
                optional.insert(key);
            }
        }
        // An optional dependency is a feature of its own unless some feature
        // names it as `dep:NAME`.
        for dep in optional {
            if !toml.contains(&format!("\"dep:{dep}\"")) {
                want.insert(dep);
            }
        }
        let have: BTreeSet<String> = super::FEATURE_MATRIX
            .iter()
            .filter(|f| !f.is_empty())
            .map(|f| f.to_string())
            .collect();
        assert_eq!(
            have, want,
            "FEATURE_MATRIX must list every feature of Cargo.toml"
        );
        assert!(
            super::FEATURE_MATRIX.contains(&""),
            "the matrix starts with no features"
        );
    }
}
