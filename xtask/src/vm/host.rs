//! Host tools: the Debian packages and host binaries the VM needs, installed if missing.

use super::*;

/// Debian package that provides a host binary we may be asked to copy.
pub(super) fn package_of(bin: &str) -> Option<&'static str> {
    Some(match bin {
        "qemu-nbd" | "qemu-img" | "qemu-io" => "qemu-utils",
        "nbd-client" => "nbd-client",
        "mkfs.xfs" | "xfs_io" | "xfs_repair" | "xfs_db" => "xfsprogs",
        "mkfs.ext4" | "mkfs.ext2" | "mke2fs" | "e2fsck" | "tune2fs" | "debugfs" => "e2fsprogs",
        "nbdkit" => "nbdkit",
        "fio" => "fio",
        "targetcli" => "targetcli-fb",
        "strace" => "strace",
        "blkdiscard" | "blkzone" | "blockdev" | "prlimit" => "util-linux",
        "losetup" => "mount",
        "dmsetup" => "dmsetup",
        "nbdinfo" | "nbdcopy" | "nbdsh" => "libnbd-bin",
        b if b.starts_with("sg_") => "sg3-utils",
        _ => return None,
    })
}

/// `apt-get` that waits for a concurrent apt/dpkg (another build on the same
/// machine) instead of failing at once on the lock.
pub(super) fn apt_get() -> Command {
    let mut c = Command::new("apt-get");
    c.args(["-o", "DPkg::Lock::Timeout=300"]);
    c
}

/// Install what the VM step needs, and only what is missing.
pub fn ensure_host_tools(opts: &VmOpts) -> Result<()> {
    let mut missing: Vec<String> = Vec::new();
    let mut need = |ok: bool, pkg: &str| {
        if !ok && !missing.iter().any(|m| m == pkg) {
            missing.push(pkg.to_owned());
        }
    };
    need(which("qemu-system-x86_64").is_some(), "qemu-system-x86");
    // The initramfs needs a *static* busybox; a dynamic one from package
    // `busybox` would need its libraries too.
    need(dpkg_installed("busybox-static"), "busybox-static");
    need(which("cpio").is_some(), "cpio");
    need(which("depmod").is_some(), "kmod");
    // examples/ublk_file (its own package): libublk-rs-sys runs bindgen.
    need(has_libclang(), "libclang-dev");
    for b in &opts.host_bins {
        if which(b).is_none() && !is_fetched(b) {
            match package_of(b) {
                Some(p) => need(false, p),
                None => bail!(
                    "host binary `{b}` not found on PATH and its package is unknown: \
                     install it or pass `--apt PACKAGE`"
                ),
            }
        }
    }
    for p in &opts.apt {
        need(dpkg_installed(p), p);
    }
    if missing.is_empty() {
        println!("xtask: host tools present (qemu-system-x86_64, busybox-static, cpio, kmod)");
        return Ok(());
    }
    if !opts.install {
        bail!(
            "missing host packages {missing:?} and --no-install was given; run \
             `apt-get install --no-install-recommends {}`",
            missing.join(" ")
        );
    }
    if which("apt-get").is_none() {
        bail!("missing host packages {missing:?} and apt-get is not available");
    }
    println!(
        "xtask: installing missing host packages: {}",
        missing.join(" ")
    );
    // A failed update (offline mirror) is not fatal: the lists may be recent enough.
    if let Err(e) = run(apt_get().arg("update")) {
        println!("xtask: warning: {e}; trying to install anyway");
    }
    let base = ["install", "-y", "--no-install-recommends"];
    if missing.iter().any(|p| p == "qemu-system-x86") {
        // The image ships qemu-utils 10.x (backports) while the distribution's
        // qemu-system-x86 is 7.2 and needs a matching qemu-utils: a plain install
        // fails with "held broken packages". Pinning qemu-utils to bookworm
        // installs a consistent pair and keeps qemu-img/qemu-io/qemu-nbd.
        let mut pinned = apt_get();
        pinned.args(base).arg("--allow-downgrades").args(&missing);
        pinned.arg("qemu-utils/bookworm");
        match run(&mut pinned) {
            Ok(()) => return verify_installed(opts),
            Err(e) => println!("xtask: pinned install failed ({e}); trying a plain install"),
        }
    }
    let mut plain = apt_get();
    plain.args(base).args(&missing);
    run(&mut plain).map_err(|e| {
        format!("required host packages {missing:?} are missing and apt-get failed: {e}")
    })?;
    verify_installed(opts)
}

/// Whether the dynamic loader knows a libclang (what bindgen's clang-sys loads).
pub(super) fn has_libclang() -> bool {
    capture_stdout(Command::new("ldconfig").arg("-p")).is_ok_and(|out| {
        out.lines().any(|l| {
            let name = l.trim_start();
            name.starts_with("libclang.so") || {
                name.strip_prefix("libclang-")
                    .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
            }
        })
    })
}

pub(super) fn verify_installed(opts: &VmOpts) -> Result<()> {
    if which("qemu-system-x86_64").is_none() {
        bail!("qemu-system-x86_64 not found after installing qemu-system-x86");
    }
    for b in &opts.host_bins {
        if which(b).is_none() && !is_fetched(b) {
            bail!("host binary `{b}` still not found after installing its package");
        }
    }
    Ok(())
}
